"""Adaptive margin losses (refloss.losses.margin_adaptive): Sub-center ArcFace, AdaCos, CurricularFace,
MagFace, AdaFace. Values and gradients against an independent mpmath oracle written from the papers'
and official code's formulas (acos, plain norms, the official clamps), with D != C and unstructured
weights; the identities with the seed margin losses; the state helpers; the kinks (sub-centre ties,
the hard-negative threshold, the norm clamp, the angle clip, |cos| = 1); bad input."""

from __future__ import annotations

import math
import re
import warnings

import mpmath as mp
import numpy as np
import pytest

import refloss
from refloss.cases import param_paths
from refloss.proof import autograd_check, central_difference

SUB = refloss.subcenter_arcface_loss
ADACOS = refloss.adacos_loss
CURR = refloss.curricularface_loss
MAG = refloss.magface_loss
ADA = refloss.adaface_loss
LOSSES = [SUB, ADACOS, CURR, MAG, ADA]
IDS = [l.name for l in LOSSES]


# ------------------------------------------------------------------------------------------------
# The mpmath oracle: the formulas as the papers and official modules write them (acos, cos(theta + m),
# clamps and clips), sharing nothing with refloss's angle-addition implementation.


def _acos(c):
    return mp.acos(max(min(c, mp.mpf(1)), mp.mpf(-1)))


def _arc(c, m, easy_margin, fallback):
    """insightface ArcFace target (easy margin, th / mm fallback)."""
    m = mp.mpf(m)
    if easy_margin:
        return mp.cos(_acos(c) + m) if c > 0 else c
    if fallback == "insightface":
        return mp.cos(_acos(c) + m) if c > mp.cos(mp.pi - m) else c - mp.sin(mp.pi - m) * m
    return mp.cos(_acos(c) + m)


def _mp_losses(name, x, y, w, p, dps=50, frozen_norms=None):
    """Per-sample losses; ``x`` and ``w`` nested lists of mpf (``w[j][k]`` sub-centres for Sub-center
    ArcFace); ``frozen_norms`` the detached norms (AdaFace) or None to take them from ``x``."""
    with mp.workdps(dps or mp.mp.dps):
        eps = p.get("eps")

        def norm(v):
            n = mp.sqrt(mp.fsum(t * t for t in v))
            return max(n, mp.mpf(eps)) if eps is not None else n

        def cos(u, v):
            return mp.fsum(a * b for a, b in zip(u, v)) / (norm(u) * norm(v))

        num_classes = len(w)
        out = []
        for i, (xi, yi) in enumerate(zip(x, y)):
            if name == "subcenter_arcface_loss":
                c = [max(cos(xi, wk) for wk in wj) for wj in w]
            else:
                c = [cos(xi, wj) for wj in w]
            extra = 0
            if name == "subcenter_arcface_loss":
                s = mp.mpf(p["scale"])
                z = [s * t for t in c]
                z[yi] = s * _arc(c[yi], p["margin"], p["easy_margin"], p["fallback"])
            elif name == "adacos_loss":
                s = mp.sqrt(2) * mp.log(num_classes - 1) if p["scale"] is None else mp.mpf(p["scale"])
                z = [s * t for t in c]
                z[yi] = s * mp.cos(_acos(c[yi]) + p["margin"])
            elif name == "curricularface_loss":
                s, m, t = mp.mpf(p["scale"]), mp.mpf(p["margin"]), mp.mpf(p["t"])
                ctm = mp.cos(_acos(c[yi]) + m)  # the official mask compares with cos(theta + m) itself
                z = [s * (cj * (t + cj) if cj > ctm else cj) for cj in c]
                z[yi] = s * _arc(c[yi], m, False, "insightface")
            elif name == "magface_loss":
                s = mp.mpf(p["scale"])
                a = min(max(norm(xi), mp.mpf(p["l_a"])), mp.mpf(p["u_a"]))
                m = (mp.mpf(p["u_margin"]) - p["l_margin"]) / (mp.mpf(p["u_a"]) - p["l_a"]) * (a - p["l_a"]) + p["l_margin"]
                z = [s * t for t in c]
                z[yi] = s * _arc(c[yi], m, p["easy_margin"], "insightface")
                extra = p["lambda_g"] * (a / mp.mpf(p["u_a"]) ** 2 + 1 / a)
            elif name == "adaface_loss":
                s, m, h, lim = mp.mpf(p["scale"]), mp.mpf(p["margin"]), mp.mpf(p["h"]), 1 - mp.mpf("0.001")
                c = [min(max(t, -lim), lim) for t in c]
                n = frozen_norms[i] if frozen_norms is not None else norm(xi)
                n = min(max(n, mp.mpf("0.001")), mp.mpf(100))
                zeta = min(max(h * (n - p["norm_mean"]) / (mp.mpf(p["norm_std"]) + mp.mpf("0.001")), mp.mpf(-1)), mp.mpf(1))
                theta = min(max(mp.acos(c[yi]) - m * zeta, mp.mpf("0.001")), mp.pi - mp.mpf("0.001"))
                z = [s * t for t in c]
                z[yi] = s * (mp.cos(theta) - (m + m * zeta))
            out.append(mp.log(mp.fsum(mp.exp(t) for t in z)) - z[yi] + extra)
        return out


def _mp(a):
    if a.ndim == 3:
        return [[[mp.mpf(float(v)) for v in row] for row in cls] for cls in a]
    return [[mp.mpf(float(v)) for v in row] for row in a]


def _mp_value(loss, x, y, w, p):
    return np.array([float(v) for v in _mp_losses(loss.name, _mp(x), list(y), _mp(w), p)])


def _mp_grad(loss, x, y, w, p, which):
    """d(sum of losses)/d(input) by mpmath's high-precision numerical differentiation (AdaFace: with the
    norms frozen at ``x``, the official detach)."""
    X, W = _mp(x), _mp(w)
    frozen = None
    if loss is ADA:
        with mp.workdps(40):
            frozen = [mp.sqrt(mp.fsum(t * t for t in row)) for row in X]
    target = X if which == "features" else W
    shape = x.shape if which == "features" else w.shape
    out = np.zeros(shape)
    with mp.workdps(40):
        for idx in np.ndindex(*shape):
            holder = target
            for k in idx[:-1]:
                holder = holder[k]
            base = holder[idx[-1]]

            def f(t, holder=holder, last=idx[-1], base=base):
                holder[last] = t
                v = mp.fsum(_mp_losses(loss.name, X, list(y), W, p, dps=None, frozen_norms=frozen))
                holder[last] = base
                return v

            out[idx] = float(mp.diff(f, base))
    return out


