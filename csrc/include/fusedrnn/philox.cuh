// Philox4x32-10, bit-identical to fusedrnn/philox.py and to Triton's tl.rand(seed, offset).
//
// key     = (lo32(seed), hi32(seed))
// counter = (lo32(offset), hi32(offset), 0, 0)
// The first output word u becomes a float32 in [0, 1) as Triton does it:
//   x = int32(u); if (x < 0) x = ~x; return float(x) * 4.6566127342e-10f
//
// Mask offsets (the layout is defined in fusedrnn/philox.py and only mirrored here):
//   offset = mask_base_offset(stream, layer, direction) + (t << 38) + (b << 20) + unit
// computed in wrapping 64-bit arithmetic. The launcher computes the base in Python and
// passes it as an int64, so the bit-field layout is written down exactly once.
#pragma once

#include <cstdint>

#include "fusedrnn/hostdevice.h"

namespace fusedrnn {

constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;  // multiplies counter word 0
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;  // multiplies counter word 2
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;    // Weyl increment of key word 0
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;    // Weyl increment of key word 1
constexpr int kPhiloxRounds = 10;
constexpr float kUintToUniformScale = 4.6566127342e-10f;

constexpr int kStepShift = 38;   // bits 38..55: time index t
constexpr int kBatchShift = 20;  // bits 20..37: batch row b

struct Philox4 {
  uint32_t x[4];
};

FRNN_HD uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
#endif
}

// Random123's philox4x32_10 block function: the four output words of a full 128-bit counter
// under a 64-bit key (the published known-answer vectors are stated in these terms).
FRNN_HD Philox4 philox4x32_10_block(Philox4 counter, uint32_t k0, uint32_t k1) {
  uint32_t c0 = counter.x[0];
  uint32_t c1 = counter.x[1];
  uint32_t c2 = counter.x[2];
  uint32_t c3 = counter.x[3];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    uint32_t hi_b;
    uint32_t hi_a;
    const uint32_t lo_b = philox_mulhilo(kPhiloxRoundB, c2, &hi_b);
    const uint32_t lo_a = philox_mulhilo(kPhiloxRoundA, c0, &hi_a);
    const uint32_t n0 = hi_b ^ c1 ^ k0;
    const uint32_t n2 = hi_a ^ c3 ^ k1;
    c0 = n0;
    c1 = lo_b;
    c2 = n2;
    c3 = lo_a;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The four output words for a 64-bit offset (the int64 bit pattern) under a 64-bit seed:
// counter (lo32(offset), hi32(offset), 0, 0), key (lo32(seed), hi32(seed)).
FRNN_HD Philox4 philox4x32_10(uint64_t seed, uint64_t offset) {
  const Philox4 counter{
      {static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32), 0u, 0u}};
  return philox4x32_10_block(counter, static_cast<uint32_t>(seed),
                             static_cast<uint32_t>(seed >> 32));
}

// Triton's uint_to_uniform_float for one 32-bit word.
FRNN_HD float philox_uint_to_uniform(uint32_t u) {
  int32_t x = static_cast<int32_t>(u);
  if (x < 0) x = ~x;
  return static_cast<float>(x) * kUintToUniformScale;
}

// tl.rand(seed, offset): seed and offset are the int64 bit patterns.
FRNN_HD float philox_uniform(uint64_t seed, uint64_t offset) {
  return philox_uint_to_uniform(philox4x32_10(seed, offset).x[0]);
}

// Offset of mask element (t, b, unit) given the base of its (stream, layer, direction).
FRNN_HD uint64_t mask_offset(uint64_t base, int64_t t, int64_t b, int64_t unit) {
  return base + (static_cast<uint64_t>(t) << kStepShift) +
         (static_cast<uint64_t>(b) << kBatchShift) + static_cast<uint64_t>(unit);
}

// Uniform number of mask element (t, b, unit).
FRNN_HD float mask_uniform(uint64_t seed, uint64_t base, int64_t t, int64_t b, int64_t unit) {
  return philox_uniform(seed, mask_offset(base, t, b, unit));
}

// Weight drop (DropConnect on W_hh): the keep-scaled mask element of weight (row, col), 0 when
// dropped (uniform < p) else keep_scale = 1 / (1 - p). `key` is the call's weight-drop key,
// philox.weight_drop_key(seed) = seed XOR 0x9E3779B97F4A7C15, and `base` is
// philox.weight_drop_base_offset(layer, direction); both come from the launcher. The row
// takes the (t, b) fields of the layout: offset = base + (row << 20) + col (fusedrnn/philox.py).
// The host draws row segments with mask_uniform in a vectorised loop (host/weight_drop_host.h).
template <class T>
FRNN_HD T weight_drop_scale(uint64_t key, uint64_t base, int64_t row, int64_t col, float p,
                            T keep_scale) {
  return mask_uniform(key, base, 0, row, col) < p ? T(0) : keep_scale;
}

}  // namespace fusedrnn
