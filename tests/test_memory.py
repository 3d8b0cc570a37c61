"""Memory: no growth over many training iterations, and no mask tensors saved for backward.

(a) A tiny LSTM with recurrent dropout and zoneout trains for 1,000 forward+backward+SGD
    iterations. After a warm-up (iteration 100, when torch's and fusedrnn's caches are
    filled) and at the end (iteration 1,000), after ``gc.collect()``, we record

    * the number of live ``torch.Tensor`` Python objects and of all gc-tracked objects
      (exact counts: a leaked tensor, graph node closure or cache entry per iteration adds
      900 of them);
    * the bytes in use on the C heap (glibc ``mallinfo2``: ``uordblks + hblkhd``), which is
      where torch's CPU allocator and the native backend allocate; noise is a few tens of KB,
      while leaking even one ``[T, B, H]`` float64 output per iteration adds 900 x 4 KiB;
    * the Python heap traced by ``tracemalloc`` (only in the slow full-reference run, since
      tracing slows every Python allocation).

    Counts may wobble by a handful (interned objects, allocator free lists), so the bounds
    are far below what any per-iteration leak produces and far above that wobble.

(b) The bytes of every tensor autograd saves for backward (``saved_tensors_hooks``), with
    recurrent dropout and zoneout on, are no more than with them off: the masks are
    regenerated from the Philox seed in backward, never stored. Checked for every backend
    that runs on this CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import tracemalloc

import pytest
import torch
from helpers import recurrence_backends_on_cpu

import fusedrnn
from fusedrnn import functional

STEPS, BATCH, INPUT, HIDDEN = 8, 4, 3, 16
REGULARISED = dict(recurrent_dropout=0.3, zoneout_cell=0.2, zoneout_hidden=0.1)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _malloc_in_use():
    """Bytes allocated on the C heap (glibc >= 2.33), or None where unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd


def _snapshot(trace: bool) -> dict[str, int]:
    gc.collect()
    objects = gc.get_objects()
    result = {
        "tensors": sum(1 for o in objects if issubclass(type(o), torch.Tensor)),
        "gc_objects": len(objects),
    }
    del objects
    heap = _malloc_in_use()
    if heap is not None:
        result["c_heap_bytes"] = heap
    if trace:
        result["python_heap_bytes"] = tracemalloc.get_traced_memory()[0]
    return result


# bound on growth between the two snapshots; any per-iteration leak exceeds it many times
GROWTH_BOUNDS = {
    "tensors": 0,  # exact
    "gc_objects": 100,  # a leak of one object per iteration would be >= 900
    "c_heap_bytes": 1 << 20,  # one leaked [8, 4, 16] float64 output per iteration: 3.5 MiB
    "python_heap_bytes": 256 << 10,  # one leaked 300-byte object per iteration: 264 KiB
}


def _train(backend: str, iterations: int, checkpoint: int, trace: bool = False, leak=None):
    torch.manual_seed(0)
    model = fusedrnn.LSTM(INPUT, HIDDEN, backend=backend, **REGULARISED, dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(STEPS, BATCH, INPUT, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problem: no thread-pool noise, and fast on a busy CI box
    if trace:
        tracemalloc.start()
    snapshots = {}
    try:
        for i in range(1, iterations + 1):
            out, (_h, c) = model(x)
            loss = out.square().mean() + c.square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if leak is not None:
                leak(out)
            if i in (checkpoint, iterations):
                snapshots[i] = _snapshot(trace)
    finally:
        torch.set_num_threads(threads)
        if trace:
            tracemalloc.stop()
    assert torch.isfinite(loss)
    return snapshots[checkpoint], snapshots[iterations]


def _check_no_growth(backend, before, after):
    print(f"\n{backend}: at warm-up {before}\n{backend}: at the end {after}")
    for key, bound in GROWTH_BOUNDS.items():
        if key in before:
            growth = after[key] - before[key]
            assert growth <= bound, f"{backend}: {key} grew by {growth} (> {bound})"


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(b, marks=pytest.mark.slow) if b == "reference" else b
        for b in recurrence_backends_on_cpu()
    ],
)
def test_no_growth_over_1000_iterations(backend):
    """The full run; the reference loop is ~100x slower than the fused host loop, so its
    1,000 iterations (with tracemalloc on) are marked slow."""
    before, after = _train(backend, 1000, 100, trace=backend == "reference")
    _check_no_growth(backend, before, after)


def test_no_growth_reference_short():
    """The reference backend's own backward (torch.func.vjp of the recomputed loop) over a
    shorter run, so a default test session covers it too."""
    before, after = _train("reference", 120, 40)
    _check_no_growth("reference", before, after)


