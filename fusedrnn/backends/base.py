"""The recurrence contract every backend implements (docs/design.md §3.1).

Shape conventions, stated once:

* ``T`` time steps, ``B`` batch rows, ``G`` gates (lstm 4, gru 3, rnn 1),
* ``H`` hidden units of the cell (``hidden_size``), ``P`` the size of ``h`` (``proj_size``
  when the LSTM has a projection, else ``H``), ``S`` the number of per-step batch-norm buffers
  (``max_steps``).

A backend exposes ``NAME``, ``unsupported_reason(inputs)``, ``forward(inputs)`` and
``backward(inputs, saved, grad_output, grad_h_n, grad_c_n)``; see :class:`Backend`.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch

from .. import philox

# Codes of the cells and norms in the kernels: the Triton kernels read these, and the C++
# enums CellKind / NormKind (csrc/include/fusedrnn/cells.cuh) are checked against them when
# fusedrnn._C is loaded (native_launcher.check_native_constants).
CELL_CODES = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 3}
NORM_CODES = {"none": 0, "batch": 1, "layer": 2}
CELLS = tuple(CELL_CODES)
NORMS = tuple(NORM_CODES)
NUM_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}

# Normalisation constants, one definition for every backend and for functional.py (cells.cuh's
# kNormEps is checked against NORM_EPS when fusedrnn._C is loaded).
NORM_EPS = 1e-5  # added to the variance, as torch.nn.BatchNorm1d / LayerNorm
BN_MOMENTUM = 0.1  # running = (1 - momentum) * running + momentum * batch, as torch


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of accumulations, LSTM cell states and BN statistics for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclasses.dataclass(frozen=True)
class RecurrenceConfig:
    """Static settings of one layer-direction's recurrence (hashable: kernels key on it)."""

    cell: str  # one of CELLS
    hidden_size: int  # H
    proj_size: int = 0  # P when > 0 (lstm only)
    recurrent_dropout: float = 0.0  # variational dropout on h_{t-1} where it meets W_hh
    zoneout_cell: float = 0.0  # lstm only
    zoneout_hidden: float = 0.0
    norm: str = "none"  # "none" | "batch" (recurrent BN) | "layer" (layer norm)
    weight_drop: float = 0.0  # DropConnect on W_hh: one [G*H, P] mask per call (training)

    @property
    def num_gates(self) -> int:
        return NUM_GATES[self.cell]

    @property
    def gate_size(self) -> int:
        """G * H: the width of ``xg`` and of ``W_hh``'s first dimension."""
        return self.num_gates * self.hidden_size

    @property
    def out_size(self) -> int:
        """P: the size of h (proj_size if set, else hidden_size)."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    @property
    def has_cell_state(self) -> bool:
        return self.cell == "lstm"

    def draws_masks(self, training: bool) -> bool:
        """Whether a call in this mode draws Philox masks (and so the seed matters)."""
        if not training:
            return False
        return (
            self.recurrent_dropout > 0
            or self.zoneout_cell > 0
            or self.zoneout_hidden > 0
            or self.weight_drop > 0
        )

    def uses_weight_drop(self, training: bool) -> bool:
        """Whether W_hh is multiplied by a weight-drop mask in this mode (training only)."""
        return training and self.weight_drop > 0


@dataclasses.dataclass
class RecurrenceInputs:
    """Everything one layer-direction's time loop reads. Tensors share one device."""

    config: RecurrenceConfig
    xg: torch.Tensor  # [T, B, G*H] input projection x W_ih^T + b_ih (already normalised)
    h0: torch.Tensor  # [B, P] initial hidden state
    c0: torch.Tensor | None  # [B, H] initial cell state (lstm), else None
    w_hh: torch.Tensor  # [G*H, P] recurrent weights, torch's gate order
    b_hh: torch.Tensor | None  # [G*H] recurrent bias, or None (bias=False)
    w_hr: torch.Tensor | None  # [P, H] lstm projection weights, or None
    lengths: torch.Tensor | None  # [B] int64 on the device, 0 <= len <= T; None = all T
    norm_weight_hh: torch.Tensor | None = None  # [G*H] gamma of BN/LN(W_hh h)
    norm_weight_c: torch.Tensor | None = None  # [H] gamma of BN/LN(c) (lstm)
    norm_bias_c: torch.Tensor | None = None  # [H] beta of BN/LN(c) (lstm)
    running_mean_hh: torch.Tensor | None = None  # [S, G*H] BN, read in eval mode
    running_var_hh: torch.Tensor | None = None  # [S, G*H]
    running_mean_c: torch.Tensor | None = None  # [S, H]
    running_var_c: torch.Tensor | None = None  # [S, H]
    reverse: bool = False  # run t = T-1 .. 0 (per row: len-1 .. 0)
    training: bool = False  # masks and batch statistics on; else expectations/running stats
    seed: int = 0  # Philox key of this forward call
    layer: int = 0  # layer id in the offset layout
    direction: int = 0  # 0 forward, 1 reverse, in the offset layout
    # Whether a backward may follow (functional.recurrence: grad mode on and some input
    # requires grad). False lets a backend skip what it saves for backward (host does).
    needs_grad: bool = True
    # Eager CPU calls only (functional._defers_projection, docs/design.md §5.4): ``(x, w_ih,
    # b_ih)`` when the input projection has not been computed; ``xg`` is then a stride-0
    # placeholder of its shape and dtype. A backend with ``XPROJ_IN_LOOP`` (host) computes
    # ``x W_ih^T + b_ih`` in its step loop; for any other, ``materialized_xg`` computes xg
    # first. Not an op argument: the op (torch.compile) always gets a real xg; in training
    # the backward's ``dxg`` becomes the gradients of x, w_ih, b_ih
    # (recurrence_op._RecurrenceFunction).
    x_proj: tuple | None = dataclasses.field(default=None, metadata={"op": False})

    # The tensors autograd differentiates, in a fixed order shared by every backend.
    GRAD_FIELDS = (
        "xg",
        "h0",
        "c0",
        "w_hh",
        "b_hh",
        "w_hr",
        "norm_weight_hh",
        "norm_weight_c",
        "norm_bias_c",
    )

    def replace(self, **changes) -> RecurrenceInputs:
        """A copy with ``changes``, as ``dataclasses.replace``. This class has no
        ``__post_init__`` and no ``init=False`` field, so copying the attributes is the same
        thing at a fraction of the cost (it runs once per layer-direction and call)."""
        unknown = changes.keys() - _INPUT_FIELDS
        if unknown:
            raise TypeError(f"RecurrenceInputs has no field {', '.join(sorted(unknown))}")
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__, **changes)
        return copy


