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

// The first k <= L bfloat16 values at p, widened (exact); L floats rounded to bfloat16 (round
// to nearest even, NaN stays NaN: gemm_bf16.h's bf16_bits per lane), the first k stored.
template <int L>
FRNN_ALWAYS_INLINE Lanes<L> ld_bf16(const uint16_t* p, int64_t k) {
  typedef uint16_t Half __attribute__((vector_size(2 * L)));
  Half v;
  if (k == L) {
    std::memcpy(&v, p, sizeof v);
  } else {
    v = Half{};
    std::memcpy(&v, p, sizeof(uint16_t) * static_cast<size_t>(k));
  }
  return Lanes<L>((simd::VecF<L>)(__builtin_convertvector(v, simd::VecU<L>) << 16));
}
template <int L>
FRNN_ALWAYS_INLINE void st_bf16(uint16_t* p, Lanes<L> x, int64_t k) {
  typedef uint16_t Half __attribute__((vector_size(2 * L)));
  using U = simd::VecU<L>;
  const U u = (U)x.v;
  const U rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const U nan = (U)((u & 0x7fffffffu) > 0x7f800000u);  // all ones where NaN
  const Half v = __builtin_convertvector((nan & ((u >> 16) | 0x0040u)) | (~nan & rounded), Half);
  if (k == L) {
    std::memcpy(p, &v, sizeof v);
  } else {
    std::memcpy(p, &v, sizeof(uint16_t) * static_cast<size_t>(k));
  }
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

// Bf16Io: xg and the output in bfloat16 (q.xg_bf16, q.out_bf16).
template <int L, bool Bf16Io>
FRNN_ALWAYS_INLINE void cell_forward_body(const CellForwardArgs& q) {
  using V = Lanes<L>;
  const bool lstm = q.cell == kCellLstm;
  const int64_t n = q.n, H = q.H, G = lstm ? 4 : 3;
  for (int64_t b = 0; b < q.B; ++b) {
    const bool act = active(q.len, q.t, q.T, b);
    const float* ab = q.a + b * G * n;
    const float* x = Bf16Io ? nullptr : q.xg + b * q.xg_ld;
    const uint16_t* x_bf16 = Bf16Io ? q.xg_bf16 + b * q.xg_ld : nullptr;
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
      // (always_inline: a lambda does not inherit the kernel's target, so one left out of line
      // would return its 64-byte vector under the baseline ABI, in memory: a crash.)
      auto rec = [&](int64_t g) __attribute__((always_inline)) {
        const V v = ld<L>(ab + g * n + k0, k);
        return q.bias != nullptr ? v + ld<L>(q.bias + g * H + k0, k) : v;
      };
      auto xin = [&](int64_t g) __attribute__((always_inline)) {
        if constexpr (Bf16Io) {
          if (q.xg_next_step != 0) __builtin_prefetch(x_bf16 + q.xg_next_step + g * H + k0);
          return ld_bf16<L>(x_bf16 + g * H + k0, k);
        }
        if (q.xg_next_step != 0) __builtin_prefetch(x + q.xg_next_step + g * H + k0);
        return ld<L>(x + g * H + k0, k);
      };
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
      if constexpr (Bf16Io) {
        st_bf16<L>(q.out_bf16 + b * q.out_ld + k0, act ? h_zo : V(0.0f), k);
      } else {
        st<L>(q.out + b * q.out_ld + k0, act ? h_zo : V(0.0f), k);
      }
      if (q.hin_bf16 != nullptr) {
        st_bf16<L>(q.hin_bf16 + b * q.hin_bf16_ld + k0, ld<L>(mh + k0, k) * h_new, k);
      } else {
        st<L>(q.hin + b * q.h_ld + k0, ld<L>(mh + k0, k) * h_new, k);
      }
    };
    int64_t k0 = 0;
    for (; k0 + L <= n; k0 += L) units(k0, std::integral_constant<int64_t, L>{});
    if (k0 < n) units(k0, n - k0);
  }
}

