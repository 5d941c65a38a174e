"""The array-API shim: which namespace the inputs live in, and the few primitives losses need that the
standard (2023.12) lacks.

Every function takes arrays of any array-API namespace (NumPy, CuPy, array-api-strict, PyTorch, JAX,
Dask, HIPS-autograd boxes) and returns arrays of the same namespace. Each primitive has exactly one
portable definition here; losses never call NumPy directly.

Conventions shared by all primitives:

- ``0 * anything = 0`` where a weight is exactly zero (:func:`xmul`, :func:`xlogy`): a zero-probability
  class contributes nothing, even next to a ``-inf`` log-probability. This is the mathematical limit,
  and it is what keeps valid inputs free of ``0 * inf = nan``.
- No branch of a ``where`` is evaluated on an input that would make it warn or overflow: the unused
  branch gets a harmless stand-in ("double where").
"""

from __future__ import annotations

import decimal
import functools
import math
import sys
from fractions import Fraction

import array_api_compat

__all__ = [
    "namespace",
    "is_floating",
    "is_integer",
    "logsumexp",
    "log_softmax",
    "softmax",
    "softmax_complement",
    "softplus",
    "log_sigmoid",
    "sigmoid",
    "xlogy",
    "xmul",
    "safe_log",
    "log1m",
    "one_hot",
    "take_along_axis",
    "sum_to_shape",
    "to_numpy",
]


def _autograd_box_type():
    # autograd is optional: only look for its Box type if the user already imported it.
    extend = sys.modules.get("autograd.extend")
    if extend is None:
        return None
    return extend.Box


def namespace(*arrays):
    """The array-API namespace of ``arrays`` (``None`` and Python scalars are ignored).

    NumPy arrays give ``array_api_compat.numpy``; arrays of a compliant library give that library.
    HIPS-autograd boxes give ``autograd.numpy`` (plain NumPy arrays next to a box are treated as
    constants of the same computation). Arrays of two different libraries raise ``TypeError``.
    """
    box = _autograd_box_type()
    if box is not None and any(isinstance(a, box) for a in arrays):
        import autograd.numpy as anp

        return anp
    candidates = [a for a in arrays if a is not None and not isinstance(a, (bool, int, float, complex))]
    if not candidates:
        raise TypeError("refloss: no array among the inputs; pass arrays (NumPy, CuPy, array-api-strict, ...)")
    try:
        return array_api_compat.array_namespace(*candidates)
    except TypeError as exc:
        kinds = sorted({type(a).__module__ + "." + type(a).__qualname__ for a in candidates})
        raise TypeError(
            "refloss: all inputs must come from one array library; got " + ", ".join(kinds) + f" ({exc})"
        ) from None


def is_floating(xp, x) -> bool:
    """True if ``x`` has a real floating dtype."""
    return xp.isdtype(x.dtype, "real floating")


def is_integer(xp, x) -> bool:
    """True if ``x`` has a (signed or unsigned) integer dtype."""
    return xp.isdtype(x.dtype, "integral")


