"""The margin family's mpmath oracles (refloss.mp.margin): closed-form values that test the oracles
themselves, and refloss certified against them (value and gradients within 4 ULP, the golden policy)
on a typical case of every parameter path."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

import refloss
import refloss.mp as rmp

from certification import BOUND, check_certified, paths

MARGIN = sorted((l for l in refloss.catalog() if l.family == "margin"), key=lambda l: l.name)


def _value(name, inputs, reduction="mean", **params):
    """The certified oracle value (a float, or an array for reduction='none')."""
    loss = refloss.get(name)
    p = {**loss.defaults(), **params, "reduction": reduction}
    value, dps = rmp.evaluate(name, [np.asarray(a) for a in inputs], p)
    return np.asarray(value, dtype=float) if reduction == "none" else float(value)


E2 = np.array([[1.0, 0.0]])
TIE = np.array([[0.0, 1.0], [0.0, -1.0]])  # both orthogonal to E2: every cosine 0
Y0 = np.array([0])


# ------------------------------------------------------------------------------------------------
# Closed forms.


def test_cosine_softmaxes_at_a_two_class_tie_are_log_2():
    for name in ("normface_loss", "coco_loss"):
        assert _value(name, [E2, Y0, TIE]) == pytest.approx(math.log(2), rel=1e-15)
    # ArcFace with m = pi/4 at theta = pi/4: the target logit s cos(pi/2) = 0 ties the other class (cos 0).
    x, w = np.array([[1.0, 1.0]]), np.array([[1.0, 0.0], [1.0, -1.0]])
    for fallback in ("insightface", "none"):
        assert _value("arcface_loss", [x, Y0, w], margin=math.pi / 4, fallback=fallback) == pytest.approx(math.log(2), rel=1e-14)
    # Sub-center ArcFace: the class cosine is the best sub-centre's (1/sqrt 2 for class 0, 0 for class 1).
    w3 = np.array([[[0.0, 1.0], [1.0, 1.0]], [[0.0, -1.0], [0.0, 1.0]]])
    assert _value("subcenter_arcface_loss", [E2, Y0, w3], margin=math.pi / 4) == pytest.approx(math.log(2), rel=1e-14)


def test_additive_margins_in_closed_form():
    x, w = np.array([[3.0, 4.0]]), np.array([[3.0, 4.0], [4.0, -3.0]])  # cosines 1 and 0
    s, m = 30.0, 0.35
    assert _value("cosface_loss", [x, Y0, w], scale=s, margin=m) == pytest.approx(math.log1p(math.exp(-s * (1 - m))), rel=1e-14)
    # combined (m1, m2, m3) = (2, 0, m3) at theta = pi/2: cos(pi) - m3 = -1 - m3 against cos 0 = 0
    val = _value("combined_margin_loss", [E2, Y0, TIE], scale=s, m1=2.0, m2=0.0, m3=0.2)
    assert val == pytest.approx(math.log1p(math.exp(s * 1.2)), rel=1e-14)
    # AdaFace with h = 0 (zeta = 0): s (cos(pi/2) - m) against 0
    assert _value("adaface_loss", [E2, Y0, TIE], h=0.0, scale=s, margin=0.4) == pytest.approx(math.log1p(math.exp(-s * 0.4)) + s * 0.4, rel=1e-14)
    # CurricularFace: target at theta = pi/2 (cos(pi/2 + m) = -sin m); the other class, cosine 1 > -sin m, is hard: s 1 (t + 1)
    w = np.array([[0.0, 1.0], [1.0, 0.0]])
    t = 0.3
    z0, z1 = -s * math.sin(m), s * (t + 1)
    assert _value("curricularface_loss", [E2, Y0, w], scale=s, margin=m, t=t) == pytest.approx(z1 + math.log1p(math.exp(z0 - z1)) - z0, rel=1e-14)


def test_norm_dependent_losses_in_closed_form():
    # L2-softmax: z = alpha W x_hat = (3, 0) for x = (2, 0), W = I; label 1
    assert _value("l2_softmax_loss", [np.array([[2.0, 0.0]]), np.array([1]), np.eye(2)], alpha=3.0) == pytest.approx(math.log(math.exp(3) + 1), rel=1e-15)
    # L-Softmax m = 2 at c = 0.6 (k = 0): psi = T_2(0.6) = -0.28, z_0 = |W_0||x| psi = -1.4, z_1 = W_1 . x = 8
    x, w = np.array([[3.0, 4.0]]), np.array([[1.0, 0.0], [0.0, 2.0]])
    assert _value("lsoftmax_loss", [x, Y0, w], m=2) == pytest.approx(math.log(math.exp(-1.4) + math.exp(8)) + 1.4, rel=1e-14)
    # SphereFace m = 4 at c = 0.6 (k = 1): psi = -T_4(0.6) - 2 = -1.1568, z_0 = |x| psi, z_1 = |x| 0.8 = 4
    z0 = 5 * -1.1568
    assert _value("sphereface_loss", [x, Y0, w], m=4) == pytest.approx(math.log(math.exp(z0) + math.exp(4)) - z0, rel=1e-14)
    # MagFace: cosines 0 (easy margin keeps c): log 2 + lambda_g (a / u_a^2 + 1 / a) at a = |x| = 20
    assert _value("magface_loss", [20 * E2, Y0, TIE]) == pytest.approx(math.log(2) + 20 * (20 / 110**2 + 1 / 20), rel=1e-15)
    # AdaCos, scale=None with C = 3: s = sqrt(2) log 2; x = W_0 (cosines 1, 0, 0)
    x, w = np.array([[1.0, 0.0, 0.0]]), np.eye(3)
    s = math.sqrt(2) * math.log(2)
    assert _value("adacos_loss", [x, Y0, w]) == pytest.approx(math.log(math.exp(s) + 2) - s, rel=1e-15)


def test_distance_logits_in_closed_form():
    x, w = np.array([[0.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])  # squared distances 1, 1, 9
    z = [2 * math.exp(-1.0), 2 * math.exp(-1.0), 2 * math.exp(-9.0)]
    expected = math.log(sum(math.exp(t) for t in z)) - z[0]
    assert _value("rbf_softmax_loss", [x, Y0, w], scale=2.0, gamma=1.0) == pytest.approx(expected, rel=1e-15)
    # L-GM: d = (1/2, 2), z = (-(1 + 1) / 2, -2), plus lambda d_y
    w = np.array([[1.0, 0.0], [0.0, 2.0]])
    expected = math.log(math.exp(-1) + math.exp(-2)) + 1 + 0.5 * 0.5
    assert _value("lgm_loss", [x, Y0, w], alpha=1.0, lambda_=0.5) == pytest.approx(expected, rel=1e-15)


def test_reductions_and_per_sample_values():
    x = np.array([[1.0, 0.0], [3.0, 4.0]])
    y = np.array([0, 1])
    w = np.array([[0.0, 1.0], [0.0, -1.0]])
    per = _value("normface_loss", [x, y, w], reduction="none", scale=10.0)
    assert per.shape == (2,) and per[0] == pytest.approx(math.log(2), rel=1e-15)
    assert per[1] == pytest.approx(16 + math.log1p(math.exp(-16.0)), rel=1e-15)  # target cosine -0.8, other 0.8
    assert _value("normface_loss", [x, y, w], reduction="sum", scale=10.0) == pytest.approx(per.sum(), rel=1e-15)
    assert _value("normface_loss", [x, y, w], reduction="mean", scale=10.0) == pytest.approx(per.mean(), rel=1e-15)


def test_stop_gradient_oracles_freeze_their_intermediates_at_base():
    M = mpmath.mp
    o = rmp.ops(M)
    # ArcFace straight-through: the margin psi(c) - c frozen at base, so near base the loss is CosFace with
    # margin c0 - cos(acos(c0) + m): both oracles have the same derivatives there.
    x, w = np.array([[0.6, 0.8]]), np.array([[1.0, 0.0], [0.3, -1.0]])
    m = 0.5
    p = {**refloss.arcface_loss.defaults(), "margin": m, "gradient": "straight_through", "reduction": "sum"}
    ga = rmp.gradient("arcface_loss", [x, Y0, w], p, 1.0, [0, 2], stop_gradient=True)
    shift = 0.6 - math.cos(math.acos(0.6) + m)
    pc = {**refloss.cosface_loss.defaults(), "margin": shift, "reduction": "sum"}
    gc = rmp.gradient("cosface_loss", [x, Y0, w], pc, 1.0, [0, 2])
    for a, c in zip(ga, gc):
        np.testing.assert_allclose(np.asarray(a.left, dtype=float), np.asarray(c.left, dtype=float), rtol=1e-12)
    # AdaFace: the norm is read from base only.
    f = rmp.ORACLES["adaface_loss"]
    pa = {**refloss.adaface_loss.defaults(), "h": 1.0, "norm_std": 10.0, "reduction": "sum"}
    args = [o.array(a) for a in (30 * E2, Y0, TIE)]
    base = [o.array(a) for a in (50 * E2, Y0, TIE)]
    with M.workdps(30):
        at_base = f(M, *[o.array(a) for a in (50 * E2, Y0, TIE)], **pa)
        frozen = f(M, *args, **pa, base=base)
        own = f(M, *args, **pa)
    assert frozen == at_base != own  # the cosines are the same (0): only the norm differs


# ------------------------------------------------------------------------------------------------
# refloss certified against the oracles: value within 4 ULP of the correctly rounded exact value and
# each gradient within 4 ULP normwise, on a typical case of every parameter path, per element
# ('none', random cotangent) and under the batch mean.

REDUCTIONS = ("none", "mean")
CASES_PER_PATH = 1

# Certificates known to exceed the bound: (predicate on the parameters, quantities allowed to, why).
# None: the logits, margins and scales are carried in double-double into the softmax and the gradient
# is summed in double-double (refloss.losses.margin), which is what the 4-ULP policy needs here.
KNOWN: dict = {}


@pytest.mark.parametrize("loss, params", paths(MARGIN, REDUCTIONS))
def test_refloss_is_certified_by_the_oracle(loss, params):
    check_certified(loss, params, CASES_PER_PATH, KNOWN)


def test_curricularface_cancelling_row_is_certified():
    # A feature of norm 1e-95 nearly antiparallel to its class (c_y = -0.99999998, the fallback branch) and
    # two hard negatives with |c| ~ 1e-4 whose gradient s (t + 2c) is c's own value: the row's terms (~1e92)
    # cancel to ~1e86. One-slice norms of the unit rows (radial error ~2^-78) put 100 ULP on dL/dx,
    # one-slice cosines (~2^-80) 29, the two 163 (refloss.losses.margin: _normalise_rows, _cosines).
    x = np.array([[1.687365697403215e-95, -9.38422159013865e-96, -7.637025693436165e-96]])
    w = np.array([
        [1.6914635941970344e75, -6.72345201919095e74, 4.5625016298789635e75],
        [-2.6587741258831387e-24, 1.4793119337107504e-24, 1.203687881212252e-24],
        [-9.141628102322108e-95, -1.71335064156491e-94, 8.642408520650268e-96],
    ])
    loss = refloss.get("curricularface_loss")
    cert = rmp.certify(loss, [x, np.array([1]), w], {**loss.defaults(), "reduction": "sum"}, None)
    errors = {"value": cert.value_ulp, **cert.grad_ulp}
    assert max(errors.values()) <= BOUND, errors