// Bf16Io: d(out) and d xg in bfloat16 (q.grad_out_bf16, q.dxg_bf16).
template <int L, bool Bf16Io>
FRNN_ALWAYS_INLINE void cell_backward_body(const CellBackwardArgs& q) {
  using V = Lanes<L>;
  const bool lstm = q.cell == kCellLstm;
  const int64_t n = q.n, H = q.H, G = lstm ? 4 : 3;
  for (int64_t b = 0; b < q.B; ++b) {
    const bool act = active(q.len, q.t, q.T, b);
    const bool prev_act = q.has_prev && active(q.len, q.tp, q.T, b);
    const float* hp = prev_act ? q.h_prev + b * q.h_prev_ld : q.h0 + b * q.h_ld;
    const float* gs = q.gates + b * G * H;
    const float* gout = Bf16Io ? nullptr : q.grad_out + b * q.grad_out_ld;
    const uint16_t* gout_bf16 = Bf16Io ? q.grad_out_bf16 + b * q.grad_out_ld : nullptr;
    const uint8_t* zc_row = q.zc_rows != nullptr ? q.zc_rows + b * n : nullptr;
    const uint8_t* zh_row = q.zh_rows != nullptr ? q.zh_rows + b * n : nullptr;
    float* dxg = Bf16Io ? nullptr : q.dxg + b * G * H;
    uint16_t* dxg_bf16 = Bf16Io ? q.dxg_bf16 + b * G * H : nullptr;
    uint16_t* dab_bf16 = q.dab_bf16 != nullptr ? q.dab_bf16 + b * G * H : nullptr;
    float* dab = q.dab + b * G * H;
    const int64_t e0 = b * n;
    for (int64_t k0 = 0; k0 < n; k0 += L) {
      const int64_t k = n - k0 < L ? n - k0 : L;
      auto write_gate = [&](int64_t g, V d_ab, V d_xg) __attribute__((always_inline)) {
        if constexpr (Bf16Io) {
          st_bf16<L>(dxg_bf16 + g * H + k0, d_xg, k);
        } else {
          st<L>(dxg + g * H + k0, d_xg, k);
        }
        st<L>(dab + g * H + k0, d_ab, k);
        if (dab_bf16 != nullptr) st_bf16<L>(dab_bf16 + g * H + k0, d_ab, k);
      };
      const V h_prev = ld<L>(hp + k0, k);
      if (q.hin_bf16 != nullptr) {
        st_bf16<L>(q.hin_bf16 + b * q.h_ld + k0, ld<L>(q.mh + e0 + k0, k) * h_prev, k);
      } else {
        st<L>(q.hin + b * q.h_ld + k0, ld<L>(q.mh + e0 + k0, k) * h_prev, k);
      }
      const V dh = ld<L>(q.dh + e0 + k0, k);
      V gout_k;
      if constexpr (Bf16Io) {
        gout_k = ld_bf16<L>(gout_bf16 + k0, k);
      } else {
        gout_k = ld<L>(gout + k0, k);
      }
      const V dnew = act ? dh + gout_k : V(0.0f);
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
  if (q.xg_bf16 != nullptr) return cell_forward_body<8, true>(q);
  cell_forward_body<8, false>(q);
}
FRNN_ALWAYS_INLINE void cell_forward_f32_v4_body(const CellForwardArgs& q) {
  if (q.xg_bf16 != nullptr) return cell_forward_body<16, true>(q);
  cell_forward_body<16, false>(q);
}
FRNN_ALWAYS_INLINE void cell_backward_f32_body(const CellBackwardArgs& q) {
  if (q.dxg_bf16 != nullptr) return cell_backward_body<8, true>(q);
  cell_backward_body<8, false>(q);
}
FRNN_ALWAYS_INLINE void cell_backward_f32_v4_body(const CellBackwardArgs& q) {
  if (q.dxg_bf16 != nullptr) return cell_backward_body<16, true>(q);
  cell_backward_body<16, false>(q);
}

FRNN_DISPATCH_SPLIT(void, cell_forward_f32, (const CellForwardArgs& q), (q))
FRNN_DISPATCH_SPLIT(void, cell_backward_f32, (const CellBackwardArgs& q), (q))

}  // namespace

void cell_forward_rows(const CellForwardArgs& q) { cell_forward_f32(q); }
void cell_backward_rows(const CellBackwardArgs& q) { cell_backward_f32(q); }

}  // namespace host
}  // namespace fusedrnn
