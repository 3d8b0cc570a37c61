"""torch.autocast: fusedrnn runs the layer in the autocast dtype, as torch.nn.LSTM does under
CUDA autocast — outputs and states in that dtype, parameter gradients in the parameters' own
dtype. (torch's CPU autocast is inconsistent across its RNN classes — LSTM fails in oneDNN,
GRU stays float32, RNN runs bfloat16 — so fusedrnn applies the CUDA rule everywhere.)"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_by_rule
from torch import nn

import fusedrnn
from fusedrnn import backends

CASES = [
    (fusedrnn.LSTM, dict(zoneout_cell=0.1, recurrent_dropout=0.2), "reference"),
    (fusedrnn.LSTM, {}, "auto"),
    (fusedrnn.GRU, dict(layer_norm=True), "reference"),
    (fusedrnn.RNN, dict(recurrent_batch_norm=True, max_steps=4), "auto"),
]


@pytest.mark.parametrize(("cls", "options", "backend"), CASES)
def test_cpu_autocast_runs_in_bfloat16_with_float32_gradients(cls, options, backend):
    torch.manual_seed(0)
    module = cls(8, 6, num_layers=2, backend=backend, **options)
    x = torch.randn(5, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, hidden = module(x)
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    assert out.dtype == torch.bfloat16
    assert all(h.dtype == torch.bfloat16 for h in states)
    out.float().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name

    # the same as running an explicit bfloat16 copy of the layer
    copy = cls(8, 6, num_layers=2, backend=backend, **options)
    copy.load_state_dict(module.state_dict())
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_out = module(x)[0]
    torch.manual_seed(1)
    explicit_out = copy.to(torch.bfloat16)(x.to(torch.bfloat16))[0]
    assert torch.equal(autocast_out, explicit_out)


def test_cpu_autocast_matches_torch_nn_rnn():
    """torch.nn.RNN is the torch.nn class whose CPU autocast runs bfloat16: compare to it."""
    torch.manual_seed(0)
    plain = nn.RNN(8, 6, 2)
    ours = fusedrnn.RNN(8, 6, 2, backend="reference")
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(5, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, ours_out = plain(x)[0], ours(x)[0]
    assert expected.dtype == ours_out.dtype == torch.bfloat16
    truth = plain.double()(x.double())[0]
    # |output| <= 1 (tanh); a floor of 1e-3, tighter than bfloat16's recurrence floor of 1 eps
    assert_by_rule(
        {"output": ours_out},
        {"output": truth},
        {"output": expected},
        torch.bfloat16,
        what="cpu autocast",
        floor=1e-3,
    )


# ------------------------------------------------------------------ CUDA: fusedrnn's kernels
KERNEL_BACKENDS = ["triton", "cuda"]
AUTOCAST_DTYPES = [torch.float16, torch.bfloat16]
OPTIONS = {
    "LSTM": dict(
        input_dropout=0.1,
        recurrent_dropout=0.2,
        zoneout_cell=0.1,
        zoneout_hidden=0.1,
        layer_norm=True,
    ),
    "GRU": dict(recurrent_dropout=0.2, zoneout_hidden=0.1, recurrent_batch_norm=True, max_steps=8),
}


def _spy_on_kernels(monkeypatch, backend: str) -> list[tuple[str, torch.dtype]]:
    """Records (forward | backward, xg dtype) of every call into ``backend``'s launcher."""
    module = backends.load(backend)
    calls: list[tuple[str, torch.dtype]] = []
    for name in ("forward", "backward"):
        original = getattr(module, name)

        def spy(inputs, *args, _name=name, _original=original):
            calls.append((_name, inputs.xg.dtype))
            return _original(inputs, *args)

        monkeypatch.setattr(module, name, spy)
    return calls


