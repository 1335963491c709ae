"""Synthetic degradations (blur, resolution loss, noise, JPEG) for training from sharp images.

Images are (N, C, H, W) float tensors in [0, 1] on any device. Kernels are float32 (k, k)
tensors, k odd, non-negative, summing to 1, centred on the middle pixel, applied by true
convolution (not correlation), which matters for the asymmetric motion and shake kernels.
Angles are in degrees, counter-clockwise as the image is displayed (rows grow downwards).

A spec string picks the degradation, e.g. ``mixed`` or ``gauss:sigma=0.5..2.5+jpeg:quality=90``
(see :func:`parse_spec`); :func:`degrade` draws its parameters per image from a CPU
``torch.Generator``, so a seed fixes the output bit for bit. Every pipeline ends with 8-bit
quantisation, because the photographs being modelled are 8-bit.
"""

from __future__ import annotations

import cmath
import functools
import io
import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from meddeblur.errors import UserError

__all__ = [
    "gaussian_kernel", "disk_kernel", "motion_kernel", "shake_kernel", "resolution_kernel",
    "blur", "downup", "add_gaussian_noise", "add_poisson_gaussian_noise", "jpeg", "quantize8",
    "Degradation", "StageSpec", "DegradeSpec", "parse_spec", "degrade", "degradation_seed",
]

# Kernel size above which FFT convolution beats direct depthwise conv2d (measured on 256x256).
_FFT_ABOVE_CPU, _FFT_ABOVE_GPU = 7, 15
_SAMPLES_PER_PX = 32  # points per pixel of path length when splatting motion and shake paths


# --------------------------------------------------------------------------- kernels


def _odd_size(size: int | None, radius: int) -> int:
    if size is None:
        return 2 * radius + 1
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")
    return int(size)


def _cos_sin(angle: float) -> tuple[float, float]:
    """cos/sin of an angle in degrees, exact at multiples of 90 so that 90 degrees is a transpose."""
    rad = math.radians(angle % 360.0)
    c, s = math.cos(rad), math.sin(rad)
    return (0.0 if abs(c) < 1e-12 else c), (0.0 if abs(s) < 1e-12 else s)


def _normalised(kernel: np.ndarray) -> Tensor:
    total = kernel.sum()
    if not total > 0:
        raise ValueError("kernel has no weight inside its size; use a larger size")
    return torch.from_numpy((kernel / total).astype(np.float32))


