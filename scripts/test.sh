#!/usr/bin/env bash
# Set up (idempotent) and run the test suite: the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# The suite under tests/, the worked numbers in docstrings (doctests), and each
# pytest-benchmark benchmark run once as a test (time them with --benchmark-only).
.venv/bin/python -m pytest -q --doctest-modules tests securefed attacks defenses evaluation \
  benchmarks/test_benchmarks.py --benchmark-disable \
  --ignore=securefed/__main__.py --ignore=securefed/data/__main__.py "$@"
