"""Synthetic degradations (blur, resolution loss, noise, JPEG) for training from sharp images.

Images are (N, C, H, W) float tensors in [0, 1] on any device. Kernels are float32 (k, k)
tensors, k odd, non-negative, summing to 1, centred on the middle pixel, applied by true
convolution (not correlation), which matters for the asymmetric motion and shake kernels: the
forward blur :func:`meddeblur.physics.blur`, shared with everything that re-blurs an image.
Angles are in degrees, counter-clockwise as the image is displayed (rows grow downwards).

A spec string picks the degradation, e.g. ``mixed`` or ``gauss:sigma=0.5..2.5+jpeg:quality=90``
(see :func:`parse_spec`); :func:`degrade` draws its parameters per image from a CPU
``torch.Generator``, so a seed fixes the output bit for bit. Every pipeline ends with 8-bit
quantisation, because the photographs being modelled are 8-bit.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from meddeblur.degradation.kernels import (
    check_down_up_args,
    disk_kernel,
    gaussian_kernel,
    motion_kernel,
    resample_down_up,
    resolution_kernel,
    shake_kernel,
)
from meddeblur.degradation.resampling import KERNELS, LIBRARIES, down_up, down_up_kernel, supported
from meddeblur.degradation.spec import (
    FAMILIES,
    MIXED,
    MIXED_ANISO,
    MIXED_OPS,
    OPERATORS,
    REAL,
    REAL_ANISO,
    REAL_OPS,
    DegradeSpec,
    Key,
    StageSpec,
    Value,
    parse_spec,
)
from meddeblur.physics.convolution import blur, check_images, work_dtype

__all__ = [
    "gaussian_kernel",
    "disk_kernel",
    "motion_kernel",
    "shake_kernel",
    "resolution_kernel",
    "downup",
    "resample",
    "add_gaussian_noise",
    "add_poisson_gaussian_noise",
    "jpeg",
    "quantize8",
    "family_kernel",
    "Degradation",
    "StageSpec",
    "DegradeSpec",
    "parse_spec",
    "degrade",
    "degradation_seed",
]

# --------------------------------------------------------------------------- operators


def downup(images: Tensor, scale: int, up: str = "bicubic") -> Tensor:
    """Area down-scale by ``scale`` then ``up``-scale back to exactly (H, W); (N, C, H, W), clamped.

    Low-resolution capture (a phone far from the skin, a digital zoom). For H or W not divisible
    by ``scale`` the low-res size is floor(H / scale) with adaptive area windows.
    """
    check_images(images)
    check_down_up_args(scale, up)
    out = resample_down_up(images.to(work_dtype(images)), int(scale), up)
    return out.clamp(0.0, 1.0).to(images.dtype)


def resample(images: Tensor, scale: float, down: str = "box", up: str = "bicubic", library: str = "pil") -> Tensor:
    """Shrink by ``scale`` and enlarge back as ``library`` (pil, cv2, torch) does; (N, C, H, W), clamped.

    See :mod:`meddeblur.degradation.resampling`: the image libraries' own kernels, not torch's alone.
    """
    check_images(images)
    out = [
        torch.from_numpy(
            down_up(np.ascontiguousarray(x.detach().cpu().float().permute(1, 2, 0).numpy()), float(scale), down, up, library)
        )
        for x in images
    ]
    return torch.stack(out).permute(0, 3, 1, 2).to(images.device, images.dtype)


def _per_image(value: float | Tensor, n: int, name: str) -> Tensor:
    v = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    if v.dim() == 0:
        v = v.expand(n)
    if v.shape != (n,):
        raise ValueError(f"{name} must be a scalar or shaped ({n},), got {tuple(v.shape)}")
    return v


def add_gaussian_noise(images: Tensor, sigma: float | Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Add N(0, sigma^2) noise, sigma scalar or (N,); clamped to [0, 1]. (N, C, H, W).

    Noise is drawn on the CPU from ``generator``, so it does not depend on the images' device.
    """
    check_images(images)
    s = _per_image(sigma, images.shape[0], "sigma")
    if (s < 0).any():
        raise ValueError("sigma must be >= 0")
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float32) * s.float().view(-1, 1, 1, 1)
    return (images + noise.to(images.device, images.dtype)).clamp(0.0, 1.0)


