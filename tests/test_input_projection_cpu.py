"""The CPU inference input projection on oneDNN (fusedrnn/input_projection.py::_linear)."""

import pytest
import torch
import torch.nn.functional as F

from fusedrnn import input_projection as ip

needs_onednn = pytest.mark.skipif(not ip._ONEDNN_LINEAR, reason="torch built without oneDNN")


def _use_onednn(monkeypatch, weight_grad="onednn"):
    """The input projection on oneDNN (OneDNNLinear) whatever this CPU or FUSEDRNN_HOST_GEMM
    chose, its weight gradient on ``weight_grad``."""
    monkeypatch.setattr(ip, "gemm_libraries", lambda: ip.GemmLibraries("onednn", weight_grad))


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
    # a gradient is needed: the op has no autograd formula; OneDNNLinear (below) runs it
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


def _float64_linear_grads(x, w, b, grad):
    """Output and (dx, dW, db) of ``x W^T + b`` in float64, with F.linear."""
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b) if t is not None]
    out = F.linear(*leaves, *([None] if b is None else []))
    return out, torch.autograd.grad(out, leaves, grad.double())


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "steps, batch, in_size, out_size",
    [(7, 3, 13, 17), (17, 1, 19, 5), (4, 5, 1, 31)],  # dW's narrower operand either side
)
@pytest.mark.parametrize("transposed_input", [False, True])
@pytest.mark.parametrize("weight_grad", ["onednn", "mkl"])
def test_onednn_linear_gradients_match_float64_like_f_linear(
    monkeypatch, bias, steps, batch, in_size, out_size, transposed_input, weight_grad
):
    """With a gradient, ``_linear`` runs OneDNNLinear: output and every gradient within 2x
    F.linear's own float32 error of float64 (+ a floor), dW on either library."""
    _use_onednn(monkeypatch, weight_grad)
    gen = torch.Generator().manual_seed(1)
    if transposed_input:  # a batch_first layer's time-major view
        x = torch.randn(batch, steps, in_size, generator=gen).transpose(0, 1)
    else:
        x = torch.randn(steps, batch, in_size, generator=gen)
    x.requires_grad_()
    w = torch.nn.Parameter(torch.randn(out_size, in_size, generator=gen))
    b = torch.nn.Parameter(torch.randn(out_size, generator=gen)) if bias else None
    grad = torch.randn(steps, batch, out_size, generator=gen)
    leaves = [t for t in (x, w, b) if t is not None]

    got = ip._linear(x, w, b)
    assert type(got.grad_fn).__name__ == "OneDNNLinearBackward"
    got_grads = torch.autograd.grad(got, leaves, grad)
    torch_out = F.linear(x, w, b)
    torch_grads = torch.autograd.grad(torch_out, leaves, grad)
    truth, truth_grads = _float64_linear_grads(x, w, b, grad)
    for name, mine, theirs, exact in zip(
        ("out", "dx", "dW", "db"),
        (got, *got_grads),
        (torch_out, *torch_grads),
        (truth, *truth_grads),
    ):
        assert mine.shape == exact.shape, name
        torch_err = (theirs.double() - exact).abs().max().item()
        err = (mine.double() - exact).abs().max().item()
        assert err <= 2 * torch_err + 1e-5, (name, err, torch_err)


@needs_onednn
def test_onednn_linear_only_the_needed_gradients_and_double_backward(monkeypatch):
    """A frozen weight gets no gradient; with ``create_graph=True`` the backward is itself
    differentiable and its second derivative is F.linear's."""
    _use_onednn(monkeypatch)
    x, w, b = _operands(requires_grad=True)
    w.requires_grad_(False)
    x.requires_grad_()
    out = ip._linear(x, w, b)
    assert type(out.grad_fn).__name__ == "OneDNNLinearBackward"
    (dx,) = torch.autograd.grad(out.square().sum(), [x], create_graph=True)
    (ddx,) = torch.autograd.grad(dx.sin().sum(), [x])
    results = {}
    for dtype in (torch.float32, torch.float64):  # F.linear's float32 error, and the truth
        xd = x.detach().to(dtype).requires_grad_()
        out_d = F.linear(xd, w.to(dtype), b.to(dtype))
        (dx_d,) = torch.autograd.grad(out_d.square().sum(), [xd], create_graph=True)
        (ddx_d,) = torch.autograd.grad(dx_d.sin().sum(), [xd])
        results[dtype] = (dx_d, ddx_d)
    for mine, theirs, exact in zip((dx, ddx), results[torch.float32], results[torch.float64]):
        torch_err = (theirs.double() - exact).abs().max().item()
        assert (mine.double() - exact).abs().max().item() <= 2 * torch_err + 1e-5
    frozen = ip._linear(x, w, None)
    frozen.sum().backward()
    assert w.grad is None and b.grad is None and x.grad is not None


