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
