"""What the numbers were measured on: device, versions and the fusedrnn commit."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_device(name: str | None) -> torch.device:
    """``--device``: "cuda" when available and not given, else "cpu"; checks a named one."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {name}: only cpu and cuda are supported")
    return device


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The instruction sets the CPU providers run with: torch's ATen kernels
    (``ATEN_CPU_CAPABILITY``) and the host backend's float32 GEMM and bf16 product builds
    (``FUSEDRNN_HOST_ISA``), so a report made under an ISA cap says so."""
    parts = [f"torch {torch.backends.cpu.get_cpu_capability()}"]
    try:
        from fusedrnn import _C
    except ImportError:  # no built extension
        return parts[0] + ", host not built"
    for label, query in (("host", "host_gemm_variant"), ("bf16", "host_bf16_variant")):
        if hasattr(_C, query):  # an extension built before the query existed has none
            parts.append(f"{label} {getattr(_C, query)()}")
    return ", ".join(parts)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads; {cpu_isa()})"


def slug(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def git_commit(root: Path = REPO_ROOT) -> str:
    """``FUSEDRNN_COMMIT`` if set, else ``git rev-parse HEAD`` (+dirty), else 'unknown'."""
    forced = os.environ.get("FUSEDRNN_COMMIT")
    if forced:
        return forced
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git checkout; set FUSEDRNN_COMMIT)"
    return head + ("+dirty" if dirty else "")


def environment(device: torch.device) -> dict[str, str]:
    """The per-row environment columns of the CSV (and env.json)."""
    cuda = torch.version.cuda or ""
    if cuda and torch.backends.cudnn.is_available():
        cuda += f" (cuDNN {torch.backends.cudnn.version()})"
    return {
        "device": device.type,
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "triton_version": _version("triton"),
        "cuda_version": cuda,
        "python_version": platform.python_version(),
        "fusedrnn_commit": git_commit(),
    }
