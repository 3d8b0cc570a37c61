"""The one CSV schema every benchmark run writes (and appends to), and its reader.

Liger-Kernel style: every run appends rows of this schema to one CSV; the visualizer
(``bench/visualize.py``) and the report (``bench/report.py``) only ever read that CSV.
Ratios (``speedup_vs_torch``) are computed only between rows of the same ``run_id``: the
same process, device and moment.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path

# Column -> meaning. The order is the CSV's column order.
COLUMN_DOCS: dict[str, str] = {
    "run_id": "identifier of one `python -m bench` invocation (UTC time + pid)",
    "suite": "workloads | sweep-batch | sweep-hidden",
    "provider": "torch | reference | reference-compiled | triton | cuda | host",
    "mode": "forward (eval, no_grad) | train (forward + backward)",
    "workload": "W1..W7 (W6a/W6b: GRU at W1/W2 sizes), SB<B>/SH<H> for sweeps",
    "cell": "lstm | gru",
    "dtype": "float32 | bfloat16",
    "B": "batch size",
    "I": "input size",
    "H": "hidden size",
    "T": "sequence length (time steps)",
    "layers": "number of layers",
    "bidirectional": "True | False",
    "packed": "True when the input is a PackedSequence (W5)",
    "regularizers": "fusedrnn-only options, 'name=value;...' (empty: a plain torch.nn layer)",
    "status": "ok | skipped | error",
    "reason": "why the row is skipped or failed (empty when ok)",
    "median_ms": "median wall time of one call (ms)",
    "p20_ms": "20th percentile (ms)",
    "p80_ms": "80th percentile (ms)",
    "step_us": "median / T (microseconds per time step)",
    "tokens_per_s": "real tokens (sum of lengths) / median",
    "repeats": "timed runs actually taken",
    "warmup": "warm-up runs taken before timing",
    "peak_mem_bytes": "peak memory of one call (empty when not measured)",
    "peak_mem_method": "how peak_mem_bytes was measured, or why it is empty",
    "flops": "floor model: FLOPs of one call (bench/floor.py)",
    "bytes": "floor model: minimal DRAM bytes of one call",
    "floor_ms": "floor model: lower bound of one call on this device (ms)",
    "floor_multiple": "median_ms / floor_ms",
    "speedup_vs_torch": "median over the rounds of torch's time / this provider's time, both "
    "timed in the same round of interleaved runs (same run, same case; empty if none)",
    "speedup_p20": "20th percentile of those per-round ratios: their spread (empty if none)",
    "speedup_p80": "80th percentile of those per-round ratios (empty if none)",
    "speedup_ci_low": "low end of the distribution-free 95 % confidence interval of the median "
    "of those per-round ratios (binomial order statistics; 0 with fewer than 6 rounds; empty "
    "if none): the verdict is taken from this interval",
    "speedup_ci_high": "high end of that interval (inf with fewer than 6 rounds; empty if none)",
    "device": "cpu | cuda",
    "device_name": "GPU name, or the CPU model, thread count and ISA builds in use",
    "torch_version": "torch.__version__",
    "triton_version": "triton's version, or empty",
    "cuda_version": "torch.version.cuda (+ cuDNN version), or empty",
    "python_version": "Python version",
    "fusedrnn_commit": "git commit of the measured tree (+dirty when it had local changes)",
    "timestamp": "UTC time the row was measured",
    "notes": "anything else (for example torch.compile's compile time)",
}
COLUMNS: tuple[str, ...] = tuple(COLUMN_DOCS)
# Columns added to the schema after files were first written, oldest first. A file whose
# header is COLUMNS less some of these (an older file) is still read, those cells empty;
# appending to it is refused (one file, one header).
ADDED_COLUMNS: tuple[str, ...] = ("speedup_p20", "speedup_p80", "speedup_ci_low", "speedup_ci_high")

STATUS_OK = "ok"
STATUS_SKIPPED = "skipped"
STATUS_ERROR = "error"

FASTER = "faster"
SLOWER = "slower"
SIMILAR = "≈"

# A speed-up smaller than this factor is reported as ≈: the ratio of two providers within a
# few percent of each other drifts by that much between consecutive runs on a CPU (measured:
# 0.83-1.05 for one pair over nine runs), so such a verdict would not survive a second run.
MIN_EFFECT = 1.10

# Each tail of the median's confidence interval may hold at most this probability: a 95 %
# interval. Exact (a Fraction) so the rank is an exact binomial computation.
CI_TAIL = Fraction(1, 40)


def median_ci_rank(n: int) -> int:
    """The rank k (1-based; 0 when none exists) of the order statistics [x_(k), x_(n+1-k)]
    that form a distribution-free 95 % confidence interval of the median of n independent
    samples: the largest k with P(Binomial(n, 1/2) < k) <= :data:`CI_TAIL`. (The median lies
    below x_(k) only when fewer than k samples fall below it, which has that probability.)
    With n < 6 even k = 1 has P = 2**-n > 2.5 %: no interval, k = 0."""
    if n < 0:
        raise ValueError(f"median_ci_rank: n must be >= 0, got {n}")
    below = 0  # sum of comb(n, i) for i < k: P(Binomial(n, 1/2) < k) * 2**n
    k = 0
    while k < n and (below + math.comb(n, k)) <= CI_TAIL * 2**n:
        below += math.comb(n, k)
        k += 1
    return k


def median_ci(values: Sequence[float]) -> tuple[float, float]:
    """The distribution-free 95 % confidence interval [x_(k), x_(n+1-k)] of the median of
    ``values`` (positive ratios), k from :func:`median_ci_rank`; (0, inf) when there are too
    few values for one (fewer than 6), which no verdict can come out of."""
    if not values:
        raise ValueError("median_ci of no values")
    ordered = sorted(values)
    k = median_ci_rank(len(ordered))
    if k == 0:
        return 0.0, math.inf
    return ordered[k - 1], ordered[len(ordered) - k]


def verdict(low: float | None, high: float | None) -> str | None:
    """From an interval of the ratio torch / provider of interleaved runs: ``faster`` when
    its low end is above :data:`MIN_EFFECT`, ``slower`` when its high end is below
    1 / MIN_EFFECT, ``≈`` otherwise; None when unknown.

    The interval is the 95 % confidence interval of the median per-round ratio
    (``speedup_ci_low``/``speedup_ci_high``): "is the median ratio beyond 1.1x" is a question
    about the median, and its interval narrows as rounds are added. Files written before
    that interval was recorded pass the p20–p80 of the per-round ratios instead (their
    spread, which does not narrow with more rounds and flipped heavy-tailed rows between
    two runs). Why ratios and not the two providers' own time spreads: a shared machine's
    speed drifts over a case (another process's cache and memory traffic, the clock), which
    widens both providers' spreads alike but cancels in each round's ratio."""
    if low is None or high is None:
        return None
    if low > MIN_EFFECT:
        return FASTER
    if high < 1 / MIN_EFFECT:
        return SLOWER
    return SIMILAR


def spread_verdict(
    base_p20: float, base_p80: float, p20: float, p80: float, speedup: float | None
) -> str:
    """The rule for rows written before the per-round ratio spread was recorded: ``faster``
    / ``slower`` only when the two providers' p20–p80 time spreads do not overlap and the
    median ratio is beyond :data:`MIN_EFFECT` either way."""
    if speedup is not None and 1 / MIN_EFFECT < speedup < MIN_EFFECT:
        return SIMILAR
    if p80 < base_p20:
        return FASTER
    if p20 > base_p80:
        return SLOWER
    return SIMILAR


def row_verdict(row: Mapping[str, str], base: Mapping[str, str] | None) -> str | None:
    """:func:`verdict` of two CSV rows (``base``: torch's row of the same run and case) from
    the median's confidence interval; rows of older files without it: :func:`verdict` of
    the ratios' p20–p80, and without those :func:`spread_verdict`."""
    if base is None or row.get("status") != STATUS_OK or base.get("status") != STATUS_OK:
        return None
    for low_column, high_column in (
        ("speedup_ci_low", "speedup_ci_high"),
        ("speedup_p20", "speedup_p80"),
    ):
        low, high = as_float(row.get(low_column)), as_float(row.get(high_column))
        if low is not None and high is not None:
            return verdict(low, high)
    spreads = [as_float(r.get(c)) for r in (base, row) for c in ("p20_ms", "p80_ms")]
    if None in spreads:
        return None
    return spread_verdict(*spreads, as_float(row.get("speedup_vs_torch")))  # type: ignore[arg-type]


def shape_label(row: Mapping[str, object]) -> str:
    """A workload's shape from its CSV cells: 'LSTM B=4 I=H=32 T=16' (+ layers, bidirectional,
    packed, regularizers)."""
    cell = str(row["cell"]).upper()
    size = f"I=H={row['H']}" if str(row["I"]) == str(row["H"]) else f"I={row['I']} H={row['H']}"
    parts = [cell, f"B={row['B']}", size, f"T={row['T']}"]
    if str(row.get("layers", "1")) not in ("", "1"):
        parts.append(f"L={row['layers']}")
    if str(row.get("bidirectional")) == "True":
        parts.append("bidir")
    if str(row.get("packed")) == "True":
        parts.append("packed")
    regularizers = str(row.get("regularizers") or "")
    if "weight_drop" in regularizers:
        parts.append("weight-drop")
    if "dropout=" in regularizers or "zoneout" in regularizers:
        parts.append("dropout+zoneout")
    return " ".join(parts)


class SchemaError(ValueError):
    """A CSV whose header is not :data:`COLUMNS`."""


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e18:
            return str(int(value))  # FLOPs and byte counts stay exact
        return f"{value:.6g}"
    return str(value)


class CsvAppender:
    """Appends rows to a CSV of this schema, one flushed line at a time.

    A new or empty file gets the header; an existing one must already have exactly this
    header (a run never mixes schemas in one file).
    """

    def __init__(self, path: Path | str, fresh: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh and self.path.exists():
            self.path.unlink()
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as handle:
                header = next(csv.reader(handle), [])
            if tuple(header) != COLUMNS:
                raise SchemaError(
                    f"{self.path} has another header than bench/schema.py's COLUMNS; "
                    "write to a new file (--out elsewhere, or --fresh)"
                )
            self._need_header = False
        else:
            self._need_header = True

    def ensure_header(self) -> None:
        """Write the header now if the file has none yet."""
        if self._need_header:
            with self.path.open("a", newline="") as handle:
                csv.writer(handle).writerow(COLUMNS)
            self._need_header = False

    def write(self, row: Mapping[str, object]) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise SchemaError(f"columns not in the schema: {sorted(unknown)}")
        self.ensure_header()
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow([_cell(row.get(name)) for name in COLUMNS])


def write_rows(path: Path | str, rows: Iterable[Mapping[str, object]]) -> Path:
    """Write ``rows`` to a fresh CSV at ``path``."""
    appender = CsvAppender(path, fresh=True)
    appender.ensure_header()
    for row in rows:
        appender.write(row)
    return Path(path)


def is_older_header(header: Sequence[str]) -> bool:
    """True when ``header`` is :data:`COLUMNS` less some of :data:`ADDED_COLUMNS` (a file
    written before those columns existed)."""
    missing = [name for name in COLUMNS if name not in header]
    return (
        bool(missing)
        and all(name in ADDED_COLUMNS for name in missing)
        and tuple(header) == tuple(name for name in COLUMNS if name not in missing)
    )


def read_rows(path: Path | str) -> list[dict[str, str]]:
    """All rows of a CSV of this schema (values as strings; checks the header). An older
    file (:func:`is_older_header`) reads with its missing columns empty."""
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = tuple(reader.fieldnames or ())
        if header != COLUMNS and not is_older_header(header):
            raise SchemaError(f"{path}: header does not match bench/schema.py's COLUMNS")
        return [{name: row.get(name) or "" for name in COLUMNS} for row in reader]


def as_float(value: str | None) -> float | None:
    """A CSV cell as float, or None when empty/invalid."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def latest_run(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows of the last run_id in file order (runs append, so the last is newest)."""
    if not rows:
        return []
    last = rows[-1]["run_id"]
    return [row for row in rows if row["run_id"] == last]


def as_strings(row: Mapping[str, object]) -> dict[str, str]:
    """A row as the CSV reader would return it (every column, formatted as written)."""
    return {name: _cell(row.get(name)) for name in COLUMNS}
