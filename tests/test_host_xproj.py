"""The host's paths that compute the input projection themselves (functional._defers_projection;
docs/design.md §5.4), in inference and in eager training: float32 in the step loop
(csrc/host/recurrence_host.cpp ``project_chunk``), and one row (float32 / bfloat16) on a second
thread ahead of the loop (``forward_one_row_pipelined``). Each runs where it should (counters
of the native calls that took it), not where it should not, and its results meet the numerics
rule (tests/helpers.py) against a float64 truth with torch.nn in the same dtype as the
baseline, at awkward sizes."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_by_rule, row_split_both_ways, run_and_grad, run_layer
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import functional
from fusedrnn.backends import host, native

pytestmark = pytest.mark.skipif(native.load_native()[1] is not None, reason="no _C")


def _calls() -> int:
    return native.native().host_xproj_in_loop_calls()


def _pipeline_calls() -> int:
    return native.native().host_one_row_pipeline_calls()


def _eval_modules(cell: str, input_size: int, hidden: int, **kw):
    """The host module under test, torch.nn's with the same weights (the float32 baseline of
    the numerics rule) and a float64 host copy (the truth), all in eval mode."""
    cls = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU}[cell]
    module = cls(input_size, hidden, backend="host", **kw).eval()
    nn_module = getattr(torch.nn, cell.upper())(input_size, hidden, **kw).eval()
    nn_module.load_state_dict(module.state_dict())
    truth_module = cls(input_size, hidden, backend="host", **kw).double().eval()
    truth_module.load_state_dict(module.state_dict())
    return module, nn_module, truth_module


def _run_counted(counter, modules, x, lengths, batch_first):
    """(module's results, how far ``counter()`` moved during that call, the float64 truth,
    torch.nn's results) for ``modules = (module, nn_module, truth_module)``, under no_grad."""
    module, nn_module, truth_module = modules
    with torch.no_grad():
        before = counter()
        got = _run(module, x, lengths, batch_first)
        ran = counter() - before
        truth = _run(truth_module, x.double(), lengths, batch_first)
        base = _run(nn_module, x, lengths, batch_first)
    return got, ran, truth, base


def _run(module, x, lengths, batch_first=False):
    if lengths is not None:
        x = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out, state = module(x)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=batch_first)
    h_n, c_n = state if isinstance(state, tuple) else (state, None)
    return {"output": out, "h_n": h_n, "c_n": c_n}


