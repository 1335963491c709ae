"""Synthetic degradations: :mod:`~meddeblur.degradation.spec` (the spec language and its families),
:mod:`~meddeblur.degradation.kernels` (blur kernels), :mod:`~meddeblur.degradation.resampling` (down/up-scaling as
Pillow, OpenCV and torch do it) and :mod:`~meddeblur.degradation.pipeline` (:func:`degrade` and its operators).
"""
