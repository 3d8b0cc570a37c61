"""Triton interpreter compatibility shim: a runtime ``tl.range`` bound under triton 3.6.

The recurrence kernels' time loop is ``for s in tl.range(0, steps, disable_licm=True)`` with
``steps`` a runtime argument (kernels/recurrence.py; docs/kernels-v2.md §6.1). Under the
interpreter (``TRITON_INTERPRET=1``) ``tl.range`` is Python's ``range``, which takes the bound
through ``tensor.__index__``. Triton 3.6's interpreter defines it as
``int(self.handle.data)``; a scalar's ``data`` is a one-element 1-d numpy array, which
numpy >= 2.3 refuses to convert (``TypeError: only 0-dimensional arrays can be converted to
Python scalars``). Triton 3.7+ uses ``int(self.handle.data.squeeze())``.

:func:`apply` (called when kernels/recurrence.py is imported) wraps the interpreter's
``_patch_lang_tensor`` so that ``__index__`` squeezes first, as 3.7+ does, and does nothing
unless the interpreter is on and the installed triton's ``__index__`` lacks the squeeze.
Compiled kernels are never affected (the interpreter module is not used by them).
"""

from __future__ import annotations

import inspect
import os

_MARK = "_fusedrnn_index_shim"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def needs_index_shim(interpreter) -> bool:
    """Whether ``interpreter`` (``triton.runtime.interpreter``) defines ``tensor.__index__``
    as ``int(self.handle.data)`` without a squeeze (triton <= 3.6)."""
    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None:
        return False
    try:
        source = inspect.getsource(patch)
    except (OSError, TypeError):
        return False
    return "int(self.handle.data)" in source


def _index(self) -> int:
    return int(self.handle.data.squeeze())


def apply(interpreter=None, *, force: bool = False) -> bool:
    """Install the shim if needed; returns whether it is installed. ``force`` (tests): also
    without ``TRITON_INTERPRET=1``."""
    if not (force or interpreting()):
        return False
    if interpreter is None:
        from triton.runtime import interpreter
    patch = interpreter._patch_lang_tensor
    if getattr(patch, _MARK, False):
        return True
    if not needs_index_shim(interpreter):
        return False

    def _patch_lang_tensor(tensor, scope):
        patch(tensor, scope)
        # Recorded in the same scope, so the interpreter's restore undoes both in order.
        scope.set_attr(tensor, "__index__", _index)

    setattr(_patch_lang_tensor, _MARK, True)
    _patch_lang_tensor.__wrapped__ = patch
    interpreter._patch_lang_tensor = _patch_lang_tensor
    return True
