#include "simd_math.h"

#include <cstring>

#include "multiversion.h"

// The vector helpers below pass and return 32-byte vectors; they are always inlined into the
// per-ISA kernels, so no call with the baseline's vector ABI exists.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace fusedrnn {
namespace host {
namespace {

constexpr int64_t kLanes = 8;
typedef float VecF __attribute__((vector_size(32)));
typedef float VecFU __attribute__((vector_size(32), aligned(4)));  // unaligned loads/stores
typedef int32_t VecI __attribute__((vector_size(32)));
typedef uint32_t VecU __attribute__((vector_size(32)));

FRNN_ALWAYS_INLINE VecF splat(float v) { return VecF{} + v; }
FRNN_ALWAYS_INLINE VecI splat_sign() { return VecI{} + INT32_MIN; }
// mask ? a : b, lane-wise (mask lanes are all ones or all zeros, as comparisons give).
FRNN_ALWAYS_INLINE VecF select(VecI mask, VecF a, VecF b) {
  return (VecF)((mask & (VecI)a) | (~mask & (VecI)b));
}

FRNN_ALWAYS_INLINE VecF exp_vec(VecF x) {
  constexpr float kOverflow = 88.72283935546875f;  // largest x with a finite expf(x)
  constexpr float kUnderflow = -103.97208404541016f;  // below: expf(x) rounds to 0
  const VecI nan = x != x;
  const VecI over = x > splat(kOverflow);
  const VecI under = x < splat(kUnderflow);
  VecF xc = select(over, splat(kOverflow), x);
  xc = select(under, splat(kUnderflow), xc);
  // x = n ln2 + r, |r| <= ln2 / 2; n rounded to nearest with the 1.5 * 2^23 trick.
  const VecF magic = splat(12582912.0f);
  const VecF n = (xc * splat(1.44269504088896341f) + magic) - magic;
  const VecF r = (xc - n * splat(0.693359375f)) - n * splat(-2.12194440e-4f);
  VecF p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * (r * r) + r + splat(1.0f);
  // 2^n as 2^(n/2) * 2^(n - n/2): both factors stay normal for n in [-150, 128].
  const VecI ni = __builtin_convertvector(n, VecI);
  const VecI n1 = ni >> 1;
  const VecI n2 = ni - n1;
  const VecF s1 = (VecF)(((VecU)(n1 + 127)) << 23);
  const VecF s2 = (VecF)(((VecU)(n2 + 127)) << 23);
  VecF y = p * s1 * s2;
  y = select(over, splat(__builtin_inff()), y);
  y = select(under, splat(0.0f), y);
  return select(nan, x, y);
}

FRNN_ALWAYS_INLINE VecF sigmoid_vec(VecF x) { return splat(1.0f) / (splat(1.0f) + exp_vec(-x)); }

FRNN_ALWAYS_INLINE VecF tanh_vec(VecF x) {
  const VecI sign = (VecI)x & splat_sign();
  const VecF a = (VecF)((VecI)x & ~splat_sign());
  // |x| < 0.625: x + x^3 P(x^2) (Cephes tanhf), accurate where 1 - e would cancel.
  const VecF z = x * x;
  VecF p = splat(-5.70498872745e-3f);
  p = p * z + splat(2.06390887954e-2f);
  p = p * z + splat(-5.37397155531e-2f);
  p = p * z + splat(1.33314422036e-1f);
  p = p * z + splat(-3.33332819422e-1f);
  const VecF small = p * z * x + x;
  // |x| >= 0.625: 1 - 2 / (1 + exp(2|x|)); exp overflowing to inf gives 1, never NaN, and
  // the rounding error of the quotient (<= 0.45) is at most half an ulp of the result.
  const VecF e = exp_vec(splat(2.0f) * a);
  const VecF large = (VecF)((VecI)(splat(1.0f) - splat(2.0f) / (splat(1.0f) + e)) | sign);
  return select(a < splat(0.625f), small, large);  // NaN: the large branch, exp(NaN) = NaN
}

template <VecF (*F)(VecF)>
FRNN_ALWAYS_INLINE void apply_inplace(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    VecFU* p = reinterpret_cast<VecFU*>(x + i);
    *p = F(*p);
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
