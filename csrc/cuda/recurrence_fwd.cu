// Forward persistent kernel: one cooperative launch runs all T steps of one layer-direction.
//
// Block k owns hidden units [j0, j1) with all their G gates (so a block holds every batch row
// of its columns and batch-norm statistics are block-local). It keeps its W_hh rows in shared
// memory for the whole loop (or reads them from L2 when they do not fit), keeps h and c of its
// units in shared memory, and per step:
//   1. a = (m_h * h_{t-1}) W_hh^T for its columns, reading the full m_h * h_{t-1} from global
//      memory (a double buffer every block writes its slice of): on tensor cores
//      (block_product_tc, tensor_core.cuh) when the W slice is resident, else FP32 FMA,
//   2. normalises a (batch norm: block-local; layer norm: partial row statistics of every
//      block combined in one pass after a grid barrier), adds b_hh,
//   3. runs the cell (cells.cuh), normalises c~, applies zoneout (Philox, in-kernel), writes
//      h_t, the saved quantities for backward and its slice of m_h * h_t,
//   4. meets the other blocks at grid.sync().
#include <cooperative_groups.h>

#include "cuda/kernel_common.cuh"
#include "cuda/recurrence_cuda.h"
#include "cuda/tensor_core.cuh"

namespace cg = cooperative_groups;

