"""The ``host`` backend (fusedrnn._C's CPU build) against the reference oracle.

Same masks (the Philox seed is shared), every cell x regulariser x reverse x lengths, forward
and every gradient, float32 and float64, by the numerics rule (helpers.assert_by_rule). Outputs
are poisoned with NaN before every launch, so an element the native code does not write fails.
Also: Philox bit-identity of csrc/include/fusedrnn/philox.cuh (through _C) with philox.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
import torch
from helpers import BASELINE_SAMPLES, assert_by_rule, sample_baseline

from fusedrnn import philox
from fusedrnn.backends import host, native
from fusedrnn.backends import reference as reference_backend
from fusedrnn.backends.base import RecurrenceConfig, RecurrenceInputs

_reason = host.availability()
pytestmark = pytest.mark.skipif(_reason is not None, reason=str(_reason))

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
REGULARIZERS = (
    "none",
    "recurrent_dropout",
    "zoneout",
    "zoneout_eval",
    "bn_train",
    "bn_eval",
    "ln",
    "all",
    "all_ln",
    "weight_drop",  # with recurrent dropout: both masks meet at W_hh (m_h h_{t-1})
)


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(native, "POISON_OUTPUTS", True)


def make_inputs(
    cell: str,
    reg: str,
    reverse: bool,
    with_lengths: bool,
    dtype: torch.dtype,
    steps: int = 7,
    batch: int = 5,
    hidden: int = 13,
    bias: bool = True,
    seed: int = 0,
    proj: int = 0,
) -> RecurrenceInputs:
    """One layer-direction's inputs; ``proj`` > 0 (lstm): a projection to ``proj`` units."""
    gen = torch.Generator().manual_seed(seed + 1000 * len(reg) + len(cell))
    training = reg not in ("bn_eval", "zoneout_eval", "none")
    dropout = 0.3 if reg in ("recurrent_dropout", "all", "all_ln", "weight_drop") else 0.0
    zone = 0.25 if reg in ("zoneout", "zoneout_eval", "all", "all_ln") else 0.0
    norm = {"bn_train": "batch", "bn_eval": "batch", "ln": "layer", "all": "batch"}.get(reg, "none")
    if reg == "all_ln":
        norm = "layer"
    cfg = RecurrenceConfig(
        cell=cell,
        hidden_size=hidden,
        recurrent_dropout=dropout,
        zoneout_cell=zone if cell == "lstm" else 0.0,
        zoneout_hidden=zone,
        norm=norm,
        proj_size=proj,
        weight_drop=0.4 if reg == "weight_drop" else 0.0,
    )
    n, out_size = cfg.gate_size, cfg.out_size

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    lengths = None
    if with_lengths:
        lengths = torch.randint(0, steps + 1, (batch,), generator=gen)
        lengths[0] = steps  # at least one full row
    steps_buffers = max(1, steps - 2)  # fewer running buffers than steps: later ones reuse
    kw = {}
    if norm != "none":
        kw["norm_weight_hh"] = 0.1 + rnd(n, scale=0.5).abs()
        if cell == "lstm":
            kw["norm_weight_c"] = 0.1 + rnd(hidden, scale=0.5).abs()
            kw["norm_bias_c"] = rnd(hidden, scale=0.1)
    if norm == "batch":
        kw["running_mean_hh"] = rnd(steps_buffers, n, scale=0.1)
        kw["running_var_hh"] = 0.5 + rnd(steps_buffers, n).abs()
        if cell == "lstm":
            kw["running_mean_c"] = rnd(steps_buffers, hidden, scale=0.1)
            kw["running_var_c"] = 0.5 + rnd(steps_buffers, hidden).abs()
    return RecurrenceInputs(
        config=cfg,
        xg=rnd(steps, batch, n),
        h0=rnd(batch, out_size, scale=0.5),
        c0=rnd(batch, hidden, scale=0.5) if cell == "lstm" else None,
        w_hh=rnd(n, out_size, scale=out_size**-0.5),
        b_hh=rnd(n, scale=0.1) if bias else None,
        w_hr=rnd(out_size, hidden, scale=hidden**-0.5) if proj else None,
        lengths=lengths,
        reverse=reverse,
        training=training,
        seed=0x1234_5678_9ABC + seed,
        layer=1,
        direction=int(reverse),
        **kw,
    )


