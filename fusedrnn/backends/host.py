"""The ``host`` backend: fusedrnn._C's CPU build of the cell math.

float32 and float64; float16 and bfloat16 storage computed in float32 (float32 cell state and
saved tensors; see csrc/host/recurrence_host.cpp). bfloat16 LSTM / GRU on a CPU with AMX or
AVX512_BF16 run their recurrent products in bf16 with float32 accumulation (h_{t-1} rounded to
bf16 for the product; csrc/host/gemm_bf16.h), and the weight-gradient GEMMs on bf16 operands. LSTM projections
(``proj_size``) included.

The native code (csrc/host/) runs the same ``cells.cuh`` / ``philox.cuh`` functions as the CUDA
kernels, in one OpenMP region per call whose threads each own a slice of hidden units (as a
CUDA block does). The launching is ``native.py``'s, shared with the ``cuda`` backend; this
module chooses the thread count and calls ``_C.host_forward`` / ``_C.host_backward``.
"""

from __future__ import annotations

import math
import os

import torch

from . import native
from .base import Gradients, OutputGrad, RecurrenceInputs, RecurrenceOutputs

NAME = "host"

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Worker threads of the native loop: None = torch.get_num_threads(), reduced for small
# problems where a per-step barrier costs more than the split saves (see _threads()).
NUM_THREADS: int | None = None
# Per-step multiply-adds per thread below which another thread does not pay.
_MIN_MACS_PER_THREAD = 1 << 18
# Run the forward and backward steps in their fused, per-element forms (step_loop.h
# ``fused_cell_step`` / ``fused_cell_backward_step``, the forms the CUDA tensor-core kernels run
# on their accumulators) where they apply (no norm, no projection). Off by default: the phased
# forms are faster on the CPU (vectorised activations); the tests turn it on to check the fused
# forms against the reference on the CPU.
FUSED_CELL = False
# Every result of forward() is a tensor launch_forward allocated for it (no input, no view, no
# two sharing storage), so the eager fast path skips its aliasing check
# (recurrence_op._recurrence_direct; tests/test_eager_fast_path.py checks this).
FRESH_OUTPUTS = True
# float32 inference may leave the input projection to the step loop (RecurrenceInputs.x_proj,
# csrc/host/recurrence_host.cpp: each worker computes x W_ih^T + b_ih for its own gate columns,
# a few steps at a time, with no [T, B, G*H] tensor; docs/design.md §5.4).
XPROJ_IN_LOOP = True

# The buffer cache (csrc/host/buffer_cache.h): the saved per-step tensors and the backward's
# per-step gradients and workspaces of at least CACHE_MIN_BYTES (tensors the user does not
# see) are views of blocks whose pages stay resident between calls, so a training loop stops
# page-faulting tens of MiB in per call (docs/design.md §5.4, "The buffer cache"). Smaller
# buffers come from malloc's heap, already resident. Free blocks are kept up to
# FUSEDRNN_HOST_CACHE_MB MiB (read at the first call; 0 turns the cache off).
CACHE_MIN_BYTES = 1 << 20
CACHE_ENV = "FUSEDRNN_HOST_CACHE_MB"
CACHE_DEFAULT_MB = 1024
_cache_limit: int | None = None  # bytes, once read


def cache_limit_bytes() -> int:
    """The buffer cache's limit on free bytes, from FUSEDRNN_HOST_CACHE_MB (default
    CACHE_DEFAULT_MB), read once and given to the native cache."""
    global _cache_limit
    if _cache_limit is None:
        raw = os.environ.get(CACHE_ENV, str(CACHE_DEFAULT_MB)).strip()
        if not raw.isdigit():
            raise ValueError(f"{CACHE_ENV} must be a whole number of MiB (0 = off), got {raw!r}")
        limit = int(raw) << 20
        native.native().host_cache_set_limit(limit)
        _cache_limit = limit
    return _cache_limit


