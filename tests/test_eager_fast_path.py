"""The direct call of the recurrence op's implementation in plain eager inference
(``recurrence_op._calls_impl_directly``): taken only where nothing but the op's own CPU kernel
could see the call, and then the same results as through the op."""

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


def test_plain_inference_skips_the_dispatcher_and_training_does_not(op_calls):
    layer, x = _layer_and_input()
    with torch.no_grad():
        layer(x)
    assert op_calls == []
    layer(x)  # the parameters require grad: autograd must record the op
    assert op_calls == ["host"]


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
        monkeypatch.setattr(recurrence_op, "_calls_impl_directly", lambda *args: False)
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
