"""Segmentation overlap losses: soft Dice (linear and squared denominators), Jaccard / soft IoU, Tversky,
focal Tversky, generalized Dice, Lovasz hinge and Lovasz-softmax.

Layout: scores ``input (N, C, *)`` with the class axis 1 (MONAI, smp, kornia, PyTorch); targets either
one-hot / probability floats ``(N, C, *)`` or integer class indices ``(N, *)``, which are one-hot
encoded (after validation) before anything else (:func:`_index_targets`). ``activation`` says how
probabilities come from the input: ``softmax`` over axis 1, ``sigmoid`` per element, or ``none``
(the input already holds probabilities in ``[0, 1]``).

One core serves the overlap family. Per sample ``n`` and class ``c``, summed over the spatial
positions ``i`` (``p`` probability, ``q = 1 - p`` computed without cancellation, ``y`` target)::

    I  = sum p y              (true positives)
    FP = sum p (1 - y)        FN = sum q y
    P2 = sum p^2  G2 = sum y^2  SQ = sum (p - y)^2  (squared, V-Net denominators)
    G  = sum y                (mask size; empty-mask rules and generalized-Dice weights)

Each loss is a ratio of linear combinations of these sums, ``score = (Num + s_n) / (Den + s_d)``, and
is evaluated as ``1 - score = (Err + s_d - s_n) / (Den + s_d)`` with ``Err = Den - Num`` written as a
sum of non-negative terms (``FP + FN``, ``SQ``), so a loss near 0 keeps full relative precision::

    dice      Num = 2I    Den = 2I + FP + FN    Err = FP + FN      (squared: Den = P2 + G2, Err = SQ)
    jaccard   Num = I     Den = I + FP + FN     Err = FP + FN      (squared: Den = I + SQ, Err = SQ)
    tversky   Num = I     Den = I + a FP + b FN Err = a FP + b FN

A *convention* (the preset) then fixes the smoothing terms and the clamp, the axes the sums are
aggregated over (per sample and class, per class over the whole batch, per sample over all classes,
or the whole batch), the empty-mask rule and the class averaging; see :data:`CONVENTIONS`.

Gradient of the core (derived once): with ``L = A / B``, ``A = Err + s_d - s_n``, ``B = Den + s_d``,
``dL = (dErr - L dDen) / B``, and each sum is linear in ``p`` or quadratic: ``dI/dp = y``,
``dFP/dp = 1 - y``, ``dFN/dp = -y``, ``dSQ/dp = 2 (p - y)``, ``dP2/dp = 2 p``. The activation's
backward is written once (:func:`_activation_vjp_dd`): softmax ``p (g - sum_c p g)``, sigmoid
``g p (1 - p)``. Targets are not differentiated (the VJP returns ``None`` for them).

Precision: the core runs in double-double, from the probabilities to the activation's backward, and
rounds once (see "Double-double pieces of the core" below): the value and each gradient entry are
within an ulp or so of the exact ones for soft targets and saturated logits alike. It costs about
twenty times the float64 arithmetic it replaces.
"""

from __future__ import annotations

import math

import array_api_compat

from .. import domains as D
from ..loss import Input, Param, _check_labels, _check_values, _match_shape, loss
from ..xp import dd_mul, dd_sum, is_floating, saturated_softmax, is_integer, namespace, one_hot, renormalise, softmax, take_along_axis, two_prod, two_sum
from ..xp import dd_add as _dd_add, dd_div as _dd_div, dd_exp as _exp_dd, dd_log as _log_dd, dd_log2_multiple as _log2_times, dd_scale_exponent as _scale_exponent, significand_bits as _bits

__all__ = [
    "dice_loss",
    "jaccard_loss",
    "tversky_loss",
    "focal_tversky_loss",
    "generalized_dice_loss",
    "lovasz_hinge_loss",
    "lovasz_softmax_loss",
    "CONVENTIONS",
]

# ------------------------------------------------------------------------------------------------
# Conventions (presets).

#: Each library's convention, applied by the overlap core. Keys:
#:
#: - ``agg``: what the sums run over. ``sample_class`` (per sample and class, spatial sums),
#:   ``batch_class`` (per class, batch and spatial together), ``sample`` (per sample, classes and
#:   spatial together: "micro"), ``all`` (everything: one number per batch);
#: - ``s_n``, ``s_d``: smoothing added to numerator and denominator; ``eps``: clamp_min on the
#:   smoothed denominator (None: no clamp); ``scale``: factor on Num and Den of Dice / Jaccard
#:   (MONAI keeps 2I in the Jaccard numerator, optax writes Dice as Tversky with a = b = 1/2);
#: - ``mask_empty``: classes with an empty target (G = 0 over the aggregation) contribute loss 0 and
#:   gradient 0 (smp); ``class_mean``: the per-class losses are averaged into one per sample (or
#:   per batch); ``alpha_on``: which Tversky term alpha multiplies.
#:
#: Empty masks (target and prediction both empty / target empty, prediction not):
#: monai 0 / ~1 (gradient ~1e-5 / P^2); smp 0 / 0 (masked); kornia 1 / ~1; keras 1 / ~1; optax 0 / P/(P+2)
#: for Dice; abraham 0 / ~1.
CONVENTIONS = {
    # MONAI DiceLoss / TverskyLoss defaults (smooth_nr = smooth_dr = 1e-5, batch=False, reduction over
    # (B, C)); monai/losses/dice.py, tversky.py @d388d1c6.
    "monai": dict(agg="sample_class", s_n=1e-5, s_d=1e-5, eps=None, dice_scale=1.0, jaccard_scale=2.0,
                  mask_empty=False, class_mean=False, alpha_on="FP"),
    # smp DiceLoss / JaccardLoss / TverskyLoss (smooth=0, eps=1e-7, dims=(0, 2)): per class over the
    # whole batch, clamp_min(eps), empty classes masked, mean over classes; losses/_functional.py @bd7f877f.
    "smp": dict(agg="batch_class", s_n=0.0, s_d=0.0, eps=1e-7, dice_scale=1.0, jaccard_scale=1.0,
                mask_empty=True, class_mean=True, alpha_on="FP"),
    # kornia dice_loss(average='micro', eps=1e-8) / tversky_loss: per sample over (C, H, W), eps only
    # in the denominator; kornia/losses/dice.py, tversky.py @b4f5a78a.
    "kornia": dict(agg="sample", s_n=0.0, s_d=1e-8, eps=None, dice_scale=1.0, jaccard_scale=1.0,
                   mask_empty=False, class_mean=False, alpha_on="FP"),
    # kornia dice_loss(average='macro'): per sample and class, mean over classes.
    "kornia_macro": dict(agg="sample_class", s_n=0.0, s_d=1e-8, eps=None, dice_scale=1.0, jaccard_scale=1.0,
                         mask_empty=False, class_mean=True, alpha_on="FP"),
    # keras.losses.dice / tversky (axis=None, epsilon 1e-7): one sum over the whole batch and all
    # classes; tversky's alpha multiplies sum((1 - y_pred) y_true), i.e. FN; keras/src/losses/losses.py @3422977a.
    "keras": dict(agg="all", s_n=0.0, s_d=1e-7, eps=None, dice_scale=1.0, jaccard_scale=1.0,
                  mask_empty=False, class_mean=False, alpha_on="FN"),
    # optax.losses.dice_loss (smooth=1, alpha=beta=1/2, reduction='mean' over classes):
    # (I + 1) / (I + a FP + b FN + 1) per sample and class; optax/losses/_segmentation.py.
    "optax": dict(agg="sample_class", s_n=1.0, s_d=1.0, eps=None, dice_scale=0.5, jaccard_scale=1.0,
                  mask_empty=False, class_mean=True, alpha_on="FP"),
    # Abraham & Khan focal Tversky (nabsabraham/focal-tversky-unet losses.py): whole batch flattened,
    # smooth = 1 in numerator and denominator, alpha multiplies FN.
    "abraham": dict(agg="all", s_n=1.0, s_d=1.0, eps=None, dice_scale=1.0, jaccard_scale=1.0,
                    mask_empty=False, class_mean=False, alpha_on="FN"),
}
_LIBRARY_PRESETS = ("monai", "smp", "kornia", "kornia_macro", "keras", "optax")

