"""Margin losses beyond the seeds: Sub-center ArcFace, AdaCos, CurricularFace, MagFace, AdaFace.

Called like the margin family (:mod:`refloss.losses.margin`): ``loss(features, labels, weights)`` with
raw ``features (N, D)``, integer ``labels (N,)`` in ``[0, C)`` and raw class ``weights (C, D)``
(``(C, K, D)`` for sub-centres), normalised inside, gradients w.r.t. the raw features and weights,
one softmax cross-entropy per sample, the shared reduction.

What these add to the seeds is *where the margin or the logit comes from*:

- Sub-center ArcFace: the class cosine is the largest of K sub-centre cosines;
- AdaCos: the scale is ``sqrt(2) log(C - 1)``, or a dynamic value the caller carries between batches
  (:func:`adacos_dynamic_scale`);
- CurricularFace: non-target "hard" cosines ``c_j > cos(theta_y + m)`` become ``c_j (t + c_j)``, with
  ``t`` an EMA the caller carries (:func:`curricularface_update_t`);
- MagFace: the margin grows with the feature norm ``a = clamp(|x|, l_a, u_a)``, plus a regulariser
  ``lambda_g g(a)``: the only loss here with a gradient path through ``|x|``;
- AdaFace: the margin depends on the detached norm through batch statistics the caller carries
  (:func:`adaface_norm_stats`).

Training state (AdaCos's scale, CurricularFace's ``t``, AdaFace's norm mean and std) is a
*parameter*, never recomputed from the batch inside the loss (margin_losses.md section 14 (d)): golden
values stay reproducible, and the helpers give the official updates. State is a constant of the
backward pass, as in every reference implementation (updated under ``torch.no_grad``).

Written once, on top of margin.py's cores (``_cosines``, ``_target_geometry``, ``_cosine_backward``) and
its double-double arithmetic (cosines, margins and scales carried beyond float64 into the softmax, see
margin.py):

- margin.py's ``_angle_add_rows`` (``cos(theta + m)`` for a scalar or per-sample margin: MagFace,
  AdaFace) and ``_arc_psi`` (the ArcFace target with insightface's conventions, optionally with its
  margin derivative: MagFace);
- margin.py's ``_Logits``, ``_forward`` and ``_vjp``: logits ``s f(cos)`` with ``dz/dcos`` off the target
  scaled elementwise (CurricularFace's hard negatives) or masked by a clamp (AdaFace), an optional
  sub-centre routing and an optional radial path ``dL/d|x| x_hat`` (MagFace), all in double-double.
"""

from __future__ import annotations

import dataclasses
import decimal
import math
import numbers

import numpy as np  # domains, helpers' validation and error messages only

from .. import domains as D
from ..loss import Input, Param, _fail, loss
from ..xp import logsumexp, namespace, one_hot, take_along_axis, to_numpy
from .margin import (
    _angle_add_rows,
    _arc_psi,
    _cosines,
    _empty,
    _forward,
    _Logits,
    _vjp,
    _zero_grads,
    _dd_add,
    _dd_clip,
    _dd_const,
    _dd_decimal,
    _dd_div,
    _dd_expand,
    _dd_gt,
    _dd_mul,
    _dd_neg,
    _dd_sincos,
    _dd_sincos_of,
    _dd_sub,
    _dd_where,
    _dd_zeros,
    _EPS,
    _FEATURES,
    _LABELS,
    _PI,
    _WEIGHTS,
    _check,
    _normalise_rows,
    _scale,
    _scale_dd,
    _target_geometry,
)

__all__ = [
    "subcenter_arcface_loss",
    "adacos_loss",
    "adacos_fixed_scale",
    "adacos_dynamic_scale",
    "curricularface_loss",
    "curricularface_update_t",
    "magface_loss",
    "magface_min_lambda_g",
    "adaface_loss",
    "adaface_norm_stats",
]

_ADAFACE_EPS = 1e-3  # AdaFace's self.eps: cosine clamp, angle clip and the std floor


def _inputs(features_domain, weights=None):
    return [
        dataclasses.replace(_FEATURES, domain=getattr(D, features_domain)),
        _LABELS,
        weights or _WEIGHTS,
    ]


def _margin_param(default, grid, doc="m (radians)"):
    return Param("margin", default, low=0.0, high=math.pi / 2, high_open=True, grid=grid, doc=doc)


# ------------------------------------------------------------------------------------------------
# The shared core.


def _target_logits(xp, cos, hot, scale, value):
    """``z = s cos`` off the target (``cos`` already times ``s``) and ``s psi`` on it, double-doubles."""
    zt = _dd_expand(xp, _dd_mul(xp, value, _scale_dd(xp, scale, cos[0])))
    return xp.where(hot, zt[0], cos[0]), xp.where(hot, zt[1], cos[1])


# ------------------------------------------------------------------------------------------------
# Sub-center ArcFace.


def _subcenter_check(xp, name, features, labels, weights, **params):
    if weights.shape[1] == 0:
        _fail(ValueError, name, "weights", "of at least one sub-centre per class (K >= 1)", f"shape {tuple(weights.shape)}")
    _check(xp, name, features, labels, weights[:, 0, :], normalised=("features",), **params)
    if params["eps"] is None:
        zero = xp.all(weights == 0, axis=2)
        if bool(xp.any(zero)):
            rows = [tuple(int(v) for v in r) for r in np.argwhere(np.asarray(to_numpy(zero)))]
            _fail(ValueError, name, "weights", "sub-centre rows of nonzero norm (pass eps= to clamp the norm)", f"zero row(s) (class, sub-centre) at {rows}")


