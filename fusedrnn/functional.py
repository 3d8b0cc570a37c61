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

import torch
import torch.nn.functional as F
from torch import _VF

from . import backends, dispatch, philox, reference
from .backends.base import (
    BN_MOMENTUM,
    NORM_EPS,
    RecurrenceConfig,
    RecurrenceInputs,
    accumulate_dtype,
    check_lengths,
    validate,
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
# The ops' arguments and schemas are generated from the fields of RecurrenceInputs (with
# RecurrenceConfig's flattened in): its tensors in field order, then its scalars. The seed is
# passed as a 0-d int64 tensor, so that a compiled graph does not specialise on its value.
#
# Forward outputs are a flat list: [output, h_n, c_n, mean_hh, var_hh, mean_c, var_c,
# backend, *saved], with an empty tensor where a result does not exist (no cell state, no
# batch statistics). ``backend`` is a 0-d int64 CPU tensor, the index in ``_BACKEND_NAMES``
# of the backend that ran: backward runs that same backend (it reads the saved tensors).
# --------------------------------------------------------------------------------------
_SCHEMA_TYPES = {
    "torch.Tensor": "Tensor",
    "torch.Tensor | None": "Tensor?",
    "bool": "bool",
    "int": "int",
    "float": "float",
    "str": "str",
}
_SEED_FIELD = "seed"  # an int of RecurrenceInputs that the ops take as a 0-d tensor


def _op_fields(cls: type = RecurrenceInputs) -> list[tuple[str, str]]:
    """(name, schema type) of each field of ``cls``, a RecurrenceConfig's fields flattened."""
    fields = []
    for field in dataclasses.fields(cls):
        if field.type == RecurrenceConfig.__name__:
            fields += _op_fields(RecurrenceConfig)
        elif field.name == _SEED_FIELD:
            fields.append((field.name, "Tensor"))
        elif field.type in _SCHEMA_TYPES:
            fields.append((field.name, _SCHEMA_TYPES[field.type]))
        else:
            raise TypeError(f"no op schema type for {cls.__name__}.{field.name}: {field.type}")
    return fields


_FIELDS = _op_fields()
_TENSOR_ARGS = tuple(name for name, kind in _FIELDS if kind.startswith("Tensor"))
_SCALAR_ARGS = tuple(name for name, kind in _FIELDS if not kind.startswith("Tensor"))
_INPUT_ARGS = (*_TENSOR_ARGS, *_SCALAR_ARGS)
_INPUT_SCHEMA = ", ".join(f"{dict(_FIELDS)[name]} {name}" for name in _INPUT_ARGS)
_CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(RecurrenceConfig))
_STAT_FIELDS = ("batch_mean_hh", "batch_var_hh", "batch_mean_c", "batch_var_c")
_NUM_RESULTS = 3 + len(_STAT_FIELDS)  # output, h_n, c_n, statistics; then backend, saved
_BACKEND_NAMES = tuple(backends.RECURRENCE_BACKENDS)


def op_arguments(inputs: RecurrenceInputs, seed: torch.Tensor | None = None) -> list:
    """``inputs`` as the ops' positional arguments (``seed`` overrides ``inputs.seed``)."""
    values = {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)}
    values.update({name: getattr(inputs.config, name) for name in _CONFIG_FIELDS})
    values[_SEED_FIELD] = torch.tensor(inputs.seed, dtype=torch.int64) if seed is None else seed
    return [values[name] for name in _INPUT_ARGS]


