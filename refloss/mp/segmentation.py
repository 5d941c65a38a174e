"""Oracles of the segmentation overlap losses (Dice, Jaccard, Tversky, focal Tversky, generalized Dice)
under each library's preset, and of the Lovasz hinge and Lovasz-softmax losses.

Per (sample, class), summed over the pixels: ``I = sum p y``, ``P = sum p``, ``G = sum y`` (squared:
``sum p^2``, ``sum y^2``), ``FP = sum p (1 - y)``, ``FN = sum (1 - p) y``. The presets (refloss.losses.
segmentation docstrings; box_seg_losses.md section 3) fix the smoothing, the clamp, the axes the sums
run over and the class averaging:

- monai: per (sample, class), smooth_nr = smooth_dr = 1e-5; Jaccard keeps ``2I`` over ``2(P + G - I)``;
- smp: per class over the batch, ``score = num / max(den, 1e-7)``, classes with ``G = 0`` give 0, mean
  over classes;
- kornia: per sample over classes and pixels (micro), eps 1e-8 in the denominator; kornia_macro: per
  (sample, class), then the class mean;
- keras: one sum over everything, eps 1e-7 in the denominator, Tversky's alpha on FN;
- optax: per (sample, class), ``(I + 1) / (I + a (P - I) + b (G - I) + 1)`` (Dice a = b = 1/2, Jaccard
  a = b = 1), mean over classes;
- abraham (focal Tversky only): the whole batch, smooth 1, alpha on FN.

Each loss is ``1 - score`` written as the score's complement over its denominator (``1 - 2TP / (2TP
+ FP + FN) = (FP + FN) / (2TP + FP + FN)``), with ``FN = sum (1 - p) y``; ``1 - p`` is the probability
of the other outcomes: ``sigmoid(-x)``, and for the softmax the other classes' share ``sum_{j != c}
e^{x_j} / sum_j e^{x_j}`` (so that the intervals need not resolve ``1 - (1 - 1e-4000)``).
"""

from __future__ import annotations

import functools

import numpy as np

from . import oracle, ops, reduce

# ------------------------------------------------------------------------------------------------
# Probabilities and targets.


def _onehot(M, target, c):
    """Integer class indices ``(N, *)`` -> one-hot ``(N, C, *)``; float targets pass through."""
    target = np.asarray(target)
    if target.dtype.kind not in "iu":
        return np.asarray(target, dtype=object)
    out = np.empty((target.shape[0], c) + target.shape[1:], dtype=object)
    for k in range(c):
        out[:, k] = np.frompyfunc(lambda t, k=k: M.mpf(1) if t == k else M.mpf(0), 1, 1)(target)
    return out


def _activate(M, x, activation):
    """``(p, q)``, ``q = 1 - p``, over the class axis 1."""
    o = ops(M)
    if activation == "sigmoid":
        return o._map(lambda v: 1 / (1 + M.exp(-v)), x), o._map(lambda v: 1 / (1 + M.exp(v)), x)
    if activation == "softmax":
        e = o.exp(x)
        total = o.sum(e, axis=1, keepdims=True)
        p = e / total
        c = x.shape[1]
        q = np.empty_like(p)
        for k in range(c):
            others = [e[:, j] for j in range(c) if j != k]
            q[:, k] = (sum(others[1:], others[0]) / total[:, 0]) if others else np.zeros_like(p[:, k]) * M.mpf(0)
        return p, q
    return np.asarray(x, dtype=object), 1 - np.asarray(x, dtype=object)


def _prepare(M, x, target, activation, include_background):
    """``p, q, y`` as ``(N, C', S)`` (background dropped after the activation when asked and C > 1)."""
    y = _onehot(M, target, x.shape[1])
    p, q = _activate(M, x, activation)
    if not include_background and x.shape[1] > 1:
        p, q, y = p[:, 1:], q[:, 1:], y[:, 1:]
    n, c = p.shape[0], p.shape[1]
    return (np.asarray(a, dtype=object).reshape(n, c, -1) for a in (p, q, y))


