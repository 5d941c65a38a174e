"""Regression losses on a residual ``d = input - target``.

Every loss here is elementwise: the unreduced loss has the input's shape. ``input`` and ``target``
must have the same shape (PyTorch broadcasts them with a warning; refloss asks for it explicitly).
Both are differentiable; the target's gradient is minus the input's unless stated.
"""

from __future__ import annotations

import decimal
import functools
import math
from fractions import Fraction

import array_api_compat

from .. import domains as D
from ..loss import SAMPLE, Input, Param, loss
from ..xp import dd_exp, dd_log, dd_mul, dd_split_rational, dd_sub, dd_sum, dd_sum_to_shape, renormalise, significand_bits, sum_to_shape, two_prod, two_sum, xlogy

__all__ = [
    "balanced_l1_loss",
    "gaussian_nll_loss",
    "huber_loss",
    "l1_loss",
    "log_cosh_loss",
    "mse_loss",
    "poisson_nll_loss",
    "smooth_l1_loss",
]

_INPUT = Input("input", domain=D.values, doc="predictions")
_TARGET = Input("target", domain=D.values, doc="targets, the shape of input")
_WEIGHT = Param(
    "weight", None, kind="array", shape="broadcast", nullable=True, low=0.0, grid=(SAMPLE,),
    domain=D.class_weights, doc="elementwise weight (PyTorch `weight`)",
)


def _weighted(xp, weight, values):
    return values if weight is None else weight * values


def _weight_normaliser(xp, input, target, *, weight, **_):
    """PyTorch's weighted mean for l1/mse: ``sum(w e) / sum(w)`` (``None``: the element count)."""
    return None if weight is None else weight * xp.ones_like(input)


def _input_and_target(g):
    return g, -g


# ------------------------------------------------------------------------------------------------


@loss(
    family="regression",
    inputs=[_INPUT, _TARGET],
    params=[_WEIGHT],
    mean_weight=_weight_normaliser,
    counterparts={
        "torch": "torch.nn.functional.l1_loss",
        "keras": "keras.losses.MeanAbsoluteError (mean over the last axis)",
    },
    references=["PyTorch aten/src/ATen/native/Loss.cpp"],
)
def l1_loss(xp, input, target, *, weight):
    """Absolute error ``l = w |d|``. ``mean`` is ``sum(w |d|) / sum(w)`` with a weight (PyTorch 2.x).

    Gradient: ``d l / d input = w sign(d)``, with ``sign(0) = 0`` (PyTorch's subgradient).
    """
    return _weighted(xp, weight, xp.abs(input - target))


@l1_loss.defvjp
def _l1_vjp(xp, cot, input, target, *, weight):
    return _input_and_target(cot * _weighted(xp, weight, xp.sign(input - target)))


@loss(
    family="regression",
    inputs=[_INPUT, _TARGET],
    params=[
        _WEIGHT,
        Param("convention", "torch", kind="choice", choices=("torch", "optax_l2"), grid=("optax_l2",),
              doc="torch: d^2; optax_l2: d^2 / 2 (optax l2_loss, 'the 0.5 term is standard in Bishop')"),
    ],
    mean_weight=_weight_normaliser,
    counterparts={
        "torch": "torch.nn.functional.mse_loss",
        "optax": "optax.losses.squared_error (optax.losses.l2_loss with convention='optax_l2')",
        "keras": "keras.losses.MeanSquaredError (mean over the last axis)",
    },
    references=["PyTorch Loss.cpp", "optax/losses/_regression.py"],
)
def mse_loss(xp, input, target, *, weight, convention):
    """Squared error ``l = w d^2`` (``w d^2 / 2`` with ``convention='optax_l2'``). ``mean`` is
    ``sum(w d^2) / sum(w)`` with a weight (PyTorch 2.x).

    Gradient: ``d l / d input = 2 w d`` (``w d`` for optax's l2).
    """
    d = input - target
    scale = 0.5 if convention == "optax_l2" else 1.0
    return _weighted(xp, weight, scale * d * d)


@mse_loss.defvjp
def _mse_vjp(xp, cot, input, target, *, weight, convention):
    factor = 1.0 if convention == "optax_l2" else 2.0
    return _input_and_target(cot * _weighted(xp, weight, factor * (input - target)))


