"""The floor model: how fast a workload could possibly run on this device.

Work of one call (``cost``), per layer ``l`` and direction, with ``G`` gates (LSTM 4,
GRU 3), ``n = sum over steps of the active rows`` (= B*T, or the sum of lengths when packed),
``I_l`` the layer's input size (I, then D*H) and ``e`` the dtype's bytes:

* recurrent GEMM, forward: ``2 * n * G*H * H`` FLOPs (``2*B*H*G*H`` per step),
* input GEMM, forward: ``2 * n * I_l * G*H`` FLOPs,
* minimal DRAM bytes, forward: ``e * (n * (I_l + G*H + G*H + H) + G*H*(I_l + H))``: read x,
  write and read the gate pre-activations, write h, read each weight matrix once (a
  persistent kernel keeps ``W_hh`` on chip; pointwise math stays in registers),
* backward (``mode="train"`` adds it): ``BACKWARD_FACTOR`` (2) times the forward FLOPs and
  bytes (dh and dW_hh are one GEMM each, dx and dW_ih too),
* sequential steps (grid barriers on the critical path): ``L * T`` forward, twice that in
  training (both directions of a layer can run concurrently).

Ceilings measured on the device (``measure_ceilings``): a large square matmul in the
workload's dtype (torch's current matmul settings, so TF32 only if enabled), copy bandwidth
(``dst.copy_(src)``, read + write bytes) and, on a GPU, the latency of an empty grid barrier
(a Triton kernel with one program per SM meeting on an atomic counter, ``bench/_barrier.py``);
on the CPU the barrier is not applicable (0).

Floor of one call::

    floor = max(FLOPs / matmul rate, bytes / copy bandwidth) + sequential steps * barrier

and each provider's ``floor_multiple = median / floor`` (>= 1 unless the model is wrong).

``tensor_core_step_model`` (below) predicts the time of one recurrent step of the tensor-core
kernel designs of docs/kernels-v2.md from stated Hopper assumptions (``HopperAssumptions``);
``python3 -m bench.floor`` prints its tables.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .timing import synchronize, time_callable
from .workloads import DTYPES, Workload

BACKWARD_FACTOR = 2.0
BARRIER_NOT_APPLICABLE = "not applicable on CPU"


@dataclasses.dataclass(frozen=True)
class Cost:
    """Work of one call of a workload (FLOPs and minimal DRAM bytes)."""

    recurrent_flops: float
    input_flops: float
    bytes: float
    sequential_steps: int

    @property
    def flops(self) -> float:
        return self.recurrent_flops + self.input_flops

    def scaled(self, factor: float, steps_factor: int) -> Cost:
        return Cost(
            self.recurrent_flops * factor,
            self.input_flops * factor,
            self.bytes * factor,
            self.sequential_steps * steps_factor,
        )


def dtype_bytes(dtype: str | torch.dtype) -> int:
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    return torch.empty((), dtype=dtype).element_size()


def forward_cost(workload: Workload, element_bytes: int) -> Cost:
    """FLOPs and bytes of one forward call (see the module docstring)."""
    n = workload.tokens
    gh = workload.num_gates * workload.hidden_size
    h = workload.hidden_size
    recurrent = inputs = moved = 0.0
    for layer in range(workload.layers):
        in_size = workload.input_size if layer == 0 else workload.num_directions * h
        for _ in range(workload.num_directions):
            recurrent += 2.0 * n * gh * h
            inputs += 2.0 * n * in_size * gh
            moved += element_bytes * (n * (in_size + gh + gh + h) + gh * (in_size + h))
    return Cost(recurrent, inputs, moved, workload.layers * workload.steps)


def cost(workload: Workload, mode: str, dtype: str | torch.dtype) -> Cost:
    """Work of one call in ``mode`` ("forward" or "train" = forward + backward)."""
    forward = forward_cost(workload, dtype_bytes(dtype))
    if mode == "forward":
        return forward
    if mode == "train":
        return forward.scaled(1.0 + BACKWARD_FACTOR, 2)
    raise ValueError(f"unknown mode {mode!r}")


@dataclasses.dataclass
class Ceilings:
    """Measured ceilings of one device and dtype."""

    device: str
    dtype: str
    matmul_flops_per_s: float
    matmul_size: int
    copy_bytes_per_s: float
    copy_bytes: int
    barrier_s: float | None  # None: not applicable (CPU) or not measured (see method)
    barrier_method: str

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def floor_seconds(c: Cost, ceilings: Ceilings) -> float:
    """Lower bound of one call: throughput bound plus the barriers on the critical path."""
    throughput = max(c.flops / ceilings.matmul_flops_per_s, c.bytes / ceilings.copy_bytes_per_s)
    return throughput + c.sequential_steps * (ceilings.barrier_s or 0.0)


def measure_matmul(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Best FLOP/s of ``size``^3 matmuls."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    timing = time_callable(lambda: torch.mm(a, b), device, warmup=2, repeats=5)
    return 2.0 * size**3 / min(timing.times_s)


def measure_copy(device: torch.device, nbytes: int) -> float:
    """Best bytes/s (read + write) of a large ``copy_``."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    timing = time_callable(lambda: dst.copy_(src), device, warmup=2, repeats=5)
    return 2.0 * src.numel() * 4 / min(timing.times_s)


def measure_barrier(device: torch.device) -> tuple[float | None, str]:
    """Latency of one empty grid barrier across all SMs (Triton), or (None, why not)."""
    if device.type != "cuda":
        return None, BARRIER_NOT_APPLICABLE
    try:
        from . import _barrier
    except Exception as error:  # triton missing or broken
        return None, f"not measured: cannot import the Triton barrier kernel ({error})"
    programs = torch.cuda.get_device_properties(device).multi_processor_count
    max_spins = 1 << 22

    def run(rounds: int) -> tuple[float, bool]:
        counter = torch.zeros(1, dtype=torch.int32, device=device)
        timeout = torch.zeros(1, dtype=torch.int32, device=device)
        kernel = _barrier.barrier_rounds_kernel[(programs,)]
        synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        kernel(counter, timeout, rounds, max_spins, num_warps=1)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, bool(timeout.item())

    try:
        run(2)  # compile
        short, long = 16, 4096
        best = None
        for _ in range(3):
            t_short, bad_short = run(short)
            t_long, bad_long = run(long)
            if bad_short or bad_long:
                return None, (
                    f"not measured: the {programs}-program barrier kernel hit its spin limit "
                    "(programs not co-resident?)"
                )
            estimate = (t_long - t_short) / (long - short)
            best = estimate if best is None else min(best, estimate)
    except Exception as error:
        return None, f"not measured: barrier kernel failed ({type(error).__name__}: {error})"
    method = (
        f"Triton kernel, {programs} programs (one per SM), atomic-counter barrier, "
        f"(t({long}) - t({short} rounds)) / {long - short}, best of 3"
    )
    return best, method


