"""Box-regression losses: IoU (linear, square, log), GIoU, DIoU, CIoU; box formats; pairwise IoU.

Every loss is aligned (elementwise over boxes): ``pred`` and ``target`` are ``(N, 4)``, the
unreduced loss is ``(N,)``. Both inputs are differentiable.

**One geometry, one backward.** All four losses are ``1 - q`` built from one geometry core
(:func:`_geometry`) on corner coordinates ``(x1, y1, x2, y2)`` of the prediction and ``(X1, Y1,
X2, Y2)`` of the target:

- ``w = x2 - x1``, ``h = y2 - y1`` (and ``W``, ``H``); areas ``A = w h``, ``Ag = W H``;
- intersection ``iw = min(x2, X2) - max(x1, X1)`` (``ih`` likewise), ``I = iw ih`` where both are
  positive, else 0; union ``U = A + Ag - I``; ``IoU = I / Ud`` with ``Ud`` the convention's
  denominator (``U + eps``, ``max(U, eps)`` or ``U``);
- enclosing box ``cw = max(x2, X2) - min(x1, X1)`` (``ch``), ``C = cw ch``, diagonal
  ``c2 = cw^2 + ch^2 (+ eps)``;
- centre distance ``rho2 = ((X1 + X2 - x1 - x2)^2 + (Y1 + Y2 - y1 - y2)^2) / 4``;
- aspect term ``v = (4 / pi^2) (atan(W / H) - atan(w / h))^2``, evaluated as ``atan2(W, H) -
  atan2(w, h)`` (the same for ``w, h >= 0``, and its limit ``pi / 2`` at ``h = 0``).

``q`` is ``IoU`` (iou_loss; ``square`` mode: ``1 - IoU^2``, ``log``: ``-log IoU``), ``IoU - (C - U)
/ C`` (GIoU), ``IoU - rho2 / c2`` (DIoU), ``IoU - rho2 / c2 - alpha v`` (CIoU, ``alpha`` a constant).

**Gradient.** The VJP is reverse-mode through that graph, written by hand in :func:`_backward`:
``dIoU = dI / Ud - IoU dUd / Ud``; ``dU = dA + dAg - dI``; ``dA = (-h, -w, h, w)`` on ``(x1, y1, x2,
y2)``; ``dI/diw = ih`` (and ``iw`` for ``ih``); ``d (C - U) / C = (U dC - C dU) / C^2``, its numerator per
coordinate in double-double (:func:`_giou_pen_grads`: it cancels for far-apart and for nested boxes);
``d (rho2 / c2) = drho2 / c2 - rho2 dc2 / c2^2`` with ``drho2 / dx1 = -(X1 + X2 - x1 - x2) / 2`` and
``dc2 = 2 cw dcw + 2 ch dch``; ``d atan2(w, h) = (h dw - w dh) / (w^2 + h^2)``, so ``dv / dw = -(8 /
pi^2) D h / (w^2 + h^2)``, ``dv / dh = (8 / pi^2) D w / (w^2 + h^2)`` with ``D = atan2(W, H) -
atan2(w, h)``. Every preset computes CIoU's ``alpha`` under ``torch.no_grad`` (held constant), and
so does ``ciou_loss`` by default (``alpha_gradient='detached'``, declared to the gradient proof as a
stop-gradient); ``alpha_gradient='through'`` is the exact derivative of the value (alpha
differentiated, mmdet 2.x).

**Ties: the PyTorch subgradient conventions** (the value is continuous there; the derivative is not):

- ``max``/``min`` of equal coordinates (``x1 == X1``, ``x2 == X2`` ...): half the gradient to each
  argument (``torch.maximum``/``torch.minimum`` backward). Identical boxes therefore get a zero
  IoU/GIoU gradient.
- touching boxes (``iw == 0`` or ``ih == 0`` exactly): ``torchvision``/``detectron2`` mask the
  intersection with a strict ``iw > 0 & ih > 0``, so ``dI = 0``; ``mmdet``/``ultralytics``/``paper``
  use ``clamp(iw, min=0)``, whose backward passes at equality, so ``dI/diw = max(ih, 0)`` (not 0).
- ``clamp`` (mmdet's ``IoU.clamp(min=eps)``, the ``[-1, 1]`` output clamps) passes the gradient at
  the bound, stops it beyond; ``max(U, eps)`` splits it in half at ``U == eps``; mmdet's gate
  ``IoU > 0.5`` is strict.

**Degenerate and invalid boxes.** Boxes must satisfy ``x1 <= x2`` and ``y1 <= y2`` (after conversion
to corners): refloss rejects others with ``ValueError`` for every convention (torchvision documents
that format, detectron2 and fvcore assert it; mmdet and ultralytics compute a meaningless number).
Zero-width and zero-height boxes are valid. Where a convention divides ``0 / 0`` (the ``paper``
formulas, which have no eps, for two boxes of zero union; torchvision/detectron2/paper CIoU's
``atan(0 / 0)`` for a box with ``w = h = 0``; ``-log(0)`` of the ``paper`` log IoU of disjoint boxes),
refloss raises ``ValueError`` naming the loss and the convention instead of returning NaN. Two
documented deviations from autograd: (1) torchvision/detectron2 CIoU at ``h = 0 < w``: the forward
is ``atan(w / 0) = pi / 2`` in both, but PyTorch's backward is ``inf * 0 = NaN``
(DIoU-pytorch-detectron#19); refloss gives the true (finite) derivative ``dv/dh = (8/pi^2) D / w``.
(2) CIoU ``alpha = 0 / 0`` (mmdet 3.x and paper, identical boxes whose IoU rounds to 1: NaN in
float32 for mmdet, box_seg_losses.md section 1.5) is 0 here, the value ``alpha v = 0`` takes for
every ``alpha`` in ``[0, 1]``.

**Conventions** (``convention=``), from each library's source (listed in ``counterparts``):

- ``torchvision``: ``torchvision.ops.{generalized_box_iou,distance_box_iou,complete_box_iou}_loss``
  (eps 1e-7): ``IoU = I / (U + eps)``, GIoU ``(C - U) / (C + eps)``, ``c2 + eps``, strict
  intersection mask, CIoU ``alpha = v / (1 - IoU + v + eps)``, no clamp. No IoU loss in torchvision.
- ``detectron2``: ``fvcore.nn.giou_loss`` and ``detectron2.layers.losses.{diou,ciou}_loss`` at
  their default eps 1e-7: the same formulas as torchvision, hence the same numbers.
- ``mmdet`` (3.x ``mmdet/models/losses/iou_loss.py``, the ``*IoULoss`` class default eps 1e-6):
  intersection by ``clamp(min=0)``; IoU/GIoU through ``bbox_overlaps``: ``max(U, eps)``,
  ``max(C, eps)``; IoU loss clamps ``IoU`` at ``eps`` before the mode; DIoU/CIoU: ``U + eps``,
  ``c2 + eps``; CIoU ``h + eps`` inside ``v`` only, ``alpha = [IoU > 0.5] v / (1 - IoU + v)``, and
  ``1 - clamp(ciou, -1, 1)``.
- ``ultralytics``: ``ultralytics.utils.metrics.bbox_iou(xywh=False, eps=1e-7)`` (the xyxy branch,
  which v8's ``BboxLoss`` uses): ``h + eps`` for both boxes in the areas and in ``v``, ``U + eps``,
  ``C + eps`` and ``(C + eps - (U + eps)) / (C + eps)``, ``c2 + eps``, ``alpha = v / (v - IoU + (1 +
  eps))``; loss ``1 - q``. Only the linear IoU loss exists there.
- ``paper``: the formulas of the papers with no eps: UnitBox (Yu et al. 2016) for the IoU loss,
  Rezatofighi et al. 2019 for GIoU, the DIoU/CIoU authors' code (Zzh-tju/DIoU-SSD-pytorch
  ``bbox_overlaps_diou``/``bbox_overlaps_ciou``: ``clamp(min=0)`` intersection, ``alpha = v / (1 - IoU
  + v)`` ungated, ``q`` clamped to ``[-1, 1]``).

**Formats** (``box_format=``): ``xyxy`` corners; ``xywh`` corner + size (COCO); ``cxcywh`` centre +
size (YOLO's "xywh", DETR); ``yxyx`` (TF-Addons, TF object detection). Inputs are converted to corners
(:func:`convert_boxes`) and the gradient is mapped back through the conversion's transpose.
"""

