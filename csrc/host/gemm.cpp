#include "gemm.h"

#include <algorithm>
#include <cstring>

#include "multiversion.h"

namespace fusedrnn {
namespace host {
namespace {

typedef float VecF __attribute__((vector_size(32)));
typedef double VecD __attribute__((vector_size(32)));
// The same vectors with element alignment, for unaligned loads straight from memory (a
// memcpy into a vector array can compile to narrower stores plus a wide reload from the
// stack, which stalls on store forwarding every k step).
typedef float VecFU __attribute__((vector_size(32), aligned(4)));
typedef double VecDU __attribute__((vector_size(32), aligned(8)));

template <class T>
struct VecOf;
template <>
struct VecOf<float> {
  using type = VecF;
  using unaligned = VecFU;
};
template <>
struct VecOf<double> {
  using type = VecD;
  using unaligned = VecDU;
};

constexpr int64_t kRowsPerTile = 6;  // MR
constexpr int64_t kBlockK = 256;     // K block: one panel strip stays in L1

// C tile [rows <= MR, cols <= panel] (+)= A[rows, K] * panel[K, kPanel].
template <class T>
FRNN_ALWAYS_INLINE void micro_kernel(int64_t K, const T* A, int64_t lda, const T* panel, T* C,
                                     int64_t ldc, int64_t rows, int64_t cols, bool accumulate) {
  using V = typename VecOf<T>::type;
  using VU = typename VecOf<T>::unaligned;
  constexpr int64_t P = GemmPanel<T>::kWidth;
  constexpr int64_t L = static_cast<int64_t>(sizeof(V) / sizeof(T));
  constexpr int64_t NV = P / L;
  constexpr int64_t MR = kRowsPerTile;
  const T* a_row[MR];
  for (int64_t i = 0; i < MR; ++i) a_row[i] = A + std::min(i, rows - 1) * lda;
  V acc[MR][NV];
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t v = 0; v < NV; ++v) acc[i][v] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
    for (int64_t v = 0; v < NV; ++v) b[v] = *reinterpret_cast<const VU*>(panel + k * P + v * L);
    for (int64_t i = 0; i < MR; ++i) {
      const T a = a_row[i][k];
      for (int64_t v = 0; v < NV; ++v) acc[i][v] += b[v] * a;
    }
  }
  T tile[MR][P];
  std::memcpy(tile, acc, sizeof(tile));
  for (int64_t i = 0; i < rows; ++i) {
    T* c = C + i * ldc;
    if (accumulate) {
      for (int64_t q = 0; q < cols; ++q) c[q] += tile[i][q];
    } else {
      for (int64_t q = 0; q < cols; ++q) c[q] = tile[i][q];
    }
  }
}

template <class T>
FRNN_ALWAYS_INLINE void gemm_impl(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                                  const T* packed, T* C, int64_t ldc, bool accumulate) {
  constexpr int64_t P = GemmPanel<T>::kWidth;
  const int64_t panels = (N + P - 1) / P;
  if (K == 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + N, T(0));
    return;
  }
  for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
    const int64_t kb = std::min(kBlockK, K - k0);
    const bool acc = accumulate || k0 > 0;
    for (int64_t p = 0; p < panels; ++p) {
      const T* panel = packed + p * K * P + k0 * P;
      const int64_t cols = std::min(P, N - p * P);
      for (int64_t m = 0; m < M; m += kRowsPerTile) {
        const int64_t rows = std::min(kRowsPerTile, M - m);
        micro_kernel<T>(kb, A + m * lda + k0, lda, panel, C + m * ldc + p * P, ldc, rows, cols,
                        acc);
      }
    }
  }
}

#define FRNN_GEMM_PARAMS(T)                                                               \
  (int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* packed, T* C, int64_t ldc, \
   bool accumulate)
#define FRNN_GEMM_ARGS (M, N, K, A, lda, packed, C, ldc, accumulate)
FRNN_ALWAYS_INLINE void gemm_f32_body FRNN_GEMM_PARAMS(float) {
  gemm_impl<float> FRNN_GEMM_ARGS;
}
FRNN_ALWAYS_INLINE void gemm_f64_body FRNN_GEMM_PARAMS(double) {
  gemm_impl<double> FRNN_GEMM_ARGS;
}
FRNN_DISPATCH(void, gemm_f32, FRNN_GEMM_PARAMS(float), FRNN_GEMM_ARGS)
FRNN_DISPATCH(void, gemm_f64, FRNN_GEMM_PARAMS(double), FRNN_GEMM_ARGS)

}  // namespace

void gemm_packed(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* packed,
                 float* C, int64_t ldc, bool accumulate) {
  gemm_f32(M, N, K, A, lda, packed, C, ldc, accumulate);
}

void gemm_packed(int64_t M, int64_t N, int64_t K, const double* A, int64_t lda,
                 const double* packed, double* C, int64_t ldc, bool accumulate) {
  gemm_f64(M, N, K, A, lda, packed, C, ldc, accumulate);
}

const char* gemm_variant() { return isa_name(runtime_isa()); }

}  // namespace host
}  // namespace fusedrnn
