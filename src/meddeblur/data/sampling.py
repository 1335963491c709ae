"""Training crops that look like use: native images at random scales, softened or compressed sources.

A photograph reaches the network at whatever sharpness its camera, optics and resizing left it.
Training on images squashed to one size teaches one native softness only: the network then
"sharpens" images that were as sharp as their camera allows, and misses blur at other scales.
So each training sample is drawn as:

1. an image of the training set, chosen uniformly;
2. a down-scale factor ``s`` drawn log-uniformly from ``scales`` (1 = native pixels); a window of
   ``crop·s`` pixels is cut at a random place and shrunk to ``crop`` with a resampling kernel and
   library drawn per sample (:data:`SHRINKERS`), so the per-pixel softness of the target varies;
3. with probability ``soften`` the source itself is blurred (Gaussian σ 0.3–1.0: a softer camera)
   and with probability ``compress`` JPEG-compressed (quality 75–95); the result, quantised to 8
   bits, is the *target* — the network learns to keep what a camera gave, not to invent detail;
4. flips and a rot90, then the degradation spec (e.g. ``real``, :mod:`meddeblur.degradation.spec`)
   makes the input.

Every draw comes from a generator seeded by (seed, epoch, index), so a resumed run sees exactly
the samples an uninterrupted one would. Validation (``fixed=True``) takes each image once, at a
scale cycling through 1, 2 and 4, a centre crop, the source softened with a σ cycling through
:data:`VALIDATION_SOFTEN` (every scale meets every softness; half the samples come from a "softer
camera", so model selection sees the over-sharpening a sharp-only mix hides), and the run-independent
degradation of :func:`meddeblur.data.pairs.fixed_degradation`: a fixed mix of families, ``none`` included.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import scipy.ndimage
import torch
from torch.utils.data import Dataset

from meddeblur.data.pairs import Pair, augment_pair, fixed_degradation
from meddeblur.degradation.kernels import gaussian_kernel
from meddeblur.degradation.pipeline import Degradation, degradation_seed, degrade, jpeg, quantize8
from meddeblur.degradation.resampling import resize
from meddeblur.degradation.spec import DegradeSpec
from meddeblur.errors import UserError
from meddeblur.io.decode import read_image
from meddeblur.physics import blur, kernel_canvas
from meddeblur.psf.spectrum import MIN_SIDE

if TYPE_CHECKING:
    from meddeblur.psf.estimate import BlurEstimator

__all__ = ["SHRINKERS", "VALIDATION_SCALES", "VALIDATION_SOFTEN", "ScaledCrops", "EpochSamples", "zoom_kernel"]

#: (kernel, library) pairs a training window is shrunk with, one drawn per sample.
SHRINKERS = (("box", "pil"), ("box", "cv2"), ("bicubic", "pil"), ("lanczos", "pil"), ("bilinear", "torch"), ("bicubic", "torch"))
#: Down-scale factors of the validation images, by index: native, half and quarter size.
VALIDATION_SCALES = (1.0, 2.0, 4.0)
#: Gaussian σ the validation sources are softened with (0: as stored), by ``index // len(VALIDATION_SCALES)``.
VALIDATION_SOFTEN = (0.0, 0.7, 0.0, 1.0)
_SOFTEN_SIGMA = (0.3, 1.0)
_PERTURB_ZOOM = (0.8, 1.25)
_COMPRESS_QUALITY = (75, 95)


def zoom_kernel(kernel: np.ndarray, zoom: float) -> np.ndarray:
    """``kernel`` (kh, kw) stretched ``zoom``× about its middle sample (bilinear), odd-sided, summing to 1.

    The PSF perturbation of training: a PSF a little too narrow or too wide, as a measured or estimated one is.
    """
    kh, kw = kernel.shape
    out_h, out_w = (2 * max(1, math.ceil((side // 2) * zoom)) + 1 for side in (kh, kw))
    # Output sample o (about the middle) reads input position o / zoom (about the middle).
    offset = (kh // 2 - (out_h // 2) / zoom, kw // 2 - (out_w // 2) / zoom)
    out = scipy.ndimage.affine_transform(
        kernel.astype(np.float64), (1 / zoom, 1 / zoom), offset=offset, output_shape=(out_h, out_w), order=1, mode="constant"
    )
    total = out.sum()
    return (out / total).astype(np.float32) if total > 0 else kernel


def _fit(kernel: np.ndarray, side: int) -> np.ndarray:
    """The kernel cropped about its middle to at most ``side`` (odd) pixels, renormalised: a crop must hold its PSF."""
    limit = side - 1 if side % 2 == 0 else side
    kh, kw = kernel.shape
    if kh <= limit and kw <= limit:
        return kernel
    dy, dx = max(0, (kh - limit) // 2), max(0, (kw - limit) // 2)
    cropped = kernel[dy : kh - dy, dx : kw - dx]
    return cropped / cropped.sum()


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand(1, generator=generator, dtype=torch.float64).item()


def _randint(generator: torch.Generator, high: int) -> int:
    return int(torch.randint(0, high, (1,), generator=generator))


class ScaledCrops(Dataset):
    """(input, target) float tensors shaped (3, crop, crop) in [0, 1], drawn as the module explains.

    ``pairs``: sharp-only pairs (their ``sharp`` files are the sources). ``samples``: the length of
    an epoch (training draws images with replacement, so any length works); ignored when ``fixed``,
    where there is one sample per image. ``scales``: (low, high) down-scale range, low ≥ 1.
    """

    def __init__(
        self,
        pairs: list[Pair],
        crop: int,
        scales: tuple[float, float],
        degrade: DegradeSpec,
        seed: int = 0,
        samples: int | None = None,
        soften: float = 0.0,
        compress: float = 0.0,
        fixed: bool = False,
        psf: bool = False,
        perturb: float = 0.0,
        estimated: float = 0.0,
    ) -> None:
        if not pairs:
            raise ValueError("no images to sample from")
        if crop < 16:
            raise ValueError(f"crop must be at least 16, got {crop}")
        if not 1.0 <= scales[0] <= scales[1]:
            raise ValueError(f"scales must be (low, high) with 1 <= low <= high, got {scales}")
        if not all(0.0 <= p <= 1.0 for p in (soften, compress, perturb, estimated)):
            raise ValueError(
                f"soften, compress, perturb and estimated are probabilities in [0, 1], got {soften}, {compress}, {perturb}, {estimated}"
            )
        if estimated and crop < MIN_SIDE:
            raise ValueError(
                f"estimated PSFs need crops of at least {MIN_SIDE} px (the blur estimator's smallest tile), got {crop}"
            )
        self.pairs, self.crop, self.scales, self.degrade, self.seed = pairs, crop, scales, degrade, seed
        self.samples = len(pairs) if fixed or samples is None else samples
        self.soften, self.compress, self.fixed = soften, compress, fixed
        self.psf, self.perturb, self.estimated = psf, perturb, estimated
        self._estimator: BlurEstimator | None = None  # loaded in the process that draws (a DataLoader worker), on first use
        self.epoch = 0
        self._cache: dict[int, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples

    def _image(self, index: int) -> np.ndarray:
        """The decoded source, (H, W, 3); 8-bit sources are kept as uint8 (a quarter of the memory)."""
        if index not in self._cache:
            path = self.pairs[index].sharp
            loaded = read_image(path)
            if min(loaded.rgb.shape[:2]) < self.crop:
                raise UserError(
                    f"{path}: image {loaded.rgb.shape[1]}×{loaded.rgb.shape[0]} is smaller than crop={self.crop}; lower `crop`"
                )
            rgb = loaded.rgb
            self._cache[index] = np.round(rgb * 255).astype(np.uint8) if loaded.bit_depth == 8 else rgb.astype(np.float32)
        return self._cache[index]

    def _window(self, image: np.ndarray, scale: float, generator: torch.Generator | None) -> torch.Tensor:
        """A ``crop``-px window of ``image`` at down-scale ``scale`` as a (1, 3, crop, crop) float tensor in [0, 1]:
        centred and area-shrunk when ``generator`` is None (validation), else placed and resampled at random."""
        height, width = image.shape[:2]
        side = min(math.ceil(self.crop * scale), height, width)
        if generator is None:
            top, left = (height - side) // 2, (width - side) // 2
        else:
            top, left = _randint(generator, height - side + 1), _randint(generator, width - side + 1)
        window = image[top : top + side, left : left + side]
        window = window.astype(np.float32) / 255.0 if window.dtype == np.uint8 else window.astype(np.float32)
        if side != self.crop:
            kernel, library = ("box", "cv2") if generator is None else SHRINKERS[_randint(generator, len(SHRINKERS))]
            window = resize(window, (self.crop, self.crop), kernel, library)
        return torch.from_numpy(np.ascontiguousarray(window.transpose(2, 0, 1)))[None]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fixed:
            source = self._image(index)
            target = self._window(source, VALIDATION_SCALES[index % len(VALIDATION_SCALES)], None)
            sigma = VALIDATION_SOFTEN[index // len(VALIDATION_SCALES) % len(VALIDATION_SOFTEN)]
            target = quantize8((blur(target, gaussian_kernel(sigma)) if sigma else target)[0])
            blurred, record = fixed_degradation(target, self.degrade, self.pairs[index].name)
            return self._with_kernel(blurred, record.kernel), target
        blurred, target, record, generator = self.draw(index)
        kernel = record.kernel
        if self.psf and self.estimated and torch.rand(1, generator=generator).item() < self.estimated:
            kernel = self._estimated_kernel(blurred)
        elif self.psf and record.family != "none" and torch.rand(1, generator=generator).item() < self.perturb:
            kernel = zoom_kernel(kernel, math.exp(_uniform(generator, math.log(_PERTURB_ZOOM[0]), math.log(_PERTURB_ZOOM[1]))))
        return self._with_kernel(blurred, kernel), target

    def _estimated_kernel(self, blurred: torch.Tensor) -> np.ndarray:
        """The PSF the shipped blur estimator finds in ``blurred`` (3, crop, crop): what the restorer is told at use."""
        if self._estimator is None:
            from meddeblur.psf.estimate import BlurEstimator

            self._estimator = BlurEstimator.load()
        return self._estimator.estimate(blurred).psf.kernel

    def draw(self, index: int) -> tuple[torch.Tensor, torch.Tensor, Degradation, torch.Generator]:
        """Training sample ``index`` of this epoch: (blurred, target, its degradation record, the generator drawn from)."""
        generator = torch.Generator().manual_seed(degradation_seed(self.seed, self.epoch, index))
        chosen = _randint(generator, len(self.pairs))
        low, high = self.scales
        scale = math.exp(_uniform(generator, math.log(low), math.log(high)))
        target = self._window(self._image(chosen), scale, generator)
        if torch.rand(1, generator=generator).item() < self.soften:
            target = blur(target, gaussian_kernel(_uniform(generator, *_SOFTEN_SIGMA)))
        if torch.rand(1, generator=generator).item() < self.compress:
            target = jpeg(target, round(_uniform(generator, *_COMPRESS_QUALITY)))
        target = quantize8(target[0])
        _, target = augment_pair(target, target, generator)
        blurred, (record,) = degrade(target, self.degrade, generator)
        return blurred, target, record, generator

    def _with_kernel(self, blurred: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
        """``blurred`` itself, or for a PSF model (``psf``) with the kernel canvas appended as one more channel."""
        if not self.psf:
            return blurred
        return torch.cat(
            [blurred, kernel_canvas(_fit(kernel, self.crop if not self.fixed else blurred.shape[-1]), *blurred.shape[-2:])[None]]
        )


class EpochSamples(Dataset):
    """An epoch of ``samples`` items from ``dataset`` (an epoch-seeded dataset such as PairDataset): rounds over it.

    Round ``r`` of epoch ``e`` is the base dataset's epoch ``e · rounds + r``, so repeated images get fresh draws.
    """

    def __init__(self, dataset, samples: int) -> None:
        self.dataset, self.samples = dataset, samples
        self.rounds = math.ceil(samples / len(dataset))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int):
        self.dataset.set_epoch(self.epoch * self.rounds + index // len(self.dataset))
        return self.dataset[index % len(self.dataset)]
