// The cuda backend's weight-drop pass (params.h's WeightDropParams; device addresses).
#pragma once

#include <cstdint>

#include "fusedrnn/params.h"

namespace fusedrnn {
namespace cuda {

void weight_drop_apply(const WeightDropParams& p, uintptr_t stream);

}  // namespace cuda
}  // namespace fusedrnn
