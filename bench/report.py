"""Write ``summary.md`` of a results folder, and README's latest-results block, from files.

Usage::

    python bench/report.py bench/results/2026-11-22-nvidia-h100-80gb-hbm3
    python bench/report.py bench/results/<folder> --readme README.md
    python bench/report.py --latest bench/results --readme README.md

A results folder (written by ``bench/gpu_check.sh``, or by hand) holds:

* ``bench.csv`` (required): rows of ``bench/schema.py``'s schema,
* ``parity.xml`` (optional): pytest's JUnit XML of ``pytest -m gpu``,
* ``env.json`` / ``ceilings.json`` (optional): run metadata and the floor model's ceilings,
* ``gpu_check.json`` (optional): the steps of gpu_check.sh with exit codes and durations,
* ``*.png``: the plots (linked from the summary).

Nothing in summary.md or in README's block is typed by hand: both are generated from these
files. README.md must contain the two markers ``<!-- bench:latest:start -->`` and
``<!-- bench:latest:end -->``; without them this script says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/report.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import schema, workloads
else:
    from . import schema, workloads

START_MARKER = "<!-- bench:latest:start -->"
END_MARKER = "<!-- bench:latest:end -->"
SUMMARY_NAME = "summary.md"
PROVIDER_ORDER = ("torch", "reference", "reference-compiled", "triton", "cuda", "host")


class MarkersMissing(RuntimeError):
    """README.md lacks the bench:latest markers."""


# ---------------------------------------------------------------------- parity (JUnit)
@dataclass
class JunitCase:
    classname: str
    name: str
    outcome: str  # passed | failed | error | skipped
    seconds: float
    message: str = ""


@dataclass
class JunitSummary:
    cases: list[JunitCase] = field(default_factory=list)

    @property
    def counts(self) -> Counter:
        return Counter(case.outcome for case in self.cases)


def parse_junit(path: Path | str) -> JunitSummary:
    """The test cases of a pytest JUnit XML file."""
    root = ET.parse(path).getroot()
    summary = JunitSummary()
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            child = case.find(kind)
            if child is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                message = (child.get("message") or child.text or "").strip()
                break
        summary.cases.append(
            JunitCase(
                classname=case.get("classname", ""),
                name=case.get("name", ""),
                outcome=outcome,
                seconds=float(case.get("time") or 0.0),
                message=" ".join(message.split()),
            )
        )
    return summary


def _md_escape(text: str, limit: int = 300) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _counts_line(counts: Counter) -> str:
    parts = [f"{counts.get(k, 0)} {k}" for k in ("passed", "failed", "error", "skipped")]
    return ", ".join(parts)


def parity_section(junit: JunitSummary | None) -> str:
    lines = ["## Parity: `pytest -m gpu`", ""]
    if junit is None:
        lines.append("No `parity.xml` in this folder: the parity tests were not run.")
        return "\n".join(lines)
    lines.append(f"**{_counts_line(junit.counts)}** ({len(junit.cases)} tests).")
    lines.append("")
    per_file: dict[str, Counter] = defaultdict(Counter)
    for case in junit.cases:
        per_file[case.classname][case.outcome] += 1
    lines += ["| test module | passed | failed | error | skipped |", "|---|---:|---:|---:|---:|"]
    for module, counts in sorted(per_file.items()):
        cells = " | ".join(str(counts.get(k, 0)) for k in ("passed", "failed", "error", "skipped"))
        lines.append(f"| `{module}` | {cells} |")
    bad = [c for c in junit.cases if c.outcome in ("failed", "error")]
    if bad:
        lines += ["", "### Failures", "", "| test | outcome | message |", "|---|---|---|"]
        for case in bad:
            lines.append(
                f"| `{case.classname}::{case.name}` | {case.outcome} | {_md_escape(case.message)} |"
            )
    skipped = Counter(c.message for c in junit.cases if c.outcome == "skipped")
    if skipped:
        lines += ["", "### Skipped (by reason)", "", "| tests | reason |", "|---:|---|"]
        for message, count in skipped.most_common():
            lines.append(f"| {count} | {_md_escape(message) or '(no reason given)'} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- benchmark tables
def _latest_per_case(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """One row per (suite, workload, mode, dtype, provider): the last one written."""
    chosen: dict[tuple, dict[str, str]] = {}
    for row in rows:
        key = (row["suite"], row["workload"], row["mode"], row["dtype"], row["provider"])
        chosen.pop(key, None)
        chosen[key] = row
    return list(chosen.values())


def _providers(rows: list[dict[str, str]]) -> list[str]:
    present = {r["provider"] for r in rows}
    return [p for p in PROVIDER_ORDER if p in present] + sorted(present - set(PROVIDER_ORDER))


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "" if value is None else format(value, spec)


def _table(
    rows: list[dict[str, str]],
    cell: Callable[[dict[str, str] | None, dict[str, str] | None], str],
    providers: list[str],
) -> list[str]:
    """A markdown table: one line per (workload, dtype), one column per provider; ``cell``
    gets the provider's row and torch's row of the same case."""
    keys: list[tuple[str, str]] = []
    index: dict[tuple, dict[str, str]] = {}
    for row in rows:
        key = (row["workload"], row["dtype"])
        if key not in keys:
            keys.append(key)
        index[(*key, row["provider"])] = row
    lines = [
        "| workload | dtype | " + " | ".join(providers) + " |",
        "|---|---|" + "---:|" * len(providers),
    ]
    for key in keys:
        cells = [cell(index.get((*key, p)), index.get((*key, "torch"))) for p in providers]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return lines


def _speedup_text(row: dict[str, str], base: dict[str, str] | None, bold: bool) -> str:
    """'2.00×' where the table's verdict (``schema.row_verdict``) is faster or slower, '≈'
    otherwise, '' without a speed-up."""
    speedup = schema.as_float(row["speedup_vs_torch"])
    if speedup is None:
        return ""
    if schema.row_verdict(row, base) == schema.SIMILAR:
        return "≈"
    return f"**{speedup:.2f}×**" if bold else f"{speedup:.2f}×"


def _speed_cell(row: dict[str, str] | None, base: dict[str, str] | None = None) -> str:
    if row is None:
        return ""
    if row["status"] != schema.STATUS_OK:
        return row["status"]
    text = f"{_fmt(schema.as_float(row['median_ms']))} ms"
    speedup = _speedup_text(row, base, bold=True)
    if speedup and row["provider"] != "torch":
        text += f" ({speedup})"
    return text


def _speedup_only(row: dict[str, str] | None, base: dict[str, str] | None = None) -> str:
    if row is None:
        return ""
    if row["status"] != schema.STATUS_OK:
        return row["status"]
    speedup = schema.as_float(row["speedup_vs_torch"])
    if row["provider"] == "torch":
        return "1.00×" if speedup is not None else "—"
    return "n/a (no torch)" if speedup is None else _speedup_text(row, base, bold=False)


def _paired_host_ratio(row: dict[str, str]) -> tuple[float, float, float] | None:
    """host / torch.nn as the median of the per-round ratios of one interleaved case, with
    its 95 % confidence interval (the reciprocals of the row's speed-up columns), or None
    for a row without them (older files, or torch.nn timed separately)."""
    speedup = schema.as_float(row.get("speedup_vs_torch"))
    low = schema.as_float(row.get("speedup_ci_low"))
    high = schema.as_float(row.get("speedup_ci_high"))
    if not speedup or low is None or high is None:
        return None
    return 1.0 / speedup, (1.0 / high if high > 0 else 0.0), (1.0 / low if low > 0 else math.inf)


def host_goals_section(rows: list[dict[str, str]], heading: str = "## Host speed goals") -> str:
    """Issue 12's goals (bench/workloads.py ``HOST_GOALS``) against this run. The verdict is
    taken from host / torch.nn as the median of the per-round ratios of the interleaved runs
    (the statistic of the speed-up tables, with its 95 % confidence interval); the ratio of
    the two medians is shown beside it, and is the verdict's ratio where the goal compares
    with another workload (C1 against torch.nn's C2: no rounds to pair). '' without any."""
    latest = {
        (r["provider"], r["workload"], r["mode"], r["dtype"]): r
        for r in _latest_per_case(rows)
        if r["status"] == "ok" and r["median_ms"]
    }
    lines = []
    for dtype in sorted({key[3] for key in latest}, key=lambda d: (d != "float32", d)):
        for (name, mode), (versus, limit) in workloads.HOST_GOALS.items():
            host = latest.get(("host", name, mode, dtype))
            torch_row = latest.get(("torch", versus, mode, dtype))
            if host is None or torch_row is None:
                continue
            host_ms, torch_ms = float(host["median_ms"]), float(torch_row["median_ms"])
            of_medians = host_ms / torch_ms
            paired = _paired_host_ratio(host) if versus == name else None
            ratio = of_medians if paired is None else paired[0]
            paired_text = (
                "—" if paired is None else f"{paired[0]:.2f} [{paired[1]:.2f}–{paired[2]:.2f}]"
            )
            against = name if versus == name else f"{name} vs torch.nn {versus}"
            verdict = "met" if ratio <= limit else "**not met**"
            lines.append(
                f"| {against} | {mode} | {dtype} | {_fmt(torch_ms)} ms | {_fmt(host_ms)} ms "
                f"| {paired_text} | {of_medians:.2f} | ≤ {limit:.2f}: {verdict} |"
            )
    if not lines:
        return ""
    return "\n".join(
        [
            heading,
            "",
            "host / torch.nn (< 1: host faster) against issue 12's goals (bench/workloads.py "
            "`HOST_GOALS`): the verdict is the median of the per-round ratios of the "
            "interleaved runs, with its 95 % confidence interval (one run: the interval is "
            "that run's spread); the ratio of the two median times beside it, which decides "
            "where the goal compares two workloads (no rounds to pair).",
            "",
            "| workload | mode | dtype | torch.nn | host | host / torch.nn per round [95 % CI] "
            "| ratio of medians | goal |",
            "|---|---|---|---:|---:|---:|---:|---|",
            *lines,
        ]
    )


def _floor_cell(row: dict[str, str] | None, base: dict[str, str] | None = None) -> str:
    if row is None or row["status"] != schema.STATUS_OK:
        return "" if row is None else row["status"]
    return _fmt(schema.as_float(row["floor_multiple"]), ".1f")


def _modes(rows: list[dict[str, str]]) -> list[str]:
    modes = [r["mode"] for r in rows]
    return [m for m in ("forward", "train") if m in modes] + sorted(
        set(modes) - {"forward", "train"}
    )


def speedup_section(rows: list[dict[str, str]]) -> str:
    lines = [
        "## Speed-up over torch.nn",
        "",
        "Median time per call, and in bold the speed-up over torch.nn (median of the "
        "per-round ratios of interleaved runs, same device; >1 is faster than torch.nn: cuDNN "
        "on a GPU); ≈ where the 95 % confidence interval of that median (binomial order "
        "statistics) is not entirely beyond 1.1× (older runs without it: the p20–p80 of the "
        "per-round ratios, or before those the two time spreads overlap or the ratio is "
        "within 1.1×).",
    ]
    for suite in ("workloads", "cpu", "sweep-batch", "sweep-hidden"):
        subset = [r for r in rows if r["suite"] == suite]
        if not subset:
            continue
        providers = _providers(subset)
        for mode in _modes(subset):
            lines += ["", f"### {suite}, {mode}", ""]
            lines += _table([r for r in subset if r["mode"] == mode], _speed_cell, providers)
    return "\n".join(lines)


def floor_section(rows: list[dict[str, str]], ceilings: list[dict] | None) -> str:
    lines = [
        "## Floor model",
        "",
        "`floor = max(FLOPs / matmul rate, bytes / copy bandwidth) + sequential steps × grid "
        "barrier` (bench/floor.py); the table gives each provider's median / floor.",
        "",
    ]
    if ceilings:
        lines += [
            "| device | dtype | matmul (TFLOP/s) | copy (GB/s) | grid barrier (µs) | barrier method |",
            "|---|---|---:|---:|---:|---|",
        ]
        for c in ceilings:
            barrier = c.get("barrier_s")
            lines.append(
                f"| {c['device']} | {c['dtype']} | {c['matmul_flops_per_s'] / 1e12:.2f} "
                f"(n={c['matmul_size']}) | {c['copy_bytes_per_s'] / 1e9:.1f} | "
                f"{'' if barrier is None else f'{barrier * 1e6:.2f}'} | "
                f"{_md_escape(c['barrier_method'])} |"
            )
    else:
        lines.append("No `ceilings.json` in this folder.")
    subset = [r for r in rows if r["suite"] == "workloads"]
    if subset:
        providers = _providers(subset)
        for mode in _modes(subset):
            lines += ["", f"### time / floor, {mode}", ""]
            lines += _table([r for r in subset if r["mode"] == mode], _floor_cell, providers)
    return "\n".join(lines)


def skipped_section(rows: list[dict[str, str]]) -> str:
    lines = ["## Not measured (skipped or failed, with the reason)", ""]
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for row in rows:
        if row["status"] != schema.STATUS_OK:
            key = (row["status"], row["provider"], row["reason"])
            groups[key].append(f"{row['workload']} {row['mode']} {row['dtype']}")
    if not groups:
        lines.append("Every case was measured.")
        return "\n".join(lines)
    lines += ["| status | provider | cases | reason |", "|---|---|---|---|"]
    for (status, provider, reason), cases in groups.items():
        shown = ", ".join(cases[:6]) + (f" and {len(cases) - 6} more" if len(cases) > 6 else "")
        lines.append(f"| {status} | {provider} | {shown} | {_md_escape(reason, 500)} |")
    return "\n".join(lines)


RAW_COLUMNS = (
    "provider",
    "mode",
    "workload",
    "dtype",
    "B",
    "H",
    "T",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "step_us",
    "tokens_per_s",
    "peak_mem_bytes",
    "floor_ms",
    "floor_multiple",
    "speedup_vs_torch",
    "repeats",
)


def raw_section(rows: list[dict[str, str]], csv_name: str = "bench.csv") -> str:
    measured = [r for r in rows if r["status"] == schema.STATUS_OK]
    lines = [
        "## Raw numbers",
        "",
        f"Every row (all columns, skipped ones included) is in [`{csv_name}`]({csv_name}).",
        "",
        "<details><summary>measured rows</summary>",
        "",
        "| " + " | ".join(RAW_COLUMNS) + " |",
        "|" + "---|" * len(RAW_COLUMNS),
    ]
    for row in measured:
        lines.append("| " + " | ".join(row[c] for c in RAW_COLUMNS) + " |")
    lines += ["", "</details>"]
    return "\n".join(lines)


def steps_section(steps: list[dict] | None) -> str:
    if not steps:
        return ""
    lines = [
        "## gpu_check.sh steps",
        "",
        "| step | exit code | seconds | log |",
        "|---|---:|---:|---|",
    ]
    for step in steps:
        log = step.get("log", "")
        lines.append(
            f"| {step['name']} | {step['rc']} | {step.get('seconds', '')} | "
            + (f"[{log}]({log})" if log else "")
            + " |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- the summary
@dataclass
class Folder:
    path: Path
    rows: list[dict[str, str]]
    junit: JunitSummary | None
    env: dict
    ceilings: list[dict] | None
    steps: list[dict] | None
    plots: list[str]
    dry_run: bool = False


def load_folder(path: Path | str) -> Folder:
    path = Path(path)
    csv_path = path / "bench.csv"
    if not csv_path.exists():
        raise FileNotFoundError(f"{csv_path} not found: is {path} a results folder?")
    rows = _latest_per_case(schema.read_rows(csv_path))

    def load_json(name: str):
        file = path / name
        return json.loads(file.read_text()) if file.exists() else None

    junit = parse_junit(path / "parity.xml") if (path / "parity.xml").exists() else None
    check = load_json("gpu_check.json") or {}
    return Folder(
        path=path,
        rows=rows,
        junit=junit,
        env=load_json("env.json") or {},
        ceilings=load_json("ceilings.json"),
        steps=check.get("steps"),
        plots=sorted(p.name for p in path.glob("*.png")),
        dry_run=bool(check.get("dry_run")),
    )


def _headline(folder: Folder) -> dict[str, str]:
    first = folder.rows[0] if folder.rows else {}
    env = folder.env.get("environment", {}) if folder.env else {}
    get = lambda key: first.get(key) or env.get(key) or "unknown"  # noqa: E731
    runs = sorted({r["run_id"] for r in folder.rows})
    return {
        "device_name": get("device_name"),
        "device": get("device"),
        "commit": get("fusedrnn_commit"),
        "torch": get("torch_version"),
        "triton": first.get("triton_version") or env.get("triton_version") or "not installed",
        "cuda": first.get("cuda_version") or env.get("cuda_version") or "none",
        "python": get("python_version"),
        "runs": ", ".join(runs) or "none",
    }


def build_summary(folder: Folder) -> str:
    head = _headline(folder)
    lines = [
        f"# fusedrnn benchmark report: {head['device_name']}",
        "",
        "<!-- generated by bench/report.py from the files of this folder; do not edit -->",
        "",
        f"- commit: `{head['commit']}`",
        f"- device: {head['device_name']} ({head['device']})",
        f"- torch {head['torch']}, triton {head['triton']}, CUDA {head['cuda']}, "
        f"Python {head['python']}",
        f"- benchmark run(s): {head['runs']}",
    ]
    if folder.dry_run:
        lines.append(
            "- **dry run on a CPU** (`bench/gpu_check.sh --dry-run`): no CUDA build, the gpu "
            "tests skip, the numbers are the CPU quick mode; not a GPU result"
        )
    availability = folder.env.get("available_backends") if folder.env else None
    if availability:
        lines.append(
            "- fusedrnn backends: "
            + "; ".join(
                f"{name}: {'available' if reason is None else 'unavailable (' + reason + ')'}"
                for name, reason in availability.items()
            )
        )
    settings = folder.env.get("settings") if folder.env else None
    if settings:
        lines.append(
            "- timing: {warmup} warm-up + {repeats} timed runs per case (fewer for cases over "
            "{max_case_s} s), median and p20/p80; CUDA events on a GPU, perf_counter on a "
            "CPU; TF32 matmul {allow_tf32}".format(**settings)
        )
    sections = [
        "\n".join(lines),
        steps_section(folder.steps),
        parity_section(folder.junit),
        speedup_section(folder.rows),
        host_goals_section(folder.rows),
        floor_section(folder.rows, folder.ceilings),
        skipped_section(folder.rows),
    ]
    if folder.plots:
        sections.append("## Plots\n\n" + "\n\n".join(f"![{p}]({p})" for p in folder.plots))
    sections.append(raw_section(folder.rows))
    return "\n\n".join(s for s in sections if s) + "\n"


def write_summary(path: Path | str) -> Path:
    folder = load_folder(path)
    out = folder.path / SUMMARY_NAME
    out.write_text(build_summary(folder))
    return out


# ---------------------------------------------------------------------- README block
def readme_block(folder: Folder, readme: Path) -> str:
    """The generated text between README's markers (links relative to README)."""
    head = _headline(folder)
    link = Path(os.path.relpath(folder.path / SUMMARY_NAME, readme.resolve().parent)).as_posix()
    parity = "not run"
    if folder.junit is not None:
        parity = _counts_line(folder.junit.counts)
    lines = [
        f"<!-- generated by bench/report.py from {folder.path.name}/ on "
        f"{_dt.date.today().isoformat()}; do not edit by hand -->",
        f"Latest benchmark report: [{folder.path.name}]({link}), {head['device_name']}, "
        f"commit `{head['commit']}`, torch {head['torch']}, triton {head['triton']}, "
        f"CUDA {head['cuda']}.",
        "",
        f"Parity with torch.nn on this device (`pytest -m gpu`): {parity}.",
        "",
    ]
    subset = [r for r in folder.rows if r["suite"] == "workloads"]
    if subset:  # the GPU workloads: speed-ups only
        lines.append(
            "Speed-up over torch.nn (median of the per-round ratios, same run; >1 is faster; "
            "≈ where the 95 % CI of the median ratio is not entirely beyond 1.1×):"
        )
        providers, cell = [p for p in _providers(subset) if p != "torch"], _speedup_only
    else:  # a CPU-only report (the host targets C1/C2): medians and speed-ups
        subset = [r for r in folder.rows if r["suite"] == "cpu"]
        lines.append(
            "Median time per call and, in bold, speed-up over torch.nn (same run; >1 is "
            "faster; ≈ where the 95 % CI of the median ratio is not entirely beyond 1.1×):"
        )
        providers, cell = _providers(subset), _speed_cell
    for mode in _modes(subset):
        lines += ["", f"{mode}:", ""]
        lines += _table([r for r in subset if r["mode"] == mode], cell, providers)
    goals = host_goals_section(subset, heading="Host speed goals (issue 12):")
    if goals:
        lines += ["", goals]
    return "\n".join(lines)


def update_readme(readme: Path | str, block: str) -> None:
    """Replace the text between the markers of ``readme`` with ``block``."""
    readme = Path(readme)
    text = readme.read_text() if readme.exists() else ""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < 0 or end < start:
        raise MarkersMissing(
            f"{readme} has no '{START_MARKER}' ... '{END_MARKER}' block; add both markers "
            "where the latest results belong, then run this again"
        )
    new = text[: start + len(START_MARKER)] + "\n" + block.strip() + "\n" + text[end:]
    readme.write_text(new)


def latest_folder(results_root: Path | str) -> Path:
    """The newest results folder (names start with the date) that holds a bench.csv."""
    candidates = sorted(p for p in Path(results_root).iterdir() if (p / "bench.csv").exists())
    if not candidates:
        raise FileNotFoundError(f"no results folder with a bench.csv under {results_root}")
    return candidates[-1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/report.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", nargs="?", type=Path, help="a results folder")
    parser.add_argument("--latest", type=Path, help="use the newest folder under this root")
    parser.add_argument("--readme", type=Path, help="update this README's bench:latest block")
    args = parser.parse_args(argv)
    if (args.folder is None) == (args.latest is None):
        parser.error("give a results folder or --latest ROOT (one of them)")
    try:
        path = args.folder if args.folder is not None else latest_folder(args.latest)
        summary = write_summary(path)
    except (FileNotFoundError, schema.SchemaError) as error:
        print(f"report: {error}", file=sys.stderr)
        return 1
    print(f"wrote {summary}")
    if args.readme is not None:
        try:
            update_readme(args.readme, readme_block(load_folder(path), args.readme))
        except MarkersMissing as error:
            print(f"report: {error}", file=sys.stderr)
            return 2
        print(f"updated the bench:latest block of {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
