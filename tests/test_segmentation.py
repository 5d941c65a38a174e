"""Segmentation losses: values against independent expectations (each library's formula written out
directly in NumPy, and small hand-computed cases), the Dice-IoU relation, every preset's empty-mask
behaviour, a labelled set of tie/degenerate cases with asserted values, and bad input."""

import math

import numpy as np
import pytest

import refloss
from refloss.losses.segmentation import CONVENTIONS

RNG = np.random.default_rng(3)
LOSSES = [refloss.dice_loss, refloss.jaccard_loss, refloss.tversky_loss, refloss.focal_tversky_loss,
          refloss.generalized_dice_loss, refloss.lovasz_softmax_loss]


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _onehot(labels, c):
    return np.moveaxis(np.eye(c)[labels], -1, 1)


X = RNG.normal(0.0, 2.0, size=(3, 4, 5, 2))
LAB = RNG.integers(0, 4, size=(3, 5, 2))
Y = _onehot(LAB, 4)
P = _softmax(X)


# ------------------------------------------------------------------------------------------------
# Hand-computed values.


def test_dice_monai_by_hand():
    # one sample, 2 classes, 2 pixels; probabilities given
    p = np.array([[[0.8, 0.3], [0.2, 0.7]]])
    y = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    s = 1e-5
    expected = [[1 - (2 * 0.8 + s) / (1.1 + 1 + s), 1 - (2 * 0.7 + s) / (0.9 + 1 + s)]]
    got = refloss.dice_loss(p, y, activation="none", reduction="none")
    np.testing.assert_allclose(got, expected, rtol=1e-15)
    # squared (V-Net) denominator
    expected = [[1 - (1.6 + s) / (0.64 + 0.09 + 1 + s), 1 - (1.4 + s) / (0.04 + 0.49 + 1 + s)]]
    got = refloss.dice_loss(p, y, activation="none", squared=True, reduction="none")
    np.testing.assert_allclose(got, expected, rtol=1e-15)


def test_tversky_alpha_assignment_by_preset():
    p = np.array([[[0.8, 0.3]]])
    y = np.array([[[1.0, 0.0]]])
    i, fp, fn = 0.8, 0.3, 0.2
    a, b = 0.3, 0.7
    monai = refloss.tversky_loss(p, y, alpha=a, beta=b, activation="none", reduction="sum")
    assert monai == pytest.approx(1 - (i + 1e-5) / (i + a * fp + b * fn + 1e-5), rel=1e-15)
    # keras.losses.tversky multiplies sum((1 - y_pred) y_true) = FN by alpha
    keras = refloss.tversky_loss(p, y, alpha=a, beta=b, activation="none", convention="keras", reduction="sum")
    assert keras == pytest.approx(1 - i / (i + a * fn + b * fp + 1e-7), rel=1e-15)
    # Abraham & Khan: (1 - (TP + 1) / (TP + alpha FN + (1 - alpha) FP + 1)) ** 0.75
    ft = refloss.focal_tversky_loss(p, y, activation="none", reduction="sum")
    assert ft == pytest.approx((1 - (i + 1) / (i + 0.7 * fn + 0.3 * fp + 1)) ** 0.75, rel=1e-15)


# ------------------------------------------------------------------------------------------------
# Each library's formula written out directly (as its source computes it), on random inputs.


def _sums(p, y, axes):
    return (p * y).sum(axes), p.sum(axes), y.sum(axes)


def _library_dice(name, p, y):
    if name == "monai":
        i, ps, gs = _sums(p, y, (2, 3))
        return 1 - (2 * i + 1e-5) / (ps + gs + 1e-5)
    if name == "smp":
        i, ps, gs = _sums(p, y, (0, 2, 3))
        score = 2 * i / np.maximum(ps + gs, 1e-7)
        return np.mean((1 - score) * (gs > 0))
    if name == "kornia":
        i, ps, gs = _sums(p, y, (1, 2, 3))
        return 1 - 2 * i / (ps + gs + 1e-8)
    if name == "kornia_macro":
        i, ps, gs = _sums(p, y, (2, 3))
        return np.mean(1 - 2 * i / (ps + gs + 1e-8), axis=1)
    if name == "keras":
        i, ps, gs = _sums(p, y, (0, 1, 2, 3))
        return 1 - 2 * i / (gs + ps + 1e-7)
    if name == "optax":
        i, ps, gs = _sums(p, y, (2, 3))
        return np.mean(1 - (i + 1) / (i + 0.5 * (ps - i) + 0.5 * (gs - i) + 1), axis=1)
    raise ValueError(name)


