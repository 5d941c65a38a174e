"""Generators of valid inputs, shared by the losses' declarations.

Each generator is ``domain(rng, shape, tag, dims, params) -> numpy.ndarray`` with ``tag`` one of
:data:`TAGS`:

- ``typical``: what training produces; smooth points, away from kinks and clamps (the gradient
  proof runs here);
- ``extreme``: valid but hard: logits of magnitude up to 1e4, probabilities within 1e-12 of 0 or 1;
- ``edge``: the boundary of the domain: probabilities exactly 0 and 1, ties, ignored labels.

Values are float64 (or int64 labels); the tests and the golden files cast them.

At the end, the stress axes of ``refloss audit`` (:data:`STRESS_AXES`): sweeps that move a typical
case's inputs, by kind (:data:`STRESS_KINDS`), toward where implementations lose accuracy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

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


# ------------------------------------------------------------------------------------------------
# Embeddings and metric learning.
#
# Each is ``domain(rng, shape, tag, dims, params) -> numpy array``. Typical inputs keep away from
# every kink the losses have (zero distances, hinge corners, ties of a min or of a top-k); extreme
# inputs have rows of norm 1e-100 to 1e100; edge inputs are small-integer lattices, where zero rows,
# duplicated rows across inputs (a == p), ties and hinge corners all occur.


def _rows(rng, shape, norms):
    """Random directions scaled to the given row norms (``norms`` broadcast to ``shape[:-1] + (1,)``)."""
    z = rng.normal(size=shape)
    n = np.linalg.norm(z, axis=-1, keepdims=True)
    return z / np.where(n > 0, n, 1.0) * norms


def _magnitude_rows(rng, shape, low_exp, high_exp):
    return _rows(rng, shape, 10.0 ** rng.uniform(low_exp, high_exp, size=shape[:-1] + (1,)))


def _lattice(rng, shape):
    """Entries in {-1, 0, 1}, the first row zero: zeros, duplicates and ties across inputs."""
    out = rng.integers(-1, 2, size=shape).astype(float)
    if out.ndim and out.shape[0]:
        out[0] = 0.0
    return out


def _jitter(rng, shape, low, high):
    """Entries of magnitude in [low, high] with random signs: never within ``low`` of zero."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(low, high, size=shape)


def embeddings(rng, shape, tag, dims, params):
    """Feature rows: N(0, 1) typically; rows of norm 1e-100 to 1e100 when extreme; a {-1, 0, 1}
    lattice with a zero row at the edge."""
    if tag == "typical":
        return rng.normal(size=shape)
    if tag == "extreme":
        return _magnitude_rows(rng, shape, -100.0, 100.0)
    return _lattice(rng, shape)


def moderate_embeddings(rng, shape, tag, dims, params):
    """As :func:`embeddings`, but extreme inputs are typical ones scaled by one factor 1e-60 to 1e60
    (for losses of degree 4 in the features, such as center-invariant: the value would otherwise
    leave the float64 range, and a gradient that cancels between rows 1e30 apart is only accurate
    to a few ulps of the largest row, not of itself)."""
    if tag == "extreme":
        return rng.normal(size=shape) * 10.0 ** rng.uniform(-60.0, 60.0)
    return embeddings(rng, shape, tag, dims, params)


def pair_first(rng, shape, tag, dims, params):
    """First members of pairs: typical rows have norm in [0.3, 0.5] or in [2.5, 3], so that, against
    :func:`pair_second` (norm <= 0.1), distances lie in [0.2, 0.6] or [2.4, 3.1]: away from zero and
    from the margins the contrastive loss is proven at (1 and 2, as distance or squared distance)."""
    if tag != "typical":
        return embeddings(rng, shape, tag, dims, params)
    near = rng.random(size=shape[:-1] + (1,)) < 0.6
    return _rows(rng, shape, np.where(near, rng.uniform(0.3, 0.5, size=near.shape), rng.uniform(2.5, 3.0, size=near.shape)))


def pair_second(rng, shape, tag, dims, params):
    """Second members of pairs: typical rows of norm at most 0.1 (see :func:`pair_first`)."""
    if tag != "typical":
        return embeddings(rng, shape, tag, dims, params)
    return _rows(rng, shape, rng.uniform(0.0, 0.1, size=shape[:-1] + (1,)))


def triplet_anchors(rng, shape, tag, dims, params):
    """Anchors: typical entries of magnitude 0.02 to 0.03 (near the origin, no zero coordinate)."""
    if tag != "typical":
        return embeddings(rng, shape, tag, dims, params)
    return _jitter(rng, shape, 0.02, 0.03)


def triplet_positives(rng, shape, tag, dims, params):
    """Positives: typical first coordinate in [0.9, 1], the others in [0.04, 0.05]."""
    if tag != "typical":
        return embeddings(rng, shape, tag, dims, params)
    out = rng.uniform(0.04, 0.05, size=shape)
    out[..., 0] = rng.uniform(0.9, 1.0, size=shape[:-1])
    return out


def triplet_negatives(rng, shape, tag, dims, params):
    """Negatives, typical rows from three clusters, so that every triplet is clearly (by 0.07 or
    more) on one side of its hinge and of the swap's min, for p in {1, 2, 3}, margins 1 and 2.5
    (FaceNet: 0.2 and 1), no coordinate of a difference is within 0.01 of zero, and (for p = 1)
    the anchor's gradient ``sign(a - p) - sign(a - n)`` of an active triplet is never 0:

    - near the anchor (first coordinate in [-0.12, -0.1], the others of magnitude 0.1 to 0.12):
      active, ``d(a, n) < d(p, n)``;
    - just past the positive (first coordinate in [1.2, 1.25], the others in [-0.08, -0.06]):
      active for the distance triplet, ``d(p, n) < d(a, n)`` (the swap picks it), inactive for
      FaceNet at alpha 0.2;
    - far (norm 4 to 5): inactive.
    """
    if tag != "typical":
        return embeddings(rng, shape, tag, dims, params)
    near = _jitter(rng, shape, 0.1, 0.12)
    near[..., 0] = -rng.uniform(0.1, 0.12, size=shape[:-1])
    past = -rng.uniform(0.06, 0.08, size=shape)
    past[..., 0] = rng.uniform(1.2, 1.25, size=shape[:-1])
    far = _rows(rng, shape, rng.uniform(4.0, 5.0, size=shape[:-1] + (1,)))
    pick = rng.integers(0, 3, size=shape[:-1])[..., None]
    return np.where(pick == 0, near, np.where(pick == 1, past, far))


def radii(rng, shape, tag, dims, params):
    """A ring radius, shape (1,) whatever ``shape``: in [0.5, 2] typically, 1e-100 to 1e100 when
    extreme, 0 at the edge."""
    if tag == "typical":
        return rng.uniform(0.5, 2.0, size=(1,))
    if tag == "extreme":
        return 10.0 ** rng.uniform(-100.0, 100.0, size=(1,))
    return np.zeros(1)


def batch_labels(rng, shape, tag, dims, params):
    """Integer class ids of any value (classes are told apart by equality): two classes typically;
    ids near 1e12 and negative ids when extreme; one class or all distinct at the edge."""
    if tag == "typical":
        return rng.integers(0, 2, size=shape).astype(np.int64)
    if tag == "extreme":
        return (rng.choice([-7, 10**12], size=shape) + rng.integers(0, 3, size=shape)).astype(np.int64)
    n = int(np.prod(shape))
    if rng.random() < 0.5:
        return np.zeros(shape, dtype=np.int64)
    return np.arange(n, dtype=np.int64).reshape(shape)


def sign_targets(rng, shape, tag, dims, params):
    """Targets in {-1, +1}; at the edge also 0 and 2 (PyTorch gives other values a meaning)."""
    if tag == "edge":
        return rng.choice([-1.0, 0.0, 1.0, 2.0], size=shape)
    return rng.choice([-1.0, 1.0], size=shape)



def ranking_first(rng, shape, tag, dims, params):
    """Scores ``0.5 k + 0.25 + u`` (integer ``k``, ``|u| <= 0.05``): against :func:`ranking_second`,
    ``x1 - x2`` stays 0.15 away from every multiple of 0.5, hence from the hinge at any margin that
    is one. Extreme: magnitudes 1e50 to 1e100; edge: integers in [-1, 1]."""
    if tag == "typical":
        return 0.5 * rng.integers(-4, 5, size=shape) + 0.25 + rng.uniform(-0.05, 0.05, size=shape)
    if tag == "extreme":
        return _signed_magnitudes(rng, shape, 50.0, 100.0)
    return rng.integers(-1, 2, size=shape).astype(float)