def _sums(M, p, q, y, axes):
    """The basis sums, each summed over ``axes`` of ``(N, C, S)``; ``SQ = sum (p - y)^2`` with
    ``p - y = p (1 - y) - (1 - p) y``."""
    o = ops(M)

    def s(a):
        a = np.asarray(a, dtype=object)
        if axes == "all":
            return o.sum(a)
        moved = np.moveaxis(a, axes, tuple(range(a.ndim - len(axes), a.ndim)))
        flat = moved.reshape(moved.shape[: a.ndim - len(axes)] + (-1,))
        return o.sum(flat, axis=-1)

    d = p * (1 - y) - q * y
    return dict(I=s(p * y), P=s(p), G=s(y), P2=s(p * p), G2=s(y * y), FP=s(p * (1 - y)), FN=s(q * y), SQ=s(d * d))


# Sum axes of (N, C, S) per convention, and whether the per-class values are averaged over the classes.
_AXES = {
    "monai": ((2,), False),
    "smp": ((0, 2), True),
    "kornia": ((1, 2), False),
    "kornia_macro": ((2,), True),
    "keras": ("all", False),
    "optax": ((2,), True),
    "abraham": ("all", False),
}

# (s_n, s_d, clamp) of each convention: score = (num + s_n) / (den + s_d), or num / max(den, clamp)
_SMOOTH = {
    "monai": (1e-5, 1e-5, None),
    "smp": (0.0, 0.0, 1e-7),
    "kornia": (0.0, 1e-8, None),
    "kornia_macro": (0.0, 1e-8, None),
    "keras": (0.0, 1e-7, None),
    "optax": (1.0, 1.0, None),
    "abraham": (1.0, 1.0, None),
}


def _elementwise(f, *arrays):
    return np.asarray(np.frompyfunc(f, len(arrays), 1)(*arrays), dtype=object)


def _terms(kind, convention, d, squared, a, b):
    """``(num, den, err)`` of the score ``num / den`` with ``err = den - num`` by its definition:
    Dice ``2TP / (2TP + FP + FN)`` (squared, V-Net: ``2 sum p y / (sum p^2 + sum y^2)``, complement
    ``sum (p - y)^2``), Jaccard ``TP / (TP + FP + FN)``, Tversky ``TP / (TP + a FP + b FN)``; MONAI's
    Jaccard keeps ``2TP`` over ``2 U``, optax's Dice is its Tversky index at a = b = 1/2."""
    I, FP, FN, SQ = d["I"], d["FP"], d["FN"], d["SQ"]
    if kind == "dice":
        if convention == "optax":
            if squared:
                return I, (d["P2"] + d["G2"]) / 2, SQ / 2
            return I, I + (FP + FN) / 2, (FP + FN) / 2
        if squared:
            return 2 * I, d["P2"] + d["G2"], SQ
        return 2 * I, 2 * I + FP + FN, FP + FN
    if kind == "jaccard":
        k = 2 if convention == "monai" else 1
        if squared:  # union sum p^2 + sum y^2 - sum p y
            return k * I, k * (I + SQ), k * SQ
        return k * I, k * (I + FP + FN), k * (FP + FN)
    wFP, wFN = (b, a) if convention in ("keras", "abraham") else (a, b)  # alpha on FN under keras, abraham
    err = wFP * FP + wFN * FN
    return I, I + err, err


def _score_loss(M, kind, convention, S, squared, alpha, beta):
    """``1 - score = (err + s_d - s_n) / (den + s_d)`` of each aggregate under ``convention`` (smp:
    ``1 - num / max(den, 1e-7)``)."""
    s_n, s_d, clamp = _SMOOTH[convention]
    s_n, s_d = M.mpf(s_n), M.mpf(s_d)
    a, b = M.mpf(alpha), M.mpf(beta)

    def one(d):
        num, den, err = _terms(kind, convention, d, squared, a, b)
        if clamp is not None and not den >= M.mpf(clamp):
            return 1 - num / M.mpf(clamp)
        return (err + (s_d - s_n)) / (den + s_d)

    keys = list(S)
    if np.ndim(S["I"]) == 0:
        return one(S)
    return _elementwise(lambda *vals: one(dict(zip(keys, vals))), *(S[k] for k in keys))


