"""The tensor-core step model of bench/floor.py (docs/kernels-v2.md): its arithmetic on
hand-computed cases, its byte counts, and how it scales. No GPU: the model is arithmetic."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # bench/ is not installed
    sys.path.insert(0, str(REPO))

from bench import floor, workloads  # noqa: E402

W1 = workloads.WORKLOADS["W1"]  # LSTM B=16 I=H=512
# Round figures (1 GHz: one clock = 1 ns) so the expected values below are done by hand.
HW = dataclasses.replace(
    floor.HOPPER,
    sms=132,
    clock_hz=1e9,
    wgmma_half_flops_per_clk=4096.0,
    wgmma_tf32_flops_per_clk=2048.0,
    mma_sync_fraction=0.5,
    mma_sync_latency_clk=33.0,
    warps_per_cta=8,
    smem_bytes_per_clk=128.0,
    register_file_bytes=262_144,
    w_register_fraction=0.5,
    l2_bytes_per_s=5.5e12,
    l2_latency_clk=400.0,
    sm_ingress_bytes_per_clk=64.0,
    multicast_ctas=8,
    grid_barrier_s=1e-6,
    mufu_per_clk=16.0,
    cell_latency_clk=150.0,
    store_bytes_per_clk=64.0,
)


def test_w1_forward_bf16_cuda_by_hand() -> None:
    m = floor.tensor_core_step_model(W1, "cuda", "bfloat16", "forward", ctas=128, hw=HW)
    # 128 CTAs x 4 units: A = W's 16 gate rows, N = B = 16, K = H = 512; mma.sync (M < 64).
    assert (m.units_per_cta, m.instruction, m.w_operand) == (4, "mma.sync", "A")
    assert m.mma_shape == (16, 16, 512)
    assert m.w_bytes_per_cta == 4 * 4 * 512 * 2 == 16_384 == m.w_register_bytes
    assert m.w_smem_bytes == 0 and m.w_streamed_bytes == 0
    assert m.operand_bytes == 16 * 512 * 2 == 16_384  # h_{t-1}, bf16
    # throughput 2*16*16*512 / 2048 = 128 clk; chain: 2 tiles, split-K 4, 32/4 = 8 x 33 = 264
    assert math.isclose(m.mma_us, 0.264, rel_tol=1e-12)
    # one SM's ingress 16384 / 64 = 256 clk; chip 128*16384/8 / 5.5e12 = 0.048 us
    assert math.isclose(m.transfer_us, 0.256, rel_tol=1e-12)
    assert math.isclose(m.latency_us, 0.400, rel_tol=1e-12)
    assert math.isclose(m.cell_us, 0.150 + 4 * 16 * 10 / 16 / 1000, rel_tol=1e-12)
    # h (y, the exchange) + 4 saved gates in bf16, c in fp32: (2+4)*64*2 + 64*4 = 1024 B
    assert math.isclose(m.write_us, 1024 / 64 / 1000, rel_tol=1e-12)
    assert m.reduce_us == 0.0 and math.isclose(m.barrier_us, 1.0, rel_tol=1e-12)
    assert math.isclose(m.total_us, 0.400 + 0.264 + 0.190 + 0.016 + 1.0, rel_tol=1e-12)


def test_w1_backward_bf16_cuda_by_hand() -> None:
    m = floor.tensor_core_step_model(W1, "cuda", "bfloat16", "backward", ctas=128, hw=HW)
    # W^T's slice has only 4 units: W as B (N = 4 -> 8) wastes less than as A (M = 4 -> 16).
    assert (m.instruction, m.w_operand, m.mma_shape) == ("mma.sync", "B", (16, 8, 2048))
    assert m.operand_bytes == 16 * 2048 * 2 == 65_536  # dA_t, all G*H columns
    # throughput 256 clk; chain: 1 tile, split-K 8, 128/8 = 16 x 33 = 528; smem 65536/128 = 512
    assert math.isclose(m.mma_us, 0.528, rel_tol=1e-12)
    assert math.isclose(m.transfer_us, 65_536 / 64 / 1000, rel_tol=1e-12)
    assert math.isclose(m.cell_us, (150 + 4 * 16 * 2 / 16) / 1000, rel_tol=1e-12)
    # writes: dA_t of the CTA's 4 units x 4 gates x 16 rows in bf16 = 512 B = 8 clk
    assert math.isclose(m.write_us, 512 / 64 / 1000, rel_tol=1e-12)
    assert math.isclose(m.total_us, (400 + 1024 + 158 + 8) / 1000 + 1.0, rel_tol=1e-12)


def test_h2048_is_streamed_by_the_launcher() -> None:
    """H = 2048: the launcher streams W_hh in every dtype, so "triton" is the streamed layout
    (the same row as "triton-streamed"); the CUDA design keeps it on chip."""
    big = dataclasses.replace(W1, name="H2048", hidden_size=2048, input_size=2048)
    m = floor.tensor_core_step_model(big, "triton", "bfloat16", "forward", hw=HW)
    # 128 programs of 16 units: 2048 x 64 gate columns in bf16 = 256 KiB a program, streamed
    assert (m.ctas, m.units_per_cta, m.layout) == (128, 16, "streamed, 32 K-chunks of 64")
    assert (m.w_register_bytes, m.w_smem_bytes, m.w_streamed_bytes) == (0, 0, 262_144)
    forced = floor.tensor_core_step_model(big, "triton-streamed", "bfloat16", "forward", hw=HW)
    assert dataclasses.replace(forced, design="triton") == m
    cuda = floor.tensor_core_step_model(big, "cuda", "bfloat16", "forward", ctas=128, hw=HW)
    assert cuda.w_streamed_bytes == 0  # CUDA adds registers to shared memory: all resident


@pytest.mark.parametrize("direction", floor.STEP_DIRECTIONS)
@pytest.mark.parametrize("name", ["W2", "W3"])
def test_triton_streamed_reads_all_of_w_hh_each_step(name: str, direction: str) -> None:
    """The launcher's streamed layout: every program reads its whole W_hh slice from L2 each
    step, so its transfer covers W_hh once per step, and one L2 round trip per K-chunk; in
    bf16 the launcher keeps W_hh resident at W2 and W3, which the model predicts faster."""
    w = workloads.WORKLOADS[name]
    streamed = floor.tensor_core_step_model(w, "triton-streamed", "bfloat16", direction, hw=HW)
    resident = floor.tensor_core_step_model(w, "triton", "bfloat16", direction, hw=HW)
    assert resident.layout.startswith("resident") and streamed.layout.startswith("streamed")
    assert streamed.w_register_bytes == streamed.w_smem_bytes == 0
    assert streamed.w_streamed_bytes * streamed.ctas == w.num_gates * w.hidden_size**2 * 2
    chip_bytes = streamed.ctas * (streamed.operand_bytes + streamed.w_streamed_bytes)
    assert streamed.transfer_us >= chip_bytes / HW.l2_bytes_per_s * 1e6 * 0.999
    k = w.hidden_size * (w.num_gates if direction == "backward" else 1)
    assert math.isclose(streamed.latency_us, k // 64 * HW.l2_latency_clk / 1000)
    assert math.isclose(resident.latency_us, HW.l2_latency_clk / 1000)
    assert streamed.transfer_us > resident.transfer_us
    assert streamed.total_us > resident.total_us


@pytest.mark.parametrize("design", floor.STEP_DESIGNS)
@pytest.mark.parametrize("direction", floor.STEP_DIRECTIONS)
@pytest.mark.parametrize("name", ["W1", "W6a"])
def test_byte_counts_add_up(design: str, direction: str, name: str) -> None:
    w = workloads.WORKLOADS[name]
    for dtype, e in floor.STEP_DTYPE_BYTES.items():
        m = floor.tensor_core_step_model(w, design, dtype, direction, hw=HW)
        # Every CTA's W slice together is W_hh once (Triton's resident tiles: padded to powers
        # of two, GRU's 3 gates to 4 columns forward and G*H = 1536 rows to 2048 backward;
        # float32's backward holds one [H, units] tile per gate: no padding)
        gate_dots = dtype == "float32" and direction == "backward"
        pad = 4 / 3 if design == "triton" and w.num_gates == 3 and not gate_dots else 1
        assert m.w_bytes_per_cta * m.ctas == w.num_gates * w.hidden_size**2 * e * pad
        assert m.w_register_bytes + m.w_smem_bytes + m.w_streamed_bytes == m.w_bytes_per_cta
        split = HW.multicast_ctas if design == "cuda-splitk" else 1
        row = w.hidden_size * (w.num_gates if direction == "backward" else 1)
        # Triton's exchange buffers (h_prev, grad_acc) are float32 in every dtype
        operand_e = 4 if design.startswith("triton") else e
        assert m.operand_bytes * split == w.batch * row * operand_e


@pytest.mark.parametrize("design", ["cuda", "cuda-splitk", "triton"])
def test_scaling(design: str) -> None:
    ctas = None if design == "triton" else 64  # Triton: the launcher's grid
    for direction in floor.STEP_DIRECTIONS:
        totals = [
            floor.tensor_core_step_model(
                dataclasses.replace(W1, batch=b), design, "bfloat16", direction, ctas=ctas, hw=HW
            ).total_us
            for b in (16, 32, 64, 128)
        ]
        assert totals == sorted(totals) and totals[0] < totals[-1]
        for name in ("W1", "W2", "W3"):
            w = workloads.WORKLOADS[name]
            args = (w, design)
            bf16 = floor.tensor_core_step_model(*args, "bfloat16", direction, ctas=ctas, hw=HW)
            tf32 = floor.tensor_core_step_model(*args, "float32", direction, ctas=ctas, hw=HW)
            exact = floor.tensor_core_step_model(
                *args, "float32", direction, tf32=False, ctas=ctas, hw=HW
            )
            # transfer-bound steps hide the slower product, so the totals may tie. (Triton's
            # float32 may run another layout: 8 units a program, the backward's K split over
            # program pairs, which halves each program's operand: no ordering then.)
            if bf16.units_per_cta == tf32.units_per_cta:
                assert bf16.total_us <= tf32.total_us
                assert bf16.mma_us <= tf32.mma_us
            assert exact.instruction == "ffma" and tf32.instruction != "ffma"
            if design == "triton":
                # the Triton model's exact float32 counts FFMA throughput only, not the
                # chain of dependent mma.sync it charges TF32: compare the rates alone
                assert 2.0 * exact.mma_shape[0] * exact.mma_shape[1] * exact.mma_shape[2] / (
                    HW.ffma_flops_per_clk * 1000
                ) == pytest.approx(exact.tensor_us)
            else:
                assert tf32.total_us <= exact.total_us and tf32.mma_us < exact.mma_us
    slower = dataclasses.replace(HW, grid_barrier_s=2e-6)
    base = floor.tensor_core_step_model(W1, design, "bfloat16", "forward", ctas=ctas, hw=HW)
    late = floor.tensor_core_step_model(W1, design, "bfloat16", "forward", ctas=ctas, hw=slower)
    assert math.isclose(late.total_us - base.total_us, 1.0, rel_tol=1e-9)


def test_grid_size_is_the_fastest_candidate() -> None:
    chosen = floor.tensor_core_step_model(W1, "cuda", "float32", "backward", hw=HW)
    for ctas in (16, 32, 64, 128):
        fixed = floor.tensor_core_step_model(W1, "cuda", "float32", "backward", ctas=ctas, hw=HW)
        assert chosen.total_us <= fixed.total_us
    # the Triton designs run the launcher's grid (W1: 32 programs of 16 units), no other
    assert floor.tensor_core_step_model(W1, "triton", "float32", "backward", hw=HW).ctas == 32
    with pytest.raises(ValueError, match="runs 32 programs here, not 64"):
        floor.tensor_core_step_model(W1, "triton", "float32", "backward", ctas=64, hw=HW)


def test_cluster_design_limits_and_barrier() -> None:
    m = floor.tensor_core_step_model(W1, "cluster", "bfloat16", "forward", hw=HW)
    assert m.ctas == 16 and m.w_streamed_bytes == 0  # 2 MiB of bf16 W_hh in one cluster
    assert math.isclose(m.barrier_us, HW.cluster_barrier_clk / 1000, rel_tol=1e-12)
    with pytest.raises(ValueError, match="cluster design"):  # W2: 8 MiB does not fit
        floor.tensor_core_step_model(workloads.WORKLOADS["W2"], "cluster", "bfloat16", "forward")
    with pytest.raises(ValueError, match="at most 16"):
        floor.tensor_core_step_model(W1, "cluster", "bfloat16", "forward", ctas=32)
    with pytest.raises(ValueError, match="unknown design"):
        floor.tensor_core_step_model(W1, "wmma", "bfloat16", "forward")
    with pytest.raises(ValueError, match="unknown direction"):
        floor.tensor_core_step_model(W1, "cuda", "bfloat16", "sideways")


def test_prediction_tables_cover_the_workloads() -> None:
    text = floor.step_model_markdown()
    for name in ("W1", "W6a", "W2", "W3"):
        assert f"| {name} | bfloat16 | CUDA:" in text and f"| {name} | float32 | Triton:" in text
    train = floor.predicted_us_per_step(W1, "cuda", "bfloat16", "train")
    parts = [
        floor.tensor_core_step_model(W1, "cuda", "bfloat16", d).total_us
        for d in floor.STEP_DIRECTIONS
    ]
    # input projection, dx, dW_ih and dW_hh: 4 GEMMs of 2*B*G*H*H FLOPs per step
    gemms = 4 * 2 * 16 * 2048 * 512 / floor.HOPPER.matmul_half_flops_per_s * 1e6
    assert math.isclose(train, sum(parts) + gemms, rel_tol=1e-12)


def test_design_doc_tables_are_the_models_output() -> None:
    """docs/kernels-v2.md §8 quotes `python3 -m bench.floor`: regenerate it when the model or
    an assumption changes."""
    doc = (REPO / "docs" / "kernels-v2.md").read_text()
    missing = [line for line in floor.step_model_markdown().splitlines() if line not in doc]
    assert not missing, f"docs/kernels-v2.md is stale, e.g. {missing[:2]}"


# ------------------------------------------------------------- the Triton kernels as launched
def _launcher():
    from fusedrnn.backends import triton as launcher

    return launcher


def test_triton_w1_bf16_forward_by_hand() -> None:
    """W1 bf16 forward as launched (1 clk = 1 ns): 32 programs x 16 units, one dot [16, 512] x
    [512, 64] (mma.sync: 16 rows < 64), W_hh's 64 KiB tile resident in shared memory."""
    m = floor.tensor_core_step_model(W1, "triton", "bfloat16", "forward", hw=HW)
    assert (m.ctas, m.units_per_cta, m.instruction, m.w_operand) == (32, 16, "mma.sync", "B")
    assert (m.mma_shape, m.layout) == ((16, 64, 512), "resident, 1 K tile")
    assert (m.w_smem_bytes, m.w_streamed_bytes, m.operand_bytes) == (65_536, 0, 16 * 512 * 4)
    assert math.isclose(m.w_smem_us, 65_536 / 128 / 1000)  # W tile read once: 512 clk
    assert math.isclose(m.staging_us, 2 * 16 * 512 * 4 / 128 / 1000)  # f32 piece in + out
    # throughput 2*16*64*512 / (4096 * 0.5) = 512 clk; chain 512 / 16 x 33 = 1056 clk
    assert math.isclose(m.tensor_us, 1.056) and math.isclose(m.mma_us, 1.056)
    assert math.isclose(m.transfer_us, 32_768 / 64 / 1000)  # one SM's ingress, 512 clk
    assert math.isclose(m.latency_us, 0.4)
    assert math.isclose(m.cell_us, (150 + 16 * 16 * 10 / 16) / 1000)
    # h_prev, c_prev, 4 gates (float32) and y (bf16) of 16 rows x 16 units: 6656 B
    assert math.isclose(m.write_us, 16 * 16 * (4 + 4 + 16 + 2) / 64 / 1000)
    assert math.isclose(m.total_us, 0.4 + 1.056 + 0.31 + 0.104 + 1.0)


