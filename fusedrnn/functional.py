"""The whole-layer path shared by every backend (docs/design.md §2).

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
import inspect

import torch
import torch.nn.functional as F
from torch import _VF

from . import dispatch, philox, reference
from .backends.base import (
    BN_MOMENTUM,
    NORM_EPS,
    RecurrenceConfig,
    RecurrenceInputs,
    accumulate_dtype,
)

__all__ = [
    "DroppedInputProjection",
    "LayerParams",
    "RNNOptions",
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
# The recurrence as a pair of torch.library custom ops (forward, backward) with autograd and
# fake-tensor registrations, so that torch.compile(fullgraph=True) traces a fusedrnn layer
# as one opaque node per layer-direction instead of breaking the graph. Eager mode takes the
# same path: there is one way into a backend.
#
# Op outputs are a flat list: [output, h_n, c_n, mean_hh, var_hh, mean_c, var_c, *saved],
# with an empty tensor where a result does not exist (no cell state, no batch statistics).
# --------------------------------------------------------------------------------------
_OPTIONAL_TENSOR_FIELDS = (
    "c0",
    "b_hh",
    "w_hr",
    "lengths",
    "norm_weight_hh",
    "norm_weight_c",
    "norm_bias_c",
    "running_mean_hh",
    "running_var_hh",
    "running_mean_c",
    "running_var_c",
)
_TENSOR_FIELDS = ("xg", "h0", "w_hh", *_OPTIONAL_TENSOR_FIELDS)
_STAT_FIELDS = ("batch_mean_hh", "batch_var_hh", "batch_mean_c", "batch_var_c")
_NUM_RESULTS = 3 + len(_STAT_FIELDS)  # output, h_n, c_n, statistics; saved tensors follow


def _op_inputs(tensors: dict, seed: torch.Tensor | int, scalars: tuple) -> RecurrenceInputs:
    (cell, hidden, proj, rec_dropout, zone_c, zone_h, norm, reverse, training, layer, direction) = (
        scalars
    )
    config = RecurrenceConfig(cell, hidden, proj, rec_dropout, zone_c, zone_h, norm)
    seed = int(seed) if isinstance(seed, torch.Tensor) else seed
    return RecurrenceInputs(
        config=config,
        **tensors,
        reverse=reverse,
        training=training,
        seed=seed,
        layer=layer,
        direction=direction,
    )


def _empty_like_absent(reference_tensor: torch.Tensor) -> torch.Tensor:
    return reference_tensor.new_empty(0)


def _result_shapes(inputs: RecurrenceInputs) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """Shapes and dtypes of the op's first ``_NUM_RESULTS`` outputs (0-size when absent)."""
    cfg = inputs.config
    steps, batch, _ = inputs.xg.shape
    dtype, acc = inputs.xg.dtype, accumulate_dtype(inputs.xg.dtype)
    has_c = cfg.has_cell_state
    stats = cfg.norm == "batch" and inputs.training
    return [
        ((steps, batch, cfg.out_size), dtype),
        ((batch, cfg.out_size), dtype),
        ((batch, cfg.hidden_size) if has_c else (0,), dtype),
        ((steps, cfg.gate_size) if stats else (0,), acc),
        ((steps, cfg.gate_size) if stats else (0,), acc),
        ((steps, cfg.hidden_size) if stats and has_c else (0,), acc),
        ((steps, cfg.hidden_size) if stats and has_c else (0,), acc),
    ]


def _unaliased(result: torch.Tensor, others: list) -> torch.Tensor:
    """A custom op's outputs may not alias its inputs or each other: copy one that does
    (for example a backend whose saved tuple holds its own output)."""
    if result.numel() == 0:  # placeholders: one shared empty tensor would alias itself
        return result.new_empty(result.shape)
    for t in others:
        if isinstance(t, torch.Tensor) and t.numel():
            if t.untyped_storage().data_ptr() == result.untyped_storage().data_ptr():
                return result.clone()
    return result


