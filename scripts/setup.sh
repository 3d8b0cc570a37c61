#!/usr/bin/env bash
# Sets up everything fusedrnn needs, on a fresh CPU machine or on a GPU machine that already
# has torch (and no network): installs only what is missing, builds the native extension
# fusedrnn._C with CMake + Ninja (with the CUDA kernels when nvcc is found), then installs
# fusedrnn itself (editable). A second run skips what is already done: the build is
# incremental (a persistent CMake folder under build/, see setup.py) and the editable install
# is skipped when this interpreter already has it for this checkout (about 5 s in all).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STARTED=$SECONDS

step() { echo; echo "setup [$1] $2 ($(date +%T))"; }
# pip's own progress bar stays on (no -q): a torch wheel is several hundred MB.
pip_install() { "$PY" -m pip install --disable-pip-version-check "$@"; }

step 1/4 "Python packages: installing only what is missing"
# One interpreter start finds every missing module (importlib's find_spec: nothing imported).
missing_modules() {
  "$PY" - "$@" <<'EOF'
import importlib.util, sys
print(" ".join(spec for spec in sys.argv[1:] if importlib.util.find_spec(spec.split(":")[0]) is None))
EOF
}
# torch: never replace an existing install (a GPU machine keeps its CUDA build). On a CPU
# machine the pinned CPU build lies on local disk; a plain "pip install torch" would pull a
# multi-GB CUDA build instead.
if [ -n "$(missing_modules torch)" ]; then
  echo "  installing torch==2.13.0 (CPU build; a minute or more)"
  pip_install torch==2.13.0
fi
if [ -n "$(missing_modules triton)" ]; then
  echo "  installing triton==3.8.0"
  pip_install triton==3.8.0 || echo "  triton unavailable; the triton backend will say why"
fi
missing=()
for spec in $(missing_modules numpy:numpy pybind11:pybind11 ninja:ninja cmake:cmake \
              pytest:pytest pytest_benchmark:pytest-benchmark hypothesis:hypothesis \
              expecttest:expecttest matplotlib:matplotlib wheel:wheel); do
  missing+=("${spec##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "  installing ${missing[*]}"
  pip_install "${missing[@]}"
else
  echo "  all present (torch, triton, numpy, pybind11, ninja, cmake, pytest, pytest-benchmark,"
  echo "  hypothesis, expecttest, matplotlib, wheel)"
fi

step 2/4 "native extension fusedrnn._C (CMake + Ninja; Ninja prints [done/total] per file)"
if command -v nvcc >/dev/null 2>&1 && [ "${FUSEDRNN_ENABLE_CUDA:-AUTO}" != "OFF" ]; then
  echo "  nvcc found: host backend + CUDA kernels (${FUSEDRNN_CUDA_ARCHS:-80;90a}). A full build"
  echo "  usually takes 3-5 minutes on 2 busy cores (nvcc); an up-to-date one a second."
else
  echo "  no nvcc (or FUSEDRNN_ENABLE_CUDA=OFF): host backend only. A full build usually takes"
  echo "  15-70 s on 2 cores; an up-to-date one a second."
fi
if [ "${FUSEDRNN_SKIP_NATIVE:-0}" = "1" ]; then
  echo "  FUSEDRNN_SKIP_NATIVE=1: skipped"
else
  # --inplace: the module lands in fusedrnn/, where the editable install finds it.
  # -W ignore: setuptools' deprecation notices about pyproject.toml are not this build's news.
  "$PY" -W ignore setup.py -q build_ext --inplace
fi

step 3/4 "editable install of fusedrnn"
installed_here() {
  # True when this interpreter has fusedrnn installed editable from this checkout.
  "$PY" - "$PWD" <<'EOF'
import json, sys
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse
try:
    text = metadata.distribution("fusedrnn").read_text("direct_url.json") or "{}"
except metadata.PackageNotFoundError:
    sys.exit(1)
info = json.loads(text)
editable = info.get("dir_info", {}).get("editable", False)
where = Path(unquote(urlparse(info.get("url", "")).path)).resolve()
if not editable or where != Path(sys.argv[1]).resolve():
    sys.exit(1)
# Project metadata edited since the install: install again.
try:
    installed_at = Path(str(metadata.distribution("fusedrnn")._path)).stat().st_mtime
except (AttributeError, OSError):
    sys.exit(1)
for name in ("pyproject.toml", "setup.py"):
    if (Path(sys.argv[1]) / name).stat().st_mtime > installed_at:
        sys.exit(1)
EOF
}
if installed_here; then
  echo "  already installed (editable) from $PWD: skipped"
else
  echo "  pip install -e . (metadata only, the extension was built in step 2; a few seconds)"
  # --no-build-isolation: use the packages above (GPU machines have no network).
  FUSEDRNN_SKIP_NATIVE=1 pip_install -q --no-build-isolation --no-deps -e .
fi

step 4/4 "check: import fusedrnn (from outside the checkout, as an installed package)"
(cd "${TMPDIR:-/tmp}" && "$PY" -c "import fusedrnn; print('  fusedrnn', fusedrnn.__version__, 'from', fusedrnn.__file__); \
print('  backends:', fusedrnn.available_backends())")
echo
echo "setup: done in $((SECONDS - STARTED)) s"
