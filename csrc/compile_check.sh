#!/usr/bin/env bash
# Compiles fusedrnn's CUDA kernels for sm_80 and sm_90a (no GPU needed) and prints ptxas's
# per-kernel register / spill report. Fails on any compiler warning or error, and (with
# FUSEDRNN_FAIL_ON_SPILL=1) on any register spill. CI runs this script.
#
#   csrc/compile_check.sh              # both architectures
#   ARCHS="80" csrc/compile_check.sh   # a subset
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NVCC="${NVCC:-nvcc}"
ARCHS="${ARCHS:-80 90a}"
if ! command -v "$NVCC" > /dev/null 2>&1; then
  echo "compile_check: nvcc not found (set NVCC=/path/to/nvcc)" >&2
  exit 2
fi
"$NVCC" --version | tail -n 2

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
report="$out/ptxas.txt"
pids=()
for arch in $ARCHS; do
  for src in common recurrence_fwd recurrence_bwd; do
    (
      "$NVCC" -std=c++17 -O3 -lineinfo -I "$here/include" -I "$here" \
        -gencode "arch=compute_${arch},code=sm_${arch}" \
        --Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror -Xptxas -v \
        -c "$here/cuda/${src}.cu" -o "$out/${src}_${arch}.o" > "$out/${src}_${arch}.log" 2>&1
    ) &
    pids+=("$!")
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done

for arch in $ARCHS; do
  for src in common recurrence_fwd recurrence_bwd; do
    log="$out/${src}_${arch}.log"
    echo "=== sm_${arch} ${src}.cu"
    # One line per kernel: demangled-ish name, registers, spills.
    awk '
      /Compiling entry function/ { match($0, /recurrence_[a-z]+_kernelI[^E]*E/); name = substr($0, RSTART, RLENGTH) }
      /spill stores/ { spill = $0; sub(/^ +/, "", spill) }
      /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); printf "  %-45s %s | %s\n", name, substr($0, RSTART, RLENGTH), spill }
    ' "$log" | tee -a "$report"
    if grep -qiE "error|warning" "$log"; then
      cat "$log"
      status=1
    fi
  done
done

if [[ "${FUSEDRNN_FAIL_ON_SPILL:-0}" == "1" ]] && grep -E "[1-9][0-9]* bytes spill" "$report" > /dev/null; then
  echo "compile_check: register spills found" >&2
  status=1
fi
if [[ $status -ne 0 ]]; then
  echo "compile_check: FAILED" >&2
else
  echo "compile_check: OK"
fi
exit $status
