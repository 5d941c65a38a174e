"""Face-recognition margin losses: normalised (cosine) softmax with a margin on the target logit.

Every loss here is called ``loss(features, labels, weights)``: ``features (N, D)``, integer
``labels (N,)`` in ``[0, C)`` and raw class ``weights (C, D)`` (one row per class, the insightface /
``F.linear`` layout; pytorch-metric-learning stores the transpose, pass ``W.T``). Gradients are with
respect to the raw features and weights. It returns the per-sample softmax cross-entropy of margin
logits. (Labels come second so that the batch size N is bound before the class count C.) Written once:

1. :func:`_normalise_rows`: ``v / |v|`` row by row, the norm taken without overflow or underflow
   (scaled by a power of two near the row's largest magnitude); with ``eps`` the norm is ``max(|v|, eps)``
   (``F.normalize``), without it a zero row is a ``ValueError`` naming the argument.
2. The cosine matrix ``c = x_hat W_hat^T`` (N, C) and its backward (margin_losses.md section 0)::

       dL/dx_i = (1/|x_i|) (I - x_hat_i x_hat_i^T) (G W_hat)_i,   dL/dW_j = (1/|W_j|) (I - W_hat_j W_hat_j^T) (G^T X_hat)_j

   with ``G = dL/dc``: the tangent projection of the matmul's gradient, divided by the norm (where
   ``eps`` clamps the norm, ``v_hat = v / eps`` is linear and the projection is dropped).
3. A target transform ``psi(c)`` applied at the label column only: ``z_ij = s c_ij`` (j != y_i),
   ``z_iy = s psi(c_iy)``; then ``l_i = -log softmax(z_i)_{y_i}``, whose gradient is ``p - onehot``.
   So ``G_ij = s (p_ij - [j = y_i])`` off the target and ``s (p_iy - 1) psi'(c_iy)`` on it.

Each cosine loss (NormFace, COCO, CosFace, ArcFace, combined) supplies only ``psi`` and ``dpsi/dc``.
L2-softmax (normalised features, raw weights) and L-Softmax / SphereFace (logits scaled by the
norms, ``z = |x| |W| f(c)`` or ``|x| f(c)``) reuse the same normalisation, cross-entropy and
``psi`` machinery with their own logit scale. The reduction is the shared one (``mean`` over the
batch, as every reference implementation). Scales, margins and lambda are parameters, not inputs:
their gradients (NormFace's learnable scale) are not provided.

Numerics (certified against refloss.mp within 4 ULP, value and gradients, see the double-double
section below): the unit rows, the cosines (Ozaki's split matrix product, two slices: six float64 products),
the margins, scales and logits are double-doubles, and the softmax takes the logits' low parts
(``refloss.xp.log_softmax(z, lo=...)``): a logit of size ``s = 64`` rounded to float64 alone would put
tens of ULP on a small loss. ``1 -+ c`` and ``sin theta`` at the target come from ``|x_hat -+ W_hat_y|^2``
(accurate as ``|c| -> 1``), and so do the target's tangents ``W_hat_y - c x_hat``, which the projection
of the summed gradient would cancel. The target entry of ``p - onehot`` is ``-sum_{j != y} p_j`` (no
``p_y - 1`` cancellation when the target dominates). The gradient is summed in double-double too
(terms of both signs cancel: the target's pull against the other classes', one sample's against
another's on a shared weight row) and rounded once; the cotangent's common scale is applied last, so
``mean`` is ``sum / N`` to one rounding. The forward costs six matrix products instead of one and
about twice the elementwise work; the backward about three times.

Two distance-based losses share the calling convention with raw ``weights`` as class centres:
RBF-Softmax (``z_ij = s exp(-|W_j - x_i|^2 / gamma)``) and L-GM (``z_ik = -|x_i - mu_k|^2 (1 + alpha [k = y_i]) / 2``
plus a likelihood regulariser); their squared distances come from the differences ``W_j - x_i``
(:func:`_centre_differences`, exact as double-doubles), never from ``|x|^2 + |W|^2 - 2 x.W``, and L-GM's
logit differences from ``(mu_k - mu_y) . (x - (mu_k + mu_y) / 2)``. :func:`sphereface_caffe_gradient`
gives SphereFace's Caffe update direction, which is not a gradient and so not a VJP.
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import math
from fractions import Fraction
from typing import NamedTuple

import array_api_compat
import numpy as np  # domains and error messages only

from .. import domains as D
from ..loss import Input, Param, _fail, loss, reduce_vjp
from ..xp import dd_mul, dd_sum, log_softmax, namespace, one_hot, renormalise, significand_bits, take_along_axis, to_numpy, two_prod, two_sum

__all__ = [
    "normface_loss",
    "cosface_loss",
    "arcface_loss",
    "combined_margin_loss",
    "coco_loss",
    "l2_softmax_loss",
    "l2_softmax_alpha_lower_bound",
    "lsoftmax_loss",
    "sphereface_loss",
    "margin_lambda_schedule",
    "sphereface_caffe_gradient",
    "rbf_softmax_loss",
    "lgm_loss",
]


# ------------------------------------------------------------------------------------------------
# Shared declarations.

_FEATURES = Input("features", shape="N D", domain=D.margin_features, doc="feature vectors (raw; normalised inside)")
_LABELS = Input(
    "labels", dtype="int", shape="N", differentiable=False, classes="C", domain=D.margin_labels, doc="class indices"
)
_WEIGHTS = Input("weights", shape="C D", domain=D.margin_weights, doc="class weights W, one row per class (raw)")
_INPUTS = [_FEATURES, _LABELS, _WEIGHTS]
_EPS = Param(
    "eps", None, nullable=True, low=0.0, low_open=True, grid=(1e-12,),
    doc="norm floor: |v| -> max(|v|, eps) (F.normalize uses 1e-12); None: a zero row is an error",
)


def _scale(default, grid):
    return Param("scale", default, low=0.0, low_open=True, grid=grid, doc="s: logits are s * cos")


def _check(xp, name, features, labels, weights, *, normalised=("features", "weights"), hint=" (pass eps= to clamp the norm)", **params):
    if features.shape[1] == 0:
        _fail(ValueError, name, "features", "of at least one feature column (D >= 1)", f"shape {tuple(features.shape)}")
    if params["eps"] is not None:
        return
    for arg, v in (("features", features), ("weights", weights)):
        if arg not in normalised:
            continue
        zero = xp.all(v == 0, axis=1)
        if bool(xp.any(zero)):
            rows = [int(k) for k in np.flatnonzero(np.asarray(to_numpy(zero)))]
            _fail(ValueError, name, arg, "rows of nonzero norm" + hint, f"zero row(s) at {rows}")


# ------------------------------------------------------------------------------------------------
# Double-double arithmetic beyond the shim's error-free transformations (candidates for refloss.xp,
# next to box.py's ``_DD``): a value is a pair ``(hi, lo)`` of arrays standing for ``hi + lo``.
#
# Why the margin family needs it: its loss is ``log(1 + sum_j exp(z_j - z_y))`` of logits ``s cos``
# with ``s`` up to 64, so an absolute error ``delta`` in a logit is ``delta`` relative in a small loss,
# and float64 logits of size 64 carry ``delta ~ 64 2^-53``: tens of ULP. Cosines, margins and scales
# are therefore carried as double-doubles into the softmax (``refloss.xp.log_softmax(z, lo=...)``).
# The gradient sums terms of both signs (the target's pull against the other classes', one sample's
# against another's on a shared weight row), which cancel to a fraction of their size: every one of
# them is formed in double-double too, and rounded once at the end.

_PI = (3.141592653589793, 1.2246467991473532e-16)  # pi as a double-double (checked in the tests)
_LN2 = (0.6931471805599453, 2.3190468138462996e-17)
_DD_DIGITS = 40


def _dd_decimal(value):
    """A ``decimal.Decimal`` (computed at 40 digits) as the Python pair ``(hi, lo)``."""
    hi = float(value)
    return hi, float(value - decimal.Decimal(hi))


def _dd_split(q):
    """A rational ``q`` as the Python pair ``(hi, lo)``, ``hi = fl(q)`` and ``lo = fl(q - hi)``."""
    q = Fraction(q)
    hi = float(q)
    return hi, float(q - Fraction(hi))


_EXP_STEPS = 1024  # exp's table: 2^(j / 1024)


@functools.lru_cache(maxsize=None)
def _exp2_table():
    """``2^(j / 1024)``, j = 0..1023, as two tuples (high and low parts)."""
    with decimal.localcontext() as ctx:
        ctx.prec = _DD_DIGITS
        pairs = [_dd_decimal(decimal.Decimal(2) ** (decimal.Decimal(j) / _EXP_STEPS)) for j in range(_EXP_STEPS)]
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


def _dd_const(xp, value, like):
    """``value`` (a Python number or ``(hi, lo)`` pair) as a 0-d double-double of ``like``'s dtype and device."""
    hi, lo = value if isinstance(value, tuple) else (value, 0.0)
    dev = array_api_compat.device(like)
    return xp.asarray(hi, dtype=like.dtype, device=dev), xp.asarray(lo, dtype=like.dtype, device=dev)


def _dd_add(xp, a, b):
    s, e = two_sum(xp, a[0], b[0])
    return renormalise(xp, s, e + (a[1] + b[1]))


def _dd_neg(a):
    return -a[0], -a[1]


def _dd_sub(xp, a, b):
    return _dd_add(xp, a, _dd_neg(b))


def _dd_mul(xp, a, b):
    return dd_mul(xp, a[0], a[1], b[0], b[1])


def _dd_div(xp, a, b):
    """``a / b`` (``b`` nonzero): the quotient of the high parts and one correction from the exact remainder."""
    q = a[0] / b[0]
    p, e = two_prod(xp, q, b[0] * xp.ones_like(q))
    return renormalise(xp, q, (((a[0] - p) - e) + (a[1] - q * b[1])) / b[0])


def _dd_sqrt(xp, a):
    """``sqrt(a)`` for ``a >= 0``: one Newton step from the rounded root (0 where ``a <= 0``)."""
    pos = a[0] > 0
    h = xp.sqrt(xp.where(pos, a[0], xp.zeros_like(a[0])))
    p, e = two_prod(xp, h, h)
    r = (((a[0] - p) - e) + a[1]) / (2 * xp.where(pos, h, xp.ones_like(h)))
    return renormalise(xp, h, xp.where(pos, r, xp.zeros_like(r)))


def _dd_gt(a, b):
    """``a > b`` for normalised pairs (``|lo| <= ulp(hi) / 2``): decided by the high parts unless they tie."""
    return (a[0] > b[0]) | ((a[0] == b[0]) & (a[1] > b[1]))


def _dd_where(xp, mask, a, b):
    return xp.where(mask, a[0], b[0]), xp.where(mask, a[1], b[1])


def _dd_clip(xp, a, low, high):
    """``(clip(a, low, high), a < low, a > high)`` for a double-double ``a`` and bounds (Python numbers or
    0-d double-doubles), decided on the double-doubles."""
    low = low if isinstance(low, tuple) else _dd_const(xp, low, a[0])
    high = high if isinstance(high, tuple) else _dd_const(xp, high, a[0])
    below, above = _dd_gt(low, a), _dd_gt(a, high)
    return _dd_where(xp, below, low, _dd_where(xp, above, high, a)), below, above


def _dd_expand(xp, a, axis=1):
    return xp.expand_dims(a[0], axis=axis), xp.expand_dims(a[1], axis=axis)


def _dd_zeros(xp, like):
    return xp.zeros_like(like), xp.zeros_like(like)


def _split_bits(xp, dtype, k):
    """Bits ``h`` of the split grid ``2^-h`` for sums of ``k`` products of entries in [-1, 1]: ``2h + log2 k <= t - 1``
    for a ``t``-bit significand, so such products and all their partial sums are exact (Ozaki et al.)."""
    return (significand_bits(xp, dtype) - 1 - math.ceil(math.log2(max(k, 1)))) // 2


def _fine_split_product(xp, a, a_lo, b, b_lo, h, contract):
    """``contract(A + A_lo, B + B_lo)``, a bilinear sum of ``K`` products (a matrix product, or row dot
    products) of operands with entries in [-1, 1], as a double-double to ~2^-(t + 2h - log2 K) of
    ``|A| |B|``, ``h`` from :func:`_split_bits` (2^-101 for float64 and K = 3, 2^-86 at K = 512).

    Ozaki's split with two slices: ``A = A1 + A2 + A3`` with ``A1`` on the grid ``2^-h``, ``A2`` on
    ``2^-2h`` (at most ``2^-h`` in size) and ``A3`` the rest (the low part folded in), likewise ``B``.
    ``A1 B1`` (products on the grid 2^-2h, sums below K) and ``A1 B2``, ``A2 B1`` (on 2^-3h, below ``K 2^-h``)
    are exact in any summation order; the rest ``A1 B3 + A2 (B2 + B3) + A3 B`` is ``2^-2h`` smaller and
    rounds. Six contractions where the one-slice split (:func:`_dd_matmul`) takes three: for the quantities
    whose absolute error the one-slice ~2^-(t + h - log2 K) leaves too large (the unit rows' norms and the
    cosine matrix, see :func:`_normalise_rows` and :func:`_cosines`)."""
    grid = 2.0**h

    def slices(v, lo):
        v1 = xp.round(v * grid) / grid
        v2 = xp.round((v - v1) * grid**2) / grid**2  # v - v1 and the remainder below are exact
        rest = (v - v1) - v2
        return v1, v2, rest if lo is None else rest + lo

    a1, a2, a3 = slices(a, a_lo)
    b1, b2, b3 = slices(b, b_lo)
    mid, mid_lo = two_sum(xp, contract(a1, b2), contract(a2, b1))
    rest = contract(a1, b3) + contract(a2, b2 + b3) + contract(a3, b)
    hi, lo = two_sum(xp, contract(a1, b1), mid)
    return renormalise(xp, hi, lo + (mid_lo + rest))