def _splat(x: np.ndarray, y: np.ndarray, size: int) -> Tensor:
    """Equal-weight points (column, row offsets from the centre) splatted bilinearly, (size, size).

    Hand-written: cv2/skimage only draw lines with integer or 1/2^k endpoints; bilinear
    splatting keeps sub-pixel positions and moves the kernel's centroid exactly with the points.
    """
    r = size // 2
    x, y = x + r, y + r
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    out = np.zeros(size * size)
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        xi, yi = x0 + dx, y0 + dy
        ok = (w > 0) & (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
        out += np.bincount(yi[ok] * size + xi[ok], weights=w[ok], minlength=size * size)
    return _normalised(out.reshape(size, size))


def gaussian_kernel(sigma: float, sigma_y: float | None = None, angle: float = 0.0, size: int | None = None) -> Tensor:
    """Sampled Gaussian, (k, k); anisotropic when ``sigma_y`` is given.

    ``sigma`` lies along the x axis rotated by ``angle`` degrees, ``sigma_y`` across it.
    Default k = 2 * ceil(3 * max sigma) + 1.
    """
    sy = sigma if sigma_y is None else sigma_y
    if not (sigma > 0 and sy > 0):
        raise ValueError(f"Gaussian sigmas must be > 0, got {sigma}, {sy}")
    size = _odd_size(size, math.ceil(3 * max(sigma, sy)))
    r = size // 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    c, s = _cos_sin(angle)
    u = xx * c - yy * s  # along the rotated x axis, whose screen direction is (cos, -sin)
    v = xx * s + yy * c
    return _normalised(np.exp(-0.5 * ((u / sigma) ** 2 + (v / sy) ** 2)))


def disk_kernel(radius: float, size: int | None = None) -> Tensor:
    """Defocus (pillbox) of ``radius`` px, (k, k); each pixel weighs its covered fraction (8x8 subsamples).

    Default k = 2 * ceil(radius) + 1.
    """
    if not radius > 0:
        raise ValueError(f"disk radius must be > 0, got {radius}")
    size = _odd_size(size, math.ceil(radius))
    sub = 8
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    g = (np.arange(size)[:, None] - size // 2 + offsets[None, :]).ravel()
    inside = (g[:, None] ** 2 + g[None, :] ** 2) <= radius**2
    return _normalised(inside.reshape(size, sub, size, sub).mean(axis=(1, 3)))


def motion_kernel(length: float, angle: float = 0.0, size: int | None = None) -> Tensor:
    """Linear motion blur, (k, k): a centred segment at ``angle`` degrees, anti-aliased.

    The support along the motion spans ``length`` px: the path is length - 1 px long and each
    sample's bilinear footprint adds one pixel (at angle 0 and integer length, exactly
    ``length`` columns with half-weight ends). Default k = 2 * ceil((length - 1) / 2) + 1.
    """
    if not length >= 1:
        raise ValueError(f"motion length must be >= 1, got {length}")
    path = length - 1.0
    size = _odd_size(size, math.ceil(path / 2))
    n = max(1, math.ceil(path * _SAMPLES_PER_PX))
    t = (np.arange(n) + 0.5) / n * path - path / 2
    c, s = _cos_sin(angle)
    return _splat(t * c, -t * s, size)


def _shake_path(generator: torch.Generator, steps: int = 2000, max_len: float = 60.0) -> np.ndarray:
    """Boracchi & Foi (2012) camera-shake trajectory, (steps, 2) as (x, y), constant speed.

    Velocity with a random (Gaussian) acceleration, a pull back towards the start, and rare
    impulsive jerks that roughly reverse the direction; the constants are those of their code.
    """
    u = torch.rand(5, generator=generator, dtype=torch.float64).tolist()
    centripetal, gaussian, big_shakes = 0.7 * u[0], 10.0 * u[1], 0.2 * u[2]
    anxiety = 0.003 + 0.007 * u[4]  # the range of "exploration" values DeblurGAN draws from
    normal = torch.randn(steps - 1, 2, generator=generator, dtype=torch.float64).tolist()
    jerk = torch.rand(steps - 1, 2, generator=generator, dtype=torch.float64).tolist()
    step = max_len / (steps - 1)
    v = cmath.exp(2j * math.pi * u[3]) * anxiety
    x = 0j
    points = [x]
    # A plain loop: each step's velocity depends non-linearly on the previous one.
    for (nx, ny), (j0, j1) in zip(normal, jerk):
        dv = 2 * v * cmath.exp(1j * (math.pi + j1 - 0.5)) if j0 < big_shakes * anxiety else 0j
        v += dv + anxiety * (gaussian * complex(nx, ny) - centripetal * x) * step
        v = v / abs(v) * step
        x += v
        points.append(x)
    z = np.asarray(points)
    return np.stack([z.real, z.imag], axis=1)


def shake_kernel(extent: float, generator: torch.Generator, size: int | None = None) -> Tensor:
    """Random camera-shake kernel, (k, k), deterministic given ``generator``'s state.

    A Boracchi & Foi (2012) trajectory scaled so that its support's larger side spans ``extent``
    px (path bounding box extent - 1 px plus the bilinear footprint, as in :func:`motion_kernel`),
    splatted bilinearly, and centred on its centroid so that blurring does not shift the image.
    Default k is just large enough for the support.
    """
    if not extent >= 1:
        raise ValueError(f"shake extent must be >= 1, got {extent}")
    # Tangled paths (many loops) look unlike measured shake kernels (Levin et al. 2009): redraw
    # those whose length (60) exceeds 3x their bounding box, keeping the widest of at most 20.
    best = np.zeros((1, 2))
    for _ in range(20):
        path = _shake_path(generator)
        best = path if np.ptp(path, axis=0).max() > np.ptp(best, axis=0).max() else best
        if np.ptp(best, axis=0).max() >= 20.0:
            break
    path = best - best.min(axis=0)
    path *= (extent - 1.0) / max(float(path.max()), 1e-12)
    # Resample uniformly along the path so that splatted samples are dense (< 1/32 px apart).
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))])
    n = max(1, math.ceil(arc[-1] * _SAMPLES_PER_PX))
    s = (np.arange(n) + 0.5) / n * arc[-1]
    x, y = np.interp(s, arc, path[:, 0]), np.interp(s, arc, path[:, 1])
    x, y = x - x.mean(), y - y.mean()
    size = _odd_size(size, math.ceil(max(np.abs(x).max(), np.abs(y).max())))
    return _splat(x, y, size)