# ------------------------------------------------------------------------------------------------
# Targets.


def _index_targets(loss_obj, args, kwargs):
    """Route: integer class indices ``(N, *)`` become one-hot ``(N, C, *)`` of the input's dtype (after
    their shape and range are checked, naming this loss); probabilities under ``activation='none'``
    are checked to lie in [0, 1]. Returns ``None`` when nothing is to change."""
    x = args[0] if args else kwargs.get("input")
    t = args[1] if len(args) > 1 else kwargs.get("target")
    if not (hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(t, "shape") and hasattr(t, "dtype")):
        return None
    xp = namespace(t)
    activation = kwargs.get("activation", loss_obj.param("activation").default)
    if activation == "none" and is_floating(xp, x) and not type(x).__module__.startswith("autograd"):
        _check_values(namespace(x), loss_obj.name, "input", x, 0.0, 1.0)
    if not (is_integer(xp, t) and x.ndim >= 2 and t.ndim == x.ndim - 1):
        return None
    dims = {"N": x.shape[0], "*": tuple(x.shape[2:])}
    _match_shape(loss_obj.name, "target", "N *", tuple(t.shape), dims)
    c = x.shape[1]
    _check_labels(xp, loss_obj.name, "target", t, c, ())
    dtype = x.dtype if is_floating(namespace(x), x) else xp.float64
    hot = one_hot(t, c, axis=1, dtype=dtype, xp=xp)
    args = list(args)
    if len(args) > 1:
        args[1] = hot
    else:
        kwargs = {**kwargs, "target": hot}
    return loss_obj, tuple(args), kwargs


# ------------------------------------------------------------------------------------------------
# The overlap core.

def _formula(kind, conv, squared=False, alpha=0.5, beta=0.5):
    """``(num, den, err)`` coefficient dicts over the basis sums (see the module docstring)."""
    if kind == "dice":
        m = conv["dice_scale"]
        if squared:
            return {"I": 2 * m}, {"P2": m, "G2": m}, {"SQ": m}
        return {"I": 2 * m}, {"I": 2 * m, "FP": m, "FN": m}, {"FP": m, "FN": m}
    if kind == "jaccard":
        k = conv["jaccard_scale"]
        if squared:
            return {"I": k}, {"I": k, "SQ": k}, {"SQ": k}
        return {"I": k}, {"I": k, "FP": k, "FN": k}, {"FP": k, "FN": k}
    a_fp, b_fn = (alpha, beta) if conv["alpha_on"] == "FP" else (beta, alpha)
    return {"I": 1.0}, {"I": 1.0, "FP": a_fp, "FN": b_fn}, {"FP": a_fp, "FN": b_fn}


def _flat(xp, a):
    n, c = a.shape[0], a.shape[1]
    return xp.reshape(a, (n, c, math.prod(a.shape[2:])))


def _aggregate_vjp(xp, g, agg, like):
    if agg == "batch_class":
        g = xp.expand_dims(g, axis=0)
    elif agg == "sample":
        g = xp.expand_dims(g, axis=1)
    return g * xp.ones_like(like)


# ------------------------------------------------------------------------------------------------
# Double-double pieces of the core.
#
# The core is carried in double-double, from the probabilities (:func:`_probabilities_dd`) through the
# sums, the units and their derivatives to the activation's backward, and rounded once. In float64,
# an ulp of a probability or of a unit's ``1/Den`` and ``L/Den`` becomes many ulps of results that
# cancel: the softmax backward ``p_c (g_c - sum_j p_j g_j)`` of per-class derivatives that are close (6
# to 9000 ulps seen, soft and saturated targets alike), ``(p - y)^2`` with ``p`` near a soft ``y`` (20
# ulps), ``1 - 2y - L`` near 0. Pairs are ``(hi, lo)`` tuples.


def _dd(xp, a):
    return a, xp.zeros_like(a)


def _dd_neg(a):
    return -a[0], -a[1]


def _dd_plus(xp, a, b):
    return _dd_add(xp, a[0], a[1], b[0], b[1])


def _dd_times(xp, a, b):
    return dd_mul(xp, a[0], a[1], b[0], b[1])


def _dd_scale(xp, c, a):
    """A Python float (or a float array) times a double-double."""
    hi, lo = two_prod(xp, a[0], c * xp.ones_like(a[0]))
    return renormalise(xp, hi, lo + c * a[1])


def _dd_over(xp, a, b):
    return _dd_div(xp, a[0], a[1], b[0], b[1])


def _dd_total(xp, a, axes):
    """Sum of a double-double over ``axes`` (all: ``None``), keeping the others."""
    hi, lo = a
    axes = tuple(range(hi.ndim)) if axes is None else tuple(k % hi.ndim for k in axes)
    kept = [k for k in range(hi.ndim) if k not in axes]
    shape = tuple(hi.shape[k] for k in kept)
    size = math.prod(hi.shape[k] for k in axes)
    flat = [xp.reshape(xp.permute_dims(v, tuple(kept) + axes), shape + (size,)) for v in (hi, lo)]
    return dd_sum(xp, *flat)