def test_triton_w2_bf16_backward_by_hand() -> None:
    """W2 bf16 backward as launched: 64 programs x 16 units, [64, 4096] x [4096, 16] as 32 K
    tiles on wgmma (64 rows), the 128 KiB W tile resident; every program reads all of
    dL/d acc (float32, 1 MiB) each step, which bounds the step."""
    m = floor.tensor_core_step_model(
        workloads.WORKLOADS["W2"], "triton", "bfloat16", "backward", hw=HW
    )
    assert (m.ctas, m.instruction, m.mma_shape) == (64, "wgmma", (64, 16, 4096))
    assert (m.layout, m.w_smem_bytes, m.operand_bytes) == ("resident, 32 K tiles", 131_072, 1 << 20)
    assert math.isclose(m.w_smem_us, 1.024)  # one 64-row block reads the tiles once
    # the operand piece in + out (2 MiB) and wgmma's float32 accumulator through shared memory
    assert math.isclose(m.staging_us, (2 * 64 * 4096 * 4 + 2 * 4 * 64 * 16) / 128 / 1000)
    assert math.isclose(m.tensor_us, 2 * 64 * 16 * 4096 / 4096 / 1000)  # no chain on wgmma
    assert math.isclose(m.mma_us, m.w_smem_us + m.staging_us)  # shared memory bound: 17.472
    assert math.isclose(m.transfer_us, (1 << 20) / 64 / 1000)  # 16.384 > the chip's 12.2
    assert math.isclose(m.cell_us, (150 + 16 * 64 * 2 / 16) / 1000)
    assert math.isclose(m.write_us, 64 * 4 * 16 * (4 + 2) / 64 / 1000)
    assert math.isclose(m.total_us, 0.4 + 17.472 + 0.278 + 0.384 + 1.0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["W1", "W2", "W3"])
