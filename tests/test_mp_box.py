"""The box losses against their mpmath oracles (refloss.mp.box): certified values and gradients
within 4 ULP on every parameter path, and oracle values checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

mpmath = pytest.importorskip("mpmath")

import refloss  # noqa: E402
import refloss.mp as rmp  # noqa: E402
from refloss.cases import param_paths, sample  # noqa: E402

BOX = [loss for loss in refloss.catalog() if loss.family == "box"]
ULP = 4.0


@pytest.fixture(autouse=True)
def _digits():
    with mpmath.workdps(50):  # oracle values come back at the ambient precision
        yield


def _cases():
    for loss in BOX:
        # every option unreduced, and every reduction at the defaults
        paths = list(param_paths(loss, reductions=("none",)))
        paths += [{**loss.defaults(), "reduction": r} for r in loss.param("reduction").choices if r != "none"]
        for k, params in enumerate(paths):
            yield pytest.param(loss, params, "typical", 100 + k, id=f"{loss.name}-{k}-typical")
        # the labelled tie/degenerate pairs and the huge/tiny scales, at the defaults
        for tag in ("edge", "extreme"):
            yield pytest.param(loss, {**loss.defaults(), "reduction": "none"}, tag, 7, id=f"{loss.name}-{tag}")


@pytest.mark.parametrize("loss, params, tag, seed", list(_cases()))
def test_certified_within_4_ulp(loss, params, tag, seed):
    rng = np.random.default_rng(seed)
    case = sample(loss, params, tag, rng)
    out = loss(*case.inputs, **case.params)
    cot = None if np.ndim(out) == 0 else rng.standard_normal(np.shape(out))
    cert = rmp.certify(loss, case.inputs, case.params, cot)
    assert cert.value_ulp <= ULP, (params, tag, cert.value_ulp)
    for name, err in cert.grad_ulp.items():
        assert err <= ULP, (params, tag, name, err)


# ------------------------------------------------------------------------------------------------
# The oracle itself, by hand: two 2 x 2 squares overlapping in a unit square.

P = np.array([[0.0, 0.0, 2.0, 2.0]])
T = np.array([[1.0, 1.0, 3.0, 3.0]])
# I = 1, U = 7, C = 9, centre offset (1, 1): rho^2 = 2, diagonal^2 = 18


def _value(name, p=P, t=T, **params):
    loss = refloss.get(name)
    full = {**loss.defaults(), "reduction": "sum", **params}
    value, _ = rmp.evaluate(name, [p, t], full)
    return value[()] if value.ndim == 0 else value


@pytest.mark.parametrize(
    "name, params, expected",
    [
        ("iou_loss", dict(convention="paper"), lambda: mpmath.mpf(6) / 7),
        ("iou_loss", dict(convention="paper", mode="square"), lambda: 1 - mpmath.mpf(1) / 49),
        ("iou_loss", dict(convention="paper", mode="log"), lambda: mpmath.log(7)),
        ("giou_loss", dict(convention="paper"), lambda: mpmath.mpf(6) / 7 + mpmath.mpf(2) / 9),
        ("diou_loss", dict(convention="paper"), lambda: mpmath.mpf(6) / 7 + mpmath.mpf(1) / 9),
        ("ciou_loss", dict(convention="paper"), lambda: mpmath.mpf(6) / 7 + mpmath.mpf(1) / 9),  # v = 0: equal aspect
    ],
)
def test_oracle_hand_values(name, params, expected):
    assert abs(_value(name, **params) - expected()) < mpmath.mpf(10) ** -40


def test_oracle_eps_placements():
    e = mpmath.mpf(1e-7)
    # torchvision: I / (U + eps) and (C - U) / (C + eps)
    assert abs(_value("giou_loss") - (1 - 1 / (7 + e) + 2 / (9 + e))) < mpmath.mpf(10) ** -40
    # ultralytics: heights + eps in the areas, (C + eps - (U + eps)) / (C + eps)
    u = 2 * (2 + e) * 2 - 1 + e
    expected = 1 - (1 / u - (9 + e - u) / (9 + e))
    assert abs(_value("giou_loss", convention="ultralytics") - expected) < mpmath.mpf(10) ** -40
    # mmdet IoU loss clamps IoU at 1e-6: disjoint boxes give -log(1e-6) in log mode
    far = np.array([[5.0, 5.0, 6.0, 6.0]])
    assert abs(_value("iou_loss", P, far, mode="log") - (-mpmath.log(mpmath.mpf(1e-6)))) < mpmath.mpf(10) ** -40


def test_oracle_ciou_alpha_and_its_stop_gradient():
    p, t = np.array([[0.0, 0.0, 2.0, 1.0]]), np.array([[0.0, 0.0, 1.0, 2.0]])
    # I = 1, U = 3, centres (1, .5) and (.5, 1): rho^2 = 1/2, enclosing 2 x 2: c^2 = 8
    v = 4 / mpmath.pi**2 * (mpmath.atan(mpmath.mpf(1) / 2) - mpmath.atan(2)) ** 2
    iou = mpmath.mpf(1) / 3
    alpha = v / (1 - iou + v)
    expected = 1 - iou + mpmath.mpf(1) / 16 + alpha * v
    assert abs(_value("ciou_loss", p, t, convention="paper") - expected) < mpmath.mpf(10) ** -40
    # alpha frozen at base: moving the prediction changes v but not alpha
    q = np.array([[0.0, 0.0, 2.0, 1.5]])
    params = {**refloss.ciou_loss.defaults(), "convention": "paper", "reduction": "sum"}
    frozen, _ = rmp.evaluate("ciou_loss", [q, t], params, base=[p, t])
    moving, _ = rmp.evaluate("ciou_loss", [q, t], params)
    iou_q = mpmath.mpf(1.5) / (3 + 2 - 1.5)
    v_q = 4 / mpmath.pi**2 * (mpmath.atan(mpmath.mpf(1) / 2) - mpmath.atan(mpmath.mpf(2) / 1.5)) ** 2
    rho2_q = (mpmath.mpf(0.5) ** 2 + mpmath.mpf(0.25) ** 2)  # centres (1, .75) and (.5, 1)
    diou_q = 1 - iou_q + rho2_q / 8
    assert abs(frozen[()] - (diou_q + alpha * v_q)) < mpmath.mpf(10) ** -40
    assert abs(moving[()] - (diou_q + v_q / (1 - iou_q + v_q) * v_q)) < mpmath.mpf(10) ** -40
    # 'through' ignores base: alpha moves with the inputs
    through, _ = rmp.evaluate("ciou_loss", [q, t], {**params, "alpha_gradient": "through"}, base=[p, t])
    assert through[()] == moving[()]


def test_oracle_formats_are_the_same_boxes():
    for fmt, (p, t) in {
        "xywh": ([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]),
        "cxcywh": ([1.0, 1.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]),
        "yxyx": ([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]),
    }.items():
        got = _value("diou_loss", np.array([p]), np.array([t]), convention="paper", box_format=fmt)
        assert abs(got - (mpmath.mpf(6) / 7 + mpmath.mpf(1) / 9)) < mpmath.mpf(10) ** -40, fmt


def test_identical_boxes_are_a_kink():
    # every max/min tied: the one-sided derivatives differ, and refloss's half split lies between them
    b = np.array([[1.0, 1.0, 3.0, 4.0]])
    cert = rmp.certify(refloss.giou_loss, [b, b.copy()], {**refloss.giou_loss.defaults(), "reduction": "sum"})
    assert cert.kinks["pred"] and cert.worst() <= ULP
    assert math.isclose(float(cert.exact_value[()]), 1e-7 / (6 + 1e-7), rel_tol=1e-15)


# ------------------------------------------------------------------------------------------------
# GIoU's penalty pen = (C - U) / C: its derivative (U dC - C dU) / C^2 cancels for far-apart boxes
# (pen -> 1; the audit's "box offset 64" point, 12 ULP when formed as (dC - dU) / C - pen dC / C) and
# for nested ones (dC = dU; under ultralytics' h + eps areas the whole derivative is O(eps / C), which
# the reverse-mode sum missed by 10^7 ULP).

_SQUARES = np.array([[-2.0, -2.0, 2.0, 2.0], [-2.0, -4.0, 2.0, 4.0], [-4.0, -4.0, 4.0, 4.0]])
_DIAGONALS = np.array([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])


@pytest.mark.parametrize("convention", refloss.giou_loss.param("convention").choices)
@pytest.mark.parametrize("where", ["far", "nested"])
def test_giou_gradient_far_apart_and_nested(convention, where):
    t = _SQUARES
    if where == "far":  # the target moved 64 of its sizes along a diagonal
        step = 64.0 * _DIAGONALS * (t[:, 2:] - t[:, :2])
        p = t + np.concatenate([step, step], axis=1)
    else:  # a 2^-24 copy at the target's centre
        p = t * 2.0**-24
    cert = rmp.certify(refloss.giou_loss, [p, t], {**refloss.giou_loss.defaults(), "convention": convention, "reduction": "sum"})
    assert cert.worst() <= ULP, (convention, where, cert.value_ulp, cert.grad_ulp)
