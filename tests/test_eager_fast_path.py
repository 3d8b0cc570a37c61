"""The direct call of the recurrence op's implementation in plain eager inference
(``recurrence_op._calls_impl_directly``): taken only where nothing but the op's own CPU kernel
could see the call, and then the same results as through the op."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fusedrnn
from fusedrnn import recurrence_op

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
def test_the_direct_call_gives_the_ops_results(monkeypatch, cell, options):
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
            assert torch.equal(a, b)
