"""A folder run on Ray Data (the ``ray`` extra): the same tasks, deblurred by Ray actors, each loading the model once.

The calling process plans (lists, resumes, checks clashes) and logs exactly as for a local run; Ray only carries
the tasks, as a dataset of (input, output) paths, through :meth:`ray.data.Dataset.map_batches` with a pool of
``workers`` actors, each running :func:`meddeblur.inference.jobs.deblur_tasks` — the code a local worker runs, so the
outputs are the same pixels. The actors read inputs and write outputs themselves: on a cluster, every node must see
the files at the same paths (shared storage). With no ``address`` an embedded Ray is started on this machine and
stopped at the end; with one, the run joins that cluster and leaves it running. Where the cluster has GPUs each actor
takes one; elsewhere ``threads`` CPUs.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from meddeblur.errors import require
from meddeblur.inference.archive import Outcome, Task
from meddeblur.inference.jobs import GPU_BATCH, Settings, deblur_tasks
from meddeblur.inference.workers import ModelSpec, check_workers, cores, set_threads, threads_per_worker

__all__ = ["RayActors"]


class _Deblur:
    """The Ray Data actor: loads the model once, then turns batches of task rows into batches of outcome rows.

    What to load comes as class attributes of a subclass made per run (:func:`_actor_class`), not as constructor
    arguments, which Ray would keep in its object store for the actors' restarts.
    """

    spec: ModelSpec
    settings: Settings
    threads: int

    def __init__(self) -> None:
        set_threads(self.threads)
        self.engine = self.spec.load()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        tasks = [Task(Path(source), Path(target), note or None) for source, target, note in zip(batch["input"], batch["output"], batch["note"])]
        return {"outcome": [json.dumps(outcome.as_dict()) for outcome in deblur_tasks(self.engine, tasks, self.settings)]}


def _actor_class(spec: ModelSpec, settings: Settings, threads: int) -> type:
    return type("DeblurActor", (_Deblur,), {"spec": spec, "settings": settings, "threads": threads})


class RayActors:
    """Deblur on Ray: ``workers`` actors on the cluster at ``address`` (None: an embedded Ray on this machine)."""

    def __init__(self, spec: ModelSpec, settings: Settings, workers: int, address: str | None = None) -> None:
        require("ray", "deblur cluster='ray'")
        self.spec, self.settings, self.workers, self.address = spec, settings, check_workers(workers), address
        self._started = False

    def _connect(self) -> Any:
        import ray

        if not ray.is_initialized():
            if self.address is None:
                # Embedded: this machine's cores only, no dashboard; the actors' output stays in their own log files.
                ray.init(num_cpus=cores(), include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            self._started = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the run's own bar counts images
        context.print_on_execution_start = False
        return ray

    def run(self, tasks: list[Task], on_tile: Any) -> Iterator[Outcome]:
        if not tasks:
            return
        ray = self._connect()
        resources = ray.cluster_resources()
        gpus = 1 if resources.get("GPU", 0) >= 1 and self.spec.device in ("auto", "cuda") and self.spec.engine == "torch" else 0
        if self.address is None:
            threads = threads_per_worker(self.workers)
        else:  # each actor's share of the cluster's cores, but no more than its smallest node has
            smallest = min(int(node["Resources"].get("CPU", 1)) for node in ray.nodes() if node.get("Alive"))
            threads = max(1, min(smallest, int(resources.get("CPU", 1)) // self.workers))
        settings = replace(self.settings, batch=GPU_BATCH) if gpus and self.settings.batch == 1 else self.settings
        rows = [{"input": str(task.input), "output": str(task.output), "note": task.note or ""} for task in tasks]
        # Blocks of one task while there are few, of up to 64 for a large archive: progress and the log follow closely
        # without Ray tracking a million blocks.
        blocks = min(len(rows), max(1000, math.ceil(len(rows) / 64)))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        results = dataset.map_batches(_actor_class(self.spec, settings, threads), batch_size=settings.batch,
                                      compute=ray.data.ActorPoolStrategy(size=self.workers), num_cpus=1 if gpus else threads,
                                      num_gpus=gpus)
        # Ray Data's own status lines (set up again as execution starts): the run has its bar and its summary.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        for row in results.iter_rows():
            yield Outcome(**json.loads(row["outcome"]))

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

