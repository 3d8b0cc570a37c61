"""torch's own RNN kernels for a whole layer stack (the ``"torch"`` backend)."""

from __future__ import annotations

import torch
from torch import _VF

from .options import RNNOptions

_TORCH_FUNCTIONS = {
    "lstm": _VF.lstm,
    "gru": _VF.gru,
    "rnn_tanh": _VF.rnn_tanh,
    "rnn_relu": _VF.rnn_relu,
}


# torch.compile: Dynamo does not trace torch.nn's RNN modules (they run eagerly between
# graphs), and tracing their _VF functions is not safe: on the CPU Inductor's lowering of
# aten.mkldnn_rnn_layer fails at run time ("expected Tensor() for op"; torch.nn.LSTM fails
# the same way with torch._dynamo.config.allow_rnn = True). So torch's path runs eagerly
# under compile too, exactly as torch.nn's modules do: the same kernels and results, at the
# cost of a graph break (fusedrnn's own backends still compile without one).
@torch.compiler.disable
def torch_rnn(
    options: RNNOptions,
    input: torch.Tensor,
    batch_sizes: torch.Tensor | None,
    hx,
    flat_weights: list[torch.Tensor],
    training: bool,
    batch_first: bool,
):
    """torch.nn's own kernels for the whole stack, called exactly as torch.nn does."""
    function = _TORCH_FUNCTIONS[options.cell]
    stack = (options.bias, options.num_layers, options.dropout, training, options.bidirectional)
    if batch_sizes is None:  # torch's padded signature: batch_first last
        return function(input, hx, flat_weights, *stack, batch_first)
    return function(input, batch_sizes, hx, flat_weights, *stack)  # the packed signature
