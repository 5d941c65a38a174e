"""Oracles of the margin family: cosine softmaxes with a target margin (NormFace, COCO, CosFace,
ArcFace, combined margin, L2-softmax), multiplicative angular margins (L-Softmax, SphereFace), the
distance logits (RBF-Softmax, L-GM) and the adaptive margins (Sub-center ArcFace, AdaCos,
CurricularFace, MagFace, AdaFace).

Written from the papers and the reference notes (margin_losses.md sections 0-5, 8, 10.4, 11) and the
documented definitions in refloss's docstrings, independently of ``refloss.losses.margin`` and
``refloss.losses.margin_adaptive``: plain norms ``sqrt(sum of squares)`` (``max(|v|, eps)`` where
``eps`` is given, as ``F.normalize``), ``cos = x . W / (|x| |W|)``, ``theta = acos(cos)``, the margin
as ``cos(theta + m)`` / ``cos(m theta)`` literally, ``l_i = log(sum_j exp(z_ij)) - z_iy``, loops over
samples and classes. Every oracle returns the per-sample losses through :func:`reduce`, so
``reduction='none'`` gives them one by one.
"""

from __future__ import annotations

import numpy as np

from . import ops, oracle, reduce

_ADAFACE_EPS = 1e-3  # AdaFace's self.eps: the cosine clamp, the angle clip and the std floor


# --------------------------------------------------------------------------------------------------
# Shared pieces (scalar functions of mpf / iv numbers; rows are object arrays).


def _dot(M, u, v):
    return M.fsum([a * b for a, b in zip(u, v)])


def _acos(M, c):
    return ops(M).acos(c)


def _clip(v, lo, hi):
    """``min(max(v, lo), hi)`` (torch.clamp)."""
    return lo if v < lo else (hi if v > hi else v)


def _row(M, v, eps):
    """``(|v|^2, max(|v|, eps), clamped)``; ``eps=None``: ``(|v|^2, |v|, False)``."""
    sq = _dot(M, v, v)
    n = M.sqrt(sq)
    if eps is None:
        return sq, n, False
    e = M.mpf(eps)
    return (sq, n, False) if n >= e else (sq, e, True)


def _norm(M, v, eps):
    """``max(|v|, eps)`` (``|v|`` without ``eps``)."""
    return _row(M, v, eps)[1]


def _cos(M, x, rx, w, rw):
    """``x . W / (max(|x|, eps) max(|W|, eps))`` from the rows' :func:`_row` records. Unclamped,
    ``x . W / sqrt(|x|^2 |W|^2)``: the same number, written so that parallel rows give exactly 1
    (no ``|c| > 1`` by rounding)."""
    d = _dot(M, x, w)
    if rx[2] or rw[2]:
        return d / (rx[1] * rw[1])
    return d / M.sqrt(rx[0] * rw[0])


def _cosines(M, features, weights, eps):
    """The (N, C) cosine matrix as nested lists."""
    rw = [_row(M, w, eps) for w in weights]
    out = []
    for x in features:
        rx = _row(M, x, eps)
        out.append([_cos(M, x, rx, w, r) for w, r in zip(weights, rw)])
    return out


def _ce(M, z, y):
    """Softmax cross-entropy of the logits ``z`` (a list) at the label ``y``: ``log(sum exp z) - z_y``."""
    return M.log(M.fsum([M.exp(t) for t in z])) - z[y]


def _per_sample(M, values, reduction):
    return reduce(M, np.array(values, dtype=object).reshape(len(values)), reduction)


def _cosine_softmax(M, features, labels, weights, scale, eps, psi, reduction):
    """``z_ij = s cos_ij`` off the target, ``z_iy = s psi(cos_iy, i)`` on it; softmax cross-entropy."""
    s = M.mpf(scale)
    cos = _cosines(M, features, weights, eps)
    values = []
    for i, row in enumerate(cos):
        y = int(labels[i])
        z = [s * c for c in row]
        z[y] = s * psi(row[y], i)
        values.append(_ce(M, z, y))
    return _per_sample(M, values, reduction)


