"""The whole-layer path shared by every backend (docs/design.md §2).

For each layer and direction:

1. the variational input-dropout mask ``m_x [B, I]`` on the layer input (Philox, one mask for
   all time steps),
2. the input projection for all steps at once, ``xg = (m_x * x) W_ih^T`` (one GEMM, so the
   BLAS library does the non-recurrent half of the work; float32 CPU inference on the host
   backend leaves it to the host's step loop instead, ``_defers_projection``),
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

import os

import torch
import torch.nn.functional as F

from . import philox
from .backends.base import RecurrenceInputs, check_lengths
from .backends.host import projects_in_loop
from .batch_norm import _normalize_projection, _update_running
from .input_projection import DroppedInputProjection, _input_projection
from .options import LayerParams, RNNOptions
from .packing import check_packed_batch_sizes, packed_to_padded, padded_to_packed
from .recurrence_op import _functorch_active, _vmap_active, op_arguments, recurrence
from .torch_path import torch_rnn

__all__ = [
    "DroppedInputProjection",
    "LayerParams",
    "RNNOptions",
    "check_packed_batch_sizes",
    "op_arguments",
    "packed_to_padded",
    "padded_to_packed",
    "recurrence",
    "rnn",
    "torch_rnn",
]


# --------------------------------------------------------------------------------------
# The layer stack.
# --------------------------------------------------------------------------------------
def _as(buffer: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """A running-statistics buffer read in the compute dtype (a no-op when they agree)."""
    return None if buffer is None else buffer.to(like.dtype)


def _check_mask_limits(options: RNNOptions, steps: int, batch: int, input_size: int) -> None:
    """Raise ValueError if a mask of this training call would not fit the Philox offset
    layout; only the fields a drawn mask indexes are checked (variational masks have no time
    field, and each mask has its own width)."""
    out_size = options.proj_size or options.hidden_size
    if options.input_dropout > 0:
        widest_input = input_size
        if options.num_layers > 1:
            widest_input = max(input_size, options.num_directions * out_size)
        philox.check_offset_limits(1, batch, widest_input)
    if options.recurrent_dropout > 0:
        philox.check_offset_limits(1, batch, out_size)
    if options.zoneout_cell > 0 and options.cell == "lstm":
        philox.check_offset_limits(steps, batch, options.hidden_size)
    if options.zoneout_hidden > 0:
        philox.check_offset_limits(steps, batch, out_size)
    if options.weight_drop > 0:
        philox.check_offset_limits(1, 1, out_size)  # W_hh [G*H, P]: columns in the unit field
    philox.mask_base_offset(0, options.num_layers - 1, options.num_directions - 1)


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
    seed: int | torch.Tensor | None = None,
    backends_ran: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The layer stack on time-major padded input.

    Args:
        input: [T, B, I]; rows past their length are ignored.
        h0: [L*D, B, P] initial hidden states (layer-major, direction-minor, as torch).
        c0: [L*D, B, H] initial cell states (lstm), else None.
        params: L*D ``LayerParams`` in the same order.
        lengths: [B] integer lengths in [1, T], or None for all T.
        seed: Philox key of this call; drawn from torch's default generator when None and a
            mask is drawn (else 0).
        backends_ran: if given, the name of the backend that runs each layer-direction is
            appended to it (eager mode; a compiled graph resolves ``auto`` when it runs).

    Returns:
        output [T, B, D*P] (zeros past each row's length), h_n [L*D, B, P], c_n [L*D, B, H].
    """
    steps, batch, _ = input.shape
    num_dirs = options.num_directions
    if len(params) != options.num_layers * num_dirs:
        raise ValueError(f"expected {options.num_layers * num_dirs} LayerParams, got {len(params)}")
    if lengths is not None:
        check_lengths(lengths, steps, batch)
        lengths = lengths.to(device=input.device, dtype=torch.int64)
    if options.norm == "batch" and training and _vmap_active():
        raise RuntimeError(
            "fusedrnn: recurrent batch norm in training mode cannot run under torch.func.vmap: "
            "it updates its running statistics in place, as torch.nn.BatchNorm does; call "
            ".eval() on the layer or apply it outside vmap"
        )
    if options.draws_masks(training):
        _check_mask_limits(options, steps, batch, input.shape[2])
        if seed is None:
            seed = philox.draw_seed()
    # No seed and no mask: None (the recurrence then reads seed 0; nothing else reads it), so
    # that an inference call makes no 0-d tensor (a few microseconds of a B=1 call).
    if seed is not None:
        seed = torch.as_tensor(seed, dtype=torch.int64)
    if seed is not None and _vmap_active() and torch._C._functorch.is_batchedtensor(seed):
        raise RuntimeError(
            "fusedrnn: torch.func.vmap(..., randomness='different') is not supported: a "
            "layer call draws one mask seed for its whole batch; use randomness='same'"
        )
    # The active rows of each step, for the norms; their count per step, for BN running
    # updates. Without a norm neither is read.
    active = counts = None
    if options.norm != "none":
        if lengths is None:
            active = torch.ones(steps, batch, dtype=torch.bool, device=input.device)
        else:
            active = torch.arange(steps, device=input.device)[:, None] < lengths[None, :]
        counts = active.sum(dim=1)
    config = options.recurrence_config()

    layer_input = input
    h_n, c_n = [], []
    for layer in range(options.num_layers):
        outputs = []
        for direction in range(num_dirs):
            index = layer * num_dirs + direction
            p = params[index]
            x = layer_input
            x_proj = None
            if _defers_projection(x, p, options, training):
                # xg = x W_ih^T + b_ih left to the host's step loop (recurrence_op: computed
                # here after all where another backend or the op runs): a placeholder of its
                # shape with no storage behind it
                x_proj = (x, p.w_ih, p.b_ih)
                xg = x.new_empty(1).expand(steps, batch, p.w_ih.shape[0])
            elif options.norm == "none":
                xg = _input_projection(x, p.w_ih, p.b_ih, seed, options, training, layer, direction)
            else:
                raw = _input_projection(x, p.w_ih, None, seed, options, training, layer, direction)
                xg, mean_ih, var_ih = _normalize_projection(raw, p, options.norm, active, training)
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
                # read in eval only; in training the buffers are updated in place below
                running_mean_hh=None if training else _as(p.running_mean_hh, xg),
                running_var_hh=None if training else _as(p.running_var_hh, xg),
                running_mean_c=None if training else _as(p.running_mean_c, xg),
                running_var_c=None if training else _as(p.running_var_c, xg),
                reverse=direction == 1,
                training=training,
                layer=layer,
                direction=direction,
                # recurrence() decides (grad mode and requires_grad); with grad mode off it
                # agrees, so an inference call makes no copy of the inputs to change it
                needs_grad=torch.is_grad_enabled(),
                x_proj=x_proj,
            )
            out, h_last, c_last, mean_hh, var_hh, mean_c, var_c = recurrence(
                inputs, backend, seed, backends_ran
            )
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
    return layer_input, _stacked(h_n), _stacked(c_n) if c_n else None


