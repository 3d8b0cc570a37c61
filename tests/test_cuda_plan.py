"""The CUDA kernels' CPU-checkable parts (csrc/cuda/launch_plan.h, through fusedrnn._C):
the mma.sync fragment layouts, the block product's tile split, and the launch plan that
dispatch checks before it picks ``cuda`` (issue 14 items 1 and 5)."""

from __future__ import annotations

import ast
import itertools
import math
import re
from pathlib import Path

import pytest
import torch

from fusedrnn.backends import cuda as cuda_backend
from fusedrnn.backends import host, native
from fusedrnn.backends.base import RecurrenceConfig, RecurrenceInputs

pytestmark = pytest.mark.skipif(host.availability() is not None, reason=str(host.availability()))

# ------------------------------------------------------------------ fragment layouts
# The PTX ISA's fragment tables ("Matrix Fragments for mma.m16n8k16 with floating point type",
# "... mma.m16n8k8" for .tf32), transcribed here independently of launch_plan.h, in the ISA's
# own terms: groupID = lane >> 2, threadID_in_group = lane % 4, element index i.


def _isa_m16n8k16(operand: str, lane: int, i: int) -> tuple[int, int]:
    group, tig = lane >> 2, lane % 4
    if operand == "a":  # a0..a7: rows groupID (a0,a1,a4,a5) / groupID+8 (a2,a3,a6,a7)
        row = group if i in (0, 1, 4, 5) else group + 8
        col = tig * 2 + (i & 1) + (8 if i >= 4 else 0)
        return row, col
    if operand == "b":  # b0..b3: row (k) = tig*2 + (i & 1) (+8 for i >= 2), col = groupID
        return tig * 2 + (i & 1) + (8 if i >= 2 else 0), group
    row = group if i < 2 else group + 8  # c0..c3
    return row, tig * 2 + (i & 1)


def _isa_m16n8k8_tf32(operand: str, lane: int, i: int) -> tuple[int, int]:
    group, tig = lane >> 2, lane % 4
    if operand == "a":  # a0: (g, t) a1: (g+8, t) a2: (g, t+4) a3: (g+8, t+4)
        return (group if i in (0, 2) else group + 8), (tig if i < 2 else tig + 4)
    if operand == "b":  # b0: (k=t, n=g) b1: (k=t+4, n=g)
        return (tig if i == 0 else tig + 4), group
    return (group if i < 2 else group + 8), tig * 2 + (i & 1)


SHAPES = {
    "m16n8k16": (16, _isa_m16n8k16),
    "m16n8k8_tf32": (8, _isa_m16n8k8_tf32),
}


def _maps(shape: str) -> dict[str, list[list[tuple[int, int]]]]:
    C = native.native()
    return {op: C.mma_fragment_map(op, shape) for op in ("a", "b", "c")}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_fragment_maps_cover_each_tile_once(shape):
    """Every element of A (16 x K), B (K x 8) and C (16 x 8) is held by exactly one (lane, e)."""
    k, _ = SHAPES[shape]
    dims = {"a": (16, k), "b": (k, 8), "c": (16, 8)}
    for op, lanes in _maps(shape).items():
        held = [coord for lane in lanes for coord in lane]
        rows, cols = dims[op]
        assert sorted(held) == sorted(itertools.product(range(rows), range(cols))), op


@pytest.mark.parametrize("shape", list(SHAPES))
def test_fragment_maps_reproduce_the_matrix_product(shape):
    """Emulate one mma.sync: fill each lane's fragments with the kernel's maps, let the
    'hardware' (the ISA's tables) read A and B from the fragments and write D = A B into the
    fragments, read D back with the kernel's C map: it must be A @ B."""
    k, isa = SHAPES[shape]
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(16, k, generator=gen, dtype=torch.float64)
    b = torch.randn(k, 8, generator=gen, dtype=torch.float64)
    maps = _maps(shape)

    def fragments(op, matrix):
        return [[matrix[r, c].item() for r, c in lane] for lane in maps[op]]

    frag_a, frag_b = fragments("a", a), fragments("b", b)
    hw_a, hw_b = torch.zeros_like(a), torch.zeros_like(b)
    for lane in range(32):
        for i, v in enumerate(frag_a[lane]):
            hw_a[isa("a", lane, i)] = v
        for i, v in enumerate(frag_b[lane]):
            hw_b[isa("b", lane, i)] = v
    hw_d = hw_a @ hw_b
    frag_d = [[hw_d[isa("c", lane, i)].item() for i in range(4)] for lane in range(32)]
    d = torch.full((16, 8), float("nan"), dtype=torch.float64)
    for lane, coords in enumerate(maps["c"]):
        for i, (r, c) in enumerate(coords):
            d[r, c] = frag_d[lane][i]
    torch.testing.assert_close(d, a @ b, rtol=1e-12, atol=1e-12)


