"""Embedding losses at points whose values were established outside refloss: closed forms by hand,
an independent loop-based range loss, PyTorch and optax values recorded in the project's reference
notes (frameworks.md) or printed by torch 2.13 (CPU, float64) while these tests were written, and
the mpmath oracle (refloss.mp). Plus gradients next to every kink, the identities the losses obey, and bad input."""

from __future__ import annotations

import itertools
import math
import warnings

import array_api_strict
import numpy as np
import pytest

import refloss
import refloss.mp as rmp
from refloss.xp import to_numpy

EPS = np.finfo(np.float64).eps


def _vg(loss, *inputs, **params):
    params.setdefault("reduction", "sum")
    return loss.value_and_grad(*inputs, **params)


def _fd(loss, inputs, params, k, h=1e-6):
    """Five-point central differences of ``loss(..., reduction='sum')`` along every coordinate of input ``k``."""
    x = np.asarray(inputs[k], dtype=float)
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):

        def f(t):
            args = list(inputs)
            y = x.copy()
            y[idx] += t
            args[k] = y
            return float(loss(*args, **{**params, "reduction": "sum"}))

        out[idx] = (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)
    return out


def _check_fd(loss, inputs, params, rtol=1e-7, atol=1e-8, h=1e-5):
    """The analytic gradient of every differentiable input equals central differences."""
    _, grads = _vg(loss, *inputs, **params)
    checked = 0
    for k, spec in enumerate(loss.inputs):
        if not spec.differentiable:
            continue
        np.testing.assert_allclose(grads[k], _fd(loss, inputs, params, k, h), rtol=rtol, atol=atol, err_msg=f"d/d{spec.name}")
        checked += 1
    assert checked


def _ulps(actual, exact):
    return abs(float(actual) - float(exact)) / math.ulp(abs(float(exact)))


# ------------------------------------------------------------------------------------------------
# Center loss and the centre update.

X = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0], [-1.0, 0.5]])
Y = np.array([0, 1, 0, 0])
CENTERS = np.array([[0.0, 0.0], [1.0, 1.0], [5.0, -5.0]])


def test_center_loss_by_hand():
    got = refloss.center_loss(X, Y, CENTERS, reduction="none")
    np.testing.assert_array_equal(got, [2.5, 6.5, 0.0, 0.625])
    # Caffe's layer: sum_i |x_i - c_{y_i}|^2 / (2M)
    assert refloss.center_loss(X, Y, CENTERS) == (5.0 + 13.0 + 0.0 + 1.25) / (2 * 4)
    _, (g_x, g_y, g_c) = _vg(refloss.center_loss, X, Y, CENTERS)
    assert g_y is None
    np.testing.assert_array_equal(g_x, [[1.0, 2.0], [2.0, 3.0], [0.0, 0.0], [-1.0, 0.5]])
    # the exact derivative in the centres: -(sum of x_i - c_j over class j); the unused class gets 0
    np.testing.assert_array_equal(g_c, [[0.0, -2.5], [-2.0, -3.0], [0.0, 0.0]])


def test_center_loss_gradient_identities():
    rng = np.random.default_rng(1)
    x, c = rng.normal(size=(7, 3)), rng.normal(size=(4, 3))
    y = np.array([0, 1, 1, 3, 0, 3, 3])
    value, (g_x, _, g_c) = _vg(refloss.center_loss, x, y, c)
    # each centre receives minus the feature gradients of its class
    np.testing.assert_allclose(g_c, -np.eye(4)[y].T @ g_x, rtol=1e-15, atol=1e-15)
    # degree 2, jointly homogeneous: <x, dx> + <c, dc> = 2 L (Euler)
    assert np.sum(x * g_x) + np.sum(c * g_c) == pytest.approx(2 * value, rel=1e-13)
    _check_fd(refloss.center_loss, [x, y, c], {})


def test_center_update_is_the_papers_rule():
    alpha = 0.5
    new = refloss.center_update(X, Y, CENTERS, alpha)
    # class 0: rows 0, 2, 3; delta = sum (c - x) / (1 + 3)
    delta0 = ((CENTERS[0] - X[0]) + (CENTERS[0] - X[2]) + (CENTERS[0] - X[3])) / 4
    delta1 = (CENTERS[1] - X[1]) / 2
    np.testing.assert_allclose(new, [CENTERS[0] - alpha * delta0, CENTERS[1] - alpha * delta1, CENTERS[2]], rtol=1e-15)
    np.testing.assert_array_equal(new[2], CENTERS[2])  # absent class: unchanged
    assert not np.shares_memory(new, CENTERS) and np.array_equal(CENTERS[2], [5.0, -5.0])


def test_center_update_moves_centres_towards_class_means():
    rng = np.random.default_rng(2)
    x, c = rng.normal(size=(12, 4)), rng.normal(3.0, 1.0, size=(3, 4))
    y = rng.integers(0, 3, size=12)
    means = np.array([x[y == j].mean(axis=0) for j in range(3)])
    counts = np.bincount(y, minlength=3)
    for alpha in (0.1, 0.5, 1.0):
        new = refloss.center_update(x, y, c, alpha)
        before = np.linalg.norm(c - means, axis=1)
        after = np.linalg.norm(new - means, axis=1)
        assert np.all(after < before)
        # closed form: c - alpha n (c - mean) / (1 + n)
        expect = c - alpha * (counts / (1 + counts))[:, None] * (c - means)
        np.testing.assert_allclose(new, expect, rtol=1e-13)
    assert np.array_equal(refloss.center_update(x, y, c, 0.0), c)


def test_center_update_on_array_api_strict():
    xp = array_api_strict
    new = refloss.center_update(xp.asarray(X), xp.asarray(Y), xp.asarray(CENTERS), 0.25)
    assert type(new).__module__.startswith("array_api_strict")
    np.testing.assert_array_equal(to_numpy(new), refloss.center_update(X, Y, CENTERS, 0.25))


