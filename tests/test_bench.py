"""The benchmark suite (bench/): quick mode end to end, the CSV schema, the plots, the floor
model's arithmetic, report.py and the pytest-benchmark integration."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # bench/ is not installed: plain `pytest` must find it too
    sys.path.insert(0, str(REPO))

from bench import cli, floor, providers, report, runner, schema, visualize, workloads  # noqa: E402
from bench.timing import Timing, paired_ratio, percentile, time_interleaved  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


# ---------------------------------------------------------------------- quick mode
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench_quick")
    result = _run(["-m", "bench", "--quick", "--out", str(out), "--no-progress"])
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result.stdout


def test_quick_writes_the_schema(quick_run: tuple[Path, str]) -> None:
    out, _ = quick_run
    with (out / "bench.csv").open(newline="") as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == schema.COLUMNS
    rows = schema.read_rows(out / "bench.csv")
    expected = {
        (w, m, p)
        for w in workloads.QUICK_WORKLOADS
        for m in workloads.MODES
        for p in providers.QUICK_PROVIDERS
    }
    assert {(r["workload"], r["mode"], r["provider"]) for r in rows} == expected
    assert len(rows) == len(expected)  # every case listed once, none silently dropped
    assert len({r["run_id"] for r in rows}) == 1
    for row in rows:
        assert row["status"] in (schema.STATUS_OK, schema.STATUS_SKIPPED), row
        assert row["dtype"] == "float32" and row["device"] == "cpu"
        assert row["torch_version"] == torch.__version__
        assert row["fusedrnn_commit"]
        assert float(row["flops"]) > 0 and float(row["floor_ms"]) > 0
        if row["status"] != schema.STATUS_OK:
            assert row["reason"], row
            continue
        median = float(row["median_ms"])
        assert float(row["p20_ms"]) <= median <= float(row["p80_ms"])
        w = workloads.QUICK_WORKLOADS[row["workload"]]
        assert math.isclose(float(row["step_us"]), median * 1e3 / w.steps, rel_tol=1e-4)
        assert math.isclose(float(row["tokens_per_s"]), w.tokens / (median / 1e3), rel_tol=1e-4)
        assert math.isclose(
            float(row["floor_multiple"]), median / float(row["floor_ms"]), rel_tol=1e-4
        )
        # CPU: peak memory is not measured, and the row says why
        assert row["peak_mem_bytes"] == "" and "not measured on CPU" in row["peak_mem_method"]


def test_quick_lists_skipped_rows_with_reasons(quick_run: tuple[Path, str]) -> None:
    out, stdout = quick_run
    rows = schema.read_rows(out / "bench.csv")
    torch_w4 = [r for r in rows if r["provider"] == "torch" and r["workload"] == "W4"]
    assert len(torch_w4) == 2
    for row in torch_w4:
        assert row["status"] == schema.STATUS_SKIPPED
        assert "zoneout" in row["reason"] and row["regularizers"]
        assert row["median_ms"] == ""
    assert "skipped: torch W4" in stdout  # the printed table lists it too
    # speed-ups only where torch ran, computed in this run (paired per-round ratios: the
    # times themselves are not in the CSV, so only their sign and presence are checked here)
    by_case = {(r["workload"], r["mode"], r["provider"]): r for r in rows}
    assert float(by_case[("W1", "forward", "reference")]["speedup_vs_torch"]) > 0
    assert by_case[("W4", "forward", "reference")]["speedup_vs_torch"] == ""
    assert all(r["repeats"] == str(cli.QUICK_REPEATS) for r in rows if r["status"] == "ok")
    for row in rows:  # interleaved with torch: the spread of the per-round ratios too
        if row["speedup_vs_torch"]:
            low, mid, high = (
                float(row[c]) for c in ("speedup_p20", "speedup_vs_torch", "speedup_p80")
            )
            assert low <= mid <= high, row
            # and the median's confidence interval, which lies inside that spread at these n
            ci_low, ci_high = (float(row[c]) for c in ("speedup_ci_low", "speedup_ci_high"))
            assert low <= ci_low <= mid <= ci_high <= high, row
    # tiny calls are averaged into samples of at least QUICK_MIN_SAMPLE_MS, and say so
    torch_w1 = by_case[("W1", "forward", "torch")]
    assert "back-to-back calls" in torch_w1["notes"], torch_w1["notes"]


def test_quick_says_what_it_measured(quick_run: tuple[Path, str]) -> None:
    out, stdout = quick_run
    header = stdout.split("workload  ")[0]
    assert "QUICK MODE: tiny shapes" in header
    assert "fusedrnn bench on " in header and "device cpu" in header
    assert "1 CPU thread(s)" in header
    assert f"3 warm-up + {cli.QUICK_REPEATS} timed runs per provider, interleaved" in header
    assert "clock: process CPU time" in header  # one thread on a CPU: the auto clock
    assert (
        f"mean of as many back-to-back calls as take at least {cli.QUICK_MIN_SAMPLE_MS:g} ms"
        in header
    )
    assert f"taken in {cli.QUICK_PASSES} passes over the whole matrix" in header
    rows = schema.read_rows(out / "bench.csv")
    torch_rows = {(r["workload"], r["mode"]): r for r in rows if r["provider"] == "torch"}
    lines = stdout.splitlines()
    for row in rows:
        if row["provider"] != "host" or row["status"] != "ok" or row["regularizers"]:
            continue
        # the table line of this case names the shape and shows host's spread and verdict
        line = next(x for x in lines if x.startswith(row["workload"] + " ") and row["mode"] in x)
        assert schema.shape_label(row) in line
        assert f"[{float(row['p20_ms']):.3g}–{float(row['p80_ms']):.3g}]" in line
        judged = schema.row_verdict(row, torch_rows[(row["workload"], row["mode"])])
        assert line.rstrip().endswith(judged), (line, judged)


def test_quick_draws_plots_and_metadata(quick_run: tuple[Path, str]) -> None:
    out, stdout = quick_run
    for name in ("workloads.png", "speedup_workloads.png"):
        path = out / name
        assert path.exists() and path.read_bytes()[:8] == PNG_MAGIC
        assert str(path) in stdout
    assert "workload" in stdout and "torch" in stdout  # the comparison table
    env = json.loads((out / "env.json").read_text())
    assert set(env["available_backends"]) >= {"torch", "reference", "host"}
    ceilings = json.loads((out / "ceilings.json").read_text())
    assert ceilings[0]["barrier_s"] is None and "not applicable" in ceilings[0]["barrier_method"]


def test_sweep_plots_from_csv(tmp_path: Path) -> None:
    rows = []
    for name, w in workloads.sweep_workloads(quick=True).items():
        for provider, median in (("torch", 2.0), ("host", 1.0 + w.batch / 100)):
            row = {"run_id": "r1", "provider": provider, "mode": "forward", "dtype": "float32"}
            row.update(w.csv_fields())
            row.update(status="ok", median_ms=median, device_name="test", torch_version="x")
            row.update(fusedrnn_commit="abc", speedup_vs_torch=2.0 / median)
            rows.append(row)
            assert name == row["workload"]
    schema.write_rows(tmp_path / "bench.csv", rows)
    drawn = visualize.plot_csv(tmp_path / "bench.csv")
    assert {p.name for p in drawn} == {"speedup_batch.png", "speedup_hidden.png"}
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in drawn)


def test_csv_appender_refuses_another_schema(tmp_path: Path) -> None:
    path = tmp_path / "bench.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(schema.SchemaError):
        schema.CsvAppender(path)
    with pytest.raises(schema.SchemaError):
        schema.CsvAppender(tmp_path / "new.csv").write({"not_a_column": 1})


# ---------------------------------------------------------------------- floor model
def test_floor_model_by_hand() -> None:
    w1 = workloads.WORKLOADS["W1"]  # LSTM, B=16, I=H=512, T=512: G*H = 2048, n = 8192
    fwd = floor.cost(w1, "forward", "float32")
    assert fwd.recurrent_flops == 2 * 16 * 512 * 2048 * 512 == 17_179_869_184
    assert fwd.input_flops == 17_179_869_184  # I = H
    assert fwd.flops == 34_359_738_368
    # x (512) + xg written and read (2 * 2048) + h (512) per token, both weights once, 4 B
    assert fwd.bytes == 4 * (8192 * (512 + 2048 + 2048 + 512) + 2048 * (512 + 512))
    assert fwd.bytes == 176_160_768
    assert fwd.sequential_steps == 512
    train = floor.cost(w1, "train", "float32")
    assert train.flops == 3 * 34_359_738_368 and train.sequential_steps == 1024
    assert floor.cost(w1, "forward", "bfloat16").bytes == 176_160_768 // 2

    w7 = workloads.WORKLOADS["W7"]  # 2 layers x 2 directions, B=32, H=512, T=256: n = 8192
    c7 = floor.cost(w7, "forward", "float32")
    assert c7.recurrent_flops == 4 * (2 * 8192 * 2048 * 512)
    # layer 0 reads I=512, layer 1 reads both directions (1024)
    assert c7.input_flops == 2 * (2 * 8192 * 512 * 2048) + 2 * (2 * 8192 * 1024 * 2048)
    assert c7.sequential_steps == 2 * 256  # directions of a layer run concurrently

    w5 = workloads.WORKLOADS["W5"]  # packed: only real tokens count
    lengths = w5.lengths()
    assert lengths == w5.lengths() and max(lengths) == 256 and min(lengths) >= 64
    assert floor.cost(w5, "forward", "float32").recurrent_flops == 2 * sum(lengths) * 4096 * 1024

    ceilings = floor.Ceilings("cuda", "float32", 1e12, 8192, 1e11, 1 << 30, 1e-6, "test")
    expected = max(34_359_738_368 / 1e12, 176_160_768 / 1e11) + 512 * 1e-6
    assert math.isclose(floor.floor_seconds(fwd, ceilings), expected, rel_tol=1e-12)
    cpu = floor.Ceilings("cpu", "float32", 1e11, 256, 1e9, 1 << 24, None, "n/a")
    assert math.isclose(floor.floor_seconds(fwd, cpu), 34_359_738_368 / 1e11, rel_tol=1e-12)


def test_barrier_kernel_counts_rounds_and_cannot_hang() -> None:
    """The floor model's grid-barrier kernel (bench/_barrier.py): on a CPU under the Triton
    interpreter (programs run one after another), on a GPU for real."""
    pytest.importorskip("triton")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not interpreted and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU or TRITON_INTERPRET=1")
    from bench import _barrier

    device = "cpu" if interpreted else "cuda"
    counter = torch.zeros(1, dtype=torch.int32, device=device)
    timeout = torch.zeros(1, dtype=torch.int32, device=device)
    _barrier.barrier_rounds_kernel[(1,)](counter, timeout, 5, 100, num_warps=1)
    assert (counter.item(), timeout.item()) == (5, 0)
    if interpreted:
        # Program 0 waits for program 1, which the interpreter only runs afterwards: the
        # spin limit ends the wait and reports it instead of hanging.
        counter.zero_()
        _barrier.barrier_rounds_kernel[(2,)](counter, timeout, 3, 10, num_warps=1)
        assert (counter.item(), timeout.item()) == (6, 1)


def test_percentile_matches_numpy() -> None:
    import numpy as np

    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    for q in (0, 20, 50, 80, 100):
        assert math.isclose(percentile(values, q), float(np.percentile(values, q)))


def _binomial_half_cdf_below(n: int, k: int) -> Fraction:
    """P(Binomial(n, 1/2) < k), exactly, by building the distribution one coin at a time
    (Pascal's rule on probabilities; no binomial coefficients)."""
    pmf = [Fraction(1)]
    for _ in range(n):
        pmf = [(a + b) / 2 for a, b in zip([Fraction(0), *pmf], [*pmf, Fraction(0)])]
    return sum(pmf[:k], Fraction(0))


@pytest.mark.parametrize("n", [1, 2, 5, 6, 21, 41, 63])
def test_median_ci_rank_is_the_largest_with_tail_at_most_2_5_percent(n: int) -> None:
    allowed = [k for k in range(n + 1) if _binomial_half_cdf_below(n, k) <= Fraction(1, 40)]
    assert schema.median_ci_rank(n) == max(allowed)
    # the interval [x_(k), x_(n+1-k)] on 1..n is [k, n+1-k]; none below 6 values
    values = [float(v) for v in range(n, 0, -1)]
    k = max(allowed)
    expected = (0.0, math.inf) if k == 0 else (float(k), float(n + 1 - k))
    assert schema.median_ci(values) == expected


def test_median_ci_rank_textbook_values() -> None:
    # tables of the distribution-free 95 % interval of the median: n=6: (x1, x6), 96.9 %;
    # n=10: (x2, x9), 97.9 %
    assert schema.median_ci_rank(6) == 1
    assert schema.median_ci_rank(10) == 2


def _heavy_tailed_ratios(scale: float = 1.0) -> list[float]:
    """41 per-round ratios: a core of 21 from 1.15 to 1.35 (median 1.25), 10 rounds far
    below (a noisy spell that hit the provider) and 10 far above."""
    low_tail = [0.5 + 0.05 * i for i in range(10)]  # 0.50..0.95
    core = [1.15 + 0.01 * i for i in range(21)]
    high_tail = [2.0 + 0.2 * i for i in range(10)]
    return [r * scale for r in (*high_tail, *core, *low_tail)]


def test_verdict_from_the_median_ci_where_the_p20_rule_said_similar() -> None:
    ratios = _heavy_tailed_ratios()
    assert math.isclose(percentile(ratios, 50), 1.25)
    p20, p80 = percentile(ratios, 20), percentile(ratios, 80)
    assert schema.verdict(p20, p80) == schema.SIMILAR  # the spread: p20 < 1.1
    ci_low, ci_high = schema.median_ci(ratios)
    assert ci_low > schema.MIN_EFFECT
    assert schema.verdict(ci_low, ci_high) == schema.FASTER
    row = {"status": "ok", "speedup_vs_torch": "1.25", "p20_ms": "1", "p80_ms": "2"}
    row.update(speedup_p20=str(p20), speedup_p80=str(p80))
    base = {"status": "ok", "p20_ms": "1", "p80_ms": "2"}
    judged = dict(row, speedup_ci_low=str(ci_low), speedup_ci_high=str(ci_high))
    assert schema.row_verdict(judged, base) == schema.FASTER  # the CI, not the p20
    assert schema.row_verdict(row, base) == schema.SIMILAR  # an older file: the p20 rule
    # mirrored: the provider takes 1.25x torch's time, with the same tails
    slow = [1 / r for r in ratios]
    assert schema.verdict(*schema.median_ci(slow)) == schema.SLOWER
    assert schema.verdict(percentile(slow, 20), percentile(slow, 80)) == schema.SIMILAR
    # a median of 1.125, at the margin: its interval reaches below 1.1, ≈
    at_margin = _heavy_tailed_ratios(scale=0.9)
    assert math.isclose(percentile(at_margin, 50), 1.125)
    assert schema.verdict(*schema.median_ci(at_margin)) == schema.SIMILAR
    # too few rounds for an interval: ≈ whatever they say
    assert schema.verdict(*schema.median_ci([2.0] * 5)) == schema.SIMILAR
    assert schema.verdict(*schema.median_ci([2.0] * 6)) == schema.FASTER


def test_verdict_needs_the_whole_interval_beyond_the_margin() -> None:
    # (low, high) of an interval of the ratio torch / provider: faster only when its low
    # end is above 1.1, slower only when its high end is below 1/1.1
    assert schema.verdict(1.15, 1.3) == schema.FASTER
    assert schema.verdict(0.7, 0.85) == schema.SLOWER
    assert schema.verdict(1.05, 1.5) == schema.SIMILAR  # median may be 1.2: the low end is not
    assert schema.verdict(0.6, 0.95) == schema.SIMILAR
    assert schema.verdict(0.95, 1.05) == schema.SIMILAR
    assert schema.verdict(1.1, 1.2) == schema.SIMILAR  # at the margin: not beyond it
    assert schema.verdict(0.85, 1 / 1.1) == schema.SIMILAR
    assert schema.verdict(None, 1.2) is None


def test_row_verdict_reads_the_ratio_spread_before_the_time_spreads() -> None:
    base = {"status": "ok", "p20_ms": "1", "p80_ms": "1.6"}
    # the machine's drift widened both time spreads until they overlap, but every round
    # says the provider takes about 1.3x torch's time: slower
    drifting = {"status": "ok", "p20_ms": "1.4", "p80_ms": "2.0", "speedup_vs_torch": "0.77"}
    drifting.update(speedup_p20="0.74", speedup_p80="0.8")
    assert schema.row_verdict(drifting, base) == schema.SLOWER
    # the time spreads separate, but the rounds disagree (ratios 0.95..1.4): ≈
    noisy = {"status": "ok", "p20_ms": "0.5", "p80_ms": "0.9", "speedup_vs_torch": "1.5"}
    noisy.update(speedup_p20="0.95", speedup_p80="1.4")
    assert schema.row_verdict(noisy, base) == schema.SIMILAR
    skipped = {"status": "skipped", "p20_ms": "", "p80_ms": "", "speedup_p20": ""}
    assert schema.row_verdict(skipped, base) is None
    # rows of older files (no ratio spread): the time spreads must separate and the median
    # ratio be beyond 1.1x
    assert schema.row_verdict({"status": "ok", "p20_ms": "2", "p80_ms": "3"}, base) == "slower"
    old = {"status": "ok", "p20_ms": "0.5", "p80_ms": "0.9", "speedup_vs_torch": "1.5"}
    assert schema.row_verdict(old, base) == schema.FASTER
    assert schema.row_verdict(dict(old, p80_ms="1.0"), base) == schema.SIMILAR  # touching
    assert schema.spread_verdict(1.0, 1.01, 0.95, 0.99, 1.05) == schema.SIMILAR  # < 1.1x
    assert schema.spread_verdict(1.0, 1.01, 1.1, 1.2, 1 / 1.15) == schema.SLOWER


def _older_csv(path: Path, dropped: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    header = [c for c in schema.COLUMNS if c not in dropped]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(c, "") for c in header])