def test_growth_check_detects_a_leak():
    """The same measurement flags a leak of one output tensor per iteration."""
    kept = []
    backend = recurrence_backends_on_cpu()[-1]
    before, after = _train(backend, 150, 50, leak=lambda out: kept.append(out.detach()))
    assert after["tensors"] - before["tensors"] >= 100
    if "c_heap_bytes" in before:
        assert after["c_heap_bytes"] - before["c_heap_bytes"] >= 100 * out_bytes()


def out_bytes():
    return STEPS * BATCH * HIDDEN * 8


# ----------------------------------------------------------------------------------------
def _saved_bytes(module, x, seed=0):
    """(total bytes, shapes) of the tensors autograd saves during one forward."""
    shapes, storages = [], {}

    def pack(t):
        shapes.append(tuple(t.shape))
        # (a 0-d tensor, a mask seed, is no mask: DroppedInputProjection saves its seed as
        # one, the recurrence's direct training call keeps its seed as an int)
        if t.layout == torch.strided and t.numel() and t.dim() > 0:
            # count each storage once (views of one buffer cost nothing extra)
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.manual_seed(seed)
        out, (_h, c) = module(x)
    (out.sum() + c.sum()).backward()  # the saved tensors must be enough for backward
    return sum(storages.values()), shapes


def _backends_for_saved():
    names = list(recurrence_backends_on_cpu())
    available = fusedrnn.available_backends()
    if available.get("triton") is None and not torch.cuda.is_available():
        # Under TRITON_INTERPRET=1 one small call is affordable.
        names.append("triton")
    return names


def _module_pair(backend, extra_options=()):
    torch.manual_seed(0)
    kwargs = dict(num_layers=2, bidirectional=True, backend=backend)
    plain = fusedrnn.LSTM(INPUT, HIDDEN, **kwargs)
    regularised = fusedrnn.LSTM(INPUT, HIDDEN, **kwargs, **REGULARISED, **dict(extra_options))
    regularised.load_state_dict(plain.state_dict())
    x = torch.randn(STEPS, BATCH, INPUT, requires_grad=True)
    return plain, regularised, x


@pytest.mark.parametrize("backend", _backends_for_saved())
def test_masks_are_not_saved_for_backward(backend):
    plain, regularised, x = _module_pair(backend)
    # the reference with options on must be what runs (not torch's path, not another backend)
    plain_bytes, plain_shapes = _saved_bytes(plain, x)
    reg_bytes, reg_shapes = _saved_bytes(regularised, x)
    print(
        f"\n{backend}: saved for backward without regularisers {plain_bytes} B "
        f"({len(plain_shapes)} tensors), with recurrent dropout + zoneout {reg_bytes} B "
        f"({len(reg_shapes)} tensors)"
    )
    assert plain_bytes > 0
    assert reg_bytes <= plain_bytes, (plain_shapes, reg_shapes)
    mask_shapes = {(BATCH, HIDDEN), (STEPS, BATCH, HIDDEN)}
    assert len([s for s in reg_shapes if s in mask_shapes]) <= len(
        [s for s in plain_shapes if s in mask_shapes]
    )


@pytest.mark.parametrize("backend", recurrence_backends_on_cpu())
def test_input_dropout_mask_is_not_saved_for_backward(backend, monkeypatch):
    # With input dropout the projection is computed before the recurrence (xg, saved by it);
    # the plain layer's would be left to the host's step loop (no xg at all): the same path
    # for both, so that the difference is the mask's.
    monkeypatch.setattr(functional, "DEFER_PROJECTION", False)
    plain, regularised, x = _module_pair(backend, {"input_dropout": 0.3}.items())
    plain_bytes, plain_shapes = _saved_bytes(plain, x)
    reg_bytes, reg_shapes = _saved_bytes(regularised, x)
    print(f"\n{backend}: without {plain_bytes} B, with input dropout too {reg_bytes} B")
    assert reg_bytes <= plain_bytes, sorted(set(reg_shapes) - set(plain_shapes))


@pytest.mark.parametrize("backend", _backends_for_saved())
def test_weight_drop_mask_is_not_saved_for_backward(backend):
    """Weight drop saves nothing W_hh-shaped beyond what the plain layer saves (W_hh itself):
    backward regenerates the mask (or the cuda backend's effective weight) from the seed."""
    plain, regularised, x = _module_pair(backend, {"weight_drop": 0.4}.items())
    plain_bytes, plain_shapes = _saved_bytes(plain, x)
    reg_bytes, reg_shapes = _saved_bytes(regularised, x)
    print(f"\n{backend}: without {plain_bytes} B, with weight drop too {reg_bytes} B")
    assert reg_bytes <= plain_bytes, sorted(set(reg_shapes) - set(plain_shapes))
    weight_shape = (4 * HIDDEN, HIDDEN)
    assert reg_shapes.count(weight_shape) <= plain_shapes.count(weight_shape)
