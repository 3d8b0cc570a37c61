"""float16 / bfloat16 layers on the host backend against torch.nn in the same dtype (issue 12):
by the numerics rule, torch.nn's own error in that dtype against the float64 truth (torch.nn
on the same, half-precision-rounded, weights and inputs in float64) is the baseline; outputs,
final states and every gradient (input, states, every parameter incl. weight_hr)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_by_rule, run_and_grad
from torch import nn

import fusedrnn
from fusedrnn.backends import host, native
from fusedrnn.backends.base import RecurrenceConfig, RecurrenceInputs

HOST_REASON = fusedrnn.available_backends().get("host")
pytestmark = pytest.mark.skipif(HOST_REASON is not None, reason=str(HOST_REASON))

LAYERS = {
    "lstm": (nn.LSTM, fusedrnn.LSTM, {}),
    "lstm_proj": (nn.LSTM, fusedrnn.LSTM, {"proj_size": 5}),
    "lstm_proj1": (nn.LSTM, fusedrnn.LSTM, {"proj_size": 1}),
    "gru": (nn.GRU, fusedrnn.GRU, {}),
    "rnn_tanh": (nn.RNN, fusedrnn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, fusedrnn.RNN, {"nonlinearity": "relu"}),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_half_precision_matches_torch_nn(layer, dtype):
    torch_cls, fused_cls, kwargs = LAYERS[layer]
    size = dict(input_size=7, hidden_size=13, num_layers=2, bidirectional=True, **kwargs)
    torch.manual_seed(0)
    theirs = torch_cls(**size).to(dtype)
    ours = fused_cls(**size, backend="host").to(dtype)
    ours.load_state_dict(theirs.state_dict())
    truth_module = torch_cls(**size).double()
    truth_module.load_state_dict(theirs.state_dict())  # the same rounded weights, in float64

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, 4, 7, generator=gen).to(dtype)
    out_size = kwargs.get("proj_size") or 13
    shapes = [(9, 4, 2 * out_size), (4, 4, out_size)]
    if torch_cls is nn.LSTM:
        shapes.append((4, 4, 13))
    # cotangents already rounded to dtype, so every run differentiates the same function
    weights = [torch.randn(s, generator=gen).to(dtype).double() for s in shapes]

    def run(module, values_dtype):
        leaf = x.to(values_dtype).requires_grad_(True)
        return run_and_grad(module, leaf, None, weights)

    got = run(ours, dtype)
    baseline = run(theirs, dtype)
    truth = run(truth_module, torch.float64)
    assert ours.last_backend == "host"
    assert_by_rule(got, truth, baseline, dtype, what=f"host {layer} in {dtype}")


def _rounded_inputs(cell: str, proj_size: int, reverse: bool, dtype: torch.dtype):
    """Backend inputs whose every tensor is representable in ``dtype`` (as float32)."""
    gen = torch.Generator().manual_seed(5)
    steps, batch, hidden = 7, 5, 11
    out_size = proj_size or hidden
    gates = {"lstm": 4, "gru": 3}[cell]

    def draw(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).float()

    return dict(
        config=RecurrenceConfig(cell, hidden, proj_size, 0.0, 0.0, 0.0, "none"),
        xg=draw(steps, batch, gates * hidden),
        h0=draw(batch, out_size),
        c0=draw(batch, hidden) if cell == "lstm" else None,
        w_hh=draw(gates * hidden, out_size, scale=out_size**-0.5),
        b_hh=draw(gates * hidden),
        w_hr=draw(out_size, hidden, scale=hidden**-0.5) if proj_size else None,
        lengths=torch.tensor([7, 3, 0, 6, 1]),
        reverse=reverse,
    ), [draw(steps, batch, out_size), draw(batch, out_size), draw(batch, hidden)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell, proj_size", [("gru", 0), ("lstm", 0), ("lstm", 4)])
def test_half_is_the_float32_run_rounded_once(cell, proj_size, reverse, dtype):
    """Storage-only half precision (float16; bfloat16 where no bf16 tier runs, or a plain RNN
    cell): on inputs representable in ``dtype`` every result, every gradient included, is the
    float32 run's rounded once. So backward's h_{t-1} (dW_hh's
    input, GRU's dz) is the forward's float32 state (saved as h_state), not ``out`` rounded to
    ``dtype``."""
    if dtype == torch.bfloat16 and native.native().host_bf16_variant() != "none":
        pytest.skip(
            "the bf16 tiers round h_{t-1} for W_hh h (test_host_bf16.py runs this test with "
            "FUSEDRNN_HOST_ISA=x86-64-v4, the float32 fallback)"
        )
    fields, cotangents = _rounded_inputs(cell, proj_size, reverse, dtype)
    if cell != "lstm":
        cotangents[2] = None

    def run(values_dtype):
        cast = {
            k: v.to(values_dtype) if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in fields.items()
        }
        inputs = RecurrenceInputs(**cast, training=True)
        outputs, saved = host.forward(inputs)
        grads = host.backward(
            inputs, saved, *[None if g is None else g.to(values_dtype) for g in cotangents]
        )
        return outputs, saved, grads

    ours, saved, ours_grads = run(dtype)
    want, _, want_grads = run(torch.float32)
    h_state = dict(zip(native._SAVED, saved))["h_state"]
    assert h_state.dtype == torch.float32 and h_state.shape == ours.output.shape
    for name in ("output", "h_n", "c_n"):
        if getattr(want, name) is not None:
            assert torch.equal(getattr(ours, name), getattr(want, name).to(dtype)), name
    for name, grad in want_grads.items():
        if grad is not None:
            assert torch.equal(ours_grads[name], grad.to(dtype)), name