def _softmax_dd(xp, x):
    """``softmax(x)`` over axis 1 and its complement ``1 - softmax(x)``, as double-doubles, and the
    probabilities again as ``(p 2^k, 2^-k)`` where they are below ``2^(-0.9 k)`` (else ``(p, 1)``; ``k = 600``
    in float64): a subnormal ``p`` has lost its precision, which a product with a huge derivative
    would expose.

    ``e_c = exp(x_c - m)`` from the exact shift (TwoSum; ``exp(z + zc) = exp(z) (1 + zc)``) and a
    double-double ``exp``; ``S = 1 + rest`` with ``rest`` the sum of the other classes' ``e``, and ``p = e / S``.
    The complement is ``rest / S`` at the row maximum (where it can be tiny) and ``1 - p`` elsewhere
    (``p <= 1/2`` there). Rows whose maximum is not finite give the plain softmax (NaN), except those
    whose maximum is ``+inf``: there the limit (:func:`refloss.xp.saturated_softmax`:
    1 at a sole ``+inf``, 0 below it, NaN at tied ``+inf``), whose complement ``1 - p`` is exact."""
    xt = xp.moveaxis(x, 1, -1)
    m = xp.max(xt, axis=-1, keepdims=True)
    fin = xp.isfinite(m)
    # rows of no finite maximum are replaced below (by `plain`): zeros here keep inf out of the arithmetic
    z, zc = two_sum(xp, xp.where(fin, xt, xp.zeros_like(xt)), -xp.where(fin, m, xp.zeros_like(m)))
    # e far below 1 keeps its precision as e 2^k (scaled back where it is used): k = 600 in float64
    k = _scale_exponent(xp, z)
    k_hi, k_lo = _log2_times(_bits(xp, z), k)
    low = z < -0.9 * k_hi
    zs, zs_lo = two_sum(xp, z, xp.where(low, xp.full_like(z, k_hi), xp.zeros_like(z)))
    es_hi, es_lo = _exp_dd(xp, zs)
    es = renormalise(xp, es_hi, es_lo + es_hi * (zs_lo + zc + xp.where(low, xp.full_like(z, k_lo), xp.zeros_like(z))))
    unscale = xp.where(low, xp.full_like(z, 2.0**-k), xp.ones_like(z))
    e = renormalise(xp, es[0] * unscale, es[1] * unscale)
    e_hi = e[0]
    top = xp.argmax(xp.where(fin, xt, xp.zeros_like(xt)), axis=-1, keepdims=True)
    at_top = xp.arange(xt.shape[-1], device=array_api_compat.device(xt)) == top
    zero = xp.zeros_like(e_hi)
    rest = dd_sum(xp, xp.where(at_top, zero, e[0]), xp.where(at_top, zero, e[1]))
    rest = (xp.expand_dims(rest[0], axis=-1), xp.expand_dims(rest[1], axis=-1))
    total = _dd_plus(xp, _dd(xp, xp.ones_like(rest[0])), rest)
    p = _dd_over(xp, e, (total[0] * xp.ones_like(e_hi), total[1] * xp.ones_like(e_hi)))
    at_max = _dd_over(xp, rest, total)
    one_minus = _dd_plus(xp, _dd(xp, xp.ones_like(e_hi)), _dd_neg(p))
    q = tuple(xp.where(at_top, a * xp.ones_like(e_hi), b) for a, b in zip(at_max, one_minus))
    p_scaled = _dd_over(xp, es, (total[0] * xp.ones_like(e_hi), total[1] * xp.ones_like(e_hi)))
    top_rows, top = saturated_softmax(xp, x, 1)
    plain = xp.where(top_rows, top, softmax(x, axis=1, xp=xp))
    back = [tuple(xp.moveaxis(v, -1, 1) for v in pair) for pair in (p, q, p_scaled)]
    ok = xp.moveaxis(xp.broadcast_to(fin, xt.shape), -1, 1)
    p = (xp.where(ok, back[0][0], plain), xp.where(ok, back[0][1], xp.zeros_like(plain)))
    q = (xp.where(ok, back[1][0], 1 - plain), xp.where(ok, back[1][1], xp.zeros_like(plain)))
    p_scaled = (xp.where(ok, back[2][0], plain), xp.where(ok, back[2][1], xp.zeros_like(plain)))
    return p, q, (p_scaled, xp.where(ok, xp.moveaxis(unscale, -1, 1), xp.ones_like(plain)))


_TINY = 2.0**-900  # a focal base below this is taken from its logarithm (_log_tiny_base)


def _lse_dd(xp, log, axes):
    """``log(sum(exp(log)))`` over ``axes`` for double-double logarithms (``-inf`` entries are left out; all
    ``-inf``: ``-inf``): the maximum shifted out, ``exp`` and ``log`` as double-doubles."""
    hi, lo = log
    axes = tuple(k % hi.ndim for k in axes)
    if math.prod(hi.shape[k] for k in axes) == 0:  # an empty sum: log 0
        out = xp.sum(hi, axis=axes) - math.inf
        return out, xp.zeros_like(out)
    top = hi
    for k in sorted(axes, reverse=True):
        top = xp.max(top, axis=k, keepdims=True)
    live = xp.isfinite(top)
    t_hi, t_lo = two_sum(xp, hi, -xp.where(live, top, xp.zeros_like(top)))
    e_hi, e_lo = _exp_dd(xp, t_hi)
    rest = t_lo + xp.where(xp.isfinite(hi), lo, xp.zeros_like(lo))
    total = _dd_total(xp, renormalise(xp, e_hi, e_lo + e_hi * rest), axes)
    l_hi, l_lo = _log_dd(xp, *total)
    for k in sorted(axes, reverse=True):
        top, live = xp.squeeze(top, axis=k), xp.squeeze(live, axis=k)
    out = _dd_add(xp, l_hi, l_lo, xp.where(live, top, xp.zeros_like(top)), xp.zeros_like(top))
    return xp.where(live, out[0], top), xp.where(live, out[1], xp.zeros_like(top))


def _log_tiny_base(xp, x, y, base, *, formula, conv, activation, include_background, den, keep):
    """``log`` of the focal base (the Tversky loss, or its class mean) as a double-double where it is below
    :data:`_TINY`, or ``None`` where nothing is (or where it cannot be: not the softmax, or smoothing
    that keeps ``Err >= s_d - s_n > 0``).

    Saturated logits make ``Err = a FP + b FN`` a sum of probabilities below the float64 range (the
    loss ``(Err / Den)^gamma`` of ``1e-350`` is ``1e-263``); here every term is a logarithm: ``log p_c =
    (x_c - max) - log S`` and ``log q_c`` from the sum of the other classes (at the row maximum, a
    log-sum-exp of the others, which never underflows), the sums log-sum-exps (:func:`_lse_dd`)."""
    _, _, err_c = formula
    if activation != "softmax" or conv["s_d"] != conv["s_n"] or set(err_c) - {"FP", "FN"}:
        return None
    if not bool(xp.any(base < _TINY)):
        return None
    m = xp.max(x, axis=1, keepdims=True)
    fin = xp.isfinite(m)
    z, zc = two_sum(xp, x, -xp.where(fin, m, xp.zeros_like(m)))
    _, (q_hi, q_lo), _ = _softmax_dd(xp, x)
    e_hi, e_lo = _exp_dd(xp, z)
    total = _dd_total(xp, renormalise(xp, e_hi, e_lo + e_hi * zc), (1,))
    log_s = tuple(xp.expand_dims(v, axis=1) * xp.ones_like(x) for v in _log_dd(xp, *total))
    log_p = _dd_plus(xp, renormalise(xp, z, zc), _dd_neg(log_s))
    top = xp.argmax(xp.where(fin, x, xp.zeros_like(x)), axis=1, keepdims=True)
    at_top = xp.arange(x.shape[1], device=array_api_compat.device(x))
    at_top = xp.reshape(at_top, (1, -1) + (1,) * (x.ndim - 2)) == top
    others = xp.where(at_top, xp.full_like(z, -math.inf), z), xp.where(at_top, xp.zeros_like(zc), zc)
    log_rest = tuple(xp.expand_dims(v, axis=1) * xp.ones_like(x) for v in _lse_dd(xp, others, (1,)))
    log_q_top = _dd_plus(xp, log_rest, _dd_neg(log_s))
    log_q_other = _log_dd(xp, xp.where(at_top, xp.full_like(q_hi, 0.5), q_hi), xp.where(at_top, xp.zeros_like(q_lo), q_lo))
    log_q = tuple(xp.where(at_top, a, b) for a, b in zip(log_q_top, log_q_other))
    if (not include_background) and x.shape[1] > 1:
        log_p, log_q, y = tuple(v[:, 1:, ...] for v in log_p), tuple(v[:, 1:, ...] for v in log_q), y[:, 1:, ...]
    log_p, log_q, yf = tuple(_flat(xp, v) for v in log_p), tuple(_flat(xp, v) for v in log_q), _flat(xp, y)
    minus_inf = xp.full_like(yf, -math.inf)
    log_1my = _log_dd(xp, *renormalise(xp, *two_sum(xp, xp.ones_like(yf), -yf)))
    log_y = _log_dd(xp, yf)
    axes = {"sample_class": (2,), "batch_class": (0, 2), "sample": (1, 2), "all": (0, 1, 2)}[conv["agg"]]
    parts = []
    for key, (log_a, log_b) in {"FP": (log_p, log_1my), "FN": (log_q, log_y)}.items():
        if err_c.get(key, 0.0) > 0:
            term = _dd_plus(xp, log_a, log_b)
            term = tuple(xp.where(xp.isfinite(log_b[0]), v, minus_inf if k == 0 else xp.zeros_like(v)) for k, v in enumerate(term))
            total = _lse_dd(xp, term, axes)
            coef = _log_dd(xp, xp.full_like(total[0], err_c[key]))
            parts.append(_dd_plus(xp, total, coef))
    if not parts:
        return None
    stacked = tuple(xp.stack([part[k] for part in parts], axis=-1) for k in range(2))
    log_err = _lse_dd(xp, stacked, (-1,))
    log_unit = _dd_plus(xp, log_err, _dd_neg(_log_dd(xp, den)))
    if keep is not None:
        log_unit = tuple(xp.where(keep, v, xp.full_like(v, -math.inf) if k == 0 else xp.zeros_like(v)) for k, v in enumerate(log_unit))
    if conv["class_mean"] and log_unit[0].ndim:
        classes = _log_dd(xp, xp.full_like(log_unit[0][..., 0], float(log_unit[0].shape[-1])))
        log_unit = _dd_plus(xp, _lse_dd(xp, log_unit, (-1,)), _dd_neg(classes))
    return log_unit


