"""torch.autocast: fusedrnn runs the layer in the autocast dtype, as torch.nn.LSTM does under
CUDA autocast — outputs and states in that dtype, parameter gradients in the parameters' own
dtype. (torch's CPU autocast is inconsistent across its RNN classes — LSTM fails in oneDNN,
GRU stays float32, RNN runs bfloat16 — so fusedrnn applies the CUDA rule everywhere.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fusedrnn

CASES = [
    (fusedrnn.LSTM, dict(zoneout_cell=0.1, recurrent_dropout=0.2), "reference"),
    (fusedrnn.LSTM, {}, "auto"),
    (fusedrnn.GRU, dict(layer_norm=True), "reference"),
    (fusedrnn.RNN, dict(recurrent_batch_norm=True, max_steps=4), "auto"),
]


@pytest.mark.parametrize(("cls", "options", "backend"), CASES)
def test_cpu_autocast_runs_in_bfloat16_with_float32_gradients(cls, options, backend):
    torch.manual_seed(0)
    module = cls(8, 6, num_layers=2, backend=backend, **options)
    x = torch.randn(5, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, hidden = module(x)
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    assert out.dtype == torch.bfloat16
    assert all(h.dtype == torch.bfloat16 for h in states)
    out.float().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name

    # the same as running an explicit bfloat16 copy of the layer
    copy = cls(8, 6, num_layers=2, backend=backend, **options)
    copy.load_state_dict(module.state_dict())
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_out = module(x)[0]
    torch.manual_seed(1)
    explicit_out = copy.to(torch.bfloat16)(x.to(torch.bfloat16))[0]
    assert torch.equal(autocast_out, explicit_out)


def test_cpu_autocast_matches_torch_nn_rnn():
    """torch.nn.RNN is the torch.nn class whose CPU autocast runs bfloat16: compare to it."""
    torch.manual_seed(0)
    plain = nn.RNN(8, 6, 2)
    ours = fusedrnn.RNN(8, 6, 2, backend="reference")
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(5, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, ours_out = plain(x)[0], ours(x)[0]
    assert expected.dtype == ours_out.dtype == torch.bfloat16
    truth = plain.double()(x.double())[0]
    torch_err = (expected.double() - truth).abs().max().item()
    ours_err = (ours_out.double() - truth).abs().max().item()
    assert ours_err <= 2 * torch_err + 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_matches_torch_nn_lstm(dtype):
    torch.manual_seed(0)
    plain = nn.LSTM(16, 32, 2).cuda()
    ours = fusedrnn.LSTM(16, 32, 2).cuda()
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(7, 4, 16, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        expected, (h_expected, _) = plain(x)
        out, (h, _) = ours(x)
    assert out.dtype == expected.dtype and h.dtype == h_expected.dtype
    out.float().sum().backward()
    assert ours.weight_hh_l0.grad.dtype == torch.float32
