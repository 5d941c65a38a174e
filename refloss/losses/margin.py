"""Face-recognition margin losses: normalised (cosine) softmax with a margin on the target logit.

Every loss here is called ``loss(features, labels, weights)``: ``features (N, D)``, integer
``labels (N,)`` in ``[0, C)`` and raw class ``weights (C, D)`` (one row per class, the insightface /
``F.linear`` layout; pytorch-metric-learning stores the transpose, pass ``W.T``). Gradients are with
respect to the raw features and weights. It returns the per-sample softmax cross-entropy of margin
logits. (Labels come second so that the batch size N is bound before the class count C.) Written once:

1. :func:`_normalise_rows`: ``v / |v|`` row by row, the norm taken without overflow or underflow
   (scaled by the row's largest magnitude); with ``eps`` the norm is ``max(|v|, eps)``
   (``F.normalize``), without it a zero row is a ``ValueError`` naming the argument.
2. The cosine matrix ``c = x_hat W_hat^T`` (N, C) and its backward (margin_losses.md section 0)::

       dL/dx_i = (1/|x_i|) (I - x_hat_i x_hat_i^T) (G W_hat)_i,   dL/dW_j = (1/|W_j|) (I - W_hat_j W_hat_j^T) (G^T X_hat)_j

   with ``G = dL/dc``: the tangent projection of the matmul's gradient, divided by the norm (where
   ``eps`` clamps the norm, ``v_hat = v / eps`` is linear and the projection is dropped).
3. A target transform ``psi(c)`` applied at the label column only: ``z_ij = s c_ij`` (j != y_i),
   ``z_iy = s psi(c_iy)``; then ``l_i = -log softmax(z_i)_{y_i}``, whose gradient is ``p - onehot``.
   So ``G_ij = s (p_ij - [j = y_i])`` off the target and ``s (p_iy - 1) psi'(c_iy)`` on it.

Each cosine loss (NormFace, COCO, CosFace, ArcFace, combined) supplies only ``psi`` and ``dpsi/dc``.
L2-softmax (normalised features, raw weights) and L-Softmax / SphereFace (logits scaled by the
norms, ``z = |x| |W| f(c)`` or ``|x| f(c)``) reuse the same normalisation, cross-entropy and
``psi`` machinery with their own logit scale. The reduction is the shared one (``mean`` over the
batch, as every reference implementation). Scales, margins and lambda are parameters, not inputs:
their gradients (NormFace's learnable scale) are not provided.

Numerics: ``sin^2 theta`` at the target is taken from ``|x_hat -+ W_hat_y|^2`` (accurate as
``|c| -> 1``); the target entry of ``p - onehot`` is ``-sum_{j != y} p_j`` (no ``p_y - 1``
cancellation when the target dominates); the cotangent's common scale is applied after the tangent
projections, so ``mean`` is ``sum / N`` to one rounding even next to ``|c| = 1``.

Two distance-based losses share the calling convention with raw ``weights`` as class centres:
RBF-Softmax (``z_ij = s exp(-|W_j - x_i|^2 / gamma)``) and L-GM (``z_ik = -|x_i - mu_k|^2 (1 + alpha [k = y_i]) / 2``
plus a likelihood regulariser); their squared distances come from the differences ``W_j - x_i``
(:func:`_centre_differences`), never from ``|x|^2 + |W|^2 - 2 x.W``. :func:`sphereface_caffe_gradient`
gives SphereFace's Caffe update direction, which is not a gradient and so not a VJP.
"""

from __future__ import annotations

import math
import numbers

import array_api_compat
import numpy as np  # domains and error messages only

from .. import domains as D
from ..loss import Input, Param, _fail, loss, reduce_vjp
from ..xp import log_softmax, namespace, one_hot, take_along_axis, to_numpy
from .classification import _soft_target_cross_entropy, _soft_target_cross_entropy_grad

__all__ = [
    "normface_loss",
    "cosface_loss",
    "arcface_loss",
    "combined_margin_loss",
    "coco_loss",
    "l2_softmax_loss",
    "l2_softmax_alpha_lower_bound",
    "lsoftmax_loss",
    "sphereface_loss",
    "margin_lambda_schedule",
    "sphereface_caffe_gradient",
    "rbf_softmax_loss",
    "lgm_loss",
]


# ------------------------------------------------------------------------------------------------
# Shared declarations.

_FEATURES = Input("features", shape="N D", domain=D.margin_features, doc="feature vectors (raw; normalised inside)")
_LABELS = Input(
    "labels", dtype="int", shape="N", differentiable=False, classes="C", domain=D.margin_labels, doc="class indices"
)
_WEIGHTS = Input("weights", shape="C D", domain=D.margin_weights, doc="class weights W, one row per class (raw)")
_INPUTS = [_FEATURES, _LABELS, _WEIGHTS]
_EPS = Param(
    "eps", None, nullable=True, low=0.0, low_open=True, grid=(1e-12,),
    doc="norm floor: |v| -> max(|v|, eps) (F.normalize uses 1e-12); None: a zero row is an error",
)


def _scale(default, grid):
    return Param("scale", default, low=0.0, low_open=True, grid=grid, doc="s: logits are s * cos")


def _check(xp, name, features, labels, weights, *, normalised=("features", "weights"), hint=" (pass eps= to clamp the norm)", **params):
    if features.shape[1] == 0:
        _fail(ValueError, name, "features", "of at least one feature column (D >= 1)", f"shape {tuple(features.shape)}")
    if params["eps"] is not None:
        return
    for arg, v in (("features", features), ("weights", weights)):
        if arg not in normalised:
            continue
        zero = xp.all(v == 0, axis=1)
        if bool(xp.any(zero)):
            rows = [int(k) for k in np.flatnonzero(np.asarray(to_numpy(zero)))]
            _fail(ValueError, name, arg, "rows of nonzero norm" + hint, f"zero row(s) at {rows}")


# ------------------------------------------------------------------------------------------------
# The shared core.


def _normalise_rows(xp, v, eps):
    """``(v_hat, norm, clamped)``: rows of ``v`` over ``max(|v|, eps)`` (``eps=None``: ``|v|``, rows nonzero).

    ``|v| = m sqrt(sum (v/m)^2)`` with ``m`` the row's largest magnitude: no overflow or underflow for
    any finite row. ``clamped`` marks rows where ``eps`` is the norm (``None`` without ``eps``).
    """
    m = xp.max(xp.abs(v), axis=1, keepdims=True)
    live = m > 0
    m1 = xp.where(live, m, xp.ones_like(m))
    u = v / m1
    r = xp.sqrt(xp.sum(u * u, axis=1, keepdims=True))
    unit = u / xp.where(live, r, xp.ones_like(r))
    norm = m1 * r
    if eps is None:
        return unit, norm, None
    clamped = norm < eps
    return xp.where(clamped, v / eps, unit), xp.where(clamped, xp.full_like(norm, eps), norm), clamped


def _normalise_rows_vjp(xp, g_unit, unit, norm, clamped):
    """Backward of :func:`_normalise_rows`: ``(g - (g . v_hat) v_hat) / |v|``; ``g / eps`` where clamped."""
    tangent = (g_unit - xp.sum(g_unit * unit, axis=1, keepdims=True) * unit) / norm
    return tangent if clamped is None else xp.where(clamped, g_unit / norm, tangent)


def _cosines(xp, features, weights, eps):
    xh, xn, xc = _normalise_rows(xp, features, eps)
    wh, wn, wc = _normalise_rows(xp, weights, eps)
    return xp.matmul(xh, wh.T), (xh, xn, xc), (wh, wn, wc)


def _target_geometry(xp, cos, xr, wr, labels):
    """``(c, sin^2 theta)`` at each label column.

    ``1 - c^2`` from the rounded ``c`` loses all relative precision as ``|c| -> 1`` (``1 - c`` is a
    difference of nearly equal numbers). For unit rows ``1 - c = |x_hat - W_hat_y|^2 / 2`` and
    ``1 + c = |x_hat + W_hat_y|^2 / 2`` exactly, and these sums of squares keep their relative
    precision, so ``sin^2 theta = (1 - c)(1 + c)`` is taken from them (``O(N D)``: only the target
    rows). Rows clamped by ``eps`` are not unit: there the plain ``(1 - c)(1 + c)``.
    """
    xh, _, xc = xr
    wh, _, wc = wr
    c = take_along_axis(cos, labels, axis=1, xp=xp)
    wy = xp.take(wh, labels, axis=0)
    d = xh - wy
    e = xh + wy
    s2 = (xp.sum(d * d, axis=1) / 2) * (xp.sum(e * e, axis=1) / 2)
    if xc is not None:
        plain = xp.reshape(xc, (-1,)) | xp.take(xp.reshape(wc, (-1,)), labels, axis=0)
        s2 = xp.where(plain, (1 - c) * (1 + c), s2)
    return c, s2


