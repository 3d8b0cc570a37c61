#include "gemm.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "multiversion.h"

namespace fusedrnn {
namespace host {
namespace {

// Vectors of `Bytes` bytes of T, and the same with element alignment for unaligned loads
// straight from memory (a memcpy into a vector array can compile to narrower stores plus a
// wide reload from the stack, which stalls on store forwarding every k step).
template <class T, int Bytes>
struct Vec {
  typedef T type __attribute__((vector_size(Bytes)));
  typedef T unaligned __attribute__((vector_size(Bytes), aligned(sizeof(T))));
};

// The tile of C one micro-kernel call keeps in registers: Rows rows x Panels panels, each
// panel kPanel columns in vectors of Bytes bytes. AVX2 (16 registers): 6 x 1 panel of 2
// ymm = 12 accumulators; AVX-512 (32 registers): 8 x 2 panels of 1 zmm = 16 accumulators,
// so each k step loads 2 vectors of B for 16 FMAs. One row (B = 1, a matrix-vector product):
// 1 x 8 panels, eight independent accumulators to cover the FMA latency.
template <int Bytes, int Rows, int Panels>
struct Tile {
  static constexpr int kBytes = Bytes;
  static constexpr int64_t kRows = Rows;
  static constexpr int64_t kPanels = Panels;
};

// K block: C is read and written once per block. 512 measured faster than 256 at C5
// (K = 512: one block instead of two; 12 of 12 paired A/Bs, inference -2.5 % at the median,
// training -1 %; 128 slower still) although a strip (512 x 128 B with AVX-512's tile) is then
// twice Zen 4's L1: it streams from L2, the next one prefetched (docs/design.md §5.4).
constexpr int64_t kBlockK = 512;
constexpr int64_t kOneRowPanels = 8;  // the one-row tile's panels (and group: packed_group)
// gemm_tiles prefetches the next panel group's strip when the packed B has at least this many
// bytes (about the L2 of the CPUs measured: Zen 4 1 MiB, Xeon 2 MiB).
constexpr int64_t kPrefetchBytes = int64_t(1) << 20;

// C tile [Shape::kRows, cols <= Panels * kPanel] (+)= A[Shape::kRows, K] * panels[K, ...]:
// panel q of the tile starts kPanel elements after panel q - 1, and row k of each R elements
// (a row of the layout's group) after row k - 1. A full-width tile is stored straight from
// the accumulators; only a tile at the right edge of C (cols < the tile's width) goes through
// a copy on the stack. With Prefetch, each k step also prefetches row k of `next` (the strip
// the following tiles read: gemm_tiles).
template <class T, class Shape, int64_t R, bool Prefetch = false>
FRNN_ALWAYS_INLINE void micro_kernel(int64_t K, const T* A, int64_t lda, const T* panel,
                                     T* C, int64_t ldc, int64_t cols, bool accumulate,
                                     const T* next = nullptr) {
  using V = typename Vec<T, Shape::kBytes>::type;
  using VU = typename Vec<T, Shape::kBytes>::unaligned;
  constexpr int64_t P = GemmPanel<T>::kWidth;
  constexpr int64_t L = static_cast<int64_t>(sizeof(V) / sizeof(T));
  constexpr int64_t PV = P / L;  // vectors per panel row
  constexpr int64_t NV = Shape::kPanels * PV;
  constexpr int64_t MR = Shape::kRows;
  V acc[MR][NV];
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t v = 0; v < NV; ++v) acc[i][v] = V{};
  for (int64_t k = 0; k < K; ++k) {
    if constexpr (Prefetch) {
      for (int64_t byte = 0; byte < R * static_cast<int64_t>(sizeof(T)); byte += 64)
        __builtin_prefetch(reinterpret_cast<const char*>(next + k * R) + byte, 0, 3);
    }
    V b[NV];
    for (int64_t q = 0; q < Shape::kPanels; ++q)
      for (int64_t v = 0; v < PV; ++v)
        b[q * PV + v] = *reinterpret_cast<const VU*>(panel + q * P + k * R + v * L);
    for (int64_t i = 0; i < MR; ++i) {
      const T a = A[i * lda + k];
      for (int64_t v = 0; v < NV; ++v) acc[i][v] += b[v] * a;
    }
  }
  if (cols == NV * L) {
    for (int64_t i = 0; i < MR; ++i)
      for (int64_t v = 0; v < NV; ++v) {
        VU* c = reinterpret_cast<VU*>(C + i * ldc + v * L);
        *c = accumulate ? *c + acc[i][v] : acc[i][v];
      }
    return;
  }
  T tile[MR][NV * L];
  std::memcpy(tile, acc, sizeof(tile));
  for (int64_t i = 0; i < MR; ++i) {
    T* c = C + i * ldc;
    if (accumulate) {
      for (int64_t q = 0; q < cols; ++q) c[q] += tile[i][q];
    } else {
      for (int64_t q = 0; q < cols; ++q) c[q] = tile[i][q];
    }
  }
}

// One tile of `rows` (1 <= rows <= Shape::kRows) rows: the micro-kernel built for exactly
// that many rows, so no row of the tile is computed twice or thrown away. `next`: the strip to
// prefetch meanwhile (nullptr: none).
template <class T, class Shape, int64_t R, int64_t Rows = Shape::kRows>
FRNN_ALWAYS_INLINE void tile_of_rows(int64_t rows, int64_t K, const T* A, int64_t lda,
                                     const T* panel, T* C, int64_t ldc, int64_t cols,
                                     bool accumulate, const T* next = nullptr) {
  using Shaped = Tile<Shape::kBytes, Rows, Shape::kPanels>;
  if constexpr (Rows > 1) {
    if (rows < Rows) {
      tile_of_rows<T, Shape, R, Rows - 1>(rows, K, A, lda, panel, C, ldc, cols, accumulate,
                                          next);
      return;
    }
  }
  if (next != nullptr) {
    micro_kernel<T, Shaped, R, true>(K, A, lda, panel, C, ldc, cols, accumulate, next);
  } else {
    micro_kernel<T, Shaped, R>(K, A, lda, panel, C, ldc, cols, accumulate);
  }
}

// All of C with tiles of Shape (Shape::kPanels panels at a time, then one at a time), from
// B packed in groups of Shape::kPanels panels (packed_group).
template <class T, class Shape>
FRNN_ALWAYS_INLINE void gemm_tiles(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                                   const T* packed, T* C, int64_t ldc, bool accumulate) {
  using One = Tile<Shape::kBytes, Shape::kRows, 1>;
  constexpr int64_t P = GemmPanel<T>::kWidth;
  constexpr int64_t NP = Shape::kPanels;
  constexpr int64_t R = NP * P;
  const PackedLayout<T> layout{NP};
  const int64_t panels = (N + P - 1) / P;
  // M in tiles of at most kRows rows, the rows spread evenly (M = 32 with 6-row tiles:
  // 6, 6, 5, 5, 5, 5 rather than five of 6 and one of 2 computed as 6).
  const int64_t tiles = (M + Shape::kRows - 1) / Shape::kRows;
  const bool prefetch =
      tiles > 1 && K * panels * P * static_cast<int64_t>(sizeof(T)) >= kPrefetchBytes;
  for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
    const int64_t kb = std::min(kBlockK, K - k0);
    const bool acc = accumulate || k0 > 0;
    int64_t p = 0;
    for (; p + NP <= panels; p += NP) {
      const T* panel = packed + layout.panel_start(K, p, k0);
      const int64_t cols = std::min(NP * P, N - p * P);
      // The last tile of a strip (kb rows of this panel group) prefetches the next group's
      // strip, which lies K * R elements on (not where the hardware prefetcher looks): the
      // first tile of each strip otherwise waits on memory for it when the packed B is
      // beyond L2 (a C5-sized W_hh: 2 MiB a thread). Only then (kPrefetchBytes; C2's 512 KiB
      // measured 1 % slower with it), and only when M spans several tiles: with one, the
      // prefetches are as many as the strip's own loads and measured slower (LSTM B = 4,
      // H = 512 inference: 0.90-0.97 -> 0.93-1.02 x torch.nn; docs/design.md §5.4,
      // "Prefetching the next strip").
      const T* next = prefetch && p + NP < panels ? packed + layout.panel_start(K, p + NP, k0)
                                                  : nullptr;
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t m = M * t / tiles, rows = M * (t + 1) / tiles - m;
        tile_of_rows<T, Shape, R>(rows, kb, A + m * lda + k0, lda, panel, C + m * ldc + p * P,
                                  ldc, cols, acc, t == tiles - 1 ? next : nullptr);
      }
    }
    for (; p < panels; ++p) {
      const T* panel = packed + layout.panel_start(K, p, k0);
      const int64_t cols = std::min(P, N - p * P);
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t m = M * t / tiles, rows = M * (t + 1) / tiles - m;
        tile_of_rows<T, One, R>(rows, kb, A + m * lda + k0, lda, panel, C + m * ldc + p * P,
                                ldc, cols, acc);
      }
    }
  }
}

