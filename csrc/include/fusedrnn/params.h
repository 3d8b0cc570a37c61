// Parameter structs of fusedrnn's native recurrence kernels (CUDA and host).
//
// Shape conventions, stated once (the same as fusedrnn/backends/base.py):
//   T  time steps          B  batch rows          H  hidden units (c has H)
//   P  units of h: proj_size with an lstm projection, else H
//   G  gates (lstm 4, gru 3, rnn 1)               N = G * H, the width of xg and of W_hh rows
//   S  per-step batch-norm running buffers (max_steps)
//
// Gate-major layout: column n = g * H + j of xg, W_hh, b_hh and every [.., N] tensor is gate g
// of hidden unit j, in torch's gate order (lstm i f g o, gru r z n).
//
// Every tensor is dense row-major over its last dimension (unit stride). The [T, B, *]
// tensors that a caller may hand in as views (xg, out, grad_out) carry explicit int64 strides
// in elements; everything else is contiguous (the Python launcher checks that).
//
// "dtype" tensors are in the storage type given by `dtype` (DType below); "acc" tensors are in
// the accumulation type (float32, or float64 when dtype is float64). Optional tensors are
// nullptr when absent. The Python launcher allocates every output and workspace (with torch's
// allocator) and passes raw addresses; the native code never allocates device memory.
#pragma once

#include <cstdint>

namespace fusedrnn {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// Forward kernel family: one layer-direction's whole time loop.
struct RecurrenceFwdParams {
  // ---- sizes and settings
  int64_t T = 0, B = 0, H = 0, G = 0;
  int64_t S = 0;       // rows of the running buffers (batch norm, eval)
  int64_t proj_size = 0;  // P > 0: lstm projection h~ = W_hr (o tanh(c)); 0: P = H, none
  int32_t cell = 0;    // CellKind (cells.cuh)
  int32_t norm = 0;    // NormKind (cells.cuh)
  int32_t dtype = 0;   // DType
  bool reverse = false;   // run t = T-1 .. 0
  bool training = false;  // masks and batch statistics on
  double p_dropout = 0.0;   // recurrent variational dropout probability
  double p_zoneout_c = 0.0;  // lstm cell zoneout probability
  double p_zoneout_h = 0.0;  // hidden zoneout probability
  uint64_t seed = 0;          // Philox key (int64 bit pattern)
  uint64_t base_dropout = 0;  // philox.mask_base_offset(STREAM_RECURRENT_DROPOUT, layer, dir)
  uint64_t base_zoneout_c = 0;  // ... STREAM_ZONEOUT_CELL
  uint64_t base_zoneout_h = 0;  // ... STREAM_ZONEOUT_HIDDEN
  // Weight drop (DropConnect on W_hh), training only: W_hh * m_W where the host kernels pack
  // W_hh (host/weight_drop_host.h; m_W is philox.cuh's weight_drop_scale). The cuda launcher
  // passes the effective W_hh instead and leaves these 0 (docs/design.md §5.5).
  double p_weight_drop = 0.0;     // 0 = off
  uint64_t weight_drop_key = 0;   // philox.weight_drop_key(seed)
  uint64_t base_weight_drop = 0;  // philox.weight_drop_base_offset(layer, direction)
  int32_t num_threads = 1;  // host backend: worker threads (ignored by CUDA)
  bool allow_tf32 = false;  // CUDA, float32: recurrent product on TF32 tensor cores (else FMA)
  // Run the cell on the product's results per (row, unit) when the step allows it (no norm, no
  // projection: step_loop.h fused_cell_applies): the CUDA forward on tensor cores then keeps the
  // gates in the accumulators (docs/kernels-v2.md §5.0); the host runs the same per-element step
  // (the launchers set it: cuda by default, host only when asked, for the tests).
  bool fused_cell = false;

  // ---- inputs
  const void* xg = nullptr;  // dtype [T, B, N], strides (xg_stride_t, xg_stride_b, 1)
  int64_t xg_stride_t = 0, xg_stride_b = 0;
  const void* h0 = nullptr;          // dtype [B, P]
  const void* c0 = nullptr;          // dtype [B, H] (lstm)
  const void* w_hh = nullptr;        // dtype [N, P]
  const void* w_hr = nullptr;        // dtype [P, H] (proj_size > 0)
  const void* b_hh = nullptr;        // dtype [N] or nullptr (bias=False)
  const int64_t* lengths = nullptr;  // int64 [B], 0 <= len <= T, or nullptr (all T)
  const void* norm_weight_hh = nullptr;   // dtype [N] (norm != none)
  const void* norm_weight_c = nullptr;    // dtype [H] (lstm, norm != none)
  const void* norm_bias_c = nullptr;      // dtype [H] (lstm, norm != none)
  const void* running_mean_hh = nullptr;  // dtype [S, N] (batch norm, eval)
  const void* running_var_hh = nullptr;   // dtype [S, N]
  const void* running_mean_c = nullptr;   // dtype [S, H] (lstm)
  const void* running_var_c = nullptr;    // dtype [S, H] (lstm)
  // Host float32 inference only (csrc/host/recurrence_host.cpp, "input projection in the step
  // loop"): when x is set, the host computes xg = x W_ih^T + b_ih itself, a few steps at a time
  // per worker, and xg above is not read. x: float32 [T, B, input_size], strides
  // (x_stride_t, x_stride_b, 1); w_ih: [N, input_size] row-major; b_ih: [N] or nullptr.
  const void* x = nullptr;
  int64_t x_stride_t = 0, x_stride_b = 0, input_size = 0;
  const void* w_ih = nullptr;
  const void* b_ih = nullptr;