from __future__ import annotations

import math

import numpy as np

from .. import domains as D
from ..loss import Input, Param, _fail, loss
from ..xp import dd_mul, namespace, renormalise, two_sum

__all__ = [
    "BOX_FORMATS",
    "CONVENTIONS",
    "box_iou",
    "ciou_loss",
    "convert_boxes",
    "diou_loss",
    "generalized_box_iou",
    "giou_loss",
    "iou_loss",
]

BOX_FORMATS = ("xyxy", "xywh", "cxcywh", "yxyx")
CONVENTIONS = ("torchvision", "detectron2", "mmdet", "ultralytics", "paper")

_FOUR_OVER_PI2 = 4.0 / math.pi**2

# What each preset fixes. inter: 'strict' mask or 'clamp'; union: 'add' (U + eps), 'max' (max(U, eps))
# or 'exact'; h_eps: where eps is added to the heights ('area' = areas and v, 'v' = CIoU's v only).
_PRESETS = {
    "torchvision": dict(eps=1e-7, inter="strict", h_eps=None, clamp=False, source="torchvision.ops *_box_iou_loss (eps=1e-7)"),
    "detectron2": dict(eps=1e-7, inter="strict", h_eps=None, clamp=False, source="fvcore.nn.giou_loss, detectron2.layers.losses diou/ciou (eps=1e-7)"),
    "mmdet": dict(eps=1e-6, inter="clamp", h_eps="v", clamp=True, source="mmdet 3.x mmdet/models/losses/iou_loss.py (*IoULoss eps=1e-6)"),
    "ultralytics": dict(eps=1e-7, inter="clamp", h_eps="area", clamp=False, source="ultralytics.utils.metrics.bbox_iou(xywh=False, eps=1e-7)"),
    "paper": dict(eps=0.0, inter="clamp", h_eps=None, clamp=True, source="UnitBox 2016, GIoU 2019, Zzh-tju/DIoU-SSD-pytorch box_utils.py"),
}


def _union_mode(convention, kind):
    if convention == "paper":
        return "exact"
    if convention == "mmdet" and kind in ("iou", "giou"):
        return "max"  # bbox_overlaps
    return "add"


# ------------------------------------------------------------------------------------------------
# Formats.


def _cols(b):
    return b[:, 0], b[:, 1], b[:, 2], b[:, 3]


def _to_corners(xp, b, fmt):
    """The four corner columns ``(x1, y1, x2, y2)`` of ``b`` in format ``fmt``."""
    a, c, d, e = _cols(b)
    if fmt == "xyxy":
        return a, c, d, e
    if fmt == "yxyx":
        return c, a, e, d
    if fmt == "xywh":
        return a, c, a + d, c + e
    # cxcywh (torchvision box_convert: cx - 0.5 w)
    return a - 0.5 * d, c - 0.5 * e, a + 0.5 * d, c + 0.5 * e


def _from_corner_grads(xp, g, fmt):
    """The transpose of :func:`_to_corners`: gradients on the corners to gradients on ``fmt``."""
    g1, g2, g3, g4 = g
    if fmt == "xyxy":
        cols = (g1, g2, g3, g4)
    elif fmt == "yxyx":
        cols = (g2, g1, g4, g3)
    elif fmt == "xywh":
        cols = (g1 + g3, g2 + g4, g3, g4)
    else:
        cols = (g1 + g3, g2 + g4, 0.5 * (g3 - g1), 0.5 * (g4 - g2))
    return xp.stack(cols, axis=-1)


def _check_format(name, arg, fmt):
    if fmt not in BOX_FORMATS:
        _fail(ValueError, name, arg, "one of " + ", ".join(repr(f) for f in BOX_FORMATS), repr(fmt))


def convert_boxes(boxes, src, dst):
    """Convert ``(..., 4)`` boxes from format ``src`` to ``dst`` (``xyxy``, ``xywh``, ``cxcywh``, ``yxyx``).

    Conversions go through corners; ``xyxy <-> yxyx`` and ``xyxy <-> xywh`` round-trip exactly,
    ``cxcywh`` to within an ulp (``cx - w / 2``).
    """
    _check_format("convert_boxes", "src", src)
    _check_format("convert_boxes", "dst", dst)
    if not hasattr(boxes, "shape") or boxes.ndim < 1 or boxes.shape[-1] != 4:
        _fail(ValueError, "convert_boxes", "boxes", "an array of shape (..., 4)", f"{getattr(boxes, 'shape', type(boxes).__name__)}")
    xp = namespace(boxes)
    lead = tuple(boxes.shape[:-1])
    flat = xp.reshape(boxes, (-1, 4))
    x1, y1, x2, y2 = _to_corners(xp, flat, src)
    if dst == "xyxy":
        cols = (x1, y1, x2, y2)
    elif dst == "yxyx":
        cols = (y1, x1, y2, x2)
    elif dst == "xywh":
        cols = (x1, y1, x2 - x1, y2 - y1)
    else:
        cols = (0.5 * (x1 + x2), 0.5 * (y1 + y2), x2 - x1, y2 - y1)
    return xp.reshape(xp.stack(cols, axis=-1), lead + (4,))


