// The `host` backend: fusedrnn's recurrence on the CPU, with the cell math and Philox of
// cells.cuh / philox.cuh (the same functions the CUDA kernels run).
//
// It mirrors the persistent CUDA kernels: one OpenMP parallel region spans the whole time
// loop; thread k owns a slice of hidden units with all their gates (like a CUDA block), keeps
// its packed slice of W_hh hot in its core's cache for all steps, computes the per-step
// product for its columns with a blocked GEMM and meets the other threads at a barrier once
// per step (plus one per layer-norm reduction). Batch-norm statistics are thread-local
// because a thread owns every batch row of its columns. Splitting hidden units rather than
// batch rows keeps each core's W_hh slice in its own L2 (W_hh is the large operand).
#include "recurrence_host.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "fusedrnn/cells.cuh"
#include "fusedrnn/step_loop.h"
#include "gemm.h"
#include "simd_math.h"
#include "weight_drop_host.h"

namespace fusedrnn {
namespace host {
namespace {

inline void barrier() {
#if defined(_OPENMP)
#pragma omp barrier
#endif
}
inline int thread_id() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}
inline int team_size() {
#if defined(_OPENMP)
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// The slice of hidden units [j0, j1) that thread `tid` of `nt` owns.
struct Slice {
  int64_t j0, j1;
  int64_t size() const { return j1 - j0; }
};
inline Slice slice_of(int64_t H, int tid, int nt) {
  return Slice{H * tid / nt, H * (tid + 1) / nt};
}

template <class T>
struct Common {
  int64_t T_, B, H, G, N;
  int cell, norm;
  bool training, reverse;
  std::vector<int64_t> len;  // [B]
  Zoneout<T> zc, zh;
  float p_drop;
  T keep_scale;
  bool weight_drop;  // training with p_weight_drop > 0

  explicit Common(const RecurrenceFwdParams& p)
      : T_(p.T), B(p.B), H(p.H), G(p.G), N(p.G * p.H), cell(p.cell), norm(p.norm),
        training(p.training), reverse(p.reverse), len(static_cast<size_t>(p.B), p.T) {
    if (p.lengths != nullptr)
      for (int64_t b = 0; b < B; ++b) len[b] = p.lengths[b];
    zc = make_zoneout<T>(p.p_zoneout_c, training);
    zh = make_zoneout<T>(p.p_zoneout_h, training);
    p_drop = static_cast<float>(p.p_dropout);
    keep_scale = T(1) / static_cast<T>(1.0 - p.p_dropout);
    weight_drop = training && p.p_weight_drop > 0;
  }
  // With weight drop in training: W_hh rows row_of(r) (r < rows), columns [col0, col0 + cols),
  // times the weight-drop mask (weight_drop_host.h), as the dense [rows, cols] buffer a thread
  // packs its panels from, once per call (the mask itself is never stored); else empty.
  template <class RowOf>
  std::vector<T> dropped_weight(const RecurrenceFwdParams& p, const T* w, int64_t ld,
                                int64_t rows, RowOf row_of, int64_t col0, int64_t cols) const {
    std::vector<T> out;
    if (!weight_drop) return out;
    out.resize(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r)
      weight_drop_row(p.weight_drop_key, p.base_weight_drop, p.p_weight_drop, row_of(r), col0,
                      cols, w + row_of(r) * ld + col0, out.data() + r * cols);
    return out;
  }
  bool dropout_on() const { return training && p_drop > 0.f; }
  int64_t time_at(int64_t s) const { return reverse ? T_ - 1 - s : s; }
  int64_t stat_row(int64_t t, int64_t S) const { return std::min(t, S - 1); }
  // Variational recurrent-dropout mask of units [j0, j1): [B][j1 - j0].
  std::vector<T> dropout_mask(const RecurrenceFwdParams& p, Slice s) const {
    std::vector<T> m(static_cast<size_t>(B * s.size()), T(1));
    if (!dropout_on()) return m;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = s.j0; j < s.j1; ++j)
        m[b * s.size() + j - s.j0] =
            dropout_scale(mask_uniform(p.seed, p.base_dropout, 0, b, j), p_drop, keep_scale);
    return m;
  }
};

// Mean and M2 of one row slice.
template <class T>
MeanM2<T> row_partial(const T* v, int64_t n) {
  MeanM2<T> r{T(n), T(0), T(0)};
  if (n == 0) return r;
  T sum = 0;
  for (int64_t c = 0; c < n; ++c) sum += v[c];
  r.mean = sum / T(n);
  for (int64_t c = 0; c < n; ++c) {
    const T d = v[c] - r.mean;
    r.m2 += d * d;
  }
  return r;
}

// ======================================================================================
// Forward: the shared step loop (fusedrnn/step_loop.h) on OpenMP threads
// ======================================================================================
// Thread k of nt is one worker: cell units slice_of(H, k, nt), h units slice_of(P, k, nt) with
// a projection (else the same slice). Its product is gemm_packed over its packed W_hh^T
// columns; the exchange is a [2, B, P] double buffer every thread writes its slice of.
template <class T>
struct HostForwardPolicy {
  using Storage = T;
  using Acc = T;
  static constexpr bool kProjection = true;
  static T widen(T v) { return v; }
  static T narrow(T v) { return v; }