def _params(loss, **override):
    p = loss.defaults()
    p.update(override)
    return p


# ------------------------------------------------------------------------------------------------
# Random inputs with D != C, away from every kink (plain NumPy, from the formulas).


def _unit_rows(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _kinks_ok(loss, x, y, w, p, away):
    """Every quantity a kink depends on is at least ``away`` from it."""
    n = np.arange(len(y))
    xn = np.linalg.norm(x, axis=1)
    if loss is SUB:
        cos3 = np.einsum("nd,ckd->nck", _unit_rows(x), _unit_rows(w))
        top = np.sort(cos3, axis=2)
        if w.shape[1] > 1 and np.any(top[:, :, -1] - top[:, :, -2] < away):  # the max's kink
            return False
        cos = top[:, :, -1]
    else:
        cos = _unit_rows(x) @ _unit_rows(w).T
    ct = cos[n, y]
    if np.any(np.abs(np.abs(cos) - 1) < away):
        return False
    kinks = []
    if loss is SUB and p["easy_margin"]:
        kinks.append(np.zeros_like(ct))
    elif (loss is SUB and p["fallback"] == "insightface") or loss is CURR:
        kinks.append(np.full_like(ct, math.cos(math.pi - p["margin"])))
    if loss is CURR:
        ctm = np.cos(np.arccos(ct) + p["margin"])
        others = np.where(np.eye(cos.shape[1], dtype=bool)[y], np.inf, cos)
        if np.any(np.abs(others - ctm[:, None]) < away):
            return False
    if loss is MAG:
        if np.any(np.minimum(np.abs(xn - p["l_a"]), np.abs(xn - p["u_a"])) < 50 * away):
            return False
        a = np.clip(xn, p["l_a"], p["u_a"])
        m = (p["u_margin"] - p["l_margin"]) / (p["u_a"] - p["l_a"]) * (a - p["l_a"]) + p["l_margin"]
        kinks.append(np.zeros_like(ct) if p["easy_margin"] else np.cos(np.pi - m))
    if loss is ADA:
        if np.any(np.abs(np.abs(cos) - (1 - 1e-3)) < away):
            return False
        nn_ = np.clip(xn, 1e-3, 100)
        zeta = np.clip(p["h"] * (nn_ - p["norm_mean"]) / (p["norm_std"] + 1e-3), -1, 1)
        angle = np.arccos(np.clip(ct, -1 + 1e-3, 1 - 1e-3)) - p["margin"] * zeta
        if np.any(np.minimum(np.abs(angle - 1e-3), np.abs(angle - (np.pi - 1e-3))) < away):
            return False
    return all(np.all(np.abs(ct - k) >= away) for k in kinks)


def _draw(rng, loss, p, n=3, c=4, d=5, k=3, away=0.02):
    while True:
        if loss is MAG:
            norms = rng.uniform(0.5 * p["l_a"], 1.4 * p["u_a"], size=(n, 1))
        elif loss is ADA:
            norms = rng.uniform(1.0, 150.0, size=(n, 1))
        else:
            norms = 10.0 ** rng.uniform(0, 1.5, size=(n, 1))
        x = _unit_rows(rng.standard_normal((n, d))) * norms
        wshape = (c, k, d) if loss is SUB else (c, d)
        w = rng.standard_normal(wshape) * 10.0 ** rng.uniform(-0.5, 0.5, size=wshape[:-1] + (1,))
        y = rng.integers(0, c, size=n)
        if _kinks_ok(loss, x, y, w, p, away):
            return x, y, w


def _vg(loss, x, y, w, **p):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return loss.value_and_grad(x, y, w, **p)


# ------------------------------------------------------------------------------------------------
# Values and gradients against mpmath.

ORACLE_PARAMS = {
    "subcenter_arcface_loss": [{}, {"fallback": "insightface"}, {"easy_margin": True, "margin": 0.3}, {"margin": 1.2, "scale": 30.0}],
    "adacos_loss": [{}, {"margin": 0.5}, {"scale": 10.0}, {"scale": 12.0, "margin": 0.3}],
    "curricularface_loss": [{}, {"t": 0.4}, {"margin": 0.3, "t": -0.2, "scale": 30.0}, {"margin": 1.2, "t": 0.9}],
    "magface_loss": [
        {}, {"easy_margin": False}, {"lambda_g": 35.0, "l_margin": 0.3, "u_margin": 0.9},
        {"l_a": 20.0, "u_a": 80.0, "scale": 30.0, "easy_margin": False},
    ],
    "adaface_loss": [
        {}, {"h": 0.0}, {"norm_mean": 50.0, "norm_std": 10.0}, {"margin": 0.8, "h": 1.0, "norm_std": 30.0, "scale": 30.0},
        {"margin": 1.5, "h": 1.0, "norm_mean": 60.0, "norm_std": 30.0},
    ],
}
ORACLE_CASES = [(l, o) for l in LOSSES for o in ORACLE_PARAMS[l.name]]


@pytest.mark.parametrize("loss, override", ORACLE_CASES, ids=[f"{l.name}-{o}" for l, o in ORACLE_CASES])
def test_values_and_gradients_match_mpmath(loss, override):
    rng = np.random.default_rng(sum(map(ord, loss.name + str(override))))
    p = _params(loss, **override)
    x, y, w = _draw(rng, loss, p)
    value = loss(x, y, w, **{**p, "reduction": "none"})
    expected = _mp_value(loss, x, y, w, p)
    # a few ulps of the logits (s up to 64): the loss is a difference of logit-sized numbers
    np.testing.assert_allclose(value, expected, rtol=1e-14, atol=64 * 8 * np.finfo(float).eps)
    _, (gx, gy, gw) = _vg(loss, x, y, w, **{**p, "reduction": "sum"})
    assert gy is None
    for name, g in (("features", gx), ("weights", gw)):
        ref = _mp_grad(loss, x, y, w, p, name)
        np.testing.assert_allclose(g, ref, rtol=1e-11, atol=1e-13 * np.max(np.abs(ref)), err_msg=name)


def test_the_oracle_sees_the_adaptive_parts():
    # The cases above exercise what makes each loss adaptive: some sub-centre is not the first, some
    # curricular negative is hard and some not, MagFace norms fall inside and outside the clamp, and
    # AdaFace's z-score is clipped somewhere.
    rng = np.random.default_rng(0)
    x, y, w = _draw(rng, SUB, _params(SUB), n=20)
    assert np.any(np.argmax(np.einsum("nd,ckd->nck", _unit_rows(x), _unit_rows(w)), axis=2) > 0)
    p = _params(CURR)
    x, y, w = _draw(rng, CURR, p, n=20)
    cos = _unit_rows(x) @ _unit_rows(w).T
    ctm = np.cos(np.arccos(cos[np.arange(20), y]) + p["margin"])
    hard = (cos > ctm[:, None]) & ~np.eye(4, dtype=bool)[y]
    assert hard.any() and (~hard).any()
    p = _params(MAG)
    norms = np.linalg.norm(_draw(rng, MAG, p, n=20)[0], axis=1)
    assert np.any((norms > 10) & (norms < 110)) and np.any((norms < 10) | (norms > 110))
    p = _params(ADA, **ORACLE_PARAMS["adaface_loss"][4])
    norms = np.linalg.norm(_draw(rng, ADA, p, n=20)[0], axis=1)
    zeta = (np.clip(norms, 1e-3, 100) - 60.0) / (30.0 + 1e-3)
    assert np.any(np.abs(zeta) > 1) and np.any(np.abs(zeta) < 1)


PROOF_REDUCTIONS = ("none", "mean")


@pytest.mark.parametrize("loss", LOSSES, ids=IDS)
def test_gradient_proof_with_d_not_c_and_unstructured_weights(loss):
    # The registry's domains use an orthogonal frame (D = C, or D = C K); here every parameter path is
    # proven (central differences and autograd) on generic inputs with D != C.
    # Each parameter variant under a per-sample cotangent ('none') and the batch mean: the other
    # reductions differ only by the shared reduce_vjp, which refloss check and test_gradients prove.
    rng = np.random.default_rng(11)
    rows = []
    for params in param_paths(loss, PROOF_REDUCTIONS):
        for n, c, d in ((3, 4, 6), (2, 5, 3)):
            while True:
                x, y, w = _draw(rng, loss, params, n=n, c=c, d=d, away=0.05)
                if loss is not MAG:
                    break
                # MagFace's O(1) regulariser drowns a saturated softmax's tiny gradient in the rounding
                # of the sum (see refloss's magface_features): keep every CE above 1e-3.
                ce = MAG(x, y, w, **{**params, "lambda_g": 0.0, "reduction": "none"})
                if np.all(ce > 1e-3):
                    break
            rows += central_difference(loss, [x, y, w], params, rng)
            rows += autograd_check(loss, [x, y, w], params, rng)
    assert rows
    bad = [f"{r.method} {r.input} {r.params}: {r.error:.3g} {r.detail}" for r in rows if not r.ok]
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------------------------------
# Identities with the seed margin losses.


def _same(a, b, rtol=0.0, atol=0.0):
    (va, ga), (vb, gb) = a, b
    np.testing.assert_allclose(va, vb, rtol=rtol, atol=atol)
    for u, v in zip(ga, gb):
        assert (u is None) == (v is None)
        if u is not None:
            np.testing.assert_allclose(u, v, rtol=rtol, atol=atol * 1e-2)


def _plain(rng, n=4, c=5, d=7):
    x = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(0, 1.5, size=(n, 1))
    w = rng.standard_normal((c, d)) * 10.0 ** rng.uniform(-0.5, 0.5, size=(c, 1))
    return x, rng.integers(0, c, size=n), w


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "arc", [{}, {"fallback": "insightface"}, {"easy_margin": True, "margin": 0.7}, {"margin": 1.3, "scale": 20.0}],
    ids=["none", "insightface", "easy", "wide"],
)
def test_subcenter_with_one_subcentre_is_arcface(seed, arc):
    x, y, w = _plain(np.random.default_rng(seed))
    p = {**_params(SUB, **arc), "reduction": "none"}
    v, (gx, _, gw) = _vg(SUB, x, y, w[:, None, :], **p)
    ref = {k: p[k] for k in ("scale", "margin", "easy_margin", "fallback")}
    rv, (rgx, _, rgw) = _vg(refloss.arcface_loss, x, y, w, **ref, reduction="none")
    np.testing.assert_array_equal(v, rv)
    np.testing.assert_allclose(gx, rgx, rtol=1e-14, atol=1e-15 * np.max(np.abs(rgx)))
    np.testing.assert_allclose(gw[:, 0, :], rgw, rtol=1e-14, atol=1e-15 * np.max(np.abs(rgw)))