def test_triton_model_takes_the_launchers_geometry(name: str, dtype: str) -> None:
    """The model's grid, units, dot shape and K tiles are the launcher's _geometry on the
    assumed H100 (132 SMs, 232,448 B shared memory, sm_90); bf16's and W1's layouts are
    spelled out (issue 13 item 2: W1 / W2 / W3 bf16 resident in 1-4 / 8-32 / 16-64 tiles)."""
    w = workloads.WORKLOADS[name]
    geo = floor.triton_geometry(w, dtype)
    assert geo["sms"] == 132 and geo["shared_limit"] == 232_448
    fwd = floor.tensor_core_step_model(w, "triton", dtype, "forward")
    bwd = floor.tensor_core_step_model(w, "triton", dtype, "backward")
    for m, kernel in ((fwd, "forward"), (bwd, "backward")):
        assert (m.ctas, m.units_per_cta) == (geo["programs"], geo["units"])
        assert m.mma_shape[0] == geo["BLOCK_B"] == max(16, w.batch)
        assert (m.instruction == "wgmma") == geo[f"wgmma_{kernel}"] == (w.batch >= 64)
        if geo["stream_k"]:
            assert m.layout.startswith("streamed, ") and m.layout.endswith(f"of {geo['stream_k']}")
        elif kernel == "backward" and geo.get("split_k", 1) == 2:  # float32's pair split
            assert m.layout.endswith(", pair split-K") and m.mma_shape[1] == 2 * geo["units"]
        elif not (kernel == "backward" and geo["gate_dots"]):
            assert m.layout.startswith(f"resident, {geo[f'k_tiles_{kernel}']} K tile")
    assert fwd.mma_shape[1:] == (4 * geo["units"], geo["BLOCK_H"])
    expected = {
        ("W1", "float32"): ("resident, 1 K tile", "resident, 4 gate dots"),
        ("W1", "bfloat16"): ("resident, 1 K tile", "resident, 4 K tiles"),
        ("W2", "bfloat16"): ("resident, 8 K tiles", "resident, 32 K tiles"),
        ("W3", "bfloat16"): ("resident, 16 K tiles", "resident, 64 K tiles"),
    }
    if (name, dtype) in expected:
        assert (fwd.layout, bwd.layout) == expected[(name, dtype)]
        assert (fwd.ctas, fwd.units_per_cta) == ((32, 16) if name == "W1" else (64, 16))