@functools.lru_cache(maxsize=None)
def _resolution_kernel(scale: int, up: str) -> np.ndarray:
    # Down-up is separable, and so is its phase average: a 1-D profile's outer product.
    # The up-scaler's taps reach 2 (bicubic) or 1 (bilinear) low-res pixels past the pixel itself.
    reach = math.ceil((2.5 if up == "bicubic" else 1.5) * scale)
    centre = (math.ceil(reach / scale) + 1) * scale
    impulses = torch.zeros(scale, 1, 1, 2 * centre + scale, dtype=torch.float64)
    impulses[torch.arange(scale), 0, 0, centre + torch.arange(scale)] = 1.0
    response = _resample(impulses, scale, up)[:, 0, 0]
    profile = torch.stack([response[p, centre + p - reach : centre + p + reach + 1] for p in range(scale)])
    profile = profile.mean(0).clamp(min=0).numpy()
    profile = np.trim_zeros(profile)  # symmetric, so the trim keeps it centred
    kernel = np.outer(profile, profile)
    return (kernel / kernel.sum()).astype(np.float32)


def resolution_kernel(scale: int, up: str = "bicubic") -> Tensor:
    """Approximate PSF of :func:`downup` (area down ``scale``x, then ``up``-scaling), (k, k).

    Only an approximation: down-up is not shift-invariant, so this is its impulse response
    averaged over the scale x scale sub-pixel phases; bicubic's negative lobes are clipped to 0.
    """
    _check_downup_args(scale, up)
    return torch.from_numpy(_resolution_kernel(int(scale), up).copy())


# --------------------------------------------------------------------------- operators


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"expected float images shaped (N, C, H, W), got {images.dtype} {tuple(images.shape)}")


def _work_dtype(images: Tensor) -> torch.dtype:
    # Half precision lacks the mantissa for 8-bit rounding and FFTs of arbitrary size.
    return images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32


def blur(images: Tensor, kernel: Tensor, method: str = "auto") -> Tensor:
    """Convolve (N, C, H, W) images with a (k, k) kernel or one (N, k, k) kernel per image.

    Reflect boundaries (replicate when the image is smaller than k // 2). ``method`` is
    "direct" (depthwise conv2d), "fft" (torch.fft), or "auto": FFT for k > 7 on the CPU, k > 15
    elsewhere. Linear, no clamping.
    """
    _check_images(images)
    n, c, h, w = images.shape
    if kernel.dim() == 2:
        kernel = kernel[None]
    k = kernel.shape[-1]
    if kernel.dim() != 3 or kernel.shape[0] not in (1, n) or kernel.shape[1] != k or k % 2 == 0:
        raise ValueError(f"kernel must be (k, k) or ({n}, k, k) with k odd, got {tuple(kernel.shape)}")
    if method not in ("auto", "direct", "fft"):
        raise ValueError(f"method must be 'auto', 'direct' or 'fft', got {method!r}")
    dtype = _work_dtype(images)
    x = images.to(dtype)
    kernel = kernel.to(x.device, dtype)
    p = k // 2
    if p:
        x = F.pad(x, (p, p, p, p), mode="reflect" if p < h and p < w else "replicate")
    if method == "fft" or (method == "auto" and k > (_FFT_ABOVE_CPU if x.device.type == "cpu" else _FFT_ABOVE_GPU)):
        out = _conv_fft(x, kernel, h, w)
    else:
        weight = kernel.flip(-1, -2)[:, None]  # conv2d correlates; the flip makes it a convolution
        if weight.shape[0] == 1:
            out = F.conv2d(x, weight.expand(c, 1, k, k), groups=c)
        else:
            out = F.conv2d(x.reshape(1, n * c, h + 2 * p, w + 2 * p), weight.repeat_interleave(c, 0), groups=n * c)
            out = out.reshape(n, c, h, w)
    return out.to(images.dtype)


