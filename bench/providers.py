"""Providers: who computes a workload, and how a call is prepared for timing.

* ``torch``: ``torch.nn.LSTM``/``GRU`` on the device (cuDNN on a GPU, ATen/oneDNN on the CPU),
* ``reference``: ``fusedrnn.*(backend="reference")``, the plain-torch time loop,
* ``reference-compiled``: ``torch.compile`` of that module,
* ``triton``, ``cuda``, ``host``: ``fusedrnn.*(backend=name)``.

A provider that cannot run a case is never dropped: :func:`skip_reason` says why before
anything is built, and a backend that refuses a call at run time (``"cannot run this
call: ..."``) is recorded as skipped with its own words. Availability comes from
``fusedrnn.available_backends()``, queried by the caller at run time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from .workloads import DTYPES, SEED, Workload

PROVIDERS: tuple[str, ...] = ("torch", "reference", "reference-compiled", "triton", "cuda", "host")
QUICK_PROVIDERS: tuple[str, ...] = ("torch", "reference", "host")
FUSED_BACKENDS: tuple[str, ...] = ("triton", "cuda", "host")

# A guard for reference-compiled: skip workloads with T above this (0 = no limit). Since the
# recurrence became the custom op fusedrnn::recurrence, torch.compile no longer unrolls the
# time loop and compiles in seconds at any T; should it trace the loop again, compiling
# hundreds of unrolled steps takes minutes per shape, and --compile-max-steps keeps a GPU run
# within its time.
DEFAULT_COMPILE_MAX_STEPS = 0


@dataclasses.dataclass
class Prepared:
    """One case, ready to time: ``setup`` (untimed) then ``fn`` (timed)."""

    fn: Callable[[], None]
    setup: Callable[[], None]
    module: torch.nn.Module
    notes: str = ""


def backend_of(provider: str) -> str:
    """The fusedrnn backend name behind a provider ("torch" for torch.nn itself)."""
    if provider == "torch":
        return "torch"
    if provider.startswith("reference"):
        return "reference"
    return provider


def skip_reason(
    provider: str,
    workload: Workload,
    device: torch.device,
    availability: dict[str, str | None],
    compile_max_steps: int = DEFAULT_COMPILE_MAX_STEPS,
) -> str | None:
    """Why ``provider`` cannot run ``workload`` on ``device`` (None: try it)."""
    if provider not in PROVIDERS:
        return f"unknown provider {provider!r}"
    if provider == "torch":
        if workload.regularizers:
            return (
                f"torch.nn has no fusedrnn regularizers ({workload.regularizers}); "
                "only fusedrnn's backends compute this workload"
            )
        return None
    backend = backend_of(provider)
    unavailable = availability.get(backend, f"fusedrnn does not know backend {backend!r}")
    if unavailable:
        return f"backend {backend!r} unavailable: {unavailable}"
    if provider == "reference-compiled" and 0 < compile_max_steps < workload.steps:
        return (
            f"T={workload.steps} > --compile-max-steps {compile_max_steps}: not attempted (the "
            "guard against torch.compile unrolling the time loop, which takes minutes per "
            "shape; 0 removes it)"
        )
    if provider == "host" and device.type != "cpu":
        return f"the host backend runs on CPU tensors; this run is on {device.type}"
    if provider == "cuda" and device.type != "cuda":
        return f"the cuda backend needs a CUDA device; this run is on {device.type}"
    if provider == "triton":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return (
                "TRITON_INTERPRET=1: the Triton interpreter checks correctness on a CPU; "
                "its times mean nothing"
            )
        if device.type != "cuda":
            return f"the Triton kernels need a CUDA device; this run is on {device.type}"
    return None


def build_module(
    provider: str, workload: Workload, dtype: str, device: torch.device
) -> torch.nn.Module:
    """The layer of ``workload`` for ``provider``; every provider gets the same weights."""
    import fusedrnn  # lazily: importing bench stays light

    torch.manual_seed(SEED)
    kwargs = {
        "input_size": workload.input_size,
        "hidden_size": workload.hidden_size,
        "num_layers": workload.layers,
        "bidirectional": workload.bidirectional,
    }
    classes = {
        "torch": {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU},
        "fusedrnn": {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU},
    }
    if provider == "torch":
        module = classes["torch"][workload.cell](**kwargs)
    else:
        cls = classes["fusedrnn"][workload.cell]
        module = cls(**kwargs, backend=backend_of(provider), **workload.regularizer_options())
    return module.to(device=device, dtype=DTYPES[dtype])


def _inputs(
    workload: Workload, dtype: str, device: torch.device, requires_grad: bool
) -> tuple[torch.Tensor | PackedSequence, torch.Tensor]:
    """(the layer's input, the leaf tensor whose grad a train step computes)."""
    generator = torch.Generator().manual_seed(SEED)
    shape = (workload.steps, workload.batch, workload.input_size)
    x = torch.randn(shape, generator=generator).to(device=device, dtype=DTYPES[dtype])
    lengths = workload.lengths()
    if lengths is None:
        return x.requires_grad_(requires_grad), x
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    # The packed data is the leaf, so every timed backward starts from a fresh graph.
    data = packed.data.detach().requires_grad_(requires_grad)
    return (
        PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices),
        data,
    )


