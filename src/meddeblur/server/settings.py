"""What ``meddeblur serve`` is configured with, checked once, passed to every worker process."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

from meddeblur.errors import UserError

#: Environment variable through which ``serve`` hands the settings to uvicorn's worker processes.
SETTINGS_ENV = "MEDDEBLUR_SERVE_SETTINGS"


@dataclass(frozen=True)
class ServerSettings:
    """One worker process's configuration (``--workers`` processes each get a copy)."""

    model: str | None = None  # run folder or .safetensors; None: the shipped model
    device: str = "auto"
    max_upload_mb: float = 50.0  # uploaded file size cap, in MiB
    max_pixels: int = 64_000_000  # decoded pixel count cap, checked from the header
    threads: int = 1  # images deblurred at once per worker process
    queue: int = 32  # requests waiting per worker process before answering 503
    tile: int = 1024  # as `meddeblur deblur --tile`: bounds memory on large images
    overlap: int = 128
    jpeg_quality: int = 95
    workers: int = 1  # worker processes; used to share the CPU cores between them

    def validate(self) -> ServerSettings:
        """Return self, or raise :class:`UserError` naming the first bad option."""
        if not (math.isfinite(self.max_upload_mb) and self.max_upload_mb > 0):
            raise UserError(f"--max-upload-mb {self.max_upload_mb}: must be a positive number of MiB")
        if self.max_pixels < 256:
            raise UserError(f"--max-pixels {self.max_pixels}: must be at least 256 (16×16 pixels)")
        for name in ("threads", "workers"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} {getattr(self, name)}: must be a positive integer")
        if self.queue < 0:
            raise UserError(f"--queue {self.queue}: must be 0 or a positive integer")
        if self.tile and (self.tile < 32 or not 0 <= self.overlap < self.tile // 2):
            raise UserError(f"--tile {self.tile} --overlap {self.overlap}: use a tile of at least 32 px and an overlap below half the tile")
        if not 1 <= self.jpeg_quality <= 100:
            raise UserError(f"--jpeg-quality {self.jpeg_quality}: choose 1 to 100")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def torch_threads(self) -> int:
        """Intra-op threads per inference: all workers × threads share the cores without oversubscribing.

        Never more than torch's own default, so ``OMP_NUM_THREADS`` still lowers it.
        """
        import torch

        return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // (self.workers * self.threads)))

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServerSettings:
        raw = os.environ.get(SETTINGS_ENV)
        if raw is None:
            raise RuntimeError(f"{SETTINGS_ENV} is not set; start the server with `meddeblur serve`")
        return cls(**json.loads(raw)).validate()
