"""fusedrnn: fused persistent LSTM/GRU/RNN layers for PyTorch.

``fusedrnn.LSTM``, ``GRU`` and ``RNN`` are drop-in replacements for their torch.nn
counterparts that add variational dropout, zoneout, recurrent batch norm, layer norm and
residual connections, computed by a chosen backend (see :func:`available_backends`).
"""

import importlib.abc
import importlib.util
import sys
from pathlib import Path


class _SourceCheckoutKernels(importlib.abc.MetaPathFinder):
    """Maps ``fusedrnn.kernels`` to ``kernels/`` beside this package in a source checkout.

    An installed wheel has ``fusedrnn/kernels``; a checkout (``PYTHONPATH=.``, a git worktree,
    an editable install) has the kernels one level up. This finder is consulted first so that
    a checkout never picks up the kernels of a different checkout installed elsewhere.
    """

    _source = Path(__file__).resolve().parent.parent / "kernels"

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "fusedrnn.kernels" or not (self._source / "__init__.py").exists():
            return None
        return importlib.util.spec_from_file_location(
            fullname,
            self._source / "__init__.py",
            submodule_search_locations=[str(self._source)],
        )


if not (Path(__file__).resolve().parent / "kernels").exists():
    sys.meta_path.insert(0, _SourceCheckoutKernels())

from .dispatch import available_backends  # noqa: E402
from .modules import GRU, LSTM, RNN, convert  # noqa: E402

__version__ = "0.1.0"

__all__ = ["GRU", "LSTM", "RNN", "__version__", "available_backends", "convert"]