@pytest.mark.parametrize(
    "args, exc, pattern",
    [
        ((X, Y, CENTERS, 1.5), ValueError, r"^center_update: alpha must be a real number in \[0\.0, 1\.0\], got 1\.5$"),
        ((X, Y, CENTERS, True), ValueError, r"^center_update: alpha must be .*got True$"),
        ((X, np.array([0, 3, 0, 0]), CENTERS, 0.5), ValueError, r"^center_update: labels must be class indices in \[0, 3\), got values in \[0, 3\]$"),
        ((X, Y.astype(float), CENTERS, 0.5), TypeError, r"^center_update: labels must be an integer array"),
        ((X.astype(np.int64), Y, CENTERS, 0.5), TypeError, r"^center_update: features must be a real floating array, got dtype int64$"),
        ((X, Y[:3], CENTERS, 0.5), ValueError, r"^center_update: labels must be of shape \(N=4,\), got shape \(3,\)$"),
        ((X, Y, CENTERS[:, :1], 0.5), ValueError, r"^center_update: centers must be of shape \(C, D=2\), got shape \(3, 1\)$"),
        ((X.tolist(), Y, CENTERS, 0.5), TypeError, r"^center_update: features must be an array .*got list$"),
        ((X, array_api_strict.asarray(Y), CENTERS, 0.5), TypeError, r"^center_update: .*one array library"),
    ],
)
def test_center_update_bad_input(args, exc, pattern):
    with pytest.raises(exc, match=pattern):
        refloss.center_update(*args)


# ------------------------------------------------------------------------------------------------
# Center-invariant loss.


def test_center_invariant_by_hand():
    c = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])  # s = 1, 4, 0; tau = 5/3
    y = np.array([0, 1, 1])
    x = np.zeros((3, 2))
    got = refloss.center_invariant_loss(x, y, c, reduction="none")
    np.testing.assert_allclose(got, [1 / 9, 49 / 36, 49 / 36], rtol=1e-15)
    _, (g_x, g_y, g_c) = _vg(refloss.center_invariant_loss, x, y, c)
    assert g_x is None and g_y is None  # the value does not depend on the features
    # w = (1, 2, 0), A = lambda w = (-2/3, 14/3, 0), B = 4: d/dc_j = (A_j - B/3) c_j
    np.testing.assert_allclose(g_c, [[-2.0, 0.0], [0.0, 20 / 3], [0.0, 0.0]], rtol=1e-15, atol=1e-15)


def test_center_invariant_gradient_and_homogeneity():
    rng = np.random.default_rng(3)
    x, c = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    y = np.array([0, 2, 2, 3, 0, 0])
    _check_fd(refloss.center_invariant_loss, [x, y, c], {})
    value, (_, _, g_c) = _vg(refloss.center_invariant_loss, x, y, c)
    assert np.sum(c * g_c) == pytest.approx(4 * value, rel=1e-13)  # degree 4 in the centres
    # NaN features are not hidden, though the value does not depend on them
    x[1, 0] = np.nan
    out = refloss.center_invariant_loss(x, y, c, reduction="none")
    assert math.isnan(out[1]) and np.all(np.isfinite(np.delete(out, 1)))


def test_center_invariant_mean_and_sum_gradients_agree_despite_cancellation():
    # w_j - mean(w) = 0 for the large centre: its s_j drops out of B exactly (the old lambda-weighted
    # sum cancelled between 1e32-sized terms here).
    c = np.array([[1.29e2, 0.0], [1.77e16, 0.0], [2.7e11, 0.0]])
    y = np.array([0, 2, 2])
    _, (_, _, g_sum) = _vg(refloss.center_invariant_loss, np.zeros((3, 2)), y, c, reduction="sum")
    _, (_, _, g_mean) = _vg(refloss.center_invariant_loss, np.zeros((3, 2)), y, c, reduction="mean")
    np.testing.assert_allclose(g_mean * 3, g_sum, rtol=1e-15)
    # (A_0 - B/3) c_0 = 2/3 (s_0 - s_2) c_0 exactly; s_1 = 3e32 cancels inside A_0 - B/3, so the
    # documented accuracy is a few ulps of max(s) |c_0|, not of the (1e10 times smaller) result
    s = c[:, 0] ** 2
    exact0 = (2 / 3) * (s[0] - s[2]) * c[0, 0]
    assert abs(g_sum[0, 0] - exact0) <= 4 * EPS * s.max() * abs(c[0, 0])


# ------------------------------------------------------------------------------------------------
# Range loss.


def _range_reference(x, y, k=2, margin=0.1, intra_weight=0.5, inter_weight=0.5):
    """Loops, straight from the paper, with refloss's documented edge cases."""
    classes = sorted(set(y.tolist()))
    intra = 0.0
    for c in classes:
        rows = np.flatnonzero(y == c)
        d = sorted((float(np.sum((x[a] - x[b]) ** 2)) for a, b in itertools.combinations(rows, 2)), reverse=True)[:k]
        if d and min(d) > 0:
            intra += len(d) / math.fsum(1 / v for v in d)
    means = [x[y == c].mean(axis=0) for c in classes]
    dist = [float(np.sum((means[p] - means[q]) ** 2)) for p, q in itertools.combinations(range(len(classes)), 2)]
    inter = max(margin - min(dist), 0.0) if dist else 0.0
    return intra_weight * intra + inter_weight * inter


def test_range_loss_by_hand():
    x = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [10.0, 10.0]])
    y = np.array([7, 7, 7, -2])
    # class 7: squared distances 9, 16, 25, top-2 harmonic mean 2 / (1/25 + 1/16) = 800/41;
    # class -2: one sample, 0. Means (1, 4/3) and (10, 10): squared distance 1405/9.
    expect = 0.5 * 800 / 41 + 0.5 * (200 - 1405 / 9)
    got = refloss.range_loss(x, y, margin=200.0)  # default reduction: the batch's loss
    assert got == pytest.approx(expect, rel=1e-15)
    none = refloss.range_loss(x, y, margin=200.0, reduction="none")
    assert none.shape == () and none == got  # one loss per batch: every reduction is the loss itself
    assert refloss.range_loss(x, y, margin=200.0, reduction="mean") == got
    # fewer than k pairs: all of them (k = 5, 3 pairs)
    assert refloss.range_loss(x, y, k=5, margin=0.0) == pytest.approx(0.5 * 3 / (1 / 9 + 1 / 16 + 1 / 25), rel=1e-15)
    # k = 1: the largest squared distance
    assert refloss.range_loss(x, y, k=1, margin=0.0, intra_weight=1.0) == 25.0


