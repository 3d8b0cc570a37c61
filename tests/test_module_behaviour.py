"""Module-level behaviour users rely on beyond forward: copies, serialisation, dtype moves,
``flatten_parameters``, ``extra_repr``, ``convert`` on a real model, ``functional_call``.

Every comparison of outputs runs in training mode with recurrent dropout and zoneout on (and
a fixed ``torch.manual_seed`` before each call), so a copy that lost an option or a norm
tensor computes something else and the comparison fails.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from helpers import recurrence_backends_on_cpu
from torch import nn
from torch.func import functional_call

import fusedrnn

OPTION_NAMES = (
    "input_dropout",
    "recurrent_dropout",
    "zoneout_cell",
    "zoneout_hidden",
    "recurrent_batch_norm",
    "max_steps",
    "layer_norm",
    "residual",
    "forget_bias",
    "backend",
)


def _configs(backend: str):
    """(class, positional args, keyword options) covering every option at least once."""
    return [
        (
            fusedrnn.LSTM,
            (3, 5, 2),
            dict(
                bidirectional=True,
                input_dropout=0.2,
                recurrent_dropout=0.3,
                zoneout_cell=0.1,
                zoneout_hidden=0.15,
                recurrent_batch_norm=True,
                max_steps=4,
                forget_bias=1.0,
                backend=backend,
            ),
        ),
        (
            fusedrnn.GRU,
            (4, 4, 3),
            dict(
                batch_first=True,
                recurrent_dropout=0.25,
                zoneout_hidden=0.2,
                layer_norm=True,
                residual=True,
                backend=backend,
            ),
        ),
        (
            fusedrnn.RNN,
            (3, 6),
            dict(nonlinearity="relu", input_dropout=0.1, zoneout_hidden=0.3, backend=backend),
        ),
    ]


def _config_ids(backend):
    return [f"{cls.__name__}-{backend}" for cls, _, _ in _configs(backend)]


CASES = [
    (backend, *config) for backend in recurrence_backends_on_cpu() for config in _configs(backend)
]
CASE_IDS = [name for backend in recurrence_backends_on_cpu() for name in _config_ids(backend)]


def _input(module, steps=4, batch=3, dtype=torch.float64):
    gen = torch.Generator().manual_seed(123)
    shape = (
        (batch, steps, module.input_size)
        if module.batch_first
        else (steps, batch, module.input_size)
    )
    return torch.randn(*shape, generator=gen, dtype=dtype)


def _run(module, x, seed=7):
    """Forward (training: masks on) + backward; returns outputs, state and every gradient."""
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the mask seed of this call
    out, hidden = module(x)
    states = list(hidden) if isinstance(hidden, tuple) else [hidden]
    (out.sin().sum() + sum(s.cos().sum() for s in states)).backward()
    grads = [p.grad.clone() for p in module.parameters()]
    return [out.detach(), *[s.detach() for s in states], *grads]


def _assert_same_module(a, b):
    assert type(a) is type(b)
    for name in OPTION_NAMES:
        assert getattr(a, name) == getattr(b, name), name
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    # distinct storage: a copy must not alias the original's tensors
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert pa.data_ptr() != pb.data_ptr(), name


def _assert_same_results(a, b):
    x = _input(a)
    ra, rb = _run(a, x), _run(b, x)
    assert len(ra) == len(rb)
    for i, (u, v) in enumerate(zip(ra, rb)):
        assert torch.equal(u, v), f"result {i} differs: {(u - v).abs().max().item():.3e}"


def _make(cls, args, options):
    torch.manual_seed(0)
    module = cls(*args, **options).double()
    # Move the norm buffers away from their init so a copy that re-initialised them differs.
    with torch.no_grad():
        for buf in module.buffers():
            buf.add_(torch.rand_like(buf) * 0.1)
        for name, p in module.named_parameters():
            if name.startswith(("bn_", "ln_")):
                p.add_(torch.rand_like(p) * 0.1)
    return module


def _save_load(module):
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize(
    "copier",
    [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m)), _save_load],
    ids=["deepcopy", "pickle", "torch.save"],
)
@pytest.mark.parametrize("backend,cls,args,options", CASES, ids=CASE_IDS)
def test_round_trip_preserves_state_options_and_outputs(copier, backend, cls, args, options):
    module = _make(cls, args, options)
    clone = copier(module)
    _assert_same_module(module, clone)
    assert repr(clone) == repr(module)
    _assert_same_results(module, clone)
    # the clone is independent: training it leaves the original alone
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_state_dict_round_trip_through_a_file(tmp_path):
    module = _make(*_configs("reference")[0][:2], _configs("reference")[0][2])
    torch.save(module.state_dict(), tmp_path / "lstm.pt")
    fresh = fusedrnn.LSTM(3, 5, 2, **_configs("reference")[0][2]).double()
    fresh.load_state_dict(torch.load(tmp_path / "lstm.pt"))
    _assert_same_results(module, fresh)


@pytest.mark.parametrize("target", [torch.float32, torch.float64])
def test_to_dtype_moves_parameters_and_norm_buffers(target):
    source = torch.float64 if target == torch.float32 else torch.float32
    for cls, args, options in _configs("reference"):
        module = cls(*args, **options).to(source)
        module.to(target)
        tensors = dict(module.named_parameters()) | dict(module.named_buffers())
        assert any(n.startswith(("bn_", "ln_")) for n in tensors) or not (
            options.get("recurrent_batch_norm") or options.get("layer_norm")
        )
        for name, tensor in tensors.items():
            assert tensor.dtype == target, f"{cls.__name__}.{name} stayed {tensor.dtype}"
        # torch's flat-weight list must follow the move, or forward reads stale tensors
        for name, weight in zip(module._flat_weights_names, module._flat_weights):
            assert weight is getattr(module, name), name
        out, _ = module(_input(module, dtype=target))
        assert out.dtype == target


@pytest.mark.parametrize("backend", recurrence_backends_on_cpu())
def test_float_cast_matches_a_module_built_in_float32(backend):
    """After .float(), a float32 forward equals a module built in float32 with the same
    state (the buffers were cast, not left behind in float64)."""
    cls, args, options = _configs(backend)[0]
    module = _make(cls, args, options).float()
    twin = cls(*args, **options, dtype=torch.float32)
    twin.load_state_dict(module.state_dict())
    x = _input(module, dtype=torch.float32)
    module.eval(), twin.eval()  # running statistics are read in eval
    assert torch.equal(module(x)[0], twin(x)[0])


@pytest.mark.parametrize("backend", ["auto", *recurrence_backends_on_cpu()])
def test_flatten_parameters_is_a_harmless_no_op_on_cpu(backend):
    torch.manual_seed(0)
    module = fusedrnn.LSTM(3, 4, 2, bidirectional=True, zoneout_cell=0.1, backend=backend).double()
    x = _input(module)
    module.eval()
    before_out = module(x)[0]
    params = [(n, p, p.data_ptr(), p.clone()) for n, p in module.named_parameters()]
    module.flatten_parameters()
    for (name, p, ptr, value), (name2, p2) in zip(params, module.named_parameters()):
        assert name == name2 and p is p2 and p2.data_ptr() == ptr and torch.equal(p2, value)
    assert torch.equal(module(x)[0], before_out)


def test_extra_repr_lists_the_options():
    lstm = fusedrnn.LSTM(
        3,
        5,
        recurrent_dropout=0.25,
        zoneout_cell=0.1,
        zoneout_hidden=0.05,
        input_dropout=0.2,
        recurrent_batch_norm=True,
        max_steps=6,
        residual=True,
        forget_bias=1.0,
        backend="reference",
    )
    text = repr(lstm)
    for expected in (
        "LSTM(3, 5",
        "input_dropout=0.2",
        "recurrent_dropout=0.25",
        "zoneout_cell=0.1",
        "zoneout_hidden=0.05",
        "recurrent_batch_norm=True",
        "max_steps=6",
        "residual=True",
        "forget_bias=1.0",
        "backend='reference'",
    ):
        assert expected in text, (expected, text)
    assert "layer_norm=True" in repr(fusedrnn.GRU(2, 3, layer_norm=True))
    # defaults stay out, so a plain layer prints exactly as torch.nn's
    assert repr(fusedrnn.GRU(2, 3, 2, batch_first=True)) == repr(nn.GRU(2, 3, 2, batch_first=True))


class EncoderDecoder(nn.Module):
    """A small translation-style model: embedding, bidirectional LSTM encoder, LSTM decoder
    initialised from the encoder's final states, linear head."""

    def __init__(self, vocab=17, embed=6, hidden=8):
        super().__init__()
        self.src_embed = nn.Embedding(vocab, embed)
        self.tgt_embed = nn.Embedding(vocab, embed)
        self.encoder = nn.LSTM(embed, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.bridge = nn.Linear(2 * hidden, hidden)
        self.decoder = nn.LSTM(embed, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, src, tgt):
        _, (h, c) = self.encoder(self.src_embed(src))
        layers = self.decoder.num_layers
        h = self.bridge(h.view(layers, 2, *h.shape[1:]).transpose(1, 2).flatten(2))
        c = self.bridge(c.view(layers, 2, *c.shape[1:]).transpose(1, 2).flatten(2))
        out, _ = self.decoder(self.tgt_embed(tgt), (h.tanh(), c))
        return self.head(out)


@pytest.mark.parametrize("backend", ["auto", *recurrence_backends_on_cpu()])
def test_convert_encoder_decoder_keeps_forward_and_gradients(backend):
    torch.manual_seed(0)
    model = EncoderDecoder().double()
    src = torch.randint(0, 17, (4, 9))
    tgt = torch.randint(0, 17, (4, 6))
    expected = model(src, tgt)
    expected.square().mean().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    converted = fusedrnn.convert(model, backend=backend)
    assert converted is model
    assert type(model.encoder) is fusedrnn.LSTM and type(model.decoder) is fusedrnn.LSTM
    got = model(src, tgt)
    assert (got - expected).abs().max().item() <= 1e-12
    got.square().mean().backward()
    for name, p in model.named_parameters():
        err = (p.grad - expected_grads[name]).abs().max().item()
        assert err <= 1e-12, (name, err)


@pytest.mark.parametrize("backend", ["auto", *recurrence_backends_on_cpu()])
def test_functional_call_uses_the_replaced_weights(backend):
    """torch.func.functional_call with new weights equals a module holding those weights,
    and differs from the original (so the replacement really reached the backend)."""
    torch.manual_seed(0)
    options = {} if backend == "auto" else dict(recurrent_dropout=0.2, zoneout_cell=0.1)
    module = fusedrnn.LSTM(3, 4, 2, bidirectional=True, backend=backend, **options).double()
    x = _input(module)
    new = {n: torch.randn_like(p, requires_grad=True) * 0.3 for n, p in module.named_parameters()}
    twin = copy.deepcopy(module)
    twin.load_state_dict({n: v.detach() for n, v in new.items()})

    torch.manual_seed(5)
    out, (h, c) = functional_call(module, new, (x,))
    torch.manual_seed(5)
    twin_out, (twin_h, twin_c) = twin(x)
    torch.manual_seed(5)
    orig_out, _ = module(x)
    assert torch.equal(out, twin_out) and torch.equal(h, twin_h) and torch.equal(c, twin_c)
    assert not torch.allclose(out, orig_out)
    # gradients flow to the replacement tensors, not to the module's own parameters
    grads = torch.autograd.grad(out.sum() + c.sum(), list(new.values()))
    (twin_out.sum() + twin_c.sum()).backward()
    for (name, _), g in zip(new.items(), grads):
        assert torch.allclose(g, twin.get_parameter(name).grad, rtol=0, atol=1e-12), name
    assert all(p.grad is None for p in module.parameters())
    # the module's own parameters are back afterwards
    for name, value in new.items():
        assert module.get_parameter(name) is not value, name
    torch.manual_seed(5)
    assert torch.equal(module(x)[0], orig_out)


# Backends that run here (triton under the interpreter: the sizes below are tiny).
EMPTY_BATCH_BACKENDS = [
    name
    for name in ("reference", "host", "triton", "auto")
    if name == "auto" or fusedrnn.available_backends().get(name) is None
]


@pytest.mark.parametrize("backend", EMPTY_BATCH_BACKENDS)
@pytest.mark.parametrize(
    ("mode", "options"),
    [
        ("LSTM", {}),
        ("LSTM", dict(recurrent_dropout=0.2, zoneout_cell=0.1, zoneout_hidden=0.1)),
        ("LSTM", dict(recurrent_batch_norm=True, max_steps=3)),
        ("GRU", dict(layer_norm=True)),
        ("RNN", dict(zoneout_hidden=0.3)),
    ],
    ids=["lstm", "lstm_regularised", "lstm_batch_norm", "gru_layer_norm", "rnn_zoneout"],
)
def test_empty_batch_gives_empty_outputs_and_zero_gradients_as_torch(backend, mode, options):
    torch.manual_seed(0)
    theirs = getattr(nn, mode)(3, 5, num_layers=2, bidirectional=True)
    ours = getattr(fusedrnn, mode)(
        3, 5, num_layers=2, bidirectional=True, backend=backend, **options
    )
    ours.load_state_dict(theirs.state_dict(), strict=False)
    results = []
    for module in (theirs, ours):
        x = torch.randn(4, 0, 3, requires_grad=True)
        out, hidden = module(x)
        states = hidden if isinstance(hidden, tuple) else (hidden,)
        (out.sum() + sum(s.sum() for s in states)).backward()
        results.append((out, states, x.grad))
    (out, states, grad_x), (our_out, our_states, our_grad_x) = results
    assert our_out.shape == out.shape == (4, 0, 10)
    assert [s.shape for s in our_states] == [s.shape for s in states]
    assert our_grad_x.shape == grad_x.shape
    their_grads = {name: p.grad for name, p in theirs.named_parameters()}
    for name, p in ours.named_parameters():  # no rows: every gradient is 0, as torch.nn's
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0, name
        if name in their_grads:
            assert torch.equal(p.grad, their_grads[name]), name


HOST_RUNS = fusedrnn.available_backends().get("host") is None


@pytest.mark.skipif(not HOST_RUNS, reason="the reasons are planted in the host backend")
def test_auto_warns_once_per_reason_when_it_falls_back_to_reference(monkeypatch):
    """The host backend runs every configuration on the CPU (tests/test_auto_host.py), so the
    reasons it gives here are planted: one warning per distinct reason, naming it."""
    from fusedrnn.backends import host

    monkeypatch.setattr(fusedrnn.dispatch, "_warned_fallback", set())
    reason = {"text": "planted reason A"}
    monkeypatch.setattr(host, "unsupported_reason", lambda inputs: reason["text"])
    module = fusedrnn.GRU(3, 5, recurrent_dropout=0.2)
    x = torch.randn(4, 2, 3)
    for text in ("planted reason A", "planted reason B"):
        reason["text"] = text
        with pytest.warns(RuntimeWarning, match=rf"on cpu \(host: {text}\).*'reference' loop"):
            module(x)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            module(x)  # the same reason again: no second warning
        assert not [w for w in record if "'reference' loop" in str(w.message)]
    assert module.last_backend == "reference"
    assert "last_backend='reference'" in repr(module)


@pytest.mark.parametrize(
    ("backend", "options", "expected"),
    [
        ("auto", {}, "torch"),
        ("auto", dict(zoneout_hidden=0.1), "host"),
        ("torch", {}, "torch"),
        ("reference", {}, "reference"),
        ("host", dict(layer_norm=True), "host"),
        ("triton", {}, "triton"),
    ],
)
def test_last_backend_says_which_backend_ran(backend, options, expected):
    if fusedrnn.available_backends().get(expected) is not None:
        pytest.skip(f"{expected} does not run here")
    module = fusedrnn.GRU(3, 4, 2, bidirectional=True, backend=backend, **options)
    assert module.last_backend is None and "last_backend" not in repr(module)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback warning on these
        module(torch.randn(3, 2, 3))
    assert module.last_backend == expected
    assert f"last_backend={expected!r}" in repr(module)


@pytest.mark.gpu
def test_auto_warns_when_it_falls_back_to_reference_on_a_gpu(monkeypatch):
    monkeypatch.setattr(fusedrnn.dispatch, "_warned_fallback", set())
    lstm = fusedrnn.LSTM(3, 5, proj_size=2, zoneout_hidden=0.1).cuda()
    with pytest.warns(RuntimeWarning, match=r"on cuda .*proj_size.*'reference'"):
        lstm(torch.randn(4, 2, 3, device="cuda"))
    assert lstm.last_backend == "reference"