def _shifted_parts(xp, x, axis, lo=None):
    """The pieces of a max-shifted logsumexp of ``x + lo`` along ``axis`` (keepdims).

    ``m`` is the row maximum of ``x`` (0 in rows whose maximum is not finite), ``shifted = fl(x - m)``
    and ``corr`` the exact rest of the shift, ``(x - m - shifted) + (lo - lo_m)`` (TwoSum; ``lo_m`` the
    low part at the maximum), so ``shifted + corr`` is the shifted input to ~2^-106. A rounded
    ``x - m`` alone would be off by up to ``|x - m| 2^-53``, which ``exp`` turns into that many relative
    ULPs of a saturated row's loss. ``e = exp(shifted) (1 + corr)`` and ``em1 = e - 1`` (from
    ``expm1`` at the maximum, where it is small), ``rest = sum(e) - 1`` summed without the maximum's
    own ``1`` (so ``log1p(rest)`` keeps full relative precision when the other terms are tiny), and
    ``finite``. ``lo`` (same shape as ``x``, or None) is the low-order part of a double-double input.
    """
    m_raw = xp.max(x, axis=axis, keepdims=True)
    finite = xp.isfinite(m_raw)
    m = xp.where(finite, m_raw, xp.zeros_like(m_raw))
    shifted, corr = two_sum(xp, x, -m)
    lo_m = xp.zeros_like(m)
    if lo is not None:
        # the largest low part among the entries tied at the maximum: every shifted input stays <= 0
        lo_m = xp.max(xp.where(x == m_raw, lo, xp.full_like(lo, -math.inf)), axis=axis, keepdims=True)
        lo_m = xp.where(finite, lo_m, xp.zeros_like(lo_m))
        corr = corr + xp.where(xp.isfinite(x), lo - lo_m, xp.zeros_like(lo))
    corr = xp.where(finite, corr, xp.zeros_like(corr))
    at_max = (shifted == 0) & finite
    live = xp.where(finite, shifted, xp.zeros_like(shifted))  # rows with no finite maximum are masked later
    e0 = xp.exp(live)
    e = e0 + e0 * corr
    em1 = xp.where(at_max, xp.expm1(xp.where(at_max, corr, xp.zeros_like(corr))), xp.expm1(live) + e0 * corr)
    ties = xp.sum(xp.astype(at_max, x.dtype), axis=axis, keepdims=True) - 1
    rest = xp.sum(xp.where(at_max, em1, e), axis=axis, keepdims=True) + ties
    rest = xp.where(finite, rest, xp.zeros_like(rest))
    return m_raw, finite, m, lo_m, shifted, corr, e, em1, rest


def logsumexp(x, /, *, axis=-1, keepdims=False, lo=None, xp=None):
    """``log(sum(exp(x), axis))`` as ``m + log1p(sum_{x_i < m} exp(x_i - m) + ties)``, ``m`` the maximum.

    Nothing overflows, and the result keeps full relative precision even when it is close to
    ``m`` (scipy's formulation); the shift ``x_i - m`` is compensated (see :func:`log_softmax`).
    ``lo``: the low-order part of a double-double input ``x + lo``. A row of all ``-inf`` gives
    ``-inf``; a row containing ``+inf`` gives ``+inf``; NaN propagates.
    """
    xp = namespace(x) if xp is None else xp
    m_raw, finite, m, lo_m, _, _, _, _, rest = _shifted_parts(xp, x, axis, lo)
    # m + log1p(rest) cancels when the maximum is near -log1p(rest): TwoSum keeps the rounding
    total, err = two_sum(xp, m, xp.log1p(rest))
    out = xp.where(finite, total + (err + lo_m), m_raw)
    return out if keepdims else xp.squeeze(out, axis=axis)


def log_softmax(x, /, *, axis=-1, lo=None, xp=None):
    """``log_softmax(x + lo)_i = (shifted_i - log1p(rest)) + corr_i`` along ``axis``, where
    ``shifted_i + corr_i = x_i + lo_i - max`` exactly (TwoSum): each entry is accurate to about one
    ULP of itself, not of the row maximum, even when ``x_i - max`` is not representable.

    ``lo``: the low-order part of a double-double input (a margin loss's logits computed in
    compensated arithmetic). Rows whose maximum is not finite (all ``-inf``, any ``+inf``, NaN)
    give NaN, as the value is undefined there.
    """
    xp = namespace(x) if xp is None else xp
    _, finite, _, _, shifted, corr, _, _, rest = _shifted_parts(xp, x, axis, lo)
    return xp.where(finite, (shifted - xp.log1p(rest)) + corr, xp.full_like(shifted, math.nan))


