"""The ``triton`` backend: launcher of the persistent kernels in kernels/recurrence.py.

Validate, allocate with torch, launch; no math here except the one GEMM for ``dL/dW_hh``.

Launch geometry. One program per slice of ``BLOCK_U`` hidden units (all gates, all rows),
the same split for the forward and the backward kernel; the grid never exceeds the SM
count, because the programs wait for each other at a grid barrier every step and a program
that is not resident could never arrive (a hang). Both kernels are launched cooperatively
(``launch_cooperative_grid=True``, triton >= 3.6): the driver then guarantees that every
program is resident at once or fails the launch, also under MPS SM limits, green contexts or
a concurrent launch on another stream. Under the
Triton interpreter (``TRITON_INTERPRET=1``, CPU tensors) programs run one after another, so
the grid is exactly one program owning every unit.

Saved tensors (all float32, indexed by time index t; see the forward kernel's docstring):
``(h_prev, c_prev, gates, gru_hn, xhat_hh, rstd_hh, xhat_c, rstd_c)``, with an empty
tensor where a quantity is not used by this configuration. Nothing mask-shaped: the backward
kernel regenerates the masks from (seed, layer, direction).
"""

from __future__ import annotations

import os

import torch

from .. import philox, reference_loop
from . import base
from .base import Gradients, OutputGrad, RecurrenceInputs, RecurrenceOutputs

NAME = "triton"

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Largest number of elements of one register tile the launcher accepts on a GPU: beyond it the
# "weights and state stay on chip" design would spill to local memory (a K-chunked variant is
# future work), so such shapes are reported unsupported and fall back to another backend.
_MAX_TILE_ELEMENTS = 1 << 16
_MAX_BATCH = 256
# Test-only: units per program under the interpreter (a power of two). None: one program owns
# every unit, as the interpreter runs programs one after another. The multi-program tests set
# it while tests/triton_concurrent.py runs the grid's programs concurrently in threads.
INTERPRETER_UNITS_PER_PROGRAM: int | None = None
# Test-only, also under the interpreter: rows per recurrent dot (a power of two; None: all
# rows in one dot) and the K-chunk of the streamed-W_hh path (a power of two; None: W_hh
# resident), so CPU tests run the paths the launcher picks for large shapes on a GPU.
INTERPRETER_ROWS_PER_DOT: int | None = None
INTERPRETER_STREAM_K: int | None = None
INTERPRETER_K_TILES: int = 1  # K-chunk tiles of the resident W_hh (a power of two)
# Test-only: 2 runs the backward's split-K over program pairs (_geometry's ``split_k``; needs
# an even number of programs' worth of units and INTERPRETER_K_TILES >= 2 to split anything).
INTERPRETER_SPLIT_K: int = 1
# Test-only: True runs the B = 256 path (the kernels' STATE_IN_MEMORY: the state of the owned
# units re-read from memory every step instead of carried in registers) at any batch.
INTERPRETER_STATE_IN_MEMORY: bool = False
# Test-only, with INTERPRETER_STATE_IN_MEMORY: the LSTM with layer norm (no projection) runs
# its step in whole-step row pieces of this many rows (a power of two; the kernels'
# ROW_PIECE, _row_piece), as at B = 256 on a GPU. None: no pieces.
INTERPRETER_ROW_PIECE: int | None = None
# Test-only: True runs batch norm's forward step gate by gate (the kernels' BN_GATE_BY_GATE,
# _geometry's ``gate_by_gate``; with INTERPRETER_STATE_IN_MEMORY, LSTM / GRU), as bf16 /
# fp16 at 128 rows on an A100 beyond H = 864.
INTERPRETER_GATE_BY_GATE: bool = False
# Test-only: True clamps the recurrent products' operand rows into the batch (the kernels'
# ROW_CLAMP, _row_clamp: the RNN with layer norm in bf16 / fp16 at 256 rows on a GPU) in
# both kernels wherever a product takes all BLOCK_B rows from a resident W_hh.
INTERPRETER_ROW_CLAMP: bool = False
# Test-only, with INTERPRETER_STATE_IN_MEMORY and INTERPRETER_ROWS_PER_DOT: True runs the
# backward's product in row chunks of that many rows, each chunk's dh updated in grad_h0
# (the kernel's PRODUCT_ROW_CHUNKS, _product_row_chunks: that RNN's mma.sync backward on a
# GPU), the forward's dots whole, as there.
INTERPRETER_PRODUCT_ROW_CHUNKS: bool = False
# From this many batch rows (BLOCK_B) on a GPU the kernels keep no state in registers across
# steps (STATE_IN_MEMORY; docs/kernels-v2.md §6.1).
_STATE_IN_MEMORY_ROWS = 256
# ... and in the backward with wgmma only up to this many resident K tiles a program (as
# measured: _state_in_memory).
_STATE_IN_MEMORY_WGMMA_TILES = 32
# ... and the layer-norm backward with mma.sync at this BLOCK_B (measured: _state_in_memory).
_LAYER_NORM_STATE_IN_MEMORY_ROWS = 64
# ... and the forward with batch norm in the float32 pair split at this BLOCK_B (measured:
# _state_in_memory).
_BATCH_NORM_PAIR_STATE_IN_MEMORY_ROWS = 128
# The LSTM with layer norm from _WHOLE_STEP_PIECES_FROM_ROWS rows on: every step in
# whole-step row pieces of _WHOLE_STEP_PIECE_ROWS rows, its products included (_row_piece;
# _geometry's row_piece). At 128 rows the whole step spilled 580-910 B (sm_80, sm_90a).
_WHOLE_STEP_PIECES_FROM_ROWS = 128
_WHOLE_STEP_PIECE_ROWS = 64
# ... and the float32 pair split (split_k = 2, no row pieces: the whole step) for that LSTM
# only to this many rows (BLOCK_B): at 128 within the spill budget (sm_90a H = 1024 forward
# 32 / 40 B, backward 16 / 16; sm_80 H = 864 4 / 4, 4 / 4), at 256 the whole step's backward
# spilled 748 / 900 B (sm_90a H = 1024): from there 16 units a program in row pieces,
# W_hh streamed where it does not fit on chip (docs/kernels-v2.md §6.1).
_LAYER_NORM_PAIR_SPLIT_MAX_ROWS = 128
# The float32 pair split's backward product (split_k = 2) from this many rows (BLOCK_B) on in
# row chunks of _PAIR_ROW_CHUNK rows, each chunk's partial stored to the pair scratch as it is
# made (kernels/recurrence.py; its ROWS_PER_DOT, the geometry's rows_backward): W2's [64, 128]
# operand pieces and shared memory where the whole 256-row product took [256, 64] pieces, and
# with it the kernel's dh / dc written back early and the LSTM's batch norm gate by gate
# (PAIR_CHUNKS). Backward spill stores, triton 3.8, whole -> chunks: sm_90a LSTM
# all_batch_norm 452 -> 0 B, sm_80 548 -> 0, sm_80 LSTM 68 -> 28, GRU all_layer_norm 104 ->
# 52 (docs/kernels-v2.md §6.2). The forward's dots keep all rows.
_PAIR_ROW_CHUNKS_FROM_ROWS = 256
_PAIR_ROW_CHUNK = 64
# bf16 / fp16 with batch norm from this BLOCK_B on (128 and 256 rows): the pair split
# (split_k = 2, 8 units a program) first, where its 2 * ceil(H / 16) programs fit the SMs
# (an H100 to H = 1024, an A100 to H = 864). With 16 units a program the whole step spilled
# KBs (spill stores forward ; backward, triton 3.8 sm_90a H = 1024, LSTM B = 128 968 ; 492,
# B = 256 1732 ; 2456); the pair split's [B, 32] gate tile and half the backward's K tiles
# spill 0 ; 0 at 128 rows and LSTM 160 ; 468, GRU 0 ; 0 at 256 (_geometry;
# docs/kernels-v2.md §6.2).
_HALF_BATCH_NORM_PAIR_SPLIT_FROM_ROWS = 128
# ... and from this BLOCK_B on with wgmma (sm_90) the forward reads b_hh and the norm
# parameters each step and takes a step-dependent zero as its product's first row (the
# kernel's STEP_ZERO, _forward_step_zero): LSTM forward spill stores, sm_90a H = 1024,
# triton 3.8 / 3.6: 160 / 176 -> 16 / 0 B (docs/kernels-v2.md §6.2).
_HALF_BATCH_NORM_STEP_ZERO_FROM_ROWS = 256
# ... and there with mma.sync (sm_80) both kernels rebuild the step's rows (and its tiles'
# masks and offsets) each step from a step-dependent zero (the kernels' ROWS_PER_STEP,
# _rows_per_step). Spill stores / loads forward ; backward, sm_80 H = 864, before -> after:
# LSTM triton 3.6 156 ; 72 / 76 -> 4 ; 32, triton 3.8 16 ; 40 -> 24 ; 0; GRU triton 3.6
# 0 ; 36 -> 0 ; 0, triton 3.8 0 ; 48 -> 0 ; 24 / 20 (docs/kernels-v2.md §6.2).
_HALF_BATCH_NORM_ROWS_PER_STEP_FROM_ROWS = 256
# ... and where its programs exceed the SMs (an A100 from H = 880) at this BLOCK_B: 16 units a
# program with the step's batch norm gate by gate (``gate_by_gate``: the kernels'
# BN_GATE_BY_GATE forward, GATE_BY_GATE backward), the state in memory in both kernels and
# the backward's product in row chunks of _PAIR_ROW_CHUNK rows (its ROW_CHUNKS), its
# backward at 16 warps (_num_warps). Spill stores / loads, triton 3.8 sm_80 H = 1024, forward
# ; backward, the whole step -> gate by gate: LSTM 1092 / 1372 ; 444 / 436 -> 0 / 0 ; 28 /
# 28, GRU 320 / 332 ; 132 / 124 -> 0 / 0 ; 32 / 28 (W_hh resident; streamed it spilled 732 ;
# 456 alone, and re-reads 8 MiB a step; docs/kernels-v2.md §6.2).
_HALF_BATCH_NORM_GATE_BY_GATE_ROWS = 128
# The RNN with layer norm in bf16 / fp16 from this BLOCK_B on: the forward's product and the
# wgmma backward's (sm_90) take their operand rows clamped into the batch (_row_clamp), the
# mma.sync backward (sm_80) takes its product in _PAIR_ROW_CHUNK-row chunks
# (_product_row_chunks). Spill stores, forward ; backward, triton 3.6 sm_80 108 ; 104 -> 0 ;
# 8, sm_90a 0 ; 192 -> 0 ; 0 (3.8: 40 ; 16 -> 0 ; 8, 0 ; 56 -> 0 ; 0; docs/kernels-v2.md §6.1).
_RNN_LAYER_NORM_ROW_CLAMP_FROM_ROWS = 256
# The K-chunk of the streamed path on a GPU: [K, gate columns] of W_hh per dot.
_STREAM_K = 64
# Largest [rows, K] piece of a resident product's per-step operand taken by one dot: the
# piece sits in registers before it is staged, so a larger one spills.
_MAX_OPERAND_PIECE = _MAX_TILE_ELEMENTS
# The piece the launcher aims for when it splits the resident W_hh into K tiles ([64, 128]
# float32: 32 registers a thread at 8 warps), and the smallest K of a tile it takes.
_RESIDENT_PIECE = 8192
_MIN_TILE_K = 64
# Exact float32 (TF32 off: FP32 FMA, kernels/primitives.py recurrent_dot): a product of K >=
# _FMA_SPLIT_K runs as _FMA_CHUNKS dots of K / _FMA_CHUNKS (fma_dot); the forward's K tiles
# are those chunks themselves (_geometry), each loaded on its own.
# No FMA chunk or tile is below K = _FMA_MIN_K: triton 3.6's tl.dot rejects K < 16 (3.8
# takes it), and the kernels must compile on both.
_FMA_CHUNKS = 8
_FMA_SPLIT_K = 64
_FMA_MIN_K = 16
# Rows to which the exact float32 plan (``fma_dots``: _fma_shared_memory_bytes, the FMA chunk
# tiles) is measured; at B = 256 the geometry and the bound stay the TF32 plan's (sm_90a LSTM
# B = 256, H = 4224 streamed: 32768 B compiled, 98304 / 73728 B predicted).
_FMA_MODEL_MAX_ROWS = 64
_SAVED_FIELDS = (
    "h_prev",
    "c_prev",
    "gates",
    "gru_hn",
    "xhat_hh",
    "rstd_hh",
    "xhat_c",
    "rstd_c",
    "h_pre_proj",
)


