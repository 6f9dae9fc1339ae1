#!/usr/bin/env bash
# Set up a fresh clone and run the test suite: the README's second command, and what CI runs.
# CPU torch first, so that the project's `torch>=2.5` range installs nothing bigger; NATTEN is
# built against it without build isolation (no compiled library without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q --no-build-isolation "natten>=0.21"
python -m pip install -q -e ".[dev]"
# two workers, each file on one (its module-scoped fits run once); tests/conftest.py gives each
# worker half the cores. On 2 cores: ops, journeys, compile and DDP files 5.5 min -> 2.8 min.
ruff check src tests experiments scripts
ruff format --check src tests experiments scripts
python -m pytest -n 2 --dist loadfile "$@"