def softmax(x, /, *, axis=-1, lo=None, xp=None):
    """``exp(x - m) / (1 + rest)`` with the compensated shift: rows sum to one, each entry to a few
    ULP, no overflow; NaN in rows whose maximum is not finite. ``lo`` as in :func:`log_softmax`."""
    xp = namespace(x) if xp is None else xp
    _, finite, _, _, _, _, e, _, rest = _shifted_parts(xp, x, axis, lo)
    return xp.where(finite, e / (1 + rest), xp.full_like(e, math.nan))


def softmax_complement(x, /, *, axis=-1, lo=None, xp=None):
    """``1 - softmax(x)`` without cancellation where ``softmax(x) -> 1``: ``(rest - (e_i - 1)) / (1 + rest)``
    (the maximum's entry is ``rest / (1 + rest)`` up to its correction, every other one a sum of
    positive terms). ``lo`` as in :func:`log_softmax`."""
    xp = namespace(x) if xp is None else xp
    _, finite, _, _, _, _, _, em1, rest = _shifted_parts(xp, x, axis, lo)
    return xp.where(finite, (rest - em1) / (1 + rest), xp.full_like(em1, math.nan))


def saturated_softmax(xp, x, axis):
    """``(rows, p)``: ``rows`` (``axis`` kept) marks the rows whose maximum is ``+inf`` (and hold no NaN),
    and ``p`` is the limit of ``softmax(x)`` there: 1 at a sole ``+inf``, 0 at every lower score, NaN at
    ``+inf`` scores that tie.

    The rule for infinite scores (:func:`softmax` gives NaN in these rows): an infinite
    score stands for a score growing without bound, at any rate, the finite ones held; the result is
    the limit where it does not depend on the rates, NaN where it does. A sole ``+inf`` takes all the
    mass whatever the rest (``e^(z_i - z_j) -> 0``); the split between two ``+inf`` scores is
    ``e^(z_i - z_j)`` with ``z_i - z_j`` any real (``inf - inf``). Rows of finite maximum (``-inf``
    entries included) are the plain softmax; a row of ``-inf`` alone is NaN (every ratio is
    ``inf - inf``).
    """
    top = x == math.inf
    count = xp.sum(xp.astype(top, x.dtype), axis=axis, keepdims=True)
    rows = (count > 0) & ~xp.any(xp.isnan(x), axis=axis, keepdims=True)
    one = xp.where(count == 1, xp.ones_like(x), xp.full_like(x, math.nan))
    return rows, xp.where(top, one, xp.zeros_like(x))


def softplus(x, /, *, xp=None):
    """``log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))``: no overflow, full precision in both tails,
    and NaN passes through without a floating-point warning."""
    xp = namespace(x) if xp is None else xp
    return xp.maximum(x, xp.zeros_like(x)) + xp.log1p(xp.exp(-xp.abs(x)))


def log_sigmoid(x, /, *, xp=None):
    """``log(sigmoid(x)) = -softplus(-x)``, exact in both tails."""
    xp = namespace(x) if xp is None else xp
    return -softplus(-x, xp=xp)


def sigmoid(x, /, *, xp=None):
    """``1 / (1 + exp(-x))`` evaluated as ``e / (1 + e)`` with ``e = exp(-|x|)`` on the negative
    side, so neither tail overflows and ``sigmoid(-x) = 1 - sigmoid(x)`` holds without cancellation."""
    xp = namespace(x) if xp is None else xp
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _zero_or_nan(xp, x, at, value):
    # Outside the domain of a log: ``value`` exactly at the boundary ``at``, NaN beyond it.
    return xp.where(x == at, xp.full_like(x, value), xp.full_like(x, math.nan))


def safe_log(x, /, *, xp=None):
    """``log(x)`` with ``log(0) = -inf`` and no floating-point warning."""
    xp = namespace(x) if xp is None else xp
    positive = x > 0
    return xp.where(positive, xp.log(xp.where(positive, x, xp.ones_like(x))), _zero_or_nan(xp, x, 0, -math.inf))


