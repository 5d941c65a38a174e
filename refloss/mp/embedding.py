"""Oracles of the embedding family: centre regularisers, range loss, pair and triplet losses, and
PyTorch's embedding losses.

Written from the papers (Wen et al. 2016, Wu et al. 2017, Zhang et al. 2017, Zheng et al. 2018,
Hadsell et al. 2006, Schroff et al. 2015, Balntas et al. 2016), the reference notes
(margin_losses.md sections 9 and 10) and PyTorch's ``Loss.cpp``, independently of
``refloss.losses.embedding``: plain norms ``sqrt(sum of squares)``, loops over samples and pairs.
"""

from __future__ import annotations

import functools

import mpmath
import numpy as np

from . import ops, oracle, reduce

# PyTorch's Loss.cpp: ``constexpr float EPSILON = 1e-12``, i.e. 1e-12 rounded to float32.
_TORCH_COSINE_EPSILON = float(np.float32(1e-12))


def _isnan(M, v) -> bool:
    """NaN test for either context. Intervals hold a NaN as ``[-inf, inf]``, which no narrowing can
    certify: raise ValueError there, so that the core recomputes the case in point arithmetic."""
    if M is mpmath.iv:
        if v.a == -mpmath.inf and v.b == mpmath.inf:
            raise ValueError("NaN input: evaluate in point arithmetic")
        return False
    return bool(mpmath.isnan(v))


def _sq(v):
    """Sum of squares of a row (object array)."""
    return sum((t * t for t in v[1:]), v[0] * v[0])


def _norm(M, v):
    return M.sqrt(_sq(v))


def _decide(c) -> bool:
    """A comparison's truth in either context. ``mpmath.iv`` answers ``None`` where the two intervals
    overlap, which ``if`` would read as False: a hinge of an interval around 0 would then certify an
    exact 0 however wide the interval (a cancelling ``d(a, p) - d(a, n) + margin``). Raise ValueError
    instead, so that the core retries at more digits (and at an exact tie, in point arithmetic)."""
    if c is None:
        raise ValueError("undecided comparison: more digits needed")
    return bool(c)


def _hinge(z):
    return z if _decide(z > 0) else 0 * z


def _smaller(a, b):
    return a if _decide(a <= b) else b


def _descending(a, b) -> int:
    return -1 if _decide(a > b) else (1 if _decide(a < b) else 0)


@oracle("center_loss")
def center_loss(M, features, labels, centers, *, reduction):
    """``1/2 ||x_i - c_{y_i}||^2`` (Wen et al., ECCV 2016; Caffe's layer is the ``mean``)."""
    values = [_sq(features[i] - centers[int(labels[i])]) / 2 for i in range(features.shape[0])]
    return reduce(M, np.array(values, dtype=object).reshape(features.shape[:1]), reduction)


@oracle("center_invariant_loss")
def center_invariant_loss(M, features, labels, centers, *, reduction):
    """``(||c_{y_i}||^2 - (1/C) sum_j ||c_j||^2)^2 / 4`` (Wu et al. 2017; Caffe's ``loss_ca`` is the ``mean``);
    a NaN feature row gives NaN (refloss's convention)."""
    s = [_sq(c) for c in centers]
    tau = M.fsum(s) / len(s) if s else 0
    values = []
    for i in range(features.shape[0]):
        lam = s[int(labels[i])] - tau
        nan = any(_isnan(M, v) for v in features[i])
        values.append(M.mpf("nan") if nan else lam * lam / 4)
    return reduce(M, np.array(values, dtype=object).reshape(features.shape[:1]), reduction)


@oracle("range_loss")
def range_loss(M, features, labels, *, k, margin, intra_weight, inter_weight, reduction):
    """Range loss (Zhang et al., ICCV 2017; margin_losses.md 10.2): ``alpha sum_c k_c / sum_{j <= k_c} 1/D_{c,j}
    + beta max(margin - min_{p<q} ||m_p - m_q||^2, 0)``, ``D`` the squared intra-class pair distances
    sorted descending, ``k_c = min(k, #pairs)``; a zero among them gives 0, one class gives no inter term."""
    n = features.shape[0]
    classes: dict = {}
    for i in range(n):
        classes.setdefault(int(labels[i]), []).append(i)
    intra = M.mpf(0)
    for rows in classes.values():
        dists = [_sq(features[a] - features[b]) for x, a in enumerate(rows) for b in rows[x + 1 :]]
        if not dists:
            continue
        top = sorted(dists, key=functools.cmp_to_key(_descending))[: min(k, len(dists))]
        if any(d == 0 for d in top):
            continue  # the harmonic mean's limit
        intra += len(top) / M.fsum([1 / d for d in top])
    means = [ops(M).sum(features[rows], axis=0) / len(rows) for rows in classes.values()]
    inter = M.mpf(0)
    if len(means) >= 2:
        closest = functools.reduce(_smaller, [_sq(means[p] - means[q]) for p in range(len(means)) for q in range(p + 1, len(means))])
        inter = _hinge(M.mpf(margin) - closest)
    value = M.mpf(intra_weight) * intra + M.mpf(inter_weight) * inter
    return reduce(M, np.asarray(value, dtype=object), reduction)


@oracle("ring_loss")
def ring_loss(M, features, radius, *, loss_weight, reduction):
    """``(lambda / 2) (||x_i|| - R)^2`` (Zheng et al., CVPR 2018); ``R`` one radius or one per sample."""
    n = features.shape[0]
    r = np.broadcast_to(np.asarray(radius, dtype=object), (n,))
    values = [M.mpf(loss_weight) / 2 * (_norm(M, features[i]) - r[i]) ** 2 for i in range(n)]
    return reduce(M, np.array(values, dtype=object).reshape((n,)), reduction)