def _dd_row_dot(xp, a, b, *, unit=False, fine=False):
    """``sum_k a_k b_k`` along the last axis of double-double rows (low parts may be None) as a double-double.

    Each row scaled by a power of two into [-1, 1] (not with ``unit``: it is already) and split on the grid
    of :func:`_split_bits` (``a = a1 + ar``): ``sum a1 b1`` is exact and the rest ``sum ar b + a1 br (+ the
    low parts)`` is ``2^-h`` smaller, so the result errs by ~2^-(t + h - log2 D) of ``|a| |b|`` for a handful
    of array operations (Dot2 costs a TwoProduct and a pairwise TwoSum tree). ``fine``: split in two slices
    (:func:`_fine_split_product`), ~2^-(t + 2h - log2 D)."""
    h = _split_bits(xp, a[0].dtype, a[0].shape[-1])
    grid = 2.0**h
    same = a is b
    if unit:
        ua, ub = a[0], b[0]
        a_lo, b_lo = a[1], b[1]
    else:
        pa = _pow2_scale(xp, a[0]) * 2
        pb = pa if same else _pow2_scale(xp, b[0]) * 2
        ua, ub = a[0] / pa, (a[0] / pa if same else b[0] / pb)
        a_lo = None if a[1] is None else a[1] / pa
        b_lo = None if b[1] is None else b[1] / pb
    if fine:
        hi, lo = _fine_split_product(xp, ua, a_lo, ub, b_lo, h, lambda x, y: xp.sum(x * y, axis=-1))
    else:
        a1 = xp.round(ua * grid) / grid
        if same:  # a^2 - a1^2 = (a - a1)(a + a1)
            rest = (ua - a1) * (ua + a1)
            if a_lo is not None:
                rest = rest + 2 * ua * a_lo
            total = xp.sum(a1 * a1, axis=-1)
        else:
            b1 = xp.round(ub * grid) / grid
            rest = (ua - a1) * ub + a1 * (ub - b1)
            if a_lo is not None:
                rest = rest + a_lo * ub
            if b_lo is not None:
                rest = rest + ua * b_lo
            total = xp.sum(a1 * b1, axis=-1)
        hi, lo = renormalise(xp, total, xp.sum(rest, axis=-1))
    if unit:
        return hi, lo
    p = xp.squeeze(pa, axis=-1) * xp.squeeze(pb, axis=-1)
    return hi * p, lo * p


def _dd_sum_squares(xp, v, v_lo=None, *, unit=False, fine=False):
    """``sum_k (v_k + lo_k)^2`` along the last axis as a double-double (:func:`_dd_row_dot`)."""
    pair = (v, v_lo)
    return _dd_row_dot(xp, pair, pair, unit=unit, fine=fine)


def _dd_horner(xp, coeffs, x):
    """``sum_n coeffs[n] x^n`` for double-double ``x`` (``coeffs``: Python pairs, lowest degree first)."""
    acc = _dd_const(xp, coeffs[-1], x[0])
    for c in reversed(coeffs[:-1]):
        acc = _dd_add(xp, _dd_mul(xp, acc, x), _dd_const(xp, c, x[0]))
    return acc


@functools.lru_cache(maxsize=None)
def _sincos_taylor():
    """Taylor coefficients of ``sin(r) / r`` and ``cos(r)`` in ``r^2`` as Python pairs, for ``|r| <= pi/4``:
    the first omitted terms, (pi/4)^27/27! and (pi/4)^26/26!, are below 2^-96."""
    sin = [_dd_split(Fraction((-1) ** n, math.factorial(2 * n + 1))) for n in range(13)]
    cos = [_dd_split(Fraction((-1) ** n, math.factorial(2 * n))) for n in range(13)]
    return sin, cos


def _dd_reduce(xp, a, period):
    """``(k, a - k period)`` with ``k = round(a_hi / period)``: ``k period`` exactly as TwoProd plus its low part."""
    k = xp.round(a[0] / period[0])
    kh, kl = two_prod(xp, k, xp.full_like(k, period[0]))
    return k, _dd_sub(xp, a, (kh, kl + k * period[1]))


# exp(a) is 0 below this in float64 (and its low part is below every other term there), inf above the other
_EXP_FLOOR, _EXP_CEIL = -760.0, 710.0
# ln2 / 1024 as a 30-bit head (k times it is exact for |k| < 2^23) plus a double-double tail
_LN2_STEP = (0.0006769015435565962, -4.1024561256651217e-14, -1.2817088298618413e-30)


def _dd_exp(xp, a):
    """``exp(a)`` to ~2^-64 relative (``a`` below ~709, ``|a| < 2^12``), elementwise in ~25 array operations
    (it runs on (N, C) matrices): ``a = k ln2/1024 + r`` (``k ln2/1024`` exact to ~2^-80, so ``r`` too),
    ``|r| <= ln2/2048 < 2^-11``, ``2^(k/1024)`` from a double-double table and ``e^r = 1 + expm1(r)``, whose
    one rounding (an ULP of ``expm1(r) < 2^-11``) is the error. 0 below -760, inf above 710, NaN kept."""
    live = (a[0] > _EXP_FLOOR) & (a[0] < _EXP_CEIL)
    zero = xp.zeros_like(a[0])
    dead = xp.where(a[0] >= _EXP_CEIL, xp.full_like(zero, math.inf), xp.where(xp.isnan(a[0]), xp.full_like(zero, math.nan), zero))
    a = _dd_where(xp, live, a, (zero, zero))
    k = xp.round(a[0] * (_EXP_STEPS / _LN2[0]))
    r = renormalise(xp, a[0] - k * _LN2_STEP[0], a[1] - k * _LN2_STEP[1] - k * _LN2_STEP[2])
    em1 = xp.expm1(r[0])
    em1_lo = r[1] * (1 + em1)
    j = k - _EXP_STEPS * xp.floor(k / _EXP_STEPS)
    hi, lo = _exp2_table()
    dev = array_api_compat.device(a[0])
    idx = xp.reshape(xp.astype(j, xp.int64), (-1,))
    t_hi, t_lo = (xp.reshape(xp.take(xp.asarray(v, dtype=a[0].dtype, device=dev), idx, axis=0), k.shape) for v in (hi, lo))
    # 2^(j/1024) (1 + em1): the product t em1 < 2^-11 t needs no TwoProduct at this accuracy
    v_hi, v_lo = two_sum(xp, t_hi, t_hi * em1)
    v_lo = v_lo + (t_lo + (t_hi * em1_lo + t_lo * em1))
    scale = 2.0 ** ((k - j) / _EXP_STEPS)
    return xp.where(live, v_hi * scale, dead), xp.where(live, v_lo * scale, zero)


def _dd_sincos(xp, a):
    """``(sin a, cos a)`` to ~2^-96 absolute for moderate ``|a|`` (margins, angles): ``a = k pi/2 + r``,
    ``|r| <= pi/4``, Taylor to degree 25, then the quadrant ``k mod 4``."""
    k, r = _dd_reduce(xp, a, (_PI[0] / 2, _PI[1] / 2))
    r2 = _dd_mul(xp, r, r)
    sin_coeffs, cos_coeffs = _sincos_taylor()
    s = _dd_mul(xp, _dd_horner(xp, sin_coeffs, r2), r)
    c = _dd_horner(xp, cos_coeffs, r2)
    q = k - 4 * xp.floor(k / 4)
    sin = _dd_where(xp, q == 0, s, _dd_where(xp, q == 1, c, _dd_where(xp, q == 2, _dd_neg(s), _dd_neg(c))))
    cos = _dd_where(xp, q == 0, c, _dd_where(xp, q == 1, _dd_neg(s), _dd_where(xp, q == 2, _dd_neg(c), s)))
    return sin, cos


@functools.lru_cache(maxsize=256)
def _sincos_constant(m):
    """``(sin m, cos m)`` of a Python float as Python double-double pairs (Taylor series in 40-digit decimals):
    the margins' constants, computed once instead of on arrays."""
    with decimal.localcontext() as ctx:
        ctx.prec = _DD_DIGITS + 5
        x = decimal.Decimal(m)
        terms = [decimal.Decimal(0), decimal.Decimal(0)]  # sin, cos
        term, n = decimal.Decimal(1), 0  # x^n / n!
        while n < 2 or abs(term) > decimal.Decimal(10) ** -(_DD_DIGITS + 5):
            if n % 2:
                terms[0] += term if n % 4 == 1 else -term
            else:
                terms[1] += term if n % 4 == 0 else -term
            n += 1
            term = term * x / n
        return _dd_decimal(terms[0]), _dd_decimal(terms[1])


def _dd_sincos_of(xp, m, like):
    """``(sin m, cos m)`` as double-doubles for a Python number (cached) or a double-double array ``m``."""
    if isinstance(m, tuple):
        return _dd_sincos(xp, m)
    sin, cos = _sincos_constant(float(m))
    return _dd_const(xp, sin, like), _dd_const(xp, cos, like)


def _dd_angle(xp, c, sin):
    """``theta = atan2(sin, c)`` of a point ``(c, sin)`` of the unit circle: the rounded angle ``t`` plus
    ``sin(theta - t) = sin cos t - c sin t`` (the cubic remainder is below 2^-150)."""
    t = (xp.atan2(sin[0], c[0]), xp.zeros_like(c[0]))
    st, ct = _dd_sincos(xp, t)
    return _dd_add(xp, t, _dd_sub(xp, _dd_mul(xp, sin, ct), _dd_mul(xp, c, st)))


def _pow2_scale(xp, v):
    """``2^e`` per row (keepdims) with ``max |v_row| / 2^e`` in [1, 2) (1 for rows without a finite nonzero entry)."""
    m = xp.max(xp.abs(v), axis=-1, keepdims=True)
    live = (m > 0) & xp.isfinite(m)
    return xp.where(live, 2.0 ** xp.floor(xp.log2(xp.where(live, m, xp.ones_like(m)))), xp.ones_like(m))


def _dd_matmul(xp, a, b, *, unit=False, unit_b=False, inner=False, fine=False):
    """``A B^T`` of double-double matrices as a double-double, by Ozaki's split (a low part may be
    ``None``: zero). Rows are scaled by powers of two into [-1, 1], except with ``unit`` (every entry of both
    is there already, and only absolute accuracy is wanted) or ``unit_b`` (``B``'s are, as unit vectors).
    ``inner``: the terms of a sum
    differ in scale along the inner dimension (samples of norms 1e-100 and 1e100 summed into one weight
    row): each inner column of ``B`` is scaled by a power of two into [-1, 1] and ``A``'s by its inverse,
    so that the error is relative to each sum's largest term, not to the largest entry of ``B``.

    ``A = A1 + Ar`` with ``A1`` on the grid ``2^-h`` (``h = (t - 1 - ceil(log2 K)) // 2`` bits for a
    ``t``-bit significand and inner dimension K: 21 for float64 and K = 512), likewise ``B``: every product
    in ``A1 B1^T`` is a multiple of ``2^-2h`` and every partial sum is below ``K < 2^(t - 2h)`` of them, so
    that matmul is exact in any summation order (BLAS, GPU). The rest, ``A1 Br^T + Ar B^T``, is ``2^-h``
    smaller and rounds at ``~K 2^-(t + h)``: three matrix products for
    ``~2^-(t + h - log2 K)`` relative to the rows' scales (2^-65 at K = 512), where one rounded product
    errs by ``K 2^-t``. ``fine``: two slices each (:func:`_fine_split_product`), six products for
    ``~2^-(t + 2h - log2 K)``.
    """
    a_lo, b_lo = a[1], b[1]
    a, b = a[0], b[0]
    if inner:
        sk = xp.reshape(_pow2_scale(xp, b.T), (1, -1))
        a, b = a * sk, b / sk
        a_lo = None if a_lo is None else a_lo * sk
        b_lo = None if b_lo is None else b_lo / sk
    one = xp.ones((1, 1), dtype=a.dtype, device=array_api_compat.device(a))
    sa = one if unit else _pow2_scale(xp, a) * 2
    sb = one if unit or unit_b else _pow2_scale(xp, b) * 2
    if not unit:
        a, b = a / sa, b / sb
        a_lo = None if a_lo is None else a_lo / sa
        b_lo = None if b_lo is None else b_lo / sb
    h = _split_bits(xp, a.dtype, a.shape[-1])
    if h < 1:  # pragma: no cover - K >= 2^(t - 3): nothing to split exactly
        hi, lo = xp.matmul(a, b.T), xp.zeros((a.shape[0], b.shape[0]), dtype=a.dtype, device=array_api_compat.device(a))
    elif fine:
        hi, lo = _fine_split_product(xp, a, a_lo, b, b_lo, h, lambda x, y: xp.matmul(x, y.T))
    else:
        grid = 2.0**h
        a1 = xp.round(a * grid) / grid
        b1 = xp.round(b * grid) / grid
        rest = xp.matmul(a1, ((b - b1) if b_lo is None else (b - b1) + b_lo).T)
        rest = rest + xp.matmul((a - a1) if a_lo is None else (a - a1) + a_lo, b.T)
        hi, lo = renormalise(xp, xp.matmul(a1, b1.T), rest)
    if not unit:
        s = sa * sb.T
        hi, lo = hi * s, lo * s
    return hi, lo


def _dd_t(a):
    return a[0].T, (None if a[1] is None else a[1].T)


# ------------------------------------------------------------------------------------------------
# The shared core.


class _Rows(NamedTuple):
    """:func:`_normalise_rows`'s record: ``hat + hat_lo`` the unit rows and ``norm + norm_lo`` (R, 1)
    their norms as double-doubles, ``clamped`` (R, 1) the rows where ``eps`` is the norm (``None`` without
    ``eps``). The first three fields are the float64 parts (``hat``, ``norm``) and the mask."""

    hat: object
    norm: object
    clamped: object
    hat_lo: object
    norm_lo: object

    @property
    def hat_dd(self):
        return self.hat, self.hat_lo

    @property
    def norm_dd(self):
        return self.norm, self.norm_lo


