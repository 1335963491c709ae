"""Typed user errors (their classes, values and HTTP statuses), light installs (extras, lazy CLI imports)
and the documented defaults (evaluate --model)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from synthetic_pairs import write_synthetic_pairs

from meddeblur import cli
from meddeblur.cli import parser
from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.errors import (
    CorruptImage,
    EmptyFile,
    InvalidOption,
    MissingExtra,
    NotFound,
    TooLarge,
    TooSmall,
    UnsupportedFormat,
    UserError,
)
from meddeblur.io.decode import read_image
from meddeblur.io.encode import write_image

#: Modules of the extras; a core install has none of them.
EXTRA_MODULES = ("fastapi", "uvicorn", "starlette", "fastapi_offline", "multipart", "python_multipart", "onnx", "onnxruntime",
                 "onnxscript", "pydicom", "matplotlib", "skimage")


def _png(path: Path, size: tuple[int, int] = (40, 48)) -> Path:
    write_image(path, synthetic_dermoscopy(*size, seed=3))
    return path


# --------------------------------------------------------------------------- typed errors


def test_read_errors_have_their_class_and_carry_the_path(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(NotFound) as error:
        read_image(missing)
    assert error.value.value == missing
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFile) as error:
        read_image(empty)
    assert error.value.value == empty and isinstance(error.value, CorruptImage)
    gif = tmp_path / "a.png"
    gif.write_bytes(b"GIF89a" + bytes(64))
    with pytest.raises(UnsupportedFormat):
        read_image(gif)
    cut = tmp_path / "cut.png"
    cut.write_bytes(_png(tmp_path / "whole.png").read_bytes()[:200])
    with pytest.raises(CorruptImage):
        read_image(cut)
    small = _png(tmp_path / "small.png", (20, 20))
    with pytest.raises(TooSmall):
        read_image(small, min_size=32)
    with pytest.raises(TooLarge) as error:
        read_image(small, max_pixels=100)
    assert error.value.value == small


def test_missing_model_is_not_found_and_bad_options_are_invalid_option(tmp_path):
    from meddeblur import Deblurrer

    with pytest.raises(NotFound):
        Deblurrer.load(tmp_path / "none.safetensors", device="cpu")
    with pytest.raises(InvalidOption) as error:
        Deblurrer.load(engine="tensorrt")
    assert error.value.value == "tensorrt" and error.value.option == "engine" and isinstance(error.value, ValueError)


def test_server_statuses_come_from_classes_not_words():
    from meddeblur.server.imaging import status_for

    # Each message holds words that once chose another status: only the class counts.
    assert status_for(EmptyFile("x: not supported")) == 400
    assert status_for(TooLarge("x: not a readable image")) == 413
    assert status_for(UnsupportedFormat("x: truncated")) == 415
    assert status_for(MissingExtra("x: empty file")) == 415
    assert status_for(CorruptImage("x: does not read; this tool decodes")) == 422
    assert status_for(TooSmall("x")) == 422
    assert status_for(UserError("x: not supported")) == 422


def test_cli_prints_a_typed_error_as_one_line_with_exit_2(tmp_path, capsys):
    assert cli.main(["deblur", str(tmp_path / "nothing.png"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file or folder" in err and "Traceback" not in err


# --------------------------------------------------------------------------- extras


def test_parser_constants_equal_the_library_ones():
    from meddeblur.evaluation.assess import ANALYSIS_SIDE, DEFAULT_THRESHOLD
    from meddeblur.models import ARCHITECTURES
    from meddeblur.training.recipes import RECIPES

    assert parser.ARCHITECTURES == ARCHITECTURES
    assert parser._RECIPE == {name: RECIPES["default"][name] for name in parser._RECIPE}
    assert (parser._ASSESS_SIDE, parser._ASSESS_THRESHOLD) == (ANALYSIS_SIDE, DEFAULT_THRESHOLD)


def test_train_help_states_the_recipes_values():
    """The --lr / --w-* / --crop help is written as literals (the parser must not import torch): keep it equal to RECIPES."""
    from meddeblur.training.recipes import RECIPES

    train = parser.build_parser()._subparsers._group_actions[0].choices["train"]
    helps = {action.option_strings[0]: action.help for action in train._actions if action.option_strings}
    default, reference = RECIPES["default"], RECIPES["reference"]
    fine = default["fine_tune"]
    number = r"([0-9.e-]+)"
    lr = re.search(rf"default recipe {number} AdamW, {number} with --init; reference {number} Adam", helps["--lr"])
    assert lr and tuple(map(float, lr.groups())) == (default["lr"], fine["lr"], reference["lr"])
    for flag, term in (("--w-ssim", "ssim"), ("--w-l1", "l1")):
        found = re.search(rf"default recipe {number}, {number} with --init; reference {number}", helps[flag])
        assert found and tuple(map(float, found.groups())) == tuple(getattr(r["loss"], term) for r in (default, fine, reference))
    crop = re.search(rf"default recipe: {number}, {number} with --init", helps["--crop"])
    assert crop and tuple(map(int, crop.groups())) == (default["crop"], fine["crop"])


def test_help_and_version_import_nothing_heavy():
    code = textwrap.dedent("""
        import sys
        from meddeblur.cli import main
        for argv in (["--help"], ["--version"], ["deblur", "--help"], ["train", "--help"]):
            try:
                main(argv)
            except SystemExit as stop:
                assert stop.code == 0, (argv, stop.code)
        print(sorted(m for m in ("torch", "numpy", "cv2", "PIL", "scipy", *%r) if m in sys.modules))
    """ % (EXTRA_MODULES,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]"


def test_a_core_only_install_deblurs_a_png(tmp_path):
    """Every extra's module made unimportable (as in `pip install meddeblur` without extras): deblur still works, on
    the command line and from Python, and none of them was even tried."""
    source = _png(tmp_path / "in.png")
    code = textwrap.dedent(f"""
        import sys
        tried = []
        class Absent:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {EXTRA_MODULES!r}:
                    tried.append(name)
                    raise ImportError("not installed: " + name)
        sys.meta_path.insert(0, Absent())
        from meddeblur.cli import main
        assert main(["deblur", {str(source)!r}, "-o", {str(tmp_path / "out")!r}, "--device", "cpu"]) == 0
        import meddeblur
        image = meddeblur.read_image({str(source)!r})
        assert meddeblur.Deblurrer.load(device="cpu")(image.rgb).shape == image.rgb.shape
        print(tried)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    assert read_image(tmp_path / "out" / "in.png").rgb.shape == (40, 48, 3)


