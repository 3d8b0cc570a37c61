"""Test-only concurrent mode of the Triton interpreter: a grid's programs run in threads.

triton's interpreter (triton/runtime/interpreter.py, 3.6-3.8) runs a grid one program after
another: ``GridExecutor.__call__`` loops over the grid, calling the global
``interpreter_builder.set_grid_idx(x, y, z)`` before each program, and ``tl.program_id``
reads ``interpreter_builder.grid_idx``. A persistent kernel whose programs wait for each
other at a grid barrier can never pass it that way. ``concurrent_programs()`` changes three
things while it is active:

* ``grid_idx`` becomes thread-local (a property on the builder's class), so each thread has
  its own ``tl.program_id``; ``grid_dim`` (``tl.num_programs``) stays shared;
* ``InterpretedFunction.run`` hands ``GridExecutor`` a one-program grid whose "program" starts
  one thread per program of the real grid and joins them; ``GridExecutor`` still does the
  argument conversion and the language patching around it (``_patch_lang`` is pointed at the
  kernel's globals), exactly as for a normal launch;
* atomics run under one lock (atomic across threads whatever the extension does with the
  GIL) and yield the GIL afterwards, so a program spinning on the barrier counter lets the
  others progress instead of burning its whole switch interval.
* ``InterpretedFunction.rewrite`` (the first call of each ``@triton.jit`` helper parses and
  rewrites its source) runs under one lock: the programs' threads reach a helper's first call
  together, and CPython 3.11's ``ast.parse`` is not safe in parallel threads ("AST constructor
  recursion depth mismatch", seen once in CI).

Memory is the host's numpy memory, and every load / store runs with the GIL held, so a store
is visible to every thread's next load: the spin loops make progress. If any program raises,
or the grid has not finished within ``timeout`` seconds (a barrier that is never passed),
the remaining programs are stopped at their next atomic and the launch raises.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import threading
import time

from triton.runtime import interpreter


class GridAborted(RuntimeError):
    """Raised inside a program's thread to stop it (another program failed, or timeout)."""


class _ConcurrentState:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.local = threading.local()
        self.atomic_lock = threading.Lock()
        self.abort = threading.Event()
        self.grids: list[tuple[int, int, int]] = []  # every grid launched, for the tests


_state: _ConcurrentState | None = None


def _grid_idx_get(builder):
    return getattr(_state.local, "grid_idx", None)


def _grid_idx_set(builder, value):
    _state.local.grid_idx = value


def _atomic(method_name: str):
    original = getattr(interpreter.InterpreterBuilder, method_name)

    def locked(self, *args, **kwargs):
        if _state.abort.is_set():
            raise GridAborted("grid aborted (another program failed, or the grid timed out)")
        with _state.atomic_lock:
            result = original(self, *args, **kwargs)
        time.sleep(0)  # let the other programs run (this one is probably spinning)
        return result

    return locked


_rewrite_lock = threading.RLock()
_original_rewrite = interpreter.InterpretedFunction.rewrite


def _locked_rewrite(self):
    with _rewrite_lock:
        return _original_rewrite(self)


class _ConcurrentBuilder(interpreter.InterpreterBuilder):
    """The interpreter's builder with a thread-local program id and locked atomics."""

    grid_idx = property(_grid_idx_get, _grid_idx_set)
    create_atomic_rmw = _atomic("create_atomic_rmw")
    create_atomic_cas = _atomic("create_atomic_cas")


def _run_concurrently(self, *args, grid, warmup, **kwargs):
    """``InterpretedFunction.run`` with the grid's programs in threads."""
    if warmup:
        return None
    program = self.rewrite()
    builder = interpreter.interpreter_builder

    def whole_grid(**call_args):
        dims = grid(call_args) if callable(grid) else grid
        dims = tuple(dims) + (1,) * (3 - len(dims))
        builder.set_grid_dim(*dims)
        _state.grids.append(dims)
        _state.abort.clear()
        errors: list[BaseException] = []

        def one_program(index):
            try:
                builder.set_grid_idx(*index)
                program(**call_args)
            except BaseException as error:  # re-raised on the launching thread
                errors.append(error)
                _state.abort.set()

        threads = [
            threading.Thread(target=one_program, args=(index,), daemon=True)
            for index in itertools.product(*(range(n) for n in dims))
        ]
        deadline = time.monotonic() + _state.timeout
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            _state.abort.set()
            for thread in threads:
                thread.join()
            raise TimeoutError(
                f"grid of {len(threads)} programs did not finish within {_state.timeout} s "
                "(a grid barrier that is never passed?)"
            )
        builder.set_grid_dim(1, 1, 1)
        if errors:
            real = [e for e in errors if not isinstance(e, GridAborted)]
            raise (real or errors)[0]

    whole_grid.__signature__ = inspect.signature(program)
    whole_grid.kernel_program = program  # whose globals _patch_lang must patch
    whole_grid.__annotations__ = dict(getattr(program, "__annotations__", {}))
    return interpreter.GridExecutor(whole_grid, self.arg_names, (1,), self.pre_run_hooks)(
        *args, **kwargs
    )


@contextlib.contextmanager
def concurrent_programs(timeout: float = 300.0):
    """While active, every interpreted launch runs its programs concurrently in threads.

    Yields the list of launched grids (``(x, y, z)`` sizes), appended to at each launch.
    """
    global _state
    builder = interpreter.interpreter_builder
    original_class = builder.__class__
    original_run = interpreter.InterpretedFunction.run
    original_patch_lang = interpreter._patch_lang
    original_idx = builder.__dict__.pop("grid_idx", None)
    _state = _ConcurrentState(timeout)
    builder.__class__ = _ConcurrentBuilder
    interpreter.InterpretedFunction.run = _run_concurrently
    interpreter.InterpretedFunction.rewrite = _locked_rewrite
    interpreter._patch_lang = lambda fn: original_patch_lang(getattr(fn, "kernel_program", fn))
    try:
        yield _state.grids
    finally:
        interpreter._patch_lang = original_patch_lang
        interpreter.InterpretedFunction.run = original_run
        interpreter.InterpretedFunction.rewrite = _original_rewrite
        builder.__class__ = original_class
        builder.__dict__["grid_idx"] = original_idx
        _state = None
