"""The independent oracle: every loss's textbook formula again, in mpmath, to certify golden values.

Each registered loss has an oracle here (one module per family), written from the paper or the
framework's documentation as plainly as possible: ``log(sum(exp(z))) - z_y``, ``acos`` for angles,
``sqrt(sum of squares)`` for norms, no max-shifts, no ``log1p`` rewrites, no clamps that the
definition does not have. Nothing here imports refloss's float64 code: the two implementations
share only the loss's name and its parameter names.

Writing an oracle::

    @oracle("mse_loss")
    def mse_loss(M, input, target, *, reduction):
        '''(x - y)^2 elementwise.'''
        return reduce(M, (input - target) ** 2, reduction)

``M`` is an mpmath context, ``mpmath.iv`` (intervals) when certifying and ``mpmath.mp`` otherwise;
use ``M.exp``, ``M.log``, ``M.sqrt``, ``M.mpf`` ... and the elementwise versions in :func:`ops`.
Float inputs arrive as NumPy object arrays of ``M.mpf`` (exact copies of the float64 values);
integer inputs (labels) as int64 arrays; array parameters (class weights) as object arrays; other
parameters as given (Python floats: convert with ``M.mpf`` where precision matters, which is exact).
Return the *reduced* value (a scalar, or an object array for ``reduction='none'``) through
:func:`reduce`. A loss that declares stop-gradient intermediates receives ``base=`` (the inputs at
which those intermediates are frozen; ``None`` means the inputs themselves) and must compute its
frozen quantities from ``base``.

Certification (:func:`evaluate`, :func:`gradient`): the formula is evaluated in interval arithmetic
(``mpmath.iv``), starting at 50 significant digits and doubling the precision until every output
interval is narrower than 2^-80 of its magnitude (or exactly zero), so that cancellation in a
textbook formula (``log(1 + exp(-700))``) is detected and outrun instead of trusted. Where the formula
branches on an exact tie (``max(0, 0)``, equal boxes), intervals cannot decide the branch; there the
value is computed in point arithmetic at 200 digits (every loss is continuous across its ties,
except where its docstring says otherwise). Gradients are one-sided divided differences of that
certified evaluation with a step of 2^-100 relative to the element (2^-100 times the input's largest
entry, at most 2^-100 absolute, for a zero element; ``mpmath.diff``'s one-sided rule with an explicit
step; truncation error ~1e-30 relative): where the left and right
derivatives differ the point is a kink, and both are reported.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from typing import Callable

import numpy as np

try:  # an optional extra: refloss imports without it
    import mpmath
except ImportError:  # pragma: no cover - exercised only without the extra
    mpmath = None

ORACLES: dict[str, Callable] = {}
FAMILIES = ("classification", "distribution", "regression", "embedding", "box", "segmentation", "margin")

START_DPS = 50
MAX_DPS = 3200
TIE_DPS = 200
_TIE_SEARCH_DPS = 400  # a comparison still undecided at this many digits is taken as an exact tie
_REL_WIDTH = 2.0**-80
_FLOAT64_BELOW = mpmath.mpf(2) ** -1100 if mpmath else 0.0
_STEP = 2.0**-100
_GUARD_DPS = 45


def oracle(name: str):
    """Register ``f(M, *inputs, base=None, **params)`` as the oracle of the loss called ``name``."""

    def register(f):
        if name in ORACLES:
            raise ValueError(f"refloss.mp: a second oracle for {name!r}")
        ORACLES[name] = f
        return f

    return register


def _require():
    if mpmath is None:
        raise ImportError("refloss.mp needs mpmath: pip install 'refloss[mpmath]'")
    _strict_interval_order()


class UndecidableComparison(ValueError):
    """An interval comparison whose intervals overlap: the branch cannot be decided at these digits."""


def _strict_interval_order():
    """Make ``<, <=, >, >=`` between overlapping intervals raise :class:`UndecidableComparison`.

    mpmath 1.3 answers them ``None`` (which an ``if`` reads as False: a tie silently decided one way);
    the oracle's branches must instead fall back to point arithmetic (:func:`_certify`), whatever the
    installed mpmath (1.3 is what sympy, hence PyTorch, pins)."""
    cls = type(mpmath.iv.mpf(0))
    if getattr(cls, "_refloss_strict", False):
        return
    libmp = mpmath.libmp

    def strict(cmpfun):
        def compare(s, t):
            out = s._compare(t, cmpfun)
            if out is None:
                raise UndecidableComparison("overlapping intervals have no order")
            return out

        return compare

    cls.__lt__, cls.__le__ = strict(libmp.mpi_lt), strict(libmp.mpi_le)
    cls.__gt__, cls.__ge__ = strict(libmp.mpi_gt), strict(libmp.mpi_ge)
    cls._refloss_strict = True


def load() -> dict[str, Callable]:
    """Import every family's oracle module; returns :data:`ORACLES`."""
    _require()
    for family in FAMILIES:
        try:
            importlib.import_module(f"{__name__}.{family}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{family}":
                raise
    return ORACLES


# --------------------------------------------------------------------------------------------------
# Elementwise helpers over object arrays, for either context.


@dataclasses.dataclass(frozen=True)
class _Ops:
    M: object

    def _map(self, f, *arrays):
        return np.frompyfunc(f, len(arrays), 1)(*arrays)

    def exp(self, a):
        return self._map(self.M.exp, a)

    def log(self, a):
        return self._map(self.M.log, a)

    def sqrt(self, a):
        return self._map(self.M.sqrt, a)

    def cos(self, a):
        return self._map(self.M.cos, a)

    def sin(self, a):
        return self._map(self.M.sin, a)

    def acos(self, a):
        """``acos(c)`` for ``c`` in [-1, 1], as ``atan2(sqrt(1 - c^2), c)`` (mpmath.iv has no acos)."""
        return self._map(lambda c: self.M.atan2(self.M.sqrt(1 - c * c), c), a)

    def atan2(self, y, x):
        return self._map(self.M.atan2, y, x)

    def abs(self, a):
        return self._map(abs, a)

    def maximum(self, a, b):
        return self._map(lambda u, v: u if u >= v else v, a, b)

    def minimum(self, a, b):
        return self._map(lambda u, v: u if u <= v else v, a, b)

    def sum(self, a, axis=None, keepdims=False):
        """Exact-as-the-context sums (``M.fsum`` along ``axis``)."""
        a = np.asarray(a, dtype=object)
        if axis is None:
            return self.M.fsum(a.ravel().tolist())
        out = np.apply_along_axis(lambda v: self.M.fsum(v.tolist()), axis, a)
        out = np.asarray(out, dtype=object)
        return np.expand_dims(out, axis) if keepdims else out

    def array(self, a):
        """A float array (or scalar) as an object array of exact ``M.mpf``; ints pass through."""
        a = np.asarray(a)
        if a.dtype.kind in "iub":
            return a.astype(np.int64)
        return np.asarray(np.frompyfunc(lambda v: self.M.mpf(float(v)), 1, 1)(a), dtype=object)


def ops(M) -> _Ops:
    """Elementwise ``exp, log, sqrt, cos, sin, acos, atan2, abs, maximum, minimum``, ``sum`` (fsum)
    and ``array`` over NumPy object arrays of ``M.mpf``."""
    return _Ops(M)


def reduce(M, values, reduction, mean_weight=None):
    """The reductions by their definitions: ``none``; ``sum``; ``mean`` (over every element, or over
    ``sum(mean_weight)`` when given: PyTorch's weighted mean); ``batchmean`` (sum over the first
    dimension's length); ``sum_over_batch_size`` (Keras: sum over the element count). 0/0 is NaN."""
    values = np.asarray(values, dtype=object)
    if reduction == "none":
        return values
    total = M.fsum(values.ravel().tolist())
    if reduction == "sum":
        return total
    if reduction == "mean" and mean_weight is not None:
        den = M.fsum(np.asarray(mean_weight, dtype=object).ravel().tolist())
    elif reduction == "batchmean":
        den = values.shape[0] if values.ndim else 1
    elif reduction in ("mean", "sum_over_batch_size"):
        den = values.size
    else:
        raise ValueError(f"refloss.mp.reduce: unknown reduction {reduction!r}")
    if den == 0:
        return M.mpf("nan")
    return total / den


# --------------------------------------------------------------------------------------------------
# Certified evaluation.


def _takes_base(f) -> bool:
    return "base" in inspect.signature(f).parameters


def _run(name, M, args, params, base):
    """The oracle on already-converted ``args`` (object arrays of ``M.mpf``, int labels)."""
    f = ORACLES[name]
    o = ops(M)
    kw = {k: (o.array(v) if isinstance(v, np.ndarray) else v) for k, v in params.items()}
    if base is not None and _takes_base(f):
        kw["base"] = [o.array(a) for a in base]
    return np.asarray(f(M, *args, **kw), dtype=object)


def _narrow(out) -> bool:
    for v in out.ravel():
        a, b = v.a, v.b
        if a == b:
            continue
        if not (mpmath.isfinite(a) and mpmath.isfinite(b)):
            return False
        if b - a <= _FLOAT64_BELOW:  # narrower than float64 can resolve anywhere (e^-10000 needs no 3200 digits)
            continue
        mid = abs(v.mid)
        if mid == 0 or (b - a) > _REL_WIDTH * mid:
            return False
    return True


def _point(iv_value):
    """An interval narrowed enough to be a point: its midpoint as an ``mpmath.mp`` number."""
    a, b = iv_value.a, iv_value.b
    if a == b:
        return mpmath.mpf(a)
    return mpmath.mpf(iv_value.mid)


def _certify(fn):
    """Run ``fn(M) -> object array`` in intervals at doubling precision until narrow; fall back to
    point arithmetic at :data:`TIE_DPS` digits on an undecidable branch. Returns ``(values, dps)``:
    the digits at which the intervals were narrow, ``None`` for the point-arithmetic fallback."""
    dps = START_DPS
    while dps <= MAX_DPS:
        saved = mpmath.iv.dps
        try:
            mpmath.iv.dps = dps
            out = np.asarray(fn(mpmath.iv), dtype=object)
            if _narrow(out):
                return np.asarray(np.frompyfunc(_point, 1, 1)(out), dtype=object).reshape(out.shape), dps
        except (ValueError, ZeroDivisionError, TypeError):
            # an undecidable comparison: an exact tie, or too few digits to separate the two sides
            if dps >= _TIE_SEARCH_DPS:
                break
        finally:
            mpmath.iv.dps = saved
        dps *= 2
    with mpmath.workdps(max(TIE_DPS, min(dps, MAX_DPS))):
        try:
            out = np.asarray(fn(mpmath.mp), dtype=object)
        except ZeroDivisionError:
            out = np.asarray(mpmath.mpf("nan"), dtype=object)
        return np.asarray(np.frompyfunc(lambda v: +v, 1, 1)(out), dtype=object).reshape(out.shape), None


def _known(name):
    _require()
    load()
    if name not in ORACLES:
        raise KeyError(f"refloss.mp: no oracle for {name!r}")


def evaluate(name: str, inputs, params: dict, base=None):
    """The oracle's value at ``inputs`` as an object array of ``mpmath.mpf`` (0-d for a scalar), and
    how it was certified: the interval digits, or ``None`` for a tie (point arithmetic at :data:`TIE_DPS`)."""
    _known(name)
    return _certify(lambda M: _run(name, M, [ops(M).array(a) for a in inputs], params, base))


@dataclasses.dataclass
class Gradient:
    """One-sided derivatives of ``sum(cotangent * loss)`` w.r.t. one input (object arrays of mpf)."""

    left: np.ndarray
    right: np.ndarray

    @property
    def kinks(self) -> np.ndarray:
        """Boolean mask of elements where the one-sided derivatives differ (beyond 2^-60 relative)."""
        out = np.zeros(self.left.shape, dtype=bool)
        for idx in np.ndindex(self.left.shape):
            lo, hi = self.left[idx], self.right[idx]
            scale = max(abs(lo), abs(hi))
            out[idx] = bool(abs(hi - lo) > scale * 2.0**-60)
        return out


def gradient(name: str, inputs, params: dict, cotangent, which, *, stop_gradient=False) -> list[Gradient]:
    """Left and right derivatives of ``sum(cotangent * loss(inputs))`` w.r.t. each input in ``which``.

    ``cotangent``: an array of the output's shape (1 for a reduced loss). With ``stop_gradient`` the
    oracle's frozen intermediates stay at ``inputs`` (``base=``) while the inputs move.

    Precision: the divided differences ``(F(x + h) - F(x)) / h`` cancel the digits of ``F`` that the
    step does not move; an element whose share of ``F`` is tiny (one far-out row among many) cancels
    more. Each difference is taken in point arithmetic starting at the digits that certified the value
    plus :data:`_GUARD_DPS`, and an element is accepted once the rounding bound
    ``(4 |F(digits) - F(digits + 20)| + |F| 10^-(digits - 10)) / h`` is below 2^-70 of the larger of its own derivative and the largest
    derivative of its input (the normwise policy needs no more); otherwise the digits double, up to
    :data:`MAX_DPS`.
    """
    _known(name)
    inputs = [np.asarray(a) for a in inputs]
    base = [a.copy() for a in inputs] if stop_gradient else None
    _, dps = evaluate(name, inputs, params, base)
    M = mpmath.mp
    cot = np.asarray(cotangent, dtype=np.float64)
    result = []
    for k in which:
        x = inputs[k]
        left = np.empty(x.shape, dtype=object)
        right = np.empty(x.shape, dtype=object)
        scale = float(np.max(np.abs(x))) if x.size else 1.0
        pending = list(np.ndindex(x.shape))
        largest = mpmath.mpf(0)
        digits = (dps or TIE_DPS) + _GUARD_DPS
        while pending:
            with mpmath.workdps(digits):
                c = ops(M).array(cot)
                const = [ops(M).array(a) for a in inputs]

                def F(args):
                    return M.fsum(np.asarray(_run(name, M, args, params, base) * c, dtype=object).ravel().tolist())

                f0 = F(const)
                with mpmath.workdps(digits + 20):  # F's own rounding error, measured (cancellation in F included)
                    drift = abs(F([ops(M).array(a) for a in inputs]) - f0)
                found = {}
                for idx in pending:
                    xi = float(x[idx])
                    # relative to the element; a zero element steps by its input's scale, but never more
                    # than 2^-100 absolute: a clamp such as max(|v|, eps) around a zero row stays unleft
                    h = M.mpf(_STEP) * (abs(xi) if xi != 0 else (min(scale, 1.0) or 1.0))
                    args = list(const)
                    args[k] = const[k].copy()
                    args[k][idx] = M.mpf(xi) - h
                    lo = (f0 - F(args)) / h
                    args[k][idx] = M.mpf(xi) + h
                    hi = (F(args) - f0) / h
                    bound = (4 * drift + abs(f0) * mpmath.mpf(10) ** (10 - digits)) / h
                    found[idx] = (lo, hi, bound)
                    if bound * 2**70 <= max(abs(lo), abs(hi)):
                        largest = max(largest, abs(lo), abs(hi))
                last = digits * 2 > MAX_DPS
                still = []
                for idx, (lo, hi, bound) in found.items():
                    if last or bound * 2**70 <= max(abs(lo), abs(hi), largest):
                        left[idx], right[idx] = +lo, +hi
                    else:
                        still.append(idx)
                pending = still
            digits *= 2
        result.append(Gradient(left, right))
    return result


def ulp_error(approx, exact) -> float:
    """Largest ``|approx - exact| / ulp(exact)`` over the elements, in float64 ULP of the correctly
    rounded exact value (``inf`` where one is NaN/infinite and the other is not; 0 where both are
    the same special value)."""
    approx = np.asarray(approx, dtype=np.float64)
    exact = np.asarray(exact, dtype=object)
    worst = 0.0
    for a, e in zip(approx.ravel(), exact.ravel()):
        if mpmath.isnan(e) or math.isnan(a):
            worst = worst if (mpmath.isnan(e) and math.isnan(a)) else math.inf
            continue
        if mpmath.isinf(e) or math.isinf(a):
            worst = worst if float(e) == a else math.inf
            continue
        ulp = float(np.spacing(abs(float(e))))
        worst = max(worst, float(abs(mpmath.mpf(a) - e) / ulp))
    return worst


def normwise_ulp_error(approx, exact, off=None) -> float:
    """``max |approx - exact| / ulp(max |exact|)``: a gradient's error in ULP of its largest entry.

    ``off`` (object array) replaces ``approx - exact`` (the distance to a kink's segment). Entries
    where either side is NaN or infinite must be the same special value (:func:`ulp_error`; at a kink,
    inside the segment is enough); the finite rest is measured normwise against its largest entry.
    """
    approx = np.asarray(approx, dtype=np.float64).ravel()
    exact = np.asarray(exact, dtype=object).ravel()
    if approx.size == 0:
        return 0.0
    if off is None:
        off = np.asarray(np.frompyfunc(lambda a, e: mpmath.mpf(float(a)) - e, 2, 1)(approx, exact), dtype=object)
    off = np.asarray(off, dtype=object).ravel()
    special = np.array([not (math.isfinite(a) and mpmath.isfinite(e)) for a, e in zip(approx, exact)], dtype=bool)
    worst = 0.0
    for a, e, d in zip(approx[special], exact[special], off[special]):
        inside = not mpmath.isnan(d) and d == 0  # within a kink's segment (an infinite end included)
        worst = max(worst, 0.0 if inside else ulp_error([a], [e]))
    finite = ~special
    if np.any(finite):
        ulp = float(np.spacing(float(max(abs(e) for e in exact[finite]))))
        worst = max(worst, max(float(abs(v)) / ulp for v in off[finite]))
    return worst


def _distance_to_segment(approx, grad: Gradient):
    """Per element: ``approx - midpoint`` where the derivative is two-sided, and the distance to the
    segment ``[left, right]`` at kinks (any subgradient between the one-sided derivatives is right)."""
    out = np.empty(grad.left.shape, dtype=object)
    for idx in np.ndindex(grad.left.shape):
        lo, hi = sorted((grad.left[idx], grad.right[idx]))
        a = mpmath.mpf(float(approx[idx]))
        out[idx] = a - lo if a < lo else (a - hi if a > hi else mpmath.mpf(0))
    return out


@dataclasses.dataclass
class Certificate:
    """refloss's float64 value and gradients at one point, and their errors against the oracle."""

    value: np.ndarray
    grads: dict  # input name -> float64 gradient (differentiable inputs only)
    exact_value: np.ndarray  # object array of mpf
    value_ulp: float
    grad_ulp: dict  # input name -> normwise ULP error
    kinks: dict  # input name -> flat indices where the one-sided derivatives differ
    bounds: dict  # input name -> {flat index: (left, right)} as float64 at those kinks
    dps: int | None  # digits that certified the value (None: a tie, point arithmetic)

    def worst(self) -> float:
        return max([self.value_ulp, *self.grad_ulp.values()])


def certify(loss, inputs, params: dict, cotangent=None) -> Certificate:
    """Evaluate ``loss`` (a registered refloss loss) in float64 and certify it against its oracle.

    ``cotangent`` weighs the output for the gradient (``None``: ones). The value error is
    :func:`ulp_error`; each gradient's is :func:`normwise_ulp_error` against the midpoint of the
    one-sided derivatives, where at kinks any value between them counts as exact.
    """
    _require()
    inputs = [np.asarray(a) for a in inputs]
    value, grads = loss.value_and_grad(*inputs, **params)
    value = np.asarray(value, dtype=np.float64)
    cot = np.ones(value.shape) if cotangent is None else np.asarray(cotangent, dtype=np.float64)
    _, grads = loss.value_and_grad(*inputs, cotangent=cot, **params)
    exact, dps = evaluate(loss.name, inputs, params)
    which = [k for k, spec in enumerate(loss.inputs) if spec.differentiable]
    exact_grads = gradient(loss.name, inputs, params, cot, which, stop_gradient=loss.stop_gradient is not None)
    out_grads, grad_ulp, kinks, bounds = {}, {}, {}, {}
    for k, g in zip(which, exact_grads):
        name = loss.inputs[k].name
        approx = np.asarray(grads[k], dtype=np.float64)
        out_grads[name] = approx
        mid = np.asarray(np.frompyfunc(lambda a, b: (a + b) / 2, 2, 1)(g.left, g.right), dtype=object)
        grad_ulp[name] = normwise_ulp_error(approx, mid, off=_distance_to_segment(approx, g))
        mask = g.kinks
        kinks[name] = [int(i) for i in np.flatnonzero(mask)]
        bounds[name] = {int(i): (float(g.left.ravel()[i]), float(g.right.ravel()[i])) for i in kinks[name]}
    return Certificate(value, out_grads, exact, ulp_error(value, exact), grad_ulp, kinks, bounds, dps)
