// Weight drop on the host: philox.cuh's draw (the same inline function the CUDA pass calls)
// for a row segment of W_hh, 16 columns per fixed-length loop that the compiler vectorises,
// built per ISA level (multiversion.h): 2.6 ns per element on one EPYC core (0.68 ms per
// 1024 x 256), 2.4x the per-element draw; 16 rather than 64 so that narrow weights (H = 32)
// waste no draws (a hand-written structure-of-arrays copy of the rounds reached 1.5 ns, not
// worth a second definition of Philox).
#include "weight_drop_host.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "fusedrnn/philox.cuh"
#include "multiversion.h"

namespace fusedrnn {
namespace host {
namespace {

constexpr int kChunk = 16;  // columns drawn together (fixed trip count: vectorisable)

// u[i] = uniform number of W_hh element (row, col0 + i), i < kChunk: philox.cuh's draw, inlined
// into a fixed-length loop that the compiler vectorises.
FRNN_ALWAYS_INLINE void weight_uniforms_body(uint64_t key, uint64_t base, int64_t row,
                                             int64_t col0, float* u) {
  for (int i = 0; i < kChunk; ++i) u[i] = mask_uniform(key, base, 0, row, col0 + i);
}

FRNN_DISPATCH(void, weight_uniforms,
              (uint64_t key, uint64_t base, int64_t row, int64_t col0, float* u),
              (key, base, row, col0, u))

template <class T>
void row_impl(uint64_t key, uint64_t base, double p, int64_t row, int64_t col0, int64_t n,
              const T* src, T* dst) {
  const float threshold = static_cast<float>(p);
  const T keep_scale = T(1) / static_cast<T>(1.0 - p);
  float u[kChunk];
  for (int64_t start = 0; start < n; start += kChunk) {
    weight_uniforms(key, base, row, col0 + start, u);
    const int64_t m = std::min<int64_t>(kChunk, n - start);
    for (int64_t i = 0; i < m; ++i)
      dst[start + i] = src[start + i] * (u[i] < threshold ? T(0) : keep_scale);
  }
}

template <class T>
void apply(const WeightDropParams& p) {
  const T* src = static_cast<const T*>(p.src);
  T* dst = static_cast<T*>(p.dst);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (int64_t r = 0; r < p.rows; ++r)
    row_impl<T>(p.key, p.base, p.p, r, 0, p.cols, src + r * p.cols, dst + r * p.cols);
}

}  // namespace

void weight_drop_row(uint64_t key, uint64_t base, double p, int64_t row, int64_t col0,
                     int64_t n, const float* src, float* dst) {
  row_impl<float>(key, base, p, row, col0, n, src, dst);
}
void weight_drop_row(uint64_t key, uint64_t base, double p, int64_t row, int64_t col0,
                     int64_t n, const double* src, double* dst) {
  row_impl<double>(key, base, p, row, col0, n, src, dst);
}

void weight_drop_apply(const WeightDropParams& p) {
  if (!(p.p > 0.0 && p.p < 1.0))
    throw std::invalid_argument("fusedrnn weight_drop_apply: p must be in (0, 1)");
  if (p.dtype == kFloat32) {
    apply<float>(p);
  } else if (p.dtype == kFloat64) {
    apply<double>(p);
  } else {
    throw std::invalid_argument("fusedrnn host weight_drop_apply: dtype must be float32/float64");
  }
}

}  // namespace host
}  // namespace fusedrnn