  int64_t j0, hl, q0, pl;
  int tid, nt;
  int64_t B, H, P, R;
  const T* w_packed;     // W_hh^T restricted to own columns (pack_b)
  const T* w_hr_packed;  // W_hr^T restricted to own h units (projection)
  T* hin;                // [2][B][P] m_h * h exchange
  MeanM2<T>* parts[2];   // [nt][B] layer-norm partials of W_hh h and of c~

  bool first_worker() const { return tid == 0; }
  template <class F>
  void for_each(int64_t rows, int64_t cols, F f) const {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t k = 0; k < cols; ++k) f(i, k);
  }
  void sync_worker() const {}
  void sync_all() const { barrier(); }
  void recurrent_product(int64_t s, T* a) const {
    if (R > 0) gemm_packed(B, R, P, hin + (s & 1) * B * P, P, w_packed, a, R, false);
  }
  void publish(int64_t buffer, int64_t b, int64_t q, T v) const {
    hin[(buffer * B + b) * P + q] = v;
  }
  // Own partials, a barrier, then every thread merges all threads' partials in thread order
  // (so every thread gets the same statistics).
  void row_stats(int which, const T* x, int64_t ld, int64_t cols, int64_t total, T* mean,
                 T* rstd) const {
    MeanM2<T>* part = parts[which];
    for (int64_t b = 0; b < B; ++b) part[tid * B + b] = row_partial(x + b * ld, cols);
    barrier();
    for (int64_t b = 0; b < B; ++b) {
      MeanM2<T> m = part[b];
      for (int k = 1; k < nt; ++k) m = mean_m2_merge(m, part[k * B + b]);
      mean[b] = m.mean;
      rstd[b] = norm_rstd(m.m2 / T(total));
    }
  }
  // The vectorised simd_math.h functions over each row's column range (one call when the
  // range is whole rows).
  void sigmoid_cols(T* x, int64_t rows, int64_t ld, int64_t c0, int64_t c1) const {
    on_cols([](T* v, int64_t n) { sigmoid_inplace(v, n); }, x, rows, ld, c0, c1);
  }
  void tanh_cols(T* x, int64_t rows, int64_t ld, int64_t c0, int64_t c1) const {
    on_cols([](T* v, int64_t n) { tanh_inplace(v, n); }, x, rows, ld, c0, c1);
  }
  template <class F>
  static void on_cols(F fn, T* x, int64_t rows, int64_t ld, int64_t c0, int64_t c1) {
    if (c0 == 0 && c1 == ld) return fn(x, rows * ld);
    for (int64_t i = 0; i < rows; ++i) fn(x + i * ld + c0, c1 - c0);
  }
  void project(const T* h_pre, T* h_proj) const {
    if (pl > 0) gemm_packed(B, pl, H, h_pre, H, w_hr_packed, h_proj, pl, false);
  }
};

template <class T>
void forward_impl(const RecurrenceFwdParams& p) {
  const Common<T> cm(p);
  const int64_t B = cm.B, H = cm.H, G = cm.G;
  const T* w = static_cast<const T*>(p.w_hh);
  const T* w_hr = static_cast<const T*>(p.w_hr);
  const bool proj = p.proj_size > 0;
  const int64_t P = proj ? p.proj_size : H;  // units of h

  const int nt_req = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(p.num_threads, H)));
  std::vector<T> hin(static_cast<size_t>(2 * B * P));
  std::vector<T> h_pre(static_cast<size_t>(proj ? B * H : 0));  // o tanh(c_out) of every unit
  std::vector<MeanM2<T>> part_hh(static_cast<size_t>(nt_req * B));
  std::vector<MeanM2<T>> part_c(static_cast<size_t>(nt_req * B));

#if defined(_OPENMP)
#pragma omp parallel num_threads(nt_req)
#endif
  {
    const int tid = thread_id();
    const int nt = team_size();
    const Slice sl = slice_of(H, tid, nt);
    const int64_t hl = sl.size();
    const int64_t nl = G * hl;  // own columns, gate-major: c = g * hl + jj
    auto col = [&](int64_t c) { return (c / hl) * H + sl.j0 + c % hl; };
    const Slice so = proj ? slice_of(P, tid, nt) : sl;  // own units of h
    const int64_t pl = so.size();
    // Packed W_hh^T restricted to own columns: B[k][c] = W[col(c)][k].
    const std::vector<T> dropped = cm.dropped_weight(p, w, P, nl, col, 0, P);
    const std::vector<T> wp = pack_b<T>(P, nl, 1, [&](int64_t c) {
      return dropped.empty() ? w + col(c) * P : dropped.data() + c * P;
    });
    // Packed W_hr^T restricted to own outputs: B[k][q] = W_hr[so.j0 + q][k].
    const std::vector<T> wrp =
        proj ? pack_b<T>(H, pl, 1, [&](int64_t q) { return w_hr + (so.j0 + q) * H; })
             : std::vector<T>();
    auto buffer = [](int64_t n) {
      return std::vector<T>(static_cast<size_t>(std::max<int64_t>(n, 1)));
    };
    std::vector<T> a = buffer(B * nl), h = buffer(B * pl), c = buffer(B * hl), ct = buffer(B * hl),
                   co = buffer(B * hl), mh = buffer(B * pl), col_mean = buffer(nl),
                   col_rstd = buffer(nl), row_mean = buffer(B), row_rstd = buffer(B),
                   h_proj = buffer(proj ? B * pl : 0);
    ForwardScratch<T> scratch;
    scratch.a = a.data();
    scratch.h = h.data();
    scratch.c = c.data();
    scratch.ct = ct.data();
    scratch.co = co.data();
    scratch.mh = mh.data();
    scratch.col_mean = col_mean.data();
    scratch.col_rstd = col_rstd.data();
    scratch.row_mean = row_mean.data();
    scratch.row_rstd = row_rstd.data();
    scratch.h_pre = h_pre.data();
    scratch.h_proj = h_proj.data();
    HostForwardPolicy<T> policy{sl.j0, hl, so.j0, pl, tid, nt, B, H, P, nl, wp.data(),
                                wrp.data(), hin.data(), {part_hh.data(), part_c.data()}};
    forward_steps(policy, p, scratch);
  }
}

