"""Margin losses (refloss.losses.margin): values and gradients against an independent mpmath oracle,
the identities between the losses, the kinks (theta + m = pi, the easy-margin threshold, |cos| = 1),
inputs with D != C and unstructured weights, and bad input; the distance-based RBF-Softmax and L-GM
losses (coincident points, K underflow, far from the origin, huge inputs); eps for L-Softmax /
SphereFace; SphereFace's Caffe update direction against a transcription of the Caffe backward; and the
double-double arithmetic the losses are computed in (constants, exp, sin/cos, split products, unit rows)."""

from __future__ import annotations

import math
import warnings

import array_api_compat.numpy as anp
import mpmath as mp
import numpy as np
import pytest

import refloss
import refloss.mp as rmp
from refloss.cases import param_paths
from refloss.losses import margin as M
from refloss.proof import autograd_check, central_difference

COSINE = [refloss.normface_loss, refloss.coco_loss, refloss.cosface_loss, refloss.arcface_loss, refloss.combined_margin_loss]
ANGULAR = [refloss.lsoftmax_loss, refloss.sphereface_loss]
EPS_LOSSES = COSINE + [refloss.l2_softmax_loss] + ANGULAR
MARGIN = EPS_LOSSES  # every loss that normalises (features, weights or both)
IDS = [l.name for l in MARGIN]
DISTANCE = [refloss.rbf_softmax_loss, refloss.lgm_loss]  # raw features and centres, logits from |W_j - x_i|^2
ALL = MARGIN + DISTANCE
ALL_IDS = [l.name for l in ALL]


# ------------------------------------------------------------------------------------------------
# The mpmath oracle: written from the papers' formulas (acos, cos(theta + m), plain norms), sharing
# nothing with refloss's angle-addition / Chebyshev-free implementation.


def _mp_value(loss, x, y, w, p):
    """Per-sample losses from the independent oracle (refloss.mp, mpmath intervals)."""
    value, _ = rmp.evaluate(loss.name, [x, y, w], {**p, "reduction": "none"})
    return np.array([float(v) for v in value])


def _mp_grad(loss, x, y, w, p, which):
    """d(sum of losses)/d(input) from the oracle's one-sided differences (their midpoint)."""
    k = 0 if which == "features" else 2
    (g,) = rmp.gradient(loss.name, [x, y, w], {**p, "reduction": "sum"}, 1.0, [k])
    return np.array([float((a + b) / 2) for a, b in zip(g.left.ravel(), g.right.ravel())]).reshape(g.left.shape)


def _params(loss, **override):
    p = loss.defaults()
    p.update(override)
    return p


def _width(loss, params):
    """The distance losses' length scale: RBF's K = exp(-|W - x|^2 / gamma), L-GM's d = |x - mu|^2 / 2."""
    return math.sqrt(params["gamma"]) if loss is refloss.rbf_softmax_loss else math.sqrt(2.0)


def _draw_points(rng, n, c, d, width):
    """Centres around a common offset (2 widths from the origin), features near random centres: the
    squared distances are a few widths^2, so the kernels and logits are O(1) and the softmax is not degenerate."""
    w = 2 * width / math.sqrt(d) + 0.4 * width * rng.standard_normal((c, d)) * 10.0 ** rng.uniform(-0.3, 0.3, size=(c, 1))
    x = w[rng.integers(0, c, size=n)] + 0.3 * width * rng.standard_normal((n, d))
    return x, rng.integers(0, c, size=n), w


def _draw(rng, n, c, d, loss=None, params=None, away=0.02):
    """Random features and unstructured weights (D != C), every target cosine at least ``away`` from
    the transform's kinks and from |cos| = 1 (for the distance losses: :func:`_draw_points`)."""
    if loss in DISTANCE:
        return _draw_points(rng, n, c, d, _width(loss, params or loss.defaults()))
    while True:
        x = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(0, 1.5, size=(n, 1))
        if loss in ANGULAR:  # logits scale with |x| (and |W|): keep them O(10), and |x| >= 0.3 (the
            # central differences' step 1e-4 stays small against the curvature scale |x|)
            x = x / np.linalg.norm(x, axis=1, keepdims=True) * 10.0 ** rng.uniform(-0.5, 0, size=(n, 1))
        w = rng.standard_normal((c, d)) * 10.0 ** rng.uniform(-0.5, 0.5, size=(c, 1))
        y = rng.integers(0, c, size=n)
        cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
        ct = cos[np.arange(n), y]
        kinks = [1.0, -1.0]
        if params is not None and isinstance(params.get("m"), int):
            kinks += [math.cos(j * math.pi / params["m"]) for j in range(1, params["m"])]
        if params is not None and loss is refloss.arcface_loss:
            if params["easy_margin"]:
                kinks.append(0.0)
            elif params["fallback"] == "insightface":
                kinks.append(math.cos(math.pi - params["margin"]))
        if all(np.all(np.abs(ct - k) > away) for k in kinks):
            return x, y, w


def _vg(loss, x, y, w, **p):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return loss.value_and_grad(x, y, w, **p)


# ------------------------------------------------------------------------------------------------
# Values and gradients against mpmath.

ORACLE_PARAMS = {
    "normface_loss": [{}, {"scale": 30.0}],
    "coco_loss": [{}, {"alpha": 30.0}],
    "cosface_loss": [{}, {"margin": 0.4, "scale": 30.0}],
    "arcface_loss": [{}, {"margin": 1.2}, {"easy_margin": True}, {"fallback": "none", "margin": 0.9}],
    "combined_margin_loss": [{}, {"m1": 1.35, "m2": 0.4, "m3": 0.1}, {"m1": 0.9, "m2": 0.0, "m3": 0.15}],
    "l2_softmax_loss": [{"alpha": 3.0}, {"alpha": 16.0}],
    "lsoftmax_loss": [{}, {"m": 2, "lambda_": 5.0}, {"m": 3}, {"m": 1, "lambda_": 1.0}],
    "sphereface_loss": [{}, {"m": 2, "lambda_": 5.0}, {"m": 3, "lambda_": 0.5}],
    "rbf_softmax_loss": [{}, {"scale": 4.0, "gamma": 1.8}, {"scale": 14.0, "gamma": 2.2}],
    "lgm_loss": [{}, {"alpha": 0.1, "lambda_": 0.01}, {"alpha": 0.0, "lambda_": 0.0}, {"alpha": 0.3, "lambda_": 2.0}],
}
ORACLE_CASES = [(l, o) for l in ALL for o in ORACLE_PARAMS[l.name]]


