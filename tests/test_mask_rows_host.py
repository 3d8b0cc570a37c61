"""The host's vectorised step-mask draw (_C.host_mask_below_rows) is the per-element draw."""

import pytest

_C = pytest.importorskip("fusedrnn._C")


@pytest.mark.parametrize(
    "base",
    [0x0000_0123_4567_0000, 0x0000_0123_FFFF_FFF5],  # the second: low-word carry inside a chunk
)
@pytest.mark.parametrize(
    "t,rows,u0,n", [(0, 1, 0, 1), (3, 2, 5, 17), (7, 3, 1, 31), (5, 2, 0, 33), (9, 2, 7, 65)]
)
def test_rows_match_the_per_element_draw(base, t, rows, u0, n):
    seed, threshold = 0x1234_5678_90AB_CDEF, 0.3
    got = _C.host_mask_below_rows(seed, base, t, rows, u0, n, threshold)
    b = [r for r in range(rows) for _ in range(n)]
    unit = [u0 + k for _ in range(rows) for k in range(n)]
    uniform = _C.mask_uniform(seed, base, [t] * len(b), b, unit)
    assert list(got) == [1 if u < threshold else 0 for u in uniform]