def test_subcenter_duplicated_subcentres_are_a_tie_routed_to_the_first():
    rng = np.random.default_rng(1)
    x, y, w = _plain(rng)
    w3 = np.stack([w, w, w], axis=1)  # every sub-centre equal: a three-way tie in every class
    v, (gx, _, gw) = _vg(SUB, x, y, w3, reduction="sum")
    rv, (rgx, _, rgw) = _vg(refloss.arcface_loss, x, y, w, fallback="none", reduction="sum")
    assert v == rv
    np.testing.assert_allclose(gx, rgx, rtol=1e-14)
    np.testing.assert_allclose(gw[:, 0, :], rgw, rtol=1e-14)
    assert np.all(gw[:, 1:, :] == 0.0)


def test_subcenter_value_is_invariant_to_the_order_of_subcentres():
    rng = np.random.default_rng(2)
    p = _params(SUB)
    x, y, w = _draw(rng, SUB, p, n=5, c=4, d=6, k=3)
    perm = np.array([2, 0, 1])
    v, (gx, _, gw) = _vg(SUB, x, y, w, reduction="none")
    v2, (gx2, _, gw2) = _vg(SUB, x, y, w[:, perm, :], reduction="none")
    np.testing.assert_array_equal(v, v2)
    np.testing.assert_array_equal(gx, gx2)
    np.testing.assert_array_equal(gw[:, perm, :], gw2)
    # only the arg-max sub-centre of each class that some sample meets gets a gradient
    best = np.argmax(np.einsum("nd,ckd->nck", _unit_rows(x), _unit_rows(w)), axis=2)
    used = np.zeros(w.shape[:2], dtype=bool)
    for i in range(len(y)):
        used[np.arange(w.shape[0]), best[i]] = True
    assert np.all(np.linalg.norm(gw, axis=2)[~used] == 0.0)
    assert np.all(np.linalg.norm(gw, axis=2)[used] > 0.0)


