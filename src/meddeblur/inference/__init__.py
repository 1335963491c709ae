"""The in-memory API: :mod:`~meddeblur.inference.deblurrer` (the public :class:`Deblurrer`: arrays and tensors in,
the same out), :mod:`~meddeblur.inference.batch` (padding and tiling a network over images),
:mod:`~meddeblur.inference.tiling` and :mod:`~meddeblur.inference.tile_grid` (bounded memory),
:mod:`~meddeblur.inference.onnx_engine` (ONNX export and ONNX Runtime), the methods that restore with an estimated
PSF (:mod:`~meddeblur.inference.estimated_blur`, :mod:`~meddeblur.inference.consistency`), change maps
(:mod:`~meddeblur.inference.change_map`) and the rules for accepted images (:mod:`~meddeblur.inference.image_rules`).
Files and folders: :mod:`meddeblur.runs`.
"""
