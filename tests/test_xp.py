"""The shim's primitives, on every namespace, against independent high-precision values (mpmath)."""

import math

import mpmath
import numpy as np
import pytest

from refloss import xp as shim
from refloss.xp import to_numpy

mpmath.mp.dps = 50


def _arr(xp, values):
    return xp.asarray(np.asarray(values, dtype=np.float64), dtype=xp.float64)


def _mp_logsumexp(row):
    return float(mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in row)))


ROWS = [[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0], [-1e4, -1e4 + 1.0, -1e4 - 3.0], [0.5, -0.25, 1e-8], [0.0, -40.0, -745.0]]


def test_logsumexp_matches_mpmath(xp):
    got = to_numpy(shim.logsumexp(_arr(xp, ROWS), axis=-1))
    want = np.array([_mp_logsumexp(r) for r in ROWS])
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(float).eps, atol=0)


def test_logsumexp_infinite_rows(xp):
    rows = _arr(xp, [[-math.inf, -math.inf], [math.inf, 0.0], [-math.inf, 2.0], [math.nan, 1.0]])
    got = to_numpy(shim.logsumexp(rows, axis=1))
    assert got[0] == -math.inf and got[1] == math.inf and got[2] == 2.0 and math.isnan(got[3])
    keep = to_numpy(shim.logsumexp(rows, axis=1, keepdims=True))
    assert keep.shape == (4, 1)


def test_log_softmax_and_softmax(xp):
    x = _arr(xp, ROWS)
    lsm = to_numpy(shim.log_softmax(x, axis=1))
    for row, got in zip(ROWS, lsm):
        lse = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in row))
        want = [float(mpmath.mpf(v) - lse) for v in row]
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-300)
    p = to_numpy(shim.softmax(x, axis=1))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=4e-16)
    for row, got in zip(ROWS, p):
        total = mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in row)
        np.testing.assert_allclose(got, [float(mpmath.exp(mpmath.mpf(v)) / total) for v in row], rtol=4e-16, atol=0)
    edge = to_numpy(shim.log_softmax(_arr(xp, [[-math.inf, 0.0, 0.0]]), axis=-1))
    assert edge[0, 0] == -math.inf and edge[0, 1] == pytest.approx(-math.log(2), rel=1e-15)
    undefined = to_numpy(shim.log_softmax(_arr(xp, [[-math.inf, -math.inf], [math.inf, 1.0]]), axis=-1))
    assert np.isnan(undefined).all()


@pytest.mark.parametrize("v", [-800.0, -40.0, -1.0, -1e-10, 0.0, 1e-10, 1.0, 40.0, 800.0])
def test_softplus_sigmoid_log_sigmoid(xp, v):
    x = _arr(xp, [v])
    mv = mpmath.mpf(v)
    sp = float(mpmath.log1p(mpmath.exp(mv)))
    sg = float(1 / (1 + mpmath.exp(-mv)))
    assert to_numpy(shim.softplus(x))[0] == pytest.approx(sp, rel=4e-16, abs=0)
    assert to_numpy(shim.sigmoid(x))[0] == pytest.approx(sg, rel=4e-16, abs=0)
    assert to_numpy(shim.log_sigmoid(x))[0] == pytest.approx(-float(mpmath.log1p(mpmath.exp(-mv))), rel=4e-16, abs=0)


def test_zero_conventions(xp):
    zero, inf = _arr(xp, [0.0, 0.0, 2.0]), _arr(xp, [math.inf, 0.0, 3.0])
    assert to_numpy(shim.xmul(zero, inf)).tolist() == [0.0, 0.0, 6.0]
    assert to_numpy(shim.xlogy(zero, _arr(xp, [0.0, 5.0, math.e]))).tolist() == [0.0, 0.0, 2.0]
    assert to_numpy(shim.safe_log(_arr(xp, [0.0, 1.0, -1.0]))).tolist()[:2] == [-math.inf, 0.0]
    assert math.isnan(to_numpy(shim.safe_log(_arr(xp, [-1.0])))[0])
    got = to_numpy(shim.log1m(_arr(xp, [1.0, 1e-20, 0.5, 2.0])))
    assert got[0] == -math.inf and got[1] == -1e-20 and got[2] == pytest.approx(-math.log(2), rel=1e-16)
    assert math.isnan(got[3])
    assert math.isnan(to_numpy(shim.xmul(_arr(xp, [math.nan]), _arr(xp, [1.0])))[0])