def _piecewise_quadratic(xp, d, knee, slope):
    """``slope/knee * d^2 / 2`` for ``|d| < knee``, ``slope (|d| - knee/2)`` beyond: the one curve
    behind Smooth L1 (``slope = 1, knee = beta``) and Huber (``slope = knee = delta``)."""
    a = xp.abs(d)
    return xp.where(a < knee, (0.5 * (slope / knee)) * d * d, slope * (a - 0.5 * knee))


def _piecewise_quadratic_grad(xp, d, knee, slope):
    return xp.where(xp.abs(d) < knee, (slope / knee) * d, slope * xp.sign(d))


@loss(
    family="regression",
    inputs=[_INPUT, _TARGET],
    params=[Param("beta", 1.0, low=0.0, grid=(0.0, 0.3, 2.0), doc="width of the quadratic zone; 0 gives L1 exactly")],
    counterparts={
        "torch": "torch.nn.functional.smooth_l1_loss",
        "fvcore": "fvcore.nn.smooth_l1_loss (beta < 1e-5 is plain L1 there)",
    },
    references=["Girshick, Fast R-CNN, ICCV 2015", "PyTorch Loss.cpp (smooth_l1_loss)"],
)
def smooth_l1_loss(xp, input, target, *, beta):
    """Smooth L1: ``l = d^2 / (2 beta)`` for ``|d| < beta``, else ``|d| - beta / 2``; ``beta = 0`` is
    exactly L1 (PyTorch dispatches to ``l1_loss``). ``huber_loss(delta) = delta * smooth_l1_loss(beta=delta)``.

    Gradient: ``d / beta`` inside, ``sign(d)`` outside (the linear branch starts at ``|d| = beta``).
    """
    d = input - target
    return xp.abs(d) if beta == 0 else _piecewise_quadratic(xp, d, beta, 1.0)


@smooth_l1_loss.defvjp
def _smooth_l1_vjp(xp, cot, input, target, *, beta):
    d = input - target
    return _input_and_target(cot * (xp.sign(d) if beta == 0 else _piecewise_quadratic_grad(xp, d, beta, 1.0)))


@loss(
    family="regression",
    inputs=[_INPUT, _TARGET],
    params=[Param("delta", 1.0, low=0.0, low_open=True, grid=(0.5, 2.0), doc="where the quadratic turns linear"), _WEIGHT],
    counterparts={
        "torch": "torch.nn.functional.huber_loss",
        "optax": "optax.losses.huber_loss",
        "keras": "keras.losses.Huber (mean over the last axis)",
    },
    references=["Huber, Robust estimation of a location parameter, 1964", "PyTorch Loss.cpp (huber_loss)"],
)
def huber_loss(xp, input, target, *, delta, weight):
    """Huber: ``l = w d^2 / 2`` for ``|d| < delta``, else ``w delta (|d| - delta / 2)``.

    With a weight, ``mean`` divides by the element count (PyTorch's ``huber_loss``, unlike its
    ``l1_loss``/``mse_loss``).

    Gradient: ``w d`` inside, ``w delta sign(d)`` outside.
    """
    return _weighted(xp, weight, _piecewise_quadratic(xp, input - target, delta, delta))


@huber_loss.defvjp
def _huber_vjp(xp, cot, input, target, *, delta, weight):
    return _input_and_target(cot * _weighted(xp, weight, _piecewise_quadratic_grad(xp, input - target, delta, delta)))


@loss(
    family="regression",
    inputs=[_INPUT, _TARGET],
    counterparts={"optax": "optax.losses.log_cosh", "keras": "keras.losses.LogCosh (mean over the last axis)"},
    references=["optax/losses/_regression.py (log_cosh)"],
)
def log_cosh_loss(xp, input, target):
    """``l = log(cosh(d))``, computed without overflow or cancellation:
    ``log1p(2 sinh(d/2)^2)`` for ``|d| < 1`` (full relative precision near 0, where ``l ~ d^2 / 2``) and
    ``|d| + log1p(exp(-2|d|)) - log 2`` beyond.

    Gradient: ``tanh(d)``.
    """
    a = xp.abs(input - target)
    small = a < 1
    s = xp.sinh(xp.where(small, a, xp.zeros_like(a)) / 2)
    return xp.where(small, xp.log1p(2 * s * s), a + xp.log1p(xp.exp(-2 * a)) - math.log(2))