def _margin_logits(xp, cos, xr, wr, labels, scale, psi):
    """``(z, hot, dpsi)``: ``z = s c`` with ``s psi(c)`` at each label (``psi`` returns value and slope)."""
    hot = one_hot(labels, cos.shape[1], axis=1, xp=xp)
    target, s2 = _target_geometry(xp, cos, xr, wr, labels)
    value, slope = psi(xp, target, s2)
    z = xp.where(hot, scale * xp.expand_dims(value, axis=1), scale * cos)
    return z, hot, slope


def _margin_forward(xp, features, labels, weights, scale, eps, psi):
    if features.shape[0] == 0:  # an empty batch (possibly with no classes): nothing to normalise over
        return xp.zeros((0,), dtype=features.dtype, device=array_api_compat.device(features))
    cos, xr, wr = _cosines(xp, features, weights, eps)
    z, hot, _ = _margin_logits(xp, cos, xr, wr, labels, scale, psi)
    return _soft_target_cross_entropy(xp, xp.astype(hot, z.dtype), log_softmax(z, axis=1, xp=xp))


def _margin_vjp(xp, cot, features, labels, weights, scale, eps, psi):
    if features.shape[0] == 0:
        return xp.zeros_like(features), None, xp.zeros_like(weights)
    cos, xr, wr = _cosines(xp, features, weights, eps)
    (xh, xn, xc), (wh, wn, wc) = xr, wr
    z, hot, slope = _margin_logits(xp, cos, xr, wr, labels, scale, psi)
    # The VJP is linear in the cotangent: its common scale k = max|cot| is applied last, so that a
    # uniform cotangent (every reduction) enters as exact ones and 'mean' is 'sum' / N to one rounding.
    # (The tangent projections cancel near |cos| = 1; rounding the cotangent in first would leak into them.)
    k = xp.max(xp.abs(cot)) if cot.shape[0] else xp.ones((), dtype=cot.dtype)
    k = xp.where((k > 0) & xp.isfinite(k), k, xp.ones_like(k))
    gz = _soft_target_cross_entropy_grad(xp, cot / k, xp.astype(hot, z.dtype), z)  # cot (p - onehot) / k
    g = scale * xp.where(hot, gz * xp.expand_dims(slope, axis=1), gz)  # dL/dcos / k
    gx = _normalise_rows_vjp(xp, xp.matmul(g, wh), xh, xn, xc)
    gw = _normalise_rows_vjp(xp, xp.matmul(g.T, xh), wh, wn, wc)
    return k * gx, None, k * gw


# ------------------------------------------------------------------------------------------------
# Target transforms psi(c) -> (psi, dpsi/dc), each written once.


def _identity(xp, c, s2):
    return c, xp.ones_like(c)


def _shift(m):
    def psi(xp, c, s2):
        return c - m, xp.ones_like(c)

    return psi


def _sin_theta(xp, s2):
    """``sin(theta) = sqrt(max(1 - c^2, 0))`` (``s2`` from :func:`_target_geometry`) and where it is positive."""
    pos = s2 > 0
    return xp.sqrt(xp.where(pos, s2, xp.zeros_like(s2))), pos


def _is_scalar(m):
    return isinstance(m, numbers.Real)


def _angle_add_rows(xp, c, s2, cos_m, sin_m):
    """``cos(theta + m) = c cos m - sin(theta) sin m`` and its c-derivative ``cos m + sin m c / sin(theta)``,
    for ``cos m, sin m`` Python numbers or per-sample arrays (the same operations as margin.py's
    ``_angle_add``, so a scalar margin gives its bits). At ``sin(theta) = 0`` the slope is the L'Hopital
    value ``cos m``, which meets ``dc/dx = 0`` there (the zero subgradient of the kink; margin.py)."""
    sin, pos = _sin_theta(xp, s2)
    value = c * cos_m - sin * sin_m
    ratio = c / xp.where(pos, sin, xp.ones_like(sin))
    cos_m_full = cos_m * xp.ones_like(c)
    slope = xp.where(pos, cos_m + sin_m * ratio, cos_m_full)
    return value, slope, sin


def _arc_psi(xp, c, s2, m, easy_margin, fallback, margin_slope=False):
    """ArcFace's target ``psi(c) = cos(theta + m)`` with insightface's conventions, and ``dpsi/dc``
    (and ``dpsi/dm`` with ``margin_slope``); ``m`` a Python number or a per-sample array (MagFace).

    ``easy_margin``: ``psi = c`` where ``c <= 0``; else ``fallback='insightface'``: ``psi = c - mm`` where
    ``c <= th``, with ``th = cos(pi - m)`` and ``mm = sin(pi - m) m`` (strict test, as insightface);
    ``fallback='none'``: ``cos(theta + m)`` everywhere. ``dpsi/dm`` is ``-sin(theta + m)`` on the margin
    branch, ``-(sin(pi - m) - m cos(pi - m))`` on the fallback and 0 on the easy branch.
    """
    cos, sin = (math.cos, math.sin) if _is_scalar(m) else (xp.cos, xp.sin)
    cos_m, sin_m = cos(m), sin(m)
    value, slope, sin_t = _angle_add_rows(xp, c, s2, cos_m, sin_m)
    dm = -(sin_t * cos_m + c * sin_m) if margin_slope else None  # -sin(theta + m)
    if easy_margin or fallback == "insightface":
        ones, zeros = xp.ones_like(c), xp.zeros_like(c)
        if easy_margin:
            keep = c > 0
            alt, alt_dm = c, zeros
        else:
            keep = c > cos(math.pi - m)
            mm = sin(math.pi - m) * m
            alt = c - mm
            alt_dm = -(sin(math.pi - m) - m * cos(math.pi - m)) * ones
        value, slope = xp.where(keep, value, alt), xp.where(keep, slope, ones)
        if margin_slope:
            dm = xp.where(keep, dm, alt_dm)
    return (value, slope, dm) if margin_slope else (value, slope)


def _angle_add(xp, c, s2, m):
    """``cos(theta + m) = c cos m - sin(theta) sin m`` and its c-derivative ``cos m + sin m c / sin(theta)``.

    Where ``sin(theta) = 0`` (|c| = 1, or beyond by rounding) the derivative is infinite; there it is
    taken as ``cos m``, the L'Hopital value ``cos(theta + m) / cos(theta)``. The gradient w.r.t. x and W
    multiplies it by ``dc/dx = (W_hat - c x_hat)/|x|``, which vanishes there: the result is the zero
    subgradient of the cone-shaped kink of ``cos(theta + m)`` at theta = 0 (finite, no NaN).
    """
    return _angle_add_rows(xp, c, s2, math.cos(m), math.sin(m))[:2]


def _arcface_psi(margin, easy_margin, fallback, straight_through):
    def psi(xp, c, s2):
        value, slope = _arc_psi(xp, c, s2, margin, easy_margin, fallback)
        return value, (xp.ones_like(c) if straight_through else slope)

    return psi


def _combined_psi(m1, m2, m3):
    """``cos(m1 theta + m2) - m3``; for m1 = 1 through :func:`_angle_add` (no angle at all)."""

    def psi(xp, c, s2):
        if m1 == 1:
            value, slope = _angle_add(xp, c, s2, m2)
            return value - m3, slope
        sin, pos = _sin_theta(xp, s2)
        theta = xp.atan2(sin, c)  # value path only; the slope is closed form in theta
        arg = m1 * theta + m2
        # m1 sin(m1 theta + m2) / sin(theta); at sin(theta) = 0 the L'Hopital value m1^2 cos(arg) / cos(theta)
        # (the exact limit when m2 = 0; otherwise multiplied by dc/dx = 0 there, see _angle_add).
        cos_end = xp.where(c > 0, xp.ones_like(c), -xp.ones_like(c))
        slope = xp.where(pos, m1 * xp.sin(arg) / xp.where(pos, sin, xp.ones_like(sin)), m1 * m1 * xp.cos(arg) / cos_end)
        return xp.cos(arg) - m3, slope

    return psi


# ------------------------------------------------------------------------------------------------
# NormFace / COCO: psi(c) = c.


