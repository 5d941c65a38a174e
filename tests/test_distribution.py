"""Label smoothing as one target transform, and the Keras conventions built on it."""

import math

import numpy as np
import pytest

import refloss
from refloss.losses.distribution import smooth_labels


def test_smooth_labels_styles():
    hot = np.array([[0.0, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(smooth_labels(hot, 0.2), [[0.05, 0.85, 0.05, 0.05]], rtol=1e-15)
    np.testing.assert_allclose(smooth_labels(hot, 0.2, style="binary"), [[0.1, 0.9, 0.1, 0.1]], rtol=1e-15)
    np.testing.assert_allclose(smooth_labels(hot.T, 0.2, axis=0), [[0.05], [0.85], [0.05], [0.05]], rtol=1e-15)
    assert smooth_labels(hot, 0.0) is hot
    with pytest.raises(ValueError, match=r"eps must be a real number in \[0, 1\], got 1.5"):
        smooth_labels(hot, 1.5)
    with pytest.raises(ValueError, match="style must be one of"):
        smooth_labels(hot, 0.1, style="keras")


def test_index_smoothing_is_the_smoothed_one_hot_target_per_sample():
    # PyTorch's (1-eps) w[y] nll + (eps/C) sum_c w_c (-lsm_c) equals -sum_c w_c y'_c lsm_c per sample.
    rng = np.random.default_rng(0)
    z, y, w = rng.normal(size=(5, 4)), rng.integers(0, 4, size=5), rng.uniform(0.5, 2, size=4)
    lsm = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    by_hand = -(0.9 * w[y] * lsm[np.arange(5), y] + 0.1 / 4 * (w * lsm).sum(axis=1))
    got = refloss.cross_entropy(z, y, weight=w, label_smoothing=0.1, reduction="none")
    np.testing.assert_allclose(got, by_hand, rtol=1e-14)
    assert refloss.cross_entropy(z, y, weight=w, label_smoothing=0.1) == pytest.approx(by_hand.sum() / w[y].sum(), rel=1e-14)


def test_keras_binary_smoothing_on_both_bce_losses():
    x = np.array([-2.0, 0.5, 3.0])
    y = np.array([0.0, 1.0, 1.0])
    smoothed = 0.8 * y + 0.1
    for loss, inp in ((refloss.binary_cross_entropy_with_logits, x), (refloss.binary_cross_entropy, 1 / (1 + np.exp(-x)))):
        v, (gx, gy) = refloss.value_and_grad(loss, inp, y, label_smoothing=0.2, reduction="sum")
        v0, (gx0, gy0) = refloss.value_and_grad(loss, inp, smoothed, reduction="sum")
        assert v == pytest.approx(v0, rel=1e-15)
        np.testing.assert_allclose(gx, gx0, rtol=1e-15)
        np.testing.assert_allclose(gy, 0.8 * gy0, rtol=1e-15)


def test_keras_kl_clips_both_probabilities():
    q = np.array([[0.5, 0.5]])
    p = np.array([[0.0, 1.0]])
    keras = refloss.kl_div(q, p, convention="keras", reduction="sum")
    assert keras == pytest.approx(math.log(2) + 1e-7 * math.log(1e-7 / 0.5), rel=1e-15)
    exact = refloss.kl_div(np.log(q), p, reduction="sum")
    assert exact == pytest.approx(math.log(2), rel=1e-15)
    _, (dq, dp) = refloss.value_and_grad(refloss.kl_div, q, p, convention="keras", reduction="sum")
    np.testing.assert_allclose(dq, [[-1e-7 / 0.5, -2.0]], rtol=1e-15)
    assert dp[0, 0] == 0.0  # p = 0 is clipped: no gradient, as Keras' clip
    assert dp[0, 1] == pytest.approx(math.log(2) + 1, rel=1e-15)
    with pytest.raises(ValueError, match="log_target must be False with convention='keras'"):
        refloss.kl_div(q, p, convention="keras", log_target=True)
