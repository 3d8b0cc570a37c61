"""Every bad input raises a clear error, in torch.nn's wording where torch has one.

The table pairs each bad call with the exception type and a message fragment. Where
torch.nn raises for the same call, the test also checks that fusedrnn's message is torch's.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import fusedrnn
from fusedrnn import backends, functional, philox
from fusedrnn.backends.base import RecurrenceConfig, RecurrenceInputs

X = torch.randn(5, 3, 4)


def lstm(**kw):
    return fusedrnn.LSTM(4, 6, 2, **kw)


def gru(**kw):
    return fusedrnn.GRU(4, 6, **kw)


# (id, call raising in fusedrnn, the same call on torch.nn or None, exception, message regex)
CASES = [
    (
        "input_4d",
        lambda: lstm()(torch.randn(5, 3, 4, 1)),
        lambda: nn.LSTM(4, 6, 2)(torch.randn(5, 3, 4, 1)),
        ValueError,
        r"Expected input to be 2D or 3D, got 4D instead",
    ),
    (
        "input_1d_gru",
        lambda: gru()(torch.randn(4)),
        lambda: nn.GRU(4, 6)(torch.randn(4)),
        ValueError,
        r"GRU: Expected input to be 2D or 3D, got 1D instead",
    ),
    (
        "input_4d_rnn",
        lambda: fusedrnn.RNN(4, 6)(torch.randn(5, 3, 4, 1)),
        lambda: nn.RNN(4, 6)(torch.randn(5, 3, 4, 1)),
        ValueError,
        r"RNN: Expected input to be 2D or 3D, got 4D tensor instead",
    ),
    (
        "input_size_mismatch",
        lambda: lstm()(torch.randn(5, 3, 5)),
        lambda: nn.LSTM(4, 6, 2)(torch.randn(5, 3, 5)),
        RuntimeError,
        r"input.size\(-1\) must be equal to input_size. Expected 4, got 5",
    ),
    (
        "hx_shape",
        lambda: lstm()(X, (torch.zeros(2, 4, 6), torch.zeros(2, 3, 6))),
        lambda: nn.LSTM(4, 6, 2)(X, (torch.zeros(2, 4, 6), torch.zeros(2, 3, 6))),
        RuntimeError,
        r"Expected hidden\[0\] size \(2, 3, 6\), got \[2, 4, 6\]",
    ),
    (
        "cx_shape",
        lambda: lstm()(X, (torch.zeros(2, 3, 6), torch.zeros(1, 3, 6))),
        lambda: nn.LSTM(4, 6, 2)(X, (torch.zeros(2, 3, 6), torch.zeros(1, 3, 6))),
        RuntimeError,
        r"Expected hidden\[1\] size \(2, 3, 6\), got \[1, 3, 6\]",
    ),
    (
        "gru_hx_shape",
        lambda: gru()(X, torch.zeros(2, 3, 6)),
        lambda: nn.GRU(4, 6)(X, torch.zeros(2, 3, 6)),
        RuntimeError,
        r"Expected hidden size \(1, 3, 6\), got \[2, 3, 6\]",
    ),
    (
        "hx_dims_batched",
        lambda: gru()(X, torch.zeros(3, 6)),
        lambda: nn.GRU(4, 6)(X, torch.zeros(3, 6)),
        RuntimeError,
        r"For batched 3-D input, hx should also be 3-D but got 2-D tensor",
    ),
    (
        "hx_dims_unbatched",
        lambda: lstm()(torch.randn(5, 4), (torch.zeros(2, 1, 6), torch.zeros(2, 6))),
        lambda: nn.LSTM(4, 6, 2)(torch.randn(5, 4), (torch.zeros(2, 1, 6), torch.zeros(2, 6))),
        RuntimeError,
        r"For unbatched 2-D input, hx and cx should also be 2-D but got \(3-D, 2-D\) tensors",
    ),
    (
        "input_dtype",
        lambda: lstm()(X.double()),
        lambda: nn.LSTM(4, 6, 2)(X.double()),
        ValueError,
        r"RNN input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)",
    ),
    (
        "hx_dtype",
        lambda: gru(backend="reference")(X, torch.zeros(1, 3, 6, dtype=torch.float64)),
        None,
        RuntimeError,
        r"hx dtype \(torch.float64\) does not match input dtype \(torch.float32\)",
    ),
    (
        "input_device",
        lambda: gru()(torch.empty(5, 3, 4, device="meta")),
        None,
        RuntimeError,
        r"Input and parameter tensors are not at the same device, found input tensor at meta and parameter tensor at cpu",
    ),
    (
        "hx_device",
        lambda: gru()(X, torch.empty(1, 3, 6, device="meta")),
        None,
        RuntimeError,
        r"Input and hidden tensors are not at the same device, found input tensor at cpu and hidden tensor at meta",
    ),
    (
        "empty_sequence",
        lambda: lstm(backend="reference")(torch.randn(0, 3, 4)),
        lambda: nn.LSTM(4, 6, 2)(torch.randn(0, 3, 4)),
        RuntimeError,
        r"Expected sequence length to be larger than 0 in RNN",
    ),
    (
        "proj_ge_hidden",
        lambda: fusedrnn.LSTM(4, 6, proj_size=6),
        lambda: nn.LSTM(4, 6, proj_size=6),
        ValueError,
        r"proj_size has to be smaller than hidden_size",
    ),
    (
        "proj_on_gru",
        lambda: fusedrnn.GRU(4, 6, proj_size=2),
        lambda: nn.GRU(4, 6, proj_size=2),
        ValueError,
        r"proj_size argument is only supported for LSTM, not RNN or GRU",
    ),
    (
        "torch_dropout_range",
        lambda: fusedrnn.LSTM(4, 6, dropout=1.5),
        lambda: nn.LSTM(4, 6, dropout=1.5),
        ValueError,
        r"dropout should be a number in range \[0, 1\]",
    ),
    (
        "nonlinearity",
        lambda: fusedrnn.RNN(4, 6, nonlinearity="gelu"),
        lambda: nn.RNN(4, 6, nonlinearity="gelu"),
        ValueError,
        r"Unknown nonlinearity 'gelu'. Select from 'tanh' or 'relu'.",
    ),
    (
        "hidden_size_zero",
        lambda: fusedrnn.LSTM(4, 0),
        lambda: nn.LSTM(4, 0),
        ValueError,
        r"hidden_size must be greater than zero",
    ),
    (
        "recurrent_dropout_1",
        lambda: lstm(recurrent_dropout=1.0),
        None,
        ValueError,
        r"recurrent_dropout must be a probability in \[0, 1\), got 1.0",
    ),
    (
        "input_dropout_negative",
        lambda: lstm(input_dropout=-0.1),
        None,
        ValueError,
        r"input_dropout must be a probability in \[0, 1\), got -0.1",
    ),
    (
        "zoneout_cell_nan",
        lambda: lstm(zoneout_cell=float("nan")),
        None,
        ValueError,
        r"zoneout_cell must be a probability in \[0, 1\), got nan",
    ),
    (
        "zoneout_hidden_bool",
        lambda: gru(zoneout_hidden=True),
        None,
        ValueError,
        r"zoneout_hidden must be a probability in \[0, 1\), got True",
    ),
    (
        "zoneout_hidden_str",
        lambda: gru(zoneout_hidden="0.1"),
        None,
        ValueError,
        r"zoneout_hidden must be a probability in \[0, 1\), got '0.1'",
    ),
    (
        "zoneout_cell_on_gru",
        lambda: fusedrnn.GRU(4, 6, zoneout_cell=0.1),
        None,
        TypeError,
        r"unexpected keyword argument 'zoneout_cell'",
    ),
    (
        "unknown_backend",
        lambda: lstm(backend="cudnn"),
        None,
        ValueError,
        r"unknown backend 'cudnn'; expected one of 'auto', 'torch', 'reference'",
    ),
    (
        "torch_backend_with_options",
        lambda: lstm(backend="torch", zoneout_cell=0.1)(X),
        None,
        ValueError,
        r"backend='torch' runs torch.nn's own kernels, which cannot compute fusedrnn's options",
    ),
    (
        "batch_norm_without_max_steps",
        lambda: lstm(recurrent_batch_norm=True),
        None,
        ValueError,
        r"recurrent_batch_norm=True needs max_steps, a positive int",
    ),
    (
        "max_steps_without_batch_norm",
        lambda: lstm(max_steps=4),
        None,
        ValueError,
        r"max_steps is only used with recurrent_batch_norm=True",
    ),
    (
        "batch_and_layer_norm",
        lambda: lstm(recurrent_batch_norm=True, max_steps=3, layer_norm=True),
        None,
        ValueError,
        r"recurrent_batch_norm and layer_norm cannot both be on",
    ),
    (
        "forget_bias_without_bias",
        lambda: fusedrnn.LSTM(4, 6, bias=False, forget_bias=1.0),
        None,
        ValueError,
        r"forget_bias needs bias=True",
    ),
    (
        "lstm_hx_not_tuple",
        lambda: lstm()(X, torch.zeros(2, 3, 6)),
        None,
        TypeError,
        r"LSTM hx must be a tuple \(h_0, c_0\) of two tensors",
    ),
]


def _functional_call(lengths):
    module = fusedrnn.GRU(4, 6)
    return functional.rnn(
        X, torch.zeros(1, 3, 6), None, module._layer_params(), module.options(), lengths=lengths
    )


CASES += [
    (
        "lengths_zero",
        lambda: _functional_call(torch.tensor([5, 0, 2])),
        None,
        ValueError,
        r"lengths must be in \[1, 5\] \(the sequence length\), got values in \[0, 5\]",
    ),
    (
        "lengths_too_long",
        lambda: _functional_call(torch.tensor([5, 6, 2])),
        None,
        ValueError,
        r"lengths must be in \[1, 5\] \(the sequence length\), got values in \[2, 6\]",
    ),
    (
        "lengths_shape",
        lambda: _functional_call(torch.tensor([5, 2])),
        None,
        ValueError,
        r"lengths must have shape \[3\], got \[2\]",
    ),
    (
        "lengths_float",
        lambda: _functional_call(torch.tensor([5.0, 2.0, 1.0])),
        None,
        TypeError,
        r"lengths must be an integer tensor, got torch.float32",
    ),
]


@pytest.mark.parametrize(
    ("call", "torch_call", "error", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_raises_clear_error(call, torch_call, error, message):
    with pytest.raises(error, match=message):
        call()
    if torch_call is not None:  # the same wording as torch.nn
        with pytest.raises(error) as torch_error:
            torch_call()
        assert re.search(message, str(torch_error.value)), str(torch_error.value)


def test_non_finite_input_propagates_like_torch():
    torch.manual_seed(0)
    plain = nn.LSTM(4, 6)
    ours = fusedrnn.LSTM(4, 6, backend="reference")
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(3, 2, 4)
    x[1, 0, 2] = float("nan")
    x[0, 1, 0] = float("inf")
    expected, got = plain(x)[0], ours(x)[0]
    assert torch.equal(torch.isnan(expected), torch.isnan(got))
    finite = torch.isfinite(expected)
    assert torch.allclose(got[finite], expected[finite], atol=1e-6)


# Backends that run on this machine (triton under the interpreter at these tiny sizes).
BACKENDS = [
    name
    for name in ("reference", "host", "triton", "auto")
    if name == "auto" or fusedrnn.available_backends().get(name) is None
]

# (id, packed rows, batch_sizes): batch sizes that do not fit their data.
MALFORMED_PACKED = [
    ("size_returns_after_zero", 5, [3, 0, 2]),
    ("size_grows", 5, [2, 3]),
    ("size_grows_from_one", 3, [1, 2]),
    ("sizes_sum_past_the_data", 5, [3, 2, 1]),
    ("zero_then_past_the_data", 4, [3, 0, 2]),
    ("negative_size", 5, [3, -1, 3]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
@pytest.mark.parametrize(
    ("rows", "sizes"), [c[1:] for c in MALFORMED_PACKED], ids=[c[0] for c in MALFORMED_PACKED]
)
def test_malformed_packed_sequence_raises_as_torch(backend, cls, rows, sizes):
    torch.manual_seed(0)
    packed = PackedSequence(torch.randn(rows, 3), torch.tensor(sizes))
    with pytest.raises(Exception) as torch_error:
        getattr(nn, cls)(3, 4, bidirectional=True)(packed)
    ours = getattr(fusedrnn, cls)(3, 4, bidirectional=True, recurrent_dropout=0.2, backend=backend)
    with pytest.raises(type(torch_error.value)) as our_error:
        ours(packed)
    assert str(our_error.value) == str(torch_error.value)


@pytest.mark.parametrize("backend", [*BACKENDS, "torch"])
@pytest.mark.parametrize("rows", [6, 7])
def test_packed_data_must_have_exactly_the_rows_of_its_batch_sizes(backend, rows):
    # torch.nn runs 7 rows with batch_sizes [3, 2] (sum 5), and its reverse direction then
    # reads rows 2..6: a silently wrong result, so fusedrnn raises on every backend instead.
    packed = PackedSequence(torch.randn(rows, 3), torch.tensor([3, 2]))
    lstm = fusedrnn.LSTM(3, 4, bidirectional=True, backend=backend)
    message = rf"PackedSequence batch_sizes sum to 5, but its data has {rows} rows"
    with pytest.raises(RuntimeError, match=message):
        lstm(packed)


@pytest.mark.parametrize("value", [float("inf"), -float("inf"), float("nan")])
def test_forget_bias_must_be_finite(value):
    with pytest.raises(ValueError, match=r"forget_bias must be a finite number, got"):
        fusedrnn.LSTM(3, 4, forget_bias=value)


BIG_FEATURES = philox.MAX_UNITS + 1
LONG_SEQUENCE = philox.MAX_STEPS + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_wide_input_is_allowed_when_only_recurrent_dropout_draws(backend):
    # The recurrent mask is [B, H]: the input width is no field of any drawn mask.
    torch.manual_seed(0)
    lstm = fusedrnn.LSTM(BIG_FEATURES, 2, recurrent_dropout=0.5, backend=backend)
    out, _ = lstm(torch.randn(1, 2, BIG_FEATURES))
    assert out.shape == (1, 2, 2) and torch.isfinite(out).all()


def test_long_sequence_is_allowed_when_only_input_dropout_draws():
    # The input mask is variational ([B, I], no time field); host runs 2^18 steps quickly.
    lstm = fusedrnn.GRU(1, 1, input_dropout=0.5, backend="host")
    out, _ = lstm(torch.randn(LONG_SEQUENCE, 1, 1))
    assert out.shape == (LONG_SEQUENCE, 1, 1) and torch.isfinite(out).all()


@pytest.mark.parametrize("backend", ["host", "triton"])
def test_backends_accept_a_long_sequence_with_only_recurrent_dropout(backend):
    if fusedrnn.available_backends().get(backend) is not None:
        pytest.skip(f"{backend} does not run here")
    module = backends.load(backend)
    config = RecurrenceConfig("gru", 1, recurrent_dropout=0.5)
    inputs = RecurrenceInputs(
        config=config,
        xg=torch.zeros(LONG_SEQUENCE, 1, 3),
        h0=torch.zeros(1, 1),
        c0=None,
        w_hh=torch.zeros(3, 1),
        b_hh=None,
        w_hr=None,
        lengths=None,
        training=True,
    )
    assert module.unsupported_reason(inputs) is None
    zoned = inputs.replace(config=RecurrenceConfig("gru", 1, zoneout_hidden=0.5))
    assert "sequence length" in module.unsupported_reason(zoned)


@pytest.mark.parametrize(
    ("size", "options", "what"),
    [
        ((1, 1, BIG_FEATURES), dict(input_dropout=0.5), "feature size"),
        ((LONG_SEQUENCE, 1, 1), dict(zoneout_hidden=0.5), "sequence length"),
    ],
    ids=["wide_input_with_input_dropout", "long_sequence_with_zoneout"],
)
def test_mask_limits_still_apply_to_the_fields_a_mask_uses(size, options, what):
    gru = fusedrnn.GRU(size[2], 1, **options, backend="reference")
    with pytest.raises(ValueError, match=f"fusedrnn random masks support a {what} of at most"):
        gru(torch.zeros(size))


def _recurrence_inputs(cell: str = "lstm", **changes) -> RecurrenceInputs:
    """Valid inputs of one small recurrence (T=4, B=2, H=3) with ``changes`` applied."""
    gates = {"lstm": 4, "gru": 3}[cell] * 3
    inputs = RecurrenceInputs(
        config=RecurrenceConfig(cell, 3),
        xg=torch.randn(4, 2, gates),
        h0=torch.zeros(2, 3),
        c0=torch.zeros(2, 3) if cell == "lstm" else None,
        w_hh=torch.randn(gates, 3),
        b_hh=None,
        w_hr=None,
        lengths=torch.tensor([4, 2]),
    )
    return inputs.replace(**changes)


# (id, bad inputs, exception, message regex): the same error from every backend.
BAD_RECURRENCE_INPUTS = [
    ("zero_length", dict(lengths=torch.tensor([4, 0])), ValueError, r"lengths must be in \[1, 4\]"),
    ("long_length", dict(lengths=torch.tensor([5, 1])), ValueError, r"lengths must be in \[1, 4\]"),
    ("float_lengths", dict(lengths=torch.ones(2)), TypeError, "lengths must be an integer"),
    ("h0_shape", dict(h0=torch.zeros(3, 3)), ValueError, r"h0 must have shape \[2, 3\]"),
    ("w_hh_dtype", dict(w_hh=torch.zeros(12, 3, dtype=torch.float64)), TypeError, "w_hh has"),
    ("no_c0", dict(c0=None), ValueError, "c0 is required"),
    ("xg_width", dict(xg=torch.zeros(4, 2, 11)), ValueError, r"xg must have shape \[T, B, 12\]"),
]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "auto"])
@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [case[1:] for case in BAD_RECURRENCE_INPUTS],
    ids=[case[0] for case in BAD_RECURRENCE_INPUTS],
)
def test_every_backend_rejects_bad_recurrence_inputs_alike(backend, changes, error, message):
    with pytest.raises(error, match=message):
        functional.recurrence(_recurrence_inputs(**changes), backend)


@pytest.mark.parametrize("backend", ["host", "triton"])
def test_a_backend_that_cannot_run_a_call_raises_runtime_error(backend):
    if fusedrnn.available_backends().get(backend) is not None:
        pytest.skip(f"{backend} does not run here")
    config = RecurrenceConfig("lstm", 3, proj_size=2)
    inputs = _recurrence_inputs(
        config=config, h0=torch.zeros(2, 2), w_hh=torch.randn(12, 2), w_hr=torch.randn(2, 3)
    )
    # host runs every configuration on the CPU (proj_size too): tensors on another device;
    # triton (the interpreter here) runs proj_size too, but not float64
    reason = "proj_size"
    if backend == "triton":
        inputs = inputs.replace(
            **{
                f: getattr(inputs, f).double()
                for f in ("xg", "h0", "c0", "w_hh", "w_hr")
                if getattr(inputs, f) is not None
            }
        )
        reason = "float64 is not supported"
    if backend == "host":
        inputs = inputs.replace(
            **{
                f: getattr(inputs, f).to("meta")
                for f in ("xg", "h0", "c0", "w_hh", "b_hh", "w_hr")
                if getattr(inputs, f) is not None
            },
            lengths=None,
        )
        reason = "needs cpu tensors, got meta"
    with pytest.raises(RuntimeError, match=reason):
        backends.load(backend).forward(inputs)
    with pytest.raises(RuntimeError, match=reason):
        functional.recurrence(inputs, backend)
