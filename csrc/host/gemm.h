// A small cache-blocked GEMM for the host backend's per-step products.
//
//   C[M, N] (=|+=) A[M, K] * B[K, N]
//
// A is row-major with row stride lda; B is pre-packed once per call of the recurrence into
// panels of kPanel columns (PackedLayout: groups of packed_group(M) panels side by side,
// zero-padded), so the micro-kernel reads it in order. The micro-kernel keeps an MR x kPanel
// tile of C in vector registers and is written with GCC/Clang vector extensions, so it
// vectorises on any target; gemm.cpp builds it for x86-64-v4 (AVX-512), x86-64-v3 (AVX2+FMA)
// and the baseline and picks one per process (multiversion.h), so a wheel-like build needs no
// -march flag (see CMakeLists.txt).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <utility>
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

// The packed layout. Panels are stored in groups of `group` panels side by side: group g is K
// rows of group * kWidth elements (panels g * group ... of row k, zero beyond N), so the
// panels one micro-kernel tile reads together are one sequential stream rather than streams a
// whole panel apart. The group is packed_group(M) for a product of M rows: the one-row
// (B = 1) tile reads eight panels, so 8; a many-row tile reads its own 1 or 2 panels, so
// exactly those (a wider group leaves its K rows a group row apart, which is 512 B for 8
// float panels: such a tile touched only 1/8 of L1's sets, and its 32 KiB block of B fell out
// of L1 between the row tiles that reuse it). Groups start one cache line beyond their size:
// without it they are a multiple of 4 KiB apart, so a tile's loads would fall into one L1 set
// and 4K-alias.
template <class T>
struct PackedLayout {
  int64_t group;  // panels per group
  int64_t row() const { return group * GemmPanel<T>::kWidth; }  // elements per k in a group
  int64_t group_stride(int64_t K) const {
    return K * row() + static_cast<int64_t>(64 / sizeof(T));
  }
  int64_t size(int64_t K, int64_t N) const { return (N + row() - 1) / row() * group_stride(K); }
  // Where panel p's row k0 starts; the panel's row k is row() elements after row k - 1.
  int64_t panel_start(int64_t K, int64_t p, int64_t k0) const {
    return p / group * group_stride(K) + p % group * GemmPanel<T>::kWidth + k0 * row();
  }
};

// The panels per group of a product of M rows on this process's ISA (gemm.cpp's tiles).
int64_t packed_group(int64_t M);
template <class T>
PackedLayout<T> packed_layout(int64_t M) {
  return PackedLayout<T>{packed_group(M)};
}

// Buffers the GEMM streams through whole vectors (packed B, C tiles) start on a cache line:
// glibc's malloc returns 16-byte-aligned memory, and a large block (its own mmap) sits 16 bytes
// past a page boundary, so every 64-byte load of such a packed B straddled two cache lines
// (measured: the per-step products 6-9 % slower; docs/design.md §5.4, "Aligned buffers").
constexpr std::size_t kCacheLine = 64;
template <class T>
struct AlignedAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = AlignedAllocator<U>;
  };
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kCacheLine)));
  }
  void deallocate(T* p, std::size_t n) noexcept {
    ::operator delete(p, n * sizeof(T), std::align_val_t(kCacheLine));
  }
};
template <class T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

