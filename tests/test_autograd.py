"""Autograd beyond one backward: double backward (``create_graph=True``), torch.func
transforms, and in-place ops on a layer's outputs, on every backend that runs here.

Double backward recomputes the recurrence with the reference loop in torch ops (same inputs,
same seed, so the same masks) and differentiates that; under a torch.func transform the layer
runs in torch ops. So the tests check (1) that ``gradcheck`` and ``gradgradcheck`` pass in
float64, (2) that the gradients recorded for double backward equal the backend's fused
gradients (same function, same masks), and (3) torch.nn's results for plain configurations.
"""

from __future__ import annotations

import pytest
import torch
from helpers import FLOAT64_TOLERANCE, assert_by_rule, max_error, recurrence_backends_on_cpu
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

BACKENDS = recurrence_backends_on_cpu()
TRITON = fusedrnn.available_backends().get("triton") is None  # the interpreter on a CPU
CELLS = {"lstm": ("LSTM", {}), "gru": ("GRU", {}), "rnn_tanh": ("RNN", {}), "rnn_relu": ("RNN", {})}
CELLS["rnn_relu"] = ("RNN", {"nonlinearity": "relu"})
OPTIONS = {
    "plain": {},
    "dropout_zoneout": {
        "input_dropout": 0.3,
        "recurrent_dropout": 0.4,
        "zoneout_hidden": 0.3,
    },
    "batch_norm": {"recurrent_batch_norm": True, "max_steps": 2},
    "layer_norm": {"layer_norm": True, "recurrent_dropout": 0.3},
}
SEED = 1234


def _module(cell: str, options: dict, backend: str, dtype, **shape) -> nn.Module:
    """A small fusedrnn layer in training mode (masks and batch statistics on)."""
    class_name, extra = CELLS[cell]
    kwargs = {**extra, **options}
    if cell == "lstm" and "zoneout_hidden" in options:
        kwargs["zoneout_cell"] = 0.2
    size = {"input_size": 2, "hidden_size": 3, **shape}
    torch.manual_seed(0)
    module = getattr(fusedrnn, class_name)(**size, **kwargs, backend=backend)
    return module.to(dtype).train()


def _inputs(cell: str, module: nn.Module, dtype, steps: int = 3, batch: int = 2):
    directions = 2 if module.bidirectional else 1
    states = module.num_layers * directions
    out_size = module.proj_size or module.hidden_size
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(steps, batch, module.input_size, generator=gen, dtype=dtype)
    h0 = torch.randn(states, batch, out_size, generator=gen, dtype=dtype)
    if cell != "lstm":
        return x, h0
    return x, (h0, torch.randn(states, batch, module.hidden_size, generator=gen, dtype=dtype))


def _leaves(x, hx):
    states = list(hx) if isinstance(hx, tuple) else [hx]
    return [t.detach().requires_grad_() for t in (x, *states)]


def _seeded_call(module, names, x, states, params):
    """The layer with the given parameters and a fixed mask seed (gradcheck calls it many
    times; every call must draw the same masks). Returns every output as a flat tuple."""
    hx = tuple(states) if len(states) == 2 else states[0]
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        out, hidden = torch.func.functional_call(module, dict(zip(names, params)), (x, hx))
    return (out, *(hidden if isinstance(hidden, tuple) else (hidden,)))


def _check(backend: str) -> None:
    if backend == "triton" and not TRITON:
        pytest.skip("triton is not available here")
    if backend not in (*BACKENDS, "triton", "auto"):
        pytest.skip(f"backend {backend!r} is not available here")


# --------------------------------------------------------------------------------------
# Double backward.
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", ["reference", "host"])
def test_gradcheck_and_gradgradcheck(backend, cell, options):
    _check(backend)
    module = _module(cell, OPTIONS[options], backend, torch.float64)
    x, *states = _leaves(*_inputs(cell, module, torch.float64))
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().requires_grad_() for p in module.parameters()]

    def call(x, *rest):
        return _seeded_call(module, names, x, rest[: len(states)], rest[len(states) :])

    args = (x, *states, *params)
    assert torch.autograd.gradcheck(call, args, fast_mode=True)
    assert torch.autograd.gradgradcheck(call, args, fast_mode=True)


