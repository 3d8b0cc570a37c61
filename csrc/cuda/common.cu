// Host-side helpers of the CUDA backend: error checks, device status, launch planning.
#include <string>

#include "cuda/kernel_common.cuh"
#include "cuda/recurrence_cuda.h"

namespace fusedrnn {
namespace cuda {

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    // Clear a non-sticky error so that later calls do not report it again.
    (void)cudaGetLastError();
    throw std::runtime_error(std::string("fusedrnn CUDA error: ") + cudaGetErrorName(status) +
                             ": " + cudaGetErrorString(status) + " (in " + what + ")");
  }
}

std::string device_status() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("no CUDA device (") + cudaGetErrorString(status) + ")";
  }
  if (count == 0) return "no CUDA device";
  return "";
}

int64_t plan_forward_grid(const RecurrenceFwdParams& p);   // recurrence_fwd.cu
int64_t plan_backward_grid(const RecurrenceFwdParams& p);  // recurrence_bwd.cu

int64_t plan_grid(const RecurrenceFwdParams& p, bool backward) {
  return backward ? plan_backward_grid(p) : plan_forward_grid(p);
}

DeviceLimits device_limits() {
  int device = 0;
  FRNN_CUDA_CHECK(cudaGetDevice(&device));
  int sms = 0, optin = 0, per_sm = 0, reserved = 0, threads = 0, cooperative = 0;
  FRNN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  FRNN_CUDA_CHECK(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  FRNN_CUDA_CHECK(
      cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  FRNN_CUDA_CHECK(
      cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, device));
  FRNN_CUDA_CHECK(
      cudaDeviceGetAttribute(&threads, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  FRNN_CUDA_CHECK(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device));
  if (!cooperative)
    throw std::runtime_error("fusedrnn: this CUDA device does not support cooperative launches");
  DeviceLimits d;
  d.sms = sms;
  d.smem_per_block_optin = optin;
  d.smem_per_sm = per_sm;
  d.smem_reserved_per_block = reserved;
  d.max_threads_per_sm = threads;
  return d;
}

namespace {

// The device's limits for `kernel`'s dynamic shared memory: the opt-in maximum less the
// kernel's static shared memory. The kernels declare none, but on sm_90a cuobjdump reports
// 1 KiB (.nv.shared.reserved: the per-block system reserve, which the opt-in maximum already
// excludes, made explicit once the kernel uses mbarriers); should the runtime count it as
// static, the plan stays within what cudaFuncSetAttribute accepts.
DeviceLimits kernel_limits(const void* kernel) {
  DeviceLimits d = device_limits();
  cudaFuncAttributes attr{};
  FRNN_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  d.smem_per_block_optin -= static_cast<int64_t>(attr.sharedSizeBytes);
  return d;
}

}  // namespace

LaunchPlan plan_launch(const void* kernel, int64_t B, int64_t G, int64_t H, int64_t storage_bytes,
                       bool backward, bool want_tensor_cores, int64_t proj) {
  const DeviceLimits d = kernel_limits(kernel);
  LaunchPlan plan =
      plan_launch_for(d, B, G, H, storage_bytes, backward, want_tensor_cores, proj);
  if (!plan.reason.empty()) throw std::runtime_error("fusedrnn cuda: " + plan.reason);
  FRNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(plan.smem_bytes)));
  int per_sm = 0;
  FRNN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, kernel, kThreads, static_cast<size_t>(plan.smem_bytes)));
  if (static_cast<int64_t>(per_sm) * d.sms < plan.grid) {
    throw std::runtime_error(std::string("fusedrnn cuda ") + (backward ? "backward" : "forward") +
                             ": a grid of " + std::to_string(plan.grid) +
                             " blocks cannot be co-resident (occupancy " +
                             std::to_string(per_sm) + " block(s)/SM x " + std::to_string(d.sms) +
                             " SMs)");
  }
  return plan;
}

namespace {

// `fused` (a fused-cell variant of `base`, or `base` itself when the plan declined) when
// `fused_kernel` takes its shared memory with the grid co-resident (the occupancy
// calculator, as plan_launch asks it of the phased kernel), else `base`.
LaunchPlan fused_if_co_resident(const void* fused_kernel, const LaunchPlan& base,
                                const LaunchPlan& fused, int64_t sms) {
  if (!fused.fused_cell) return base;
  FRNN_CUDA_CHECK(cudaFuncSetAttribute(fused_kernel,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(fused.smem_bytes)));
  int per_sm = 0;
  FRNN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, fused_kernel, kThreads, static_cast<size_t>(fused.smem_bytes)));
  return static_cast<int64_t>(per_sm) * sms < fused.grid ? base : fused;
}

}  // namespace

LaunchPlan plan_launch_fused_cell(const void* fused_kernel, const LaunchPlan& base, int64_t B,
                                  int64_t G, int64_t H, int64_t storage_bytes) {
  const DeviceLimits d = kernel_limits(fused_kernel);
  return fused_if_co_resident(fused_kernel, base,
                              plan_fused_cell(d, base, B, G, H, storage_bytes), d.sms);
}

LaunchPlan plan_launch_fused_cell_backward(const void* fused_kernel, const LaunchPlan& base) {
  const LaunchPlan fused = plan_fused_cell_backward(base);
  if (!fused.fused_cell) return base;
  return fused_if_co_resident(fused_kernel, base, fused, device_limits().sms);
}

}  // namespace cuda
}  // namespace fusedrnn