@pytest.mark.parametrize("seed", range(4))
def test_adacos_identities(seed):
    x, y, w = _plain(np.random.default_rng(seed))
    # no margin: NormFace at the same scale, to the bit
    _same(_vg(ADACOS, x, y, w, scale=7.5, reduction="none"), _vg(refloss.normface_loss, x, y, w, scale=7.5, reduction="none"))
    # scale=None: the fixed scale sqrt(2) log(C - 1), which AdaCos carries exactly (a double-double, as
    # the oracle's); NormFace takes its float64 rounding, half an ULP away
    s = math.sqrt(2) * math.log(w.shape[0] - 1)
    _same(_vg(ADACOS, x, y, w, reduction="none"), _vg(refloss.normface_loss, x, y, w, scale=s, reduction="none"), rtol=1e-14, atol=1e-14)
    # the port's margin: ArcFace without fallback
    _same(
        _vg(ADACOS, x, y, w, scale=30.0, margin=0.5, reduction="none"),
        _vg(refloss.arcface_loss, x, y, w, scale=30.0, margin=0.5, fallback="none", reduction="none"),
        rtol=1e-14, atol=1e-14,
    )


def test_adacos_fixed_scale_with_two_classes_is_zero_and_the_loss_constant():
    rng = np.random.default_rng(3)
    x, y, w = _plain(rng, c=2)
    v, (gx, _, gw) = _vg(ADACOS, x, y, w, reduction="none")
    np.testing.assert_array_equal(v, np.full(len(y), math.log(2)))
    assert np.all(gx == 0) and np.all(gw == 0)
    assert refloss.adacos_fixed_scale(2) == 0.0


def _easy_targets(rng, n=5, c=4, d=6, target=0.95):
    """Weights the first c unit vectors (scaled); each feature has cos ``target`` to its class and negative
    cosines to the others: no CurricularFace hard negative (cos(theta_y + 0.5) ~ 0.68 > 0)."""
    w = np.eye(c, d) * rng.uniform(0.5, 3.0, size=(c, 1))
    y = rng.integers(0, c, size=n)
    x = np.zeros((n, d))
    for i, yi in enumerate(y):
        rest = -np.abs(rng.standard_normal(d))
        rest[yi] = 0.0
        rest[c:] = np.abs(rest[c:])
        rest *= math.sqrt(1 - target**2) / np.linalg.norm(rest)
        x[i] = rest
        x[i, yi] = target
    return x * rng.uniform(2.0, 50.0, size=(n, 1)), y, w


@pytest.mark.parametrize("t", [0.0, 0.3, 0.9, -0.5])
def test_curricularface_without_hard_negatives_is_arcface(t):
    rng = np.random.default_rng(4)
    x, y, w = _easy_targets(rng)
    cos = _unit_rows(x) @ _unit_rows(w).T
    ctm = np.cos(np.arccos(cos[np.arange(len(y)), y]) + 0.5)
    assert np.all(np.where(np.eye(4, dtype=bool)[y], -np.inf, cos) < ctm[:, None])
    _same(
        _vg(CURR, x, y, w, t=t, reduction="none"),
        _vg(refloss.arcface_loss, x, y, w, fallback="insightface", reduction="none"),
    )


def test_curricularface_hard_negatives_change_the_loss_with_t():
    # one hard negative (cos 0.6 > cos(theta_y + m) for cos_y = 0.5): its logit is s c (t + c)
    w = np.eye(3, 4)
    x = np.array([[0.5, 0.6, -0.2, math.sqrt(1 - 0.25 - 0.36 - 0.04)]]) * 4.0
    y = np.array([0])
    values = [float(CURR(x, y, w, t=t, reduction="sum")) for t in (0.0, 0.4, 0.4 + 1e-3)]
    p = _params(CURR)
    for t, v in zip((0.0, 0.4), values):
        np.testing.assert_allclose(v, sum(_mp_value(CURR, x, y, w, {**p, "t": t})), rtol=1e-14)
    assert values[0] < values[1] < values[2]  # d/dt of s c (t + c) is s c > 0: a harder negative


@pytest.mark.parametrize("easy_margin", [True, False])
@pytest.mark.parametrize("lambda_g", [0.0, 20.0])
def test_magface_with_a_constant_margin_is_arcface_plus_the_regulariser(easy_margin, lambda_g):
    rng = np.random.default_rng(5)
    x, y, w = _plain(rng, n=6)
    x = _unit_rows(x) * np.array([[5.0], [20.0], [60.0], [109.0], [150.0], [10.0]])  # inside and outside [10, 110]
    m = 0.6
    v, (gx, _, gw) = _vg(MAG, x, y, w, l_margin=m, u_margin=m, lambda_g=lambda_g, easy_margin=easy_margin, reduction="none")
    arc = {"easy_margin": True} if easy_margin else {"fallback": "insightface"}
    rv, (rgx, _, rgw) = _vg(refloss.arcface_loss, x, y, w, margin=m, **arc, reduction="none")
    a = np.clip(np.linalg.norm(x, axis=1), 10.0, 110.0)
    np.testing.assert_allclose(v, rv + lambda_g * (a / 110.0**2 + 1 / a), rtol=1e-14, atol=1e-13)
    np.testing.assert_allclose(gw, rgw, rtol=1e-13, atol=1e-15 * np.max(np.abs(rgw)))
    # the regulariser's gradient is radial, lambda_g g'(a) x_hat inside the clamp (bounds included)
    inside = (np.linalg.norm(x, axis=1) >= 10.0) & (np.linalg.norm(x, axis=1) <= 110.0)
    radial = lambda_g * (1 / 110.0**2 - 1 / a**2) * inside
    np.testing.assert_allclose(gx, rgx + radial[:, None] * _unit_rows(x), rtol=1e-12, atol=1e-15 * np.max(np.abs(gx)))