# ------------------------------------------------------------------------------------------------
# The geometry core and its backward.


def _ge(xp, a, b):
    return xp.astype(a >= b, a.dtype)


def _max_split(xp, a, b):
    """``d max(a, b) / da``: 1 where ``a > b``, 1/2 at a tie (PyTorch), 0 below."""
    return xp.astype(a > b, a.dtype) + 0.5 * xp.astype(a == b, a.dtype)


def _safe(xp, den):
    return xp.where(den == 0, xp.ones_like(den), den)


class _DD:
    """Double-double values ``(hi, lo)`` on arrays, on top of the shim's error-free transformations
    (:func:`refloss.xp.two_sum`, :func:`refloss.xp.dd_mul`): ``+ - *`` only."""

    def __init__(self, xp):
        self.xp = xp

    def const(self, c, like):
        return (self.xp.full_like(like, c), self.xp.zeros_like(like))

    def sub(self, a, b):
        """``a - b`` exactly, from two working-precision arrays."""
        return two_sum(self.xp, a, -b)

    def add(self, x, y):
        s, e = two_sum(self.xp, x[0], y[0])
        return renormalise(self.xp, s, e + (x[1] + y[1]))

    def neg(self, x):
        return (-x[0], -x[1])

    def scale(self, x, k):
        """``k x`` for a power of two ``k`` (exact)."""
        return (k * x[0], k * x[1])

    def mul(self, x, y):
        return dd_mul(self.xp, x[0], x[1], y[0], y[1])

    def where(self, m, x, other):
        return (self.xp.where(m, x[0], other), self.xp.where(m, x[1], self.xp.zeros_like(other)))


def _geometry(xp, pred, target, kind, convention, fmt):
    """Every intermediate of the forward, as a dict (the backward reads them)."""
    cfg = _PRESETS[convention]
    eps = cfg["eps"]
    if fmt in ("xywh", "cxcywh"):
        # Every quantity is translation invariant: move the prediction's reference point to the origin
        # first, so that the corners x + w (cx -+ w/2) are rounded at the boxes' scale, not their offset.
        shift = xp.stack([pred[:, 0], pred[:, 1], xp.zeros_like(pred[:, 0]), xp.zeros_like(pred[:, 0])], axis=-1)
        pred, target = pred - shift, target - shift
    x1, y1, x2, y2 = _to_corners(xp, pred, fmt)
    X1, Y1, X2, Y2 = _to_corners(xp, target, fmt)
    g = dict(x1=x1, y1=y1, x2=x2, y2=y2, X1=X1, Y1=Y1, X2=X2, Y2=Y2, eps=eps, cfg=cfg, kind=kind)
    w, h, W, H = x2 - x1, y2 - y1, X2 - X1, Y2 - Y1
    ha, Ha = (h + eps, H + eps) if cfg["h_eps"] == "area" else (h, H)
    g.update(w=w, h=h, W=W, H=H, ha=ha, Ha=Ha)
    iw = xp.minimum(x2, X2) - xp.maximum(x1, X1)
    ih = xp.minimum(y2, Y2) - xp.maximum(y1, Y1)
    zero = xp.zeros_like(iw)
    # The areas in double-double (exact differences and products, see _dd_*): U = A + Ag - I and
    # U - I cancel for overlapping boxes, and the whole loss and its gradient inherit their error.
    # The value of I is the same under the strict mask and the clamp (0 unless iw > 0 and ih > 0).
    dd = _DD(xp)
    m = (iw > 0) & (ih > 0)
    hd, Hd = dd.sub(y2, y1), dd.sub(Y2, Y1)
    if cfg["h_eps"] == "area":
        hd, Hd = dd.add(hd, dd.const(eps, h)), dd.add(Hd, dd.const(eps, h))
    wd, Wd = dd.sub(x2, x1), dd.sub(X2, X1)
    iwd, ihd = dd.sub(xp.minimum(x2, X2), xp.maximum(x1, X1)), dd.sub(xp.minimum(y2, Y2), xp.maximum(y1, Y1))
    Ad, Agd = dd.mul(wd, hd), dd.mul(Wd, Hd)
    Id = dd.where(m, dd.mul(iwd, ihd), zero)
    Uds = dd.add(dd.add(Ad, Agd), dd.neg(Id))  # U
    I, U = Id[0], Uds[0]
    umi = dd.add(dd.add(Ad, Agd), dd.scale(Id, -2.0))  # U - I
    umode = _union_mode(convention, kind)
    if umode == "add":
        Udd = dd.add(Uds, dd.const(eps, U))
        ud_minus_i = dd.add(umi, dd.const(eps, U))[0]
    elif umode == "max":
        Udd = dd.where(~(U < eps), Uds, xp.full_like(U, eps))  # max(U, eps), NaN passing through
        ud_minus_i = xp.where(U >= eps, umi[0], eps - I)
    else:
        Udd, ud_minus_i = Uds, umi[0]
    Ud = Udd[0]
    iou = I / _safe(xp, Ud)
    omi = ud_minus_i / _safe(xp, Ud)  # 1 - IoU without cancellation (exactly 0 for identical boxes)
    g.update(dd=dd, U_dd=Uds, Ud_dd=Udd, sides_dd=(wd, hd, Wd, Hd), inter_dd=(iwd, ihd))
    g.update(iw=iw, ih=ih, I=I, U=U, Ud=Ud, umode=umode, iou=iou, omi=omi)
    if kind == "iou":
        return g
    cw = xp.maximum(x2, X2) - xp.minimum(x1, X1)
    ch = xp.maximum(y2, Y2) - xp.minimum(y1, Y1)
    g.update(cw=cw, ch=ch)
    if kind == "giou":
        cwd, chd = dd.sub(xp.maximum(x2, X2), xp.minimum(x1, X1)), dd.sub(xp.maximum(y2, Y2), xp.minimum(y1, Y1))
        Cdd = dd.mul(cwd, chd)
        C = Cdd[0]
        if convention in ("torchvision", "detectron2"):
            Cn, Un, Cd = C, U, C + eps  # (C - U) / (C + eps): the raw union on top
        elif convention == "mmdet":
            Cn = Cd = xp.maximum(C, xp.full_like(C, eps))
            Un = Ud
        elif convention == "ultralytics":
            Cn = Cd = C + eps
            Un = Ud
        else:
            Cn, Un, Cd = C, U, C
        # C - U in double-double (it cancels for nearly identical boxes); under ultralytics U is the
        # union of the eps-heightened areas, and (C + eps) - (U + eps) is the same C - U.
        cmu = dd.add(Cdd, dd.neg(g["U_dd"]))[0]
        if convention == "mmdet":
            cmu = xp.where(U >= eps, cmu, Cn - Un)
        pen = cmu / _safe(xp, Cd)
        if convention == "mmdet":
            Cdd_d = dd.where(~(C < eps), Cdd, xp.full_like(C, eps))
        elif convention == "paper":
            Cdd_d = Cdd
        else:
            Cdd_d = dd.add(Cdd, dd.const(eps, C))
        g.update(C=C, Cd=Cd, pen=pen, Cd_dd=Cdd_d, enclosing_dd=(cwd, chd))
        return g
    # centre distance (the same number in every implementation): as differences of corresponding
    # coordinates, so that boxes far from the origin do not round the sums x1 + x2 at their offset
    dx, dy = (X1 - x1) + (X2 - x2), (Y1 - y1) + (Y2 - y2)
    rho2 = (dx * dx + dy * dy) / 4
    c2 = cw * cw + ch * ch + eps
    pen = rho2 / _safe(xp, c2)
    g.update(dx=dx, dy=dy, rho2=rho2, c2=c2, pen_d=pen)
    if kind == "ciou":
        hv, Hv = (h + eps, H + eps) if cfg["h_eps"] in ("v", "area") else (h, H)
        delta = xp.atan2(W, Hv) - xp.atan2(w, hv)
        v = _FOUR_OVER_PI2 * delta * delta
        if convention in ("torchvision", "detectron2"):
            alpha = v / (1 - iou + v + eps)
        elif convention == "ultralytics":
            alpha = v / (v - iou + (1 + eps))
        else:
            den = 1 - iou + v
            alpha = xp.where(den > 0, v / _safe(xp, den), xp.zeros_like(v))
            if convention == "mmdet":
                alpha = xp.where(iou > 0.5, alpha, xp.zeros_like(alpha))
        pen = pen + alpha * v
        g.update(hv=hv, Hv=Hv, delta=delta, v=v, alpha=alpha)
    g["pen"] = pen
    return g


