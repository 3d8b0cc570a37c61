"""The weight-drop pass: ``dst = src * m_W`` over a contiguous ``[rows, cols]`` tensor.

The triton launcher runs it in place on ``dL/dW_hh`` after its GEMM, so that the gradient is
exactly zero where the forward dropped an entry of ``W_hh``. ``m_W`` is drawn element by
element by ``primitives.weight_drop_scale`` (the draw the recurrence kernels apply where
they load ``W_hh``); nothing mask-shaped is written.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .primitives import weight_drop_scale


@triton.jit(do_not_specialize=["rows", "cols", "key", "base_offset"])
def weight_drop_kernel(
    src_ptr,
    dst_ptr,  # may be src_ptr (in place)
    rows,
    cols,
    key,  # philox.weight_drop_key(seed)
    base_offset,  # philox.weight_drop_base_offset(layer, direction)
    p,
    keep_scale,  # 1 / (1 - p)
    BLOCK: tl.constexpr,
):
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = index < rows * cols
    value = tl.load(src_ptr + index, mask=inside, other=0.0).to(tl.float32)
    scale = weight_drop_scale(key, base_offset, index // cols, index % cols, p, keep_scale)
    tl.store(dst_ptr + index, (value * scale).to(dst_ptr.dtype.element_ty), mask=inside)
