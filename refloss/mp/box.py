"""Oracles of the box-regression losses: IoU, GIoU, DIoU, CIoU under each library's preset.

Each preset is its documented definition (refloss.losses.box docstring; box_seg_losses.md section 1),
written here per box pair in plain geometry on corner coordinates:

- torchvision / detectron2 (eps 1e-7): ``IoU = I / (U + eps)``, GIoU ``(C - U) / (C + eps)``,
  ``c2 + eps``, CIoU ``alpha = v / (1 - IoU + v + eps)``;
- mmdet 3.x (eps 1e-6): IoU/GIoU ``I / max(U, eps)``, ``(max(C, eps) - max(U, eps)) / max(C, eps)``, IoU
  loss clamps ``IoU >= eps``; DIoU/CIoU ``U + eps``, ``c2 + eps``, CIoU ``h + eps`` in ``v``,
  ``alpha = [IoU > 0.5] v / (1 - IoU + v)``, ``1 - clamp(q, -1, 1)``;
- ultralytics (eps 1e-7): ``h + eps`` in the areas and in ``v``, ``U + eps``, ``C + eps``, ``c2 + eps``,
  ``alpha = v / (v - IoU + 1 + eps)``;
- paper: no eps; DIoU/CIoU ``q`` clamped to ``[-1, 1]``, ``alpha = v / (1 - IoU + v)`` (0 where that is 0/0).
"""

from __future__ import annotations

import numpy as np

from . import oracle, reduce

_EPS = {"torchvision": 1e-7, "detectron2": 1e-7, "mmdet": 1e-6, "ultralytics": 1e-7, "paper": 0.0}


def _corners(M, b, fmt):
    """``(x1, y1, x2, y2)`` of one box row ``b`` in format ``fmt`` (exact in the context)."""
    a, c, d, e = b
    if fmt == "xyxy":
        return a, c, d, e
    if fmt == "yxyx":
        return c, a, e, d
    if fmt == "xywh":
        return a, c, a + d, c + e
    if fmt == "cxcywh":
        return a - d / 2, c - e / 2, a + d / 2, c + e / 2
    raise ValueError(f"unknown box format {fmt!r}")


def _pair(M, p, t, kind, convention, fmt):
    """Every quantity of one box pair, by its definition (dict)."""
    eps = M.mpf(_EPS[convention])
    x1, y1, x2, y2 = _corners(M, p, fmt)
    X1, Y1, X2, Y2 = _corners(M, t, fmt)
    w, h, W, H = x2 - x1, y2 - y1, X2 - X1, Y2 - Y1
    iw = min(x2, X2) - max(x1, X1)
    ih = min(y2, Y2) - max(y1, Y1)
    I = iw * ih if (iw > 0 and ih > 0) else M.mpf(0)
    if convention == "ultralytics":
        U = w * (h + eps) + W * (H + eps) - I
    else:
        U = w * h + W * H - I
    cw = max(x2, X2) - min(x1, X1)
    ch = max(y2, Y2) - min(y1, Y1)
    return dict(eps=eps, w=w, h=h, W=W, H=H, I=I, U=U, cw=cw, ch=ch,
                dx=X1 + X2 - x1 - x2, dy=Y1 + Y2 - y1 - y2)


def _iou(M, g, kind, convention):
    eps, I, U = g["eps"], g["I"], g["U"]
    if convention == "paper":
        return I / U
    if convention == "mmdet" and kind in ("iou", "giou"):
        return I / max(U, eps)  # bbox_overlaps: max(union, eps)
    return I / (U + eps)


def _per_box(M, pred, target, fn):
    return np.array([fn(pred[i], target[i]) for i in range(pred.shape[0])], dtype=object)


def _clamp1(M, q):
    return M.mpf(-1) if q < -1 else (M.mpf(1) if q > 1 else q)


