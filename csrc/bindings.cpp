// pybind11 module fusedrnn._C: no torch headers. The Python launcher
// (fusedrnn/backends/native.py, for host.py and cuda.py) allocates every output and workspace
// with torch, fills a params struct with raw addresses (data_ptr() integers), sizes and
// strides, and calls the entry points below.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <memory>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/launch_plan.h"
#include "fusedrnn/cells.cuh"
#include "fusedrnn/params.h"
#include "fusedrnn/philox.cuh"
#include "host/buffer_cache.h"
#include "host/gemm.h"
#include "host/gemm_bf16.h"
#include "host/mask_rows_host.h"
#include "host/multiversion.h"
#include "host/recurrence_host.h"
#include "host/weight_drop_host.h"
#if defined(FUSEDRNN_WITH_CUDA)
#include "cuda/recurrence_cuda.h"
#include "cuda/weight_drop_cuda.h"
#endif

#ifndef FUSEDRNN_CUDA_ARCHS_STRING
#define FUSEDRNN_CUDA_ARCHS_STRING ""
#endif

namespace py = pybind11;
using fusedrnn::RecurrenceBwdParams;
using fusedrnn::RecurrenceFwdParams;

namespace {

// A Python int (any sign, any size) reduced to its low 64 bits, as philox.py does with seeds.
uint64_t low64(const py::int_& value) {
  const py::object masked = value & py::int_(static_cast<unsigned long long>(~0ULL));
  return masked.cast<uint64_t>();
}

#define FRNN_PTR(Cls, field)                                                                  \
  def_property(                                                                               \
      #field, [](const Cls& p) { return reinterpret_cast<uintptr_t>(p.field); },             \
      [](Cls& p, uintptr_t v) { p.field = reinterpret_cast<decltype(p.field)>(v); })
#define FRNN_U64(Cls, field)                                                  \
  def_property(                                                               \
      #field, [](const Cls& p) { return p.field; },                          \
      [](Cls& p, const py::int_& v) { p.field = low64(v); })
#define FRNN_RW(Cls, field) def_readwrite(#field, &Cls::field)

// A block of the host buffer cache (csrc/host/buffer_cache.h) as a Python object with the
// buffer protocol: torch.frombuffer views it (holding a reference), and the block goes back to
// the cache when the last tensor viewing it is freed.
struct HostBuffer {
  fusedrnn::host::CachedBlock block;
  std::size_t bytes;
  explicit HostBuffer(std::size_t n) : block(fusedrnn::host::cache_acquire(n)), bytes(n) {}
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  ~HostBuffer() { fusedrnn::host::cache_release(block); }
};

#if !defined(FUSEDRNN_WITH_CUDA)
[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "fusedrnn._C was built without CUDA (nvcc was not found at build time); rebuild on a "
      "machine with the CUDA toolkit to use backend='cuda'");
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fusedrnn native kernels: CUDA persistent recurrences and their host (CPU) build";
#if defined(FUSEDRNN_WITH_CUDA)
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("cuda_archs") = std::string(FUSEDRNN_CUDA_ARCHS_STRING);
  m.def("host_gemm_variant", &fusedrnn::host::gemm_variant,
        "Which build (x86-64-v4, x86-64-v3, baseline) of the host GEMM and activations runs.");
  m.def(
      "host_choose_isa",
      [](bool cpu_has_v3, bool cpu_has_v4, const std::string& request) {
        return std::string(fusedrnn::host::isa_name(fusedrnn::host::choose_isa(
            cpu_has_v3, cpu_has_v4, request.empty() ? nullptr : request.c_str())));
      },
      py::arg("cpu_has_v3"), py::arg("cpu_has_v4"), py::arg("request") = "",
      "The dispatch rule: the build chosen for a CPU with these levels and a "
      "FUSEDRNN_HOST_ISA value ('' = unset).");

