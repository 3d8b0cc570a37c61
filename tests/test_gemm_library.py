"""The per-CPU choice of GEMM library (fusedrnn/input_projection.py::gemm_libraries): vendor
parsing, the FUSEDRNN_HOST_GEMM override, and that the chosen library's function is the one
called by the input projection and the weight-gradient GEMMs."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_by_rule

from fusedrnn import input_projection as ip
from fusedrnn.backends import native

needs_onednn = pytest.mark.skipif(not ip._ONEDNN_LINEAR, reason="torch built without oneDNN")

_INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n"
_AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"


def test_cpu_vendor_parses_proc_cpuinfo():
    assert ip.cpu_vendor(_INTEL) == "GenuineIntel"
    assert ip.cpu_vendor(_AMD) == "AuthenticAMD"
    assert ip.cpu_vendor("processor\t: 0\nmodel name\t: vendor_id lookalike\n") is None
    assert ip.cpu_vendor("vendor_id\t:\n") is None
    assert ip.cpu_vendor("") is None


@pytest.mark.parametrize(
    ("setting", "vendor", "expected"),
    [
        (None, "GenuineIntel", ("onednn", "mkl")),
        ("auto", "GenuineIntel", ("onednn", "mkl")),
        ("", "AuthenticAMD", ("onednn", "onednn")),
        (None, None, ("onednn", "onednn")),
        (None, "HygonGenuine", ("onednn", "onednn")),
        ("mkl", "AuthenticAMD", ("mkl", "mkl")),
        (" OneDNN ", "GenuineIntel", ("onednn", "onednn")),
        ("weight_grad=onednn", "GenuineIntel", ("onednn", "onednn")),
        ("linear=mkl", "GenuineIntel", ("mkl", "mkl")),
        ("linear=mkl,weight_grad=onednn", "GenuineIntel", ("mkl", "onednn")),
    ],
)
def test_parse_gemm_libraries(setting, vendor, expected):
    assert tuple(ip.parse_gemm_libraries(setting, vendor)) == expected


@pytest.mark.parametrize("setting", ["openblas", "linear=", "dw=mkl", "linear=mkl;weight_grad=mkl"])
def test_parse_gemm_libraries_rejects_unknown_settings(setting):
    with pytest.raises(ValueError, match="FUSEDRNN_HOST_GEMM"):
        ip.parse_gemm_libraries(setting, "GenuineIntel")


def test_gemm_libraries_reads_the_environment_once(monkeypatch):
    ip.gemm_libraries.cache_clear()
    try:
        monkeypatch.setenv(ip.GEMM_ENV, "linear=mkl,weight_grad=onednn")
        assert ip.gemm_libraries() == ip.GemmLibraries("mkl", "onednn")
        monkeypatch.setenv(ip.GEMM_ENV, "onednn")
        assert ip.gemm_libraries() == ip.GemmLibraries("mkl", "onednn")  # cached
    finally:
        ip.gemm_libraries.cache_clear()


class _Calls:
    """Wraps the two libraries' entry points and records which ran."""

    def __init__(self, monkeypatch):
        self.names = []
        pointwise = torch.ops.mkldnn._linear_pointwise
        linear = F.linear

        class _Ops:  # torch.ops.mkldnn stand-in: records, then runs the real op
            @staticmethod
            def _linear_pointwise(*args):
                self.names.append("onednn")
                return pointwise(*args)

        class _Torch:  # the module's `torch`, but with recording ops.mkldnn
            def __getattr__(_, name):
                return getattr(torch, name)

            class ops:
                mkldnn = _Ops

        def recording_linear(*args):
            self.names.append("mkl")
            return linear(*args)

        monkeypatch.setattr(ip, "torch", _Torch())
        monkeypatch.setattr(native, "torch", _Torch())
        monkeypatch.setattr(ip.F, "linear", recording_linear)


def _force(monkeypatch, linear, weight_grad):
    monkeypatch.setattr(ip, "gemm_libraries", lambda: ip.GemmLibraries(linear, weight_grad))


@needs_onednn
@pytest.mark.parametrize("library", ["onednn", "mkl"])
def test_projection_takes_the_chosen_library(monkeypatch, library):
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=gen) for s in ((8, 4, 16), (24, 16), (24,)))
    _force(monkeypatch, library, "onednn")
    calls = _Calls(monkeypatch)
    with torch.no_grad():
        out = ip._linear(x, w, b)
    assert calls.names == [library]
    truth = F.linear(x.double(), w.double(), b.double())
    assert_by_rule({"out": out}, {"out": truth}, {"out": F.linear(x, w, b)}, torch.float32)


@needs_onednn
@pytest.mark.parametrize("weight_grad", ["onednn", "mkl"])
@pytest.mark.parametrize("narrow_first", [False, True])
def test_weight_gradient_takes_the_chosen_library(monkeypatch, weight_grad, narrow_first):
    gen = torch.Generator().manual_seed(1)
    grad_rows = torch.randn(64, 24 if narrow_first else 8, generator=gen, dtype=torch.float64)
    input_rows = torch.randn(64, 16, generator=gen, dtype=torch.float64)
    truth = grad_rows.t() @ input_rows
    _force(monkeypatch, "onednn", weight_grad)
    calls = _Calls(monkeypatch)
    with torch.no_grad():
        got = native._rows_product(grad_rows.float(), input_rows.float())
    assert calls.names == ([] if weight_grad == "mkl" else ["onednn"])
    assert got.is_contiguous()
    baseline = grad_rows.float().t() @ input_rows.float()
    assert_by_rule({"dW": got}, {"dW": truth}, {"dW": baseline}, torch.float32)


@needs_onednn
@pytest.mark.parametrize(("linear", "weight_grad"), [("onednn", "mkl"), ("mkl", "onednn")])
def test_training_projection_takes_the_chosen_libraries(monkeypatch, linear, weight_grad):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(8, 4, 16, generator=gen, requires_grad=True)
    w = torch.randn(24, 16, generator=gen, requires_grad=True)
    b = torch.randn(24, generator=gen, requires_grad=True)
    _force(monkeypatch, linear, weight_grad)
    calls = _Calls(monkeypatch)
    out = ip._linear(x, w, b)
    assert calls.names == [linear]
    calls.names.clear()
    out.backward(torch.ones_like(out))
    # mkl: torch's own autograd (mm, no F.linear call); onednn: dx by _linear, dW as chosen
    expected = (
        [] if linear == "mkl" else ["onednn"] + (["onednn"] if weight_grad == "onednn" else [])
    )
    assert calls.names == expected
    truth, base = (
        {
            "dx": torch.ones(8, 4, 24, dtype=dt) @ w.detach().to(dt),
            "dW": torch.ones(24, 32, dtype=dt) @ x.detach().to(dt).reshape(32, 16),
        }
        for dt in (torch.float64, torch.float32)
    )
    assert_by_rule({"dx": x.grad, "dW": w.grad}, truth, base, torch.float32)
