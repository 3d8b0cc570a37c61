// Device helpers shared by the forward and backward persistent kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "fusedrnn/cells.cuh"
#include "cuda/launch_plan.h"
#include "fusedrnn/params.h"

namespace fusedrnn {
namespace cuda {

constexpr int kRowsPerWarpTask = 8;  // FMA matvec: rows of W one warp task accumulates

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

// Plans the launch for this device (launch_plan.h's plan_launch_for with the device's
// attributes), sets the kernel's dynamic shared memory limit and checks with the occupancy
// calculator that the whole grid can be co-resident (cooperative launch requirement). Throws
// with the reason otherwise; the Python launcher checks the same plan before it launches.
LaunchPlan plan_launch(const void* kernel, int64_t B, int64_t G, int64_t H, int64_t storage_bytes,
                       bool backward, bool want_tensor_cores, int64_t proj);
// The forward's plan `base` (from plan_launch) upgraded to the cell on the accumulators when
// launch_plan.h's plan_fused_cell allows it and the occupancy calculator agrees for
// `fused_kernel` (whose dynamic shared memory limit it then sets); else `base`.
LaunchPlan plan_launch_fused_cell(const void* fused_kernel, const LaunchPlan& base, int64_t B,
                                  int64_t G, int64_t H, int64_t storage_bytes);
// The backward's twin (launch_plan.h plan_fused_cell_backward, same shared memory and grid),
// with the occupancy calculator's check for `fused_kernel`.
LaunchPlan plan_launch_fused_cell_backward(const void* fused_kernel, const LaunchPlan& base);

// ------------------------------------------------------------------ layer-norm row reductions
// Layer norm needs per-row statistics over all blocks' units. Each block writes one float4
// partial per row into stats[row * nblk + blk] (a [rows][grid] array: a row's partials are
// contiguous); after one grid barrier one warp per row reads all nblk partials of its row,
// one 16-byte load through L2 per lane per 32 blocks, all in flight at once, and combines
// them in registers and then across the warp by shuffles: log2(32) steps, not nblk dependent
// L2 round trips.

// Partials (count, mean, M2, unused): the merged count, mean and M2 of the row (Chan et al.).
__device__ __forceinline__ MeanM2<float> merge_row_mean_m2(const float4* row, int64_t nblk,
                                                           int lane) {
  MeanM2<float> m{0.f, 0.f, 0.f};
  for (int64_t k = lane; k < nblk; k += kWarp) {
    const float4 v = __ldcg(row + k);
    m = mean_m2_merge(m, MeanM2<float>{v.x, v.y, v.z});
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
    const MeanM2<float> o{__shfl_xor_sync(0xffffffffu, m.n, offset),
                          __shfl_xor_sync(0xffffffffu, m.mean, offset),
                          __shfl_xor_sync(0xffffffffu, m.m2, offset)};
    m = mean_m2_merge(m, o);
  }
  return m;
}

// Partials (s1, s2, s3, unused): the row's sums of the three.
__device__ __forceinline__ float3 sum_row_partials(const float4* row, int64_t nblk, int lane) {
  float s1 = 0.f, s2 = 0.f, s3 = 0.f;
  for (int64_t k = lane; k < nblk; k += kWarp) {
    const float4 v = __ldcg(row + k);
    s1 += v.x;
    s2 += v.y;
    s3 += v.z;
  }
  return make_float3(warp_sum(s1), warp_sum(s2), warp_sum(s3));
}

// ------------------------------------------------------------------ block matvec (exact FP32)
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
