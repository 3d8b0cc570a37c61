"""fusedrnn modules against torch.nn after loading the same state_dict.

Outputs, final states and the gradients of the input, hx and every parameter; float64 to
1e-10, float32 by the 2x rule against torch.nn's own float32 error. Each recurrence backend
that runs on this CPU is tested; ``auto`` (torch's own kernels for plain configurations on the
CPU) is tested as well.
"""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch
from helpers import assert_by_rule, recurrence_backends_on_cpu, run_and_grad
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn.backends.base import RecurrenceConfig, RecurrenceInputs

TORCH_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}
FUSED_CLASSES = {
    "lstm": fusedrnn.LSTM,
    "gru": fusedrnn.GRU,
    "rnn_tanh": fusedrnn.RNN,
    "rnn_relu": fusedrnn.RNN,
}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    input_size: int = 5
    hidden_size: int = 7
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    bidirectional: bool = False
    proj_size: int = 0
    steps: int = 6
    batch: int = 3
    unbatched: bool = False
    lengths: tuple[int, ...] | None = None  # packed input with these lengths
    with_hx: bool = True


CASES = [
    Case("basic"),
    Case("two_layers_bidirectional", num_layers=2, bidirectional=True),
    Case("three_layers", num_layers=3, hidden_size=5, input_size=3),
    Case("batch_first", batch_first=True, with_hx=False),
    Case("no_bias", bias=False),
    Case("batch_1_primes", batch=1, input_size=11, hidden_size=13, steps=7),
    Case("size_1", batch=1, input_size=1, hidden_size=1, steps=1),
    Case("pow2_pm1", input_size=15, hidden_size=17, batch=9, steps=3),
    Case("unbatched", unbatched=True),
    Case("unbatched_batch_first_bidir", unbatched=True, batch_first=True, bidirectional=True),
    Case("packed", lengths=(6, 1, 4, 6, 2), batch=5),
    Case(
        "packed_bidir_2layers",
        lengths=(3, 5, 1, 5),
        batch=4,
        steps=5,
        num_layers=2,
        bidirectional=True,
        batch_first=True,
    ),
    Case("projection", proj_size=3),
    Case(
        "projection_bidir_packed", proj_size=4, bidirectional=True, lengths=(4, 2, 6), num_layers=2
    ),
]


def _modules(cell: str, case: Case, backend: str, dtype: torch.dtype):
    kwargs = dict(
        input_size=case.input_size,
        hidden_size=case.hidden_size,
        num_layers=case.num_layers,
        bias=case.bias,
        batch_first=case.batch_first,
        bidirectional=case.bidirectional,
    )
    if cell == "lstm":
        kwargs["proj_size"] = case.proj_size
    if cell.startswith("rnn"):
        kwargs["nonlinearity"] = cell[4:]
    torch_module = TORCH_CLASSES[cell](**kwargs).to(dtype)
    fused = FUSED_CLASSES[cell](**kwargs, backend=backend).to(dtype)
    fused.load_state_dict(torch_module.state_dict())
    return torch_module, fused


def _inputs(cell: str, case: Case, dtype: torch.dtype, generator: torch.Generator):
    layers_dirs = case.num_layers * (2 if case.bidirectional else 1)
    out_size = case.proj_size or case.hidden_size
    shape = (case.batch, case.steps) if case.batch_first else (case.steps, case.batch)
    if case.unbatched:
        shape = (case.steps,)
    x = torch.randn(*shape, case.input_size, generator=generator, dtype=torch.float64)
    x = x.to(dtype).requires_grad_(True)
    hx = None
    if case.with_hx:
        hshape = (layers_dirs,) if case.unbatched else (layers_dirs, case.batch)
        h0 = torch.randn(*hshape, out_size, generator=generator, dtype=torch.float64)
        h0 = h0.to(dtype).requires_grad_(True)
        hx = h0
        if cell == "lstm":
            c0 = torch.randn(*hshape, case.hidden_size, generator=generator, dtype=torch.float64)
            hx = (h0, c0.to(dtype).requires_grad_(True))
    return x, hx


def _run(module, cell: str, case: Case, x, hx, generator_seed: int):
    packed_x = x
    if case.lengths is not None:
        packed_x = pack_padded_sequence(
            x, torch.tensor(case.lengths), batch_first=case.batch_first, enforce_sorted=False
        )
    # weights of the loss: one random tensor per output, the same for every run
    probe = module(packed_x, hx)
    g = torch.Generator().manual_seed(generator_seed)
    outs = [probe[0].data if case.lengths is not None else probe[0]]
    outs += list(probe[1]) if isinstance(probe[1], tuple) else [probe[1]]
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in outs]
    if case.lengths is not None:
        return _run_packed(module, x, hx, case, weights)
    return run_and_grad(module, x, hx, weights)


