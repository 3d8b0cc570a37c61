// One macro that lets the cell math and Philox compile as CUDA device code under nvcc and
// as plain C++ under g++/clang (the `host` backend), so both backends run the same code.
#pragma once

#if defined(__CUDACC__)
#define FRNN_HD __host__ __device__ __forceinline__
#define FRNN_DEVICE_CODE 1
#else
#define FRNN_HD inline
#define FRNN_DEVICE_CODE 0
#endif
