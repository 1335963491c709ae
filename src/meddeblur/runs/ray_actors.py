"""A folder run on Ray Data (the ``ray`` extra): the same tasks, deblurred by Ray actors, each loading the model once.

The calling process plans (lists, resumes, checks clashes) and logs exactly as for a local run; Ray only carries
the tasks, as a dataset of (input, output) paths, through :meth:`ray.data.Dataset.map_batches` with a pool of
``workers`` actors, each running :func:`meddeblur.runs.jobs.deblur_tasks` — the code a local worker runs, so the
outputs are the same pixels. The actors read inputs and write outputs themselves: on a cluster, every node must see
the files at the same paths (shared storage). With no ``address`` an embedded Ray is started on this machine and
stopped at the end; with one, the run joins that cluster and leaves it running. Where the cluster has GPUs each actor
takes one; elsewhere ``threads`` CPUs.

An ``address`` is checked before Ray is touched (:func:`check_ray_address`): ``ray.init`` takes almost any string and
then fails with its own traceback, or, for a ``HOST:PORT`` where nothing listens, retries for minutes. So its form is
checked first, and then whether anything accepts a TCP connection there within ``connect_timeout`` seconds; whatever
``ray.init`` still raises becomes one line.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import logging
import math
import os
import re
import socket
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from meddeblur.errors import InvalidOption, MissingExtra, UserError, require
from meddeblur.runs.jobs import GPU_BATCH, Settings, deblur_tasks
from meddeblur.runs.plan import Outcome, Task
from meddeblur.runs.workers import ModelSpec, check_workers, cores, set_threads, threads_per_worker

__all__ = ["RayActors", "check_ray_address", "CONNECT_TIMEOUT"]

#: Seconds a cluster at ``address`` has to accept a connection: a head on the same network answers in milliseconds, and
#: Ray's own client waits 5 s per attempt; far less than the minutes ``ray.init`` spends retrying a port that is closed.
CONNECT_TIMEOUT = 15.0
_FORMS = (
    "auto, HOST:PORT (the head's GCS port, e.g. 10.0.0.5:6379) or ray://HOST:PORT (its Ray Client port, e.g. "
    "ray://10.0.0.5:10001)"
)
_CLIENT = "ray://"
# A DNS name (RFC 1123 labels; "_" too, which some internal names use) or an IPv4 address; IPv6 comes in brackets.
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")


def _host_port(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[IPv6]:PORT``) → (host, port), or None when it is not one."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), int(port)
        except ValueError:
            return None
    return (host, int(port)) if len(host) <= 253 and _HOST.fullmatch(host) else None


def check_ray_address(address: object, option: str = "ray_address") -> tuple[str, int] | None:
    """The (host, port) a Ray ``address`` names, None for ``"auto"``; :class:`InvalidOption` for any other form.

    Stricter than Ray, whose parser lets ``"a b:1"`` or ``"h:99999"`` through to fail later in its own words; the
    forms are those ``ray.init`` documents for joining a running cluster (``"local"``, which starts a new one, is
    what leaving the address out does here). ``option`` names where the address came from in the message.
    """
    if address == "auto":
        return None
    parsed = _host_port(address[len(_CLIENT) :] if address.startswith(_CLIENT) else address) if isinstance(address, str) else None
    if parsed is None:
        hint = " (leave it out for a Ray started on this machine)" if address == "local" else ""
        raise InvalidOption(f"{option}={address!r}: not a Ray address; give {_FORMS}{hint}", value=address, option=option)
    return parsed


def _gcs_target(address: str) -> tuple[str, int] | None:
    """Where ``ray.init(address)`` will connect for a GCS address or ``"auto"``, as Ray itself resolves it.

    Ray turns a loopback host into this machine's own address, and finds ``"auto"`` from ``RAY_ADDRESS`` or the last
    cluster started here; probing that, not the string given, keeps the probe from refusing what Ray would reach.
    Ray's resolver is private API: should it change, the address as given is probed (None for ``"auto"``: not probed).
    """
    try:
        from ray._private.services import canonicalize_bootstrap_address

        resolved = canonicalize_bootstrap_address(address)
    except ConnectionError:  # "auto" and no cluster to be found
        raise UserError(
            f"ray_address={address}: no running Ray cluster found on this machine (nor in RAY_ADDRESS); start one "
            "with `ray start --head`, give its HOST:PORT, or drop `ray_address`",
            value=address,
        ) from None
    except Exception:
        resolved = None
    target = _host_port(resolved) if resolved else None
    return target or (None if address == "auto" else check_ray_address(address))


def _ray_client_installed() -> bool:
    """Whether Ray Client can run: Ray checks for grpc only inside ``ray.init``, and says so in a traceback."""
    return importlib.util.find_spec("grpc") is not None


def _probe(name: str, address: str, target: tuple[str, int], timeout: float) -> None:
    """UserError unless something at ``target`` accepts a TCP connection within ``timeout`` seconds.

    ``name`` and ``address``: where the address came from, for the message (``ray_address`` or ``RAY_ADDRESS``).
    """
    host, port = target
    where = f"{host}:{port}" if target == check_ray_address(address) else f"{host}:{port} (where Ray connects for {address})"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.gaierror as exc:
        raise UserError(
            f"{name}={address}: host {host} not found ({exc.strerror or exc}); check the address", value=address
        ) from None
    except OSError as exc:  # refused, unreachable, or no answer in time (socket.timeout)
        why = "no answer" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc)).lower()
        raise UserError(
            f"{name}={address}: no Ray cluster answered at {where} within {timeout:g} s ({why}); start one "
            "with `ray start --head` or drop `ray_address`",
            value=address,
        ) from None


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
        tasks = [
            Task(Path(source), Path(target), note or None)
            for source, target, note in zip(batch["input"], batch["output"], batch["note"])
        ]
        return {"outcome": [json.dumps(outcome.as_dict()) for outcome in deblur_tasks(self.engine, tasks, self.settings)]}


def _actor_class(spec: ModelSpec, settings: Settings, threads: int) -> type:
    return type("DeblurActor", (_Deblur,), {"spec": spec, "settings": settings, "threads": threads})


class RayActors:
    """Deblur on Ray: ``workers`` actors on the cluster at ``address`` (None: an embedded Ray on this machine).

    ``connect_timeout``: seconds the cluster at ``address`` has to accept a connection before the run is refused.
    """

    def __init__(
        self,
        spec: ModelSpec,
        settings: Settings,
        workers: int,
        address: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        require("ray", "deblur cluster='ray'")
        if address is not None:
            check_ray_address(address)
        if (
            isinstance(connect_timeout, bool)
            or not isinstance(connect_timeout, (int, float))
            or not 0 < connect_timeout < math.inf
        ):
            raise InvalidOption(
                f"connect_timeout={connect_timeout!r}: must be a number of seconds greater than 0",
                value=connect_timeout,
                option="connect_timeout",
            )
        self.spec, self.settings, self.workers, self.address = spec, settings, check_workers(workers), address
        self.connect_timeout = float(connect_timeout)
        self._started = False

    def _connect(self) -> Any:
        import ray

        if not ray.is_initialized():
            if self.address is None:
                # Embedded: this machine's cores only, no dashboard; the actors' output stays in their own log files.
                ray.init(num_cpus=cores(), include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                self._join(ray, self.address)
            self._started = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the run's own bar counts images
        context.print_on_execution_start = False
        return ray

    def _join(self, ray: Any, address: str) -> None:
        """``ray.init`` on the cluster at ``address``, once something answers there; Ray's errors as one line."""
        # With "auto", Ray reads RAY_ADDRESS first: that is the address to check, in its own name.
        from_environment = os.environ.get("RAY_ADDRESS", "") if address == "auto" else ""
        name, given = ("RAY_ADDRESS", from_environment) if from_environment else ("ray_address", address)
        if given.startswith(_CLIENT):
            target = check_ray_address(given, option=name)
            if not _ray_client_installed():
                raise MissingExtra(
                    f"{name}={given}: a ray:// address goes through Ray Client, which needs pip install "
                    "'ray[client]'; install it, or give the head's GCS address HOST:6379 from a machine of the "
                    "cluster",
                    value=given,
                    extra=None,
                )
        else:
            check_ray_address(given, option=name)
            target = _gcs_target(given)
        if target is not None:
            _probe(name, given, target, self.connect_timeout)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except Exception as exc:
            if ray.is_initialized():  # half-joined: leave nothing behind
                ray.shutdown()
            why = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise UserError(
                f"{name}={given}: could not join the Ray cluster there ({why}); check the address and that the "
                "cluster runs this Ray version",
                value=given,
            ) from None

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
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing actor options this way, yet names no other for max_restarts.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            results = dataset.map_batches(
                _actor_class(self.spec, settings, threads),
                batch_size=settings.batch,
                compute=ray.data.ActorPoolStrategy(size=self.workers),
                num_cpus=1 if gpus else threads,
                num_gpus=gpus,
                # No restarts: Ray Data hands its actors their arguments through the object store, where Ray cannot
                # promise a restart (it says so in an error-level line on every run that allows one), and an image
                # that kills its actor would be retried for ever. An actor's death ends the run in one line instead.
                max_restarts=0,
            )
        # Ray Data's own status lines (set up again as execution starts): the run has its bar and its summary.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        try:
            for row in results.iter_rows():
                yield Outcome(**json.loads(row["outcome"]))
        except ray.exceptions.RayActorError as exc:
            raise UserError(
                "a Ray actor died while deblurring (its process ended: killed by the system's out-of-memory killer, "
                f"or crashed; Ray: {type(exc).__name__}); outputs finished so far are whole and a rerun skips them; "
                "retry with fewer workers or a smaller tile, or without cluster='ray', where the image that kills its "
                "worker is named and refused and the run goes on"
            ) from None

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
