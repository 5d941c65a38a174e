"""Box losses: values against hand-computed geometry, the labelled tie/degenerate set per convention,
format conversions, pairwise matrices, the detached-alpha CIoU gradient, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

import refloss
from refloss.losses import box as B

PI2 = math.pi**2
P = np.array([[0.0, 0.0, 4.0, 5.0]])
T = np.array([[2.0, 2.5, 7.0, 6.0]])
# Hand geometry of (P, T): I = 2 * 2.5, A = 20, Ag = 17.5, enclosing 7 x 6, centres (2, 2.5), (4.5, 4.25).
I, U, C, RHO2, C2 = 5.0, 32.5, 42.0, 2.5**2 + 1.75**2, 49.0 + 36.0
V = 4 / PI2 * (math.atan(5.0 / 3.5) - math.atan(4.0 / 5.0)) ** 2


def _one(fn, p=P, t=T, **kw):
    return float(fn(p, t, reduction="sum", **kw))


# ------------------------------------------------------------------------------------------------
# Values against independent hand computation.


def test_paper_values_are_the_textbook_formulas():
    iou = I / U
    assert _one(refloss.iou_loss, convention="paper") == pytest.approx(1 - iou, rel=1e-15)
    assert _one(refloss.iou_loss, convention="paper", mode="log") == pytest.approx(-math.log(iou), rel=1e-15)
    assert _one(refloss.iou_loss, convention="paper", mode="square") == pytest.approx(1 - iou**2, rel=1e-15)
    assert _one(refloss.giou_loss, convention="paper") == pytest.approx(1 - iou + (C - U) / C, rel=1e-15)
    assert _one(refloss.diou_loss, convention="paper") == pytest.approx(1 - iou + RHO2 / C2, rel=1e-15)
    alpha = V / (1 - iou + V)
    assert _one(refloss.ciou_loss, convention="paper") == pytest.approx(1 - iou + RHO2 / C2 + alpha * V, rel=1e-15)


@pytest.mark.parametrize("conv", ["torchvision", "detectron2"])
def test_torchvision_and_detectron2_eps_placement(conv):
    e = 1e-7
    iou = I / (U + e)
    assert _one(refloss.giou_loss, convention=conv) == pytest.approx(1 - iou + (C - U) / (C + e), rel=1e-15)
    assert _one(refloss.diou_loss, convention=conv) == pytest.approx(1 - iou + RHO2 / (C2 + e), rel=1e-15)
    alpha = V / (1 - iou + V + e)
    assert _one(refloss.ciou_loss, convention=conv) == pytest.approx(1 - iou + RHO2 / (C2 + e) + alpha * V, rel=1e-15)


def test_mmdet_eps_placement():
    e = 1e-6
    iou = I / max(U, e)
    assert _one(refloss.iou_loss, convention="mmdet", mode="log") == pytest.approx(-math.log(iou), rel=1e-15)
    assert _one(refloss.giou_loss, convention="mmdet") == pytest.approx(1 - (iou - (C - U) / C), rel=1e-15)
    iou_add = I / (U + e)
    assert _one(refloss.diou_loss, convention="mmdet") == pytest.approx(1 - (iou_add - RHO2 / (C2 + e)), rel=1e-15)
    # IoU = 0.154 <= 0.5: the gate makes mmdet's CIoU its DIoU
    assert _one(refloss.ciou_loss, convention="mmdet") == _one(refloss.diou_loss, convention="mmdet")
    p, t = np.array([[1.0, 1.0, 9.0, 7.0]]), np.array([[1.5, 0.5, 9.5, 6.5]])
    inter, un = 7.5 * 5.5, 48.0 + 48.0 - 7.5 * 5.5
    iou = inter / (un + e)
    v = 4 / PI2 * (math.atan(8.0 / (6.0 + e)) - math.atan(8.0 / (6.0 + e))) ** 2
    rho2 = (1.0**2 + (-1.0) ** 2) / 4  # (X1 + X2 - x1 - x2, Y1 + Y2 - y1 - y2) = (1, -1)
    c2 = 8.5**2 + 6.5**2 + e
    alpha = v / (1 - iou + v)
    assert _one(refloss.ciou_loss, p, t, convention="mmdet") == pytest.approx(1 - (iou - (rho2 / c2 + alpha * v)), rel=1e-15)


def test_ultralytics_eps_in_heights_and_alpha():
    e = 1e-7
    A, Ag = 4 * (5 + e), 5 * (3.5 + e)
    un = A + Ag - I + e
    iou = I / un
    assert _one(refloss.iou_loss, convention="ultralytics") == pytest.approx(1 - iou, rel=1e-15)
    ca = C + e
    assert _one(refloss.giou_loss, convention="ultralytics") == pytest.approx(1 - (iou - (ca - un) / ca), rel=1e-15)
    v = 4 / PI2 * (math.atan(5 / (3.5 + e)) - math.atan(4 / (5 + e))) ** 2
    alpha = v / (v - iou + (1 + e))
    assert _one(refloss.ciou_loss, convention="ultralytics") == pytest.approx(1 - (iou - (RHO2 / (C2 + e) + v * alpha)), rel=1e-15)


def test_float32_unit_box_giou_is_eps_over_one_plus_eps():
    # box_seg_losses.md 1.3 / vision#7746: identical [0,0,1,1] boxes give 1 - 1/(1 + 1e-7) = eps/(1 + eps).
    # torchvision's float32 1 - IoU rounds that to 1.19e-7 (one float32 ulp below 1); refloss forms
    # 1 - IoU = (U + eps - I)/(U + eps) without the cancellation and returns the value itself.
    b = np.array([[0.0, 0.0, 1.0, 1.0]], dtype=np.float32)
    out = refloss.giou_loss(b, b, reduction="sum")
    assert out.dtype == np.float32 and float(out) == pytest.approx(1e-7 / (1 + 1e-7), rel=1e-6)


def test_mmdet_ciou_identical_boxes_in_float32_is_zero_not_nan():
    # box_seg_losses.md 1.5 / 7.20: mmdet 3.x gives NaN here (alpha = 0/0); refloss gives alpha v = 0.
    b = np.array([[10.0, 10.0, 12.0, 13.0], [100.0, 100.0, 300.0, 250.0]], dtype=np.float32)
    value, (gp, gt) = refloss.ciou_loss.value_and_grad(b, b, convention="mmdet", reduction="none")
    assert np.all(np.isfinite(value)) and np.all(value <= 1e-6) and np.all(np.isfinite(gp))


# ------------------------------------------------------------------------------------------------
# The labelled tie / degenerate set (box_seg_losses.md section 0), values and gradients per convention.

EDGE = {k: (np.array([p]), np.array([t])) for k, (p, t) in B.EDGE_CASES.items()}


def _vg(fn, case, **kw):
    p, t = EDGE[case]
    v, (gp, gt) = fn.value_and_grad(p, t, reduction="sum", **kw)
    return float(v), gp[0], gt[0]


def test_point_boxes_torchvision_give_one_and_zero_gradient():
    for fn in (refloss.giou_loss, refloss.diou_loss):
        v, gp, gt = _vg(fn, "point", convention="torchvision")
        assert v == 1.0 and np.all(gp == 0) and np.all(gt == 0)
    for conv in ("mmdet", "ultralytics"):
        v, gp, gt = _vg(refloss.ciou_loss, "point", convention=conv)
        assert v == 1.0 and np.all(np.isfinite(gp)) and np.all(np.isfinite(gt))


@pytest.mark.parametrize("fn, conv", [(refloss.giou_loss, "paper"), (refloss.iou_loss, "paper"), (refloss.ciou_loss, "torchvision"), (refloss.ciou_loss, "detectron2"), (refloss.ciou_loss, "paper")])
def test_point_boxes_where_the_convention_divides_zero_by_zero_raise(fn, conv):
    p, t = EDGE["point"]
    with pytest.raises(ValueError, match=rf"^{fn.name}: .*convention=.?{conv}"):
        fn(p, t, convention=conv)


def test_identical_boxes_half_split_gives_zero_gradient():
    for fn in (refloss.iou_loss, refloss.giou_loss, refloss.diou_loss, refloss.ciou_loss):
        v, gp, gt = _vg(fn, "identical", convention="paper")
        assert v == 0.0 and np.all(gp == 0) and np.all(gt == 0)
    v, gp, _ = _vg(refloss.giou_loss, "identical", convention="torchvision")
    assert v == pytest.approx(1 - 6 / (6 + 1e-7), rel=1e-12) and np.max(np.abs(gp)) < 1e-8


def test_touching_boxes_clamp_passes_strict_mask_does_not():
    # iw == 0, ih == 2, U = 2 (2 + e) + 2 (3 + e) + e (ultralytics' eps in the heights): clamp(iw, 0) passes dI/dx2 = ih (ultralytics, paper); torchvision's
    # strict mask gives dI = 0, so its GIoU gradient is the enclosing term only.
    v, gp, gt = _vg(refloss.iou_loss, "touching", convention="ultralytics")
    assert v == 1.0
    np.testing.assert_allclose(gp, [0, 0, -2 / (10 + 5e-7), 0], rtol=1e-15)
    np.testing.assert_allclose(gt, [2 / (10 + 5e-7), 0, 0, 0], rtol=1e-15)
    _, gp_tv, _ = _vg(refloss.giou_loss, "touching", convention="torchvision")
    _, gp_pp, _ = _vg(refloss.giou_loss, "touching", convention="paper")
    # dI/dx2 = 2 changes -dIoU by -2/U and the enclosing term's -dU/C by +2/C (C = 4 x 3)
    assert gp_pp[2] - gp_tv[2] == pytest.approx(-2 / 10 + 2 / 12, rel=1e-6)
    # mmdet: IoU = 0 < eps is clamped: the log loss is -log(1e-6) with no gradient
    v, gp, _ = _vg(refloss.iou_loss, "touching", convention="mmdet", mode="log")
    assert v == pytest.approx(-math.log(1e-6), rel=1e-15) and np.all(gp == 0)


def test_shared_edges_half_split_exact_gradient():
    # x1 == X1 and y2 == Y2: I = 4, U = 8; hand-derived with the 1/2 split (module docstring).
    v, gp, gt = _vg(refloss.iou_loss, "shared_edges", convention="paper")
    assert v == 0.5
    np.testing.assert_array_equal(gp, [0.0, -1 / 8, -3 / 16, -1 / 16])


def test_zero_height_ciou_is_finite_with_the_true_derivative():
    # h = 0 < w: torchvision's forward is atan(2 / 0) = pi / 2; refloss's gradient is the finite limit.
    v, gp, gt = _vg(refloss.ciou_loss, "zero_height", convention="torchvision")
    iou, rho2, c2 = 0.0, 0.0, 4 + 4 + 1e-7  # same centre (1, 1); ih = 0 so I = 0
    vv = 4 / PI2 * (math.pi / 4 - math.pi / 2) ** 2
    assert v == pytest.approx(1 - iou + rho2 / c2 + vv / (1 + vv + 1e-7) * vv, rel=1e-14)
    assert np.all(np.isfinite(gp)) and np.all(np.isfinite(gt))


def test_zero_width_box_inside_target():
    v, gp, _ = _vg(refloss.giou_loss, "zero_width", convention="paper")
    assert v == 1 - 0 + (6 - 4) / 6  # I = 0, U = 0 + 4, C = 2 x 3
    assert np.all(np.isfinite(gp))


# ------------------------------------------------------------------------------------------------
# CIoU with alpha detached (every preset's autograd gradient, and the default): proven against central
# differences of the value with alpha frozen at the evaluation point, independently of refloss.proof.


@pytest.mark.parametrize("conv", B.CONVENTIONS)
def test_detached_alpha_gradient_is_the_frozen_alpha_derivative(conv):
    rng = np.random.default_rng(5)
    dom_p, dom_t = refloss.ciou_loss.inputs[0].domain, refloss.ciou_loss.inputs[1].domain
    params = {"convention": conv, "box_format": "xyxy"}
    p, t = dom_p(rng, (5, 4), "typical", {}, params), dom_t(rng, (5, 4), "typical", {}, params)
    g0 = B._geometry(np, p, t, "ciou", conv, "xyxy")
    alpha0 = g0["alpha"]

    def frozen(pp):
        g = B._geometry(np, pp, t, "ciou", conv, "xyxy")
        q = g["iou"] - (g["pen_d"] + alpha0 * g["v"])
        return float(np.sum(1 - (np.clip(q, -1, 1) if B._clamps_output(g) else q)))

    _, (gp, _) = refloss.ciou_loss.value_and_grad(p, t, alpha_gradient="detached", reduction="sum", **params)
    _, (gp_through, _) = refloss.ciou_loss.value_and_grad(p, t, alpha_gradient="through", reduction="sum", **params)
    _, (gp_default, _) = refloss.ciou_loss.value_and_grad(p, t, reduction="sum", **params)
    np.testing.assert_array_equal(gp_default, gp)  # every preset detaches alpha, and so does the default
    for _ in range(3):
        d = rng.standard_normal(p.shape)
        h = 1e-4
        fd = (-frozen(p + 2 * h * d) + 8 * frozen(p + h * d) - 8 * frozen(p - h * d) + frozen(p - 2 * h * d)) / (12 * h)
        assert fd == pytest.approx(float(np.sum(gp * d)), rel=1e-7, abs=1e-10)
    if conv != "mmdet":  # mmdet's gate is closed for most typical rows, where both agree
        assert not np.allclose(gp, gp_through)


# ------------------------------------------------------------------------------------------------
# Formats and pairwise matrices.


@pytest.mark.parametrize("fmt", B.BOX_FORMATS)
def test_conversions_round_trip(fmt):
    rng = np.random.default_rng(1)
    x, y = np.sort(rng.uniform(0, 10, size=(6, 2)), axis=1), np.sort(rng.uniform(0, 10, size=(6, 2)), axis=1)
    b = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    there = B.convert_boxes(b, "xyxy", fmt)
    np.testing.assert_allclose(B.convert_boxes(there, fmt, "xyxy"), b, rtol=1e-15, atol=1e-14)
    for fn in (refloss.giou_loss, refloss.ciou_loss):
        a = fn(b, b[::-1].copy(), reduction="none")
        np.testing.assert_allclose(fn(there, there[::-1].copy(), box_format=fmt, reduction="none"), a, rtol=1e-13)


def test_known_conversions():
    b = np.array([[1.0, 2.0, 5.0, 8.0]])
    np.testing.assert_array_equal(B.convert_boxes(b, "xyxy", "xywh"), [[1, 2, 4, 6]])
    np.testing.assert_array_equal(B.convert_boxes(b, "xyxy", "cxcywh"), [[3, 5, 4, 6]])
    np.testing.assert_array_equal(B.convert_boxes(b, "xyxy", "yxyx"), [[2, 1, 8, 5]])


def test_pairwise_matrices_equal_the_loss_path():
    rng = np.random.default_rng(2)
    dom_p, dom_t = refloss.giou_loss.inputs[0].domain, refloss.giou_loss.inputs[1].domain
    a = dom_p(rng, (5, 4), "typical", {}, {"box_format": "xyxy"})
    b = dom_t(rng, (5, 4), "typical", {}, {"box_format": "xyxy"})
    m = refloss.box_iou(a, b)
    assert m.shape == (5, 5)
    # compared as losses (1 - matrix entry), where both sides are well conditioned
    np.testing.assert_allclose(1 - np.diag(m), refloss.iou_loss(a, b, convention="paper", reduction="none"), rtol=1e-14)
    g = refloss.generalized_box_iou(a, b)
    np.testing.assert_allclose(1 - np.diag(g), refloss.giou_loss(a, b, convention="paper", reduction="none"), rtol=1e-14)
    # an off-diagonal entry by hand, and the zero-union pair
    np.testing.assert_allclose(refloss.box_iou(P, T), [[I / U]], rtol=1e-15)
    z = np.zeros((1, 4))
    assert refloss.box_iou(z, z)[0, 0] == 0.0 and refloss.generalized_box_iou(z, z)[0, 0] == 0.0


# ------------------------------------------------------------------------------------------------
# Bad input.


def test_inverted_box_is_an_error_naming_loss_argument_and_box():
    bad = np.array([[0.0, 0.0, 1.0, 1.0], [3.0, 0.0, 2.0, 1.0]])
    for fn in (refloss.iou_loss, refloss.giou_loss, refloss.diou_loss, refloss.ciou_loss):
        with pytest.raises(ValueError, match=rf"^{fn.name}: target must be boxes with x1 <= x2 .*got box 1 = \[3.0, 0.0, 2.0, 1.0\]"):
            fn(bad[:1].repeat(2, 0), bad)
    with pytest.raises(ValueError, match=r"^giou_loss: pred must be boxes .*box_format='xywh'"):
        refloss.giou_loss(np.array([[0.0, 0.0, -1.0, 1.0]]), np.array([[0.0, 0.0, 1.0, 1.0]]), box_format="xywh")


def test_undefined_combinations_are_errors():
    with pytest.raises(ValueError, match=r"^iou_loss: mode must be 'linear' under convention='ultralytics'.*got 'log'"):
        refloss.iou_loss(P, T, convention="ultralytics", mode="log")
    p, t = EDGE["touching"]
    with pytest.raises(ValueError, match=r"^iou_loss: pred, target must be overlapping box pairs .*mode='log'"):
        refloss.iou_loss(p, t, convention="paper", mode="log")
    with pytest.raises(ValueError, match=r"^giou_loss: convention must be one of"):
        refloss.giou_loss(P, T, convention="tfa")
    with pytest.raises(ValueError, match=r"^iou_loss: convention must be one of 'mmdet', 'ultralytics', 'paper', got 'torchvision'"):
        refloss.iou_loss(P, T, convention="torchvision")
    with pytest.raises(ValueError, match=r"^diou_loss: target must be of shape \(N=1, 4\), got shape \(1, 5\)"):
        refloss.diou_loss(P, np.zeros((1, 5)))


def test_helpers_reject_bad_input():
    with pytest.raises(ValueError, match=r"^convert_boxes: dst must be one of 'xyxy'"):
        B.convert_boxes(P, "xyxy", "xyz")
    with pytest.raises(ValueError, match=r"^box_iou: boxes2 must be of shape \(N, 4\), got shape \(3,\)"):
        refloss.box_iou(P, np.zeros(3))
    with pytest.raises(TypeError, match=r"^generalized_box_iou: boxes1 must be a real floating array"):
        refloss.generalized_box_iou(np.zeros((1, 4), dtype=int), P)
    with pytest.raises(ValueError, match=r"^box_iou: boxes1 must be boxes with x1 <= x2"):
        refloss.box_iou(np.array([[2.0, 0.0, 1.0, 1.0]]), P)
