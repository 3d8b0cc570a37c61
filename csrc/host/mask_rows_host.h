// The host's per-step mask draw: philox.cuh's mask_uniform over a run of units of every batch
// row, compared with a threshold, with the Philox rounds in SIMD lanes (one counter per element,
// and only the block's first word is used, so one block cannot serve several elements).
#pragma once

#include <cstdint>

namespace fusedrnn {
namespace host {

// below[b * n + k] = (mask_uniform(seed, base, t, b, u0 + k) < threshold) for b < rows, k < n:
// the zoneout decisions of step t for units [u0, u0 + n), bit-identical to the per-element draw
// (the same words, the same float conversion). AVX-512 / AVX2 / scalar per FUSEDRNN_HOST_ISA.
void mask_below_rows(uint64_t seed, uint64_t base, int64_t t, int64_t rows, int64_t u0, int64_t n,
                     float threshold, uint8_t* below);

}  // namespace host
}  // namespace fusedrnn