@log_cosh_loss.defvjp
def _log_cosh_vjp(xp, cot, input, target):
    return _input_and_target(cot * xp.tanh(input - target))


def _summed_terms(xp, terms, fin, plain):
    """The elements ``sum(terms)`` of double-double ``(hi, lo)`` terms, as a double-double rounded once
    into ``hi``; where ``fin`` is false, ``plain`` (the direct formula's non-finite value) with ``lo = 0``."""
    total, low = dd_sum(xp, xp.stack([hi for hi, _ in terms], axis=-1), xp.stack([lo for _, lo in terms], axis=-1))
    return xp.where(fin, total, plain), xp.where(fin, low, xp.zeros_like(low))


def _stirling(xp, y):
    """``y log y - y + log(2 pi y) / 2`` where ``y > 1``, else 0 (PyTorch's and TF's ``full`` term)."""
    big = y > 1
    ys = xp.where(big, y, xp.ones_like(y))
    return xp.where(big, xlogy(ys, ys, xp=xp) - ys + 0.5 * xp.log(2 * math.pi * ys), xp.zeros_like(y))


def _poisson_check(xp, name, input, target, *, log_input, **_):
    if not log_input and array_api_compat.size(input) and bool(xp.any(input < 0)):
        raise ValueError(f"{name}: input must be a rate >= 0 with log_input=False, got values down to {float(xp.min(input))!r}")


@loss(
    family="regression",
    inputs=[
        Input("input", domain=D.poisson_input, doc="log-rate (log_input=True) or rate"),
        Input("target", differentiable=False, values=(0.0, math.inf), domain=D.counts, doc="counts"),
    ],
    params=[
        Param("log_input", True, kind="bool", grid=(False,), doc="input is log(rate) (PyTorch's default) or the rate"),
        Param("full", False, kind="bool", grid=(True,), doc="add the Stirling term for targets > 1"),
        Param("eps", 1e-8, low=0.0, low_open=True, doc="added to the rate inside the log when log_input=False"),
    ],
    check=_poisson_check,
    counterparts={
        "torch": "torch.nn.functional.poisson_nll_loss",
        "tf": "tf.nn.log_poisson_loss (log_input=True; compute_full_loss=full)",
        "keras": "keras.losses.Poisson (log_input=False, eps=1e-7, mean over the last axis)",
    },
    references=["PyTorch torch/nn/functional.py (poisson_nll_loss)"],
)
def poisson_nll_loss(xp, input, target, *, log_input, full, eps):
    """Poisson negative log-likelihood of counts ``y`` (the constant ``log y!`` dropped):

    ``l = exp(x) - y x`` for a log-rate ``x``; ``l = x - y log(x + eps)`` for a rate. ``full`` adds
    Stirling's ``y log y - y + log(2 pi y) / 2`` where ``y > 1`` (0 elsewhere, as PyTorch and TF).

    Both forms cancel near their roots (``exp(x) ~ y x``), and ``full`` cancels further (near
    ``x = log y`` the loss is ``~ log(2 pi y) / 2`` out of terms of size ``y log y``): every term is
    formed as a double-double (:func:`dd_exp`, :func:`dd_log`, exact products and sums) and the sum
    is rounded once, so the loss is correct to an ulp of itself however much the terms cancel.

    Gradient: ``exp(x) - y`` (log-rate, from the double-double ``exp``) or ``(x + eps - y) / (x + eps)``
    (rate; the numerator from exact sums). The target is data (counts) and is not differentiated;
    the Stirling term is discontinuous at ``y = 1``.

    The elements take both signs, so their sum may cancel too: the reductions sum them as the
    double-doubles they are (:func:`_poisson_pair`, refloss.loss.reduce's ``low``).
    """
    return _poisson_pair(xp, input, target, log_input=log_input, full=full, eps=eps)[0]