@needs_onednn
def test_f_linear_where_onednn_linear_does_not_apply():
    """float64, and torch.func transforms, keep F.linear's autograd."""
    x, w, b = _operands(torch.float64, requires_grad=True)
    assert type(ip._linear(x, w, b).grad_fn).__name__ != "OneDNNLinearBackward"
    x, w, b = _operands(requires_grad=True)
    few_rows = x[:1]  # 3 rows: below the threshold where oneDNN pays
    assert few_rows.numel() < ip._ONEDNN_MIN_ROWS * x.shape[-1]
    assert type(ip._linear(few_rows, w, b).grad_fn).__name__ != "OneDNNLinearBackward"
    x, w, b = _operands(requires_grad=True)

    def loss(weight):
        return ip._linear(x, weight, b).sum()

    got = torch.func.grad(loss)(w.detach())
    expected = torch.autograd.grad(F.linear(x, w, b).sum(), [w])[0]
    torch.testing.assert_close(got, expected)


@needs_onednn
def test_dropped_input_projection_gradients_match_float64():
    """Input dropout's projection (its GEMMs on oneDNN in float32): output and gradients
    within 2x those of the plain float32 expression ``F.linear(x * m_x, W, b)``."""
    gen = torch.Generator().manual_seed(2)
    steps, batch, in_size, out_size = 9, 4, 23, 31
    x = torch.randn(steps, batch, in_size, generator=gen, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(out_size, in_size, generator=gen))
    b = torch.nn.Parameter(torch.randn(out_size, generator=gen))
    grad = torch.randn(steps, batch, out_size, generator=gen)
    seed, p = torch.tensor(5), 0.3
    args = (p, 0, 0)
    got = ip.DroppedInputProjection.apply(x, w, b, seed, *args)
    got_grads = torch.autograd.grad(got, [x, w, b], grad)
    m_x = ip.DroppedInputProjection.mask(x, seed, *args)
    assert 0 < (m_x == 0).sum() < m_x.numel()
    results = {}
    for dtype in (torch.float32, torch.float64):  # the plain expression's error, and the truth
        leaves = [t.detach().to(dtype).requires_grad_() for t in (x, w, b)]
        out = F.linear(leaves[0] * m_x.to(dtype), leaves[1], leaves[2])
        results[dtype] = (out, *torch.autograd.grad(out, leaves, grad.to(dtype)))
    for name, mine, theirs, exact in zip(
        ("out", "dx", "dW", "db"), (got, *got_grads), results[torch.float32], results[torch.float64]
    ):
        torch_err = (theirs.double() - exact).abs().max().item()
        err = (mine.double() - exact).abs().max().item()
        assert err <= 2 * torch_err + 1e-5, (name, err, torch_err)


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("bias", [True, False])
def test_half_inference_projection_fuses_its_bias_on_onednn(dtype, bias, monkeypatch):
    """bf16 / f16 inference (no gradient needed) runs oneDNN's linear with the bias fused
    (_onednn_half_linear_applies) where oneDNN runs the dtype natively, whatever
    FUSEDRNN_HOST_GEMM says (float32's choice): by the numerics rule against float64 like
    F.linear, and equal to F.linear for a contiguous input. A gradient needed, or float32,
    does not take it."""
    if not ip._onednn_runs_natively(dtype):
        pytest.skip(f"oneDNN does not run {dtype} natively on this CPU")
    monkeypatch.setattr(ip, "gemm_libraries", lambda: ip.GemmLibraries("mkl", "mkl"))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, 5, 33, generator=gen).to(dtype)  # 45 rows: above _ONEDNN_MIN_ROWS
    w = torch.randn(31, 33, generator=gen).to(dtype)
    b = torch.randn(31, generator=gen).to(dtype) if bias else None
    calls = []
    pointwise = torch.ops.mkldnn._linear_pointwise

    class Spy:  # torch.ops.mkldnn cannot be monkeypatched attribute-wise: wrap the namespace
        def __getattr__(self, name):
            if name == "_linear_pointwise":
                return lambda *a: calls.append(a) or pointwise(*a)
            return getattr(torch.ops.mkldnn, name)

    monkeypatch.setattr(ip.torch.ops, "mkldnn", Spy(), raising=False)
    with torch.no_grad():
        got = ip._linear(x, w, b)
    assert len(calls) == 1, "the fused-bias oneDNN linear did not run"
    monkeypatch.undo()
    truth = F.linear(x.double(), w.double(), None if b is None else b.double())
    torch_err = (F.linear(x, w, b).double() - truth).abs().max().item()
    assert (got.double() - truth).abs().max().item() <= 2 * torch_err + 1e-3
    assert torch.equal(got, F.linear(x, w, b))
    wg = w.clone().requires_grad_()
    assert not ip._onednn_half_linear_applies(x, wg, b)  # a gradient is needed
    assert not ip._onednn_half_linear_applies(x.float(), w.float(), None)
