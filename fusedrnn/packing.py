"""Packed sequences to padded time-major tensors and back, with torch.nn's checks."""

from __future__ import annotations

import torch


def check_packed_batch_sizes(batch_sizes: torch.Tensor, num_rows: int, gate_width: int) -> None:
    """Raise, as torch.nn's packed RNN does, when ``batch_sizes`` do not fit ``num_rows``
    packed rows: a negative size, sizes summing past the data, or a size that grows.

    torch.nn finds these while it walks the steps (slicing the data, then adding the input
    and hidden projections of the step), so the errors and their wording are those of the
    failing op: ``Tensor.narrow``'s, or a broadcast's with the step's hidden rows as ``a``
    (``gate_width`` columns: 4H for the LSTM cell, H for GRU/RNN). A growth from 0 to 1 row,
    which torch.nn's broadcast lets through with a wrong result, raises the same error.
    Sizes summing to fewer than ``num_rows`` raise too: torch.nn runs them, but its reverse
    direction then reads the rows past the sum (a silently wrong result).
    """
    offset = 0
    previous = None
    for size in batch_sizes.tolist():
        if size < 0:
            raise RuntimeError("narrow(): length must be non-negative.")
        if offset + size > num_rows:
            raise RuntimeError(
                f"start ({offset}) + length ({size}) exceeds dimension size ({num_rows})."
            )
        offset += size
        if previous is not None and size > previous:
            if previous == 1:
                raise RuntimeError(
                    f"output with shape [1, {gate_width}] doesn't match the broadcast shape "
                    f"[{size}, {gate_width}]"
                )
            raise RuntimeError(
                f"The size of tensor a ({previous}) must match the size of tensor b ({size}) "
                "at non-singleton dimension 0"
            )
        previous = size
    if offset != num_rows:
        raise RuntimeError(
            f"PackedSequence batch_sizes sum to {offset}, but its data has {num_rows} rows"
        )


def packed_to_padded(
    data: torch.Tensor, batch_sizes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PackedSequence data [N, F] -> (padded [T, B, F], lengths [B], index [N]).

    ``index`` holds the position of each packed row in the flattened [T*B] padded tensor; it
    is what :func:`padded_to_packed` needs to go back. Both directions are differentiable.
    ``batch_sizes`` must fit ``data`` (:func:`check_packed_batch_sizes`).
    """
    steps = batch_sizes.shape[0]
    batch = int(batch_sizes[0]) if steps > 0 else 0
    sizes = batch_sizes.to(data.device)
    present = torch.arange(batch, device=data.device)[None, :] < sizes[:, None]  # [T, B]
    index = present.flatten().nonzero().squeeze(1)
    padded = data.new_zeros(steps * batch, data.shape[1]).index_copy(0, index, data)
    return padded.view(steps, batch, data.shape[1]), present.sum(dim=0), index


def padded_to_packed(padded: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`packed_to_padded` for [T, B, F] -> [N, F]."""
    return padded.reshape(-1, padded.shape[2]).index_select(0, index)
