"""The host backend's buffer cache (csrc/host/buffer_cache.h, fusedrnn/backends/host.py
``cached_empty``): the saved per-step tensors and the backward's workspaces of at least
``CACHE_MIN_BYTES`` are views of cached blocks, reused by the next call instead of being
page-faulted in again.

Checked: a freed tensor's block is reused; a view keeps its block in use; a training loop
reuses blocks and gives every one back when its graph is freed; the cache keeps no more free
bytes than its limit (none at 0); the results are bit-for-bit those with the cache off; a bad
FUSEDRNN_HOST_CACHE_MB is refused by name; a new block is a mapping of its own (not malloc's
heap) whose pages empty_cache gives back.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedrnn
from fusedrnn.backends import host, native

pytestmark = pytest.mark.skipif(
    host.availability() is not None, reason=f"host backend: {host.availability()}"
)

CPU = torch.device("cpu")
MIB = 1 << 20


def _stats() -> dict[str, int]:
    gc.collect()
    return host.cache_stats()


@pytest.fixture
def cache_on(monkeypatch):
    """The cache on with its default limit, whatever the environment says."""
    monkeypatch.setattr(host, "_cache_limit", None)
    monkeypatch.delenv(host.CACHE_ENV, raising=False)
    host.cache_limit_bytes()
    host.empty_cache()  # no free block of earlier tests: each request here allocates or reuses ours
    yield
    native.native().host_cache_set_limit(host.cache_limit_bytes())


def test_a_freed_tensor_block_is_reused(cache_on):
    first = host.cached_empty((512, 1024), torch.float32, CPU)  # 2 MiB
    ptr = first.data_ptr()
    assert ptr % 4096 == 0
    before = _stats()
    del first
    after_free = _stats()
    assert after_free["free_bytes"] == before["free_bytes"] + 2 * MIB
    again = host.cached_empty((1024, 512), torch.float32, CPU)  # same bytes, other shape
    assert again.data_ptr() == ptr
    assert _stats()["hits"] == before["hits"] + 1
    assert again.shape == (1024, 512) and again.dtype == torch.float32


def test_a_view_keeps_its_block_in_use(cache_on):
    start = _stats()["in_use_bytes"]
    tensor = host.cached_empty((3, 1 << 18), torch.float32, CPU)  # 3 MiB
    view = tensor[1]
    del tensor
    assert _stats()["in_use_bytes"] == start + 3 * MIB
    view.fill_(2.5)
    assert torch.equal(view, torch.full((1 << 18,), 2.5))
    del view
    assert _stats()["in_use_bytes"] == start


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_every_dtype_and_small_tensors_bypass(cache_on, dtype):
    tensor = host.cached_empty((7, 1 << 17), dtype, CPU)
    assert tensor.dtype == dtype and tensor.shape == (7, 1 << 17) and tensor.is_contiguous()
    tensor.fill_(1)
    assert bool((tensor == 1).all())
    misses = _stats()["misses"]
    hits = _stats()["hits"]
    small = host.cached_empty((100, 100), dtype, CPU)  # below CACHE_MIN_BYTES: torch.empty
    assert small.untyped_storage().resizable()
    assert (_stats()["misses"], _stats()["hits"]) == (misses, hits)


def test_free_bytes_stay_within_the_limit(cache_on):
    C = native.native()
    C.host_cache_set_limit(3 * MIB)
    blocks = [host.cached_empty((MIB // 4,), torch.float32, CPU) for _ in range(5)]
    del blocks
    assert _stats()["free_bytes"] <= 3 * MIB
    C.host_cache_set_limit(0)
    assert _stats()["free_bytes"] == 0
    tensor = host.cached_empty((MIB // 4,), torch.float32, CPU)
    del tensor
    assert _stats()["free_bytes"] == 0


def _train(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    x = x.detach().requires_grad_()
    out, (h_n, c_n) = model(x)
    (out.square().sum() + h_n.sum() + c_n.sum()).backward()
    return [out.detach(), h_n.detach(), c_n.detach(), x.grad] + [
        p.grad.clone() for p in model.parameters()
    ]


def test_training_reuses_blocks_gives_them_back_and_matches_the_cache_off(cache_on, monkeypatch):
    torch.manual_seed(0)
    # T * B * 4H float32 = 2 MiB of saved gates and of dxg: cached
    model = fusedrnn.LSTM(24, 128, backend="host")
    x = torch.randn(32, 32, 24)
    start = _stats()
    cached = [_train(model, x) for _ in range(3)]
    end = _stats()
    assert end["in_use_bytes"] == start["in_use_bytes"], "a block was never given back"
    assert end["hits"] - start["hits"] >= 4, "the second and third calls took no cached block"
    monkeypatch.setattr(host, "_cache_limit", 0)  # off: torch.empty everywhere
    misses = _stats()["misses"]
    plain = _train(model, x)
    assert _stats()["misses"] == misses
    for a, b in zip(cached[-1], plain):
        assert torch.equal(a, b)


def test_a_bad_limit_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(host, "_cache_limit", None)
    monkeypatch.setenv(host.CACHE_ENV, "lots")
    with pytest.raises(ValueError, match="FUSEDRNN_HOST_CACHE_MB"):
        host.cached_empty((1 << 20,), torch.float32, CPU)


# Run in a child whose glibc keeps every freed byte (as a long process ends up keeping tens
# of MiB: its mmap threshold rises to the largest block it freed, its trim threshold to twice
# that) and has 120 MiB of touched, freed memory at the top of its heap. A block taken from
# malloc would be that memory: no fresh pages for the huge-page advice (test_host_thp.py, which
# the full suite's long process failed this way), and nothing given back by empty_cache.
_FRESH_MAPPING_CHILD = r"""
import re
import torch
from fusedrnn.backends import host

filler = [torch.ones(30 << 18) for _ in range(4)]  # 4 x 30 MiB from the heap, touched
del filler

def mapping_of(address):
    for line in open("/proc/self/maps"):
        fields = line.split()
        start, end = (int(v, 16) for v in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) > 5 else "anonymous"
    return None

def rss_kib():
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1))

block = host.cached_empty((40 << 18,), torch.float32, torch.device("cpu"))  # 40 MiB
block.fill_(1.0)
print("mapping", mapping_of(block.data_ptr()))
del block  # back to the cache, resident
before = rss_kib()
host.empty_cache()
print("returned_kib", before - rss_kib())
"""


def test_a_new_block_is_a_fresh_mapping_that_empty_cache_returns():
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs Linux /proc to see where a block lies")
    env = dict(os.environ)
    env.pop(host.CACHE_ENV, None)
    env["GLIBC_TUNABLES"] = (
        "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"
    )
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).parents[1]), env.get("PYTHONPATH")])
    )
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_MAPPING_CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert report["mapping"] == "anonymous", report  # not "[heap]"
    assert int(report["returned_kib"]) >= 38 * 1024, report
