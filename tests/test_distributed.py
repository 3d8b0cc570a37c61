"""DistributedDataParallel training with fusedrnn's random regularisers (two gloo processes).

Mask semantics under data parallelism
-------------------------------------
A forward call draws its Philox seed from torch's default CPU generator, and a mask element is
a pure function of ``(seed, stream, layer, direction, t, b, unit)`` where ``b`` is the row
*of the tensor the layer sees*. fusedrnn does not look at the distributed rank. Hence:

* With the same ``torch.manual_seed`` on every rank (the usual DDP recipe), every rank draws
  the same seed at every step, and rank r's local row b gets the mask of local row b -- the
  same mask as local row b of every other rank. That is *not* the mask a single process
  would give row ``r * local_batch + b`` of the global batch. DDP training is therefore
  exactly equivalent to one process that runs the forward of each rank's shard separately
  (each with its rank's generator state) and averages the losses -- which is what the single
  process below does, so the comparison is exact up to float64 rounding of the allreduce.
* A user who wants independent masks per rank seeds each rank differently, e.g.
  ``torch.manual_seed(base_seed + rank)`` after building the model (DDP broadcasts rank 0's
  parameters, so the weights still agree). The single-process equivalent then runs shard r
  with a generator seeded ``base_seed + r``; that is tested too.

The test also checks that the two semantics really differ (and differ from one global-batch
forward), so the comparison cannot pass by the masks being inactive.

Everything is local: gloo over the loopback interface (``GLOO_SOCKET_IFNAME=lo``), a
FileStore under ``tmp_path`` for the rendezvous, a timeout on every collective and a hard
deadline on the spawned processes.
"""

from __future__ import annotations

import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import recurrence_backends_on_cpu
from torch import nn

import fusedrnn

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed+gloo"
)

WORLD = 2
STEPS, LOCAL_BATCH, INPUT, HIDDEN = 5, 3, 4, 6
SGD_STEPS = 3
LR = 0.5
MODEL_SEED = 0
BASE_SEED = 1234
SEEDINGS = ("same_seed_every_rank", "seed_per_rank")
DEADLINE_S = 150.0


class Model(nn.Module):
    def __init__(self, backend: str):
        super().__init__()
        self.rnn = fusedrnn.LSTM(
            INPUT,
            HIDDEN,
            num_layers=2,
            bidirectional=True,
            input_dropout=0.2,
            recurrent_dropout=0.3,
            zoneout_cell=0.2,
            zoneout_hidden=0.1,
            backend=backend,
            dtype=torch.float64,
        )
        self.head = nn.Linear(2 * HIDDEN, 1, dtype=torch.float64)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def _data():
    """The global batch (time-major): inputs [T, WORLD*B, I] and targets [T, WORLD*B, 1]."""
    gen = torch.Generator().manual_seed(99)
    x = torch.randn(STEPS, WORLD * LOCAL_BATCH, INPUT, generator=gen, dtype=torch.float64)
    y = torch.randn(STEPS, WORLD * LOCAL_BATCH, 1, generator=gen, dtype=torch.float64)
    return x, y


def _shard(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t[:, rank * LOCAL_BATCH : (rank + 1) * LOCAL_BATCH]


def _rank_seed(seeding: str, rank: int) -> int:
    return BASE_SEED + (rank if seeding == "seed_per_rank" else 0)


def _new_model(backend: str) -> Model:
    torch.manual_seed(MODEL_SEED)
    return Model(backend)


def _worker(rank: int, store_path: str, out_dir: str, backends: list[str]) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store_path}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        x, y = _data()
        x, y = _shard(x, rank), _shard(y, rank)
        for backend in backends:
            for seeding in SEEDINGS:
                model = nn.parallel.DistributedDataParallel(_new_model(backend))
                torch.manual_seed(_rank_seed(seeding, rank))
                optimizer = torch.optim.SGD(model.parameters(), lr=LR)
                for _ in range(SGD_STEPS):
                    optimizer.zero_grad()
                    loss = (model(x) - y).square().mean()  # mean over the local shard
                    loss.backward()  # DDP averages the gradients over the ranks
                    optimizer.step()
                state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
                torch.save(state, os.path.join(out_dir, f"{backend}-{seeding}-rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _single_process(backend: str, seeding: str) -> dict[str, torch.Tensor]:
    """What DDP computes, in one process: each rank's shard with that rank's generator."""
    model = _new_model(backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = _data()
    states = []
    for rank in range(WORLD):
        torch.manual_seed(_rank_seed(seeding, rank))
        states.append(torch.get_rng_state())
    for _ in range(SGD_STEPS):
        optimizer.zero_grad()
        losses = []
        for rank in range(WORLD):
            torch.set_rng_state(states[rank])  # this rank's generator draws the mask seed
            losses.append((model(_shard(x, rank)) - _shard(y, rank)).square().mean())
            states[rank] = torch.get_rng_state()
        (sum(losses) / WORLD).backward()
        optimizer.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


def _global_batch_single_process(backend: str) -> dict[str, torch.Tensor]:
    """One process, one forward over the whole global batch (rows get global-row masks)."""
    model = _new_model(backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = _data()
    torch.manual_seed(BASE_SEED)
    for _ in range(SGD_STEPS):
        optimizer.zero_grad()
        (model(x) - y).square().mean().backward()
        optimizer.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _spawn(tmp_path, backends: list[str]) -> None:
    context = mp.start_processes(
        _worker,
        args=(str(tmp_path / "store"), str(tmp_path), backends),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers did not finish within {DEADLINE_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join(5)


def test_ddp_matches_single_process_with_per_rank_masks(tmp_path):
    backends = recurrence_backends_on_cpu()
    _spawn(tmp_path, backends)

    initial = _new_model("reference").state_dict()
    per_backend = {}
    for backend in backends:
        for seeding in SEEDINGS:
            ranks = [torch.load(tmp_path / f"{backend}-{seeding}-rank{r}.pt") for r in range(WORLD)]
            # DDP keeps the replicas identical (same averaged gradients, same SGD update)
            assert _max_diff(ranks[0], ranks[1]) == 0.0, (backend, seeding)
            expected = _single_process(backend, seeding)
            err = _max_diff(ranks[0], expected)
            moved = _max_diff(ranks[0], initial)
            print(f"\n{backend} {seeding}: |DDP - single| = {err:.2e}, |update| = {moved:.2e}")
            # float64; the only difference is the order of the gradient averaging
            assert err <= 1e-10, (backend, seeding, err)
            assert moved > 1e-3  # training really happened
            per_backend[backend, seeding] = ranks[0]

        # The semantics are observable: identical seeds give per-local-row masks, which is
        # neither what rank-dependent seeds give nor what one global-batch forward gives.
        same, per_rank = (per_backend[backend, s] for s in SEEDINGS)
        assert _max_diff(same, per_rank) > 1e-6
        assert _max_diff(same, _global_batch_single_process(backend)) > 1e-6

    # every backend computes the same training run
    for backend in backends[1:]:
        for seeding in SEEDINGS:
            diff = _max_diff(per_backend[backend, seeding], per_backend[backends[0], seeding])
            assert diff <= 1e-10, (backend, seeding, diff)
