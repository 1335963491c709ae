"""`meddeblur train` and `serve` as a new user meets them: a short fine-tune that really reaches its learning rate,
a bar counting steps, the starting weights' score beside the result, a busy port in one line, and help texts that
name every flag the README uses."""

from __future__ import annotations

import csv
import json
import re
import socket
from pathlib import Path

import pytest
import torch
from synthetic_pairs import write_sharp_images

from meddeblur.cli import main
from meddeblur.cli.parser import build_parser, command_flags
from meddeblur.training.schedule import WARMUP_SHARE, TrainControl, cosine_factor

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--width", "4", "--crop", "32", "--batch", "2", "--device", "cpu", "--threads", "1"]


def test_warm_up_never_takes_more_than_a_tenth_of_the_run():
    # 20 steps with the recipe's 100-step warm-up: the peak rate is reached by step 2, not never.
    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    control = TrainControl(net, optimizer, 1.0, steps=20, budget_seconds=None, warmup=100)
    rates = []
    for _ in range(20):
        control.before_step()
        rates.append(optimizer.param_groups[0]["lr"])
        control.after_step(0.01)
    peak_step = round(20 * WARMUP_SHARE)
    assert rates[peak_step] == pytest.approx(cosine_factor(peak_step / 20, 10**6, 1))  # the cosine's own value: warm-up over
    assert rates[0] < rates[1] < rates[peak_step] and max(rates) == rates[peak_step]
    # A long run keeps its 100-step warm-up.
    assert cosine_factor(49 / 100_000, 49, 100) == pytest.approx(0.5, abs=1e-3)


def test_the_bar_counts_steps_and_a_time_budget_estimates_their_total(capsys):
    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    control = TrainControl(net, optimizer, 1.0, steps=None, budget_seconds=10.0, progress_bar=True)
    control.open_bar()
    for _ in range(5):
        control.before_step()
        control.after_step(0.5)  # 5 steps took a quarter of the budget: 20 in all
    assert control.bar.format_dict["unit"] == "step" and control.bar.n == 5 and control.bar.total == 20
    control.close()
    shown = capsys.readouterr().err
    assert "5/20" in shown and "s/s" not in shown


@pytest.fixture(scope="module")
def init_weights_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    sharp = write_sharp_images(root / "sharp", n=10, height=72, width=80, first_seed=300)
    assert main(["train", "--sharp", str(sharp), "--out", str(root / "seed"), "--steps", "2", *TINY]) == 0
    return sharp, root / "seed" / "best.safetensors"


