// The host (CPU) backend's entry points. Pointers in the params are host addresses.
#pragma once

#include "fusedrnn/params.h"

namespace fusedrnn {
namespace host {

void recurrence_forward(const RecurrenceFwdParams& p);
void recurrence_backward(const RecurrenceBwdParams& p);

}  // namespace host
}  // namespace fusedrnn
