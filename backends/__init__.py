"""Kernel sets the losses dispatch to, installed as ``refloss.backends``.

``numpy`` is the portable array-API reference: every loss's own ``forward`` and VJP, written against
``refloss.xp``, which is what runs on NumPy, CuPy, array-api-strict and the rest. ``numba`` (CPU) and
``cupy`` (GPU) hold fused kernels for the heavy row-wise losses (softmax cross-entropy, the margin
losses, the elementwise sigmoid losses, triplet distances); each is checked against ``numpy``.

Selection:

- by array type: CuPy arrays use the ``cupy`` kernels wherever one exists;
- for NumPy arrays, by name: :func:`use_backend` (a plain call sets it process-wide, a ``with`` block
  restores the previous one on exit), else the ``REFLOSS_BACKEND`` environment variable (read at the
  first loss call), else ``numpy``. Under ``cupy`` NumPy inputs go to the GPU and results come back.

A kernel that does not cover a call (a parameter value, layout or dtype it was not written for)
declines it, and the loss's portable code runs instead: a backend is never a different answer, only
a faster one. The hook is in :class:`refloss.loss.Loss` (``_kernel``); importing this package imports
neither Numba nor CuPy.

Kernel protocol (a backend module's ``kernel(loss_name)`` returns an object with these, or ``None``):

- ``forward(xp, inputs, params) -> unreduced`` or ``None`` to decline;
- ``value_and_grad(xp, inputs, params, cot_for) -> (unreduced, grads)`` or ``None``, where
  ``cot_for(template)`` is the cotangent of the unreduced loss (``template`` any array of its shape
  and dtype; the values are not read) and ``grads`` has one entry per input.

``inputs`` are the validated inputs (class axis already moved to 1), ``params`` the parameters
without ``reduction``.
"""

from __future__ import annotations

import importlib
import os

NAMES = ("numpy", "numba", "cupy")
ENV = "REFLOSS_BACKEND"

_state = {"name": None}  # the backend for NumPy inputs; None until first use
_loaded: dict = {}


def _numba_imports() -> bool:
    try:
        importlib.import_module("numba")
    except Exception:  # noqa: BLE001 - not installed, or installed against another NumPy
        return False
    return True


def _cupy_has_device() -> bool:
    try:
        cupy = importlib.import_module("cupy")
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no CuPy, no driver, or no device
        return False


_PROBES = {"numpy": lambda: True, "numba": _numba_imports, "cupy": _cupy_has_device}
_AVAILABLE: dict = {}


def available() -> tuple[str, ...]:
    """Names of the kernel sets whose dependencies import here (``numpy`` always; ``numba`` when it
    imports; ``cupy`` when it imports and sees a CUDA device). Probed once per process."""
    for name in NAMES:
        if name not in _AVAILABLE:
            _AVAILABLE[name] = _PROBES[name]()
    return tuple(name for name in NAMES if _AVAILABLE[name])


def _checked(name, source):
    names = available()
    if name not in names:
        known = "" if name in NAMES else f" (known backends: {', '.join(NAMES)})"
        raise ValueError(
            f"refloss: backend {name!r} from {source} is not available here{known}; available: {', '.join(names)}"
        )
    return name


def active() -> str:
    """The backend NumPy inputs use now (``REFLOSS_BACKEND`` is read on the first call)."""
    if _state["name"] is None:
        _state["name"] = _checked(os.environ.get(ENV, "numpy").strip() or "numpy", f"${ENV}")
    return _state["name"]


class use_backend:  # noqa: N801 - a function to its callers, a class to be a context manager too
    """Select the backend for NumPy inputs: ``use_backend("numba")`` sets it for the process;
    ``with use_backend("numba"): ...`` sets it for the block and restores the previous one after.

    An unknown or unavailable name raises ``ValueError`` naming the available ones.
    """

    def __init__(self, name: str):
        self.name = _checked(name, "use_backend()")
        self._previous = _state["name"]
        _state["name"] = self.name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _state["name"] = self._previous
        return False

    def __repr__(self):
        return f"use_backend({self.name!r})"


def _module(name):
    if name not in _loaded:
        _loaded[name] = importlib.import_module(f"{__name__}.{name}")
    return _loaded[name]


def _array_kind(arrays):
    """``numpy`` when every array is a NumPy array, ``cupy`` when every one is a CuPy array, else None."""
    kinds = set()
    for a in arrays:
        if a is None:
            continue
        module = type(a).__module__.split(".")[0]
        if module not in ("numpy", "cupy") or not hasattr(a, "shape"):
            return None
        kinds.add(module)
    return kinds.pop() if len(kinds) == 1 else None


def kernel(loss_name: str, arrays):
    """The kernel for ``loss_name`` on these arrays under the current selection, or ``None`` (portable)."""
    kind = _array_kind(arrays)
    if kind == "numpy":
        name = active()
    elif kind == "cupy" and "cupy" in available():
        name = "cupy"
    else:
        return None
    if name == "numpy":
        return None
    return _module(name).kernel(loss_name)
