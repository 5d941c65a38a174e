"""Inference helpers (refloss.inference): cosine logits, margin logits, probabilities, verification
scores; on every namespace, against plain formulas, and tied to the losses they come from."""

from __future__ import annotations

import math

import numpy as np
import pytest

import refloss
from refloss.xp import to_numpy


def _rows(rng, n, d, scale=1.0):
    return rng.standard_normal((n, d)) * scale * 10.0 ** rng.uniform(-1, 1, size=(n, 1))


def _unit(v):
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_cosine_logits_match_the_definition(xp):
    rng = np.random.default_rng(0)
    x, w = _rows(rng, 5, 7), _rows(rng, 4, 7)
    got = to_numpy(refloss.cosine_logits(xp.asarray(x), xp.asarray(w), scale=30.0))
    np.testing.assert_allclose(got, 30.0 * _unit(x) @ _unit(w).T, rtol=1e-13, atol=1e-13)


def test_verification_scores_and_the_distance_identity(xp):
    """``|a_hat - b_hat| = sqrt(2 - 2 cos)`` for unit vectors: the score orders pairs as the distance does."""
    rng = np.random.default_rng(1)
    a, b = _rows(rng, 50, 16), _rows(rng, 50, 16)
    b[:5] = a[:5] * 3.0  # same direction: cos = 1, distance 0
    b[5:10] = -a[5:10]  # opposite: cos = -1, distance 2
    cos = to_numpy(refloss.verification_scores(xp.asarray(a), xp.asarray(b)))
    dist = np.linalg.norm(_unit(a) - _unit(b), axis=1)
    np.testing.assert_allclose(dist, np.sqrt(np.maximum(2 - 2 * cos, 0)), atol=1e-7)  # sqrt amplifies rounding near 0
    np.testing.assert_allclose(dist**2, 2 - 2 * cos, atol=1e-14)
    np.testing.assert_allclose(cos[:5], 1.0, atol=1e-15)
    np.testing.assert_allclose(cos[5:10], -1.0, atol=1e-15)
    assert np.all(np.argsort(-cos) == np.argsort(dist)) or np.allclose(np.sort(-cos), np.sort(dist**2 / 2 - 1))


def test_verification_scores_survive_extreme_norms():
    a = np.array([[1e-200, 2e-200], [1e200, -1e200]])
    b = np.array([[2e200, 4e200], [3e-250, -3e-250]])
    np.testing.assert_allclose(refloss.verification_scores(a, b), [1.0, 1.0], rtol=1e-15)


@pytest.mark.parametrize("kind", sorted(refloss.inference.MARGIN_KINDS))
def test_margin_logits_are_what_the_loss_sees(kind):
    """``-log softmax(margin_logits)[y]`` is the loss itself, and off-target logits are the cosine logits."""
    rng = np.random.default_rng(2)
    x, w = _rows(rng, 6, 5), _rows(rng, 4, 5)
    y = rng.integers(0, 4, size=6)
    loss = refloss.inference.MARGIN_KINDS[kind]
    z = refloss.margin_logits(kind, x, w, y)
    nll = -refloss.xp.log_softmax(z, axis=1)[np.arange(6), y]
    np.testing.assert_allclose(nll, loss(x, y, w, reduction="none"), rtol=1e-12)
    np.testing.assert_allclose(refloss.class_probabilities(z)[np.arange(6), y], np.exp(-nll), rtol=1e-13)
    scale = loss.defaults().get("scale", loss.defaults().get("alpha"))
    off = np.ones_like(z, dtype=bool)
    off[np.arange(6), y] = False
    np.testing.assert_allclose(z[off], refloss.cosine_logits(x, w, scale=scale)[off], rtol=1e-14)


def test_margin_logits_take_the_losses_parameters():
    rng = np.random.default_rng(3)
    x, w = _rows(rng, 3, 4), _rows(rng, 5, 4)
    y = np.array([0, 2, 4])
    c = refloss.cosine_logits(x, w)[np.arange(3), y]
    z = refloss.margin_logits("cosface", x, w, y, scale=10.0, margin=0.25)
    np.testing.assert_allclose(z[np.arange(3), y], 10.0 * (c - 0.25), rtol=1e-14)
    z = refloss.margin_logits("arcface", x, w, y, scale=2.0, margin=0.3, fallback="none")
    np.testing.assert_allclose(z[np.arange(3), y], 2.0 * np.cos(np.arccos(c) + 0.3), rtol=1e-12)
    with pytest.raises(TypeError, match="no parameter"):
        refloss.margin_logits("cosface", x, w, y, m1=1.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        refloss.margin_logits("softmax", x, w, y)
    with pytest.raises(ValueError, match="labels"):
        refloss.margin_logits("arcface", x, w, np.array([0, 1, 5]))


def test_class_probabilities_sum_to_one_without_overflow(xp):
    z = xp.asarray([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    p = to_numpy(refloss.class_probabilities(z))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(p[1], 1 / 3, rtol=1e-15)
    assert p[0, 0] == 1.0 and p[0, 2] == 0.0


def test_bad_input_is_named():
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"cosine_logits: weights must be rows of length 3"):
        refloss.cosine_logits(x, np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"cosine_logits: features must be a 2-d array"):
        refloss.cosine_logits(np.ones(3), np.ones((4, 3)))
    with pytest.raises(TypeError, match=r"verification_scores: a must be a real floating array"):
        refloss.verification_scores(np.ones((2, 3), dtype=np.int64), x)
    with pytest.raises(ValueError, match=r"verification_scores: b must be 2 rows"):
        refloss.verification_scores(x, np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"verification_scores: b must be rows of nonzero norm"):
        refloss.verification_scores(x, np.array([[1.0, 0, 0], [0, 0, 0]]))
    assert math.isclose(float(refloss.verification_scores(x, np.array([[1.0, 1, 1], [0, 0, 0]]), eps=1e-12)[1]), 0.0)
