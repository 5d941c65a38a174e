"""Shared fixtures: one test body, parametrized over array namespaces (SciPy / array-api-extra style)."""

import importlib

import numpy as np
import pytest


def _cupy_or_none():
    try:
        cupy = importlib.import_module("cupy")
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # noqa: BLE001 - no CuPy, no CUDA driver, or no device
        return None


def _namespace(name):
    if name == "numpy":
        import array_api_compat.numpy as xp

        return xp
    if name == "array_api_strict":
        import array_api_strict as xp

        return xp
    if name == "cupy":
        cupy = _cupy_or_none()
        if cupy is None:
            pytest.skip("CuPy with a CUDA device is not available on this machine")
        import array_api_compat.cupy as xp

        return xp
    raise ValueError(name)


NAMESPACES = ["numpy", "array_api_strict", "cupy"]


@pytest.fixture(params=NAMESPACES)
def xp(request):
    """An array namespace: NumPy (through array-api-compat), array-api-strict, CuPy (GPU only)."""
    return _namespace(request.param)


@pytest.fixture(autouse=True)
def _seed():
    # autograd's check_grads draws its directions from the global NumPy generator.
    np.random.seed(42)

