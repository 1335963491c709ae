"""The user documents: figures rendered from the committed results (and a stale one caught), no dead links, no
internal references, a short README, a licence matching pyproject.toml."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from benchmarks.report import crops_figure, figures, model_card

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "MODEL_CARD.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_figure_in_readme_docs_and_card_is_what_the_results_give(capsys):
    assert model_card.main(["--check"]) == 0, capsys.readouterr().err
    blocks = [m for path in model_card.documents() for m in figures.BLOCK.finditer(path.read_text())]
    assert len(blocks) >= 15 and all(m[3].strip() for m in blocks)  # every block rendered, none left empty


def test_a_changed_result_makes_the_readme_and_docs_stale(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "results"
    fake.mkdir()
    for path in model_card.RESULTS.iterdir():
        (fake / path.name).write_bytes(path.read_bytes())
    flops = json.loads((fake / "flops.json").read_text())
    shipped = next(r for r in flops["rows"] if r["config"] == flops["paired"]["shipped_config"])
    shipped["1024x768"]["median_s"] += 0.5  # a new speed measurement: README, benchmarks page and card must all follow
    (fake / "flops.json").write_text(json.dumps(flops))
    monkeypatch.setattr(model_card, "RESULTS", fake)
    assert model_card.main(["--check"]) == 1
    stale = capsys.readouterr().err
    assert all(name in stale for name in ("README.md", "docs/benchmarks.md", "MODEL_CARD.md")), stale


def test_an_unknown_figure_block_is_an_error_not_a_silent_skip(tmp_path):
    try:
        figures.render("<!-- figures:qualty-full --><!-- /figures -->", ROOT / "benchmarks" / "results", tmp_path / "x.md")
    except SystemExit as error:
        assert "unknown figure block 'qualty-full'" in str(error)
    else:
        raise AssertionError("an unknown block was accepted")


def test_the_readme_is_short_and_no_document_speaks_of_how_the_work_was_organised():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    internal = re.compile(r"\b(issue|session)s? #?\d+|\bissue's\b|\bthe [a-z-]+ issue\b|\bstage \d+ of the work\b", re.I)
    found = {path.name: internal.findall(path.read_text()) for path in DOCUMENTS}
    assert {name: hits for name, hits in found.items() if hits} == {}


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_in_the_documents_resolves():
    dead = []
    for path in DOCUMENTS:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = path.parent / file if file else path
            if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
                dead.append(f"{path.relative_to(ROOT)}: {target}")
    assert dead == []


def test_the_readme_figure_is_real_isic_crops_small_enough_to_ship():
    readme = (ROOT / "README.md").read_text()
    figure = ROOT / "docs" / "figures" / "isic_crops.png"
    assert "](docs/figures/isic_crops.png)" in readme and figure.stat().st_size <= 600_000
    ids = [i for i, _ in crops_figure.ISIC_ROWS]
    test_split = json.loads((ROOT / "benchmarks" / "isic_split.json").read_text())["test"]
    assert all(i in readme and i in test_split for i in ids) and "CC0" in readme  # named, licensed, never trained on


def test_the_licence_file_is_the_one_pyproject_names():
    licence = (ROOT / "LICENSE").read_text()
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    assert licence.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in licence
    assert "CC0" in (ROOT / "NOTICE").read_text()
