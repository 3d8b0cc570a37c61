"""Normalisation of the input projection and recurrent BN's running statistics."""

from __future__ import annotations

import torch

from .backends.base import BN_MOMENTUM, NORM_EPS
from .options import LayerParams


def _step_stat_index(steps: int, num_buffers: int, device) -> torch.Tensor:
    """Buffer row of each time step: t, or the last row for t >= max_steps."""
    return torch.arange(steps, device=device).clamp(max=num_buffers - 1)


def _normalize_projection(
    raw: torch.Tensor, params: LayerParams, norm: str, active: torch.Tensor, training: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """BN (per step, over active rows) or LN (per row) of ``raw`` [T, B, N], times gamma.

    Returns (normalised, batch mean [T, N], biased batch variance [T, N]); the statistics
    only for BN in training.
    """
    if norm == "layer":
        mean = raw.mean(dim=2, keepdim=True)
        var = raw.var(dim=2, unbiased=False, keepdim=True)
        return (raw - mean) * torch.rsqrt(var + NORM_EPS) * params.norm_weight_ih, None, None
    if training:
        weights = active.to(raw.dtype)[:, :, None]  # [T, B, 1]
        count = weights.sum(dim=1).clamp(min=1.0)  # [T, 1]
        mean = (raw * weights).sum(dim=1) / count  # [T, N]
        var = (((raw - mean[:, None]) * weights) ** 2).sum(dim=1) / count
        normed = (raw - mean[:, None]) * torch.rsqrt(var[:, None] + NORM_EPS)
        return normed * params.norm_weight_ih, mean.detach(), var.detach()
    rows = _step_stat_index(raw.shape[0], params.running_mean_ih.shape[0], raw.device)
    mean = params.running_mean_ih[rows][:, None].to(raw.dtype)
    var = params.running_var_ih[rows][:, None].to(raw.dtype)
    return (raw - mean) * torch.rsqrt(var + NORM_EPS) * params.norm_weight_ih, None, None


@torch.no_grad()
def _update_running(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    batch_mean: torch.Tensor,
    batch_var: torch.Tensor,
    counts: torch.Tensor,
) -> None:
    """Per-step running update, as torch.nn.BatchNorm1d does it for each step's statistics.

    Steps t < max_steps update their own row with momentum ``BN_MOMENTUM`` and the unbiased
    variance; later steps (which reuse the last row) and steps with fewer than two active
    rows (no variance estimate) leave the buffers unchanged.
    """
    used = min(batch_mean.shape[0], running_mean.shape[0])
    n = counts[:used].to(batch_var.dtype)[:, None]
    valid = n >= 2
    unbiased = batch_var[:used] * n / (n - 1).clamp(min=1.0)
    new_mean = torch.lerp(
        running_mean[:used], batch_mean[:used].to(running_mean.dtype), BN_MOMENTUM
    )
    new_var = torch.lerp(running_var[:used], unbiased.to(running_var.dtype), BN_MOMENTUM)
    running_mean[:used] = torch.where(valid, new_mean, running_mean[:used])
    running_var[:used] = torch.where(valid, new_var, running_var[:used])
