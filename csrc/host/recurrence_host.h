// The host (CPU) backend's entry points. Pointers in the params are host addresses.
#pragma once

#include "fusedrnn/params.h"

namespace fusedrnn {
namespace host {

void recurrence_forward(const RecurrenceFwdParams& p);
void recurrence_backward(const RecurrenceBwdParams& p);
// Forward calls (per layer-direction) that computed the input projection in the step loop
// (p.x set and the path applies: xproj_in_loop_applies); for the tests.
int64_t xproj_in_loop_calls();
// Forward calls whose threads split the batch rows (plain float32 LSTM / GRU,
// recurrence_host.cpp "Forward split by batch rows"); for the tests.
int64_t row_split_calls();
// Forward calls (per layer-direction) with one row whose input projection ran on a second
// thread ahead of the step loop (recurrence_host.cpp forward_one_row_pipelined); for the tests.
int64_t one_row_pipeline_calls();
// Whether a forward call with these params computes xg in its step loop: float32, p.x set,
// the vector cell (LSTM / GRU, no norm, no projection, not fused_cell), and B > 1 or (one
// row) two threads or more (the projection on a thread of its own).
bool xproj_in_loop_applies(const RecurrenceFwdParams& p);

}  // namespace host
}  // namespace fusedrnn
