"""Kernel sets the shim dispatches to, installed as ``refloss.backends``.

``numpy`` is the portable array-API reference: every loss's own forward and VJP, written against
``refloss.xp``, which is what runs today on NumPy, CuPy, array-api-strict and the rest. Fused kernels
(Numba on the CPU, CuPy on the GPU) arrive as further subpackages and are checked against it.
"""

AVAILABLE = ("numpy",)


def available() -> tuple[str, ...]:
    """Names of the kernel sets this installation has."""
    return AVAILABLE
