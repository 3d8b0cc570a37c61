"""fusedrnn.philox against Random123's known answer and Triton's own tl.rand."""

from __future__ import annotations

import pytest
import torch

from fusedrnn import philox


def test_known_answer_vector():
    """Random123's Philox4x32-10 known answer: key 0, counter 0."""
    words = philox.philox4x32_10(0, torch.tensor([0]))
    assert [int(w) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_known_answer_vector_all_ones():
    """Random123's second kat vector for philox4x32_10: counter and key all ones.

    Our counter words 2 and 3 are always 0, so this checks the arithmetic through the round
    function with the carry-heavy key 0xffffffff instead (key words are the seed's halves);
    the expectation is computed with Python's arbitrary-precision ints.
    """
    seed = 0xFFFFFFFF_FFFFFFFF
    offset = torch.tensor([-1])  # counter words (0xffffffff, 0xffffffff, 0, 0)
    c0, c1, c2, c3 = 0xFFFFFFFF, 0xFFFFFFFF, 0, 0
    k0, k1 = 0xFFFFFFFF, 0xFFFFFFFF
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (
            (p1 >> 32) ^ c1 ^ k0,
            p1 & 0xFFFFFFFF,
            (p0 >> 32) ^ c3 ^ k1,
            p0 & 0xFFFFFFFF,
        )
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    assert [int(w) for w in philox.philox4x32_10(seed, offset)] == [c0, c1, c2, c3]


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
