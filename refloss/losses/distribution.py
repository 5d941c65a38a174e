"""Transforms of target distributions shared by the losses (written once, used everywhere)."""

from __future__ import annotations

from ..xp import namespace

__all__ = ["smooth_labels"]

SMOOTHING_STYLES = ("uniform", "binary")


def smooth_labels(labels, eps, /, *, axis=-1, style="uniform", xp=None):
    """Label smoothing: move ``eps`` of the target mass to a uniform distribution.

    - ``style="uniform"`` (cross-entropy: PyTorch ``label_smoothing``, optax ``smooth_labels``, Keras
      categorical): ``y' = (1 - eps) y + eps / K`` with ``K = labels.shape[axis]`` classes;
    - ``style="binary"`` (Keras ``BinaryCrossentropy(label_smoothing=eps)``): towards 0.5,
      ``y' = (1 - eps) y + eps / 2``, elementwise.

    Linear in ``labels``, so its VJP is ``(1 - eps) * cotangent``. ``eps`` in ``[0, 1]``.
    """
    if style not in SMOOTHING_STYLES:
        raise ValueError(f"smooth_labels: style must be one of {SMOOTHING_STYLES}, got {style!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps <= 1:
        raise ValueError(f"smooth_labels: eps must be a real number in [0, 1], got {eps!r}")
    if eps == 0:
        return labels
    xp = namespace(labels) if xp is None else xp
    classes = 2 if style == "binary" else labels.shape[axis]
    return (1 - eps) * labels + eps / classes