// ======================================================================================
// Backward
// ======================================================================================
template <class T>
void backward_impl(const RecurrenceBwdParams& p) {
  const Common<T> cm(p);
  const int64_t B = cm.B, H = cm.H, G = cm.G, N = cm.N, TT = cm.T_;
  const T* h0 = static_cast<const T*>(p.h0);
  const T* c0 = static_cast<const T*>(p.c0);
  const T* w = static_cast<const T*>(p.w_hh);
  const T* w_hr = static_cast<const T*>(p.w_hr);
  const T* norm_weight_hh = static_cast<const T*>(p.norm_weight_hh);
  const T* norm_weight_c = static_cast<const T*>(p.norm_weight_c);
  const T* norm_bias_c = static_cast<const T*>(p.norm_bias_c);
  const T* out = static_cast<const T*>(p.out);
  const T* sv_gates = static_cast<const T*>(p.gates);
  const T* sv_an = static_cast<const T*>(p.gru_hn);
  const T* sv_xhat_hh = static_cast<const T*>(p.xhat_hh);
  const T* sv_rstd_hh = static_cast<const T*>(p.rstd_hh);
  const T* sv_ctil = static_cast<const T*>(p.c_tilde);
  const T* sv_cstate = static_cast<const T*>(p.c_state);
  const T* sv_xhat_c = static_cast<const T*>(p.xhat_c);
  const T* sv_rstd_c = static_cast<const T*>(p.rstd_c);
  const T* gout = static_cast<const T*>(p.grad_out);
  const T* ghn = static_cast<const T*>(p.grad_h_n);
  const T* gcn = static_cast<const T*>(p.grad_c_n);
  T* dxg = static_cast<T*>(p.dxg);
  T* dab = static_cast<T*>(p.dab);
  T* da = p.da != nullptr ? static_cast<T*>(p.da) : dab;
  T* hin = static_cast<T*>(p.hin);
  T* dcout_sv = static_cast<T*>(p.dc_out);
  T* sv_h_pre = static_cast<T*>(p.h_pre_proj);
  T* dproj = static_cast<T*>(p.dproj);
  T* dh0 = static_cast<T*>(p.dh0);
  T* dc0 = static_cast<T*>(p.dc0);
  const bool lstm = cm.cell == kCellLstm, gru = cm.cell == kCellGru;
  const bool norm = cm.norm != kNormNone;
  const bool bn_train = cm.norm == kNormBatch && cm.training;
  const bool proj = p.proj_size > 0;
  const int64_t P = proj ? p.proj_size : H;  // units of h

  const int nt_req = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(p.num_threads, H)));
  // Layer norm row partials: (sum dxhat, sum dxhat * xhat) per thread and row.
  std::vector<T> part_hh(static_cast<size_t>(nt_req * B * 2));
  std::vector<T> part_c(static_cast<size_t>(nt_req * B * 2));