@oracle("contrastive_loss")
def contrastive_loss(M, input1, input2, target, *, margin, convention, pos_margin, reduction):
    """``d = ||a - b||``: caffe ``y d^2/2 + (1-y) max(m - d, 0)^2/2`` (Hadsell 2006, DeepID2); caffe_legacy
    ``y d^2/2 + (1-y) max(m - d^2, 0)/2``; pml ``y max(d - pos_margin, 0) + (1-y) max(m - d, 0)``."""
    m, pm = M.mpf(margin), M.mpf(pos_margin)
    values = []
    for i in range(input1.shape[0]):
        y = target[i]
        d2 = _sq(input1[i] - input2[i])
        d = M.sqrt(d2)
        if convention == "pml":
            pos, neg = _hinge(d - pm), _hinge(m - d)
        elif convention == "caffe_legacy":
            pos, neg = d2 / 2, _hinge(m - d2) / 2
        else:
            pos, neg = d2 / 2, _hinge(m - d) ** 2 / 2
        values.append(y * pos + (1 - y) * neg)
    return reduce(M, np.array(values, dtype=object).reshape(input1.shape[:1]), reduction)


@oracle("triplet_margin_loss")
def triplet_margin_loss(M, anchor, positive, negative, *, margin, p, eps, swap, eps_placement, reduction):
    """``max(d(a, p) - d_n + margin, 0)``, ``d_n = d(a, n)`` or with swap ``min(d(a, n), d(p, n))`` (Balntas 2016);
    ``d(x, y) = ||x - y + eps||_p`` (PyTorch pairwise_distance) or ``(sum |x - y|^p + eps)^(1/p)`` (optax)."""
    e = M.mpf(eps)
    n = int(p) if float(p).is_integer() else M.mpf(p)  # integer powers are exact (and fast) in intervals

    def root(s):
        return s if p == 1 else (M.sqrt(s) if p == 2 else s ** (1 / M.mpf(p)))

    def dist(x, y):
        v = x - y + e if eps_placement == "difference" else x - y
        s = M.fsum([abs(t) ** n for t in v])
        return root(s if eps_placement == "difference" else s + e)

    values = []
    for i in range(anchor.shape[0]):
        d_neg = dist(anchor[i], negative[i])
        if swap:
            d_pn = dist(positive[i], negative[i])
            d_neg = _smaller(d_neg, d_pn)
        values.append(_hinge(dist(anchor[i], positive[i]) - d_neg + M.mpf(margin)))
    return reduce(M, np.array(values, dtype=object).reshape(anchor.shape[:1]), reduction)


@oracle("facenet_triplet_loss")
def facenet_triplet_loss(M, anchor, positive, negative, *, alpha, reduction):
    """``max(||a - p||^2 - ||a - n||^2 + alpha, 0)`` (Schroff et al., FaceNet, CVPR 2015)."""
    values = [_hinge(_sq(anchor[i] - positive[i]) - _sq(anchor[i] - negative[i]) + M.mpf(alpha)) for i in range(anchor.shape[0])]
    return reduce(M, np.array(values, dtype=object).reshape(anchor.shape[:1]), reduction)


@oracle("cosine_embedding_loss")
def cosine_embedding_loss(M, input1, input2, target, *, margin, reduction):
    """``cos = x1.x2 / sqrt((|x1|^2 + e)(|x2|^2 + e))``, ``e = float32(1e-12)``; ``1 - cos`` for ``y = 1``,
    ``max(0, cos - margin)`` for ``y = -1``, 0 otherwise (PyTorch ``Loss.cpp``); NaN target: NaN."""
    e = M.mpf(_TORCH_COSINE_EPSILON)
    values = []
    for i in range(input1.shape[0]):
        a, b, y = input1[i], input2[i], target[i]
        if _isnan(M, y):
            values.append(M.mpf("nan"))
            continue
        cos = M.fsum(list(a * b)) / M.sqrt((_sq(a) + e) * (_sq(b) + e))
        values.append(1 - cos if y == 1 else (_hinge(cos - M.mpf(margin)) if y == -1 else M.mpf(0)))
    return reduce(M, np.array(values, dtype=object).reshape(input1.shape[:1]), reduction)


@oracle("margin_ranking_loss")
def margin_ranking_loss(M, input1, input2, target, *, margin, reduction):
    """``max(0, -y (x1 - x2) + margin)`` elementwise (PyTorch ``margin_ranking_loss``)."""
    values = np.frompyfunc(lambda a, b, y: _hinge(-y * (a - b) + M.mpf(margin)), 3, 1)(input1, input2, target)
    return reduce(M, np.asarray(values, dtype=object), reduction)


@oracle("hinge_embedding_loss")
def hinge_embedding_loss(M, input, target, *, margin, reduction):
    """``[y != -1] x + [y != 1] max(0, margin - x)`` elementwise (PyTorch ``hinge_embedding_loss``); NaN target: NaN."""

    def one(x, y):
        if _isnan(M, y):
            return M.mpf("nan")
        out = M.mpf(0)
        if y != -1:
            out = out + x
        if y != 1:
            out = out + _hinge(M.mpf(margin) - x)
        return out

    return reduce(M, np.asarray(np.frompyfunc(one, 2, 1)(input, target), dtype=object), reduction)