@pytest.mark.parametrize("name", ["W1", "W2"])
def test_forced_streamed_geometry_is_the_launchers_fallback(name: str) -> None:
    """triton_geometry(streamed=True) rebuilds the launcher's streamed fallback: where the
    launcher streams by itself (a 64 KiB shared-memory limit, bf16) its geometry is the same
    but for the limit and the reason (W2: resident it has 8 / 32 K tiles, streamed 1)."""
    w = workloads.WORKLOADS[name]
    small = dataclasses.replace(floor.HOPPER, smem_bytes_per_cta=65_536)
    own = floor.triton_geometry(w, "bfloat16", hw=small)
    assert own["stream_k"] == _launcher()._STREAM_K
    forced = floor.triton_geometry(w, "bfloat16", streamed=True)
    assert forced["stream_reason"] != own["stream_reason"]
    drop = ("shared_limit", "stream_reason")
    assert {k: v for k, v in forced.items() if k not in drop} == {
        k: v for k, v in own.items() if k not in drop
    }
    resident = floor.triton_geometry(w, "bfloat16")
    assert resident["stream_k"] == 0
    assert resident["k_tiles_backward"] == (4 if name == "W1" else 32)


def test_triton_pair_split_backward_by_hand() -> None:
    """The float32 pair split-K backward (the launcher's ``split_k`` 2 at W2: 128 programs of
    8 units, W_hh's 16 K tiles of 256 rows split 8 / 8 over a program pair): one dot
    [64, 2048] x [2048, 16] per program on the pair's 16 columns, then pair_sum (three L2
    round trips, the [64, 16] float32 partial stored and read back)."""
    w2 = workloads.WORKLOADS["W2"]
    geo = {
        **floor.triton_geometry(w2, "float32", hw=HW),
        "units": 8,
        "programs": 128,
        "gate_dots": False,
        "split_k": 2,
        "k_tiles_forward": 8,
        "k_tiles_backward": 16,
        "stream_k": 0,
    }
    m = floor._triton_step_model(w2, "triton", "float32", "backward", True, HW, geo)
    assert (m.ctas, m.units_per_cta, m.mma_shape) == (128, 8, (64, 16, 2048))
    assert m.layout == "resident, 8 K tiles, pair split-K"
    assert m.w_smem_bytes == 4 * 2048 * 16 and m.operand_bytes == 64 * 2048 * 4
    assert math.isclose(m.reduce_us, (3 * 400 + 64 * 16 * 4 / 64 + 64 * 16 * 4 / 64) / 1000)
    assert math.isclose(m.write_us, 64 * 4 * 8 * (4 + 4) / 64 / 1000)
    unsplit = floor._triton_step_model(
        w2, "triton", "float32", "backward", True, HW, {**geo, "split_k": 1}
    )
    # without the split the program reads all 4096 K rows of dL/d acc: twice the operand
    assert unsplit.reduce_us == 0 and unsplit.operand_bytes == 2 * m.operand_bytes
    assert m.transfer_us < unsplit.transfer_us


