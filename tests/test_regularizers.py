"""fusedrnn's regularisers against independent step-by-step implementations, and gradcheck.

The independent implementations here are built from torch's own pieces (``nn.LSTMCell``,
``F.batch_norm`` with its running-statistics update, ``F.layer_norm``) and the masks of
``fusedrnn.reference_loop``, so they check the reference's equations, not just its code.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import FLOAT64_TOLERANCE, max_error
from torch import nn

import fusedrnn
from fusedrnn import functional, philox, reference_loop
from fusedrnn.backends.base import BN_MOMENTUM, NORM_EPS, RecurrenceConfig, RecurrenceInputs

DT = torch.float64


def _masks(seed, steps, batch, input_size, hidden, opts, training):
    """The masks of layer 0, direction 0 as fusedrnn defines them (docs/design.md §3.2)."""
    ones_x, ones_h = torch.ones(batch, input_size, dtype=DT), torch.ones(batch, hidden, dtype=DT)
    if not training:
        return ones_x, ones_h, opts.get("zoneout_cell", 0.0), opts.get("zoneout_hidden", 0.0)
    m_x, m_h = ones_x, ones_h
    if opts.get("input_dropout"):
        m_x = reference_loop.variational_mask(
            seed,
            philox.STREAM_INPUT_DROPOUT,
            0,
            0,
            batch,
            input_size,
            opts["input_dropout"],
            DT,
            None,
        )
    if opts.get("recurrent_dropout"):
        m_h = reference_loop.variational_mask(
            seed,
            philox.STREAM_RECURRENT_DROPOUT,
            0,
            0,
            batch,
            hidden,
            opts["recurrent_dropout"],
            DT,
            None,
        )
    zone = []
    for stream, key in (
        (philox.STREAM_ZONEOUT_CELL, "zoneout_cell"),
        (philox.STREAM_ZONEOUT_HIDDEN, "zoneout_hidden"),
    ):
        p = opts.get(key, 0.0)
        if p:
            u = philox.uniform_mask(seed, stream, 0, 0, steps, batch, hidden)
            zone.append((u < p).to(DT))
        else:
            zone.append(0.0)
    return m_x, m_h, zone[0], zone[1]


def _manual_lstm(module, x, h0, c0, seed, training):
    """One-layer LSTM with every option, step by step from torch's own functions."""
    steps, batch, input_size = x.shape
    hidden = module.hidden_size
    opts = {
        k: getattr(module, k)
        for k in ("input_dropout", "recurrent_dropout", "zoneout_cell", "zoneout_hidden")
    }
    m_x, m_h, d_c, d_h = _masks(seed, steps, batch, input_size, hidden, opts, training)
    norm = module.norm
    buffers = {}
    if norm == "batch":
        buffers = {n: b.clone() for n, b in module.named_buffers()}
    h, c = h0, c0
    outputs = []
    for t in range(steps):
        xp = (x[t] * m_x) @ module.weight_ih_l0.t()
        hp = (h * m_h) @ module.weight_hh_l0.t()
        if norm == "batch":
            s = min(t, module.max_steps - 1)
            update = t < module.max_steps

            def bn(v, part, weight, bias, s=s, update=update):
                mean = buffers[f"bn_running_mean_{part}_l0"]
                var = buffers[f"bn_running_var_{part}_l0"]
                if training and not update:
                    return F.batch_norm(v, None, None, weight, bias, True, BN_MOMENTUM, NORM_EPS)
                return F.batch_norm(
                    v, mean[s], var[s], weight, bias, training, BN_MOMENTUM, NORM_EPS
                )

            xp = bn(xp, "ih", module.bn_weight_ih_l0, None)
            hp = bn(hp, "hh", module.bn_weight_hh_l0, None)
        elif norm == "layer":
            xp = F.layer_norm(xp, xp.shape[1:], module.ln_weight_ih_l0, None, NORM_EPS)
            hp = F.layer_norm(hp, hp.shape[1:], module.ln_weight_hh_l0, None, NORM_EPS)
        gates = xp + module.bias_ih_l0 + hp + module.bias_hh_l0
        i, f, g, o = gates.chunk(4, 1)
        c_tilde = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        c_norm = c_tilde
        if norm == "batch":
            c_norm = bn(c_tilde, "c", module.bn_weight_c_l0, module.bn_bias_c_l0)
        elif norm == "layer":
            c_norm = F.layer_norm(
                c_tilde, (hidden,), module.ln_weight_c_l0, module.ln_bias_c_l0, NORM_EPS
            )
        h_tilde = torch.sigmoid(o) * torch.tanh(c_norm)
        dc = d_c if isinstance(d_c, float) else d_c[t]
        dh = d_h if isinstance(d_h, float) else d_h[t]
        c = dc * c + (1 - dc) * c_tilde
        h = dh * h + (1 - dh) * h_tilde
        outputs.append(h)
    return torch.stack(outputs), h, c, buffers