def measure_ceilings(device: torch.device, dtype: str, quick: bool = False) -> Ceilings:
    """Matmul rate, copy bandwidth and barrier latency of ``device`` for ``dtype``."""
    on_gpu = device.type == "cuda"
    if on_gpu:
        size, nbytes = 8192, 1 << 30
    elif quick:
        size, nbytes = 256, 16 << 20
    else:
        size, nbytes = 2048, 256 << 20
    matmul = measure_matmul(device, DTYPES[dtype], size)
    copy = measure_copy(device, nbytes)
    barrier, method = measure_barrier(device)
    return Ceilings(str(device.type), dtype, matmul, size, copy, nbytes, barrier, method)


def write_ceilings(path: Path | str, ceilings: list[Ceilings]) -> None:
    Path(path).write_text(json.dumps([c.as_dict() for c in ceilings], indent=2) + "\n")


# ------------------------------------------------------------------------------------------
# Per-step time model of the tensor-core designs (issues 13 and 14, docs/kernels-v2.md)
# ------------------------------------------------------------------------------------------
#
# One time step of one layer and direction on one GPU::
#
#     step = latency + max(mma, transfer) + cell + write + barrier
#
# * latency: the first K-chunk of the step's operand (h_{t-1} forward, dA_t backward) to arrive
#   (L2 round trip, or a DSMEM one in the cluster design); later chunks overlap the product;
# * mma: the CTA's product on tensor cores, the largest of the padded FLOPs over the rate, the
#   dependent chain of mma.sync accumulations, and the shared-memory bytes the product reads;
# * transfer: the operand's bytes (and any W_hh bytes not resident on chip) over the chip's L2
#   bandwidth and over one SM's ingress, whichever is slower (DSMEM in the cluster design);
# * cell: the pointwise cell on the accumulators (MUFU throughput plus a fixed dependent chain);
# * write: the CTA's global stores of the step (h or dA_t, which double as the exchange buffer,
#   and the saved activations);
# * barrier: one grid barrier (grid designs) or one hardware cluster barrier.


@dataclasses.dataclass(frozen=True)
class HopperAssumptions:
    """H100 SXM figures the step model assumes, each stated once with its source. None is
    measured by this project yet: the first GPU run (issue 17) checks them, and
    ``bench/_barrier.py`` / ``measure_ceilings`` replace the ones they measure."""

    sms: int = 132  # KINDS.md: torch reported 132 multiprocessors on the lent H100 and H200
    clock_hz: float = 1.755e9  # docs/design.md §5 table (datasheet-class SM clock)
    # Dense tensor-core FLOP per clock per SM through wgmma: the datasheet's 989 TFLOP/s
    # (bf16/fp16) and 495 TFLOP/s (tf32) over 132 SMs at its 1.83 GHz.
    wgmma_half_flops_per_clk: float = 4096.0
    wgmma_tf32_flops_per_clk: float = 2048.0
    # Guess: the legacy mma.sync path reaches half of wgmma's rate on sm_90.
    mma_sync_fraction: float = 0.5
    # Guess: latency of one dependent mma.sync m16n8k16 (accumulator chain), clocks.
    mma_sync_latency_clk: float = 33.0
    ffma_flops_per_clk: float = 256.0  # 128 FP32 FMA / clk / SM (docs/design.md §5)
    warps_per_cta: int = 8  # design choice (docs/kernels-v2.md): 256 threads per CTA
    smem_bytes_per_clk: float = 128.0  # docs/design.md §5
    smem_bytes_per_cta: int = 232_448  # 227 KiB opt-in (docs/design.md §5, HOPPER.md)
    smem_reserved_bytes: int = 65_536  # design choice: operand stages + epilogue scratch
    register_file_bytes: int = 65_536 * 4  # 64K 32-bit registers per SM (datasheet)
    w_register_fraction: float = 0.5  # design choice: at most half the registers hold W
    l2_bytes: float = 50e6  # KINDS.md: torch reported 50 MB of L2 on the H100
    l2_bytes_per_s: float = 5.5e12  # docs/design.md §5 (all SMs reading at once)
    dram_bytes_per_s: float = 3.0e12  # KINDS.md: measured device-to-device copy, H100
    l2_latency_clk: float = 400.0  # docs/design.md §5
    sm_ingress_bytes_per_clk: float = 64.0  # guess: one SM's L2 -> SM load bandwidth
    multicast_ctas: int = 8  # portable cluster size; TMA multicast within it (CUDA only)
    cluster_ctas: int = 16  # largest (non-portable) cluster on sm_90
    dsmem_bytes_per_clk: float = 32.0  # guess: one SM's distributed-shared-memory ingress
    dsmem_latency_clk: float = 200.0  # guess
    grid_barrier_s: float = 1.0e-6  # docs/design.md §5; bench/_barrier.py measures it
    cluster_barrier_clk: float = 350.0  # guess: barrier.cluster arrive.release + wait
    mufu_per_clk: float = 16.0  # special-function results / clk / SM (ex2, rcp), cc 9.0
    cell_latency_clk: float = 150.0  # guess: accumulators -> cell -> stores dependent chain
    store_bytes_per_clk: float = 64.0  # guess: one SM's global store bandwidth
    # Whole-sequence GEMMs outside the loop (input projection, dx, dW_ih, dW_hh):
    matmul_half_flops_per_s: float = 798e12  # KINDS.md: 8192^3 bf16 measured on the H100
    matmul_tf32_flops_per_s: float = 400e12  # guess: half the measured bf16 rate
    matmul_fp32_flops_per_s: float = 50e12  # docs/design.md §5 (TF32 off)


