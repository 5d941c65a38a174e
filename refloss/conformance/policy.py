"""The tolerance policy: how far a framework's result may be from the exact one, per dtype.

One rule for every loss, framework and case; nothing here knows a loss by name.

**Error.** Measured in ULP of the *target* dtype ``d`` (the one the framework computed in):

- value, elementwise: ``e_k = |a_k - x_k| / ulp_d(x_k)`` with ``x`` the certified exact value (float64);
- gradient, normwise per input (as :func:`refloss.golden.gradient_error`): ``max_k |a_k - x_k| /
  ulp_d(max_k |x_k|)``, where at a kink (the golden ``bounds``) any value between the one-sided
  derivatives is exact.

Where the exact value overflows ``d`` (it rounds to infinity), the infinity of the right sign is the
correctly rounded answer; NaN matches NaN and an infinity the same infinity; any other non-finite
result where the reference is finite is an infinite error. A NaN entry of an exact *gradient* is a
derivative the oracle does not define (at an infinite input) and is not compared.

**Bound.** ``error <= C[d] * (1 + S)``, with ``S`` the case's *sensitivity* to rounding in ``d``: the
change of the exact result, in ULP of ``d``, when every differentiable input, float array parameter,
real parameter and cotangent is perturbed by one unit roundoff ``u_d = 2^-p`` (relative, in several
sign patterns), computed with refloss in float64::

    S = max over directions delta of |f(x (1 + h delta)) - f(x)| * (u_d / h) / ulp_d(f(x)),   h = max(u_d, 2^-26)

(for float64 the step ``h`` is ``2^-26`` and the change is scaled back linearly, so that refloss's own
float64 rounding does not count as sensitivity). A backward-stable computation in ``d`` is the exact
result at inputs perturbed by a few ``u_d``, so it meets the bound; a framework that loses more than
its dtype loses (cancellation an accurate formula avoids, an intermediate that overflows where the
result does not) does not. ``S`` is elementwise for values and per input for gradients.

``C[d]`` counts the roundings of a short in-dtype computation: about ten elementwise operations and
a summation of at most 2^7 terms. It is 16 for float32 and float64, and 8 for float16 and bfloat16,
whose ULP is 2^13 to 2^16 times wider, so that frameworks (which accumulate half-precision
reductions in float32) spend fewer of them. The constants are fixed here and never tuned per case.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np

from ..golden import gradient_error, round_to

#: The target dtypes, widest first.
DTYPES = ("float64", "float32", "float16", "bfloat16")
#: Precision ``p`` (significand bits, the implicit one included) and minimum normal exponent.
FORMATS = {"float64": (53, -1022), "float32": (24, -126), "float16": (11, -14), "bfloat16": (8, -126)}
#: ``C[d]``: the bound is ``C[d] * (1 + S)`` ULP of ``d``.
C = {"float64": 16.0, "float32": 16.0, "float16": 8.0, "bfloat16": 8.0}
#: Smallest perturbation step; below it the change is extrapolated linearly (float64).
H_MIN = 2.0**-26
#: Sign patterns tried: all +1, all -1, and random ones (seeded by the case id).
DIRECTIONS = 8


def unit_roundoff(dtype: str) -> float:
    return 2.0 ** -FORMATS[dtype][0]


def wider_or_equal(dtype: str, tag: str) -> bool:
    """Whether every ``tag`` value is exactly a ``dtype`` value (float16 and bfloat16 are not nested)."""
    if dtype == tag:
        return True
    p, emin = FORMATS[dtype]
    q, fmin = FORMATS[tag]
    return p >= q and emin <= fmin


def ulp(x, dtype: str) -> np.ndarray:
    """The spacing of ``dtype`` at ``|x|`` (float64 array): ``2^(e - p + 1)`` for ``2^e <= |x| < 2^(e+1)``,
    the subnormal spacing below the smallest normal (and at 0)."""
    p, emin = FORMATS[dtype]
    ax = np.abs(np.asarray(x, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        _, e = np.frexp(np.where(np.isfinite(ax), ax, 1.0))
    e = np.where(ax == 0, emin + 1, e) - 1
    return np.ldexp(1.0, np.maximum(e, emin) - p + 1)


def _special(approx, exact, dtype):
    """``(mask, bad)``: entries compared as special values (NaN, infinities, overflow in ``dtype``),
    and whether any of them mismatches."""
    r = round_to(exact, dtype)
    special = ~np.isfinite(r) | ~np.isfinite(approx)
    same = (np.isnan(approx) & np.isnan(r)) | (approx == r)
    return special, special & ~same


def value_ulps(approx, exact, dtype: str) -> np.ndarray:
    """Elementwise error of ``approx`` in ULP of ``dtype`` (see the module docstring)."""
    a = np.asarray(approx, dtype=np.float64)
    x = np.asarray(exact, dtype=np.float64)
    if a.shape != x.shape:
        return np.full(x.shape, math.inf)
    special, bad = _special(a, x, dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(a - x) / ulp(x, dtype)
    return np.where(special, np.where(bad, math.inf, 0.0), err)


def gradient_ulps(approx, exact, dtype: str, bounds: dict | None = None) -> float:
    """Normwise error of one gradient in ULP of ``dtype`` at its largest exact entry; ``bounds``
    ``{flat index: (left, right)}`` as in the golden files."""
    a = np.asarray(approx, dtype=np.float64).ravel()
    x = np.asarray(exact, dtype=np.float64).ravel()
    if a.shape != x.shape:
        return math.inf
    special, bad = _special(a, x, dtype)
    # A NaN exact entry is a derivative the oracle has no value for (at an infinite input): not compared.
    bad &= ~np.isnan(x)
    # At a kink any finite value between the one-sided derivatives is exact, even where their
    # midpoint (the stored exact value) overflows the dtype.
    kinks = np.zeros(a.shape, dtype=bool)
    kinks[[i for i in (bounds or {}) if i < a.size]] = True
    kinks &= np.isfinite(a) & np.isfinite(x)
    special &= ~kinks
    bad &= ~kinks
    if np.any(bad):
        return math.inf
    ok = ~special
    if not np.any(ok):
        return 0.0
    index = np.flatnonzero(ok)
    where = {int(i): k for k, i in enumerate(index)}
    kept = {where[i]: b for i, b in (bounds or {}).items() if i in where}
    scale = float(np.max(np.abs(x[ok])))
    # golden.gradient_error is max|off| / spacing64(scale); rescale it to ULP of dtype.
    off = gradient_error(a[ok], x[ok], kept) * float(np.spacing(scale))
    return float(off / ulp(scale, dtype))


# --------------------------------------------------------------------------------------------------
# Sensitivity: how much the exact result moves when the inputs are rounded in the target dtype.


@dataclasses.dataclass
class Point:
    """A refloss evaluation point: ``evaluate(inputs, params, cot) -> (value, {name: grad})`` in float64.

    ``perturb`` names the inputs whose rounding counts (the differentiable ones); float array
    parameters, real parameters and the cotangent are always perturbed. ``domain`` maps an input
    name to its declared ``(low, high)`` range, into which perturbed values are clipped.
    """

    evaluate: object
    inputs: dict
    params: dict
    cot: np.ndarray | None
    perturb: tuple
    domain: dict
    seed: str


def _directions(point: Point):
    rng = np.random.default_rng(zlib.crc32(point.seed.encode()))
    arrays = {f"i:{n}": point.inputs[n] for n in point.perturb}
    arrays.update({f"p:{k}": v for k, v in point.params.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"})
    scalars = [k for k, v in point.params.items() if isinstance(v, float) and math.isfinite(v)]
    if point.cot is not None:
        arrays["cot"] = point.cot
    for k in range(DIRECTIONS):
        if k < 2:
            sign = 1.0 if k == 0 else -1.0
            yield {n: np.full(np.shape(a), sign) for n, a in arrays.items()}, {s: sign for s in scalars}
        else:
            yield ({n: rng.choice((-1.0, 1.0), size=np.shape(a)) for n, a in arrays.items()},
                   {s: float(rng.choice((-1.0, 1.0))) for s in scalars})


def sensitivity(point: Point, dtype: str, base=None):
    """``(S_value elementwise, {input: S_grad})`` at ``point`` for ``dtype`` (module docstring).

    ``base`` is refloss's unperturbed ``(value, grads)`` when already known. Directions whose
    perturbed point leaves the loss's domain (refloss raises) or turns a result non-finite are skipped.
    """
    u = unit_roundoff(dtype)
    h = max(u, H_MIN)
    value, grads = base if base is not None else point.evaluate(point.inputs, point.params, point.cot)
    value = np.asarray(value, dtype=np.float64)
    dv = np.zeros(value.shape)
    dg = {n: 0.0 for n in grads}
    for arrays, scalars in _directions(point):
        inputs = dict(point.inputs)
        params = dict(point.params)
        cot = point.cot
        for name, d in arrays.items():
            kind, _, key = name.partition(":")
            if kind == "i":
                moved = inputs[key] * (1.0 + h * d)
                if key in point.domain:
                    moved = np.clip(moved, *point.domain[key])
                inputs[key] = moved
            elif kind == "p":
                params[key] = params[key] * (1.0 + h * d)
            else:
                cot = cot * (1.0 + h * d)
        for s, d in scalars.items():
            params[s] = params[s] * (1.0 + h * d)
        try:
            with np.errstate(all="ignore"):
                v2, g2 = point.evaluate(inputs, params, cot)
        except (ValueError, TypeError, ZeroDivisionError, FloatingPointError):
            continue
        with np.errstate(invalid="ignore"):
            change = np.abs(np.asarray(v2, dtype=np.float64) - value)
        dv = np.where(np.isfinite(change), np.maximum(dv, change), dv)
        for n, g in grads.items():
            with np.errstate(invalid="ignore"):
                diff = np.abs(np.asarray(g2[n], dtype=np.float64) - np.asarray(g, dtype=np.float64))
            finite = diff[np.isfinite(diff)]
            if finite.size:
                dg[n] = max(dg[n], float(np.max(finite)))
    scale = u / h
    with np.errstate(over="ignore"):
        s_value = dv * scale / ulp(value, dtype)
    s_grads = {}
    for n, g in grads.items():
        g = np.asarray(g, dtype=np.float64)
        finite = np.abs(g[np.isfinite(g)])
        top = float(np.max(finite)) if finite.size else 0.0
        s_grads[n] = float(dg[n] * scale / ulp(top, dtype))
    return s_value, s_grads


# --------------------------------------------------------------------------------------------------
# The judgement.


@dataclasses.dataclass
class Judgement:
    """A result against a reference: the worst errors (ULP of the dtype) of the value and of the
    gradients, the output furthest outside (or closest to) its bound with that error and bound, and
    whether every error is within its bound."""

    ok: bool
    value_ulp: float
    grad_ulp: float
    worst: str  # "value" or "gradient of <input>"
    worst_ulp: float
    worst_bound: float
    nonfinite: str = ""  # "NaN" / "inf" where the reference is finite, else ""

    def describe(self) -> str:
        if self.nonfinite:
            return f"{self.worst}: {self.nonfinite}"
        return f"{self.worst} off by {_fmt(self.worst_ulp)} ULP (bound {_fmt(self.worst_bound)})"


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "inf"


def _nonfinite(approx, exact, dtype) -> str:
    """``"NaN"``/``"inf"`` and what the reference is there, or ``""`` when no entry is a wrong
    special value."""
    a = np.asarray(approx, dtype=np.float64).ravel()
    x = np.asarray(exact, dtype=np.float64).ravel()
    r = round_to(x, dtype)
    for kind, wrong in (("NaN", np.isnan(a) & ~np.isnan(r)), ("inf", np.isinf(a) & (a != r) & ~np.isnan(r))):
        if np.any(wrong):
            k = int(np.flatnonzero(wrong)[0])
            ref = "finite" if np.isfinite(r[k]) else (f"{float(x[k])!r}, which overflows {dtype}" if np.isfinite(x[k]) else repr(float(x[k])))
            return f"{kind} where the reference is {ref}"
    return ""


def judge(value, grads: dict, ref_value, ref_grads: dict, bounds: dict, dtype: str, point: Point | None,
          base=None) -> Judgement:
    """Hold ``(value, grads)`` (float64 copies of the framework's results in ``dtype``) to the
    reference ``(ref_value, ref_grads)``. The sensitivity ``S`` is computed (at ``point``) only when
    some error exceeds ``C[d]``, the bound at ``S = 0``."""
    c = C[dtype]
    v_err = value_ulps(value, ref_value, dtype)
    g_err = {n: gradient_ulps(grads[n], ref_grads[n], dtype, bounds.get(n)) for n in grads}
    v_bound = np.full(v_err.shape, c)
    g_bound = {n: c for n in grads}
    needs = bool(np.any(v_err > c)) or any(e > c for e in g_err.values())
    if needs and point is not None:
        s_v, s_g = sensitivity(point, dtype, base)
        if s_v.shape == v_err.shape:
            v_bound = c * (1.0 + s_v)
        g_bound = {n: c * (1.0 + s_g.get(n, 0.0)) for n in grads}
    with np.errstate(invalid="ignore", divide="ignore"):
        v_ratio = np.where(v_err == 0, 0.0, v_err / v_bound)
    candidates = []
    if v_err.size:
        k = int(np.argmax(v_ratio))
        candidates.append((float(v_ratio.ravel()[k]), "value", float(v_err.ravel()[k]), float(v_bound.ravel()[k])))
    for n in grads:
        ratio = 0.0 if g_err[n] == 0 else g_err[n] / g_bound[n]
        candidates.append((ratio, f"gradient of {n}", g_err[n], g_bound[n]))
    ok = all(r <= 1.0 for r, *_ in candidates)
    ratio, worst, err, bound = max(candidates, key=lambda t: t[0]) if candidates else (0.0, "value", 0.0, c)
    nonfinite = ""
    if not ok:
        if worst == "value":
            nonfinite = _nonfinite(value, ref_value, dtype)
        else:
            n = worst.removeprefix("gradient of ")
            nonfinite = _nonfinite(grads[n], ref_grads[n], dtype)
    v_worst = float(np.max(v_err)) if v_err.size else 0.0
    g_worst = max(g_err.values(), default=0.0)
    return Judgement(ok, v_worst, g_worst, worst, err, bound, nonfinite)
