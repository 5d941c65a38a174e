"""Fused softmax cross-entropy rows: logsumexp, loss and gradient in one parallel kernel.

One row ``x`` (logits, or a margin loss's scaled cosines ``s c`` with the target entry replaced by
``s psi(c_y)``), its label ``y``, class weights ``w`` and label smoothing ``eps``; the per-row mass
is ``a_c = w_c (cold + [c = y] hx)`` with ``cold = eps / C`` and ``hx = (1 - eps + eps / C) - cold``.
The pieces are refloss.xp's compensated logsumexp (``_shifted_parts``): ``m`` the row maximum,
``s_c + k_c = x_c - m`` exactly (``s_c`` rounded, ``k_c`` its TwoSum error), ``e_c = exp(s_c)(1 + k_c)``,
``rest = sum_c e_c - 1`` summed as ``sum_{e_c < 1} e_c + (#{e_c = 1} - 1)`` (the maxima's ones apart, so
that a tiny ``rest`` keeps its relative precision), ``L = log1p(rest)``, ``p_c = e_c / (1 + rest)``::

    loss = hx w_y (L - s_y - k_y) + cold (W L + sum_c w_c (-s_c - k_c))     (W = sum_c w_c; 0 w (-inf) = 0)
    grad_c = cot ((A - a_c) p_c - a_c (1 - p_c))                            (A = sum_c a_c)

the gradient in classification.py's cancellation-free form: ``1 - p_y = (rest - (e_y - 1)) / (1 + rest)``
(``e_y - 1`` from ``expm1``), ``1 - p`` of the row's unique maximum ``rest / (1 + rest)``, and ``A - a_c``
summed from non-negative terms (``W - w_b`` of a class holding more than half the weight given
directly). Without smoothing that is ``grad_c = cot w_y p_c``, ``grad_y = -cot w_y (1 - p_y)``. Each
gradient row is then multiplied by ``out_scale`` and its target entry by ``slope`` (the margin
losses' ``s`` and ``psi'``).

Passes over a row (which stays in L2 between them): integer order keys give the maximum (and find
NaN) in a vectorized reduction (a float maximum does not vectorize without fastmath); ``e`` is
written into the gradient row (shifts below ``-far``, where ``e`` is 0, stand in as ``-far``: no
infinity reaches the TwoSum); 64 float64 lanes sum ``rest`` (a fixed order, pairwise over the lanes
at the end); the gradient pass rescales in place.
Everything up to ``e`` is in the input dtype, as the portable code; sums, ``L`` and the scale factors
in float64. Rows are independent and the loop over them is ``prange``: the result does not depend on
the thread count. Non-finite rows (a NaN, a ``+inf``, all ``-inf``) give NaN loss and gradient,
ignored rows 0 loss and ``cot * 0`` gradient (NaN where the row is not finite), as the portable code.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._math import key, unkey, vexp, vexp_near

LANES = 64


@njit(error_model="numpy")
def _fold(acc):
    """Sum of the lanes, pairwise in a fixed order."""
    w = LANES // 2
    while w >= 1:
        for j in range(w):
            acc[j] = acc[j] + acc[j + w]
        w //= 2
    return acc[0]


_FAR32, _FAR64 = 128.0, 1024.0  # exp(-far) is 0 in float32, float64



@njit(error_model="numpy")
def _shift(x, m):
    """``(s, k)``: ``s = fl(x - m)`` and ``k = (x - m) - s`` exactly (Knuth's TwoSum, in x's dtype);
    ``k = 0`` where ``s`` is not finite (an entry at ``-inf``), as refloss.xp.two_sum."""
    s = x - m
    fin = (s - s) == 0
    zero = m - m  # m is finite here
    a = x if fin else zero
    b = -m if fin else zero
    s0 = a + b
    bb = s0 - a
    return s, (a - (s0 - bb)) + (b - bb)


@njit(error_model="numpy")
def _shift_exp(x, m, far):
    """:func:`_shift` where only ``exp(s)(1 + k)`` matters: below ``-far`` (an entry at ``-inf`` among
    them) that is 0, and ``(-far, 0)`` stands in for the shift (whose error term may be NaN there)."""
    s = x - m
    bb = s - x
    k = (x - (s - bb)) + (-m - bb)
    near = s > -far
    return (s if near else -far), (k if near else m - m)


@njit(cache=True, parallel=True, error_model="numpy")
def softmax_ce(z, target, keep, weight, total_w, heavy, heavy_rest, cold, hx, cot, out_scale, slope, want_grad, loss, grad):
    """Rows of logits ``z`` (``N x C``, C-contiguous float32 or float64): per-row loss into ``loss``
    and, with ``want_grad``, the gradient into ``grad`` (same shape and dtype as ``z``).

    ``weight`` (float64, C), ``total_w = sum w``; ``heavy`` is a class with more than half the weight
    (-1 if none) and ``heavy_rest`` the sum of the others.
    """
    n, classes = z.shape
    inf = z.dtype.type(np.inf)
    far = z.dtype.type(_FAR32 if z.itemsize == 4 else _FAR64)
    k_pinf, k_ninf = key(inf), key(-inf)
    smooth = cold > 0.0
    for i in prange(n):
        zi = z[i]
        y = target[i]
        ty = zi[y]
        # pass 1: maximum (and NaN) through integer order keys
        kmax = k_ninf
        kmin = k_pinf
        for c in range(classes):
            kc = key(zi[c])
            kmax = kc if kc > kmax else kmax
            kmin = kc if kc < kmin else kmin
        finite = kmax < k_pinf and kmax > k_ninf and kmin >= k_ninf
        ci = cot[i]
        if not finite or not keep[i]:
            loss[i] = 0.0 if not keep[i] else math.nan
            if want_grad:
                g = ci * 0.0 if finite else math.nan
                for c in range(classes):
                    grad[i, c] = g
            continue
        m = unkey(kmax, zi[0])
        # pass 2: e = exp(s)(1 + k) into the gradient row (or scratch)
        ebuf = grad[i] if want_grad else np.empty(classes, z.dtype)
        for c in range(classes):
            sc, kc = _shift_exp(zi[c], m, far)
            e0 = vexp_near(sc)
            ebuf[c] = e0 + e0 * kc
        # rest = sum(e) - 1 with the entries equal to 1 (the maxima, and any that round to it) counted
        # apart: log1p(rest) keeps its relative precision when rest is tiny
        acc = np.zeros(LANES)
        cnt = np.zeros(LANES)
        blocks = classes // LANES
        for b in range(blocks):
            for j in range(LANES):
                e = np.float64(ebuf[b * LANES + j])
                one = e == 1.0
                acc[j] += 0.0 if one else e
                cnt[j] += 1.0 if one else 0.0
        for c in range(blocks * LANES, classes):
            e = np.float64(ebuf[c])
            one = e == 1.0
            acc[0] += 0.0 if one else e
            cnt[0] += 1.0 if one else 0.0
        ones = _fold(cnt)
        rest = _fold(acc) + (ones - 1)
        big_l = math.log1p(rest)
        sy, ky = _shift(ty, m)
        wy = weight[y]
        # loss: each product of non-negative factors, w (-inf) = 0 where w = 0
        hot_term = 0.0 if wy == 0.0 else -(hx * wy * ((np.float64(sy) - big_l) + np.float64(ky)))
        if smooth:
            wacc = np.zeros(LANES)
            for c in range(classes):
                wc = weight[c]
                sc, kc = _shift(zi[c], m)
                wacc[c % LANES] += 0.0 if wc == 0.0 else wc * -(np.float64(sc) + np.float64(kc))
            hot_term = hot_term + cold * (total_w * big_l + _fold(wacc))
        loss[i] = hot_term
        if not want_grad:
            continue
        d = 1.0 + rest
        e0y = vexp(sy)
        ey = np.float64(e0y + e0y * ky)
        em1_y = 0.0 if sy == 0 else math.expm1(np.float64(sy)) + np.float64(e0y) * np.float64(ky)
        comp_y = (rest - em1_y) / d  # 1 - p_y without cancellation
        gi = grad[i]
        if not smooth:
            q = out_scale * (ci * (wy / d))
            for c in range(classes):
                gi[c] = np.float64(gi[c]) * q
        else:
            others_y = wy * hx  # (A - a_c) = cold (W - w_c) + hx w_y for c != y
            for c in range(classes):
                pc = np.float64(gi[c]) / d
                wc = weight[c]
                rest_c = cold * (total_w - wc) + others_y
                gi[c] = out_scale * (ci * (rest_c * pc - (cold * wc) * (1.0 - pc)))
            if heavy >= 0 and heavy != y:
                sh, kh = _shift(zi[heavy], m)
                eh = vexp(sh)
                pc = np.float64(eh + eh * kh) / d
                wc = weight[heavy]
                gi[heavy] = out_scale * (ci * ((cold * heavy_rest + others_y) * pc - (cold * wc) * (1.0 - pc)))
            if ones == 1:
                # the unique maximum (p > 1/2 possible): 1 - p = rest / (1 + rest)
                for c in range(classes):
                    if c != y and zi[c] == m:
                        wc = weight[c]
                        w_rest = heavy_rest if c == heavy else total_w - wc
                        gi[c] = out_scale * (ci * ((cold * w_rest + others_y) / d - (cold * wc) * (rest / d)))
                        break
        # the target entry: (A - a_y) p_y - a_y (1 - p_y), times the slope of the target logit
        a_y = wy * (cold + hx)
        w_rest_y = heavy_rest if y == heavy else total_w - wy
        gy = ci * ((cold * w_rest_y) * (ey / d) - a_y * comp_y)
        gi[y] = out_scale * (gy * slope[i])
