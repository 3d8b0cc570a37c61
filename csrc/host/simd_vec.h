// The host's float32 vector math, for the kernels of multiversion.h's ISA builds (included by
// simd_math.cpp and cell_host.cpp only; every function is always inlined into a per-ISA kernel,
// so no call with the baseline's vector ABI exists).
//
// exp_parts: Cephes' expf polynomial and Cody-Waite range reduction, e^x = 2^n (1 + q), 2^n
// built from the rounding trick's bits (no compare, select or conversion); sigmoid =
// 1 / (1 + exp(-x)) as cells.cuh computes it, on x clamped to [-87, 89] (+inf from 88.38 on,
// so 0 exactly at saturation); tanh |x| = m / (m + 2) with m = e^(2|x|) - 1 from the same
// parts (no cancellation at small |x|), 2|x| clamped to 20 so +-1 at saturation, never
// inf / inf = NaN. NaN in gives NaN; +-inf give the limits. Over every float32 input:
// sigmoid 2.48 ulp (normal outputs), tanh 2.46 ulp (absolute error <= 8.93e-8).
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

// e^x = s (1 + q) with s = 2^n and q = e^r - 1 (x = n ln2 + r, |r| <= ln2 / 2, Cody-Waite),
// for x already clamped to [-87, 89] (so n + 127 is in [1, 255]): Cephes' expf polynomial,
// q = r + r^2 P(r) without its 1 (so e^x - 1 keeps its accuracy for small x). No comparison,
// select or conversion: n is rounded by the 1.5 * 2^23 trick, whose low mantissa bits are n's
// two's complement, so (bits << 23) + (127 << 23) is 2^n's pattern (+inf for n = 128, i.e.
// x >= 88.38, where the true e^x is within 2x of FLT_MAX). NaN -> q = NaN.
template <int L>
FRNN_ALWAYS_INLINE void exp_parts(VecF<L> xc, VecF<L>* s, VecF<L>* q) {
  using F = VecF<L>;
  using I = VecI<L>;
  const F magic = splat<L>(12582912.0f);  // 1.5 * 2^23
  const F t = xc * splat<L>(1.44269504088896341f) + magic;
  const F n = t - magic;
  const F r = (xc - n * splat<L>(0.693359375f)) - n * splat<L>(-2.12194440e-4f);
  // P(r) by Estrin's scheme, not Horner's: the vector cell is bound by the latency of its
  // sigmoid -> c -> tanh chain (the reorder buffer holds ~2 steps of 16 units), and this takes
  // 3 dependent operations off each exp's 5 (the cell 3-5 % faster, a standalone driver, 1
  // thread; every float32 input: tanh 2.42 -> 2.46 ulp, sigmoid unchanged).
  const F r2 = r * r;
  const F r4 = r2 * r2;
  const F p01 = splat<L>(1.9875691500e-4f) * r + splat<L>(1.3981999507e-3f);
  const F p23 = splat<L>(8.3334519073e-3f) * r + splat<L>(4.1665795894e-2f);
  const F p45 = splat<L>(1.6666665459e-1f) * r + splat<L>(5.0000001201e-1f);
  const F p = p01 * r4 + (p23 * r2 + p45);
  *q = p * r2 + r;
  *s = (F)((((I)t) << 23) + (I{} + (127 << 23)));
}

// exp for sigmoid's 1 + exp(-x) (not a general exp): x clamped to [-87, 89]: about 1 ulp on
// [-87, 88.37], exp(-87) ~ 1.6e-38 below (1 + that is 1), +inf from 88.38 on.
template <int L>
FRNN_ALWAYS_INLINE VecF<L> exp_vec(VecF<L> x) {
  using F = VecF<L>;
  const F lo = splat<L>(-87.0f), hi = splat<L>(89.0f);
  F xc = x < lo ? lo : x;  // NaN fails both tests and passes through
  xc = xc > hi ? hi : xc;
  F s, q;
  exp_parts<L>(xc, &s, &q);
  return s * (q + splat<L>(1.0f));  // not s q + s: inf * (q < 0) + inf would be NaN
}

// sigmoid = 1 / (1 + exp(-x)) as cells.cuh computes it: 1 for x > 17.4 (exactly), 0 for
// x < -88.37 (true value < 4e-39, subnormal), accurate (2.5 ulp) in between.
template <int L>
FRNN_ALWAYS_INLINE VecF<L> sigmoid_vec(VecF<L> x) {
  return splat<L>(1.0f) / (splat<L>(1.0f) + exp_vec<L>(-x));
}

// tanh |x| = m / (m + 2), m = e^(2|x|) - 1 = s q + (s - 1): no cancellation at small |x|
// (m ~ 2|x|, exact for subnormals), and at large |x| m's error cancels between the two
// terms. 2|x| clamped to 20 (tanh rounds to 1 from 9.02 on; m / (m + 2) is then exactly 1),
// so never inf / inf; the sign put back; NaN -> NaN.
template <int L>
FRNN_ALWAYS_INLINE VecF<L> tanh_vec(VecF<L> x) {
  using F = VecF<L>;
  using I = VecI<L>;
  const I sign_bit = I{} + INT32_MIN;
  const I sign = (I)x & sign_bit;
  F y = (F)((I)x & ~sign_bit);
  y = y + y;
  y = y > splat<L>(20.0f) ? splat<L>(20.0f) : y;
  F s, q;
  exp_parts<L>(y, &s, &q);
  const F m = s * q + (s - splat<L>(1.0f));
  return (F)((I)(m / (m + splat<L>(2.0f))) | sign);
}

}  // namespace
}  // namespace simd
}  // namespace host
}  // namespace fusedrnn