@poisson_nll_loss.defpair
def _poisson_pair(xp, input, target, *, log_input, full, eps):
    """:func:`poisson_nll_loss`'s elements as double-doubles ``(hi, lo)`` (``lo`` 0 where not finite)."""
    if log_input:
        plain = xp.exp(input) - target * input
    else:
        plain = input - xlogy(target, input + eps, xp=xp)
    if full:
        plain = plain + _stirling(xp, target)
    fin = xp.isfinite(plain)
    x, y = xp.where(fin, input, xp.zeros_like(input)), xp.where(fin, target, xp.zeros_like(target))
    zero = xp.zeros_like(x)
    if log_input:
        p, pe = two_prod(xp, y, x)
        terms = [dd_exp(xp, x), (-p, -pe)]
    else:
        r, re = two_sum(xp, x, xp.full_like(x, eps))
        lr_hi, lr_lo = dd_log(xp, r, re)
        p, pe = dd_mul(xp, y, zero, lr_hi, lr_lo)
        terms = [(x, zero), (-p, -pe)]
    if full:
        big = y > 1
        ys = xp.where(big, y, xp.ones_like(y))
        ly_hi, ly_lo = dd_log(xp, ys)
        q, qe = dd_mul(xp, ys, zero, ly_hi, ly_lo)
        c_hi, c_lo = _half_log_2pi(xp, x)
        stirling = [(q, qe), (-ys, zero), (0.5 * ly_hi, 0.5 * ly_lo), (xp.full_like(x, c_hi), xp.full_like(x, c_lo))]
        terms += [(xp.where(big, hi, zero), xp.where(big, lo, zero)) for hi, lo in stirling]
    return _summed_terms(xp, terms, fin, plain)


_PI = "3.14159265358979323846264338327950288419716939937510582097494459"


@functools.lru_cache(maxsize=None)
def _half_log_2pi_parts(bits):
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        return dd_split_rational(Fraction((2 * decimal.Decimal(_PI)).ln()) / 2, bits, 2)


def _half_log_2pi(xp, x):
    """``log(2 pi) / 2`` as a pair in ``x``'s dtype."""
    return _half_log_2pi_parts(significand_bits(xp, x))


@poisson_nll_loss.defvjp
def _poisson_vjp(xp, cot, input, target, *, log_input, full, eps):
    if log_input:
        plain = xp.exp(input) - target
        fin = xp.isfinite(plain)
        x, y = xp.where(fin, input, xp.zeros_like(input)), xp.where(fin, target, xp.zeros_like(target))
        e_hi, e_lo = dd_exp(xp, x)
        exact = dd_sub(xp, e_hi, e_lo, y, xp.zeros_like(y))
    else:
        plain = 1 - target / (input + eps)
        fin = xp.isfinite(plain) & xp.isfinite(input)
        x, y = xp.where(fin, input, xp.zeros_like(input)), xp.where(fin, target, xp.zeros_like(target))
        r, re = two_sum(xp, x, xp.full_like(x, eps))
        n, ne = two_sum(xp, r, -y)
        g = (n + (ne + re)) / r
        exact = g - g * (re / r)  # the denominator's low part, to first order
    return cot * xp.where(fin, exact, plain), None


def _gaussian_nll_frozen(xp, base, input, target, var, *, full, eps):
    """The straight-through clamp as a stop-gradient: ``v = var + (max(var0, eps) - var0)`` with the
    shift frozen at ``var0 = base[2]`` (PyTorch's in-place clamp under ``no_grad``)."""
    return _gaussian_nll(xp, input, target, var + (xp.maximum(base[2], eps) - base[2]), full)[0]


def _gaussian_nll(xp, input, target, v, full):
    """``(log v + d^2 / v) / 2`` (``+ log(2 pi) / 2``) as a double-double ``(hi, lo)`` (``lo`` 0 where
    not finite): the two terms cancel where ``d^2 / v ~ -log v`` (``v < 1``), so ``d`` is exact
    (TwoSum), ``d^2 / v`` and ``log v`` are double-doubles, and their sum is rounded once into ``hi``.
    The elements take both signs, so the reductions sum the pairs (refloss.loss.reduce's ``low``)."""
    d = input - target
    plain = 0.5 * (xp.log(v) + d * d / v)
    if full:
        plain = plain + 0.5 * math.log(2 * math.pi)
    fin = xp.isfinite(plain)
    w = xp.where(fin, v, xp.ones_like(plain))
    sq_hi, sq_lo = _exact_square(xp, input, target, fin)
    q = sq_hi / w
    p, pe = two_prod(xp, q, w)
    q_lo = (((sq_hi - p) - pe) + sq_lo) / w
    l_hi, l_lo = dd_log(xp, w)
    terms = [(0.5 * q, 0.5 * q_lo), (0.5 * l_hi, 0.5 * l_lo)]
    if full:
        c_hi, c_lo = _half_log_2pi(xp, w)
        terms.append((xp.full_like(w, c_hi), xp.full_like(w, c_lo)))
    return _summed_terms(xp, terms, fin, plain)


