"""Local worker processes for a folder run: each loads the model once and deblurs the tasks it is handed.

Processes, not threads: decoding, encoding and the network's small kernels scale badly with threads on few cores,
while separate processes each with ``cores // workers`` torch threads keep every core busy without
oversubscribing it. Workers are started with ``spawn`` (never ``fork``: torch's thread pools do not survive it), stop
on SIGTERM or SIGINT without a traceback (a temporary file in progress is removed on the way out) and die with the
run: on Linux the kernel sends them SIGTERM when the run's process ends, even by SIGKILL, so a rerun never races an
orphan over the same output.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from meddeblur.errors import InvalidOption, UserError
from meddeblur.inference.engine import psf_on_onnx
from meddeblur.inference.tile_grid import Tiling
from meddeblur.restore import registry
from meddeblur.runs.jobs import Settings, deblur_tasks
from meddeblur.runs.plan import Outcome, Task
from meddeblur.runs.recipe import RECIPE_KEY, recipe_of

__all__ = ["ModelSpec", "LocalWorkers", "cores", "threads_per_worker", "check_workers", "default_workers"]

_POLL_SECONDS = 1.0  # how often a waiting process checks that its peers are alive
_STOP_SECONDS = 10.0  # how long stopped workers get to remove their temporary files before being killed


@dataclass(frozen=True)
class ModelSpec:
    """What every process of a run loads, the same everywhere: :meth:`Deblurrer.load`'s arguments and how to restore.

    ``psf`` and ``method`` (with ``psf``; None: the registry's default) bind the model to a known blur
    (:meth:`Deblurrer.with_psf`); a spec string or a kernel file path travels to other processes and machines as it is.
    ``method="psf"`` (:data:`~meddeblur.restore.registry.ESTIMATED`, without ``psf``) estimates each image's PSF instead (:meth:`Deblurrer.with_estimated_psf`), with the blur-estimator weights ``estimator``
    (None: the shipped ones).
    """

    model: str | None = None
    engine: str = "torch"
    device: str = "auto"
    tile: int = 1024
    overlap: int = 128
    psf: Any = None
    method: str | None = None
    estimator: str | None = None

    def __post_init__(self) -> None:
        Tiling(self.tile, self.overlap)
        estimated = registry.ESTIMATED
        if self.method is not None:
            registry.get(self.method)
        if self.estimates_psf and self.psf is not None:
            raise InvalidOption(
                f"method={estimated} estimates the PSF from each image; drop psf={self.psf}, or restore that known "
                f"PSF with method {', '.join(registry.names(registry.Told.PSF))}",
                value=self.method,
                option="method",
            )
        if self.engine == "onnx" or str(self.model or "").lower().endswith(".onnx"):  # before any export that could not be used
            if self.psf is not None:
                raise psf_on_onnx("psf", self.psf, "use engine=torch")
            if self.estimates_psf:
                raise psf_on_onnx("method", estimated, "use engine=torch")
        if self.estimator is not None and not self.estimates_psf:
            raise InvalidOption(
                f"estimator={self.estimator}: blur-estimator weights are used by method={estimated} only; add "
                f"method={estimated} or drop `estimator`",
                value=self.estimator,
                option="estimator",
            )

    @property
    def estimates_psf(self) -> bool:
        """True when the loaded Deblurrer estimates each image's PSF (``method="psf"``)."""
        return self.method == registry.ESTIMATED

    def recipe(self) -> str | None:
        """What the loaded model's provenance record is made from, digested without loading it
        (:mod:`~meddeblur.runs.recipe`); None where that cannot be known before loading."""
        return recipe_of(self.model, self.engine, self.tile, self.overlap, self.psf, self.method, self.estimator)

    def load(self, device: str | None = None) -> Any:
        """The :class:`~meddeblur.inference.deblurrer.Deblurrer` (on ``device`` instead of the spec's, if given); its
        provenance carries the spec's :meth:`recipe`, so that a rerun can prove outputs done without loading it."""
        from meddeblur.inference.deblurrer import Deblurrer

        deblurrer = Deblurrer.load(self.model, self.engine, device or self.device, self.tile, self.overlap)
        if self.estimates_psf:
            deblurrer = deblurrer.with_estimated_psf(self.estimator)
        elif self.psf is not None:
            deblurrer = deblurrer.with_psf(self.psf, self.method)
        recipe = self.recipe()
        if recipe is not None:
            deblurrer.provenance = {**deblurrer.provenance, RECIPE_KEY: recipe}
        return deblurrer


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
    """Processes when none are asked for: 1, this process, with all the cores' threads.

    Measured on a quiet 2-core machine (benchmarks/results/archive.md, 200 images): two single-thread workers ran
    at 1.22× the images/s of one process with two threads (1.08× and 1.02× in earlier runs of the same benchmark: the
    machine's speed drifts), for twice the memory and a 2.3 s start-up that a folder of fewer than about a hundred images never repays. More cores were
    not measured. A GPU is shared: there one too. ``on_cpu`` and ``images`` are the inputs a measured rule on other
    hardware would use.
    """
    return 1


def check_workers(workers: int) -> int:
    """``workers`` if it is a whole number ≥ 1, else :class:`~meddeblur.errors.InvalidOption`."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidOption(
            f"workers={workers}: give a whole number of worker processes, at least 1", value=workers, option="workers"
        )
    return workers


class _Stop(BaseException):
    """SIGTERM or SIGINT in a worker: unwind (removing a temporary file in progress) and exit quietly."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, _frame: object) -> None:
    # A second signal (the parent's forwarded SIGTERM, or PR_SET_PDEATHSIG when it exits first) must not interrupt
    # the unwinding this one starts: it once raised inside torch's atexit finalizers and printed a traceback.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _Stop(signum)


def _how_it_ended(exitcode: int | None, stopped_by: int | None) -> str:
    """How a worker that ended with work left ended, in words: killed or stopped by a signal (named), or its exit code."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else f"signal {-exitcode}"
        oom = (
            " (the system's out-of-memory killer sends it: retry with fewer workers or a smaller tile)"
            if name == "SIGKILL"
            else ""
        )
        return f"was killed by {name}{oom}"
    if stopped_by is not None:
        return f"was stopped by {signal.Signals(stopped_by).name} (sent to it, or to the run's process group)"
    return f"ended unexpectedly (exit code {exitcode}); retry with fewer workers or a smaller tile"


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


def _next_tasks(channel: Any, together: int, parent: int) -> tuple[list[tuple[int, Task]], bool]:
    """The next tasks on this worker's pipe (up to ``together`` at once, for batching on a GPU), and whether the end
    marker came: then these are the last."""
    while not channel.poll(_POLL_SECONDS):
        if os.getppid() != parent:
            return [], True
    first = channel.recv()
    if first is None:
        return [], True
    taken = [first]
    while len(taken) < together and channel.poll(0):
        item = channel.recv()
        if item is None:
            return taken, True
        taken.append(item)
    return taken, False


def _work(spec: ModelSpec, settings: Settings, threads: int, slot: int, parent: int, channel: Any) -> None:
    """A worker process: load the model once, then deblur tasks until the end marker, reporting every step.

    Messages go through a pipe, written before the worker goes on: what it said before dying is still there to read.
    """
    signal.signal(signal.SIGTERM, _stop)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored by the run (a background job): ignored here too
        signal.signal(signal.SIGINT, _stop)
    _die_with_parent()
    try:
        set_threads(threads)
        engine = spec.load()
        channel.send(("ready", None))
        together = settings.batch if engine.device.type == "cuda" else 1
        ended = False
        while not ended:
            taken, ended = _next_tasks(channel, together, parent)
            numbers = {str(task.input): number for number, task in taken}  # outcomes may come back in another order
            for number in numbers.values():
                channel.send(("start", number))

            def on_tile(task: Task, done: int, total: int) -> None:
                channel.send(("tile", (task, done, total)))

            for outcome in deblur_tasks(engine, [task for _, task in taken], settings, on_tile):
                channel.send(("done", (numbers[outcome.input], outcome)))
    except _Stop as stop:  # the run reports the signal by name, then exits 128 + its number like a shell would
        with contextlib.suppress(OSError):
            channel.send(("stopped", stop.signum))
        raise SystemExit(128 + stop.signum) from None
    except (BrokenPipeError, EOFError):
        pass  # the run is gone
    except UserError as error:
        channel.send(("error", " ".join(str(error).split())))
    except Exception as error:  # reported by the run, which stops: a worker must not vanish silently
        channel.send(("error", f"worker {slot} failed: {type(error).__name__}: {error}"))


class LocalWorkers:
    """``workers`` local processes, each with ``cores // workers`` threads and its own copy of the model.

    Each worker has its own pipe, kept a few tasks ahead: the run always knows which tasks a worker holds, so a
    worker that dies (killed for memory, say) refuses only the task it was deblurring and hands the rest back.
    """

    def __init__(self, spec: ModelSpec, settings: Settings, workers: int) -> None:
        import multiprocessing

        self.spec, self.settings, self.workers = spec, settings, check_workers(workers)
        self.threads = threads_per_worker(workers)
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[int, Any] = {}
        self._channels: dict[int, Any] = {}

    def _start(self, slot: int) -> None:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_work,
            name=f"meddeblur-worker-{slot}",
            daemon=True,
            args=(self.spec, self.settings, self.threads, slot, os.getpid(), theirs),
        )
        process.start()
        theirs.close()
        self._processes[slot], self._channels[slot] = process, ours

    def run(self, tasks: list[Task], on_tile: Any) -> Iterator[Outcome]:
        from multiprocessing.connection import wait

        if not tasks:
            return
        pending = list(range(len(tasks)))[::-1]  # task numbers not handed out yet, next one last
        sent: dict[int, list[int]] = {}  # slot → task numbers handed to it and not done
        started: dict[int, set[int]] = {}
        ready: set[int] = set()  # slots whose worker has loaded the model
        stopped_by: dict[int, int] = {}  # slot → the signal that stopped its worker
        depth = 2 * self.settings.batch  # tasks a worker holds: the next one is there when it finishes one

        def feed(slot: int) -> None:
            while pending and len(sent[slot]) < depth:
                number = pending.pop()
                sent[slot].append(number)
                self._channels[slot].send((number, tasks[number]))

        for slot in range(min(self.workers, len(tasks))):
            self._start(slot)
            sent[slot], started[slot] = [], set()
            feed(slot)
        remaining = len(tasks)
        while remaining:
            by_handle = {
                **{self._channels[slot]: slot for slot in self._channels},
                **{self._processes[slot].sentinel: slot for slot in self._processes},
            }
            for handle in wait(list(by_handle), timeout=_POLL_SECONDS):
                slot = by_handle[handle]
                for kind, value in self._drain(slot):
                    if kind == "ready":
                        ready.add(slot)
                    elif kind == "start":
                        started[slot].add(value)
                    elif kind == "tile":
                        on_tile(slot, *value)
                    elif kind == "error":
                        raise UserError(value)
                    elif kind == "stopped":
                        stopped_by[slot] = value
                    else:
                        number, outcome = value
                        sent[slot].remove(number)
                        started[slot].discard(number)
                        remaining -= 1
                        yield outcome
                if self._processes[slot].is_alive():
                    feed(slot)
                elif sent[slot] or pending:
                    # Dead with work left: a worker that never loaded the model means another would fail alike.
                    if slot not in ready:
                        raise UserError(
                            f"a worker process could not start (exit code {self._processes[slot].exitcode}; its "
                            "error is printed above); run with workers=1 to see it"
                        )
                    for outcome in self._replace(slot, sent, started, pending, tasks, stopped_by.pop(slot, None)):
                        remaining -= 1
                        yield outcome
                    ready.discard(slot)
                    feed(slot)

    def _drain(self, slot: int) -> Iterator[tuple[str, Any]]:
        """Every message the worker in ``slot`` has written so far (all of them, if it has died)."""
        channel = self._channels[slot]
        try:
            while channel.poll():
                yield channel.recv()
        except (EOFError, OSError):
            return  # its end is closed: it has died, and everything it wrote was read

    def _replace(
        self,
        slot: int,
        sent: dict[int, list[int]],
        started: dict[int, set[int]],
        pending: list[int],
        tasks: list[Task],
        stopped_by: int | None,
    ) -> Iterator[Outcome]:
        """A dead worker refuses the task it was deblurring, hands back the others, and a new one takes its place."""
        how = _how_it_ended(self._processes[slot].exitcode, stopped_by)
        for number in sent[slot]:
            if number in started[slot]:
                yield Outcome(
                    str(tasks[number].input),
                    "refused",
                    None,
                    f"{tasks[number].input}: the worker process deblurring it {how}; a rerun retries it",
                )
            else:
                pending.append(number)
        sent[slot], started[slot] = [], set()
        self._channels[slot].close()
        self._start(slot)

    def close(self) -> None:
        """End the workers: the end marker for those idle, SIGTERM for the rest, SIGKILL for any still there after 10 s."""
        processes = list(self._processes.values())
        for channel in self._channels.values():
            with contextlib.suppress(OSError):  # that worker is gone already
                channel.send(None)
        for process in processes:
            process.join(timeout=0.2)
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=_STOP_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
        for channel in self._channels.values():
            channel.close()
        self._processes, self._channels = {}, {}