  // ---- outputs
  void* out = nullptr;  // dtype [T, B, P], strides (out_stride_t, out_stride_b, 1); 0 when t >= len
  int64_t out_stride_t = 0, out_stride_b = 0;
  void* h_n = nullptr;  // dtype [B, P]
  void* c_n = nullptr;  // dtype [B, H] (lstm)
  void* batch_mean_hh = nullptr;  // acc [T, N] (batch norm, training)
  void* batch_var_hh = nullptr;   // acc [T, N] biased variance over the active rows
  void* batch_mean_c = nullptr;   // acc [T, H] (lstm)
  void* batch_var_c = nullptr;    // acc [T, H] (lstm)

  // ---- saved for backward (acc), written by forward, read by backward
  void* gates = nullptr;    // acc [T, B, N] activated gates (rnn: h~ before zoneout)
  void* gru_hn = nullptr;   // acc [T, B, H] gru: N_hh(W_hn h)_n + b_hn
  void* xhat_hh = nullptr;  // acc [T, B, N] normalised W_hh h before gamma (norm != none)
  void* rstd_hh = nullptr;  // acc batch norm [T, N], layer norm [T, B]
  void* c_tilde = nullptr;  // acc [T, B, H] lstm: c~ before normalisation and zoneout
  void* c_state = nullptr;  // acc [T, B, H] lstm: c after step t (every row)
  void* xhat_c = nullptr;   // acc [T, B, H] lstm, norm != none: normalised c~ before gamma
  void* rstd_c = nullptr;   // acc batch norm [T, H], layer norm [T, B] (lstm)
  // acc [T, B, P] h after step t (every row), or nullptr: the launcher keeps it when the
  // storage type is narrower than acc (float16, bfloat16), so that backward's h_{t-1} (dW_hh's
  // input, GRU's dz) is the state the forward computed, not `out` rounded to storage.
  void* h_state = nullptr;

  // ---- workspace (CUDA only; the host backend uses its own stack/heap buffers)
  void* ws_hin = nullptr;   // acc [2, B, P] double buffer of m_h * h_{t-1}
  void* ws_stats = nullptr;  // acc [2, B, grid, 4] layer-norm partials (a row's contiguous)
  void* ws_h_pre = nullptr;  // acc [B, H] forward, proj_size > 0: o tanh(c_out), every block's
};

// Backward kernel family: the same loop in reverse time order.
struct RecurrenceBwdParams : RecurrenceFwdParams {
  // ---- incoming gradients
  const void* grad_out = nullptr;  // dtype [T, B, P], strides (grad_out_stride_t, _b, 1)
  int64_t grad_out_stride_t = 0, grad_out_stride_b = 0;
  const void* grad_h_n = nullptr;  // dtype [B, P]
  const void* grad_c_n = nullptr;  // dtype [B, H] or nullptr (zero)

  // ---- outputs
  void* dxg = nullptr;     // dtype [T, B, N]
  void* dab = nullptr;     // acc [T, B, N] d(N_hh(W_hh h) + b_hh): sums: b_hh, norm_weight_hh grads
  void* da = nullptr;      // acc [T, B, N] d(W_hh h) (norm != none; else equal to dab)
  void* hin = nullptr;     // acc [T, B, P] m_h * h_{t-1}: dW_hh = da^T hin over all steps
  // Host bfloat16 layers on the vector cell (the launcher's bf16 weight-gradient GEMMs): dW_hh's
  // operands in the storage dtype, written by the cell rounded once, so that no [T, ...]
  // conversion follows; with hin_low set, hin may be null (not written). Set only where the
  // host's vector cell runs (recurrence_host.cpp checks).
  void* dab_low = nullptr;  // dtype [T, B, N] dab rounded
  void* hin_low = nullptr;  // dtype [T, B, P] hin rounded
  void* dc_out = nullptr;  // acc [T, B, H] d(N_c(c~)) (lstm, norm != none): the norm_*_c grads
  void* h_pre_proj = nullptr;  // acc [T, B, H] o tanh(c_out) (proj_size > 0)
  void* dproj = nullptr;   // acc [T, B, P] d(W_hr h_pre_proj): dW_hr = dproj^T h_pre_proj
  void* dh0 = nullptr;     // dtype [B, P]
  void* dc0 = nullptr;     // dtype [B, H] (lstm)

  // ---- workspace (CUDA only)
};

}  // namespace fusedrnn

namespace fusedrnn {

// One elementwise pass dst[r][c] = src[r][c] * weight_drop_scale(key, base, r, c, p, 1/(1-p))
// over a dense row-major [rows, cols] weight-shaped tensor (philox.cuh): masks dW_hh where the
// launcher's GEMM produced it (in place, src == dst), and builds the cuda backend's effective
// W_hh once per call. Nothing mask-shaped is written.
struct WeightDropParams {
  const void* src = nullptr;  // dtype [rows, cols]
  void* dst = nullptr;        // dtype [rows, cols]; may equal src
  int64_t rows = 0, cols = 0;
  int32_t dtype = 0;          // DType
  double p = 0.0;             // drop probability, in (0, 1)
  uint64_t key = 0;           // philox.weight_drop_key(seed)
  uint64_t base = 0;          // philox.weight_drop_base_offset(layer, direction)
};

}  // namespace fusedrnn
