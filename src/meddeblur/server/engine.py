"""The served model, loaded once per worker process, and the bounded pool that runs it.

The pool admits at most ``threads + queue`` requests at a time; one more is refused at
once (503 + Retry-After). Admission happens once the upload is complete, so clients that
are slow or stalled in sending never hold a processing slot: they hold one of the
:class:`UploadGate`'s places, which the body timeout frees. A :class:`Deadline` bounds the
work per request. Inference runs on a few threads: torch kernels release the GIL, so the
event loop keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from meddeblur.errors import UserError
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.psf.kernel import PSF
from meddeblur.restore import registry

T = TypeVar("T")


def load_served_model(model: str | None, device: str = "auto", tile: int = 1024, overlap: int = 128) -> Deblurrer:
    """Load ``--model`` (``None``: the shipped model) once, with the tiling every request uses; :class:`UserError` when it cannot be."""
    return Deblurrer.load(model, "torch", device, tile, overlap)


#: The methods a request can name without a PSF: the blind network, or estimate each image's PSF and restore with it
#: (``deblur --method psf``). Every other method of the registry restores a known blur and needs one (:mod:`.choice`).
WITHOUT_PSF = registry.names(registry.Told.NOTHING) + registry.names(registry.Told.ESTIMATE)


class Methods:
    """The served Deblurrer for each request's method and PSF: ``network`` without a PSF is the model as loaded; ``psf``
    binds it to the blur estimator (:meth:`Deblurrer.with_estimated_psf`) on first use, once, so a server that never
    estimates never loads it; a known PSF binds it with :meth:`Deblurrer.with_psf` (cheap: the kernel-conditioned
    network and the plug-and-play denoiser it may need are loaded on first use and kept)."""

    def __init__(self, served: Deblurrer, estimator: str | None = None) -> None:
        self.served, self.estimator = served, estimator
        self._estimated: Deblurrer | None = None
        self._lock = threading.Lock()

    def get(self, method: str, psf: PSF | None = None) -> Deblurrer:
        """The Deblurrer for ``method`` (a registry name) told ``psf``; :class:`UserError` when this server cannot
        (no estimator, a blind model of its own asked for the kernel-conditioned network, ...)."""
        if registry.Told.ESTIMATE in registry.get(method).told:
            with self._lock:
                if self._estimated is None:
                    self._estimated = self.served.with_estimated_psf(self.estimator)
                return self._estimated
        if psf is None:
            return self.served
        # Under the lock: the first binding loads the network or denoiser it needs into the served Deblurrer, once.
        with self._lock:
            return self.served.with_psf(psf, method)


def check_default_psf(methods: Methods, psf: PSF) -> None:
    """``serve --psf``: bind it once, at start-up, by the method a request naming none uses
    (:data:`~meddeblur.restore.registry.KNOWN_BLUR_DEFAULT`), so that a served model that cannot restore with it (a blind
    model of your own, an ONNX file) stops the server in one line rather than failing every request; this also loads
    the network it needs, once."""
    try:
        methods.get(registry.KNOWN_BLUR_DEFAULT, psf)
    except UserError as error:
        why = " ".join(str(error).split())
        raise UserError(
            f"psf={psf.source}: requests that name no method are restored with it by {registry.KNOWN_BLUR_DEFAULT}, "
            f"which this server's model cannot ({why})",
            value=psf.source,
        ) from None


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: its allocator returns memory its own way
        return None


_MALLOC_TRIM = _load_malloc_trim()


def trim_heap() -> None:
    """glibc only: hand the freed heap back to the system.

    glibc keeps freed image and activation buffers (up to 32 MiB each) for reuse, which
    makes the next request faster but leaves an idle server at its busiest footprint.
    Called when the pool goes idle, so it costs nothing under load.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class QueueFull(Exception):
    """Every slot is taken, or the work cannot be done in time; ``retry_after``: estimated seconds until it can."""

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message or f"server busy; retry in {retry_after} s")
        self.retry_after = retry_after


def _seconds(value: float) -> int:
    """Whole seconds for Retry-After: at least 1, at most 600."""
    return min(600, max(1, math.ceil(value)))


