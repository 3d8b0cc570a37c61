"""The launcher of fusedrnn._C's recurrences, shared by the ``host`` and ``cuda`` backends.

It loads the extension, allocates every output and workspace with torch, fills a params
struct with raw addresses and sizes, and calls the entry point a backend passes in
(``_C.host_forward``, or ``_C.cuda_forward`` on a stream). Weight gradients are one GEMM over
all steps afterwards, from the per-step quantities the native backward writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import torch

from .. import philox
from .base import (
    CELL_CODES,
    NORM_CODES,
    NORM_EPS,
    Gradients,
    OutputGrad,
    RecurrenceInputs,
    RecurrenceOutputs,
    accumulate_dtype,
    check_mask_limits,
)

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}

# Fill every output and workspace with NaN before a launch (tests set this to catch elements
# the native code forgets to write). Also switched on by FUSEDRNN_POISON_OUTPUTS=1.
POISON_OUTPUTS = os.environ.get("FUSEDRNN_POISON_OUTPUTS", "0") == "1"

_native_cache: tuple[ModuleType | None, str | None] | None = None


def load_native() -> tuple[ModuleType | None, str | None]:
    """(fusedrnn._C, None) if the extension imports, else (None, why not)."""
    global _native_cache
    if _native_cache is None:
        try:
            from .. import _C

            mismatch = check_native_constants(_C)
            _native_cache = (_C, None) if mismatch is None else (None, mismatch)
        except ImportError as exc:
            reason = str(exc) or type(exc).__name__
            if "No module named" in reason:
                reason = "no compiled module; build it with pip install -e . or setup.py"
            _native_cache = (None, reason)
    return _native_cache


def check_native_constants(extension) -> str | None:
    """None if ``extension`` (fusedrnn._C) was built with the codes and constants this package
    defines, else which differ (a stale build, or an edit on one side only)."""
    expected = {
        "cell_codes": CELL_CODES,
        "norm_codes": NORM_CODES,
        "dtype_codes": {str(d).removeprefix("torch."): code for d, code in DTYPE_CODES.items()},
        "norm_eps": NORM_EPS,
        "philox_step_shift": philox.STEP_SHIFT,
        "philox_batch_shift": philox.BATCH_SHIFT,
    }
    built = dict(getattr(extension, "constants", {}))
    differ = [name for name, value in expected.items() if built.get(name) != value]
    if not differ:
        return None
    return (
        f"the compiled module's constants differ from the Python package's ({', '.join(differ)});"
        " rebuild it"
    )


def native():
    """The extension module, or ImportError with the reason."""
    module, reason = load_native()
    if module is None:
        raise ImportError(f"fusedrnn._C not built ({reason})")
    return module


def common_unsupported_reason(
    inputs: RecurrenceInputs, backend: str, dtypes: tuple[torch.dtype, ...], device_type: str
) -> str | None:
    """Why the native kernels cannot run ``inputs`` (shared by the host and cuda backends).

    ``inputs`` have passed ``base.validate`` (shapes, devices, one dtype).
    """
    cfg = inputs.config
    xg = inputs.xg
    # (is_cpu: no device object, a B = 1 call's check runs twice: dispatch, then the backend)
    if not (xg.is_cpu if device_type == "cpu" else xg.device.type == device_type):
        return f"the {backend} backend needs {device_type} tensors, got {xg.device.type}"
    if xg.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        return f"the {backend} backend supports {names}, got {str(xg.dtype).replace('torch.', '')}"
    if cfg.hidden_size == 0:
        return f"the {backend} backend needs hidden_size >= 1"
    try:
        check_mask_limits(inputs)
    except ValueError as exc:
        return str(exc)
    return None


def weight_drop_params(inputs: RecurrenceInputs, src: torch.Tensor, dst: torch.Tensor):
    """``_C.WeightDropParams`` for ``dst = src * m_W`` with this call's weight-drop mask of
    W_hh (``src``, ``dst`` contiguous ``[G*H, P]``; the same tensor for in place)."""
    if not (src.is_contiguous() and dst.is_contiguous() and src.shape == dst.shape):
        raise ValueError("weight_drop_params: src and dst must be contiguous and of one shape")
    w = native().WeightDropParams()
    w.src, w.dst = src.data_ptr(), dst.data_ptr()
    w.rows, w.cols = src.shape
    w.dtype = DTYPE_CODES[src.dtype]
    w.p = float(inputs.config.weight_drop)
    w.key = philox.weight_drop_key(int(inputs.seed))
    w.base = philox.weight_drop_base_offset(inputs.layer, inputs.direction)
    return w


def w_hh_grad_mask(
    inputs: RecurrenceInputs, run: Callable[[object], None]
) -> Callable[[torch.Tensor], None] | None:
    """With weight drop in training, ``dW_hh = dW_eff * m_W`` (zero exactly where an entry was
    dropped): the in-place mask of a contiguous ``[G*H, P]`` gradient by ``run(params)``, the
    backend's weight-drop pass (``_C.host_weight_drop``, ``_C.cuda_weight_drop`` on a stream);
    None when this call drops no weights."""
    if not inputs.config.uses_weight_drop(inputs.training):
        return None
    return lambda grad: run(weight_drop_params(inputs, grad, grad))


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _c(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def _empty(shape, dtype, device) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device=device)
    if POISON_OUTPUTS:
        t.fill_(float("nan"))
    return t


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """A [T, B, X] tensor with unit last stride (strides of the first two dims are passed)."""
    return t if t.stride(-1) == 1 else t.contiguous()


_SAVED = (
    "out",
    "gates",
    "gru_hn",
    "xhat_hh",
    "rstd_hh",
    "c_tilde",
    "c_state",
    "xhat_c",
    "rstd_c",
    "h_state",
)


def _fill_common(p, inputs: RecurrenceInputs, num_threads: int) -> dict[str, torch.Tensor | None]:
    """Sizes, settings and input addresses; returns the (contiguous) tensors it points at."""
    cfg = inputs.config
    xproj = inputs.x_proj is not None  # xg a placeholder; x W_ih^T + b_ih in the step loop
    xg = inputs.xg if xproj else _unit_stride(inputs.xg)
    steps, batch, _ = xg.shape
    p.T, p.B, p.H, p.G = steps, batch, cfg.hidden_size, cfg.num_gates
    p.proj_size = cfg.proj_size
    p.cell, p.norm, p.dtype = CELL_CODES[cfg.cell], NORM_CODES[cfg.norm], DTYPE_CODES[xg.dtype]
    p.reverse, p.training = bool(inputs.reverse), bool(inputs.training)
    p.p_dropout = float(cfg.recurrent_dropout)
    p.p_zoneout_c = float(cfg.zoneout_cell) if cfg.cell == "lstm" else 0.0
    p.p_zoneout_h = float(cfg.zoneout_hidden)
    p.seed = int(inputs.seed)
    if cfg.draws_masks(inputs.training):
        base = philox.mask_base_offset
        p.base_dropout = base(philox.STREAM_RECURRENT_DROPOUT, inputs.layer, inputs.direction)
        p.base_zoneout_c = base(philox.STREAM_ZONEOUT_CELL, inputs.layer, inputs.direction)
        p.base_zoneout_h = base(philox.STREAM_ZONEOUT_HIDDEN, inputs.layer, inputs.direction)
    if cfg.uses_weight_drop(inputs.training):  # applied where the kernel loads W_hh (host)
        p.p_weight_drop = float(cfg.weight_drop)
        p.weight_drop_key = philox.weight_drop_key(int(inputs.seed))
        p.base_weight_drop = philox.weight_drop_base_offset(inputs.layer, inputs.direction)
    p.num_threads = max(1, int(num_threads))
    t = {
        "xg": xg,
        "h0": _c(inputs.h0),
        "c0": _c(inputs.c0) if cfg.cell == "lstm" else None,
        "w_hh": _c(inputs.w_hh),
        "b_hh": _c(inputs.b_hh),
        "w_hr": _c(inputs.w_hr) if cfg.proj_size > 0 else None,
        "lengths": None if inputs.lengths is None else inputs.lengths.to(torch.int64).contiguous(),
        "norm_weight_hh": _c(inputs.norm_weight_hh) if cfg.norm != "none" else None,
        "norm_weight_c": None,
        "norm_bias_c": None,
    }
    if cfg.cell == "lstm" and cfg.norm != "none":
        t["norm_weight_c"] = _c(inputs.norm_weight_c)
        norm_bias = inputs.norm_bias_c
        t["norm_bias_c"] = (
            _c(norm_bias) if norm_bias is not None else torch.zeros_like(inputs.norm_weight_c)
        )
    if cfg.norm == "batch" and not inputs.training:
        t["running_mean_hh"] = _c(inputs.running_mean_hh)
        t["running_var_hh"] = _c(inputs.running_var_hh)
        p.S = inputs.running_mean_hh.shape[0]
        if cfg.cell == "lstm":
            t["running_mean_c"] = _c(inputs.running_mean_c)
            t["running_var_c"] = _c(inputs.running_var_c)
    for name, tensor in t.items():
        if name != "xg" and tensor is not None:  # the params' pointers start as null
            setattr(p, name, tensor.data_ptr())
    if xproj:  # host float32 inference (params.h: x, w_ih, b_ih; xg stays null)
        x, w_ih, b_ih = inputs.x_proj
        x = _unit_stride(x)
        t["x"], t["w_ih"], t["b_ih"] = x, _c(w_ih), _c(b_ih)
        p.x, p.w_ih = x.data_ptr(), t["w_ih"].data_ptr()
        if b_ih is not None:
            p.b_ih = t["b_ih"].data_ptr()
        p.x_stride_t, p.x_stride_b, p.input_size = x.stride(0), x.stride(1), x.shape[2]
        return t
    p.xg = xg.data_ptr()
    p.xg_stride_t, p.xg_stride_b = xg.stride(0), xg.stride(1)
    return t


def _allocate_saved(
    inputs: RecurrenceInputs,
    allocate,
    save: bool = True,
    unused: torch.Tensor | None = None,
    allocate_slot: Callable | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors forward writes for backward (no masks), by name; an empty tensor where
    a slot is unused (``unused`` in every such slot when given, else one allocated each).
    ``allocate(shape, dtype, device)`` makes "out", ``allocate_slot`` (default ``allocate``)
    the per-step slots. ``save=False`` (no gradient needed)
    leaves out every per-step tensor (the native forward then keeps what it needs for one
    step only); "out" is the output either way (the caller drops it from the saved tuple).
    ``h_state`` (h in the accumulation dtype: the host and CUDA backward read it) is kept
    only where the storage dtype is narrower (float16, bfloat16), so that backward's h_{t-1}
    is not ``out`` rounded to storage."""
    cfg = inputs.config
    steps, batch, n = inputs.xg.shape
    hidden, dtype, device = cfg.hidden_size, inputs.xg.dtype, inputs.xg.device
    acc = accumulate_dtype(dtype)
    lstm, norm = cfg.cell == "lstm", cfg.norm

    def slot(shape: tuple[int, ...], used: bool) -> torch.Tensor:
        if save and used:
            return (allocate_slot or allocate)(shape, acc, device)
        return allocate((0,), acc, device) if unused is None else unused

    if not save:  # no per-step slot: all empty (the B = 1 inference path, kept short)
        saved = {"out": allocate((steps, batch, cfg.out_size), dtype, device)}
        for name in _SAVED[1:]:
            saved[name] = allocate((0,), acc, device) if unused is None else unused
        return saved
    per_step_rows = (steps, n) if norm == "batch" else (steps, batch)
    per_step_rows_c = (steps, hidden) if norm == "batch" else (steps, batch)
    return {
        "out": allocate((steps, batch, cfg.out_size), dtype, device),
        "gates": slot((steps, batch, n), True),
        "gru_hn": slot((steps, batch, hidden), cfg.cell == "gru"),
        "xhat_hh": slot((steps, batch, n), norm != "none"),
        "rstd_hh": slot(per_step_rows, norm != "none"),
        "c_tilde": slot((steps, batch, hidden), lstm),
        "c_state": slot((steps, batch, hidden), lstm),
        "xhat_c": slot((steps, batch, hidden), lstm and norm != "none"),
        "rstd_c": slot(per_step_rows_c, lstm and norm != "none"),
        "h_state": slot((steps, batch, cfg.out_size), acc != dtype),
    }


