"""fusedrnn's benchmark suite (issue 5).

* ``bench.workloads``: the workloads W1..W7 (and quick/sweep variants), defined once,
* ``bench.providers``: torch.nn, the reference loop (eager and torch.compile'd) and every
  fusedrnn backend, with the reason whenever one cannot run a case,
* ``bench.runner`` / ``bench.cli`` (``python -m bench``): run a matrix, append rows of the one
  CSV schema (``bench.schema``), draw plots (``bench.visualize``),
* ``bench.floor``: FLOPs/bytes per workload, measured device ceilings, time / floor,
* ``bench/report.py``: summary.md of a results folder and README's latest-results block,
* ``bench/gpu_check.sh``: build, ``pytest -m gpu``, benchmark and report on a GPU machine,
* ``bench/test_suite.py``: the same cases under pytest-benchmark (``pytest bench
  --benchmark-only``).

Importing this package touches no GPU (and not even torch: ``bench/report.py`` and
``bench.schema`` are stdlib-only); devices and backends are queried when a run starts.
"""

from __future__ import annotations

from .schema import COLUMNS

__all__ = ["COLUMNS"]
