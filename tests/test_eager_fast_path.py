"""The bypasses of the recurrence op in plain eager CPU calls (``recurrence_op._bypasses_op``):
its implementation called directly in inference, its autograd formula as an
``autograd.Function`` in training (``_RecurrenceFunction``). Taken only where nothing but the
op's own CPU kernel and autograd could see the call, and then the same results (and
gradients) as through the op."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fusedrnn
from fusedrnn import functional, recurrence_op

pytestmark = pytest.mark.skipif(
    fusedrnn.available_backends()["host"] is not None, reason="needs the host backend"
)


@pytest.fixture
def op_calls(monkeypatch) -> list[str]:
    """The backends named in calls that went through the registered op."""
    calls: list[str] = []
    real_op = recurrence_op._recurrence_op

    def counting_op(*args):
        calls.append(args[-1])
        return real_op(*args)

    monkeypatch.setattr(recurrence_op, "_recurrence_op", counting_op)
    return calls


def _layer_and_input(cell: str = "lstm", **options):
    torch.manual_seed(0)
    cls = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU, "rnn": fusedrnn.RNN}[cell]
    layer = cls(5, 7, backend="host", **options).eval()
    return layer, torch.randn(4, 3, 5)


def test_plain_eager_calls_skip_the_dispatcher(op_calls, monkeypatch):
    layer, x = _layer_and_input()
    with torch.no_grad():
        layer(x)
    out, _ = layer(x)  # the parameters require grad: training, through _RecurrenceFunction
    assert type(out.grad_fn).__name__ == "_RecurrenceFunctionBackward"
    assert op_calls == []
    monkeypatch.setattr(recurrence_op, "DIRECT_TRAINING", False)  # as compiled graphs
    out, _ = layer(x)
    assert op_calls == ["host"]
    assert "fusedrnn_recurrence" in type(out.grad_fn).__name__


class _RecordingMode(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_sees_the_op():
    layer, x = _layer_and_input()
    with torch.no_grad(), _RecordingMode() as mode:
        layer(x)
    assert any(op.startswith("fusedrnn.recurrence") for op in mode.ops), mode.ops


def test_a_profile_shows_the_op():
    layer, x = _layer_and_input()
    with (
        torch.no_grad(),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof,
    ):
        layer(x)
    assert any(event.key == "fusedrnn::recurrence" for event in prof.key_averages())


def test_a_torch_function_mode_gets_the_op(op_calls):
    layer, x = _layer_and_input()
    with torch.no_grad(), torch.device("cpu"):  # a TorchFunctionMode
        layer(x)
    assert op_calls == ["host"]


class _SubclassTensor(torch.Tensor):
    """A tensor subclass: its ``__torch_function__`` (torch.Tensor's) must see the op."""


def test_a_tensor_subclass_gets_the_op(op_calls):
    layer, x = _layer_and_input()
    with torch.no_grad():
        layer(x.as_subclass(_SubclassTensor))
    assert op_calls == ["host"]


@pytest.mark.parametrize(
    ("cell", "options"),
    [
        ("lstm", {}),
        ("lstm", {"bidirectional": True, "num_layers": 2, "proj_size": 3}),
        ("gru", {"zoneout_hidden": 0.2, "layer_norm": True}),
        ("lstm", {"recurrent_batch_norm": True, "max_steps": 2}),
        ("rnn", {"bias": False}),
    ],
)
@pytest.mark.parametrize("defer", [False, True])
def test_the_direct_call_gives_the_ops_results(monkeypatch, cell, options, defer):
    # With the input projection deferred to the host's step loop (functional.DEFER_PROJECTION,
    # direct path only) the direct call's xg is the host GEMM's rather than torch's: equal up
    # to rounding. Without it, bit for bit.
    monkeypatch.setattr(functional, "DEFER_PROJECTION", defer)
    layer, x = _layer_and_input(cell, **options)
    lengths = torch.tensor([4, 1, 3])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    with torch.no_grad():
        direct = [layer(x), layer(packed)]
        monkeypatch.setattr(recurrence_op, "_bypasses_op", lambda *args: False)
        through_op = [layer(x), layer(packed)]
    flat_direct = torch.utils._pytree.tree_leaves(direct)
    flat_op = torch.utils._pytree.tree_leaves(through_op)
    assert len(flat_direct) == len(flat_op)
    for a, b in zip(flat_direct, flat_op):
        if isinstance(a, torch.Tensor):
            if defer:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(a, b)


TRAINING_CASES = [
    ("lstm", {}),
    ("lstm", {"bidirectional": True, "num_layers": 2, "proj_size": 3}),
    ("gru", {"zoneout_hidden": 0.2, "layer_norm": True}),
    ("lstm", {"recurrent_batch_norm": True, "max_steps": 4, "recurrent_dropout": 0.3}),
    ("gru", {"num_layers": 2, "weight_drop": 0.3, "dropout": 0.2}),
    ("rnn", {"bias": False}),
]


def _training_results(layer, x, hx, create_graph: bool = False) -> list[torch.Tensor]:
    """Outputs, final states and the gradients of a fixed projection of them with respect
    to x, hx and every parameter (with ``create_graph``: also the gradient of the gradients'
    squared sum with respect to the parameters), with the same mask seed each call."""
    x = x.clone().requires_grad_()
    hx = tuple(h.clone().requires_grad_() for h in hx)
    torch.manual_seed(5)
    out, st = layer(x, hx if len(hx) == 2 else hx[0])
    results = [out, *(st if isinstance(st, tuple) else (st,))]
    gen = torch.Generator().manual_seed(9)
    loss = sum((r * torch.randn(r.shape, generator=gen)).sum() for r in results)
    params = list(layer.parameters())
    grads = torch.autograd.grad(loss, [x, *hx, *params], create_graph=create_graph)
    results += grads
    if create_graph:
        results += torch.autograd.grad(sum((g * g).sum() for g in grads), params)
    return [r.detach() for r in results]


@pytest.mark.parametrize(("cell", "options"), TRAINING_CASES)
@pytest.mark.parametrize("defer", [False, True])
def test_training_through_the_function_gives_the_ops_results(monkeypatch, cell, options, defer):
    """_RecurrenceFunction against the op with its register_autograd formula: outputs,
    states and every gradient bit for bit; with the input projection deferred to the host's
    step loop (the Function only) equal up to the projection GEMM's rounding."""
    monkeypatch.setattr(functional, "DEFER_PROJECTION", defer)
    layer, x = _layer_and_input(cell, **options)
    layer.train()
    layers = layer.num_layers * (2 if layer.bidirectional else 1)
    out_size = layer.proj_size or layer.hidden_size
    hx = [torch.randn(layers, 3, out_size)]
    if cell == "lstm":
        hx.append(torch.randn(layers, 3, layer.hidden_size))
    direct = _training_results(layer, x, hx)
    monkeypatch.setattr(recurrence_op, "DIRECT_TRAINING", False)
    through_op = _training_results(layer, x, hx)
    assert len(direct) == len(through_op)
    for index, (a, b) in enumerate(zip(direct, through_op)):
        if defer:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=str(index))
        else:
            assert torch.equal(a, b), index