def map_floating(inputs: RecurrenceInputs, fn) -> RecurrenceInputs:
    """``inputs`` with ``fn`` applied to every floating-point tensor."""
    changes = {}
    for f in dataclasses.fields(inputs):
        v = getattr(inputs, f.name)
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            changes[f.name] = fn(v)
    return inputs.replace(**changes)


def to_float64(inputs: RecurrenceInputs) -> RecurrenceInputs:
    return map_floating(inputs, torch.Tensor.double)


def cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _reference(inputs, grad_output, grad_h_n, grad_c_n):
    out, _ = reference_backend.forward(inputs)
    if grad_output is None:
        return out, None
    dtype = inputs.xg.dtype
    grads = reference_backend.backward(
        inputs, (), cast(grad_output, dtype), cast(grad_h_n, dtype), cast(grad_c_n, dtype)
    )
    return out, grads


OUTPUT_FIELDS = ("output", "h_n", "c_n", "batch_mean_hh", "batch_var_hh")
OUTPUT_FIELDS += ("batch_mean_c", "batch_var_c")


def named_results(outputs, grads) -> dict[str, torch.Tensor | None]:
    """Everything compared: the outputs, the batch statistics and every gradient."""
    named = {name: getattr(outputs, name) for name in OUTPUT_FIELDS}
    if grads is not None:
        named.update({"d" + field: grads[field] for field in RecurrenceInputs.GRAD_FIELDS})
    return named


def compare(inputs: RecurrenceInputs, check_grads: bool = True) -> None:
    """Host vs the float64 reference on the same inputs (the truth), by the rule of
    docs/design.md §3.3 (helpers.assert_by_rule): the baseline is the reference
    backend in the inputs' dtype (torch.nn has no regularized recurrence)."""
    dtype = inputs.xg.dtype
    gen = torch.Generator().manual_seed(7)
    steps, batch, _ = inputs.xg.shape
    shape = (batch, inputs.config.out_size)  # h (P units)
    grad_output = grad_h_n = grad_c_n = None
    if check_grads:
        grad_output = torch.randn((steps, *shape), generator=gen, dtype=torch.float64)
        grad_h_n = torch.randn(shape, generator=gen, dtype=torch.float64)
        if inputs.config.cell == "lstm":
            cell_shape = (batch, inputs.config.hidden_size)
            grad_c_n = torch.randn(cell_shape, generator=gen, dtype=torch.float64)

    def solve(perturb) -> tuple[dict, dict]:
        problem = map_floating(inputs, perturb)
        truth = named_results(*_reference(to_float64(problem), grad_output, grad_h_n, grad_c_n))
        if dtype == torch.float64:
            return truth, truth
        return named_results(*_reference(problem, grad_output, grad_h_n, grad_c_n)), truth

    # Normalised recurrences are ill conditioned (the baseline's error is a random draw): a
    # sample of instances. float64 (its own truth) and plain recurrences: one instance.
    normalised = inputs.config.norm != "none" and dtype != torch.float64
    baseline = sample_baseline(solve, BASELINE_SAMPLES if normalised else 1)
    truth = baseline[0][1]

    out, saved = host.forward(inputs)
    assert all(isinstance(t, torch.Tensor) for t in saved)
    grads = None
    if check_grads:
        grads = host.backward(
            inputs, saved, cast(grad_output, dtype), cast(grad_h_n, dtype), cast(grad_c_n, dtype)
        )
        assert set(grads) == set(RecurrenceInputs.GRAD_FIELDS)
    assert_by_rule(named_results(out, grads), truth, baseline, dtype, what="host")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("reg", REGULARIZERS)
@pytest.mark.parametrize("cell", CELLS)
def test_parity(cell, reg, reverse, lengths, dtype):
    compare(make_inputs(cell, reg, reverse, lengths, dtype))


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("reg", ["bn_train", "all", "ln", "all_ln"])
@pytest.mark.parametrize("cell", CELLS)
def test_norm_float32_few_active_rows(cell, reg, reverse, seed):
    """Issue 10's case: B = 3 with lengths [6, 4, 1], so batch norm runs over 3, 2 and 1
    active rows (variance near or below eps, the rounding amplified ~300x); both directions
    (the two halves of a bidirectional layer) and several draws, float32 by the rule."""
    inputs = make_inputs(cell, reg, reverse, False, torch.float32, 6, 3, 7, seed=seed)
    compare(inputs.replace(lengths=torch.tensor([6, 4, 1])))