def _empty(*shape: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """Every allocation of this launcher (tests replace it to fill outputs with NaN)."""
    return torch.empty(*shape, dtype=dtype, device=device)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def availability() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as error:  # ImportError, or a broken install
        return f"triton cannot be imported ({type(error).__name__}: {error})"
    if _interpreting() or torch.cuda.is_available():
        return None
    return (
        "no CUDA device (set TRITON_INTERPRET=1 to run the Triton kernels on the CPU interpreter)"
    )


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _geometry(
    batch: int,
    hidden: int,
    num_gates: int,
    device: torch.device,
    dtype: torch.dtype,
    proj: int = 0,
    *,
    properties=None,
    input_precision: str | None = None,
    norm: str = "none",
    streamed: bool = False,
) -> dict:
    """Block sizes and grid of both kernels (kernels/recurrence.py, "Block sizes").

    Forward and backward use the same split: each program owns ``units`` hidden units, so
    the backward has as many programs as the forward, and W_hh's bytes per program are the
    same in both (the forward holds its ``G*units`` rows, the backward the ``units`` columns
    of every gate).

    With a projection (``proj`` = P > 0, LSTM) h has P units: a program also owns
    ``BLOCK_R`` of them (the smallest power of two covering P over the programs, >= 16 on a
    GPU, so the last programs may own none), K of the recurrent product is ``BLOCK_P`` and the
    backward's W_hh tiles have ``BLOCK_R`` columns. Without one ``BLOCK_P`` = ``BLOCK_H`` and
    ``BLOCK_R`` = ``units``.

    On a GPU the first configuration that fits (``_shape_reason``) is taken, in this order:
    W_hh resident with the fewest programs that fit the SMs (``units`` >= 16), every row in
    one dot and W_hh as the fewest K tiles (``k_tiles_*``, per kernel) whose per-step operand
    piece is at most _RESIDENT_PIECE elements (_resident_k_tiles; more tiles while shared
    memory is short: W2 bf16 8 forward, 32 backward); else W_hh
    streamed from L2 in K-chunks of ``_STREAM_K`` (``stream_k``), with ``stream_reason``
    saying why it is not resident (not with a projection: ``_shape_reason`` refuses that).
    Between the two, in float32 without a projection where 16 units a program do not fit
    (W2 / W6b: 256 KiB of W_hh a program) and ``2 * ceil(H / 16)`` programs fit the SMs (an
    H100 to H = 1024, an A100 to H = 864): 8 units a program with the backward's gate rows split
    over program pairs (``split_k`` = 2; an even number of programs; docs/kernels-v2.md §6.2;
    the LSTM with layer norm only to _LAYER_NORM_PAIR_SPLIT_MAX_ROWS rows, which the pair
    split runs as one whole step).
    With the pair split at ``BLOCK_B`` >= _PAIR_ROW_CHUNKS_FROM_ROWS (256) the backward's
    ``rows_backward`` is _PAIR_ROW_CHUNK (64): its product in row chunks (the rest of its step
    whole, ``row_piece`` = ``BLOCK_B``), so W2's K tiles and shared memory.
    bf16 / fp16 with batch norm (``norm``) at ``BLOCK_B`` >=
    _HALF_BATCH_NORM_PAIR_SPLIT_FROM_ROWS (128) take the pair split first, where its
    programs fit the SMs (16 units a program spilled KBs there, the pair split far less);
    where they do not (an A100 at 128 rows from H = 880) 16 units a program with
    ``gate_by_gate`` (_HALF_BATCH_NORM_GATE_BY_GATE_ROWS): the batch norm's step gate by gate
    in both kernels, their state in memory, the backward's ``rows_backward`` =
    _PAIR_ROW_CHUNK (its product in row chunks), the forward's dots whole.
    ``rows_*`` < ``BLOCK_B`` (row pieces) is set by the interpreter knob, and for the LSTM
    with layer norm (``norm``) and no projection at ``BLOCK_B`` >= _WHOLE_STEP_PIECES_FROM_ROWS
    without the pair split: its whole-step row pieces (``row_piece`` =
    _WHOLE_STEP_PIECE_ROWS, the kernels' ``ROW_PIECE``; _row_piece) take their products
    piece by piece, so the K tiles and the shared memory are those of 64-row dots. Elsewhere
    ``row_piece`` = ``BLOCK_B``.

    ``streamed``: the streamed layout wherever it would be resident (a GPU geometry only:
    bench/floor.py's "triton-streamed" model and the AOT test's forced streamed cases, which
    check its shared-memory bound; the launcher never passes it).

    ``properties``: stands in for ``torch.cuda.get_device_properties(device)`` (any object with
    its ``multi_processor_count``, ``shared_memory_per_block_optin`` and ``major``): the GPU
    geometry without a GPU, also under the interpreter (bench/floor.py's Triton step model).

    ``input_precision``: the float32 dots' ``INPUT_PRECISION`` the kernels get (the launcher
    passes its own, _dot_precision; None: the GPU rule, _gpu_input_precision). "ieee" in
    float32 (``fma_dots``: exact FP32 FMA, no tensor cores) stages less shared memory
    (_shared_memory_bytes) and, where the forward's W_hh is K tiles, holds it as
    ``_FMA_CHUNKS`` times as many tiles, one FMA chunk each (loaded one by one, where
    fma_dot's in-register split of a larger tile spilled: sm_90a W2 float32 forward 104 B,
    12 B as chunk tiles; docs/kernels-v2.md §2), and per-gate backward dots only where their
    ``[B, H]`` operand is at most _RESIDENT_PIECE. Measured to 64 rows: at B = 256 the TF32
    plan (geometry and shared-memory bound) stays.
    """
    gates_pad = _next_power_of_2(num_gates)
    block_h = _next_power_of_2(hidden)
    common = {
        "GATES_PAD": gates_pad,
        "num_gates": num_gates,
        "proj": proj,
        "element_bytes": torch.empty((), dtype=dtype).element_size(),
        # float32: one dot per gate (the tiles stay in shared memory, one operand staging
        # buffer: W1 fits); bf16 / fp16: one dot over K = G*H (per-gate tiles would be moved
        # into warp-replicated registers by the compiler, and spill).
        "gate_dots": dtype == torch.float32,
        "split_k": 1,
        # TF32 off: the float32 products on FP32 FMA (kernels/primitives.py recurrent_dot),
        # planned as such (chunk tiles, _fma_shared_memory_bytes) to _FMA_MODEL_MAX_ROWS rows.
        "fma_dots": dtype == torch.float32
        and (input_precision or _gpu_input_precision(dtype)) == "ieee",
        "gate_by_gate": False,
    }
    # The LSTM with layer norm and no projection: whole-step row pieces from 128 rows on.
    pieces = num_gates == 4 and norm == "layer" and proj == 0
    if _interpreting() and properties is None:
        block_b = _next_power_of_2(batch)
        units = INTERPRETER_UNITS_PER_PROGRAM or block_h
        rows = min(INTERPRETER_ROWS_PER_DOT or block_b, block_b)
        if INTERPRETER_SPLIT_K > 1:
            common = {**common, "gate_dots": False, "split_k": INTERPRETER_SPLIT_K}
        common["fma_dots"] = False  # no shared-memory model under the interpreter
        common["gate_by_gate"] = (
            INTERPRETER_GATE_BY_GATE and INTERPRETER_STATE_IN_MEMORY and norm == "batch"
        ) and num_gates > 1
        piece = block_b
        if pieces and INTERPRETER_STATE_IN_MEMORY and INTERPRETER_ROW_PIECE:
            if common["split_k"] == 1:
                piece = rows = min(INTERPRETER_ROW_PIECE, block_b)
        # gate_by_gate, product row chunks: the forward's product whole, as on a GPU (the
        # backward's in row chunks)
        chunks = INTERPRETER_PRODUCT_ROW_CHUNKS and INTERPRETER_STATE_IN_MEMORY
        rows_forward = block_b if common["gate_by_gate"] or chunks else rows
        return _configured(
            common, block_b, block_h, num_gates, hidden, units, rows_forward, rows,
            INTERPRETER_K_TILES, INTERPRETER_K_TILES, INTERPRETER_STREAM_K or 0,
            sms=None, shared_limit=None, wgmma_arch=False, row_piece=piece,
        )  # fmt: skip
    # On a GPU every tl.dot dimension is kept >= 16 (the tensor-core minimum across
    # triton 3.6-3.8): batch rows, K, and units (the backward's N).
    properties = properties or torch.cuda.get_device_properties(device)
    sms = properties.multi_processor_count
    shared_limit = getattr(properties, "shared_memory_per_block_optin", 0) or 48 * 1024
    block_b = max(16, _next_power_of_2(batch))
    block_h = max(16, block_h)
    common["fma_dots"] = common["fma_dots"] and block_b <= _FMA_MODEL_MAX_ROWS
    fewest = max(16, _next_power_of_2(-(-hidden // sms)))
    # triton picks wgmma (a warpgroup per 64 rows) on sm_90 once a dot's M >= 64, which
    # allocates shared memory differently from mma.sync (_shared_memory_bytes).
    device_args = {"sms": sms, "shared_limit": shared_limit, "wgmma_arch": properties.major >= 9}
    why = None
    # One candidate split today: at 8 units per program (twice the programs) the compiled
    # bf16 backward stages its operand in float32 (262144 B at B = 16, H = 1024, above this
    # model), so halving units waits for a model that holds there.
    # float32's backward: one dot per gate first (W1); where its [B, H] staging per gate does
    # not fit (B = 64 at H = 512), one dot over K = G*H in K tiles as bf16 / fp16 do.
    gate_dot_options = (
        (True, False) if common["gate_dots"] and proj == 0 else (common["gate_dots"],)
    )
    # Exact float32 (FMA) stages little, so per-gate dots would fit shared memory where
    # their [B, H] operand does not fit registers (B = 64, H = 512 on sm_90a: 244 B of
    # spills): they are taken only where that piece is at most _RESIDENT_PIECE (W1).
    if common["fma_dots"] and block_b * block_h > _RESIDENT_PIECE:
        gate_dot_options = (False,)
    candidates = [(fewest, gate_dots, 1) for gate_dots in gate_dot_options]
    # float32 where neither fits at 16 units (the forward's 4 * 16 * H float32 W_hh rows do
    # not fit one SM from H = 1024): 8 units per program, twice the programs, and the
    # backward's K rows split over program pairs (N = the pair's 16 units; split_k,
    # kernels/primitives.py pair_sum). Both kernels keep one program per SM.
    pair_programs = 2 * -(-hidden // 16)
    # bf16 / fp16 with batch norm from _HALF_BATCH_NORM_PAIR_SPLIT_FROM_ROWS rows on: the pair
    # split first (16 units a program spilled KBs there; docs/kernels-v2.md §6.2).
    half_batch_norm_pair = common["element_bytes"] == 2 and norm == "batch"
    half_batch_norm_pair &= block_b >= _HALF_BATCH_NORM_PAIR_SPLIT_FROM_ROWS
    # ... to BLOCK_H = 1024 (as measured; an H100 would take it to H = 1056 at BLOCK_H = 2048,
    # half its product padding: the GRU at 256 rows spilled 36 ; 176 B there, triton 3.6).
    half_batch_norm_pair &= block_h <= 1024
    pair_split = common["element_bytes"] == 4 or half_batch_norm_pair
    pair_split = pair_split and proj == 0 and fewest == 16
    pair_split = pair_split and not (pieces and block_b > _LAYER_NORM_PAIR_SPLIT_MAX_ROWS)
    if pair_split and pair_programs <= sms:
        if half_batch_norm_pair:
            candidates.insert(0, (8, False, 2))
        else:
            candidates.append((8, False, 2))
    # ... else at 128 rows 16 units a program with the batch norm gate by gate, the state in
    # memory and the backward's product in row chunks (_HALF_BATCH_NORM_GATE_BY_GATE_ROWS).
    gate_by_gate = pair_split and half_batch_norm_pair and pair_programs > sms
    gate_by_gate &= block_b == _HALF_BATCH_NORM_GATE_BY_GATE_ROWS
    piece = block_b
    if pieces and block_b >= _WHOLE_STEP_PIECES_FROM_ROWS:
        piece = min(_WHOLE_STEP_PIECE_ROWS, block_b)
    # The RNN with layer norm in bf16 / fp16 at 256 rows: the mma.sync backward's product in
    # row chunks (_RNN_LAYER_NORM_ROW_CHUNKS_FROM_ROWS).
    rnn_row_chunks = _rnn_layer_norm_rows(num_gates, norm, common, block_b)
    rnn_row_chunks = rnn_row_chunks and not device_args["wgmma_arch"]
    if streamed:
        candidates, why = [], "streamed on request"
    for units, gate_dots, split_k in candidates:
        options = {**common, "gate_dots": gate_dots, "split_k": split_k}
        options["gate_by_gate"] = gate_by_gate and split_k == 1
        chosen = {}
        for kernel in ("forward", "backward"):
            rows = piece if split_k == 1 else block_b  # the dots' rows: a piece's
            if split_k == 2 and kernel == "backward" and block_b >= _PAIR_ROW_CHUNKS_FROM_ROWS:
                rows = _PAIR_ROW_CHUNK  # the pair split's backward product in row chunks
            if options["gate_by_gate"] and kernel == "backward":
                rows = _PAIR_ROW_CHUNK  # the backward's product in row chunks (ROW_CHUNKS)
            if rnn_row_chunks and split_k == 1 and kernel == "backward":
                rows = _PAIR_ROW_CHUNK  # _product_row_chunks: W2's K tiles (16 at H = 1728)
            # Every row in one dot; the resident W_hh as the fewest K tiles whose per-step
            # operand piece stays small (_resident_k_tiles), more while shared memory is short.
            # The time loop runs with LICM off (docs/kernels-v2.md §6.1), so neither the
            # tiles' wgmma descriptors nor the operand addresses are hoisted and spilled.
            # With a projection the forward's product stays one dot (its shared-memory
            # plan, _projected_shared_memory_bytes, is checked only for that).
            if proj > 0 and kernel == "forward":
                k = 1
            elif kernel == "forward":
                k = block_h
            else:
                k = 1 if gate_dots else _next_power_of_2(num_gates * hidden)
            for k_tiles in _resident_k_tiles(max(k, block_h if k > 1 else 1), rows):
                if options["fma_dots"] and kernel == "forward" and k_tiles > 1:
                    # one FMA chunk a tile (K >= _FMA_MIN_K)
                    k_tiles *= min(_FMA_CHUNKS, block_h // k_tiles // _FMA_MIN_K)
                geo = _configured(
                    options, block_b, block_h, num_gates, hidden, units, rows, rows,
                    k_tiles, k_tiles, 0, **device_args,
                )  # fmt: skip
                reason = _shape_reason(geo, kernel)
                if reason is None:
                    chosen[kernel] = (rows, k_tiles)
                    break
            if kernel not in chosen:
                why = reason
        if len(chosen) == 2:
            return _configured(
                options, block_b, block_h, num_gates, hidden, units,
                chosen["forward"][0], chosen["backward"][0],
                chosen["forward"][1], chosen["backward"][1], 0, **device_args,
                row_piece=piece if split_k == 1 else block_b,
            )  # fmt: skip
    # Streamed: the pieces read their rows chunk by chunk (the model's B-row staging is then
    # an upper bound).
    geo = _configured(
        common, block_b, block_h, num_gates, hidden, fewest, block_b, block_b, 1, 1, _STREAM_K,
        **device_args, row_piece=piece,
    )  # fmt: skip
    if pair_split and pair_programs > sms:  # an A100 at H = 1024: 128 programs, 108 SMs
        why += (
            f"; the float32 pair split at 8 units per program needs {pair_programs} "
            f"programs, the GPU has {sms} SMs"
        )
    geo["stream_reason"] = f"W_hh does not stay on chip ({why}): streamed from L2 in K-chunks"
    return geo


def _resident_k_tiles(k: int, rows: int) -> list[int]:
    """Candidate K-tile counts of a resident product with K = ``k`` and ``rows`` rows per dot,
    fewest first: from the fewest whose operand piece ``rows * k / tiles`` is at most
    _RESIDENT_PIECE (or whose tile K is _MIN_TILE_K), doubling while a tile keeps
    _MIN_TILE_K (more tiles stage less shared memory)."""
    tiles = 1
    while rows * k // tiles > _RESIDENT_PIECE and k // tiles > _MIN_TILE_K:
        tiles *= 2
    counts = [tiles]
    while k // (tiles * 2) >= _MIN_TILE_K:
        tiles *= 2
        counts.append(tiles)
    return counts


def _configured(
    common: dict,
    block_b: int,
    block_h: int,
    num_gates: int,
    hidden: int,
    units: int,
    rows_forward: int,
    rows_backward: int,
    k_tiles_forward: int,
    k_tiles_backward: int,
    stream_k: int,
    *,
    sms: int | None,
    shared_limit: int | None,
    wgmma_arch: bool,
    row_piece: int | None = None,
) -> dict:
    """One candidate geometry (see _geometry); ``wgmma_*``: whether that kernel's dots have
    M >= 64 rows on sm_90 (triton then emits wgmma); ``row_piece``: the kernels' whole-step
    row pieces (_row_piece; None: ``block_b``, one piece)."""
    programs = -(-hidden // units)
    if common["split_k"] == 2:  # whole pairs (the last program's units may all be padding)
        programs = 2 * -(-hidden // (2 * units))
    block_p, block_r, proj = block_h, units, common["proj"]
    if proj > 0:
        minimum = 1 if _interpreting() else 16
        block_p = max(minimum, _next_power_of_2(proj))
        block_r = max(minimum, _next_power_of_2(-(-proj // programs)))
    return {
        **common,
        "BLOCK_B": block_b,
        "BLOCK_H": block_h,
        "BLOCK_P": block_p,
        "BLOCK_R": block_r,
        "BLOCK_GH": max(block_h, _next_power_of_2(num_gates * hidden)),
        "units": units,
        "programs": programs,
        "rows_forward": rows_forward,
        "rows_backward": rows_backward,
        "k_tiles_forward": k_tiles_forward,
        "k_tiles_backward": k_tiles_backward,
        "stream_k": stream_k,
        "sms": sms,
        "shared_limit": shared_limit,
        "wgmma_forward": wgmma_arch and rows_forward >= 64,
        "wgmma_backward": wgmma_arch and rows_backward >= 64,
        "row_piece": row_piece or block_b,
    }


def _shared_memory_bytes(geo: dict) -> dict[str, int]:
    """Shared memory of each kernel: an upper bound, close to what triton 3.8 allocates for
    sm_80 / sm_90a (tests/test_triton_aot.py checks both sides on the compiled kernels);
    ``e`` = the dtype's bytes, ``N`` = the forward's gate columns ``G*units``, K = the
    backward's ``G*H`` padded to a power of two, ``R`` = the kernel's rows per dot (all
    ``B`` rows, or a chunk of them: the staging is per dot, the chunks reuse it). The W_hh
    tiles stay in shared memory for the whole loop (or move to registers), each dot stages
    its per-step operand, and with wgmma (sm_90, R >= 64) the float32 accumulator's layout
    conversions take scratch space.

    * forward, ``[R, H] x [H, N]`` as ``T`` K tiles (one dot each): ``e*H*N + 4*R*H/T``
      (the W tiles and the float32 ``h`` piece's staging, reused by every tile; exact for
      float32, for bf16 / fp16 the compiler may round ``h`` first or keep it in registers);
      wgmma: ``e*H*N + 4*R*max(H/T, N)``, plus ``4*R*max(units, 16)`` scratch in float32;
    * backward, float32, one dot per gate ``[R, H] x [H, units]``: the G gate tiles and one
      staging buffer, ``4 * (G*H*units + R*H)``, plus ``4*R*units`` scratch with wgmma;
    * backward, bf16 / fp16, ``[R, K] x [K, units]`` as ``T`` K tiles: the W tiles in
      shared memory and each float32 operand piece staged before rounding,
      ``e*K*units + 4*R*K/T``, on sm_80 and sm_90a alike (measured: W1 bf16 98304 B, W2 bf16
      163840 B, H = 37 at B = 5 exact); only with one tile, mma.sync and R >= 64 (small H
      at B >= 64) the compiler keeps the W tile in registers: ``4*R*K``.
    * backward split over program pairs (``split_k`` = 2, float32 W2 / W6b): the pair's
      ``2*units`` columns of this program's K tiles of ``K/T`` rows (half, rounded up, of the
      ``ceil(G*BLOCK_H/(K/T))`` tiles that cover ``G*BLOCK_H``: :func:`split_tiles`, giving
      ``K_half`` rows): ``e*K_half*2*units`` for the W tiles, ``4*R*K/T`` staging and, with
      wgmma in float32, ``4*R*2*units`` scratch (exact at W2 / W6b float32, sm_90a and
      sm_80); bf16 / fp16 (batch norm at 128 / 256 rows) take no scratch, as their one-program
      backward (exact, triton 3.8 and 3.6, sm_90a and sm_80: LSTM 98304 B, GRU 81920 B; the
      scratch counted gave 102400 / 106496 B at 256 / 128 rows on sm_90a);
    * streamed (``stream_k`` = S): per K-chunk the W chunk (``e*S*N`` forward, ``e*S*units``
      backward) and the float32 operand ``[B, S]`` (``4*B*S``), each staged for its dot. In
      float32 (TF32) both at once: their sum (sm_80 / sm_90a W2 float32 20480 / 32768 B). In
      bf16 / fp16 one after the other (the operand staged in float32, then rounded in
      registers), the same bytes reused: the larger of the two, on sm_80 and sm_90a alike
      (the sum was no upper bound: LSTM bf16 B = 128, H = 1024 forward 32768 B compiled
      against 24576 predicted, and the RNN fp16 at B = 256 65536 against 34816;
      tests/test_triton_aot.py FORCED_STREAMED has the compiled cases).
    * exact float32 (``fma_dots``, TF32 off: FP32 FMA, no wgmma, no scratch): the W tiles
      as above and per dot of K = k the operand's staging, :func:`_fma_staging` (one
      ``[R, k]`` piece, or below fma_dot's split the pair ``2 * [R, k/8]``); streamed, the W
      chunk's and the operand's split pieces, ``S*(N + B)`` forward and ``S*(units + B)``
      backward (_fma_staging of both); measured equal on sm_80 and sm_90a
      (tests/test_triton_aot.py: W1 139264 B, W2 135168 B, ...).
    """
    if geo["proj"] > 0:
        return _projected_shared_memory_bytes(geo)
    if geo["fma_dots"]:
        return _fma_shared_memory_bytes(geo)
    h, u, e = geo["BLOCK_H"], geo["units"], geo["element_bytes"]
    n, k, s = geo["GATES_PAD"] * u, geo["BLOCK_GH"], geo["stream_k"]
    wgmma_f, wgmma_b = geo["wgmma_forward"], geo["wgmma_backward"]
    if s:
        operand = 4 * geo["BLOCK_B"] * s
        if e == 4:
            return {"forward": e * s * n + operand, "backward": e * s * u + operand}
        return {"forward": max(e * s * n, operand), "backward": max(e * s * u, operand)}
    rf, rb = geo["rows_forward"], geo["rows_backward"]
    hf, kb = h // geo["k_tiles_forward"], k // geo["k_tiles_backward"]
    # float32 (TF32) wgmma: a [R, units] float32 layout-conversion scratch in each kernel
    # (measured at B = 64, H = 512: 4096 B beside the tiles and the staging), in the forward
    # at least 16 columns wide (measured at 8 units, float32 W2: 4096 B too).
    scratch_f = 4 * rf * max(u, 16) if wgmma_f and e == 4 else 0
    scratch_b = 4 * rb * u if wgmma_b and e == 4 else 0
    forward = e * h * n + 4 * rf * (max(hf, n) if wgmma_f else hf) + scratch_f
    if geo["split_k"] == 2:
        k_half = split_tiles(geo) * kb
        backward = e * k_half * 2 * u + 4 * rb * kb + (4 * rb * 2 * u if wgmma_b and e == 4 else 0)
    elif geo["gate_dots"]:
        backward = 4 * (geo["num_gates"] * h * u + rb * h + (rb * u if wgmma_b else 0))
    elif geo["k_tiles_backward"] > 1 or rb < 64:
        backward = e * k * u + 4 * rb * kb + scratch_b
    else:
        backward = 4 * rb * kb + (e * k * u if wgmma_b else 0)
    return {"forward": forward, "backward": backward}


def _fma_staging(rows: int, k: int) -> int:
    """Shared memory the exact float32 FMA product (kernels/primitives.py recurrent_dot,
    ``input_precision="ieee"``) stages per dot of ``rows`` x K = ``k`` float32 operand: one
    ``[rows, k]`` piece below ``_FMA_SPLIT_K``; from it fma_dot's ``_FMA_CHUNKS`` chunks (of
    at least ``_FMA_MIN_K``), whose last split's two halves ``[rows, chunk]`` are staged
    together."""
    if k >= _FMA_SPLIT_K:
        return 2 * 4 * rows * max(k // _FMA_CHUNKS, _FMA_MIN_K)
    return 4 * rows * k


def _fma_shared_memory_bytes(geo: dict) -> dict[str, int]:
    """_shared_memory_bytes of the exact float32 kernels (``fma_dots``, no projection, at
    most _FMA_MODEL_MAX_ROWS rows)."""
    h, u, b = geo["BLOCK_H"], geo["units"], geo["BLOCK_B"]
    n, k, s = geo["GATES_PAD"] * u, geo["BLOCK_GH"], geo["stream_k"]
    rf, rb = (b, b) if s else (geo["rows_forward"], geo["rows_backward"])
    hf, kb = h // geo["k_tiles_forward"], k // geo["k_tiles_backward"]
    # Layout conversions of the float32 accumulators take scratch at another time than the
    # staging (the larger of the two counts). Forward, where fma_dot splits the product: at
    # most [R, N] (LSTM, measured: B = 5, H = 37 4096 B, sm_80's streamed W2 16384 B; none
    # in GRU; RNN unmeasured: counted). Backward: [R, N_acc] (N_acc = units, 2 * units for
    # the pair split; sm_90a streamed LSTM B = 64, H = 8192: 16384 B).
    split = s > 0 or hf >= _FMA_SPLIT_K
    scratch_f = 4 * rf * n if split and geo["num_gates"] != 3 else 0
    scratch_b = 4 * rb * u * geo["split_k"]
    if s:
        forward = max(_fma_staging(n, s) + _fma_staging(b, s), scratch_f)
        backward = max(_fma_staging(u, s) + _fma_staging(b, s), scratch_b)
        return {"forward": forward, "backward": backward}
    forward = 4 * h * n + max(_fma_staging(rf, hf), scratch_f)
    if geo["split_k"] == 2:
        w_tiles, staging = 4 * split_tiles(geo) * kb * 2 * u, _fma_staging(rb, kb)
    elif geo["gate_dots"]:
        w_tiles, staging = 4 * geo["num_gates"] * h * u, _fma_staging(rb, h)
    else:
        w_tiles, staging = 4 * k * u, _fma_staging(rb, kb)
    return {"forward": forward, "backward": w_tiles + max(staging, scratch_b)}


def split_tiles(geo: dict) -> int:
    """K tiles per program of the pair-split backward (the kernel's ``SPLIT_TILES``): half
    (rounded up) of the tiles of ``BLOCK_GH / k_tiles_backward`` rows covering G*BLOCK_H."""
    tile = geo["BLOCK_GH"] // geo["k_tiles_backward"]
    return (-(-geo["num_gates"] * geo["BLOCK_H"] // tile) + 1) // 2


def _projected_shared_memory_bytes(geo: dict) -> dict[str, int]:
    """_shared_memory_bytes with a projection (P = ``BLOCK_P``, h units per program R =
    ``BLOCK_R``) and W_hh resident, every row and all of K in one dot (what _geometry picks
    on a GPU): the recurrent dot's K is P and the backward's W_hh tiles have R columns;
    the resident W_hr tile adds ``e*H*R`` (forward, ``[H, R]``) / ``e*P*units`` (backward,
    ``[P, units]``); the projection dots' operands (``[B, H]`` h~, ``[B, P]`` dL/dh~) reuse
    the other dot's staging buffer (its size is the larger of the two). Read off triton
    3.8's sm_90a kernels at W1 with P = 128 (tests/test_triton_aot.py): float32 exact both
    ways, bf16 forward 0.52 of the bound (the compiler keeps the bf16 forward's operands
    partly in registers). The bf16 / fp16 backward's W_hh may be K tiles (the launcher's
    ``k_tiles_backward``; W1: 4): their float32 operand piece and the projection's ``[B, P]``
    operand share one staging buffer, ``4*B*max(K/T, P)`` (within the AOT test's 0.85-1 of
    the compiled kernel at W1)."""
    b, h, u, e = geo["BLOCK_B"], geo["BLOCK_H"], geo["units"], geo["element_bytes"]
    n, k = geo["GATES_PAD"] * u, geo["BLOCK_GH"]
    wgmma_f, wgmma_b = geo["wgmma_forward"], geo["wgmma_backward"]
    p, r = geo["BLOCK_P"], geo["BLOCK_R"]
    forward = e * p * n + e * h * r + 4 * b * (max(p, h, n) if wgmma_f else max(p, h))
    kb = k // geo["k_tiles_backward"]
    if geo["gate_dots"]:
        backward = 4 * (geo["num_gates"] * h * r + b * h + (b * r if wgmma_b else 0) + p * u)
    elif b < 64 or geo["k_tiles_backward"] > 1:
        backward = e * r * k + 4 * b * max(kb, p) + e * p * u
    else:
        backward = 4 * b * k + (e * k * r if wgmma_b else 0) + e * p * u
    return {"forward": forward, "backward": backward}


def _shape_reason(geo: dict, kernel: str) -> str | None:
    """Why one program of ``kernel`` ("forward" / "backward") would not fit on an SM, or None:
    a register tile beyond _MAX_TILE_ELEMENTS, or shared memory beyond the device's."""
    s, proj = geo["stream_k"], geo["proj"]
    if proj > 0 and s:
        # The kernels run this combination (the interpreter tests do), but no shared-memory
        # plan of it has been checked on compiled kernels.
        return (
            "proj_size with W_hh streamed from L2 is not supported on a GPU (its shared-memory "
            f"plan is unchecked; {geo.get('stream_reason', 'W_hh does not stay on chip')}); "
            "the CUDA or reference backend handles it"
        )
    gate_columns = geo["GATES_PAD"] * geo["units"]
    k_forward = geo["BLOCK_P"]  # h's units: P with a projection, H without
    tiles = {"gate-column tile [B, G*units]": geo["BLOCK_B"] * gate_columns}
    if kernel == "forward":
        if s:
            tiles["h chunk [B, K-chunk]"] = geo["BLOCK_B"] * s
        else:
            piece = geo["rows_forward"] * k_forward // geo["k_tiles_forward"]
            tiles["h piece [rows, K / K tiles]"] = (piece, _MAX_OPERAND_PIECE)
            tiles["W_hh slice [K, gate columns]"] = k_forward * gate_columns
        if proj > 0:
            tiles["h~ row block [B, H]"] = geo["BLOCK_B"] * geo["BLOCK_H"]
            tiles["W_hr slice [H, h units]"] = geo["BLOCK_H"] * geo["BLOCK_R"]
    else:
        if proj > 0:
            tiles["backward W_hr slice [P, units]"] = geo["BLOCK_P"] * geo["units"]
        if not geo["gate_dots"] and not s:
            piece = geo["rows_backward"] * geo["BLOCK_GH"] // geo["k_tiles_backward"]
            tiles["backward gradient piece [rows, G*H / K tiles]"] = (piece, _MAX_OPERAND_PIECE)
            tiles["backward W_hh slice [G*H, h units]"] = geo["BLOCK_GH"] * geo["BLOCK_R"]
    for what, size in tiles.items():
        elements, limit = size if isinstance(size, tuple) else (size, _MAX_TILE_ELEMENTS)
        if elements > limit:
            return (
                f"shape too large for on-chip tiles ({what} has {elements} > {limit} "
                "elements; the CUDA or reference backend handles it)"
            )
    needed, limit = _shared_memory_bytes(geo)[kernel], geo["shared_limit"]
    if needed > limit:
        return (
            f"shape too large: the {kernel} kernel would need {needed} bytes of shared "
            f"memory per program, the GPU has {limit} (the CUDA or reference backend "
            "handles it)"
        )
    return None


def _resource_reason(geo: dict) -> str | None:
    """Why one program of either kernel would not fit on an SM, or None."""
    return _shape_reason(geo, "forward") or _shape_reason(geo, "backward")


def unsupported_reason(inputs: RecurrenceInputs) -> str | None:
    cfg = inputs.config
    device = inputs.xg.device
    if _interpreting():
        if device.type != "cpu":
            return "TRITON_INTERPRET=1 runs the Triton kernels on CPU tensors only"
    elif device.type != "cuda":
        return f"the Triton kernels need CUDA tensors, got {device.type}"
    if inputs.xg.dtype not in _DTYPES:
        return f"dtype {inputs.xg.dtype} is not supported (float32, float16, bfloat16)"
    batch = inputs.xg.shape[1]
    hidden = cfg.hidden_size
    try:
        base.check_mask_limits(inputs)
    except ValueError as error:
        return str(error)
    if not _interpreting():
        if batch > _MAX_BATCH:
            return f"batch {batch} > {_MAX_BATCH}: every row must fit one program's tiles"
        precision = _dot_precision(inputs.xg.dtype)["INPUT_PRECISION"]
        geo = _geometry(
            batch, hidden, cfg.num_gates, device, inputs.xg.dtype, cfg.proj_size,
            input_precision=precision, norm=cfg.norm,
        )  # fmt: skip
        return _resource_reason(geo)
    return None


def _check(inputs: RecurrenceInputs) -> None:
    """Raise RuntimeError (as the host and cuda backends) when the kernels cannot run ``inputs``;
    ``base.validate`` has checked their shapes, devices and dtypes."""
    reason = unsupported_reason(inputs)
    if reason is not None:
        raise RuntimeError(f"fusedrnn triton backend: {reason}")


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def _scalars(inputs: RecurrenceInputs) -> dict:
    """Randomness / regulariser arguments shared by both kernels."""
    cfg = inputs.config
    p = cfg.recurrent_dropout
    use_dropout = bool(inputs.training and p > 0)
    return {
        "seed": int(inputs.seed),
        "dropout_base": philox.mask_base_offset(
            philox.STREAM_RECURRENT_DROPOUT, inputs.layer, inputs.direction
        ),
        "zoneout_cell_base": philox.mask_base_offset(
            philox.STREAM_ZONEOUT_CELL, inputs.layer, inputs.direction
        ),
        "zoneout_hidden_base": philox.mask_base_offset(
            philox.STREAM_ZONEOUT_HIDDEN, inputs.layer, inputs.direction
        ),
        "dropout_p": float(p),
        "dropout_keep_scale": 1.0 / (1.0 - p) if use_dropout else 1.0,
        "zoneout_cell_p": float(cfg.zoneout_cell),
        "zoneout_hidden_p": float(cfg.zoneout_hidden),
        **_weight_drop_scalars(inputs),
    }


def _weight_drop_scalars(inputs: RecurrenceInputs) -> dict:
    """The weight-drop arguments of the recurrence kernels and of the dW_hh pass."""
    cfg = inputs.config
    on = cfg.uses_weight_drop(inputs.training)
    return {
        # Always a negative int64 when on (the derived key has its top bit set).
        "weight_drop_key": philox.weight_drop_key(int(inputs.seed)) if on else 0,
        "weight_drop_base": philox.weight_drop_base_offset(inputs.layer, inputs.direction),
        "weight_drop_p": float(cfg.weight_drop),
        "weight_drop_keep_scale": 1.0 / (1.0 - cfg.weight_drop) if on else 1.0,
    }


def _mask_weight_grad(inputs: RecurrenceInputs, grad: torch.Tensor) -> None:
    """``grad *= m_W`` in place (contiguous ``[G*H, P]``): dW_hh is zero where W_hh was dropped."""
    from fusedrnn.kernels.weight_drop import weight_drop_kernel

    rows, cols = grad.shape
    block = 1024
    scalars = _weight_drop_scalars(inputs)
    weight_drop_kernel[(max(1, -(-rows * cols // block)),)](
        grad,
        grad,
        rows,
        cols,
        scalars["weight_drop_key"],
        scalars["weight_drop_base"],
        scalars["weight_drop_p"],
        scalars["weight_drop_keep_scale"],
        BLOCK=block,
    )


def _dot_precision(dtype: torch.dtype) -> dict:
    """The kernels' dot meta-parameters: the interpreter multiplies in exact float32 (numpy
    has no bf16 or TF32 product); on a GPU half-precision operands go to the tensor cores as
    they are and float32 ones follow base.float32_uses_tf32(), read once per call: "tf32"
    when it holds, else exact FP32 FMA ("ieee", cuDNN's CUDNN_FMA_MATH with TF32 off; in K
    chunks, kernels/primitives.py fma_dot, so W_hh stays in shared memory).

    Not triton's "tf32x3" (3xTF32: float32-accurate products on the tensor cores): it splits
    the resident W tile elementwise at the dot, so the compiler holds W in registers and
    stages both halves in shared memory each step (W1 float32: 294912 B, beyond the launcher's
    163840 B bound and both devices, KBs of spills; docs/kernels-v2.md §2). The launcher
    passes the same ``INPUT_PRECISION`` to _geometry (its shared-memory model and tiles)."""
    precision = "ieee" if _interpreting() else _gpu_input_precision(dtype)
    return {"INPUT_PRECISION": precision, "UPCAST_OPERANDS": _interpreting()}


def _gpu_input_precision(dtype: torch.dtype) -> str:
    """The float32 dots' precision on a GPU: "tf32" where base.float32_uses_tf32() holds,
    else "ieee" (also the value for bf16 / fp16, whose dots ignore it)."""
    return "tf32" if dtype == torch.float32 and base.float32_uses_tf32() else "ieee"


def _meta(inputs: RecurrenceInputs) -> dict:
    cfg = inputs.config
    return {
        **_dot_precision(inputs.xg.dtype),
        "CELL": base.CELL_CODES[cfg.cell],
        "NORM": base.NORM_CODES[cfg.norm],
        "TRAINING": bool(inputs.training),
        "REVERSE": bool(inputs.reverse),
        "HAS_NORM_BIAS_C": inputs.norm_bias_c is not None,
        "USE_DROPOUT": bool(inputs.training and cfg.recurrent_dropout > 0),
        "USE_ZONEOUT_CELL": cfg.has_cell_state and cfg.zoneout_cell > 0,
        "USE_ZONEOUT_HIDDEN": cfg.zoneout_hidden > 0,
        "USE_WEIGHT_DROP": cfg.uses_weight_drop(inputs.training),
        "NUM_GATES": cfg.num_gates,
    }


def _projection_arguments(inputs: RecurrenceInputs, geo: dict) -> dict:
    """The projection's kernel arguments (both kernels): W_hr, P and the h tile sizes."""
    return {
        "w_hr_ptr": _contiguous(inputs.w_hr),
        "proj": inputs.config.out_size,
        "HAS_PROJ": inputs.config.proj_size > 0,
        "BLOCK_P": geo["BLOCK_P"],
        "BLOCK_R": geo["BLOCK_R"],
    }


def _lengths(inputs: RecurrenceInputs) -> torch.Tensor:
    steps, batch, _ = inputs.xg.shape
    if inputs.lengths is None:
        return torch.full((batch,), steps, dtype=torch.int64, device=inputs.xg.device)
    return inputs.lengths.to(torch.int64).contiguous()


def _num_warps(
    *tile_elements: int,
    rows: int,
    registers_per_element: int = 1,
    fma_backward: bool = False,
    float32_mma_sync: bool = False,
    gate_by_gate_backward: bool = False,
) -> int:
    """4 warps for small tiles, 8 once a tile would need > 32 fp32 registers per thread of 4,
    and 8 at ``rows`` (``BLOCK_B``) = 256 (16 with ``float32_mma_sync``, below).

    At 256 rows 16 warps halve every ``[B, ·]`` tile per thread for the same register file
    (16 x 32 x 128 = 8 x 32 x 256 registers), and took a third off the B = 256 boundaries'
    spills while the state was carried through the time loop in registers. Since the
    kernels re-read it from memory at B = 256 (_state_in_memory) and read the layer-norm
    workspace back in chunks of programs, 8 warps (255 registers a thread: less per-thread
    overhead of addresses and scalars) spill less in most cases: RNN layer norm fp16 and
    GRU batch norm float32 fit the 64 B budget forward on sm_80 and sm_90a, and the RNN
    backward on sm_90a (tests/triton_aot.py; docs/kernels-v2.md §6.1 has the table).

    ``registers_per_element`` = 2 for the backward, which keeps about twice the forward's
    values per tile element live (the state gradients, the saved gates and norm statistics
    reloaded each step, the gradient accumulators): it takes 8 warps from half the tile
    size (B = 5, H = 37, float32 LSTM with batch norm, dropout and zoneout on sm_90a: 92 B
    of ptxas spills at 4 warps, 12 B at 8; docs/kernels-v2.md §6.1).

    ``fma_backward``: the backward on exact float32 FMA (TF32 off, ``fma_dots``) on sm_90
    (the launcher passes it where the tensor-core path would be wgmma: 64 rows and more)
    takes 16 warps: its K-chunked FMA product holds all 255 registers at 8 warps and ptxas
    spills the loop-carried values around it (sm_90a spill stores, 8 -> 16 warps: B = 64,
    H = 512 GRU 92 -> 4 B, W2 float32 76 -> 0 B). Not on sm_80, whose 8-warp kernels are
    within the budget (B = 64, H = 512 GRU: 16 B; W2 / W6b stream there; docs/kernels-v2.md
    §2).

    ``float32_mma_sync``: float32 at 256 rows on mma.sync (sm_80), the step whole (no row
    pieces), without batch norm, takes 16 warps: there 8 warps spilled up to 2,356 B (the
    pair split's backward) and 16 spill less (ptxas spill stores forward ; backward, 8 -> 16
    warps, triton 3.8: LSTM 0 ; 2356 -> 0 ; 68, GRU 0 ; 964 -> 0 ; 0, GRU with layer norm 0 ;
    1060 -> 0 ; 52, RNN with layer norm, dropout and zoneout 96 ; 64 -> 0 ; 0; with 3.6
    likewise). With batch norm 16 spilled more (3.8 RNN 0 ; 0 -> 28 ; 0, 3.6 GRU 0 ; 8 -> 40 ;
    100; docs/kernels-v2.md §6.2). Not on sm_90 (wgmma), where 16 warps spilled more for the
    GRU.

    ``gate_by_gate_backward``: the backward with _geometry's ``gate_by_gate`` (bf16 / fp16
    batch norm at 128 rows, 16 units a program) takes 16 warps: at 8 its loop-invariant
    addresses beside the step's [128, 16] tiles were spilled (backward spill stores / loads,
    sm_80 H = 1024, triton 3.8, 8 -> 16 warps: LSTM all_batch_norm 112 / 112 -> 28 / 28, GRU
    48 / 44 -> 32 / 28; docs/kernels-v2.md §6.2). Its forward keeps 8 (0 B).
    """
    if gate_by_gate_backward:
        return 16
    if rows >= 256:
        return 16 if float32_mma_sync else 8
    if fma_backward and rows >= 64:
        return 16
    return 8 if max(tile_elements) * registers_per_element > 32 * 128 else 4


def _float32_mma_sync(geo: dict, kernel: str, norm: str) -> bool:
    """_num_warps's ``float32_mma_sync`` for ``kernel``: float32 whose dots are mma.sync (not
    wgmma: sm_80, or fewer than 64 rows a dot), the step whole (not the LSTM with layer
    norm's row pieces, within the budget at 8 warps), not with batch norm (``norm``: 16
    warps spilled more there, the GRU's backward with triton 3.6 8 -> 100 B)."""
    return (
        geo["element_bytes"] == 4
        and not geo[f"wgmma_{kernel}"]
        and _row_piece(geo) == geo["BLOCK_B"]
        and norm != "batch"
    )


_REGISTER_FILE = 65536  # 32-bit registers per SM (sm_80, sm_90)
_MAX_REGISTERS_PER_THREAD = 255


def _state_in_memory(geo: dict, kernel: str, norm: str = "none") -> bool:
    """The ``STATE_IN_MEMORY`` of ``kernel`` ("forward" / "backward"): at ``BLOCK_B`` = 256
    the state of a program's units is re-read every step instead of being carried through
    the time loop in registers, where beside the step's ``[256, ·]`` working set ptxas
    spilled it. Forward (h, c, the dropout mask m_h): from the rows the program wrote before
    the previous step's barrier (h_prev, c_prev). Backward (dh, dc): from grad_h0 /
    grad_c0, which then hold them, ordered by CTA barriers (and GRU's dL/d xg stored gate
    by gate). The backward takes it with mma.sync, and with wgmma (sm_90, 64 rows or more)
    only up to _STATE_IN_MEMORY_WGMMA_TILES resident K tiles a program, as measured
    (B = 256, 8 warps, ptxas spill stores of the backward, carried -> re-read): GRU batch
    norm float32 sm_80 104 -> 64 B, sm_90a (the pair split, 24 tiles) 172 -> 52 B, RNN
    layer norm fp16 sm_80 180 -> 16 B, but sm_90a (64 tiles) 56 -> 180 B
    (docs/kernels-v2.md §6.1). Also the layer-norm backward at ``BLOCK_B`` = 64 with
    mma.sync (sm_80; W2 with layer norm, dropout and zoneout: backward spill stores 140 ->
    0 B beside the gradient sums kept in memory, 236 -> 44 B alone). And in both kernels
    wherever the step runs in whole-step row pieces (_row_piece: the LSTM with layer norm at
    B >= 128, whose backward would otherwise carry its state with wgmma's 64 K tiles). And
    the forward with batch norm in the float32 pair split (``split_k`` = 2) at
    ``BLOCK_B`` = _BATCH_NORM_PAIR_STATE_IN_MEMORY_ROWS (128): carried, its loop-invariant
    values beside the 16 K tiles' product (the operand loads' row and K masks, the dropout
    mask, the Philox keys, the norm parameters) were spilled, ptxas spill stores / loads of
    the LSTM with batch norm, dropout and zoneout at the boundary (sm_90a H = 1024, sm_80
    H = 864), triton 3.8 sm_90a 108 / 116 -> 0 / 0, sm_80 4 / 4 -> 0 / 0; triton 3.6
    sm_90a 104 / 116 -> 0 / 0, sm_80 100 / 108 -> 0 / 0 (the GRU there 0-4 B -> 0; the
    backward, 0-4 B, keeps its state carried; docs/kernels-v2.md §6.2). And both kernels
    with _geometry's ``gate_by_gate`` (bf16 / fp16 batch norm at 128 rows, 16 units a
    program: the forward's whole step there spilled 1092 B, 256 with its state in memory
    alone; docs/kernels-v2.md §6.2). The interpreter tests select it with
    INTERPRETER_STATE_IN_MEMORY (both kernels)."""
    if _interpreting():
        return INTERPRETER_STATE_IN_MEMORY
    if _row_piece(geo) < geo["BLOCK_B"]:  # the row pieces carry no state
        return True
    if geo["gate_by_gate"]:  # bf16 / fp16 batch norm at 128 rows, 16 units (_geometry)
        return True
    if kernel == "forward" and norm == "batch" and geo["split_k"] == 2:
        if geo["BLOCK_B"] == _BATCH_NORM_PAIR_STATE_IN_MEMORY_ROWS:
            return True
    if kernel == "backward" and norm == "layer" and not geo["wgmma_backward"]:
        if geo["BLOCK_B"] == _LAYER_NORM_STATE_IN_MEMORY_ROWS:
            return True
    if geo["BLOCK_B"] < _STATE_IN_MEMORY_ROWS:
        return False
    if kernel == "forward" or not geo["wgmma_backward"]:
        return True
    tiles = split_tiles(geo) if geo["split_k"] == 2 else geo["k_tiles_backward"]
    return tiles <= _STATE_IN_MEMORY_WGMMA_TILES


def _forward_step_zero(geo: dict, norm: str) -> bool:
    """The forward kernel's ``STEP_ZERO``: b_hh and the norm parameters read each step and
    ``s // steps`` (0, which the compiler cannot fold) as the recurrent product's first row,
    for bf16 / fp16 with batch norm (``norm``) in the pair split (``split_k`` = 2) at
    ``BLOCK_B`` >= _HALF_BATCH_NORM_STEP_ZERO_FROM_ROWS (256) with wgmma (sm_90). There the
    16 K tiles' operand masks (each row predicate ANDed with each K tile's) and offsets were
    hoisted out of the time loop and spilled: LSTM with batch norm, dropout and zoneout
    (H = 1024), forward spill stores / loads triton 3.8 160 / 160 -> 16 / 16 B (the first
    row alone 32 / 32), triton 3.6 176 / 176 -> 0 / 0 (the first row alone 76 / 76); the GRU
    0 -> 4 / 4 (3.6: 12 / 12). Not with mma.sync (sm_80, H = 864: the first row alone 16 ->
    220 B), nor float32 (the LSTM's first row alone 36 -> 56 B; docs/kernels-v2.md §6.2)."""
    return (
        geo["wgmma_forward"]
        and norm == "batch"
        and geo["split_k"] == 2
        and geo["element_bytes"] == 2
        and geo["BLOCK_B"] >= _HALF_BATCH_NORM_STEP_ZERO_FROM_ROWS
    )


def _rows_per_step(geo: dict, kernel: str, norm: str) -> bool:
    """The ``ROWS_PER_STEP`` of ``kernel`` ("forward" / "backward"): the step's rows, and
    the masks and per-element offsets of its ``[BLOCK_B, ·]`` tiles, rebuilt every step from
    ``s // steps`` (0, which the compiler cannot fold) instead of once before the time loop,
    for bf16 / fp16 with batch norm (``norm``) in the pair split (``split_k`` = 2) at
    ``BLOCK_B`` >= _HALF_BATCH_NORM_ROWS_PER_STEP_FROM_ROWS (256) where the kernel's products
    are mma.sync (sm_80; with wgmma the forward takes _forward_step_zero). Before the loop,
    those offsets were held across it and spilled with triton 3.6: spill stores / loads
    (forward ; backward, H = 864), LSTM with batch norm, dropout and zoneout triton 3.6
    156 ; 72 / 76 -> 4 ; 32, triton 3.8 16 ; 40 -> 24 ; 0; the GRU triton 3.6 0 ; 36 -> 0 ;
    0, triton 3.8 0 ; 48 -> 0 ; 24 / 20 (docs/kernels-v2.md §6.2)."""
    return (
        not geo[f"wgmma_{kernel}"]
        and norm == "batch"
        and geo["split_k"] == 2
        and geo["element_bytes"] == 2
        and geo["BLOCK_B"] >= _HALF_BATCH_NORM_ROWS_PER_STEP_FROM_ROWS
    )


def _rnn_layer_norm_rows(num_gates: int, norm: str, common: dict, block_b: int) -> bool:
    """The RNN (one gate) with layer norm in bf16 / fp16, no projection, at ``BLOCK_B`` >=
    _RNN_LAYER_NORM_ROW_CLAMP_FROM_ROWS (256): _row_clamp's and _product_row_chunks' shapes."""
    return (
        num_gates == 1
        and norm == "layer"
        and common["element_bytes"] == 2
        and common["proj"] == 0
        and block_b >= _RNN_LAYER_NORM_ROW_CLAMP_FROM_ROWS
    )


def _row_clamp(geo: dict, kernel: str, norm: str) -> bool:
    """The kernels' ``ROW_CLAMP`` for ``kernel`` ("forward" / "backward"): the recurrent
    product's operand rows clamped into the batch and its loads masked by the K tile alone
    (kernels/recurrence.py _resident_product), for the RNN with layer norm in bf16 / fp16 at
    ``BLOCK_B`` >= _RNN_LAYER_NORM_ROW_CLAMP_FROM_ROWS where the product takes all the rows
    from a resident W_hh: the forward on both targets, the backward with wgmma (sm_90). There
    each thread's row predicates ANDed with every K tile's (32 / 64 K tiles of [256, 64])
    were hoisted out of the time loop and spilled. Spill stores / loads, forward ; backward,
    before -> clamped (sm_80 H = 1728, sm_90a H = 2112): triton 3.6 sm_80 108 / 108 ; 104 /
    104 -> 0 / 0 ; 184 / 184, sm_90a 0 ; 192 / 188 -> 0 ; 0; triton 3.8 sm_80 40 / 40 ;
    16 / 16 -> 0 ; 156 / 156, sm_90a 0 ; 56 / 56 -> 0 ; 0. So not the mma.sync backward,
    which takes _product_row_chunks instead. A padded row's product is then the last real
    row's, not 0: every use of it is masked (stores by the real rows, the layer norm per
    row). Under the interpreter INTERPRETER_ROW_CLAMP (both kernels)."""
    if _interpreting():
        shape = INTERPRETER_ROW_CLAMP
    else:
        shape = _rnn_layer_norm_rows(geo["num_gates"], norm, geo, geo["BLOCK_B"])
        shape = shape and (kernel == "forward" or geo["wgmma_backward"])
    return (
        shape
        and geo["split_k"] == 1
        and geo["stream_k"] == 0
        and geo[f"rows_{kernel}"] == geo["BLOCK_B"]
        and _row_piece(geo) == geo["BLOCK_B"]
    )


def _product_row_chunks(geo: dict, norm: str) -> bool:
    """The backward kernel's ``PRODUCT_ROW_CHUNKS``: the RNN with layer norm in bf16 / fp16
    at ``BLOCK_B`` >= _RNN_LAYER_NORM_ROW_CLAMP_FROM_ROWS on mma.sync (sm_80; _geometry gives
    its backward ``rows_backward`` = _PAIR_ROW_CHUNK there), its state in memory: the
    product in row chunks, each chunk's dh added into grad_h0 (as the row pieces' product;
    the chunk index through _opaque), W2's K tiles and shared memory (H = 1728: 16 K tiles,
    98304 B, was 131072). Backward spill stores / loads, whole product -> chunks: triton 3.6
    104 / 104 -> 8 / 8, triton 3.8 16 / 16 -> 8 / 8 (the clamp instead: 184 / 156). Under
    the interpreter INTERPRETER_PRODUCT_ROW_CHUNKS (with INTERPRETER_STATE_IN_MEMORY and
    INTERPRETER_ROWS_PER_DOT)."""
    if _interpreting():
        shape = INTERPRETER_PRODUCT_ROW_CHUNKS and INTERPRETER_STATE_IN_MEMORY
    else:
        shape = _rnn_layer_norm_rows(geo["num_gates"], norm, geo, geo["BLOCK_B"])
        shape = shape and geo["stream_k"] == 0
    return (
        shape
        and geo["split_k"] == 1
        and not geo["gate_by_gate"]
        and _row_piece(geo) == geo["BLOCK_B"]
        and geo["rows_backward"] < geo["BLOCK_B"]
    )


def _unit_halves(geo: dict) -> bool:
    """The backward kernel's ``UNIT_HALVES``: the LSTM (``num_gates`` = 4) with _geometry's
    ``gate_by_gate`` (bf16 / fp16 batch norm at 128 rows, 16 units a program, its state in
    memory) runs its step's cell backward and batch-norm backward (steps 1-2, per unit
    column) over the halves of the program's units in a loop, one half's ``[128, 8]`` tiles
    live at a time; the product (all 16 units) stays whole. Backward spill stores / loads,
    sm_80 LSTM all_batch_norm bf16 H = 1024, 16 warps: triton 3.6 412 / 424 -> 4 / 4, triton
    3.8 28 / 28 -> 0 / 0 (fp16 likewise; shared memory unchanged, 163840 B as predicted).
    The GRU (32 / 28 B, within the budget) keeps its step whole (docs/kernels-v2.md §6.2).
    ``rows_backward`` < ``BLOCK_B``: the kernel's row chunks, which the halves run beside."""
    return (
        geo["gate_by_gate"]
        and geo["num_gates"] == 4
        and geo["units"] >= 2
        and geo["rows_backward"] < geo["BLOCK_B"]
    )


def _row_piece(geo: dict) -> int:
    """The kernels' ``ROW_PIECE`` (_geometry's ``row_piece``): the LSTM with layer norm and no
    projection at ``BLOCK_B`` >= _WHOLE_STEP_PIECES_FROM_ROWS (128) runs its steps in whole-step
    row pieces of _WHOLE_STEP_PIECE_ROWS (64) rows around the same barriers: the products
    piece by piece, the pre-norm product staged in the step's ``xhat_hh`` rows and c~ in its
    ``xhat_c`` rows (the forward), dL/d N(c~) gamma_c, dL/d o and dL/d a in its ``grad_acc``
    rows (the backward); each piece publishes its rows' layer-norm partials, the programs
    meet once, and each piece is read back and normalised. At 256 rows the step's working
    set (accumulator, x gate tile, gates, c~ and its norm) spilled KBs at any warp count; 64
    rows at 8 warps fit, and at 128 rows the whole step spilled 580-910 B (docs/kernels-v2.md
    §6.1). Elsewhere ``BLOCK_B`` (one piece). Under
    the interpreter INTERPRETER_ROW_PIECE (with INTERPRETER_STATE_IN_MEMORY)."""
    return geo["row_piece"]


def _warp_options(num_warps: int) -> dict:
    """``num_warps`` and ``maxnreg`` of a launch: every register of the SM to the one program
    it runs (the grid is persistent, one program per SM). Without ``maxnreg`` ptxas aims at
    two CTAs per SM and caps a 256-thread kernel at 128 registers, spilling the rest (sm_80,
    B = 256 LSTM layer-norm backward: 128 registers and 5,536 B of spill stores; with
    ``maxnreg`` 255 registers and 2,404 B; docs/kernels-v2.md §6.1)."""
    per_thread = _REGISTER_FILE // (32 * num_warps)
    return {"num_warps": num_warps, "maxnreg": min(_MAX_REGISTERS_PER_THREAD, per_thread)}


def _check_grid(programs: int, geo: dict) -> None:
    if _interpreting():
        # A multi-program grid would hang in the sequential interpreter (unless a test set
        # INTERPRETER_UNITS_PER_PROGRAM and runs the programs concurrently).
        if programs != 1 and INTERPRETER_UNITS_PER_PROGRAM is None:
            raise RuntimeError("the Triton interpreter can only run a one-program grid")
    elif programs > geo["sms"]:
        raise RuntimeError(
            f"persistent grid of {programs} programs exceeds the {geo['sms']} SMs: "
            "not all programs could be resident, the grid barrier would hang"
        )


def _saved_shapes(inputs: RecurrenceInputs) -> dict[str, tuple[int, ...]]:
    """Shape of each saved float32 tensor, in _SAVED_FIELDS order; (0,) where unused."""
    cfg = inputs.config
    steps, batch, _ = inputs.xg.shape
    hidden, gates, out_size = cfg.hidden_size, cfg.gate_size, cfg.out_size
    lstm, norm = cfg.has_cell_state, cfg.norm
    per_step_stat = {"batch": None, "layer": batch}  # BN: per column; LN: per row

    def used(condition: bool, *shape: int) -> tuple[int, ...]:
        return shape if condition else (0,)

    return {
        "h_prev": (steps, batch, out_size),
        "c_prev": used(lstm, steps, batch, hidden),
        "gates": (steps, batch, gates),
        "gru_hn": used(cfg.cell == "gru", steps, batch, hidden),
        "xhat_hh": used(norm != "none", steps, batch, gates),
        "rstd_hh": used(norm != "none", steps, per_step_stat.get(norm) or gates),
        "xhat_c": used(lstm and norm != "none", steps, batch, hidden),
        "rstd_c": used(lstm and norm != "none", steps, per_step_stat.get(norm) or hidden),
        "h_pre_proj": used(cfg.proj_size > 0, steps, batch, hidden),
    }


def saved_like(inputs: RecurrenceInputs) -> tuple[torch.Tensor, ...]:
    """Empty tensors shaped like forward's saved tuple (allocation only: safe on fake tensors)."""
    return tuple(
        inputs.xg.new_empty(shape, dtype=torch.float32) for shape in _saved_shapes(inputs).values()
    )


def forward(inputs: RecurrenceInputs) -> tuple[RecurrenceOutputs, tuple]:
    _check(inputs)
    from fusedrnn.kernels.recurrence import recurrence_forward_kernel

    cfg = inputs.config
    xg = inputs.xg if inputs.xg.stride(2) == 1 else inputs.xg.contiguous()
    steps, batch, _ = xg.shape
    hidden, gate_width = cfg.hidden_size, cfg.gate_size
    device, dtype = xg.device, xg.dtype
    lstm, norm, training = cfg.has_cell_state, cfg.norm, inputs.training
    meta = _meta(inputs)
    f32 = {"dtype": torch.float32, "device": device}

    out_size = cfg.out_size
    output = _empty(steps, batch, out_size, dtype=dtype, device=device)
    h_n = _empty(batch, out_size, dtype=dtype, device=device)
    c_n = _empty(batch, hidden, dtype=dtype, device=device) if lstm else None
    bn_train = norm == "batch" and training
    stats = [
        _empty(steps, width, dtype=base.accumulate_dtype(dtype), device=device)
        if bn_train and use
        else None
        for width, use in ((gate_width, True), (gate_width, True), (hidden, lstm), (hidden, lstm))
    ]
    saved = {
        name: _empty(*shape, dtype=torch.float32, device=device)
        for name, shape in _saved_shapes(inputs).items()
    }
    if steps == 0:
        h_n.copy_(inputs.h0)
        if lstm:
            c_n.copy_(inputs.c0)
        result = RecurrenceOutputs(output=output, h_n=h_n, c_n=c_n)
        return result, tuple(saved[k] for k in _SAVED_FIELDS)

    geo = _geometry(
        batch, hidden, cfg.num_gates, device, dtype, cfg.proj_size,
        input_precision=meta["INPUT_PRECISION"], norm=norm,
    )  # fmt: skip
    programs, block_u = geo["programs"], geo["units"]
    _check_grid(programs, geo)
    # Row t_first of h_prev is h0: the first step reads it like any other h_{t-1}.
    saved["h_prev"][steps - 1 if inputs.reverse else 0].copy_(inputs.h0)
    # Layer norm's per-program row partials (sum, M2), in two slots by barrier parity
    # (kernels/primitives.py _exchange_row_values): W_hh h and c~ take turns.
    ln_partials = _empty(2, 2, programs, geo["BLOCK_B"], **f32) if norm == "layer" else None
    # m_h * h by step parity, for the chunked products with recurrent dropout (the kernel's
    # MASKED_EXCHANGE: they cannot hold the [B, H] mask; one dot can).
    one_dot = geo["stream_k"] == 0 and geo["rows_forward"] == geo["BLOCK_B"]
    one_dot = one_dot and geo["k_tiles_forward"] == 1
    h_masked = _empty(2, batch, out_size, **f32) if meta["USE_DROPOUT"] and not one_dot else None
    barrier = torch.zeros(1, dtype=torch.int64, device=device)
    running = [
        _contiguous(getattr(inputs, f"running_{k}"))
        for k in ("mean_hh", "var_hh", "mean_c", "var_c")
    ]
    stat_steps = running[0].shape[0] if norm == "batch" and not training else 1
    w_hh = inputs.w_hh.contiguous()
    recurrence_forward_kernel[(programs,)](
        xg,
        inputs.h0.contiguous(),
        _contiguous(inputs.c0),
        w_hh,
        _contiguous(inputs.b_hh),
        _lengths(inputs),
        _contiguous(inputs.norm_weight_hh),
        _contiguous(inputs.norm_weight_c),
        _contiguous(inputs.norm_bias_c),
        *running,
        output,
        h_n,
        c_n,
        *stats,
        *(saved[k] for k in _SAVED_FIELDS),
        ln_partials,
        h_masked,
        barrier,
        steps,
        batch,
        hidden,
        stat_steps,
        xg.stride(0),
        xg.stride(1),
        output.stride(0),
        output.stride(1),
        **_scalars(inputs),
        **meta,
        HAS_BIAS=inputs.b_hh is not None,
        GATES_PAD=geo["GATES_PAD"],
        BLOCK_B=geo["BLOCK_B"],
        BLOCK_U=block_u,
        BLOCK_H=geo["BLOCK_H"],
        **_projection_arguments(inputs, geo),
        ROWS_PER_DOT=geo["rows_forward"],
        K_TILES=geo["k_tiles_forward"],
        STREAM_K=geo["stream_k"],
        PROGRAMS_PAD=_next_power_of_2(programs),
        STATE_IN_MEMORY=_state_in_memory(geo, "forward", norm),
        ROW_PIECE=_row_piece(geo),
        STEP_ZERO=_forward_step_zero(geo, norm),
        BN_GATE_BY_GATE=geo["gate_by_gate"],
        ROWS_PER_STEP=_rows_per_step(geo, "forward", norm),
        ROW_CLAMP=_row_clamp(geo, "forward", norm),
        **_warp_options(
            _num_warps(
                geo["BLOCK_B"] * geo["BLOCK_H"],
                geo["BLOCK_H"] * geo["GATES_PAD"] * block_u,
                rows=geo["BLOCK_B"],
                float32_mma_sync=_float32_mma_sync(geo, "forward", norm),
            )
        ),
        launch_cooperative_grid=True,
    )
    result = RecurrenceOutputs(output=output, h_n=h_n, c_n=c_n)
    if bn_train:
        result.batch_mean_hh, result.batch_var_hh, result.batch_mean_c, result.batch_var_c = stats
    return result, tuple(saved[k] for k in _SAVED_FIELDS)


def backward(inputs: RecurrenceInputs, saved: tuple, *output_grads: OutputGrad) -> Gradients:
    grad_output, grad_h_n, grad_c_n = output_grads
    _check(inputs)
    from fusedrnn.kernels.recurrence import recurrence_backward_kernel

    cfg = inputs.config
    xg = inputs.xg
    steps, batch, _ = xg.shape
    hidden, gate_width, out_size = cfg.hidden_size, cfg.gate_size, cfg.out_size
    device = xg.device
    lstm, norm = cfg.has_cell_state, cfg.norm
    meta = _meta(inputs)
    tensors = dict(zip(_SAVED_FIELDS, saved))
    f32 = {"dtype": torch.float32, "device": device}

    if grad_output is None:
        grad_output = torch.zeros(steps, batch, out_size, dtype=xg.dtype, device=device)
    if grad_output.stride(-1) != 1:
        grad_output = grad_output.contiguous()
    grad_h_n = torch.zeros(batch, out_size, **f32) if grad_h_n is None else grad_h_n.contiguous()
    if lstm:
        grad_c_n = torch.zeros(batch, hidden, **f32) if grad_c_n is None else grad_c_n.contiguous()

    grad_xg = _empty(steps, batch, gate_width, dtype=xg.dtype, device=device)
    grad_acc = _empty(steps, batch, gate_width, **f32)
    grad_h0 = _empty(batch, out_size, **f32)
    projected = cfg.proj_size > 0
    grad_proj = _empty(steps, batch, out_size, **f32) if projected else None
    grad_c0 = _empty(batch, hidden, **f32) if lstm else None
    grad_b_hh = _empty(gate_width, **f32)
    grad_norm_weight_hh = _empty(gate_width, **f32) if norm != "none" else None
    grad_norm_weight_c = _empty(hidden, **f32) if lstm and norm != "none" else None
    grad_norm_bias_c = _empty(hidden, **f32) if lstm and norm != "none" else None

    if steps == 0:
        grad_xg.zero_()
        grad_acc.zero_()
        if projected:
            grad_proj.zero_()
        grad_h0.copy_(grad_h_n)
        if lstm:
            grad_c0.copy_(grad_c_n)
        for g in (grad_b_hh, grad_norm_weight_hh, grad_norm_weight_c, grad_norm_bias_c):
            if g is not None:
                g.zero_()
    else:
        geo = _geometry(
            batch, hidden, cfg.num_gates, device, xg.dtype, cfg.proj_size,
            input_precision=meta["INPUT_PRECISION"], norm=norm,
        )  # fmt: skip
        programs, block_u = geo["programs"], geo["units"]
        _check_grid(programs, geo)
        # (sum dy, sum dy xhat, sum xhat) per row and program, two slots by barrier parity.
        ln_partials = _empty(2, 3, programs, geo["BLOCK_B"], **f32) if norm == "layer" else None
        # The grid-barrier counter, then one pair flag per program (split_k).
        barrier = torch.zeros(1 + programs, dtype=torch.int64, device=device)
        split = geo["split_k"] == 2
        pair_partials = _empty(programs, geo["BLOCK_B"], 2 * block_u, **f32) if split else None
        recurrence_backward_kernel[(programs,)](
            grad_output,
            grad_h_n,
            grad_c_n,
            inputs.w_hh.contiguous(),
            _lengths(inputs),
            _contiguous(inputs.norm_weight_hh),
            _contiguous(inputs.norm_weight_c),
            _contiguous(inputs.norm_bias_c),
            tensors["h_prev"],
            tensors["c_prev"],
            tensors["gates"],
            tensors["gru_hn"],
            tensors["xhat_hh"],
            tensors["rstd_hh"],
            tensors["xhat_c"],
            tensors["rstd_c"],
            grad_xg,
            grad_acc,
            grad_h0,
            grad_c0,
            grad_b_hh,
            grad_norm_weight_hh,
            grad_norm_weight_c,
            grad_norm_bias_c,
            ln_partials,
            pair_partials,
            barrier,
            steps,
            batch,
            hidden,
            grad_output.stride(0),
            grad_output.stride(1),
            **_scalars(inputs),
            **meta,
            grad_proj_ptr=grad_proj,
            GATES_PAD=geo["GATES_PAD"],
            BLOCK_B=geo["BLOCK_B"],
            BLOCK_U=block_u,
            BLOCK_H=geo["BLOCK_H"],
            BLOCK_GH=geo["BLOCK_GH"],
            **_projection_arguments(inputs, geo),
            GATE_DOTS=geo["gate_dots"],
            ROWS_PER_DOT=geo["rows_backward"],
            K_TILES=geo["k_tiles_backward"],
            SPLIT_K=geo["split_k"],
            STREAM_K=geo["stream_k"],
            PROGRAMS_PAD=_next_power_of_2(programs),
            STATE_IN_MEMORY=_state_in_memory(geo, "backward", cfg.norm),
            ROW_PIECE=_row_piece(geo),
            WGMMA_BACKWARD=geo["wgmma_backward"],
            ROWS_PER_STEP=_rows_per_step(geo, "backward", cfg.norm),
            ROW_CLAMP=_row_clamp(geo, "backward", cfg.norm),
            PRODUCT_ROW_CHUNKS=_product_row_chunks(geo, cfg.norm),
            UNIT_HALVES=_unit_halves(geo),
            **_warp_options(
                _num_warps(
                    geo["BLOCK_B"] * geo["BLOCK_H"],
                    geo["BLOCK_H"] * geo["GATES_PAD"] * block_u,
                    rows=geo["BLOCK_B"],
                    registers_per_element=2,
                    fma_backward=geo["fma_dots"] and geo["wgmma_backward"],
                    float32_mma_sync=_float32_mma_sync(geo, "backward", cfg.norm),
                    gate_by_gate_backward=geo["gate_by_gate"],
                )
            ),
            launch_cooperative_grid=True,
        )

    # dL/dW_hh = sum over t, b of dL/dacc^T (m_h h_{t-1}): one GEMM over all steps.
    # The dropout mask is regenerated from the seed (transient, [B, H]), never saved.
    operand = tensors["h_prev"]
    if meta["USE_DROPOUT"]:
        operand = operand * reference_loop.variational_mask(
            inputs.seed,
            philox.STREAM_RECURRENT_DROPOUT,
            inputs.layer,
            inputs.direction,
            batch,
            out_size,
            cfg.recurrent_dropout,
            torch.float32,
            device,
        )
    if steps > 0:
        grad_w_hh = grad_acc.reshape(steps * batch, gate_width).t() @ operand.reshape(
            steps * batch, out_size
        )
    else:
        grad_w_hh = torch.zeros(gate_width, out_size, **f32)
    # dL/dW_hr = sum over t, b of dL/dh~^T (o tanh(N_c(c~))): one GEMM over all steps too.
    grad_w_hr = None
    if projected:
        grad_w_hr = grad_proj.reshape(steps * batch, out_size).t() @ tensors["h_pre_proj"].reshape(
            steps * batch, hidden
        )
    if meta["USE_WEIGHT_DROP"]:  # d(W_hh * m_W)/dW_hh = m_W: zero where dropped
        _mask_weight_grad(inputs, grad_w_hh)

    def cast(grad: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
        if grad is None or like is None:
            return None
        return grad.to(like.dtype)

    return {
        "xg": grad_xg,
        "h0": cast(grad_h0, inputs.h0),
        "c0": cast(grad_c0, inputs.c0),
        "w_hh": cast(grad_w_hh, inputs.w_hh),
        "b_hh": cast(grad_b_hh, inputs.b_hh),
        "w_hr": cast(grad_w_hr, inputs.w_hr),
        "norm_weight_hh": cast(grad_norm_weight_hh, inputs.norm_weight_hh),
        "norm_weight_c": cast(grad_norm_weight_c, inputs.norm_weight_c),
        "norm_bias_c": cast(grad_norm_bias_c, inputs.norm_bias_c),
    }
