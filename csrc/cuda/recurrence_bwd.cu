// Backward persistent kernel: the forward loop in reverse time order, one cooperative launch.
//
// The step loop is fusedrnn/step_loop.h's backward_steps(), shared with the host backend (which
// runs it on the CPU in CI); this file is its device policy. Block k owns hidden units [j0, j1)
// as in the forward kernel and keeps the columns W_hh[:, j0:j1] (transposed) in shared memory
// (or reads them from L2 when they do not fit). Per step (latest forward step first) it computes
// d(gates) of its units for every row from d(h_t), d(c_t) and the saved forward quantities
// (h_{t-1} from the saved h_state at accumulation precision for 16-bit storage, masks
// regenerated from Philox), the normalisation backward (batch norm block-local, layer norm
// partials of every block summed after a grid barrier), writes dxg, d(N_hh(a) + b) and d(a)
// for its columns, then after grid.sync() d(h_{t-1}) of its units = direct terms +
// m_h * (d(a) W_hh)[:, own], reading the full d(a) row of the step from global memory: on
// tensor cores (block_product_tc, tensor_core.cuh) when the W slice is resident, else FP32 FMA.
// Without a norm or a projection, on tensor cores (plan_fused_cell_backward), the fused form
// runs instead: each thread takes the product's accumulators it holds (one d(h_{t-1}) value
// per own unit and batch row) and runs that element's cell backward of the next step on them,
// one grid barrier per step (step_loop.h fused_cell_backward_step).
// Weight gradients are one GEMM afterwards (in the Python launcher): dW_hh = d(a)^T (m_h h).
// With an LSTM projection (proj_size = P) the product's rows are the block's h units [q0, q0 +
// pl) (W_hh is [G*H, P]); d(h~) of them goes to dproj, and after one more grid barrier
// `project_backward` gives d(o tanh c_out) of the block's cell units from its W_hr columns;
// dW_hr = dproj^T h_pre_proj is the launcher's second GEMM.
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

// The backward prologue's load of W_hh ([N, P], P = H without a projection): the block's
// columns W_hh[:, q0 + kk] for its pl h units kk < pl, transposed, into wt_sm[kk * w_ld + n]
// for n < N = G*H, zero for N <= n < w_ld (the tensor-core padding). The one place W_hh
// enters shared memory in the backward kernel.
template <class S>
__device__ void load_w_hh_cols(S* wt_sm, int64_t w_ld, const S* w, int64_t P, int64_t N,
                               int64_t pl, int64_t q0) {
  for (int64_t i = threadIdx.x; i < pl * w_ld; i += blockDim.x) {
    const int64_t kk = i / w_ld, n = i % w_ld;
    wt_sm[i] = n < N ? w[n * P + q0 + kk] : from_acc<S>(0.f);
  }
}

// The backward prologue's load of W_hr ([P, H], proj_size > 0): the block's cell units'
// columns W_hr[:, j0 + jj], jj < hl, transposed, into wrt_sm[jj * ld + q] for q < P, zero for
// P <= q < ld.
template <class S>
__device__ void load_w_hr_cols(S* wrt_sm, int64_t ld, const S* w_hr, int64_t H, int64_t P,
                               int64_t hl, int64_t j0) {
  for (int64_t i = threadIdx.x; i < hl * ld; i += blockDim.x) {
    const int64_t jj = i / ld, q = i % ld;
    wrt_sm[i] = q < P ? w_hr[q * H + j0 + jj] : from_acc<S>(0.f);
  }
}

