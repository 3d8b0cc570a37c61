"""Choosing a backend (docs/design.md §4).

Names:

* ``"torch"``: torch's own RNN kernels for the whole layer stack (cuDNN on a GPU, ATen on
  the CPU). It can only run plain ``torch.nn`` configurations: no fusedrnn-only option active.
* recurrence backends (``fusedrnn/backends/``): ``"reference"`` (the plain-torch loop, any
  device), ``"triton"``, ``"cuda"``, ``"host"``; each computes the time loop, and
  ``functional.py`` does the rest of the layer around it.
* ``"auto"``: the first entry of :data:`AUTO_ORDER` for the device that can run the call.

An explicitly named backend that cannot run a configuration raises with the reason; ``auto``
never silently lands on the slow reference loop: on every device it warns, once per reason,
naming why no fused backend could run the call. A module records the backend that ran its
last forward in ``last_backend`` (also in its repr).
"""

from __future__ import annotations

import warnings

import torch

from . import backends
from .backends.base import RecurrenceInputs

TORCH = "torch"
AUTO = "auto"

# Preference of ``auto`` per device type, fastest first. "torch" is taken only when the call
# uses no fusedrnn-only option (it would not compute the same function otherwise).
# On the CPU, torch's native LSTM/GRU (oneDNN) is the fastest plain path; on a GPU cuDNN stays
# first for plain configurations until the fused kernels are measured faster there
# (bench/results/ holds the evidence that would reorder this).
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": (TORCH, "host", "reference"),
    "cuda": (TORCH, "cuda", "triton", "reference"),
}
DEFAULT_ORDER: tuple[str, ...] = ("reference",)

# (device type, reasons) of the reference fallbacks already warned about.
_warned_fallback: set[tuple[str, str]] = set()


def known_backends() -> tuple[str, ...]:
    return (AUTO, TORCH, *backends.RECURRENCE_BACKENDS)


def check_backend_name(name: str) -> None:
    """Raise ValueError for a name that is not a backend."""
    if isinstance(name, str) and (name in (AUTO, TORCH) or name in backends.RECURRENCE_BACKENDS):
        return  # (known_backends() without building its tuple: every forward checks)
    if not isinstance(name, str) or name not in known_backends():
        raise ValueError(
            f"unknown backend {name!r}; expected one of {', '.join(map(repr, known_backends()))}"
        )


def _recurrence_availability(name: str) -> str | None:
    try:
        module = backends.load(name)
    except Exception as exc:  # an optional dependency or the native build is missing
        return f"cannot import fusedrnn.backends.{name}: {type(exc).__name__}: {exc}"
    return module.availability()


def available_backends() -> dict[str, str | None]:
    """Every backend name -> None if it can run in this process, else the reason why not."""
    result: dict[str, str | None] = {TORCH: None}
    for name in backends.RECURRENCE_BACKENDS:
        result[name] = _recurrence_availability(name)
    return result


def _warn_fallback(device_type: str, reasons: str) -> None:
    """Warn, once per device type and reason, that auto fell back to the reference loop."""
    if (device_type, reasons) in _warned_fallback:
        return
    _warned_fallback.add((device_type, reasons))
    warnings.warn(
        f"fusedrnn: no fused backend can run this call on {device_type} ({reasons}); "
        "backend='auto' falls back to the slow 'reference' loop",
        RuntimeWarning,
        stacklevel=5,
    )


def layer_backend(requested: str, device: torch.device, needs_fusedrnn: bool) -> str:
    """Decide between torch's whole-layer path and the recurrence path.

    Returns ``"torch"`` or the requested recurrence backend name (``"auto"`` stays
    ``"auto"``; :func:`recurrence_backend` resolves it per layer).
    """
    check_backend_name(requested)
    if requested == TORCH:
        if needs_fusedrnn:
            raise ValueError(
                "backend='torch' runs torch.nn's own kernels, which cannot compute fusedrnn's "
                "options (input_dropout, recurrent_dropout, weight_drop, zoneout, recurrent_batch_norm, "
                "layer_norm, residual); choose another backend or turn those options off"
            )
        return TORCH
    if requested == AUTO and not needs_fusedrnn:
        if TORCH in AUTO_ORDER.get(device.type, DEFAULT_ORDER):
            return TORCH
    return requested


def recurrence_backend(requested: str, inputs: RecurrenceInputs):
    """The backend module that runs ``inputs``: the named one, or auto's first able one."""
    if requested != AUTO:
        reason = _recurrence_availability(requested)
        module = None if reason else backends.load(requested)
        if module is not None:
            reason = module.unsupported_reason(inputs)
        if reason:
            raise RuntimeError(f"fusedrnn backend {requested!r} cannot run this call: {reason}")
        return module

    device_type = inputs.xg.device.type
    reasons = []
    for name in AUTO_ORDER.get(device_type, DEFAULT_ORDER):
        if name == TORCH or name not in backends.RECURRENCE_BACKENDS:
            continue
        reason = _recurrence_availability(name)
        module = None if reason else backends.load(name)
        if module is not None:
            reason = module.unsupported_reason(inputs)
        if reason is None:
            if name == "reference":
                _warn_fallback(device_type, "; ".join(reasons) or "none is built")
            return module
        reasons.append(f"{name}: {reason}")
    raise RuntimeError("no fusedrnn backend can run this call: " + "; ".join(reasons))
