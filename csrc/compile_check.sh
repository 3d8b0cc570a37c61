#!/usr/bin/env bash
# Builds fusedrnn's CUDA kernels through the CMake target users build (_C, with
# FUSEDRNN_ENABLE_CUDA=ON, in a temporary build directory; no GPU needed) and prints ptxas's
# per-kernel register / spill report, then reads the built module's SASS (csrc/sass_check.sh:
# per-kernel resource table, tensor-core instructions required). The architectures are
# CMakeLists.txt's FUSEDRNN_CUDA_ARCHS unless ARCHS is given. Fails on any compiler warning or
# error (the target's flags make warnings errors), on any register spill (unless
# FUSEDRNN_FAIL_ON_SPILL=0), and on a recurrence kernel without HMMA/HGMMA in its SASS.
# CI runs this script.
#
#   csrc/compile_check.sh              # CMakeLists.txt's architectures
#   ARCHS="80" csrc/compile_check.sh   # a subset
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NVCC="${NVCC:-nvcc}"
if ! command -v "$NVCC" > /dev/null 2>&1; then
  echo "compile_check: nvcc not found (set NVCC=/path/to/nvcc)" >&2
  exit 2
fi
"$NVCC" --version | tail -n 2

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
log="$out/build.log"
report="$out/ptxas.txt"
configure=(-S "$root" -B "$out/build" -DFUSEDRNN_ENABLE_CUDA=ON
  "-DCMAKE_CUDA_COMPILER=$(command -v "$NVCC")" "-DCMAKE_CUDA_FLAGS=-Xptxas=-v")
if [[ -n "${ARCHS:-}" ]]; then
  configure+=("-DFUSEDRNN_CUDA_ARCHS=${ARCHS// /;}")
fi
if command -v ninja > /dev/null 2>&1; then
  configure+=(-G Ninja)
fi
status=0
{
  cmake "${configure[@]}" && cmake --build "$out/build" --target _C --parallel "$(nproc)"
} > "$log" 2>&1 || status=1

# One line per kernel and architecture: demangled-ish name, registers, spills.
awk '
  /Compiling entry function/ {
    match($0, /recurrence_[a-z]+_kernelI[^E]*E/); name = substr($0, RSTART, RLENGTH)
    match($0, /sm_[0-9]+a?/); arch = substr($0, RSTART, RLENGTH)
  }
  /spill stores/ { spill = $0; sub(/^.*: +/, "", spill) }
  /Used [0-9]+ registers/ {
    if (name != "") {
      match($0, /Used [0-9]+ registers/)
      printf "  %-7s %-45s %s | %s\n", arch, name, substr($0, RSTART, RLENGTH), spill
    }
  }
' "$log" | sort -u | tee "$report"
for arch in $(grep -o "sm_[0-9]*a\?" "$report" | sort -u); do echo "=== built for ${arch}"; done

if [[ $status -ne 0 ]] || grep -qiE "(error|warning)[: ]" "$log"; then
  cat "$log"
  status=1
fi
if [[ "${FUSEDRNN_FAIL_ON_SPILL:-1}" == "1" ]] && grep -E "[1-9][0-9]* bytes spill" "$report" > /dev/null; then
  echo "compile_check: register spills found" >&2
  status=1
fi
if [[ $status -eq 0 ]]; then
  module="$(find "$out/build" -name "_C*.so" | head -n 1)"
  sass_archs="$(grep -o "sm_[0-9]*a\?" "$report" | sort -u | tr '\n' ' ')"
  if [[ -z "$module" ]]; then
    echo "compile_check: the built _C module was not found" >&2
    status=1
  elif ! ARCHS="$sass_archs" bash "$root/csrc/sass_check.sh" "$module"; then
    status=1
  fi
fi
if [[ $status -ne 0 ]]; then
  echo "compile_check: FAILED" >&2
else
  echo "compile_check: OK"
fi
exit $status