def log1m(x, /, *, xp=None):
    """``log(1 - x)`` accurate for tiny ``x`` (``log1p(-x)``), ``-inf`` at ``x = 1``, no warning."""
    xp = namespace(x) if xp is None else xp
    below = x < 1
    inside = xp.log1p(-xp.where(below, x, xp.zeros_like(x)))
    return xp.where(below, inside, _zero_or_nan(xp, x, 1, -math.inf))


def xmul(a, b, /, *, xp=None):
    """``a * b`` with ``0 * inf = 0``; NaN in either factor still propagates (``0 * nan = nan``)."""
    xp = namespace(a, b) if xp is None else xp
    zero = a == 0
    product = a * xp.where(zero, xp.ones_like(b), b)
    return xp.where(zero & ~xp.isnan(b), xp.zeros_like(product), xp.where(zero, b * xp.ones_like(a), product))


def xlogy(x, y, /, *, xp=None):
    """``x * log(y)`` with ``0 * log(y) = 0`` for every ``y`` (the entropy convention ``0 log 0 = 0``)."""
    xp = namespace(x, y) if xp is None else xp
    return xmul(x, safe_log(y, xp=xp), xp=xp)


def one_hot(labels, num_classes, /, *, axis=-1, dtype=None, xp=None):
    """One-hot encoding of integer ``labels`` with the class dimension inserted at ``axis``.

    Labels outside ``[0, num_classes)`` give an all-zero row (callers validate labels up front).
    """
    xp = namespace(labels) if xp is None else xp
    ndim = labels.ndim + 1
    axis = axis % ndim
    classes = xp.arange(num_classes, dtype=labels.dtype, device=array_api_compat.device(labels))
    classes = xp.reshape(classes, tuple(num_classes if d == axis else 1 for d in range(ndim)))
    hot = xp.expand_dims(labels, axis=axis) == classes
    return hot if dtype is None else xp.astype(hot, dtype)


def take_along_axis(x, labels, /, *, axis=-1, xp=None):
    """``x`` at index ``labels`` along ``axis`` (the class axis), that axis removed.

    ``labels`` has the shape of ``x`` without ``axis``. Uses the namespace's ``take_along_axis``
    where it has one, and a one-hot select (exact: one nonzero term per sum) where it does not.
    """
    xp = namespace(x, labels) if xp is None else xp
    axis = axis % x.ndim
    idx = xp.expand_dims(labels, axis=axis)
    if hasattr(xp, "take_along_axis"):
        return xp.squeeze(xp.take_along_axis(x, idx, axis=axis), axis=axis)
    hot = one_hot(labels, x.shape[axis], axis=axis, xp=xp)
    return xp.sum(xp.where(hot, x, xp.zeros_like(x)), axis=axis)


def sum_to_shape(x, shape, /, *, xp=None):
    """Sum ``x`` down to ``shape`` (the VJP of broadcasting ``shape`` up to ``x.shape``)."""
    xp = namespace(x) if xp is None else xp
    shape = tuple(shape)
    lead = x.ndim - len(shape)
    if lead:
        x = xp.sum(x, axis=tuple(range(lead)))
    axes = tuple(k for k, n in enumerate(shape) if n == 1 and x.shape[k] != 1)
    if axes:
        x = xp.sum(x, axis=axes, keepdims=True)
    return xp.reshape(x, shape)


def to_numpy(x):
    """A NumPy copy of any array (CuPy through ``.get()``, others through DLPack / ``__array__``)."""
    import numpy as np

    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_numpy_array(x):
        return x
    try:
        return np.asarray(x)
    except Exception:  # noqa: BLE001 - array-api-strict and friends go through DLPack
        return np.from_dlpack(x)


