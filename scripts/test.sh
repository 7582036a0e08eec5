#!/usr/bin/env bash
# Installs the package with its test dependencies, checks lint and formatting (ruff, pinned in the dev extra) and
# runs the fast test suite (README's test command). Any ruff finding or formatting drift fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[train,dev]"
python -m ruff check .
python -m ruff format --check .
python -m pytest -q -p no:cacheprovider "$@"
