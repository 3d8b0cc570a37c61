// The host backend's bfloat16 per-step product: C[M, N] = bf16(A)[M, K] * B[K, N], B packed
// once per call in bfloat16, A (h_{t-1} in the forward, the step's gate gradients in the
// backward) rounded to bfloat16 each step (as torch's and cuDNN's bf16 RNNs do), float32
// accumulation. The bfloat16 layers' cell state and everything else stay float32
// (recurrence_host.cpp's widened path); only the recurrent GEMM's operands are bf16.
//
// Tiers (run-time dispatch, one per process, like multiversion.h's builds):
//   amx-bf16     AMX tiles (tdpbf16ps, 16x16x32 per instruction); needs Linux's
//                arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) once per process (if
//                refused, the next tier runs);
//   avx512-bf16  vdpbf16ps (pairs of K per 32-bit lane; Intel Sapphire Rapids, AMD Zen 4/5);
//   none         the float32 kernel (gemm.cpp) on the exact float32 copies: every other CPU.
// FUSEDRNN_HOST_ISA is the one knob for both dispatches: its levels in order are baseline <
// x86-64-v3 < x86-64-v4 < avx512-bf16 < amx-bf16, a value sets a ceiling (x86-64-v4 and below:
// no bf16 tier, the float32 kernel), the CPU's best is never exceeded, and an unset or unknown
// value sets none. The code is compiled with per-function target attributes, so the build
// needs no -march flag.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gemm.h"  // AlignedVector

namespace fusedrnn {
namespace host {

enum class Bf16Tier : int { kNone = 0, kAvx512Bf16 = 1, kAmx = 2 };

const char* bf16_tier_name(Bf16Tier tier);

// The tier for a CPU with these features and a FUSEDRNN_HOST_ISA value (nullptr: unset).
// Pure, so the rule is testable on any machine; the AMX permission is asked separately.
Bf16Tier choose_bf16_tier(bool cpu_has_v4, bool cpu_has_avx512bf16, bool cpu_has_amx,
                          const char* request);

// This process's tier (decided once; asks for the AMX permission when AMX would be chosen).
Bf16Tier bf16_tier();
inline const char* bf16_variant() { return bf16_tier_name(bf16_tier()); }

// B packed in bfloat16 pairs of K: K padded to Kp (a multiple of 32), N to Np (a multiple of
// 32, two 16-column panels); panel p (columns 16p .. 16p + 15) is Kp / 2 rows of 32 values,
// row kp holding (B[2kp][n], B[2kp + 1][n]) for its 16 columns n in turn. One row is one
// vdpbf16ps operand, and 16 rows are one AMX B tile (its "VNNI" layout).
struct PackedBf16 {
  int64_t K = 0, N = 0, Kp = 0, Np = 0;
  AlignedVector<uint16_t> data;  // on a cache line, as gemm.h's PackedB
  bool empty() const { return data.empty(); }
  const uint16_t* panel(int64_t p) const { return data.data() + p * (Kp / 2) * 32; }
};

// float32 -> bfloat16 bits, round to nearest even, NaN stays NaN (quieted). Branch-free, so
// that loops of it vectorise (round_a: the backward rounds the step's whole da, B x G·H, in
// every thread).
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x0040u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// The padded sizes of the bf16 product's operands: K to a multiple of 32 (PackedBf16::Kp, A's
// row length), A's rows M to a multiple of 16 (an AMX tile's rows; gemm_bf16_rounded's Mp).
inline int64_t bf16_padded_k(int64_t K) { return (K + 31) / 32 * 32; }
inline int64_t bf16_padded_rows(int64_t M) { return (M + 15) / 16 * 16; }

// Conversions of n contiguous values between 16-bit storage (bfloat16 / IEEE float16 bits) and
// float32, vectorised (multiversion.h's builds): the widened path's copies at the boundary of a
// call. bfloat16 rounds to nearest even (NaN stays NaN); float16 is the compiler's _Float16.
void widen_bf16(const uint16_t* src, float* dst, int64_t n);
void narrow_bf16(const float* src, uint16_t* dst, int64_t n);
void widen_f16(const uint16_t* src, float* dst, int64_t n);
void narrow_f16(const float* src, uint16_t* dst, int64_t n);

// Packs B[k][n] = column(n)[k * k_stride] (k < K, n < N; as gemm.h's pack_b), rounded to bf16.
template <class Column>
PackedBf16 pack_b_bf16(int64_t K, int64_t N, int64_t k_stride, Column column) {
  PackedBf16 b;
  b.K = K;
  b.N = N;
  b.Kp = bf16_padded_k(K);
  b.Np = (N + 31) / 32 * 32;
  b.data.assign(static_cast<size_t>(b.Kp * b.Np), 0);
  // A column rounded at once (narrow_bf16, vectorised, where its K values are contiguous),
  // then placed a pair of K (4 bytes) at a time: the element-wise loop was ~5 % of perf's
  // samples of a bf16 C2 inference call (the row split packs every column in every thread).
  std::vector<uint16_t> rounded(static_cast<size_t>(b.Kp), 0);
  for (int64_t n = 0; n < N; ++n) {
    const float* src = column(n);
    if (k_stride == 1) {
      narrow_bf16(src, rounded.data(), K);
    } else {
      for (int64_t k = 0; k < K; ++k) rounded[k] = bf16_bits(src[k * k_stride]);
    }
    uint16_t* dst = b.data.data() + (n / 16) * (b.Kp / 2) * 32 + (n % 16) * 2;
    for (int64_t kp = 0; kp < (K + 1) / 2; ++kp) std::memcpy(dst + kp * 32, &rounded[2 * kp], 4);
  }
  return b;
}

// A thread's buffers for gemm_bf16 (A in bf16, the padded C), reused across steps.
struct Bf16Scratch {
  int64_t a_rows = 0, a_cols = 0;  // a's shape (its padding is zeroed once per shape)
  AlignedVector<uint16_t> a;  // on a cache line: whole 64-byte rows per load
  AlignedVector<float> c;
};

// C[M, N] = bf16(A) * B (C's row stride ldc; A's lda), B = b.N columns, K = b.K, with the
// process's tier (which must not be kNone).
void gemm_bf16(int64_t M, const float* A, int64_t lda, const PackedBf16& b, float* C,
               int64_t ldc, Bf16Scratch& scratch);
// The same with A already in bf16 as gemm_bf16 lays it out: a[Mp, b.Kp] (Mp = M rounded up to
// 16), zero beyond M rows and b.K columns (the forward's bf16 exchange buffer, which the cell
// writes rounded, so no thread rounds the whole of h each step).
void gemm_bf16_rounded(int64_t M, const uint16_t* a, const PackedBf16& b, float* C, int64_t ldc,
                       Bf16Scratch& scratch);

}  // namespace host
}  // namespace fusedrnn
