"""Generators of valid inputs, shared by the losses' declarations.

Each generator is ``domain(rng, shape, tag, dims, params) -> numpy.ndarray`` with ``tag`` one of
:data:`TAGS`:

- ``typical``: what training produces; smooth points, away from kinks and clamps (the gradient
  proof runs here);
- ``extreme``: valid but hard: logits of magnitude up to 1e4, probabilities within 1e-12 of 0 or 1;
- ``edge``: the boundary of the domain: probabilities exactly 0 and 1, ties, ignored labels.

Values are float64 (or int64 labels); the tests and the golden files cast them.
"""

from __future__ import annotations

import numpy as np

TAGS = ("typical", "extreme", "edge")


def _signed_magnitudes(rng, shape, low_exp, high_exp):
    return rng.choice([-1.0, 1.0], size=shape) * 10.0 ** rng.uniform(low_exp, high_exp, size=shape)


def logits(rng, shape, tag, dims, params):
    """Unbounded scores: N(0, 3) typically; up to +-1e4 when extreme; ties and zeros at the edge."""
    if tag == "typical":
        return rng.normal(0.0, 3.0, size=shape)
    if tag == "extreme":
        return _signed_magnitudes(rng, shape, 2.0, 4.0)
    out = np.zeros(shape)
    if out.size:
        out.flat[:: max(1, out.size // 3)] = 1e4
    return out


def probabilities(rng, shape, tag, dims, params):
    """Values in [0, 1]: within [0.05, 0.95] typically, 1e-12 from the ends when extreme, exactly 0 or 1 at the edge."""
    if tag == "typical":
        return rng.uniform(0.05, 0.95, size=shape)
    if tag == "extreme":
        tiny = 10.0 ** rng.uniform(-12, -6, size=shape)
        return np.where(rng.random(size=shape) < 0.5, tiny, 1.0 - tiny)
    return rng.integers(0, 2, size=shape).astype(float)


def binary_targets(rng, shape, tag, dims, params):
    """Hard 0/1 labels; soft labels in (0, 1) when typical, since every loss here accepts them."""
    if tag == "typical":
        return np.where(rng.random(size=shape) < 0.3, rng.uniform(0.0, 1.0, size=shape), rng.integers(0, 2, size=shape))
    return rng.integers(0, 2, size=shape).astype(float)


def hard_binary_targets(rng, shape, tag, dims, params):
    """0/1 labels only."""
    return rng.integers(0, 2, size=shape).astype(float)


def signs(rng, shape, tag, dims, params):
    """Targets in {-1, +1}."""
    return rng.choice([-1.0, 1.0], size=shape)


def _class_axis(shape):
    return 1 if len(shape) >= 2 else -1


def _class_rows(rng, shape, scale):
    axis = _class_axis(shape)
    z = rng.normal(0.0, scale, size=shape)
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def log_probabilities(rng, shape, tag, dims, params):
    """Log-probabilities normalised along axis 1: log_softmax of N(0, 2) rows, of 1e3-scale rows when extreme."""
    if tag == "typical":
        return _class_rows(rng, shape, 2.0)
    return _class_rows(rng, shape, 1e3 if tag == "extreme" else 30.0)


def kl_input(rng, shape, tag, dims, params):
    """The input of ``kl_div``: log-probabilities, or probabilities under ``convention='keras'``."""
    if params.get("convention") == "keras":
        return distributions(rng, shape, tag, dims, params)
    return log_probabilities(rng, shape, tag, dims, params)


def distributions(rng, shape, tag, dims, params):
    """Probability vectors along axis 1: softmax of N(0, 1) rows; peaked when extreme; with exact zeros at the edge."""
    if tag == "typical":
        return np.exp(_class_rows(rng, shape, 1.0))
    if tag == "extreme":
        return np.exp(_class_rows(rng, shape, 20.0))
    axis = _class_axis(shape)
    p = np.exp(_class_rows(rng, shape, 1.0))
    p = np.where(rng.random(size=shape) < 0.4, 0.0, p)
    first = np.moveaxis(np.zeros_like(np.moveaxis(p, axis, 0)), 0, axis)
    np.moveaxis(first, axis, 0)[0] = 1.0
    p = np.where(p.sum(axis=axis, keepdims=True) == 0, first, p)
    return p / p.sum(axis=axis, keepdims=True)


def class_indices(rng, shape, tag, dims, params):
    """Labels in [0, C); at the edge about a third of them equal ``ignore_index`` (never all)."""
    labels = rng.integers(0, dims["C"], size=shape)
    ignore = params.get("ignore_index")
    if tag == "edge" and ignore is not None and labels.size > 1:
        drop = rng.random(size=shape) < 0.34
        drop.flat[0] = False
        labels = np.where(drop, ignore, labels)
    return labels.astype(np.int64)


def multilabel_indices(rng, shape, tag, dims, params):
    """PyTorch multilabel_margin targets: each row lists distinct classes, then ``-1`` padding."""
    n, c = shape
    out = np.full(shape, -1, dtype=np.int64)
    for row in range(n):
        k = int(rng.integers(1, c)) if tag == "typical" else int(rng.integers(0, c + 1))
        out[row, :k] = rng.permutation(c)[:k]
    return out


def class_weights(rng, shape, tag, dims, params):
    """Positive per-class (or per-element) weights in [0.2, 3]."""
    return rng.uniform(0.2, 3.0, size=shape)


def values(rng, shape, tag, dims, params):
    """Real-valued predictions and targets: N(0, 2); magnitudes up to 1e8 when extreme; zeros and ties at the edge."""
    if tag == "typical":
        return rng.normal(0.0, 2.0, size=shape)
    if tag == "extreme":
        return _signed_magnitudes(rng, shape, -8.0, 8.0)
    return rng.choice([0.0, 1.0, -1.0], size=shape)


def variances(rng, shape, tag, dims, params):
    """Positive variances in [0.1, 3]; from 1e-12 to 1e12 when extreme; 0 (clamped by eps) at the edge."""
    if tag == "typical":
        return rng.uniform(0.1, 3.0, size=shape)
    if tag == "extreme":
        return 10.0 ** rng.uniform(-12, 12, size=shape)
    return rng.choice([0.0, 1e-6, 1.0], size=shape)


def counts(rng, shape, tag, dims, params):
    """Non-negative counts (Poisson targets): 0..9; up to 1e6 when extreme; 0 and 1 at the edge."""
    if tag == "typical":
        return rng.integers(0, 10, size=shape).astype(float)
    if tag == "extreme":
        return np.floor(10.0 ** rng.uniform(0, 6, size=shape))
    return rng.integers(0, 2, size=shape).astype(float)


def poisson_input(rng, shape, tag, dims, params):
    """A log-rate (``log_input=True``, PyTorch's default) or a rate in [0.1, 5]."""
    if params.get("log_input", True):
        return rng.normal(0.0, 1.0, size=shape) if tag == "typical" else rng.uniform(-30.0, 30.0, size=shape)
    if tag == "typical":
        return rng.uniform(0.1, 5.0, size=shape)
    return 10.0 ** rng.uniform(-12, 6, size=shape) if tag == "extreme" else rng.choice([0.0, 1.0], size=shape)