def _first_order(module, x, hx, create_graph: bool):
    """Gradients of a fixed projection of every output w.r.t. the input, states and
    parameters."""
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        out, hidden = module(x, hx)
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    gen = torch.Generator().manual_seed(9)
    loss = sum(
        (t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (out, *states)
    )
    leaves = [x, *(hx if isinstance(hx, tuple) else (hx,)), *module.parameters()]
    return torch.autograd.grad(loss, leaves, create_graph=create_graph)


@pytest.mark.parametrize(
    ("backend", "cell", "options", "bidirectional"),
    [
        *[(b, c, o, c == "gru") for b in ("reference", "host") for c in CELLS for o in OPTIONS],
        *[("triton", c, o, False) for c in ("lstm", "gru") for o in OPTIONS],
        ("auto", "lstm", "dropout_zoneout", True),
    ],
)
def test_create_graph_gradients_equal_fused(backend, cell, options, bidirectional):
    """The gradients that double backward differentiates are the backend's own gradients:
    the same function of the same masks (regenerated from the seed)."""
    _check(backend)
    dtype = torch.float32 if backend == "triton" else torch.float64
    module = _module(cell, OPTIONS[options], backend, dtype, bidirectional=bidirectional)
    x, *states = _leaves(*_inputs(cell, module, dtype, steps=4, batch=3))
    hx = tuple(states) if len(states) == 2 else states[0]
    fused = _first_order(module, x, hx, create_graph=False)
    recorded = _first_order(module, x, hx, create_graph=True)
    assert all(g.grad_fn is not None for g in recorded)
    tolerance = 1e-5 if dtype == torch.float32 else FLOAT64_TOLERANCE
    for index, (a, b) in enumerate(zip(fused, recorded)):
        scale = max(1.0, a.abs().max().item())
        assert max_error(a, b) <= tolerance * scale, f"gradient {index}"


def _gradient_penalty(module, x, hx, packed_lengths=None):
    """A WGAN-GP-style loss: output terms plus the squared norm of d(output)/d(input).
    Returns the gradients of that loss w.r.t. the input, states and parameters."""
    inp = x if packed_lengths is None else pack_padded_sequence(x, packed_lengths)
    out, hidden = module(inp, hx)
    out = out if packed_lengths is None else out.data
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    inner = out.square().sum() + sum(s.sin().sum() for s in states)
    (grad_x,) = torch.autograd.grad(inner, x, create_graph=True)
    loss = grad_x.square().sum() + out.sum()
    leaves = [x, *(hx if isinstance(hx, tuple) else (hx,)), *module.parameters()]
    return torch.autograd.grad(loss, leaves)


def _torch_twin(module: nn.Module, cell: str, dtype) -> nn.Module:
    class_name, extra = CELLS[cell]
    twin = getattr(nn, class_name)(
        module.input_size,
        module.hidden_size,
        num_layers=module.num_layers,
        bidirectional=module.bidirectional,
        **extra,
    )
    twin.load_state_dict(module.state_dict())
    return twin.to(dtype)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", ["reference", "host", "triton"])
def test_gradient_penalty_matches_torch(backend, cell, packed):
    """Double backward of plain configurations against torch.nn (float64; triton, which
    runs float32, by the 2x rule against torch.nn's float32 error)."""
    _check(backend)
    shape = {"hidden_size": 5, "num_layers": 2, "bidirectional": cell == "gru"}
    if backend == "triton":
        shape = {"hidden_size": 3}
    lengths = [4, 3, 1] if packed else None
    module = _module(cell, {}, backend, torch.float64, **shape)
    x, *states = _leaves(*_inputs(cell, module, torch.float64, steps=4, batch=3))
    hx = tuple(states) if len(states) == 2 else states[0]
    truth = _gradient_penalty(_torch_twin(module, cell, torch.float64), x, hx, lengths)
    if backend != "triton":
        ours = _gradient_penalty(module, x, hx, lengths)
        for index, (a, b) in enumerate(zip(ours, truth)):
            assert max_error(a, b) <= FLOAT64_TOLERANCE * max(1.0, b.abs().max().item()), index
        return
    floats = [s.float() for s in states]
    x32, *states32 = _leaves(x.float(), tuple(floats) if len(floats) == 2 else floats[0])
    hx32 = tuple(states32) if len(states32) == 2 else states32[0]
    torch32 = _gradient_penalty(_torch_twin(module, cell, torch.float32), x32, hx32, lengths)
    ours32 = _gradient_penalty(module.float(), x32, hx32, lengths)
    names = [f"gradient {index}" for index in range(len(truth))]
    assert_by_rule(
        dict(zip(names, ours32)),
        dict(zip(names, truth)),
        dict(zip(names, torch32)),
        torch.float32,
        what="triton gradient penalty",
    )


# --------------------------------------------------------------------------------------
# torch.func.
# --------------------------------------------------------------------------------------
def _func_loss(module, x, hx):
    """A loss of (parameters, input). The buffers (recurrent BN's running statistics, updated
    in training) are an argument too: like torch.nn.BatchNorm's, they cannot be mutated as
    captured tensors inside a torch.func transform."""

    def loss(params, x, buffers):
        with torch.random.fork_rng():
            torch.manual_seed(SEED)
            out, hidden = torch.func.functional_call(module, (params, buffers), (x, hx))
        states = hidden if isinstance(hidden, tuple) else (hidden,)
        return out.square().sum() + sum(s.sum() for s in states)

    return loss


@pytest.mark.parametrize(
    ("backend", "cell", "options"),
    [
        *[(b, c, o) for b in ("reference", "host") for c in ("lstm", "gru") for o in OPTIONS],
        ("reference", "rnn_relu", "dropout_zoneout"),
        ("auto", "lstm", "dropout_zoneout"),
        ("auto", "gru", "batch_norm"),
        ("triton", "lstm", "dropout_zoneout"),
    ],
)
def test_func_grad_and_vjp_match_autograd(backend, cell, options):
    _check(backend)
    dtype = torch.float32 if backend == "triton" else torch.float64
    module = _module(cell, OPTIONS[options], backend, dtype, num_layers=2)
    x, hx = _inputs(cell, module, dtype, steps=4, batch=3)
    loss = _func_loss(module, x, hx)
    params = {n: p.detach() for n, p in module.named_parameters()}
    buffers = dict(module.named_buffers())

    func_grads = torch.func.grad(loss, argnums=(0, 1))(params, x, buffers)
    leaf_x = x.clone().requires_grad_()
    expected = torch.autograd.grad(
        loss(dict(module.named_parameters()), leaf_x, buffers), [leaf_x, *module.parameters()]
    )
    _, vjp = torch.func.vjp(lambda x, buffers: loss(params, x, buffers), x, buffers)
    vjp_x, _ = vjp(torch.ones((), dtype=dtype))

    tolerance = 1e-5 if dtype == torch.float32 else FLOAT64_TOLERANCE
    actual = [func_grads[1], *(func_grads[0][n] for n in params)]
    for name, a, b in zip(["input", *params], actual, expected):
        assert max_error(a, b) <= tolerance * max(1.0, b.abs().max().item()), name
    assert max_error(vjp_x, expected[0]) <= tolerance * max(1.0, expected[0].abs().max().item())


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", ["reference", "host"])
def test_func_grad_matches_torch(backend, cell):
    _check(backend)
    module = _module(cell, {}, backend, torch.float64, bidirectional=True)
    x, hx = _inputs(cell, module, torch.float64, steps=4, batch=3)
    twin = _torch_twin(module, cell, torch.float64)
    params = {n: p.detach() for n, p in module.named_parameters()}
    ours = torch.func.grad(_func_loss(module, x, hx))(params, x, {})
    theirs = torch.func.grad(_func_loss(twin, x, hx))(params, x, {})
    for name in params:
        assert max_error(ours[name], theirs[name]) <= FLOAT64_TOLERANCE, name


def test_func_hessian_vector_product_matches_double_backward():
    """jvp-of-grad (forward over reverse) agrees with reverse-over-reverse."""
    module = _module("lstm", OPTIONS["dropout_zoneout"], "host", torch.float64)
    x, hx = _inputs("lstm", module, torch.float64)
    params = {n: p.detach() for n, p in module.named_parameters()}
    loss = _func_loss(module, x, hx)
    tangent = torch.randn_like(x)
    _, hvp = torch.func.jvp(
        lambda x: torch.func.grad(loss, argnums=1)(params, x, {}), (x,), (tangent,)
    )
    leaf = x.clone().requires_grad_()
    (grad_x,) = torch.autograd.grad(loss(params, leaf, {}), leaf, create_graph=True)
    (expected,) = torch.autograd.grad(grad_x, leaf, tangent)
    assert max_error(hvp, expected) <= FLOAT64_TOLERANCE


@pytest.mark.parametrize("backend", ["reference", "host"])
def test_vmap_matches_a_loop(backend):
    _check(backend)
    module = _module("gru", {"layer_norm": True, "zoneout_hidden": 0.3}, backend, torch.float64)
    module.eval()
    xs = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    batched = torch.func.vmap(lambda x: module(x)[0])(xs)
    looped = torch.stack([module(x)[0] for x in xs])
    assert max_error(batched, looped) <= FLOAT64_TOLERANCE


def test_vmap_with_same_randomness_matches_a_loop():
    module = _module("lstm", OPTIONS["dropout_zoneout"], "host", torch.float64)
    xs = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    torch.manual_seed(SEED)
    batched = torch.func.vmap(lambda x: module(x)[0], randomness="same")(xs)
    looped = []
    for x in xs:  # every vmapped call drew the same seed
        torch.manual_seed(SEED)
        looped.append(module(x)[0])
    assert max_error(batched, torch.stack(looped)) <= FLOAT64_TOLERANCE
    with pytest.raises(RuntimeError, match=r"randomness='different'\) is not supported"):
        torch.func.vmap(lambda x: module(x)[0], randomness="different")(xs)


def test_vmap_of_training_batch_norm_raises_clearly():
    module = _module("lstm", OPTIONS["batch_norm"], "reference", torch.float64)
    xs = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="recurrent batch norm in training mode cannot run"):
        torch.func.vmap(lambda x: module(x)[0])(xs)


