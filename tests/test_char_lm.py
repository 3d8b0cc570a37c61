"""examples/char_lm.py: it runs, it learns, and every backend trains the same model.

Each backend gets the same ``--seed``: the same weights, the same batches and -- because a
mask element is a pure function of the per-call Philox seed drawn from torch's default
generator -- the same dropout and zoneout masks. So the loss curves of two backends differ
only by floating-point rounding:

* float32: the backends accumulate the recurrent products and gate sums in float32 in a
  different order (torch's GEMMs versus the host loop / Triton tiles), a relative difference
  of a few float32 ulps (2**-24 ~ 6e-8) in the logits at one step. Adam's update is
  invariant to gradient scale, so that perturbation enters each step's update with the same
  relative size and accumulates roughly linearly over a few tens of steps. A relative
  tolerance of 1e-5 per step (~170 ulps) over 30 steps covers it while still catching a
  wrong mask, gate or gradient, which moves the loss by >= 1e-3 within a step or two.
* float64: the same argument with 2**-53 gives 1e-12 relative.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys

import pytest
import torch
from helpers import recurrence_backends_on_cpu

import fusedrnn

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "char_lm.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("fusedrnn_example_char_lm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


char_lm = _load_example()

TINY = dict(steps=30, hidden=24, embed=16, seq_len=12, batch=8, lr=1e-2, sample_len=12)
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: determinism of thread splits is not in question
    yield
    torch.set_num_threads(threads)


def _train(backend: str, dtype: str = "float32", **overrides):
    config = {**TINY, **overrides}
    return char_lm.train(char_lm.Config(backend=backend, dtype=dtype, verbose=False, **config))


@pytest.fixture(scope="module")
def reference_run(one_thread):
    return _train("reference")


def test_main_runs_prints_and_learns(capsys, one_thread):
    result = char_lm.main(
        [
            "--backend",
            "reference",
            "--steps",
            "15",
            "--epochs",
            "2",
            "--seed",
            "3",
            "--hidden",
            "24",
            "--seq-len",
            "12",
            "--batch",
            "8",
            "--lr",
            "1e-2",
            "--device",
            "cpu",
            "--sample-len",
            "40",
            "--log-every",
            "5",
        ]
    )
    printed = capsys.readouterr().out
    # progress within each epoch: step, the mean loss since the last line, tokens/s
    progress = [line for line in printed.splitlines() if line.startswith("  epoch ")]
    assert len(progress) == 6  # steps 5, 10, 15 of each of 2 epochs
    assert progress[1].startswith("  epoch 1/2 step 10/15: loss ")
    assert progress[5].startswith("  epoch 2/2 step 15/15: loss ")
    for index, line in enumerate(progress):
        shown = float(line.split("loss ")[1].split()[0])
        window = result["losses"][5 * index : 5 * index + 5]
        assert math.isclose(shown, sum(window) / 5, abs_tol=1e-4), (line, window)
        assert float(line.split(", ")[1].split()[0].replace(",", "")) > 0  # tokens/s
    assert "epoch 1/2: train loss" in printed and "epoch 2/2: train loss" in printed
    assert "ms/step" in printed and "sample:\ndef " in printed
    assert len(result["losses"]) == 30 and len(result["epoch_times"]) == 2
    assert len(result["sample"]) == 40 and result["sample"] in printed
    assert all(math.isfinite(v) for v in result["val_losses"])


def test_help_lists_every_flag_with_its_default():
    parser = char_lm.build_parser()
    text = " ".join(parser.format_help().split())  # undo the line wrapping
    assert "1 epoch of 100 steps" in text
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{action.option_strings[0]} has no help"
        assert f"(default: {action.default})" in text, action.option_strings[0]
    # the parser's defaults are the Config's: --help tells the truth
    assert char_lm.parse_args([]) == char_lm.Config()
    assert char_lm.parse_args(["--quiet"]).verbose is False


def test_loss_decreases(reference_run):
    losses = reference_run["losses"]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    uniform = math.log(reference_run["vocab_size"])
    print(f"\nloss: first 5 steps {first:.3f}, last 5 steps {last:.3f}, uniform {uniform:.3f}")
    assert last < 0.8 * first
    assert last < uniform  # better than guessing


def test_same_seed_same_curve(reference_run, one_thread):
    """The run is a function of the seed (a change of seed changes it)."""
    again = _train("reference", steps=5)
    assert again["losses"] == reference_run["losses"][:5]
    other = _train("reference", steps=5, seed=1)
    assert other["losses"] != reference_run["losses"][:5]


def _relative_errors(a, b):
    return [abs(x - y) / abs(y) for x, y in zip(a, b)]


@pytest.mark.parametrize("backend", [b for b in recurrence_backends_on_cpu() if b != "reference"])
def test_backend_loss_curve_equals_reference(backend, reference_run, one_thread):
    ours = _train(backend)
    errors = _relative_errors(ours["losses"], reference_run["losses"])
    print(f"\n{backend}: worst relative loss difference over 30 steps {max(errors):.2e}")
    assert max(errors) <= TOLERANCE["float32"]


@pytest.mark.parametrize("backend", [b for b in recurrence_backends_on_cpu() if b != "reference"])
def test_backend_loss_curve_equals_reference_float64(backend, one_thread):
    want = _train("reference", "float64", steps=10, sample_len=0)
    ours = _train(backend, "float64", steps=10, sample_len=0)
    errors = _relative_errors(ours["losses"], want["losses"])
    assert max(errors) <= TOLERANCE["float64"], max(errors)


@pytest.mark.interpreter
@pytest.mark.skipif(
    fusedrnn.available_backends().get("triton") is not None or torch.cuda.is_available(),
    reason="triton on the CPU needs TRITON_INTERPRET=1",
)
def test_triton_interpreter_loss_curve_equals_reference(reference_run, one_thread):
    """Few steps: the interpreter runs the kernels one program instance at a time."""
    ours = _train("triton", steps=4, sample_len=0)
    errors = _relative_errors(ours["losses"], reference_run["losses"][:4])
    print(f"\ntriton: worst relative loss difference over 4 steps {max(errors):.2e}")
    assert max(errors) <= TOLERANCE["float32"]
