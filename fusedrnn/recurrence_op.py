"""The recurrence of one layer-direction as torch custom ops with autograd (docs/design.md §2.4)."""

from __future__ import annotations

import dataclasses
import functools
import operator

import torch

from . import backends, dispatch, reference_loop
from .backends.base import RecurrenceConfig, RecurrenceInputs, accumulate_dtype, validate

# --------------------------------------------------------------------------------------
# The recurrence as a pair of torch.library custom ops (forward, backward) with autograd and
# fake-tensor registrations, so that torch.compile(fullgraph=True) traces a fusedrnn layer
# as one opaque node per layer-direction instead of breaking the graph. Plain eager CPU calls
# bypass the dispatcher (``_bypasses_op``) but run the same implementation (inference) and the
# same autograd formula (training, ``_RecurrenceFunction``).
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
        if field.metadata.get("op", True) is False:  # not an op argument (x_proj)
            continue
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
_RESULT_FIELDS = ("output", "h_n", "c_n", *_STAT_FIELDS)  # RecurrenceOutputs, in that order
# The tensor fields of RecurrenceInputs (the ops' tensors but the seed, an int there).
_INPUT_TENSOR_FIELDS = tuple(name for name in _TENSOR_ARGS if name != _SEED_FIELD)
_BACKEND_NAMES = tuple(backends.RECURRENCE_BACKENDS)


# Each op argument's name and whether it is a field of the config (else of the inputs).
_ARG_SOURCES = tuple((name, name in _CONFIG_FIELDS) for name in _INPUT_ARGS)
_SEED_INDEX = _INPUT_ARGS.index(_SEED_FIELD)
_CONFIG_SLICE = slice(len(_TENSOR_ARGS), len(_TENSOR_ARGS) + len(_CONFIG_FIELDS))
# The config fields are the first scalars: the slice of the arguments that holds them.
assert _INPUT_ARGS[_CONFIG_SLICE] == _CONFIG_FIELDS
_OTHER_ARGS = tuple(name for name in _INPUT_ARGS if name not in _CONFIG_FIELDS)


@functools.lru_cache(maxsize=64, typed=True)
def _shared_config(*values) -> RecurrenceConfig:
    """RecurrenceConfig of these field values: a layer calls with the same few configurations
    every time and the frozen dataclass is immutable, so one instance per value is shared."""
    return RecurrenceConfig(*values)


def op_arguments(inputs: RecurrenceInputs, seed: torch.Tensor | None = None) -> list:
    """``inputs`` as the ops' positional arguments (``seed`` overrides ``inputs.seed``)."""
    config = inputs.config
    values = [getattr(config if of_config else inputs, name) for name, of_config in _ARG_SOURCES]
    values[_SEED_INDEX] = torch.tensor(inputs.seed, dtype=torch.int64) if seed is None else seed
    return values


def _op_inputs(args, read_seed: bool = True) -> RecurrenceInputs:
    """The inverse of :func:`op_arguments` (seed 0 where it cannot be read: fake tensors)."""
    if len(args) != len(_INPUT_ARGS):
        raise TypeError(f"expected {len(_INPUT_ARGS)} op arguments, got {len(args)}")
    values = dict(zip(_OTHER_ARGS, (*args[: _CONFIG_SLICE.start], *args[_CONFIG_SLICE.stop :])))
    try:
        config = _shared_config(*args[_CONFIG_SLICE])
    except TypeError:  # an unhashable value (a symbolic scalar while tracing)
        config = RecurrenceConfig(*args[_CONFIG_SLICE])
    seed = values[_SEED_FIELD]
    values[_SEED_FIELD] = int(seed) if read_seed and isinstance(seed, torch.Tensor) else 0
    return RecurrenceInputs(config=config, **values)


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


