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
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cell_host.h"
#include "fusedrnn/cells.cuh"
#include "fusedrnn/step_loop.h"
#include "gemm.h"
#include "gemm_bf16.h"
#include "mask_rows_host.h"
#include "multiversion.h"
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
// Spins until `ready` (a release store of another thread) reaches `steps`; after a while it
// yields the core each time round, in case the other thread waits for this one's core (more
// threads than cores).
inline void wait_for_steps(const std::atomic<int64_t>& ready, int64_t steps) {
  for (int spins = 0; ready.load(std::memory_order_acquire) < steps; ++spins) {
    if (spins >= 4096) {
      std::this_thread::yield();
      continue;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

// The slice of hidden units [j0, j1) that thread `tid` of `nt` owns.
struct Slice {
  int64_t j0, j1;
  int64_t size() const { return j1 - j0; }
};
inline Slice slice_of(int64_t H, int tid, int nt) {
  return Slice{H * tid / nt, H * (tid + 1) / nt};
}

// What both loops read besides the params: sizes, and W_hh times the weight-drop mask.
template <class T>
struct Common {
  int64_t B, H, G, N;
  int cell;
  bool weight_drop;  // training with p_weight_drop > 0

  explicit Common(const RecurrenceFwdParams& p)
      : B(p.B), H(p.H), G(p.G), N(p.G * p.H), cell(p.cell),
        weight_drop(p.training && p.p_weight_drop > 0) {}
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
// The host worker: what both step loops' host policies share
// ======================================================================================
// Thread k of nt is one worker: cell units slice_of(H, k, nt), h units slice_of(P, k, nt) with
// a projection (else the same slice); its threads are itself (for_each is nested loops), the
// barrier of all workers is an omp barrier, activations are simd_math.h's vector functions.
template <class T>
struct HostWorker {
  using Storage = T;
  using Acc = T;
  static constexpr bool kProjection = true;
  static T widen(T v) { return v; }
  static T narrow(T v) { return v; }

  int64_t j0, hl, q0, pl;
  int tid, nt;
  std::vector<uint8_t> mask_rows[2] = {};  // a step's zoneout decisions of c (0) and h (1)

  bool first_worker() const { return tid == 0; }
  // A step's zoneout mask rows drawn at once, the Philox rounds in SIMD lanes (docs/design.md
  // §5.4: the per-element draw made zoneout the largest cost of regularized training).
  static constexpr bool kDrawsMaskRows = true;
  const uint8_t* zoneout_mask_rows(int which, uint64_t seed, uint64_t base, int64_t t, int64_t B,
                                   int64_t u0, int64_t n, float threshold) {
    std::vector<uint8_t>& rows = mask_rows[which];
    rows.resize(static_cast<size_t>(B * n));
    mask_below_rows(seed, base, t, B, u0, n, threshold, rows.data());
    return rows.data();
  }
  // A vector-cell step's zoneout state (forward and backward alike): the two parameters and,
  // in training, the step's decisions drawn as rows for this worker's units [u0, u0 + n).
  template <class Step, class Params>
  void set_zoneout(Step& q, const Params& p, int64_t t, int64_t B, int64_t u0, int64_t n) {
    q.zc = make_zoneout<float>(p.p_zoneout_c, p.training);
    q.zh = make_zoneout<float>(p.p_zoneout_h, p.training);
    if (q.zc.on && q.zc.training)
      q.zc_rows = zoneout_mask_rows(0, p.seed, p.base_zoneout_c, t, B, u0, n, q.zc.threshold);
    if (q.zh.on && q.zh.training)
      q.zh_rows = zoneout_mask_rows(1, p.seed, p.base_zoneout_h, t, B, u0, n, q.zh.threshold);
  }
  template <class F>
  void for_each(int64_t rows, int64_t cols, F f) const {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t k = 0; k < cols; ++k) f(i, k);
  }
  void sync_worker() const {}
  void sync_all() const { barrier(); }
  // The vectorised functions over each row's column range (one call when the range is whole
  // rows).
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
};

// ======================================================================================
// Forward: the shared step loop (fusedrnn/step_loop.h) on OpenMP threads
// ======================================================================================
// A worker's product is gemm_packed over its packed W_hh^T columns; the exchange is a
// [2, B, P] double buffer every thread writes its slice of.
template <class T>
struct HostForwardPolicy : HostWorker<T> {
  using HostWorker<T>::tid;
  using HostWorker<T>::nt;
  using HostWorker<T>::pl;
  int64_t B, H, P, R;
  const T* w_packed;     // W_hh^T restricted to own columns (pack_b)
  const T* w_hr_packed;  // W_hr^T restricted to own h units (projection)
  T* hin;                // [2][B][P] m_h * h exchange
  MeanM2<T>* parts[2];   // [nt][B] layer-norm partials of W_hh h and of c~

  const T* w_rows;       // B = 1: own W_hh rows in place, not packed (else nullptr)
  int64_t w_rows_gate;   // elements from one gate's own rows to the next gate's

  void recurrent_product(int64_t s, T* a) const {
    if (R <= 0) return;
    const T* x = hin + (s & 1) * B * P;
    if constexpr (std::is_same_v<T, float>) {
      if (w_bf16 != nullptr)
        return gemm_bf16_rounded(B, hin_bf16 + (s & 1) * hin_bf16_rows * w_bf16->Kp, *w_bf16, a,
                                 R, *bf16_scratch);
    }
    if (w_rows == nullptr) return gemm_packed(B, R, P, x, P, w_packed, a, R, false);
    const int64_t units = this->hl;  // one row: G blocks of hl contiguous rows, no pack
    for (int64_t g = 0; g < R / units; ++g)
      gemv_rows(units, P, w_rows + g * w_rows_gate, P, x, a + g * units);
  }
  // The fused form of the step (p.fused_cell, step_loop.h): the same product into the gate
  // tile, then the cell per (row, unit) on its G values. The host's phased form is faster (it
  // runs the activations vectorised); this one exists so that the CPU tests run the per-element
  // step the CUDA tensor-core forward runs on its accumulators.
  static constexpr bool kFusedCell = true;
  template <class Cell>
  void product_and_cell(int64_t s, T* a, Cell cell) const {
    recurrent_product(s, a);
    const int64_t units = this->hl, G = units > 0 ? R / units : 0;
    T rec[4];
    for (int64_t b = 0; b < B; ++b)
      for (int64_t jj = 0; jj < units; ++jj) {
        for (int64_t g = 0; g < G; ++g) rec[g] = a[b * R + g * units + jj];
        cell(b, jj, rec);
      }
  }
  // Steps 3-5 of the phased form as one vectorised pass (float32, vector_cell_applies(p)):
  // cell_host.h's kernel over every row of the worker's units.
  static constexpr bool kVectorCell = std::is_same_v<T, float>;
  void vector_cell_step(const RecurrenceFwdParams& p, const ForwardScratch<T>& w, int64_t s,
                        int64_t t) {
    const int64_t u0 = this->j0, n = this->hl, N = p.G * H;
    if (xg_ready != nullptr) wait_for_steps(*xg_ready, s + 1);
    CellForwardArgs q{};
    q.cell = p.cell;
    q.B = B;
    q.H = H;
    q.n = n;
    q.t = t;
    q.T = p.T;
    q.len = p.lengths;
    q.a = w.a;
    q.xg = static_cast<const float*>(p.xg) + t * p.xg_stride_t + u0;
    q.xg_ld = p.xg_stride_b;
    const int64_t next = s + 1 < p.T ? (p.reverse ? -1 : 1) : 0;  // the next step's xg
    q.xg_next_step = next * p.xg_stride_t;
    if (xg_bf16 != nullptr) {  // bfloat16 layers: the cell reads xg, writes out in bfloat16
      q.xg = nullptr;
      q.xg_bf16 = xg_bf16 + t * xg_bf16_stride_t + u0;
      q.xg_ld = xg_bf16_stride_b;
      q.xg_next_step = next * xg_bf16_stride_t;
    }
    q.bias = p.b_hh != nullptr ? static_cast<const float*>(p.b_hh) + u0 : nullptr;
    if constexpr (std::is_same_v<T, float>) {
      if (w_ih[0] != nullptr) {  // xg of step t from this worker's chunk buffer
        project_chunk(p, t);
        q.xg = xbuf + (t - chunk * xk) * B * N + u0;
        q.xg_ld = N;
        q.xg_next_step = 0;  // the chunk buffer is in cache
        q.bias = bias_sum + u0;
      }
    }
    q.c = w.c;
    q.h = w.h;
    q.mh = w.mh;
    this->set_zoneout(q, p, t, B, u0, n);
    auto at = [&](void* base, int64_t step_size) {
      return base != nullptr ? static_cast<float*>(base) + t * step_size + u0 : nullptr;
    };
    if (p.gates != nullptr) {
      q.gates = at(p.gates, saved_rows * N);
      q.gru_hn = at(p.gru_hn, saved_rows * H);
      q.c_tilde = at(p.c_tilde, saved_rows * H);
      q.c_state = at(p.c_state, saved_rows * H);
    }
    q.h_state = at(p.h_state, saved_rows * P);
    q.h_ld = P;
    if (xg_bf16 != nullptr) {
      q.out = nullptr;
      q.out_bf16 = out_bf16 + t * out_bf16_stride_t + u0;
      q.out_ld = out_bf16_stride_b;
    } else {
      q.out = static_cast<float*>(p.out) + t * p.out_stride_t + u0;
      q.out_ld = p.out_stride_b;
    }
    q.hin = hin + ((s + 1) & 1) * B * P + u0;
    if (w_bf16 != nullptr) {
      q.hin_bf16 = hin_bf16 + ((s + 1) & 1) * hin_bf16_rows * w_bf16->Kp + u0;
      q.hin_bf16_ld = w_bf16->Kp;
    }
    cell_forward_rows(q);
  }
  void publish(int64_t buffer, int64_t b, int64_t q, T v) const {
    hin[(buffer * B + b) * P + q] = v;
    if constexpr (std::is_same_v<T, float>) {
      if (w_bf16 != nullptr)
        hin_bf16[(buffer * hin_bf16_rows + b) * w_bf16->Kp + q] = bf16_bits(v);
    }
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
  const T* w_hr_rows;    // B = 1: own W_hr rows in place, not packed (else nullptr)
  // bfloat16 layers (gemm_bf16.h): own W_hh^T columns packed in bf16 (else nullptr).
  const PackedBf16* w_bf16 = nullptr;
  Bf16Scratch* bf16_scratch = nullptr;
  // With w_bf16: the exchange in bf16, [2][hin_bf16_rows][w_bf16->Kp] (rows B rounded up to
  // 16), zero beyond B rows and P columns, shared by the workers: each writes its units of
  // m_h * h rounded (publish, the vector cell), and the product reads it as its A
  // (gemm_bf16_rounded). So no thread rounds the whole of h each step (gemm_bf16's round_a:
  // 3-5 % of perf's samples of a bf16 C5 / C2 inference call), and the cores exchange half the
  // bytes.
  uint16_t* hin_bf16 = nullptr;
  int64_t hin_bf16_rows = 0;
  // bfloat16 layers on the vector cell (Bf16Forward::xg): xg read and the output written in
  // bfloat16 by the cell itself (p.xg and p.out unused).
  const uint16_t* xg_bf16 = nullptr;
  int64_t xg_bf16_stride_t = 0, xg_bf16_stride_b = 0;
  uint16_t* out_bf16 = nullptr;
  int64_t out_bf16_stride_t = 0, out_bf16_stride_b = 0;
  // float32 inference with the input projection in the loop (xproj_in_loop_applies): own
  // columns of gate g of W_ih^T packed in w_ih[g] (K = I, pack_b); xg of `xk` steps at a time,
  // [xk * B, G * H] with only own columns written, in xbuf; bias_sum = b_ih + b_hh (own
  // columns, gate stride H).
  const T* w_ih[4] = {};
  int64_t xk = 0, chunk = -1;
  // Rows of one step of the saved tensors (p.gates, ...): B, or the whole batch's under the
  // row split (the pointers then start at the thread's first row).
  int64_t saved_rows = 0;
  T* xbuf = nullptr;
  const T* bias_sum = nullptr;
  // The one-row pipeline (forward_one_row_pipelined): steps of xg ready, in the loop's order,
  // published by the projecting thread (else nullptr: xg is all there).
  const std::atomic<int64_t>* xg_ready = nullptr;
  // xg = x W_ih^T of the chunk of steps holding t (own columns), unless it is the current one.
  void project_chunk(const RecurrenceFwdParams& p, int64_t t) {
    const int64_t c = t / xk;
    if (c == chunk) return;
    chunk = c;
    const int64_t t0 = c * xk, t1 = std::min<int64_t>(p.T, t0 + xk), N = p.G * H;
    const int64_t I = p.input_size, u0 = this->j0, n = this->hl;
    const T* x = static_cast<const T*>(p.x);
    if (p.x_stride_t == B * p.x_stride_b) {  // the chunk's rows are one [rows, I] matrix
      for (int64_t g = 0; g < p.G; ++g)
        gemm_packed((t1 - t0) * B, n, I, x + t0 * p.x_stride_t, p.x_stride_b, w_ih[g],
                    xbuf + g * H + u0, N, false);
    } else {
      for (int64_t tt = t0; tt < t1; ++tt)
        for (int64_t g = 0; g < p.G; ++g)
          gemm_packed(B, n, I, x + tt * p.x_stride_t, p.x_stride_b, w_ih[g],
                      xbuf + (tt - t0) * B * N + g * H + u0, N, false);
    }
    const T* b_ih = static_cast<const T*>(p.b_ih);
    if (p.cell == kCellGru && b_ih != nullptr)  // b_in stays in xg (bias_sum has the rest)
      for (int64_t r = 0; r < (t1 - t0) * B; ++r) {
        T* row = xbuf + r * N + 2 * H + u0;
        for (int64_t k = 0; k < n; ++k) row[k] += b_ih[2 * H + u0 + k];
      }
  }
  void project(const T* h_pre, T* h_proj) const {
    if (pl <= 0) return;
    if (w_hr_rows != nullptr) return gemv_rows(pl, H, w_hr_rows, H, h_pre, h_proj);
    gemm_packed(B, pl, H, h_pre, H, w_hr_packed, h_proj, pl, false);
  }
};

// The bfloat16 layers' options of forward_impl: the recurrent product in bfloat16
// (gemm_bf16.h; bf16_product_applies), and xg / the output left in bfloat16, read / written by
// the vector cell (vector_cell_applies, not fused_cell; p.xg and p.out are then unused).
// Converting them whole at the call's boundary cost 8 % of a bfloat16 C5 inference call (xg
// widened a step at a time) and 2 % (the output narrowed at the end).
struct Bf16Forward {
  bool product = false;
  const uint16_t* xg = nullptr;  // set: the vector cell's bfloat16 xg and output
  int64_t xg_stride_t = 0, xg_stride_b = 0;
  uint16_t* out = nullptr;
  int64_t out_stride_t = 0, out_stride_b = 0;
};

std::atomic<int64_t> g_xproj_calls{0};

// Steps per chunk of the input projection in the loop: FUSEDRNN_HOST_XPROJ_STEPS if set (for
// measurements), else enough steps for ~`rows` rows: 256 (the GEMM's efficient row count) at
// one thread, 128 when several threads share the core's caches' work (the unit split at 2
// threads: C5 inference 0.977x of its time with 256; the row split, whose chunk buffer holds
// every column: the same footprint; docs/design.md §5.4).
int64_t xproj_chunk_steps(int64_t T, int64_t B, int64_t rows) {
  const char* v = std::getenv("FUSEDRNN_HOST_XPROJ_STEPS");
  const int64_t env = v != nullptr ? std::atoll(v) : int64_t(0);
  const int64_t k = env > 0 ? env : (rows + B - 1) / B;
  return std::max<int64_t>(1, std::min<int64_t>(k, T));
}

// The row split's weights (forward_row_split): W_hh^T and each gate's W_ih^T, every column,
// packed once for all threads.
template <class T>
struct SharedPacks {
  const T* w_hh = nullptr;
  const T* w_ih[4] = {};  // with the projection in the loop
  int64_t saved_rows = 0;  // the whole batch: a step's rows in the saved tensors
};

// shared: the row split's packed weights (forward_row_split: the call is then one thread's
// rows, p.num_threads = 1).
template <class T>
void forward_impl(const RecurrenceFwdParams& p, const Bf16Forward& bf = Bf16Forward(),
                  const SharedPacks<T>* shared = nullptr,
                  const std::atomic<int64_t>* xg_ready = nullptr) {
  const bool bf16_product = bf.product;
  const Common<T> cm(p);
  const int64_t B = cm.B, H = cm.H, G = cm.G;
  const T* w = static_cast<const T*>(p.w_hh);
  const T* w_hr = static_cast<const T*>(p.w_hr);
  const bool proj = p.proj_size > 0;
  const int64_t P = proj ? p.proj_size : H;  // units of h

  const int nt_req = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(p.num_threads, H)));
  // The input projection in the step loop: steps per chunk.
  const bool xproj = std::is_same_v<T, float> && !bf16_product && bf.xg == nullptr &&
                     xproj_in_loop_applies(p);
  const int64_t xk =
      xproj ? xproj_chunk_steps(p.T, B, shared != nullptr || nt_req > 1 ? 128 : 256) : 0;
  if (xproj && shared == nullptr) g_xproj_calls.fetch_add(1, std::memory_order_relaxed);
  const T* w_b_hh = static_cast<const T*>(p.b_hh);
  AlignedVector<T> hin(static_cast<size_t>(2 * B * P));
  // The bf16 product's exchange (HostForwardPolicy::hin_bf16; zeroed: its padding stays 0).
  const bool bf16_exchange = bf16_product;
  const int64_t hin_bf16_rows = bf16_padded_rows(B), hin_bf16_cols = bf16_padded_k(P);
  AlignedVector<uint16_t> hin_bf16(
      static_cast<size_t>(bf16_exchange ? 2 * hin_bf16_rows * hin_bf16_cols : 0));
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
    // One row (B = 1): the product reads the rows in place (gemv_rows), no pack. The pack
    // cost about four one-row products (most of a T = 1 call), and the packed one-row product
    // measured slower per step too (docs/design.md, host performance). A bf16 layer's one row
    // takes the bf16 product where bf16_product_applies says its steps repay the pack.
    const bool rows_form = B == 1 && !bf16_product;
    auto w_col = [&](int64_t c) {
      return dropped.empty() ? w + col(c) * P : dropped.data() + c * P;
    };
    const bool bf16 = bf16_product && !rows_form;
    const PackedB<T> wp =
        rows_form || bf16 || shared != nullptr ? PackedB<T>() : pack_b<T>(B, P, nl, 1, w_col);
    PackedBf16 wp_bf16;
    Bf16Scratch bf16_scratch;
    if constexpr (std::is_same_v<T, float>) {
      if (bf16) wp_bf16 = pack_b_bf16(P, nl, 1, w_col);
    }
    const T* w_rows = !rows_form ? nullptr : dropped.empty() ? w + sl.j0 * P : dropped.data();
    // Packed W_hr^T restricted to own outputs: B[k][q] = W_hr[so.j0 + q][k].
    const PackedB<T> wrp =
        proj && !rows_form
            ? pack_b<T>(B, H, pl, 1, [&](int64_t q) { return w_hr + (so.j0 + q) * H; })
            : PackedB<T>();
    const T* w_hr_rows = proj && rows_form ? w_hr + so.j0 * H : nullptr;
    auto buffer = [](int64_t n) {
      return AlignedVector<T>(static_cast<size_t>(std::max<int64_t>(n, 1)));
    };
    AlignedVector<T> a = buffer(B * nl), h = buffer(B * pl), c = buffer(B * hl),
                     ct = buffer(B * hl), co = buffer(B * hl), mh = buffer(B * pl),
                     col_mean = buffer(nl),
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
    HostForwardPolicy<T> policy{
        {sl.j0, hl, so.j0, pl, tid, nt}, B, H, P, nl,
        shared != nullptr ? shared->w_hh : wp.data(), wrp.data(), hin.data(),
        {part_hh.data(), part_c.data()}, w_rows, dropped.empty() ? H * P : hl * P, w_hr_rows};
    policy.saved_rows = shared != nullptr ? shared->saved_rows : B;
    policy.xg_ready = xg_ready;
    if (bf16) {
      policy.w_bf16 = &wp_bf16;
      policy.bf16_scratch = &bf16_scratch;
      policy.hin_bf16 = hin_bf16.data();
      policy.hin_bf16_rows = hin_bf16_rows;
    }
    if (bf.xg != nullptr) {
      policy.xg_bf16 = bf.xg;
      policy.xg_bf16_stride_t = bf.xg_stride_t;
      policy.xg_bf16_stride_b = bf.xg_stride_b;
      policy.out_bf16 = bf.out;
      policy.out_bf16_stride_t = bf.out_stride_t;
      policy.out_bf16_stride_b = bf.out_stride_b;
    }
    // The input projection in the step loop (xproj_in_loop_applies): own W_ih^T columns
    // packed per gate, once per call; the sum of the two biases for own columns.
    std::vector<PackedB<T>> w_ih_packed;
    AlignedVector<T> xbuf;
    std::vector<T> bias_sum;
    if (xproj) {
      const T* w_ih = static_cast<const T*>(p.w_ih);
      const T* b_ih = static_cast<const T*>(p.b_ih);
      const int64_t I = p.input_size, N = G * H;
      w_ih_packed.reserve(static_cast<size_t>(G));
      for (int64_t g = 0; g < G; ++g) {
        if (shared == nullptr)
          w_ih_packed.push_back(pack_b<T>(
              B, I, hl, 1, [&](int64_t jj) { return w_ih + (g * H + sl.j0 + jj) * I; }));
        policy.w_ih[g] = shared != nullptr ? shared->w_ih[g] : w_ih_packed.back().data();
      }
      xbuf.resize(static_cast<size_t>(xk * B * N));
      // b_ih folded into the recurrent bias, but for the GRU's n gate (xg_n + r (a_n + b_hn)):
      // there it is added to the chunk's xg (project_chunk).
      bias_sum.assign(static_cast<size_t>(N), T(0));
      for (int64_t g = 0; g < G; ++g)
        for (int64_t jj = 0; jj < hl; ++jj) {
          const int64_t n = g * H + sl.j0 + jj;
          const bool fold = !(p.cell == kCellGru && g == 2);
          bias_sum[n] = (fold && b_ih != nullptr ? b_ih[n] : T(0)) +
                        (p.b_hh != nullptr ? w_b_hh[n] : T(0));
        }
      policy.xk = xk;
      policy.xbuf = xbuf.data();
      policy.bias_sum = bias_sum.data();
    }
    forward_steps(policy, p, scratch);
  }
}

// ======================================================================================
// Backward: the shared step loop (backward_steps) on OpenMP threads
// ======================================================================================
// Thread k owns the same units as in forward. Its product is gemm_packed over its packed
// columns W_hh[:, own h units] (K = N), reading the whole da_t row of the step; with a
// projection it also packs W_hr[:, own cell units] (K = P).
template <class T>
struct HostBackwardPolicy : HostWorker<T> {
  using HostWorker<T>::tid;
  using HostWorker<T>::nt;
  using HostWorker<T>::hl;
  using HostWorker<T>::pl;
  int64_t B, N, P;
  const T* w_packed;     // W_hh restricted to own h units (pack_b, K = N)
  const T* w_hr_packed;  // W_hr restricted to own cell units (projection, K = P)
  NormSums<T>* parts[2];  // [nt][B] layer-norm backward partials of N_hh and of N_c
  T* rec;                // [B][pl] the fused form's product (the scratch's dhin)
  // bfloat16 layers (gemm_bf16.h): own W_hh columns packed in bf16 (else nullptr).
  const PackedBf16* w_bf16 = nullptr;
  Bf16Scratch* bf16_scratch = nullptr;
  // bfloat16 layers on the vector cell (Bf16Backward): d(out) read and d xg ([T, B, N])
  // written in bfloat16 by the cell itself (p.grad_out and p.dxg unused).
  const uint16_t* grad_out_bf16 = nullptr;
  int64_t grad_out_bf16_stride_t = 0, grad_out_bf16_stride_b = 0;
  uint16_t* dxg_bf16 = nullptr;
  // params.h dab_low / hin_low (bf16 bits), written by the vector cell (or nullptr).
  uint16_t* dab_low = nullptr;
  uint16_t* hin_low = nullptr;

  void backward_product(const T* da_t, T* d) const {
    if constexpr (std::is_same_v<T, float>) {
      if (w_bf16 != nullptr) {
        if (pl > 0) gemm_bf16(B, da_t, N, *w_bf16, d, pl, *bf16_scratch);
        return;
      }
    }
    if (pl > 0) gemm_packed(B, pl, N, da_t, N, w_packed, d, pl, false);
  }
  // The fused form of the backward step (p.fused_cell, step_loop.h): the same product into
  // `rec`, then the cell backward per (row, unit). As in the forward, this exists so that the
  // CPU tests run the per-element step the CUDA tensor-core backward runs on its accumulators.
  static constexpr bool kFusedCellBackward = true;
  template <class Cell>
  void product_and_cell_backward(const T* da_t, Cell cell) const {
    if (da_t != nullptr) backward_product(da_t, rec);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t jj = 0; jj < pl; ++jj) cell(b, jj, da_t != nullptr ? rec[b * pl + jj] : T(0));
  }
  // Steps A-C of the phased form as one vectorised pass (float32, vector_cell_applies(p)).
  static constexpr bool kVectorCell = std::is_same_v<T, float>;
  void vector_cell_backward_step(const RecurrenceBwdParams& p, const BackwardScratch<T>& w,
                                 int64_t t, int64_t tp, bool has_prev) {
    const int64_t u0 = this->j0, n = this->hl, H = p.H;
    CellBackwardArgs q{};
    q.cell = p.cell;
    q.B = B;
    q.H = H;
    q.n = n;
    q.t = t;
    q.T = p.T;
    q.len = p.lengths;
    q.has_prev = has_prev;
    q.tp = tp;
    if (has_prev) {
      if (p.h_state != nullptr) {
        q.h_prev = static_cast<const float*>(p.h_state) + tp * B * P + u0;
        q.h_prev_ld = P;
      } else {
        q.h_prev = static_cast<const float*>(p.out) + tp * p.out_stride_t + u0;
        q.h_prev_ld = p.out_stride_b;
      }
    }
    q.h0 = static_cast<const float*>(p.h0) + u0;
    q.h_ld = P;
    if (p.cell == kCellLstm)
      q.c_prev = has_prev ? static_cast<const float*>(p.c_state) + tp * B * H + u0
                          : static_cast<const float*>(p.c0) + u0;
    auto at = [&](const void* base, int64_t step_size) {
      return base != nullptr ? static_cast<const float*>(base) + t * step_size + u0 : nullptr;
    };
    q.gates = at(p.gates, B * N);
    q.c_tilde = at(p.c_tilde, B * H);
    q.gru_hn = at(p.gru_hn, B * H);
    if (dxg_bf16 != nullptr) {  // bfloat16 layers: d(out) read, d xg written in bfloat16
      q.grad_out_bf16 = grad_out_bf16 + t * grad_out_bf16_stride_t + u0;
      q.grad_out_ld = grad_out_bf16_stride_b;
      q.dxg_bf16 = dxg_bf16 + t * B * N + u0;
    } else {
      q.grad_out = static_cast<const float*>(p.grad_out) + t * p.grad_out_stride_t + u0;
      q.grad_out_ld = p.grad_out_stride_b;
      q.dxg = static_cast<float*>(p.dxg) + t * B * N + u0;
    }
    q.dh = w.dh;
    q.dc = w.dc;
    q.mh = w.mh;
    this->set_zoneout(q, p, t, B, u0, n);
    q.hin = p.hin != nullptr ? static_cast<float*>(p.hin) + t * B * P + u0 : nullptr;
    q.dab = static_cast<float*>(p.dab) + t * B * N + u0;
    if (dab_low != nullptr) q.dab_bf16 = dab_low + t * B * N + u0;
    if (hin_low != nullptr) q.hin_bf16 = hin_low + t * B * P + u0;
    q.dh_prev = w.dh_prev;
    q.dc_prev = w.dc_prev;
    cell_backward_rows(q);
  }
  void project_backward(const T* dproj_t, T* d) const {
    if (hl > 0) gemm_packed(B, hl, P, dproj_t, P, w_hr_packed, d, hl, false);
  }
  // Own partials, a barrier, then every thread sums all threads' partials in thread order.
  template <class F>
  void row_sums(int which, int64_t cols, T inv_total, F f, T* shift, T* m2) const {
    NormSums<T>* part = parts[which];
    for (int64_t b = 0; b < B; ++b) {
      NormSums<T> sum{T(0), T(0), T(0)};
      for (int64_t c = 0; c < cols; ++c) {
        const NormSums<T> v = f(b, c);
        sum.dx += v.dx;
        sum.dx_xhat += v.dx_xhat;
        sum.xhat += v.xhat;
      }
      part[tid * B + b] = sum;
    }
    barrier();
    for (int64_t b = 0; b < B; ++b) {
      T x = 0, y = 0, z = 0;
      for (int k = 0; k < nt; ++k) {
        x += part[k * B + b].dx;
        y += part[k * B + b].dx_xhat;
        z += part[k * B + b].xhat;
      }
      m2[b] = y * inv_total;
      shift[b] = norm_backward_shift(x * inv_total, m2[b], z * inv_total);
    }
  }
};

