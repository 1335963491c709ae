"""Local worker processes for a folder run: each loads the model once and deblurs the tasks it is handed.

Processes, not threads: decoding, encoding and the network's small kernels scale badly with threads on few cores,
while separate processes each with ``cores // workers`` torch threads keep every core busy without
oversubscribing it. Workers are started with ``spawn`` (never ``fork``: torch's thread pools do not survive it), stop
on SIGTERM or SIGINT without a traceback (a temporary file in progress is removed on the way out) and die with the
run: on Linux the kernel sends them SIGTERM when the run's process ends, even by SIGKILL, so a rerun never races an
orphan over the same output.
"""

from __future__ import annotations

import os
import queue
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from meddeblur.errors import InvalidOption, UserError
from meddeblur.inference.archive import Outcome, Task
from meddeblur.inference.jobs import Settings, deblur_tasks

__all__ = ["ModelSpec", "LocalWorkers", "cores", "threads_per_worker", "check_workers", "default_workers"]

#: From this many images to deblur on, :func:`default_workers` starts worker processes.
MANY = 8
_POLL_SECONDS = 1.0  # how often a waiting process checks that its peers are alive
_STOP_SECONDS = 10.0  # how long stopped workers get to remove their temporary files before being killed


@dataclass(frozen=True)
class ModelSpec:
    """What every process of a run loads, the same everywhere: :meth:`Deblurrer.load`'s arguments and a known PSF.

    ``psf`` and ``method`` (with ``psf``) bind the model to a known blur (:meth:`Deblurrer.with_psf`); a spec string or
    a kernel file path travels to other processes and machines as it is.
    """

    model: str | None = None
    engine: str = "torch"
    device: str = "auto"
    tile: int = 1024
    overlap: int = 128
    psf: Any = None
    method: str = "network"

    def load(self, device: str | None = None) -> Any:
        """The :class:`~meddeblur.inference.deblurrer.Deblurrer` (on ``device`` instead of the spec's, if given)."""
        from meddeblur.inference.deblurrer import Deblurrer

        deblurrer = Deblurrer.load(self.model, self.engine, device or self.device, self.tile, self.overlap)
        return deblurrer.with_psf(self.psf, self.method) if self.psf is not None else deblurrer


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """Torch threads per worker so that ``workers`` processes share the cores without oversubscribing them."""
    return max(1, cores() // workers)


def default_workers(on_cpu: bool, images: int) -> int:
    """Processes when none are asked for: 2 single-thread ones for :data:`MANY` or more images on a CPU with 2 or more
    cores, else 1 (this process).

    Measured on a 2-core machine (benchmarks/results/archive.md): two single-thread workers deblurred a folder several
    times faster than one process with two threads, after a start-up of a few seconds that a handful of images does
    not repay; more workers were not measured. A GPU is shared: there one.
    """
    return min(2, cores()) if on_cpu and images >= MANY else 1


def check_workers(workers: int) -> int:
    """``workers`` if it is a whole number ≥ 1, else :class:`~meddeblur.errors.InvalidOption`."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidOption(f"workers={workers}: give a whole number of worker processes, at least 1", value=workers, option="workers")
    return workers


class _Stop(BaseException):
    """SIGTERM or SIGINT in a worker: unwind (removing a temporary file in progress) and exit quietly."""


def _stop(_signum: int, _frame: object) -> None:
    raise _Stop


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere: the worker notices its parent is gone at its next poll


def set_threads(threads: int) -> None:
    """Limit this process's torch and OpenCV threads to ``threads`` (a worker's or actor's share of the cores)."""
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def _next_tasks(tasks: Any, together: int, parent: int) -> list[tuple[int, Task]] | None:
    """The next tasks from this worker's queue (up to ``together`` at once, for batching on a GPU); None at the end."""
    while True:
        try:
            first = tasks.get(timeout=_POLL_SECONDS)
            break
        except queue.Empty:
            if os.getppid() != parent:
                return None
    if first is None:
        return None
    taken = [first]
    while len(taken) < together:
        try:
            item = tasks.get_nowait()
        except queue.Empty:
            break
        if item is None:
            tasks.put(None)  # the end marker, for the next read
            break
        taken.append(item)
    return taken


def _work(spec: ModelSpec, settings: Settings, threads: int, slot: int, parent: int, tasks: Any, results: Any) -> None:
    """A worker process: load the model once, then deblur tasks until the end marker, reporting every step."""
    for name in ("SIGTERM", "SIGINT"):
        signal.signal(getattr(signal, name), _stop)
    _die_with_parent()
    try:
        set_threads(threads)
        engine = spec.load()
        results.put(("ready", slot, None))
        together = settings.batch if getattr(engine.device, "type", "cpu") == "cuda" else 1
        while (taken := _next_tasks(tasks, together, parent)) is not None:
            numbers = {str(task.input): number for number, task in taken}  # outcomes may come back in another order
            for number in numbers.values():
                results.put(("start", slot, number))

            def on_tile(task: Task, done: int, total: int) -> None:
                results.put(("tile", slot, (task, done, total)))

            for outcome in deblur_tasks(engine, [task for _, task in taken], settings, on_tile):
                results.put(("done", slot, (numbers[outcome.input], outcome)))
    except _Stop:
        pass
    except UserError as error:
        results.put(("error", slot, " ".join(str(error).split())))
    except Exception as error:  # reported by the run, which stops: a worker must not vanish silently
        results.put(("error", slot, f"worker {slot} failed: {type(error).__name__}: {error}"))


class LocalWorkers:
    """``workers`` local processes, each with ``cores // workers`` threads and its own copy of the model.

    Each worker has its own queue, kept a few tasks ahead: the run always knows which tasks a worker holds, so a
    worker that dies (killed for memory, say) refuses only the task it was deblurring and hands the rest back.
    """

    def __init__(self, spec: ModelSpec, settings: Settings, workers: int) -> None:
        import multiprocessing

        self.spec, self.settings, self.workers = spec, settings, check_workers(workers)
        self.threads = threads_per_worker(workers)
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[int, Any] = {}
        self._ready: set[int] = set()  # slots whose worker has loaded the model
        self._queues: dict[int, Any] = {}
        self._results: Any = None

    def _start(self, slot: int) -> None:
        self._queues[slot] = self._context.Queue()
        process = self._context.Process(target=_work, name=f"meddeblur-worker-{slot}", daemon=True,
                                        args=(self.spec, self.settings, self.threads, slot, os.getpid(), self._queues[slot], self._results))
        process.start()
        self._processes[slot] = process

    def run(self, tasks: list[Task], on_tile: Any) -> Iterator[Outcome]:
        if not tasks:
            return
        self._results = self._context.Queue()
        pending = list(range(len(tasks)))[::-1]  # task numbers not handed out yet, next one last
        sent: dict[int, list[int]] = {}  # slot → task numbers handed to it and not done
        started: dict[int, set[int]] = {}
        depth = 2 * self.settings.batch  # tasks a worker holds: the next one is there when it finishes one

        def feed(slot: int) -> None:
            while pending and len(sent[slot]) < depth:
                number = pending.pop()
                sent[slot].append(number)
                self._queues[slot].put((number, tasks[number]))

        for slot in range(min(self.workers, len(tasks))):
            self._start(slot)
            sent[slot], started[slot] = [], set()
            feed(slot)
        remaining, checked = len(tasks), time.monotonic()
        while remaining:
            try:
                kind, slot, value = self._results.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                kind = None
            if kind is None or time.monotonic() - checked > _POLL_SECONDS:  # quiet, or busy: look for dead workers anyway
                checked = time.monotonic()
                for outcome in self._replace_dead(sent, started, pending, tasks):
                    remaining -= 1
                    yield outcome
                for each in sent:
                    feed(each)
            if kind is None:
                continue
            if kind == "ready":
                self._ready.add(slot)
            elif kind == "start":
                started[slot].add(value)
            elif kind == "tile":
                on_tile(slot, *value)
            elif kind == "error":
                raise UserError(value)
            else:
                number, outcome = value
                sent[slot].remove(number)
                started[slot].discard(number)
                remaining -= 1
                feed(slot)
                yield outcome

    def _replace_dead(self, sent: dict[int, list[int]], started: dict[int, set[int]], pending: list[int],
                      tasks: list[Task]) -> Iterator[Outcome]:
        """A worker that died refuses the task it was deblurring, hands back the others, and a new one takes its place."""
        for slot, process in list(self._processes.items()):
            if process.is_alive() or not (sent[slot] or pending):
                continue  # working, or idle with nothing left to hand it
            if slot not in self._ready:  # it never got as far as loading the model: another would fail alike
                raise UserError(f"a worker process could not start (exit code {process.exitcode}; its error is printed above); "
                                "run with workers=1 to see it")
            self._ready.discard(slot)
            for number in sent[slot]:
                if number in started[slot]:
                    yield Outcome(str(tasks[number].input), "refused", None,
                                  f"{tasks[number].input}: the worker process deblurring it died (exit code {process.exitcode}; "
                                  "out of memory?); retry with fewer workers or a smaller tile")
                else:
                    pending.append(number)
            sent[slot], started[slot] = [], set()
            self._queues[slot].cancel_join_thread()
            self._start(slot)

    def close(self) -> None:
        """End the workers: the end marker for those idle, SIGTERM for the rest, SIGKILL for any still there after 10 s."""
        processes = list(self._processes.values())
        for channel in self._queues.values():
            channel.put(None)
        for process in processes:
            process.join(timeout=0.2)
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=_STOP_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
        for channel in [*self._queues.values(), self._results]:
            if channel is not None:
                channel.cancel_join_thread()
                channel.close()
        self._processes, self._queues, self._results = {}, {}, None