def _normalise_rows(xp, v, eps):
    """Rows of ``v`` over ``max(|v|, eps)`` (``eps=None``: ``|v|``, rows nonzero), as a :class:`_Rows`.

    ``u = v / 2^(e + 1)`` (exact, every entry in [-1, 1)), ``|u|^2`` as a double-double
    (:func:`_dd_sum_squares`, two slices: ~2^-101 relative at D = 3, 2^-86 at D = 512), its square root and
    reciprocal ``r`` in double-double, and ``|v| = 2^(e + 1) |u|``: no overflow or underflow for any finite
    row. ``v_hat = u r`` by TwoProduct (``r`` in (1/sqrt(D), 2]). The unit rows' error is mostly radial (the
    norm's), and a radial error does not cancel in the tangents ``W_hat - c x_hat``: a one-slice norm
    (~2^-78) put 100+ ULP on a CurricularFace gradient whose terms cancel by 2^-20.
    """
    p2 = _pow2_scale(xp, v)
    u = (v / p2) * 0.5
    r = _dd_sqrt(xp, _dd_sum_squares(xp, u, unit=True, fine=True))
    live = r[0] > 0
    r1 = xp.where(live, r[0], xp.ones_like(r[0])), xp.where(live, r[1], xp.zeros_like(r[1]))
    inv = _dd_expand(xp, _dd_div(xp, _dd_const(xp, 1.0, u), r1))
    hat, hat_lo = _dd_mul(xp, (u, xp.zeros_like(u)), inv)
    norm = (xp.expand_dims(r[0], axis=1) * p2) * 2, (xp.expand_dims(r[1], axis=1) * p2) * 2
    if eps is None:
        return _Rows(hat, norm[0], None, hat_lo, norm[1])
    clamped = ~_dd_gt(norm, _dd_const(xp, eps, v)) & ~((norm[0] == eps) & (norm[1] == 0))
    q = v / eps
    p, e = two_prod(xp, q, xp.full_like(q, eps))
    q_lo = ((v - p) - e) / eps
    full = xp.full_like(norm[0], eps)
    return _Rows(
        xp.where(clamped, q, hat), xp.where(clamped, full, norm[0]), clamped,
        xp.where(clamped, q_lo, hat_lo), xp.where(clamped, xp.zeros_like(full), norm[1]),
    )


def _scale_dd(xp, scale, like):
    """A scale (Python number or 0-d double-double pair) as a 0-d double-double."""
    return scale if isinstance(scale, tuple) else _dd_const(xp, scale, like)


def _scaled_products(xp, a, b, scale=1.0):
    """``scale A B^T`` as a double-double for rows with entries in [-1, 1] (``scale``: a positive Python
    number or a 0-d double-double pair) by :func:`_dd_matmul`'s two-slice split: the scale goes into ``A``
    (``O(N D)``), not onto the product."""
    if not isinstance(scale, tuple) and scale == 1:
        return _dd_matmul(xp, a, b, unit=True, fine=True)
    s = _scale_dd(xp, scale, a[0])
    if float(s[0]) == 0:
        zero = xp.zeros((a[0].shape[0], b[0].shape[0]), dtype=a[0].dtype, device=array_api_compat.device(a[0]))
        return zero, zero
    p2 = 2.0 ** math.ceil(math.log2(float(s[0]) * (1 + 2.0**-40)))  # |scale a| <= p2
    sa = _dd_mul(xp, a, s)
    hi, lo = _dd_matmul(xp, (sa[0] / p2, sa[1] / p2), b, unit=True, fine=True)
    return hi * p2, lo * p2


def _cosines(xp, features, weights, eps, scale=1.0):
    """``(scale cos, xr, wr)``: ``scale x_hat W_hat^T`` (N, C) as a double-double ``(hi, lo)`` and the rows'
    :class:`_Rows` records.

    The products take two slices (:func:`_dd_matmul`'s ``fine``: ~2^-86 of ``scale`` at D = 512, ~2^-100 at
    small D; one slice gives ~2^-65 to 2^-78): a cosine's absolute error reaches the gradient through
    ``dz/dc`` wherever that depends on ``c`` (CurricularFace's hard negatives, ``s (t + 2c)``, and every
    softmax), and the terms of a row's gradient can cancel by 2^-20 (a CurricularFace target nearly
    antiparallel to its feature against two hard negatives: 100+ ULP with one slice). In time the products
    stay small next to the elementwise double-double work on (N, C)."""
    xr = _normalise_rows(xp, features, eps)
    wr = _normalise_rows(xp, weights, eps)
    return _scaled_products(xp, xr.hat_dd, wr.hat_dd, scale), xr, wr


class _Target:
    """The target column's geometry for unit rows ``x_hat``, ``W_hat = W_hat_{index}`` (N samples).

    ``1 - c = |x_hat - W_hat|^2 / 2`` and ``1 + c = |x_hat + W_hat|^2 / 2`` exactly, and both keep their
    relative precision as ``|c| -> 1`` where ``1 - c`` from a rounded ``c`` does not; so ``c`` is the
    double-double ``1 - |d|^2 / 2`` (``c >= 0``) or ``|e|^2 / 2 - 1``, ``sin^2 theta = (1 - c)(1 + c)`` and
    ``sin theta`` its root, all double-doubles (``O(N D)``). Rows clamped by ``eps`` are not unit: there
    ``c`` is the double-double dot product and ``sin^2 theta = (1 - c)(1 + c)`` from it.
    """

    def __init__(self, xp, xr, wr, index):
        self.xp = xp
        self.index = index
        self.x = xr.hat_dd
        self.w = (xp.take(wr.hat, index, axis=0), xp.take(wr.hat_lo, index, axis=0))
        # c >= 0 (from the rounded dot product; either choice is exact): |x_hat - W_hat|^2 / 2 is 1 - c, the
        # small one, and 1 + c = 2 - (1 - c); otherwise the other way round
        self.near = xp.sum(self.x[0] * self.w[0], axis=1) >= 0
        sign = xp.where(self.near, -xp.ones_like(self.x[0][:, 0]), xp.ones_like(self.x[0][:, 0]))[:, None]
        self.v = _dd_add(xp, self.x, (sign * self.w[0], sign * self.w[1]))  # x_hat -+ W_hat
        q = _dd_sum_squares(xp, *self.v)
        q = q[0] / 2, q[1] / 2
        one, two = _dd_const(xp, 1.0, q[0]), _dd_const(xp, 2.0, q[0])
        other = _dd_sub(xp, two, q)
        self.omc = _dd_where(xp, self.near, q, other)  # 1 - c
        self.opc = _dd_where(xp, self.near, other, q)  # 1 + c
        c = _dd_where(xp, self.near, _dd_sub(xp, one, q), _dd_sub(xp, q, one))
        s2 = _dd_mul(xp, q, other)
        self.x_plain = None if xr.clamped is None else xp.reshape(xr.clamped, (-1,))
        self.w_plain = None if wr.clamped is None else xp.take(xp.reshape(wr.clamped, (-1,)), index, axis=0)
        self.plain = None
        if self.x_plain is not None:
            self.plain = self.x_plain | self.w_plain
            dot = _dd_row_dot(xp, self.x, self.w)
            c = _dd_where(xp, self.plain, dot, c)
            s2 = _dd_where(xp, self.plain, _dd_mul(xp, _dd_sub(xp, one, dot), _dd_add(xp, one, dot)), s2)
        self.c = c
        self.set_s2(s2)

    def set_s2(self, s2):
        """Replace ``sin^2 theta`` (AdaFace's clamp) and its root."""
        xp = self.xp
        self.s2 = _dd_where(xp, s2[0] > 0, s2, _dd_zeros(xp, s2[0]))
        self.sin = _dd_sqrt(xp, self.s2)

    def _tangent(self, a, b, sign):
        """``b_hat - c a_hat`` for unit rows without cancellation, a double-double: with ``v = x_hat - W_hat``
        and ``q = |v|^2 / 2 = 1 - c`` where ``c >= 0``, it is ``sign v + q a_hat`` (``sign`` -1 for ``a = x_hat``,
        +1 for ``a = W_hat``); with ``v = x_hat + W_hat`` and ``q = 1 + c`` elsewhere, ``v - q a_hat``. The plain
        ``b - c a`` where a row is clamped."""
        xp = self.xp
        near = xp.expand_dims(self.near, axis=1)
        q = _dd_expand(xp, _dd_where(xp, self.near, self.omc, self.opc))
        flip = xp.where(near, sign * xp.ones_like(self.v[0]), xp.ones_like(self.v[0]))  # the sign of v
        qa = _dd_mul(xp, q, a)
        qa_sign = xp.where(near, xp.ones_like(self.v[0]), -xp.ones_like(self.v[0]))
        one = _dd_add(xp, (flip * self.v[0], flip * self.v[1]), (qa_sign * qa[0], qa_sign * qa[1]))
        if self.plain is None:
            return one
        plain = xp.expand_dims(self.plain, axis=1)
        return _dd_where(xp, plain, _dd_sub(xp, b, _dd_mul(xp, _dd_expand(xp, self.c), a)), one)

    def tangent_x(self):
        """``(I - x_hat x_hat^T) W_hat``: the feature-side tangent of ``c``; ``W_hat`` itself where ``x`` is clamped."""
        out = self._tangent(self.x, self.w, -1.0)
        if self.x_plain is None:
            return out
        return _dd_where(self.xp, self.xp.expand_dims(self.x_plain, axis=1), self.w, out)

    def tangent_w(self):
        """``(I - W_hat W_hat^T) x_hat``: the weight-side tangent of ``c``; ``x_hat`` itself where ``W`` is clamped."""
        out = self._tangent(self.w, self.x, 1.0)
        if self.w_plain is None:
            return out
        return _dd_where(self.xp, self.xp.expand_dims(self.w_plain, axis=1), self.x, out)


def _target_geometry(xp, xr, wr, index):
    return _Target(xp, xr, wr, index)


def _project(xp, v, rows):
    """``(I - v_hat v_hat^T) v`` row by row in double-double (the normalisation's backward), ``v`` itself where clamped."""
    h = rows.hat_dd
    tangent = _dd_sub(xp, v, _dd_mul(xp, _dd_expand(xp, _dd_row_dot(xp, v, h)), h))
    return tangent if rows.clamped is None else _dd_where(xp, rows.clamped, v, tangent)


def _cosine_backward(xp, e, f, g_t, index, target, xr, wr):
    """``(dL/dx, dL/dW)`` as double-doubles through ``cos = x_hat W_hat^T`` (margin_losses.md section 0)::

        dL/dx_i = (1/|x_i|) sum_j g_ij (I - x_hat_i x_hat_i^T) W_hat_j,   dL/dW_j = (1/|W_j|) sum_i g_ij (I - W_hat_j W_hat_j^T) x_hat_i

    for ``g = dL/dcos`` given as ``g_ij = f_i e_ij`` off the target column ``index`` (``e`` (N, R) with entries in
    [-1, 1] and a zero target column, ``f`` (N,) a row factor) and ``g_t`` (N,) on it, all double-doubles (where
    ``eps`` clamps a norm, ``v_hat = v / eps`` is linear and the projection is dropped). The target column is
    taken apart: its tangents come from :class:`_Target` without cancellation (the projection of a nearly
    parallel ``W_hat_y`` cancels, and the margin's slope makes that term the largest). The other columns
    are summed by double-double matrix products (:func:`_dd_matmul`), the row factor applied to their
    (N, D) result (``dL/dx``) or folded into ``x_hat`` (``dL/dW``), and projected after. The target terms
    of ``dL/dW`` are gathered to their rows by a one-hot product."""
    hot = one_hot(index, e[0].shape[1], axis=1, xp=xp)
    g_t, f = _dd_expand(xp, g_t), _dd_expand(xp, f)
    gx = _dd_mul(xp, f, _dd_matmul(xp, e, _dd_t(wr.hat_dd), unit_b=True))
    gx = _dd_add(xp, _project(xp, gx, xr), _dd_mul(xp, g_t, target.tangent_x()))
    gw = _project(xp, _dd_matmul(xp, _dd_t(e), _dd_t(_dd_mul(xp, f, xr.hat_dd)), inner=True), wr)
    gw = _dd_add(xp, gw, _scatter_rows(xp, hot, _dd_mul(xp, g_t, target.tangent_w())))
    return _dd_div(xp, gx, xr.norm_dd), _dd_div(xp, gw, wr.norm_dd)


class _SoftmaxGrad(NamedTuple):
    """``dL/dz = cot (p - onehot)`` of double-double logits and cotangent, factored so that no (N, C) product is formed:
    ``f_i e_ij`` off the target and ``g_i`` on it, with ``e_ij = exp(z_ij - max_i)`` (entries in [0, 1], the
    target's zeroed), ``f = cot / sum_j e_ij`` and ``g = -cot (1 - p_y)``; ``rest = 1 - p_y``
    ``= sum_{j != y} e_j / sum_j e_j`` (no cancellation where the target dominates). All double-doubles
    (~2^-64 relative, :func:`_dd_exp`)."""

    e: tuple
    f: tuple
    g: tuple
    rest: tuple

    def full(self, xp, hot):
        """``dL/dz`` as one (N, C) double-double."""
        return _dd_where(xp, hot, _dd_expand(xp, self.g), _dd_mul(xp, self.e, _dd_expand(xp, self.f)))


def _unit_cotangent(xp, cot):
    """``(k, cot / k)``: ``k = max |cot|`` (1 where that is 0 or not finite) and the quotient as a double-double.

    The VJP is linear in the cotangent: it runs on ``cot / k`` and its result is scaled by ``k`` last, so a
    uniform cotangent (every reduction) enters as exact ones and ``mean`` is ``sum / N`` to one rounding."""
    k = xp.max(xp.abs(cot)) if cot.shape[0] else xp.ones((), dtype=cot.dtype, device=array_api_compat.device(cot))
    k = xp.where((k > 0) & xp.isfinite(k), k, xp.ones_like(k))
    return k, _dd_div(xp, (cot, xp.zeros_like(cot)), (k, xp.zeros_like(k)))


def _times(xp, g, k):
    """The double-double ``g`` times the float ``k``, rounded once."""
    return _dd_mul(xp, g, (k, xp.zeros_like(k)))[0]


def _softmax_grad(xp, cot, z, z_lo, hot):
    m = xp.max(z, axis=1, keepdims=True)
    # the shift is the maximum with its own low part (the largest among ties), so that no shifted entry is positive
    lo_m = xp.max(xp.where(z == m, z_lo, xp.full_like(z_lo, -math.inf)), axis=1, keepdims=True)
    s, err = two_sum(xp, z, -m)
    e = _dd_exp(xp, renormalise(xp, s, err + (z_lo - lo_m)))
    total = dd_sum(xp, *e)
    e = _dd_where(xp, hot, _dd_zeros(xp, e[0]), e)
    rest = _dd_div(xp, dd_sum(xp, *e), total)
    return _SoftmaxGrad(e, _dd_div(xp, cot, total), _dd_neg(_dd_mul(xp, cot, rest)), rest)


