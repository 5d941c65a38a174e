"""Oracles of the classification family: softmax and sigmoid cross-entropies, focal losses,
divergences, the 001 seed's hinge-to-cross-entropy chain and PyTorch's margin losses.

Written from the papers' and frameworks' definitions (PyTorch ``LossNLL.cpp`` / ``Loss.cpp`` /
``functional.py``, Keras 3 ``losses.py``, Lin et al. 2017, Xie & Tu 2015, Weston & Watkins 1999,
Crammer & Singer 2001, Lin 1991), independently of ``refloss.losses.classification``: softmax as
``exp(z_c) / sum exp(z)``, ``log sigma(x) = -log(1 + exp(-x))``, hinges as plain maxima, loops over
samples and classes. Conventions that belong to the definitions are kept literally: ``0 log 0 = 0``
(a zero weight or zero probability times an infinite log contributes 0), PyTorch's BCE log clamp at
-100, Keras' clips at ``1e-7`` and ``1.0 - 1e-7`` (the float64 number Keras' ``1.0 - epsilon`` gives).
"""

from __future__ import annotations

import numpy as np

from . import oracle, reduce

_KERAS_EPSILON = 1e-7  # keras.backend.epsilon()
_TORCH_LOG_FLOOR = -100


# --------------------------------------------------------------------------------------------------
# Small helpers (scalar functions of mpf / iv numbers, mapped over object arrays).


def _map(f, *arrays):
    """``f`` elementwise over broadcast object arrays; always an object ndarray."""
    arrays = np.broadcast_arrays(*[np.asarray(a, dtype=object) for a in arrays])
    out = np.empty(arrays[0].shape, dtype=object)
    for idx in np.ndindex(out.shape):
        out[idx] = f(*(a[idx] for a in arrays))
    return out


def _mul0(a, b):
    """``a * b`` with ``0 * b = 0`` for any ``b`` (infinite included): the ``0 log 0 = 0`` convention."""
    return 0 * a if a == 0 else a * b


def _max(a, b):
    return a if a >= b else b


def _relu(M, u):
    """``max(u, 0)``, as an ``M`` number."""
    return u if u >= 0 else M.mpf(0)


def _min(a, b):
    return a if a <= b else b


def _log(M, x):
    """``log x``; ``-inf`` at (and, continuing its limit, below) 0."""
    return M.log(x) if x > 0 else M.mpf("-inf")


def _log_sigmoid(M, x):
    """``log sigma(x) = -log(1 + exp(-x))``."""
    return -M.log(1 + M.exp(-x))


def _sigmoid(M, x):
    return 1 / (1 + M.exp(-x))


def _rows(x, axis):
    """``x`` with its class axis ``axis`` moved last and the rest flattened: ``(rows, C)``, and the
    shape of the per-row output (``x.shape`` without its class axis)."""
    x = np.asarray(x)
    x = np.moveaxis(x, axis % x.ndim, -1)
    return x.reshape(-1, x.shape[-1]), x.shape[:-1]


def _labels(target):
    return [int(t) for t in np.asarray(target).reshape(-1)]


def _class_weights(M, weight, c):
    return [M.mpf(1)] * c if weight is None else list(np.asarray(weight, dtype=object).reshape(-1))


def _log_softmax_row(M, z):
    """``z_c - log sum_k exp(z_k)`` for each class ``c``."""
    lse = M.log(M.fsum([M.exp(v) for v in z]))
    return [v - lse for v in z]


def _out(values, shape):
    return np.asarray(values, dtype=object).reshape(shape)


# --------------------------------------------------------------------------------------------------
# Softmax cross-entropy.