OPTION_SETS = {
    "input_dropout": dict(input_dropout=0.3),
    "recurrent_dropout": dict(recurrent_dropout=0.4),
    "zoneout": dict(zoneout_cell=0.3, zoneout_hidden=0.2),
    "batch_norm": dict(recurrent_batch_norm=True, max_steps=3),
    "layer_norm": dict(layer_norm=True),
    "all_with_bn": dict(
        input_dropout=0.2,
        recurrent_dropout=0.25,
        zoneout_cell=0.1,
        zoneout_hidden=0.15,
        recurrent_batch_norm=True,
        max_steps=4,
    ),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("options", list(OPTION_SETS), ids=str)
def test_lstm_matches_independent_implementation(options, training):
    torch.manual_seed(0)
    module = fusedrnn.LSTM(4, 6, backend="reference", dtype=DT, **OPTION_SETS[options])
    with torch.no_grad():  # non-trivial norm parameters and running statistics
        for name, p in module.named_parameters():
            if name.startswith(("bn_", "ln_")):
                p.copy_(torch.rand_like(p) + 0.5)
        for name, b in module.named_buffers():
            b.copy_(torch.rand_like(b) + (0.5 if "var" in name else -0.5))
    module.train(training)
    steps, batch = 5, 4
    x = torch.randn(steps, batch, 4, dtype=DT)
    h0, c0 = torch.randn(1, batch, 6, dtype=DT), torch.randn(1, batch, 6, dtype=DT)
    expected_out, expected_h, expected_c, expected_buffers = _manual_lstm(
        module, x, h0[0], c0[0], seed=99, training=training
    )
    out, h_n, c_n = functional.rnn(
        x, h0, c0, module._layer_params(), module.options(), training=training, seed=99
    )
    assert max_error(out, expected_out) <= FLOAT64_TOLERANCE
    assert max_error(h_n[0], expected_h) <= FLOAT64_TOLERANCE
    assert max_error(c_n[0], expected_c) <= FLOAT64_TOLERANCE
    for name, buffer in expected_buffers.items():
        assert max_error(getattr(module, name), buffer) <= FLOAT64_TOLERANCE, name


def _manual_gru(module, x, h0, seed, training):
    steps, batch, input_size = x.shape
    hidden = module.hidden_size
    opts = {k: getattr(module, k) for k in ("input_dropout", "recurrent_dropout", "zoneout_hidden")}
    m_x, m_h, _, d_h = _masks(seed, steps, batch, input_size, hidden, opts, training)
    h, outputs = h0, []
    for t in range(steps):
        xr, xz, xn = F.linear(x[t] * m_x, module.weight_ih_l0, module.bias_ih_l0).chunk(3, 1)
        hr, hz, hn = F.linear(h * m_h, module.weight_hh_l0, module.bias_hh_l0).chunk(3, 1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h_tilde = (1 - z) * n + z * h  # z multiplies the undropped h_{t-1}
        dh = d_h if isinstance(d_h, float) else d_h[t]
        h = dh * h + (1 - dh) * h_tilde
        outputs.append(h)
    return torch.stack(outputs), h


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gru_dropout_and_zoneout_match_independent_implementation(training):
    torch.manual_seed(1)
    module = fusedrnn.GRU(
        3, 5, input_dropout=0.2, recurrent_dropout=0.3, zoneout_hidden=0.25, dtype=DT
    ).train(training)
    x = torch.randn(6, 4, 3, dtype=DT)
    h0 = torch.randn(1, 4, 5, dtype=DT)
    expected_out, expected_h = _manual_gru(module, x, h0[0], 5, training)
    out, h_n, _ = functional.rnn(
        x, h0, None, module._layer_params(), module.options(), training=training, seed=5
    )
    assert max_error(out, expected_out) <= FLOAT64_TOLERANCE
    assert max_error(h_n[0], expected_h) <= FLOAT64_TOLERANCE


def test_rnn_layer_norm_and_residual_match_independent_implementation():
    torch.manual_seed(2)
    module = fusedrnn.RNN(
        4, 4, num_layers=2, nonlinearity="relu", layer_norm=True, residual=True, dtype=DT
    )
    x = torch.randn(5, 3, 4, dtype=DT)
    layer_input, finals = x, []
    for layer in range(2):
        h, outs = torch.zeros(3, 4, dtype=DT), []
        w_ih, w_hh = getattr(module, f"weight_ih_l{layer}"), getattr(module, f"weight_hh_l{layer}")
        g_ih, g_hh = (
            getattr(module, f"ln_weight_ih_l{layer}"),
            getattr(module, f"ln_weight_hh_l{layer}"),
        )
        for t in range(5):
            xp = F.layer_norm(layer_input[t] @ w_ih.t(), (4,), g_ih, None, NORM_EPS)
            hp = F.layer_norm(h @ w_hh.t(), (4,), g_hh, None, NORM_EPS)
            h = torch.relu(
                xp
                + getattr(module, f"bias_ih_l{layer}")
                + hp
                + getattr(module, f"bias_hh_l{layer}")
            )
            outs.append(h)
        out = torch.stack(outs)
        layer_input = out + layer_input if layer > 0 else out
        finals.append(h)
    ours, h_n = module(x)
    assert max_error(ours, layer_input) <= FLOAT64_TOLERANCE
    assert max_error(h_n, torch.stack(finals)) <= FLOAT64_TOLERANCE


# ---------------------------------------------------------------------------- gradcheck
def _recurrence_inputs(cell, norm, training, reverse, lengths, options):
    torch.manual_seed(11)
    hidden, batch, steps = 3, 3, 4
    cfg = RecurrenceConfig(cell=cell, hidden_size=hidden, norm=norm, **options)
    gates = cfg.gate_size
    rand = lambda *s: torch.randn(*s, dtype=DT)  # noqa: E731
    inputs = RecurrenceInputs(
        config=cfg,
        xg=rand(steps, batch, gates),
        h0=rand(batch, hidden),
        c0=rand(batch, hidden) if cell == "lstm" else None,
        w_hh=rand(gates, hidden) * 0.5,
        b_hh=rand(gates),
        w_hr=None,
        lengths=None if lengths is None else torch.tensor(lengths),
        reverse=reverse,
        training=training,
        seed=1234,
    )
    if norm != "none":
        inputs.norm_weight_hh = torch.rand(gates, dtype=DT) + 0.5
        if cell == "lstm":
            inputs.norm_weight_c = torch.rand(hidden, dtype=DT) + 0.5
            inputs.norm_bias_c = rand(hidden)
    if norm == "batch":
        inputs.running_mean_hh, inputs.running_var_hh = (
            rand(2, gates),
            torch.rand(2, gates, dtype=DT) + 0.5,
        )
        inputs.running_mean_c, inputs.running_var_c = (
            rand(2, hidden),
            torch.rand(2, hidden, dtype=DT) + 0.5,
        )
    return inputs


REGULARIZERS = {
    "recurrent_dropout": ("none", True, dict(recurrent_dropout=0.3)),
    "zoneout_train": ("none", True, dict(zoneout_cell=0.3, zoneout_hidden=0.3)),
    "zoneout_eval": ("none", False, dict(zoneout_cell=0.3, zoneout_hidden=0.3)),
    "batch_norm_train": ("batch", True, {}),
    "batch_norm_eval": ("batch", False, {}),
    "layer_norm": ("layer", True, {}),
    "everything": (
        "batch",
        True,
        dict(recurrent_dropout=0.2, zoneout_cell=0.2, zoneout_hidden=0.2),
    ),
}


@pytest.mark.parametrize(
    "reverse_lengths", [(False, None), (True, (4, 1, 3))], ids=["fwd", "rev_len"]
)
@pytest.mark.parametrize("regularizer", list(REGULARIZERS))
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_reference_recurrence_gradcheck(cell, regularizer, reverse_lengths):
    norm, training, options = REGULARIZERS[regularizer]
    if cell != "lstm":
        options = {k: v for k, v in options.items() if k != "zoneout_cell"}
    reverse, lengths = reverse_lengths
    template = _recurrence_inputs(cell, norm, training, reverse, lengths, options)
    fields = [f for f in RecurrenceInputs.GRAD_FIELDS if getattr(template, f) is not None]
    leaves = [getattr(template, f).clone().requires_grad_(True) for f in fields]

    def run(*tensors):
        out = functional.recurrence(template.replace(**dict(zip(fields, tensors))), "reference")
        return tuple(t for t in out[:3] if t is not None)

    assert torch.autograd.gradcheck(run, leaves, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize(
    "options",
    [
        dict(input_dropout=0.3, recurrent_dropout=0.2, zoneout_cell=0.2, zoneout_hidden=0.1),
        dict(recurrent_batch_norm=True, max_steps=2, residual=True),
        dict(layer_norm=True, residual=True, input_dropout=0.2),
    ],
    ids=["dropout_zoneout", "batch_norm_residual", "layer_norm_residual"],
)
def test_whole_layer_stack_gradcheck(options):
    """gradcheck through functional.rnn: masks, the input projection and its norm, two
    bidirectional layers, residual, lengths."""
    torch.manual_seed(4)
    module = fusedrnn.LSTM(3, 3, num_layers=2, bidirectional=True, dtype=DT, **options)
    params = module._layer_params()
    names = [n for n, _ in module.named_parameters()]
    x = torch.randn(4, 3, 3, dtype=DT, requires_grad=True)
    h0 = torch.randn(4, 3, 3, dtype=DT, requires_grad=True)
    c0 = torch.randn(4, 3, 3, dtype=DT, requires_grad=True)
    lengths = torch.tensor([4, 2, 3])
    weights = [p.detach().clone().requires_grad_(True) for p in module.parameters()]

    def run(x, h0, c0, *weights):
        by_name = dict(zip(names, weights))
        layer_params = []
        for lp, suffix in zip(params, module._suffixes()):
            fields = {
                "w_ih": "weight_ih",
                "w_hh": "weight_hh",
                "b_ih": "bias_ih",
                "b_hh": "bias_hh",
            }
            changes = {f: by_name[n + suffix] for f, n in fields.items()}
            for field, name in module._norm_names(suffix).items():
                if not field.startswith("running"):
                    changes[field] = by_name[name]
            layer_params.append(functional.LayerParams(**{**lp.__dict__, **changes}))
        return functional.rnn(
            x, h0, c0, layer_params, module.options(), lengths=lengths, training=True, seed=77
        )

    assert torch.autograd.gradcheck(run, (x, h0, c0, *weights), eps=1e-6, atol=1e-6, fast_mode=True)


def test_eval_dropout_only_equals_torch():
    """In eval mode variational dropout is the identity: the layer is torch.nn.LSTM."""
    torch.manual_seed(6)
    plain = nn.LSTM(4, 5, 2, bidirectional=True).double().eval()
    ours = (
        fusedrnn.LSTM(
            4,
            5,
            2,
            bidirectional=True,
            input_dropout=0.5,
            recurrent_dropout=0.5,
            backend="reference",
        )
        .double()
        .eval()
    )
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(5, 3, 4, dtype=DT)
    assert max_error(ours(x)[0], plain(x)[0]) <= FLOAT64_TOLERANCE