@pytest.mark.parametrize("seed", range(3))
def test_adaface_identities(seed):
    rng = np.random.default_rng(seed)
    x, y, w = _plain(rng, n=6)
    x = _unit_rows(x) * rng.uniform(1.0, 150.0, size=(6, 1))
    assert np.all(np.abs(_unit_rows(x) @ _unit_rows(w).T) < 1 - 1e-3)
    # h = 0: no adaptation, the target logit is s (cos - m): CosFace
    _same(
        _vg(ADA, x, y, w, h=0.0, margin=0.4, reduction="none"),
        _vg(refloss.cosface_loss, x, y, w, scale=64.0, margin=0.4, reduction="none"),
        rtol=1e-14, atol=1e-13,
    )
    # m = 0: NormFace, whatever the norms
    _same(_vg(ADA, x, y, w, margin=0.0, h=1.0, reduction="none"), _vg(refloss.normface_loss, x, y, w, scale=64.0, reduction="none"))
    # every clipped norm (<= 100) below the mean with a steep h: zeta = -1, theta' = theta + m and
    # g_add = 0: ArcFace without fallback (where theta + m < pi - 1e-3)
    cos_y = (_unit_rows(x) @ _unit_rows(w).T)[np.arange(6), y]
    keep = np.arccos(cos_y) + 0.4 < np.pi - 1e-2
    xs, ys = x[keep], y[keep]
    _same(
        _vg(ADA, xs, ys, w, h=100.0, norm_mean=200.0, norm_std=1.0, reduction="none"),
        _vg(refloss.arcface_loss, xs, ys, w, margin=0.4, fallback="none", reduction="none"),
        rtol=1e-13, atol=1e-13,
    )


def test_adaface_gradient_has_no_radial_part():
    # n is detached, and the cosines do not see |x|: dL/dx is orthogonal to x
    rng = np.random.default_rng(6)
    x, y, w = _draw(rng, ADA, _params(ADA), n=5)
    _, (gx, _, _) = _vg(ADA, x, y, w, reduction="sum")
    np.testing.assert_allclose(np.sum(gx * _unit_rows(x), axis=1), 0.0, atol=1e-15 * np.max(np.abs(gx)))
    # while MagFace's is not (the margin and g depend on a = |x|)
    p = _params(MAG)
    x, y, w = _draw(rng, MAG, p, n=5)
    inside = (np.linalg.norm(x, axis=1) > 10) & (np.linalg.norm(x, axis=1) < 110)
    _, (gx, _, _) = _vg(MAG, x, y, w, reduction="sum")
    radial = np.sum(gx * _unit_rows(x), axis=1)
    assert np.all(np.abs(radial[inside]) > 1e-8) and np.all(np.abs(radial[~inside]) < 1e-15 * np.max(np.abs(gx)))


# ------------------------------------------------------------------------------------------------
# The state helpers.


def test_adacos_fixed_scale():
    assert refloss.adacos_fixed_scale(10) == pytest.approx(3.107, abs=5e-4)
    assert refloss.adacos_fixed_scale(10572) == pytest.approx(13.104, abs=5e-4)
    assert refloss.adacos_fixed_scale(10) == math.sqrt(2) * math.log(9)
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
            refloss.adacos_fixed_scale(bad)