def _sigmoid_dd(xp, x):
    """``sigmoid(x)`` and ``sigmoid(-x)`` as double-doubles: ``1 / (1 + e)`` and ``e / (1 + e)`` with ``e = exp(-|x|)``."""
    e = _exp_dd(xp, -xp.abs(x))
    one = _dd(xp, xp.ones_like(x))
    one_plus = _dd_plus(xp, one, e)
    big, small = _dd_over(xp, one, one_plus), _dd_over(xp, e, one_plus)
    pos = x >= 0
    return tuple(tuple(xp.where(pos, a, b) for a, b in zip(u, v)) for u, v in ((big, small), (small, big)))


def _probabilities_dd(xp, x, activation):
    """``(p, q, (p_scaled, unscale))`` as :func:`_softmax_dd` returns them, for each activation; ``q = 1 - p``
    (for ``none``, exactly: ``1 - x`` by TwoSum)."""
    if activation == "softmax":
        return _softmax_dd(xp, x)
    if activation == "sigmoid":
        p, q = _sigmoid_dd(xp, x)
    else:
        p, q = _dd(xp, x), renormalise(xp, *two_sum(xp, xp.ones_like(x), -x))
    return p, q, (p, xp.ones_like(x))


def _core(xp, x, y, *, formula, conv, activation, include_background, gamma=None, w_type=None):
    """Everything the forward and the VJP share, in double-double: returns the unreduced loss (rounded
    once) and a backward function of its cotangent. The derivatives are the module docstring's."""
    num_c, den_c, err_c = formula
    p_full, q_full, p_scaled = _probabilities_dd(xp, x, activation)
    drop = (not include_background) and x.shape[1] > 1
    yy = y[:, 1:, ...] if drop else y
    p = tuple(_flat(xp, v[:, 1:, ...] if drop else v) for v in p_full)
    q = tuple(_flat(xp, v[:, 1:, ...] if drop else v) for v in q_full)
    yf = _flat(xp, yy)
    one_minus_y = renormalise(xp, *two_sum(xp, xp.ones_like(yf), -yf))  # exact for soft targets too
    d = _dd_plus(xp, _dd_times(xp, p, one_minus_y), _dd_neg(_dd_scale(xp, yf, q)))  # p - y
    terms = {
        "I": lambda: _dd_scale(xp, yf, p), "FP": lambda: _dd_times(xp, p, one_minus_y),
        "FN": lambda: _dd_scale(xp, yf, q), "SQ": lambda: _dd_times(xp, d, d), "P2": lambda: _dd_times(xp, p, p),
        "G2": lambda: two_prod(xp, yf, yf), "G": lambda: _dd(xp, yf),
    }
    names = set(num_c) | set(den_c) | set(err_c) | {"G"}
    sums = {k: _dd_total(xp, terms[k](), (2,)) for k in names}
    w = None
    if w_type is not None and w_type != "uniform":
        # MONAI's weights 1/G^2 or 1/G, held constant; an empty class (infinite weight) takes the
        # largest finite weight of its sample (0 when the whole sample is empty)
        g_sum = sums["G"]
        pos = g_sum[0] > 0
        safe = tuple(xp.where(pos, v, xp.ones_like(v) if k == 0 else xp.zeros_like(v)) for k, v in enumerate(g_sum))
        inv = _dd_over(xp, _dd(xp, xp.ones_like(safe[0])), safe)
        inv = _dd_times(xp, inv, inv) if w_type == "square" else inv
        inv = tuple(xp.where(pos, v, xp.zeros_like(v)) for v in inv)
        big = xp.argmax(inv[0], axis=1, keepdims=True)
        fill = tuple(take_along_axis(v, xp.squeeze(big, axis=1), axis=1, xp=xp) for v in inv)
        w = tuple(xp.where(pos, v, xp.expand_dims(f, axis=1) * xp.ones_like(v)) for v, f in zip(inv, fill))
    agg = conv["agg"]
    axes = {"sample_class": None, "batch_class": (0,), "sample": (1,), "all": (0, 1)}[agg]

    def aggregate(a):
        a = a if w is None else _dd_times(xp, w, a)
        return a if axes is None else _dd_total(xp, a, axes)

    A = {k: aggregate(v) for k, v in sums.items()}

    def combine(coefs, extra):
        out = _dd(xp, xp.full_like(A["G"][0], extra))
        for k, c in coefs.items():
            out = _dd_plus(xp, out, _dd_scale(xp, c, A[k]))
        return out

    s_n, s_d, eps = conv["s_n"], conv["s_d"], conv["eps"]
    num, den = combine(num_c, s_n), combine(den_c, s_d)
    err = combine(err_c, 0.0)
    err = _dd_plus(xp, err, renormalise(xp, *two_sum(xp, xp.full_like(err[0], s_d), xp.full_like(err[0], -s_n))))
    ok = None if eps is None else den[0] >= eps
    den1 = den if ok is None else tuple(xp.where(ok, v, xp.ones_like(v) if k == 0 else xp.zeros_like(v)) for k, v in enumerate(den))
    unit = _dd_over(xp, err, den1)
    if ok is not None:  # clamp_min(Den, eps): L = 1 - Num / eps
        clamped = _dd_plus(xp, _dd(xp, xp.ones_like(num[0])), _dd_neg(_dd_over(xp, num, _dd(xp, xp.full_like(num[0], eps)))))
        unit = tuple(xp.where(ok, a, b) for a, b in zip(unit, clamped))
    keep = None if not conv["mask_empty"] else ~(A["G"][0] == 0)  # NaN masks stay NaN
    if keep is not None:
        unit = tuple(xp.where(keep, v, xp.zeros_like(v)) for v in unit)
    class_mean = bool(conv["class_mean"] and unit[0].ndim)
    classes = _dd(xp, xp.full_like(unit[0][..., 0], float(unit[0].shape[-1]))) if class_mean else None
    base = _dd_over(xp, _dd_total(xp, unit, (-1,)), classes) if class_mean else unit
    out = base[0]
    if gamma is not None:
        positive = ~(base[0] == 0)  # NaN propagates through the power
        b1 = tuple(xp.where(positive, v, xp.ones_like(v) if k == 0 else xp.zeros_like(v)) for k, v in enumerate(base))
        log_base = _log_dd(xp, *b1)
        log_tiny = _log_tiny_base(xp, x, y, base[0], formula=formula, conv=conv, activation=activation,
                                  include_background=include_background, den=den[0], keep=keep)
        if log_tiny is not None:  # u below the normal range (or its sums): u^gamma = exp(gamma log u) from log u
            tiny = base[0] < _TINY
            positive = positive | tiny
            log_base = tuple(xp.where(tiny, a, b) for a, b in zip(log_tiny, log_base))
        power = _dd_scale(xp, gamma, log_base)
        e_hi, e_lo = _exp_dd(xp, power[0])
        out = xp.where(positive, e_hi + (e_lo + e_hi * power[1]), xp.zeros_like(out) if gamma > 0 else xp.ones_like(out))

    def backward(g_out):
        g = _dd(xp, g_out * xp.ones_like(out))
        if gamma is not None:  # d u^gamma = gamma u^(gamma - 1); 0 at the minimum u = 0 (a subgradient there)
            t = _dd_scale(xp, gamma - 1.0, log_base)
            live = positive & (t[0] < 700)  # u^(gamma - 1) beyond the float64 range: 0, as for an underflowed u
            t = tuple(xp.where(live, v, xp.zeros_like(v)) for v in t)
            e_hi, e_lo = _exp_dd(xp, t[0])
            factor = _dd_scale(xp, gamma, renormalise(xp, e_hi, e_lo + e_hi * t[1]))
            g = tuple(xp.where(live, v, xp.zeros_like(v)) for v in _dd_times(xp, g, factor))
        if class_mean:
            g = tuple(xp.expand_dims(v, axis=-1) * xp.ones_like(unit[0]) for v in _dd_over(xp, g, classes))
        if keep is not None:
            g = tuple(xp.where(keep, v, xp.zeros_like(v)) for v in g)
        # dL/dErr = g / Den, dL/dDen = -g L / Den; clamped (L = 1 - Num / eps): dL/dNum = -g / eps
        g_err = _dd_over(xp, g, den1)
        g_den = _dd_neg(_dd_times(xp, g_err, unit))
        zero = xp.zeros_like(g[0])
        by_sum = [(err_c, g_err), (den_c, g_den)]
        if ok is not None:
            g_err = tuple(xp.where(ok, v, zero) for v in g_err)
            g_den = tuple(xp.where(ok, v, zero) for v in g_den)
            g_num = tuple(xp.where(ok, zero, v) for v in _dd_neg(_dd_over(xp, g, _dd(xp, xp.full_like(g[0], eps)))))
            by_sum = [(err_c, g_err), (den_c, g_den), (num_c, g_num)]
        # d(sum)/dp for each basis sum
        basis = {"I": lambda: _dd(xp, yf), "FP": lambda: one_minus_y, "FN": lambda: _dd(xp, -yf),
                 "SQ": lambda: _dd_scale(xp, 2.0, d), "P2": lambda: _dd_scale(xp, 2.0, p)}
        g_p = _dd(xp, xp.zeros_like(p[0]))
        for k, grad in basis.items():
            if all(k not in c for c in (num_c, den_c, err_c)):
                continue
            coef = _dd(xp, zero)
            for coefs, gk in by_sum:
                if k in coefs:
                    coef = _dd_plus(xp, coef, _dd_scale(xp, coefs[k], gk))
            coef = tuple(_aggregate_vjp(xp, v, agg, sums["G"][0]) for v in coef)
            if w is not None:
                coef = _dd_times(xp, coef, w)
            coef = tuple(xp.expand_dims(v, axis=2) * xp.ones_like(p[0]) for v in coef)
            g_p = _dd_plus(xp, g_p, _dd_times(xp, coef, grad()))
        g_p = tuple(xp.reshape(v, tuple(yy.shape)) for v in g_p)
        if drop:
            zero_class = xp.zeros_like(x[:, :1, ...])
            g_p = tuple(xp.concat([zero_class, v], axis=1) for v in g_p)
        return _activation_vjp_dd(xp, g_p, p_full, q_full, p_scaled, activation)

    return out, backward