template <class T, class Shape>
FRNN_ALWAYS_INLINE void gemm_impl(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                                  const T* packed, T* C, int64_t ldc, bool accumulate) {
  if (K == 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + N, T(0));
    return;
  }
  if (M == 1) {  // matrix-vector: wide tiles instead of Rows - 1 wasted rows
    gemm_tiles<T, Tile<Shape::kBytes, 1, kOneRowPanels>>(M, N, K, A, lda, packed, C, ldc,
                                                         accumulate);
  } else {
    gemm_tiles<T, Shape>(M, N, K, A, lda, packed, C, ldc, accumulate);
  }
}

// ---------------------------------------------------------------------------------------
// The B = 1 product straight from a row-major W (no packing): y[r] = sum_k W[r][k] x[k].
// L rows at a time (L = lanes of a vector), one accumulator vector per row, so L independent
// FMA chains; the L accumulators are then reduced into one vector of the L row sums by a
// log2(L)-level tree of lane shuffles (fold), whose output lanes are rows r .. r + L - 1.
// fold: a and b each hold L / W groups of W lanes (a group = one row's partial sums); the
// result holds the groups of a then those of b, each folded to W / 2 lanes (its lower half
// plus its upper half).
template <int L, int W, bool Upper, int I>
constexpr int fold_index() {
  constexpr int groups = L / W, half = W / 2;
  constexpr int g = I / half, o = I % half;
  return (g < groups ? g * W : L + (g - groups) * W) + o + (Upper ? half : 0);
}
// (Vectors by pointer, not by value: a vector argument or return of a non-inlined function
// would change the ABI between the ISA builds, -Wpsabi.)
template <class V, int L, int W, int... I>
FRNN_ALWAYS_INLINE void fold(V* out, const V* a, const V* b, std::integer_sequence<int, I...>) {
  *out = __builtin_shufflevector(*a, *b, fold_index<L, W, false, I>()...) +
         __builtin_shufflevector(*a, *b, fold_index<L, W, true, I>()...);
}
template <class V, int L, int W>
FRNN_ALWAYS_INLINE void reduce_rows(V* v) {
  if constexpr (W > 1) {
    for (int i = 0; i < W / 2; ++i)
      fold<V, L, W>(v + i, v + 2 * i, v + 2 * i + 1, std::make_integer_sequence<int, L>{});
    reduce_rows<V, L, W / 2>(v);
  }
}

