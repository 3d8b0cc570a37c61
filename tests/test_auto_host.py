"""``backend="auto"`` on the CPU never falls back to the reference loop for a call the host
backend can run (issue 12): the whole option space, cells x norms x regularisers x proj_size
x dtypes x packed/padded x train/eval, runs on ``host`` when it needs a fusedrnn option (and
on torch.nn's own kernels, "torch", when it needs none), with no fallback warning. A failure
lists the configurations that did not, each with the fallback warning naming host's reason.
Layers are 2 x bidirectional, so both directions and a second layer's input are covered."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

HOST_REASON = fusedrnn.available_backends().get("host")
pytestmark = pytest.mark.skipif(HOST_REASON is not None, reason=str(HOST_REASON))

CELLS = {
    "lstm": (fusedrnn.LSTM, {}),
    "gru": (fusedrnn.GRU, {}),
    "rnn_tanh": (fusedrnn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (fusedrnn.RNN, {"nonlinearity": "relu"}),
}
NORMS = {
    "none": {},
    "batch": {"recurrent_batch_norm": True, "max_steps": 3},
    "layer": {"layer_norm": True},
}
REGULARIZERS = {
    "none": {},
    "input_dropout": {"input_dropout": 0.2},
    "recurrent_dropout": {"recurrent_dropout": 0.3},
    "zoneout": {"zoneout_hidden": 0.2},
    "all": {
        "input_dropout": 0.1,
        "recurrent_dropout": 0.2,
        "zoneout_hidden": 0.1,
        "dropout": 0.2,
        "residual": True,
    },
}
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _configurations(dtype: torch.dtype):
    for cell, norm, reg, proj, packed, training in itertools.product(
        CELLS, NORMS, REGULARIZERS, (0, 2), (False, True), (True, False)
    ):
        if proj and cell != "lstm":
            continue
        yield cell, norm, reg, proj, dtype, packed, training


def _run(cell, norm, reg, proj, dtype, packed, training):
    cls, cell_kwargs = CELLS[cell]
    options = {**cell_kwargs, **NORMS[norm], **REGULARIZERS[reg]}
    if cell == "lstm" and "zoneout_hidden" in options:
        options["zoneout_cell"] = 0.1
    if proj:
        options["proj_size"] = proj
    module = cls(3, 5, num_layers=2, bidirectional=True, **options).to(dtype)
    module.train(training)
    x = torch.randn(4, 3, 3, dtype=dtype, requires_grad=True)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([4, 2, 1]), enforce_sorted=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        module(x)
    fallbacks = [str(w.message) for w in record if "'reference' loop" in str(w.message)]
    return module, fallbacks


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_auto_on_cpu_runs_host_for_every_configuration(dtype, monkeypatch):
    monkeypatch.setattr(fusedrnn.dispatch, "_warned_fallback", set())
    torch.manual_seed(0)
    wrong = []
    count = 0
    for config in _configurations(dtype):
        count += 1
        module, fallbacks = _run(*config)
        _, norm, reg, _, _, _, training = config
        # torch.nn computes the call when no fusedrnn option acts: none set, or only dropouts
        # in evaluation (identities there).
        plain = norm == "none" and (reg == "none" or (not training and "dropout" in reg))
        expected = "torch" if plain else "host"
        if module.last_backend != expected or fallbacks:
            wrong.append((config, module.last_backend, fallbacks))
    assert count == (4 * 3 * 5) * 2 * 2 + (3 * 5) * 2 * 2  # every combination ran
    assert not wrong, f"{len(wrong)} configurations did not run where expected: {wrong[:5]}"