// The bfloat16 layers' options of backward_impl: the product da W_hh in bfloat16 (gemm_bf16.h;
// B > 1), and d(out) / d xg left in bfloat16, read / written by the vector cell
// (vector_cell_applies, not fused_cell; p.grad_out and p.dxg are then unused), as the
// forward's Bf16Forward.
struct Bf16Backward {
  bool product = false;
  const uint16_t* grad_out = nullptr;  // set: the vector cell's bfloat16 d(out) and d xg
  int64_t grad_out_stride_t = 0, grad_out_stride_b = 0;
  uint16_t* dxg = nullptr;
  uint16_t* dab_low = nullptr;  // params.h dab_low / hin_low
  uint16_t* hin_low = nullptr;
};

template <class T>
void backward_impl(const RecurrenceBwdParams& p, const Bf16Backward& bf = Bf16Backward()) {
  const bool bf16_product = bf.product;
  const Common<T> cm(p);
  const int64_t B = cm.B, H = cm.H, G = cm.G, N = cm.N;
  const T* w = static_cast<const T*>(p.w_hh);
  const T* w_hr = static_cast<const T*>(p.w_hr);
  const bool lstm = cm.cell == kCellLstm;
  const bool proj = p.proj_size > 0;
  const int64_t P = proj ? p.proj_size : H;  // units of h

  const int nt_req = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(p.num_threads, H)));
  std::vector<NormSums<T>> part_hh(static_cast<size_t>(nt_req * B));
  std::vector<NormSums<T>> part_c(static_cast<size_t>(nt_req * B));

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
    const bool bf16 = bf16_product && B > 1;
    PackedBf16 wp_bf16;
    Bf16Scratch bf16_scratch;
    if constexpr (std::is_same_v<T, float>) {
      if (bf16)
        wp_bf16 = dropped.empty()
                      ? pack_b_bf16(N, pl, P, [&](int64_t kk) { return w + so.j0 + kk; })
                      : pack_b_bf16(N, pl, pl, [&](int64_t kk) { return dropped.data() + kk; });
    }
    const PackedB<T> wp =
        bf16 ? PackedB<T>()
        : dropped.empty()
            ? pack_b<T>(B, N, pl, P, [&](int64_t kk) { return w + so.j0 + kk; })
            : pack_b<T>(B, N, pl, pl, [&](int64_t kk) { return dropped.data() + kk; });
    // Packed W_hr restricted to own cell units: B[q][jj] = W_hr[q][sl.j0 + jj].
    const PackedB<T> wrp =
        proj ? pack_b<T>(B, P, hl, H, [&](int64_t jj) { return w_hr + sl.j0 + jj; })
             : PackedB<T>();
    auto buffer = [](int64_t n) {
      return AlignedVector<T>(static_cast<size_t>(std::max<int64_t>(n, 1)));
    };
    const int64_t cell = lstm ? B * hl : 0;
    AlignedVector<T> dab = buffer(B * G * hl), dh = buffer(B * pl), dh_prev = buffer(B * pl),
                     dhtil = buffer(B * pl), dhtil_cell = buffer(proj ? B * hl : 0),
                     dc = buffer(cell), dc_prev = buffer(cell), dctil = buffer(cell),
                     dco = buffer(cell), mh = buffer(B * pl), dhin = buffer(B * pl),
                     col_a = buffer(G * hl), col_b = buffer(G * hl), row_a = buffer(B),
                     row_b = buffer(B);
    BackwardScratch<T> scratch;
    scratch.dab = dab.data();
    scratch.dh = dh.data();
    scratch.dh_prev = dh_prev.data();
    scratch.dhtil = dhtil.data();
    scratch.dhtil_cell = dhtil_cell.data();
    scratch.dc = dc.data();
    scratch.dc_prev = dc_prev.data();
    scratch.dctil = dctil.data();
    scratch.dco = dco.data();
    scratch.mh = mh.data();
    scratch.dhin = dhin.data();
    scratch.col_a = col_a.data();
    scratch.col_b = col_b.data();
    scratch.row_a = row_a.data();
    scratch.row_b = row_b.data();
    HostBackwardPolicy<T> policy{
        {sl.j0, hl, so.j0, pl, tid, nt}, B, N, P, wp.data(), wrp.data(),
        {part_hh.data(), part_c.data()}, dhin.data()};
    if (bf16) {
      policy.w_bf16 = &wp_bf16;
      policy.bf16_scratch = &bf16_scratch;
    }
    if (bf.dxg != nullptr) {
      policy.grad_out_bf16 = bf.grad_out;
      policy.grad_out_bf16_stride_t = bf.grad_out_stride_t;
      policy.grad_out_bf16_stride_b = bf.grad_out_stride_b;
      policy.dxg_bf16 = bf.dxg;
      policy.dab_low = bf.dab_low;
      policy.hin_low = bf.hin_low;
    }
    backward_steps(policy, p, scratch);
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
// are float32 already (params.h's "acc"). The conversions are scalar. bfloat16's recurrent
// products run in bf16 on AMX / AVX512_BF16 where the CPU has them (kBf16Storage below).
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

