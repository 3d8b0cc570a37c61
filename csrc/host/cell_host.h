// The host's vectorised cell (float32): steps 3-5 of step_loop.h's forward step and steps A-B
// of its backward step for one worker's units, every batch row, for a plain LSTM or GRU layer
// (no norm, no projection), in one pass over memory per row with the gates' values in SIMD
// registers: the sums a + b_hh + xg, the activations (simd_vec.h's sigmoid / tanh, as the
// phased form's sigmoid_cols / tanh_cols), the cell and zoneout (cells.cuh's functions,
// instantiated on a vector of lanes), the state update and every saved tensor and output.
// AVX-512 (16 lanes) / AVX2 / baseline (8 lanes) per multiversion.h. The step loop calls it
// through the host policy's vector_cell_step / vector_cell_backward_step
// (csrc/host/recurrence_host.cpp); row pointers below are already at the worker's first unit.
#pragma once

#include <cstdint>

#include "fusedrnn/cells.cuh"

namespace fusedrnn {
namespace host {

struct CellForwardArgs {
  int cell;          // kCellLstm or kCellGru
  int64_t B, H, n;   // rows, hidden size (gate stride), own units
  int64_t t, T;      // the step and the sequence length
  const int64_t* len;  // per-row lengths (null: all T)
  const float* a;    // [B][G * n] W_hh h of the step, gate-major
  const float* xg;   // row b, gate g, unit k at xg[b * xg_ld + g * H + k]
  int64_t xg_ld;
  // Elements from this step's xg (or xg_bf16) to the next step's, prefetched row by row (0:
  // none). xg computed before the call ([T, B, G * H], 8 MiB at C2 in bf16) is not in cache,
  // and the hardware prefetcher does not follow a worker's 4 slices per row: the loads of xg
  // were the cell's hottest instructions (bf16 C2 inference).
  int64_t xg_next_step = 0;
  const float* bias;  // gate g, unit k at bias[g * H + k]; may be null
  float* c;          // [B][n] the state (lstm), updated
  float* h;          // [B][n] the state, updated
  const float* mh;   // [B][n] recurrent-dropout mask
  Zoneout<float> zc, zh;
  const uint8_t* zc_rows;  // [B][n] zoned-out decisions (training zoneout only)
  const uint8_t* zh_rows;
  float* gates;  // saved (null: none saved): row b gate g unit k at gates[b * G * H + g * H + k]
  float* gru_hn;   // saved a_n (gru), row stride H
  float* c_tilde;  // saved (lstm), row stride H
  float* c_state;  // saved (lstm), row stride H
  float* h_state;  // saved h (may be null), row stride h_ld
  int64_t h_ld;
  float* out;  // the step's output, row stride out_ld
  int64_t out_ld;
  // bfloat16 layers (both set, or neither): xg read as bfloat16 bits (same layout as xg, which
  // is then unused) and the output written rounded to bfloat16 (round to nearest even, NaN
  // stays NaN, as gemm_bf16.h's narrow_bf16; same layout as out, which is then unused). So the
  // call's [T, B, G * H] xg and [T, B, H] output are never converted as a whole.
  const uint16_t* xg_bf16 = nullptr;
  uint16_t* out_bf16 = nullptr;
  float* hin;  // the exchange buffer the next step reads (m_h * h), row stride h_ld
  // The bf16 product's exchange instead (gemm_bf16_rounded's A; hin then unused): m_h * h
  // rounded to bf16, row stride hin_bf16_ld.
  uint16_t* hin_bf16 = nullptr;
  int64_t hin_bf16_ld = 0;
};
void cell_forward_rows(const CellForwardArgs& q);

struct CellBackwardArgs {
  int cell;
  int64_t B, H, n;
  int64_t t, T;
  const int64_t* len;
  bool has_prev;        // step t has a previous step tp
  int64_t tp;
  const float* h_prev;  // h_{t-1} of row b at h_prev[b * h_prev_ld] (active rows of step tp)
  int64_t h_prev_ld;
  const float* h0;      // h_0, row stride h_ld (rows inactive at tp, or no previous step)
  const float* c_prev;  // c_{t-1}, row stride H: c_state of tp, else c_0 (lstm)
  const float* gates;   // saved gates of step t, row stride G * H, gate stride H
  const float* c_tilde;  // saved c~ of step t (lstm), row stride H
  const float* gru_hn;   // saved a_n of step t (gru), row stride H
  const float* grad_out;  // d(out_t), row stride grad_out_ld
  int64_t grad_out_ld;
  const float* dh;  // [B][n] d(h_t) entering the step
  const float* dc;  // [B][n] d(c_t) (lstm)
  const float* mh;  // [B][n]
  Zoneout<float> zc, zh;
  const uint8_t* zc_rows;
  const uint8_t* zh_rows;
  float* hin;      // m_h * h_{t-1}, row stride h_ld
  int64_t h_ld;
  float* dxg;      // d of the step's xg, row stride G * H, gate stride H
  float* dab;      // d(a + b_hh), same layout
  float* dh_prev;  // [B][n] direct part of d(h_{t-1})
  float* dc_prev;  // [B][n] d(c_{t-1}) (lstm)
  // bfloat16 layers (both set, or neither): d(out_t) read as bfloat16 bits (same layout as
  // grad_out, then unused) and d xg written rounded to bfloat16 (as the forward's out_bf16;
  // same layout as dxg, then unused).
  const uint16_t* grad_out_bf16 = nullptr;
  uint16_t* dxg_bf16 = nullptr;
  // Optional bf16 copies for the launcher's bf16 dW_hh GEMM (params.h dab_low / hin_low):
  // dab rounded (same layout as dab) and hin rounded (row stride h_ld; hin then unused).
  uint16_t* dab_bf16 = nullptr;
  uint16_t* hin_bf16 = nullptr;
};
void cell_backward_rows(const CellBackwardArgs& q);

}  // namespace host
}  // namespace fusedrnn