def _margin_logits(xp, cos, xr, wr, labels, scale, psi, prescaled=False, grad=True):
    """``(z, z_lo, hot, dpsi, target)``: the logits ``s c`` with ``s psi(c)`` at each label as a double-double
    (``cos`` from :func:`_cosines`, already times ``s`` when ``prescaled``), ``psi`` returning the target's
    value and its slope ``dpsi/dc`` as double-doubles (the slope only with ``grad``, else None)."""
    hot = one_hot(labels, cos[0].shape[1], axis=1, xp=xp)
    s = _scale_dd(xp, scale, cos[0])
    if not prescaled:
        cos = _dd_mul(xp, cos, s)
    target = _target_geometry(xp, xr, wr, labels)
    value, slope = psi(xp, target, grad)
    zt = _dd_expand(xp, _dd_mul(xp, value, s))
    return xp.where(hot, zt[0], cos[0]), xp.where(hot, zt[1], cos[1]), hot, slope, target


@dataclasses.dataclass
class _Logits:
    """Everything the forward and the VJP of a cosine-softmax loss share.

    ``z + z_lo (N, C)`` the logits as a double-double; ``labels`` and ``hot`` the labels and their one-hot
    mask; ``scale`` (0-d double-double) ``dz/dcos`` off the target and ``slope`` (N,) the target's
    ``dpsi/dc`` (so ``dz_y/dc = s psi'``); ``xr, wr`` the :class:`_Rows` records (``wr`` of the flattened
    sub-centres) and ``target`` the :class:`_Target` at each target's row of ``wr``. Optional:
    ``off_factor (N, C)`` a double-double in [-4, 4] multiplying ``dz/dcos = s`` off the target (CurricularFace);
    ``live (N, C)`` and ``live_target (N,)`` where ``dz/dcos`` is not zeroed by a clamp (AdaFace); ``pick (N, C, K)`` the arg-max
    sub-centre of each class; ``extra (N,)`` a double-double term added to the cross-entropy;
    ``dz_dnorm``, ``dextra_dnorm`` (N,) the derivatives of the target logit and of ``extra`` w.r.t. ``|x|``
    (MagFace's radial path).
    """

    z: object
    z_lo: object
    labels: object
    hot: object
    scale: tuple
    slope: tuple
    xr: tuple
    wr: tuple
    target: object
    off_factor: object = None
    live: object = None
    live_target: object = None
    pick: object = None
    extra: object = None
    dz_dnorm: object = None
    dextra_dnorm: object = None


def _ce(xp, z, z_lo, labels):
    """``-log softmax(z + z_lo)_y`` per sample (the shim's compensated log-softmax of a double-double)."""
    return -take_along_axis(log_softmax(z, axis=1, lo=z_lo, xp=xp), labels, axis=1, xp=xp)


def _forward(xp, parts):
    ce = _ce(xp, parts.z, parts.z_lo, parts.labels)
    return ce if parts.extra is None else _dd_add(xp, (ce, xp.zeros_like(ce)), parts.extra)[0]


def _vjp(xp, cot, parts, weights_shape):
    """The VJP of :func:`_forward`, in double-double throughout and rounded once (see the section above):
    ``dL/dz`` (:func:`_softmax_grad`) times ``dz/dcos``, routed to the sub-centres, through
    :func:`_cosine_backward`, plus the radial path."""
    k, cot = _unit_cotangent(xp, cot)
    sg = _softmax_grad(xp, cot, parts.z, parts.z_lo, parts.hot)
    s = parts.scale
    e, f = sg.e, _dd_mul(xp, sg.f, s)
    g_t = _dd_mul(xp, sg.g, _dd_mul(xp, s, parts.slope))  # dL/dcos_y
    if parts.off_factor is not None:  # |factor| <= 4: the quarter keeps e in [-1, 1] (exact scalings)
        e = _dd_mul(xp, e, (parts.off_factor[0] / 4, parts.off_factor[1] / 4))
        f = f[0] * 4, f[1] * 4
    if parts.live is not None:
        e = _dd_where(xp, parts.live, e, _dd_zeros(xp, e[0]))
        g_t = _dd_where(xp, parts.live_target, g_t, _dd_zeros(xp, g_t[0]))
    if parts.pick is not None:  # the class cosine is its arg-max sub-centre's: route the gradient there
        n, c, subs = parts.pick.shape
        zero = xp.zeros(parts.pick.shape, dtype=e[0].dtype, device=array_api_compat.device(e[0]))
        e = tuple(xp.reshape(xp.where(parts.pick, xp.expand_dims(v, axis=2), zero), (n, c * subs)) for v in e)
    gx, gw = _cosine_backward(xp, e, f, g_t, parts.target.index, parts.target, parts.xr, parts.wr)
    if parts.dz_dnorm is not None:  # d|x|/dx = x_hat
        radial = _dd_mul(xp, cot, _dd_sub(xp, parts.dextra_dnorm, _dd_mul(xp, sg.rest, parts.dz_dnorm)))
        gx = _dd_add(xp, gx, _dd_mul(xp, _dd_expand(xp, radial), parts.xr.hat_dd))
    return _times(xp, gx, k), None, xp.reshape(_times(xp, gw, k), weights_shape)


def _zero_grads(xp, features, weights):
    return xp.zeros_like(features), None, xp.zeros_like(weights)


def _empty(xp, features):
    return xp.zeros((0,), dtype=features.dtype, device=array_api_compat.device(features))


def _cosine_logits(xp, features, labels, weights, scale, eps, psi, grad=True):
    cos, xr, wr = _cosines(xp, features, weights, eps, scale)
    z, z_lo, hot, slope, target = _margin_logits(xp, cos, xr, wr, labels, scale, psi, prescaled=True, grad=grad)
    return _Logits(z, z_lo, labels, hot, _scale_dd(xp, scale, z), slope, xr, wr, target)


def _margin_forward(xp, features, labels, weights, scale, eps, psi):
    if features.shape[0] == 0:  # an empty batch (possibly with no classes): nothing to normalise over
        return _empty(xp, features)
    return _forward(xp, _cosine_logits(xp, features, labels, weights, scale, eps, psi, grad=False))


def _margin_vjp(xp, cot, features, labels, weights, scale, eps, psi):
    if features.shape[0] == 0:
        return _zero_grads(xp, features, weights)
    return _vjp(xp, cot, _cosine_logits(xp, features, labels, weights, scale, eps, psi), weights.shape)


# ------------------------------------------------------------------------------------------------
# Target transforms psi(target, grad) -> (psi, dpsi/dc) as double-doubles, each written once (the slope
# only with ``grad``: the forward does not need it).


def _ones(xp, t):
    return xp.ones_like(t.c[0]), xp.zeros_like(t.c[0])


def _identity(xp, t, grad=True):
    return t.c, _ones(xp, t)


def _shift(m):
    def psi(xp, t, grad=True):
        return _dd_sub(xp, t.c, _dd_const(xp, m, t.c[0])), _ones(xp, t)

    return psi


def _margin_dd(xp, m, like):
    """A margin (Python number, or a per-sample double-double pair) as a double-double."""
    return m if isinstance(m, tuple) else _dd_const(xp, m, like)


def _angle_add_rows(xp, t, cos_m, sin_m, grad=True):
    """``cos(theta + m) = c cos m - sin(theta) sin m``, its c-derivative ``sin(theta + m) / sin(theta)`` and
    ``sin(theta + m) = sin(theta) cos m + c sin m``, double-doubles, for ``cos m, sin m`` double-doubles
    (0-d or per sample). At ``sin(theta) = 0`` the slope is the L'Hopital value ``cos m``, which meets
    ``dc/dx = 0`` there: the zero subgradient of the cone-shaped kink of ``cos(theta + m)`` at theta = 0
    (finite, no NaN). Without ``grad`` only the value (the others None)."""
    value = _dd_sub(xp, _dd_mul(xp, t.c, cos_m), _dd_mul(xp, t.sin, sin_m))
    if not grad:
        return value, None, None
    sin_sum = _dd_add(xp, _dd_mul(xp, t.sin, cos_m), _dd_mul(xp, t.c, sin_m))
    pos = t.sin[0] > 0
    one = _dd_const(xp, 1.0, t.c[0])
    ratio = _dd_div(xp, sin_sum, _dd_where(xp, pos, t.sin, one))
    at_kink = (cos_m[0] * xp.ones_like(t.c[0]), cos_m[1] * xp.ones_like(t.c[0]))
    return value, _dd_where(xp, pos, ratio, at_kink), sin_sum


def _arc_psi(xp, t, m, easy_margin, fallback, margin_slope=False, grad=True):
    """ArcFace's target ``psi(c) = cos(theta + m)`` with insightface's conventions, and ``dpsi/dc``
    (and ``dpsi/dm`` with ``margin_slope``), double-doubles; ``m`` a Python number or a per-sample
    double-double (MagFace).

    ``easy_margin``: ``psi = c`` where ``c <= 0``; else ``fallback='insightface'``: ``psi = c - mm`` where
    ``c <= th``, with ``th = cos(pi - m) = -cos m`` and ``mm = sin(pi - m) m = m sin m`` (strict test, as
    insightface; decided on the double-double ``c``); ``fallback='none'``: ``cos(theta + m)`` everywhere.
    ``dpsi/dm`` is ``-sin(theta + m)`` on the margin branch, ``-(sin m + m cos m)`` on the fallback and 0 on
    the easy branch. Without ``grad`` the slopes are None.
    """
    md = _margin_dd(xp, m, t.c[0])
    sin_m, cos_m = _dd_sincos_of(xp, m, t.c[0])
    value, slope, sin_sum = _angle_add_rows(xp, t, cos_m, sin_m, grad)
    want_dm = margin_slope and grad
    dm = _dd_neg(sin_sum) if want_dm else None
    if easy_margin or fallback == "insightface":
        ones = _ones(xp, t)
        if easy_margin:
            keep = t.c[0] > 0
            alt, alt_dm = t.c, _dd_zeros(xp, ones[0])
        else:
            keep = _dd_gt(t.c, _dd_neg(cos_m))
            alt = _dd_sub(xp, t.c, _dd_mul(xp, md, sin_m))
            alt_dm = _dd_neg(_dd_add(xp, sin_m, _dd_mul(xp, md, cos_m)))
        value = _dd_where(xp, keep, value, alt)
        slope = _dd_where(xp, keep, slope, ones) if grad else None
        if want_dm:
            dm = _dd_where(xp, keep, dm, alt_dm)
    return (value, slope, dm) if margin_slope else (value, slope)


def _arcface_psi(margin, easy_margin, fallback, straight_through):
    def psi(xp, t, grad=True):
        value, slope = _arc_psi(xp, t, margin, easy_margin, fallback, grad=grad and not straight_through)
        return value, (_ones(xp, t) if straight_through else slope)

    return psi


def _combined_psi(m1, m2, m3):
    """``cos(m1 theta + m2) - m3``; for m1 = 1 through :func:`_angle_add_rows` (no angle at all)."""

    def psi(xp, t, grad=True):
        like = t.c[0]
        if m1 == 1:
            sin_m, cos_m = _dd_sincos_of(xp, m2, like)
            value, slope, _ = _angle_add_rows(xp, t, cos_m, sin_m, grad)
            return _dd_sub(xp, value, _dd_const(xp, m3, like)), slope
        theta = _dd_angle(xp, t.c, t.sin)  # value path only; the slope is closed form in theta
        m1_dd = _dd_const(xp, m1, like)
        sin_a, cos_a = _dd_sincos(xp, _dd_add(xp, _dd_mul(xp, theta, m1_dd), _dd_const(xp, m2, like)))
        value = _dd_sub(xp, cos_a, _dd_const(xp, m3, like))
        if not grad:
            return value, None
        # m1 sin(m1 theta + m2) / sin(theta); at sin(theta) = 0 the L'Hopital value m1^2 cos(arg) / cos(theta)
        # (the exact limit when m2 = 0; otherwise multiplied by dc/dx = 0 there, see _angle_add_rows).
        pos = t.sin[0] > 0
        one = _dd_const(xp, 1.0, like)
        ratio = _dd_div(xp, _dd_mul(xp, m1_dd, sin_a), _dd_where(xp, pos, t.sin, one))
        at_kink = _dd_mul(xp, _dd_mul(xp, m1_dd, m1_dd), _dd_where(xp, t.c[0] > 0, cos_a, _dd_neg(cos_a)))
        return value, _dd_where(xp, pos, ratio, at_kink)

    return psi


# ------------------------------------------------------------------------------------------------
# NormFace / COCO: psi(c) = c.


@loss(
    family="margin",
    inputs=_INPUTS,
    params=[_scale(10.0, (64.0,)), _EPS],
    check=_check,
    counterparts={
        "normface": "scaled_cosine_softmax.prototxt (happynear/NormFace: Normalize, InnerProduct normalize, Scale init 10, learned)",
        "pml": "pytorch_metric_learning.losses.NormalizedSoftmaxLoss(temperature=1/scale) (W stored as (D, C); default temperature 0.05 is scale=20)",
        "insightface": "arcface_mxnet margin_softmax (loss 'nsoftmax': (m1, m2, m3) = (1, 0, 0), s = 64)",
    },
    references=[
        "Wang et al., NormFace: L2 Hypersphere Embedding for Face Verification, ACM MM 2017",
        "margin_losses.md sections 0, 3.1",
    ],
)
def normface_loss(xp, features, labels, weights, *, scale, eps):
    """NormFace: softmax cross-entropy of scaled cosines, ``z_ij = s cos(x_i, W_j)``.

    ``l_i = -log softmax(s X_hat W_hat^T)_{i, y_i}``. Default ``s = 10`` (NormFace's Scale layer init;
    there it is learned, here it is a parameter: its gradient ``sum_ij g_ij c_ij`` is not provided).

    Gradient: ``G = s (p - onehot(y))`` w.r.t. the cosines, then the section-0 chain rule
    ``dL/dx_i = (I - x_hat x_hat^T)(G W_hat)_i / |x_i|`` and ``dL/dW_j = (I - W_hat W_hat^T)(G^T X_hat)_j / |W_j|``.

    Shapes: ``features (N, D)``, ``labels (N,)`` in ``[0, C)``, ``weights (C, D)``. A zero row raises
    ``ValueError`` unless ``eps`` is given (then norms are ``max(|v|, eps)``, as ``F.normalize``).
    """
    return _margin_forward(xp, features, labels, weights, scale, eps, _identity)


@normface_loss.defvjp
def _normface_vjp(xp, cot, features, labels, weights, *, scale, eps):
    return _margin_vjp(xp, cot, features, labels, weights, scale, eps, _identity)