@pytest.mark.parametrize("seed", range(6))
def test_range_loss_matches_loops_and_central_differences(seed):
    rng = np.random.default_rng(seed)
    n = 9
    x = rng.normal(size=(n, 3))
    y = rng.integers(0, 3, size=n)
    for params in ({}, {"k": 1}, {"k": 4, "margin": 30.0, "intra_weight": 1.0, "inter_weight": 2.0}):
        got = refloss.range_loss(x, y, **params)
        assert got == pytest.approx(_range_reference(x, y, **params), rel=1e-13)
        _check_fd(refloss.range_loss, [x, y], params, rtol=1e-6)


def test_range_loss_inter_gradient_is_exact_and_caffes_is_not():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 2.0], [2.0, 3.0]])
    y = np.array([0, 0, 1, 1])
    params = {"margin": 50.0, "intra_weight": 0.0, "inter_weight": 1.0}
    _, (g, _) = _vg(refloss.range_loss, x, y, **params)
    m0, m1 = x[:2].mean(axis=0), x[2:].mean(axis=0)
    exact = np.array([-2 * (m0 - m1) / 2] * 2 + [2 * (m0 - m1) / 2] * 2)  # -d/dx of |m0 - m1|^2
    np.testing.assert_allclose(g, exact, rtol=1e-15)
    np.testing.assert_allclose(g, _fd(refloss.range_loss, [x, y], params, 0), rtol=1e-8)
    caffe = np.array([-(m0 - m1) / (2 * 2)] * 2 + [(m0 - m1) / (2 * 2)] * 2)  # RangeLossLayer::Backward_cpu
    assert not np.allclose(g, caffe)
    assert np.allclose(g, 4 * caffe)  # equal class sizes: off by exactly 4


def test_range_loss_edge_cases_are_finite_and_defined():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # duplicated rows: a zero distance in the top-k makes the harmonic mean 0, gradient 0
        x = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [4.0, 5.0]])
        y = np.array([0, 0, 0, 1])
        value, (g, _) = _vg(refloss.range_loss, x, y, margin=0.0)
        assert value == 0.0 and np.all(g == 0.0)
        # subnormal squared distances: 1/d overflows, the ratios t/d do not.
        # 2 / (1/4e-320 + 1/1e-320) = 1.6e-320 (subnormals carry about 3 digits)
        x = np.array([[0.0, 0.0], [1e-160, 0.0], [2e-160, 0.0]])
        value, (g, _) = _vg(refloss.range_loss, x, np.zeros(3, dtype=np.int64), margin=0.0, intra_weight=1.0)
        assert value == pytest.approx(1.6e-320, rel=1e-2) and np.all(np.isfinite(g))
        # one class: no inter term; all singletons: no intra term
        x = np.random.default_rng(0).normal(size=(4, 2))
        assert refloss.range_loss(x, np.zeros(4, dtype=np.int64), margin=1e6, inter_weight=1.0) == pytest.approx(
            _range_reference(x, np.zeros(4, dtype=np.int64), margin=1e6, inter_weight=1.0), rel=1e-14
        )
        single = refloss.range_loss(x, np.arange(4), margin=0.0)
        assert single == 0.0
        assert refloss.range_loss(x[:1], np.array([5])) == 0.0


def test_range_loss_ties_share_the_kth_slot():
    # equilateral class: three equal squared distances 2, k = 2. The harmonic mean is 2, and each
    # pair's coefficient is 1/3 (k r^2 / T^2 = 1/2, 2 slots shared among 3 pairs).
    x = np.eye(3)
    y = np.zeros(3, dtype=np.int64)
    value, (g, _) = _vg(refloss.range_loss, x, y, margin=0.0, intra_weight=1.0)
    assert value == 2.0
    expect = np.array([sum((2 / 3) * 0.5 * 2 * (x[a] - x[b]) for b in range(3) if b != a) for a in range(3)])
    np.testing.assert_allclose(g, expect, rtol=1e-14, atol=1e-15)
    # which is the mean of the one-sided derivatives (each tie broken either way)
    assert np.sum(g) == pytest.approx(0.0, abs=1e-15)


def test_range_loss_identities():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 3))
    y = np.array([0, 0, 1, 1, 1, 2, 2, 2])
    value, (g, _) = _vg(refloss.range_loss, x, y, margin=0.0, k=2)
    assert np.sum(x * g) == pytest.approx(2 * value, rel=1e-13)  # degree 2 without the hinge
    _, (g, _) = _vg(refloss.range_loss, x, y, margin=100.0)
    np.testing.assert_allclose(np.sum(g, axis=0), 0.0, atol=1e-13)  # translation invariance


# ------------------------------------------------------------------------------------------------
# Ring loss.


def test_ring_loss_by_hand():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]])
    r = np.array([4.0])
    np.testing.assert_array_equal(refloss.ring_loss(x, r, reduction="none"), [0.5, 8.0, 18.0])
    # the paper: lambda / (2m) sum (|x| - R)^2
    assert refloss.ring_loss(x, r, loss_weight=0.01) == pytest.approx(0.01 / 6 * (1 + 16 + 36), rel=1e-15)
    _, (g_x, g_r) = _vg(refloss.ring_loss, x, r)
    np.testing.assert_allclose(g_x, [[0.6, 0.8], [0.0, 0.0], [3.6, 4.8]], rtol=1e-15)  # 0 at the zero row
    np.testing.assert_allclose(g_r, [-(1.0 - 4.0 + 6.0)], rtol=1e-15)
    assert g_r.shape == (1,)


