#!/usr/bin/env bash
# The one GPU command (issue 5): build fusedrnn here, run the gpu parity tests and the
# benchmark suite, and write one report folder <out>/<UTC date>-<gpu slug>/ with bench.csv,
# PNG plots, parity.xml, logs/ and summary.md (bench/report.py).
#
#   bash bench/gpu_check.sh                        # -> bench/results/<date>-<gpu>/
#   bash bench/gpu_check.sh --out "$OUT"           # -> $OUT/<date>-<gpu>/ (a device run's $OUT)
#   bash bench/gpu_check.sh --deadline-s 570       # fit one 10-minute command: the tests and the
#                                                  # benchmark get what is left; unmeasured cases
#                                                  # are written as skipped with that reason
#   bash bench/gpu_check.sh --dry-run --skip-build # CPU machine: every step except the CUDA parts
#   bash bench/gpu_check.sh --dry-run --skip-build --skip-bench --no-skips --tests tests/test_x.py
#                                                  # (what tests/test_bench.py runs on a CPU)
#   bash bench/gpu_check.sh -- --workloads W1,W2   # arguments after -- go to python -m bench
#
# Options: --out DIR, --dry-run, --skip-build, --skip-tests, --skip-bench, --no-sweep,
#          --deadline-s N, --update-readme (also rewrite README.md's bench:latest block),
#          --tests PATHS (what pytest -m gpu runs, default tests), --no-skips (fail when any
#          gpu test is skipped; always on with a GPU, where a skip means a test did not run).
# With a GPU the build is FUSEDRNN_ENABLE_CUDA=ON: a missing nvcc fails the build instead of
# silently producing a host-only fusedrnn._C whose cuda tests would not run.
# Environment: PYTHON (default python), FUSEDRNN_CUDA_ARCHS (default: this GPU's arch),
#              FUSEDRNN_COMMIT (the commit to record when the tree has no .git).
# Needs no network: pip installs with --no-build-isolation --no-deps.
set -uo pipefail

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT_DIR" || exit 2
PY=${PYTHON:-python}

OUT_ROOT="bench/results"
DRY=0
SKIP_BUILD=0
SKIP_TESTS=0
SKIP_BENCH=0
SWEEP=1
DEADLINE=0
UPDATE_README=0
NO_SKIPS=0
TEST_PATHS=tests
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_ROOT=$2; shift 2 ;;
    --out=*) OUT_ROOT=${1#--out=}; shift ;;
    --dry-run) DRY=1; shift ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    --skip-tests) SKIP_TESTS=1; shift ;;
    --skip-bench) SKIP_BENCH=1; shift ;;
    --no-sweep) SWEEP=0; shift ;;
    --deadline-s) DEADLINE=$2; shift 2 ;;
    --deadline-s=*) DEADLINE=${1#--deadline-s=}; shift ;;
    --update-readme) UPDATE_README=1; shift ;;
    --no-skips) NO_SKIPS=1; shift ;;
    --tests) TEST_PATHS=$2; shift 2 ;;
    --tests=*) TEST_PATHS=${1#--tests=}; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
remaining() { echo $(( DEADLINE - $(elapsed) )); }

# ------------------------------------------------------------------ the device
if [ "$DRY" = 0 ]; then
  GPU_INFO=$("$PY" -c "
import torch
if not torch.cuda.is_available():
    raise SystemExit('no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU machine')
major, minor = torch.cuda.get_device_capability(0)
print(f'{major}{minor}')
print(torch.cuda.get_device_name(0))
") || { echo "gpu_check.sh: $GPU_INFO" >&2; exit 2; }
  CAP=$(echo "$GPU_INFO" | sed -n 1p)
  GPU_NAME=$(echo "$GPU_INFO" | sed -n 2p)
  case "$CAP" in 90) ARCH=90a ;; *) ARCH=$CAP ;; esac
  export FUSEDRNN_CUDA_ARCHS=${FUSEDRNN_CUDA_ARCHS:-$ARCH}
  export FUSEDRNN_ENABLE_CUDA=ON  # AUTO would build host-only without nvcc, and tests would skip
  NO_SKIPS=1
  BENCH_DEVICE=(--device cuda)
else
  GPU_NAME="cpu dry run"
  BENCH_DEVICE=(--device cpu --quick)