def _activation_vjp_dd(xp, g, p, q, p_scaled, activation):
    """The activation's backward of ``g = dL/dp`` (double-doubles), rounded once: sigmoid ``g p q``; softmax
    ``p_c (g_c - sum_j p_j g_j)`` with the ``g`` measured from the row maximum's (a shift of every ``g``,
    exact) and ``p`` scaled where it is below the normal range (:func:`_softmax_dd`)."""
    if activation == "none":
        return g[0] + g[1]
    if activation == "sigmoid":
        out = _dd_times(xp, _dd_times(xp, g, p), q)
        return out[0] + out[1]
    top = xp.argmax(p[0], axis=1, keepdims=True)
    g_top = tuple(xp.take_along_axis(v, top, axis=1) * xp.ones_like(v) for v in g)
    gr = _dd_plus(xp, g, _dd_neg(g_top))
    p_sc, unscale = p_scaled
    mean = _dd_total(xp, tuple(v * unscale for v in _dd_times(xp, p_sc, gr)), (1,))
    mean = tuple(xp.expand_dims(v, axis=1) * xp.ones_like(gr[0]) for v in mean)
    out = _dd_times(xp, p_sc, _dd_plus(xp, gr, _dd_neg(mean)))
    return (out[0] + out[1]) * unscale


# ------------------------------------------------------------------------------------------------
# Shared declarations.

_INPUT = Input("input", shape="N C *", domain=D.seg_scores, doc="scores (logits) or probabilities, class axis 1")
_TARGET = Input(
    "target", shape="N C *", differentiable=False, values=(0.0, 1.0), domain=D.seg_targets,
    doc="one-hot or probability targets (integer class indices (N, *) are one-hot encoded first)",
)
_ACTIVATION = Param(
    "activation", "softmax", kind="choice", choices=("softmax", "sigmoid", "none"), grid=("sigmoid", "none"),
    doc="softmax over the class axis, per-element sigmoid, or none (input holds probabilities)",
)
_CONVENTION = Param(
    "convention", "monai", kind="choice", choices=_LIBRARY_PRESETS, grid=_LIBRARY_PRESETS,
    doc="library preset: smoothing/eps placement, aggregation axes, empty-mask rule (refloss.losses.segmentation.CONVENTIONS)",
)
_SQUARED = Param("squared", False, kind="bool", grid=(True,), doc="V-Net denominator sum p^2 + sum y^2 (MONAI squared_pred)")
_BACKGROUND = Param(
    "include_background", True, kind="bool", grid=(False,),
    doc="False drops class 0 after the activation (MONAI include_background, optax ignore_background); no effect when C = 1",
)
_ALPHA = Param("alpha", 0.5, low=0.0, grid=(0.3,), doc="Tversky weight of the term the convention assigns to alpha")
_BETA = Param("beta", 0.5, low=0.0, grid=(0.7,), doc="Tversky weight of the other term")
_REFS_OVERLAP = [
    "MONAI monai/losses/dice.py, tversky.py (HEAD d388d1c6)",
    "segmentation_models_pytorch losses/_functional.py, dice.py, jaccard.py, tversky.py (HEAD bd7f877f)",
    "kornia kornia/losses/dice.py, tversky.py (HEAD b4f5a78a)",
    "keras keras/src/losses/losses.py dice, tversky (HEAD 3422977a)",
    "optax optax/losses/_segmentation.py dice_loss",
    "Milletari et al., V-Net (2016), squared denominators",
]
_SHAPES_DOC = """
    Shapes: ``input (N, C, *)``; ``target (N, C, *)`` in [0, 1] or integer ``(N, *)`` in ``[0, C)``. The
    unreduced loss is ``(N, C')`` under ``monai`` (C' = C, or C - 1 without background), ``(N,)`` under
    ``kornia``, ``kornia_macro`` and ``optax``, and 0-d (one value per batch) under ``smp`` and ``keras``.
"""


def _with_shapes(forward):
    forward.__doc__ = forward.__doc__.rstrip() + "\n" + _SHAPES_DOC
    return forward


