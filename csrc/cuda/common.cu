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

LaunchPlan plan_launch(const void* kernel, int64_t B, int64_t G, int64_t H, int64_t storage_bytes,
                       int unit_arrays, const char* what) {
  int device = 0;
  FRNN_CUDA_CHECK(cudaGetDevice(&device));
  int sms = 0, smem_optin = 0, cooperative = 0;
  FRNN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  FRNN_CUDA_CHECK(
      cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  FRNN_CUDA_CHECK(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device));
  if (!cooperative)
    throw std::runtime_error("fusedrnn: this CUDA device does not support cooperative launches");

  LaunchPlan plan;
  plan.grid = H < sms ? H : sms;
  plan.hs = (H + plan.grid - 1) / plan.grid;
  plan.w_in_smem = true;
  SmemPlan s = smem_plan(B, G, H, plan.hs, storage_bytes, true, unit_arrays);
  if (s.total > smem_optin) {
    plan.w_in_smem = false;  // W_hh slice streams from L2 instead
    s = smem_plan(B, G, H, plan.hs, storage_bytes, false, unit_arrays);
  }
  if (s.total > smem_optin) {
    throw std::runtime_error(
        std::string("fusedrnn cuda ") + what + ": batch " + std::to_string(B) +
        " x hidden " + std::to_string(H) + " needs " + std::to_string(s.total) +
        " bytes of shared memory per block, the device allows " + std::to_string(smem_optin));
  }
  plan.smem_bytes = s.total;
  FRNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(plan.smem_bytes)));
  int per_sm = 0;
  FRNN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, kernel, kThreads, static_cast<size_t>(plan.smem_bytes)));
  if (static_cast<int64_t>(per_sm) * sms < plan.grid) {
    throw std::runtime_error(std::string("fusedrnn cuda ") + what + ": a grid of " +
                             std::to_string(plan.grid) +
                             " blocks cannot be co-resident (occupancy " +
                             std::to_string(per_sm) + " block(s)/SM x " + std::to_string(sms) +
                             " SMs)");
  }
  return plan;
}

}  // namespace cuda
}  // namespace fusedrnn
