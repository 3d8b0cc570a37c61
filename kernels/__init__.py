"""fusedrnn's Triton kernels (installed as ``fusedrnn.kernels``)."""
