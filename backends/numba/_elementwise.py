"""Fused elementwise sigmoid losses: loss and gradient in one pass over the elements.

With ``e = exp(-|x|)`` and ``l = log1p(e)`` (both vectorizable, :mod:`._math`), everything else is
arithmetic on them, in the input dtype and in the portable code's order of operations::

    softplus(x) = max(x, 0) + l,   softplus(-x) = max(-x, 0) + l
    sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) for x < 0;   sigmoid(-x) likewise

``binary_cross_entropy_with_logits`` (``y`` smoothed as ``(1 - eps) y + eps / 2``)::

    l = w [xmul(pw y, softplus(-x)) + xmul(1 - y, softplus(x))]
    dl/dx = cot w [(1 - y) sigmoid(x) - pw y sigmoid(-x)],   dl/dy = cot w (1 - eps) [pw softplus(-x) - softplus(x)]

``sigmoid_focal_loss`` (``p = sigmoid(x)``, ``q = sigmoid(-x)``, ``gamma`` in {0, 1/2, 1, 2, 3})::

    l = xmul(a+ q^gamma y, softplus(-x)) + xmul(a- p^gamma (1 - y), softplus(x))
    dl/dx = cot [a- (1 - y) p^gamma (p + gamma xmul(q, softplus(x))) - a+ y q^gamma (q + gamma xmul(p, softplus(-x)))]

``xmul(a, b)`` is ``a b`` with ``0 * inf = 0`` (NaN still propagates), as refloss.xp.xmul. Elements
are independent, so the ``prange`` over them gives the same bits for any thread count.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from ._math import vexp, vlog1p_unit


@njit(inline="always", error_model="numpy")
def _xmul(a, b, zero):
    zero_case = b if b != b else zero  # 0 * b: 0, NaN passes
    return a * b if a != zero else zero_case


@njit(inline="always", error_model="numpy")
def _parts(x, zero, one):
    """``(softplus(x), softplus(-x), sigmoid(x), sigmoid(-x))`` in ``x``'s dtype (``zero``, ``one`` of it)."""
    ax = abs(x)
    e = vexp(-ax)
    lg = vlog1p_unit(e)
    sp_pos = (x if x > zero else zero) + lg
    sp_neg = (-x if -x > zero else zero) + lg
    d = one + e
    hi = one / d
    lo = e / d
    sig_pos = hi if x >= zero else lo
    sig_neg = hi if -x >= zero else lo
    return sp_pos, sp_neg, sig_pos, sig_neg


# The kernels are built per combination of the flags a call fixes (weights present, one cotangent for
# every element, gradient wanted, focal exponent): a flag tested inside the loop would be a
# conditional load (of a length-1 dummy) that LLVM cannot vectorize. The flags are closure constants,
# which Numba folds at compile time and keys its on-disk cache on; each variant compiles once.


@functools.lru_cache(maxsize=None)
def bce_with_logits(has_w, has_pw, uniform_cot, want_grad):
    """The BCE-with-logits kernel for these flags: ``(x, y, w, pw, keep_hi, eps_half, one_minus_eps,
    cot, loss, dx, dy)`` with flat, equally long arrays (``w``, ``pw`` materialised broadcasts, or
    length-1 dummies; ``cot`` one value when ``uniform_cot``); the scalars are the input dtype's values
    of ``1 - eps`` and ``eps / 2`` (0 and 1 without smoothing, which leave ``y`` as it is)."""

    @njit(cache=True, parallel=True, error_model="numpy")
    def kernel(x, y, w, pw, keep_hi, eps_half, one_minus_eps, cot, loss, dx, dy):
        t = x.dtype.type
        zero, one = t(0.0), t(1.0)
        keep_hi, eps_half, one_minus_eps = t(keep_hi), t(eps_half), t(one_minus_eps)
        cot0 = t(cot[0])
        for i in prange(x.size):
            xi = x[i]
            yi = keep_hi * y[i] + eps_half
            pwi = pw[i] if has_pw else one
            sp_pos, sp_neg, sig_pos, sig_neg = _parts(xi, zero, one)
            term = _xmul(pwi * yi, sp_neg, zero) + _xmul(one - yi, sp_pos, zero)
            wi = w[i] if has_w else one
            loss[i] = wi * term if has_w else term
            if want_grad:
                g = (cot0 if uniform_cot else t(cot[i])) * wi
                dx[i] = g * (-pwi * yi * sig_neg + (one - yi) * sig_pos)
                dy[i] = (g * one_minus_eps) * (pwi * sp_neg - sp_pos)

    return kernel


@njit(inline="always", error_model="numpy")
def _power(v, mode, one):
    """``v^gamma`` for the supported exponents: mode 0, 1, 2, 3 = gamma; 4 = one half."""
    if mode == 0:
        return one
    if mode == 1:
        return v
    if mode == 2:
        return v * v
    if mode == 3:
        return v * v * v
    return np.sqrt(v)


@functools.lru_cache(maxsize=None)
def sigmoid_focal(mode, uniform_cot, want_grad):
    """The sigmoid-focal kernel for exponent ``mode`` (:func:`_power`) and these flags:
    ``(x, y, a_pos, a_neg, gamma, cot, loss, dx)``."""

    @njit(cache=True, parallel=True, error_model="numpy")
    def kernel(x, y, a_pos, a_neg, gamma, cot, loss, dx):
        t = x.dtype.type
        zero, one = t(0.0), t(1.0)
        a_pos, a_neg, gamma = t(a_pos), t(a_neg), t(gamma)
        cot0 = t(cot[0])
        for i in prange(x.size):
            xi = x[i]
            yi = y[i]
            sp_pos, sp_neg, p, q = _parts(xi, zero, one)
            qg = _power(q, mode, one)
            pg = _power(p, mode, one)
            loss[i] = _xmul(a_pos * qg * yi, sp_neg, zero) + _xmul(a_neg * pg * (one - yi), sp_pos, zero)
            if want_grad:
                pos = a_pos * yi * qg * (q + gamma * _xmul(p, sp_neg, zero))
                neg = a_neg * (one - yi) * pg * (p + gamma * _xmul(q, sp_pos, zero))
                dx[i] = (cot0 if uniform_cot else t(cot[i])) * (neg - pos)

    return kernel