@oracle("cross_entropy")
def cross_entropy(M, logits, target, *, weight, ignore_index, label_smoothing, axis, reduction):
    """``(1 - eps) (-w[y] lsm[y]) + (eps / C) (-sum_c w_c lsm_c)``, 0 where ``y == ignore_index``;
    ``mean`` divides by ``sum w[y]`` over kept targets (PyTorch ``cross_entropy``, LossNLL.cpp).
    A floating target is PyTorch's probability-target path (:func:`softmax_cross_entropy`)."""
    if np.asarray(target).dtype == object:
        return softmax_cross_entropy(M, logits, target, weight=weight, label_smoothing=label_smoothing, axis=axis, reduction=reduction)
    rows, shape = _rows(logits, axis)
    c = rows.shape[1]
    w = _class_weights(M, weight, c)
    eps = M.mpf(label_smoothing)
    values, kept_weight = [], []
    for z, y in zip(rows, _labels(target)):
        if y == ignore_index:
            values.append(M.mpf(0))
            kept_weight.append(M.mpf(0))
            continue
        lsm = _log_softmax_row(M, z)
        nll = -_mul0(w[y], lsm[y])
        smooth = -M.fsum([_mul0(w[k], lsm[k]) for k in range(c)])
        values.append(_mul0(1 - eps, nll) + _mul0(eps / c, smooth))
        kept_weight.append(w[y])
    return reduce(M, _out(values, shape), reduction, _out(kept_weight, shape))


@oracle("softmax_cross_entropy")
def softmax_cross_entropy(M, logits, target, *, weight, label_smoothing, axis, reduction):
    """``-sum_c w_c y'_c lsm_c`` with ``y' = (1 - eps) y + eps / C`` and ``0 * lsm = 0``; ``mean``
    over the samples (PyTorch ``cross_entropy`` with probability targets)."""
    rows, shape = _rows(logits, axis)
    targets, _ = _rows(target, axis)
    c = rows.shape[1]
    w = _class_weights(M, weight, c)
    eps = M.mpf(label_smoothing)
    values = []
    for z, t in zip(rows, targets):
        lsm = _log_softmax_row(M, z)
        smoothed = [(1 - eps) * t[k] + eps / c for k in range(c)]
        values.append(-M.fsum([_mul0(w[k] * smoothed[k], lsm[k]) for k in range(c)]))
    return reduce(M, _out(values, shape), reduction)


@oracle("nll_loss")
def nll_loss(M, log_probs, target, *, weight, ignore_index, axis, reduction):
    """``-w[y] x[y]``, 0 where ignored; ``mean`` divides by ``sum w[y]`` (PyTorch ``nll_loss``)."""
    rows, shape = _rows(log_probs, axis)
    w = _class_weights(M, weight, rows.shape[1])
    values, kept_weight = [], []
    for x, y in zip(rows, _labels(target)):
        if y == ignore_index:
            values.append(M.mpf(0))
            kept_weight.append(M.mpf(0))
        else:
            values.append(-_mul0(w[y], x[y]))
            kept_weight.append(w[y])
    return reduce(M, _out(values, shape), reduction, _out(kept_weight, shape))


# --------------------------------------------------------------------------------------------------
# Binary cross-entropy.


def _binary_smoothing(M, target, eps):
    """Keras' binary label smoothing ``(1 - eps) y + eps / 2``."""
    if eps == 0:
        return target
    e = M.mpf(eps)
    return _map(lambda y: (1 - e) * y + e / 2, target)


def _weighted(weight, values):
    return values if weight is None else _map(_mul0, weight, values)


@oracle("binary_cross_entropy")
def binary_cross_entropy(M, input, target, *, weight, label_smoothing, clamp, reduction):
    """``-w [y log p + (1 - y) log(1 - p)]``; ``torch``: each log clamped below at -100 (PyTorch
    ``binary_cross_entropy``); ``keras``: ``p`` clipped to ``[1e-7, 1.0 - 1e-7]`` first (Keras 3)."""
    y = _binary_smoothing(M, target, label_smoothing)
    lo, hi = M.mpf(_KERAS_EPSILON), M.mpf(1.0 - _KERAS_EPSILON)

    def one(p, t):
        if clamp == "keras":
            p = _min(_max(p, lo), hi)
        log_p, log_q = _log(M, p), _log(M, 1 - p)
        if clamp == "torch":
            log_p, log_q = _max(log_p, M.mpf(_TORCH_LOG_FLOOR)), _max(log_q, M.mpf(_TORCH_LOG_FLOOR))
        return -(_mul0(t, log_p) + _mul0(1 - t, log_q))

    return reduce(M, _weighted(weight, _map(one, input, y)), reduction)