@loss(
    family="margin",
    inputs=_INPUTS,
    params=[_scale(10.0, (64.0,)), _EPS],
    check=_check,
    counterparts={
        "normface": "scaled_cosine_softmax.prototxt (happynear/NormFace: Normalize, InnerProduct normalize, Scale init 10, learned)",
        "pml": "pytorch_metric_learning.losses.NormalizedSoftmaxLoss(temperature=1/scale) (W stored as (D, C); default temperature 0.05 is scale=20)",
        "insightface": "arcface_mxnet margin_softmax (loss 'nsoftmax': (m1, m2, m3) = (1, 0, 0), s = 64)",
    },
    references=[
        "Wang et al., NormFace: L2 Hypersphere Embedding for Face Verification, ACM MM 2017",
        "margin_losses.md sections 0, 3.1",
    ],
)
def normface_loss(xp, features, labels, weights, *, scale, eps):
    """NormFace: softmax cross-entropy of scaled cosines, ``z_ij = s cos(x_i, W_j)``.

    ``l_i = -log softmax(s X_hat W_hat^T)_{i, y_i}``. Default ``s = 10`` (NormFace's Scale layer init;
    there it is learned, here it is a parameter: its gradient ``sum_ij g_ij c_ij`` is not provided).

    Gradient: ``G = s (p - onehot(y))`` w.r.t. the cosines, then the section-0 chain rule
    ``dL/dx_i = (I - x_hat x_hat^T)(G W_hat)_i / |x_i|`` and ``dL/dW_j = (I - W_hat W_hat^T)(G^T X_hat)_j / |W_j|``.

    Shapes: ``features (N, D)``, ``labels (N,)`` in ``[0, C)``, ``weights (C, D)``. A zero row raises
    ``ValueError`` unless ``eps`` is given (then norms are ``max(|v|, eps)``, as ``F.normalize``).
    """
    return _margin_forward(xp, features, labels, weights, scale, eps, _identity)


@normface_loss.defvjp
def _normface_vjp(xp, cot, features, labels, weights, *, scale, eps):
    return _margin_vjp(xp, cot, features, labels, weights, scale, eps, _identity)


@loss(
    family="margin",
    inputs=_INPUTS,
    params=[Param("alpha", 6.25, low=0.0, low_open=True, grid=(30.0,), doc="alpha: logits are alpha * cos"), _EPS],
    check=_check,
    counterparts={
        "coco": "net_cocoloss.prototxt (sciencefans/coco_loss: Normalize, CenterProjection, SoftmaxWithLoss)",
        "softmax_variants": "COCOLoss(num_classes, feat_dim, alpha=6.25) (YirongMao/softmax_variants, then CrossEntropyLoss)",
        "opensphere": "opensphere.module.head.CocoLoss (ydwen/opensphere; s = 30)",
    },
    references=[
        "Liu, Li, Wang, Rethinking Feature Discrimination and Polymerization for Large-scale Recognition, NIPS-W 2017 (v2, Eq. 8)",
        "margin_losses.md section 3.3",
    ],
)
def coco_loss(xp, features, labels, weights, *, alpha, eps):
    """COCO (congenerous cosine): ``z_ik = alpha cos(x_i, c_k)``, softmax cross-entropy over the centres ``c_k``.

    Mathematically NormFace with ``s = alpha`` and class centres as the weights. Default ``alpha = 6.25``
    (YirongMao/softmax_variants; opensphere uses 30). Gradient as :func:`normface_loss` with ``s = alpha``
    (the v2 paper's Eq. 8; the v1 arXiv derivation is wrong, per the official README).

    Shapes: ``features (N, D)``, ``labels (N,)``, ``weights (C, D)`` (the centres).
    """
    return _margin_forward(xp, features, labels, weights, alpha, eps, _identity)


@coco_loss.defvjp
def _coco_vjp(xp, cot, features, labels, weights, *, alpha, eps):
    return _margin_vjp(xp, cot, features, labels, weights, alpha, eps, _identity)


# ------------------------------------------------------------------------------------------------
# CosFace / AM-Softmax: psi(c) = c - m.


@loss(
    family="margin",
    inputs=_INPUTS,
    params=[
        _scale(64.0, (30.0,)),
        Param("margin", 0.35, low=0.0, grid=(0.0, 0.4), doc="m: the target logit is s (cos - m)"),
        _EPS,
    ],
    check=_check,
    counterparts={
        "insightface": "arcface_torch.losses.CosFace(s=64.0, m=0.40) (also CombinedMarginLoss(64, 1, 0, m); arcface_mxnet 'cosface' (1, 0, 0.35))",
        "pml": "pytorch_metric_learning.losses.CosFaceLoss(margin=0.35, scale=64) (W stored as (D, C))",
        "amsoftmax": "face_train_test.prototxt (happynear/AMSoftmax: s = 30 fixed, LabelSpecificAdd bias -0.35)",
        "arcface-pytorch": "models.metrics.AddMarginProduct(s=30.0, m=0.40) (ronghuaiyang/arcface-pytorch, then CrossEntropyLoss)",
    },
    references=[
        "Wang et al., CosFace: Large Margin Cosine Loss for Deep Face Recognition, CVPR 2018",
        "Wang et al., Additive Margin Softmax for Face Verification, IEEE SPL 2018",
        "margin_losses.md section 4",
    ],
)
def cosface_loss(xp, features, labels, weights, *, scale, margin, eps):
    """CosFace / AM-Softmax: ``z_iy = s (cos_iy - m)``, ``z_ij = s cos_ij`` otherwise; softmax cross-entropy.

    Defaults ``s = 64, m = 0.35`` (CosFace paper, PML; arcface_torch uses m = 0.40, AM-Softmax s = 30).
    ``m = 0`` is :func:`normface_loss`.

    Gradient: ``psi' = 1``, so ``G = s (p - onehot(y))`` and the section-0 chain rule (as NormFace).

    Shapes: ``features (N, D)``, ``labels (N,)``, ``weights (C, D)``.
    """
    return _margin_forward(xp, features, labels, weights, scale, eps, _shift(margin))


@cosface_loss.defvjp
def _cosface_vjp(xp, cot, features, labels, weights, *, scale, margin, eps):
    return _margin_vjp(xp, cot, features, labels, weights, scale, eps, _shift(margin))


# ------------------------------------------------------------------------------------------------
# ArcFace: psi(c) = cos(theta + m).


def _arcface_frozen(xp, base, features, labels, weights, *, scale, margin, easy_margin, fallback, gradient, eps):
    """Straight-through ArcFace with the margin ``psi(c) - c`` frozen at ``base`` (arcface_torch's no_grad)."""
    psi = _arcface_psi(margin, easy_margin, fallback, False)
    if gradient == "exact":
        return _margin_forward(xp, features, labels, weights, scale, eps, psi)
    base_cos, xr, wr = _cosines(xp, base[0], base[2], eps)
    base_target, base_s2 = _target_geometry(xp, base_cos, xr, wr, base[1])
    delta = psi(xp, base_target, base_s2)[0] - base_target

    def frozen(xp_, c, s2):
        return c + delta, xp_.ones_like(c)

    return _margin_forward(xp, features, labels, weights, scale, eps, frozen)


