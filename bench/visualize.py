"""Plots from the benchmark CSV (matplotlib, Agg backend; PNG files).

``python -m bench.visualize bench/out/bench.csv [--out DIR] [--run-id ID|latest|all]``

* ``workloads.png``: median time per call of every provider on every workload (log scale),
  one panel per (mode, dtype); providers that did not run a workload are marked "skip".
* ``speedup_workloads.png``: speed-up over ``torch`` (torch's median / provider's median,
  same run) per workload, a line at 1.
* ``speedup_batch.png`` / ``speedup_hidden.png``: speed-up over ``torch`` against batch size
  / hidden size (the ``--sweep`` rows).

Only rows of one run are compared (``--run-id latest`` by default): ratios are only
meaningful side by side, in one run, on one device.
"""

from __future__ import annotations

import argparse
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


def _title(rows: list[dict[str, str]]) -> str:
    first = rows[0]
    return (
        f"{first['device_name']} · torch {first['torch_version']} · {first['fusedrnn_commit'][:12]}"
    )


def plot_workload_bars(
    rows: list[dict[str, str]], path: Path, speedup: bool = False
) -> Path | None:
    """Grouped bars per workload: median ms (log) or speed-up over torch."""
    rows = [r for r in rows if r["suite"] == "workloads"]
    if not rows:
        return None
    plt = _pyplot()
    panels = _panels(rows)
    providers = _ordered([r["provider"] for r in rows], tuple(PROVIDER_COLORS))
    if speedup:
        providers = [p for p in providers if p != "torch"]
    workloads = _ordered([r["workload"] for r in rows])
    columns = 2 if len(panels) > 1 else 1
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(
        lines, columns, figsize=((max(5, 0.8 * len(workloads) + 1)) * columns, 3.8 * lines)
    )
    axes = list(getattr(axes, "flat", [axes]))
    width = 0.8 / max(1, len(providers))
    index = {(r["mode"], r["dtype"], r["workload"], r["provider"]): r for r in rows}
    for ax, (mode, dtype) in zip(axes, panels):
        drawn_any = False
        for k, provider in enumerate(providers):
            xs, ys, skipped = [], [], []
            for j, workload in enumerate(workloads):
                row = index.get((mode, dtype, workload, provider))
                x = j - 0.4 + width * (k + 0.5)
                value = None
                if row is not None and row["status"] == "ok":
                    key = "speedup_vs_torch" if speedup else "median_ms"
                    value = schema.as_float(row[key])
                if value:
                    xs.append(x)
                    ys.append(value)
                elif row is not None:
                    label = "no torch" if row["status"] == "ok" else str(row["status"])
                    skipped.append((x, label))
            ax.bar(xs, ys, width, label=provider, color=PROVIDER_COLORS.get(provider))
            drawn_any = drawn_any or bool(ys)
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
        ax.set_xticks(range(len(workloads)))
        ax.set_xticklabels(workloads)
        if drawn_any:
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "nothing measured", transform=ax.transAxes, ha="center")
        if speedup:
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_ylabel("speed-up over torch (x)")
        else:
            ax.set_ylabel("median time per call (ms)")
        ax.set_title(f"{mode}, {dtype}", fontsize=10)
        ax.grid(axis="y", alpha=0.3, which="both")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(_title(rows), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep(rows: list[dict[str, str]], suite: str, column: str, path: Path) -> Path | None:
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
    fig.suptitle(_title(rows), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rows(rows: list[dict[str, str]], out_dir: Path | str) -> list[Path]:
    """Every plot these rows support, written to ``out_dir``; returns the files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawn = [
        plot_workload_bars(rows, out / "workloads.png"),
        plot_workload_bars(rows, out / "speedup_workloads.png", speedup=True),
        plot_sweep(rows, "sweep-batch", "B", out / "speedup_batch.png"),
        plot_sweep(rows, "sweep-hidden", "H", out / "speedup_hidden.png"),
    ]
    return [p for p in drawn if p is not None]


def select_run(rows: list[dict[str, str]], run_id: str = "latest") -> list[dict[str, str]]:
    if run_id == "all":
        return rows
    if run_id == "latest":
        return schema.latest_run(rows)
    return [r for r in rows if r["run_id"] == run_id]


def plot_csv(
    csv_path: Path | str, out_dir: Path | str | None = None, run_id: str = "latest"
) -> list[Path]:
    """Read the CSV and draw every plot of one run (default: the latest)."""
    rows = select_run(schema.read_rows(csv_path), run_id)
    return plot_rows(rows, out_dir if out_dir is not None else Path(csv_path).parent)


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