#if defined(_OPENMP)
#pragma omp parallel num_threads(nt_req)
#endif
  {
    const int tid = thread_id();
    const int nt = team_size();
    const Slice sl = slice_of(H, tid, nt);
    const int64_t hl = sl.size();
    // Own units of h (as in forward): a slice of the P projection outputs, or the cell slice.
    const Slice so = proj ? slice_of(P, tid, nt) : sl;
    const int64_t pl = so.size();
    // Packed W_hh restricted to own input units: B[n][kk] = W[n][so.j0 + kk] (W_hh is [N, P]).
    const std::vector<T> dropped =
        cm.dropped_weight(p, w, P, N, [](int64_t n) { return n; }, so.j0, pl);
    const std::vector<T> wp =
        dropped.empty()
            ? pack_b<T>(N, pl, P, [&](int64_t kk) { return w + so.j0 + kk; })
            : pack_b<T>(N, pl, pl, [&](int64_t kk) { return dropped.data() + kk; });
    // Packed W_hr restricted to own cell units: B[q][jj] = W_hr[q][sl.j0 + jj].
    const std::vector<T> wrp =
        proj ? pack_b<T>(P, hl, H, [&](int64_t jj) { return w_hr + sl.j0 + jj; })
             : std::vector<T>();
    const std::vector<T> mh = cm.dropout_mask(p, so);
    // Over own units of h: d(h_t), its part for h_{t-1}, d(h~) (the projection's output with
    // a projection), the product da W_hh.
    std::vector<T> dh(static_cast<size_t>(B * pl)), dh_prev(dh.size()), dhtil_out(dh.size());
    std::vector<T> dhin(static_cast<size_t>(std::max<int64_t>(1, B * pl)));
    // Over own cell units: d(c_t), its part for c_{t-1}, d(N_c(c~)), d(c~), d(o tanh(c_out)).
    std::vector<T> dc(static_cast<size_t>(B * hl), T(0));
    std::vector<T> dc_prev(dc.size()), dcout(dc.size()), dctil(dc.size());
    std::vector<T> dhtil_cell(static_cast<size_t>(proj ? std::max<int64_t>(1, B * hl) : 0));
    // d(h~) of the cell's own units: the projection's input gradient, or dhtil_out itself.
    T* dhtil = proj ? dhtil_cell.data() : dhtil_out.data();
    std::vector<T> colsum(static_cast<size_t>(std::max<int64_t>(1, G * hl)));
    std::vector<T> colsum2(colsum.size());
    std::vector<T> tanh_c_out(static_cast<size_t>(lstm ? hl : 0));  // one row, vectorised
    std::vector<uint8_t> active(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t jj = 0; jj < pl; ++jj) dh[b * pl + jj] = ghn[b * P + so.j0 + jj];
      if (lstm && gcn != nullptr)
        for (int64_t jj = 0; jj < hl; ++jj) dc[b * hl + jj] = gcn[b * H + sl.j0 + jj];
    }

    for (int64_t s = TT - 1; s >= 0; --s) {
      const int64_t t = cm.time_at(s);
      const int64_t tp = cm.reverse ? t + 1 : t - 1;  // the step that produced the state
      const bool has_prev = tp >= 0 && tp < TT;
      T count = 0;
      for (int64_t b = 0; b < B; ++b) {
        active[b] = t < cm.len[b];
        count += active[b] ? T(1) : T(0);
      }
      const T inv_count = T(1) / std::max(count, T(1));

      // h_{t-1}, masked input of the product (for dW_hh), and d of the new state (own
      // units of h); zoneout on h splits it into the previous state and h~.
      for (int64_t b = 0; b < B; ++b) {
        const bool act = active[b] != 0;
        const bool prev_out = has_prev && tp < cm.len[b];
        const T* gb = gout + t * p.grad_out_stride_t + b * p.grad_out_stride_b;
        for (int64_t jj = 0; jj < pl; ++jj) {
          const int64_t j = so.j0 + jj;
          const int64_t e = b * pl + jj;
          const T h_prev =
              prev_out ? out[tp * p.out_stride_t + b * p.out_stride_b + j] : h0[b * P + j];
          hin[(t * B + b) * P + j] = mh[e] * h_prev;
          const T dnew = act ? dh[e] + gb[j] : T(0);
          const bool zh = zoned_out(cm.zh, p.seed, p.base_zoneout_h, t, b, j);
          T dprev_h;
          dhtil_out[e] = zoneout_backward(cm.zh, zh, dnew, &dprev_h);
          dh_prev[e] = act ? dprev_h : dh[e];
          if (proj) dproj[(t * B + b) * P + j] = dhtil_out[e];
        }
      }
      // Projection: d(o tanh(c_out)) = d(h~) W_hr for own cell units, once every d(h~) is in.
      if (proj) {
        barrier();
        if (hl > 0) gemm_packed(B, hl, P, dproj + t * B * P, P, wrp.data(), dhtil, hl, false);
      }

      if (lstm) {
        for (int64_t b = 0; b < B; ++b) {
          const bool act = active[b] != 0;
          // tanh(c_out) of the row, for lstm_backward_h's formula below
          for (int64_t jj = 0; jj < hl; ++jj) {
            const int64_t j = sl.j0 + jj;
            const int64_t e = (t * B + b) * H + j;
            tanh_c_out[jj] = norm ? sv_xhat_c[e] * norm_weight_c[j] + norm_bias_c[j] : sv_ctil[e];
          }
          tanh_inplace(tanh_c_out.data(), hl);
          for (int64_t jj = 0; jj < hl; ++jj) {
            const int64_t j = sl.j0 + jj;
            const int64_t e = b * hl + jj;
            const bool zc = zoned_out(cm.zc, p.seed, p.base_zoneout_c, t, b, j);
            T dprev_c;
            const T dct = zoneout_backward(cm.zc, zc, act ? dc[e] : T(0), &dprev_c);
            dctil[e] = dct;
            dc_prev[e] = act ? dprev_c : dc[e];
            // h~ = o tanh(c_out): d(pre_o) and d(c_out) (lstm_backward_h, with the
            // row's tanh(c_out) computed above).
            const T o = sv_gates[(t * B + b) * N + 3 * H + j];
            const T tc = tanh_c_out[jj];
            if (proj) sv_h_pre[(t * B + b) * H + j] = o * tc;
            const T dco = tanh_grad(dhtil[e] * o, tc);
            const T dpo = sigmoid_grad(dhtil[e] * tc, o);
            dxg[(t * B + b) * N + 3 * H + j] = dpo;
            dab[(t * B + b) * N + 3 * H + j] = dpo;
            dcout[e] = dco;
            if (norm) dcout_sv[(t * B + b) * H + j] = dco;
          }
        }
      }

      if (lstm) {
        // Backward of N_c: d(c~) += N_c'(d c_out).
        if (norm) {
          if (cm.norm == kNormLayer || bn_train) {
            // sums of dxhat and dxhat * xhat: per column (BN) or per row (LN)
            if (cm.norm == kNormBatch) {
              std::fill(colsum.begin(), colsum.begin() + hl, T(0));
              std::fill(colsum2.begin(), colsum2.begin() + hl, T(0));
              for (int64_t b = 0; b < B; ++b) {
                if (!active[b]) continue;
                for (int64_t jj = 0; jj < hl; ++jj) {
                  const int64_t j = sl.j0 + jj;
                  const T dx = dcout[b * hl + jj] * norm_weight_c[j];
                  colsum[jj] += dx;
                  colsum2[jj] += dx * sv_xhat_c[(t * B + b) * H + j];
                }
              }
            } else {
              for (int64_t b = 0; b < B; ++b) {
                T s1 = 0, s2 = 0;
                for (int64_t jj = 0; jj < hl; ++jj) {
                  const int64_t j = sl.j0 + jj;
                  const T dx = dcout[b * hl + jj] * norm_weight_c[j];
                  s1 += dx;
                  s2 += dx * sv_xhat_c[(t * B + b) * H + j];
                }
                part_c[(tid * B + b) * 2] = s1;
                part_c[(tid * B + b) * 2 + 1] = s2;
              }
              barrier();
            }
          }
          for (int64_t b = 0; b < B; ++b) {
            T m1 = 0, m2 = 0;
            if (cm.norm == kNormLayer) {
              for (int k = 0; k < nt; ++k) {
                m1 += part_c[(k * B + b) * 2];
                m2 += part_c[(k * B + b) * 2 + 1];
              }
              m1 /= T(H);
              m2 /= T(H);
            }
            for (int64_t jj = 0; jj < hl; ++jj) {
              const int64_t j = sl.j0 + jj;
              const int64_t e = b * hl + jj;
              const T dx = dcout[e] * norm_weight_c[j];
              const T xh = sv_xhat_c[(t * B + b) * H + j];
              T dct;
              if (cm.norm == kNormLayer) {
                dct = norm_backward(dx, xh, sv_rstd_c[t * B + b], m1, m2);
              } else if (bn_train) {
                dct = active[b] ? norm_backward(dx, xh, sv_rstd_c[t * H + j],
                                                colsum[jj] * inv_count, colsum2[jj] * inv_count)
                                : T(0);
              } else {
                dct = dx * sv_rstd_c[t * H + j];
              }
              dctil[e] += dct;
            }
          }
        } else {
          for (int64_t e = 0; e < B * hl; ++e) dctil[e] += dcout[e];
        }
        // c~ = f c_prev + i g.
        for (int64_t b = 0; b < B; ++b) {
          const bool act = active[b] != 0;
          const T* gs = sv_gates + (t * B + b) * N;
          T* dx = dxg + (t * B + b) * N;
          T* dy = dab + (t * B + b) * N;
          for (int64_t jj = 0; jj < hl; ++jj) {
            const int64_t j = sl.j0 + jj;
            const int64_t e = b * hl + jj;
            const LstmGates<T> ga{gs[j], gs[H + j], gs[2 * H + j], gs[3 * H + j]};
            const T c_prev = has_prev ? sv_cstate[(tp * B + b) * H + j] : c0[b * H + j];
            const LstmGateGrads<T> d = lstm_backward_c(ga, c_prev, act ? dctil[e] : T(0));
            dx[j] = dy[j] = d.i;
            dx[H + j] = dy[H + j] = d.f;
            dx[2 * H + j] = dy[2 * H + j] = d.g;
            if (act) dc_prev[e] += d.c_prev;
          }
        }
      } else if (gru) {
        for (int64_t b = 0; b < B; ++b) {
          const bool act = active[b] != 0;
          const bool prev_out = has_prev && tp < cm.len[b];
          const T* gs = sv_gates + (t * B + b) * N;
          T* dx = dxg + (t * B + b) * N;
          T* dy = dab + (t * B + b) * N;
          for (int64_t jj = 0; jj < hl; ++jj) {
            const int64_t j = sl.j0 + jj;
            const int64_t e = b * hl + jj;
            const GruGates<T> ga{gs[j], gs[H + j], gs[2 * H + j]};
            const T h_prev =
                prev_out ? out[tp * p.out_stride_t + b * p.out_stride_b + j] : h0[b * H + j];
            const GruGrads<T> d =
                gru_backward(ga, sv_an[(t * B + b) * H + j], h_prev, act ? dhtil[e] : T(0));
            dx[j] = dy[j] = d.x_r;
            dx[H + j] = dy[H + j] = d.x_z;
            dx[2 * H + j] = d.x_n;
            dy[2 * H + j] = d.a_n;
            if (act) dh_prev[e] += d.h_prev;
          }
        }
      } else {
        for (int64_t b = 0; b < B; ++b) {
          const bool act = active[b] != 0;
          const T* gs = sv_gates + (t * B + b) * N;
          for (int64_t jj = 0; jj < hl; ++jj) {
            const int64_t j = sl.j0 + jj;
            const T d = rnn_backward(cm.cell, gs[j], act ? dhtil[b * hl + jj] : T(0));
            dxg[(t * B + b) * N + j] = d;
            dab[(t * B + b) * N + j] = d;
          }
        }
      }

      // Backward of N_hh: da from dab (own columns).
      if (norm) {
        if (cm.norm == kNormBatch && bn_train) {
          std::fill(colsum.begin(), colsum.end(), T(0));
          std::fill(colsum2.begin(), colsum2.end(), T(0));
          for (int64_t b = 0; b < B; ++b) {
            if (!active[b]) continue;
            const T* dy = dab + (t * B + b) * N;
            const T* xh = sv_xhat_hh + (t * B + b) * N;
            for (int64_t g = 0; g < G; ++g)
              for (int64_t jj = 0; jj < hl; ++jj) {
                const int64_t n = g * H + sl.j0 + jj;
                const T dx = dy[n] * norm_weight_hh[n];
                colsum[g * hl + jj] += dx;
                colsum2[g * hl + jj] += dx * xh[n];
              }
          }
        } else if (cm.norm == kNormLayer) {
          for (int64_t b = 0; b < B; ++b) {
            const T* dy = dab + (t * B + b) * N;
            const T* xh = sv_xhat_hh + (t * B + b) * N;
            T s1 = 0, s2 = 0;
            for (int64_t g = 0; g < G; ++g)
              for (int64_t jj = 0; jj < hl; ++jj) {
                const int64_t n = g * H + sl.j0 + jj;
                const T dx = dy[n] * norm_weight_hh[n];
                s1 += dx;
                s2 += dx * xh[n];
              }
            part_hh[(tid * B + b) * 2] = s1;
            part_hh[(tid * B + b) * 2 + 1] = s2;
          }
          barrier();
        }
        for (int64_t b = 0; b < B; ++b) {
          T m1 = 0, m2 = 0;
          if (cm.norm == kNormLayer) {
            for (int k = 0; k < nt; ++k) {
              m1 += part_hh[(k * B + b) * 2];
              m2 += part_hh[(k * B + b) * 2 + 1];
            }
            m1 /= T(N);
            m2 /= T(N);
          }
          const T* dy = dab + (t * B + b) * N;
          const T* xh = sv_xhat_hh + (t * B + b) * N;
          T* dr = da + (t * B + b) * N;
          for (int64_t g = 0; g < G; ++g)
            for (int64_t jj = 0; jj < hl; ++jj) {
              const int64_t n = g * H + sl.j0 + jj;
              const T dx = dy[n] * norm_weight_hh[n];
              T v;
              if (cm.norm == kNormLayer) {
                v = norm_backward(dx, xh[n], sv_rstd_hh[t * B + b], m1, m2);
              } else if (bn_train) {
                v = active[b] ? norm_backward(dx, xh[n], sv_rstd_hh[t * N + n],
                                              colsum[g * hl + jj] * inv_count,
                                              colsum2[g * hl + jj] * inv_count)
                              : T(0);
              } else {
                v = dx * sv_rstd_hh[t * N + n];
              }
              dr[n] = v;
            }
        }
      }
      barrier();  // da[t] complete

      // dh_in = da[t] W_hh for own input units; d(h_{t-1}) += m_h * dh_in.
      if (pl > 0) gemm_packed(B, pl, N, da + t * B * N, N, wp.data(), dhin.data(), pl, false);
      for (int64_t e = 0; e < B * pl; ++e) dh[e] = dh_prev[e] + mh[e] * dhin[e];
      if (lstm) dc = dc_prev;
    }

    for (int64_t b = 0; b < B; ++b) {
      for (int64_t jj = 0; jj < pl; ++jj) dh0[b * P + so.j0 + jj] = dh[b * pl + jj];
      if (lstm)
        for (int64_t jj = 0; jj < hl; ++jj) dc0[b * H + sl.j0 + jj] = dc[b * hl + jj];
    }
  }
}

