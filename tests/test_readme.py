"""Every Python example in the README runs as written, and every image it writes carries meddeblur's provenance."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meddeblur.cli import main
from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.io.formats import IMAGE_EXTENSIONS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _photo(path: Path, seed: int) -> None:
    Image.fromarray(np.round(synthetic_dermoscopy(72, 96, seed=seed) * 255).astype(np.uint8)).save(path, quality=92)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """The files the examples name: photo.jpg and a folder photos/ of JPEGs (generated dermoscopy-like images)."""
    _photo(tmp_path / "photo.jpg", seed=1)
    (tmp_path / "photos").mkdir()
    for seed in (2, 3):
        _photo(tmp_path / "photos" / f"lesion{seed}.jpg", seed=seed)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _images(root: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}


def test_the_readme_has_python_examples_that_write_images():
    assert len(EXAMPLES) >= 3
    assert any("deblurrer.write(" in code for code in EXAMPLES)
    assert any("write_image(" in code and "provenance=deblurrer.provenance" in code for code in EXAMPLES)
    # No example writes an image without its label.
    assert not [line for code in EXAMPLES for line in code.splitlines() if "write_image(" in line and "provenance=" not in line]


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")  # MONAI looks for NVIDIA's DICOM codec when pydicom is installed
@pytest.mark.parametrize("number", range(len(EXAMPLES)))
def test_readme_example_runs_and_what_it_writes_carries_provenance(number, workspace, capsys):
    before = _images(workspace)
    exec(compile(EXAMPLES[number], f"README.md python example {number + 1}", "exec"), {"__name__": "__readme__"})
    written = sorted(p for p, stamp in _images(workspace).items() if before.get(p) != stamp)
    inputs = {workspace / "photo.jpg", *(workspace / "photos").iterdir()}
    assert not set(written) & inputs  # the examples never write over their inputs
    if "write" not in EXAMPLES[number]:
        assert written == []
        return
    assert written, "the example says it writes, but no image appeared"
    capsys.readouterr()
    assert main(["info", *map(str, written)]) == 0  # exit code 1 if any of them had no provenance
    report = capsys.readouterr().out
    assert report.count("not for diagnosis alone") >= len(written), report