@oracle("iou_loss")
def iou_loss(M, pred, target, *, mode, convention, box_format, reduction):
    """``1 - IoU``, ``1 - IoU^2`` or ``-log IoU`` (UnitBox 2016; mmdet 3.x clamps IoU at eps first)."""

    def one(p, t):
        g = _pair(M, p, t, "iou", convention, box_format)
        iou = _iou(M, g, "iou", convention)
        if convention == "mmdet":
            iou = max(iou, g["eps"])
        if mode == "linear":
            return 1 - iou
        if mode == "square":
            return 1 - iou * iou
        return -M.log(iou)

    return reduce(M, _per_box(M, pred, target, one), reduction)


@oracle("giou_loss")
def giou_loss(M, pred, target, *, convention, box_format, reduction):
    """``1 - IoU + (C - U) / C``, eps placed per preset (Rezatofighi et al. 2019)."""

    def one(p, t):
        g = _pair(M, p, t, "giou", convention, box_format)
        eps, U = g["eps"], g["U"]
        iou = _iou(M, g, "giou", convention)
        C = g["cw"] * g["ch"]
        if convention in ("torchvision", "detectron2"):
            pen = (C - U) / (C + eps)
        elif convention == "mmdet":
            Cm = max(C, eps)
            pen = (Cm - max(U, eps)) / Cm
        elif convention == "ultralytics":
            pen = ((C + eps) - (U + eps)) / (C + eps)
        else:
            pen = (C - U) / C
        return 1 - iou + pen

    return reduce(M, _per_box(M, pred, target, one), reduction)


def _diou_q(M, g, convention):
    iou = _iou(M, g, "diou", convention)
    rho2 = (g["dx"] ** 2 + g["dy"] ** 2) / 4
    c2 = g["cw"] ** 2 + g["ch"] ** 2 + g["eps"]
    return iou, iou - rho2 / c2


@oracle("diou_loss")
def diou_loss(M, pred, target, *, convention, box_format, reduction):
    """``1 - IoU + rho^2 / c^2`` (Zheng et al. 2020); paper clamps ``IoU - rho^2 / c^2`` to [-1, 1]."""

    def one(p, t):
        g = _pair(M, p, t, "diou", convention, box_format)
        _, q = _diou_q(M, g, convention)
        if convention == "paper":
            q = _clamp1(M, q)
        return 1 - q

    return reduce(M, _per_box(M, pred, target, one), reduction)


def _ciou_v_alpha(M, g, convention):
    eps = g["eps"]
    hv, Hv = (g["h"] + eps, g["H"] + eps) if convention in ("mmdet", "ultralytics") else (g["h"], g["H"])
    delta = M.atan2(g["W"], Hv) - M.atan2(g["w"], hv)  # atan(W / H) - atan(w / h), pi/2 at h = 0
    v = 4 / M.pi**2 * delta**2
    iou = _iou(M, g, "ciou", convention)
    if convention in ("torchvision", "detectron2"):
        alpha = v / (1 - iou + v + eps)
    elif convention == "ultralytics":
        alpha = v / (v - iou + (1 + eps))
    else:
        den = 1 - iou + v
        alpha = v / den if den != 0 else M.mpf(0)  # alpha v = 0 for any alpha at v = 0
        if convention == "mmdet" and not iou > 0.5:
            alpha = M.mpf(0)
    return v, alpha


@oracle("ciou_loss")
def ciou_loss(M, pred, target, *, convention, box_format, alpha_gradient, reduction, base=None):
    """``1 - IoU + rho^2 / c^2 + alpha v``, ``v = 4/pi^2 (atan(W/H) - atan(w/h))^2`` (Zheng et al. 2021);
    ``alpha`` frozen at ``base`` when ``alpha_gradient='detached'`` (torch.no_grad in every preset)."""
    frozen = alpha_gradient == "detached" and base is not None

    def one(k):
        g = _pair(M, pred[k], target[k], "ciou", convention, box_format)
        _, q = _diou_q(M, g, convention)
        v, alpha = _ciou_v_alpha(M, g, convention)
        if frozen:
            _, alpha = _ciou_v_alpha(M, _pair(M, base[0][k], base[1][k], "ciou", convention, box_format), convention)
        q = q - alpha * v
        if convention in ("mmdet", "paper"):
            q = _clamp1(M, q)
        return 1 - q

    values = np.array([one(k) for k in range(pred.shape[0])], dtype=object)
    return reduce(M, values, reduction)