# --------------------------------------------------------------------------------------
# In-place ops on outputs.
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("backend", "cell", "options"),
    [
        *[(b, c, o) for b in ("reference", "host") for c in ("lstm", "rnn_tanh") for o in OPTIONS],
        ("auto", "lstm", "proj_zoneout"),
        ("reference", "lstm", "proj_zoneout"),
        ("triton", "lstm", "dropout_zoneout"),
        ("triton", "gru", "plain"),
    ],
)
def test_in_place_on_outputs(backend, cell, options):
    """``out += 1`` and ``h_n *= 2`` then backward, as torch.nn allows; the gradients equal
    those of the same computation on clones."""
    _check(backend)
    dtype = torch.float32 if backend == "triton" else torch.float64
    extra = {"proj_size": 2, "zoneout_cell": 0.2} if options == "proj_zoneout" else OPTIONS[options]
    module = _module(cell, extra, backend, dtype)
    x, hx = _inputs(cell, module, dtype)
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(3, 2, module.proj_size or module.hidden_size, generator=gen, dtype=dtype)

    def grads(in_place: bool):
        leaf = x.clone().requires_grad_()
        with torch.random.fork_rng():
            torch.manual_seed(SEED)
            out, hidden = module(leaf, hx)
        h_n = hidden[0] if isinstance(hidden, tuple) else hidden
        if in_place:
            out += 1
            h_n *= 2
        else:
            out, h_n = out.clone() + 1, h_n.clone() * 2
        loss = (out.sin() * weight).sum() + h_n.square().sum()
        return torch.autograd.grad(loss, [leaf, *module.parameters()])

    for index, (a, b) in enumerate(zip(grads(True), grads(False))):
        assert torch.equal(a, b), index


@pytest.mark.parametrize("backend", ["reference", "host"])
def test_in_place_on_outputs_matches_torch(backend):
    _check(backend)
    module = _module("lstm", {}, backend, torch.float64, num_layers=2)
    twin = _torch_twin(module, "lstm", torch.float64)
    x, hx = _inputs("lstm", module, torch.float64)

    def grads(layer):
        out, (h_n, c_n) = layer(x, hx)
        out += 1
        c_n.mul_(3)
        loss = out.sin().sum() + c_n.square().sum() + h_n.sum()
        return torch.autograd.grad(loss, list(layer.parameters()))

    for index, (a, b) in enumerate(zip(grads(module), grads(twin))):
        assert max_error(a, b) <= FLOAT64_TOLERANCE, index