@loss(
    family="margin",
    inputs=_INPUTS,
    params=[Param("alpha", 6.25, low=0.0, low_open=True, grid=(30.0,), doc="alpha: logits are alpha * cos"), _EPS],
    check=_check,
    counterparts={
        "coco": "net_cocoloss.prototxt (sciencefans/coco_loss: Normalize, CenterProjection, SoftmaxWithLoss)",
        "softmax_variants": "COCOLoss(num_classes, feat_dim, alpha=6.25) (YirongMao/softmax_variants, then CrossEntropyLoss)",
        "opensphere": "opensphere.module.head.CocoLoss (ydwen/opensphere; s = 30)",
    },
    references=[
        "Liu, Li, Wang, Rethinking Feature Discrimination and Polymerization for Large-scale Recognition, NIPS-W 2017 (v2, Eq. 8)",
        "margin_losses.md section 3.3",
    ],
)
def coco_loss(xp, features, labels, weights, *, alpha, eps):
    """COCO (congenerous cosine): ``z_ik = alpha cos(x_i, c_k)``, softmax cross-entropy over the centres ``c_k``.

    Mathematically NormFace with ``s = alpha`` and class centres as the weights. Default ``alpha = 6.25``
    (YirongMao/softmax_variants; opensphere uses 30). Gradient as :func:`normface_loss` with ``s = alpha``
    (the v2 paper's Eq. 8; the v1 arXiv derivation is wrong, per the official README).

    Shapes: ``features (N, D)``, ``labels (N,)``, ``weights (C, D)`` (the centres).
    """
    return _margin_forward(xp, features, labels, weights, alpha, eps, _identity)


@coco_loss.defvjp
def _coco_vjp(xp, cot, features, labels, weights, *, alpha, eps):
    return _margin_vjp(xp, cot, features, labels, weights, alpha, eps, _identity)


# ------------------------------------------------------------------------------------------------
# CosFace / AM-Softmax: psi(c) = c - m.


@loss(
    family="margin",
    inputs=_INPUTS,
    params=[
        _scale(64.0, (30.0,)),
        Param("margin", 0.35, low=0.0, grid=(0.0, 0.4), doc="m: the target logit is s (cos - m)"),
        _EPS,
    ],
    check=_check,
    counterparts={
        "insightface": "arcface_torch.losses.CosFace(s=64.0, m=0.40) (also CombinedMarginLoss(64, 1, 0, m); arcface_mxnet 'cosface' (1, 0, 0.35))",
        "pml": "pytorch_metric_learning.losses.CosFaceLoss(margin=0.35, scale=64) (W stored as (D, C))",
        "amsoftmax": "face_train_test.prototxt (happynear/AMSoftmax: s = 30 fixed, LabelSpecificAdd bias -0.35)",
        "arcface-pytorch": "models.metrics.AddMarginProduct(s=30.0, m=0.40) (ronghuaiyang/arcface-pytorch, then CrossEntropyLoss)",
    },
    references=[
        "Wang et al., CosFace: Large Margin Cosine Loss for Deep Face Recognition, CVPR 2018",
        "Wang et al., Additive Margin Softmax for Face Verification, IEEE SPL 2018",
        "margin_losses.md section 4",
    ],
)
def cosface_loss(xp, features, labels, weights, *, scale, margin, eps):
    """CosFace / AM-Softmax: ``z_iy = s (cos_iy - m)``, ``z_ij = s cos_ij`` otherwise; softmax cross-entropy.

    Defaults ``s = 64, m = 0.35`` (CosFace paper, PML; arcface_torch uses m = 0.40, AM-Softmax s = 30).
    ``m = 0`` is :func:`normface_loss`.

    Gradient: ``psi' = 1``, so ``G = s (p - onehot(y))`` and the section-0 chain rule (as NormFace).

    Shapes: ``features (N, D)``, ``labels (N,)``, ``weights (C, D)``.
    """
    return _margin_forward(xp, features, labels, weights, scale, eps, _shift(margin))


@cosface_loss.defvjp
def _cosface_vjp(xp, cot, features, labels, weights, *, scale, margin, eps):
    return _margin_vjp(xp, cot, features, labels, weights, scale, eps, _shift(margin))


# ------------------------------------------------------------------------------------------------
# ArcFace: psi(c) = cos(theta + m).


def _arcface_frozen(xp, base, features, labels, weights, *, scale, margin, easy_margin, fallback, gradient, eps):
    """Straight-through ArcFace with the margin ``psi(c) - c`` frozen at ``base`` (arcface_torch's no_grad)."""
    psi = _arcface_psi(margin, easy_margin, fallback, False)
    if gradient == "exact":
        return _margin_forward(xp, features, labels, weights, scale, eps, psi)
    t = _target_geometry(xp, _normalise_rows(xp, base[0], eps), _normalise_rows(xp, base[2], eps), base[1])
    delta = _dd_sub(xp, psi(xp, t, False)[0], t.c)

    def frozen(xp_, target, grad=True):
        return _dd_add(xp_, target.c, delta), _ones(xp_, target)

    return _margin_forward(xp, features, labels, weights, scale, eps, frozen)


@loss(
    family="margin",
    inputs=_INPUTS,
    params=[
        _scale(64.0, (30.0,)),
        Param("margin", 0.5, low=0.0, high=math.pi / 2, high_open=True, grid=(1.2,), doc="m (radians; PML uses degrees, 28.6)"),
        Param("easy_margin", False, kind="bool", grid=(True,), doc="apply the margin only where cos > 0 (else psi = cos)"),
        Param(
            "fallback", "insightface", kind="choice", choices=("insightface", "none"), grid=("none",),
            doc="insightface: psi = cos - m sin m where cos <= cos(pi - m) (theta + m >= pi); none: cos(theta + m) everywhere",
        ),
        Param(
            "gradient", "exact", kind="choice", choices=("exact", "straight_through"), grid=("straight_through",),
            doc="exact: the derivative of the forward; straight_through: d psi / d cos = 1 (arcface_torch since Dec 2022)",
        ),
        _EPS,
    ],
    check=_check,
    stop_gradient=_arcface_frozen,
    counterparts={
        "insightface": "arcface_torch.losses.ArcFace(s=64.0, margin=0.5) (v1 2e2e8c97 and arcface_mxnet loss_type 4: the defaults; "
        "current arcface_torch, also CombinedMarginLoss(64, 1, m, 0): gradient='straight_through', fallback='none')",
        "pml": "pytorch_metric_learning.losses.ArcFaceLoss(margin=28.6, scale=64) (margin in degrees: 28.6 deg = 0.49916 rad; W stored as (D, C); NaN gradient at |cos| = 1)",
        "arcface-pytorch": "models.metrics.ArcMarginProduct(s=30.0, m=0.50, easy_margin=False) (ronghuaiyang/arcface-pytorch, then CrossEntropyLoss)",
        "opensphere": "opensphere.module.head.ArcFace(s=64, m=0.5) (ydwen/opensphere: gradient='straight_through', fallback='none', but clamps theta + m at 3.14159)",
    },
    references=[
        "Deng et al., ArcFace: Additive Angular Margin Loss for Deep Face Recognition, CVPR 2019",
        "margin_losses.md sections 5, 13 (insightface #108, #228, #2218, #2255, #2309)",
    ],
)
def arcface_loss(xp, features, labels, weights, *, scale, margin, easy_margin, fallback, gradient, eps):
    """ArcFace: ``z_iy = s cos(theta_iy + m)``, ``z_ij = s cos_ij`` otherwise; softmax cross-entropy.

    ``cos(theta + m) = c cos m - sin(theta) sin m`` with ``sin(theta) = sqrt(max(1 - c^2, 0))`` (no acos; ``1 - c^2`` from ``|x_hat -+ W_hat_y|^2``, accurate as |c| -> 1).
    Defaults ``s = 64, m = 0.5, easy_margin=False, fallback='insightface'`` (insightface mxnet and v1 torch):

    - ``easy_margin=True``: ``psi = cos(theta + m)`` where ``c > 0``, else ``psi = c``;
    - otherwise ``fallback='insightface'``: ``psi = cos(theta + m)`` where ``c > th = cos(pi - m)``, else
      ``c - mm`` with ``mm = sin(pi - m) m`` (monotone but discontinuous at ``th``; strict test as
      insightface; PML's ``theta <= pi - m`` takes the margin branch at equality, a measure-zero
      difference); ``fallback='none'``: ``cos(theta + m)`` everywhere (paper, combined margin, arcface_torch v2).

    Gradient (``gradient='exact'``): ``psi' = cos m + sin m c / sin(theta) = sin(theta + m) / sin(theta)`` on the
    margin branch, 1 on the fallback / easy branches, then ``G = s (p - onehot) psi'`` and the section-0
    chain rule. At ``|c| = 1`` (``sin(theta) = 0``) ``psi'`` is infinite; refloss uses ``cos m`` there
    (the L'Hopital value), which meets ``dc/dx = 0``: the zero subgradient of the kink, finite where the
    references give NaN. ``gradient='straight_through'`` uses ``psi' = 1`` (arcface_torch's margin under
    ``torch.no_grad()``, opensphere): the forward is unchanged, and the gradient is the exact derivative
    of the forward with ``psi(c) - c`` frozen (declared as the loss's stop-gradient).

    Shapes: ``features (N, D)``, ``labels (N,)``, ``weights (C, D)``.
    """
    psi = _arcface_psi(margin, easy_margin, fallback, False)
    return _margin_forward(xp, features, labels, weights, scale, eps, psi)


@arcface_loss.defvjp
def _arcface_vjp(xp, cot, features, labels, weights, *, scale, margin, easy_margin, fallback, gradient, eps):
    psi = _arcface_psi(margin, easy_margin, fallback, gradient == "straight_through")
    return _margin_vjp(xp, cot, features, labels, weights, scale, eps, psi)


# ------------------------------------------------------------------------------------------------
# Combined margin: psi(c) = cos(m1 theta + m2) - m3.


@loss(
    family="margin",
    inputs=_INPUTS,
    params=[
        _scale(64.0, (30.0,)),
        Param("m1", 1.0, low=0.0, low_open=True, grid=(1.35,), doc="multiplicative angular margin (SphereFace-like)"),
        Param("m2", 0.3, low=0.0, grid=(0.0,), doc="additive angular margin (ArcFace)"),
        Param("m3", 0.2, low=0.0, grid=(0.0,), doc="additive cosine margin (CosFace)"),
        _EPS,
    ],
    check=_check,
    counterparts={
        "insightface": "arcface_mxnet margin_softmax (loss_m1, loss_m2, loss_m3; 'combined' = (1.0, 0.3, 0.2), s = 64. "
        "arcface_torch.losses.CombinedMarginLoss is not a counterpart: it ignores m1, m2 when m3 > 0 and raises for m1 != 1 with m3 = 0)",
        "subcenter": "subcenter_arcface/train_parall.py (insightface; combined margin with K = 1)",
    },
    references=[
        "Deng et al., ArcFace, CVPR 2019, section 3.3 (combined margin)",
        "margin_losses.md sections 5.2, 5.3, 6",
    ],
)
def combined_margin_loss(xp, features, labels, weights, *, scale, m1, m2, m3, eps):
    """Combined margin: ``z_iy = s (cos(m1 theta_iy + m2) - m3)``, ``z_ij = s cos_ij`` otherwise; softmax CE.

    Correct for every ``(m1, m2, m3)``: current insightface arcface_torch computes CosFace(m3) whenever
    ``m3 > 0`` (dropping m1 and m2) and raises for ``m1 != 1, m3 = 0``; refloss follows the mxnet
    formula. No monotone fallback (as mxnet): the target logit is non-monotone where ``m1 theta + m2 > pi``.
    Defaults ``s = 64, (m1, m2, m3) = (1.0, 0.3, 0.2)`` (insightface 'combined'). ``(1, m, 0)`` is
    :func:`arcface_loss` with ``fallback='none'``; ``(1, 0, m)`` is :func:`cosface_loss`.

    With ``m1 = 1`` the value is ``c cos m2 - sin(theta) sin m2 - m3`` (no angle); otherwise
    ``theta = atan2(sin(theta), c)`` in the value only. Gradient: ``psi' = m1 sin(m1 theta + m2) / sin(theta)``
    (``cos m2 + sin m2 c / sin(theta)`` for ``m1 = 1``), then ``G = s (p - onehot) psi'`` and the section-0
    chain rule. At ``sin(theta) = 0`` ``psi'`` is the L'Hopital value ``m1^2 cos(m1 theta + m2) / cos(theta)``
    (the exact limit when ``m2 = 0``; otherwise it meets ``dc/dx = 0``, the zero subgradient of the kink).

    Shapes: ``features (N, D)``, ``labels (N,)``, ``weights (C, D)``.
    """
    return _margin_forward(xp, features, labels, weights, scale, eps, _combined_psi(m1, m2, m3))


@combined_margin_loss.defvjp
def _combined_vjp(xp, cot, features, labels, weights, *, scale, m1, m2, m3, eps):
    return _margin_vjp(xp, cot, features, labels, weights, scale, eps, _combined_psi(m1, m2, m3))


# ------------------------------------------------------------------------------------------------
# L2-constrained softmax: features normalised and scaled by alpha, weights raw.


def l2_softmax_alpha_lower_bound(p, num_classes):
    """Ranjan et al.'s lower bound on alpha for a target softmax probability ``p`` over ``C`` classes:
    ``alpha_low = log(p (C - 2) / (1 - p))`` (needs ``C > 2`` and ``0 < p < 1``). E.g. ``p = 0.9``,
    ``C = 10000`` gives about 11.4."""
    if not (isinstance(num_classes, int) and num_classes > 2):
        raise ValueError(f"l2_softmax_alpha_lower_bound: num_classes must be an integer > 2, got {num_classes!r}")
    if not 0 < p < 1:
        raise ValueError(f"l2_softmax_alpha_lower_bound: p must be in (0, 1), got {p!r}")
    return math.log(p * (num_classes - 2) / (1 - p))


def _l2_check(xp, name, *inputs, **params):
    _check(xp, name, *inputs, normalised=("features",), **params)


