#!/usr/bin/env bash
# Set up (idempotent) and run the test suite: the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# The suite under tests/ plus the worked numbers in docstrings (doctests).
.venv/bin/python -m pytest -q --doctest-modules tests securefed attacks defenses evaluation \
  --ignore=securefed/__main__.py --ignore=securefed/data/__main__.py "$@"