// n contiguous storage values widened / compute values rounded back: the 16-bit types by
// gemm_bf16.h's vectorised conversions, the others one by one.
template <class S, class C>
void widen_run(const S* src, C* dst, int64_t n) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
  if constexpr (std::is_same_v<S, BFloat16Bits> && std::is_same_v<C, float>) {
    widen_bf16(bits, dst, n);
  } else if constexpr (std::is_same_v<S, Float16Bits> && std::is_same_v<C, float>) {
    widen_f16(bits, dst, n);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = Convert<S, C>::widen(src[i]);
  }
}
template <class S, class C>
void narrow_run(const C* src, S* dst, int64_t n) {
  uint16_t* bits = reinterpret_cast<uint16_t*>(dst);
  if constexpr (std::is_same_v<S, BFloat16Bits> && std::is_same_v<C, float>) {
    narrow_bf16(src, bits, n);
  } else if constexpr (std::is_same_v<S, Float16Bits> && std::is_same_v<C, float>) {
    narrow_f16(src, bits, n);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = Convert<S, C>::narrow(src[i]);
  }
}

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
      store_.emplace_back(static_cast<size_t>(n));  // not zeroed: every element is written
      C* d = store_.back().data();
      widen_run<S, C>(static_cast<const S*>(src), d, n);
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
        widen_run<S, C>(f + t * stride_t + b * stride_b, d + (t * B + b) * inner, inner);
    return d;
  }
  // A C buffer for the n-element output at dst, copied back (rounded) by write_back(). Its
  // contents are not read from dst: the kernels write every element of their outputs (the
  // launcher's are torch.empty), so widening the uninitialised dst was wasted work (bfloat16
  // C5 inference: 2M elements of out widened per call, a training backward 8M of dxg).
  C* out(void* dst, int64_t n) {
    if (dst == nullptr) return nullptr;
    if constexpr (std::is_same_v<S, C>) {
      (void)n;
      return static_cast<C*>(dst);
    } else {
      store_.emplace_back(static_cast<size_t>(n));  // not zeroed: the kernel writes it all
      C* d = store_.back().data();
      back_.push_back({dst, d, n});
      return d;
    }
  }
  // As out(), for a [T, B, inner] output with strides (stride_t, stride_b, 1).
  C* out_strided(void* dst, int64_t T, int64_t B, int64_t inner, int64_t stride_t,
                 int64_t stride_b) {
    store_.emplace_back(static_cast<size_t>(T * B * inner));
    C* d = store_.back().data();
    back_strided_.push_back({dst, d, T, B, inner, stride_t, stride_b});
    return d;
  }
  void write_back() const {
    for (const Back& b : back_) narrow_run<S, C>(b.src, static_cast<S*>(b.dst), b.n);
    for (const BackStrided& b : back_strided_)
      for (int64_t t = 0; t < b.T; ++t)
        for (int64_t r = 0; r < b.B; ++r)
          narrow_run<S, C>(b.src + (t * b.B + r) * b.inner,
                           static_cast<S*>(b.dst) + t * b.stride_t + r * b.stride_b, b.inner);
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
  std::vector<PackedB<C>> store_;  // PackedB: a vector that does not zero its elements
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
  if (q.xg != nullptr) {
    q.xg = w.in_strided(q.xg, T, B, N, q.xg_stride_t, q.xg_stride_b);
    q.xg_stride_t = B * N;
    q.xg_stride_b = N;
  }
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
  q.h_state = io(q.h_state, T * B * P);
}

