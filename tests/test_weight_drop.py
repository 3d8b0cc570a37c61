"""Weight drop (DropConnect on W_hh, issue 15) on every backend that runs here.

The independent implementation is torch.nn itself, run with ``W_hh * m / (1 - p)`` through
``torch.func.functional_call`` (so autograd, not fusedrnn, gives ``dW_hh``), where the keep
mask ``m`` is rebuilt from philox.py's documented draw (docs/design.md §3.2). The draw itself
is checked against Random123's block function with the layout spelled out here, and the C++
and Triton implementations of the draw against philox.py bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from helpers import FLOAT64_TOLERANCE, assert_by_rule
from torch import nn

import fusedrnn
from fusedrnn import philox, reference_loop
from fusedrnn.backends import native

AVAILABLE = fusedrnn.available_backends()
CPU_BACKENDS = [b for b in ("reference", "host", "triton") if AVAILABLE.get(b) is None]
CELLS = {"lstm": (fusedrnn.LSTM, nn.LSTM, {}), "gru": (fusedrnn.GRU, nn.GRU, {})}
CELLS["rnn_tanh"] = (fusedrnn.RNN, nn.RNN, {"nonlinearity": "tanh"})
CELLS["rnn_relu"] = (fusedrnn.RNN, nn.RNN, {"nonlinearity": "relu"})


def _need(backend: str) -> None:
    if AVAILABLE.get(backend) is not None:
        pytest.skip(f"{backend}: {AVAILABLE.get(backend)}")


def _keep_mask(seed: int, layer: int, direction: int, rows: int, cols: int, p: float):
    """The keep mask (1 kept, 0 dropped) from philox.py's documented draw."""
    uniform = philox.rand(
        philox.weight_drop_key(seed),
        philox.mask_offset(
            philox.STREAM_WEIGHT_DROP_HH,
            layer,
            direction,
            0,
            torch.arange(rows)[:, None],
            torch.arange(cols)[None, :],
        ),
    )
    return (uniform >= p).to(torch.float64)


def _seed_of_next_call(generator_seed: int) -> int:
    """The seed a fusedrnn training call draws after torch.manual_seed(generator_seed)."""
    torch.manual_seed(generator_seed)
    return int(philox.draw_seed())


# ------------------------------------------------------------------------------- the draw
def test_draw_is_random123_with_the_documented_key_and_layout():
    """Key = seed XOR 0x9E3779B97F4A7C15; counter = (lo, hi) of (ld << 56 | row << 20 | col)."""
    seed, layer, direction = 0x0123456789ABCDEF, 3, 1
    rows = torch.tensor([0, 1, 5, 2**30 + 7, 2**36 - 1])
    cols = torch.tensor([0, 3, 2**20 - 1, 17, 1])
    got = philox.weight_drop_uniform(seed, layer, direction, 2, 3)  # grid form
    key = seed ^ 0x9E3779B97F4A7C15
    for r in range(2):
        for c in range(3):
            offset = ((2 * layer + direction) << 56) | (r << 20) | c
            word = philox.philox4x32_10_block(
                (offset & 0xFFFFFFFF, offset >> 32, 0, 0), (key & 0xFFFFFFFF, key >> 32)
            )[0]
            assert got[r, c] == philox.uniform_from_uint32(torch.as_tensor(word))
    # Large rows and columns stay in their fields (no carry into the layer field).
    offsets = philox.weight_drop_base_offset(layer, direction) + (rows << 20) + cols
    assert ((offsets >> 56) & 63).eq(2 * layer + direction).all()
    with pytest.raises(ValueError, match="weight drop supports weights of at most"):
        philox.weight_drop_uniform(seed, 0, 0, 1, philox.MAX_UNITS + 1)


def test_derived_key_separates_weight_masks_from_the_calls_other_masks():
    """Without the derived key, W_hh's mask row b would be recurrent dropout's row b (the
    same offsets); and its key is never a drawn seed (top bit set)."""
    seed = _seed_of_next_call(3)
    weight = philox.weight_drop_uniform(seed, 0, 0, 8, 64)
    dropout = philox.uniform_mask(seed, philox.STREAM_WEIGHT_DROP_HH, 0, 0, None, 8, 64)
    assert not torch.equal(weight, dropout)
    assert philox.weight_drop_key(seed) < 0  # int64 with the top bit set; seeds are >= 0
    tensor_key = philox.weight_drop_key(torch.tensor(seed))
    assert int(tensor_key) == philox.weight_drop_key(seed)


