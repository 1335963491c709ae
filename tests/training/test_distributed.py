"""Data-parallel training under torchrun (2 CPU processes, gloo) and the CUDA precision switches (tested on the CPU).

The 2-process run (epoch 1, then ``--resume`` for epoch 2) is checked two ways:

* against an in-process re-computation of what correct data parallelism must give
  here: the same DistributedSampler shards, per-process BatchNorm batch statistics,
  gradients averaged over the two shards, BatchNorm running statistics averaged
  after each epoch. Only float summation order differs, so the tolerance is tight
  (weights within 1e-5 absolute, val loss within 1e-4 relative; measured < 1e-6 and
  ~2e-7). Training on the full data in every process, not averaging gradients
  (no DDP) or not averaging the BatchNorm statistics each fail it (checked by
  breaking the code on purpose).
* against a single-process run with the same global batch, within 2e-2 relative
  val loss. That bound is loose on purpose: on gloo each process normalises with
  the BatchNorm statistics of 2 images instead of 4, and the shuffle streams differ
  (DistributedSampler vs the single-process loader); measured difference ~2e-3.
"""

from __future__ import annotations

import csv
import json
import math
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_env
from safetensors.torch import load_file
from synthetic_pairs import write_synthetic_pairs
from torch.func import functional_call
from torch.utils.data import DistributedSampler

from meddeblur.cli import main
from meddeblur.data.pairs import PairDataset, load_pairs, read_split, select
from meddeblur.errors import UserError
from meddeblur.losses import build_loss
from meddeblur.models import ModelConfig, build_model
from meddeblur.training import distributed as ddp

TINY = ["--recipe", "reference", "--width", "4", "--size", "32", "--batch", "4", "--device", "cpu"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs in-process work on one thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 11 pairs → 8 train (two global batches of 4, no padding) / 2 val / 1 test.
    return write_synthetic_pairs(tmp_path_factory.mktemp("data"), n=11, height=40, width=40, seed=3)


def _torchrun(*args: object) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "meddeblur", "train", *map(str, args)]
    result = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def two_process_run(data, tmp_path_factory) -> tuple[Path, list[subprocess.CompletedProcess]]:
    """Epoch 1, then ``--resume`` for epoch 2: both launched with torchrun, 2 processes."""
    run = tmp_path_factory.mktemp("ddp") / "run"
    first = _torchrun("--data", data, "--out", run, *TINY, "--epochs", "1")
    return run, [first, _torchrun("--resume", run, "--epochs", "2")]


def test_two_processes_write_one_set_of_outputs(two_process_run):
    run, launches = two_process_run
    assert [r["epoch"] for r in _history(run)] == ["1", "2"]
    assert sorted(p.name for p in run.iterdir()) == sorted(["best.json", "best.safetensors", "curves.png", "history.csv", "last.pt",
                                                            "last.pt.sha256", "run.json", "split.json", "train.log"])
    log = (run / "train.log").read_text()
    assert [log.count(f"epoch {e}: ") for e in (1, 2)] == [1, 1] and log.count("resuming") == 1
    assert log.count("data parallel: 2 processes (gloo), global batch 4 = 2 per process") == 2  # once per launch
    assert all(result.stdout.count("run folder:") == 1 for result in launches)
    # Same weights format as a single-process run: no DDP "module." prefix.
    assert set(load_file(str(run / "best.safetensors"))) == set(build_model(ModelConfig(width=4)).state_dict())


