"""Plots from the benchmark CSV (matplotlib, Agg backend; PNG files).

``python -m bench.visualize bench/out/bench.csv [--out DIR] [--run-id ID|latest|all]``

* ``workloads.png``: median time per call of every provider on every workload (log scale),
  one panel per (mode, dtype), whiskers from p20 to p80, the floor model's lower bound
  (``floor_ms``) as a dashed line per workload, shapes in the tick labels; providers that
  did not run a workload are marked "skipped"/"error".
* ``speedup_workloads.png``: speed-up over ``torch`` (median of the paired per-round
  ratios) per workload, a line at 1, whiskers over the p20–p80 of those ratios (their
  spread) and the verdict above each bar (+ faster, − slower, ≈: the 95 % confidence
  interval of the median ratio, ``speedup_ci_low``–``speedup_ci_high``, is not entirely
  beyond 1.1x; older files: their p20–p80 is not).
* ``tokens_workloads.png``: throughput (real tokens/s) with whiskers, and the floor model's
  ceiling (tokens / floor_ms).
* Quick-mode runs are titled as such in red (tiny shapes).
* ``speedup_batch.png`` / ``speedup_hidden.png``: speed-up over ``torch`` against batch size
  / hidden size (the ``--sweep`` rows).

Only rows of one run are compared (``--run-id latest`` by default): ratios are only
meaningful side by side, in one run, on one device.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

from . import schema

PROVIDER_COLORS = {
    "torch": "#4c4c4c",
    "reference": "#1f77b4",
    "reference-compiled": "#17becf",
    "triton": "#2ca02c",
    "cuda": "#d62728",
    "host": "#ff7f0e",
}


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "matplotlib is needed for the plots: pip install matplotlib (or --no-plots)"
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ordered(values: Sequence[str], preferred: Sequence[str] = ()) -> list[str]:
    seen: list[str] = []
    for value in [*preferred, *values]:
        if value in values and value not in seen:
            seen.append(value)
    return seen


def _panels(rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    modes = _ordered([r["mode"] for r in rows], ("forward", "train"))
    dtypes = _ordered([r["dtype"] for r in rows], ("float32", "bfloat16"))
    return [(m, d) for m in modes for d in dtypes]


def _title(rows: list[dict[str, str]], quick: bool = False) -> str:
    first = rows[0]
    title = (
        f"{first['device_name']} · torch {first['torch_version']} · {first['fusedrnn_commit'][:12]}"
    )
    if quick:
        title = f"{QUICK_BANNER}\n{title}"
    return title


QUICK_BANNER = "QUICK MODE: tiny shapes, a smoke test (not representative of real sizes)"

# metric -> (y label, CSV column of the value)
METRICS = {
    "time": "median time per call (ms); bars: median, whiskers: p20–p80",
    "speedup": "speed-up over torch (x); whiskers: p20–p80 of the per-round ratios",
    "tokens": "throughput (tokens/s); whiskers: from p80/p20 times",
}


def _value_and_spread(
    row: dict[str, str], metric: str, base: dict[str, str] | None
) -> tuple[float, float, float] | None:
    """(value, low, high) of a measured row for ``metric``, or None."""
    median, p20, p80 = (schema.as_float(row[c]) for c in ("median_ms", "p20_ms", "p80_ms"))
    if row["status"] != schema.STATUS_OK or not median or not p20 or not p80:
        return None
    if metric == "time":
        return median, p20, p80
    if metric == "tokens":
        tokens_per_s = schema.as_float(row["tokens_per_s"])
        if not tokens_per_s:
            return None
        tokens = tokens_per_s * median  # tokens per call x 1e3
        return tokens_per_s, tokens / p80, tokens / p20
    speedup = schema.as_float(row["speedup_vs_torch"])
    if base is None or not speedup:
        return None
    ratio_p20, ratio_p80 = (schema.as_float(row[c]) for c in ("speedup_p20", "speedup_p80"))
    if ratio_p20 and ratio_p80:  # the spread of the ratios (the verdict: the median's CI)
        return speedup, min(speedup, ratio_p20), max(speedup, ratio_p80)
    b20, b80 = schema.as_float(base["p20_ms"]), schema.as_float(base["p80_ms"])
    if not b20 or not b80:
        return None
    # older rows: the range the two time spreads allow, at least around the median itself
    return speedup, min(speedup, b20 / p80), max(speedup, b80 / p20)


def workload_label(row: dict[str, str]) -> str:
    """Tick label: the workload's name, then its shape on short lines (cell and B; I, H and
    T; layers, direction, packing, regularizers)."""
    words = schema.shape_label(row).split()
    lines = [row["workload"], " ".join(words[:2]), " ".join(words[2:4]), " ".join(words[4:])]
    return "\n".join(line for line in lines if line)


def workload_figure(rows: list[dict[str, str]], metric: str = "time", quick: bool = False):
    """The grouped-bar figure of the ``workloads`` rows (None if there are none): one panel
    per (mode, dtype), bars with p20–p80 whiskers, the floor model's bound per workload
    (time and tokens/s), the verdict above each speed-up bar, shapes in the tick labels."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    rows = [r for r in rows if r["suite"] == "workloads"]
    if not rows:
        return None
    plt = _pyplot()
    panels = _panels(rows)
    providers = _ordered([r["provider"] for r in rows], tuple(PROVIDER_COLORS))
    if metric == "speedup":
        providers = [p for p in providers if p != "torch"]
    workloads = _ordered([r["workload"] for r in rows])
    labels = {r["workload"]: workload_label(r) for r in rows}
    columns = 2 if len(panels) > 2 else 1
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(
        lines,
        columns,
        figsize=((max(6, 1.1 * len(workloads) + 1.5)) * columns, 4.2 * lines + 0.4),
        squeeze=False,
    )
    axes = list(axes.flat)
    width = 0.8 / max(1, len(providers))
    index = {(r["mode"], r["dtype"], r["workload"], r["provider"]): r for r in rows}
    for ax, (mode, dtype) in zip(axes, panels):
        drawn_any = False
        for k, provider in enumerate(providers):
            xs, ys, lows, highs, skipped, verdicts = [], [], [], [], [], []
            for j, workload in enumerate(workloads):
                row = index.get((mode, dtype, workload, provider))
                base = index.get((mode, dtype, workload, "torch"))
                x = j - 0.4 + width * (k + 0.5)
                value = None if row is None else _value_and_spread(row, metric, base)
                if value is not None:
                    xs.append(x)
                    ys.append(value[0])
                    lows.append(value[0] - value[1])
                    highs.append(value[2] - value[0])
                    if metric == "speedup":
                        verdicts.append((x, value[2], schema.row_verdict(row, base) or ""))
                elif row is not None:
                    label = "no torch" if row["status"] == "ok" else str(row["status"])
                    skipped.append((x, label))
            ax.bar(
                xs,
                ys,
                width,
                yerr=[lows, highs],
                capsize=2,
                error_kw={"elinewidth": 0.8},
                label=provider,
                color=PROVIDER_COLORS.get(provider),
            )
            drawn_any = drawn_any or bool(ys)
            for x, top, text in verdicts:
                ax.annotate(
                    {"faster": "+", "slower": "−"}.get(text, text),
                    (x, top),
                    xytext=(0, 1),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
            for x, label in skipped:
                ax.annotate(
                    label,
                    (x, 0),
                    xycoords=("data", "axes fraction"),
                    xytext=(0, 2),
                    textcoords="offset points",
                    rotation=90,
                    fontsize=6,
                    ha="center",
                    va="bottom",
                    color=PROVIDER_COLORS.get(provider, "black"),
                )
        if metric in ("time", "tokens"):
            _draw_floor(ax, index, mode, dtype, workloads, metric)
        ax.set_xticks(range(len(workloads)))
        ax.set_xticklabels([labels[w] for w in workloads], fontsize=6.5)
        if drawn_any:
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "nothing measured", transform=ax.transAxes, ha="center")
        if metric == "speedup":
            ax.axhline(1.0, color="black", linewidth=0.8)
            if drawn_any:
                from matplotlib.ticker import FuncFormatter

                ratio = FuncFormatter(lambda y, _: f"{y:.2g}x")
                ax.yaxis.set_major_formatter(ratio)
                ax.yaxis.set_minor_formatter(ratio)
                ax.tick_params(axis="y", which="minor", labelsize=6)
        ax.set_ylabel(METRICS[metric], fontsize=7)
        title = f"{mode}, {dtype}"
        if metric == "speedup":
            title += "  (+ faster, − slower, ≈: 95% CI of median ratio not beyond 1.1x)"
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3, which="both")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, ncol=len(names), loc="upper right")
    fig.suptitle(_title(rows, quick), fontsize=9, color="#b00000" if quick else "black", x=0.4)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def _draw_floor(ax, index: dict, mode: str, dtype: str, workloads: list[str], metric: str) -> None:
    """The floor model's bound of each workload: a dashed segment across its bar group
    (time: the floor_ms lower bound; tokens/s: tokens / floor, an upper bound)."""
    labelled = False
    for j, workload in enumerate(workloads):
        rows = [r for (m, d, w, _), r in index.items() if (m, d, w) == (mode, dtype, workload)]
        floors = [schema.as_float(r["floor_ms"]) for r in rows]
        floor_ms = next((f for f in floors if f), None)
        if floor_ms is None:
            continue
        value = floor_ms
        if metric == "tokens":
            measured = [r for r in rows if schema.as_float(r["tokens_per_s"])]
            if not measured:
                continue
            r = measured[0]
            tokens = schema.as_float(r["tokens_per_s"]) * schema.as_float(r["median_ms"])
            value = tokens / floor_ms
        name = "floor model bound" if metric == "time" else "floor model ceiling"
        ax.hlines(
            value,
            j - 0.45,
            j + 0.45,
            colors="black",
            linestyles="dashed",
            linewidth=1.0,
            label=None if labelled else name,
            gid="floor",
        )
        labelled = True