namespace fusedrnn {
namespace cuda {
namespace {

// The forward prologue's load of W_hh: the block's R = G*hl gate rows r = g*hl + jj (row
// g*H + j0 + jj of W_hh), each K = H long, into w_sm[r * w_ld + k], zero for H <= k < w_ld
// (the tensor-core padding). The one place W_hh enters shared memory in the forward kernel.
template <class S>
__device__ void load_w_hh_rows(S* w_sm, int64_t w_ld, const S* w, int64_t H, int64_t hl,
                               int64_t j0, int64_t R) {
  for (int64_t i = threadIdx.x; i < R * w_ld; i += blockDim.x) {
    const int64_t r = i / w_ld, k = i % w_ld;
    w_sm[i] = k < H ? w[((r / hl) * H + j0 + r % hl) * H + k] : from_acc<S>(0.f);
  }
}

template <class S>
__global__ void __launch_bounds__(kThreads)
    recurrence_forward_kernel(const RecurrenceFwdParams p, const int64_t hs, const bool w_in_smem,
                              const int64_t k_chunk) {
  cg::grid_group grid = cg::this_grid();
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t nblk = gridDim.x, blk = blockIdx.x;
  const int tid = threadIdx.x, nth = blockDim.x;
  const int warp = tid / kWarp, lane = tid % kWarp, warps = nth / kWarp;
  const int64_t TT = p.T, B = p.B, H = p.H, G = p.G, N = G * H;
  const int64_t j0 = H * blk / nblk, j1 = H * (blk + 1) / nblk, hl = j1 - j0, R = G * hl;
  const SmemPlan plan = smem_plan(B, G, H, hs, sizeof(S), w_in_smem, k_chunk, false);
  const bool tensor_cores = k_chunk > 0;
  S* w_sm = reinterpret_cast<S*>(smem);
  float* stage = reinterpret_cast<float*>(smem + plan.stage_off);
  float* scratch = reinterpret_cast<float*>(smem + plan.scratch_off);
  float* a_sm = reinterpret_cast<float*>(smem + plan.a_off);  // [B][R]
  float* units = reinterpret_cast<float*>(smem + plan.unit_off);
  float* h_sm = units;                 // [B][hl] h of own units
  float* c_sm = units + 1 * B * hs;    // [B][hl] c
  float* ct_sm = units + 2 * B * hs;   // [B][hl] c~ (lstm) or h~ (gru, rnn)
  float* co_sm = units + 3 * B * hs;   // [B][hl] N_c(c~)
  float* mh_sm = units + 4 * B * hs;   // [B][hl] m_h
  float* col_a = reinterpret_cast<float*>(smem + plan.col_off);  // [G*hs] mean
  float* col_b = col_a + G * hs;                                 // [G*hs] rstd
  float* row_a = reinterpret_cast<float*>(smem + plan.row_off);  // [B] mean
  float* row_b = row_a + B;                                      // [B] rstd

  const S* w = static_cast<const S*>(p.w_hh);
  const S* xg = static_cast<const S*>(p.xg);
  const S* h0 = static_cast<const S*>(p.h0);
  const S* c0 = static_cast<const S*>(p.c0);
  const S* bias = static_cast<const S*>(p.b_hh);
  const S* norm_weight_hh = static_cast<const S*>(p.norm_weight_hh);
  const S* norm_weight_c = static_cast<const S*>(p.norm_weight_c);
  const S* norm_bias_c = static_cast<const S*>(p.norm_bias_c);
  const S* rm_hh = static_cast<const S*>(p.running_mean_hh);
  const S* rv_hh = static_cast<const S*>(p.running_var_hh);
  const S* rm_c = static_cast<const S*>(p.running_mean_c);
  const S* rv_c = static_cast<const S*>(p.running_var_c);
  S* out = static_cast<S*>(p.out);
  float* sv_gates = static_cast<float*>(p.gates);
  float* sv_an = static_cast<float*>(p.gru_hn);
  float* sv_xhat_hh = static_cast<float*>(p.xhat_hh);
  float* sv_rstd_hh = static_cast<float*>(p.rstd_hh);
  float* sv_ctil = static_cast<float*>(p.c_tilde);
  float* sv_cstate = static_cast<float*>(p.c_state);
  float* sv_xhat_c = static_cast<float*>(p.xhat_c);
  float* sv_rstd_c = static_cast<float*>(p.rstd_c);
  float* bm_hh = static_cast<float*>(p.batch_mean_hh);
  float* bv_hh = static_cast<float*>(p.batch_var_hh);
  float* bm_c = static_cast<float*>(p.batch_mean_c);
  float* bv_c = static_cast<float*>(p.batch_var_c);
  // [2][B][H] exchange of m_h * h: fp32, or S when a 16-bit S runs on tensor cores (the
  // product rounds it to S anyway; half the bytes every block reads each step).
  float* hin = static_cast<float*>(p.ws_hin);
  S* hin_s = static_cast<S*>(p.ws_hin);
  constexpr bool kHalf = !std::is_same<S, float>::value;
  const bool half_exchange = kHalf && tensor_cores;
  auto publish = [&](int64_t buffer, int64_t b, int64_t j, float v) {
    const int64_t i = buffer * B * H + b * H + j;
    if (half_exchange) {
      hin_s[i] = from_acc<S>(v);
    } else {
      hin[i] = v;
    }
  };
  float4* stats = static_cast<float4*>(p.ws_stats);  // [2][B][grid] partials

  const bool lstm = p.cell == kCellLstm, gru = p.cell == kCellGru;
  const bool bn_train = p.norm == kNormBatch && p.training;
  Zoneout<float> zc, zh;
  zc.on = p.p_zoneout_c > 0;
  zh.on = p.p_zoneout_h > 0;
  zc.training = zh.training = p.training;
  zc.p = static_cast<float>(p.p_zoneout_c);
  zc.q = static_cast<float>(1.0 - p.p_zoneout_c);
  zc.threshold = static_cast<float>(p.p_zoneout_c);
  zh.p = static_cast<float>(p.p_zoneout_h);
  zh.q = static_cast<float>(1.0 - p.p_zoneout_h);
  zh.threshold = static_cast<float>(p.p_zoneout_h);
  const bool dropout = p.training && p.p_dropout > 0;
  const float p_drop = static_cast<float>(p.p_dropout);
  const float keep_scale = 1.f / static_cast<float>(1.0 - p.p_dropout);

  auto col = [&](int64_t r) { return (r / hl) * H + j0 + r % hl; };
  auto len = [&](int64_t b) { return p.lengths != nullptr ? __ldg(p.lengths + b) : TT; };

  if (w_in_smem) load_w_hh_rows(w_sm, plan.w_ld, w, H, hl, j0, R);
  // cp.async needs 16-byte rows and chunks of the exchange buffer.
  const bool vec16 =
      H % (half_exchange ? 8 : 4) == 0 && reinterpret_cast<uintptr_t>(hin) % 16 == 0;
  for (int64_t e = tid; e < B * hl; e += nth) {
    const int64_t b = e / hl, j = j0 + e % hl;
    const float h = to_acc(h0[b * H + j]);
    const float m = dropout ? dropout_scale(mask_uniform(p.seed, p.base_dropout, 0, b, j),
                                            p_drop, keep_scale)
                            : 1.f;
    h_sm[e] = h;
    mh_sm[e] = m;
    if (lstm) c_sm[e] = to_acc(c0[b * H + j]);
    publish(0, b, j, m * h);
  }
  grid.sync();

  for (int64_t s = 0; s < TT; ++s) {
    const int64_t t = p.reverse ? TT - 1 - s : s;
    const float* hin_cur = hin + (s & 1) * B * H;  // fp32 exchange (FMA products)

    // 1. a = (m_h h_{t-1}) W_hh^T for own columns.
    if (half_exchange) {
      block_product_tc(B, static_cast<int>(R), H, hin_s + (s & 1) * B * H, H, vec16, w_sm,
                       plan.w_ld, static_cast<int>(k_chunk), static_cast<int>(plan.stage_ld),
                       a_sm, reinterpret_cast<S*>(stage), scratch);
    } else if (tensor_cores) {
      block_product_tc(B, static_cast<int>(R), H, hin_cur, H, vec16, w_sm, plan.w_ld,
                       static_cast<int>(k_chunk), static_cast<int>(plan.stage_ld), a_sm, stage,
                       scratch);
    } else if (w_in_smem) {
      const int64_t ld = plan.w_ld;
      block_matvec(B, R, H, hin_cur, H,
                   [&](int64_t r, int64_t k) { return to_acc(w_sm[r * ld + k]); }, a_sm);
    } else {
      block_matvec(B, R, H, hin_cur, H,
                   [&](int64_t r, int64_t k) { return to_acc(w[col(r) * H + k]); }, a_sm);
    }
    __syncthreads();

    // 2. normalisation of W_hh h.
    if (p.norm == kNormBatch) {
      for (int64_t r = tid; r < R; r += nth) {
        const int64_t n = col(r);
        float mean, var;
        if (bn_train) {
          float cnt = 0.f, sum = 0.f;
          for (int64_t b = 0; b < B; ++b)
            if (t < len(b)) {
              cnt += 1.f;
              sum += a_sm[b * R + r];
            }
          mean = sum / fmaxf(cnt, 1.f);
          float m2 = 0.f;
          for (int64_t b = 0; b < B; ++b)
            if (t < len(b)) {
              const float d = a_sm[b * R + r] - mean;
              m2 += d * d;
            }
          var = m2 / fmaxf(cnt, 1.f);
          bm_hh[t * N + n] = mean;
          bv_hh[t * N + n] = var;
        } else {
          const int64_t row = t < p.S - 1 ? t : p.S - 1;
          mean = to_acc(rm_hh[row * N + n]);
          var = to_acc(rv_hh[row * N + n]);
        }
        col_a[r] = mean;
        col_b[r] = norm_rstd(var);
        sv_rstd_hh[t * N + n] = col_b[r];
      }
      __syncthreads();
    } else if (p.norm == kNormLayer) {
      for (int64_t b = warp; b < B; b += warps) {
        float sum = 0.f;
        for (int64_t r = lane; r < R; r += kWarp) sum += a_sm[b * R + r];
        const float mean = warp_sum(sum) / static_cast<float>(R);
        float m2 = 0.f;
        for (int64_t r = lane; r < R; r += kWarp) {
          const float d = a_sm[b * R + r] - mean;
          m2 += d * d;
        }
        m2 = warp_sum(m2);
        if (lane == 0)
          stats[(0 * B + b) * nblk + blk] = make_float4(static_cast<float>(R), mean, m2, 0.f);
      }
      grid.sync();
      for (int64_t b = warp; b < B; b += warps) {
        const MeanM2<float> m = merge_row_mean_m2(stats + (0 * B + b) * nblk, nblk, lane);
        if (lane == 0) {
          row_a[b] = m.mean;
          row_b[b] = norm_rstd(m.m2 / static_cast<float>(N));
          if (blk == 0) sv_rstd_hh[t * B + b] = row_b[b];
        }
      }
      __syncthreads();
    }
    if (p.norm != kNormNone) {
      for (int64_t e = tid; e < B * R; e += nth) {
        const int64_t b = e / R, r = e % R, n = col(r);
        const float mu = p.norm == kNormBatch ? col_a[r] : row_a[b];
        const float rs = p.norm == kNormBatch ? col_b[r] : row_b[b];
        const float x = (a_sm[e] - mu) * rs;
        sv_xhat_hh[(t * B + b) * N + n] = x;
        a_sm[e] = x * to_acc(norm_weight_hh[n]);
      }
      __syncthreads();
    }

    // 3a. the cell up to c~ (lstm) or h~ (gru, rnn).
    for (int64_t e = tid; e < B * hl; e += nth) {
      const int64_t b = e / hl, jj = e % hl, j = j0 + jj;
      const S* xb = xg + t * p.xg_stride_t + b * p.xg_stride_b;
      float* gs = sv_gates + (t * B + b) * N;
      float av[4];
      for (int64_t g = 0; g < G; ++g)
        av[g] = a_sm[b * R + g * hl + jj] + (bias != nullptr ? to_acc(bias[g * H + j]) : 0.f);
      if (lstm) {
        const LstmGates<float> ga =
            lstm_activate(to_acc(xb[j]) + av[0], to_acc(xb[H + j]) + av[1],
                          to_acc(xb[2 * H + j]) + av[2], to_acc(xb[3 * H + j]) + av[3]);
        gs[j] = ga.i;
        gs[H + j] = ga.f;
        gs[2 * H + j] = ga.g;
        gs[3 * H + j] = ga.o;
        const float ctil = lstm_c_tilde(ga, c_sm[e]);
        ct_sm[e] = ctil;
        sv_ctil[(t * B + b) * H + j] = ctil;
      } else if (gru) {
        const GruGates<float> ga = gru_activate(to_acc(xb[j]), to_acc(xb[H + j]),
                                                to_acc(xb[2 * H + j]), av[0], av[1], av[2]);
        gs[j] = ga.r;
        gs[H + j] = ga.z;
        gs[2 * H + j] = ga.n;
        sv_an[(t * B + b) * H + j] = av[2];
        ct_sm[e] = gru_h_tilde(ga, h_sm[e]);
      } else {
        const float y = rnn_activate(p.cell, to_acc(xb[j]) + av[0]);
        gs[j] = y;
        ct_sm[e] = y;
      }
    }
    __syncthreads();

    // 3b. lstm: normalisation of c~.
    if (lstm && p.norm != kNormNone) {
      if (p.norm == kNormBatch) {
        for (int64_t jj = tid; jj < hl; jj += nth) {
          const int64_t j = j0 + jj;
          float mean, var;
          if (bn_train) {
            float cnt = 0.f, sum = 0.f;
            for (int64_t b = 0; b < B; ++b)
              if (t < len(b)) {
                cnt += 1.f;
                sum += ct_sm[b * hl + jj];
              }
            mean = sum / fmaxf(cnt, 1.f);
            float m2 = 0.f;
            for (int64_t b = 0; b < B; ++b)
              if (t < len(b)) {
                const float d = ct_sm[b * hl + jj] - mean;
                m2 += d * d;
              }
            var = m2 / fmaxf(cnt, 1.f);
            bm_c[t * H + j] = mean;
            bv_c[t * H + j] = var;
          } else {
            const int64_t row = t < p.S - 1 ? t : p.S - 1;
            mean = to_acc(rm_c[row * H + j]);
            var = to_acc(rv_c[row * H + j]);
          }
          col_a[jj] = mean;
          col_b[jj] = norm_rstd(var);
          sv_rstd_c[t * H + j] = col_b[jj];
        }
        __syncthreads();
      } else {
        for (int64_t b = warp; b < B; b += warps) {
          float sum = 0.f;
          for (int64_t jj = lane; jj < hl; jj += kWarp) sum += ct_sm[b * hl + jj];
          const float mean = warp_sum(sum) / static_cast<float>(hl);
          float m2 = 0.f;
          for (int64_t jj = lane; jj < hl; jj += kWarp) {
            const float d = ct_sm[b * hl + jj] - mean;
            m2 += d * d;
          }
          m2 = warp_sum(m2);
          if (lane == 0)
            stats[(1 * B + b) * nblk + blk] = make_float4(static_cast<float>(hl), mean, m2, 0.f);
        }
        grid.sync();
        for (int64_t b = warp; b < B; b += warps) {
          const MeanM2<float> m = merge_row_mean_m2(stats + (1 * B + b) * nblk, nblk, lane);
          if (lane == 0) {
            row_a[b] = m.mean;
            row_b[b] = norm_rstd(m.m2 / static_cast<float>(H));
            if (blk == 0) sv_rstd_c[t * B + b] = row_b[b];
          }
        }
        __syncthreads();
      }
      for (int64_t e = tid; e < B * hl; e += nth) {
        const int64_t b = e / hl, jj = e % hl, j = j0 + jj;
        const float mu = p.norm == kNormBatch ? col_a[jj] : row_a[b];
        const float rs = p.norm == kNormBatch ? col_b[jj] : row_b[b];
        const float x = (ct_sm[e] - mu) * rs;
        sv_xhat_c[(t * B + b) * H + j] = x;
        co_sm[e] = x * to_acc(norm_weight_c[j]) + to_acc(norm_bias_c[j]);
      }
      __syncthreads();
    }

    // 3c. h~, zoneout, state update, outputs, own slice of m_h * h_t.
    for (int64_t e = tid; e < B * hl; e += nth) {
      const int64_t b = e / hl, jj = e % hl, j = j0 + jj;
      const bool act = t < len(b);
      float h_tilde = ct_sm[e];
      if (lstm) {
        const float* gs = sv_gates + (t * B + b) * N;
        const LstmGates<float> ga{gs[j], gs[H + j], gs[2 * H + j], gs[3 * H + j]};
        h_tilde = lstm_h_tilde(ga, p.norm != kNormNone ? co_sm[e] : ct_sm[e]);
        const bool zoned_c = zc.on && zc.training &&
                             mask_uniform(p.seed, p.base_zoneout_c, t, b, j) < zc.threshold;
        const float c_new = zoneout_forward(zc, zoned_c, c_sm[e], ct_sm[e]);
        if (act) c_sm[e] = c_new;
        sv_cstate[(t * B + b) * H + j] = c_sm[e];
      }
      const bool zoned_h =
          zh.on && zh.training && mask_uniform(p.seed, p.base_zoneout_h, t, b, j) < zh.threshold;
      const float h_new = zoneout_forward(zh, zoned_h, h_sm[e], h_tilde);
      if (act) h_sm[e] = h_new;
      out[t * p.out_stride_t + b * p.out_stride_b + j] = from_acc<S>(act ? h_new : 0.f);
      publish((s + 1) & 1, b, j, mh_sm[e] * h_sm[e]);
    }
    grid.sync();
  }

  S* h_n = static_cast<S*>(p.h_n);
  S* c_n = static_cast<S*>(p.c_n);
  for (int64_t e = tid; e < B * hl; e += nth) {
    const int64_t b = e / hl, j = j0 + e % hl;
    h_n[b * H + j] = from_acc<S>(h_sm[e]);
    if (lstm) c_n[b * H + j] = from_acc<S>(c_sm[e]);
  }
}

// Tensor cores for bf16 / fp16 always, for float32 when TF32 is allowed (docs/kernels-v2.md
// §2: the launcher reads torch's cuDNN RNN flag once per call into p.allow_tf32).
template <class S>
LaunchPlan plan_for(const RecurrenceFwdParams& p) {
  const bool want_tensor_cores = !std::is_same<S, float>::value || p.allow_tf32;
  return plan_launch(reinterpret_cast<const void*>(&recurrence_forward_kernel<S>), p.B, p.G, p.H,
                     sizeof(S), false, want_tensor_cores);
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
  const LaunchPlan plan = plan_for<S>(p);
  RecurrenceFwdParams params = p;
  int64_t hs = plan.hs;
  bool w_in_smem = plan.w_in_smem;
  int64_t k_chunk = plan.k_chunk;
  void* args[] = {&params, &hs, &w_in_smem, &k_chunk};
  FRNN_CUDA_CHECK(cudaLaunchCooperativeKernel(
      reinterpret_cast<const void*>(&recurrence_forward_kernel<S>),
      dim3(static_cast<unsigned>(plan.grid)), dim3(kThreads), args,
      static_cast<size_t>(plan.smem_bytes), stream));
  FRNN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

int64_t plan_forward_grid(const RecurrenceFwdParams& p) { return plan_dispatch(p).grid; }

void recurrence_forward(const RecurrenceFwdParams& p, uintptr_t stream_handle) {
  if (p.cell == kCellLstm && p.H > 0 && p.G != 4) throw std::invalid_argument("lstm needs G=4");
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
