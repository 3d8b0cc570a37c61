// The cuda backend's weight-drop pass: dst = src * (keep-scaled weight-drop mask) over a dense
// [rows, cols] tensor (params.h's WeightDropParams), one thread per element. The launcher
// (fusedrnn/backends/cuda.py) runs it once per call to build the effective W_hh that both
// persistent kernels read, and in place on dW_hh after the launcher's GEMM. The mask itself
// is never written: each element is drawn by weight_drop_scale (philox.cuh) where it is used.
#include <algorithm>

#include "cuda/kernel_common.cuh"
#include "cuda/weight_drop_cuda.h"

namespace fusedrnn {
namespace cuda {
namespace {

template <class S>
__global__ void weight_drop_kernel(const S* src, S* dst, int64_t rows, int64_t cols,
                                   uint64_t key, uint64_t base, float p, float keep_scale) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float scale = weight_drop_scale(key, base, i / cols, i % cols, p, keep_scale);
    dst[i] = from_acc<S>(to_acc(src[i]) * scale);
  }
}

template <class S>
void launch(const WeightDropParams& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.cols;
  if (n == 0) return;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 65535);
  const float keep_scale = static_cast<float>(1.0 / (1.0 - p.p));
  weight_drop_kernel<S><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const S*>(p.src), static_cast<S*>(p.dst), p.rows, p.cols, p.key, p.base,
      static_cast<float>(p.p), keep_scale);
  FRNN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void weight_drop_apply(const WeightDropParams& p, uintptr_t stream) {
  if (!(p.p > 0.0 && p.p < 1.0))
    throw std::invalid_argument("fusedrnn weight_drop_apply: p must be in (0, 1)");
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case kFloat32:
      launch<float>(p, s);
      break;
    case kFloat16:
      launch<__half>(p, s);
      break;
    case kBFloat16:
      launch<__nv_bfloat16>(p, s);
      break;
    default:
      throw std::invalid_argument("fusedrnn cuda: dtype must be float32, float16 or bfloat16");
  }
}

}  // namespace cuda
}  // namespace fusedrnn
