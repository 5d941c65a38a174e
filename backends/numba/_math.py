"""Scalar building blocks the fused kernels inline: bit casts, ``fma``, ``exp``, ``log1p``, order keys.

Numba calls libm for ``math.exp`` and ``math.log1p``, and a call is a wall that stops LLVM's loop
vectorizer. These are written instead in plain arithmetic and integer bit manipulation, branch-free
(every ``if`` is a select), so that a loop calling them compiles to AVX2/AVX-512 code. No fastmath
flag is used anywhere: NaN, the infinities, signed zeros and subnormals behave as in IEEE 754, and
the only fused operation is the explicit, exactly rounded :func:`fma`.

``exp`` (Cody and Waite's reduction, then a polynomial, then a scale by ``2^k``)::

    x = k ln2 + r + dr,  |r| <= ln2 / 2,  k = round(x / ln2)   (ln2 as hi + lo: k * hi is exact;
                                                               dr the rounding error of r)
    exp(x) = 2^k (1 + (r + (r^2 q(r) + dr))),  q the Taylor series of (e^r - 1 - r) / r^2

truncated where its remainder is below 2^-9 ulp (degree 11 in float64, 5 in float32). ``2^k`` is
applied as two exact powers of two, ``2^(k/2)`` twice over, so that neither overflows for ``k`` up
to the format's limit and a subnormal result is rounded once. Arguments are clamped to the range
where the result is neither 0 nor infinity (that gives 0 and inf exactly at the ends); NaN passes.
The accuracy is checked over the whole range in tests/test_backends.py (at most 1 ulp from the
exact value, ``EXP_ULP``; measured 0.86 in float64, 0.88 in float32).

``log1p`` (for ``u`` in ``[0, 1]``, all the sigmoid losses need: ``softplus(x) = max(x, 0) +
log1p(exp(-|x|))``), in float64 and float32::

    1 + u = 2^k (1 + f),  sqrt(2)/2 <= 1 + f < sqrt(2);  log(1 + f) = 2 atanh(s),  s = f / (2 + f)
    log1p(u) = k ln2 + f - s (f - R(s^2)),  plus the rounding error of 1 + u, c / (1 + u)

(fdlibm's ``log1p``, with the odd Taylor series of ``2 atanh(s)`` summed to degree 25 in ``s``,
11 in float32).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload

#: Proven bounds (tests/test_backends.py sweeps the whole range): ulps of the correctly rounded result.
EXP_ULP = 1.0
LOG1P_ULP = 1.0

# --------------------------------------------------------------------------------------------------
# Bit casts and fma (LLVM instructions; numba has no scalar bitcast).


def _bitcasts(float_type, int_type):
    """``(float -> int, int -> float)`` intrinsics that reinterpret the bits of a scalar between
    ``float_type`` and the integer type of its width; the second takes any integer, sign-extended or
    truncated to that width first."""
    width = int_type.bitwidth

    @intrinsic
    def as_int(typingctx, x):
        if x != float_type:
            return None

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], context.get_value_type(int_type))

        return int_type(float_type), codegen

    @intrinsic
    def as_float(typingctx, x):
        if not isinstance(x, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            v, target = args[0], context.get_value_type(int_type)
            if x.bitwidth < width:
                v = builder.sext(v, target)
            elif x.bitwidth > width:
                v = builder.trunc(v, target)
            return builder.bitcast(v, context.get_value_type(float_type))

        return float_type(x), codegen

    return as_int, as_float


f64_as_i64, i64_as_f64 = _bitcasts(types.float64, types.int64)
f32_as_i32, i32_as_f32 = _bitcasts(types.float32, types.int32)


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` rounded once (IEEE fusedMultiplyAdd; the hardware instruction where there is one)."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


# --------------------------------------------------------------------------------------------------
# exp

_F32 = np.float32

# float64: fdlibm's ln2 split (32 significant bits in the high part, so k * LN2_HI is exact).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_SHIFT = 6755399441055744.0  # 1.5 * 2^52: adding it rounds to an integer in the low bits
_EXP_LO, _EXP_HI = -746.0, 710.0  # exp is 0 below, inf above (after rounding)
_EXP_Q = tuple(1.0 / math.factorial(j) for j in range(13, 1, -1))  # 1/13! ... 1/2!

# float32: ln2 with 16 significant bits in the high part (k < 2^8, so k * LN2_HI32 is exact).
_LN2_HI32 = _F32(0.693145751953125)
_LN2_LO32 = _F32(1.428606765330187e-06)
_INV_LN2_32 = _F32(1.4426950408889634)
_SHIFT32 = _F32(12582912.0)  # 1.5 * 2^23
_EXP_LO32, _EXP_HI32 = _F32(-104.0), _F32(89.0)
_Q7, _Q6, _Q5, _Q4, _Q3, _Q2 = (_F32(1.0 / math.factorial(j)) for j in range(7, 1, -1))
_ONE32 = _F32(1.0)

(_E13, _E12, _E11, _E10, _E9, _E8, _E7, _E6, _E5, _E4, _E3, _E2) = _EXP_Q


@njit(inline="always", error_model="numpy")
def _exp64_core(xc):
    """exp of a float64 in [_EXP_LO, _EXP_HI] (no NaN, no clamp)."""
    t = fma(xc, _INV_LN2, _SHIFT)
    kf = t - _SHIFT
    k = f64_as_i64(t) - f64_as_i64(_SHIFT)
    r_hi = fma(-kf, _LN2_HI, xc)  # exact
    r = fma(-kf, _LN2_LO, r_hi)
    dr = fma(-kf, _LN2_LO, r_hi - r)  # the rounding error of r (r_hi - r is exact)
    q = fma(_E13, r, _E12)
    q = fma(q, r, _E11)
    q = fma(q, r, _E10)
    q = fma(q, r, _E9)
    q = fma(q, r, _E8)
    q = fma(q, r, _E7)
    q = fma(q, r, _E6)
    q = fma(q, r, _E5)
    q = fma(q, r, _E4)
    q = fma(q, r, _E3)
    q = fma(q, r, _E2)
    p = 1.0 + (r + fma(r * r, q, dr))
    k1 = k >> 1
    return p * i64_as_f64((k1 + 1023) << 52) * i64_as_f64((k - k1 + 1023) << 52)


@njit(inline="always", error_model="numpy")
def exp64(x):
    xc = x if x > _EXP_LO else _EXP_LO  # NaN -> _EXP_LO here; restored at the end
    xc = xc if xc < _EXP_HI else _EXP_HI
    y = _exp64_core(xc)
    return y if x == x else x


@njit(inline="always", error_model="numpy")
def _exp32_core(xc):
    """exp of a float32 in [_EXP_LO32, _EXP_HI32] (no NaN, no clamp)."""
    t = fma(xc, _INV_LN2_32, _SHIFT32)
    kf = t - _SHIFT32
    k = f32_as_i32(t) - f32_as_i32(_SHIFT32)
    r_hi = fma(-kf, _LN2_HI32, xc)
    r = fma(-kf, _LN2_LO32, r_hi)
    dr = fma(-kf, _LN2_LO32, r_hi - r)
    q = fma(_Q7, r, _Q6)
    q = fma(q, r, _Q5)
    q = fma(q, r, _Q4)
    q = fma(q, r, _Q3)
    q = fma(q, r, _Q2)
    p = _ONE32 + (r + fma(r * r, q, dr))
    k1 = k >> 1
    return p * i32_as_f32((k1 + 127) << 23) * i32_as_f32((k - k1 + 127) << 23)


@njit(inline="always", error_model="numpy")
def exp32(x):
    xc = x if x > _EXP_LO32 else _EXP_LO32
    xc = xc if xc < _EXP_HI32 else _EXP_HI32
    y = _exp32_core(xc)
    return y if x == x else x


def vexp(x):
    """``exp`` of a float (type-dispatched inside jitted code to :func:`exp32` / :func:`exp64`)."""
    return math.exp(x)


@overload(vexp)
def _vexp(x):
    if x == types.float32:
        return lambda x: exp32(x)
    if x == types.float64:
        return lambda x: exp64(x)
    return None


def vexp_near(x):
    """``exp(x)`` for ``-128 <= x <= 0`` (a shifted logit), without :func:`vexp`'s clamp and NaN test."""
    return math.exp(x)


