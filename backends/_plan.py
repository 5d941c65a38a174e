"""What the fused kernels of every backend share: the preparation of a call, written once for NumPy
and CuPy alike (``m`` is the array module). The kernels themselves (Numba, CUDA) only run the rows.

- :func:`cross_entropy_plan`: rows, labels, the smoothed target mass, the class weights;
- :func:`margin_plan`: a margin loss's logits ``s cos`` with the target logit ``s psi(c)``, and what
  its backward needs (margin_losses.md section 0), in float64;
- :data:`FOCAL_MODES`: the sigmoid-focal exponents the elementwise kernels take.

A plan function returns ``None`` where its kernels do not cover the call; the portable code runs.
"""

from __future__ import annotations

import math

FLOATS = ("float32", "float64")

#: sigmoid_focal_loss's exponents with a kernel power (exact, or one rounding from numpy's): others decline.
FOCAL_MODES = {0.0: 0, 1.0: 1, 2.0: 2, 3.0: 3, 0.5: 4}


def broadcast(m, a, shape):
    """``a`` broadcast to ``shape`` (a read-only view, which Numba compiles separately: only if needed)."""
    a = m.asarray(a)
    return a if a.shape == tuple(shape) else m.broadcast_to(a, shape)


def flat(m, a, shape, dtype):
    """``a`` broadcast to ``shape``, as a flat C-contiguous array of ``dtype``."""
    return m.ascontiguousarray(broadcast(m, a, shape), dtype=dtype).reshape(-1)


def per_sample(m, values, shape, dtype):
    """A cotangent (or any per-sample array broadcastable to ``shape``) as a flat float64 array."""
    return flat(m, m.asarray(values, dtype=dtype), shape, "float64")


def cotangent(m, values, shape, dtype):
    """A cotangent as the elementwise kernels read it: ``(flat float64 array, uniform)``. A cotangent
    that is one value for every element (a broadcast scalar: what ``sum`` and the means give) is that
    value alone, a length-1 array, rather than a materialised copy as large as the input."""
    values = m.asarray(values, dtype=dtype)
    if values.size and all(stride == 0 for stride in values.strides):
        return m.asarray(values[(0,) * values.ndim], dtype="float64").reshape(1), True
    return per_sample(m, values, shape, dtype), False


def as_rows(m, x):
    """``(N, C, *)`` class-axis-1 scores as C-contiguous ``(M, C)`` rows, and the inverse for arrays
    of the rows' shape (a view where the layout allows it, a copy otherwise)."""
    if x.ndim == 2:
        return m.ascontiguousarray(x), lambda r: r
    moved = m.moveaxis(x, 1, -1)
    shape = moved.shape
    rows = m.ascontiguousarray(moved).reshape(-1, shape[-1])
    return rows, lambda r: m.moveaxis(r.reshape(shape), -1, 1)


def cross_entropy_plan(m, logits, target, params):
    """``cross_entropy`` with index targets as rows: a dict of the kernel arguments, or ``None``.

    Mass ``a_c = w_c (cold + [c = y] hx)``: the smoothed one-hot ``(1 - eps) y + eps / C`` rounded in
    the input dtype as the portable code rounds it; ``heavy``, a class holding more than half of the
    weight (-1 if none), with ``heavy_rest`` the sum of the others (for ``A - a_c`` without cancellation).
    """
    if str(logits.dtype) not in FLOATS or logits.size == 0 or logits.shape[1] == 0:
        return None
    dtype = logits.dtype.type
    classes = logits.shape[1]
    rows, back = as_rows(m, logits)
    labels = m.asarray(target).reshape(-1)
    keep = labels != params["ignore_index"]
    labels = m.where(keep, labels, 0).astype("int64")
    weight = params["weight"]
    w = m.ones(classes) if weight is None else m.asarray(weight, dtype="float64")
    total = float(m.sum(w))
    heavy = int(m.argmax(w))
    heavy_rest = 0.0
    if float(w[heavy]) > total / 2:
        others = w.copy()
        others[heavy] = 0
        heavy_rest = float(m.sum(others))
    else:
        heavy = -1
    eps = params["label_smoothing"]
    cold = float(dtype(eps / classes)) if eps else 0.0
    hot = float(dtype(dtype(1 - eps) + dtype(cold))) if eps else 1.0
    return {
        "rows": rows, "back": back, "labels": labels, "keep": keep, "weight": w, "total": total,
        "heavy": heavy, "heavy_rest": heavy_rest, "cold": cold, "hx": hot - cold, "shape": target.shape,
    }


