"""The benchmark workloads, defined once (issue 5).

Full workloads (GPU sizes):

=====  ====  ====  =====  ====  ===  ======================================================
name   cell  B     I=H    T     L    notes
=====  ====  ====  =====  ====  ===  ======================================================
W1     lstm  16    512    512   1
W2     lstm  64    1024   256   1
W3     lstm  256   1024   128   1
W4     lstm  16    512    512   1    recurrent_dropout 0.25, zoneout_cell/hidden 0.1
W5     lstm  64    1024   256   1    PackedSequence, lengths uniform in [T/4, T] (seeded)
W6a    gru   16    512    512   1    W6 at W1's size
W6b    gru   64    1024   256   1    W6 at W2's size
W7     lstm  32    512    256   2    bidirectional
W8     lstm  16    512    512   1    W1 with weight_drop 0.5 (its cost: W8 / W1, goal <= 1.05)
C1     lstm  32    256    128   1    recurrent_dropout 0.25, zoneout_cell/hidden 0.1 (host)
C2     lstm  32    256    128   1    C1 without regularizers (host vs torch.nn on a CPU)
C3     lstm  32    256    128   1    C2 with weight_drop 0.5 (weight drop's cost on a CPU: C3 / C2)
C4     gru   32    256    128   1    C2 as a GRU
C5     lstm  64    512    64    1    the host speed goal's second shape (issue 12)
C6     gru   64    512    64    1    C5 as a GRU
C7     lstm  1     128    256   1    B=1 latency (issue 12; bench/latency.py times it per call)
C8     gru   1     128    256   1    C7 as a GRU
=====  ====  ====  =====  ====  ===  ======================================================

C1 and C2 carry the CPU targets of the host backend (issue 4): on C1, host at least 5x faster
than the reference loop; on C2, within 2x of torch.nn — each measured side by side in one run
(``python -m bench --workloads C1,C2 --dtypes float32 --modes train --device cpu``).

C2 and C4-C8 carry issue 12's host speed goals against torch.nn (plain layers, training and
inference, host <= 1.0x torch.nn; C1 against torch.nn's plain C2 <= 1.15x):
``python -m bench --workloads C1,C2,C4,C5,C6,C7,C8 --modes forward,train --device cpu
--providers torch,host``.

W8 and C3 measure what weight drop (DropConnect on W_hh, issue 15) costs: the same layer as
W1 / C2 with ``weight_drop=0.5``, so a provider's W8 / W1 (C3 / C2) median ratio is the cost,
goal at most 1.05 (``python -m bench --workloads W1,W8`` or ``C2,C3``).

Quick workloads (``--quick``, CPU smoke test) keep the names and the features (regularizers,
packing, GRU, 2-layer bidirectional) at tiny sizes. Sweeps (``--sweep``) vary B or H of an
LSTM around W1/W2 for the speed-up-versus-size plots.
"""

from __future__ import annotations

import dataclasses
import random

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODES: tuple[str, ...] = ("forward", "train")

# Seed of W5's lengths (and of every workload's weights and inputs).
SEED = 1234

