"""Every error a user can cause, through the CLI: exit code 2 and one line, never a traceback.

Checked for each case: exit code 2, exactly one non-empty stderr line that names the
offending file or option, no traceback, no leftover temporary files, and nothing
half-written (outputs that must not exist do not, inputs are byte-identical).

Each case is a setup function registered with ``@case``. Cases marked ``own_process``
run the real command, ``python -m meddeblur ...``, in a subprocess; as starting Python
and importing torch costs about 1.5 s per process, these run concurrently in a module
fixture. The other cases call :func:`meddeblur.cli.main` in-process, with warnings
turned into errors so that nothing extra would reach stderr either.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from cli_cases import one_line_error, selected_cases, temp_leftovers

from meddeblur.cli import main
from meddeblur.data.pairs import split_names
from meddeblur.io.encode import write_image

# Fast training options, for the cases that get as far as loading images.
TINY_TRAIN = ("--recipe", "reference", "--width", "4", "--size", "16", "--epochs", "1", "--batch", "8")


@dataclass
class Case:
    """One CLI invocation that must fail as a user error."""

    args: list
    expect: tuple[str, ...]  # substrings the single stderr line must contain
    env: dict[str, str] = field(default_factory=dict)  # environment variables to set
    absent: tuple[Path, ...] = ()  # outputs that must not have been created
    unchanged: tuple[Path, ...] = ()  # files and folders that must be byte-identical afterwards


@dataclass
class Ctx:
    """What a case setup function gets: its own empty folder and shared read-only material."""

    root: Path
    weights: Path  # tiny width-4 weights (with their .json)
    template: Path  # 5 synthetic 32×32 pairs in blurred/ and sharp/

    def data(self, name: str = "data") -> Path:
        """A private copy of the synthetic data set."""
        return Path(shutil.copytree(self.template, self.root / name))


CASES: dict[str, Callable[[Ctx], Case]] = {}
OWN_PROCESS: set[str] = set()
XFAIL: dict[str, str] = {}


def case(fn: Callable[[Ctx], Case] | None = None, *, own_process: bool = False, xfail: str | None = None):
    """Register ``case_NAME`` as case NAME; ``xfail`` documents a known product bug."""

    def register(fn: Callable[[Ctx], Case]) -> Callable[[Ctx], Case]:
        name = fn.__name__.removeprefix("case_")
        CASES[name] = fn
        if own_process:
            OWN_PROCESS.add(name)
        if xfail:
            XFAIL[name] = xfail
        return fn

    return register(fn) if fn is not None else register


def _png(path: Path, size: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 256, size=(*size, 3)) / 255.0
    return write_image(path, rgb.astype(np.float32))


def _first_train_name(data: Path) -> str:
    """A pair that ``train`` (seed 42) puts in the train split, so it is loaded in epoch 1."""
    names = sorted(p.stem for p in (data / "blurred").iterdir())
    return split_names(names, seed=42)["train"][0]


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _fake_run(run: Path, data: Path) -> Path:
    """A run folder's run.json as ``train`` writes it (all the --resume option checks read)."""
    from meddeblur.training.options import TrainOptions

    options = TrainOptions(blurred_dir=str(data / "blurred"), sharp_dir=str(data / "sharp"), out=str(run), width=4, size=16)
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"version": "0.1.0", "options": asdict(options)}))
    return run


