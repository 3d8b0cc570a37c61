"""Persistent Triton kernels for the recurrence contract (fusedrnn/backends/base.py).

One launch runs all T steps of one layer-direction, forward (``recurrence_forward_kernel``)
or backward (``recurrence_backward_kernel``); fusedrnn/backends/triton.py is the launcher.

Work split (both kernels)
-------------------------
The grid is one dimension of at most one program per SM, launched cooperatively (all
programs co-resident, or the launch fails). Program ``pid`` owns hidden units
``[pid * BLOCK_U, (pid + 1) * BLOCK_U)``: all gates of those units, for all batch rows. So:

* a program's *gate columns* (``GATES_PAD * BLOCK_U`` of them; column ``j`` is gate
  ``j // BLOCK_U`` of unit ``pid * BLOCK_U + j % BLOCK_U``, global column
  ``gate * H + unit`` of ``xg`` / ``W_hh``) are computed in one ``tl.dot``;
* the cell update of a unit needs only that program's columns;
* recurrent batch-norm statistics (per column, over the batch) are local to the program;
* the c and h state of the owned units stays in registers for the whole loop.

Only ``h_{t-1}`` (forward) or ``dL/d(W_hh h)`` (backward) crosses programs: each program
writes its slice to global memory, all meet at a grid barrier (kernels/primitives.py), and
each reads the full row back (L2). One exception, ``SPLIT_K`` = 2 (float32 W2 / W6b): the
backward's recurrent product of programs ``2p`` and ``2p + 1`` is split over K (each holds
half of the gate rows for both programs' units) and the pair adds its partial products
through a pairwise flag handshake (``pair_sum``; at 256 rows the product in row chunks,
each chunk's partial stored as it is made, ``pair_store``, then one ``pair_add``). Layer
norm, whose statistics span all columns of a row, adds one barrier per normalised quantity
with a small partial-sum workspace.

The SAME code runs with a single program owning every unit: that is how the Triton
interpreter (``TRITON_INTERPRET=1``, which runs programs one after another, so a
multi-program barrier could never be passed) runs it on a CPU.

Sizes are runtime arguments (``steps``, ``batch``, ``stat_steps`` and the seed / offsets are
excluded from value specialisation), so a new sequence length or batch size never
recompiles. ``hidden`` and ``proj`` (layer constants) are left to Triton's specialisation
(divisible by 16: the per-step row loads vectorise and their addresses stay cheap to
recompute in the loop, docs/kernels-v2.md §6.1); the block sizes below are compile-time.

The time loop is ``for s in tl.range(0, steps, disable_licm=True)``: with loop-invariant code
motion on, LLVM hoisted the resident W_hh tiles' wgmma descriptors and the per-step
addresses out of the loop and spilled them (kernels/interpreter_compat.py lets triton 3.6's
interpreter take the runtime bound).

Block sizes (chosen by the launcher)
------------------------------------
``BLOCK_B``   next power of two >= batch (>= 16 on a GPU for ``tl.dot``): every row in one
              program, which keeps batch statistics local.
``BLOCK_U``   units per program, the same in both kernels (so the backward has as many
              programs as the forward): the smallest power of two >= 16 (the tensor-core N
              minimum) that keeps the grid within the SM count; 8 with ``SPLIT_K`` = 2
              (float32 where 16 units' W_hh does not fit: the backward's dot then has the
              pair's 16 units as N).
``BLOCK_H``   next power of two >= H: the K dimension of the forward dot (full h row) and
              of the backward's per-gate dots (``GATE_DOTS``, float32).
``BLOCK_GH``  next power of two >= G*H: the K dimension of the backward's one dot over all
              gate rows (bf16 / fp16).
``BLOCK_P``   with a projection (``HAS_PROJ``) next power of two >= P, the forward dot's K
              (h has P units); ``BLOCK_H`` without one.
``BLOCK_R``   h units per program: ``BLOCK_U`` without a projection.
``ROWS_PER_DOT`` batch rows per dot of the resident product (``BLOCK_B`` unless row pieces;
              the backward with ``SPLIT_K`` = 2 at 256 rows: 64, its product in row chunks
              whose partials go to the pair scratch one by one, the launcher's
              ``_PAIR_ROW_CHUNK``; the rest of the step whole).
``K_TILES``   resident W_hh as this many K tiles (1 unless split).
``SPLIT_K``   backward only: 1, or 2 for the split over program pairs, where each program
              holds ``SPLIT_TILES`` (half, rounded up) of the ``BLOCK_GH // K_TILES``-row
              tiles that cover ``G * BLOCK_H``: the first or the second half.
``STREAM_K``  0: W_hh resident; else streamed from L2 in K-chunks of this size.
``GATES_PAD`` next power of two >= G (4, 4, 1): Triton tiles are powers of two.
``PROGRAMS_PAD`` next power of two >= the grid size (layer-norm partials).
``STATE_IN_MEMORY`` B = 256, and the sm_80 layer-norm backward at B = 64 (the launcher's
              ``_state_in_memory``): the state of the owned
              units is not carried through the time loop in registers but re-read every
              step: forward h_{t-1} / c_{t-1} from the ``h_prev`` / ``c_prev`` rows this
              program wrote before the previous step's barrier (``c_prev``'s first row
              written before the loop), h_n / c_n written at the last step, m_h drawn again;
              backward dh / dc kept in ``grad_h0`` / ``grad_c0`` (CTA barriers order the
              reads and writes of different threads). Beside the ``[256, ·]`` working set
              of a step the carried state spilled (docs/kernels-v2.md §6.1).
``ROW_PIECE`` ``BLOCK_B``, or (the launcher's ``_row_piece``: the LSTM with layer norm and
              no projection at B = 256, state in memory) 64: a whole-step row split. Every
              part of a step, the recurrent products included (``ROWS_PER_DOT`` = 64), runs
              piece by piece, 64 rows at a time, around the same barriers: what one piece needs
              of another (nothing but the layer-norm row statistics, which are per row) goes
              through the workspace, and what crosses a barrier is staged in the step's own
              saved rows (forward: the pre-norm product in ``xhat_hh``, c~ in ``xhat_c``;
              backward: dL/d N(c~) gamma_c, dL/d o and dL/d a in ``grad_acc``), written per
              piece and read back after the barrier. At 256 rows that working set spilled
              KBs at any warp count (docs/kernels-v2.md §6.1).

W_hh on chip. Each kernel loads its share of W_hh once, before the time loop, through one
helper (kernels/primitives.py ``load_w_hh_tile``: in forward the program's ``G*BLOCK_U``
gate rows, transposed; in backward the program's ``BLOCK_U`` columns of one gate's rows or of
all of them, or with ``SPLIT_K`` = 2 its pair's ``2 * BLOCK_U`` columns of half of them), and
keeps it on chip (shared memory or registers,
the compiler's choice; the AOT test measures which) for all steps. Per step it is never
re-read from global memory: only ``h_{t-1}`` / ``dL/d acc`` are.

Limits: every dot stages its operands in shared memory (launcher: ``_shared_memory_bytes``,
equal to the compiled kernels' at W1 / W2). The launcher holds the resident W_hh as
``K_TILES`` tiles (``_resident_product``: one dot per tile, each staging a ``[B, K/K_TILES]``
operand piece), so the envelope ends where the W slice itself no longer fits shared memory:
on an A100 / H100 LSTM / GRU to H = 1024 at B <= 64 in bf16 / fp16 (W1, W6a, W2, W6b), in
float32 to H = 512 at B <= 64, and on an H100 (132 SMs) to H = 1024 (float32 W2 / W6b:
``SPLIT_K`` = 2, 128 programs). Beyond it ``STREAM_K`` > 0: W_hh is read per step from L2
in K-chunks of that many rows / columns (``_streamed_product``, through the same
``load_w_hh_tile``), which takes float32 W2 / W6b on an A100 and H = 2048.
``ROWS_PER_DOT`` < ``BLOCK_B`` (row pieces) is selected by the interpreter tests, and with
``ROW_PIECE`` (then each piece's product is its own ``[ROW_PIECE, ·]`` dots).

Numerics: the recurrent product (kernels/primitives.py ``recurrent_dot``) takes bf16 / fp16
operands in their own dtype (the float32 ``h`` / ``dL/d acc`` operand is rounded to it, as
cuDNN's half-precision RNN does) with float32 accumulation, and float32 operands as TF32 or
exactly (``INPUT_PRECISION``: the launcher's TF32 rule, torch's cuDNN RNN flag). Under the
interpreter (``UPCAST_OPERANDS``) both operands are multiplied in float32. Everything else
(cell, norms, state, saved tensors) is float32.

Randomness: masks are never stored. Each is drawn with ``tl.rand(seed, offset)`` at the
offset ``base + (t << 38) + (b << 20) + unit`` of fusedrnn/philox.py (``base`` =
``philox.mask_base_offset(stream, layer, direction)``, an int64 argument), in the forward
kernel and again in the backward kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fusedrnn.backends.base import CELL_CODES, NORM_CODES
from fusedrnn.backends.base import NORM_EPS as _NORM_EPS

from . import interpreter_compat
from .cells import (
    gru_cell,
    gru_cell_backward,
    lstm_candidate,
    lstm_candidate_backward,
    lstm_cell_state,
    lstm_hidden,
    lstm_hidden_backward,
    rnn_cell,
    rnn_cell_backward,
)
from .primitives import (
    active_column_stats,
    bn_backward,
    dropout_mask,
    exchange_and_multiply,
    gate_of,
    gates_to_tile,
    grid_barrier,
    layer_norm_merge,
    layer_norm_partials,
    layer_norm_row_stats,
    load_w_hh_tile,
    pair_add,
    pair_store,
    pair_sum,
    recurrent_dot,
    row_sums_across_programs,
    row_sums_merge,
    row_sums_partials,
    row_values_slot,
    store_row_values,
    tanh,
    zoneout,
    zoneout_weight,
)

# Under TRITON_INTERPRET=1 with triton 3.6 and numpy >= 2.3, the time loop's runtime
# tl.range bound needs this (a no-op otherwise).
interpreter_compat.apply()

# Compile-time codes of the cell and the normalisation (fusedrnn/backends/base.py defines them;
# the launcher maps names to them).
LSTM: tl.constexpr = tl.constexpr(CELL_CODES["lstm"])
GRU: tl.constexpr = tl.constexpr(CELL_CODES["gru"])
RNN_RELU: tl.constexpr = tl.constexpr(CELL_CODES["rnn_relu"])
NORM_NONE: tl.constexpr = tl.constexpr(NORM_CODES["none"])
NORM_BATCH: tl.constexpr = tl.constexpr(NORM_CODES["batch"])
NORM_LAYER: tl.constexpr = tl.constexpr(NORM_CODES["layer"])
NORM_EPS: tl.constexpr = tl.constexpr(_NORM_EPS)

# Runtime scalars that must not be specialised on their value (a new T / B / seed must not
# recompile; Triton would otherwise specialise values equal to 1 and multiples of 16).
_RUNTIME_SCALARS = [
    "steps",
    "batch",
    "seed",
    "dropout_base",
    "zoneout_cell_base",
    "zoneout_hidden_base",
    "weight_drop_key",
    "weight_drop_base",
]


@triton.jit
def _rows_cols_offsets(t, batch, rows, cols, width):
    """Offsets of element (t, rows, cols) of a contiguous [T, batch, width] tensor (int64)."""
    return (tl.cast(t, tl.int64) * batch + rows[:, None]) * width + cols[None, :]


@triton.jit
def _step_tile(ptr, t, batch, rows, cols, width):
    """Pointers to element (t, rows, cols) of a contiguous [T, batch, width] tensor at ``ptr``.
    At 256 rows: the step's row block as a scalar int64 base and the tile's offsets in int32
    (``batch * width`` < 2^31 on every accepted shape), one register an element instead of
    two (B = 256 spill stores, sm_90a, 16 warps: LSTM layer norm 1,820 / 1,824 -> 1,764 /
    1,540 B, RNN 168 / 136 -> 156 / 132; docs/kernels-v2.md §6.1); below, int64
    throughout (:func:`_rows_cols_offsets`), the code measured there."""
    if rows.shape[0] >= 256:
        tile = (ptr + tl.cast(t, tl.int64) * batch * width) + (
            rows[:, None] * width + cols[None, :]
        )
    else:  # int64 throughout, as measured below B = 256
        tile = ptr + _rows_cols_offsets(t, batch, rows, cols, width)
    return tile


@triton.jit
def _norm_parameters(
    norm_weight_hh_ptr,
    norm_weight_c_ptr,
    norm_bias_c_ptr,
    gate_col,
    col_in,
    units,
    unit_in,
    IS_LSTM: tl.constexpr,
    HAS_NORM_BIAS_C: tl.constexpr,
):
    """The norm parameters of the program's columns, as float32: the gain of the recurrent
    product's norm over the ``[G*units]`` gate columns, and for the LSTM the cell-state norm's
    gain and bias over ``units`` (0.0 where the cell or the options have none)."""
    weight_hh = tl.load(norm_weight_hh_ptr + gate_col, mask=col_in, other=0.0).to(tl.float32)
    weight_c = 0.0
    bias_c = 0.0
    if IS_LSTM:
        weight_c = tl.load(norm_weight_c_ptr + units, mask=unit_in, other=0.0).to(tl.float32)
        if HAS_NORM_BIAS_C:
            bias_c = tl.load(norm_bias_c_ptr + units, mask=unit_in, other=0.0).to(tl.float32)
    return weight_hh, weight_c, bias_c


@triton.jit
def _own_state(ptr, t, batch, rows, cols, width, mask):
    """A program's own state tile ``[rows, cols]`` of step ``t`` of a float32 [T, batch,
    width] buffer (``STATE_IN_MEMORY``): written by this program before the CTA barrier that
    ends the previous step (or before the loop), read back through L2 (``.cg``)."""
    return tl.load(
        _step_tile(ptr, t, batch, rows, cols, width), mask=mask, other=0.0, cache_modifier=".cg"
    )


@triton.jit
def _own_rows(ptr, offsets, mask):
    """A program's own ``[rows, units]`` tile of a float32 [B, width] state buffer at
    ``offsets`` (``STATE_IN_MEMORY``, the backward's dh / dc), through L2 (``.cg``)."""
    return tl.load(ptr + offsets, mask=mask, other=0.0, cache_modifier=".cg")


@triton.jit
def _load_resident_tiles(
    w_hh_ptr,
    n_index,
    n_in,
    k_start,
    k_total,
    w_row_stride,
    K_IS_W_ROW: tl.constexpr,
    K_TILES: tl.constexpr,
    BLOCK_KR: tl.constexpr,
    USE_WEIGHT_DROP: tl.constexpr,
    weight_drop_key,
    weight_drop_base,
    weight_drop_p,
    weight_drop_keep_scale,
):
    """A program's resident share of W_hh as ``K_TILES`` tiles [BLOCK_KR, N] (a tuple, tile
    ``c`` = K rows ``k_start + c * BLOCK_KR ...``): element (k, n) is ``W_hh[k, n_index[n]]``
    (``K_IS_W_ROW``: the backward's gate rows) or ``W_hh[n_index[n], k]`` (the forward's
    transposed gate rows), 0 for ``k >= k_total``; ``w_row_stride`` is W_hh's row length
    (the h size: P with a projection, H without). Loaded once per launch through
    :func:`load_w_hh_tile` (weight drop applies there)."""
    tiles = ()
    for tile in tl.static_range(K_TILES):
        ks = k_start + tile * BLOCK_KR + tl.arange(0, BLOCK_KR)
        if K_IS_W_ROW:
            w_rows = ks[:, None]
            w_cols = n_index[None, :]
        else:
            w_rows = n_index[None, :]
            w_cols = ks[:, None]
        # Concatenation, not (*tiles, x): triton's code generator builds tuples this way.
        tiles = tiles + (  # noqa: RUF005
            load_w_hh_tile(
                w_hh_ptr,
                w_rows,
                w_cols,
                (ks < k_total)[:, None] & n_in[None, :],
                w_row_stride,
                USE_WEIGHT_DROP,
                weight_drop_key,
                weight_drop_base,
                weight_drop_p,
                weight_drop_keep_scale,
            ),
        )
    return tiles


@triton.jit
def _resident_product(
    step_ptr,
    width,
    k_offset,
    k_total,
    batch,
    first_row,
    w_tiles,
    acc,
    OPERAND_DROPOUT: tl.constexpr,
    seed,
    dropout_base,
    dropout_p,
    dropout_keep_scale,
    K_TILES: tl.constexpr,
    ROWS_PER_DOT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_OPERANDS: tl.constexpr,
    CLAMP_ROWS: tl.constexpr = False,
):
    """``acc + operand @ W`` with W resident on chip as the tuple ``w_tiles`` of ``K_TILES``
    K-chunk tiles (:func:`_load_resident_tiles`), ``acc`` float32 [BLOCK_B, N]; row ``r`` of
    the operand is ``step_ptr[r * width + k_offset + k]`` for ``k < k_total``, rows
    ``first_row ...`` (0, or a whole-step row piece's first row).

    The operand was written by every program before the barrier, so it is read from L2. It
    is taken ``ROWS_PER_DOT`` rows by one K tile at a time (static loops: one dot per piece, each
    against a tile that stays on chip), so a dot holds and stages only ``[ROWS_PER_DOT, K /
    K_TILES]`` of it: that is what lets B = 64 keep W_hh on chip at H = 1024 without
    spilling. ``OPERAND_DROPOUT``: the operand is ``m_h * h``, each piece's mask drawn again.

    ``CLAMP_ROWS`` (the launcher's ``row_clamp``): the operand's rows clamped into the batch
    (``min(row, batch - 1)``; ``batch`` >= 1) and its loads masked by the K tile alone, so
    no row x K predicate exists (a thread's row predicates ANDed with every K tile's were
    hoisted out of the time loop and spilled). The padded rows (>= ``batch``) of the result
    then hold the last row's product instead of 0: the callers mask every use of them.
    """
    BLOCK_KR: tl.constexpr = w_tiles[0].shape[0]
    CHUNKS: tl.constexpr = acc.shape[0] // ROWS_PER_DOT
    WIDTH_N: tl.constexpr = acc.shape[1]
    chunk_ids = tl.arange(0, CHUNKS)[:, None, None]
    acc3 = tl.reshape(acc, (CHUNKS, ROWS_PER_DOT, WIDTH_N))
    for chunk in tl.static_range(CHUNKS):
        rows = first_row + chunk * ROWS_PER_DOT + tl.arange(0, ROWS_PER_DOT)
        if CHUNKS == 1:
            part = acc
        else:
            part = tl.zeros((ROWS_PER_DOT, WIDTH_N), tl.float32)
        if CLAMP_ROWS:
            operand_rows = tl.minimum(rows, batch - 1)
        else:
            operand_rows = rows
        for tile in tl.static_range(K_TILES):
            ks = tile * BLOCK_KR + tl.arange(0, BLOCK_KR)
            if CLAMP_ROWS:
                operand_mask = (ks < k_total)[None, :]
            else:
                operand_mask = (rows < batch)[:, None] & (ks < k_total)[None, :]
            operand = tl.load(
                step_ptr + operand_rows[:, None] * width + k_offset + ks[None, :],
                mask=operand_mask,
                other=0.0,
                cache_modifier=".cg",
            )
            if OPERAND_DROPOUT:
                operand = operand * dropout_mask(
                    seed, dropout_base, rows, ks, dropout_p, dropout_keep_scale
                )
            part = recurrent_dot(operand, w_tiles[tile], part, INPUT_PRECISION, UPCAST_OPERANDS)
        if CHUNKS == 1:
            acc3 = part
        else:
            acc3 = acc3 + tl.where(chunk_ids == chunk, part[None, :, :], 0.0)
    if CHUNKS == 1:
        result = acc3
    else:
        result = tl.reshape(acc3, (CHUNKS * ROWS_PER_DOT, WIDTH_N))
    return result


@triton.jit
def _streamed_product(
    step_ptr,
    width,
    rows,
    row_in,
    k_total,
    w_hh_ptr,
    n_index,
    n_in,
    w_row_stride,
    K_IS_W_ROW: tl.constexpr,
    USE_WEIGHT_DROP: tl.constexpr,
    weight_drop_key,
    weight_drop_base,
    weight_drop_p,
    weight_drop_keep_scale,
    OPERAND_DROPOUT: tl.constexpr,
    seed,
    dropout_base,
    dropout_p,
    dropout_keep_scale,
    acc,
    STREAM_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_OPERANDS: tl.constexpr,
):
    """``acc + operand @ W`` with W_hh streamed from L2 in K-chunks of ``STREAM_K`` (shapes
    whose W_hh does not fit on chip): row ``r`` of the operand is ``step_ptr[r * width + k]``
    for ``k < k_total``; the tile's element (k, n) is ``W_hh[k, n_index[n]]``
    (``K_IS_W_ROW``: the backward's gate rows) or ``W_hh[n_index[n], k]`` (the forward's
    transposed gate rows), ``w_row_stride`` as in :func:`_load_resident_tiles`. Each chunk
    goes through :func:`load_w_hh_tile`, so weight drop applies as in the resident tiles.
    ``OPERAND_DROPOUT`` as in :func:`_resident_product`.
    """
    k0 = 0
    while k0 < k_total:
        ks = k0 + tl.arange(0, STREAM_K)
        k_in = ks < k_total
        operand = tl.load(
            step_ptr + rows[:, None] * width + ks[None, :],
            mask=row_in[:, None] & k_in[None, :],
            other=0.0,
            cache_modifier=".cg",
        )
        if OPERAND_DROPOUT:
            operand = operand * dropout_mask(
                seed, dropout_base, rows, ks, dropout_p, dropout_keep_scale
            )
        if K_IS_W_ROW:
            w_rows = ks[:, None]
            w_cols = n_index[None, :]
        else:
            w_rows = n_index[None, :]
            w_cols = ks[:, None]
        w_chunk = load_w_hh_tile(
            w_hh_ptr,
            w_rows,
            w_cols,
            k_in[:, None] & n_in[None, :],
            w_row_stride,
            USE_WEIGHT_DROP,
            weight_drop_key,
            weight_drop_base,
            weight_drop_p,
            weight_drop_keep_scale,
        )
        acc = recurrent_dot(operand, w_chunk, acc, INPUT_PRECISION, UPCAST_OPERANDS)
        k0 += STREAM_K
    return acc


@triton.jit
def _recurrent_product(
    step_ptr,
    width,
    batch,
    rows,
    row_in,
    first_row,
    w_tiles,
    w_hh_ptr,
    n_index,
    n_in,
    w_row_stride,
    gate_k,
    K_IS_W_ROW: tl.constexpr,
    USE_WEIGHT_DROP: tl.constexpr,
    weight_drop_key,
    weight_drop_base,
    weight_drop_p,
    weight_drop_keep_scale,
    OPERAND_DROPOUT: tl.constexpr,
    seed,
    dropout_base,
    dropout_p,
    dropout_keep_scale,
    ROWS: tl.constexpr,
    COLUMNS: tl.constexpr,
    STREAM_K: tl.constexpr,
    GATE_DOTS: tl.constexpr,
    ROWS_PER_DOT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_OPERANDS: tl.constexpr,
    CLAMP_ROWS: tl.constexpr = False,
):
    """A step's recurrent product ``operand @ W`` of ``ROWS`` rows, float32 [ROWS, COLUMNS]:
    row ``r`` of the operand is ``step_ptr[r * width + k]`` for ``k < width`` (the rows
    ``rows`` / ``row_in``, ``first_row`` the first of them: the whole batch, or one
    whole-step row piece), W as in :func:`_streamed_product` (``n_index``, ``n_in``,
    ``w_row_stride``, ``K_IS_W_ROW``). Streamed from L2 in K-chunks of ``STREAM_K`` (> 0);
    else resident: ``GATE_DOTS``, one dot per gate against its tile ``w_tiles[gate]`` (the
    backward: the gate's ``gate_k`` columns of the operand, from column ``gate * gate_k``);
    else one over all ``width`` columns against the K tiles ``w_tiles``
    (:func:`_resident_product`, ``ROWS_PER_DOT`` rows a dot)."""
    acc = tl.zeros((ROWS, COLUMNS), tl.float32)
    if STREAM_K > 0:
        acc = _streamed_product(
            step_ptr,
            width,
            rows,
            row_in,
            width,
            w_hh_ptr,
            n_index,
            n_in,
            w_row_stride,
            K_IS_W_ROW,
            USE_WEIGHT_DROP,
            weight_drop_key,
            weight_drop_base,
            weight_drop_p,
            weight_drop_keep_scale,
            OPERAND_DROPOUT,
            seed,
            dropout_base,
            dropout_p,
            dropout_keep_scale,
            acc,
            STREAM_K,
            INPUT_PRECISION,
            UPCAST_OPERANDS,
        )
    else:  # resident: per gate (GATE_DOTS), else one product over all the tiles
        for gate in tl.static_range(len(w_tiles) if GATE_DOTS else 1):
            if GATE_DOTS:
                k_offset, k_total, tiles = gate * gate_k, gate_k, (w_tiles[gate],)
            else:
                k_offset, k_total, tiles = 0, width, w_tiles
            acc = _resident_product(
                step_ptr,
                width,
                k_offset,
                k_total,
                batch,
                first_row,
                tiles,
                acc,
                OPERAND_DROPOUT,
                seed,
                dropout_base,
                dropout_p,
                dropout_keep_scale,
                len(tiles),
                ROWS_PER_DOT,
                INPUT_PRECISION,
                UPCAST_OPERANDS,
                CLAMP_ROWS,
            )
    return acc


@triton.jit
def _add_to_column_sums(ptr, cols, mask, partial):
    """``ptr[cols] += partial`` by the program that owns ``cols`` (a gradient sum kept in its
    output row across the time loop instead of in registers; the same float32 additions in
    the same order as a register accumulator)."""
    tl.store(ptr + cols, tl.load(ptr + cols, mask=mask, other=0.0) + partial, mask=mask)


@triton.jit
def _opaque(x):
    """``x`` (int32) through an inline-asm move with side effects on a GPU (itself under the
    interpreter): nothing computed from it can be hoisted out of the loop it is in, or
    strength-reduced across iterations."""
    if _COMPILED:
        x = tl.inline_asm_elementwise(
            "mov.b32 $0, $1;", "=r,r", [x], dtype=tl.int32, is_pure=False, pack=1
        )
    return x


@triton.jit
def _loop_zero(index, count):
    """0 for a loop index ``0 <= index < count`` (the time loop's ``s`` and ``steps``), in a
    form no compiler pass can fold: the kernels' anti-hoisting zero. Added to an offset, a row
    or a column index, it makes that value (and the masks and addresses built from it) depend
    on the iteration, so Triton's loop-invariant code motion, which hoists pure address
    arithmetic out of even the ``disable_licm`` loops, leaves it in the loop instead of
    computing it once before the loop and holding it (spilled) across it. The kernels' uses
    (the launcher's switches in brackets): the forward's ``step_zero`` as its product's first
    row and in the parameters' offsets (``PARAMS_PER_STEP``, ``STEP_ZERO``), in the
    gate-by-gate norm's column offsets (``BN_GATE_BY_GATE``), the step's rows (``ROWS_PER_STEP``,
    :func:`_step_rows`) and the backward's ``step_zero``. Its companion, where a value must
    also not be strength-reduced across iterations: :func:`_opaque` (an inline-asm move; the
    row pieces' and row chunks' indices, the program columns, and the pair split's ``k_zero``
    = ``_opaque(chunk) - chunk`` times the K tile). docs/kernels-v2.md §6.1 / §6.2 have the
    measurements."""
    return index // count


# Compiled kernels (triton.jit made JITFunctions, not the interpreter's functions): _opaque's
# inline asm (the interpreter has none).
_COMPILED: tl.constexpr = tl.constexpr(isinstance(_opaque, triton.runtime.jit.JITFunction))


@triton.jit
def _piece_rows(piece, batch, ROW_PIECE: tl.constexpr, BLOCK_B: tl.constexpr):
    """Rows of whole-step row piece ``piece`` (``ROW_PIECE`` of them) and which are real.
    From four pieces on (B = 256) the piece index goes through :func:`_opaque`: LLVM
    otherwise kept every piece's per-element row offsets and addresses (invariant parts
    hoisted out of the disable_licm loops, strength-reduced induction variables) live across
    the time loop, and spilled them (B = 256 spill stores forward / backward, sm_80 104 / 424
    -> 8 / 52 B, sm_90a 0 / 268 -> 0 / 0; with the backward's columns also per piece,
    :func:`_program_columns` ``OPAQUE``: sm_80 8 / 8, sm_90a 0 / 8. At two pieces, B = 128,
    it cost: sm_90a backward 0 -> 28 B; docs/kernels-v2.md §6.1)."""
    if BLOCK_B // ROW_PIECE > 2:
        piece = _opaque(piece)
    rows = piece * ROW_PIECE + tl.arange(0, ROW_PIECE)
    return rows, rows < batch


@triton.jit
def _piece_state_rows(
    piece,
    batch,
    t,
    lengths_ptr,
    hidden,
    units,
    unit_in,
    ROW_PIECE: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """Row piece ``piece``'s rows (:func:`_piece_rows`), the mask and the offsets of its
    ``[rows, units]`` tile of a [B, hidden] state, and which rows are active at step ``t``."""
    rows, row_in = _piece_rows(piece, batch, ROW_PIECE, BLOCK_B)
    own_mask = row_in[:, None] & unit_in[None, :]
    own_offsets = rows[:, None] * hidden + units[None, :]
    active = (t < tl.load(lengths_ptr + rows, mask=row_in, other=0)) & row_in
    return rows, row_in, own_mask, own_offsets, active


@triton.jit
def _program_columns(
    hidden,
    NUM_GATES: tl.constexpr,
    GATES_PAD: tl.constexpr,
    BLOCK_U: tl.constexpr,
    OPAQUE: tl.constexpr = False,
):
    """This program's ``BLOCK_U`` units and its ``GATES_PAD * BLOCK_U`` gate columns (column
    ``gate * BLOCK_U + u``: gate row ``gate * hidden + unit u``), each with which are real;
    ``OPAQUE``: the program id through :func:`_opaque` (computed where it is called)."""
    pid = tl.program_id(0)
    if OPAQUE:
        pid = _opaque(pid)
    units = pid * BLOCK_U + tl.arange(0, BLOCK_U)
    cols = tl.arange(0, GATES_PAD * BLOCK_U)
    col_gate = cols // BLOCK_U
    col_unit = pid * BLOCK_U + cols % BLOCK_U
    col_in = (col_gate < NUM_GATES) & (col_unit < hidden)
    return units, units < hidden, col_gate * hidden + col_unit, col_in


@triton.jit
def _step_rows(
    zero,
    batch,
    hidden,
    state_size,
    unit_in,
    col_in,
    h_units,
    h_unit_in,
    units,
    BLOCK_B: tl.constexpr,
):
    """The kernels' ``ROWS_PER_STEP``: the step's ``BLOCK_B`` rows from ``zero`` (a
    step-dependent 0, ``s // steps``), which rows are real, and the masks and offsets built
    from them (``own_mask``, ``col_mask``, ``h_own_mask``, ``own_offsets``,
    ``h_own_offsets``, as the kernels define them before the loop), so that the
    per-element offsets of the step's tiles are computed in the time loop, not hoisted out
    of it and held across it."""
    rows = zero + tl.arange(0, BLOCK_B)
    row_in = rows < batch
    own_mask = row_in[:, None] & unit_in[None, :]
    col_mask = row_in[:, None] & col_in[None, :]
    h_own_mask = row_in[:, None] & h_unit_in[None, :]
    own_offsets = rows[:, None] * hidden + units[None, :]
    h_own_offsets = rows[:, None] * state_size + h_units[None, :]
    return rows, row_in, own_mask, col_mask, h_own_mask, own_offsets, h_own_offsets


@triton.jit
def _forward_pieces_cell(
    xg_ptr,
    b_hh_ptr,
    lengths_ptr,
    norm_weight_hh_ptr,
    c_prev_ptr,
    gates_ptr,
    xhat_hh_ptr,
    rstd_hh_ptr,
    xhat_c_ptr,
    ln_partials_ptr,
    t,
    generation,
    batch,
    hidden,
    stride_xg_t,
    stride_xg_b,
    HAS_BIAS: tl.constexpr,
    NUM_GATES: tl.constexpr,
    GATES_PAD: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,
    PROGRAMS_PAD: tl.constexpr,
    ROW_PIECE: tl.constexpr,
):
    """The forward's LSTM step with layer norm in whole-step row pieces, between its first two
    barriers (``ROW_PIECE`` < ``BLOCK_B``): every program has published the row partials of
    its pre-norm product ``acc`` (barrier ``generation``) and staged ``acc`` in this step's
    ``xhat_hh`` rows. Per piece of ``ROW_PIECE`` rows: ``acc`` read back, normalised (the
    same per-row statistics as in one piece: :func:`layer_norm_merge`) and ``xhat_hh``
    written over it, the gates and c~ computed, the gates stored, c~ staged in this step's
    ``xhat_c`` rows and its row partials published for barrier ``generation + 1``. The
    norm parameters and the bias are read per piece (a few hundred bytes from L1 / L2)."""
    pid = tl.program_id(0)
    gate_width = NUM_GATES * hidden
    units, unit_in, gate_col, col_in = _program_columns(hidden, NUM_GATES, GATES_PAD, BLOCK_U)
    slot_hh = row_values_slot(ln_partials_ptr, generation, 2, BLOCK_B)
    for piece in tl.range(0, BLOCK_B // ROW_PIECE, num_stages=1, disable_licm=True):
        rows, row_in = _piece_rows(piece, batch, ROW_PIECE, BLOCK_B)
        col_mask = row_in[:, None] & col_in[None, :]
        own_mask = row_in[:, None] & unit_in[None, :]
        xhat_hh_t = _step_tile(xhat_hh_ptr, t, batch, rows, gate_col, gate_width)
        acc = tl.load(xhat_hh_t, mask=col_mask, other=0.0, cache_modifier=".cg")
        mean_row, var_row = layer_norm_merge(
            slot_hh,
            rows,
            batch,
            hidden,
            gate_width.to(tl.float32),
            NUM_GATES,
            BLOCK_U,
            PROGRAMS_PAD,
            BLOCK_B,
        )
        rstd_row = 1.0 / tl.sqrt(var_row + NORM_EPS)
        xhat_hh = (acc - mean_row[:, None]) * rstd_row[:, None]
        tl.store(
            rstd_hh_ptr + tl.cast(t, tl.int64) * batch + rows, rstd_row, mask=row_in & (pid == 0)
        )
        # (xhat_hh over acc: each element's store needs its own loaded value, so no thread
        # writes an element before it has been read.)
        tl.store(xhat_hh_t, xhat_hh, mask=col_mask)
        norm_weight_hh = tl.load(norm_weight_hh_ptr + gate_col, mask=col_in, other=0.0).to(
            tl.float32
        )
        a = xhat_hh * norm_weight_hh[None, :]
        if HAS_BIAS:
            a = a + tl.load(b_hh_ptr + gate_col, mask=col_in, other=0.0).to(tl.float32)[None, :]
        x = tl.load(
            xg_ptr
            + tl.cast(t, tl.int64) * stride_xg_t
            + rows[:, None] * stride_xg_b
            + gate_col[None, :],
            mask=col_mask,
            other=0.0,
        ).to(tl.float32)
        pre = x + a
        i, f, g, o, c_cand = lstm_candidate(
            gate_of(pre, 0, GATES_PAD, BLOCK_U),
            gate_of(pre, 1, GATES_PAD, BLOCK_U),
            gate_of(pre, 2, GATES_PAD, BLOCK_U),
            gate_of(pre, 3, GATES_PAD, BLOCK_U),
            _own_state(c_prev_ptr, t, batch, rows, units, hidden, own_mask),
        )
        gates_t = _step_tile(gates_ptr, t, batch, rows, units, gate_width)
        tl.store(gates_t, i, mask=own_mask)
        tl.store(gates_t + hidden, f, mask=own_mask)
        tl.store(gates_t + 2 * hidden, g, mask=own_mask)
        tl.store(gates_t + 3 * hidden, o, mask=own_mask)
        tl.store(_step_tile(xhat_c_ptr, t, batch, rows, units, hidden), c_cand, mask=own_mask)
        store_row_values(
            layer_norm_partials(c_cand, unit_in, hidden, 1, BLOCK_U),
            ln_partials_ptr,
            generation + 1,
            rows,
            batch,
            BLOCK_B,
        )


@triton.jit
def _forward_pieces_state(
    lengths_ptr,
    norm_weight_c_ptr,
    norm_bias_c_ptr,
    output_ptr,
    h_n_ptr,
    c_n_ptr,
    h_prev_ptr,
    c_prev_ptr,
    gates_ptr,
    rstd_c_ptr,
    xhat_c_ptr,
    ln_partials_ptr,
    h_masked_ptr,
    s,
    t,
    t_next,
    steps,
    generation,
    batch,
    hidden,
    stride_out_t,
    stride_out_b,
    seed,
    dropout_base,
    zoneout_cell_base,
    zoneout_hidden_base,
    dropout_p,
    dropout_keep_scale,
    zoneout_cell_p,
    zoneout_hidden_p,
    TRAINING: tl.constexpr,
    HAS_NORM_BIAS_C: tl.constexpr,
    USE_ZONEOUT_CELL: tl.constexpr,
    USE_ZONEOUT_HIDDEN: tl.constexpr,
    MASKED_EXCHANGE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,
    PROGRAMS_PAD: tl.constexpr,
    ROW_PIECE: tl.constexpr,
):
    """The rest of the forward's LSTM step in row pieces, after barrier ``generation + 1``
    (:func:`_forward_pieces_cell` staged c~ in ``xhat_c`` and published its partials): per
    piece c~ read back and normalised (``xhat_c`` written over it), h = o tanh(N(c~)),
    zoneout, the outputs and the next state rows (``h_prev`` / ``c_prev`` at ``t_next``, or
    ``h_n`` / ``c_n`` at the last step, and ``m_h * h`` with ``MASKED_EXCHANGE``)."""
    pid = tl.program_id(0)
    gate_width = 4 * hidden
    units = pid * BLOCK_U + tl.arange(0, BLOCK_U)
    unit_in = units < hidden
    slot_c = row_values_slot(ln_partials_ptr, generation + 1, 2, BLOCK_B)
    weight_c = tl.load(norm_weight_c_ptr + units, mask=unit_in, other=0.0).to(tl.float32)
    for piece in tl.range(0, BLOCK_B // ROW_PIECE, num_stages=1, disable_licm=True):
        rows, row_in = _piece_rows(piece, batch, ROW_PIECE, BLOCK_B)
        own_mask = row_in[:, None] & unit_in[None, :]
        active = (t < tl.load(lengths_ptr + rows, mask=row_in, other=0)) & row_in
        xhat_c_t = _step_tile(xhat_c_ptr, t, batch, rows, units, hidden)
        c_cand = tl.load(xhat_c_t, mask=own_mask, other=0.0, cache_modifier=".cg")
        mean_c, var_c = layer_norm_merge(
            slot_c,
            rows,
            batch,
            hidden,
            hidden.to(tl.float32),
            1,
            BLOCK_U,
            PROGRAMS_PAD,
            BLOCK_B,
        )
        rstd_c = 1.0 / tl.sqrt(var_c + NORM_EPS)
        xhat_c = (c_cand - mean_c[:, None]) * rstd_c[:, None]
        tl.store(rstd_c_ptr + tl.cast(t, tl.int64) * batch + rows, rstd_c, mask=row_in & (pid == 0))
        tl.store(xhat_c_t, xhat_c, mask=own_mask)  # over c~, as xhat_hh over acc
        c_normed = xhat_c * weight_c[None, :]
        if HAS_NORM_BIAS_C:
            c_normed = (
                c_normed
                + tl.load(norm_bias_c_ptr + units, mask=unit_in, other=0.0).to(tl.float32)[None, :]
            )
        o = tl.load(
            _step_tile(gates_ptr, t, batch, rows, units, gate_width) + 3 * hidden,
            mask=own_mask,
            other=0.0,
            cache_modifier=".cg",
        )
        h_cand, _ = lstm_hidden(o, c_normed)
        c_prev = _own_state(c_prev_ptr, t, batch, rows, units, hidden, own_mask)
        if USE_ZONEOUT_CELL:
            d_c = zoneout_weight(seed, zoneout_cell_base, t, rows, units, zoneout_cell_p, TRAINING)
            c_next = zoneout(c_prev, c_cand, d_c)
        else:
            c_next = c_cand
        c_kept = tl.where(active[:, None], c_next, c_prev)
        tl.store(
            _step_tile(c_prev_ptr, t_next, batch, rows, units, hidden),
            c_kept,
            mask=own_mask & (s + 1 < steps),
        )
        own_offsets = rows[:, None] * hidden + units[None, :]
        tl.store(c_n_ptr + own_offsets, c_kept, mask=own_mask & (s + 1 == steps))
        h_prev = _own_state(h_prev_ptr, t, batch, rows, units, hidden, own_mask)
        if USE_ZONEOUT_HIDDEN:
            d_h = zoneout_weight(
                seed, zoneout_hidden_base, t, rows, units, zoneout_hidden_p, TRAINING
            )
            h_next = zoneout(h_prev, h_cand, d_h)
        else:
            h_next = h_cand
        tl.store(
            output_ptr
            + tl.cast(t, tl.int64) * stride_out_t
            + rows[:, None] * stride_out_b
            + units[None, :],
            tl.where(active[:, None], h_next, 0.0),
            mask=own_mask,
        )
        h_kept = tl.where(active[:, None], h_next, h_prev)
        tl.store(h_n_ptr + own_offsets, h_kept, mask=own_mask & (s + 1 == steps))
        tl.store(
            _step_tile(h_prev_ptr, t_next, batch, rows, units, hidden),
            h_kept,
            mask=own_mask & (s + 1 < steps),
        )
        if MASKED_EXCHANGE:
            m_h = dropout_mask(seed, dropout_base, rows, units, dropout_p, dropout_keep_scale)
            tl.store(
                h_masked_ptr + ((s + 1) % 2) * batch * hidden + own_offsets,
                m_h * h_kept,
                mask=own_mask & (s + 1 < steps),
            )


@triton.jit
def _backward_pieces_cell_norm(
    grad_output_ptr,
    grad_h0_ptr,
    lengths_ptr,
    norm_weight_c_ptr,
    norm_bias_c_ptr,
    gates_ptr,
    xhat_c_ptr,
    grad_acc_ptr,
    ln_partials_ptr,
    grad_norm_weight_c_ptr,
    grad_norm_bias_c_ptr,
    t,
    generation,
    batch,
    hidden,
    stride_go_t,
    stride_go_b,
    seed,
    zoneout_hidden_base,
    zoneout_hidden_p,
    TRAINING: tl.constexpr,
    HAS_NORM_BIAS_C: tl.constexpr,
    USE_ZONEOUT_HIDDEN: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,
    ROW_PIECE: tl.constexpr,
):
    """The backward's LSTM step with layer norm in whole-step row pieces, before its first
    barrier (``generation``): per piece ``dh`` (``grad_h0``) plus ``dL/d output``, zoneout,
    ``dL/d o`` and ``dL/d N(c~)``, the c norm's gradient sums (added into their output rows,
    :func:`_add_to_column_sums`), and the row partials of ``dy = dL/d N(c~) * gamma_c`` published; ``dy`` and
    ``dL/d o`` are staged in this step's ``grad_acc`` rows (gate 0 and gate 3 columns of the
    program's units) for :func:`_backward_pieces_cell`."""
    pid = tl.program_id(0)
    gate_width = 4 * hidden
    t64 = tl.cast(t, tl.int64)
    units = pid * BLOCK_U + tl.arange(0, BLOCK_U)
    unit_in = units < hidden
    weight_c = tl.load(norm_weight_c_ptr + units, mask=unit_in, other=0.0).to(tl.float32)
    for piece in tl.range(0, BLOCK_B // ROW_PIECE, num_stages=1, disable_licm=True):
        rows, _, own_mask, own_offsets, active = _piece_state_rows(
            piece, batch, t, lengths_ptr, hidden, units, unit_in, ROW_PIECE, BLOCK_B
        )
        grad_out = tl.load(
            grad_output_ptr + t64 * stride_go_t + rows[:, None] * stride_go_b + units[None, :],
            mask=own_mask,
            other=0.0,
        ).to(tl.float32)
        dh_total = tl.where(
            active[:, None], _own_rows(grad_h0_ptr, own_offsets, own_mask) + grad_out, 0.0
        )
        if USE_ZONEOUT_HIDDEN:
            d_h = zoneout_weight(
                seed, zoneout_hidden_base, t, rows, units, zoneout_hidden_p, TRAINING
            )
            dh_cand = (1.0 - d_h) * dh_total
        else:
            dh_cand = dh_total
        gates_t = _step_tile(gates_ptr, t, batch, rows, units, gate_width)
        o = tl.load(gates_t + 3 * hidden, mask=own_mask, other=0.0)
        xhat_c = tl.load(
            _step_tile(xhat_c_ptr, t, batch, rows, units, hidden), mask=own_mask, other=0.0
        )
        c_normed = xhat_c * weight_c[None, :]
        if HAS_NORM_BIAS_C:
            c_normed = (
                c_normed
                + tl.load(norm_bias_c_ptr + units, mask=unit_in, other=0.0).to(tl.float32)[None, :]
            )
        d_pre_o, dc_normed = lstm_hidden_backward(dh_cand, o, tanh(c_normed))
        _add_to_column_sums(
            grad_norm_weight_c_ptr, units, unit_in, tl.sum(dc_normed * xhat_c, axis=0)
        )
        _add_to_column_sums(grad_norm_bias_c_ptr, units, unit_in, tl.sum(dc_normed, axis=0))
        dy_hat = dc_normed * weight_c[None, :]
        staged = _step_tile(grad_acc_ptr, t, batch, rows, units, gate_width)
        tl.store(staged, dy_hat, mask=own_mask)
        tl.store(staged + 3 * hidden, d_pre_o, mask=own_mask)
        store_row_values(
            row_sums_partials(dy_hat, dy_hat * xhat_c, xhat_c, unit_in),
            ln_partials_ptr,
            generation,
            rows,
            batch,
            BLOCK_B,
        )


@triton.jit
def _backward_pieces_cell(
    lengths_ptr,
    norm_weight_hh_ptr,
    gates_ptr,
    c_prev_ptr,
    xhat_c_ptr,
    rstd_c_ptr,
    xhat_hh_ptr,
    grad_xg_ptr,
    grad_acc_ptr,
    grad_c0_ptr,
    ln_partials_ptr,
    grad_b_hh_ptr,
    grad_norm_weight_hh_ptr,
    t,
    generation,
    batch,
    hidden,
    seed,
    zoneout_cell_base,
    zoneout_cell_p,
    TRAINING: tl.constexpr,
    USE_ZONEOUT_CELL: tl.constexpr,
    GATES_PAD: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,
    PROGRAMS_PAD: tl.constexpr,
    ROW_PIECE: tl.constexpr,
):
    """Between the backward's first two barriers (``generation``, ``generation + 1``), per
    row piece: the c norm's backward from the staged ``dy`` and the merged row sums, zoneout
    of c, the cell backward, ``dc`` written back to ``grad_c0``, ``dL/d xg`` stored, the
    recurrent norm's gradient sums (added into their output rows), and ``dL/d a``
    staged in this step's ``grad_acc`` rows with the row partials of ``dL/d a * gamma_hh``
    published for barrier ``generation + 1``."""
    gate_width = 4 * hidden
    t64 = tl.cast(t, tl.int64)
    hidden_f = hidden.to(tl.float32)
    slot_c = row_values_slot(ln_partials_ptr, generation, 3, BLOCK_B)
    for piece in tl.range(0, BLOCK_B // ROW_PIECE, num_stages=1, disable_licm=True):
        # (the columns per piece, as the rows: _piece_rows)
        units, unit_in, gate_col, col_in = _program_columns(
            hidden, 4, GATES_PAD, BLOCK_U, BLOCK_B // ROW_PIECE > 2
        )
        rows, row_in, own_mask, own_offsets, active = _piece_state_rows(
            piece, batch, t, lengths_ptr, hidden, units, unit_in, ROW_PIECE, BLOCK_B
        )
        col_mask = row_in[:, None] & col_in[None, :]
        sum_dy, sum_dy_xhat, sum_xhat = row_sums_merge(slot_c, rows, batch, PROGRAMS_PAD, BLOCK_B)
        staged = _step_tile(grad_acc_ptr, t, batch, rows, units, gate_width)
        dy_hat = tl.load(staged, mask=own_mask, other=0.0, cache_modifier=".cg")
        xhat_c = tl.load(
            _step_tile(xhat_c_ptr, t, batch, rows, units, hidden), mask=own_mask, other=0.0
        )
        rstd_c = tl.load(rstd_c_ptr + t64 * batch + rows, mask=row_in, other=0.0)
        dc_from_h = (
            (
                dy_hat
                - (sum_dy / hidden_f)[:, None]
                - (xhat_c - (sum_xhat / hidden_f)[:, None]) * (sum_dy_xhat / hidden_f)[:, None]
            )
            * rstd_c[:, None]
            * active.to(tl.float32)[:, None]
        )
        dc = _own_rows(grad_c0_ptr, own_offsets, own_mask)
        dc_state = tl.where(active[:, None], dc, 0.0)
        if USE_ZONEOUT_CELL:
            d_c = zoneout_weight(seed, zoneout_cell_base, t, rows, units, zoneout_cell_p, TRAINING)
            dc_cand = (1.0 - d_c) * dc_state + dc_from_h
            dc_direct = d_c * dc_state
        else:
            dc_cand = dc_state + dc_from_h
            dc_direct = tl.zeros((ROW_PIECE, BLOCK_U), tl.float32)
        gates_t = _step_tile(gates_ptr, t, batch, rows, units, gate_width)
        d_pre_i, d_pre_f, d_pre_g, dc_through_f = lstm_candidate_backward(
            dc_cand,
            tl.load(gates_t, mask=own_mask, other=0.0),
            tl.load(gates_t + hidden, mask=own_mask, other=0.0),
            tl.load(gates_t + 2 * hidden, mask=own_mask, other=0.0),
            tl.load(
                _step_tile(c_prev_ptr, t, batch, rows, units, hidden), mask=own_mask, other=0.0
            ),
        )
        dc_kept = tl.where(active[:, None], dc_direct + dc_through_f, dc)
        d_pre_o = tl.load(staged + 3 * hidden, mask=own_mask, other=0.0, cache_modifier=".cg")
        d_pre = gates_to_tile(d_pre_i, d_pre_f, d_pre_g, d_pre_o, GATES_PAD, BLOCK_U)
        tl.store(
            _step_tile(grad_xg_ptr, t, batch, rows, gate_col, gate_width), d_pre, mask=col_mask
        )
        _add_to_column_sums(grad_b_hh_ptr, gate_col, col_in, tl.sum(d_pre, axis=0))
        xhat_hh = tl.load(
            _step_tile(xhat_hh_ptr, t, batch, rows, gate_col, gate_width),
            mask=col_mask,
            other=0.0,
        )
        _add_to_column_sums(
            grad_norm_weight_hh_ptr, gate_col, col_in, tl.sum(d_pre * xhat_hh, axis=0)
        )
        dy_hh = (
            d_pre
            * tl.load(norm_weight_hh_ptr + gate_col, mask=col_in, other=0.0).to(tl.float32)[None, :]
        )
        # Every thread has read this piece's dc and the staged values before any writes.
        tl.debug_barrier()
        tl.store(grad_c0_ptr + own_offsets, dc_kept, mask=own_mask)
        tl.store(
            _step_tile(grad_acc_ptr, t, batch, rows, gate_col, gate_width), d_pre, mask=col_mask
        )
        store_row_values(
            row_sums_partials(dy_hh, dy_hh * xhat_hh, xhat_hh, col_in),
            ln_partials_ptr,
            generation + 1,
            rows,
            batch,
            BLOCK_B,
        )


@triton.jit
def _backward_pieces_recurrent_norm(
    grad_output_ptr,
    lengths_ptr,
    norm_weight_hh_ptr,
    xhat_hh_ptr,
    rstd_hh_ptr,
    grad_acc_ptr,
    grad_h0_ptr,
    ln_partials_ptr,
    t,
    generation,
    batch,
    hidden,
    stride_go_t,
    stride_go_b,
    seed,
    zoneout_hidden_base,
    zoneout_hidden_p,
    TRAINING: tl.constexpr,
    USE_ZONEOUT_HIDDEN: tl.constexpr,
    GATES_PAD: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,
    PROGRAMS_PAD: tl.constexpr,
    ROW_PIECE: tl.constexpr,
):
    """After the backward's second barrier (``generation``), per row piece: ``dL/d acc`` from
    the staged ``dL/d a`` and the merged row sums, written over it in ``grad_acc`` (the
    operand every program reads after the end-of-step barrier), and ``dh`` less its
    recurrent term (inactive rows: unchanged) written back to ``grad_h0``."""
    gate_width = 4 * hidden
    t64 = tl.cast(t, tl.int64)
    width_f = gate_width.to(tl.float32)
    slot_hh = row_values_slot(ln_partials_ptr, generation, 3, BLOCK_B)
    for piece in tl.range(0, BLOCK_B // ROW_PIECE, num_stages=1, disable_licm=True):
        # (the columns per piece, as the rows: _piece_rows)
        units, unit_in, gate_col, col_in = _program_columns(
            hidden, 4, GATES_PAD, BLOCK_U, BLOCK_B // ROW_PIECE > 2
        )
        rows, row_in, own_mask, own_offsets, active = _piece_state_rows(
            piece, batch, t, lengths_ptr, hidden, units, unit_in, ROW_PIECE, BLOCK_B
        )
        col_mask = row_in[:, None] & col_in[None, :]
        sum_dy, sum_dy_xhat, sum_xhat = row_sums_merge(slot_hh, rows, batch, PROGRAMS_PAD, BLOCK_B)
        grad_acc_t = _step_tile(grad_acc_ptr, t, batch, rows, gate_col, gate_width)
        d_a = tl.load(grad_acc_t, mask=col_mask, other=0.0, cache_modifier=".cg")
        xhat_hh = tl.load(
            _step_tile(xhat_hh_ptr, t, batch, rows, gate_col, gate_width),
            mask=col_mask,
            other=0.0,
        )
        rstd_row = tl.load(rstd_hh_ptr + t64 * batch + rows, mask=row_in, other=0.0)
        dy_hat = (
            d_a
            * tl.load(norm_weight_hh_ptr + gate_col, mask=col_in, other=0.0).to(tl.float32)[None, :]
        )
        # Centred as bn_backward (the saved xhat's row mean is not 0 in float32).
        xc_hh = xhat_hh - (sum_xhat / width_f)[:, None]
        d_acc = (
            (dy_hat - (sum_dy / width_f)[:, None] - xc_hh * (sum_dy_xhat / width_f)[:, None])
            * rstd_row[:, None]
            * active.to(tl.float32)[:, None]
        )
        dh = _own_rows(grad_h0_ptr, own_offsets, own_mask)
        if USE_ZONEOUT_HIDDEN:
            grad_out = tl.load(
                grad_output_ptr + t64 * stride_go_t + rows[:, None] * stride_go_b + units[None, :],
                mask=own_mask,
                other=0.0,
            ).to(tl.float32)
            d_h = zoneout_weight(
                seed, zoneout_hidden_base, t, rows, units, zoneout_hidden_p, TRAINING
            )
            dh_kept = tl.where(
                active[:, None], d_h * tl.where(active[:, None], dh + grad_out, 0.0), dh
            )
        else:
            dh_kept = tl.where(active[:, None], 0.0, dh)
        tl.debug_barrier()
        tl.store(grad_acc_t, d_acc, mask=col_mask)
        tl.store(grad_h0_ptr + own_offsets, dh_kept, mask=own_mask)


@triton.jit
def _lstm_batch_norm_backward_gate_by_gate(
    d_pre_gates,
    grad_xg_ptr,
    grad_acc_ptr,
    xhat_hh_ptr,
    rstd_hh_ptr,
    norm_weight_hh_ptr,
    grad_b_hh_ptr,
    grad_norm_weight_hh_ptr,
    t,
    batch,
    rows,
    units,
    unit_in,
    hidden,
    active_f,
    count,
    TRAINING: tl.constexpr,
):
    """The backward's steps 1 (dL/d xg) and 2 for the LSTM with batch norm, one gate at a
    time (the pair split at 256 rows, the kernel's ``GATE_BY_GATE``): per gate, from its
    ``[rows, units]`` tile of dL/d a (``d_pre_gates``, i f g o), dL/d xg, the gradient sums of
    b_hh and gamma_hh (added into their output rows, :func:`_add_to_column_sums`), the batch
    norm's backward (gamma_hh, the saved xhat and rstd of the gate's columns read for the
    step) and dL/d acc, stored; no ``[rows, G * units]`` tile. The same values as the
    whole-tile form."""
    gate_width = 4 * hidden
    own_mask = (rows < batch)[:, None] & unit_in[None, :]
    for gate in tl.static_range(4):
        d_a = d_pre_gates[gate]
        cols = gate * hidden + units
        tl.store(_step_tile(grad_xg_ptr, t, batch, rows, cols, gate_width), d_a, mask=own_mask)
        _add_to_column_sums(grad_b_hh_ptr, cols, unit_in, tl.sum(d_a, axis=0))
        xhat = tl.load(
            _step_tile(xhat_hh_ptr, t, batch, rows, cols, gate_width), mask=own_mask, other=0.0
        )
        _add_to_column_sums(grad_norm_weight_hh_ptr, cols, unit_in, tl.sum(d_a * xhat, axis=0))
        rstd = tl.load(
            rstd_hh_ptr + tl.cast(t, tl.int64) * gate_width + cols, mask=unit_in, other=0.0
        )
        weight = tl.load(norm_weight_hh_ptr + cols, mask=unit_in, other=0.0).to(tl.float32)
        d_acc = bn_backward(d_a * weight[None, :], xhat, rstd, active_f, count, TRAINING)
        tl.store(_step_tile(grad_acc_ptr, t, batch, rows, cols, gate_width), d_acc, mask=own_mask)


@triton.jit
def _lstm_batch_norm_units_backward(
    grad_output_ptr,
    gates_ptr,
    c_prev_ptr,
    xhat_c_ptr,
    rstd_c_ptr,
    norm_weight_c_ptr,
    norm_bias_c_ptr,
    grad_h0_ptr,
    grad_c0_ptr,
    grad_norm_weight_c_ptr,
    grad_norm_bias_c_ptr,
    grad_xg_ptr,
    grad_acc_ptr,
    xhat_hh_ptr,
    rstd_hh_ptr,
    norm_weight_hh_ptr,
    grad_b_hh_ptr,
    grad_norm_weight_hh_ptr,
    t,
    batch,
    hidden,
    stride_go_t,
    stride_go_b,
    rows,
    active,
    active_f,
    count,
    units,
    seed,
    zoneout_hidden_base,
    zoneout_hidden_p,
    zoneout_cell_base,
    zoneout_cell_p,
    TRAINING: tl.constexpr,
    HAS_NORM_BIAS_C: tl.constexpr,
    USE_ZONEOUT_HIDDEN: tl.constexpr,
    USE_ZONEOUT_CELL: tl.constexpr,
):
    """The backward's steps 1 and 2 of the LSTM with batch norm for ``units`` (some of the
    program's units; the kernel's ``UNIT_HALVES``: one half at a time), its state in memory:
    the output gradient and zoneout of h, the cell backward through N(c~) (its gradient
    sums added into their output rows), dh / dc written back to ``grad_h0`` / ``grad_c0``
    (each thread's reads of them before a CTA barrier), and the norm of W_hh h gate by gate
    (:func:`_lstm_batch_norm_backward_gate_by_gate`). Every quantity is per unit column
    (batch norm's statistics are over the rows), so the units' subsets are independent; the
    same values, in the same order, as the kernel's whole-tile form."""
    t64 = tl.cast(t, tl.int64)
    unit_in = units < hidden
    own_mask = (rows < batch)[:, None] & unit_in[None, :]
    own_offsets = rows[:, None] * hidden + units[None, :]
    grad_out = tl.load(
        grad_output_ptr + t64 * stride_go_t + rows[:, None] * stride_go_b + units[None, :],
        mask=own_mask,
        other=0.0,
    ).to(tl.float32)
    dh_total = tl.where(
        active[:, None], _own_rows(grad_h0_ptr, own_offsets, own_mask) + grad_out, 0.0
    )
    if USE_ZONEOUT_HIDDEN:
        d_h = zoneout_weight(seed, zoneout_hidden_base, t, rows, units, zoneout_hidden_p, TRAINING)
        dh_cand = (1.0 - d_h) * dh_total
        dh_direct = d_h * dh_total
    else:
        dh_cand = dh_total
        dh_direct = tl.zeros_like(dh_total)
    gates_t = _step_tile(gates_ptr, t, batch, rows, units, 4 * hidden)
    i = tl.load(gates_t, mask=own_mask, other=0.0)
    f = tl.load(gates_t + hidden, mask=own_mask, other=0.0)
    g = tl.load(gates_t + 2 * hidden, mask=own_mask, other=0.0)
    o = tl.load(gates_t + 3 * hidden, mask=own_mask, other=0.0)
    c_prev = tl.load(
        _step_tile(c_prev_ptr, t, batch, rows, units, hidden), mask=own_mask, other=0.0
    )
    xhat_c = tl.load(
        _step_tile(xhat_c_ptr, t, batch, rows, units, hidden), mask=own_mask, other=0.0
    )
    norm_weight_c = tl.load(norm_weight_c_ptr + units, mask=unit_in, other=0.0).to(tl.float32)
    c_normed = xhat_c * norm_weight_c[None, :]
    if HAS_NORM_BIAS_C:
        norm_bias_c = tl.load(norm_bias_c_ptr + units, mask=unit_in, other=0.0).to(tl.float32)
        c_normed = c_normed + norm_bias_c[None, :]
    d_pre_o, dc_normed = lstm_hidden_backward(dh_cand, o, tanh(c_normed))
    _add_to_column_sums(grad_norm_weight_c_ptr, units, unit_in, tl.sum(dc_normed * xhat_c, axis=0))
    _add_to_column_sums(grad_norm_bias_c_ptr, units, unit_in, tl.sum(dc_normed, axis=0))
    rstd_c = tl.load(rstd_c_ptr + t64 * hidden + units, mask=unit_in, other=0.0)
    dc_from_h = bn_backward(
        dc_normed * norm_weight_c[None, :], xhat_c, rstd_c, active_f, count, TRAINING
    )
    dc_state = tl.where(active[:, None], _own_rows(grad_c0_ptr, own_offsets, own_mask), 0.0)
    if USE_ZONEOUT_CELL:
        d_c = zoneout_weight(seed, zoneout_cell_base, t, rows, units, zoneout_cell_p, TRAINING)
        dc_cand = (1.0 - d_c) * dc_state + dc_from_h
        dc_direct = d_c * dc_state
    else:
        dc_cand = dc_state + dc_from_h
        dc_direct = tl.zeros_like(dc_state)
    d_pre_i, d_pre_f, d_pre_g, dc_through_f = lstm_candidate_backward(dc_cand, i, f, g, c_prev)
    dc_kept = tl.where(
        active[:, None], dc_direct + dc_through_f, _own_rows(grad_c0_ptr, own_offsets, own_mask)
    )
    dh_kept = tl.where(active[:, None], dh_direct, _own_rows(grad_h0_ptr, own_offsets, own_mask))
    tl.debug_barrier()
    tl.store(grad_h0_ptr + own_offsets, dh_kept, mask=own_mask)
    tl.store(grad_c0_ptr + own_offsets, dc_kept, mask=own_mask)
    _lstm_batch_norm_backward_gate_by_gate(
        (d_pre_i, d_pre_f, d_pre_g, d_pre_o),
        grad_xg_ptr,
        grad_acc_ptr,
        xhat_hh_ptr,
        rstd_hh_ptr,
        norm_weight_hh_ptr,
        grad_b_hh_ptr,
        grad_norm_weight_hh_ptr,
        t,
        batch,
        rows,
        units,
        unit_in,
        hidden,
        active_f,
        count,
        TRAINING,
    )


@triton.jit
def _forward_batch_norm_gate(
    gate: tl.constexpr,
    xg_ptr,
    b_hh_ptr,
    norm_weight_hh_ptr,
    running_mean_hh_ptr,
    running_var_hh_ptr,
    batch_mean_hh_ptr,
    batch_var_hh_ptr,
    xhat_hh_ptr,
    rstd_hh_ptr,
    t,
    stat_steps,
    batch,
    rows,
    units,
    unit_in,
    hidden,
    active_f,
    stride_xg_t,
    stride_xg_b,
    NUM_GATES: tl.constexpr,
    TRAINING: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    """The forward's step 3 with batch norm for one gate (the kernel's
    ``BN_GATE_BY_GATE``): the gate's ``[rows, units]`` columns of the pre-norm product, staged
    in this step's ``xhat_hh`` rows, read back, normalised over the active rows (batch
    statistics stored, or the running ones read), ``xhat_hh`` and ``rstd_hh`` written, and
    (``x``, ``a``) returned: the gate's ``xg`` columns and ``N(W_hh h) gamma_hh + b_hh``.
    The same values as the whole-tile form; no ``[rows, G * units]`` tile is live."""
    gate_width = NUM_GATES * hidden
    t64 = tl.cast(t, tl.int64)
    cols = gate * hidden + units
    own_mask = (rows < batch)[:, None] & unit_in[None, :]
    xhat_t = _step_tile(xhat_hh_ptr, t, batch, rows, cols, gate_width)
    acc = tl.load(xhat_t, mask=own_mask, other=0.0, cache_modifier=".cg")
    if TRAINING:
        mean, var, _ = active_column_stats(acc, active_f)
        tl.store(batch_mean_hh_ptr + t64 * gate_width + cols, mean, mask=unit_in)
        tl.store(batch_var_hh_ptr + t64 * gate_width + cols, var, mask=unit_in)
    else:
        stat_row = tl.minimum(t, stat_steps - 1).to(tl.int64)
        mean = tl.load(
            running_mean_hh_ptr + stat_row * gate_width + cols, mask=unit_in, other=0.0
        ).to(tl.float32)
        var = tl.load(
            running_var_hh_ptr + stat_row * gate_width + cols, mask=unit_in, other=1.0
        ).to(tl.float32)
    rstd = 1.0 / tl.sqrt(var + NORM_EPS)
    xhat = (acc - mean[None, :]) * rstd[None, :]
    tl.store(rstd_hh_ptr + t64 * gate_width + cols, rstd, mask=unit_in)
    # (xhat over acc: in training each element's store needs the column sums of every
    # loaded value, so no thread writes an element before every thread has read it; with the
    # running statistics a CTA barrier orders them.)
    if not TRAINING:
        tl.debug_barrier()
    tl.store(xhat_t, xhat, mask=own_mask)
    weight = tl.load(norm_weight_hh_ptr + cols, mask=unit_in, other=0.0).to(tl.float32)
    a = xhat * weight[None, :]
    if HAS_BIAS:
        a = a + tl.load(b_hh_ptr + cols, mask=unit_in, other=0.0).to(tl.float32)[None, :]
    x = tl.load(
        xg_ptr + t64 * stride_xg_t + rows[:, None] * stride_xg_b + cols[None, :],
        mask=own_mask,
        other=0.0,
    ).to(tl.float32)
    return x, a


@triton.jit
def _barriers_per_step(CELL: tl.constexpr, NORM: tl.constexpr, HAS_PROJ: tl.constexpr):
    """End-of-step barrier, plus one per layer-normalised quantity (W_hh h, and c for LSTM),
    plus one for the projection's exchange of h~ (forward) or dL/dh~ (backward)."""
    count = 1
    if NORM == NORM_LAYER:
        count += 1
        if CELL == LSTM:
            count += 1
    if HAS_PROJ:
        count += 1
    return count


@triton.jit(do_not_specialize=[*_RUNTIME_SCALARS, "stat_steps"])
def recurrence_forward_kernel(
    # ---- pointers: inputs (xg's dtype D unless noted; G gates, H hidden, S BN buffers)
    xg_ptr,  # [T, B, G*H] input projection, strides (stride_xg_t, stride_xg_b, 1)
    h0_ptr,  # [B, H] initial hidden state
    c0_ptr,  # [B, H] initial cell state (LSTM; unused otherwise)
    w_hh_ptr,  # [G*H, H] recurrent weights, torch's gate order
    b_hh_ptr,  # [G*H] recurrent bias (HAS_BIAS)
    lengths_ptr,  # [B] int64 sequence lengths (the launcher passes T when None)
    norm_weight_hh_ptr,  # [G*H] gamma of N(W_hh h) (NORM != none), any float dtype
    norm_weight_c_ptr,  # [H] gamma of N(c) (LSTM, NORM != none)
    norm_bias_c_ptr,  # [H] beta of N(c) (HAS_NORM_BIAS_C)
    running_mean_hh_ptr,  # [S, G*H] BN running mean (NORM == batch, eval)
    running_var_hh_ptr,  # [S, G*H]
    running_mean_c_ptr,  # [S, H]
    running_var_c_ptr,  # [S, H]
    # ---- pointers: outputs
    output_ptr,  # [T, B, H] h_t, 0 where t >= len_b, strides (stride_out_t, stride_out_b, 1)
    h_n_ptr,  # [B, H] final hidden state
    c_n_ptr,  # [B, H] final cell state (LSTM)
    batch_mean_hh_ptr,  # [T, G*H] BN batch statistics of W_hh h (NORM == batch, training)
    batch_var_hh_ptr,  # [T, G*H] biased variance
    batch_mean_c_ptr,  # [T, H] BN batch statistics of c~ (LSTM)
    batch_var_c_ptr,  # [T, H]
    # ---- pointers: saved for backward, float32, indexed by time index t
    h_prev_ptr,  # [T, B, H] state entering step t. Row t_first holds h0 (the launcher
    #              writes it); each step writes the next row: this is also the buffer through
    #              which programs exchange h_{t-1} (every row is written once: no race).
    c_prev_ptr,  # [T, B, H] c_{t-1} (LSTM)
    gates_ptr,  # [T, B, G*H] gate activations: i f g o | r z n | h~ (RNN)
    gru_hn_ptr,  # [T, B, H] GRU a_n = N(W_hn h)_n + b_hn
    xhat_hh_ptr,  # [T, B, G*H] normalised W_hh h before gamma (NORM != none)
    rstd_hh_ptr,  # [T, G*H] (batch) or [T, B] (layer): 1 / sqrt(var + eps)
    xhat_c_ptr,  # [T, B, H] normalised c~ before gamma, beta (LSTM, NORM != none)
    rstd_c_ptr,  # [T, H] (batch) or [T, B] (layer)
    h_pre_proj_ptr,  # [T, B, H] o tanh(N_c(c~)) before W_hr (HAS_PROJ; 0 in inactive rows):
    #                  the buffer through which programs exchange it, and dW_hr's operand
    # ---- pointers: workspace
    ln_partials_ptr,  # float32 [2 slots (barrier parity), 2 (sum, M2), programs, BLOCK_B]
    h_masked_ptr,  # float32 [2, B, P or H]: m_h * h_{t-1} by step parity (MASKED_EXCHANGE)
    barrier_ptr,  # int64 [1], zero at launch: the grid-barrier counter
    # ---- sizes
    steps,  # T
    batch,  # B
    hidden,  # H
    stat_steps,  # S (BN eval reads running row min(t, S - 1))
    # ---- strides (elements; the unit stride of xg and output is 1)
    stride_xg_t,
    stride_xg_b,
    stride_out_t,
    stride_out_b,
    # ---- randomness and regularisers
    seed,  # Philox key (int64)
    dropout_base,  # philox.mask_base_offset(STREAM_RECURRENT_DROPOUT, layer, direction)
    zoneout_cell_base,  # ... STREAM_ZONEOUT_CELL ...
    zoneout_hidden_base,  # ... STREAM_ZONEOUT_HIDDEN ...
    dropout_p,  # recurrent dropout probability
    dropout_keep_scale,  # 1 / (1 - dropout_p)
    zoneout_cell_p,
    zoneout_hidden_p,
    weight_drop_key,  # philox.weight_drop_key(seed) (int64)
    weight_drop_base,  # philox.weight_drop_base_offset(layer, direction)
    weight_drop_p,  # DropConnect probability of W_hh
    weight_drop_keep_scale,  # 1 / (1 - weight_drop_p)
    # ---- LSTM projection (HAS_PROJ): h = W_hr h~ has P units, c has H. Without it the
    #      h0 / h_n / output / h_prev shapes above read P = H.
    w_hr_ptr,  # [P, H] D
    proj,  # P
    # ---- meta-parameters
    CELL: tl.constexpr,  # CELL_CODES
    NORM: tl.constexpr,  # NORM_CODES
    TRAINING: tl.constexpr,  # batch statistics and Bernoulli zoneout, else running stats / p
    REVERSE: tl.constexpr,  # t = T-1 .. 0
    HAS_BIAS: tl.constexpr,
    HAS_NORM_BIAS_C: tl.constexpr,
    USE_DROPOUT: tl.constexpr,  # training and recurrent_dropout > 0
    USE_ZONEOUT_CELL: tl.constexpr,  # zoneout_cell > 0 (LSTM)
    USE_ZONEOUT_HIDDEN: tl.constexpr,  # zoneout_hidden > 0
    USE_WEIGHT_DROP: tl.constexpr,  # training and weight_drop > 0
    NUM_GATES: tl.constexpr,  # G
    GATES_PAD: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    BLOCK_P: tl.constexpr,  # next power of two >= P (BLOCK_H without a projection)
    BLOCK_R: tl.constexpr,  # h units per program (BLOCK_U without a projection)
    ROWS_PER_DOT: tl.constexpr,  # rows per dot (a power of two dividing BLOCK_B)
    K_TILES: tl.constexpr,  # resident W_hh held as this many K-chunk tiles, one dot each
    STREAM_K: tl.constexpr,  # 0: W_hh resident; else streamed from L2 in K-chunks of this
    PROGRAMS_PAD: tl.constexpr,
    STATE_IN_MEMORY: tl.constexpr,  # B = 256: h, c and m_h re-read per step, not carried
    ROW_PIECE: tl.constexpr,  # < BLOCK_B: the step in whole-step row pieces (LSTM, LN)
    INPUT_PRECISION: tl.constexpr,  # float32 dots: "tf32" or "ieee" (the launcher's TF32 rule)
    UPCAST_OPERANDS: tl.constexpr,  # interpreter: both dot operands in float32, "ieee"
    STEP_ZERO: tl.constexpr = False,  # PARAMS_PER_STEP with batch norm (the launcher's rule)
    BN_GATE_BY_GATE: tl.constexpr = False,  # batch norm's step 3 gate by gate (LSTM, GRU)
    ROWS_PER_STEP: tl.constexpr = False,  # the step's rows from a step-dependent zero
    ROW_CLAMP: tl.constexpr = False,  # the product's operand rows clamped (_resident_product)
):
    """Forward recurrence: all T steps in one launch, one program per slice of hidden units.

    Per step t (in processing order; ``t = T-1-s`` when REVERSE):

    1. read the full ``h_{t-1}`` row block ``[B, H]`` (written by every program at the
       previous step) and apply the variational mask ``m_h`` (drawn once, kept in registers;
       with K tiles / row pieces / streamed W_hh each program instead publishes ``m_h * h``
       of its own units, ``MASKED_EXCHANGE``, and the masked row is read);
    2. ``acc = (m_h h_{t-1}) W_hh[cols]^T``: one dot against this program's gate columns of
       ``W_hh``, loaded before the loop and kept on chip;
    3. normalise ``acc`` (BN over the active rows: local; LN over the row: a barrier to merge
       per-program partial statistics), add ``b_hh``, add the ``xg`` columns;
    4. the cell update of the owned units (kernels/cells.py), LSTM with N(c~) in between,
       then zoneout with Bernoulli draws regenerated from (t, b, unit);
    5. rows with ``t >= len_b`` keep their state and output 0; write the output, the saved
       quantities and the next row of ``h_prev``, and meet the other programs at a barrier.

    ``ROW_PIECE`` < ``BLOCK_B`` (LSTM with layer norm at B = 256): 2-5 run in whole-step row
    pieces around the same barriers (the product per piece in the loop,
    :func:`_forward_pieces_cell`, :func:`_forward_pieces_state`).
    """
    pid = tl.program_id(0)
    gate_width = NUM_GATES * hidden
    barriers_per_step = _barriers_per_step(CELL, NORM, HAS_PROJ)

    rows = tl.arange(0, BLOCK_B)
    row_in = rows < batch
    units = pid * BLOCK_U + tl.arange(0, BLOCK_U)
    unit_in = units < hidden
    own_mask = row_in[:, None] & unit_in[None, :]
    cols = tl.arange(0, GATES_PAD * BLOCK_U)
    col_gate = cols // BLOCK_U
    col_unit = pid * BLOCK_U + cols % BLOCK_U
    col_in = (col_gate < NUM_GATES) & (col_unit < hidden)
    gate_col = col_gate * hidden + col_unit
    col_mask = row_in[:, None] & col_in[None, :]
    ks = tl.arange(0, BLOCK_H)
    k_in = ks < hidden
    # h's units: with a projection h has P of them, split over the programs in slices of
    # BLOCK_R (a program may own none), and they are the recurrent dot's K; h~'s H units
    # (ks_h) are the projection's K. Without one, h's slice is the cell's.
    if HAS_PROJ:
        state_size = proj
        h_units = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        ks_h = ks
        k_h_in = k_in
        ks = tl.arange(0, BLOCK_P)
        k_in = ks < proj
    else:
        state_size = hidden
        h_units = units
    h_unit_in = h_units < state_size
    h_own_mask = row_in[:, None] & h_unit_in[None, :]
    h_own_offsets = rows[:, None] * state_size + h_units[None, :]

    # This program's gate columns of W_hh, transposed for the dot: [BLOCK_P, GATES_PAD*BLOCK_U].
    # Loaded once, in D, on chip for the whole loop (the compiled kernels keep it in shared
    # memory, the dot's B operand). STREAM_K: too large for that, read per step in K-chunks.
    # K_TILES > 1: held as that many K-chunk tiles (a tuple), one dot per tile.
    if STREAM_K == 0:
        w_tiles = _load_resident_tiles(
            w_hh_ptr,
            gate_col,
            col_in,
            0,
            state_size,
            state_size,
            False,
            K_TILES,
            BLOCK_P // K_TILES,
            USE_WEIGHT_DROP,
            weight_drop_key,
            weight_drop_base,
            weight_drop_p,
            weight_drop_keep_scale,
        )
    else:
        w_tiles = ()  # streamed: none held (_recurrent_product reads W_hh per step)
    # Layer norm at B <= 64 (one piece; W2 with layer norm): b_hh and the norm parameters
    # are read again each step instead of held across the loop, as in the backward kernel
    # (PARAMS_PER_STEP): gamma_hh and b_hh over the gate columns, replicated in the
    # accumulator's layout, were spilled around the product. Their offsets and the product's
    # first row take ``step_zero`` = s // steps (0, which the compiler cannot fold): Triton's
    # own loop-invariant code motion hoists pure address arithmetic out of the disable_licm
    # loop (the loads stay in it), and the hoisted 64-bit addresses were spilled in turn.
    # W2 with layer norm, forward spill stores, sm_80 / sm_90a: triton 3.6 164 / 144 -> 20 /
    # 24 B, triton 3.8 60 / 32 -> 24 / 0 B (docs/kernels-v2.md §6.1). Also where the launcher
    # passes STEP_ZERO (_forward_step_zero: bf16 / fp16 batch norm in the pair split at 256
    # rows on wgmma), whose 16 K tiles' row x K operand masks and offsets, hoisted out of the
    # loop, were spilled (LSTM sm_90a forward spill stores, triton 3.8 / 3.6: 160 / 176 ->
    # 16 / 0 B; docs/kernels-v2.md §6.2).
    PARAMS_PER_STEP: tl.constexpr = (
        NORM == NORM_LAYER and BLOCK_B <= 64 and ROW_PIECE == BLOCK_B
    ) or STEP_ZERO
    if HAS_BIAS and not PARAMS_PER_STEP:
        bias = tl.load(b_hh_ptr + gate_col, mask=col_in, other=0.0).to(tl.float32)
    if NORM != NORM_NONE and not PARAMS_PER_STEP:
        norm_weight_hh, norm_weight_c, norm_bias_c = _norm_parameters(
            norm_weight_hh_ptr,
            norm_weight_c_ptr,
            norm_bias_c_ptr,
            gate_col,
            col_in,
            units,
            unit_in,
            CELL == LSTM,
            HAS_NORM_BIAS_C,
        )
    lengths = tl.load(lengths_ptr + rows, mask=row_in, other=0)
    # One dropout mask for all steps, over the full row of h that enters the dot (the chunked
    # products draw each chunk's share again per step instead of holding [B, H]).
    ONE_DOT: tl.constexpr = STREAM_K == 0 and ROWS_PER_DOT == BLOCK_B and K_TILES == 1
    HOLD_DROPOUT_MASK: tl.constexpr = USE_DROPOUT and ONE_DOT
    if HOLD_DROPOUT_MASK:
        m_h_full = dropout_mask(seed, dropout_base, rows, ks, dropout_p, dropout_keep_scale)
    # The chunked products (K tiles, row pieces, streamed W_hh) cannot hold the [B, H] mask,
    # and drawing each chunk's share again every step spills (W2: 2.7 KB). Instead each
    # program publishes m_h * h of its own units beside h (``h_masked``, two rows by step
    # parity: a row is rewritten only after every program has passed the barrier that
    # follows its last read), and the product reads the masked row. One extra barrier,
    # before the loop, publishes m_h * h0.
    MASKED_EXCHANGE: tl.constexpr = USE_DROPOUT and not ONE_DOT
    FIRST_BARRIER: tl.constexpr = 1 if MASKED_EXCHANGE else 0
    OPERAND_DROPOUT: tl.constexpr = USE_DROPOUT and not MASKED_EXCHANGE
    # The step after the product in whole-step row pieces (the launcher's _row_piece).
    ROW_SPLIT: tl.constexpr = ROW_PIECE < BLOCK_B
    if ROW_SPLIT:
        tl.static_assert(CELL == LSTM and NORM == NORM_LAYER, "row pieces: LSTM, layer norm")
        tl.static_assert(STATE_IN_MEMORY and not HAS_PROJ, "row pieces: state in memory")
    # Batch norm's step 3 gate by gate (the launcher's _geometry ``gate_by_gate``: bf16 /
    # fp16 at 128 rows with 16 units a program, where the pair split's programs exceed the
    # SMs): the pre-norm product staged in this step's xhat_hh rows, then per gate its
    # [BLOCK_B, BLOCK_U] columns normalised, with b_hh and its xg columns
    # (_forward_batch_norm_gate); no [BLOCK_B, G * BLOCK_U] tile beside the product's.
    if BN_GATE_BY_GATE:
        tl.static_assert(NORM == NORM_BATCH and (CELL == LSTM or CELL == GRU), "gate by gate")
        tl.static_assert(STATE_IN_MEMORY and not ROW_SPLIT, "gate by gate: state in memory")

    if HAS_PROJ:
        # W_hr[own h units, :] transposed, [BLOCK_H, BLOCK_R], on chip for all steps.
        w_hr_t = tl.load(
            w_hr_ptr + h_units[None, :] * hidden + ks_h[:, None],
            mask=k_h_in[:, None] & h_unit_in[None, :],
            other=0.0,
        )
    own_offsets = rows[:, None] * hidden + units[None, :]
    if STATE_IN_MEMORY:
        # B = 256 (the launcher's rule): the state is not carried through the loop in
        # registers (at 256 rows h, c and m_h are 8 registers a thread each at 16 warps,
        # beside the step's working set). Each step reads h_{t-1} and c_{t-1} of its own
        # units back from the rows it wrote before the previous step's barrier (h_prev, whose
        # first row the launcher writes, and c_prev, whose first row is written here) and
        # draws m_h again (kernels/recurrence.py docstring: docs/kernels-v2.md §6.1).
        if CELL == LSTM:
            t_first = (steps - 1) if REVERSE else 0
            c_first = tl.load(c0_ptr + own_offsets, mask=own_mask, other=0.0).to(tl.float32)
            tl.store(
                _step_tile(c_prev_ptr, t_first, batch, rows, units, hidden), c_first, mask=own_mask
            )
            tl.debug_barrier()
        if MASKED_EXCHANGE:
            h_first = tl.load(h0_ptr + h_own_offsets, mask=h_own_mask, other=0.0).to(tl.float32)
            m_h_first = dropout_mask(
                seed, dropout_base, rows, h_units, dropout_p, dropout_keep_scale
            )
            tl.store(h_masked_ptr + h_own_offsets, m_h_first * h_first, mask=h_own_mask)
            grid_barrier(barrier_ptr, 0)
    else:
        h_own = tl.load(h0_ptr + h_own_offsets, mask=h_own_mask, other=0.0).to(tl.float32)
        if CELL == LSTM:
            c_own = tl.load(c0_ptr + own_offsets, mask=own_mask, other=0.0).to(tl.float32)
        if MASKED_EXCHANGE:
            m_h_own = dropout_mask(seed, dropout_base, rows, h_units, dropout_p, dropout_keep_scale)
            tl.store(h_masked_ptr + h_own_offsets, m_h_own * h_own, mask=h_own_mask)
            grid_barrier(barrier_ptr, 0)

    # The time loop with loop-invariant code motion off (docs/kernels-v2.md §6.1): LICM
    # would hoist every wgmma shared-memory descriptor of the resident W_hh and the
    # per-element addresses of the per-step loads out of the loop and spill them. Under
    # triton 3.6's interpreter a runtime bound needs kernels/interpreter_compat.py.
    for s in tl.range(0, steps, disable_licm=True):
        if REVERSE:
            t = steps - 1 - s
            t_next = t - 1
        else:
            t = s
            t_next = t + 1
        t64 = tl.cast(t, tl.int64)
        first_barrier = s * barriers_per_step + FIRST_BARRIER
        if PARAMS_PER_STEP:
            step_zero = _loop_zero(s, steps)
            if HAS_BIAS:
                bias = tl.load(b_hh_ptr + (gate_col + step_zero), mask=col_in, other=0.0).to(
                    tl.float32
                )
            norm_weight_hh, norm_weight_c, norm_bias_c = _norm_parameters(
                norm_weight_hh_ptr,
                norm_weight_c_ptr,
                norm_bias_c_ptr,
                gate_col + step_zero,
                col_in,
                units + step_zero,
                unit_in,
                CELL == LSTM,
                HAS_NORM_BIAS_C,
            )
        elif BN_GATE_BY_GATE:
            # the product's first row (below): its operand addresses built in the loop, as
            # above (LSTM all_batch_norm bf16 H = 1024, sm_80 forward spill stores / loads,
            # triton 3.8: 84 / 84 -> 0 / 0 B; docs/kernels-v2.md §6.2)
            step_zero = _loop_zero(s, steps)
        else:
            step_zero = 0
        if ROWS_PER_STEP:
            # The step's rows, and the masks and offsets of its [BLOCK_B, ·] tiles, rebuilt
            # each step from a step-dependent zero (the launcher's _rows_per_step: bf16 /
            # fp16 batch norm in the pair split at 256 rows with mma.sync), so that Triton's
            # LICM does not hoist those offsets out of the time loop, where they were
            # spilled; the product's first row stays 0 (step_zero there spilled more with
            # triton 3.8). LSTM all_batch_norm, sm_80 H = 864, forward spill stores / loads,
            # triton 3.6 156 / 156 -> 4 / 4 B, triton 3.8 16 / 16 -> 24 / 24 B
            # (docs/kernels-v2.md §6.2).
            rows, row_in, own_mask, col_mask, h_own_mask, own_offsets, h_own_offsets = (
                _step_rows(
                    _loop_zero(s, steps), batch, hidden, state_size, unit_in, col_in, h_units,
                    h_unit_in, units, BLOCK_B,
                )
            )  # fmt: skip
        active = (t < lengths) & row_in
        active_f = active.to(tl.float32)

        # 1-2. the recurrent product for this program's gate columns.
        if MASKED_EXCHANGE:
            h_step_ptr = h_masked_ptr + (s % 2) * batch * state_size
        else:
            h_step_ptr = h_prev_ptr + t64 * batch * state_size
        if ROW_SPLIT:
            # Whole-step row pieces (the launcher's _row_piece: LSTM with layer norm at
            # B = 256): the product piece by piece (ROWS_PER_DOT = ROW_PIECE rows a dot),
            # each piece's pre-norm product staged in this step's xhat_hh rows (this
            # program's columns) and its layer-norm row partials published; one barrier.
            for piece in tl.range(0, BLOCK_B // ROW_PIECE, num_stages=1, disable_licm=True):
                rows_p, row_in_p = _piece_rows(piece, batch, ROW_PIECE, BLOCK_B)
                acc = _recurrent_product(
                    h_step_ptr,
                    state_size,
                    batch,
                    rows_p,
                    row_in_p,
                    piece * ROW_PIECE,
                    w_tiles,
                    w_hh_ptr,
                    gate_col,
                    col_in,
                    state_size,
                    hidden,
                    False,
                    USE_WEIGHT_DROP,
                    weight_drop_key,
                    weight_drop_base,
                    weight_drop_p,
                    weight_drop_keep_scale,
                    OPERAND_DROPOUT,
                    seed,
                    dropout_base,
                    dropout_p,
                    dropout_keep_scale,
                    ROW_PIECE,
                    GATES_PAD * BLOCK_U,
                    STREAM_K,
                    False,
                    ROW_PIECE,
                    INPUT_PRECISION,
                    UPCAST_OPERANDS,
                )
                tl.store(
                    _step_tile(xhat_hh_ptr, t, batch, rows_p, gate_col, gate_width),
                    acc,
                    mask=row_in_p[:, None] & col_in[None, :],
                )
                store_row_values(
                    layer_norm_partials(acc, col_in, hidden, NUM_GATES, BLOCK_U),
                    ln_partials_ptr,
                    first_barrier,
                    rows_p,
                    batch,
                    BLOCK_B,
                )
            grid_barrier(barrier_ptr, first_barrier)
        elif ONE_DOT:
            h_full = tl.load(
                _step_tile(h_prev_ptr, t, batch, rows, ks, state_size),
                mask=row_in[:, None] & k_in[None, :],
                other=0.0,
                cache_modifier=".cg",
            )
            if USE_DROPOUT:
                h_full = h_full * m_h_full
            acc = recurrent_dot(
                h_full,
                w_tiles[0],
                tl.zeros((BLOCK_B, GATES_PAD * BLOCK_U), tl.float32),
                INPUT_PRECISION,
                UPCAST_OPERANDS,
            )
        else:  # streamed, or resident in K tiles / dots of ROWS_PER_DOT rows
            acc = _recurrent_product(
                h_step_ptr,
                state_size,
                batch,
                rows,
                row_in,
                step_zero,
                w_tiles,
                w_hh_ptr,
                gate_col,
                col_in,
                state_size,
                hidden,
                False,
                USE_WEIGHT_DROP,
                weight_drop_key,
                weight_drop_base,
                weight_drop_p,
                weight_drop_keep_scale,
                OPERAND_DROPOUT,
                seed,
                dropout_base,
                dropout_p,
                dropout_keep_scale,
                BLOCK_B,
                GATES_PAD * BLOCK_U,
                STREAM_K,
                False,
                ROWS_PER_DOT,
                INPUT_PRECISION,
                UPCAST_OPERANDS,
                ROW_CLAMP,
            )

        if ROW_SPLIT:
            # 3-5 in whole-step row pieces (LSTM with layer norm, state in memory; the
            # launcher's _row_piece), after the pieces' products and the first barrier
            # above: per piece the norm, the cell and
            # c~ staged in xhat_c with its partials, one barrier; per piece N(c~), h and the
            # state. No tile of more than ROW_PIECE rows is live in the step.
            _forward_pieces_cell(
                xg_ptr,
                b_hh_ptr,
                lengths_ptr,
                norm_weight_hh_ptr,
                c_prev_ptr,
                gates_ptr,
                xhat_hh_ptr,
                rstd_hh_ptr,
                xhat_c_ptr,
                ln_partials_ptr,
                t,
                first_barrier,
                batch,
                hidden,
                stride_xg_t,
                stride_xg_b,
                HAS_BIAS,
                NUM_GATES,
                GATES_PAD,
                BLOCK_B,
                BLOCK_U,
                PROGRAMS_PAD,
                ROW_PIECE,
            )
            grid_barrier(barrier_ptr, first_barrier + 1)
            _forward_pieces_state(
                lengths_ptr,
                norm_weight_c_ptr,
                norm_bias_c_ptr,
                output_ptr,
                h_n_ptr,
                c_n_ptr,
                h_prev_ptr,
                c_prev_ptr,
                gates_ptr,
                rstd_c_ptr,
                xhat_c_ptr,
                ln_partials_ptr,
                h_masked_ptr,
                s,
                t,
                t_next,
                steps,
                first_barrier,
                batch,
                hidden,
                stride_out_t,
                stride_out_b,
                seed,
                dropout_base,
                zoneout_cell_base,
                zoneout_hidden_base,
                dropout_p,
                dropout_keep_scale,
                zoneout_cell_p,
                zoneout_hidden_p,
                TRAINING,
                HAS_NORM_BIAS_C,
                USE_ZONEOUT_CELL,
                USE_ZONEOUT_HIDDEN,
                MASKED_EXCHANGE,
                BLOCK_B,
                BLOCK_U,
                PROGRAMS_PAD,
                ROW_PIECE,
            )
        else:
            # 3. normalisation of W_hh h, bias.
            if BN_GATE_BY_GATE:
                tl.store(
                    _step_tile(xhat_hh_ptr, t, batch, rows, gate_col, gate_width),
                    acc,
                    mask=col_mask,
                )
                tl.debug_barrier()
                x_gates = ()
                a_gates = ()
                for gate in tl.static_range(NUM_GATES):
                    x_gate, a_gate = _forward_batch_norm_gate(
                        gate,
                        xg_ptr,
                        b_hh_ptr,
                        norm_weight_hh_ptr,
                        running_mean_hh_ptr,
                        running_var_hh_ptr,
                        batch_mean_hh_ptr,
                        batch_var_hh_ptr,
                        xhat_hh_ptr,
                        rstd_hh_ptr,
                        t,
                        stat_steps,
                        batch,
                        rows,
                        # the step-dependent zero in the gate's column offsets too, so that
                        # they are built in the loop (LSTM all_batch_norm bf16 H = 1024, sm_80
                        # forward spill stores / loads, triton 3.6: 124 / 132 -> 0 / 0 B;
                        # triton 3.8 0 / 0 both; docs/kernels-v2.md §6.2)
                        units + step_zero,
                        unit_in,
                        hidden,
                        active_f,
                        stride_xg_t,
                        stride_xg_b,
                        NUM_GATES,
                        TRAINING,
                        HAS_BIAS,
                    )
                    x_gates = x_gates + (x_gate,)  # noqa: RUF005
                    a_gates = a_gates + (a_gate,)  # noqa: RUF005
            elif NORM == NORM_BATCH:
                if TRAINING:
                    mean_hh, var_hh, _ = active_column_stats(acc, active_f)
                    tl.store(batch_mean_hh_ptr + t64 * gate_width + gate_col, mean_hh, mask=col_in)
                    tl.store(batch_var_hh_ptr + t64 * gate_width + gate_col, var_hh, mask=col_in)
                else:
                    stat_row = tl.minimum(t, stat_steps - 1).to(tl.int64)
                    mean_hh = tl.load(
                        running_mean_hh_ptr + stat_row * gate_width + gate_col,
                        mask=col_in,
                        other=0.0,
                    ).to(tl.float32)
                    var_hh = tl.load(
                        running_var_hh_ptr + stat_row * gate_width + gate_col,
                        mask=col_in,
                        other=1.0,
                    ).to(tl.float32)
                rstd_hh = 1.0 / tl.sqrt(var_hh + NORM_EPS)
                xhat_hh = (acc - mean_hh[None, :]) * rstd_hh[None, :]
                tl.store(rstd_hh_ptr + t64 * gate_width + gate_col, rstd_hh, mask=col_in)
            elif NORM == NORM_LAYER:
                mean_row, var_row = layer_norm_row_stats(
                    acc,
                    col_in,
                    ln_partials_ptr,
                    barrier_ptr,
                    first_barrier,
                    rows,
                    batch,
                    hidden,
                    gate_width.to(tl.float32),
                    NUM_GATES,
                    BLOCK_U,
                    PROGRAMS_PAD,
                )
                rstd_row = 1.0 / tl.sqrt(var_row + NORM_EPS)
                xhat_hh = (acc - mean_row[:, None]) * rstd_row[:, None]
                tl.store(rstd_hh_ptr + t64 * batch + rows, rstd_row, mask=row_in & (pid == 0))
            if BN_GATE_BY_GATE:
                pass  # a and x per gate (above)
            elif NORM != NORM_NONE:
                tl.store(
                    _step_tile(xhat_hh_ptr, t, batch, rows, gate_col, gate_width),
                    xhat_hh,
                    mask=col_mask,
                )
                a = xhat_hh * norm_weight_hh[None, :]
            else:
                a = acc
            if HAS_BIAS and not BN_GATE_BY_GATE:
                a = a + bias[None, :]
            if not BN_GATE_BY_GATE:
                x = tl.load(
                    xg_ptr + t64 * stride_xg_t + rows[:, None] * stride_xg_b + gate_col[None, :],
                    mask=col_mask,
                    other=0.0,
                ).to(tl.float32)

            # 4. the cell.
            if CELL == LSTM:
                if BN_GATE_BY_GATE:
                    pre_gates = (
                        x_gates[0] + a_gates[0],
                        x_gates[1] + a_gates[1],
                        x_gates[2] + a_gates[2],
                        x_gates[3] + a_gates[3],
                    )
                else:
                    pre = x + a
                    pre_gates = (
                        gate_of(pre, 0, GATES_PAD, BLOCK_U),
                        gate_of(pre, 1, GATES_PAD, BLOCK_U),
                        gate_of(pre, 2, GATES_PAD, BLOCK_U),
                        gate_of(pre, 3, GATES_PAD, BLOCK_U),
                    )
                i, f, g, o, c_cand = lstm_candidate(
                    pre_gates[0],
                    pre_gates[1],
                    pre_gates[2],
                    pre_gates[3],
                    _own_state(c_prev_ptr, t, batch, rows, units, hidden, own_mask)
                    if STATE_IN_MEMORY
                    else c_own,
                )
                if NORM == NORM_BATCH:
                    if TRAINING:
                        mean_c, var_c, _ = active_column_stats(c_cand, active_f)
                        tl.store(batch_mean_c_ptr + t64 * hidden + units, mean_c, mask=unit_in)
                        tl.store(batch_var_c_ptr + t64 * hidden + units, var_c, mask=unit_in)
                    else:
                        stat_row = tl.minimum(t, stat_steps - 1).to(tl.int64)
                        mean_c = tl.load(
                            running_mean_c_ptr + stat_row * hidden + units, mask=unit_in, other=0.0
                        ).to(tl.float32)
                        var_c = tl.load(
                            running_var_c_ptr + stat_row * hidden + units, mask=unit_in, other=1.0
                        ).to(tl.float32)
                    rstd_c = 1.0 / tl.sqrt(var_c + NORM_EPS)
                    xhat_c = (c_cand - mean_c[None, :]) * rstd_c[None, :]
                    tl.store(rstd_c_ptr + t64 * hidden + units, rstd_c, mask=unit_in)
                elif NORM == NORM_LAYER:
                    mean_c, var_c = layer_norm_row_stats(
                        c_cand,
                        unit_in,
                        ln_partials_ptr,
                        barrier_ptr,
                        first_barrier + 1,
                        rows,
                        batch,
                        hidden,
                        hidden.to(tl.float32),
                        1,
                        BLOCK_U,
                        PROGRAMS_PAD,
                    )
                    rstd_c = 1.0 / tl.sqrt(var_c + NORM_EPS)
                    xhat_c = (c_cand - mean_c[:, None]) * rstd_c[:, None]
                    tl.store(rstd_c_ptr + t64 * batch + rows, rstd_c, mask=row_in & (pid == 0))
                if NORM != NORM_NONE:
                    tl.store(
                        _step_tile(xhat_c_ptr, t, batch, rows, units, hidden), xhat_c, mask=own_mask
                    )
                    c_normed = xhat_c * norm_weight_c[None, :]
                    if HAS_NORM_BIAS_C:
                        c_normed = c_normed + norm_bias_c[None, :]
                else:
                    c_normed = c_cand
                h_cand, _ = lstm_hidden(o, c_normed)
                if USE_ZONEOUT_CELL:
                    d_c = zoneout_weight(
                        seed, zoneout_cell_base, t, rows, units, zoneout_cell_p, TRAINING
                    )
                    if STATE_IN_MEMORY:
                        c_next = zoneout(
                            _own_state(c_prev_ptr, t, batch, rows, units, hidden, own_mask),
                            c_cand,
                            d_c,
                        )
                    else:
                        c_next = zoneout(c_own, c_cand, d_c)
                else:
                    c_next = c_cand
                gates_t = _step_tile(gates_ptr, t, batch, rows, units, gate_width)
                tl.store(gates_t, i, mask=own_mask)
                tl.store(gates_t + hidden, f, mask=own_mask)
                tl.store(gates_t + 2 * hidden, g, mask=own_mask)
                tl.store(gates_t + 3 * hidden, o, mask=own_mask)
                if STATE_IN_MEMORY:
                    c_kept = tl.where(
                        active[:, None],
                        c_next,
                        _own_state(c_prev_ptr, t, batch, rows, units, hidden, own_mask),
                    )
                    tl.store(
                        _step_tile(c_prev_ptr, t_next, batch, rows, units, hidden),
                        c_kept,
                        mask=own_mask & (s + 1 < steps),
                    )
                    tl.store(c_n_ptr + own_offsets, c_kept, mask=own_mask & (s + 1 == steps))
                else:
                    tl.store(
                        _step_tile(c_prev_ptr, t, batch, rows, units, hidden), c_own, mask=own_mask
                    )
                    c_own = tl.where(active[:, None], c_next, c_own)
            elif CELL == GRU:
                if not BN_GATE_BY_GATE:
                    x_gates = (
                        gate_of(x, 0, GATES_PAD, BLOCK_U),
                        gate_of(x, 1, GATES_PAD, BLOCK_U),
                        gate_of(x, 2, GATES_PAD, BLOCK_U),
                    )
                    a_gates = (
                        gate_of(a, 0, GATES_PAD, BLOCK_U),
                        gate_of(a, 1, GATES_PAD, BLOCK_U),
                        gate_of(a, 2, GATES_PAD, BLOCK_U),
                    )
                a_n = a_gates[2]
                r, z, n, h_cand = gru_cell(
                    x_gates[0],
                    x_gates[1],
                    x_gates[2],
                    a_gates[0],
                    a_gates[1],
                    a_n,
                    _own_state(h_prev_ptr, t, batch, rows, h_units, state_size, h_own_mask)
                    if STATE_IN_MEMORY
                    else h_own,
                )
                gates_t = _step_tile(gates_ptr, t, batch, rows, units, gate_width)
                tl.store(gates_t, r, mask=own_mask)
                tl.store(gates_t + hidden, z, mask=own_mask)
                tl.store(gates_t + 2 * hidden, n, mask=own_mask)
                tl.store(_step_tile(gru_hn_ptr, t, batch, rows, units, hidden), a_n, mask=own_mask)
            else:
                # GATES_PAD == 1: the gate-column tile is the [BLOCK_B, BLOCK_U] unit tile.
                h_cand = rnn_cell(x + a, CELL == RNN_RELU)
                tl.store(
                    _step_tile(gates_ptr, t, batch, rows, units, gate_width),
                    h_cand,
                    mask=own_mask,
                )

            if HAS_PROJ:
                # h~ = W_hr (o tanh(N_c(c~))): publish this program's H units of the row block,
                # meet, and project the full row onto this program's P units.
                h_cand = exchange_and_multiply(
                    tl.where(active[:, None], h_cand, 0.0),
                    h_pre_proj_ptr,
                    _rows_cols_offsets(t, batch, rows, units, hidden),
                    own_mask,
                    barrier_ptr,
                    first_barrier + barriers_per_step - 2,
                    _rows_cols_offsets(t, batch, rows, ks_h, hidden),
                    row_in[:, None] & k_h_in[None, :],
                    w_hr_t,
                    INPUT_PRECISION,
                    UPCAST_OPERANDS,
                )

            # 5. zoneout of h, lengths, outputs, the h exchange, the barrier.
            if USE_ZONEOUT_HIDDEN:
                d_h = zoneout_weight(
                    seed, zoneout_hidden_base, t, rows, h_units, zoneout_hidden_p, TRAINING
                )
                if STATE_IN_MEMORY:
                    h_next = zoneout(
                        _own_state(h_prev_ptr, t, batch, rows, h_units, state_size, h_own_mask),
                        h_cand,
                        d_h,
                    )
                else:
                    h_next = zoneout(h_own, h_cand, d_h)
            else:
                h_next = h_cand
            tl.store(
                output_ptr + t64 * stride_out_t + rows[:, None] * stride_out_b + h_units[None, :],
                tl.where(active[:, None], h_next, 0.0),
                mask=h_own_mask,
            )
            if STATE_IN_MEMORY:
                h_kept = tl.where(
                    active[:, None],
                    h_next,
                    _own_state(h_prev_ptr, t, batch, rows, h_units, state_size, h_own_mask),
                )
                tl.store(h_n_ptr + h_own_offsets, h_kept, mask=h_own_mask & (s + 1 == steps))
            else:
                h_own = tl.where(active[:, None], h_next, h_own)
                h_kept = h_own
            tl.store(
                _step_tile(h_prev_ptr, t_next, batch, rows, h_units, state_size),
                h_kept,
                mask=h_own_mask & (s + 1 < steps),
            )
            if MASKED_EXCHANGE:
                if STATE_IN_MEMORY:
                    m_h_own = dropout_mask(
                        seed, dropout_base, rows, h_units, dropout_p, dropout_keep_scale
                    )
                tl.store(
                    h_masked_ptr + ((s + 1) % 2) * batch * state_size + h_own_offsets,
                    m_h_own * h_kept,
                    mask=h_own_mask & (s + 1 < steps),
                )
        grid_barrier(barrier_ptr, first_barrier + barriers_per_step - 1)

    if not STATE_IN_MEMORY:
        tl.store(h_n_ptr + h_own_offsets, h_own, mask=h_own_mask)
        if CELL == LSTM:
            tl.store(c_n_ptr + own_offsets, c_own, mask=own_mask)


@triton.jit(do_not_specialize=_RUNTIME_SCALARS)
def recurrence_backward_kernel(
    # ---- pointers: inputs (D = the dtype of xg, G gates, H hidden)
    grad_output_ptr,  # [T, B, H] dL/d output, strides (stride_go_t, stride_go_b, 1), any float
    grad_h_n_ptr,  # [B, H] dL/d h_n
    grad_c_n_ptr,  # [B, H] dL/d c_n (LSTM)
    w_hh_ptr,  # [G*H, H] D
    lengths_ptr,  # [B] int64
    norm_weight_hh_ptr,  # [G*H] gamma (NORM != none)
    norm_weight_c_ptr,  # [H] (LSTM, NORM != none)
    norm_bias_c_ptr,  # [H] (HAS_NORM_BIAS_C)
    # ---- pointers: saved by the forward kernel (float32; see its docstring)
    h_prev_ptr,  # [T, B, H]
    c_prev_ptr,  # [T, B, H]
    gates_ptr,  # [T, B, G*H]
    gru_hn_ptr,  # [T, B, H]
    xhat_hh_ptr,  # [T, B, G*H]
    rstd_hh_ptr,  # [T, G*H] or [T, B]
    xhat_c_ptr,  # [T, B, H]
    rstd_c_ptr,  # [T, H] or [T, B]
    # ---- pointers: outputs
    grad_xg_ptr,  # [T, B, G*H] D: dL/d xg (0 for inactive rows)
    grad_acc_ptr,  # [T, B, G*H] float32: dL/d (W_hh m_h h_{t-1}); the launcher's dW_hh GEMM
    #                operand, and the buffer through which programs exchange it
    grad_h0_ptr,  # [B, H] float32
    grad_c0_ptr,  # [B, H] float32 (LSTM)
    grad_b_hh_ptr,  # [G*H] float32 (sum over t and b of dL/d a)
    grad_norm_weight_hh_ptr,  # [G*H] float32 (NORM != none)
    grad_norm_weight_c_ptr,  # [H] float32 (LSTM, NORM != none)
    grad_norm_bias_c_ptr,  # [H] float32 (LSTM, NORM != none)
    # ---- pointers: workspace
    ln_partials_ptr,  # float32 [2 slots (barrier parity), 3 sums, programs, BLOCK_B]
    pair_partials_ptr,  # float32 [programs, BLOCK_B, 2 * BLOCK_U] (SPLIT_K == 2)
    barrier_ptr,  # int64 [1 + programs], zero at launch: the grid-barrier counter, then
    #               the pair flags of SPLIT_K == 2
    # ---- sizes
    steps,
    batch,
    hidden,
    # ---- strides
    stride_go_t,
    stride_go_b,
    # ---- randomness and regularisers (as the forward kernel)
    seed,
    dropout_base,
    zoneout_cell_base,
    zoneout_hidden_base,
    dropout_p,
    dropout_keep_scale,
    zoneout_cell_p,
    zoneout_hidden_p,
    weight_drop_key,
    weight_drop_base,
    weight_drop_p,
    weight_drop_keep_scale,
    # ---- LSTM projection (HAS_PROJ): grad_output, grad_h_n, h_prev, grad_h0 and W_hh's
    #      second dimension have P units
    w_hr_ptr,  # [P, H] D
    grad_proj_ptr,  # [T, B, P] float32: dL/dh~ after W_hr (0 for inactive rows), exchanged
    #                 between programs and the launcher's dW_hr GEMM operand
    proj,  # P
    # ---- meta-parameters (as the forward kernel)
    CELL: tl.constexpr,
    NORM: tl.constexpr,
    TRAINING: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_NORM_BIAS_C: tl.constexpr,
    USE_DROPOUT: tl.constexpr,
    USE_ZONEOUT_CELL: tl.constexpr,
    USE_ZONEOUT_HIDDEN: tl.constexpr,
    USE_WEIGHT_DROP: tl.constexpr,
    NUM_GATES: tl.constexpr,
    GATES_PAD: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_GH: tl.constexpr,  # next power of two >= G*H (the one dot's K when not GATE_DOTS)
    HAS_PROJ: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_R: tl.constexpr,
    GATE_DOTS: tl.constexpr,  # one dot per gate (K = H) instead of one over K = G*H
    ROWS_PER_DOT: tl.constexpr,  # rows per dot (a power of two dividing BLOCK_B)
    K_TILES: tl.constexpr,  # resident W_hh held as this many K-chunk tiles, one dot each
    SPLIT_K: tl.constexpr,  # 2: the K rows split over program pairs (one dot over G*H only)
    STREAM_K: tl.constexpr,  # 0: W_hh resident; else streamed from L2 in K-chunks of this
    PROGRAMS_PAD: tl.constexpr,
    STATE_IN_MEMORY: tl.constexpr,  # B = 256 (LN sm_80: 64): dh, dc, m_h re-read per step
    ROW_PIECE: tl.constexpr,  # < BLOCK_B: the step in whole-step row pieces (LSTM, LN)
    INPUT_PRECISION: tl.constexpr,
    UPCAST_OPERANDS: tl.constexpr,
    WGMMA_BACKWARD: tl.constexpr = False,  # the launcher's geometry: products on wgmma
    ROWS_PER_STEP: tl.constexpr = False,  # the step's rows from a step-dependent zero
    ROW_CLAMP: tl.constexpr = False,  # the product's operand rows clamped (_resident_product)
    PRODUCT_ROW_CHUNKS: tl.constexpr = False,  # the product in ROWS_PER_DOT-row chunks (below)
    UNIT_HALVES: tl.constexpr = False,  # steps 1-2 over unit halves in a loop (below)
):
    """Backward recurrence: the forward loop in reverse processing order, one launch.

    State per program, on chip: ``dh``, ``dc`` (gradients of the owned units' state
    after the current step), this program's columns ``W_hh[:, units]`` (``G*H x BLOCK_U``,
    loaded once), the dropout mask of its units, and float32 accumulators of dL/d b_hh,
    dL/d gamma and dL/d beta of its columns (with layer norm at B <= 64: added into their
    output rows each step instead, ``SUMS_IN_MEMORY``). Per step:

    1. ``dh += dL/d output_t`` (active rows), zoneout and the cell backward from the saved
       activations (kernels/cells.py); LSTM through N(c~) (BN local, LN with a barrier);
       zoneout masks are regenerated from the seed;
    2. the gradient of the normalised recurrent term, ``dL/d a``, goes through N's backward
       to ``dL/d acc`` (acc = W_hh m_h h_{t-1}); ``dL/d xg`` and ``dL/d acc`` of this
       program's columns are written out, and the programs meet at a barrier;
    3. ``dL/d h_{t-1}`` of the owned units = ``m_h * (dL/d acc)[all columns] @ W_hh[:, units]``
       (one dot per gate, or one over all gate rows: ``GATE_DOTS``) plus the direct paths
       (zoneout, GRU's z); inactive rows pass ``dh`` through. ``SPLIT_K`` = 2 (float32 W2 /
       W6b, where ``G*H x BLOCK_U`` does not fit one SM at the N >= 16 the dot needs):
       programs ``2p`` and ``2p + 1`` hold the pair's ``2 * BLOCK_U`` columns, each for
       half of the ``G*H`` gate rows (the first / second half of the non-empty K tiles),
       each computes that half's partial product, and the pair adds them
       (kernels/primitives.py ``pair_sum``: a pairwise flag handshake, no grid barrier).
       With ``ROWS_PER_DOT`` < ``BLOCK_B`` (the launcher at 256 rows) the half's product
       runs row chunk by row chunk, each chunk's partial stored to the pair scratch
       (``pair_store``), then one handshake and the sum (``pair_add``).

    ``dL/d W_hh = sum_t dacc_t^T (m_h h_{t-1})`` is left to one GEMM in the launcher.

    ``ROW_PIECE`` < ``BLOCK_B`` (LSTM with layer norm at B = 256): 1-3 run in whole-step row
    pieces around the same barriers (:func:`_backward_pieces_cell_norm`,
    :func:`_backward_pieces_cell`, :func:`_backward_pieces_recurrent_norm`, and 3's product
    piece by piece in the loop).
    """
    pid = tl.program_id(0)
    gate_width = NUM_GATES * hidden
    barriers_per_step = _barriers_per_step(CELL, NORM, HAS_PROJ)

    rows = tl.arange(0, BLOCK_B)
    row_in = rows < batch
    units = pid * BLOCK_U + tl.arange(0, BLOCK_U)
    unit_in = units < hidden
    own_mask = row_in[:, None] & unit_in[None, :]
    cols = tl.arange(0, GATES_PAD * BLOCK_U)
    col_gate = cols // BLOCK_U
    col_unit = pid * BLOCK_U + cols % BLOCK_U
    col_in = (col_gate < NUM_GATES) & (col_unit < hidden)
    gate_col = col_gate * hidden + col_unit
    col_mask = row_in[:, None] & col_in[None, :]
    ks = tl.arange(0, BLOCK_H)
    k_in = ks < hidden
    # h's units (as the forward kernel): dh, m_h and W_hh's columns are over them.
    if HAS_PROJ:
        state_size = proj
        h_units = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        ps = tl.arange(0, BLOCK_P)
        p_in = ps < proj
        # W_hr[:, own cell units], [BLOCK_P, BLOCK_U], on chip for all steps.
        w_hr_own = tl.load(
            w_hr_ptr + ps[:, None] * hidden + units[None, :],
            mask=p_in[:, None] & unit_in[None, :],
            other=0.0,
        )
    else:
        state_size = hidden
        h_units = units
    h_unit_in = h_units < state_size
    h_own_mask = row_in[:, None] & h_unit_in[None, :]
    h_own_offsets = rows[:, None] * state_size + h_units[None, :]
    # SPLIT_K == 2: this program's K tiles, half of those that cover G * BLOCK_H gate rows
    # (the last ones of GRU's BLOCK_GH are empty), the pair's units (programs 2p, 2p + 1).
    SPLIT_TILES: tl.constexpr = (
        (NUM_GATES * BLOCK_H + BLOCK_GH // K_TILES - 1) // (BLOCK_GH // K_TILES) + 1
    ) // 2
    # The resident [K, units] tile's columns, first K row and K-tile count: the pair's
    # columns from this program's first tile when split, else its own units from row 0.
    if SPLIT_K == 2:
        w_units = (pid // 2) * (2 * BLOCK_U) + tl.arange(0, 2 * BLOCK_U)
        w_unit_in = w_units < state_size
        split_k_start = (pid % 2) * (SPLIT_TILES * (BLOCK_GH // K_TILES))
        W_TILES: tl.constexpr = SPLIT_TILES
    else:
        w_units = h_units
        w_unit_in = h_unit_in
        split_k_start = 0
        W_TILES: tl.constexpr = K_TILES

    # W_hh[:, units] in D, on chip for the whole loop. GATE_DOTS: one [BLOCK_H, BLOCK_U]
    # tile per gate (rows gate * H + k; one dot per gate, no padding of G*H); otherwise one
    # [BLOCK_GH, BLOCK_U] tile of all G*H rows (one dot over K = G*H). STREAM_K: none held,
    # the gate rows are read per step in K-chunks.
    if STREAM_K > 0:
        w_gates = ()
    elif GATE_DOTS:
        w_gates = ()
        for gate in tl.static_range(NUM_GATES):
            w_gates = w_gates + (  # noqa: RUF005
                load_w_hh_tile(
                    w_hh_ptr,
                    (gate * hidden + ks)[:, None],
                    h_units[None, :],
                    k_in[:, None] & h_unit_in[None, :],
                    state_size,
                    USE_WEIGHT_DROP,
                    weight_drop_key,
                    weight_drop_base,
                    weight_drop_p,
                    weight_drop_keep_scale,
                ),
            )
    else:
        # SPLIT_K == 2: the pair's columns, this program's half of the gate rows (of the
        # non-empty tiles of BLOCK_GH // K_TILES rows that cover G * BLOCK_H, the first or the
        # second half); else this program's units, all gate rows.
        w_gates = _load_resident_tiles(
            w_hh_ptr,
            w_units,
            w_unit_in,
            split_k_start,
            gate_width,
            state_size,
            True,
            W_TILES,
            BLOCK_GH // K_TILES,
            USE_WEIGHT_DROP,
            weight_drop_key,
            weight_drop_base,
            weight_drop_p,
            weight_drop_keep_scale,
        )
    if NORM != NORM_NONE:
        norm_weight_hh, norm_weight_c, norm_bias_c = _norm_parameters(
            norm_weight_hh_ptr,
            norm_weight_c_ptr,
            norm_bias_c_ptr,
            gate_col,
            col_in,
            units,
            unit_in,
            CELL == LSTM,
            HAS_NORM_BIAS_C,
        )
        if CELL == LSTM:
            grad_norm_weight_c = tl.zeros((BLOCK_U,), tl.float32)
            grad_norm_bias_c = tl.zeros((BLOCK_U,), tl.float32)
        grad_norm_weight_hh = tl.zeros((GATES_PAD * BLOCK_U,), tl.float32)
    grad_bias = tl.zeros((GATES_PAD * BLOCK_U,), tl.float32)
    # Layer norm: the gradient sums (b_hh, gamma_hh, and LSTM's gamma_c, beta_c) are added
    # into their output rows each step (this program's columns, read and written by it only;
    # the same float32 additions in the same order) instead of held across the loop, and the
    # norm parameters are read again each step: at B = 64 on sm_80 (mma.sync) their
    # registers were spilled around the product; not at B = 256 (the sm_90a RNN there
    # spilled more with it: 56 -> 100 B; docs/kernels-v2.md §6.1).
    # The step in whole-step row pieces (the launcher's _row_piece; as the forward kernel),
    # with the gradient sums in memory as at B = 64 (B = 256 backward spill stores, sums in
    # registers -> in memory: sm_80 476 -> 424 B, sm_90a 252 -> 268 B; docs/kernels-v2.md
    # §6.1).
    ROW_SPLIT: tl.constexpr = ROW_PIECE < BLOCK_B
    if ROW_SPLIT:
        tl.static_assert(CELL == LSTM and NORM == NORM_LAYER, "row pieces: LSTM, layer norm")
        tl.static_assert(STATE_IN_MEMORY and not HAS_PROJ, "row pieces: state in memory")
        tl.static_assert(SPLIT_K == 1, "row pieces: no pair split")
        tl.static_assert(ROWS_PER_DOT == ROW_PIECE, "row pieces: their products' rows")
    # Batch norm without the pair split, its product in row chunks (bf16 / fp16 at 128 rows
    # with 16 units a program, where the pair split's programs exceed the SMs; the
    # launcher's ``gate_by_gate``): each chunk's dh updated in grad_h0 (as the row pieces'
    # product below), dh / dc written back early and the LSTM's norm gate by gate (as the
    # pair split's chunks below), the norm parameters read each step, the c norm's gradient
    # sums added into their output rows each step, and a step-dependent zero in the column
    # offsets of the gate-by-gate norm and of those sums. LSTM all_batch_norm bf16 H = 1024,
    # sm_80 backward spill stores / loads, triton 3.8: whole step 444 / 436 -> chunks, early
    # state and gate by gate 260 / 256 -> with the rest 112 / 112 -> at 16 warps 28 / 28
    # (the launcher's _num_warps; docs/kernels-v2.md §6.2).
    ROW_CHUNKS: tl.constexpr = (
        SPLIT_K == 1
        and not ROW_SPLIT
        and ROWS_PER_DOT < BLOCK_B
        and STATE_IN_MEMORY
        and NORM == NORM_BATCH
        and not HAS_PROJ
    )
    SUMS_IN_MEMORY: tl.constexpr = (
        NORM == NORM_LAYER and SPLIT_K == 1 and (BLOCK_B <= 64 or ROW_SPLIT)
    )
    C_SUMS_IN_MEMORY: tl.constexpr = (SUMS_IN_MEMORY or ROW_CHUNKS) and CELL == LSTM
    PARAMS_PER_STEP: tl.constexpr = (SUMS_IN_MEMORY and not ROW_SPLIT) or ROW_CHUNKS
    # The pair split at 256 rows (its product in row chunks, ROWS_PER_DOT < BLOCK_B): the
    # state gradients dh and dc written back as soon as the cell backward has made them, not
    # held through the norm's backward (STATE_IN_MEMORY; LSTM and GRU), and the LSTM's batch
    # norm backward gate by gate ([BLOCK_B, BLOCK_U] tiles, its gradient sums added into
    # their output rows each step): the whole step's [256, G * 8] tiles beside the state
    # spilled (backward spill stores, sm_90a / sm_80, triton 3.8: LSTM all_batch_norm 308 /
    # 508 -> 0 / 0 B; docs/kernels-v2.md §6.2).
    if PRODUCT_ROW_CHUNKS:
        tl.static_assert(STATE_IN_MEMORY and SPLIT_K == 1 and not ROW_SPLIT, "product chunks")
        tl.static_assert(ROWS_PER_DOT < BLOCK_B and not ROW_CHUNKS, "product chunks")
    PAIR_CHUNKS: tl.constexpr = SPLIT_K == 2 and ROWS_PER_DOT < BLOCK_B
    CHUNKS: tl.constexpr = PAIR_CHUNKS or ROW_CHUNKS
    EARLY_STATE: tl.constexpr = CHUNKS and STATE_IN_MEMORY and (CELL == LSTM or CELL == GRU)
    GATE_BY_GATE: tl.constexpr = CHUNKS and CELL == LSTM and NORM == NORM_BATCH
    if UNIT_HALVES:
        tl.static_assert(GATE_BY_GATE and EARLY_STATE and not HAS_PROJ, "unit halves")
    if SUMS_IN_MEMORY or GATE_BY_GATE:
        tl.store(grad_b_hh_ptr + gate_col, grad_bias, mask=col_in)
        tl.store(grad_norm_weight_hh_ptr + gate_col, grad_bias, mask=col_in)
    if C_SUMS_IN_MEMORY:
        tl.store(grad_norm_weight_c_ptr + units, grad_norm_weight_c, mask=unit_in)
        tl.store(grad_norm_bias_c_ptr + units, grad_norm_bias_c, mask=unit_in)
    lengths = tl.load(lengths_ptr + rows, mask=row_in, other=0)
    if USE_DROPOUT and not STATE_IN_MEMORY:
        m_h_own = dropout_mask(seed, dropout_base, rows, h_units, dropout_p, dropout_keep_scale)

    own_offsets = rows[:, None] * hidden + units[None, :]
    if STATE_IN_MEMORY:
        # B = 256 (as the forward kernel): dh and dc live in grad_h0 / grad_c0 (this
        # program's units, read and written by it only; CTA barriers order the accesses of
        # different threads), which hold dL/dh_0 and dL/dc_0 when the loop ends.
        tl.store(
            grad_h0_ptr + h_own_offsets,
            tl.load(grad_h_n_ptr + h_own_offsets, mask=h_own_mask, other=0.0).to(tl.float32),
            mask=h_own_mask,
        )
        if CELL == LSTM:
            tl.store(
                grad_c0_ptr + own_offsets,
                tl.load(grad_c_n_ptr + own_offsets, mask=own_mask, other=0.0).to(tl.float32),
                mask=own_mask,
            )
        tl.debug_barrier()
    else:
        dh = tl.load(grad_h_n_ptr + h_own_offsets, mask=h_own_mask, other=0.0).to(tl.float32)
        if CELL == LSTM:
            dc = tl.load(grad_c_n_ptr + own_offsets, mask=own_mask, other=0.0).to(tl.float32)

    # The time loop with loop-invariant code motion off (docs/kernels-v2.md §6.1): LICM
    # would hoist every wgmma shared-memory descriptor of the resident W_hh and the
    # per-element addresses of the per-step loads out of the loop and spill them. Under
    # triton 3.6's interpreter a runtime bound needs kernels/interpreter_compat.py.
    for s in tl.range(0, steps, disable_licm=True):
        if REVERSE:
            t = s
        else:
            t = steps - 1 - s
        t64 = tl.cast(t, tl.int64)
        first_barrier = s * barriers_per_step
        if PARAMS_PER_STEP:
            norm_weight_hh, norm_weight_c, norm_bias_c = _norm_parameters(
                norm_weight_hh_ptr,
                norm_weight_c_ptr,
                norm_bias_c_ptr,
                gate_col,
                col_in,
                units,
                unit_in,
                CELL == LSTM,
                HAS_NORM_BIAS_C,
            )
        if (PARAMS_PER_STEP and BLOCK_B >= 64) or (SPLIT_K == 2 and WGMMA_BACKWARD):
            # 0, which the compiler cannot fold (as the forward kernel's): the recurrent
            # product's first row below, so that its operand addresses are built in the loop,
            # not hoisted out of it by Triton's LICM and spilled (backward spill stores: W2
            # with layer norm, triton 3.6, sm_90a 116 -> 44 B, sm_80 44 -> 32 B; the wgmma
            # pair split, B = 256 GRU batch norm float32 sm_90a, triton 3.6 / 3.8 108 / 52
            # -> 8 / 8 B). Not at B = 16 (sm_90a triton 3.8 0 -> 88 B), nor the mma.sync
            # pair split (the same GRU on sm_80, triton 3.8 64 -> 108 B), nor the B = 256
            # product on sm_80 (RNN layer norm, triton 3.6 104 -> 144 B; kernels-v2 §6.1).
            step_zero = _loop_zero(s, steps)
        else:
            step_zero = 0
        if ROWS_PER_STEP:
            # As the forward kernel's (the launcher's _rows_per_step): LSTM all_batch_norm,
            # sm_80 H = 864, backward spill stores / loads, triton 3.6 72 / 76 -> 32 / 32 B,
            # triton 3.8 40 / 40 -> 0 / 0 B (docs/kernels-v2.md §6.2).
            rows, row_in, own_mask, col_mask, h_own_mask, own_offsets, h_own_offsets = (
                _step_rows(
                    _loop_zero(s, steps), batch, hidden, state_size, unit_in, col_in, h_units,
                    h_unit_in, units, BLOCK_B,
                )
            )  # fmt: skip
        active = (t < lengths) & row_in
        active_f = active.to(tl.float32)
        count = tl.maximum(tl.sum(active_f, axis=0), 1.0)

        if UNIT_HALVES:
            # 1-2 one half of the program's units at a time (the launcher's _unit_halves: the
            # LSTM with batch norm at 128 rows, 16 units a program, its state in memory, the
            # norm gate by gate): every quantity there is per unit column, so the halves are
            # independent. A runtime loop with the half index through _opaque, so only one
            # half's [B, 8] tiles and their addresses are live and none is hoisted out of the
            # time loop: sm_80 bf16 H = 1024 backward spill stores / loads, 16 warps, triton
            # 3.6 412 / 424 -> 4 / 4 (the index plain 16 / 16), triton 3.8 28 / 28 -> 0 / 0
            # (docs/kernels-v2.md §6.2).
            HALF_U: tl.constexpr = BLOCK_U // 2
            for half in tl.range(0, 2, num_stages=1, disable_licm=True):
                _lstm_batch_norm_units_backward(
                    grad_output_ptr,
                    gates_ptr,
                    c_prev_ptr,
                    xhat_c_ptr,
                    rstd_c_ptr,
                    norm_weight_c_ptr,
                    norm_bias_c_ptr,
                    grad_h0_ptr,
                    grad_c0_ptr,
                    grad_norm_weight_c_ptr,
                    grad_norm_bias_c_ptr,
                    grad_xg_ptr,
                    grad_acc_ptr,
                    xhat_hh_ptr,
                    rstd_hh_ptr,
                    norm_weight_hh_ptr,
                    grad_b_hh_ptr,
                    grad_norm_weight_hh_ptr,
                    t,
                    batch,
                    hidden,
                    stride_go_t,
                    stride_go_b,
                    rows,
                    active,
                    active_f,
                    count,
                    pid * BLOCK_U + _opaque(half) * HALF_U + tl.arange(0, HALF_U),
                    seed,
                    zoneout_hidden_base,
                    zoneout_hidden_p,
                    zoneout_cell_base,
                    zoneout_cell_p,
                    TRAINING,
                    HAS_NORM_BIAS_C,
                    USE_ZONEOUT_HIDDEN,
                    USE_ZONEOUT_CELL,
                )
        elif ROW_SPLIT:
            # 1-2 in whole-step row pieces (LSTM with layer norm, state in memory; the
            # launcher's _row_piece). Per piece dL/d N(c~) and its row partials, dL/d N(c~)
            # gamma_c and dL/d o staged in this step's grad_acc rows (this program's columns:
            # nobody else reads them before the end-of-step barrier), one barrier; per piece
            # the cell backward, dL/d xg and dL/d a (staged in grad_acc) with its row partials,
            # one barrier; per piece dL/d acc and the state gradients. The same barriers.
            _backward_pieces_cell_norm(
                grad_output_ptr,
                grad_h0_ptr,
                lengths_ptr,
                norm_weight_c_ptr,
                norm_bias_c_ptr,
                gates_ptr,
                xhat_c_ptr,
                grad_acc_ptr,
                ln_partials_ptr,
                grad_norm_weight_c_ptr,
                grad_norm_bias_c_ptr,
                t,
                first_barrier,
                batch,
                hidden,
                stride_go_t,
                stride_go_b,
                seed,
                zoneout_hidden_base,
                zoneout_hidden_p,
                TRAINING,
                HAS_NORM_BIAS_C,
                USE_ZONEOUT_HIDDEN,
                BLOCK_B,
                BLOCK_U,
                ROW_PIECE,
            )
            grid_barrier(barrier_ptr, first_barrier)
            _backward_pieces_cell(
                lengths_ptr,
                norm_weight_hh_ptr,
                gates_ptr,
                c_prev_ptr,
                xhat_c_ptr,
                rstd_c_ptr,
                xhat_hh_ptr,
                grad_xg_ptr,
                grad_acc_ptr,
                grad_c0_ptr,
                ln_partials_ptr,
                grad_b_hh_ptr,
                grad_norm_weight_hh_ptr,
                t,
                first_barrier,
                batch,
                hidden,
                seed,
                zoneout_cell_base,
                zoneout_cell_p,
                TRAINING,
                USE_ZONEOUT_CELL,
                GATES_PAD,
                BLOCK_B,
                BLOCK_U,
                PROGRAMS_PAD,
                ROW_PIECE,
            )
            grid_barrier(barrier_ptr, first_barrier + 1)
            _backward_pieces_recurrent_norm(
                grad_output_ptr,
                lengths_ptr,
                norm_weight_hh_ptr,
                xhat_hh_ptr,
                rstd_hh_ptr,
                grad_acc_ptr,
                grad_h0_ptr,
                ln_partials_ptr,
                t,
                first_barrier + 1,
                batch,
                hidden,
                stride_go_t,
                stride_go_b,
                seed,
                zoneout_hidden_base,
                zoneout_hidden_p,
                TRAINING,
                USE_ZONEOUT_HIDDEN,
                GATES_PAD,
                BLOCK_B,
                BLOCK_U,
                PROGRAMS_PAD,
                ROW_PIECE,
            )
        else:
            # 1. output gradient, zoneout of h, the cell backward. Inactive rows: no cell path.
            grad_out = tl.load(
                grad_output_ptr
                + t64 * stride_go_t
                + rows[:, None] * stride_go_b
                + h_units[None, :],
                mask=h_own_mask,
                other=0.0,
            ).to(tl.float32)
            if STATE_IN_MEMORY:
                dh_total = tl.where(
                    active[:, None],
                    _own_rows(grad_h0_ptr, h_own_offsets, h_own_mask) + grad_out,
                    0.0,
                )
            else:
                dh_total = tl.where(active[:, None], dh + grad_out, 0.0)
            if USE_ZONEOUT_HIDDEN:
                d_h = zoneout_weight(
                    seed, zoneout_hidden_base, t, rows, h_units, zoneout_hidden_p, TRAINING
                )
                dh_cand = (1.0 - d_h) * dh_total
                dh_direct = d_h * dh_total
            else:
                dh_cand = dh_total
                dh_direct = tl.zeros((BLOCK_B, BLOCK_R), tl.float32)
            cell_barrier = first_barrier
            if HAS_PROJ:
                # dL/d(o tanh(N_c(c~))) of the own cell units = dL/dh~ (every program's P units,
                # exchanged through grad_proj) @ W_hr[:, own units].
                dh_cand = exchange_and_multiply(
                    dh_cand,
                    grad_proj_ptr,
                    _rows_cols_offsets(t, batch, rows, h_units, proj),
                    h_own_mask,
                    barrier_ptr,
                    first_barrier,
                    _rows_cols_offsets(t, batch, rows, ps, proj),
                    row_in[:, None] & p_in[None, :],
                    w_hr_own,
                    INPUT_PRECISION,
                    UPCAST_OPERANDS,
                )
                cell_barrier = first_barrier + 1

            gates_t = _step_tile(gates_ptr, t, batch, rows, units, gate_width)
            if CELL == LSTM:
                i = tl.load(gates_t, mask=own_mask, other=0.0)
                f = tl.load(gates_t + hidden, mask=own_mask, other=0.0)
                g = tl.load(gates_t + 2 * hidden, mask=own_mask, other=0.0)
                o = tl.load(gates_t + 3 * hidden, mask=own_mask, other=0.0)
                c_prev = tl.load(
                    _step_tile(c_prev_ptr, t, batch, rows, units, hidden), mask=own_mask, other=0.0
                )
                if NORM != NORM_NONE:
                    xhat_c = tl.load(
                        _step_tile(xhat_c_ptr, t, batch, rows, units, hidden),
                        mask=own_mask,
                        other=0.0,
                    )
                    c_normed = xhat_c * norm_weight_c[None, :]
                    if HAS_NORM_BIAS_C:
                        c_normed = c_normed + norm_bias_c[None, :]
                else:
                    c_normed = lstm_cell_state(i, f, g, c_prev)
                d_pre_o, dc_normed = lstm_hidden_backward(dh_cand, o, tanh(c_normed))
                if NORM == NORM_BATCH:
                    if C_SUMS_IN_MEMORY:  # (ROW_CHUNKS)
                        _add_to_column_sums(
                            grad_norm_weight_c_ptr,
                            units + step_zero,
                            unit_in,
                            tl.sum(dc_normed * xhat_c, axis=0),
                        )
                        _add_to_column_sums(
                            grad_norm_bias_c_ptr,
                            units + step_zero,
                            unit_in,
                            tl.sum(dc_normed, axis=0),
                        )
                    else:
                        grad_norm_weight_c += tl.sum(dc_normed * xhat_c, axis=0)
                        grad_norm_bias_c += tl.sum(dc_normed, axis=0)
                    rstd_c = tl.load(rstd_c_ptr + t64 * hidden + units, mask=unit_in, other=0.0)
                    dc_from_h = bn_backward(
                        dc_normed * norm_weight_c[None, :],
                        xhat_c,
                        rstd_c,
                        active_f,
                        count,
                        TRAINING,
                    )
                elif NORM == NORM_LAYER:
                    if C_SUMS_IN_MEMORY:
                        _add_to_column_sums(
                            grad_norm_weight_c_ptr,
                            units,
                            unit_in,
                            tl.sum(dc_normed * xhat_c, axis=0),
                        )
                        _add_to_column_sums(
                            grad_norm_bias_c_ptr, units, unit_in, tl.sum(dc_normed, axis=0)
                        )
                    else:
                        grad_norm_weight_c += tl.sum(dc_normed * xhat_c, axis=0)
                        grad_norm_bias_c += tl.sum(dc_normed, axis=0)
                    rstd_c = tl.load(rstd_c_ptr + t64 * batch + rows, mask=row_in, other=0.0)
                    dy_hat = dc_normed * norm_weight_c[None, :]
                    sum_dy, sum_dy_xhat, sum_xhat = row_sums_across_programs(
                        dy_hat,
                        dy_hat * xhat_c,
                        xhat_c,
                        unit_in,
                        ln_partials_ptr,
                        barrier_ptr,
                        cell_barrier,
                        rows,
                        batch,
                        PROGRAMS_PAD,
                    )
                    hidden_f = hidden.to(tl.float32)
                    dc_from_h = (
                        (
                            dy_hat
                            - (sum_dy / hidden_f)[:, None]
                            - (xhat_c - (sum_xhat / hidden_f)[:, None])
                            * (sum_dy_xhat / hidden_f)[:, None]
                        )
                        * rstd_c[:, None]
                        * active_f[:, None]
                    )
                else:
                    dc_from_h = dc_normed
                if STATE_IN_MEMORY:
                    dc_state = tl.where(
                        active[:, None], _own_rows(grad_c0_ptr, own_offsets, own_mask), 0.0
                    )
                else:
                    dc_state = tl.where(active[:, None], dc, 0.0)
                if USE_ZONEOUT_CELL:
                    d_c = zoneout_weight(
                        seed, zoneout_cell_base, t, rows, units, zoneout_cell_p, TRAINING
                    )
                    dc_cand = (1.0 - d_c) * dc_state + dc_from_h
                    dc_direct = d_c * dc_state
                else:
                    dc_cand = dc_state + dc_from_h
                    dc_direct = tl.zeros((BLOCK_B, BLOCK_U), tl.float32)
                d_pre_i, d_pre_f, d_pre_g, dc_through_f = lstm_candidate_backward(
                    dc_cand, i, f, g, c_prev
                )
                if STATE_IN_MEMORY:
                    dc_kept = tl.where(
                        active[:, None],
                        dc_direct + dc_through_f,
                        _own_rows(grad_c0_ptr, own_offsets, own_mask),
                    )
                    if EARLY_STATE:
                        dh_kept = tl.where(
                            active[:, None],
                            dh_direct,
                            _own_rows(grad_h0_ptr, h_own_offsets, h_own_mask),
                        )
                        tl.debug_barrier()
                        tl.store(grad_h0_ptr + h_own_offsets, dh_kept, mask=h_own_mask)
                        tl.store(grad_c0_ptr + own_offsets, dc_kept, mask=own_mask)
                else:
                    dc = tl.where(active[:, None], dc_direct + dc_through_f, dc)
                if not GATE_BY_GATE:
                    d_pre = gates_to_tile(d_pre_i, d_pre_f, d_pre_g, d_pre_o, GATES_PAD, BLOCK_U)
                    d_a = d_pre
            elif CELL == GRU:
                r = tl.load(gates_t, mask=own_mask, other=0.0)
                z = tl.load(gates_t + hidden, mask=own_mask, other=0.0)
                n = tl.load(gates_t + 2 * hidden, mask=own_mask, other=0.0)
                a_n = tl.load(
                    _step_tile(gru_hn_ptr, t, batch, rows, units, hidden), mask=own_mask, other=0.0
                )
                h_prev = tl.load(
                    _step_tile(h_prev_ptr, t, batch, rows, units, hidden), mask=own_mask, other=0.0
                )
                d_pre_r, d_pre_z, d_pre_n, d_a_n, dh_through_z = gru_cell_backward(
                    dh_cand, r, z, n, a_n, h_prev
                )
                dh_direct += dh_through_z
                if STATE_IN_MEMORY:
                    # dL/d xg gate by gate (no [B, G*units] tile of it beside d_a)
                    grad_xg_t = _step_tile(grad_xg_ptr, t, batch, rows, units, gate_width)
                    tl.store(grad_xg_t, d_pre_r, mask=own_mask)
                    tl.store(grad_xg_t + hidden, d_pre_z, mask=own_mask)
                    tl.store(grad_xg_t + 2 * hidden, d_pre_n, mask=own_mask)
                    if EARLY_STATE:
                        dh_kept = tl.where(
                            active[:, None],
                            dh_direct,
                            _own_rows(grad_h0_ptr, h_own_offsets, h_own_mask),
                        )
                        tl.debug_barrier()
                        tl.store(grad_h0_ptr + h_own_offsets, dh_kept, mask=h_own_mask)
                else:
                    d_pre = gates_to_tile(d_pre_r, d_pre_z, d_pre_n, d_pre_n, GATES_PAD, BLOCK_U)
                d_a = gates_to_tile(d_pre_r, d_pre_z, d_a_n, d_a_n, GATES_PAD, BLOCK_U)
            else:
                h_cand = tl.load(gates_t, mask=own_mask, other=0.0)
                d_pre = rnn_cell_backward(dh_cand, h_cand, CELL == RNN_RELU)
                d_a = d_pre
            if GATE_BY_GATE:
                # dL/d xg and 2, gate by gate
                _lstm_batch_norm_backward_gate_by_gate(
                    (d_pre_i, d_pre_f, d_pre_g, d_pre_o),
                    grad_xg_ptr,
                    grad_acc_ptr,
                    xhat_hh_ptr,
                    rstd_hh_ptr,
                    norm_weight_hh_ptr,
                    grad_b_hh_ptr,
                    grad_norm_weight_hh_ptr,
                    t,
                    batch,
                    rows,
                    units + step_zero,
                    unit_in,
                    hidden,
                    active_f,
                    count,
                    TRAINING,
                )
            elif CELL != GRU or not STATE_IN_MEMORY:
                tl.store(
                    _step_tile(grad_xg_ptr, t, batch, rows, gate_col, gate_width),
                    d_pre,
                    mask=col_mask,
                )

            # 2. through the normalisation of W_hh h (d_a = dL/d of its output, before b_hh).
            if not GATE_BY_GATE:
                if SUMS_IN_MEMORY:
                    _add_to_column_sums(grad_b_hh_ptr, gate_col, col_in, tl.sum(d_a, axis=0))
                else:
                    grad_bias += tl.sum(d_a, axis=0)
                if NORM == NORM_BATCH:
                    xhat_hh = tl.load(
                        _step_tile(xhat_hh_ptr, t, batch, rows, gate_col, gate_width),
                        mask=col_mask,
                        other=0.0,
                    )
                    grad_norm_weight_hh += tl.sum(d_a * xhat_hh, axis=0)
                    rstd_hh = tl.load(
                        rstd_hh_ptr + t64 * gate_width + gate_col, mask=col_in, other=0.0
                    )
                    d_acc = bn_backward(
                        d_a * norm_weight_hh[None, :], xhat_hh, rstd_hh, active_f, count, TRAINING
                    )
                elif NORM == NORM_LAYER:
                    xhat_hh = tl.load(
                        _step_tile(xhat_hh_ptr, t, batch, rows, gate_col, gate_width),
                        mask=col_mask,
                        other=0.0,
                    )
                    if SUMS_IN_MEMORY:
                        _add_to_column_sums(
                            grad_norm_weight_hh_ptr, gate_col, col_in, tl.sum(d_a * xhat_hh, axis=0)
                        )
                    else:
                        grad_norm_weight_hh += tl.sum(d_a * xhat_hh, axis=0)
                    rstd_row = tl.load(rstd_hh_ptr + t64 * batch + rows, mask=row_in, other=0.0)
                    dy_hat = d_a * norm_weight_hh[None, :]
                    sum_dy, sum_dy_xhat, sum_xhat = row_sums_across_programs(
                        dy_hat,
                        dy_hat * xhat_hh,
                        xhat_hh,
                        col_in,
                        ln_partials_ptr,
                        barrier_ptr,
                        first_barrier + barriers_per_step - 2,
                        rows,
                        batch,
                        PROGRAMS_PAD,
                    )
                    width_f = gate_width.to(tl.float32)
                    # Centred as bn_backward (the saved xhat's row mean is not 0 in float32).
                    xc_hh = xhat_hh - (sum_xhat / width_f)[:, None]
                    d_acc = (
                        (
                            dy_hat
                            - (sum_dy / width_f)[:, None]
                            - xc_hh * (sum_dy_xhat / width_f)[:, None]
                        )
                        * rstd_row[:, None]
                        * active_f[:, None]
                    )
                else:
                    d_acc = d_a
                tl.store(
                    _step_tile(grad_acc_ptr, t, batch, rows, gate_col, gate_width),
                    d_acc,
                    mask=col_mask,
                )
            if STATE_IN_MEMORY and not EARLY_STATE:
                # dL/dh_{t-1} less its recurrent term (inactive rows: dh unchanged) and the new dc,
                # written once every thread has read this step's dh and dc.
                dh_kept = tl.where(
                    active[:, None], dh_direct, _own_rows(grad_h0_ptr, h_own_offsets, h_own_mask)
                )
                tl.debug_barrier()
                tl.store(grad_h0_ptr + h_own_offsets, dh_kept, mask=h_own_mask)
                if CELL == LSTM:
                    tl.store(grad_c0_ptr + own_offsets, dc_kept, mask=own_mask)
        grid_barrier(barrier_ptr, first_barrier + barriers_per_step - 1)

        # 3. dL/d h_{t-1} of the owned units from every program's columns of step t.
        d_acc_step = grad_acc_ptr + t64 * batch * gate_width
        if ROW_SPLIT or ROW_CHUNKS or PRODUCT_ROW_CHUNKS:
            # Whole-step row pieces (ROWS_PER_DOT = ROW_PIECE), or the product's row chunks
            # (ROW_CHUNKS; PRODUCT_ROW_CHUNKS: the launcher's _product_row_chunks, the RNN with
            # layer norm at 256 rows on sm_80, backward spill stores triton 3.6 104 -> 8 B):
            # the product piece by piece (ROWS_PER_DOT rows a dot), each piece's dh updated
            # in grad_h0 (its rows, this program's units).
            for piece in tl.range(0, BLOCK_B // ROWS_PER_DOT, num_stages=1, disable_licm=True):
                rows_p, row_in_p = _piece_rows(piece, batch, ROWS_PER_DOT, BLOCK_B)
                dh_recurrent = _recurrent_product(
                    d_acc_step,
                    gate_width,
                    batch,
                    rows_p,
                    row_in_p,
                    piece * ROWS_PER_DOT,
                    w_gates,
                    w_hh_ptr,
                    h_units,
                    h_unit_in,
                    state_size,
                    hidden,
                    True,
                    USE_WEIGHT_DROP,
                    weight_drop_key,
                    weight_drop_base,
                    weight_drop_p,
                    weight_drop_keep_scale,
                    False,
                    seed,
                    dropout_base,
                    dropout_p,
                    dropout_keep_scale,
                    ROWS_PER_DOT,
                    BLOCK_R,
                    STREAM_K,
                    GATE_DOTS,
                    ROWS_PER_DOT,
                    INPUT_PRECISION,
                    UPCAST_OPERANDS,
                )
                if USE_DROPOUT:
                    dh_recurrent = dh_recurrent * dropout_mask(
                        seed, dropout_base, rows_p, h_units, dropout_p, dropout_keep_scale
                    )
                offsets_p = rows_p[:, None] * state_size + h_units[None, :]
                mask_p = row_in_p[:, None] & h_unit_in[None, :]
                # (as below: no active mask; an inactive row's dL/d acc is exactly 0)
                dh_next = _own_rows(grad_h0_ptr, offsets_p, mask_p) + dh_recurrent
                tl.debug_barrier()
                tl.store(grad_h0_ptr + offsets_p, dh_next, mask=mask_p)
            tl.debug_barrier()
        else:
            # (The pair split only where W_hh is resident in one dot over all gate rows.)
            if SPLIT_K == 2 and STREAM_K == 0 and not GATE_DOTS and ROWS_PER_DOT < BLOCK_B:
                #    The pair split at 256 rows (the launcher's rows_backward): this program's
                #    half of the gate rows in row chunks of ROWS_PER_DOT rows, each chunk's
                #    partial stored to its rows of the pair scratch as it is made (no
                #    [BLOCK_B, ·] partial in registers, no stitching of chunks), then one
                #    handshake and the pair's sum of the whole step (pair_add). From four
                #    chunks on the chunk index goes through _opaque (as _piece_rows).
                for chunk in tl.range(0, BLOCK_B // ROWS_PER_DOT, num_stages=1, disable_licm=True):
                    if BLOCK_B // ROWS_PER_DOT > 2:
                        chunk_index = _opaque(chunk)
                    else:
                        chunk_index = chunk
                    first_row = chunk_index * ROWS_PER_DOT
                    # The LSTM with batch norm (GATE_BY_GATE) with mma.sync: a zero LLVM
                    # cannot fold (0 when the chunk index is not opaque), a multiple of the K
                    # tile (the loads still vectorise), in the K offset and bound, so each K
                    # tile's column offsets and masks are built in the chunk, not hoisted out
                    # of the time loop and spilled (sm_80 bf16, backward spill stores 96 ->
                    # 40 B). Not with wgmma (float32 LSTM without a norm 0 -> 12 B), nor the
                    # other cells and norms (triton 3.6 sm_80 float32 GRU with layer norm,
                    # dropout and zoneout 52 -> 72 B; docs/kernels-v2.md §6.2).
                    if GATE_BY_GATE and not WGMMA_BACKWARD:
                        k_zero = (chunk_index - chunk) * (BLOCK_GH // K_TILES)
                    else:
                        k_zero = 0
                    dh_part = _resident_product(
                        d_acc_step,
                        gate_width,
                        split_k_start + k_zero,
                        gate_width - split_k_start + k_zero,
                        batch,
                        first_row + step_zero,
                        w_gates,
                        tl.zeros((ROWS_PER_DOT, 2 * BLOCK_U), tl.float32),
                        False,
                        seed,
                        dropout_base,
                        dropout_p,
                        dropout_keep_scale,
                        SPLIT_TILES,
                        ROWS_PER_DOT,
                        INPUT_PRECISION,
                        UPCAST_OPERANDS,
                    )
                    pair_store(
                        dh_part,
                        pair_partials_ptr,
                        first_row + tl.arange(0, ROWS_PER_DOT),
                        BLOCK_B,
                    )
                dh_recurrent = pair_add(pair_partials_ptr, barrier_ptr + 1, s, rows, BLOCK_U)
            elif SPLIT_K == 2 and STREAM_K == 0 and not GATE_DOTS:
                #    This program's half of the gate rows for the pair's columns, then the pair's
                #    partials added (kernels/primitives.py pair_sum).
                dh_partial = _resident_product(
                    d_acc_step,
                    gate_width,
                    split_k_start,
                    gate_width - split_k_start,
                    batch,
                    step_zero,
                    w_gates,
                    tl.zeros((BLOCK_B, 2 * BLOCK_U), tl.float32),
                    False,
                    seed,
                    dropout_base,
                    dropout_p,
                    dropout_keep_scale,
                    SPLIT_TILES,
                    ROWS_PER_DOT,
                    INPUT_PRECISION,
                    UPCAST_OPERANDS,
                )
                dh_recurrent = pair_sum(
                    dh_partial, pair_partials_ptr, barrier_ptr + 1, s, rows, BLOCK_U
                )
            else:
                dh_recurrent = _recurrent_product(
                    d_acc_step,
                    gate_width,
                    batch,
                    rows,
                    row_in,
                    step_zero,
                    w_gates,
                    w_hh_ptr,
                    h_units,
                    h_unit_in,
                    state_size,
                    hidden,
                    True,
                    USE_WEIGHT_DROP,
                    weight_drop_key,
                    weight_drop_base,
                    weight_drop_p,
                    weight_drop_keep_scale,
                    False,
                    seed,
                    dropout_base,
                    dropout_p,
                    dropout_keep_scale,
                    BLOCK_B,
                    BLOCK_R,
                    STREAM_K,
                    GATE_DOTS,
                    ROWS_PER_DOT,
                    INPUT_PRECISION,
                    UPCAST_OPERANDS,
                    ROW_CLAMP,
                )
            if USE_DROPOUT:
                if STATE_IN_MEMORY:
                    m_h_own = dropout_mask(
                        seed, dropout_base, rows, h_units, dropout_p, dropout_keep_scale
                    )
                dh_recurrent = dh_recurrent * m_h_own
            if STATE_IN_MEMORY:
                # No mask: an inactive row's dL/d acc is exactly 0 (every path above multiplies
                # it by the active mask or by a zero dh), so is its recurrent term (unless a
                # saved activation or W_hh is non-finite), and keeping `active` across the
                # barrier and the product spilled (sm_80 RNN: 120 B, 16 B without).
                dh_next = _own_rows(grad_h0_ptr, h_own_offsets, h_own_mask) + dh_recurrent
                tl.debug_barrier()
                tl.store(grad_h0_ptr + h_own_offsets, dh_next, mask=h_own_mask)
                tl.debug_barrier()
            else:
                dh = tl.where(active[:, None], dh_direct + dh_recurrent, dh)

    if not STATE_IN_MEMORY:
        tl.store(grad_h0_ptr + h_own_offsets, dh, mask=h_own_mask)
        if CELL == LSTM:
            tl.store(grad_c0_ptr + own_offsets, dc, mask=own_mask)
    if not (SUMS_IN_MEMORY or GATE_BY_GATE):
        tl.store(grad_b_hh_ptr + gate_col, grad_bias, mask=col_in)
        if NORM != NORM_NONE:
            tl.store(grad_norm_weight_hh_ptr + gate_col, grad_norm_weight_hh, mask=col_in)
    if NORM != NORM_NONE and not C_SUMS_IN_MEMORY:
        if CELL == LSTM:
            tl.store(grad_norm_weight_c_ptr + units, grad_norm_weight_c, mask=unit_in)
            tl.store(grad_norm_bias_c_ptr + units, grad_norm_bias_c, mask=unit_in)