class UploadGate:
    """At most ``limit`` uploads being received at once (event-loop only, so no lock).

    Uploads are received *before* a processing slot is taken, so clients that are slow or
    stalled in sending hold only one of these, never a slot of the pool; the body timeout
    frees them.
    """

    def __init__(self, limit: int, body_timeout: float) -> None:
        self.limit, self.body_timeout = limit, body_timeout
        self.active = 0

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        if self.active >= self.limit:
            raise QueueFull(
                _seconds(self.body_timeout),
                f"too many uploads in progress ({self.limit}); retry in {_seconds(self.body_timeout)} s",
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


class Deadline:
    """When one request's answer is due. ``check`` and ``check_estimate`` raise :class:`QueueFull` (503) past it."""

    def __init__(self, seconds: float, pool: InferencePool) -> None:
        self.seconds, self.pool = seconds, pool
        self.at = time.monotonic() + seconds

    def _refuse(self, why: str) -> QueueFull:
        retry = self.pool.retry_after()
        return QueueFull(
            retry,
            f"{why}, more than this server's {self.seconds:g} s processing deadline; retry in {retry} s, or send a smaller image",
        )

    def check(self) -> None:
        """Past the deadline: stop (called before each tile, so a large image stops within one tile's time)."""
        if time.monotonic() > self.at:
            raise self._refuse("the image took too long")

    def check_estimate(self, pixels: int) -> None:
        """Refuse before starting when this image is expected (from earlier images' speed) to end past the deadline."""
        estimate = self.pool.estimate(pixels)
        if estimate is not None and time.monotonic() + estimate > self.at:
            raise self._refuse(f"this {pixels / 1e6:.1f}-megapixel image needs about {estimate:.0f} s here")


class Slot:
    """One admitted request. Freed when its job finishes (not when the client gives up waiting)."""

    def __init__(self, pool: InferencePool) -> None:
        self._pool = pool
        self._freed = False
        self._submitted = False

    def free(self, trim: bool = True) -> None:
        """Give the slot back; the last one out trims the heap (``trim``: not on the event loop's thread)."""
        with self._pool._lock:
            if self._freed:
                return
            self._freed = True
            self._pool._busy -= 1
            idle = self._pool._busy == 0
        if idle and trim:
            trim_heap()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the pool's threads; the slot is freed when it returns."""
        self._submitted = True
        future = self._pool._executor.submit(self._pool._timed, fn, *args)
        answer = asyncio.wrap_future(future)  # its callback first: the answer is not held up by a heap trim
        # A job cancelled before it starts also ends up here, so the count never leaks.
        future.add_done_callback(lambda _: self.free())
        return await answer

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._submitted:  # failed before reaching the pool (bad upload, client gone): nothing to trim
            self.free(trim=False)


class InferencePool:
    """``threads`` jobs run at once, up to ``queue`` more are admitted and wait, the rest get :class:`QueueFull`."""

    def __init__(self, threads: int, queue: int) -> None:
        self.threads = threads
        self.capacity = threads + queue
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="meddeblur-deblur")
        self._lock = threading.Lock()
        self._busy = 0
        self._mean_seconds = 1.0  # running mean of job time, for Retry-After
        self._seconds_per_pixel: float | None = None  # running mean of deblurring speed, for the deadline

    @property
    def busy(self) -> int:
        """Requests admitted and not finished (running or waiting)."""
        return self._busy

    def retry_after(self) -> int:
        """Seconds until everyone admitted now has finished (a slot is then certain to be free)."""
        return min(60, _seconds(self._busy * self._mean_seconds / self.threads))

    def admit(self, deadline: float | None = None) -> Slot:
        """A slot for one request, or :class:`QueueFull` when all are taken or the wait alone would pass ``deadline`` s."""
        with self._lock:
            if self._busy >= self.capacity:
                raise QueueFull(self.retry_after())
            wait = (self._busy // self.threads) * self._mean_seconds  # jobs ahead of this one, per thread
            if deadline is not None and self._busy >= self.threads and wait > deadline:
                raise QueueFull(
                    self.retry_after(),
                    f"server busy: about {wait:.0f} s of queued work, more than this server's "
                    f"{deadline:g} s processing deadline; retry in {self.retry_after()} s",
                )
            self._busy += 1
        return Slot(self)

    def record(self, pixels: int, seconds: float) -> None:
        """Learn the deblurring speed from a finished image (for :meth:`estimate`)."""
        if pixels > 0:
            rate = seconds / pixels
            with self._lock:
                old = self._seconds_per_pixel
                self._seconds_per_pixel = rate if old is None else 0.7 * old + 0.3 * rate

    def estimate(self, pixels: int) -> float | None:
        """Expected seconds to deblur ``pixels`` at the speed seen so far; None before the first image."""
        rate = self._seconds_per_pixel
        return None if rate is None else rate * pixels

    def _timed(self, fn: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            seconds = time.perf_counter() - started
            with self._lock:
                self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
