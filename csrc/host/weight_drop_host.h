// The host backend's weight-drop pass (params.h's WeightDropParams; host addresses).
#pragma once

#include "fusedrnn/params.h"

namespace fusedrnn {
namespace host {

void weight_drop_apply(const WeightDropParams& p);

}  // namespace host
}  // namespace fusedrnn
