"""Inference: :mod:`~meddeblur.inference.deblurrer` (the public :class:`Deblurrer`), :mod:`~meddeblur.inference.batch`
(arrays, tensors and folders of files), :mod:`~meddeblur.inference.tiling` (bounded memory; the reflection padding)
and :mod:`~meddeblur.inference.onnx_engine` (ONNX export and ONNX Runtime).
"""
