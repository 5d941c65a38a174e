"""The classification family's oracles (refloss.mp.classification): refloss certified against them on
typical cases of every parameter path (value and gradients within 4 ulps), and oracle values that can
be checked by hand or against the frameworks' recorded outputs (frameworks.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import refloss
import refloss.mp as rmp

from certification import check_certified, paths

pytest.importorskip("mpmath")

FAMILY = [loss for loss in refloss.catalog() if loss.family == "classification"]
REDUCTIONS = ("none", "mean")  # the strictest (per element) and the weighted one; the others only rescale
CASES_PER_PATH = 1

# No certificate is known to exceed the bound: the compensated shift of refloss.xp's softmax family
# (and double-double target-relative scores) retired the float64 rounding of z_i - z_max.
KNOWN: dict = {}


def test_every_classification_loss_has_an_oracle():
    oracles = rmp.load()
    assert [loss.name for loss in FAMILY if loss.name not in oracles] == []


@pytest.mark.parametrize("loss, params", paths(FAMILY, REDUCTIONS))
def test_refloss_is_certified_by_the_oracle(loss, params):
    check_certified(loss, params, CASES_PER_PATH, KNOWN)


# --------------------------------------------------------------------------------------------------
# The oracle itself, at points whose values are known independently.


def _value(name, *inputs, **params):
    """The oracle's value (a float, or a float array for reduction='none'); integer inputs stay labels."""
    full = {**refloss.get(name).defaults(), **params}
    arrays = [np.asarray(x) if np.asarray(x).dtype.kind in "iu" else np.asarray(x, dtype=float) for x in inputs]
    out, _ = rmp.evaluate(name, arrays, full)
    return np.vectorize(float)(out) if np.ndim(out) else float(out)


LOG2 = math.log(2)


def test_softmax_oracles_by_hand():
    tie = np.array([[0.0, 0.0]])
    label = np.array([0])
    assert _value("cross_entropy", tie, label) == LOG2
    assert _value("softplus_logsumexp_loss", tie, label) == LOG2
    assert _value("softmax_cross_entropy", tie, np.array([[1.0, 0.0]])) == LOG2
    assert _value("nll_loss", np.array([[1.0, 2.0], [0.5, 0.1]]), np.array([0, 1]), reduction="none").tolist() == [-1.0, -0.1]
    assert _value("softmax_focal_loss", tie, label) == LOG2 / 4  # (1/2)^2 log 2
    assert _value("additive_margin_softplus_loss", tie, label, scale=1.0, margin=0.0) == LOG2
    assert _value("logsumexp_hinge_loss", np.array([[0.0, 0.0, 0.0]]), label) == LOG2
    # PyTorch's weighted, smoothed cross-entropy (frameworks.md 1.3) and its -inf logit case
    x = np.array([[1, 2, 3], [1, -1, 0.5], [0.2, 0.1, -0.3]])
    w = np.array([1.0, 2.0, 3.0])
    assert _value("cross_entropy", x, np.array([2, 0, 1]), weight=w, label_smoothing=0.1) == pytest.approx(0.6979164254891241, rel=1e-15)
    assert _value("cross_entropy", np.array([[-math.inf, 0.0, 1.0]]), np.array([1])) == pytest.approx(1.3132616875182228, rel=1e-15)
    # an ignored target contributes nothing, to the sum or to the weighted mean's denominator
    assert _value("cross_entropy", np.array([[0.0, 0.0], [5.0, -5.0]]), np.array([0, 1]), ignore_index=1) == LOG2


def test_binary_oracles_by_hand():
    assert _value("binary_cross_entropy", np.array([0.0]), np.array([1.0])) == 100.0  # PyTorch's log clamp
    keras = _value("binary_cross_entropy", np.array([0.0]), np.array([1.0]), clamp="keras")
    assert keras == pytest.approx(-math.log(1e-7), rel=1e-15)  # 16.118095...: p clipped to 1e-7
    assert _value("binary_cross_entropy", np.array([0.0]), np.array([1.0]), clamp="none") == math.inf
    assert _value("binary_cross_entropy", np.array([0.0, 1.0]), np.array([0.0, 1.0]), clamp="none") == 0.0  # 0 log 0 = 0
    assert _value("binary_cross_entropy_with_logits", np.array([0.0]), np.array([1.0])) == LOG2
    assert _value("binary_cross_entropy_with_logits", np.array([0.0]), np.array([1.0]), pos_weight=np.array([3.0])) == 3 * LOG2
    assert _value("weighted_binary_cross_entropy", np.array([0.0]), np.array([1.0]), beta=0.5) == LOG2 / 2
    assert _value("soft_margin_loss", np.array([0.0]), np.array([-1.0])) == LOG2
    assert _value("sigmoid_focal_loss", np.array([0.0]), np.array([1.0]), alpha=None, gamma=1.0) == LOG2 / 2
    # HED: one positive of four, beta = 3/4 weights the positive, 1/4 the negatives
    hed = _value("balanced_binary_cross_entropy", np.zeros(4), np.array([1.0, 0.0, 0.0, 0.0]), reduction="none")
    np.testing.assert_allclose(hed, [0.75 * LOG2, 0.25 * LOG2, 0.25 * LOG2, 0.25 * LOG2], rtol=1e-15)
    assert _value("multilabel_soft_margin_loss", np.zeros((1, 2)), np.array([[1.0, 0.0]])) == LOG2


def test_divergence_oracles_by_hand():
    half = np.array([[0.5, 0.5]])
    one_hot = np.array([[1.0, 0.0]])
    assert _value("kl_div", np.log(half), one_hot, reduction="sum") == LOG2  # 0 log 0 = 0 on the second class
    assert _value("kl_div", np.log(half), np.log(half), log_target=True, reduction="sum") == 0.0
    keras = _value("kl_div", half, one_hot, convention="keras", reduction="sum")  # both clipped to [1e-7, 1]
    assert keras == pytest.approx(LOG2 + 1e-7 * math.log(1e-7 / 0.5), rel=1e-15)
    assert _value("jensen_shannon_divergence", one_hot, np.array([[0.0, 1.0]])) == LOG2  # disjoint supports
    assert _value("jensen_shannon_divergence", half, half) == 0.0


def test_hinge_oracles_by_hand():
    # PyTorch's documented examples (frameworks.md): multi_margin 0.325, multilabel_margin 0.85
    x = np.array([[0.1, 0.2, 0.4, 0.8]])
    assert _value("multi_margin_loss", x, np.array([3])) == pytest.approx(0.325, rel=1e-15)
    assert _value("multiclass_hinge_loss", x, np.array([3])) == pytest.approx(1.3, rel=1e-15)
    assert _value("crammer_singer_hinge_loss", x, np.array([3])) == pytest.approx(0.6, rel=1e-15)  # optax 0.6
    assert _value("multilabel_margin_loss", x, np.array([[3, 0, -1, 1]])) == pytest.approx(0.85, rel=1e-15)
    # p = 2, margin 0.5: only class 2 violates, by 0.5 - 0.8 + 0.4 = 0.1, weighted by w[3] = 2, over C = 4
    weighted = _value("multi_margin_loss", x, np.array([3]), p=2, margin=0.5, weight=np.array([1.0, 1.0, 1.0, 2.0]))
    assert weighted == pytest.approx(2 * 0.1**2 / 4, rel=1e-14)