def test_native_draw_is_bit_identical_to_philox_py():
    _need("host")
    C = native.native()
    seed, layer, direction, rows, cols = _seed_of_next_call(5), 2, 1, 37, 19
    expected = philox.weight_drop_uniform(seed, layer, direction, rows, cols)
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    got = C.mask_uniform(
        philox.weight_drop_key(seed),
        philox.weight_drop_base_offset(layer, direction),
        [0] * r.numel(),
        r.flatten().tolist(),
        c.flatten().tolist(),
    )
    assert torch.equal(torch.tensor(got).reshape(rows, cols), expected)


def _inputs_for_pass(seed, layer, direction, rows, cols, p, dtype):
    from fusedrnn.backends.base import RecurrenceConfig, RecurrenceInputs

    zeros = torch.zeros(1, 1, rows, dtype=dtype)
    return RecurrenceInputs(
        config=RecurrenceConfig("rnn_tanh", rows, weight_drop=p),
        xg=zeros,
        h0=torch.zeros(1, cols, dtype=dtype),
        c0=None,
        w_hh=torch.zeros(rows, cols, dtype=dtype),
        b_hh=None,
        w_hr=None,
        lengths=None,
        training=True,
        seed=seed,
        layer=layer,
        direction=direction,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_host_pass_multiplies_by_the_keep_scaled_mask(dtype):
    """_C.host_weight_drop (what masks dW_hh) is src * m / (1 - p), in place too."""
    _need("host")
    seed, p, rows, cols = _seed_of_next_call(6), 0.3, 33, 7
    inputs = _inputs_for_pass(seed, 1, 0, rows, cols, p, dtype)
    src = torch.randn(rows, cols, dtype=dtype)
    dst = torch.full_like(src, float("nan"))
    native.native().host_weight_drop(native.weight_drop_params(inputs, src, dst))
    expected = src * reference_loop.weight_drop_mask(seed, 1, 0, rows, cols, p, dtype, "cpu")
    assert torch.equal(dst, expected)
    native.native().host_weight_drop(native.weight_drop_params(inputs, src, src))
    assert torch.equal(src, expected)


@pytest.mark.interpreter
def test_triton_pass_is_bit_identical_to_philox_py():
    """kernels/weight_drop.py (through primitives.weight_drop_scale) on a weight of ones."""
    _need("triton")
    from fusedrnn.backends import triton as triton_backend

    seed, p, rows, cols = _seed_of_next_call(7), 0.45, 29, 41
    inputs = _inputs_for_pass(seed, 4, 1, rows, cols, p, torch.float32)
    grad = torch.ones(rows, cols)
    triton_backend._mask_weight_grad(inputs, grad)
    keep = philox.weight_drop_uniform(seed, 4, 1, rows, cols) >= p
    assert torch.equal(grad, keep.float() * torch.tensor(1 / (1 - p), dtype=torch.float32))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropped_fraction(p):
    """The fraction dropped is p (5 sigma), the same element is rarely dropped in two masks
    (layers, directions and calls are independent: overlap p^2)."""
    rows, cols = 512, 256
    n = rows * cols
    sigma = (p * (1 - p) / n) ** 0.5
    seeds = [_seed_of_next_call(s) for s in (0, 1)]
    masks = [
        philox.weight_drop_uniform(seed, layer, direction, rows, cols) < p
        for seed, layer, direction in ((seeds[0], 0, 0), (seeds[0], 0, 1), (seeds[0], 1, 0))
    ]
    masks.append(philox.weight_drop_uniform(seeds[1], 0, 0, rows, cols) < p)
    for dropped in masks:
        assert abs(dropped.double().mean().item() - p) < 5 * sigma
    for other in masks[1:]:
        both = (masks[0] & other).double().mean().item()
        assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / n) ** 0.5


