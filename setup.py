"""fusedrnn's build: the pure-Python package, the Triton kernels as ``fusedrnn.kernels``,
and (with the CUDA issue) the native extension ``fusedrnn._C`` built by CMake.

Set ``FUSEDRNN_SKIP_NATIVE=1`` to skip the native build. Without nvcc the native build is
host-only; without CMake sources it is skipped. A failing native build fails the install
loudly unless it is skipped: a silently missing backend is worse than an error.
"""

from setuptools import setup

setup(
    packages=["fusedrnn", "fusedrnn.backends", "fusedrnn.kernels"],
    package_dir={"fusedrnn.kernels": "kernels"},
)