def _overlap_forward(kind):
    def forward(xp, x, y, *, convention, activation, include_background, squared=False, alpha=0.5, beta=0.5, gamma=None):
        conv = CONVENTIONS[convention]
        out, _ = _core(xp, x, y, formula=_formula(kind, conv, squared, alpha, beta), conv=conv,
                       activation=activation, include_background=include_background, gamma=gamma)
        return out

    def vjp(xp, cot, x, y, *, convention, activation, include_background, squared=False, alpha=0.5, beta=0.5, gamma=None):
        conv = CONVENTIONS[convention]
        _, backward = _core(xp, x, y, formula=_formula(kind, conv, squared, alpha, beta), conv=conv,
                            activation=activation, include_background=include_background, gamma=gamma)
        return backward(cot), None

    return forward, vjp


_dice_f, _dice_v = _overlap_forward("dice")
_jac_f, _jac_v = _overlap_forward("jaccard")
_tv_f, _tv_v = _overlap_forward("tversky")


@loss(
    family="segmentation",
    inputs=[_INPUT, _TARGET],
    params=[_CONVENTION, _ACTIVATION, _SQUARED, _BACKGROUND],
    route=_index_targets,
    counterparts={
        "monai": "monai.losses.DiceLoss(softmax=True, to_onehot_y=...) (convention='monai')",
        "smp": "segmentation_models_pytorch.losses.DiceLoss('multiclass') (convention='smp')",
        "kornia": "kornia.losses.dice_loss(average='micro'|'macro')",
        "keras": "keras.losses.dice (convention='keras', activation='none')",
        "optax": "optax.losses.dice_loss (convention='optax', channels-last: move the class axis to 1)",
    },
    references=_REFS_OVERLAP,
)
@_with_shapes
def dice_loss(xp, input, target, *, convention, activation, squared, include_background):
    """Soft Dice loss ``1 - (2I + s_n) / (P + G + s_d)`` under a library convention.

    ``P = sum p`` and ``G = sum y`` (``squared``: ``sum p^2``, ``sum y^2``); computed as
    ``(FP + FN + s_d - s_n) / (2I + FP + FN + s_d)`` (squared: ``(SQ + s_d - s_n) / (P2 + G2 + s_d)``).
    Conventions: ``monai`` s_n = s_d = 1e-5 per (sample, class); ``smp`` 2I / clamp_min(P + G, 1e-7)
    per class over the batch, empty classes 0, mean over classes; ``kornia`` 2I / (P + G + 1e-8) per
    sample over all classes (micro), ``kornia_macro`` per class then the class mean; ``keras``
    2I / (P + G + 1e-7) over the whole batch; ``optax`` (I + 1) / (I + FP/2 + FN/2 + 1) per (sample,
    class), mean over classes.

    Gradient: ``dL/dp = (dErr - L dDen) / (Den + s_d)`` with ``dErr/dp = 1 - 2y`` (``FP + FN``) and
    ``dDen/dp = 1`` (squared: ``2(p - y)`` and ``2p``), then the activation's backward.
    """
    return _dice_f(xp, input, target, convention=convention, activation=activation,
                   include_background=include_background, squared=squared)


@dice_loss.defvjp
def _dice_loss_vjp(xp, cot, input, target, *, convention, activation, squared, include_background):
    return _dice_v(xp, cot, input, target, convention=convention, activation=activation,
                   include_background=include_background, squared=squared)


@loss(
    family="segmentation",
    inputs=[_INPUT, _TARGET],
    params=[_CONVENTION, _ACTIVATION, _SQUARED, _BACKGROUND],
    route=_index_targets,
    counterparts={
        "monai": "monai.losses.DiceLoss(jaccard=True) (convention='monai')",
        "smp": "segmentation_models_pytorch.losses.JaccardLoss('multiclass') (convention='smp')",
        "optax": "optax.losses.dice_loss(alpha=1, beta=1) (convention='optax')",
    },
    references=_REFS_OVERLAP,
)
@_with_shapes
def jaccard_loss(xp, input, target, *, convention, activation, squared, include_background):
    """Soft Jaccard (IoU) loss ``1 - (kI + s_n) / (k(P + G - I) + s_d)``.

    ``k = 2`` under ``monai`` (MONAI keeps the Dice numerator 2I and doubles the union, so with MONAI's
    smoothing ``IoU = Dice / (2 - Dice)`` holds exactly, smoothing included), else 1. Evaluated as
    ``(k(FP + FN) + s_d - s_n) / (k(I + FP + FN) + s_d)`` (squared: ``U = I + SQ``, ``Err = SQ``).
    kornia and Keras have no Jaccard loss: their presets apply their eps placement to I / U; optax's is
    its dice_loss with alpha = beta = 1, ``(I + 1) / (U + 1)``.

    Gradient: as :func:`dice_loss` with ``dErr/dp = k(1 - 2y)``, ``dDen/dp = k(1 - y)``.
    """
    return _jac_f(xp, input, target, convention=convention, activation=activation,
                  include_background=include_background, squared=squared)


@jaccard_loss.defvjp
def _jaccard_loss_vjp(xp, cot, input, target, *, convention, activation, squared, include_background):
    return _jac_v(xp, cot, input, target, convention=convention, activation=activation,
                  include_background=include_background, squared=squared)


@loss(
    family="segmentation",
    inputs=[_INPUT, _TARGET],
    params=[_ALPHA, _BETA, _CONVENTION, _ACTIVATION, _BACKGROUND],
    route=_index_targets,
    counterparts={
        "monai": "monai.losses.TverskyLoss (alpha weighs FP)",
        "smp": "segmentation_models_pytorch.losses.TverskyLoss(gamma=1) (alpha weighs FP)",
        "kornia": "kornia.losses.tversky_loss (alpha weighs FP)",
        "keras": "keras.losses.tversky (alpha multiplies sum((1 - y_pred) y_true) = FN)",
        "optax": "optax.losses.dice_loss(alpha, beta) (alpha weighs FP)",
    },
    references=_REFS_OVERLAP + ["Salehi et al., Tversky loss (2017)"],
)
@_with_shapes
def tversky_loss(xp, input, target, *, alpha, beta, convention, activation, include_background):
    """Tversky loss ``1 - (I + s_n) / (I + a FP + b FN + s_d)``.

    Which term ``alpha`` weighs is the convention's: FP for monai, smp, kornia and optax; **FN for
    keras** (its code multiplies ``sum((1 - y_pred) y_true)`` by alpha although the docstring says
    false positives). Evaluated as ``(a FP + b FN + s_d - s_n) / (I + a FP + b FN + s_d)``.

    Gradient: ``dErr/dp = a (1 - y) - b y``, ``dDen/dp = y + a (1 - y) - b y`` (a, b as assigned).
    """
    return _tv_f(xp, input, target, convention=convention, activation=activation,
                 include_background=include_background, alpha=alpha, beta=beta)


@tversky_loss.defvjp
def _tversky_loss_vjp(xp, cot, input, target, *, alpha, beta, convention, activation, include_background):
    return _tv_v(xp, cot, input, target, convention=convention, activation=activation,
                 include_background=include_background, alpha=alpha, beta=beta)


_FT_CONVENTION = Param(
    "convention", "abraham", kind="choice", choices=("abraham",) + _LIBRARY_PRESETS, grid=("abraham",) + _LIBRARY_PRESETS,
    doc="'abraham' (original: whole batch, smooth 1, alpha weighs FN) or a library preset for the Tversky index",
)


