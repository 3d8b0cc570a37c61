"""Philox4x32-10 in plain torch, bit-identical to Triton's ``tl.rand(seed, offset)``.

This module is the single definition of fusedrnn's randomness contract
(docs/design.md §3.2):

* the generator: Philox4x32-10 (Salmon et al. 2011, Random123) keyed by the 64-bit seed
  ``key = (lo32(seed), hi32(seed))`` with counter ``(lo32(offset), hi32(offset), 0, 0)``;
  the first output word ``u`` becomes a float in [0, 1) exactly as Triton does it:
  ``x = int32(u); x = ~x if x < 0; float32(x) * 4.6566127342e-10``;
* the offset layout: which 64-bit counter each mask element uses (:func:`mask_offset`).

The Triton kernels call ``tl.rand(seed, offset)`` with offsets built the same way, and
``csrc/include/fusedrnn/philox.cuh`` mirrors both, so every backend draws identical masks.

All arithmetic here is done in int64 on values below 2**32, so nothing relies on
unsigned or overflowing tensor arithmetic.
"""

from __future__ import annotations

import torch

__all__ = [
    "MAX_BATCH",
    "MAX_LAYER_DIRECTIONS",
    "MAX_STEPS",
    "MAX_UNITS",
    "STREAM_INPUT_DROPOUT",
    "STREAM_RECURRENT_DROPOUT",
    "STREAM_WEIGHT_DROP_HH",
    "STREAM_ZONEOUT_CELL",
    "STREAM_ZONEOUT_HIDDEN",
    "check_offset_limits",
    "draw_seed",
    "mask_base_offset",
    "mask_offset",
    "philox4x32_10",
    "philox4x32_10_block",
    "rand",
    "uniform_from_uint32",
    "uniform_mask",
    "weight_drop_base_offset",
    "weight_drop_key",
    "weight_drop_uniform",
]

# Philox4x32 constants (Random123): round multipliers and Weyl key increments.
PHILOX_ROUND_A = 0xD2511F53  # multiplies counter word 0
PHILOX_ROUND_B = 0xCD9E8D57  # multiplies counter word 2
PHILOX_KEY_A = 0x9E3779B9  # added to key word 0 after each round
PHILOX_KEY_B = 0xBB67AE85  # added to key word 1 after each round
PHILOX_ROUNDS = 10
# Largest float32 scale with (2**31 - 1) * scale < 1 after rounding: Triton's constant.
UINT_TO_UNIFORM_SCALE = 4.6566127342e-10

_MASK32 = 0xFFFFFFFF

# ---------------------------------------------------------------------------------------
# Offset layout. A mask element is identified by (stream, layer, direction, t, b, unit);
# its Philox counter is the int64 whose bit fields are, from the top:
#
#     bits 62..63  stream      (4 streams, below)
#     bits 56..61  2*layer + direction   (32 layers x 2 directions)
#     bits 38..55  t           (time index in the sequence, 0 for variational masks)
#     bits 20..37  b           (batch row)
#     bits  0..19  unit        (input feature or hidden unit)
#
# The fields never overlap, so ``base + (t << 38) + (b << 20) + unit`` with a base that
# holds the top fields is the same 64-bit pattern as or-ing them, in two's complement int64.
# Masks therefore do not depend on the tensor sizes: element (t, b, unit) of a layer gets
# the same random number whatever T, B or H are.
# ---------------------------------------------------------------------------------------
STREAM_INPUT_DROPOUT = 0  # variational mask on the layer input, [B, I]
STREAM_RECURRENT_DROPOUT = 1  # variational mask on h_{t-1}, [B, H_out]
STREAM_ZONEOUT_CELL = 2  # per-step zoneout mask on c, [T, B, H]
STREAM_ZONEOUT_HIDDEN = 3  # per-step zoneout mask on h, [T, B, H_out]

UNIT_BITS = 20
BATCH_BITS = 18
STEP_BITS = 18
LAYER_DIRECTION_BITS = 6
BATCH_SHIFT = UNIT_BITS  # 20
STEP_SHIFT = UNIT_BITS + BATCH_BITS  # 38
LAYER_DIRECTION_SHIFT = STEP_SHIFT + STEP_BITS  # 56
STREAM_SHIFT = LAYER_DIRECTION_SHIFT + LAYER_DIRECTION_BITS  # 62

MAX_UNITS = 1 << UNIT_BITS
MAX_BATCH = 1 << BATCH_BITS
MAX_STEPS = 1 << STEP_BITS
MAX_LAYER_DIRECTIONS = 1 << LAYER_DIRECTION_BITS


