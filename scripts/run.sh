#!/usr/bin/env bash
# Set up (idempotent) and run the main job: the default audit on the bundled Pima hospitals.
# Extra arguments go to `securefed audit` (e.g. --quick, --config FILE.toml, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/securefed audit "$@"