// bfloat16 LSTM / GRU layers run the recurrent products in bfloat16 where the CPU has a bf16
// tier (gemm_bf16.h: AMX or AVX512_BF16; float32 accumulation, h_{t-1} / the step's gate
// gradients rounded to bf16 for the product, W_hh exact in bf16); elsewhere, for float16 and
// for the plain RNN cells, the float32 kernel computes them. (rnn_relu: the rounding of h moves
// pre-activations near 0 across relu's kink, whose derivative jumps 0 <-> 1; that failed the
// numerics rule's gradient bound at H = 32, so the plain cells keep the float32 product.)
template <class S, class C>
constexpr bool kBf16Storage = std::is_same_v<S, BFloat16Bits> && std::is_same_v<C, float>;
// One row: the bf16 product streams half the bytes of W_hh a step that the float32 one-row
// product does (rows widened to float32), ~1 µs a step less at H = 128 on Zen 4 (avx512-bf16:
// T = 256 1.05 -> 0.79 ms a call), but its pack and buffers cost ~22 µs a call (T = 1
// 177 -> 200 µs); even at T = 16 (227 / 231 µs), so from 24 steps on.
constexpr int64_t kOneRowBf16MinSteps = 24;

inline bool bf16_product_applies(const RecurrenceFwdParams& p) {
  return (p.cell == kCellLstm || p.cell == kCellGru) && bf16_tier() != Bf16Tier::kNone &&
         (p.B > 1 || p.T >= kOneRowBf16MinSteps);
}