def _op_inputs(args, read_seed: bool = True) -> RecurrenceInputs:
    """The inverse of :func:`op_arguments` (seed 0 where it cannot be read: fake tensors)."""
    values = dict(zip(_INPUT_ARGS, args, strict=True))
    config = RecurrenceConfig(**{name: values.pop(name) for name in _CONFIG_FIELDS})
    seed = values[_SEED_FIELD]
    values[_SEED_FIELD] = int(seed) if read_seed and isinstance(seed, torch.Tensor) else 0
    return RecurrenceInputs(config=config, **values)


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
    (for example a backend whose saved tuple holds its own output).

    A result that is a view of one of the backend's intermediates (``torch.stack`` may
    return one) is detached from its base: autograd would otherwise treat it as a view made
    by a multi-output function and refuse in-place ops on it (``out += 1``), which torch.nn
    allows.
    """
    if result.numel() == 0:  # placeholders: one shared empty tensor would alias itself
        return result.new_empty(result.shape)
    for t in others:
        if isinstance(t, torch.Tensor) and t.numel():
            if t.untyped_storage().data_ptr() == result.untyped_storage().data_ptr():
                return result.clone()
    return result.detach() if result._is_view() else result


def _recurrence_impl(*args) -> list[torch.Tensor]:
    inputs, backend = _op_inputs(args[:-1]), args[-1]
    validate(inputs)
    module = dispatch.recurrence_backend(backend, inputs)
    outputs, saved = module.forward(inputs)
    results = [outputs.output, outputs.h_n, outputs.c_n]
    results += [getattr(outputs, f) for f in _STAT_FIELDS]
    results = [_empty_like_absent(inputs.xg) if r is None else r for r in results]
    returned: list[torch.Tensor] = []
    for r in [*results, *saved]:
        returned.append(_unaliased(r, [*args[: len(_TENSOR_ARGS)], *returned]))
    ran = torch.tensor(_BACKEND_NAMES.index(module.NAME), dtype=torch.int64)
    return [*returned[:_NUM_RESULTS], ran, *returned[_NUM_RESULTS:]]


_recurrence_op = torch.library.custom_op(
    "fusedrnn::recurrence",
    _recurrence_impl,
    mutates_args=(),
    schema=f"({_INPUT_SCHEMA}, str backend) -> Tensor[]",
)


@_recurrence_op.register_fake
def _recurrence_op_fake(*args):
    inputs, backend = _op_inputs(args[:-1], read_seed=False), args[-1]
    validate(inputs, read_lengths=False)
    module = dispatch.recurrence_backend(backend, inputs)
    xg = inputs.xg
    results = [xg.new_empty(shape, dtype=dtype) for shape, dtype in _result_shapes(inputs)]
    ran = xg.new_empty((), dtype=torch.int64, device="cpu")
    return [*results, ran, *module.saved_like(inputs)]


def _recurrence_backward_impl(
    grad_output, grad_h_n, grad_c_n, saved, backend, *args
) -> list[torch.Tensor]:
    """Gradients in ``RecurrenceInputs.GRAD_FIELDS`` order (an empty tensor for an absent
    input), from the backend that ran the forward (``backend``, its index)."""
    inputs = _op_inputs(args)
    module = backends.load(_BACKEND_NAMES[int(backend)])
    grads = module.backward(inputs, tuple(saved), grad_output, grad_h_n, grad_c_n)
    result = []
    tensors = [getattr(inputs, name) for name in _TENSOR_ARGS]
    for field in RecurrenceInputs.GRAD_FIELDS:
        value = getattr(inputs, field)
        if value is None:
            result.append(_empty_like_absent(inputs.xg))
        elif grads.get(field) is None:
            result.append(torch.zeros_like(value))
        else:
            result.append(_unaliased(grads[field], [*tensors, grad_output, grad_h_n]))
    return result


_recurrence_backward_op = torch.library.custom_op(
    "fusedrnn::recurrence_backward",
    _recurrence_backward_impl,
    mutates_args=(),
    schema=(
        "(Tensor grad_output, Tensor grad_h_n, Tensor? grad_c_n, Tensor[] saved, "
        f"Tensor backend, {_INPUT_SCHEMA}) -> Tensor[]"
    ),
)


@_recurrence_backward_op.register_fake
def _recurrence_backward_op_fake(grad_output, grad_h_n, grad_c_n, saved, backend, *args):
    inputs = dict(zip(_INPUT_ARGS, args))
    return [
        grad_output.new_empty(0) if inputs[f] is None else torch.empty_like(inputs[f])
        for f in RecurrenceInputs.GRAD_FIELDS
    ]


def _recurrence_setup_context(ctx, inputs, output):
    num_tensors = len(_TENSOR_ARGS)
    ctx.save_for_backward(*inputs[:num_tensors], *output[_NUM_RESULTS:])
    ctx.scalars = inputs[num_tensors : len(_INPUT_ARGS)]  # the backend name is not needed
    ctx.mark_non_differentiable(*output[3:])


def _differentiable_backward(
    inputs: RecurrenceInputs, grads: tuple
) -> dict[str, torch.Tensor | None]:
    """Gradients that autograd can differentiate again (double backward).

    The fused backward ops have no derivative of their own, so when the backward itself is
    recorded (``create_graph=True``) the recurrence is recomputed from the same inputs and
    seed (hence the same masks) by the reference loop in plain torch ops, and differentiated
    by autograd with ``create_graph=True``.
    """
    fields = [
        f
        for f in RecurrenceInputs.GRAD_FIELDS
        if getattr(inputs, f) is not None and getattr(inputs, f).requires_grad
    ]
    with torch.enable_grad():
        result = reference.recurrence(inputs)
        pairs = [
            (out, grad)
            for out, grad in zip((result.output, result.h_n, result.c_n), grads[:3])
            if out is not None and grad is not None and out.requires_grad
        ]
        if not fields or not pairs:
            return {}
        outs, cotangents = zip(*pairs)
        values = torch.autograd.grad(
            outs,
            [getattr(inputs, f) for f in fields],
            cotangents,
            create_graph=True,
            allow_unused=True,
        )
    return dict(zip(fields, values))


def _recurrence_backward(ctx, grads):
    saved = ctx.saved_tensors
    num_tensors = len(_TENSOR_ARGS)
    args = (*saved[:num_tensors], *ctx.scalars)
    backend, extra = saved[num_tensors], list(saved[num_tensors + 1 :])
    inputs = _op_inputs(args, read_seed=torch.is_grad_enabled())
    if torch.is_grad_enabled():  # create_graph=True: the backward is differentiated too
        by_field = _differentiable_backward(inputs, grads)
    else:
        grad_output, grad_h_n, grad_c_n = grads[0], grads[1], grads[2]
        if grad_output is None:
            grad_output = inputs.xg.new_zeros((*inputs.xg.shape[:2], inputs.h0.shape[1]))
        if grad_h_n is None:
            grad_h_n = torch.zeros_like(inputs.h0)
        if inputs.c0 is None:
            grad_c_n = None
        elif grad_c_n is None:
            grad_c_n = torch.zeros_like(inputs.c0)
        grads_in = _recurrence_backward_op(grad_output, grad_h_n, grad_c_n, extra, backend, *args)
        by_field = dict(zip(RecurrenceInputs.GRAD_FIELDS, grads_in))
    per_arg = [by_field.get(f) if getattr(inputs, f) is not None else None for f in _TENSOR_ARGS]
    return (*per_arg, *([None] * (len(ctx.scalars) + 1)))


torch.library.register_autograd(
    "fusedrnn::recurrence", _recurrence_backward, setup_context=_recurrence_setup_context
)


def _functorch_active() -> bool:
    """Whether a torch.func transform (grad, vjp, jacrev, vmap, ...) is running.

    The autograd.Function that ``torch.library.register_autograd`` generates has no
    ``setup_context``, so torch.func cannot transform the custom op; under a transform the
    layer runs in plain torch ops instead. (Dynamo's model of the interpreter stack is not
    asked: compiled graphs keep the custom op.)
    """
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.peek_interpreter_stack() is not None


def _vmap_active() -> bool:
    """Whether a torch.func.vmap is running (at any level of nested transforms)."""
    if torch.compiler.is_compiling():
        return False
    vmap = torch._C._functorch.TransformType.Vmap
    return any(level.key() == vmap for level in torch._C._functorch.get_interpreter_stack() or ())


def _reference_recurrence(inputs: RecurrenceInputs, backend: str) -> tuple[tuple, str]:
    """The recurrence in differentiable torch ops (the reference loop), for torch.func.

    ``backend`` is still resolved, so a named backend that cannot run the call raises as it
    does outside a transform; the masks come from the same seed. Returns the results and the
    resolved backend's name.
    """
    validate(inputs)
    module = dispatch.recurrence_backend(backend, inputs)
    result = reference.recurrence(inputs)
    results = (result.output, result.h_n, result.c_n, *(getattr(result, f) for f in _STAT_FIELDS))
    return results, module.NAME


def recurrence(
    inputs: RecurrenceInputs,
    backend: str = "auto",
    seed: torch.Tensor | None = None,
    backends_ran: list[str] | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Run one layer-direction's recurrence on ``backend`` with autograd support.

    ``seed`` (a 0-d int64 tensor) overrides ``inputs.seed``; compiled graphs pass it so the
    seed stays a tensor. Returns ``(output, h_n, c_n, batch_mean_hh, batch_var_hh,
    batch_mean_c, batch_var_c)``, with None for what does not exist. In eager mode the name of
    the backend that ran is appended to ``backends_ran`` when given.
    """
    if _functorch_active():
        if seed is not None:
            inputs = inputs.replace(seed=int(seed))
        results, ran = _reference_recurrence(inputs, backend)
    else:
        outputs = _recurrence_op(*op_arguments(inputs, seed), backend)
        # Placeholders (absent c_n / statistics) back to None; the shapes say which are absent.
        shapes = _result_shapes(inputs)
        results = tuple(
            None if i >= 2 and shapes[i][0] == (0,) else r
            for i, r in enumerate(outputs[:_NUM_RESULTS])
        )
        ran = None if torch.compiler.is_compiling() else _BACKEND_NAMES[int(outputs[_NUM_RESULTS])]
    if backends_ran is not None and ran is not None:
        backends_ran.append(ran)
    return results


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
        if _functorch_active():  # torch.func needs a setup_context that this lacks
            m_x = DroppedInputProjection.mask(x, seed, options.input_dropout, layer, direction)
            return F.linear(x * m_x, w_ih, b_ih)
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
        check_lengths(lengths, steps, batch)
        lengths = lengths.to(device=input.device, dtype=torch.int64)
    if options.norm == "batch" and training and _vmap_active():
        raise RuntimeError(
            "fusedrnn: recurrent batch norm in training mode cannot run under torch.func.vmap: "
            "it updates its running statistics in place, as torch.nn.BatchNorm does; call "
            ".eval() on the layer or apply it outside vmap"
        )
    if options.uses_random(training):
        _check_mask_limits(options, steps, batch, input.shape[2])
        if seed is None:
            seed = philox.draw_seed()
    seed = torch.as_tensor(0 if seed is None else seed, dtype=torch.int64)
    if _vmap_active() and torch._C._functorch.is_batchedtensor(seed):
        raise RuntimeError(
            "fusedrnn: torch.func.vmap(..., randomness='different') is not supported: a "
            "layer call draws one mask seed for its whole batch; use randomness='same'"
        )
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


# torch.compile: Dynamo does not trace torch.nn's RNN modules (they run eagerly between
# graphs), and tracing their _VF functions is not safe: on the CPU Inductor's lowering of
# aten.mkldnn_rnn_layer fails at run time ("expected Tensor() for op"; torch.nn.LSTM fails
# the same way with torch._dynamo.config.allow_rnn = True). So torch's path runs eagerly
# under compile too, exactly as torch.nn's modules do: the same kernels and results, at the
# cost of a graph break (fusedrnn's own backends still compile without one).
@torch.compiler.disable
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
