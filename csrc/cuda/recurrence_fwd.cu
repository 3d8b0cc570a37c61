// Forward persistent kernel: one cooperative launch runs all T steps of one layer-direction.
//
// The step loop is fusedrnn/step_loop.h's forward_steps(), shared with the host backend (which
// runs it on the CPU in CI); this file is its device policy. Block k owns hidden units [j0, j1)
// with all their G gates (so a block holds every batch row of its columns and batch-norm
// statistics are block-local). It keeps its W_hh rows in shared memory for the whole loop (or
// reads them from L2 when they do not fit), keeps h and c of its units in shared memory, and
// per step computes a = (m_h * h_{t-1}) W_hh^T for its columns, reading the full
// m_h * h_{t-1} from global memory (a double buffer every block writes its slice of): on
// tensor cores (block_product_tc, tensor_core.cuh) when the W slice is resident, else FP32
// FMA; layer-norm row statistics are partials of every block combined in one pass after a
// grid barrier; the blocks meet at grid.sync() once per step. With an LSTM projection
// (proj_size = P) a block also owns h units [q0, q0 + pl): the product's K is P, o tanh(c_out)
// of every block meets in the global ws_h_pre, and after one more grid barrier `project`
// computes the block's pl outputs with its W_hr rows (resident beside W_hh, or from L2).
#include <cooperative_groups.h>

#include "cuda/block_worker.cuh"
#include "cuda/kernel_common.cuh"
#include "cuda/recurrence_cuda.h"
#include "cuda/tensor_core.cuh"
#include "fusedrnn/step_loop.h"

namespace cg = cooperative_groups;

namespace fusedrnn {
namespace cuda {
namespace {

// The forward prologue's load of W_hh: the block's R = G*hl gate rows r = g*hl + jj (row
// g*H + j0 + jj of W_hh), each K long (the units of h: P with a projection, else H), into
// w_sm[r * w_ld + k], zero for K <= k < w_ld (the tensor-core padding). The one place W_hh
// enters shared memory in the forward kernel.
template <class S>
__device__ void load_w_hh_rows(S* w_sm, int64_t w_ld, const S* w, int64_t H, int64_t K,
                               int64_t hl, int64_t j0, int64_t R) {
  for (int64_t i = threadIdx.x; i < R * w_ld; i += blockDim.x) {
    const int64_t r = i / w_ld, k = i % w_ld;
    w_sm[i] = k < K ? w[((r / hl) * H + j0 + r % hl) * K + k] : from_acc<S>(0.f);
  }
}

// The forward prologue's load of W_hr (proj_size > 0): the block's pl rows W_hr[q0 + q][:]
// (its h units), each H long, into wr_sm[q * ld + k], zero for H <= k < ld.
template <class S>
__device__ void load_w_hr_rows(S* wr_sm, int64_t ld, const S* w_hr, int64_t H, int64_t q0,
                               int64_t pl) {
  for (int64_t i = threadIdx.x; i < pl * ld; i += blockDim.x) {
    const int64_t q = i / ld, k = i % ld;
    wr_sm[i] = k < H ? w_hr[(q0 + q) * H + k] : from_acc<S>(0.f);
  }
}

// The fused-cell prologue's load of W_hh: the block's fused_cell_rows(G, hl) gate-interleaved
// rows (launch_plan.h fused_cell_row: row -> gate g, unit jj, W_hh row g*H + j0 + jj; zero
// padding rows), zero-padded in k as load_w_hh_rows.
template <class S>
__device__ void load_w_hh_fused_rows(S* w_sm, int64_t w_ld, const S* w, int64_t H, int64_t G,
                                     int64_t hl, int64_t j0) {
  const int64_t rows = fused_cell_rows(G, hl);
  for (int64_t i = threadIdx.x; i < rows * w_ld; i += blockDim.x) {
    const int64_t k = i % w_ld;
    const FusedRow fr = fused_cell_row(G, hl, i / w_ld);
    w_sm[i] = k < H && fr.gate >= 0 ? w[(fr.gate * H + j0 + fr.unit) * H + k] : from_acc<S>(0.f);
  }
}

// The device policy of forward_steps (fusedrnn/step_loop.h): BlockWorker (block_worker.cuh)
// plus the recurrent product, the exchange of m_h ⊙ h and the layer-norm row statistics.
template <class S>
struct DeviceForwardPolicy : BlockWorker<S> {
  int64_t B, H, R;
  int64_t P;  // units of h, the product's K: proj_size with a projection, else H
  // The product (see recurrence_forward_kernel's arguments and smem_plan).
  const S* w;         // W_hh in global memory (the L2 path)
  const S* w_sm;      // the block's W_hh rows in shared memory, row stride w_ld
  int64_t w_ld, stage_ld, k_chunk;
  bool tensor_cores, w_in_smem, half_exchange, vec16;
  float* stage;
  float* scratch;
  float* hin;  // [2][B][H] exchange: fp32, or S when half_exchange
  float4* stats;  // [2][B][grid] layer-norm partials
  // The projection (proj_size > 0; see smem_plan): W_hr, the block's rows of it in shared
  // memory (row stride proj_w_ld) and its operand chunks of proj_k_chunk fp32 columns.
  const S* w_hr;
  const S* wr_sm;
  int64_t proj_w_ld, proj_k_chunk, proj_stage_ld;
  bool proj_vec16;