def _to_int64(value: int) -> int:
    """Reinterpret a 64-bit pattern as a signed int64 Python int."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= (1 << 63) else value


def mask_base_offset(stream: int, layer: int, direction: int) -> int:
    """The int64 offset of element (t=0, b=0, unit=0) of a mask: the top bit fields."""
    layer_direction = 2 * layer + direction
    if not 0 <= stream < 4:
        raise ValueError(f"stream must be in [0, 4), got {stream}")
    if direction not in (0, 1) or not 0 <= layer_direction < MAX_LAYER_DIRECTIONS:
        raise ValueError(
            f"random masks support at most {MAX_LAYER_DIRECTIONS // 2} layers, got layer={layer}"
        )
    return _to_int64((stream << STREAM_SHIFT) | (layer_direction << LAYER_DIRECTION_SHIFT))


# ---------------------------------------------------------------------------------------
# Weight drop (DropConnect on W_hh, issue 15): a second key, the same layout.
#
# The four stream values above are taken, so weight masks are drawn under a derived key
#
#     key = seed XOR WEIGHT_DROP_KEY_XOR       (as an int64 bit pattern)
#
# with the offset layout unchanged except that a weight's row takes the t and b fields:
#
#     bits 62..63  stream under the derived key: 0 W_hh [G*H, P]  (1..3 reserved)
#     bits 56..61  2*layer + direction
#     bits 20..55  row of the weight (gate-major n = g*H + j)      limit 2**36
#     bits  0..19  column (input unit of h)                        limit 2**20
#
# i.e. the offset is mask_offset(STREAM_WEIGHT_DROP_HH, layer, direction, 0, row, col) and
# the kernels' ordinary mask draw with (t, b, unit) = (0, row, col) under the derived key.
# draw_seed() returns seeds in [0, 2**63), and the constant has its top bit set, so a derived
# key is never the key of any call's other masks: weight masks cannot coincide with the
# dropout/zoneout masks of this or of any other call. One mask per (call, layer, direction),
# shared by every time step and every batch row; an element is kept when its number >= p.
# The launchers compute the derived key here and pass it to the kernels as their seed, so the
# derivation, like the bit layout, is written down once.
# ---------------------------------------------------------------------------------------
WEIGHT_DROP_KEY_XOR = 0x9E3779B97F4A7C15  # 2**64 / golden ratio; top bit set
STREAM_WEIGHT_DROP_HH = 0  # under the weight-drop key: DropConnect mask of W_hh [G*H, P]
WEIGHT_ROW_SHIFT = BATCH_SHIFT  # 20: a weight row fills bits 20..55 (the b and t fields)
MAX_WEIGHT_ROWS = 1 << (BATCH_BITS + STEP_BITS)


def weight_drop_key(seed: int | torch.Tensor) -> int | torch.Tensor:
    """The Philox key of a call's weight-drop masks: ``seed XOR WEIGHT_DROP_KEY_XOR`` as int64
    (a 0-d int64 tensor for a tensor seed)."""
    if isinstance(seed, torch.Tensor):
        return seed.to(torch.int64) ^ _to_int64(WEIGHT_DROP_KEY_XOR)
    return _to_int64(seed ^ WEIGHT_DROP_KEY_XOR)


def weight_drop_base_offset(layer: int, direction: int) -> int:
    """The int64 offset of element (row 0, col 0) of a layer-direction's W_hh mask."""
    return mask_base_offset(STREAM_WEIGHT_DROP_HH, layer, direction)


