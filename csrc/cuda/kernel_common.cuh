// Device helpers shared by the forward and backward persistent kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "fusedrnn/cells.cuh"
#include "fusedrnn/params.h"

namespace fusedrnn {
namespace cuda {

constexpr int kThreads = 256;  // threads per block (8 warps)
constexpr int kWarp = 32;
constexpr int kRowsPerWarpTask = 8;  // matvec: rows of W one warp task accumulates at once
constexpr int kFwdUnitArrays = 5;    // h, c, c~, c_out, m_h
constexpr int kBwdUnitArrays = 9;    // dh, dc, dh_prev, dc_prev, dh~, dc~, dc_out, m_h, dh_in

// Throws std::runtime_error with the CUDA error text.
void check_cuda(cudaError_t status, const char* what);
#define FRNN_CUDA_CHECK(expr) ::fusedrnn::cuda::check_cuda((expr), #expr)

// ------------------------------------------------------------------ storage conversions
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class S>
__device__ __forceinline__ S from_acc(float x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Reads data that other blocks wrote during this launch: through L2, never a stale L1 line.
__device__ __forceinline__ float load_shared_global(const float* p) { return __ldcg(p); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// ------------------------------------------------------------------ shared memory plan
// Dynamic shared memory of one block, in this order (each part 16-byte aligned):
//   [W slice: rows x len, storage type, only when w_in_smem]
//   [B * G * hs floats: per-step gate pre-activations (fwd) / d(gates) (bwd)]
//   [unit_arrays * B * hs floats: per-unit state of the block's hidden units]
//   [2 * G * hs floats: column statistics]  [2 * B floats: row statistics]
// hs = ceil(H / grid) is the largest slice of hidden units a block owns.
struct SmemPlan {
  int64_t w_bytes, a_off, unit_off, col_off, row_off, total;
};
__host__ __device__ inline int64_t align16(int64_t n) { return (n + 15) / 16 * 16; }
__host__ __device__ inline SmemPlan smem_plan(int64_t B, int64_t G, int64_t H, int64_t hs,
                                              int64_t storage_bytes, bool w_in_smem,
                                              int unit_arrays) {
  SmemPlan s;
  s.w_bytes = w_in_smem ? align16(G * hs * H * storage_bytes) : 0;
  s.a_off = s.w_bytes;
  s.unit_off = s.a_off + align16(B * G * hs * 4);
  s.col_off = s.unit_off + align16(unit_arrays * B * hs * 4);
  s.row_off = s.col_off + align16(2 * G * hs * 4);
  s.total = s.row_off + align16(2 * B * 4);
  return s;
}

// Launch plan chosen on the host: grid size and where W lives.
struct LaunchPlan {
  int64_t grid = 0;
  int64_t hs = 0;
  bool w_in_smem = false;
  int64_t smem_bytes = 0;
};

// Picks the grid (at most one block per SM, at most one per hidden unit), decides whether the
// block's W_hh slice fits in shared memory, sets the kernel's dynamic shared memory limit and
// checks with the occupancy calculator that the whole grid can be co-resident (cooperative
// launch requirement). Throws with the reason otherwise.
LaunchPlan plan_launch(const void* kernel, int64_t B, int64_t G, int64_t H, int64_t storage_bytes,
                       int unit_arrays, const char* what);

// ------------------------------------------------------------------ block matvec
// out[b * R + r] = sum_k X[b * ldx + k] * w(r, k) for b < B, r < R. X was written by other
// blocks (read through L2); w(r, k) returns W as float. One warp task = one row b and up to
// kRowsPerWarpTask rows r; lanes split k (coalesced), then a shuffle reduction.
template <class WFn>
__device__ __forceinline__ void block_matvec(int64_t B, int64_t R, int64_t K, const float* X,
                                             int64_t ldx, WFn w, float* out) {
  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  const int warps = blockDim.x / kWarp;
  const int64_t groups = (R + kRowsPerWarpTask - 1) / kRowsPerWarpTask;
  for (int64_t task = warp; task < B * groups; task += warps) {
    const int64_t b = task / groups;
    const int64_t r0 = (task % groups) * kRowsPerWarpTask;
    float acc[kRowsPerWarpTask];
#pragma unroll
    for (int i = 0; i < kRowsPerWarpTask; ++i) acc[i] = 0.f;
    const float* x = X + b * ldx;
    for (int64_t k = lane; k < K; k += kWarp) {
      const float xv = load_shared_global(x + k);
#pragma unroll
      for (int i = 0; i < kRowsPerWarpTask; ++i)
        if (r0 + i < R) acc[i] = fmaf(xv, w(r0 + i, k), acc[i]);
    }
#pragma unroll
    for (int i = 0; i < kRowsPerWarpTask; ++i) {
      const float v = warp_sum(acc[i]);
      if (lane == 0 && r0 + i < R) out[b * R + r0 + i] = v;
    }
  }
}

}  // namespace cuda
}  // namespace fusedrnn