def test_ring_loss_radius_shapes_and_gradient_sums():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(5, 3))
    values = {}
    for shape in ((), (1,), (5,)):
        r = np.full(shape, 1.3)
        value, (g_x, g_r) = _vg(refloss.ring_loss, x, r, loss_weight=0.7)
        assert g_r.shape == shape
        values[shape] = (value, g_x, np.sum(g_r))
        # d l_i / dR = -(radial component of d l_i / dx_i); and Euler: <x, dx> + R dR = 2 L
        norms = np.linalg.norm(x, axis=1)
        radial = np.sum(g_x * x, axis=1) / norms
        assert np.sum(g_r) == pytest.approx(-np.sum(radial), rel=1e-13)
        assert np.sum(x * g_x) + np.sum(r * g_r) == pytest.approx(2 * value, rel=1e-13)
        _check_fd(refloss.ring_loss, [x, r], {"loss_weight": 0.7})
    for shape in ((), (5,)):
        assert values[shape][0] == values[(1,)][0]
        np.testing.assert_array_equal(values[shape][1], values[(1,)][1])
        assert values[shape][2] == pytest.approx(values[(1,)][2], rel=1e-15)


def test_ring_loss_port_convention_and_small_norms():
    x = np.array([[3.0, 4.0], [1.0, 0.0]])
    r = np.array([2.0])
    # the widely copied PyTorch port: w mean (|x| - R)^2 = ring_loss(loss_weight=2 w)
    assert refloss.ring_loss(x, r, loss_weight=2 * 0.3) == pytest.approx(0.3 * np.mean([9.0, 1.0]), rel=1e-15)
    # next to the zero-norm kink the gradient is still the smooth one
    x = np.array([[1e-3, -2e-3, 5e-4]])
    _check_fd(refloss.ring_loss, [x, np.array([1.0])], {}, h=1e-7)
    # scaled rows: no overflow or underflow of |x|^2 (powers of two scale exactly)
    base = np.array([[3.0, 4.0], [1.0, -2.0]])
    for s in (2.0**500, 2.0**-500):
        got = refloss.ring_loss(base * s, np.array([4.0]) * s, reduction="none")
        np.testing.assert_array_equal(got, refloss.ring_loss(base, np.array([4.0]), reduction="none") * s * s)


# ------------------------------------------------------------------------------------------------
# Contrastive loss.

A = np.array([[3.0, 4.0], [3.0, 4.0], [0.0, 0.0]])
B = np.zeros((3, 2))


def test_contrastive_by_hand():
    y = np.array([1.0, 0.0, 0.0])
    # d = 5, 5, 0
    np.testing.assert_array_equal(refloss.contrastive_loss(A, B, y, margin=6.0, reduction="none"), [12.5, 0.5, 18.0])
    np.testing.assert_array_equal(
        refloss.contrastive_loss(A, B, y, margin=30.0, convention="caffe_legacy", reduction="none"), [12.5, 2.5, 15.0]
    )
    np.testing.assert_array_equal(
        refloss.contrastive_loss(A, B, y, margin=6.0, convention="pml", pos_margin=1.0, reduction="none"), [4.0, 1.0, 6.0]
    )
    # Caffe's 1/(2N) sum
    assert refloss.contrastive_loss(A, B, y, margin=6.0) == pytest.approx((25 + 1 + 36) / (2 * 3), rel=1e-15)
    _, (g_a, g_b, g_y) = _vg(refloss.contrastive_loss, A, B, y, margin=6.0)
    assert g_y is None
    # similar: a - b; dissimilar: -(m - d) u; at d = 0 the documented subgradient 0 (finite value)
    np.testing.assert_allclose(g_a, [[3.0, 4.0], [-0.6, -0.8], [0.0, 0.0]], rtol=1e-15)
    np.testing.assert_array_equal(g_b, -g_a)


def test_contrastive_soft_labels_interpolate_and_zero_weight_hides_nothing():
    y = np.array([0.25, 0.25, 0.25])
    pos = refloss.contrastive_loss(A, B, np.ones(3), margin=6.0, reduction="none")
    neg = refloss.contrastive_loss(A, B, np.zeros(3), margin=6.0, reduction="none")
    np.testing.assert_allclose(refloss.contrastive_loss(A, B, y, margin=6.0, reduction="none"), 0.25 * pos + 0.75 * neg, rtol=1e-15)
    # symmetric in its two inputs
    rng = np.random.default_rng(6)
    a, b, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.uniform(size=4)
    for convention in ("caffe", "caffe_legacy", "pml"):
        v1, (ga1, gb1, _) = _vg(refloss.contrastive_loss, a, b, y, margin=3.0, convention=convention)
        v2, (ga2, gb2, _) = _vg(refloss.contrastive_loss, b, a, y, margin=3.0, convention=convention)
        assert v1 == pytest.approx(v2, rel=1e-15)
        np.testing.assert_allclose(ga1, gb2, rtol=1e-14)
        _check_fd(refloss.contrastive_loss, [a, b, y], {"margin": 3.0, "convention": convention, "pos_margin": 0.5})


@pytest.mark.parametrize("convention, side", [("caffe", 1.0), ("caffe", -1.0), ("caffe_legacy", 1.0), ("caffe_legacy", -1.0), ("pml", 1.0), ("pml", -1.0)])
def test_contrastive_gradient_next_to_the_margin(convention, side):
    margin = 2.0
    target = margin if convention != "caffe_legacy" else math.sqrt(margin)  # legacy's kink is at d^2 = m
    d = target + side * 1e-4
    a = np.array([[d * 0.6, d * 0.8]])
    b = np.zeros((1, 2))
    _check_fd(refloss.contrastive_loss, [a, b, np.zeros(1)], {"margin": margin, "convention": convention}, h=1e-7, rtol=1e-6, atol=1e-10)


