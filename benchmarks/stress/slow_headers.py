"""Slow-header attack ("slowloris") on ``meddeblur serve``: do good requests keep getting answers?

A script, not a test (tests/server/test_server.py has the fast check). For each protocol it starts the real
server (the app and uvicorn options of ``meddeblur serve``, the shipped model unless ``--model``) on a free
loopback port, then for ``--seconds`` (default 30):

* the attacker: ``--connections`` (default 200) connections from 127.0.0.2, each sending a request line and then
  one header line every ``--interval`` seconds (default 5), never ending its head; a connection the server closes
  is opened again at once;
* a good client from 127.0.0.1: one request every 0.5 s, alternately ``GET /healthz`` and ``POST /v1/deblur`` of a
  64×64 PNG, each on a new connection, with a 10 s timeout.

Protocols: ``plain`` is uvicorn's stock h11 protocol, what the server ran before; ``guarded`` is
:class:`meddeblur.server.connections.GuardedH11Protocol` (a 10 s request-head deadline, 32 connections per client
address), what it runs now. Goal: every good request answered 200 under the attack.

    python -m benchmarks.stress.slow_headers          # writes benchmarks/results/slow_headers.{json,md}
"""

from __future__ import annotations

import argparse
import io
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.common import RESULTS, command as result_command, machine_line, write_result

ATTACKER, CLIENT = "127.0.0.2", "127.0.0.1"

_LAUNCH = """
import sys, uvicorn
from meddeblur.server import ServerSettings, create_app
from meddeblur.server.run import uvicorn_options
settings = ServerSettings(model=sys.argv[3] or None, device="cpu")
app = create_app(settings)
options = uvicorn_options(settings, "127.0.0.1", int(sys.argv[1]), "warning")
if sys.argv[2] == "plain":
    options["http"] = "h11"  # uvicorn's own protocol: no head deadline, no per-client cap
print("ready", flush=True)
uvicorn.run(app, **options)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((CLIENT, 0))
        return sock.getsockname()[1]


class Attacker(threading.Thread):
    """``count`` slow-header connections from ``ATTACKER``, kept open (reopened when closed) until ``stop`` is set."""

    def __init__(self, port: int, count: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.interval = port, count, interval
        self.stop = threading.Event()
        self.opened = self.closed_by_server = 0
        self.answers: Counter[str] = Counter()

    def _open(self, selector: selectors.BaseSelector) -> None:
        try:
            sock = socket.create_connection((CLIENT, self.port), timeout=5, source_address=(ATTACKER, 0))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        except OSError:
            self.answers["connect failed"] += 1
            return
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        self.opened += 1

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        for _ in range(self.count):
            self._open(selector)
        next_line = time.monotonic() + self.interval
        while not self.stop.is_set():
            for key, _ in selector.select(timeout=0.1):
                sock = key.fileobj
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"
                self.answers[status] += 1
                self.closed_by_server += 1
                selector.unregister(sock)
                sock.close()
                self._open(selector)
            if time.monotonic() >= next_line:
                next_line += self.interval
                for key in list(selector.get_map().values()):
                    try:
                        key.fileobj.sendall(b"X-Slow: 1\r\n")
                    except OSError:
                        pass
        for key in list(selector.get_map().values()):
            key.fileobj.close()


def good_requests(port: int, seconds: float) -> list[dict]:
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(png, "PNG")
    results, end, n = [], time.monotonic() + seconds, 0
    transport = httpx.HTTPTransport(local_address=CLIENT)
    with httpx.Client(transport=transport, timeout=10, headers={"Connection": "close"}) as client:
        while time.monotonic() < end:
            began = time.monotonic()
            kind = "healthz" if n % 2 == 0 else "deblur"
            try:
                if kind == "healthz":
                    answer = client.get(f"http://127.0.0.1:{port}/healthz")
                else:
                    answer = client.post(f"http://127.0.0.1:{port}/v1/deblur", files={"file": ("a.png", png.getvalue(), "image/png")})
                status = str(answer.status_code)
            except httpx.HTTPError as error:
                status = type(error).__name__
            results.append({"kind": kind, "status": status, "ms": round((time.monotonic() - began) * 1000, 1)})
            n += 1
            time.sleep(max(0.0, 0.5 - (time.monotonic() - began)))
    return results


def measure(protocol: str, model: str | None, connections: int, interval: float, seconds: float) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", _LAUNCH, str(port), protocol, model or ""], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready", "server did not start"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not answer"
            time.sleep(0.2)
        before = good_requests(port, 3)
        attacker = Attacker(port, connections, interval)
        attacker.start()
        time.sleep(2)  # the attack is under way before good requests are counted
        during = good_requests(port, seconds)
        attacker.stop.set()
        attacker.join(10)
    finally:
        server.terminate()
        server.wait(30)
    statuses = Counter(r["status"] for r in during)
    ok = [r["ms"] for r in during if r["status"] == "200"]
    return {"protocol": protocol, "good_before": dict(Counter(r["status"] for r in before)), "good_during": dict(statuses),
            "good_requests": len(during), "good_200": statuses.get("200", 0),
            "good_200_ms_median": float(np.median(ok)) if ok else None, "good_200_ms_max": max(ok) if ok else None,
            "attacker_connections_opened": attacker.opened, "attacker_closed_by_server": attacker.closed_by_server,
            "attacker_answers": dict(attacker.answers)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="run folder or .safetensors (default: the shipped model)")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between the attacker's header lines")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long good requests are sent during the attack")
    parser.add_argument("--protocols", default="plain,guarded")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = [measure(p, args.model, args.connections, args.interval, args.seconds) for p in args.protocols.split(",")]
    command = result_command("stress.slow_headers", argv)
    record = {"measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": command, "machine": machine_line(),
              "connections": args.connections, "interval_s": args.interval, "seconds": args.seconds, "rows": rows}
    lines = [
        "# Slow-header attack on `meddeblur serve`", "",
        f"Measured {record['measured']} with `{command}`.", f"Machine: {record['machine']}.",
        f"Attack: {args.connections} connections from {ATTACKER}, each sending a request line and then one header line every "
        f"{args.interval:g} s, reopened when the server closes them. Good client: one request every 0.5 s from {CLIENT} "
        f"(alternately GET /healthz and POST /v1/deblur of a 64×64 PNG, new connection each, 10 s timeout) for {args.seconds:g} s.",
        "", "| protocol | good requests | answered 200 | other answers | median / max ms of the 200s | attacker connections "
        "opened | closed by the server (answers) |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        other = ", ".join(f"{k}: {v}" for k, v in row["good_during"].items() if k != "200") or "none"
        timing = f"{row['good_200_ms_median']:.0f} / {row['good_200_ms_max']:.0f}" if row["good_200"] else "–"
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(row["attacker_answers"].items())) or "none"
        lines.append(f"| {row['protocol']} | {row['good_requests']} | {row['good_200']} | {other} | {timing} | "
                     f"{row['attacker_connections_opened']} | {row['attacker_closed_by_server']} ({answers}) |")
    lines += ["", "`plain`: uvicorn's own h11 protocol (what `serve` ran before). `guarded`: `GuardedH11Protocol` "
              "(10 s request-head deadline → 408, 32 connections per client address → 503), what `serve` runs now.",
              "Goal: every good request answered 200 under the attack — "
              + ("met." if rows[-1]["good_200"] == rows[-1]["good_requests"] else "not met.")]
    write_result("slow_headers", record, "\n".join(lines) + "\n", args.out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
