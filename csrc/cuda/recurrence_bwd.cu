// Backward persistent kernel: the forward loop in reverse time order, one cooperative launch.
//
// Block k owns hidden units [j0, j1) as in the forward kernel. It keeps the columns
// W_hh[:, j0:j1] (transposed) in shared memory. Per step (latest forward step first):
//   1. from d(h_t), d(c_t) of its units and the saved forward quantities it computes d(gates)
//      of its units for every row (zoneout and dropout masks regenerated from Philox), the
//      normalisation backward (batch norm block-local, layer norm via a grid barrier), and
//      writes dxg, d(N_hh(a) + b) and d(a) for its columns,
//   2. grid.sync(), then d(h_{t-1}) for its units = direct terms + m_h * (d(a) W_hh)[:, own],
//      reading the full d(a) row of the step from global memory: on tensor cores
//      (block_product_tc, tensor_core.cuh) when the W slice is resident, else FP32 FMA.
// Weight gradients are one GEMM afterwards (in the Python launcher): dW_hh = d(a)^T (m_h h).
#include <cooperative_groups.h>

#include "cuda/kernel_common.cuh"
#include "cuda/recurrence_cuda.h"
#include "cuda/tensor_core.cuh"

namespace cg = cooperative_groups;

namespace fusedrnn {
namespace cuda {
namespace {

// The backward prologue's load of W_hh: the block's columns W_hh[:, j0 + kk] for kk < hl,
// transposed, into wt_sm[kk * w_ld + n] for n < N = G*H, zero for N <= n < w_ld (the
// tensor-core padding). The one place W_hh enters shared memory in the backward kernel.
template <class S>
__device__ void load_w_hh_cols(S* wt_sm, int64_t w_ld, const S* w, int64_t H, int64_t N,
                               int64_t hl, int64_t j0) {
  for (int64_t i = threadIdx.x; i < hl * w_ld; i += blockDim.x) {
    const int64_t kk = i / w_ld, n = i % w_ld;
    wt_sm[i] = n < N ? w[n * H + j0 + kk] : from_acc<S>(0.f);
  }
}

template <class S>
__global__ void __launch_bounds__(kThreads)
    recurrence_backward_kernel(const RecurrenceBwdParams p, const int64_t hs, const bool w_in_smem,
                               const int64_t k_chunk) {
  cg::grid_group grid = cg::this_grid();
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t nblk = gridDim.x, blk = blockIdx.x;
  const int tid = threadIdx.x, nth = blockDim.x;
  const int warp = tid / kWarp, lane = tid % kWarp, warps = nth / kWarp;
  const int64_t TT = p.T, B = p.B, H = p.H, G = p.G, N = G * H;
  const int64_t j0 = H * blk / nblk, j1 = H * (blk + 1) / nblk, hl = j1 - j0, R = G * hl;
  const SmemPlan plan = smem_plan(B, G, H, hs, sizeof(S), w_in_smem, k_chunk, true);
  const bool tensor_cores = k_chunk > 0;
  S* wt_sm = reinterpret_cast<S*>(smem);  // [hl][w_ld] W^T of own units
  float* stage = reinterpret_cast<float*>(smem + plan.stage_off);
  float* scratch = reinterpret_cast<float*>(smem + plan.scratch_off);
  float* dab_sm = reinterpret_cast<float*>(smem + plan.a_off);  // [B][R] d(N(a) + b)
  float* units = reinterpret_cast<float*>(smem + plan.unit_off);
  float* dh_sm = units;               // d(h_t) state gradient
  float* dc_sm = units + 1 * B * hs;  // d(c_t)
  float* dhp_sm = units + 2 * B * hs;  // d(h_{t-1}) direct terms
  float* dcp_sm = units + 3 * B * hs;  // d(c_{t-1})
  float* dht_sm = units + 4 * B * hs;  // d(h~)
  float* dct_sm = units + 5 * B * hs;  // d(c~)
  float* dco_sm = units + 6 * B * hs;  // d(c_out)
  float* mh_sm = units + 7 * B * hs;   // m_h
  float* dhin_sm = units + 8 * B * hs;  // (d(a) W_hh) of own units
  float* col_a = reinterpret_cast<float*>(smem + plan.col_off);  // [G*hs] mean(dxhat)
  float* col_b = col_a + G * hs;                                 // [G*hs] mean(dxhat xhat)
  float* row_a = reinterpret_cast<float*>(smem + plan.row_off);  // [B]
  float* row_b = row_a + B;                                      // [B]

  const S* w = static_cast<const S*>(p.w_hh);
  const S* h0 = static_cast<const S*>(p.h0);
  const S* c0 = static_cast<const S*>(p.c0);
  const S* norm_weight_hh = static_cast<const S*>(p.norm_weight_hh);
  const S* norm_weight_c = static_cast<const S*>(p.norm_weight_c);
  const S* norm_bias_c = static_cast<const S*>(p.norm_bias_c);
  const S* out = static_cast<const S*>(p.out);
  const S* gout = static_cast<const S*>(p.grad_out);
  const S* ghn = static_cast<const S*>(p.grad_h_n);
  const S* gcn = static_cast<const S*>(p.grad_c_n);
  const float* sv_gates = static_cast<const float*>(p.gates);
  const float* sv_an = static_cast<const float*>(p.gru_hn);
  const float* sv_xhat_hh = static_cast<const float*>(p.xhat_hh);
  const float* sv_rstd_hh = static_cast<const float*>(p.rstd_hh);
  const float* sv_ctil = static_cast<const float*>(p.c_tilde);
  const float* sv_cstate = static_cast<const float*>(p.c_state);
  const float* sv_xhat_c = static_cast<const float*>(p.xhat_c);
  const float* sv_rstd_c = static_cast<const float*>(p.rstd_c);
  S* dxg = static_cast<S*>(p.dxg);
  float* dab = static_cast<float*>(p.dab);
  float* da = p.da != nullptr ? static_cast<float*>(p.da) : dab;
  float* hin = static_cast<float*>(p.hin);
  float* dcout_sv = static_cast<float*>(p.dc_out);
  float4* stats = static_cast<float4*>(p.ws_stats);  // [2][B][grid] partials

  const bool lstm = p.cell == kCellLstm, gru = p.cell == kCellGru;
  const bool norm = p.norm != kNormNone;
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

  auto len = [&](int64_t b) { return p.lengths != nullptr ? __ldg(p.lengths + b) : TT; };

  if (w_in_smem) load_w_hh_cols(wt_sm, plan.w_ld, w, H, N, hl, j0);
  // cp.async needs 16-byte rows and chunks of d(a).
  const bool vec16 = N % 4 == 0 && reinterpret_cast<uintptr_t>(da) % 16 == 0;
  for (int64_t e = tid; e < B * hl; e += nth) {
    const int64_t b = e / hl, j = j0 + e % hl;
    mh_sm[e] = dropout ? dropout_scale(mask_uniform(p.seed, p.base_dropout, 0, b, j), p_drop,
                                       keep_scale)
                       : 1.f;
    dh_sm[e] = to_acc(ghn[b * H + j]);
    dc_sm[e] = (lstm && gcn != nullptr) ? to_acc(gcn[b * H + j]) : 0.f;
  }
  __syncthreads();

  for (int64_t s = TT - 1; s >= 0; --s) {
    const int64_t t = p.reverse ? TT - 1 - s : s;
    const int64_t tp = p.reverse ? t + 1 : t - 1;
    const bool has_prev = tp >= 0 && tp < TT;
    float count = 0.f;
    for (int64_t b = 0; b < B; ++b) count += t < len(b) ? 1.f : 0.f;
    const float inv_count = 1.f / fmaxf(count, 1.f);

    // 1a. zoneout splits, h~ = o tanh(c_out).
    for (int64_t e = tid; e < B * hl; e += nth) {
      const int64_t b = e / hl, jj = e % hl, j = j0 + jj;
      const bool act = t < len(b);
      const bool prev_out = has_prev && tp < len(b);
      const float h_prev = prev_out ? to_acc(out[tp * p.out_stride_t + b * p.out_stride_b + j])
                                    : to_acc(h0[b * H + j]);
      hin[(t * B + b) * H + j] = mh_sm[e] * h_prev;
      const float dnew =
          act ? dh_sm[e] + to_acc(gout[t * p.grad_out_stride_t + b * p.grad_out_stride_b + j])
              : 0.f;
      const bool zoned_h =
          zh.on && zh.training && mask_uniform(p.seed, p.base_zoneout_h, t, b, j) < zh.threshold;
      float dprev_h;
      dht_sm[e] = zoneout_backward(zh, zoned_h, dnew, &dprev_h);
      dhp_sm[e] = act ? dprev_h : dh_sm[e];
      if (lstm) {
        const bool zoned_c = zc.on && zc.training &&
                             mask_uniform(p.seed, p.base_zoneout_c, t, b, j) < zc.threshold;
        float dprev_c;
        dct_sm[e] = zoneout_backward(zc, zoned_c, act ? dc_sm[e] : 0.f, &dprev_c);
        dcp_sm[e] = act ? dprev_c : dc_sm[e];
        const float* gs = sv_gates + (t * B + b) * N;
        const LstmGates<float> ga{gs[j], gs[H + j], gs[2 * H + j], gs[3 * H + j]};
        const float c_out = norm ? sv_xhat_c[(t * B + b) * H + j] * to_acc(norm_weight_c[j]) +
                                       to_acc(norm_bias_c[j])
                                 : sv_ctil[(t * B + b) * H + j];
        float dco;
        const float dpo = lstm_backward_h(ga, c_out, dht_sm[e], &dco);
        dxg[(t * B + b) * N + 3 * H + j] = from_acc<S>(dpo);
        dab[(t * B + b) * N + 3 * H + j] = dpo;
        dab_sm[b * R + 3 * hl + jj] = dpo;
        dco_sm[e] = dco;
        if (norm) dcout_sv[(t * B + b) * H + j] = dco;
      }
    }
    __syncthreads();

    if (lstm) {
      // 1b. N_c backward: d(c~) += N_c'(d c_out).
      if (norm && bn_train) {
        for (int64_t jj = tid; jj < hl; jj += nth) {
          const int64_t j = j0 + jj;
          float s1 = 0.f, s2 = 0.f;
          for (int64_t b = 0; b < B; ++b)
            if (t < len(b)) {
              const float dx = dco_sm[b * hl + jj] * to_acc(norm_weight_c[j]);
              s1 += dx;
              s2 += dx * sv_xhat_c[(t * B + b) * H + j];
            }
          col_a[jj] = s1 * inv_count;
          col_b[jj] = s2 * inv_count;
        }
        __syncthreads();
      } else if (p.norm == kNormLayer) {
        for (int64_t b = warp; b < B; b += warps) {
          float s1 = 0.f, s2 = 0.f;
          for (int64_t jj = lane; jj < hl; jj += kWarp) {
            const int64_t j = j0 + jj;
            const float dx = dco_sm[b * hl + jj] * to_acc(norm_weight_c[j]);
            s1 += dx;
            s2 += dx * sv_xhat_c[(t * B + b) * H + j];
          }
          s1 = warp_sum(s1);
          s2 = warp_sum(s2);
          if (lane == 0) stats[(1 * B + b) * nblk + blk] = make_float4(s1, s2, 0.f, 0.f);
        }
        grid.sync();
        for (int64_t b = warp; b < B; b += warps) {
          const float2 s12 = sum_row_partials(stats + (1 * B + b) * nblk, nblk, lane);
          if (lane == 0) {
            row_a[b] = s12.x / static_cast<float>(H);
            row_b[b] = s12.y / static_cast<float>(H);
          }
        }
        __syncthreads();
      }
      // 1c. c~ = f c_prev + i g.
      for (int64_t e = tid; e < B * hl; e += nth) {
        const int64_t b = e / hl, jj = e % hl, j = j0 + jj;
        const bool act = t < len(b);
        float dct = dct_sm[e];
        if (norm) {
          const float dx = dco_sm[e] * to_acc(norm_weight_c[j]);
          const float xh = sv_xhat_c[(t * B + b) * H + j];
          if (p.norm == kNormLayer) {
            dct += norm_backward(dx, xh, sv_rstd_c[t * B + b], row_a[b], row_b[b]);
          } else if (bn_train) {
            dct += act ? norm_backward(dx, xh, sv_rstd_c[t * H + j], col_a[jj], col_b[jj]) : 0.f;
          } else {
            dct += dx * sv_rstd_c[t * H + j];
          }
        } else {
          dct += dco_sm[e];
        }
        const float* gs = sv_gates + (t * B + b) * N;
        const LstmGates<float> ga{gs[j], gs[H + j], gs[2 * H + j], gs[3 * H + j]};
        const float c_prev = has_prev ? sv_cstate[(tp * B + b) * H + j] : to_acc(c0[b * H + j]);
        const LstmGateGrads<float> d = lstm_backward_c(ga, c_prev, act ? dct : 0.f);
        const float grads[3] = {d.i, d.f, d.g};
        for (int g = 0; g < 3; ++g) {
          dxg[(t * B + b) * N + g * H + j] = from_acc<S>(grads[g]);
          dab[(t * B + b) * N + g * H + j] = grads[g];
          dab_sm[b * R + g * hl + jj] = grads[g];
        }
        if (act) dcp_sm[e] += d.c_prev;
      }
    } else if (gru) {
      for (int64_t e = tid; e < B * hl; e += nth) {
        const int64_t b = e / hl, jj = e % hl, j = j0 + jj;
        const bool act = t < len(b);
        const bool prev_out = has_prev && tp < len(b);
        const float h_prev = prev_out ? to_acc(out[tp * p.out_stride_t + b * p.out_stride_b + j])
                                      : to_acc(h0[b * H + j]);
        const float* gs = sv_gates + (t * B + b) * N;
        const GruGates<float> ga{gs[j], gs[H + j], gs[2 * H + j]};
        const GruGrads<float> d =
            gru_backward(ga, sv_an[(t * B + b) * H + j], h_prev, act ? dht_sm[e] : 0.f);
        const float dx[3] = {d.x_r, d.x_z, d.x_n};
        const float dy[3] = {d.x_r, d.x_z, d.a_n};
        for (int g = 0; g < 3; ++g) {
          dxg[(t * B + b) * N + g * H + j] = from_acc<S>(dx[g]);
          dab[(t * B + b) * N + g * H + j] = dy[g];
          dab_sm[b * R + g * hl + jj] = dy[g];
        }
        if (act) dhp_sm[e] += d.h_prev;
      }
    } else {
      for (int64_t e = tid; e < B * hl; e += nth) {
        const int64_t b = e / hl, jj = e % hl, j = j0 + jj;
        const bool act = t < len(b);
        const float d = rnn_backward(p.cell, sv_gates[(t * B + b) * N + j], act ? dht_sm[e] : 0.f);
        dxg[(t * B + b) * N + j] = from_acc<S>(d);
        dab[(t * B + b) * N + j] = d;
        dab_sm[b * R + jj] = d;
      }
    }
    __syncthreads();

    // 1d. N_hh backward: d(a) of own columns.
    if (norm) {
      auto ncol = [&](int64_t r) { return (r / hl) * H + j0 + r % hl; };
      if (bn_train) {
        for (int64_t r = tid; r < R; r += nth) {
          const int64_t n = ncol(r);
          float s1 = 0.f, s2 = 0.f;
          for (int64_t b = 0; b < B; ++b)
            if (t < len(b)) {
              const float dx = dab_sm[b * R + r] * to_acc(norm_weight_hh[n]);
              s1 += dx;
              s2 += dx * sv_xhat_hh[(t * B + b) * N + n];
            }
          col_a[r] = s1 * inv_count;
          col_b[r] = s2 * inv_count;
        }
        __syncthreads();
      } else if (p.norm == kNormLayer) {
        for (int64_t b = warp; b < B; b += warps) {
          float s1 = 0.f, s2 = 0.f;
          for (int64_t r = lane; r < R; r += kWarp) {
            const int64_t n = ncol(r);
            const float dx = dab_sm[b * R + r] * to_acc(norm_weight_hh[n]);
            s1 += dx;
            s2 += dx * sv_xhat_hh[(t * B + b) * N + n];
          }
          s1 = warp_sum(s1);
          s2 = warp_sum(s2);
          if (lane == 0) stats[(0 * B + b) * nblk + blk] = make_float4(s1, s2, 0.f, 0.f);
        }
        grid.sync();
        for (int64_t b = warp; b < B; b += warps) {
          const float2 s12 = sum_row_partials(stats + (0 * B + b) * nblk, nblk, lane);
          if (lane == 0) {
            row_a[b] = s12.x / static_cast<float>(N);
            row_b[b] = s12.y / static_cast<float>(N);
          }
        }
        __syncthreads();
      }
      for (int64_t e = tid; e < B * R; e += nth) {
        const int64_t b = e / R, r = e % R, n = ncol(r);
        const float dx = dab_sm[e] * to_acc(norm_weight_hh[n]);
        const float xh = sv_xhat_hh[(t * B + b) * N + n];
        float v;
        if (p.norm == kNormLayer) {
          v = norm_backward(dx, xh, sv_rstd_hh[t * B + b], row_a[b], row_b[b]);
        } else if (bn_train) {
          v = t < len(b) ? norm_backward(dx, xh, sv_rstd_hh[t * N + n], col_a[r], col_b[r]) : 0.f;
        } else {
          v = dx * sv_rstd_hh[t * N + n];
        }
        da[(t * B + b) * N + n] = v;
      }
    }
    grid.sync();  // d(a) of step t complete in global memory

    // 2. d(h_{t-1}) of own units = direct terms + m_h * (d(a) W_hh)[:, own].
    const float* da_t = da + t * B * N;
    if (tensor_cores) {
      block_product_tc(B, static_cast<int>(hl), N, da_t, N, vec16, wt_sm, plan.w_ld,
                       static_cast<int>(k_chunk), static_cast<int>(plan.stage_ld), dhin_sm, stage,
                       scratch);
    } else if (w_in_smem) {
      const int64_t ld = plan.w_ld;
      block_matvec(B, hl, N, da_t, N,
                   [&](int64_t kk, int64_t n) { return to_acc(wt_sm[kk * ld + n]); }, dhin_sm);
    } else {
      block_matvec(B, hl, N, da_t, N,
                   [&](int64_t kk, int64_t n) { return to_acc(w[n * H + j0 + kk]); }, dhin_sm);
    }
    __syncthreads();
    for (int64_t e = tid; e < B * hl; e += nth) {
      dh_sm[e] = dhp_sm[e] + mh_sm[e] * dhin_sm[e];
      if (lstm) dc_sm[e] = dcp_sm[e];
    }
    __syncthreads();
  }

  S* dh0 = static_cast<S*>(p.dh0);
  S* dc0 = static_cast<S*>(p.dc0);
  for (int64_t e = tid; e < B * hl; e += nth) {
    const int64_t b = e / hl, j = j0 + e % hl;
    dh0[b * H + j] = from_acc<S>(dh_sm[e]);
    if (lstm) dc0[b * H + j] = from_acc<S>(dc_sm[e]);
  }
}

// Tensor cores as in the forward kernel (bf16 / fp16 always, float32 under p.allow_tf32).
template <class S>
LaunchPlan plan_for(const RecurrenceFwdParams& p) {
  const bool want_tensor_cores = !std::is_same<S, float>::value || p.allow_tf32;
  return plan_launch(reinterpret_cast<const void*>(&recurrence_backward_kernel<S>), p.B, p.G, p.H,
                     sizeof(S), true, want_tensor_cores);
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
  const LaunchPlan plan = plan_for<S>(p);
  RecurrenceBwdParams params = p;
  int64_t hs = plan.hs;
  bool w_in_smem = plan.w_in_smem;
  int64_t k_chunk = plan.k_chunk;
  void* args[] = {&params, &hs, &w_in_smem, &k_chunk};
  FRNN_CUDA_CHECK(cudaLaunchCooperativeKernel(
      reinterpret_cast<const void*>(&recurrence_backward_kernel<S>),
      dim3(static_cast<unsigned>(plan.grid)), dim3(kThreads), args,
      static_cast<size_t>(plan.smem_bytes), stream));
  FRNN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

int64_t plan_backward_grid(const RecurrenceFwdParams& p) { return plan_dispatch(p).grid; }

void recurrence_backward(const RecurrenceBwdParams& p, uintptr_t stream_handle) {
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