def _storage_address(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _absent_results(inputs: RecurrenceInputs) -> tuple[bool, ...]:
    """Which of the op's first ``_NUM_RESULTS`` outputs are placeholders (see
    :func:`_result_shapes`, whose 0-size entries these are)."""
    has_c = inputs.config.has_cell_state
    stats = inputs.config.norm == "batch" and inputs.training
    return (
        False,
        False,
        not has_c,
        not stats,
        not stats,
        not (stats and has_c),
        not (stats and has_c),
    )


def _unaliased(result: torch.Tensor, taken: set[int]) -> torch.Tensor:
    """A custom op's outputs may not alias its inputs or each other: copy one that does (for
    example a backend whose saved tuple holds its own output). ``taken`` holds the storage
    addresses of the non-empty inputs and of the results so far; this result's is added.

    A result that is a view of one of the backend's intermediates (``torch.stack`` may
    return one) is detached from its base: autograd would otherwise treat it as a view made
    by a multi-output function and refuse in-place ops on it (``out += 1``), which torch.nn
    allows.
    """
    if result.numel() == 0:  # placeholders: one shared empty tensor would alias itself
        return result.new_empty(result.shape)
    address = _storage_address(result)
    if address in taken:
        result = result.clone()
        address = _storage_address(result)
    elif result._is_view():
        result = result.detach()
    taken.add(address)
    return result


def _input_addresses(tensors) -> set[int]:
    """Storage addresses of the non-empty tensors among ``tensors`` (None skipped)."""
    return {_storage_address(t) for t in tensors if isinstance(t, torch.Tensor) and t.numel()}


def materialized_xg(inputs: RecurrenceInputs) -> RecurrenceInputs:
    """``inputs`` with a real ``xg = x W_ih^T + b_ih`` where it defers the input projection
    (``x_proj``, functional.rnn's float32 CPU inference), else ``inputs`` itself."""
    if inputs.x_proj is None:
        return inputs
    from .input_projection import _linear  # it imports this module

    x, w_ih, b_ih = inputs.x_proj
    return inputs.replace(xg=_linear(x, w_ih, b_ih), x_proj=None)


def _resolve_backend(inputs: RecurrenceInputs, backend: str):
    """Validate ``inputs`` and resolve ``backend``: (inputs, module), with xg computed here
    (``materialized_xg``) where the input projection was deferred to a backend that cannot
    run it in its step loop (any but ``XPROJ_IN_LOOP``'s host)."""
    validate(inputs)
    module = dispatch.recurrence_backend(backend, inputs)
    if inputs.x_proj is not None and not getattr(module, "XPROJ_IN_LOOP", False):
        inputs = materialized_xg(inputs)
    return inputs, module


def _run_backend(inputs: RecurrenceInputs, backend: str):
    """Validate ``inputs``, resolve ``backend`` and run its forward: (outputs, saved, module),
    ``saved`` empty when no gradient is needed (no backward can follow)."""
    inputs, module = _resolve_backend(inputs, backend)
    outputs, saved = module.forward(inputs)
    if not inputs.needs_grad:  # no backward can follow: return nothing for one
        saved = ()
    return outputs, saved, module


def _recurrence_impl(*args) -> list[torch.Tensor]:
    inputs, backend = _op_inputs(args[:-1]), args[-1]
    outputs, saved, module = _run_backend(inputs, backend)
    results = [outputs.output, outputs.h_n, outputs.c_n]
    results += [getattr(outputs, f) for f in _STAT_FIELDS]
    taken = _input_addresses(args[: len(_TENSOR_ARGS)])
    returned = [
        inputs.xg.new_empty(0) if r is None else _unaliased(r, taken) for r in (*results, *saved)
    ]
    ran = torch.tensor(_BACKEND_NAMES.index(module.NAME), dtype=torch.int64)
    return [*returned[:_NUM_RESULTS], ran, *returned[_NUM_RESULTS:]]


_input_tensors = operator.attrgetter(*_INPUT_TENSOR_FIELDS)  # inputs -> their tensor fields


def _recurrence_direct(inputs: RecurrenceInputs, backend: str) -> tuple[tuple, str]:
    """What ``recurrence`` makes of ``_recurrence_impl``'s results, without the round trip
    through the op's arguments and results (``_bypasses_op`` with no gradient, so nothing
    is saved): the same checks, backend and unaliasing, None where a result is absent rather
    than a placeholder tensor, and the backend's name rather than its index as a tensor.
    Returns (results, name of the backend that ran)."""
    outputs, _, module = _run_backend(inputs, backend)
    # A backend whose results are always tensors it allocated itself (FRESH_OUTPUTS: no input,
    # no view, no two sharing storage) needs no unaliasing; tests/test_eager_fast_path.py
    # checks the host's claim.
    fresh = getattr(module, "FRESH_OUTPUTS", False)
    taken = None if fresh else _input_addresses(_input_tensors(inputs))
    return _bypass_results(inputs, outputs, taken), module.NAME


def _bypass_results(inputs: RecurrenceInputs, outputs, taken: set[int] | None) -> tuple:
    """A backend's results as the op's bypasses return them: in ``_RESULT_FIELDS`` order,
    None where the configuration has no such result (rather than the op's placeholder),
    under the op's aliasing rule (``_unaliased`` against ``taken``, which collects their
    addresses); ``taken=None``: as they are (a FRESH_OUTPUTS backend's)."""
    results = []
    for field, absent in zip(_RESULT_FIELDS, _absent_results(inputs)):
        r = getattr(outputs, field)
        if absent:
            results.append(None)
        elif r is None:
            results.append(inputs.xg.new_empty(0))
        else:
            results.append(r if taken is None else _unaliased(r, taken))
    return tuple(results)


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
    saved = module.saved_like(inputs) if inputs.needs_grad else ()
    return [*results, ran, *saved]


def _recurrence_backward_impl(
    grad_output, grad_h_n, grad_c_n, saved, backend, *args
) -> list[torch.Tensor]:
    """Gradients in ``RecurrenceInputs.GRAD_FIELDS`` order (an empty tensor for an absent
    input), from the backend that ran the forward (``backend``, its index)."""
    inputs = _op_inputs(args)
    module = backends.load(_BACKEND_NAMES[int(backend)])
    grads = module.backward(inputs, tuple(saved), grad_output, grad_h_n, grad_c_n)
    result = []
    taken = {
        _storage_address(t)
        for t in (*args[: len(_TENSOR_ARGS)], grad_output, grad_h_n)
        if isinstance(t, torch.Tensor) and t.numel()
    }
    for field in RecurrenceInputs.GRAD_FIELDS:
        value = getattr(inputs, field)
        if value is None:
            result.append(inputs.xg.new_empty(0))
        elif grads.get(field) is None:
            result.append(torch.zeros_like(value))
        else:
            result.append(_unaliased(grads[field], taken))
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
    # No zero-filled gradient for each saved tensor (a [T, B, G*H] fill per call, 5 % of a
    # host training call); _recurrence_backward zero-fills only the grads it passes on.
    ctx.set_materialize_grads(False)


def _differentiable_backward(
    inputs: RecurrenceInputs, grads: tuple
) -> dict[str, torch.Tensor | None]:
    """Gradients that autograd can differentiate again (double backward).

    The fused backward ops have no derivative of their own, so when the backward itself is
    recorded (``create_graph=True``) the recurrence is recomputed from the same inputs and
    seed (hence the same masks) by the reference loop in plain torch ops, and differentiated
    by autograd with ``create_graph=True``. Where the input projection was deferred
    (``inputs.x_proj``, the direct training call) it is recomputed too, and the gradients are
    of ``x``, ``w_ih`` and ``b_ih`` (keys ``X_PROJ_FIELDS``) rather than of xg.
    """
    targets = {
        f: getattr(inputs, f)
        for f in RecurrenceInputs.GRAD_FIELDS
        if getattr(inputs, f) is not None and getattr(inputs, f).requires_grad
    }
    with torch.enable_grad():
        if inputs.x_proj is not None:  # the direct training call's deferred projection
            targets.update(
                (f, t)
                for f, t in zip(X_PROJ_FIELDS, inputs.x_proj)
                if t is not None and t.requires_grad
            )
            inputs = materialized_xg(inputs)  # xg differentiable in x, w_ih, b_ih
        result = reference_loop.recurrence(inputs)
        pairs = [
            (out, grad)
            for out, grad in zip((result.output, result.h_n, result.c_n), grads[:3])
            if out is not None and grad is not None and out.requires_grad
        ]
        if not targets or not pairs:
            return {}
        outs, cotangents = zip(*pairs)
        values = torch.autograd.grad(
            outs, list(targets.values()), cotangents, create_graph=True, allow_unused=True
        )
    return dict(zip(targets, values))


def _recurrence_backward(ctx, grads):
    saved = ctx.saved_tensors
    num_tensors = len(_TENSOR_ARGS)
    args = (*saved[:num_tensors], *ctx.scalars)
    backend, extra = saved[num_tensors], list(saved[num_tensors + 1 :])
    inputs = _op_inputs(args, read_seed=torch.is_grad_enabled())
    if torch.is_grad_enabled():  # create_graph=True: the backward is differentiated too
        by_field = _differentiable_backward(inputs, grads)
    else:
        grad_output, grad_h_n, grad_c_n = _filled_output_grads(inputs, grads)
        grads_in = _recurrence_backward_op(grad_output, grad_h_n, grad_c_n, extra, backend, *args)
        by_field = dict(zip(RecurrenceInputs.GRAD_FIELDS, grads_in))
    per_arg = [by_field.get(f) if getattr(inputs, f) is not None else None for f in _TENSOR_ARGS]
    return (*per_arg, *([None] * (len(ctx.scalars) + 1)))


torch.library.register_autograd(
    "fusedrnn::recurrence", _recurrence_backward, setup_context=_recurrence_setup_context
)


# The tensors of a deferred input projection, ``RecurrenceInputs.x_proj``, by name.
X_PROJ_FIELDS = ("x", "w_ih", "b_ih")
# The direct training call's tensor arguments: the op's tensors (the seed is an int there),
# then x_proj's (None where the projection is not deferred).
_FUNCTION_TENSORS = (*_INPUT_TENSOR_FIELDS, *X_PROJ_FIELDS)


class _RecurrenceFunction(torch.autograd.Function):
    """The recurrence with autograd in plain eager training (``_bypasses_op``): what the op
    pair with its ``register_autograd`` formula does, in one ``autograd.Function``.

    Two things the op cannot do. The dispatcher's cost per call goes (torch's custom-op
    autograd wrapper fills in every default of the schema's 38 arguments, ``fill_defaults``,
    0.21 ms a call, and flattens them twice: a B = 1 training call's order of magnitude,
    docs/design.md §5.4). And the input projection may stay deferred (``inputs.x_proj``): the
    host computes ``xg = x W_ih^T + b_ih`` in its step loop, where its own GEMM runs at the
    per-step shape, and the backward turns ``dxg`` into ``dx``, ``dW_ih`` and ``db_ih``
    (``input_projection.linear_backward``, the GEMMs ``_linear`` would have run) rather than
    autograd's ``linear`` node doing it. The op cannot take a deferred projection: its
    arguments are fixed by the schema (compiled graphs keep it, with a real xg).

    ``forward(ctx, inputs, module, *tensors)``: ``inputs`` resolved and validated for the
    backend ``module``; ``tensors`` the values of ``_FUNCTION_TENSORS`` (the same objects as
    inputs' fields, so that autograd tracks them). Results and saved tensors go through the
    same aliasing rule as the op's (``_unaliased``), so in-place ops on the results behave
    as they do through the op.
    """

    @staticmethod
    def forward(ctx, inputs: RecurrenceInputs, module, *tensors):
        outputs, saved = module.forward(inputs)
        taken = _input_addresses(tensors)  # then the results': a saved one may be one of them
        results = _bypass_results(inputs, outputs, taken)
        saved = [_unaliased(t, taken) for t in saved]
        ctx.save_for_backward(*tensors, *saved)
        ctx.module, ctx.deferred = module, inputs.x_proj is not None
        blank = dict.fromkeys(_INPUT_TENSOR_FIELDS)
        ctx.inputs = inputs.replace(**blank, x_proj=None)  # tensors come back from ctx
        ctx.mark_non_differentiable(*(r for r in results[3:] if r is not None))
        ctx.set_materialize_grads(False)  # as the op: zero-filled below where passed on
        return results

    @staticmethod
    def backward(ctx, *grads):
        values = ctx.saved_tensors
        count = len(_INPUT_TENSOR_FIELDS)
        x_proj = values[count : len(_FUNCTION_TENSORS)]
        inputs = ctx.inputs.replace(
            **dict(zip(_INPUT_TENSOR_FIELDS, values[:count])),
            x_proj=x_proj if ctx.deferred else None,
        )
        if torch.is_grad_enabled():  # create_graph=True: the backward is differentiated too
            by_field = _differentiable_backward(inputs, grads)
        else:
            grad_output, grad_h_n, grad_c_n = _filled_output_grads(inputs, grads)
            saved = values[len(_FUNCTION_TENSORS) :]
            by_field = ctx.module.backward(inputs, saved, grad_output, grad_h_n, grad_c_n)
            if ctx.deferred:
                from .input_projection import linear_backward  # it imports this module

                x, w_ih, _ = x_proj
                needs = ctx.needs_input_grad[2 + count :]
                by_field.update(zip(X_PROJ_FIELDS, linear_backward(by_field["xg"], x, w_ih, needs)))
        result = []
        for field, needed in zip(_FUNCTION_TENSORS, ctx.needs_input_grad[2:]):
            grad = by_field.get(field) if needed else None
            if needed and grad is None:  # as the op: zeros, not None, for a required input
                value = values[_FUNCTION_TENSORS.index(field)]
                grad = torch.zeros_like(value)
            result.append(grad)
        return (None, None, *result)


def _filled_output_grads(inputs: RecurrenceInputs, grads: tuple) -> tuple:
    """The output gradients a backend's backward takes: zeros where autograd passed None (an
    output not used), None for c_n's where the cell has no state."""
    grad_output, grad_h_n, grad_c_n = grads[0], grads[1], grads[2]
    if grad_output is None:
        grad_output = inputs.xg.new_zeros((*inputs.xg.shape[:2], inputs.h0.shape[1]))
    if grad_h_n is None:
        grad_h_n = torch.zeros_like(inputs.h0)
    if inputs.c0 is None:
        grad_c_n = None
    elif grad_c_n is None:
        grad_c_n = torch.zeros_like(inputs.c0)
    return grad_output, grad_h_n, grad_c_n


def _recurrence_trained_directly(inputs: RecurrenceInputs, backend: str) -> tuple[tuple, str]:
    """``recurrence`` in plain eager training (``_bypasses_op``): the backend's forward and
    backward through ``_RecurrenceFunction``. Returns (results, name of the backend that ran),
    as ``_recurrence_direct``."""
    inputs, module = _resolve_backend(inputs, backend)
    tensors = [getattr(inputs, f) for f in _INPUT_TENSOR_FIELDS]
    tensors += list(inputs.x_proj) if inputs.x_proj is not None else [None] * len(X_PROJ_FIELDS)
    return _RecurrenceFunction.apply(inputs, module, *tensors), module.NAME


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
    result = reference_loop.recurrence(inputs)
    results = (result.output, result.h_n, result.c_n, *(getattr(result, f) for f in _STAT_FIELDS))
    return results, module.NAME


_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
# Plain eager training through _RecurrenceFunction rather than the op (_bypasses_op); False
# sends it through the op as compiled graphs do (tests compare the two).
DIRECT_TRAINING = True


def _bypasses_op(inputs: RecurrenceInputs, seed) -> bool:
    """Whether calling the op's implementation (inference, ``_recurrence_direct``) or its
    autograd formula as an ``autograd.Function`` (training, ``_RecurrenceFunction``) is the
    same as calling the op, so that the dispatcher's fixed cost per call (tens of
    microseconds in inference, a B=1 layer's order of magnitude; 0.3 ms with autograd) can be
    skipped.

    It is when nothing could see the op other than its own CPU kernel and autograd: eager
    mode (not compiling, not jit tracing), no profiler (a profile shows the op), no dispatch
    or torch-function mode (FakeTensorMode, FunctionalTensorMode, ``with
    torch.device(...)``, ...) and every tensor a plain CPU ``Tensor`` or ``Parameter`` (no
    subclass, no meta tensor: those dispatch elsewhere; the tensors of ``inputs`` and
    ``seed``, None for an absent one). The caller has already routed torch.func transforms
    away (``_functorch_active``). The op's kernel is ``_recurrence_impl``, which returns no
    output that aliases an input or another output (the dispatcher's one check of a custom
    op's results); both bypasses keep that rule (``_unaliased``).
    """
    if torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None:
        return False
    if torch.autograd.profiler._is_profiler_enabled:
        return False
    if torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled():
        return False
    # ``is_cpu`` rather than ``device.type == "cpu"``: the same answer at a twentieth of the
    # cost (a device object per tensor and call)
    # (the tensors are gathered only here: torch.compile has returned above, and dynamo does
    # not trace operator.attrgetter)
    return all(
        t is None or (type(t) in _PLAIN_TENSOR_TYPES and t.is_cpu)
        for t in (seed, *_input_tensors(inputs))
    )


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
    # Only here is it known whether a backward can follow; a backend may then skip what it
    # saves for one (host inference writes no per-step tensors).
    # (a deferred projection's x, w_ih, b_ih count too: then xg is a placeholder)
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad
        for t in (*vars(inputs).values(), *(inputs.x_proj or ()))
    )
    if inputs.needs_grad != needs_grad:
        inputs = inputs.replace(needs_grad=needs_grad)
    functorch = _functorch_active()
    bypass = not functorch and (DIRECT_TRAINING or not needs_grad) and _bypasses_op(inputs, seed)
    if inputs.x_proj is not None and not (
        bypass and all(t is None or type(t) in _PLAIN_TENSOR_TYPES for t in inputs.x_proj)
    ):
        inputs = materialized_xg(inputs)  # only the bypasses below run a deferred xg
    if functorch:
        if seed is not None:
            inputs = inputs.replace(seed=int(seed))
        results, ran = _reference_recurrence(inputs, backend)
    elif bypass:
        if seed is not None:
            inputs = inputs.replace(seed=int(seed))
        run = _recurrence_trained_directly if needs_grad else _recurrence_direct
        results, ran = run(inputs, backend)
    else:
        args = op_arguments(inputs, seed)
        outputs = _recurrence_op(*args, backend)
        # Placeholders (absent c_n / statistics) back to None; the configuration says which.
        results = tuple(
            None if absent else r for r, absent in zip(outputs, _absent_results(inputs))
        )
        ran = None if torch.compiler.is_compiling() else _BACKEND_NAMES[int(outputs[_NUM_RESULTS])]
    if backends_ran is not None and ran is not None:
        backends_ran.append(ran)
    return results
