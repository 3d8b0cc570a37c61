"""Running cases: one :class:`Session` per process, one CSV row per case.

A session fixes the device, the environment columns, the backend availability (queried
here, at run time), the run id and the device's ceilings; :meth:`Session.measure` turns one
(workload, dtype, mode, provider) into a CSV row (measured, skipped or failed, always with a
reason when not measured). :func:`run` runs a whole matrix with a progress bar, appends
every row to ``<out>/bench.csv`` as soon as it is measured, then draws the plots.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from . import floor, providers, schema
from .env import REPO_ROOT, environment
from .timing import (
    CLOCKS,
    Timing,
    cpu_clock,
    paired_ratios,
    peak_memory,
    percentile,
    time_interleaved,
)
from .workloads import Workload

DEFAULT_OUT = REPO_ROOT / "bench" / "out"
CSV_NAME = "bench.csv"


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclasses.dataclass
class CaseResult:
    row: dict[str, object]
    prepared: providers.Prepared | None = None


@dataclasses.dataclass
class OpenCase:
    """One (workload, dtype, mode) between :meth:`Session.open_case` and
    :meth:`Session.close_case`: its rows, prepared providers and the rounds timed so far."""

    workload: Workload
    dtype: str
    mode: str
    provider_names: list[str]
    floor_s: float | None
    rows: dict[str, dict[str, object]] = dataclasses.field(default_factory=dict)
    prepared: dict[str, providers.Prepared] = dataclasses.field(default_factory=dict)
    timings: dict[str, Timing] = dataclasses.field(default_factory=dict)


class Session:
    """Shared state of the cases of one run (see the module docstring)."""

    def __init__(
        self,
        device: torch.device,
        *,
        quick: bool = False,
        warmup: int = 3,
        repeats: int = 10,
        max_case_s: float | None = 20.0,
        compile_max_steps: int = providers.DEFAULT_COMPILE_MAX_STEPS,
        budget_s: float | None = None,
        measure_floor: bool = True,
        clock: str = "auto",
        min_sample_s: float = 0.0,
        passes: int = 1,
    ) -> None:
        import fusedrnn

        self.device = device
        self.quick = quick
        self.warmup = warmup
        self.repeats = repeats
        self.max_case_s = max_case_s
        self.compile_max_steps = compile_max_steps
        self.deadline = None if not budget_s else time.monotonic() + budget_s
        self.budget_s = budget_s
        self.measure_floor = measure_floor
        self.clock = cpu_clock(device) if clock == "auto" else clock
        self.min_sample_s = min_sample_s
        self.passes = passes
        self.started = _utc_now()
        self.run_id = f"{self.started:%Y%m%dT%H%M%SZ}-{os.getpid()}"
        self.env = environment(device)
        self.availability = fusedrnn.available_backends()
        self._ceilings: dict[str, floor.Ceilings] = {}
        self._torch_timing: dict[tuple, Timing] = {}

    # ------------------------------------------------------------------ ceilings
    def ceilings(self, dtype: str) -> floor.Ceilings | None:
        if not self.measure_floor:
            return None
        if dtype not in self._ceilings:
            self._ceilings[dtype] = floor.measure_ceilings(self.device, dtype, quick=self.quick)
        return self._ceilings[dtype]

    def all_ceilings(self) -> list[floor.Ceilings]:
        return list(self._ceilings.values())

    # ------------------------------------------------------------------ cases
    def base_row(self, workload: Workload, dtype: str, mode: str, provider: str) -> dict:
        row: dict[str, object] = {"run_id": self.run_id, "provider": provider, "mode": mode}
        row.update(workload.csv_fields())
        row["dtype"] = dtype
        row.update(self.env)
        return row

    def measure(
        self, workload: Workload, dtype: str, mode: str, provider: str, keep: bool = False
    ) -> CaseResult:
        """Measure one provider alone (or record why not). ``keep`` returns the prepared
        callable. Its speed-up uses torch's earlier, separate measurement of the same case."""
        return self.measure_case(workload, dtype, mode, [provider], keep=keep)[0]

    def measure_case(
        self,
        workload: Workload,
        dtype: str,
        mode: str,
        provider_names: Sequence[str],
        keep: bool = False,
    ) -> list[CaseResult]:
        """Measure the providers of one (workload, dtype, mode) interleaved, round by round
        (``bench.timing.time_interleaved``); one row each, measured, skipped or failed."""
        case = self.open_case(workload, dtype, mode, provider_names)
        self.time_case(case, self.repeats, self.max_case_s)
        return self.close_case(case, keep=keep)

    def open_case(
        self, workload: Workload, dtype: str, mode: str, provider_names: Sequence[str]
    ) -> OpenCase:
        """The rows of one case and its prepared providers, not timed yet."""
        cost = floor.cost(workload, mode, dtype)
        ceilings = self.ceilings(dtype)
        floor_s = floor.floor_seconds(cost, ceilings) if ceilings else None
        case = OpenCase(workload, dtype, mode, list(provider_names), floor_s)
        for provider in provider_names:
            row = self.base_row(workload, dtype, mode, provider)
            row.update(flops=cost.flops, bytes=cost.bytes, warmup=self.warmup)
            row["floor_ms"] = None if floor_s is None else floor_s * 1e3
            case.rows[provider] = row
            reason = providers.skip_reason(
                provider, workload, self.device, self.availability, self.compile_max_steps
            )
            if reason is None and self.deadline is not None and time.monotonic() > self.deadline:
                reason = f"time budget (--budget-s {self.budget_s:g}) exhausted before this case"
            if reason is not None:
                row.update(status=schema.STATUS_SKIPPED, reason=reason)
                continue
            try:
                case.prepared[provider] = providers.prepare(
                    provider, workload, dtype, mode, self.device
                )
            except Exception as error:  # recorded in the row, never raised
                status, reason = providers.classify_failure(provider, error)
                row.update(status=status, reason=reason)
        return case

    def time_case(self, case: OpenCase, repeats: int, max_case_s: float | None) -> None:
        """Time ``repeats`` more interleaved rounds of the case's providers (after a warm-up)
        and append them to its timings; a provider that fails drops out with its error."""
        timings = self._time(case.prepared, case.rows, repeats, max_case_s)
        for provider in list(case.prepared):
            if provider not in timings:  # failed: its row says why
                del case.prepared[provider]
                case.timings.pop(provider, None)
                continue
            new = timings[provider]
            old = case.timings.get(provider)
            if old is None:
                case.timings[provider] = new
            else:
                old.times_s.extend(new.times_s)
                old.calls_per_sample = max(old.calls_per_sample, new.calls_per_sample)

    def close_case(self, case: OpenCase, keep: bool = False) -> list[CaseResult]:
        """Record the case's timings in its rows (speed-ups against torch included)."""
        rows, prepared, timings = case.rows, case.prepared, case.timings
        for provider, timing in timings.items():
            self._record(rows[provider], prepared[provider], timing, case.workload, case.floor_s)
        key = (case.workload, case.dtype, case.mode)
        if "torch" in timings:
            self._torch_timing[key] = timings["torch"]
        base = self._torch_timing.get(key)
        for provider, timing in timings.items():
            if base is None:
                continue
            if "torch" in timings:  # interleaved with torch in this call: per-round ratios
                ratios = paired_ratios(base, timing)
                ci_low, ci_high = schema.median_ci(ratios)
                rows[provider].update(
                    speedup_vs_torch=percentile(ratios, 50),
                    speedup_p20=percentile(ratios, 20),
                    speedup_p80=percentile(ratios, 80),
                    speedup_ci_low=ci_low,
                    speedup_ci_high=ci_high,
                )
            else:  # torch's earlier, separate measurement: no rounds to pair, no verdict
                rows[provider]["speedup_vs_torch"] = base.median_s / timing.median_s
        results = []
        for provider in case.provider_names:
            rows[provider]["timestamp"] = _utc_now().isoformat(timespec="seconds")
            kept = prepared.get(provider) if keep and provider in timings else None
            results.append(CaseResult(rows[provider], kept))
        if not keep:
            prepared.clear()
            release(self.device)
        return results

    def _time(
        self,
        prepared: dict[str, providers.Prepared],
        rows: dict[str, dict[str, object]],
        repeats: int,
        max_case_s: float | None,
    ) -> dict[str, Timing]:
        """Interleaved timings of the prepared providers; one that raises is recorded in its
        row and the others are timed again without it."""
        calls = dict(prepared)
        while calls:
            try:
                return time_interleaved(
                    {name: (p.fn, p.setup) for name, p in calls.items()},
                    self.device,
                    warmup=self.warmup,
                    repeats=repeats,
                    max_seconds=max_case_s,
                    clock=self.clock,
                    min_sample_s=self.min_sample_s,
                )
            except Exception as error:
                culprits = []
                for name, case in calls.items():  # which one raised: run each once
                    try:
                        case.setup()
                        case.fn()
                    except Exception as own_error:
                        status, reason = providers.classify_failure(name, own_error)
                        rows[name].update(status=status, reason=reason)
                        culprits.append(name)
                if not culprits:  # none fails alone: every row gets the error
                    for name in calls:
                        status, reason = providers.classify_failure(name, error)
                        rows[name].update(status=status, reason=reason)
                    return {}
                calls = {n: c for n, c in calls.items() if n not in culprits}
        return {}

    def _record(
        self,
        row: dict[str, object],
        prepared: providers.Prepared,
        timing: Timing,
        workload: Workload,
        floor_s: float | None,
    ) -> None:
        provider = str(row["provider"])
        try:
            peak, method = peak_memory(prepared.fn, self.device, prepared.setup)
        except Exception as error:  # recorded in the row, never raised
            peak, method = None, f"not measured: {type(error).__name__}: {error}"
        median = timing.median_s
        notes = prepared.notes
        if timing.calls_per_sample > 1:
            averaged = f"each timed run: mean of {timing.calls_per_sample} back-to-back calls"
            notes = f"{notes}; {averaged}" if notes else averaged
        if provider == "reference-compiled":
            notes += (
                f"; first call (compile) {timing.first_s:.1f} s; "
                f"graph breaks {providers.graph_breaks()}"
            )
        row.update(
            status=schema.STATUS_OK,
            reason="",
            median_ms=median * 1e3,
            p20_ms=timing.p20_s * 1e3,
            p80_ms=timing.p80_s * 1e3,
            step_us=median * 1e6 / workload.steps,
            tokens_per_s=workload.tokens / median,
            repeats=len(timing.times_s),
            warmup=timing.warmup,
            peak_mem_bytes=peak,
            peak_mem_method=method,
            notes=notes,
        )
        if floor_s:
            row["floor_multiple"] = median / floor_s

    def metadata(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "started": self.started.isoformat(timespec="seconds"),
            "environment": self.env,
            "available_backends": self.availability,
            "cuda_device_count": torch.cuda.device_count() if self.device.type == "cuda" else 0,
            "settings": {
                "quick": self.quick,
                "warmup": self.warmup,
                "repeats": self.repeats,
                "max_case_s": self.max_case_s,
                "clock": self.clock,
                "min_sample_s": self.min_sample_s,
                "passes": self.passes,
                "compile_max_steps": self.compile_max_steps,
                "budget_s": self.budget_s,
                "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                "torch_threads": torch.get_num_threads(),
            },
            "ceilings": [c.as_dict() for c in self.all_ceilings()],
        }


