"""The input projection ``(m_x * x) W_ih^T + b_ih`` with its variational input mask."""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import philox, reference_loop
from .options import RNNOptions
from .recurrence_op import _functorch_active


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
        return reference_loop.variational_mask(
            seed, stream, layer, direction, batch, size, p, x.dtype, x.device
        )

    @staticmethod
    def forward(ctx, x, w_ih, b_ih, seed, p: float, layer: int, direction: int):
        ctx.save_for_backward(x, w_ih, seed)
        ctx.args = (p, layer, direction)
        ctx.has_bias = b_ih is not None
        return _linear(x * DroppedInputProjection.mask(x, seed, p, layer, direction), w_ih, b_ih)

    @staticmethod
    def backward(ctx, grad):
        from .backends.native import _rows_product  # backends import this module

        x, w_ih, seed = ctx.saved_tensors
        m_x = DroppedInputProjection.mask(x, seed, *ctx.args)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _linear(grad, w_ih.t(), None) * m_x
        if ctx.needs_input_grad[1]:
            grad_rows = grad.reshape(-1, grad.shape[-1])
            grad_w = _rows_product(grad_rows, (x * m_x).reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b, None, None, None, None


def _onednn_linear_applies(x: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor | None) -> bool:
    """Whether ``x W_ih^T + b_ih`` may run on oneDNN: plain dense float32 CPU tensors, eager
    mode, no gradient needed (the op has no autograd formula)."""
    tensors = (x, w_ih) if b_ih is None else (x, w_ih, b_ih)
    if not _ONEDNN_LINEAR or not all(
        type(t) in _PLAIN_TENSORS and t.device.type == "cpu" and t.dtype == torch.float32
        for t in tensors
    ):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return (
        not torch.compiler.is_compiling() and not _functorch_active() and x.layout == torch.strided
    )


@functools.cache
def _onednn_runs_natively(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs ``dtype``'s GEMMs natively on this CPU (torch's own checks: bf16 on
    AVX512-BF16 / AMX / AVX512 cores, fp16 on AVX512-FP16 / AMX-FP16), asked once on first
    use (never at import)."""
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return False


def _onednn_half_linear_applies(
    x: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor | None
) -> bool:
    """Whether a bfloat16 / float16 ``x W_ih^T + b_ih`` runs as oneDNN's linear with its bias
    fused (``_linear_pointwise``): F.linear's addmm first copies the broadcast bias into its
    output, then accumulates the product onto it (a bf16 C5 layer's projection: 4.35 ms, of
    which 1.06 ms the copy; measured in docs/design.md §5.4). Plain dense CPU tensors of one
    half dtype that oneDNN runs natively, eager mode, no gradient needed."""
    tensors = (x, w_ih) if b_ih is None else (x, w_ih, b_ih)
    if not _ONEDNN_LINEAR or x.dtype not in (torch.bfloat16, torch.float16):
        return False
    if not all(
        type(t) in _PLAIN_TENSORS and t.device.type == "cpu" and t.dtype == x.dtype for t in tensors
    ):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return (
        not torch.compiler.is_compiling()
        and not _functorch_active()
        and x.layout == torch.strided
        and _onednn_runs_natively(x.dtype)
    )


def _onednn_linear_trainable(
    x: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor | None
) -> bool:
    """Whether ``x W_ih^T + b_ih`` with a gradient may run as ``OneDNNLinear``: what
    ``_onednn_linear_applies`` asks of the tensors, except that they may require grad."""
    tensors = (x, w_ih) if b_ih is None else (x, w_ih, b_ih)
    return (
        _ONEDNN_LINEAR
        and all(
            type(t) in _PLAIN_TENSORS and t.device.type == "cpu" and t.dtype == torch.float32
            for t in tensors
        )
        and x.layout == torch.strided
        and not torch.compiler.is_compiling()
        and not _functorch_active()
    )


class OneDNNLinear(torch.autograd.Function):
    """``x W^T + b`` with its gradients, every GEMM on oneDNN (``_linear_pointwise``, which
    has no autograd formula of its own): ``dx = grad W``, ``dW = grad_rows^T x_rows``.

    Backward with ``create_graph=True`` computes through ``_linear`` / ``@``, which then take
    torch's differentiable ops, so double backward still works."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        needs = (*ctx.needs_input_grad[:2], ctx.has_bias and ctx.needs_input_grad[2])
        return linear_backward(grad, x, w, needs)


def linear_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The gradients of ``y = x W^T + b`` from ``grad = dL/dy`` ([..., N]; x [..., K]), for
    those of (x, W, b) that ``needs`` asks for (None for the others; False for an absent b):
    ``dx = grad W`` (``_linear``), ``dW = grad_rows^T x_rows`` summed over every row
    (``native._rows_product``), ``db`` the rows' sum. ``OneDNNLinear`` and the recurrence's
    deferred projection (recurrence_op._RecurrenceFunction) use it."""
    from .backends.native import _rows_product  # backends import this module

    grad_x = grad_w = grad_b = None
    if needs[0]:
        grad_x = _linear(grad, w.t(), None)
    grad_rows = grad.reshape(-1, grad.shape[-1])
    if needs[1]:
        grad_w = _rows_product(grad_rows, x.reshape(-1, x.shape[-1]))
    if needs[2]:
        grad_b = grad_rows.sum(0)
    return grad_x, grad_w, grad_b


def _linear(x: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor | None) -> torch.Tensor:
    """``F.linear``, on oneDNN where it applies and ``gemm_libraries().linear`` says so:
    torch's CPU wheel sends F.linear to MKL, whose sgemm runs a generic kernel on AMD CPUs
    (2.25x slower than oneDNN's at the B=32 host workload's shape, docs/design.md §5.4). With a
    gradient, ``OneDNNLinear`` runs the backward's GEMMs on oneDNN too (``dW`` as
    ``gemm_libraries().weight_grad`` says). Below ``_ONEDNN_MIN_ROWS`` rows F.linear is faster
    (oneDNN's per-call cost: 16 against 6 us at 1 row, equal at 16, docs/design.md §5.4)."""
    if x.numel() >= _ONEDNN_MIN_ROWS * x.shape[-1]:
        if _onednn_half_linear_applies(x, w_ih, b_ih):  # before gemm_libraries: float32's
            return torch.ops.mkldnn._linear_pointwise(x, w_ih, b_ih, "none", [], "")
        # gemm_libraries() after the checks, which exclude torch.compile (it reads a file)
        if _onednn_linear_applies(x, w_ih, b_ih) and gemm_libraries().linear == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x, w_ih, b_ih, "none", [], "")
        if _onednn_linear_trainable(x, w_ih, b_ih) and gemm_libraries().linear == "onednn":
            return OneDNNLinear.apply(x, w_ih, b_ih)
    return F.linear(x, w_ih, b_ih)


