"""Reproduces docs/kernels-v2.md §6.1: why a resident (on-chip) W_hh at W2 spills in Triton.

No GPU needed (triton's compiler for ``GPUTarget("cuda", 90, 32)`` and the wheel's ptxas):

    TRITON_INTERPRET=0 PYTHONPATH=. python3 tests/triton_onchip_probe.py

Part 1 compiles a minimal persistent kernel with the W2 per-program shapes (W ``[K, N]`` loaded
before a time loop as ``K_TILES`` tiles, one ``tl.dot`` per tile and step against a float32
operand); part 2 compiles the real kernels forced to the resident W2 split (tests/triton_aot.py
with the launcher's geometry patched). For each: shared memory, registers, ptxas spills, and
the wgmma shared-memory descriptors defined before the time loop (hoisted by LICM).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.language as tl

_PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


@triton.jit
def resident_product_probe(
    w_ptr,
    h_ptr,
    out_ptr,
    steps,
    width,
    batch,
    ROWS: tl.constexpr,
    K: tl.constexpr,
    N: tl.constexpr,
    K_TILES: tl.constexpr,
    RUNTIME_STRIDE: tl.constexpr,
):
    """Per step ``out_s = h_s @ W`` with W (bf16) loaded once as K_TILES tiles; ``h_s``
    float32 rows of stride K (``RUNTIME_STRIDE``: stride ``width`` and rows masked by
    ``batch``, as in the real kernels)."""
    rows = tl.arange(0, ROWS)
    ns = tl.arange(0, N)
    K_CHUNK: tl.constexpr = K // K_TILES
    tiles = ()
    for c in tl.static_range(K_TILES):
        ks = c * K_CHUNK + tl.arange(0, K_CHUNK)
        tiles = tiles + (tl.load(w_ptr + ks[:, None] * N + ns[None, :]),)  # noqa: RUF005
    s = 0
    while s < steps:
        acc = tl.zeros((ROWS, N), tl.float32)
        for c in tl.static_range(K_TILES):
            ks = c * K_CHUNK + tl.arange(0, K_CHUNK)
            if RUNTIME_STRIDE:
                h = tl.load(
                    h_ptr + s * ROWS * width + rows[:, None] * width + ks[None, :],
                    mask=(rows < batch)[:, None],
                    other=0.0,
                    cache_modifier=".cg",
                )
            else:
                h = tl.load(
                    h_ptr + s * ROWS * K + rows[:, None] * K + ks[None, :], cache_modifier=".cg"
                )
            acc = tl.dot(h.to(tl.bfloat16), tiles[c], acc)
        tl.store(out_ptr + (s * ROWS + rows[:, None]) * N + ns[None, :], acc)
        s += 1


def hoisted_descriptors(ptx: str) -> tuple[int, int]:
    """(wgmma instructions, their 64-bit shared-memory descriptors defined before the loop)."""
    lines = ptx.splitlines()
    header = next(i for i, line in enumerate(lines) if "Loop Header" in line)
    operand = re.compile(r"wgmma\.mma_async\S*\s+\{[^}]*\},\s*(\{[^}]*\}|%rd\d+),\s*(%rd\d+)")
    descriptors, count = set(), 0
    for line in lines:
        match = operand.search(line)
        if match:
            count += 1
            descriptors.update(m for m in match.groups() if m.startswith("%rd"))
    defined = {}
    for i, line in enumerate(lines):
        match = re.match(r"\s*\S+\s+(%rd\d+),", line)
        if match and match.group(1) in descriptors:
            defined.setdefault(match.group(1), i)
    return count, sum(1 for i in defined.values() if i < header)


def ptxas_resources(ptx: str) -> tuple[int, int]:
    """(registers, spill store bytes) of ptxas -v for sm_90a."""
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.ptx")
        with open(source, "w") as f:
            f.write(ptx)
        out = subprocess.run(
            [_PTXAS, "-v", "--gpu-name=sm_90a", source, "-o", source + ".o"],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    registers = max(int(r) for r in re.findall(r"Used (\d+) registers", out))
    spills = sum(int(s) for s in re.findall(r"(\d+) bytes spill stores", out))
    return registers, spills


def probe_minimal(rows, k, n, k_tiles, num_warps, runtime_stride) -> dict:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {"w_ptr": "*bf16", "h_ptr": "*fp32", "out_ptr": "*fp32"}
    signature.update(steps="i32", width="i32", batch="i32")
    constants = dict(ROWS=rows, K=k, N=n, K_TILES=k_tiles, RUNTIME_STRIDE=runtime_stride)
    signature.update(dict.fromkeys(constants, "constexpr"))
    compiled = triton.compile(
        ASTSource(resident_product_probe, signature, constants),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": num_warps},
    )
    ptx = compiled.asm["ptx"]
    registers, spills = ptxas_resources(ptx)
    wgmma, hoisted = hoisted_descriptors(ptx)
    return {
        "kernel": f"minimal rows={rows} K={k} N={n} K_TILES={k_tiles} warps={num_warps}"
        + (" runtime stride" if runtime_stride else ""),
        "shared": compiled.metadata.shared,
        "registers": registers,
        "spill_stores": spills,
        "wgmma": wgmma,
        "hoisted_descriptors": hoisted,
    }


def probe_real(k_tiles_forward: int, k_tiles_backward: int) -> list[dict]:
    """The real kernels at W2 (LSTM, bf16, B = 64, H = 1024) with W_hh forced resident."""
    import triton_aot

    from fusedrnn.backends import triton as triton_backend

    original = triton_backend._geometry

    def resident(*args, **kwargs):
        geo = original(*args, **kwargs)
        geo.pop("stream_reason", None)
        geo.update(stream_k=0, k_tiles_forward=k_tiles_forward, k_tiles_backward=k_tiles_backward)
        geo["wgmma_forward"] = geo["wgmma_backward"] = True
        return geo

    captured = {}
    compile_recorded = triton_aot.compile_recorded

    def recording(kernel, args, kwargs, arch):
        compiled = compile_recorded(kernel, args, kwargs, arch)
        captured["backward" if "backward" in kernel.__name__ else "forward"] = compiled
        return compiled

    triton_backend._geometry = resident
    triton_backend._shape_reason = lambda geo, kernel: None
    triton_aot.compile_recorded = recording
    case = {"cell": "lstm", "regularizer": "none", "dtype": "bfloat16", "batch": 64}
    results = []
    for r in triton_aot.compile_case({**case, "hidden": 1024}, 90):
        wgmma, hoisted = hoisted_descriptors(captured[r["kernel"]].asm["ptx"])
        results.append(
            {
                "kernel": f"real {r['kernel']} K_TILES={r['k_tiles']} warps={r['num_warps']}",
                "shared": r["shared"],
                "spill_stores": r["spill_stores"],
                "wgmma": wgmma,
                "hoisted_descriptors": hoisted,
            }
        )
    return results


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    for args in [
        (64, 1024, 64, 8, 8, False),
        (64, 1024, 64, 8, 4, False),
        (64, 1024, 64, 8, 8, True),
        (64, 4096, 16, 32, 8, False),
    ]:
        print(json.dumps(probe_minimal(*args)), flush=True)
    for result in probe_real(8, 32):
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
