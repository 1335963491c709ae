"""Evaluation: :mod:`~meddeblur.evaluation.evaluate` (model against pairs), :mod:`~meddeblur.evaluation.classical`
(the benchmark's baselines: Wiener and Richardson–Lucy from :mod:`meddeblur.restore.classical`, self-tuning Wiener,
unsharp masking) and :mod:`~meddeblur.evaluation.assess` (no-reference blur triage).
"""