@overload(vexp_near)
def _vexp_near(x):
    if x == types.float32:
        return lambda x: _exp32_core(x)
    if x == types.float64:
        return lambda x: _exp64_core(x)
    return None


# --------------------------------------------------------------------------------------------------
# log1p on [0, 1] (float64)

_SQRT2_HALF = 0.7071067811865476
# 2 atanh(s) = 2 s + sum_j 2 s^(2j+1) / (2j+1); |s| <= (sqrt(2) - 1) / (sqrt(2) + 1) < 0.1716, so the
# terms past s^25 are below 2^-60 of the sum
(_L25, _L23, _L21, _L19, _L17, _L15, _L13, _L11, _L9, _L7, _L5, _L3) = tuple(2.0 / (2 * j + 1) for j in range(12, 0, -1))


@njit(inline="always", error_model="numpy")  # too large for LLVM's inliner, and a call stops the vectorizer
def log1p_unit(u):
    """``log1p(u)`` for ``0 <= u <= 1`` (NaN passes), to about 1 ulp, branch-free.

    ``1 + u = 2^k (1 + f)`` with ``1 + f`` in ``[sqrt(2)/2, sqrt(2))`` (``k`` is 0 or 1 here), ``c`` the
    rounding error of ``1 + u``; ``log(1 + f) = f - s (f - R)``, ``s = f / (2 + f)``, ``R`` the tail of
    the ``2 atanh(s)`` series to ``s^25``.
    """
    v = 1.0 + u
    c = (u - (v - 1.0)) / v  # first-order correction for the rounding of 1 + u
    big = v >= 2.0 * _SQRT2_HALF
    kf = 1.0 if big else 0.0
    m = v * 0.5 if big else v  # exact: a power-of-two scale
    f = m - 1.0  # exact (Sterbenz: m in [1/2, 2])
    s = f / (2.0 + f)
    z = s * s
    t = fma(_L25, z, _L23)
    t = fma(t, z, _L21)
    t = fma(t, z, _L19)
    t = fma(t, z, _L17)
    t = fma(t, z, _L15)
    t = fma(t, z, _L13)
    t = fma(t, z, _L11)
    t = fma(t, z, _L9)
    t = fma(t, z, _L7)
    t = fma(t, z, _L5)
    t = fma(t, z, _L3)
    # 2 atanh(s) = 2 s + s z t = f - s f + s z t = f - s (f - z t): f exact, the correction small
    corr = s * (f - z * t)
    return kf * _LN2_HI + (f - (corr - (kf * _LN2_LO + c)))