def test_fine_tuning_reports_the_starting_weights_score_and_what_it_changed(init_weights_file, tmp_path):
    sharp, init = init_weights_file
    run = tmp_path / "run"
    assert main(["train", "--sharp", str(sharp), "--init", str(init), "--steps", "4", "--val-every", "2", "--epochs", "1",
                 "--out", str(run), *TINY]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0  # the summary survives a resume
    log = (run / "train.log").read_text()
    start = re.search(r"input PSNR ([\d.]+) dB \(degraded ones\); starting weights ([\d.]+) dB", log)
    assert start, log
    first_epoch = next(line for line in log.splitlines() if line.startswith("epoch 1:"))
    assert f"(input {start[1]}, start {start[2]})" in first_epoch
    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    best_psnr = max(float(r["val_psnr"]) for r in rows if float(r["val_loss"]) == min(float(x["val_loss"]) for x in rows))
    summaries = [line for line in log.splitlines() if line.startswith(("fine-tuning changed the validation mix", "kept the starting"))]
    if best_psnr > float(start[2]):  # four steps may or may not help: either way the summary says which, with the numbers
        assert summaries[-1].startswith(f"fine-tuning changed the validation mix from {start[2]} to {best_psnr:.2f} dB"), summaries
    else:
        assert summaries[-1].startswith(f"kept the starting weights: {start[2]} dB vs {best_psnr:.2f}"), summaries
    assert len(rows) == 2 and len(summaries) == 2


def test_fine_tuning_that_does_not_beat_the_start_keeps_the_starting_weights(init_weights_file, tmp_path):
    from meddeblur.models import load_model

    sharp, init = init_weights_file
    run = tmp_path / "run"
    # A learning rate too small to move a float32 weight: the fine-tuned weights score exactly what they started from.
    assert main(["train", "--sharp", str(sharp), "--init", str(init), "--steps", "4", "--val-every", "2", "--epochs", "1",
                 "--lr", "1e-30", "--out", str(run), *TINY]) == 0
    log = (run / "train.log").read_text()
    start = re.search(r"starting weights ([\d.]+) dB", log)[1]
    assert re.search(rf"\nkept the starting weights: {start} dB vs {start} after fine-tuning on the validation mix", log), log
    assert "fine-tuning changed" not in log
    assert re.search(r"warning: only 2 training steps ran \(all inside the 100-step learning-rate warm-up\): .* a budget of about "
                     r"\d+ minutes gives 1000 steps", log), log
    kept, started = load_model(run / "best.safetensors")[0].state_dict(), load_model(init)[0].state_dict()
    assert kept.keys() == started.keys() and all(torch.equal(kept[k], started[k]) for k in kept)
    assert json.loads((run / "best.json").read_text())["epoch"] == 0


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(capsys):
    pytest.importorskip("fastapi", reason="meddeblur serve needs the [serve] extra")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no "ready" line before the failure
    assert err.strip().splitlines() == [f"meddeblur serve: error: --port {port}: 127.0.0.1:{port} is already in use by another "
                                        f"program; choose another port, e.g. --port {port + 1}, or stop that program"]


def _readme_command_lines() -> list[tuple[str, list[str]]]:
    text = (ROOT / "README.md").read_text() + "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    lines = []
    for block in re.findall(r"```bash\n(.+?)\n```", text, flags=re.S):
        for line in block.splitlines():
            found = re.search(r"(?:^|\s|/)meddeblur (train|evaluate|deblur|export|info|assess|synth|demo|serve)\b(.*)", line.split("#")[0])
            if found:
                lines.append((found[1], re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", found[2])))
    return lines


def test_every_flag_the_docs_use_is_a_flag_of_that_command():
    parser = build_parser()
    lines = _readme_command_lines()
    assert {command for command, _ in lines} >= {"train", "deblur", "serve"}
    for command, flags in lines:
        known = {flag for flag, _ in command_flags(parser, command).values()} | {"--help", "--no-amp", "--no-channels-last"}
        known |= {s for a in next(a for a in parser._actions if a.dest == "command").choices[command]._actions for s in a.option_strings}
        assert set(flags) <= known, f"meddeblur {command}: {sorted(set(flags) - known)} in the docs but not in its --help"


def test_help_says_sharp_works_alone_and_model_takes_onnx(capsys):
    for command in ("train", "deblur", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        if command == "train":
            assert "or alone" in text and "--sharp SHARP folder of sharp images" in text
        else:
            assert ".onnx" in text.rsplit("--model MODEL", 1)[1].split(" --", 1)[0]  # its own help, not the usage line


def test_the_demo_folder_is_ignored_by_git():
    assert "meddeblur-demo/" in (ROOT / ".gitignore").read_text().splitlines()


def test_a_run_on_pairs_ends_on_its_held_out_test_pairs_beside_the_starting_weights(init_weights_file, tmp_path):
    from synthetic_pairs import write_synthetic_pairs

    from meddeblur import Deblurrer
    from meddeblur.data.pairs import read_split
    from meddeblur.io.decode import read_rgb
    from meddeblur.metrics import psnr_ssim_numpy

    _, init = init_weights_file
    data = write_synthetic_pairs(tmp_path / "pairs", n=20, height=48, width=56, seed=7)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--init", str(init), "--steps", "2", "--out", str(run), *TINY]) == 0
    test = read_split(run / "split.json")["test"]
    assert len(test) == 2  # 10 % of 20

    def mean(model):
        scores = []
        for name in test:
            blurred, sharp = read_rgb(data / "blurred" / f"{name}.png"), read_rgb(data / "sharp" / f"{name}.png")
            scores.append(psnr_ssim_numpy(blurred if model is None else Deblurrer.load(model, device="cpu").deblur_rgb(blurred), sharp)[0])
        return sum(scores) / len(scores)

    line = (run / "train.log").read_text().splitlines()[-1]
    expected = (f"the 2 test pairs (never trained or validated on) went from {mean(None):.2f} to {mean(run / 'best.safetensors'):.2f} dB"
                f"; the starting weights ({init}) gave {mean(init):.2f} dB")
    assert line.startswith(expected), line