  __device__ void recurrent_product(int64_t s, float* a) const {
    const float* hin_cur = hin + (s & 1) * B * P;
    if (half_exchange) {
      block_product_tc(B, static_cast<int>(R), P,
                       reinterpret_cast<const S*>(hin) + (s & 1) * B * P, P, vec16, w_sm, w_ld,
                       static_cast<int>(k_chunk), static_cast<int>(stage_ld), a,
                       reinterpret_cast<S*>(stage), scratch);
    } else if (tensor_cores) {
      block_product_tc(B, static_cast<int>(R), P, hin_cur, P, vec16, w_sm, w_ld,
                       static_cast<int>(k_chunk), static_cast<int>(stage_ld), a, stage, scratch);
    } else if (w_in_smem) {
      const S* ws = w_sm;
      const int64_t ld = w_ld;
      block_matvec(B, R, P, hin_cur, P,
                   [&](int64_t r, int64_t k) { return to_acc(ws[r * ld + k]); }, a);
    } else {
      const S* wg = w;
      const int64_t hs = this->hl, h = H, first = this->j0, k_len = P;
      block_matvec(B, R, P, hin_cur, P, [&](int64_t r, int64_t k) {
        return to_acc(wg[((r / hs) * h + first + r % hs) * k_len + k]);
      }, a);
    }
    __syncthreads();
  }
  // h_proj[b * pl + q] = Σ_j h_pre[b * H + j] W_hr[q0 + q][j]: h_pre (global, fp32) holds every
  // block's o tanh(c_out) (the step loop's sync_all precedes this). The same products as the
  // recurrent one: tensor cores on the resident W_hr rows (the fp32 operand rounded to S, or
  // TF32), else exact FP32 FMA from shared memory or L2. A block that owns no h unit (P <
  // grid) has nothing to compute.
  __device__ void project(const float* h_pre, float* h_proj) const {
    const int64_t pl = this->pl;
    if (pl == 0) return;
    if (tensor_cores) {
      block_product_tc(B, static_cast<int>(pl), H, h_pre, H, proj_vec16, wr_sm, proj_w_ld,
                       static_cast<int>(proj_k_chunk), static_cast<int>(proj_stage_ld), h_proj,
                       stage, scratch);
    } else if (w_in_smem) {
      const S* ws = wr_sm;
      const int64_t ld = proj_w_ld;
      block_matvec(B, pl, H, h_pre, H,
                   [&](int64_t q, int64_t k) { return to_acc(ws[q * ld + k]); }, h_proj);
    } else {
      const S* wg = w_hr;
      const int64_t h = H, first = this->q0;
      block_matvec(B, pl, H, h_pre, H,
                   [&](int64_t q, int64_t k) { return to_acc(wg[(first + q) * h + k]); },
                   h_proj);
    }
    __syncthreads();
  }
  __device__ void publish(int64_t buffer, int64_t b, int64_t q, float v) const {
    const int64_t i = (buffer * B + b) * P + q;
    if (half_exchange) {
      reinterpret_cast<S*>(hin)[i] = from_acc<S>(v);
    } else {
      hin[i] = v;
    }
  }
  // One warp per row: the block's partial (count, mean, M2) into stats, a grid barrier, then
  // merge_row_mean_m2 over all blocks' partials of the row (kernel_common.cuh).
  __device__ void row_stats(int which, const float* x, int64_t ld, int64_t cols, int64_t total,
                            float* mean, float* rstd) {
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    const int warps = blockDim.x / kWarp;
    const int64_t nblk = gridDim.x;
    float4* part = stats + which * B * nblk;
    for (int64_t b = warp; b < B; b += warps) {
      float sum = 0.f;
      for (int64_t c = lane; c < cols; c += kWarp) sum += x[b * ld + c];
      const float m = warp_sum(sum) / static_cast<float>(cols);
      float m2 = 0.f;
      for (int64_t c = lane; c < cols; c += kWarp) {
        const float d = x[b * ld + c] - m;
        m2 += d * d;
      }
      m2 = warp_sum(m2);
      if (lane == 0)
        part[b * nblk + blockIdx.x] = make_float4(static_cast<float>(cols), m, m2, 0.f);
    }
    this->grid.sync();
    for (int64_t b = warp; b < B; b += warps) {
      const MeanM2<float> m = merge_row_mean_m2(part + b * nblk, nblk, lane);
      if (lane == 0) {
        mean[b] = m.mean;
        rstd[b] = norm_rstd(m.m2 / static_cast<float>(total));
      }
    }
    __syncthreads();
  }
};

// The policy of the fused-cell forward (the launcher's plan_fused_cell): forward_steps runs
// product_and_cell instead of the phased steps (step_loop.h), on the gate-interleaved W slice.
template <class S>
struct DeviceFusedCellPolicy : DeviceForwardPolicy<S> {
  static constexpr bool kFusedCell = true;
  int64_t G;

