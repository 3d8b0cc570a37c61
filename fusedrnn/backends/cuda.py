"""The ``cuda`` backend: fusedrnn._C's persistent CUDA kernels (csrc/cuda/).

One cooperative launch per layer-direction runs the whole time loop (forward) or its reverse
(backward). This module is the thin launcher: it validates the inputs (shared checks with the
``host`` backend), allocates every output and workspace with torch's caching allocator, and
passes raw device addresses plus ``torch.cuda.current_stream().cuda_stream``; the native code
never allocates, never synchronises the host and reports CUDA errors as exceptions. Weight
gradients are one GEMM over all steps afterwards (cuBLAS through torch).

float32, float16 and bfloat16 (float32 accumulation). The recurrent product runs on tensor
cores (bf16/fp16 operands; float32 as TF32 when :func:`~fusedrnn.backends.base.float32_uses_tf32` (the one TF32 rule), else exact FP32 FMA)
whenever the block's ``W_hh`` slice fits in shared memory (docs/kernels-v2.md §5).
LSTM projections (``proj_size``) run in the same launch: every block's ``o tanh(c)`` meets in
a global buffer, a grid barrier, and each block projects its share of the P outputs with
``W_hr`` resident beside ``W_hh`` (docs/kernels-v2.md §5.0); ``dW_hr`` is one GEMM afterwards.

:func:`launch_plan` is the kernels' own plan (``_C.cuda_launch_plan``, csrc/cuda/launch_plan.h):
``unsupported_reason`` refuses, with the plan's reason, a call whose shared memory or grid
co-residency the device cannot meet, so ``auto`` falls back instead of the launch throwing.

Weight drop is a pre-pass: ``_C.cuda_weight_drop`` builds the effective ``W_hh * m_W`` once
per call (forward, and again in backward: regenerated, never saved), the persistent kernels
run a plain recurrence on it, and the same pass masks ``dW_hh`` in place (docs/design.md §3.2).
"""

from __future__ import annotations

import dataclasses

import torch

from . import native
from .base import Gradients, OutputGrad, RecurrenceInputs, RecurrenceOutputs, float32_uses_tf32

NAME = "cuda"

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# The forward runs the cell on the tensor-core product's accumulators where the plan allows
# it (no norm, no projection, the gate-interleaved W slice fits: launch_plan.h plan_fused_cell;
# docs/kernels-v2.md §5.0). The gpu tests turn it off to compare with the phased form.
FUSED_CELL = True
# The backward likewise runs the next step's cell backward on the product's accumulators where
# the plan allows it (no norm, no projection, tensor cores on the resident W slice:
# launch_plan.h plan_fused_cell_backward, recurrence_backward_kernel<S, true>; the host runs the
# same step loop in CI, host.FUSED_CELL). The gpu tests (test_fused_cell_backward_*) turn it off
# to compare with the phased backward and check which kernel instance launched.
FUSED_CELL_BACKWARD = True

# cudaDevAttrReservedSharedMemoryPerBlock on sm_80 and later (torch's device properties do not
# report it; the native plan reads the attribute itself).
_RESERVED_SMEM_PER_BLOCK = 1024


def device_limits(device: torch.device) -> dict[str, int] | None:
    """The device properties the launch plan needs (keyword arguments of ``launch_plan``), or
    None when this torch does not report one of them (the native launcher then checks the
    plan alone, at launch)."""
    props = torch.cuda.get_device_properties(device)
    names = {
        "sms": "multi_processor_count",
        "smem_per_block_optin": "shared_memory_per_block_optin",
        "smem_per_sm": "shared_memory_per_multiprocessor",
        "max_threads_per_sm": "max_threads_per_multi_processor",
    }
    if not all(hasattr(props, name) for name in names.values()):
        return None
    limits = {key: int(getattr(props, name)) for key, name in names.items()}
    limits["smem_reserved_per_block"] = _RESERVED_SMEM_PER_BLOCK if props.major >= 8 else 0
    return limits


def launch_plan(
    inputs: RecurrenceInputs, backward: bool, limits: dict[str, int], tf32: bool
) -> dict:
    """The CUDA kernel's plan for ``inputs`` on a device with ``limits`` (see
    :func:`device_limits`): grid, hs (cell units per block), ps (h units per block with a
    projection, else 0), w_in_smem, tensor_cores, k_chunk, fused_cell (the cell, or the cell
    backward, on the accumulators), smem_bytes and ``reason`` (empty when it can launch)."""
    _, batch, gate_width = inputs.xg.shape
    hidden = inputs.config.hidden_size
    dtype = inputs.xg.dtype
    return native.native().cuda_launch_plan(
        B=batch,
        G=gate_width // hidden,
        H=hidden,
        storage_bytes=dtype.itemsize,
        backward=backward,
        want_tensor_cores=dtype != torch.float32 or tf32,
        want_fused_cell=(FUSED_CELL_BACKWARD if backward else FUSED_CELL)
        and inputs.config.norm == "none"
        and inputs.config.proj_size == 0,
        proj=inputs.config.proj_size,
        **limits,
    )


