"""Character-level language model on the Python standard library's own source code.

embedding -> fusedrnn.LSTM with variational dropout (``input_dropout``, ``recurrent_dropout``)
and zoneout (``zoneout_cell``, ``zoneout_hidden``) -> linear, trained with Adam on a corpus
that is on every machine with Python: a few modules of the standard library
(``sysconfig.get_paths()["stdlib"]``). Prints progress within each epoch (step, loss,
tokens/s; ``--log-every``), the training loss and time of each epoch, the validation loss,
and a generated sample. Defaults (``--help`` lists them all): 1 epoch of 100 steps, B=32,
T=64, H=256.

    python examples/char_lm.py --backend host --epochs 3 --steps 200
    python examples/char_lm.py --device cuda --backend triton --hidden 512 --seq-len 128

Everything random is seeded by ``--seed``: the weights and fusedrnn's mask seeds through
``torch.manual_seed`` (each forward call draws its Philox seed from torch's default
generator), the batch positions and the sample through their own ``torch.Generator``s. Two
backends given the same seed therefore see the same batches and the same masks, and their
loss curves differ only by floating-point rounding.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import sysconfig
import time

import torch
import torch.nn.functional as F
from torch import nn

import fusedrnn

# Modules present in every CPython (pure Python, stable content within a Python version).
CORPUS_MODULES = (
    "textwrap.py",
    "string.py",
    "heapq.py",
    "bisect.py",
    "fnmatch.py",
    "shlex.py",
    "colorsys.py",
    "abc.py",
    "functools.py",
    "csv.py",
)


@dataclasses.dataclass
class Config:
    backend: str = "auto"
    device: str = "auto"
    epochs: int = 1
    steps: int = 100  # optimizer steps per epoch
    seed: int = 0
    hidden: int = 256
    layers: int = 1
    embed: int = 64
    seq_len: int = 64
    batch: int = 32
    lr: float = 3e-3
    clip: float = 1.0
    input_dropout: float = 0.1
    recurrent_dropout: float = 0.25
    zoneout_cell: float = 0.05
    zoneout_hidden: float = 0.05
    max_chars: int = 200_000  # corpus size cap
    sample_len: int = 200
    dtype: str = "float32"
    log_every: int = 10  # progress line every this many steps within an epoch (0: none)
    verbose: bool = True


def load_corpus(max_chars: int) -> str:
    """Concatenated source of CORPUS_MODULES (falls back to any stdlib modules)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    paths = [os.path.join(stdlib, name) for name in CORPUS_MODULES]
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:  # an unusual layout: take the first modules in sorted order
        paths = sorted(os.path.join(stdlib, n) for n in os.listdir(stdlib) if n.endswith(".py"))[
            :10
        ]
    parts = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            parts.append(f.read())
    text = "\n".join(parts)[:max_chars]
    if len(text) < 1000:
        raise RuntimeError(f"corpus too small ({len(text)} characters) under {stdlib}")
    return text


class Vocabulary:
    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class CharLM(nn.Module):
    def __init__(self, vocab: int, cfg: Config, dtype: torch.dtype):
        super().__init__()
        self.embed = nn.Embedding(vocab, cfg.embed, dtype=dtype)
        self.rnn = fusedrnn.LSTM(
            cfg.embed,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            input_dropout=cfg.input_dropout,
            recurrent_dropout=cfg.recurrent_dropout,
            zoneout_cell=cfg.zoneout_cell,
            zoneout_hidden=cfg.zoneout_hidden,
            backend=cfg.backend,
            dtype=dtype,
        )
        self.head = nn.Linear(cfg.hidden, vocab, dtype=dtype)

    def forward(self, tokens, state=None):
        out, state = self.rnn(self.embed(tokens), state)
        return self.head(out), state


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _batch(data: torch.Tensor, cfg: Config, gen: torch.Generator, device):
    starts = torch.randint(0, len(data) - cfg.seq_len - 1, (cfg.batch,), generator=gen)
    window = torch.stack([data[s : s + cfg.seq_len + 1] for s in starts.tolist()])
    window = window.to(device)
    return window[:, :-1], window[:, 1:]


@torch.no_grad()
def evaluate(model: CharLM, data: torch.Tensor, cfg: Config, device, batches: int = 4) -> float:
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    total = 0.0
    for _ in range(batches):
        x, y = _batch(data, cfg, gen, device)
        logits, _ = model(x)
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()).item()
    model.train()
    return total / batches


