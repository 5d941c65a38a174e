"""refloss: the reference oracle for loss functions.

Each loss is written once against the array API (``refloss.xp``), with a hand-derived gradient,
and runs on NumPy, CuPy, array-api-strict and any other array-API library::

    import numpy as np, refloss
    logits = np.array([[2.0, 0.5, -1.0]]); target = np.array([0])
    refloss.cross_entropy(logits, target)                      # the value
    value, (d_logits, _) = refloss.value_and_grad(refloss.cross_entropy, logits, target)

``refloss.catalog()`` lists every loss with its parameters and framework counterparts.
"""

from __future__ import annotations

from . import xp
from .loss import REDUCTIONS, Input, Loss, Param, catalog, get
from .losses.classification import (
    additive_margin_softplus_loss,
    balanced_binary_cross_entropy,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    crammer_singer_hinge_loss,
    cross_entropy,
    jensen_shannon_divergence,
    kl_div,
    logsumexp_hinge_loss,
    multi_margin_loss,
    multiclass_hinge_loss,
    multilabel_margin_loss,
    multilabel_soft_margin_loss,
    nll_loss,
    sigmoid_focal_loss,
    soft_margin_loss,
    softmax_cross_entropy,
    softmax_focal_loss,
    softplus_logsumexp_loss,
    weighted_binary_cross_entropy,
)

__version__ = "0.1.0"


def value_and_grad(loss: Loss, *inputs, **params):
    """``(value, grads)`` of ``loss`` at ``inputs``: the reduced value and the analytic gradient of
    each array input (``None`` for integer labels and other non-differentiable inputs)."""
    return loss.value_and_grad(*inputs, **params)


__all__ = [
    "REDUCTIONS",
    "Input",
    "Loss",
    "Param",
    "catalog",
    "get",
    "value_and_grad",
    "xp",
] + [l for l in dir() if not l.startswith("_") and isinstance(globals()[l], Loss)]