@loss(
    family="margin",
    inputs=_INPUTS,
    params=[
        _scale(64.0, (30.0,)),
        Param("margin", 0.5, low=0.0, high=math.pi / 2, high_open=True, grid=(1.2,), doc="m (radians; PML uses degrees, 28.6)"),
        Param("easy_margin", False, kind="bool", grid=(True,), doc="apply the margin only where cos > 0 (else psi = cos)"),
        Param(
            "fallback", "insightface", kind="choice", choices=("insightface", "none"), grid=("none",),
            doc="insightface: psi = cos - m sin m where cos <= cos(pi - m) (theta + m >= pi); none: cos(theta + m) everywhere",
        ),
        Param(
            "gradient", "exact", kind="choice", choices=("exact", "straight_through"), grid=("straight_through",),
            doc="exact: the derivative of the forward; straight_through: d psi / d cos = 1 (arcface_torch since Dec 2022)",
        ),
        _EPS,
    ],
    check=_check,
    stop_gradient=_arcface_frozen,
    counterparts={
        "insightface": "arcface_torch.losses.ArcFace(s=64.0, margin=0.5) (v1 2e2e8c97 and arcface_mxnet loss_type 4: the defaults; "
        "current arcface_torch, also CombinedMarginLoss(64, 1, m, 0): gradient='straight_through', fallback='none')",
        "pml": "pytorch_metric_learning.losses.ArcFaceLoss(margin=28.6, scale=64) (margin in degrees: 28.6 deg = 0.49916 rad; W stored as (D, C); NaN gradient at |cos| = 1)",
        "arcface-pytorch": "models.metrics.ArcMarginProduct(s=30.0, m=0.50, easy_margin=False) (ronghuaiyang/arcface-pytorch, then CrossEntropyLoss)",
        "opensphere": "opensphere.module.head.ArcFace(s=64, m=0.5) (ydwen/opensphere: gradient='straight_through', fallback='none', but clamps theta + m at 3.14159)",
    },
    references=[
        "Deng et al., ArcFace: Additive Angular Margin Loss for Deep Face Recognition, CVPR 2019",
        "margin_losses.md sections 5, 13 (insightface #108, #228, #2218, #2255, #2309)",
    ],
)
def arcface_loss(xp, features, labels, weights, *, scale, margin, easy_margin, fallback, gradient, eps):
    """ArcFace: ``z_iy = s cos(theta_iy + m)``, ``z_ij = s cos_ij`` otherwise; softmax cross-entropy.

    ``cos(theta + m) = c cos m - sin(theta) sin m`` with ``sin(theta) = sqrt(max(1 - c^2, 0))`` (no acos; ``1 - c^2`` from ``|x_hat -+ W_hat_y|^2``, accurate as |c| -> 1).
    Defaults ``s = 64, m = 0.5, easy_margin=False, fallback='insightface'`` (insightface mxnet and v1 torch):

    - ``easy_margin=True``: ``psi = cos(theta + m)`` where ``c > 0``, else ``psi = c``;
    - otherwise ``fallback='insightface'``: ``psi = cos(theta + m)`` where ``c > th = cos(pi - m)``, else
      ``c - mm`` with ``mm = sin(pi - m) m`` (monotone but discontinuous at ``th``; strict test as
      insightface; PML's ``theta <= pi - m`` takes the margin branch at equality, a measure-zero
      difference); ``fallback='none'``: ``cos(theta + m)`` everywhere (paper, combined margin, arcface_torch v2).

    Gradient (``gradient='exact'``): ``psi' = cos m + sin m c / sin(theta) = sin(theta + m) / sin(theta)`` on the
    margin branch, 1 on the fallback / easy branches, then ``G = s (p - onehot) psi'`` and the section-0
    chain rule. At ``|c| = 1`` (``sin(theta) = 0``) ``psi'`` is infinite; refloss uses ``cos m`` there
    (the L'Hopital value), which meets ``dc/dx = 0``: the zero subgradient of the kink, finite where the
    references give NaN. ``gradient='straight_through'`` uses ``psi' = 1`` (arcface_torch's margin under
    ``torch.no_grad()``, opensphere): the forward is unchanged, and the gradient is the exact derivative
    of the forward with ``psi(c) - c`` frozen (declared as the loss's stop-gradient).

    Shapes: ``features (N, D)``, ``labels (N,)``, ``weights (C, D)``.
    """
    psi = _arcface_psi(margin, easy_margin, fallback, False)
    return _margin_forward(xp, features, labels, weights, scale, eps, psi)


@arcface_loss.defvjp
def _arcface_vjp(xp, cot, features, labels, weights, *, scale, margin, easy_margin, fallback, gradient, eps):
    psi = _arcface_psi(margin, easy_margin, fallback, gradient == "straight_through")
    return _margin_vjp(xp, cot, features, labels, weights, scale, eps, psi)


# ------------------------------------------------------------------------------------------------
# Combined margin: psi(c) = cos(m1 theta + m2) - m3.


@loss(
    family="margin",
    inputs=_INPUTS,
    params=[
        _scale(64.0, (30.0,)),
        Param("m1", 1.0, low=0.0, low_open=True, grid=(1.35,), doc="multiplicative angular margin (SphereFace-like)"),
        Param("m2", 0.3, low=0.0, grid=(0.0,), doc="additive angular margin (ArcFace)"),
        Param("m3", 0.2, low=0.0, grid=(0.0,), doc="additive cosine margin (CosFace)"),
        _EPS,
    ],
    check=_check,
    counterparts={
        "insightface": "arcface_mxnet margin_softmax (loss_m1, loss_m2, loss_m3; 'combined' = (1.0, 0.3, 0.2), s = 64. "
        "arcface_torch.losses.CombinedMarginLoss is not a counterpart: it ignores m1, m2 when m3 > 0 and raises for m1 != 1 with m3 = 0)",
        "subcenter": "subcenter_arcface/train_parall.py (insightface; combined margin with K = 1)",
    },
    references=[
        "Deng et al., ArcFace, CVPR 2019, section 3.3 (combined margin)",
        "margin_losses.md sections 5.2, 5.3, 6",
    ],
)
def combined_margin_loss(xp, features, labels, weights, *, scale, m1, m2, m3, eps):
    """Combined margin: ``z_iy = s (cos(m1 theta_iy + m2) - m3)``, ``z_ij = s cos_ij`` otherwise; softmax CE.

    Correct for every ``(m1, m2, m3)``: current insightface arcface_torch computes CosFace(m3) whenever
    ``m3 > 0`` (dropping m1 and m2) and raises for ``m1 != 1, m3 = 0``; refloss follows the mxnet
    formula. No monotone fallback (as mxnet): the target logit is non-monotone where ``m1 theta + m2 > pi``.
    Defaults ``s = 64, (m1, m2, m3) = (1.0, 0.3, 0.2)`` (insightface 'combined'). ``(1, m, 0)`` is
    :func:`arcface_loss` with ``fallback='none'``; ``(1, 0, m)`` is :func:`cosface_loss`.

    With ``m1 = 1`` the value is ``c cos m2 - sin(theta) sin m2 - m3`` (no angle); otherwise
    ``theta = atan2(sin(theta), c)`` in the value only. Gradient: ``psi' = m1 sin(m1 theta + m2) / sin(theta)``
    (``cos m2 + sin m2 c / sin(theta)`` for ``m1 = 1``), then ``G = s (p - onehot) psi'`` and the section-0
    chain rule. At ``sin(theta) = 0`` ``psi'`` is the L'Hopital value ``m1^2 cos(m1 theta + m2) / cos(theta)``
    (the exact limit when ``m2 = 0``; otherwise it meets ``dc/dx = 0``, the zero subgradient of the kink).

    Shapes: ``features (N, D)``, ``labels (N,)``, ``weights (C, D)``.
    """
    return _margin_forward(xp, features, labels, weights, scale, eps, _combined_psi(m1, m2, m3))


@combined_margin_loss.defvjp
def _combined_vjp(xp, cot, features, labels, weights, *, scale, m1, m2, m3, eps):
    return _margin_vjp(xp, cot, features, labels, weights, scale, eps, _combined_psi(m1, m2, m3))


# ------------------------------------------------------------------------------------------------
# L2-constrained softmax: features normalised and scaled by alpha, weights raw.


def l2_softmax_alpha_lower_bound(p, num_classes):
    """Ranjan et al.'s lower bound on alpha for a target softmax probability ``p`` over ``C`` classes:
    ``alpha_low = log(p (C - 2) / (1 - p))`` (needs ``C > 2`` and ``0 < p < 1``). E.g. ``p = 0.9``,
    ``C = 10000`` gives about 11.4."""
    if not (isinstance(num_classes, int) and num_classes > 2):
        raise ValueError(f"l2_softmax_alpha_lower_bound: num_classes must be an integer > 2, got {num_classes!r}")
    if not 0 < p < 1:
        raise ValueError(f"l2_softmax_alpha_lower_bound: p must be in (0, 1), got {p!r}")
    return math.log(p * (num_classes - 2) / (1 - p))


def _l2_check(xp, name, *inputs, **params):
    _check(xp, name, *inputs, normalised=("features",), **params)


@loss(
    family="margin",
    inputs=[_FEATURES, _LABELS, Input("weights", shape="C D", domain=D.small_weights, doc="classifier weights W (raw, not normalised)")],
    params=[Param("alpha", 50.0, low=0.0, low_open=True, grid=(16.0,), doc="alpha: features are rescaled to norm alpha"), _EPS],
    check=_l2_check,
    counterparts={
        "paper": "L2-constrained softmax (Ranjan, Castillo, Chellappa 2017: L2Normalize, Scale alpha, InnerProduct; no bias here)",
    },
    references=[
        "Ranjan, Castillo, Chellappa, L2-constrained Softmax Loss for Discriminative Face Verification, arXiv 1703.09507",
        "margin_losses.md section 3.2",
    ],
)
def l2_softmax_loss(xp, features, labels, weights, *, alpha, eps):
    """L2-constrained softmax: ``z_ij = W_j . (alpha x_i / |x_i|)``, softmax cross-entropy over j.

    Features are normalised and rescaled to norm ``alpha``; the classifier is an ordinary linear layer
    (weights raw, no bias: add a constant column to the features for one). Default ``alpha = 50``, the
    commonly cited setting [paper, not re-verified]; :func:`l2_softmax_alpha_lower_bound` gives the
    paper's lower bound ``log(p (C - 2) / (1 - p))``.

    Gradient, with ``g = p - onehot(y)``: ``dL/dW = alpha g^T X_hat`` and
    ``dL/dx_i = alpha (I - x_hat_i x_hat_i^T)(g W)_i / |x_i|`` (margin_losses.md 3.2).

    Shapes: ``features (N, D)``, ``labels (N,)``, ``weights (C, D)``. Only zero feature rows are
    an error (without ``eps``); zero weight rows are fine.
    """
    if features.shape[0] == 0:
        return xp.zeros((0,), dtype=features.dtype, device=array_api_compat.device(features))
    xh, _, _ = _normalise_rows(xp, features, eps)
    z = alpha * xp.matmul(xh, weights.T)
    hot = one_hot(labels, weights.shape[0], axis=1, xp=xp)
    return _soft_target_cross_entropy(xp, xp.astype(hot, z.dtype), log_softmax(z, axis=1, xp=xp))