// The device policy of backward_steps (fusedrnn/step_loop.h): BlockWorker (block_worker.cuh)
// plus the product d(a) W_hh of the block's units and the layer-norm row sums.
template <class S>
struct DeviceBackwardPolicy : BlockWorker<S> {
  int64_t B, H, N;
  int64_t P;  // units of h (W_hh's columns): proj_size with a projection, else H
  // The product (see recurrence_backward_kernel's arguments and smem_plan).
  const S* w;     // W_hh in global memory (the L2 path)
  const S* wt_sm;  // the block's W_hh columns, transposed, in shared memory, row stride w_ld
  int64_t w_ld, stage_ld, k_chunk;
  bool tensor_cores, w_in_smem, vec16;
  float* stage;
  float* scratch;
  float4* stats;  // [2][B][grid] layer-norm partials
  // The projection (proj_size > 0; see smem_plan): W_hr, the block's cell units' columns of it
  // transposed in shared memory (row stride proj_w_ld), its operand chunks of proj_k_chunk
  // fp32 columns.
  const S* w_hr;
  const S* wrt_sm;
  int64_t proj_w_ld, proj_k_chunk, proj_stage_ld;
  bool proj_vec16;

  // d[b * pl + kk] = Σ_n da_t[b * N + n] W_hh[n][q0 + kk] for the block's pl h units (none
  // when a projection has fewer outputs than the grid has blocks).
  __device__ void backward_product(const float* da_t, float* d) const {
    const int64_t rows = this->pl;
    if (rows == 0) return;
    if (tensor_cores) {
      block_product_tc(B, static_cast<int>(rows), N, da_t, N, vec16, wt_sm, w_ld,
                       static_cast<int>(k_chunk), static_cast<int>(stage_ld), d, stage, scratch);
    } else if (w_in_smem) {
      const S* ws = wt_sm;
      const int64_t ld = w_ld;
      block_matvec(B, rows, N, da_t, N,
                   [&](int64_t kk, int64_t n) { return to_acc(ws[kk * ld + n]); }, d);
    } else {
      const S* wg = w;
      const int64_t cols = P, first = this->q0;
      block_matvec(B, rows, N, da_t, N,
                   [&](int64_t kk, int64_t n) { return to_acc(wg[n * cols + first + kk]); }, d);
    }
    __syncthreads();
  }
  // d[b * hl + jj] = Σ_q dproj_t[b * P + q] W_hr[q][j0 + jj]: d(o tanh c_out) of the block's
  // cell units from every block's d(h~) of the step (global, fp32; the step loop's sync_all
  // precedes this). Tensor cores on the resident W_hr columns, else exact FP32 FMA from shared
  // memory or L2, as backward_product.
  __device__ void project_backward(const float* dproj_t, float* d) const {
    const int64_t hl = this->hl;
    if (tensor_cores) {
      block_product_tc(B, static_cast<int>(hl), P, dproj_t, P, proj_vec16, wrt_sm, proj_w_ld,
                       static_cast<int>(proj_k_chunk), static_cast<int>(proj_stage_ld), d, stage,
                       scratch);
    } else if (w_in_smem) {
      const S* ws = wrt_sm;
      const int64_t ld = proj_w_ld;
      block_matvec(B, hl, P, dproj_t, P,
                   [&](int64_t jj, int64_t q) { return to_acc(ws[jj * ld + q]); }, d);
    } else {
      const S* wg = w_hr;
      const int64_t h = H, first = this->j0;
      block_matvec(B, hl, P, dproj_t, P,
                   [&](int64_t jj, int64_t q) { return to_acc(wg[q * h + first + jj]); }, d);
    }
    __syncthreads();
  }
  // One warp per row: the block's partial sums into stats, a grid barrier, then
  // sum_row_partials over all blocks' partials of the row (kernel_common.cuh).
  template <class F>
  __device__ void row_sums(int which, int64_t cols, float inv_total, F f, float* shift,
                           float* m2) {
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    const int warps = blockDim.x / kWarp;
    const int64_t nblk = gridDim.x;
    float4* part = stats + which * B * nblk;
    for (int64_t b = warp; b < B; b += warps) {
      float x = 0.f, y = 0.f, z = 0.f;
      for (int64_t c = lane; c < cols; c += kWarp) {
        const NormSums<float> v = f(b, c);
        x += v.dx;
        y += v.dx_xhat;
        z += v.xhat;
      }
      x = warp_sum(x);
      y = warp_sum(y);
      z = warp_sum(z);
      if (lane == 0) part[b * nblk + blockIdx.x] = make_float4(x, y, z, 0.f);
    }
    this->grid.sync();
    for (int64_t b = warp; b < B; b += warps) {
      const float3 sums = sum_row_partials(part + b * nblk, nblk, lane);
      if (lane == 0) {
        m2[b] = sums.y * inv_total;
        shift[b] = norm_backward_shift(sums.x * inv_total, m2[b], sums.z * inv_total);
      }
    }
    __syncthreads();
  }
};

