// The host's per-step mask draw (mask_rows_host.h). Philox4x32-10 in 16 (AVX-512) or 8 (AVX2)
// uint32 lanes, one element's counter (lo32, hi32 of its offset, 0, 0) per lane, the key words
// broadcast; each 32x32 -> 64 product is two vpmuludq (even and odd lanes) recombined by
// blends. The lanes' offsets are consecutive, so a chunk whose low words would wrap (a carry
// into the high word inside the chunk: at most once per 2^32 offsets) is drawn per element.
// The uniform is philox_uint_to_uniform's: x ^ (x >> 31) (= ~x for negative x), converted to
// float (round to nearest, as the scalar conversion) and multiplied by the same constant.
#include "mask_rows_host.h"

#include <cstdint>

#include "fusedrnn/philox.cuh"
#include "multiversion.h"

#if FRNN_HAVE_MULTIVERSION
#include <immintrin.h>
// GCC 12's avx512fintrin.h builds its "undefined" vectors from an uninitialised variable
// (__Y), which -Wmaybe-uninitialized reports at every inlined intrinsic.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fusedrnn {
namespace host {
namespace {

// The per-element draw of units [u0 + k0, u0 + k1) of one row (the reference the lanes match).
void below_scalar(uint64_t seed, uint64_t base, int64_t t, int64_t b, int64_t u0, int64_t k0,
                  int64_t k1, float threshold, uint8_t* below) {
  for (int64_t k = k0; k < k1; ++k)
    below[k] = mask_uniform(seed, base, t, b, u0 + k) < threshold ? 1 : 0;
}

// Whether the low words of offsets off, off + 1, ..., off + lanes - 1 wrap (a carry inside).
bool low_word_wraps(uint64_t off, int lanes) {
  return static_cast<uint32_t>(off) > UINT32_MAX - static_cast<uint32_t>(lanes - 1);
}

void mask_below_rows_base(uint64_t seed, uint64_t base, int64_t t, int64_t rows, int64_t u0,
                          int64_t n, float threshold, uint8_t* below) {
  for (int64_t b = 0; b < rows; ++b)
    below_scalar(seed, base, t, b, u0, 0, n, threshold, below + b * n);
}

#if FRNN_HAVE_MULTIVERSION

// lo, hi of m * a per 32-bit lane (m: a broadcast constant).
FRNN_TARGET_V4 FRNN_ALWAYS_INLINE void mulhilo16(__m512i m, __m512i a, __m512i* lo,
                                                 __m512i* hi) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

FRNN_TARGET_V4 void mask_below_rows_v4(uint64_t seed, uint64_t base, int64_t t, int64_t rows,
                                       int64_t u0, int64_t n, float threshold, uint8_t* below) {
  constexpr int kLanes = 16;
  const __m512i round_a = _mm512_set1_epi32(static_cast<int>(kPhiloxRoundA));
  const __m512i round_b = _mm512_set1_epi32(static_cast<int>(kPhiloxRoundB));
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 scale = _mm512_set1_ps(kUintToUniformScale);
  const __m512 limit = _mm512_set1_ps(threshold);
  __m512i key0[kPhiloxRounds], key1[kPhiloxRounds];
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kPhiloxRounds; ++r, k0 += kPhiloxKeyA, k1 += kPhiloxKeyB) {
    key0[r] = _mm512_set1_epi32(static_cast<int>(k0));
    key1[r] = _mm512_set1_epi32(static_cast<int>(k1));
  }
  for (int64_t b = 0; b < rows; ++b) {
    uint8_t* row = below + b * n;
    for (int64_t k = 0; k < n; k += kLanes) {
      const int64_t m = n - k < kLanes ? n - k : kLanes;
      const uint64_t off = mask_offset(base, t, b, u0 + k);
      if (low_word_wraps(off, kLanes)) {
        below_scalar(seed, base, t, b, u0, k, k + m, threshold, row);
        continue;
      }
      __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(off)), lane);
      __m512i c1 = _mm512_set1_epi32(static_cast<int>(off >> 32));
      __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
      for (int r = 0; r < kPhiloxRounds; ++r) {
        __m512i lo_a, hi_a, lo_b, hi_b;
        mulhilo16(round_b, c2, &lo_b, &hi_b);
        mulhilo16(round_a, c0, &lo_a, &hi_a);
        c0 = _mm512_xor_si512(_mm512_xor_si512(hi_b, c1), key0[r]);
        c2 = _mm512_xor_si512(_mm512_xor_si512(hi_a, c3), key1[r]);
        c1 = lo_b;
        c3 = lo_a;
      }
      const __m512i x = _mm512_xor_si512(c0, _mm512_srai_epi32(c0, 31));
      const __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(x), scale);
      const __mmask16 hit = _mm512_cmp_ps_mask(u, limit, _CMP_LT_OQ);
      const __m128i bytes = _mm512_cvtepi32_epi8(_mm512_maskz_set1_epi32(hit, 1));
      _mm_mask_storeu_epi8(row + k, static_cast<__mmask16>((1u << m) - 1u), bytes);
    }
  }
}