def saved_like(inputs: RecurrenceInputs, save: bool = True) -> tuple[torch.Tensor, ...]:
    """Empty tensors shaped like ``launch_forward``'s saved tuple (for fake tensors)."""
    saved = _allocate_saved(
        inputs,
        lambda shape, dtype, device: inputs.xg.new_empty(shape, dtype=dtype),
        save,
    )
    if not save:
        saved["out"] = inputs.xg.new_empty(0)
    return tuple(saved[k] for k in _SAVED)


class _LaunchSizes(NamedTuple):
    """The sizes and settings both launches read, from the contiguous ``xg`` and the config."""

    steps: int
    batch: int
    gate_width: int  # G * H, the width of xg
    hidden: int
    out_size: int  # P, the units of h
    dtype: torch.dtype
    device: torch.device
    acc: torch.dtype  # accumulate dtype of the statistics, ab/da and hin
    lstm: bool
    norm: str

    @classmethod
    def of(cls, xg: torch.Tensor, inputs: RecurrenceInputs) -> _LaunchSizes:
        cfg = inputs.config
        steps, batch, gate_width = xg.shape
        return cls(
            steps,
            batch,
            gate_width,
            cfg.hidden_size,
            cfg.out_size,
            xg.dtype,
            xg.device,
            accumulate_dtype(xg.dtype),
            cfg.cell == "lstm",
            cfg.norm,
        )


