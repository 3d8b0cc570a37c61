"""Timing and memory measurement.

Method: ``warmup`` untimed runs, then ``repeats`` timed runs, each timed on its own. On CUDA
every run is bracketed by CUDA events on the current stream and the end event is waited on
(so the time is the GPU's, including every kernel the call launched); on the CPU every run is
timed with ``time.perf_counter``. Reported: median and the 20th/80th percentiles.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over one extra run after
``reset_peak_memory_stats`` (the process's peak during that run: weights, inputs, outputs,
activations and workspace). On the CPU it is not measured: torch has no CPU allocator peak
counter and ``tracemalloc`` cannot see torch's allocations, so the cell stays empty and
``peak_mem_method`` says so.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import torch

CPU_MEMORY_METHOD = (
    "not measured on CPU (torch has no CPU allocator peak counter; tracemalloc cannot see "
    "torch's allocations)"
)
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated over one run (process peak)"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclasses.dataclass
class Timing:
    """Times of the timed runs (seconds) and what was taken."""

    times_s: list[float]
    warmup: int
    first_s: float  # the first warm-up run (compile, autotune and allocation included)

    @property
    def median_s(self) -> float:
        return percentile(self.times_s, 50)

    @property
    def p20_s(self) -> float:
        return percentile(self.times_s, 20)

    @property
    def p80_s(self) -> float:
        return percentile(self.times_s, 80)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def time_callable(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 3,
    repeats: int = 10,
    setup: Callable[[], object] | None = None,
    max_seconds: float | None = None,
    min_repeats: int = 3,
) -> Timing:
    """Warm up, then time ``repeats`` runs of ``fn`` (``setup`` runs untimed before each).

    ``max_seconds`` caps the timed part: when the last warm-up run says ``repeats`` runs
    would take longer, fewer are taken (never fewer than ``min_repeats``).
    """
    warmup = max(1, warmup)  # at least one: it compiles/allocates and sizes the estimate
    synchronize(device)
    first = last = 0.0
    for index in range(warmup):
        if setup is not None:
            setup()
        last = _timed_once(fn, device)
        if index == 0:
            first = last
    if max_seconds is not None and last > 0:
        repeats = max(min_repeats, min(repeats, int(max_seconds / last)))
    times = []
    for _ in range(max(1, repeats)):
        if setup is not None:
            setup()
        times.append(_timed_once(fn, device))
    return Timing(times_s=times, warmup=warmup, first_s=first)


def peak_memory(
    fn: Callable[[], object], device: torch.device, setup: Callable[[], object] | None = None
) -> tuple[int | None, str]:
    """(peak bytes of one run or None, how it was measured / why not)."""
    if device.type != "cuda":
        return None, CPU_MEMORY_METHOD
    if setup is not None:
        setup()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device)), CUDA_MEMORY_METHOD