@pytest.mark.parametrize("defer", [False, True])
def test_double_backward_through_the_function(monkeypatch, defer):
    """create_graph=True through _RecurrenceFunction (the reference loop recomputes the
    recurrence, and a deferred projection, differentiably): the second-order gradients equal
    the op's."""
    monkeypatch.setattr(functional, "DEFER_PROJECTION", defer)
    layer, x = _layer_and_input("lstm", zoneout_cell=0.2)
    layer.train()
    hx = [torch.randn(1, 3, 7), torch.randn(1, 3, 7)]
    direct = _training_results(layer, x, hx, create_graph=True)
    monkeypatch.setattr(recurrence_op, "DIRECT_TRAINING", False)
    through_op = _training_results(layer, x, hx, create_graph=True)
    for index, (a, b) in enumerate(zip(direct, through_op)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=str(index))


def test_a_gradient_of_the_input_alone_is_recorded(monkeypatch):
    """Frozen parameters and a deferred projection (xg then a placeholder that needs no
    gradient): x's requires_grad alone makes it training, and its gradient is the op's."""
    monkeypatch.setattr(functional, "DEFER_PROJECTION", True)
    layer, x = _layer_and_input("gru")
    layer.requires_grad_(False)
    grads = []
    for direct in (True, False):
        monkeypatch.setattr(recurrence_op, "DIRECT_TRAINING", direct)
        leaf = x.clone().requires_grad_()
        out, _ = layer(leaf)
        assert out.requires_grad
        (grad,) = torch.autograd.grad(out.sin().sum(), leaf)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_a_gradient_a_backend_leaves_out_is_zeros_as_through_the_op(monkeypatch):
    """A backend whose backward returns no gradient for an input that needs one: zeros, not
    None, as the op's backward gives (so ``.grad`` is a tensor either way)."""
    from fusedrnn.backends import host

    real = host.backward

    def without_b_hh(*args):
        grads = real(*args)
        grads["b_hh"] = None
        return grads

    monkeypatch.setattr(host, "backward", without_b_hh)
    layer, x = _layer_and_input("gru")
    for direct in (True, False):
        monkeypatch.setattr(recurrence_op, "DIRECT_TRAINING", direct)
        layer.zero_grad(set_to_none=True)
        layer(x)[0].sum().backward()
        assert torch.equal(layer.bias_hh_l0.grad, torch.zeros_like(layer.bias_hh_l0)), direct


