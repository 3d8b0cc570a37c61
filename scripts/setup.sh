#!/usr/bin/env bash
# Sets up everything fusedrnn needs, on a fresh CPU machine or on a GPU machine that already
# has torch (and no network): installs only what is missing, then fusedrnn itself (editable,
# building the native extension fusedrnn._C with CMake when a compiler is there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

has() { "$PY" -c "import $1" >/dev/null 2>&1; }
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# torch: never replace an existing install (a GPU machine keeps its CUDA build). On a CPU
# machine the pinned CPU build lies on local disk; a plain "pip install torch" would pull a
# multi-GB CUDA build instead.
if ! has torch; then
  echo "setup: installing torch==2.13.0 (CPU build)"
  pip_install torch==2.13.0
fi
if ! has triton; then
  echo "setup: installing triton==3.8.0"
  pip_install triton==3.8.0 || echo "setup: triton unavailable; the triton backend will say why"
fi

missing=()
for spec in numpy:numpy pybind11:pybind11 ninja:ninja cmake:cmake pytest:pytest \
            pytest_benchmark:pytest-benchmark hypothesis:hypothesis matplotlib:matplotlib; do
  module=${spec%%:*}; package=${spec##*:}
  has "$module" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  pip_install "${missing[@]}"
fi

# --no-build-isolation: build with the torch/pybind11/cmake installed above (GPU machines
# have no network for an isolated build environment).
echo "setup: installing fusedrnn (editable)"
pip_install --no-build-isolation --no-deps -e .
"$PY" -c "import fusedrnn; print('setup: fusedrnn', fusedrnn.__version__, 'backends:', fusedrnn.available_backends())"