// ======================================================================================
// Storage types computed in a wider type
// ======================================================================================
// float32 with batch or layer norm: computed in double. A normalised recurrence is ill
// conditioned where a step's variance is small (batch norm over one or two active rows,
// nearly equal rows): 1 / sqrt(var + eps) amplifies every rounding of the products W_hh h and
// da W_hh, the cell arithmetic and the normalisation's sums by up to ~300. Which roundings
// happen depends on the summation order (GEMM tiling, AVX2 or AVX-512), so a float32 kernel's
// error there is a draw of the same size as the float32 reference's, and twice the
// reference's cannot be promised. Computed in double, with only the results and the saved
// tensors rounded to float32, the error is ~10x below that bound on every CPU.
//
// float16 / bfloat16: computed by the float32 kernel. The storage-dtype tensors are converted
// to float32 at the boundary of the call (exactly) and the results rounded back once, so the
// products accumulate in float32, c and h stay float32 from step to step (never rounded to the
// storage type in between), and the saved tensors, batch statistics and backward workspaces
// are float32 already (params.h's "acc"). The conversions are scalar (no AVX512_BF16 or AMX
// path).
//
// Every buffer is copied in (poisoned outputs stay NaN where not written) and every written
// one copied back.
struct Float16Bits {  // IEEE binary16 storage
  uint16_t bits;
};
struct BFloat16Bits {
  uint16_t bits;
};