@loss(
    family="regression",
    inputs=[_INPUT, _TARGET, Input("var", shape="broadcast", values=(0.0, math.inf), domain=D.variances,
                                   doc="variance, broadcastable to input (homoscedastic: last dimension 1)")],
    params=[
        Param("full", False, kind="bool", grid=(True,), doc="add log(2 pi) / 2"),
        Param("eps", 1e-6, low=0.0, low_open=True, doc="variances are clamped to at least eps"),
    ],
    stop_gradient=_gaussian_nll_frozen,
    counterparts={"torch": "torch.nn.functional.gaussian_nll_loss"},
    references=["PyTorch torch/nn/functional.py (gaussian_nll_loss)", "Nix & Weigend, ICNN 1994"],
)
def gaussian_nll_loss(xp, input, target, var, *, full, eps):
    """Gaussian negative log-likelihood with a predicted variance::

        l = (log v + d^2 / v) / 2  (+ log(2 pi) / 2 when full),   v = max(var, eps)

    The clamp follows PyTorch: ``eps`` clamps, it is not added, and the gradient passes straight
    through the clamp (PyTorch clamps a clone in place under ``no_grad``): for ``var < eps`` the
    variance gets ``(1/v - d^2/v^2) / 2`` at ``v = eps``, not 0. Declared as a stop-gradient: the
    VJP is the derivative of ``v = var + (max(var0, eps) - var0)`` with ``var0`` frozen. Negative
    variances are rejected.

    Gradients: ``d l / d input = d / v``, ``d l / d target = -d / v``,
    ``d l / d var = (1 / v - d^2 / v^2) / 2`` summed over broadcast dimensions.
    """
    return _gaussian_nll_pair(xp, input, target, var, full=full, eps=eps)[0]


@gaussian_nll_loss.defpair
def _gaussian_nll_pair(xp, input, target, var, *, full, eps):
    return _gaussian_nll(xp, input, target, xp.maximum(var, eps), full)


@gaussian_nll_loss.defvjp
def _gaussian_nll_vjp(xp, cot, input, target, var, *, full, eps):
    v = xp.maximum(var, eps)
    d = input - target
    g_input = cot * d / v
    # d l / d var = (v - d^2) / (2 v^2) summed over var's broadcast dimensions, where v is constant: the
    # sum of cot (v - d^2) cancels (terms of both signs, and v - d^2 itself), so it is a double-double
    # sum of exact products, rounded once, then scaled.
    plain = cot * (0.5 * (1 / v - (d / v) * (d / v)))
    fin = xp.isfinite(plain)
    vb = xp.where(fin, v, xp.ones_like(plain))
    sq_hi, sq_lo = _exact_square(xp, input, target, fin)
    n_hi, n_lo = two_sum(xp, vb, -sq_hi)
    n_hi, n_lo = renormalise(xp, n_hi, n_lo - sq_lo)
    c = xp.where(fin, cot * xp.ones_like(plain), xp.zeros_like(plain))
    t_hi, t_lo = dd_mul(xp, c, xp.zeros_like(c), n_hi, n_lo)
    total = dd_sum_to_shape(xp, t_hi, t_lo, var.shape)
    g_var = 0.5 * ((total / v) / v) + sum_to_shape(xp.where(fin, xp.zeros_like(plain), plain), var.shape, xp=xp)
    return g_input, -g_input, g_var


def _exact_square(xp, input, target, fin):
    """``d^2`` with ``d = input - target`` exact (TwoSum), as a double-double; 0 off the lanes ``fin``."""
    x, y = xp.where(fin, input, xp.zeros_like(input)), xp.where(fin, target, xp.zeros_like(target))
    d_hi, d_lo = two_sum(xp, x, -y)
    return dd_mul(xp, d_hi, d_lo, d_hi, d_lo)


