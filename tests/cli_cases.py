"""What the CLI error tests share: which parametrised cases a session selected, and the one-line error rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["selected_cases", "one_line_error", "temp_leftovers"]


def selected_cases(request: pytest.FixtureRequest, names: object) -> list[str]:
    """The ``name`` parameters, among ``names``, of the tests of the requesting module that this session selected, each once."""
    wanted = [item.callspec.params["name"] for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec") and "name" in item.callspec.params]
    return list(dict.fromkeys(n for n in wanted if n in names))


def one_line_error(rc: object, stdout: str, stderr: str) -> tuple[str, str]:
    """(the error line, a report for failures) of a command that must fail as a user error: exit 2, one line, no traceback."""
    report = f"rc={rc}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    assert "Traceback" not in stderr, report
    assert rc == 2, report
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"want exactly one stderr line\n{report}"
    assert lines[0].startswith("meddeblur"), report
    return lines[0], report


def temp_leftovers(root: Path) -> list[str]:
    """Temporary files (ours or a library's) anywhere under ``root``: a failed command must leave none."""
    return [os.path.join(folder, name) for folder, dirs, files in os.walk(root) for name in dirs + files
            if ".tmp-" in name or name.endswith(".tmp") or (name.startswith(".") and "tmp" in name)]
