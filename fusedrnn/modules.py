"""Drop-in ``nn.Module`` replacements for ``torch.nn.LSTM``, ``GRU`` and ``RNN``.

The modules derive from ``torch.nn.RNNBase``, so constructor checks, parameter names, shapes,
gate order, initialisation, ``state_dict`` keys, ``flatten_parameters`` and ``.to()`` are
torch's own. (They deliberately do not derive from ``nn.LSTM``/``GRU``/``RNN``: TorchDynamo
refuses to trace those classes, and fusedrnn layers must compile without graph breaks.)

fusedrnn's options are keyword-only and off by default; with all of them off a module
computes exactly what its torch.nn counterpart computes. Recurrent BN and layer norm add
parameters and buffers named ``bn_*`` / ``ln_*`` per layer and direction (see
:meth:`_FusedRNNBase._norm_names`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import dispatch, functional
from .backends.base import NUM_GATES

__all__ = ["GRU", "LSTM", "RNN", "ModuleOptions", "convert"]

_no_context = contextlib.nullcontext

_MODE_TO_CELL = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}
BN_GAMMA_INIT = 0.1  # Cooijmans et al. 2016: gamma = 0.1 keeps tanh/sigmoid out of saturation


@dataclasses.dataclass(frozen=True)
class ModuleOptions:
    """fusedrnn's keyword-only module options and their defaults (all off): the one list the
    constructors, ``extra_repr`` and ``convert`` read. See the README for each equation."""

    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    zoneout_cell: float = 0.0  # LSTM only
    zoneout_hidden: float = 0.0
    weight_drop: float = 0.0  # DropConnect on W_hh
    recurrent_batch_norm: bool = False
    max_steps: int | None = None
    layer_norm: bool = False
    residual: bool = False
    forget_bias: float = 0.0  # LSTM only
    backend: str = "auto"


_LSTM_ONLY_OPTIONS = ("zoneout_cell", "forget_bias")
OptionValue = float | bool | int | str | None


def _check_option_names(cls_name: str, options: dict, allowed_lstm_only: bool) -> None:
    """Raise TypeError, as Python does for a signature, for an option this class lacks."""
    names = {f.name for f in dataclasses.fields(ModuleOptions)}
    for name in options:
        if name not in names or (name in _LSTM_ONLY_OPTIONS and not allowed_lstm_only):
            raise TypeError(f"{cls_name}.__init__() got an unexpected keyword argument {name!r}")


def _check_probability(name: str, value) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 <= value < 1
        or math.isnan(value)
    ):
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
    return float(value)


class _FusedRNNBase(nn.RNNBase):
    """Shared constructor and forward of the fusedrnn modules. The constructor's positional
    arguments are torch.nn.LSTM's: RNNBase's, with ``mode`` taken from the class's ``_MODE``."""

    _MODE: str  # torch's RNNBase mode: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        **options: OptionValue,
    ) -> None:
        mode = self._MODE
        _check_option_names(type(self).__name__, options, mode == "LSTM")
        opts = ModuleOptions(**options)
        input_dropout, recurrent_dropout = opts.input_dropout, opts.recurrent_dropout
        zoneout_cell, zoneout_hidden = opts.zoneout_cell, opts.zoneout_hidden
        weight_drop = opts.weight_drop
        recurrent_batch_norm, max_steps = opts.recurrent_batch_norm, opts.max_steps
        layer_norm, residual = opts.layer_norm, opts.residual
        forget_bias, backend = opts.forget_bias, opts.backend
        # Validate fusedrnn's options before torch allocates anything.
        input_dropout = _check_probability("input_dropout", input_dropout)
        recurrent_dropout = _check_probability("recurrent_dropout", recurrent_dropout)
        zoneout_cell = _check_probability("zoneout_cell", zoneout_cell)
        zoneout_hidden = _check_probability("zoneout_hidden", zoneout_hidden)
        weight_drop = _check_probability("weight_drop", weight_drop)
        dispatch.check_backend_name(backend)
        if recurrent_batch_norm and layer_norm:
            raise ValueError("recurrent_batch_norm and layer_norm cannot both be on")
        if recurrent_batch_norm:
            if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
                raise ValueError(
                    "recurrent_batch_norm=True needs max_steps, a positive int: the number of "
                    f"time steps with their own statistics (got {max_steps!r})"
                )
        elif max_steps is not None:
            raise ValueError("max_steps is only used with recurrent_batch_norm=True")
        if not isinstance(residual, bool):
            raise TypeError(f"residual should be of type bool, got: {type(residual).__name__}")
        if not isinstance(forget_bias, numbers.Real) or isinstance(forget_bias, bool):
            raise TypeError(f"forget_bias should be a number, got: {type(forget_bias).__name__}")
        if not math.isfinite(forget_bias):
            raise ValueError(f"forget_bias must be a finite number, got {forget_bias!r}")
        if forget_bias != 0 and not bias:
            raise ValueError("forget_bias needs bias=True")

        self.input_dropout = input_dropout
        self.recurrent_dropout = recurrent_dropout
        self.zoneout_cell = zoneout_cell
        self.zoneout_hidden = zoneout_hidden
        self.weight_drop = weight_drop
        self.recurrent_batch_norm = bool(recurrent_batch_norm)
        self.max_steps = max_steps
        self.layer_norm = bool(layer_norm)
        self.residual = residual
        self.forget_bias = float(forget_bias)
        self.backend = backend
        # The backend(s) that ran the last eager forward ("torch", "host", ...; several
        # layer-directions on different backends are joined with "+"), None before the first.
        self.last_backend: str | None = None
        # RNNBase.__init__ registers torch's parameters and calls reset_parameters(), which
        # draws them from the RNG exactly as torch.nn does (same seed -> same weights).
        super().__init__(
            mode,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
            device,
            dtype,
        )
        self._register_norm_tensors(device, dtype)
        self._fusedrnn_tensors_registered = True
        self._reset_fusedrnn_parameters()

    # ---------------------------------------------------------------- parameters
    @property
    def norm(self) -> str:
        if self.recurrent_batch_norm:
            return "batch"
        return "layer" if self.layer_norm else "none"

    def _suffixes(self):
        for layer in range(self.num_layers):
            for direction in range(2 if self.bidirectional else 1):
                yield f"_l{layer}" + ("_reverse" if direction == 1 else "")

    def _norm_names(self, suffix: str) -> dict[str, str]:
        """fusedrnn's normalisation tensors of one layer-direction: LayerParams field -> name."""
        if self.norm == "none":
            return {}
        prefix = "bn" if self.norm == "batch" else "ln"
        names = {"norm_weight_ih": "weight_ih", "norm_weight_hh": "weight_hh"}
        if self.mode == "LSTM":
            names.update(norm_weight_c="weight_c", norm_bias_c="bias_c")
        if self.norm == "batch":
            for part in ("ih", "hh") + (("c",) if self.mode == "LSTM" else ()):
                names[f"running_mean_{part}"] = f"running_mean_{part}"
                names[f"running_var_{part}"] = f"running_var_{part}"
        return {field: f"{prefix}_{name}{suffix}" for field, name in names.items()}

    def _register_norm_tensors(self, device, dtype) -> None:
        kw = {"device": device, "dtype": dtype}
        gates = NUM_GATES[_MODE_TO_CELL[self.mode]] * self.hidden_size
        for suffix in self._suffixes():
            for field, name in self._norm_names(suffix).items():
                width = gates if field.endswith(("_ih", "_hh")) else self.hidden_size
                if field.startswith("running_"):
                    self.register_buffer(name, torch.empty(self.max_steps, width, **kw))
                else:
                    setattr(self, name, nn.Parameter(torch.empty(width, **kw)))

    def _reset_fusedrnn_parameters(self) -> None:
        """Deterministic init of fusedrnn's own tensors, and the forget-gate bias offset."""
        gamma = BN_GAMMA_INIT if self.norm == "batch" else 1.0
        with torch.no_grad():
            for suffix in self._suffixes():
                for field, name in self._norm_names(suffix).items():
                    tensor = getattr(self, name)
                    if field.startswith("norm_weight"):
                        tensor.fill_(gamma)
                    elif field.startswith("running_var"):
                        tensor.fill_(1.0)
                    else:  # norm_bias_c, running_mean_*
                        tensor.zero_()
        self._add_forget_bias()

    def _add_forget_bias(self) -> None:
        """``bias_ih[H:2H] += forget_bias`` in every layer and direction (an init offset)."""
        if self.forget_bias == 0:
            return
        h = self.hidden_size
        with torch.no_grad():
            for suffix in self._suffixes():
                getattr(self, "bias_ih" + suffix)[h : 2 * h] += self.forget_bias

    def reset_parameters(self) -> None:
        """torch.nn's uniform init of torch's weights (same RNG draws), then fusedrnn's."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for name in self._flat_weights_names:
            nn.init.uniform_(getattr(self, name), -stdv, stdv)
        # During RNNBase.__init__ fusedrnn's tensors do not exist yet; __init__ resets them.
        if getattr(self, "_fusedrnn_tensors_registered", False):
            self._reset_fusedrnn_parameters()

    def reset_running_stats(self) -> None:
        """Reset recurrent BN's running buffers (mean 0, variance 1)."""
        with torch.no_grad():
            for suffix in self._suffixes():
                for field, name in self._norm_names(suffix).items():
                    if field.startswith("running_mean"):
                        getattr(self, name).zero_()
                    elif field.startswith("running_var"):
                        getattr(self, name).fill_(1.0)

    def _layer_params(self) -> list[functional.LayerParams]:
        params = []
        for suffix in self._suffixes():
            tensors = {
                "w_ih": getattr(self, "weight_ih" + suffix),
                "w_hh": getattr(self, "weight_hh" + suffix),
            }
            if self.bias:
                tensors["b_ih"] = getattr(self, "bias_ih" + suffix)
                tensors["b_hh"] = getattr(self, "bias_hh" + suffix)
            if self.proj_size > 0:
                tensors["w_hr"] = getattr(self, "weight_hr" + suffix)
            for field, name in self._norm_names(suffix).items():
                tensors[field] = getattr(self, name)
            params.append(functional.LayerParams(**tensors))
        return params

    def options(self) -> functional.RNNOptions:
        """This module's static settings, as functional.rnn takes them."""
        return functional.RNNOptions(
            cell=_MODE_TO_CELL[self.mode],
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            bias=self.bias,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
            proj_size=self.proj_size,
            input_dropout=self.input_dropout,
            recurrent_dropout=self.recurrent_dropout,
            zoneout_cell=self.zoneout_cell,
            zoneout_hidden=self.zoneout_hidden,
            weight_drop=getattr(self, "weight_drop", 0.0),  # modules pickled before it existed
            norm=self.norm,
            residual=self.residual,
        )

    def extra_repr(self) -> str:
        s = super().extra_repr()
        defaults = [(f.name, f.default) for f in dataclasses.fields(ModuleOptions)]
        for name, default in [*defaults, ("last_backend", None)]:
            value = getattr(self, name, default)  # modules pickled before an option existed
            if value != default:
                s += f", {name}={value!r}"
        return s

    # ---------------------------------------------------------------- forward
    def _check_devices_and_dtypes(self, input: torch.Tensor, hx: tuple) -> None:
        weight = self._flat_weights[0]
        # (both on the CPU: the same device, known without building device objects)
        on_cpu = input.is_cpu
        if not (on_cpu and weight.is_cpu) and input.device != weight.device:
            raise RuntimeError(
                "Input and parameter tensors are not at the same device, found input tensor "
                f"at {input.device} and parameter tensor at {weight.device}"
            )
        for h in hx:
            if not (on_cpu and h.is_cpu) and h.device != input.device:
                raise RuntimeError(
                    "Input and hidden tensors are not at the same device, found input tensor "
                    f"at {input.device} and hidden tensor at {h.device}"
                )
            if h.dtype != input.dtype and not torch.is_autocast_enabled(input.device.type):
                raise RuntimeError(
                    f"hx dtype ({h.dtype}) does not match input dtype ({input.dtype}); "
                    f"convert hx with .to({input.dtype})"
                )

    def forward(self, input, hx=None):
        """Same signature, checks and results as the torch.nn module's forward."""
        self._update_flat_weights()
        is_lstm = self.mode == "LSTM"
        name = {"LSTM": "LSTM", "GRU": "GRU"}.get(self.mode, "RNN")
        num_directions = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        orig_input = input
        is_packed = isinstance(orig_input, PackedSequence)
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if is_packed:
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = int(batch_sizes[0])
            gate_width = (4 if is_lstm else 1) * self.hidden_size  # as torch.nn's errors say
            functional.check_packed_batch_sizes(batch_sizes, input.shape[0], gate_width)
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                what = "tensor " if name == "RNN" else ""  # torch's exact wording per class
                raise ValueError(
                    f"{name}: Expected input to be 2D or 3D, got {input.dim()}D {what}instead"
                )
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            max_batch_size = input.size(batch_dim)

        if hx is None:
            h_zeros = torch.zeros(
                self.num_layers * num_directions,
                max_batch_size,
                real_hidden_size,
                dtype=input.dtype,
                device=input.device,
            )
            if is_lstm:
                c_zeros = torch.zeros(
                    self.num_layers * num_directions,
                    max_batch_size,
                    self.hidden_size,
                    dtype=input.dtype,
                    device=input.device,
                )
                hx = (h_zeros, c_zeros)
            else:
                hx = h_zeros
        else:
            if is_lstm:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError("LSTM hx must be a tuple (h_0, c_0) of two tensors")
                hx = tuple(hx)
                dims = (hx[0].dim(), hx[1].dim())
            else:
                if not isinstance(hx, torch.Tensor):
                    raise TypeError(f"{name} hx must be a tensor, got {type(hx).__name__}")
                dims = (hx.dim(),)
            if not is_packed:
                expected = 3 if is_batched else 2
                if any(d != expected for d in dims):
                    kind = "batched 3-D" if is_batched else "unbatched 2-D"
                    if is_lstm:
                        raise RuntimeError(
                            f"For {kind} input, hx and cx should also be {expected}-D but got "
                            f"({dims[0]}-D, {dims[1]}-D) tensors"
                        )
                    raise RuntimeError(
                        f"For {kind} input, hx should also be {expected}-D but got "
                        f"{dims[0]}-D tensor"
                    )
                if not is_batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if is_lstm else hx.unsqueeze(1)
            hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(input, hx, batch_sizes)
        if not is_packed and input.size(0 if not self.batch_first else 1) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        self._check_devices_and_dtypes(input, hx if is_lstm else (hx,))

        # Autocast: as torch.nn.LSTM under CUDA autocast, the whole layer runs in the autocast
        # dtype (outputs in that dtype; parameter gradients flow back in their own dtype).
        # torch's CPU autocast is not consistent across its RNN classes, so fusedrnn applies
        # the CUDA rule on every device.
        device_type = input.device.type
        cast_dtype = None
        if torch.is_autocast_enabled(device_type) and input.is_floating_point():
            cast_dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False) if cast_dtype else _no_context():
            output, hidden = self._run_layers(input, hx, batch_sizes, cast_dtype)

        if is_packed:
            output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return output, self.permute_hidden(hidden, unsorted_indices)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if is_lstm else hidden.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)

    def _run_layers(self, input, hx, batch_sizes, cast_dtype):
        """The layer stack on parsed arguments (time-major or batch_first, or packed data)."""
        is_lstm = self.mode == "LSTM"
        is_packed = batch_sizes is not None
        flat_weights = self._flat_weights
        params = self._layer_params()
        if cast_dtype is not None:

            def cast(t):
                return t.to(cast_dtype) if t is not None else None

            input = cast(input)
            hx = tuple(cast(h) for h in hx) if is_lstm else cast(hx)
            flat_weights = [cast(w) for w in flat_weights]
            params = [
                functional.LayerParams(
                    **{
                        f.name: getattr(p, f.name)
                        if f.name.startswith("running_")
                        else cast(getattr(p, f.name))
                        for f in dataclasses.fields(p)
                    }
                )
                for p in params
            ]
        options = self.options()
        chosen = dispatch.layer_backend(
            self.backend, input.device, options.needs_fusedrnn(self.training)
        )
        if chosen == dispatch.TORCH:
            result = functional.torch_rnn(
                options,
                input,
                batch_sizes,
                hx,
                flat_weights,
                self.training,
                self.batch_first,
            )
            output, hidden = result[0], (tuple(result[1:]) if is_lstm else result[1])
            backends_ran = [dispatch.TORCH]
        else:
            h0, c0 = hx if is_lstm else (hx, None)
            if is_packed:
                x, lengths, index = functional.packed_to_padded(input, batch_sizes)
            else:
                x = input.transpose(0, 1) if self.batch_first else input
                lengths = index = None
            backends_ran = []
            output, h_n, c_n = functional.rnn(
                x,
                h0,
                c0,
                params,
                options,
                lengths=lengths,
                training=self.training,
                backend=chosen,
                backends_ran=backends_ran,
            )
            if is_packed:
                output = functional.padded_to_packed(output, index)
            elif self.batch_first:
                output = output.transpose(0, 1)
            hidden = (h_n, c_n) if is_lstm else h_n
        if not torch.compiler.is_compiling():
            # a plain attribute (no parameter, buffer or module): set it without the
            # nn.Module / RNNBase __setattr__ checks (microseconds of a B=1 call)
            self.__dict__["last_backend"] = "+".join(dict.fromkeys(backends_ran))
        return output, hidden