@pytest.mark.parametrize("loss, override", ORACLE_CASES, ids=[f"{l.name}-{o}" for l, o in ORACLE_CASES])
def test_values_and_gradients_match_mpmath(loss, override):
    rng = np.random.default_rng(hash(loss.name) % 2**32)
    p = _params(loss, **override)
    x, y, w = _draw(rng, 3, 4, 5, loss, p)
    value = loss(x, y, w, **{**p, "reduction": "none"})
    expected = _mp_value(loss, x, y, w, p)
    # a few ulps of the logits (s up to 64): the loss is a difference of logit-sized numbers
    np.testing.assert_allclose(value, expected, rtol=1e-14, atol=64 * 8 * np.finfo(float).eps)
    _, (gx, gy, gw) = _vg(loss, x, y, w, **{**p, "reduction": "sum"})
    assert gy is None
    for name, g in (("features", gx), ("weights", gw)):
        ref = _mp_grad(loss, x, y, w, p, name)
        np.testing.assert_allclose(g, ref, rtol=1e-11, atol=1e-13 * np.max(np.abs(ref)), err_msg=name)


PROOF_REDUCTIONS = ("none", "mean")


@pytest.mark.parametrize("loss", ALL, ids=ALL_IDS)
def test_gradient_proof_with_d_not_c_and_unstructured_weights(loss):
    # The registry's domains use D = C and an orthogonal frame; here every parameter path is proven
    # (central differences and autograd) on generic inputs with D != C.
    # Each parameter variant under a per-sample cotangent ('none') and the batch mean: the other
    # reductions differ only by the shared reduce_vjp, which refloss check and test_gradients prove.
    rng = np.random.default_rng(11)
    rows = []
    for params in param_paths(loss, PROOF_REDUCTIONS):
        for n, c, d in ((3, 4, 6), (2, 5, 3)):
            x, y, w = _draw(rng, n, c, d, loss, params, away=0.05)
            rows += central_difference(loss, [x, y, w], params, rng)
            rows += autograd_check(loss, [x, y, w], params, rng)
    assert rows
    bad = [f"{r.method} {r.input} {r.params}: {r.error:.3g} {r.detail}" for r in rows if not r.ok]
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------------------------------
# Identities.


def _same(a, b, rtol=0.0):
    (va, ga), (vb, gb) = a, b
    np.testing.assert_allclose(va, vb, rtol=rtol, atol=0)
    for u, v in zip(ga, gb):
        assert (u is None) == (v is None)
        if u is not None:
            np.testing.assert_allclose(u, v, rtol=rtol, atol=0)


@pytest.mark.parametrize("seed", range(5))
def test_identities_between_the_margin_losses(seed):
    rng = np.random.default_rng(seed)
    x, y, w = _draw(rng, 4, 5, 7)
    vg = lambda loss, **p: _vg(loss, x, y, w, reduction="none", **p)  # noqa: E731
    # combined (1, m, 0) is ArcFace without the fallback; (1, 0, m) is CosFace: exactly
    _same(vg(refloss.combined_margin_loss, m1=1.0, m2=0.5, m3=0.0), vg(refloss.arcface_loss, margin=0.5, fallback="none"))
    _same(vg(refloss.combined_margin_loss, scale=30.0, m1=1.0, m2=0.0, m3=0.35), vg(refloss.cosface_loss, scale=30.0, margin=0.35))
    # CosFace with m = 0 is NormFace; COCO is NormFace with s = alpha; ArcFace with m = 0 is NormFace
    _same(vg(refloss.cosface_loss, scale=12.0, margin=0.0), vg(refloss.normface_loss, scale=12.0))
    _same(vg(refloss.coco_loss, alpha=6.25), vg(refloss.normface_loss, scale=6.25))
    _same(vg(refloss.arcface_loss, scale=10.0, margin=0.0), vg(refloss.normface_loss, scale=10.0), rtol=1e-15)
    # the m1 != 1 path (atan2, closed-form slope) agrees with the angle-addition path as m1 -> 1
    _same(vg(refloss.combined_margin_loss, m1=1.0 + 1e-12, m2=0.3, m3=0.2), vg(refloss.combined_margin_loss), rtol=1e-9)
    # with the margin never active (easy margin, all target cosines <= 0) ArcFace is NormFace
    neg = -np.abs(x)
    wp = np.abs(w)
    a = _vg(refloss.arcface_loss, neg, y, wp, reduction="none", scale=7.0, easy_margin=True)
    b = _vg(refloss.normface_loss, neg, y, wp, reduction="none", scale=7.0)
    _same(a, b)


def test_straight_through_has_the_exact_value_and_the_cosface_like_gradient():
    rng = np.random.default_rng(3)
    x, y, w = _draw(rng, 4, 5, 6)
    v_exact, (gx_e, _, gw_e) = _vg(refloss.arcface_loss, x, y, w, reduction="sum")
    v_st, (gx_s, _, gw_s) = _vg(refloss.arcface_loss, x, y, w, reduction="sum", gradient="straight_through")
    assert v_st == v_exact
    assert not np.allclose(gx_s, gx_e)
    # straight-through: d psi / d cos = 1, so the gradient is NormFace's chain with ArcFace's logits:
    # build it by hand from the section-0 formulas.
    s = 64.0
    xn, wn = np.linalg.norm(x, axis=1, keepdims=True), np.linalg.norm(w, axis=1, keepdims=True)
    xh, wh = x / xn, w / wn
    cos = xh @ wh.T
    n = np.arange(len(y))
    z = s * cos
    ct = cos[n, y]
    th, mm = math.cos(math.pi - 0.5), math.sin(math.pi - 0.5) * 0.5
    z[n, y] = s * np.where(ct > th, np.cos(np.arccos(ct) + 0.5), ct - mm)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    g = s * (p - np.eye(w.shape[0])[y])
    gx = ((g @ wh) - np.sum((g @ wh) * xh, axis=1, keepdims=True) * xh) / xn
    gw = ((g.T @ xh) - np.sum((g.T @ xh) * wh, axis=1, keepdims=True) * wh) / wn
    np.testing.assert_allclose(gx_s, gx, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gw_s, gw, rtol=1e-10, atol=1e-14)


# ------------------------------------------------------------------------------------------------
# Kinks: theta + m = pi, the easy-margin threshold, |cos| = 1.


def _at_cosine(c, d=4, classes=3, label=0, norm=3.0):
    """Weights = the first ``classes`` unit vectors; one feature row with cos = ``c`` to class ``label``
    (exactly, up to one rounding) and the rest of its mass on the last axis."""
    w = np.eye(classes, d)
    x = np.zeros((1, d))
    x[0, label] = c
    x[0, d - 1] = math.sqrt(max(0.0, (1 - c) * (1 + c)))
    return norm * x, np.array([label]), w


@pytest.mark.parametrize("margin", [0.5, 1.2])
@pytest.mark.parametrize("side", [-1, 1])
@pytest.mark.parametrize("gap", [1e-9, 1e-6])
def test_arcface_near_theta_plus_m_equals_pi(margin, side, gap):
    th = math.cos(math.pi - margin)
    x, y, w = _at_cosine(th + side * gap)
    for fallback in ("insightface", "none"):
        p = _params(refloss.arcface_loss, margin=margin, fallback=fallback)
        value = refloss.arcface_loss(x, y, w, **{**p, "reduction": "none"})
        np.testing.assert_allclose(value, _mp_value(refloss.arcface_loss, x, y, w, p), rtol=1e-13)
        _, (gx, _, gw) = _vg(refloss.arcface_loss, x, y, w, **p)
        assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))
    # the insightface fallback is discontinuous at th: the jump is s (cos(pi) - (th - mm)) ~ -s 0.1173 for m = 0.5
    if margin == 0.5:
        above = refloss.arcface_loss(*_at_cosine(th + 1e-12), reduction="sum")
        below = refloss.arcface_loss(*_at_cosine(th - 1e-12), reduction="sum")
        mm = math.sin(math.pi - margin) * margin
        jump_logit = 64.0 * ((-1.0) - (th - mm))
        assert jump_logit == pytest.approx(64 * 0.117295, rel=1e-4)
        assert below > above  # the fallback logit is lower: the loss jumps up