@l2_softmax_loss.defvjp
def _l2_softmax_vjp(xp, cot, features, labels, weights, *, alpha, eps):
    if features.shape[0] == 0:
        return xp.zeros_like(features), None, xp.zeros_like(weights)
    xh, xn, xc = _normalise_rows(xp, features, eps)
    z = alpha * xp.matmul(xh, weights.T)
    hot = one_hot(labels, weights.shape[0], axis=1, xp=xp)
    k = xp.max(xp.abs(cot))  # common cotangent scale applied last (see _margin_vjp)
    k = xp.where((k > 0) & xp.isfinite(k), k, xp.ones_like(k))
    g = alpha * _soft_target_cross_entropy_grad(xp, cot / k, xp.astype(hot, z.dtype), z)
    gx = _normalise_rows_vjp(xp, xp.matmul(g, weights), xh, xn, xc)
    return k * gx, None, k * xp.matmul(g.T, xh)


# ------------------------------------------------------------------------------------------------
# Multiplicative angular margin: L-Softmax and SphereFace (A-Softmax).

# Chebyshev polynomials T_m(c) = cos(m theta) and their derivatives, m = 1..4 (margin_losses.md section 0).
_CHEBYSHEV = {
    1: (lambda c: c, lambda c: c * 0 + 1),
    2: (lambda c: 2 * c * c - 1, lambda c: 4 * c),
    3: (lambda c: (4 * c * c - 3) * c, lambda c: 12 * c * c - 3),
    4: (lambda c: 8 * c * c * (c * c - 1) + 1, lambda c: (32 * c * c - 16) * c),
}


def margin_lambda_schedule(iteration, *, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0):
    """The L-Softmax / SphereFace annealing of lambda: ``max(lambda_min, base (1 + gamma iteration)^-power)``.

    Defaults are SphereFace's training prototxt (``lambda = max(5, 1000 / (1 + 0.12 it))``, floor reached
    near iteration 1659); L-Softmax's MNIST example is ``base=1000, gamma=2.5e-5, power=35, lambda_min=0``;
    the Caffe proto defaults ``base=1, gamma=0, power=1, lambda_min=0`` give lambda = 1. Caffe counts
    ``iteration`` in layer forwards, starting at ``iteration + 1`` on the first one.
    """
    if iteration < 0:
        raise ValueError(f"margin_lambda_schedule: iteration must be >= 0, got {iteration!r}")
    return max(lambda_min, base * (1.0 + gamma * iteration) ** (-power))


def _multiplicative_psi(xp, c, m):
    """``psi = (-1)^k T_m(c) - 2k`` with ``k = floor(m theta / pi)`` read from ``c`` (``theta >= j pi / m`` iff
    ``c <= cos(j pi / m)``: no acos), and ``dpsi/dc = (-1)^k T_m'(c)`` (k piecewise constant; psi is C^1
    at the boundaries, where T_m' = 0)."""
    t, dt = _CHEBYSHEV[m]
    k = xp.zeros_like(c)
    for j in range(1, m):
        k = k + xp.astype(c <= math.cos(j * math.pi / m), c.dtype)
    sign = 1 - 2 * (k - 2 * xp.floor(k / 2))
    return sign * t(c) - 2 * k, sign * dt(c)


def _angular_parts(xp, features, labels, weights, m, lambda_, weight_norm, eps=None):
    """``(rows, cos, hot, f, df, z, (c, psi, dpsi))`` of ``z_ij = r_ij f_ij(c_ij)``: ``rows = (xh, xn, xc, wh, wn, wc)``
    from :func:`_normalise_rows` (with ``eps`` the norms that scale the logits are the clamped ones)."""
    xh, xn, xc = _normalise_rows(xp, features, eps)
    wh, wn, wc = _normalise_rows(xp, weights, eps)
    cos = xp.matmul(xh, wh.T)
    hot = one_hot(labels, weights.shape[0], axis=1, xp=xp)
    c = take_along_axis(cos, labels, axis=1, xp=xp)
    psi, dpsi = _multiplicative_psi(xp, c, m)
    f_t = (lambda_ * c + psi) / (1 + lambda_)
    df_t = (lambda_ + dpsi) / (1 + lambda_)
    f = xp.where(hot, xp.expand_dims(f_t, axis=1), cos)
    df = xp.where(hot, xp.expand_dims(df_t, axis=1), xp.ones_like(cos))
    r = xn * wn.T if weight_norm else xn  # L-Softmax |x||W_j|; SphereFace |x|
    return (xh, xn, xc, wh, wn, wc), cos, hot, f, df, r * f, (c, psi, dpsi)


def _angular_forward(xp, features, labels, weights, m, lambda_, weight_norm, eps=None):
    if features.shape[0] == 0:
        return xp.zeros((0,), dtype=features.dtype, device=array_api_compat.device(features))
    _, _, hot, _, _, z, _ = _angular_parts(xp, features, labels, weights, m, lambda_, weight_norm, eps)
    return _soft_target_cross_entropy(xp, xp.astype(hot, z.dtype), log_softmax(z, axis=1, xp=xp))


def _unclamped(xp, a, clamped):
    """``a`` (one entry a row) zeroed at eps-clamped rows: their norm is the constant eps, with no derivative."""
    return a if clamped is None else xp.where(clamped, xp.zeros_like(a), a)


def _angular_vjp(xp, cot, features, labels, weights, m, lambda_, weight_norm, eps=None, rule="exact"):
    """``z_ij = r_ij f_ij(c_ij)``: ``dz/dx_i = (r/|x|)[(f - c f') x_hat + f' W_hat_j]`` and, for raw W (L-Softmax),
    ``dz/dW_j = (r/|W|)[(f - c f') W_hat_j + f' x_hat]``; for normalised W (SphereFace) the normalisation
    backward of ``|x| f' x_hat``. Where ``eps`` clamps a norm it is a constant and ``v_hat = v / eps`` is
    linear: the ``(f - c f')`` term (the norm's derivative) is dropped for that row.

    ``rule='caffe'`` (SphereFace only, :func:`sphereface_caffe_gradient`): wy1iu/sphereface's update
    direction instead, the target's ``(psi', (psi - c psi') / |x|)`` scaled to unit length in the feature
    rule and ``topdiff^T X`` for the weights."""
    if features.shape[0] == 0:
        return xp.zeros_like(features), None, xp.zeros_like(weights)
    (xh, xn, xc, wh, wn, wc), cos, hot, f, df, z, target = _angular_parts(
        xp, features, labels, weights, m, lambda_, weight_norm, eps
    )
    k = xp.max(xp.abs(cot))  # common cotangent scale applied last (see _margin_vjp)
    k = xp.where((k > 0) & xp.isfinite(k), k, xp.ones_like(k))
    gz = _soft_target_cross_entropy_grad(xp, cot / k, xp.astype(hot, z.dtype), z)
    a = gz * (f - cos * df)
    b = gz * df
    if rule == "caffe":
        a, b = _caffe_target_coefficients(xp, gz, hot, a, b, target, xn, lambda_)
    if weight_norm:
        ax, bx = a * wn.T, b * wn.T
        gx = _unclamped(xp, xp.sum(ax, axis=1, keepdims=True), xc) * xh + xp.matmul(bx, wh)
        aw, bw = a * xn, b * xn
        gw = _unclamped(xp, xp.expand_dims(xp.sum(aw, axis=0), axis=1), wc) * wh + xp.matmul(bw.T, xh)
    else:
        gx = _unclamped(xp, xp.sum(a, axis=1, keepdims=True), xc) * xh + xp.matmul(b, wh)
        if rule == "caffe":
            gw = xp.matmul(gz.T, features)  # topdiff^T X: the plain inner-product rule
        else:
            gw = _normalise_rows_vjp(xp, xp.matmul((b * xn).T, xh), wh, wn, wc)
    return k * gx, None, k * gw


