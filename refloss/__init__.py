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
from .backends import use_backend
from .inference import class_probabilities, cosine_logits, margin_logits, verification_scores
from .loss import REDUCTIONS, Input, Loss, Param, catalog, get
from .losses.box import *  # noqa: F403
from .losses.classification import *  # noqa: F403 - each family module lists its losses in __all__
from .losses.embedding import *  # noqa: F403
from .losses.margin import *  # noqa: F403
from .losses.margin_adaptive import *  # noqa: F403
from .losses.regression import *  # noqa: F403
from .losses.segmentation import *  # noqa: F403

__version__ = "0.1.0"


def value_and_grad(loss: Loss, *inputs, **params):
    """``(value, grads)`` of ``loss`` at ``inputs``: the reduced value and the analytic gradient of
    each array input (``None`` for integer labels and other non-differentiable inputs)."""
    return loss.value_and_grad(*inputs, **params)


__all__ = [
    "REDUCTIONS", "Input", "Loss", "Param", "catalog", "get", "value_and_grad", "xp", "use_backend",
    "class_probabilities", "cosine_logits", "margin_logits", "verification_scores",
] + sorted(
    name for name, obj in dict(globals()).items() if isinstance(obj, Loss)
)
