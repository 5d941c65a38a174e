"""Adapters between the loss protocol (refloss.backends) and the jitted kernels: the preparation
shared with the CuPy backend (backends/_plan.py), the launch, the outputs. A call a kernel does not
cover declines with ``None``."""

from __future__ import annotations

import numpy as np

from .. import _plan
from . import _elementwise, _margin, _softmax, _triplet


class _Kernel:
    def forward(self, xp, inputs, params):
        return self._run(inputs, params, None)

    def value_and_grad(self, xp, inputs, params, cot_for):
        return self._run(inputs, params, cot_for)


class _CrossEntropy(_Kernel):
    """``cross_entropy`` with index targets: weights, ``ignore_index``, label smoothing, any class axis."""

    def _run(self, inputs, params, cot_for):
        logits, target = inputs
        plan = _plan.cross_entropy_plan(np, logits, target, params)
        if plan is None:
            return None
        rows, shape = plan["rows"], plan["shape"]
        n = rows.shape[0]
        loss = np.empty(n, rows.dtype)
        want = cot_for is not None
        cot = _plan.per_sample(np, cot_for(np.empty(shape, rows.dtype)), shape, rows.dtype) if want else np.zeros(n)
        grad = np.empty_like(rows) if want else np.empty((1, rows.shape[1]), rows.dtype)
        _softmax.softmax_ce(
            rows, plan["labels"], plan["keep"], plan["weight"], plan["total"], plan["heavy"], plan["heavy_rest"],
            plan["cold"], plan["hx"], cot, 1.0, np.ones(n), want, loss, grad,
        )
        loss = loss.reshape(shape)
        return (loss, (plan["back"](grad), None)) if want else loss


class _Margin(_Kernel):
    """CosFace, ArcFace, combined margin (float32): backends/_plan.margin_plan, the fused rows, two products."""

    def __init__(self, name):
        self.name = name

    def _run(self, inputs, params, cot_for):
        features, labels, weights = inputs
        plan = _plan.margin_plan(np, self.name, features, labels, weights, params)
        if plan is None:
            return None
        logits = plan["logits"]
        n, classes = logits.shape
        want = cot_for is not None
        cot = _plan.per_sample(np, cot_for(np.empty(n, np.float32)), (n,), np.float32) if want else np.zeros(n)
        loss = np.empty(n)
        grad = np.empty_like(logits) if want else np.empty((1, classes))
        _softmax.softmax_ce(
            logits, plan["labels"], np.ones(n, bool), np.ones(classes), float(classes), -1, 0.0, 0.0, 1.0, cot,
            plan["scale"], plan["slope"], want, loss, grad,
        )
        loss = loss.astype(np.float32)
        if not want:
            return loss
        gx = np.empty(features.shape, np.float32)
        gw = np.empty(weights.shape, np.float32)
        _margin.tangent(np.matmul(grad, plan["wh"]), plan["xh"], plan["xn"], gx)
        _margin.tangent(np.matmul(grad.T, plan["xh"]), plan["wh"], plan["wn"], gw)
        return loss, (gx, None, gw)


def _binary_inputs(logits, target):
    ok = str(logits.dtype) in _plan.FLOATS and target.dtype == logits.dtype and logits.shape == target.shape and logits.size
    if not ok:
        return None
    return _plan.flat(np, logits, logits.shape, logits.dtype), _plan.flat(np, target, logits.shape, logits.dtype)


class _BCEWithLogits(_Kernel):
    """``binary_cross_entropy_with_logits`` with any ``weight``, ``pos_weight`` and label smoothing."""

    def _run(self, inputs, params, cot_for):
        logits, target = inputs
        flat = _binary_inputs(logits, target)
        if flat is None:
            return None
        x, y = flat
        shape, dtype = logits.shape, logits.dtype
        dummy = np.zeros(1, dtype)
        w, pw = params["weight"], params["pos_weight"]
        w = dummy if w is None else _plan.flat(np, w, shape, dtype)
        pw = dummy if pw is None else _plan.flat(np, pw, shape, dtype)
        eps = params["label_smoothing"]
        want = cot_for is not None
        cot, uniform = _plan.cotangent(np, cot_for(np.empty(shape, dtype)), shape, dtype) if want else (np.zeros(1), True)
        loss = np.empty(x.size, dtype)
        dx = np.empty_like(loss) if want else dummy
        dy = np.empty_like(loss) if want else dummy
        kernel = _elementwise.bce_with_logits(params["weight"] is not None, params["pos_weight"] is not None, uniform, want)
        kernel(x, y, w, pw, float(dtype.type(1 - eps)), float(dtype.type(eps / 2)), 1.0 - eps, cot, loss, dx, dy)
        loss = loss.reshape(shape)
        return (loss, (dx.reshape(shape), dy.reshape(shape))) if want else loss


