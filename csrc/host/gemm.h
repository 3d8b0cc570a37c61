// A small cache-blocked GEMM for the host backend's per-step products.
//
//   C[M, N] (=|+=) A[M, K] * B[K, N]
//
// A is row-major with row stride lda; B is pre-packed once per call of the recurrence into
// panels of kPanel columns (packed[p][k][kPanel], zero-padded), so the micro-kernel reads it
// sequentially. The micro-kernel keeps an MR x kPanel tile of C in vector registers and is
// written with GCC/Clang vector extensions, so it vectorises on any target; gemm.cpp builds it
// for x86-64-v4 (AVX-512), x86-64-v3 (AVX2+FMA) and the baseline and picks one per process
// (multiversion.h), so a wheel-like build needs no -march flag (see CMakeLists.txt).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace fusedrnn {
namespace host {

template <class T>
struct GemmPanel;
template <>
struct GemmPanel<float> {
  static constexpr int64_t kWidth = 16;
};
template <>
struct GemmPanel<double> {
  static constexpr int64_t kWidth = 8;
};

// Packs B[k][n] = src(k, n) for k < K, n < N into panels; returns the packed buffer.
template <class T, class Source>
std::vector<T> pack_b(int64_t K, int64_t N, Source src) {
  constexpr int64_t P = GemmPanel<T>::kWidth;
  const int64_t panels = (N + P - 1) / P;
  std::vector<T> packed(static_cast<size_t>(panels * K * P), T(0));
  for (int64_t p = 0; p < panels; ++p) {
    T* dst = packed.data() + p * K * P;
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t q = 0; q < P && p * P + q < N; ++q) dst[k * P + q] = src(k, p * P + q);
    }
  }
  return packed;
}

// As pack_b, for a source whose column n is contiguous in k (B[k][n] = column(n)[k], a row
// of W_hh or W_hr for the forward's B = W^T): one pointer per column and a unit-stride read,
// instead of a column-index computation per element (the per-call pack is a B = 1 call's
// largest native cost).
template <class T, class Column>
std::vector<T> pack_b_columns(int64_t K, int64_t N, Column column) {
  constexpr int64_t P = GemmPanel<T>::kWidth;
  const int64_t panels = (N + P - 1) / P;
  std::vector<T> packed(static_cast<size_t>(panels * K * P), T(0));
  for (int64_t n = 0; n < N; ++n) {
    const T* src = column(n);
    T* dst = packed.data() + (n / P) * K * P + n % P;
    for (int64_t k = 0; k < K; ++k) dst[k * P] = src[k];
  }
  return packed;
}

// C = A * B (accumulate = false) or C += A * B (accumulate = true).
void gemm_packed(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* packed,
                 float* C, int64_t ldc, bool accumulate);
void gemm_packed(int64_t M, int64_t N, int64_t K, const double* A, int64_t lda,
                 const double* packed, double* C, int64_t ldc, bool accumulate);

// Which variant runs ("x86-64-v4" / "x86-64-v3" / "baseline" / "portable"), for the report;
// the activations of simd_math.h use the same one.
const char* gemm_variant();

}  // namespace host
}  // namespace fusedrnn