def _value(xp, g, mode="linear"):
    kind, cfg = g["kind"], g["cfg"]
    iou, omi = g["iou"], g["omi"]  # omi = 1 - IoU, without cancellation
    if kind == "iou":
        if cfg is _PRESETS["mmdet"]:
            low = iou < g["eps"]
            iou = xp.where(low, xp.full_like(iou, g["eps"]), iou)  # clamp(min=eps)
            omi = xp.where(low, 1 - iou, omi)
        if mode == "linear":
            return omi
        if mode == "square":
            return omi * (1 + iou)
        return xp.where(omi < 0.5, -xp.log1p(-omi), -xp.log(iou))  # log1p where IoU is near 1
    out = omi + g["pen"]  # 1 - (IoU - pen)
    if _clamps_output(g):
        out = xp.clip(out, 0.0, 2.0)  # 1 - clamp(q, -1, 1)
    return out


def _clamps_output(g):
    cfg, kind = g["cfg"], g["kind"]
    return cfg["clamp"] and kind in ("diou", "ciou") and (cfg is _PRESETS["paper"] or kind == "ciou")


def _backward(xp, cot, g, mode, fmt, alpha_gradient="detached"):
    """Gradients of ``sum(cot * loss)`` on ``pred`` and ``target`` (see the module docstring)."""
    kind, cfg, eps = g["kind"], g["cfg"], g["eps"]
    iou = g["iou"]
    zero = xp.zeros_like(iou)
    # The per-box gradient is formed for a unit cotangent and scaled once at the end, so that every
    # reduction gives the same (cancellation-prone) sums scaled, to the last ulp.
    scale, cot = cot * xp.ones_like(iou), xp.ones_like(iou)
    # d loss / d iou and d loss / d pen
    if kind == "iou":
        if cfg is _PRESETS["mmdet"]:
            pass_ = _ge(xp, iou, xp.full_like(iou, eps))  # clamp(min=eps) passes at equality
            iou_c = xp.maximum(iou, xp.full_like(iou, eps))
        else:
            pass_, iou_c = xp.ones_like(iou), iou
        if mode == "linear":
            g_iou = -cot * pass_
        elif mode == "square":
            g_iou = -2 * iou_c * cot * pass_
        else:
            g_iou = -cot * pass_ / _safe(xp, iou_c)
        g_pen = zero
    else:
        g_q = -cot * xp.ones_like(iou)
        if _clamps_output(g):
            q = iou - g["pen"]
            g_q = g_q * xp.astype((q >= -1) & (q <= 1), iou.dtype)
        g_iou, g_pen = g_q, -g_q
    G = {k: zero for k in ("x1", "y1", "x2", "y2", "X1", "Y1", "X2", "Y2")}
    g_w = g_h = g_W = g_H = g_cw = g_ch = g_U = zero
    # IoU = I / Ud: its derivative is added in closed form at the end (_iou_grads), with coefficient c_iou
    c_iou = g_iou
    g_I = g_Ud = zero
    if kind == "giou":
        for k, d in _giou_pen_grads(xp, g).items():
            G[k] = G[k] + g_pen * d
    elif kind in ("diou", "ciou"):
        c2 = _safe(xp, g["c2"])
        g_rho2 = g_pen / c2
        g_c2 = -g_pen * g["pen_d"] / c2
        g_cw = g_cw + 2 * g["cw"] * g_c2
        g_ch = g_ch + 2 * g["ch"] * g_c2
        gx, gy = g_rho2 * g["dx"] / 2, g_rho2 * g["dy"] / 2
        G["x1"], G["x2"], G["X1"], G["X2"] = G["x1"] - gx, G["x2"] - gx, G["X1"] + gx, G["X2"] + gx
        G["y1"], G["y2"], G["Y1"], G["Y2"] = G["y1"] - gy, G["y2"] - gy, G["Y1"] + gy, G["Y2"] + gy
        if kind == "ciou":
            alpha = g["alpha"]
            if alpha_gradient == "detached":  # torch.no_grad: alpha is a constant
                g_v = g_pen * alpha
            else:  # T = alpha v = v^2 / D, dD = dv - dIoU: dT = (2 alpha - alpha^2) dv + alpha^2 dIoU
                g_v = g_pen * (2 * alpha - alpha * alpha)
                c_iou = c_iou + g_pen * alpha * alpha
            g_delta = g_v * 2 * _FOUR_OVER_PI2 * g["delta"]
            w, hv, W, Hv = g["w"], g["hv"], g["W"], g["Hv"]
            r = _safe(xp, w * w + hv * hv)
            R = _safe(xp, W * W + Hv * Hv)
            g_W = g_W + g_delta * Hv / R
            g_H = g_H - g_delta * W / R
            g_w = g_w - g_delta * hv / r
            g_h = g_h + g_delta * w / r
    # Ud -> U
    if g["umode"] == "max":
        g_U = g_U + g_Ud * _max_split(xp, g["U"], xp.full_like(g["U"], eps))
    else:
        g_U = g_U + g_Ud
    # U = w ha + W Ha - I
    g_I = g_I - g_U
    g_w = g_w + g_U * g["ha"]
    g_h = g_h + g_U * g["w"]
    g_W = g_W + g_U * g["Ha"]
    g_H = g_H + g_U * g["W"]
    # I from iw, ih
    iw, ih = g["iw"], g["ih"]
    if cfg["inter"] == "strict":
        m = xp.astype((iw > 0) & (ih > 0), iw.dtype)
        g_iw, g_ih = g_I * ih * m, g_I * iw * m
    else:
        g_iw = g_I * xp.maximum(ih, zero) * _ge(xp, iw, zero)
        g_ih = g_I * xp.maximum(iw, zero) * _ge(xp, ih, zero)
    # iw = min(x2, X2) - max(x1, X1); cw = max(x2, X2) - min(x1, X1)
    for lo, hi, LO, HI, gi, gc in (("x1", "x2", "X1", "X2", g_iw, g_cw), ("y1", "y2", "Y1", "Y2", g_ih, g_ch)):
        a1, a2, b1, b2 = g[lo], g[hi], g[LO], g[HI]
        s_lo = _max_split(xp, a1, b1)  # share of x1 in max(x1, X1)
        s_hi = _max_split(xp, b2, a2)  # share of x2 in min(x2, X2)
        e_lo = _max_split(xp, b1, a1)  # share of x1 in min(x1, X1)
        e_hi = _max_split(xp, a2, b2)  # share of x2 in max(x2, X2)
        G[lo] = G[lo] - gi * s_lo - gc * e_lo
        G[LO] = G[LO] - gi * (1 - s_lo) - gc * (1 - e_lo)
        G[hi] = G[hi] + gi * s_hi + gc * e_hi
        G[HI] = G[HI] + gi * (1 - s_hi) + gc * (1 - e_hi)
    G["x1"], G["x2"] = G["x1"] - g_w, G["x2"] + g_w
    G["y1"], G["y2"] = G["y1"] - g_h, G["y2"] + g_h
    G["X1"], G["X2"] = G["X1"] - g_W, G["X2"] + g_W
    G["Y1"], G["Y2"] = G["Y1"] - g_H, G["Y2"] + g_H
    for k, d in _iou_grads(xp, g).items():
        G[k] = G[k] + c_iou * d
    gp = _from_corner_grads(xp, (G["x1"], G["y1"], G["x2"], G["y2"]), fmt)
    gt = _from_corner_grads(xp, (G["X1"], G["Y1"], G["X2"], G["Y2"]), fmt)
    scale = xp.reshape(scale, (-1, 1))
    return gp * scale, gt * scale