# --------------------------------------------------------------------------------------------------
# Double-double pieces (Dekker, Knuth; Ogita, Rump, Oishi, "Accurate sum and dot product", 2005) for
# the few quantities that cancel (a difference of squared norms, ``||x|| - R``, ``1 - cos``, box areas
# ``U - I``). A pair
# ``(hi, lo)`` stands for ``hi + lo``; the error-free transformations below are exact in IEEE
# double arithmetic (no FMA contraction) for finite arguments whose products do not overflow.



def _split_constants(xp, dtype):
    """Veltkamp's splitter ``2^h + 1`` (``h = ceil(t / 2)`` for ``t``-bit significands: 2^27 + 1 for
    float64) and the magnitude below which the split cannot overflow (2^995 for float64)."""
    h = (significand_bits(xp, dtype) + 1) // 2
    return 2.0**h + 1, 2.0 ** (math.floor(math.log2(float(xp.finfo(dtype).max))) - h - 1)


def two_sum(xp, a, b):
    """``(s, e)`` with ``s = fl(a + b)`` and ``s + e = a + b`` exactly (Knuth); ``e = 0`` where ``s``
    is not finite (computed from zeros there, so that no ``inf - inf`` is ever formed)."""
    s = a + b
    fin = xp.isfinite(s)
    a0, b0 = xp.where(fin, a, xp.zeros_like(s)), xp.where(fin, b, xp.zeros_like(s))
    s0 = a0 + b0
    bb = s0 - a0
    return s, (a0 - (s0 - bb)) + (b0 - bb)


def two_prod(xp, a, b):
    """``(p, e)`` with ``p = fl(a b)`` and ``p + e = a b`` exactly (Dekker, Veltkamp's split), for
    ``|a|, |b| < 2^995`` (float64; 2^114 for float32); ``e = 0`` elsewhere and where ``p`` is not finite."""
    p = a * b
    splitter, bound = _split_constants(xp, p.dtype)

    def split(x):
        c = splitter * x
        hi = c - (c - x)
        return hi, x - hi

    ok = xp.isfinite(p) & (xp.abs(a) < bound) & (xp.abs(b) < bound)
    a0, b0 = xp.where(ok, a, xp.zeros_like(p)), xp.where(ok, b, xp.zeros_like(p))
    p0 = a0 * b0
    ah, al = split(a0)
    bh, bl = split(b0)
    return p, ((ah * bh - p0) + ah * bl + al * bh) + al * bl


def dd_sum(xp, hi, lo):
    """``sum(hi + lo)`` along the last axis as a double-double, by pairwise :func:`two_sum` (Sum2
    in tree order): the result is within ``~2^-104 sum |hi|`` of the exact sum."""
    if hi.shape[-1] == 0:
        zero = xp.sum(hi, axis=-1)
        return zero, zero
    while hi.shape[-1] > 1:
        if hi.shape[-1] % 2:
            pad = xp.zeros_like(hi[..., :1])
            hi, lo = xp.concat([hi, pad], axis=-1), xp.concat([lo, pad], axis=-1)
        s, e = two_sum(xp, hi[..., 0::2], hi[..., 1::2])
        hi, lo = s, lo[..., 0::2] + lo[..., 1::2] + e
    return renormalise(xp, hi[..., 0], lo[..., 0])


def renormalise(xp, hi, lo):
    s = hi + lo
    fin = xp.isfinite(s)
    return s, xp.where(fin, lo, xp.zeros_like(lo)) - (xp.where(fin, s, xp.zeros_like(s)) - xp.where(fin, hi, xp.zeros_like(hi)))


def dd_dot(xp, a, b):
    """Row-wise ``a . b`` (last axis) as a double-double (Dot2)."""
    p, e = two_prod(xp, a, b)
    return dd_sum(xp, p, e)


def dd_mul(xp, a_hi, a_lo, b_hi, b_lo):
    """``(a_hi + a_lo)(b_hi + b_lo)`` as a double-double (the ``lo lo`` term dropped)."""
    p, e = two_prod(xp, a_hi, b_hi)
    return renormalise(xp, p, e + (a_hi * b_lo + a_lo * b_hi))


