"""Fused CPU kernels compiled by Numba (``parallel=True`` over rows only, ``cache=True``, no fastmath).

Kernels (each an adapter here, following the protocol of :mod:`refloss.backends`, over jitted
code in the private modules):

- ``cross_entropy``: one pass per row for logsumexp, loss and gradient, with class weights,
  ``ignore_index`` and label smoothing (:mod:`._softmax`);
- ``cosface_loss``, ``arcface_loss``, ``combined_margin_loss`` (float32 inputs, float64 arithmetic,
  which holds the float32 answer to under an ulp; float64 inputs decline, see backends/_plan.py):
  unit rows, the logits ``s cos`` with the target logit ``s psi(c)`` (one matrix product), the same
  fused row kernel, and the two backward products;
- ``binary_cross_entropy_with_logits``, ``sigmoid_focal_loss``: one elementwise pass for loss and
  gradient (:mod:`._elementwise`);
- ``triplet_margin_loss`` (``p = 2``, float32): the three distances and the gradients per row in
  float64, the few rows where that could lose float32 accuracy recomputed by the portable code
  (:mod:`._triplet`);

float32 and float64 only; anything else a kernel does not cover declines (``None``) and the portable
code runs. Accuracy: the kernels reproduce the golden files (float64) within their 4-ulp
certification, as the portable code does, so the two agree to within the sum of their errors:
:data:`ULP_BOUND` ulps of each value and gradient entry's own magnitude, or, for an entry that is a
difference of cancelling terms (label smoothing's ``(A - a) p - a (1 - p)``, the sigmoid losses'
gradients at soft targets), of its row's largest entry. Both are tested in tests/test_backends.py
(measured: at most 8 ulps, for sigmoid focal at gamma = 3 where both codes are 5-6 ulps from exact;
otherwise at most 5, most entries identical or 1 ulp apart).
"""

from __future__ import annotations

NAME = "numba"

#: Agreement with backends/numpy in ulps of the dtype: twice the golden files' 4-ulp certification.
ULP_BOUND = 8

_KERNELS = {
    "cross_entropy": ("._adapters", "CROSS_ENTROPY"),
    "cosface_loss": ("._adapters", "COSFACE"),
    "arcface_loss": ("._adapters", "ARCFACE"),
    "combined_margin_loss": ("._adapters", "COMBINED"),
    "binary_cross_entropy_with_logits": ("._adapters", "BCE_WITH_LOGITS"),
    "sigmoid_focal_loss": ("._adapters", "SIGMOID_FOCAL"),
    "triplet_margin_loss": ("._adapters", "TRIPLET"),
}


def names() -> tuple[str, ...]:
    """The losses this backend has kernels for."""
    return tuple(_KERNELS)


def kernel(loss_name):
    """The kernel object for ``loss_name`` (imports Numba on first use), or ``None``."""
    where = _KERNELS.get(loss_name)
    if where is None:
        return None
    import importlib

    module = importlib.import_module(where[0], __name__)
    return getattr(module, where[1])