def test_training_with_a_profiler_or_a_mode_takes_the_op(op_calls):
    layer, x = _layer_and_input()
    layer.train()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        layer(x)[0].sum().backward()
    assert any(event.key == "fusedrnn::recurrence" for event in prof.key_averages())
    with torch.device("cpu"):  # a TorchFunctionMode
        layer(x)
    layer(x.as_subclass(_SubclassTensor))
    assert op_calls == ["host", "host", "host"]


# ------------------------------------------------------------------ the direct call's shortcuts


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@pytest.mark.parametrize(
    ("cell", "options"),
    [
        ("lstm", {}),
        ("lstm", {"proj_size": 3}),
        ("gru", {}),
        ("lstm", {"recurrent_batch_norm": True, "max_steps": 4}),
        ("rnn", {"bias": False}),
    ],
)
@pytest.mark.parametrize("training", [False, True])
def test_host_results_are_fresh(cell, options, training):
    """host.FRESH_OUTPUTS (the direct call skips its aliasing check on it): every result of
    host.forward is a tensor of its own, no view, sharing storage with no input and no other
    result (batch statistics in training included)."""
    from fusedrnn import functional
    from fusedrnn.backends import host

    assert host.FRESH_OUTPUTS
    layer, x = _layer_and_input(cell, **options)
    layer.train(training)
    captured = []
    real = host.forward

    def spy(inputs):
        outputs, saved = real(inputs)
        captured.append((inputs, outputs))
        return outputs, saved

    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(host, "forward", spy)
        functional.rnn(
            x,
            *_zero_state(layer, x),
            layer._layer_params(),
            layer.options(),
            training=training,
            backend="host",
        )
    assert captured
    for inputs, outputs in captured:
        results = [r for r in vars(outputs).values() if isinstance(r, torch.Tensor)]
        inputs_at = {
            _storage(t) for t in vars(inputs).values() if isinstance(t, torch.Tensor) and t.numel()
        }
        seen: set[int] = set()
        for r in results:
            assert not r._is_view()
            assert _storage(r) not in inputs_at
            assert _storage(r) not in seen
            seen.add(_storage(r))


def _zero_state(layer, x):
    h0 = torch.zeros(1, x.shape[1], layer.proj_size or layer.hidden_size)
    c0 = torch.zeros(1, x.shape[1], layer.hidden_size) if layer.mode == "LSTM" else None
    return h0, c0


