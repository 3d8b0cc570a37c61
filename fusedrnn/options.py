"""Static settings of a layer stack and the tensors of one layer-direction (docs/design.md §2)."""

from __future__ import annotations

import dataclasses

import torch

from .backends.base import RecurrenceConfig


@dataclasses.dataclass(frozen=True)
class RNNOptions:
    """Static settings of a layer stack (what a module's constructor fixes)."""

    cell: str  # "lstm" | "gru" | "rnn_tanh" | "rnn_relu"
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    dropout: float = 0.0  # torch's between-layer dropout (not variational)
    bidirectional: bool = False
    proj_size: int = 0
    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    zoneout_cell: float = 0.0
    zoneout_hidden: float = 0.0
    weight_drop: float = 0.0  # DropConnect on W_hh (training)
    norm: str = "none"  # "none" | "batch" | "layer"
    residual: bool = False

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def recurrence_config(self) -> RecurrenceConfig:
        return RecurrenceConfig(
            cell=self.cell,
            hidden_size=self.hidden_size,
            proj_size=self.proj_size,
            recurrent_dropout=self.recurrent_dropout,
            zoneout_cell=self.zoneout_cell,
            zoneout_hidden=self.zoneout_hidden,
            norm=self.norm,
            weight_drop=self.weight_drop,
        )

    def needs_fusedrnn(self, training: bool) -> bool:
        """Whether this call computes something torch.nn's kernels cannot."""
        random = training and (
            self.input_dropout > 0 or self.recurrent_dropout > 0 or self.weight_drop > 0
        )
        zoneout = self.zoneout_cell > 0 or self.zoneout_hidden > 0  # eval: the expectation
        return random or zoneout or self.norm != "none" or self.residual

    def draws_masks(self, training: bool) -> bool:
        """Whether a call in this mode draws Philox masks (and so a seed); the same question
        as ``RecurrenceConfig.draws_masks``, for the whole stack (input dropout too)."""
        if not training:
            return False
        return (
            self.input_dropout > 0
            or self.recurrent_dropout > 0
            or self.zoneout_cell > 0
            or self.zoneout_hidden > 0
            or self.weight_drop > 0
        )


@dataclasses.dataclass
class LayerParams:
    """The tensors of one layer and direction (torch's names in the comments)."""

    w_ih: torch.Tensor  # [G*H, I]  weight_ih_l{k}
    w_hh: torch.Tensor  # [G*H, P]  weight_hh_l{k}
    b_ih: torch.Tensor | None = None  # [G*H]  bias_ih_l{k}
    b_hh: torch.Tensor | None = None  # [G*H]  bias_hh_l{k}
    w_hr: torch.Tensor | None = None  # [P, H]  weight_hr_l{k}
    # recurrent BN / layer norm parameters (fusedrnn's own names in modules.py)
    norm_weight_ih: torch.Tensor | None = None  # [G*H]
    norm_weight_hh: torch.Tensor | None = None  # [G*H]
    norm_weight_c: torch.Tensor | None = None  # [H] (lstm)
    norm_bias_c: torch.Tensor | None = None  # [H] (lstm)
    # recurrent BN running statistics, one row per time step (S = max_steps)
    running_mean_ih: torch.Tensor | None = None  # [S, G*H]
    running_var_ih: torch.Tensor | None = None  # [S, G*H]
    running_mean_hh: torch.Tensor | None = None  # [S, G*H]
    running_var_hh: torch.Tensor | None = None  # [S, G*H]
    running_mean_c: torch.Tensor | None = None  # [S, H]
    running_var_c: torch.Tensor | None = None  # [S, H]
