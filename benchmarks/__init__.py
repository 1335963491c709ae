"""meddeblur's benchmarks: scripts that measure the package and write ``benchmarks/results/NAME.{json,md}``.

Run one from the repository root as a module, ``python -m benchmarks.NAME [ARGS]`` (``--help`` lists its arguments):

- ``benchmarks/NAME.py``: the measurements (quality, speed, flops, onnx_speed, tiling_memory, psf_estimation, psf_speed,
  calibration, archive, pacs, pacs_crash, pnp, assess_auc);
- ``benchmarks.report``: what renders the documents from the results (``python -m benchmarks.report.model_card``);
- ``benchmarks.stress``: stress tools (``python -m benchmarks.stress.load``);
- ``benchmarks.experiments``: training experiments (``python -m benchmarks.experiments.train_speed``);
- :mod:`benchmarks.common`: what they share (the results folder, the ISIC folder, the command a result records).
"""
