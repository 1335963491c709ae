"""The README's commands and CI stay the same commands."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_ci_runs_exactly_the_readme_test_command():
    ci_last_line = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_last_line in _readme_commands()
    assert "pytest" in ci_last_line


def test_setup_installs_pinned_cpu_torch_before_the_package():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert setup.index('"torch==2.13.0"') < setup.index('-e ".[test]"')
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "torchvision" not in pyproject and re.search(r'"torch[^"]*<=2\.13\.0"', pyproject)