@pytest.mark.parametrize(
    ("steps", "batch", "hidden"),
    [(1, 1, 1), (2, 1, 3), (5, 3, 1), (11, 2, 17), (3, 7, 31), (4, 33, 9), (2, 4, 65)],
)
@pytest.mark.parametrize("cell", CELLS)
def test_awkward_sizes(cell, steps, batch, hidden):
    for reg, dtype in (("all", torch.float64), ("all_ln", torch.float32), ("none", torch.float32)):
        inputs = make_inputs(cell, reg, True, True, dtype, steps, batch, hidden)
        compare(inputs)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_large_packed_weights(cell, dtype, threads, monkeypatch):
    """A packed W_hh of more than 1 MiB a thread with B above one row tile: csrc/host/gemm.cpp
    prefetches the next panel group's strip there (kPrefetchBytes), and only there; H = 363
    leaves a partial last group."""
    monkeypatch.setattr(host, "NUM_THREADS", threads)
    for reg in ("none", "all"):
        compare(make_inputs(cell, reg, False, True, dtype, 3, 11, 363))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts(cell, threads, monkeypatch):
    """The per-thread hidden-unit slices (uneven, and more threads than units)."""
    monkeypatch.setattr(host, "NUM_THREADS", threads)
    compare(make_inputs(cell, "all_ln", False, True, torch.float64, 6, 4, 7))
    compare(make_inputs(cell, "all", True, True, torch.float64, 6, 4, 5))
    compare(make_inputs(cell, "all", True, True, torch.float64, 3, 2, 2))


@pytest.mark.parametrize("cell", CELLS)
def test_no_bias_and_strided_xg(cell):
    inputs = make_inputs(cell, "all", False, True, torch.float64, bias=False)
    compare(inputs)
    # xg as a non-contiguous view ([B, T, N] storage transposed), as functional.py may pass.
    wide = inputs.xg.transpose(0, 1).contiguous().transpose(0, 1)
    assert not wide.is_contiguous()
    compare(inputs.replace(xg=wide))


def test_zero_steps():
    inputs = make_inputs("lstm", "all", False, False, torch.float32, steps=0)
    out, _ = host.forward(inputs)
    assert out.output.shape == (0, 5, 13)
    torch.testing.assert_close(out.h_n, inputs.h0, rtol=0, atol=0)
    torch.testing.assert_close(out.c_n, inputs.c0, rtol=0, atol=0)


def test_unsupported_reasons():
    inputs = make_inputs("lstm", "none", False, False, torch.float32)
    assert host.unsupported_reason(inputs) is None
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert host.unsupported_reason(map_floating(inputs, lambda t, d=dtype: t.to(d))) is None
    assert (
        host.unsupported_reason(make_inputs("lstm", "all", False, True, torch.float32, proj=4))
        is None
    )
    on_meta = map_floating(inputs, lambda t: t.to("meta"))
    assert "needs cpu tensors, got meta" in host.unsupported_reason(on_meta)
    with pytest.raises(RuntimeError, match="needs cpu tensors"):
        host.forward(on_meta)


# ----------------------------------------------------------------- LSTM projections


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("reg", REGULARIZERS)
def test_projection_parity(reg, reverse, lengths, dtype):
    """proj_size: h~ = W_hr (o tanh(N_c(c~))), h and its masks over P units, with every
    regulariser, both directions and lengths; outputs and every gradient incl. w_hr."""
    compare(make_inputs("lstm", reg, reverse, lengths, dtype, proj=5))


@pytest.mark.parametrize(
    ("steps", "batch", "hidden", "proj"),
    [(1, 1, 2, 1), (2, 1, 3, 1), (5, 3, 7, 1), (11, 2, 17, 13), (3, 7, 31, 2), (4, 33, 9, 8)],
)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_projection_awkward_sizes_and_threads(steps, batch, hidden, proj, threads, monkeypatch):
    """P = 1 and primes, more threads than projection units (empty slices of P)."""
    monkeypatch.setattr(host, "NUM_THREADS", threads)
    for reg, dtype in (("all", torch.float64), ("all_ln", torch.float32), ("none", torch.float32)):
        compare(make_inputs("lstm", reg, True, True, dtype, steps, batch, hidden, proj=proj))