def test_triton_model_orderings() -> None:
    """Orderings the design rests on, each of which a wrong term would break."""
    W2, W3 = workloads.WORKLOADS["W2"], workloads.WORKLOADS["W3"]

    def model(w, design, dtype, direction, **kw):
        return floor.tensor_core_step_model(w, design, dtype, direction, hw=HW, **kw)

    for direction in floor.STEP_DIRECTIONS:  # resident beats streamed where both run
        for w in (W1, W2, W3):
            resident = model(w, "triton", "bfloat16", direction)
            assert resident.total_us < model(w, "triton-streamed", "bfloat16", direction).total_us
    # bf16 tiles are half float32's bytes: half the shared-memory reads of the same layout
    bf16, f32 = (
        model(W1, "triton", "bfloat16", "forward"),
        model(W1, "triton", "float32", "forward"),
    )
    assert bf16.layout == f32.layout and math.isclose(2 * bf16.w_smem_us, f32.w_smem_us)
    # wgmma reads W once per 64-row block: W3 (256 rows) reads the same 128 KiB tiles 4x W2's
    w2, w3 = model(W2, "triton", "bfloat16", "forward"), model(W3, "triton", "bfloat16", "forward")
    assert w2.w_smem_bytes == w3.w_smem_bytes and math.isclose(w3.w_smem_us, 4 * w2.w_smem_us)
    # TF32 mma.sync takes k-steps of 8: twice bf16's chain at W1
    assert math.isclose(f32.tensor_us, 2 * bf16.tensor_us)
    # float32 at H = 1024 (W2, W3): where the launcher streams, "triton" is the streamed row;
    # where it keeps W_hh resident (a pair split-K layout), that is faster
    for w in (W2, W3):
        for direction in floor.STEP_DIRECTIONS:
            launched = model(w, "triton", "float32", direction)
            streamed = model(w, "triton-streamed", "float32", direction)
            if launched.layout.startswith("streamed"):
                assert dataclasses.replace(streamed, design="triton") == launched
            else:
                assert launched.total_us < streamed.total_us