// The policy of the fused-cell backward (the launcher's plan_fused_cell_backward): backward_steps
// runs product_and_cell_backward instead of the phased steps (step_loop.h). The product's C
// fragment holds one d(h_{t-1}) recurrent value per (own unit, batch row), so the cell backward
// of that element runs on it in the thread that holds it (block_product_tc_each).
template <class S>
struct DeviceFusedCellBackwardPolicy : DeviceBackwardPolicy<S> {
  static constexpr bool kFusedCellBackward = true;

  template <class Cell>
  __device__ void product_and_cell_backward(const float* da_t, Cell cell) const {
    const int rows = static_cast<int>(this->pl);
    if (rows == 0) return;
    block_product_tc_each(this->B, rows, this->N, da_t, this->N, this->vec16, this->wt_sm,
                          this->w_ld, static_cast<int>(this->k_chunk),
                          static_cast<int>(this->stage_ld), this->stage, this->scratch,
                          [&](int64_t b, int jj, float v) { cell(b, jj, v); });
  }
};

// One block per SM (plan_launch's grid): the `1` tells ptxas so, which lets it keep the step
// loop's state in registers; without it ptxas capped the 16-bit instances at 80 registers and
// spilled. kFusedCell: the fused-cell backward (plan.fused_cell) with
// DeviceFusedCellBackwardPolicy, else the phased backward.
template <class S, bool kFusedCell = false>
__global__ void __launch_bounds__(kThreads, 1)
    recurrence_backward_kernel(const RecurrenceBwdParams p, const int64_t hs, const bool w_in_smem,
                               const int64_t k_chunk) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t nblk = gridDim.x, blk = blockIdx.x;
  const int64_t B = p.B, H = p.H, G = p.G, N = G * H;
  const int64_t j0 = H * blk / nblk, j1 = H * (blk + 1) / nblk, hl = j1 - j0;
  // Own h units: a slice of the projection's P outputs (ps = plan_launch_for's), else j0..j1.
  const int64_t proj = p.proj_size, P = proj > 0 ? proj : H;
  const int64_t ps = proj > 0 ? (proj + nblk - 1) / nblk : 0;
  const int64_t q0 = proj > 0 ? P * blk / nblk : j0, pl = proj > 0 ? P * (blk + 1) / nblk - q0 : hl;
  const SmemPlan plan = smem_plan(B, G, H, hs, sizeof(S), w_in_smem, k_chunk, true, false, proj, ps);
  S* wt_sm = reinterpret_cast<S*>(smem);  // [pl][w_ld] W^T of own h units
  S* wrt_sm = reinterpret_cast<S*>(smem + plan.proj_w_off);  // [hl][proj_w_ld] W_hr^T
  float* units = reinterpret_cast<float*>(smem + plan.unit_off);
  float* col_stats = reinterpret_cast<float*>(smem + plan.col_off);  // [2][G*hs]
  float* row_stats = reinterpret_cast<float*>(smem + plan.row_off);  // [2][B]
  BackwardScratch<float> scratch;
  const int64_t u = plan.unit_ld;
  scratch.dab = reinterpret_cast<float*>(smem + plan.a_off);  // [B][R]
  scratch.dh = units;
  scratch.dc = units + 1 * B * u;
  scratch.dh_prev = units + 2 * B * u;
  scratch.dc_prev = units + 3 * B * u;
  scratch.dhtil = units + 4 * B * u;
  scratch.dctil = units + 5 * B * u;
  scratch.dco = units + 6 * B * u;
  scratch.mh = units + 7 * B * u;
  scratch.dhin = units + 8 * B * u;
  scratch.dhtil_cell = units + 9 * B * u;  // (proj) [B][hl]
  scratch.col_a = col_stats;
  scratch.col_b = col_stats + G * hs;
  scratch.row_a = row_stats;
  scratch.row_b = row_stats + B;

  const S* w = static_cast<const S*>(p.w_hh);
  const float* da = static_cast<const float*>(p.da != nullptr ? p.da : p.dab);
  // cp.async needs 16-byte rows and chunks of d(a).
  const bool vec16 = N % 4 == 0 && reinterpret_cast<uintptr_t>(da) % 16 == 0;
  const S* w_hr = static_cast<const S*>(p.w_hr);
  // d(h~) rows of P fp32 columns; a step's block starts at t*B*P floats (16-byte aligned too).
  const bool proj_vec16 = P % 4 == 0 && reinterpret_cast<uintptr_t>(p.dproj) % 16 == 0;
  if (w_in_smem) load_w_hh_cols(wt_sm, plan.w_ld, w, P, N, pl, q0);
  if (w_in_smem && proj > 0) load_w_hr_cols(wrt_sm, plan.proj_w_ld, w_hr, H, P, hl, j0);

  DeviceBackwardPolicy<S> policy{{j0, hl, q0, pl, cg::this_grid()},
                                 B, H, N, P, w, wt_sm,
                                 plan.w_ld, plan.stage_ld, k_chunk, k_chunk > 0, w_in_smem,
                                 vec16, reinterpret_cast<float*>(smem + plan.stage_off),
                                 reinterpret_cast<float*>(smem + plan.scratch_off),
                                 static_cast<float4*>(p.ws_stats), w_hr, wrt_sm,
                                 plan.proj_w_ld, plan.proj_k_chunk, plan.proj_stage_ld,
                                 proj_vec16};
  // sm_90 stages the operand by TMA bulk copies completing on mbarriers (tensor_core.cuh).
  if (k_chunk > 0) init_stage_barriers(smem + plan.stage_off);
  if constexpr (kFusedCell) {  // never with a projection (fused_cell_applies)
    DeviceFusedCellBackwardPolicy<S> fused{policy};
    backward_steps(fused, p, scratch);
  } else {
    backward_steps(policy, p, scratch);
  }
}

