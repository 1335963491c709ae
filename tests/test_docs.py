"""The user documents: figures rendered from the committed results (and a stale one caught), no dead links, no
internal references, a short README, a licence matching pyproject.toml."""

from __future__ import annotations

import contextlib
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


def _near(quoted: float, measured: float) -> bool:
    """A quoted speed figure holds when the result file reproduces it within 20 %."""
    return abs(quoted - measured) <= 0.2 * abs(measured)


def test_the_hand_written_speed_figures_of_folder_runs_are_those_of_the_benchmark_they_cite(capsys):
    """deblur --workers' help and docs/archive.md quote benchmarks/results/archive.md (python -m benchmarks.archive):
    each figure names its row there and is what the current file holds, within 20 %."""
    from meddeblur.cli import main

    result = json.loads((ROOT / "benchmarks" / "results" / "archive.json").read_text())
    rows = result["rows"]
    one, two = rows["local, 1 worker"], rows["local, 2 workers"]

    with contextlib.suppress(SystemExit):
        main(["deblur", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    said = re.search(
        r"--workers N .*?ran ([\d.]+)x its images/s, their ([\d.]+) s start-up included, "
        r"benchmarks/results/archive\.md rows 'local, 1 worker' and 'local, 2 workers'\)",
        text,
    )
    assert said, text
    assert _near(float(said[1]), two["images_per_s"] / one["images_per_s"]) and _near(float(said[2]), two["startup_s"])

    doc = (ROOT / "docs" / "archive.md").read_text()
    section = doc[doc.index("## Several processes on one machine") : doc.index("## In Python")]
    table = re.findall(
        r"^\| [^|]*\(`([^`]+)`[^|]*\| ([\d.]+)(?: \(([\d.]+) after start-up\))? \| ([\d.]+) s", section, flags=re.M
    )
    assert {name for name, *_ in table} == {"local, 1 worker", "local, 1 worker, 1 thread", "local, 2 workers", "Ray, 2 actors"}
    for name, rate, after, startup in table:
        assert _near(float(rate), rows[name]["images_per_s"]), name
        assert after == "" or _near(float(after), rows[name]["images_per_s_after_startup"]), name
        noise = float(startup) <= 0.1 and rows[name]["startup_s"] <= 0.15  # both under a sixth of a second: not a figure
        assert noise or _near(float(startup), rows[name]["startup_s"]), name
    prose = " ".join(section.split())
    times = re.search(
        r"Two single-thread workers were ([\d.]+) times as fast as one process with two threads, their start-up "
        r"included \(([\d.]+) times after it\)",
        prose,
    )
    assert times and _near(float(times[1]), two["images_per_s"] / one["images_per_s"])
    assert _near(float(times[2]), two["images_per_s_after_startup"] / one["images_per_s_after_startup"])
    rerun = re.search(r"A rerun over the finished folder .*? took ([\d.]+) s, ([\d.]+) % of the first run", prose)
    assert (
        rerun
        and _near(float(rerun[1]), result["rerun"]["wall_s"])
        and _near(float(rerun[2]), 100 * result["rerun"]["share_of_first_run"])
    )
    ray = re.search(
        r"Ray took more wall time than the local run with as many workers, \+(\d+) % and \+(\d+) % with start-up, "
        r"\+(\d+) % and \+(\d+) % after it",
        prose,
    )
    assert ray, prose
    for quoted, (local, actors, key) in zip(
        map(float, ray.groups()),
        [
            ("local, 1 worker", "Ray, 1 actor", "wall_s"),
            ("local, 2 workers", "Ray, 2 actors", "wall_s"),
            ("local, 1 worker", "Ray, 1 actor", "after_startup_s"),
            ("local, 2 workers", "Ray, 2 actors", "after_startup_s"),
        ],
    ):
        assert _near(quoted, 100 * (rows[actors][key] / rows[local][key] - 1)), (quoted, actors, key)


def test_the_dicom_nodes_speed_table_is_the_benchmark_it_cites():
    """docs/pacs.md's table quotes benchmarks/results/pacs.md (python -m benchmarks.pacs), row by row, within 20 %."""
    rows = {row["run"]: row for row in json.loads((ROOT / "benchmarks" / "results" / "pacs.json").read_text())["rows"]}
    folder = rows["folder: meddeblur deblur (1 worker)"]
    doc = (ROOT / "docs" / "pacs.md").read_text()
    assert "[`pacs.md`](../benchmarks/results/pacs.md)" in doc
    table = re.findall(r"^\| ([^|]+?) \| ([\d.]+) \| (\d+ %|—) \| (\d+) % \|$", doc, flags=re.M)
    assert len(table) == 3, table
    for (way, rate, network, share), name in zip(table, rows):
        assert way.startswith(name.split(" (")[0]) or (name.startswith("folder:") and "meddeblur deblur" in way), (way, name)
        row = rows[name]
        assert _near(float(rate), row["instances_per_s"]) and _near(
            float(share), 100 * row["instances_per_s"] / folder["instances_per_s"]
        )
        assert network == "—" if row["network_share"] is None else _near(float(network[:-2]), 100 * row["network_share"])