# --------------------------------------------------------------------------------------------------
# Margin losses: float32 inputs, float64 arithmetic.
#
# The logits are ``s cos`` with ``s`` up to 64, so an absolute error in a cosine is amplified 64 times
# in a small loss: float32 products (``sqrt(D) 2^-24`` per cosine) would cost tens of ulps, float64
# holds the float32 answer to under an ulp. float64 inputs decline: the portable code carries the
# cosines as double-doubles to keep 4 ulps in float64, and a kernel would need the same. Steps
# (refloss.losses.margin's definition, margin_losses.md section 0): unit rows ``x_hat``, ``W_hat`` (the
# norm scaled by the row's largest magnitude); ``s cos = (s x_hat) W_hat^T``; at each label ``c = x_hat .
# W_hat_y`` and ``sin^2 theta = (|x_hat - W_hat_y|^2 / 2)(|x_hat + W_hat_y|^2 / 2)`` (accurate as
# ``|c| -> 1``); the target logit ``s psi(c)``; the fused rows give ``G = dL/dcos = s cot (p - onehot)``
# with ``psi'`` at the target; ``dL/dx = (I - x_hat x_hat^T)(G W_hat) / |x|`` and ``dL/dW = (I - W_hat
# W_hat^T)(G^T x_hat) / |W|``. Target transforms (``sin = sqrt(sin^2 theta)``; where ``sin = 0`` the
# slope is its L'Hopital value, as margin.py):
#
# - CosFace: ``psi = c - m``, ``psi' = 1``;
# - ArcFace: ``psi = c cos m - sin sin m``, ``psi' = cos m + sin m c / sin``; ``easy_margin``: ``psi = c``
#   (slope 1) where ``c <= 0``; ``fallback='insightface'``: ``psi = c - m sin(pi - m)`` (slope 1) where
#   ``c <= cos(pi - m)``; ``gradient='straight_through'``: ``psi' = 1``;
# - combined ``(m1, m2, m3)``: ``psi = cos(m1 theta + m2) - m3``, ``psi' = m1 sin(m1 theta + m2) / sin``
#   (``m1 = 1``: the ArcFace form with ``m = m2``), ``m1^2 cos(m1 theta + m2) / cos(theta)`` at ``sin = 0``.


def _unit_rows(m, v):
    """``(v / |v|, |v|)`` per row (rows nonzero: the loss's check rejects zero rows without ``eps``)."""
    big = m.max(m.abs(v), axis=1, keepdims=True)
    u = v / big
    r = m.sqrt(m.sum(u * u, axis=1, keepdims=True))
    return u / r, big * r


def tangent(m, g, unit, norm):
    """Backward of the row normalisation: ``(g - (g . v_hat) v_hat) / |v|`` (fused on the CPU in
    backends/numba/_margin.py)."""
    return (g - m.sum(g * unit, axis=1, keepdims=True) * unit) / norm


def _angle_add(m, c, s2, margin):
    sin = m.sqrt(m.maximum(s2, 0.0))
    pos = s2 > 0
    value = c * math.cos(margin) - sin * math.sin(margin)
    slope = m.where(pos, math.cos(margin) + math.sin(margin) * c / m.where(pos, sin, 1.0), math.cos(margin))
    return value, slope


def _cosface(m, c, s2, params):
    return c - params["margin"], m.ones_like(c)


def _arcface(m, c, s2, params):
    margin = params["margin"]
    value, slope = _angle_add(m, c, s2, margin)
    if params["easy_margin"] or params["fallback"] == "insightface":
        if params["easy_margin"]:
            keep, alt = c > 0, c
        else:
            keep, alt = c > math.cos(math.pi - margin), c - math.sin(math.pi - margin) * margin
        value, slope = m.where(keep, value, alt), m.where(keep, slope, 1.0)
    if params["gradient"] == "straight_through":
        slope = m.ones_like(c)
    return value, slope


def _combined(m, c, s2, params):
    m1, m2, m3 = params["m1"], params["m2"], params["m3"]
    if m1 == 1:
        value, slope = _angle_add(m, c, s2, m2)
        return value - m3, slope
    sin = m.sqrt(m.maximum(s2, 0.0))
    pos = s2 > 0
    arg = m1 * m.arctan2(sin, c) + m2
    cos_end = m.where(c > 0, 1.0, -1.0)
    slope = m.where(pos, m1 * m.sin(arg) / m.where(pos, sin, 1.0), m1 * m1 * m.cos(arg) / cos_end)
    return m.cos(arg) - m3, slope


PSI = {"cosface_loss": _cosface, "arcface_loss": _arcface, "combined_margin_loss": _combined}


def margin_plan(m, name, features, labels, weights, params):
    """A margin loss's logits ``s cos`` (float64, the target entries ``s psi(c)``), the slopes ``psi'(c)``
    and the unit rows and norms for the backward, or ``None`` (float64 inputs, ``eps``, empty shapes)."""
    if str(features.dtype) != "float32" or str(weights.dtype) != "float32" or params.get("eps") is not None:
        return None
    n, d = features.shape
    classes = weights.shape[0]
    if n == 0 or classes == 0 or d == 0:
        return None
    labels = m.asarray(labels).astype("int64")
    xh, xn = _unit_rows(m, features.astype("float64"))
    wh, wn = _unit_rows(m, weights.astype("float64"))
    s = float(params["scale"])
    logits = m.matmul(s * xh, wh.T)  # s cos, the scale folded into the (N, D) factor
    wy = wh[labels]
    c = m.sum(xh * wy, axis=1)  # the target cosines, unscaled
    s2 = (m.sum((xh - wy) ** 2, axis=1) / 2) * (m.sum((xh + wy) ** 2, axis=1) / 2)
    value, slope = PSI[name](m, c, s2, params)
    logits[m.arange(n), labels] = s * value
    return {"logits": logits, "labels": labels, "slope": m.ascontiguousarray(slope, dtype="float64"), "scale": s,
            "xh": xh, "xn": xn, "wh": wh, "wn": wn}
