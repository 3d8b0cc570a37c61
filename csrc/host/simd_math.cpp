#include "simd_math.h"

#include <cstring>

#include "multiversion.h"
#include "simd_vec.h"

namespace fusedrnn {
namespace host {
namespace {

constexpr int kLanes = 8;
using VecF = simd::VecF<kLanes>;

FRNN_ALWAYS_INLINE VecF sigmoid_vec(VecF x) { return simd::sigmoid_vec<kLanes>(x); }
FRNN_ALWAYS_INLINE VecF tanh_vec(VecF x) { return simd::tanh_vec<kLanes>(x); }

template <VecF (*F)(VecF)>
FRNN_ALWAYS_INLINE void apply_inplace(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    simd::store<kLanes>(x + i, F(simd::load<kLanes>(x + i, kLanes)), kLanes);
  }
  if (i < n) {
    float tail[kLanes] = {};
    std::memcpy(tail, x + i, sizeof(float) * static_cast<size_t>(n - i));
    VecF v;
    std::memcpy(&v, tail, sizeof(v));
    v = F(v);
    std::memcpy(x + i, &v, sizeof(float) * static_cast<size_t>(n - i));
  }
}

FRNN_ALWAYS_INLINE void sigmoid_f32_body(float* x, int64_t n) {
  apply_inplace<sigmoid_vec>(x, n);
}
FRNN_ALWAYS_INLINE void tanh_f32_body(float* x, int64_t n) { apply_inplace<tanh_vec>(x, n); }

FRNN_DISPATCH(void, sigmoid_f32, (float* x, int64_t n), (x, n))
FRNN_DISPATCH(void, tanh_f32, (float* x, int64_t n), (x, n))

}  // namespace

void sigmoid_inplace(float* x, int64_t n) { sigmoid_f32(x, n); }
void tanh_inplace(float* x, int64_t n) { tanh_f32(x, n); }

}  // namespace host
}  // namespace fusedrnn