# ----------------------------------------------------------------- float16 / bfloat16


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("reg", REGULARIZERS)
@pytest.mark.parametrize("cell", CELLS)
def test_half_precision_parity(cell, reg, reverse, dtype):
    """Half-precision storage (computed in float32): by the rule against the reference
    backend in the same dtype (torch.nn has no regularised recurrence; the plain layers are
    held to torch.nn's own half-precision error in test_half_precision_matches_torch_nn)."""
    compare(make_inputs(cell, reg, reverse, True, dtype))
    if cell == "lstm":
        compare(make_inputs(cell, reg, reverse, True, dtype, proj=5))


# ------------------------------------------------------------------------------- Philox


def test_philox_known_answer():
    C = native.native()
    words = C.philox4x32_10(0, 0)
    assert [f"{w:08x}" for w in words] == ["6627e8d5", "e169c58d", "bc57ac4c", "9b00dbd8"]


def test_philox_words_match_python():
    C = native.native()
    rng = random.Random(3)
    for _ in range(200):
        seed = rng.randrange(-(2**63), 2**63)
        offset = rng.randrange(-(2**63), 2**63)
        ref = philox.philox4x32_10(seed, torch.tensor([offset]))
        assert C.philox4x32_10(seed, offset) == tuple(int(w[0]) for w in ref)


def test_philox_uniform_bit_identical():
    C = native.native()
    rng = random.Random(5)
    special = [0, 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**40 + 12345]
    special += [2**62, -(2**62), 2**63 - 1, -(2**63)]
    seeds = [0, 1, 2**32 - 1, 2**32, 2**63 - 1, -1, -(2**63)]
    seeds += [rng.randrange(0, 2**63) for _ in range(25)]
    offsets = special + [rng.randrange(-(2**63), 2**63) for _ in range(2000)]
    offsets += [rng.randrange(0, 2**34) for _ in range(2000)]
    for seed in seeds:
        ref = philox.rand(seed, torch.tensor(offsets, dtype=torch.int64))
        got = torch.tensor(C.philox_uniform(seed, offsets), dtype=torch.float32)
        assert torch.equal(got.view(torch.int32), ref.view(torch.int32)), f"seed {seed}"


def _mask_coordinates() -> tuple[list[int], list[int], list[int]]:
    """(t, b, unit) triples: zeros, each field alone at 1 and at its limit, all at their limits,
    and random values across each field's full range."""
    last_t, last_b, last_u = philox.MAX_STEPS - 1, philox.MAX_BATCH - 1, philox.MAX_UNITS - 1
    triples = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (last_t, 0, 0), (0, last_b, 0)]
    triples += [(0, 0, last_u), (last_t, last_b, last_u), (1, 1, 1), (last_t, 1, last_u)]
    rng = random.Random(17)
    triples += [
        (rng.randrange(philox.MAX_STEPS), rng.randrange(philox.MAX_BATCH), rng.randrange(last_u))
        for _ in range(500)
    ]
    t, b, u = (list(field) for field in zip(*triples))
    return t, b, u


def test_native_mask_offsets_match_python():
    """philox.cuh's mask_offset and mask_uniform (what the host and CUDA kernels call, through
    _C) against philox.py's mask_offset and rand: every stream, both directions, the first and
    last layer, each field at 0, 1 and its limit, and random coordinates."""
    C = native.native()
    t, b, u = _mask_coordinates()
    tensors = [torch.tensor(field, dtype=torch.int64) for field in (t, b, u)]
    for stream, layer, direction in itertools.product(range(4), (0, 1, 17, 31), (0, 1)):
        base = philox.mask_base_offset(stream, layer, direction)  # the launcher passes this
        expected = philox.mask_offset(stream, layer, direction, *tensors)
        got = torch.tensor(C.mask_offset(base, t, b, u), dtype=torch.int64)
        bad = (got != expected).nonzero().flatten().tolist()
        assert not bad, (
            f"stream {stream} layer {layer} direction {direction}: (t, b, unit) = "
            f"{(t[bad[0]], b[bad[0]], u[bad[0]])} -> {int(got[bad[0]]):#x}, "
            f"philox.py {int(expected[bad[0]]):#x}"
        )
        seed = 0x5EED_0000_0000 + stream
        uniform = torch.tensor(C.mask_uniform(seed, base, t, b, u), dtype=torch.float32)
        assert torch.equal(uniform, philox.rand(seed, expected))