template <class T, int Bytes>
FRNN_ALWAYS_INLINE void gemv_rows_impl(int64_t rows, int64_t K, const T* W, int64_t ldw,
                                       const T* x, T* y) {
  using V = typename Vec<T, Bytes>::type;
  using VU = typename Vec<T, Bytes>::unaligned;
  constexpr int L = Bytes / static_cast<int>(sizeof(T));
  const int64_t kv = K / L * L;
  int64_t r = 0;
  for (; r + L <= rows; r += L) {
    V acc[L];
    for (int i = 0; i < L; ++i) acc[i] = V{};
    for (int64_t k = 0; k < kv; k += L) {
      const V xv = *reinterpret_cast<const VU*>(x + k);
      for (int i = 0; i < L; ++i)
        acc[i] += *reinterpret_cast<const VU*>(W + (r + i) * ldw + k) * xv;
    }
    reduce_rows<V, L, L>(acc);
    *reinterpret_cast<VU*>(y + r) = acc[0];
    for (int i = 0; i < L && kv < K; ++i) {
      T sum = 0;
      for (int64_t k = kv; k < K; ++k) sum += W[(r + i) * ldw + k] * x[k];
      y[r + i] += sum;
    }
  }
  for (; r < rows; ++r) {  // the last rows % L rows, one at a time
    V acc = V{};
    for (int64_t k = 0; k < kv; k += L)
      acc += *reinterpret_cast<const VU*>(W + r * ldw + k) * *reinterpret_cast<const VU*>(x + k);
    T lanes[L];
    std::memcpy(lanes, &acc, sizeof lanes);
    T sum = 0;
    for (int i = 0; i < L; ++i) sum += lanes[i];
    for (int64_t k = kv; k < K; ++k) sum += W[r * ldw + k] * x[k];
    y[r] = sum;
  }
}

#define FRNN_GEMV_PARAMS(T) \
  (int64_t rows, int64_t K, const T* W, int64_t ldw, const T* x, T* y)
