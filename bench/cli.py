"""``python -m bench``: run the benchmark matrix, append to the CSV, plot, print a table.

Examples::

    python -m bench --quick                      # CPU smoke test, seconds, into bench/out/
    python -m bench --quick --out /tmp/b          # same, elsewhere
    python -m bench --device cuda --sweep         # every workload + the B/H sweeps on a GPU
    python -m bench --workloads W1,W4 --providers torch,cuda,triton --dtypes bfloat16
    python -m bench --list                        # workloads, providers and availability

Every (workload, dtype, mode, provider) becomes one row of ``<out>/bench.csv`` (schema:
``bench/schema.py``), appended as soon as it is measured; a provider that cannot run a case
is written as ``skipped`` with the reason. ``<out>`` also receives ``env.json`` (versions,
backend availability, settings), ``ceilings.json`` (the floor model's device ceilings) and
the PNG plots of this run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import providers, runner, workloads
from .workloads import DTYPES, MODES

# Quick mode's timed runs per provider. The verdict is taken from the 95 % confidence
# interval of the median per-round ratio, [x_(k), x_(n+1-k)]: with 21 rounds k = 6, about
# the ratios' p25–p75, hardly narrower than their p20–p80; with 41, k = 14, about p32–p68.
# The whole `python -m bench --quick --no-plots` took 21 s with 21, 26 s with 41 and 34 s
# with 63 rounds on the shared 2-core machine (load about 3).
QUICK_REPEATS = 41
# Quick mode's shortest timed sample: its calls take 0.1-1 ms, whose call-to-call jitter
# (tens of percent) made the p20-p80 spreads so wide that a verdict could flip between two
# runs; each sample averages as many back-to-back calls as take this long (see
# bench/timing.py), which narrows the spreads and costs a few seconds in all.
QUICK_MIN_SAMPLE_MS = 5.0
# Quick mode takes each case's rounds in this many passes over the matrix: the ratio of two
# providers on the tiny shapes moved between consecutive runs (0.70 vs 0.89) by more than
# its spread within one case, i.e. with the machine's state; rounds spread over the run see
# that state change and widen the ratio spread the verdict is taken from.
QUICK_PASSES = 3


def _names(value: str | None, known: Sequence[str], what: str) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="fusedrnn benchmark suite: fusedrnn's backends against torch.nn.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CPU smoke test: tiny shapes (B=4..16, I=H=32, T=8..16), float32, providers "
        f"torch,reference,host, 1 thread, 3 warm-up + {QUICK_REPEATS} timed runs, each the mean of calls "
        f"totalling >= {QUICK_MIN_SAMPLE_MS:g} ms (seconds)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument(
        "--workloads",
        default=None,
        help="comma-separated: W1..W8 (W6 = W6a,W6b), C1..C8, SB<B>, SH<H>",
    )
    parser.add_argument(
        "--providers", default=None, help=f"comma-separated from {','.join(providers.PROVIDERS)}"
    )
    parser.add_argument("--dtypes", default=None, help="comma-separated: float32,bfloat16")
    parser.add_argument("--modes", default=None, help="comma-separated: forward,train")
    parser.add_argument("--sweep", action="store_true", help="add the batch/hidden-size sweeps")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed runs per provider and case (default 10; --quick {QUICK_REPEATS})",
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=None,
        help="take each case's rounds in this many passes over the whole matrix (every case "
        f"prepared at once; default 1, --quick {QUICK_PASSES})",
    )
    parser.add_argument(
        "--min-sample-ms",
        type=float,
        default=None,
        help="shortest timed sample: each is the mean of as many back-to-back calls as take "
        f"this long (default 0: one call; --quick {QUICK_MIN_SAMPLE_MS:g})",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed runs before timing (default 3)"
    )
    parser.add_argument(
        "--max-case-s",
        type=float,
        default=20.0,
        help="cap on the timed part of one case, in seconds per provider: fewer rounds (>= 3) "
        "for slow cases (20)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop measuring after this many seconds; later cases are written as skipped",
    )
    parser.add_argument(
        "--compile-max-steps",
        type=int,
        default=providers.DEFAULT_COMPILE_MAX_STEPS,
        help="reference-compiled skips workloads with T above this (default 0: no limit; "
        "a guard in case torch.compile unrolls the time loop again)",
    )
    parser.add_argument(
        "--out", type=Path, default=runner.DEFAULT_OUT, help="output folder (bench/out/)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="start a new bench.csv instead of appending"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (torch.set_num_threads); --quick defaults to 1 so a shared CI "
        "machine gives stable numbers, otherwise torch's default",
    )
    parser.add_argument(
        "--clock",
        choices=("auto", "wall", "cpu"),
        default="auto",
        help="CPU timing clock: cpu = process CPU time, wall = time.perf_counter; auto "
        "(default): cpu with one torch thread (immune to other processes on a shared "
        "machine), else wall. A GPU is always timed with CUDA events",
    )
    parser.add_argument("--no-plots", action="store_true", help="do not draw PNGs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--list", action="store_true", help="list workloads, providers and backend availability"
    )
    return parser


def _list(quick: bool) -> int:
    import fusedrnn

    table = workloads.QUICK_WORKLOADS if quick else workloads.WORKLOADS
    print("workloads" + (" (quick sizes)" if quick else "") + ":")
    for w in [*table.values(), *workloads.sweep_workloads(quick).values()]:
        extra = f" {w.regularizers}" if w.regularizers else ""
        extra += " packed" if w.packed else ""
        extra += " bidirectional" if w.bidirectional else ""
        print(
            f"  {w.name:5} {w.cell} B={w.batch} I={w.input_size} H={w.hidden_size} "
            f"T={w.steps} layers={w.layers}{extra} [{w.suite}]"
        )
    print("providers:")
    availability = fusedrnn.available_backends()
    for name in providers.PROVIDERS:
        reason = availability.get(providers.backend_of(name))
        print(f"  {name:18} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        return _list(args.quick)

    from .env import resolve_device

    device = resolve_device(args.device)
    quick = args.quick
    threads = args.threads if args.threads is not None else (1 if quick else None)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        chosen = workloads.select(args.workloads, quick=quick, sweep=args.sweep)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    provider_names = _names(args.providers, providers.PROVIDERS, "providers") or list(
        providers.QUICK_PROVIDERS if quick else providers.PROVIDERS
    )
    dtypes = _names(args.dtypes, tuple(DTYPES), "dtypes") or (
        ["float32"] if quick else list(DTYPES)
    )
    modes = _names(args.modes, MODES, "modes") or list(MODES)
    warmup = args.warmup if args.warmup is not None else 3
    repeats = args.repeats if args.repeats is not None else (QUICK_REPEATS if quick else 10)
    min_sample_ms = args.min_sample_ms
    if min_sample_ms is None:
        min_sample_ms = QUICK_MIN_SAMPLE_MS if quick else 0.0

    session = runner.Session(
        device,
        quick=quick,
        warmup=warmup,
        repeats=repeats,
        max_case_s=args.max_case_s,
        compile_max_steps=args.compile_max_steps,
        budget_s=args.budget_s,
        clock=args.clock,
        min_sample_s=min_sample_ms / 1e3,
        passes=args.passes if args.passes is not None else (QUICK_PASSES if quick else 1),
    )
    result = runner.run(
        chosen,
        provider_names,
        dtypes,
        modes,
        session=session,
        out_dir=args.out,
        fresh=args.fresh,
        plots=not args.no_plots,
        progress=not args.no_progress,
    )
    print(runner.format_header(session, result.rows))
    print(runner.format_table(result.rows))
    print()
    print(f"csv:   {result.csv_path}")
    for path in result.plots:
        print(f"plot:  {path}")
    errors = [r for r in result.rows if r["status"] == "error"]
    if errors:
        print(f"{len(errors)} case(s) failed (status 'error' in the CSV)", file=sys.stderr)
        return 1
    return 0
