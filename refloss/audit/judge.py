"""The implementations under audit and their verdict at each point: the one place the audit uses
:mod:`refloss.conformance` (its adapters run the code, its :class:`~refloss.conformance.case.Case`
carries the point, its tolerance policy measures the error).

Implementations are refloss on every available backend (the conformance ``numpy`` target: NumPy
arrays of float64, float32 and float16; NumPy has no bfloat16) and each requested framework target
(``torch``, ``pml``, ``jax``, ``tensorflow``) whose packages import here.

Verdict of one implementation in one dtype, for the value and for the gradient separately:

- ``ok``: within the bound. refloss in float64 is held to its certification bound
  (``golden.TOLERANCE_ULP`` + ``golden.VERIFY_SLACK_ULP`` for the exact results being rounded to
  float64: 4.5 ULP); everything else to the conformance policy ``C[d] (1 + S)`` ULP of the dtype
  (:mod:`refloss.conformance.policy`), with ``S`` the point's sensitivity to rounding in that dtype;
- ``convention``: outside the bound of the exact result but within it of what a documented
  convention of the framework predicts (the adapter's ``Convention``);
- failing, most severe first: ``exception`` (raised on a valid input), ``nan`` (NaN where the exact
  result, rounded to the dtype, is not), ``inf`` (an infinity where it is finite, or of the other
  sign), ``sign`` (outside the bound with an entry of the wrong sign), ``inaccurate`` (outside the bound);
- not judged: ``not representable`` (the dtype's range does not hold an input), ``not offered`` (the
  implementation has no counterpart, parameter setting or dtype kernel), ``undefined`` (no exact
  result: the value is NaN, or the gradient at an infinite input or value).
"""

from __future__ import annotations

import dataclasses
import traceback

import numpy as np

from ..golden import TOLERANCE_ULP, VERIFY_SLACK_ULP, round_to
from ..loss import get
from .sweep import DTYPES, Exact, Point

PARTS = ("value", "gradient")
FAILING = ("exception", "nan", "inf", "sign", "inaccurate")
NOT_JUDGED = ("not representable", "not offered", "undefined")
VERDICTS = FAILING + ("convention", "ok") + NOT_JUDGED
#: Higher is worse; a cell summarising several outputs shows the worst.
SEVERITY = {v: k for k, v in enumerate(reversed(VERDICTS))}
#: refloss's float64 certification bound, against exact results rounded to float64.
CERTIFIED_ULP = TOLERANCE_ULP + VERIFY_SLACK_ULP


@dataclasses.dataclass
class Implementation:
    """An implementation under audit: a conformance adapter and the name the report gives it."""

    name: str
    target: str
    adapter: object
    version: str

    @property
    def is_refloss(self) -> bool:
        return self.target == "numpy"


def implementations(frameworks) -> tuple[list, dict]:
    """``(implementations, unavailable)``: refloss on every backend, then each framework target's
    adapters that load; ``unavailable`` maps what could not load to why. An unknown target raises
    ``KeyError``."""
    from ..conformance.runner import TARGETS, adapters

    unknown = [f for f in frameworks if f not in TARGETS or f == "numpy"]
    if unknown:
        choices = ", ".join(t for t in TARGETS if t != "numpy")
        raise KeyError(f"unknown framework {', '.join(map(repr, unknown))}; choose from {choices}")
    out, unavailable = [], {}
    for target in ("numpy", *frameworks):
        try:
            found = adapters(target)
        except ImportError as e:
            unavailable[target] = f"{type(e).__name__}: {e}"
            continue
        for a in found:
            try:
                a.load()
            except ImportError as e:
                unavailable[a.name] = f"{type(e).__name__}: {e}"
                continue
            name = a.name.replace("numpy", "refloss") if target == "numpy" else a.name
            out.append(Implementation(name, target, a, a.version()))
    return out, unavailable