@pytest.mark.parametrize("side", [-1, 1])
def test_arcface_easy_margin_threshold(side):
    x, y, w = _at_cosine(side * 1e-9)
    p = _params(refloss.arcface_loss, easy_margin=True)
    value = refloss.arcface_loss(x, y, w, **{**p, "reduction": "none"})
    np.testing.assert_allclose(value, _mp_value(refloss.arcface_loss, x, y, w, p), rtol=1e-13)
    # below the threshold the target logit is s cos: NormFace's loss
    if side < 0:
        np.testing.assert_allclose(value, refloss.normface_loss(x, y, w, scale=64.0, reduction="none"), rtol=1e-15)


@pytest.mark.parametrize("loss", [refloss.arcface_loss, refloss.combined_margin_loss], ids=["arcface", "combined"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_at_cos_exactly_one_value_and_gradient_are_finite_and_exact(loss, sign):
    # x parallel (or antiparallel) to W_y: cos = +-1 exactly; the other classes are orthogonal (cos = 0).
    w = np.eye(3, 4) * np.array([[2.0], [0.5], [4.0]])
    x = sign * 8.0 * np.eye(1, 4)
    y = np.array([0])
    for override in ({}, {"gradient": "straight_through"} if loss is refloss.arcface_loss else {"m1": 1.3}):
        p = _params(loss, **override)
        value, (gx, _, gw) = _vg(loss, x, y, w, **{**p, "reduction": "sum"})
        assert np.isfinite(value) and np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))
        np.testing.assert_allclose(value, sum(_mp_value(loss, x, y, w, p)), rtol=1e-14)
        # by hand: the target's tangent (W_hat_y - c x_hat) is exactly 0, so only the orthogonal classes
        # contribute: dL/dx = sum_{j != y} s p_j W_hat_j / |x|, dL/dW_j = s p_j x_hat / |W_j|, dL/dW_y = 0.
        s = p["scale"]
        # the oracle's loss l = -log p_y with the two other logits 0: p_j = (1 - p_y) / 2 = -expm1(-l) / 2
        rest = -math.expm1(-_mp_value(loss, x, y, w, p)[0]) / 2
        prob = np.array([1 - 2 * rest, rest, rest])
        wh = w / np.linalg.norm(w, axis=1, keepdims=True)
        np.testing.assert_allclose(gx[0], s * (prob[1] * wh[1] + prob[2] * wh[2]) / 8.0, rtol=1e-14, atol=0)
        expected_w = np.zeros_like(w)
        for j in (1, 2):
            expected_w[j] = s * prob[j] * (x[0] / 8.0) / np.linalg.norm(w[j])
        np.testing.assert_allclose(gw, expected_w, rtol=1e-14, atol=0)


@pytest.mark.parametrize("delta", [1e-15, 1e-12, 1e-8, 1e-5])
def test_arcface_close_to_cos_one(delta):
    x, y, w = _at_cosine(1.0 - delta)
    p = _params(refloss.arcface_loss)
    value, (gx, _, gw) = _vg(refloss.arcface_loss, x, y, w, **{**p, "reduction": "sum"})
    np.testing.assert_allclose(value, sum(_mp_value(refloss.arcface_loss, x, y, w, p)), rtol=1e-13)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))
    if delta >= 1e-8:  # away from the rounding floor the chain rule is accurate to eps / sin(theta)
        ref = _mp_grad(refloss.arcface_loss, x, y, w, p, "features")
        np.testing.assert_allclose(gx, ref, rtol=1e-6, atol=1e-6 * np.max(np.abs(ref)))


def test_exact_scaling_of_inputs_is_exact():
    # Norms are taken without overflow: scaling by powers of two (1e120 and 1e-120 in size) changes nothing
    # in the value, and scales the gradients exactly by the inverse.
    rng = np.random.default_rng(5)
    x, y, w = _draw(rng, 3, 4, 5)
    for loss in COSINE:
        v, (gx, _, gw) = _vg(loss, x, y, w, reduction="sum")
        for k in (400, -400):
            v2, (gx2, _, gw2) = _vg(loss, x * 2.0**k, y, w * 2.0**-k, reduction="sum")
            assert v2 == v
            np.testing.assert_array_equal(gx2, gx * 2.0**-k)
            np.testing.assert_array_equal(gw2, gw * 2.0**k)


# ------------------------------------------------------------------------------------------------
# eps and bad input.


def test_eps_clamps_the_norm_like_f_normalize():
    w = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    x = np.array([[3e-7, 4e-7], [0.0, 0.0], [3.0, -1.0]])
    y = np.array([0, 2, 1])
    for loss in EPS_LOSSES:
        p = _params(loss, eps=1e-6, **({"alpha": 3.0} if loss is refloss.l2_softmax_loss else {}))
        value, (gx, _, gw) = _vg(loss, x, y, w, **{**p, "reduction": "none"})
        np.testing.assert_allclose(value, _mp_value(loss, x, y, w, p), rtol=1e-13, atol=1e-13)
        assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))
    # inside the clamp the normalisation is x / eps: linear, so the feature gradient is (G W_hat)_i / eps
    p = _params(refloss.normface_loss, eps=1e-6)
    _, (gx, _, _) = _vg(refloss.normface_loss, x, y, w, **{**p, "reduction": "sum"})
    ref = _mp_grad(refloss.normface_loss, x[:1], y[:1], w, p, "features")
    np.testing.assert_allclose(gx[:1], ref, rtol=1e-9)


@pytest.mark.parametrize("loss", MARGIN, ids=IDS)
def test_zero_rows_without_eps_raise(loss):
    w = np.eye(3, 4)
    x = np.ones((2, 4))
    y = np.array([0, 1])
    bad_x = x.copy()
    bad_x[1] = 0.0
    hint = r" \(pass eps= to clamp the norm\)"
    with pytest.raises(ValueError, match=rf"^{loss.name}: features must be rows of nonzero norm{hint}, got zero row\(s\) at \[1\]$"):
        loss(bad_x, y, w)
    bad_w = w.copy()
    bad_w[2] = 0.0
    if loss is refloss.l2_softmax_loss:  # raw weights: a zero row is a zero logit
        assert np.isfinite(loss(x, y, bad_w))
        return
    with pytest.raises(ValueError, match=rf"^{loss.name}: weights must be rows of nonzero norm.* at \[2\]$"):
        loss(x, y, bad_w)
    value, grads = _vg(loss, bad_x, y, bad_w, eps=1e-12)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads if g is not None)


