"""Synthetic dermoscopy-like images for the demo and the tests (whose blurred/sharp pairs are in tests/synthetic_pairs.py).

Everything here is generated from a random seed: a cartoon of a dermoscopic
photograph (skin, one pigmented lesion with a pigment-network-like pattern and
dots, a few hairs). It contains no patient data and is not meant to be realistic
enough for training a clinical model, only to exercise the pipeline with images
that have fine detail for blur to destroy.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["synthetic_dermoscopy"]

# Colours in linear-ish RGB [0, 1], chosen by eye from typical dermoscopy photographs.
_SKIN = np.array([0.86, 0.66, 0.58], np.float32)
_LESION_LIGHT = np.array([0.62, 0.42, 0.30], np.float32)
_LESION_DARK = np.array([0.30, 0.17, 0.11], np.float32)
_NETWORK = np.array([0.20, 0.11, 0.07], np.float32)
_VEIL = np.array([0.45, 0.45, 0.55], np.float32)
_HAIR = np.array([0.10, 0.07, 0.05], np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, rescaled to unit standard deviation."""
    field: np.ndarray = rng.standard_normal((h, w)).astype(np.float32)
    field = cv2.GaussianBlur(field, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    return field / (field.std() + 1e-6)


def _low_freq(rng: np.random.Generator, h: int, w: int, cells: int = 4) -> np.ndarray:
    """Very smooth field: a coarse random grid upsampled bicubically (cheaper than a huge blur)."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _lesion_mask(rng: np.random.Generator, h: int, w: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Soft mask of an irregular blob and the normalised radius (0 centre, 1 border)."""
    cy = h / 2 + rng.uniform(-0.1, 0.1) * h
    cx = w / 2 + rng.uniform(-0.1, 0.1) * w
    r0 = rng.uniform(0.22, 0.32) * scale
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    theta = np.arctan2(dy, dx)
    # Perturbing the radius with a few angular harmonics gives the asymmetric,
    # lobulated outline of a melanocytic lesion; 1/k amplitudes keep it blob-like.
    radius = np.ones_like(theta)
    for k in range(2, 9):
        radius += rng.uniform(0.03, 0.12) / k * 2 * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius *= r0
    rnorm = np.sqrt(dx * dx + dy * dy) / radius
    # Fine border irregularity (notches) so the edge is not a clean curve.
    rnorm += 0.03 * _smooth_noise(rng, h, w, max(1.5, 0.015 * scale))
    edge = max(0.03, 2.0 / (r0 + 1e-6))  # soft-ish edge, at least ~2 px wide
    mask = np.clip((1.0 - rnorm) / edge + 0.5, 0.0, 1.0)
    mask = mask * mask * (3 - 2 * mask)  # smoothstep
    return mask.astype(np.float32), rnorm.astype(np.float32)


def _skin_lines(rng: np.random.Generator, h: int, w: int, spacing: float) -> np.ndarray:
    """Maze of faint lines in [0, 1]: zero crossings of band-pass noise look like skin furrows."""
    cell = max(1.2, spacing)
    band = _smooth_noise(rng, h, w, cell) - 0.6 * _smooth_noise(rng, h, w, 2.5 * cell)
    return np.exp(-((band / (0.35 * band.std())) ** 2)).astype(np.float32)


def _pigment_network(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Honeycomb-like mesh in [0, 1]: the borders of Voronoi cells around jittered grid points."""
    cell = max(4.0, 0.035 * scale)  # hole size of the network, in pixels
    gy, gx = np.mgrid[0 : h + cell : cell, 0 : w + cell : cell].astype(np.float32)
    jitter = rng.uniform(-0.4, 0.4, (2, *gy.shape)) * cell
    ys = np.clip(gy + jitter[0], 0, h - 1).astype(np.intp).ravel()
    xs = np.clip(gx + jitter[1], 0, w - 1).astype(np.intp).ravel()
    seeds = np.full((h, w), 255, np.uint8)
    seeds[ys, xs] = 0
    # Each pixel is labelled with its nearest seed; label changes are the cell borders.
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    edges: np.ndarray = np.zeros((h, w), np.float32)
    edges[:, 1:] += labels[:, 1:] != labels[:, :-1]
    edges[1:, :] += labels[1:, :] != labels[:-1, :]
    # A slight blur anti-aliases the 1-px borders; noise makes line darkness irregular.
    edges = cv2.GaussianBlur(np.minimum(edges, 1.0), (0, 0), sigmaX=0.7, borderType=cv2.BORDER_REFLECT)
    strength = np.clip(0.8 + 0.4 * _smooth_noise(rng, h, w, 2 * cell), 0.0, 1.0)
    return np.clip(edges * 1.6 * strength, 0.0, 1.0)


def _dots(rng: np.random.Generator, h: int, w: int, mask: np.ndarray, scale: float) -> np.ndarray:
    """Dark dots and globules scattered inside the lesion, anti-aliased."""
    canvas = np.zeros((h, w), np.uint8)
    ys, xs = np.nonzero(mask > 0.6)
    if len(ys) == 0:
        return canvas.astype(np.float32)
    shift = 4  # sub-pixel precision for cv2 drawing
    for i in rng.integers(0, len(ys), size=int(rng.integers(8, 20))):
        r = rng.uniform(0.005, 0.014) * scale
        centre = (int(xs[i] * 16 + rng.integers(0, 16)), int(ys[i] * 16 + rng.integers(0, 16)))
        cv2.circle(canvas, centre, max(1, int(r * 16)), 255, -1, cv2.LINE_AA, shift)
    return canvas.astype(np.float32) / 255.0


def _hairs(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Coverage mask of a few thin dark curved hairs (quadratic Bezier curves)."""
    canvas = np.zeros((h, w), np.uint8)
    shift = 4
    t = np.linspace(0.0, 1.0, 64)[:, None]
    for _ in range(int(rng.integers(2, 6))):
        # Start and end outside opposite-ish sides so hairs cross the field of view.
        p0 = rng.uniform([-0.1 * w, -0.1 * h], [1.1 * w, 1.1 * h])
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.5, 1.2) * scale
        p2 = p0 + length * np.array([np.cos(angle), np.sin(angle)])
        bend = rng.uniform(-0.25, 0.25) * length * np.array([-np.sin(angle), np.cos(angle)])
        p1 = (p0 + p2) / 2 + bend
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        thickness = max(1, round(rng.uniform(0.004, 0.009) * scale))
        curve = np.round(pts * (1 << shift)).astype(np.int32)
        cv2.polylines(canvas, [curve], False, 255, thickness, cv2.LINE_AA, shift)
    return canvas.astype(np.float32) / 255.0


def synthetic_dermoscopy(height: int = 256, width: int = 256, seed: int = 0) -> np.ndarray:
    """A SYNTHETIC dermoscopy-like image, (H, W, 3) float32 in [0, 1], deterministic per seed.

    Skin-toned textured background, an irregular brown lesion with a
    pigment-network-like pattern and dots, and a few dark hairs. Not real data.
    """
    if height < 8 or width < 8:
        raise ValueError(f"synthetic images must be at least 8x8, got {height}x{width}")
    rng = np.random.default_rng(seed)
    h, w = int(height), int(width)
    scale = float(min(h, w))

    # Skin: per-image tone, slow blotchy variation, fine granular texture and skin furrows.
    skin = _SKIN * (1 + rng.uniform(-0.06, 0.06, 3).astype(np.float32))
    img = np.broadcast_to(skin, (h, w, 3)).copy()
    img *= (1 + 0.04 * _low_freq(rng, h, w))[..., None]
    img[..., 0] += 0.025 * _low_freq(rng, h, w, 3)  # uneven redness (erythema)
    img *= (1 + 0.025 * _smooth_noise(rng, h, w, 0.8))[..., None]
    furrows = _skin_lines(rng, h, w, 0.03 * scale)
    img *= (1 - 0.06 * furrows)[..., None]

    # Lesion: colour darkens towards the centre, with blotches, network and dots.
    mask, rnorm = _lesion_mask(rng, h, w, scale)
    depth = np.clip(1.0 - rnorm + 0.25 * _low_freq(rng, h, w, 5), 0.0, 1.0)[..., None]
    lesion = _LESION_LIGHT + (_LESION_DARK - _LESION_LIGHT) * depth
    lesion *= (1 + 0.05 * _smooth_noise(rng, h, w, 1.0))[..., None]
    # Real networks fade towards the periphery of the lesion.
    network = _pigment_network(rng, h, w, scale) * np.clip(1.5 - 1.1 * rnorm, 0, 1)
    lesion += (_NETWORK - lesion) * (0.75 * network)[..., None]
    veil = np.clip(_low_freq(rng, h, w, 3) - 0.6, 0, 1) * np.clip(1.0 - rnorm, 0, 1) * 0.8
    lesion += (_VEIL - lesion) * veil[..., None]
    lesion += (_NETWORK * 0.6 - lesion) * (0.9 * _dots(rng, h, w, mask, scale))[..., None]
    img += (lesion - img) * mask[..., None]

    # Hairs lie on top of everything.
    hair = _hairs(rng, h, w, scale)[..., None]
    img += (_HAIR - img) * (0.9 * hair)

    # Mild vignette of the dermatoscope's circular field of view.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rr = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    img *= np.clip(1.12 - 0.2 * rr**2, 0.0, 1.0)[..., None]
    return np.clip(img, 0.0, 1.0).astype(np.float32)