@torch.library.custom_op("fusedrnn::recurrence", mutates_args=())
def _recurrence_op(
    xg: torch.Tensor,
    h0: torch.Tensor,
    w_hh: torch.Tensor,
    c0: torch.Tensor | None,
    b_hh: torch.Tensor | None,
    w_hr: torch.Tensor | None,
    lengths: torch.Tensor | None,
    norm_weight_hh: torch.Tensor | None,
    norm_weight_c: torch.Tensor | None,
    norm_bias_c: torch.Tensor | None,
    running_mean_hh: torch.Tensor | None,
    running_var_hh: torch.Tensor | None,
    running_mean_c: torch.Tensor | None,
    running_var_c: torch.Tensor | None,
    seed: torch.Tensor,
    cell: str,
    hidden_size: int,
    proj_size: int,
    recurrent_dropout: float,
    zoneout_cell: float,
    zoneout_hidden: float,
    norm: str,
    reverse: bool,
    training: bool,
    layer: int,
    direction: int,
    backend: str,
    *,
    needs_grad: bool = True,
) -> list[torch.Tensor]:
    args = locals()
    tensors = {f: args[f] for f in _TENSOR_FIELDS}
    scalars = tuple(args[k] for k in _SCALAR_ARGS)
    inputs = _op_inputs(tensors, seed, scalars).replace(needs_grad=needs_grad)
    module = dispatch.recurrence_backend(backend, inputs)
    outputs, saved = module.forward(inputs)
    results = [outputs.output, outputs.h_n, outputs.c_n]
    results += [getattr(outputs, f) for f in _STAT_FIELDS]
    results = [_empty_like_absent(xg) if r is None else r for r in results]
    returned: list[torch.Tensor] = []
    for r in [*results, *saved]:
        returned.append(_unaliased(r, [*tensors.values(), *returned]))
    return returned


_SCALAR_ARGS = (
    "cell",
    "hidden_size",
    "proj_size",
    "recurrent_dropout",
    "zoneout_cell",
    "zoneout_hidden",
    "norm",
    "reverse",
    "training",
    "layer",
    "direction",
)


_RECURRENCE_SIGNATURE = inspect.signature(_recurrence_op._init_fn)


@_recurrence_op.register_fake
def _recurrence_op_fake(*args, **kwargs):
    bound = _RECURRENCE_SIGNATURE.bind(*args, **kwargs).arguments
    tensors = {f: bound[f] for f in _TENSOR_FIELDS}
    inputs = _op_inputs(tensors, 0, tuple(bound[k] for k in _SCALAR_ARGS))
    inputs = inputs.replace(needs_grad=bound.get("needs_grad", True))
    module = dispatch.recurrence_backend(bound["backend"], inputs)
    xg = bound["xg"]
    results = [xg.new_empty(shape, dtype=dtype) for shape, dtype in _result_shapes(inputs)]
    return [*results, *module.saved_like(inputs)]


@torch.library.custom_op("fusedrnn::recurrence_backward", mutates_args=())
def _recurrence_backward_op(
    grad_output: torch.Tensor,
    grad_h_n: torch.Tensor,
    grad_c_n: torch.Tensor | None,
    saved: list[torch.Tensor],
    xg: torch.Tensor,
    h0: torch.Tensor,
    w_hh: torch.Tensor,
    c0: torch.Tensor | None,
    b_hh: torch.Tensor | None,
    w_hr: torch.Tensor | None,
    lengths: torch.Tensor | None,
    norm_weight_hh: torch.Tensor | None,
    norm_weight_c: torch.Tensor | None,
    norm_bias_c: torch.Tensor | None,
    running_mean_hh: torch.Tensor | None,
    running_var_hh: torch.Tensor | None,
    running_mean_c: torch.Tensor | None,
    running_var_c: torch.Tensor | None,
    seed: torch.Tensor,
    cell: str,
    hidden_size: int,
    proj_size: int,
    recurrent_dropout: float,
    zoneout_cell: float,
    zoneout_hidden: float,
    norm: str,
    reverse: bool,
    training: bool,
    layer: int,
    direction: int,
    backend: str,
) -> list[torch.Tensor]:
    """Gradients in ``RecurrenceInputs.GRAD_FIELDS`` order (an empty tensor for an absent
    input)."""
    args = locals()
    tensors = {f: args[f] for f in _TENSOR_FIELDS}
    inputs = _op_inputs(tensors, seed, tuple(args[k] for k in _SCALAR_ARGS))
    module = dispatch.recurrence_backend(backend, inputs)
    grads = module.backward(inputs, tuple(saved), grad_output, grad_h_n, grad_c_n)
    result = []
    for field in RecurrenceInputs.GRAD_FIELDS:
        value = tensors[field]
        if value is None:
            result.append(_empty_like_absent(xg))
        elif grads.get(field) is None:
            result.append(torch.zeros_like(value))
        else:
            result.append(_unaliased(grads[field], [*tensors.values(), grad_output, grad_h_n]))
    return result


_BACKWARD_SIGNATURE = inspect.signature(_recurrence_backward_op._init_fn)