def test_triton_terms_positive_and_table_labelled() -> None:
    text = floor.triton_model_markdown()
    assert floor.TRITON_MODEL_LABEL in text.splitlines()[0]
    rows = [line for line in text.splitlines() if line.startswith("| W")]
    assert len(rows) == 3 * 2 * 2 * 2
    for name in ("W1", "W2", "W3"):
        for dtype in ("float32", "bfloat16"):
            for direction in floor.STEP_DIRECTIONS:
                for design in ("triton", "triton-streamed"):
                    m = floor.tensor_core_step_model(
                        workloads.WORKLOADS[name], design, dtype, direction
                    )
                    terms = (m.latency_us, m.w_smem_us, m.staging_us, m.tensor_us, m.mma_us)
                    terms += (m.transfer_us, m.cell_us, m.write_us, m.barrier_us)
                    assert all(t > 0 for t in terms), m
                    assert m.mma_us >= max(m.tensor_us, m.w_smem_us + m.staging_us) * 0.999999
    doc = (REPO / "docs" / "kernels-v2.md").read_text()
    missing = [line for line in text.splitlines() if line and line not in doc]
    assert not missing, f"docs/kernels-v2.md §8.3 is stale, e.g. {missing[:2]}"


# ------------------------------------------------------------------ the CUDA kernels as built
RESIDENT_TC = {"tensor_cores": True, "w_in_smem": True, "fused_cell": True}