@pytest.mark.parametrize("loss", ALL, ids=ALL_IDS)
def test_labels_out_of_range_and_shapes(loss):
    w = np.eye(3, 4)
    x = np.ones((2, 4))
    with pytest.raises(ValueError, match=rf"^{loss.name}: labels must be class indices in \[0, 3\), got 3 "):
        loss(x, np.array([0, 3]), w)
    with pytest.raises(ValueError, match=rf"^{loss.name}: labels must be class indices in \[0, 3\), got -1 "):
        loss(x, np.array([-1, 0]), w)
    with pytest.raises(ValueError, match=rf"^{loss.name}: weights must be of shape \(C=3, D=4\), got shape \(3, 5\)$"):
        loss(x, np.array([0, 1]), np.eye(3, 5))
    with pytest.raises(TypeError, match=rf"^{loss.name}: labels must be an integer array"):
        loss(x, np.array([0.0, 1.0]), w)


@pytest.mark.parametrize(
    "loss, param, value",
    [
        (refloss.cosface_loss, "margin", -0.1),
        (refloss.arcface_loss, "margin", -0.1),
        (refloss.arcface_loss, "margin", math.pi / 2),
        (refloss.combined_margin_loss, "m1", 0.0),
        (refloss.combined_margin_loss, "m2", -0.2),
        (refloss.combined_margin_loss, "m3", -0.2),
        (refloss.normface_loss, "scale", 0.0),
        (refloss.coco_loss, "alpha", -1.0),
        (refloss.arcface_loss, "eps", 0.0),
        (refloss.l2_softmax_loss, "alpha", 0.0),
        (refloss.lsoftmax_loss, "lambda_", -1.0),
        (refloss.sphereface_loss, "lambda_", -0.5),
        (refloss.lsoftmax_loss, "eps", 0.0),
        (refloss.sphereface_loss, "eps", -1e-12),
        (refloss.rbf_softmax_loss, "scale", 0.0),
        (refloss.rbf_softmax_loss, "scale", -35.0),
        (refloss.rbf_softmax_loss, "gamma", 0.0),
        (refloss.rbf_softmax_loss, "gamma", -16.0),
        (refloss.lgm_loss, "alpha", -0.1),
        (refloss.lgm_loss, "lambda_", -1.0),
    ],
)
def test_invalid_margins_and_scales(loss, param, value):
    x, y, w = np.ones((2, 4)), np.array([0, 1]), np.eye(3, 4)
    with pytest.raises(ValueError, match=rf"^{loss.name}: {param} must be a real number in "):
        loss(x, y, w, **{param: value})


@pytest.mark.parametrize("loss", ANGULAR, ids=lambda l: l.name)
@pytest.mark.parametrize("m", [0, 5])
def test_integer_margin_out_of_range(loss, m):
    x, y, w = np.ones((2, 4)), np.array([0, 1]), np.eye(3, 4)
    with pytest.raises(ValueError, match=rf"^{loss.name}: m must be an integer in \[1, 4\], got {m}$"):
        loss(x, y, w, m=m)
    with pytest.raises(TypeError, match=rf"^{loss.name}: m must be an integer"):
        loss(x, y, w, m=2.0)


def test_float32_stays_float32_and_matches_float64():
    rng = np.random.default_rng(9)
    for loss in ALL:
        x, y, w = _draw(rng, 4, 5, 6, loss)
        v64 = loss(x, y, w)
        v32, (gx, _, gw) = _vg(loss, x.astype(np.float32), y, w.astype(np.float32))
        assert v32.dtype == np.float32 and gx.dtype == np.float32 and gw.dtype == np.float32
        np.testing.assert_allclose(v32, v64, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# L2-softmax.


def test_l2_softmax_alpha_lower_bound():
    assert refloss.l2_softmax_alpha_lower_bound(0.9, 10000) == pytest.approx(math.log(0.9 * 9998 / 0.1), rel=1e-15)
    assert refloss.l2_softmax_alpha_lower_bound(0.9, 10000) == pytest.approx(11.40737, abs=1e-5)
    with pytest.raises(ValueError, match="num_classes must be an integer > 2"):
        refloss.l2_softmax_alpha_lower_bound(0.9, 2)
    with pytest.raises(ValueError, match="p must be in"):
        refloss.l2_softmax_alpha_lower_bound(1.0, 10)


def test_l2_softmax_with_unit_weights_is_normface():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 6)) * 7.0
    y = rng.integers(0, 4, size=5)
    w = np.eye(4, 6)[[2, 0, 3, 1]]  # unit rows: W = W_hat exactly
    (va, (gxa, _, gwa)), (vb, (gxb, _, gwb)) = (
        _vg(refloss.l2_softmax_loss, x, y, w, alpha=20.0, reduction="none"),
        _vg(refloss.normface_loss, x, y, w, scale=20.0, reduction="none"),
    )
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_array_equal(gxa, gxb)
    # the weights' gradients differ by the normalisation Jacobian: NormFace's is l2's projected
    np.testing.assert_allclose(gwb, gwa - np.sum(gwa * w, axis=1, keepdims=True) * w, rtol=1e-14, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# L-Softmax and SphereFace.


@pytest.mark.parametrize("lambda_", [0.0, 3.0])
def test_lsoftmax_with_m_one_is_softmax_cross_entropy(lambda_):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 6))
    w = rng.standard_normal((4, 6)) * 0.7
    y = rng.integers(0, 4, size=5)
    value, (gx, _, gw) = _vg(refloss.lsoftmax_loss, x, y, w, m=1, lambda_=lambda_, reduction="none")
    logits = x @ w.T
    ref, (glog, _) = refloss.cross_entropy.value_and_grad(logits, y, reduction="none")
    np.testing.assert_allclose(value, ref, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(gx, glog @ w, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(gw, glog.T @ x, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("loss", ANGULAR, ids=lambda l: l.name)
@pytest.mark.parametrize("m", [2, 3, 4])
def test_k_boundaries_are_continuous_and_c1(loss, m):
    # psi = (-1)^k T_m(c) - 2k is C^1 across c = cos(j pi / m): values and gradients from both sides agree.
    for j in range(1, m):
        c0 = math.cos(j * math.pi / m)
        vals, grads = [], []
        for side in (-1e-10, 1e-10):
            x, y, w = _at_cosine(c0 + side, norm=2.0)
            p = _params(loss, m=m, lambda_=0.0)
            v, (gx, _, gw) = _vg(loss, x, y, w, **{**p, "reduction": "sum"})
            np.testing.assert_allclose(v, sum(_mp_value(loss, x, y, w, p)), rtol=1e-13)
            vals.append(v)
            grads.append(np.concatenate([gx.ravel(), gw.ravel()]))
        assert abs(vals[0] - vals[1]) < 1e-8 * max(1.0, abs(vals[0]))
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-7, atol=1e-7 * np.max(np.abs(grads[0])))


@pytest.mark.parametrize("loss", ANGULAR, ids=lambda l: l.name)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_angular_at_cos_exactly_one(loss, sign):
    w = np.eye(3, 4) * np.array([[2.0], [0.5], [1.5]])
    x = sign * 0.8 * np.eye(1, 4)
    y = np.array([0])
    for m in (1, 2, 3, 4):
        p = _params(loss, m=m, lambda_=1.0)
        value, (gx, _, gw) = _vg(loss, x, y, w, **{**p, "reduction": "sum"})
        assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))
        np.testing.assert_allclose(value, sum(_mp_value(loss, x, y, w, p)), rtol=1e-14)