def _subcenter_logits(xp, features, labels, weights, scale, margin, easy_margin, fallback, eps, grad=True):
    n = features.shape[0]
    c_, k_, d_ = weights.shape
    cos_all, xr, wr = _cosines(xp, features, xp.reshape(weights, (c_ * k_, d_)), eps, scale)
    hi, lo = xp.reshape(cos_all[0], (n, c_, k_)), xp.reshape(cos_all[1], (n, c_, k_))
    # the largest double-double over the sub-centres (high parts first, low parts among their ties),
    # and the first sub-centre that attains it (as argmax)
    top = xp.max(hi, axis=2, keepdims=True)
    tied = hi == top
    top_lo = xp.max(xp.where(tied, lo, xp.full_like(lo, -math.inf)), axis=2, keepdims=True)
    best = xp.argmax(xp.astype(tied & (lo == top_lo), xp.int8), axis=2)
    pick = one_hot(best, k_, axis=-1, xp=xp)
    cos = xp.squeeze(top, axis=2), xp.squeeze(top_lo, axis=2)
    # the target's sub-centre, as a row of the flattened (C K, D) weights: its geometry from |x_hat -+ W_hat|^2
    flat = labels * k_ + take_along_axis(best, labels, axis=1, xp=xp)
    target = _target_geometry(xp, xr, wr, flat)
    value, slope = _arc_psi(xp, target, margin, easy_margin, fallback, grad=grad)
    hot = one_hot(labels, c_, axis=1, xp=xp)
    z = _target_logits(xp, cos, hot, scale, value)
    return _Logits(*z, labels, hot, _scale_dd(xp, scale, z[0]), slope, xr, wr, target, pick=pick)


@loss(
    family="margin",
    inputs=_inputs(
        "subcenter_features",
        Input("weights", shape="C K D", domain=D.subcenter_weights, doc="sub-centre weights W, K rows per class (raw)"),
    ),
    params=[
        _scale(64.0, (30.0,)),
        _margin_param(0.5, (1.2,), "m (radians; PML uses degrees, 28.6)"),
        Param("easy_margin", False, kind="bool", grid=(True,), doc="apply the margin only where cos > 0 (else psi = cos)"),
        Param(
            "fallback", "none", kind="choice", choices=("none", "insightface"), grid=("insightface",),
            doc="none: cos(theta + m) everywhere (insightface subcenter_arcface); insightface: psi = cos - m sin m "
            "where cos <= cos(pi - m) (PML SubCenterArcFaceLoss, as arcface_loss's default)",
        ),
        _EPS,
    ],
    check=_subcenter_check,
    counterparts={
        "insightface": "recognition/subcenter_arcface train_parall.py (loss_K=3, s=64, (m1, m2, m3) = (1, 0.5, 0): "
        "fc7 (N, C K) reshaped (N, C, K) and max over K; fallback='none'; W rows ordered class-major, j K + k)",
        "pml": "pytorch_metric_learning.losses.SubCenterArcFaceLoss(margin=28.6, scale=64, sub_centers=3) "
        "(margin in degrees; W stored (D, C K): pass W.T.reshape(C, K, D); fallback='insightface' (theta <= pi - m); "
        "NaN gradient at |cos| = 1; its **kwargs are not forwarded)",
    },
    references=[
        "Deng et al., Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web Faces, ECCV 2020",
        "margin_losses.md sections 5, 7, 11.1",
    ],
)
def subcenter_arcface_loss(xp, features, labels, weights, *, scale, margin, easy_margin, fallback, eps):
    """Sub-center ArcFace: ``c_ij = max_k cos(x_i, W_jk)``, then ArcFace: ``z_iy = s psi(c_iy)``, ``z_ij = s c_ij``.

    ``psi(c) = cos(theta + m) = c cos m - sin(theta) sin m`` (no acos; ``sin^2 theta`` from
    ``|x_hat -+ W_hat_jk|^2`` of the target's dominant sub-centre), with :func:`arcface_loss`'s conventions:
    ``easy_margin`` (``psi = c`` where ``c <= 0``) and ``fallback='insightface'`` (``psi = c - m sin m``
    where ``c <= cos(pi - m)``). Defaults ``s = 64, m = 0.5, fallback='none'``: the official
    subcenter_arcface code runs insightface's combined margin, which has no fallback; PML's
    SubCenterArcFaceLoss inherits ArcFaceLoss's fallback (pass ``fallback='insightface'``,
    ``margin=math.radians(28.6)``). ``K = 1`` is :func:`arcface_loss`. Not provided: arcface_torch's
    straight-through gradient (the sub-centre code is mxnet, exact gradient).

    Gradient: as ArcFace w.r.t. the class cosines (``G = s (p - onehot) psi'`` on the target, ``s (p - onehot)``
    elsewhere, ``psi' = sin(theta + m) / sin(theta)`` on the margin branch, 1 on the others), routed
    through the max to the arg-max sub-centre of each class only: its row gets the section-0 chain
    rule, the other sub-centres nothing. Ties (equal sub-centre cosines as double-doubles) go to the first
    sub-centre (``argmax``, as ``torch.max``); the max is a kink there. A zero feature row (with ``eps``)
    ties every sub-centre of every class: the loss has no gradient there (this returns the first sub-centres'
    chain rule), and the golden files hold no such case. At ``|c| = 1`` the slope is the
    L'Hopital value (finite, zero subgradient; the references give NaN).

    Shapes: ``features (N, D)``, ``labels (N,)`` in ``[0, C)``, ``weights (C, K, D)`` (row ``W_jk`` is
    sub-centre k of class j). A zero row raises ``ValueError`` unless ``eps`` is given.
    """
    if features.shape[0] == 0:
        return _empty(xp, features)
    return _forward(xp, _subcenter_logits(xp, features, labels, weights, scale, margin, easy_margin, fallback, eps, grad=False))