# float32: |s| <= 0.1716, so the terms past s^11 are below 2^-27 of the sum
(_M11, _M9, _M7, _M5, _M3) = tuple(_F32(2.0 / (2 * j + 1)) for j in range(5, 0, -1))
_SQRT2_32, _HALF32, _TWO32 = _F32(2.0 * _SQRT2_HALF), _F32(0.5), _F32(2.0)
_ZERO32 = _F32(0.0)


@njit(inline="always", error_model="numpy")
def log1p_unit32(u):
    """:func:`log1p_unit` in float32 arithmetic (the series to ``s^11``)."""
    v = _ONE32 + u
    c = (u - (v - _ONE32)) / v
    big = v >= _SQRT2_32
    kf = _ONE32 if big else _ZERO32
    m = v * _HALF32 if big else v
    f = m - _ONE32
    s = f / (_TWO32 + f)
    z = s * s
    t = fma(_M11, z, _M9)
    t = fma(t, z, _M7)
    t = fma(t, z, _M5)
    t = fma(t, z, _M3)
    corr = s * (f - z * t)
    return kf * _LN2_HI32 + (f - (corr - (kf * _LN2_LO32 + c)))


def vlog1p_unit(u):
    """``log1p(u)`` for ``0 <= u <= 1``, type-dispatched to :func:`log1p_unit32` / :func:`log1p_unit`."""
    return math.log1p(u)


@overload(vlog1p_unit)
def _vlog1p_unit(u):
    if u == types.float32:
        return lambda u: log1p_unit32(u)
    if u == types.float64:
        return lambda u: log1p_unit(u)
    return None


# --------------------------------------------------------------------------------------------------
# Order keys: the integer image of a float that orders like the float (NaN aside), so that a row
# maximum is an integer reduction, which vectorizes (a float max does not, without fastmath).


_KEY_CASTS = {types.float32: (f32_as_i32, i32_as_f32, 31, 0x7FFFFFFF), types.float64: (f64_as_i64, i64_as_f64, 63, 0x7FFFFFFFFFFFFFFF)}


def key(x):
    """Order key of a float: its bits as a signed integer, with the magnitude bits of a negative
    float flipped, so that integer order is float order (NaN aside)."""
    raise NotImplementedError


@overload(key)
def _key(x):
    if x not in _KEY_CASTS:
        return None
    as_int, _, sign, magnitude = _KEY_CASTS[x]

    def impl(x):
        b = as_int(x)
        return b ^ ((b >> sign) & magnitude)

    return impl


def unkey(k, like):
    """The float whose :func:`key` is ``k``, of ``like``'s type (the flip is its own inverse)."""
    raise NotImplementedError


@overload(unkey)
def _unkey(k, like):
    if like not in _KEY_CASTS:
        return None
    _, as_float, sign, magnitude = _KEY_CASTS[like]

    def impl(k, like):
        return as_float(k ^ ((k >> sign) & magnitude))

    return impl


# --------------------------------------------------------------------------------------------------
# Array entry points (used by tests and the benchmark; the kernels inline the scalar versions).


@njit(cache=True, error_model="numpy")
def _exp_array(x, out):
    for i in range(x.size):
        out[i] = vexp(x[i])


@njit(cache=True, error_model="numpy")
def _log1p_array(x, out):
    for i in range(x.size):
        out[i] = vlog1p_unit(x[i])


def exp(x):
    """Elementwise :func:`vexp` of a float32 or float64 array (1-D view of a contiguous copy)."""
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    _exp_array(x.reshape(-1), out.reshape(-1))
    return out


def log1p(u):
    """Elementwise :func:`vlog1p_unit` of a float32 or float64 array with values in [0, 1]."""
    u = np.ascontiguousarray(u)
    out = np.empty_like(u)
    _log1p_array(u.reshape(-1), out.reshape(-1))
    return out