def _binary_logit_terms(M, x, y, w_pos, w_neg):
    """``-[w_pos y log sigma(x) + w_neg (1 - y) log sigma(-x)]``."""
    return -(_mul0(w_pos * y, _log_sigmoid(M, x)) + _mul0(w_neg * (1 - y), _log_sigmoid(M, -x)))


@oracle("binary_cross_entropy_with_logits")
def binary_cross_entropy_with_logits(M, logits, target, *, weight, pos_weight, label_smoothing, reduction):
    """``-w [pw y log sigma(x) + (1 - y) log(1 - sigma(x))]`` (PyTorch ``binary_cross_entropy_with_logits``),
    targets smoothed as Keras ``(1 - eps) y + eps / 2``."""
    y = _binary_smoothing(M, target, label_smoothing)
    pw = M.mpf(1) if pos_weight is None else pos_weight
    values = _map(lambda x, t, a: _binary_logit_terms(M, x, t, a, 1), logits, y, pw)
    return reduce(M, _weighted(weight, values), reduction)


@oracle("weighted_binary_cross_entropy")
def weighted_binary_cross_entropy(M, logits, target, *, beta, reduction):
    """``-[beta y log sigma(x) + (1 - y) log(1 - sigma(x))]`` (003 seed; TF ``weighted_cross_entropy_with_logits``)."""
    b = M.mpf(beta)
    return reduce(M, _map(lambda x, t: _binary_logit_terms(M, x, t, b, 1), logits, target), reduction)


@oracle("balanced_binary_cross_entropy")
def balanced_binary_cross_entropy(M, logits, target, *, per, reduction):
    """``-[beta y log sigma(x) + (1 - beta)(1 - y) log(1 - sigma(x))]``, ``beta = |Y-| / |Y|`` counted
    over the batch or per sample (Xie & Tu, HED 2015; tensorpack)."""
    target = np.asarray(target, dtype=object)
    if per == "batch" or target.ndim < 2:
        count = max(target.size, 1)
        beta = np.full(target.shape, 1 - M.fsum(target.ravel().tolist()) / count, dtype=object)
    else:
        count = max(int(np.prod(target.shape[1:])), 1)
        beta = np.empty(target.shape, dtype=object)
        for n in range(target.shape[0]):
            beta[n] = 1 - M.fsum(target[n].ravel().tolist()) / count
    return reduce(M, _map(lambda x, t, b: _binary_logit_terms(M, x, t, b, 1 - b), logits, target, beta), reduction)


# --------------------------------------------------------------------------------------------------
# Focal losses.


@oracle("sigmoid_focal_loss")
def sigmoid_focal_loss(M, logits, target, *, alpha, gamma, reduction):
    """``-[alpha y (1 - p)^gamma log p + (1 - alpha)(1 - y) p^gamma log(1 - p)]``, ``p = sigma(x)``,
    ``1 - p = sigma(-x)``, both weights 1 when ``alpha`` is None (Lin et al. 2017; 003 seed)."""
    a_pos, a_neg = (M.mpf(1), M.mpf(1)) if alpha is None else (M.mpf(alpha), 1 - M.mpf(alpha))
    g = M.mpf(gamma)

    def one(x, y):
        p, q = _sigmoid(M, x), _sigmoid(M, -x)
        pos = _mul0(a_pos * y * q**g, _log_sigmoid(M, x))
        neg = _mul0(a_neg * (1 - y) * p**g, _log_sigmoid(M, -x))
        return -(pos + neg)

    return reduce(M, _map(one, logits, target), reduction)


