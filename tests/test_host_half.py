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
