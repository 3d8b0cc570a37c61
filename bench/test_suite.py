"""The benchmark cases under pytest-benchmark (see bench/conftest.py for the options)."""

from __future__ import annotations

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from bench import schema
from bench.cli import QUICK_REPEATS
from bench.env import resolve_device
from bench.runner import Session, release
from bench.timing import synchronize
from bench.workloads import Workload


@pytest.fixture(scope="session")
def bench_session(request: pytest.FixtureRequest) -> tuple[Session, schema.CsvAppender | None]:
    config = request.config
    quick = config.getoption("--bench-set") == "quick"
    if quick:
        torch.set_num_threads(1)
    warmup = config.getoption("--bench-warmup")
    repeats = config.getoption("--bench-repeats")
    session = Session(
        resolve_device(config.getoption("--bench-device")),
        quick=quick,
        warmup=warmup if warmup is not None else 3,
        repeats=repeats if repeats is not None else (QUICK_REPEATS if quick else 10),
    )
    csv_path = config.getoption("--bench-csv")
    appender = schema.CsvAppender(csv_path) if csv_path else None
    return session, appender


def test_case(
    benchmark: BenchmarkFixture,
    bench_case: tuple[Workload, str, str, str],
    bench_session: tuple[Session, schema.CsvAppender | None],
) -> None:
    session, appender = bench_session
    workload, dtype, mode, provider = bench_case
    result = session.measure(workload, dtype, mode, provider, keep=True)
    row = result.row
    if appender is not None:
        appender.write(row)
    benchmark.extra_info.update(schema.as_strings(row))
    if row["status"] == schema.STATUS_SKIPPED:
        pytest.skip(f"{provider} {workload.name}: {row['reason']}")
    if row["status"] == schema.STATUS_ERROR:
        pytest.fail(f"{provider} {workload.name}: {row['reason']}")
    prepared = result.prepared
    device = session.device

    def call() -> None:
        prepared.fn()
        synchronize(device)

    benchmark.group = f"{workload.name} {mode} {dtype}"
    benchmark.pedantic(
        call, setup=prepared.setup, rounds=session.repeats, iterations=1, warmup_rounds=0
    )
    release(device)