@loss(
    family="segmentation",
    inputs=[_INPUT, _TARGET],
    params=[
        Param("alpha", 0.7, low=0.0, grid=(0.5,), doc="weight of the term the convention assigns to alpha (FN under abraham)"),
        Param("beta", 0.3, low=0.0, grid=(0.5,), doc="weight of the other term"),
        Param("gamma", 0.75, low=0.0, grid=(1.0, 2.0), doc="focal exponent on 1 - T (the paper's 1/gamma)"),
        _FT_CONVENTION, _ACTIVATION, _BACKGROUND,
    ],
    route=_index_targets,
    counterparts={
        "abraham": "nabsabraham/focal-tversky-unet losses.focal_tversky (alpha=0.7, gamma=0.75)",
        "smp": "segmentation_models_pytorch.losses.TverskyLoss(gamma=...): mean over classes, then ** gamma",
    },
    references=["Abraham & Khan, A novel focal Tversky loss function (2019)", *_REFS_OVERLAP[:2]],
)
@_with_shapes
def focal_tversky_loss(xp, input, target, *, alpha, beta, gamma, convention, activation, include_background):
    """Focal Tversky loss ``(1 - T)^gamma``, ``T`` the Tversky index of the convention.

    ``abraham``: ``T = (I + 1) / (I + alpha FN + beta FP + 1)`` over the whole batch flattened
    (classes included), the original code's ``alpha = 0.7``, ``beta = 1 - alpha``, ``gamma = 0.75``. Under
    a library preset the power is applied to that preset's unreduced Tversky loss (smp: after the
    class mean, as its TverskyLoss does; monai: per (sample, class)).

    Gradient: ``gamma (1 - T)^(gamma - 1)`` times the Tversky gradient; at ``1 - T = 0`` (the global
    minimum, where the derivative is infinite for gamma < 1) the gradient is 0, a subgradient there.
    """
    return _tv_f(xp, input, target, convention=convention, activation=activation,
                 include_background=include_background, alpha=alpha, beta=beta, gamma=gamma)


@focal_tversky_loss.defvjp
def _focal_tversky_loss_vjp(xp, cot, input, target, *, alpha, beta, gamma, convention, activation, include_background):
    return _tv_v(xp, cot, input, target, convention=convention, activation=activation,
                 include_background=include_background, alpha=alpha, beta=beta, gamma=gamma)


_GDL_CONV = dict(CONVENTIONS["monai"], agg="sample")


@loss(
    family="segmentation",
    inputs=[_INPUT, _TARGET],
    params=[
        Param("w_type", "square", kind="choice", choices=("square", "simple", "uniform"), grid=("simple", "uniform"),
              doc="class weights 1/G^2, 1/G or 1 (MONAI w_type)"),
        _ACTIVATION, _BACKGROUND,
    ],
    route=_index_targets,
    counterparts={"monai": "monai.losses.GeneralizedDiceLoss(softmax=True)"},
    references=["Sudre et al., Generalised Dice overlap (2017)", "MONAI monai/losses/dice.py GeneralizedDiceLoss (HEAD d388d1c6)"],
)
def generalized_dice_loss(xp, input, target, *, w_type, activation, include_background):
    """Generalized Dice loss (MONAI): ``1 - (2 sum_c w_c I_c + 1e-5) / (sum_c w_c (P_c + G_c) + 1e-5)``
    per sample.

    ``w_c = 1 / G_c^2`` (``simple``: ``1 / G_c``; ``uniform``: 1) from the target, held constant; a
    class absent from the sample (infinite weight) takes the sample's largest finite weight, and a
    sample with no foreground at all gets weights 0 and loss 0 (MONAI's rule). Evaluated as
    ``sum_c w_c (FP_c + FN_c) / (sum_c w_c (2 I_c + FP_c + FN_c) + 1e-5)``.

    Gradient: ``dL/dp_ic = w_c ((1 - 2 y_ic) - L) / (Den + 1e-5)``, then the activation's backward.

    Shapes: ``input (N, C, *)``, ``target (N, C, *)`` or indices ``(N, *)``; unreduced ``(N,)``.
    """
    out, _ = _core(xp, input, target, formula=_formula("dice", _GDL_CONV), conv=_GDL_CONV, activation=activation,
                   include_background=include_background, w_type=w_type)
    return out


@generalized_dice_loss.defvjp
def _generalized_dice_loss_vjp(xp, cot, input, target, *, w_type, activation, include_background):
    _, backward = _core(xp, input, target, formula=_formula("dice", _GDL_CONV), conv=_GDL_CONV,
                        activation=activation, include_background=include_background, w_type=w_type)
    return backward(cot), None


# ------------------------------------------------------------------------------------------------
# Lovasz: sort, then the Lovasz extension of the Jaccard loss (bermanmaxim/LovaszSoftmax).


def _lovasz_sorted(xp, errors, fg, complement=None):
    """Sort ``errors`` (rows of ``(B, M)``) in decreasing order and return ``(order, e_sorted, grad)``,
    ``grad`` the Lovasz gradient of the Jaccard loss at the sorted ground truth (Berman's
    ``lovasz_grad``: ``J_k = 1 - (G - cumsum(fg)_k) / (G + cumsum(1 - fg)_k)``, its increments in
    closed form). ``complement`` (``1 - errors``, exact) breaks the ties of errors that differ below
    an ulp of 1.

    Ties: a stable descending sort keeps tied errors in index order. The value does not depend on
    the order among ties (the Lovasz extension is continuous); the gradient does (``torch.sort`` is
    not stable, so PyTorch's order among ties is unspecified)."""
    if complement is None:
        order = xp.argsort(errors, axis=-1, descending=True, stable=True)
    else:
        # errors that round to the same float (1 - 1e-30 and 1 - 1e-40 are both 1.0) are ordered by
        # their exact complements 1 - e, smallest first: a stable sort by the complement, then by e
        first = xp.argsort(complement, axis=-1, stable=True)
        by_e = xp.argsort(xp.take_along_axis(errors, first, axis=-1), axis=-1, descending=True, stable=True)
        order = xp.take_along_axis(first, by_e, axis=-1)
    e_s = xp.take_along_axis(errors, order, axis=-1)
    fg_s = xp.take_along_axis(fg, order, axis=-1)
    gts = xp.sum(fg_s, axis=-1, keepdims=True)
    inter = gts - xp.cumulative_sum(fg_s, axis=-1)
    union = gts + xp.cumulative_sum(1 - fg_s, axis=-1)  # >= 1: no 0/0
    jac = 1 - inter / union
    # The increments J_k - J_{k-1} in closed form instead of differenced (which cancels to a few ulp
    # of J): with i, u the intersection and union before step k, J_k - J_{k-1} = (i (1 - fg_k) + fg_k u)
    # / (u (u + 1 - fg_k)), a ratio of non-negative terms; at k = 1 with u = 0 (no foreground) it is J_1.
    i_prev = inter + fg_s
    u_prev = union - (1 - fg_s)
    pos = u_prev > 0
    u_safe = xp.where(pos, u_prev, xp.ones_like(u_prev))
    step = (i_prev * (1 - fg_s) + fg_s * u_safe) / (u_safe * union)
    return order, e_s, xp.where(pos, step, jac)


def _unsort(xp, g_sorted, order):
    return xp.take_along_axis(g_sorted, xp.argsort(order, axis=-1, stable=True), axis=-1)


def _rows(xp, a, per_image):
    """``(N, *)`` -> ``(N, M)`` per image, or ``(1, N M)`` for the whole batch."""
    n = a.shape[0]
    m = math.prod(a.shape[1:])
    return xp.reshape(a, (n, m)) if per_image else xp.reshape(a, (1, n * m))