def _caffe_target_coefficients(xp, gz, hot, a, b, target, xn, lambda_):
    """MarginInnerProductLayer's feature rule at the target (margin_losses.md 2.1 point 3): the exact
    ``dz_y/dx = [lambda W_hat_y + psi' W_hat_y + ((psi - c psi') / |x|) x] / (1 + lambda)`` with the pair
    ``(psi', (psi - c psi') / |x|)`` divided by its Euclidean length ``rho``; off-target entries as exact."""
    c, psi, dpsi = target
    cx = (psi - c * dpsi) / xp.reshape(xn, (-1,))  # Caffe's coeff_x, which multiplies the raw x
    big = xp.maximum(xp.abs(dpsi), xp.abs(cx))
    live = big > 0
    one = xp.where(live, big, xp.ones_like(big))
    rho = one * xp.sqrt((dpsi / one) ** 2 + (cx / one) ** 2)  # no overflow for tiny |x|
    rho = xp.where(live, rho, xp.ones_like(rho))
    g_t = xp.sum(xp.where(hot, gz, xp.zeros_like(gz)), axis=1)
    a_t = g_t * (psi - c * dpsi) / rho / (1 + lambda_)  # times x_hat: (psi - c psi') x_hat = coeff_x |x| x_hat
    b_t = g_t * (lambda_ + dpsi / rho) / (1 + lambda_)
    return (
        xp.where(hot, xp.expand_dims(a_t, axis=1), a),
        xp.where(hot, xp.expand_dims(b_t, axis=1), b),
    )


def _angular_check(xp, name, features, labels, weights, **params):
    _check(xp, name, features, labels, weights, eps=params["eps"])


_ANGULAR_FEATURES = Input("features", shape="N D", domain=D.angular_features, doc="feature vectors (raw)")
_LAMBDA = Param(
    "lambda_", 0.0, low=0.0, grid=(5.0,),
    doc="lambda: target logit (lambda |x||W| cos + |x||W| psi) / (1 + lambda); anneal with margin_lambda_schedule",
)


@loss(
    family="margin",
    inputs=[_ANGULAR_FEATURES, _LABELS, Input("weights", shape="C D", domain=D.small_weights, doc="class weights W (raw)")],
    params=[Param("m", 4, kind="int", low=1, high=4, grid=(1, 2, 3), doc="integer multiplicative margin (type SINGLE..QUADRUPLE)"), _LAMBDA, _EPS],
    check=_angular_check,
    counterparts={
        "caffe": "LargeMarginInnerProductLayer (wy1iu/LargeMargin_Softmax_Loss, then SoftmaxWithLoss; lambda_ from its schedule; CPU adds 1e-9 to |x||W|)",
        "pml": "pytorch_metric_learning.losses.LargeMarginSoftmaxLoss(margin=4, scale=1) (lambda_=0; W stored as (D, C))",
    },
    references=[
        "Liu, Wen, Yu, Yang, Large-Margin Softmax Loss for Convolutional Neural Networks, ICML 2016",
        "margin_losses.md sections 1, 7, 14 (check 4, 5)",
    ],
)
def lsoftmax_loss(xp, features, labels, weights, *, m, lambda_, eps):
    """L-Softmax: ``z_ij = W_j . x_i`` (j != y_i), ``z_iy = |W_y||x_i| (lambda cos + psi(cos)) / (1 + lambda)``; softmax CE.

    ``psi(c) = (-1)^k cos(m theta) - 2k``, ``k = floor(m theta / pi)``, with ``cos(m theta) = T_m(c)`` the
    Chebyshev polynomial (no acos; k from thresholds on c; Caffe's sign tricks are the same function). No
    bias, weights raw. ``m = 1`` is plain softmax cross-entropy of ``W x``. Defaults ``m = 4`` (MNIST
    example, PML) and ``lambda_ = 0`` (PML; the end of the annealing, see :func:`margin_lambda_schedule`).

    Gradient, with ``g = p - onehot(y)``, ``f = c`` off-target and ``(lambda c + psi)/(1 + lambda)`` on it,
    ``f' = (lambda + (-1)^k T_m'(c)) / (1 + lambda)`` (k held constant: psi is C^1 at the k-boundaries):
    ``dL/dx_i = sum_j g_ij |W_j| [(f - c f') x_hat_i + f' W_hat_j]``, ``dL/dW_j = sum_i g_ij |x_i| [(f - c f') W_hat_j + f' x_hat_i]``
    (off-target f' = 1 and f - c f' = 0: the plain linear-layer gradient); the same as Caffe's backward
    (margin_losses.md 1.2).

    ``eps``: ``None`` (default): a zero row raises ``ValueError`` (Caffe divides by zero); given, the norms
    are ``max(|v|, eps)`` as ``F.normalize``: ``x_hat = x / max(|x|, eps)``, ``c = x_hat . W_hat`` and the
    logit scale ``|x||W|`` are the clamped ones, and where a norm is clamped it is the constant eps
    (``v_hat = v / eps`` is linear), so that row's ``(f - c f')`` term is dropped from the gradient.

    Shapes: ``features (N, D)``, ``labels (N,)``, ``weights (C, D)``.
    """
    return _angular_forward(xp, features, labels, weights, m, lambda_, True, eps)


@lsoftmax_loss.defvjp
def _lsoftmax_vjp(xp, cot, features, labels, weights, *, m, lambda_, eps):
    return _angular_vjp(xp, cot, features, labels, weights, m, lambda_, True, eps)


@loss(
    family="margin",
    inputs=[_ANGULAR_FEATURES, _LABELS, _WEIGHTS],
    params=[Param("m", 4, kind="int", low=1, high=4, grid=(2, 3), doc="integer multiplicative margin"), _LAMBDA, _EPS],
    check=_angular_check,
    counterparts={
        "caffe": "MarginInnerProductLayer (wy1iu/sphereface: forward only; its backward normalises the feature gradient and ignores the W normalisation)",
        "sphereface_pytorch": "net_sphere.AngleLinear(m=4) + AngleLoss(gamma=0) (clcarwin; lambda_ = max(5, 1500 / (1 + 0.1 it)))",
        "pml": "pytorch_metric_learning.losses.SphereFaceLoss(margin=4, scale=1) (lambda_=0; W stored as (D, C))",
        "arcface-pytorch": "models.metrics.SphereProduct(m=4) (ronghuaiyang; exact autograd gradient)",
    },
    references=[
        "Liu et al., SphereFace: Deep Hypersphere Embedding for Face Recognition, CVPR 2017",
        "margin_losses.md sections 2, 7",
    ],
)
def sphereface_loss(xp, features, labels, weights, *, m, lambda_, eps):
    """SphereFace / A-Softmax: ``z_ij = |x_i| cos_ij`` (j != y_i), ``z_iy = |x_i| (lambda cos + psi(cos)) / (1 + lambda)``.

    ``W`` is normalised (no bias), ``psi`` as :func:`lsoftmax_loss` (``(-1)^k T_m(c) - 2k``). Defaults
    ``m = 4`` and ``lambda_ = 0`` (PML; official training anneals ``lambda_ = max(5, 1000 / (1 + 0.12 it))``,
    :func:`margin_lambda_schedule`).

    Gradient: the exact one (as clcarwin / ronghuaiyang autograd). With ``g = p - onehot(y)`` and
    ``f, f'`` as in :func:`lsoftmax_loss`: ``dL/dx_i = sum_j g_ij [(f - c f') x_hat_i + f' W_hat_j]``,
    ``dL/dW_j = (I - W_hat_j W_hat_j^T)(sum_i g_ij |x_i| f'_ij x_hat_i) / |W_j|``. Caffe's backward (a
    normalised feature coefficient and the plain ``topdiff^T X`` for W, margin_losses.md 2.1) is not the
    gradient of any objective, so it is not this loss's VJP: :func:`sphereface_caffe_gradient` gives it.

    ``eps`` as :func:`lsoftmax_loss` (``None``: zero rows raise ``ValueError``; given: ``F.normalize``
    norms ``max(|v|, eps)``, which also scale the logits; a clamped row's norm derivative is dropped).

    Shapes: ``features (N, D)``, ``labels (N,)``, ``weights (C, D)``.
    """
    return _angular_forward(xp, features, labels, weights, m, lambda_, False, eps)