def _run_layer(
    module: nn.Module,
    x: torch.Tensor,
    autocast_dtype: torch.dtype | None,
    seed: int,
    device_type: str = "cuda",
):
    """Output, states, grad of the input and of every parameter (by name) of one step of
    training under ``torch.autocast(device_type, autocast_dtype)`` (None: no autocast)."""
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # the masks' seed
    with torch.autocast(
        device_type, dtype=autocast_dtype or torch.float16, enabled=bool(autocast_dtype)
    ):
        out, hidden = module(x)
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    loss = out.double().sin().sum() + sum(s.double().cos().sum() for s in states)
    loss.backward()
    results = {"output": out.detach(), "h_n": states[0].detach(), "grad_input": x.grad}
    if len(states) == 2:
        results["c_n"] = states[1].detach()
    results.update({f"grad_{n}": p.grad for n, p in module.named_parameters()})
    return results


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=["f16", "bf16"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cls_name", ["LSTM", "GRU"])
def test_cuda_autocast_kernels_match_torch_nn(cls_name, backend, dtype, monkeypatch):
    """fusedrnn's triton and cuda kernels under CUDA autocast against torch.nn (cuDNN) under
    autocast: the same dtypes everywhere (outputs and states in the autocast dtype, input and
    parameter gradients in float32), and errors against the float64 truth within the rule."""
    torch.manual_seed(0)
    plain = getattr(nn, cls_name)(16, 32, 2).cuda()
    ours = getattr(fusedrnn, cls_name)(16, 32, 2, backend=backend).cuda()
    ours.load_state_dict(plain.state_dict())
    truth_module = getattr(nn, cls_name)(16, 32, 2).cuda().double()
    truth_module.load_state_dict(plain.state_dict())
    x = torch.randn(7, 5, 16, device="cuda")
    calls = _spy_on_kernels(monkeypatch, backend)

    expected = _run_layer(plain, x, dtype, seed=1)
    got = _run_layer(ours, x, dtype, seed=1)
    truth = _run_layer(truth_module, x.double(), None, seed=1)

    assert calls == [("forward", dtype)] * 2 + [("backward", dtype)] * 2  # one per layer
    assert got.keys() == expected.keys()
    for name, value in got.items():
        assert value.dtype == expected[name].dtype, name
    assert_by_rule(got, truth, expected, dtype, what=f"{backend} under autocast")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=["f16", "bf16"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cls_name", ["LSTM", "GRU"])
def test_cuda_autocast_kernels_with_options(cls_name, backend, dtype, monkeypatch):
    """With fusedrnn's options on (no torch.nn equivalent): the kernels under autocast follow
    torch.nn's CUDA autocast dtypes, and with the same masks their errors against the float64
    reference stay within 2x the reference backend's own error under autocast."""
    cls = getattr(fusedrnn, cls_name)
    options = OPTIONS[cls_name]

    def make(backend_name):
        return lambda: cls(16, 32, 2, backend=backend_name, **options).cuda()

    torch.manual_seed(0)
    ours, reference = make(backend)(), make("reference")()
    reference.load_state_dict(ours.state_dict())
    truth_module = make("reference")().double()
    truth_module.load_state_dict(ours.state_dict())
    x = torch.randn(7, 5, 16, device="cuda")
    calls = _spy_on_kernels(monkeypatch, backend)

    got = _run_layer(ours, x, dtype, seed=3)
    assert calls == [("forward", dtype)] * 2 + [("backward", dtype)] * 2  # the kernels ran
    same = _run_layer(reference, x, dtype, seed=3)
    truth = _run_layer(truth_module, x.double(), None, seed=3)

    for name, value in got.items():
        gradient = name.startswith("grad_")  # of the float32 input and parameters
        assert value.dtype == (torch.float32 if gradient else dtype), name
    assert_by_rule(got, truth, same, dtype, what=f"{backend} with options under autocast")


# ------------------------------------------------------------------ CPU: the host backend
HOST_REASON = fusedrnn.available_backends().get("host")
HOST_OPTIONS = {
    "LSTM": dict(OPTIONS["LSTM"], proj_size=5),
    "GRU": dict(recurrent_dropout=0.2, zoneout_hidden=0.1, layer_norm=True),
    "RNN": dict(zoneout_hidden=0.1, layer_norm=True, nonlinearity="relu"),
}


@pytest.mark.skipif(HOST_REASON is not None, reason=str(HOST_REASON))
@pytest.mark.parametrize("cls_name", ["LSTM", "GRU", "RNN"])
def test_cpu_autocast_runs_on_host(cls_name, monkeypatch):
    """CPU autocast (bfloat16, its default) on a layer with fusedrnn's options: ``auto`` runs
    the host backend in the autocast dtype (one forward and one backward per
    layer-direction), with torch.nn's CUDA autocast dtypes, and with the same masks its errors
    against the float64 reference stay within 2x the reference backend's own error under
    autocast. (float16 is not the baseline's dtype here: the reference loop in float16
    overflows in these layers' gradients, so its error is no bound; host's float16 is held to
    the rule in test_host.py, and to torch.nn's in test_host_half.py.)"""
    dtype = torch.bfloat16
    cls = getattr(fusedrnn, cls_name)
    options = HOST_OPTIONS[cls_name]

    def make(backend_name):
        return cls(16, 13, 2, bidirectional=True, backend=backend_name, **options)

    torch.manual_seed(0)
    ours, reference = make("auto"), make("reference")
    reference.load_state_dict(ours.state_dict())
    truth_module = make("reference").double()
    truth_module.load_state_dict(ours.state_dict())
    x = torch.randn(7, 5, 16)
    calls = _spy_on_kernels(monkeypatch, "host")

    got = _run_layer(ours, x, dtype, seed=3, device_type="cpu")
    assert ours.last_backend == "host"
    assert calls == [("forward", dtype)] * 4 + [("backward", dtype)] * 4
    same = _run_layer(reference, x, dtype, seed=3, device_type="cpu")
    truth = _run_layer(truth_module, x.double(), None, seed=3, device_type="cpu")

    for name, value in got.items():
        gradient = name.startswith("grad_")  # of the float32 input and parameters
        assert value.dtype == (torch.float32 if gradient else dtype), name
    assert_by_rule(got, truth, same, dtype, what="host with options under CPU autocast")