def test_the_direct_call_unaliases_a_backend_without_fresh_outputs(monkeypatch):
    """A backend that does not claim FRESH_OUTPUTS gets the op's aliasing rule on the direct
    path too: a result that is an input is copied, a view is detached from its base."""
    from fusedrnn.backends import host

    real = host.forward

    def aliasing(inputs):
        outputs, saved = real(inputs)
        outputs.h_n = inputs.h0  # an input as a result
        outputs.c_n = outputs.output[-1]  # a view of another result
        return outputs, saved

    monkeypatch.setattr(host, "forward", aliasing)
    monkeypatch.setattr(host, "FRESH_OUTPUTS", False)
    layer, x = _layer_and_input()
    h0, c0 = torch.randn(1, 3, 7), torch.randn(1, 3, 7)
    with torch.no_grad():
        out, (h_n, c_n) = layer(x, (h0, c0))
    assert _storage(h_n) != _storage(h0)
    torch.testing.assert_close(h_n, h0, rtol=0, atol=0)
    assert not c_n._is_view() or c_n._base is not out
    torch.testing.assert_close(c_n[0], out[-1], rtol=0, atol=0)
    c_n += 1  # in place, as torch.nn allows: a detached view does not refuse it


def test_no_seed_reads_zero():
    """functional.rnn with seed=None and no mask drawn passes no seed tensor; the results are
    those of seed 0 (inference, and training without a mask), eager and through the op."""
    from fusedrnn import functional

    layer, x = _layer_and_input("lstm", zoneout_cell=0.5)
    h0, c0 = _zero_state(layer, x)
    args = (x, h0, c0, layer._layer_params(), layer.options())
    with torch.no_grad():
        for training in (False,):
            none = functional.rnn(*args, training=training, backend="host")
            zero = functional.rnn(*args, training=training, backend="host", seed=0)
            for a, b in zip(none, zero):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    plain, x = _layer_and_input("gru")
    h0, _ = _zero_state(plain, x)
    args = (x, h0, None, plain._layer_params(), plain.options())
    none = functional.rnn(*args, training=True, backend="host")  # grad: through the op
    zero = functional.rnn(*args, training=True, backend="host", seed=0)
    for a, b in zip(none, zero):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_backend_modules_are_loaded_once_and_failures_retried(monkeypatch):
    """backends.load remembers an imported module (a call's dispatch loads two) but not a
    failed import: the next call tries again."""
    import importlib

    from fusedrnn import backends

    assert backends.load("host") is importlib.import_module("fusedrnn.backends.host")
    monkeypatch.setitem(backends.RECURRENCE_BACKENDS, "missing", "fusedrnn.backends._missing")
    for _ in range(2):
        with pytest.raises(ImportError):
            backends.load("missing")
    assert "missing" not in backends._loaded


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("direct", [True, False])
def test_activation_checkpointing(monkeypatch, direct, use_reentrant):
    """torch.utils.checkpoint recomputes the layer in the backward (saved-tensor hooks, or a
    reentrant backward): the same masks from the restored RNG state, so the gradients equal
    those of the plain call, through the Function and through the op."""
    from torch.utils.checkpoint import checkpoint

    monkeypatch.setattr(recurrence_op, "DIRECT_TRAINING", direct)
    layer, x = _layer_and_input(
        "lstm", num_layers=2, zoneout_cell=0.3, recurrent_dropout=0.2, weight_drop=0.2
    )
    layer.train()
    results = []
    for checkpointed in (True, False):
        leaf = x.clone().requires_grad_()
        torch.manual_seed(1)
        if checkpointed:
            out = checkpoint(lambda t: layer(t)[0], leaf, use_reentrant=use_reentrant)
        else:
            out = layer(leaf)[0]
        layer.zero_grad(set_to_none=True)
        out.sin().sum().backward()  # (reentrant checkpointing refuses autograd.grad)
        results.append([out.detach(), leaf.grad, *(p.grad for p in layer.parameters())])
    for index, (a, b) in enumerate(zip(*results)):
        if direct or not use_reentrant:
            assert torch.equal(a, b), index
        else:  # a reentrant checkpoint's first forward runs under no_grad: the host's inference
            # path, whose input projection is its own GEMM, the op's training call oneDNN's
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=str(index))