@subcenter_arcface_loss.defvjp
def _subcenter_vjp(xp, cot, features, labels, weights, *, scale, margin, easy_margin, fallback, eps):
    if features.shape[0] == 0:
        return _zero_grads(xp, features, weights)
    parts = _subcenter_logits(xp, features, labels, weights, scale, margin, easy_margin, fallback, eps)
    return _vjp(xp, cot, parts, weights.shape)


# ------------------------------------------------------------------------------------------------
# AdaCos.


def adacos_fixed_scale(num_classes):
    """AdaCos's fixed scale ``sqrt(2) log(C - 1)`` (3.107 for C = 10, 13.104 for C = 10572); 0 for C = 2."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"adacos_fixed_scale: num_classes must be an integer >= 2, got {num_classes!r}")
    return math.sqrt(2.0) * math.log(num_classes - 1)


def adacos_dynamic_scale(cosines, labels, previous_scale, *, median="target"):
    """AdaCos's dynamic scale for the next step, from a batch's cosines (a Python float).

    ``B_avg = (1/N) sum_i sum_{k != y_i} exp(s_prev c_ik)`` and ``s = log(B_avg) / cos(min(pi/4, theta_med))``
    with ``theta_med`` the median angle: of the **target** angles ``theta_{i, y_i}`` (``median='target'``,
    the paper) or of **all** N C angles (``median='all'``, the 4uiiurz1/pytorch-adacos port). The median
    is the lower one for an even count (``torch.median``); it is read from the cosines (``cos`` of the
    median angle is the matching order statistic of ``c``, clamped to [-1, 1]), so no acos. ``B_avg``
    is summed as a logsumexp (no overflow).

    ``cosines (N, C)``: ``normalize(x) @ normalize(W).T``; ``labels (N,)``; ``previous_scale`` the current
    ``s`` (start from :func:`adacos_fixed_scale`). The port updates ``s`` before scaling the batch:
    ``s = adacos_dynamic_scale(cos, y, s, median='all')`` then ``adacos_loss(x, y, W, scale=s, margin=0.5)``.
    The result can be <= 0 (``B_avg <= 1``, few classes); :func:`adacos_loss` then rejects it.
    """
    name = "adacos_dynamic_scale"
    if median not in ("target", "all"):
        raise ValueError(f"{name}: median must be 'target' or 'all', got {median!r}")
    if isinstance(previous_scale, bool) or not isinstance(previous_scale, numbers.Real) or not (
        math.isfinite(previous_scale) and previous_scale > 0
    ):
        raise ValueError(f"{name}: previous_scale must be a real number in (0, inf), got {previous_scale!r}")
    for arg, x in (("cosines", cosines), ("labels", labels)):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"{name}: {arg} must be an array, got {type(x).__name__}")
    xp = namespace(cosines, labels)
    if cosines.ndim != 2 or cosines.shape[0] == 0 or cosines.shape[1] < 2:
        raise ValueError(f"{name}: cosines must be of shape (N, C) with N >= 1 and C >= 2, got shape {tuple(cosines.shape)}")
    if tuple(labels.shape) != (cosines.shape[0],):
        raise ValueError(f"{name}: labels must be of shape (N={cosines.shape[0]},), got shape {tuple(labels.shape)}")
    lab = np.asarray(to_numpy(labels))
    if lab.dtype.kind not in "iu" or np.any((lab < 0) | (lab >= cosines.shape[1])):
        raise ValueError(f"{name}: labels must be integer class indices in [0, {cosines.shape[1]})")
    hot = one_hot(labels, cosines.shape[1], axis=1, xp=xp)
    z = xp.where(hot, xp.full_like(cosines, -math.inf), previous_scale * cosines)
    log_b_avg = float(logsumexp(xp.reshape(z, (-1,)), axis=0, xp=xp)) - math.log(cosines.shape[0])
    angles = take_along_axis(cosines, labels, axis=1, xp=xp) if median == "target" else xp.reshape(cosines, (-1,))
    # theta ascending is c descending: the lower median angle (index (n - 1) // 2 of the ascending angles)
    # is the cosine at index n - 1 - (n - 1) // 2 = n // 2 of the ascending cosines.
    ordered = xp.sort(angles)
    c_med = min(1.0, max(-1.0, float(ordered[ordered.shape[0] // 2])))
    return log_b_avg / max(math.cos(math.pi / 4), c_med)


def _adacos_check(xp, name, features, labels, weights, **params):
    _check(xp, name, features, labels, weights, **params)
    if params["scale"] is None and weights.shape[0] < 2 and features.shape[0]:
        _fail(ValueError, name, "weights", "of at least 2 classes for scale=None (sqrt(2) log(C - 1))", f"shape {tuple(weights.shape)}")


def _adacos_scale(xp, scale, c, like):
    """The scale as a double-double: ``sqrt(2) log(C - 1)`` for ``scale=None`` (the oracle's exact value,
    not its float64 rounding, which would err by ~|z| 2^-53 in every logit)."""
    if scale is not None:
        return _dd_const(xp, scale, like)
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        return _dd_const(xp, _dd_decimal(decimal.Decimal(2).sqrt() * decimal.Decimal(c - 1).ln()), like)


def _adacos_logits(xp, features, labels, weights, scale, margin, eps, grad=True):
    s = _adacos_scale(xp, scale, weights.shape[0], features)
    cos, xr, wr = _cosines(xp, features, weights, eps, s)
    target = _target_geometry(xp, xr, wr, labels)
    value, slope = _arc_psi(xp, target, margin, False, "none", grad=grad)
    hot = one_hot(labels, cos[0].shape[1], axis=1, xp=xp)
    z = _target_logits(xp, cos, hot, s, value)
    return _Logits(*z, labels, hot, s, slope, xr, wr, target)


@loss(
    family="margin",
    inputs=_inputs("adacos_features", dataclasses.replace(_WEIGHTS, domain=D.adacos_weights)),
    params=[
        dataclasses.replace(
            _scale(None, (10.0,)), nullable=True,
            doc="s: logits are s * cos; None: AdaCos's fixed scale sqrt(2) log(C - 1); a dynamic one from adacos_dynamic_scale",
        ),
        _margin_param(0.0, (0.5,), "m: target logit s cos(theta + m), no fallback (0: the paper; 0.5: the 4uiiurz1 port)"),
        _EPS,
    ],
    check=_adacos_check,
    counterparts={
        "paper": "AdaCos (Zhang et al. 2019): fixed scale = scale=None; dynamic scale = scale=adacos_dynamic_scale(..., median='target')",
        "4uiiurz1": "pytorch-adacos metrics.AdaCos(num_features, num_classes, m=0.50) (then CrossEntropyLoss): margin=0.5, "
        "scale=adacos_dynamic_scale(cos, y, s_prev, median='all') (s updated before use); W stored (C, D); clamps cos to +-(1 - 1e-7)",
    },
    references=[
        "Zhang et al., AdaCos: Adaptively Scaling Cosine Logits for Effectively Learning Deep Face Representations, CVPR 2019",
        "margin_losses.md section 11.2",
    ],
)
def adacos_loss(xp, features, labels, weights, *, scale, margin, eps):
    """AdaCos: softmax cross-entropy of ``z_ij = s cos_ij`` (``z_iy = s cos(theta_iy + m)`` with a margin).

    The paper has no margin (``margin=0``, then this is :func:`normface_loss` at ``s``) and a scale chosen
    from the class count, ``s = sqrt(2) log(C - 1)`` (``scale=None``, the default; 0 for C = 2), or
    updated once per batch from the batch's statistics (:func:`adacos_dynamic_scale`; pass its value as
    ``scale``). The 4uiiurz1 port adds an ArcFace margin ``m = 0.5`` with no fallback (``cos(theta + m)``
    everywhere, via angle addition here, no acos) and clamps cos to ``+-(1 - 1e-7)`` before its acos
    (refloss does not: the two differ only within 1e-7 of ``|c| = 1``).

    Gradient: the scale is a constant of the backward pass (the paper's choice; the port updates it under
    ``torch.no_grad``). ``G = s (p - onehot) psi'`` with ``psi' = sin(theta + m)/sin(theta)`` on the target
    (1 when ``m = 0``), ``s (p - onehot)`` elsewhere, then the section-0 chain rule
    ``dL/dx_i = (I - x_hat x_hat^T)(G W_hat)_i / |x_i|``, ``dL/dW_j = (I - W_hat W_hat^T)(G^T X_hat)_j / |W_j|``.

    Shapes: ``features (N, D)``, ``labels (N,)`` in ``[0, C)``, ``weights (C, D)``.
    """
    if features.shape[0] == 0:
        return _empty(xp, features)
    return _forward(xp, _adacos_logits(xp, features, labels, weights, scale, margin, eps, grad=False))


@adacos_loss.defvjp
def _adacos_vjp(xp, cot, features, labels, weights, *, scale, margin, eps):
    if features.shape[0] == 0:
        return _zero_grads(xp, features, weights)
    return _vjp(xp, cot, _adacos_logits(xp, features, labels, weights, scale, margin, eps), weights.shape)


# ------------------------------------------------------------------------------------------------
# CurricularFace.


def curricularface_update_t(cosines, labels, t, *, momentum=0.01):
    """CurricularFace's EMA of the mean target cosine: ``t <- momentum mean_i(c_{i, y_i}) + (1 - momentum) t``.

    The official module updates its buffer ``t`` (init 0) under ``torch.no_grad`` at every forward,
    **before** using it, with the batch's target cosines (clamped to [-1, 1]); so the ``t`` to pass to
    :func:`curricularface_loss` for a batch is ``curricularface_update_t(cos, y, t_prev)``.
    ``cosines (N, C)``: ``normalize(x) @ normalize(W).T``. Returns a Python float.
    """
    name = "curricularface_update_t"
    for arg, value, low, high in (("t", t, -1.0, 1.0), ("momentum", momentum, 0.0, 1.0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
            raise ValueError(f"{name}: {arg} must be a real number in [{low}, {high}], got {value!r}")
    if not hasattr(cosines, "shape") or cosines.ndim != 2 or cosines.shape[0] == 0:
        raise ValueError(f"{name}: cosines must be an array of shape (N, C) with N >= 1, got {getattr(cosines, 'shape', cosines)!r}")
    if not hasattr(labels, "shape") or tuple(labels.shape) != (cosines.shape[0],):
        raise ValueError(f"{name}: labels must be of shape (N={cosines.shape[0]},), got {getattr(labels, 'shape', labels)!r}")
    lab = np.asarray(to_numpy(labels))
    if lab.dtype.kind not in "iu" or np.any((lab < 0) | (lab >= cosines.shape[1])):
        raise ValueError(f"{name}: labels must be integer class indices in [0, {cosines.shape[1]})")
    xp = namespace(cosines, labels)
    target = xp.clip(take_along_axis(cosines, labels, axis=1, xp=xp), -1.0, 1.0)
    return momentum * float(xp.mean(target)) + (1 - momentum) * t


def _curricular_logits(xp, features, labels, weights, scale, margin, t, eps, grad=True):
    s = _dd_const(xp, scale, features)
    cos, xr, wr = _cosines(xp, features, weights, eps, scale)  # s c: ArcFace's logits off the hard negatives
    target = _target_geometry(xp, xr, wr, labels)
    value, slope = _arc_psi(xp, target, margin, False, "insightface", grad=grad)
    sin_m, cos_m = _dd_sincos_of(xp, margin, features)
    ctm = _angle_add_rows(xp, target, cos_m, sin_m, grad=False)[0]  # the mask's threshold: no fallback
    hot = one_hot(labels, cos[0].shape[1], axis=1, xp=xp)
    hard = _dd_gt(cos, _dd_expand(xp, _dd_mul(xp, ctm, s))) & ~hot  # s c > s ctm, on the double-doubles
    tt = _dd_const(xp, t, features)
    c = _dd_div(xp, cos, s)
    z = _target_logits(xp, _dd_where(xp, hard, _dd_mul(xp, cos, _dd_add(xp, tt, c)), cos), hot, s, value)
    if not grad:
        return _Logits(*z, labels, hot, s, slope, xr, wr, target)
    # dz/dc = s (t + 2 c) on hard negatives (|t + 2 c| <= 3), s elsewhere
    off = _dd_where(xp, hard, _dd_add(xp, tt, _dd_add(xp, c, c)), _dd_const(xp, 1.0, features))
    return _Logits(*z, labels, hot, s, slope, xr, wr, target, off_factor=off)


@loss(
    family="margin",
    inputs=_inputs("curricular_features"),
    params=[
        _scale(64.0, (30.0,)),
        _margin_param(0.5, (0.3,)),
        Param(
            "t", 0.0, low=-1.0, high=1.0, grid=(0.4,),
            doc="the EMA of the mean target cosine, after this batch's update (curricularface_update_t); 0 is the official init",
        ),
        _EPS,
    ],
    check=_check,
    counterparts={
        "official": "HuangYG123/CurricularFace head/metrics.py CurricularFace(in_features, out_features, m=0.5, s=64.) "
        "(then CrossEntropyLoss; t = curricularface_update_t(cos, y, t_buffer); W stored (D, C); NaN gradient at |cos| = 1)",
    },
    references=[
        "Huang et al., CurricularFace: Adaptive Curriculum Learning Loss for Deep Face Recognition, CVPR 2020",
        "margin_losses.md section 11.4",
    ],
)
def curricularface_loss(xp, features, labels, weights, *, scale, margin, t, eps):
    """CurricularFace: ArcFace target, and hard negatives ``c_ij > cos(theta_iy + m)`` modulated to ``c_ij (t + c_ij)``.

    Target: ``z_iy = s psi(c_iy)``, ``psi = cos(theta + m)`` where ``c > cos(pi - m)`` and ``c - m sin m``
    otherwise (insightface's fallback; no easy margin). Non-targets: ``z_ij = s c_ij (t + c_ij)`` where
    ``c_ij > cos(theta_iy + m)`` (hard), ``s c_ij`` otherwise. As the official code, the threshold is the
    angle-addition value ``cos(theta_y + m)`` itself even where the target takes the fallback, and the test
    is strict. ``t`` is the EMA state after the official pre-forward update
    (:func:`curricularface_update_t`; 0 at initialisation, where hard logits are ``s c^2``).
    Defaults ``s = 64, m = 0.5, t = 0``. With no hard negative this is :func:`arcface_loss`.

    Gradient: ``t`` is a constant (updated under ``torch.no_grad``) and the hard mask is piecewise constant
    (the logit jumps where ``c_ij`` crosses the threshold: no derivative there). ``dz_ij/dc_ij = s (t + 2 c_ij)``
    on hard negatives, ``s`` on easy ones, ``s psi'(c_iy)`` on the target (``sin(theta + m)/sin(theta)``, or 1 on
    the fallback); then ``G = (p - onehot) dz/dc`` and the section-0 chain rule.

    Shapes: ``features (N, D)``, ``labels (N,)`` in ``[0, C)``, ``weights (C, D)``.
    """
    if features.shape[0] == 0:
        return _empty(xp, features)
    return _forward(xp, _curricular_logits(xp, features, labels, weights, scale, margin, t, eps, grad=False))


@curricularface_loss.defvjp
def _curricular_vjp(xp, cot, features, labels, weights, *, scale, margin, t, eps):
    if features.shape[0] == 0:
        return _zero_grads(xp, features, weights)
    return _vjp(xp, cot, _curricular_logits(xp, features, labels, weights, scale, margin, t, eps), weights.shape)


# ------------------------------------------------------------------------------------------------
# MagFace.


def magface_min_lambda_g(*, scale=64.0, l_a=10.0, u_a=110.0, l_margin=0.45, u_margin=0.8):
    """The smallest ``lambda_g`` of MagFace's convergence condition, as the official trainer prints it:
    ``s k u_a^2 l_a^2 / (u_a^2 - l_a^2)`` with ``k = (u_margin - l_margin) / (u_a - l_a)`` (the trainer
    hard-codes s = 64). At the defaults 22.59: the trainer's default ``lambda_g = 20`` is below it (the paper
    trains with 35)."""
    if not (0 < l_a < u_a):
        raise ValueError(f"magface_min_lambda_g: need 0 < l_a < u_a, got l_a={l_a!r}, u_a={u_a!r}")
    k = (u_margin - l_margin) / (u_a - l_a)
    return scale * k * u_a**2 * l_a**2 / (u_a**2 - l_a**2)


def _magface_check(xp, name, features, labels, weights, **params):
    _check(xp, name, features, labels, weights, **params)
    if not params["u_a"] > params["l_a"]:
        _fail(ValueError, name, "u_a", f"greater than l_a={params['l_a']!r}", repr(params["u_a"]))
    if not params["u_margin"] >= params["l_margin"]:
        _fail(ValueError, name, "u_margin", f"at least l_margin={params['l_margin']!r} (a non-decreasing margin)", repr(params["u_margin"]))


def _magface_logits(xp, features, labels, weights, scale, l_a, u_a, l_margin, u_margin, lambda_g, easy_margin, eps, grad=True):
    cos, xr, wr = _cosines(xp, features, weights, eps, scale)
    target = _target_geometry(xp, xr, wr, labels)
    norm = xp.reshape(xr.norm, (-1,)), xp.reshape(xr.norm_lo, (-1,))
    a, below, above = _dd_clip(xp, norm, l_a, u_a)
    # d a / d|x| = 1 inside the clamp, bounds included (torch's clamp backward), 0 outside and where eps is the norm
    inside = ~below & ~above
    if xr.clamped is not None:
        inside = inside & ~xp.reshape(xr.clamped, (-1,))

    def const(v):
        return _dd_const(xp, v, features)

    # m = (u_m - l_m) / (u_a - l_a) (a - l_a) + l_m in double-double: the margin enters cos(theta + m) at s = 64
    k = _dd_div(xp, _dd_sub(xp, const(u_margin), const(l_margin)), _dd_sub(xp, const(u_a), const(l_a)))
    m = _dd_add(xp, _dd_mul(xp, k, _dd_sub(xp, a, const(l_a))), const(l_margin))
    value, slope, dm = _arc_psi(xp, target, m, easy_margin, "insightface", margin_slope=True, grad=grad)
    hot = one_hot(labels, cos[0].shape[1], axis=1, xp=xp)
    z = _target_logits(xp, cos, hot, scale, value)
    u2 = _dd_mul(xp, const(u_a), const(u_a))
    extra = _dd_mul(xp, const(lambda_g), _dd_add(xp, _dd_div(xp, a, u2), _dd_div(xp, const(1.0), a)))
    s = const(scale)
    if not grad:
        return _Logits(*z, labels, hot, s, slope, xr, wr, target, extra=extra)
    # g'(a) = 1/u_a^2 - 1/a^2 = (a - u_a)(a + u_a) / (u_a^2 a^2): no cancellation near a = u_a
    dg = _dd_div(xp, _dd_mul(xp, _dd_sub(xp, a, const(u_a)), _dd_add(xp, a, const(u_a))), _dd_mul(xp, u2, _dd_mul(xp, a, a)))
    zero = _dd_const(xp, 0.0, features)
    return _Logits(
        *z, labels, hot, s, slope, xr, wr, target, extra=extra,
        dz_dnorm=_dd_where(xp, inside, _dd_mul(xp, _dd_mul(xp, s, k), dm), zero),
        dextra_dnorm=_dd_where(xp, inside, _dd_mul(xp, const(lambda_g), dg), zero),
    )


@loss(
    family="margin",
    inputs=_inputs("magface_features"),
    params=[
        _scale(64.0, (30.0,)),
        Param("l_a", 10.0, low=0.0, low_open=True, grid=(20.0,), doc="lower bound of the feature norm a"),
        Param("u_a", 110.0, low=0.0, low_open=True, grid=(80.0,), doc="upper bound of the feature norm a (> l_a)"),
        Param("l_margin", 0.45, low=0.0, high=math.pi / 2, high_open=True, grid=(0.3,), doc="margin at a = l_a (radians)"),
        Param("u_margin", 0.8, low=0.0, high=math.pi / 2, high_open=True, grid=(0.6,), doc="margin at a = u_a (radians, >= l_margin)"),
        Param("lambda_g", 20.0, low=0.0, grid=(0.0, 35.0), doc="weight of the regulariser g(a) = a / u_a^2 + 1 / a (trainer 20, paper 35)"),
        Param("easy_margin", True, kind="bool", grid=(False,), doc="True (official): margin only where cos > 0; False: insightface's th / mm fallback"),
        _EPS,
    ],
    check=_magface_check,
    counterparts={
        "official": "IrvingMeng/MagFace models/magface.py MagLinear(scale=64, easy_margin=True) + MagLoss(l_a, u_a, l_margin, u_margin), "
        "loss = loss_id + lambda_g * loss_g (run/trainer.py defaults; W stored (D, C); NaN gradient at |cos| = 1)",
    },
    references=[
        "Meng et al., MagFace: A Universal Representation for Face Recognition and Quality Assessment, CVPR 2021",
        "margin_losses.md section 11.3",
    ],
)
def magface_loss(xp, features, labels, weights, *, scale, l_a, u_a, l_margin, u_margin, lambda_g, easy_margin, eps):
    """MagFace: ArcFace with a margin growing with the feature norm, plus ``lambda_g g(a)``.

    ``a_i = clamp(|x_i|, l_a, u_a)`` (not detached), ``m(a) = l_margin + (u_margin - l_margin)(a - l_a)/(u_a - l_a)``,
    ``z_iy = s psi(c_iy; m(a_i))`` with ``psi = cos(theta + m)`` (angle addition, no acos) where ``c > 0`` and
    ``c`` elsewhere (``easy_margin=True``, official), or insightface's fallback ``c - m sin m`` where
    ``c <= cos(pi - m)``; ``z_ij = s c_ij`` otherwise. Per sample ``l_i = CE_i + lambda_g g(a_i)``,
    ``g(a) = a / u_a^2 + 1 / a`` (mean: the official ``loss_id + lambda_g loss_g``). Defaults: the official
    trainer (``l_a = 10, u_a = 110, l_margin = 0.45, u_margin = 0.8, lambda_g = 20, s = 64``); see
    :func:`magface_min_lambda_g`. With ``l_margin = u_margin = m`` and ``lambda_g = 0`` this is
    :func:`arcface_loss` at ``m`` (``easy_margin``, or ``fallback='insightface'``).

    Gradient: the cosine path as ArcFace (``G = s (p - onehot) psi'``, section-0 chain rule), plus a radial
    path through ``a``: ``dL_i/d|x_i| = [s (p_iy - 1) dpsi/dm m' + lambda_g g'(a)] 1[l_a <= |x_i| <= u_a]``
    along ``x_hat_i``, with ``m' = (u_margin - l_margin)/(u_a - l_a)``, ``dpsi/dm = -sin(theta + m)`` on the
    margin branch, ``-(sin m + m cos m)`` on the fallback, 0 on the easy branch, and ``g'(a) = 1/u_a^2 - 1/a^2``.
    At the clamp's bounds the derivative from inside is used (torch's clamp backward); the branch masks
    (``c > 0``, ``c > cos(pi - m(a))``) are piecewise constant.

    Shapes: ``features (N, D)``, ``labels (N,)`` in ``[0, C)``, ``weights (C, D)``.
    """
    if features.shape[0] == 0:
        return _empty(xp, features)
    parts = _magface_logits(xp, features, labels, weights, scale, l_a, u_a, l_margin, u_margin, lambda_g, easy_margin, eps, grad=False)
    return _forward(xp, parts)


@magface_loss.defvjp
def _magface_vjp(xp, cot, features, labels, weights, *, scale, l_a, u_a, l_margin, u_margin, lambda_g, easy_margin, eps):
    if features.shape[0] == 0:
        return _zero_grads(xp, features, weights)
    parts = _magface_logits(xp, features, labels, weights, scale, l_a, u_a, l_margin, u_margin, lambda_g, easy_margin, eps)
    return _vjp(xp, cot, parts, weights.shape)


# ------------------------------------------------------------------------------------------------
# AdaFace.


def adaface_norm_stats(features, norm_mean=20.0, norm_std=100.0, *, t_alpha=0.01):
    """AdaFace's EMA of the batch norm statistics, as the official head updates its buffers:
    ``n = clip(|x|, 0.001, 100)``, ``mean <- t_alpha mean(n) + (1 - t_alpha) mean``,
    ``std <- t_alpha std(n) + (1 - t_alpha) std`` (``std`` unbiased, so N >= 2). Buffers start at 20 and 100.

    The head updates them **before** using them, so the values to pass to :func:`adaface_loss` for a batch
    are ``adaface_norm_stats(x, mean_prev, std_prev)``. ``t_alpha = 0.01`` is the training scripts' value
    (the class default is 1.0: the current batch's statistics). Returns ``(norm_mean, norm_std)`` floats.
    """
    name = "adaface_norm_stats"
    if isinstance(t_alpha, bool) or not isinstance(t_alpha, numbers.Real) or not 0 <= t_alpha <= 1:
        raise ValueError(f"{name}: t_alpha must be a real number in [0, 1], got {t_alpha!r}")
    for arg, value in (("norm_mean", norm_mean), ("norm_std", norm_std)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}: {arg} must be a real number in [0, inf), got {value!r}")
    if not hasattr(features, "shape") or features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(
            f"{name}: features must be an array of shape (N, D) with N >= 2 (unbiased std), got {getattr(features, 'shape', features)!r}"
        )
    xp = namespace(features)
    n = xp.clip(xp.reshape(_normalise_rows(xp, features, None).norm, (-1,)), 1e-3, 100.0)
    mean = xp.mean(n)
    std = xp.sqrt(xp.sum((n - mean) ** 2) / (n.shape[0] - 1))
    return t_alpha * float(mean) + (1 - t_alpha) * norm_mean, t_alpha * float(std) + (1 - t_alpha) * norm_std


def _adaface_logits(xp, features, labels, weights, norm_features, scale, margin, h, norm_mean, norm_std, eps, grad=True):
    def const(v):
        return _dd_const(xp, v, features)

    e = const(_ADAFACE_EPS)
    lim = _dd_sub(xp, const(1.0), e)  # 1 - 1e-3 exactly (not its float64 rounding)
    s = const(scale)
    cos, xr, wr = _cosines(xp, features, weights, eps, scale)  # s cos: clamped at s lim (the same decisions)
    slim = _dd_mul(xp, lim, s)
    cos_c, below, above = _dd_clip(xp, cos, _dd_neg(slim), slim)
    live = ~below & ~above  # clamp backward: 1 inside, bounds included
    target = _target_geometry(xp, xr, wr, labels)
    c, t_below, t_above = _dd_clip(xp, target.c, _dd_neg(lim), lim)
    clamped = t_below | t_above
    s2 = _dd_where(xp, clamped, _dd_mul(xp, _dd_sub(xp, const(1.0), c), _dd_add(xp, const(1.0), c)), target.s2)
    target.c = c
    target.set_s2(s2)
    # the detached norm (from norm_features: the inputs themselves, or the frozen base point)
    rows = _normalise_rows(xp, norm_features, eps) if norm_features is not features else xr
    n, _, _ = _dd_clip(xp, (xp.reshape(rows.norm, (-1,)), xp.reshape(rows.norm_lo, (-1,))), _ADAFACE_EPS, 100.0)
    ratio = _dd_div(xp, _dd_mul(xp, const(h), _dd_sub(xp, n, const(norm_mean))), _dd_add(xp, const(norm_std), e))
    zeta, _, _ = _dd_clip(xp, ratio, -1.0, 1.0)
    mu = _dd_mul(xp, const(margin), zeta)  # theta' = clip(theta - mu, eps, pi - eps); g_add = m + mu
    sin_mu, cos_mu = _dd_sincos(xp, mu)
    value, slope, _ = _angle_add_rows(xp, target, cos_mu, _dd_neg(sin_mu), grad)  # cos(theta - mu)
    # theta - mu < eps  <=>  theta < a = mu + eps  <=>  c > cos(a) for a in (0, pi): no acos
    zero, pi = const(0.0), const(_PI)
    sin_e, cos_e = _dd_sincos_of(xp, _ADAFACE_EPS, features)  # cos(pi - eps) = -cos(eps)
    cs, sn = _dd_mul(xp, cos_mu, cos_e), _dd_mul(xp, sin_mu, sin_e)
    a = _dd_add(xp, mu, e)
    low = ~_dd_gt(pi, a) | (_dd_gt(a, zero) & _dd_gt(c, _dd_sub(xp, cs, sn)))  # cos(a) = cos(mu + eps)
    b = _dd_add(xp, mu, _dd_sub(xp, pi, e))
    high = ~_dd_gt(b, zero) | (_dd_gt(pi, b) & _dd_gt(_dd_neg(_dd_add(xp, cs, sn)), c))  # cos(b) = -cos(mu - eps)
    value = _dd_where(xp, low, cos_e, _dd_where(xp, high, _dd_neg(cos_e), value))
    if grad:
        slope = _dd_where(xp, low | high, _dd_zeros(xp, slope[0]), slope)
    hot = one_hot(labels, cos[0].shape[1], axis=1, xp=xp)
    z = _target_logits(xp, cos_c, hot, s, _dd_sub(xp, value, _dd_add(xp, const(margin), mu)))
    return _Logits(*z, labels, hot, s, slope, xr, wr, target, live=live, live_target=~clamped)


def _adaface_frozen(xp, base, features, labels, weights, *, scale, margin, h, norm_mean, norm_std, eps):
    """AdaFace with the norm ``n`` frozen at ``base`` (the official ``safe_norms.clone().detach()``)."""
    if features.shape[0] == 0:
        return _empty(xp, features)
    parts = _adaface_logits(xp, features, labels, weights, base[0], scale, margin, h, norm_mean, norm_std, eps, grad=False)
    return _forward(xp, parts)


@loss(
    family="margin",
    inputs=_inputs("adaface_features"),
    params=[
        _scale(64.0, (30.0,)),
        _margin_param(0.4, (0.8,), "m: the margin scaled by the norm's z-score"),
        Param("h", 0.333, low=0.0, grid=(0.0, 1.0), doc="h: concentration of the z-score (0: CosFace at m)"),
        Param("norm_mean", 20.0, low=0.0, grid=(50.0,), doc="EMA of the mean clipped norm, after this batch's update (adaface_norm_stats); 20 is the buffer's init"),
        Param("norm_std", 100.0, low=0.0, grid=(10.0,), doc="EMA of the clipped norms' unbiased std, after this batch's update; 100 is the buffer's init"),
        _EPS,
    ],
    check=_check,
    stop_gradient=_adaface_frozen,
    counterparts={
        "official": "mk-minchul/AdaFace head.py AdaFace(m=0.4, h=0.333, s=64., t_alpha=1.0) (then CrossEntropyLoss; scripts use "
        "t_alpha=0.01; the backbone passes normalised embeddings and their norms; norm_mean, norm_std = adaface_norm_stats(x, "
        "batch_mean, batch_std, t_alpha=...); W stored (D, C))",
    },
    references=[
        "Kim, Jain, Liu, AdaFace: Quality Adaptive Margin for Face Recognition, CVPR 2022",
        "margin_losses.md section 11.5",
    ],
)
def adaface_loss(xp, features, labels, weights, *, scale, margin, h, norm_mean, norm_std, eps):
    """AdaFace: a margin adapted to the feature norm, angular and additive: ``z_iy = s (cos(theta'_i) - m - m zeta_i)``.

    ``c = clamp(cos, -1 + 1e-3, 1 - 1e-3)`` (every column), ``n_i = clip(|x_i|, 0.001, 100)`` **detached**,
    ``zeta_i = clip(h (n_i - norm_mean) / (norm_std + 1e-3), -1, 1)``, ``theta'_i = clip(theta_iy - m zeta_i, 1e-3, pi - 1e-3)``;
    ``z_ij = s c_ij`` off the target. ``cos(theta - m zeta) = c cos(m zeta) + sin(theta) sin(m zeta)`` (no acos;
    the clip is detected from ``c`` against ``cos(m zeta + 1e-3)`` and ``cos(pi - 1e-3 + m zeta)``). Defaults:
    the official head with the repository's scripts, ``m = 0.4, h = 0.333, s = 64``; ``norm_mean, norm_std``
    are the EMA buffers after the official pre-forward update (:func:`adaface_norm_stats`), 20 and 100 at
    initialisation. ``h = 0`` is :func:`cosface_loss` at ``m`` (away from the clamp).

    Gradient: nothing flows through ``n`` (declared stop-gradient: the gradient proof differentiates the loss
    with ``n`` frozen). ``dz_iy/dc = s sin(theta')/sin(theta)`` where the angle clip is inactive, 0 where it
    is active; ``dz_ij/dc = s`` off the target; both 0 beyond the cosine clamp (bounds included, as
    torch's clamp backward). Then the section-0 chain rule, so ``dL/dx`` is orthogonal to ``x``.
    ``sin(theta) >= sqrt(1 - (1 - 1e-3)^2)`` after the clamp: no singularity. With ``eps``, ``n`` is
    ``max(|x|, eps)`` clipped.

    Shapes: ``features (N, D)``, ``labels (N,)`` in ``[0, C)``, ``weights (C, D)``.
    """
    if features.shape[0] == 0:
        return _empty(xp, features)
    parts = _adaface_logits(xp, features, labels, weights, features, scale, margin, h, norm_mean, norm_std, eps, grad=False)
    return _forward(xp, parts)


@adaface_loss.defvjp
def _adaface_vjp(xp, cot, features, labels, weights, *, scale, margin, h, norm_mean, norm_std, eps):
    if features.shape[0] == 0:
        return _zero_grads(xp, features, weights)
    parts = _adaface_logits(xp, features, labels, weights, features, scale, margin, h, norm_mean, norm_std, eps)
    return _vjp(xp, cot, parts, weights.shape)
