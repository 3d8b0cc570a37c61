"""fusedrnn's build: the pure-Python package, the Triton kernels as ``fusedrnn.kernels``,
and the native extension ``fusedrnn._C`` built by CMake (CMakeLists.txt, Ninja).

Set ``FUSEDRNN_SKIP_NATIVE=1`` to skip the native build. Without nvcc the native build is
host-only; without CMake sources it is skipped. A failing native build fails the install
loudly unless it is skipped: a silently missing backend is worse than an error.

Environment knobs of the native build:

* ``FUSEDRNN_CUDA_ARCHS``   CUDA architectures (default "80;90a"),
* ``FUSEDRNN_ENABLE_CUDA``  AUTO (default: build the kernels if nvcc is found), ON or OFF,
* ``FUSEDRNN_BUILD_JOBS``   parallel compile jobs (default: Ninja's choice),
* ``FUSEDRNN_CMAKE_ARGS``   extra arguments for the CMake configure step,
* ``FUSEDRNN_BUILD_DIR``    the CMake build folder (default: ``build/cmake-<config>``, below).

The CMake build folder persists between builds, one per configuration (Python, the knobs
above, the compilers): a second build, by ``pip install -e .`` or
``python setup.py build_ext --inplace``, only reconfigures when CMake says so and lets Ninja
rebuild what changed, so an up-to-date extension takes a second or two instead of a full
compile (host only: about 15-70 s on 2 cores; with the CUDA kernels several minutes).

Works with ``pip install -e .`` (the module lands in ``fusedrnn/`` through setuptools' inplace
copy), ``pip install --no-build-isolation -e .`` (machines without network: cmake, ninja and
pybind11 come from the environment or PATH) and with build isolation (pyproject's
build-system requires pybind11, cmake and ninja).
"""

from __future__ import annotations

import filecmp
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


class CMakeExtension(Extension):
    """An extension whose sources CMake knows; setuptools only places the result."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


def _tool(name: str, module: str, attribute: str) -> str | None:
    """A build tool from PATH, else from its PyPI package (cmake/ninja wheels)."""
    found = shutil.which(name)
    if found:
        return found
    try:
        package = __import__(module)
        directory = getattr(package, attribute)
    except (ImportError, AttributeError):
        return None
    candidate = Path(directory) / name
    return str(candidate) if candidate.exists() else None


# What a configured build folder depends on besides the sources (CMake tracks those itself).
_CONFIG_ENV = (
    "FUSEDRNN_CUDA_ARCHS",
    "FUSEDRNN_ENABLE_CUDA",
    "FUSEDRNN_CMAKE_ARGS",
    "CC",
    "CXX",
    "CUDACXX",
)


def build_dir_for_config() -> Path:
    """The persistent CMake folder of this configuration: ``build/cmake-<py>-cuda<mode>-<hash>``
    (``FUSEDRNN_BUILD_DIR`` overrides it)."""
    forced = os.environ.get("FUSEDRNN_BUILD_DIR")
    if forced:
        return Path(forced).resolve()
    config = [sys.executable, sys.version, f"nvcc={shutil.which('nvcc')}"]
    config += [f"{k}={os.environ.get(k, '')}" for k in _CONFIG_ENV]
    digest = hashlib.sha256("\n".join(config).encode()).hexdigest()[:10]
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    cuda = os.environ.get("FUSEDRNN_ENABLE_CUDA", "AUTO").upper()
    return ROOT / "build" / f"cmake-{python}-cuda{cuda}-{digest}"


def _install(built: Path, target: Path) -> None:
    """Copy the module into place unless it is already there; through a temporary file and a
    rename, so a process that has the old module loaded keeps a valid mapping."""
    if target.exists() and filecmp.cmp(built, target, shallow=False):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(built, partial)
    os.replace(partial, target)


class CMakeBuild(build_ext):
    def run(self) -> None:
        if os.environ.get("FUSEDRNN_SKIP_NATIVE", "0") == "1":
            print("fusedrnn: FUSEDRNN_SKIP_NATIVE=1, skipping the native extension")
            return
        if not (ROOT / "CMakeLists.txt").exists():
            print("fusedrnn: no CMakeLists.txt, skipping the native extension")
            return
        super().run()

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            super().build_extension(ext)
            return
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = build_dir_for_config()
        staging = build_dir / "out"
        build_dir.mkdir(parents=True, exist_ok=True)

        cmake = _tool("cmake", "cmake", "CMAKE_BIN_DIR")
        if cmake is None:
            raise RuntimeError("fusedrnn: CMake >= 3.24 is needed to build fusedrnn._C")
        started = time.monotonic()
        if not (build_dir / "build.ninja").exists() or not (build_dir / "CMakeCache.txt").exists():
            print(f"fusedrnn: configuring {build_dir} (CMake)", flush=True)
            subprocess.check_call(self._configure_args(cmake, build_dir, staging))
        else:  # Ninja re-runs CMake itself when a CMakeLists.txt changed
            print(f"fusedrnn: reusing {build_dir} (Ninja rebuilds only what changed)", flush=True)

        build = [cmake, "--build", str(build_dir), "--target", "_C"]
        jobs = os.environ.get("FUSEDRNN_BUILD_JOBS")
        if jobs:
            build += ["--parallel", jobs]
        subprocess.check_call(build)
        seconds = time.monotonic() - started
        print(f"fusedrnn: native build step took {seconds:.1f} s", flush=True)

        built = sorted(staging.glob("_C*.so")) + sorted(staging.glob("_C*.pyd"))
        if not built:
            raise RuntimeError(f"fusedrnn: CMake produced no _C module in {staging}")
        _install(built[0], target)

    def _configure_args(self, cmake: str, build_dir: Path, staging: Path) -> list[str]:
        args = [
            cmake,
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            "-G",
            "Ninja",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DFUSEDRNN_OUTPUT_DIR={staging}",
        ]
        ninja = _tool("ninja", "ninja", "BIN_DIR")
        if ninja is not None:
            args.append(f"-DCMAKE_MAKE_PROGRAM={ninja}")
        try:
            import pybind11

            args.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
        except ImportError:
            pass
        if "FUSEDRNN_CUDA_ARCHS" in os.environ:
            args.append(f"-DFUSEDRNN_CUDA_ARCHS={os.environ['FUSEDRNN_CUDA_ARCHS']}")
        if "FUSEDRNN_ENABLE_CUDA" in os.environ:
            args.append(f"-DFUSEDRNN_ENABLE_CUDA={os.environ['FUSEDRNN_ENABLE_CUDA']}")
        return args + shlex.split(os.environ.get("FUSEDRNN_CMAKE_ARGS", ""))


setup(
    packages=["fusedrnn", "fusedrnn.backends", "fusedrnn.kernels"],
    package_dir={"fusedrnn.kernels": "kernels"},
    ext_modules=[CMakeExtension("fusedrnn._C")],
    cmdclass={"build_ext": CMakeBuild},
)