// Storage value <-> compute value.
template <class S, class C>
struct Convert {
  static C widen(S v) { return static_cast<C>(v); }
  static S narrow(C v) { return static_cast<S>(v); }
};
template <>
struct Convert<BFloat16Bits, float> {
  static float widen(BFloat16Bits v) {
    const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
  static BFloat16Bits narrow(float f) {  // round to nearest even, NaN stays NaN
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x0040u)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {static_cast<uint16_t>(u >> 16)};
  }
};
template <>
struct Convert<Float16Bits, float> {  // the compiler's _Float16 conversions (round to even)
  static float widen(Float16Bits v) {
    _Float16 h;
    std::memcpy(&h, &v.bits, sizeof h);
    return static_cast<float>(h);
  }
  static Float16Bits narrow(float f) {
    const _Float16 h = static_cast<_Float16>(f);
    Float16Bits v;
    std::memcpy(&v.bits, &h, sizeof h);
    return v;
  }
};

// Copies of storage-type S buffers in the compute type C. With S == C nothing is copied:
// the pointers pass through.
template <class S, class C>
class Widened {
 public:
  // A C copy of n elements at src (nullptr stays nullptr).
  C* in(const void* src, int64_t n) {
    if (src == nullptr) return nullptr;
    if constexpr (std::is_same_v<S, C>) {
      (void)n;
      return static_cast<C*>(const_cast<void*>(src));
    } else {
      const S* f = static_cast<const S*>(src);
      store_.emplace_back(static_cast<size_t>(n));
      C* d = store_.back().data();
      for (int64_t i = 0; i < n; ++i) d[i] = Convert<S, C>::widen(f[i]);
      return d;
    }
  }
  // A dense C copy of [T, B, inner] elements with strides (stride_t, stride_b, 1).
  C* in_strided(const void* src, int64_t T, int64_t B, int64_t inner, int64_t stride_t,
                int64_t stride_b) {
    const S* f = static_cast<const S*>(src);
    store_.emplace_back(static_cast<size_t>(T * B * inner));
    C* d = store_.back().data();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < inner; ++k)
          d[(t * B + b) * inner + k] = Convert<S, C>::widen(f[t * stride_t + b * stride_b + k]);
    return d;
  }
  // As in(), and copied back (rounded) by write_back().
  C* out(void* dst, int64_t n) {
    C* d = in(dst, n);
    if constexpr (!std::is_same_v<S, C>) {
      if (d != nullptr) back_.push_back({dst, d, n});
    }
    return d;
  }
  // As in_strided(), and copied back (rounded) by write_back().
  C* out_strided(void* dst, int64_t T, int64_t B, int64_t inner, int64_t stride_t,
                 int64_t stride_b) {
    C* d = in_strided(dst, T, B, inner, stride_t, stride_b);
    back_strided_.push_back({dst, d, T, B, inner, stride_t, stride_b});
    return d;
  }
  void write_back() const {
    for (const Back& b : back_)
      for (int64_t i = 0; i < b.n; ++i) static_cast<S*>(b.dst)[i] = Convert<S, C>::narrow(b.src[i]);
    for (const BackStrided& b : back_strided_)
      for (int64_t t = 0; t < b.T; ++t)
        for (int64_t r = 0; r < b.B; ++r)
          for (int64_t k = 0; k < b.inner; ++k)
            static_cast<S*>(b.dst)[t * b.stride_t + r * b.stride_b + k] =
                Convert<S, C>::narrow(b.src[(t * b.B + r) * b.inner + k]);
  }

 private:
  struct Back {
    void* dst;
    const C* src;
    int64_t n;
  };
  struct BackStrided {
    void* dst;
    const C* src;
    int64_t T, B, inner, stride_t, stride_b;
  };
  std::vector<std::vector<C>> store_;
  std::vector<Back> back_;
  std::vector<BackStrided> back_strided_;
};