@loss(
    family="margin",
    inputs=[_FEATURES, _LABELS, Input("weights", shape="C D", domain=D.small_weights, doc="classifier weights W (raw, not normalised)")],
    params=[Param("alpha", 50.0, low=0.0, low_open=True, grid=(16.0,), doc="alpha: features are rescaled to norm alpha"), _EPS],
    check=_l2_check,
    counterparts={
        "paper": "L2-constrained softmax (Ranjan, Castillo, Chellappa 2017: L2Normalize, Scale alpha, InnerProduct; no bias here)",
    },
    references=[
        "Ranjan, Castillo, Chellappa, L2-constrained Softmax Loss for Discriminative Face Verification, arXiv 1703.09507",
        "margin_losses.md section 3.2",
    ],
)
def l2_softmax_loss(xp, features, labels, weights, *, alpha, eps):
    """L2-constrained softmax: ``z_ij = W_j . (alpha x_i / |x_i|)``, softmax cross-entropy over j.

    Features are normalised and rescaled to norm ``alpha``; the classifier is an ordinary linear layer
    (weights raw, no bias: add a constant column to the features for one). Default ``alpha = 50``, the
    commonly cited setting [paper, not re-verified]; :func:`l2_softmax_alpha_lower_bound` gives the
    paper's lower bound ``log(p (C - 2) / (1 - p))``.

    Gradient, with ``g = p - onehot(y)``: ``dL/dW = alpha g^T X_hat`` and
    ``dL/dx_i = alpha (I - x_hat_i x_hat_i^T)(g W)_i / |x_i|`` (margin_losses.md 3.2).

    Shapes: ``features (N, D)``, ``labels (N,)``, ``weights (C, D)``. Only zero feature rows are
    an error (without ``eps``); zero weight rows are fine.
    """
    if features.shape[0] == 0:
        return _empty(xp, features)
    _, z = _l2_parts(xp, features, weights, alpha, eps)
    return _ce(xp, *z, labels)


def _l2_parts(xp, features, weights, alpha, eps):
    """``(xr, z)``: the features' :class:`_Rows` and ``z = alpha x_hat W^T`` as a double-double (:func:`_dd_matmul`)."""
    xr = _normalise_rows(xp, features, eps)
    return xr, _dd_matmul(xp, _dd_mul(xp, xr.hat_dd, _dd_const(xp, alpha, features)), (weights, None))


@l2_softmax_loss.defvjp
def _l2_softmax_vjp(xp, cot, features, labels, weights, *, alpha, eps):
    if features.shape[0] == 0:
        return _zero_grads(xp, features, weights)
    xr, z = _l2_parts(xp, features, weights, alpha, eps)
    hot = one_hot(labels, weights.shape[0], axis=1, xp=xp)
    k, cot = _unit_cotangent(xp, cot)
    sg = _softmax_grad(xp, cot, *z, hot)  # dL/dz / k; z = alpha x_hat W^T
    a = _dd_const(xp, alpha, features)
    f, g_t = _dd_expand(xp, _dd_mul(xp, sg.f, a)), _dd_expand(xp, _dd_mul(xp, sg.g, a))
    w_y = xp.take(weights, labels, axis=0)
    gx = _dd_add(xp, _dd_mul(xp, f, _dd_matmul(xp, sg.e, (weights.T, None), inner=True)), _dd_mul(xp, g_t, (w_y, xp.zeros_like(w_y))))
    gx = _dd_div(xp, _project(xp, gx, xr), xr.norm_dd)
    gw = _dd_matmul(xp, _dd_t(sg.e), _dd_t(_dd_mul(xp, f, xr.hat_dd)), inner=True)
    gw = _dd_add(xp, gw, _scatter_rows(xp, hot, _dd_mul(xp, g_t, xr.hat_dd)))
    return _times(xp, gx, k), None, _times(xp, gw, k)


# ------------------------------------------------------------------------------------------------
# Multiplicative angular margin: L-Softmax and SphereFace (A-Softmax).

# Chebyshev polynomials T_m(c) = cos(m theta) and their derivatives, m = 1..4 (margin_losses.md section 0),
# as integer coefficients, lowest degree first.
_CHEBYSHEV = {
    1: ((0, 1), (1,)),
    2: ((-1, 0, 2), (0, 4)),
    3: ((0, -3, 0, 4), (-3, 0, 12)),
    4: ((1, 0, -8, 0, 8), (0, -16, 0, 32)),
}


def _cos_of_pi_fraction(q):
    """``cos(q pi)`` for ``q`` in {1/4, 1/3, 1/2, 2/3, 3/4} (L-Softmax's k-boundaries) as a Python double-double:
    exact where it is rational, so that a cosine exactly at a boundary is decided as the oracle does."""
    with decimal.localcontext() as ctx:
        ctx.prec = _DD_DIGITS
        half_root2 = decimal.Decimal(2).sqrt() / 2
    return {
        Fraction(1, 4): _dd_decimal(half_root2),
        Fraction(1, 3): (0.5, 0.0),
        Fraction(1, 2): (0.0, 0.0),
        Fraction(2, 3): (-0.5, 0.0),
        Fraction(3, 4): _dd_decimal(-half_root2),
    }[q]


def margin_lambda_schedule(iteration, *, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0):
    """The L-Softmax / SphereFace annealing of lambda: ``max(lambda_min, base (1 + gamma iteration)^-power)``.

    Defaults are SphereFace's training prototxt (``lambda = max(5, 1000 / (1 + 0.12 it))``, floor reached
    near iteration 1659); L-Softmax's MNIST example is ``base=1000, gamma=2.5e-5, power=35, lambda_min=0``;
    the Caffe proto defaults ``base=1, gamma=0, power=1, lambda_min=0`` give lambda = 1. Caffe counts
    ``iteration`` in layer forwards, starting at ``iteration + 1`` on the first one.
    """
    if iteration < 0:
        raise ValueError(f"margin_lambda_schedule: iteration must be >= 0, got {iteration!r}")
    return max(lambda_min, base * (1.0 + gamma * iteration) ** (-power))


def _multiplicative_psi(xp, c, m):
    """``psi = (-1)^k T_m(c) - 2k`` with ``k = floor(m theta / pi)`` read from ``c`` (``theta >= j pi / m`` iff
    ``c <= cos(j pi / m)``: no acos), and ``dpsi/dc = (-1)^k T_m'(c)`` (k piecewise constant; psi is C^1
    at the boundaries, where T_m' = 0); double-doubles from the double-double ``c``."""
    coeffs, dcoeffs = _CHEBYSHEV[m]
    t = _dd_horner(xp, [(float(v), 0.0) for v in coeffs], c)
    dt = _dd_horner(xp, [(float(v), 0.0) for v in dcoeffs], c)
    k = xp.zeros_like(c[0])
    for j in range(1, m):
        k = k + xp.astype(~_dd_gt(c, _dd_const(xp, _cos_of_pi_fraction(Fraction(j, m)), c[0])), c[0].dtype)
    sign = 1 - 2 * (k - 2 * xp.floor(k / 2))
    return _dd_add(xp, (sign * t[0], sign * t[1]), (-2 * k, xp.zeros_like(k))), (sign * dt[0], sign * dt[1])


class _Angular(NamedTuple):
    """:func:`_angular_parts`: the rows' records, the one-hot labels, the target geometry, the target's
    logit scale ``r`` (``|x| |W_y|`` or ``|x|``), ``f`` and ``f'`` at the target, ``(psi, psi')``, and the
    logits ``z + z_lo``, all double-doubles (N,) or (N, C)."""

    xr: tuple
    wr: tuple
    hot: object
    target: object
    r: tuple
    f: tuple
    df: tuple
    psi: tuple
    z: tuple


def _target_norm(xp, rows, index):
    """``|W_y|`` (the double-double norm of row ``index`` of ``rows``), one per sample."""
    return xp.take(xp.reshape(rows.norm, (-1,)), index, axis=0), xp.take(xp.reshape(rows.norm_lo, (-1,)), index, axis=0)


def _angular_parts(xp, features, labels, weights, m, lambda_, weight_norm, eps=None):
    """``z_ij = r_ij f_ij(c_ij)``: off the target ``x . W_j`` (L-Softmax, ``r = |x| |W_j|``, ``f = c``) or
    ``x . W_hat_j`` (SphereFace, ``r = |x|``), the raw products whatever ``eps`` clamps (``|x| x_hat = x``),
    by :func:`_dd_matmul`; at the target ``r f(c)`` with ``f = (lambda c + psi) / (1 + lambda)`` in
    double-double (with ``eps`` the norms that scale the logits are the clamped ones)."""
    xr = _normalise_rows(xp, features, eps)
    wr = _normalise_rows(xp, weights, eps)
    z = _dd_matmul(xp, (features, None), (weights, None) if weight_norm else wr.hat_dd)
    hot = one_hot(labels, weights.shape[0], axis=1, xp=xp)
    target = _target_geometry(xp, xr, wr, labels)
    psi = _multiplicative_psi(xp, target.c, m)
    lam = _dd_const(xp, lambda_, features)
    one_lam = _dd_add(xp, _dd_const(xp, 1.0, features), lam)
    f = _dd_div(xp, _dd_add(xp, _dd_mul(xp, lam, target.c), psi[0]), one_lam)
    df = _dd_div(xp, _dd_add(xp, lam, psi[1]), one_lam)
    r = xp.reshape(xr.norm, (-1,)), xp.reshape(xr.norm_lo, (-1,))
    if weight_norm:
        r = _dd_mul(xp, r, _target_norm(xp, wr, labels))
    zt = _dd_expand(xp, _dd_mul(xp, r, f))
    z = xp.where(hot, zt[0], z[0]), xp.where(hot, zt[1], z[1])
    return _Angular(xr, wr, hot, target, r, f, df, psi, z)


def _angular_forward(xp, features, labels, weights, m, lambda_, weight_norm, eps=None):
    if features.shape[0] == 0:
        return _empty(xp, features)
    return _ce(xp, *_angular_parts(xp, features, labels, weights, m, lambda_, weight_norm, eps).z, labels)


def _scatter_rows(xp, hot, v):
    """``hot^T v``: row i of the double-double ``v`` (N, D) added to row ``y_i`` (the one-hot ``hot`` (N, R)),
    each sum to the precision of its own largest term (:func:`_dd_matmul`'s ``inner``)."""
    return _dd_matmul(xp, (xp.astype(hot, v[0].dtype).T, None), _dd_t(v), inner=True)


def _angular_vjp(xp, cot, features, labels, weights, m, lambda_, weight_norm, eps=None, rule="exact"):
    """``z_ij = r_ij f_ij(c_ij)``: off the target the linear layer (``d(x . W_j) = W_j dx + x dW_j``, or through
    the normalisation of ``W`` for SphereFace); at the target ``dz/dx = (r/|x|)[f x_hat + f' (I - x_hat x_hat^T) W_hat]``
    and, for raw W (L-Softmax), ``dz/dW = (r/|W|)[f W_hat + f' (I - W_hat W_hat^T) x_hat]``; for normalised W
    (SphereFace) ``|x| f' (I - W_hat W_hat^T) x_hat / |W|``. The tangents come from :class:`_Target` (no
    cancellation as ``|c| -> 1``) and everything is summed in double-double. Where ``eps`` clamps a norm it
    is a constant and ``v_hat = v / eps`` is linear: that row's radial ``f`` term is dropped and its tangent
    is ``W_hat`` (``x_hat``) itself.

    ``rule='caffe'`` (SphereFace only, :func:`sphereface_caffe_gradient`): wy1iu/sphereface's update
    direction instead, the target's ``(psi', (psi - c psi') / |x|)`` scaled to unit length in the feature
    rule and ``topdiff^T X`` for the weights."""
    if features.shape[0] == 0:
        return _zero_grads(xp, features, weights)
    parts = _angular_parts(xp, features, labels, weights, m, lambda_, weight_norm, eps)
    xr, wr, hot, target = parts.xr, parts.wr, parts.hot, parts.target
    k, cot = _unit_cotangent(xp, cot)
    sg = _softmax_grad(xp, cot, *parts.z, hot)  # dL/dz / k
    if rule == "caffe":
        gx, _, gw = _caffe_gradient(xp, sg.full(xp, hot)[0], parts, features, lambda_)
        return k * gx, None, k * gw
    g_t, f = sg.g, _dd_expand(xp, sg.f)

    def radial_plus_tangent(rows, hat, tangent, coef):
        """``coef [f v_hat + f' t]`` (the ``f`` term dropped where ``rows`` is clamped)."""
        out = _dd_add(xp, _dd_mul(xp, _dd_expand(xp, parts.f), hat), _dd_mul(xp, _dd_expand(xp, parts.df), tangent))
        if rows is not None:
            out = _dd_where(xp, xp.expand_dims(rows, axis=1), _dd_mul(xp, _dd_expand(xp, parts.df), tangent), out)
        return _dd_mul(xp, _dd_expand(xp, coef), out)

    x_norm = xp.reshape(xr.norm, (-1,)), xp.reshape(xr.norm_lo, (-1,))
    if weight_norm:  # L-Softmax: r = |x| |W_y|
        w_norm = _target_norm(xp, wr, labels)
        gx = _dd_mul(xp, f, _dd_matmul(xp, sg.e, (weights.T, None), inner=True))
        gx = _dd_add(xp, gx, radial_plus_tangent(target.x_plain, target.x, target.tangent_x(), _dd_mul(xp, g_t, w_norm)))
        gw = _dd_matmul(xp, _dd_t(sg.e), _dd_t(_dd_mul(xp, f, (features, xp.zeros_like(features)))), inner=True)
        gw = _dd_add(xp, gw, _scatter_rows(xp, hot, radial_plus_tangent(target.w_plain, target.w, target.tangent_w(), _dd_mul(xp, g_t, x_norm))))
    else:  # SphereFace: r = |x|, W normalised
        gx = _dd_mul(xp, f, _dd_matmul(xp, sg.e, _dd_t(wr.hat_dd), unit_b=True))
        gx = _dd_add(xp, gx, radial_plus_tangent(target.x_plain, target.x, target.tangent_x(), g_t))
        pull = _dd_mul(xp, _dd_expand(xp, _dd_mul(xp, _dd_mul(xp, g_t, x_norm), parts.df)), target.tangent_w())
        off = _dd_matmul(xp, _dd_t(sg.e), _dd_t(_dd_mul(xp, f, (features, xp.zeros_like(features)))), inner=True)
        gw = _dd_add(xp, _project(xp, off, wr), _scatter_rows(xp, hot, pull))
        gw = _dd_div(xp, gw, wr.norm_dd)
    return _times(xp, gx, k), None, _times(xp, gw, k)