def _adacos_by_hand(cos, y, s, median):
    n = len(y)
    b_avg = sum(math.exp(s * cos[i, k]) for i in range(n) for k in range(cos.shape[1]) if k != y[i]) / n
    theta = np.arccos(np.clip(cos[np.arange(n), y] if median == "target" else cos.ravel(), -1, 1))
    med = np.sort(theta)[(theta.size - 1) // 2]  # lower median, as torch.median
    return math.log(b_avg) / math.cos(min(math.pi / 4, med))


@pytest.mark.parametrize("n", [1, 4, 5])
@pytest.mark.parametrize("median", ["target", "all"])
@pytest.mark.parametrize("spread", [0.2, 0.9])
def test_adacos_dynamic_scale_matches_a_hand_computation(n, median, spread):
    rng = np.random.default_rng(n)
    cos = np.clip(rng.uniform(-spread, spread, size=(n, 6)) + 0.3, -1, 1)
    y = rng.integers(0, 6, size=n)
    s_prev = refloss.adacos_fixed_scale(6)
    got = refloss.adacos_dynamic_scale(cos, y, s_prev, median=median)
    assert isinstance(got, float)
    assert got == pytest.approx(_adacos_by_hand(cos, y, s_prev, median), rel=1e-13)


def test_adacos_dynamic_scale_target_and_all_medians_differ_and_clip_at_pi_over_4():
    cos = np.array([[0.9, 0.1, -0.2], [0.95, -0.5, 0.0], [0.85, 0.2, 0.3]])
    y = np.array([0, 0, 0])
    s = 5.0
    b = math.log(sum(math.exp(s * c) for c in (0.1, -0.2, -0.5, 0.0, 0.2, 0.3)) / 3)
    # the target angles' median is acos(0.9) < pi/4: the denominator is cos(theta_med) = 0.9
    assert refloss.adacos_dynamic_scale(cos, y, s) == pytest.approx(b / 0.9, rel=1e-14)
    # over all nine angles the (lower) median angle is acos of the 5th largest cosine, 0.2: above pi/4,
    # so min(pi/4, theta_med) = pi/4
    assert refloss.adacos_dynamic_scale(cos, y, s, median="all") == pytest.approx(b / math.cos(math.pi / 4), rel=1e-14)


def test_adacos_dynamic_scale_does_not_overflow():
    cos = np.array([[0.999, 0.998, 0.997], [0.5, 0.996, 0.4]])
    y = np.array([0, 2])
    s = 1000.0  # exp(998) overflows float64; its log does not
    log_b = 998.0 + math.log(1 + math.exp(-1.0) + math.exp(-2.0)) - math.log(2)
    # target cosines 0.999 and 0.4: the lower median angle is acos(0.999) < pi/4
    np.testing.assert_allclose(refloss.adacos_dynamic_scale(cos, y, s), log_b / 0.999, rtol=1e-13)


def test_adacos_dynamic_scale_on_array_api_strict():
    import array_api_strict as xp

    cos = np.array([[0.2, 0.1, -0.3], [0.4, -0.1, 0.6], [0.0, 0.5, 0.1]])
    y = np.array([1, 2, 0])
    ref = refloss.adacos_dynamic_scale(cos, y, 3.0, median="all")
    assert refloss.adacos_dynamic_scale(xp.asarray(cos), xp.asarray(y), 3.0, median="all") == pytest.approx(ref, rel=1e-15)


@pytest.mark.parametrize(
    "args, kwargs, pattern",
    [
        ((np.zeros((2, 3)), np.array([0, 1]), 1.0), {"median": "mean"}, "median must be 'target' or 'all'"),
        ((np.zeros((2, 3)), np.array([0, 1]), 0.0), {}, r"previous_scale must be a real number in \(0, inf\)"),
        ((np.zeros((2, 3)), np.array([0, 1]), math.inf), {}, "previous_scale must be"),
        ((np.zeros((2, 1)), np.array([0, 0]), 1.0), {}, r"cosines must be of shape \(N, C\) with N >= 1 and C >= 2"),
        ((np.zeros((0, 3)), np.zeros(0, dtype=int), 1.0), {}, "cosines must be of shape"),
        ((np.zeros((2, 3)), np.array([0]), 1.0), {}, r"labels must be of shape \(N=2,\)"),
        ((np.zeros((2, 3)), np.array([0, 3]), 1.0), {}, r"labels must be integer class indices in \[0, 3\)"),
        ((np.zeros((2, 3)), np.array([0.0, 1.0]), 1.0), {}, "labels must be integer class indices"),
    ],
)
def test_adacos_dynamic_scale_rejects_bad_input(args, kwargs, pattern):
    with pytest.raises(ValueError, match=f"^adacos_dynamic_scale: {pattern}"):
        refloss.adacos_dynamic_scale(*args, **kwargs)


def test_curricularface_update_t():
    cos = np.array([[0.3, 0.1], [0.2, 0.9], [1.0 + 1e-15, 0.0]])
    y = np.array([0, 1, 0])
    # target cosines 0.3, 0.9 and 1 (clamped to 1, as the official code clamps before the update)
    expected = 0.01 * (0.3 + 0.9 + 1.0) / 3 + 0.99 * 0.2
    assert refloss.curricularface_update_t(cos, y, 0.2) == pytest.approx(expected, rel=1e-15)
    assert refloss.curricularface_update_t(cos, y, 0.0, momentum=1.0) == pytest.approx(2.2 / 3, rel=1e-15)
    assert refloss.curricularface_update_t(cos, y, 0.5, momentum=0.0) == 0.5
    with pytest.raises(ValueError, match=r"^curricularface_update_t: t must be a real number in \[-1.0, 1.0\]"):
        refloss.curricularface_update_t(cos, y, 1.5)
    with pytest.raises(ValueError, match=r"^curricularface_update_t: momentum must be"):
        refloss.curricularface_update_t(cos, y, 0.0, momentum=-0.1)
    with pytest.raises(ValueError, match=r"^curricularface_update_t: labels must be"):
        refloss.curricularface_update_t(cos, np.array([0, 2, 0]), 0.0)


def test_curricularface_official_step():
    # One official forward: t <- 0.01 mean(c_y) + 0.99 t first, then the logits with that t.
    rng = np.random.default_rng(7)
    p = _params(CURR)
    x, y, w = _draw(rng, CURR, p, n=4)
    cos = _unit_rows(x) @ _unit_rows(w).T
    t = refloss.curricularface_update_t(cos, y, 0.25)
    assert t == pytest.approx(0.01 * np.mean(cos[np.arange(4), y]) + 0.99 * 0.25, rel=1e-15)
    np.testing.assert_allclose(CURR(x, y, w, t=t, reduction="none"), _mp_value(CURR, x, y, w, {**p, "t": t}), rtol=1e-14, atol=1e-12)


def test_adaface_norm_stats():
    rng = np.random.default_rng(8)
    x = _unit_rows(rng.standard_normal((6, 5))) * np.array([[1e-5], [3.0], [30.0], [80.0], [120.0], [250.0]])
    n = np.clip(np.linalg.norm(x, axis=1), 1e-3, 100)
    mean, std = refloss.adaface_norm_stats(x, 20.0, 100.0)
    assert mean == pytest.approx(0.01 * n.mean() + 0.99 * 20.0, rel=1e-14)
    assert std == pytest.approx(0.01 * n.std(ddof=1) + 0.99 * 100.0, rel=1e-14)
    mean, std = refloss.adaface_norm_stats(x, t_alpha=1.0)  # the class default: the batch's own statistics
    assert (mean, std) == pytest.approx((n.mean(), n.std(ddof=1)), rel=1e-14)
    with pytest.raises(ValueError, match=r"^adaface_norm_stats: features must be .*N >= 2 \(unbiased std\)"):
        refloss.adaface_norm_stats(x[:1])
    with pytest.raises(ValueError, match=r"^adaface_norm_stats: t_alpha must be a real number in \[0, 1\]"):
        refloss.adaface_norm_stats(x, t_alpha=2.0)
    with pytest.raises(ValueError, match=r"^adaface_norm_stats: norm_std must be"):
        refloss.adaface_norm_stats(x, 20.0, -1.0)


def test_magface_min_lambda_g():
    k = 0.35 / 100
    expected = 64 * k * 110**2 * 10**2 / (110**2 - 10**2)
    assert refloss.magface_min_lambda_g() == pytest.approx(expected, rel=1e-15)
    assert refloss.magface_min_lambda_g() == pytest.approx(22.587, abs=1e-3)  # the trainer's default 20 is below it
    with pytest.raises(ValueError, match="need 0 < l_a < u_a"):
        refloss.magface_min_lambda_g(l_a=110.0, u_a=10.0)


# ------------------------------------------------------------------------------------------------
# Kinks and |cos| = 1.


@pytest.mark.parametrize("loss", LOSSES, ids=IDS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_at_cos_exactly_one_value_and_gradient_are_finite(loss, sign):
    # x parallel (or antiparallel) to W_y: cos = +-1 exactly; the other classes orthogonal (cos = 0).
    w = np.eye(3, 4) * np.array([[2.0], [0.5], [4.0]])
    if loss is SUB:
        w = np.stack([w, np.roll(w, 1, axis=1) * 0.5], axis=1)  # a second, orthogonal sub-centre
    x = sign * 50.0 * np.eye(1, 4)
    y = np.array([0])
    other = {"l_margin": 0.1, "u_margin": 0.3, "easy_margin": False} if loss is MAG else {"margin": 0.3}
    for override in ({}, other):
        p = _params(loss, **override)
        value, (gx, _, gw) = _vg(loss, x, y, w, **{**p, "reduction": "sum"})
        assert np.isfinite(value) and np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))
        np.testing.assert_allclose(value, sum(_mp_value(loss, x, y, w, p)), rtol=1e-14, atol=1e-13)


@pytest.mark.parametrize("delta", [1e-12, 1e-8, 1e-5])
@pytest.mark.parametrize("loss", [SUB, ADACOS, CURR, MAG], ids=lambda l: l.name)
def test_close_to_cos_one(loss, delta):
    c = 1.0 - delta
    w = np.eye(3, 4)
    if loss is SUB:  # second sub-centres in generic directions (no tie with the first)
        w = np.stack([w, _unit_rows(np.random.default_rng(0).standard_normal((3, 4)))], axis=1)
    x = np.array([[c, 0.0, 0.0, math.sqrt((1 - c) * (1 + c))]]) * 40.0
    y = np.array([0])
    p = _params(loss, **({"margin": 0.5} if loss is ADACOS else {}))
    value, (gx, _, gw) = _vg(loss, x, y, w, **{**p, "reduction": "sum"})
    np.testing.assert_allclose(value, sum(_mp_value(loss, x, y, w, p)), rtol=1e-13)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))
    if delta >= 1e-8:
        ref = _mp_grad(loss, x, y, w, p, "features")
        np.testing.assert_allclose(gx, ref, rtol=1e-6, atol=1e-6 * np.max(np.abs(ref)))


