// The cell math of fusedrnn, written once for the CUDA kernels and the host (CPU) backend.
//
// Every function is FRNN_HD (host+device under nvcc, plain inline C++ under g++) and works on
// the accumulation type T (float for float32/float16/bfloat16 storage, double for float64).
// The equations are those of fusedrnn/reference_loop.py (see docs/design.md §3.1):
//
//   LSTM (i, f, g, o):  c~ = s(f) c_prev + s(i) tanh(g);   h~ = s(o) tanh(N_c(c~))
//   GRU  (r, z, n):     r = s(x_r + a_r); z = s(x_z + a_z); n = tanh(x_n + r a_n);
//                       h~ = (1 - z) n + z h_prev          (a = N_hh(W_hh h) + b_hh)
//   RNN:                h~ = tanh|relu(x + a)     (relu(NaN) = NaN, as torch)
//   zoneout:            d prev + (1 - d) new, d = 1 if the unit is zoned out else 0
//                       (training), d = p (eval)
//   normalisation:      y = (x - mean) * rstd * gamma (+ beta), rstd = 1 / sqrt(var + eps)
//
// Backward helpers take the saved activated values (as torch's autograd formulas do:
// sigmoid' = (1 - y) y, tanh' = 1 - y^2, relu' = [y > 0], NaN y passing dy through).
//
// NaN and inf propagate as in torch.nn and the reference: no comparison drops a NaN, and the
// zoneout mix is the product form in training too (0 * inf = NaN as in the reference).
#pragma once

#include <cmath>

#include "fusedrnn/hostdevice.h"
#include "fusedrnn/philox.cuh"

