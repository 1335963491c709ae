"""ONNX export of a meddeblur network and inference through ONNX Runtime (CPU).

The export uses PyTorch's own exporter (``torch.onnx.export(dynamo=True)``, which needs
onnxscript): the older TorchScript exporter cannot export NAFNet with a dynamic height and
width (its LayerNorm reads the channel count from the input shape, which tracing makes dynamic).
Batch, height and width are dynamic; height and width must still be multiples of the
network's size multiple, which :func:`meddeblur.inference.batch.deblur_array` pads to, exactly as for
the PyTorch engine. The file carries the model config, the id of the weights it came from
(:func:`meddeblur.models.weights_id`, the model id in every output's provenance) and the size
multiple as ONNX metadata, so that it is enough on its own.

:class:`OnnxModel` is a callable on (N, 3, H, W) tensors, so the same padding and tiling code
(:mod:`meddeblur.inference.tiling`) drives both engines.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from meddeblur import __version__
from meddeblur.errors import CorruptFile, UnsupportedFormat, UserError, require
from meddeblur.files import atomic_write, check_regular_file

__all__ = ["DEFAULT_OPSET", "export_onnx", "OnnxModel", "open_onnx"]

#: The opset PyTorch's exporter targets natively; others go through ONNX's version converter.
DEFAULT_OPSET = 18
_INPUT, _OUTPUT = "image", "output"
_META = ("meddeblur_version", "meddeblur_config", "meddeblur_weights_id", "meddeblur_size_multiple")


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    # The exporter logs notes (e.g. "torchvision is not installed") and warnings that mean nothing to a user.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(model: str | Path | None, out: str | os.PathLike[str], opset: int = DEFAULT_OPSET) -> dict[str, str]:
    """Export ``model`` (run folder or .safetensors; None: the shipped model) to ``out``; returns its metadata.

    Written atomically; raises :class:`UserError` when the exporter cannot produce ``opset``.
    """
    from dataclasses import asdict

    from meddeblur.models import load_model, size_multiple, weights_id

    for module in ("onnx", "onnxscript"):
        require(module, "exporting a model to ONNX")
    network, config, weights = load_model(model, "cpu")
    multiple = size_multiple(config)
    # Batch 2 and unequal sides so that no dimension can be specialised to the example's value.
    example = torch.rand(2, config.in_channels, 3 * multiple, 4 * multiple)
    dims = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    try:
        with _quiet_export():
            program = torch.onnx.export(
                network,
                (example,),
                None,
                dynamo=True,
                opset_version=opset,
                input_names=[_INPUT],
                output_names=[_OUTPUT],
                dynamic_shapes=(dims,),
                verbose=False,
            )
            assert program is not None  # dynamo=True returns the program
            program.optimize()
            proto = program.model_proto
    except Exception as exc:
        detail = " ".join(str(exc).split())[:160]
        raise UserError(
            f"opset={opset}: the ONNX export failed ({type(exc).__name__}: {detail}); try opset={DEFAULT_OPSET}"
        ) from None
    written = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), None)
    if written != opset:
        # The exporter falls back to its own opset (with only a logged warning) when it cannot convert.
        raise UserError(
            f"opset={opset}: the ONNX exporter wrote opset {written} instead (it converts only to opsets it "
            f"supports, {DEFAULT_OPSET} and up); try opset={DEFAULT_OPSET}"
        )
    metadata = {
        "meddeblur_version": __version__,
        "meddeblur_config": json.dumps(asdict(config)),
        "meddeblur_weights_id": weights_id(weights),
        "meddeblur_size_multiple": str(multiple),
        "meddeblur_source": Path(weights).name,
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "meddeblur", __version__
    with atomic_write(out) as fh:
        fh.write(proto.SerializeToString())
    return metadata


class OnnxModel:
    """An exported meddeblur model run by ONNX Runtime on the CPU: (N, C, H, W) tensor in, same shape out.

    ``H`` and ``W`` must be multiples of :attr:`size_multiple` (as for the network itself).
    ``threads``: ONNX Runtime intra-op threads (default: PyTorch's thread count, so that both
    engines use the same cores).
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        require("onnxruntime", "running an ONNX model")
        import onnxruntime as ort

        self.path = check_regular_file(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: warnings would break the one-line error contract
        ort.set_default_logger_severity(3)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            detail = " ".join(str(exc).split())[:120]
            raise CorruptFile(
                f"{self.path}: not a loadable ONNX model ({detail}); export one with meddeblur export", value=self.path
            ) from None
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in _META if key not in meta]
        if missing:
            raise UnsupportedFormat(
                f"{self.path}: ONNX model without meddeblur metadata ({missing[0]}); export it with meddeblur export",
                value=self.path,
            )
        try:
            self.config = json.loads(meta["meddeblur_config"])
            self.size_multiple = int(meta["meddeblur_size_multiple"])
        except (ValueError, TypeError):
            raise CorruptFile(
                f"{self.path}: ONNX model with damaged meddeblur metadata; export it again with meddeblur export", value=self.path
            ) from None
        self.weights_id = meta["meddeblur_weights_id"]
        self.metadata = dict(meta)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise UnsupportedFormat(
                f"{self.path}: ONNX model does not take one (N, C, H, W) image; export it with meddeblur export", value=self.path
            )
        self._input, self._output = inputs[0].name, self.session.get_outputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run([self._output], {self._input: array})[0])

    def describe(self) -> str:
        """``arch width N``, as the provenance names a model."""
        return f"{self.config.get('arch', '?')} width {self.config.get('width', '?')}"


def open_onnx(model: str | Path | None) -> OnnxModel:
    """``model`` run by ONNX Runtime: an ``.onnx`` file as it is; weights (run folder, ``.safetensors``, None: the
    shipped model) exported to a temporary file first (seconds to a minute; ``meddeblur export`` once is cheaper)."""
    import tempfile

    if model is not None and str(model).lower().endswith(".onnx"):
        return OnnxModel(model)
    with tempfile.TemporaryDirectory(prefix="meddeblur-onnx-") as folder:
        exported = Path(folder) / "model.onnx"
        export_onnx(model, exported)
        return OnnxModel(exported)  # the session holds the whole graph: the file may go