class LSTM(_FusedRNNBase):
    r"""Drop-in ``torch.nn.LSTM`` with fused backends and fusedrnn's regularisers.

    Positional arguments and defaults are torch.nn.LSTM's. Keyword-only extras, the fields of
    :class:`ModuleOptions` (all off by default): ``input_dropout``, ``recurrent_dropout`` (variational, Gal & Ghahramani 2016),
    ``zoneout_cell``, ``zoneout_hidden`` (Krueger et al. 2016), ``weight_drop`` (DropConnect on
    ``W_hh``, Merity et al. 2017), ``recurrent_batch_norm`` with
    ``max_steps`` (Cooijmans et al. 2016), ``layer_norm`` (Ba et al. 2016), ``residual``,
    ``forget_bias`` and ``backend``. See the README for each equation.
    """

    _MODE = "LSTM"

    def get_expected_cell_size(self, input, batch_sizes):
        return nn.LSTM.get_expected_cell_size(self, input, batch_sizes)

    def check_forward_args(self, input, hidden, batch_sizes):
        return nn.LSTM.check_forward_args(self, input, hidden, batch_sizes)

    def permute_hidden(self, hx, permutation):
        return nn.LSTM.permute_hidden(self, hx, permutation)


class _UnprojectedRNNBase(_FusedRNNBase):
    """The constructor of GRU and RNN: torch.nn.GRU's positional arguments, and a
    keyword-only ``proj_size`` that is rejected as torch.nn rejects it."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        proj_size: int | None = None,
        **options: OptionValue,
    ) -> None:
        if proj_size is not None:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            0,
            device,
            dtype,
            **options,
        )


class GRU(_UnprojectedRNNBase):
    r"""Drop-in ``torch.nn.GRU``; keyword-only extras as :class:`LSTM` except the LSTM-only
    ``zoneout_cell``, ``forget_bias`` and ``proj_size``."""

    _MODE = "GRU"


class RNN(_UnprojectedRNNBase):
    r"""Drop-in ``torch.nn.RNN`` (``nonlinearity`` 'tanh' or 'relu'); keyword-only extras as
    :class:`GRU`."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        proj_size: int | None = None,
        **options: OptionValue,
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'."
            )
        self.nonlinearity = nonlinearity
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device,
            dtype,
            proj_size=proj_size,
            **options,
        )

    @property
    def _MODE(self) -> str:
        return "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"