@oracle("softmax_focal_loss")
def softmax_focal_loss(M, logits, target, *, alpha, gamma, axis, reduction):
    """``-alpha (1 - p_t)^gamma log p_t``, ``p_t = exp(z_y) / sum exp(z)`` and ``1 - p_t`` the other
    classes' share ``sum_{c != y} exp(z_c) / sum exp(z)`` (Lin et al. 2017, multi-class form)."""
    rows, shape = _rows(logits, axis)
    a, g = M.mpf(alpha), M.mpf(gamma)
    values = []
    for z, y in zip(rows, _labels(target)):
        e = [M.exp(v) for v in z]
        total = M.fsum(e)
        rest = M.fsum([e[k] for k in range(len(e)) if k != y]) / total
        values.append(-a * rest**g * M.log(e[y] / total))
    return reduce(M, _out(values, shape), reduction)


# --------------------------------------------------------------------------------------------------
# Divergences.


@oracle("kl_div")
def kl_div(M, input, target, *, log_target, convention, reduction):
    """``p (log p - x)`` with ``0`` where ``p = 0`` (PyTorch ``kl_div``), ``exp(t) (t - x)`` with
    ``log_target``; Keras: ``p' log(p' / q')`` with both clipped to ``[1e-7, 1]``."""
    lo, hi = M.mpf(_KERAS_EPSILON), M.mpf(1)

    def one(x, p):
        if convention == "keras":
            q, p = _min(_max(x, lo), hi), _min(_max(p, lo), hi)
            return p * M.log(p / q)
        if log_target:
            return M.exp(p) * (p - x)
        return _mul0(p, _log(M, p) - x)

    return reduce(M, _map(one, input, target), reduction)


@oracle("jensen_shannon_divergence")
def jensen_shannon_divergence(M, p, q, *, axis, reduction):
    """``KL(p || m) / 2 + KL(q || m) / 2``, ``m = (p + q) / 2``, ``0 log 0 = 0``, in nats (Lin 1991)."""
    ps, shape = _rows(p, axis)
    qs, _ = _rows(q, axis)

    def kl(a, m):
        return _mul0(a, _log(M, a / m)) if m != 0 else 0 * a

    values = []
    for pr, qr in zip(ps, qs):
        ms = [(u + v) / 2 for u, v in zip(pr, qr)]
        values.append((M.fsum([kl(u, m) for u, m in zip(pr, ms)]) + M.fsum([kl(v, m) for v, m in zip(qr, ms)])) / 2)
    return reduce(M, _out(values, shape), reduction)


# --------------------------------------------------------------------------------------------------
# The 001 seed's chain from the hinge to cross-entropy.


def _others(z, y):
    return [z[k] for k in range(len(z)) if k != y]


@oracle("multiclass_hinge_loss")
def multiclass_hinge_loss(M, logits, target, *, margin, reduction):
    """``sum_{i != y} max(z_i - z_y + m, 0)`` (Weston & Watkins 1999)."""
    m = M.mpf(margin)
    values = [M.fsum([_relu(M, v - z[y] + m) for v in _others(z, y)]) for z, y in zip(logits, _labels(target))]
    return reduce(M, _out(values, (len(values),)), reduction)


@oracle("crammer_singer_hinge_loss")
def crammer_singer_hinge_loss(M, logits, target, *, margin, reduction):
    """``max(max_{i != y} z_i - z_y + m, 0)`` (Crammer & Singer 2001)."""
    m = M.mpf(margin)
    values = []
    for z, y in zip(logits, _labels(target)):
        top = None
        for v in _others(z, y):
            top = v if top is None else _max(top, v)
        values.append(_relu(M, top - z[y] + m))
    return reduce(M, _out(values, (len(values),)), reduction)


def _lse_others(M, z, y, s=1):
    """``log sum_{i != y} exp(s z_i)``."""
    return M.log(M.fsum([M.exp(s * v) for v in _others(z, y)]))