def cached_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor as ``native._empty``, from the buffer cache when it is on, the
    device is the CPU and the tensor has at least CACHE_MIN_BYTES: a view (torch.frombuffer)
    of a ``_C.HostBuffer``, whose block goes back to the cache when its last tensor is freed."""
    numel = math.prod(shape)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if torch.device(device).type != "cpu" or nbytes < CACHE_MIN_BYTES or cache_limit_bytes() == 0:
        return native._empty(shape, dtype, device)
    tensor = torch.frombuffer(native.native().HostBuffer(nbytes), dtype=dtype, count=numel)
    tensor = tensor.view(shape)
    if native.POISON_OUTPUTS:
        tensor.fill_(float("nan"))
    return tensor


def cache_stats() -> dict[str, int]:
    """The buffer cache's ``free_bytes``, ``free_blocks``, ``in_use_bytes``, ``hits`` and
    ``misses``."""
    return dict(native.native().host_cache_stats())


def empty_cache() -> None:
    """Gives every free block of the buffer cache back to the system (blocks in use return to
    the cache when their tensors are freed, up to its limit)."""
    C = native.native()
    limit = cache_limit_bytes()
    C.host_cache_set_limit(0)
    C.host_cache_set_limit(limit)


def projects_in_loop(dtype: torch.dtype, cell: str, norm: str, proj_size: int, batch: int) -> bool:
    """The layers whose input projection ``x W_ih^T + b_ih`` the native call can compute
    itself (csrc/host/recurrence_host.h ``xproj_in_loop_applies``): LSTM / GRU, no norm, no
    projection, and float32 with more than one row (each worker in its step loop), or float32
    / bfloat16 with one row and two threads or more (a second thread ahead of the one-row
    loop, ``_one_row_pipeline``). functional.rnn asks it before projecting, the launcher
    (``xproj_in_loop_applies``) again with the phased-cell condition."""
    one_row = batch == 1 and dtype in (torch.float32, torch.bfloat16) and _one_row_pipeline()
    return (
        cell in ("lstm", "gru")
        and norm == "none"
        and proj_size == 0
        and ((dtype == torch.float32 and batch > 1) or one_row)
    )


def _one_row_pipeline() -> bool:
    """Whether a one-row call may run its input projection on a second thread: two threads
    or more (``NUM_THREADS``, else torch's), the count ``_threads`` then passes (2)."""
    return (torch.get_num_threads() if NUM_THREADS is None else int(NUM_THREADS)) >= 2


def xproj_in_loop_applies(inputs: RecurrenceInputs) -> bool:
    """Whether the native loop computes ``x W_ih^T + b_ih`` itself for ``inputs.x_proj``:
    ``projects_in_loop`` with the phased (not fused) cell."""
    cfg = inputs.config
    return not FUSED_CELL and projects_in_loop(
        inputs.xg.dtype, cfg.cell, cfg.norm, cfg.proj_size, inputs.xg.shape[1]
    )


def availability() -> str | None:
    _, reason = native.load_native()
    if reason is not None:
        return f"fusedrnn._C not built ({reason})"
    return None


def unsupported_reason(inputs: RecurrenceInputs) -> str | None:
    return native.common_unsupported_reason(inputs, NAME, _DTYPES, "cpu")


def saved_like(inputs: RecurrenceInputs) -> tuple[torch.Tensor, ...]:
    # The native launcher's layout; nothing per step when no gradient is needed.
    return native.saved_like(inputs, save=inputs.needs_grad)


def _threads(inputs: RecurrenceInputs, forward: bool = True) -> int:
    batch = inputs.xg.shape[1]
    # (the backward of a deferred projection has no projection to run ahead)
    if batch == 1 and inputs.x_proj is not None and forward:  # _one_row_pipeline() held
        return 2  # the step loop's thread and the projection's (forward_one_row_pipelined)
    if NUM_THREADS is not None:
        return max(1, int(NUM_THREADS))
    cfg = inputs.config
    macs = batch * cfg.gate_size * cfg.hidden_size
    return max(1, min(torch.get_num_threads(), macs // _MIN_MACS_PER_THREAD))


def _bf16_products(inputs: RecurrenceInputs, C) -> bool:
    """Whether this bfloat16 layer's products run in bf16 (csrc/host/gemm_bf16.h: a CPU with
    AMX or AVX512_BF16, LSTM / GRU): then the weight-gradient GEMMs take bf16 operands too."""
    return (
        inputs.xg.dtype == torch.bfloat16
        and inputs.config.cell in ("lstm", "gru")
        and C.host_bf16_variant() != "none"
    )


def _bf16_vector_cell(inputs: RecurrenceInputs) -> bool:
    """Whether this bfloat16 layer's backward runs the vector cell, which then also writes the
    weight-gradient operands in bf16 (native.launch_backward's ``low_weight_grad_operands``;
    csrc/include/fusedrnn/step_loop.h ``vector_cell_applies``, not the fused cell)."""
    cfg = inputs.config
    return (
        inputs.xg.dtype == torch.bfloat16
        and cfg.cell in ("lstm", "gru")
        and cfg.norm == "none"
        and cfg.proj_size == 0
        and not FUSED_CELL
    )


def _check(inputs: RecurrenceInputs) -> None:
    reason = availability() or unsupported_reason(inputs)
    if reason is not None:
        raise RuntimeError(f"fusedrnn host backend: {reason}")


def forward(inputs: RecurrenceInputs) -> tuple[RecurrenceOutputs, tuple]:
    _check(inputs)
    C = native.native()
    if inputs.x_proj is not None and not xproj_in_loop_applies(inputs):
        from ..recurrence_op import materialized_xg

        inputs = materialized_xg(inputs)

    def run(p) -> None:
        p.fused_cell = FUSED_CELL
        C.host_forward(p)

    if not torch.is_grad_enabled():  # as below, without the context's cost (B = 1 inference)
        return native.launch_forward(
            inputs, run, _threads(inputs), save=inputs.needs_grad, scratch=cached_empty
        )
    with torch.no_grad():
        return native.launch_forward(
            inputs, run, _threads(inputs), save=inputs.needs_grad, scratch=cached_empty
        )


def backward(inputs: RecurrenceInputs, saved: tuple, *output_grads: OutputGrad) -> Gradients:
    _check(inputs)
    C = native.native()
    with torch.no_grad():

        def run(p) -> None:
            p.fused_cell = FUSED_CELL
            C.host_backward(p)

        return native.launch_backward(
            inputs,
            saved,
            output_grads,
            run,
            _threads(inputs, forward=False),
            mask_w_hh_grad=native.w_hh_grad_mask(inputs, C.host_weight_drop),
            narrow_weight_grads=_bf16_products(inputs, C),
            dab_may_alias_dxg=True,
            scratch=cached_empty,
            low_weight_grad_operands=_bf16_vector_cell(inputs),
        )
