// The host's float32 vector math, for the kernels of multiversion.h's ISA builds (included by
// simd_math.cpp and cell_host.cpp only; every function is always inlined into a per-ISA kernel,
// so no call with the baseline's vector ABI exists).
//
// exp: Cephes' expf polynomial and Cody-Waite range reduction on x clamped to [-87, 89], 2^n
// built from the rounding trick's bits (no compare, select or conversion; +inf from 88.38 on);
// sigmoid = 1 / (1 + exp(-x)) as cells.cuh computes it; tanh from an odd polynomial for
// |x| < 0.625 and 1 - 2 / (1 + exp(2|x|)) above, so a large |x| gives +-1, never
// inf / inf = NaN. NaN in gives NaN; +-inf give the limits. Over every float32 input:
// sigmoid 2.48 ulp (normal outputs; torch's own 1.97), tanh 1.37 ulp (torch's 0.56).
// The lane count L (8: 32-byte vectors, 16: 64-byte) changes nothing per lane.
#pragma once

#include <cstdint>
#include <cstring>

#include "multiversion.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace fusedrnn {
namespace host {
namespace simd {
namespace {  // internal to each including file: no COMDAT copy shared between ISA builds

template <int L>
struct VecTypes;
template <>
struct VecTypes<8> {
  typedef float F __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
  typedef uint32_t U __attribute__((vector_size(32)));
  typedef uint8_t M __attribute__((vector_size(8)));
};
template <>
struct VecTypes<16> {
  typedef float F __attribute__((vector_size(64)));
  typedef int32_t I __attribute__((vector_size(64)));
  typedef uint32_t U __attribute__((vector_size(64)));
  typedef uint8_t M __attribute__((vector_size(16)));
};

template <int L>
using VecF = typename VecTypes<L>::F;
template <int L>
using VecI = typename VecTypes<L>::I;
template <int L>
using VecU = typename VecTypes<L>::U;

template <int L>
FRNN_ALWAYS_INLINE VecF<L> splat(float v) {
  return VecF<L>{} + v;
}
// mask ? a : b, lane-wise (mask lanes are all ones or all zeros, as comparisons give).
template <int L>
FRNN_ALWAYS_INLINE VecF<L> select(VecI<L> mask, VecF<L> a, VecF<L> b) {
  return (VecF<L>)((mask & (VecI<L>)a) | (~mask & (VecI<L>)b));
}

// The first k <= L floats at p (lanes k.. zero) / stored to p.
template <int L>
FRNN_ALWAYS_INLINE VecF<L> load(const float* p, int64_t k) {
  VecF<L> v;
  if (k == L) {
    std::memcpy(&v, p, sizeof v);
  } else {
    v = VecF<L>{};
    std::memcpy(&v, p, sizeof(float) * static_cast<size_t>(k));
  }
  return v;
}
template <int L>
FRNN_ALWAYS_INLINE void store(float* p, VecF<L> v, int64_t k) {
  if (k == L) {
    std::memcpy(p, &v, sizeof v);
  } else {
    std::memcpy(p, &v, sizeof(float) * static_cast<size_t>(k));
  }
}
// The first k <= L bytes at p (0 or 1) as floats 0.0 / 1.0.
template <int L>
FRNN_ALWAYS_INLINE VecF<L> load_bytes(const uint8_t* p, int64_t k) {
  typename VecTypes<L>::M m;
  if (k == L) {
    std::memcpy(&m, p, sizeof m);
  } else {
    m = typename VecTypes<L>::M{};
    std::memcpy(&m, p, static_cast<size_t>(k));
  }
  return __builtin_convertvector(m, VecF<L>);
}

// exp for the activations below (not a general exp): x clamped to [-87, 89], so 2^n is one
// exponent field, n + 127 in [1, 255]: exp(x) for x in [-87, 88.37] (Cephes' expf polynomial,
// Cody-Waite reduction, about 1 ulp), exp(-87) ~ 1.6e-38 below (1 + that is 1: the callers
// only add it to 1 or divide by it), and +inf from 88.38 on (the exponent field 255, mantissa
// 0: n = 128), where the true value is within 2x of FLT_MAX; NaN -> NaN. No comparison, no
// select, no conversion: n comes from the 1.5 * 2^23 rounding trick, whose low mantissa bits
// are n's two's complement, so (bits << 23) + (127 << 23) is 2^n's bit pattern.
template <int L>
FRNN_ALWAYS_INLINE VecF<L> exp_vec(VecF<L> x) {
  using F = VecF<L>;
  using I = VecI<L>;
  const F lo = splat<L>(-87.0f), hi = splat<L>(89.0f);
  F xc = x < lo ? lo : x;  // NaN fails both tests and passes through
  xc = xc > hi ? hi : xc;
  const F magic = splat<L>(12582912.0f);  // 1.5 * 2^23
  const F t = xc * splat<L>(1.44269504088896341f) + magic;
  const F n = t - magic;
  const F r = (xc - n * splat<L>(0.693359375f)) - n * splat<L>(-2.12194440e-4f);
  F p = splat<L>(1.9875691500e-4f);
  p = p * r + splat<L>(1.3981999507e-3f);
  p = p * r + splat<L>(8.3334519073e-3f);
  p = p * r + splat<L>(4.1665795894e-2f);
  p = p * r + splat<L>(1.6666665459e-1f);
  p = p * r + splat<L>(5.0000001201e-1f);
  p = p * r + splat<L>(1.0f);
  p = p * r + splat<L>(1.0f);
  const F scale = (F)((((I)t) << 23) + (I{} + (127 << 23)));
  return p * scale;
}

// sigmoid = 1 / (1 + exp(-x)) as cells.cuh computes it: 1 for x > 87 (exactly), 0 for
// x < -88.37 (true value < 4e-39, subnormal), accurate (~1.5 ulp) in between.
template <int L>
FRNN_ALWAYS_INLINE VecF<L> sigmoid_vec(VecF<L> x) {
  return splat<L>(1.0f) / (splat<L>(1.0f) + exp_vec<L>(-x));
}

template <int L>
FRNN_ALWAYS_INLINE VecF<L> tanh_vec(VecF<L> x) {
  using F = VecF<L>;
  using I = VecI<L>;
  const I sign_bit = I{} + INT32_MIN;
  const I sign = (I)x & sign_bit;
  const F a = (F)((I)x & ~sign_bit);
  // |x| < 0.625: x + x^3 P(x^2) (Cephes tanhf), accurate where 1 - e would cancel.
  const F z = x * x;
  F p = splat<L>(-5.70498872745e-3f);
  p = p * z + splat<L>(2.06390887954e-2f);
  p = p * z + splat<L>(-5.37397155531e-2f);
  p = p * z + splat<L>(1.33314422036e-1f);
  p = p * z + splat<L>(-3.33332819422e-1f);
  const F small = p * z * x + x;
  // |x| >= 0.625: 1 - 2 / (1 + exp(2|x|)); exp gives inf from |x| = 44.19 on, so 1, never
  // NaN, and the rounding error of the quotient (<= 0.45) is at most half an ulp of the result.
  const F e = exp_vec<L>(splat<L>(2.0f) * a);
  const F large = (F)((I)(splat<L>(1.0f) - splat<L>(2.0f) / (splat<L>(1.0f) + e)) | sign);
  return a < splat<L>(0.625f) ? small : large;  // NaN: the large branch, exp(NaN) = NaN
}

}  // namespace
}  // namespace simd
}  // namespace host
}  // namespace fusedrnn