def test_margin_lambda_schedule():
    assert refloss.margin_lambda_schedule(0) == 1000.0
    assert refloss.margin_lambda_schedule(10) == pytest.approx(1000 / 2.2, rel=1e-15)
    assert refloss.margin_lambda_schedule(1659) == 5.0  # the floor
    assert refloss.margin_lambda_schedule(10**6) == 5.0
    mnist = dict(base=1000.0, gamma=2.5e-5, power=35.0, lambda_min=0.0)
    assert refloss.margin_lambda_schedule(1000, **mnist) == pytest.approx(421, rel=2e-3)
    assert refloss.margin_lambda_schedule(10000, **mnist) == pytest.approx(0.41, rel=2e-2)
    assert refloss.margin_lambda_schedule(5, base=1.0, gamma=0.0, power=1.0, lambda_min=0.0) == 1.0
    with pytest.raises(ValueError, match="iteration must be >= 0"):
        refloss.margin_lambda_schedule(-1)


# ------------------------------------------------------------------------------------------------
# eps for L-Softmax and SphereFace.


@pytest.mark.parametrize("loss", ANGULAR, ids=lambda l: l.name)
@pytest.mark.parametrize("m", [1, 3, 4])
def test_angular_eps_matches_an_f_normalize_oracle(loss, m):
    # Norms max(|v|, eps) (F.normalize), which also scale the logits: rows below eps (zero, tiny) are finite
    # and agree with the mpmath oracle, values and gradients (there the row's normalisation is v / eps).
    eps = 1e-6
    w = np.array([[1.0, 0.0, 0.5], [0.0, 2.0, -1.0], [3e-7, -4e-7, 0.0], [-1.0, 1.0, 1.0]])
    x = np.array([[3e-7, 4e-7, -1e-7], [0.0, 0.0, 0.0], [0.6, -0.3, 0.2], [0.1, 0.5, 0.4]])
    y = np.array([0, 2, 1, 2])
    p = _params(loss, m=m, lambda_=1.0, eps=eps)
    value, (gx, _, gw) = _vg(loss, x, y, w, **{**p, "reduction": "none"})
    np.testing.assert_allclose(value, _mp_value(loss, x, y, w, p), rtol=1e-13, atol=1e-15)
    for name, g in (("features", gx), ("weights", gw)):
        ref = _mp_grad(loss, x, y, w, p, name)
        np.testing.assert_allclose(g, ref, rtol=1e-9, atol=1e-12 * np.max(np.abs(ref)), err_msg=name)


@pytest.mark.parametrize("loss", ANGULAR, ids=lambda l: l.name)
def test_angular_eps_leaves_unclamped_rows_bit_identical(loss):
    rng = np.random.default_rng(21)
    x, y, w = _draw(rng, 5, 4, 6, loss)
    for m in (1, 2, 3, 4):
        a = _vg(loss, x, y, w, m=m, lambda_=2.0, reduction="sum")
        b = _vg(loss, x, y, w, m=m, lambda_=2.0, reduction="sum", eps=1e-12)
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1][0], b[1][0])
        np.testing.assert_array_equal(a[1][2], b[1][2])


# ------------------------------------------------------------------------------------------------
# SphereFace's Caffe update direction (wy1iu/sphereface MarginInnerProductLayer), transcribed here from
# the layer's Forward_cpu / Backward_cpu formulas with Caffe's sign helpers (sign(0) = 0).


def _caffe_psi_and_coefficients(c, xn, m):
    """Caffe's target logit factor psi and its backward pair (coeff_w, coeff_x) before the normalisation."""
    sign = np.sign
    s0 = sign(c)
    if m == 1:
        return c, 1.0, 0.0
    if m == 2:
        return 2 * s0 * c**2 - 1, 4 * s0 * c, 1 / (-xn) * (2 * s0 * c**2 + 1)
    if m == 3:
        s1 = sign(abs(c) - 0.5)
        s2 = s0 * (1 + s1) - 2
        return s1 * (4 * c**3 - 3 * c) + s2, s1 * (12 * c**2 - 3), 1 / (-xn) * (8 * s1 * c**3 - s2)
    s3 = s0 * sign(2 * c**2 - 1)
    s4 = 2 * s0 + s3 - 3
    psi = s3 * (8 * c**4 - 8 * c**2 + 1) + s4
    return psi, s3 * (32 * c**3 - 16 * c), 1 / (-xn) * (s3 * (24 * c**4 - 8 * c**2 - 1) - s4)