FRNN_TARGET_V3 FRNN_ALWAYS_INLINE void mulhilo8(__m256i m, __m256i a, __m256i* lo,
                                                __m256i* hi) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

FRNN_TARGET_V3 void mask_below_rows_v3(uint64_t seed, uint64_t base, int64_t t, int64_t rows,
                                       int64_t u0, int64_t n, float threshold, uint8_t* below) {
  constexpr int kLanes = 8;
  const __m256i round_a = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundA));
  const __m256i round_b = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundB));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 scale = _mm256_set1_ps(kUintToUniformScale);
  const __m256 limit = _mm256_set1_ps(threshold);
  __m256i key0[kPhiloxRounds], key1[kPhiloxRounds];
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kPhiloxRounds; ++r, k0 += kPhiloxKeyA, k1 += kPhiloxKeyB) {
    key0[r] = _mm256_set1_epi32(static_cast<int>(k0));
    key1[r] = _mm256_set1_epi32(static_cast<int>(k1));
  }
  for (int64_t b = 0; b < rows; ++b) {
    uint8_t* row = below + b * n;
    for (int64_t k = 0; k < n; k += kLanes) {
      const int64_t m = n - k < kLanes ? n - k : kLanes;
      const uint64_t off = mask_offset(base, t, b, u0 + k);
      if (low_word_wraps(off, kLanes)) {
        below_scalar(seed, base, t, b, u0, k, k + m, threshold, row);
        continue;
      }
      __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(off)), lane);
      __m256i c1 = _mm256_set1_epi32(static_cast<int>(off >> 32));
      __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
      for (int r = 0; r < kPhiloxRounds; ++r) {
        __m256i lo_a, hi_a, lo_b, hi_b;
        mulhilo8(round_b, c2, &lo_b, &hi_b);
        mulhilo8(round_a, c0, &lo_a, &hi_a);
        c0 = _mm256_xor_si256(_mm256_xor_si256(hi_b, c1), key0[r]);
        c2 = _mm256_xor_si256(_mm256_xor_si256(hi_a, c3), key1[r]);
        c1 = lo_b;
        c3 = lo_a;
      }
      const __m256i x = _mm256_xor_si256(c0, _mm256_srai_epi32(c0, 31));
      const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(x), scale);
      const unsigned hit =
          static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(u, limit, _CMP_LT_OQ)));
      for (int64_t i = 0; i < m; ++i) row[k + i] = static_cast<uint8_t>((hit >> i) & 1u);
    }
  }
}

#endif  // FRNN_HAVE_MULTIVERSION

}  // namespace

void mask_below_rows(uint64_t seed, uint64_t base, int64_t t, int64_t rows, int64_t u0, int64_t n,
                     float threshold, uint8_t* below) {
#if FRNN_HAVE_MULTIVERSION
  switch (runtime_isa()) {
    case Isa::kX86_64_V4:
      return mask_below_rows_v4(seed, base, t, rows, u0, n, threshold, below);
    case Isa::kX86_64_V3:
      return mask_below_rows_v3(seed, base, t, rows, u0, n, threshold, below);
    default:
      break;
  }
#endif
  mask_below_rows_base(seed, base, t, rows, u0, n, threshold, below);
}

}  // namespace host
}  // namespace fusedrnn