def release(device: torch.device) -> None:
    """Give a GPU case's memory back before the next (a full gc is slow: CUDA only)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------- progress
class SimpleProgress:
    """A minimal progress bar on stderr (used when tqdm is not installed)."""

    def __init__(self, total: int, width: int = 30) -> None:
        self.total = max(1, total)
        self.count = 0
        self.width = width
        self.tty = sys.stderr.isatty()

    def update(self, label: str) -> None:
        self.count += 1
        filled = self.width * self.count // self.total
        bar = "#" * filled + "." * (self.width - filled)
        line = f"[{bar}] {self.count}/{self.total} {label}"
        if self.tty:
            sys.stderr.write("\r" + line[:120].ljust(120))
            if self.count == self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        pass


class _TqdmProgress:
    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True)

    def update(self, label: str) -> None:
        self.bar.set_postfix_str(label, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def progress_bar(total: int, enabled: bool = True) -> SimpleProgress | _TqdmProgress | None:
    if not enabled:
        return None
    try:
        return _TqdmProgress(total)
    except ImportError:
        return SimpleProgress(total)


# ---------------------------------------------------------------------- a whole run
@dataclasses.dataclass
class RunResult:
    rows: list[dict[str, object]]
    csv_path: Path
    plots: list[Path]
    metadata_path: Path
    session: Session


def run(
    workloads: Sequence[Workload],
    providers_: Sequence[str],
    dtypes: Sequence[str],
    modes: Sequence[str],
    *,
    session: Session,
    out_dir: Path | str = DEFAULT_OUT,
    fresh: bool = False,
    plots: bool = True,
    progress: bool = True,
    csv_name: str = CSV_NAME,
) -> RunResult:
    """Measure every (workload, dtype, mode, provider) in ``session`` (which holds the
    device and the timing settings): the providers of one (workload, dtype, mode)
    interleaved round by round, so their ratios are paired. With ``session.passes`` > 1
    every case is prepared first and its ``repeats`` rounds are taken in that many passes
    over the whole matrix (rows written at the end): the rounds of one case then sample the
    machine over the whole run, not over the second or so one case takes, so a change of
    the machine's state during the run shows in the ratios' spread."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    appender = schema.CsvAppender(out / csv_name, fresh=fresh)
    appender.ensure_header()
    ordered = sorted(providers_, key=lambda p: (p != "torch", list(providers_).index(p)))
    cases = [(w, d, m) for w in workloads for d in dtypes for m in modes]
    repeats, max_case_s = session.repeats, session.max_case_s
    passes = max(1, min(session.passes, repeats))
    bar = progress_bar(len(cases) * passes, progress)
    rows = []
    if passes == 1:
        for workload, dtype, mode in cases:
            measured = [r.row for r in session.measure_case(workload, dtype, mode, ordered)]
            for row in measured:
                appender.write(row)
            rows.extend(measured)
            if bar is not None:
                done = sum(r["status"] == schema.STATUS_OK for r in measured)
                bar.update(f"{workload.name} {mode} {dtype}: {done}/{len(measured)} measured")
    else:
        opened = [session.open_case(w, d, m, ordered) for w, d, m in cases]
        for index in range(passes):
            rounds = repeats // passes + (index < repeats % passes)
            cap = None if max_case_s is None else max_case_s / passes
            for case in opened:
                session.time_case(case, rounds, cap)
                if bar is not None:
                    bar.update(f"pass {index + 1}/{passes}: {case.workload.name} {case.mode}")
        for case in opened:
            measured = [r.row for r in session.close_case(case)]
            for row in measured:
                appender.write(row)
            rows.extend(measured)
    if bar is not None:
        bar.close()
    metadata_path = out / f"env-{session.run_id}.json"
    metadata_path.write_text(json.dumps(session.metadata(), indent=2, default=str) + "\n")
    (out / "env.json").write_text(metadata_path.read_text())
    floor.write_ceilings(out / "ceilings.json", session.all_ceilings())
    drawn: list[Path] = []
    if plots:
        from . import visualize

        drawn = visualize.plot_csv(out / csv_name, out, run_id=session.run_id, quick=session.quick)
    return RunResult(rows, out / csv_name, drawn, metadata_path, session)