@sphereface_loss.defvjp
def _sphereface_vjp(xp, cot, features, labels, weights, *, m, lambda_, eps):
    return _angular_vjp(xp, cot, features, labels, weights, m, lambda_, False, eps)


def sphereface_caffe_gradient(features, labels, weights, *, m=4, lambda_=0.0, reduction="mean"):
    """wy1iu/sphereface's Caffe update direction: ``(value, (d_features, d_weights))``. Not a gradient.

    ``value`` is :func:`sphereface_loss`'s (same inputs, ``m``, ``lambda_``, ``reduction``; validated by
    calling it). The directions are what ``MarginInnerProductLayer::Backward`` computes from the softmax
    layer's ``topdiff = dL/dz`` (margin_losses.md 2.1 points 3 and 4, README "Note 1", issue #24):

    - ``d_features``: off-target as the exact gradient (``topdiff_ij W_hat_j``); at the target
      ``topdiff_iy [lambda W_hat_y + (psi' W_hat_y + ((psi - c psi') / |x|) x) / rho] / (1 + lambda)`` with
      ``rho = sqrt(psi'^2 + ((psi - c psi') / |x|)^2)``: the exact coefficient pair scaled to unit length
      (the exact gradient is this with ``rho`` replaced by 1; ``m = 1`` has ``rho = 1``: the exact feature gradient);
    - ``d_weights = topdiff^T X``: the plain inner-product rule, which ignores the margin and the weight
      normalisation (Caffe stores ``W_hat`` in place and steps it; the maintainers call this close to
      projected gradient descent).

    The pair is not the derivative of the loss, nor in general of any one objective (the rescaling
    differs per sample, the weight rule drops the margin), so this is a helper, not the VJP of
    :func:`sphereface_loss` (whose gradient is the exact one). ``reduction`` enters through ``topdiff`` as in ``value_and_grad`` ('mean': Caffe's
    ``SoftmaxWithLoss`` batch normalisation). Shapes as :func:`sphereface_loss`; no ``eps`` (Caffe has none:
    zero rows raise).
    """
    value = sphereface_loss(features, labels, weights, m=m, lambda_=lambda_, reduction=reduction)  # validates
    xp = namespace(features, labels, weights)
    n = features.shape[0]
    per_sample = xp.zeros((n,), dtype=features.dtype, device=array_api_compat.device(features))
    cot = reduce_vjp(xp, xp.ones_like(value), per_sample, reduction)  # dL / d(per-sample loss)
    gx, _, gw = _angular_vjp(xp, cot, features, labels, weights, m, lambda_, False, None, rule="caffe")
    return value, (gx, gw)


# ------------------------------------------------------------------------------------------------
# Distance-based logits: RBF-Softmax and the large-margin Gaussian mixture (L-GM) loss. Raw features
# and class centres (no normalisation); logits are functions of the squared distances |W_j - x_i|^2.


def _centre_differences(xp, features, weights):
    """``(diff, h, m, ss)`` with ``|W_j - x_i|^2 = (m_ij / h)^2 ss_ij``, written once for both losses.

    ``diff_ijk = h (W_jk - x_ik)`` (N, C, D): the differences themselves, not the expanded
    ``|x|^2 + |W|^2 - 2 x.W``, which cancels catastrophically for near points (absolute error
    ``~eps (|x|^2 + |W|^2)``, so a feature at distance 1e-3 of a centre at norm 1e3 would get a relative
    error ~1 in its squared distance; trained features sit next to their centres, far from the
    origin). This is the official RBF-Softmax form too; it costs an (N, C, D) intermediate.
    ``h = 1``, or ``1/2`` when an entry exceeds a quarter of the dtype's maximum (then ``W - x`` could
    overflow; halving is exact but for the last bit of subnormals). ``m_ij = max_k |diff_ijk|`` and
    ``ss_ij = sum_k (diff_ijk / m_ij)^2`` in ``[1, D]`` (0 where ``m = 0``): the squared norm is taken
    without overflow or underflow, as in :func:`_normalise_rows`.
    """
    top = xp.maximum(xp.max(xp.abs(features)), xp.max(xp.abs(weights)))
    h = xp.where(top > xp.finfo(features.dtype).max / 4, xp.full_like(top, 0.5), xp.ones_like(top))
    diff = xp.expand_dims(weights * h, axis=0) - xp.expand_dims(features * h, axis=1)
    m = xp.max(xp.abs(diff), axis=2)
    live = m > 0
    u = diff / xp.expand_dims(xp.where(live, m, xp.ones_like(m)), axis=2)
    return diff, h, m, xp.sum(u * u, axis=2)


def _empty(xp, features):
    return xp.zeros((0,), dtype=features.dtype, device=array_api_compat.device(features))


def _cotangent_scale(xp, cot):
    """``k = max |cot|`` (1 where that is 0 or not finite): the common scale applied last (see :func:`_margin_vjp`)."""
    k = xp.max(xp.abs(cot))
    return xp.where((k > 0) & xp.isfinite(k), k, xp.ones_like(k))


def _centre_grads(xp, coef, diff, h, k):
    """``dL/dx_i = sum_j coef_ij (W_j - x_i)`` and ``dL/dW_j = -sum_i coef_ij (W_j - x_i)``, times ``k``."""
    s = xp.expand_dims(coef, axis=2) * diff
    return k * (xp.sum(s, axis=1) / h), None, k * (-xp.sum(s, axis=0) / h)


def _distance_check(xp, name, features, labels, weights, **params):
    _check(xp, name, features, labels, weights, normalised=(), eps=None)


# Beyond this many sqrt(gamma), exp(-|W - x|^2 / gamma) <= exp(-64^2) underflows to 0 in every float format.
_RBF_FAR = 64.0


def _rbf_kernel(xp, features, weights, gamma):
    """``(K, diff, h)``: ``K_ij = exp(-|W_j - x_i|^2 / gamma)``, exactly 0 where ``max_k |W_jk - x_ik| >
    64 sqrt(gamma)`` (there it underflows anyway; deciding it first keeps the square from overflowing)."""
    diff, h, m, ss = _centre_differences(xp, features, weights)
    root = math.sqrt(gamma)
    far = m > (_RBF_FAR * root) * h
    r = (xp.where(far, xp.zeros_like(m), m) / h) / root
    return xp.where(far, xp.zeros_like(m), xp.exp(-(r * r) * ss)), diff, h


# The domain generators live in the Domains section at the end of this module (looked up at call time).
@loss(
    family="margin",
    inputs=[
        Input("features", shape="N D", domain=D.rbf_features, doc="feature vectors (raw)"),
        _LABELS,
        Input("weights", shape="C D", domain=D.rbf_centres, doc="class centres W (prototypes), one row per class (raw)"),
    ],
    params=[
        Param("scale", 35.0, low=0.0, low_open=True, grid=(4.0,), doc="s: logits are s * K (ImageNet config 35)"),
        Param("gamma", 16.0, low=0.0, low_open=True, grid=(2.0,), doc="gamma: K = exp(-|W - x|^2 / gamma) (ImageNet config 16)"),
    ],
    check=_distance_check,
    counterparts={
        "rbf_softmax": "pycls.losses.rbflogit.RBFLogits(feature_dim, class_num, scale=35, gamma=16) (2han9x1a0release/RBF-Softmax, "
        "configs/ResNet-50-RBF_8gpu.yaml RBF_SCALE 35, RBF_GAMMA 16; then CrossEntropyLoss; its bias parameter is unused)",
        "ports": "RBFLogits(feature_dim, class_num, scale, gamma) (third-party PyTorch ports: s = 4, gamma = 1.8 for 10 classes, "
        "s = 14, gamma = 2.2 otherwise, s = 4, gamma = 2 on CIFAR-100; some take |x|^2 + |W|^2 - 2 x.W, which cancels for near points)",
    },
    references=[
        "Zhang, Zhao, Qiao, Li, RBF-Softmax: Learning Deep Representative Prototypes with Radial Basis Function Softmax, ECCV 2020",
        "margin_losses.md section 10.4",
    ],
)
def rbf_softmax_loss(xp, features, labels, weights, *, scale, gamma):
    """RBF-Softmax: ``z_ij = s exp(-|W_j - x_i|^2 / gamma)``, softmax cross-entropy over the classes j.

    ``l_i = -log softmax(z_i)_{y_i}`` with ``K_ij = exp(-d_ij / gamma)`` the Gaussian kernel of the squared
    distance to the class centre ``W_j`` (raw features and centres, nothing normalised, no bias). Defaults
    ``s = 35, gamma = 16``: the official ImageNet config (ResNet-50); third-party ports use ``s = 4,
    gamma = 1.8`` (10 classes), ``s = 14, gamma = 2.2`` or ``s = 4, gamma = 2`` (CIFAR-100).

    Gradient: ``dz_ij/dx_i = (2 s K_ij / gamma)(W_j - x_i) = -dz_ij/dW_j`` (chain rule through ``exp`` and
    ``d_ij = |W_j - x_i|^2``), so with ``g = p - onehot(y)``: ``dL/dx_i = (2 s / gamma) sum_j g_ij K_ij (W_j - x_i)``
    and ``dL/dW_j = -(2 s / gamma) sum_i g_ij K_ij (W_j - x_i)``, summed over the differences themselves.

    Numerics: ``d_ij`` from the differences (see :func:`_centre_differences`: no cancellation for a
    feature next to a centre far from the origin, no overflow for any finite input). Where ``K``
    underflows for every class (a feature far from all centres) the logits are all 0: the loss is
    ``log C`` (a uniform softmax) and the gradient exactly 0, as in the reference code.

    Shapes: ``features (N, D)``, ``labels (N,)`` in ``[0, C)``, ``weights (C, D)``; D may differ from C.
    """
    if features.shape[0] == 0:
        return _empty(xp, features)
    K, _, _ = _rbf_kernel(xp, features, weights, gamma)
    z = scale * K
    hot = one_hot(labels, weights.shape[0], axis=1, xp=xp)
    return _soft_target_cross_entropy(xp, xp.astype(hot, z.dtype), log_softmax(z, axis=1, xp=xp))