def dd_sub(xp, a_hi, a_lo, b_hi, b_lo):
    """``(a_hi + a_lo) - (b_hi + b_lo)`` rounded to double: exact cancellation of the high parts."""
    s, e = two_sum(xp, a_hi, -b_hi)
    return s + (e + (a_lo - b_lo))


# ------------------------------------------------------------------------------------------------
# Double-double ``exp`` and ``log`` (and the pair sums and quotients they need).
#
# ``fl(exp(x))`` and ``fl(log(x))`` are off by up to an ulp of themselves; a loss that subtracts a
# nearly equal quantity from them (``exp(x) - y x`` near its roots) turns that ulp into many ulps of
# its result. These return ``(hi, lo)`` pairs good to ~2^-100 relative (in float64; twice the
# significand of any floating dtype), from error-free transformations and a short Taylor series.


def dd_add(xp, a_hi, a_lo, b_hi, b_lo):
    """``(a_hi + a_lo) + (b_hi + b_lo)`` as a double-double (the high parts summed exactly)."""
    s, e = two_sum(xp, a_hi, b_hi)
    return renormalise(xp, s, e + (a_lo + b_lo))


def _round_bits(q: Fraction, bits: int) -> float:
    """``q`` rounded to ``bits`` significant bits (a float, exact)."""
    if q == 0:
        return 0.0
    e = math.floor(math.log2(abs(q)))
    scale = Fraction(2) ** (bits - 1 - e)
    return float(Fraction(round(q * scale)) / scale)


def dd_split_rational(q: Fraction, bits: int, parts: int, first_bits=None) -> tuple:
    """``q`` as ``parts`` floats of ``bits`` bits (the first of ``first_bits``), largest first, summing to ``q``
    to ~``2^-(first_bits + (parts - 1) bits)`` relative."""
    out = []
    for k in range(parts):
        v = _round_bits(q, first_bits if k == 0 and first_bits else bits)
        out.append(v)
        q -= Fraction(v)
    return tuple(out)


# exp(x) = 2^k 2^(j/64) exp(r), |r| <= ln 2 / 128; the Taylor coefficients of expm1(r)/r = sum r^(n-1)/n!
# in double-double below _EXP_DD_TERMS (terms above 2^-51 of r), plain above, twelve in all.
_EXP_TABLE = 64
_EXP_TERMS = 12
_EXP_DD_TERMS = 7


@functools.lru_cache(maxsize=None)
def _exp_constants(bits: int):
    """For a ``bits``-bit significand: ``ln 2 / 64`` in three parts (the first short enough that ``n`` times
    it is exact for every ``|n| < 2^17``), ``1/n!`` as pairs, and ``2^(j/64)`` as pairs."""
    with decimal.localcontext() as ctx:
        ctx.prec = 80
        ln2 = Fraction(decimal.Decimal(2).ln())
        table = [dd_split_rational(Fraction(decimal.Decimal(2) ** (decimal.Decimal(j) / _EXP_TABLE)), bits, 2) for j in range(_EXP_TABLE)]
    step = dd_split_rational(ln2 / _EXP_TABLE, bits, 3, first_bits=bits - 18)
    coeffs = [dd_split_rational(Fraction(1, math.factorial(n)), bits, 2) for n in range(_EXP_TERMS + 1)]
    return step, coeffs, tuple(t[0] for t in table), tuple(t[1] for t in table)


def significand_bits(xp, x) -> int:
    """``t``, the significand width (the hidden bit counted) of the floating dtype of array ``x``, or
    of ``x`` itself when it is a dtype: 53 for float64, 24 for float32."""
    return round(-math.log2(float(xp.finfo(x).eps))) + 1  # finfo takes an array or a dtype


