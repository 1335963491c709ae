"""The served model, loaded once per worker process, and the bounded pool that runs it.

The pool admits at most ``threads + queue`` requests at a time; one more is refused at
once (503 + Retry-After) instead of piling up uploads in memory. Admission happens
before the upload is read, so a refused request costs nothing. Inference runs on a few
threads: torch kernels release the GIL, so the event loop keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from meddeblur.models import ModelConfig, load_model, size_multiple, weights_id

T = TypeVar("T")


@dataclass(frozen=True)
class ServedModel:
    """A network in eval mode plus what identifies it to clients."""

    network: nn.Module
    config: ModelConfig
    weights_path: Path
    model_id: str  # content hash of the weights file
    device: torch.device

    @property
    def multiple(self) -> int:
        return size_multiple(self.config)


def load_served_model(model: str | None, device: str = "auto") -> ServedModel:
    """Load ``--model`` (``None``: the shipped model) once; :class:`UserError` when it cannot be."""
    from meddeblur.device import pick_device

    torch_device = pick_device(device)
    network, config, path = load_model(model, torch_device)
    return ServedModel(network, config, path, weights_id(path), torch_device)


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
    """Every slot is taken; ``retry_after`` is the estimated seconds until one frees up."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"server busy; retry in {retry_after} s")
        self.retry_after = retry_after


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

    @property
    def busy(self) -> int:
        """Requests admitted and not finished (running or waiting)."""
        return self._busy

    def admit(self) -> Slot:
        """A slot for one request, or :class:`QueueFull` when all are taken."""
        with self._lock:
            if self._busy >= self.capacity:
                # Everyone admitted has to finish before a slot is certain to be free.
                wait = self._busy * self._mean_seconds / self.threads
                raise QueueFull(min(60, max(1, math.ceil(wait))))
            self._busy += 1
        return Slot(self)

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