@loss(
    family="regression",
    inputs=[_INPUT, _TARGET],
    params=[
        Param("alpha", 0.5, low=0.0, low_open=True, grid=(0.3,), doc="gradient of the inlier zone"),
        Param("gamma", 1.5, low=0.0, low_open=True, grid=(1.0,), doc="gradient bound of outliers"),
        Param("beta", 1.0, low=0.0, low_open=True, grid=(0.5,), doc="inlier/outlier threshold"),
    ],
    counterparts={"mmdet": "mmdet.models.losses.balanced_l1_loss"},
    references=["Pang et al., Libra R-CNN, CVPR 2019"],
)
def balanced_l1_loss(xp, input, target, *, alpha, gamma, beta):
    """Balanced L1 (Libra R-CNN), with ``t = |d|`` and ``b = e^(gamma/alpha) - 1``::

        l = alpha/b (b t + 1) log(1 + b t / beta) - alpha t     for t < beta
        l = gamma t + gamma / b - alpha beta                     otherwise

    Continuous at ``t = beta`` (``alpha log(1 + b) = gamma``); differentiable there only for ``beta = 1``.

    The inside branch cancels to ``alpha b t^2 / (2 beta)`` for small ``t`` (and to first order for
    any ``t`` with ``beta = 1``); it is computed without cancellation as (:func:`_balanced_inside`)
    ``alpha t s (1 + s (1 + s) B(s)) + (alpha / b) (1 - beta) log(1 + u)`` with ``u = b t / beta``,
    ``s = u / (2 + u)`` and ``B(s) = (atanh(s) - s) / s^3 = 1/3 + s^2/5 + ...`` (from ``log(1 + u) =
    2 atanh(s)``), and ``b`` is rounded once from its exact value.

    Gradient: ``sign(d) alpha [log(1 + u) + (1 - beta) / (b t + beta)]`` inside, ``gamma sign(d)`` outside.
    """
    t = xp.abs(input - target)
    b = _balanced_b(alpha, gamma)
    inside = t < beta
    t_in = xp.where(inside, t, xp.zeros_like(t))  # no inf / inf (or NaN) in the branch not taken
    return xp.where(inside, _balanced_inside(xp, t_in, alpha, beta, b), gamma * t + gamma / b - alpha * beta)


def _balanced_b(alpha, gamma):
    """``e^(gamma/alpha) - 1`` correctly rounded (``math.exp(gamma / alpha)`` rounds the quotient
    first, an error of ``gamma/alpha`` ulps in ``b``)."""
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        return float((decimal.Decimal(gamma) / decimal.Decimal(alpha)).exp() - 1)


# B(s) = sum_k s^(2k) / (2k + 3), to 2^-56 for s <= 0.7 (0.49^54 / 111 < 2^-56)
_ATANH_TAIL = tuple(1.0 / (2 * k + 3) for k in range(54))


def _balanced_inside(xp, t, alpha, beta, b):
    u = (b * t) / beta
    s = u / (2 + u)
    s2 = s * s
    series = xp.full_like(s, _ATANH_TAIL[-1])
    for c in reversed(_ATANH_TAIL[:-1]):
        series = series * s2 + c
    big = s > 0.7
    s_big = xp.where(big, s, xp.ones_like(s))
    closed = (0.5 * xp.log1p(xp.where(big, u, xp.ones_like(u))) - s_big) / (s_big * s_big * s_big)
    tail = xp.where(big, closed, series)
    out = (alpha * t) * s * (1 + s * (1 + s) * tail)
    return out if beta == 1 else out + (alpha / b) * (1 - beta) * xp.log1p(u)


@balanced_l1_loss.defvjp
def _balanced_l1_vjp(xp, cot, input, target, *, alpha, gamma, beta):
    d = input - target
    t = xp.abs(d)
    b = _balanced_b(alpha, gamma)
    inside = alpha * (xp.log1p((b * t) / beta) + (1 - beta) / (b * t + beta))
    return _input_and_target(cot * xp.sign(d) * xp.where(t < beta, inside, xp.full_like(t, gamma)))
