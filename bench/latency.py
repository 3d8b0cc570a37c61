"""B=1 inference latency: torch.nn against a fusedrnn backend, interleaved call by call.

One torch thread, ``time.process_time`` per call (CPU time of this process, so another
process on a shared machine disturbs it less than wall time), ``no_grad``, B=1, I=H. Each
case alternates a torch.nn call and a fusedrnn call with the same weights and input, so a
load change on the machine hits both alike; it prints medians and the 20th-80th percentile
range in ms and the ratio of the medians.

    PYTHONPATH=$PWD python3 bench/latency.py                  # LSTM and GRU, T=1 and T=256
    PYTHONPATH=$PWD python3 bench/latency.py --calls 400 --steps 1,16 --backend reference
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fusedrnn

_CLASSES = {"lstm": (torch.nn.LSTM, fusedrnn.LSTM), "gru": (torch.nn.GRU, fusedrnn.GRU)}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _timed(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def measure(cell: str, steps: int, size: int, calls: int, backend: str) -> dict[str, list[float]]:
    """Per-call CPU seconds of torch.nn and fusedrnn (``backend``), interleaved."""
    torch_cls, fused_cls = _CLASSES[cell]
    reference = torch_cls(size, size)
    fused = fused_cls(size, size, backend=backend)
    fused.load_state_dict(reference.state_dict())
    reference.eval()
    fused.eval()
    x = torch.randn(steps, 1, size)
    times: dict[str, list[float]] = {"torch": [], "fusedrnn": []}
    with torch.no_grad():
        for _ in range(max(3, calls // 20)):  # warm up both (allocator, ISA dispatch, caches)
            reference(x)
            fused(x)
        for _ in range(calls):
            times["torch"].append(_timed(lambda: reference(x)))
            times["fusedrnn"].append(_timed(lambda: fused(x)))
    if fused.last_backend != backend:
        raise RuntimeError(f"fusedrnn ran {fused.last_backend!r}, not {backend!r}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--steps", default="1,256", help="comma-separated sequence lengths T")
    parser.add_argument("--size", type=int, default=128, help="I = H")
    parser.add_argument("--calls", type=int, default=400, help="calls per provider at T=1")
    parser.add_argument("--backend", default="host")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, B=1, I=H={args.size}, process_time per call")
    print(f"{'case':<12}{'torch.nn ms (p20-p80)':>26}{'fusedrnn ms (p20-p80)':>26}{'ratio':>8}")
    for cell in args.cells.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            # fewer calls for long sequences, at least 50 (each call is then ~T times longer)
            calls = max(50, args.calls // max(1, steps // 16))
            times = measure(cell, steps, args.size, calls, args.backend)
            cols = []
            for name in ("torch", "fusedrnn"):
                ms = [t * 1e3 for t in times[name]]
                med, lo, hi = statistics.median(ms), _percentile(ms, 0.2), _percentile(ms, 0.8)
                cols.append((med, f"{med:.3f} ({lo:.3f}-{hi:.3f})"))
            ratio = cols[1][0] / cols[0][0]
            print(f"{cell} T={steps:<6}{cols[0][1]:>26}{cols[1][1]:>26}{ratio:>8.2f}")


if __name__ == "__main__":
    main()