_INPUT_FIELDS = frozenset(field.name for field in dataclasses.fields(RecurrenceInputs))


@dataclasses.dataclass
class RecurrenceOutputs:
    output: torch.Tensor  # [T, B, P] h_t at every step; 0 where t >= len_b
    h_n: torch.Tensor  # [B, P] last state of each row
    c_n: torch.Tensor | None  # [B, H] (lstm)
    # Training with recurrent BN only: per-step batch statistics (biased variance) over
    # the active rows, for the caller's running-buffer update, in accumulate_dtype(xg.dtype).
    # Not differentiated.
    batch_mean_hh: torch.Tensor | None = None  # [T, G*H]
    batch_var_hh: torch.Tensor | None = None  # [T, G*H]
    batch_mean_c: torch.Tensor | None = None  # [T, H]
    batch_var_c: torch.Tensor | None = None  # [T, H]


def check_mask_limits(inputs: RecurrenceInputs) -> None:
    """Raise ValueError if a mask this call draws would not fit the Philox offset layout.

    Only the fields a drawn mask indexes are checked: recurrent dropout is variational
    ([B, P], time field 0), zoneout is per step ([T, B, H] / [T, B, P]). Nothing is drawn in
    evaluation.
    """
    if not inputs.training:
        return
    cfg = inputs.config
    steps, batch, _ = inputs.xg.shape
    if cfg.recurrent_dropout > 0:
        philox.check_offset_limits(1, batch, cfg.out_size)
    if cfg.zoneout_cell > 0 and cfg.has_cell_state:
        philox.check_offset_limits(steps, batch, cfg.hidden_size)
    if cfg.zoneout_hidden > 0:
        philox.check_offset_limits(steps, batch, cfg.out_size)
    if cfg.weight_drop > 0:
        philox.check_offset_limits(1, 1, cfg.out_size)  # W_hh rows always fit (2**36)
    if cfg.draws_masks(inputs.training):
        philox.mask_base_offset(0, inputs.layer, inputs.direction)


