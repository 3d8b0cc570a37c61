"""Recurrence backends: one thin launcher module per backend (validate, allocate, launch).

Each module implements the :class:`fusedrnn.backends.base.Backend` protocol. Modules are
imported lazily, so a missing optional dependency (triton, the native extension) only makes
that backend unavailable, with the reason, instead of breaking ``import fusedrnn``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module implementing the recurrence contract. "torch" is not listed: it is the
# whole-layer path through torch's own RNN kernels (fusedrnn/functional.py), not a recurrence.
RECURRENCE_BACKENDS: dict[str, str] = {
    "reference": "fusedrnn.backends.reference",
    "triton": "fusedrnn.backends.triton",
    "cuda": "fusedrnn.backends.cuda",
    "host": "fusedrnn.backends.host",
}


_loaded: dict[str, ModuleType] = {}  # the modules imported so far (a call's dispatch loads two)


def load(name: str) -> ModuleType:
    """Import the launcher module of backend ``name`` (raises ImportError if it cannot)."""
    module = _loaded.get(name)
    if module is None:  # a failed import is not remembered: the next call tries again
        module = _loaded[name] = importlib.import_module(RECURRENCE_BACKENDS[name])
    return module
