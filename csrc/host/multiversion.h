// Run-time ISA dispatch of the host kernels (GEMM, activations).
//
// Each kernel is compiled three times from the same source: for x86-64-v4 (AVX-512 F/BW/CD/
// DQ/VL), x86-64-v3 (AVX2 + FMA) and the build's baseline, and `FRNN_DISPATCH` picks one per
// process on first use: the best the CPU supports, or a lower one named by the environment
// variable FUSEDRNN_HOST_ISA ("baseline", "x86-64-v3", "x86-64-v4"; a level the CPU lacks is
// never chosen; "avx512-bf16" and "amx-bf16" are the bfloat16 product tiers above x86-64-v4,
// gemm_bf16.h, and leave these builds unlowered). So a wheel-like build needs no -march flag
// (see CMakeLists.txt), and tests can run every variant the machine has.
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) || defined(__clang__)
#define FRNN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FRNN_ALWAYS_INLINE inline
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(FUSEDRNN_NO_MULTIVERSION)
#define FRNN_HAVE_MULTIVERSION 1
#define FRNN_TARGET_V4 __attribute__((target("arch=x86-64-v4")))
#define FRNN_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
#else
#define FRNN_HAVE_MULTIVERSION 0
#define FRNN_TARGET_V4
#define FRNN_TARGET_V3
#endif

namespace fusedrnn {
namespace host {

enum class Isa : int { kBaseline = 0, kX86_64_V3 = 1, kX86_64_V4 = 2 };

inline const char* isa_name(Isa isa) {
  if (!FRNN_HAVE_MULTIVERSION) return "portable";
  switch (isa) {
    case Isa::kX86_64_V4:
      return "x86-64-v4";
    case Isa::kX86_64_V3:
      return "x86-64-v3";
    default:
      return "baseline";
  }
}

// The variant to run given what the CPU supports and the requested ceiling (nullptr or an
// unknown name: no ceiling). Pure, so the dispatch rule is testable on any machine.
inline Isa choose_isa(bool cpu_has_v3, bool cpu_has_v4, const char* request) {
  Isa best = cpu_has_v4 && cpu_has_v3 ? Isa::kX86_64_V4
                                      : (cpu_has_v3 ? Isa::kX86_64_V3 : Isa::kBaseline);
  Isa ceiling = Isa::kX86_64_V4;
  if (request != nullptr) {
    if (std::strcmp(request, "baseline") == 0) ceiling = Isa::kBaseline;
    if (std::strcmp(request, "x86-64-v3") == 0) ceiling = Isa::kX86_64_V3;
  }
  return static_cast<int>(best) < static_cast<int>(ceiling) ? best : ceiling;
}

// This process's variant (decided once).
inline Isa runtime_isa() {
  static const Isa isa = [] {
#if FRNN_HAVE_MULTIVERSION
    __builtin_cpu_init();
    return choose_isa(__builtin_cpu_supports("x86-64-v3"), __builtin_cpu_supports("x86-64-v4"),
                      std::getenv("FUSEDRNN_HOST_ISA"));
#else
    return Isa::kBaseline;
#endif
  }();
  return isa;
}

}  // namespace host
}  // namespace fusedrnn

// Defines `name` (with `params` / `args`) calling name##_v4, name##_v3 or name##_base: three
// builds of name##_body (FRNN_DISPATCH), or of name##_v4_body for x86-64-v4 and name##_body
// for the others (FRNN_DISPATCH_SPLIT: a kernel with a different shape for AVX-512).
#if FRNN_HAVE_MULTIVERSION
#define FRNN_DISPATCH_BODIES(ret, name, params, args, v4_body)    \
  FRNN_TARGET_V4 ret name##_v4 params { return v4_body args; }     \
  FRNN_TARGET_V3 ret name##_v3 params { return name##_body args; } \
  ret name##_base params { return name##_body args; }              \
  ret name params {                                                \
    switch (runtime_isa()) {                                       \
      case Isa::kX86_64_V4:                                        \
        return name##_v4 args;                                     \
      case Isa::kX86_64_V3:                                        \
        return name##_v3 args;                                     \
      default:                                                     \
        return name##_base args;                                   \
    }                                                              \
  }
#else
#define FRNN_DISPATCH_BODIES(ret, name, params, args, v4_body) \
  ret name params { return name##_body args; }
#endif
#define FRNN_DISPATCH(ret, name, params, args) \
  FRNN_DISPATCH_BODIES(ret, name, params, args, name##_body)
#define FRNN_DISPATCH_SPLIT(ret, name, params, args) \
  FRNN_DISPATCH_BODIES(ret, name, params, args, name##_v4_body)
