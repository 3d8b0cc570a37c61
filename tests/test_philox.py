"""fusedrnn.philox against Random123's known answer and Triton's own tl.rand."""

from __future__ import annotations

import pytest
import torch

from fusedrnn import philox

# Random123's published known-answer vectors for philox4x32_10, copied from the file
# tests/kat_vectors of the Random123 distribution (D. E. Shaw Research,
# https://github.com/DEShawResearch/random123/blob/main/tests/kat_vectors), lines
# "philox4x32 10 <counter words 0..3> <key words 0..1> <output words 0..3>", all hex.
RANDOM123_PHILOX4X32_10_KAT = [
    (
        (0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x00000000, 0x00000000),
        (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8),
    ),
    (
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),  # the digits of pi
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]
KAT_IDS = ["zeros", "all-ones", "pi-digits"]


@pytest.mark.parametrize(("counter", "key", "expected"), RANDOM123_PHILOX4X32_10_KAT, ids=KAT_IDS)
def test_random123_known_answer_python(counter, key, expected):
    words = philox.philox4x32_10_block(counter, key)
    assert tuple(int(w) for w in words) == expected


@pytest.mark.parametrize(("counter", "key", "expected"), RANDOM123_PHILOX4X32_10_KAT, ids=KAT_IDS)
def test_random123_known_answer_native(counter, key, expected):
    """The C++/CUDA generator (csrc/include/fusedrnn/philox.cuh, through fusedrnn._C)."""
    from fusedrnn.backends import host, native

    if host.availability() is not None:
        pytest.skip(host.availability())
    assert native.native().philox4x32_10_block(counter, key) == expected


def test_seed_offset_form_is_the_block_with_zero_high_counter_words():
    """philox4x32_10(seed, offset) = the block on counter (lo, hi, 0, 0), key (lo, hi) of the
    seed; with the zeros vector this pins the (seed, offset) API to the published answer."""
    assert [int(w) for w in philox.philox4x32_10(0, torch.tensor([0]))] == list(
        RANDOM123_PHILOX4X32_10_KAT[0][2]
    )
    seed, offset = 0x0123456789ABCDEF, -0x1234567890ABCDE  # a negative int64 offset
    pattern = offset & 0xFFFFFFFF_FFFFFFFF
    block = philox.philox4x32_10_block(
        (pattern & 0xFFFFFFFF, pattern >> 32, 0, 0), (seed & 0xFFFFFFFF, seed >> 32)
    )
    got = philox.philox4x32_10(seed, torch.tensor([offset]))
    assert [int(w) for w in got] == [int(w) for w in block]


def test_uniform_range_and_conversion():
    u = torch.tensor([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF], dtype=torch.int64)
    x = philox.uniform_from_uint32(u)
    assert x.dtype == torch.float32
    assert x[0] == 0 and x[4] == 0  # 0 and ~0xffffffff == 0
    assert (x >= 0).all() and (x < 1).all()
    assert x[2] == x[3]  # 0x7fffffff and ~0x80000000 == 0x7fffffff


def test_offset_layout_fields_do_not_overlap():
    a = philox.mask_offset(
        3, 31, 1, philox.MAX_STEPS - 1, philox.MAX_BATCH - 1, philox.MAX_UNITS - 1
    )
    assert int(a) == -1  # every bit set exactly once: the fields tile the 64 bits
    assert int(philox.mask_offset(0, 0, 0, 0, 0, 0)) == 0
    assert int(philox.mask_offset(0, 0, 0, 1, 0, 0)) == 1 << 38
    with pytest.raises(ValueError, match="at most 32 layers"):
        philox.mask_base_offset(0, 32, 0)
    with pytest.raises(ValueError, match="batch size of at most"):
        philox.check_offset_limits(1, philox.MAX_BATCH + 1, 1)


SEEDS = [0, 1, 7, 0x123456789ABC, 2**32, 2**32 - 1, 2**63 - 1, 987654321987]


@pytest.mark.interpreter
def test_bit_identical_to_triton_tl_rand():
    triton = pytest.importorskip("triton", reason="triton is not installed")
    import triton.language as tl

    @triton.jit
    def rand_kernel(out_ptr, offset_ptr, seed, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = i < n
        offset = tl.load(offset_ptr + i, mask=valid, other=0)
        tl.store(out_ptr + i, tl.rand(seed, offset), mask=valid)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    offsets = torch.cat(
        [
            torch.tensor([0, 1, -1, -(2**63), 2**63 - 1, 2**32, 2**32 - 1, -(2**32), 2**40 + 5]),
            torch.randint(-(2**63), 2**63 - 1, (500,), generator=g),
            torch.randint(0, 2**20, (100,), generator=g),
            philox.mask_offset(3, 5, 1, torch.arange(10), 7, 11),
        ]
    )
    for seed in SEEDS:
        out = torch.empty(offsets.numel(), dtype=torch.float32, device=device)
        rand_kernel[(triton.cdiv(offsets.numel(), 128),)](
            out, offsets.to(device), seed, offsets.numel(), BLOCK=128
        )
        expected = philox.rand(seed, offsets)
        assert torch.equal(out.cpu(), expected), f"seed {seed}"