@pytest.mark.parametrize("name", list(CONVENTIONS)[:-1])
def test_dice_matches_each_library_formula(name):
    got = refloss.dice_loss(X, Y, convention=name, reduction="none")
    np.testing.assert_allclose(got, _library_dice(name, P, Y), rtol=1e-13)
    # integer class indices give the same value and gradient as their one-hot encoding
    v1, (g1, t1) = refloss.dice_loss.value_and_grad(X, Y, convention=name)
    v2, (g2, t2) = refloss.dice_loss.value_and_grad(X, LAB, convention=name)
    assert v1 == v2 and t1 is None and t2 is None
    np.testing.assert_array_equal(g1, g2)


def test_jaccard_smp_and_monai_formulas():
    i, ps, gs = _sums(P, Y, (0, 2, 3))
    smp = np.mean((1 - i / np.maximum(ps + gs - i, 1e-7)) * (gs > 0))
    assert refloss.jaccard_loss(X, Y, convention="smp") == pytest.approx(smp, rel=1e-13)
    i, ps, gs = _sums(P, Y, (2, 3))
    monai = 1 - (2 * i + 1e-5) / (2 * (ps + gs - i) + 1e-5)
    np.testing.assert_allclose(refloss.jaccard_loss(X, Y, reduction="none"), monai, rtol=1e-13)


def test_generalized_dice_matches_monai_formula():
    y = Y.copy()
    y[0, 2] = 0.0  # class 2 absent in sample 0: its weight is the sample's largest
    i, ps, gs = _sums(P, y, (2, 3))
    with np.errstate(divide="ignore"):
        w = 1 / gs**2
    w[np.isinf(w)] = 0
    w = np.where(gs == 0, w.max(axis=1, keepdims=True), w)
    expected = 1 - (2 * (w * i).sum(1) + 1e-5) / ((w * (ps + gs)).sum(1) + 1e-5)
    np.testing.assert_allclose(refloss.generalized_dice_loss(X, y, reduction="none"), expected, rtol=1e-13)


def _berman_lovasz_grad(gt_sorted):
    gts = gt_sorted.sum()
    inter = gts - np.cumsum(gt_sorted)
    union = gts + np.cumsum(1 - gt_sorted)
    jac = 1 - inter / union
    jac[1:] = jac[1:] - jac[:-1]
    return jac


def test_lovasz_matches_berman_reference():
    x = RNG.normal(size=(3, 7))
    y = RNG.integers(0, 2, size=(3, 7)).astype(float)
    per = []
    for xi, yi in zip(x, y):
        e = 1 - xi * (2 * yi - 1)
        o = np.argsort(-e, kind="stable")
        per.append(np.dot(np.maximum(e[o], 0), _berman_lovasz_grad(yi[o])))
    np.testing.assert_allclose(refloss.lovasz_hinge_loss(x, y, reduction="none"), per, rtol=1e-14)
    # lovasz_softmax, classes='present', whole batch (Berman's defaults)
    fg_all = np.moveaxis(Y, 1, 0).reshape(4, -1)
    p_all = np.moveaxis(P, 1, 0).reshape(4, -1)
    losses = []
    for fg, pc in zip(fg_all, p_all):
        if fg.sum() == 0:
            continue
        e = np.abs(fg - pc)
        o = np.argsort(-e, kind="stable")
        losses.append(np.dot(e[o], _berman_lovasz_grad(fg[o])))
    assert refloss.lovasz_softmax_loss(X, LAB) == pytest.approx(np.mean(losses), rel=1e-14)


# ------------------------------------------------------------------------------------------------
# The Dice-IoU relation of the 003 seed: IoU = Dice / (2 - Dice).


