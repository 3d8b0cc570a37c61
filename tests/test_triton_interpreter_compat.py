"""kernels/interpreter_compat.py: the time loop's runtime ``tl.range`` bound under an
interpreter whose ``tensor.__index__`` is triton 3.6's ``int(self.handle.data)``.

Triton 3.6 is not installed here, so its definition is planted into the installed
interpreter (a wrapper of ``_patch_lang_tensor`` with 3.6's line); with numpy >= 2.3 that
breaks a runtime ``tl.range`` bound, and the shim must repair it.
"""

from __future__ import annotations

import inspect
import types

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
interpreter = pytest.importorskip("triton.runtime.interpreter")

from fusedrnn.kernels import interpreter_compat  # noqa: E402

pytestmark = pytest.mark.interpreter
# The installed triton's own definition (before any shim or plant wraps it).
_INSTALLED_PATCH = inspect.unwrap(interpreter._patch_lang_tensor)


@triton.jit
def _count_steps(out_ptr, steps):
    total = 0
    for s in tl.range(0, steps, disable_licm=True):
        total += s + 1
    tl.store(out_ptr, total)


def _run(steps: int) -> int:
    out = torch.zeros(1, dtype=torch.int32)
    _count_steps[(1,)](out, steps)
    return int(out.item())


@pytest.fixture
def triton_36_index(monkeypatch):
    """The installed interpreter with triton 3.6's ``__index__`` (no squeeze)."""
    original = interpreter._patch_lang_tensor

    def _patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", _patch_lang_tensor)
    return interpreter


def _numpy_refuses_1d_int() -> bool:
    try:
        int(np.array([3], dtype=np.int32))
    except TypeError:
        return True
    return False


def test_runtime_bound_runs(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    interpreter_compat.apply()
    assert _run(5) == 15
    assert _run(0) == 0


def test_detects_only_the_unsqueezed_index(triton_36_index):
    assert interpreter_compat.needs_index_shim(triton_36_index)
    installed = types.SimpleNamespace(_patch_lang_tensor=_INSTALLED_PATCH)
    squeezes = "int(self.handle.data.squeeze())" in inspect.getsource(_INSTALLED_PATCH)
    assert interpreter_compat.needs_index_shim(installed) == (not squeezes)


def test_shim_repairs_triton_36_index(triton_36_index, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if _numpy_refuses_1d_int():
        # Without the shim the planted 3.6 definition fails as triton 3.6 does.
        with pytest.raises(Exception, match="0-dimensional"):
            _run(3)
    assert interpreter_compat.apply()
    assert _run(3) == 6
    assert _run(1) == 1
    assert interpreter_compat.apply()  # idempotent


def test_shim_off_without_interpreter(triton_36_index, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    before = triton_36_index._patch_lang_tensor
    assert not interpreter_compat.apply()
    assert triton_36_index._patch_lang_tensor is before
