"""Timing and memory measurement.

Method: ``warmup`` untimed runs, then ``repeats`` timed runs, each timed on its own. The
providers of one case are timed interleaved (:func:`time_interleaved`): round r times every
provider once (A B C, then B C A, ...), so a slow spell of a shared machine hits all of them
alike and each round gives one paired ratio. With ``min_sample_s`` one sample (one provider in
one round) is the mean of as many back-to-back calls as make it last at least that long
(sized from the last warm-up call): a call of a fraction of a millisecond jitters by tens of
percent from one call to the next (a timer tick, a cache or TLB refill, a page fault lands on
it whole), the mean of k calls by about 1/sqrt(k) of that. On CUDA
every run is bracketed by CUDA events on the current stream and the end event is waited on
(so the time is the GPU's, including every kernel the call launched); on the CPU every run is
timed with ``time.perf_counter``, or, with one torch thread, with the process's CPU time
(``time.process_time``, see :data:`CLOCKS`). Reported: median and the 20th/80th percentiles.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over one extra run after
``reset_peak_memory_stats`` (the process's peak during that run: weights, inputs, outputs,
activations and workspace). On the CPU it is not measured: torch has no CPU allocator peak
counter and ``tracemalloc`` cannot see torch's allocations, so the cell stays empty and
``peak_mem_method`` says so.
"""

from __future__ import annotations

import dataclasses
import gc
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

    times_s: list[float]  # one per round: the mean time of one call in that round's sample
    warmup: int
    first_s: float  # the first warm-up run (compile, autotune and allocation included)
    calls_per_sample: int = 1  # back-to-back calls averaged into each of times_s

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


def _timed_once(fn: Callable[[], object], device: torch.device, clock: str = "wall") -> float:
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    now = time.process_time if clock == "cpu" else time.perf_counter
    begin = now()
    fn()
    return now() - begin


def cpu_clock(device: torch.device) -> str:
    """The clock :func:`time_interleaved` uses by default on ``device``: on a CPU with one
    torch thread the process's CPU time ("cpu"), else wall time ("wall")."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return "cpu"
    return "wall"


CLOCKS = {
    "wall": "wall time (CUDA events on a GPU, time.perf_counter on a CPU)",
    "cpu": "process CPU time (time.process_time): with one thread it is the wall time the "
    "call takes on an idle machine, and time the OS gives to other processes on a shared "
    "machine is not counted",
}


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


def time_interleaved(
    calls: dict[str, tuple[Callable[[], object], Callable[[], object] | None]],
    device: torch.device,
    *,
    warmup: int = 3,
    repeats: int = 10,
    max_seconds: float | None = None,
    min_repeats: int = 3,
    clock: str = "wall",
    min_sample_s: float = 0.0,
) -> dict[str, Timing]:
    """Time several callables ``{name: (fn, setup)}`` round by round (see the module
    docstring): every name gets the same number of timed runs, ``times_s[r]`` of each taken
    in round ``r``. The order rotates each round so no provider always runs first.

    ``max_seconds`` caps the timed part per provider on average: when the last warm-up
    round says ``repeats`` rounds would take longer than ``max_seconds * len(calls)``, fewer
    rounds are taken (never fewer than ``min_repeats``). ``clock``: see :data:`CLOCKS`
    (CPU only; a GPU is always timed with CUDA events). ``min_sample_s``: each sample is the
    mean of ``ceil(min_sample_s / last warm-up time)`` calls of that name (at least one),
    each after its own untimed ``setup``; the count is ``Timing.calls_per_sample``.
    """
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; known: {', '.join(CLOCKS)}")
    names = list(calls)
    warmup = max(1, warmup)
    synchronize(device)
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for index in range(warmup):
        for name in names:
            fn, setup = calls[name]
            if setup is not None:
                setup()
            last[name] = _timed_once(fn, device, clock)
            if index == 0:
                first[name] = last[name]
    calls_per_sample = {
        name: max(1, math.ceil(min_sample_s / last[name])) if last[name] > 0 else 1
        for name in names
    }
    round_s = sum(last[name] * calls_per_sample[name] for name in names)
    if max_seconds is not None and round_s > 0:
        repeats = max(min_repeats, min(repeats, int(max_seconds * len(names) / round_s)))
    times: dict[str, list[float]] = {name: [] for name in names}
    # As timeit does: no cyclic garbage collection inside the timed rounds (a collection
    # pass would land on whichever call happened to trigger it).
    gc.collect()
    collecting = gc.isenabled()
    gc.disable()
    try:
        for r in range(max(1, repeats)):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                fn, setup = calls[name]
                count = calls_per_sample[name]
                total = 0.0
                for _ in range(count):
                    if setup is not None:
                        setup()
                    total += _timed_once(fn, device, clock)
                times[name].append(total / count)
    finally:
        if collecting:
            gc.enable()
    return {
        name: Timing(times[name], warmup, first[name], calls_per_sample[name]) for name in names
    }


def paired_ratios(base: Timing, other: Timing) -> list[float]:
    """Per round, ``base time / other time`` (speed-up of ``other`` over ``base``) from two
    interleaved timings."""
    return [b / o for b, o in zip(base.times_s, other.times_s) if o > 0]


def paired_ratio(base: Timing, other: Timing) -> float:
    """Median of :func:`paired_ratios`."""
    return percentile(paired_ratios(base, other), 50)


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