def launch_forward(
    inputs: RecurrenceInputs,
    run: Callable[[object], None],
    num_threads: int = 1,
    workspace: Callable[[object], list[torch.Tensor]] | None = None,
    save: bool = True,
    scratch: Callable | None = None,
) -> tuple[RecurrenceOutputs, tuple]:
    """Validate, allocate, fill the params and call ``run(params)``. ``save=False`` (no
    gradient needed) writes no per-step tensors for backward: the saved tuple then holds only
    empty tensors. ``scratch(shape, dtype, device)`` (default ``_empty``) allocates the saved
    per-step tensors, which the user does not see (the host backend's buffer cache); the
    outputs always come from ``_empty``."""
    p = native().RecurrenceFwdParams()
    keep = _fill_common(p, inputs, num_threads)
    sizes = _LaunchSizes.of(keep["xg"], inputs)
    steps, batch, n, hidden, out_size, dtype, device, acc, lstm, norm = sizes
    bn_train = norm == "batch" and inputs.training

    # One empty tensor for the unused slots: the op gives each empty result its own (custom-op
    # outputs may not alias), and drops the saved tuple when no gradient is needed.
    unused = torch.empty(0, dtype=acc, device=device)
    saved = _allocate_saved(inputs, _empty, save, unused=unused, allocate_slot=scratch)
    out = saved["out"]
    h_n = _empty((batch, out_size), dtype, device)
    c_n = _empty((batch, hidden), dtype, device) if lstm else None
    stats = {}
    if bn_train:
        stats["batch_mean_hh"] = _empty((steps, n), acc, device)
        stats["batch_var_hh"] = _empty((steps, n), acc, device)
        if lstm:
            stats["batch_mean_c"] = _empty((steps, hidden), acc, device)
            stats["batch_var_c"] = _empty((steps, hidden), acc, device)

    p.out, p.out_stride_t, p.out_stride_b = out.data_ptr(), out.stride(0), out.stride(1)
    p.h_n, p.c_n = h_n.data_ptr(), _ptr(c_n)
    for name, tensor in saved.items() if save else ():  # without save every slot is empty
        if name != "out" and tensor.numel() > 0:  # the params' pointers start as null
            setattr(p, name, tensor.data_ptr())
    for name, tensor in stats.items():
        setattr(p, name, tensor.data_ptr())
    if batch > 0:
        extra = workspace(p) if workspace is not None else []
        run(p)
        del extra  # the launch has finished reading it (host) or is stream-ordered (cuda)
    else:  # nothing to run (no launch of zero rows); the statistics of no rows are 0
        for tensor in stats.values():
            tensor.zero_()
    del keep

    result = RecurrenceOutputs(output=out, h_n=h_n, c_n=c_n)
    for name, tensor in stats.items():
        setattr(result, name, tensor)  # accumulate dtype, as the contract states
    if not save:  # an output, not a saved tensor (an alias would be copied by the op)
        saved["out"] = unused if unused.dtype == dtype else out.new_empty(0)
    return result, tuple(saved[k] for k in _SAVED)


