"""Normalised recurrences in float32 by the numerics rule, at the level of the model (issue 10).

A 2-layer bidirectional LSTM/GRU with recurrent batch norm or layer norm over a packed batch of
B = 3 with lengths [6, 4, 1]: batch norm then runs over 3, 2 and 1 active rows, a variance near
eps, where 1/sqrt(var + eps) amplifies every rounding (the input projection, W_hh h, the cell)
~300x. The float32 model on each backend is held to the float64 reference model with the same
parameters and masks by helpers.assert_by_rule: every output, final state and parameter
gradient (bias_ih/bias_hh/weight_hh of layer 0 included). The baseline is the reference backend
in float32 (torch.nn has no normalised recurrence), its error taken over
helpers.sample_baseline's instances; the reference backend itself is that baseline, so it is
not a subject here.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_by_rule, sample_baseline
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import dispatch

LENGTHS = [6, 4, 1]
INPUT_SIZE = 5
# Triton runs under the interpreter here: a smaller hidden size keeps it affordable.
HIDDEN = {"host": 7, "triton": 3}
NORMS = {
    "batch_norm": dict(recurrent_batch_norm=True, max_steps=max(LENGTHS)),
    "layer_norm": dict(layer_norm=True),
}
CELLS = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU}


def _backend_or_skip(backend: str) -> None:
    reason = dispatch.available_backends().get(backend, "absent")
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


def _model(cell: str, norm: str, hidden: int, seed: int) -> torch.nn.Module:
    """A float32 model whose norm weights are spread away from 1 (so every term matters)."""
    torch.manual_seed(seed)
    model = CELLS[cell](
        INPUT_SIZE,
        hidden,
        num_layers=2,
        bidirectional=True,
        backend="reference",
        **NORMS[norm],
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(("bn_", "ln_")):
                parameter.add_(0.5 * torch.rand(parameter.shape))
    return model


def _run(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs, final states and every gradient of a fixed random projection of the outputs."""
    x = x.detach().requires_grad_()
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)
    output, hidden = model(packed)
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    results = dict(zip(["output", "h_n", "c_n"], [output.data, *states]))
    gen = torch.Generator().manual_seed(3)
    loss = sum(
        (r * torch.randn(r.shape, generator=gen, dtype=torch.float64).to(r.dtype)).sum()
        for r in results.values()
    )
    parameters = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, [x, *parameters.values()])
    results = {name: r.detach() for name, r in results.items()}
    results["grad_input"] = grads[0]
    results.update({f"grad_{name}": g for name, g in zip(parameters, grads[1:])})
    return results


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", ["host", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_bidirectional_packed_few_rows_float32(backend, cell, norm, seed):
    _backend_or_skip(backend)
    model = _model(cell, norm, HIDDEN[backend], seed)
    x = torch.randn(
        max(LENGTHS), len(LENGTHS), INPUT_SIZE, generator=torch.Generator().manual_seed(seed)
    )

    def solve(perturb):
        problem = copy.deepcopy(model)
        with torch.no_grad():
            for parameter in problem.parameters():
                parameter.copy_(perturb(parameter))
        problem_x = perturb(x)
        truth = _run(copy.deepcopy(problem).double(), problem_x.double())
        return _run(problem, problem_x), truth

    baseline = sample_baseline(solve)
    subject = copy.deepcopy(model)
    subject.backend = backend
    assert_by_rule(
        _run(subject, x), baseline[0][1], baseline, torch.float32, what=f"{backend} {cell} {norm}"
    )