def ranking_second(rng, shape, tag, dims, params):
    """Scores ``0.5 k + u`` (see :func:`ranking_first`)."""
    if tag == "typical":
        return 0.5 * rng.integers(-4, 5, size=shape) + rng.uniform(-0.05, 0.05, size=shape)
    return ranking_first(rng, shape, tag, dims, params)


def hinge_inputs(rng, shape, tag, dims, params):
    """Distances for the hinge embedding loss: typically in [-0.5, 3], at least 0.05 from the margin;
    signed magnitudes 1e50 to 1e100 when extreme; exactly the margin and 0 at the edge."""
    margin = params.get("margin", 1.0)
    if tag == "typical":
        x = rng.uniform(-0.5, 3.0, size=shape)
        close = np.abs(x - margin) < 0.05
        return np.where(close, x + np.where(x >= margin, 0.1, -0.1), x)
    if tag == "extreme":
        return _signed_magnitudes(rng, shape, 50.0, 100.0)
    return rng.choice([0.0, float(margin), 2.0 * margin], size=shape)


# ------------------------------------------------------------------------------------------------
# Boxes.
#
# Pred and target are drawn independently, so a pair is made consistent by a layout chosen by the
# row index (both domains see the same shape): each layout fixes the order of every compared pair of
# coordinates with a margin of at least 0.3 after a jitter of +-0.1, so typical boxes sit away from
# every tie and kink (mmdet's IoU > 0.5 gate included).

_BOX_LAYOUTS = [  # (pred, target) in xyxy
    ((0.0, 0.0, 4.0, 5.0), (2.0, 2.5, 7.0, 6.0)),  # partial overlap, IoU ~ 0.15
    ((0.0, 2.0, 8.0, 5.0), (2.0, 0.0, 6.0, 7.0)),  # a cross, IoU ~ 0.3
    ((1.0, 1.0, 9.0, 7.0), (1.6, 0.5, 9.7, 6.4)),  # nearly identical, IoU ~ 0.72
    ((0.0, 0.0, 3.0, 4.0), (4.0, 1.0, 8.0, 6.0)),  # disjoint, IoU = 0
    ((3.0, 3.0, 5.0, 4.5), (0.0, 1.0, 9.0, 8.0)),  # pred inside target, IoU ~ 0.05
]

#: The labelled tie and degenerate pairs of the ``edge`` tag (xyxy), with what each exercises.
BOX_EDGE_CASES = {
    "touching": ((0.0, 0.0, 2.0, 2.0), (2.0, 0.0, 4.0, 3.0)),  # iw == 0: strict mask vs clamp
    "identical": ((1.0, 1.0, 3.0, 4.0), (1.0, 1.0, 3.0, 4.0)),  # every max/min tied
    "zero_width": ((1.0, 1.0, 1.0, 3.0), (0.0, 0.0, 2.0, 2.0)),  # A = 0, inside the target
    "point": ((0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)),  # vision#7746: U = C = 0
    "shared_edges": ((0.0, 0.0, 2.0, 3.0), (0.0, 1.0, 3.0, 3.0)),  # x1 == X1, y2 == Y2
    "zero_height": ((0.0, 1.0, 2.0, 1.0), (0.0, 0.0, 2.0, 2.0)),  # h = 0 < w: atan(w / 0)
}


def _box_edge_names(kind, params):
    conv, mode = params.get("convention"), params.get("mode", "linear")
    names = list(BOX_EDGE_CASES)
    if conv == "paper" or (kind == "ciou" and conv in ("torchvision", "detectron2")):
        names.remove("point")
    if kind == "iou" and conv == "paper" and mode == "log":
        names = ["identical", "shared_edges"]
    return names


def _boxes_from_xyxy(b, fmt):
    from .losses.box import convert_boxes  # imported here: the box module imports this one

    return np.asarray(convert_boxes(b, "xyxy", fmt))


def boxes(kind, role):
    side = 0 if role == "pred" else 1

    def domain(rng, shape, tag, dims, params):
        n = shape[0]
        if tag == "edge":
            names = _box_edge_names(kind, params)
            out = np.array([BOX_EDGE_CASES[names[i % len(names)]][side] for i in range(n)], dtype=float).reshape(n, 4)
        else:
            layouts = [0, 1, 2, 4] if (kind == "iou" and params.get("convention") == "paper" and params.get("mode") == "log") else range(len(_BOX_LAYOUTS))
            layouts = list(layouts)
            out = np.array([_BOX_LAYOUTS[layouts[i % len(layouts)]][side] for i in range(n)], dtype=float).reshape(n, 4)
            if tag == "typical":
                out = out + 10.0 * np.arange(n)[:, None] + rng.uniform(-0.1, 0.1, size=(n, 4))
            else:  # huge and tiny scales, large offsets: 1e-3 .. 1e5 sized boxes at up to 1e7
                scale = np.array([10.0 ** ((3 * i) % 9 - 3) for i in range(n)])[:, None]
                offset = np.array([1e7 * (i % 2) for i in range(n)])[:, None]
                out = out * scale + offset
        return _boxes_from_xyxy(out, params.get("box_format", "xyxy"))

    return domain


# ------------------------------------------------------------------------------------------------
# Segmentation.


