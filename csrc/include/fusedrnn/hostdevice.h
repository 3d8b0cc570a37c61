// One macro that lets the cell math and Philox compile as CUDA device code under nvcc and
// as plain C++ under g++/clang (the `host` backend), so both backends run the same code.
#pragma once

#if defined(__CUDACC__)
#define FRNN_HD __host__ __device__ __forceinline__
#define FRNN_DEVICE_CODE 1
#else
// Always inlined under g++ / clang too, as __forceinline__ under nvcc: the host backend's
// vector cell instantiates these templates on 64-byte vectors inside per-ISA kernels
// (csrc/host/multiversion.h), and a copy left out of line by the inliner's size heuristics
// is compiled for the baseline target, where such a vector is emulated (measured: the
// vector cell 90x slower) and passed in memory.
#define FRNN_HD inline __attribute__((always_inline))
#define FRNN_DEVICE_CODE 0
#endif
