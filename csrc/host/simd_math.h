// Vectorised activations over arrays for the host cell loops (in place).
//
// float32: simd_vec.h's functions (one definition, shared with cell_host.cpp's vector cell):
// a polynomial e^x = 2^n (1 + q) (Cephes' expf coefficients, Cody-Waite range reduction,
// 2^n from the rounding trick's bits), sigmoid = 1 / (1 + exp(-x)) as cells.cuh computes it
// on a clamped argument, and tanh |x| = m / (m + 2) with m = e^(2|x|) - 1 = 2^n q + 2^n - 1,
// 2|x| clamped to 20, so a large |x| gives +-1, never inf / inf = NaN. A NaN input gives NaN;
// +-inf give the limits. simd_math.cpp builds the kernels for each ISA level of
// multiversion.h, like gemm.cpp.
//
// float64 (the ground-truth dtype) keeps cells.cuh's scalar libm functions.
#pragma once

#include <cstdint>

#include "fusedrnn/cells.cuh"

namespace fusedrnn {
namespace host {

void sigmoid_inplace(float* x, int64_t n);
void tanh_inplace(float* x, int64_t n);

inline void sigmoid_inplace(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = sigmoid(x[i]);
}
inline void tanh_inplace(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = frnn_tanh(x[i]);
}

}  // namespace host
}  // namespace fusedrnn
