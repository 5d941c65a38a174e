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
backward is written once (:func:`_activation_vjp`): softmax ``p (g - sum_c p g)``, sigmoid
``g p (1 - p)``. Targets are not differentiated (the VJP returns ``None`` for them).
"""

from __future__ import annotations

import math

import array_api_compat

from .. import domains as D
from ..loss import Input, Param, _check_labels, _check_values, _match_shape, loss
from ..xp import is_floating, is_integer, namespace, one_hot, sigmoid, softmax

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
# Activation and targets, written once.


def _activate(xp, x, activation):
    """``(p, q)`` with ``q = 1 - p`` computed without cancellation: ``sigmoid(-x)`` for sigmoid; for
    softmax the sum of the other classes where ``p > 1/2`` (there all others are below 1/2), else the
    exact-enough ``1 - p``."""
    if activation == "sigmoid":
        return sigmoid(x, xp=xp), sigmoid(-x, xp=xp)
    if activation == "softmax":
        p = softmax(x, axis=1, xp=xp)
        small = p <= 0.5
        others = xp.sum(xp.where(small, p, xp.zeros_like(p)), axis=1, keepdims=True)
        return p, xp.where(small, 1 - p, others * xp.ones_like(p))
    return x, 1 - x


def _activation_vjp(xp, g, p, q, activation):
    """Backward of :func:`_activate` given ``g = dL/dp``."""
    if activation == "sigmoid":
        return g * p * q
    if activation == "softmax":
        # p_c (g_c - sum_j p_j g_j), with g measured from r = g at the most probable class (sum_j p_j = 1):
        # (g_c - r) - sum_j p_j (g_j - r). For that class the factor is -sum_{j != c} p_j (g_j - r), of the
        # size of the result (the plain form subtracts two O(|g|) numbers to get O((1 - p_c) |g|)), and
        # equal g's (a symmetric pixel) give exactly 0, not the rounding of sum_j p_j.
        top = xp.argmax(p, axis=1, keepdims=True)
        r = xp.take_along_axis(g, top, axis=1)
        gr = g - r
        return p * (gr - xp.sum(p * gr, axis=1, keepdims=True))
    return g


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

# dB/dp for each basis sum, as a function of (p, y, d = p - y).
_BASIS_GRAD = {
    "I": lambda p, y, d: y,
    "FP": lambda p, y, d: 1 - y,
    "FN": lambda p, y, d: -y,
    "SQ": lambda p, y, d: 2 * d,
    "P2": lambda p, y, d: 2 * p,
}


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


def _setup(xp, x, y, activation, include_background):
    """Probabilities and targets as ``(N, C', M)`` (background dropped if asked and C > 1)."""
    p, q = _activate(xp, x, activation)
    drop = (not include_background) and x.shape[1] > 1
    if drop:
        p, q, y = p[:, 1:, ...], q[:, 1:, ...], y[:, 1:, ...]
    return _flat(xp, p), _flat(xp, q), _flat(xp, y), p, q, drop


def _basis(xp, p, q, y, names):
    d = p * (1 - y) - q * y  # p - y, exact at hard y and saturated p
    terms = {"I": p * y, "FP": p * (1 - y), "FN": q * y, "SQ": d * d, "P2": p * p, "G2": y * y, "G": y}
    return {k: xp.sum(terms[k], axis=2) for k in names}, d


def _aggregate(xp, b, agg):
    if agg == "sample_class":
        return b
    if agg == "batch_class":
        return xp.sum(b, axis=0)
    if agg == "sample":
        return xp.sum(b, axis=1)
    return xp.sum(b)


def _aggregate_vjp(xp, g, agg, like):
    if agg == "batch_class":
        g = xp.expand_dims(g, axis=0)
    elif agg == "sample":
        g = xp.expand_dims(g, axis=1)
    return g * xp.ones_like(like)


def _combine(coef, sums):
    out = 0.0
    for k, c in coef.items():
        out = out + c * sums[k]
    return out


def _gdl_weights(xp, g, w_type):
    """MONAI GeneralizedDiceLoss weights from the target sums ``G (N, C')`` (constant): ``1/G^2``,
    ``1/G`` or 1; an infinite weight (empty class) takes the largest finite weight of its sample
    (0 when the whole sample is empty)."""
    if w_type == "uniform":
        return xp.ones_like(g)
    pos = g > 0
    safe = xp.where(pos, g, xp.ones_like(g))
    w = 1 / (safe * safe) if w_type == "square" else 1 / safe
    w = xp.where(pos, w, xp.zeros_like(w))
    return xp.where(pos, w, xp.max(w, axis=1, keepdims=True) * xp.ones_like(w))


def _core(xp, x, y, *, formula, conv, activation, include_background, gamma=None, w_type=None):
    """Everything the forward and the VJP share: returns the unreduced loss and a backward function."""
    num_c, den_c, err_c = formula
    names = set(num_c) | set(den_c) | set(err_c) | {"G"}
    pf, qf, yf, p_full, q_full, drop = _setup(xp, x, y, activation, include_background)
    sums, d = _basis(xp, pf, qf, yf, names)
    w = None if w_type is None else _gdl_weights(xp, sums["G"], w_type)
    agg = conv["agg"]
    wsum = {k: (v if w is None else w * v) for k, v in sums.items()}
    A = {k: _aggregate(xp, v, agg) for k, v in wsum.items()}
    s_n, s_d, eps = conv["s_n"], conv["s_d"], conv["eps"]
    num = _combine(num_c, A) + s_n
    den = _combine(den_c, A) + s_d
    err = _combine(err_c, A) + (s_d - s_n)
    if eps is None:
        unit = err / den
        ok = None
    else:
        ok = den >= eps
        unit = xp.where(ok, err / xp.where(ok, den, xp.ones_like(den)), 1 - num / eps)
    keep = None
    if conv["mask_empty"]:
        keep = ~(A["G"] == 0)  # NaN masks stay NaN
        unit = xp.where(keep, unit, xp.zeros_like(unit))
    n_classes = unit.shape[-1] if (conv["class_mean"] and unit.ndim) else None
    out = xp.mean(unit, axis=-1) if n_classes is not None else unit
    base = out
    if gamma is not None:
        positive = ~(base == 0)  # NaN propagates through the power
        safe = xp.where(positive, base, xp.ones_like(base))
        out = xp.where(positive, safe**gamma, xp.zeros_like(base) if gamma > 0 else xp.ones_like(base))

    def backward(cot):
        # A constant cotangent (every reduction but 'none' with a random one) is factored out and applied
        # last, so the gradient of 'mean' is the gradient of 'sum' scaled to the last ulp, although the
        # softmax backward cancels.
        g = cot * xp.ones_like(out)
        flat = xp.reshape(g, (-1,))
        if flat.shape[0] and bool(xp.all(flat == flat[0])):
            return backward_unit(xp.ones_like(g)) * flat[0]
        return backward_unit(g)

    def backward_unit(g):
        if gamma is not None:  # d u^gamma = gamma u^(gamma-1); 0 at the minimum u = 0 (a subgradient there)
            g = xp.where(positive, g * gamma * safe ** (gamma - 1), xp.zeros_like(g))
        if n_classes is not None:
            g = xp.expand_dims(g, axis=-1) * xp.ones_like(unit) / n_classes
        if keep is not None:
            g = xp.where(keep, g, xp.zeros_like(g))
        # Two equal forms of dL = -(dNum - S dDen) / B = (dErr - L dDen) / B, S = 1 - L: the first has no
        # cancellation where dNum = 0 (y = 0), the second where y = 1 (dErr <= 0 <= dDen there).
        den_safe = den if ok is None else xp.where(ok, den, xp.ones_like(den))
        zero = xp.zeros_like(g)
        g_err = g / den_safe
        g_den_l = -g * unit / den_safe
        g_num_s = -g / den_safe
        g_den_s = g * (num / den_safe) / den_safe
        if ok is not None:
            g_err, g_den_l, g_num_s, g_den_s = (xp.where(ok, a, zero) for a in (g_err, g_den_l, g_num_s, g_den_s))
            g_num_s = g_num_s + xp.where(ok, zero, -g / eps)
        if ok is not None:  # clamped: L = 1 - Num / eps, and dNum = dDen - dErr
            g_err = g_err + xp.where(ok, zero, g / eps)
            g_den_l = g_den_l - xp.where(ok, zero, g / eps)
        gl = xp.zeros_like(pf)
        gs = xp.zeros_like(pf)
        # |terms| of each form: per element, the form whose terms are smaller cancels less (soft
        # targets: neither form is free of cancellation, e.g. dice's S - 2y; the smaller terms win)
        al = xp.zeros_like(pf)
        as_ = xp.zeros_like(pf)
        for k, grad in _BASIS_GRAD.items():
            if not any(k in c for c in (num_c, den_c, err_c)):
                continue
            dk = grad(pf, yf, d)
            for acc, coefs in (
                ("l", (err_c.get(k, 0.0) * g_err, den_c.get(k, 0.0) * g_den_l)),
                ("s", (num_c.get(k, 0.0) * g_num_s, den_c.get(k, 0.0) * g_den_s)),
            ):
                size = 0.0
                term = 0.0
                for coef in coefs:
                    gk = _aggregate_vjp(xp, coef, agg, sums["G"])
                    if w is not None:
                        gk = gk * w
                    t = xp.expand_dims(gk, axis=2) * dk
                    term = term + t
                    size = size + xp.abs(t)
                if acc == "l":
                    gl, al = gl + term, al + size
                else:
                    gs, as_ = gs + term, as_ + size
        g_p = xp.where(as_ <= al, gs, gl)
        g_p = xp.reshape(g_p, p_full.shape)
        if drop:
            zero = xp.zeros_like(x[:, :1, ...])
            g_p = xp.concat([zero, g_p], axis=1)
            p_all, q_all = _activate(xp, x, activation)
        else:
            p_all, q_all = p_full, q_full
        return _activation_vjp(xp, g_p, p_all, q_all, activation)

    return out, backward


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
    p, q = _activate(xp, input, activation)
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
    return p, q, d, order, g, per_class, weight


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
    """
    *_, per_class, weight = _lovasz_softmax_parts(xp, input, target, classes, per_image, activation)
    out = xp.sum(per_class * weight, axis=-1)
    return out if per_image else xp.reshape(out, ())


@lovasz_softmax_loss.defvjp
def _lovasz_softmax_vjp(xp, cot, input, target, *, classes, per_image, activation):
    p, q, d, order, g, _, weight = _lovasz_softmax_parts(xp, input, target, classes, per_image, activation)
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
    return _activation_vjp(xp, g_p, p, q, activation) * cot, None