def _reference(data: Path, run: Path, epochs: int = 2, world: int = 2, batch: int = 4, seed: int = 42) -> tuple[torch.nn.Module, list[float]]:
    """What 2-process data parallelism must compute, in one process: (network, val loss per epoch)."""
    split = read_split(run / "split.json")
    pairs = load_pairs(data / "blurred", data / "sharp", None)
    train_set = PairDataset(select(pairs, split["train"], "split"), size=32, augment=True, seed=seed)
    val_set = PairDataset(select(pairs, split["val"], "split"), size=32, seed=seed, fixed=True)
    loss_fn = build_loss(None, None, False)
    torch.manual_seed(seed)
    net = build_model(ModelConfig(width=4))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, eps=1e-7)
    buffers = [{k: v.clone() for k, v in net.named_buffers()} for _ in range(world)]  # each process's BatchNorm
    val_losses = []
    for epoch in range(1, epochs + 1):
        train_set.set_epoch(epoch)
        shards = []
        for rank in range(world):
            sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed)
            sampler.set_epoch(epoch)
            indices = list(sampler)
            shards.append([indices[i:i + batch // world] for i in range(0, len(indices), batch // world)])
        net.train()
        for step in range(len(shards[0])):
            optimizer.zero_grad()
            for rank in range(world):
                blurred, sharp = (torch.stack(t) for t in zip(*(train_set[i] for i in shards[rank][step])))
                (loss_fn(functional_call(net, buffers[rank], (blurred,)), sharp)[0] / world).backward()
            optimizer.step()
        with torch.no_grad():
            for name in buffers[0]:
                if "running_" in name:
                    mean = sum(b[name] for b in buffers) / world
                    for b in buffers:
                        b[name].copy_(mean)
            for name, value in net.named_buffers():
                value.copy_(buffers[0][name])
            net.eval()
            blurred, sharp = (torch.stack(t) for t in zip(*(val_set[i] for i in range(len(val_set)))))
            val_losses.append(float(loss_fn(net(blurred), sharp)[0]))
    return net, val_losses


def test_two_processes_compute_data_parallel_sgd(data, two_process_run):
    run, _ = two_process_run  # the resumed run must equal an uninterrupted data-parallel one
    net, val_losses = _reference(data, run)
    saved = torch.load(run / "last.pt", weights_only=True)["model"]
    for name, value in net.state_dict().items():
        # A conv bias just before BatchNorm has a zero gradient in exact arithmetic, so Adam
        # (eps 1e-7) turns its rounding noise into lr-sized steps: not comparable, and inert.
        if not re.search(r"\.[03]\.bias$", name):
            assert torch.allclose(saved[name].float(), value.float(), rtol=0, atol=1e-5), name
    assert [float(r["val_loss"]) for r in _history(run)] == pytest.approx(val_losses, rel=1e-4)


def test_two_processes_match_one_process_with_the_same_global_batch(data, two_process_run, tmp_path):
    run, _ = two_process_run
    single = tmp_path / "single"
    assert main(["train", "--data", str(data), "--out", str(single), *TINY, "--epochs", "2"]) == 0
    two, one = _history(run), _history(single)
    for a, b in zip(two, one):
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), rel=2e-2)


def test_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setattr(ddp, "world_size", lambda: 2)
    assert ddp.per_process_batch(8) == 4
    with pytest.raises(UserError, match=r"batch=5: .* 2 processes"):
        ddp.per_process_batch(5)


def test_helpers_are_no_ops_without_torchrun():
    assert not ddp.launched() and ddp.world_size() == 1 and ddp.is_main()
    assert ddp.all_reduce_sum([1.5, 2]) == [1.5, 2.0] and ddp.all_agree(False) is False
    net = build_model(ModelConfig(width=4))
    assert ddp.wrap_model(net, torch.device("cpu")) is net
    with ddp.process_group(torch.device("cpu")) as device:
        assert device == torch.device("cpu")


# --------------------------------------------------------------------------- CUDA precision (the CPU side of it)


def test_precision_is_float32_nchw_off_cuda():
    precision = ddp.choose_precision(torch.device("cpu"), amp=True, channels_last=True)
    assert precision == ddp.Precision() and not precision.active
    assert ddp.grad_scaler(torch.device("cpu"), precision) is None
    net = build_model(ModelConfig(width=4))
    assert ddp.with_precision(net, precision) is net


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_precision_model_runs_autocast_and_returns_float32(dtype):
    torch.manual_seed(0)
    net = build_model(ModelConfig(width=4)).eval().to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = ddp.PrecisionModel(net, ddp.Precision(dtype, channels_last=True))(x)
        exact = net(x)
    assert out.dtype == torch.float32 and out.shape == exact.shape
    assert (out - exact).abs().mean() < 0.05


def test_fp16_step_with_grad_scaler(tmp_path):
    """The fp16 path of run_epoch (scale, step, update) and the scaler's checkpoint state, on CPU autocast."""
    from meddeblur.training.loop import run_epoch

    data = write_synthetic_pairs(tmp_path / "data", n=4, height=32, width=32, seed=1)
    dataset = PairDataset(load_pairs(data / "blurred", data / "sharp", None), size=32, augment=True)
    torch.manual_seed(0)
    net = build_model(ModelConfig(width=4))
    before = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    stats = run_epoch(ddp.PrecisionModel(net, ddp.Precision(torch.float16)), build_loss(None, None, False), loader,
                      torch.device("cpu"), optimizer, scaler=scaler)
    assert all(math.isfinite(v) for v in stats.values())
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
    state = scaler.state_dict()
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(state)
    assert restored.get_scale() == scaler.get_scale()


def test_deblur_tensor_ignores_amp_and_channels_last_on_cpu(tiny_model):
    from meddeblur.inference.batch import deblur_tensor

    x = torch.rand(1, 3, 40, 36)
    assert torch.equal(deblur_tensor(tiny_model, x, amp=True, channels_last=True), deblur_tensor(tiny_model, x))


def test_cli_stores_precision_switches_and_resume_keeps_them(data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--width", "4", "--size", "32", "--batch", "4", "--epochs", "1"]
    assert main(["train", "--data", str(data), "--out", str(run), "--no-amp", "--no-channels-last", *args]) == 0
    options = json.loads((run / "run.json").read_text())["options"]
    assert options["amp"] is False and options["channels_last"] is False
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-amp"]) == 2
    assert "drop --no-amp" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert json.loads((run / "run.json").read_text())["options"]["amp"] is False
    assert len(_history(run)) == 2


def test_training_loop_with_mixed_precision_and_channels_last_switched_on(data, tmp_path, monkeypatch):
    """The CUDA wiring of train() (autocast wrapper, channels_last model, GradScaler in the checkpoint), run on CPU autocast."""
    from meddeblur.models import load_model

    monkeypatch.setattr(ddp, "choose_precision", lambda device, amp, channels_last: ddp.Precision(torch.float16, channels_last=True))
    monkeypatch.setattr(ddp, "grad_scaler", lambda device, precision: torch.amp.GradScaler("cpu", init_scale=2.0 ** 8))
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *TINY, "--epochs", "1"]) == 0
    scaler = torch.load(run / "last.pt", weights_only=True)["scaler"]
    assert scaler["scale"] > 0 and scaler["_growth_tracker"] >= 1  # the scaler's state survives in the checkpoint
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert [r["epoch"] for r in _history(run)] == ["1", "2"]
    assert all(math.isfinite(float(r["val_loss"])) for r in _history(run))
    model, _, _ = load_model(run)  # channels_last weights load like any others
    assert model(torch.rand(1, 3, 32, 32)).dtype == torch.float32


def test_processes_with_different_clocks_stop_together_at_the_time_budget(tmp_path):
    # Rank 1's clock runs 3× fast: with each process judging the budget by its own clock, rank 1 stopped while
    # rank 0 waited for it in DDP's all-reduce, forever. Now all use one clock, so both stop at the same step.
    from synthetic_pairs import write_sharp_images

    sharp = write_sharp_images(tmp_path / "sharp", n=8, height=72, width=80, first_seed=400)
    launcher = tmp_path / "skewed_clock.py"
    launcher.write_text("import os, sys, time\n"
                        "if os.environ.get('RANK') == '1':\n"
                        "    real = time.perf_counter\n"
                        "    time.perf_counter = lambda: 3.0 * real()\n"
                        "from meddeblur.cli import main\n"
                        "sys.exit(main(sys.argv[1:]))\n")
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(launcher), "train", "--sharp", str(sharp), "--out", str(run), "--width", "4",
               "--crop", "32", "--batch", "4", "--threads", "1", "--device", "cpu", "--max-minutes", "0.1", "--val-every", "3"]
    done = subprocess.run(command, env=cli_env(), capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "budget used after epoch" in (run / "train.log").read_text() and len(_history(run)) >= 1
