"""Oracles of the regression family: elementwise losses of a residual ``d = input - target``.

Written from the papers' and frameworks' definitions (PyTorch ``Loss.cpp`` / ``functional.py``,
optax, Fast R-CNN, Huber 1964, Libra R-CNN), independently of ``refloss.losses.regression``.
"""

from __future__ import annotations

import numpy as np

from . import ops, oracle, reduce


def _weighted(weight, values):
    return values if weight is None else weight * values


def _mean_weight(weight, values):
    """PyTorch's weighted mean (l1, mse): the weight broadcast to the elements, or the count."""
    return None if weight is None else np.broadcast_to(np.asarray(weight, dtype=object), values.shape)


@oracle("l1_loss")
def l1_loss(M, input, target, *, weight, reduction):
    """``w |x - y|``; weighted ``mean`` is ``sum(w |d|) / sum(w)`` (PyTorch ``l1_loss``)."""
    values = _weighted(weight, ops(M).abs(input - target))
    return reduce(M, values, reduction, _mean_weight(weight, values))


@oracle("mse_loss")
def mse_loss(M, input, target, *, weight, convention, reduction):
    """``w (x - y)^2`` (PyTorch ``mse_loss``), or ``w (x - y)^2 / 2`` (optax ``l2_loss``)."""
    d = input - target
    sq = d * d if convention == "torch" else d * d / 2
    values = _weighted(weight, sq)
    return reduce(M, values, reduction, _mean_weight(weight, values))


@oracle("smooth_l1_loss")
def smooth_l1_loss(M, input, target, *, beta, reduction):
    """``d^2 / (2 beta)`` if ``|d| < beta`` else ``|d| - beta / 2``; ``beta = 0`` is ``|d|`` (Girshick 2015, PyTorch)."""
    b = M.mpf(beta)

    def one(d):
        a = abs(d)
        if beta == 0:
            return a
        return d * d / (2 * b) if a < b else a - b / 2

    return reduce(M, np.frompyfunc(one, 1, 1)(input - target), reduction)


@oracle("huber_loss")
def huber_loss(M, input, target, *, delta, weight, reduction):
    """``w d^2 / 2`` if ``|d| < delta`` else ``w delta (|d| - delta / 2)`` (Huber 1964); mean over the count."""
    m = M.mpf(delta)

    def one(d):
        a = abs(d)
        return d * d / 2 if a < m else m * (a - m / 2)

    return reduce(M, _weighted(weight, np.frompyfunc(one, 1, 1)(input - target)), reduction)


@oracle("log_cosh_loss")
def log_cosh_loss(M, input, target, *, reduction):
    """``log(cosh(d))`` with ``cosh d = (e^d + e^-d) / 2`` (optax ``log_cosh``)."""
    d = input - target
    return reduce(M, ops(M).log((ops(M).exp(d) + ops(M).exp(-d)) / 2), reduction)


@oracle("poisson_nll_loss")
def poisson_nll_loss(M, input, target, *, log_input, full, eps, reduction):
    """``exp(x) - y x`` (log-rate) or ``x - y log(x + eps)`` (rate), plus Stirling's
    ``y log y - y + log(2 pi y) / 2`` where ``y > 1`` when ``full`` (PyTorch ``poisson_nll_loss``)."""
    e = M.mpf(eps)

    def one(x, y):
        if log_input:
            out = M.exp(x) - y * x
        else:
            out = x - (0 if y == 0 else y * M.log(x + e))
        if full and y > 1:
            out = out + (y * M.log(y) - y + M.log(2 * M.pi * y) / 2)
        return out

    return reduce(M, np.frompyfunc(one, 2, 1)(input, target), reduction)


@oracle("gaussian_nll_loss")
def gaussian_nll_loss(M, input, target, var, *, full, eps, reduction, base=None):
    """``(log v + (x - y)^2 / v) / 2`` (``+ log(2 pi) / 2`` when ``full``), ``v = max(var, eps)`` with the
    clamp straight-through (PyTorch ``gaussian_nll_loss`` clamps a clone under ``no_grad``): ``v = var +
    (max(var0, eps) - var0)`` with ``var0`` frozen at ``base``."""
    e = M.mpf(eps)
    var0 = var if base is None else base[2]
    shift = np.frompyfunc(lambda v: (e if v < e else v) - v, 1, 1)(var0)
    v = var + shift
    d = input - target
    values = (ops(M).log(v) + d * d / v) / 2
    if full:
        values = values + M.log(2 * M.pi) / 2
    return reduce(M, values, reduction)


@oracle("balanced_l1_loss")
def balanced_l1_loss(M, input, target, *, alpha, gamma, beta, reduction):
    """Libra R-CNN (Pang et al. 2019), ``t = |d|``, ``b = e^(gamma/alpha) - 1``:
    ``alpha/b (b t + 1) log(b t / beta + 1) - alpha t`` for ``t < beta``, else ``gamma t + gamma/b - alpha beta``."""
    a, g, be = M.mpf(alpha), M.mpf(gamma), M.mpf(beta)
    b = M.exp(g / a) - 1

    def one(d):
        t = abs(d)
        if t < be:
            return a / b * (b * t + 1) * M.log(b * t / be + 1) - a * t
        return g * t + g / b - a * be

    return reduce(M, np.frompyfunc(one, 1, 1)(input - target), reduction)
