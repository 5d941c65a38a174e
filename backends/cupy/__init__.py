"""Fused GPU kernels as CuPy RawKernel / ElementwiseKernel (CUDA), the counterparts of backends/numba.

- ``cross_entropy`` and the margin losses (``cosface_loss``, ``arcface_loss``, ``combined_margin_loss``,
  float32): one thread block per row computes the maximum, ``rest``, the loss and the gradient
  (:mod:`._kernels`, the same formulas as backends/numba/_softmax.py);
- ``binary_cross_entropy_with_logits``, ``sigmoid_focal_loss``: one elementwise kernel each.

The call preparation is shared with the Numba backend (backends/_plan.py). Arithmetic is in float64
for both input dtypes (CUDA's ``exp``, ``expm1``, ``log1p``), one rounding at the store. CuPy arrays
use these kernels whenever CuPy sees a device; NumPy arrays under ``use_backend("cupy")`` are copied
to the device and the results back. Sums over a row are a fixed tree over the block's threads, so a
result does not depend on the launch (only on the block size, which is fixed).

Status: written against CuPy 13 and CUDA 12 and exercised by tests/test_backends.py only where a CUDA
device is present (the tests skip cleanly elsewhere).
"""

from __future__ import annotations

NAME = "cupy"

_KERNELS = {
    "cross_entropy": "CROSS_ENTROPY",
    "cosface_loss": "COSFACE",
    "arcface_loss": "ARCFACE",
    "combined_margin_loss": "COMBINED",
    "binary_cross_entropy_with_logits": "BCE_WITH_LOGITS",
    "sigmoid_focal_loss": "SIGMOID_FOCAL",
}


def names() -> tuple[str, ...]:
    """The losses this backend has kernels for."""
    return tuple(_KERNELS)


def kernel(loss_name):
    """The kernel object for ``loss_name`` (imports CuPy on first use), or ``None``."""
    attr = _KERNELS.get(loss_name)
    if attr is None:
        return None
    from . import _kernels

    return getattr(_kernels, attr)
