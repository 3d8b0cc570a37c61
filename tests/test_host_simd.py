"""The host backend's speed paths (issue 12): ISA builds, vectorised activations, inference.

* Dispatch: the build that runs (x86-64-v4 = AVX-512, x86-64-v3 = AVX2+FMA, baseline) is the
  best the CPU supports, lowered by FUSEDRNN_HOST_ISA, never above the CPU.
* Every build the machine can run passes the numerics rule (float64 truth; error <= 2x
  torch.nn's float32 error + floor) on outputs, states and every gradient, at sizes that hit
  the GEMM's edge tiles (B = 1 matrix-vector, rows and panels not multiples of the tile).
* The vectorised sigmoid / tanh: accurate, +-1 (not NaN) for huge |x|, NaN in -> NaN out.
* The buffers the GEMM streams (packed weights, scratch tiles) start on a cache line, also at
  sizes glibc serves by its own mmap (16 bytes past a page boundary: split 64-byte loads).
* Inference: with no gradient needed the host forward saves nothing, and gives the same
  results; functional.recurrence passes the flag into the op.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import assert_by_rule

import fusedrnn
from fusedrnn.backends import host, native
from fusedrnn.backends.base import RecurrenceConfig, RecurrenceInputs

pytestmark = pytest.mark.skipif(
    fusedrnn.available_backends().get("host") is not None, reason="fusedrnn._C not built"
)

REPO = Path(__file__).resolve().parents[1]
ISAS = ("baseline", "x86-64-v3", "x86-64-v4")
V3_FLAGS = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
V4_FLAGS = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


def _cpu_flags() -> set[str] | None:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def _best_isa_of_cpu() -> str | None:
    flags = _cpu_flags()
    if flags is None:
        return None
    if V3_FLAGS <= flags and V4_FLAGS <= flags:
        return "x86-64-v4"
    return "x86-64-v3" if V3_FLAGS <= flags else "baseline"


def test_host_buffers_start_on_a_cache_line():
    """csrc/host/gemm.h's PackedB / AlignedVector and gemm_bf16.h's PackedBf16: fresh buffers of every size (40 MiB is above
    glibc's largest mmap threshold, where a plain vector starts 16 bytes into a line) are
    64-byte aligned, so the micro-kernel's vector loads of W never straddle two lines."""
    sizes = [1, 7, 1000, 3 << 16, 10 << 20]
    offsets = native.native().host_buffer_offsets(sizes)
    assert len(offsets) == 4 * len(sizes)  # PackedB, float and double scratch, PackedBf16
    assert offsets == [0] * len(offsets), offsets


@pytest.mark.parametrize(
    "has_v3, has_v4, request_, expected",
    [
        (False, False, "", "baseline"),
        (True, False, "", "x86-64-v3"),
        (True, True, "", "x86-64-v4"),
        (True, True, "x86-64-v3", "x86-64-v3"),
        (True, True, "baseline", "baseline"),
        (True, False, "x86-64-v4", "x86-64-v3"),  # never above the CPU
        (False, False, "x86-64-v4", "baseline"),
        (False, False, "x86-64-v3", "baseline"),
        (True, True, "bogus", "x86-64-v4"),  # an unknown name sets no ceiling
    ],
)
def test_dispatch_rule(has_v3, has_v4, request_, expected):
    if native.native().host_gemm_variant() == "portable":
        pytest.skip("built without multiversioning")
    assert native.native().host_choose_isa(has_v3, has_v4, request_) == expected


def test_default_build_is_the_best_the_cpu_has():
    best = _best_isa_of_cpu()
    if best is None or native.native().host_gemm_variant() == "portable":
        pytest.skip("x86-64 Linux with multiversioning only")
    env = {k: v for k, v in os.environ.items() if k != "FUSEDRNN_HOST_ISA"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    code = "from fusedrnn import _C; print(_C.host_gemm_variant())"
    got = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert got == best


# Runs in a subprocess (the build is chosen once per process): LSTM and GRU on host in
# float32 against float64 truth, by the project's rule, at edge-tile sizes; prints the build.
_ISA_SCRIPT = textwrap.dedent(
    """
    import torch, fusedrnn
    from fusedrnn import _C
    from tests.helpers import assert_by_rule, run_and_grad
    torch.manual_seed(0)
    for cls, ref_cls in ((fusedrnn.LSTM, torch.nn.LSTM), (fusedrnn.GRU, torch.nn.GRU)):
        for batch, hidden in ((1, 33), (9, 17), (3, 64)):
            steps, inp = 7, 5
            ref = ref_cls(inp, hidden).double()
            ours = cls(inp, hidden, backend="host")
            ours.load_state_dict(ref.state_dict(), strict=False)
            x64 = torch.randn(steps, batch, inp, dtype=torch.float64)
            weights = [torch.randn(steps, batch, hidden, dtype=torch.float64)]
            weights += [torch.randn(1, batch, hidden, dtype=torch.float64) for _ in range(2)]
            truth = run_and_grad(ref, x64.clone().requires_grad_(), None, weights)
            same = run_and_grad(ref.float(), x64.float().requires_grad_(), None, weights)
            got = run_and_grad(ours, x64.float().requires_grad_(), None, weights)
            assert_by_rule(got, truth, same, torch.float32,
                           what=f"{cls.__name__} B={batch} H={hidden}")
    print(_C.host_gemm_variant())
    """
)


def _run_script_on_build(script: str, isa: str) -> None:
    """Runs ``script`` in a subprocess with the host build forced to ``isa`` (skipped where
    this CPU or build has no such variant); it must pass and print that build's name last."""
    best = _best_isa_of_cpu()
    if best is None or native.native().host_gemm_variant() == "portable":
        pytest.skip("x86-64 Linux with multiversioning only")
    if ISAS.index(isa) > ISAS.index(best):
        pytest.skip(f"this CPU has no {isa}")
    env = dict(os.environ, FUSEDRNN_HOST_ISA=isa)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == isa


@pytest.mark.parametrize("isa", ISAS)
def test_every_build_follows_the_numerics_rule(isa):
    _run_script_on_build(_ISA_SCRIPT, isa)


# Runs in a subprocess per build: the vectorised cell (csrc/host/cell_host.cpp: steps 3-5 and
# A-C of a plain LSTM / GRU in 16 or 8 lanes) with every mask it applies (recurrent dropout,
# zoneout drawn in training, zoneout's expectation in eval), lengths and both directions, at
# H = 13 (only a partial vector) and H = 40 (whole vectors and a tail), outputs, states and
# every gradient against the float64 reference by the rule (test_host.compare).
_VECTOR_CELL_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, "tests")
    from fusedrnn import _C
    from fusedrnn.backends import native
    from test_host import compare, make_inputs
    native.POISON_OUTPUTS = True  # an element the kernel forgets to write shows as NaN
    for cell in ("lstm", "gru"):
        for reg in ("none", "recurrent_dropout", "zoneout", "zoneout_eval"):
            for reverse, lengths in ((False, True), (True, False), (True, True)):
                for hidden in (13, 40):
                    compare(make_inputs(cell, reg, reverse, lengths, torch.float32, 6, 4, hidden))
    print(_C.host_gemm_variant())
    """
)


@pytest.mark.parametrize("isa", ISAS)
def test_every_build_of_the_vector_cell_follows_the_numerics_rule(isa):
    _run_script_on_build(_VECTOR_CELL_SCRIPT, isa)


def _gate_inputs(values: torch.Tensor, cell: str, needs_grad: bool = True) -> RecurrenceInputs:
    """One step, B = 1, W_hh = 0, h0 = c0 = 0: the saved gates are the activations of xg."""
    gates = 4 if cell == "lstm" else 1
    hidden = values.numel() // gates
    xg = values.reshape(1, 1, gates * hidden).float()
    zeros = torch.zeros(1, hidden)
    return RecurrenceInputs(
        config=RecurrenceConfig(cell, hidden, 0, 0.0, 0.0, 0.0, "none"),
        xg=xg,
        h0=zeros,
        c0=zeros.clone() if cell == "lstm" else None,
        w_hh=torch.zeros(gates * hidden, hidden),
        b_hh=torch.zeros(gates * hidden),
        w_hr=None,
        lengths=None,
        needs_grad=needs_grad,
    )


def _awkward_values() -> torch.Tensor:
    big = [0.0, 1e-30, 1e-8, 0.3, 0.6249, 0.625, 0.6251, 1.0, 5.0, 9.0, 15.0, 20.0, 44.0, 45.0]
    big += [87.0, 88.72, 88.73, 89.0, 103.0, 105.0, 200.0, 1e4, 1e30, float("inf")]
    mags = torch.tensor(big)
    dense = torch.linspace(-30, 30, 1201)
    values = torch.cat([mags, -mags, dense])
    pad = (-values.numel()) % 4
    return torch.cat([values, torch.linspace(-2, 2, pad + 4 * 7)])  # 4H, H not a multiple of 16


def test_vectorised_sigmoid_and_tanh_match_torch_by_rule():
    values = _awkward_values()
    lstm_gates = host.forward(_gate_inputs(values, "lstm"))[1][1].flatten()
    tanh_gates = host.forward(_gate_inputs(values, "rnn_tanh"))[1][1].flatten()
    hidden = values.numel() // 4
    quarters = values.reshape(4, hidden)
    got_sig = lstm_gates.reshape(4, hidden)[[0, 1, 3]].flatten()
    x_sig = quarters[[0, 1, 3]].flatten()
    checks = [
        ("sigmoid", got_sig, x_sig, torch.sigmoid),
        ("tanh (lstm g)", lstm_gates.reshape(4, hidden)[2], quarters[2], torch.tanh),
        ("tanh (rnn)", tanh_gates, values, torch.tanh),
    ]
    for name, got, x, fn in checks:
        assert torch.isfinite(got).all(), f"{name}: non-finite output for finite/inf input"
        # one function, |values| <= 1: a floor of 1 ulp at 1 instead of the recurrences' 8
        assert_by_rule(
            {name: got},
            {name: fn(x.double())},
            {name: fn(x)},
            torch.float32,
            what="host activations",
            floor=torch.finfo(torch.float32).eps,
        )
    # saturation is exact: +-1 for huge |x| (no inf / inf), the sign kept
    huge = values.abs() >= 20
    assert (tanh_gates[huge] == torch.sign(values[huge])).all()


def _float32_sweep(stride: int = 4099) -> torch.Tensor:
    """Every ``stride``-th float32 bit pattern (both signs: normals, subnormals, +-0, +-inf,
    NaNs) and the thresholds of simd_vec.h's branches and clamps."""
    bits = torch.arange(0, 2**32, stride, dtype=torch.int64)
    bits = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    edges = [0.0, 1e-45, 1e-40, 1.2e-38, 0.625, 9.0, 44.19, 87.0, 88.37, 88.38, 88.73, 89.0]
    edges += [103.98, 1e30, float("inf"), float("nan")]
    edges = torch.tensor(edges)
    edges = torch.cat([edges, -edges, torch.nextafter(edges, torch.zeros(()))])
    return torch.cat([bits.view(torch.float32), edges.float()])


def _host_activations(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sigmoid and tanh of ``values`` through the vector cell: one LSTM step, W_hh = 0,
    h0 = c0 = 0, every gate's input the same row, the saved gates i (sigmoid) and g (tanh)."""
    hidden = 72  # 4 whole 16-lane vectors and a partial one per gate
    pad = (-values.numel()) % hidden
    rows = torch.cat([values, torch.zeros(pad)]).reshape(-1, hidden)
    batch = rows.shape[0]
    inputs = _gate_inputs(torch.zeros(4 * hidden), "lstm")
    zeros = torch.zeros(batch, hidden)
    inputs = inputs.replace(
        xg=rows.repeat(1, 4).reshape(1, batch, 4 * hidden), h0=zeros, c0=zeros.clone()
    )
    gates = host.forward(inputs)[1][1].reshape(batch, 4, hidden)
    n = values.numel()
    return gates[:, 0].flatten()[:n], gates[:, 2].flatten()[:n]


def _ulps(got: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """|got - truth| in float32 ulps of the float64 truth (2^-149 where it is subnormal)."""
    exponent = torch.frexp(truth)[1].clamp(min=-125)
    return (got.double() - truth).abs() / torch.ldexp(torch.ones_like(truth), exponent - 24)


# Measured over every float32 input (AVX-512 build, docs/design.md §5.4): sigmoid 2.48 ulp
# (normal outputs), tanh 2.46 ulp (absolute error <= 8.93e-8); on this sweep (stride 4099)
# ours 1.97 / 2.29, torch's own sigmoid 1.97, tanh 0.56 ulp.
SIGMOID_MAX_ULP, TANH_MAX_ULP = 2.5, 2.5


def test_vectorised_activations_ulp_over_a_dense_sweep():
    x = _float32_sweep()
    sig, tanh = _host_activations(x)
    finite_in = ~torch.isnan(x)
    assert torch.isnan(sig[~finite_in]).all() and torch.isnan(tanh[~finite_in]).all()
    assert not torch.isnan(sig[finite_in]).any() and not torch.isnan(tanh[finite_in]).any()
    x64 = x[finite_in].double()
    sig, tanh = sig[finite_in], tanh[finite_in]
    sig_truth, tanh_truth = torch.sigmoid(x64), torch.tanh(x64)
    tiny = torch.finfo(torch.float32).tiny
    normal = sig_truth >= tiny
    assert _ulps(sig[normal], sig_truth[normal]).max() <= SIGMOID_MAX_ULP
    # subnormal sigmoid (x < -87.3): 0 from x = -88.38 on, where the truth is below 4e-39
    assert ((sig[~normal].double() - sig_truth[~normal]).abs() <= 2.0**-127).all()
    assert _ulps(tanh, tanh_truth).max() <= TANH_MAX_ULP
    # exact saturation, the sign kept, and tiny inputs (subnormals included) unchanged
    big = x64.abs() >= 9.02  # float32 tanh rounds to +-1 from here
    assert (tanh[big].double() == torch.sign(x64[big])).all()
    assert (sig[x64 >= 17.4] == 1).all() and (sig[x64 <= -88.38] == 0).all()
    small = x64.abs() < 1e-20
    assert torch.equal(tanh[small], x[finite_in][small])


def test_nan_in_gives_nan_out():
    values = torch.tensor([float("nan"), 1.0, -3.0, float("nan")] * 12)
    for cell in ("lstm", "rnn_tanh"):
        got = host.forward(_gate_inputs(values, cell))[1][1].flatten()
        assert torch.equal(torch.isnan(got), torch.isnan(values)), cell


@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_inference_saves_nothing_and_gives_the_same_results(cell, norm):
    """Nothing per step is saved when no gradient is needed, normalisation statistics
    included (native.py's layout, shared with the cuda backend)."""
    torch.manual_seed(3)
    steps, batch, hidden = 6, 5, 19
    gates = {"lstm": 4, "gru": 3}.get(cell, 1)
    running = {}
    if norm == "batch":  # eval mode reads the running buffers
        running = dict(
            running_mean_hh=torch.randn(steps, gates * hidden),
            running_var_hh=torch.rand(steps, gates * hidden) + 0.5,
            running_mean_c=torch.randn(steps, hidden) if cell == "lstm" else None,
            running_var_c=torch.rand(steps, hidden) + 0.5 if cell == "lstm" else None,
        )
    common = dict(
        config=RecurrenceConfig(cell, hidden, 0, 0.0, 0.3, 0.2, norm),
        norm_weight_hh=torch.rand(gates * hidden) + 0.5 if norm != "none" else None,
        norm_weight_c=torch.rand(hidden) + 0.5 if norm != "none" and cell == "lstm" else None,
        norm_bias_c=torch.randn(hidden) if norm != "none" and cell == "lstm" else None,
        **running,
        xg=torch.randn(steps, batch, gates * hidden),
        h0=torch.randn(batch, hidden),
        c0=torch.randn(batch, hidden) if cell == "lstm" else None,
        w_hh=torch.randn(gates * hidden, hidden) / hidden**0.5,
        b_hh=torch.randn(gates * hidden),
        w_hr=None,
        lengths=torch.tensor([6, 2, 0, 5, 6]),
    )
    with_grad, saved = host.forward(RecurrenceInputs(**common, needs_grad=True))
    without, nothing = host.forward(RecurrenceInputs(**common, needs_grad=False))
    assert saved[0].numel() > 0 and saved[1].numel() > 0
    assert all(t.numel() == 0 for t in nothing), [tuple(t.shape) for t in nothing]
    assert torch.equal(with_grad.output, without.output)
    assert torch.equal(with_grad.h_n, without.h_n)
    if cell == "lstm":
        assert torch.equal(with_grad.c_n, without.c_n)
    grads = [torch.randn(steps, batch, hidden), torch.randn(batch, hidden), None]
    with pytest.raises(RuntimeError, match="saved nothing"):
        host.backward(RecurrenceInputs(**common, needs_grad=False), nothing, *grads)


def test_recurrence_passes_needs_grad_into_the_op(monkeypatch):
    seen: list[bool] = []
    real_forward = host.forward

    def recording_forward(inputs):
        seen.append(inputs.needs_grad)
        return real_forward(inputs)

    monkeypatch.setattr(host, "forward", recording_forward)
    module = fusedrnn.LSTM(4, 6, backend="host")
    x = torch.randn(3, 2, 4)
    with torch.no_grad():
        module(x)
    module(x)  # the parameters require grad
    module.requires_grad_(False)
    module(x)  # grad mode on, but nothing requires grad
    module(x.requires_grad_())
    assert seen == [False, True, False, True]
