// The parts of the step loop's execution policy (fusedrnn/step_loop.h) that the forward and
// backward CUDA kernels share: a worker is one block of kThreads threads, its scratch lives in
// shared memory (smem_plan), and the workers of a layer-direction meet at grid.sync() of one
// cooperative launch. Each kernel's policy derives from BlockWorker and adds its product and
// its layer-norm reduction (recurrence_fwd.cu: recurrent_product, publish, row_stats;
// recurrence_bwd.cu: backward_product, row_sums).
#pragma once

#include <cooperative_groups.h>

#include <cstdint>

#include "cuda/kernel_common.cuh"
#include "fusedrnn/cells.cuh"

namespace fusedrnn {
namespace cuda {

template <class S>
struct BlockWorker {
  using Storage = S;
  using Acc = float;
  // Both device policies implement the projection (forward project, backward
  // project_backward); the step loop takes that path only when proj_size > 0.
  static constexpr bool kProjection = true;
  __device__ static float widen(S v) { return to_acc(v); }
  __device__ static S narrow(float v) { return from_acc<S>(v); }

  int64_t j0, hl, q0, pl;  // the block's cell units and h units (equal without a projection)
  cooperative_groups::grid_group grid;

  __device__ bool first_worker() const { return blockIdx.x == 0; }
  template <class F>
  __device__ void for_each(int64_t rows, int64_t cols, F f) const {
    const int64_t n = rows * cols;
    for (int64_t e = threadIdx.x; e < n; e += blockDim.x) f(e / cols, e % cols);
  }
  __device__ void sync_worker() const { __syncthreads(); }
  __device__ void sync_all() { grid.sync(); }
  __device__ void sigmoid_cols(float* x, int64_t rows, int64_t ld, int64_t c0, int64_t c1) const {
    for_each(rows, c1 - c0, [&](int64_t i, int64_t c) {
      float& v = x[i * ld + c0 + c];
      v = sigmoid(v);
    });
  }
  __device__ void tanh_cols(float* x, int64_t rows, int64_t ld, int64_t c0, int64_t c1) const {
    for_each(rows, c1 - c0, [&](int64_t i, int64_t c) {
      float& v = x[i * ld + c0 + c];
      v = frnn_tanh(v);
    });
  }
};

}  // namespace cuda
}  // namespace fusedrnn
