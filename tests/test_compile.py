"""torch.compile over fusedrnn layers: no graph breaks, the same results and gradients.

The recurrence is the custom op ``fusedrnn::recurrence`` (with ``register_fake`` and
``register_autograd``); ``torch.library.opcheck`` checks those registrations for every
recurrence backend that runs here. The fullgraph tests use the ``aot_eager`` compiler
backend — Dynamo's graph capture and AOTAutograd's fake-tensor tracing, which is what a graph
break or a wrong fake would trip — and one slow test runs Inductor end to end. A default
layer (torch's own kernels, which run eagerly between graphs) is compiled with Inductor too.
"""

from __future__ import annotations

import pytest
import torch
from helpers import recurrence_backends_on_cpu
from torch import nn

import fusedrnn
from fusedrnn import backends, dispatch, functional, recurrence_op
from fusedrnn.backends.base import RecurrenceConfig, RecurrenceInputs

BACKENDS = recurrence_backends_on_cpu()
if fusedrnn.available_backends().get("triton") is None:
    BACKENDS.append("triton")  # the interpreter on a CPU machine


def _op_args(backend: str, cell: str, norm: str, training: bool, needs_grad: bool = True):
    hidden, batch, steps = 3, 2, 4
    gates = {"lstm": 4, "gru": 3}[cell] * hidden
    dtype = torch.float32 if backend == "triton" else torch.float64

    def rand(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=needs_grad)

    lstm = cell == "lstm"
    has_norm = norm != "none"
    running = norm == "batch" and not training
    config = RecurrenceConfig(
        cell,
        hidden,
        recurrent_dropout=0.25,
        zoneout_cell=0.1 if lstm else 0.0,
        zoneout_hidden=0.2,
        norm=norm,
    )
    inputs = RecurrenceInputs(
        config=config,
        xg=rand(steps, batch, gates),
        h0=rand(batch, hidden),
        c0=rand(batch, hidden) if lstm else None,
        w_hh=rand(gates, hidden),
        b_hh=rand(gates),
        w_hr=None,
        lengths=torch.tensor([4, 2]),
        norm_weight_hh=rand(gates) if has_norm else None,
        norm_weight_c=rand(hidden) if has_norm and lstm else None,
        norm_bias_c=rand(hidden) if has_norm and lstm else None,
        running_mean_hh=torch.zeros(2, gates, dtype=dtype) if running else None,
        running_var_hh=torch.ones(2, gates, dtype=dtype) if running else None,
        running_mean_c=torch.zeros(2, hidden, dtype=dtype) if running and lstm else None,
        running_var_c=torch.ones(2, hidden, dtype=dtype) if running and lstm else None,
        reverse=True,
        training=training,
        seed=1234,
        layer=1,
        direction=1,
        needs_grad=needs_grad,
    )
    return [*functional.op_arguments(inputs), backend]