def test_host_applies_the_python_zoneout_mask():
    """The zoneout mask the host loop applies is philox.uniform_mask's. With W_hh = 0 and
    h0 = 2 (outside tanh's range), h_t is either h_{t-1} (zoned) or tanh(xg_t), a value no
    earlier step had; so the output shows which elements were zoned."""
    steps, batch, hidden, p, seed, layer, direction = 6, 3, 7, 0.5, 0x5EED, 3, 1
    t = torch.arange(steps, dtype=torch.float64)[:, None, None]
    b = torch.arange(batch, dtype=torch.float64)[None, :, None]
    unit = torch.arange(hidden, dtype=torch.float64)[None, None, :]
    xg = 0.1 * (t + 1) + 0.01 * b + 0.001 * unit  # distinct, increasing in t
    inputs = RecurrenceInputs(
        RecurrenceConfig(cell="rnn_tanh", hidden_size=hidden, zoneout_hidden=p),
        xg,
        torch.full((batch, hidden), 2.0, dtype=torch.float64),
        None,
        torch.zeros(hidden, hidden, dtype=torch.float64),
        None,
        None,
        None,
        training=True,
        seed=seed,
        layer=layer,
        direction=direction,
    )
    output = host.forward(inputs)[0].output
    previous = torch.cat([inputs.h0[None], output[:-1]])
    zoned = output == previous
    expected = (
        philox.uniform_mask(
            seed, philox.STREAM_ZONEOUT_HIDDEN, layer, direction, steps, batch, hidden
        )
        < p
    )
    assert 0 < int(expected.sum()) < expected.numel()
    assert torch.equal(zoned, expected)
    torch.testing.assert_close(output[~zoned], torch.tanh(xg)[~zoned])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("reg", ["all", "all_ln", "bn_eval"])
@pytest.mark.parametrize(("cell", "proj"), [("lstm", 0), ("lstm", 3), ("gru", 0), ("rnn_relu", 0)])
@pytest.mark.filterwarnings("ignore:var\\(\\). degrees of freedom")
def test_empty_batch(cell, proj, reg, dtype):
    """B = 0 (module level: test_module_behaviour's empty-batch test): empty outputs, zero
    weight gradients, no launch."""
    inputs = make_inputs(cell, reg, False, False, dtype, batch=0, proj=proj)
    compare(inputs)
    out, saved = host.forward(inputs)
    grads = host.backward(inputs, saved, out.output.new_ones(out.output.shape), None, None)
    assert out.output.shape == (7, 0, inputs.config.out_size)
    assert torch.count_nonzero(grads["w_hh"]) == 0 and grads["w_hh"].shape == inputs.w_hh.shape
    if proj:
        assert torch.count_nonzero(grads["w_hr"]) == 0 and grads["w_hr"].shape == (proj, 13)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_results_rounded_to_nearest(dtype):
    """The float32 results are rounded to the storage type to nearest (a truncating
    conversion stays within the rule's bound, so it is checked here): with W_hh = 0 an
    rnn_tanh step is tanh(xg), whose float32 value host computes to a few float32 ulps, so
    nearly every element equals torch's round-to-nearest of the float32 tanh."""
    inputs = make_inputs("rnn_tanh", "none", False, False, dtype, 16, 16, 64, bias=False)
    inputs = inputs.replace(w_hh=torch.zeros_like(inputs.w_hh), xg=inputs.xg * 3)
    out, _ = host.forward(inputs)
    expected = torch.tanh(inputs.xg.float()).to(dtype)
    differ = (out.output != expected).double().mean().item()
    assert differ < 0.01, f"{differ:.1%} of the elements differ from round-to-nearest"
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(out.output, expected, rtol=ulp, atol=0)


# ----------------------------------------------------------------- one row (B = 1)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("hidden", "proj"), [(16, 0), (40, 0), (67, 0), (37, 21)])
@pytest.mark.parametrize("cell", CELLS)
def test_one_row_reads_the_weights_in_place(cell, hidden, proj, threads, monkeypatch):
    """B = 1 runs the product as gemv_rows over W_hh's (and W_hr's) own rows, not packed:
    whole blocks of vector-width rows (16, 40), tails of rows and of K (67, 37), several
    threads (uneven gate blocks), weight drop (its dropped copy of the rows, another gate
    stride), projection; float32 and float64 by the rule, gradients included."""
    if proj and cell != "lstm":
        pytest.skip("projection is lstm only")
    monkeypatch.setattr(host, "NUM_THREADS", threads)
    for reg, dtype in (
        ("none", torch.float32),
        ("weight_drop", torch.float64),
        ("zoneout_eval", torch.float64),
    ):
        compare(make_inputs(cell, reg, False, False, dtype, 5, 1, hidden, proj=proj))
