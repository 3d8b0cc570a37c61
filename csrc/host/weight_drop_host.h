// The host backend's weight drop (DropConnect on W_hh; philox.cuh's draw, a row segment at a
// time so that the Philox rounds vectorise).
#pragma once

#include <cstdint>

#include "fusedrnn/params.h"

namespace fusedrnn {
namespace host {

// dst[i] = src[i] * weight_drop_scale(key, base, row, col0 + i, p, 1 / (1 - p)) for i < n:
// the segment [col0, col0 + n) of W_hh's row `row` as the recurrence uses it (dst may be src).
// The one host primitive: the packs of both kernels and the dW_hh pass call it.
void weight_drop_row(uint64_t key, uint64_t base, double p, int64_t row, int64_t col0,
                     int64_t n, const float* src, float* dst);
void weight_drop_row(uint64_t key, uint64_t base, double p, int64_t row, int64_t col0,
                     int64_t n, const double* src, double* dst);

// dst = src * m_W over a dense [rows, cols] tensor (params.h), OpenMP over rows.
void weight_drop_apply(const WeightDropParams& p);

}  // namespace host
}  // namespace fusedrnn