def dd_exp(xp, x):
    """``exp(x)`` as ``(hi, lo)`` to ~2^-100 relative (float64) where ``lo`` is a normal number (below 2^53
    times the smallest normal, ``lo`` is subnormal and the pair as precise as it can hold).

    Tang's reduction: ``x = n ln 2 / 64 + r`` with ``r`` a double-double (``ln 2 / 64`` in three parts,
    ``n`` times the first exact), ``exp(x) = 2^k 2^(j/64) (1 + expm1(r))`` with ``n = 64 k + j``, the
    table ``2^(j/64)`` in pairs, ``expm1(r)`` by Horner (its leading terms in double-double), and ``2^k``
    applied exactly in two halves. Where ``exp(x)`` is subnormal or overflows it is ``exp(x)``, ``lo = 0``.
    """
    fi = xp.finfo(x.dtype)
    step, coeffs, table_hi, table_lo = _exp_constants(significand_bits(xp, x))
    ok = (x > math.log(float(fi.smallest_normal))) & (x < math.log(float(fi.max)))
    x0 = xp.where(ok, x, xp.zeros_like(x))
    n = xp.round(x0 * (1 / (step[0] + step[1])))
    r = x0 - n * step[0]  # exact: n step[0] is exact and within a factor 2 of x0 (Sterbenz)
    p, pe = two_prod(xp, n, xp.full_like(x0, step[1]))
    r_hi, r_lo = two_sum(xp, r, -p)
    s_hi, s_lo = renormalise(xp, r_hi, r_lo - (pe + n * step[2]))
    q = xp.full_like(x0, coeffs[_EXP_TERMS][0])
    for k in range(_EXP_TERMS - 1, _EXP_DD_TERMS - 1, -1):
        q = coeffs[k][0] + s_hi * q
    q_hi, q_lo = q, xp.zeros_like(q)
    for k in range(_EXP_DD_TERMS - 1, 0, -1):
        q_hi, q_lo = dd_mul(xp, s_hi, s_lo, q_hi, q_lo)
        q_hi, q_lo = dd_add(xp, q_hi, q_lo, xp.full_like(x0, coeffs[k][0]), xp.full_like(x0, coeffs[k][1]))
    u_hi, u_lo = dd_mul(xp, s_hi, s_lo, q_hi, q_lo)  # expm1(r)
    k = xp.floor(n / _EXP_TABLE)
    j = xp.reshape(xp.astype(n - _EXP_TABLE * k, xp.int64), (-1,))
    dev = array_api_compat.device(x0)
    t_hi = xp.reshape(xp.take(xp.asarray(table_hi, dtype=x0.dtype, device=dev), j), x0.shape)
    t_lo = xp.reshape(xp.take(xp.asarray(table_lo, dtype=x0.dtype, device=dev), j), x0.shape)
    m_hi, m_lo = dd_mul(xp, t_hi, t_lo, u_hi, u_lo)
    e_hi, e_lo = dd_add(xp, t_hi, t_lo, m_hi, m_lo)
    k1 = xp.floor(k / 2)
    f1, f2 = 2.0**k1, 2.0 ** (k - k1)
    e_hi, e_lo = e_hi * f1 * f2, e_lo * f1 * f2
    return xp.where(ok, e_hi, xp.exp(xp.where(ok, xp.zeros_like(x), x))), xp.where(ok, e_lo, xp.zeros_like(x))