def _giou_pen_grads(xp, g):
    """``dpen / d`` each corner coordinate for GIoU's ``pen = (Cn - Un) / Cd``, in closed form.

    ``Cn`` and ``Cd`` both move with ``C`` and ``Un`` with ``U``, and ``Cd - (Cn - Un) = Ud`` in every
    convention (``C + eps - (C - U) = U + eps``; mmdet ``max(U, eps)``; ultralytics ``(C + eps) - (C +
    eps - (U + eps))``; paper ``U``), so ``dpen = (Ud dC - Cd dU) / Cd^2`` (times the ``max`` shares
    of mmdet). The two terms cancel twice over: far-apart boxes have ``pen -> 1`` (the reverse-mode
    ``(dC - dU) / Cd - pen dC / Cd`` loses the digits of ``pen``) and nested boxes ``dC = dU`` up to
    eps (ultralytics' ``h + eps`` areas make the whole derivative ``O(eps / C)``). So the numerator is
    formed per coordinate in double-double from exact sides: ``dC/dx2 = e ch``, ``dU/dx2 = ha - s k``
    (``e``, ``s`` the shares of ``x2`` in ``max(x2, X2)`` and ``min(x2, X2)``, ``k`` the intersection's
    other side where it counts, as in :func:`_iou_grads`); ``x1`` mirrors ``x2``, the target takes
    ``1 - e`` and ``1 - s``."""
    dd, cfg, eps, U, C = g["dd"], g["cfg"], g["eps"], g["U"], g["C"]
    Ud, Cd = g["Ud_dd"], g["Cd_dd"]
    Cdf = _safe(xp, g["Cd"])
    su = _max_split(xp, U, xp.full_like(U, eps)) if g["umode"] == "max" else xp.ones_like(U)
    sc = _max_split(xp, C, xp.full_like(C, eps)) if cfg is _PRESETS["mmdet"] else xp.ones_like(C)
    wd, hd, Wd, Hd = g["sides_dd"]
    iwd, ihd = g["inter_dd"]
    cwd, chd = g["enclosing_dd"]
    iw, ih = g["iw"], g["ih"]
    zero = xp.zeros_like(iw)
    if cfg["inter"] == "strict":
        m = (iw > 0) & (ih > 0)
        m_x = m_y = m
    else:  # clamp(min=0) passes at iw == 0 (the factor max(ih, 0) is then what counts)
        m_x, m_y = (iw >= 0) & (ih > 0), (ih >= 0) & (iw > 0)
    k_x, k_y = dd.where(m_x, ihd, zero), dd.where(m_y, iwd, zero)
    out = {}
    for lo, hi, LO, HI, ext, a_p, a_t, k in (("x1", "x2", "X1", "X2", chd, hd, Hd, k_x), ("y1", "y2", "Y1", "Y2", cwd, wd, Wd, k_y)):
        a1, a2, b1, b2 = g[lo], g[hi], g[LO], g[HI]
        s_lo = _max_split(xp, a1, b1)  # share of x1 in max(x1, X1)
        s_hi = _max_split(xp, b2, a2)  # share of x2 in min(x2, X2)
        e_lo = _max_split(xp, b1, a1)  # share of x1 in min(x1, X1)
        e_hi = _max_split(xp, a2, b2)  # share of x2 in max(x2, X2)
        for name, sign, e, area, s in ((lo, -1.0, e_lo, a_p, s_lo), (hi, 1.0, e_hi, a_p, s_hi), (LO, -1.0, 1 - e_lo, a_t, 1 - s_lo), (HI, 1.0, 1 - e_hi, a_t, 1 - s_hi)):
            dU = dd.add(area, dd.scale(k, -s))
            num = dd.add(dd.mul(Ud, dd.scale(ext, sc * e)), dd.neg(dd.mul(Cd, dd.scale(dU, su))))
            out[name] = sign * (num[0] / Cdf) / Cdf
    return out