def check_lengths(lengths: torch.Tensor, steps: int, batch: int, values: bool = True) -> None:
    """Raise for ``lengths`` that are not ``batch`` integers in [1, ``steps``].

    The range is torch's (``pack_padded_sequence`` refuses empty rows). Reading it needs the
    values (one synchronisation on a GPU); ``values=False`` checks only shape and dtype.
    """
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"lengths must have shape [{batch}], got {list(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if values and batch > 0:
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1 or high > steps:
            raise ValueError(
                f"lengths must be in [1, {steps}] (the sequence length), got values in "
                f"[{low}, {high}]"
            )


def _expected_shapes(inputs: RecurrenceInputs) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Field -> (shape, required) for every tensor of ``inputs`` besides ``xg``/``lengths``."""
    cfg = inputs.config
    _, batch, _ = inputs.xg.shape
    hidden, out, gates = cfg.hidden_size, cfg.out_size, cfg.gate_size
    lstm, norm = cfg.has_cell_state, cfg.norm
    bn_eval = norm == "batch" and not inputs.training
    steps_kept = inputs.running_mean_hh.shape[0] if inputs.running_mean_hh is not None else 1
    return {
        "h0": ((batch, out), True),
        "c0": ((batch, hidden), lstm),
        "w_hh": ((gates, out), True),
        "b_hh": ((gates,), False),
        "w_hr": ((out, hidden), cfg.proj_size > 0),
        "norm_weight_hh": ((gates,), norm != "none"),
        "norm_weight_c": ((hidden,), norm != "none" and lstm),
        "norm_bias_c": ((hidden,), False),
        "running_mean_hh": ((steps_kept, gates), bn_eval),
        "running_var_hh": ((steps_kept, gates), bn_eval),
        "running_mean_c": ((steps_kept, hidden), bn_eval and lstm),
        "running_var_c": ((steps_kept, hidden), bn_eval and lstm),
    }


def validate(inputs: RecurrenceInputs, read_lengths: bool = True) -> None:
    """Raise ValueError/TypeError for inputs that break the contract of ``RecurrenceInputs``.

    The one check of a recurrence call's arguments, run before any backend sees them (the
    backends only say what they cannot run, in ``unsupported_reason``). ``lengths`` values are
    read only on the CPU: a check on a GPU would synchronise the host (``functional.rnn``
    checks the layer's lengths once with :func:`check_lengths`), and the kernels treat an
    out-of-range length safely (active at every step, or at none). ``read_lengths=False``
    skips the values everywhere (fake tensors have none).
    """
    cfg = inputs.config
    if cfg.cell not in CELLS:
        raise ValueError(f"unknown cell {cfg.cell!r}; expected one of {CELLS}")
    if cfg.norm not in NORMS:
        raise ValueError(f"unknown norm {cfg.norm!r}; expected one of {NORMS}")
    if cfg.proj_size < 0 or (cfg.proj_size > 0 and cfg.cell != "lstm"):
        raise ValueError(f"proj_size must be 0, or > 0 for the lstm cell, got {cfg.proj_size}")
    xg = inputs.xg
    if not xg.is_floating_point():
        raise TypeError(f"xg must be a floating point tensor, got {xg.dtype}")
    if xg.dim() != 3 or xg.shape[2] != cfg.gate_size:
        raise ValueError(f"xg must have shape [T, B, {cfg.gate_size}], got {list(xg.shape)}")
    xg_cpu = xg.is_cpu  # both on the CPU: the same device without making device objects
    for field, (shape, required) in _expected_shapes(inputs).items():
        tensor = getattr(inputs, field)
        if tensor is None:
            if required:
                raise ValueError(f"{field} is required for this configuration")
            continue
        if tensor.shape != shape:
            raise ValueError(f"{field} must have shape {list(shape)}, got {list(tensor.shape)}")
        if not (xg_cpu and tensor.is_cpu) and tensor.device != xg.device:
            raise ValueError(f"{field} is on {tensor.device}, xg on {xg.device}")
        if tensor.dtype != xg.dtype:
            raise TypeError(f"{field} has dtype {tensor.dtype}, xg {xg.dtype}")
    if inputs.lengths is not None:
        if inputs.lengths.device != xg.device:
            raise ValueError(f"lengths is on {inputs.lengths.device}, xg on {xg.device}")
        on_cpu = inputs.lengths.device.type == "cpu"
        check_lengths(inputs.lengths, xg.shape[0], xg.shape[1], values=read_lengths and on_cpu)


OutputGrad = torch.Tensor | None  # a gradient of one of forward's results (see Backend.backward)
Gradients = dict[str, torch.Tensor | None]  # keyed by RecurrenceInputs.GRAD_FIELDS


class Backend(Protocol):
    """What a backend module provides (fusedrnn/backends/<name>.py)."""

    NAME: str

    def availability(self) -> str | None:
        """None if the backend can run in this process, else why not (shown to users)."""

    def unsupported_reason(self, inputs: RecurrenceInputs) -> str | None:
        """None if this backend runs ``inputs``, else the reason (raised when named)."""

    def forward(self, inputs: RecurrenceInputs) -> tuple[RecurrenceOutputs, tuple]:
        """Run the recurrence; returns the outputs and whatever backward needs (no masks).

        The saved tuple holds tensors only (an empty tensor where a slot is unused), none of
        them an input tensor itself, and the batch statistics are in
        ``accumulate_dtype(xg.dtype)``.
        """

    def saved_like(self, inputs: RecurrenceInputs) -> tuple[torch.Tensor, ...]:
        """Empty tensors with the shapes, dtypes and devices of ``forward``'s saved tuple.

        Called on fake tensors while ``torch.compile`` traces, so it may only allocate
        (``inputs.xg.new_empty(...)``), never launch anything.
        """

    def backward(
        self, inputs: RecurrenceInputs, saved: tuple, *output_grads: OutputGrad
    ) -> Gradients:
        """Gradients keyed by ``RecurrenceInputs.GRAD_FIELDS`` (None where not needed).

        ``output_grads`` are the gradients of forward's results, positionally:
        ``grad_output [T, B, P]``, ``grad_h_n [B, P]``, ``grad_c_n [B, H]`` (None without a
        cell state).
        """


def float32_uses_tf32() -> bool:
    """Whether float32 recurrent products run on TF32 tensor cores (docs/kernels-v2.md §2).

    The flag cuDNN's RNN reads (aten/src/ATen/native/cudnn/RNN.cpp passes
    ``allowTF32CuDNN(Float32Op::RNN)`` to the RNN descriptor), so a float32 comparison with
    torch.nn.LSTM on cuDNN is like for like: ``torch.backends.cudnn.rnn.fp32_precision``,
    where "none" inherits from ``torch.backends.cudnn.fp32_precision`` and then
    ``torch.backends.fp32_precision`` (TF32 iff the first setting that is not "none" is
    "tf32"; the default is "tf32"; ``torch.backends.cudnn.allow_tf32 = False`` sets it to
    "none" everywhere, i.e. exact). On a torch without those attributes: the legacy
    ``torch.backends.cudnn.allow_tf32`` (never read on a newer torch: its getter raises when
    the conv and rnn flags differ).
    """
    backends = torch.backends
    rnn_flags = getattr(backends.cudnn, "rnn", None)
    if rnn_flags is None or not hasattr(rnn_flags, "fp32_precision"):
        return bool(backends.cudnn.allow_tf32)
    for flags in (rnn_flags, backends.cudnn, backends):
        precision = getattr(flags, "fp32_precision", "none")
        if precision != "none":
            return precision == "tf32"
    return False
