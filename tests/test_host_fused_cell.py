"""The forward step's fused, per-element form (csrc/include/fusedrnn/step_loop.h
``fused_cell_step`` behind a policy's ``product_and_cell``) on the CPU: the host backend with
``host.FUSED_CELL`` on runs the very orchestration the CUDA tensor-core forward runs on its
accumulators (issue 14 item 1, "the cell math runs on the accumulators"), against the float64
reference by the numerics rule, forward and every gradient (the backward is the shared phased
one, so a wrong saved tensor of the fused forward shows in the gradients)."""

from __future__ import annotations

import pytest
import torch
from test_host import CELLS, compare, make_inputs

from fusedrnn.backends import host

_reason = host.availability()
pytestmark = pytest.mark.skipif(_reason is not None, reason=str(_reason))

# The regularizers the fused form takes (no norm); the norms fall back to the phased form.
FUSED_REGULARIZERS = ("none", "recurrent_dropout", "zoneout", "zoneout_eval", "weight_drop")


@pytest.fixture(autouse=True)
def _fused(monkeypatch):
    monkeypatch.setattr(host, "FUSED_CELL", True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("reg", FUSED_REGULARIZERS)
@pytest.mark.parametrize("cell", CELLS)
def test_fused_parity(cell, reg, reverse, lengths, dtype):
    compare(make_inputs(cell, reg, reverse, lengths, dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("reg", ["none", "zoneout", "recurrent_dropout"])
@pytest.mark.parametrize("cell", CELLS)
def test_fused_half_storage(cell, reg, dtype):
    """16-bit storage: the fused form writes h_state (the backward's h at accumulation
    precision) and rounds out / the exchange as the phased form does."""
    compare(make_inputs(cell, reg, True, True, dtype))


@pytest.mark.parametrize(
    ("steps", "batch", "hidden", "threads"),
    [(1, 1, 1, 1), (3, 7, 31, 3), (4, 33, 9, 2), (2, 4, 65, 3), (5, 2, 17, 4)],
)
@pytest.mark.parametrize("cell", CELLS)
def test_fused_awkward_sizes_and_threads(cell, steps, batch, hidden, threads, monkeypatch):
    """Uneven unit slices per worker (the fused step indexes the worker's state by (b, jj))."""
    monkeypatch.setattr(host, "NUM_THREADS", threads)
    for reg, dtype in (("zoneout", torch.float64), ("recurrent_dropout", torch.float32)):
        compare(make_inputs(cell, reg, True, True, dtype, steps, batch, hidden))


@pytest.mark.parametrize("reg", ["bn_train", "ln", "all"])
def test_norms_keep_the_phased_form(reg):
    """With a norm fused_cell_applies() is false: the phased form runs, fused flag or not."""
    compare(make_inputs("lstm", reg, False, True, torch.float32))
