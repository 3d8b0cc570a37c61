"""The CUDA backend on a machine without a GPU (CI): clear errors, never a crash; and the
compile check of the CUDA sources for sm_80 / sm_90a (slow, needs nvcc)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from fusedrnn.backends import RECURRENCE_BACKENDS, host, load, native
from fusedrnn.backends import cuda as cuda_backend
from fusedrnn.backends.base import RecurrenceConfig, RecurrenceInputs

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = not torch.cuda.is_available()
CLEAR = r"no CUDA device|built without CUDA|not built|CUDA error"


def _inputs(device="cpu") -> RecurrenceInputs:
    cfg = RecurrenceConfig(cell="lstm", hidden_size=8)
    return RecurrenceInputs(
        config=cfg,
        xg=torch.randn(3, 2, 32, device=device),
        h0=torch.zeros(2, 8, device=device),
        c0=torch.zeros(2, 8, device=device),
        w_hh=torch.randn(32, 8, device=device),
        b_hh=None,
        w_hr=None,
        lengths=None,
    )


def test_registered():
    assert RECURRENCE_BACKENDS["cuda"] == "fusedrnn.backends.cuda"
    assert RECURRENCE_BACKENDS["host"] == "fusedrnn.backends.host"
    assert load("cuda").NAME == "cuda"
    assert load("host").NAME == "host"


@pytest.mark.skipif(not NO_GPU, reason="this machine has a CUDA device")
def test_availability_reason_without_gpu():
    reason = cuda_backend.availability()
    assert reason is not None
    assert any(s in reason for s in ("no CUDA device", "built without CUDA", "not built")), reason


@pytest.mark.skipif(not NO_GPU, reason="this machine has a CUDA device")
def test_forward_without_gpu_raises_clearly():
    with pytest.raises(RuntimeError, match=CLEAR):
        cuda_backend.forward(_inputs())
    with pytest.raises(RuntimeError, match=CLEAR):
        cuda_backend.backward(_inputs(), (), torch.zeros(3, 2, 8), torch.zeros(2, 8), None)


@pytest.mark.skipif(host.availability() is not None, reason=str(host.availability()))
@pytest.mark.skipif(not NO_GPU, reason="this machine has a CUDA device")
def test_native_entry_points_without_gpu_raise():
    """The raw _C entry points report the CUDA error text as an exception, not a crash."""
    C = native.native()
    p = C.RecurrenceFwdParams()
    p.T, p.B, p.H, p.G = 3, 2, 8, 4
    with pytest.raises(RuntimeError, match=CLEAR):
        C.cuda_plan_grid(p, False)
    with pytest.raises(RuntimeError, match=CLEAR):
        C.cuda_forward(p, 0)
    with pytest.raises(RuntimeError, match=CLEAR):
        C.cuda_backward(C.RecurrenceBwdParams(), 0)
    status = C.cuda_device_status()
    assert status and ("no CUDA device" in status or "without CUDA" in status)


def test_unsupported_reasons():
    inputs = _inputs()
    assert "cuda tensors" in cuda_backend.unsupported_reason(inputs)
    # proj_size is not refused as such (the kernels run projections): on this machine the
    # device check is what speaks.
    proj = inputs.replace(config=RecurrenceConfig(cell="lstm", hidden_size=8, proj_size=4))
    assert "cuda tensors" in cuda_backend.unsupported_reason(proj)
    # The dtype check itself (the device check comes first on a CPU machine).
    reason = native.common_unsupported_reason(
        inputs.replace(xg=inputs.xg.double()), "cuda", cuda_backend._DTYPES, "cpu"
    )
    assert "float64" in reason


@pytest.mark.skipif(host.availability() is not None, reason=str(host.availability()))
def test_build_reports():
    C = native.native()
    assert isinstance(C.with_cuda, bool)
    if C.with_cuda:
        assert "80" in C.cuda_archs
    assert C.host_gemm_variant() in ("x86-64-v4", "x86-64-v3", "baseline", "portable")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("NVCC", "nvcc")) is None, reason="no nvcc")
def test_compile_check_script():
    """csrc/compile_check.sh: sm_80 and sm_90a, warnings as errors, ptxas report, no spills,
    and the SASS check: a resource table and tensor cores in every recurrence kernel."""
    result = subprocess.run(
        ["bash", str(ROOT / "csrc" / "compile_check.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(result.stdout[-4000:])
    # CI prints the whole report from here (.ci/run) instead of compiling everything again.
    log = os.environ.get("FUSEDRNN_COMPILE_CHECK_LOG")
    if log:
        with open(log, "w") as f:
            f.write(result.stdout + result.stderr + f"\nexit status {result.returncode}\n")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "sm_80" in result.stdout and "sm_90a" in result.stdout
    assert "registers" in result.stdout
    assert "sass_check: OK" in result.stdout and "HMMA" in result.stdout
    assert "UBLKCP" in result.stdout


_PROBE_KERNEL = r"""
#include <cstdint>
namespace fusedrnn {
template <class S>
__global__ void recurrence_forward_kernel(float* d, const uint32_t* a, const uint32_t* b) {
  float acc[4] = {d[0], d[1], d[2], d[3]};
#if TENSOR_CORES
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  for (int i = 0; i < 4; ++i) acc[i] = fmaf(__uint_as_float(a[i]), __uint_as_float(b[i & 1]), acc[i]);
#endif
#if BULK_COPY
  __shared__ __align__(16) float stage[64];
  __shared__ uint64_t bar;
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(stage));
  const unsigned m = static_cast<unsigned>(__cvta_generic_to_shared(&bar));
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(m) : "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], 256;\n" ::"r"(m) : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], 256, [%2];\n"
        ::"r"(s), "l"(d), "r"(m) : "memory");
  }
  unsigned done = 0;
  while (!done)
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0;\n"
                 "selp.u32 %0, 1, 0, p;\n}\n" : "=r"(done) : "r"(m) : "memory");
  acc[0] += stage[threadIdx.x % 64];
