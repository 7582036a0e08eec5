#!/usr/bin/env bash
# Installs the package with its test dependencies and runs the fast test suite (README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[train,dev]"
python -m pytest -q -p no:cacheprovider "$@"