  template <class Cell>
  __device__ void product_and_cell(int64_t s, float*, Cell cell) const {
    const int g = static_cast<int>(G), hl = static_cast<int>(this->hl);
    const int k_chunk = static_cast<int>(this->k_chunk), ld = static_cast<int>(this->stage_ld);
    const int64_t H = this->H, offset = (s & 1) * this->B * H;
    if (this->half_exchange) {
      block_product_cell_tc(this->B, g, hl, H, reinterpret_cast<const S*>(this->hin) + offset, H,
                            this->vec16, this->w_sm, this->w_ld, k_chunk, ld,
                            reinterpret_cast<S*>(this->stage), this->scratch, cell);
    } else {
      block_product_cell_tc(this->B, g, hl, H, this->hin + offset, H, this->vec16, this->w_sm,
                            this->w_ld, k_chunk, ld, this->stage, this->scratch, cell);
    }
  }
};

// kFusedCell: the fused-cell forward (plan.fused_cell), with DeviceFusedCellPolicy and the
// gate-interleaved W slice; else the phased forward. One block per SM (plan_launch's grid), as
// the backward kernel: the fused form holds two tiles' accumulators and the cell's values at
// once, and the phased form inlines the projection's second product; ptxas otherwise capped
// both at 128 registers and spilled.
template <class S, bool kFusedCell = false>
__global__ void __launch_bounds__(kThreads, 1)
    recurrence_forward_kernel(const RecurrenceFwdParams p, const int64_t hs, const bool w_in_smem,
                              const int64_t k_chunk) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t nblk = gridDim.x, blk = blockIdx.x;
  const int64_t B = p.B, H = p.H, G = p.G;
  const int64_t j0 = H * blk / nblk, j1 = H * (blk + 1) / nblk, hl = j1 - j0, R = G * hl;
  // Own h units: a slice of the projection's P outputs (ps = plan_launch_for's), else j0..j1.
  const int64_t proj = p.proj_size, P = proj > 0 ? proj : H;
  const int64_t ps = proj > 0 ? (proj + nblk - 1) / nblk : 0;
  const int64_t q0 = proj > 0 ? P * blk / nblk : j0, pl = proj > 0 ? P * (blk + 1) / nblk - q0 : hl;
  const SmemPlan plan =
      smem_plan(B, G, H, hs, sizeof(S), w_in_smem, k_chunk, false, kFusedCell, proj, ps);
  S* w_sm = reinterpret_cast<S*>(smem);
  S* wr_sm = reinterpret_cast<S*>(smem + plan.proj_w_off);  // [pl][proj_w_ld] own W_hr rows
  float* units = reinterpret_cast<float*>(smem + plan.unit_off);
  float* col_stats = reinterpret_cast<float*>(smem + plan.col_off);  // [2][G*hs]
  float* row_stats = reinterpret_cast<float*>(smem + plan.row_off);  // [2][B]
  ForwardScratch<float> scratch;
  const int64_t u = plan.unit_ld;
  scratch.a = reinterpret_cast<float*>(smem + plan.a_off);  // [B][R]
  scratch.h = units;
  scratch.c = units + 1 * B * u;
  scratch.ct = units + 2 * B * u;
  scratch.co = units + 3 * B * u;
  scratch.mh = units + 4 * B * u;
  scratch.h_proj = units + 5 * B * u;                    // (proj) [B][pl]
  scratch.h_pre = static_cast<float*>(p.ws_h_pre);        // (proj) [B][H], global
  scratch.col_mean = col_stats;
  scratch.col_rstd = col_stats + G * hs;
  scratch.row_mean = row_stats;
  scratch.row_rstd = row_stats + B;

