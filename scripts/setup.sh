#!/usr/bin/env bash
# Set up (or refresh) .venv: the pinned CPU torch first, so nothing can pull a CUDA build, then meddeblur.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__} installed; meddeblur pins 2.13.0"
print(f"meddeblur environment ready in .venv (torch {torch.__version__})")
PY
