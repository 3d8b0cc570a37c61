"""Building blocks shared by the persistent recurrence kernels (kernels/recurrence.py).

Everything here is a ``@triton.jit`` helper inlined into the kernels:

* numerically stable activations (the interpreter has no ``tl.math.tanh``, and the naive
  ``(e^x - e^-x) / (e^x + e^-x)`` form gives inf/inf = NaN for large ``|x|``),
* the grid barrier that lets one program per SM meet the others between time steps, and
  the pairwise handshake that adds a program pair's split-K partial products (``pair_sum``:
  ``pair_store``, ``pair_add``),
* the loads of the resident W_hh tiles and the per-step recurrent product (tensor cores),
  and the publish / barrier / read-back / product exchange of a row block split over the
  programs (the projection's),
* the Philox mask draws, built from the offset layout of ``fusedrnn/philox.py``,
* the gate-tile view (a program's gate columns as ``[rows, gates, units]``),
* the normalisation statistics: recurrent batch norm over the active rows of a column, and
  layer norm over a row whose columns are spread over several programs.

Tile vocabulary used in every docstring: ``BLOCK_B`` padded batch rows, ``BLOCK_U`` hidden
units owned by one program, ``GATES_PAD * BLOCK_U`` that program's *gate columns*
(column ``j`` is gate ``j // BLOCK_U`` of unit ``pid * BLOCK_U + j % BLOCK_U``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from fusedrnn import philox

# The offset layout of fusedrnn/philox.py, mirrored (never redefined) for the kernels.
STEP_SHIFT: tl.constexpr = tl.constexpr(philox.STEP_SHIFT)  # 38
BATCH_SHIFT: tl.constexpr = tl.constexpr(philox.BATCH_SHIFT)  # 20
WEIGHT_ROW_SHIFT: tl.constexpr = tl.constexpr(philox.WEIGHT_ROW_SHIFT)  # 20

# tanh(x) for |x| below this uses its odd Taylor polynomial: the exp form 1 - e^{-2|x|}
# cancels there and would lose up to ulp(1) / (2|x|) relative accuracy.
TANH_SERIES_LIMIT: tl.constexpr = tl.constexpr(0.25)


# ----------------------------------------------------------------------------------------
# Activations (float32 in, float32 out)
# ----------------------------------------------------------------------------------------
@triton.jit
def sigmoid(x):
    """1 / (1 + e^-x) that never overflows: exp is only taken of -|x| <= 0."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def tanh(x):
    """tanh accurate to a few float32 ulps for every x, with no overflow.

    ``|x| >= 0.25``: ``(1 - e) / (1 + e)`` with ``e = exp(-2|x|)`` in (0, 0.61], so nothing
    overflows and the cancellation in ``1 - e`` costs at most ~1e-7 relative.
    ``|x| < 0.25``: the Taylor series to x^11 (truncation < 1e-8 relative).
    """
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    large = (1.0 - e) / (1.0 + e)
    x2 = x * x
    series = 1.0 + x2 * (
        -1.0 / 3.0
        + x2
        * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0 + x2 * (-1382.0 / 155925.0))))
    )
    small = x * series
    return tl.where(ax < TANH_SERIES_LIMIT, small, tl.where(x >= 0, large, -large))


