"""Triplet margin loss rows (Euclidean distances, float32 inputs, float64 arithmetic).

Per row, with ``v = x1 - x2 (+ eps)`` (``eps_placement='difference'``, PyTorch) and ``d = sqrt(|v|^2
(+ eps))`` (``'sum'``, optax): ``l = max(d(a, p) - d_n + margin, 0)``, ``d_n = d(a, n)`` (``swap``: the
smaller of ``d(a, n)``, ``d(p, n)``), and with ``u = v / d`` (0 where ``d = 0``) and ``g = cot [l's
argument >= 0]``: ``dl/da = g (u_ap - w_an u_an)``, ``dl/dp = -g (u_ap + w_pn u_pn)``, ``dl/dn = g (w_an
u_an + w_pn u_pn)`` (``w_an = 1, w_pn = 0``, or the swap's choice) -- refloss.losses.embedding's
definition. Differences of float32 inputs are exact in float64 and the rest is a few float64
roundings, far below a float32 ulp, except where the loss cancels: an argument within ``2^-20`` of
the distances, nearly parallel ``u_ap``, ``u_an`` (or ``u_ap``, ``-u_pn`` under swap: a difference below
``2^-20``), a near tie of the swap, or a non-finite row. Those rows are flagged (``risky``) and recomputed by the portable code in
float64 (double-double there, backends/numba/_adapters.py): every row is within an ulp of the
float32 rounding of the portable float64 answer.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._math import f64_as_i64, i64_as_f64

_RISK = 2.0**-20
_LANES = 16


@njit(cache=True, parallel=True, error_model="numpy")
def triplet_rows(a, p, n, margin, eps_diff, eps_sum, swap, cot, want_grad, loss, ga, gp, gn, risky):
    rows, dims = a.shape
    blocks = dims // _LANES
    for i in prange(rows):
        # squared norms in _LANES float64 lanes each (a float sum does not vectorize otherwise)
        acc = np.zeros((3, _LANES))
        for b in range(blocks):
            for j in range(_LANES):
                k = b * _LANES + j
                ak, pk, nk = np.float64(a[i, k]), np.float64(p[i, k]), np.float64(n[i, k])
                v_ap = (ak - pk) + eps_diff
                v_an = (ak - nk) + eps_diff
                v_pn = (pk - nk) + eps_diff
                acc[0, j] += v_ap * v_ap
                acc[1, j] += v_an * v_an
                acc[2, j] += v_pn * v_pn
        for k in range(blocks * _LANES, dims):
            ak, pk, nk = np.float64(a[i, k]), np.float64(p[i, k]), np.float64(n[i, k])
            v_ap = (ak - pk) + eps_diff
            v_an = (ak - nk) + eps_diff
            v_pn = (pk - nk) + eps_diff
            acc[0, 0] += v_ap * v_ap
            acc[1, 0] += v_an * v_an
            acc[2, 0] += v_pn * v_pn
        s_ap = np.sum(acc[0])
        s_an = np.sum(acc[1])
        s_pn = np.sum(acc[2])
        d_ap = math.sqrt(s_ap + eps_sum)
        d_an = math.sqrt(s_an + eps_sum)
        d_pn = math.sqrt(s_pn + eps_sum)
        w_an = 1.0
        if swap:
            w_an = 1.0 if d_an < d_pn else (0.5 if d_an == d_pn else 0.0)
        d_n = d_an if w_an > 0.0 else d_pn
        arg = (d_ap - d_n) + margin
        scale = d_ap + d_n + abs(margin)
        bad = not (abs(arg) > _RISK * scale) or not (scale < math.inf)
        if swap and abs(d_an - d_pn) <= _RISK * (d_an + d_pn):
            bad = True
        loss[i] = 0.0 if arg < 0.0 else arg
        if not want_grad:
            risky[i] = bad
            continue
        g = cot[i] * (1.0 if arg >= 0.0 else 0.0)
        i_ap = 1.0 / d_ap if d_ap > 0.0 else 0.0
        i_an = 1.0 / d_an if d_an > 0.0 else 0.0
        i_pn = 1.0 / d_pn if d_pn > 0.0 else 0.0
        w_pn = 1.0 - w_an
        # the largest |u_ap - u_an| component (small where the two nearly cancel), and likewise
        # |u_ap + u_pn| (where swap picks d(p, n)): as integer maxima of the (non-negative) bits
        near_bits = 0
        near_pn_bits = 0
        for k in range(dims):
            ak, pk, nk = np.float64(a[i, k]), np.float64(p[i, k]), np.float64(n[i, k])
            u_ap = ((ak - pk) + eps_diff) * i_ap
            u_an = ((ak - nk) + eps_diff) * i_an
            u_pn = ((pk - nk) + eps_diff) * i_pn
            diff = f64_as_i64(abs(u_ap - u_an))
            near_bits = diff if diff > near_bits else near_bits
            both = f64_as_i64(abs(u_ap + u_pn))
            near_pn_bits = both if both > near_pn_bits else near_pn_bits
            ga[i, k] = g * (u_ap - w_an * u_an)
            gp[i, k] = -g * (u_ap + w_pn * u_pn)
            gn[i, k] = g * (w_an * u_an + w_pn * u_pn)
        near, near_pn = i64_as_f64(near_bits), i64_as_f64(near_pn_bits)  # a NaN stays NaN: risky
        if g != 0.0 and ((w_an > 0.0 and not (near > _RISK)) or (w_pn > 0.0 and not (near_pn > _RISK))):
            bad = True
        risky[i] = bad
