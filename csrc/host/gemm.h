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

#include <algorithm>
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

// Packs B[k][n] = column(n)[k * k_stride] for k < K, n < N into panels (zero-padded) and
// returns the packed buffer. One pointer per column: a source whose columns are rows of a
// matrix (k_stride 1: W_hh / W_hr for the forward's B = W^T) or its columns (k_stride = the
// row length: the backward's B = W), without an index computation per element (the per-call
// pack is a B = 1 call's largest native cost). Within a panel the k loop is outer, so a
// k_stride > 1 source is read along its rows.
template <class T, class Column>
std::vector<T> pack_b(int64_t K, int64_t N, int64_t k_stride, Column column) {
  constexpr int64_t P = GemmPanel<T>::kWidth;
  const int64_t panels = (N + P - 1) / P;
  std::vector<T> packed(static_cast<size_t>(panels * K * P), T(0));
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t width = std::min<int64_t>(P, N - p * P);
    const T* src[P];
    for (int64_t q = 0; q < width; ++q) src[q] = column(p * P + q);
    T* dst = packed.data() + p * K * P;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t q = 0; q < width; ++q) dst[k * P + q] = src[q][k * k_stride];
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
