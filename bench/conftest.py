"""pytest-benchmark integration: ``pytest bench --benchmark-only [options]``.

Every (workload, dtype, mode, provider) of the chosen set is one test. The test measures
the case exactly as ``python -m bench`` does (same code, same timing method) and stores
that CSV row in the benchmark's ``extra_info``; pytest-benchmark then times the same
prepared call for its own statistics. A provider that cannot run a case skips the test with
the reason; a provider that fails fails it.

Options (all optional): ``--bench-set quick|full`` (quick: the tiny CPU shapes, the
default), ``--bench-device``, ``--bench-workloads``, ``--bench-providers``,
``--bench-dtypes``, ``--bench-modes``, ``--bench-sweep``, ``--bench-repeats``,
``--bench-warmup``, ``--bench-csv PATH`` (also append every row to that CSV).
The device and the backends are only looked at when the first test runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import providers, workloads


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fusedrnn-bench", "fusedrnn benchmark suite")
    group.addoption("--bench-set", choices=("quick", "full"), default="quick")
    group.addoption("--bench-device", default="auto", help="cpu, cuda or auto")
    group.addoption("--bench-workloads", default=None, help="comma-separated, e.g. W1,W4")
    group.addoption("--bench-providers", default=None, help="comma-separated provider names")
    group.addoption("--bench-dtypes", default=None, help="comma-separated: float32,bfloat16")
    group.addoption("--bench-modes", default=None, help="comma-separated: forward,train")
    group.addoption("--bench-sweep", action="store_true", help="add the B/H sweeps")
    group.addoption("--bench-repeats", type=int, default=None)
    group.addoption("--bench-warmup", type=int, default=None)
    group.addoption("--bench-csv", type=Path, default=None, help="append rows to this CSV")


def _split(value: str | None, default: tuple[str, ...] | list[str]) -> list[str]:
    if value is None:
        return list(default)
    return [v.strip() for v in value.split(",") if v.strip()]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    quick = config.getoption("--bench-set") == "quick"
    chosen = workloads.select(
        config.getoption("--bench-workloads"), quick=quick, sweep=config.getoption("--bench-sweep")
    )
    names = _split(
        config.getoption("--bench-providers"),
        providers.QUICK_PROVIDERS if quick else providers.PROVIDERS,
    )
    dtypes = _split(config.getoption("--bench-dtypes"), ["float32"] if quick else workloads.DTYPES)
    modes = _split(config.getoption("--bench-modes"), workloads.MODES)
    cases, ids = [], []
    for w in chosen:
        for dtype in dtypes:
            for mode in modes:
                for provider in names:
                    cases.append((w, dtype, mode, provider))
                    ids.append(f"{w.name}-{mode}-{dtype}-{provider}")
    metafunc.parametrize("bench_case", cases, ids=ids)