@pytest.fixture
def without(monkeypatch):
    """without(module, *fresh): make ``module`` unimportable and drop the ``fresh`` meddeblur modules so that they import again."""

    def hide(module: str, *fresh: str) -> None:
        monkeypatch.setitem(sys.modules, module, None)
        for name in [n for n in sys.modules if n.startswith(fresh)] if fresh else []:
            parent, _, child = name.rpartition(".")
            if parent in sys.modules:  # re-importing rebinds the parent's attribute: put the original back afterwards too
                monkeypatch.setattr(sys.modules[parent], child, sys.modules[name], raising=False)
            monkeypatch.delitem(sys.modules, name)

    return hide


@pytest.mark.parametrize("argv, module, fresh, extra", [
    (["serve"], "fastapi", ("meddeblur.server",), "serve"),
    (["export", "--onnx", "{tmp}/m.onnx"], "onnxscript", (), "onnx"),
    (["info", "{tmp}/m.onnx"], "onnxruntime", (), "onnx"),
    (["demo", "-o", "{tmp}/demo"], "matplotlib", ("meddeblur.plots", "meddeblur.demo"), "plots"),
    (["evaluate", "--data", "{tmp}/data", "--split", "all"], "matplotlib", ("meddeblur.plots", "meddeblur.evaluation.evaluate"), "plots"),
])
def test_a_command_without_its_extra_names_it_in_one_line(tmp_path, capsys, without, argv, module, fresh, extra):
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    without(module, *fresh)
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pip install 'meddeblur[{extra}]'" in err and module in err


def test_a_dicom_input_without_pydicom_names_the_dicom_extra(tmp_path, without):
    dicom = tmp_path / "scan.dcm"
    dicom.write_bytes(bytes(128) + b"DICM" + bytes(64))
    without("pydicom")
    with pytest.raises(MissingExtra) as error:
        read_image(dicom)
    assert error.value.extra == "dicom" and "pip install 'meddeblur[dicom]'" in str(error.value)


def test_pyproject_core_is_light_torch_stays_pinned_and_test_pulls_every_extra():
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core, extras = project["dependencies"], project["optional-dependencies"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[<>=\[; ]", r, maxsplit=1)[0].lower() for r in requirements}

    assert "torch>=2.2,<=2.13.0" in core
    assert not names(core) & {"fastapi", "uvicorn", "onnx", "onnxruntime", "onnxscript", "pydicom", "matplotlib", "scikit-image"}
    assert all("torch" not in names(group) for group in extras.values())
    assert extras["all"] == ["meddeblur[serve,onnx,dicom,plots,classical,monai]"]
    assert "meddeblur[all]" in extras["test"]
    assert set(extras) >= {"serve", "onnx", "dicom", "plots", "classical", "all", "test"}


# --------------------------------------------------------------------------- evaluate --model default


def test_evaluate_defaults_to_the_shipped_model(tmp_path, capsys):
    from meddeblur.models import DEFAULT_WEIGHTS

    write_synthetic_pairs(tmp_path / "data", n=2, height=32, width=32)
    assert cli.main(["evaluate", "--data", str(tmp_path / "data"), "--split", "all", "--native", "--out", str(tmp_path / "report"),
                     "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["model"] == str(DEFAULT_WEIGHTS) and report["images"] == 2
    evaluate = parser.build_parser()._subparsers._group_actions[0].choices["evaluate"]
    assert "default: the shipped model" in " ".join(evaluate.format_help().split())


def test_training_needs_no_extra_only_its_curves_figure_does(tmp_path, without):
    from synthetic_pairs import write_sharp_images

    sharp = write_sharp_images(tmp_path / "sharp", n=6, height=72, width=80, first_seed=300)
    without("matplotlib", "meddeblur.plots", "meddeblur.training")  # the training modules import afresh without it
    run = tmp_path / "run"
    assert cli.main(["train", "--sharp", str(sharp), "--out", str(run), "--width", "4", "--crop", "32", "--batch", "2", "--steps", "2",
                     "--val-every", "1", "--device", "cpu", "--threads", "1"]) == 0
    assert (run / "history.csv").is_file() and (run / "best.safetensors").is_file() and not (run / "curves.png").exists()
