"""Load test of ``meddeblur serve``: concurrent clients on loopback against the real server.

A script, not a test. Starts ``python -m meddeblur serve`` on a free loopback port (the
shipped model, or ``--model``), warms it up, then N client threads (default 16) send
``--requests`` uploads (default 2,000), alternating the ``--sizes`` (default 256×256 and
1024×768 synthetic dermoscopy-like JPEGs from ``meddeblur.data.synthetic``), stopping early at
``--max-seconds``. A 503 (queue full) is expected back-pressure: counted apart, the client
waits its Retry-After (at most 2 s) and goes on to its next request without retrying.
Anything else that is not a correct 200 image is an unexpected error.

Reports throughput, latency percentiles, answers by status and the server's resident
memory (all its processes, from /proc: Linux only) after start, after warm-up and at the
end (both idle, a second after the last answer) and at its peak under load; goals: 0
unexpected errors, RSS growth after warm-up below 10 %.

    python -m benchmarks.stress.load                     # writes benchmarks/results/load.{json,md}
    python -m benchmarks.stress.load --model runs/x --clients 32 --workers 2
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.common import RESULTS, command, describe_machine, write_result

SEEDS_PER_SIZE = 4
GOAL_RSS_GROWTH_PCT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants (uvicorn's worker processes), in MiB."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    family, grew = {pid}, True
    while grew:
        children = {child for child, parent in parents.items() if parent in family} - family
        family |= children
        grew = bool(children)
    total_kib = 0
    for member in family:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total_kib / 1024


def make_images(sizes: list[tuple[int, int]]) -> dict[str, list[bytes]]:
    """JPEG uploads (what dermoscopes write), a few seeds per size. Synthetic: no patient data."""
    from meddeblur.data.synthetic import synthetic_dermoscopy

    images: dict[str, list[bytes]] = {}
    for width, height in sizes:
        encoded = []
        for seed in range(SEEDS_PER_SIZE):
            buffer = io.BytesIO()
            rgb = (synthetic_dermoscopy(height, width, seed) * 255).round().astype(np.uint8)
            Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
            encoded.append(buffer.getvalue())
        images[f"{width}x{height}"] = encoded
    return images


class Server:
    """``meddeblur serve`` in a child process (its own process group), logging to a file."""

    def __init__(self, args: argparse.Namespace, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "meddeblur", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", str(args.workers), "--threads", str(args.threads), "--queue", str(args.queue)]
        if args.model:
            command += ["--model", str(args.model)]
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)

    def wait_ready(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                response = httpx.get(self.url + "/healthz", timeout=2)
                if response.status_code == 200:
                    return response.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully, workers included
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # our own child's group, started above
                self.process.wait(10)
        self._log.close()


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0, "max": 0.0}
    array = np.asarray(values)
    return {"p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95)), "p99": float(np.percentile(array, 99)),
            "mean": float(array.mean()), "max": float(array.max())}


def one_request(client: httpx.Client, url: str, label: str, data: bytes) -> dict:
    """Send one upload; what came back, judged."""
    started = time.perf_counter()
    try:
        response = client.post(url + "/v1/deblur", files={"file": (f"{label}.jpg", data, "image/jpeg")})
    except httpx.HTTPError as exc:
        return {"size": label, "status": "exception", "error": type(exc).__name__, "ms": (time.perf_counter() - started) * 1000}
    ms = (time.perf_counter() - started) * 1000
    record = {"size": label, "status": response.status_code, "ms": ms}
    if response.status_code == 200:
        ok = (response.headers.get("content-type") == "image/jpeg" and response.content[:3] == b"\xff\xd8\xff"
              and response.headers.get("x-image-size") == label)
        if not ok:
            record["status"], record["error"] = "bad answer", response.headers.get("content-type", "?")
    elif response.status_code == 503:
        record["retry_after"] = float(response.headers.get("retry-after", "1"))
    else:
        record["error"] = response.text[:200]
    return record


def run_clients(url: str, images: dict[str, list[bytes]], clients: int, requests: int, max_seconds: float) -> tuple[list[dict], float, bool]:
    """``clients`` threads share ``requests`` uploads (sizes alternating); returns records, seconds, stopped-by-time."""
    labels = list(images)
    counter, lock = itertools.count(), threading.Lock()
    records: list[dict] = []
    deadline = time.monotonic() + max_seconds
    timed_out = threading.Event()

    def client_loop() -> None:
        with httpx.Client(timeout=600) as client:
            while True:
                with lock:
                    index = next(counter)
                if index >= requests:
                    return
                if time.monotonic() > deadline:
                    timed_out.set()
                    return
                label = labels[index % len(labels)]
                record = one_request(client, url, label, images[label][(index // len(labels)) % SEEDS_PER_SIZE])
                with lock:
                    records.append(record)
                if record["status"] == 503:
                    time.sleep(min(2.0, record["retry_after"]))

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records, time.perf_counter() - started, timed_out.is_set()


class RssSampler(threading.Thread):
    """The server's peak RSS, sampled twice a second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._halt = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.5):
            self.peak = max(self.peak, tree_rss_mib(self.pid))

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return self.peak


def summarize(records: list[dict], seconds: float) -> dict:
    statuses = Counter(str(r["status"]) for r in records)
    ok = [r for r in records if r["status"] == 200]
    unexpected = [r for r in records if r["status"] not in (200, 503)]
    return {
        "requests": {"sent": len(records), "ok": len(ok), "busy_503": statuses.get("503", 0), "unexpected": len(unexpected),
                     "by_status": dict(sorted(statuses.items())),
                     "unexpected_examples": [{k: r[k] for k in ("size", "status", "error") if k in r} for r in unexpected[:5]]},
        "seconds": seconds,
        "throughput_rps": len(ok) / seconds if seconds else 0.0,
        "latency_ms": percentiles([r["ms"] for r in ok]),
        "latency_ms_by_size": {size: percentiles([r["ms"] for r in ok if r["size"] == size]) for size in sorted({r["size"] for r in records})},
    }