def weight_drop_uniform(
    seed: int | torch.Tensor,
    layer: int,
    direction: int,
    rows: int,
    cols: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Uniform numbers [rows, cols] of the W_hh weight-drop mask of ``seed``'s call (the
    call's seed, not the derived key). Element < p means dropped."""
    if rows > MAX_WEIGHT_ROWS or cols > MAX_UNITS:
        raise ValueError(
            f"fusedrnn weight drop supports weights of at most {MAX_WEIGHT_ROWS} x {MAX_UNITS}, "
            f"got {rows} x {cols}"
        )
    row = torch.arange(rows, dtype=torch.int64, device=device)[:, None]
    col = torch.arange(cols, dtype=torch.int64, device=device)[None, :]
    base = weight_drop_base_offset(layer, direction)
    offsets = base + (row << WEIGHT_ROW_SHIFT) + col
    return rand(weight_drop_key(seed), offsets)


def check_offset_limits(steps: int, batch: int, units: int) -> None:
    """Raise if a mask of this size would not fit the offset layout."""
    for what, value, limit in (
        ("sequence length", steps, MAX_STEPS),
        ("batch size", batch, MAX_BATCH),
        ("feature size", units, MAX_UNITS),
    ):
        if value > limit:
            raise ValueError(
                f"fusedrnn random masks support a {what} of at most {limit}, got {value}"
            )


def mask_offset(
    stream: int,
    layer: int,
    direction: int,
    t: torch.Tensor | int,
    b: torch.Tensor | int,
    unit: torch.Tensor | int,
) -> torch.Tensor:
    """The int64 Philox offset of mask element (stream, layer, direction, t, b, unit)."""
    base = mask_base_offset(stream, layer, direction)
    t = torch.as_tensor(t, dtype=torch.int64)
    b = torch.as_tensor(b, dtype=torch.int64)
    unit = torch.as_tensor(unit, dtype=torch.int64)
    return base + (t << STEP_SHIFT) + (b << BATCH_SHIFT) + unit


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product of constant ``a`` and uint32 values ``b``.

    ``b`` holds values in [0, 2**32) as int64. The product can reach 2**64, so it is formed
    from 16-bit halves of ``b`` whose partial products stay below 2**48.
    """
    b_lo = b & 0xFFFF
    b_hi = b >> 16
    p_lo = a * b_lo  # < 2**48
    p_hi = a * b_hi  # < 2**48
    # a*b = p_hi * 2**16 + p_lo = 2**16 * (p_hi + (p_lo >> 16)) + (p_lo & 0xFFFF)
    upper = p_hi + (p_lo >> 16)  # < 2**49: a*b >> 16
    hi = upper >> 16
    lo = ((upper & 0xFFFF) << 16) | (p_lo & 0xFFFF)
    return hi, lo


def philox4x32_10(
    seed: int | torch.Tensor, offset: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four uint32 output words (as int64 tensors) for int64 ``offset`` under ``seed``.

    ``seed`` is a Python int or a 0-d int64 tensor (what a compiled graph carries).
    """
    if isinstance(seed, torch.Tensor):
        seed = seed.to(torch.int64)
    else:
        seed = _to_int64(seed)
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32  # arithmetic shift of the signed pattern, then the low word
    offset = torch.as_tensor(offset, dtype=torch.int64)
    c0 = offset & _MASK32
    c1 = (offset >> 32) & _MASK32  # arithmetic shift, then the low word: hi32 of the pattern
    zero = torch.zeros_like(c0)
    return philox4x32_10_block((c0, c1, zero, zero), (k0, k1))


def philox4x32_10_block(
    counter: tuple[torch.Tensor | int, torch.Tensor | int, torch.Tensor | int, torch.Tensor | int],
    key: tuple[torch.Tensor | int, torch.Tensor | int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random123's ``philox4x32_10`` on a full 4-word counter and 2-word key.

    Every word is a uint32 value held in an int64 tensor or a Python int (tensors broadcast).
    :func:`philox4x32_10` is this function with counter words 2 and 3 set to 0; this form is
    the one Random123's published known-answer vectors are stated in.
    """
    c0, c1, c2, c3 = (torch.as_tensor(w, dtype=torch.int64) for w in counter)
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    k0, k1 = key
    for _ in range(PHILOX_ROUNDS):
        hi_b, lo_b = _mulhilo32(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo32(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def uniform_from_uint32(u: torch.Tensor) -> torch.Tensor:
    """Triton's ``uint_to_uniform_float`` for uint32 words held in int64: a float32 in [0, 1)."""
    x = torch.where(u >= (1 << 31), u - (1 << 32), u)  # int32 reinterpretation
    x = torch.where(x < 0, -x - 1, x)  # ~x for negative x
    # int32 -> float32 rounds to nearest; then one float32 multiply, as in Triton.
    return x.to(torch.float32) * torch.tensor(UINT_TO_UNIFORM_SCALE, dtype=torch.float32)


def rand(seed: int | torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Bit-identical to Triton's ``tl.rand(seed, offset)``: float32 uniform in [0, 1)."""
    return uniform_from_uint32(philox4x32_10(seed, offset)[0])


def uniform_mask(
    seed: int | torch.Tensor,
    stream: int,
    layer: int,
    direction: int,
    steps: int | None,
    batch: int,
    units: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Uniform numbers of a whole mask: ``[batch, units]`` (variational, ``steps=None``,
    time field 0) or ``[steps, batch, units]`` (per-step). Element < p means dropped / zoned out.
    """
    check_offset_limits(steps or 1, batch, units)
    b = torch.arange(batch, dtype=torch.int64, device=device)[:, None]
    u = torch.arange(units, dtype=torch.int64, device=device)[None, :]
    if steps is None:
        offsets = mask_offset(stream, layer, direction, 0, b, u)
    else:
        t = torch.arange(steps, dtype=torch.int64, device=device)[:, None, None]
        offsets = mask_offset(stream, layer, direction, t, b, u)
    return rand(seed, offsets.to(device))


def draw_seed() -> torch.Tensor:
    """A fresh non-negative int64 seed (a 0-d CPU tensor) from torch's default generator.

    ``torch.manual_seed`` therefore makes fusedrnn's masks reproducible. It stays a tensor so
    that a compiled graph draws it without a graph break.
    """
    return torch.randint(0, 2**63 - 1, (), dtype=torch.int64)
