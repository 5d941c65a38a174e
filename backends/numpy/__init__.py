"""The portable backend: each loss's array-API definition runs as written (see ``refloss.loss``).

It has no kernels of its own: :func:`kernel` declines every loss, so the loss's ``forward`` and
hand-derived VJP run on whatever namespace the inputs live in. It is the reference the fused
backends (``numba``, ``cupy``) are checked against.
"""

NAME = "numpy"


def kernel(loss_name):
    """No fused kernels here: always ``None`` (the loss's own code runs)."""
    return None
