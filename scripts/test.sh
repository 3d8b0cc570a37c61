#!/usr/bin/env bash
# Sets everything up and runs the whole test suite (gpu tests skip, with the reason, where
# there is no CUDA device; the Triton kernels run under TRITON_INTERPRET=1 on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest -q "$@"
