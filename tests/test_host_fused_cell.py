"""The fused, per-element forms of the forward and backward steps (csrc/include/fusedrnn/
step_loop.h ``fused_cell_step`` behind a policy's ``product_and_cell``, and
``fused_cell_backward_step`` behind ``product_and_cell_backward``) on the CPU: the host backend
with ``host.FUSED_CELL`` on runs the very orchestration the CUDA tensor-core kernels run on
their accumulators (issue 14 item 1, "the cell math runs on the accumulators"), against the
float64 reference by the numerics rule, forward and every gradient, and the fused backward
against the phased one on the same saved tensors."""

from __future__ import annotations

import pytest
import torch
from test_host import CELLS, compare, make_inputs

from fusedrnn.backends import host, native
from fusedrnn.backends.base import RecurrenceInputs

_reason = host.availability()
pytestmark = pytest.mark.skipif(_reason is not None, reason=str(_reason))

# The regularizers the fused form takes (no norm); the norms fall back to the phased form.
FUSED_REGULARIZERS = ("none", "recurrent_dropout", "zoneout", "zoneout_eval", "weight_drop")


@pytest.fixture(autouse=True)
def _fused(monkeypatch):
    monkeypatch.setattr(host, "FUSED_CELL", True)
    # Outputs start as NaN: an element the fused forms forget to write shows.
    monkeypatch.setattr(native, "POISON_OUTPUTS", True)


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


def _backward_both_forms(inputs: RecurrenceInputs, monkeypatch) -> tuple[dict, dict]:
    """The phased and the fused backward on the same forward's saved tensors and the same
    output gradients: every gradient of each."""
    dtype = inputs.xg.dtype
    gen = torch.Generator().manual_seed(11)
    steps, batch, _ = inputs.xg.shape
    shape = (batch, inputs.config.out_size)
    grad_output = torch.randn((steps, *shape), generator=gen).to(dtype)
    grad_h_n = torch.randn(shape, generator=gen).to(dtype)
    grad_c_n = None
    if inputs.config.cell == "lstm":
        grad_c_n = torch.randn((batch, inputs.config.hidden_size), generator=gen).to(dtype)
    monkeypatch.setattr(host, "FUSED_CELL", False)
    _, saved = host.forward(inputs)
    phased = host.backward(inputs, saved, grad_output, grad_h_n, grad_c_n)
    monkeypatch.setattr(host, "FUSED_CELL", True)
    fused = host.backward(inputs, saved, grad_output, grad_h_n, grad_c_n)
    return phased, fused


# The fused and phased backward differ only in tanh(c_out) (scalar vs the host's vector tanh)
# and summation order nowhere else: a few units in the last place of the accumulation type,
# then one rounding to storage.
_FORM_TOL = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float16: {"rtol": 2e-3, "atol": 1e-4},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-3},
}


@pytest.mark.parametrize(
    "dtype",
    [torch.float64, torch.float32, torch.float16, torch.bfloat16],
    ids=["f64", "f32", "f16", "bf16"],
)
@pytest.mark.parametrize(
    ("reverse", "lengths"), [(False, False), (True, True)], ids=["fwd", "rev_len"]
)
@pytest.mark.parametrize("reg", FUSED_REGULARIZERS)
@pytest.mark.parametrize("cell", CELLS)
def test_fused_backward_matches_phased(cell, reg, reverse, lengths, dtype, monkeypatch):
    """Every gradient of the fused backward against the phased backward's on one forward."""
    inputs = make_inputs(cell, reg, reverse, lengths, dtype)
    phased, fused = _backward_both_forms(inputs, monkeypatch)
    assert set(fused) == set(phased) == set(RecurrenceInputs.GRAD_FIELDS)
    for name in RecurrenceInputs.GRAD_FIELDS:
        if phased[name] is None:
            assert fused[name] is None, name
            continue
        assert torch.isfinite(fused[name]).all(), name
        torch.testing.assert_close(fused[name], phased[name], **_FORM_TOL[dtype], msg=name)


@pytest.mark.parametrize(
    ("steps", "batch", "hidden", "threads"), [(1, 1, 1, 1), (4, 33, 9, 2), (5, 2, 17, 4)]
)
@pytest.mark.parametrize("cell", CELLS)
def test_fused_backward_matches_phased_threads(cell, steps, batch, hidden, threads, monkeypatch):
    """Uneven slices per worker: the fused backward's product reads every worker's d(a)."""
    monkeypatch.setattr(host, "NUM_THREADS", threads)
    inputs = make_inputs(cell, "zoneout", True, True, torch.float64, steps, batch, hidden)
    phased, fused = _backward_both_forms(inputs, monkeypatch)
    for name in RecurrenceInputs.GRAD_FIELDS:
        if phased[name] is not None:
            torch.testing.assert_close(fused[name], phased[name], **_FORM_TOL[torch.float64])
