#!/usr/bin/env bash
# Create ./.venv-host: a Python environment with the Stable Diffusion WebUI 1.10's pins
# (tests/hostpins/host-pins.txt), in which tests/hostpins checks that EasyPhoto's extension code
# imports and that install.py leaves those pins alone.
# Idempotent: when the environment already matches, it returns at once without calling pip.
# Usage: bash dev/host_env.sh      (EASYPHOTO_HOST_VENV picks another folder)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${EASYPHOTO_HOST_VENV:-.venv-host}"
PINS=tests/hostpins/host-pins.txt
# The WebUI runs torch 2.1.2 with CUDA (several GB); the only CPU build reachable here is
# torch==2.13.0 (a local wheel). Set EASYPHOTO_TORCH to choose another build.
TORCH="${EASYPHOTO_TORCH:-torch==2.13.0}"

# Exit 0 when every pin (and torch, pytest) is installed at its version; prints what differs.
matches() {
    "$VENV/bin/python" - "$PINS" <<'PY'
import importlib.metadata as md
import re
import sys

wanted = {"torch": None, "pytest": None}
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if line:
        name, _, version = line.partition("==")
        wanted[name.strip()] = version.strip() or None
wrong = []
for name, version in wanted.items():
    try:
        found = md.version(name)
    except md.PackageNotFoundError:
        wrong.append(f"{name} missing")
        continue
    if version and re.sub(r"\+.*", "", found) != version:
        wrong.append(f"{name} {found} (want {version})")
if wrong:
    print("[host-env] to install: " + ", ".join(wrong))
sys.exit(1 if wrong else 0)
PY
}

if [ ! -x "$VENV/bin/python" ]; then
    echo "[host-env] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if matches; then
    echo "[host-env] $VENV already has the WebUI pins ($PINS)"
    exit 0
fi
# torch first and pinned: with no torch present, a plain `torch` requirement of another package
# would pull the newest CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet $TORCH
fi
# ...and kept: nothing below may replace it.
"$VENV/bin/python" -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" \
    > "$VENV/torch-constraint.txt"
"$VENV/bin/python" -m pip install --quiet -r "$PINS" -c "$VENV/torch-constraint.txt" pytest
matches
echo "[host-env] $VENV ready"