RecurrenceFwdParams rows_of(const RecurrenceFwdParams& p, int64_t b0, int64_t b1);
int bf16_row_split_threads(const RecurrenceFwdParams& p, const Bf16Forward& bf);
// Calls split by batch rows (float32 forward_row_split and the bf16 one below).
std::atomic<int64_t> g_row_split_calls{0};

// A bfloat16 layer's forward split by batch rows (bf16_row_split_threads): q's float32 copies
// and bf's bf16 xg / output, each thread its rows as a one-thread call.
void forward_bf16_row_split(const RecurrenceFwdParams& q, const Bf16Forward& bf, int nt_req) {
  g_row_split_calls.fetch_add(1, std::memory_order_relaxed);
#if defined(_OPENMP)
#pragma omp parallel num_threads(nt_req)
#endif
  {
    const int tid = thread_id(), nt = team_size();
    const int64_t b0 = q.B * tid / nt, b1 = q.B * (tid + 1) / nt;
    RecurrenceFwdParams r = rows_of(q, b0, b1);
    r.x = nullptr;  // unused (the bf16 layers' xg is given) and not float32
    r.out = nullptr;
    Bf16Forward rb = bf;
    rb.xg = bf.xg + b0 * bf.xg_stride_b;
    rb.out = bf.out + b0 * bf.out_stride_b;
    forward_impl<float>(r, rb);
  }
}

void forward_one_row_pipelined(const RecurrenceFwdParams& p, RecurrenceFwdParams loop,
                               const Bf16Forward& bf);