def test_built_w1_bf16_by_hand() -> None:
    """W1 bf16 on the round-figure H100 (1 clk = 1 ns), plan: tensor cores on the resident
    slice. Backward: 132 blocks of hs = 4 units, rows 4 x K 2048, one 16 x 8 tile per 8 batch
    rows (2 tiles: ksplit 4), d(a) 16 x 2048 x 4 B = 128 KiB into each SM (2,048 ns at
    64 B/clk) and 132 x that from L2 (3.146 µs at 5.5 TB/s); 2048 / 16 / 4 = 32 chained mma
    (1,056 ns); fused: 2 cell elements per thread (rows g < 4, two columns), 80 + 400 + 2 x
    150 ns. Forward fused: 32 gate-interleaved rows, 2 items (ksplit 4), 512 / 64 = 8 chained
    mma (264 ns), the bf16 exchange 16 KiB (256 ns; 132 x 16 KiB from L2 = 0.393 µs)."""
    bwd = floor.built_step_model(W1, "bfloat16", "backward", "fused", hw=HW, plan=RESIDENT_TC)
    assert (bwd.grid, bwd.rows, bwd.k, bwd.ksplit, bwd.cells_per_thread) == (132, 4, 2048, 4, 2)
    assert bwd.operand_bytes == 16 * 2048 * 4
    assert math.isclose(bwd.transfer_us, 132 * 131072 / 5.5e12 * 1e6)
    assert math.isclose(bwd.product_us, 1.056)
    assert math.isclose(bwd.elementwise_us, 0.78)
    assert math.isclose(bwd.total_us, 132 * 131072 / 5.5e6 + 1.056 + 0.78 + 1.0)
    phased = floor.built_step_model(W1, "bfloat16", "backward", "phased", hw=HW, plan=RESIDENT_TC)
    assert math.isclose(phased.elementwise_us, floor.PHASED_ELEMENTWISE_US)
    assert math.isclose(phased.total_us - phased.elementwise_us, bwd.total_us - bwd.elementwise_us)
    fwd = floor.built_step_model(W1, "bfloat16", "forward", "fused", hw=HW, plan=RESIDENT_TC)
    assert (fwd.rows, fwd.k, fwd.ksplit, fwd.cells_per_thread) == (32, 512, 4, 2)
    assert math.isclose(fwd.product_us, 0.264)
    assert math.isclose(fwd.transfer_us, 132 * 16384 / 5.5e6)
    fwd_phased = floor.built_step_model(
        W1, "bfloat16", "forward", "phased", hw=HW, plan=RESIDENT_TC
    )
    assert (fwd_phased.rows, fwd_phased.ksplit) == (16, 4)