  m.def(
      "host_buffer_offsets",
      [](const std::vector<int64_t>& sizes) {
        // Where fresh host buffers of these element counts start, modulo a cache line.
        std::vector<int64_t> out;
        auto offset = [](const void* p) {
          return static_cast<int64_t>(reinterpret_cast<uintptr_t>(p) %
                                      fusedrnn::host::kCacheLine);
        };
        for (int64_t n : sizes) {
          const fusedrnn::host::PackedB<float> packed(static_cast<size_t>(n));
          const fusedrnn::host::AlignedVector<float> f(static_cast<size_t>(n));
          const fusedrnn::host::AlignedVector<double> d(static_cast<size_t>(n));
          fusedrnn::host::PackedBf16 packed_bf16;  // gemm_bf16.h's packed W
          packed_bf16.data.assign(static_cast<size_t>(n), 0);
          out.insert(out.end(), {offset(packed.data()), offset(f.data()), offset(d.data()),
                                 offset(packed_bf16.data.data())});
        }
        return out;
      },
      py::arg("sizes"),
      "Offsets modulo 64 bytes of a fresh packed-weight buffer (float), of the host's "
      "aligned scratch vectors (float, double) and of a packed bfloat16 weight buffer of each "
      "size: all 0 (csrc/host/gemm.h, gemm_bf16.h).");
  py::class_<HostBuffer>(m, "HostBuffer", py::buffer_protocol(),
                         "bytes (> 0) from the host buffer cache, writable, page-aligned; "
                         "given back to the cache when this object is freed")
      .def(py::init([](std::size_t bytes) {
             if (bytes == 0) throw std::invalid_argument("HostBuffer: bytes must be > 0");
             return std::make_unique<HostBuffer>(bytes);
           }),
           py::arg("bytes"))
      .def_property_readonly(
          "data_ptr", [](const HostBuffer& b) { return reinterpret_cast<uintptr_t>(b.block.data); })
      .def_buffer([](HostBuffer& b) {
        return py::buffer_info(b.block.data, 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.bytes)}, {py::ssize_t(1)});
      });
  m.def("host_cache_stats", [] {
    const auto s = fusedrnn::host::cache_stats();
    py::dict d;
    d["free_bytes"] = s.free_bytes;
    d["free_blocks"] = s.free_blocks;
    d["in_use_bytes"] = s.in_use_bytes;
    d["hits"] = s.hits;
    d["misses"] = s.misses;
    return d;
  }, "The host buffer cache's free / in-use bytes and hit / miss counts.");
  m.def("host_cache_set_limit", &fusedrnn::host::cache_set_limit, py::arg("bytes"),
        "The most free bytes the host buffer cache keeps (0: it keeps none).");
  m.def("host_cache_limit", &fusedrnn::host::cache_limit);
  m.def("host_bf16_variant", &fusedrnn::host::bf16_variant,
        "Which tier (amx-bf16, avx512-bf16, none = the float32 kernel) runs the host "
        "backend's bfloat16 recurrent products.");
  m.def(
      "host_choose_bf16_tier",
      [](bool cpu_has_v4, bool cpu_has_avx512bf16, bool cpu_has_amx, const std::string& request) {
        return std::string(fusedrnn::host::bf16_tier_name(fusedrnn::host::choose_bf16_tier(
            cpu_has_v4, cpu_has_avx512bf16, cpu_has_amx,
            request.empty() ? nullptr : request.c_str())));
      },
      py::arg("cpu_has_v4"), py::arg("cpu_has_avx512bf16"), py::arg("cpu_has_amx"),
      py::arg("request") = "",
      "The bf16 tier rule: the tier chosen for a CPU with these features and a "
      "FUSEDRNN_HOST_ISA value ('' = unset), before the AMX permission is asked.");
  m.def(
      "philox4x32_10",
      [](const py::int_& seed, const py::int_& offset) {
        const fusedrnn::Philox4 r = fusedrnn::philox4x32_10(low64(seed), low64(offset));
        return std::make_tuple(r.x[0], r.x[1], r.x[2], r.x[3]);
      },
      py::arg("seed"), py::arg("offset"),
      "The four uint32 Philox4x32-10 words for a 64-bit seed and offset.");
  m.def(
      "philox_uniform",
      [](const py::int_& seed, const std::vector<int64_t>& offsets) {
        const uint64_t key = low64(seed);
        std::vector<float> out(offsets.size());
        for (size_t i = 0; i < offsets.size(); ++i)
          out[i] = fusedrnn::philox_uniform(key, static_cast<uint64_t>(offsets[i]));
        return out;
      },
      py::arg("seed"), py::arg("offsets"),
      "tl.rand(seed, offset) for each int64 offset (float32 values as Python floats).");
  m.def(
      "philox4x32_10_block",
      [](const std::array<uint32_t, 4>& counter, const std::array<uint32_t, 2>& key) {
        const fusedrnn::Philox4 r = fusedrnn::philox4x32_10_block(
            fusedrnn::Philox4{{counter[0], counter[1], counter[2], counter[3]}}, key[0], key[1]);
        return std::make_tuple(r.x[0], r.x[1], r.x[2], r.x[3]);
      },
      py::arg("counter"), py::arg("key"),
      "Random123's philox4x32_10 for a full 4-word counter and 2-word key (known-answer tests).");
  // The kernels' own mask arithmetic (philox.cuh), so tests compare it with philox.py's layout.
  m.def(
      "mask_offset",
      [](const py::int_& base, const std::vector<int64_t>& t, const std::vector<int64_t>& b,
         const std::vector<int64_t>& unit) {
        if (t.size() != b.size() || t.size() != unit.size())
          throw std::invalid_argument("mask_offset: t, b and unit must have the same length");
        const uint64_t base64 = low64(base);
        std::vector<int64_t> out(t.size());
        for (size_t i = 0; i < t.size(); ++i)
          out[i] = static_cast<int64_t>(fusedrnn::mask_offset(base64, t[i], b[i], unit[i]));
        return out;
      },
      py::arg("base"), py::arg("t"), py::arg("b"), py::arg("unit"),
      "mask_offset(base, t, b, unit) of philox.cuh for each element, as int64 bit patterns.");
  m.def(
      "mask_uniform",
      [](const py::int_& seed, const py::int_& base, const std::vector<int64_t>& t,
         const std::vector<int64_t>& b, const std::vector<int64_t>& unit) {
        if (t.size() != b.size() || t.size() != unit.size())
          throw std::invalid_argument("mask_uniform: t, b and unit must have the same length");
        const uint64_t key = low64(seed);
        const uint64_t base64 = low64(base);
        std::vector<float> out(t.size());
        for (size_t i = 0; i < t.size(); ++i)
          out[i] = fusedrnn::mask_uniform(key, base64, t[i], b[i], unit[i]);
        return out;
      },
      py::arg("seed"), py::arg("base"), py::arg("t"), py::arg("b"), py::arg("unit"),
      "mask_uniform(seed, base, t, b, unit) of philox.cuh: the number the kernels compare to p.");
  m.def(
      "host_mask_below_rows",
      [](const py::int_& seed, const py::int_& base, int64_t t, int64_t rows, int64_t u0,
         int64_t n, float threshold) {
        if (rows < 0 || n < 0 || t < 0 || u0 < 0)
          throw std::invalid_argument("host_mask_below_rows: t, rows, u0 and n must be >= 0");
        std::vector<uint8_t> below(static_cast<size_t>(rows * n));
        fusedrnn::host::mask_below_rows(low64(seed), low64(base), t, rows, u0, n, threshold,
                                        below.data());
        return below;
      },
      py::arg("seed"), py::arg("base"), py::arg("t"), py::arg("rows"), py::arg("u0"),
      py::arg("n"), py::arg("threshold"),
      "The host's vectorised step-mask draw (the running FUSEDRNN_HOST_ISA build): row-major "
      "[rows][n] of mask_uniform(seed, base, t, b, u0 + k) < threshold as 0/1.");

  using F = RecurrenceFwdParams;
  py::class_<F>(m, "RecurrenceFwdParams")
      .def(py::init<>())
      .FRNN_RW(F, T).FRNN_RW(F, B).FRNN_RW(F, H).FRNN_RW(F, G).FRNN_RW(F, S)
      .FRNN_RW(F, proj_size)
      .FRNN_RW(F, cell).FRNN_RW(F, norm).FRNN_RW(F, dtype)
      .FRNN_RW(F, reverse).FRNN_RW(F, training)
      .FRNN_RW(F, p_dropout).FRNN_RW(F, p_zoneout_c).FRNN_RW(F, p_zoneout_h)
      .FRNN_U64(F, seed).FRNN_U64(F, base_dropout).FRNN_U64(F, base_zoneout_c)
      .FRNN_U64(F, base_zoneout_h).FRNN_RW(F, num_threads).FRNN_RW(F, allow_tf32)
      .FRNN_RW(F, fused_cell)
      .FRNN_RW(F, p_weight_drop).FRNN_U64(F, weight_drop_key).FRNN_U64(F, base_weight_drop)
      .FRNN_PTR(F, xg).FRNN_RW(F, xg_stride_t).FRNN_RW(F, xg_stride_b)
      .FRNN_PTR(F, h0).FRNN_PTR(F, c0).FRNN_PTR(F, w_hh).FRNN_PTR(F, b_hh)
      .FRNN_PTR(F, w_hr)
      .FRNN_PTR(F, lengths)
      .FRNN_PTR(F, norm_weight_hh).FRNN_PTR(F, norm_weight_c).FRNN_PTR(F, norm_bias_c)
      .FRNN_PTR(F, running_mean_hh).FRNN_PTR(F, running_var_hh)
      .FRNN_PTR(F, running_mean_c).FRNN_PTR(F, running_var_c)
      .FRNN_PTR(F, x).FRNN_RW(F, x_stride_t).FRNN_RW(F, x_stride_b)
      .FRNN_RW(F, input_size).FRNN_PTR(F, w_ih).FRNN_PTR(F, b_ih)
      .FRNN_PTR(F, out).FRNN_RW(F, out_stride_t).FRNN_RW(F, out_stride_b)
      .FRNN_PTR(F, h_n).FRNN_PTR(F, c_n)
      .FRNN_PTR(F, batch_mean_hh).FRNN_PTR(F, batch_var_hh)
      .FRNN_PTR(F, batch_mean_c).FRNN_PTR(F, batch_var_c)
      .FRNN_PTR(F, gates).FRNN_PTR(F, gru_hn).FRNN_PTR(F, xhat_hh).FRNN_PTR(F, rstd_hh)
      .FRNN_PTR(F, c_tilde).FRNN_PTR(F, c_state).FRNN_PTR(F, xhat_c).FRNN_PTR(F, rstd_c)
      .FRNN_PTR(F, h_state)
      .FRNN_PTR(F, ws_hin).FRNN_PTR(F, ws_stats).FRNN_PTR(F, ws_h_pre);

  using Bw = RecurrenceBwdParams;
  py::class_<Bw, F>(m, "RecurrenceBwdParams")
      .def(py::init<>())
      .FRNN_PTR(Bw, grad_out).FRNN_RW(Bw, grad_out_stride_t).FRNN_RW(Bw, grad_out_stride_b)
      .FRNN_PTR(Bw, grad_h_n).FRNN_PTR(Bw, grad_c_n)
      .FRNN_PTR(Bw, dxg).FRNN_PTR(Bw, dab).FRNN_PTR(Bw, da).FRNN_PTR(Bw, hin)
      .FRNN_PTR(Bw, dab_low).FRNN_PTR(Bw, hin_low)
      .FRNN_PTR(Bw, dc_out).FRNN_PTR(Bw, h_pre_proj).FRNN_PTR(Bw, dproj)
      .FRNN_PTR(Bw, dh0).FRNN_PTR(Bw, dc0);

  using W = fusedrnn::WeightDropParams;
  py::class_<W>(m, "WeightDropParams")
      .def(py::init<>())
      .FRNN_PTR(W, src).FRNN_PTR(W, dst).FRNN_RW(W, rows).FRNN_RW(W, cols).FRNN_RW(W, dtype)
      .FRNN_RW(W, p).FRNN_U64(W, key).FRNN_U64(W, base);
  m.def("host_weight_drop", &fusedrnn::host::weight_drop_apply, py::arg("params"),
        py::call_guard<py::gil_scoped_release>(),
        "dst = src * weight-drop mask (host pointers): masks dW_hh in place.");

  m.def("host_forward", &fusedrnn::host::recurrence_forward, py::arg("params"),
        py::call_guard<py::gil_scoped_release>(), "Host recurrence forward (host pointers).");
  m.def("host_xproj_in_loop_calls", &fusedrnn::host::xproj_in_loop_calls,
        "Host forward calls that computed x W_ih^T + b_ih in the step loop (for the tests).");
  m.def("host_row_split_calls", &fusedrnn::host::row_split_calls,
        "Host forward calls whose threads split the batch rows (for the tests).");
  m.def("host_one_row_pipeline_calls", &fusedrnn::host::one_row_pipeline_calls,
        "Host one-row forward calls whose input projection ran on a second thread ahead of "
        "the step loop (for the tests).");
  m.def("host_backward", &fusedrnn::host::recurrence_backward, py::arg("params"),
        py::call_guard<py::gil_scoped_release>(), "Host recurrence backward (host pointers).");

  // The CUDA launch plan and the tensor-core fragment layouts are plain C++ (launch_plan.h):
  // present in every build, so the CPU tests check them and the launcher plans before it
  // launches.
  m.def(
      "cuda_launch_plan",
      [](int64_t B, int64_t G, int64_t H, int64_t storage_bytes, bool backward,
         bool want_tensor_cores, int64_t sms, int64_t smem_per_block_optin, int64_t smem_per_sm,
         int64_t smem_reserved_per_block, int64_t max_threads_per_sm, bool want_fused_cell,
         int64_t proj) {
        fusedrnn::cuda::DeviceLimits d;
        d.sms = sms;
        d.smem_per_block_optin = smem_per_block_optin;
        d.smem_per_sm = smem_per_sm;
        d.smem_reserved_per_block = smem_reserved_per_block;
        d.max_threads_per_sm = max_threads_per_sm;
        fusedrnn::cuda::LaunchPlan plan = fusedrnn::cuda::plan_launch_for(
            d, B, G, H, storage_bytes, backward, want_tensor_cores, proj);
        if (want_fused_cell && proj == 0)
          plan = backward ? fusedrnn::cuda::plan_fused_cell_backward(plan)
                          : fusedrnn::cuda::plan_fused_cell(d, plan, B, G, H, storage_bytes);
        py::dict out;
        out["grid"] = plan.grid;
        out["hs"] = plan.hs;
        out["ps"] = plan.ps;
        out["w_in_smem"] = plan.w_in_smem;
        out["tensor_cores"] = plan.tensor_cores;
        out["k_chunk"] = plan.k_chunk;
        out["fused_cell"] = plan.fused_cell;
        out["smem_bytes"] = plan.smem_bytes;
        out["reason"] = plan.reason;
        return out;
      },
      py::arg("B"), py::arg("G"), py::arg("H"), py::arg("storage_bytes"), py::arg("backward"),
      py::arg("want_tensor_cores"), py::arg("sms"), py::arg("smem_per_block_optin"),
      py::arg("smem_per_sm"), py::arg("smem_reserved_per_block"), py::arg("max_threads_per_sm"),
      py::arg("want_fused_cell") = false, py::arg("proj") = 0,
      "The CUDA kernels' launch plan for these device limits (launch_plan.h plan_launch_for; "
"with want_fused_cell and no projection, plan_fused_cell / plan_fused_cell_backward).");
  m.def(
      "cuda_smem_plan",
      [](int64_t B, int64_t G, int64_t H, int64_t hs, int64_t storage_bytes, bool w_in_smem,
         int64_t k_chunk, bool backward, bool fused_cell, int64_t proj, int64_t ps) {
        const fusedrnn::cuda::SmemPlan s = fusedrnn::cuda::smem_plan(
            B, G, H, hs, storage_bytes, w_in_smem, k_chunk, backward, fused_cell, proj, ps);
        py::dict out;
        out["w_bytes"] = s.w_bytes;
        out["proj_w_off"] = s.proj_w_off;
        out["proj_w_bytes"] = s.proj_w_bytes;
        out["bar_off"] = s.bar_off;
        out["stage_off"] = s.stage_off;
        out["stages"] = s.stages;
        out["stage_ld"] = s.stage_ld;
        out["scratch_off"] = s.scratch_off;
        out["total"] = s.total;
        out["stage_barrier_bytes"] = fusedrnn::cuda::kStageBarrierBytes;
        return out;
      },
      py::arg("B"), py::arg("G"), py::arg("H"), py::arg("hs"), py::arg("storage_bytes"),
      py::arg("w_in_smem"), py::arg("k_chunk"), py::arg("backward"), py::arg("fused_cell") = false,
      py::arg("proj") = 0, py::arg("ps") = 0,
      "One block's shared-memory layout (launch_plan.h smem_plan): offsets of the W slices, the "
      "stage barriers, the operand stages and the split-K scratch.");
  m.def(
      "bulk_stage_cover",
      [](int nbr, int cols, int64_t K, int64_t k0, int per_vec) {
        // (row, first column, columns, is_copy) of each bulk copy and zero-fill vector.
        std::vector<std::tuple<int, int, int, bool>> out;
        const int valid = fusedrnn::cuda::bulk_valid_cols(cols, K, k0);
        for (int r = 0; r < nbr; ++r) out.emplace_back(r, 0, valid, true);
        const int n = fusedrnn::cuda::bulk_zero_vectors(nbr, cols, valid, per_vec);
        for (int v = 0; v < n; ++v) {
          const fusedrnn::cuda::StageVec z =
              fusedrnn::cuda::bulk_zero_vector(v, nbr, cols, valid, per_vec);
          out.emplace_back(z.r, z.c, per_vec, false);
        }
        return out;
      },
      py::arg("nbr"), py::arg("cols"), py::arg("K"), py::arg("k0"), py::arg("per_vec"),
      "sm_90's TMA staging of one chunk (launch_plan.h bulk_valid_cols, bulk_zero_vector): the "
      "bulk copies' and zero-fill vectors' (row, column, columns, is_copy).");
  m.def(
      "mma_fragment_map",
      [](const std::string& operand, const std::string& shape) {
        using fusedrnn::cuda::FragCoord;
        const bool k16 = shape == "m16n8k16";
        if (!k16 && shape != "m16n8k8_tf32")
          throw std::invalid_argument("mma_fragment_map: shape is m16n8k16 or m16n8k8_tf32");
        int elements;
        FragCoord (*map)(int, int);
        if (operand == "a") {
          elements = k16 ? 8 : 4;
          map = k16 ? &fusedrnn::cuda::mma_m16n8k16_a : &fusedrnn::cuda::mma_m16n8k8_tf32_a;
        } else if (operand == "b") {
          elements = k16 ? 4 : 2;
          map = k16 ? &fusedrnn::cuda::mma_m16n8k16_b : &fusedrnn::cuda::mma_m16n8k8_tf32_b;
        } else if (operand == "c") {
          elements = 4;
          map = &fusedrnn::cuda::mma_m16n8_c;
        } else {
          throw std::invalid_argument("mma_fragment_map: operand is 'a', 'b' or 'c'");
        }
        std::vector<std::vector<std::pair<int, int>>> lanes(32);
        for (int lane = 0; lane < 32; ++lane)
          for (int e = 0; e < elements; ++e) {
            const FragCoord c = map(lane, e);
            lanes[lane].emplace_back(c.row, c.col);
          }
        return lanes;
      },
      py::arg("operand"), py::arg("shape"),
      "[lane][element] -> (row, col) of the kernels' mma.sync fragments (launch_plan.h).");
  m.def(
      "mma_tile_split",
      [](int64_t rows, int64_t batch_rows) {
        const fusedrnn::cuda::TileSplit s = fusedrnn::cuda::tile_split(rows, batch_rows);
        return std::make_tuple(s.tiles, s.ksplit, s.slots);
      },
      py::arg("rows"), py::arg("batch_rows"),
      "(tiles, ksplit, slots) of the block product for one batch block (launch_plan.h).");

  m.def(
      "tc_product_owners",
      [](int64_t B, int64_t R) {
        // Enumerated as block_product_tc_each (tensor_core.cuh) walks its batch blocks, rounds,
        // warps, tiles and accumulator elements, with the same index functions: one record
        // (b, r, warp, lane, tile, e, m0, n0, b0, t0) per store(b, r, v) of one call.
        using namespace fusedrnn::cuda;
        std::vector<std::tuple<int64_t, int, int, int, int, int, int, int, int64_t, int>> out;
        for (int64_t b0 = 0; b0 < B; b0 += kBatchBlock) {
          const int nbr = static_cast<int>(B - b0 < kBatchBlock ? B - b0 : kBatchBlock);
          const TileSplit sp = tile_split(R, nbr);
          for (int t0 = 0; t0 < sp.tiles; t0 += sp.slots * kTilesPerWarp)
            for (int warp = 0; warp < kWarps; ++warp)
              for (int i = 0; i < kTilesPerWarp; ++i) {
                const int tile = tc_tile(sp, t0, warp, i);
                if (!tc_stores(sp, tile, warp)) continue;
                const TileOrigin org = tc_tile_origin(tile, R);
                for (int lane = 0; lane < kWarp; ++lane)
                  for (int e = 0; e < 4; ++e) {
                    const ProductOut o = tc_output(tile, R, lane, e);
                    if (o.r < R && o.n < nbr)
                      out.emplace_back(b0 + o.n, o.r, warp, lane, tile, e, org.m0, org.n0, b0, t0);
                  }
              }
        }
        return out;
      },
      py::arg("B"), py::arg("R"),
      "block_product_tc_each's stores for B batch rows and R rows of W: (b, r, warp, lane, "
      "tile, e, m0, n0, b0, t0) per store (launch_plan.h tc_tile / tc_stores / tc_output).");
  m.def(
      "fused_cell_rows",
      [](int64_t G, int64_t hl) {
        std::vector<std::pair<int, int64_t>> rows;
        for (int64_t r = 0; r < fusedrnn::cuda::fused_cell_rows(G, hl); ++r) {
          const fusedrnn::cuda::FusedRow f = fusedrnn::cuda::fused_cell_row(G, hl, r);
          rows.emplace_back(f.gate, f.unit);
        }
        return rows;
      },
      py::arg("G"), py::arg("hl"),
      "[row] -> (gate, unit) of the fused-cell forward's gate-interleaved W slice; (-1, -1) "
      "for a zero padding row (launch_plan.h fused_cell_row).");
  m.def(
      "fused_cell_map",
      [](int64_t G, int64_t hl, int64_t B) {
        // Enumerated as block_product_cell_tc (tensor_core.cuh) walks its work, with the same
        // index functions: one record per cell input the kernel's threads read.
        using namespace fusedrnn::cuda;
        py::list records;
        const int tiles = fused_cell_tiles(G);
        const int64_t groups = fused_cell_groups(hl);
        for (int64_t b0 = 0; b0 < B; b0 += kBatchBlock) {
          const int64_t nbr = B - b0 < kBatchBlock ? B - b0 : kBatchBlock;
          const TileSplit sp = fused_cell_split(groups, nbr);
          for (int item = 0; item < sp.tiles; ++item) {
            const int group = static_cast<int>(item % groups);
            const int n_tile = static_cast<int>(item / groups);
            const int warp = (item % sp.slots) * sp.ksplit;
            for (int lane = 0; lane < kWarp; ++lane) {
              const int64_t jj = fused_cell_unit(group, lane);
              for (int c = 0; c < 2; ++c) {
                const int n = fused_cell_batch(n_tile, lane, c);
                if (jj >= hl || n >= nbr) continue;
                for (int g = 0; g < G; ++g) {
                  const FusedAcc f = fused_cell_acc(g, c);
                  const FragCoord cc = mma_m16n8_c(lane, f.e);
                  py::dict r;
                  r["b0"] = b0;
                  r["item"] = item;
                  r["warp"] = warp;
                  r["lane"] = lane;
                  r["c"] = c;
                  r["gate"] = g;
                  r["unit"] = jj;
                  r["batch"] = b0 + n;
                  r["tile"] = group * tiles + f.tile;
                  r["e"] = f.e;
                  r["row"] = (group * tiles + f.tile) * 16 + cc.row;
                  r["col"] = b0 + n_tile * 8 + cc.col;
                  records.append(r);
                }
              }
            }
          }
        }
        return records;
      },
      py::arg("G"), py::arg("hl"), py::arg("B"),
      "The fused-cell forward's cell inputs: for each (batch block, work item, lane, column c, "
      "gate) the unit and batch row the thread attributes it to, and the accumulator tile, "
      "element and (row of the W slice, batch row) the C fragment layout puts there.");
  m.def(
      "fused_cell_split",
      [](int64_t groups, int64_t batch_rows) {
        const fusedrnn::cuda::TileSplit s = fusedrnn::cuda::fused_cell_split(groups, batch_rows);
        return std::make_tuple(s.tiles, s.ksplit, s.slots);
      },
      py::arg("groups"), py::arg("batch_rows"),
      "(work items, ksplit, slots) of the fused-cell product for one batch block.");