@_recurrence_backward_op.register_fake
def _recurrence_backward_op_fake(*args, **kwargs):
    bound = _BACKWARD_SIGNATURE.bind(*args, **kwargs).arguments
    return [
        bound["grad_output"].new_empty(0) if bound[f] is None else torch.empty_like(bound[f])
        for f in RecurrenceInputs.GRAD_FIELDS
    ]


_NUM_OP_TENSOR_ARGS = len(_TENSOR_FIELDS) + 1  # the tensors and the seed


def _recurrence_setup_context(ctx, inputs, output, keyword_only_inputs=None):
    ctx.save_for_backward(*inputs[:_NUM_OP_TENSOR_ARGS], *output[_NUM_RESULTS:])
    ctx.scalars = inputs[_NUM_OP_TENSOR_ARGS:]
    ctx.mark_non_differentiable(*output[3:])


def _recurrence_backward(ctx, grads):
    saved = ctx.saved_tensors
    op_tensors, extra = saved[:_NUM_OP_TENSOR_ARGS], list(saved[_NUM_OP_TENSOR_ARGS:])
    tensors = dict(zip(_TENSOR_FIELDS, op_tensors))
    grad_output, grad_h_n, grad_c_n = grads[0], grads[1], grads[2]
    if grad_output is None:
        grad_output = torch.zeros(
            (*tensors["xg"].shape[:2], tensors["h0"].shape[1]),
            dtype=tensors["xg"].dtype,
            device=tensors["xg"].device,
        )
    if grad_h_n is None:
        grad_h_n = torch.zeros_like(tensors["h0"])
    if tensors["c0"] is None:
        grad_c_n = None
    elif grad_c_n is None:
        grad_c_n = torch.zeros_like(tensors["c0"])
    grads_in = _recurrence_backward_op(
        grad_output, grad_h_n, grad_c_n, extra, *op_tensors, *ctx.scalars
    )
    by_field = dict(zip(RecurrenceInputs.GRAD_FIELDS, grads_in))
    per_arg = [
        by_field.get(f) if f in by_field and tensors[f] is not None else None
        for f in _TENSOR_FIELDS
    ]
    return (*per_arg, None, *([None] * len(ctx.scalars)))


torch.library.register_autograd(
    "fusedrnn::recurrence", _recurrence_backward, setup_context=_recurrence_setup_context
)


def recurrence(
    inputs: RecurrenceInputs, backend: str = "auto", seed: torch.Tensor | None = None
) -> tuple[torch.Tensor | None, ...]:
    """Run one layer-direction's recurrence on ``backend`` with autograd support.

    ``seed`` (a 0-d int64 tensor) overrides ``inputs.seed``; compiled graphs pass it so the
    seed stays a tensor. Returns ``(output, h_n, c_n, batch_mean_hh, batch_var_hh,
    batch_mean_c, batch_var_c)``, with None for what does not exist.
    """
    if seed is None:
        seed = torch.tensor(inputs.seed, dtype=torch.int64)
    cfg = inputs.config
    outputs = _recurrence_op(
        *[getattr(inputs, f) for f in _TENSOR_FIELDS],
        seed,
        cfg.cell,
        cfg.hidden_size,
        cfg.proj_size,
        cfg.recurrent_dropout,
        cfg.zoneout_cell,
        cfg.zoneout_hidden,
        cfg.norm,
        inputs.reverse,
        inputs.training,
        inputs.layer,
        inputs.direction,
        backend,
        needs_grad=torch.is_grad_enabled()
        and any(isinstance(t, torch.Tensor) and t.requires_grad for t in vars(inputs).values()),
    )
    # Placeholders (absent c_n / statistics) back to None; the shapes say which are absent.
    shapes = _result_shapes(inputs)
    results = [
        None if i >= 2 and shapes[i][0] == (0,) else r for i, r in enumerate(outputs[:_NUM_RESULTS])
    ]
    return tuple(results)


