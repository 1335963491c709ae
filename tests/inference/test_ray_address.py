"""Joining a Ray cluster: a malformed ``--ray-address``, or one where nothing answers, is one line and exit 2, quickly.

Nothing here starts a Ray cluster (tests/inference/test_archive.py runs an embedded one). "Nothing answers" is played
by a closed port (refused at once) and by a listening socket whose queue is full (the kernel drops the connection
attempt: no answer at all, as from a firewalled host).
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from meddeblur.cli import main
from meddeblur.errors import InvalidOption, MissingExtra, UserError
from meddeblur.runs import ray_actors as ray_run
from meddeblur.runs.plan import Task
from meddeblur.runs.jobs import Settings
from meddeblur.runs.ray_actors import RayActors, check_ray_address
from meddeblur.runs.workers import ModelSpec

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'meddeblur[ray]' (CI installs it with the test extra)")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(2):
        assert cv2.imwrite(str(folder / f"{seed}.png"), np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    return folder


def _closed_port() -> int:
    """A port nothing listens on (just released by a socket that had it)."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _silent_port():
    """A port on every interface that accepts no connection and refuses none: its listen queue is full."""
    with socket.socket() as server:
        server.bind(("", 0))
        server.listen(0)
        port = server.getsockname()[1]
        queued = socket.create_connection(("127.0.0.1", port), timeout=5)  # fills the queue of 0 (+1) entries
        try:
            yield port
        finally:
            queued.close()


@contextlib.contextmanager
def _listening_port():
    """A port on every interface that accepts connections (and says nothing: not a Ray cluster)."""
    with socket.socket() as server:
        server.bind(("", 0))
        server.listen(8)
        yield server.getsockname()[1]


def _cli_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def _actors(address: str, timeout: float = ray_run.CONNECT_TIMEOUT) -> RayActors:
    return RayActors(ModelSpec(device="cpu"), Settings(), 1, address, connect_timeout=timeout)


def _connect(actors: RayActors, tmp_path: Path) -> None:
    """Start the run of one task: the executor joins the cluster first."""
    list(actors.run([Task(tmp_path / "in.png", tmp_path / "out.png", None)], None))


@pytest.mark.parametrize("address", ["not a host", "h:99999", "h:0", "h:", ":6379", "h", "ray://", "ray://h", "http://h:80",
                                     "ray://ray://h:1", "", "local", "h:6379/x", "[::1:6379", "[nope]:6379"])
def test_a_malformed_address_is_one_line_naming_the_flag_and_the_forms(address, images, tmp_path, capsys):
    started = time.monotonic()
    err = _cli_error(capsys, ["deblur", str(images), "-o", str(tmp_path / "out"), "--cluster", "ray", "--ray-address", address])
    assert "--ray-address" in err and "auto, HOST:PORT" in err and "ray://HOST:PORT" in err, err
    assert time.monotonic() - started < 10  # refused before the model is loaded or Ray is touched
    assert not ray.is_initialized() and not (tmp_path / "out").exists()
    with pytest.raises(InvalidOption, match="ray_address="):  # the library refuses it in its own words too
        _actors(address)


@pytest.mark.parametrize("address, expected", [("auto", None), ("10.0.0.5:6379", ("10.0.0.5", 6379)),
                                               ("ray://head-1.cluster.local:10001", ("head-1.cluster.local", 10001)),
                                               ("[::1]:6379", ("::1", 6379)), ("localhost:1", ("localhost", 1))])
def test_the_forms_ray_documents_are_accepted(address, expected):
    assert check_ray_address(address) == expected


def test_a_closed_port_is_refused_in_one_line_within_seconds(images, tmp_path, capsys, tiny_weights):
    port = _closed_port()
    started = time.monotonic()
    err = _cli_error(capsys, ["deblur", str(images), "-o", str(tmp_path / "out"), "--model", str(tiny_weights), "--device", "cpu",
                              "--cluster", "ray", "--ray-address", f"127.0.0.1:{port}"])
    assert time.monotonic() - started < 20, "the run waited for Ray instead of refusing"
    assert f"--ray-address 127.0.0.1:{port}: no Ray cluster answered at" in err and "ray start --head" in err, err
    assert "drop --ray-address" in err and not ray.is_initialized()
    assert not list(tmp_path.glob("out/**/*.png"))  # nothing was deblurred


def test_no_answer_at_all_is_refused_after_the_connect_timeout(tmp_path):
    with _silent_port() as port:
        started = time.monotonic()
        with pytest.raises(UserError, match=rf"ray_address=127.0.0.1:{port}: no Ray cluster answered at .* within 1.5 s \(no answer\)"):
            _connect(_actors(f"127.0.0.1:{port}", timeout=1.5), tmp_path)
        assert 1.0 < time.monotonic() - started < 10
    assert not ray.is_initialized()


def test_a_ray_client_address_is_probed_too_and_needs_ray_client(tmp_path, monkeypatch):
    port = _closed_port()
    monkeypatch.setattr(ray_run, "_ray_client_installed", lambda: True)
    with pytest.raises(UserError, match=rf"ray_address=ray://127.0.0.1:{port}: no Ray cluster answered at 127.0.0.1:{port} within"):
        _connect(_actors(f"ray://127.0.0.1:{port}"), tmp_path)
    monkeypatch.setattr(ray_run, "_ray_client_installed", lambda: False)
    with pytest.raises(MissingExtra, match=r"needs pip install 'ray\[client\]'"):
        _connect(_actors(f"ray://127.0.0.1:{port}"), tmp_path)
    assert not ray.is_initialized()


def test_auto_checks_the_address_in_ray_address_by_that_name(tmp_path, monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(UserError, match=rf"RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answered"):
        _connect(_actors("auto"), tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "head node")
    with pytest.raises(InvalidOption, match="RAY_ADDRESS='head node': not a Ray address"):
        _connect(_actors("auto"), tmp_path)


def test_what_ray_init_raises_on_joining_becomes_one_line(tmp_path, monkeypatch):
    def failing_init(*args, **kwargs):
        raise RuntimeError("Version mismatch: The cluster was started with:\n    Ray: 2.9.0\nThis process on node was started with:\n    Ray: 2.60.0")

    monkeypatch.setattr(ray, "init", failing_init)
    with _listening_port() as port:
        with pytest.raises(UserError) as caught:
            _connect(_actors(f"127.0.0.1:{port}"), tmp_path)
    message = str(caught.value)
    assert message.startswith(f"ray_address=127.0.0.1:{port}: could not join the Ray cluster there (Version mismatch:")
    assert "\n" not in message and "Ray: 2.9.0" in message


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf"), True, "15"])
def test_the_connect_timeout_is_checked(timeout):
    with pytest.raises(InvalidOption, match="connect_timeout="):
        _actors("auto", timeout)



def test_the_help_states_the_forms_and_the_timeout_the_code_uses():
    from meddeblur.cli.parser import build_parser

    deblur = next(a for a in build_parser()._subparsers._group_actions[0].choices["deblur"]._actions if "--ray-address" in a.option_strings)
    text = " ".join(deblur.help.split())
    assert f"within {ray_run.CONNECT_TIMEOUT:g} s" in text and "HOST:PORT" in text and "ray://HOST:PORT" in text
