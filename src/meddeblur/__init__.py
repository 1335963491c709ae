"""meddeblur: remove blur from medical images, dermoscopic photographs first.

The public Python API (each name is imported on first use, so ``import meddeblur`` stays light):

- :class:`Deblurrer` — ``Deblurrer.load(model=None, engine="torch", device="auto", tile=1024, overlap=128)``,
  then ``deblurrer(image)``: numpy or torch images in, the same type, dtype and shape out;
- :func:`deblur` — one call with a cached default :class:`Deblurrer`;
- :func:`read_image` / :func:`write_image` — decoding and atomic encoding (8/16-bit, EXIF, ICC, provenance);
- :func:`degrade` — synthetic blur, noise and JPEG from a spec string (``"real"``, ``"gauss:sigma=1.5"``, …);
- :func:`blur_score` — the no-reference blur score of ``meddeblur assess``;
- :func:`psnr`, :func:`ssim` — TF-exact metrics on (N, C, H, W) tensors.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "Deblurrer", "deblur", "read_image", "write_image", "degrade", "blur_score", "psnr", "ssim"]

_LOCATIONS = {
    "Deblurrer": "meddeblur.inference.deblurrer",
    "deblur": "meddeblur.inference.deblurrer",
    "read_image": "meddeblur.io.decode",
    "write_image": "meddeblur.io.encode",
    "degrade": "meddeblur.degradation.pipeline",
    "blur_score": "meddeblur.evaluation.assess",
    "psnr": "meddeblur.metrics",
    "ssim": "meddeblur.metrics",
}


def __getattr__(name: str) -> Any:
    # Lazy: `meddeblur --version` must not pay for torch.
    if name in _LOCATIONS:
        return getattr(importlib.import_module(_LOCATIONS[name]), name)
    raise AttributeError(f"module 'meddeblur' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