@pytest.mark.parametrize(
    ("cell", "norm", "training"),
    [("lstm", "batch", True), ("lstm", "layer", True), ("gru", "batch", False)],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, cell, norm, training):
    result = torch.library.opcheck(
        recurrence_op._recurrence_op, _op_args(backend, cell, norm, training)
    )
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize(("cell", "norm"), [("lstm", "batch"), ("gru", "none")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_without_grad(backend, cell, norm):
    """With needs_grad=False the op returns no saved tensors: the fake implementation agrees."""
    args = _op_args(backend, cell, norm, training=False, needs_grad=False)
    outputs = recurrence_op._recurrence_op(*args)
    assert len(outputs) == recurrence_op._NUM_RESULTS + 1  # the results and the backend index
    result = torch.library.opcheck(recurrence_op._recurrence_op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


class Tagger(nn.Module):
    def __init__(self, backend: str):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.rnn = fusedrnn.LSTM(
            6,
            5,
            num_layers=2,
            bidirectional=True,
            batch_first=True,
            input_dropout=0.1,
            recurrent_dropout=0.2,
            zoneout_cell=0.1,
            zoneout_hidden=0.1,
            backend=backend,
        )
        self.gru = fusedrnn.GRU(10, 4, recurrent_batch_norm=True, max_steps=3, backend=backend)
        self.head = nn.Linear(4, 11)

    def forward(self, tokens):
        x = self.rnn(self.embed(tokens))[0]
        return self.head(self.gru(x.transpose(0, 1))[0])


def _train_step(model, tokens, run=None):
    """One forward+backward of ``run`` (default: ``model``); gradients by parameter name."""
    torch.manual_seed(7)  # the same mask seeds in eager and compiled runs
    logits = (model if run is None else run)(tokens)
    logits.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return logits.detach(), grads


@pytest.mark.parametrize("backend", ["reference", "host"])
def test_fullgraph_compile_matches_eager(backend):
    if backend not in BACKENDS:
        pytest.skip(f"backend {backend!r} is not available here")
    torch.manual_seed(0)
    model = Tagger(backend)
    tokens = torch.randint(0, 11, (3, 5))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    eager_logits, eager_grads = _train_step(model, tokens)
    eager_buffers = {n: b.clone() for n, b in model.named_buffers()}
    model.gru.reset_running_stats()
    compiled_logits, compiled_grads = _train_step(model, tokens, compiled)
    assert torch.allclose(compiled_logits, eager_logits, atol=1e-6)
    for name, grad in eager_grads.items():
        assert torch.allclose(compiled_grads[name], grad, atol=1e-6), name
    for name, buffer in model.named_buffers():  # running statistics updated in the graph
        assert torch.allclose(buffer, eager_buffers[name], atol=1e-6), name


@pytest.mark.slow
def test_inductor_compile_matches_eager():
    torch.manual_seed(0)
    model = Tagger("reference")
    tokens = torch.randint(0, 11, (3, 5))
    eager_logits, eager_grads = _train_step(model, tokens)
    model.gru.reset_running_stats()
    torch._inductor.config.fallback_random = True  # eager's RNG, so the seeds agree
    compiled = torch.compile(model, fullgraph=True)
    compiled_logits, compiled_grads = _train_step(model, tokens, compiled)
    assert torch.allclose(compiled_logits, eager_logits, atol=1e-5)
    for name, grad in eager_grads.items():
        assert torch.allclose(compiled_grads[name], grad, atol=1e-5), name


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_inductor_compiles_a_default_layer(backend, device):
    """A default layer (torch's kernels) under torch.compile's default compiler, forward and
    backward, gives eager's results. Inductor's lowering of ``aten.mkldnn_rnn_layer`` fails
    on the CPU (as it does for ``torch.nn.LSTM`` with ``torch._dynamo.config.allow_rnn``), so
    fusedrnn runs torch's kernels eagerly between graphs, as torch.nn's modules do."""
    torch.manual_seed(0)
    model = fusedrnn.LSTM(4, 8, num_layers=2, backend=backend).to(device)
    x = torch.randn(5, 3, 4, device=device)

    def step(run):
        out, (h_n, c_n) = run(x)
        (out.square().mean() + h_n.sum() + c_n.sin().sum()).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return [out.detach(), h_n.detach(), c_n.detach(), *grads]

    eager = step(model)
    compiled = step(torch.compile(model))
    for index, (a, b) in enumerate(zip(compiled, eager)):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), index


def test_compiled_backward_runs_the_backend_forward_ran(monkeypatch):
    """A compiled graph passes ``backend='auto'`` into the op; backward must run the backend
    that forward chose (its saved tensors are that backend's), even if ``auto`` would now
    choose another."""
    if "host" not in BACKENDS:
        pytest.skip("the host backend is not built")
    torch.manual_seed(0)
    model = fusedrnn.GRU(3, 4, recurrent_dropout=0.25)  # auto: host on the CPU
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    output = compiled(torch.randn(5, 2, 3))[0]
    ran = []
    for name in ("host", "reference"):
        module = backends.load(name)
        original = module.backward

        def recording(*args, _original=original, _name=name):
            ran.append(_name)
            return _original(*args)

        monkeypatch.setattr(module, "backward", recording)
    monkeypatch.setitem(dispatch.AUTO_ORDER, "cpu", ("reference",))
    output.sum().backward()
    assert ran == ["host"]
