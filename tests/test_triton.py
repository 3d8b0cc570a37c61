"""The ``triton`` backend against the reference oracle (fusedrnn/reference_loop.py).

``interpreter`` tests run the real kernels under ``TRITON_INTERPRET=1`` on the CPU (one
program owning every unit); on a CUDA machine without that variable the same tests run the
compiled kernels on the GPU. ``gpu`` tests exercise the multi-program path (grid barrier,
cross-program layer norm) and compare with cuDNN; they skip without CUDA.

Accuracy (docs/design.md §3.3, helpers.assert_by_rule): in every dtype the error
against the float64 reference is at most 2x the error of the reference run in that dtype (or of
cuDNN, for the plain recurrence) plus the dtype's floor. Every launcher allocation is poisoned with NaN, so an element the
kernels forget to write shows up as a NaN.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
import zlib

import pytest
import torch

_CUDA = torch.cuda.is_available()
if not _CUDA:
    # Must happen before triton decorates the kernels (it reads the variable then).
    # A GPU run leaves it alone and tests the compiled kernels.
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="triton is not installed (pip install 'fusedrnn[triton]')")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from helpers import assert_by_rule, sample_baseline  # noqa: E402

from fusedrnn.backends import base as backend_base  # noqa: E402
from fusedrnn.backends import reference as reference_backend  # noqa: E402
from fusedrnn.backends import triton as triton_backend  # noqa: E402
from fusedrnn.backends.base import RecurrenceConfig, RecurrenceInputs  # noqa: E402
from kernels.primitives import fma_dot  # noqa: E402


def _kernels_in_current_mode() -> None:
    """Re-import the kernels if something imported them before the variable was set."""
    from fusedrnn.kernels import cells, primitives, recurrence
    from triton.runtime.interpreter import InterpretedFunction

    interpreted = isinstance(recurrence.recurrence_forward_kernel, InterpretedFunction)
    if interpreted != triton_backend._interpreting():
        for module in (primitives, cells, recurrence):
            importlib.reload(module)


_UNAVAILABLE = triton_backend.availability()
if _UNAVAILABLE is None:
    _kernels_in_current_mode()
INTERPRET = triton_backend._interpreting()
DEVICE = "cpu" if INTERPRET or not _CUDA else "cuda"
needs_backend = pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE))
needs_gpu = pytest.mark.skipif(
    not _CUDA or INTERPRET, reason="needs a CUDA GPU and TRITON_INTERPRET unset"
)

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
# name -> (RecurrenceConfig fields, training)
REGULARIZERS = {
    "none": ({}, True),
    "recurrent_dropout": ({"recurrent_dropout": 0.3}, True),
    "zoneout": ({"zoneout_cell": 0.3, "zoneout_hidden": 0.4}, True),
    "zoneout_eval": ({"zoneout_cell": 0.3, "zoneout_hidden": 0.4}, False),
    "batch_norm": ({"norm": "batch"}, True),
    "batch_norm_eval": ({"norm": "batch"}, False),
    "layer_norm": ({"norm": "layer"}, True),
    "all_batch_norm": (
        {"recurrent_dropout": 0.3, "zoneout_cell": 0.3, "zoneout_hidden": 0.4, "norm": "batch"},
        True,
    ),
    "all_layer_norm": (
        {"recurrent_dropout": 0.3, "zoneout_cell": 0.3, "zoneout_hidden": 0.4, "norm": "layer"},
        True,
    ),
    "weight_drop": ({"weight_drop": 0.4, "recurrent_dropout": 0.3}, True),
}
# B = 8 keeps training batch norm well conditioned (with 3 rows the float32 reference itself
# is 6e-5 away from float64); lengths cover 0, 1, T and unequal values.
STEPS, BATCH, HIDDEN = 4, 8, 5
LENGTHS = [4, 1, 3, 0, 4, 2, 4, 4]
RUNNING_STEPS = 3  # < STEPS: eval batch norm must reuse the last buffer row


def make_inputs(
    cell: str,
    regularizer: str,
    *,
    steps: int = STEPS,
    batch: int = BATCH,
    hidden: int = HIDDEN,
    lengths: list[int] | None = None,
    reverse: bool = False,
    bias: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str = DEVICE,
    seed: int = 1234,
    proj: int = 0,
) -> RecurrenceInputs:
    """One layer-direction's inputs; ``proj`` > 0 (lstm): h = W_hr h~ has ``proj`` units."""
    fields, training = REGULARIZERS[regularizer]
    if cell != "lstm":
        fields = {k: v for k, v in fields.items() if k != "zoneout_cell"}
    cfg = RecurrenceConfig(cell=cell, hidden_size=hidden, proj_size=proj, **fields)
    key = f"{cell}/{regularizer}/{steps}/{batch}/{hidden}" + (f"/{proj}" if proj else "")
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    gates, out_size = cfg.gate_size, cfg.out_size

    def rand(*shape: int, scale: float = 0.5, offset: float = 0.0) -> torch.Tensor:
        value = offset + scale * torch.randn(*shape, generator=gen)
        return value.to(dtype=dtype, device=device)

    def positive(*shape: int) -> torch.Tensor:
        value = 0.5 + torch.rand(*shape, generator=gen)
        return value.to(dtype=dtype, device=device)

    extra = {}
    if cfg.norm != "none":
        extra["norm_weight_hh"] = rand(gates, scale=0.1, offset=1.0)
        if cell == "lstm":
            extra["norm_weight_c"] = rand(hidden, scale=0.1, offset=1.0)
            extra["norm_bias_c"] = rand(hidden, scale=0.1)
    if cfg.norm == "batch":
        extra["running_mean_hh"] = rand(RUNNING_STEPS, gates, scale=0.1)
        extra["running_var_hh"] = positive(RUNNING_STEPS, gates)
        if cell == "lstm":
            extra["running_mean_c"] = rand(RUNNING_STEPS, hidden, scale=0.1)
            extra["running_var_c"] = positive(RUNNING_STEPS, hidden)
    return RecurrenceInputs(
        config=cfg,
        xg=rand(steps, batch, gates, scale=1.0),
        h0=rand(batch, out_size),
        c0=rand(batch, hidden) if cell == "lstm" else None,
        w_hh=rand(gates, out_size),
        b_hh=rand(gates, scale=0.2) if bias else None,
        w_hr=rand(proj, hidden, scale=hidden**-0.5) if proj else None,
        lengths=None if lengths is None else torch.tensor(lengths, device=device),
        reverse=reverse,
        training=training,
        seed=seed,
        layer=1,
        direction=int(reverse),
        **extra,
    )


def map_floating(inputs: RecurrenceInputs, fn) -> RecurrenceInputs:
    """``inputs`` with ``fn`` applied to every floating-point tensor."""
    changes = {}
    for field in dataclasses.fields(inputs):
        value = getattr(inputs, field.name)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            changes[field.name] = fn(value)
    return inputs.replace(**changes)


def cast_inputs(inputs: RecurrenceInputs, dtype: torch.dtype) -> RecurrenceInputs:
    return map_floating(inputs, lambda value: value.to(dtype))


def _tf32_flags() -> dict:
    """torch's float32-precision settings that fusedrnn's TF32 rule reads (new API)."""
    backends = torch.backends
    return {
        "root": backends.fp32_precision,
        "cudnn": backends.cudnn.fp32_precision,
        "rnn": backends.cudnn.rnn.fp32_precision,
        "conv": backends.cudnn.conv.fp32_precision,
        "matmul": backends.cuda.matmul.fp32_precision,
    }


def _restore_tf32_flags(flags: dict) -> None:
    backends = torch.backends
    backends.fp32_precision = flags["root"]
    backends.cudnn.fp32_precision = flags["cudnn"]
    backends.cudnn.rnn.fp32_precision = flags["rnn"]
    backends.cudnn.conv.fp32_precision = flags["conv"]
    backends.cuda.matmul.fp32_precision = flags["matmul"]


@pytest.fixture(autouse=True)
def exact_float32():
    """float32 kernels on the exact path (TF32 off, as the reference's own float32 error
    assumes), restored afterwards; test_tf32_rule checks the rule itself."""
    if not hasattr(torch.backends.cudnn, "rnn"):  # a torch before the per-operator flags
        saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        yield
        torch.backends.cudnn.allow_tf32 = saved
        return
    saved = _tf32_flags()
    torch.backends.cudnn.rnn.fp32_precision = "ieee"
    yield
    _restore_tf32_flags(saved)


needs_fp32_precision_api = pytest.mark.skipif(
    not hasattr(torch.backends.cudnn, "rnn"), reason="torch without per-operator fp32 flags"
)


