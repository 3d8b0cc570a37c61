"""The CPU inference input projection on oneDNN (fusedrnn/input_projection.py::_linear)."""

import pytest
import torch
import torch.nn.functional as F

from fusedrnn import input_projection as ip

needs_onednn = pytest.mark.skipif(not ip._ONEDNN_LINEAR, reason="torch built without oneDNN")


def _operands(dtype=torch.float32, requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 13, generator=gen, dtype=dtype)
    w = torch.nn.Parameter(torch.randn(17, 13, generator=gen, dtype=dtype), requires_grad)
    b = torch.nn.Parameter(torch.randn(17, generator=gen, dtype=dtype), requires_grad)
    return x, w, b


@needs_onednn
def test_onednn_only_where_no_gradient_is_needed():
    x, w, b = _operands(requires_grad=True)
    with torch.no_grad():
        assert ip._onednn_linear_applies(x, w, b)  # module parameters included
        assert ip._onednn_linear_applies(x, w, None)
    # a gradient is needed: the op has no autograd formula, F.linear must run
    assert not ip._onednn_linear_applies(x, w, b)
    assert ip._linear(x, w, b).requires_grad
    x64, w64, b64 = _operands(torch.float64)
    with torch.no_grad():
        assert not ip._onednn_linear_applies(x64, w64, b64)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_projection_matches_float64_like_f_linear(bias):
    x, w, b = _operands()
    b = b if bias else None
    truth = F.linear(x.double(), w.double(), None if b is None else b.double())
    with torch.no_grad():
        got = ip._linear(x, w, b)
        torch_err = (F.linear(x, w, b).double() - truth).abs().max().item()
    assert got.shape == truth.shape
    assert (got.double() - truth).abs().max().item() <= 2 * torch_err + 1e-5
