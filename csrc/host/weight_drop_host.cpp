// dst = src * (keep-scaled weight-drop mask), one OpenMP loop over the rows (params.h).
#include "weight_drop_host.h"

#include <cstdint>
#include <stdexcept>

#include "fusedrnn/philox.cuh"

namespace fusedrnn {
namespace host {
namespace {

template <class T>
void apply(const WeightDropParams& p) {
  const T* src = static_cast<const T*>(p.src);
  T* dst = static_cast<T*>(p.dst);
  const float threshold = static_cast<float>(p.p);
  const T keep_scale = T(1) / static_cast<T>(1.0 - p.p);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t c = 0; c < p.cols; ++c)
      dst[r * p.cols + c] =
          src[r * p.cols + c] * weight_drop_scale(p.key, p.base, r, c, threshold, keep_scale);
}

}  // namespace

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