CASES = [
    # cell, B, I, H, T, layers, bidirectional, lengths, batch_first
    ("lstm", 2, 5, 7, 1, 1, False, False, False),
    ("lstm", 3, 9, 16, 7, 2, True, True, False),
    ("lstm", 17, 12, 33, 7, 1, True, False, True),
    ("gru", 2, 6, 4, 7, 1, False, True, False),
    ("gru", 17, 12, 33, 7, 2, True, True, False),
    ("gru", 3, 20, 9, 1, 1, True, False, True),
]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("chunk_steps", ["", "2", "3"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_in_loop_projection_by_rule(case, chunk_steps, threads, monkeypatch):
    cell, B, I, H, T, layers, bidirectional, with_lengths, batch_first = case  # noqa: E741
    # workers owning slices of the hidden units (own gate columns of W_ih; 3: uneven slices)
    monkeypatch.setattr(host, "NUM_THREADS", threads)
    monkeypatch.setenv("FUSEDRNN_HOST_XPROJ_STEPS", chunk_steps)  # "" = the default chunk
    monkeypatch.setattr(functional, "DEFER_PROJECTION", True)
    torch.manual_seed(B * 100 + T)
    module, nn_module, truth_module = _eval_modules(
        cell, I, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first
    )
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape)
    lengths = None
    if with_lengths:
        lengths = torch.randint(1, T + 1, (B,))
        lengths[B // 2] = T
    modules = (module, nn_module, truth_module)
    got, ran, truth, base = _run_counted(_calls, modules, x, lengths, batch_first)
    assert ran == layers * (2 if bidirectional else 1), "the in-loop projection did not run"
    truth = {k: v for k, v in truth.items() if v is not None}
    got = {k: got[k] for k in truth}
    base = {k: base[k] for k in truth}
    assert_by_rule(got, truth, base, torch.float32, what=f"host in-loop xproj {case}")


def test_taken_by_rule(monkeypatch):
    """Not with one row (its own pipeline at >= 2 threads, below), DEFER_PROJECTION off,
    through the op (recurrence_op.DIRECT_TRAINING off, as compiled graphs) or with input
    dropout in training; taken in inference and in eager training."""
    from fusedrnn import recurrence_op

    module = fusedrnn.LSTM(8, 16, backend="host").eval()
    x = torch.randn(5, 4, 8)
    before = _calls()
    with torch.no_grad():
        module(x[:, :1])
        monkeypatch.setattr(functional, "DEFER_PROJECTION", False)
        module(x)
        module.train()(x)
        monkeypatch.setattr(functional, "DEFER_PROJECTION", True)
    monkeypatch.setattr(recurrence_op, "DIRECT_TRAINING", False)
    module(x)
    monkeypatch.setattr(recurrence_op, "DIRECT_TRAINING", True)
    fusedrnn.LSTM(8, 16, backend="host", input_dropout=0.3).train()(x)
    assert _calls() == before
    with torch.no_grad():
        module.eval()(x)
    assert _calls() == before + 1
    module.train()(x)  # the parameters require grad: eager training
    assert _calls() == before + 2
    module(x.requires_grad_())
    assert _calls() == before + 3


def _train_results(module, x, state, lengths, batch_first, weights) -> dict:
    """helpers.run_and_grad in eager training, on leaves of their own (x packed by
    ``lengths`` when given; ``weights`` then match the packed output's rows)."""
    leaf = x.clone().requires_grad_()
    hx = tuple(s.clone().requires_grad_() for s in state)
    inp = leaf
    if lengths is not None:
        inp = pack_padded_sequence(leaf, lengths, batch_first=batch_first, enforce_sorted=False)
    return run_and_grad(module, inp, hx if len(hx) == 2 else hx[0], weights)


TRAIN_CASES = [
    # cell, B, I, H, T, layers, bidirectional, lengths, batch_first
    *CASES,
    ("lstm", 1, 9, 33, 21, 2, True, True, False),
    ("gru", 1, 20, 31, 22, 1, False, False, True),
    ("lstm", 1, 5, 7, 1, 1, False, False, False),
]


# float32 at 1-3 threads; bfloat16 (one row only: B > 1 bf16 layers keep torch's projection)
# at 2 and 3 threads
TRAIN_PARAMS = [(c, n, torch.float32) for c in TRAIN_CASES for n in (1, 2, 3)] + [
    (c, n, torch.bfloat16) for c in TRAIN_CASES if c[1] == 1 for n in (2, 3)
]


@pytest.mark.parametrize(
    ("case", "threads", "dtype"),
    TRAIN_PARAMS,
    ids=["-".join(map(str, (*c, n, str(d)[6:]))) for c, n, d in TRAIN_PARAMS],
)
def test_training_with_the_projection_in_the_loop_by_rule(case, threads, dtype, monkeypatch):
    """Eager training (recurrence_op._RecurrenceFunction) with the input projection left to
    the host: in the step loop (B > 1) or, for one row at >= 2 threads, on the second
    thread; the backward turns dxg into the gradients of x, W_ih and b_ih. Outputs, final
    states and every gradient by the numerics rule against float64 (torch.nn in the same
    dtype the baseline), and the path ran once per layer and direction."""
    cell, B, I, H, T, layers, bidirectional, with_lengths, batch_first = case  # noqa: E741
    monkeypatch.setattr(host, "NUM_THREADS", threads)
    monkeypatch.setattr(functional, "DEFER_PROJECTION", True)
    torch.manual_seed(B * 100 + T + threads)
    kw = {"num_layers": layers, "bidirectional": bidirectional, "batch_first": batch_first}
    module, nn_module, truth_module = (m.train() for m in _eval_modules(cell, I, H, **kw))
    module, nn_module = module.to(dtype), nn_module.to(dtype)
    dirs = 2 if bidirectional else 1
    x = torch.randn((B, T, I) if batch_first else (T, B, I)).to(dtype)
    state = tuple(
        torch.randn(layers * dirs, B, H).to(dtype) for _ in range(2 if cell == "lstm" else 1)
    )
    lengths = None
    if with_lengths:
        lengths = torch.randint(1, T + 1, (B,))
        lengths[B // 2] = T
    out_shape = (B, T, dirs * H) if batch_first else (T, B, dirs * H)
    if lengths is not None:  # the packed output's rows
        out_shape = (int(lengths.sum()), dirs * H)
    weights = [torch.randn(out_shape)] + [torch.randn(layers * dirs, B, H) for _ in state]
    counter = _pipeline_calls if B == 1 else _calls
    before = counter()
    got = _train_results(module, x, state, lengths, batch_first, weights)
    ran = counter() - before
    expected = layers * dirs if B > 1 or threads >= 2 else 0
    assert ran == expected, f"ran {ran} times, expected {expected}"
    truth = _train_results(
        truth_module, x.double(), tuple(s.double() for s in state), lengths, batch_first, weights
    )
    base = _train_results(nn_module, x, state, lengths, batch_first, weights)
    assert_by_rule(got, truth, base, dtype, what=f"host training xproj {case} {dtype}")


@pytest.mark.parametrize("batch", [6, 1])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_training_projection_in_the_loop_keeps_the_masks(cell, batch, monkeypatch):
    """With zoneout, recurrent dropout and weight drop in training, the deferred projection
    gives what the materialized one gives (the masks come from the same seed; the only
    difference is the projection's GEMM: equal up to rounding), gradients included."""
    monkeypatch.setattr(host, "NUM_THREADS", 2)
    torch.manual_seed(7)
    cls = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU}[cell]
    module = cls(
        6, 11, backend="host", zoneout_hidden=0.2, recurrent_dropout=0.3, weight_drop=0.25
    ).train()
    x = torch.randn(9, batch, 6)
    weights = [torch.randn(9, batch, 11), torch.randn(1, batch, 11), torch.randn(1, batch, 11)]
    state = tuple(torch.randn(1, batch, 11) for _ in range(2 if cell == "lstm" else 1))
    results = {}
    for defer in (True, False):
        monkeypatch.setattr(functional, "DEFER_PROJECTION", defer)
        counter = _pipeline_calls if batch == 1 else _calls
        before = counter()
        torch.manual_seed(11)  # the layer's mask seed
        results[defer] = _train_results(module, x, state, None, False, weights)
        assert (counter() - before == 1) == defer
    for name in results[True]:
        torch.testing.assert_close(results[True][name], results[False][name], msg=name)


def test_other_backend_materializes_xg():
    """A deferred projection reaching a backend without the in-loop path (reference) gets a
    real xg first (recurrence_op.materialized_xg)."""
    torch.manual_seed(0)
    module = fusedrnn.GRU(6, 10, backend="host").eval()
    ref = fusedrnn.GRU(6, 10, backend="reference").eval()
    ref.load_state_dict(module.state_dict())
    x = torch.randn(4, 3, 6)
    with torch.no_grad():
        a, _ = module(x)
        before = _calls()
        b, _ = ref(x)
        assert _calls() == before
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [5, 1])
def test_training_masks_without_gradient(batch, monkeypatch):
    """Training under no_grad (zoneout, recurrent dropout, weight drop; no input dropout) takes
    the path too and draws the same masks: the same results as with xg computed first. One
    row: the projection ahead on a second thread (forward_one_row_pipelined)."""
    monkeypatch.setattr(host, "NUM_THREADS", 2)
    counter = _calls if batch > 1 else _pipeline_calls
    torch.manual_seed(1)
    module = fusedrnn.LSTM(
        7,
        12,
        backend="host",
        bidirectional=True,
        zoneout_cell=0.3,
        zoneout_hidden=0.2,
        recurrent_dropout=0.25,
        weight_drop=0.3,
    ).train()
    x = torch.randn(6, batch, 7)
    results = {}
    with torch.no_grad():
        for defer in (True, False):
            monkeypatch.setattr(functional, "DEFER_PROJECTION", defer)
            before = counter()
            torch.manual_seed(7)
            results[defer] = module(x)
            assert counter() - before == (2 if defer else 0)
    out, (h_n, c_n) = results[True]
    ref, (h_ref, c_ref) = results[False]
    for a, b in ((out, ref), (h_n, h_ref), (c_n, c_ref)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _row_split_calls() -> int:
    return native.native().host_row_split_calls()


ROW_SPLIT_CASES = [
    # cell, B, I, H, T, layers, bidirectional, lengths, batch_first
    ("lstm", 7, 9, 16, 6, 2, True, True, False),
    ("lstm", 12, 20, 13, 5, 1, False, True, True),
    ("gru", 7, 6, 12, 6, 1, True, True, False),
    ("gru", 9, 11, 8, 4, 2, False, False, True),
]


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("case", ROW_SPLIT_CASES, ids=lambda c: "-".join(map(str, c)))
def test_row_split_by_rule(case, threads, monkeypatch):
    """float32 inference split by batch rows (recurrence_host.cpp forward_row_split, forced on
    at these small sizes): every thread runs its rows (2 or 3 threads, uneven row counts) from
    the shared packed weights, with its rows of x (batch_first: strided), h0, c0, lengths, out,
    h_n, c_n. By the numerics rule against float64 (torch.nn float32 as the baseline), and the
    same as the unit split."""
    cell, B, I, H, T, layers, bidirectional, with_lengths, batch_first = case  # noqa: E741
    monkeypatch.setattr(host, "NUM_THREADS", threads)
    monkeypatch.setattr(functional, "DEFER_PROJECTION", True)
    torch.manual_seed(B * 10 + H)
    lstm = cell == "lstm"
    module, nn_module, truth_module = _eval_modules(
        cell, I, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first
    )
    x = torch.randn((B, T, I) if batch_first else (T, B, I))
    dirs = 2 if bidirectional else 1
    h0 = torch.randn(layers * dirs, B, H)
    state = (h0, torch.randn(layers * dirs, B, H)) if lstm else h0
    lengths = torch.randint(1, T + 1, (B,)) if with_lengths else None
    if lengths is not None:
        lengths[B // 2] = T

    def run(m, dtype):
        return run_layer(m, x, state, lengths, batch_first, dtype)

    with torch.no_grad():
        got, units = row_split_both_ways(
            monkeypatch, lambda: run(module, torch.float32), layers * dirs
        )
        truth = run(truth_module, torch.float64)
        base = run(nn_module, torch.float32)
    assert_by_rule(got, truth, base, torch.float32, what=f"host row split {case}")
    for name in got:
        torch.testing.assert_close(got[name], units[name], msg=name)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_row_split_training_forward(cell, threads, monkeypatch):
    """The training forward split by rows (xg given, the saved gates / c~ / c / a_n written at
    the thread's rows of every step) gives the unit split's outputs, and its saved tensors
    give the same gradients (the backward is the unit split's), with h0, c0 and lengths."""
    monkeypatch.setattr(host, "NUM_THREADS", threads)
    B, I, H, T = 7, 5, 12, 6  # noqa: E741
    lstm = cell == "lstm"
    torch.manual_seed(3)
    cls = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU}[cell]
    module = cls(I, H, backend="host", bidirectional=True).train()
    x = torch.randn(T, B, I)
    h0 = torch.randn(2, B, H)
    c0 = torch.randn(2, B, H)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    grad = torch.randn(T, B, 2 * H)
    results = {}
    for split in ("1", "0"):
        monkeypatch.setenv("FUSEDRNN_HOST_ROW_SPLIT", split)
        module.zero_grad()
        leaves = [t.clone().requires_grad_() for t in ((x, h0, c0) if lstm else (x, h0))]
        packed = pack_padded_sequence(leaves[0], lengths, enforce_sorted=False)
        before = _row_split_calls()
        out, st = module(packed, tuple(leaves[1:]) if lstm else leaves[1])
        assert _row_split_calls() - before == (2 if split == "1" else 0)
        out, _ = pad_packed_sequence(out, total_length=T)
        states = st if lstm else (st,)
        loss = (out * grad).sum() + sum((s * s).sum() for s in states)
        loss.backward()
        results[split] = [out, *states, *(t.grad for t in leaves)] + [
            p.grad.clone() for p in module.parameters()
        ]
    for a, b in zip(results["1"], results["0"]):
        torch.testing.assert_close(a, b)


def test_row_split_default_rule(monkeypatch):
    """By default the rows split at >= 16 rows a thread (C2's B = 32 at 2 threads), in
    inference and in the training forward, not below, not when W_hh exceeds 2 MiB (C5's
    H = 512: 4 MiB, streamed from L3 by every thread), not below the AVX-512 build (only when
    forced), and never with training-mode draws (recurrent dropout: masks indexed by the
    global row)."""
    monkeypatch.delenv("FUSEDRNN_HOST_ROW_SPLIT", raising=False)
    monkeypatch.setattr(host, "NUM_THREADS", 2)
    monkeypatch.setattr(functional, "DEFER_PROJECTION", True)
    module = fusedrnn.LSTM(8, 16, backend="host").eval()
    dropped = fusedrnn.LSTM(8, 16, backend="host", recurrent_dropout=0.3).train()
    wide = fusedrnn.LSTM(8, 512, backend="host").eval()
    avx512 = int(native.native().host_gemm_variant() == "x86-64-v4")  # the AVX-512 build only
    cases = ((module, 32, avx512), (module, 31, 0), (dropped, 32, 0), (wide, 32, 0))
    with torch.no_grad():
        for m, B, expected in cases:
            before = _row_split_calls()
            m(torch.randn(3, B, 8))
            assert _row_split_calls() - before == expected, (B, m.hidden_size, m.training)
    for B, expected in ((32, avx512), (31, 0)):  # training: its forward, saved tensors
        before = _row_split_calls()
        module.train()(torch.randn(3, B, 8, requires_grad=True))[0].sum().backward()
        assert _row_split_calls() - before == expected, (B, "training")


ONE_ROW_CASES = [
    # cell, I, H, T, layers, bidirectional, lengths, batch_first
    ("lstm", 5, 7, 1, 1, False, False, False),
    ("lstm", 13, 16, 2, 1, True, False, False),
    ("lstm", 9, 33, 21, 2, True, True, False),  # a lone step after the lead and a chunk
    ("lstm", 17, 12, 37, 1, False, False, True),
    ("gru", 6, 4, 5, 1, True, False, False),  # the lead steps only
    ("gru", 20, 31, 22, 2, False, True, True),
    ("gru", 3, 9, 64, 1, True, False, False),
]


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("case", ONE_ROW_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("delay_us", ["", "300"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_one_row_pipeline_by_rule(case, threads, delay_us, dtype, monkeypatch):
    """One row with two threads or more (recurrence_host.cpp forward_one_row_pipelined): a
    second thread computes xg = x W_ih^T + b_ih ahead of the one-row step loop (lead steps one
    at a time, then chunks; reverse in the loop's order), the loop waiting for each step. By
    the numerics rule against float64 (torch.nn float32 as the baseline), and it ran once per
    layer and direction; at one thread it does not run. With a delay before each of the
    projection's publications (a test knob) the loop must wait for its steps' xg. bfloat16:
    the projecting thread widens x, W_ih and b_ih; from 24 steps on the loop runs the bf16
    product (test_host_bf16)."""
    cell, I, H, T, layers, bidirectional, with_lengths, batch_first = case  # noqa: E741
    monkeypatch.setenv("FUSEDRNN_HOST_PIPELINE_DELAY_US", delay_us)
    monkeypatch.setattr(host, "NUM_THREADS", threads)  # 3: still the loop's and one more
    monkeypatch.setattr(functional, "DEFER_PROJECTION", True)
    torch.manual_seed(I * 100 + T)
    module, nn_module, truth_module = _eval_modules(
        cell, I, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first
    )
    module, nn_module = module.to(dtype), nn_module.to(dtype)
    x = torch.randn((1, T, I) if batch_first else (T, 1, I)).to(dtype)
    lengths = torch.tensor([T]) if with_lengths else None
    modules = (module, nn_module, truth_module)
    got, ran, truth, base = _run_counted(_pipeline_calls, modules, x, lengths, batch_first)
    monkeypatch.setattr(host, "NUM_THREADS", 1)
    with torch.no_grad():
        before = _pipeline_calls()
        one_thread = _run(module, x, lengths, batch_first)
        assert _pipeline_calls() == before, "the pipeline ran on one thread"
    assert ran == layers * (2 if bidirectional else 1), "the one-row pipeline did not run"
    truth = {k: v for k, v in truth.items() if v is not None}
    for name, result in (("pipeline", got), ("one thread", one_thread)):
        assert_by_rule(
            {k: result[k] for k in truth},
            truth,
            {k: base[k] for k in truth},
            dtype,
            what=f"host one-row {name} {case}",
        )