def _weights_with(path: Path, tensors: dict, config) -> Path:
    """A .safetensors file with ``tensors`` and ``config`` (dict, or raw string) as meddeblur metadata."""
    import torch
    from safetensors.torch import save_file

    meta = {"meddeblur_config": config if isinstance(config, str) else json.dumps(config)}
    save_file({k: torch.as_tensor(v).contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return path


# --------------------------------------------------------------------------- train


@case(own_process=True)
def case_train_missing_data(c: Ctx) -> Case:
    missing = c.root / "no-such-data"
    return Case(["train", "--data", missing, "--out", c.root / "run"], (str(missing), "--data"), absent=(c.root / "run",))


@case
def case_train_empty_folders(c: Ctx) -> Case:
    for sub in ("blurred", "sharp"):
        (c.root / "data" / sub).mkdir(parents=True)
    return Case(["train", "--data", c.root / "data", "--out", c.root / "run"], (str(c.root / "data" / "blurred"), "no images"),
                absent=(c.root / "run",))


@case
def case_train_unmatched_names(c: Ctx) -> Case:
    data = c.root / "data"
    for name in ("a", "b", "both"):
        _png(data / "blurred" / f"{name}.png")
    for name in ("a", "c", "both"):
        _png(data / "sharp" / f"{name}.png")
    return Case(["train", "--data", data, "--out", c.root / "run"], ("b.png", "c.png", "rename or remove"),
                absent=(c.root / "run",), unchanged=(data,))


@case
def case_train_ambiguous_names(c: Ctx) -> Case:
    data = c.root / "data"
    _png(data / "blurred" / "a_blur.png")
    _png(data / "blurred" / "a_blurred.png")
    _png(data / "sharp" / "a.png")
    return Case(["train", "--data", data, "--out", c.root / "run"], ("ambiguous", "a_blur.png", "a_blurred.png"),
                absent=(c.root / "run",))


@case
def case_train_size_not_multiple_of_16(c: Ctx) -> Case:
    return Case(["train", "--data", c.data(), "--out", c.root / "run", "--size", "20"], ("--size 20", "multiple of 16"),
                absent=(c.root / "run",))


@case
def case_train_negative_lr(c: Ctx) -> Case:
    return Case(["train", "--data", c.data(), "--out", c.root / "run", "--lr", "-1", *TINY_TRAIN], ("--lr -1",),
                absent=(c.root / "run",))


@case
def case_train_nan_lr(c: Ctx) -> Case:
    return Case(["train", "--data", c.data(), "--out", c.root / "run", "--lr", "nan", *TINY_TRAIN], ("--lr nan",),
                absent=(c.root / "run",))


@case
def case_train_negative_seed(c: Ctx) -> Case:
    return Case(["train", "--data", c.data(), "--out", c.root / "run", "--seed", "-1", *TINY_TRAIN], ("--seed -1",),
                absent=(c.root / "run",))


@case
def case_train_negative_loss_weight(c: Ctx) -> Case:
    return Case(["train", "--data", c.data(), "--out", c.root / "run", "--w-ssim", "-0.5", *TINY_TRAIN], ("--w-ssim -0.5",),
                absent=(c.root / "run",))


@case
def case_train_text_file_named_png(c: Ctx) -> Case:
    data = c.data()
    bad = data / "blurred" / f"{_first_train_name(data)}.png"
    bad.write_text("these are notes, not an image\n")
    return Case(["train", "--data", data, "--out", c.root / "run", *TINY_TRAIN], (str(bad),), unchanged=(data,))


@case(own_process=True)
def case_train_truncated_png(c: Ctx) -> Case:
    data = c.data()
    bad = _truncate(data / "sharp" / f"{_first_train_name(data)}.png")
    return Case(["train", "--data", data, "--out", c.root / "run", *TINY_TRAIN], (str(bad), "truncated"), unchanged=(data,))


@case
def case_train_image_too_small(c: Ctx) -> Case:
    data = c.data()
    name = _first_train_name(data)
    for sub in ("blurred", "sharp"):
        _png(data / sub / f"{name}.png", size=(8, 8))
    bad = data / "blurred" / f"{name}.png"
    return Case(["train", "--data", data, "--out", c.root / "run", *TINY_TRAIN], (str(bad), "8x8", "16 px"))


@case
def case_train_out_is_a_file(c: Ctx) -> Case:
    out = c.root / "taken.txt"
    out.write_text("not a run folder\n")
    return Case(["train", "--data", c.data(), "--out", out, *TINY_TRAIN], (str(out), "--out"), unchanged=(out,))


@case
def case_train_vgg19_weights_missing(c: Ctx) -> Case:
    missing = c.root / "vgg19.pth"
    return Case(["train", "--data", c.data(), "--out", c.root / "run", "--vgg19-weights", missing, *TINY_TRAIN],
                ("--vgg19-weights", str(missing)), absent=(c.root / "run",))


@case(own_process=True)
def case_train_perceptual_without_weights(c: Ctx) -> Case:
    torch_home = c.root / "torch-home"
    torch_home.mkdir()
    return Case(["train", "--data", c.data(), "--out", c.root / "run", "--perceptual", *TINY_TRAIN],
                (str(torch_home), "--vgg19-weights"), env={"TORCH_HOME": str(torch_home)}, absent=(c.root / "run",))


@case
def case_train_resume_not_a_run(c: Ctx) -> Case:
    folder = c.root / "just-a-folder"
    folder.mkdir()
    return Case(["train", "--resume", folder], (str(folder), "--resume"), unchanged=(folder,))


@case(own_process=True)
def case_train_resume_changed_option(c: Ctx) -> Case:
    run = _fake_run(c.root / "run", c.data())
    return Case(["train", "--resume", run, "--lr", "0.01"], (str(run), "--lr"), unchanged=(run,))


# --------------------------------------------------------------------------- evaluate


@case
def case_evaluate_model_missing(c: Ctx) -> Case:
    missing = c.root / "missing.safetensors"
    return Case(["evaluate", "--model", missing, "--data", c.data(), "--split", "all"], (str(missing),))


@case(own_process=True)
def case_evaluate_model_not_safetensors(c: Ctx) -> Case:
    model = c.root / "x.safetensors"
    model.write_text("hello, I am a text file\n")
    return Case(["evaluate", "--model", model, "--data", c.data(), "--split", "all", "--out", c.root / "report"],
                (str(model),), absent=(c.root / "report",), unchanged=(model,))


@case
def case_evaluate_random_tensors(c: Ctx) -> Case:
    model = _weights_with(c.root / "random.safetensors", {"layer.weight": np.random.rand(3, 3).astype(np.float32)},
                          {"arch": "attention-unet", "width": 4})
    return Case(["evaluate", "--model", model, "--data", c.data(), "--split", "all", "--out", c.root / "report"],
                (str(model), "width 4"), absent=(c.root / "report",))


@case(own_process=True)
def case_evaluate_weights_of_wrong_shape(c: Ctx) -> Case:
    from meddeblur.models import ModelConfig, build_model

    state = build_model(ModelConfig(width=8)).state_dict()  # labelled width 4 below
    model = _weights_with(c.root / "wide.safetensors", state, {"arch": "attention-unet", "width": 4})
    return Case(["evaluate", "--model", model, "--data", c.data(), "--split", "all", "--out", c.root / "report"],
                (str(model), "size mismatch"), absent=(c.root / "report",))




@case
def case_evaluate_config_not_a_dict(c: Ctx) -> Case:
    model = _weights_with(c.root / "list.safetensors", {"w": np.zeros(3, np.float32)}, "[1, 2]")
    return Case(["evaluate", "--model", model, "--data", c.data(), "--split", "all"], (str(model),))


@case
def case_evaluate_config_width_zero(c: Ctx) -> Case:
    model = _weights_with(c.root / "zero.safetensors", {"w": np.zeros(3, np.float32)}, {"arch": "attention-unet", "width": 0})
    return Case(["evaluate", "--model", model, "--data", c.data(), "--split", "all"], (str(model),))


@case
def case_evaluate_size_too_small(c: Ctx) -> Case:
    return Case(["evaluate", "--model", c.weights, "--data", c.data(), "--split", "all", "--size", "-5",
                 "--out", c.root / "report"], ("--size -5",), absent=(c.root / "report",))


@case
def case_evaluate_split_test_without_run(c: Ctx) -> Case:
    model = Path(shutil.copy(c.weights, c.root / "plain.safetensors"))
    return Case(["evaluate", "--model", model, "--data", c.data(), "--out", c.root / "report"],
                (str(model), "split.json", "--split all"), absent=(c.root / "report",))


@case
def case_evaluate_no_data_without_run(c: Ctx) -> Case:
    model = Path(shutil.copy(c.weights, c.root / "plain.safetensors"))
    return Case(["evaluate", "--model", model, "--split", "all"], (str(model), "--sharp DIR"))


# --------------------------------------------------------------------------- deblur


@case
def case_deblur_input_missing(c: Ctx) -> Case:
    missing = c.root / "missing.png"
    return Case(["deblur", missing, "-o", c.root / "out", "--model", c.weights], (str(missing),), absent=(c.root / "out",))


@case
def case_deblur_output_is_a_file(c: Ctx) -> Case:
    image, out = _png(c.root / "in" / "a.png"), c.root / "out.png"
    out.write_bytes(b"precious")
    return Case(["deblur", image, "-o", out, "--model", c.weights], (str(out), "-o"), unchanged=(out, image))


@case(own_process=True)
def case_deblur_output_is_input_folder(c: Ctx) -> Case:
    folder = c.root / "in"
    _png(folder / "a.png", seed=1)
    _png(folder / "b.png", seed=2)
    return Case(["deblur", folder, "-o", folder, "--model", c.weights], (str(folder / "a.png"), "overwrite an input"),
                unchanged=(folder,))


@case
def case_deblur_output_is_input_folder_by_another_path(c: Ctx) -> Case:
    image = _png(c.root / "in" / "a.png")
    return Case(["deblur", image, "-o", c.root / "in" / ".." / "in", "--model", c.weights], (str(image), "overwrite an input"),
                unchanged=(c.root / "in",))


@case(own_process=True)
def case_deblur_corrupt_input(c: Ctx) -> Case:
    folder = c.root / "in"
    _png(folder / "a.png", seed=1)
    bad = _truncate(_png(folder / "b.png", seed=2))
    _png(folder / "c.png", seed=3)
    # Each input is decoded once, in order: the run stops at the bad one, says --skip-bad goes on past it, and leaves
    # the outputs finished before it whole (a rerun skips them); nothing after it is written.
    return Case(["deblur", folder, "-o", c.root / "out", "--model", c.weights], (str(bad), "truncated", "--skip-bad"),
                absent=(c.root / "out" / "b.png", c.root / "out" / "c.png"), unchanged=(folder,))


@case
def case_deblur_text_file_as_input(c: Ctx) -> Case:
    notes = c.root / "notes.png"
    notes.write_text("not an image\n")
    return Case(["deblur", notes, "-o", c.root / "out", "--model", c.weights], (str(notes),), absent=(c.root / "out",))


@case(own_process=True)
def case_deblur_model_missing(c: Ctx) -> Case:
    image, missing = _png(c.root / "a.png"), c.root / "no-run"
    return Case(["deblur", image, "-o", c.root / "out", "--model", missing], (str(missing),), absent=(c.root / "out",))


@case
def case_deblur_jpeg_quality_out_of_range(c: Ctx) -> Case:
    image = _png(c.root / "a.png")
    return Case(["deblur", image, "-o", c.root / "out", "--model", c.weights, "--jpeg-quality", "0"], ("--jpeg-quality",),
                absent=(c.root / "out",))


@case
def case_demo_missing_model(c: Ctx) -> Case:
    return Case(["demo", "-o", c.root / "demo", "--model", c.root / "nope.safetensors"], ("nope.safetensors",), absent=(c.root / "demo",))


# --------------------------------------------------------------------------- usage


@case(own_process=True)
def case_usage_unknown_option(c: Ctx) -> Case:
    return Case(["deblur", c.root / "a.png", "-o", c.root / "out", "--model", c.weights, "--sharpen-more"], ("--sharpen-more",))


@case
def case_usage_bad_choice(c: Ctx) -> Case:
    return Case(["deblur", c.root / "a.png", "-o", c.root / "out", "--model", c.weights, "--format", "gif"], ("--format", "gif"))


@case(own_process=True)
def case_usage_no_command(c: Ctx) -> Case:
    return Case([], ("command", "--help"))


@case(own_process=True)
def case_usage_not_an_integer(c: Ctx) -> Case:
    return Case(["train", "--width", "four"], ("--width", "four"))


# --------------------------------------------------------------------------- running and checking


def _fingerprint(path: Path) -> dict[str, str]:
    """Relative name → SHA-256 of every file under ``path`` (or of ``path`` itself)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)) if p != path else p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _prepare(name: str, root: Path, weights: Path, template: Path) -> tuple[Case, dict]:
    spec = CASES[name](Ctx(root, weights, template))
    return spec, {p: _fingerprint(p) for p in spec.unchanged}


def _check(root: Path, spec: Case, before: dict, rc: object, stdout: str, stderr: str) -> None:
    line, report = one_line_error(rc, stdout, stderr)
    for needle in spec.expect:
        assert needle in line, f"{needle!r} not in the message\n{report}"
    assert not temp_leftovers(root), temp_leftovers(root)
    for path in spec.absent:
        assert not path.exists(), f"{path} was created by a failed command\n{report}"
    for path, fingerprint in before.items():
        assert _fingerprint(path) == fingerprint, f"{path} changed"


def _params(names) -> list:
    return [pytest.param(n, marks=pytest.mark.xfail(reason=XFAIL[n], strict=True)) if n in XFAIL else n for n in names]


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory, tiny_weights, template, run_cli) -> dict:
    """Set up and run, concurrently, the own-process cases this session selected."""
    prepared = {}
    for name in selected_cases(request, OWN_PROCESS):
        root = tmp_path_factory.mktemp(name)
        prepared[name] = (root, *_prepare(name, root, tiny_weights, template))

    def launch(name: str):
        root, spec, _ = prepared[name]
        return run_cli(*spec.args, cwd=root, env=spec.env)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(prepared, pool.map(launch, prepared)))
    return {name: (*prepared[name], results[name]) for name in prepared}


@pytest.mark.parametrize("name", _params(n for n in CASES if n in OWN_PROCESS))
def test_user_error_in_own_process(name: str, outcomes: dict) -> None:
    root, spec, before, proc = outcomes[name]
    _check(root, spec, before, proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("name", _params(n for n in CASES if n not in OWN_PROCESS))
def test_user_error(name: str, tmp_path: Path, tiny_weights: Path, template: Path, capfd, monkeypatch) -> None:
    spec, before = _prepare(name, tmp_path, tiny_weights, template)
    monkeypatch.chdir(tmp_path)
    for key, value in spec.env.items():
        monkeypatch.setenv(key, value)
    capfd.readouterr()
    try:
        rc = main([str(a) for a in spec.args])
    except SystemExit as exit_:  # argparse usage errors
        rc = exit_.code
    out, err = capfd.readouterr()
    _check(tmp_path, spec, before, rc, out, err)


def test_train_bad_image_leaves_no_run_folder(outcomes: dict) -> None:
    root, _, _, proc = outcomes["train_truncated_png"]
    assert proc.returncode == 2
    assert not (root / "run").exists(), sorted(p.name for p in (root / "run").iterdir())