# ---------------------------------------------------------------------- the table
def _fmt_ms(value: object) -> str:
    return "" if value in (None, "") else f"{float(value):.3g}"


def _spread_text(row: dict[str, object]) -> str:
    return f"{_fmt_ms(row['median_ms'])} [{_fmt_ms(row['p20_ms'])}–{_fmt_ms(row['p80_ms'])}]"


def _verdict_text(row: dict[str, object], base: dict[str, object] | None) -> str:
    """'2.10x faster' / '0.26x slower' (the median per-round ratio) per
    :func:`bench.schema.row_verdict` (the median's confidence interval), else '≈'."""
    strings = schema.as_strings
    judged = schema.row_verdict(strings(row), None if base is None else strings(base))
    if judged is None:
        return ""
    if judged == schema.SIMILAR:
        return schema.SIMILAR
    speedup = float(row["speedup_vs_torch"])  # type: ignore[arg-type]
    return f"{speedup:.2f}x {judged}"


def format_table(rows: Iterable[dict[str, object]]) -> str:
    """A text table: one line per (workload, mode, dtype) with the workload's shape; per
    provider the median [p20–p80] ms and the verdict against torch; then the skipped and
    failed rows with their reasons."""
    rows = list(rows)
    provider_names: list[str] = []
    for row in rows:
        if row["provider"] not in provider_names:
            provider_names.append(str(row["provider"]))
    keys: list[tuple] = []
    cells: dict[tuple, dict[str, str]] = {}
    shapes: dict[tuple, str] = {}
    torch_rows = {
        (r["workload"], r["mode"], r["dtype"]): r
        for r in rows
        if r["provider"] == "torch" and r["status"] == schema.STATUS_OK
    }
    for row in rows:
        key = (row["workload"], row["mode"], row["dtype"])
        if key not in cells:
            keys.append(key)
            cells[key] = {}
            shapes[key] = schema.shape_label(row)
        if row["status"] == schema.STATUS_OK:
            text = _spread_text(row)
            if row["provider"] != "torch":
                text = f"{text} {_verdict_text(row, torch_rows.get(key))}".rstrip()
        else:
            text = str(row["status"])
        cells[key][str(row["provider"])] = text
    header = ["workload", "shape", "mode", "dtype", *provider_names]
    body = [
        [key[0], shapes[key], key[1], key[2], *(cells[key].get(p, "") for p in provider_names)]
        for key in keys
    ]
    body = [[str(c) for c in line] for line in body]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        "(ms per call: median [p20–p80]; vs torch.nn: 'N.NNx faster|slower' (median of the "
        "per-round ratios torch / provider) only where the 95 % confidence interval of that "
        f"median (binomial order statistics) is entirely beyond {schema.MIN_EFFECT:g}x either "
        "way, '≈' otherwise)"
    )
    others = [r for r in rows if r["status"] != schema.STATUS_OK]
    if others:
        lines.append("")
        lines.append("not measured:")
        for r in others:
            lines.append(
                f"  {r['status']}: {r['provider']} {r['workload']} {r['mode']} {r['dtype']}: "
                f"{r['reason']}"
            )
    return "\n".join(lines)