@pytest.mark.parametrize("t", [0.0, 0.3])
def test_curricularface_near_the_hard_negative_threshold(t):
    # cos_y = 0.5; class 1 sits 1e-9 below or above cos(theta_y + m): easy, then hard (strict test).
    # The logit jumps from s c to s c (t + c); both sides match the oracle, values and gradients.
    ctm = math.cos(math.acos(0.5) + 0.5)
    w = np.eye(3, 4) * np.array([[1.0], [2.0], [0.5]])
    y = np.array([0])
    p = _params(CURR, t=t)
    values = []
    for c1 in (ctm - 1e-9, ctm + 1e-9):
        x = np.array([[0.5, c1, 0.0, math.sqrt(1 - 0.25 - c1 * c1)]]) * 3.0
        value, (gx, _, gw) = _vg(CURR, x, y, w, **{**p, "reduction": "sum"})
        np.testing.assert_allclose(value, sum(_mp_value(CURR, x, y, w, p)), rtol=1e-13)
        for g, which in ((gx, "features"), (gw, "weights")):
            ref = _mp_grad(CURR, x, y, w, p, which)
            np.testing.assert_allclose(g, ref, rtol=1e-9, atol=1e-12 * np.max(np.abs(ref)), err_msg=which)
        values.append(value)
    # the jump: class 1's logit drops from s c to s c (t + c) (0 < c < 1 - t), so the loss drops
    assert values[1] < values[0] - 1e-3


@pytest.mark.parametrize("bound", ["l_a", "u_a"])
def test_magface_norm_at_the_clamp_bounds(bound):
    # At |x| = l_a or u_a exactly the derivative from inside is used (torch's clamp backward); just
    # outside the radial path is gone. The direction's multiples by l_a and u_a have exactly those
    # norms (11^2 + 11^2 + 77^2 + 77^2 = 110^2): the clamp is decided on the exact norm, as the oracle's.
    p = _params(MAG)
    w = np.eye(3, 4) * np.array([[2.0], [1.0], [3.0]])
    direction = np.array([[1.0, 1.0, -7.0, 7.0]]) / 10
    y = np.array([0])
    r = p[bound]
    inward = -1 if bound == "u_a" else 1
    at = _vg(MAG, direction * r, y, w, reduction="sum")[1][0]
    inside = _vg(MAG, direction * (r * (1 + inward * 1e-12)), y, w, reduction="sum")[1][0]
    outside = _vg(MAG, direction * (r * (1 - inward * 1e-12)), y, w, reduction="sum")[1][0]
    np.testing.assert_allclose(at, inside, rtol=1e-9)
    radial = lambda g: float(np.sum(g * direction))  # noqa: E731
    assert abs(radial(at) - radial(outside)) > 1e-6
    ref = _mp_grad(MAG, direction * (r * (1 + inward * 1e-6)), y, w, p, "features")
    np.testing.assert_allclose(at, ref, rtol=1e-4, atol=1e-4 * np.max(np.abs(ref)))


@pytest.mark.parametrize("easy_margin", [True, False])
def test_magface_near_its_branch_thresholds(easy_margin):
    p = _params(MAG, easy_margin=easy_margin)
    norm = 60.0
    m = 0.45 + 0.35 * (norm - 10.0) / 100.0
    th = 0.0 if easy_margin else math.cos(math.pi - m)
    w = np.eye(3, 4)
    for side in (-1e-9, 1e-9):
        c = th + side
        x = np.array([[c, 0.0, 0.1, math.sqrt(1 - c * c - 0.01)]]) * norm
        value, (gx, _, gw) = _vg(MAG, x, np.array([0]), w, **{**p, "reduction": "sum"})
        np.testing.assert_allclose(value, sum(_mp_value(MAG, x, np.array([0]), w, p)), rtol=1e-12)
        assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))


@pytest.mark.parametrize("c", [0.9995, -0.9995, 0.999 + 1e-12, 0.95])
def test_adaface_at_the_cosine_clamp_and_the_angle_clip(c):
    # 0.9995: beyond the clamp 1 - 1e-3, the target's slope is 0; 0.95 with zeta = 1 and m = 0.4: theta =
    # 0.318 < m + 1e-3, so theta' is clipped at 1e-3 and the slope is 0 too.
    w = np.eye(3, 4) * np.array([[2.0], [1.0], [3.0]])
    x = np.array([[c, 0.01, 0.0, math.sqrt(1 - c * c - 1e-4)]]) * 90.0
    y = np.array([0])
    p = _params(ADA, h=10.0, norm_mean=20.0, norm_std=10.0)  # zeta = clip(10 (90 - 20) / 10) = 1
    value, (gx, _, gw) = _vg(ADA, x, y, w, **{**p, "reduction": "sum"})
    np.testing.assert_allclose(value, sum(_mp_value(ADA, x, y, w, p)), rtol=1e-13)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))
    if abs(c) != 0.999 + 1e-12:
        assert np.all(gw[0] == 0.0)  # the target column's derivative is 0: nothing reaches W_y
        ref = _mp_grad(ADA, x, y, w, p, "features")
        np.testing.assert_allclose(gx, ref, rtol=1e-9, atol=1e-12 * np.max(np.abs(ref)))


def test_exact_scaling_of_weights_is_exact():
    # Norms are taken without overflow: scaling the weights by powers of two (1e120 in size) changes
    # nothing in the value and scales their gradient exactly by the inverse (the features' norms are
    # part of MagFace and AdaFace, so only the weights are scaled).
    rng = np.random.default_rng(5)
    for loss in LOSSES:
        x, y, w = _draw(rng, loss, _params(loss))
        v, (gx, _, gw) = _vg(loss, x, y, w, reduction="sum")
        for k in (400, -400):
            v2, (gx2, _, gw2) = _vg(loss, x, y, w * 2.0**k, reduction="sum")
            assert v2 == v
            np.testing.assert_array_equal(gx2, gx)
            np.testing.assert_array_equal(gw2, gw * 2.0**-k)