class DroppedInputProjection(torch.autograd.Function):
    """``(m_x * x) W_ih^T + b_ih`` with the variational input mask ``m_x [B, I]`` of one
    layer-direction (step 1 and 2 of the layer path in one autograd node).

    Autograd of the plain expression would save the mask and the masked input; this saves
    only ``x`` (which the layer keeps anyway) and the 0-d seed, and regenerates the mask in
    backward, as the kernels do for theirs.
    """

    @staticmethod
    def mask(x: torch.Tensor, seed: torch.Tensor, p: float, layer: int, direction: int):
        stream = philox.STREAM_INPUT_DROPOUT
        batch, size = x.shape[1], x.shape[2]
        return reference.variational_mask(
            seed, stream, layer, direction, batch, size, p, x.dtype, x.device
        )

    @staticmethod
    def forward(ctx, x, w_ih, b_ih, seed, p: float, layer: int, direction: int):
        ctx.save_for_backward(x, w_ih, seed)
        ctx.args = (p, layer, direction)
        ctx.has_bias = b_ih is not None
        return F.linear(x * DroppedInputProjection.mask(x, seed, p, layer, direction), w_ih, b_ih)

    @staticmethod
    def backward(ctx, grad):
        x, w_ih, seed = ctx.saved_tensors
        m_x = DroppedInputProjection.mask(x, seed, *ctx.args)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ w_ih) * m_x
        if ctx.needs_input_grad[1]:
            grad_w = grad.reshape(-1, grad.shape[-1]).t() @ (x * m_x).reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b, None, None, None, None


def _input_projection(x, w_ih, b_ih, seed, options: RNNOptions, training, layer, direction):
    """``(m_x * x) W_ih^T + b_ih`` (the mask only in training with input_dropout)."""
    if training and options.input_dropout > 0:
        return DroppedInputProjection.apply(
            x, w_ih, b_ih, seed, options.input_dropout, layer, direction
        )
    return F.linear(x, w_ih, b_ih)


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
    mean = params.running_mean_ih[rows][:, None].to(raw.dtype)
    var = params.running_var_ih[rows][:, None].to(raw.dtype)
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
def _as(buffer: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """A running-statistics buffer read in the compute dtype (a no-op when they agree)."""
    return None if buffer is None else buffer.to(like.dtype)


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
        seed: Philox key of this call; drawn from torch's default generator when None.
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
        _check_lengths(lengths, steps, batch)
        lengths = lengths.to(device=input.device, dtype=torch.int64)
    if options.uses_random(training):
        _check_mask_limits(options, steps, batch, input.shape[2])
        if seed is None:
            seed = philox.draw_seed()
    seed = torch.as_tensor(0 if seed is None else seed, dtype=torch.int64)
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
            if options.norm == "none":
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
            )
            chosen = backend
            if not torch.compiler.is_compiling():  # resolve auto here, to report the choice
                chosen = dispatch.recurrence_backend(backend, inputs).NAME
                if backends_ran is not None:
                    backends_ran.append(chosen)
            out, h_last, c_last, mean_hh, var_hh, mean_c, var_c = recurrence(inputs, chosen, seed)
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
def check_packed_batch_sizes(batch_sizes: torch.Tensor, num_rows: int, gate_width: int) -> None:
    """Raise, as torch.nn's packed RNN does, when ``batch_sizes`` do not fit ``num_rows``
    packed rows: a negative size, sizes summing past the data, or a size that grows.

    torch.nn finds these while it walks the steps (slicing the data, then adding the input
    and hidden projections of the step), so the errors and their wording are those of the
    failing op: ``Tensor.narrow``'s, or a broadcast's with the step's hidden rows as ``a``
    (``gate_width`` columns: 4H for the LSTM cell, H for GRU/RNN). A growth from 0 to 1 row,
    which torch.nn's broadcast lets through with a wrong result, raises the same error.
    Sizes summing to fewer than ``num_rows`` raise too: torch.nn runs them, but its reverse
    direction then reads the rows past the sum (a silently wrong result).
    """
    offset = 0
    previous = None
    for size in batch_sizes.tolist():
        if size < 0:
            raise RuntimeError("narrow(): length must be non-negative.")
        if offset + size > num_rows:
            raise RuntimeError(
                f"start ({offset}) + length ({size}) exceeds dimension size ({num_rows})."
            )
        offset += size
        if previous is not None and size > previous:
            if previous == 1:
                raise RuntimeError(
                    f"output with shape [1, {gate_width}] doesn't match the broadcast shape "
                    f"[{size}, {gate_width}]"
                )
            raise RuntimeError(
                f"The size of tensor a ({previous}) must match the size of tensor b ({size}) "
                "at non-singleton dimension 0"
            )
        previous = size
    if offset != num_rows:
        raise RuntimeError(
            f"PackedSequence batch_sizes sum to {offset}, but its data has {num_rows} rows"
        )


def packed_to_padded(
    data: torch.Tensor, batch_sizes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PackedSequence data [N, F] -> (padded [T, B, F], lengths [B], index [N]).

    ``index`` holds the position of each packed row in the flattened [T*B] padded tensor; it
    is what :func:`padded_to_packed` needs to go back. Both directions are differentiable.
    ``batch_sizes`` must fit ``data`` (:func:`check_packed_batch_sizes`).
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
