"""A run's recipe proves its finished outputs done without loading the model; anything it cannot prove is compared by
the record itself, and weights replaced under the same name are never taken for the same model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from meddeblur.runs.plan import plan_run
from meddeblur.runs.archive import deblur_archive
from meddeblur.runs.workers import ModelSpec
from meddeblur.io.ownership import read_provenance
from meddeblur.restore import registry


def _folder(root: Path, count: int = 3) -> Path:
    folder = root / "in"
    folder.mkdir(parents=True)
    for index in range(count):
        image = np.random.default_rng(index).integers(0, 256, (40, 48, 3)).astype(np.uint8)
        assert cv2.imwrite(str(folder / f"{index}.png"), image)
    return folder


def test_every_loaded_spec_carries_its_recipe_and_the_recipe_names_everything_the_record_depends_on(tiny_weights: Path) -> None:
    psf = "gauss:sigma=1.2"
    specs = [ModelSpec(str(tiny_weights), device="cpu"), ModelSpec(str(tiny_weights), device="cpu", tile=512, overlap=64),
             ModelSpec(None, device="cpu"), ModelSpec(None, device="cpu", method=registry.ESTIMATED)]
    specs += [ModelSpec(None, device="cpu", psf=psf, method=name) for name in registry.names(registry.Told.PSF)]
    specs += [ModelSpec(None, device="cpu", psf="gauss:sigma=1.3", method="wiener")]
    records = {}
    for spec in specs:
        loaded = spec.load()
        assert loaded.provenance["recipe"] == spec.recipe(), spec
        records[spec.recipe()] = {k: v for k, v in loaded.provenance.items() if k != "recipe"}
    assert len(records) == len(specs)  # each spec its own recipe
    assert len({repr(record) for record in records.values()}) == len(specs)  # and its own record: none is left out
    again = ModelSpec(str(tiny_weights), device="auto", psf=psf, method="wiener")  # the device shapes no pixel
    assert again.recipe() == ModelSpec(str(tiny_weights), device="cpu", psf=psf, method="wiener").recipe()


def test_what_cannot_be_digested_before_loading_has_no_recipe(tmp_path: Path, tiny_weights: Path) -> None:
    from meddeblur.psf.kernel import load_psf

    assert ModelSpec(str(tiny_weights), psf=load_psf("gauss:sigma=1")).recipe() is None  # a PSF object
    assert ModelSpec(str(tiny_weights), engine="onnx").recipe() is None  # exported on the fly: its bytes are not known yet
    assert ModelSpec(str(tmp_path / "missing.safetensors")).recipe() is None  # loading says what is wrong
    kernel = np.ones((3, 3)) / 9
    assert ModelSpec(str(tiny_weights), psf=kernel).recipe() != ModelSpec(str(tiny_weights), psf=kernel * 0.5).recipe()


def test_a_rerun_proven_by_its_recipe_loads_no_model_and_imports_no_torch(tmp_path: Path, tiny_weights: Path) -> None:
    folder, out = _folder(tmp_path), tmp_path / "out"
    deblur_archive([folder], out, ModelSpec(str(tiny_weights), device="cpu"), progress=False)
    script = ("import sys; from meddeblur.runs.archive import deblur_archive; from meddeblur.runs.workers import ModelSpec; "
              f"report = deblur_archive([{str(folder)!r}], {str(out)!r}, ModelSpec({str(tiny_weights)!r}), progress=False, "
              f"log={str(tmp_path / 'run.jsonl')!r}); "
              "print(len(report.with_status('skipped')), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "False"]
    assert '"model_id"' in (tmp_path / "run.jsonl").read_text()  # the log still names the model, read from the outputs


def test_weights_replaced_under_the_same_name_are_another_model(tmp_path: Path, tiny_weights: Path) -> None:
    import torch

    from meddeblur.models import ModelConfig, build_model, save_weights

    weights = tmp_path / "model" / "w.safetensors"
    weights.parent.mkdir()
    shutil.copy(tiny_weights, weights)
    folder, out = _folder(tmp_path), tmp_path / "out"
    assert len(deblur_archive([folder], out, ModelSpec(str(weights), device="cpu"), progress=False).written) == 3
    torch.manual_seed(1)
    save_weights(build_model(ModelConfig(width=4)), ModelConfig(width=4), weights)
    report = deblur_archive([folder], out, ModelSpec(str(weights), device="cpu"), progress=False)
    assert len(report.written) == 3
    assert read_provenance(out / "0.png")["recipe"] == ModelSpec(str(weights)).recipe()


def test_plan_compares_records_only_where_the_recipe_proves_nothing(tmp_path: Path, tiny_weights: Path) -> None:
    folder, out = _folder(tmp_path, 2), tmp_path / "out"
    spec = ModelSpec(str(tiny_weights), device="cpu")
    deblur_archive([folder], out, spec, progress=False)
    record = spec.load().provenance

    def must_not_load() -> dict:
        raise AssertionError("the recipe proved every output: no record needed")

    assert plan_run([folder], out, must_not_load, recipe=spec.recipe()).tasks == []
    calls = []

    def made() -> dict:
        calls.append(1)
        return record

    plan = plan_run([folder], out, made, recipe="another recipe")  # e.g. a PSF spelt another way: compare the records
    assert plan.tasks == [] and calls == [1]  # made once, not once per output
    other = {**record, "parameters": {**record["parameters"], "tile": 0}}
    assert len(plan_run([folder], out, lambda: other, recipe="another recipe").tasks) == 2
    assert len(plan_run([folder], tmp_path / "fresh", must_not_load).tasks) == 2  # no output yet: nothing to compare
