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
from .timing import peak_memory, time_callable
from .workloads import Workload

DEFAULT_OUT = REPO_ROOT / "bench" / "out"
CSV_NAME = "bench.csv"


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclasses.dataclass
class CaseResult:
    row: dict[str, object]
    prepared: providers.Prepared | None = None


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
        self.started = _utc_now()
        self.run_id = f"{self.started:%Y%m%dT%H%M%SZ}-{os.getpid()}"
        self.env = environment(device)
        self.availability = fusedrnn.available_backends()
        self._ceilings: dict[str, floor.Ceilings] = {}
        self._torch_median: dict[tuple, float] = {}

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
        """Measure one case (or record why not). ``keep`` returns the prepared callable."""
        row = self.base_row(workload, dtype, mode, provider)
        cost = floor.cost(workload, mode, dtype)
        row["flops"] = cost.flops
        row["bytes"] = cost.bytes
        ceilings = self.ceilings(dtype)
        floor_s = floor.floor_seconds(cost, ceilings) if ceilings else None
        row["floor_ms"] = None if floor_s is None else floor_s * 1e3
        row["warmup"] = self.warmup
        prepared = None

        reason = providers.skip_reason(
            provider, workload, self.device, self.availability, self.compile_max_steps
        )
        if reason is None and self.deadline is not None and time.monotonic() > self.deadline:
            reason = f"time budget (--budget-s {self.budget_s:g}) exhausted before this case"
        if reason is not None:
            row.update(status=schema.STATUS_SKIPPED, reason=reason)
        else:
            try:
                prepared = providers.prepare(provider, workload, dtype, mode, self.device)
                timing = time_callable(
                    prepared.fn,
                    self.device,
                    warmup=self.warmup,
                    repeats=self.repeats,
                    setup=prepared.setup,
                    max_seconds=self.max_case_s,
                )
                peak, method = peak_memory(prepared.fn, self.device, prepared.setup)
            except Exception as error:  # recorded in the row, never raised
                status, reason = providers.classify_failure(provider, error)
                row.update(status=status, reason=reason)
                prepared = None
            else:
                median = timing.median_s
                notes = prepared.notes
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
                key = (workload, dtype, mode)
                if provider == "torch":
                    self._torch_median[key] = median
                if key in self._torch_median:
                    row["speedup_vs_torch"] = self._torch_median[key] / median
        row["timestamp"] = _utc_now().isoformat(timespec="seconds")
        if not keep:
            prepared = None
            release(self.device)
        return CaseResult(row, prepared)

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
    device: torch.device,
    out_dir: Path | str = DEFAULT_OUT,
    quick: bool = False,
    warmup: int = 3,
    repeats: int = 10,
    max_case_s: float | None = 20.0,
    compile_max_steps: int = providers.DEFAULT_COMPILE_MAX_STEPS,
    budget_s: float | None = None,
    fresh: bool = False,
    plots: bool = True,
    progress: bool = True,
    csv_name: str = CSV_NAME,
) -> RunResult:
    """Measure every (workload, dtype, mode, provider); torch first in each case so the
    speed-up of the others is known when their row is written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    appender = schema.CsvAppender(out / csv_name, fresh=fresh)
    appender.ensure_header()
    ordered = sorted(providers_, key=lambda p: (p != "torch", list(providers_).index(p)))
    session = Session(
        device,
        quick=quick,
        warmup=warmup,
        repeats=repeats,
        max_case_s=max_case_s,
        compile_max_steps=compile_max_steps,
        budget_s=budget_s,
    )
    cases = [(w, d, m, p) for w in workloads for d in dtypes for m in modes for p in ordered]
    bar = progress_bar(len(cases), progress)
    rows = []
    for workload, dtype, mode, provider in cases:
        row = session.measure(workload, dtype, mode, provider).row
        appender.write(row)
        rows.append(row)
        if bar is not None:
            status = row["status"] if row["status"] != "ok" else f"{row['median_ms']:.3g} ms"
            bar.update(f"{workload.name} {mode} {dtype} {provider}: {status}")
    if bar is not None:
        bar.close()
    metadata_path = out / f"env-{session.run_id}.json"
    metadata_path.write_text(json.dumps(session.metadata(), indent=2, default=str) + "\n")
    (out / "env.json").write_text(metadata_path.read_text())
    floor.write_ceilings(out / "ceilings.json", session.all_ceilings())
    drawn: list[Path] = []
    if plots:
        from . import visualize

        drawn = visualize.plot_csv(out / csv_name, out, run_id=session.run_id)
    return RunResult(rows, out / csv_name, drawn, metadata_path, session)


# ---------------------------------------------------------------------- the table
def _fmt_ms(value: object) -> str:
    return "" if value in (None, "") else f"{float(value):.3g}"


def format_table(rows: Iterable[dict[str, object]]) -> str:
    """A text table: one line per (workload, mode, dtype); per provider its median time and
    speed-up over torch; then the skipped and failed rows with their reasons."""
    rows = list(rows)
    provider_names: list[str] = []
    for row in rows:
        if row["provider"] not in provider_names:
            provider_names.append(str(row["provider"]))
    keys: list[tuple] = []
    cells: dict[tuple, dict[str, str]] = {}
    for row in rows:
        key = (row["workload"], row["mode"], row["dtype"])
        if key not in cells:
            keys.append(key)
            cells[key] = {}
        if row["status"] == schema.STATUS_OK:
            text = f"{_fmt_ms(row['median_ms'])} ms"
            speedup = row.get("speedup_vs_torch")
            if row["provider"] != "torch" and speedup not in (None, ""):
                text += f" ({float(speedup):.2f}x)"
        else:
            text = str(row["status"])
        cells[key][str(row["provider"])] = text
    header = ["workload", "mode", "dtype", *provider_names]
    body = [[*map(str, key), *(cells[key].get(p, "") for p in provider_names)] for key in keys]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("(median time per call; (Nx) = speed-up over torch.nn in this run, >1 is faster)")
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