def test_older_files_stay_readable_with_their_own_verdict_rule(tmp_path: Path) -> None:
    rows = _measured_rows()  # W1 host: ratio spread 1.81..2.21; W5 host: 0.84..1.68
    ci_columns = ("speedup_ci_low", "speedup_ci_high")
    # a file from before the confidence interval: read, its CI cells empty, p20/p80 rule
    before_ci = tmp_path / "before_ci" / "bench.csv"
    before_ci.parent.mkdir()
    _older_csv(before_ci, ci_columns, rows)
    read = schema.read_rows(before_ci)
    assert [tuple(r) for r in read] == [schema.COLUMNS] * len(rows)
    assert all(r["speedup_ci_low"] == "" and r["speedup_ci_high"] == "" for r in read)
    torch_rows = {r["workload"]: r for r in read if r["provider"] == "torch"}
    host = {r["workload"]: r for r in read if r["provider"] == "host"}
    assert schema.row_verdict(host["W1"], torch_rows["W1"]) == schema.FASTER
    assert schema.row_verdict(host["W5"], torch_rows["W5"]) == schema.SIMILAR
    # the table, the report and the plots read it
    assert "2.00x faster" in runner.format_table(read)
    assert "**2.00×**" in report.speedup_section(read)
    drawn = visualize.plot_csv(before_ci, quick=False)
    assert {p.name for p in drawn} >= {"workloads.png", "speedup_workloads.png"}
    # appending to it is refused (one header per file); --fresh starts a new one
    with pytest.raises(schema.SchemaError):
        schema.CsvAppender(before_ci)
    schema.CsvAppender(before_ci, fresh=True).ensure_header()
    assert before_ci.read_text().splitlines()[0] == ",".join(schema.COLUMNS)
    # a file from before the ratio spread too: the time-spread rule (W1 host: 1.9–2.1 ms
    # against torch's 3.8–4.2, apart: faster; W5: they overlap, ≈)
    oldest = tmp_path / "oldest.csv"
    _older_csv(oldest, ("speedup_p20", "speedup_p80", *ci_columns), rows)
    read = schema.read_rows(oldest)
    torch_rows = {r["workload"]: r for r in read if r["provider"] == "torch"}
    host = {r["workload"]: r for r in read if r["provider"] == "host"}
    assert host["W1"]["speedup_p20"] == ""
    assert schema.row_verdict(host["W1"], torch_rows["W1"]) == schema.FASTER
    assert schema.row_verdict(host["W5"], torch_rows["W5"]) == schema.SIMILAR
    # other headers are still refused: a column that was never added later, or reordered
    # (with or without the added columns)
    older = [c for c in schema.COLUMNS if c not in ci_columns]
    for header in (
        [c for c in schema.COLUMNS if c != "median_ms"],
        [*schema.COLUMNS[1:], schema.COLUMNS[0]],
        [*older[1:], older[0]],
    ):
        odd = tmp_path / "odd.csv"
        odd.write_text(",".join(header) + "\n")
        with pytest.raises(schema.SchemaError):
            schema.read_rows(odd)