def _arcface_psi(M, c, m, easy_margin, fallback):
    """``cos(theta + m)`` with insightface's conventions: easy margin (``c`` where ``c <= 0``), or the
    fallback ``c - sin(pi - m) m`` where ``c <= cos(pi - m)``; strict tests."""
    if easy_margin:
        return M.cos(_acos(M, c) + m) if c > 0 else c
    if fallback == "insightface":
        return M.cos(_acos(M, c) + m) if c > M.cos(M.pi - m) else c - M.sin(M.pi - m) * m
    return M.cos(_acos(M, c) + m)


# --------------------------------------------------------------------------------------------------
# Cosine softmaxes.


@oracle("normface_loss")
def normface_loss(M, features, labels, weights, *, scale, eps, reduction):
    """``-log softmax(s cos(x_i, W_j))_{y_i}`` (Wang et al., NormFace, 2017)."""
    return _cosine_softmax(M, features, labels, weights, scale, eps, lambda c, i: c, reduction)


@oracle("coco_loss")
def coco_loss(M, features, labels, weights, *, alpha, eps, reduction):
    """``-log softmax(alpha cos(x_i, c_k))_{y_i}`` (Liu, Li, Wang, COCO v2 Eq. 8)."""
    return _cosine_softmax(M, features, labels, weights, alpha, eps, lambda c, i: c, reduction)


@oracle("cosface_loss")
def cosface_loss(M, features, labels, weights, *, scale, margin, eps, reduction):
    """Target logit ``s (cos - m)`` (Wang et al., CosFace / AM-Softmax, 2018)."""
    m = M.mpf(margin)
    return _cosine_softmax(M, features, labels, weights, scale, eps, lambda c, i: c - m, reduction)


@oracle("arcface_loss")
def arcface_loss(M, features, labels, weights, *, scale, margin, easy_margin, fallback, gradient, eps, reduction, base=None):
    """Target logit ``s cos(acos(c) + m)`` (Deng et al., ArcFace, 2019) with insightface's easy margin /
    ``cos(pi - m)`` fallback; ``gradient='straight_through'``: ``s (c + (psi(c0) - c0))`` with ``c0``
    the target cosine at ``base`` (arcface_torch's margin under no_grad)."""
    m = M.mpf(margin)

    def psi(c):
        return _arcface_psi(M, c, m, easy_margin, fallback)

    if gradient == "straight_through" and base is not None:
        frozen = _cosines(M, base[0], base[2], eps)
        delta = [psi(frozen[i][int(base[1][i])]) - frozen[i][int(base[1][i])] for i in range(len(frozen))]
        return _cosine_softmax(M, features, labels, weights, scale, eps, lambda c, i: c + delta[i], reduction)
    return _cosine_softmax(M, features, labels, weights, scale, eps, lambda c, i: psi(c), reduction)


@oracle("combined_margin_loss")
def combined_margin_loss(M, features, labels, weights, *, scale, m1, m2, m3, eps, reduction):
    """Target logit ``s (cos(m1 acos(c) + m2) - m3)`` (insightface's combined margin, ArcFace section 3.3)."""
    a, b, d = M.mpf(m1), M.mpf(m2), M.mpf(m3)
    return _cosine_softmax(M, features, labels, weights, scale, eps, lambda c, i: M.cos(a * _acos(M, c) + b) - d, reduction)


@oracle("l2_softmax_loss")
def l2_softmax_loss(M, features, labels, weights, *, alpha, eps, reduction):
    """``z_ij = W_j . (alpha x_i / |x_i|)``, softmax cross-entropy (Ranjan et al., 2017); weights raw."""
    a = M.mpf(alpha)
    values = []
    for i, x in enumerate(features):
        nx = _norm(M, x, eps)
        z = [a * _dot(M, w, x) / nx for w in weights]
        values.append(_ce(M, z, int(labels[i])))
    return _per_sample(M, values, reduction)


# --------------------------------------------------------------------------------------------------
# Multiplicative angular margins.


def _angular_psi(M, c, m, lam):
    """``(lambda c + psi(c)) / (1 + lambda)`` with ``psi = (-1)^k cos(m theta) - 2k``, ``theta = acos(c)``,
    ``k = floor(m theta / pi)`` (counted by comparisons: ``m theta >= j pi``)."""
    theta = _acos(M, c)
    k = sum(1 for j in range(1, m + 1) if m * theta >= j * M.pi)
    psi = (-1) ** k * M.cos(m * theta) - 2 * k
    return (lam * c + psi) / (1 + lam)