def _overlap(M, kind, x, target, *, convention, activation, include_background, squared=False,
             alpha=0.5, beta=0.5, gamma=None):
    p, q, y = _prepare(M, x, target, activation, include_background)
    axes, class_mean = _AXES[convention]
    S = _sums(M, p, q, y, axes)
    out = _score_loss(M, kind, convention, S, squared, alpha, beta)
    if convention == "smp":  # classes with an empty target over the batch contribute 0
        out = _elementwise(lambda v, g: v if g != 0 else M.mpf(0), out, S["G"])
    if class_mean:
        out = np.asarray(out, dtype=object)
        out = ops(M).sum(out, axis=-1) / out.shape[-1] if out.ndim > 1 else ops(M).sum(out) / out.shape[-1]
    if gamma is not None:
        g = M.mpf(gamma)
        out = _elementwise(lambda u: (M.mpf(1) if gamma == 0 else M.mpf(0)) if u <= 0 else u**g, out)
    return np.asarray(out, dtype=object)


# ------------------------------------------------------------------------------------------------
# The overlap losses.


@oracle("dice_loss")
def dice_loss(M, input, target, *, convention, activation, squared, include_background, reduction):
    """``1 - (2I + s_n) / (P + G + s_d)`` (Milletari et al. 2016; MONAI, smp, kornia, Keras, optax presets)."""
    out = _overlap(M, "dice", input, target, convention=convention, activation=activation,
                   include_background=include_background, squared=squared)
    return reduce(M, out, reduction)


@oracle("jaccard_loss")
def jaccard_loss(M, input, target, *, convention, activation, squared, include_background, reduction):
    """``1 - (I + s_n) / (P + G - I + s_d)`` (MONAI: ``2I`` over ``2(P + G - I)``)."""
    out = _overlap(M, "jaccard", input, target, convention=convention, activation=activation,
                   include_background=include_background, squared=squared)
    return reduce(M, out, reduction)


@oracle("tversky_loss")
def tversky_loss(M, input, target, *, alpha, beta, convention, activation, include_background, reduction):
    """``1 - (I + s_n) / (I + a FP + b FN + s_d)`` (Salehi et al. 2017; alpha on FN under Keras)."""
    out = _overlap(M, "tversky", input, target, convention=convention, activation=activation,
                   include_background=include_background, alpha=alpha, beta=beta)
    return reduce(M, out, reduction)


@oracle("focal_tversky_loss")
def focal_tversky_loss(M, input, target, *, alpha, beta, gamma, convention, activation, include_background, reduction):
    """``(1 - T)^gamma``, ``T`` the preset's Tversky index (Abraham & Khan 2019: whole batch, smooth 1,
    alpha on FN)."""
    out = _overlap(M, "tversky", input, target, convention=convention, activation=activation,
                   include_background=include_background, alpha=alpha, beta=beta, gamma=gamma)
    return reduce(M, out, reduction)


@oracle("generalized_dice_loss")
def generalized_dice_loss(M, input, target, *, w_type, activation, include_background, reduction):
    """``1 - (2 sum_c w_c I_c + 1e-5) / (sum_c w_c (P_c + G_c) + 1e-5)`` per sample, ``w_c = 1/G_c^2``
    (Sudre et al. 2017; MONAI: an empty class takes its sample's largest finite weight)."""
    p, q, y = _prepare(M, input, target, activation, include_background)
    S = _sums(M, p, q, y, (2,))
    out = []
    for n in range(p.shape[0]):
        G = list(S["G"][n])
        if w_type == "uniform":
            w = [M.mpf(1)] * len(G)
        else:
            finite = [(1 / g**2 if w_type == "square" else 1 / g) if g != 0 else None for g in G]
            top = max([v for v in finite if v is not None], default=M.mpf(0))
            w = [v if v is not None else top for v in finite]
        # 1 - (2 sum w TP + s) / (sum w (2 TP + FP + FN) + s), both smoothings 1e-5
        err = M.fsum(wc * (fp + fn) for wc, fp, fn in zip(w, S["FP"][n], S["FN"][n]))
        den = M.fsum(wc * (2 * i + fp + fn) for wc, i, fp, fn in zip(w, S["I"][n], S["FP"][n], S["FN"][n]))
        out.append(err / (den + M.mpf(1e-5)))
    return reduce(M, np.array(out, dtype=object), reduction)


# ------------------------------------------------------------------------------------------------
# Lovasz (Berman, Rannen Triki, Blaschko, CVPR 2018).


