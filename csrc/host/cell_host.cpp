// The host's vectorised cell (cell_host.h): cells.cuh's templates on Lanes<L>, a vector of L
// floats with the arithmetic operators, and frnn_exp / frnn_tanh overloads (found by
// argument-dependent lookup from cells.cuh's sigmoid / lstm_activate / ...) that are
// simd_vec.h's functions. So the cell's math stays cells.cuh's, per lane; only the loads,
// stores and the choice of weights from the zoneout decisions are written here.
#include "cell_host.h"

#include <cstring>
#include <type_traits>

#include "multiversion.h"
#include "simd_vec.h"

namespace fusedrnn {
namespace host {
namespace {

template <int L>
struct Lanes {
  simd::VecF<L> v;
  Lanes() = default;
  Lanes(float s) : v(simd::splat<L>(s)) {}  // NOLINT: cells.cuh's T(0), T(1)
  explicit Lanes(simd::VecF<L> x) : v(x) {}
};
template <int L>
FRNN_ALWAYS_INLINE Lanes<L> operator+(Lanes<L> a, Lanes<L> b) {
  return Lanes<L>(a.v + b.v);
}
template <int L>
FRNN_ALWAYS_INLINE Lanes<L> operator-(Lanes<L> a, Lanes<L> b) {
  return Lanes<L>(a.v - b.v);
}
template <int L>
FRNN_ALWAYS_INLINE Lanes<L> operator*(Lanes<L> a, Lanes<L> b) {
  return Lanes<L>(a.v * b.v);
}
template <int L>
FRNN_ALWAYS_INLINE Lanes<L> operator/(Lanes<L> a, Lanes<L> b) {
  return Lanes<L>(a.v / b.v);
}
template <int L>
FRNN_ALWAYS_INLINE Lanes<L> operator-(Lanes<L> a) {
  return Lanes<L>(-a.v);
}
template <int L>
FRNN_ALWAYS_INLINE Lanes<L>& operator+=(Lanes<L>& a, Lanes<L> b) {
  a.v += b.v;
  return a;
}
template <int L>
FRNN_ALWAYS_INLINE Lanes<L> frnn_exp(Lanes<L> x) {
  return Lanes<L>(simd::exp_vec<L>(x.v));
}
template <int L>
FRNN_ALWAYS_INLINE Lanes<L> frnn_tanh(Lanes<L> x) {
  return Lanes<L>(simd::tanh_vec<L>(x.v));
}

template <int L>
FRNN_ALWAYS_INLINE Lanes<L> ld(const float* p, int64_t k) {
  return Lanes<L>(simd::load<L>(p, k));
}
template <int L>
FRNN_ALWAYS_INLINE void st(float* p, Lanes<L> v, int64_t k) {
  simd::store<L>(p, v.v, k);
}

// zoneout_weights per lane: the draws' 1 / 0 (training) or p, 1 - p (eval).
template <int L>
FRNN_ALWAYS_INLINE void weights(const Zoneout<float>& z, const uint8_t* row, int64_t k,
                                Lanes<L>* d_prev, Lanes<L>* d_next) {
  if (z.training) {
    *d_prev = Lanes<L>(simd::load_bytes<L>(row, k));
    *d_next = Lanes<L>(1.0f) - *d_prev;
  } else {
    *d_prev = Lanes<L>(z.p);
    *d_next = Lanes<L>(z.q);
  }
}
template <int L>
FRNN_ALWAYS_INLINE Lanes<L> zoneout_fwd(const Zoneout<float>& z, const uint8_t* row, int64_t k,
                                        Lanes<L> prev, Lanes<L> next) {
  if (!z.on) return next;
  Lanes<L> dp, dn;
  weights<L>(z, row, k, &dp, &dn);
  return zoneout_mix(dp, dn, prev, next);
}
template <int L>
FRNN_ALWAYS_INLINE Lanes<L> zoneout_bwd(const Zoneout<float>& z, const uint8_t* row, int64_t k,
                                        Lanes<L> d_state, Lanes<L>* d_prev) {
  if (!z.on) {
    *d_prev = Lanes<L>(0.0f);
    return d_state;
  }
  Lanes<L> wp, wn;
  weights<L>(z, row, k, &wp, &wn);
  return zoneout_split(wp, wn, d_state, d_prev);
}

inline bool active(const int64_t* len, int64_t t, int64_t T, int64_t b) {
  return t < (len != nullptr ? len[b] : T);
}

template <int L>
FRNN_ALWAYS_INLINE void cell_forward_body(const CellForwardArgs& q) {
  using V = Lanes<L>;
  const bool lstm = q.cell == kCellLstm;
  const int64_t n = q.n, H = q.H, G = lstm ? 4 : 3;
  for (int64_t b = 0; b < q.B; ++b) {
    const bool act = active(q.len, q.t, q.T, b);
    const float* ab = q.a + b * G * n;
    const float* x = q.xg + b * q.xg_ld;
    float* c = q.c + b * n;
    float* h = q.h + b * n;
    const float* mh = q.mh + b * n;
    const uint8_t* zc_row = q.zc_rows != nullptr ? q.zc_rows + b * n : nullptr;
    const uint8_t* zh_row = q.zh_rows != nullptr ? q.zh_rows + b * n : nullptr;
    float* gates = q.gates != nullptr ? q.gates + b * G * H : nullptr;
    // The body once for whole vectors (k = L, a constant: loads and stores without the
    // partial-vector test) and once for the last n % L units.
    auto units = [&](int64_t k0, auto kk) __attribute__((always_inline)) {
      const int64_t k = kk;
      // W_hh h + b_hh of gate g (the phased form's a + b_hh, then xg + that).
      auto rec = [&](int64_t g) {
        const V v = ld<L>(ab + g * n + k0, k);
        return q.bias != nullptr ? v + ld<L>(q.bias + g * H + k0, k) : v;
      };
      auto xin = [&](int64_t g) { return ld<L>(x + g * H + k0, k); };
      const V h_prev = ld<L>(h + k0, k);
      V h_tilde;
      if (lstm) {
        const LstmGates<V> ga =
            lstm_activate(xin(0) + rec(0), xin(1) + rec(1), xin(2) + rec(2), xin(3) + rec(3));
        const V c_prev = ld<L>(c + k0, k);
        const V ctil = lstm_c_tilde(ga, c_prev);
        if (gates != nullptr) {
          st<L>(gates + k0, ga.i, k);
          st<L>(gates + H + k0, ga.f, k);
          st<L>(gates + 2 * H + k0, ga.g, k);
          st<L>(gates + 3 * H + k0, ga.o, k);
          st<L>(q.c_tilde + b * H + k0, ctil, k);
        }
        const V c_zo = zoneout_fwd<L>(q.zc, zc_row + k0, k, c_prev, ctil);
        const V c_new = act ? c_zo : c_prev;
        st<L>(c + k0, c_new, k);
        if (gates != nullptr) st<L>(q.c_state + b * H + k0, c_new, k);
        h_tilde = lstm_h_tilde(ga, ctil);
      } else {
        const V a_n = rec(2);
        const GruGates<V> ga = gru_activate(xin(0), xin(1), xin(2), rec(0), rec(1), a_n);
        if (gates != nullptr) {
          st<L>(gates + k0, ga.r, k);
          st<L>(gates + H + k0, ga.z, k);
          st<L>(gates + 2 * H + k0, ga.n, k);
          st<L>(q.gru_hn + b * H + k0, a_n, k);
        }
        h_tilde = gru_h_tilde(ga, h_prev);
      }
      const V h_zo = zoneout_fwd<L>(q.zh, zh_row + k0, k, h_prev, h_tilde);
      const V h_new = act ? h_zo : h_prev;
      st<L>(h + k0, h_new, k);
      if (q.h_state != nullptr) st<L>(q.h_state + b * q.h_ld + k0, h_new, k);
      st<L>(q.out + b * q.out_ld + k0, act ? h_zo : V(0.0f), k);
      st<L>(q.hin + b * q.h_ld + k0, ld<L>(mh + k0, k) * h_new, k);
    };
    int64_t k0 = 0;
    for (; k0 + L <= n; k0 += L) units(k0, std::integral_constant<int64_t, L>{});
    if (k0 < n) units(k0, n - k0);
  }
}

template <int L>
FRNN_ALWAYS_INLINE void cell_backward_body(const CellBackwardArgs& q) {
  using V = Lanes<L>;
  const bool lstm = q.cell == kCellLstm;
  const int64_t n = q.n, H = q.H, G = lstm ? 4 : 3;
  for (int64_t b = 0; b < q.B; ++b) {
    const bool act = active(q.len, q.t, q.T, b);
    const bool prev_act = q.has_prev && active(q.len, q.tp, q.T, b);
    const float* hp = prev_act ? q.h_prev + b * q.h_prev_ld : q.h0 + b * q.h_ld;
    const float* gs = q.gates + b * G * H;
    const float* gout = q.grad_out + b * q.grad_out_ld;
    const uint8_t* zc_row = q.zc_rows != nullptr ? q.zc_rows + b * n : nullptr;
    const uint8_t* zh_row = q.zh_rows != nullptr ? q.zh_rows + b * n : nullptr;
    float* dxg = q.dxg + b * G * H;
    float* dab = q.dab + b * G * H;
    const int64_t e0 = b * n;
    for (int64_t k0 = 0; k0 < n; k0 += L) {
      const int64_t k = n - k0 < L ? n - k0 : L;
      auto write_gate = [&](int64_t g, V d_ab, V d_xg) {
        st<L>(dxg + g * H + k0, d_xg, k);
        st<L>(dab + g * H + k0, d_ab, k);
      };
      const V h_prev = ld<L>(hp + k0, k);
      st<L>(q.hin + b * q.h_ld + k0, ld<L>(q.mh + e0 + k0, k) * h_prev, k);
      const V dh = ld<L>(q.dh + e0 + k0, k);
      const V dnew = act ? dh + ld<L>(gout + k0, k) : V(0.0f);
      V dprev;
      const V dhtil = zoneout_bwd<L>(q.zh, zh_row + k0, k, dnew, &dprev);
      V dh_prev = act ? dprev : dh;
      if (lstm) {
        const V dc = ld<L>(q.dc + e0 + k0, k);
        V dcp;
        const V dctil = zoneout_bwd<L>(q.zc, zc_row + k0, k, act ? dc : V(0.0f), &dcp);
        V dc_prev = act ? dcp : dc;
        const LstmGates<V> ga{ld<L>(gs + k0, k), ld<L>(gs + H + k0, k), ld<L>(gs + 2 * H + k0, k),
                              ld<L>(gs + 3 * H + k0, k)};
        V dco;
        const V dpo = lstm_backward_h(ga, ld<L>(q.c_tilde + b * H + k0, k), dhtil, &dco);
        write_gate(3, dpo, dpo);
        const V dct = dctil + dco;
        const LstmGateGrads<V> d =
            lstm_backward_c(ga, ld<L>(q.c_prev + b * H + k0, k), act ? dct : V(0.0f));
        write_gate(0, d.i, d.i);
        write_gate(1, d.f, d.f);
        write_gate(2, d.g, d.g);
        if (act) dc_prev += d.c_prev;
        st<L>(q.dc_prev + e0 + k0, dc_prev, k);
      } else {
        const GruGates<V> ga{ld<L>(gs + k0, k), ld<L>(gs + H + k0, k), ld<L>(gs + 2 * H + k0, k)};
        const GruGrads<V> d = gru_backward(ga, ld<L>(q.gru_hn + b * H + k0, k), h_prev,
                                           act ? dhtil : V(0.0f));
        write_gate(0, d.x_r, d.x_r);
        write_gate(1, d.x_z, d.x_z);
        write_gate(2, d.a_n, d.x_n);
        if (act) dh_prev += d.h_prev;
      }
      st<L>(q.dh_prev + e0 + k0, dh_prev, k);
    }
  }
}

FRNN_ALWAYS_INLINE void cell_forward_f32_body(const CellForwardArgs& q) {
  cell_forward_body<8>(q);
}
FRNN_ALWAYS_INLINE void cell_forward_f32_v4_body(const CellForwardArgs& q) {
  cell_forward_body<16>(q);
}
FRNN_ALWAYS_INLINE void cell_backward_f32_body(const CellBackwardArgs& q) {
  cell_backward_body<8>(q);
}
FRNN_ALWAYS_INLINE void cell_backward_f32_v4_body(const CellBackwardArgs& q) {
  cell_backward_body<16>(q);
}

FRNN_DISPATCH_SPLIT(void, cell_forward_f32, (const CellForwardArgs& q), (q))
FRNN_DISPATCH_SPLIT(void, cell_backward_f32, (const CellBackwardArgs& q), (q))

}  // namespace

void cell_forward_rows(const CellForwardArgs& q) { cell_forward_f32(q); }
void cell_backward_rows(const CellBackwardArgs& q) { cell_backward_f32(q); }

}  // namespace host
}  // namespace fusedrnn
