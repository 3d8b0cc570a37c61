"""The ``reference`` backend: fusedrnn/reference.py's plain-torch loop on any device.

Backward recomputes the forward under autograd and differentiates it, so the oracle's
gradients come from autograd itself rather than from hand-written formulas.
"""

from __future__ import annotations

import torch

from .. import reference
from .base import RecurrenceInputs, RecurrenceOutputs

NAME = "reference"


def availability() -> str | None:
    return None


def unsupported_reason(inputs: RecurrenceInputs) -> str | None:
    return None


def forward(inputs: RecurrenceInputs) -> tuple[RecurrenceOutputs, tuple]:
    with torch.no_grad():
        return reference.recurrence(inputs), ()


def backward(
    inputs: RecurrenceInputs,
    saved: tuple,
    grad_output: torch.Tensor,
    grad_h_n: torch.Tensor,
    grad_c_n: torch.Tensor | None,
) -> dict[str, torch.Tensor | None]:
    fields = [f for f in RecurrenceInputs.GRAD_FIELDS if getattr(inputs, f) is not None]
    leaves = {f: getattr(inputs, f).detach().requires_grad_(True) for f in fields}
    with torch.enable_grad():
        out = reference.recurrence(inputs.replace(**leaves))
        roots = [out.output, out.h_n]
        grads_out = [grad_output, grad_h_n]
        if out.c_n is not None and grad_c_n is not None:
            roots.append(out.c_n)
            grads_out.append(grad_c_n)
        grads = torch.autograd.grad(
            roots, [leaves[f] for f in fields], grads_out, allow_unused=True
        )
    result: dict[str, torch.Tensor | None] = dict.fromkeys(RecurrenceInputs.GRAD_FIELDS)
    for f, g in zip(fields, grads):
        result[f] = torch.zeros_like(leaves[f]) if g is None else g
    return result
