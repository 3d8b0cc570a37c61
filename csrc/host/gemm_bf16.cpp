#include "gemm_bf16.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "multiversion.h"

#if FRNN_HAVE_MULTIVERSION
#include <cpuid.h>
#include <immintrin.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define FRNN_HAVE_BF16_TIERS 1
#define FRNN_TARGET_AVX512BF16 \
  __attribute__((target("arch=x86-64-v4,avx512bf16")))
#define FRNN_TARGET_AMX \
  __attribute__((target("arch=x86-64-v4,avx512bf16,amx-tile,amx-bf16")))
#else
#define FRNN_HAVE_BF16_TIERS 0
#endif

namespace fusedrnn {
namespace host {

const char* bf16_tier_name(Bf16Tier tier) {
  switch (tier) {
    case Bf16Tier::kAmx:
      return "amx-bf16";
    case Bf16Tier::kAvx512Bf16:
      return "avx512-bf16";
    default:
      return "none";
  }
}

Bf16Tier choose_bf16_tier(bool cpu_has_v4, bool cpu_has_avx512bf16, bool cpu_has_amx,
                          const char* request) {
  Bf16Tier best = Bf16Tier::kNone;
  if (cpu_has_v4 && cpu_has_avx512bf16)
    best = cpu_has_amx ? Bf16Tier::kAmx : Bf16Tier::kAvx512Bf16;
  Bf16Tier ceiling = Bf16Tier::kAmx;
  if (request != nullptr) {
    if (std::strcmp(request, "baseline") == 0 || std::strcmp(request, "x86-64-v3") == 0 ||
        std::strcmp(request, "x86-64-v4") == 0)
      ceiling = Bf16Tier::kNone;
    if (std::strcmp(request, "avx512-bf16") == 0) ceiling = Bf16Tier::kAvx512Bf16;
  }
  return static_cast<int>(best) < static_cast<int>(ceiling) ? best : ceiling;
}

namespace {

#if FRNN_HAVE_BF16_TIERS
struct CpuBf16 {
  bool avx512bf16 = false, amx = false;
};
CpuBf16 detect() {
  CpuBf16 r;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    const bool amx_tile = (d >> 24) & 1u, amx_bf16 = (d >> 22) & 1u;
    // The OS must enable the tile state in XCR0 (bits 17, 18).
    bool os_tiles = false;
    unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
    if (__get_cpuid(1, &a1, &b1, &c1, &d1) && ((c1 >> 27) & 1u)) {  // OSXSAVE
      unsigned lo = 0, hi = 0;
      __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
      os_tiles = ((lo >> 17) & 3u) == 3u;
    }
    r.amx = amx_tile && amx_bf16 && os_tiles;
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) r.avx512bf16 = (a >> 5) & 1u;
  return r;
}

// Linux keeps AMX's tile data off until a process asks (once, for all its threads).
bool request_amx_permission() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}
#endif

}  // namespace

Bf16Tier bf16_tier() {
  static const Bf16Tier tier = [] {
#if FRNN_HAVE_BF16_TIERS
    __builtin_cpu_init();
    const CpuBf16 cpu = detect();
    Bf16Tier t = choose_bf16_tier(__builtin_cpu_supports("x86-64-v4"), cpu.avx512bf16, cpu.amx,
                                  std::getenv("FUSEDRNN_HOST_ISA"));
    if (t == Bf16Tier::kAmx && !request_amx_permission()) t = Bf16Tier::kAvx512Bf16;
    return t;
#else
    return Bf16Tier::kNone;
#endif
  }();
  return tier;
}

namespace {

FRNN_ALWAYS_INLINE void widen_bf16_mv_body(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(src[i]) << 16;
    std::memcpy(dst + i, &u, sizeof u);
  }
}
FRNN_ALWAYS_INLINE void narrow_bf16_mv_body(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits(src[i]);
}
FRNN_ALWAYS_INLINE void widen_f16_mv_body(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    _Float16 h;
    std::memcpy(&h, src + i, sizeof h);
    dst[i] = static_cast<float>(h);
  }
}
FRNN_ALWAYS_INLINE void narrow_f16_mv_body(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const _Float16 h = static_cast<_Float16>(src[i]);
    std::memcpy(dst + i, &h, sizeof h);
  }
}
#define FRNN_WIDEN_PARAMS (const uint16_t* src, float* dst, int64_t n)
#define FRNN_NARROW_PARAMS (const float* src, uint16_t* dst, int64_t n)
#define FRNN_CONVERT_ARGS (src, dst, n)
FRNN_DISPATCH(void, widen_bf16_mv, FRNN_WIDEN_PARAMS, FRNN_CONVERT_ARGS)
FRNN_DISPATCH(void, narrow_bf16_mv, FRNN_NARROW_PARAMS, FRNN_CONVERT_ARGS)
FRNN_DISPATCH(void, widen_f16_mv, FRNN_WIDEN_PARAMS, FRNN_CONVERT_ARGS)
FRNN_DISPATCH(void, narrow_f16_mv, FRNN_NARROW_PARAMS, FRNN_CONVERT_ARGS)

}  // namespace