@dataclasses.dataclass
class Cell:
    """The verdict of one implementation, in one dtype, for the value or the gradient, at one point.
    ``error``/``bound`` are in ULP of the dtype (the worst output; ``None`` when not measured)."""

    implementation: str
    dtype: str
    part: str
    verdict: str
    error: float | None = None
    bound: float | None = None
    detail: str = ""
    reproducer: str = ""

    @property
    def failing(self) -> bool:
        return self.verdict in FAILING

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        for k in ("error", "bound"):
            v = out[k]
            if isinstance(v, float) and not np.isfinite(v):
                out[k] = "inf" if v > 0 else "nan"
        if not out["reproducer"]:
            del out["reproducer"]
        return out


def _nonfinite(approx, ref, dtype):
    """``(nan mask, inf mask)``: NaN where the rounded reference is not NaN, infinities where it differs."""
    r = round_to(ref, dtype)
    nan = np.isnan(approx) & ~np.isnan(r)
    inf = np.isinf(approx) & (approx != r) & ~np.isnan(r)
    return nan, inf


def _worse(a: str, b: str) -> str:
    return a if SEVERITY[a] >= SEVERITY[b] else b


class Judge:
    """The verdicts at one point: builds its conformance case once, and the sensitivity per dtype
    lazily (only where an error exceeds ``C[d]``, the bound at zero sensitivity)."""

    def __init__(self, point: Point, exact: Exact):
        from ..conformance import policy
        from ..conformance.case import Case

        self.policy = policy
        self.point = point
        self.exact = exact
        self.loss = get(point.loss)
        narrowest = next((d for d in ("float16", "bfloat16", "float32", "float64") if d in point.dtypes), "float64")
        self.case = Case(
            loss=self.loss, id=point.key, tag="audit", dtype=narrowest, inputs=point.named(self.loss),
            params=dict(point.params), cot=None, exact_value=exact.value,
            exact_grads=dict(exact.grads) if exact.grads is not None else self._uncertified(),
            bounds=dict(exact.bounds),
        )
        self._sensitivity: dict = {}

    def _uncertified(self) -> dict:
        """NaN gradients for the reproducers where the exact gradient is not certified."""
        return {s.name: np.full(np.shape(a), np.nan) for s, a in zip(self.loss.inputs, self.point.inputs) if s.differentiable}

    # -- the bound ---------------------------------------------------------------------------------
    def _sens(self, key, point, dtype):
        if (key, dtype) not in self._sensitivity:
            try:
                with np.errstate(all="ignore"):
                    self._sensitivity[(key, dtype)] = self.policy.sensitivity(point, dtype)
            except Exception:  # noqa: BLE001 - refloss cannot evaluate around here: no allowance
                self._sensitivity[(key, dtype)] = None
        return self._sensitivity[(key, dtype)]

    def _bounds(self, impl, dtype, key, point, part, name=None):
        """The bound (ULP of ``dtype``) for ``part`` (``value``: elementwise array; ``gradient``: of input ``name``)."""
        if impl.is_refloss and dtype == "float64":
            return CERTIFIED_ULP
        c = self.policy.C[dtype]
        s = self._sens(key, point, dtype)
        if s is None:
            return c
        s_value, s_grads = s
        if part == "value":
            return c * (1.0 + np.asarray(s_value, dtype=np.float64))
        return c * (1.0 + s_grads.get(name, 0.0))

    # -- one part ----------------------------------------------------------------------------------
    def _value(self, impl, dtype, approx, ref, key="exact", point=None):
        """``(verdict, error, bound, detail)`` of a value against ``ref`` (errors elementwise, the worst shown)."""
        point = point or self.case.point()
        a = np.asarray(approx, dtype=np.float64)
        x = np.asarray(ref, dtype=np.float64)
        if a.shape != x.shape:
            return "inaccurate", float("inf"), None, f"shape {a.shape}, expected {x.shape}"
        nan, inf = _nonfinite(a, x, dtype)
        err = self.policy.value_ulps(a, x, dtype)
        worst = float(np.max(err)) if err.size else 0.0
        if nan.any() or inf.any():
            kind = "nan" if nan.any() else "inf"
            return kind, worst, None, ("NaN" if kind == "nan" else "an infinity") + " where the exact value is " + _shown(x, dtype)
        bound = CERTIFIED_ULP if impl.is_refloss and dtype == "float64" else self.policy.C[dtype]
        if worst > bound or not np.isfinite(worst):
            bound = self._bounds(impl, dtype, key, point, "value")
        bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), err.shape) if err.size else np.zeros(err.shape)
        over = err > bound
        if not over.any():
            return "ok", worst, float(np.max(bound)) if bound.size else None, ""
        k = int(np.argmax(np.where(over, err / np.where(bound > 0, bound, 1.0), -1.0)))
        flipped = (a * x < 0) & over & np.isfinite(a)
        return ("sign" if flipped.any() else "inaccurate"), float(err.ravel()[k]), float(bound.ravel()[k]), ""

    def _gradient(self, impl, dtype, grads, refs, bounds, key="exact", point=None):
        """``(verdict, error, bound, detail)`` of the gradients against ``refs`` (worst input)."""
        point = point or self.case.point()
        if not set(grads) & set(refs):
            return "not offered", None, None, "no gradient of a differentiable input"
        verdict, error, limit, detail = "ok", 0.0, None, ""
        for name, g in grads.items():
            if name not in refs:
                continue
            a = np.asarray(g, dtype=np.float64).ravel()
            x = np.asarray(refs[name], dtype=np.float64).ravel()
            if a.shape != x.shape:
                return "inaccurate", float("inf"), None, f"gradient of {name}: shape {a.shape}, expected {x.shape}"
            kinks = bounds.get(name, {})
            skip = self.exact.uncertified.get(name, ())
            if len(skip):  # entries on the edge of the domain are compared with nothing (sweep.Exact)
                keep = np.setdiff1d(np.arange(a.size), skip)
                where = {int(i): k for k, i in enumerate(keep)}
                a, x = a[keep], x[keep]
                kinks = {where[i]: b for i, b in kinks.items() if i in where}
            nan, inf = _nonfinite(a, x, dtype)
            err = self.policy.gradient_ulps(a, x, dtype, kinks)
            if nan.any() or inf.any():
                kind = "nan" if nan.any() else "inf"
                if _worse(kind, verdict) == kind and kind != verdict:
                    verdict, error, limit = kind, err, None
                    detail = f"gradient of {name}: " + ("NaN" if kind == "nan" else "an infinity") + " where the exact gradient is " + _shown(x, dtype)
                continue
            bound = CERTIFIED_ULP if impl.is_refloss and dtype == "float64" else self.policy.C[dtype]
            if err > bound:
                bound = self._bounds(impl, dtype, key, point, "gradient", name)
            here = "ok"
            if err > bound:
                finite = np.isfinite(x)
                scale = float(np.max(np.abs(x[finite]))) if finite.any() else 0.0
                tol = bound * float(self.policy.ulp(scale, dtype))
                smooth = np.ones(a.shape, dtype=bool)
                smooth[[i for i in kinks if i < a.size]] = False
                flipped = (a * x < 0) & (np.abs(x) > tol) & smooth & np.isfinite(a)
                here = "sign" if flipped.any() else "inaccurate"
            if SEVERITY[here] > SEVERITY[verdict] or (here == verdict and err > error):
                verdict, error, limit = here, err, bound
                detail = f"gradient of {name}" if here != "ok" else ""
        return verdict, float(error), (None if limit is None else float(limit)), detail

    # -- one implementation ------------------------------------------------------------------------
    def cells(self, impl: Implementation) -> list:
        """The value and gradient cells of ``impl`` in every dtype of :data:`DTYPES`."""
        from ..conformance.adapter import NotOffered, Unsupported

        def both(dtype, verdict, detail="", reproducer=""):
            return [Cell(impl.name, dtype, part, verdict, detail=detail, reproducer=reproducer) for part in PARTS]

        adapter = impl.adapter
        try:
            offer = adapter.offer(self.case)
        except Exception as e:  # noqa: BLE001 - a mapping that fails on this case is the adapter's problem
            return [c for d in DTYPES for c in both(d, "exception", f"offer failed: {type(e).__name__}: {e}")]
        if isinstance(offer, NotOffered):
            return [c for d in DTYPES for c in both(d, "not offered", offer.reason)]
        out = []
        for dtype in DTYPES:
            if dtype not in self.point.dtypes:
                out += both(dtype, "not representable", f"an input is outside the {dtype} range")
                continue
            if dtype not in adapter.dtypes:
                out += both(dtype, "not offered", f"{impl.name} has no {dtype}")
                continue
            try:
                with np.errstate(all="ignore"):
                    value, grads = adapter.execute(offer, self.case, dtype)
            except Unsupported as e:
                out += both(dtype, "not offered", f"no {dtype} kernel: {str(e)[:200]}")
                continue
            except Exception as e:  # noqa: BLE001 - an exception on a valid input is a finding
                where = traceback.extract_tb(e.__traceback__)[-1].name
                out += both(dtype, "exception", f"{type(e).__name__}: {str(e)[:200]} ({where})", self._reproducer(impl, offer, dtype, str(e)[:80]))
                continue
            out += self._judged(impl, offer, dtype, value, grads)
        return out

    def _judged(self, impl, call, dtype, value, grads):
        with np.errstate(all="ignore"):
            v = self._value(impl, dtype, value, self.exact.value)
            if self.exact.grads is None:
                g = ("undefined", None, None, self.exact.why)
            else:
                g = self._gradient(impl, dtype, grads, self.exact.grads, self.exact.bounds)
            v, g = self._conventions(impl, call, dtype, value, grads, v, g)
        cells = []
        for part, (verdict, error, bound, detail) in zip(PARTS, (v, g)):
            cell = Cell(impl.name, dtype, part, verdict, error, bound, detail)
            if cell.failing:
                cell.reproducer = self._reproducer(impl, call, dtype, f"{part} {verdict}")
            cells.append(cell)
        return cells

    def _conventions(self, impl, call, dtype, value, grads, v, g):
        """Failing parts that a documented convention of the framework predicts become ``convention``."""
        if not call.conventions or (v[0] not in FAILING and g[0] not in FAILING):
            return v, g
        for conv in call.conventions:
            try:
                with np.errstate(all="ignore"):
                    (p_value, p_grads), p_point = conv.predict(self.case)
            except (ValueError, TypeError):
                continue
            key = f"convention:{conv.name}"
            if v[0] in FAILING and self._value(impl, dtype, value, p_value, key, p_point)[0] == "ok":
                v = ("convention", v[1], v[2], f"{conv.name}: {conv.doc}")
            if g[0] in FAILING and self.exact.grads is not None:
                judged = self._gradient(impl, dtype, grads, {n: p_grads[n] for n in grads if n in p_grads}, self.exact.bounds, key, p_point)
                if judged[0] == "ok":
                    g = ("convention", g[1], g[2], f"{conv.name}: {conv.doc}")
        return v, g

    def _reproducer(self, impl, call, dtype, detail):
        """The adapter's runnable reproducer of this point in ``dtype``, headed by where it is."""
        p = self.point
        head = f"# refloss audit: {p.loss} ({p.variant}), {p.axis} = {p.level}\n"
        try:
            return head + impl.adapter.reproducer(call, self.case, dtype, detail)
        except Exception as e:  # noqa: BLE001 - a reproducer that cannot be rendered is not fatal
            return head + f"# reproducer unavailable: {type(e).__name__}: {e}\n"


def _shown(x, dtype) -> str:
    r = round_to(np.asarray(x, dtype=np.float64), dtype)
    if np.all(np.isfinite(r)):
        return "finite"
    return "partly infinite" if np.any(np.isfinite(r)) else "infinite"


def judge_point(point: Point, exact: Exact, impls: list) -> list:
    """Every implementation's cells at ``point`` (all ``undefined`` where the exact value is)."""
    if exact.value is None:
        return [Cell(i.name, d, part, "undefined", detail=exact.why) for i in impls for d in DTYPES for part in PARTS]
    judge = Judge(point, exact)
    out = []
    for impl in impls:
        out += judge.cells(impl)
    return out