# ----------------------------------------------------------------- layers against torch.nn
def _torch_reference(cell, torch_module, x, hx, seed, p, dtype):
    """torch.nn with every W_hh replaced by W_hh * m / (1 - p); returns results and grads."""
    module = torch_module.to(dtype)
    params = dict(module.named_parameters())
    x = x.to(dtype).requires_grad_()
    hx = tuple(h.to(dtype).requires_grad_() for h in hx)
    swapped = {}
    for name, value in params.items():
        if name.startswith("weight_hh_l"):
            layer = int(name.removeprefix("weight_hh_l").removesuffix("_reverse"))
            direction = 1 if name.endswith("_reverse") else 0
            keep = _keep_mask(seed, layer, direction, *value.shape, p).to(value)
            swapped[name] = value * keep / (1 - p)
        else:
            swapped[name] = value
    out, hidden = torch.func.functional_call(module, swapped, (x, hx if cell == "lstm" else hx[0]))
    return _results_and_grads(out, hidden, x, hx, module)


def _results_and_grads(out, hidden, x, hx, module):
    states = list(hidden) if isinstance(hidden, tuple) else [hidden]
    results = {"output": out, "h_n": states[0]}
    if len(states) > 1:
        results["c_n"] = states[1]
    gen = torch.Generator().manual_seed(11)
    loss = sum((r * torch.randn(r.shape, generator=gen).to(r)).sum() for r in results.values())
    names = ["x", *[f"hx{i}" for i in range(len(hx))], *(n for n, _ in module.named_parameters())]
    leaves = [x, *hx, *module.parameters()]
    grads = torch.autograd.grad(loss, leaves)
    results = {k: v.detach() for k, v in results.items()}
    results.update({f"grad_{n}": g for n, g in zip(names, grads)})
    return results


def _fusedrnn_run(cell, module, x, hx, generator_seed, dtype):
    module = module.to(dtype)
    x = x.to(dtype).requires_grad_()
    hx = tuple(h.to(dtype).requires_grad_() for h in hx)
    torch.manual_seed(generator_seed)
    out, hidden = module(x, hx if cell == "lstm" else hx[0])
    return _results_and_grads(out, hidden, x, hx, module)


def _pair(cell, backend, p, input_size, hidden, layers, bidirectional):
    fused_cls, torch_cls, extra = CELLS[cell]
    torch.manual_seed(0)
    reference = torch_cls(input_size, hidden, layers, bidirectional=bidirectional, **extra)
    fused = fused_cls(
        input_size,
        hidden,
        layers,
        bidirectional=bidirectional,
        weight_drop=p,
        backend=backend,
        **extra,
    )
    fused.load_state_dict(reference.state_dict())
    return fused, reference


def _hx(cell, layers, dirs, batch, hidden):
    shape = (layers * dirs, batch, hidden)
    return (torch.randn(shape), torch.randn(shape)) if cell == "lstm" else (torch.randn(shape),)