@pytest.mark.parametrize("squared", [False, True])
def test_iou_is_dice_over_two_minus_dice(squared):
    # IoU = D / (2 - D) with D = 1 - L_dice is, for the losses, L_jaccard = 2 L_dice / (1 + L_dice)
    # (the well-conditioned form). Exact for MONAI's smoothing too, which keeps 2I + s over 2U + s.
    ld = refloss.dice_loss(X, Y, convention="monai", squared=squared, reduction="none")
    lj = refloss.jaccard_loss(X, Y, convention="monai", squared=squared, reduction="none")
    np.testing.assert_allclose(lj, 2 * ld / (1 + ld), rtol=1e-14)
    dice, iou = 1 - ld, 1 - lj
    np.testing.assert_allclose(iou, dice / (2 - dice), rtol=0, atol=4e-16)
    # smp, single class: the clamped unsmoothed scores obey it as well
    d = refloss.dice_loss(X[:, :1], Y[:, :1], convention="smp", activation="sigmoid", squared=squared)
    j = refloss.jaccard_loss(X[:, :1], Y[:, :1], convention="smp", activation="sigmoid", squared=squared)
    assert j == pytest.approx(2 * d / (1 + d), rel=1e-14)


# ------------------------------------------------------------------------------------------------
# Empty masks, per preset: (target and prediction empty, target empty with prediction P = 0.6).

EMPTY_EXPECTED = {
    "monai": (0.0, 0.6 / (0.6 + 1e-5)),
    "smp": (0.0, 0.0),
    "kornia": (1.0, 1.0),  # 1 - 2I / (P + G + eps) with I = 0: exactly 1, no numerator smoothing
    "kornia_macro": (1.0, 1.0),
    "keras": (1.0, 1.0),
    "optax": (0.0, 0.6 / (0.6 + 2)),
}


@pytest.mark.parametrize("name", list(EMPTY_EXPECTED))
def test_empty_mask_behaviour_of_each_preset(name):
    both_empty, target_empty = EMPTY_EXPECTED[name]
    y = np.zeros((1, 1, 3))
    zero = refloss.dice_loss(np.zeros((1, 1, 3)), y, activation="none", convention=name, reduction="sum")
    assert zero == pytest.approx(both_empty, abs=1e-300)
    p = np.array([[[0.1, 0.2, 0.3]]])
    value, (grad, _) = refloss.dice_loss.value_and_grad(p, y, activation="none", convention=name, reduction="sum")
    assert value == pytest.approx(target_empty, rel=1e-14)
    if name == "smp":
        assert np.all(grad == 0)  # masked class: no gradient at all
    if name == "monai":
        np.testing.assert_allclose(grad, 1e-5 / (0.6 + 1e-5) ** 2, rtol=1e-12)  # the "stuck at 1" gradient


def test_lovasz_empty_masks():
    # no foreground: the Lovasz gradient is (1, 0, ...), the loss is the largest hinge error
    x = np.array([[0.5, -2.0, 1.5]])
    assert refloss.lovasz_hinge_loss(x, np.zeros((1, 3))) == pytest.approx(2.5, rel=1e-15)
    # lovasz_softmax: an absent class is skipped under 'present' and counts its largest error under 'all'
    p = np.array([[[0.9, 0.6], [0.1, 0.4]]])  # class 1 absent
    y = np.array([[[1.0, 1.0], [0.0, 0.0]]])
    present = refloss.lovasz_softmax_loss(p, y, activation="none")
    # class 0: errors (0.1, 0.4) sorted (0.4, 0.1), grad (1/2... ) -> J = 1 - 1/2 then 1 - 0 = (0.5, 0.5)
    assert present == pytest.approx(0.4 * 0.5 + 0.1 * 0.5, rel=1e-15)
    every = refloss.lovasz_softmax_loss(p, y, activation="none", classes="all")
    assert every == pytest.approx((0.25 + 0.4) / 2, rel=1e-15)
    assert refloss.lovasz_softmax_loss(p, np.zeros_like(y), activation="none") == 0.0