def add_poisson_gaussian_noise(images: Tensor, peak: float, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """Sensor noise: Poisson(images * peak) / peak plus N(0, sigma^2); clamped. (N, C, H, W).

    ``peak`` is the photon count of white, so the shot noise grows with brightness. Drawn on the CPU.
    """
    check_images(images)
    if not (peak > 0 and sigma >= 0):
        raise ValueError(f"need peak > 0 and sigma >= 0, got {peak}, {sigma}")
    rate = images.detach().cpu().double().clamp(0.0, 1.0) * peak
    x = torch.poisson(rate, generator=generator) / peak
    x += sigma * torch.randn(images.shape, generator=generator, dtype=torch.float64)
    return x.clamp(0.0, 1.0).to(images.device, images.dtype)


def _jpeg_roundtrip(pixels: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    # 4:2:0 chroma subsampling, as phone and dermatoscope cameras write.
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB" if pixels.ndim == 3 else "L"))


def jpeg(images: Tensor, quality: int | Tensor) -> Tensor:
    """JPEG round trip through Pillow at ``quality`` (scalar or (N,), 1..100). (N, C, H, W).

    3-channel images are coded as RGB with 4:2:0 chroma subsampling; other channel counts are
    coded channel by channel as greyscale. Runs on the CPU; the result returns to the input's device.
    """
    check_images(images)
    q = _per_image(quality, images.shape[0], "quality")
    if ((q < 1) | (q > 100) | (q != q.round())).any():
        raise ValueError(f"JPEG quality must be an integer in 1..100, got {quality}")
    pixels = quantize8(images.detach()).cpu().mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.empty_like(pixels)
    for i, qi in enumerate(q.int().tolist()):
        if pixels.shape[-1] == 3:
            out[i] = _jpeg_roundtrip(np.ascontiguousarray(pixels[i]), qi)
        else:
            for ch in range(pixels.shape[-1]):
                out[i, ..., ch] = _jpeg_roundtrip(np.ascontiguousarray(pixels[i, ..., ch]), qi)
    decoded = torch.from_numpy(out).permute(0, 3, 1, 2).to(work_dtype(images)) / 255.0
    return decoded.to(images.device, images.dtype)


def quantize8(images: Tensor) -> Tensor:
    """round(x * 255) / 255 after clamping to [0, 1]; any shape."""
    x = images.to(work_dtype(images))
    return (torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0).to(images.dtype)


# --------------------------------------------------------------------------- random pipeline


@dataclass(frozen=True)
class Degradation:
    """What was done to one image: the family, the drawn parameters and the blur kernel used.

    ``params`` holds plain numbers and strings (operators' as ``"noise.sigma"``...; shake's
    trajectory ``seed``). ``kernel`` is float32 summing to 1; for ``down`` the approximate
    :func:`resolution_kernel`, for ``none`` [[1]].
    """

    family: str
    params: dict[str, float | str]
    kernel: np.ndarray

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Degradation):
            return NotImplemented
        return (self.family, self.params) == (other.family, other.params) and np.array_equal(self.kernel, other.kernel)

    def to_json(self) -> dict:
        """Family, params and kernel size, for manifests."""
        return {"family": self.family, "params": dict(self.params), "kernel_size": int(self.kernel.shape[0])}


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def _draw(value: Value | tuple[str, ...], kind: str, generator: torch.Generator) -> float | int | str:
    if isinstance(value, tuple):
        if isinstance(value[0], str):
            return value[_randint(0, len(value) - 1, generator)]
        if kind == "int":
            return _randint(int(value[0]), int(value[1]), generator)
        u = torch.rand(1, generator=generator, dtype=torch.float64).item()
        return float(value[0] + (value[1] - value[0]) * u)
    return value if isinstance(value, str) else (int(value) if kind == "int" else float(value))


def _draw_all(params, table: dict[str, Key], generator: torch.Generator) -> dict[str, Any]:
    return {key: _draw(value, table[key].kind, generator) for key, value in params}


def family_kernel(family: str, p: dict) -> Tensor:
    """The (k, k) kernel of blur ``family`` with drawn parameters ``p`` (a :class:`Degradation`'s params); ``none``: [[1]]."""
    if family == "gauss":
        return gaussian_kernel(p["sigma"], p.get("sigma_y"), p.get("angle", 0.0))
    if family == "defocus":
        return disk_kernel(p["radius"])
    if family == "motion":
        return motion_kernel(p["length"], p["angle"])
    if family == "shake":
        return shake_kernel(p["extent"], torch.Generator().manual_seed(p["seed"]))
    if family == "down":
        return resolution_kernel(p["scale"], p["up"])
    if family == "resample":
        return down_up_kernel(p["scale"], p["down"], p["up"], p["lib"])
    return torch.ones(1, 1)


def _draw_resample(params: dict, generator: torch.Generator) -> dict:
    """Replace "any" by a draw: the library first, then kernels it offers."""
    if params["lib"] == "any":
        params["lib"] = LIBRARIES[_randint(0, len(LIBRARIES) - 1, generator)]
    for key in ("down", "up"):
        if params[key] == "any":
            offered = [k for k in KERNELS if supported(k, params["lib"])]
            params[key] = offered[_randint(0, len(offered) - 1, generator)]
    return params


def _draw_real(generator: torch.Generator) -> tuple[str, dict, list]:
    u = torch.rand(1, generator=generator, dtype=torch.float64).item()
    cumulative = 0.0
    for family, probability, chosen in REAL:  # noqa: B007  (the loop stops at the drawn family: its values are the draw)
        cumulative += probability
        if u < cumulative:
            break
    if family == "gauss" and torch.rand(1, generator=generator).item() < 0.3:
        chosen = REAL_ANISO
    params = _draw_all(chosen.items(), FAMILIES[family], generator)
    ops = (
        []
        if family == "none"
        else [(name, tuple(p.items())) for name, p in REAL_OPS if torch.rand(1, generator=generator).item() < 0.5]
    )
    return family, params, ops


def _degrade_one(image: Tensor, spec: DegradeSpec, generator: torch.Generator) -> tuple[Tensor, Degradation]:
    family, ops = spec.family, [(op.name, op.params) for op in spec.ops]
    if family == "mixed":
        family = tuple(MIXED)[_randint(0, len(MIXED) - 1, generator)]
        chosen = MIXED[family]
        if family == "gauss" and torch.rand(1, generator=generator).item() < 0.3:
            chosen = MIXED_ANISO
        params = _draw_all(chosen.items(), FAMILIES[family], generator)
        ops = [(name, tuple(p.items())) for name, p in MIXED_OPS] + ops
    elif family == "real":
        family, params, drawn_ops = _draw_real(generator)
        ops = drawn_ops + ops
    else:
        params = _draw_all(spec.params, FAMILIES[family], generator)
    if family == "resample":
        params = _draw_resample(params, generator)
    if family == "shake":
        # Its own seed makes the random trajectory reproducible from the params alone.
        params["seed"] = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    kernel = family_kernel(family, params)
    if family == "down":
        out = downup(image, params["scale"], params["up"])
    elif family == "resample":
        out = resample(image, params["scale"], params["down"], params["up"], params["lib"])
    elif family == "none":
        out = image
    else:
        out = blur(image, kernel)
    record = dict(params)
    for name, op_params in ops:
        p = _draw_all(op_params, OPERATORS[name], generator)
        if name == "noise":
            out = add_gaussian_noise(out, p["sigma"], generator)
        elif name == "pgnoise":
            out = add_poisson_gaussian_noise(out, p["peak"], p["sigma"], generator)
        else:
            out = jpeg(out, p["quality"])
        prefix = name
        while any(k.startswith(prefix + ".") for k in record):  # the same operator twice
            prefix += "'"
        record.update({f"{prefix}.{k}": v for k, v in p.items()})
    return quantize8(out), Degradation(family, record, kernel.numpy())


def degrade(images: Tensor, spec: DegradeSpec | str, generator: torch.Generator) -> tuple[Tensor, list[Degradation]]:
    """Degrade (N, C, H, W) or (C, H, W) images in [0, 1] by ``spec``; returns them and one record each.

    Per image: draw the parameters from ``generator`` (a CPU generator; the same state gives
    bit-identical results), blur (or down-up), apply the operators in order, quantise to 8 bits.
    ``quantize8(blur(image[None], torch.from_numpy(record.kernel)))`` reproduces a blur-only result.
    """
    if isinstance(spec, str):
        spec = parse_spec(spec)
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError("degrade needs a CPU torch.Generator, so that draws do not depend on the device")
    single = images.dim() == 3
    batch = images[None] if single else images
    check_images(batch)
    results = [_degrade_one(batch[i : i + 1], spec, generator) for i in range(batch.shape[0])]
    out = torch.cat([r[0] for r in results])
    return (out[0] if single else out), [r[1] for r in results]


def degradation_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed mixed from non-negative ``seed`` and ``keys`` (e.g. epoch, index) by numpy's SeedSequence."""
    state = np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(1, np.uint64)
    return int(state[0]) >> 1