#if defined(FUSEDRNN_WITH_CUDA)
  m.def("cuda_forward", &fusedrnn::cuda::recurrence_forward, py::arg("params"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>(), "CUDA persistent recurrence forward.");
  m.def("cuda_backward", &fusedrnn::cuda::recurrence_backward, py::arg("params"),
        py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "CUDA persistent recurrence backward.");
  m.def(
      "cuda_plan_grid",
      [](const RecurrenceFwdParams& p, bool backward) {
        return fusedrnn::cuda::plan_grid(p, backward);
      },
      py::arg("params"), py::arg("backward") = false);
  m.def("cuda_device_status", &fusedrnn::cuda::device_status);
  m.def("cuda_weight_drop", &fusedrnn::cuda::weight_drop_apply, py::arg("params"),
        py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "dst = src * weight-drop mask on a stream: the effective W_hh, or dW_hh in place.");
#else
  m.def("cuda_forward", [](const RecurrenceFwdParams&, uintptr_t) { no_cuda(); });
  m.def("cuda_backward", [](const RecurrenceBwdParams&, uintptr_t) { no_cuda(); });
  m.def("cuda_plan_grid", [](const RecurrenceFwdParams&, bool) -> int64_t { no_cuda(); });
  m.def("cuda_weight_drop", [](const fusedrnn::WeightDropParams&, uintptr_t) { no_cuda(); });
  m.def("cuda_device_status",
        []() { return std::string("fusedrnn._C was built without CUDA (no nvcc at build time)"); });
#endif

  // Constants the Python package defines too (fusedrnn/backends/base.py, native.py,
  // philox.py): fusedrnn/backends/native.py compares them when it loads this module, so a
  // change on one side only fails loudly instead of computing something else.
  py::dict constants;
  constants["cell_codes"] = py::dict(
      py::arg("lstm") = static_cast<int>(fusedrnn::kCellLstm),
      py::arg("gru") = static_cast<int>(fusedrnn::kCellGru),
      py::arg("rnn_tanh") = static_cast<int>(fusedrnn::kCellRnnTanh),
      py::arg("rnn_relu") = static_cast<int>(fusedrnn::kCellRnnRelu));
  constants["norm_codes"] = py::dict(py::arg("none") = static_cast<int>(fusedrnn::kNormNone),
                                     py::arg("batch") = static_cast<int>(fusedrnn::kNormBatch),
                                     py::arg("layer") = static_cast<int>(fusedrnn::kNormLayer));
  constants["dtype_codes"] = py::dict(
      py::arg("float32") = static_cast<int>(fusedrnn::kFloat32),
      py::arg("float16") = static_cast<int>(fusedrnn::kFloat16),
      py::arg("bfloat16") = static_cast<int>(fusedrnn::kBFloat16),
      py::arg("float64") = static_cast<int>(fusedrnn::kFloat64));
  constants["norm_eps"] = fusedrnn::kNormEps;
  constants["philox_step_shift"] = fusedrnn::kStepShift;
  constants["philox_batch_shift"] = fusedrnn::kBatchShift;
  m.attr("constants") = constants;
}
