"""Shared test helpers: the numerics rule of docs/design.md §3.3 and module runners.

Numerics rule: ground truth is float64. A fusedrnn result in dtype D passes when its worst
error against the truth is at most ``2 x`` the worst error of PyTorch's own implementation in
D, plus a small floor relative to the magnitude of the truth.
"""

from __future__ import annotations

import torch

from fusedrnn import dispatch

FLOAT64_TOLERANCE = 1e-10


def recurrence_backends_on_cpu() -> list[str]:
    """Recurrence backends that run on this CPU in a reasonable time (triton, which runs
    under the interpreter, has its own tests with small shapes)."""
    available = dispatch.available_backends()
    return [name for name in ("reference", "host") if available.get(name, "absent") is None]


def max_error(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None and b is None:
        return 0.0
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close_by_rule(
    name: str,
    ours: torch.Tensor,
    torch_result: torch.Tensor,
    truth: torch.Tensor,
    floor: float = 1e-6,
) -> None:
    """The 2x rule: error(ours) <= 2 * error(torch in the same dtype) + floor * scale."""
    scale = max(1.0, truth.double().abs().max().item()) if truth.numel() else 1.0
    ours_err = max_error(ours, truth)
    torch_err = max_error(torch_result, truth)
    bound = 2 * torch_err + floor * scale
    assert ours_err <= bound, (
        f"{name}: error {ours_err:.3e} > 2 x torch's {torch_err:.3e} + floor ({bound:.3e})"
    )


def run_and_grad(module, x, hx, weights_out: list[torch.Tensor]):
    """Forward, then backward of a fixed random projection of every output.

    ``x``/``hx`` are leaves (or PackedSequence over a leaf); returns the flat list
    [output, h_n, (c_n), grad x, grad h0, (grad c0), grads of every parameter by name].
    """
    from torch.nn.utils.rnn import PackedSequence

    out, hidden = module(x, hx)
    out_tensor = out.data if isinstance(out, PackedSequence) else out
    states = list(hidden) if isinstance(hidden, tuple) else [hidden]
    results = [out_tensor, *states]
    loss = sum((r * w.to(r.dtype)).sum() for r, w in zip(results, weights_out))
    leaves = [x.data if isinstance(x, PackedSequence) else x]
    leaves += list(hx) if isinstance(hx, tuple) else ([hx] if hx is not None else [])
    params = [p for _, p in module.named_parameters()]
    grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)
    names = ["output", "h_n", "c_n"][: len(results)]
    names += ["grad_input", "grad_h0", "grad_c0"][: len(leaves)]
    names += [f"grad_{n}" for n, _ in module.named_parameters()]
    return dict(zip(names, [t.detach() if t is not None else None for t in results + list(grads)]))
