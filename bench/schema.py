"""The one CSV schema every benchmark run writes (and appends to), and its reader.

Liger-Kernel style: every run appends rows of this schema to one CSV; the visualizer
(``bench/visualize.py``) and the report (``bench/report.py``) only ever read that CSV.
Ratios (``speedup_vs_torch``) are computed only between rows of the same ``run_id``: the
same process, device and moment.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
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
    "speedup_p20": "20th percentile of those per-round ratios (empty if none)",
    "speedup_p80": "80th percentile of those per-round ratios (empty if none)",
    "device": "cpu | cuda",
    "device_name": "GPU name, or the CPU model and thread count",
    "torch_version": "torch.__version__",
    "triton_version": "triton's version, or empty",
    "cuda_version": "torch.version.cuda (+ cuDNN version), or empty",
    "python_version": "Python version",
    "fusedrnn_commit": "git commit of the measured tree (+dirty when it had local changes)",
    "timestamp": "UTC time the row was measured",
    "notes": "anything else (for example torch.compile's compile time)",
}
COLUMNS: tuple[str, ...] = tuple(COLUMN_DOCS)

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


def verdict(speedup_p20: float | None, speedup_p80: float | None) -> str | None:
    """From the p20–p80 spread of the per-round ratios torch / provider of interleaved runs:
    ``faster`` when even their p20 is above :data:`MIN_EFFECT`, ``slower`` when even their
    p80 is below 1 / MIN_EFFECT, ``≈`` otherwise; None when unknown.

    Why the ratios and not the two providers' own time spreads: a shared machine's speed
    drifts over a case (another process's cache and memory traffic, the clock), which widens
    both providers' spreads alike but cancels in each round's ratio, so the ratios' spread
    separates what is real from what a second run would not reproduce."""
    if speedup_p20 is None or speedup_p80 is None:
        return None
    if speedup_p20 > MIN_EFFECT:
        return FASTER
    if speedup_p80 < 1 / MIN_EFFECT:
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
    """:func:`verdict` of two CSV rows (``base``: torch's row of the same run and case);
    rows without the ratio spread (older files) get :func:`spread_verdict`."""
    if base is None or row.get("status") != STATUS_OK or base.get("status") != STATUS_OK:
        return None
    ratio_p20 = as_float(row.get("speedup_p20"))
    ratio_p80 = as_float(row.get("speedup_p80"))
    if ratio_p20 is not None and ratio_p80 is not None:
        return verdict(ratio_p20, ratio_p80)
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


def read_rows(path: Path | str) -> list[dict[str, str]]:
    """All rows of a CSV of this schema (values as strings; checks the header)."""
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise SchemaError(f"{path}: header does not match bench/schema.py's COLUMNS")
        return list(reader)


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
