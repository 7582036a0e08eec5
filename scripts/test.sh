#!/usr/bin/env bash
# Installs the package with its test dependencies, checks lint and formatting (ruff, pinned in the dev extra) and
# runs the fast test suite (README's test command). Any ruff finding or formatting drift fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[train,dev]"
# The fouroversix package's PyTorch reference is the oracle of the Four Over Six tests. Its sdist builds CUDA kernels
# unless told not to, and needs torch at build time: no CUDA build, no prebuilt-wheel download, no build isolation.
SKIP_CUDA_BUILD=1 FORCE_BUILD=1 python -m pip install -q --no-deps --no-build-isolation fouroversix==1.0.5
python -m ruff check .
python -m ruff format --check .
python -m pytest -q -p no:cacheprovider "$@"