  const S* w = static_cast<const S*>(p.w_hh);
  float* hin = static_cast<float*>(p.ws_hin);
  const bool tensor_cores = k_chunk > 0;
  // The exchange is S when a 16-bit S runs on tensor cores (the product rounds it to S
  // anyway; half the bytes every block reads each step), else fp32.
  const bool half_exchange = !std::is_same<S, float>::value && tensor_cores;
  // cp.async needs 16-byte rows and chunks of the exchange buffer.
  const bool vec16 =
      P % (half_exchange ? 8 : 4) == 0 && reinterpret_cast<uintptr_t>(hin) % 16 == 0;
  const S* w_hr = static_cast<const S*>(p.w_hr);
  const bool proj_vec16 = H % 4 == 0 && reinterpret_cast<uintptr_t>(p.ws_h_pre) % 16 == 0;
  DeviceForwardPolicy<S> policy{{j0, hl, q0, pl, cg::this_grid()},
                                B, H, R, P, w, w_sm,
                                plan.w_ld, plan.stage_ld, k_chunk, tensor_cores, w_in_smem,
                                half_exchange, vec16,
                                reinterpret_cast<float*>(smem + plan.stage_off),
                                reinterpret_cast<float*>(smem + plan.scratch_off), hin,
                                static_cast<float4*>(p.ws_stats), w_hr, wr_sm, plan.proj_w_ld,
                                plan.proj_k_chunk, plan.proj_stage_ld, proj_vec16};
  // sm_90 stages the operand by TMA bulk copies completing on mbarriers (tensor_core.cuh).
  if (k_chunk > 0) init_stage_barriers(smem + plan.stage_off);
  if constexpr (kFusedCell) {  // never with a projection (fused_cell_applies)
    load_w_hh_fused_rows(w_sm, plan.w_ld, w, H, G, hl, j0);
    DeviceFusedCellPolicy<S> fused{policy, G};
    forward_steps(fused, p, scratch);
  } else {
    if (w_in_smem) load_w_hh_rows(w_sm, plan.w_ld, w, H, P, hl, j0, R);
    if (w_in_smem && proj > 0) load_w_hr_rows(wr_sm, plan.proj_w_ld, w_hr, H, q0, pl);
    forward_steps(policy, p, scratch);
  }
}

// Tensor cores for bf16 / fp16 always, for float32 when TF32 is allowed (docs/kernels-v2.md
// §2: the launcher reads torch's cuDNN RNN flag once per call into p.allow_tf32).
template <class S>
LaunchPlan plan_for(const RecurrenceFwdParams& p) {
  const bool want_tensor_cores = !std::is_same<S, float>::value || p.allow_tf32;
  return plan_launch(reinterpret_cast<const void*>(&recurrence_forward_kernel<S>), p.B, p.G, p.H,
                     sizeof(S), false, want_tensor_cores, p.proj_size);
}

LaunchPlan plan_dispatch(const RecurrenceFwdParams& p) {
  switch (p.dtype) {
    case kFloat32:
      return plan_for<float>(p);
    case kFloat16:
      return plan_for<__half>(p);
    case kBFloat16:
      return plan_for<__nv_bfloat16>(p);
    default:
      throw std::invalid_argument("fusedrnn cuda: dtype must be float32, float16 or bfloat16");
  }
}

template <class S>
void launch(const RecurrenceFwdParams& p, cudaStream_t stream) {
  LaunchPlan plan = plan_for<S>(p);
  const void* kernel = reinterpret_cast<const void*>(&recurrence_forward_kernel<S>);
  if (fused_cell_applies(p)) {
    const void* fused = reinterpret_cast<const void*>(&recurrence_forward_kernel<S, true>);
    plan = plan_launch_fused_cell(fused, plan, p.B, p.G, p.H, sizeof(S));
    if (plan.fused_cell) kernel = fused;
  }
  RecurrenceFwdParams params = p;
  int64_t hs = plan.hs;
  bool w_in_smem = plan.w_in_smem;
  int64_t k_chunk = plan.k_chunk;
  void* args[] = {&params, &hs, &w_in_smem, &k_chunk};
  FRNN_CUDA_CHECK(cudaLaunchCooperativeKernel(
      kernel,
      dim3(static_cast<unsigned>(plan.grid)), dim3(kThreads), args,
      static_cast<size_t>(plan.smem_bytes), stream));
  FRNN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

int64_t plan_forward_grid(const RecurrenceFwdParams& p) { return plan_dispatch(p).grid; }

void recurrence_forward(const RecurrenceFwdParams& p, uintptr_t stream_handle) {
  if (p.cell == kCellLstm && p.H > 0 && p.G != 4) throw std::invalid_argument("lstm needs G=4");
  if (p.proj_size > 0 && (p.cell != kCellLstm || p.ws_h_pre == nullptr))
    throw std::invalid_argument("fusedrnn cuda: proj_size needs the lstm cell and ws_h_pre");
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  switch (p.dtype) {
    case kFloat32:
      return launch<float>(p, stream);
    case kFloat16:
      return launch<__half>(p, stream);
    case kBFloat16:
      return launch<__nv_bfloat16>(p, stream);
    default:
      throw std::invalid_argument("fusedrnn cuda: dtype must be float32, float16 or bfloat16");
  }
}

}  // namespace cuda
}  // namespace fusedrnn