#define FRNN_GEMV_ARGS (rows, K, W, ldw, x, y)
FRNN_ALWAYS_INLINE void gemv_f32_v4_body FRNN_GEMV_PARAMS(float) {
  gemv_rows_impl<float, 64> FRNN_GEMV_ARGS;
}
FRNN_ALWAYS_INLINE void gemv_f32_body FRNN_GEMV_PARAMS(float) {
  gemv_rows_impl<float, 32> FRNN_GEMV_ARGS;
}
FRNN_ALWAYS_INLINE void gemv_f64_v4_body FRNN_GEMV_PARAMS(double) {
  gemv_rows_impl<double, 64> FRNN_GEMV_ARGS;
}
FRNN_ALWAYS_INLINE void gemv_f64_body FRNN_GEMV_PARAMS(double) {
  gemv_rows_impl<double, 32> FRNN_GEMV_ARGS;
}
FRNN_DISPATCH_SPLIT(void, gemv_f32, FRNN_GEMV_PARAMS(float), FRNN_GEMV_ARGS)
FRNN_DISPATCH_SPLIT(void, gemv_f64, FRNN_GEMV_PARAMS(double), FRNN_GEMV_ARGS)

using TileAvx2 = Tile<32, 6, 1>;
using TileAvx512 = Tile<64, 8, 2>;

#define FRNN_GEMM_PARAMS(T)                                                               \
  (int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* packed, T* C, int64_t ldc, \
   bool accumulate)
#define FRNN_GEMM_ARGS (M, N, K, A, lda, packed, C, ldc, accumulate)
// The AVX-512 tile only in the x86-64-v4 build (FRNN_DISPATCH_SPLIT); the others keep AVX2's.
template <class T>
FRNN_ALWAYS_INLINE void gemm_wide_body FRNN_GEMM_PARAMS(T) {
  gemm_impl<T, TileAvx512> FRNN_GEMM_ARGS;
}
template <class T>
FRNN_ALWAYS_INLINE void gemm_narrow_body FRNN_GEMM_PARAMS(T) {
  gemm_impl<T, TileAvx2> FRNN_GEMM_ARGS;
}
FRNN_ALWAYS_INLINE void gemm_f32_v4_body FRNN_GEMM_PARAMS(float) {
  gemm_wide_body<float> FRNN_GEMM_ARGS;
}
FRNN_ALWAYS_INLINE void gemm_f32_body FRNN_GEMM_PARAMS(float) {
  gemm_narrow_body<float> FRNN_GEMM_ARGS;
}
FRNN_ALWAYS_INLINE void gemm_f64_v4_body FRNN_GEMM_PARAMS(double) {
  gemm_wide_body<double> FRNN_GEMM_ARGS;
}
FRNN_ALWAYS_INLINE void gemm_f64_body FRNN_GEMM_PARAMS(double) {
  gemm_narrow_body<double> FRNN_GEMM_ARGS;
}
FRNN_DISPATCH_SPLIT(void, gemm_f32, FRNN_GEMM_PARAMS(float), FRNN_GEMM_ARGS)
FRNN_DISPATCH_SPLIT(void, gemm_f64, FRNN_GEMM_PARAMS(double), FRNN_GEMM_ARGS)

}  // namespace

void gemm_packed(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* packed,
                 float* C, int64_t ldc, bool accumulate) {
  gemm_f32(M, N, K, A, lda, packed, C, ldc, accumulate);
}

void gemm_packed(int64_t M, int64_t N, int64_t K, const double* A, int64_t lda,
                 const double* packed, double* C, int64_t ldc, bool accumulate) {
  gemm_f64(M, N, K, A, lda, packed, C, ldc, accumulate);
}

void gemv_rows(int64_t rows, int64_t K, const float* W, int64_t ldw, const float* x, float* y) {
  gemv_f32(rows, K, W, ldw, x, y);
}

void gemv_rows(int64_t rows, int64_t K, const double* W, int64_t ldw, const double* x,
               double* y) {
  gemv_f64(rows, K, W, ldw, x, y);
}

int64_t packed_group(int64_t M) {
  if (M == 1) return kOneRowPanels;
  return runtime_isa() == Isa::kX86_64_V4 && FRNN_HAVE_MULTIVERSION ? TileAvx512::kPanels
                                                                    : TileAvx2::kPanels;
}

const char* gemm_variant() { return isa_name(runtime_isa()); }

}  // namespace host
}  // namespace fusedrnn
