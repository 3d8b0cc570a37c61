// The step loop of fusedrnn's persistent recurrence, written once for the host backend (OpenMP
// threads, csrc/host/recurrence_host.cpp) and the CUDA kernels (blocks of a cooperative grid,
// csrc/cuda/recurrence_fwd.cu and recurrence_bwd.cu, with csrc/cuda/block_worker.cuh),
// templated on an execution policy (docs/design.md §5.3, §5.4).
//
// The algorithm
// -------------
// A *worker* (a host thread, a CUDA block) owns a slice of the H hidden units with all their G
// gates: cell units [j0, j0 + hl), so its R = G * hl columns of W_hh h are gate-major in its tile
// (column r = g * hl + jj is gate g of unit j0 + jj; W_hh row (r / hl) * H + j0 + r % hl), and
// every batch row of them, so batch-norm statistics are worker-local. It also owns the units
// [q0, q0 + pl) of h: the same slice without a projection (P = H), else a slice of the P outputs
// of the LSTM projection. The workers exchange m_h ⊙ h through a double buffer in shared
// memory (host) or global memory (CUDA), and meet at a barrier once per step, plus once per
// layer-norm reduction and once for the projection.
//
// forward_steps() runs, per step s (t = s, or T - 1 - s with `reverse`):
//   1. a = (m_h ⊙ h_{t-1}) W_hh^T for the worker's R columns          (policy: the product)
//   2. N_hh: batch norm (training: two-pass mean and biased variance over the active rows
//      t < len[b], written to batch_mean/var_hh; eval: the running buffers at row min(t, S-1))
//      or layer norm (row statistics over all N columns: a cross-worker reduction) → saved
//      xhat_hh and rstd_hh, a = xhat · γ_hh
//   3. pre-activations a + b_hh (+ xg, except GRU's a_n which waits for r), then the
//      activations by gate slice (policy: sigmoid/tanh over a column range), GRU's
//      n = tanh(x_n + r a_n); the cell (cells.cuh) gives c~ (LSTM) or h~ (GRU, RNN); saved
//      gates, gru_hn, c_tilde
//   4. LSTM: N_c(c~) (batch or layer norm as in 2, saved xhat_c, rstd_c, + β_c), zoneout of c
//      (Philox draw at (t, b, j)), c kept only for active rows, saved c_state,
//      h~ = o tanh(N_c(c~)); with a projection h~ = W_hr (o tanh(..)) after a barrier
//   5. zoneout of h, h kept only for active rows, out = h (0 where t >= len[b]), and the
//      worker's slice m_h ⊙ h_t of the exchange; a barrier.
// Masks are drawn from philox.cuh at their coordinates and never stored. The saved tensors
// (params.h) are written only when the launcher passes them (`gates` null: no gradient needed,
// nothing saved, norm statistics included; h_state only for float16 / bfloat16 storage).
//
// The policy
// ----------
// What differs between the CPU and the GPU is a small set of named primitives; everything
// else above is this file. A policy type `Policy` provides:
//   using Storage, Acc;          storage type of the dtype tensors, accumulation type (params.h)
//   static Acc widen(Storage); static Storage narrow(Acc);
//   static constexpr bool kProjection;   whether it implements project() (proj_size > 0)
//   int64_t j0, hl, q0, pl;      the worker's cell units [j0, j0+hl) and h units [q0, q0+pl)
//   bool first_worker() const;   the one worker that writes per-row layer-norm rstd
//   for_each(rows, cols, f)      f(i, k) for every i < rows, k < cols, split among the worker's
//                                threads (host: one thread, nested loops; CUDA: the block)
//   sync_worker()                the worker's threads see each other's writes (CUDA
//                                __syncthreads; host: nothing)
//   sync_all()                   barrier of all workers (omp barrier / grid.sync())
//   recurrent_product(s, a)      a[b * R + r] = Σ_k X[b][k] W_hh[row(r)][k], X the exchange
//                                buffer s & 1; visible to the whole worker on return
//   publish(buffer, b, q, v)     element (b, q) of exchange buffer `buffer` (q an h unit)
//   row_stats(which, x, ld, cols, total, mean, rstd)
//                                layer norm: the statistics of each batch row over all
//                                workers' columns, this worker's being x[b * ld + c], c < cols,
//                                `total` columns in all; mean[b], rstd[b] for every b, visible
//                                to the worker on return. `which` (0: W_hh h, 1: c~) selects
//                                the partials buffer, so both reductions of a step coexist.
//   sigmoid_cols(x, rows, ld, c0, c1), tanh_cols(...)
//                                x[i * ld + c] = σ / tanh of itself for i < rows, c0 <= c < c1
//   project(h_pre, h_proj)       (kProjection) h_proj[b * pl + q] = Σ_j h_pre[b * H + j]
//                                W_hr[q0 + q][j]; all workers' h_pre written (after sync_all)
//   product_and_cell(s, a, cell) (optional: a policy with `static constexpr bool kFusedCell =
//                                true`) the product of step s and the rest of the step fused
//                                onto its results: for every (b, jj), b < B, jj < hl, exactly one
//                                call cell(b, jj, rec), rec[g] = Σ_k X[b][k] W_hh[g*H + j0 + jj][k]
//                                (g < G), made by the thread that owns (b, jj) in every step (its
//                                state in the scratch is then thread-private); `a` is the
//                                worker's [B][R] gate tile for a policy that computes the product
//                                there first (host). Used when fused_cell_applies(p): the
//                                per-element form of steps 3-5 below (fused_cell_step), the same
//                                cells.cuh functions in the same order as the phased form.
//   vector_cell_step(p, w, s, t) (optional: a policy with `static constexpr bool kVectorCell =
//                                true`; the host's float32) steps 3-5 of step s (= time t)
//                                after the product, for every row and own unit, when
//                                vector_cell_applies(p) (LSTM / GRU, no norm, no projection):
//                                the same cells.cuh functions in the same order as the phased
//                                code below, on SIMD vectors of units (csrc/host/cell_host.h)
// and the worker's scratch (ForwardScratch below: host vectors, CUDA shared memory).
//
// The backward
// ------------
// backward_steps() (run by the host backend and csrc/cuda/recurrence_bwd.cu) runs the same
// steps in the opposite order (s = T-1 .. 0), from d(h_t) of the worker's h units and d(c_t)
// of its cell units, with every mask regenerated at its coordinates and the forward's saved
// tensors (params.h), per step:
//   A. h_{t-1} (saved h_state when the launcher kept h at accumulation precision, else `out`
//      / h_0) → hin = m_h ⊙ h_{t-1} for the launcher's dW_hh GEMM; d(h_t) += grad_out_t
//      (active rows); zoneout of h splits it into d(h~) and the direct part of d(h_{t-1});
//      with a projection d(h~) is written to dproj, a barrier, and d(o tanh c_out) =
//      dproj_t W_hr for the cell units (policy: project_backward)
//   B. LSTM: tanh(c_out) (c_out = N_c(c~) from the saved xhat_c, or c~), d(pre_o), d(c_out),
//      h_pre_proj; zoneout of c; N_c backward (batch norm: column sums over the active rows;
//      layer norm: row sums over all workers, policy row_sums); c~ = f c_{t-1} + i g backward
//      (i, f, g and the direct part of d(c_{t-1})); GRU: gru_backward with h_{t-1}; RNN
//   C. dxg, dab = d(N_hh(W_hh h) + b_hh) of own columns; N_hh backward → da (column or row
//      sums as in B), written for all rows; a barrier (da_t complete)
//   D. d(h_{t-1}) = direct part + m_h ⊙ (da_t W_hh)[:, own h units] (policy:
//      backward_product); d(c_{t-1}) = its direct part.
// Weight gradients are GEMMs over all steps in the launcher (dW_hh = da^T hin, dW_hr =
// dproj^T h_pre_proj). A backward policy provides, besides the forward's Storage, Acc,
// widen, narrow, kProjection, j0/hl/q0/pl, first_worker, for_each, sync_worker, sync_all and
// tanh_cols:
//   backward_product(da_t, d)    d[b * pl + q] = Σ_n da_t[b * N + n] W_hh[n][q0 + q], da_t all
//                                workers' columns of the step (after sync_all); visible to
//                                the worker on return
//   row_sums(which, cols, inv_total, f, shift, m2)
//                                layer-norm backward: f(b, c) → NormSums{dx, dx xhat, xhat}
//                                for this worker's columns c < cols; with X = Σ over every
//                                worker's columns times inv_total, m2[b] = X(dx xhat) and
//                                shift[b] = norm_backward_shift(X(dx), m2[b], X(xhat)), for
//                                every row b, visible to the worker on return; `which` as in
//                                row_stats
//   project_backward(dproj_t, d) (kProjection) d[b * hl + jj] = Σ_q dproj_t[b * P + q]
//                                W_hr[q][j0 + jj]; all workers' dproj_t written (after
//                                sync_all)
//   product_and_cell_backward(da_t, cell)
//                                (optional: a policy with `static constexpr bool
//                                kFusedCellBackward = true`) step D's product fused with the
//                                next step's cell backward: for every (b, jj), b < B, jj < hl,
//                                exactly one call cell(b, jj, rec), rec = Σ_n da_t[b * N + n]
//                                W_hh[n][j0 + jj] (rec = 0 when da_t is null: the first step
//                                has no product), made by the thread that owns (b, jj) in
//                                every step (its state in the scratch is then thread-private);
//                                da_t is all workers' columns (after sync_all). Used when
//                                fused_cell_applies(p): the per-element form of steps A-D
//                                (fused_cell_backward_step), the same cells.cuh functions in
//                                the same order as the phased form, one barrier per step.
//   vector_cell_backward_step(p, w, t, tp, has_prev)
//                                (optional, with kVectorCell) steps A-C of step t when
//                                vector_cell_applies(p): hin, dxg, dab of the step and
//                                w.dh_prev / w.dc_prev, as the phased code computes them
// and the worker's scratch (BackwardScratch below).
#pragma once