def markdown(result: dict) -> str:
    req, rss, lat = result["requests"], result["rss_mib"], result["latency_ms"]
    lines = [
        "# Load test of `meddeblur serve`",
        "",
        f"Measured {result['date']} with `{result['command']}`.",
        (f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch {result['machine']['torch']}, "
         f"Python {result['machine']['python']}."),
        (f"Server: model `{result['server']['model_id']}` ({result['server']['model']}), {result['server']['workers']} worker process(es) "
         f"× {result['server']['threads']} inference thread(s), queue {result['server']['queue']} per worker."),
        (f"Load: {result['clients']} concurrent clients on loopback, {req['sent']} requests "
         f"({', '.join(result['sizes'])} synthetic JPEGs, alternating) after {result['warmup']} warm-up requests"
         + (" — **stopped by the time limit**" if result["stopped_by_time"] else "") + "."),
        "",
        "| requests | 200 | 503 (back-pressure) | unexpected | seconds | throughput (req/s) |",
        "|---|---|---|---|---|---|",
        f"| {req['sent']} | {req['ok']} | {req['busy_503']} | {req['unexpected']} | {result['seconds']:.1f} | {result['throughput_rps']:.2f} |",
        "",
        "| latency of 200s (ms) | p50 | p95 | p99 | mean | max |",
        "|---|---|---|---|---|---|",
        f"| all | {lat['p50']:.0f} | {lat['p95']:.0f} | {lat['p99']:.0f} | {lat['mean']:.0f} | {lat['max']:.0f} |",
    ]
    for size, p in result["latency_ms_by_size"].items():
        lines.append(f"| {size} | {p['p50']:.0f} | {p['p95']:.0f} | {p['p99']:.0f} | {p['mean']:.0f} | {p['max']:.0f} |")
    lines += [
        "",
        f"Answers by status: {', '.join(f'{k}: {v}' for k, v in req['by_status'].items())}.",
        "",
        "| server RSS, all its processes | after start | after warm-up | end | peak | growth after warm-up |",
        "|---|---|---|---|---|---|",
        f"| MiB | {rss['start']:.0f} | {rss['after_warmup']:.0f} | {rss['end']:.0f} | {rss['peak']:.0f} | {rss['growth_after_warmup_pct']:+.1f} % |",
        "",
        (f"Goals: 0 unexpected errors — {'met' if result['goals']['no_unexpected_errors'] else '**not met**'}; "
         f"RSS growth after warm-up < {GOAL_RSS_GROWTH_PCT:g} % — {'met' if result['goals']['rss_growth_below_10pct'] else '**not met**'}."),
        "",
    ]
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="run folder or .safetensors (default: the shipped model)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--sizes", nargs="+", default=["256x256", "1024x768"], metavar="WxH")
    parser.add_argument("--warmup", type=int, default=8, help="requests before measuring (sizes alternating)")
    parser.add_argument("--max-seconds", type=float, default=3600, help="stop sending new requests after this long")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--queue", type=int, default=32)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    images = make_images([parse_size(s) for s in args.sizes])
    labels = list(images)
    with tempfile.TemporaryDirectory(prefix="meddeblur-load-") as folder:
        server = Server(args, Path(folder) / "server.log")
        try:
            health = server.wait_ready(600)  # seconds normally; minutes on a starved machine
            rss_start = tree_rss_mib(server.process.pid)
            with httpx.Client(timeout=600) as client:
                for i in range(args.warmup):
                    label = labels[i % len(labels)]
                    warm = one_request(client, server.url, label, images[label][i % SEEDS_PER_SIZE])
                    if warm["status"] != 200:
                        raise RuntimeError(f"warm-up request failed: {warm}\n{server.log_tail()}")
            time.sleep(1.0)  # measured idle, like the end: the server trims its heap when its pool empties
            rss_warm = tree_rss_mib(server.process.pid)
            sampler = RssSampler(server.process.pid)
            sampler.start()
            records, seconds, stopped = run_clients(server.url, images, args.clients, args.requests, args.max_seconds)
            time.sleep(1.0)  # idle again: the last answers' buffers are gone
            rss_end = tree_rss_mib(server.process.pid)
            peak = max(sampler.stop(), rss_end)
        except RuntimeError as error:
            print(f"load: {error}", file=sys.stderr)
            return 2
        finally:
            server.stop()

    result = {
        "command": command("stress.load", argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": describe_machine(),
        "server": {"model": args.model or "shipped default", "model_id": health["model_id"], "workers": args.workers,
                   "threads": args.threads, "queue": args.queue},
        "clients": args.clients, "sizes": labels, "warmup": args.warmup, "stopped_by_time": stopped,
        **summarize(records, seconds),
    }
    growth = (rss_end - rss_warm) / rss_warm * 100 if rss_warm else 0.0
    result["rss_mib"] = {"start": rss_start, "after_warmup": rss_warm, "end": rss_end, "peak": peak, "growth_after_warmup_pct": growth}
    result["goals"] = {"no_unexpected_errors": result["requests"]["unexpected"] == 0, "rss_growth_below_10pct": growth < GOAL_RSS_GROWTH_PCT}
    write_result("load", result, markdown(result), Path(args.out))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
