// The CUDA backend's entry points (compiled by nvcc; declared here for the bindings).
// Pointers in the params are device addresses; `stream` is a cudaStream_t passed as an integer
// by the Python launcher (torch.cuda.current_stream().cuda_stream). Errors are thrown as
// std::runtime_error carrying the CUDA error text; nothing synchronises the host.
#pragma once

#include <cstdint>
#include <string>

#include "fusedrnn/params.h"

namespace fusedrnn {
namespace cuda {

void recurrence_forward(const RecurrenceFwdParams& p, uintptr_t stream);
void recurrence_backward(const RecurrenceBwdParams& p, uintptr_t stream);
// Number of thread blocks the kernels would use for (B, H, G, dtype) on the current device,
// or an exception saying why the configuration cannot be co-resident.
int64_t plan_grid(const RecurrenceFwdParams& p, bool backward);
// Empty if a CUDA device is usable, else the reason ("no CUDA device: ...").
std::string device_status();

}  // namespace cuda
}  // namespace fusedrnn