HOPPER = HopperAssumptions()
STEP_DESIGNS = ("cuda", "cuda-splitk", "triton", "triton-streamed", "cluster")
STEP_DIRECTIONS = ("forward", "backward")
STEP_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Transcendentals per (unit, batch row) of the cell; each costs two MUFU ops (ex2 + rcp).
CELL_TRANSCENDENTALS = {("lstm", "forward"): 5, ("gru", "forward"): 3}
CELL_TRANSCENDENTALS.update({("lstm", "backward"): 1, ("gru", "backward"): 0})


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class StepModel:
    """Predicted time of one recurrent step (µs per term) and the plan behind it."""

    design: str
    dtype: str
    direction: str
    tf32: bool
    ctas: int
    units_per_cta: int
    instruction: str  # "wgmma" | "mma.sync" | "ffma"
    w_operand: str  # "A" (M = gate rows) or "B" (N = units; M = batch)
    mma_shape: tuple[int, int, int]  # padded M, N and K of the CTA's product
    w_bytes_per_cta: int
    w_register_bytes: int
    w_smem_bytes: int
    w_streamed_bytes: int  # per CTA and step, from L2 (the K-chunk path)
    operand_bytes: int  # h_{t-1} (forward) or dA_t (backward) each CTA needs per step
    latency_us: float
    mma_us: float
    transfer_us: float
    reduce_us: float  # cuda-splitk: the DSMEM reduction of partial sums in the cluster
    cell_us: float
    write_us: float
    barrier_us: float
    # The Triton designs (``_triton_step_model``): the launcher's layout and the parts of
    # ``mma_us`` (empty / 0 for the other designs).
    layout: str = ""
    w_smem_us: float = 0.0  # shared-memory reads (and, streamed, stores) of W_hh's tiles
    staging_us: float = 0.0  # the operand piece's store + load (+ wgmma's accumulator scratch)
    tensor_us: float = 0.0  # padded FLOPs over the rate, or the mma.sync accumulation chain

    @property
    def total_us(self) -> float:
        return (
            self.latency_us
            + max(self.mma_us, self.transfer_us)
            + self.reduce_us
            + self.cell_us
            + self.write_us
            + self.barrier_us
        )


def _mma_plan(
    design: str, rows_w: int, batch: int, k: int, tensor_cores: bool
) -> tuple[str, str, tuple[int, int, int]]:
    """Instruction, W's operand and padded (M, N, K): the orientation that wastes less (the
    CUDA designs; the Triton ones take the launcher's, ``_triton_step_model``).

    W as A: M = the CTA's gate rows (forward) or units (backward), N = batch. W as B: M = batch,
    N = W's rows. wgmma needs M in 64s (one warpgroup), mma.sync M in 16s, N in 8s.
    """
    n_multiple = 8
    best: tuple[int, str, str, tuple[int, int, int]] | None = None
    for w_operand, m, n in (("A", rows_w, batch), ("B", batch, rows_w)):
        instruction = "ffma" if not tensor_cores else ("wgmma" if m >= 64 else "mma.sync")
        m_multiple = 64 if instruction == "wgmma" else 16
        shape = (_round_up(m, m_multiple), _round_up(n, n_multiple), _round_up(k, 16))
        padded = shape[0] * shape[1]
        if best is None or padded < best[0]:
            best = (padded, instruction, w_operand, shape)
    assert best is not None
    return best[1], best[2], best[3]


