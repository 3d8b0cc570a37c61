"""The ``cuda`` backend on a GPU: parity with the reference (float64 truth) and with cuDNN.

Every test is marked ``gpu``: it skips where there is no CUDA device (tests/conftest.py), and
fails where there is one but the cuda backend cannot run (e.g. fusedrnn._C built without CUDA),
since a skip there would hide that nothing was tested. Numerics (docs/design.md §3.3,
helpers.assert_by_rule): in dtype D the kernel's error against the float64 reference must be
at most 2x the error of PyTorch's own implementation in D (the reference's torch ops, or
cuDNN) plus the floor of D.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from helpers import assert_by_rule, run_and_grad
from test_host import REGULARIZERS, _reference, cast, make_inputs, named_results, to_float64
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn.backends import cuda as cuda_backend
from fusedrnn.backends import native
from fusedrnn.backends.base import RecurrenceInputs

_reason = cuda_backend.availability()
pytestmark = pytest.mark.gpu

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
F32 = torch.float32


@pytest.fixture(autouse=True)
def _require_cuda_backend():
    """Runs only on a CUDA machine (conftest skips gpu tests elsewhere): there the backend
    must be usable, so a fusedrnn._C built without CUDA fails instead of skipping."""
    if _reason is not None:
        pytest.fail(f"this machine has a CUDA device but the cuda backend cannot run: {_reason}")


@contextlib.contextmanager
def tf32(enabled: bool):
    """float32 products in TF32 (or exact) for cuDNN's RNN (what the cuda backend follows,
    docs/kernels-v2.md §2) and for cuBLAS (the reference loop's products), restored after."""
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    matmul = torch.backends.cuda.matmul
    if rnn is not None and hasattr(rnn, "fp32_precision"):
        before = (rnn.fp32_precision, matmul.fp32_precision)
        rnn.fp32_precision = matmul.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            rnn.fp32_precision, matmul.fp32_precision = before
    else:
        before = (torch.backends.cudnn.allow_tf32, matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = matmul.allow_tf32 = enabled
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = before


@pytest.fixture(autouse=True)
def _exact_float32():
    """float32 runs the exact FP32 product unless a test asks for TF32 (tf32(True))."""
    with tf32(False):
        yield


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    """NaN in every output and workspace before each launch: unwritten elements show."""
    monkeypatch.setattr(native, "POISON_OUTPUTS", True)


def _to(inputs: RecurrenceInputs, dtype, device="cuda") -> RecurrenceInputs:
    changes = {}
    for name in inputs.__dataclass_fields__:
        v = getattr(inputs, name)
        if isinstance(v, torch.Tensor):
            changes[name] = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
    return inputs.replace(**changes)


def _grads(shape_out, shape_h, shape_c, device):
    """Incoming gradients of out, h_n and (shape_c not None: LSTM) c_n; h has P units with a
    projection, c always H."""
    gen = torch.Generator().manual_seed(11)
    go = torch.randn(shape_out, generator=gen, dtype=torch.float64).to(device)
    gh = torch.randn(shape_h, generator=gen, dtype=torch.float64).to(device)
    gc = None
    if shape_c is not None:
        gc = torch.randn(shape_c, generator=gen, dtype=torch.float64).to(device)
    return go, gh, gc


def check_against_reference(base: RecurrenceInputs, dtype) -> None:
    inputs = _to(base, dtype)
    truth_inputs = to_float64(inputs)
    lstm = inputs.config.cell == "lstm"
    steps, batch, _ = inputs.xg.shape
    go, gh, gc = _grads(
        (steps, batch, inputs.config.out_size),
        tuple(inputs.h0.shape),
        (batch, inputs.config.hidden_size) if lstm else None,
        "cuda",
    )
    truth_out, truth_grads = _reference(truth_inputs, go, gh, gc)
    same_out, same_grads = _reference(inputs, go, gh, gc)
    out, saved = cuda_backend.forward(inputs)
    grads = cuda_backend.backward(inputs, saved, cast(go, dtype), cast(gh, dtype), cast(gc, dtype))
    torch.cuda.synchronize()
    assert_by_rule(
        named_results(out, grads),
        named_results(truth_out, truth_grads),
        named_results(same_out, same_grads),
        dtype,
        what="cuda",
    )


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("reg", REGULARIZERS)
@pytest.mark.parametrize("cell", CELLS)
def test_parity_reference(cell, reg, reverse, lengths, dtype):
    check_against_reference(make_inputs(cell, reg, reverse, lengths, torch.float64), dtype)


@pytest.mark.parametrize(
    ("steps", "batch", "hidden"),
    [(1, 1, 1), (9, 3, 17), (5, 7, 131), (4, 33, 257), (3, 5, 1024), (2, 65, 300)],
)
@pytest.mark.parametrize("cell", CELLS)
def test_sizes_multi_block(cell, steps, batch, hidden):
    """Many blocks (hidden > number of SMs), uneven slices, the layer-norm grid reductions."""
    for reg in ("none", "all", "all_ln"):
        base = make_inputs(cell, reg, True, True, torch.float64, steps, batch, hidden)
        check_against_reference(base, torch.float32)


def test_large_hidden_w_from_l2():
    """W_hh slices that do not fit in shared memory take the L2 path."""
    base = make_inputs("lstm", "all", False, True, torch.float64, 3, 8, 2048)
    check_against_reference(base, torch.float16)


# Shapes that reach every branch of the tensor-core product (tensor_core.cuh): hidden 17 and
# 131 (rows not a multiple of 4: element-wise staging, k tails), 36 (a multiple of 4 but not
# of 8: 16-byte copies of the fp32 operands, element-wise ones of the 16-bit forward
# exchange), 64 and 256 (16-byte cp.async), batch 1 (one tile, 8-way split-K), 9 and 65 (partial n-tiles, two batch blocks of
# 64), 130 (three blocks); hidden 131 and 256 use more blocks than SMs have units to spare.
TC_SHAPES = [(3, 1, 17), (3, 5, 36), (4, 9, 64), (3, 65, 131), (2, 130, 256)]


def _plan_of(inputs: RecurrenceInputs, backward: bool, use_tf32: bool) -> dict:
    limits = cuda_backend.device_limits(inputs.xg.device)
    assert limits is not None, "this torch does not report the device limits the plan needs"
    return cuda_backend.launch_plan(inputs, backward, limits, use_tf32)


@pytest.mark.parametrize(("steps", "batch", "hidden"), TC_SHAPES)
@pytest.mark.parametrize("reg", ["none", "all", "all_ln"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_tensor_core_half(cell, reg, steps, batch, hidden, dtype):
    """bf16 / fp16 operands on mma.sync m16n8k16, fp32 accumulation, forward and backward."""
    base = make_inputs(cell, reg, False, True, torch.float64, steps, batch, hidden)
    for backward in (False, True):
        assert _plan_of(_to(base, dtype), backward, False)["tensor_cores"]
    check_against_reference(base, dtype)


@pytest.mark.parametrize(("steps", "batch", "hidden"), TC_SHAPES)
@pytest.mark.parametrize("reg", ["none", "all_ln"])
@pytest.mark.parametrize("cell", CELLS)
def test_tensor_core_tf32(cell, reg, steps, batch, hidden):
    """float32 under TF32 (cuDNN's RNN flag on): mma.sync m16n8k8 .tf32; the yardstick is the
    reference with its products in TF32 too (cuBLAS under the same setting)."""
    base = make_inputs(cell, reg, True, True, torch.float64, steps, batch, hidden)
    assert _plan_of(_to(base, F32), True, True)["tensor_cores"]
    with tf32(True):
        check_against_reference(base, F32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, F32], ids=["bf16", "tf32"])
def test_tensor_core_operand_chunks(dtype):
    """W2's shape (B=64, H=1024): the bf16 forward stages all of K (its 16-bit exchange) in one
    copy; the fp32 forward and both backwards (fp32 d(a), K = 4096) go through the cp.async
    double buffer in smaller chunks."""
    base = make_inputs("lstm", "all_ln", False, True, torch.float64, 2, 64, 1024)
    forward = _plan_of(_to(base, dtype), False, True)
    backward = _plan_of(_to(base, dtype), True, True)
    assert forward["tensor_cores"] and backward["tensor_cores"]
    assert (forward["k_chunk"] == 1024) == (dtype == torch.bfloat16), forward
    assert 0 < backward["k_chunk"] < 4096, backward
    with tf32(True):
        check_against_reference(base, dtype)


# Shapes for sm_90's TMA staging (tensor_core.cuh bulk_stage_operand_chunk: one 1-D bulk copy
# per batch row, the rest zero-filled): rows whose bytes are a multiple of the bulk copy's 16
# but not of the chunk (the k tail zero-filled up to the k-step: hidden 40 bf16, 36 and 1020
# fp32), rows past the batch (batch 5, 67's second block of 3), several chunks with a short
# last one (1020 fp32: chunks smaller than K), and rows that are not a multiple of 16 bytes
# (hidden 36 and 1020 in the 16-bit exchange: 72 / 2040 bytes), which fall back to the
# element-wise copy on sm_90 too. (dtype, cell, reg, batch, hidden); the fused-cell forms
# ("none") and the phased ones ("all_ln") both stage through for_each_staged_chunk.
BULK_SHAPES = [
    (torch.bfloat16, "lstm", "none", 5, 40),
    (torch.bfloat16, "gru", "all_ln", 67, 36),
    (torch.float16, "lstm", "none", 3, 1020),
    (F32, "lstm", "none", 5, 36),
    (F32, "gru", "all_ln", 67, 1020),
]


@pytest.mark.parametrize(("dtype", "cell", "reg", "batch", "hidden"), BULK_SHAPES)
def test_bulk_copy_ragged_rows(dtype, cell, reg, batch, hidden):
    """Every shape runs the tensor-core product (on sm_90 through the TMA bulk copies and their
    mbarriers, on sm_80 through cp.async) and meets the reference; the plan shows which
    chunking each direction takes. Three steps: each stage barrier completes several phases,
    across steps, batch blocks and chunks (the parity tracking)."""
    base = make_inputs(cell, reg, False, True, torch.float64, 3, batch, hidden)
    inputs = _to(base, dtype)
    for backward in (False, True):
        plan = _plan_of(inputs, backward, True)
        assert plan["tensor_cores"] and plan["reason"] == "", plan
    if hidden == 1020 and dtype == F32:
        assert _plan_of(inputs, False, True)["k_chunk"] < hidden  # several forward chunks
    with tf32(True):
        check_against_reference(base, dtype)


def test_exact_float32_when_tf32_is_off():
    """TF32 off: the plan picks the FMA product and float32 meets the exact reference's bound
    (the autouse fixture turns TF32 off for every other float32 test too)."""
    base = make_inputs("lstm", "all_ln", False, True, torch.float64, 5, 9, 131)
    assert not _plan_of(_to(base, F32), False, False)["tensor_cores"]
    check_against_reference(base, F32)


@pytest.mark.parametrize(("batch", "hidden"), [(16, 512), (64, 1024), (640, 1024), (7, 131)])
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_python_plan_is_the_native_plan(batch, hidden, dtype):
    """The plan dispatch checks (device properties from torch) gives the grid the kernels use,
    or the reason the native launcher would throw with."""
    C = native.native()
    base = make_inputs("lstm", "none", False, False, torch.float64, 2, batch, hidden)
    inputs = _to(base, dtype)
    for backward in (False, True):
        plan = _plan_of(inputs, backward, cuda_backend.float32_uses_tf32())
        p = C.RecurrenceFwdParams()
        p.T, p.B, p.H, p.G = 2, batch, hidden, 4
        p.dtype = {F32: 0, torch.float16: 1, torch.bfloat16: 2}[dtype]
        p.allow_tf32 = cuda_backend.float32_uses_tf32()
        if plan["reason"]:
            with pytest.raises(RuntimeError, match=r"shared memory|co-resident"):
                C.cuda_plan_grid(p, backward)
        else:
            assert C.cuda_plan_grid(p, backward) == plan["grid"]


def test_dispatch_falls_back_instead_of_throwing():
    """LSTM float32 backward at B=640 H=1024 does not fit (issue 14): ``auto`` skips cuda
    with that reason, a named cuda raises it before any launch."""
    from fusedrnn import dispatch

    base = make_inputs("lstm", "ln", False, False, torch.float64, 2, 640, 1024)
    inputs = _to(base, F32)
    reason = cuda_backend.unsupported_reason(inputs)
    assert reason is not None and "shared memory" in reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # auto may land on the reference loop
        assert dispatch.recurrence_backend("auto", inputs).NAME != "cuda"
    with pytest.raises(RuntimeError, match="shared memory"):
        dispatch.recurrence_backend("cuda", inputs)


TORCH_CELLS = {
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {}),
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(("steps", "batch", "inp", "hidden"), [(16, 8, 32, 64), (7, 3, 5, 129)])
def test_parity_cudnn(cell, dtype, steps, batch, inp, hidden):
    """Layer output, final state and dx / dW against torch.nn.* (cuDNN) in the same dtype."""
    name, kw = TORCH_CELLS[cell]
    torch.manual_seed(0)
    module64 = getattr(torch.nn, name)(inp, hidden, **kw).double().cuda()
    module = getattr(torch.nn, name)(inp, hidden, **kw).to(device="cuda", dtype=dtype)
    module.load_state_dict(module64.state_dict())
    x64 = torch.randn(steps, batch, inp, dtype=torch.float64, device="cuda")
    h64 = torch.randn(batch, hidden, dtype=torch.float64, device="cuda") * 0.5
    c64 = torch.randn(batch, hidden, dtype=torch.float64, device="cuda") * 0.5
    lstm = cell == "lstm"

    def run_torch(mod, x, h, c):
        x = x.detach().requires_grad_(True)
        out, state = mod(x, (h[None], c[None]) if lstm else h[None])
        hn = state[0][0] if lstm else state[0]
        loss = out.double().sin().sum() + hn.double().cos().sum()
        if lstm:
            loss = loss + state[1][0].double().square().sum()
        loss.backward()
        return out, hn, x.grad, mod.weight_hh_l0.grad

    truth = run_torch(module64, x64, h64, c64)
    cudnn = run_torch(module, x64.to(dtype), h64.to(dtype), c64.to(dtype))

    from fusedrnn.backends.base import RecurrenceConfig

    cfg = RecurrenceConfig(cell=cell, hidden_size=hidden)
    w_ih, b_ih = module.weight_ih_l0.detach(), module.bias_ih_l0.detach()
    x = x64.to(dtype).requires_grad_(True)
    xg = (x @ w_ih.t() + b_ih).detach()
    inputs = RecurrenceInputs(
        cfg,
        xg,
        h64.to(dtype),
        c64.to(dtype) if lstm else None,
        module.weight_hh_l0.detach(),
        module.bias_hh_l0.detach(),
        None,
        None,
    )
    out, saved = cuda_backend.forward(inputs)
    # d(loss)/d(out) and d/d(h_n), d/d(c_n) of the same loss
    go = out.output.double().cos().to(dtype)
    gh = (-out.h_n.double().sin()).to(dtype)
    gc = (2 * out.c_n.double()).to(dtype) if lstm else None
    grads = cuda_backend.backward(inputs, saved, go, gh, gc)
    dx = grads["xg"] @ w_ih
    names = ("output", "h_n", "dx", "dW_hh")
    mine = dict(zip(names, (out.output, out.h_n, dx, grads["w_hh"])))
    assert_by_rule(mine, dict(zip(names, truth)), dict(zip(names, cudnn)), dtype, what="cuda")


# About 1 s of torch.cuda._sleep on an H100 (1.7-2 GHz): far longer than the host side of a
# forward and a backward call, so the stream is still busy when they return.
_SLEEP_CYCLES = 2**31


def test_stream_and_no_sync():
    """Both calls are enqueued on the caller's (non-default) stream and return without waiting
    for it; after synchronising, the results equal the default stream's and match the float64
    reference under the numerics rule.

    The side stream starts with a ~1 s busy kernel, and xg is NaN until a copy queued on that
    stream after it: a launch on another stream would read NaN, and a host synchronisation
    (by torch, caught by sync debug mode, or by the native code) would make the calls return
    only after the sleep, when the stream is idle.
    """
    steps, batch, hidden = 6, 4, 40
    base = _to(make_inputs("gru", "all", False, True, torch.float64, steps, batch, hidden), F32)
    grad_output, grad_h_n, _ = _grads((steps, batch, hidden), (batch, hidden), None, "cuda")
    grad_output, grad_h_n = grad_output.to(F32), grad_h_n.to(F32)

    def run(inputs):
        out, saved = cuda_backend.forward(inputs)
        return out, cuda_backend.backward(inputs, saved, grad_output, grad_h_n, None)

    default_out, default_grads = run(base)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run(base)  # warm-up: the caching allocator holds blocks for this stream from here on
    side.synchronize()

    xg = torch.full_like(base.xg, float("nan"))
    side.wait_stream(torch.cuda.current_stream())
    previous_mode = torch.cuda.get_sync_debug_mode()
    with torch.cuda.stream(side):
        torch.cuda._sleep(_SLEEP_CYCLES)
        xg.copy_(base.xg)
        inputs = base.replace(xg=xg)
        torch.cuda.set_sync_debug_mode("error")
        try:
            out, grads = run(inputs)
        finally:
            torch.cuda.set_sync_debug_mode(previous_mode)
        returned_before_the_stream_finished = not side.query()
    assert returned_before_the_stream_finished, "the calls waited for the stream"
    side.synchronize()
    torch.cuda.current_stream().wait_stream(side)

    ours, default = named_results(out, grads), named_results(default_out, default_grads)
    for name, got in ours.items():
        if got is not None:
            assert torch.equal(got, default[name]), f"{name}: differs from the default stream's"
    assert_by_rule(
        ours,
        named_results(*_reference(to_float64(base), grad_output, grad_h_n, None)),
        named_results(*_reference(base, grad_output, grad_h_n, None)),
        F32,
        what="cuda on a side stream",
    )


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layer_norm_backward_row_sums_across_blocks(cell, dtype):
    """Layer-norm backward's row sums over every block's columns, with more blocks than
    warps per block and uneven slices."""
    base = make_inputs(cell, "all_ln", False, True, torch.float64, 3, 37, 600)
    check_against_reference(base, dtype)


@pytest.mark.parametrize("reg", ["none", "all", "all_ln", "bn_eval"])
@pytest.mark.parametrize("cell", CELLS)
def test_inference_saves_nothing(cell, reg):
    """With no gradient needed the forward writes no saved tensor (norm statistics included)
    and gives the same results as with one."""
    base = _to(make_inputs(cell, reg, False, True, torch.float64), F32)
    with_grad, saved = cuda_backend.forward(base)
    without, nothing = cuda_backend.forward(base.replace(needs_grad=False))
    assert any(t.numel() > 0 for t in saved[1:])
    assert all(t.numel() == 0 for t in nothing), [tuple(t.shape) for t in nothing]
    assert len(cuda_backend.saved_like(base.replace(needs_grad=False))) == len(nothing)
    for name in ("output", "h_n", "c_n"):
        if getattr(with_grad, name) is not None:
            assert torch.equal(getattr(with_grad, name), getattr(without, name)), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_half_backward_reads_h_state(cell, dtype):
    """16-bit storage: the forward saves h_t at float32 (h_state, whose rounding to ``dtype``
    is the output), and the backward's h_{t-1} (dW_hh's input, GRU's dz) is that saved state,
    not ``out`` rounded to ``dtype``: handing the backward h_state rounded like ``out`` changes
    dW_hh (and GRU's d(xg))."""
    inputs = _to(make_inputs(cell, "none", False, False, torch.float64, 6, 5, 37), dtype)
    out, saved = cuda_backend.forward(inputs)
    slot = native._SAVED.index("h_state")
    h_state = saved[slot]
    assert h_state.dtype == torch.float32 and h_state.shape == out.output.shape
    assert torch.equal(h_state.to(dtype), out.output)
    assert not torch.equal(h_state, out.output.float())  # float32 carries more than dtype
    go, gh, gc = (
        None if g is None else g.to(dtype)
        for g in _grads(
            tuple(out.output.shape),
            tuple(inputs.h0.shape),
            tuple(inputs.h0.shape) if cell == "lstm" else None,
            "cuda",
        )
    )
    grads = cuda_backend.backward(inputs, saved, go, gh, gc)
    rounded = list(saved)
    rounded[slot] = h_state.to(dtype).float()
    grads_rounded = cuda_backend.backward(inputs, tuple(rounded), go, gh, gc)
    torch.cuda.synchronize()
    assert not torch.equal(grads["w_hh"], grads_rounded["w_hh"])
    if cell == "gru":
        assert not torch.equal(grads["xg"], grads_rounded["xg"])


# ------------------------------------------------------------------ the cell on the accumulators
# The forward's fused-cell path (block_product_cell_tc, tensor_core.cuh; step_loop.h
# product_and_cell): taken by default where the plan allows it (tensor cores, no norm, no
# projection), forced off by cuda_backend.FUSED_CELL = False (the phased path). Both are
# checked against the float64 truth with the same yardstick; these tests pin the backward to
# its phased form (FUSED_CELL_BACKWARD = False, the `phased_backward` fixture), so a wrong
# saved tensor of the fused forward shows in the gradients of a backward tested on its own.
FUSED_REGULARIZERS = ("none", "recurrent_dropout", "zoneout", "zoneout_eval", "weight_drop")
# hidden 1 (one unit per block), 13 (hl = 1), 300 (hl 2-3: one part-empty 8-unit group),
# 1050 (hl 7-8 over 132 blocks; at B = 65: 8 items without split-K in the first batch block,
# one item with 8-way split-K in the second; fp32 operand in double-buffered chunks), batch 1
# (8-way split-K), 9 and 65 (partial batch tiles, two batch blocks), 130 (three).
FUSED_SHAPES = [(3, 1, 1), (4, 9, 13), (3, 65, 300), (2, 65, 1050), (2, 130, 64)]


def _fused_plan_matches(base: RecurrenceInputs, dtype, fused: bool, use_tf32: bool) -> None:
    plan = _plan_of(_to(base, dtype), False, use_tf32)
    assert plan["tensor_cores"] == (dtype != F32 or use_tf32), plan
    assert plan["fused_cell"] == (fused and plan["tensor_cores"]), plan


@pytest.fixture
def phased_backward(monkeypatch):
    """The forward's fused-cell tests run the phased backward (tested on its own)."""
    monkeypatch.setattr(cuda_backend, "FUSED_CELL_BACKWARD", False)


@pytest.fixture
def phased_forward(monkeypatch):
    """The backward's fused-cell tests run the phased forward (tested on its own)."""
    monkeypatch.setattr(cuda_backend, "FUSED_CELL", False)


def _launched(run, *args) -> tuple[object, list[str]]:
    """run(*args) and the names of the recurrence kernels it launched (torch.profiler's CUDA
    activity: the demangled template instance, e.g. `recurrence_backward_kernel<__nv_bfloat16,
    true>`)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        result = run(*args)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if "recurrence_" in e.name and "_kernel<" in e.name]
    return result, names


def _instance_is_fused(names: list[str], kernel: str) -> bool:
    """Whether the launches of `kernel` (recurrence_forward_kernel / recurrence_backward_kernel)
    in `names` are the fused-cell instance (<S, true>); all of them must agree."""
    forms = {", true>" in n for n in names if kernel + "<" in n}
    assert len(forms) == 1, (kernel, names)
    return forms.pop()


@pytest.mark.usefixtures("phased_backward")
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "phased"])
@pytest.mark.parametrize("precision", ["bf16", "f16", "tf32", "f32"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("reg", FUSED_REGULARIZERS)
@pytest.mark.parametrize("cell", CELLS)
def test_fused_cell_parity_reference(cell, reg, reverse, lengths, precision, fused, monkeypatch):
    """Every cell with zoneout (training draws and eval), recurrent dropout and weight drop,
    both directions, with and without lengths; fp32 with TF32 off has no tensor cores and so
    always runs the phased path (the plan says so)."""
    monkeypatch.setattr(cuda_backend, "FUSED_CELL", fused)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}.get(precision, F32)
    use_tf32 = precision == "tf32"
    base = make_inputs(cell, reg, reverse, lengths, torch.float64, 7, 5, 13)
    with tf32(use_tf32):
        _fused_plan_matches(base, dtype, fused, use_tf32)
        check_against_reference(base, dtype)


@pytest.mark.usefixtures("phased_backward")
@pytest.mark.parametrize(("steps", "batch", "hidden"), FUSED_SHAPES)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "phased"])
@pytest.mark.parametrize("precision", ["bf16", "tf32"])
@pytest.mark.parametrize("cell", CELLS)
def test_fused_cell_sizes(cell, precision, fused, steps, batch, hidden, monkeypatch):
    """The fused product's work split at awkward sizes: partial 8-unit groups and batch tiles,
    split-K from 8 ways down to none, several batch blocks, many blocks."""
    monkeypatch.setattr(cuda_backend, "FUSED_CELL", fused)
    dtype = torch.bfloat16 if precision == "bf16" else F32
    for reg in ("zoneout", "recurrent_dropout"):
        base = make_inputs(cell, reg, True, True, torch.float64, steps, batch, hidden)
        with tf32(precision == "tf32"):
            _fused_plan_matches(base, dtype, fused, precision == "tf32")
            check_against_reference(base, dtype)


@pytest.mark.usefixtures("phased_backward")
@pytest.mark.parametrize("dtype", [torch.bfloat16, F32], ids=["bf16", "tf32"])
def test_fused_cell_w1_and_w2_shapes(dtype):
    """W1 (B=16, H=512: 4 units per block, one half-empty group, 4-way split-K) and W2
    (B=64, H=1024: 8 units per block, one group, 8 items, fp32 in double-buffered chunks)."""
    for steps, batch, hidden in ((3, 16, 512), (2, 64, 1024)):
        base = make_inputs("lstm", "zoneout", False, True, torch.float64, steps, batch, hidden)
        with tf32(True):
            _fused_plan_matches(base, dtype, True, True)
            check_against_reference(base, dtype)


@pytest.mark.usefixtures("phased_backward")
def test_fused_cell_norms_take_the_phased_path():
    """Batch and layer norm need statistics across the block's or all blocks' columns before
    the cell: the plan keeps the phased path with FUSED_CELL on, and the results hold."""
    for reg in ("bn_train", "ln"):
        base = make_inputs("lstm", reg, False, True, torch.float64, 4, 9, 40)
        assert not _plan_of(_to(base, torch.bfloat16), False, False)["fused_cell"]
        check_against_reference(base, torch.bfloat16)


@pytest.mark.parametrize("backward", [True, False], ids=["fused_bwd", "phased_bwd"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "phased"])
@pytest.mark.parametrize("precision", ["bf16", "f16", "tf32", "f32"])
@pytest.mark.parametrize("cell", CELLS)
def test_fused_cell_packed_bidirectional_matches_torch_nn(
    cell, precision, fused, backward, monkeypatch
):
    """A two-layer bidirectional layer on a packed batch (uneven lengths) through the public
    module with backend="cuda", against torch.nn (cuDNN) in the same precision and the float64
    module: outputs, final states and every gradient (input, h0, c0, every parameter), with the
    forward's (`fused`) and the backward's (`backward`) cell on the accumulators or phased."""
    monkeypatch.setattr(cuda_backend, "FUSED_CELL", fused)
    monkeypatch.setattr(cuda_backend, "FUSED_CELL_BACKWARD", backward)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}.get(precision, F32)
    name, kw = TORCH_CELLS[cell]
    fused_cls = {"LSTM": fusedrnn.LSTM, "GRU": fusedrnn.GRU, "RNN": fusedrnn.RNN}[name]
    size = dict(input_size=7, hidden_size=300, num_layers=2, bidirectional=True, **kw)
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(**size).to(device="cuda", dtype=dtype)
    ours = fused_cls(**size, backend="cuda").to(device="cuda", dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    truth_module = getattr(torch.nn, name)(**size).to(device="cuda", dtype=torch.float64)
    truth_module.load_state_dict(theirs.state_dict())

    gen = torch.Generator().manual_seed(1)
    steps, batch = 9, 6
    lengths = torch.tensor([9, 4, 1, 7, 9, 2])
    x = torch.randn(steps, batch, 7, generator=gen).to(dtype)
    h0 = (torch.randn(4, batch, 300, generator=gen) * 0.5).to(dtype)
    c0 = (torch.randn(4, batch, 300, generator=gen) * 0.5).to(dtype)
    shapes = [(int(lengths.sum()), 600), (4, batch, 300)]
    if name == "LSTM":
        shapes.append((4, batch, 300))
    weights = [torch.randn(s, generator=gen).to(dtype).double().cuda() for s in shapes]

    def run(module, values_dtype):
        leaf = x.to(device="cuda", dtype=values_dtype).requires_grad_(True)
        packed = pack_padded_sequence(leaf, lengths, enforce_sorted=False)
        h = h0.to(device="cuda", dtype=values_dtype).requires_grad_(True)
        c = c0.to(device="cuda", dtype=values_dtype).requires_grad_(True)
        return run_and_grad(module, packed, (h, c) if name == "LSTM" else h, weights)

    with tf32(precision == "tf32"):
        got = run(ours, dtype)
        baseline = run(theirs, dtype)
        truth = run(truth_module, torch.float64)
    torch.cuda.synchronize()
    assert ours.last_backend == "cuda", ours.last_backend
    assert_by_rule(got, truth, baseline, dtype, what=f"cuda {cell} packed bidirectional")


# ------------------------------------------------------------------ the cell backward on the accumulators
# The backward's fused-cell path (plan_fused_cell_backward; recurrence_backward_kernel<S, true>
# with block_product_tc_each, tensor_core.cuh; step_loop.h product_and_cell_backward /
# fused_cell_backward_step): taken by default where the phased backward runs tensor cores on
# the resident W slice and the step has no norm and no projection; FUSED_CELL_BACKWARD = False
# forces the phased backward. These tests pin the forward to its phased form (the
# `phased_forward` fixture) unless they say otherwise, so a difference is the backward's.
# The backward's rows are the block's hl units (one 16-row M tile up to hl = 16), K = G*H:
# the forward's shapes (hl 1 to 8, 8-way split-K down to none, 1-3 batch blocks, W2's 4200-wide
# fp32 d(a) in double-buffered chunks) plus hidden 2200 at batch 130 (hl 16-17: two M tiles, 16
# tiles per batch block, two per warp, three batch blocks; W_hh resident for the bf16 RNN
# cells, the L2 path and so the phased form for the rest, which the plan check confirms).
FUSED_BWD_SHAPES = [*FUSED_SHAPES, (2, 130, 2200)]


def _fused_backward_plan(base: RecurrenceInputs, dtype, fused: bool, use_tf32: bool) -> dict:
    """The backward's plan: the cell on the accumulators exactly when asked for and the phased
    plan runs tensor cores on the resident W slice."""
    plan = _plan_of(_to(base, dtype), True, use_tf32)
    assert plan["reason"] == "", plan
    assert plan["fused_cell"] == (fused and plan["tensor_cores"] and plan["w_in_smem"]), plan
    return plan


@pytest.mark.usefixtures("phased_forward")
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "phased"])
@pytest.mark.parametrize("precision", ["bf16", "f16", "tf32", "f32"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("reg", FUSED_REGULARIZERS)
@pytest.mark.parametrize("cell", CELLS)
def test_fused_cell_backward_parity_reference(
    cell, reg, reverse, lengths, precision, fused, monkeypatch
):
    """Every cell with zoneout (training draws and eval), recurrent dropout and weight drop,
    both directions, with and without lengths: outputs, final states and every gradient
    against the float64 truth by the rule; fp32 with TF32 off has no tensor cores and so
    always runs the phased backward (the plan says so)."""
    monkeypatch.setattr(cuda_backend, "FUSED_CELL_BACKWARD", fused)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}.get(precision, F32)
    use_tf32 = precision == "tf32"
    base = make_inputs(cell, reg, reverse, lengths, torch.float64, 7, 5, 13)
    with tf32(use_tf32):
        plan = _fused_backward_plan(base, dtype, fused, use_tf32)
        assert plan["tensor_cores"] == (dtype != F32 or use_tf32), plan
        check_against_reference(base, dtype)


def _backward_both_forms(base: RecurrenceInputs, dtype, monkeypatch) -> tuple[dict, dict, dict]:
    """One forward (phased), then the phased and the fused backward on its saved tensors and
    the same output gradients, each checked to launch its own kernel instance: the named
    results (outputs and every gradient) of each, and of the float64 reference."""
    inputs = _to(base, dtype)
    lstm = inputs.config.cell == "lstm"
    steps, batch, _ = inputs.xg.shape
    go, gh, gc = _grads(
        (steps, batch, inputs.config.out_size),
        tuple(inputs.h0.shape),
        (batch, inputs.config.hidden_size) if lstm else None,
        "cuda",
    )
    truth = named_results(*_reference(to_float64(inputs), go, gh, gc))
    out, saved = cuda_backend.forward(inputs)
    results = {}
    for fused in (False, True):
        monkeypatch.setattr(cuda_backend, "FUSED_CELL_BACKWARD", fused)
        grads, names = _launched(
            cuda_backend.backward, inputs, saved, cast(go, dtype), cast(gh, dtype), cast(gc, dtype)
        )
        assert _instance_is_fused(names, "recurrence_backward_kernel") == fused, names
        results[fused] = named_results(out, grads)
    return results[False], results[True], truth


@pytest.mark.usefixtures("phased_forward")
@pytest.mark.parametrize(("steps", "batch", "hidden"), [(7, 5, 13), (3, 65, 300), (4, 16, 512)])
@pytest.mark.parametrize("precision", ["bf16", "f16", "tf32"])
@pytest.mark.parametrize("reg", FUSED_REGULARIZERS)
@pytest.mark.parametrize("cell", CELLS)
def test_fused_cell_backward_matches_phased(
    cell, reg, precision, steps, batch, hidden, monkeypatch
):
    """The fused against the phased backward on the same forward (its saved tensors) and the
    same output gradients, each launching its own kernel instance (the profiler's kernel
    names): every gradient of the fused form within the rule's bound with the phased form as
    the baseline (2x its error against the float64 truth plus the floor), and the phased
    within the rule with the fused as the baseline (neither form is worse than twice the
    other)."""
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}.get(precision, F32)
    base = make_inputs(cell, reg, True, True, torch.float64, steps, batch, hidden)
    with tf32(precision == "tf32"):
        assert _fused_backward_plan(base, dtype, True, precision == "tf32")["fused_cell"]
        phased, fused, truth = _backward_both_forms(base, dtype, monkeypatch)
    assert_by_rule(fused, truth, phased, dtype, what="fused backward (baseline: phased)")
    assert_by_rule(phased, truth, fused, dtype, what="phased backward (baseline: fused)")


@pytest.mark.usefixtures("phased_forward")
@pytest.mark.parametrize(("steps", "batch", "hidden"), FUSED_BWD_SHAPES)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "phased"])
@pytest.mark.parametrize("precision", ["bf16", "tf32"])
@pytest.mark.parametrize("cell", CELLS)
def test_fused_cell_backward_sizes(cell, precision, fused, steps, batch, hidden, monkeypatch):
    """The fused backward's product split at awkward sizes: hl from 1 to 17 rows (one and two
    M tiles), partial batch tiles, split-K from 8 ways down to none, several tiles per warp,
    several batch blocks, many blocks; the plan takes the fused form only on resident tensor
    cores."""
    monkeypatch.setattr(cuda_backend, "FUSED_CELL_BACKWARD", fused)
    dtype = torch.bfloat16 if precision == "bf16" else F32
    for reg in ("zoneout", "recurrent_dropout"):
        base = make_inputs(cell, reg, True, True, torch.float64, steps, batch, hidden)
        with tf32(precision == "tf32"):
            plan = _fused_backward_plan(base, dtype, fused, precision == "tf32")
            if hidden < 2200 or (cell.startswith("rnn") and dtype != F32):
                assert plan["tensor_cores"] and plan["w_in_smem"], plan
            check_against_reference(base, dtype)


@pytest.mark.usefixtures("phased_forward")
@pytest.mark.parametrize("dtype", [torch.bfloat16, F32], ids=["bf16", "tf32"])
def test_fused_cell_backward_w1_w2_w3_shapes(dtype):
    """W1 (B=16, H=512: 4 rows per block, 4-way split-K, all of d(a)'s K = 2048 in one
    stage), W2 (B=64, H=1024: 8 rows, 8 tiles, K = 4096 in double-buffered chunks) and W3
    (B=256: four batch blocks; bf16 only: fp32's W slice streams from L2)."""
    shapes = [(3, 16, 512), (2, 64, 1024)] + ([(2, 256, 1024)] if dtype != F32 else [])
    for steps, batch, hidden in shapes:
        base = make_inputs("lstm", "zoneout", False, True, torch.float64, steps, batch, hidden)
        with tf32(True):
            assert _fused_backward_plan(base, dtype, True, True)["fused_cell"]
            check_against_reference(base, dtype)


def test_fused_cell_backward_norms_and_projection_take_the_phased_path():
    """Batch and layer norm need column or row sums across units before d(a), a projection
    needs every block's d(h~) before the cell: the plan keeps the phased backward with
    FUSED_CELL_BACKWARD on, the phased kernel instance is the one launched, and the results
    hold."""
    assert cuda_backend.FUSED_CELL_BACKWARD
    cases = [("bn_train", 0), ("ln", 0), ("zoneout", 5)]
    for reg, proj in cases:
        base = make_inputs("lstm", reg, False, True, torch.float64, 4, 9, 40, proj=proj)
        inputs = _to(base, torch.bfloat16)
        plan = _plan_of(inputs, True, False)
        assert plan["tensor_cores"] and not plan["fused_cell"], (reg, plan)
        out, saved = cuda_backend.forward(inputs)
        go = torch.randn_like(out.output)
        gh = torch.randn_like(out.h_n)
        _, names = _launched(cuda_backend.backward, inputs, saved, go, gh, None)
        assert not _instance_is_fused(names, "recurrence_backward_kernel"), names
        check_against_reference(base, torch.bfloat16)


@pytest.mark.parametrize("backward", [True, False], ids=["fused_bwd", "phased_bwd"])
@pytest.mark.parametrize("forward", [True, False], ids=["fused_fwd", "phased_fwd"])
@pytest.mark.parametrize("precision", ["bf16", "f16", "tf32", "f32"])
@pytest.mark.parametrize("cell", CELLS)
def test_fused_cell_flags_pick_the_kernel_instances(
    cell, precision, forward, backward, monkeypatch
):
    """FUSED_CELL and FUSED_CELL_BACKWARD each pick their kernel's instance (the profiler's
    kernel names: recurrence_*_kernel<S, true> or <S, false>) exactly where the plan says so,
    independently of each other, and the results hold; both on is the shipping default."""
    assert cuda_backend.FUSED_CELL and cuda_backend.FUSED_CELL_BACKWARD  # the defaults
    monkeypatch.setattr(cuda_backend, "FUSED_CELL", forward)
    monkeypatch.setattr(cuda_backend, "FUSED_CELL_BACKWARD", backward)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}.get(precision, F32)
    use_tf32 = precision == "tf32"
    tensor_cores = dtype != F32 or use_tf32
    base = make_inputs(cell, "zoneout", True, True, torch.float64, 5, 9, 300)
    with tf32(use_tf32):
        inputs = _to(base, dtype)
        assert _plan_of(inputs, False, use_tf32)["fused_cell"] == (forward and tensor_cores)
        assert _plan_of(inputs, True, use_tf32)["fused_cell"] == (backward and tensor_cores)
        _, names = _launched(check_against_reference, base, dtype)
    assert _instance_is_fused(names, "recurrence_forward_kernel") == (forward and tensor_cores)
    assert _instance_is_fused(names, "recurrence_backward_kernel") == (backward and tensor_cores)


# ------------------------------------------------------------------ the weight-drop pass
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_weight_drop_kernel_is_the_host_pass(dtype):
    """weight_drop_kernel (weight_drop.cu) draws the host pass's mask at the same Philox
    coordinates: out of place (the effective W_hh) and in place (dW_hh), dst = src * m_W with
    m_W in {0, 1 / (1 - p)} rounded once to ``dtype``, equal bit for bit to the host pass's
    float32 mask (host_weight_drop on ones) applied the same way."""
    C = native.native()
    inputs = _to(make_inputs("gru", "weight_drop", False, False, torch.float64, 2, 3, 37), dtype)
    assert inputs.config.uses_weight_drop(inputs.training)
    stream = torch.cuda.current_stream().cuda_stream
    src = inputs.w_hh.contiguous()
    ones = torch.ones(src.shape, dtype=F32)
    mask = torch.empty_like(ones)
    C.host_weight_drop(native.weight_drop_params(inputs, ones, mask))
    assert 0 < int((mask == 0).sum()) < mask.numel()
    expected = (src.float().cpu() * mask).to(dtype)
    out = torch.full_like(src, float("nan"))
    C.cuda_weight_drop(native.weight_drop_params(inputs, src, out), stream)
    in_place = src.clone()
    C.cuda_weight_drop(native.weight_drop_params(inputs, in_place, in_place), stream)
    torch.cuda.synchronize()
    assert torch.equal(out.cpu(), expected)
    assert torch.equal(in_place.cpu(), expected)


# ------------------------------------------------------------------ LSTM projections
# (steps, batch, hidden, proj): P = 1; primes; P > the grid's blocks and P < them (blocks that
# own no h unit); P close to H (H - 1); H > the SM count (several cell units per block).
PROJ_SHAPES = [(5, 7, 131, 1), (6, 9, 67, 13), (4, 33, 257, 256), (3, 5, 300, 7), (4, 16, 512, 131)]


@pytest.mark.parametrize(("steps", "batch", "hidden", "proj"), PROJ_SHAPES)
@pytest.mark.parametrize("reg", ["none", "all", "all_ln"])
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_projection_parity_reference(dtype, reg, steps, batch, hidden, proj):
    """proj_size: h = W_hr (o tanh(N_c(c~))) over P units, every output, final state and
    gradient (W_hr's included) against the float64 reference by the rule; bf16 / fp16 run
    both the recurrent product (K = P) and the projection on tensor cores, float32 exactly
    (TF32 off)."""
    base = make_inputs("lstm", reg, True, True, torch.float64, steps, batch, hidden, proj=proj)
    for backward in (False, True):
        plan = _plan_of(_to(base, dtype), backward, False)
        assert plan["reason"] == "" and plan["tensor_cores"] == (dtype != F32), plan
        assert plan["ps"] == -(-proj // plan["grid"]), plan
    check_against_reference(base, dtype)


@pytest.mark.parametrize(("steps", "batch", "hidden", "proj"), PROJ_SHAPES[2:])
def test_projection_tf32(steps, batch, hidden, proj):
    """float32 under TF32: both products on mma.sync m16n8k8 .tf32 (the projection's operand
    staged in chunks: K = H there against the recurrent product's K = P)."""
    base = make_inputs(
        "lstm", "all_ln", False, True, torch.float64, steps, batch, hidden, proj=proj
    )
    assert _plan_of(_to(base, F32), False, True)["tensor_cores"]
    with tf32(True):
        check_against_reference(base, F32)


def test_projection_w_from_l2():
    """The backward of LSTM fp32 B=200 H=1024 P=1023 does not fit W_hh's and W_hr's slices
    beside its per-row arrays: both stream from L2 (FMA product and projection), while the
    forward keeps them in shared memory."""
    base = make_inputs("lstm", "all", False, True, torch.float64, 2, 200, 1024, proj=1023)
    forward = _plan_of(_to(base, F32), False, False)
    backward = _plan_of(_to(base, F32), True, False)
    assert forward["reason"] == "" and forward["w_in_smem"], forward
    assert backward["reason"] == "" and not backward["w_in_smem"], backward
    check_against_reference(base, F32)


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize(
    ("steps", "batch", "inp", "hidden", "proj"), [(16, 8, 32, 64, 17), (7, 3, 5, 129, 1)]
)
def test_projection_parity_cudnn(dtype, steps, batch, inp, hidden, proj):
    """Output, h_n, c_n and dx / dW_hh / dW_hr against torch.nn.LSTM(proj_size=...) in the
    same dtype (the float64 module is the truth)."""
    torch.manual_seed(0)
    module64 = torch.nn.LSTM(inp, hidden, proj_size=proj).double().cuda()
    module = torch.nn.LSTM(inp, hidden, proj_size=proj).to(device="cuda", dtype=dtype)
    module.load_state_dict(module64.state_dict())
    x64 = torch.randn(steps, batch, inp, dtype=torch.float64, device="cuda")
    h64 = torch.randn(batch, proj, dtype=torch.float64, device="cuda") * 0.5
    c64 = torch.randn(batch, hidden, dtype=torch.float64, device="cuda") * 0.5

    def loss_of(out, hn, cn):
        return out.double().sin().sum() + hn.double().cos().sum() + cn.double().square().sum()

    def run_torch(mod, x, h, c):
        x = x.detach().requires_grad_(True)
        out, (hn, cn) = mod(x, (h[None], c[None]))
        loss_of(out, hn[0], cn[0]).backward()
        return out, hn[0], cn[0], x.grad, mod.weight_hh_l0.grad, mod.weight_hr_l0.grad

    truth = run_torch(module64, x64, h64, c64)
    same = run_torch(module, x64.to(dtype), h64.to(dtype), c64.to(dtype))

    from fusedrnn.backends.base import RecurrenceConfig

    w_ih, b_ih = module.weight_ih_l0.detach(), module.bias_ih_l0.detach()
    xg = (x64.to(dtype) @ w_ih.t() + b_ih).detach()
    inputs = RecurrenceInputs(
        RecurrenceConfig(cell="lstm", hidden_size=hidden, proj_size=proj),
        xg,
        h64.to(dtype),
        c64.to(dtype),
        module.weight_hh_l0.detach(),
        module.bias_hh_l0.detach(),
        module.weight_hr_l0.detach(),
        None,
    )
    out, saved = cuda_backend.forward(inputs)
    go = out.output.double().cos().to(dtype)
    gh = (-out.h_n.double().sin()).to(dtype)
    gc = (2 * out.c_n.double()).to(dtype)
    grads = cuda_backend.backward(inputs, saved, go, gh, gc)
    dx = grads["xg"] @ w_ih
    names = ("output", "h_n", "c_n", "dx", "dW_hh", "dW_hr")
    mine = (out.output, out.h_n, out.c_n, dx, grads["w_hh"], grads["w_hr"])
    assert_by_rule(
        dict(zip(names, mine)), dict(zip(names, truth)), dict(zip(names, same)), dtype, what="cuda"
    )


def test_projection_layer_bidirectional_multi_layer():
    """fusedrnn.LSTM(proj_size, bidirectional, 2 layers) on the cuda backend against
    torch.nn.LSTM with the same weights: outputs, (h_n, c_n) and every parameter's gradient,
    by the rule (float64 module the truth, float32 module the baseline; TF32 off)."""
    import fusedrnn

    torch.manual_seed(1)
    kw = dict(num_layers=2, bidirectional=True, proj_size=5)
    module64 = torch.nn.LSTM(7, 23, **kw).double().cuda()
    module = torch.nn.LSTM(7, 23, **kw).cuda()
    module.load_state_dict(module64.state_dict())
    fused = fusedrnn.LSTM(7, 23, backend="cuda", **kw).cuda()
    fused.load_state_dict(module.state_dict())
    x64 = torch.randn(6, 4, 7, dtype=torch.float64, device="cuda")

    def run(mod, x):
        x = x.detach().requires_grad_(True)
        out, (hn, cn) = mod(x)
        (out.double().sin().sum() + hn.double().cos().sum() + cn.double().square().sum()).backward()
        results = {"output": out, "h_n": hn, "c_n": cn, "dx": x.grad}
        results.update({"d" + k: p.grad for k, p in mod.named_parameters()})
        return results

    truth, same, mine = run(module64, x64), run(module, x64.float()), run(fused, x64.float())
    assert fused.last_backend == "cuda", fused.last_backend
    assert_by_rule(mine, truth, same, F32, what="cuda")
