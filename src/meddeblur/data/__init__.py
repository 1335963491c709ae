"""Training and evaluation data: :mod:`~meddeblur.data.pairs` (pair folders, splits, datasets),
:mod:`~meddeblur.data.sampling` (random-scale native crops) and :mod:`~meddeblur.data.synthetic` (generated
dermoscopy-like images for the demo and tests).
"""