// An allocator whose value-less construct() default-initialises: a PackedB<T>(n) holds n
// uninitialised elements, so pack_b writes each element once rather than after a zero fill
// (the fill was a B = 1 call's largest native cost after the packing itself). Cache-line
// aligned (AlignedAllocator).
template <class T>
struct NoInitAllocator : AlignedAllocator<T> {
  template <class U>
  struct rebind {
    using other = NoInitAllocator<U>;
  };
  NoInitAllocator() = default;
  template <class U>
  NoInitAllocator(const NoInitAllocator<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
template <class T>
using PackedB = std::vector<T, NoInitAllocator<T>>;

// Writes groups [g0, g1) of pack_b(M, K, N, k_stride, column) into dst (a buffer of
// packed_layout<T>(M).size(K, N) elements): threads packing one shared buffer each write their
// own groups. pack_b below is all groups into a new buffer.
template <class T, class Column>
void pack_b_groups(int64_t M, int64_t K, int64_t N, int64_t k_stride, Column column, T* dst,
                   int64_t g0, int64_t g1) {
  const PackedLayout<T> layout = packed_layout<T>(M);
  constexpr int64_t P = GemmPanel<T>::kWidth;
  const int64_t panels = (N + P - 1) / P, row = layout.row();
  for (int64_t g = g0; g < g1; ++g) {
    T* group = dst + g * layout.group_stride(K);
    const int64_t cols = std::min<int64_t>(row, N - g * row);
    if (cols < row)
      for (int64_t k = 0; k < K; ++k)
        std::fill(group + k * row + cols, group + (k + 1) * row, T(0));
    std::fill(group + K * row, group + layout.group_stride(K), T(0));
    for (int64_t p = g * layout.group; p < std::min(panels, (g + 1) * layout.group); ++p) {
      const int64_t width = std::min<int64_t>(P, N - p * P);
      const T* src[P];
      for (int64_t q = 0; q < width; ++q) src[q] = column(p * P + q);
      T* out = dst + layout.panel_start(K, p, 0);
      for (int64_t k = 0; k < K; ++k)
        for (int64_t q = 0; q < width; ++q) out[k * row + q] = src[q][k * k_stride];
    }
  }
}
// The number of groups of pack_b(M, K, N, ...) (pack_b_groups' g range).
template <class T>
int64_t packed_groups(int64_t M, int64_t N) {
  const int64_t row = packed_layout<T>(M).row();
  return (N + row - 1) / row;
}

// Packs B[k][n] = column(n)[k * k_stride] for k < K, n < N (packed_layout(M) for products of
// M rows, zero-padded) and returns the packed buffer. One pointer per column: a source whose
// columns are rows of a matrix (k_stride 1: W_hh / W_hr for the forward's B = W^T) or its
// columns (k_stride = the row length: the backward's B = W), without an index computation per
// element (the per-call pack is a B = 1 call's largest native cost). Within a panel the k loop
// is outer, so a k_stride > 1 source is read along its rows. Only the padding (columns past N
// in the last group, the cache line after each group) is zeroed; every other element is
// written once.
template <class T, class Column>
PackedB<T> pack_b(int64_t M, int64_t K, int64_t N, int64_t k_stride, Column column) {
  PackedB<T> packed(static_cast<size_t>(packed_layout<T>(M).size(K, N)));
  pack_b_groups<T>(M, K, N, k_stride, column, packed.data(), 0, packed_groups<T>(M, N));
  return packed;
}

// C = A * B (accumulate = false) or C += A * B (accumulate = true); `packed` is
// pack_b(M, K, N, ...).
void gemm_packed(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* packed,
                 float* C, int64_t ldc, bool accumulate);
void gemm_packed(int64_t M, int64_t N, int64_t K, const double* A, int64_t lda,
                 const double* packed, double* C, int64_t ldc, bool accumulate);

// y[r] = sum_k W[r * ldw + k] * x[k] for r < rows: the one-row (B = 1) product read straight
// from a row-major W, with no packing (the pack is a one-row call's largest fixed cost).
void gemv_rows(int64_t rows, int64_t K, const float* W, int64_t ldw, const float* x, float* y);
void gemv_rows(int64_t rows, int64_t K, const double* W, int64_t ldw, const double* x,
               double* y);

// Which variant runs ("x86-64-v4" / "x86-64-v3" / "baseline" / "portable"), for the report;
// the activations of simd_math.h use the same one.
const char* gemm_variant();

}  // namespace host
}  // namespace fusedrnn
