"""A Triton kernel that does nothing but meet at grid barriers (imported only on a GPU).

It is the floor model's "empty grid barrier": one program per SM, each round every program
arrives on an int32 counter (release) and polls it (acquire) until all have arrived, the
same protocol as ``kernels/primitives.py``'s ``grid_barrier``. A spin limit per round keeps
a grid whose programs are not all resident from hanging: the kernel then reports a timeout
instead of a latency.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def barrier_rounds_kernel(counter_ptr, timeout_ptr, rounds, max_spins):
    num_programs = tl.num_programs(0)
    timed_out = tl.zeros((), dtype=tl.int32)
    for r in range(rounds):
        tl.debug_barrier()
        arrived = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu") + 1
        target = (r + 1) * num_programs
        spins = 0
        while (arrived < target) & (spins < max_spins):
            arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
            spins += 1
        timed_out = tl.maximum(timed_out, (arrived < target).to(tl.int32))
        tl.debug_barrier()
    tl.atomic_max(timeout_ptr, timed_out)