@needs_fp32_precision_api
def test_tf32_rule(monkeypatch):
    """float32 uses TF32 exactly when cuDNN's RNN would (docs/kernels-v2.md §2): its
    per-operator flag, "none" inheriting from cudnn and then the root; half precision always
    on tensor cores; the interpreter always exact with upcast operands."""
    backends = torch.backends

    def precision(dtype):
        return triton_backend._dot_precision(dtype)

    monkeypatch.setattr(triton_backend, "_interpreting", lambda: False)
    backends.cudnn.rnn.fp32_precision = "tf32"
    assert backend_base.float32_uses_tf32()
    assert precision(torch.float32) == {"INPUT_PRECISION": "tf32", "UPCAST_OPERANDS": False}
    assert precision(torch.bfloat16) == {"INPUT_PRECISION": "ieee", "UPCAST_OPERANDS": False}
    backends.cudnn.rnn.fp32_precision = "ieee"
    assert not backend_base.float32_uses_tf32()
    assert precision(torch.float32)["INPUT_PRECISION"] == "ieee"
    backends.cudnn.allow_tf32 = False  # the legacy setter: "none" everywhere -> exact
    assert not backend_base.float32_uses_tf32()
    backends.cudnn.rnn.fp32_precision = "none"
    backends.cudnn.fp32_precision = "tf32"  # inherited by rnn
    assert backend_base.float32_uses_tf32()
    backends.cuda.matmul.fp32_precision = "ieee"  # cuBLAS's flag is not the RNN's
    assert backend_base.float32_uses_tf32()
    monkeypatch.setattr(triton_backend, "_interpreting", lambda: True)
    assert precision(torch.float32) == {"INPUT_PRECISION": "ieee", "UPCAST_OPERANDS": True}


@triton.jit
def _fma_dot_kernel(a_ptr, w_ptr, out_ptr, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr):
    rows, cols, ks = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
    a = tl.load(a_ptr + rows[:, None] * K + ks[None, :])
    w = tl.load(w_ptr + ks[:, None] * N + cols[None, :])
    acc = tl.load(out_ptr + rows[:, None] * N + cols[None, :])
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], fma_dot(a, w, acc, 16))


@pytest.mark.parametrize("k", [16, 64, 512])
def test_fma_dot_chunks_exact(k):
    """kernels/primitives.py fma_dot (the exact FP32 path's K-chunked dot, TF32 off on a GPU)
    is ``acc + a @ w``: every column k meets its own row of w, in any chunking."""
    generator = torch.Generator().manual_seed(k)
    a = torch.randn(16, k, generator=generator)
    w = torch.randn(k, 32, generator=generator)
    out = torch.randn(16, 32, generator=generator)
    expected = out.double() + a.double() @ w.double()
    _fma_dot_kernel[(1,)](a, w, out, 16, k, 32)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-4 * k**0.5)


@pytest.fixture
def poisoned(monkeypatch):
    """Fill every tensor the launcher allocates with NaN (catches unwritten elements)."""

    def empty(*shape, dtype, device):
        tensor = torch.empty(*shape, dtype=dtype, device=device)
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
        return tensor

    monkeypatch.setattr(triton_backend, "_empty", empty)


def upstream_gradients(outputs, seed: int = 7):
    gen = torch.Generator().manual_seed(seed)

    def like(t):
        if t is None:
            return None
        return torch.randn(t.shape, generator=gen).to(dtype=t.dtype, device=t.device)

    return like(outputs.output), like(outputs.h_n), like(outputs.c_n)


def run_backend(backend, inputs: RecurrenceInputs, seed: int = 7):
    """Forward + backward of ``backend``: {name: tensor} of everything that is compared."""
    outputs, saved = backend.forward(inputs)
    grad_output, grad_h_n, grad_c_n = upstream_gradients(outputs, seed)
    grads = backend.backward(inputs, saved, grad_output, grad_h_n, grad_c_n)
    result = {"output": outputs.output, "h_n": outputs.h_n, "c_n": outputs.c_n}
    for name in ("batch_mean_hh", "batch_var_hh", "batch_mean_c", "batch_var_c"):
        result[name] = getattr(outputs, name)
    result.update({f"grad_{name}": value for name, value in grads.items()})
    return result


def assert_matches_reference(inputs: RecurrenceInputs) -> None:
    """The numerics rule (helpers.assert_by_rule): the kernels' error against the float64
    reference on the same inputs is at most 2x the reference's own error in the inputs'
    dtype (its largest over helpers.sample_baseline's instances) plus the dtype's floor, for
    every output, batch statistic and gradient."""
    dtype = inputs.xg.dtype

    def solve(perturb):
        problem = map_floating(inputs, perturb)
        truth = run_backend(reference_backend, cast_inputs(problem, torch.float64))
        return run_backend(reference_backend, problem), truth

    baseline = sample_baseline(solve)
    truth = baseline[0][1]
    kernel = run_backend(triton_backend, inputs)
    assert_by_rule(kernel, truth, baseline, dtype, what="triton")
    if inputs.lengths is not None:  # finished rows output exactly 0
        t = torch.arange(inputs.xg.shape[0], device=inputs.xg.device)[:, None]
        inactive = t >= inputs.lengths[None, :]
        assert (kernel["output"][inactive] == 0).all()


# ----------------------------------------------------------------------------------------
# Interpreter (or single-GPU) parity: every cell x regulariser x direction x lengths
# ----------------------------------------------------------------------------------------
@pytest.mark.interpreter
@needs_backend
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("regularizer", list(REGULARIZERS))
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference_float32(poisoned, cell, regularizer, reverse, lengths):
    # bias=False on one direction/length combination per case keeps the matrix small.
    bias = not (reverse and lengths is not None)
    assert_matches_reference(
        make_inputs(cell, regularizer, reverse=reverse, lengths=lengths, bias=bias)
    )


@pytest.mark.interpreter
@needs_backend
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("regularizer", ["batch_norm", "all_batch_norm", "all_layer_norm"])
@pytest.mark.parametrize("cell", CELLS)
def test_norm_float32_few_active_rows(poisoned, cell, regularizer, reverse):
    """Issue 10's case: B = 3 with lengths [6, 4, 1], so batch norm runs over 3, 2 and 1
    active rows (variance near or below eps, the rounding amplified ~300x); both directions
    (the two halves of a bidirectional layer), float32 by the rule."""
    inputs = make_inputs(
        cell, regularizer, steps=6, batch=3, hidden=HIDDEN, lengths=[6, 4, 1], reverse=reverse
    )
    assert_matches_reference(inputs)


@pytest.mark.interpreter
@needs_backend
@pytest.mark.parametrize(
    ("batch", "hidden", "steps", "lengths"),
    [(1, 7, 3, [2]), (2, 1, 3, [3, 1]), (3, 17, 2, None)],
    ids=["batch1-hidden7", "hidden1", "hidden17"],
)
@pytest.mark.parametrize("regularizer", ["none", "all_batch_norm", "all_layer_norm"])
@pytest.mark.parametrize("cell", CELLS)
def test_awkward_sizes(poisoned, cell, regularizer, batch, hidden, steps, lengths):
    inputs = make_inputs(
        cell, regularizer, batch=batch, hidden=hidden, steps=steps, lengths=lengths, reverse=True
    )
    assert_matches_reference(inputs)


