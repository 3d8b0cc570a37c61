"""Shared test helpers: the numerics rule of docs/design.md §3.3 and module runners.

Numerics rule (docs/design.md §3.3): ground truth is float64. A result in dtype D
passes when, for every named tensor (outputs, final states, batch statistics, every gradient),
its worst error against the truth is at most ``2 x`` the worst error of the baseline in D --
PyTorch's own implementation (torch.nn / cuDNN), or the reference backend where torch.nn has
no equivalent -- plus ``FLOOR[D]`` times max(1, max |truth|). :func:`assert_by_rule`
is the one implementation of that rule; no tolerance depends on the CPU's instruction set.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fusedrnn import dispatch

# Floor of the rule, relative to max(1, max |truth|) of each tensor: a few units in the last
# place of D, so that a baseline which happens to be (nearly) exact does not demand
# bit-exactness. (Not below 1: a tensor of small values computed from O(1) intermediates
# carries O(1) rounding.) float64's is tiny: float64 results agree with the truth to ~1e-11.
FLOOR = {
    torch.float64: 1e-11,
    torch.float32: 8 * torch.finfo(torch.float32).eps,  # ~9.5e-7
    torch.float16: 2 * torch.finfo(torch.float16).eps,  # ~2.0e-3
    torch.bfloat16: 1 * torch.finfo(torch.bfloat16).eps,  # ~7.8e-3
}


# Closed-form checks in float64 (a formula evaluated by the test, not the 2x rule).
FLOAT64_TOLERANCE = 1e-10


def max_error(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None and b is None:
        return 0.0
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def recurrence_backends_on_cpu() -> list[str]:
    """Recurrence backends that run on this CPU in a reasonable time (triton, which runs
    under the interpreter, has its own tests with small shapes)."""
    available = dispatch.available_backends()
    return [name for name in ("reference", "host") if available.get(name, "absent") is None]


def _error(got: torch.Tensor, truth: torch.Tensor) -> tuple[float, int]:
    """(max |got - truth| over the elements where the truth is finite, flat index of it)."""
    diff = (got.double() - truth.double()).abs().flatten()
    diff = torch.where(torch.isfinite(truth.flatten()), diff, torch.zeros_like(diff))
    if not diff.numel():
        return 0.0, 0
    index = int(diff.argmax())
    return diff[index].item(), index


def rule_errors(
    results: Mapping[str, torch.Tensor | None],
    truth: Mapping[str, torch.Tensor | None],
    baseline: Mapping[str, torch.Tensor | None],
    dtype: torch.dtype,
) -> dict[str, tuple[float, float, float]]:
    """{name: (error, baseline error, bound)} of every tensor of ``truth``; checks presence,
    shape, dtype and that ``results`` is non-finite exactly where the truth is (an unwritten,
    NaN-poisoned element fails here)."""
    assert set(results) == set(truth), (sorted(results), sorted(truth))
    errors = {}
    for name, want in truth.items():
        got = results[name]
        if want is None:
            assert got is None or got.numel() == 0, f"{name}: expected no tensor"
            continue
        assert got is not None, f"{name} missing"
        assert got.shape == want.shape, (name, tuple(got.shape), tuple(want.shape))
        base = baseline[name]
        # The baseline fixes the result's dtype (batch statistics are in the accumulate dtype).
        assert got.dtype == (dtype if base is None else base.dtype), (name, got.dtype, dtype)
        bad = torch.isfinite(got) != torch.isfinite(want)
        if bad.any():
            index = tuple(int(i) for i in bad.nonzero()[0])
            raise AssertionError(
                f"{name}: {int(bad.sum())} element(s) finite in one of (result, truth) only "
                f"(unwritten?), first at {index}: {got[index].item()} vs {want[index].item()}"
            )
        base_error = 0.0
        if base is not None and base.numel():
            # Where the baseline overflowed (half precision), its finite elements count.
            finite = torch.isfinite(base)
            base_error = _error(torch.where(finite, base, want.to(base.dtype)), want)[0]
        finite_truth = want.double()[torch.isfinite(want)]
        scale = max(1.0, finite_truth.abs().max().item()) if finite_truth.numel() else 1.0
        error = _error(got, want)[0]
        errors[name] = (error, base_error, 2 * base_error + FLOOR[dtype] * scale)
    return errors


def assert_by_rule(
    results: Mapping[str, torch.Tensor | None],
    truth: Mapping[str, torch.Tensor | None],
    baseline: Mapping[str, torch.Tensor | None],
    dtype: torch.dtype,
    what: str = "",
) -> None:
    """The 2x rule on every named tensor: ``results`` (in ``dtype``) against the float64
    ``truth``, bound ``2 x error(baseline) + FLOOR[dtype] x max(1, max |truth|)`` per
    tensor. On failure names the tensor whose error exceeds its bound by the largest factor
    and its worst element."""
    errors = rule_errors(results, truth, baseline, dtype)
    failing = {n: e for n, e in errors.items() if e[0] > e[2]}
    if not failing:
        return
    name = max(failing, key=lambda n: failing[n][0] / max(failing[n][2], 1e-300))
    error, base_error, bound = failing[name]
    index = _error(results[name], truth[name])[1]
    position = tuple(int(i) for i in torch.unravel_index(torch.tensor(index), truth[name].shape))
    got = results[name].flatten()[index].item()
    want = truth[name].flatten()[index].item()
    others = ", ".join(sorted(failing)) if len(failing) > 1 else "none"
    raise AssertionError(
        f"{what}: {name}: error {error:.3e} > 2 x baseline's {base_error:.3e} + floor "
        f"= {bound:.3e} (worst at {position}: {got!r} vs truth {want!r}); "
        f"also failing: {others}"
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