namespace fusedrnn {

enum CellKind : int { kCellLstm = 0, kCellGru = 1, kCellRnnTanh = 2, kCellRnnRelu = 3 };
enum NormKind : int { kNormNone = 0, kNormBatch = 1, kNormLayer = 2 };

constexpr double kNormEps = 1e-5;  // fusedrnn.backends.base.NORM_EPS

// ----------------------------------------------------------------------------------------
// Elementary functions in the accumulation type.
FRNN_HD float frnn_exp(float x) { return expf(x); }
FRNN_HD double frnn_exp(double x) { return exp(x); }
FRNN_HD float frnn_tanh(float x) { return tanhf(x); }
FRNN_HD double frnn_tanh(double x) { return tanh(x); }
FRNN_HD float frnn_sqrt(float x) { return sqrtf(x); }
FRNN_HD double frnn_sqrt(double x) { return sqrt(x); }

template <class T>
FRNN_HD T sigmoid(T x) {
  return T(1) / (T(1) + frnn_exp(-x));
}
template <class T>
FRNN_HD T relu(T x) {
  return x <= T(0) ? T(0) : x;  // NaN fails the test and passes through
}
template <class T>
FRNN_HD T sigmoid_grad(T dy, T y) {
  return dy * (T(1) - y) * y;
}
template <class T>
FRNN_HD T tanh_grad(T dy, T y) {
  return dy * (T(1) - y * y);
}
template <class T>
FRNN_HD T relu_grad(T dy, T y) {
  return y <= T(0) ? T(0) : dy;  // torch's threshold_backward: NaN y passes dy
}

// ----------------------------------------------------------------------------------------
// LSTM
template <class T>
struct LstmGates {
  T i, f, g, o;  // activated: sigmoid, sigmoid, tanh, sigmoid
};

template <class T>
FRNN_HD LstmGates<T> lstm_activate(T pre_i, T pre_f, T pre_g, T pre_o) {
  return LstmGates<T>{sigmoid(pre_i), sigmoid(pre_f), frnn_tanh(pre_g), sigmoid(pre_o)};
}
template <class T>
FRNN_HD T lstm_c_tilde(const LstmGates<T>& a, T c_prev) {
  return a.f * c_prev + a.i * a.g;
}
// h~ from the (possibly normalised) cell value c_out.
template <class T>
FRNN_HD T lstm_h_tilde(const LstmGates<T>& a, T c_out) {
  return a.o * frnn_tanh(c_out);
}

// Backward through h~ = o tanh(c_out): returns d(pre_o) and writes d(c_out).
template <class T>
FRNN_HD T lstm_backward_h(const LstmGates<T>& a, T c_out, T dh_tilde, T* dc_out) {
  const T tc = frnn_tanh(c_out);
  *dc_out = tanh_grad(dh_tilde * a.o, tc);
  return sigmoid_grad(dh_tilde * tc, a.o);
}

// Backward through c~ = f c_prev + i g given d(c~): pre-activation gradients and d(c_prev).
template <class T>
struct LstmGateGrads {
  T i, f, g;
  T c_prev;
};
template <class T>
FRNN_HD LstmGateGrads<T> lstm_backward_c(const LstmGates<T>& a, T c_prev, T dc_tilde) {
  LstmGateGrads<T> d;
  d.i = sigmoid_grad(dc_tilde * a.g, a.i);
  d.f = sigmoid_grad(dc_tilde * c_prev, a.f);
  d.g = tanh_grad(dc_tilde * a.i, a.g);
  d.c_prev = dc_tilde * a.f;
  return d;
}

// ----------------------------------------------------------------------------------------
// GRU (a_* already hold N_hh(W_hh h) + b_hh)
template <class T>
struct GruGates {
  T r, z, n;  // activated
};
template <class T>
FRNN_HD GruGates<T> gru_activate(T x_r, T x_z, T x_n, T a_r, T a_z, T a_n) {
  GruGates<T> g;
  g.r = sigmoid(x_r + a_r);
  g.z = sigmoid(x_z + a_z);
  g.n = frnn_tanh(x_n + g.r * a_n);
  return g;
}
template <class T>
FRNN_HD T gru_h_tilde(const GruGates<T>& g, T h_prev) {
  return (T(1) - g.z) * g.n + g.z * h_prev;
}
template <class T>
struct GruGrads {
  T x_r, x_z, x_n;  // d of the input-gate pre-activations (= dxg)
  T a_n;            // d of a_n (= dxg_n * r); d a_r = x_r, d a_z = x_z
  T h_prev;         // direct d(h_prev) through z h_prev
};
template <class T>
FRNN_HD GruGrads<T> gru_backward(const GruGates<T>& g, T a_n, T h_prev, T dh_tilde) {
  GruGrads<T> d;
  const T dn = tanh_grad(dh_tilde * (T(1) - g.z), g.n);
  d.x_n = dn;
  d.a_n = dn * g.r;
  d.x_r = sigmoid_grad(dn * a_n, g.r);
  d.x_z = sigmoid_grad(dh_tilde * (h_prev - g.n), g.z);
  d.h_prev = dh_tilde * g.z;
  return d;
}

// ----------------------------------------------------------------------------------------
// Vanilla RNN
template <class T>
FRNN_HD T rnn_activate(int cell, T pre) {
  return cell == kCellRnnRelu ? relu(pre) : frnn_tanh(pre);
}
template <class T>
FRNN_HD T rnn_backward(int cell, T y, T dy) {
  return cell == kCellRnnRelu ? relu_grad(dy, y) : tanh_grad(dy, y);
}

// ----------------------------------------------------------------------------------------
// Zoneout: d prev + (1 - d) next with d the draw (zoned = 1) in training, p in eval. The
// product form, not a select, so a NaN or inf in either value spreads as in the reference.
template <class T>
struct Zoneout {
  bool on = false;        // p > 0
  bool training = false;  // draws vs expectation
  T p = T(0);             // eval: weight of the previous value
  T q = T(1);             // eval: 1 - p (computed in double, as the reference does)
  float threshold = 0.f;  // training: zoned out when uniform < threshold (float32 p)
};

// Weights (d of prev, 1 - d of next) of the mix; exact 0/1 in training.
template <class T>
FRNN_HD void zoneout_weights(const Zoneout<T>& z, bool zoned, T* d_prev, T* d_next) {
  if (z.training) {
    *d_prev = zoned ? T(1) : T(0);
    *d_next = zoned ? T(0) : T(1);
  } else {
    *d_prev = z.p;
    *d_next = z.q;
  }
}
// The mix and its backward given the weights: T may be a vector of lanes, each with its own
// weights (the host's vectorised cell, csrc/host/cell_host.cpp).
template <class T>
FRNN_HD T zoneout_mix(T d_prev, T d_next, T prev, T next) {
  return d_prev * prev + d_next * next;
}
template <class T>
FRNN_HD T zoneout_split(T w_prev, T w_next, T d_state, T* d_prev) {
  *d_prev = w_prev * d_state;
  return w_next * d_state;
}
template <class T>
FRNN_HD T zoneout_forward(const Zoneout<T>& z, bool zoned, T prev, T next) {
  if (!z.on) return next;
  T d_prev, d_next;
  zoneout_weights(z, zoned, &d_prev, &d_next);
  return zoneout_mix(d_prev, d_next, prev, next);
}
// Splits d(state) into the part for the previous value and the part for the new value.
template <class T>
FRNN_HD T zoneout_backward(const Zoneout<T>& z, bool zoned, T d_state, T* d_prev) {
  if (!z.on) {
    *d_prev = T(0);
    return d_state;
  }
  T w_prev, w_next;
  zoneout_weights(z, zoned, &w_prev, &w_next);
  return zoneout_split(w_prev, w_next, d_state, d_prev);
}

// ----------------------------------------------------------------------------------------
// Normalisation helpers (recurrent batch norm and layer norm).
template <class T>
FRNN_HD T norm_rstd(T var) {
  return T(1) / frnn_sqrt(var + T(kNormEps));
}

// Partial statistics of a set of values, merged with Chan et al.'s pairwise formula so that
// blocks (CUDA) or threads (host) can combine their slices deterministically.
template <class T>
struct MeanM2 {
  T n;     // count
  T mean;  // mean of the values
  T m2;    // sum of squared deviations from mean
};
template <class T>
FRNN_HD MeanM2<T> mean_m2_merge(MeanM2<T> a, MeanM2<T> b) {
  if (a.n == T(0)) return b;
  if (b.n == T(0)) return a;
  const T n = a.n + b.n;
  const T delta = b.mean - a.mean;
  MeanM2<T> r;
  r.n = n;
  r.mean = a.mean + delta * (b.n / n);
  r.m2 = a.m2 + b.m2 + delta * delta * (a.n * b.n / n);
  return r;
}

// Backward of y = xhat * gamma with xhat = (x - mean) * rstd and batch (or row) statistics
// over `count` values, centred as the reference's autograd is (docs/design.md §3.3):
//   dx = rstd * (dxhat - mean(dxhat) - (xhat - mean(xhat)) * mean(dxhat * xhat)),
// dxhat = dy * gamma, means over the `count` values. mean(xhat) is 0 in exact arithmetic, but
// the saved float32 xhat carries the forward's rounding of the mean times rstd (large where
// var ~ eps); without it that error enters dx unprojected. Evaluated as
// rstd * (dxhat - shift - xhat * mean(dxhat * xhat)), shift = norm_backward_shift(...) once
// per column (batch norm) or row (layer norm).
template <class T>
FRNN_HD T norm_backward_shift(T mean_dxhat, T mean_dxhat_xhat, T mean_xhat) {
  return mean_dxhat - mean_xhat * mean_dxhat_xhat;
}
template <class T>
FRNN_HD T norm_backward(T dxhat, T xhat, T rstd, T shift, T mean_dxhat_xhat) {
  return rstd * (dxhat - shift - xhat * mean_dxhat_xhat);
}

// ----------------------------------------------------------------------------------------
// Masks
template <class T>
FRNN_HD T dropout_scale(float uniform, float p, T keep_scale) {
  return uniform >= p ? keep_scale : T(0);
}

}  // namespace fusedrnn