@torch.no_grad()
def sample(model: CharLM, vocab: Vocabulary, prompt: str, length: int, seed: int, device) -> str:
    """Generate ``length`` characters after ``prompt`` (eval mode: zoneout's expectation)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    tokens = vocab.encode(prompt).to(device)[None]
    logits, state = model(tokens)
    out = []
    for _ in range(length):
        probs = torch.softmax(logits[0, -1].float().cpu(), dim=0)
        token = torch.multinomial(probs, 1, generator=gen)
        out.append(int(token))
        logits, state = model(token.to(device)[None], state)
    model.train()
    return vocab.decode(out)


def train(cfg: Config) -> dict:
    """Train; returns ``losses`` (every step), ``epoch_times``, ``val_losses``, ``sample``."""
    device = _device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    text = load_corpus(cfg.max_chars)
    vocab = Vocabulary(text)
    data = vocab.encode(text)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]

    torch.manual_seed(cfg.seed)  # weights and the Philox seed of every forward call
    model = CharLM(len(vocab), cfg, dtype).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batches = torch.Generator().manual_seed(cfg.seed)

    def log(message):
        if cfg.verbose:
            print(message, flush=True)

    log(
        f"corpus: {len(text):,} characters from {len(CORPUS_MODULES)} stdlib modules, "
        f"vocabulary {len(vocab)}; model: {sum(p.numel() for p in model.parameters()):,} "
        f"parameters, backend={cfg.backend}, device={device}, dtype={cfg.dtype}"
    )
    losses, epoch_times, val_losses = [], [], []
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        epoch_losses = []
        since, since_step = start, 0
        for step in range(1, cfg.steps + 1):
            x, y = _batch(train_data, cfg, batches, device)
            logits, _ = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            epoch_losses.append(loss.item())
            if cfg.log_every > 0 and (step % cfg.log_every == 0 or step == cfg.steps):
                now = time.perf_counter()  # loss.item() above waited for the device
                recent = epoch_losses[since_step:]
                tokens_per_s = len(recent) * cfg.batch * cfg.seq_len / max(now - since, 1e-9)
                log(
                    f"  epoch {epoch + 1}/{cfg.epochs} step {step}/{cfg.steps}: "
                    f"loss {sum(recent) / len(recent):.4f} (mean of the last {len(recent)}), "
                    f"{tokens_per_s:,.0f} tokens/s, {now - start:.1f} s into the epoch"
                )
                since, since_step = now, step
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        losses += epoch_losses
        epoch_times.append(elapsed)
        val_losses.append(evaluate(model, val_data, cfg, device))
        mean = sum(epoch_losses) / len(epoch_losses)
        log(
            f"epoch {epoch + 1}/{cfg.epochs}: train loss {mean:.4f} "
            f"({mean / math.log(2):.3f} bits/char), val loss {val_losses[-1]:.4f}, "
            f"{elapsed:.2f} s ({1000 * elapsed / cfg.steps:.1f} ms/step)"
        )
    text_sample = ""
    if cfg.sample_len > 0:
        text_sample = sample(model, vocab, "def ", cfg.sample_len, cfg.seed, device)
        log("sample:\ndef " + text_sample)
    return {
        "losses": losses,
        "epoch_times": epoch_times,
        "val_losses": val_losses,
        "sample": text_sample,
        "vocab_size": len(vocab),
    }


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every flag's default and keeps the description's line breaks."""


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python examples/char_lm.py",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    add = p.add_argument
    add(
        "--backend", default=d.backend, help="fusedrnn backend: auto, host, triton, cuda, reference"
    )
    add("--device", default=d.device, help="cpu, cuda, cuda:N or auto (cuda when available)")
    add("--epochs", type=int, default=d.epochs, help="passes of --steps optimizer steps each")
    add("--steps", type=int, default=d.steps, help="optimizer steps per epoch")
    add("--seed", type=int, default=d.seed, help="seed of the weights, batches, masks and sample")
    add("--hidden", type=int, default=d.hidden, help="LSTM hidden size")
    add("--layers", type=int, default=d.layers, help="stacked LSTM layers")
    add("--embed", type=int, default=d.embed, help="character embedding size (the LSTM's input)")
    add("--seq-len", type=int, default=d.seq_len, help="characters per training sequence (T)")
    add("--batch", type=int, default=d.batch, help="sequences per step (B)")
    add("--lr", type=float, default=d.lr, help="Adam learning rate")
    add("--clip", type=float, default=d.clip, help="gradient-norm clip (0: none)")
    add("--input-dropout", type=float, default=d.input_dropout, help="variational input dropout")
    add(
        "--recurrent-dropout",
        type=float,
        default=d.recurrent_dropout,
        help="variational dropout on the recurrent input h",
    )
    add("--zoneout-cell", type=float, default=d.zoneout_cell, help="zoneout probability of c")
    add("--zoneout-hidden", type=float, default=d.zoneout_hidden, help="zoneout probability of h")
    add("--max-chars", type=int, default=d.max_chars, help="corpus size cap (characters)")
    add("--sample-len", type=int, default=d.sample_len, help="characters to generate (0: none)")
    add("--dtype", default=d.dtype, choices=("float32", "float64"), help="parameter dtype")
    add(
        "--log-every",
        type=int,
        default=d.log_every,
        help="print step, loss and tokens/s every this many steps within an epoch (0: never)",
    )
    add("--quiet", action="store_true", help="print nothing but errors")
    return p


def parse_args(argv=None) -> Config:
    args = vars(build_parser().parse_args(argv))
    args["verbose"] = not args.pop("quiet")
    return Config(**args)


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    if cfg.verbose:
        print(f"fusedrnn backends: {fusedrnn.available_backends()}")
    return train(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
