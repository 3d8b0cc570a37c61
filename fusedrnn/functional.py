"""The whole-layer path shared by every backend (DESIGN.md, "Data flow").

For each layer and direction:

1. the variational input-dropout mask ``m_x [B, I]`` on the layer input (Philox, one mask for
   all time steps),
2. the input projection for all steps at once, ``xg = (m_x * x) W_ih^T`` (one GEMM, so the
   BLAS library does the non-recurrent half of the work),
3. its normalisation when asked for (recurrent BN per time step over the active rows, or layer
   norm per row), then ``+ b_ih``,
4. the backend's recurrence (``Recurrence``, an autograd Function over the backend's forward
   and backward); reverse direction is a flag of the recurrence, never a flipped copy,
5. the running-statistics update of recurrent BN (training), the concatenation of the
   directions, ``residual`` and torch's between-layer ``dropout``.

Everything here is differentiable torch; only step 4 differs between backends. Sequences are
time-major ``[T, B, features]`` and padded; ``lengths [B]`` marks each row's true length.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import _VF

from . import dispatch, philox, reference
from .backends.base import (
    BN_MOMENTUM,
    NORM_EPS,
    RecurrenceConfig,
    RecurrenceInputs,
)

__all__ = [
    "LayerParams",
    "RNNOptions",
    "Recurrence",
    "packed_to_padded",
    "padded_to_packed",
    "recurrence",
    "rnn",
    "torch_rnn",
]


@dataclasses.dataclass(frozen=True)
class RNNOptions:
    """Static settings of a layer stack (what a module's constructor fixes)."""

    cell: str  # "lstm" | "gru" | "rnn_tanh" | "rnn_relu"
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    dropout: float = 0.0  # torch's between-layer dropout (not variational)
    bidirectional: bool = False
    proj_size: int = 0
    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    zoneout_cell: float = 0.0
    zoneout_hidden: float = 0.0
    norm: str = "none"  # "none" | "batch" | "layer"
    residual: bool = False

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def recurrence_config(self) -> RecurrenceConfig:
        return RecurrenceConfig(
            cell=self.cell,
            hidden_size=self.hidden_size,
            proj_size=self.proj_size,
            recurrent_dropout=self.recurrent_dropout,
            zoneout_cell=self.zoneout_cell,
            zoneout_hidden=self.zoneout_hidden,
            norm=self.norm,
        )

    def needs_fusedrnn(self, training: bool) -> bool:
        """Whether this call computes something torch.nn's kernels cannot."""
        random = training and (self.input_dropout > 0 or self.recurrent_dropout > 0)
        zoneout = self.zoneout_cell > 0 or self.zoneout_hidden > 0  # eval: the expectation
        return random or zoneout or self.norm != "none" or self.residual

    def uses_random(self, training: bool) -> bool:
        """Whether this call draws Philox masks (and so a seed)."""
        if not training:
            return False
        return (
            self.input_dropout > 0
            or self.recurrent_dropout > 0
            or self.zoneout_cell > 0
            or self.zoneout_hidden > 0
        )


@dataclasses.dataclass
class LayerParams:
    """The tensors of one layer and direction (torch's names in the comments)."""

    w_ih: torch.Tensor  # [G*H, I]  weight_ih_l{k}
    w_hh: torch.Tensor  # [G*H, P]  weight_hh_l{k}
    b_ih: torch.Tensor | None = None  # [G*H]  bias_ih_l{k}
    b_hh: torch.Tensor | None = None  # [G*H]  bias_hh_l{k}
    w_hr: torch.Tensor | None = None  # [P, H]  weight_hr_l{k}
    # recurrent BN / layer norm parameters (fusedrnn's own names in modules.py)
    norm_weight_ih: torch.Tensor | None = None  # [G*H]
    norm_weight_hh: torch.Tensor | None = None  # [G*H]
    norm_weight_c: torch.Tensor | None = None  # [H] (lstm)
    norm_bias_c: torch.Tensor | None = None  # [H] (lstm)
    # recurrent BN running statistics, one row per time step (S = max_steps)
    running_mean_ih: torch.Tensor | None = None  # [S, G*H]
    running_var_ih: torch.Tensor | None = None  # [S, G*H]
    running_mean_hh: torch.Tensor | None = None  # [S, G*H]
    running_var_hh: torch.Tensor | None = None  # [S, G*H]
    running_mean_c: torch.Tensor | None = None  # [S, H]
    running_var_c: torch.Tensor | None = None  # [S, H]


# --------------------------------------------------------------------------------------
# The recurrence as an autograd Function over a backend's forward and backward.
# --------------------------------------------------------------------------------------
_STAT_FIELDS = ("batch_mean_hh", "batch_var_hh", "batch_mean_c", "batch_var_c")


class Recurrence(torch.autograd.Function):
    """``Recurrence.apply(backend, template, *tensors)`` with ``tensors`` in
    ``RecurrenceInputs.GRAD_FIELDS`` order; ``template`` carries the rest of the inputs.

    Returns ``(output, h_n, c_n, batch_mean_hh, batch_var_hh, batch_mean_c, batch_var_c)``;
    the statistics are None unless training with recurrent BN, and never differentiated.
    """

    @staticmethod
    def forward(ctx, backend, template: RecurrenceInputs, *tensors):
        inputs = template.replace(**dict(zip(RecurrenceInputs.GRAD_FIELDS, tensors)))
        outputs, saved = backend.forward(inputs)
        ctx.backend = backend
        ctx.template = template
        ctx.num_inputs = len(tensors)
        ctx.save_for_backward(*tensors, *saved)
        stats = [getattr(outputs, f) for f in _STAT_FIELDS]
        ctx.mark_non_differentiable(*[s for s in stats if s is not None])
        return (outputs.output, outputs.h_n, outputs.c_n, *stats)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, grad_c_n, *unused_stat_grads):
        saved = ctx.saved_tensors
        tensors, extra = saved[: ctx.num_inputs], saved[ctx.num_inputs :]
        inputs = ctx.template.replace(**dict(zip(RecurrenceInputs.GRAD_FIELDS, tensors)))
        if inputs.c0 is not None and grad_c_n is None:
            grad_c_n = torch.zeros_like(inputs.c0)
        grads = ctx.backend.backward(inputs, extra, grad_output, grad_h_n, grad_c_n)
        return (None, None, *[grads[f] for f in RecurrenceInputs.GRAD_FIELDS])