def _conv_fft(padded: Tensor, kernel: Tensor, h: int, w: int) -> Tensor:
    """Circular convolution of the padded images; the crop keeps only the wrap-free part."""
    k = kernel.shape[-1]
    p = k // 2
    fh = scipy.fft.next_fast_len(padded.shape[-2], real=True)
    fw = scipy.fft.next_fast_len(padded.shape[-1], real=True)
    # Kernel centre moved to the origin, so that output pixel i sums inputs i - p .. i + p.
    kpad = F.pad(kernel, (0, fw - k, 0, fh - k)).roll((-p, -p), dims=(-2, -1))
    spectrum = torch.fft.rfft2(padded, s=(fh, fw)) * torch.fft.rfft2(kpad)[:, None]
    return torch.fft.irfft2(spectrum, s=(fh, fw))[..., p : p + h, p : p + w]


def _check_downup_args(scale: int, up: str) -> None:
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    if up not in ("bicubic", "bilinear"):
        raise ValueError(f"up must be 'bicubic' or 'bilinear', got {up!r}")


def _resample(x: Tensor, scale: int, up: str) -> Tensor:
    h, w = x.shape[-2:]
    low = F.interpolate(x, size=(max(1, h // scale), max(1, w // scale)), mode="area")
    return F.interpolate(low, size=(h, w), mode=up, align_corners=False)


def downup(images: Tensor, scale: int, up: str = "bicubic") -> Tensor:
    """Area down-scale by ``scale`` then ``up``-scale back to exactly (H, W); (N, C, H, W), clamped.

    Low-resolution capture (a phone far from the skin, a digital zoom). For H or W not divisible
    by ``scale`` the low-res size is floor(H / scale) with adaptive area windows.
    """
    _check_images(images)
    _check_downup_args(scale, up)
    out = _resample(images.to(_work_dtype(images)), int(scale), up)
    return out.clamp(0.0, 1.0).to(images.dtype)


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
    _check_images(images)
    s = _per_image(sigma, images.shape[0], "sigma")
    if (s < 0).any():
        raise ValueError("sigma must be >= 0")
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float32) * s.float().view(-1, 1, 1, 1)
    return (images + noise.to(images.device, images.dtype)).clamp(0.0, 1.0)


def add_poisson_gaussian_noise(images: Tensor, peak: float, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """Sensor noise: Poisson(images * peak) / peak plus N(0, sigma^2); clamped. (N, C, H, W).

    ``peak`` is the photon count of white, so the shot noise grows with brightness. Drawn on the CPU.
    """
    _check_images(images)
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
    _check_images(images)
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
    decoded = torch.from_numpy(out).permute(0, 3, 1, 2).to(_work_dtype(images)) / 255.0
    return decoded.to(images.device, images.dtype)


def quantize8(images: Tensor) -> Tensor:
    """round(x * 255) / 255 after clamping to [0, 1]; any shape."""
    x = images.to(_work_dtype(images))
    return (torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0).to(images.dtype)


# --------------------------------------------------------------------------- spec strings

Value = float | int | str | tuple[float, float]  # a number, a (low, high) range or a word


@dataclass(frozen=True)
class _Key:
    default: Value | None  # None: absent unless given
    kind: str = "real"  # "real", "int" or "word"
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False  # low itself is not allowed
    words: tuple[str, ...] = ()

    def bounds(self) -> str:
        return f"{'>' if self.open_low else '>='} {_fmt(self.low)} and <= {_fmt(self.high)}"


_POSITIVE = dict(low=0.0, open_low=True)
_ANGLE = _Key((0.0, 180.0), low=-360.0, high=360.0)
_FAMILIES: dict[str, dict[str, _Key]] = {
    "gauss": {"sigma": _Key((0.5, 3.0), high=20.0, **_POSITIVE), "sigma_y": _Key(None, high=20.0, **_POSITIVE),
              "angle": _ANGLE},
    "defocus": {"radius": _Key((1.0, 5.0), high=50.0, **_POSITIVE)},
    "motion": {"length": _Key((3.0, 21.0), low=1.0, high=101.0), "angle": _ANGLE},
    "shake": {"extent": _Key((5.0, 21.0), low=1.0, high=101.0)},
    "down": {"scale": _Key(2, "int", 2, 16), "up": _Key("bicubic", "word", words=("bicubic", "bilinear"))},
    "mixed": {},
    "none": {},
}
_ALIASES = {"identity": "none"}
_OPS: dict[str, dict[str, _Key]] = {
    "noise": {"sigma": _Key((0.0, 0.01), low=0.0, high=1.0)},
    "pgnoise": {"peak": _Key((100.0, 1000.0), high=1e6, **_POSITIVE), "sigma": _Key(0.0, low=0.0, high=1.0)},
    "jpeg": {"quality": _Key((85, 100), "int", 1, 100)},
}
# What "mixed" draws from, one family uniformly per image; Gaussians are anisotropic with p = 0.3.
_MIXED: dict[str, dict[str, Value | tuple[str, ...]]] = {
    "gauss": {"sigma": (0.5, 3.0)},
    "defocus": {"radius": (1.0, 5.0)},
    "motion": {"length": (3.0, 21.0), "angle": (0.0, 180.0)},
    "shake": {"extent": (5.0, 21.0)},
    "down": {"scale": (2, 4), "up": ("bicubic", "bilinear")},
}
_MIXED_ANISO = {"sigma": (0.5, 3.0), "sigma_y": (0.5, 3.0), "angle": (0.0, 180.0)}
_MIXED_OPS = (("noise", {"sigma": (0.0, 0.01)}), ("jpeg", {"quality": (85, 100)}))


def _fmt(v: Value) -> str:
    if isinstance(v, tuple):
        return f"{_fmt(v[0])}..{_fmt(v[1])}"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v) if isinstance(v, (int, str)) else repr(v)


def _stage_str(name: str, params: tuple[tuple[str, Value], ...]) -> str:
    return name + (":" + ",".join(f"{k}={_fmt(v)}" for k, v in params) if params else "")


@dataclass(frozen=True)
class StageSpec:
    """One ``+OP:key=value,...`` operator of a spec; params in canonical order, defaults filled in."""

    name: str
    params: tuple[tuple[str, Value], ...] = ()

    def __str__(self) -> str:
        return _stage_str(self.name, self.params)


@dataclass(frozen=True)
class DegradeSpec:
    """A parsed spec: a blur family with its values (number, (low, high) range or word), then operators."""

    family: str
    params: tuple[tuple[str, Value], ...] = ()
    ops: tuple[StageSpec, ...] = ()

    def __str__(self) -> str:
        return "+".join([_stage_str(self.family, self.params), *map(str, self.ops)])


def _help() -> str:
    def listing(table: dict[str, dict[str, _Key]]) -> str:
        return ", ".join(name + (f"({','.join(keys)})" if keys else "") for name, keys in table.items())

    return (f"valid: FAMILY[:key=value,...][+OP[:key=value,...]]... with families {listing(_FAMILIES)} "
            f"and operators {listing(_OPS)}; a value is a number or a range a..b")


def _parse_stage(spec: str, text: str, table: dict[str, dict[str, _Key]], what: str) -> tuple[str, tuple[tuple[str, Value], ...]]:
    def fail(problem: str) -> UserError:
        return UserError(f"--degrade {spec!r}: {problem}; {_help()}")

    head, colon, rest = text.partition(":")
    name = head.strip().lower()
    name = _ALIASES.get(name, name)
    if not name:
        raise fail(f"empty {what}")
    if name not in table:
        if what == "family" and name in _OPS:
            raise fail(f"'{name}' is an operator, not a blur family; append it, e.g. 'gauss+{name}'")
        raise fail(f"unknown {what} {name!r}")
    keys = table[name]
    given: dict[str, Value] = {}
    for item in rest.split(",") if colon else ():
        key, eq, raw = (s.strip() for s in item.partition("="))
        key = key.lower()
        if not eq or not key or not raw:
            raise fail(f"{name}: expected key=value, got {item.strip()!r}")
        if key not in keys:
            raise fail(f"{name} has no key {key!r}" + (f" (keys: {', '.join(keys)})" if keys else " (it takes no keys)"))
        if key in given:
            raise fail(f"{name}: {key} given twice")
        given[key] = _parse_value(raw, keys[key], f"{name}:{key}", fail)
    if name == "gauss" and "angle" in given and "sigma_y" not in given:
        raise fail("gauss: angle needs sigma_y (an isotropic Gaussian has no direction)")
    params = []
    for key, spec_key in keys.items():
        value = given.get(key, spec_key.default)
        if key == "angle" and name == "gauss" and "sigma_y" not in given:
            value = None
        if value is not None:
            params.append((key, value))
    return name, tuple(params)


def _parse_value(raw: str, key: _Key, where: str, fail) -> Value:
    if key.kind == "word":
        if raw.lower() not in key.words:
            raise fail(f"{where}={raw!r} must be one of {', '.join(key.words)}")
        return raw.lower()
    parts = raw.split("..")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) not in (1, 2) or not all(map(math.isfinite, nums)):
        raise fail(f"{where}={raw!r} is not a number or a range a..b")
    if key.kind == "int":
        if not all(v.is_integer() for v in nums):
            raise fail(f"{where}={raw} must be a whole number")
        nums = [int(v) for v in nums]
    if len(nums) == 2 and nums[0] > nums[1]:
        raise fail(f"{where}={raw} is a reversed range; write low..high")
    for v in nums:
        if v > key.high or v < key.low or (key.open_low and v == key.low):
            raise fail(f"{where}={raw} is out of range; it must be {key.bounds()}")
    return nums[0] if len(nums) == 1 or nums[0] == nums[1] else (nums[0], nums[1])


def parse_spec(spec: str) -> DegradeSpec:
    """Parse ``FAMILY[:key=value,...][+OP[:key=value,...]]...``; raises UserError naming the problem.

    Families: gauss (sigma, sigma_y, angle), defocus (radius), motion (length, angle),
    shake (extent), down (scale, up), mixed, none/identity. Operators: noise (sigma),
    pgnoise (peak, sigma), jpeg (quality). A value is a number, a range ``a..b`` drawn
    uniformly per image (integers for scale and quality), or for ``up`` bicubic/bilinear.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"--degrade {spec!r}: the spec is empty; {_help()}")
    head, *tail = spec.strip().split("+")
    family, params = _parse_stage(spec, head, _FAMILIES, "family")
    ops = tuple(StageSpec(*_parse_stage(spec, text, _OPS, "operator")) for text in tail)
    return DegradeSpec(family, params, ops)


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


def _draw_all(params, table: dict[str, _Key], generator: torch.Generator) -> dict[str, float | int | str]:
    return {key: _draw(value, table[key].kind, generator) for key, value in params}


def _kernel(family: str, p: dict) -> Tensor:
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
    return torch.ones(1, 1)


def _degrade_one(image: Tensor, spec: DegradeSpec, generator: torch.Generator) -> tuple[Tensor, Degradation]:
    family, ops = spec.family, [(op.name, op.params) for op in spec.ops]
    if family == "mixed":
        family = tuple(_MIXED)[_randint(0, len(_MIXED) - 1, generator)]
        chosen = _MIXED[family]
        if family == "gauss" and torch.rand(1, generator=generator).item() < 0.3:
            chosen = _MIXED_ANISO
        params = _draw_all(chosen.items(), _FAMILIES[family], generator)
        ops = [(name, tuple(p.items())) for name, p in _MIXED_OPS] + ops
    else:
        params = _draw_all(spec.params, _FAMILIES[family], generator)
    if family == "shake":
        # Its own seed makes the random trajectory reproducible from the params alone.
        params["seed"] = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    kernel = _kernel(family, params)
    if family == "down":
        out = downup(image, params["scale"], params["up"])
    elif family == "none":
        out = image
    else:
        out = blur(image, kernel)
    record = dict(params)
    for name, op_params in ops:
        p = _draw_all(op_params, _OPS[name], generator)
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
    _check_images(batch)
    results = [_degrade_one(batch[i : i + 1], spec, generator) for i in range(batch.shape[0])]
    out = torch.cat([r[0] for r in results])
    return (out[0] if single else out), [r[1] for r in results]


def degradation_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed mixed from non-negative ``seed`` and ``keys`` (e.g. epoch, index) by numpy's SeedSequence."""
    state = np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(1, np.uint64)
    return int(state[0]) >> 1