def _caffe_gradient(xp, gz, parts, features, lambda_):
    """Caffe's SphereFace direction (float64) from ``gz = dL/dz``: the linear-layer feature rule with the
    target's coefficients of :func:`_caffe_target_coefficients`, and ``topdiff^T X`` for the weights."""
    t = parts.target
    xn = xp.reshape(parts.xr.norm, (-1,))
    a = xp.zeros_like(gz)
    a, b = _caffe_target_coefficients(xp, gz, parts.hot, a, gz, (t.c[0], parts.psi[0][0], parts.psi[1][0]), xn, lambda_)
    gx = xp.sum(a, axis=1, keepdims=True) * parts.xr.hat + xp.matmul(b, parts.wr.hat)
    return gx, None, xp.matmul(gz.T, features)


def _caffe_target_coefficients(xp, gz, hot, a, b, target, xn, lambda_):
    """MarginInnerProductLayer's feature rule at the target (margin_losses.md 2.1 point 3): the exact
    ``dz_y/dx = [lambda W_hat_y + psi' W_hat_y + ((psi - c psi') / |x|) x] / (1 + lambda)`` with the pair
    ``(psi', (psi - c psi') / |x|)`` divided by its Euclidean length ``rho``; off-target entries as exact."""
    c, psi, dpsi = target
    cx = (psi - c * dpsi) / xp.reshape(xn, (-1,))  # Caffe's coeff_x, which multiplies the raw x
    big = xp.maximum(xp.abs(dpsi), xp.abs(cx))
    live = big > 0
    one = xp.where(live, big, xp.ones_like(big))
    rho = one * xp.sqrt((dpsi / one) ** 2 + (cx / one) ** 2)  # no overflow for tiny |x|
    rho = xp.where(live, rho, xp.ones_like(rho))
    g_t = xp.sum(xp.where(hot, gz, xp.zeros_like(gz)), axis=1)
    a_t = g_t * (psi - c * dpsi) / rho / (1 + lambda_)  # times x_hat: (psi - c psi') x_hat = coeff_x |x| x_hat
    b_t = g_t * (lambda_ + dpsi / rho) / (1 + lambda_)
    return (
        xp.where(hot, xp.expand_dims(a_t, axis=1), a),
        xp.where(hot, xp.expand_dims(b_t, axis=1), b),
    )


def _angular_check(xp, name, features, labels, weights, **params):
    _check(xp, name, features, labels, weights, eps=params["eps"])


_ANGULAR_FEATURES = Input("features", shape="N D", domain=D.angular_features, doc="feature vectors (raw)")
_LAMBDA = Param(
    "lambda_", 0.0, low=0.0, grid=(5.0,),
    doc="lambda: target logit (lambda |x||W| cos + |x||W| psi) / (1 + lambda); anneal with margin_lambda_schedule",
)


@loss(
    family="margin",
    inputs=[_ANGULAR_FEATURES, _LABELS, Input("weights", shape="C D", domain=D.small_weights, doc="class weights W (raw)")],
    params=[Param("m", 4, kind="int", low=1, high=4, grid=(1, 2, 3), doc="integer multiplicative margin (type SINGLE..QUADRUPLE)"), _LAMBDA, _EPS],
    check=_angular_check,
    counterparts={
        "caffe": "LargeMarginInnerProductLayer (wy1iu/LargeMargin_Softmax_Loss, then SoftmaxWithLoss; lambda_ from its schedule; CPU adds 1e-9 to |x||W|)",
        "pml": "pytorch_metric_learning.losses.LargeMarginSoftmaxLoss(margin=4, scale=1) (lambda_=0; W stored as (D, C))",
    },
    references=[
        "Liu, Wen, Yu, Yang, Large-Margin Softmax Loss for Convolutional Neural Networks, ICML 2016",
        "margin_losses.md sections 1, 7, 14 (check 4, 5)",
    ],
)
def lsoftmax_loss(xp, features, labels, weights, *, m, lambda_, eps):
    """L-Softmax: ``z_ij = W_j . x_i`` (j != y_i), ``z_iy = |W_y||x_i| (lambda cos + psi(cos)) / (1 + lambda)``; softmax CE.

    ``psi(c) = (-1)^k cos(m theta) - 2k``, ``k = floor(m theta / pi)``, with ``cos(m theta) = T_m(c)`` the
    Chebyshev polynomial (no acos; k from thresholds on c; Caffe's sign tricks are the same function). No
    bias, weights raw. ``m = 1`` is plain softmax cross-entropy of ``W x``. Defaults ``m = 4`` (MNIST
    example, PML) and ``lambda_ = 0`` (PML; the end of the annealing, see :func:`margin_lambda_schedule`).

    Gradient, with ``g = p - onehot(y)``, ``f = c`` off-target and ``(lambda c + psi)/(1 + lambda)`` on it,
    ``f' = (lambda + (-1)^k T_m'(c)) / (1 + lambda)`` (k held constant: psi is C^1 at the k-boundaries):
    ``dL/dx_i = sum_j g_ij |W_j| [(f - c f') x_hat_i + f' W_hat_j]``, ``dL/dW_j = sum_i g_ij |x_i| [(f - c f') W_hat_j + f' x_hat_i]``
    (off-target f' = 1 and f - c f' = 0: the plain linear-layer gradient); the same as Caffe's backward
    (margin_losses.md 1.2).

    ``eps``: ``None`` (default): a zero row raises ``ValueError`` (Caffe divides by zero); given, the norms
    are ``max(|v|, eps)`` as ``F.normalize``: ``x_hat = x / max(|x|, eps)``, ``c = x_hat . W_hat`` and the
    logit scale ``|x||W|`` are the clamped ones, and where a norm is clamped it is the constant eps
    (``v_hat = v / eps`` is linear), so that row's ``(f - c f')`` term is dropped from the gradient.

    Shapes: ``features (N, D)``, ``labels (N,)``, ``weights (C, D)``.
    """
    return _angular_forward(xp, features, labels, weights, m, lambda_, True, eps)


@lsoftmax_loss.defvjp
def _lsoftmax_vjp(xp, cot, features, labels, weights, *, m, lambda_, eps):
    return _angular_vjp(xp, cot, features, labels, weights, m, lambda_, True, eps)


@loss(
    family="margin",
    inputs=[_ANGULAR_FEATURES, _LABELS, _WEIGHTS],
    params=[Param("m", 4, kind="int", low=1, high=4, grid=(2, 3), doc="integer multiplicative margin"), _LAMBDA, _EPS],
    check=_angular_check,
    counterparts={
        "caffe": "MarginInnerProductLayer (wy1iu/sphereface: forward only; its backward normalises the feature gradient and ignores the W normalisation)",
        "sphereface_pytorch": "net_sphere.AngleLinear(m=4) + AngleLoss(gamma=0) (clcarwin; lambda_ = max(5, 1500 / (1 + 0.1 it)))",
        "pml": "pytorch_metric_learning.losses.SphereFaceLoss(margin=4, scale=1) (lambda_=0; W stored as (D, C))",
        "arcface-pytorch": "models.metrics.SphereProduct(m=4) (ronghuaiyang; exact autograd gradient)",
    },
    references=[
        "Liu et al., SphereFace: Deep Hypersphere Embedding for Face Recognition, CVPR 2017",
        "margin_losses.md sections 2, 7",
    ],
)
def sphereface_loss(xp, features, labels, weights, *, m, lambda_, eps):
    """SphereFace / A-Softmax: ``z_ij = |x_i| cos_ij`` (j != y_i), ``z_iy = |x_i| (lambda cos + psi(cos)) / (1 + lambda)``.

    ``W`` is normalised (no bias), ``psi`` as :func:`lsoftmax_loss` (``(-1)^k T_m(c) - 2k``). Defaults
    ``m = 4`` and ``lambda_ = 0`` (PML; official training anneals ``lambda_ = max(5, 1000 / (1 + 0.12 it))``,
    :func:`margin_lambda_schedule`).

    Gradient: the exact one (as clcarwin / ronghuaiyang autograd). With ``g = p - onehot(y)`` and
    ``f, f'`` as in :func:`lsoftmax_loss`: ``dL/dx_i = sum_j g_ij [(f - c f') x_hat_i + f' W_hat_j]``,
    ``dL/dW_j = (I - W_hat_j W_hat_j^T)(sum_i g_ij |x_i| f'_ij x_hat_i) / |W_j|``. Caffe's backward (a
    normalised feature coefficient and the plain ``topdiff^T X`` for W, margin_losses.md 2.1) is not the
    gradient of any objective, so it is not this loss's VJP: :func:`sphereface_caffe_gradient` gives it.

    ``eps`` as :func:`lsoftmax_loss` (``None``: zero rows raise ``ValueError``; given: ``F.normalize``
    norms ``max(|v|, eps)``, which also scale the logits; a clamped row's norm derivative is dropped).

    Shapes: ``features (N, D)``, ``labels (N,)``, ``weights (C, D)``.
    """
    return _angular_forward(xp, features, labels, weights, m, lambda_, False, eps)


@sphereface_loss.defvjp
def _sphereface_vjp(xp, cot, features, labels, weights, *, m, lambda_, eps):
    return _angular_vjp(xp, cot, features, labels, weights, m, lambda_, False, eps)


def sphereface_caffe_gradient(features, labels, weights, *, m=4, lambda_=0.0, reduction="mean"):
    """wy1iu/sphereface's Caffe update direction: ``(value, (d_features, d_weights))``. Not a gradient.

    ``value`` is :func:`sphereface_loss`'s (same inputs, ``m``, ``lambda_``, ``reduction``; validated by
    calling it). The directions are what ``MarginInnerProductLayer::Backward`` computes from the softmax
    layer's ``topdiff = dL/dz`` (margin_losses.md 2.1 points 3 and 4, README "Note 1", issue #24):

    - ``d_features``: off-target as the exact gradient (``topdiff_ij W_hat_j``); at the target
      ``topdiff_iy [lambda W_hat_y + (psi' W_hat_y + ((psi - c psi') / |x|) x) / rho] / (1 + lambda)`` with
      ``rho = sqrt(psi'^2 + ((psi - c psi') / |x|)^2)``: the exact coefficient pair scaled to unit length
      (the exact gradient is this with ``rho`` replaced by 1; ``m = 1`` has ``rho = 1``: the exact feature gradient);
    - ``d_weights = topdiff^T X``: the plain inner-product rule, which ignores the margin and the weight
      normalisation (Caffe stores ``W_hat`` in place and steps it; the maintainers call this close to
      projected gradient descent).

    The pair is not the derivative of the loss, nor in general of any one objective (the rescaling
    differs per sample, the weight rule drops the margin), so this is a helper, not the VJP of
    :func:`sphereface_loss` (whose gradient is the exact one). ``reduction`` enters through ``topdiff`` as in ``value_and_grad`` ('mean': Caffe's
    ``SoftmaxWithLoss`` batch normalisation). Shapes as :func:`sphereface_loss`; no ``eps`` (Caffe has none:
    zero rows raise).
    """
    value = sphereface_loss(features, labels, weights, m=m, lambda_=lambda_, reduction=reduction)  # validates
    xp = namespace(features, labels, weights)
    n = features.shape[0]
    per_sample = xp.zeros((n,), dtype=features.dtype, device=array_api_compat.device(features))
    cot = reduce_vjp(xp, xp.ones_like(value), per_sample, reduction)  # dL / d(per-sample loss)
    gx, _, gw = _angular_vjp(xp, cot, features, labels, weights, m, lambda_, False, None, rule="caffe")
    return value, (gx, gw)


# ------------------------------------------------------------------------------------------------
# Distance-based logits: RBF-Softmax and the large-margin Gaussian mixture (L-GM) loss. Raw features
# and class centres (no normalisation); logits are functions of the squared distances |W_j - x_i|^2.


def _centre_differences(xp, features, weights):
    """``(diff, h)``: ``diff_ijk = h (W_jk - x_ik)`` (N, C, D) as an exact double-double (TwoSum), written once
    for both losses: the differences themselves, not the expanded ``|x|^2 + |W|^2 - 2 x.W``, which cancels
    catastrophically for near points (absolute error ``~eps (|x|^2 + |W|^2)``, so a feature at distance 1e-3
    of a centre at norm 1e3 would get a relative error ~1 in its squared distance; trained features sit next
    to their centres, far from the origin). This is the official RBF-Softmax form too; it costs an (N, C, D)
    intermediate. ``h = 1``, or ``1/2`` when an entry exceeds a quarter of the dtype's maximum (then
    ``W - x`` could overflow; halving is exact but for the last bit of subnormals).
    """
    top = xp.maximum(xp.max(xp.abs(features)), xp.max(xp.abs(weights)))
    h = xp.where(top > xp.finfo(features.dtype).max / 4, xp.full_like(top, 0.5), xp.ones_like(top))
    return two_sum(xp, xp.expand_dims(weights * h, axis=0), -xp.expand_dims(features * h, axis=1)), h


def _dd_sum_axis(xp, v, axis):
    """The double-double sum of ``v`` along ``axis`` (Sum2 on the axis moved last)."""
    return dd_sum(xp, xp.moveaxis(v[0], axis, -1), xp.moveaxis(v[1], axis, -1))


def _distance_check(xp, name, features, labels, weights, **params):
    _check(xp, name, features, labels, weights, normalised=(), eps=None)


# Beyond this many sqrt(gamma), exp(-|W - x|^2 / gamma) <= exp(-64^2) underflows to 0 in every float format.
_RBF_FAR = 64.0


def _rbf_kernel(xp, features, weights, gamma):
    """``(K, diff, h)``: ``K_ij = exp(-|W_j - x_i|^2 / gamma)`` as a double-double, exactly 0 where
    ``max_k |W_jk - x_ik| > 64 sqrt(gamma)`` (there it underflows anyway; deciding it first keeps the
    square from overflowing)."""
    diff, h = _centre_differences(xp, features, weights)
    far = xp.max(xp.abs(diff[0]), axis=2) > (_RBF_FAR * math.sqrt(gamma)) * h
    near = _dd_where(xp, xp.expand_dims(~far, axis=2), diff, _dd_zeros(xp, diff[0]))
    d = _dd_row_dot(xp, near, near)
    d = (d[0] / h) / h, (d[1] / h) / h
    k = _dd_exp(xp, _dd_div(xp, _dd_neg(d), _dd_const(xp, gamma, features)))
    return _dd_where(xp, far, _dd_zeros(xp, k[0]), k), diff, h