def _run_packed(module, x, hx, case: Case, weights):
    packed = pack_padded_sequence(
        x, torch.tensor(case.lengths), batch_first=case.batch_first, enforce_sorted=False
    )
    out, hidden = module(packed, hx)
    states = list(hidden) if isinstance(hidden, tuple) else [hidden]
    results = [out.data, *states]
    loss = sum((r * w.to(r.dtype)).sum() for r, w in zip(results, weights))
    leaves = [x] + (list(hx) if isinstance(hx, tuple) else ([hx] if hx is not None else []))
    params = [p for _, p in module.named_parameters()]
    grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)
    names = ["output", "h_n", "c_n"][: len(results)]
    names += ["grad_input", "grad_h0", "grad_c0"][: len(leaves)]
    names += [f"grad_{n}" for n, _ in module.named_parameters()]
    return dict(zip(names, [t.detach() for t in results + list(grads)]))


BACKENDS = ["auto", *recurrence_backends_on_cpu()]


# proj_size exists only for LSTM (torch.nn raises for GRU/RNN), so those pairs are not built.
CELL_CASES = [
    pytest.param(cell, case, id=f"{cell}-{case.name}")
    for cell in ("lstm", "gru", "rnn_tanh", "rnn_relu")
    for case in CASES
    if cell == "lstm" or not case.proj_size
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("cell", "case"), CELL_CASES)
def test_matches_torch(cell: str, case: Case, backend: str):
    if backend not in ("auto", "reference") and case.proj_size:
        module = importlib.import_module(f"fusedrnn.backends.{backend}")
        probe = RecurrenceInputs(
            RecurrenceConfig(cell, case.hidden_size, case.proj_size),
            torch.zeros(1, 1, 4 * case.hidden_size),
            torch.zeros(1, case.proj_size),
            torch.zeros(1, case.hidden_size),
            torch.zeros(4 * case.hidden_size, case.proj_size),
            None,
            torch.zeros(case.proj_size, case.hidden_size),
            None,
        )
        reason = module.unsupported_reason(probe)
        if reason:  # a stated limitation of that backend, not a numerical failure
            pytest.skip(reason)
    torch.manual_seed(0)
    torch64, fused64 = _modules(cell, case, backend, torch.float64)
    gen = torch.Generator().manual_seed(1)
    x, hx = _inputs(cell, case, torch.float64, gen)

    truth = _run(torch64, cell, case, x, hx, 7)
    ours64 = _run(fused64, cell, case, x, hx, 7)
    # torch.nn in float64 is both the truth and the baseline: the bound is the float64 floor.
    assert_by_rule(ours64, truth, truth, torch.float64, what="float64")

    torch32 = _modules(cell, case, backend, torch.float32)[0]
    torch32.load_state_dict(torch64.state_dict())
    fused32 = fused64.to(torch.float32)  # the float64 weights cast, as torch32's
    x32 = x.detach().float().requires_grad_(True)
    if isinstance(hx, tuple):
        hx32 = tuple(h.detach().float().requires_grad_(True) for h in hx)
    else:
        hx32 = None if hx is None else hx.detach().float().requires_grad_(True)
    torch_result = _run(torch32, cell, case, x32, hx32, 7)
    ours32 = _run(fused32, cell, case, x32, hx32, 7)
    assert_by_rule(ours32, truth, torch_result, torch.float32, what="float32")


def test_weights_and_init_identical_to_torch():
    """Same seed -> same parameters, names, shapes and order as torch.nn."""
    for cell, kwargs in (
        ("lstm", dict(proj_size=3, num_layers=2, bidirectional=True)),
        ("gru", dict(num_layers=3)),
        ("rnn_relu", dict(nonlinearity="relu", bias=False)),
    ):
        torch.manual_seed(5)
        reference = TORCH_CLASSES[cell](4, 6, **kwargs)
        torch.manual_seed(5)
        ours = FUSED_CLASSES[cell](4, 6, **kwargs)
        ref_state, our_state = reference.state_dict(), ours.state_dict()
        assert list(ref_state) == list(our_state)
        for name in ref_state:
            assert torch.equal(ref_state[name], our_state[name]), name
        # and back: torch.nn loads fusedrnn's state_dict
        reference.load_state_dict(our_state)


def test_forget_bias_offsets_forget_gate_only():
    torch.manual_seed(3)
    plain = nn.LSTM(4, 5)
    torch.manual_seed(3)
    ours = fusedrnn.LSTM(4, 5, forget_bias=1.0)
    delta = ours.bias_ih_l0.detach() - plain.bias_ih_l0.detach()
    expected = torch.zeros(20)
    expected[5:10] = 1.0
    assert torch.allclose(delta, expected)
    assert torch.equal(ours.bias_hh_l0, plain.bias_hh_l0)
