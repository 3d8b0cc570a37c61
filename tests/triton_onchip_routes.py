"""Routes tried against the wgmma-descriptor hoisting (docs/kernels-v2.md §6.1, table of routes).

TRITON_INTERPRET=0 python3 tests/triton_onchip_routes.py baseline,disable_licm,opaque_load,opaque_asm fwd|bwd|fwdrs
"""

import json
import os
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton_onchip_probe import hoisted_descriptors, ptxas_resources


@triton.jit(noinline=True)
def product_noinline(h, w, acc):
    return tl.dot(h, w, acc)


@triton.jit
def opaque_zero():
    return tl.inline_asm_elementwise(
        "mov.u32 $0, 0;", "=r", [], dtype=tl.int32, is_pure=False, pack=1
    )


@triton.jit
def probe(
    w_ptr,
    h_ptr,
    out_ptr,
    zero_ptr,
    steps,
    width,
    batch,
    ROWS: tl.constexpr,
    K: tl.constexpr,
    N: tl.constexpr,
    K_TILES: tl.constexpr,
    RUNTIME_STRIDE: tl.constexpr,
    MODE: tl.constexpr,
):
    rows = tl.arange(0, ROWS)
    ns = tl.arange(0, N)
    K_CHUNK: tl.constexpr = K // K_TILES
    tiles = ()
    for c in tl.static_range(K_TILES):
        ks = c * K_CHUNK + tl.arange(0, K_CHUNK)
        tiles = tiles + (tl.load(w_ptr + ks[:, None] * N + ns[None, :]),)  # noqa: RUF005
    s = 0
    while tl.condition(s < steps, disable_licm=MODE == "disable_licm"):
        acc = tl.zeros((ROWS, N), tl.float32)
        if MODE == "opaque_load":
            z = tl.load(zero_ptr + s * 0)
        elif MODE == "opaque_asm":
            z = opaque_zero()
        else:
            z = 0
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
            w = tiles[c]
            if MODE == "opaque_load" or MODE == "opaque_asm":
                w = tl.where(z != 0, w * 2, w)
            if MODE == "noinline":
                acc = product_noinline(h.to(tl.bfloat16), w, acc)
            else:
                acc = tl.dot(h.to(tl.bfloat16), w, acc)
        tl.store(out_ptr + (s * ROWS + rows[:, None]) * N + ns[None, :], acc)
        s += 1


def run(mode, rows=64, k=1024, n=64, k_tiles=8, warps=8, rs=False):
    sig = {
        "w_ptr": "*bf16",
        "h_ptr": "*fp32",
        "out_ptr": "*fp32",
        "zero_ptr": "*i32",
        "steps": "i32",
        "width": "i32",
        "batch": "i32",
    }
    const = dict(ROWS=rows, K=k, N=n, K_TILES=k_tiles, RUNTIME_STRIDE=rs, MODE=mode)
    sig.update(dict.fromkeys(const, "constexpr"))
    c = triton.compile(
        ASTSource(probe, sig, const), target=GPUTarget("cuda", 90, 32), options={"num_warps": warps}
    )
    ptx = c.asm["ptx"]
    os.makedirs(os.environ.get("PROBE_OUT", "/tmp/onchip_routes"), exist_ok=True)
    tag = f"{mode}_k{k}_n{n}_t{k_tiles}_w{warps}_{int(rs)}"
    open(os.environ.get("PROBE_OUT", "/tmp/onchip_routes") + f"/{tag}.ptx", "w").write(ptx)
    open(os.environ.get("PROBE_OUT", "/tmp/onchip_routes") + f"/{tag}.ttgir", "w").write(
        c.asm["ttgir"]
    )
    reg, sp = ptxas_resources(ptx)
    try:
        wg, ho = hoisted_descriptors(ptx)
    except StopIteration:
        wg, ho = ptx.count("wgmma.mma_async"), None
    print(
        json.dumps(
            dict(
                tag=tag,
                shared=c.metadata.shared,
                registers=reg,
                spills=sp,
                wgmma=wg,
                hoisted=ho,
                mma_sync=ptx.count("mma.sync"),
                ld_global_in_ptx=ptx.count("ld.global"),
            )
        ),
        flush=True,
    )


if __name__ == "__main__":
    modes = sys.argv[1].split(",")
    shape = sys.argv[2] if len(sys.argv) > 2 else "fwd"
    for m in modes:
        try:
            if shape == "fwd":
                run(m)
            elif shape == "fwdrs":
                run(m, rs=True)
            else:
                run(m, k=4096, n=16, k_tiles=32)
        except Exception as e:
            print(m, shape, "FAILED", type(e).__name__, str(e)[:800], flush=True)
