"""The Python entry point for deblurring: :class:`Deblurrer` (load once, call many times) and :func:`deblur`.

A notebook user should not need to know about size multiples, tiling or engines:

>>> import numpy as np
>>> import meddeblur
>>> image = np.zeros((64, 80, 3), np.uint8)
>>> meddeblur.deblur(image).dtype
dtype('uint8')
>>> deblurrer = meddeblur.Deblurrer.load()          # the shipped model (MODEL_CARD.md), on the best device
>>> deblurrer(np.full((40, 50), 0.5, np.float32)).shape   # grey (H, W) in, grey (H, W) out
(40, 50)
>>> deblurrer.model_id == meddeblur.Deblurrer.load().model_id
True

Accepted images: numpy ``(H, W)``, ``(H, W, C)`` with C in 1/3/4, dtype uint8, uint16 or float in [0, 1] (not masked
arrays: the mask would be lost);
torch ``(C, H, W)`` or ``(N, C, H, W)`` float in [0, 1] with C in 1/3/4 (integer tensors are refused:
:func:`~meddeblur.inference.image_rules.check_tensor`; so are tensors that require gradients: a Deblurrer is for
inference, ``meddeblur.models.load_model`` gives the differentiable network). The result has the input's type,
dtype, shape and device. Grey images go through the network as three equal channels and come back grey;
alpha is passed through untouched. Integers are scaled by their own range (255 or 65535) and rounded back,
never clipped silently: a float image outside [0, 1] or with NaN is refused. H and W ≥ 16.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import torch

from meddeblur.device import pick_device
from meddeblur.errors import InvalidOption, NotFound, UnsupportedFormat
from meddeblur.inference.batch import deblur_array, deblur_tensor
from meddeblur.inference.change_map import ChangeMap, change_between
from meddeblur.inference.engine import psf_on_onnx
from meddeblur.inference.estimated_blur import EstimatedBlur
from meddeblur.inference.image_rules import refuse_image
from meddeblur.inference.tiling import Tiling
from meddeblur.inference.user_images import restore_array, restore_tensor
from meddeblur.io.provenance import make_record
from meddeblur.models import PSF_ARCHITECTURES
from meddeblur.psf.kernel import PSF, PsfLike, load_psf
from meddeblur.restore import registry
from meddeblur.restore.base import Resources

if TYPE_CHECKING:
    from meddeblur.models import ModelConfig

__all__ = ["Deblurrer", "deblur"]

ENGINES = ("torch", "onnx")

ImageLike = np.ndarray | torch.Tensor


class Deblurrer:
    """A loaded model; call it on an image. Build it with :meth:`load`.

    ``model_id`` is the id of the weights (first 12 hex of their SHA-256), ``size_multiple`` the side
    multiple the network pads to, ``provenance`` the record meddeblur writes into output files;
    ``config`` and ``weights`` (the :class:`~meddeblur.models.ModelConfig` and the ``.safetensors`` path)
    are None for an ONNX model.
    """

    def __init__(
        self,
        network: Any,
        size_multiple: int,
        provenance: dict,
        device: torch.device,
        tile: int,
        overlap: int,
        config: ModelConfig | None = None,
        weights: Path | None = None,
    ) -> None:
        self._network, self.size_multiple, self.provenance = network, size_multiple, provenance
        self.device, self.tile, self.overlap = device, tile, overlap
        self.config, self.weights = config, weights
        self._shipped = False  # holds the shipped blind model: `psf` then switches to the shipped kernel-conditioned one
        self._known_blur: Deblurrer | None = None  # that one, loaded on first use
        self._denoiser_module: torch.nn.Module | None = None  # the plug-and-play prior, loaded on first use
        self._psf: PSF | None = None
        self._estimated: EstimatedBlur | None = None  # with_estimated_psf: the PSF is estimated image by image
        self._base = self  # what with_psf binds to (a bound Deblurrer rebinds from its base)

    @classmethod
    def load(
        cls, model: str | Path | None = None, engine: str = "torch", device: str = "auto", tile: int = 1024, overlap: int = 128
    ) -> Deblurrer:
        """Load ``model`` once: None (the shipped model), a ``.safetensors`` file or a run folder; or an ``.onnx`` file.

        ``engine``: "torch" or "onnx" (ONNX Runtime on the CPU; a ``.onnx`` ``model`` implies it, other models
        are exported on the fly). ``device``: "auto", "cpu", "cuda" or "mps". Images with a side above ``tile``
        (0: never) are processed in overlapping tiles of that size, ``overlap`` pixels wide, bounding memory.
        Bad options raise :class:`~meddeblur.errors.InvalidOption` (a ``ValueError``); a missing or damaged
        model another :class:`~meddeblur.errors.UserError`.
        """
        if engine not in ENGINES:
            raise InvalidOption(f"engine={engine!r}: choose 'torch' or 'onnx'", value=engine, option="engine")
        Tiling(tile, overlap)
        engine = "onnx" if model is not None and str(model).lower().endswith(".onnx") else engine
        # ONNX Runtime runs on the CPU: "auto" means the CPU there.
        target = pick_device("cpu" if engine == "onnx" and device == "auto" else device)
        parameters = {"tile": tile, "overlap": overlap}
        if engine == "torch":
            from meddeblur.models import load_model, size_multiple, weights_id

            network, config, weights = load_model(model, target)
            record = make_record(weights_id(weights), f"{config.arch} width {config.width}", "torch", parameters)
            loaded = cls(network, size_multiple(config), record, target, tile, overlap, config, weights)
            loaded._shipped = model is None
            return loaded
        if target.type != "cpu":
            raise InvalidOption(
                f"device={device}: the ONNX engine runs on the CPU (onnxruntime); use device=cpu or engine=torch",
                value=device,
                option="device",
            )
        from meddeblur.inference.onnx_engine import open_onnx

        runner = open_onnx(model)
        return cls(
            runner,
            runner.size_multiple,
            make_record(runner.weights_id, runner.describe(), "onnx", parameters),
            target,
            tile,
            overlap,
        )

    def torch_weights(self) -> tuple[ModelConfig, Path]:
        """(configuration, weights file) of a torch model; an ONNX model has neither: UnsupportedFormat, one line."""
        if self.config is None or self.weights is None:
            why = "an ONNX model holds no configuration or weights file; pass the .safetensors weights or the run folder"
            raise UnsupportedFormat(f"model {self.model_id}: {why}", value=self.model_id)
        return self.config, self.weights

    @property
    def model_id(self) -> str:
        return self.provenance["model_id"]

    def __repr__(self) -> str:
        return f"Deblurrer(model_id={self.model_id!r}, engine={self.provenance.get('engine')!r}, device={str(self.device)!r}, tile={self.tile})"

    @overload
    def __call__(self, image: np.ndarray, psf: PsfLike | None = None, method: str | None = None) -> np.ndarray: ...
    @overload
    def __call__(self, image: torch.Tensor, psf: PsfLike | None = None, method: str | None = None) -> torch.Tensor: ...
    def __call__(self, image: ImageLike, psf: PsfLike | None = None, method: str | None = None) -> ImageLike:
        """Deblur ``image``; returns the same type, dtype, shape (and device) as given.

        ``psf``: the blur, when it is known (a spec such as ``"gauss:sigma=1.6"``, a ``.npy``/``.png``/``.json`` kernel
        file, a 2-D array or a :class:`~meddeblur.psf.PSF`): the image is then restored with it by ``method``
        (see :meth:`with_psf`) instead of the blind network. ``method="psf"`` estimates the PSF (:meth:`with_estimated_psf`).
        """
        told = registry.get(method).told if method is not None else None
        if told is not None and registry.Told.ESTIMATE in told:
            if psf is not None:
                raise InvalidOption(
                    f"method={method!r} estimates the PSF from the image: leave `psf` out, or restore the given PSF "
                    f"with method {', '.join(registry.names(registry.Told.PSF))}",
                    value=method,
                    option="method",
                )
            return self.with_estimated_psf()(image)
        if psf is not None:
            return self.with_psf(psf, method)(image)
        if told is not None and registry.Told.NOTHING not in told:
            raise InvalidOption(f"method={method!r} restores a known blur: give `psf` too", value=method, option="method")
        if self._psf is None and self._estimated is None and self.config is not None and self.config.arch in PSF_ARCHITECTURES:
            raise InvalidOption(
                f"psf: {self.weights} is a {self.config.arch}, which restores a known blur; pass psf=... "
                "(e.g. 'gauss:sigma=1.6' or a kernel file), or use a blind model",
                value=None,
                option="psf",
            )
        if isinstance(image, torch.Tensor):
            return self._tensor(image)
        if isinstance(image, np.ndarray):
            return self._array(image)
        raise refuse_image(image, "not a numpy array or torch tensor")

    def with_psf(self, psf: PsfLike, method: str | None = None, **options: Any) -> Deblurrer:
        """A Deblurrer that restores every image with this known PSF; its :attr:`provenance` names the PSF and the method.

        ``method`` (:data:`meddeblur.restore.registry.METHODS`; None: :data:`~meddeblur.restore.registry.KNOWN_BLUR_DEFAULT`):
        ``"network"`` — the kernel-conditioned network: this one if it is a ``psf-nafnet``, the shipped one (MODEL_CARD.md)
        if this Deblurrer holds the shipped blind model; ``"pnp"`` — plug-and-play: the exact FFT data step and the
        shipped denoiser, iterated (``iterations``, ``noise_floor``, …: :class:`~meddeblur.restore.pnp.PnPSettings`);
        ``"wiener"`` (``nsr``) or ``"rl"`` (Richardson–Lucy, ``iterations``) — classical deconvolution. ``options`` go to the
        method. Same device and tiling; a delta PSF returns images unchanged. The ONNX engine cannot run the
        kernel-conditioned network (its graph has no FFT data step): InvalidOption.
        """
        name = registry.KNOWN_BLUR_DEFAULT if method is None else method
        registry.known_blur(name)
        psf = load_psf(psf)
        base = self._base
        restorer = registry.build(name, psf, base._resources(), **options)
        if name == registry.NETWORK:
            owner = base._psf_network()
            record = {**owner.provenance, "parameters": {**owner.provenance["parameters"], **restorer.parameters()}}
            bound = Deblurrer(
                restorer, owner.size_multiple, record, base.device, base.tile, base.overlap, owner.config, owner.weights
            )
        else:
            bound = Deblurrer(restorer, 1, base._method_record(name, restorer.parameters()), base.device, base.tile, base.overlap)
        bound._psf, bound._base = psf, base
        return bound

    def _resources(self) -> Resources:
        return Resources(psf_network=lambda: self._psf_network()._network, denoiser=self._denoiser)

    def _denoiser(self) -> torch.nn.Module:
        """The shipped plug-and-play denoiser on this Deblurrer's device, loaded once."""
        if self._denoiser_module is None:
            from meddeblur.models.denoiser import load_denoiser

            self._denoiser_module = load_denoiser(None, self.device)
        return self._denoiser_module

    def _method_record(self, name: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """Provenance of a known-blur method other than the network: its label, and the denoiser's id where it has one."""
        parameters = {"tile": self.tile, "overlap": self.overlap, **parameters}
        if name == "pnp":
            return make_record(_denoiser_id(), registry.get(name).label, "torch", parameters)
        return make_record(None, registry.get(name).label, None, parameters)

    def with_estimated_psf(self, estimator: str | Path | None = None, method: str | None = None) -> Deblurrer:
        """A Deblurrer that estimates each image's PSF, restores with it, and checks the result (method ``"psf"``).

        See :mod:`meddeblur.inference.estimated_blur`: a sharp image comes back unchanged; a low-confidence estimate,
        or an output that does not explain its input, is restored by the blind network instead — this Deblurrer's own
        if it is blind, else the shipped blind model. ``estimator``: blur-estimator weights (None: the shipped ones);
        ``method``: what restores with the estimated PSF (None: :data:`~meddeblur.restore.registry.KNOWN_BLUR_DEFAULT`).
        :meth:`restore_rgb` returns what was done with each image.
        """
        from meddeblur.psf.estimate import BlurEstimator

        name = registry.KNOWN_BLUR_DEFAULT if method is None else method
        registry.known_blur(name)
        base = self._base
        owner = base._psf_network() if name == registry.NETWORK else base
        blind = (
            base
            if base.config is not None and base.config.arch not in PSF_ARCHITECTURES
            else Deblurrer.load(None, "torch", str(base.device), base.tile, base.overlap)
        )
        resources = base._resources()
        multiple = owner.size_multiple if name == registry.NETWORK else 1

        def with_psf(estimate):
            restorer = registry.build(name, estimate.psf, resources)
            return lambda rgb, before_tile=None: deblur_array(
                restorer,
                rgb,
                device=base.device,
                tile=base.tile,
                overlap=base.overlap,
                multiple=multiple,
                before_tile=before_tile,
            )

        estimated = EstimatedBlur(BlurEstimator.load(estimator), with_psf, blind.deblur_rgb)
        if name == registry.NETWORK:
            record = {**owner.provenance, "parameters": {**owner.provenance["parameters"]}}
        else:
            settings = registry.build(name, load_psf("none"), resources).parameters()  # the method's own settings, no PSF
            record = base._method_record(name, {k: v for k, v in settings.items() if k not in ("psf", "unchanged")})
        record["parameters"].update({**estimated.parameters(), "restored_with": name, "fallback_model_id": blind.model_id})
        bound = Deblurrer(
            owner._network, owner.size_multiple, record, base.device, base.tile, base.overlap, owner.config, owner.weights
        )
        bound._estimated, bound._base = estimated, base
        return bound

    def restore_rgb(self, rgb: np.ndarray, before_tile: Callable[[], None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """(H, W, 3) float in [0, 1] → (restored (H, W, 3) float32, what was done).

        What was done is ``{}`` except for a Deblurrer that estimates the PSF (:meth:`with_estimated_psf`): then its
        ``restoration`` record — the estimated PSF (family, parameters, digest, MTF50, confidence), the consistency
        check, and ``result`` (``restored``, ``unchanged`` or ``blind``) with its ``reason``.
        """
        if self._estimated is not None:
            return self._estimated.restore(rgb, before_tile)
        return self.deblur_rgb(rgb, before_tile), {}

    @property
    def estimates_psf(self) -> bool:
        """True when this Deblurrer estimates each image's PSF (:meth:`with_estimated_psf`)."""
        return self._estimated is not None

    def _psf_network(self) -> Deblurrer:
        """The Deblurrer whose network restores a known blur: this one, or the shipped kernel-conditioned model."""
        if self.config is None:
            raise psf_on_onnx("engine", "onnx")
        if self.config.arch in PSF_ARCHITECTURES:
            return self
        if not self._shipped:
            raise InvalidOption(
                f"psf: {self.weights} is a blind {self.config.arch}, which cannot use a PSF; leave the model out "
                "to use the shipped kernel-conditioned one, or pass a psf-nafnet model",
                value=str(self.weights),
                option="psf",
            )
        if self._known_blur is None:
            from meddeblur.models import PSF_WEIGHTS

            if not PSF_WEIGHTS.is_file():
                raise NotFound(
                    f"{PSF_WEIGHTS}: the shipped kernel-conditioned model is missing from this installation; reinstall "
                    "meddeblur, pass a psf-nafnet model, or use another method",
                    value=PSF_WEIGHTS,
                )
            self._known_blur = Deblurrer.load(PSF_WEIGHTS, "torch", str(self.device), self.tile, self.overlap)
        return self._known_blur

    @property
    def psf(self) -> PSF | None:
        """The PSF this Deblurrer restores with (:meth:`with_psf`), or None for blind deblurring."""
        return self._psf

    def deblur_rgb(self, rgb: np.ndarray, before_tile: Callable[[], None] | None = None) -> np.ndarray:
        """(H, W, 3) float in [0, 1] → (H, W, 3) float32, as the CLI deblurs decoded images (tiled above ``tile``).

        ``before_tile`` is called before each forward pass (e.g. to stop at a deadline).
        """
        if self._estimated is not None:
            return self._estimated.restore(rgb, before_tile)[0]
        return deblur_array(
            self._network,
            rgb,
            device=self.device,
            tile=self.tile,
            overlap=self.overlap,
            multiple=self.size_multiple,
            before_tile=before_tile,
        )

    @staticmethod
    def change_map(before: np.ndarray, after: np.ndarray) -> ChangeMap:
        """What deblurring changed, as ``meddeblur deblur --change-map`` shows it: a :class:`~meddeblur.inference.change_map.ChangeMap`.

        ``before``/``after``: numpy (H, W) or (H, W, C) images (uint8, uint16 or float in [0, 1]), e.g. an image and
        ``deblurrer(image)``. ``.figures`` gives the mean and largest change in 8-bit levels and the share of pixels changed
        by more than 4 levels; ``.image()`` the heat map with its colour bar (uint8 RGB), ``.levels`` the change per pixel.
        """
        return change_between(before, after)

    def write(
        self,
        path: str | Path,
        image: ImageLike,
        source: str | Path | None = None,
        *,
        format: str | None = None,
        jpeg_quality: int = 95,
        overwrite: bool = False,
    ) -> Path:
        """Write ``image`` (what this Deblurrer returned) to ``path`` with :attr:`provenance`, as ``meddeblur deblur`` would.

        ``source``: the file the image was read from; its metadata (ICC profile, PNG colour chunks, bit depth, grey,
        alpha; a DICOM source to ``.dcm`` gives a derived DICOM) is kept. An existing ``path`` not written by meddeblur
        is refused unless ``overwrite``; see :func:`meddeblur.io.derived.write_derived`.
        """
        from meddeblur.io.derived import write_derived

        return write_derived(path, image, self.provenance, source, format=format, jpeg_quality=jpeg_quality, overwrite=overwrite)

    def _array(self, image: np.ndarray) -> np.ndarray:
        return restore_array(image, self.deblur_rgb)

    def _tensor(self, image: torch.Tensor) -> torch.Tensor:
        if self._estimated is not None:
            return restore_tensor(image, self.deblur_rgb, None, self.tile)
        network, device, multiple = self._network, self.device, self.size_multiple
        return restore_tensor(
            image, self.deblur_rgb, lambda colour: deblur_tensor(network, colour.to(device), multiple=multiple).cpu(), self.tile
        )


@functools.lru_cache(maxsize=1)
def _denoiser_id() -> str:
    """The shipped denoiser's id, hashed once (2.3 MB: it was read again for every PSF a Deblurrer was bound to)."""
    from meddeblur.models import weights_id
    from meddeblur.models.denoiser import DENOISER_WEIGHTS

    return weights_id(DENOISER_WEIGHTS)


@functools.lru_cache(maxsize=4)
def _cached(model: str | None, engine: str, device: str, tile: int, overlap: int) -> Deblurrer:
    return Deblurrer.load(model, engine, device, tile, overlap)


def deblur(
    image: ImageLike,
    model: str | Path | None = None,
    engine: str = "torch",
    device: str = "auto",
    tile: int = 1024,
    overlap: int = 128,
    psf: PsfLike | None = None,
    method: str | None = None,
) -> ImageLike:
    """Deblur one image with a cached :class:`Deblurrer` (loaded on first use); same type, dtype and shape out.

    ``psf`` / ``method``: restore a known blur instead (:meth:`Deblurrer.__call__`, :meth:`Deblurrer.with_psf`).

    >>> import numpy as np, meddeblur
    >>> meddeblur.deblur(np.zeros((64, 80, 3), np.uint16)).dtype
    dtype('uint16')
    """
    return _cached(None if model is None else str(model), engine, device, tile, overlap)(image, psf=psf, method=method)