def _lovasz_extension(M, errors, fg, complements=None):
    """The Lovasz extension of the Jaccard loss ``D(S) = |S| / |F u S|`` (``F`` the foreground, ``S``
    the mispredicted set) at the error vector ``m``: sort ``m`` decreasingly, ``sum_i m_(i) (D(S_i) -
    D(S_{i-1}))``, ``S_i`` the first ``i`` sorted pixels.

    ``complements`` (``1 - m``, exactly) order errors above 1/2 by their distance to 1, which the
    intervals resolve where ``1 - 1e-3000`` against ``1 - 1e-2000`` would need thousands of digits."""

    def before(i, j):  # -1 if m_i > m_j
        if complements is None:
            a, b = errors[i], errors[j]
            return -1 if a > b else (1 if a < b else 0)
        hi_i, hi_j = errors[i] > 0.5, errors[j] > 0.5
        if hi_i != hi_j:
            return -1 if hi_i else 1
        if hi_i:
            a, b = complements[j], complements[i]
        else:
            a, b = errors[i], errors[j]
        return -1 if a > b else (1 if a < b else 0)

    order = sorted(range(len(errors)), key=functools.cmp_to_key(before))
    n_fg = sum(1 for f in fg if f)
    total, prev, size, grown = M.mpf(0), M.mpf(0), 0, 0
    for i in order:
        size += 1
        if not fg[i]:
            grown += 1  # a background pixel in S enlarges the union F u S
        cur = M.mpf(size) / (n_fg + grown)
        total += errors[i] * (cur - prev)
        prev = cur
    return total


@oracle("lovasz_hinge_loss")
def lovasz_hinge_loss(M, input, target, *, per_image, reduction):
    """The Lovasz extension of the Jaccard loss at the hinge errors ``max(0, 1 - x (2y - 1))``."""
    x = np.asarray(input, dtype=object)
    y = np.asarray(target)
    n = x.shape[0]
    x, y = x.reshape(n, -1), y.reshape(n, -1)
    rows = [(x[k], y[k]) for k in range(n)] if per_image else [(x.ravel(), y.ravel())]
    out = []
    for xr, yr in rows:
        errors = [(lambda e: e if e > 0 else M.mpf(0))(1 - xi * (2 * yi - 1)) for xi, yi in zip(xr, yr)]
        out.append(_lovasz_extension(M, errors, [bool(yi != 0) for yi in yr]))
    out = np.array(out, dtype=object) if per_image else np.asarray(out[0], dtype=object)
    return reduce(M, out, reduction)


@oracle("lovasz_softmax_loss")
def lovasz_softmax_loss(M, input, target, *, classes, per_image, activation, reduction):
    """Per class, the Lovasz extension of the Jaccard loss at the errors ``|fg_c - p_c|``; averaged over
    the classes present in the target (none: 0) or over all classes."""
    x = np.asarray(input, dtype=object)
    y = _onehot(M, target, x.shape[1])
    p, q = _activate(M, x, "softmax" if activation == "softmax" else "none")
    n, c = p.shape[0], p.shape[1]
    p, q, y = p.reshape(n, c, -1), q.reshape(n, c, -1), np.asarray(y).reshape(n, c, -1)
    if not per_image:  # (1, C, N S): every image's pixels in one row per class
        p, q, y = (np.moveaxis(a, 1, 0).reshape(1, c, -1) for a in (p, q, y))
    out = []
    for k in range(p.shape[0]):
        losses = []
        for cl in range(c):
            fg = [bool(v != 0) for v in y[k, cl]]
            if classes == "present" and not any(fg):
                continue
            if activation == "softmax":  # |fg - p| with 0 < p < 1: 1 - p (as q) or p
                errors = [qv if f else pv for f, pv, qv in zip(fg, p[k, cl], q[k, cl])]
                complements = [pv if f else qv for f, pv, qv in zip(fg, p[k, cl], q[k, cl])]
            else:  # |fg - p| itself: at p = fg (hard probabilities) the loss has a kink, which 1 - p or p would hide
                errors = [abs(yv - pv) for yv, pv in zip(y[k, cl], p[k, cl])]
                complements = [1 - e for e in errors]
            losses.append(_lovasz_extension(M, errors, fg, complements))
        out.append(M.fsum(losses) / len(losses) if losses else M.mpf(0))
    out = np.array(out, dtype=object) if per_image else np.asarray(out[0], dtype=object)
    return reduce(M, out, reduction)
