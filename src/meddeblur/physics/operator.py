"""The blur operator in the Fourier domain: the OTF, circular convolution and its adjoint, and the exact data step.

A kernel is a non-negative (kh, kw) array summing to 1 whose origin is the sample at ``(kh // 2, kw // 2)``: the
blur is ``scipy.ndimage.convolve(sharp, kernel)``. On a padded image (:mod:`meddeblur.physics.boundary`) the blur is
the circular convolution ``y = k ⊛ x``, ``Y = K · X`` with ``K`` the OTF (:func:`otf`, :func:`otf_np`), its adjoint
the correlation ``conj(K) · Y``.

:class:`DataStep` is the closed-form proximal step of the data term (DPIR's ``pre_calculate`` / ``data_solution``)::

    argmin_x ‖k ⊛ x − y‖² + α ‖x − z‖²   =   F⁻¹[(conj(K) Y + α Z) / (|K|² + α)]

with ``conj(K) Y`` and ``|K|²`` computed once per image, so each iteration of an iterative restorer costs two FFTs.

>>> import numpy as np, torch
>>> y = torch.rand(1, 3, 8, 8, dtype=torch.float64)
>>> step = DataStep.prepare(y, otf(np.ones((1, 1)), (8, 8)))
>>> bool(torch.allclose(step(torch.zeros_like(y), 1.0), y / 2))   # a delta kernel: the mean of y and z
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
import torch
from torch import Tensor

__all__ = ["check_kernel", "otf_np", "otf", "convolve_np", "correlate_np", "convolve", "correlate", "DataStep"]


def check_kernel(kernel: np.ndarray) -> np.ndarray:
    """``kernel`` as a float64 (kh, kw) array summing to 1; ValueError when it cannot be one."""
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.size == 0:
        raise ValueError(f"expected a 2-D kernel, got shape {k.shape}")
    if not np.all(np.isfinite(k)) or np.any(k < 0):
        raise ValueError("kernel must be finite and non-negative")
    total = k.sum()
    if total <= 0:
        raise ValueError("kernel must have a positive sum")
    return k / total


def otf_np(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(fh, fw // 2 + 1) complex128 rfft2 of the normalised ``kernel`` placed on a (fh, fw) plane, origin at (0, 0)."""
    k = check_kernel(kernel)
    kh, kw = k.shape
    if kh > shape[0] or kw > shape[1]:
        raise ValueError(f"kernel ({kw}×{kh}) is larger than the plane ({shape[1]}×{shape[0]})")
    plane = np.zeros(shape)
    plane[:kh, :kw] = k
    return scipy.fft.rfft2(np.roll(plane, (-(kh // 2), -(kw // 2)), axis=(0, 1)))


def otf(kernel: np.ndarray | Tensor, shape: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
    """(N, 1, fh, fw // 2 + 1) complex OTFs of (kh, kw) or (N, kh, kw) kernels on a (fh, fw) plane (the twin of
    :func:`otf_np`; a torch kernel keeps its dtype and device, a numpy one becomes float64 on ``device``)."""
    k = torch.as_tensor(kernel, dtype=torch.float64, device=device) if isinstance(kernel, np.ndarray) else kernel
    k = k[None] if k.dim() == 2 else k
    if k.dim() != 3:
        raise ValueError(f"expected (kh, kw) or (N, kh, kw) kernels, got shape {tuple(k.shape)}")
    kh, kw = k.shape[-2:]
    if kh > shape[0] or kw > shape[1]:
        raise ValueError(f"kernel ({kw}×{kh}) is larger than the plane ({shape[1]}×{shape[0]})")
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    plane = torch.nn.functional.pad(k, (0, shape[1] - kw, 0, shape[0] - kh)).roll((-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.rfft2(plane)[:, None]


def convolve_np(image: np.ndarray, transfer: np.ndarray) -> np.ndarray:
    """(fh, fw, C) padded image circularly convolved with the kernel whose OTF (:func:`otf_np`) is ``transfer``."""
    shape = image.shape[:2]
    return scipy.fft.irfft2(
        scipy.fft.rfft2(image, axes=(0, 1), workers=-1) * transfer[..., None], s=shape, axes=(0, 1), workers=-1
    )


def correlate_np(image: np.ndarray, transfer: np.ndarray) -> np.ndarray:
    """The adjoint of :func:`convolve_np`: correlation with the kernel (its OTF conjugated)."""
    return convolve_np(image, np.conj(transfer))


def convolve(images: Tensor, transfer: Tensor) -> Tensor:
    """(N, C, fh, fw) padded images circularly convolved with OTFs ``transfer`` ((N | 1, 1, fh, fw // 2 + 1))."""
    return torch.fft.irfft2(torch.fft.rfft2(images) * transfer, s=images.shape[-2:])


def correlate(images: Tensor, transfer: Tensor) -> Tensor:
    """The adjoint of :func:`convolve`."""
    return torch.fft.irfft2(torch.fft.rfft2(images) * transfer.conj(), s=images.shape[-2:])


@dataclass(frozen=True)
class DataStep:
    """The exact minimiser of ``‖k ⊛ x − y‖² + α‖x − z‖²`` for one padded ``y`` (see the module docstring).

    Build with :meth:`prepare` (the FFTs of the kernel and of ``y``, once); call with ``z`` ((N, C, fh, fw)) and
    ``alpha`` (a number, or (N,) per image; > 0).
    """

    adjoint_y: Tensor  # conj(K) · Y, (N, C, fh, fw // 2 + 1)
    power: Tensor  # |K|², (N | 1, 1, fh, fw // 2 + 1)
    shape: tuple[int, int]

    @classmethod
    def prepare(cls, padded: Tensor, transfer: Tensor) -> DataStep:
        """From padded (N, C, fh, fw) observations and their OTFs (:func:`otf` on ``padded``'s plane)."""
        if transfer.shape[-2:] != (padded.shape[-2], padded.shape[-1] // 2 + 1):
            raise ValueError(f"OTF shaped {tuple(transfer.shape)} does not fit images shaped {tuple(padded.shape)}")
        spectrum = torch.fft.rfft2(padded)
        return cls(transfer.conj() * spectrum, transfer.real**2 + transfer.imag**2, (padded.shape[-2], padded.shape[-1]))

    def __call__(self, z: Tensor, alpha: float | Tensor) -> Tensor:
        a = torch.as_tensor(alpha, dtype=z.dtype, device=z.device)
        a = a.reshape(-1, 1, 1, 1) if a.dim() else a
        if bool((a <= 0).any()):
            raise ValueError(f"alpha must be positive, got {alpha}")
        return torch.fft.irfft2((self.adjoint_y + a * torch.fft.rfft2(z)) / (self.power + a), s=self.shape)
