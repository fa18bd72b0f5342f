#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the bundled data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
for algo in centralized fedavg fedprox; do
  .venv/bin/securefed train --algorithm "$algo" --rounds 30 --out runs/quickstart "$@"
done