def plot_workload_bars(
    rows: list[dict[str, str]], path: Path, metric: str = "time", quick: bool = False
) -> Path | None:
    """Save :func:`workload_figure` to ``path`` (None when there are no workload rows)."""
    fig = workload_figure(rows, metric, quick)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_sweep(
    rows: list[dict[str, str]], suite: str, column: str, path: Path, quick: bool = False
) -> Path | None:
    """Speed-up over torch against ``column`` (B or H) for the rows of ``suite``."""
    rows = [r for r in rows if r["suite"] == suite and r["status"] == "ok"]
    rows = [r for r in rows if r["provider"] != "torch" and r["speedup_vs_torch"]]
    if not rows:
        return None
    plt = _pyplot()
    panels = _panels(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (mode, dtype) in zip(axes[0], panels):
        subset = [r for r in rows if r["mode"] == mode and r["dtype"] == dtype]
        for provider in _ordered([r["provider"] for r in subset], tuple(PROVIDER_COLORS)):
            points = sorted(
                (int(r[column]), float(r["speedup_vs_torch"]))
                for r in subset
                if r["provider"] == provider
            )
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o",
                label=provider,
                color=PROVIDER_COLORS.get(provider),
            )
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ticks = sorted({int(r[column]) for r in subset})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.tick_params(axis="x", which="minor", bottom=False)
        ax.set_yscale("log")
        ax.set_xlabel({"B": "batch size B", "H": "hidden size H (= I)"}[column])
        ax.set_ylabel("speed-up over torch (x)")
        fixed = subset[0]
        other = f"H=I={fixed['H']}" if column == "B" else f"B={fixed['B']}"
        ax.set_title(f"{mode}, {dtype} ({fixed['cell']}, {other}, T={fixed['T']})", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(_title(rows, quick), fontsize=9, color="#b00000" if quick else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rows(rows: list[dict[str, str]], out_dir: Path | str, quick: bool = False) -> list[Path]:
    """Every plot these rows support, written to ``out_dir``; returns the files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawn = [
        plot_workload_bars(rows, out / "workloads.png", "time", quick),
        plot_workload_bars(rows, out / "speedup_workloads.png", "speedup", quick),
        plot_workload_bars(rows, out / "tokens_workloads.png", "tokens", quick),
        plot_sweep(rows, "sweep-batch", "B", out / "speedup_batch.png", quick),
        plot_sweep(rows, "sweep-hidden", "H", out / "speedup_hidden.png", quick),
    ]
    return [p for p in drawn if p is not None]


def select_run(rows: list[dict[str, str]], run_id: str = "latest") -> list[dict[str, str]]:
    if run_id == "all":
        return rows
    if run_id == "latest":
        return schema.latest_run(rows)
    return [r for r in rows if r["run_id"] == run_id]


def run_was_quick(folder: Path, run_id: str) -> bool:
    """Whether ``run_id`` was a ``--quick`` run, from its ``env-<run_id>.json`` (written by
    ``python -m bench`` next to the CSV); False when that file is absent."""
    try:
        metadata = json.loads((folder / f"env-{run_id}.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(metadata.get("settings", {}).get("quick"))


def plot_csv(
    csv_path: Path | str,
    out_dir: Path | str | None = None,
    run_id: str = "latest",
    quick: bool | None = None,
) -> list[Path]:
    """Read the CSV and draw every plot of one run (default: the latest). ``quick`` marks
    the plots as quick mode; None reads it from the run's env-<run_id>.json."""
    rows = select_run(schema.read_rows(csv_path), run_id)
    if quick is None:
        run_ids = {r["run_id"] for r in rows}
        folder = Path(csv_path).parent
        quick = any(run_was_quick(folder, r) for r in run_ids)
    return plot_rows(rows, out_dir if out_dir is not None else Path(csv_path).parent, quick)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.visualize", description=__doc__)
    parser.add_argument("csv", type=Path, help="a CSV written by python -m bench")
    parser.add_argument("--out", type=Path, default=None, help="folder of the PNGs")
    parser.add_argument("--run-id", default="latest", help="a run_id, 'latest' or 'all'")
    args = parser.parse_args(argv)
    for path in plot_csv(args.csv, args.out, args.run_id):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