def test_generalized_dice_all_empty_sample_is_zero():
    assert refloss.generalized_dice_loss(np.full((1, 2, 3), 0.5), np.zeros((1, 2, 3)), activation="none") == 0.0


# ------------------------------------------------------------------------------------------------
# Tie / degenerate cases (labelled; the gradient proof runs away from these).

TIE_CASES = {
    # Lovasz hinge, all logits 0: every error is 1 (a four-way tie). Value 1 whatever the order; the
    # stable sort keeps index order, giving g = (1/2, 1/6, 1/3, 0) and d/dx = -(2y - 1) g.
    "lovasz_hinge_all_tied": (
        lambda: refloss.lovasz_hinge_loss.value_and_grad(np.zeros((1, 4)), np.array([[1.0, 0.0, 1.0, 0.0]])),
        1.0, np.array([[-0.5, 1 / 6, -1 / 3, 0.0]]),
    ),
    # Lovasz hinge, error exactly at the hinge (x y = 1): relu'(0) = 0, so that element gets no gradient.
    "lovasz_hinge_at_kink": (
        lambda: refloss.lovasz_hinge_loss.value_and_grad(np.array([[1.0, -3.0]]), np.array([[1.0, 0.0]])),
        0.0, np.array([[0.0, 0.0]]),
    ),
    # Lovasz softmax, a tie between two pixels' errors (0.5 and 0.5): value independent of the order.
    "lovasz_softmax_tied_errors": (
        lambda: refloss.lovasz_softmax_loss.value_and_grad(
            np.array([[[0.5, 0.5], [0.5, 0.5]]]), np.array([[[1.0, 0.0], [0.0, 1.0]]]), activation="none"),
        # stable order keeps index order. Class 0: fg (1, 0) -> g = (1, 0); class 1: fg (0, 1) -> g = (1/2, 1/2).
        # Each class 0.5, mean 0.5; d/dp = sign(p - fg) g / 2: the tie order shows in class 0's gradient.
        0.5, np.array([[[-0.5, 0.0], [0.25, -0.25]]]),
    ),
    # Saturated logits, correct prediction: softmax is exactly one-hot; Dice 0 and a zero gradient.
    "dice_saturated_correct": (
        lambda: refloss.dice_loss.value_and_grad(np.array([[[1e4], [-1e4]]]), np.array([[[1.0], [0.0]]]), reduction="sum"),
        0.0, np.zeros((1, 2, 1)),
    ),
    # Saturated logits, wrong prediction: loss at its maximum (up to smoothing), zero gradient.
    "dice_saturated_wrong": (
        lambda: refloss.dice_loss.value_and_grad(np.array([[[-1e4], [1e4]]]), np.array([[[1.0], [0.0]]]), reduction="sum"),
        2 * (1 / (1 + 1e-5)), np.zeros((1, 2, 1)),
    ),
    # Focal Tversky at a perfect prediction with gamma < 1: value 0 and gradient 0 (the minimum's
    # subgradient; the one-sided derivative is infinite there).
    "focal_tversky_perfect": (
        lambda: refloss.focal_tversky_loss.value_and_grad(np.array([[[1.0, 0.0]]]), np.array([[[1.0, 0.0]]]), activation="none"),
        0.0, np.zeros((1, 1, 2)),
    ),
    # Logit ties (all zero) for Dice: the softmax is uniform; finite, order-free value.
    "dice_uniform_softmax": (
        lambda: refloss.dice_loss.value_and_grad(np.zeros((1, 2, 2)), np.array([[[1.0, 0.0], [0.0, 1.0]]]), reduction="none"),
        np.array([[1 - (1 + 1e-5) / (2 + 1e-5)] * 2]), None,
    ),
}


@pytest.mark.parametrize("case", list(TIE_CASES))
def test_tie_and_degenerate_cases(case):
    run, value, grad = TIE_CASES[case]
    v, (g, t) = run()
    np.testing.assert_allclose(v, value, rtol=1e-14, atol=1e-300)
    assert t is None and np.all(np.isfinite(g))
    if grad is not None:
        np.testing.assert_allclose(g, grad, rtol=1e-14, atol=1e-300)


