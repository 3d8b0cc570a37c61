"""The cell equations, forward and backward, each written once (float32 tiles in and out).

Notation of fusedrnn/reference_loop.py: ``x_*`` the input-projection part of a gate (a column of
``xg``), ``a_*`` the recurrent part ``N_hh(W_hh (m_h * h_{t-1})) + b_hh`` of the same gate,
``pre_* = x_* + a_*``, ``*_cand`` the candidate state before zoneout. Backward helpers take the
gradient of the cell's output and return gradients of the pre-activations; derivatives are
written in terms of the saved activations (sigmoid' = s (1 - s), tanh' = 1 - t^2).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .primitives import sigmoid, tanh


# ----------------------------------------------------------------------------------------
# LSTM, gates i, f, g, o. Split in two around the (optional) normalisation of c~:
#   c~ = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g);    h~ = sigmoid(o) tanh(N_c(c~))
# ----------------------------------------------------------------------------------------
@triton.jit
def lstm_cell_state(i, f, g, c_prev):
    """c~ from the activated gates (backward rebuilds it from the saved ones)."""
    return f * c_prev + i * g


@triton.jit
def lstm_candidate(pre_i, pre_f, pre_g, pre_o, c_prev):
    """Gate activations and the candidate cell state c~."""
    i = sigmoid(pre_i)
    f = sigmoid(pre_f)
    g = tanh(pre_g)
    o = sigmoid(pre_o)
    return i, f, g, o, lstm_cell_state(i, f, g, c_prev)


@triton.jit
def lstm_hidden(o, c_normed):
    """h~ = o tanh(N_c(c~)); also returns tanh(N_c(c~))."""
    tanh_c = tanh(c_normed)
    return o * tanh_c, tanh_c


@triton.jit
def lstm_hidden_backward(dh_cand, o, tanh_c):
    """From dL/dh~: dL/d pre_o and dL/d N_c(c~)."""
    d_pre_o = dh_cand * tanh_c * o * (1.0 - o)
    dc_normed = dh_cand * o * (1.0 - tanh_c * tanh_c)
    return d_pre_o, dc_normed


@triton.jit
def lstm_candidate_backward(dc_cand, i, f, g, c_prev):
    """From dL/dc~: dL/d pre_i, pre_f, pre_g and the c_{t-1} part f * dL/dc~."""
    d_pre_i = dc_cand * g * i * (1.0 - i)
    d_pre_f = dc_cand * c_prev * f * (1.0 - f)
    d_pre_g = dc_cand * i * (1.0 - g * g)
    return d_pre_i, d_pre_f, d_pre_g, dc_cand * f


# ----------------------------------------------------------------------------------------
# GRU, gates r, z, n (b_hn sits inside a_n, so inside r * (...)):
#   r = sigmoid(x_r + a_r);  z = sigmoid(x_z + a_z);  n = tanh(x_n + r a_n)
#   h~ = (1 - z) n + z h_{t-1}
# ----------------------------------------------------------------------------------------
@triton.jit
def gru_cell(x_r, x_z, x_n, a_r, a_z, a_n, h_prev):
    """Gate activations r, z, n and h~."""
    r = sigmoid(x_r + a_r)
    z = sigmoid(x_z + a_z)
    n = tanh(x_n + r * a_n)
    h_cand = (1.0 - z) * n + z * h_prev
    return r, z, n, h_cand


@triton.jit
def gru_cell_backward(dh_cand, r, z, n, a_n, h_prev):
    """From dL/dh~: gradients of the pre-activations r, z, n (= dL/dxg), of a_n (n's
    recurrent term, scaled by r), and the direct h_{t-1} part z * dL/dh~.

    dL/da_r = d pre_r and dL/da_z = d pre_z, so only a_n's gradient differs from xg's.
    """
    d_pre_n = dh_cand * (1.0 - z) * (1.0 - n * n)
    d_pre_z = dh_cand * (h_prev - n) * z * (1.0 - z)
    d_pre_r = d_pre_n * a_n * r * (1.0 - r)
    return d_pre_r, d_pre_z, d_pre_n, d_pre_n * r, dh_cand * z


# ----------------------------------------------------------------------------------------
# Vanilla RNN: h~ = tanh(pre) or relu(pre)
# ----------------------------------------------------------------------------------------
@triton.jit
def rnn_cell(pre, RELU: tl.constexpr):
    if RELU:
        h_cand = tl.where(pre <= 0.0, 0.0, pre)  # relu(NaN) = NaN, as torch
    else:
        h_cand = tanh(pre)
    return h_cand


@triton.jit
def rnn_cell_backward(dh_cand, h_cand, RELU: tl.constexpr):
    """dL/d pre from dL/dh~ and h~ itself (relu'(0) = 0, and a NaN h~ passes dL/dh~ as in
    torch's threshold_backward)."""
    if RELU:
        d_pre = tl.where(h_cand <= 0.0, 0.0, dh_cand)
    else:
        d_pre = dh_cand * (1.0 - h_cand * h_cand)
    return d_pre