_CONVERTIBLE = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN}


def _converted(module: nn.Module, options: dict) -> nn.Module:
    cls = _CONVERTIBLE[type(module)]
    weight = module._flat_weights[0]
    args = {
        "input_size": module.input_size,
        "hidden_size": module.hidden_size,
        "num_layers": module.num_layers,
        "bias": module.bias,
        "batch_first": module.batch_first,
        "dropout": module.dropout,
        "bidirectional": module.bidirectional,
        "device": weight.device,
        "dtype": weight.dtype,
    }
    if cls is LSTM:
        args["proj_size"] = module.proj_size
    if cls is RNN:
        args["nonlinearity"] = module.nonlinearity
    new = cls(**args, **options)
    # strict=False only because fusedrnn's norm tensors (if asked for) are new; every torch
    # weight must load, which is checked below.
    missing, unexpected = new.load_state_dict(module.state_dict(), strict=False)
    if unexpected or any(name in module._flat_weights_names for name in missing):
        raise RuntimeError(
            f"convert: weights did not load (missing {missing}, unexpected {unexpected})"
        )
    # The constructor offset the forget gate of its fresh bias, which the load replaced:
    # offset the loaded one, as forget_bias promises.
    new._add_forget_bias()
    new.train(module.training)
    return new


def convert(model: nn.Module, **options) -> nn.Module:
    """Replace every ``torch.nn.LSTM``/``GRU``/``RNN`` inside ``model`` in place by its
    fusedrnn counterpart with the same configuration and weights.

    ``options`` are fusedrnn's keyword-only options (for example ``backend="host"`` or
    ``recurrent_dropout=0.25``), applied to every converted layer. Returns ``model`` (or the
    replacement when ``model`` itself is a torch RNN module).
    """
    if type(model) in _CONVERTIBLE:
        return _converted(model, options)
    for name, child in list(model.named_children()):
        if type(child) in _CONVERTIBLE:
            setattr(model, name, _converted(child, options))
        else:
            convert(child, **options)
    return model
