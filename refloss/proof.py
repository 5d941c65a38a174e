"""The gradient proof: every registered loss, every parameter path, two independent checks.

1. A five-point central difference of the forward, along random directions, against the analytic
   VJP (``<grad, v>``), in float64. It needs nothing but NumPy.
2. ``autograd.test_util.check_grads`` on the loss's autograd primitive (when autograd is installed),
   which also proves that ``autograd.grad`` differentiates through the loss.

Inputs with a bounded domain (probabilities, targets in [0, 1]) are only perturbed where they sit
strictly inside it. A loss that declares stop-gradient intermediates (``Loss.objective``) is checked
against the derivative of its forward with those intermediates frozen, which is what its reference
implementations back-propagate. Adding a loss to the registry adds it here with no new code.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np

from .cases import param_paths, sample
from .loss import Loss, catalog

RTOL = 1e-7  # central difference vs analytic, relative to the directional derivative's scale
_STEP = 1e-4
_DIRECTIONS = 3


@dataclasses.dataclass
class Row:
    """One check: a loss, a parameter path, an input, a method, and its worst relative error."""

    loss: str
    params: dict
    input: str
    method: str
    error: float
    ok: bool
    detail: str = ""


def _movable(spec, x, margin):
    if spec.values is None:
        return np.ones_like(x)
    low, high = spec.values
    return ((x > low + margin) & (x < high - margin)).astype(float)


def _objective(loss: Loss, inputs, params, k, cot):
    target = loss.objective(inputs, **params)  # the loss, or the loss with its stop-gradients frozen

    def f(u_shift):
        args = list(inputs)
        args[k] = inputs[k] + u_shift
        return float(np.sum(cot * target(*args)))

    return f


def central_difference(loss: Loss, inputs, params, rng) -> list[Row]:
    """Directional five-point differences of ``sum(cot * loss)`` against the analytic gradient."""
    value, grads = loss.value_and_grad(*inputs, **params)
    cot = rng.standard_normal(np.shape(value))
    _, grads = loss.value_and_grad(*inputs, cotangent=cot, **params)
    rows = []
    for k, spec in enumerate(loss.inputs):
        if not spec.differentiable:
            continue
        x = inputs[k]
        f = _objective(loss, inputs, params, k, cot)
        mask = _movable(spec, x, 4 * _STEP)
        worst, detail = 0.0, ""
        for _ in range(_DIRECTIONS):
            v = rng.standard_normal(x.shape) * mask
            h = _STEP
            fd = (-f(2 * h * v) + 8 * f(h * v) - 8 * f(-h * v) + f(-2 * h * v)) / (12 * h)
            an = float(np.sum(grads[k] * v))
            scale = max(abs(an), float(np.sum(np.abs(grads[k] * v))), 1e-300)
            err = abs(fd - an) / scale
            if not np.isfinite(err) or err > worst:
                worst, detail = err, f"analytic {an!r} vs central difference {fd!r}"
        rows.append(Row(loss.name, params, spec.name, "central-difference", worst, bool(worst <= RTOL), detail))
    return rows


def autograd_check(loss: Loss, inputs, params, rng) -> list[Row]:
    """``autograd.test_util.check_grads(modes=['rev'])`` through the loss's autograd primitive."""
    import autograd.numpy as anp
    from autograd.test_util import check_grads
    from autograd.tracer import getval

    value = loss(*inputs, **params)
    cot = rng.standard_normal(np.shape(value))
    rows = []
    for k, spec in enumerate(loss.inputs):
        if not spec.differentiable:
            continue
        mask = _movable(spec, inputs[k], 1e-3)

        frozen = loss.objective(inputs, **params)

        def f(u, k=k, mask=mask):
            args = list(inputs)
            args[k] = inputs[k] + mask * u
            out = anp.sum(cot * loss(*args, **params))
            if loss.stop_gradient is None:
                return out
            # Same value as the frozen objective (so check_grads' differences see the stop-gradient),
            # while the gradient autograd takes still comes from the primitive's VJP alone.
            plain = [getval(a) for a in args]
            return out + float(np.sum(cot * frozen(*plain)) - np.sum(cot * loss(*plain, **params)))

        try:
            check_grads(f, modes=["rev"], order=1)(np.zeros_like(inputs[k]))
            rows.append(Row(loss.name, params, spec.name, "autograd.check_grads", 0.0, True))
        except AssertionError as exc:
            rows.append(Row(loss.name, params, spec.name, "autograd.check_grads", float("inf"), False, str(exc)[:300]))
    return rows


def has_autograd() -> bool:
    return importlib.util.find_spec("autograd") is not None


def prove(loss: Loss, *, seed: int = 0, use_autograd: bool | None = None) -> list[Row]:
    """Run both checks over every parameter path of ``loss`` on typical float64 inputs."""
    use_autograd = has_autograd() if use_autograd is None else use_autograd
    rng = np.random.default_rng(seed)
    rows: list[Row] = []
    for params in param_paths(loss):
        case = sample(loss, params, "typical", rng)
        rows += central_difference(loss, case.inputs, case.params, rng)
        if use_autograd:
            rows += autograd_check(loss, case.inputs, case.params, rng)
    return rows


def prove_all(losses=None, **kw) -> dict[str, list[Row]]:
    return {l.name: prove(l, **kw) for l in (losses or catalog())}