def _caffe_sphereface(x, y, w, m, lam, reduction):
    """(value, d_x, d_W, extras): the Caffe layer's forward, SoftmaxWithLoss, and the layer's backward."""
    n, c_ = x.shape[0], w.shape[0]
    wn = w / np.sqrt(np.sum(w * w, axis=1, keepdims=True))  # the in-place weight normalisation
    xn = np.sqrt(np.sum(x * x, axis=1))
    cos = (x @ wn.T) / xn[:, None]
    top = x @ wn.T
    raw = []
    for i in range(n):
        psi, cw, cx = _caffe_psi_and_coefficients(cos[i, y[i]], xn[i], m)
        raw.append((cw, cx))
        if m > 1:
            top[i, y[i]] = xn[i] * psi
    if m > 1:
        top = (top + lam * (x @ wn.T)) / (1 + lam)
    e = np.exp(top - top.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    per = -np.log(p[np.arange(n), y])
    scale = 1.0 / n if reduction == "mean" else 1.0
    value = per if reduction == "none" else np.sum(per) * scale
    top_diff = (p - np.eye(c_)[y]) * scale
    d_w = top_diff.T @ x
    if m == 1:
        return value, top_diff @ wn, d_w, (top_diff, raw, wn)
    d_x = np.zeros_like(x)
    for i in range(n):
        for j in range(c_):
            if j != y[i]:
                d_x[i] += top_diff[i, j] / (1 + lam) * wn[j]
            else:
                cw, cx = raw[i]
                rho = math.sqrt(cw * cw + cx * cx)
                d_x[i] += top_diff[i, j] / (1 + lam) * (cw / rho) * wn[j]
                d_x[i] += top_diff[i, j] / (1 + lam) * (cx / rho) * x[i]
    d_x += lam / (1 + lam) * top_diff @ wn
    return value, d_x, d_w, (top_diff, raw, wn)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("lambda_", [0.0, 5.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_sphereface_caffe_gradient_is_the_caffe_backward(m, lambda_, reduction):
    rng = np.random.default_rng(31 + m)
    p = _params(refloss.sphereface_loss, m=m, lambda_=lambda_)
    x, y, w = _draw(rng, 5, 4, 6, refloss.sphereface_loss, p)
    value, (gx, gw) = refloss.sphereface_caffe_gradient(x, y, w, m=m, lambda_=lambda_, reduction=reduction)
    ref_value, ref_gx, ref_gw, _ = _caffe_sphereface(x, y, w, m, lambda_, reduction)
    np.testing.assert_allclose(value, ref_value, rtol=1e-13)
    np.testing.assert_allclose(value, refloss.sphereface_loss(x, y, w, m=m, lambda_=lambda_, reduction=reduction), rtol=0)
    np.testing.assert_allclose(gx, ref_gx, rtol=1e-11, atol=1e-14 * np.max(np.abs(ref_gx)))
    np.testing.assert_allclose(gw, ref_gw, rtol=1e-11, atol=1e-14 * np.max(np.abs(ref_gw)))


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("lambda_", [0.0, 5.0])
def test_sphereface_caffe_feature_direction_is_the_exact_one_rescaled_at_the_target(m, lambda_):
    # Derivation: both rules agree off the target and in the lambda W_hat_y share; at the target Caffe uses
    # (psi' W_hat_y + coeff_x x) / rho where the exact gradient has psi' W_hat_y + coeff_x x = v. So
    #   d_x(Caffe) - d_x(exact) = topdiff_iy (1/rho_i - 1) / (1 + lambda) v_i,
    # parallel to the exact target-logit direction v_i (and 0 exactly where rho_i = 1).
    rng = np.random.default_rng(41 + m)
    p = _params(refloss.sphereface_loss, m=m, lambda_=lambda_)
    x, y, w = _draw(rng, 6, 5, 4, refloss.sphereface_loss, p)
    _, (gx, gw) = refloss.sphereface_caffe_gradient(x, y, w, m=m, lambda_=lambda_, reduction="sum")
    _, (ex, _, ew) = _vg(refloss.sphereface_loss, x, y, w, m=m, lambda_=lambda_, reduction="sum")
    _, _, _, (top_diff, raw, wn) = _caffe_sphereface(x, y, w, m, lambda_, "sum")
    for i in range(len(y)):
        cw, cx = raw[i]
        v = cw * wn[y[i]] + cx * x[i]
        rho = math.hypot(cw, cx)
        delta = gx[i] - ex[i]
        np.testing.assert_allclose(delta, top_diff[i, y[i]] * (1 / rho - 1) / (1 + lambda_) * v, rtol=1e-9, atol=1e-12 * np.max(np.abs(ex)))
        cross = abs(delta @ v) / (np.linalg.norm(delta) * np.linalg.norm(v))
        assert cross == pytest.approx(1.0, abs=1e-9)
    # the weight rule is topdiff^T X whatever the margin: not the exact gradient
    assert not np.allclose(gw, ew)


@pytest.mark.parametrize("lambda_", [0.0, 3.0])
def test_sphereface_caffe_with_m_one_is_exact_for_features_and_projected_for_weights(lambda_):
    # m = 1: coeff_x = 0 and coeff_w = 1, so rho = 1 and the feature rule is the exact gradient; the exact
    # weight gradient is the plain rule topdiff^T X through the normalisation: (I - W_hat W_hat^T) d_W / |W|.
    rng = np.random.default_rng(5)
    x, y, w = _draw(rng, 5, 4, 6, refloss.sphereface_loss)
    _, (gx, gw) = refloss.sphereface_caffe_gradient(x, y, w, m=1, lambda_=lambda_)
    _, (ex, _, ew) = _vg(refloss.sphereface_loss, x, y, w, m=1, lambda_=lambda_)
    np.testing.assert_allclose(gx, ex, rtol=1e-13, atol=1e-16)
    wn = np.linalg.norm(w, axis=1, keepdims=True)
    wh = w / wn
    projected = (gw - np.sum(gw * wh, axis=1, keepdims=True) * wh) / wn
    np.testing.assert_allclose(ew, projected, rtol=1e-12, atol=1e-15)


def test_sphereface_caffe_gradient_validates_through_the_loss():
    x, y, w = np.ones((2, 4)), np.array([0, 1]), np.eye(3, 4)
    with pytest.raises(ValueError, match=r"^sphereface_loss: labels must be class indices in \[0, 3\), got 3 "):
        refloss.sphereface_caffe_gradient(x, np.array([0, 3]), w)
    with pytest.raises(ValueError, match=r"^sphereface_loss: m must be an integer in \[1, 4\], got 5$"):
        refloss.sphereface_caffe_gradient(x, y, w, m=5)
    with pytest.raises(ValueError, match=r"^sphereface_loss: features must be rows of nonzero norm"):
        refloss.sphereface_caffe_gradient(np.zeros((2, 4)), y, w)
    with pytest.raises(ValueError, match=r"^sphereface_loss: reduction must be one of"):
        refloss.sphereface_caffe_gradient(x, y, w, reduction="avg")
    value, (gx, gw) = refloss.sphereface_caffe_gradient(x[:0], y[:0], w, reduction="sum")
    assert value == 0.0 and gx.shape == (0, 4) and np.all(gw == 0.0)


# ------------------------------------------------------------------------------------------------
# RBF-Softmax and L-GM: identities, coincident points, kernel underflow, far from the origin.


def _half_squared_distances(x, w):
    diff = w[None, :, :] - x[:, None, :]
    return 0.5 * np.sum(diff * diff, axis=2), diff


@pytest.mark.parametrize("seed", range(3))
def test_lgm_reduces_to_cross_entropy_of_half_squared_distances(seed):
    rng = np.random.default_rng(seed)
    x, y, mu = _draw_points(rng, 5, 4, 3, math.sqrt(2.0))
    d, diff = _half_squared_distances(x, mu)
    n = np.arange(len(y))
    # alpha = lambda = 0: softmax cross-entropy of the logits -|x - mu_k|^2 / 2, and its chain rule
    ref, (glog, _) = refloss.cross_entropy.value_and_grad(-d, y, reduction="none")
    value, (gx, _, gmu) = _vg(refloss.lgm_loss, x, y, mu, alpha=0.0, lambda_=0.0, reduction="none")
    np.testing.assert_allclose(value, ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(gx, np.einsum("ik,ikd->id", glog, diff), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gmu, -np.einsum("ik,ikd->kd", glog, diff), rtol=1e-12, atol=1e-14)
    # the margin multiplies the target's distance by 1 + alpha
    margin = -d * (1 + 0.7 * np.eye(mu.shape[0])[y])
    np.testing.assert_allclose(
        refloss.lgm_loss(x, y, mu, alpha=0.7, lambda_=0.0, reduction="none"),
        refloss.cross_entropy(margin, y, reduction="none"), rtol=1e-13, atol=1e-15,
    )
    # the likelihood regulariser adds lambda |x - mu_y|^2 / 2 per sample ('mean': averaged over the batch)
    with_reg = refloss.lgm_loss(x, y, mu, alpha=0.7, lambda_=0.25, reduction="none")
    np.testing.assert_allclose(with_reg - refloss.cross_entropy(margin, y, reduction="none"), 0.25 * d[n, y], rtol=1e-12)
    np.testing.assert_allclose(refloss.lgm_loss(x, y, mu, alpha=0.7, lambda_=0.25), np.mean(with_reg), rtol=1e-15)


def test_rbf_reduces_to_cross_entropy_of_scaled_kernels():
    rng = np.random.default_rng(8)
    x, y, w = _draw_points(rng, 5, 4, 7, 4.0)
    d, diff = _half_squared_distances(x, w)
    kernel = np.exp(-2 * d / 16.0)
    ref, (glog, _) = refloss.cross_entropy.value_and_grad(35.0 * kernel, y, reduction="none")
    value, (gx, _, gw) = _vg(refloss.rbf_softmax_loss, x, y, w, reduction="none")
    np.testing.assert_allclose(value, ref, rtol=1e-13)
    a = glog * kernel * (2 * 35.0 / 16.0)
    np.testing.assert_allclose(gx, np.einsum("ij,ijd->id", a, diff), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gw, -np.einsum("ij,ijd->jd", a, diff), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("loss", DISTANCE, ids=lambda l: l.name)
def test_distance_losses_are_invariant_to_a_common_translation(loss):
    # On a dyadic grid the translation is exact, and so are the differences W_j - x_i: bit for bit.
    rng = np.random.default_rng(13)
    x, y, w = _draw_points(rng, 4, 5, 3, _width(loss, loss.defaults()))
    x, w = np.round(x * 2.0**20) / 2.0**20, np.round(w * 2.0**20) / 2.0**20
    t = rng.integers(-1000, 1000, size=3).astype(float)
    a = _vg(loss, x, y, w, reduction="sum")
    b = _vg(loss, x + t, y, w + t, reduction="sum")
    assert a[0] == b[0]
    for u, v in zip(a[1], b[1]):
        assert (u is None) == (v is None)
        if u is not None:
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("loss", DISTANCE, ids=lambda l: l.name)
def test_coincident_feature_and_centre(loss):
    # x_i = W_j exactly: the kernel is 1 (RBF) or the distance 0 (L-GM); the loss is smooth there.
    rng = np.random.default_rng(17)
    p = _params(loss)
    x, y, w = _draw_points(rng, 3, 4, 5, _width(loss, p))
    x[0], x[1] = w[y[0]], w[(y[1] + 1) % 4]  # at its own centre, at another class's centre
    value, (gx, _, gw) = _vg(loss, x, y, w, **{**p, "reduction": "none"})
    np.testing.assert_allclose(value, _mp_value(loss, x, y, w, p), rtol=1e-13, atol=1e-14)
    for name, g in (("features", gx), ("weights", gw)):
        ref = _mp_grad(loss, x, y, w, p, name)
        np.testing.assert_allclose(g, ref, rtol=1e-11, atol=1e-13 * np.max(np.abs(ref)), err_msg=name)


def test_rbf_kernel_underflow_gives_log_c_and_a_zero_gradient():
    rng = np.random.default_rng(19)
    x, y, w = _draw_points(rng, 3, 5, 4, 4.0)
    far = x.copy()
    far[0] = 1e3 * 4.0 * np.array([1.0, -1.0, 1.0, 1.0])  # |W - x|^2 / gamma ~ 4e6: exp underflows to 0
    value, (gx, _, gw) = _vg(refloss.rbf_softmax_loss, far, y, w, reduction="none")
    assert value[0] == pytest.approx(math.log(5), rel=1e-15)
    np.testing.assert_allclose(value[1:], _mp_value(refloss.rbf_softmax_loss, far, y, w, _params(refloss.rbf_softmax_loss))[1:], rtol=1e-13)
    assert np.all(gx[0] == 0.0)
    # the far row adds exactly nothing to the centres' gradient
    _, (_, _, gw_rest) = _vg(refloss.rbf_softmax_loss, far[1:], y[1:], w, reduction="none")
    np.testing.assert_array_equal(gw, gw_rest)
    # huge inputs (|W - x| beyond the largest float): no overflow, no warning, the same answer
    huge = np.array([[1e300, -1e300, 1e300, 1e300], [-1.7e308, 1.7e308, 0.0, 1.0]])
    wh = w.copy()
    wh[2] = [1.7e308, -1.7e308, 1e308, -1e308]
    value, (gx, _, gw) = _vg(refloss.rbf_softmax_loss, huge, y[:2], wh, reduction="none")
    np.testing.assert_allclose(value, math.log(5), rtol=1e-15)
    assert np.all(gx == 0.0) and np.all(gw == 0.0)


@pytest.mark.parametrize("loss", DISTANCE, ids=lambda l: l.name)
def test_near_a_centre_far_from_the_origin(loss):
    # Centres 2^20 widths from the origin, a feature 1e-7 widths from one of them: |x|^2 + |W|^2 - 2 x.W
    # would lose every digit of the squared distance (absolute error ~ eps |x|^2 ~ 1e-4 widths^2 >> 1e-14).
    rng = np.random.default_rng(23)
    p = _params(loss)
    width = _width(loss, p)
    x, y, w = _draw_points(rng, 3, 4, 3, width)
    offset = 2.0**20 * width * np.array([1.0, 0.5, -0.25])
    w = w + offset
    x = x + offset
    x[0] = w[y[0]] + 1e-7 * width * np.array([0.6, -0.8, 0.0])
    expanded = np.sum(x[0] ** 2) + np.sum(w[y[0]] ** 2) - 2 * x[0] @ w[y[0]]
    exact = float(mp.fsum((mp.mpf(float(a)) - mp.mpf(float(b))) ** 2 for a, b in zip(x[0], w[y[0]])))
    assert abs(expanded - exact) >= 0.5 * exact  # the expanded form loses every digit (here it gives 0): the test would catch it
    value, (gx, _, gw) = _vg(loss, x, y, w, **{**p, "reduction": "none"})
    np.testing.assert_allclose(value, _mp_value(loss, x, y, w, p), rtol=1e-12, atol=1e-14)
    ref = _mp_grad(loss, x, y, w, p, "features")
    np.testing.assert_allclose(gx, ref, rtol=1e-9, atol=1e-12 * np.max(np.abs(ref)))


def test_lgm_large_norms_are_finite_and_exact():
    x = np.array([[1e100, -3e99, 2e99], [0.5, 0.25, -1.0]])
    mu = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 2.0], [-1e99, 1e99, 0.0]])
    y = np.array([2, 1])
    p = _params(refloss.lgm_loss)
    value, (gx, _, gw) = _vg(refloss.lgm_loss, x, y, mu, **{**p, "reduction": "none"})
    np.testing.assert_allclose(value, _mp_value(refloss.lgm_loss, x, y, mu, p), rtol=1e-13)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))


