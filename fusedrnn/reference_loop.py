"""The recurrence in plain PyTorch: the oracle every kernel is checked against.

This file is written to be read, not to be fast. It implements the recurrence contract of
``fusedrnn/backends/base.py`` for every cell and regulariser with ordinary differentiable
torch ops, one time step at a time, so autograd gives its backward. The equations
(docs/design.md §3.1; ``W_hh`` rows in torch's gate order):

LSTM (gates i, f, g, o)::

    a     = W_hh (m_h * h_{t-1})            m_h: variational recurrent-dropout mask
                                            (W_hh * m_W in training with weight drop, below)
    gates = xg_t + N_hh(a) + b_hh           N: identity, recurrent BN or layer norm
    c~    = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h~    = sigmoid(o) * tanh(N_c(c~))      then h~ = W_hr h~ with a projection
    c_t   = d_c * c_{t-1} + (1 - d_c) * c~  zoneout: d ~ Bernoulli(p) in training, d = p in eval
    h_t   = d_h * h_{t-1} + (1 - d_h) * h~

GRU (gates r, z, n)::

    a = N_hh(W_hh (m_h * h_{t-1})) + b_hh   (so b_hn stays inside r * (...))
    r = sigmoid(xr + a_r);  z = sigmoid(xz + a_z);  n = tanh(xn + r * a_n)
    h~ = (1 - z) * n + z * h_{t-1};         h_t = zoneout(h_{t-1}, h~)

RNN: ``h~ = tanh|relu(xg_t + N_hh(W_hh (m_h * h_{t-1})) + b_hh)``, ``h_t = zoneout(h_{t-1}, h~)``.

Weight drop (DropConnect, training only): every step uses ``W_hh * m_W`` with one keep-scaled
mask ``m_W`` [G*H, P] per call, layer and direction (0 where dropped, else 1 / (1 - p)); in
evaluation ``W_hh`` itself.

Rows whose sequence has ended (``t >= len_b``) keep their state and output zeros. In reverse
mode step t runs from T-1 down to 0, so a row of length L starts at t = L-1 from its initial
state. Recurrent BN uses statistics over the active rows of step t (training) or the running
buffers of step ``min(t, S-1)`` (eval); layer norm uses the statistics of each row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import philox
from .backends.base import NORM_EPS, RecurrenceInputs, RecurrenceOutputs, accumulate_dtype

__all__ = [
    "active_rows",
    "masks",
    "normalize",
    "recurrence",
    "variational_mask",
    "weight_drop_mask",
]


def active_rows(lengths: torch.Tensor | None, steps: int, batch: int, device) -> torch.Tensor:
    """[T, B] bool: row b is active at time index t iff t < len_b."""
    if lengths is None:
        return torch.ones(steps, batch, dtype=torch.bool, device=device)
    t = torch.arange(steps, device=device)[:, None]
    return t < lengths.to(device)[None, :]


def variational_mask(
    seed: int,
    stream: int,
    layer: int,
    direction: int,
    batch: int,
    units: int,
    p: float,
    dtype: torch.dtype,
    device,
) -> torch.Tensor:
    """[B, units] keep-scaled dropout mask shared by all time steps: 0 where the uniform
    number is < p, else 1 / (1 - p)."""
    uniform = philox.uniform_mask(seed, stream, layer, direction, None, batch, units, device)
    return (uniform >= p).to(dtype) / (1.0 - p)


def weight_drop_mask(
    seed: int | torch.Tensor,
    layer: int,
    direction: int,
    rows: int,
    cols: int,
    p: float,
    dtype: torch.dtype,
    device,
) -> torch.Tensor:
    """[rows, cols] keep-scaled DropConnect mask of W_hh (philox.py's weight-drop draw): 0 where
    the uniform number is < p, else 1 / (1 - p)."""
    uniform = philox.weight_drop_uniform(seed, layer, direction, rows, cols, device)
    return (uniform >= p).to(dtype) / (1.0 - p)


def masks(inputs: RecurrenceInputs) -> dict[str, torch.Tensor | float | None]:
    """The recurrence's masks, in the dtype of ``xg``.

    ``m_h`` [B, P] keep-scaled variational dropout mask (None when off or in eval);
    ``d_c`` [T, B, H] and ``d_h`` [T, B, P] zoneout "keep the previous value" weights:
    0/1 draws in training, the constant p in eval, None when off.
    """
    cfg = inputs.config
    steps, batch, _ = inputs.xg.shape
    dtype, device = inputs.xg.dtype, inputs.xg.device
    out: dict[str, torch.Tensor | float | None] = {"m_h": None, "d_c": None, "d_h": None}

    def uniform(stream: int, units: int, per_step: bool) -> torch.Tensor:
        return philox.uniform_mask(
            inputs.seed,
            stream,
            inputs.layer,
            inputs.direction,
            steps if per_step else None,
            batch,
            units,
            device,
        )

    if cfg.recurrent_dropout > 0 and inputs.training:
        out["m_h"] = variational_mask(
            inputs.seed,
            philox.STREAM_RECURRENT_DROPOUT,
            inputs.layer,
            inputs.direction,
            batch,
            cfg.out_size,
            cfg.recurrent_dropout,
            dtype,
            device,
        )
    for key, p, stream, units in (
        ("d_c", cfg.zoneout_cell, philox.STREAM_ZONEOUT_CELL, cfg.hidden_size),
        ("d_h", cfg.zoneout_hidden, philox.STREAM_ZONEOUT_HIDDEN, cfg.out_size),
    ):
        if p > 0:
            if inputs.training:
                out[key] = (uniform(stream, units, True) < p).to(dtype)
            else:
                out[key] = p
    return out


def normalize(
    value: torch.Tensor,
    kind: str,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    active: torch.Tensor,
    training: bool,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Recurrent BN or layer norm of ``value`` [B, N] at one step.

    Returns (normalised value, batch mean, batch variance); the statistics are returned only
    for BN in training (biased variance over the ``active`` rows [B] bool).
    """
    if kind == "layer":
        mean = value.mean(dim=1, keepdim=True)
        var = value.var(dim=1, unbiased=False, keepdim=True)
        stats = (None, None)
    elif training:
        weight_rows = active.to(value.dtype)[:, None]
        count = weight_rows.sum().clamp(min=1.0)
        mean = (value * weight_rows).sum(dim=0) / count
        var = (((value - mean) * weight_rows) ** 2).sum(dim=0) / count
        stats = (mean, var)
    else:
        mean, var = running_mean, running_var
        stats = (None, None)
    out = (value - mean) * torch.rsqrt(var + NORM_EPS) * weight
    if bias is not None:
        out = out + bias
    return out, stats[0], stats[1]


def recurrence(inputs: RecurrenceInputs) -> RecurrenceOutputs:
    """Run the whole recurrence with differentiable torch ops."""
    cfg = inputs.config
    steps, batch, _ = inputs.xg.shape
    device = inputs.xg.device
    active = active_rows(inputs.lengths, steps, batch, device)
    m = masks(inputs)
    norm = cfg.norm
    stat_index_limit = 0
    if norm == "batch" and not inputs.training:
        stat_index_limit = inputs.running_mean_hh.shape[0] - 1

    def running(buffer: torch.Tensor | None, t: int) -> torch.Tensor | None:
        return None if buffer is None else buffer[min(t, stat_index_limit)]

    w_hh = inputs.w_hh
    if cfg.uses_weight_drop(inputs.training):
        w_hh = w_hh * weight_drop_mask(
            inputs.seed,
            inputs.layer,
            inputs.direction,
            cfg.gate_size,
            cfg.out_size,
            cfg.weight_drop,
            w_hh.dtype,
            device,
        )
    h, c = inputs.h0, inputs.c0
    outputs: list[torch.Tensor | None] = [None] * steps
    stats: dict[str, list] = {"mean_hh": [None] * steps, "var_hh": [None] * steps}
    stats.update({"mean_c": [None] * steps, "var_c": [None] * steps})
    time_order = range(steps - 1, -1, -1) if inputs.reverse else range(steps)
    for t in time_order:
        active_t = active[t]
        h_in = h if m["m_h"] is None else h * m["m_h"]
        a = h_in @ w_hh.t()
        if norm != "none":
            a, stats["mean_hh"][t], stats["var_hh"][t] = normalize(
                a,
                norm,
                inputs.norm_weight_hh,
                None,
                active_t,
                inputs.training,
                running(inputs.running_mean_hh, t),
                running(inputs.running_var_hh, t),
            )
        if inputs.b_hh is not None:
            a = a + inputs.b_hh
        x_t = inputs.xg[t]

        if cfg.cell == "lstm":
            i, f, g, o = (x_t + a).chunk(4, dim=1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            c_out = c_new
            if norm != "none":
                c_out, stats["mean_c"][t], stats["var_c"][t] = normalize(
                    c_new,
                    norm,
                    inputs.norm_weight_c,
                    inputs.norm_bias_c,
                    active_t,
                    inputs.training,
                    running(inputs.running_mean_c, t),
                    running(inputs.running_var_c, t),
                )
            h_new = torch.sigmoid(o) * torch.tanh(c_out)
            if inputs.w_hr is not None:
                h_new = h_new @ inputs.w_hr.t()
            if m["d_c"] is not None:
                d_c = m["d_c"] if isinstance(m["d_c"], float) else m["d_c"][t]
                c_new = d_c * c + (1 - d_c) * c_new
        elif cfg.cell == "gru":
            x_r, x_z, x_n = x_t.chunk(3, dim=1)
            a_r, a_z, a_n = a.chunk(3, dim=1)
            r = torch.sigmoid(x_r + a_r)
            z = torch.sigmoid(x_z + a_z)
            n = torch.tanh(x_n + r * a_n)
            h_new = (1 - z) * n + z * h
        elif cfg.cell == "rnn_tanh":
            h_new = torch.tanh(x_t + a)
        else:
            h_new = F.relu(x_t + a)

        if m["d_h"] is not None:
            d_h = m["d_h"] if isinstance(m["d_h"], float) else m["d_h"][t]
            h_new = d_h * h + (1 - d_h) * h_new

        keep = active_t[:, None]
        h = torch.where(keep, h_new, h)
        if c is not None:
            c = torch.where(keep, c_new, c)
        outputs[t] = torch.where(keep, h_new, torch.zeros_like(h_new))

    output = torch.stack(outputs) if steps > 0 else inputs.xg.new_zeros(0, batch, cfg.out_size)
    result = RecurrenceOutputs(output=output, h_n=h, c_n=c)
    if norm == "batch" and inputs.training and steps > 0:
        acc = accumulate_dtype(inputs.xg.dtype)
        result.batch_mean_hh = torch.stack(stats["mean_hh"]).detach().to(acc)
        result.batch_var_hh = torch.stack(stats["var_hh"]).detach().to(acc)
        if cfg.cell == "lstm":
            result.batch_mean_c = torch.stack(stats["mean_c"]).detach().to(acc)
            result.batch_var_c = torch.stack(stats["var_c"]).detach().to(acc)
    return result