@oracle("logsumexp_hinge_loss")
def logsumexp_hinge_loss(M, logits, target, *, margin, reduction):
    """``max(log sum_{i != y} exp(z_i) - z_y + m, 0)`` (001 seed)."""
    m = M.mpf(margin)
    values = [_relu(M, _lse_others(M, z, y) - z[y] + m) for z, y in zip(logits, _labels(target))]
    return reduce(M, _out(values, (len(values),)), reduction)


@oracle("softplus_logsumexp_loss")
def softplus_logsumexp_loss(M, logits, target, *, reduction):
    """``log(1 + exp(u))``, ``u = log sum_{i != y} exp(z_i) - z_y`` (001 seed)."""
    values = [M.log(1 + M.exp(_lse_others(M, z, y) - z[y])) for z, y in zip(logits, _labels(target))]
    return reduce(M, _out(values, (len(values),)), reduction)


@oracle("additive_margin_softplus_loss")
def additive_margin_softplus_loss(M, logits, target, *, scale, margin, reduction):
    """``-log(e^{s(z_y - m)} / (e^{s(z_y - m)} + sum_{i != y} e^{s z_i}))`` (AM-Softmax, Wang et al. 2018;
    the 001 seed's ``softplus(LSE_{i != y}(s z_i) - s (z_y - m))``)."""
    s, m = M.mpf(scale), M.mpf(margin)
    values = []
    for z, y in zip(logits, _labels(target)):
        target_term = M.exp(s * (z[y] - m))
        values.append(-M.log(target_term / (target_term + M.fsum([M.exp(s * v) for v in _others(z, y)]))))
    return reduce(M, _out(values, (len(values),)), reduction)


# --------------------------------------------------------------------------------------------------
# PyTorch's margin losses.


@oracle("soft_margin_loss")
def soft_margin_loss(M, input, target, *, reduction):
    """``log(1 + exp(-y x))`` (PyTorch ``soft_margin_loss``)."""
    return reduce(M, _map(lambda x, y: M.log(1 + M.exp(-y * x)), input, target), reduction)


@oracle("multilabel_soft_margin_loss")
def multilabel_soft_margin_loss(M, input, target, *, weight, reduction):
    """``-(1 / C) sum_c w_c [y_c log sigma(x_c) + (1 - y_c) log sigma(-x_c)]`` (PyTorch)."""
    c = input.shape[1]
    w = _class_weights(M, weight, c)
    values = [
        M.fsum([_mul0(w[k], _binary_logit_terms(M, x[k], t[k], 1, 1)) for k in range(c)]) / c
        for x, t in zip(input, target)
    ]
    return reduce(M, _out(values, (len(values),)), reduction)


@oracle("multi_margin_loss")
def multi_margin_loss(M, input, target, *, p, margin, weight, reduction):
    """``(1 / C) sum_{i != y} w[y] max(0, margin - x_y + x_i)^p``; ``mean`` over N (PyTorch ``multi_margin_loss``)."""
    c = input.shape[1]
    w = _class_weights(M, weight, c)
    m = M.mpf(margin)
    values = [
        M.fsum([_mul0(w[y], _relu(M, m - x[y] + v) ** p) for v in _others(x, y)]) / c
        for x, y in zip(input, _labels(target))
    ]
    return reduce(M, _out(values, (len(values),)), reduction)


@oracle("multilabel_margin_loss")
def multilabel_margin_loss(M, input, target, *, reduction):
    """``sum_{j in Y} sum_{i not in Y} max(0, 1 - (x_j - x_i)) / C``, ``Y`` the labels before the first
    ``-1``, a repeated label counted each time (PyTorch ``multilabel_margin_loss``)."""
    c = input.shape[1]
    values = []
    for x, t in zip(input, np.asarray(target)):
        listed = []
        for label in t:
            if label < 0:
                break
            listed.append(int(label))
        others = [i for i in range(c) if i not in listed]
        values.append(M.fsum([_relu(M, 1 - (x[j] - x[i])) for j in listed for i in others]) / c)
    return reduce(M, _out(values, (len(values),)), reduction)
