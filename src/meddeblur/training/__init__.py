"""Training: :mod:`~meddeblur.training.loop` (``train``), :mod:`~meddeblur.training.options` (``TrainOptions``),
:mod:`~meddeblur.training.runs` (run folders, checkpoints, history), :mod:`~meddeblur.training.recipes`,
:mod:`~meddeblur.training.schedule` (learning rate, clipping, EMA, budget) and
:mod:`~meddeblur.training.distributed` (torchrun).
"""
