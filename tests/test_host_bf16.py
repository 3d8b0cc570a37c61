"""The host backend's bfloat16 recurrent products (csrc/host/gemm_bf16.{h,cpp}, issue 12).

* Dispatch: the tier (amx-bf16, avx512-bf16, none = the float32 kernel) is the best the CPU
  has, lowered by FUSEDRNN_HOST_ISA (levels baseline < x86-64-v3 < x86-64-v4 < avx512-bf16 <
  amx-bf16), never above the CPU.
* Every tier the machine can run (forced in a subprocess) passes the numerics rule against
  torch.nn in bfloat16 (float64 truth): LSTM and GRU, outputs, final states and every gradient,
  at awkward sizes (B = 1, 3, 17; H = 1, 13, 33, 65: K not a multiple of 32 nor even, panels
  and 16-row AMX blocks partly filled, the one-row form), reversed and with lengths; and a bf16
  tier really runs (its results differ from the float32 product's).
* The fallback keeps the storage-only contract (test_host_half's "float32 run rounded once").
* AMX refused by the OS (a seccomp filter makes arch_prctl(ARCH_REQ_XCOMP_PERM) fail with
  EPERM in a subprocess) falls back to the avx512-bf16 tier and passes the same checks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import assert_by_rule, row_split_both_ways, run_layer
from torch.nn.utils.rnn import pad_packed_sequence

import fusedrnn
from fusedrnn.backends import host, native

pytestmark = pytest.mark.skipif(
    fusedrnn.available_backends().get("host") is not None, reason="fusedrnn._C not built"
)

REPO = Path(__file__).resolve().parents[1]
TIERS = ("x86-64-v4", "avx512-bf16", "amx-bf16")  # x86-64-v4: no bf16 tier (the fallback)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _best_tier_of_cpu() -> str:
    flags = _cpu_flags()
    v4 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma"} <= flags
    if not (v4 and "avx512_bf16" in flags):
        return "none"
    return "amx-bf16" if {"amx_bf16", "amx_tile"} <= flags else "avx512-bf16"


@pytest.mark.parametrize(
    "v4, bf16, amx, request_, expected",
    [
        (True, True, True, "", "amx-bf16"),
        (True, True, False, "", "avx512-bf16"),
        (True, False, False, "", "none"),
        (False, True, True, "", "none"),  # no AVX-512 state: no bf16 tier
        (True, False, True, "", "none"),  # AMX without AVX512_BF16 (not a real CPU)
        (True, True, True, "avx512-bf16", "avx512-bf16"),
        (True, True, True, "amx-bf16", "amx-bf16"),
        (True, True, False, "amx-bf16", "avx512-bf16"),  # never above the CPU
        (True, True, True, "x86-64-v4", "none"),
        (True, True, True, "x86-64-v3", "none"),
        (True, True, True, "baseline", "none"),
        (True, True, True, "bogus", "amx-bf16"),  # an unknown name sets no ceiling
    ],
)
def test_tier_rule(v4, bf16, amx, request_, expected):
    assert native.native().host_choose_bf16_tier(v4, bf16, amx, request_) == expected


def _run(code: str, isa: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FUSEDRNN_HOST_ISA"}
    if isa is not None:
        env["FUSEDRNN_HOST_ISA"] = isa
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )


def test_default_tier_is_the_best_the_cpu_has():
    if native.native().host_gemm_variant() == "portable":
        pytest.skip("built without multiversioning")
    run = _run("from fusedrnn import _C; print(_C.host_bf16_variant())", None)
    assert run.returncode == 0, run.stderr[-3000:]
    # AMX may be refused by the OS (arch_prctl): then the AVX512_BF16 tier runs
    best = _best_tier_of_cpu()
    allowed = {best, "avx512-bf16"} if best == "amx-bf16" else {best}
    assert run.stdout.strip() in allowed


_TIER_SCRIPT = textwrap.dedent(
    """
    import sys, torch, fusedrnn
    sys.path.insert(0, "tests")
    from fusedrnn import _C
    from fusedrnn.backends import host
    from helpers import assert_by_rule, run_and_grad
    tier = _C.host_bf16_variant()
    dt = torch.bfloat16
    torch.manual_seed(0)
    differs = []
    for cls, ref_cls in ((fusedrnn.LSTM, torch.nn.LSTM), (fusedrnn.GRU, torch.nn.GRU)):
        # one row: the float32 one-row product below 24 steps, the bf16 product from 24 on
        # (recurrence_host.cpp kOneRowBf16MinSteps)
        for batch, hidden, reverse, steps in ((1, 13, False, 6), (1, 13, True, 24),
                                              (1, 33, False, 31), (3, 1, False, 6),
                                              (3, 33, True, 6), (17, 65, False, 6),
                                              (17, 13, True, 6)):
            inp = 5
            kw = dict(bidirectional=reverse)
            theirs = ref_cls(inp, hidden, **kw).to(dt)
            ours = cls(inp, hidden, backend="host", **kw).to(dt)
            ours.load_state_dict(theirs.state_dict())
            truth_module = ref_cls(inp, hidden, **kw).double()
            truth_module.load_state_dict(theirs.state_dict())
            gen = torch.Generator().manual_seed(batch * 100 + hidden)
            x = torch.randn(steps, batch, inp, generator=gen).to(dt)
            d = 2 if reverse else 1
            shapes = [(steps, batch, d * hidden), (d, batch, hidden)]
            if ref_cls is torch.nn.LSTM:
                shapes.append((d, batch, hidden))
            weights = [torch.randn(s, generator=gen).to(dt).double() for s in shapes]
            run = lambda m, vd: run_and_grad(m, x.to(vd).requires_grad_(True), None, weights)
            got = run(ours, dt)
            assert ours.last_backend == "host"
            what = f"{tier}: {cls.__name__} B={batch} H={hidden} reverse={reverse}"
            assert_by_rule(got, run(truth_module, torch.float64), run(theirs, dt), dt, what=what)
    # a bf16 tier really ran: with h rounded to bf16 for W_hh h the results differ from the
    # float32 product's rounded once (which the fallback gives exactly, test_host_half)
    from test_host_half import _rounded_inputs
    from fusedrnn.backends.base import RecurrenceInputs
    for cell in ("lstm", "gru"):
        fields, _ = _rounded_inputs(cell, 0, False, dt)
        def out(vd):
            cast = {k: v.to(vd) if torch.is_tensor(v) and v.is_floating_point() else v
                    for k, v in fields.items()}
            return host.forward(RecurrenceInputs(**cast))[0].output
        differs.append(not torch.equal(out(dt), out(torch.float32).to(dt)))
        # one row: the bf16 product from 24 steps on (differs), the float32 one below (equal)
        for steps, bf16_product in ((23, False), (24, True)):
            gen = torch.Generator().manual_seed(steps)
            width = fields["xg"].shape[2]
            fields.update(
                xg=torch.randn(steps, 1, width, generator=gen).to(dt).float(),
                h0=fields["h0"][:1], c0=None if fields["c0"] is None else fields["c0"][:1],
                lengths=None,
            )
            one_row_differs = not torch.equal(out(dt), out(torch.float32).to(dt))
            assert one_row_differs == (bf16_product and tier != "none"), (tier, cell, steps)
    assert all(differs) if tier != "none" else not any(differs), (tier, differs)
    print(tier)
    """
)


@pytest.mark.parametrize("isa", TIERS)
def test_every_tier_follows_the_numerics_rule(isa):
    if native.native().host_gemm_variant() == "portable":
        pytest.skip("built without multiversioning")
    best = _best_tier_of_cpu()
    order = ("none", "avx512-bf16", "amx-bf16")
    want = "none" if isa == "x86-64-v4" else isa
    if order.index(want) > order.index(best):
        pytest.skip(f"this CPU has no {isa}")
    run = _run(_TIER_SCRIPT, isa)
    assert run.returncode == 0, run.stderr[-3000:]
    got = run.stdout.strip().splitlines()[-1]
    assert got == want or (want == "amx-bf16" and got == "avx512-bf16")  # AMX refused by the OS


def test_fallback_keeps_the_float32_run_rounded_once():
    """test_host_half's exactness contract, on the float32 fallback (FUSEDRNN_HOST_ISA=x86-64-v4),
    bfloat16 included."""
    code = (
        "import sys, pytest; sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', "
        "'tests/test_host_half.py', '-k', 'rounded_once and bf16']))"
    )
    run = _run(code, "x86-64-v4")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "6 passed" in run.stdout, run.stdout[-2000:]


# A seccomp filter (installed before fusedrnn or torch is imported) that fails
# arch_prctl(ARCH_REQ_XCOMP_PERM, ...) with EPERM, as a kernel without AMX support or a
# sandbox would; every other system call is allowed. x86-64 only (SYS_arch_prctl = 158).
_REFUSE_AMX = textwrap.dedent(
    """
    import ctypes, struct
    libc = ctypes.CDLL(None, use_errno=True)
    SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18
    def stmt(code, k):
        return struct.pack("HBBI", code, 0, 0, k)
    def jeq(k, jt, jf):
        return struct.pack("HBBI", 0x15, jt, jf, k)
    prog = b"".join([
        stmt(0x20, 0),                      # A = seccomp_data.nr
        jeq(SYS_ARCH_PRCTL, 0, 3),
        stmt(0x20, 16),                     # A = low word of args[0]
        jeq(ARCH_REQ_XCOMP_PERM, 0, 1),
        stmt(0x06, 0x00050000 | 1),         # SECCOMP_RET_ERRNO | EPERM
        stmt(0x06, 0x7FFF0000),             # SECCOMP_RET_ALLOW
    ])
    buf = ctypes.create_string_buffer(prog)
    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, ctypes.get_errno()
    assert libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0, (
        ctypes.get_errno())
    assert libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == -1
    assert ctypes.get_errno() == 1  # EPERM: the filter refuses, so AMX may not be used
    """
)


def test_amx_refused_by_the_os_falls_back_to_avx512_bf16():
    """gemm_bf16.cpp bf16_tier(): when AMX would be chosen but Linux refuses the tile state,
    the avx512-bf16 tier runs (without the fallback the first tile instruction is SIGILL)."""
    if native.native().host_gemm_variant() == "portable":
        pytest.skip("built without multiversioning")
    if _best_tier_of_cpu() != "amx-bf16" or sys.platform != "linux":
        pytest.skip("needs a Linux x86-64 CPU with AMX-BF16")
    run = _run(_REFUSE_AMX + _TIER_SCRIPT, None)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "avx512-bf16"


BF16_ROW_SPLIT_CASES = [
    # cell, B, I, H, T, layers, bidirectional, lengths, batch_first
    ("lstm", 7, 9, 16, 6, 2, True, True, False),
    ("lstm", 33, 5, 13, 5, 1, False, False, True),
    ("gru", 9, 11, 33, 4, 1, True, True, True),
    ("gru", 6, 6, 5, 3, 2, False, False, False),
]


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("case", BF16_ROW_SPLIT_CASES, ids=lambda c: "-".join(map(str, c)))
def test_bf16_inference_row_split(case, threads, monkeypatch):
    """bfloat16 inference split by batch rows (recurrence_host.cpp forward_bf16_row_split,
    forced on at these small sizes; 2 or 3 threads, uneven row counts): each thread runs its
    rows of the bf16 xg and output, h0, c0, lengths, h_n, c_n. The same results as the unit
    split, bit for bit (every row's products and cell are the same operations), and by the
    numerics rule against float64 (torch.nn bfloat16 as the baseline)."""
    if native.native().host_bf16_variant() == "none":
        pytest.skip("no bf16 tier on this CPU: the bf16 layers take the float32 product")
    cell, B, I, H, T, layers, bidirectional, with_lengths, batch_first = case  # noqa: E741
    monkeypatch.setattr(host, "NUM_THREADS", threads)
    torch.manual_seed(B * 10 + H)
    cls = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU}[cell]
    kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    ours = cls(I, H, backend="host", **kw).eval().bfloat16()
    theirs = getattr(torch.nn, cell.upper())(I, H, **kw).eval().bfloat16()
    theirs.load_state_dict(ours.state_dict())
    truth = cls(I, H, backend="host", **kw).eval().double()
    truth.load_state_dict(ours.state_dict())
    dirs = 2 if bidirectional else 1
    x = torch.randn((B, T, I) if batch_first else (T, B, I))
    h0 = torch.randn(layers * dirs, B, H)
    state = (h0, torch.randn(layers * dirs, B, H)) if cell == "lstm" else h0
    lengths = torch.randint(1, T + 1, (B,)) if with_lengths else None
    if lengths is not None:
        lengths[B // 2] = T

    def run(m, dtype):
        return run_layer(m, x, state, lengths, batch_first, dtype)

    with torch.no_grad():
        got, units = row_split_both_ways(
            monkeypatch, lambda: run(ours, torch.bfloat16), layers * dirs
        )
        want = run(truth, torch.float64)
        base = run(theirs, torch.bfloat16)
    assert_by_rule(got, want, base, torch.bfloat16, what=f"host bf16 row split {case}")
    for name in got:
        assert torch.equal(got[name], units[name]), name


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bf16_weight_grad_operands_written_by_the_cell(cell, monkeypatch):
    """On a CPU with a bf16 tier, the bf16 vector cell's backward writes dW_hh's operands (dab,
    hin) rounded to bf16 itself (native.launch_backward's low_weight_grad_operands: no float32
    hin, no conversion after): every gradient is bit for bit the one from converting the
    float32 dab / hin after (the flag off), both directions, with lengths."""
    if native.native().host_bf16_variant() == "none":
        pytest.skip("no bf16 tier on this CPU: the weight-gradient GEMMs stay float32")
    torch.manual_seed(7)
    cls = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU}[cell]
    module = cls(6, 19, backend="host", bidirectional=True).bfloat16()
    x = torch.randn(5, 11, 6).bfloat16()
    lengths = torch.tensor([5, 2, 4, 5, 1, 3, 5, 5, 2, 4, 3])
    flags = []
    launch = native.launch_backward

    def spy(*args, **kwargs):
        flags.append(kwargs.get("low_weight_grad_operands", False))
        return launch(*args, **kwargs)

    monkeypatch.setattr(native, "launch_backward", spy)
    grads = {}
    for low in (True, False):
        monkeypatch.setattr(host, "_bf16_vector_cell", lambda inputs, low=low: low)
        module.zero_grad()
        xs = x.clone().requires_grad_()
        packed = torch.nn.utils.rnn.pack_padded_sequence(xs, lengths, enforce_sorted=False)
        out, _ = module(packed)
        out, _ = pad_packed_sequence(out)
        (out.float() ** 2).sum().backward()
        grads[low] = [xs.grad] + [p.grad.clone() for p in module.parameters()]
    assert flags == [True, True, False, False]  # two directions each
    for a, b in zip(grads[True], grads[False]):
        assert torch.equal(a, b)