# The domain generators live in the Domains section at the end of this module (looked up at call time).
@loss(
    family="margin",
    inputs=[
        Input("features", shape="N D", domain=D.rbf_features, doc="feature vectors (raw)"),
        _LABELS,
        Input("weights", shape="C D", domain=D.rbf_centres, doc="class centres W (prototypes), one row per class (raw)"),
    ],
    params=[
        Param("scale", 35.0, low=0.0, low_open=True, grid=(4.0,), doc="s: logits are s * K (ImageNet config 35)"),
        Param("gamma", 16.0, low=0.0, low_open=True, grid=(2.0,), doc="gamma: K = exp(-|W - x|^2 / gamma) (ImageNet config 16)"),
    ],
    check=_distance_check,
    counterparts={
        "rbf_softmax": "pycls.losses.rbflogit.RBFLogits(feature_dim, class_num, scale=35, gamma=16) (2han9x1a0release/RBF-Softmax, "
        "configs/ResNet-50-RBF_8gpu.yaml RBF_SCALE 35, RBF_GAMMA 16; then CrossEntropyLoss; its bias parameter is unused)",
        "ports": "RBFLogits(feature_dim, class_num, scale, gamma) (third-party PyTorch ports: s = 4, gamma = 1.8 for 10 classes, "
        "s = 14, gamma = 2.2 otherwise, s = 4, gamma = 2 on CIFAR-100; some take |x|^2 + |W|^2 - 2 x.W, which cancels for near points)",
    },
    references=[
        "Zhang, Zhao, Qiao, Li, RBF-Softmax: Learning Deep Representative Prototypes with Radial Basis Function Softmax, ECCV 2020",
        "margin_losses.md section 10.4",
    ],
)
def rbf_softmax_loss(xp, features, labels, weights, *, scale, gamma):
    """RBF-Softmax: ``z_ij = s exp(-|W_j - x_i|^2 / gamma)``, softmax cross-entropy over the classes j.

    ``l_i = -log softmax(z_i)_{y_i}`` with ``K_ij = exp(-d_ij / gamma)`` the Gaussian kernel of the squared
    distance to the class centre ``W_j`` (raw features and centres, nothing normalised, no bias). Defaults
    ``s = 35, gamma = 16``: the official ImageNet config (ResNet-50); third-party ports use ``s = 4,
    gamma = 1.8`` (10 classes), ``s = 14, gamma = 2.2`` or ``s = 4, gamma = 2`` (CIFAR-100).

    Gradient: ``dz_ij/dx_i = (2 s K_ij / gamma)(W_j - x_i) = -dz_ij/dW_j`` (chain rule through ``exp`` and
    ``d_ij = |W_j - x_i|^2``), so with ``g = p - onehot(y)``: ``dL/dx_i = (2 s / gamma) sum_j g_ij K_ij (W_j - x_i)``
    and ``dL/dW_j = -(2 s / gamma) sum_i g_ij K_ij (W_j - x_i)``, summed over the differences themselves.

    Numerics: ``d_ij`` from the differences (see :func:`_centre_differences`: no cancellation for a
    feature next to a centre far from the origin, no overflow for any finite input), ``K`` and the
    logits in double-double (:func:`_dd_exp`), the gradient summed in double-double. Where ``K``
    underflows for every class (a feature far from all centres) the logits are all 0: the loss is
    ``log C`` (a uniform softmax) and the gradient exactly 0, as in the reference code.

    Shapes: ``features (N, D)``, ``labels (N,)`` in ``[0, C)``, ``weights (C, D)``; D may differ from C.
    """
    if features.shape[0] == 0:
        return _empty(xp, features)
    k, _, _ = _rbf_kernel(xp, features, weights, gamma)
    return _ce(xp, *_dd_mul(xp, k, _dd_const(xp, scale, features)), labels)


@rbf_softmax_loss.defvjp
def _rbf_softmax_vjp(xp, cot, features, labels, weights, *, scale, gamma):
    if features.shape[0] == 0:
        return _zero_grads(xp, features, weights)
    k, diff, h = _rbf_kernel(xp, features, weights, gamma)
    hot = one_hot(labels, weights.shape[0], axis=1, xp=xp)
    c, cot = _unit_cotangent(xp, cot)
    gz = _softmax_grad(xp, cot, *_dd_mul(xp, k, _dd_const(xp, scale, features)), hot).full(xp, hot)
    rate = _dd_div(xp, _dd_const(xp, 2 * scale, features), _dd_const(xp, gamma, features))  # 2 s / gamma (2 s exact)
    terms = _dd_mul(xp, _dd_expand(xp, _dd_mul(xp, _dd_mul(xp, gz, k), rate), axis=2), diff)  # h dz/dx_i summands
    gx = _dd_sum_axis(xp, terms, 1)
    gw = _dd_sum_axis(xp, terms, 0)
    return _times(xp, gx, c) / h, None, -_times(xp, gw, c) / h


class _LGM(NamedTuple):
    """:func:`_lgm_parts`: the shifted logits ``r`` (N, C), ``d_y`` (N,), ``delta_k = mu_k - mu_y`` (N, C, D) and
    ``x - mu_y`` (N, D), all double-doubles, and the one-hot labels."""

    r: tuple
    d_y: tuple
    delta: tuple
    to_x: tuple
    hot: object


def _lgm_parts(xp, features, labels, weights, alpha):
    """The logits shifted by ``d_y`` (the softmax is the same): ``r_k = z_k + d_y = d_y - d_k`` for ``k != y`` and
    ``r_y = -alpha d_y``, with ``d_y - d_k = (mu_k - mu_y) . (x - (mu_k + mu_y) / 2)``: not a difference of two
    large squared distances (far from the centres both are ~|x|^2 / 2 and their difference ~|x| |mu_k - mu_y|
    cancels to nothing), the differences exact (TwoSum), the dot products in double-double. The margin
    ``alpha d_y`` stays on the target alone: added to every other logit it would swamp their differences."""
    mu_y = xp.take(weights, labels, axis=0)
    w = xp.expand_dims(weights, axis=0)
    y = xp.expand_dims(mu_y, axis=1)
    delta = two_sum(xp, w, -y)
    mid = two_sum(xp, w, y)
    mid = _dd_sub(xp, (xp.expand_dims(features, axis=1), xp.zeros_like(mid[0])), (mid[0] / 2, mid[1] / 2))
    to_x = two_sum(xp, features, -mu_y)
    dy = _dd_row_dot(xp, to_x, to_x)
    dy = dy[0] / 2, dy[1] / 2
    hot = one_hot(labels, weights.shape[0], axis=1, xp=xp)
    r = _dd_row_dot(xp, delta, mid)  # 0 at the target
    margin = _dd_expand(xp, _dd_neg(_dd_mul(xp, _dd_const(xp, alpha, features), dy)))
    return _LGM(_dd_where(xp, hot, margin, r), dy, delta, to_x, hot)


@loss(
    family="margin",
    inputs=[
        Input("features", shape="N D", domain=D.lgm_features, doc="feature vectors (raw)"),
        _LABELS,
        Input("weights", shape="C D", domain=D.lgm_means, doc="class means mu, one row per class (raw)"),
    ],
    params=[
        Param("alpha", 1.0, low=0.0, grid=(0.0, 0.1), doc="alpha: the target's distance is multiplied by 1 + alpha (margin)"),
        Param("lambda_", 0.1, low=0.0, grid=(0.0,), doc="lambda: weight of the likelihood regulariser |x - mu_y|^2 / 2"),
    ],
    check=_distance_check,
    counterparts={
        "softmax_variants": "LGMLoss_v0(num_classes, feat_dim, alpha=1.0) (YirongMao/softmax_variants: CrossEntropyLoss(margin_logits) "
        "+ 0.1 * likelihood, train_mnist_LGM.py; LGMLoss with log_covs = 0 is the same)",
        "lgm_caffe": "ClassDistance layer, metric L2, isotropic, update_sigma false (WeitaoVan/L-GM-loss: margin_mul = alpha, center_coef = lambda_; "
        "distances divided by sigma + 1e-4 = 1.0001; the regulariser enters the backward only, not the reported loss)",
        "lgm_tensorflow": "resnet_model.lgm_logits(feat, num_classes, labels, alpha=0.1, lambda_=0.01) (WeitaoVan/L-GM-loss tensorflow demo: "
        "softmax CE of its logits + likelihood_reg_loss; expanded |x|^2 + |mu|^2 - 2 x.mu distance)",
    },
    references=[
        "Wan, Zhong, Li, Chen, Rethinking Feature Distribution for Loss Functions in Image Classification, CVPR 2018",
        "margin_losses.md section 8 (LGMLoss, LGMLoss_v0)",
    ],
)
def lgm_loss(xp, features, labels, weights, *, alpha, lambda_):
    """Large-margin Gaussian mixture (L-GM) loss, identity covariance and equal priors.

    ``d_ik = |x_i - mu_k|^2 / 2``, margin logits ``z_ik = -d_ik (1 + alpha [k = y_i])``, and
    ``l_i = -log softmax(z_i)_{y_i} + lambda d_{i y_i}``: the classification loss with the margin plus
    the likelihood regulariser ``-log N(x_i; mu_y, I)`` less its constant ``(D/2) log 2 pi``. The 1/2 is in
    every implementation's distance: the official Caffe layer's ``-0.5 |W - x|^2 / (sigma + 1e-4)``, its
    TensorFlow demo's ``-0.5 (XX - 2 XY + YY)``, LGMLoss_v0's ``-0.5 dist`` (the paper's
    ``d_k = (x - mu_k)^T Sigma_k^{-1} (x - mu_k) / 2`` [paper, not re-verified]; ``-1/2 log|Sigma|`` and the
    priors cancel here). The regulariser is ``|x - mu_y|^2 / 2`` averaged over the batch in all three
    (LGMLoss_v0 ``(1/B) sum |x - mu_y|^2 / 2``, ``tf.nn.l2_loss / N``, Caffe's gradient ``center_coef / M (x - mu_y)``),
    which is this per-sample form under ``reduction='mean'`` (the paper writes L_lkd as a sum over the
    batch [not re-verified]: that is ``reduction='sum'`` of the regulariser, i.e. lambda times N).

    Defaults ``alpha = 1.0, lambda_ = 0.1``: YirongMao's MNIST example (``train_mnist_LGM.py``,
    LGMLoss_v0, loss weight 0.1), as margin_losses.md section 8 records. The official CIFAR-100 Caffe
    example steps alpha from 0.1 to 0.3 with ``center_coef = 0.1``; the TensorFlow demo uses 0.1 and 0.01.
    ``alpha = lambda_ = 0`` is softmax cross-entropy of ``-|x - mu_k|^2 / 2``.

    Gradient, with ``g = p - onehot(y)`` of the margin logits: ``dz_ik/dx_i = (1 + alpha [k = y_i])(mu_k - x_i)``
    and ``d(lambda d_iy)/dx_i = lambda (x_i - mu_y)``, so ``dL/dx_i = sum_k B_ik (mu_k - x_i)`` and
    ``dL/dmu_k = -sum_i B_ik (mu_k - x_i)`` with ``B = g (1 + alpha onehot) - lambda onehot``.

    Numerics: distances from the differences, so a feature next to its mean keeps its precision far from
    the origin (the TensorFlow demo's expanded form does not), and the logits relative to the target's
    from ``(mu_k - mu_y) . (x - (mu_k + mu_y) / 2)`` (:func:`_lgm_parts`): far from every mean, ``d_y - d_k``
    is a small difference of two huge squared distances. All in double-double, the gradient without its
    cancelling ``sum_k (p_k - onehot_k) x`` terms.

    Shapes: ``features (N, D)``, ``labels (N,)`` in ``[0, C)``, ``weights (C, D)`` (the means); D may differ from C.
    """
    if features.shape[0] == 0:
        return _empty(xp, features)
    parts = _lgm_parts(xp, features, labels, weights, alpha)
    ce = _ce(xp, *parts.r, labels)
    if lambda_ == 0:
        return ce
    return _dd_add(xp, (ce, xp.zeros_like(ce)), _dd_mul(xp, _dd_const(xp, lambda_, features), parts.d_y))[0]


@lgm_loss.defvjp
def _lgm_vjp(xp, cot, features, labels, weights, *, alpha, lambda_):
    """``dL/dx = cot [sum_{k != y} p_k (mu_k - mu_y) + (alpha (1 - p_y) + lambda)(x - mu_y)]`` (the ``sum_k (p_k -
    onehot_k) x`` terms cancel exactly, so they are not formed) and ``dL/dmu_k = cot p_k (x - mu_k)`` (k != y),
    ``cot ((1 - p_y)(1 + alpha) + lambda)(mu_y - x)`` (k = y), summed over the samples in double-double."""
    if features.shape[0] == 0:
        return _zero_grads(xp, features, weights)
    parts = _lgm_parts(xp, features, labels, weights, alpha)
    hot = parts.hot
    k, c = _unit_cotangent(xp, cot)
    sg = _softmax_grad(xp, c, *parts.r, hot)
    off, rest = _dd_mul(xp, sg.e, _dd_expand(xp, sg.f)), sg.rest  # cot p_k off the target (0 at it)
    a, lam = _dd_const(xp, alpha, features), _dd_const(xp, lambda_, features)
    pull = _dd_mul(xp, c, _dd_add(xp, _dd_mul(xp, a, rest), lam))  # cot (alpha (1 - p_y) + lambda)
    gx = _dd_add(xp, _dd_sum_axis(xp, _dd_mul(xp, _dd_expand(xp, off, axis=2), parts.delta), 1), _dd_mul(xp, _dd_expand(xp, pull), parts.to_x))
    to_w = two_sum(xp, xp.expand_dims(weights, axis=0), -xp.expand_dims(features, axis=1))  # mu_k - x
    own = _dd_mul(xp, c, _dd_add(xp, _dd_mul(xp, rest, _dd_add(xp, _dd_const(xp, 1.0, features), a)), lam))
    coef = _dd_where(xp, hot, _dd_expand(xp, own), _dd_neg(off))
    gw = _dd_sum_axis(xp, _dd_mul(xp, _dd_expand(xp, coef, axis=2), to_w), 0)
    return _times(xp, gx, k), None, _times(xp, gw, k)
