"""The Triton kernels' multi-program path, executed on the CPU.

What this proves: with the grid split into >= 4 programs (the last one owning fewer units
than the others) and those programs running concurrently in threads
(tests/triton_concurrent.py), the grid barrier, the cross-program layer-norm statistics and
gradient sums, and the split of units / gate columns between programs give the reference
backend's results, forward and backward, for every cell and normalisation, with unequal
lengths and in both directions, in float32 (one backward dot per gate) and in bf16 / fp16
(one backward dot over all gate rows), and with the float32 W2 / W6b backward's split-K over
program pairs (each program half the gate rows of its pair's units, the pair's partial
products added through a flag handshake). The interpreter tests in test_triton.py run one program
owning every unit, so none of that code executes there.
"""

from __future__ import annotations

import pytest
import torch
from test_triton import (
    CELLS,
    LENGTHS,
    assert_matches_reference,
    force_large_shape_path,
    make_inputs,
    needs_backend,
    poisoned,  # noqa: F401 - a fixture, used through pytestmark
)

triton_concurrent = pytest.importorskip("triton_concurrent")

from fusedrnn.backends import triton as triton_backend  # noqa: E402

# H = 7 units, 2 per program: 4 programs in both kernels, the last owning one unit.
HIDDEN, UNITS_PER_PROGRAM = 7, 2
PROGRAMS = -(-HIDDEN // UNITS_PER_PROGRAM)

pytestmark = [
    pytest.mark.interpreter,
    needs_backend,
    pytest.mark.skipif(
        not triton_backend._interpreting(), reason="runs the Triton interpreter (CPU tensors)"
    ),
    pytest.mark.usefixtures("poisoned", "multi_program"),
]


def _matches_reference_with_lengths(cell, regularizer, batch, dtype, reverse):
    """A HIDDEN-unit layer of ``batch`` rows with LENGTHS' unequal lengths, against the
    float64 reference."""
    inputs = make_inputs(
        cell,
        regularizer,
        hidden=HIDDEN,
        batch=batch,
        dtype=dtype,
        reverse=reverse,
        lengths=LENGTHS[:batch],
    )
    assert_matches_reference(inputs)


@pytest.fixture
def multi_program(monkeypatch):
    """The launcher splits the units over PROGRAMS programs, which run in threads."""
    monkeypatch.setattr(triton_backend, "INTERPRETER_UNITS_PER_PROGRAM", UNITS_PER_PROGRAM)
    # The elementwise weight-drop pass on dL/dW_hh is not a recurrence: its grid is its own.
    mask_weight_grad = triton_backend._mask_weight_grad
    pass_launches: set[int] = set()
    with triton_concurrent.concurrent_programs(timeout=120) as grids:

        def noted_mask_weight_grad(inputs, grad):
            pass_launches.add(len(grids))  # the index its launch takes in grids
            mask_weight_grad(inputs, grad)

        monkeypatch.setattr(triton_backend, "_mask_weight_grad", noted_mask_weight_grad)
        yield grids
    recurrences = [grid for index, grid in enumerate(grids) if index not in pass_launches]
    assert recurrences and all(grid == (PROGRAMS, 1, 1) for grid in recurrences), grids


@pytest.mark.parametrize(
    ("reverse", "lengths"),
    [(False, LENGTHS), (True, None)],
    ids=["forward-lengths", "reverse-full"],
)
@pytest.mark.parametrize("regularizer", ["none", "batch_norm", "layer_norm"])
@pytest.mark.parametrize("cell", CELLS)
def test_multi_program_matches_reference(cell, regularizer, reverse, lengths):
    assert PROGRAMS >= 4
    inputs = make_inputs(cell, regularizer, hidden=HIDDEN, reverse=reverse, lengths=lengths)
    assert_matches_reference(inputs)


@pytest.mark.parametrize(
    "regularizer", ["all_batch_norm", "all_layer_norm", "batch_norm_eval", "weight_drop"]
)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_multi_program_with_regularizers(cell, regularizer):
    """Dropout masks and zoneout draws of each program's own units, with the norms."""
    inputs = make_inputs(cell, regularizer, hidden=HIDDEN, reverse=True, lengths=LENGTHS)
    assert_matches_reference(inputs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_multi_program_half_precision(cell, dtype):
    """Half precision takes the backward's other product (one dot over all G*H gate rows
    instead of one per gate: triton_backend._geometry's ``gate_dots``), split the same way."""
    inputs = make_inputs(
        cell, "all_layer_norm", hidden=HIDDEN, dtype=dtype, reverse=True, lengths=LENGTHS
    )
    batch, gates = inputs.xg.shape[1], inputs.config.num_gates
    assert not triton_backend._geometry(batch, HIDDEN, gates, "cpu", dtype)["gate_dots"]
    assert_matches_reference(inputs)


@pytest.mark.parametrize(
    ("cell", "regularizer", "dtype"),
    [
        ("lstm", "all_layer_norm", torch.bfloat16),
        ("gru", "all_batch_norm", torch.float32),
        ("lstm", "weight_drop", torch.float32),
    ],
)
@pytest.mark.parametrize("path", ["rows-and-k-tiles", "streamed"])
def test_multi_program_large_shape_paths(monkeypatch, path, cell, regularizer, dtype):
    """The row pieces and K tiles of the resident W_hh (B = 64 at H = 1024 on a GPU) and the
    streamed W_hh (H = 2048), split over the programs: each program's tiles / chunks of its
    own gate columns, the operand read back from every program's writes."""
    inputs = make_inputs(
        cell, regularizer, hidden=HIDDEN, dtype=dtype, reverse=cell == "gru", lengths=LENGTHS
    )
    force_large_shape_path(monkeypatch, path, inputs)
    assert_matches_reference(inputs)


@pytest.mark.parametrize("path", ["rows-and-k-tiles", "streamed"])
def test_multi_program_projection_large_shape_paths(monkeypatch, path):
    """The large-shape products with a projection, split over the programs: W_hh's tiles /
    chunks over the P units of h, each program's columns of the backward's W_hh being its
    BLOCK_R h units (P = 5: one program owns none)."""
    inputs = make_inputs(
        "lstm", "all_layer_norm", hidden=HIDDEN, reverse=True, lengths=LENGTHS, proj=5
    )
    force_large_shape_path(monkeypatch, path, inputs)
    assert_matches_reference(inputs)


@pytest.mark.parametrize(
    ("regularizer", "proj", "dtype"),
    [
        ("none", 5, torch.float32),
        ("all_batch_norm", 5, torch.float32),
        ("all_layer_norm", 5, torch.float32),
        ("all_layer_norm", 1, torch.float32),
        ("weight_drop", 6, torch.float32),
        ("all_layer_norm", 6, torch.bfloat16),
    ],
    ids=["none-p5", "all_batch_norm-p5", "all_layer_norm-p5", "all_layer_norm-p1", "wd-p6", "bf16"],
)
def test_multi_program_projection(regularizer, proj, dtype):
    """proj_size: h's P units split over the programs in slices of BLOCK_R (P = 5: 2, 2, 1
    and one program without any; P = 1: only the first), with the per-step exchange of h~
    (forward) and dL/dh~ (backward) and its extra barrier between the layer-norm ones."""
    inputs = make_inputs(
        "lstm", regularizer, hidden=HIDDEN, reverse=True, lengths=LENGTHS, dtype=dtype, proj=proj
    )
    geometry = triton_backend._geometry(8, HIDDEN, 4, "cpu", dtype, proj)
    assert geometry["BLOCK_R"] * (PROGRAMS - 1) >= proj  # some program owns no h unit
    assert_matches_reference(inputs)


@pytest.mark.parametrize(
    ("cell", "regularizer", "reverse"),
    [
        ("lstm", "none", False),
        ("lstm", "all_layer_norm", True),
        ("lstm", "all_batch_norm", False),
        ("gru", "none", True),
        ("gru", "all_batch_norm", True),
        ("gru", "weight_drop", False),
    ],
)
def test_multi_program_split_k_pairs(monkeypatch, cell, regularizer, reverse):
    """The float32 W2 / W6b backward (_geometry's ``split_k``): programs 2p and 2p + 1 share
    the pair's units, each holds half of the G*H gate rows' K tiles for them and computes
    that half's partial dL/dh, and the pair adds the two through its flag handshake
    (kernels/primitives.py pair_sum); the forward runs the same grid of programs."""
    monkeypatch.setattr(triton_backend, "INTERPRETER_SPLIT_K", 2)
    monkeypatch.setattr(triton_backend, "INTERPRETER_K_TILES", 4)
    inputs = make_inputs(cell, regularizer, hidden=HIDDEN, reverse=reverse, lengths=LENGTHS)
    gates = inputs.config.num_gates
    geo = triton_backend._geometry(inputs.xg.shape[1], HIDDEN, gates, "cpu", torch.float32)
    assert geo["split_k"] == 2 and not geo["gate_dots"] and geo["programs"] == PROGRAMS
    # Both halves of a pair hold real gate rows (the second starts inside G*H).
    tile = geo["BLOCK_GH"] // geo["k_tiles_backward"]
    assert 0 < triton_backend.split_tiles(geo) * tile < gates * HIDDEN
    assert_matches_reference(inputs)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("row_chunks", [False, True, "rows-per-step"])
def test_multi_program_split_k_pairs_bfloat16_batch_norm(monkeypatch, cell, row_chunks):
    """The pair split in bf16 with batch norm (the launcher's choice at 128 and 256 rows on a
    GPU, _HALF_BATCH_NORM_PAIR_SPLIT_FROM_ROWS): the pair's partial dL/dh added through its
    flag handshake, the forward's state re-read each step (STATE_IN_MEMORY, as the launcher
    takes it there), against the float64 reference; with ``row_chunks`` the backward's
    product in row chunks too (as at 256 rows: _PAIR_ROW_CHUNK, the LSTM's batch norm gate by
    gate), and the forward's parameters read each step with a step-dependent zero as its
    product's first row (STEP_ZERO, as the launcher takes it there on wgmma); with
    "rows-per-step" the row chunks as on mma.sync (sm_80): no STEP_ZERO, and both kernels
    rebuild the step's rows, masks and offsets each step (ROWS_PER_STEP, _rows_per_step)."""
    monkeypatch.setattr(triton_backend, "INTERPRETER_SPLIT_K", 2)
    monkeypatch.setattr(triton_backend, "INTERPRETER_K_TILES", 4)
    monkeypatch.setattr(triton_backend, "INTERPRETER_STATE_IN_MEMORY", True)
    if row_chunks:
        monkeypatch.setattr(triton_backend, "INTERPRETER_ROWS_PER_DOT", 2)
    if row_chunks is True:
        monkeypatch.setattr(triton_backend, "_forward_step_zero", lambda geo, norm: True)
    if row_chunks == "rows-per-step":
        monkeypatch.setattr(triton_backend, "_rows_per_step", lambda geo, kernel, norm: True)
    inputs = make_inputs(
        cell, "all_batch_norm", hidden=HIDDEN, dtype=torch.bfloat16, lengths=LENGTHS
    )
    gates = inputs.config.num_gates
    geo = triton_backend._geometry(inputs.xg.shape[1], HIDDEN, gates, "cpu", torch.bfloat16)
    assert geo["split_k"] == 2 and geo["programs"] == PROGRAMS
    tile = geo["BLOCK_GH"] // geo["k_tiles_backward"]
    assert 0 < triton_backend.split_tiles(geo) * tile < gates * HIDDEN
    assert (geo["BLOCK_B"] // geo["rows_backward"] == 4) is bool(row_chunks)
    assert_matches_reference(inputs)


@pytest.mark.parametrize(
    ("cell", "regularizer", "reverse", "state_in_memory"),
    [
        ("lstm", "none", True, True),
        ("lstm", "all_batch_norm", False, True),
        ("lstm", "all_batch_norm", True, False),
        ("gru", "all_layer_norm", True, True),
        ("gru", "all_batch_norm", False, False),
    ],
)
def test_multi_program_split_k_pair_row_chunks(
    monkeypatch, cell, regularizer, reverse, state_in_memory
):
    """The pair split at 256 rows (_geometry's ``rows_backward`` = _PAIR_ROW_CHUNK < BLOCK_B
    with ``split_k`` = 2): each program's half of the gate rows taken row chunk by row chunk,
    every chunk's partial stored to its rows of the pair scratch (kernels/primitives.py
    pair_store), then one handshake and the pair's sum (pair_add); there the state gradients
    are written back right after the cell backward (with STATE_IN_MEMORY, EARLY_STATE) and
    the LSTM's batch-norm backward runs gate by gate (GATE_BY_GATE). Here 8 rows in 4 chunks
    of 2 (the chunk index through _opaque, as from four chunks on a GPU), with unequal
    lengths, and the state re-read per step (STATE_IN_MEMORY) or carried."""
    monkeypatch.setattr(triton_backend, "INTERPRETER_SPLIT_K", 2)
    monkeypatch.setattr(triton_backend, "INTERPRETER_K_TILES", 4)
    monkeypatch.setattr(triton_backend, "INTERPRETER_ROWS_PER_DOT", 2)
    monkeypatch.setattr(triton_backend, "INTERPRETER_STATE_IN_MEMORY", state_in_memory)
    inputs = make_inputs(cell, regularizer, hidden=HIDDEN, reverse=reverse, lengths=LENGTHS)
    gates = inputs.config.num_gates
    geo = triton_backend._geometry(inputs.xg.shape[1], HIDDEN, gates, "cpu", torch.float32)
    assert geo["split_k"] == 2 and geo["programs"] == PROGRAMS
    assert geo["BLOCK_B"] // geo["rows_backward"] == 4
    assert_matches_reference(inputs)


@pytest.mark.parametrize(
    ("cell", "regularizer", "reverse", "rows"),
    [
        ("lstm", "all_batch_norm", False, 4),
        ("gru", "all_batch_norm", True, 4),
        ("lstm", "all_batch_norm", True, 2),
        ("lstm", "batch_norm_eval", False, 4),
    ],
)
def test_multi_program_half_batch_norm_gate_by_gate(monkeypatch, cell, regularizer, reverse, rows):
    """bf16 with batch norm at 128 rows on an A100 beyond H = 864 (_geometry's
    ``gate_by_gate``: 16 units a program, the pair split's programs exceeding the SMs): the
    forward's batch norm gate by gate from the product staged in xhat_hh (the kernel's
    BN_GATE_BY_GATE), the backward's product in row chunks, each chunk's dh updated in grad_h0
    (ROW_CHUNKS), dh / dc written back early and the LSTM's norm gate by gate, the state in
    memory in both kernels. Here 8 rows in chunks of ``rows`` (two as on the GPU, or four:
    the chunk index through _opaque), with unequal lengths, both directions, training and the
    running statistics, against the float64 reference; the LSTM's backward steps 1-2 over
    the halves of each program's units in a loop (UNIT_HALVES)."""
    monkeypatch.setattr(triton_backend, "INTERPRETER_STATE_IN_MEMORY", True)
    monkeypatch.setattr(triton_backend, "INTERPRETER_GATE_BY_GATE", True)
    monkeypatch.setattr(triton_backend, "INTERPRETER_ROWS_PER_DOT", rows)
    monkeypatch.setattr(triton_backend, "INTERPRETER_K_TILES", 2)
    inputs = make_inputs(
        cell, regularizer, hidden=HIDDEN, dtype=torch.bfloat16, reverse=reverse, lengths=LENGTHS
    )
    gates = inputs.config.num_gates
    geo = triton_backend._geometry(
        inputs.xg.shape[1], HIDDEN, gates, "cpu", torch.bfloat16, norm="batch"
    )
    assert geo["gate_by_gate"] and geo["split_k"] == 1 and geo["programs"] == PROGRAMS
    assert (geo["rows_forward"], geo["rows_backward"]) == (geo["BLOCK_B"], rows)
    # the LSTM's backward steps 1-2 over unit halves (UNIT_HALVES): here halves of one unit,
    # the last program's second half past H
    assert triton_backend._unit_halves(geo) is (cell == "lstm")
    assert_matches_reference(inputs)


@pytest.mark.parametrize(
    ("cell", "regularizer", "dtype", "reverse", "proj"),
    [
        ("lstm", "all_layer_norm", torch.bfloat16, True, 0),
        ("lstm", "all_batch_norm", torch.float32, False, 0),
        ("gru", "all_batch_norm", torch.float32, True, 0),
        ("rnn_relu", "all_layer_norm", torch.float16, False, 0),
        ("lstm", "all_layer_norm", torch.float32, True, 5),
    ],
    ids=["lstm-ln-bf16", "lstm-bn", "gru-bn", "rnn_relu-ln-fp16", "lstm-ln-p5"],
)
@pytest.mark.parametrize("k_tiles", [1, 2], ids=["one-dot", "k-tiles"])
def test_multi_program_b256_path(monkeypatch, cell, regularizer, dtype, reverse, proj, k_tiles):
    """The launcher's B = 256 configuration at a small size: the state of each program's
    units (forward h, c and m_h; backward dh and dc) re-read from memory every step instead
    of carried through the time loop (the kernels' STATE_IN_MEMORY), and the layer-norm
    statistics read back one program at a time (kernels/primitives.py ROW_EXCHANGE_TILE:
    at B = 256 sixteen programs a chunk), with unequal lengths (inactive rows keep their
    state) and, with K tiles, the masked exchange of m_h * h."""
    from fusedrnn.kernels import primitives

    monkeypatch.setattr(triton_backend, "INTERPRETER_STATE_IN_MEMORY", True)
    monkeypatch.setattr(triton_backend, "INTERPRETER_K_TILES", k_tiles)
    inputs = make_inputs(
        cell, regularizer, hidden=HIDDEN, dtype=dtype, reverse=reverse, lengths=LENGTHS, proj=proj
    )
    block_b = triton_backend._geometry(8, HIDDEN, 4, "cpu", dtype, proj)["BLOCK_B"]
    monkeypatch.setattr(primitives, "ROW_EXCHANGE_TILE", primitives.tl.constexpr(block_b))
    assert_matches_reference(inputs)


@pytest.mark.parametrize(
    ("regularizer", "dtype", "reverse", "batch", "exchange"),
    [
        ("all_layer_norm", torch.bfloat16, True, 8, "chunked"),
        ("all_layer_norm", torch.float32, False, 7, "one-tile"),
        ("layer_norm", torch.float32, True, 7, "chunked"),
    ],
    ids=["all-ln-bf16-reverse", "all-ln-f32-padded-row", "ln-f32-padded-row"],
)
@pytest.mark.parametrize(
    ("k_tiles", "stream_k"), [(1, None), (2, None), (1, 4)], ids=["one-dot", "k-tiles", "streamed"]
)
def test_multi_program_b256_row_pieces(
    monkeypatch, regularizer, dtype, reverse, batch, exchange, k_tiles, stream_k
):
    """The B = 256 LSTM with layer norm in whole-step row pieces (the kernels' ROW_PIECE, the
    launcher's _row_piece: 64 rows of 256 on a GPU), here pieces of 2 rows of BLOCK_B = 8
    (4 pieces; with 7 rows the last holds a padding row) over 4 programs: the pre-norm
    product staged in xhat_hh and c~ in xhat_c (forward), dL/d N(c~), dL/d o and dL/d a
    staged in grad_acc (backward), each piece's layer-norm partials published before the
    one barrier and each piece normalised after it; the workspace read back one program a
    chunk ("chunked") or all at once, with dropout (the masked exchange with K tiles) and
    zoneout, unequal lengths, both directions; W_hh resident (one dot or K tiles a piece) or
    streamed (each piece's rows in K-chunks, as beyond H = 1024 on a GPU)."""
    from fusedrnn.kernels import primitives

    monkeypatch.setattr(triton_backend, "INTERPRETER_STATE_IN_MEMORY", True)
    monkeypatch.setattr(triton_backend, "INTERPRETER_K_TILES", k_tiles)
    monkeypatch.setattr(triton_backend, "INTERPRETER_ROW_PIECE", 2)
    monkeypatch.setattr(triton_backend, "INTERPRETER_STREAM_K", stream_k)
    pieces = []
    row_piece = triton_backend._row_piece

    def noted_row_piece(geo):
        pieces.append((row_piece(geo), geo["BLOCK_B"], geo["rows_forward"], geo["rows_backward"]))
        return pieces[-1][0]

    monkeypatch.setattr(triton_backend, "_row_piece", noted_row_piece)
    if exchange == "chunked":
        monkeypatch.setattr(primitives, "ROW_EXCHANGE_TILE", primitives.tl.constexpr(2))
    _matches_reference_with_lengths("lstm", regularizer, batch, dtype, reverse)
    # Both kernels ran the pieces, their products piece by piece (each launch asks once).
    assert pieces and all(piece == (2, 8, 2, 2) for piece in pieces), pieces


@pytest.mark.parametrize(
    ("cell", "regularizer", "dtype", "reverse", "state_in_memory", "k_tiles"),
    [
        ("rnn_relu", "all_layer_norm", torch.float16, False, True, 2),
        ("rnn_tanh", "layer_norm", torch.bfloat16, True, True, 2),
        ("rnn_relu", "all_layer_norm", torch.float16, True, False, 2),
        ("rnn_tanh", "all_layer_norm", torch.bfloat16, False, False, 1),
    ],
    ids=["sm80-relu-all-ln", "sm80-tanh-ln-reverse", "sm90-relu-all-ln-reverse", "sm90-tanh"],
)
def test_multi_program_rnn_layer_norm_256_rows(
    monkeypatch, cell, regularizer, dtype, reverse, state_in_memory, k_tiles
):
    """The RNN with layer norm in bf16 / fp16 at 256 rows (the launcher's _row_clamp and
    _product_row_chunks), here 7 rows of BLOCK_B = 8 (a padding row) over 4 programs: the
    products' operand rows clamped into the batch, their loads masked by the K tile alone
    (ROW_CLAMP: the padded row's product is the last row's, which nothing may use), in the
    forward and, where the state is carried ("sm90": the wgmma backward), in the backward;
    with the state in memory ("sm80") the backward's product in row chunks of 2 rows (four
    chunks, the chunk index through _opaque), each chunk's dh updated in grad_h0
    (PRODUCT_ROW_CHUNKS). Unequal lengths, dropout and zoneout, both directions, against the
    float64 reference. (With one K tile, "sm90-tanh", the forward's product is the one-dot
    path, which takes no clamp: its backward's does.)"""
    monkeypatch.setattr(triton_backend, "INTERPRETER_STATE_IN_MEMORY", state_in_memory)
    monkeypatch.setattr(triton_backend, "INTERPRETER_ROW_CLAMP", True)
    monkeypatch.setattr(triton_backend, "INTERPRETER_PRODUCT_ROW_CHUNKS", True)
    monkeypatch.setattr(triton_backend, "INTERPRETER_ROWS_PER_DOT", 2 if state_in_memory else None)
    monkeypatch.setattr(triton_backend, "INTERPRETER_K_TILES", k_tiles)
    launched = []
    for name in ("_row_clamp", "_product_row_chunks"):
        original = getattr(triton_backend, name)

        def noted(*args, _name=name, _original=original):
            launched.append((_name, args[1] if _name == "_row_clamp" else "backward"))
            launched.append(_original(*args))
            return launched[-1]

        monkeypatch.setattr(triton_backend, name, noted)
    batch = 7
    _matches_reference_with_lengths(cell, regularizer, batch, dtype, reverse)
    # Each launch asked once per kernel: the clamp in the forward, and in the backward where
    # its product takes every row (carried state); the row chunks with the state in memory.
    asked = dict(zip(launched[::2], launched[1::2], strict=True))
    assert asked == {
        ("_row_clamp", "forward"): True,
        ("_row_clamp", "backward"): not state_in_memory,
        ("_product_row_chunks", "backward"): state_in_memory,
    }, launched