def _probability_like(rng, shape, tag):
    if tag == "typical":
        return rng.uniform(0.05, 0.95, size=shape)
    if tag == "extreme":
        tiny = 10.0 ** rng.uniform(-12, -6, size=shape)
        return np.where(rng.random(size=shape) < 0.5, tiny, 1.0 - tiny)
    out = rng.integers(0, 2, size=shape).astype(float)
    if out.size:
        out.flat[:: max(1, out.size // 3)] = 0.5  # ties
    return out


def seg_scores(rng, shape, tag, dims, params):
    """Scores ``(N, C, *)``: logits (``domains.logits``: N(0, 3), +-1e2..1e4 when extreme, zeros and 1e4
    at the edge) or, under ``activation='none'``, probabilities (0.05..0.95, 1e-12 from the ends,
    exactly 0/1 and 0.5 ties)."""
    if params.get("activation") == "none":
        return _probability_like(rng, shape, tag)
    return logits(rng, shape, tag, dims, params)


def seg_targets(rng, shape, tag, dims, params):
    """Targets ``(N, C, *)``: soft label rows (every mask non-empty) or one-hot rows when typical;
    one-hot when extreme; at the edge multi-label 0/1 with an empty sample (all classes 0) and an
    all-foreground class."""
    n, c = shape[0], shape[1]
    labels = rng.integers(0, c, size=(n,) + tuple(shape[2:]))
    hot = np.moveaxis(np.eye(c)[labels], -1, 1) if len(shape) >= 2 else np.zeros(shape)
    if tag == "typical":
        if rng.random() < 0.5:
            z = rng.normal(0.0, 1.0, size=shape)
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return hot
    if tag == "extreme":
        return hot
    out = rng.integers(0, 2, size=shape).astype(float)
    if n:
        out[0] = 0.0  # an empty sample
        out[:, c - 1] = 1.0  # an all-foreground class
    return out


def _min_gap(values):
    v = np.sort(values.ravel())
    return np.min(np.diff(v)) if v.size > 1 else 1.0


def lovasz_scores(rng, shape, tag, dims, params):
    """Lovasz-softmax scores ``(N, C, *)``. Typical: probabilities whose errors ``p`` and ``1 - p``
    are at least 1e-3 apart within every class over the whole batch (the sort order cannot change
    inside a finite-difference stencil); logits are their logs. Extreme and edge as :func:`seg_scores`."""
    if tag != "typical":
        return seg_scores(rng, shape, tag, dims, params)
    c = shape[1]
    for _ in range(2000):
        z = rng.normal(0.0, 1.5, size=shape)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        pool = np.moveaxis(p, 1, 0).reshape(c, -1)
        if all(_min_gap(np.concatenate([row, 1.0 - row])) > 1e-3 for row in pool) and p.min() > 1e-3:
            break
    return p if params.get("activation") == "none" else np.log(p)


def lovasz_targets(rng, shape, tag, dims, params):
    """Hard one-hot targets ``(N, C, *)`` (Lovasz needs set-valued ground truth); at the edge one
    class is absent from the whole batch when there are at least 2 classes."""
    n, c = shape[0], shape[1]
    high = c - 1 if (tag == "edge" and c > 1) else c
    labels = rng.integers(0, high, size=(n,) + tuple(shape[2:]))
    return np.moveaxis(np.eye(c)[labels], -1, 1)


def hinge_scores(rng, shape, tag, dims, params):
    """Lovasz-hinge logits ``(N, *)``. Typical: distinct magnitudes 0.2 apart (offset 0.13) with
    random signs, so the errors ``1 -+ x`` never tie and stay 0.07 away from the hinge at 0
    whatever the labels. Extreme: +-1e2..1e4. Edge: zeros (every error ties at 1) and 1e4."""
    if tag == "typical":
        size = int(np.prod(shape))
        mags = 0.13 + 0.2 * rng.permutation(size) + rng.uniform(0.0, 0.01, size=size)
        return (rng.choice([-1.0, 1.0], size=size) * mags).reshape(shape)
    return logits(rng, shape, tag, dims, params)


def hinge_targets(rng, shape, tag, dims, params):
    """0/1 labels ``(N, *)``; at the edge the first sample is empty and the last all foreground."""
    out = rng.integers(0, 2, size=shape).astype(float)
    if tag == "edge" and len(shape) and shape[0]:
        out[0] = 0.0
        out[-1] = 1.0
    return out


# ------------------------------------------------------------------------------------------------
# Margin (face-recognition) losses.
#
# Both generators build on one fixed, non-symmetric orthogonal frame U (C x C, seeded by C): weights
# are W_j = r_j U_j and features x_i = |x_i| (a_i U) with a_i a unit vector, so cos(x_i, W_j) = a_ij
# exactly and the feature generator controls every cosine without seeing the weights. Features
# therefore have D = C (a property of this construction only; the contract and tests allow any D);
# tests/test_margin.py proves the gradients with D != C and random, unstructured weights as well.


def _frame(c):
    q, r = np.linalg.qr(np.random.default_rng(7919 + c).standard_normal((c, c)))
    return q * np.sign(np.diag(r))


def _kinks(params):
    """Cosines where the target transform of ``params`` is not smooth (besides |c| = 1)."""
    if isinstance(params.get("m"), int):  # L-Softmax / SphereFace k-boundaries theta = j pi / m (C^1 there)
        return [math.cos(j * math.pi / params["m"]) for j in range(1, params["m"])]
    if params.get("easy_margin"):
        return [0.0]
    if params.get("fallback") == "insightface":
        return [math.cos(math.pi - params["margin"])]
    return []


def _th(params):
    m = params.get("margin", params.get("m2", 0.5))
    return math.cos(math.pi - m) if m else -0.9


def _unit_row(rng, c, lead, k):
    """A unit vector with component ``lead`` at position ``k`` (the rest random)."""
    rest = rng.standard_normal(c)
    rest[k] = 0.0
    n = np.linalg.norm(rest)
    rest = rest / n if n > 0 else np.eye(c)[(k + 1) % c]
    a = rest * math.sqrt(max(0.0, 1.0 - lead * lead))
    a[k] = lead
    return a


def margin_features(rng, shape, tag, dims, params):
    """Features (N, C) whose cosines to :func:`margin_weights` are controlled: typically every |c| in
    [0.05, 0.9] and 0.05 away from the transform's kinks (easy-margin 0, insightface threshold
    cos(pi - m)); extreme: |c| within 1e-9..1e-4 of 1, c within 1e-9 of the threshold, norms 1e-100..1e100;
    edge: rows parallel or antiparallel to a class (|c| = 1 to rounding), and a zero row when ``eps`` is set."""
    n, c = shape[0], dims["C"]
    frame = _frame(c)
    kinks = _kinks(params)
    rows = []
    for i in range(n):
        if tag == "typical":
            while True:
                a = rng.standard_normal(c)
                a /= np.linalg.norm(a)
                ok = np.all((np.abs(a) >= 0.05) & (np.abs(a) <= 0.9))
                if ok and all(np.all(np.abs(a - t) >= 0.05) for t in kinks):
                    break
            norm = 10.0 ** rng.uniform(1.0, 2.0)  # face-embedding norms; keeps s / |x| moderate
        elif tag == "extreme":
            k = int(rng.integers(c))
            kind = int(rng.integers(3))
            delta = 10.0 ** rng.uniform(-9, -4)
            lead = (1.0 - delta) * rng.choice([-1.0, 1.0]) if kind < 2 else _th(params) + rng.choice([-1.0, 1.0]) * delta
            a = _unit_row(rng, c, lead, k)
            norm = 10.0 ** rng.uniform(-100, 100)
        else:
            k = int(rng.integers(c))
            a = np.zeros(c)
            a[k] = rng.choice([-1.0, 1.0])
            norm = 1.0
        rows.append(norm * (a @ frame))
    out = np.array(rows).reshape(n, c)
    if tag == "edge" and params.get("eps") is not None and n:
        out[0] = 0.0
    return out


def margin_weights(rng, shape, tag, dims, params):
    """Class weights (C, C): rows of the fixed frame scaled by 10^U(0.5, 1.5) (typical), 10^U(-100, 100)
    (extreme) or 1 (edge)."""
    c = dims["C"]
    if tag == "typical":
        r = 10.0 ** rng.uniform(0.5, 1.5, size=c)
    elif tag == "extreme":
        r = 10.0 ** rng.uniform(-100, 100, size=c)
    else:
        r = np.ones(c)
    return r[:, None] * _frame(c)


def small_weights(rng, shape, tag, dims, params):
    """Raw classifier weights for :func:`l2_softmax_loss`: the frame scaled by 10^U(-1.5, -0.5) typically
    (so that alpha |W_j| stays O(1-10) at alpha = 50), otherwise as :func:`margin_weights`."""
    out = margin_weights(rng, shape, tag, dims, params)
    return out * 0.01 if tag == "typical" else out


def angular_features(rng, shape, tag, dims, params):
    """Features for L-Softmax / SphereFace, whose logits scale with |x|: :func:`margin_features` / 10 when typical."""
    out = margin_features(rng, shape, tag, dims, params)
    return out * 0.1 if tag == "typical" else out


def margin_labels(rng, shape, tag, dims, params):
    return rng.integers(0, dims["C"], size=shape).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# Margin family: RBF-softmax and L-GM features and class centres.
#
# Generators ``(rng, shape, tag, dims, params) -> numpy array`` for the features (N, D) and class
# centres (C, D) of rbf_softmax_loss and lgm_loss. Both losses see squared distances in units of a
# width w: RBF ``K = exp(-|W - x|^2 / w^2)`` with ``w = sqrt(gamma)``, L-GM ``d = |x - mu|^2 / w^2`` with
# ``w = sqrt(2)``. The two inputs are drawn independently (a generator never sees the other one), so
# what they share (a common offset, the centres that extreme and edge features coincide with) is a
# deterministic function of the dimensions and parameters.


def _centre_width(kind, params):
    return math.sqrt(params["gamma"]) if kind == "rbf" else math.sqrt(2.0)


def _centre_reach(kind, params):
    """Largest ``|W_j - x_i|^2 / w^2`` of typical inputs: for RBF the logits ``s K`` then spread over at
    most ``min(s, 8)`` (``K`` in ``[1 - 8/s, 1]``, 0.1 at most); for L-GM ``d`` in ``[0, 6]`` (logits down to
    ``-6 (1 + alpha)``)."""
    if kind == "rbf":
        return -math.log(1.0 - min(8.0 / params["scale"], 0.9))
    return 6.0


def _centre_pattern(c, d):
    """Fixed centre positions (C, D) in widths (seeded by C and D): random directions, norms 0.3..1.2."""
    g = np.random.default_rng(104729 + 97 * c + d)
    return _rows(g, (c, d), g.uniform(0.3, 1.2, size=(c, 1)))


def _centre_lattice(c, d):
    """Fixed small-integer centres (C, D) in {-1, 0, 1} (seeded by C and D): duplicates and ties occur."""
    return np.random.default_rng(7727 + 97 * c + d).integers(-1, 2, size=(c, d)).astype(float)


def _centre_domain(kind, role):
    huge = (300.0, 307.5) if kind == "rbf" else (20.0, 100.0)  # L-GM's value is |x|^2 / 2: keep it finite

    def domain(rng, shape, tag, dims, params):
        n, d = shape
        c = dims["C"]
        w = _centre_width(kind, params)
        if tag == "typical":
            offset = 3.0 * w * np.ones(d) / math.sqrt(d)  # a common translation: coordinates are not centred
            radius = w * math.sqrt(_centre_reach(kind, params)) / 2  # both within radius of it
            return offset + _rows(rng, shape, radius * rng.uniform(0.2, 1.0, size=(n, 1)))
        if tag == "extreme":
            offset = 2.0**20 * w * np.ones(d) / math.sqrt(d)
            pattern = _centre_pattern(c, d)
            normal = c - 1 if kind == "rbf" and c >= 3 else c  # RBF: the last centre is huge
            if role == "centres":
                out = offset + w * pattern
                if normal < c:
                    out[-1] = _rows(rng, (d,), 10.0 ** rng.uniform(*huge))
                return out
            rows = []
            for _ in range(n):
                k = int(rng.integers(normal))
                kind_ = int(rng.integers(4))
                if kind_ == 0:  # coincident with centre k (the same operations: the same bits)
                    rows.append(offset + w * pattern[k])
                elif kind_ == 1:  # 1e-6 widths from centre k, 2^20 widths from the origin
                    rows.append(offset + w * (pattern[k] + 1e-6 * _rows(rng, (d,), 1.0)))
                elif kind_ == 2:  # 40 widths from every centre: RBF's K underflows to 0
                    rows.append(offset + w * _rows(rng, (d,), 40.0))
                else:  # a huge norm
                    rows.append(_rows(rng, (d,), 10.0 ** rng.uniform(*huge)))
            return np.array(rows).reshape(n, d)
        step = 2.0 ** math.floor(math.log2(w))  # lattice spacing about one width, a power of two: exact
        lattice = _centre_lattice(c, d)
        if role == "centres":
            return step * lattice
        out = rng.integers(-1, 2, size=(n, d)).astype(float)
        pick = rng.random(n) < 0.5  # half the rows coincide with a centre
        out[pick] = lattice[rng.integers(c, size=int(pick.sum()))]
        if n:
            out[0] = 0.0
        return step * out

    domain.__name__ = f"{kind}_{role}"
    domain.__doc__ = (
        f"{'Features' if role == 'features' else 'Class centres'} for the {kind.upper()} loss: typical within "
        "half the typical reach of a common offset 3 w; extreme: centres at a fixed pattern 2^20 widths from "
        "the origin (and, for RBF, one centre of norm 1e300), features coincident with, 1e-6 widths from, or "
        "40 widths from the centres, or of a huge norm; edge: a small-integer lattice (zero rows, coincidences)."
    )
    return domain


rbf_features = _centre_domain("rbf", "features")
rbf_centres = _centre_domain("rbf", "centres")
lgm_features = _centre_domain("lgm", "features")
lgm_means = _centre_domain("lgm", "centres")


# ------------------------------------------------------------------------------------------------
# Margin family beyond the seeds: Sub-center ArcFace, AdaCos, CurricularFace, MagFace, AdaFace.
#
# As refloss.domains.margin_features: weights are rows of a fixed orthogonal frame U (seeded by its size)
# and features |x| (a U) with a unit vector a, so cos(x, W_j) = a_j exactly. Typical rows are drawn
# until every cosine a kink could involve is 0.05 away from it, whatever the label (the features are
# drawn before the labels); extreme rows sit within 1e-9..1e-4 of |c| = 1 or of a threshold with norms
# 1e-100..1e100 (or at the norm bounds that matter); edge rows are parallel to a weight row, with the
# norm bounds hit exactly, and a zero row when eps is set.

_AWAY = 0.05


def _unit(rng, dim):
    a = rng.standard_normal(dim)
    return a / np.linalg.norm(a)


def _ctm(c, m):
    """cos(acos(c) + m) for the domains (plain NumPy)."""
    return c * math.cos(m) - math.sqrt(max(0.0, 1 - c * c)) * math.sin(m)


def _arc_kinks(params, m):
    if params.get("easy_margin"):
        return [0.0]
    if params.get("fallback", "insightface") == "insightface":
        return [math.cos(math.pi - m)]
    return []


def _far(values, kinks):
    return all(abs(v - k) >= _AWAY for v in values for k in kinks)


def _cosine_rows(rng, n, dim, tag, params, *, accept, norm, leads, edge_norms=(1.0,), bounded=True):
    """``(a, norms)``: n unit rows of cosines and their norms (see the section comment).

    ``accept(a, norm)`` screens typical rows (``a`` with every ``|a_j|`` in [0.05, 0.9] already, unless
    not ``bounded``);
    ``norm(rng)`` draws a typical norm; ``leads(rng)`` lists cosines an extreme row may take.
    """
    rows, norms = [], []
    for _ in range(n):
        if tag == "typical":
            for _ in range(100000):
                r = norm(rng)
                a = _unit(rng, dim)
                if (not bounded or np.all((np.abs(a) >= _AWAY) & (np.abs(a) <= 0.9))) and accept(a, r):
                    break
            else:  # pragma: no cover - the acceptance rates are far above 1e-5
                raise RuntimeError("domain: no typical row found")
        elif tag == "extreme":
            lead = rng.choice(leads(rng))
            a = _unit_row(rng, dim, float(lead), int(rng.integers(dim)))
            r = 10.0 ** rng.uniform(-100, 100) if rng.random() < 0.7 else norm(rng)
        else:
            a = np.zeros(dim)
            a[int(rng.integers(dim))] = rng.choice([-1.0, 1.0])
            r = float(rng.choice(edge_norms))
        rows.append(a)
        norms.append(r)
    return np.array(rows).reshape(n, dim), np.array(norms)


def _features(frame, a, norms, tag, params, zero_row=True):
    out = norms[:, None] * (a @ frame)
    if zero_row and tag == "edge" and params.get("eps") is not None and out.shape[0]:
        out[0] = 0.0
    return out


def _near_one(rng):
    delta = 10.0 ** rng.uniform(-9, -4)
    return [1.0 - delta, -(1.0 - delta)]


def _face_norm(rng):
    return 10.0 ** rng.uniform(1.0, 2.0)


def subcenter_features(rng, shape, tag, dims, params):
    """Features (N, C K) for :func:`subcenter_weights`: cos(x, W_jk) is a_{jK+k}. Typically each class's
    largest sub-centre cosine is in [-0.9, 0.9], 0.05 above the second (the max's kink) and 0.05 away
    from the ArcFace kinks (0 with easy_margin, cos(pi - m) with the insightface fallback). Edge rows are
    parallel to a sub-centre; never zero (see below)."""
    c, k = dims["C"], dims["K"]
    kinks = _arc_kinks(params, params.get("margin", 0.5))

    def accept(a, r):
        top = np.sort(a.reshape(c, k), axis=1)
        gaps = top[:, -1] - top[:, -2] if k > 1 else np.ones(c)
        return np.all(np.abs(top[:, -1]) <= 0.9) and np.all(gaps >= _AWAY) and _far(top[:, -1], kinks)

    def leads(rng):
        return _near_one(rng) + [x + s * 10.0 ** rng.uniform(-9, -4) for x in kinks for s in (-1, 1)]

    a, norms = _cosine_rows(rng, shape[0], c * k, tag, params, accept=accept, norm=_face_norm, leads=leads, bounded=False)
    # no zero row: there every sub-centre of every class ties, and a max over ties in the target and in the
    # other classes (entering the loss with opposite signs) has no gradient, nor one bounded by the one-sided
    # derivatives (the golden policy at a kink)
    return _features(_frame(c * k), a, norms, tag, params, zero_row=False)


def subcenter_weights(rng, shape, tag, dims, params):
    """Sub-centre weights (C, K, C K): rows of the frame of size C K scaled by 10^U(0.5, 1.5) (typical),
    10^U(-100, 100) (extreme) or 1 (edge)."""
    c, k = dims["C"], dims["K"]
    ck = c * k
    if tag == "typical":
        r = 10.0 ** rng.uniform(0.5, 1.5, size=ck)
    elif tag == "extreme":
        r = 10.0 ** rng.uniform(-100, 100, size=ck)
    else:
        r = np.ones(ck)
    return (r[:, None] * _frame(ck)).reshape(c, k, ck)


def _adacos_classes(dims, params):
    # scale=None with C = 2 is s = sqrt(2) log 1 = 0: a constant loss, whose zero gradient a relative
    # central-difference check cannot confirm. The AdaCos domains draw at least 3 classes then (the
    # labels stay in [0, C)); tests/test_margin_adaptive.py checks C = 2 directly.
    return max(dims["C"], 3) if params.get("scale") is None else dims["C"]


def adacos_features(rng, shape, tag, dims, params):
    """Features (N, C) for :func:`adacos_weights`: typically every |c| in [0.05, 0.9] (no kink besides
    |c| = 1: no fallback). At least 3 classes under scale=None."""
    c = _adacos_classes(dims, params)
    a, norms = _cosine_rows(rng, shape[0], c, tag, params, accept=lambda a, r: True, norm=_face_norm, leads=_near_one)
    return _features(_frame(c), a, norms, tag, params)


def adacos_weights(rng, shape, tag, dims, params):
    """refloss.domains.margin_weights, with at least 3 classes under scale=None (see adacos_features)."""
    return margin_weights(rng, shape, tag, {**dims, "C": _adacos_classes(dims, params)}, params)


def curricular_features(rng, shape, tag, dims, params):
    """Features (N, C) for refloss.domains.margin_weights. Typically, whichever class is the target, its
    cosine is 0.05 away from the fallback threshold cos(pi - m) and every other cosine 0.05 away from the
    hard-negative threshold cos(theta_y + m) (the logit jumps there)."""
    c = dims["C"]
    m = params.get("margin", 0.5)
    th = math.cos(math.pi - m)

    def accept(a, r):
        return _far(a, [th]) and all(_far(np.delete(a, j), [_ctm(a[j], m)]) for j in range(c))

    def leads(rng):
        delta = 10.0 ** rng.uniform(-9, -4)
        return _near_one(rng) + [th - delta, th + delta, _ctm(0.3, m) + delta]

    a, norms = _cosine_rows(rng, shape[0], c, tag, params, accept=accept, norm=_face_norm, leads=leads)
    return _features(_frame(c), a, norms, tag, params)


def _magface_margin(params, r):
    l_a, u_a = params.get("l_a", 10.0), params.get("u_a", 110.0)
    l_m, u_m = params.get("l_margin", 0.45), params.get("u_margin", 0.8)
    a = min(max(r, l_a), u_a)
    return (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m


def magface_features(rng, shape, tag, dims, params):
    """Features (N, C) for refloss.domains.margin_weights with MagFace norms: typically 80% inside
    [l_a, u_a] (5% of the range away from either bound), 20% outside (0.5 l_a..0.95 l_a or 1.05 u_a..1.5 u_a),
    every cosine 0.05 from the easy-margin 0 or from cos(pi - m(a)) and no softmax saturated (see
    accept); extreme rows also take norms
    within 1e-9 relative of the bounds; edge rows have norm l_a or u_a exactly."""
    c = dims["C"]
    l_a, u_a = params.get("l_a", 10.0), params.get("u_a", 110.0)
    width = u_a - l_a

    def norm(rng):
        u = rng.random()
        if u < 0.8:
            return rng.uniform(l_a + 0.05 * width, u_a - 0.05 * width)
        return rng.uniform(0.5 * l_a, 0.95 * l_a) if u < 0.9 else rng.uniform(1.05 * u_a, 1.5 * u_a)

    def extreme_norm(rng):
        if rng.random() < 0.5:
            return norm(rng)
        return float(rng.choice([l_a, u_a])) * (1 + rng.choice([-1, 1]) * 10.0 ** rng.uniform(-9, -4))

    def accept(a, r):
        m = _magface_margin(params, r)
        easy = params.get("easy_margin", True)
        th = math.cos(math.pi - m)
        if not _far(a, [0.0] if easy else [th]):
            return False
        # The regulariser lambda_g g(a) keeps the value O(1) while a saturated softmax makes the CE's
        # gradient tiny: its central difference then drowns in the rounding of the sum. Whichever class
        # is the target, its logit is at most 6 above the others' largest (p_other >= e^-6 / C).
        for j in range(c):
            keep = a[j] > 0 if easy else a[j] > th
            psi = _ctm(a[j], m) if keep else (a[j] if easy else a[j] - math.sin(math.pi - m) * m)
            if params.get("scale", 64.0) * (psi - np.max(np.delete(a, j))) > 6.0:
                return False
        return True

    def leads(rng):
        delta = 10.0 ** rng.uniform(-9, -4)
        th = math.cos(math.pi - _magface_margin(params, l_a))
        return _near_one(rng) + [delta, -delta, th + delta, th - delta]

    a, norms = _cosine_rows(rng, shape[0], c, tag, params, accept=accept, norm=extreme_norm if tag == "extreme" else norm, leads=leads, edge_norms=(l_a, u_a))
    return _features(_frame(c), a, norms, tag, params)


def _adaface_thresholds(params, r):
    """The cosines where AdaFace's target angle clip switches, for a row of norm ``r``."""
    m, h = params.get("margin", 0.4), params.get("h", 0.333)
    mean, std = params.get("norm_mean", 20.0), params.get("norm_std", 100.0)
    n = min(max(r, 1e-3), 100.0)
    mu = m * min(1.0, max(-1.0, h * (n - mean) / (std + 1e-3)))
    out = []
    for angle in (mu + 1e-3, math.pi - 1e-3 + mu):
        if 0 < angle < math.pi:
            out.append(math.cos(angle))
    return out


def adaface_features(rng, shape, tag, dims, params):
    """Features (N, C) for refloss.domains.margin_weights with norms in [1, 150] (some beyond the clip at
    100) typically, every cosine 0.05 away from the row's angle-clip thresholds (and |c| <= 0.9, inside
    the clamp); extreme rows sit at the cosine clamp +-(1 - 1e-3) to within 1e-9..1e-4 or at |c| -> 1;
    edge rows have norm 0.001 or 100 (the clip bounds)."""
    c = dims["C"]

    def leads(rng):
        delta = 10.0 ** rng.uniform(-9, -4)
        lim = 1 - 1e-3
        return _near_one(rng) + [lim + delta, lim - delta, -lim + delta, -lim - delta]

    a, norms = _cosine_rows(
        rng, shape[0], c, tag, params,
        accept=lambda a, r: _far(a, _adaface_thresholds(params, r)),
        norm=lambda rng: rng.uniform(1.0, 150.0), leads=leads, edge_norms=(1e-3, 100.0),
    )
    return _features(_frame(c), a, norms, tag, params)


# ------------------------------------------------------------------------------------------------
# Stress axes: the sweeps of ``refloss audit`` (refloss.audit).
#
# A stress axis moves one *kind* of input (logits, probabilities, a pair of boxes, ...) away from a
# typical case through named levels, mild to severe. What an input holds is read from its domain
# (:data:`STRESS_KINDS`, keyed by the generator's name; some depend on the parameters: ``seg_scores``
# are probabilities under ``activation='none'``). An axis moves every input of its kind together (a
# regression's input and target scale together) and may rebuild partners it needs: the target a
# margin points to, the class weights a cosine is measured against. Nothing here changes the
# generators above: the audit draws its base case with them (``refloss.cases.sample(..., 'typical')``).
#
# The audit rounds every point to 8 significant bits (bfloat16) so that one oracle evaluation serves
# every dtype; the geometric constructions below therefore use powers of two (box sizes, feature
# norms, the perpendicular part of a feature) so that the level survives the rounding, and a level
# that the 8-bit grid cannot reach is reported as missing (``apply`` returns ``None``).


def _probability_kind(params):
    return "probabilities" if params.get("activation") == "none" else "logits"


#: What an input drawn from each domain holds, by the generator's name (:func:`domain_name`); a
#: callable maps the loss's parameters to the kind. Domains not listed have no stress axis.
STRESS_KINDS = {
    "logits": "logits",
    "hinge_scores": "logits",
    "seg_scores": _probability_kind,
    "lovasz_scores": _probability_kind,
    "probabilities": "probabilities",
    "distributions": "distributions",
    "kl_input": lambda params: "distributions" if params.get("convention") == "keras" else "log_probabilities",
    "log_probabilities": "log_probabilities",
    "values": "values",
    "ranking_first": "values",
    "ranking_second": "values",
    "hinge_inputs": "values",
    "variances": "variances",
    "counts": "counts",
    "poisson_input": lambda params: "log_rates" if params.get("log_input", True) else "rates",
    "embeddings": "embeddings",
    "moderate_embeddings": "embeddings",
    "pair_first": "embeddings",
    "pair_second": "embeddings",
    "triplet_anchors": "embeddings",
    "triplet_positives": "embeddings",
    "triplet_negatives": "embeddings",
    "radii": "radius",
    "margin_features": "cosine_features",
    "angular_features": "cosine_features",
    "subcenter_features": "cosine_features",
    "adacos_features": "cosine_features",
    "curricular_features": "cosine_features",
    "magface_features": "cosine_features",
    "adaface_features": "cosine_features",
    "margin_weights": "classifier_weights",
    "small_weights": "classifier_weights",
    "subcenter_weights": "classifier_weights",
    "adacos_weights": "classifier_weights",
    "rbf_features": "centre_features",
    "lgm_features": "centre_features",
    "rbf_centres": "centres",
    "lgm_centres": "centres",
    "boxes": "boxes",
    "seg_targets": "masks",
    "lovasz_targets": "masks",
    "hinge_targets": "binary_masks",
    "class_indices": "labels",
    "margin_labels": "labels",
    "binary_targets": "binary",
    "hard_binary_targets": "binary",
    "signs": "signs",
    "sign_targets": "signs",
    "multilabel_indices": "label_lists",
}


def domain_name(domain) -> str:
    """The name :data:`STRESS_KINDS` knows a generator by: its ``__name__``, or for the box closures
    (``boxes(kind, role)``) the factory's name."""
    name = getattr(domain, "__name__", "")
    return domain.__qualname__.partition(".")[0] if name == "domain" else name


def stress_kinds(loss, params) -> dict:
    """``{input name: kind or None}`` for ``loss`` under ``params``."""
    out = {}
    for spec in loss.inputs:
        kind = STRESS_KINDS.get(domain_name(spec.domain)) if spec.domain is not None else None
        out[spec.name] = kind(params) if callable(kind) else kind
    return out


@dataclasses.dataclass(frozen=True)
class StressAxis:
    """A named sweep of the inputs of kind ``kind``, through ``levels`` (``(label, value)``, mild to
    severe). ``apply(inputs, kinds, params, value)`` takes the base case's inputs (a dict by name,
    NumPy), their kinds and the parameters, and returns the inputs at that level (a new dict), or
    ``None`` where the level does not exist for this case. ``needs`` lists groups of kinds of which
    the loss must have one input each (a margin needs a target to point to)."""

    name: str
    kind: str
    levels: tuple
    apply: Callable
    doc: str
    needs: tuple = ()


def _names(kinds, *wanted):
    return [n for n, k in kinds.items() if k in wanted]


def _top(inputs, names):
    finite = [np.abs(np.asarray(inputs[n], dtype=float)) for n in names]
    return max((float(np.max(a)) for a in finite if a.size), default=0.0)


def _signed_inf(x):
    """``+-inf`` with the sign of each entry (0 stays 0)."""
    return np.where(x > 0, math.inf, np.where(x < 0, -math.inf, 0.0))


def _scale_to(*kinds):
    """Every input of ``kinds`` scaled together so that the largest magnitude is the level (signs and
    ratios kept); at ``inf`` each nonzero entry becomes an infinity of its sign."""

    def apply(inputs, k, params, level):
        names = _names(k, *kinds)
        top = _top(inputs, names)
        if top == 0:
            return None
        out = dict(inputs)
        for n in names:
            x = np.asarray(inputs[n], dtype=float)
            out[n] = _signed_inf(x) if math.isinf(level) else x * (level / top)
        return out

    return apply


def _toward_zero(kind):
    """Inputs of ``kind`` scaled so that the largest is the level (all of them toward 0, ratios kept)."""

    def apply(inputs, k, params, level):
        names = _names(k, kind)
        top = _top(inputs, names)
        if top == 0:
            return None
        return {**inputs, **{n: np.asarray(inputs[n], dtype=float) * (level / top) for n in names}}

    return apply


def _toward_one(inputs, k, params, level):
    """Probabilities moved toward 1: ``1 - (1 - p) level / max(1 - p)``."""
    names = _names(k, "probabilities")
    gaps = {n: 1.0 - np.asarray(inputs[n], dtype=float) for n in names}
    top = max(float(np.max(g)) for g in gaps.values() if g.size)
    if top <= 0:
        return None
    return {**inputs, **{n: 1.0 - g * (level / top) for n, g in gaps.items()}}


#: Kinds of target a score can be pushed toward (see :func:`_direction`).
_TARGETS = ("labels", "binary", "signs", "label_lists", "masks", "binary_masks")


def _direction(inputs, kinds, params, shape):
    """``(d, changed)``: ``d`` is +1 where the loss's target wants a score of ``shape`` high, -1 where
    low (0 where it says nothing), and ``changed`` the target inputs made hard for that to hold (soft
    binary targets rounded to 0/1). ``None`` when the loss has no such target."""
    for name, kind in kinds.items():
        if kind not in _TARGETS:
            continue
        t = np.asarray(inputs[name])
        if kind == "labels":
            if len(shape) < 2:
                return None
            axis = params.get("axis", 1) % len(shape)
            classes = np.arange(shape[axis]).reshape([-1 if a == axis else 1 for a in range(len(shape))])
            d = np.where(np.expand_dims(t, axis) == classes, 1.0, -1.0)
            changed = {}
        elif kind == "binary":
            hard = (t >= 0.5).astype(float)
            d, changed = 2.0 * hard - 1.0, {name: hard}
        elif kind == "signs":
            d, changed = np.sign(t).astype(float), {}
        elif kind in ("masks", "binary_masks"):
            d, changed = np.where(t >= 0.5, 1.0, -1.0), {}
        else:  # label lists: the classes before the first -1
            d = -np.ones(shape)
            for row, labels in enumerate(t):
                for label in labels:
                    if label < 0:
                        break
                    d[row, label] = 1.0
            changed = {}
        try:
            return np.broadcast_to(d, shape), changed
        except ValueError:
            return None
    return None


def _margin(sign):
    """Scores pushed ``sign * m`` toward their target: ``u + sign d m`` with ``u`` the base scores
    over their largest magnitude (in [-1, 1], which keeps ties broken) and ``d`` from
    :func:`_direction`; at ``m = inf`` the pushed entries are infinite."""

    def apply(inputs, k, params, m):
        names = _names(k, "logits")
        out = dict(inputs)
        for n in names:
            x = np.asarray(inputs[n], dtype=float)
            found = _direction(inputs, k, params, x.shape)
            top = float(np.max(np.abs(x))) if x.size else 0.0
            if found is None or top == 0:
                return None
            d, changed = found
            out.update(changed)
            u = x / top
            out[n] = np.where(d != 0, sign * d * math.inf, u) if math.isinf(m) else u + sign * d * m
        return out

    return apply


def _score_axis(params, shape):
    return params.get("axis", _class_axis(shape)) % len(shape) if len(shape) else 0


def _sharpen(log_output):
    """Probability rows ``p^k / sum p^k`` along the class axis (entries toward 0 and 1 together); as
    log-probabilities when ``log_output``."""
    kind = "log_probabilities" if log_output else "distributions"

    def apply(inputs, k, params, level):
        out = dict(inputs)
        for n in _names(k, kind):
            x = np.asarray(inputs[n], dtype=float)
            axis = _score_axis(params, x.shape)
            with np.errstate(divide="ignore"):
                lp = (x if log_output else np.log(x)) * level
            lp = lp - np.max(lp, axis=axis, keepdims=True)
            lse = np.log(np.sum(np.exp(lp), axis=axis, keepdims=True))
            out[n] = lp - lse if log_output else np.exp(lp - lse)
        return out

    return apply


def _counts_scale(inputs, k, params, level):
    names = _names(k, "counts")
    top = _top(inputs, names)
    if top == 0:
        return None
    return {**inputs, **{n: np.round(np.asarray(inputs[n], dtype=float) * (level / top)) for n in names}}


def _pair_distance(inputs, k, params, level):
    """The second of the first two embedding inputs of one shape moved toward the first:
    ``b' = a + level (b - a)`` (the distance between them scales by ``level``, to 0)."""
    names = _names(k, "embeddings")
    pair = next(((a, b) for i, a in enumerate(names) for b in names[i + 1 :] if np.shape(inputs[a]) == np.shape(inputs[b])), None)
    if pair is None:
        return None
    a, b = (np.asarray(inputs[n], dtype=float) for n in pair)
    return {**inputs, pair[1]: a + level * (b - a)}


def _power_of_two(x):
    """Nearest power of two of each positive magnitude (1 for 0)."""
    x = np.abs(np.asarray(x, dtype=float))
    return np.where(x > 0, 2.0 ** np.round(np.log2(np.where(x > 0, x, 1.0))), 1.0)


_BF16_MANTISSAS = 1.0 + np.arange(128) / 128.0


def _round8(x):
    """Round to 8 significant bits (bfloat16's precision; its range is float32's)."""
    m, e = np.frexp(np.asarray(x, dtype=float))
    return np.ldexp(np.round(m * 256.0) / 256.0, e)


def _angle_at(target, planes):
    """``(a, b, c)`` of 8-bit numbers, ``a`` in [1, 2), with ``atan(sqrt(b^2 + c^2) / a)`` closest to
    ``target`` (radians, in (0, pi/2)); ``c = 0`` when ``planes`` is 2. The achieved angle too."""
    a = _BF16_MANTISSAS[:, None]
    rho = a * math.tan(target)
    if planes < 3:
        b, c = _round8(rho), np.zeros_like(rho)
    else:
        frac = np.linspace(0.05, 1.0, 256)[None, :]
        b = _round8(rho * frac)
        c = _round8(np.sqrt(np.maximum(rho * rho - b * b, 0.0)))
        a = np.broadcast_to(a, b.shape)
    got = np.arctan2(np.sqrt(b * b + c * c), a)
    k = np.unravel_index(np.argmin(np.abs(got - target)), got.shape)
    return float(a[k]), float(b[k]), float(c[k]), float(got[k])


def _angular_margin(params, norm):
    """The additive angular margin of a margin loss, recognised by the parameters that define one:
    MagFace's norm-dependent margin (``l_margin``..``u_margin``), the combined margin's ``m2``,
    ArcFace-type ``margin`` (declared with ``easy_margin`` or CurricularFace's ``t``); ``None`` for
    losses whose margin is not an angle (CosFace, NormFace, L-Softmax, AdaFace's adaptive one)."""
    if "l_margin" in params:
        return _magface_margin(params, norm)
    if "m2" in params:
        return params["m2"]
    if "easy_margin" in params or "t" in params:
        return params["margin"]
    return None


def _cosine(mode):
    """Features and class weights rebuilt so that the target cosine is controlled exactly.

    The weights become axis-aligned: row ``r`` (sub-centre ``k`` of class ``j`` is row ``j K + k``) is
    ``s_r e_r`` with ``s_r`` the base row's norm rounded to a power of two (so this needs ``D >= C K``,
    as the margin domains give). Feature ``i`` of label ``y`` becomes ``n_i (a e_t + b e_u + c e_v)``
    with ``n_i`` its base norm rounded to a power of two, ``t = y K`` (the first sub-centre of its
    class) and ``u, v`` the first sub-centres of the next two classes, so ``cos(x_i, W_y) = a / r``:

    - ``+1`` / ``-1``: ``a = +-1, b = level`` (a power of two; ``1 - |cos| ~ level^2 / 2``), ``c = 0``;
    - ``pi``: ``theta_y + m = pi - level`` with ``m`` the loss's angular margin (:func:`_angular_margin`),
      ``(a, b, c)`` the 8-bit triple that comes closest (a level the grid misses by more than half
      its size is dropped).

    With sub-centres only ``+1`` is meaningful (the class's cosine is the largest over orthogonal
    sub-centres, which cannot all face away), so ``-1`` and ``pi`` skip them.
    """

    def apply(inputs, k, params, level):
        feats = _names(k, "cosine_features")
        labels = _names(k, "labels")
        weights = _names(k, "classifier_weights")
        if not (feats and labels and weights):
            return None
        x = np.asarray(inputs[feats[0]], dtype=float)
        y = np.asarray(inputs[labels[0]])
        w = np.asarray(inputs[weights[0]], dtype=float)
        c_count, d = w.shape[0], w.shape[-1]
        per = w.shape[1] if w.ndim == 3 else 1
        if per > 1 and mode != "+1":
            return None
        flat = w.reshape(-1, d)
        rows = flat.shape[0]
        if d < rows or x.ndim != 2 or x.shape[1] != d:
            return None
        frame = np.zeros_like(flat)
        frame[np.arange(rows), np.arange(rows)] = _power_of_two(np.linalg.norm(flat, axis=1))
        norms = _power_of_two(np.linalg.norm(x, axis=1))
        out_x = np.zeros_like(x)
        for i, label in enumerate(y.reshape(-1)):
            t = int(label) * per
            u = ((int(label) + 1) % c_count) * per
            v = ((int(label) + 2) % c_count) * per
            if mode == "pi":
                m = _angular_margin(params, float(np.linalg.norm(x[i])))
                if m is None or not 0 < m + level < math.pi / 2:
                    return None
                a, b, c, got = _angle_at(m + level, 3 if v not in (t, u) else 2)
                if abs(got - (m + level)) > level / 2:
                    return None
                a = -a
            else:
                a, b, c = (1.0 if mode == "+1" else -1.0), level, 0.0
            out_x[i, t] += a * norms[i]
            out_x[i, u] += b * norms[i]
            if c:
                out_x[i, v] += c * norms[i]
        return {**inputs, feats[0]: out_x, weights[0]: frame.reshape(w.shape)}

    return apply


def _centre_distance(inputs, k, params, level):
    """Each feature moved to ``level`` widths from its own class centre, along its base direction
    (RBF's ``K = exp(-d^2 / w^2)`` underflows, L-GM's ``d^2 / 2`` grows). The width is RBF's
    ``sqrt(gamma)`` or L-GM's ``sqrt(2)`` (:func:`_centre_width`)."""
    feats, labels, centres = _names(k, "centre_features"), _names(k, "labels"), _names(k, "centres")
    if not (feats and labels and centres):
        return None
    x = np.asarray(inputs[feats[0]], dtype=float)
    mu = np.asarray(inputs[centres[0]], dtype=float)[np.asarray(inputs[labels[0]]).reshape(-1)]
    width = _centre_width("rbf" if "gamma" in params else "lgm", params)
    diff = x - mu
    n = np.linalg.norm(diff, axis=1, keepdims=True)
    unit = np.where(n > 0, diff / np.where(n > 0, n, 1.0), np.eye(1, x.shape[1]))
    return {**inputs, feats[0]: mu + level * width * unit}


def _box_pair(inputs, k, params):
    """``(pred, target, format)``: the first two box inputs in xyxy, or ``None``."""
    names = _names(k, "boxes")
    if len(names) < 2:
        return None
    from .losses.box import convert_boxes  # imported here: the box module imports this one

    fmt = params.get("box_format", "xyxy")
    pred, target = (np.asarray(convert_boxes(np.asarray(inputs[n], dtype=float), fmt, "xyxy")) for n in names[:2])
    return names[:2], pred, target, fmt


def _centred(target):
    """The target boxes recentred at the origin with power-of-two sides (exact at 8 bits):
    ``(boxes, widths, heights)``."""
    w = _power_of_two(target[:, 2] - target[:, 0])
    h = _power_of_two(target[:, 3] - target[:, 1])
    return np.stack([-w / 2, -h / 2, w / 2, h / 2], axis=1), w, h


def _box_offset(inputs, k, params, level):
    """Prediction = target shifted diagonally by ``level`` box sizes (``dx = +-level w, dy = +-level h``,
    the four diagonal directions in turn): identical at 0, touching corners at 1, far beyond."""
    found = _box_pair(inputs, k, params)
    if found is None:
        return None
    (pn, tn), _, target, fmt = found
    t, w, h = _centred(target)
    n = t.shape[0]
    sx = np.array([1.0, -1.0, 1.0, -1.0])[np.arange(n) % 4]
    sy = np.array([1.0, 1.0, -1.0, -1.0])[np.arange(n) % 4]
    shift = np.stack([sx * level * w, sy * level * h] * 2, axis=1)
    return {**inputs, pn: _boxes_from_xyxy(t + shift, fmt), tn: _boxes_from_xyxy(t, fmt)}


def _box_area(inputs, k, params, level):
    """Prediction = the target scaled by ``level`` about its centre (concentric, area ``level^2`` of the
    target's, exactly 0 at the last level): IoU -> 0 with the prediction inside the target."""
    found = _box_pair(inputs, k, params)
    if found is None:
        return None
    (pn, tn), _, target, fmt = found
    t, _, _ = _centred(target)
    return {**inputs, pn: _boxes_from_xyxy(t * level, fmt), tn: _boxes_from_xyxy(t, fmt)}


def _mask_shrink(inputs, k, params, level):
    """The last class's mask loses positives: a fraction ``level`` of its positive entries is kept
    (at least one while ``level > 0``, none at 0). A class mask ``(N, C, *)`` moves the removed mass to
    class 0 (one-hot and soft rows stay valid); a binary mask ``(N, *)`` just loses it."""
    names = _names(k, "masks", "binary_masks")
    if not names:
        return None
    t = np.asarray(inputs[names[0]], dtype=float)
    classed = k[names[0]] == "masks"
    if classed and (t.ndim < 2 or t.shape[1] < 2):
        return None
    t = np.moveaxis(t, 1, 0).copy() if classed else t[None].copy()  # (classes, ...), last class at -1
    last, first = t[-1].reshape(-1), t[0].reshape(-1)
    pos = np.flatnonzero(last > 0)
    keep = 0 if level == 0 else max(1, int(math.ceil(level * pos.size)))
    drop = pos[keep:]
    if classed:
        first[drop] += last[drop]
        t[0] = first.reshape(t[0].shape)
    last[drop] = 0.0
    t[-1] = last.reshape(t[-1].shape)
    return {**inputs, names[0]: np.moveaxis(t, 0, 1) if classed else t[0]}


def _label(v) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    k = math.log10(abs(v))
    if abs(k - round(k)) < 1e-9 and abs(k) >= 3:
        return f"1e{int(round(k))}"
    return f"{v:g}"


def _levels(*values, label=_label):
    return tuple((label(v), float(v)) for v in values)


def _two(k) -> str:
    return f"2^{int(round(math.log2(k)))}" if k else "0"


_BINADE_GAPS = (2.0**-2, 2.0**-5, 2.0**-10, 2.0**-15, 2.0**-20, 2.0**-26, 0.0)
_PUSHES = (1.0, 10.0, 30.0, 100.0, 1e3, 1e4, 1e8, math.inf)
_CLASS_TARGET = (_TARGETS,)


def _one_minus_cos(b) -> str:
    # 1 - 1/sqrt(1 + b^2), written without the cancellation
    r = math.sqrt(1 + b * b)
    return f"1-|c|={b * b / (r * (1 + r)):.0e}" if b else "|c|=1"


#: Every stress axis, grouped by the kind it moves (:func:`stress_axes` picks a loss's).
STRESS_AXES = (
    StressAxis("logit scale", "logits", _levels(1e-8, 1e-4, 1e-2, 1.0, 10.0, 30.0, 100.0, 1e3, 1e4, 1e8, math.inf),
               _scale_to("logits"), "scores scaled together to this largest magnitude (signs kept); inf: every score infinite"),
    StressAxis("target margin", "logits", _levels(*_PUSHES), _margin(1.0),
               "each score pushed this far toward its target's side (u + d m): confidently right, the loss underflows",
               _CLASS_TARGET),
    StressAxis("wrong margin", "logits", _levels(*_PUSHES), _margin(-1.0),
               "each score pushed this far away from its target's side: confidently wrong, the loss grows like m",
               _CLASS_TARGET),
    StressAxis("probability -> 0", "probabilities", _levels(0.1, 1e-2, 1e-4, 1e-8, 1e-16, 1e-30, 0.0),
               _toward_zero("probabilities"), "probabilities scaled so that the largest is this (all toward 0)"),
    StressAxis("probability -> 1", "probabilities", _levels(0.1, 1e-2, 2.0**-9, 0.0, label=lambda v: f"1-p={_label(v) if v != 2.0**-9 else '2^-9'}"),
               _toward_one, "1 - p scaled so that the largest is this (all toward 1; 2^-9 is the last step 8 bits hold)"),
    StressAxis("sharpness", "distributions", _levels(1.0, 4.0, 16.0, 64.0, 256.0, 1e3, 1e4),
               _sharpen(False), "probability rows raised to this power and renormalised (p^k / sum p^k): peaked rows, entries underflowing to 0"),
    StressAxis("sharpness", "log_probabilities", _levels(1.0, 4.0, 16.0, 64.0, 256.0, 1e3, 1e4),
               _sharpen(True), "log-probability rows times this, renormalised: log-probabilities down to -1e4 and beyond"),
    StressAxis("value scale", "values", _levels(1e-8, 1e-4, 1e-2, 1.0, 10.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1e3, 1e4, 1e8),
               _scale_to("values"), "predictions and targets scaled together to this largest magnitude (float16 squares overflow past 256)"),
    StressAxis("variance -> 0", "variances", _levels(1.0, 1e-2, 1e-4, 1e-6, 1e-8, 1e-12, 1e-30, 0.0),
               _toward_zero("variances"), "variances scaled so that the largest is this (the eps clamp is crossed)"),
    StressAxis("rate -> 0", "rates", _levels(1.0, 1e-2, 1e-4, 1e-8, 1e-12, 1e-30, 0.0),
               _toward_zero("rates"), "Poisson rates scaled so that the largest is this"),
    StressAxis("log-rate scale", "log_rates", _levels(1.0, 10.0, 30.0, 88.0, 100.0, 300.0, 700.0, 1e3),
               _scale_to("log_rates"), "log-rates scaled to this largest magnitude (exp overflows float32 past 88.7, float64 past 709.8)"),
    StressAxis("count scale", "counts", _levels(10.0, 1e3, 1e5, 1e7), _counts_scale, "counts scaled (and rounded) to this largest count"),
    StressAxis("feature scale", "embeddings", _levels(1e-30, 1e-8, 1e-4, 1.0, 1e4, 1e8, 1e30),
               _scale_to("embeddings"), "every embedding scaled together to this largest magnitude"),
    StressAxis("pair distance -> 0", "embeddings", _levels(1.0, 1e-2, 1e-4, 1e-8, 0.0), _pair_distance,
               "the second embedding of a pair moved toward the first: distance times this, 0 at the end (the norm's kink)"),
    StressAxis("cos -> +1", "cosine_features", _levels(*_BINADE_GAPS, label=_one_minus_cos), _cosine("+1"),
               "the target cosine toward +1: feature n (e_y + b e_u) against axis-aligned weights", (("labels",), ("classifier_weights",))),
    StressAxis("cos -> -1", "cosine_features", _levels(*_BINADE_GAPS, label=_one_minus_cos), _cosine("-1"),
               "the target cosine toward -1: feature n (-e_y + b e_u)", (("labels",), ("classifier_weights",))),
    StressAxis("theta+m -> pi", "cosine_features", _levels(1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, label=lambda v: f"pi-{_label(v)}"), _cosine("pi"),
               "the target angle plus the angular margin approaching pi from below (the ArcFace fallback threshold)",
               (("labels",), ("classifier_weights",))),
    StressAxis("distance to own centre", "centre_features", _levels(1.0, 4.0, 16.0, 64.0, 256.0, 1024.0), _centre_distance,
               "each feature this many widths from its class centre", (("labels",), ("centres",))),
    StressAxis("box offset", "boxes", _levels(0.0, 1 / 64, 1 / 8, 0.5, 1.0, 2.0, 8.0, 64.0, label=lambda v: "identical" if v == 0 else (f"1/{round(1 / v)}" if v < 1 else f"{v:g}")),
               _box_offset, "prediction = target shifted diagonally by this many box sizes (identical, overlapping, touching at 1, far)"),
    StressAxis("box size -> 0", "boxes", _levels(0.5, 2.0**-3, 2.0**-6, 2.0**-10, 2.0**-16, 2.0**-24, 2.0**-40, 2.0**-64, 0.0, label=_two),
               _box_area, "prediction = target scaled by this about its centre (area toward 0, a point at the end)"),
    StressAxis("mask positives -> empty", "masks", _levels(1.0, 0.5, 0.25, 1e-9, 0.0, label=lambda v: "one" if 0 < v < 1e-6 else f"{v:g}"),
               _mask_shrink, "fraction of the last class's positive entries kept (one entry, then an empty mask)"),
    StressAxis("mask positives -> empty", "binary_masks", _levels(1.0, 0.5, 0.25, 1e-9, 0.0, label=lambda v: "one" if 0 < v < 1e-6 else f"{v:g}"),
               _mask_shrink, "fraction of the mask's positive entries kept (one entry, then an empty mask)"),
)


def stress_axes(loss, params) -> list:
    """The stress axes of ``loss`` under ``params``: those of its inputs' kinds whose ``needs`` it
    meets, in :data:`STRESS_AXES` order."""
    kinds = set(stress_kinds(loss, params).values())
    return [a for a in STRESS_AXES if a.kind in kinds and all(kinds & set(group) for group in a.needs)]
