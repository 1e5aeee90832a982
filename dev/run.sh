#!/usr/bin/env bash
# Set up ./.venv and start the standalone app on http://127.0.0.1:7860 (arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup.sh app
exec .venv/bin/easyphoto ui "$@"