template <class S, class C>
void forward_widened(const RecurrenceFwdParams& p) {
  RecurrenceFwdParams q = p;
  Widened<S, C> w;
  Widened<float, C> wa;
  Bf16Forward bf;
  // No xg: a bfloat16 layer's one row, its projection on a second thread ahead of the loop
  // (xproj_in_loop_applies); the loop then reads that float32 xg and writes a float32 output,
  // narrowed at the end (a one-row output is small).
  const bool project_ahead = p.xg == nullptr && p.T * p.B > 0;
  if constexpr (kBf16Storage<S, C>) {
    bf.product = bf16_product_applies(p);
    if (vector_cell_applies(p) && !p.fused_cell && !project_ahead) {
      bf.xg = static_cast<const uint16_t*>(p.xg);
      bf.xg_stride_t = p.xg_stride_t;
      bf.xg_stride_b = p.xg_stride_b;
      bf.out = static_cast<uint16_t*>(p.out);
      bf.out_stride_t = p.out_stride_t;
      bf.out_stride_b = p.out_stride_b;
      q.xg = nullptr;  // not widened (widen_common skips it)
      q.out = nullptr;  // bfloat16 storage: written through bf only
    }
  }
  widen_common(q, w, wa, true);
  const int64_t T = p.T, B = p.B, H = p.H, P = p.proj_size > 0 ? p.proj_size : H;
  if (bf.out == nullptr) {
    q.out = w.out_strided(q.out, T, B, P, p.out_stride_t, p.out_stride_b);
    q.out_stride_t = B * P;
    q.out_stride_b = P;
  }
  q.h_n = w.out(q.h_n, B * P);
  q.c_n = w.out(q.c_n, B * H);
  int split = 0;
  if constexpr (kBf16Storage<S, C>) split = project_ahead ? 0 : bf16_row_split_threads(q, bf);
  if (project_ahead) {  // C is float: only a bfloat16 layer comes here without xg
    q.x = nullptr;  // the loop's params (p keeps the projection's bfloat16 sources)
    forward_one_row_pipelined(p, q, bf);
  } else if (split > 0) {
    forward_bf16_row_split(q, bf, split);
  } else {
    forward_impl<C>(q, bf);
  }
  w.write_back();
  wa.write_back();
}

template <class S, class C>
void backward_widened(const RecurrenceBwdParams& p) {
  RecurrenceBwdParams q = p;
  Widened<S, C> w;
  Widened<float, C> wa;
  q.xg = nullptr;  // the backward never reads xg: not widened
  widen_common(q, w, wa, false);
  const int64_t T = p.T, B = p.B, H = p.H, N = p.G * p.H;
  const int64_t P = p.proj_size > 0 ? p.proj_size : H;
  if (q.out != nullptr) {
    q.out = w.in_strided(q.out, T, B, P, q.out_stride_t, q.out_stride_b);
    q.out_stride_t = B * P;
    q.out_stride_b = P;
  }
  Bf16Backward bf;
  if constexpr (kBf16Storage<S, C>) {
    bf.product = bf16_product_applies(p);
    if (vector_cell_applies(p) && !p.fused_cell) {
      bf.grad_out = static_cast<const uint16_t*>(p.grad_out);
      bf.grad_out_stride_t = p.grad_out_stride_t;
      bf.grad_out_stride_b = p.grad_out_stride_b;
      bf.dxg = static_cast<uint16_t*>(p.dxg);
      bf.dab_low = static_cast<uint16_t*>(p.dab_low);
      bf.hin_low = static_cast<uint16_t*>(p.hin_low);
      q.grad_out = nullptr;  // bfloat16 storage: read through bf only
      q.dxg = nullptr;
    }
  }
  if ((p.dab_low != nullptr || p.hin_low != nullptr) && bf.dxg == nullptr)
    throw std::invalid_argument(
        "fusedrnn host backend: dab_low / hin_low are written by the bfloat16 vector cell only "
        "(bfloat16 LSTM / GRU, no norm, no projection, not fused_cell)");
  if (bf.dxg == nullptr) {
    q.grad_out = w.in_strided(q.grad_out, T, B, P, q.grad_out_stride_t, q.grad_out_stride_b);
    q.grad_out_stride_t = B * P;
    q.grad_out_stride_b = P;
    q.dxg = w.out(q.dxg, T * B * N);
  }
  q.grad_h_n = w.in(q.grad_h_n, B * P);
  q.grad_c_n = w.in(q.grad_c_n, B * H);
  q.dab = wa.out(q.dab, T * B * N);
  q.da = wa.out(q.da, T * B * N);
  q.hin = wa.out(q.hin, T * B * P);
  q.dc_out = wa.out(q.dc_out, T * B * H);
  q.h_pre_proj = wa.out(q.h_pre_proj, T * B * H);
  q.dproj = wa.out(q.dproj, T * B * P);
  q.dh0 = w.out(q.dh0, B * P);
  q.dc0 = w.out(q.dc0, B * H);
  backward_impl<C>(q, bf);
  w.write_back();
  wa.write_back();
}

// Huge pages for the large per-call buffers. The saved tensors and gradients a call writes
// ([T, B, G * H] gates, dxg, ...) are blocks of the buffer cache, each a fresh anonymous
// mapping when the cache makes it (buffer_cache.cpp), untouched until the step loop writes
// it; with the cache off (FUSEDRNN_HOST_CACHE_MB=0) glibc serves 32 MiB and more by its own
// mmap. Either way the first call page-faults it in 4 KiB at a time (a 32 MiB buffer: 8192
// faults, each zeroing a page; measured 10.9 ms to first-touch 32 MiB against 4.3 ms with
// 2 MiB pages, one thread, this Xeon). With transparent huge pages in "madvise" mode (a
// common default) MADV_HUGEPAGE on the buffer's whole 2 MiB pages, before the first write,
// makes those faults 2 MiB each (and later reads walk fewer TLB entries). Only buffers of at
// least kHugeAdviceBytes (smaller ones are usually recycled heap memory, faulted in
// already). Advice only: the contents and
// results are unchanged; madvise errors (no THP, "never") are ignored. Off unless
// FUSEDRNN_HOST_THP=1: one thread it took a C5 training call to 0.97x, but on the idle 2-core
// Xeon at 2 threads the same call measured 1.16x slower with it (THP "defrag" = madvise: a
// fault in an advised range may compact memory synchronously; docs/design.md §5.4).
constexpr int64_t kHugeAdviceBytes = int64_t(16) << 20;
constexpr uintptr_t kHugePage = uintptr_t(2) << 20;