@pytest.mark.interpreter
@needs_backend
@pytest.mark.parametrize("regularizer", ["none", "all_batch_norm", "all_layer_norm"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision(poisoned, dtype, cell, regularizer):
    assert_matches_reference(make_inputs(cell, regularizer, dtype=dtype, lengths=LENGTHS))


# The launcher's paths for shapes beyond one dot (fusedrnn/backends/triton.py _geometry): on a
# GPU B = 64 at H = 1024 takes its operand in row pieces and K tiles of the resident W_hh,
# and H = 2048 streams W_hh from L2 in K-chunks. The test-only knobs force them at small,
# awkward sizes (H = 7: the last K tile / chunk is partial; 8 rows in pieces of 2).
LARGE_SHAPE_PATHS = {
    "row-pieces": {"INTERPRETER_ROWS_PER_DOT": 2},
    "k-tiles": {"INTERPRETER_K_TILES": 2},
    "rows-and-k-tiles": {"INTERPRETER_ROWS_PER_DOT": 4, "INTERPRETER_K_TILES": 4},
    "streamed": {"INTERPRETER_STREAM_K": 4},
}
LARGE_SHAPE_CASES = [
    ("lstm", "all_layer_norm", torch.float32),
    ("gru", "all_batch_norm", torch.bfloat16),
    ("lstm", "weight_drop", torch.float16),
    ("gru", "recurrent_dropout", torch.float32),
    ("rnn_tanh", "zoneout", torch.bfloat16),
]


def force_large_shape_path(monkeypatch, path: str, inputs: RecurrenceInputs) -> dict:
    """Set the path's knobs; returns the geometry the launcher then uses for ``inputs``."""
    for name, value in LARGE_SHAPE_PATHS[path].items():
        monkeypatch.setattr(triton_backend, name, value)
    geo = triton_backend._geometry(
        inputs.xg.shape[1], inputs.config.hidden_size, inputs.config.num_gates, "cpu",
        inputs.xg.dtype, inputs.config.proj_size,
    )  # fmt: skip
    knobs = LARGE_SHAPE_PATHS[path]
    assert geo["stream_k"] == knobs.get("INTERPRETER_STREAM_K", 0)
    assert geo["rows_forward"] == geo["rows_backward"] < geo["BLOCK_B"] or (
        "INTERPRETER_ROWS_PER_DOT" not in knobs
    )
    assert geo["k_tiles_forward"] == knobs.get("INTERPRETER_K_TILES", 1)
    return geo


@pytest.mark.interpreter
@needs_backend
@pytest.mark.parametrize(("cell", "regularizer", "dtype"), LARGE_SHAPE_CASES)
@pytest.mark.parametrize("path", list(LARGE_SHAPE_PATHS))
def test_large_shape_paths(poisoned, monkeypatch, path, cell, regularizer, dtype):
    """Row pieces, K tiles of the resident W_hh and the streamed W_hh give the reference's
    outputs, statistics and gradients, forward and backward, for each cell and norm."""
    inputs = make_inputs(
        cell, regularizer, hidden=7, dtype=dtype, lengths=LENGTHS, reverse=cell == "gru"
    )
    force_large_shape_path(monkeypatch, path, inputs)
    assert_matches_reference(inputs)


@pytest.mark.interpreter
@needs_backend
@pytest.mark.parametrize("path", ["rows-and-k-tiles", "streamed"])
def test_large_shape_paths_awkward_batch(poisoned, monkeypatch, path):
    """5 rows (pieces of 4: the second has one real row) and H = 17 (K tiles of 8 on a
    32-wide block: two tiles are partly or wholly padding; streamed chunks of 4)."""
    inputs = make_inputs("lstm", "all_batch_norm", batch=5, hidden=17, steps=3)
    force_large_shape_path(monkeypatch, path, inputs)
    assert_matches_reference(inputs)


def _gpu_geometry(
    monkeypatch,
    batch,
    hidden,
    cell="lstm",
    dtype=torch.bfloat16,
    arch=90,
    proj=0,
    input_precision="tf32",
    norm="none",
):
    """The launcher's geometry and reason on an A100 / H100 (its properties faked, nothing
    launched) for a layer with ``norm``: the envelope's decisions, checkable without a GPU.
    float32 with TF32 unless ``input_precision`` says otherwise (None: the launcher's rule,
    torch's flag)."""
    import triton_aot

    monkeypatch.setattr(triton_backend, "_interpreting", lambda: False)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", triton_aot.fake_device_properties(arch)
    )
    gates = RecurrenceConfig(cell=cell, hidden_size=hidden).num_gates
    geo = triton_backend._geometry(
        batch, hidden, gates, "cuda", dtype, proj, input_precision=input_precision, norm=norm
    )
    return geo, triton_backend._resource_reason(geo)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize(("batch", "hidden"), [(16, 512), (17, 500), (64, 128), (64, 512)])
def test_envelope_keeps_w_hh_on_chip(monkeypatch, batch, hidden, cell, dtype):
    """W1 / W6a (H = 512 at B = 16), and H = 512 at B = 64, keep W_hh on chip on an H100 in
    every dtype (float32 at B = 64: one K-tiled dot instead of one dot per gate), split over
    at most one program per SM, the same programs in both kernels, within shared memory."""
    geo, reason = _gpu_geometry(monkeypatch, batch, hidden, cell, dtype)
    assert reason is None, reason
    assert geo["stream_k"] == 0, geo.get("stream_reason")
    assert geo["programs"] <= geo["sms"]
    shared = triton_backend._shared_memory_bytes(geo)
    assert max(shared.values()) <= geo["shared_limit"], shared


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize(("batch", "hidden"), [(64, 1024), (16, 1024), (64, 512), (33, 1000)])
def test_envelope_keeps_half_w_hh_on_chip_to_1024(monkeypatch, batch, hidden, cell, dtype, arch):
    """Issue 13 item 2: in bf16 / fp16 W_hh stays on chip up to H = 1024 at B <= 64 (W2,
    W6b) on an A100 and an H100, as K tiles whose per-step operand piece is at most
    _RESIDENT_PIECE elements (W2: 8 forward, 32 backward), within shared memory."""
    geo, reason = _gpu_geometry(monkeypatch, batch, hidden, cell, dtype, arch)
    assert reason is None, reason
    assert geo["stream_k"] == 0, geo.get("stream_reason")
    assert geo["programs"] <= geo["sms"]
    for kernel, k in (("forward", geo["BLOCK_H"]), ("backward", geo["BLOCK_GH"])):
        tiles = geo[f"k_tiles_{kernel}"]
        assert geo[f"rows_{kernel}"] * k // tiles <= triton_backend._RESIDENT_PIECE, kernel
    shared = triton_backend._shared_memory_bytes(geo)
    assert max(shared.values()) <= geo["shared_limit"], shared
    if (batch, hidden) == (64, 1024):
        assert (geo["k_tiles_forward"], geo["k_tiles_backward"]) == (8, 32)
        assert shared == {"forward": 163840, "backward": 163840}  # compiled: the AOT test


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize(("batch", "hidden"), [(64, 1024), (16, 1024), (33, 1000), (64, 768)])
def test_envelope_keeps_float32_w_hh_on_chip_to_1024(monkeypatch, batch, hidden, cell):
    """Issue 13 item 2 in float32 (W2 / W6b float32) on an H100: 16 units a program would
    hold 256 KiB of W_hh, so 8 units a program (<= 132 programs, each forward slice 128 KiB)
    with the backward's G*H gate rows split over program pairs (split_k: each program half
    the K tiles of the pair's 16 units, N = 16), the same programs in both kernels."""
    geo, reason = _gpu_geometry(monkeypatch, batch, hidden, cell, torch.float32)
    assert reason is None, reason
    assert geo["stream_k"] == 0, geo.get("stream_reason")
    assert (geo["units"], geo["split_k"], geo["gate_dots"]) == (8, 2, False)
    assert geo["programs"] == 2 * -(-hidden // 16) <= geo["sms"]
    shared = triton_backend._shared_memory_bytes(geo)
    assert max(shared.values()) <= geo["shared_limit"], shared
    if (batch, hidden) == (64, 1024):  # compiled: tests/test_triton_aot.py W2 / W6b-float32
        backward = 167936 if cell == "lstm" else 135168
        assert shared == {"forward": 167936, "backward": backward}


@pytest.mark.parametrize("tf32", [True, False])
def test_geometry_follows_the_launchers_tf32_rule(monkeypatch, tf32):
    """_geometry's default precision is the launcher's (base.float32_uses_tf32, the flag
    _dot_precision gives the kernels): TF32 off, the exact float32 plan (fma_dots), its
    shared memory as compiled (tests/test_triton_aot.py W2-float32-ieee on sm_90a) and the
    forward's K tiles one FMA chunk each; bf16 / fp16 never take it."""
    monkeypatch.setattr(triton_backend.base, "float32_uses_tf32", lambda: tf32)
    geo, reason = _gpu_geometry(monkeypatch, 64, 1024, "lstm", torch.float32, input_precision=None)
    assert reason is None, reason
    precision = "tf32" if tf32 else "ieee"
    assert triton_backend._gpu_input_precision(torch.float32) == precision
    assert geo == _gpu_geometry(monkeypatch, 64, 1024, "lstm", torch.float32, 90, 0, precision)[0]
    assert geo["fma_dots"] is not tf32
    shared = triton_backend._shared_memory_bytes(geo)
    if tf32:
        assert geo["k_tiles_forward"] == 8
        assert shared == {"forward": 167936, "backward": 167936}
    else:
        assert geo["k_tiles_forward"] == 64
        assert shared == {"forward": 135168, "backward": 139264}
    half, _ = _gpu_geometry(monkeypatch, 64, 1024, "lstm", torch.float16, input_precision=None)
    assert not half["fma_dots"]
    # The launcher's own precision wins over the flag (it passes what the kernels get).
    other = "ieee" if tf32 else "tf32"
    passed, _ = _gpu_geometry(monkeypatch, 64, 1024, "lstm", torch.float32, 90, 0, other)
    assert passed["fma_dots"] is tf32


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize(("batch", "hidden"), [(16, 512), (64, 512), (64, 1024), (5, 37)])
def test_exact_float32_shared_memory_is_within_the_tf32_plan(
    monkeypatch, arch, cell, batch, hidden
):
    """TF32 off the launcher predicts less shared memory (no wgmma scratch, FMA chunks
    staged), never more, for the shapes the AOT test compiles; B = 64, H = 512 keeps one
    K-tiled backward dot (per-gate dots' [64, 512] operand would spill)."""
    ieee, reason = _gpu_geometry(monkeypatch, batch, hidden, cell, torch.float32, arch, 0, "ieee")
    assert reason is None, reason
    tf32, _ = _gpu_geometry(monkeypatch, batch, hidden, cell, torch.float32, arch, 0, "tf32")
    exact, bound = (triton_backend._shared_memory_bytes(g) for g in (ieee, tf32))
    if tf32["stream_k"] == ieee["stream_k"] == 0:
        assert all(exact[k] <= bound[k] for k in exact), (exact, bound)
    if (batch, hidden) == (64, 512):
        assert not ieee["gate_dots"]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_envelope_float32_pair_split_on_an_a100(monkeypatch, cell):
    """On an A100 (108 SMs) the float32 pair split takes H = 864 (108 programs) and not
    H = 865 (110 programs: streamed, saying so)."""
    geo, reason = _gpu_geometry(monkeypatch, 64, 864, cell, torch.float32, arch=80)
    assert reason is None and geo["stream_k"] == 0, reason or geo.get("stream_reason")
    assert (geo["split_k"], geo["programs"]) == (2, 108)
    assert max(triton_backend._shared_memory_bytes(geo).values()) <= geo["shared_limit"]
    geo, reason = _gpu_geometry(monkeypatch, 64, 865, cell, torch.float32, arch=80)
    assert reason is None and geo["stream_k"] > 0
    assert "needs 110 programs, the GPU has 108 SMs" in geo["stream_reason"]


@pytest.mark.parametrize(
    ("batch", "hidden", "dtype", "arch"),
    [
        (64, 1024, torch.float32, 80),
        (16, 1024, torch.float32, 80),
        (16, 2048, torch.bfloat16, 90),
        (8, 4093, torch.bfloat16, 90),
        (64, 2048, torch.float32, 90),
    ],
    ids=str,
)
def test_envelope_streams_larger_w_hh(monkeypatch, batch, hidden, dtype, arch):
    """Beyond what fits on chip (float32 W_hh at H = 1024 on an A100: 256 KiB a program at
    16 units, and the pair split's 128 programs exceed its 108 SMs; bf16 LSTM W_hh at
    H = 2048 is 32 MiB), the launcher streams W_hh from L2 in K-chunks instead of refusing,
    says why, and keeps both kernels on the same programs within shared memory."""
    geo, reason = _gpu_geometry(monkeypatch, batch, hidden, "lstm", dtype, arch)
    assert reason is None, reason
    assert geo["stream_k"] > 0
    assert "streamed from L2" in geo["stream_reason"] and "too large" in geo["stream_reason"]
    if (dtype, hidden, arch) == (torch.float32, 1024, 80):
        assert "needs 128 programs, the GPU has 108 SMs" in geo["stream_reason"]
    assert geo["programs"] <= geo["sms"]
    shared = triton_backend._shared_memory_bytes(geo)
    assert max(shared.values()) <= geo["shared_limit"], shared


def test_envelope_refuses_with_a_reason(monkeypatch):
    """Beyond the streamed path's own limits (the per-program gate-column tile), dispatch
    gets a reason instead of a launch."""
    _, reason = _gpu_geometry(monkeypatch, 256, 16384, "lstm", torch.bfloat16)
    assert reason is not None and "too large" in reason and "gate-column tile" in reason


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_envelope_projection(monkeypatch, dtype):
    """With proj_size, W1 (B = 16, H = 512, P = 128) keeps W_hh ([4H, P]) and W_hr on chip;
    where W_hh would be streamed (B = 64, H = 2048) the launcher refuses with a reason, as
    that combination's shared-memory plan is unchecked on compiled kernels."""
    geo, reason = _gpu_geometry(monkeypatch, 16, 512, "lstm", dtype, proj=128)
    assert reason is None, reason
    assert geo["stream_k"] == 0 and geo["BLOCK_P"] == 128
    geo, reason = _gpu_geometry(monkeypatch, 64, 2048, "lstm", dtype, proj=512)
    assert geo["stream_k"] > 0
    assert reason is not None and "proj_size" in reason and "streamed from L2" in reason


@pytest.mark.parametrize("batch", [128, 256])
@pytest.mark.parametrize("arch", [80, 90])
def test_envelope_b256_lstm_layer_norm_row_pieces(monkeypatch, arch, batch):
    """From 128 rows (B = 65-256) the LSTM with layer norm (no projection) runs in whole-step
    row pieces of 64 rows (_row_piece): its products are 64-row dots, so W2's K tiles and
    shared memory, and W_hh stays on chip to H = 1024 on both GPUs (the A100's 256-row
    staging made it 512); its state is in memory in both kernels. No other cell, norm, batch
    (64 rows and below) or a projection changes."""

    def geometry(cell, norm, batch=batch, hidden=1024, proj=0):
        return _gpu_geometry(
            monkeypatch, batch, hidden, cell, torch.bfloat16, arch, proj, norm=norm
        )[0]

    geo = geometry("lstm", "layer")
    assert geo["stream_k"] == 0 and triton_backend._resource_reason(geo) is None
    assert triton_backend._row_piece(geo) == geo["rows_forward"] == geo["rows_backward"] == 64
    assert (geo["k_tiles_forward"], geo["k_tiles_backward"]) == (8, 32)
    assert triton_backend._shared_memory_bytes(geo) == {"forward": 163840, "backward": 163840}
    for kernel in ("forward", "backward"):
        assert triton_backend._state_in_memory(geo, kernel, "layer")
    others = [
        geometry("lstm", "none", hidden=512),
        geometry("lstm", "batch", hidden=512),
        geometry("gru", "layer", hidden=512),
        geometry("lstm", "layer", batch=64),
        geometry("lstm", "layer", batch=33),
        geometry("lstm", "layer", hidden=512, proj=128),
    ]
    for other in others:
        assert triton_backend._row_piece(other) == other["BLOCK_B"], other
        assert other["rows_forward"] == other["BLOCK_B"], other


@pytest.mark.parametrize("arch", [80, 90])
def test_envelope_float32_lstm_layer_norm_pair_split_rows(monkeypatch, arch):
    """The float32 pair split (split_k = 2) runs the step whole, in no row pieces: the LSTM
    with layer norm takes it to 128 rows (within the spill budget), not at 256 (its whole-step
    backward spilled 748 / 900 B on sm_90a): there 16 units a program in 64-row pieces, W_hh
    resident to H = 512 and streamed beyond. The other cells and norms keep it at 256 rows."""
    largest = {80: 864, 90: 1024}[arch]  # the pair split's largest H (programs <= SMs)

    def geometry(batch, hidden=largest, cell="lstm", norm="layer"):
        geo = _gpu_geometry(monkeypatch, batch, hidden, cell, torch.float32, arch, 0, norm=norm)[0]
        assert triton_backend._resource_reason(geo) is None
        return geo

    geo = geometry(128)
    assert (geo["split_k"], geo["stream_k"], triton_backend._row_piece(geo)) == (2, 0, 128)
    geo = geometry(256)
    assert (geo["split_k"], geo["units"], triton_backend._row_piece(geo)) == (1, 16, 64)
    assert geo["stream_k"] > 0
    geo = geometry(256, hidden=512)
    assert (geo["split_k"], geo["stream_k"], triton_backend._row_piece(geo)) == (1, 0, 64)
    # The others at 256 rows: the pair split where 16 units do not fit (H = 512 on the
    # A100, whose 256-row staging is short; H = 1024 on the H100).
    hidden = {80: 512, 90: 1024}[arch]
    for cell, norm in (("lstm", "batch"), ("lstm", "none"), ("gru", "layer")):
        geo = geometry(256, hidden, cell, norm)
        assert (geo["split_k"], geo["stream_k"], triton_backend._row_piece(geo)) == (2, 0, 256)


@pytest.mark.parametrize("arch", [80, 90])
def test_state_in_memory_batch_norm_pair_split_128_rows(monkeypatch, arch):
    """The forward with batch norm in the float32 pair split at 128 rows re-reads its state
    each step (_state_in_memory; carried, the LSTM's forward spilled 100-108 B); its
    backward carries it, and so do the other norms and 64 rows (bf16 with batch norm at 128
    rows takes the pair split as well, so the same rule). At 256 rows every forward has it in memory, as before."""
    largest = {80: 864, 90: 1024}[arch]  # the pair split's largest H (programs <= SMs)

    def in_memory(batch, cell="lstm", norm="batch", dtype=torch.float32):
        geo = _gpu_geometry(monkeypatch, batch, largest, cell, dtype, arch, 0, norm=norm)[0]
        assert triton_backend._resource_reason(geo) is None
        split = geo["split_k"]
        return split, tuple(
            triton_backend._state_in_memory(geo, k, norm) for k in ("forward", "backward")
        )

    for cell in ("lstm", "gru"):
        assert in_memory(128, cell) == (2, (True, False))
        assert in_memory(128, cell, "none") == (2, (False, False))
        assert in_memory(128, cell, "layer") == (2, (False, False))
        assert in_memory(64, cell) == (2, (False, False))
        # bf16 with batch norm at 128 rows takes the pair split too (_geometry), and so
        # the forward's state in memory; at 64 rows neither.
        assert in_memory(128, cell, dtype=torch.bfloat16) == (2, (True, False))
        assert in_memory(64, cell, dtype=torch.bfloat16) == (1, (False, False))
        assert in_memory(256, cell, "none")[1][0]


@pytest.mark.parametrize("arch", [80, 90])
def test_envelope_float32_pair_split_backward_row_chunks(monkeypatch, arch):
    """At 256 rows the float32 pair split's backward takes its product in row chunks of
    _PAIR_ROW_CHUNK (64) rows (``rows_backward``; the kernel stores each chunk's partial to the
    pair scratch): W2's K tiles and staging, so less shared memory than the forward's
    256-row dots, which stay whole; the largest H is unchanged (H = 1024 on the H100, 512 on
    the A100, where the forward's 256-row staging is the limit). Below 256 rows the
    backward's dots keep every row."""
    largest = {80: 512, 90: 1024}[arch]

    def geometry(batch, hidden, cell):
        return _gpu_geometry(monkeypatch, batch, hidden, cell, torch.float32, arch, 0, norm="none")[
            0
        ]

    for cell, backward in (("lstm", 167936), ("gru", 135168)):
        geo = geometry(256, largest, cell)
        assert triton_backend._resource_reason(geo) is None
        assert (geo["split_k"], geo["stream_k"], geo["units"]) == (2, 0, 8)
        assert (geo["rows_forward"], geo["rows_backward"]) == (256, 64)
        assert geo["wgmma_backward"] is (arch == 90)
        assert triton_backend._row_piece(geo) == 256  # the elementwise step stays whole
        tile = geo["BLOCK_GH"] // geo["k_tiles_backward"]
        assert tile == 128  # a [64, 128] operand piece a dot, as W2 at 64 rows
        shared = triton_backend._shared_memory_bytes(geo)
        if arch == 90:  # compiled: tests/test_triton_aot.py *-float32-B256-Hmax
            assert shared == {"forward": 212992, "backward": backward}
        assert shared["backward"] < shared["forward"]
        beyond = geometry(256, largest + 1, cell)
        assert beyond["stream_k"] > 0 or triton_backend._resource_reason(beyond) is not None
        for batch in (64, 128):
            geo = geometry(batch, largest, cell)
            if geo["split_k"] == 2:
                assert geo["rows_forward"] == geo["rows_backward"] == geo["BLOCK_B"]


@pytest.mark.parametrize("arch", [80, 90])
def test_envelope_half_batch_norm_pair_split_128_rows(monkeypatch, arch):
    """bf16 / fp16 with batch norm at 128 and 256 rows take the float32 pair split (split_k
    = 2, 8 units a program, W_hh resident) first where its programs fit the SMs (the H100 to
    H = 1024, the A100 to H = 864): with 16 units a program the whole step spilled KBs. Other
    norms and 64 rows keep 16 units a program; beyond the SMs (the A100 at H = 1024) or
    BLOCK_H = 1024 (H = 1056), 16 units as before."""
    largest = {80: 864, 90: 1024}[arch]

    def geometry(batch, hidden=largest, cell="lstm", norm="batch", dtype=torch.bfloat16):
        geo = _gpu_geometry(monkeypatch, batch, hidden, cell, dtype, arch, 0, norm=norm)[0]
        assert triton_backend._resource_reason(geo) is None
        return geo["split_k"], geo["units"], geo["stream_k"], geo["programs"]

    pair = (2, 8, 0, 2 * -(-largest // 16))
    for cell in ("lstm", "gru"):
        for dtype in (torch.bfloat16, torch.float16):
            assert geometry(128, cell=cell, dtype=dtype) == pair
            assert geometry(97, cell=cell, dtype=dtype) == pair  # BLOCK_B = 128
            assert geometry(64, cell=cell, dtype=dtype)[:2] == (1, 16)
            assert geometry(256, cell=cell, dtype=dtype) == pair
            assert geometry(33, cell=cell, dtype=dtype)[:2] == (1, 16)  # BLOCK_B = 64
        for norm in ("none", "layer"):
            assert geometry(128, cell=cell, norm=norm)[:2] == (1, 16)
            assert geometry(256, cell=cell, norm=norm)[:2] == (1, 16)
    if arch == 80:  # 128 programs > 108 SMs: 16 units a program, resident
        assert geometry(128, hidden=1024)[:3] == (1, 16, 0)
    # Not beyond BLOCK_H = 1024 (an H100's 132 programs would take H = 1056 at 2048).
    assert geometry(128, hidden=1056)[:2] == (1, 16)


@pytest.mark.parametrize("arch", [80, 90])
def test_forward_step_zero_half_batch_norm_pair_split_256_rows(monkeypatch, arch):
    """bf16 / fp16 with batch norm in the pair split at 256 rows on wgmma (sm_90): the
    forward reads b_hh and the norm parameters each step and takes a step-dependent zero as
    its product's first row (_forward_step_zero, the kernel's STEP_ZERO; without it the
    LSTM's forward spilled 160 B there). Not with mma.sync (sm_80: 16 -> 220 B), at 128 rows,
    in float32 or with the other norms."""
    largest = {80: 864, 90: 1024}[arch]

    def step_zero(batch, cell="lstm", norm="batch", dtype=torch.bfloat16):
        geo = _gpu_geometry(monkeypatch, batch, largest, cell, dtype, arch, 0, norm=norm)[0]
        return geo["split_k"], triton_backend._forward_step_zero(geo, norm)

    for cell in ("lstm", "gru"):
        for dtype in (torch.bfloat16, torch.float16):
            assert step_zero(256, cell, dtype=dtype) == (2, arch == 90)
            assert step_zero(129, cell, dtype=dtype) == (2, arch == 90)  # BLOCK_B = 256
            assert step_zero(128, cell, dtype=dtype) == (2, False)
        assert not step_zero(256, cell, dtype=torch.float32)[1]
        for norm in ("none", "layer"):
            assert not step_zero(256, cell, norm=norm)[1]


@pytest.mark.parametrize("arch", [80, 90])
def test_rows_per_step_half_batch_norm_pair_split_256_rows(monkeypatch, arch):
    """bf16 / fp16 with batch norm in the pair split at 256 rows on mma.sync (sm_80): both
    kernels rebuild the step's rows, masks and offsets each step (_rows_per_step, the kernels'
    ROWS_PER_STEP; without it the LSTM spilled 156 B forward, 72 B backward with triton 3.6).
    Not with wgmma (sm_90: the forward's STEP_ZERO there), at 128 rows, in float32 or with the
    other norms."""
    largest = {80: 864, 90: 1024}[arch]

    def rows_per_step(batch, cell="lstm", norm="batch", dtype=torch.bfloat16):
        geo = _gpu_geometry(monkeypatch, batch, largest, cell, dtype, arch, 0, norm=norm)[0]
        kernels = ("forward", "backward")
        return geo["split_k"], [triton_backend._rows_per_step(geo, k, norm) for k in kernels]

    for cell in ("lstm", "gru"):
        for dtype in (torch.bfloat16, torch.float16):
            assert rows_per_step(256, cell, dtype=dtype) == (2, [arch == 80] * 2)
            assert rows_per_step(129, cell, dtype=dtype) == (2, [arch == 80] * 2)  # BLOCK_B 256
            assert rows_per_step(128, cell, dtype=dtype) == (2, [False, False])
        assert rows_per_step(256, cell, dtype=torch.float32)[1] == [False, False]
        for norm in ("none", "layer"):
            assert rows_per_step(256, cell, norm=norm)[1] == [False, False]


@pytest.mark.parametrize("arch", [80, 90])
def test_rnn_layer_norm_256_rows_row_clamp_and_chunks(monkeypatch, arch):
    """The RNN with layer norm in bf16 / fp16 at 256 rows (tests/test_triton_aot.py
    ``rnn_relu-all_layer_norm-float16-B256-Hmax``): the forward's product takes its operand
    rows clamped into the batch (_row_clamp, the kernels' ROW_CLAMP) on both targets; the
    backward's too with wgmma (sm_90, its state carried), and on sm_80 (mma.sync, its state
    in memory) it takes its product in 64-row chunks instead (_product_row_chunks, the
    backward's PRODUCT_ROW_CHUNKS: W2's K tiles and shared memory, 98304 B). The boundary
    does not move (H = 1728 / 2112). Nowhere else: not at 128 rows, float32, the other cells
    or norms, nor streamed."""
    largest = {80: 1728, 90: 2112}[arch]

    def rule(batch=256, hidden=largest, cell="rnn_relu", norm="layer", dtype=torch.float16):
        geo, reason = _gpu_geometry(monkeypatch, batch, hidden, cell, dtype, arch, 0, norm=norm)
        clamp = tuple(triton_backend._row_clamp(geo, k, norm) for k in ("forward", "backward"))
        return geo, reason, clamp, triton_backend._product_row_chunks(geo, norm)

    for cell in ("rnn_relu", "rnn_tanh"):
        for dtype in (torch.float16, torch.bfloat16):
            for batch in (129, 256):
                geo, reason, clamp, chunks = rule(batch, cell=cell, dtype=dtype)
                assert reason is None and geo["stream_k"] == 0
                assert clamp == (True, arch == 90) and chunks == (arch == 80)
                assert geo["rows_forward"] == 256
                assert geo["rows_backward"] == (256 if arch == 90 else 64)
                if arch == 80:
                    assert geo["k_tiles_backward"] == 16
                    assert triton_backend._shared_memory_bytes(geo)["backward"] == 98304
                    assert triton_backend._state_in_memory(geo, "backward", "layer")
    # One unit more streams, as before (the boundary).
    assert rule(hidden=largest + 1)[0]["stream_k"] > 0
    assert rule(hidden=largest + 1)[2:] == ((False, False), False)
    for other in (
        {"batch": 128},
        {"dtype": torch.float32},
        {"cell": "gru"},
        {"cell": "lstm"},
        {"norm": "none"},
        {"norm": "batch"},
    ):
        clamp, chunks = rule(**other)[2:]
        assert clamp == (False, False) and not chunks, other


@pytest.mark.parametrize("arch", [80, 90])
def test_envelope_half_batch_norm_gate_by_gate_128_rows(monkeypatch, arch):
    """bf16 / fp16 with batch norm at 128 rows where the pair split's programs exceed the SMs
    (the A100 from H = 880 to BLOCK_H = 1024): 16 units a program, W_hh resident, with the
    batch norm gate by gate (``gate_by_gate``), the state in memory in both kernels and the
    backward's product in 64-row chunks (W2's 32 K tiles; the forward's dots whole), in the
    shared memory compiled for sm_80 (tests/test_triton_aot.py
    ``sm80-*-all_batch_norm-bfloat16-B128-Hmax``). Nowhere else: not where the pair split
    fits (the H100, the A100 to H = 864), not at 64 or 256 rows, other norms, float32 or
    beyond BLOCK_H = 1024 (streamed)."""

    def geometry(batch, hidden, cell="lstm", norm="batch", dtype=torch.bfloat16):
        geo = _gpu_geometry(monkeypatch, batch, hidden, cell, dtype, arch, 0, norm=norm)[0]
        assert triton_backend._resource_reason(geo) is None
        return geo

    def in_memory(geo, norm="batch"):
        return tuple(triton_backend._state_in_memory(geo, k, norm) for k in ("forward", "backward"))

    for cell in ("lstm", "gru"):
        for dtype in (torch.bfloat16, torch.float16):
            for batch, hidden in ((128, 1024), (97, 1024), (128, 880)):
                geo = geometry(batch, hidden, cell, dtype=dtype)
                assert geo["gate_by_gate"] is (arch == 80), (batch, hidden)
                if arch == 90:
                    assert geo["split_k"] == 2  # the pair split fits the H100
                    continue
                assert (geo["split_k"], geo["units"], geo["stream_k"]) == (1, 16, 0)
                assert (geo["rows_forward"], geo["rows_backward"]) == (128, 64)
                assert (geo["k_tiles_forward"], geo["k_tiles_backward"]) == (16, 32)
                assert triton_backend._row_piece(geo) == 128  # no whole-step row pieces
                assert in_memory(geo) == (True, True)
                shared = triton_backend._shared_memory_bytes(geo)
                assert shared == {"forward": 163840, "backward": 163840}
                # the backward at 16 warps (the launcher's _num_warps), the forward at 8
                tiles = (128 * 1024, 1024 * geo["GATES_PAD"] * 16)
                warps = triton_backend._num_warps(*tiles, rows=128, gate_by_gate_backward=True)
                assert (triton_backend._num_warps(*tiles, rows=128), warps) == (8, 16)
            assert not geometry(128, 864, cell, dtype=dtype)["gate_by_gate"]  # the pair split
            for batch in (64, 256):
                assert not geometry(batch, 1024, cell, dtype=dtype)["gate_by_gate"]
        for norm in ("none", "layer"):
            geo = geometry(128, 1024, cell, norm)
            assert not geo["gate_by_gate"]
            assert geo["rows_backward"] == triton_backend._row_piece(geo)  # (LSTM LN: 64)
        assert not geometry(128, 1024, cell, dtype=torch.float32)["gate_by_gate"]
        beyond = geometry(128, 1056, cell)  # BLOCK_H = 2048: streamed, as before
        assert not beyond["gate_by_gate"] and beyond["stream_k"] > 0


@pytest.mark.parametrize("arch", [80, 90])
def test_unit_halves_lstm_gate_by_gate(monkeypatch, arch):
    """The backward's ``UNIT_HALVES`` (the launcher's _unit_halves: its cell and batch-norm
    backward over the halves of a program's 16 units in a loop): the LSTM with
    ``gate_by_gate`` (bf16 / fp16 batch norm at 128 rows on an A100 beyond H = 864), nowhere
    else: not the GRU there, not where the pair split fits (the H100, the A100 to H = 864),
    not at 64 or 256 rows, other norms or float32."""

    def halves(batch, hidden, cell="lstm", norm="batch", dtype=torch.bfloat16):
        geo = _gpu_geometry(monkeypatch, batch, hidden, cell, dtype, arch, 0, norm=norm)[0]
        return triton_backend._unit_halves(geo)

    for dtype in (torch.bfloat16, torch.float16):
        for batch, hidden in ((128, 1024), (97, 1024), (128, 880)):
            assert halves(batch, hidden, dtype=dtype) is (arch == 80), (batch, hidden)
            assert not halves(batch, hidden, "gru", dtype=dtype)
        assert not halves(128, 864, dtype=dtype)  # the pair split
        for batch in (64, 256):
            assert not halves(batch, 1024, dtype=dtype)
    for norm in ("none", "layer"):
        assert not halves(128, 1024, norm=norm)
    assert not halves(128, 1024, dtype=torch.float32)


@pytest.mark.parametrize("arch", [80, 90])
def test_num_warps_float32_mma_sync_256_rows(monkeypatch, arch):
    """Float32 at 256 rows with mma.sync (sm_80), the step whole, without batch norm, runs
    both kernels at 16 warps (8 spilled up to 2,356 B there); wgmma (sm_90), batch norm,
    bf16, 128 rows and the LSTM with layer norm's row pieces keep 8."""

    def warps(batch, hidden, cell="gru", norm="none", dtype=torch.float32):
        geo = _gpu_geometry(monkeypatch, batch, hidden, cell, dtype, arch, 0, norm=norm)[0]
        assert triton_backend._resource_reason(geo) is None
        return tuple(
            triton_backend._num_warps(
                geo["BLOCK_B"] * geo["BLOCK_H"],
                geo["BLOCK_H"] * geo["GATES_PAD"] * geo["units"],
                rows=geo["BLOCK_B"],
                float32_mma_sync=triton_backend._float32_mma_sync(geo, kernel, norm),
            )
            for kernel in ("forward", "backward")
        )

    whole = 16 if arch == 80 else 8
    hidden = {80: 512, 90: 1024}[arch]  # the pair split's largest at 256 rows
    for cell, norm in (("lstm", "none"), ("gru", "layer"), ("gru", "none")):
        assert warps(256, hidden, cell, norm) == (whole, whole)
    assert warps(256, hidden, "gru", "batch") == (8, 8)
    assert warps(256, 1024, "rnn_tanh", "layer") == (whole, whole)
    assert warps(256, 2048, "gru") == (whole, whole)  # streamed
    assert warps(256, 512, "lstm", "layer") == (8, 8)  # row pieces
    assert warps(256, 512, dtype=torch.bfloat16) == (8, 8)
    assert warps(128, 512) == (8, 8)


# ----------------------------------------------------------------------------------------
# LSTM projections (proj_size = P): h = W_hr (o tanh(N_c(c~))) has P units, c has H
# ----------------------------------------------------------------------------------------
PROJ = 3


@pytest.mark.interpreter
@needs_backend
@pytest.mark.parametrize(
    ("reverse", "lengths"),
    [(False, LENGTHS), (True, None), (True, LENGTHS)],
    ids=["forward-lengths", "reverse-full", "reverse-lengths"],
)
@pytest.mark.parametrize("regularizer", list(REGULARIZERS))
def test_projection_matches_reference(poisoned, regularizer, reverse, lengths):
    """Every regulariser with a projection: outputs, h_n [B, P], c_n [B, H] and every
    gradient, dL/dW_hr included; the masks of h (dropout, zoneout) are over P units."""
    inputs = make_inputs("lstm", regularizer, reverse=reverse, lengths=lengths, proj=PROJ)
    assert inputs.w_hr.shape == (PROJ, HIDDEN) and triton_backend.unsupported_reason(inputs) is None
    assert_matches_reference(inputs)


@pytest.mark.interpreter
@needs_backend
@pytest.mark.parametrize(
    ("batch", "hidden", "proj", "steps", "lengths"),
    [(2, 7, 1, 3, [3, 1]), (3, 17, 13, 2, None), (1, 17, 16, 3, [2]), (5, 2, 1, 4, None)],
    ids=["proj1", "hidden17-proj13", "proj16-close-to-hidden17", "hidden2-proj1"],
)
@pytest.mark.parametrize("regularizer", ["none", "all_batch_norm", "all_layer_norm"])
def test_projection_awkward_sizes(poisoned, regularizer, batch, hidden, proj, steps, lengths):
    inputs = make_inputs(
        "lstm",
        regularizer,
        batch=batch,
        hidden=hidden,
        steps=steps,
        lengths=lengths,
        reverse=True,
        proj=proj,
    )
    assert_matches_reference(inputs)


@pytest.mark.interpreter
@needs_backend
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_projection_half_precision(poisoned, dtype):
    inputs = make_inputs("lstm", "all_layer_norm", dtype=dtype, lengths=LENGTHS, proj=PROJ)
    assert_matches_reference(inputs)


@pytest.mark.interpreter
@needs_backend
@pytest.mark.parametrize("regularizer", ["all_layer_norm", "weight_drop"])
@pytest.mark.parametrize("path", list(LARGE_SHAPE_PATHS))
def test_projection_large_shape_paths(poisoned, monkeypatch, path, regularizer):
    """The row-piece, K-tile and streamed products with a projection: W_hh's rows are P
    long, so its tiles / chunks run over P, not H (H = 7, P = 5: the last K tile or chunk
    of 4 is partial; weight drop's mask is drawn over the same [G*H, P] elements)."""
    inputs = make_inputs(
        "lstm", regularizer, hidden=7, proj=5, lengths=LENGTHS, reverse=True
    )  # fmt: skip
    force_large_shape_path(monkeypatch, path, inputs)
    assert_matches_reference(inputs)


@pytest.mark.interpreter
@needs_backend
@pytest.mark.parametrize(
    ("layers", "bidirectional", "lengths"),
    [(1, False, None), (2, True, (4, 2, 6))],
    ids=["one-layer", "two-layers-bidirectional-packed"],
)
def test_projection_matches_torch_nn(layers, bidirectional, lengths):
    """The module on the triton backend against torch.nn.LSTM(proj_size=...) with the same
    state_dict: float32 by the rule, the truth torch.nn in float64, the baseline torch.nn's
    own float32 error; output, h_n, c_n and the gradients of x, h0, c0 and every weight
    (weight_hr_l*)."""
    import test_parity_torch as parity

    import fusedrnn

    case = parity.Case(
        "projection",
        input_size=4,
        hidden_size=HIDDEN,
        proj_size=PROJ,
        num_layers=layers,
        bidirectional=bidirectional,
        lengths=lengths,
        steps=6 if lengths else 4,
    )
    torch.manual_seed(0)
    torch64 = torch.nn.LSTM(
        case.input_size, HIDDEN, layers, proj_size=PROJ, bidirectional=bidirectional
    ).double()
    torch32 = copy.deepcopy(torch64).float()
    fused32 = fusedrnn.LSTM(
        case.input_size,
        HIDDEN,
        layers,
        proj_size=PROJ,
        bidirectional=bidirectional,
        backend="triton",
    )
    fused32.load_state_dict(torch32.state_dict())
    x, hx = parity._inputs("lstm", case, torch.float64, torch.Generator().manual_seed(1))
    truth = parity._run(torch64, "lstm", case, x, hx, 7)
    x32 = x.detach().float().requires_grad_(True)
    hx32 = tuple(h.detach().float().requires_grad_(True) for h in hx)
    baseline = parity._run(torch32, "lstm", case, x32, hx32, 7)
    ours = parity._run(fused32, "lstm", case, x32, hx32, 7)
    assert any(name.startswith("grad_weight_hr") for name in ours)
    assert_by_rule(ours, truth, baseline, torch.float32, what="triton proj_size")


@pytest.mark.interpreter
@needs_backend
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_zero_steps(poisoned, cell):
    """T = 0: no launch; final states are the initial ones, gradients pass straight through.

    (Checked in closed form: the reference backend cannot differentiate an empty output.)
    """
    inputs = make_inputs(cell, "none", steps=0, lengths=None)
    outputs, saved = triton_backend.forward(inputs)
    assert outputs.output.shape == (0, BATCH, HIDDEN)
    assert torch.equal(outputs.h_n, inputs.h0)
    grad_output, grad_h_n, grad_c_n = upstream_gradients(outputs)
    grads = triton_backend.backward(inputs, saved, grad_output, grad_h_n, grad_c_n)
    assert torch.equal(grads["h0"], grad_h_n)
    assert grads["xg"].shape == inputs.xg.shape
    assert not grads["w_hh"].any() and not grads["b_hh"].any()
    if cell == "lstm":
        assert torch.equal(outputs.c_n, inputs.c0) and torch.equal(grads["c0"], grad_c_n)


@pytest.mark.interpreter
@needs_backend
def test_masks_follow_seed_layer_direction():
    """Different seed or layer gives different masks; the same ones give identical runs."""
    base = make_inputs("lstm", "zoneout")
    first = triton_backend.forward(base)[0].output
    assert torch.equal(first, triton_backend.forward(base)[0].output)
    for change in ({"seed": 99}, {"layer": 2}):
        assert not torch.equal(first, triton_backend.forward(base.replace(**change))[0].output)


@pytest.mark.interpreter
@needs_backend
@pytest.mark.parametrize("regularizer", ["all_batch_norm", "all_layer_norm"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_saved_like_and_tensor_seed(cell, regularizer):
    """saved_like mirrors forward's saved tuple; a 0-d int64 seed equals the int seed."""
    inputs = make_inputs(cell, regularizer, lengths=LENGTHS)
    outputs, saved = triton_backend.forward(inputs)
    like = triton_backend.saved_like(inputs)
    assert len(like) == len(saved)
    for empty, real in zip(like, saved):
        assert (empty.shape, empty.dtype, empty.device) == (real.shape, real.dtype, real.device)
        assert all(empty is not getattr(inputs, f.name) for f in dataclasses.fields(inputs))
    tensor_seed = inputs.replace(seed=torch.tensor(inputs.seed, dtype=torch.int64))
    assert torch.equal(triton_backend.forward(tensor_seed)[0].output, outputs.output)


def test_unsupported_and_availability():
    inputs = make_inputs("lstm", "none", device="cpu", proj=3)
    assert "float64 is not supported" in triton_backend.unsupported_reason(
        cast_inputs(inputs, torch.float64)
    )
    reason = triton_backend.availability()
    assert reason is None or isinstance(reason, str)
    assert triton_backend.NAME == "triton"


def test_grid_larger_than_sms_fails_instead_of_hanging(monkeypatch):
    monkeypatch.setattr(triton_backend, "_interpreting", lambda: False)
    with pytest.raises(RuntimeError, match="SMs"):
        triton_backend._check_grid(200, {"sms": 132})
    triton_backend._check_grid(132, {"sms": 132})


# ----------------------------------------------------------------------------------------
# GPU: multi-program grids and cuDNN parity
# ----------------------------------------------------------------------------------------
# H = 199 (prime): several programs in both kernels, within the launcher's shared-memory
# limit on an A100 / H100 (LSTM G*H pads to 1024).
GPU_HIDDEN, GPU_BATCH, GPU_STEPS = 199, 8, 6
GPU_LENGTHS = [6, 1, 4, 6, 2, 5, 3, 6]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(
    "regularizer",
    ["none", "zoneout_eval", "batch_norm_eval", "layer_norm", "all_batch_norm", "all_layer_norm"],
)
@pytest.mark.parametrize("cell", CELLS)
def test_gpu_multi_program_matches_reference(poisoned, cell, regularizer, reverse):
    torch.backends.cuda.matmul.allow_tf32 = False
    inputs = make_inputs(
        cell,
        regularizer,
        steps=GPU_STEPS,
        batch=GPU_BATCH,
        hidden=GPU_HIDDEN,
        lengths=GPU_LENGTHS,
        reverse=reverse,
        device="cuda",
    )
    geometry = triton_backend._geometry(
        GPU_BATCH, GPU_HIDDEN, inputs.config.num_gates, "cuda", inputs.xg.dtype
    )
    assert geometry["programs"] > 1
    assert_matches_reference(inputs)


@pytest.mark.gpu
@needs_gpu
@needs_fp32_precision_api
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gpu_float32_tf32(cell):
    """With torch's cuDNN RNN TF32 flag on (its default), float32 runs on TF32 tensor cores:
    the results differ from the exact path, by no more than TF32's 10-bit mantissa allows."""
    inputs = make_inputs(
        cell, "layer_norm", steps=GPU_STEPS, batch=GPU_BATCH, hidden=GPU_HIDDEN, device="cuda"
    )
    truth = run_backend(reference_backend, cast_inputs(inputs, torch.float64))
    exact = run_backend(triton_backend, inputs)
    torch.backends.cudnn.rnn.fp32_precision = "tf32"  # the autouse fixture restores it
    tf32 = run_backend(triton_backend, inputs)
    assert not torch.equal(tf32["output"], exact["output"]), "TF32 flag on, exact product"
    for name, value in tf32.items():
        if value is not None and value.is_floating_point():
            expected = truth[name].to(torch.float32)
            scale = expected.abs().max().clamp_min(1.0)
            assert (value - expected).abs().max() <= 2e-2 * scale, name


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_half_precision(poisoned, dtype, cell):
    inputs = make_inputs(
        cell,
        "all_layer_norm",
        steps=GPU_STEPS,
        batch=GPU_BATCH,
        hidden=GPU_HIDDEN,
        lengths=GPU_LENGTHS,
        dtype=dtype,
        device="cuda",
    )
    assert_matches_reference(inputs)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("cell", CELLS)
def test_gpu_matches_cudnn(cell):
    """No regulariser: the recurrence equals torch.nn's cuDNN layer, forward and backward."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    size, hidden, steps, batch = 24, 131, 7, 5
    if cell == "lstm":
        module = torch.nn.LSTM(size, hidden)
    elif cell == "gru":
        module = torch.nn.GRU(size, hidden)
    else:
        module = torch.nn.RNN(size, hidden, nonlinearity=cell.split("_")[1])
    module = module.cuda()
    module64 = copy.deepcopy(module).double()  # the truth: the same weights in float64
    x = torch.randn(steps, batch, size, device="cuda")
    h0 = torch.randn(batch, hidden, device="cuda")
    c0 = torch.randn(batch, hidden, device="cuda")
    grad_output = torch.randn(steps, batch, hidden, device="cuda")
    grad_h_n, grad_c_n = torch.randn_like(h0), torch.randn_like(c0)

    def run_torch(layer, dtype):
        leaves = [t.detach().to(dtype).requires_grad_(True) for t in (x, h0, c0)]
        state = (leaves[1][None], leaves[2][None]) if cell == "lstm" else leaves[1][None]
        output, final = layer(leaves[0], state)
        h_n = final[0][0] if cell == "lstm" else final[0]
        roots, grads = [output, h_n], [grad_output.to(dtype), grad_h_n.to(dtype)]
        if cell == "lstm":
            roots.append(final[1][0])
            grads.append(grad_c_n.to(dtype))
        torch.autograd.backward(roots, grads)
        result = {"output": output, "h_n": h_n, "c_n": final[1][0] if cell == "lstm" else None}
        result |= {"dx": leaves[0].grad, "dh0": leaves[1].grad}
        result["dc0"] = leaves[2].grad if cell == "lstm" else None
        result |= {"dW_hh": layer.weight_hh_l0.grad, "db_hh": layer.bias_hh_l0.grad}
        result["dW_ih"] = layer.weight_ih_l0.grad
        return {k: None if v is None else v.detach() for k, v in result.items()}

    truth = run_torch(module64, torch.float64)
    cudnn = run_torch(module, torch.float32)

    w_ih, b_ih = module.weight_ih_l0.detach(), module.bias_ih_l0.detach()
    xg = (x @ w_ih.t() + b_ih).contiguous()
    inputs = RecurrenceInputs(
        config=RecurrenceConfig(cell=cell, hidden_size=hidden),
        xg=xg,
        h0=h0,
        c0=c0 if cell == "lstm" else None,
        w_hh=module.weight_hh_l0.detach(),
        b_hh=module.bias_hh_l0.detach(),
        w_hr=None,
        lengths=None,
    )
    outputs, saved = triton_backend.forward(inputs)
    ours = triton_backend.backward(
        inputs, saved, grad_output, grad_h_n, grad_c_n if cell == "lstm" else None
    )
    result = {"output": outputs.output, "h_n": outputs.h_n, "c_n": outputs.c_n}
    result |= {"dx": ours["xg"] @ w_ih, "dh0": ours["h0"], "dc0": ours["c0"]}
    result |= {"dW_hh": ours["w_hh"], "db_hh": ours["b_hh"]}
    result["dW_ih"] = ours["xg"].reshape(-1, xg.shape[-1]).t() @ x.reshape(-1, size)
    assert_by_rule(result, truth, cudnn, torch.float32, what=f"triton vs cuDNN ({cell})")


@pytest.mark.gpu
@needs_gpu
def test_gpu_no_recompile_for_new_lengths():
    from fusedrnn.kernels.recurrence import recurrence_forward_kernel

    caches = getattr(recurrence_forward_kernel, "device_caches", None)
    if caches is None:
        pytest.skip("this triton version does not expose device_caches")

    def compiled() -> int:
        return sum(len(entry[0]) for entry in caches.values())

    triton_backend.forward(make_inputs("lstm", "zoneout", steps=3, device="cuda"))
    before = compiled()
    for steps, batch in ((1, 6), (16, 6), (33, 6), (5, 9)):
        triton_backend.forward(
            make_inputs("lstm", "zoneout", steps=steps, batch=batch, device="cuda")
        )
    assert compiled() == before


@pytest.mark.gpu
@needs_gpu
def test_gpu_too_large_is_unsupported_not_a_crash():
    reason = triton_backend.unsupported_reason(
        make_inputs("lstm", "none", batch=256, hidden=16384, steps=1, device="cuda")
    )
    assert reason is not None and "too large" in reason


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(("batch", "hidden"), [(64, 1024), (16, 2048)], ids=["W2", "streamed"])
def test_gpu_large_shapes_match_reference(poisoned, batch, hidden):
    """W2's row pieces and K tiles, and H = 2048's streamed W_hh, on the GPU (bf16)."""
    inputs = make_inputs(
        "lstm", "none", steps=3, batch=batch, hidden=hidden, dtype=torch.bfloat16, device="cuda"
    )
    assert triton_backend.unsupported_reason(inputs) is None
    assert_matches_reference(inputs)


# ----------------------------------------------------------------------------------------
# Compiled-mode check without a GPU: compile (never launch) the real kernels for sm_80 and
# sm_90 with the ptxas bundled in the triton wheel, in a subprocess with the interpreter off.
# ----------------------------------------------------------------------------------------
def compile_kernels_for_gpu(arch: int) -> list[str]:
    """Build each kernel's signature from a captured launcher call, compile it for ``arch``
    with GPU-like block sizes; returns one line per kernel. Runs with TRITON_INTERPRET=0."""
    import triton
    from fusedrnn.kernels import recurrence
    from triton.backends.compiler import GPUTarget

    captured = {}

    class Capture:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: captured.__setitem__(self.kernel, (args, kwargs))

    pointer = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
    pointer.update({torch.int64: "*i64", torch.int32: "*i32"})
    lines = []
    triton_backend._interpreting = lambda: True  # CPU tensors, one-program geometry
    for name in ("recurrence_forward_kernel", "recurrence_backward_kernel"):
        setattr(recurrence, name, Capture(getattr(recurrence, name)))
    for cell, regularizer, dtype in (
        ("lstm", "all_batch_norm", torch.float32),
        ("lstm", "all_layer_norm", torch.bfloat16),
        ("gru", "batch_norm_eval", torch.float16),
        ("rnn_relu", "zoneout", torch.float32),
    ):
        inputs = make_inputs(cell, regularizer, hidden=37, batch=5, dtype=dtype, device="cpu")
        outputs, saved = triton_backend.forward(inputs)
        grad_output, grad_h_n, grad_c_n = upstream_gradients(outputs)
        triton_backend.backward(inputs, saved, grad_output, grad_h_n, grad_c_n)
        gpu_blocks = {"BLOCK_B": 16, "BLOCK_H": 64, "BLOCK_U": 16, "PROGRAMS_PAD": 16}
        # Without a projection h's units are the cell's (BLOCK_P = BLOCK_H, BLOCK_R =
        # BLOCK_U), and every row goes into one dot.
        # every row in one dot, and one row piece (the whole step; no pieces below 128 rows)
        gpu_blocks |= {"BLOCK_P": 64, "BLOCK_R": 16, "ROWS_PER_DOT": 16, "ROW_PIECE": 16}
        gpu_blocks["UPCAST_OPERANDS"] = False  # the interpreter's upcast is off on a GPU
        for kernel, (args, kwargs) in captured.items():
            values = dict(zip(kernel.arg_names, args)) | kwargs | gpu_blocks
            values.pop("num_warps")
            values.pop("launch_cooperative_grid")
            signature, constants = {}, {}
            for param, arg_name in zip(kernel.params, kernel.arg_names):
                value = values[arg_name]
                if param.is_constexpr or value is None:
                    signature[arg_name], constants[arg_name] = "constexpr", value
                elif isinstance(value, torch.Tensor):
                    signature[arg_name] = pointer[value.dtype]
                elif isinstance(value, float):
                    signature[arg_name] = "fp32"
                else:
                    signature[arg_name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            source = triton.compiler.ASTSource(kernel, signature, constexprs=constants)
            compiled = triton.compile(
                source, target=GPUTarget("cuda", arch, 32), options={"num_warps": 8}
            )
            assert compiled.asm["cubin"], "no cubin"
            lines.append(f"{kernel.__name__} {cell} {regularizer} {dtype}: ok")
    return lines


@pytest.mark.parametrize("arch", [90, pytest.param(80, marks=pytest.mark.slow)])
def test_kernels_compile_for_gpu_without_one(arch):
    import subprocess
    import sys

    triton = pytest.importorskip("triton")
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("this triton wheel has no bundled ptxas")
    env = dict(os.environ, TRITON_INTERPRET="0")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_triton; "
        "print('\\n'.join(test_triton.compile_kernels_for_gpu(int(sys.argv[2]))))"
    )
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run(
        [sys.executable, "-c", code, tests_dir, str(arch)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count(": ok") == 8, result.stdout