def availability() -> str | None:
    module, reason = native.load_native()
    if module is None:
        return f"fusedrnn._C not built ({reason})"
    if not module.with_cuda:
        return "fusedrnn._C was built without CUDA (no nvcc at build time)"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    status = module.cuda_device_status()
    if status:
        return status
    return None


def unsupported_reason(inputs: RecurrenceInputs) -> str | None:
    reason = native.common_unsupported_reason(inputs, NAME, _DTYPES, "cuda")
    if reason is not None or inputs.xg.shape[1] == 0:
        return reason
    limits = device_limits(inputs.xg.device)
    if limits is None:
        return None
    for backward in (False, True) if inputs.needs_grad else (False,):
        reason = launch_plan(inputs, backward, limits, float32_uses_tf32())["reason"]
        if reason:
            return reason
    return None


def _check(inputs: RecurrenceInputs) -> None:
    reason = availability()
    if reason is None:
        reason = unsupported_reason(inputs)
    if reason is not None:
        raise RuntimeError(f"fusedrnn cuda backend: {reason}")


def _workspace(backward: bool):
    """Allocates the kernels' cross-block buffers (on the current stream, via torch).

    Like every output, they are poisoned with NaN when ``native.POISON_OUTPUTS`` is set (the
    gpu tests set it; FUSEDRNN_POISON_OUTPUTS=1 elsewhere): the kernels must write each
    element before they read it, and a read of an unwritten element then shows as NaN in the
    results instead of whatever an earlier launch left in the cached block. It stays off by
    default because the fill is an extra memset per launch.
    """

    def allocate(p) -> list[torch.Tensor]:
        C = native.native()
        device = torch.device("cuda", torch.cuda.current_device())
        p.allow_tf32 = float32_uses_tf32()
        p.fused_cell = FUSED_CELL_BACKWARD if backward else FUSED_CELL
        grid = int(C.cuda_plan_grid(p, backward))
        out_size = p.proj_size if p.proj_size > 0 else p.H  # the units of h
        hin = native._empty((2 * p.B * out_size,), torch.float32, device)
        stats = native._empty((2 * p.B * grid * 4,), torch.float32, device)
        p.ws_hin, p.ws_stats = hin.data_ptr(), stats.data_ptr()
        buffers = [hin, stats]
        if p.proj_size > 0 and not backward:  # o tanh(c) of every unit, the projection's input
            h_pre = native._empty((p.B * p.H,), torch.float32, device)
            p.ws_h_pre = h_pre.data_ptr()
            buffers.append(h_pre)
        return buffers

    return allocate


def saved_like(inputs: RecurrenceInputs) -> tuple[torch.Tensor, ...]:
    # The native launcher's layout (shared with host); nothing when no gradient is needed.
    # h_state for 16-bit storage: the backward reads h_{t-1} at accumulation precision.
    return native.saved_like(inputs, save=inputs.needs_grad)


def _with_dropped_weight(inputs: RecurrenceInputs, stream: int) -> RecurrenceInputs:
    """``inputs`` with W_hh replaced by ``W_hh * m_W`` (a transient weight-shaped tensor,
    built by one elementwise pass) and weight drop off, when this call drops weights."""
    cfg = inputs.config
    if not cfg.uses_weight_drop(inputs.training):
        return inputs
    w_hh = inputs.w_hh.contiguous()
    dropped = torch.empty_like(w_hh)
    native.native().cuda_weight_drop(native.weight_drop_params(inputs, w_hh, dropped), stream)
    return inputs.replace(config=dataclasses.replace(cfg, weight_drop=0.0), w_hh=dropped)


def forward(inputs: RecurrenceInputs) -> tuple[RecurrenceOutputs, tuple]:
    _check(inputs)
    C = native.native()
    with torch.no_grad(), torch.cuda.device(inputs.xg.device):
        stream = torch.cuda.current_stream().cuda_stream
        return native.launch_forward(
            _with_dropped_weight(inputs, stream),
            lambda p: C.cuda_forward(p, stream),
            1,
            _workspace(False),
            save=inputs.needs_grad,
        )


def backward(inputs: RecurrenceInputs, saved: tuple, *output_grads: OutputGrad) -> Gradients:
    _check(inputs)
    C = native.native()
    with torch.no_grad(), torch.cuda.device(inputs.xg.device):
        stream = torch.cuda.current_stream().cuda_stream
        return native.launch_backward(
            _with_dropped_weight(inputs, stream),
            saved,
            output_grads,
            lambda p: C.cuda_backward(p, stream),
            1,
            _workspace(True),
            mask_w_hh_grad=native.w_hh_grad_mask(inputs, lambda w: C.cuda_weight_drop(w, stream)),
        )
