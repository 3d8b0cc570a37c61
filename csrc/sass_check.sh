#!/usr/bin/env bash
# Reads the SASS of a built CUDA binary (fusedrnn._C, or any object / shared library) with
# cuobjdump and, for every recurrence kernel of each architecture, prints a resource table
# (registers, stack, static shared memory, local memory, tensor-core / FFMA instruction
# counts) and fails unless each kernel contains tensor-core instructions (HMMA from mma.sync,
# or HGMMA from wgmma on sm_90a), or the binary holds no code for an architecture; and fails
# unless the operand's TMA bulk copy (UBLKCP, from cp.async.bulk; tensor_core.cuh
# bulk_stage_operand_chunk) is in every sm_90+ recurrence kernel and in no sm_80 one.
# csrc/compile_check.sh runs it on the module it builds; no GPU needed.
#
#   csrc/sass_check.sh path/to/_C.so             # sm_80 and sm_90a
#   ARCHS="90a" csrc/sass_check.sh path/to/_C.so
#
# cuobjdump: $CUOBJDUMP, else the one on PATH, else the one triton bundles.
set -euo pipefail

binary="${1:?usage: sass_check.sh BINARY}"
archs="${ARCHS:-80 90a}"
CUOBJDUMP="${CUOBJDUMP:-$(command -v cuobjdump || true)}"
if [[ -z "$CUOBJDUMP" ]]; then
  triton_bin="$(python3 -c 'import os, triton; print(os.path.dirname(triton.__file__))' \
    2> /dev/null || true)/backends/nvidia/bin"
  CUOBJDUMP="${triton_bin}/cuobjdump"
fi
if [[ -z "$CUOBJDUMP" || ! -x "$CUOBJDUMP" ]]; then
  echo "sass_check: cuobjdump not found (set CUOBJDUMP=/path/to/cuobjdump)" >&2
  exit 2
fi

status=0
printf "  %-7s %-42s %5s %6s %7s %6s %6s %6s %6s %6s\n" \
  arch kernel REG STACK SHARED LOCAL HMMA HGMMA FFMA UBLKCP
for arch in $archs; do
  arch="${arch#sm_}"
  sass="$("$CUOBJDUMP" -sass -arch "sm_${arch}" "$binary" 2> /dev/null || true)"
  resources="$("$CUOBJDUMP" -res-usage -arch "sm_${arch}" "$binary" 2> /dev/null || true)"
  if ! grep -q "Function" <<< "$sass"; then
    echo "sass_check: no sm_${arch} code in ${binary}" >&2
    status=1
    continue
  fi
  table="$(
    awk -v arch="sm_${arch}" '
      FNR == 1 { file++ }
      # -res-usage: " Function NAME:" then "  REG:n STACK:n SHARED:n LOCAL:n ..."
      file == 1 && /^ *Function / { name = $2; sub(/:$/, "", name); next }
      file == 1 && /REG:/ {
        for (i = 1; i <= NF; i++) { split($i, kv, ":"); res[name, kv[1]] = kv[2] }
        next
      }
      # -sass: "Function : NAME" then one instruction per line
      file == 2 && /Function :/ { name = $NF; names[name] = 1; next }
      file == 2 && /HGMMA/ { hgmma[name]++; next }
      file == 2 && /HMMA/ { hmma[name]++; next }
      file == 2 && /FFMA/ { ffma[name]++; next }
      file == 2 && /UBLKCP/ { ublkcp[name]++; next }
      END {
        for (n in names) {
          if (n !~ /recurrence_[a-z]+_kernel/) continue
          short = n
          match(n, /recurrence_[a-z]+_kernelI[^E]*E/)
          if (RSTART > 0) short = substr(n, RSTART, RLENGTH)
          printf "  %-7s %-42s %5d %6d %7d %6d %6d %6d %6d %6d\n", arch, short, res[n, "REG"],
                 res[n, "STACK"], res[n, "SHARED"], res[n, "LOCAL"], hmma[n], hgmma[n], ffma[n],
                 ublkcp[n]
        }
      }
    ' <(printf "%s\n" "$resources") <(printf "%s\n" "$sass") | sort
  )"
  if [[ -z "$table" ]]; then
    echo "sass_check: no recurrence kernels in the sm_${arch} code of ${binary}" >&2
    status=1
    continue
  fi
  printf "%s\n" "$table"
  # Columns: 7 = HMMA, 8 = HGMMA, 10 = UBLKCP.
  while read -r _ kernel _ _ _ _ hmma hgmma _ ublkcp; do
    if [[ $((hmma + hgmma)) -eq 0 ]]; then
      echo "sass_check: sm_${arch} ${kernel} has no tensor-core instruction (HMMA/HGMMA)" >&2
      status=1
    fi
    # sm_90 stages the operand by TMA bulk copies; sm_80 keeps cp.async.
    if [[ "${arch%a}" -ge 90 && "$ublkcp" -eq 0 ]]; then
      echo "sass_check: sm_${arch} ${kernel} has no TMA bulk copy (UBLKCP)" >&2
      status=1
    elif [[ "${arch%a}" -lt 90 && "$ublkcp" -ne 0 ]]; then
      echo "sass_check: sm_${arch} ${kernel} has a TMA bulk copy (UBLKCP) below sm_90" >&2
      status=1
    fi
  done <<< "$table"
done
if [[ $status -ne 0 ]]; then
  echo "sass_check: FAILED" >&2
else
  echo "sass_check: OK (every recurrence kernel uses tensor cores; TMA bulk copies on sm_90+)"
fi
exit $status