def test_time_interleaved_rotates_rounds_and_pairs_them() -> None:
    order: list[str] = []
    calls = {name: (lambda n=name: order.append(n), None) for name in ("a", "b", "c")}
    timings = time_interleaved(calls, torch.device("cpu"), warmup=1, repeats=4)
    assert order[:3] == ["a", "b", "c"]  # warm-up
    assert order[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert all(len(t.times_s) == 4 and t.warmup == 1 for t in timings.values())
    # the speed-up is the median of per-round ratios, not the ratio of medians
    base = Timing([1.0, 10.0, 3.0], 1, 1.0)
    other = Timing([1.0, 5.0, 6.0], 1, 1.0)
    assert paired_ratio(base, other) == 1.0  # ratios 1, 2, 0.5
    assert base.median_s / other.median_s == 0.6


def test_short_calls_are_averaged_into_samples_of_min_sample_s() -> None:
    calls_made = {"short": 0, "long": 0}

    def sleeper(name: str, seconds: float):
        def call() -> None:
            calls_made[name] += 1
            time.sleep(seconds)

        return call

    calls = {"short": (sleeper("short", 0.002), None), "long": (sleeper("long", 0.012), None)}
    timings = time_interleaved(
        calls, torch.device("cpu"), warmup=1, repeats=3, clock="wall", min_sample_s=0.01
    )
    short, long = timings["short"], timings["long"]
    # ceil(10 ms / a bit over 2 ms; sleep overshoots on a busy machine) calls per sample for
    # the short call, one for the long
    assert 2 <= short.calls_per_sample <= 5 and long.calls_per_sample == 1
    assert calls_made == {"short": 1 + 3 * short.calls_per_sample, "long": 1 + 3}
    # each sample is the mean time of one call, not the sample's total (at least 10 ms)
    assert all(0.002 <= t < 0.008 for t in short.times_s), short.times_s
    assert all(0.012 <= t for t in long.times_s)


def test_cpu_clock_does_not_count_waiting() -> None:
    calls = {"sleep": (lambda: time.sleep(0.02), None)}
    cpu = time_interleaved(calls, torch.device("cpu"), warmup=1, repeats=3, clock="cpu")
    wall = time_interleaved(calls, torch.device("cpu"), warmup=1, repeats=3, clock="wall")
    assert max(cpu["sleep"].times_s) < 0.01 <= 0.02 <= min(wall["sleep"].times_s)
    with pytest.raises(ValueError, match="unknown clock"):
        time_interleaved(calls, torch.device("cpu"), clock="monotonic")


def _measured_rows() -> list[dict[str, str]]:
    """torch and host on W1 and W5 (full sizes), forward: host faster on W1, ≈ on W5."""
    rows = []
    cases = (
        ("W1", "torch", 4.0, 3.8, 4.2),
        ("W1", "host", 2.0, 1.9, 2.1),
        ("W5", "torch", 4.0, 3.0, 5.0),
        ("W5", "host", 3.5, 2.5, 4.5),
    )
    for name, provider, median, p20, p80 in cases:
        w = workloads.WORKLOADS[name]
        row = {"run_id": "r1", "provider": provider, "mode": "forward", "dtype": "float32"}
        row.update(w.csv_fields(), status="ok", median_ms=median, p20_ms=p20, p80_ms=p80)
        row.update(tokens_per_s=w.tokens / (median / 1e3), floor_ms=0.25, repeats=21)
        row.update(device_name="test cpu", torch_version="x", fusedrnn_commit="abc")
        if provider != "torch":  # per-round ratios: 1.8..2.2 on W1, 0.9..1.5 on W5
            row.update(speedup_vs_torch=4.0 / median, speedup_p20=4.0 / p80 * 0.95)
            row.update(speedup_p80=4.0 / p20 * 1.05)
        rows.append(schema.as_strings(row))
    return rows


def test_table_shows_spreads_and_verdicts() -> None:
    table = runner.format_table(_measured_rows())
    w1 = next(line for line in table.splitlines() if line.startswith("W1 "))
    w5 = next(line for line in table.splitlines() if line.startswith("W5 "))
    assert "LSTM B=16 I=H=512 T=512" in w1 and "packed" in w5
    assert "4 [3.8–4.2]" in w1 and "2 [1.9–2.1] 2.00x faster" in w1
    assert w5.rstrip().endswith("3.5 [2.5–4.5] ≈") and "1.14x" not in w5


def test_workload_plot_has_shapes_spreads_floor_and_quick_banner() -> None:
    rows = _measured_rows()
    for metric in ("time", "tokens", "speedup"):
        fig = visualize.workload_figure(rows, metric, quick=True)
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels[0].startswith("W1\nLSTM B=16\nI=H=512 T=512"), labels
        assert "packed" in labels[1]
        assert "QUICK MODE" in fig._suptitle.get_text()
        bars = [c for c in ax.containers if getattr(c, "errorbar", None) is not None]
        assert bars, f"{metric}: no error bars"
        if metric == "time":
            host = next(c for c in bars if c.get_label() == "host")
            # whiskers span p20..p80 of each host row (W1, then W5)
            segments = host.errorbar.lines[2][0].get_segments()
            spans = [(seg[0][1], seg[1][1]) for seg in segments]
            assert spans == [(1.9, 2.1), (2.5, 4.5)]
        floors = [c for c in ax.collections if c.get_gid() == "floor"]
        if metric == "speedup":
            assert not floors
            assert "≈" in [t.get_text() for t in ax.texts]
            continue
        assert len(floors) == 2  # one dashed bound per workload
        w1 = workloads.WORKLOADS["W1"]
        expected = 0.25 if metric == "time" else w1.tokens / 0.25e-3
        assert math.isclose(floors[0].get_segments()[0][0][1], expected, rel_tol=1e-6)
        visualize._pyplot().close(fig)
    assert "QUICK" not in visualize.workload_figure(rows, "time")._suptitle.get_text()


def test_skip_reasons() -> None:
    w = workloads.QUICK_WORKLOADS["W1"]
    ok = {"reference": None, "host": None, "cuda": None, "triton": None}
    cuda = torch.device("cuda")  # a device object; nothing is allocated on it
    assert "CPU tensors" in providers.skip_reason("host", w, cuda, ok)
    assert "needs a CUDA device" in providers.skip_reason("cuda", w, torch.device("cpu"), ok)
    assert "no nvcc" in providers.skip_reason("cuda", w, cuda, {"cuda": "no nvcc"})
    long = workloads.WORKLOADS["W1"]
    guarded = providers.skip_reason("reference-compiled", long, cuda, ok, compile_max_steps=64)
    assert "--compile-max-steps" in guarded
    assert providers.skip_reason("reference-compiled", w, cuda, ok, compile_max_steps=64) is None
    assert providers.skip_reason("reference-compiled", long, cuda, ok) is None  # default: none
    assert "zoneout" in providers.skip_reason("torch", workloads.WORKLOADS["W4"], cuda, ok)


# ---------------------------------------------------------------------- report.py
def _synthetic_folder(folder: Path) -> None:
    folder.mkdir()
    rows = []
    w = workloads.WORKLOADS["W1"]
    base = {"run_id": "run-1", "mode": "forward", "dtype": "bfloat16", "device": "cuda"}
    base.update(w.csv_fields())
    base.update(device_name="NVIDIA Test GPU", torch_version="2.11.0", triton_version="3.6.0")
    base.update(cuda_version="13.0", python_version="3.12.0", fusedrnn_commit="deadbeef1234")
    for provider, status, median, reason in (
        ("torch", "ok", 4.0, ""),
        ("reference", "ok", 3.9, ""),  # its spread overlaps torch's: ≈
        ("cuda", "ok", 2.0, ""),
        ("triton", "skipped", None, "backend 'triton' unavailable: triton cannot be imported"),
    ):
        row = dict(base, provider=provider, status=status, reason=reason, median_ms=median)
        if median:
            spread = 0.5 if provider == "reference" else 0.0
            row.update(p20_ms=median - spread, p80_ms=median + spread)
            row.update(speedup_vs_torch=4.0 / median)
            row.update(floor_ms=0.5, floor_multiple=median / 0.5)
        rows.append(row)
    schema.write_rows(folder / "bench.csv", rows)
    (folder / "parity.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_cuda" name="test_a" time="0.1"/>'
        '<testcase classname="tests.test_cuda" name="test_b" time="0.2"/>'
        '<testcase classname="tests.test_cuda" name="test_c" time="0.3">'
        '<failure message="AssertionError: max error 3e-2 &gt; 1e-2">trace</failure></testcase>'
        '<testcase classname="tests.test_triton" name="test_d" time="0">'
        '<skipped type="pytest.skip" message="needs sm_90">skip</skipped></testcase>'
        "</testsuite></testsuites>"
    )
    ceilings = [floor.Ceilings("cuda", "bfloat16", 7e14, 8192, 3e12, 1 << 30, 1.5e-6, "triton")]
    floor.write_ceilings(folder / "ceilings.json", ceilings)


def test_report_summary_and_readme(tmp_path: Path) -> None:
    folder = tmp_path / "results" / "2026-01-01-nvidia-test-gpu"
    folder.parent.mkdir()
    _synthetic_folder(folder)
    readme = tmp_path / "README.md"
    readme.write_text(
        "# fusedrnn\n\nintro\n\n<!-- bench:latest:start -->\nold text\n"
        "<!-- bench:latest:end -->\n\nafter\n"
    )
    result = _run(["bench/report.py", str(folder), "--readme", str(readme)])
    assert result.returncode == 0, result.stderr
    summary = (folder / "summary.md").read_text()
    assert "NVIDIA Test GPU" in summary and "deadbeef1234" in summary
    assert "2 passed, 1 failed, 0 error, 1 skipped" in summary
    assert "max error 3e-2 > 1e-2" in summary and "needs sm_90" in summary
    assert "2 ms (**2.00×**)" in summary  # cuda: 4 ms / 2 ms
    assert "3.9 ms (≈)" in summary and "1.03×" not in summary  # overlapping spreads
    assert "triton cannot be imported" in summary  # the skipped row with its reason
    assert "1.50" in summary  # the barrier latency in µs
    text = readme.read_text()
    assert text.startswith("# fusedrnn\n\nintro\n") and text.endswith("after\n")
    assert "old text" not in text and "2.00×" in text
    assert "results/2026-01-01-nvidia-test-gpu/summary.md" in text
    # running it again replaces the block, it does not nest or duplicate it
    again = _run(["bench/report.py", "--latest", str(folder.parent), "--readme", str(readme)])
    assert again.returncode == 0, again.stderr
    rerun = readme.read_text()
    assert rerun.count("bench:latest:start") == 1 and rerun.count("bench:latest:end") == 1
    assert rerun == text  # --latest found the same folder and wrote the same block


def test_report_refuses_readme_without_markers(tmp_path: Path) -> None:
    folder = tmp_path / "2026-01-01-x"
    _synthetic_folder(folder)
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    result = _run(["bench/report.py", str(folder), "--readme", str(readme)])
    assert result.returncode == 2
    assert "bench:latest:start" in result.stderr
    assert readme.read_text() == "# no markers here\n"


# ---------------------------------------------------------------------- pytest-benchmark
def test_pytest_benchmark_integration(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = _run(
        [
            "-m",
            "pytest",
            "bench",
            "--benchmark-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "--bench-workloads",
            "W1,W4",
            "--bench-modes",
            "forward",
            "--bench-providers",
            "torch,reference",
            f"--benchmark-json={out}",
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed, 1 skipped" in result.stdout  # torch cannot run W4: skipped, with why
    assert "torch.nn has no fusedrnn regularizers" in result.stdout
    data = json.loads(out.read_text())
    assert len(data["benchmarks"]) == 3
    for bench in data["benchmarks"]:
        assert set(bench["extra_info"]) == set(schema.COLUMNS)
        assert bench["extra_info"]["status"] == "ok"
        assert float(bench["extra_info"]["median_ms"]) > 0


# ---------------------------------------------------------------------- gpu_check.sh
FAKE_GPU_TESTS = """
import pytest

pytestmark = pytest.mark.gpu


def test_runs():
    pass


def test_skips():
    pytest.skip("pretend fusedrnn._C lacks cuda")


@pytest.mark.xfail(reason="an expected failure is not a skip", strict=True)
def test_expected_failure():
    raise AssertionError
"""


def _gpu_check(tmp_path: Path, tests: str, *options: str) -> subprocess.CompletedProcess:
    """bench/gpu_check.sh's CPU dry run of the parity step only, on the tests in ``tests``."""
    test_file = tmp_path / "test_fake_gpu.py"
    test_file.write_text(tests)
    parity_only = ["--dry-run", "--skip-build", "--skip-bench", "--out", str(tmp_path / "out")]
    return subprocess.run(
        ["bash", "bench/gpu_check.sh", *parity_only, "--tests", str(test_file), *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ, PYTHON=sys.executable),
    )


def test_gpu_check_fails_on_a_skipped_gpu_test(tmp_path: Path) -> None:
    """--no-skips (always on with a GPU): one skipped gpu test fails the check and is named;
    the xfail is not counted as a skip."""
    result = _gpu_check(tmp_path, FAKE_GPU_TESTS, "--no-skips")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 gpu test(s) skipped" in result.stdout
    assert "test_skips: pretend fusedrnn._C lacks cuda" in result.stdout
    assert "test_expected_failure" not in result.stdout


def test_gpu_check_dry_run_accepts_skips_but_not_an_empty_run(tmp_path: Path) -> None:
    """A CPU dry run skips gpu tests as pytest does everywhere (rc 0), but a run that collects
    no gpu test (pytest rc 5) has checked nothing and fails."""
    result = _gpu_check(tmp_path, FAKE_GPU_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = next((tmp_path / "out").glob("*/logs/steps.tsv")).read_text()
    assert "pytest-gpu\t0\t" in steps
    empty = _gpu_check(tmp_path, "def test_not_gpu():\n    pass\n")
    assert empty.returncode == 1, empty.stdout + empty.stderr
    assert "pytest-gpu: " in empty.stdout and "rc=5" in empty.stdout


def test_host_goals_section_compares_with_the_goals_workload() -> None:
    """report.host_goals_section: the verdict from host / torch.nn as the median per-round
    ratio (the reciprocal of the row's speed-up, its 95 % interval beside it), the ratio of
    the medians shown too and deciding where there are no rounds to pair (an older row; C1's
    regularized training against torch.nn's plain C2); a verdict at the goal's limit."""

    def row(provider: str, name: str, mode: str, median: float | None, status="ok", **paired):
        w = workloads.WORKLOADS[name]
        out = {"run_id": "r1", "provider": provider, "mode": mode, "dtype": "float32"}
        out.update(w.csv_fields(), status=status, median_ms=median, **paired)
        return schema.as_strings(out)

    def speedup(median: float, low: float, high: float) -> dict[str, float]:
        return dict(speedup_vs_torch=median, speedup_ci_low=low, speedup_ci_high=high)

    rows = [
        row("torch", "C2", "train", 100.0),
        row("host", "C2", "train", 100.0),  # no paired columns: the medians, at the limit: met
        row("torch", "C1", "train", None, status="skipped"),  # torch.nn has no regularizers
        row("host", "C1", "train", 116.0),  # 1.16 x torch.nn's plain C2: not met
        row("torch", "C5", "forward", 50.0),
        row("host", "C5", "forward", 52.0, **speedup(1.25, 1.0, 2.0)),  # paired 0.80: met
        row("torch", "C5", "train", 50.0),
        row("host", "C5", "train", 48.0, **speedup(0.8, 0.5, 1.25)),  # paired 1.25: not met
        row("host", "C6", "forward", 40.0),  # no torch.nn row: no goal line
    ]
    section = report.host_goals_section(rows)
    lines = {
        tuple(line.split(" | ")[:2]): line
        for line in section.splitlines()
        if line.startswith("| C")
    }
    assert lines[("| C2", "train")].endswith("| — | 1.00 | ≤ 1.00: met |")
    assert lines[("| C1 vs torch.nn C2", "train")].endswith("| — | 1.16 | ≤ 1.15: **not met** |")
    assert lines[("| C5", "forward")].endswith("| 0.80 [0.50–1.00] | 1.04 | ≤ 1.00: met |")
    assert lines[("| C5", "train")].endswith("| 1.25 [0.80–2.00] | 0.96 | ≤ 1.00: **not met** |")
    assert not any(key[0] == "| C6" for key in lines)
    assert report.host_goals_section([row("torch", "C2", "train", 1.0)]) == ""
