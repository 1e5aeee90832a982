#!/usr/bin/env bash
# Create ./.venv (if missing) and install EasyPhoto into it with the given extras.
# Usage: bash dev/setup.sh [EXTRAS]   e.g. bash dev/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned: an unpinned `torch` requirement would pull a multi-GB CUDA build here.
# Set EASYPHOTO_TORCH (e.g. "torch==2.13.0 --index-url ...") to choose another build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet ${EASYPHOTO_TORCH:-torch==2.13.0}
fi
if [ -n "$extras" ]; then
    .venv/bin/python -m pip install --quiet -e ".[$extras]"
else
    .venv/bin/python -m pip install --quiet -e .
fi
