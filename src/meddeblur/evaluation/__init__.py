"""Evaluation: :mod:`~meddeblur.evaluation.evaluate` (model against pairs), :mod:`~meddeblur.evaluation.classical`
(Wiener, Richardson–Lucy, unsharp masking baselines) and :mod:`~meddeblur.evaluation.assess` (no-reference blur
triage).
"""