bool huge_advice_enabled() {
  const char* v = std::getenv("FUSEDRNN_HOST_THP");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

void advise_huge(const void* ptr, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (ptr == nullptr || bytes < kHugeAdviceBytes) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  const uintptr_t a = (p + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t e = (p + static_cast<uintptr_t>(bytes)) & ~(kHugePage - 1);
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)bytes;
#endif
}

int64_t dtype_bytes(int dtype) {
  return dtype == kFloat64 ? 8 : dtype == kFloat32 ? 4 : 2;
}
int64_t acc_bytes(int dtype) { return dtype == kFloat64 ? 8 : 4; }

// The forward's large outputs and saved tensors (the [T, ...] ones).
void advise_forward_buffers(const RecurrenceFwdParams& p) {
  if (!huge_advice_enabled()) return;
  const int64_t T = p.T, B = p.B, H = p.H, N = p.G * p.H;
  const int64_t P = p.proj_size > 0 ? p.proj_size : H, acc = acc_bytes(p.dtype);
  advise_huge(p.out, T * p.out_stride_t * dtype_bytes(p.dtype));
  for (void* v : {p.gates, p.xhat_hh}) advise_huge(v, T * B * N * acc);
  for (void* v : {p.gru_hn, p.c_tilde, p.c_state, p.xhat_c}) advise_huge(v, T * B * H * acc);
  advise_huge(p.h_state, T * B * P * acc);
}

// The backward's [T, ...] gradients and workspaces.
void advise_backward_buffers(const RecurrenceBwdParams& p) {
  if (!huge_advice_enabled()) return;
  const int64_t T = p.T, B = p.B, H = p.H, N = p.G * p.H;
  const int64_t P = p.proj_size > 0 ? p.proj_size : H, acc = acc_bytes(p.dtype);
  advise_huge(p.dxg, T * B * N * dtype_bytes(p.dtype));
  for (void* v : {p.dab, p.da}) advise_huge(v, T * B * N * acc);
  for (void* v : {p.hin, p.dproj}) advise_huge(v, T * B * P * acc);
  for (void* v : {p.dc_out, p.h_pre_proj}) advise_huge(v, T * B * H * acc);
}

// ======================================================================================
// Forward split by batch rows
// ======================================================================================
// The unit split above shares h every step: each thread's product reads the other threads'
// units of m_h * h (written in another core's cache) and every step ends at a barrier. A plain
// float32 LSTM / GRU forward on the vector cell shares nothing else between batch rows, so
// there the threads can instead own batch rows with every unit: each runs the whole recurrence
// of its rows as one worker (the projection in the loop in inference; its rows of xg and of
// the saved tensors in training) — no barrier, no exchange between cores — from one copy of
// W_hh^T (and W_ih^T) packed by all threads together (each its own groups, one barrier). A
// thread's products then read all of W (the unit split: its 1/nt share), so this pays only
// where the rows per thread keep the products compute-bound (kRowSplitMinRows rows a thread or
// more) and W_hh stays in a core's L2 (at most kRowSplitMaxWeightBytes): measured on an idle
// 2-core Xeon (2 MiB L2 per core), C2's 1 MiB W_hh gained (host / torch.nn 1.07 -> 1.02)
// while C5's 4 MiB, streamed from L3 by both cores at once, lost (1.06 -> 1.22, training
// 1.01 -> 1.13; docs/design.md §5.4, "Row split"). Not with training-mode random draws
// (indexed by the global row). The backward keeps the unit split. Inference and the training
// forward (row_split_threads); FUSEDRNN_HOST_ROW_SPLIT=0 / 1 forces it off / on where it can
// run (for measurements and tests).
constexpr int64_t kRowSplitMinRows = 16;
constexpr int64_t kRowSplitMaxWeightBytes = int64_t(2) << 20;

// The same split for a bfloat16 layer's inference on the vector cell with the bf16 product
// (forward_widened, Bf16Forward with xg / output in bf16): each thread its rows, packing its own
// bf16 W_hh^T (every column). Where the rows per thread fill an AMX tile (kRowSplitMinRows =
// 16) and the bf16 W_hh fits a core's L2: the unit split's per-step barrier and exchange were
// ~8-14 % of a bf16 C2 / C5 inference call (perf: libgomp's waits). Measured on the idle
// 2-core Xeon (AMX), interleaved in one process, bf16 host / torch.nn: C2 1.18 -> 1.04, C5
// 1.09 -> 1.24 (docs/design.md §5.4). FUSEDRNN_HOST_ROW_SPLIT=0 / 1 as above.
int bf16_row_split_threads(const RecurrenceFwdParams& p, const Bf16Forward& bf) {
  const int64_t nt = std::min<int64_t>(p.num_threads, p.H);
  // No training-mode random draws (those are indexed by the global row), as above.
  const bool draws = p.training && (p.p_dropout > 0 || p.p_zoneout_c > 0 || p.p_zoneout_h > 0 ||
                                    p.p_weight_drop > 0);
  if (nt < 2 || p.B < 2 * nt || bf.out == nullptr || !bf.product || p.gates != nullptr ||
      p.h_state != nullptr || draws)
    return 0;
  const char* v = std::getenv("FUSEDRNN_HOST_ROW_SPLIT");
  if (v != nullptr && std::strcmp(v, "0") == 0) return 0;
  if (v != nullptr && std::strcmp(v, "1") == 0) return static_cast<int>(nt);
  const int64_t P = p.proj_size > 0 ? p.proj_size : p.H;
  // At most 1 MiB of bf16 W_hh: C2's 0.5 MiB gained, C5's 2 MiB (a whole L2) lost.
  const bool fits = p.G * p.H * P * int64_t(sizeof(uint16_t)) <= kRowSplitMaxWeightBytes / 2;
  return p.B / nt >= kRowSplitMinRows && fits ? static_cast<int>(nt) : 0;
}

int row_split_threads(const RecurrenceFwdParams& p) {
  const int64_t nt = std::min<int64_t>(p.num_threads, p.H);
  // No training-mode random draws (those are indexed by the global row).
  const bool draws = p.training && (p.p_dropout > 0 || p.p_zoneout_c > 0 || p.p_zoneout_h > 0 ||
                                    p.p_weight_drop > 0);
  // float32 LSTM / GRU on the vector cell, with xg given or the projection in the loop.
  const bool xproj = p.xg == nullptr && xproj_in_loop_applies(p);
  const bool with_xg = p.xg != nullptr && p.x == nullptr;
  if (nt < 2 || p.B < 2 * nt || draws || p.h_state != nullptr || p.dtype != kFloat32 ||
      !vector_cell_applies(p) || p.fused_cell || !(xproj || with_xg))
    return 0;
  const char* v = std::getenv("FUSEDRNN_HOST_ROW_SPLIT");
  if (v != nullptr && std::strcmp(v, "0") == 0) return 0;
  if (v != nullptr && std::strcmp(v, "1") == 0) return static_cast<int>(nt);
  const int64_t P = p.proj_size > 0 ? p.proj_size : p.H;
  const bool fits = p.G * p.H * P * int64_t(sizeof(float)) <= kRowSplitMaxWeightBytes;
  // The training forward too (saved tensors at the thread's rows): on the 2-core Xeon it once
  // measured 0.93 -> 0.95 at C2 (before the projection moved into the training loop), but on
  // the 2-core Zen 4 VM, where spells of slower cross-core traffic come and go for tens of
  // seconds, the unit split's per-step exchange took C2 training to 1.00-1.02 x torch.nn in
  // them, the row split 0.92-0.93 (and 1-2 % faster outside them; GRU C4 0.62 -> 0.56;
  // docs/design.md §5.4, "The row split in training"). On the AVX-512 build only (the AVX2
  // build's C2 / C4 inference measured 0.918 -> 0.942 / 0.698 -> 0.709 with it on the Xeon);
  // else only when forced.
  const bool avx512 = runtime_isa() == Isa::kX86_64_V4 && FRNN_HAVE_MULTIVERSION;
  return p.B / nt >= kRowSplitMinRows && fits && avx512 ? static_cast<int>(nt) : 0;
}

// Rows [b0, b1) of p as a one-thread call.
RecurrenceFwdParams rows_of(const RecurrenceFwdParams& p, int64_t b0, int64_t b1) {
  const int64_t H = p.H, P = p.proj_size > 0 ? p.proj_size : H;
  RecurrenceFwdParams q = p;
  q.B = b1 - b0;
  q.num_threads = 1;
  if (p.x != nullptr) q.x = static_cast<const float*>(p.x) + b0 * p.x_stride_b;
  if (p.xg != nullptr) q.xg = static_cast<const float*>(p.xg) + b0 * p.xg_stride_b;
  q.out = static_cast<float*>(p.out) + b0 * p.out_stride_b;
  auto at = [&](auto* ptr, int64_t row) -> decltype(ptr) {
    return ptr != nullptr ? static_cast<decltype(ptr)>(static_cast<const float*>(ptr) + row) : ptr;
  };
  q.h0 = at(p.h0, b0 * P);
  q.c0 = at(p.c0, b0 * H);
  q.h_n = p.h_n != nullptr ? static_cast<float*>(p.h_n) + b0 * P : nullptr;
  q.c_n = p.c_n != nullptr ? static_cast<float*>(p.c_n) + b0 * H : nullptr;
  q.lengths = p.lengths != nullptr ? p.lengths + b0 : nullptr;
  // Saved tensors (training): the thread's rows of every step (saved_rows = the whole batch).
  auto row = [&](void* ptr, int64_t width) -> void* {
    return ptr != nullptr ? static_cast<float*>(ptr) + b0 * width : nullptr;
  };
  q.gates = row(p.gates, p.G * H);
  q.gru_hn = row(p.gru_hn, H);
  q.c_tilde = row(p.c_tilde, H);
  q.c_state = row(p.c_state, H);
  return q;
}

void forward_row_split(const RecurrenceFwdParams& p, int nt_req) {
  const int64_t B = p.B, H = p.H, G = p.G, N = G * H, I = p.input_size;
  // Every thread's row count is >= 2, so one packed layout serves them all (packed_group).
  const int64_t M = B / nt_req;
  const PackedLayout<float> layout = packed_layout<float>(M);
  PackedB<float> w_hh(static_cast<size_t>(layout.size(H, N)));
  const bool xproj = p.xg == nullptr;  // else xg is given (row_split_threads)
  std::vector<PackedB<float>> w_ih(static_cast<size_t>(xproj ? G : 0));
  for (auto& w : w_ih) w.resize(static_cast<size_t>(layout.size(I, H)));
  SharedPacks<float> packs;
  packs.w_hh = w_hh.data();
  for (int64_t g = 0; g < static_cast<int64_t>(w_ih.size()); ++g) packs.w_ih[g] = w_ih[g].data();
  packs.saved_rows = B;
  const float* whh = static_cast<const float*>(p.w_hh);
  const float* wih = static_cast<const float*>(p.w_ih);
  if (xproj) g_xproj_calls.fetch_add(1, std::memory_order_relaxed);
  g_row_split_calls.fetch_add(1, std::memory_order_relaxed);
#if defined(_OPENMP)
#pragma omp parallel num_threads(nt_req)
#endif
  {
    const int tid = thread_id(), nt = team_size();
    const int64_t gh = packed_groups<float>(M, N), gi = packed_groups<float>(M, H);
    pack_b_groups<float>(M, H, N, 1, [&](int64_t c) { return whh + c * H; }, w_hh.data(),
                         gh * tid / nt, gh * (tid + 1) / nt);
    for (int64_t g = 0; g < static_cast<int64_t>(w_ih.size()); ++g)
      pack_b_groups<float>(M, I, H, 1, [&](int64_t j) { return wih + (g * H + j) * I; },
                           w_ih[g].data(), gi * tid / nt, gi * (tid + 1) / nt);
    barrier();
    forward_impl<float>(rows_of(p, B * tid / nt, B * (tid + 1) / nt), Bf16Forward(), &packs);
  }
}

// ======================================================================================
// Forward, one row: the input projection on a second thread, ahead of the step loop
// ======================================================================================
// At B = 1 a step's product is one row against W_hh (gemv_rows, read in place): a few µs, so a
// second thread on half the units would add a per-step barrier worth about what it saves
// (host._threads keeps such a loop on one thread), while the input projection x W_ih^T of
// all T steps, one GEMM before the loop, is about a third of the call (C7 on one thread). So
// with two threads one runs the step loop (forward_impl, one worker) and the other computes
// xg = x W_ih^T + b_ih kOneRowProjectionSteps steps at a time, in the loop's order, into a
// [T, G·H] buffer, publishing how many steps are done (release); the loop waits for its step's
// xg (HostForwardPolicy::xg_ready, acquire). After the first chunk the loop never waits: a
// chunk's GEMM is much faster than its steps. xg holds b_ih (the cell adds b_hh), as the xg
// functional.rnn computes does.
constexpr int64_t kOneRowProjectionSteps = 16;
constexpr int64_t kOneRowLeadSteps = 4;

void project_steps_ahead(const RecurrenceFwdParams& p, float* xg, std::atomic<int64_t>& ready) {
  const int64_t T = p.T, N = p.G * p.H, I = p.input_size;
  // FUSEDRNN_HOST_PIPELINE_DELAY_US (tests only): a pause before each publication, so a loop
  // that did not wait for its xg would read it unwritten.
  const char* delay_env = std::getenv("FUSEDRNN_HOST_PIPELINE_DELAY_US");
  const int64_t delay_us = delay_env != nullptr ? std::atoll(delay_env) : 0;
  auto publish = [&](int64_t steps) {
    if (delay_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
    ready.store(steps, std::memory_order_release);
  };
  const float* x = static_cast<const float*>(p.x);
  const float* w_ih = static_cast<const float*>(p.w_ih);
  const float* b_ih = static_cast<const float*>(p.b_ih);
  int64_t x_ld = p.x_stride_t;
  std::vector<float> x_wide, w_ih_wide, b_ih_wide;  // a bfloat16 layer's sources in float32
  if (p.dtype == kBFloat16) {
    const auto* x16 = static_cast<const uint16_t*>(p.x);
    x_wide.resize(static_cast<size_t>(T * I));
    for (int64_t t = 0; t < T; ++t) widen_bf16(x16 + t * p.x_stride_t, x_wide.data() + t * I, I);
    w_ih_wide.resize(static_cast<size_t>(N * I));
    widen_bf16(static_cast<const uint16_t*>(p.w_ih), w_ih_wide.data(), N * I);
    x = x_wide.data();
    w_ih = w_ih_wide.data();
    x_ld = I;
    if (b_ih != nullptr) {
      b_ih_wide.resize(static_cast<size_t>(N));
      widen_bf16(static_cast<const uint16_t*>(p.b_ih), b_ih_wide.data(), N);
      b_ih = b_ih_wide.data();
    }
  }
  auto add_bias = [&](int64_t t0, int64_t steps) {  // rows t0 .. t0 + steps - 1 of xg
    if (b_ih == nullptr) return;
    for (int64_t r = t0; r < t0 + steps; ++r)
      for (int64_t n = 0; n < N; ++n) xg[r * N + n] += b_ih[n];
  };
  // The loop's first steps wait for their xg, so those come first, a step at a time from
  // W_ih's rows in place (gemv_rows: no pack to wait for), before the pack and the chunks.
  int64_t s0 = 0;
  for (; s0 < std::min<int64_t>(kOneRowLeadSteps, T); ++s0) {
    const int64_t t = p.reverse ? T - 1 - s0 : s0;
    gemv_rows(N, I, w_ih, I, x + t * x_ld, xg + t * N);
    add_bias(t, 1);
    publish(s0 + 1);
  }
  if (s0 == T) return;
  // Packed for many-row products (one layout for every chunk of 2 or more steps; a chunk of
  // one step would take gemm_packed's one-row layout, so a lone last step joins the chunk
  // before it and only a single step left after the lead packs for one row).
  const int64_t layout_rows = T - s0 == 1 ? 1 : kOneRowProjectionSteps;
  const PackedB<float> w =
      pack_b<float>(layout_rows, I, N, 1, [&](int64_t n) { return w_ih + n * I; });
  while (s0 < T) {
    int64_t steps = std::min<int64_t>(kOneRowProjectionSteps, T - s0);
    if (T - s0 - steps == 1) ++steps;
    const int64_t t0 = p.reverse ? T - s0 - steps : s0;  // the chunk's first row of x / xg
    gemm_packed(steps, N, I, x + t0 * x_ld, x_ld, w.data(), xg + t0 * N, N, false);
    add_bias(t0, steps);
    s0 += steps;
    publish(s0);
  }
}

std::atomic<int64_t> g_one_row_pipeline_calls{0};

// p: the call's params (the projection's sources x, W_ih, b_ih: float32, or a bfloat16 layer's,
// widened by the projecting thread); loop: the float32 params the step loop runs (p itself, or
// a bfloat16 layer's widened copies, forward_widened), with bf its bf16 product.
void forward_one_row_pipelined(const RecurrenceFwdParams& p, RecurrenceFwdParams loop,
                               const Bf16Forward& bf) {
  const int64_t N = p.G * p.H;
  // Every element is written before the loop reads it (no zero fill: 512 KiB at C7).
  std::vector<float, NoInitAllocator<float>> xg(
      static_cast<size_t>(std::max<int64_t>(p.T * N, 1)));
  std::atomic<int64_t> ready{0};
  loop.xg = xg.data();  // xg given, one worker
  loop.xg_stride_t = N;
  loop.xg_stride_b = N;
  loop.x = nullptr;
  loop.num_threads = 1;
  g_one_row_pipeline_calls.fetch_add(1, std::memory_order_relaxed);
#if defined(_OPENMP)
#pragma omp parallel num_threads(2)
#endif
  {
    if (team_size() < 2) {  // the runtime gave one thread: project first, then the loop
      project_steps_ahead(p, xg.data(), ready);
      forward_impl<float>(loop, bf);
    } else if (thread_id() == 1) {
      project_steps_ahead(p, xg.data(), ready);
    } else {
      forward_impl<float>(loop, bf, nullptr, &ready);
    }
  }
}

}  // namespace

int64_t one_row_pipeline_calls() { return g_one_row_pipeline_calls.load(); }
int64_t xproj_in_loop_calls() { return g_xproj_calls.load(); }
int64_t row_split_calls() { return g_row_split_calls.load(); }

bool xproj_in_loop_applies(const RecurrenceFwdParams& p) {
  const bool one_row = p.B == 1 && p.num_threads >= 2;  // forward_one_row_pipelined
  return (p.dtype == kFloat32 || (p.dtype == kBFloat16 && one_row)) && p.x != nullptr &&
         p.w_ih != nullptr && p.input_size > 0 && vector_cell_applies(p) && !p.fused_cell &&
         (p.B > 1 || one_row);
}

void recurrence_forward(const RecurrenceFwdParams& p) {
  advise_forward_buffers(p);
  if (p.xg == nullptr && p.T * p.B > 0 && !xproj_in_loop_applies(p))
    throw std::invalid_argument("fusedrnn host backend: no xg, and x W_ih^T cannot run in "
                                "the step loop for these params");
  switch (p.dtype) {
    case kFloat32:
      if (p.norm != kNormNone) return forward_widened<float, double>(p);
      if (p.B == 1 && p.xg == nullptr) return forward_one_row_pipelined(p, p, Bf16Forward());
      if (const int nt = row_split_threads(p)) return forward_row_split(p, nt);
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
  if ((p.dab_low != nullptr || p.hin_low != nullptr) && p.dtype != kBFloat16)
    throw std::invalid_argument("fusedrnn host backend: dab_low / hin_low need bfloat16 layers");
  advise_backward_buffers(p);
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