# (cell, batch, hidden, steps, layers, bidirectional): awkward sizes (1, primes, 2^k +- 1).
SHAPES = [
    ("lstm", 3, 5, 4, 2, True),
    ("gru", 1, 7, 3, 1, True),
    ("rnn_tanh", 2, 17, 3, 2, False),
    ("rnn_relu", 5, 1, 2, 1, False),
    ("lstm", 1, 15, 5, 1, False),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(("cell", "batch", "hidden", "steps", "layers", "bidir"), SHAPES)
def test_matches_torch_with_masked_weights(backend, cell, batch, hidden, steps, layers, bidir):
    """float32 by the 2x rule against torch.nn float32, truth torch.nn float64; every
    output, state and gradient (dW_hh included)."""
    p = 0.35
    input_size = 3
    fused, reference = _pair(cell, backend, p, input_size, hidden, layers, bidir)
    torch.manual_seed(1)
    x = torch.randn(steps, batch, input_size)
    hx = _hx(cell, layers, 2 if bidir else 1, batch, hidden)
    seed = _seed_of_next_call(2)
    results = _fusedrnn_run(cell, fused, x, hx, 2, torch.float32)
    baseline = _torch_reference(cell, reference, x, hx, seed, p, torch.float32)
    truth = _torch_reference(cell, reference, x, hx, seed, p, torch.float64)
    assert fused.last_backend == backend
    assert_by_rule(results, truth, baseline, torch.float32, f"{backend} {cell}")


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_float64_matches_torch_with_masked_weights(backend, cell):
    p = 0.5
    fused, reference = _pair(cell, backend, p, 4, 6, 2, True)
    torch.manual_seed(1)
    x = torch.randn(5, 3, 4)
    hx = _hx(cell, 2, 2, 3, 6)
    seed = _seed_of_next_call(4)
    results = _fusedrnn_run(cell, fused, x, hx, 4, torch.float64)
    truth = _torch_reference(cell, reference, x, hx, seed, p, torch.float64)
    for name, want in truth.items():
        assert (results[name] - want).abs().max() < FLOAT64_TOLERANCE, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_weight_grad_is_exactly_zero_where_dropped(backend, dtype):
    p = 0.4
    fused, _ = _pair("lstm", backend, p, 3, 6, 1, True)
    fused = fused.to(dtype)
    x = torch.randn(4, 2, 3, dtype=dtype)
    torch.manual_seed(8)
    seed = int(philox.draw_seed())
    torch.manual_seed(8)
    fused(x)[0].square().sum().backward()
    for direction, suffix in enumerate(["", "_reverse"]):
        grad = getattr(fused, "weight_hh_l0" + suffix).grad
        keep = _keep_mask(seed, 0, direction, *grad.shape, p).bool()
        assert (grad[~keep] == 0).all(), "a dropped entry has a gradient"
        assert (grad[keep] != 0).float().mean() > 0.9, "kept entries lost their gradient"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_eval_is_the_plain_layer(backend, cell):
    """Evaluation multiplies by nothing: bit-identical to the same backend without the option."""
    fused, _ = _pair(cell, backend, 0.6, 3, 5, 1, False)
    plain, _ = _pair(cell, backend, 0.0, 3, 5, 1, False)
    plain.load_state_dict(fused.state_dict())
    fused.eval()
    plain.eval()
    x = torch.randn(4, 2, 3)
    assert torch.equal(fused(x)[0], plain(x)[0])


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_gradcheck(backend, cell):
    """float64 gradcheck of the layer in training; the mask seed is fixed per evaluation."""
    fused_cls, _, extra = CELLS[cell]
    torch.manual_seed(0)
    fused = fused_cls(2, 3, weight_drop=0.3, backend=backend, dtype=torch.float64, **extra)
    names = [n for n, _ in fused.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)

    def run(x, *params):
        torch.manual_seed(9)
        out, hidden = torch.func.functional_call(fused, dict(zip(names, params)), (x,))
        return out, *(hidden if isinstance(hidden, tuple) else (hidden,))

    params = [p.detach().requires_grad_() for p in fused.parameters()]
    assert torch.autograd.gradcheck(run, (x, *params))


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
def test_double_backward_and_torch_func(backend):
    """create_graph (the reference loop recomputes with the same seed, so the same mask) and
    torch.func.grad (the reference loop under the transform) see the same weight drop."""
    torch.manual_seed(0)
    fused = fusedrnn.GRU(2, 3, weight_drop=0.3, backend=backend, dtype=torch.float64)
    names = [n for n, _ in fused.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)

    def run(x, *params):
        torch.manual_seed(5)
        return torch.func.functional_call(fused, dict(zip(names, params)), (x,))[0]

    params = [p.detach().requires_grad_() for p in fused.parameters()]
    assert torch.autograd.gradgradcheck(run, (x, *params))

    def loss(w_hh):
        torch.manual_seed(5)
        return torch.func.functional_call(fused, {"weight_hh_l0": w_hh}, (x.detach(),))[0].sum()

    func_grad = torch.func.grad(loss)(fused.weight_hh_l0.detach())
    torch.manual_seed(5)
    fused(x.detach())[0].sum().backward()
    assert torch.allclose(func_grad, fused.weight_hh_l0.grad, atol=FLOAT64_TOLERANCE)
    seed = _seed_of_next_call(5)
    keep = _keep_mask(seed, 0, 0, *func_grad.shape, 0.3).bool()
    assert (func_grad[~keep] == 0).all() and (~keep).any()


# ------------------------------------------------------------------------------------ API
@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), True, "0.5", 2])
def test_bad_probability_is_rejected(bad):
    for cls in (fusedrnn.LSTM, fusedrnn.GRU, fusedrnn.RNN):
        with pytest.raises(ValueError, match=r"weight_drop must be a probability in \[0, 1\)"):
            cls(3, 4, weight_drop=bad)