#include <cstdint>
#include <type_traits>

#include "fusedrnn/cells.cuh"
#include "fusedrnn/params.h"
#include "fusedrnn/philox.cuh"

#if defined(__CUDACC__)
#define FRNN_STEP __device__ __forceinline__
#else
#define FRNN_STEP inline
#endif

namespace fusedrnn {

// Whether a step of these params can run the cell per element on the product's results (the
// fused form): asked for (p.fused_cell), no norm (its statistics span the worker's or all
// workers' columns before the cell) and no projection (h~ needs all units' o tanh(c) first).
FRNN_HD bool fused_cell_applies(const RecurrenceFwdParams& p) {
  return p.fused_cell && p.norm == kNormNone && p.proj_size == 0;
}

// Policy::kFusedCell when the policy declares it (it then implements product_and_cell).
template <class P, class = void>
struct PolicyFusesCell : std::false_type {};
template <class P>
struct PolicyFusesCell<P, std::void_t<decltype(P::kFusedCell)>>
    : std::integral_constant<bool, P::kFusedCell> {};

// Policy::kFusedCellBackward when the policy declares it (it then implements
// product_and_cell_backward).
template <class P, class = void>
struct PolicyFusesCellBackward : std::false_type {};
template <class P>
struct PolicyFusesCellBackward<P, std::void_t<decltype(P::kFusedCellBackward)>>
    : std::integral_constant<bool, P::kFusedCellBackward> {};

// Policy::kVectorCell when the policy declares it (it then implements vector_cell_step and
// vector_cell_backward_step: the host's float32 SIMD cell, csrc/host/cell_host.h).
template <class P, class = void>
struct PolicyRunsVectorCell : std::false_type {};
template <class P>
struct PolicyRunsVectorCell<P, std::void_t<decltype(P::kVectorCell)>>
    : std::integral_constant<bool, P::kVectorCell> {};

// Whether a phased step of these params runs as the policy's vector cell: an LSTM or GRU
// layer without norm or projection.
FRNN_HD bool vector_cell_applies(const RecurrenceFwdParams& p) {
  return p.norm == kNormNone && p.proj_size == 0 && (p.cell == kCellLstm || p.cell == kCellGru);
}

// One worker's scratch for forward_steps(), in the accumulation type A.
template <class A>
struct ForwardScratch {
  A* a = nullptr;         // [B][R] the gate tile: W_hh h, then pre-activations, then gates
  A* h = nullptr;         // [B][pl] own units of h
  A* c = nullptr;         // [B][hl] own units of c (lstm)
  A* ct = nullptr;        // [B][hl] c~ (lstm), h~ (gru, rnn); lstm without projection: h~
  A* co = nullptr;        // [B][hl] lstm: N_c(c~), then tanh of it
  A* mh = nullptr;        // [B][pl] recurrent-dropout mask of own h units
  A* col_mean = nullptr;  // [R] batch-norm statistics of own columns
  A* col_rstd = nullptr;  // [R]
  A* row_mean = nullptr;  // [B] layer-norm statistics of every row
  A* row_rstd = nullptr;  // [B]
  A* h_pre = nullptr;     // [B][H] projection input o tanh(c_out), shared by all workers
  A* h_proj = nullptr;    // [B][pl] projection output (own units)
};

// One worker's scratch for backward_steps(), in the accumulation type A.
template <class A>
struct BackwardScratch {
  A* dab = nullptr;      // [B][R] d(N_hh(W_hh h) + b_hh) of own columns, gate-major as `a`
  A* dh = nullptr;       // [B][pl] d(h_t), the state gradient entering the step
  A* dh_prev = nullptr;  // [B][pl] direct part of d(h_{t-1})
  A* dhtil = nullptr;    // [B][pl] d(h~) of own h units (with a projection: its output's)
  A* dhtil_cell = nullptr;  // [B][hl] d(o tanh c_out) with a projection (else = dhtil)
  A* dc = nullptr;       // [B][hl] d(c_t) (lstm)
  A* dc_prev = nullptr;  // [B][hl] d(c_{t-1})
  A* dctil = nullptr;    // [B][hl] d(c~)
  A* dco = nullptr;      // [B][hl] tanh(c_out), then d(c_out) in place
  A* mh = nullptr;       // [B][pl] recurrent-dropout mask of own h units
  A* dhin = nullptr;     // [B][pl] (da_t W_hh) of own h units
  A* col_a = nullptr;    // [R] batch-norm backward: norm_backward's shift per own column
  A* col_b = nullptr;    // [R] mean of dxhat * xhat
  A* row_a = nullptr;    // [B] layer-norm backward: norm_backward's shift per row
  A* row_b = nullptr;    // [B] mean of dxhat * xhat
};

// Three sums carried together (layer-norm backward: Σ dxhat, Σ dxhat xhat, Σ xhat of a row).
template <class A>
struct NormSums {
  A dx, dx_xhat, xhat;
};

template <class A>
FRNN_STEP Zoneout<A> make_zoneout(double prob, bool training) {
  Zoneout<A> z;
  z.on = prob > 0;
  z.training = training;
  z.p = static_cast<A>(prob);
  z.q = static_cast<A>(1.0 - prob);
  z.threshold = static_cast<float>(prob);
  return z;
}

// Whether unit j of row b is zoned out at step t (training draws only).
template <class A>
FRNN_STEP bool zoned_out(const Zoneout<A>& z, uint64_t seed, uint64_t base, int64_t t, int64_t b,
                         int64_t j) {
  return z.on && z.training && mask_uniform(seed, base, t, b, j) < z.threshold;
}

// Policy::kDrawsMaskRows when the policy declares it; it then implements
//   const uint8_t* zoneout_mask_rows(int which, uint64_t seed, uint64_t base, int64_t t,
//                                    int64_t B, int64_t u0, int64_t n, float threshold)
// returning below[b * n + k] = (mask_uniform(seed, base, t, b, u0 + k) < threshold) for b < B,
// k < n, visible to the worker on return; `which` (0: c, 1: h) selects its buffer, so both
// zoneout masks of a step coexist (the host: vectorised Philox, host/mask_rows_host.h).
template <class P, class = void>
struct PolicyDrawsMaskRows : std::false_type {};
template <class P>
struct PolicyDrawsMaskRows<P, std::void_t<decltype(P::kDrawsMaskRows)>>
    : std::integral_constant<bool, P::kDrawsMaskRows> {};

// The zoneout decisions of step t for the worker's units [u0, u0 + n): zoned(b, u) = zoned_out
// (z, seed, base, t, b, u). A policy that draws mask rows draws the step's rows here, at once;
// otherwise each element is drawn where it is used (CUDA: one element per thread).
template <class Policy, class A>
FRNN_STEP auto zoneout_step_mask(Policy& pol, int which, const Zoneout<A>& z, uint64_t seed,
                                 uint64_t base, int64_t t, int64_t B, int64_t u0, int64_t n) {
  if constexpr (PolicyDrawsMaskRows<Policy>::value) {
    const uint8_t* below = z.on && z.training
                               ? pol.zoneout_mask_rows(which, seed, base, t, B, u0, n, z.threshold)
                               : nullptr;
    return [=](int64_t b, int64_t u) { return below != nullptr && below[b * n + u - u0] != 0; };
  } else {
    return [=](int64_t b, int64_t u) { return zoned_out(z, seed, base, t, b, u); };
  }
}

// Batch-norm statistics of one column x[b * ld] over the active rows (training), or the
// running buffers' row (eval): mean and rstd, and the saved (when not null) / batch tensors at
// index n.
template <class A, class S, class Widen>
FRNN_STEP void batch_norm_column(const A* x, int64_t ld, int64_t B, int64_t t, const int64_t* len,
                                 int64_t T, bool training, const S* run_mean, const S* run_var,
                                 int64_t S_rows, int64_t width, int64_t n, A* batch_mean,
                                 A* batch_var, A* rstd_saved, A* mean_out, A* rstd_out,
                                 Widen widen) {
  A mean, var;
  if (training) {
    A cnt = A(0), sum = A(0);
    for (int64_t b = 0; b < B; ++b)
      if (t < (len != nullptr ? len[b] : T)) {
        cnt += A(1);
        sum += x[b * ld];
      }
    const A denom = cnt > A(1) ? cnt : A(1);
    mean = sum / denom;
    A m2 = A(0);
    for (int64_t b = 0; b < B; ++b)
      if (t < (len != nullptr ? len[b] : T)) {
        const A d = x[b * ld] - mean;
        m2 += d * d;
      }
    var = m2 / denom;
    batch_mean[t * width + n] = mean;
    batch_var[t * width + n] = var;
  } else {
    const int64_t row = t < S_rows - 1 ? t : S_rows - 1;
    mean = widen(run_mean[row * width + n]);
    var = widen(run_var[row * width + n]);
  }
  *mean_out = mean;
  *rstd_out = norm_rstd(var);
  if (rstd_saved != nullptr) rstd_saved[t * width + n] = *rstd_out;
}

// The loop's last write: the worker's slices of the [B, P] h-sized and (LSTM) [B, H] c-sized
// results (h_n / c_n forward, dh0 / dc0 backward) from its step state, rounded to storage.
template <class Policy, class A>
FRNN_STEP void write_final_slices(Policy& pol, int64_t B, int64_t P, int64_t H, bool lstm,
                                  const A* h_slice, const A* c_slice, void* h_dst, void* c_dst) {
  using S = typename Policy::Storage;
  S* h_out = static_cast<S*>(h_dst);
  S* c_out = static_cast<S*>(c_dst);
  const int64_t q0 = pol.q0, pl = pol.pl, j0 = pol.j0, hl = pol.hl;
  pol.for_each(B, pl, [&](int64_t b, int64_t qq) {
    h_out[b * P + q0 + qq] = Policy::narrow(h_slice[b * pl + qq]);
  });
  if (lstm)
    pol.for_each(B, hl, [&](int64_t b, int64_t jj) {
      c_out[b * H + j0 + jj] = Policy::narrow(c_slice[b * hl + jj]);
    });
}

// One layer-direction's forward time loop, run by every worker (see the top of this file).
template <class Policy>
FRNN_STEP void forward_steps(Policy& pol, const RecurrenceFwdParams& p,
                             const ForwardScratch<typename Policy::Acc>& w) {
  using S = typename Policy::Storage;
  using A = typename Policy::Acc;
  const int64_t TT = p.T, B = p.B, H = p.H, G = p.G, N = G * H;
  const int64_t j0 = pol.j0, hl = pol.hl, R = G * hl, q0 = pol.q0, pl = pol.pl;
  const bool proj = p.proj_size > 0;
  const int64_t P = proj ? p.proj_size : H;
  const bool lstm = p.cell == kCellLstm, gru = p.cell == kCellGru;
  const bool save = p.gates != nullptr;
  const int64_t* len = p.lengths;
  auto widen = [](S v) { return Policy::widen(v); };
  auto active = [&](int64_t t, int64_t b) { return t < (len != nullptr ? len[b] : TT); };

  const S* xg = static_cast<const S*>(p.xg);
  const S* h0 = static_cast<const S*>(p.h0);
  const S* c0 = static_cast<const S*>(p.c0);
  const S* bias = static_cast<const S*>(p.b_hh);
  const S* gamma_hh = static_cast<const S*>(p.norm_weight_hh);
  const S* gamma_c = static_cast<const S*>(p.norm_weight_c);
  const S* beta_c = static_cast<const S*>(p.norm_bias_c);
  S* out = static_cast<S*>(p.out);
  A* sv_gates = static_cast<A*>(p.gates);
  A* sv_an = static_cast<A*>(p.gru_hn);
  A* sv_xhat_hh = static_cast<A*>(p.xhat_hh);
  A* sv_rstd_hh = static_cast<A*>(p.rstd_hh);
  A* sv_ctil = static_cast<A*>(p.c_tilde);
  A* sv_cstate = static_cast<A*>(p.c_state);
  A* sv_xhat_c = static_cast<A*>(p.xhat_c);
  A* sv_rstd_c = static_cast<A*>(p.rstd_c);
  A* sv_hstate = static_cast<A*>(p.h_state);

  const Zoneout<A> zc = make_zoneout<A>(p.p_zoneout_c, p.training);
  const Zoneout<A> zh = make_zoneout<A>(p.p_zoneout_h, p.training);
  const bool dropout = p.training && p.p_dropout > 0;
  const float p_drop = static_cast<float>(p.p_dropout);
  const A keep_scale = A(1) / static_cast<A>(1.0 - p.p_dropout);

  // Prologue: h_0, c_0, the dropout mask (fixed over time: drawn at t = 0) and m_h ⊙ h_0.
  pol.for_each(B, pl, [&](int64_t b, int64_t qq) {
    const int64_t e = b * pl + qq, q = q0 + qq;
    const A h = widen(h0[b * P + q]);
    const A m =
        dropout ? dropout_scale(mask_uniform(p.seed, p.base_dropout, 0, b, q), p_drop, keep_scale)
                : A(1);
    w.h[e] = h;
    w.mh[e] = m;
    pol.publish(0, b, q, m * h);
  });
  if (lstm)
    pol.for_each(B, hl, [&](int64_t b, int64_t jj) {
      w.c[b * hl + jj] = widen(c0[b * H + j0 + jj]);
    });
  pol.sync_all();

  // Steps 3-5 of one (row b, own unit jj) from its recurrent pre-activations rec[g] (the fused
  // form: no norm, so steps 2 and 4's N_c are identities, and no projection, so h units are the
  // cell units). The phased loop below computes the same cells.cuh functions in the same order,
  // spread over the worker's threads (the host's phased activations are its vector versions).
  auto fused_cell_step = [&](int64_t s, int64_t t, int64_t b, int64_t jj, const A* rec,
                             const auto& zoned_c, const auto& zoned_h) {
    const int64_t e = b * hl + jj, j = j0 + jj;
    const S* x = xg + t * p.xg_stride_t + b * p.xg_stride_b + j;
    A a[4];  // W_hh h + b_hh (constant indices: registers on the GPU)
#if defined(__CUDACC__)
#pragma unroll
#endif
    for (int g = 0; g < 4; ++g)
      a[g] = g >= G ? A(0) : bias != nullptr ? rec[g] + widen(bias[g * H + j]) : rec[g];
    A* gates_out = save ? sv_gates + (t * B + b) * N + j : nullptr;
    A h_tilde;
    if (lstm) {
      const LstmGates<A> ga = lstm_activate(widen(x[0]) + a[0], widen(x[H]) + a[1],
                                            widen(x[2 * H]) + a[2], widen(x[3 * H]) + a[3]);
      const A ctil = lstm_c_tilde(ga, w.c[e]);
      if (save) {
        gates_out[0] = ga.i;
        gates_out[H] = ga.f;
        gates_out[2 * H] = ga.g;
        gates_out[3 * H] = ga.o;
        sv_ctil[(t * B + b) * H + j] = ctil;
      }
      const A c_new = zoneout_forward(zc, zoned_c(b, j), w.c[e], ctil);
      if (active(t, b)) w.c[e] = c_new;
      if (save) sv_cstate[(t * B + b) * H + j] = w.c[e];
      h_tilde = lstm_h_tilde(ga, ctil);
    } else if (gru) {
      const GruGates<A> ga =
          gru_activate(widen(x[0]), widen(x[H]), widen(x[2 * H]), a[0], a[1], a[2]);
      if (save) {
        gates_out[0] = ga.r;
        gates_out[H] = ga.z;
        gates_out[2 * H] = ga.n;
        sv_an[(t * B + b) * H + j] = a[2];
      }
      h_tilde = gru_h_tilde(ga, w.h[e]);
    } else {
      h_tilde = rnn_activate(p.cell, widen(x[0]) + a[0]);
      if (save) gates_out[0] = h_tilde;
    }
    const bool act = active(t, b);
    const A h_new = zoneout_forward(zh, zoned_h(b, j), w.h[e], h_tilde);
    if (act) w.h[e] = h_new;
    if (sv_hstate != nullptr) sv_hstate[(t * B + b) * P + j] = w.h[e];
    out[t * p.out_stride_t + b * p.out_stride_b + j] = Policy::narrow(act ? h_new : A(0));
    pol.publish((s + 1) & 1, b, j, w.mh[e] * w.h[e]);
  };

  for (int64_t s = 0; s < TT; ++s) {
    const int64_t t = p.reverse ? TT - 1 - s : s;

    if constexpr (PolicyFusesCell<Policy>::value) {
      if (fused_cell_applies(p)) {
        const auto zoned_c = zoneout_step_mask(pol, 0, zc, p.seed, p.base_zoneout_c, t, B, j0, hl);
        const auto zoned_h = zoneout_step_mask(pol, 1, zh, p.seed, p.base_zoneout_h, t, B, j0, hl);
        pol.product_and_cell(s, w.a, [&](int64_t b, int64_t jj, const A* rec) {
          fused_cell_step(s, t, b, jj, rec, zoned_c, zoned_h);
        });
        pol.sync_all();
        continue;
      }
    }

    // 1. a = (m_h ⊙ h_{t-1}) W_hh^T for own columns.
    pol.recurrent_product(s, w.a);

    // Steps 3-5 in one vectorised pass (a policy with kVectorCell, vector_cell_applies(p)).
    if constexpr (PolicyRunsVectorCell<Policy>::value) {
      if (vector_cell_applies(p)) {
        pol.vector_cell_step(p, w, s, t);
        pol.sync_all();
        continue;
      }
    }

    // 2. N_hh.
    if (p.norm == kNormBatch) {
      pol.for_each(G, hl, [&](int64_t g, int64_t jj) {
        const int64_t r = g * hl + jj;
        batch_norm_column(w.a + r, R, B, t, len, TT, p.training,
                          static_cast<const S*>(p.running_mean_hh),
                          static_cast<const S*>(p.running_var_hh), p.S, N, g * H + j0 + jj,
                          static_cast<A*>(p.batch_mean_hh), static_cast<A*>(p.batch_var_hh),
                          sv_rstd_hh, w.col_mean + r, w.col_rstd + r, widen);
      });
      pol.sync_worker();
    } else if (p.norm == kNormLayer) {
      pol.row_stats(0, w.a, R, R, N, w.row_mean, w.row_rstd);
      if (save && pol.first_worker()) pol.for_each(1, B, [&](int64_t, int64_t b) {
          sv_rstd_hh[t * B + b] = w.row_rstd[b];
        });
    }
    if (p.norm != kNormNone) {
      const bool bn = p.norm == kNormBatch;
      pol.for_each(B * G, hl, [&](int64_t bg, int64_t jj) {
        const int64_t b = bg / G, r = (bg % G) * hl + jj, n = (bg % G) * H + j0 + jj;
        const A mu = bn ? w.col_mean[r] : w.row_mean[b];
        const A rs = bn ? w.col_rstd[r] : w.row_rstd[b];
        const A x = (w.a[b * R + r] - mu) * rs;
        if (save) sv_xhat_hh[(t * B + b) * N + n] = x;
        w.a[b * R + r] = x * widen(gamma_hh[n]);
      });
      pol.sync_worker();
    }

    // 3. Pre-activations: + b_hh, + xg (GRU's a_n keeps only b_hh: n needs r first).
    pol.for_each(B * G, hl, [&](int64_t bg, int64_t jj) {
      const int64_t b = bg / G, g = bg % G, n = g * H + j0 + jj;
      A v = w.a[b * R + g * hl + jj];
      if (bias != nullptr) v = v + widen(bias[n]);
      if (!(gru && g == 2)) v = widen(xg[t * p.xg_stride_t + b * p.xg_stride_b + n]) + v;
      if (p.cell == kCellRnnRelu) v = relu(v);
      w.a[b * R + g * hl + jj] = v;
    });
    pol.sync_worker();
    if (lstm) {
      pol.sigmoid_cols(w.a, B, R, 0, 2 * hl);  // i, f
      pol.tanh_cols(w.a, B, R, 2 * hl, 3 * hl);  // g
      pol.sigmoid_cols(w.a, B, R, 3 * hl, 4 * hl);  // o
    } else if (gru) {
      pol.sigmoid_cols(w.a, B, R, 0, 2 * hl);  // r, z
      pol.sync_worker();
      pol.for_each(B, hl, [&](int64_t b, int64_t jj) {
        A* ab = w.a + b * R;
        const A a_n = ab[2 * hl + jj];
        if (save) sv_an[(t * B + b) * H + j0 + jj] = a_n;
        ab[2 * hl + jj] = widen(xg[t * p.xg_stride_t + b * p.xg_stride_b + 2 * H + j0 + jj]) +
                          ab[jj] * a_n;
      });
      pol.sync_worker();
      pol.tanh_cols(w.a, B, R, 2 * hl, 3 * hl);  // n
    } else if (p.cell == kCellRnnTanh) {
      pol.tanh_cols(w.a, B, R, 0, hl);
    }
    pol.sync_worker();

    // The saved gates, one contiguous run per (row, gate); the cell up to c~ (lstm) or h~.
    if (save)
      pol.for_each(B * G, hl, [&](int64_t bg, int64_t jj) {
        const int64_t b = bg / G, g = bg % G;
        sv_gates[(t * B + b) * N + g * H + j0 + jj] = w.a[b * R + g * hl + jj];
      });
    pol.for_each(B, hl, [&](int64_t b, int64_t jj) {
      const A* ab = w.a + b * R;
      const int64_t e = b * hl + jj, j = j0 + jj;
      if (lstm) {
        const LstmGates<A> ga{ab[jj], ab[hl + jj], ab[2 * hl + jj], ab[3 * hl + jj]};
        const A ctil = lstm_c_tilde(ga, w.c[e]);
        w.ct[e] = ctil;
        if (save) sv_ctil[(t * B + b) * H + j] = ctil;
      } else if (gru) {
        const GruGates<A> ga{ab[jj], ab[hl + jj], ab[2 * hl + jj]};
        w.ct[e] = gru_h_tilde(ga, w.h[e]);  // no projection: h units are the cell units
      } else {
        w.ct[e] = ab[jj];
      }
    });
    pol.sync_worker();

    // 4. LSTM: N_c(c~), zoneout and update of c, h~ = o tanh(N_c(c~)).
    if (lstm) {
      if (p.norm == kNormBatch) {
        pol.for_each(1, hl, [&](int64_t, int64_t jj) {
          batch_norm_column(w.ct + jj, hl, B, t, len, TT, p.training,
                            static_cast<const S*>(p.running_mean_c),
                            static_cast<const S*>(p.running_var_c), p.S, H, j0 + jj,
                            static_cast<A*>(p.batch_mean_c), static_cast<A*>(p.batch_var_c),
                            sv_rstd_c, w.col_mean + jj, w.col_rstd + jj, widen);
        });
        pol.sync_worker();
      } else if (p.norm == kNormLayer) {
        pol.row_stats(1, w.ct, hl, hl, H, w.row_mean, w.row_rstd);
        if (save && pol.first_worker()) pol.for_each(1, B, [&](int64_t, int64_t b) {
            sv_rstd_c[t * B + b] = w.row_rstd[b];
          });
      }
      const bool bn = p.norm == kNormBatch;
      pol.for_each(B, hl, [&](int64_t b, int64_t jj) {
        const int64_t e = b * hl + jj, j = j0 + jj;
        if (p.norm == kNormNone) {
          w.co[e] = w.ct[e];
        } else {
          const A mu = bn ? w.col_mean[jj] : w.row_mean[b];
          const A rs = bn ? w.col_rstd[jj] : w.row_rstd[b];
          const A x = (w.ct[e] - mu) * rs;
          if (save) sv_xhat_c[(t * B + b) * H + j] = x;
          w.co[e] = x * widen(gamma_c[j]) + widen(beta_c[j]);
        }
      });
      pol.sync_worker();
      pol.tanh_cols(w.co, B, hl, 0, hl);
      const auto zoned_c = zoneout_step_mask(pol, 0, zc, p.seed, p.base_zoneout_c, t, B, j0, hl);
      pol.sync_worker();
      pol.for_each(B, hl, [&](int64_t b, int64_t jj) {
        const int64_t e = b * hl + jj, j = j0 + jj;
        const A c_new = zoneout_forward(zc, zoned_c(b, j), w.c[e], w.ct[e]);
        if (active(t, b)) w.c[e] = c_new;
        if (save) sv_cstate[(t * B + b) * H + j] = w.c[e];
        const A h_cell = w.a[b * R + 3 * hl + jj] * w.co[e];  // lstm_h_tilde: o tanh(c_out)
        if (proj) {
          w.h_pre[b * H + j] = h_cell;
        } else {
          w.ct[e] = h_cell;
        }
      });
      pol.sync_worker();
    }
    const A* h_tilde = w.ct;  // [B][pl]
    if constexpr (Policy::kProjection) {
      if (proj) {
        pol.sync_all();
        pol.project(w.h_pre, w.h_proj);
        h_tilde = w.h_proj;
      }
    }

    // 5. Zoneout of h, state update, outputs, own slice of m_h ⊙ h_t.
    const auto zoned_h = zoneout_step_mask(pol, 1, zh, p.seed, p.base_zoneout_h, t, B, q0, pl);
    pol.for_each(B, pl, [&](int64_t b, int64_t qq) {
      const int64_t e = b * pl + qq, q = q0 + qq;
      const bool act = active(t, b);
      const A h_new = zoneout_forward(zh, zoned_h(b, q), w.h[e], h_tilde[e]);
      if (act) w.h[e] = h_new;
      if (sv_hstate != nullptr) sv_hstate[(t * B + b) * P + q] = w.h[e];
      out[t * p.out_stride_t + b * p.out_stride_b + q] = Policy::narrow(act ? h_new : A(0));
      pol.publish((s + 1) & 1, b, q, w.mh[e] * w.h[e]);
    });
    pol.sync_all();
  }

  write_final_slices(pol, B, P, H, lstm, w.h, w.c, p.h_n, p.c_n);
}

// Batch-norm backward of one column over the active rows: norm_backward's shift (from the
// means of dx(b) and of xhat(b), centring xhat) and the mean of dx(b) xhat(b).
template <class A, class Dx, class Xhat>
FRNN_STEP void batch_norm_column_sums(int64_t B, int64_t t, const int64_t* len, int64_t T,
                                      A inv_count, Dx dx, Xhat xhat, A* shift, A* m2) {
  A s1 = A(0), s2 = A(0), s3 = A(0);
  for (int64_t b = 0; b < B; ++b)
    if (t < (len != nullptr ? len[b] : T)) {
      const A d = dx(b), x = xhat(b);
      s1 += d;
      s2 += d * x;
      s3 += x;
    }
  *m2 = s2 * inv_count;
  *shift = norm_backward_shift(s1 * inv_count, *m2, s3 * inv_count);
}

// One layer-direction's backward time loop, run by every worker (see the top of this file).
template <class Policy>
FRNN_STEP void backward_steps(Policy& pol, const RecurrenceBwdParams& p,
                              const BackwardScratch<typename Policy::Acc>& w) {
  using S = typename Policy::Storage;
  using A = typename Policy::Acc;
  const int64_t TT = p.T, B = p.B, H = p.H, G = p.G, N = G * H;
  const int64_t j0 = pol.j0, hl = pol.hl, R = G * hl, q0 = pol.q0, pl = pol.pl;
  const bool proj = p.proj_size > 0;
  const int64_t P = proj ? p.proj_size : H;
  const bool lstm = p.cell == kCellLstm, gru = p.cell == kCellGru;
  const bool norm = p.norm != kNormNone, ln = p.norm == kNormLayer;
  const bool bn_train = p.norm == kNormBatch && p.training;
  const int64_t* len = p.lengths;
  auto widen = [](S v) { return Policy::widen(v); };
  auto active = [&](int64_t t, int64_t b) { return t < (len != nullptr ? len[b] : TT); };

  const S* h0 = static_cast<const S*>(p.h0);
  const S* c0 = static_cast<const S*>(p.c0);
  const S* gamma_hh = static_cast<const S*>(p.norm_weight_hh);
  const S* gamma_c = static_cast<const S*>(p.norm_weight_c);
  const S* beta_c = static_cast<const S*>(p.norm_bias_c);
  const S* out = static_cast<const S*>(p.out);
  const S* gout = static_cast<const S*>(p.grad_out);
  const S* ghn = static_cast<const S*>(p.grad_h_n);
  const S* gcn = static_cast<const S*>(p.grad_c_n);
  const A* sv_gates = static_cast<const A*>(p.gates);
  const A* sv_an = static_cast<const A*>(p.gru_hn);
  const A* sv_xhat_hh = static_cast<const A*>(p.xhat_hh);
  const A* sv_rstd_hh = static_cast<const A*>(p.rstd_hh);
  const A* sv_ctil = static_cast<const A*>(p.c_tilde);
  const A* sv_cstate = static_cast<const A*>(p.c_state);
  const A* sv_xhat_c = static_cast<const A*>(p.xhat_c);
  const A* sv_rstd_c = static_cast<const A*>(p.rstd_c);
  const A* sv_hstate = static_cast<const A*>(p.h_state);
  S* dxg = static_cast<S*>(p.dxg);
  A* dab = static_cast<A*>(p.dab);
  A* da = p.da != nullptr ? static_cast<A*>(p.da) : dab;
  A* hin = static_cast<A*>(p.hin);
  A* sv_dcout = static_cast<A*>(p.dc_out);
  A* sv_h_pre = static_cast<A*>(p.h_pre_proj);
  A* dproj = static_cast<A*>(p.dproj);
  A* dhc = proj ? w.dhtil_cell : w.dhtil;  // d(h~) of the cell's units

  const Zoneout<A> zc = make_zoneout<A>(p.p_zoneout_c, p.training);
  const Zoneout<A> zh = make_zoneout<A>(p.p_zoneout_h, p.training);
  const bool dropout = p.training && p.p_dropout > 0;
  const float p_drop = static_cast<float>(p.p_dropout);
  const A keep_scale = A(1) / static_cast<A>(1.0 - p.p_dropout);

  // h_{t-1} of row b, unit q: the state step tp produced when it ran for the row, else h_0.
  auto h_prev_of = [&](int64_t tp, bool prev_out, int64_t b, int64_t q) -> A {
    if (!prev_out) return widen(h0[b * P + q]);
    if (sv_hstate != nullptr) return sv_hstate[(tp * B + b) * P + q];
    return widen(out[tp * p.out_stride_t + b * p.out_stride_b + q]);
  };
  // The gradient of gate g of own unit jj, row b, step t: d_xg into dxg (xg's gradient),
  // d_ab into dab (the launcher's sums) and the worker's dab tile (they differ for GRU's n).
  auto write_gate = [&](int64_t t, int64_t b, int64_t g, int64_t jj, A d_ab, A d_xg) {
    const int64_t i = (t * B + b) * N + g * H + j0 + jj;
    dxg[i] = Policy::narrow(d_xg);
    dab[i] = d_ab;
    w.dab[b * R + g * hl + jj] = d_ab;
  };

  // Prologue: the dropout mask (drawn at t = 0), d(h_T) and d(c_T).
  pol.for_each(B, pl, [&](int64_t b, int64_t qq) {
    const int64_t e = b * pl + qq, q = q0 + qq;
    w.mh[e] = dropout
                  ? dropout_scale(mask_uniform(p.seed, p.base_dropout, 0, b, q), p_drop, keep_scale)
                  : A(1);
    w.dh[e] = widen(ghn[b * P + q]);
  });
  if (lstm)
    pol.for_each(B, hl, [&](int64_t b, int64_t jj) {
      w.dc[b * hl + jj] = gcn != nullptr ? widen(gcn[b * H + j0 + jj]) : A(0);
    });
  pol.sync_worker();

  // Steps A-D of step s for one (row b, own unit jj) (the fused form: no norm, so da = dab and
  // N_c is the identity, and no projection, so h units are the cell units): w.dh[e] / w.dc[e]
  // hold d(h_t) / d(c_t) on entry (d(h_t) with the recurrent part of the later step's product
  // already added) and the direct parts of d(h_{t-1}) / d(c_{t-1}) on return. The phased loop
  // below computes the same cells.cuh functions in the same order, spread over the worker's
  // threads (the host's phased tanh(c_out) is its vector version).
  auto fused_cell_backward_step = [&](int64_t s, int64_t b, int64_t jj) {
    const int64_t t = p.reverse ? TT - 1 - s : s;
    const int64_t tp = p.reverse ? t + 1 : t - 1;
    const bool has_prev = tp >= 0 && tp < TT;
    const int64_t e = b * hl + jj, j = j0 + jj;
    const bool act = active(t, b);
    const int64_t row = (t * B + b) * N;
    auto write_gate_fused = [&](int64_t g, A d_ab, A d_xg) {
      dxg[row + g * H + j] = Policy::narrow(d_xg);
      dab[row + g * H + j] = d_ab;
    };
    hin[(t * B + b) * P + j] = w.mh[e] * h_prev_of(tp, has_prev && active(tp, b), b, j);
    const A dnew =
        act ? w.dh[e] + widen(gout[t * p.grad_out_stride_t + b * p.grad_out_stride_b + j])
            : A(0);
    A dprev;
    const A dhtil = zoneout_backward(zh, zoned_out(zh, p.seed, p.base_zoneout_h, t, b, j), dnew,
                                     &dprev);
    A dh_prev = act ? dprev : w.dh[e];
    const A* gs = sv_gates + row;
    if (lstm) {
      A dcp;
      const A dctil = zoneout_backward(zc, zoned_out(zc, p.seed, p.base_zoneout_c, t, b, j),
                                       act ? w.dc[e] : A(0), &dcp);
      A dc_prev = act ? dcp : w.dc[e];
      const A o = gs[3 * H + j];
      const A tc = frnn_tanh(sv_ctil[(t * B + b) * H + j]);
      const A dco = tanh_grad(dhtil * o, tc);
      const A dpo = sigmoid_grad(dhtil * tc, o);
      write_gate_fused(3, dpo, dpo);
      const A dct = dctil + dco;
      const LstmGates<A> ga{gs[j], gs[H + j], gs[2 * H + j], o};
      const A c_prev = has_prev ? sv_cstate[(tp * B + b) * H + j] : widen(c0[b * H + j]);
      const LstmGateGrads<A> d = lstm_backward_c(ga, c_prev, act ? dct : A(0));
      write_gate_fused(0, d.i, d.i);
      write_gate_fused(1, d.f, d.f);
      write_gate_fused(2, d.g, d.g);
      if (act) dc_prev += d.c_prev;
      w.dc[e] = dc_prev;
    } else if (gru) {
      const A h_prev = h_prev_of(tp, has_prev && active(tp, b), b, j);
      const GruGates<A> ga{gs[j], gs[H + j], gs[2 * H + j]};
      const GruGrads<A> d =
          gru_backward(ga, sv_an[(t * B + b) * H + j], h_prev, act ? dhtil : A(0));
      write_gate_fused(0, d.x_r, d.x_r);
      write_gate_fused(1, d.x_z, d.x_z);
      write_gate_fused(2, d.a_n, d.x_n);
      if (act) dh_prev += d.h_prev;
    } else {
      const A d = rnn_backward(p.cell, gs[j], act ? dhtil : A(0));
      write_gate_fused(0, d, d);
    }
    w.dh[e] = dh_prev;
  };

  // The fused form: iteration s finishes d(h_t) of step s with the product of the later
  // step's d(a) (none for the last step) and runs step s's cell backward on it; the product of
  // step 0's d(a) then gives d(h_0). One barrier per step (d(a) of the step complete).
  if constexpr (PolicyFusesCellBackward<Policy>::value) {
    if (fused_cell_applies(p)) {
      for (int64_t s = TT - 1; s >= -1; --s) {
        const int64_t t_later = p.reverse ? TT - 2 - s : s + 1;  // the step of the product's d(a)
        pol.product_and_cell_backward(s + 1 < TT ? da + t_later * B * N : nullptr,
                                      [&](int64_t b, int64_t jj, A rec) {
                                        const int64_t e = b * hl + jj;
                                        w.dh[e] = w.dh[e] + w.mh[e] * rec;
                                        if (s >= 0) fused_cell_backward_step(s, b, jj);
                                      });
        if (s >= 0) pol.sync_all();
      }
      pol.sync_worker();
      write_final_slices(pol, B, P, H, lstm, w.dh, w.dc, p.dh0, p.dc0);
      return;
    }
  }

  for (int64_t s = TT - 1; s >= 0; --s) {
    const int64_t t = p.reverse ? TT - 1 - s : s;
    const int64_t tp = p.reverse ? t + 1 : t - 1;  // the step that produced h_{t-1}, c_{t-1}
    const bool has_prev = tp >= 0 && tp < TT;
    A count = A(0);
    for (int64_t b = 0; b < B; ++b) count += active(t, b) ? A(1) : A(0);
    const A inv_count = A(1) / (count > A(1) ? count : A(1));

    // Steps A-C in one vectorised pass (a policy with kVectorCell, vector_cell_applies(p):
    // without a norm C is nothing, da = dab).
    bool vector_cell = false;
    if constexpr (PolicyRunsVectorCell<Policy>::value) {
      vector_cell = vector_cell_applies(p);
      if (vector_cell) pol.vector_cell_backward_step(p, w, t, tp, has_prev);
    }
    if (!vector_cell) {
      // A. hin, d(h~) and the direct part of d(h_{t-1}) (zoneout of h), own h units.
      const auto zoned_h = zoneout_step_mask(pol, 1, zh, p.seed, p.base_zoneout_h, t, B, q0, pl);
      pol.for_each(B, pl, [&](int64_t b, int64_t qq) {
        const int64_t e = b * pl + qq, q = q0 + qq;
        const bool act = active(t, b);
        hin[(t * B + b) * P + q] = w.mh[e] * h_prev_of(tp, has_prev && active(tp, b), b, q);
        const A dnew =
            act ? w.dh[e] + widen(gout[t * p.grad_out_stride_t + b * p.grad_out_stride_b + q])
                : A(0);
        A dprev;
        w.dhtil[e] = zoneout_backward(zh, zoned_h(b, q), dnew, &dprev);
        w.dh_prev[e] = act ? dprev : w.dh[e];
        if (proj) dproj[(t * B + b) * P + q] = w.dhtil[e];
      });
      pol.sync_worker();
      if constexpr (Policy::kProjection) {
        if (proj) {
          pol.sync_all();
          pol.project_backward(dproj + t * B * P, w.dhtil_cell);
        }
      }

      // B. The cell's backward: d(gates) of own units into dxg, dab and the dab tile.
      if (lstm) {
        // tanh(c_out), c_out = N_c(c~) (from the saved xhat_c) or c~.
        pol.for_each(B, hl, [&](int64_t b, int64_t jj) {
          const int64_t i = (t * B + b) * H + j0 + jj;
          w.dco[b * hl + jj] =
              norm ? sv_xhat_c[i] * widen(gamma_c[j0 + jj]) + widen(beta_c[j0 + jj]) : sv_ctil[i];
        });
        pol.sync_worker();
        pol.tanh_cols(w.dco, B, hl, 0, hl);
        const auto zoned_c = zoneout_step_mask(pol, 0, zc, p.seed, p.base_zoneout_c, t, B, j0, hl);
        pol.sync_worker();
        // h~ = o tanh(c_out): d(pre_o), d(c_out); zoneout of c.
        pol.for_each(B, hl, [&](int64_t b, int64_t jj) {
          const int64_t e = b * hl + jj, j = j0 + jj;
          const bool act = active(t, b);
          A dprev;
          w.dctil[e] = zoneout_backward(zc, zoned_c(b, j), act ? w.dc[e] : A(0), &dprev);
          w.dc_prev[e] = act ? dprev : w.dc[e];
          const A o = sv_gates[(t * B + b) * N + 3 * H + j];
          const A tc = w.dco[e];
          if (proj) sv_h_pre[(t * B + b) * H + j] = o * tc;
          const A dco = tanh_grad(dhc[e] * o, tc);
          const A dpo = sigmoid_grad(dhc[e] * tc, o);
          write_gate(t, b, 3, jj, dpo, dpo);
          w.dco[e] = dco;
          if (norm) sv_dcout[(t * B + b) * H + j] = dco;
        });
        pol.sync_worker();
        // N_c backward: the statistics of d(xhat_c).
        if (bn_train) {
          pol.for_each(1, hl, [&](int64_t, int64_t jj) {
            const int64_t j = j0 + jj;
            const A gj = widen(gamma_c[j]);
            batch_norm_column_sums(
                B, t, len, TT, inv_count, [&](int64_t b) { return w.dco[b * hl + jj] * gj; },
                [&](int64_t b) { return sv_xhat_c[(t * B + b) * H + j]; }, w.col_a + jj,
                w.col_b + jj);
          });
          pol.sync_worker();
        } else if (ln) {
          pol.row_sums(1, hl, A(1) / A(H), [&](int64_t b, int64_t jj) {
            const int64_t j = j0 + jj;
            const A dx = w.dco[b * hl + jj] * widen(gamma_c[j]);
            const A xh = sv_xhat_c[(t * B + b) * H + j];
            return NormSums<A>{dx, dx * xh, xh};
          }, w.row_a, w.row_b);
        }
        // d(c~) += N_c'(d c_out); c~ = f c_{t-1} + i g.
        pol.for_each(B, hl, [&](int64_t b, int64_t jj) {
          const int64_t e = b * hl + jj, j = j0 + jj;
          const bool act = active(t, b);
          A dct = w.dctil[e];
          if (norm) {
            const A dx = w.dco[e] * widen(gamma_c[j]);
            const A xh = sv_xhat_c[(t * B + b) * H + j];
            if (ln) {
              dct += norm_backward(dx, xh, sv_rstd_c[t * B + b], w.row_a[b], w.row_b[b]);
            } else if (bn_train) {
              dct += act ? norm_backward(dx, xh, sv_rstd_c[t * H + j], w.col_a[jj], w.col_b[jj])
                         : A(0);
            } else {
              dct += dx * sv_rstd_c[t * H + j];
            }
          } else {
            dct += w.dco[e];
          }
          const A* gs = sv_gates + (t * B + b) * N;
          const LstmGates<A> ga{gs[j], gs[H + j], gs[2 * H + j], gs[3 * H + j]};
          const A c_prev = has_prev ? sv_cstate[(tp * B + b) * H + j] : widen(c0[b * H + j]);
          const LstmGateGrads<A> d = lstm_backward_c(ga, c_prev, act ? dct : A(0));
          write_gate(t, b, 0, jj, d.i, d.i);
          write_gate(t, b, 1, jj, d.f, d.f);
          write_gate(t, b, 2, jj, d.g, d.g);
          if (act) w.dc_prev[e] += d.c_prev;
        });
      } else if (gru) {  // no projection: h units are the cell units (pl = hl, q0 = j0)
        pol.for_each(B, hl, [&](int64_t b, int64_t jj) {
          const int64_t e = b * hl + jj, j = j0 + jj;
          const bool act = active(t, b);
          const A h_prev = h_prev_of(tp, has_prev && active(tp, b), b, j);
          const A* gs = sv_gates + (t * B + b) * N;
          const GruGates<A> ga{gs[j], gs[H + j], gs[2 * H + j]};
          const GruGrads<A> d =
              gru_backward(ga, sv_an[(t * B + b) * H + j], h_prev, act ? w.dhtil[e] : A(0));
          write_gate(t, b, 0, jj, d.x_r, d.x_r);
          write_gate(t, b, 1, jj, d.x_z, d.x_z);
          write_gate(t, b, 2, jj, d.a_n, d.x_n);
          if (act) w.dh_prev[e] += d.h_prev;
        });
      } else {
        pol.for_each(B, hl, [&](int64_t b, int64_t jj) {
          const A y = sv_gates[(t * B + b) * N + j0 + jj];
          const A d = rnn_backward(p.cell, y, active(t, b) ? w.dhtil[b * hl + jj] : A(0));
          write_gate(t, b, 0, jj, d, d);
        });
      }
      pol.sync_worker();

      // C. N_hh backward: da of own columns (dab itself without a norm).
      if (norm) {
        auto ncol = [&](int64_t r) { return (r / hl) * H + j0 + r % hl; };
        if (bn_train) {
          pol.for_each(1, R, [&](int64_t, int64_t r) {
            const int64_t n = ncol(r);
            const A gn = widen(gamma_hh[n]);
            batch_norm_column_sums(
                B, t, len, TT, inv_count, [&](int64_t b) { return w.dab[b * R + r] * gn; },
                [&](int64_t b) { return sv_xhat_hh[(t * B + b) * N + n]; }, w.col_a + r,
                w.col_b + r);
          });
          pol.sync_worker();
        } else if (ln) {
          pol.row_sums(0, R, A(1) / A(N), [&](int64_t b, int64_t r) {
            const int64_t n = ncol(r);
            const A dx = w.dab[b * R + r] * widen(gamma_hh[n]);
            const A xh = sv_xhat_hh[(t * B + b) * N + n];
            return NormSums<A>{dx, dx * xh, xh};
          }, w.row_a, w.row_b);
        }
        pol.for_each(B, R, [&](int64_t b, int64_t r) {
          const int64_t n = ncol(r);
          const A dx = w.dab[b * R + r] * widen(gamma_hh[n]);
          const A xh = sv_xhat_hh[(t * B + b) * N + n];
          A v;
          if (ln) {
            v = norm_backward(dx, xh, sv_rstd_hh[t * B + b], w.row_a[b], w.row_b[b]);
          } else if (bn_train) {
            v = active(t, b) ? norm_backward(dx, xh, sv_rstd_hh[t * N + n], w.col_a[r], w.col_b[r])
                             : A(0);
          } else {
            v = dx * sv_rstd_hh[t * N + n];
          }
          da[(t * B + b) * N + n] = v;
        });
      }
    }
    pol.sync_all();  // da_t complete

    // D. d(h_{t-1}) = direct part + m_h ⊙ (da_t W_hh)[:, own]; d(c_{t-1}).
    pol.backward_product(da + t * B * N, w.dhin);
    pol.for_each(B, pl, [&](int64_t b, int64_t qq) {
      const int64_t e = b * pl + qq;
      w.dh[e] = w.dh_prev[e] + w.mh[e] * w.dhin[e];
    });
    if (lstm) pol.for_each(B, hl, [&](int64_t b, int64_t jj) {
        w.dc[b * hl + jj] = w.dc_prev[b * hl + jj];
      });
    pol.sync_worker();
  }

  write_final_slices(pol, B, P, H, lstm, w.dh, w.dc, p.dh0, p.dc0);
}

}  // namespace fusedrnn