void widen_bf16 FRNN_WIDEN_PARAMS { widen_bf16_mv FRNN_CONVERT_ARGS; }
void narrow_bf16 FRNN_NARROW_PARAMS { narrow_bf16_mv FRNN_CONVERT_ARGS; }
void widen_f16 FRNN_WIDEN_PARAMS { widen_f16_mv FRNN_CONVERT_ARGS; }
void narrow_f16 FRNN_NARROW_PARAMS { narrow_f16_mv FRNN_CONVERT_ARGS; }

namespace {

// A as bf16 in scratch.a: [Mp, Kp] (Mp = M rounded up to 16), zero beyond M rows / K columns.
#if FRNN_HAVE_BF16_TIERS
FRNN_TARGET_AVX512BF16
#endif
void round_a(int64_t M, int64_t K, int64_t Kp, const float* A, int64_t lda, Bf16Scratch& s,
             int64_t Mp) {
  if (s.a_rows != Mp || s.a_cols != Kp) {  // the padding stays zero from here on
    s.a.assign(static_cast<size_t>(Mp * Kp), 0);
    s.a_rows = Mp;
    s.a_cols = Kp;
  }
  for (int64_t m = 0; m < M; ++m) {
    uint16_t* dst = s.a.data() + m * Kp;
    const float* src = A + m * lda;
    for (int64_t k = 0; k < K; ++k) dst[k] = bf16_bits(src[k]);
  }
}

#if FRNN_HAVE_BF16_TIERS
// vdpbf16ps: a tile of Rows rows x 2 panels (32 columns) in 2 * Rows zmm accumulators; per
// pair of K, two B rows loaded, one 32-bit A pair broadcast per row.
template <int Rows>
FRNN_TARGET_AVX512BF16 inline void dp_tile(int64_t Kp, const uint16_t* a, const uint16_t* b0,
                                           const uint16_t* b1, float* c, int64_t ldc) {
  __m512 acc[Rows][2];
  for (int i = 0; i < Rows; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < Kp / 2; ++kp) {
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(b0 + kp * 32);
    const __m512bh w1 = (__m512bh)_mm512_loadu_si512(b1 + kp * 32);
    for (int i = 0; i < Rows; ++i) {
      uint32_t pair;
      std::memcpy(&pair, a + i * Kp + 2 * kp, sizeof pair);
      const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], x, w0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], x, w1);
    }
  }
  for (int i = 0; i < Rows; ++i) {
    _mm512_storeu_ps(c + i * ldc, acc[i][0]);
    _mm512_storeu_ps(c + i * ldc + 16, acc[i][1]);
  }
}

template <int Rows>
FRNN_TARGET_AVX512BF16 inline void dp_rows(int rows, int64_t Kp, const uint16_t* a,
                                           const uint16_t* b0, const uint16_t* b1, float* c,
                                           int64_t ldc) {
  if constexpr (Rows > 1) {
    if (rows < Rows) return dp_rows<Rows - 1>(rows, Kp, a, b0, b1, c, ldc);
  }
  dp_tile<Rows>(Kp, a, b0, b1, c, ldc);
}

FRNN_TARGET_AVX512BF16 void gemm_avx512bf16(int64_t M, const PackedBf16& b, const uint16_t* a,
                                            float* c, int64_t ldc) {
  constexpr int kRows = 8;
  for (int64_t p = 0; p < b.Np / 16; p += 2)
    for (int64_t m = 0; m < M; m += kRows)
      dp_rows<kRows>(static_cast<int>(std::min<int64_t>(kRows, M - m)), b.Kp, a + m * b.Kp,
                     b.panel(p), b.panel(p + 1), c + m * ldc + p * 16, ldc);
}

