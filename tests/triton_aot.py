"""Ahead-of-time compilation of the Triton kernels for a GPU this machine does not have.

Used by tests/test_triton_aot.py, in a subprocess with ``TRITON_INTERPRET=0`` (the kernels
must be decorated as compilable ``JITFunction``s, not interpreted ones):

    python tests/triton_aot.py ARCH CASES_JSON   ->   one JSON object per kernel on stdout

How the launcher's own arguments are obtained: the launcher (fusedrnn/backends/triton.py)
runs unchanged on fake CUDA tensors (``FakeTensorMode``: shapes, dtypes and devices, no data),
with ``torch.cuda.get_device_properties`` answering for the target GPU (SM count and opt-in
shared memory), so its validation, envelope check, geometry, block sizes and ``num_warps``
are the real ones. Each kernel's ``run`` is replaced by a recorder: nothing is launched. The
recorded arguments then go through triton's own launch-time binder (the specialisation of
integers and pointer alignment a real launch would do) into ``triton.compile`` for
``GPUTarget("cuda", ARCH, 32)``. The PTX is assembled again with the wheel's ``ptxas -v`` to
read the spills.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import types

import torch

# Per target: SM count and opt-in shared memory per block of the reference GPU (A100, H100).
TARGETS = {
    80: {"name": "A100", "sms": 108, "shared_limit": 163 * 1024},
    90: {"name": "H100", "sms": 132, "shared_limit": 227 * 1024},
}

_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


def ptx_instructions(ptx: str, opcode: str) -> list[str]:
    """The PTX instructions (one line each, stripped) whose opcode starts with ``opcode``,
    e.g. ``"atom"``, ``"mma"``, ``"wgmma"``, ``"fence"``, ``"ld.global"``."""
    found = []
    for line in ptx.splitlines():
        text = line.strip()
        if text.startswith("@"):  # predicated: "@%p1 atom.global..."
            text = text.split(None, 1)[1] if " " in text else ""
        if text.startswith(opcode):
            found.append(text)
    return found


def tensor_core_opcodes(ptx: str) -> list[str]:
    """The distinct tensor-core matrix instructions of the PTX (``mma.sync.…`` /
    ``wgmma.mma_async.…`` opcodes, operands dropped; not wgmma's fences), sorted."""
    found = ptx_instructions(ptx, "mma.") + ptx_instructions(ptx, "wgmma.mma_async")
    return sorted({instruction.split()[0] for instruction in found})


def uses_tensor_cores(ptx: str) -> bool:
    """Whether the PTX holds a tensor-core matrix instruction (``mma.sync`` / ``wgmma``)."""
    return bool(tensor_core_opcodes(ptx))


def ptxas_spills(ptx: str, arch: int) -> tuple[int, int, int]:
    """(spill store bytes, spill load bytes, registers per thread) of ``ptxas -v`` (the
    triton wheel's) on ``ptx``."""
    import triton
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "kernel.ptx")
        with open(source, "w") as f:
            f.write(ptx)
        result = subprocess.run(
            [
                ptxas,
                "-v",
                f"--gpu-name={sm_arch_from_capability(arch)}",
                source,
                "-o",
                source + ".o",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    matches = _SPILLS.findall(result.stderr + result.stdout)
    if not matches:
        raise RuntimeError(f"no spill line in ptxas -v output:\n{result.stderr}")
    registers = max((int(r) for r in _REGISTERS.findall(result.stderr + result.stdout)), default=0)
    return sum(int(m[0]) for m in matches), sum(int(m[1]) for m in matches), registers


def fake_device_properties(arch: int):
    """A stand-in for torch.cuda.get_device_properties answering for the target GPU."""
    target = TARGETS[arch]
    props = types.SimpleNamespace(
        name=target["name"],
        major=arch // 10,
        minor=arch % 10,
        multi_processor_count=target["sms"],
        shared_memory_per_block_optin=target["shared_limit"],
    )
    return lambda device=None: props


class BackwardLaunched(Exception):
    """Stops the launcher's backward right after its kernel launch was recorded."""


@contextlib.contextmanager
def recorded_launches(arch: int):
    """Launcher calls inside record (kernel, grid, args, kwargs) instead of launching."""
    from fusedrnn.kernels import recurrence
    from torch._subclasses.fake_tensor import FakeTensorMode

    calls = []
    kernels = (recurrence.recurrence_forward_kernel, recurrence.recurrence_backward_kernel)

    def recorder(kernel):
        def run(*args, grid, warmup, **kwargs):
            calls.append((kernel, grid, args, kwargs))
            if kernel is recurrence.recurrence_backward_kernel:
                raise BackwardLaunched  # what follows (the dW_hh GEMM) is not needed

        return run

    # On a CPU-only torch, fake CUDA tensors work through aten ops, but the hand-written
    # Python bindings of integer indexing and copy_ take a CUDA device guard first (which
    # such a build cannot): route those two through their aten ops.
    original_getitem, original_copy = torch.Tensor.__getitem__, torch.Tensor.copy_

    def getitem(self, index):
        if isinstance(index, int):
            return torch.ops.aten.select.int(self, 0, index)
        return original_getitem(self, index)

    def copy_(self, source, non_blocking=False):
        return torch.ops.aten.copy_.default(self, source, non_blocking)

    original_properties = torch.cuda.get_device_properties
    torch.cuda.get_device_properties = fake_device_properties(arch)
    torch.Tensor.__getitem__, torch.Tensor.copy_ = getitem, copy_
    for kernel in kernels:
        kernel.run = recorder(kernel)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            yield calls
    finally:
        for kernel in kernels:
            del kernel.run
        torch.Tensor.__getitem__, torch.Tensor.copy_ = original_getitem, original_copy
        torch.cuda.get_device_properties = original_properties


def _real_stand_in(value):
    """A one-element CPU tensor of a fake tensor's dtype (triton's binder reads the dtype and
    the pointer alignment; a torch allocation is 16-byte aligned like a CUDA one)."""
    if isinstance(value, torch.Tensor):
        return torch.empty(1, dtype=value.dtype)
    return value


def compile_recorded(kernel, args, kwargs, arch: int):
    """Compile one recorded launch for the target exactly as ``JITFunction.run`` would."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    args = [_real_stand_in(a) for a in args]
    kwargs = {k: _real_stand_in(v) for k, v in kwargs.items()}
    kwargs.setdefault("debug", False)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, kwargs, bound_args, specialization, options
    )
    source = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(source, target=target, options=options.__dict__)


def _on_fake_cuda(inputs):
    """``inputs`` with every tensor replaced by a fake CUDA tensor of its shape and dtype
    (call inside FakeTensorMode)."""
    import dataclasses

    changes = {}
    for field in dataclasses.fields(inputs):
        value = getattr(inputs, field.name)
        if isinstance(value, torch.Tensor):
            changes[field.name] = torch.empty(value.shape, dtype=value.dtype, device="cuda")
    return inputs.replace(**changes)


def _launcher_inputs(case: dict, hidden: int):
    from test_triton import make_inputs

    return make_inputs(
        case["cell"],
        case["regularizer"],
        steps=2,
        batch=case["batch"],
        hidden=hidden,
        dtype=getattr(torch, case["dtype"]),
        device="cpu",
        proj=case.get("proj", 0),
    )


def largest_accepted_hidden(case: dict, arch: int, limit: int = 1 << 14) -> tuple[int, str]:
    """The largest hidden size the launcher accepts for ``case`` on the target with W_hh on
    chip (its resident envelope's boundary), and the launcher's reason for streaming W_hh
    (or rejecting the shape) one unit more."""
    from fusedrnn.backends import triton as triton_backend

    def reason(hidden: int) -> str | None:
        """The launcher's reason to reject, or to stream W_hh instead of holding it on chip."""
        with recorded_launches(arch):
            inputs = _on_fake_cuda(_launcher_inputs(case, hidden))
            rejected = triton_backend.unsupported_reason(inputs)
            if rejected is not None:
                return rejected
            geometry = triton_backend._geometry(
                case["batch"],
                hidden,
                inputs.config.num_gates,
                "cuda",
                inputs.xg.dtype,
                inputs.config.proj_size,
                input_precision=triton_backend._dot_precision(inputs.xg.dtype)["INPUT_PRECISION"],
                norm=inputs.config.norm,
            )
            return geometry.get("stream_reason")

    if reason(1) is not None:
        raise ValueError(f"the launcher rejects {case} at hidden=1: {reason(1)}")
    accepted, rejected = 1, 2
    while reason(rejected) is None:
        accepted, rejected = rejected, 2 * rejected
        if rejected > limit:
            raise ValueError(f"the launcher accepts {case} beyond hidden={limit}")
    while rejected - accepted > 1:
        middle = (accepted + rejected) // 2
        accepted, rejected = (middle, rejected) if reason(middle) is None else (accepted, middle)
    return accepted, reason(rejected)


@contextlib.contextmanager
def forced_streamed(enabled: bool):
    """With ``enabled``, the launcher's geometry is its streamed layout (W_hh read from L2 in
    K-chunks) wherever it would keep W_hh resident (``_geometry(streamed=True)``): the AOT
    test checks that layout's shared-memory bound where the launcher does not pick it."""
    from fusedrnn.backends import triton as triton_backend

    original = triton_backend._geometry
    if enabled:
        triton_backend._geometry = functools.partial(original, streamed=True)
    try:
        yield
    finally:
        triton_backend._geometry = original


def compile_case(case: dict, arch: int) -> list[dict]:
    """Run the launcher's forward and backward on one case; compile both kernels.

    ``case["hidden"] == "max"`` compiles at the launcher's envelope boundary; ``case["tf32"]``
    (optional, default True: torch's default) sets torch's cuDNN TF32 flag first;
    ``case["streamed"]`` (optional) forces the streamed layout (:func:`forced_streamed`).
    """
    from test_triton import upstream_gradients

    from fusedrnn.backends import triton as triton_backend

    case = dict(case)
    # The float32 TF32 flag the launcher reads (its TF32 rule): torch's default unless the
    # case says otherwise.
    torch.backends.cudnn.allow_tf32 = case.get("tf32", True)
    if case["hidden"] == "max":
        case["hidden"], case["rejected_beyond"] = largest_accepted_hidden(case, arch)
    host_inputs = _launcher_inputs(case, case["hidden"])
    with recorded_launches(arch) as calls, forced_streamed(case.get("streamed", False)):
        inputs = _on_fake_cuda(host_inputs)
        reason = triton_backend.unsupported_reason(inputs)
        if reason is not None:
            return [{**case, "unsupported": reason}]
        outputs, saved = triton_backend.forward(inputs)
        grads = upstream_gradients(outputs)
        with contextlib.suppress(BackwardLaunched):
            triton_backend.backward(inputs, saved, *grads)
        # The launcher's geometry with the dot precision it launched with (its TF32 rule).
        geometry = triton_backend._geometry(
            case["batch"],
            case["hidden"],
            inputs.config.num_gates,
            inputs.xg.device,
            inputs.xg.dtype,
            inputs.config.proj_size,
            input_precision=calls[0][3]["INPUT_PRECISION"],
            norm=inputs.config.norm,
        )
        predicted = triton_backend._shared_memory_bytes(geometry)
    results = []
    for kernel, grid, args, kwargs in calls:
        which = "backward" if "backward" in kernel.__name__ else "forward"
        start = time.monotonic()
        compiled = compile_recorded(kernel, args, kwargs, arch)
        seconds = time.monotonic() - start
        ptx = compiled.asm["ptx"]
        spill_stores, spill_loads, registers = ptxas_spills(ptx, arch)
        results.append(
            {
                **case,
                "kernel": which,
                "programs": grid[0],
                "num_warps": kwargs["num_warps"],
                "maxnreg": kwargs.get("maxnreg"),
                "shared": compiled.metadata.shared,
                "predicted_shared": predicted[which],
                "rows_per_dot": geometry[f"rows_{which}"],
                "k_tiles": geometry[f"k_tiles_{which}"],
                "stream_k": geometry["stream_k"],
                "split_k": geometry["split_k"],
                "shared_limit": TARGETS[arch]["shared_limit"],
                "cubin_bytes": len(compiled.asm["cubin"]),
                "spill_stores": spill_stores,
                "spill_loads": spill_loads,
                "registers": registers,
                "atomics": ptx_instructions(ptx, "atom."),
                "acquire_loads": [i for i in ptx_instructions(ptx, "ld.") if ".acquire" in i],
                "cooperative": compiled.metadata.launch_cooperative_grid,
                "tensor_cores": uses_tensor_cores(ptx),
                "tensor_core_opcodes": tensor_core_opcodes(ptx),
                "input_precision": kwargs["INPUT_PRECISION"],
                "compile_seconds": round(seconds, 1),
            }
        )
    return results


def main(argv: list[str]) -> None:
    arch, cases = int(argv[1]), json.loads(argv[2])
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    for case in cases:
        try:
            results = compile_case(case, arch)
        except Exception:  # reported against this case; the other cases still compile
            results = [{**case, "error": traceback.format_exc()}]
        for result in results:
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv)