// Points the fields shared by forward and backward at C copies: `w` converts the storage-dtype
// tensors, `wa` the float32 ("acc") ones. `forward` tells which side writes the outputs,
// batch statistics and saved tensors (forward) or reads them.
template <class S, class C>
void widen_common(RecurrenceFwdParams& q, Widened<S, C>& w, Widened<float, C>& wa, bool forward) {
  const int64_t T = q.T, B = q.B, H = q.H, N = q.G * q.H, S_ = q.S;
  const int64_t P = q.proj_size > 0 ? q.proj_size : H;
  const bool ln = q.norm == kNormLayer;
  q.xg = w.in_strided(q.xg, T, B, N, q.xg_stride_t, q.xg_stride_b);
  q.xg_stride_t = B * N;
  q.xg_stride_b = N;
  q.h0 = w.in(q.h0, B * P);
  q.c0 = w.in(q.c0, B * H);
  q.w_hh = w.in(q.w_hh, N * P);
  q.w_hr = w.in(q.w_hr, P * H);
  q.b_hh = w.in(q.b_hh, N);
  q.norm_weight_hh = w.in(q.norm_weight_hh, N);
  q.norm_weight_c = w.in(q.norm_weight_c, H);
  q.norm_bias_c = w.in(q.norm_bias_c, H);
  q.running_mean_hh = w.in(q.running_mean_hh, S_ * N);
  q.running_var_hh = w.in(q.running_var_hh, S_ * N);
  q.running_mean_c = w.in(q.running_mean_c, S_ * H);
  q.running_var_c = w.in(q.running_var_c, S_ * H);
  auto io = [&](void* ptr, int64_t n) -> void* {
    return forward ? wa.out(ptr, n) : wa.in(ptr, n);
  };
  q.batch_mean_hh = io(q.batch_mean_hh, T * N);
  q.batch_var_hh = io(q.batch_var_hh, T * N);
  q.batch_mean_c = io(q.batch_mean_c, T * H);
  q.batch_var_c = io(q.batch_var_c, T * H);
  q.gates = io(q.gates, T * B * N);
  q.gru_hn = io(q.gru_hn, T * B * H);
  q.xhat_hh = io(q.xhat_hh, T * B * N);
  q.rstd_hh = io(q.rstd_hh, ln ? T * B : T * N);
  q.c_tilde = io(q.c_tilde, T * B * H);
  q.c_state = io(q.c_state, T * B * H);
  q.xhat_c = io(q.xhat_c, T * B * H);
  q.rstd_c = io(q.rstd_c, ln ? T * B : T * H);
}