// AMX: every tile 16 rows x 64 bytes (A: 16 rows x 32 bf16 of K; B: 16 pairs of K x 16
// columns; C: 16 x 16 float32). C tiles 0-3 are a 2 x 2 block (two 16-row blocks of A in
// tiles 4, 5; two panels of B in tiles 6, 7), or 1 x 2 for the last odd row block. The tile
// configuration is loaded on every call (another library's AMX code may have changed it on
// this thread in between).
struct alignas(64) TileConfig {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

FRNN_TARGET_AMX void gemm_amx(int64_t Mp, const PackedBf16& b, const uint16_t* a, float* c,
                              int64_t ldc) {
  TileConfig cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  // The stores must reach memory before ldtilecfg reads it: in a function of its own, GCC 12
  // dropped the loop's stores (measured; an all-zero configuration, so the first tile
  // instruction raised #UD).
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
  const int64_t lda = b.Kp * 2, ldc_b = ldc * 4;  // bytes
  const int64_t kb_count = b.Kp / 32;
  for (int64_t mb = 0; mb < Mp / 16; mb += 2) {
    const bool two = mb + 1 < Mp / 16;
    const uint16_t* a0 = a + mb * 16 * b.Kp;
    const uint16_t* a1 = a0 + 16 * b.Kp;
    for (int64_t p = 0; p < b.Np / 16; p += 2) {
      const uint16_t* p0 = b.panel(p);
      const uint16_t* p1 = b.panel(p + 1);
      _tile_zero(0);
      _tile_zero(1);
      if (two) {
        _tile_zero(2);
        _tile_zero(3);
      }
      for (int64_t kb = 0; kb < kb_count; ++kb) {
        _tile_loadd(4, a0 + kb * 32, lda);
        _tile_loadd(6, p0 + kb * 16 * 32, 64);
        _tile_loadd(7, p1 + kb * 16 * 32, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if (two) {
          _tile_loadd(5, a1 + kb * 32, lda);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      float* c0 = c + mb * 16 * ldc + p * 16;
      _tile_stored(0, c0, ldc_b);
      _tile_stored(1, c0 + 16, ldc_b);
      if (two) {
        _tile_stored(2, c0 + 16 * ldc, ldc_b);
        _tile_stored(3, c0 + 16 * ldc + 16, ldc_b);
      }
    }
  }
  _tile_release();
}
#endif

}  // namespace

void gemm_bf16(int64_t M, const float* A, int64_t lda, const PackedBf16& b, float* C,
               int64_t ldc, Bf16Scratch& s) {
  if (M <= 0 || b.N <= 0) return;
  const int64_t Mp = bf16_padded_rows(M);
  round_a(M, b.K, b.Kp, A, lda, s, Mp);
  gemm_bf16_rounded(M, s.a.data(), b, C, ldc, s);
}

void gemm_bf16_rounded(int64_t M, const uint16_t* a, const PackedBf16& b, float* C, int64_t ldc,
                       Bf16Scratch& s) {
  if (M <= 0 || b.N <= 0) return;
  const int64_t Mp = bf16_padded_rows(M);
  const Bf16Tier tier = bf16_tier();
  // Straight into C where the kernel's padded rows and columns are C's own (N a multiple of
  // 32; for AMX, M of 16): no scratch and no copy (at bf16 C2 inference the copy was ~3 % of
  // perf's samples).
  const bool direct = b.Np == b.N && (tier != Bf16Tier::kAmx || Mp == M);
  float* c = C;
  int64_t ldo = ldc;
  if (!direct) {
    const size_t csize = static_cast<size_t>(Mp * b.Np);
    if (s.c.size() != csize) s.c.resize(csize);
    c = s.c.data();
    ldo = b.Np;
  }
#if FRNN_HAVE_BF16_TIERS
  switch (tier) {
    case Bf16Tier::kAmx:
      gemm_amx(Mp, b, a, c, ldo);
      break;
    case Bf16Tier::kAvx512Bf16:
      gemm_avx512bf16(M, b, a, c, ldo);
      break;
    default:
      throw std::logic_error("gemm_bf16 without a bf16 tier");
  }
#else
  (void)a;
  throw std::logic_error("gemm_bf16 without a bf16 tier");
#endif
  if (direct) return;
  for (int64_t m = 0; m < M; ++m)
    std::memcpy(C + m * ldc, c + m * b.Np, static_cast<size_t>(b.N) * sizeof(float));
}

}  // namespace host
}  // namespace fusedrnn