def test_sixteen_bit_registers_hold_adjacent_k():
    """The kernel loads each 16-bit A/B register (elements 2j, 2j+1) as one 32-bit word of
    two consecutive k: the maps must agree."""
    for op, lanes in _maps("m16n8k16").items():
        if op == "c":
            continue
        for lane in lanes:
            for j in range(len(lane) // 2):
                (r0, c0), (r1, c1) = lane[2 * j], lane[2 * j + 1]
                if op == "a":
                    assert (r1, c1) == (r0, c0 + 1) and c0 % 2 == 0
                else:
                    assert (r1, c1) == (r0 + 1, c0) and r0 % 2 == 0


# ------------------------------------------------------------------ the block product's split
WARPS, TILES_PER_WARP = 8, 4


@pytest.mark.parametrize(
    ("rows", "batch_rows"), [(1, 1), (4, 16), (16, 16), (17, 9), (64, 64), (3, 64), (48, 40)]
)
def test_tile_split_gives_each_tile_all_k_parts_once(rows, batch_rows):
    """block_product_tc's assignment (warp -> slot = warp / ksplit, k part = warp % ksplit,
    tiles t0 + slot + i*slots per round) computes every output tile's full k range once."""
    tiles, ksplit, slots = native.native().mma_tile_split(rows, batch_rows)
    assert tiles == -(-rows // 16) * -(-batch_rows // 8)
    assert ksplit * slots <= WARPS and WARPS % ksplit == 0
    assert ksplit == 1 or tiles * ksplit <= WARPS
    seen = {}
    for t0 in range(0, tiles, slots * TILES_PER_WARP):
        for warp in range(WARPS):
            slot, part = warp // ksplit, warp % ksplit
            for i in range(TILES_PER_WARP):
                tile = t0 + slot + i * slots
                if tile < tiles:
                    seen.setdefault(tile, []).append(part)
    assert sorted(seen) == list(range(tiles))
    assert all(sorted(parts) == list(range(ksplit)) for parts in seen.values())


def _c_mod(a: int, b: int) -> int:
    """C's ``%`` (the sign of the dividend), which block_product_tc's k-part offset must undo."""
    return int(math.fmod(a, b))


def _emulate_block_product(x, w, k_chunk, k_step):
    """block_product_tc (tensor_core.cuh) transcribed at tile level: batch blocks of 64 rows,
    rounds of slots x kTilesPerWarp tiles, operand chunks of k_chunk columns, k-step j of the
    whole product to k part j % ksplit (the kernel's C expression), the k_end cut, split-K
    partials summed in warp order in the epilogue. Each tile product is W[16 rows, k_step]
    @ X[8 rows, k_step]^T (one mma; its fragment layout is tested above)."""
    batch, k = x.shape
    rows = w.shape[0]
    m_tiles, k_end = -(-rows // 16), -(-k // k_step) * k_step
    chunks, steps_per_chunk = -(-k // k_chunk), k_chunk // k_step
    w_smem = torch.zeros(m_tiles * 16, -(-k // 16) * 16, dtype=x.dtype)  # zero pad, rows >= R
    w_smem[:rows, :k] = w
    out = torch.full((batch, rows), float("nan"), dtype=x.dtype)
    for b0 in range(0, batch, 64):
        nbr = min(64, batch - b0)
        tiles, ksplit, slots = native.native().mma_tile_split(rows, nbr)
        staged = torch.zeros(-(-nbr // 8) * 8, chunks * k_chunk, dtype=x.dtype)
        staged[:nbr, :k] = x[b0 : b0 + nbr]
        for t0 in range(0, tiles, slots * TILES_PER_WARP):
            acc = {
                (wp, i): torch.zeros(16, 8, dtype=x.dtype) for wp in range(WARPS) for i in range(4)
            }
            for c in range(chunks):
                for warp in range(WARPS):
                    slot, part = warp // ksplit, warp % ksplit
                    first = _c_mod(_c_mod(part - c * steps_per_chunk, ksplit) + ksplit, ksplit)
                    for step in range(first, steps_per_chunk, ksplit):
                        kk = c * k_chunk + step * k_step
                        if kk >= k_end:
                            break
                        for i in range(TILES_PER_WARP):
                            tile = t0 + slot + i * slots
                            if tile < tiles:
                                m0, n0 = (tile % m_tiles) * 16, (tile // m_tiles) * 8
                                a = w_smem[m0 : m0 + 16, kk : kk + k_step]
                                acc[warp, i] += a @ staged[n0 : n0 + 8, kk : kk + k_step].T
            for warp in range(0, WARPS, ksplit):
                for i in range(TILES_PER_WARP):
                    tile = t0 + warp // ksplit + i * slots
                    if tile >= tiles:
                        continue
                    total = acc[warp, i] + sum(acc[warp + p, 0] for p in range(1, ksplit))
                    m0, n0 = (tile % m_tiles) * 16, (tile // m_tiles) * 8
                    r_end, n_end = min(16, rows - m0), min(8, nbr - n0)
                    out[b0 + n0 : b0 + n0 + n_end, m0 : m0 + r_end] = total[:r_end, :n_end].T
    return out


@pytest.mark.parametrize(
    ("batch", "rows", "k", "k_chunk", "k_step"),
    [
        (1, 1, 1, 32, 16),
        (9, 17, 40, 32, 8),
        (70, 4, 200, 64, 16),
        (130, 48, 131, 32, 16),
        (16, 16, 512, 512, 16),
        (64, 32, 1024, 256, 8),
    ],
)
def test_block_product_schedule_computes_the_product(batch, rows, k, k_chunk, k_step):
    gen = torch.Generator().manual_seed(batch + rows + k)
    x = torch.randn(batch, k, generator=gen, dtype=torch.float64)
    w = torch.randn(rows, k, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(_emulate_block_product(x, w, k_chunk, k_step), x @ w.T)


@pytest.mark.parametrize(
    ("batch", "rows"),
    [(1, 1), (5, 4), (16, 4), (9, 17), (64, 8), (65, 8), (130, 17), (256, 33), (3, 48), (200, 70)],
)
def test_tc_product_owners_hold_each_output_once_in_the_same_thread(batch, rows):
    """block_product_tc_each's epilogue (the fused backward's product: B batch rows, R = the
    block's units) through the kernel's own index functions (_C.tc_product_owners): every
    output (b, r) is stored exactly once per call, by one thread (warp, lane) of the k-part-0
    warp of its tile, and the accumulator element it stores is, by the ISA's C table, the
    (row, column) of that tile whose A rows start at m0 and B rows at n0: so it is (W X^T)[r,
    b] (the tile-level schedule test above), and, the map depending on (B, R) alone, the same
    thread holds the same (b, r) on every call of a launch (the fused backward keeps its
    per-(b, r) state in that thread). Tiles go to warps as the tile-level schedule above
    transcribes it (tile t0 + slot + i * slots to warp slot * ksplit)."""
    C = native.native()
    records = C.tc_product_owners(batch, rows)
    assert records == C.tc_product_owners(batch, rows)
    owners = {}
    m_tiles = -(-rows // 16)
    for b, r, warp, lane, tile, e, m0, n0, b0, t0 in records:
        assert (b, r) not in owners, (b, r)
        owners[b, r] = (warp, lane)
        row, col = _isa_m16n8k16("c", lane, e)
        assert (r, b - b0) == (m0 + row, n0 + col)
        assert (m0, n0) == ((tile % m_tiles) * 16, (tile // m_tiles) * 8)
        tiles, ksplit, slots = C.mma_tile_split(rows, min(64, batch - b0))
        assert warp % ksplit == 0 and tile < tiles
        # tile t0 + slot + i * slots of warp slot * ksplit (its k part 0), i < kTilesPerWarp
        assert (tile - t0) % slots == warp // ksplit and (tile - t0) // slots < TILES_PER_WARP
        assert t0 % (slots * TILES_PER_WARP) == 0
    assert sorted(owners) == sorted(itertools.product(range(batch), range(rows)))


# ------------------------------------------------------------------ the launch plan
BARRIERS = 32  # the stage buffers' two 8-byte mbarriers and parity word (sm_90 TMA staging)
H100 = {
    "sms": 132,
    "smem_per_block_optin": 232448,
    "smem_per_sm": 233472,
    "smem_reserved_per_block": 1024,
    "max_threads_per_sm": 2048,
}


def _plan(B, G, H, dtype_bytes, backward, tensor_cores=True, proj=0, **limits):
    return native.native().cuda_launch_plan(
        B=B,
        G=G,
        H=H,
        storage_bytes=dtype_bytes,
        backward=backward,
        want_tensor_cores=tensor_cores,
        proj=proj,
        **{**H100, **limits},
    )


def test_plan_w1_bf16_forward_by_hand():
    """W1 LSTM bf16 forward (B=16, H=512) on an H100, every part of the shared memory counted
    here: hs = ceil(512/132) = 4 units, 16 gate rows of 512 + 8 (pad) bf16 = 16,640 B; all of
    K in one operand stage of the bf16 exchange, 16 rows of 512 + 8 = 16,640 B; split-K
    scratch 8*32*4*4 = 4,096 B; gates 16*16*4 = 1,024 B; 5 unit arrays 5*16*4*4 = 1,280 B;
    column and row statistics 128 + 128 B; the stage buffers' mbarriers 32 B."""
    plan = _plan(16, 4, 512, 2, backward=False)
    assert plan["reason"] == ""
    assert (plan["grid"], plan["hs"], plan["w_in_smem"], plan["tensor_cores"]) == (
        132,
        4,
        True,
        True,
    )
    assert plan["k_chunk"] == 512
    assert plan["smem_bytes"] == 16640 + 16640 + 4096 + 1024 + 1280 + 128 + 128 + BARRIERS


def test_plan_w2_forward_by_hand():
    """W2 LSTM forward (B=64, H=1024, hs = 8, 32 gate rows); the other parts as above: scratch
    4,096 B, gates 64*32*4 = 8,192 B, units 5*64*8*4 = 10,240 B, statistics 256 + 512 B.
    bf16: W 32 x 1032 bf16 = 66,048 B and all of K in one bf16 stage, 64 x 1032 x 2 =
    132,096 B. fp32 (TF32): W 32 x 1028 x 4 = 131,584 B; one fp32 stage of all K (263,168 B)
    does not fit, nor two of 512 or 256 columns; two of 128 do: 2 x 64 x 132 x 4 = 67,584 B."""
    rest = 4096 + 8192 + 10240 + 256 + 512 + BARRIERS
    bf16 = _plan(64, 4, 1024, 2, backward=False)
    assert (bf16["hs"], bf16["tensor_cores"], bf16["k_chunk"]) == (8, True, 1024)
    assert bf16["smem_bytes"] == 66048 + 132096 + rest
    tf32 = _plan(64, 4, 1024, 4, backward=False)
    assert (tf32["tensor_cores"], tf32["k_chunk"]) == (True, 128)
    assert tf32["smem_bytes"] == 131584 + 67584 + rest


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize(
    ("B", "G", "H", "nbytes", "k_chunk", "fused", "proj"),
    [
        (16, 4, 512, 2, 512, False, 0),
        (16, 4, 512, 2, 512, True, 0),
        (64, 4, 1024, 4, 128, False, 0),
        (65, 3, 1050, 4, 96, True, 0),
        (7, 3, 65, 2, 96, False, 0),
        (16, 4, 512, 2, 128, False, 128),
        (5, 1, 67, 4, 0, False, 0),
    ],
)
def test_smem_plan_reserves_the_stage_barriers(B, G, H, nbytes, k_chunk, fused, proj, backward):
    """sm_90's TMA staging (tensor_core.cuh stage_barriers) finds the stage buffers' two 8-byte
    mbarriers and their parity word in the kStageBarrierBytes right before the stage region:
    on tensor cores that gap is reserved (8-byte aligned, after the W slices, before the
    stages, which end before the split-K scratch); the FMA product (k_chunk 0) reserves
    nothing."""
    fused = fused and not backward
    hs = -(-H // min(H, 132))
    ps = -(-proj // min(H, 132)) if proj else 0
    s = native.native().cuda_smem_plan(
        B, G, H, hs, nbytes, True, k_chunk, backward, fused_cell=fused, proj=proj, ps=ps
    )
    assert s["stage_barrier_bytes"] == BARRIERS >= 2 * 8 + 4
    assert s["bar_off"] == s["proj_w_off"] + s["proj_w_bytes"] >= s["w_bytes"]
    assert s["bar_off"] % 16 == 0 and s["stage_off"] % 16 == 0
    assert s["stage_off"] - s["bar_off"] == (BARRIERS if k_chunk else 0)
    xbytes = 2 if nbytes == 2 and not backward else 4
    rows8 = min(-(-B // 8) * 8, 64)
    assert s["stage_off"] + s["stages"] * rows8 * s["stage_ld"] * xbytes <= s["scratch_off"]


@pytest.mark.parametrize("per_vec", [4, 8], ids=["fp32", "16bit"])
@pytest.mark.parametrize(
    ("nbr", "cols", "K", "k0"),
    [
        (1, 32, 8, 0),
        (3, 64, 40, 0),
        (8, 128, 1020, 896),
        (16, 512, 512, 0),
        (61, 160, 4080, 3840),
        (64, 96, 1056, 960),
        (5, 4096, 4080, 0),
    ],
)
def test_bulk_stage_covers_the_chunk_once(nbr, cols, K, k0, per_vec):
    """sm_90's TMA staging of one chunk (launch_plan.h bulk_valid_cols / bulk_zero_vector, as
    tensor_core.cuh bulk_stage_operand_chunk issues them): the nbr bulk copies (the row's
    columns up to K) and the 16-byte zero vectors cover the rows8 x cols block that the
    fragments read exactly once, the copies only the operand's own elements, each copy a
    whole number of 16-byte units when K is (the vec16 condition)."""
    if K % per_vec:
        pytest.skip("rows not a multiple of 16 bytes take the element-wise copy")
    rows8 = -(-nbr // 8) * 8
    count = [[0] * cols for _ in range(rows8)]
    copied = 0
    for r, c, n, is_copy in native.native().bulk_stage_cover(nbr, cols, K, k0, per_vec):
        assert 0 <= r < rows8 and 0 <= c and c + n <= cols
        assert c % per_vec == 0 and n % per_vec == 0  # 16-byte units
        if is_copy:
            assert r < nbr and c == 0 and k0 + n <= K
            copied += n
        for j in range(c, c + n):
            count[r][j] += 1
    assert all(v == 1 for row in count for v in row)
    assert copied == nbr * min(cols, K - k0)


def test_plan_falls_back_in_order():
    """Tensor cores need the operand stages: when only the FMA plan fits the W slice stays in
    shared memory without them; when that does not fit either, W streams from L2."""
    B, G, H = 64, 4, 1024
    tc = _plan(B, G, H, 4, backward=True)["smem_bytes"]
    fma = _plan(B, G, H, 4, backward=True, tensor_cores=False)["smem_bytes"]
    assert fma < tc
    between = _plan(B, G, H, 4, backward=True, smem_per_block_optin=fma, smem_per_sm=fma + 1024)
    assert (between["w_in_smem"], between["tensor_cores"], between["reason"]) == (True, False, "")
    below = _plan(B, G, H, 4, backward=True, smem_per_block_optin=fma - 16, smem_per_sm=fma)
    assert (below["w_in_smem"], below["tensor_cores"], below["reason"]) == (False, False, "")
    assert below["smem_bytes"] < fma


@pytest.mark.parametrize(("B", "backward"), [(640, True), (1024, False)])
def test_plan_refuses_what_cannot_launch(B, backward):
    """The cases issue 14 names (LSTM fp32 H=1024): backward at B=640, forward at B=1024."""
    plan = _plan(B, 4, 1024, 4, backward=backward, tensor_cores=False)
    assert "shared memory" in plan["reason"] and str(B) in plan["reason"]
    assert plan["smem_bytes"] > H100["smem_per_block_optin"]


def test_plan_checks_co_residency():
    plan = _plan(8, 4, 256, 4, backward=False, max_threads_per_sm=128)
    assert "co-resident" in plan["reason"]
    assert _plan(8, 4, 256, 4, backward=False)["reason"] == ""


def _cuda_inputs(
    batch: int,
    hidden: int,
    needs_grad: bool,
    proj: int = 0,
    norm: str = "none",
    dtype: torch.dtype = torch.float32,
) -> RecurrenceInputs:
    """Meta tensors: the shapes and dtype of a CUDA call without memory or a device."""
    meta = torch.device("meta")
    out = proj if proj > 0 else hidden
    return RecurrenceInputs(
        config=RecurrenceConfig(cell="lstm", hidden_size=hidden, proj_size=proj, norm=norm),
        xg=torch.empty(2, batch, 4 * hidden, device=meta, dtype=dtype),
        h0=torch.empty(batch, out, device=meta, dtype=dtype),
        c0=torch.empty(batch, hidden, device=meta, dtype=dtype),
        w_hh=torch.empty(4 * hidden, out, device=meta, dtype=dtype),
        b_hh=None,
        w_hr=torch.empty(proj, hidden, device=meta) if proj > 0 else None,
        lengths=None,
        needs_grad=needs_grad,
    )


def test_dispatch_refuses_with_the_plans_reason(monkeypatch):
    """unsupported_reason (what dispatch asks) names the plan's reason instead of the launch
    throwing; without gradients only the forward plan matters."""
    monkeypatch.setattr(native, "common_unsupported_reason", lambda *args: None)
    monkeypatch.setattr(cuda_backend, "device_limits", lambda device: dict(H100))
    monkeypatch.setattr(cuda_backend, "float32_uses_tf32", lambda: False)
    reason = cuda_backend.unsupported_reason(_cuda_inputs(640, 1024, needs_grad=True))
    assert reason is not None and "backward kernel" in reason and "shared memory" in reason
    assert cuda_backend.unsupported_reason(_cuda_inputs(640, 1024, needs_grad=False)) is None
    assert cuda_backend.unsupported_reason(_cuda_inputs(16, 512, needs_grad=True)) is None


# ------------------------------------------------------------------ the plan with a projection
def _a16(n: int) -> int:
    return -(-n // 16) * 16


def _proj_smem_model(B, H, P, nbytes, backward, grid, w_in_smem, k_chunk):
    """The shared memory of one block of the LSTM kernels with a projection, written from
    docs/kernels-v2.md §5.0 (not from launch_plan.h): cell units hs = ceil(H/grid), h units
    ps = ceil(P/grid); the W_hh slice (forward: 4*hs gate rows of K = P; backward: ps h-unit
    columns of K = 4H) and the W_hr slice (forward: ps rows of K = H; backward: hs columns of
    K = P), each row padded to a multiple of 16 plus 16 bytes on tensor cores; one operand
    stage region big enough for both products (the recurrent one's operand in the 16-bit
    dtype forward, fp32 backward; the projection's always fp32, chunks of at most k_chunk),
    after the stage buffers' 32 bytes of mbarriers (tensor cores); split-K scratch; the gate tile; unit arrays of max(hs, ps) floats per row (5 + 1 forward,
    9 + 1 backward); column and row statistics."""
    hs, ps = -(-H // grid), -(-P // grid)
    tc = k_chunk > 0
    rows8 = min(-(-B // 8) * 8, 64)

    def slice_bytes(rows, k):
        ld = (-(-k // 16) * 16 + 16 // nbytes) if tc else k
        return _a16(rows * ld * nbytes) if w_in_smem else 0

    def stage_bytes(k, xbytes, chunk):
        if not tc:
            return 0
        return (1 if chunk >= k else 2) * rows8 * (chunk + 16 // xbytes) * xbytes

    if backward:
        k, xbytes, w_rows, proj_rows, proj_k, arrays = 4 * H, 4, ps, hs, P, 10
    else:
        k, xbytes, w_rows, proj_rows, proj_k, arrays = (
            P,
            nbytes if nbytes == 2 else 4,
            4 * hs,
            ps,
            H,
            6,
        )
    proj_chunk = min(k_chunk, -(-proj_k // 32) * 32)
    stages = max(stage_bytes(k, xbytes, k_chunk), stage_bytes(proj_k, 4, proj_chunk))
    return (
        slice_bytes(w_rows, k)
        + slice_bytes(proj_rows, proj_k)
        + (BARRIERS if tc else 0)
        + _a16(stages)
        + (8 * 32 * 4 * 4 if tc else 0)
        + _a16(B * 4 * hs * 4)
        + _a16(arrays * B * max(hs, ps) * 4)
        + _a16(2 * 4 * hs * 4)
        + _a16(2 * B * 4)
    )


def test_plan_w1_bf16_with_projection_by_hand():
    """W1 LSTM bf16 (B=16, H=512) with proj_size 128 on an H100, grid 132, hs = 4, ps = 1.
    Forward: W_hh 16 rows x (128 + 8) bf16 = 4,352 B; W_hr 1 row x (512 + 8) = 1,040 B; the
    recurrent operand in one bf16 stage of 128 columns (16 x 136 x 2 = 4,352 B) and the
    projection's fp32 operand (K = 512) in two stages of 128 (2 x 16 x 132 x 4 = 16,896 B):
    the region is 16,896 B; scratch 4,096; gates 1,024; 6 unit arrays 6 x 16 x 4 x 4 = 1,536;
    statistics 128 + 128. Backward: W_hh^T 1 row x (2048 + 8) bf16 = 4,112 B; W_hr^T 4 rows x
    (128 + 8) = 1,088 B; the d(a) stage 16 x 2052 x 4 = 131,328 B (the projection's one stage
    of 128 is smaller); scratch 4,096; gates 1,024; 10 unit arrays 2,560; statistics 256."""
    fwd = _plan(16, 4, 512, 2, backward=False, proj=128)
    assert (fwd["reason"], fwd["grid"], fwd["hs"], fwd["ps"]) == ("", 132, 4, 1)
    assert (fwd["w_in_smem"], fwd["tensor_cores"], fwd["k_chunk"]) == (True, True, 128)
    assert fwd["smem_bytes"] == 4352 + 1040 + 16896 + 4096 + 1024 + 1536 + 128 + 128 + BARRIERS
    bwd = _plan(16, 4, 512, 2, backward=True, proj=128)
    assert (bwd["reason"], bwd["ps"], bwd["k_chunk"]) == ("", 1, 2048)
    assert bwd["smem_bytes"] == 4112 + 1088 + 131328 + 4096 + 1024 + 2560 + 128 + 128 + BARRIERS


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("nbytes", [2, 4])
@pytest.mark.parametrize(
    ("B", "H", "P", "sms"),
    [
        (16, 512, 1, 132),
        (5, 67, 13, 132),
        (64, 1024, 1023, 132),
        (33, 300, 257, 108),
        (200, 1024, 512, 132),
        (3, 9, 7, 4),
    ],
)
def test_plan_with_projection_matches_the_model(B, H, P, sms, nbytes, backward):
    """Awkward P (1, primes, P close to H, P > grid): the plan's bytes equal the model's for
    the placement and chunk the plan chose, and that choice is the first that fits in the
    plan's order (tensor cores with the largest chunk, the FMA product, W from L2)."""
    limits = {**H100, "sms": sms}
    plan = _plan(B, 4, H, nbytes, backward, proj=P, sms=sms)
    grid = min(H, sms)
    assert (plan["grid"], plan["hs"], plan["ps"]) == (grid, -(-H // grid), -(-P // grid))
    model = _proj_smem_model(B, H, P, nbytes, backward, grid, plan["w_in_smem"], plan["k_chunk"])
    assert plan["smem_bytes"] == model
    optin = limits["smem_per_block_optin"]
    k = 4 * H if backward else P
    chunk = -(-k // 32) * 32
    while True:  # the first tensor-core chunk that fits, if any
        if _proj_smem_model(B, H, P, nbytes, backward, grid, True, chunk) <= optin:
            expected = (True, chunk)
            break
        if chunk == 32:
            fma = _proj_smem_model(B, H, P, nbytes, backward, grid, True, 0) <= optin
            expected = (fma, 0)
            break
        chunk = -(-(chunk // 2) // 32) * 32
    assert (plan["w_in_smem"], plan["k_chunk"]) == expected
    assert plan["reason"] == ""


def test_plan_with_projection_refuses_with_the_reason():
    """LSTM fp32 H=1024, exact FMA with W from L2: without a projection B=720 fits (296 B per
    batch row: gates 4*8*4, 5 unit arrays 5*8*4, row statistics 8); the projection's sixth
    unit array (32 B per row) does not (720 x 328 + 256 > 232,448), and the reason says so."""
    plain = _plan(720, 4, 1024, 4, backward=False, tensor_cores=False)
    assert plain["reason"] == "" and not plain["w_in_smem"]
    plan = _plan(720, 4, 1024, 4, backward=False, tensor_cores=False, proj=512)
    assert plan["smem_bytes"] == 720 * (128 + 192 + 8) + 256
    assert "shared memory" in plan["reason"] and "proj_size 512" in plan["reason"]


def test_dispatch_takes_projections_when_the_plan_fits(monkeypatch):
    """proj_size is no longer refused as such: unsupported_reason is the plan's."""
    monkeypatch.setattr(native, "common_unsupported_reason", lambda *args: None)
    monkeypatch.setattr(cuda_backend, "device_limits", lambda device: dict(H100))
    monkeypatch.setattr(cuda_backend, "float32_uses_tf32", lambda: False)
    assert cuda_backend.unsupported_reason(_cuda_inputs(16, 512, True, proj=128)) is None
    assert cuda_backend.unsupported_reason(_cuda_inputs(720, 1024, False)) is None
    reason = cuda_backend.unsupported_reason(_cuda_inputs(720, 1024, False, proj=512))
    assert reason is not None and "forward kernel" in reason and "proj_size 512" in reason


def test_tf32_flag_is_cudnn_rnn_precision(monkeypatch):
    """docs/kernels-v2.md §2: float32 uses TF32 iff cuDNN's RNN would."""
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is None or not hasattr(rnn, "fp32_precision"):
        pytest.skip("this torch has no torch.backends.cudnn.rnn.fp32_precision")
    before = rnn.fp32_precision
    try:
        rnn.fp32_precision = "tf32"
        assert cuda_backend.float32_uses_tf32() is True
        rnn.fp32_precision = "ieee"
        assert cuda_backend.float32_uses_tf32() is False
    finally:
        rnn.fp32_precision = before


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_saved_tensors_follow_needs_grad_and_dtype(dtype):
    """The cuda launcher's saved layout (native.py, shared with host): nothing when no
    gradient is needed; h_state (float32) exactly where the host keeps it, for 16-bit dtypes
    (both backwards read h_{t-1} from it)."""
    inputs = _cuda_inputs(3, 8, needs_grad=True)
    inputs = inputs.replace(xg=inputs.xg.to(dtype), h0=inputs.h0.to(dtype))
    saved = dict(zip(native._SAVED, cuda_backend.saved_like(inputs)))
    assert saved["gates"].shape == (2, 3, 32) and saved["c_state"].shape == (2, 3, 8)
    host_saved = dict(zip(native._SAVED, host.saved_like(inputs)))
    for layout in (saved, host_saved):
        if dtype == torch.float32:
            assert layout["h_state"].numel() == 0
        else:
            assert layout["h_state"].shape == (2, 3, 8)
            assert layout["h_state"].dtype == torch.float32
    nothing = cuda_backend.saved_like(inputs.replace(needs_grad=False))
    assert all(t.numel() == 0 for t in nothing)


# ------------------------------------------------------------------ the cell on the accumulators
# The fused-cell forward (launch_plan.h "the cell on the accumulators", block_product_cell_tc in
# tensor_core.cuh): the block's W_hh rows gate-interleaved per group of 8 units, so that each
# thread's accumulators hold every gate of one unit for two batch columns. The layout stated
# here independently: within a group of fused_tiles(G) = ceil(G/2) 16-row tiles, row 8 g + u is
# gate g of the group's unit slot u (slots past hl and gates past G: zero rows).
FUSED_SIZES = [
    (4, 1, 1),
    (4, 4, 16),
    (4, 8, 16),
    (4, 9, 7),
    (4, 13, 65),
    (3, 4, 16),
    (3, 16, 9),
    (3, 5, 130),
    (1, 3, 2),
    (1, 17, 64),
    (4, 2, 200),
]


def _fused_groups(G: int, hl: int) -> tuple[int, int]:
    return -(-G // 2), -(-hl // 8)


@pytest.mark.parametrize(("G", "hl"), sorted({(g, h) for g, h, _ in FUSED_SIZES}))
def test_fused_cell_rows_interleave_gates_per_eight_units(G, hl):
    tiles, groups = _fused_groups(G, hl)
    rows = native.native().fused_cell_rows(G, hl)
    expected = []
    for group in range(groups):
        for slot_row in range(tiles * 16):
            gate, unit = slot_row // 8, group * 8 + slot_row % 8
            expected.append((gate, unit) if gate < G and unit < hl else (-1, -1))
    assert [tuple(r) for r in rows] == expected
    held = sorted(r for r in map(tuple, rows) if r != (-1, -1))
    assert held == sorted(itertools.product(range(G), range(hl)))


@pytest.mark.parametrize(("G", "hl", "B"), FUSED_SIZES)
def test_fused_cell_map_gives_each_thread_all_gates_of_one_unit(G, hl, B):
    """Each thread's cell call (batch block, item, lane, column c) reads all G gates of one
    unit and one batch row; every (batch row, unit, gate) is read exactly once; the accumulator
    element it reads (tile, e) is, by the ISA's C table, the W slice row of that gate and unit
    and the operand row of that batch row; one warp per item in a round of items."""
    C = native.native()
    rows = [tuple(r) for r in C.fused_cell_rows(G, hl)]
    records = C.fused_cell_map(G, hl, B)
    calls = {}
    for r in records:
        calls.setdefault((r["b0"], r["item"], r["lane"], r["c"]), []).append(r)
        tile_row, tile_col = _isa_m16n8k16("c", r["lane"], r["e"])
        assert r["row"] == r["tile"] * 16 + tile_row
        assert (r["col"] - r["b0"]) % 8 == tile_col and r["col"] == r["batch"]
        assert rows[r["row"]] == (r["gate"], r["unit"])
    for call in calls.values():
        assert sorted(r["gate"] for r in call) == list(range(G))
        assert len({(r["unit"], r["batch"]) for r in call}) == 1
    covered = sorted((r["batch"], r["unit"], r["gate"]) for r in records)
    assert covered == sorted(itertools.product(range(B), range(hl), range(G)))
    _, groups = _fused_groups(G, hl)
    for b0 in range(0, B, 64):
        items, ksplit, slots = C.fused_cell_split(groups, min(64, B - b0))
        assert items == groups * -(-min(64, B - b0) // 8)
        assert ksplit * slots <= WARPS and (ksplit == 1 or items * ksplit <= WARPS)
        warps = {(r["item"] // slots, r["warp"]) for r in records if r["b0"] == b0}
        by_round = {}
        for round_, warp in warps:
            by_round.setdefault(round_, []).append(warp)
        assert all(len(set(w)) == len(w) for w in by_round.values())


@pytest.mark.parametrize(("G", "hl", "B"), FUSED_SIZES)
@pytest.mark.parametrize("k_step", [16, 8], ids=["k16", "tf32"])
def test_fused_cell_product_emulation_is_w_hh_h(G, hl, B, k_step):
    """block_product_cell_tc at tile level: the gate-interleaved slice (built from
    fused_cell_rows), each work item's tiles summed over its k-steps with k-step j in k part
    j % ksplit and the parts added in warp order, each thread's accumulator elements read
    through the ISA's C table at the (tile, e) the map gives: the cell's input must be
    (W_hh h)[gate g of unit jj, batch b] of the plain gate-major product."""
    C = native.native()
    K = 37
    gen = torch.Generator().manual_seed(G * 1000 + hl * 10 + B)
    w = torch.randn(G * hl, K, generator=gen, dtype=torch.float64)  # row g * hl + jj
    x = torch.randn(B, K, generator=gen, dtype=torch.float64)
    k_pad = -(-K // k_step) * k_step
    rows = C.fused_cell_rows(G, hl)
    w_fused = torch.zeros(len(rows), k_pad, dtype=torch.float64)
    for r, (gate, unit) in enumerate(rows):
        if gate >= 0:
            w_fused[r, :K] = w[gate * hl + unit]
    tiles, groups = _fused_groups(G, hl)
    acc = {}
    for b0 in range(0, B, 64):
        nbr = min(64, B - b0)
        items, ksplit, _ = C.fused_cell_split(groups, nbr)
        staged = torch.zeros(-(-nbr // 8) * 8, k_pad, dtype=torch.float64)
        staged[:nbr, :K] = x[b0 : b0 + nbr]
        for item in range(items):
            group, n_tile = item % groups, item // groups
            xb = staged[n_tile * 8 : n_tile * 8 + 8]
            for i in range(tiles):
                wt = w_fused[(group * tiles + i) * 16 : (group * tiles + i + 1) * 16]
                parts = [torch.zeros(16, 8, dtype=torch.float64) for _ in range(ksplit)]
                for j in range(k_pad // k_step):
                    ks = slice(j * k_step, (j + 1) * k_step)
                    parts[j % ksplit] += wt[:, ks] @ xb[:, ks].T
                total = parts[0]
                for part in parts[1:]:
                    total = total + part
                acc[(b0, item, group * tiles + i)] = total
    truth = w @ x.T
    for r in C.fused_cell_map(G, hl, B):
        value = acc[(r["b0"], r["item"], r["tile"])][_isa_m16n8k16("c", r["lane"], r["e"])]
        expected = truth[r["gate"] * hl + r["unit"], r["batch"]]
        assert abs(value.item() - expected.item()) <= 1e-12 * (1 + abs(expected.item())), r


def test_fused_cell_plan_w1_bf16_by_hand():
    """W1 LSTM bf16 forward with the cell on the accumulators: hs = 4 units take one 8-unit
    group of 2 tiles, 32 rows of 520 bf16 = 33,280 B (half of them zero); the stage as in the
    phased plan (16,640 B); split-K scratch for 2 tiles, 8*32*2*4*4 = 8,192 B; no gate tile;
    5 unit arrays 1,280 B; statistics 128 + 128 B. Only asked for."""
    fused = _plan(16, 4, 512, 2, backward=False, want_fused_cell=True)
    assert (fused["fused_cell"], fused["grid"], fused["k_chunk"], fused["reason"]) == (
        True,
        132,
        512,
        "",
    )
    assert fused["smem_bytes"] == 33280 + 16640 + 8192 + 1280 + 128 + 128 + BARRIERS
    assert not _plan(16, 4, 512, 2, backward=False)["fused_cell"]
    fma = _plan(16, 4, 512, 4, backward=False, tensor_cores=False, want_fused_cell=True)
    assert not fma["fused_cell"]


def test_fused_cell_plan_keeps_the_phased_plan_when_it_does_not_fit():
    phased = _plan(16, 4, 512, 2, backward=False)
    limits = {"smem_per_block_optin": phased["smem_bytes"], "smem_per_sm": 2 * 1024 * 1024}
    plan = _plan(16, 4, 512, 2, backward=False, want_fused_cell=True, **limits)
    assert not plan["fused_cell"] and plan["smem_bytes"] == phased["smem_bytes"]


def test_fused_cell_plan_halves_the_chunk_when_the_padded_slice_needs_it():
    """GRU float32 (TF32) at B=65, H=1050: hs = 8 units, 24 phased rows but 32 fused ones
    (the zero fourth gate slot) of 1,060 floats = 135,680 B; with the phased plan's chunk of
    160 columns (two stages of 64 x 164 floats, 83,968 B), 8,192 B of split-K scratch and
    10,400 B of unit state that is over the H100's 232,448 B, so the fused plan takes the next
    halved chunk (96 columns) and fits."""
    phased = _plan(65, 3, 1050, 4, backward=False)
    fused = _plan(65, 3, 1050, 4, backward=False, want_fused_cell=True)
    assert (phased["k_chunk"], fused["k_chunk"], fused["fused_cell"]) == (160, 96, True)
    assert fused["smem_bytes"] <= H100["smem_per_block_optin"]


@pytest.mark.parametrize(
    ("B", "G", "H", "dtype_bytes"), [(16, 4, 512, 2), (16, 4, 512, 4), (7, 3, 65, 2)]
)
def test_fused_cell_backward_plan_is_the_phased_plan_on_tensor_cores(B, G, H, dtype_bytes):
    """The backward's cell on the accumulators needs no reordered W slice (the product's C
    fragment already holds one value per (unit, batch row)): where the phased backward runs
    tensor cores on the resident slice, the fused plan is it with fused_cell set, same grid,
    chunk and shared memory; not without being asked for."""
    phased = _plan(B, G, H, dtype_bytes, backward=True)
    assert phased["tensor_cores"] and phased["w_in_smem"] and not phased["fused_cell"]
    fused = _plan(B, G, H, dtype_bytes, backward=True, want_fused_cell=True)
    assert fused["fused_cell"]
    assert {k: v for k, v in fused.items() if k != "fused_cell"} == {
        k: v for k, v in phased.items() if k != "fused_cell"
    }


@pytest.mark.parametrize(
    ("B", "G", "H", "dtype_bytes", "tensor_cores", "proj"),
    [
        (16, 4, 512, 4, False, 0),  # exact FP32 (TF32 off): the FMA product, no accumulators
        (256, 4, 1024, 4, True, 0),  # W_hh streams from L2 (FMA product)
        (640, 4, 1024, 4, True, 0),  # cannot launch at all
        (16, 4, 512, 2, True, 128),  # a projection (the cell needs every unit's o tanh c)
    ],
)
def test_fused_cell_backward_plan_only_on_resident_tensor_cores(
    B, G, H, dtype_bytes, tensor_cores, proj
):
    phased = _plan(B, G, H, dtype_bytes, backward=True, tensor_cores=tensor_cores, proj=proj)
    fused = _plan(
        B,
        G,
        H,
        dtype_bytes,
        backward=True,
        tensor_cores=tensor_cores,
        proj=proj,
        want_fused_cell=True,
    )
    assert not fused["fused_cell"]
    assert fused == phased


@pytest.mark.parametrize(
    ("forward_flag", "backward_flag"), list(itertools.product([True, False], repeat=2))
)
def test_dispatch_asks_each_kernel_for_its_fused_cell_by_its_own_flag(
    forward_flag, backward_flag, monkeypatch
):
    """backends/cuda.py's plan (what dispatch checks and what _workspace hands the launcher):
    the forward's cell on the accumulators follows FUSED_CELL, the backward's follows
    FUSED_CELL_BACKWARD (and not the other flag); with a norm or a projection neither asks,
    and float32 with TF32 off (the FMA product) never gets it. The fused backward's plan is the
    phased one's with the flag set (same grid, chunk, shared memory)."""
    monkeypatch.setattr(cuda_backend, "FUSED_CELL", forward_flag)
    monkeypatch.setattr(cuda_backend, "FUSED_CELL_BACKWARD", backward_flag)
    limits = dict(H100)

    def plans(inputs, tf32=False):
        return [cuda_backend.launch_plan(inputs, bwd, limits, tf32) for bwd in (False, True)]

    fwd, bwd = plans(_cuda_inputs(16, 512, True, dtype=torch.bfloat16))
    assert (fwd["fused_cell"], bwd["fused_cell"]) == (forward_flag, backward_flag)
    phased_bwd = _plan(16, 4, 512, 2, backward=True)
    assert {k: v for k, v in bwd.items() if k != "fused_cell"} == {
        k: v for k, v in phased_bwd.items() if k != "fused_cell"
    }
    assert [p["fused_cell"] for p in plans(_cuda_inputs(16, 512, True), tf32=True)] == [
        forward_flag,
        backward_flag,
    ]
    for inputs in (
        _cuda_inputs(16, 512, True, norm="layer", dtype=torch.bfloat16),
        _cuda_inputs(16, 512, True, norm="batch", dtype=torch.bfloat16),
        _cuda_inputs(16, 512, True, proj=128, dtype=torch.bfloat16),
        _cuda_inputs(16, 512, True),  # float32, TF32 off
    ):
        assert [p["fused_cell"] for p in plans(inputs)] == [False, False], inputs.config


# ------------------------------------------------------------------ the gpu test audit
ROOT = Path(__file__).resolve().parents[1]


def _device_functions() -> set[str]:
    """Every __device__ / __global__ function (or member) defined in csrc/cuda/."""
    names = set()
    for path in sorted((ROOT / "csrc" / "cuda").glob("*.cu*")):
        text = re.sub(r"__launch_bounds__\([^)]*\)", "", path.read_text())
        text = re.sub(r"//[^\n]*", "", text)
        for match in re.finditer(r"__(?:device|global)__\b[^;{(]*?\b([A-Za-z_]\w*)\s*\(", text):
            names.add(match.group(1))
    return names


def _test_functions(name: str) -> set[str]:
    tree = ast.parse((ROOT / "tests" / name).read_text())
    return {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
    }


def _audit_rows() -> list[list[str]]:
    doc = (ROOT / "docs" / "kernels-v2.md").read_text()
    section = doc.split("<!-- gpu-audit:begin -->")[1].split("<!-- gpu-audit:end -->")[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and not set(cells[0]) <= set("-") and "gpu tests" not in cells:
            rows.append(cells)
    return rows


def test_gpu_audit_table_is_complete():
    """docs/kernels-v2.md §5.0's GPU test audit: every device function of csrc/cuda/ is named
    in its first column; the last column of each row names gpu tests that exist in
    tests/test_cuda_gpu.py, and every test there is named; CPU tests named elsewhere in the
    table exist in this file."""
    rows = _audit_rows()
    assert len(rows) > 10
    named = {n for row in rows for n in re.findall(r"`(\w+)", row[0])}
    missing = _device_functions() - named
    assert not missing, f"device functions without a row in the gpu audit: {sorted(missing)}"
    gpu_tests, cpu_tests = _test_functions("test_cuda_gpu.py"), _test_functions("test_cuda_plan.py")
    cited = set()
    for row in rows:
        in_row = set(re.findall(r"`(test_\w+)`", row[-1]))
        assert in_row or row[-1] == "(below)", row
        assert in_row <= gpu_tests, f"not gpu tests: {sorted(in_row - gpu_tests)}"
        cited |= in_row
        others = {n for cell in row[:-1] for n in re.findall(r"`(test_\w+)`", cell)}
        assert others <= cpu_tests, (
            f"not CPU tests of test_cuda_plan.py: {sorted(others - cpu_tests)}"
        )
    assert gpu_tests <= cited, f"gpu tests missing from the audit: {sorted(gpu_tests - cited)}"