# ------------------------------------------------------------------------------------------------
# eps and bad input.


def _ok_inputs(loss):
    w = np.eye(3, 4) * 2.0
    if loss is SUB:
        w = np.stack([w, w[:, ::-1]], axis=1)
    return np.ones((2, 4)) * 20.0, np.array([0, 1]), w


@pytest.mark.parametrize("loss", LOSSES, ids=IDS)
def test_zero_rows_without_eps_raise(loss):
    x, y, w = _ok_inputs(loss)
    bad_x = x.copy()
    bad_x[1] = 0.0
    with pytest.raises(ValueError, match=rf"^{loss.name}: features must be rows of nonzero norm \(pass eps= to clamp the norm\), got zero row\(s\) at \[1\]$"):
        loss(bad_x, y, w)
    bad_w = w.copy()
    if loss is SUB:
        bad_w[2, 1] = 0.0
        pattern = r"weights must be sub-centre rows of nonzero norm .*, got zero row\(s\) \(class, sub-centre\) at \[\(2, 1\)\]$"
    else:
        bad_w[2] = 0.0
        pattern = r"weights must be rows of nonzero norm.* at \[2\]$"
    with pytest.raises(ValueError, match=rf"^{loss.name}: {pattern}"):
        loss(x, y, bad_w)
    value, (gx, _, gw) = _vg(loss, bad_x, y, bad_w, eps=1e-12, reduction="sum")
    assert np.isfinite(value) and np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))


@pytest.mark.parametrize("loss", LOSSES, ids=IDS)
def test_eps_clamps_the_norm_like_f_normalize(loss):
    x, y, w = _ok_inputs(loss)
    x = np.array([[3e-7, 4e-7, 0.0, 1e-7], [30.0, -10.0, 5.0, 1.0]])
    p = _params(loss, eps=1e-6)
    value = loss(x, y, w, **{**p, "reduction": "none"})
    np.testing.assert_allclose(value, _mp_value(loss, x, y, w, p), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("loss", LOSSES, ids=IDS)
def test_labels_and_shapes(loss):
    x, y, w = _ok_inputs(loss)
    with pytest.raises(ValueError, match=rf"^{loss.name}: labels must be class indices in \[0, 3\), got 3 "):
        loss(x, np.array([0, 3]), w)
    with pytest.raises(TypeError, match=rf"^{loss.name}: labels must be an integer array"):
        loss(x, np.array([0.0, 1.0]), w)
    wrong = w[..., :3]
    shape = r"\(C=3, K=2, D=4\)" if loss is SUB else r"\(C=3, D=4\)"
    with pytest.raises(ValueError, match=rf"^{loss.name}: weights must be of shape {shape}, got shape {re.escape(str(wrong.shape))}$"):
        loss(x, y, wrong)


def test_subcenter_weights_must_be_three_dimensional_with_a_subcentre():
    x, y, w = _ok_inputs(SUB)
    with pytest.raises(ValueError, match=r"^subcenter_arcface_loss: weights must be of shape \(C, K, D=4\), got shape \(3, 4\)$"):
        SUB(x, y, w[:, 0, :])
    with pytest.raises(ValueError, match=r"^subcenter_arcface_loss: weights must be of at least one sub-centre per class \(K >= 1\)"):
        SUB(x, y, w[:, :0, :])


@pytest.mark.parametrize(
    "loss, params, exc, pattern",
    [
        (SUB, {"margin": math.pi / 2}, ValueError, r"margin must be a real number in \[0.0, 1.57"),
        (SUB, {"fallback": "pml"}, ValueError, "fallback must be one of 'none', 'insightface'"),
        (ADACOS, {"scale": 0.0}, ValueError, r"scale must be a real number in \(0.0, inf\) or None"),
        (ADACOS, {"margin": -0.1}, ValueError, "margin must be a real number"),
        (CURR, {"t": 1.5}, ValueError, r"t must be a real number in \[-1.0, 1.0\], got 1.5"),
        (CURR, {"t": None}, TypeError, "t must be a real number"),
        (MAG, {"u_a": 5.0}, ValueError, r"u_a must be greater than l_a=10.0, got 5.0"),
        (MAG, {"l_a": 110.0}, ValueError, r"u_a must be greater than l_a=110.0, got 110.0"),
        (MAG, {"l_margin": 0.9}, ValueError, r"u_margin must be at least l_margin=0.9 \(a non-decreasing margin\), got 0.8"),
        (MAG, {"lambda_g": -1.0}, ValueError, r"lambda_g must be a real number in \[0.0, inf\)"),
        (MAG, {"easy_margin": 1}, TypeError, "easy_margin must be True or False"),
        (ADA, {"h": -0.1}, ValueError, r"h must be a real number in \[0.0, inf\)"),
        (ADA, {"norm_std": -1.0}, ValueError, "norm_std must be a real number"),
        (ADA, {"eps": 0.0}, ValueError, r"eps must be a real number in \(0.0, inf\) or None"),
    ],
)
def test_invalid_parameters(loss, params, exc, pattern):
    x, y, w = _ok_inputs(loss)
    with pytest.raises(exc, match=rf"^{loss.name}: {pattern}"):
        loss(x, y, w, **params)


def test_adacos_fixed_scale_needs_two_classes():
    with pytest.raises(ValueError, match=r"^adacos_loss: weights must be of at least 2 classes for scale=None"):
        ADACOS(np.ones((2, 3)), np.array([0, 0]), np.ones((1, 3)))
    assert ADACOS(np.ones((2, 3)), np.array([0, 0]), np.ones((1, 3)), scale=5.0) == 0.0  # one class: CE 0


@pytest.mark.parametrize("loss", LOSSES, ids=IDS)
def test_empty_batch_under_sum(loss):
    x, y, w = _ok_inputs(loss)
    value, (gx, _, gw) = _vg(loss, x[:0], y[:0], w, reduction="sum")
    assert value == 0.0 and gx.shape == (0, 4) and np.all(gw == 0)


def test_float32_stays_float32_and_matches_float64():
    rng = np.random.default_rng(9)
    for loss in LOSSES:
        x, y, w = _draw(rng, loss, _params(loss), n=4)
        v64 = loss(x, y, w)
        v32, (gx, _, gw) = _vg(loss, x.astype(np.float32), y, w.astype(np.float32))
        assert v32.dtype == np.float32 and gx.dtype == np.float32 and gw.dtype == np.float32
        np.testing.assert_allclose(v32, v64, rtol=1e-4, atol=1e-5)

