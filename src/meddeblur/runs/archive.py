"""Deblurring an archive of images: plan, then deblur here, in local worker processes or on Ray; what ``meddeblur deblur`` runs.

::

    from meddeblur.runs.archive import deblur_archive

    report = deblur_archive(["scans/"], "out/", recursive=True, skip_bad=True, log="run.jsonl")
    print(report.summary("out/")); report.exit_code, report.written, report.with_status("refused")

A rerun skips every input whose output is already there, made with the same model and options
(:mod:`meddeblur.runs.plan`); a run stopped at any moment, even by SIGKILL, leaves only whole outputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meddeblur.errors import InvalidOption
from meddeblur.io.encode import check_jpeg_quality
from meddeblur.runs.execute import Executor, InProcess, Report, execute
from meddeblur.runs.explain import check_explainable
from meddeblur.runs.jobs import GPU_BATCH, Settings
from meddeblur.runs.plan import plan_run
from meddeblur.runs.workers import LocalWorkers, ModelSpec, check_workers, default_workers

__all__ = ["deblur_archive", "CLUSTERS"]

CLUSTERS = ("ray",)


def deblur_archive(
    inputs: list[str | Path],
    out: str | Path,
    spec: ModelSpec | None = None,
    *,
    format: str | None = None,
    jpeg_quality: int = 95,
    recursive: bool = False,
    skip_bad: bool = False,
    redo: bool = False,
    allow_outputs: bool = False,
    overwrite: bool = False,
    change_map: bool = False,
    explain: bool = False,
    log: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    workers: int | None = None,
    cluster: str | None = None,
    ray_address: str | None = None,
    progress_every: float = 30.0,
    words: Callable[[str], str] | None = None,
) -> Report:
    """Deblur files and folders into ``out`` with the model ``spec`` names (default: the shipped one); a :class:`Report` back.

    ``recursive``: mirror the folders' whole trees under ``out``. ``skip_bad``: go on past inputs that cannot be read
    (refused, listed in the report) instead of stopping at the first. Resuming: inputs whose output exists with the same
    model and options are skipped unless ``redo``; inputs that are meddeblur outputs are skipped unless
    ``allow_outputs``. ``change_map``: write ``NAME.change.png`` beside each output. ``explain``: write ``NAME.psf.png``,
    the PSF each image was restored with (a known one, or one estimated with ``spec.method="psf"``; refused for the
    blind network). ``log``: append a JSON line per input to this file. ``progress``: bars on stderr (None: when it is a terminal, else
    a line every ``progress_every`` seconds; False: none). ``words``: how the log names options (the CLI's flags). ``workers``: processes (or Ray
    actors), each loading the model once (None: :func:`~meddeblur.runs.workers.default_workers`; a single image is
    always deblurred in this process); ``cluster="ray"`` runs on Ray Data, on the cluster at ``ray_address`` or, without one,
    on an embedded Ray on this machine.
    """
    spec = spec or ModelSpec()
    check_jpeg_quality(jpeg_quality)
    if cluster is not None and cluster not in CLUSTERS:
        raise InvalidOption(
            f"cluster={cluster!r}: choose 'ray' (or leave it out to run on this machine)", value=cluster, option="cluster"
        )
    if ray_address is not None and cluster is None:
        raise InvalidOption(
            f"ray_address={ray_address}: joins a Ray cluster; add cluster='ray'", value=ray_address, option="ray_address"
        )
    if workers is not None:
        check_workers(workers)
    if explain:
        check_explainable(spec)  # before the model is loaded: the spec says whether there will be a PSF

    # The model is loaded only when needed: a rerun whose outputs all carry this spec's recipe never imports torch.
    # For the plan the model's device does not matter; a run in this process keeps the model loaded for it.
    def here() -> bool:
        return _on_cpu(spec) or (cluster is None and workers in (None, 1))

    loaded: list[Any] = []

    def record() -> dict[str, Any]:
        if not loaded:
            loaded.append(spec.load() if here() else spec.load(device="cpu"))
        return loaded[0].provenance

    plan = plan_run(
        inputs,
        out,
        record,
        format,
        jpeg_quality,
        recursive=recursive,
        change_map=change_map,
        overwrite=overwrite,
        resume=not redo,
        allow_outputs=allow_outputs,
        explain=explain,
        log=log,
        recipe=spec.recipe(),
    )
    if not plan.tasks:  # everything done (or refused): no processes, and no model where an output's record names it
        return execute(
            plan,
            None,
            plan.record if plan.record is not None else record(),
            log=log,
            skip_bad=skip_bad,
            progress=progress,
            progress_every=progress_every,
            words=words,
        )
    made = record()
    on_cpu = _on_cpu(spec)
    count = default_workers(on_cpu, len(plan.tasks)) if workers is None else workers
    settings = Settings(jpeg_quality=jpeg_quality, change_map=change_map, batch=1 if on_cpu else GPU_BATCH, explain=explain)
    executor: Executor
    if cluster == "ray":
        from meddeblur.runs.ray_actors import RayActors

        executor = RayActors(spec, settings, count, ray_address)
    elif count == 1 or len(plan.tasks) <= 1:  # starting processes for one image costs more than it saves
        executor = InProcess(loaded[0] if here() else spec.load(), settings)
    else:
        executor = LocalWorkers(spec, settings, count)
    return execute(
        plan, executor, made, log=log, skip_bad=skip_bad, progress=progress, progress_every=progress_every, words=words
    )


def _on_cpu(spec: ModelSpec) -> bool:
    return spec.engine == "onnx" or spec.device == "cpu" or (spec.device == "auto" and not _has_cuda())


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