def _iou_grads(xp, g):
    """``dIoU / d`` each corner coordinate, in closed form without cancellation.

    With ``k = dI/diw`` (``ih`` where the intersection counts, 0 where the strict mask or the clamp
    stops it), ``s`` the share of ``x1`` in ``max(x1, X1)``, ``su = dUd/dU`` and ``E = ha - k``:
    ``dI/dx1 = -s k``, ``dU/dx1 = -ha + s k``, so ``dIoU/dx1 = (IoU su (E + (1 - s) k) - s k) / Ud``;
    ``E`` is ``ha`` where nothing counts and else the excess ``relu(y2 - Y2) + relu(Y1 - y1)`` (+ eps
    under ultralytics), a sum of non-negative terms: the reverse-mode chain ``g_I k - g_U ha`` would
    instead subtract ``(1 + IoU) ih`` from ``IoU ha``, which cancels for nearly identical boxes.
    The other coordinates follow by symmetry (x2 mirrors x1; the target takes ``1 - s``)."""
    cfg, eps, iou, U = g["cfg"], g["eps"], g["iou"], g["U"]
    zero = xp.zeros_like(iou)
    Ud = _safe(xp, g["Ud"])
    iw, ih = g["iw"], g["ih"]
    if cfg["inter"] == "strict":
        m = (iw > 0) & (ih > 0)
        k_x, k_y = xp.where(m, ih, zero), xp.where(m, iw, zero)
    else:
        k_x = xp.where(iw >= 0, xp.maximum(ih, zero), zero)
        k_y = xp.where(ih >= 0, xp.maximum(iw, zero), zero)
    su = _max_split(xp, U, xp.full_like(U, eps)) if g["umode"] == "max" else xp.ones_like(U)
    ah = eps if cfg["h_eps"] == "area" else 0.0

    def relu(t):
        return xp.maximum(t, zero)

    x1, y1, x2, y2, X1, Y1, X2, Y2 = (g[k] for k in ("x1", "y1", "x2", "y2", "X1", "Y1", "X2", "Y2"))
    # E: the other side of each area minus k (the box's excess over the intersection, exactly)
    E_px = xp.where(k_x > 0, relu(y2 - Y2) + relu(Y1 - y1) + ah, g["ha"])
    E_tx = xp.where(k_x > 0, relu(Y2 - y2) + relu(y1 - Y1) + ah, g["Ha"])
    E_py = xp.where(k_y > 0, relu(x2 - X2) + relu(X1 - x1), g["w"])
    E_ty = xp.where(k_y > 0, relu(X2 - x2) + relu(x1 - X1), g["W"])
    c = iou * su
    out = {}
    for lo, hi, LO, HI, k, Ep, Et in (("x1", "x2", "X1", "X2", k_x, E_px, E_tx), ("y1", "y2", "Y1", "Y2", k_y, E_py, E_ty)):
        a1, a2, b1, b2 = g[lo], g[hi], g[LO], g[HI]
        s_lo = _max_split(xp, a1, b1)  # share of x1 in max(x1, X1)
        s_hi = _max_split(xp, b2, a2)  # share of x2 in min(x2, X2)
        out[lo] = (c * (Ep + (1 - s_lo) * k) - s_lo * k) / Ud
        out[hi] = -(c * (Ep + (1 - s_hi) * k) - s_hi * k) / Ud
        out[LO] = (c * (Et + s_lo * k) - (1 - s_lo) * k) / Ud
        out[HI] = -(c * (Et + s_hi * k) - (1 - s_hi) * k) / Ud
    return out


# ------------------------------------------------------------------------------------------------
# Validation (the ``check=`` hook): valid corners, and the 0/0 points a convention leaves undefined.


def _check_boxes(kind):
    def check(xp, name, pred, target, *, convention, box_format, mode="linear", **_):
        for arg, b in (("pred", pred), ("target", target)):
            x1, y1, x2, y2 = _to_corners(xp, b, box_format)
            bad = (x2 < x1) | (y2 < y1)
            if bool(xp.any(bad)):
                k = int(np.flatnonzero(np.asarray(_np(bad)))[0])
                _fail(
                    ValueError, name, arg,
                    f"boxes with x1 <= x2 and y1 <= y2 (box_format={box_format!r}: non-negative width and height)",
                    f"box {k} = {[float(c) for c in _np(b)[k]]}",
                )
        if kind == "iou" and convention == "ultralytics" and mode != "linear":
            _fail(ValueError, name, "mode", "'linear' under convention='ultralytics' (bbox_iou defines only 1 - IoU)", repr(mode))
        if convention == "paper" or (kind == "ciou" and convention in ("torchvision", "detectron2")) or (kind == "iou" and convention == "paper" and mode == "log"):
            g = _geometry(xp, pred, target, "iou", convention, box_format)
            if convention == "paper" and bool(xp.any(g["U"] == 0)):
                _fail(
                    ValueError, name, "pred, target",
                    "box pairs of positive union under convention='paper' (IoU = 0/0 is undefined; "
                    "the eps of 'torchvision', 'mmdet' or 'ultralytics' defines it)",
                    f"zero union at box {_first(xp, g['U'] == 0)}",
                )
            if kind == "iou" and convention == "paper" and mode == "log" and bool(xp.any(g["I"] == 0)):
                _fail(
                    ValueError, name, "pred, target",
                    "overlapping box pairs under convention='paper', mode='log' (-log(IoU) is +inf for "
                    "disjoint or touching boxes; convention='mmdet' clamps IoU at 1e-6)",
                    f"zero intersection at box {_first(xp, g['I'] == 0)}",
                )
            if kind == "ciou" and convention != "mmdet":
                for arg, w, h in (("pred", g["w"], g["h"]), ("target", g["W"], g["H"])):
                    point = (w == 0) & (h == 0)
                    if bool(xp.any(point)):
                        _fail(
                            ValueError, name, arg,
                            f"boxes with positive width or height under convention={convention!r} "
                            "(the aspect term atan(w / h) is 0/0; mmdet and ultralytics add eps to h)",
                            f"a zero-size box at {_first(xp, point)}",
                        )

    return check


def _np(x):
    from ..xp import to_numpy

    return np.asarray(to_numpy(x))


def _first(xp, mask):
    return int(np.flatnonzero(_np(mask))[0])