def prepare(
    provider: str, workload: Workload, dtype: str, mode: str, device: torch.device
) -> Prepared:
    """Build the module and inputs of one case and return its timed callable."""
    module = build_module(provider, workload, dtype, device)
    call: Callable = module
    notes = ""
    if provider == "reference-compiled":
        import torch._dynamo as dynamo
        from torch._dynamo.utils import counters

        dynamo.reset()  # each case compiles on its own (no cache-limit carry-over)
        counters.clear()  # graph breaks of this case only (see graph_breaks())
        call = torch.compile(module)
        notes = "torch.compile(fusedrnn module, backend='reference'), default mode"
        if _recurrence_is_custom_op():
            notes += (
                "; the recurrence is the custom op fusedrnn::recurrence, opaque to "
                "torch.compile: the layer around it is compiled, the time loop runs eagerly"
            )
    train = mode == "train"
    module.train(train)
    inp, leaf = _inputs(workload, dtype, device, requires_grad=train)

    if not train:
        if mode != "forward":
            raise ValueError(f"unknown mode {mode!r}")

        def forward() -> None:
            with torch.no_grad():
                call(inp)

        return Prepared(forward, lambda: None, module, notes)

    parameters = list(module.parameters())
    grad_holder: list[torch.Tensor] = []

    def zero_grads() -> None:
        for p in parameters:
            p.grad = None
        leaf.grad = None

    def train_step() -> None:
        out, _ = call(inp)
        out = out.data if isinstance(out, PackedSequence) else out
        if not grad_holder:
            generator = torch.Generator().manual_seed(SEED + 1)
            grad = torch.randn(out.shape, generator=generator)
            grad_holder.append(grad.to(device=out.device, dtype=out.dtype))
        out.backward(grad_holder[0])

    return Prepared(train_step, zero_grads, module, notes)


def _recurrence_is_custom_op() -> bool:
    try:
        torch.ops.fusedrnn.recurrence  # noqa: B018  (attribute lookup is the check)
    except (AttributeError, RuntimeError):
        return False
    return True


def graph_breaks() -> int:
    """Graph breaks TorchDynamo counted since the last reference-compiled prepare()."""
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def classify_failure(provider: str, error: BaseException) -> tuple[str, str]:
    """(status, reason) of a case that raised: a refused call is 'skipped', else 'error'."""
    text = f"{type(error).__name__}: {error}".strip()
    first = text.splitlines()[0] if text else type(error).__name__
    reason = first if len(first) <= 400 else first[:397] + "..."
    message = str(error)
    if "cannot run this call" in message or "no fusedrnn backend can run" in message:
        return "skipped", reason
    lowered = message.lower()
    if any(s in lowered for s in ("not implemented for", "not supported", "unsupported")):
        return "skipped", f"unsupported here: {reason}"  # e.g. a dtype a kernel lacks
    if isinstance(error, torch.OutOfMemoryError):
        return "error", f"out of memory: {reason}"
    if provider == "reference-compiled":
        return "skipped", f"torch.compile cannot handle it: {reason}"
    return "error", reason
