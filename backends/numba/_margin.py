"""The backward of the margin losses' row normalisation, fused: ``(g - (g . v_hat) v_hat) / |v|`` per row.

backends/_plan.tangent is the same formula in array operations (what CuPy runs); on the CPU its
four passes with temporaries as large as ``W`` (20000 x 512 float64 in the benchmark) cost more than
the products they follow. Here one row at a time: the dot product (64 float64 lanes, summed pairwise
at the end: a fixed order, whatever the thread count), then the update written once, rounded to the
output's dtype (float32 for the float32 inputs the margin kernels take).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._softmax import LANES, _fold


@njit(cache=True, parallel=True, error_model="numpy")
def tangent(g, unit, norm, out):
    """``out[i] = (g[i] - (g[i] . unit[i]) unit[i]) / norm[i]`` for C-contiguous float64 ``g``, ``unit``
    (``R x D``) and ``norm`` (``R``, or ``R x 1``); ``out`` any float dtype of the same shape."""
    rows, d = g.shape
    flat_norm = norm.reshape(-1)
    for i in prange(rows):
        gi = g[i]
        ui = unit[i]
        acc = np.zeros(LANES)
        blocks = d // LANES
        for b in range(blocks):
            for j in range(LANES):
                acc[j] += gi[b * LANES + j] * ui[b * LANES + j]
        for k in range(blocks * LANES, d):
            acc[0] += gi[k] * ui[k]
        dot = _fold(acc)
        n = flat_norm[i]
        oi = out[i]
        for k in range(d):
            oi[k] = (gi[k] - dot * ui[k]) / n