#: The labelled tie and degenerate cases (touching, identical, zero-width, [0,0,0,0], shared edges, zero-height),
#: as (pred, target) in xyxy; they are also the ``edge`` domain of every box loss.
EDGE_CASES = D.BOX_EDGE_CASES

# ------------------------------------------------------------------------------------------------
# Declarations.


def _inputs(kind):
    return [
        Input("pred", shape="N 4", domain=D.boxes(kind, "pred"), doc="predicted boxes, one per row"),
        Input("target", shape="N 4", domain=D.boxes(kind, "target"), doc="target boxes, the shape of pred"),
    ]


def _convention(default, choices=CONVENTIONS):
    return Param(
        "convention", default, kind="choice", choices=choices, grid=tuple(c for c in choices if c != default),
        doc="whose eps value and placement, stop-gradient set, alpha gating and output clamp (module docstring)",
    )


_FORMAT = Param(
    "box_format", "xyxy", kind="choice", choices=BOX_FORMATS, grid=BOX_FORMATS[1:],
    doc="xyxy corners, xywh corner + size, cxcywh centre + size, yxyx",
)


def _vjp_for(kind):
    def vjp(xp, cot, pred, target, *, convention, box_format, mode="linear", alpha_gradient="detached"):
        g = _geometry(xp, pred, target, kind, convention, box_format)
        return _backward(xp, cot, g, mode, box_format, alpha_gradient)

    return vjp


_REFERENCES = [
    "torchvision/ops/{giou,diou,ciou}_loss.py", "fvcore/nn/giou_loss.py, detectron2/layers/losses.py",
    "mmdet/models/losses/iou_loss.py (3.x)", "ultralytics bbox_iou (utils/metrics.py)",
]


@loss(
    family="box",
    inputs=_inputs("iou"),
    params=[
        Param("mode", "linear", kind="choice", choices=("linear", "square", "log"), grid=("square", "log"),
              doc="1 - IoU, 1 - IoU^2 or -log IoU (mmdet IoULoss defaults to 'log')"),
        _convention("mmdet", ("mmdet", "ultralytics", "paper")),
        _FORMAT,
    ],
    check=_check_boxes("iou"),
    counterparts={
        "mmdet": "mmdet.models.losses.iou_loss(pred, target, mode, eps=1e-6) / IoULoss",
        "ultralytics": "1 - ultralytics.utils.metrics.bbox_iou(pred, target, xywh=False)",
    },
    references=["Yu et al., UnitBox, ACM MM 2016", "mmdet 3.x mmdet/models/losses/iou_loss.py", *_REFERENCES],
)
def iou_loss(xp, pred, target, *, mode, convention, box_format):
    """IoU loss: ``1 - IoU`` (``linear``), ``1 - IoU^2`` (``square``) or ``-log IoU`` (``log``), per box pair.

    ``IoU = I / Ud`` as the convention computes it (module docstring); ``mmdet`` first clamps ``IoU``
    at ``eps = 1e-6`` (so disjoint boxes give ``-log(1e-6)`` and no gradient in ``log`` mode).

    Gradient: ``-dIoU``, ``-2 IoU dIoU``, ``-dIoU / IoU``, with ``dIoU = dI / Ud - IoU dUd / Ud`` through
    the shared geometry backward. Shapes: ``pred, target (N, 4)`` -> ``(N,)``.
    """
    return _value(xp, _geometry(xp, pred, target, "iou", convention, box_format), mode)


iou_loss.defvjp(_vjp_for("iou"))


@loss(
    family="box",
    inputs=_inputs("giou"),
    params=[_convention("torchvision"), _FORMAT],
    check=_check_boxes("giou"),
    counterparts={
        "torch": "torchvision.ops.generalized_box_iou_loss(pred, target, eps=1e-7)",
        "detectron2": "fvcore.nn.giou_loss(pred, target, eps=1e-7)",
        "mmdet": "mmdet.models.losses.GIoULoss(eps=1e-6)",
        "ultralytics": "1 - bbox_iou(pred, target, xywh=False, GIoU=True)",
        "tensorflow": "tfa.losses.giou_loss (yxyx, divide_no_nan: not a preset)",
    },
    references=["Rezatofighi et al., Generalized Intersection over Union, CVPR 2019", *_REFERENCES],
)
def giou_loss(xp, pred, target, *, convention, box_format):
    """GIoU loss ``1 - IoU + (C - U) / C``, ``C`` the area of the smallest enclosing box.

    torchvision/detectron2: ``(C - U) / (C + eps)`` with the raw union on top; mmdet: ``max(C, eps)``
    and ``max(U, eps)``; ultralytics: ``(C + eps - (U + eps)) / (C + eps)``; paper: exact.
    Identical ``[0, 0, 0, 0]`` boxes give 1 under torchvision (vision#7746) and an error under paper.

    Gradient: ``-dIoU + (Ud dC - Cd dU) / Cd^2`` (``Cd`` the denominator and ``Ud = Cd - (Cn - Un)``, the
    IoU denominator, in every convention), ``dC = ch dcw + cw dch``; the numerator is formed per
    coordinate in double-double, since it cancels both for far-apart boxes (``(C - U) / C -> 1``) and
    for nested ones (``dC = dU``). Shapes: ``(N, 4)`` -> ``(N,)``.
    """
    return _value(xp, _geometry(xp, pred, target, "giou", convention, box_format))


giou_loss.defvjp(_vjp_for("giou"))


@loss(
    family="box",
    inputs=_inputs("diou"),
    params=[_convention("torchvision"), _FORMAT],
    check=_check_boxes("diou"),
    counterparts={
        "torch": "torchvision.ops.distance_box_iou_loss(pred, target, eps=1e-7)",
        "detectron2": "detectron2.layers.losses.diou_loss(pred, target, eps=1e-7)",
        "mmdet": "mmdet.models.losses.DIoULoss(eps=1e-6)",
        "ultralytics": "1 - bbox_iou(pred, target, xywh=False, DIoU=True)",
    },
    references=["Zheng et al., Distance-IoU Loss, AAAI 2020", *_REFERENCES],
)
def diou_loss(xp, pred, target, *, convention, box_format):
    """DIoU loss ``1 - IoU + rho2 / c2``: squared centre distance over the squared enclosing diagonal.

    ``c2 = cw^2 + ch^2 + eps`` (no eps under paper, whose ``IoU - rho2 / c2`` is clamped to [-1, 1]).

    Gradient: ``-dIoU + drho2 / c2 - rho2 dc2 / c2^2``, ``drho2/dx1 = drho2/dx2 = -(X1 + X2 - x1 - x2) / 2``,
    ``dc2 = 2 cw dcw + 2 ch dch``. Shapes: ``(N, 4)`` -> ``(N,)``.
    """
    return _value(xp, _geometry(xp, pred, target, "diou", convention, box_format))