def _rows_product(grad_rows: torch.Tensor, input_rows: torch.Tensor) -> torch.Tensor:
    """``grad_rows^T @ input_rows``, a weight gradient summed over all T*B rows: on oneDNN for
    float32 CPU tensors where input_projection._linear would use it and
    ``gemm_libraries().weight_grad`` is "onednn" (MKL's sgemm runs a generic kernel on AMD
    CPUs; on Intel MKL's is the faster here; docs/design.md §5.4), else ``@``. oneDNN's linear
    copies its first operand to contiguous, so the narrower of the two (transposed) goes first
    and the product is transposed back: at T*B=4096 rows, 1024 x 256 columns, 15 -> 11 ms."""
    from ..input_projection import _onednn_linear_applies, gemm_libraries  # imports backends

    a, w = grad_rows.t(), input_rows.t()
    if (
        grad_rows.numel() > 0
        and input_rows.numel() > 0
        and _onednn_linear_applies(a, w, None)
        and gemm_libraries().weight_grad == "onednn"  # after: not under torch.compile
    ):
        if input_rows.shape[1] < grad_rows.shape[1]:
            product = torch.ops.mkldnn._linear_pointwise(w, a, None, "none", [], "")
            return product.t().contiguous()
        return torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")
    return a @ input_rows