# ----------------------------------------------------------------------------------------
# Grid barrier
# ----------------------------------------------------------------------------------------
@triton.jit
def grid_barrier(counter_ptr, generation):
    """Wait until every program of the grid has arrived at barrier number ``generation``.

    ``counter_ptr``: int64 [1], zero at launch, only ever incremented, so barrier ``n`` is
    passed once it reaches ``(n + 1) * num_programs`` (no reset, no sense reversal). 64 bits
    cannot wrap: 2^63 arrivals are ~10^5 years of 132 programs at 10^6 barriers per second,
    where an int32 counter wrapped after ~5M step-barriers.

    The CTA barrier before the arrival makes every thread's global stores of this step
    happen-before thread 0's release (a scalar atomic runs on one thread); the acquire
    polls then make the other programs' stores visible here, and the CTA barrier after
    the wait keeps every thread from reading before the wait is over. Loads of data written
    by other programs additionally use ``cache_modifier=".cg"`` (L2, never a stale L1).
    The launcher launches cooperatively (``launch_cooperative_grid=True``), so all programs
    are co-resident or the launch fails: a spin here never waits on a program that cannot
    run. With one program (the interpreter) the first poll already passes.
    """
    tl.debug_barrier()
    arrived = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu") + 1
    target = (tl.cast(generation, tl.int64) + 1) * tl.num_programs(0).to(tl.int64)
    while arrived < target:
        arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def pair_sum(partial, scratch_ptr, flags_ptr, step, rows, BLOCK_U: tl.constexpr):
    """Split-K over a program pair: programs ``2p`` and ``2p + 1`` each hold half of the K
    rows of the pair's ``2 * BLOCK_U`` columns (the backward's W_hh tiles) and computed
    ``partial`` (float32 ``[BLOCK_B, 2 * BLOCK_U]``) over their half. Returns the full sum
    for this program's own ``BLOCK_U`` columns (column block ``pid % 2``): own partial plus
    the partner's (``pid ^ 1``).

    Each program writes its partial to its slot of ``scratch_ptr`` (float32 ``[programs,
    BLOCK_B, 2 * BLOCK_U]``; :func:`pair_store`), then :func:`pair_add`."""
    BLOCK_B: tl.constexpr = partial.shape[0]
    pair_store(partial, scratch_ptr, rows, BLOCK_B)
    return pair_add(scratch_ptr, flags_ptr, step, rows, BLOCK_U)


@triton.jit
def pair_store(partial, scratch_ptr, rows, BLOCK_B: tl.constexpr):
    """This program's split-K partial ``partial`` (float32 ``[len(rows), 2 * BLOCK_U]``) of
    the rows ``rows`` into its slot of ``scratch_ptr`` (``[programs, BLOCK_B, 2 *
    BLOCK_U]``): the whole step's rows at once (:func:`pair_sum`), or one row chunk of the
    product at a time (the pair split at 256 rows), all before :func:`pair_add`."""
    pid = tl.program_id(0)
    WIDTH: tl.constexpr = partial.shape[1]
    cols = tl.arange(0, WIDTH)
    slot = rows[:, None] * WIDTH + cols[None, :]
    tl.store(scratch_ptr + pid * (BLOCK_B * WIDTH) + slot, partial)