diou_loss.defvjp(_vjp_for("diou"))


def _ciou_alpha_frozen(xp, base, pred, target, *, convention, box_format, alpha_gradient):
    """CIoU with alpha taken at ``base`` (the stop-gradient every preset applies), for the proof."""
    g = _geometry(xp, pred, target, "ciou", convention, box_format)
    if alpha_gradient == "detached":
        alpha = _geometry(xp, base[0], base[1], "ciou", convention, box_format)["alpha"]
        g["pen"] = g["pen"] - g["alpha"] * g["v"] + alpha * g["v"]
    return _value(xp, g)


@loss(
    family="box",
    inputs=_inputs("ciou"),
    params=[
        _convention("torchvision"),
        _FORMAT,
        Param(
            "alpha_gradient", "detached", kind="choice", choices=("detached", "through"), grid=("through",),
            doc="'detached' (every preset: alpha under torch.no_grad, so the gradient is the derivative with "
                "alpha frozen); 'through': the exact derivative of the value (alpha differentiated, as mmdet 2.x)",
        ),
    ],
    check=_check_boxes("ciou"),
    stop_gradient=_ciou_alpha_frozen,
    counterparts={
        "torch": "torchvision.ops.complete_box_iou_loss(pred, target, eps=1e-7)",
        "detectron2": "detectron2.layers.losses.ciou_loss(pred, target, eps=1e-7)",
        "mmdet": "mmdet.models.losses.CIoULoss(eps=1e-6) (3.x, after PR #5835)",
        "ultralytics": "1 - bbox_iou(pred, target, xywh=False, CIoU=True)",
    },
    references=["Zheng et al., Enhancing Geometric Factors ..., IEEE T-Cyb 2021", *_REFERENCES],
)
def ciou_loss(xp, pred, target, *, convention, box_format, alpha_gradient):
    """CIoU loss ``1 - IoU + rho2 / c2 + alpha v``, ``v = (4/pi^2)(atan(W/H) - atan(w/h))^2``.

    ``alpha`` is held constant (``torch.no_grad`` in every preset): torchvision/detectron2
    ``v / (1 - IoU + v + eps)``; mmdet ``[IoU > 0.5] v / (1 - IoU + v)`` with ``h + eps`` in ``v`` and
    ``1 - clamp(ciou, -1, 1)``; ultralytics ``v / (v - IoU + (1 + eps))``; paper ``v / (1 - IoU + v)``
    with the [-1, 1] clamp.

    ``alpha_gradient='detached'`` (the default: what ``loss.backward()`` gives in every preset, alpha
    under ``torch.no_grad``; the proof checks it against the value with alpha frozen): the DIoU
    gradient plus ``alpha dv``. ``'through'`` (the exact derivative of the value): ``d(alpha v) =
    (2 alpha - alpha^2) dv + alpha^2 dIoU`` (``alpha = v / D``, ``dD = dv - dIoU``; times the gate for
    mmdet), mmdet 2.x's gradient. ``dv/dw = -(8/pi^2) D h / (w^2 + h^2)``,
    ``dv/dh = (8/pi^2) D w / (w^2 + h^2)`` (signs flipped for the target), ``D = atan(W/H) - atan(w/h)``.
    Shapes: ``(N, 4)`` -> ``(N,)``.
    """
    return _value(xp, _geometry(xp, pred, target, "ciou", convention, box_format))


ciou_loss.defvjp(_vjp_for("ciou"))


# ------------------------------------------------------------------------------------------------
# Pairwise matrices for inference.


def _pairwise(name, a, b, box_format, giou):
    _check_format(name, "box_format", box_format)
    for arg, x in (("boxes1", a), ("boxes2", b)):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            _fail(TypeError, name, arg, "an array (NumPy, CuPy, array-api-strict, ...)", type(x).__name__)
    xp = namespace(a, b)
    for arg, x in (("boxes1", a), ("boxes2", b)):
        if x.ndim != 2 or x.shape[1] != 4:
            _fail(ValueError, name, arg, "of shape (N, 4)", f"shape {tuple(x.shape)}")
        if not xp.isdtype(x.dtype, "real floating"):
            _fail(TypeError, name, arg, "a real floating array", f"dtype {x.dtype}")
    x1, y1, x2, y2 = (xp.reshape(c, (-1, 1)) for c in _to_corners(xp, a, box_format))
    X1, Y1, X2, Y2 = (xp.reshape(c, (1, -1)) for c in _to_corners(xp, b, box_format))
    for arg, bad in (("boxes1", (x2 < x1) | (y2 < y1)), ("boxes2", (X2 < X1) | (Y2 < Y1))):
        if bool(xp.any(bad)):
            _fail(ValueError, name, arg, "boxes with x1 <= x2 and y1 <= y2", f"box {_first(xp, xp.reshape(bad, (-1,)))} inverted")
    zero = xp.zeros((1, 1), dtype=x1.dtype)
    iw = xp.maximum(xp.minimum(x2, X2) - xp.maximum(x1, X1), zero)
    ih = xp.maximum(xp.minimum(y2, Y2) - xp.maximum(y1, Y1), zero)
    I = iw * ih
    U = (x2 - x1) * (y2 - y1) + (X2 - X1) * (Y2 - Y1) - I
    iou = xp.where(U > 0, I / _safe(xp, U), xp.zeros_like(U))
    if not giou:
        return iou
    C = (xp.maximum(x2, X2) - xp.minimum(x1, X1)) * (xp.maximum(y2, Y2) - xp.minimum(y1, Y1))
    return iou - xp.where(C > 0, (C - U) / _safe(xp, C), xp.zeros_like(C))


def box_iou(boxes1, boxes2, box_format="xyxy"):
    """Pairwise IoU ``(N, M)`` of ``boxes1 (N, 4)`` and ``boxes2 (M, 4)``: ``I / U`` exactly, as
    ``torchvision.ops.box_iou`` (which gives NaN for a pair of zero union; refloss gives 0, like
    TF-Addons' ``divide_no_nan``). Any array-API namespace; NumPy alone suffices."""
    return _pairwise("box_iou", boxes1, boxes2, box_format, giou=False)


def generalized_box_iou(boxes1, boxes2, box_format="xyxy"):
    """Pairwise GIoU ``(N, M)``: ``IoU - (C - U) / C``, exact, as
    ``torchvision.ops.generalized_box_iou`` (``0`` where ``U = 0`` or ``C = 0`` instead of NaN)."""
    return _pairwise("generalized_box_iou", boxes1, boxes2, box_format, giou=True)