@rbf_softmax_loss.defvjp
def _rbf_softmax_vjp(xp, cot, features, labels, weights, *, scale, gamma):
    if features.shape[0] == 0:
        return xp.zeros_like(features), None, xp.zeros_like(weights)
    K, diff, h = _rbf_kernel(xp, features, weights, gamma)
    z = scale * K
    hot = one_hot(labels, weights.shape[0], axis=1, xp=xp)
    k = _cotangent_scale(xp, cot)
    gz = _soft_target_cross_entropy_grad(xp, cot / k, xp.astype(hot, z.dtype), z)  # cot (p - onehot) / k
    return _centre_grads(xp, gz * K * (2 * scale / gamma), diff, h, k)


def _lgm_distances(xp, features, weights):
    """``(d, diff, h)``: ``d_ik = |x_i - mu_k|^2 / 2`` (as ``((m / h) sqrt(ss / 2))^2``: overflows only where ``d`` does)."""
    diff, h, m, ss = _centre_differences(xp, features, weights)
    t = (m / h) * xp.sqrt(ss / 2)
    return t * t, diff, h


def _lgm_logits(xp, d, labels, alpha):
    hot = one_hot(labels, d.shape[1], axis=1, xp=xp)
    return xp.where(hot, -(1 + alpha) * d, -d), hot


@loss(
    family="margin",
    inputs=[
        Input("features", shape="N D", domain=D.lgm_features, doc="feature vectors (raw)"),
        _LABELS,
        Input("weights", shape="C D", domain=D.lgm_means, doc="class means mu, one row per class (raw)"),
    ],
    params=[
        Param("alpha", 1.0, low=0.0, grid=(0.0, 0.1), doc="alpha: the target's distance is multiplied by 1 + alpha (margin)"),
        Param("lambda_", 0.1, low=0.0, grid=(0.0,), doc="lambda: weight of the likelihood regulariser |x - mu_y|^2 / 2"),
    ],
    check=_distance_check,
    counterparts={
        "softmax_variants": "LGMLoss_v0(num_classes, feat_dim, alpha=1.0) (YirongMao/softmax_variants: CrossEntropyLoss(margin_logits) "
        "+ 0.1 * likelihood, train_mnist_LGM.py; LGMLoss with log_covs = 0 is the same)",
        "lgm_caffe": "ClassDistance layer, metric L2, isotropic, update_sigma false (WeitaoVan/L-GM-loss: margin_mul = alpha, center_coef = lambda_; "
        "distances divided by sigma + 1e-4 = 1.0001; the regulariser enters the backward only, not the reported loss)",
        "lgm_tensorflow": "resnet_model.lgm_logits(feat, num_classes, labels, alpha=0.1, lambda_=0.01) (WeitaoVan/L-GM-loss tensorflow demo: "
        "softmax CE of its logits + likelihood_reg_loss; expanded |x|^2 + |mu|^2 - 2 x.mu distance)",
    },
    references=[
        "Wan, Zhong, Li, Chen, Rethinking Feature Distribution for Loss Functions in Image Classification, CVPR 2018",
        "margin_losses.md section 8 (LGMLoss, LGMLoss_v0)",
    ],
)
def lgm_loss(xp, features, labels, weights, *, alpha, lambda_):
    """Large-margin Gaussian mixture (L-GM) loss, identity covariance and equal priors.

    ``d_ik = |x_i - mu_k|^2 / 2``, margin logits ``z_ik = -d_ik (1 + alpha [k = y_i])``, and
    ``l_i = -log softmax(z_i)_{y_i} + lambda d_{i y_i}``: the classification loss with the margin plus
    the likelihood regulariser ``-log N(x_i; mu_y, I)`` less its constant ``(D/2) log 2 pi``. The 1/2 is in
    every implementation's distance: the official Caffe layer's ``-0.5 |W - x|^2 / (sigma + 1e-4)``, its
    TensorFlow demo's ``-0.5 (XX - 2 XY + YY)``, LGMLoss_v0's ``-0.5 dist`` (the paper's
    ``d_k = (x - mu_k)^T Sigma_k^{-1} (x - mu_k) / 2`` [paper, not re-verified]; ``-1/2 log|Sigma|`` and the
    priors cancel here). The regulariser is ``|x - mu_y|^2 / 2`` averaged over the batch in all three
    (LGMLoss_v0 ``(1/B) sum |x - mu_y|^2 / 2``, ``tf.nn.l2_loss / N``, Caffe's gradient ``center_coef / M (x - mu_y)``),
    which is this per-sample form under ``reduction='mean'`` (the paper writes L_lkd as a sum over the
    batch [not re-verified]: that is ``reduction='sum'`` of the regulariser, i.e. lambda times N).

    Defaults ``alpha = 1.0, lambda_ = 0.1``: YirongMao's MNIST example (``train_mnist_LGM.py``,
    LGMLoss_v0, loss weight 0.1), as margin_losses.md section 8 records. The official CIFAR-100 Caffe
    example steps alpha from 0.1 to 0.3 with ``center_coef = 0.1``; the TensorFlow demo uses 0.1 and 0.01.
    ``alpha = lambda_ = 0`` is softmax cross-entropy of ``-|x - mu_k|^2 / 2``.

    Gradient, with ``g = p - onehot(y)`` of the margin logits: ``dz_ik/dx_i = (1 + alpha [k = y_i])(mu_k - x_i)``
    and ``d(lambda d_iy)/dx_i = lambda (x_i - mu_y)``, so ``dL/dx_i = sum_k B_ik (mu_k - x_i)`` and
    ``dL/dmu_k = -sum_i B_ik (mu_k - x_i)`` with ``B = g (1 + alpha onehot) - lambda onehot``.

    Numerics: distances from the differences (:func:`_centre_differences`), so a feature next to its
    mean keeps its precision far from the origin (the TensorFlow demo's expanded form does not).

    Shapes: ``features (N, D)``, ``labels (N,)`` in ``[0, C)``, ``weights (C, D)`` (the means); D may differ from C.
    """
    if features.shape[0] == 0:
        return _empty(xp, features)
    d, _, _ = _lgm_distances(xp, features, weights)
    z, hot = _lgm_logits(xp, d, labels, alpha)
    ce = _soft_target_cross_entropy(xp, xp.astype(hot, z.dtype), log_softmax(z, axis=1, xp=xp))
    if lambda_ == 0:
        return ce
    return ce + lambda_ * take_along_axis(d, labels, axis=1, xp=xp)


@lgm_loss.defvjp
def _lgm_vjp(xp, cot, features, labels, weights, *, alpha, lambda_):
    if features.shape[0] == 0:
        return xp.zeros_like(features), None, xp.zeros_like(weights)
    d, diff, h = _lgm_distances(xp, features, weights)
    z, hot = _lgm_logits(xp, d, labels, alpha)
    k = _cotangent_scale(xp, cot)
    c = cot / k
    gz = _soft_target_cross_entropy_grad(xp, c, xp.astype(hot, z.dtype), z)  # cot (p - onehot) / k
    coef = xp.where(hot, (1 + alpha) * gz - lambda_ * xp.expand_dims(c, axis=1), gz)
    return _centre_grads(xp, coef, diff, h, k)
