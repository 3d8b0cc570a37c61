#!/usr/bin/env bash
# Sets everything up and runs the main job: a short benchmark comparing fusedrnn's backends
# with torch.nn on the device at hand (CUDA if present, else the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo
echo "demo: python -m bench --quick $* (tiny shapes, 10-30 s; writes a CSV and plots, default bench/out/)"
exec "${PYTHON:-python3}" -m bench --quick "$@"