@oracle("lsoftmax_loss")
def lsoftmax_loss(M, features, labels, weights, *, m, lambda_, eps, reduction):
    """L-Softmax (Liu et al., ICML 2016): ``z_ij = W_j . x_i``, ``z_iy = |W_y| |x_i| (lambda c + psi(c)) / (1 + lambda)``
    (norms ``max(|v|, eps)`` where ``eps`` is given)."""
    lam = M.mpf(lambda_)
    values = []
    for i, x in enumerate(features):
        y = int(labels[i])
        rx, ry = _row(M, x, eps), _row(M, weights[y], eps)
        z = [_dot(M, w, x) for w in weights]
        z[y] = rx[1] * ry[1] * _angular_psi(M, _cos(M, x, rx, weights[y], ry), m, lam)
        values.append(_ce(M, z, y))
    return _per_sample(M, values, reduction)


@oracle("sphereface_loss")
def sphereface_loss(M, features, labels, weights, *, m, lambda_, eps, reduction):
    """SphereFace / A-Softmax (Liu et al., CVPR 2017): ``z_ij = |x_i| cos_ij``, ``z_iy = |x_i| (lambda c + psi(c)) / (1 + lambda)``."""
    lam = M.mpf(lambda_)
    cosines = _cosines(M, features, weights, eps)
    values = []
    for i, x in enumerate(features):
        y = int(labels[i])
        nx = _norm(M, x, eps)
        cos = cosines[i]
        z = [nx * c for c in cos]
        z[y] = nx * _angular_psi(M, cos[y], m, lam)
        values.append(_ce(M, z, y))
    return _per_sample(M, values, reduction)


# --------------------------------------------------------------------------------------------------
# Distance logits.


def _sqdist(M, u, v):
    return M.fsum([(a - b) * (a - b) for a, b in zip(u, v)])


@oracle("rbf_softmax_loss")
def rbf_softmax_loss(M, features, labels, weights, *, scale, gamma, reduction):
    """RBF-Softmax (Zhang et al., ECCV 2020): ``z_ij = s exp(-|W_j - x_i|^2 / gamma)``, softmax cross-entropy."""
    s, g = M.mpf(scale), M.mpf(gamma)
    values = []
    for i, x in enumerate(features):
        z = [s * M.exp(-_sqdist(M, w, x) / g) for w in weights]
        values.append(_ce(M, z, int(labels[i])))
    return _per_sample(M, values, reduction)


@oracle("lgm_loss")
def lgm_loss(M, features, labels, weights, *, alpha, lambda_, reduction):
    """L-GM (Wan et al., CVPR 2018; identity covariance, equal priors): ``d_k = |x - mu_k|^2 / 2``,
    ``z_k = -d_k (1 + alpha [k = y])``, ``l = -log softmax(z)_y + lambda d_y``."""
    a, lam = M.mpf(alpha), M.mpf(lambda_)
    values = []
    for i, x in enumerate(features):
        y = int(labels[i])
        d = [_sqdist(M, x, mu) / 2 for mu in weights]
        z = [-dk * (1 + a) if k == y else -dk for k, dk in enumerate(d)]
        values.append(_ce(M, z, y) + lam * d[y])
    return _per_sample(M, values, reduction)


# --------------------------------------------------------------------------------------------------
# Adaptive margins.


@oracle("subcenter_arcface_loss")
def subcenter_arcface_loss(M, features, labels, weights, *, scale, margin, easy_margin, fallback, eps, reduction):
    """Sub-center ArcFace (Deng et al., ECCV 2020): ``c_ij = max_k cos(x_i, W_jk)``, then ArcFace's target."""
    s, m = M.mpf(scale), M.mpf(margin)
    rows = [[_row(M, w, eps) for w in centres] for centres in weights]
    values = []
    for i, x in enumerate(features):
        y = int(labels[i])
        rx = _row(M, x, eps)
        cos = []
        for centres, rc in zip(weights, rows):
            best = None
            for w, rw in zip(centres, rc):
                c = _cos(M, x, rx, w, rw)
                best = c if best is None or c > best else best
            cos.append(best)
        z = [s * c for c in cos]
        z[y] = s * _arcface_psi(M, cos[y], m, easy_margin, fallback)
        values.append(_ce(M, z, y))
    return _per_sample(M, values, reduction)