def launch_backward(
    inputs: RecurrenceInputs,
    saved: tuple,
    output_grads: tuple[OutputGrad, OutputGrad, OutputGrad],
    run: Callable[[object], None],
    num_threads: int = 1,
    workspace: Callable[[object], list[torch.Tensor]] | None = None,
    mask_w_hh_grad: Callable[[torch.Tensor], None] | None = None,
    narrow_weight_grads: bool = False,
    dab_may_alias_dxg: bool = False,
    scratch: Callable | None = None,
    low_weight_grad_operands: bool = False,
) -> Gradients:
    """As ``launch_forward``, for ``Backend.backward``'s arguments. ``mask_w_hh_grad`` (from
    ``w_hh_grad_mask``) masks ``dW_hh`` in place in the accumulation dtype, before the one
    rounding to storage. ``narrow_weight_grads`` (the host backend's bfloat16 layers on a CPU
    with a bf16 tier): the ``dW_hh`` / ``dW_hr`` GEMMs take their operands rounded to the
    storage dtype (float32 accumulation inside torch's GEMM, as torch.nn's bf16 layers do),
    not with a weight-drop mask (which is applied before the one rounding).
    ``dab_may_alias_dxg``: the backend writes the same value to ``dab`` and ``dxg`` wherever
    they are equal (the host's cells do), so where they are (no norm, not GRU, whose ``a_n``
    differs, storage dtype = accumulation dtype) one buffer serves both: a [T, B, N] buffer
    fewer to allocate, page in and write. ``scratch`` (default ``_empty``) allocates the
    per-step gradients and workspaces (``dxg`` and those below it; not ``dh0`` / ``dc0``),
    as in ``launch_forward``. ``low_weight_grad_operands`` (with ``narrow_weight_grads``; the
    host's bfloat16 vector cell): the backend writes ``dW_hh``'s operands rounded to the storage
    dtype itself (params ``dab_low`` / ``hin_low``; no float32 ``hin``), so they are not
    converted here (at bf16 C5, 8M + 2M elements a call)."""
    grad_output, grad_h_n, grad_c_n = output_grads
    p = native().RecurrenceBwdParams()
    keep = _fill_common(p, inputs, num_threads)
    sizes = _LaunchSizes.of(keep["xg"], inputs)
    steps, batch, n, hidden, out_size, dtype, device, acc, lstm, norm = sizes
    proj = inputs.config.proj_size > 0
    sv = dict(zip(_SAVED, saved))
    out = sv["out"]
    if out.numel() == 0 and steps * batch * out_size > 0:
        raise RuntimeError(
            "fusedrnn: backward of a forward that saved nothing for it (the forward ran with "
            "needs_grad=False)"
        )
    p.out, p.out_stride_t, p.out_stride_b = out.data_ptr(), out.stride(0), out.stride(1)
    for name in _SAVED[1:]:
        setattr(p, name, sv[name].data_ptr() if sv[name].numel() > 0 else 0)

    if grad_output is None:
        grad_output = torch.zeros(steps, batch, out_size, dtype=dtype, device=device)
    work = scratch or _empty
    grad_output = grad_output.to(dtype)
    if grad_output.stride(-1) != 1:  # e.g. a sum's expanded gradient: a dense copy, as scratch
        grad_output = work(tuple(grad_output.shape), dtype, device).copy_(grad_output)
    grad_h_n = (
        torch.zeros(batch, out_size, dtype=dtype, device=device)
        if grad_h_n is None
        else grad_h_n.to(dtype).contiguous()
    )
    if lstm and grad_c_n is not None:
        grad_c_n = grad_c_n.to(dtype).contiguous()
    else:
        grad_c_n = None
    p.grad_out = grad_output.data_ptr()
    p.grad_out_stride_t, p.grad_out_stride_b = grad_output.stride(0), grad_output.stride(1)
    p.grad_h_n, p.grad_c_n = grad_h_n.data_ptr(), _ptr(grad_c_n)

    dxg = work((steps, batch, n), dtype, device)
    same = dab_may_alias_dxg and norm == "none" and inputs.config.cell != "gru" and dtype == acc
    dab = dxg if same else work((steps, batch, n), acc, device)
    da = work((steps, batch, n), acc, device) if norm != "none" else None
    low = low_weight_grad_operands and narrow_weight_grads and mask_w_hh_grad is None
    hin = None if low else work((steps, batch, out_size), acc, device)
    dab_low = work((steps, batch, n), dtype, device) if low else None
    hin_low = work((steps, batch, out_size), dtype, device) if low else None
    dc_out = work((steps, batch, hidden), acc, device) if lstm and norm != "none" else None
    # The projection's input and output gradient per step: dW_hr = dproj^T h_pre_proj.
    h_pre_proj = work((steps, batch, hidden), acc, device) if proj else None
    dproj = work((steps, batch, out_size), acc, device) if proj else None
    dh0 = _empty((batch, out_size), dtype, device)
    dc0 = _empty((batch, hidden), dtype, device) if lstm else None
    p.dxg, p.dab, p.da, p.hin = dxg.data_ptr(), dab.data_ptr(), _ptr(da), _ptr(hin)
    p.dab_low, p.hin_low = _ptr(dab_low), _ptr(hin_low)
    p.dc_out, p.dh0, p.dc0 = _ptr(dc_out), dh0.data_ptr(), _ptr(dc0)
    p.h_pre_proj, p.dproj = _ptr(h_pre_proj), _ptr(dproj)
    if batch > 0:  # with no rows every per-row gradient is empty and the sums below are 0
        extra = workspace(p) if workspace is not None else []
        run(p)
        del extra

    grads: dict[str, torch.Tensor | None] = dict.fromkeys(RecurrenceInputs.GRAD_FIELDS)
    grads["xg"] = dxg
    grads["h0"] = dh0
    grads["c0"] = dc0
    da_used = dab if da is None else da

    def rows(t: torch.Tensor, narrow: bool) -> torch.Tensor:
        return t.to(dtype) if narrow else t

    narrow_w_hh = narrow_weight_grads and mask_w_hh_grad is None
    w_grad = _rows_product(
        (dab_low if low else rows(da_used, narrow_w_hh)).reshape(steps * batch, n),
        (hin_low if low else rows(hin, narrow_w_hh)).reshape(steps * batch, out_size),
    )
    if mask_w_hh_grad is not None:
        w_grad = w_grad.contiguous()
        mask_w_hh_grad(w_grad)
    grads["w_hh"] = w_grad.to(inputs.w_hh.dtype)
    if proj:
        w_hr_grad = _rows_product(
            rows(dproj, narrow_weight_grads).reshape(steps * batch, out_size),
            rows(h_pre_proj, narrow_weight_grads).reshape(-1, hidden),
        )
        grads["w_hr"] = w_hr_grad.to(inputs.w_hr.dtype)
    if inputs.b_hh is not None:
        grads["b_hh"] = dab.sum(dim=(0, 1)).to(inputs.b_hh.dtype)
    if norm != "none":
        grads["norm_weight_hh"] = (
            (dab * sv["xhat_hh"]).sum(dim=(0, 1)).to(inputs.norm_weight_hh.dtype)
        )
        if lstm:
            grads["norm_weight_c"] = (
                (dc_out * sv["xhat_c"]).sum(dim=(0, 1)).to(inputs.norm_weight_c.dtype)
            )
            if inputs.norm_bias_c is not None:
                grads["norm_bias_c"] = dc_out.sum(dim=(0, 1)).to(inputs.norm_bias_c.dtype)
    return grads