def dd_log(xp, a, a_lo=None):
    """``log(a + a_lo)`` as ``(hi, lo)`` to ~2^-100 absolute for normal ``a > 0`` (subnormal ``a``: as
    precise as ``a`` itself); ``log(a)`` with ``lo = 0`` for ``a <= 0`` and non-finite ``a``.

    ``L = fl(log a)`` corrected by one Newton step on ``exp``: ``log a = L + log1p((a - E) / E)`` with
    ``E = exp(L)`` from :func:`dd_exp`; ``a - E_hi`` is exact (Sterbenz) and ``d = (a - E) / E`` is at
    most an ulp of ``L`` (2^-43 for ``|L| ~ 700``), so ``log1p(d) = d - d^2 / 2`` to below the target.
    ``a`` far from 1 is first scaled by ``2^-+k`` (exact; :func:`dd_scale_exponent`), and ``+-k log 2`` added as a pair.
    ``a_lo`` adds ``a_lo / a`` (first order).
    """
    fi = xp.finfo(a.dtype)
    bits, k = significand_bits(xp, a), dd_scale_exponent(xp, a)
    live = (a > 0) & (a <= float(fi.max))
    small, large = live & (a < 2.0**-k), live & (a > 2.0**k)
    a0 = xp.where(live, a, xp.ones_like(a))
    a0 = a0 * xp.where(small, xp.full_like(a0, 2.0**k), xp.where(large, xp.full_like(a0, 2.0**-k), xp.ones_like(a0)))
    hi = xp.log(a0)
    e_hi, e_lo = dd_exp(xp, hi)
    d = ((a0 - e_hi) - e_lo) / e_hi
    lo = d - 0.5 * d * d
    if a_lo is not None:
        lo = lo + xp.where(live, a_lo, xp.zeros_like(a_lo)) / xp.where(live, a, xp.ones_like(a))
    shift_hi, shift_lo = dd_log2_multiple(bits, k)
    sign = xp.where(small, -xp.ones_like(a), xp.where(large, xp.ones_like(a), xp.zeros_like(a)))
    hi, lo2 = two_sum(xp, hi, sign * shift_hi)
    hi, lo = renormalise(xp, hi, lo + lo2 + sign * shift_lo)
    plain = xp.log(xp.where(a > 0, a, xp.ones_like(a)))
    return xp.where(live, hi, xp.where(a > 0, plain, _log_nonpositive(xp, a))), xp.where(live, lo, xp.zeros_like(a))


def dd_scale_exponent(xp, x) -> int:
    """``k`` with ``2^+-k`` well inside ``x``'s dtype (600 for float64, 75 for float32): scaling a number
    beyond ``2^+-k`` by ``2^-+k`` brings it back near 1 exactly."""
    return int(0.59 * math.log2(float(xp.finfo(x.dtype).max)))


@functools.lru_cache(maxsize=None)
def dd_log2_multiple(bits, k):
    """``k log 2`` as a pair of ``bits``-bit floats."""
    with decimal.localcontext() as ctx:
        ctx.prec = 80
        return dd_split_rational(k * Fraction(decimal.Decimal(2).ln()), bits, 2)


def _log_nonpositive(xp, a):
    return xp.where(a == 0, xp.full_like(a, -math.inf), xp.full_like(a, math.nan))


def dd_sum_to_shape(xp, hi, lo, shape):
    """:func:`sum_to_shape` of ``hi + lo`` with every sum a double-double (:func:`dd_sum`)
    rounded once: the sums of terms of both signs that a broadcast parameter's gradient collects."""
    shape = tuple(shape)
    lead = hi.ndim - len(shape)
    summed = list(range(lead)) + [lead + k for k, n in enumerate(shape) if n == 1 and hi.shape[lead + k] != 1]
    kept = [a for a in range(hi.ndim) if a not in summed]
    size = math.prod(hi.shape[a] for a in summed)
    kept_shape = tuple(hi.shape[a] for a in kept)
    flat = [xp.reshape(xp.permute_dims(a, tuple(kept + summed)), kept_shape + (size,)) for a in (hi, lo)]
    total, _ = dd_sum(xp, *flat)
    return xp.reshape(total, shape)


def dd_div(xp, a_hi, a_lo, b_hi, b_lo):
    """``(a_hi + a_lo) / (b_hi + b_lo)`` as a double-double: the quotient, and the remainder ``a - q b``
    (exact products) divided once more."""
    q = a_hi / b_hi
    p, e = two_prod(xp, q, b_hi)
    r = ((a_hi - p) - e) + (a_lo - q * b_lo)
    return renormalise(xp, q, r / b_hi)