@loss(
    family="segmentation",
    inputs=[
        Input("input", shape="N *", domain=D.hinge_scores, doc="binary logits"),
        Input("target", shape="N *", differentiable=False, values=(0.0, 1.0), domain=D.hinge_targets, doc="0/1 labels"),
    ],
    params=[Param("per_image", True, kind="bool", grid=(False,), doc="one loss per image (Berman, kornia) or one over the batch (smp)")],
    counterparts={
        "berman": "lovasz_losses.lovasz_hinge(per_image=True)",
        "smp": "segmentation_models_pytorch.losses.LovaszLoss('binary') (per_image=False)",
        "kornia": "kornia.losses.lovasz_hinge_loss (per image, (N, 1, H, W) input)",
    },
    references=["Berman et al., The Lovasz-Softmax loss (2018); bermanmaxim/LovaszSoftmax pytorch/lovasz_losses.py @7d48792d"],
)
def lovasz_hinge_loss(xp, input, target, *, per_image):
    """Lovasz hinge: ``sum_k relu(e_(k)) g_k`` with hinge errors ``e = 1 - x (2y - 1)`` sorted in
    decreasing order and ``g`` the Lovasz gradient of the Jaccard loss at the sorted labels.

    Gradient (permutation held fixed; the loss is piecewise linear): ``dL/dx_j = -(2 y_j - 1)
    1[e_j > 0] g_rank(j)`` (relu'(0) = 0, as PyTorch). Ties: see :func:`_lovasz_sorted`.
    An empty image (no foreground) gives ``g = (1, 0, ...)``, the loss ``relu(max e)``.

    Shapes: ``input, target (N, *)``; unreduced ``(N,)`` per image, 0-d over the batch.
    """
    x, y = _rows(xp, input, per_image), _rows(xp, target, per_image)
    _, e_s, g = _lovasz_sorted(xp, 1 - x * (2 * y - 1), y)
    out = xp.sum(xp.maximum(e_s, xp.zeros_like(e_s)) * g, axis=-1)
    return out if per_image else xp.reshape(out, ())


@lovasz_hinge_loss.defvjp
def _lovasz_hinge_vjp(xp, cot, input, target, *, per_image):
    x, y = _rows(xp, input, per_image), _rows(xp, target, per_image)
    sign = 2 * y - 1
    order, e_s, g = _lovasz_sorted(xp, 1 - x * sign, y)
    c = xp.reshape(cot * xp.ones(e_s.shape[:1], dtype=x.dtype), (e_s.shape[0], 1))
    g_e = _unsort(xp, xp.where(e_s > 0, g, xp.zeros_like(g)) * c, order)
    return xp.reshape(-sign * g_e, input.shape), None


def _class_rows(xp, a, per_image):
    """``(N, C, *)`` -> ``(N, C, M)`` per image, or ``(1, C, N M)`` for the whole batch."""
    n, c = a.shape[0], a.shape[1]
    m = math.prod(a.shape[2:])
    a = xp.reshape(a, (n, c, m))
    if per_image:
        return a
    return xp.reshape(xp.permute_dims(a, (1, 0, 2)), (1, c, n * m))


def _lovasz_softmax_parts(xp, input, target, classes, per_image, activation):
    probs = _probabilities_dd(xp, input, activation)
    p, q = probs[0][0], probs[1][0]
    pr, qr, fg = _class_rows(xp, p, per_image), _class_rows(xp, q, per_image), _class_rows(xp, target, per_image)
    d = pr * (1 - fg) - qr * fg  # p - fg without cancellation
    comp = xp.where(fg == 1, pr, xp.where(fg == 0, qr, 1 - xp.abs(d)))  # 1 - |p - fg|, exactly at hard fg
    order, e_s, g = _lovasz_sorted(xp, xp.abs(d), fg, comp)
    per_class = xp.sum(e_s * g, axis=-1)
    if classes == "present":
        present = xp.astype(xp.sum(fg, axis=-1) > 0, p.dtype)
        count = xp.sum(present, axis=-1, keepdims=True)
        weight = present / xp.maximum(count, xp.ones_like(count))  # no class present: loss 0 (Berman's mean([]) = 0)
    else:
        weight = xp.ones_like(per_class) / per_class.shape[-1]
    return probs, d, order, g, per_class, weight


@loss(
    family="segmentation",
    inputs=[
        Input("input", shape="N C *", domain=D.lovasz_scores, doc="logits (softmax applied) or probabilities"),
        Input("target", shape="N C *", differentiable=False, values=(0.0, 1.0), domain=D.lovasz_targets,
              doc="one-hot targets (integer class indices (N, *) are one-hot encoded first)"),
    ],
    params=[
        Param("classes", "present", kind="choice", choices=("present", "all"), grid=("all",),
              doc="average over classes present in the target (Berman, smp) or all classes (kornia)"),
        Param("per_image", False, kind="bool", grid=(True,), doc="one loss per image (kornia) or over the batch (Berman, smp)"),
        Param("activation", "softmax", kind="choice", choices=("softmax", "none"), grid=("none",),
              doc="softmax over the class axis, or none (input holds probabilities)"),
    ],
    route=_index_targets,
    counterparts={
        "berman": "lovasz_losses.lovasz_softmax(probas, labels) (activation='none')",
        "smp": "segmentation_models_pytorch.losses.LovaszLoss('multiclass')",
        "kornia": "kornia.losses.lovasz_softmax_loss (per_image=True, classes='all')",
    },
    references=["Berman et al., The Lovasz-Softmax loss (2018); bermanmaxim/LovaszSoftmax pytorch/lovasz_losses.py @7d48792d"],
)
def lovasz_softmax_loss(xp, input, target, *, classes, per_image, activation):
    """Lovasz-softmax: per class ``c``, ``sum_k e_(k) g_k`` with errors ``e = |fg_c - p_c|`` sorted in
    decreasing order and ``g`` the Lovasz gradient at the sorted ``fg_c``; averaged over the classes
    present in the target (``classes='present'``: none present gives 0) or over all classes (an
    absent class contributes its largest error).

    Gradient (permutation fixed): ``dL/dp_jc = w_c sign(p_jc - fg_jc) g_rank(j)`` (sign(0) = 0), then
    the softmax backward. Ties: see :func:`_lovasz_sorted`.

    Shapes: ``input (N, C, *)``; ``target (N, C, *)`` one-hot or indices ``(N, *)``; unreduced ``(N,)``
    per image, 0-d over the batch.

    Infinite logits (``activation='softmax'``) give the limit, NaN where it depends on how they grow
    (:func:`refloss.xp.saturated_softmax`): a pixel whose largest logit is a sole
    ``+inf`` has probability 1 there and 0 elsewhere, and gradient 0 (the softmax saturates); tied
    ``+inf`` logits, or all ``-inf``, make the pixel's probabilities, and so the loss, NaN.
    """
    *_, per_class, weight = _lovasz_softmax_parts(xp, input, target, classes, per_image, activation)
    out = xp.sum(per_class * weight, axis=-1)
    return out if per_image else xp.reshape(out, ())


@lovasz_softmax_loss.defvjp
def _lovasz_softmax_vjp(xp, cot, input, target, *, classes, per_image, activation):
    probs, d, order, g, _, weight = _lovasz_softmax_parts(xp, input, target, classes, per_image, activation)
    g_e = _unsort(xp, g * xp.expand_dims(weight, axis=-1), order)
    g_rows = xp.sign(d) * g_e
    n, k = input.shape[0], input.shape[1]
    m = math.prod(input.shape[2:])
    if not per_image:
        g_rows = xp.permute_dims(xp.reshape(g_rows, (k, n, m)), (1, 0, 2))
    g_p = xp.reshape(g_rows, input.shape)
    # The cotangent is applied last: the softmax backward cancels, and a cotangent folded in before
    # it (1/N under 'mean') would be rounded inside that cancellation.
    cot = xp.reshape(cot, (n,) + (1,) * (input.ndim - 1)) if per_image else cot
    return _activation_vjp_dd(xp, _dd(xp, g_p), *probs, activation) * cot, None