#endif
  for (int i = 0; i < 4; ++i) d[threadIdx.x * 4 + i] = acc[i];
}
template __global__ void recurrence_forward_kernel<float>(float*, const uint32_t*, const uint32_t*);
}  // namespace fusedrnn
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("NVCC", "nvcc")) is None, reason="no nvcc")
@pytest.mark.parametrize(
    "tensor_cores, bulk_copy",
    [(True, True), (False, True), (True, False)],
    ids=["mma_bulk", "ffma_only", "no_bulk_copy"],
)
def test_sass_check_requires_tensor_cores(tmp_path, tensor_cores, bulk_copy):
    """csrc/sass_check.sh (run by compile_check.sh on the built _C) passes an sm_90a recurrence
    kernel with mma.sync and a TMA bulk copy (UBLKCP), and fails an FFMA-only one and one
    without the bulk copy (the planted bugs), naming the kernel."""
    source = tmp_path / "probe.cu"
    source.write_text(_PROBE_KERNEL)
    binary = tmp_path / "probe.o"
    nvcc = os.environ.get("NVCC", "nvcc")
    build = [
        nvcc,
        "-arch=sm_90a",
        f"-DTENSOR_CORES={int(tensor_cores)}",
        f"-DBULK_COPY={int(bulk_copy)}",
        "-c",
        str(source),
    ]
    subprocess.run([*build, "-o", str(binary)], check=True, capture_output=True, timeout=300)
    result = subprocess.run(
        ["bash", str(ROOT / "csrc" / "sass_check.sh"), str(binary)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ARCHS": "90a"},
    )
    print(result.stdout, result.stderr)
    assert "recurrence_forward_kernelIfE" in result.stdout
    if tensor_cores and bulk_copy:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        message = "no tensor-core instruction" if not tensor_cores else "no TMA bulk copy"
        assert message in result.stderr


# ------------------------------------------------------------------------------- constants


def test_native_constants_are_the_python_packages():
    """The codes, NORM_EPS and the Philox shifts are compiled into _C and defined in Python:
    loading _C compares them, and a stale build is refused with the names that differ."""
    C = pytest.importorskip("fusedrnn._C")  # not native(): a stale build must fail here
    assert native.check_native_constants(C) is None
    for name, value in (("norm_eps", 1e-6), ("cell_codes", {"lstm": 1, "gru": 0})):
        stale = types.SimpleNamespace(constants={**C.constants, name: value})
        assert name in native.check_native_constants(stale)


def test_kernels_import_from_a_source_checkout(tmp_path):
    """``fusedrnn.kernels`` is this checkout's ``kernels/`` when the package is used from the
    source tree (not only after an install), whatever the working directory."""
    code = (
        "import fusedrnn.kernels.cells as c, fusedrnn.kernels as k; print(k.__file__, c.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    package, cells = result.stdout.split()
    assert Path(package) == ROOT / "kernels" / "__init__.py"
    assert Path(cells) == ROOT / "kernels" / "cells.py"