// Tensor cores as in the forward kernel (bf16 / fp16 always, float32 under p.allow_tf32).
template <class S>
LaunchPlan plan_for(const RecurrenceFwdParams& p) {
  const bool want_tensor_cores = !std::is_same<S, float>::value || p.allow_tf32;
  return plan_launch(reinterpret_cast<const void*>(&recurrence_backward_kernel<S>), p.B, p.G, p.H,
                     sizeof(S), true, want_tensor_cores, p.proj_size);
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
void launch(const RecurrenceBwdParams& p, cudaStream_t stream) {
  LaunchPlan plan = plan_for<S>(p);
  const void* kernel = reinterpret_cast<const void*>(&recurrence_backward_kernel<S>);
  if (fused_cell_applies(p)) {
    const void* fused = reinterpret_cast<const void*>(&recurrence_backward_kernel<S, true>);
    plan = plan_launch_fused_cell_backward(fused, plan);
    if (plan.fused_cell) kernel = fused;
  }
  RecurrenceBwdParams params = p;
  int64_t hs = plan.hs;
  bool w_in_smem = plan.w_in_smem;
  int64_t k_chunk = plan.k_chunk;
  void* args[] = {&params, &hs, &w_in_smem, &k_chunk};
  FRNN_CUDA_CHECK(cudaLaunchCooperativeKernel(
      kernel, dim3(static_cast<unsigned>(plan.grid)), dim3(kThreads), args,
      static_cast<size_t>(plan.smem_bytes), stream));
  FRNN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

int64_t plan_backward_grid(const RecurrenceFwdParams& p) { return plan_dispatch(p).grid; }

void recurrence_backward(const RecurrenceBwdParams& p, uintptr_t stream_handle) {
  if (p.proj_size > 0 && (p.cell != kCellLstm || p.h_pre_proj == nullptr || p.dproj == nullptr))
    throw std::invalid_argument("fusedrnn cuda: proj_size needs the lstm cell, h_pre_proj, dproj");
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