NUM_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark configuration (sizes, cell, options); dtype and mode are separate axes."""

    name: str
    cell: str  # "lstm" | "gru"
    batch: int  # B
    input_size: int  # I
    hidden_size: int  # H
    steps: int  # T
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False
    recurrent_dropout: float = 0.0
    zoneout_cell: float = 0.0
    zoneout_hidden: float = 0.0
    weight_drop: float = 0.0
    suite: str = "workloads"  # "workloads" | "sweep-batch" | "sweep-hidden"

    @property
    def num_gates(self) -> int:
        return NUM_GATES[self.cell]

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def regularizer_options(self) -> dict[str, float]:
        """fusedrnn-only keyword options that are on (empty: a plain torch.nn layer)."""
        options = {
            "recurrent_dropout": self.recurrent_dropout,
            "zoneout_cell": self.zoneout_cell,
            "zoneout_hidden": self.zoneout_hidden,
            "weight_drop": self.weight_drop,
        }
        return {name: value for name, value in options.items() if value > 0}

    @property
    def regularizers(self) -> str:
        """The CSV's ``regularizers`` cell: ``name=value;...`` or empty."""
        return ";".join(f"{k}={v:g}" for k, v in self.regularizer_options().items())

    def lengths(self) -> list[int] | None:
        """Per-row lengths of a packed workload, uniform in [T/4, T], seeded; else None."""
        if not self.packed:
            return None
        rng = random.Random(f"{SEED}-{self.name}-{self.batch}-{self.steps}")
        low = max(1, self.steps // 4)
        lengths = [rng.randint(low, self.steps) for _ in range(self.batch)]
        lengths[0] = self.steps  # the padded length is T
        return lengths

    @property
    def tokens(self) -> int:
        """Real (unpadded) tokens per call: B*T, or the sum of lengths when packed."""
        lengths = self.lengths()
        return self.batch * self.steps if lengths is None else sum(lengths)

    def csv_fields(self) -> dict[str, object]:
        return {
            "suite": self.suite,
            "workload": self.name,
            "cell": self.cell,
            "B": self.batch,
            "I": self.input_size,
            "H": self.hidden_size,
            "T": self.steps,
            "layers": self.layers,
            "bidirectional": self.bidirectional,
            "packed": self.packed,
            "regularizers": self.regularizers,
        }


def _family(sizes: dict[str, tuple[int, int, int]]) -> dict[str, Workload]:
    """W1..W7 from the (B, I=H, T) of W1, W2, W3 and W7."""
    b1, h1, t1 = sizes["W1"]
    b2, h2, t2 = sizes["W2"]
    b3, h3, t3 = sizes["W3"]
    b7, h7, t7 = sizes["W7"]
    w1 = Workload("W1", "lstm", b1, h1, h1, t1)
    w2 = Workload("W2", "lstm", b2, h2, h2, t2)
    return {
        "W1": w1,
        "W2": w2,
        "W3": Workload("W3", "lstm", b3, h3, h3, t3),
        "W4": dataclasses.replace(
            w1, name="W4", recurrent_dropout=0.25, zoneout_cell=0.1, zoneout_hidden=0.1
        ),
        "W5": dataclasses.replace(w2, name="W5", packed=True),
        "W6a": dataclasses.replace(w1, name="W6a", cell="gru"),
        "W6b": dataclasses.replace(w2, name="W6b", cell="gru"),
        "W7": Workload("W7", "lstm", b7, h7, h7, t7, layers=2, bidirectional=True),
        "W8": dataclasses.replace(w1, name="W8", weight_drop=0.5),
    }


_CPU_HOST = Workload("C2", "lstm", 32, 256, 256, 128, suite="cpu")
WORKLOADS: dict[str, Workload] = {
    **_family(
        {"W1": (16, 512, 512), "W2": (64, 1024, 256), "W3": (256, 1024, 128), "W7": (32, 512, 256)}
    ),
    "C1": dataclasses.replace(
        _CPU_HOST, name="C1", recurrent_dropout=0.25, zoneout_cell=0.1, zoneout_hidden=0.1
    ),
    "C2": _CPU_HOST,
    "C3": dataclasses.replace(_CPU_HOST, name="C3", weight_drop=0.5),
    "C4": dataclasses.replace(_CPU_HOST, name="C4", cell="gru"),
    "C5": Workload("C5", "lstm", 64, 512, 512, 64, suite="cpu"),
    "C6": Workload("C6", "gru", 64, 512, 512, 64, suite="cpu"),
    "C7": Workload("C7", "lstm", 1, 128, 128, 256, suite="cpu"),
    "C8": Workload("C8", "gru", 1, 128, 128, 256, suite="cpu"),
}
# Issue 12's host speed goals, defined once (report.py's "host goals" section reads them):
# (workload, mode) -> (the torch.nn workload it is compared with, the largest host / torch.nn
# median ratio that meets it). Plain layers at C2/C4/C5/C6, training and inference; B=1
# inference latency (C7/C8); regularized training (C1) against torch.nn's *plain* C2.
HOST_GOALS: dict[tuple[str, str], tuple[str, float]] = {
    **{(w, m): (w, 1.0) for w in ("C2", "C4", "C5", "C6") for m in ("forward", "train")},
    ("C7", "forward"): ("C7", 1.0),
    ("C8", "forward"): ("C8", 1.0),
    ("C1", "train"): ("C2", 1.15),
}
QUICK_WORKLOADS: dict[str, Workload] = _family(
    {"W1": (4, 32, 16), "W2": (8, 32, 16), "W3": (16, 32, 8), "W7": (4, 32, 16)}
)

SWEEP_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SWEEP_HIDDENS = (128, 256, 512, 1024, 2048)
QUICK_SWEEP_BATCHES = (1, 4, 16)
QUICK_SWEEP_HIDDENS = (16, 32, 64)


def sweep_workloads(quick: bool = False) -> dict[str, Workload]:
    """LSTM sweeps: batch (I=H=512, T=128) and hidden size (B=64, T=128); tiny when quick."""
    batches = QUICK_SWEEP_BATCHES if quick else SWEEP_BATCHES
    hiddens = QUICK_SWEEP_HIDDENS if quick else SWEEP_HIDDENS
    base_h, fixed_b, steps = (32, 8, 16) if quick else (512, 64, 128)
    out: dict[str, Workload] = {}
    for b in batches:
        out[f"SB{b}"] = Workload(f"SB{b}", "lstm", b, base_h, base_h, steps, suite="sweep-batch")
    for h in hiddens:
        out[f"SH{h}"] = Workload(f"SH{h}", "lstm", fixed_b, h, h, steps, suite="sweep-hidden")
    return out


def select(names: str | None, quick: bool = False, sweep: bool = False) -> list[Workload]:
    """Workloads by comma-separated names (``W6`` means W6a and W6b); all when ``names`` is
    None. ``sweep`` adds the sweep workloads."""
    table = dict(QUICK_WORKLOADS if quick else WORKLOADS)
    sweeps = sweep_workloads(quick)
    if names is None or names.strip() in ("", "all"):
        chosen = [w for w in table.values() if w.suite != "cpu"]  # C1/C2 only by name
    else:
        chosen = []
        everything = {**table, **sweeps}
        for raw in names.split(","):
            name = raw.strip()
            if not name:
                continue
            matches = [w for key, w in everything.items() if key == name]
            if not matches:
                matches = [w for key, w in table.items() if key.startswith(name)]
            if not matches:
                known = ", ".join([*table, "W6", "SB<B>", "SH<H>"])
                raise ValueError(f"unknown workload {name!r}; known: {known}")
            chosen.extend(w for w in matches if w not in chosen)
    if sweep:
        chosen.extend(w for w in sweeps.values() if w not in chosen)
    return chosen