def test_saturated_softmax_keeps_relative_precision():
    # logit gap 40: q = 1 - p ~ 4.2e-18 is computed as the other class's probability, not as 1 - p
    x = np.array([[[40.0], [0.0]]])
    y = np.array([[[1.0], [0.0]]])
    q = math.exp(-40) / (1 + math.exp(-40))
    got = refloss.dice_loss(x, y, reduction="none")
    # class 0: FN = q, FP = 0, I = 1 - q;  class 1: FP = q
    np.testing.assert_allclose(got, [[q / (2 - q + 1e-5), q / (q + 1e-5)]], rtol=1e-14)


# ------------------------------------------------------------------------------------------------
# Bad input.


def test_index_target_out_of_range_names_the_loss():
    bad = LAB.copy()
    bad[0, 0, 0] = 4
    with pytest.raises(ValueError, match=r"^dice_loss: target must be class indices in \[0, 4\), got 4"):
        refloss.dice_loss(X, bad)


def test_index_target_wrong_shape():
    with pytest.raises(ValueError, match=r"^lovasz_softmax_loss: target must be of shape .* got shape \(3, 5, 3\)"):
        refloss.lovasz_softmax_loss(X, np.zeros((3, 5, 3), dtype=np.int64))


def test_probabilities_outside_unit_interval_with_activation_none():
    with pytest.raises(ValueError, match=r"^tversky_loss: input must be in \[0\.0, 1\.0\], got 1\.5"):
        refloss.tversky_loss(np.array([[[0.2, 1.5]]]), np.array([[[1.0, 0.0]]]), activation="none")


def test_bad_parameters():
    with pytest.raises(ValueError, match=r"^dice_loss: convention must be one of 'monai'.*got 'torch'$"):
        refloss.dice_loss(X, Y, convention="torch")
    with pytest.raises(ValueError, match=r"^tversky_loss: alpha must be a real number in \[0\.0, inf\), got -0\.1$"):
        refloss.tversky_loss(X, Y, alpha=-0.1)
    with pytest.raises(ValueError, match=r"^focal_tversky_loss: target must be in \[0\.0, 1\.0\], got 2\.0"):
        refloss.focal_tversky_loss(X, 2 * Y)
    with pytest.raises(TypeError, match=r"^lovasz_hinge_loss: target must be a real floating array, got dtype int64$"):
        refloss.lovasz_hinge_loss(X[:, 0], LAB)


def test_every_overlap_loss_accepts_both_target_kinds():
    for l in LOSSES:
        a, (ga, _) = l.value_and_grad(X, Y)
        b, (gb, _) = l.value_and_grad(X, LAB)
        assert a == b, l.name
        np.testing.assert_array_equal(ga, gb)


def test_lovasz_softmax_at_infinite_logits():
    # A pixel's probabilities are the softmax's limit (refloss.losses.classification._saturated_softmax):
    # a sole +inf class takes probability 1, so pushed all the way toward the target the errors vanish
    # (loss 0) and away from it they are all 1 (loss 1, each class's Jaccard loss of a wholly wrong
    # mask); either way the softmax saturates and the gradient is 0. Tied +inf classes: no limit.
    inf = math.inf
    y = np.array([[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])  # (N, C, pixels), one-hot over C
    right = np.where(y == 1, inf, -inf)
    for x, value in [(right, 0.0), (-right, 1.0)]:
        got, (g, _) = refloss.value_and_grad(refloss.lovasz_softmax_loss, x, y)
        assert got == value
        np.testing.assert_array_equal(g, np.zeros_like(x))
        # and so do finite logits far along every rate (e^-1000 underflows float64)
        for rates in (np.ones_like(x), 1 + np.arange(x.size).reshape(x.shape) % 3):
            far, (g_far, _) = refloss.value_and_grad(refloss.lovasz_softmax_loss, np.sign(x) * 1e3 * rates, y)
            assert far == value
            np.testing.assert_array_equal(g_far, np.zeros_like(x))
    tied = right.copy()
    tied[0, :, 1] = inf
    got, (g, _) = refloss.value_and_grad(refloss.lovasz_softmax_loss, tied, y)
    assert math.isnan(got) and np.isnan(g[0, :, 1]).all()
