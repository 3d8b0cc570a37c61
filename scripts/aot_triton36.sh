#!/usr/bin/env bash
# The Triton kernels compiled ahead of time (tests/test_triton_aot.py, sm_80 and sm_90a) with
# triton 3.6, the oldest triton the kernels support and the one on the lent GPU machine; the
# main suite compiles with the installed triton (3.8). The 3.6 wheel goes to a folder of its
# own (--target, no dependencies), so the environment's triton is untouched; that folder is
# reused when FUSEDRNN_TRITON36_DIR names it. Extra arguments go to pytest: every case by
# default (FUSEDRNN_AOT_ALL=1; ~10 min on 2 idle cores, uncached); CI passes -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
dir=${FUSEDRNN_TRITON36_DIR:-$(mktemp -d)}
if ! PYTHONPATH="$dir" "$PY" -c "import triton, sys; sys.exit(triton.__version__ != '3.6.0')" 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$dir" triton==3.6.0
fi
PYTHONPATH="$dir" "$PY" -c "import triton; assert triton.__version__ == '3.6.0', triton.__version__; print('triton', triton.__version__, 'from', triton.__file__)"
# Every case unless the arguments deselect some (CI: -m "not slow").
export FUSEDRNN_AOT_ALL=${FUSEDRNN_AOT_ALL:-1}
PYTHONPATH="$dir:$PWD" exec "$PY" -m pytest -q -p no:cacheprovider tests/test_triton_aot.py "$@"
