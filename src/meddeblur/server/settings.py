"""What ``meddeblur serve`` is configured with, checked once, passed to every worker process."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

from meddeblur.errors import UserError
from meddeblur.inference.tile_grid import Tiling
from meddeblur.io.encode import check_jpeg_quality

#: Environment variable through which ``serve`` hands the settings to uvicorn's worker processes.
SETTINGS_ENV = "MEDDEBLUR_SERVE_SETTINGS"
#: Environment variable holding the API key when no ``--api-key-file`` is given.
API_KEY_ENV = "MEDDEBLUR_API_KEY"
#: Shortest API key accepted: a guessable key is no key.
MIN_KEY_LENGTH = 16


@dataclass(frozen=True)
class ServerSettings:
    """One worker process's configuration (``--workers`` processes each get a copy)."""

    model: str | None = None  # run folder or .safetensors; None: the shipped model
    device: str = "auto"
    max_upload_mb: float = 50.0  # uploaded file size cap, in MiB
    max_pixels: int = 12_000_000  # decoded pixel count cap, checked from the header (README: measured cost)
    threads: int = 1  # images deblurred at once per worker process
    queue: int = 32  # requests waiting per worker process before answering 503
    tile: int = 1024  # as `meddeblur deblur --tile`: bounds memory on large images
    overlap: int = 128
    jpeg_quality: int = 95
    workers: int = 1  # worker processes; used to share the CPU cores between them
    body_timeout: float = 30.0  # seconds to receive a whole upload, else 408
    deadline: float = 120.0  # seconds from upload received to answer sent, else 503 + Retry-After
    max_uploads: int = 64  # uploads being received at once per worker, else 503 (they hold no processing slot)
    api_key_file: str | None = None  # file holding the API key; None: $MEDDEBLUR_API_KEY, or no key
    allowed_hosts: tuple[str, ...] | None = None  # Host header allow-list; None: any host
    cors_origins: tuple[str, ...] = ()  # origins allowed to call the API from a browser (CORS); none by default
    header_timeout: float = 10.0  # seconds for a request's whole head (line and headers), else 408 and closed
    max_client_connections: int = 32  # connections open at once from one client address, else 503 and closed
    estimator: str | None = None  # blur-estimator weights for ?method=psf; None: the shipped ones
    # The default PSF (a spec or a kernel file, e.g. a dermatoscope's calibrated device.psf.json): requests that give
    # none are restored with it. Loaded and checked by create_app (choice.load_default_psf), once per process.
    psf: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> ServerSettings:
        """Return self, or raise :class:`UserError` naming the first bad option."""
        if not (math.isfinite(self.max_upload_mb) and self.max_upload_mb > 0):
            raise UserError(f"max_upload_mb={self.max_upload_mb}: must be a positive number of MiB")
        if self.max_pixels < 256:
            raise UserError(f"max_pixels={self.max_pixels}: must be at least 256 (16×16 pixels)")
        for name in ("threads", "workers"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)}: must be a positive integer")
        if self.queue < 0:
            raise UserError(f"queue={self.queue}: must be 0 or a positive integer")
        Tiling(self.tile, self.overlap)
        check_jpeg_quality(self.jpeg_quality)
        for name in ("body_timeout", "deadline", "header_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"{name}={value}: must be a positive number of seconds")
        for name in ("max_uploads", "max_client_connections"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)}: must be a positive integer")
        for origin in self.cors_origins:
            if not origin.startswith(("http://", "https://")) or origin.rstrip("/").count("/") != 2:
                raise UserError(
                    f"cors_origins={origin}: give an origin such as https://viewer.example.org (scheme and host, no path)"
                )
        if self.estimator is not None and not os.path.isfile(self.estimator):
            raise UserError(
                f"estimator={self.estimator}: no such file; give the blur-estimator weights (.safetensors), or leave "
                "it out for the shipped ones"
            )
        self.api_key()  # a missing, unreadable or too short key file fails now, before the port is bound
        return self

    def api_key(self) -> str | None:
        """The API key from ``api_key_file`` or ``$MEDDEBLUR_API_KEY`` (surrounding white space dropped); None: no key."""
        if self.api_key_file is not None:
            try:
                with open(self.api_key_file, encoding="utf-8") as fh:
                    key = fh.read().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(
                    f"api_key_file={self.api_key_file}: cannot read it ({getattr(exc, 'strerror', None) or exc}); "
                    "give a readable text file holding the key"
                ) from None
            source = f"api_key_file={self.api_key_file}"
        else:
            key = os.environ.get(API_KEY_ENV, "").strip()
            source = f"${API_KEY_ENV}"
            if not key:
                return None
        # ASCII only: HTTP headers carry bytes that servers read as Latin-1, so a key with other characters could
        # never be sent back equal to itself.
        if len(key) < MIN_KEY_LENGTH or any(c.isspace() or not c.isprintable() or not c.isascii() for c in key):
            raise UserError(
                f"{source}: the key must be at least {MIN_KEY_LENGTH} printable ASCII characters without spaces; "
                "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return key

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
        values = json.loads(raw)
        for name in ("allowed_hosts", "cors_origins"):  # JSON has lists, the settings tuples
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)