template <class S, class C>
void forward_widened(const RecurrenceFwdParams& p) {
  RecurrenceFwdParams q = p;
  Widened<S, C> w;
  Widened<float, C> wa;
  widen_common(q, w, wa, true);
  const int64_t T = p.T, B = p.B, H = p.H, P = p.proj_size > 0 ? p.proj_size : H;
  q.out = w.out_strided(q.out, T, B, P, p.out_stride_t, p.out_stride_b);
  q.out_stride_t = B * P;
  q.out_stride_b = P;
  q.h_n = w.out(q.h_n, B * P);
  q.c_n = w.out(q.c_n, B * H);
  forward_impl<C>(q);
  w.write_back();
  wa.write_back();
}

template <class S, class C>
void backward_widened(const RecurrenceBwdParams& p) {
  RecurrenceBwdParams q = p;
  Widened<S, C> w;
  Widened<float, C> wa;
  widen_common(q, w, wa, false);
  const int64_t T = p.T, B = p.B, H = p.H, N = p.G * p.H;
  const int64_t P = p.proj_size > 0 ? p.proj_size : H;
  if (q.out != nullptr) {
    q.out = w.in_strided(q.out, T, B, P, q.out_stride_t, q.out_stride_b);
    q.out_stride_t = B * P;
    q.out_stride_b = P;
  }
  q.grad_out = w.in_strided(q.grad_out, T, B, P, q.grad_out_stride_t, q.grad_out_stride_b);
  q.grad_out_stride_t = B * P;
  q.grad_out_stride_b = P;
  q.grad_h_n = w.in(q.grad_h_n, B * P);
  q.grad_c_n = w.in(q.grad_c_n, B * H);
  q.dxg = w.out(q.dxg, T * B * N);
  q.dab = wa.out(q.dab, T * B * N);
  q.da = wa.out(q.da, T * B * N);
  q.hin = wa.out(q.hin, T * B * P);
  q.dc_out = wa.out(q.dc_out, T * B * H);
  q.h_pre_proj = wa.out(q.h_pre_proj, T * B * H);
  q.dproj = wa.out(q.dproj, T * B * P);
  q.dh0 = w.out(q.dh0, B * P);
  q.dc0 = w.out(q.dc0, B * H);
  backward_impl<C>(q);
  w.write_back();
  wa.write_back();
}

}  // namespace

void recurrence_forward(const RecurrenceFwdParams& p) {
  switch (p.dtype) {
    case kFloat32:
      if (p.norm != kNormNone) return forward_widened<float, double>(p);
      return forward_impl<float>(p);
    case kFloat64:
      return forward_impl<double>(p);
    case kFloat16:
      return forward_widened<Float16Bits, float>(p);
    case kBFloat16:
      return forward_widened<BFloat16Bits, float>(p);
    default:
      throw std::invalid_argument("fusedrnn host backend: unknown dtype code");
  }
}

void recurrence_backward(const RecurrenceBwdParams& p) {
  switch (p.dtype) {
    case kFloat32:
      if (p.norm != kNormNone) return backward_widened<float, double>(p);
      return backward_impl<float>(p);
    case kFloat64:
      return backward_impl<double>(p);
    case kFloat16:
      return backward_widened<Float16Bits, float>(p);
    case kBFloat16:
      return backward_widened<BFloat16Bits, float>(p);
    default:
      throw std::invalid_argument("fusedrnn host backend: unknown dtype code");
  }
}

}  // namespace host
}  // namespace fusedrnn