def test_contrastive_gradient_next_to_a_zero_distance():
    a = np.array([[1e-3, -2e-3]])
    b = np.array([[-5e-4, 1e-3]])
    for y in (0.0, 1.0):
        for convention in ("caffe", "pml"):
            _check_fd(refloss.contrastive_loss, [a, b, np.array([y])], {"convention": convention}, h=1e-8, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Triplet margin loss (PyTorch, optax).

TA = np.array([[0.0, 0.0], [0.0, 0.0]])
TP = np.array([[0.1, 0.1], [0.1, 0.1]])
TN = np.array([[1.0, 0.0], [-1.0, 0.0]])


def test_triplet_eps_placement_matches_pytorch_and_optax():
    # frameworks.md section 5 #15 (verified): torch [0.1414209420, 0.1414189420], optax [0.1414243917] * 2
    torch_values = refloss.triplet_margin_loss(TA, TP, TN, reduction="none")
    np.testing.assert_allclose(torch_values, [0.1414209420, 0.1414189420], rtol=1e-9)
    # all digits, torch 2.13 CPU float64: torch's first value is 5 ulps from the exact one (its
    # distances cancel), refloss's within 4 (the certified oracle)
    np.testing.assert_allclose(torch_values, [0.1414209420232473, 0.14141894202324723], rtol=8 * EPS)
    exact, _ = rmp.evaluate("triplet_margin_loss", [TA, TP, TN], {**refloss.triplet_margin_loss.defaults(), "reduction": "none"})
    assert rmp.ulp_error(torch_values, exact) <= 4
    optax_values = refloss.triplet_margin_loss(TA, TP, TN, eps_placement="sum", reduction="none")
    np.testing.assert_allclose(optax_values, [0.1414243917, 0.1414243917], rtol=1e-9)
    exact = math.sqrt(0.02 + 1e-6) - math.sqrt(1 + 1e-6) + 1
    np.testing.assert_allclose(optax_values, exact, rtol=1e-14)


def test_triplet_p1_pytorch_and_optaxs_missing_abs():
    # frameworks.md #16: torch p=1 [0.199998, 0.199996]; optax norm_degree=1 gives [1.8, 0.0] (no |.|)
    np.testing.assert_allclose(refloss.triplet_margin_loss(TA, TP, TN, p=1.0, reduction="none"), [0.199998, 0.199996], rtol=1e-12)
    got = refloss.triplet_margin_loss(TA, TP, TN, p=1.0, eps_placement="sum", reduction="none")
    np.testing.assert_allclose(got, [0.2, 0.2], rtol=1e-15)  # (0.2 + eps) - (1 + eps) + 1, with |.|
    assert not np.allclose(got, [1.8, 0.0])


def test_triplet_distance_of_equal_points_and_its_gradient():
    a = np.array([[0.3, -1.2]])
    n = np.array([[10.0, 10.0]])
    d_an = math.hypot(0.3 - 10 + 1e-6, -1.2 - 10 + 1e-6)
    # PyTorch: d(x, x) = eps * D^(1/p) = sqrt(2) 1e-6 (frameworks.md: verified)
    got = refloss.triplet_margin_loss(a, a.copy(), n, margin=20.0)
    assert got == pytest.approx(math.sqrt(2) * 1e-6 - d_an + 20.0, rel=1e-15)
    for eps, placement in ((0.0, "difference"), (1e-6, "difference"), (0.0, "sum"), (1e-6, "sum")):
        _, grads = _vg(refloss.triplet_margin_loss, a, a.copy(), n, margin=20.0, eps=eps, eps_placement=placement)
        assert all(np.all(np.isfinite(g)) for g in grads)
    # eps = 0, a == p: the documented subgradient 0 of d(a, p); d(a, n) still pulls
    _, (g_a, g_p, g_n) = _vg(refloss.triplet_margin_loss, a, a.copy(), n, margin=20.0, eps=0.0)
    np.testing.assert_array_equal(g_p, 0.0)
    np.testing.assert_allclose(g_a, -(a - n) / np.linalg.norm(a - n), rtol=1e-15)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("placement", ["difference", "sum"])
def test_triplet_gradient_next_to_a_equal_p(p, placement):
    a = np.array([[0.2, -0.1, 0.4]])
    pos = a + np.array([[1e-3, -2e-3, 1.5e-3]])
    n = np.array([[1.0, 1.0, -1.0]])
    _check_fd(refloss.triplet_margin_loss, [a, pos, n], {"p": p, "eps_placement": placement, "margin": 5.0}, h=1e-7, rtol=1e-6)
    assert refloss.triplet_margin_loss(a, pos, n, p=p, eps_placement=placement, margin=5.0) > 0  # active


@pytest.mark.parametrize("side", [1.0, -1.0])
def test_triplet_gradient_next_to_the_hinge(side):
    a, p = np.array([[0.0, 0.0]]), np.array([[1.0, 0.0]])
    n = np.array([[2.0 + side * 1e-4, 0.0]])  # d_ap - d_an + 1 = -+1e-4
    _check_fd(refloss.triplet_margin_loss, [a, p, n], {"eps": 0.0}, h=1e-7, atol=1e-8)


def test_triplet_hinge_corner_and_swap_tie_follow_pytorch():
    # torch 2.13: clamp_min passes the gradient at 0; min splits it equally at a tie
    a, p, n = np.array([[0.0, 0.0]]), np.array([[1.0, 0.0]]), np.array([[2.0, 0.0]])
    value, (g_a, g_p, g_n) = _vg(refloss.triplet_margin_loss, a, p, n, eps=0.0)
    assert value == 0.0
    np.testing.assert_array_equal(g_p, [[1.0, 0.0]])
    np.testing.assert_array_equal(g_n, [[-1.0, 0.0]])
    np.testing.assert_array_equal(g_a, [[0.0, 0.0]])
    a, p, n = np.array([[0.0, 0.0]]), np.array([[2.0, 0.0]]), np.array([[1.0, 3.0]])  # d(a,n) = d(p,n) = sqrt 10
    value, (g_a, g_p, g_n) = _vg(refloss.triplet_margin_loss, a, p, n, margin=5.0, eps=0.0, swap=True)
    assert value == pytest.approx(3.8377223398316205, rel=2 * EPS)
    np.testing.assert_allclose(g_a, [[-0.841886116991581, 0.4743416490252569]], rtol=4 * EPS)
    np.testing.assert_allclose(g_p, [[0.841886116991581, 0.4743416490252569]], rtol=4 * EPS)
    np.testing.assert_allclose(g_n, [[0.0, -0.9486832980505138]], rtol=4 * EPS, atol=1e-16)


@pytest.mark.parametrize(
    "p, value, g_a, g_p, g_n",
    [
        (1.5, 0.37221737498286656, [1.0662563587354736, 0.09399489520276083, 1.3402608676716241],
         [-0.4281196227952742, 0.7415224666570823, -0.8009370442860039], [-0.6381367359401995, -0.8355173618598432, -0.5393238233856203]),
        (3.0, 0.5278760599977139, [0.34841906834133235, 0.32682263151813606, 0.8632518542425203],
         [-0.0583904785456215, 0.5255073001115582, -0.7152782530516597], [-0.29002858979571083, -0.8523299316296943, -0.14797360119086053]),
    ],
)
def test_triplet_general_p_matches_pytorch(p, value, g_a, g_p, g_n):
    # torch 2.13 CPU float64, F.triplet_margin_loss(a, p, n, p=p) and its backward
    a, pos, n = np.array([[0.3, -0.2, 0.5]]), np.array([[0.1, 0.4, -0.2]]), np.array([[1.0, 1.0, 1.0]])
    got, grads = _vg(refloss.triplet_margin_loss, a, pos, n, p=p)
    assert got == pytest.approx(value, rel=8 * EPS)
    for g, want in zip(grads, (g_a, g_p, g_n)):
        np.testing.assert_allclose(g, [want], rtol=16 * EPS)


def test_triplet_value_against_mpmath():
    rng = np.random.default_rng(7)
    a, pos, n = (rng.normal(size=(1, 5)) for _ in range(3))
    for p in (1.0, 2.0, 3.0, 1.5):
        for placement in ("difference", "sum"):
            params = {**refloss.triplet_margin_loss.defaults(), "margin": 3.0, "p": p, "eps_placement": placement}
            exact, _ = rmp.evaluate("triplet_margin_loss", [a, pos, n], params)
            got = refloss.triplet_margin_loss(a, pos, n, **params)
            assert rmp.ulp_error(got, exact) <= 4, (p, placement, got, exact)


def test_triplet_scaling_is_exact_and_never_overflows():
    rng = np.random.default_rng(8)
    a, pos, n = (rng.normal(size=(3, 4)) for _ in range(3))
    for p in (1.0, 2.0, 3.0):
        base = refloss.triplet_margin_loss(a, pos, n, p=p, eps=0.0, margin=0.5, reduction="none")
        for s in (2.0**900, 2.0**-900):
            got = refloss.triplet_margin_loss(a * s, pos * s, n * s, p=p, eps=0.0, margin=0.5 * s, reduction="none")
            np.testing.assert_array_equal(got, base * s)
            _, grads = _vg(refloss.triplet_margin_loss, a * s, pos * s, n * s, p=p, eps=0.0, margin=0.5 * s)
            _, want = _vg(refloss.triplet_margin_loss, a, pos, n, p=p, eps=0.0, margin=0.5)
            for g, w in zip(grads, want):
                np.testing.assert_allclose(g, w, rtol=1e-15)


def test_triplet_translation_invariance_and_swap_without_effect():
    rng = np.random.default_rng(9)
    a, pos, n = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    for p in (1.0, 2.0, 3.0):
        _, (g_a, g_p, g_n) = _vg(refloss.triplet_margin_loss, a, pos, n, p=p, margin=2.0, swap=True)
        np.testing.assert_allclose(g_a + g_p + g_n, 0.0, atol=1e-14)
    n = a - (pos - a) * 50.0  # n on the far side of a from p: d(a, n) < d(p, n)
    np.testing.assert_array_equal(
        refloss.triplet_margin_loss(a, pos, n, swap=True, margin=300.0, reduction="none"),
        refloss.triplet_margin_loss(a, pos, n, swap=False, margin=300.0, reduction="none"),
    )


def test_facenet_triplet_by_hand():
    a = np.zeros((2, 2))
    p = np.array([[0.3, 0.4], [0.3, 0.4]])
    n = np.array([[0.5, 0.0], [1.0, 0.0]])
    # 0.25 - 0.25 + 0.2 = 0.2; 0.25 - 1 + 0.2 < 0
    np.testing.assert_allclose(refloss.facenet_triplet_loss(a, p, n, reduction="none"), [0.2, 0.0], rtol=1e-15)
    assert refloss.facenet_triplet_loss(a, p, n) == pytest.approx(0.1, rel=1e-15)  # mean over all triplets
    _, (g_a, g_p, g_n) = _vg(refloss.facenet_triplet_loss, a, p, n)
    np.testing.assert_allclose(g_a, [[0.4, -0.8], [0.0, 0.0]], rtol=1e-15)
    np.testing.assert_allclose(g_p, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-15)
    np.testing.assert_allclose(g_n, [[-1.0, 0.0], [0.0, 0.0]], rtol=1e-15)
    # corner (TF maximum passes the gradient at a tie) and a == p (smooth: no eps needed)
    corner = [a[:1], np.array([[0.5, 0.0]]), np.array([[0.0, 0.75]])]  # 0.25 - 0.5625 + 0.3125 = 0 exactly
    value, (g_a, g_p, g_n) = _vg(refloss.facenet_triplet_loss, *corner, alpha=0.3125)
    assert value == 0.0
    np.testing.assert_array_equal(g_n, [[0.0, -1.5]])
    _check_fd(refloss.facenet_triplet_loss, [a[:1], a[:1] + 1e-4, np.array([[0.1, 0.2]])], {}, h=1e-7)


def test_facenet_translation_invariance():
    rng = np.random.default_rng(10)
    a, p, n = (rng.normal(size=(5, 4)) for _ in range(3))
    _, (g_a, g_p, g_n) = _vg(refloss.facenet_triplet_loss, a, p, n, alpha=3.0)
    np.testing.assert_allclose(g_a + g_p + g_n, 0.0, atol=1e-14)
    _check_fd(refloss.facenet_triplet_loss, [a, p, n], {"alpha": 3.0})


# ------------------------------------------------------------------------------------------------
# PyTorch's embedding losses.


def test_cosine_embedding_matches_pytorch():
    x1 = np.array([[1.0, 0.0], [0.0, 0.0], [3.0, -1.0]])
    x2 = np.array([[1.0, 1.0], [1.0, 2.0], [-2.0, 4.0]])
    y = np.array([-1.0, 1.0, 1.0])
    got, (g1, g2, _) = _vg(refloss.cosine_embedding_loss, x1, x2, y, margin=0.5, reduction="none")
    # torch 2.13 CPU float64 (frameworks.md #17: the zero vector gives cos 0, loss 1.0)
    np.testing.assert_allclose(got, [0.2071067811860171, 1.0, 1.7071067811864946], rtol=2 * EPS)
    want1 = [[7.072120666862247e-13, 0.7071067811860171], [-447213.5963934019, -894427.1927868038], [-0.0707106781186283, -0.2121320343559554]]
    want2 = [[0.35355339059318536, -0.35355339059283175], [0.0, 0.0], [-0.1414213562373024, -0.07071067811864243]]
    # entries of size 1e-13 are cancellations (x1 ^ x2 ~ 1e-12): absolutely, to an ulp of 1
    np.testing.assert_allclose(g1, want1, rtol=4 * EPS, atol=4 * EPS)
    np.testing.assert_allclose(g2, want2, rtol=4 * EPS, atol=4 * EPS)


def test_cosine_embedding_epsilon_is_pytorchs_float32_constant():
    # Loss.cpp declares `constexpr float EPSILON = 1e-12`: float32(1e-12) = 9.999999960041972e-13 is
    # what it adds to float64 squared norms. torch 2.13 CPU float64 gives 0.2928932181074412 here;
    # with a double 1e-12 it would be 0.29289321881380614.
    got = refloss.cosine_embedding_loss(np.array([[1e-6, 0.0]]), np.array([[1.0, 0.0]]), np.array([1.0]))
    assert got == pytest.approx(0.2928932181074412, rel=4 * EPS)


def test_cosine_embedding_targets_and_zero_vectors():
    x1 = np.zeros((4, 3))
    x2 = np.ones((4, 3))
    y = np.array([1.0, -1.0, 0.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, (g1, g2, _) = _vg(refloss.cosine_embedding_loss, x1, x2, y, reduction="none")
    np.testing.assert_array_equal(got, [1.0, 0.0, 0.0, 0.0])  # other targets: 0, as PyTorch
    assert np.all(np.isfinite(g1)) and np.all(g1[2:] == 0) and np.all(g2[2:] == 0)
    # the gradient at the zero vector is the eps-regularised one: x2^ / 1e-6
    e = float(np.float32(1e-12))  # PyTorch's EPSILON is a float32 constant
    np.testing.assert_allclose(g1[0], -np.ones(3) / np.sqrt(3 + e) / np.sqrt(e), rtol=4 * EPS)
    # NaN targets propagate (PyTorch gives 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert math.isnan(refloss.cosine_embedding_loss(x2, x2, np.array([np.nan] * 4), reduction="none")[0])


def test_cosine_embedding_value_against_mpmath_and_huge_vectors():
    rng = np.random.default_rng(11)
    x1, x2 = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    y = np.array([1.0, -1.0] * 3)
    got = refloss.cosine_embedding_loss(x1, x2, y, margin=-0.9, reduction="none")
    exact, _ = rmp.evaluate("cosine_embedding_loss", [x1, x2, y], {"margin": -0.9, "reduction": "none"})
    assert rmp.ulp_error(got, exact) <= 4, (got, exact)
    # norms of 1e250: PyTorch's (|x1|^2 + eps)(|x2|^2 + eps) overflows; refloss scales rows
    s = 2.0**830
    huge = refloss.cosine_embedding_loss(x1 * s, x2 * s, y, margin=-0.9, reduction="none")
    cos = np.sum(x1 * x2, axis=1) / (np.linalg.norm(x1, axis=1) * np.linalg.norm(x2, axis=1))
    np.testing.assert_allclose(huge, np.where(y == 1, 1 - cos, cos + 0.9), rtol=1e-14)
    _, grads = _vg(refloss.cosine_embedding_loss, x1 * s, x2 * s, y, margin=-0.9)
    _, want = _vg(refloss.cosine_embedding_loss, x1, x2, y, margin=-0.9)
    np.testing.assert_allclose(grads[0] * s, want[0], rtol=1e-9)


@pytest.mark.parametrize("side", [1.0, -1.0])
def test_cosine_embedding_gradient_next_to_the_margin(side):
    theta = math.acos(0.3) + side * 1e-4  # cos just above / below the margin 0.3
    x1 = np.array([[1.0, 0.0]])
    x2 = np.array([[2 * math.cos(theta), 2 * math.sin(theta)]])
    _check_fd(refloss.cosine_embedding_loss, [x1, x2, np.array([-1.0])], {"margin": 0.3}, h=1e-7, rtol=1e-6, atol=1e-10)
    rng = np.random.default_rng(12)
    x1, x2 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    _check_fd(refloss.cosine_embedding_loss, [x1, x2, np.array([1.0, -1.0, 1.0, -1.0])], {"margin": -0.5})
    # 0-homogeneous (up to eps): the gradient is orthogonal to its input
    _, (g1, g2, _) = _vg(refloss.cosine_embedding_loss, x1, x2, np.array([1.0, -1.0, 1.0, -1.0]), margin=-0.5)
    np.testing.assert_allclose(np.sum(x1 * g1, axis=1), 0.0, atol=1e-10)


def test_margin_ranking_by_hand_and_corner():
    x1 = np.array([1.0, 2.0, -1.0, 0.5])
    x2 = np.array([0.5, 0.0, 1.0, 0.5])
    y = np.array([1.0, -1.0, 1.0, 1.0])
    got = refloss.margin_ranking_loss(x1, x2, y, margin=0.5, reduction="none")
    np.testing.assert_array_equal(got, [0.0, 2.5, 2.5, 0.5])
    _, (g1, g2, g_y) = _vg(refloss.margin_ranking_loss, x1, x2, y, margin=0.5)
    # row 0 sits at the corner: PyTorch's clamp_min passes the gradient (torch 2.13: -1, +1)
    np.testing.assert_array_equal(g1, [-1.0, 1.0, -1.0, -1.0])
    np.testing.assert_array_equal(g2, -g1)
    assert g_y is None
    for side in (1.0, -1.0):
        _check_fd(refloss.margin_ranking_loss, [np.array([1.0 + side * 1e-4]), np.array([0.5]), np.array([1.0])], {"margin": 0.5}, h=1e-7)


def test_hinge_embedding_targets_follow_pytorch():
    x = np.array([0.3, 0.3, 0.3, 1.5, 1.0])
    y = np.array([1.0, -1.0, 0.0, -1.0, -1.0])
    # frameworks.md #26: target 0, x = 0.3 -> 1.0 (both branches)
    np.testing.assert_allclose(refloss.hinge_embedding_loss(x, y, reduction="none"), [0.3, 0.7, 1.0, 0.0, 0.0], rtol=1e-15)
    _, (g, g_y) = _vg(refloss.hinge_embedding_loss, x, y)
    # x = margin with y = -1 is the corner: the gradient passes (torch 2.13: -1)
    np.testing.assert_array_equal(g, [1.0, -1.0, 0.0, 0.0, -1.0])
    assert g_y is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert math.isnan(refloss.hinge_embedding_loss(x, np.full(5, np.nan), reduction="none")[0])
    for side in (1.0, -1.0):
        _check_fd(refloss.hinge_embedding_loss, [np.array([2.0 + side * 1e-4]), np.array([-1.0])], {"margin": 2.0}, h=1e-7)


# ------------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda: refloss.ring_loss(np.ones((3, 2)), np.ones(2)), ValueError,
         r"^ring_loss: radius must be of shape \(\) or \(1,\) \(one radius\) or \(N=3,\) \(one per sample\), got shape \(2,\)$"),
        (lambda: refloss.ring_loss(np.ones((3, 2)), np.ones((1, 1))), ValueError, r"^ring_loss: radius must be of shape .*got shape \(1, 1\)$"),
        (lambda: refloss.ring_loss(np.ones((3, 2)), np.ones(1), loss_weight=-1.0), ValueError,
         r"^ring_loss: loss_weight must be a real number in \[0\.0, inf\), got -1\.0$"),
        (lambda: refloss.contrastive_loss(A, B, np.array([1.0, 1.5, 0.0])), ValueError,
         r"^contrastive_loss: target must be in \[0\.0, 1\.0\], got 1\.5"),
        (lambda: refloss.contrastive_loss(A, B, np.ones(3), convention="hadsell"), ValueError,
         r"^contrastive_loss: convention must be one of 'caffe', 'caffe_legacy', 'pml', got 'hadsell'$"),
        (lambda: refloss.triplet_margin_loss(TA, TP, TN, p=0.5), ValueError, r"^triplet_margin_loss: p must be a real number in \[1\.0, 100\.0\], got 0\.5$"),
        (lambda: refloss.triplet_margin_loss(TA, TP, TN, eps_placement="norm"), ValueError, r"^triplet_margin_loss: eps_placement must be one of"),
        (lambda: refloss.triplet_margin_loss(TA, TP, TN[:, :1]), ValueError, r"^triplet_margin_loss: negative must be of shape \(N=2, D=2\), got shape \(2, 1\)$"),
        (lambda: refloss.triplet_margin_loss(TA, TP, TN, margin=-1.0), ValueError, r"^triplet_margin_loss: margin must be a real number in \[0\.0, inf\)"),
        (lambda: refloss.triplet_margin_loss(np.zeros((2, 0)), np.zeros((2, 0)), np.zeros((2, 0)), reduction="sum"), ValueError,
         r"^triplet_margin_loss: anchor must have at least one feature column \(D >= 1\), got shape \(2, 0\)$"),
        (lambda: refloss.cosine_embedding_loss(A, B, np.ones(3), margin=1.5), ValueError,
         r"^cosine_embedding_loss: margin must be a real number in \[-1\.0, 1\.0\], got 1\.5$"),
        (lambda: refloss.range_loss(X, Y, k=0), ValueError, r"^range_loss: k must be an integer in \[1, inf\), got 0$"),
        (lambda: refloss.range_loss(X, Y.astype(float)), TypeError, r"^range_loss: labels must be an integer array"),
        (lambda: refloss.center_loss(X, np.array([0, 3, 0, 0]), CENTERS), ValueError,
         r"^center_loss: labels must be class indices in \[0, 3\), got 3"),
        (lambda: refloss.center_loss(X, Y, CENTERS[:, :1]), ValueError, r"^center_loss: centers must be of shape \(C=3, D=2\), got shape \(3, 1\)$"),
        (lambda: refloss.center_invariant_loss(X, Y, CENTERS.astype(np.int64)), TypeError,
         r"^center_invariant_loss: centers must be a real floating array, got dtype int64$"),
        (lambda: refloss.margin_ranking_loss(np.ones(3), np.ones(2), np.ones(3)), ValueError, r"^margin_ranking_loss: input2 must be of shape \(3\), got shape \(2,\)$"),
        (lambda: refloss.hinge_embedding_loss(np.ones(3), np.ones(3), margin=math.inf), ValueError, r"^hinge_embedding_loss: margin must be a real number"),
    ],
)
def test_bad_input_is_named(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_everything_exported():
    for name in refloss.losses.embedding.__all__:
        assert getattr(refloss, name) is getattr(refloss.losses.embedding, name)
    assert {l.name for l in refloss.catalog() if l.family == "embedding"} == set(refloss.losses.embedding.__all__) - {"center_update"}
