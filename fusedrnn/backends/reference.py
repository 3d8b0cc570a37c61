"""The ``reference`` backend: fusedrnn/reference_loop.py's plain-torch loop on any device.

Backward recomputes the forward and differentiates it with ``torch.func.vjp``, so the
oracle's gradients come from autograd itself rather than from hand-written formulas.
"""

from __future__ import annotations

import torch

from .. import reference_loop
from .base import Gradients, OutputGrad, RecurrenceInputs, RecurrenceOutputs

NAME = "reference"


def availability() -> str | None:
    return None


def unsupported_reason(inputs: RecurrenceInputs) -> str | None:
    return None


def saved_like(inputs: RecurrenceInputs) -> tuple[torch.Tensor, ...]:
    return ()  # backward recomputes the forward


def forward(inputs: RecurrenceInputs) -> tuple[RecurrenceOutputs, tuple]:
    with torch.no_grad():
        return reference_loop.recurrence(inputs), ()


def backward(inputs: RecurrenceInputs, saved: tuple, *output_grads: OutputGrad) -> Gradients:
    grad_output, grad_h_n, grad_c_n = output_grads
    # torch.func.vjp rather than torch.autograd.grad: it also differentiates inside a custom
    # op's implementation, where the autograd dispatch keys are excluded.
    fields = [f for f in RecurrenceInputs.GRAD_FIELDS if getattr(inputs, f) is not None]
    with_cell = inputs.c0 is not None and grad_c_n is not None

    def run(*tensors):
        out = reference_loop.recurrence(inputs.replace(**dict(zip(fields, tensors))))
        return (out.output, out.h_n, out.c_n) if with_cell else (out.output, out.h_n)

    with torch.enable_grad():
        _, vjp = torch.func.vjp(run, *[getattr(inputs, f).detach() for f in fields])
        cotangents = (grad_output, grad_h_n, grad_c_n) if with_cell else (grad_output, grad_h_n)
        grads = vjp(cotangents)
    result: dict[str, torch.Tensor | None] = dict.fromkeys(RecurrenceInputs.GRAD_FIELDS)
    result.update(zip(fields, grads))
    return result