def test_keyword_only_and_in_repr():
    with pytest.raises(TypeError):
        fusedrnn.LSTM(3, 4, 1, True, False, 0.0, False, 0, None, None, 0.5)
    assert "weight_drop=0.25" in repr(fusedrnn.GRU(3, 4, weight_drop=0.25))


def test_convert_applies_weight_drop():
    _need("host")
    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(3, 5))
    original = nn.LSTM(3, 5)
    original.load_state_dict(model[0].state_dict())
    fusedrnn.convert(model, weight_drop=0.3, backend="host")
    assert isinstance(model[0], fusedrnn.LSTM) and model[0].weight_drop == 0.3
    x = torch.randn(4, 2, 3)
    hx = _hx("lstm", 1, 1, 2, 5)
    seed = _seed_of_next_call(12)
    results = _fusedrnn_run("lstm", model[0], x, hx, 12, torch.float64)
    truth = _torch_reference("lstm", original, x, hx, seed, 0.3, torch.float64)
    for name in ("output", "h_n", "c_n", "grad_weight_hh_l0"):
        assert (results[name] - truth[name]).abs().max() < FLOAT64_TOLERANCE, name


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
def test_fullgraph_compile_matches_eager(backend):
    torch.manual_seed(0)
    module = fusedrnn.LSTM(3, 4, num_layers=2, weight_drop=0.3, backend=backend)
    x = torch.randn(5, 2, 3)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")

    def step(run):
        torch.manual_seed(3)
        out = run(x)[0]
        out.square().sum().backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters()}
        module.zero_grad()
        return out.detach(), grads

    eager_out, eager_grads = step(module)
    compiled_out, compiled_grads = step(compiled)
    assert torch.allclose(compiled_out, eager_out, atol=1e-6)
    for name, grad in eager_grads.items():
        assert torch.allclose(compiled_grads[name], grad, atol=1e-6), name


# ------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_cuda_pass_is_the_keep_scaled_mask(dtype):
    _need("cuda")
    seed, p, rows, cols = _seed_of_next_call(13), 0.3, 1031, 257
    inputs = _inputs_for_pass(seed, 2, 1, rows, cols, p, dtype)
    src = torch.randn(rows, cols, device="cuda").to(dtype)
    dst = torch.empty_like(src)
    stream = torch.cuda.current_stream().cuda_stream
    native.native().cuda_weight_drop(native.weight_drop_params(inputs, src, dst), stream)
    keep = (philox.weight_drop_uniform(seed, 2, 1, rows, cols, "cuda") >= p).float()
    expected = (src.float() * keep * torch.tensor(1 / (1 - p), dtype=torch.float32)).to(dtype)
    assert torch.equal(dst, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_gpu_matches_torch_with_masked_weights(backend, cell):
    _need(backend)
    p = 0.35
    fused, reference = _pair(cell, backend, p, 8, 32, 2, True)
    fused, reference = fused.cuda(), reference.cuda()
    torch.manual_seed(1)
    x = torch.randn(6, 16, 8, device="cuda")
    hx = tuple(h.cuda() for h in _hx(cell, 2, 2, 16, 32))
    seed = _seed_of_next_call(2)
    results = _fusedrnn_run(cell, fused, x, hx, 2, torch.float32)
    baseline = _torch_reference(cell, reference, x, hx, seed, p, torch.float32)
    truth = _torch_reference(cell, reference, x, hx, seed, p, torch.float64)
    assert fused.last_backend == backend
    assert_by_rule(results, truth, baseline, torch.float32, f"gpu {backend} {cell}")