fi
SLUG=$(echo "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//')
DIR="$OUT_ROOT/$(date -u +%Y-%m-%d)-$SLUG"
[ -e "$DIR" ] && DIR="$DIR-$(date -u +%H%M%S)"
mkdir -p "$DIR/logs" || exit 2
STEPS="$DIR/logs/steps.tsv"
: > "$STEPS"
echo "gpu_check.sh: $GPU_NAME -> $DIR"

FAILED=0
run_step() {  # run_step NAME LOG CMD...: log output, record rc and seconds
  local name=$1 log=$2 t0 rc
  shift 2
  t0=$(date +%s)
  echo "== $name: $(printf '%s ' "$@" | head -n 1 | cut -c 1-200)"
  "$@" > "$DIR/$log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$log" >> "$STEPS"
  echo "   rc=$rc after $(( $(date +%s) - t0 )) s (log: $DIR/$log)"
  if [ "$rc" != 0 ]; then tail -n 15 "$DIR/$log" | sed 's/^/   | /'; fi
  return "$rc"
}

# ------------------------------------------------------------------ environment
if command -v nvidia-smi > /dev/null 2>&1; then
  nvidia-smi > "$DIR/logs/nvidia-smi.txt" 2>&1
fi
run_step environment logs/environment.txt "$PY" -c "
import platform, sys, torch
print('python', sys.version.replace(chr(10), ' '))
print('platform', platform.platform())
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
      torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
try:
    import triton; print('triton', triton.__version__)
except Exception as error:
    print('triton: not importable:', error)
print('cuda available', torch.cuda.is_available())
if torch.cuda.is_available():
    print('gpu', torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
" || FAILED=1

# ------------------------------------------------------------------ build
if [ "$SKIP_BUILD" = 0 ]; then
  echo "   FUSEDRNN_ENABLE_CUDA=${FUSEDRNN_ENABLE_CUDA:-<setup.py default>}" \
    "FUSEDRNN_CUDA_ARCHS=${FUSEDRNN_CUDA_ARCHS:-<setup.py default>}"
  run_step build logs/build.log "$PY" -m pip install --no-build-isolation --no-deps -v -e . \
    || FAILED=1
fi
run_step backends logs/backends.json "$PY" -c "
import json, fusedrnn
print(json.dumps(fusedrnn.available_backends(), indent=2))
" || FAILED=1
cat "$DIR/logs/backends.json"

# ------------------------------------------------------------------ parity tests
if [ "$SKIP_TESTS" = 0 ]; then
  read -r -a TEST_PATH_ARGS <<< "$TEST_PATHS"
  TEST_CMD=("$PY" -m pytest -m gpu "${TEST_PATH_ARGS[@]}" -p no:cacheprovider -q -rs
            --junitxml="$DIR/parity.xml")
  if [ "$DEADLINE" -gt 0 ]; then
    TEST_LIMIT=$(( $(remaining) * 45 / 100 ))
    [ "$TEST_LIMIT" -lt 10 ] && TEST_LIMIT=10  # (timeout 0 would mean no limit)
    TEST_CMD=(timeout "$TEST_LIMIT" "${TEST_CMD[@]}")
  fi
  # rc 5 (no gpu test collected) fails too: the check would have tested nothing.
  run_step pytest-gpu logs/pytest_gpu.log "${TEST_CMD[@]}" || FAILED=1
  if [ "$NO_SKIPS" = 1 ]; then
    # A skipped gpu test on a GPU (no cuda in fusedrnn._C, triton missing, ...) is a test that
    # did not run; list them from the JUnit file (xfails are expected failures, not skips).
    SKIPPED=$("$PY" - "$DIR/parity.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as error:
    print(f"cannot read the JUnit file: {error}")
    raise SystemExit(0)
for case in root.iter("testcase"):
    skipped = case.find("skipped")
    if skipped is not None and skipped.get("type") != "pytest.xfail":
        print(f"{case.get('classname')}::{case.get('name')}: {skipped.get('message')}")
EOF
)
    if [ -n "$SKIPPED" ]; then
      echo "gpu_check.sh: $(echo "$SKIPPED" | wc -l) gpu test(s) skipped; every gpu test must run:"
      echo "$SKIPPED" | head -n 20 | sed 's/^/   | /'
      printf '%s\t%s\t%s\t%s\n' no-skipped-gpu-tests 1 0 logs/pytest_gpu.log >> "$STEPS"
      FAILED=1
    fi
  fi
fi

# ------------------------------------------------------------------ benchmarks
if [ "$SKIP_BENCH" = 0 ]; then
  BENCH_CMD=("$PY" -m bench --out "$DIR" --fresh "${BENCH_DEVICE[@]}")
  [ "$SWEEP" = 1 ] && BENCH_CMD+=(--sweep)
  if [ "$DEADLINE" -gt 0 ]; then
    BUDGET=$(( $(remaining) - 60 ))
    [ "$BUDGET" -lt 30 ] && BUDGET=30
    BENCH_CMD+=(--budget-s "$BUDGET")
  fi
  run_step bench logs/bench.log "${BENCH_CMD[@]}" "${EXTRA[@]}" || FAILED=1
  sed -n '/^fusedrnn bench on/,$p' "$DIR/logs/bench.log"
fi

# ------------------------------------------------------------------ report
"$PY" - "$STEPS" "$DIR/gpu_check.json" "$GPU_NAME" "$DRY" <<'EOF'
import json, sys
steps_file, out, gpu, dry = sys.argv[1:5]
steps = []
for line in open(steps_file):
    name, rc, seconds, log = line.rstrip("\n").split("\t")
    steps.append({"name": name, "rc": int(rc), "seconds": int(seconds), "log": log})
json.dump({"gpu": gpu, "dry_run": dry == "1", "steps": steps}, open(out, "w"), indent=2)
EOF
REPORT_CMD=("$PY" bench/report.py "$DIR")
[ "$UPDATE_README" = 1 ] && REPORT_CMD+=(--readme README.md)
if [ "$SKIP_BENCH" = 0 ]; then
  "${REPORT_CMD[@]}" || FAILED=1
else
  echo "gpu_check.sh: --skip-bench: no bench.csv, so no summary.md (see parity.xml and logs/)"
fi

echo
echo "gpu_check.sh: report folder $DIR ($(elapsed) s)"
ls -1 "$DIR"
if [ "$FAILED" != 0 ]; then
  echo "gpu_check.sh: some step failed (see the steps table in $DIR/summary.md)" >&2
  exit 1
fi
exit 0
