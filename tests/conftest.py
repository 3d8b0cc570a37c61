"""pytest setup: the Triton interpreter on CPU machines, and skipping gpu tests there."""

from __future__ import annotations

import os

import pytest
import torch

# The interpreter is how a CPU machine runs the Triton kernels. It must be chosen before
# any kernel is decorated, so it is set here, before test modules import fusedrnn.kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """gpu-marked tests skip with a reason when there is no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_collection_finish(session):
    """The ahead-of-time compiles of tests/test_triton_aot.py (subprocesses, minutes of CPU)
    start as soon as the session's tests are known, so they run beside the rest of the suite
    instead of after it."""
    for item in session.items:
        if "compiled" in getattr(item, "fixturenames", ()):
            start = getattr(item.module, "start_compiles", None)
            if start is not None:
                start(session)
            return


def pytest_sessionfinish(session):
    """No compile subprocess outlives the session."""
    for item in session.items:
        if "compiled" in getattr(item, "fixturenames", ()):
            stop = getattr(item.module, "stop_compiles", None)
            if stop is not None:
                stop()
            return