def test_built_model_follows_the_plan() -> None:
    """Where the plan keeps the phased form (W from L2: W3 float32 backward on the H100) the
    fused row is the phased one; TF32 k-steps of 8 double the chain; batch blocks of 64 rows
    multiply the product and the elementwise terms."""
    w3 = workloads.WORKLOADS["W3"]
    l2 = {"tensor_cores": False, "w_in_smem": False, "fused_cell": False}
    fused = floor.built_step_model(w3, "float32", "backward", "fused", plan=l2)
    phased = floor.built_step_model(w3, "float32", "backward", "phased", plan=l2)
    assert fused == phased and fused.form == "phased" and fused.placement == "FMA, W from L2"
    tf32 = floor.built_step_model(W1, "float32", "forward", "phased", hw=HW, plan=RESIDENT_TC)
    bf16 = floor.built_step_model(W1, "bfloat16", "forward", "phased", hw=HW, plan=RESIDENT_TC)
    assert math.isclose(tf32.product_us, 2 * bf16.product_us)
    assert tf32.operand_bytes == 2 * bf16.operand_bytes
    w2 = floor.built_step_model(workloads.WORKLOADS["W2"], "bfloat16", "forward", "fused", hw=HW)
    w3b = floor.built_step_model(w3, "bfloat16", "forward", "fused", hw=HW)
    assert w3b.batch_blocks == 4 and math.isclose(w3b.product_us, 4 * w2.product_us)
    assert math.isclose(w3b.elementwise_us, 4 * w2.elementwise_us)
    with pytest.raises(ValueError, match="unknown form"):
        floor.built_step_model(W1, "bfloat16", "forward", "cluster")


def test_built_table_covers_every_kernel_and_is_in_the_design_doc() -> None:
    """docs/kernels-v2.md §5.0 quotes `python3 -m bench.floor`'s built-kernel table: W1-W3,
    float32 (TF32) and bfloat16, forward and backward, phased and fused."""
    text = floor.built_model_markdown()
    for name in ("W1", "W2", "W3"):
        for dtype in ("float32", "bfloat16"):
            for direction in floor.STEP_DIRECTIONS:
                for form in floor.BUILT_FORMS:
                    assert f"| {name} | {dtype} | {direction} | {form}" in text
    doc = (REPO / "docs" / "kernels-v2.md").read_text()
    missing = [line for line in text.splitlines() if line not in doc]
    assert not missing, f"docs/kernels-v2.md §5.0 is stale, e.g. {missing[:2]}"