def _defers_projection(x: torch.Tensor, p: LayerParams, options: RNNOptions, training) -> bool:
    """Whether this layer's input projection may be left to the recurrence (an LSTM / GRU
    layer on the CPU without norm, projection or input dropout, eager mode; float32 with more
    than one row, or float32 / bfloat16 with one row: ``host.projects_in_loop``): the host
    backend then computes it in its step loop or ahead of it (docs/design.md §5.4), in
    inference and in training alike (recurrence_op's bypasses of the op; the backward turns
    ``dxg`` into the projection's gradients); recurrence_op.materialized_xg computes it for
    any other path (the op, another backend)."""
    return (
        DEFER_PROJECTION
        and x.is_cpu
        and x.shape[0] > 0
        and projects_in_loop(x.dtype, options.cell, options.norm, options.proj_size, x.shape[1])
        and not (training and options.input_dropout > 0)
        and p.w_ih.dtype == x.dtype
        and p.w_ih.is_cpu
        and (p.b_ih is None or (p.b_ih.dtype == x.dtype and p.b_ih.is_cpu))
        and not torch.compiler.is_compiling()
        and not _functorch_active()
    )


# Leave the input projection to the host's step loop where it can run there (_defers_projection);
# False (or FUSEDRNN_HOST_XPROJ=0) computes it here first, as every other call does (for
# measurements and tests).
DEFER_PROJECTION = os.environ.get("FUSEDRNN_HOST_XPROJ", "1") != "0"


def _stacked(states: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(states)``; one state (one layer and direction) as a view, no copy."""
    return states[0].unsqueeze(0) if len(states) == 1 else torch.stack(states)