def _step_model_for_ctas(
    workload: Workload,
    design: str,
    dtype: str,
    direction: str,
    ctas: int,
    tf32: bool,
    hw: HopperAssumptions,
) -> StepModel:
    gates, hidden, batch = workload.num_gates, workload.hidden_size, workload.batch
    e = STEP_DTYPE_BYTES[dtype]
    clk = 1.0 / hw.clock_hz
    # cuda-splitk: clusters of `split` CTAs share one block of units and split K among them.
    split = hw.multicast_ctas if design == "cuda-splitk" else 1
    units = hidden * split // ctas
    tensor_cores = dtype != "float32" or tf32
    if direction == "forward":  # gates_t = W_hh[own gate rows] . h_{t-1}^T
        rows_w, k, operand = gates * units, hidden // split, batch * hidden // split * e
        cell_units = units // split
        writes = (2 + gates) * batch * cell_units * e + batch * cell_units * 4
    else:  # dh_{t-1}[:, own units] = dA_t . W_hh[:, own units]
        rows_w, k = units, gates * hidden // split
        operand = batch * gates * hidden // split * e
        cell_units = units // split
        writes = gates * batch * cell_units * e
    instruction, w_operand, (m, n, kp) = _mma_plan(design, rows_w, batch, k, tensor_cores)

    # W_hh's slice: registers first where the operand may come from registers, then shared
    # memory; the rest is streamed from L2 every step in K-chunks.
    w_bytes = gates * hidden * units * e // split
    register_room = int(hw.register_file_bytes * hw.w_register_fraction)
    if instruction == "wgmma" and w_operand == "B":
        register_room = 0  # wgmma reads B from shared memory only
    smem_room = hw.smem_bytes_per_cta - hw.smem_reserved_bytes
    w_registers = min(w_bytes, register_room)
    w_smem = min(w_bytes - w_registers, smem_room)
    w_streamed = w_bytes - w_registers - w_smem
    if design == "cluster" and w_streamed:
        raise ValueError(
            f"cluster design: W_hh needs {w_bytes} B per CTA over {ctas} CTAs, more than the "
            f"{w_registers + w_smem} B a CTA holds on chip"
        )

    # Product: padded FLOPs over the rate; the mma.sync accumulation chain; shared-memory feed.
    if not tensor_cores:
        rate = hw.ffma_flops_per_clk
    elif dtype == "float32":
        rate = hw.wgmma_tf32_flops_per_clk
    else:
        rate = hw.wgmma_half_flops_per_clk
    if instruction == "mma.sync":
        rate *= hw.mma_sync_fraction
    throughput_clk = 2.0 * m * n * kp / rate
    chain_clk = 0.0
    if instruction == "mma.sync":
        tiles = (m // 16) * (n // 8)
        split_k = max(1, hw.warps_per_cta // tiles)
        chain_clk = -(-(kp // 16) // split_k) * hw.mma_sync_latency_clk
    smem_clk = (operand + w_smem + w_streamed) / hw.smem_bytes_per_clk
    mma_s = max(throughput_clk, chain_clk, smem_clk) * clk

    # Operand arrival: L2 (grid designs; TMA multicast shares one read among 8 CTAs in CUDA)
    # or DSMEM within the cluster.
    if design == "cluster":
        latency_s = hw.dsmem_latency_clk * clk
        transfer_s = operand * (ctas - 1) / ctas / hw.dsmem_bytes_per_clk * clk
        barrier_s = hw.cluster_barrier_clk * clk
    else:
        multicast = hw.multicast_ctas if design == "cuda" and ctas >= hw.multicast_ctas else 1
        chip_bytes = ctas * operand / multicast + ctas * w_streamed
        chip_rate = hw.l2_bytes_per_s if ctas * w_streamed <= hw.l2_bytes else hw.dram_bytes_per_s
        sm_s = (operand + w_streamed) / hw.sm_ingress_bytes_per_clk * clk
        latency_s = hw.l2_latency_clk * clk
        transfer_s = max(chip_bytes / chip_rate, sm_s)
        barrier_s = hw.grid_barrier_s
    reduce_s = 0.0
    if split > 1:  # fp32 partial sums of the cluster's outputs, each CTA reducing 1/split
        reduce_bytes = (split - 1) * rows_w * batch * 4 / split
        reduce_s = (hw.dsmem_latency_clk + hw.cluster_barrier_clk) * clk
        reduce_s += reduce_bytes / hw.dsmem_bytes_per_clk * clk
    mufu = 2 * CELL_TRANSCENDENTALS[(workload.cell, direction)]
    cell_s = (hw.cell_latency_clk + cell_units * batch * mufu / hw.mufu_per_clk) * clk
    write_s = writes / hw.store_bytes_per_clk * clk
    return StepModel(
        design=design,
        dtype=dtype,
        direction=direction,
        tf32=tf32,
        ctas=ctas,
        units_per_cta=units,
        instruction=instruction,
        w_operand=w_operand,
        mma_shape=(m, n, kp),
        w_bytes_per_cta=w_bytes,
        w_register_bytes=w_registers,
        w_smem_bytes=w_smem,
        w_streamed_bytes=w_streamed,
        operand_bytes=operand,
        latency_us=latency_s * 1e6,
        mma_us=mma_s * 1e6,
        transfer_us=transfer_s * 1e6,
        reduce_us=reduce_s * 1e6,
        cell_us=cell_s * 1e6,
        write_us=write_s * 1e6,
        barrier_us=barrier_s * 1e6,
    )


# ----------------------------------------------------------- the Triton kernels as launched
# "triton" is the layout fusedrnn/backends/triton.py::_geometry builds on the assumed H100
# (W_hh resident where it fits shared memory, else streamed), "triton-streamed" the launcher's
# streamed fallback at every size. Geometry from the launcher itself (``triton_geometry``);
# per step (kernels/recurrence.py ``_resident_product`` / ``_streamed_product``):
#
#     step = latency + max(mma, transfer) + cell + write + barrier,
#     mma  = max(tensor, W smem + staging)
#
# * W smem: resident, every step the dot reads the program's W_hh tiles (the B operand,
#   [K, G*units] forward, [G*H, units] or one [H, units] tile per gate backward) from shared
#   memory, once per 64-row wgmma block (wgmma reads B from shared memory per instruction) or
#   once with mma.sync (ldmatrix per warp; the warps split N, the rows are one m16 block at
#   B = 16); streamed, each K-chunk's W piece is stored to and read from shared memory;
# * staging: the operand piece ([B, K / K_TILES] per tile, float32 as the launcher's
#   _shared_memory_bytes counts it: "each float32 operand piece staged before rounding")
#   stored to shared memory and read back by the dot; with wgmma the float32 accumulator's
#   layout conversion ([B, N] float32) goes through shared memory too;
# * tensor: padded 2*B*N*K FLOPs over the wgmma rate (mma.sync: x mma_sync_fraction), or the
#   mma.sync chain (K / k-step dependent mma, k-step 16 bf16 / 8 TF32: triton's dot keeps one
#   accumulator per output fragment and does not split K across warps), the larger;
#   exact float32 ("ieee"): FFMA;
# * transfer: the operand (the float32 exchange buffers h_prev / grad_acc: batch x K x 4 B)
#   and, streamed, W_hh's bytes from L2, over one SM's ingress and the chip's L2 rate;
# * latency: one L2 round trip (resident: the static tile loop's loads do not depend on the
#   dots, so later tiles overlap them; optimistic), or one per K-chunk streamed (a runtime
#   ``while`` loop: no software pipelining, each chunk's loads wait for the previous dot);
# * pair sum (the float32 pair split-K backward, ``split_k`` 2): pair_sum's partial store,
#   flag release, partner's flag acquire and read-back: three L2 round trips and the bytes;
# * cell / write / barrier as the other designs (one grid barrier a step; no norm).


def _triton_launcher():
    try:
        from fusedrnn.backends import triton as launcher
    except ImportError as error:  # pragma: no cover - bench without triton
        raise ValueError(
            f"the Triton step model needs fusedrnn's triton backend: {error}"
        ) from error
    return launcher


def triton_geometry(
    workload: Workload,
    dtype: str,
    *,
    streamed: bool = False,
    hw: HopperAssumptions = HOPPER,
    tf32: bool = True,
) -> dict:
    """fusedrnn/backends/triton.py::_geometry on the assumed H100 (``hw``: its SMs, 227 KiB
    opt-in shared memory, sm_90 so M >= 64 dots are wgmma), no GPU needed. ``streamed``: the
    launcher's streamed fallback (``_geometry(streamed=True)``: K-chunks of ``_STREAM_K``,
    every row in one dot, one tile) where it would keep W_hh resident. ``tf32`` (float32
    only): the launcher's dot precision, "tf32" or "ieee" (exact FMA: less shared memory,
    the forward's K tiles one FMA chunk each)."""
    import types

    launcher = _triton_launcher()
    properties = types.SimpleNamespace(
        multi_processor_count=hw.sms, shared_memory_per_block_optin=hw.smem_bytes_per_cta, major=9
    )
    torch_dtype = getattr(torch, dtype)
    B, H, G = workload.batch, workload.hidden_size, workload.num_gates
    precision = "tf32" if tf32 else "ieee"
    geo = launcher._geometry(
        B, H, G, None, torch_dtype, 0, properties=properties, input_precision=precision
    )
    if streamed and not geo["stream_k"]:  # the launcher's streamed fallback, on request
        geo = launcher._geometry(
            B, H, G, None, torch_dtype, 0, properties=properties, input_precision=precision,
            streamed=True,
        )  # fmt: skip
        geo["stream_reason"] = "forced by the model (the launcher keeps W_hh resident here)"
    return geo


def _triton_step_model(
    workload: Workload,
    design: str,
    dtype: str,
    direction: str,
    tf32: bool,
    hw: HopperAssumptions,
    geo: dict | None = None,
) -> StepModel:
    """One step of the Triton kernels in the launcher's geometry ``geo`` (by default
    ``triton_geometry``'s for ``design``)."""
    if geo is None:
        geo = triton_geometry(
            workload, dtype, streamed=design == "triton-streamed", hw=hw, tf32=tf32
        )
    G, H, batch = workload.num_gates, workload.hidden_size, workload.batch
    e = STEP_DTYPE_BYTES[dtype]
    clk_us = 1e6 / hw.clock_hz
    bp, units, programs, s = geo["BLOCK_B"], geo["units"], geo["programs"], geo["stream_k"]
    tensor_cores = dtype != "float32" or tf32
    forward = direction == "forward"
    wgmma = geo["wgmma_forward" if forward else "wgmma_backward"]
    tiles = geo["k_tiles_forward" if forward else "k_tiles_backward"]
    # split_k 2 (float32 at H = 1024 where 16 units do not fit, 8 units a program): the
    # backward's K rows split over program pairs, summed by kernels/primitives.py pair_sum
    split = not forward and geo.get("split_k", 1) == 2
    if forward:  # [B, H] x [H, GATES_PAD*units]
        n, k, k_real = geo["GATES_PAD"] * units, geo["BLOCK_H"], H
        dots = 1
    elif split and not s:  # pair split-K: half of the K tiles, the pair's 2*units columns
        tile = geo["BLOCK_GH"] // tiles
        tiles = (-(-G * geo["BLOCK_H"] // tile) + 1) // 2  # = the launcher's split_tiles
        n, k, dots = 2 * units, tile * tiles, 1
        k_real = min(k, G * H)  # the first program's half (the larger)
    elif geo["gate_dots"] and not s:  # G dots [B, H] x [H, units], one staging buffer
        n, k, k_real, dots = units, geo["BLOCK_H"], G * H, G
    else:  # [B, G*H] x [G*H, units]
        n, k, k_real, dots = units, geo["BLOCK_GH"], G * H, 1
    k_total = k * dots  # padded K of all the step's dots together
    if s:  # the streamed loop runs ceil(K / STREAM_K) chunks of the unpadded K
        k_total = -(-k_real // s) * s
    w_tile_bytes = e * k_total * n  # the tiles as the launcher holds them (padding included)
    operand = batch * k_real * 4  # the float32 exchange buffer's rows (h_prev / grad_acc)
    if not tensor_cores:
        instruction, rate, k_step = "ffma", hw.ffma_flops_per_clk, 0
    else:
        instruction = "wgmma" if wgmma else "mma.sync"
        rate = hw.wgmma_tf32_flops_per_clk if dtype == "float32" else hw.wgmma_half_flops_per_clk
        rate *= 1.0 if wgmma else hw.mma_sync_fraction
        k_step = 8 if dtype == "float32" else 16
    throughput_clk = 2.0 * bp * n * k_total / rate
    chain_clk = k_total / k_step * hw.mma_sync_latency_clk if instruction == "mma.sync" else 0.0
    if s:  # streamed: each K-chunk's W piece and operand staged (launcher's plan)
        w_smem_bytes = 0
        w_streamed = e * k_real * (G * units if forward else units)
        w_smem_clk = 2 * w_tile_bytes / hw.smem_bytes_per_clk
        x = 4 if wgmma or (not forward and bp >= 64) else e
        chunks = -(-k_real // s)
        latency_clk = chunks * hw.l2_latency_clk
        layout = f"streamed, {chunks} K-chunks of {s}"
    else:
        w_smem_bytes, w_streamed = w_tile_bytes, 0
        m_blocks = -(-bp // 64) if wgmma else 1
        w_smem_clk = w_tile_bytes * m_blocks / hw.smem_bytes_per_clk
        x = 4
        latency_clk = hw.l2_latency_clk
        layout = f"resident, {tiles} K tile{'s' if tiles > 1 else ''}"
        if dots > 1:
            layout = f"resident, {dots} gate dots"
        if split:
            layout += ", pair split-K"
    staged = 2 * bp * k_total * x + (2 * 4 * bp * n if wgmma else 0)
    staging_clk = staged / hw.smem_bytes_per_clk
    tensor_clk = max(throughput_clk, chain_clk)
    mma_clk = max(tensor_clk, w_smem_clk + staging_clk)
    ingress = operand + w_streamed
    transfer_us = max(
        ingress / hw.sm_ingress_bytes_per_clk * clk_us,
        programs * ingress / hw.l2_bytes_per_s * 1e6,
    )
    reduce_us = 0.0
    if split and not s:  # pair_sum: store the [B, 2*units] float32 partial, release the flag,
        # acquire the partner's, read both halves of the own units: three L2 round trips
        reduce_clk = 3 * hw.l2_latency_clk + batch * n * 4 / hw.store_bytes_per_clk
        reduce_us = (reduce_clk + batch * n * 4 / hw.sm_ingress_bytes_per_clk) * clk_us
    mufu = 2 * CELL_TRANSCENDENTALS[(workload.cell, direction)]
    cell_us = (hw.cell_latency_clk + units * bp * mufu / hw.mufu_per_clk) * clk_us
    if forward:  # h_prev (the exchange), c_prev (LSTM), the G gates: float32; y in the dtype
        c_state = 4 if workload.cell == "lstm" else 0
        writes = batch * units * (4 + c_state + 4 * G + e)
    else:  # grad_acc (float32, the exchange) and grad_xg (the dtype) of the G*units columns
        writes = batch * G * units * (4 + e)
    return StepModel(
        design=design,
        dtype=dtype,
        direction=direction,
        tf32=tf32,
        ctas=programs,
        units_per_cta=units,
        instruction=instruction,
        w_operand="B",
        mma_shape=(bp, n, k_total),
        w_bytes_per_cta=w_smem_bytes + w_streamed,
        w_register_bytes=0,
        w_smem_bytes=w_smem_bytes,
        w_streamed_bytes=w_streamed,
        operand_bytes=operand,
        latency_us=latency_clk * clk_us,
        mma_us=mma_clk * clk_us,
        transfer_us=transfer_us,
        reduce_us=reduce_us,
        cell_us=cell_us,
        write_us=writes / hw.store_bytes_per_clk * clk_us,
        barrier_us=hw.grid_barrier_s * 1e6,
        layout=layout,
        w_smem_us=w_smem_clk * clk_us,
        staging_us=staging_clk * clk_us,
        tensor_us=tensor_clk * clk_us,
    )


def tensor_core_step_model(
    workload: Workload,
    design: str,
    dtype: str,
    direction: str,
    *,
    tf32: bool = True,
    ctas: int | None = None,
    hw: HopperAssumptions = HOPPER,
) -> StepModel:
    """Predicted time of one recurrent step of ``workload`` in a tensor-core design.

    ``design``: "cuda" (grid of CTAs, grid barrier, h_{t-1} by TMA multicast within 8-CTA
    clusters), "cuda-splitk" (grid of 8-CTA clusters; a cluster owns a block of units and its
    CTAs split K, then reduce the fp32 partial sums over DSMEM), "triton" (the Triton kernels
    as fusedrnn/backends/triton.py lays them out on the assumed H100: its grid, W_hh resident
    in shared memory as the B operand in K tiles where it fits, else streamed;
    ``_triton_step_model``), "triton-streamed" (the launcher's streamed layout, W_hh read from
    L2 in K-chunks every step, at every size) or "cluster" (one 16-CTA cluster, DSMEM
    exchange, hardware cluster barrier; raises ValueError where W_hh does not fit in it).
    ``ctas`` None picks, for the CUDA grid designs, the fastest of 16, 32, 64 and 128 CTAs that
    divides H; the Triton designs take the launcher's grid (another ``ctas`` is a ValueError).
    ``tf32`` applies to float32 only (False: exact FP32 FMA). See docs/kernels-v2.md §8.
    """
    if design not in STEP_DESIGNS:
        raise ValueError(f"unknown design {design!r}; expected one of {STEP_DESIGNS}")
    if direction not in STEP_DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {STEP_DIRECTIONS}")
    if dtype not in STEP_DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {tuple(STEP_DTYPE_BYTES)}")
    if (workload.cell, direction) not in CELL_TRANSCENDENTALS:
        raise ValueError(f"no step model for cell {workload.cell!r}")
    if design.startswith("triton"):
        model = _triton_step_model(workload, design, dtype, direction, tf32, hw)
        if ctas is not None and ctas != model.ctas:
            raise ValueError(f"the Triton launcher runs {model.ctas} programs here, not {ctas}")
        return model
    if design == "cluster":
        candidates = [hw.cluster_ctas] if ctas is None else [ctas]
        if candidates[0] > hw.cluster_ctas:
            raise ValueError(f"a cluster holds at most {hw.cluster_ctas} CTAs, not {ctas}")
    elif ctas is None:
        candidates = [c for c in (16, 32, 64, 128) if c <= hw.sms]
    else:
        candidates = [ctas]
    split = hw.multicast_ctas if design == "cuda-splitk" else 1
    hidden = workload.hidden_size
    candidates = [
        c
        for c in candidates
        if c % split == 0 and hidden % (c // split) == 0 and (hidden * split // c) % split == 0
    ]
    if not candidates:
        raise ValueError(f"H={workload.hidden_size} does not split evenly over {ctas} CTAs")
    models = [
        _step_model_for_ctas(workload, design, dtype, direction, c, tf32, hw) for c in candidates
    ]
    return min(models, key=lambda model: model.total_us)


def outside_gemm_us_per_step(
    workload: Workload, dtype: str, mode: str, *, tf32: bool = True, hw: HopperAssumptions = HOPPER
) -> float:
    """The whole-sequence GEMMs around the loop, per step: the input projection (forward);
    plus dx, dW_ih and dW_hh (train), at the measured / assumed matmul rate."""
    gh = workload.num_gates * workload.hidden_size
    one = 2.0 * workload.batch * gh * workload.input_size
    flops = one if mode == "forward" else 3 * one + 2.0 * workload.batch * gh * workload.hidden_size
    if dtype != "float32":
        rate = hw.matmul_half_flops_per_s
    else:
        rate = hw.matmul_tf32_flops_per_s if tf32 else hw.matmul_fp32_flops_per_s
    return flops / rate * 1e6


def predicted_us_per_step(
    workload: Workload, design: str, dtype: str, mode: str, *, tf32: bool = True
) -> float:
    """One layer and direction: forward (+ backward) recurrence and the GEMMs around it."""
    total = tensor_core_step_model(workload, design, dtype, "forward", tf32=tf32).total_us
    if mode == "train":
        total += tensor_core_step_model(workload, design, dtype, "backward", tf32=tf32).total_us
    return total + outside_gemm_us_per_step(workload, dtype, mode, tf32=tf32)


def step_model_markdown() -> str:
    """The prediction tables of docs/kernels-v2.md (``python3 -m bench.floor`` prints them)."""
    from .workloads import WORKLOADS

    lines = [
        "| workload | dtype | direction | design | CTAs | MMA (M,N,K) | W/CTA KiB (reg+smem+L2) "
        "| latency | mma | transfer | reduce | cell | write | barrier | **µs/step** |",
        "|---|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("W1", "W6a", "W2", "W3"):
        for dtype in ("float32", "bfloat16"):
            for direction in STEP_DIRECTIONS:
                for design in STEP_DESIGNS:
                    try:
                        m = tensor_core_step_model(WORKLOADS[name], design, dtype, direction)
                    except ValueError:
                        continue
                    w = (
                        f"{m.w_register_bytes // 1024}+{m.w_smem_bytes // 1024}"
                        f"+{m.w_streamed_bytes // 1024}"
                    )
                    lines.append(
                        f"| {name} | {dtype} | {direction} | {design} | {m.ctas} | "
                        f"{m.instruction} {m.w_operand}=W {m.mma_shape} | {w} | "
                        f"{m.latency_us:.2f} | {m.mma_us:.2f} | {m.transfer_us:.2f} | "
                        f"{m.reduce_us:.2f} | {m.cell_us:.2f} | {m.write_us:.2f} | "
                        f"{m.barrier_us:.2f} | **{m.total_us:.2f}** |"
                    )
    lines += [
        "",
        "| workload | dtype | kernel: design fwd / bwd | forward µs/step | train µs/step "
        "| goal (issue 17) | cuDNN train µs/step needed to meet it |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    goals = {"W1": 3.0, "W6a": 2.0, "W2": 1.5, "W3": 1.0}
    kernels = {
        "CUDA": ("cuda", "cuda-splitk", "cluster"),
        "Triton": ("triton",),
        "Triton (W_hh streamed)": ("triton-streamed",),
    }
    for name, ratio in goals.items():
        for dtype in ("float32", "bfloat16"):
            for kernel, designs in kernels.items():
                best = {}
                for direction in STEP_DIRECTIONS:
                    options = []
                    for design in designs:
                        try:
                            options.append(
                                tensor_core_step_model(WORKLOADS[name], design, dtype, direction)
                            )
                        except ValueError:
                            continue
                    best[direction] = min(options, key=lambda model: model.total_us)
                gemm_fwd = outside_gemm_us_per_step(WORKLOADS[name], dtype, "forward")
                gemm_train = outside_gemm_us_per_step(WORKLOADS[name], dtype, "train")
                forward = best["forward"].total_us + gemm_fwd
                train = best["forward"].total_us + best["backward"].total_us + gemm_train
                goal = f"≥ {ratio:g}× cuDNN"
                if name == "W1":
                    goal += f"; forward ≤ 3 µs/step: {'met' if forward <= 3.0 else 'missed'}"
                lines.append(
                    f"| {name} | {dtype} | {kernel}: {best['forward'].design} / "
                    f"{best['backward'].design} | {forward:.2f} | {train:.2f} | {goal} | "
                    f"≥ {ratio * train:.1f} |"
                )
    return "\n".join(lines)


TRITON_MODEL_LABEL = "model, unverified until a GPU runs bench/gpu_check.sh"


def triton_model_markdown() -> str:
    """docs/kernels-v2.md §8.3: the Triton step model's terms at W1-W3 (``python3 -m
    bench.floor`` prints it after §8.2's tables)."""
    from .workloads import WORKLOADS

    lines = [
        f"Triton per step, µs ({TRITON_MODEL_LABEL}):",
        "",
        "| workload | dtype | direction | design | layout | programs x units | dot (M,N,K) "
        "| W smem / L2 KiB | operand KiB | latency | W smem | staging | tensor | mma "
        "| transfer | pair sum | cell | write | barrier | **µs/step** |",
        "|---|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
        "|---:|",
    ]
    for name in ("W1", "W2", "W3"):
        for dtype in ("float32", "bfloat16"):
            for direction in STEP_DIRECTIONS:
                for design in ("triton", "triton-streamed"):
                    m = tensor_core_step_model(WORKLOADS[name], design, dtype, direction)
                    lines.append(
                        f"| {name} | {dtype} | {direction} | {design} | {m.layout} | "
                        f"{m.ctas} x {m.units_per_cta} | {m.instruction} {m.mma_shape} | "
                        f"{m.w_smem_bytes / 1024:g} / {m.w_streamed_bytes / 1024:g} | "
                        f"{m.operand_bytes / 1024:g} | {m.latency_us:.2f} | {m.w_smem_us:.2f} | "
                        f"{m.staging_us:.2f} | {m.tensor_us:.2f} | {m.mma_us:.2f} | "
                        f"{m.transfer_us:.2f} | {m.reduce_us:.2f} | {m.cell_us:.2f} | "
                        f"{m.write_us:.2f} | {m.barrier_us:.2f} | **{m.total_us:.2f}** |"
                    )
    return "\n".join(lines)


# ------------------------------------------------------------------ the CUDA kernels as built
# docs/kernels-v2.md §5.0: csrc/cuda's persistent kernels as they are (one block per SM up to
# H, the launch plan's W placement, mma.sync m16n8k16 / m16n8k8 on 16 x 8 tiles, split-K
# across the 8 warps, batch blocks of 64 rows), each in its phased form and with the cell
# (forward) or the cell backward on the accumulators (fused). Unmeasured: HopperAssumptions
# plus the two guesses below.
BUILT_FORMS = ("phased", "fused")
# Guess: the phased form's elementwise phases per 64-row batch block (about ten __syncthreads-
# separated phases and the gate tile's round trip through shared memory).
PHASED_ELEMENTWISE_US = 0.5
# Guess: split-K partials through shared memory and one __syncthreads before the fused cell.
SPLITK_REDUCE_CLK = 80.0


@dataclasses.dataclass(frozen=True)
class BuiltStepModel:
    """Predicted time of one step of a built CUDA kernel (µs per term) and its plan.

    step = transfer + product + elementwise + barrier, with transfer = max(one SM's operand
    ingress, the chip's L2 reads of every block's copy), product = batch blocks x the
    accumulator chain (k-steps / ksplit x the mma.sync latency; a warp's tiles are independent
    chains), elementwise = the phased guess per batch block, or (fused) the split-K reduction
    + one L2 round trip (xg / b_hh forward, the saved tensors backward: not prefetched) + the
    cell chains one thread runs (cells_per_thread x cell_latency_clk) per batch block."""

    workload: str
    dtype: str
    direction: str
    form: str
    grid: int
    rows: int  # rows of the block's W slice (the product's M; fused forward: gate-interleaved)
    k: int
    placement: str  # "tensor cores" | "FMA, W in shared memory" | "FMA, W from L2"
    ksplit: int  # warps per tile or work item (the first batch block)
    batch_blocks: int
    cells_per_thread: int  # fused: cell (backward) elements one thread runs per batch block
    operand_bytes: int  # the exchange every block reads per step
    transfer_us: float
    product_us: float
    elementwise_us: float
    barrier_us: float

    @property
    def total_us(self) -> float:
        return self.transfer_us + self.product_us + self.elementwise_us + self.barrier_us


def _native_plan(workload: Workload, dtype: str, backward: bool, fused: bool, hw) -> dict | None:
    """csrc/cuda/launch_plan.h's plan for these sizes on the assumed H100 (None without _C)."""
    try:
        from fusedrnn.backends import native
    except ImportError:  # pragma: no cover - bench without the package
        return None
    module, _ = native.load_native()
    if module is None:
        return None
    return module.cuda_launch_plan(
        B=workload.batch,
        G=workload.num_gates,
        H=workload.hidden_size,
        storage_bytes=STEP_DTYPE_BYTES[dtype],
        backward=backward,
        want_tensor_cores=True,
        sms=hw.sms,
        smem_per_block_optin=hw.smem_bytes_per_cta,
        smem_per_sm=hw.smem_bytes_per_cta + 1024,
        smem_reserved_per_block=1024,
        max_threads_per_sm=2048,
        want_fused_cell=fused,
    )


def built_step_model(
    workload: Workload,
    dtype: str,
    direction: str,
    form: str,
    *,
    hw: HopperAssumptions = HOPPER,
    plan: dict | None = None,
) -> BuiltStepModel:
    """One step of the built forward or backward kernel (float32 under TF32), phased or fused.
    ``plan`` (the launch plan's dict; by default _C's for ``hw``) decides where W lives and
    whether the fused form runs; where it does not (W from L2), the model is the phased FMA
    path's transfer with the FMA product over the streamed W (ffma rate)."""
    if direction not in STEP_DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}")
    if form not in BUILT_FORMS:
        raise ValueError(f"unknown form {form!r}; expected one of {BUILT_FORMS}")
    backward = direction == "backward"
    B, H, G = workload.batch, workload.hidden_size, workload.num_gates
    if plan is None:
        plan = _native_plan(workload, dtype, backward, form == "fused", hw)
    grid = min(H, hw.sms)
    hs = -(-H // grid)
    tensor_cores = plan is None or plan["tensor_cores"]
    fused = form == "fused" and (plan is None or plan["fused_cell"])
    if plan is not None and not plan["w_in_smem"]:
        placement = "FMA, W from L2"
    else:
        placement = "tensor cores" if tensor_cores else "FMA, W in shared memory"
    k = G * H if backward else H
    e = 4 if backward or dtype == "float32" or not tensor_cores else 2
    operand = B * k * e
    clk_us = 1e6 / hw.clock_hz
    transfer = max(
        operand / hw.sm_ingress_bytes_per_clk * clk_us, grid * operand / hw.l2_bytes_per_s * 1e6
    )
    nbr, batch_blocks = min(B, 64), -(-B // 64)
    n_tiles = -(-nbr // 8)
    if backward:
        rows = hs
        work = -(-rows // 16) * n_tiles
        per_item = 2 * min(2, -(-rows // 8))  # C fragment rows lane/4 (+ 8), two columns
    elif fused:
        groups = -(-hs // 8)
        rows = groups * -(-G // 2) * 16
        work = groups * n_tiles
        per_item = 2  # one unit, two batch columns
    else:
        rows, per_item = G * hs, 0
        work = -(-rows // 16) * n_tiles
    warps = hw.warps_per_cta
    ksplit = warps // work if work < warps else 1
    if tensor_cores:
        k_step = 8 if dtype == "float32" else 16
        chain = -(-_round_up(k, k_step) // (k_step * ksplit))
        product = batch_blocks * chain * hw.mma_sync_latency_clk * clk_us
    else:  # block_matvec: every FMA of the block's rows x B x K at the FFMA rate
        product = 2.0 * rows * B * k / hw.ffma_flops_per_clk * clk_us
        if placement == "FMA, W from L2":
            transfer += rows * k * STEP_DTYPE_BYTES[dtype] / hw.sm_ingress_bytes_per_clk * clk_us
    if fused:
        cells = per_item * -(-work // (warps // ksplit))
        reduce_clk = SPLITK_REDUCE_CLK if ksplit > 1 else 0.0
        elementwise = (
            batch_blocks * (reduce_clk + hw.l2_latency_clk + cells * hw.cell_latency_clk) * clk_us
        )
    else:
        cells = 0
        elementwise = batch_blocks * PHASED_ELEMENTWISE_US
    return BuiltStepModel(
        workload=workload.name,
        dtype=dtype,
        direction=direction,
        form="fused" if fused else "phased",
        grid=grid,
        rows=rows,
        k=k,
        placement=placement,
        ksplit=ksplit,
        batch_blocks=batch_blocks,
        cells_per_thread=cells,
        operand_bytes=operand,
        transfer_us=transfer,
        product_us=product,
        elementwise_us=elementwise,
        barrier_us=hw.grid_barrier_s * 1e6,
    )


def built_model_markdown() -> str:
    """docs/kernels-v2.md §5.0's per-step table of the built kernels (``python3 -m
    bench.floor`` prints it after §8's)."""
    from .workloads import WORKLOADS

    lines = [
        "| workload | dtype | direction | form | placement | rows x K | ksplit | batch blocks "
        "| cells/thread | operand KiB | transfer | product | elementwise | barrier "
        "| **µs/step** |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("W1", "W2", "W3"):
        for dtype in ("float32", "bfloat16"):
            for direction in STEP_DIRECTIONS:
                for form in BUILT_FORMS:
                    m = built_step_model(WORKLOADS[name], dtype, direction, form)
                    asked = " (plan: phased)" if form == "fused" and m.form == "phased" else ""
                    lines.append(
                        f"| {name} | {dtype} | {direction} | {form}{asked} | {m.placement} | "
                        f"{m.rows} x {m.k} | {m.ksplit} | {m.batch_blocks} | "
                        f"{m.cells_per_thread} | {m.operand_bytes / 1024:g} | "
                        f"{m.transfer_us:.2f} | {m.product_us:.2f} | {m.elementwise_us:.2f} | "
                        f"{m.barrier_us:.2f} | **{m.total_us:.2f}** |"
                    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(step_model_markdown())
    print()
    print(triton_model_markdown())
    print()
    print(built_model_markdown())