@oracle("adacos_loss")
def adacos_loss(M, features, labels, weights, *, scale, margin, eps, reduction):
    """AdaCos (Zhang et al., CVPR 2019): ``z = s cos``, ``s = sqrt(2) log(C - 1)`` when ``scale`` is None;
    with a margin the target is ``s cos(acos(c) + m)`` (the 4uiiurz1 port), no fallback."""
    s = M.sqrt(2) * M.log(len(weights) - 1) if scale is None else M.mpf(scale)
    m = M.mpf(margin)

    def psi(c, i):
        return M.cos(_acos(M, c) + m) if margin else c

    return _cosine_softmax(M, features, labels, weights, s, eps, psi, reduction)


@oracle("curricularface_loss")
def curricularface_loss(M, features, labels, weights, *, scale, margin, t, eps, reduction):
    """CurricularFace (Huang et al., CVPR 2020): target ``s cos(theta + m)`` (``s (c - m sin m)`` where
    ``c <= cos(pi - m)``), hard negatives ``c_j > cos(theta_y + m)`` become ``s c_j (t + c_j)``."""
    s, m, tt = M.mpf(scale), M.mpf(margin), M.mpf(t)
    cos = _cosines(M, features, weights, eps)
    values = []
    for i, row in enumerate(cos):
        y = int(labels[i])
        cy = row[y]
        ctm = M.cos(_acos(M, cy) + m)
        z = [s * c * (tt + c) if (j != y and c > ctm) else s * c for j, c in enumerate(row)]
        z[y] = s * (ctm if cy > M.cos(M.pi - m) else cy - M.sin(M.pi - m) * m)
        values.append(_ce(M, z, y))
    return _per_sample(M, values, reduction)


@oracle("magface_loss")
def magface_loss(M, features, labels, weights, *, scale, l_a, u_a, l_margin, u_margin, lambda_g, easy_margin, eps, reduction):
    """MagFace (Meng et al., CVPR 2021): ``a = clamp(|x|, l_a, u_a)``, ``m(a) = l_m + (u_m - l_m)(a - l_a)/(u_a - l_a)``,
    ArcFace's target at ``m(a)`` (easy margin or insightface's fallback), plus ``lambda_g (a / u_a^2 + 1 / a)``."""
    s = M.mpf(scale)
    la, ua, lm, um, lg = (M.mpf(v) for v in (l_a, u_a, l_margin, u_margin, lambda_g))
    cos = _cosines(M, features, weights, eps)
    values = []
    for i, row in enumerate(cos):
        y = int(labels[i])
        a = _clip(_norm(M, features[i], eps), la, ua)
        m = (um - lm) / (ua - la) * (a - la) + lm
        z = [s * c for c in row]
        z[y] = s * _arcface_psi(M, row[y], m, easy_margin, "insightface")
        values.append(_ce(M, z, y) + lg * (a / (ua * ua) + 1 / a))
    return _per_sample(M, values, reduction)


@oracle("adaface_loss")
def adaface_loss(M, features, labels, weights, *, scale, margin, h, norm_mean, norm_std, eps, reduction, base=None):
    """AdaFace (Kim et al., CVPR 2022): ``c = clamp(cos, -1 + 1e-3, 1 - 1e-3)``, ``n = clip(|x|, 1e-3, 100)``
    (detached: taken at ``base``), ``zeta = clip(h (n - mean) / (std + 1e-3), -1, 1)``,
    ``z_y = s (cos(clip(acos(c_y) - m zeta, 1e-3, pi - 1e-3)) - m - m zeta)``, ``z_j = s c_j``."""
    s, m, hh, mu, sd = (M.mpf(v) for v in (scale, margin, h, norm_mean, norm_std))
    e = M.mpf(_ADAFACE_EPS)
    lim = 1 - e
    frozen = features if base is None else base[0]
    cos = _cosines(M, features, weights, eps)
    values = []
    for i, row in enumerate(cos):
        y = int(labels[i])
        c = [_clip(v, -lim, lim) for v in row]
        n = _clip(_norm(M, frozen[i], eps), e, M.mpf(100))
        zeta = _clip(hh * (n - mu) / (sd + e), M.mpf(-1), M.mpf(1))
        angle = _clip(_acos(M, c[y]) - m * zeta, e, M.pi - e)
        z = [s * v for v in c]
        z[y] = s * (M.cos(angle) - m - m * zeta)
        values.append(_ce(M, z, y))
    return _per_sample(M, values, reduction)