@pytest.mark.parametrize("loss", DISTANCE, ids=lambda l: l.name)
def test_distance_losses_need_a_feature_column(loss):
    with pytest.raises(ValueError, match=rf"^{loss.name}: features must be of at least one feature column \(D >= 1\), got shape \(2, 0\)$"):
        loss(np.zeros((2, 0)), np.array([0, 1]), np.zeros((3, 0)), reduction="sum")


@pytest.mark.parametrize("loss", DISTANCE, ids=lambda l: l.name)
@pytest.mark.parametrize("tag", ["typical", "extreme", "edge"])
def test_distance_domains(loss, tag):
    # Typical inputs give O(1-10) logits and a non-degenerate softmax; extreme and edge inputs are finite.
    from refloss.cases import sample

    for seed in range(20):
        case = sample(loss, loss.defaults(), tag, np.random.default_rng(seed))
        x, y, w = case.inputs
        value, (gx, _, gw) = _vg(loss, x, y, w, reduction="none")
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))
        if tag == "typical":
            d, _ = _half_squared_distances(x, w)
            if loss is refloss.rbf_softmax_loss:
                z = 35.0 * np.exp(-2 * d / 16.0)
            else:
                z = -d * (1 + np.eye(w.shape[0])[y])
            assert np.all(np.abs(z) <= 40.0)
            assert np.all(np.ptp(z, axis=1) <= 15.0)  # no probability below e^-15 relative to the top one