def recurrence(inputs: RecurrenceInputs, backend: str = "auto"):
    """Run one layer-direction's recurrence on ``backend`` with autograd support.

    Returns the ``Recurrence`` outputs tuple (see :class:`Recurrence`).
    """
    module = dispatch.recurrence_backend(backend, inputs)
    tensors = [getattr(inputs, f) for f in RecurrenceInputs.GRAD_FIELDS]
    template = inputs.replace(**dict.fromkeys(RecurrenceInputs.GRAD_FIELDS))
    return Recurrence.apply(module, template, *tensors)


# --------------------------------------------------------------------------------------
# Normalisation of the input projection and running statistics.
# --------------------------------------------------------------------------------------
def _step_stat_index(steps: int, num_buffers: int, device) -> torch.Tensor:
    """Buffer row of each time step: t, or the last row for t >= max_steps."""
    return torch.arange(steps, device=device).clamp(max=num_buffers - 1)


def _normalize_projection(
    raw: torch.Tensor, params: LayerParams, norm: str, active: torch.Tensor, training: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """BN (per step, over active rows) or LN (per row) of ``raw`` [T, B, N], times gamma.

    Returns (normalised, batch mean [T, N], biased batch variance [T, N]); the statistics
    only for BN in training.
    """
    if norm == "layer":
        mean = raw.mean(dim=2, keepdim=True)
        var = raw.var(dim=2, unbiased=False, keepdim=True)
        return (raw - mean) * torch.rsqrt(var + NORM_EPS) * params.norm_weight_ih, None, None
    if training:
        weights = active.to(raw.dtype)[:, :, None]  # [T, B, 1]
        count = weights.sum(dim=1).clamp(min=1.0)  # [T, 1]
        mean = (raw * weights).sum(dim=1) / count  # [T, N]
        var = (((raw - mean[:, None]) * weights) ** 2).sum(dim=1) / count
        normed = (raw - mean[:, None]) * torch.rsqrt(var[:, None] + NORM_EPS)
        return normed * params.norm_weight_ih, mean.detach(), var.detach()
    rows = _step_stat_index(raw.shape[0], params.running_mean_ih.shape[0], raw.device)
    mean = params.running_mean_ih[rows][:, None]
    var = params.running_var_ih[rows][:, None]
    return (raw - mean) * torch.rsqrt(var + NORM_EPS) * params.norm_weight_ih, None, None


@torch.no_grad()
def _update_running(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    batch_mean: torch.Tensor,
    batch_var: torch.Tensor,
    counts: torch.Tensor,
) -> None:
    """Per-step running update, as torch.nn.BatchNorm1d does it for each step's statistics.

    Steps t < max_steps update their own row with momentum ``BN_MOMENTUM`` and the unbiased
    variance; later steps (which reuse the last row) and steps with fewer than two active
    rows (no variance estimate) leave the buffers unchanged.
    """
    used = min(batch_mean.shape[0], running_mean.shape[0])
    n = counts[:used].to(batch_var.dtype)[:, None]
    valid = n >= 2
    unbiased = batch_var[:used] * n / (n - 1).clamp(min=1.0)
    new_mean = torch.lerp(
        running_mean[:used], batch_mean[:used].to(running_mean.dtype), BN_MOMENTUM
    )
    new_var = torch.lerp(running_var[:used], unbiased.to(running_var.dtype), BN_MOMENTUM)
    running_mean[:used] = torch.where(valid, new_mean, running_mean[:used])
    running_var[:used] = torch.where(valid, new_var, running_var[:used])


# --------------------------------------------------------------------------------------
# The layer stack.
# --------------------------------------------------------------------------------------
def _check_lengths(lengths: torch.Tensor, steps: int, batch: int) -> None:
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"lengths must have shape [{batch}], got {list(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if batch > 0:
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1 or high > steps:
            raise ValueError(
                f"lengths must be in [1, {steps}] (the sequence length), got values in "
                f"[{low}, {high}]"
            )


def rnn(
    input: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor | None,
    params: list[LayerParams],
    options: RNNOptions,
    *,
    lengths: torch.Tensor | None = None,
    training: bool = False,
    backend: str = "auto",
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The layer stack on time-major padded input.

    Args:
        input: [T, B, I]; rows past their length are ignored.
        h0: [L*D, B, P] initial hidden states (layer-major, direction-minor, as torch).
        c0: [L*D, B, H] initial cell states (lstm), else None.
        params: L*D ``LayerParams`` in the same order.
        lengths: [B] integer lengths in [1, T], or None for all T.
        seed: Philox key of this call; drawn from torch's default generator when None.

    Returns:
        output [T, B, D*P] (zeros past each row's length), h_n [L*D, B, P], c_n [L*D, B, H].
    """
    steps, batch, _ = input.shape
    num_dirs = options.num_directions
    if len(params) != options.num_layers * num_dirs:
        raise ValueError(f"expected {options.num_layers * num_dirs} LayerParams, got {len(params)}")
    if lengths is not None:
        _check_lengths(lengths, steps, batch)
        lengths = lengths.to(device=input.device, dtype=torch.int64)
    if options.uses_random(training):
        philox.check_offset_limits(steps, batch, max(input.shape[2], options.hidden_size))
        if seed is None:
            seed = philox.draw_seed()
    seed = 0 if seed is None else seed
    if lengths is None:
        active = torch.ones(steps, batch, dtype=torch.bool, device=input.device)
    else:
        active = torch.arange(steps, device=input.device)[:, None] < lengths[None, :]
    counts = active.sum(dim=1)  # active rows per step, for BN running updates
    config = options.recurrence_config()

    layer_input = input
    h_n, c_n = [], []
    for layer in range(options.num_layers):
        outputs = []
        for direction in range(num_dirs):
            index = layer * num_dirs + direction
            p = params[index]
            x = layer_input
            if training and options.input_dropout > 0:
                x = x * reference.variational_mask(
                    seed,
                    philox.STREAM_INPUT_DROPOUT,
                    layer,
                    direction,
                    batch,
                    x.shape[2],
                    options.input_dropout,
                    x.dtype,
                    x.device,
                )
            if options.norm == "none":
                xg = F.linear(x, p.w_ih, p.b_ih)
            else:
                xg, mean_ih, var_ih = _normalize_projection(
                    F.linear(x, p.w_ih), p, options.norm, active, training
                )
                if p.b_ih is not None:
                    xg = xg + p.b_ih
                if mean_ih is not None:
                    _update_running(p.running_mean_ih, p.running_var_ih, mean_ih, var_ih, counts)
            inputs = RecurrenceInputs(
                config=config,
                xg=xg,
                h0=h0[index],
                c0=None if c0 is None else c0[index],
                w_hh=p.w_hh,
                b_hh=p.b_hh,
                w_hr=p.w_hr,
                lengths=lengths,
                norm_weight_hh=p.norm_weight_hh,
                norm_weight_c=p.norm_weight_c,
                norm_bias_c=p.norm_bias_c,
                running_mean_hh=p.running_mean_hh,
                running_var_hh=p.running_var_hh,
                running_mean_c=p.running_mean_c,
                running_var_c=p.running_var_c,
                reverse=direction == 1,
                training=training,
                seed=seed,
                layer=layer,
                direction=direction,
            )
            out, h_last, c_last, mean_hh, var_hh, mean_c, var_c = recurrence(inputs, backend)
            if mean_hh is not None:
                _update_running(p.running_mean_hh, p.running_var_hh, mean_hh, var_hh, counts)
            if mean_c is not None:
                _update_running(p.running_mean_c, p.running_var_c, mean_c, var_c, counts)
            outputs.append(out)
            h_n.append(h_last)
            if c_last is not None:
                c_n.append(c_last)
        layer_output = outputs[0] if num_dirs == 1 else torch.cat(outputs, dim=2)
        if options.residual and layer > 0:
            layer_output = layer_output + layer_input
        if options.dropout > 0 and training and layer < options.num_layers - 1:
            layer_output = F.dropout(layer_output, options.dropout, training=True)
        layer_input = layer_output
    return (
        layer_input,
        torch.stack(h_n),
        torch.stack(c_n) if c_n else None,
    )


# --------------------------------------------------------------------------------------
# Packed sequences and torch's own kernels.
# --------------------------------------------------------------------------------------
def packed_to_padded(
    data: torch.Tensor, batch_sizes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PackedSequence data [N, F] -> (padded [T, B, F], lengths [B], index [N]).

    ``index`` holds the position of each packed row in the flattened [T*B] padded tensor; it
    is what :func:`padded_to_packed` needs to go back. Both directions are differentiable.
    """
    steps = batch_sizes.shape[0]
    batch = int(batch_sizes[0]) if steps > 0 else 0
    sizes = batch_sizes.to(data.device)
    present = torch.arange(batch, device=data.device)[None, :] < sizes[:, None]  # [T, B]
    index = present.flatten().nonzero().squeeze(1)
    padded = data.new_zeros(steps * batch, data.shape[1]).index_copy(0, index, data)
    return padded.view(steps, batch, data.shape[1]), present.sum(dim=0), index


def padded_to_packed(padded: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`packed_to_padded` for [T, B, F] -> [N, F]."""
    return padded.reshape(-1, padded.shape[2]).index_select(0, index)


_TORCH_FUNCTIONS = {
    "lstm": _VF.lstm,
    "gru": _VF.gru,
    "rnn_tanh": _VF.rnn_tanh,
    "rnn_relu": _VF.rnn_relu,
}


def torch_rnn(
    options: RNNOptions,
    input: torch.Tensor,
    batch_sizes: torch.Tensor | None,
    hx,
    flat_weights: list[torch.Tensor],
    training: bool,
    batch_first: bool,
):
    """torch.nn's own kernels for the whole stack, called exactly as torch.nn does."""
    function = _TORCH_FUNCTIONS[options.cell]
    if batch_sizes is None:
        return function(
            input,
            hx,
            flat_weights,
            options.bias,
            options.num_layers,
            options.dropout,
            training,
            options.bidirectional,
            batch_first,
        )
    return function(
        input,
        batch_sizes,
        hx,
        flat_weights,
        options.bias,
        options.num_layers,
        options.dropout,
        training,
        options.bidirectional,
    )