class _SigmoidFocal(_Kernel):
    """``sigmoid_focal_loss`` with ``gamma`` in {0, 1/2, 1, 2, 3} and any ``alpha``."""

    def _run(self, inputs, params, cot_for):
        logits, target = inputs
        gamma = float(params["gamma"])
        flat = _binary_inputs(logits, target)
        if flat is None or gamma not in _plan.FOCAL_MODES:
            return None
        x, y = flat
        shape, dtype = logits.shape, logits.dtype
        alpha = params["alpha"]
        a_pos, a_neg = (1.0, 1.0) if alpha is None else (float(alpha), float(1.0 - alpha))
        want = cot_for is not None
        cot, uniform = _plan.cotangent(np, cot_for(np.empty(shape, dtype)), shape, dtype) if want else (np.zeros(1), True)
        loss = np.empty(x.size, dtype)
        dx = np.empty_like(loss) if want else np.zeros(1, dtype)
        _elementwise.sigmoid_focal(_plan.FOCAL_MODES[gamma], uniform, want)(x, y, a_pos, a_neg, gamma, cot, loss, dx)
        loss = loss.reshape(shape)
        return (loss, (dx.reshape(shape), None)) if want else loss


class _Triplet(_Kernel):
    """``triplet_margin_loss`` with ``p = 2`` on float32 rows; rows where float64 arithmetic could
    lose float32 accuracy (flagged by the kernel) are recomputed by the portable code in float64."""

    def _run(self, inputs, params, cot_for):
        a, p, n = inputs
        if any(x.dtype != np.float32 for x in inputs) or params["p"] != 2 or a.size == 0:
            return None
        rows = [np.ascontiguousarray(x) for x in inputs]
        count = a.shape[0]
        eps, placement = float(params["eps"]), params["eps_placement"]
        want = cot_for is not None
        cot32 = np.asarray(cot_for(np.empty(count, np.float32)), dtype=np.float32) if want else None
        cot = _plan.per_sample(np, cot32, (count,), np.float32) if want else np.zeros(1)
        loss = np.empty(count, np.float32)
        grads = [np.empty(a.shape, np.float32) if want else np.empty((1, a.shape[1]), np.float32) for _ in range(3)]
        risky = np.empty(count, bool)
        _triplet.triplet_rows(
            *rows, float(params["margin"]), eps if placement == "difference" else 0.0, eps if placement == "sum" else 0.0,
            bool(params["swap"]), cot, want, loss, *grads, risky,
        )
        idx = np.flatnonzero(risky)
        if idx.size:
            import array_api_compat.numpy as xp

            from refloss.loss import get

            # the portable code in float64 (certified to 4 ulps there), rounded once to float32
            portable = get("triplet_margin_loss")
            sub = [x[idx].astype(np.float64) for x in rows]
            loss[idx] = portable.forward(xp, *sub, **params)
            if want:
                cot_sub = np.broadcast_to(cot32, (count,))[idx].astype(np.float64)
                for g, part in zip(grads, portable._vjp(xp, cot_sub, *sub, **params)):
                    g[idx] = part
        return (loss, tuple(grads)) if want else loss


CROSS_ENTROPY = _CrossEntropy()
COSFACE = _Margin("cosface_loss")
ARCFACE = _Margin("arcface_loss")
COMBINED = _Margin("combined_margin_loss")
BCE_WITH_LOGITS = _BCEWithLogits()
SIGMOID_FOCAL = _SigmoidFocal()
TRIPLET = _Triplet()