# ------------------------------------------------------------------------------------------------
# The double-double arithmetic the margin losses are computed in (refloss.losses.margin), against
# mpmath at 60 digits: the accuracy each piece's docstring states.


def _dd_error(pair, exact, relative=True):
    """Largest |(hi + lo) - exact| (relative to |exact| unless ``relative`` is False) over the elements."""
    worst = mp.mpf(0)
    hi, lo = (np.asarray(v, dtype=float).ravel() for v in pair)
    for h, l, e in zip(hi, lo, np.ravel(np.asarray(exact, dtype=object))):
        err = abs(mp.mpf(float(h)) + mp.mpf(float(l)) - e)
        worst = max(worst, err / abs(e) if relative and e != 0 else err)
    return float(worst)


def test_double_double_constants():
    with mp.workdps(60):
        assert _dd_error((M._PI[0], M._PI[1]), [mp.pi]) < 2.0**-104
        assert _dd_error((M._LN2[0], M._LN2[1]), [mp.log(2)]) < 2.0**-104
        head, mid, low = M._LN2_STEP
        assert abs(mp.mpf(head) + mp.mpf(mid) + mp.mpf(low) - mp.log(2) / 1024) < 2.0**-150
        assert (head * 2.0**39).is_integer() and head * 2.0**39 < 2.0**30  # a 30-bit head: k head is exact
        hi, lo = M._exp2_table()
        js = [0, 1, 511, 1023]
        assert _dd_error(([hi[j] for j in js], [lo[j] for j in js]), [mp.mpf(2) ** (mp.mpf(j) / 1024) for j in js]) < 2.0**-104
        for m in (0.0, 1e-3, 0.35, 0.5, 1.2, 1.5):
            (sh, sl), (ch, cl) = M._sincos_constant(m)
            assert _dd_error((sh, sl), [mp.sin(m)], relative=False) < 2.0**-104
            assert _dd_error((ch, cl), [mp.cos(m)], relative=False) < 2.0**-104


def test_double_double_exp_sin_cos():
    rng = np.random.default_rng(5)
    a = np.concatenate([-rng.uniform(0, 700, 200), rng.uniform(-1, 1, 100), -rng.uniform(0, 1e-3, 50), [0.0]])
    lo = a * 2.0**-54 * rng.uniform(-1, 1, a.size)
    with mp.workdps(60):
        exact = [mp.exp(mp.mpf(float(h)) + mp.mpf(float(l))) for h, l in zip(a, lo)]
        assert _dd_error(M._dd_exp(anp, (a, lo)), exact) < 2.0**-62
        t = rng.uniform(-7, 7, 100)
        t_lo = t * 2.0**-54 * rng.uniform(-1, 1, t.size)
        sin, cos = M._dd_sincos(anp, (t, t_lo))
        angles = [mp.mpf(float(h)) + mp.mpf(float(l)) for h, l in zip(t, t_lo)]
        assert _dd_error(sin, [mp.sin(v) for v in angles], relative=False) < 2.0**-94
        assert _dd_error(cos, [mp.cos(v) for v in angles], relative=False) < 2.0**-94
    # outside the finite range: 0, inf and NaN, with no floating-point warning (pytest turns them into errors)
    hi, _ = M._dd_exp(anp, (np.array([-1e4, 800.0, np.nan, -np.inf]), np.zeros(4)))
    assert hi[0] == 0 and hi[1] == np.inf and np.isnan(hi[2]) and hi[3] == 0


def test_double_double_products_and_unit_rows():
    rng = np.random.default_rng(6)
    with mp.workdps(60):
        for d in (3, 64):
            # rows of very different scales: the products are accurate relative to each row's scale
            a = rng.standard_normal((3, d)) * 10.0 ** rng.uniform(-30, 30, (3, 1))
            b = rng.standard_normal((4, d)) * 10.0 ** rng.uniform(-30, 30, (4, 1))
            a_lo = a * 2.0**-54 * rng.uniform(-1, 1, a.shape)
            hi, lo = M._dd_matmul(anp, (a, a_lo), (b, None))
            for i in range(3):
                for j in range(4):
                    exact = mp.fsum((mp.mpf(float(a[i, k])) + mp.mpf(float(a_lo[i, k]))) * mp.mpf(float(b[j, k])) for k in range(d))
                    scale = mp.sqrt(mp.fsum(mp.mpf(float(v)) ** 2 for v in a[i])) * mp.sqrt(mp.fsum(mp.mpf(float(v)) ** 2 for v in b[j]))
                    assert abs(mp.mpf(float(hi[i, j])) + mp.mpf(float(lo[i, j])) - exact) / scale < 2.0**-68
            # unit rows of any norm, 1e-300 to 1e300, and their norms
            v = rng.standard_normal((5, d)) * 10.0 ** rng.uniform(-300, 300, (5, 1))
            rows = M._normalise_rows(anp, v, None)
            for i in range(5):
                norm = mp.sqrt(mp.fsum(mp.mpf(float(t)) ** 2 for t in v[i]))
                assert _dd_error((rows.hat[i], rows.hat_lo[i]), [mp.mpf(float(t)) / norm for t in v[i]], relative=False) < 2.0**-72
                assert _dd_error((rows.norm[i], rows.norm_lo[i]), [norm]) < 2.0**-72
    # the scatter of the target terms to their weight rows: each row's sum to the precision of its own
    # terms, even next to rows a hundred orders of magnitude larger
    labels = [2, 0, 2, 1]
    hot = np.eye(3, dtype=bool)[labels]
    v = rng.standard_normal((4, 5)) * np.array([[1.0], [1e-100], [1.0], [1e100]])
    hi, lo = M._scatter_rows(anp, hot, (v, v * 2.0**-60))
    with mp.workdps(60):
        exact = [[mp.fsum(mp.mpf(float(v[i, k])) * (1 + mp.mpf(2) ** -60) for i in range(4) if labels[i] == j) for k in range(5)] for j in range(3)]
        assert _dd_error((hi, lo), exact) < 2.0**-70