def test_one_hot_and_take_along_axis(xp):
    labels = xp.asarray(np.array([[2, 0], [1, 1]]), dtype=xp.int64)
    hot = to_numpy(shim.one_hot(labels, 3, axis=1, dtype=xp.float64))
    assert hot.shape == (2, 3, 2)
    assert hot[0, :, 0].tolist() == [0, 0, 1] and hot[1, :, 1].tolist() == [0, 1, 0]
    x = _arr(xp, np.arange(12.0).reshape(2, 3, 2))
    got = to_numpy(shim.take_along_axis(x, labels, axis=1))
    assert got.tolist() == [[4.0, 1.0], [8.0, 9.0]]


def test_take_along_axis_without_native_support():
    """The one-hot fallback, for namespaces (Dask) that lack take_along_axis."""
    import types

    import array_api_compat.numpy as base

    bare = types.SimpleNamespace(**{k: getattr(base, k) for k in dir(base) if k != "take_along_axis" and not k.startswith("__")})
    x = np.array([[1.0, -math.inf, 3.0], [4.0, 5.0, 6.0]])
    got = shim.take_along_axis(x, np.array([2, 0]), axis=1, xp=bare)
    assert got.tolist() == [3.0, 4.0]


def test_namespace_rules():
    import array_api_strict

    a, b = np.ones(2), array_api_strict.ones(2)
    assert shim.namespace(a, None, 1.0).__name__ == "array_api_compat.numpy"
    with pytest.raises(TypeError, match="one array library"):
        shim.namespace(a, b)
    with pytest.raises(TypeError, match="no array"):
        shim.namespace(None, 2.0)


def test_softmax_complement_keeps_relative_precision(xp):
    rows = [[50.0, 0.0, -3.0], [1.0, 1.0, -2.0], [0.5, -0.25, 1e-8]]
    got = to_numpy(shim.softmax_complement(_arr(xp, rows), axis=1))
    for row, out in zip(rows, got):
        total = mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in row)
        want = [float(1 - mpmath.exp(mpmath.mpf(v)) / total) for v in row]
        np.testing.assert_allclose(out, want, rtol=4e-16, atol=0)
    assert np.isnan(to_numpy(shim.softmax_complement(_arr(xp, [[-math.inf, -math.inf]]), axis=1))).all()


def test_error_free_transformations_are_exact():
    from fractions import Fraction

    from refloss.xp import dd_dot, two_prod, two_sum

    rng = np.random.default_rng(7)
    a = rng.standard_normal(200) * 10.0 ** rng.uniform(-30, 30, 200)
    b = rng.standard_normal(200) * 10.0 ** rng.uniform(-30, 30, 200)
    s, e = two_sum(np, a, b)
    p, f = two_prod(np, a, b)
    for k in range(200):
        assert Fraction(s[k]) + Fraction(e[k]) == Fraction(a[k]) + Fraction(b[k])
        assert Fraction(p[k]) + Fraction(f[k]) == Fraction(a[k]) * Fraction(b[k])
    # a dot product that cancels 8 digits of its terms: within ~2^-104 of the terms' size (Dot2), so
    # far more accurate than the ~2^-53 * 1e16 a float64 dot product can promise
    x = np.array([1e8, 1.0, -1e8, 1e-9])
    y = np.array([1e8 + 1, 3.0, 1e8, 7.0])
    hi, lo = dd_dot(np, x, y)
    exact = sum(Fraction(u) * Fraction(v) for u, v in zip(x, y))
    terms = sum(abs(Fraction(u) * Fraction(v)) for u, v in zip(x, y))
    assert abs(Fraction(hi) + Fraction(lo) - exact) <= terms * Fraction(1, 2**100)