class GemmLibraries(NamedTuple):
    """Which library runs the float32 CPU GEMMs outside the fused recurrence: ``linear`` the
    input projection ``x W^T + b`` (and its ``dx``), ``weight_grad`` the weight gradients
    ``dy^T x`` over all T*B rows (dW_ih, dW_hh, dW_hr). Each "onednn"
    (``torch.ops.mkldnn._linear_pointwise``) or "mkl" (torch's own F.linear / ``@``)."""

    linear: str
    weight_grad: str


# Per CPU vendor (docs/design.md §5.4): AMD: MKL's sgemm takes a generic kernel, oneDNN is
# 1.3-2.25x faster for every GEMM. Intel (Xeon, AVX-512): oneDNN 1.07-1.2x faster for the
# T*B-row forward projection, equal for dx, MKL 1.1-2.2x faster for the weight gradients.
_VENDOR_LIBRARIES = {
    "GenuineIntel": GemmLibraries(linear="onednn", weight_grad="mkl"),
    "AuthenticAMD": GemmLibraries(linear="onednn", weight_grad="onednn"),
}
_DEFAULT_LIBRARIES = GemmLibraries(linear="onednn", weight_grad="onednn")
GEMM_ENV = "FUSEDRNN_HOST_GEMM"  # "auto" (default), "onednn", "mkl" or "linear=X,weight_grad=Y"


def cpu_vendor(cpuinfo: str | None = None) -> str | None:
    """The ``vendor_id`` of ``/proc/cpuinfo`` (``GenuineIntel``, ``AuthenticAMD``, ...), or
    None where there is none (other OS or architecture)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "vendor_id":
            return value.strip() or None
    return None


def parse_gemm_libraries(setting: str | None, vendor: str | None) -> GemmLibraries:
    """The libraries for ``FUSEDRNN_HOST_GEMM``'s value ``setting`` on a CPU of ``vendor``:
    unset, empty or "auto" the vendor's entry (oneDNN for both where unknown); "onednn" or
    "mkl" both GEMM kinds on that library; "linear=X,weight_grad=Y" each (an omitted one
    takes the vendor's)."""
    auto = _VENDOR_LIBRARIES.get(vendor or "", _DEFAULT_LIBRARIES)
    setting = (setting or "").strip().lower()
    if setting in ("", "auto"):
        return auto
    if setting in ("onednn", "mkl"):
        return GemmLibraries(setting, setting)
    chosen = auto._asdict()
    for item in setting.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in chosen or value not in ("onednn", "mkl"):
            raise ValueError(
                f"fusedrnn: {GEMM_ENV}={setting!r}: expected auto, onednn, mkl or "
                "linear=onednn|mkl,weight_grad=onednn|mkl"
            )
        chosen[key] = value
    return GemmLibraries(**chosen)


@functools.cache
def gemm_libraries() -> GemmLibraries:
    """The libraries of this process's CPU GEMMs: computed once, on first use (not at import),
    from ``FUSEDRNN_HOST_GEMM`` and the CPU vendor. Tests clear it with ``cache_clear()``.
    Callers ask only after their eager-mode checks: dynamo cannot trace the file read."""
    return parse_gemm_libraries(os.environ.get(GEMM_ENV), cpu_vendor())


_ONEDNN_MIN_ROWS = 16  # rows of x (T * B) from which oneDNN's linear beats MKL's


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)  # not fake, functional or other subclasses
_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_linear_pointwise"
)


def _input_projection(x, w_ih, b_ih, seed, options: RNNOptions, training, layer, direction):
    """``(m_x * x) W_ih^T + b_ih`` (the mask only in training with input_dropout)."""
    if training and options.input_dropout > 0:
        if _functorch_active():  # torch.func needs a setup_context that this lacks
            m_x = DroppedInputProjection.mask(x, seed, options.input_dropout, layer, direction)
            return F.linear(x * m_x, w_ih, b_ih)
        return DroppedInputProjection.apply(
            x, w_ih, b_ih, seed, options.input_dropout, layer, direction
        )
    return _linear(x, w_ih, b_ih)
