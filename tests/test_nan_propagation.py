"""NaN and inf propagate as in torch.nn, with the same pattern on every backend.

A non-finite value in the input or the initial state is placed in one row; the positions of
NaN, +inf and -inf in every output, final state and gradient must be torch.nn's (plain
configurations) and the reference backend's (with zoneout and recurrent dropout, which
torch.nn lacks; the same seed gives every backend the same masks).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fusedrnn

BACKENDS = [
    name
    for name in ("reference", "host", "triton", "auto")
    if name == "auto" or fusedrnn.available_backends().get(name) is None
]
STEPS, BATCH, INPUT, HIDDEN = 5, 3, 4, 6
NAN, INF = float("nan"), float("inf")

# (id, torch.nn class and kwargs, fusedrnn class)
CELLS = [
    ("lstm", nn.LSTM, {}, fusedrnn.LSTM),
    ("gru", nn.GRU, {}, fusedrnn.GRU),
    ("rnn_tanh", nn.RNN, {"nonlinearity": "tanh"}, fusedrnn.RNN),
    ("rnn_relu", nn.RNN, {"nonlinearity": "relu"}, fusedrnn.RNN),
]
# (id, where the value goes: "input" [t, b, feature] or "h0"/"c0" [b, unit], value)
PLACEMENTS = [
    ("nan_in_input", "input", (2, 1, 3), NAN),
    ("inf_in_input", "input", (1, 0, 0), INF),
    ("minus_inf_in_input", "input", (3, 2, 1), -INF),
    ("nan_in_h0", "h0", (1, 4), NAN),
    ("inf_in_h0", "h0", (2, 0), INF),
    ("inf_in_c0", "c0", (0, 5), INF),
]


def _inputs(placement, lstm: bool, dtype=torch.float32):
    _, where, index, value = placement
    torch.manual_seed(3)
    x = torch.randn(STEPS, BATCH, INPUT, dtype=dtype)
    h0 = torch.randn(1, BATCH, HIDDEN, dtype=dtype)
    c0 = torch.randn(1, BATCH, HIDDEN, dtype=dtype)
    target = {"input": x, "h0": h0[0], "c0": c0[0]}[where]
    target[index] = value
    leaves = [t.requires_grad_() for t in (x, h0, c0)]
    return leaves if lstm else leaves[:2]


def _run(module, leaves, seed: int = 11) -> dict[str, torch.Tensor]:
    """Outputs, final states and the gradients of every input and parameter."""
    x, *state = leaves
    torch.manual_seed(seed)
    out, hidden = module(x, tuple(state) if len(state) == 2 else state[0])
    hidden = hidden if isinstance(hidden, tuple) else (hidden,)
    results = {"output": out, **{f"state{i}": h for i, h in enumerate(hidden)}}
    torch.manual_seed(5)
    loss = sum((r * torch.randn_like(r)).sum() for r in results.values())
    params = dict(module.named_parameters())
    grads = torch.autograd.grad(loss, [*leaves, *params.values()])
    results.update({f"grad_leaf{i}": g for i, g in enumerate(grads[: len(leaves)])})
    results.update({f"grad_{n}": g for n, g in zip(params, grads[len(leaves) :])})
    return {k: v.detach() for k, v in results.items()}


def _assert_same_pattern(ours: dict, expected: dict, what: str) -> None:
    assert ours.keys() >= expected.keys()
    for name, want in expected.items():
        got = ours[name]
        for kind, test in (
            ("NaN", torch.isnan),
            ("+inf", torch.isposinf),
            ("-inf", torch.isneginf),
        ):
            assert torch.equal(test(got), test(want)), (
                f"{what}: {name} has {kind} at {int(test(got).sum())} places, "
                f"expected {int(test(want).sum())}"
            )
        finite = torch.isfinite(want)
        assert torch.allclose(got[finite], want[finite], atol=1e-4, rtol=1e-4), name


def _placements_for(cell: str):
    return [p for p in PLACEMENTS if p[1] != "c0" or cell == "lstm"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("cell", "placement"),
    [(c, p) for c in CELLS for p in _placements_for(c[0])],
    ids=[f"{c[0]}-{p[0]}" for c in CELLS for p in _placements_for(c[0])],
)
def test_plain_layer_propagates_non_finite_values_as_torch(backend, cell, placement):
    _, torch_cls, kwargs, fused_cls = cell
    torch.manual_seed(0)
    theirs = torch_cls(INPUT, HIDDEN, **kwargs)
    # a fusedrnn-only option that computes nothing (eval, no zoneout) would not reach the
    # fused kernels on auto; the plain module does, by name, on every named backend.
    ours = fused_cls(INPUT, HIDDEN, **kwargs, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    lstm = cell[0] == "lstm"
    expected = _run(theirs, _inputs(placement, lstm))
    got = _run(ours, _inputs(placement, lstm))
    _assert_same_pattern(got, expected, f"{backend} vs torch.nn")


REGULARISED = [
    ("lstm", fusedrnn.LSTM, {}, dict(zoneout_cell=0.3, zoneout_hidden=0.3)),
    ("lstm_dropout", fusedrnn.LSTM, {}, dict(recurrent_dropout=0.4, zoneout_hidden=0.3)),
    ("gru", fusedrnn.GRU, {}, dict(zoneout_hidden=0.4)),
    ("rnn_relu", fusedrnn.RNN, {"nonlinearity": "relu"}, dict(zoneout_hidden=0.4)),
]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize(
    ("config", "placement"),
    [(c, p) for c in REGULARISED for p in _placements_for(c[0][:4])],
    ids=[f"{c[0]}-{p[0]}" for c in REGULARISED for p in _placements_for(c[0][:4])],
)
def test_zoneout_propagates_non_finite_values_as_the_reference(backend, config, placement):
    # training: the 0/1 draws (evaluation's expectation p was always the product form)
    _, cls, kwargs, options = config
    modules = []
    for name in ("reference", backend):
        torch.manual_seed(0)
        modules.append(cls(INPUT, HIDDEN, **kwargs, **options, backend=name))
    lstm = cls is fusedrnn.LSTM
    expected = _run(modules[0], _inputs(placement, lstm))
    got = _run(modules[1], _inputs(placement, lstm))
    _assert_same_pattern(got, expected, f"{backend} vs reference")