@triton.jit
def pair_add(scratch_ptr, flags_ptr, step, rows, BLOCK_U: tl.constexpr):
    """The pair's sum over its two halves of the K rows for this program's own ``BLOCK_U``
    columns (column block ``pid % 2``) and the rows ``rows`` (all ``BLOCK_B`` of the
    scratch): own partial plus the partner's (``pid ^ 1``), both stored by
    :func:`pair_store`.

    Each program releases its int64 flag (``flags_ptr[pid]``, zero at launch, one increment
    per call, so after step ``step`` it holds ``step + 1``) and spins with acquire loads
    until the partner's flag has reached ``step + 1``: a pairwise handshake, not a grid
    barrier. The CTA barriers order every thread's stores before the release and every read
    after the wait (as :func:`grid_barrier`). A slot is rewritten one step later only after
    the next grid barrier, which the partner reaches only after its reads of this step, so
    one slot per program suffices. Both halves are read back from L2 (``.cg``) and summed
    in the same order by both programs."""
    pid = tl.program_id(0)
    partner = pid ^ 1
    BLOCK_B: tl.constexpr = rows.shape[0]
    WIDTH: tl.constexpr = 2 * BLOCK_U
    tl.debug_barrier()
    tl.atomic_add(flags_ptr + pid, 1, sem="release", scope="gpu")
    target = tl.cast(step, tl.int64) + 1
    seen = tl.atomic_add(flags_ptr + partner, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(flags_ptr + partner, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()
    own = (pid % 2) * BLOCK_U + tl.arange(0, BLOCK_U)
    own_slot = rows[:, None] * WIDTH + own[None, :]
    first = tl.load(
        scratch_ptr + (pid - pid % 2) * (BLOCK_B * WIDTH) + own_slot, cache_modifier=".cg"
    )
    second = tl.load(
        scratch_ptr + (pid - pid % 2 + 1) * (BLOCK_B * WIDTH) + own_slot, cache_modifier=".cg"
    )
    return first + second


# ----------------------------------------------------------------------------------------
# The recurrent product: W_hh loaded on chip once per launch, one dot per step
# ----------------------------------------------------------------------------------------
@triton.jit
def load_w_hh_tile(
    w_hh_ptr,
    rows,
    cols,
    mask,
    hidden,
    USE_WEIGHT_DROP: tl.constexpr,
    weight_drop_key,
    weight_drop_base,
    weight_drop_p,
    weight_drop_keep_scale,
):
    """``W_hh[rows, cols]`` in W_hh's dtype, for index tiles ``rows`` / ``cols`` that broadcast
    to the tile's shape: the forward kernel's resident tile is its gate rows transposed
    (``rows`` along dim 1, every input unit ``k`` along dim 0), the backward kernel's every
    gate row (dim 0) by its own units (dim 1). Elements outside ``mask`` are 0.

    The ONE place the kernels read W_hh. ``USE_WEIGHT_DROP``: times weight drop's keep-scaled
    DropConnect mask of each element ``(row, col)`` (:func:`weight_drop_scale`), drawn once
    per launch and regenerated the same by the backward kernel's load.
    """
    w = tl.load(w_hh_ptr + rows * hidden + cols, mask=mask, other=0.0)
    if USE_WEIGHT_DROP:
        scale = weight_drop_scale(
            weight_drop_key, weight_drop_base, rows, cols, weight_drop_p, weight_drop_keep_scale
        )
        w = (w.to(tl.float32) * scale).to(w.dtype)
    return w


@triton.jit
def fma_dot(a, w, acc, CHUNK_K: tl.constexpr):
    """``acc + a @ w`` in exact float32 FMA (``input_precision="ieee"``), as dots of at most
    ``CHUNK_K`` of the K columns each (K a power of two; column k goes to chunk ``k mod
    K/CHUNK_K``: a reshape and split, halving K each level). triton's FMA dot holds both
    operands, whole K, in registers (at K = 512 the [16, 512] h operand is 1024 floats a
    thread at 8 warps), which spilled KBs; per chunk the compiler keeps the W tile in shared
    memory as K/CHUNK_K pieces and loads one at a time (docs/kernels-v2.md §2)."""
    if a.shape[1] <= CHUNK_K:
        out = tl.dot(a, w, acc, input_precision="ieee")
    else:
        a0, a1 = tl.split(tl.reshape(a, (a.shape[0], a.shape[1] // 2, 2)))
        w0, w1 = tl.split(tl.permute(tl.reshape(w, (w.shape[0] // 2, 2, w.shape[1])), (0, 2, 1)))
        out = fma_dot(a0, w0, acc, CHUNK_K)
        out = fma_dot(a1, w1, out, CHUNK_K)
    return out


@triton.jit
def recurrent_dot(
    operand, w_tile, acc, INPUT_PRECISION: tl.constexpr, UPCAST_OPERANDS: tl.constexpr
):
    """``acc + operand @ w_tile`` in float32 (``acc`` float32): the per-step recurrent
    product, accumulated in place on the tensor cores.

    ``operand`` (float32: ``m_h * h_{t-1}`` or ``dL/d acc``) is rounded to the resident
    tile's dtype, so bf16 / fp16 operands reach the tensor cores in their own dtype with fp32
    accumulation, and float32 ones run with ``input_precision=INPUT_PRECISION`` ("tf32":
    TF32 tensor cores; "ieee": exact FP32 FMA, in 8 K chunks: :func:`fma_dot`), which
    the launcher sets from torch's cuDNN RNN TF32 flag. ``UPCAST_OPERANDS`` (the interpreter,
    whose numpy dot has no bf16 and no TF32) multiplies both in float32 instead, so CI runs
    this same kernel source.
    """
    if UPCAST_OPERANDS:
        product = tl.dot(operand.to(tl.float32), w_tile.to(tl.float32), acc, input_precision="ieee")
    elif INPUT_PRECISION == "ieee" and w_tile.dtype == tl.float32:
        # 8 chunks (as measured at K = 64 ... 1024), none below K = 16: triton 3.6 rejects a
        # dot of K < 16 (3.8 takes it). The launcher's FMA constants mirror these numbers.
        if w_tile.shape[0] >= 64:
            product = fma_dot(operand, w_tile, acc, max(w_tile.shape[0] // 8, 16))
        else:
            product = tl.dot(operand, w_tile, acc, input_precision="ieee")
    else:
        product = tl.dot(operand.to(w_tile.dtype), w_tile, acc, input_precision=INPUT_PRECISION)
    return product


@triton.jit
def exchange_and_multiply(
    own_values,
    exchange_ptr,
    own_offsets,
    own_mask,
    barrier_ptr,
    generation,
    full_offsets,
    full_mask,
    w_tile,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_OPERANDS: tl.constexpr,
):
    """``full @ w_tile`` in float32, where ``full`` [BLOCK_B, K] is a row block whose K
    columns are split over the programs: each program publishes its ``own_values`` to
    ``exchange_ptr + own_offsets`` (``own_mask``), all meet at barrier ``generation``, and each
    reads the whole block back from ``exchange_ptr + full_offsets`` (``full_mask``, 0
    elsewhere) through L2 (``.cg``: never a stale L1 line) for one product against its
    resident ``w_tile`` [K, N] (:func:`recurrent_dot`).

    The projection's two exchanges: h~ (forward, times ``W_hr^T`` of the program's h units)
    and dL/dh~ (backward, times ``W_hr`` of its cell units).
    """
    tl.store(exchange_ptr + own_offsets, own_values, mask=own_mask)
    grid_barrier(barrier_ptr, generation)
    full = tl.load(exchange_ptr + full_offsets, mask=full_mask, other=0.0, cache_modifier=".cg")
    return recurrent_dot(
        full,
        w_tile,
        tl.zeros((full.shape[0], w_tile.shape[1]), tl.float32),
        INPUT_PRECISION,
        UPCAST_OPERANDS,
    )


# ----------------------------------------------------------------------------------------
# Masks (Philox, fusedrnn/philox.py's layout: base + (t << 38) + (b << 20) + unit)
# ----------------------------------------------------------------------------------------
@triton.jit
def mask_uniform(seed, base_offset, t, rows, units):
    """Uniform [0, 1) numbers of mask elements (t, rows[:, None], units[None, :]).

    ``base_offset`` is philox.mask_base_offset(stream, layer, direction) (int64);
    ``t`` is 0 for variational masks. Identical to ``philox.rand`` of the same offsets.
    """
    offsets = (
        tl.cast(base_offset, tl.int64)
        + (tl.cast(t, tl.int64) << STEP_SHIFT)
        + (rows.to(tl.int64)[:, None] << BATCH_SHIFT)
        + units.to(tl.int64)[None, :]
    )
    return tl.rand(seed, offsets)


@triton.jit
def dropout_mask(seed, base_offset, rows, units, p, keep_scale):
    """Variational recurrent-dropout mask [rows, units]: 0 or 1/(1-p) (same for all t)."""
    u = mask_uniform(seed, base_offset, 0, rows, units)
    return tl.where(u >= p, keep_scale, 0.0)


@triton.jit
def weight_drop_scale(key, base_offset, row, col, p, keep_scale):
    """Keep-scaled weight-drop (DropConnect) mask of W_hh elements (row, col), 0 or 1/(1-p).

    ``row`` and ``col`` are integer tensors that broadcast against each other (a tile of
    W_hh or of its transpose); ``key`` is philox.weight_drop_key(seed) and ``base_offset``
    philox.weight_drop_base_offset(layer, direction). Identical to philox.weight_drop_uniform.
    """
    offsets = (
        tl.cast(base_offset, tl.int64) + (row.to(tl.int64) << WEIGHT_ROW_SHIFT) + col.to(tl.int64)
    )
    return tl.where(tl.rand(key, offsets) >= p, keep_scale, 0.0)


@triton.jit
def zoneout_weight(seed, base_offset, t, rows, units, p, TRAINING: tl.constexpr):
    """Weight d of the previous state in ``d * prev + (1 - d) * candidate``, [rows, units].

    Training: a Bernoulli(p) draw per (t, row, unit); evaluation: the expectation p.
    """
    if TRAINING:
        u = mask_uniform(seed, base_offset, t, rows, units)
        d = tl.where(u < p, 1.0, 0.0)
    else:
        d = tl.zeros((rows.shape[0], units.shape[0]), tl.float32) + p
    return d


@triton.jit
def zoneout(prev, candidate, d):
    """The zoneout mix; with d in {0, 1} it is exactly prev or candidate."""
    return d * prev + (1.0 - d) * candidate


# ----------------------------------------------------------------------------------------
# Gate columns
# ----------------------------------------------------------------------------------------
@triton.jit
def gate_of(tile, gate: tl.constexpr, GATES_PAD: tl.constexpr, BLOCK_U: tl.constexpr):
    """Gate ``gate`` of a gate-column tile [BLOCK_B, GATES_PAD * BLOCK_U] -> [BLOCK_B, BLOCK_U]."""
    tile3 = tl.reshape(tile, (tile.shape[0], GATES_PAD, BLOCK_U))
    gate_index = tl.arange(0, GATES_PAD)[None, :, None]
    return tl.sum(tl.where(gate_index == gate, tile3, 0.0), axis=1)


@triton.jit
def gates_to_tile(g0, g1, g2, g3, GATES_PAD: tl.constexpr, BLOCK_U: tl.constexpr):
    """Inverse of gate_of: four [BLOCK_B, BLOCK_U] tiles -> [BLOCK_B, GATES_PAD * BLOCK_U].

    Gates beyond GATES_PAD are ignored (pass any tile of the right shape).
    """
    gate_index = tl.arange(0, GATES_PAD)[None, :, None]
    tile3 = tl.where(
        gate_index == 0,
        g0[:, None, :],
        tl.where(
            gate_index == 1,
            g1[:, None, :],
            tl.where(gate_index == 2, g2[:, None, :], g3[:, None, :]),
        ),
    )
    return tl.reshape(tile3, (g0.shape[0], GATES_PAD * BLOCK_U))


# ----------------------------------------------------------------------------------------
# Normalisation statistics
# ----------------------------------------------------------------------------------------
@triton.jit
def active_column_stats(x, active_f):
    """Recurrent BN statistics of each column over the active rows (float 0/1 [BLOCK_B]).

    Two passes (mean, then squared deviations) as the reference does; biased variance;
    the count is clamped to 1 so a step with no active row gives mean 0, var 0.
    """
    count = tl.maximum(tl.sum(active_f, axis=0), 1.0)
    mean = tl.sum(x * active_f[:, None], axis=0) / count
    dev = (x - mean[None, :]) * active_f[:, None]
    var = tl.sum(dev * dev, axis=0) / count
    return mean, var, count


@triton.jit
def bn_backward(dy_hat, xhat, rstd, active_f, count, TRAINING: tl.constexpr):
    """d(input of BN) from dy_hat = d(output) * gamma, per column over the active rows.

    Training: ``rstd * (dy_hat - mean(dy_hat) - (xhat - mean(xhat)) * mean(dy_hat * xhat))``
    with means over the active rows (the statistics depend on them only); inactive rows get 0.
    ``mean(xhat)`` is 0 in exact arithmetic, but the saved float32 ``xhat`` carries the
    forward's rounding of the batch mean, ``rstd`` times it (x ~300 where var ~ eps); without
    the term that error enters dx unprojected (``sum(dx) = -rstd sum(xhat) mean(dy xhat)``, not
    0), many times the float32 reference's, whose autograd centres dx last (dx = d_dev -
    mean(d_dev)) exactly as this form does (docs/design.md §3.3).
    Evaluation: the statistics are constants, so ``dy_hat * rstd``.
    """
    if TRAINING:
        m1 = tl.sum(dy_hat * active_f[:, None], axis=0) / count
        m2 = tl.sum(dy_hat * xhat * active_f[:, None], axis=0) / count
        mx = tl.sum(xhat * active_f[:, None], axis=0) / count
        xc = xhat - mx[None, :]
        dx = (dy_hat - m1[None, :] - xc * m2[None, :]) * rstd[None, :] * active_f[:, None]
    else:
        dx = dy_hat * rstd[None, :] * active_f[:, None]
    return dx


# Largest [programs, BLOCK_B] tile of the layer-norm workspace read back at once: at B = 256
# and 64 programs one [PROGRAMS_PAD, BLOCK_B] tile per statistic is 32 registers a thread
# (16 warps), two or three of them beside the step's state (docs/kernels-v2.md §6.1); so
# from BLOCK_B * PROGRAMS_PAD > this the programs are read in chunks (B <= 64 at most 64
# programs: one chunk, unchanged).
ROW_EXCHANGE_TILE: tl.constexpr = tl.constexpr(4096)


@triton.jit
def row_values_slot(partials_ptr, generation, Q: tl.constexpr, WORKSPACE_ROWS: tl.constexpr):
    """Base of slot ``generation % 2`` of a row-statistics workspace, float32 [2, Q,
    num_programs, WORKSPACE_ROWS] (:func:`_publish_row_values`)."""
    return partials_ptr + (generation % 2) * (Q * (tl.num_programs(0) * WORKSPACE_ROWS))


@triton.jit
def store_row_values(values, partials_ptr, generation, rows, batch, WORKSPACE_ROWS: tl.constexpr):
    """Store this program's per-row values ``values`` (a tuple of Q float32 vectors over
    ``rows``, any subset of the workspace's ``WORKSPACE_ROWS`` rows) in slot ``generation %
    2``, without meeting the other programs: the whole-step row pieces publish piece after
    piece and then meet once (kernels/recurrence.py ``ROW_PIECE``). Returns the slot's base."""
    pid = tl.program_id(0)
    row_in = rows < batch
    stride = tl.num_programs(0) * WORKSPACE_ROWS
    slot_ptr = row_values_slot(partials_ptr, generation, len(values), WORKSPACE_ROWS)
    for q in tl.static_range(len(values)):
        tl.store(slot_ptr + q * stride + pid * WORKSPACE_ROWS + rows, values[q], mask=row_in)
    return slot_ptr


@triton.jit
def _publish_row_values(values, partials_ptr, barrier_ptr, generation, rows, batch):
    """The row-statistics exchange of the layer-norm helpers: publish this program's per-row
    values ``values`` (a tuple of Q [BLOCK_B] float32 vectors) and meet the other programs
    at barrier ``generation`` (one barrier for all Q); returns the slot's base pointer, from
    which :func:`_gather_row_values` reads every program's values back.

    ``partials_ptr``: float32 [2, Q, num_programs, BLOCK_B], slot ``generation % 2`` used
    (a compile-time row stride). A slot written for barrier g is next written for barrier
    g + 2, which no program reaches before every program has passed barrier g + 1, after its
    reads of g: so one workspace serves every exchange of a step (both of the forward's,
    W_hh h and c~, as both of the backward's), and the slot's address varies with the step,
    so the compiler rebuilds the addresses in the time loop rather than hoisting them out
    of it and keeping (spilling) them all through the loop (W2 with layer norm: 132 B).
    """
    slot_ptr = store_row_values(values, partials_ptr, generation, rows, batch, rows.shape[0])
    grid_barrier(barrier_ptr, generation)
    return slot_ptr


@triton.jit
def _gather_row_values(
    slot_ptr, q, first_program, rows, batch, CHUNK: tl.constexpr, WORKSPACE_ROWS: tl.constexpr
):
    """Statistic ``q`` of programs ``first_program ... + CHUNK`` from a published slot
    (:func:`_publish_row_values`): a [CHUNK, rows] tile (0 in padding), the programs'
    indices and the mask of the real (program, row) entries. Read through L2 (``.cg``)."""
    num_programs = tl.num_programs(0)
    programs = first_program + tl.arange(0, CHUNK)
    ws_mask = (programs < num_programs)[:, None] & (rows < batch)[None, :]
    tile = tl.load(
        slot_ptr
        + q * (num_programs * WORKSPACE_ROWS)
        + programs[:, None] * WORKSPACE_ROWS
        + rows[None, :],
        mask=ws_mask,
        other=0.0,
        cache_modifier=".cg",
    )
    return tile, programs, ws_mask


@triton.jit
def layer_norm_partials(
    x, col_valid, hidden, COLUMNS_PER_UNIT: tl.constexpr, BLOCK_U: tl.constexpr
):
    """This program's share of the layer-norm statistics of each row of ``x`` [rows, C] (its
    columns; ``col_valid`` [C] which are real): the sum and the M2 (squared deviations from
    its own mean) over its ``COLUMNS_PER_UNIT * min(BLOCK_U, hidden - pid * BLOCK_U)``
    columns."""
    pid = tl.program_id(0)
    valid_f = col_valid.to(tl.float32)[None, :]
    local_units = tl.minimum(hidden - pid * BLOCK_U, BLOCK_U)
    local_count = (COLUMNS_PER_UNIT * local_units).to(tl.float32)
    local_sum = tl.sum(x * valid_f, axis=1)
    local_dev = (x - (local_sum / local_count)[:, None]) * valid_f
    local_m2 = tl.sum(local_dev * local_dev, axis=1)
    return local_sum, local_m2


@triton.jit
def _m2_around(
    sums,
    m2s,
    programs,
    ws_mask,
    mean,
    hidden,
    COLUMNS_PER_UNIT: tl.constexpr,
    BLOCK_U: tl.constexpr,
):
    """Chan's merge of a [programs, rows] tile of published (sum, M2) around the rows'
    ``mean``: ``sum_q M2_q + n_q (mean_q - mean)^2`` over those programs (0 in padding)."""
    counts = (
        COLUMNS_PER_UNIT * tl.minimum(tl.maximum(hidden - programs * BLOCK_U, 0), BLOCK_U)
    ).to(tl.float32)
    program_mean = sums / tl.maximum(counts, 1.0)[:, None]
    shift = tl.where(ws_mask, program_mean - mean[None, :], 0.0)
    return tl.sum(m2s + counts[:, None] * shift * shift, axis=0)


@triton.jit
def layer_norm_merge(
    slot_ptr,
    rows,
    batch,
    hidden,
    total_count,
    COLUMNS_PER_UNIT: tl.constexpr,
    BLOCK_U: tl.constexpr,
    PROGRAMS_PAD: tl.constexpr,
    WORKSPACE_ROWS: tl.constexpr,
):
    """Mean and variance of each row of ``rows`` from every program's published (sum, M2)
    (:func:`layer_norm_partials`, in the slot at ``slot_ptr``): Chan's parallel formula
    ``M2 = sum_q M2_q + n_q (mean_q - mean)^2``, no E[x^2] - E[x]^2 cancellation. Program q
    owns ``COLUMNS_PER_UNIT * min(BLOCK_U, hidden - q * BLOCK_U)`` columns; ``total_count``
    is their sum. Row by row, so any subset of the rows gives the same numbers."""
    CHUNK: tl.constexpr = min(PROGRAMS_PAD, max(1, ROW_EXCHANGE_TILE // rows.shape[0]))
    if CHUNK == PROGRAMS_PAD:  # every program's partials in one [PROGRAMS_PAD, rows] tile
        sums, programs, ws_mask = _gather_row_values(
            slot_ptr, 0, 0, rows, batch, CHUNK, WORKSPACE_ROWS
        )
        m2s, _, _ = _gather_row_values(slot_ptr, 1, 0, rows, batch, CHUNK, WORKSPACE_ROWS)
        mean = tl.sum(sums, axis=0) / total_count
        m2 = _m2_around(sums, m2s, programs, ws_mask, mean, hidden, COLUMNS_PER_UNIT, BLOCK_U)
    else:
        # In chunks of programs (ROW_EXCHANGE_TILE; a runtime loop, so the compiler does
        # not issue every chunk's loads at once): the row sums first (the mean), then
        # Chan's merge of the M2s around it (two passes over the workspace).
        total = tl.zeros((rows.shape[0],), tl.float32)
        for first in tl.range(0, tl.num_programs(0), CHUNK):
            sums, _, _ = _gather_row_values(slot_ptr, 0, first, rows, batch, CHUNK, WORKSPACE_ROWS)
            total += tl.sum(sums, axis=0)
        mean = total / total_count
        m2 = tl.zeros((rows.shape[0],), tl.float32)
        for first in tl.range(0, tl.num_programs(0), CHUNK):
            sums, programs, ws_mask = _gather_row_values(
                slot_ptr, 0, first, rows, batch, CHUNK, WORKSPACE_ROWS
            )
            m2s, _, _ = _gather_row_values(slot_ptr, 1, first, rows, batch, CHUNK, WORKSPACE_ROWS)
            m2 += _m2_around(sums, m2s, programs, ws_mask, mean, hidden, COLUMNS_PER_UNIT, BLOCK_U)
    return mean, m2 / total_count


@triton.jit
def layer_norm_row_stats(
    x,
    col_valid,
    partials_ptr,
    barrier_ptr,
    generation,
    rows,
    batch,
    hidden,
    total_count,
    COLUMNS_PER_UNIT: tl.constexpr,
    BLOCK_U: tl.constexpr,
    PROGRAMS_PAD: tl.constexpr,
):
    """Mean and variance of each row of a matrix whose columns are split over the programs.

    ``x`` [BLOCK_B, C] is this program's columns, ``col_valid`` [C] which are real.
    ``partials_ptr``: float32 [2 slots, 2, num_programs, BLOCK_B] workspace for (sum, M2) per
    program (:func:`_publish_row_values`).
    Each program publishes its local sum and M2 (:func:`layer_norm_partials`), meets the
    others at barrier ``generation``, and merges all partials (:func:`layer_norm_merge`):
    one barrier. With one program this is the two-pass mean/variance of the reference.
    """
    local_sum, local_m2 = layer_norm_partials(x, col_valid, hidden, COLUMNS_PER_UNIT, BLOCK_U)
    slot_ptr = _publish_row_values(
        (local_sum, local_m2), partials_ptr, barrier_ptr, generation, rows, batch
    )
    return layer_norm_merge(
        slot_ptr,
        rows,
        batch,
        hidden,
        total_count,
        COLUMNS_PER_UNIT,
        BLOCK_U,
        PROGRAMS_PAD,
        rows.shape[0],
    )


@triton.jit
def row_sums_partials(a, b, c, col_valid):
    """This program's row sums of ``a``, ``b``, ``c`` [rows, C] over its real columns
    (``col_valid``): the values :func:`row_sums_merge` adds over the programs."""
    valid_f = col_valid.to(tl.float32)[None, :]
    return tl.sum(a * valid_f, axis=1), tl.sum(b * valid_f, axis=1), tl.sum(c * valid_f, axis=1)


@triton.jit
def row_sums_merge(slot_ptr, rows, batch, PROGRAMS_PAD: tl.constexpr, WORKSPACE_ROWS: tl.constexpr):
    """The three row sums of ``rows`` over every program's published partials (the slot at
    ``slot_ptr``, :func:`row_sums_partials`)."""
    CHUNK: tl.constexpr = min(PROGRAMS_PAD, max(1, ROW_EXCHANGE_TILE // rows.shape[0]))
    if CHUNK == PROGRAMS_PAD:  # one tile per sum
        tile_a, _, _ = _gather_row_values(slot_ptr, 0, 0, rows, batch, CHUNK, WORKSPACE_ROWS)
        tile_b, _, _ = _gather_row_values(slot_ptr, 1, 0, rows, batch, CHUNK, WORKSPACE_ROWS)
        tile_c, _, _ = _gather_row_values(slot_ptr, 2, 0, rows, batch, CHUNK, WORKSPACE_ROWS)
        sum_a = tl.sum(tile_a, axis=0)
        sum_b = tl.sum(tile_b, axis=0)
        sum_c = tl.sum(tile_c, axis=0)
    else:  # in chunks of programs, a runtime loop (as layer_norm_merge)
        sum_a = tl.zeros((rows.shape[0],), tl.float32)
        sum_b = tl.zeros((rows.shape[0],), tl.float32)
        sum_c = tl.zeros((rows.shape[0],), tl.float32)
        for first in tl.range(0, tl.num_programs(0), CHUNK):
            tile_a, _, _ = _gather_row_values(
                slot_ptr, 0, first, rows, batch, CHUNK, WORKSPACE_ROWS
            )
            sum_a += tl.sum(tile_a, axis=0)
            tile_b, _, _ = _gather_row_values(
                slot_ptr, 1, first, rows, batch, CHUNK, WORKSPACE_ROWS
            )
            sum_b += tl.sum(tile_b, axis=0)
            tile_c, _, _ = _gather_row_values(
                slot_ptr, 2, first, rows, batch, CHUNK, WORKSPACE_ROWS
            )
            sum_c += tl.sum(tile_c, axis=0)
    return sum_a, sum_b, sum_c


@triton.jit
def row_sums_across_programs(
    a,
    b,
    c,
    col_valid,
    partials_ptr,
    barrier_ptr,
    generation,
    rows,
    batch,
    PROGRAMS_PAD: tl.constexpr,
):
    """Row sums of three matrices whose columns are split over the programs (layer-norm
    backward: dy, dy xhat and xhat): each program publishes its partial sums to
    ``partials_ptr`` (float32 [2 slots, 3, num_programs, BLOCK_B],
    :func:`_publish_row_values`), meets the others at barrier
    ``generation`` (one barrier for all three) and adds them up.
    """
    slot_ptr = _publish_row_values(
        row_sums_partials(a, b, c, col_valid), partials_ptr, barrier_ptr, generation, rows, batch
    )
    return row_sums_merge(slot_ptr, rows, batch, PROGRAMS_PAD, rows.shape[0])
