"""Mask statistics and structure: drop fractions, variational sharing across time, distinct
masks per layer / direction / call, per-step zoneout, eval mode and reproducibility."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import FLOAT64_TOLERANCE, max_error

import fusedrnn
from fusedrnn import functional, philox, reference_loop
from fusedrnn.backends.base import RecurrenceConfig, RecurrenceInputs

STREAMS = {
    "input_dropout": philox.STREAM_INPUT_DROPOUT,
    "recurrent_dropout": philox.STREAM_RECURRENT_DROPOUT,
    "zoneout_cell": philox.STREAM_ZONEOUT_CELL,
    "zoneout_hidden": philox.STREAM_ZONEOUT_HIDDEN,
}


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("stream", list(STREAMS))
def test_drop_fraction_within_4_sigma(stream, p):
    batch, units, steps = 64, 257, 13
    per_step = stream.startswith("zoneout")
    u = philox.uniform_mask(2024, STREAMS[stream], 1, 0, steps if per_step else None, batch, units)
    n = u.numel()
    dropped = (u < p).double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(dropped - p) <= 4 * sigma, f"{dropped} vs {p} (4 sigma = {4 * sigma:.2e})"


def test_variational_mask_values_are_keep_scaled():
    m = reference_loop.variational_mask(
        5, philox.STREAM_RECURRENT_DROPOUT, 0, 0, 50, 40, 0.25, torch.float64, None
    )
    assert set(m.unique().tolist()) == {0.0, 1 / 0.75}


def _identity_rnn(
    input_dropout=0.0, recurrent_dropout=0.0, zoneout_hidden=0.0, layers=1, bidirectional=False
):
    """A tanh RNN with identity input weights and no biases: h_t = tanh(m_x x_t + ...)."""
    module = fusedrnn.RNN(
        6,
        6,
        layers,
        bias=False,
        bidirectional=bidirectional,
        input_dropout=input_dropout,
        recurrent_dropout=recurrent_dropout,
        zoneout_hidden=zoneout_hidden,
        backend="reference",
        dtype=torch.float64,
    )
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(
                torch.eye(*p.shape, dtype=torch.float64) if "ih" in name else torch.zeros_like(p)
            )
    return module


def test_input_mask_is_shared_by_every_time_step():
    module = _identity_rnn(input_dropout=0.5).train()
    x = torch.ones(9, 4, 6, dtype=torch.float64)  # the same input at every step
    out = module(x)[0]
    assert (out == 0).any() and (out != 0).any()
    for t in range(1, 9):
        assert torch.equal(out[t], out[0]), "the input mask changed between steps"


def test_recurrent_mask_is_shared_by_every_time_step():
    """With W_hh = I and zero input, h_t = tanh(m_h h_{t-1}): a unit dropped once stays at 0
    from step 1 on and a kept one never becomes 0, which holds only for one mask per row."""
    module = _identity_rnn(recurrent_dropout=0.5)
    with torch.no_grad():
        module.weight_hh_l0.copy_(torch.eye(6))
    x = torch.zeros(8, 5, 6, dtype=torch.float64)
    h0 = torch.full((1, 5, 6), 0.5, dtype=torch.float64)
    out = module(x, h0)[0]
    zero = out == 0
    assert zero.any() and (~zero).any()
    for t in range(1, 8):
        assert torch.equal(zero[t], zero[0])


def test_masks_differ_between_layers_directions_and_calls():
    def mask(layer, direction, seed):
        return (
            philox.uniform_mask(
                seed, philox.STREAM_RECURRENT_DROPOUT, layer, direction, None, 8, 64
            )
            < 0.5
        )

    base = mask(0, 0, 1)
    assert not torch.equal(base, mask(1, 0, 1)), "layers share a mask"
    assert not torch.equal(base, mask(0, 1, 1)), "directions share a mask"
    assert not torch.equal(base, mask(0, 0, 2)), "calls (seeds) share a mask"
    # and through the module: two forward calls draw two seeds
    module = _identity_rnn(input_dropout=0.5, layers=2, bidirectional=True).train()
    x = torch.ones(3, 4, 6, dtype=torch.float64)
    first, second = module(x)[0], module(x)[0]
    assert not torch.equal(first, second)
    forward_half, backward_half = first[0, :, :6], first[0, :, 6:]
    assert not torch.equal(forward_half != 0, backward_half != 0)


def test_zoneout_masks_differ_per_step():
    cfg = RecurrenceConfig("lstm", 32, zoneout_cell=0.5, zoneout_hidden=0.5)
    inputs = RecurrenceInputs(
        cfg,
        torch.zeros(6, 8, 128),
        torch.zeros(8, 32),
        torch.zeros(8, 32),
        torch.zeros(128, 32),
        None,
        None,
        None,
        training=True,
        seed=3,
    )
    m = reference_loop.masks(inputs)
    for key in ("d_c", "d_h"):
        for t in range(1, 6):
            assert not torch.equal(m[key][t], m[key][0]), f"{key} repeats at step {t}"
    assert not torch.equal(m["d_c"], m["d_h"])
    assert m["m_h"] is None


def test_eval_mode_uses_no_masks():
    cfg = RecurrenceConfig("gru", 4, recurrent_dropout=0.5, zoneout_hidden=0.3)
    inputs = RecurrenceInputs(
        cfg,
        torch.zeros(3, 2, 12),
        torch.zeros(2, 4),
        None,
        torch.zeros(12, 4),
        None,
        None,
        None,
        training=False,
    )
    m = reference_loop.masks(inputs)
    assert m["m_h"] is None and m["d_h"] == 0.3  # the zoneout expectation, not a draw
    module = _identity_rnn(input_dropout=0.5, recurrent_dropout=0.5).eval()
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    rng_state = torch.get_rng_state()
    assert torch.equal(module(x)[0], module(x)[0])
    assert torch.equal(rng_state, torch.get_rng_state()), "eval drew random numbers"


def test_eval_zoneout_is_the_expectation():
    """Eval output equals the average over many training masks' linear blend (per step the
    zoneout update is linear in d, so E[update] uses d = p exactly)."""
    torch.manual_seed(0)
    module = fusedrnn.RNN(3, 4, zoneout_hidden=0.3, backend="reference", dtype=torch.float64).eval()
    x = torch.randn(1, 2, 3, dtype=torch.float64)  # one step: the blend is linear in d
    h0 = torch.randn(1, 2, 4, dtype=torch.float64)
    out_eval = module(x, h0)[0]
    params, options = module._layer_params(), module.options()
    draws = torch.stack(
        [functional.rnn(x, h0, None, params, options, training=True, seed=s)[0] for s in range(500)]
    )
    h_new = torch.tanh(
        x[0] @ module.weight_ih_l0.t()
        + module.bias_ih_l0
        + h0[0] @ module.weight_hh_l0.t()
        + module.bias_hh_l0
    )
    assert max_error(out_eval[0], 0.3 * h0[0] + 0.7 * h_new) <= FLOAT64_TOLERANCE
    sigma = (h0[0] - h_new).abs().max().item() * math.sqrt(0.3 * 0.7 / 500)
    assert max_error(draws.mean(0), out_eval) <= 4 * sigma


def test_manual_seed_makes_runs_bit_identical():
    def run():
        torch.manual_seed(42)
        module = fusedrnn.LSTM(
            5,
            7,
            2,
            input_dropout=0.2,
            recurrent_dropout=0.3,
            zoneout_cell=0.1,
            zoneout_hidden=0.1,
            backend="reference",
        )
        x = torch.randn(6, 3, 5, requires_grad=True)
        out, (h, c) = module(x)
        out.sum().backward()
        return out, h, c, x.grad

    first, second = run(), run()
    for a, b in zip(first, second):
        assert torch.equal(a, b)