def format_header(session: Session, rows: Sequence[dict[str, object]]) -> str:
    """What the numbers were measured on and how: device, threads, mode, shapes, timing."""
    env = session.env
    taken = sorted({int(str(r["repeats"])) for r in rows if r["status"] == schema.STATUS_OK})
    repeats = "–".join(str(n) for n in (taken[0], taken[-1])) if taken else str(session.repeats)
    if taken and taken[0] == taken[-1]:
        repeats = str(taken[0])
    lines = [
        f"fusedrnn bench on {env['device_name']} (run {session.run_id})",
        f"  device {env['device']}, torch {env['torch_version']}, "
        f"{torch.get_num_threads()} CPU thread(s), fusedrnn {env['fusedrnn_commit'][:12]}",
        f"  timing: {session.warmup} warm-up + {repeats} timed runs per provider, interleaved "
        "round by round (torch, A, B, then A, B, torch, ...)",
        f"  clock: {CLOCKS[session.clock]}",
    ]
    if session.passes > 1:
        lines.append(
            f"  the rounds of each case are taken in {session.passes} passes over the whole "
            "matrix (a warm-up round each), so they sample the machine over the whole run"
        )
    if session.min_sample_s > 0:
        lines.append(
            f"  each timed run of a provider is the mean of as many back-to-back calls as take "
            f"at least {session.min_sample_s * 1e3:g} ms (sized from its last warm-up call; "
            "the count is in the CSV's notes): averaging damps the per-call jitter of "
            "sub-millisecond calls"
        )
    if session.quick:
        lines.append(
            "  QUICK MODE: tiny shapes (see 'shape'), float32, a smoke test of the whole "
            "matrix; these times say little about real sizes (python -m bench --list)"
        )
    return "\n".join(lines)
