"""fusedrnn: fused persistent LSTM/GRU/RNN layers for PyTorch.

``fusedrnn.LSTM``, ``GRU`` and ``RNN`` are drop-in replacements for their torch.nn
counterparts that add variational dropout, zoneout, recurrent batch norm, layer norm and
residual connections, computed by a chosen backend (see :func:`available_backends`).
"""

from .dispatch import available_backends
from .modules import GRU, LSTM, RNN, convert

__version__ = "0.1.0"

__all__ = ["GRU", "LSTM", "RNN", "__version__", "available_backends", "convert"]
