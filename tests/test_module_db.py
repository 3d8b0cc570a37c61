"""PyTorch's own samples for nn.LSTM / nn.GRU / nn.RNN (``module_db`` of
torch.testing._internal.common_modules: 80 constructor x input combinations: layers,
bidirectional, batch_first, bias, proj_size, unbatched inputs, given and default states) run on
fusedrnn's ``host`` backend in float64, against torch.nn on the same weights, by the numerics
rule: outputs, final states and every gradient (inputs, states, every parameter)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_by_rule
from torch import nn

import fusedrnn

_FLAGS_FROZEN_BEFORE = torch.backends.flags_frozen()
common_modules = pytest.importorskip(
    "torch.testing._internal.common_modules",
    reason="torch.testing._internal needs expecttest (scripts/setup.sh installs it)",
)
if not _FLAGS_FROZEN_BEFORE:
    # Importing torch's test utilities calls torch.backends.disable_global_flags() for the
    # whole process (at collection), after which every other test file's plain assignment of
    # a torch.backends flag (the TF32 fixtures of the Triton and CUDA tests) raises.
    # torch.backends' module object wraps its namespace: reset the flag where the functions
    # that read it look it up.
    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    assert not torch.backends.flags_frozen()

HOST_REASON = fusedrnn.available_backends().get("host")
pytestmark = pytest.mark.skipif(HOST_REASON is not None, reason=str(HOST_REASON))

RNN_CLASSES = (nn.LSTM, nn.GRU, nn.RNN)
FUSED = {nn.LSTM: fusedrnn.LSTM, nn.GRU: fusedrnn.GRU, nn.RNN: fusedrnn.RNN}


def _samples() -> list:
    params = []
    for info in common_modules.module_db:
        if info.module_cls not in RNN_CLASSES:
            continue
        samples = info.module_inputs_func(
            info, device="cpu", dtype=torch.float64, requires_grad=True, training=True
        )
        for index, sample in enumerate(samples):
            kwargs = sample.constructor_input.kwargs
            name = f"{info.module_cls.__name__}-{index}-proj{kwargs.get('proj_size', 0)}"
            params.append(pytest.param(info.module_cls, sample, id=name))
    return params


SAMPLES = _samples()


def test_module_db_has_the_expected_samples():
    """The count the issue names (so a torch upgrade that changes the samples is noticed)."""
    assert len(SAMPLES) == 80
    with_proj = [p for p in SAMPLES if p.values[1].constructor_input.kwargs.get("proj_size")]
    assert len(with_proj) == 16


def _leaves(args: tuple) -> tuple[tuple, list[torch.Tensor]]:
    """Fresh leaf copies of the forward arguments (tensors and tuples of tensors)."""
    leaves: list[torch.Tensor] = []

    def copy(value):
        if isinstance(value, torch.Tensor):
            leaf = value.detach().clone().requires_grad_(value.requires_grad)
            leaves.append(leaf)
            return leaf
        if isinstance(value, tuple):
            return tuple(copy(v) for v in value)
        return value

    return tuple(copy(a) for a in args), leaves


def _run(module: nn.Module, args: tuple) -> dict[str, torch.Tensor]:
    """Output, final states and the gradient of a fixed random projection of them with
    respect to every input leaf and parameter."""
    inputs, leaves = _leaves(args)
    out, hidden = module(*inputs)
    states = list(hidden) if isinstance(hidden, tuple) else [hidden]
    results = {"output": out, "h_n": states[0]}
    if len(states) == 2:
        results["c_n"] = states[1]
    gen = torch.Generator().manual_seed(5)
    loss = sum(
        (r * torch.randn(r.shape, generator=gen, dtype=r.dtype)).sum() for r in results.values()
    )
    params = [p for _, p in module.named_parameters()]
    wrt = [leaf for leaf in leaves if leaf.requires_grad] + params
    grads = torch.autograd.grad(loss, wrt)
    named = {k: v.detach() for k, v in results.items()}
    named.update({f"grad_input{i}": g for i, g in enumerate(grads[: len(wrt) - len(params)])})
    named.update(
        {f"grad_{n}": g for (n, _), g in zip(module.named_parameters(), grads[-len(params) :])}
    )
    return named


@pytest.mark.parametrize(("torch_cls", "sample"), SAMPLES)
def test_module_db_sample_on_host_float64(torch_cls, sample):
    kwargs = sample.constructor_input.kwargs
    torch.manual_seed(0)
    theirs = torch_cls(*sample.constructor_input.args, **kwargs).double()
    ours = FUSED[torch_cls](*sample.constructor_input.args, **kwargs, backend="host").double()
    ours.load_state_dict(theirs.state_dict())
    args = sample.forward_input.args
    truth = _run(theirs, args)
    got = _run(ours, args)
    assert ours.last_backend == "host"
    assert got.keys() == truth.keys()
    # float64: torch.nn is its own truth (baseline error 0), so the bound is the rule's floor.
    assert_by_rule(got, truth, truth, torch.float64, what=f"host on {torch_cls.__name__} {kwargs}")
