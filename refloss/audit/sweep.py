"""The points of the audit and their exact results.

A point is one level of one stress axis (:data:`refloss.domains.STRESS_AXES`) of one loss under one
parameter variant: the loss's typical base case (``refloss.cases.sample``, seeded by the loss and the
variant) moved to that level, every float input rounded to 8 significant bits. Rounding makes the
point exact in every dtype whose range holds it, so that one oracle evaluation judges all of them;
a dtype whose range does not hold an input sees the point as *not representable*.

The exact results are the mpmath oracle's (:mod:`refloss.mp`): the value by ``mp.evaluate``, the
gradient of ``sum(value)`` by ``mp.gradient`` (one-sided derivatives; where they differ, a kink, any
value between them is exact), both correctly rounded to float64. The gradient is not certified where
an input or the exact value is infinite (beyond float64's range included), and leaves out the entries
on the edge of their input's domain (a probability exactly 0, where only one side exists). A point
whose exact value is NaN (the textbook formula has no value there, ``inf - inf``) is *undefined* and
judged for nothing; so is a point with an infinite input where the oracle's value is not the limit
that input approaches (:func:`_limit_agrees`).
"""

from __future__ import annotations

import dataclasses
import time
import zlib

import numpy as np

from ..cases import sample
from ..domains import stress_axes, stress_kinds
from ..golden import encode_array, representable, round_to
from ..loss import Loss, get

#: The dtypes the audit judges, widest first.
DTYPES = ("float64", "float32", "float16", "bfloat16")
#: The precision every point is rounded to (8 significant bits; bfloat16's range is float32's).
POINT_DTYPE = "bfloat16"


@dataclasses.dataclass(frozen=True)
class VariantRule:
    """Parameter values besides the defaults that the audit sweeps: the ``grid`` values of every
    parameter called ``param`` that ``wants``, with the reason."""

    param: str
    wants: object
    why: str


#: The declared parameter variants (the defaults always run).
VARIANT_RULES = (
    VariantRule(
        "gamma",
        lambda v: isinstance(v, float) and 0.0 < v < 1.0,
        "a focusing exponent below 1: d/dp (1 - p)^gamma is infinite at p = 1, so gradients at saturated logits are NaN-prone",
    ),
)


def variants(loss: Loss) -> list:
    """``[(label, params)]``: the defaults, then each parameter value a :data:`VARIANT_RULES` rule wants."""
    base = loss.defaults()
    out = [("defaults", base)]
    for p in loss.params:
        for rule in VARIANT_RULES:
            if p.name != rule.param:
                continue
            for v in p.grid:
                if v != p.default and rule.wants(v):
                    out.append((f"{p.name}={v!r}", {**base, p.name: v}))
    return out


@dataclasses.dataclass
class Point:
    """One evaluation point: a loss, a parameter variant, an axis and a level, and its inputs."""

    loss: str
    variant: str
    params: dict
    axis: str
    level: str
    index: int  # the level's position on its axis (0 = mildest)
    inputs: list  # declaration order; floats rounded to POINT_DTYPE (held as float64), labels int64
    dtypes: tuple  # the DTYPES whose range holds every float input

    @property
    def key(self) -> str:
        return f"{self.loss}|{self.variant}|{self.axis}|{self.level}"

    @property
    def infinite_input(self) -> bool:
        return any(a.dtype.kind == "f" and not np.all(np.isfinite(a)) for a in self.inputs)

    def named(self, loss: Loss | None = None) -> dict:
        loss = loss or get(self.loss)
        return {s.name: a for s, a in zip(loss.inputs, self.inputs)}

    def to_json(self) -> dict:
        loss = get(self.loss)
        return {
            "loss": self.loss, "variant": self.variant, "axis": self.axis, "level": self.level, "index": self.index,
            "dtypes": list(self.dtypes),
            "params": {k: v for k, v in self.params.items() if not isinstance(v, np.ndarray)},
            "inputs": {s.name: encode_array(a) for s, a in zip(loss.inputs, self.inputs)},
        }


def spread(levels: tuple, k: int | None) -> list:
    """``[(index, level)]``: at most ``k`` of ``levels`` spread evenly, both ends kept (all when ``k`` is None)."""
    n = len(levels)
    if k is None or k >= n:
        return list(enumerate(levels))
    if k <= 1:
        return [(n - 1, levels[-1])]
    picks = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
    return [(i, levels[i]) for i in picks]


def _seed(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def points(loss: Loss, per_axis: int | None = None, axes=None) -> tuple[list, list]:
    """``(points, skipped)`` of ``loss``: every variant x axis (those named in ``axes``, default all)
    x level (``per_axis`` levels at most), and ``(key, why)`` of the levels left out (the axis cannot
    reach them, or refloss rejects the rounded input as outside the loss's domain)."""
    out, skipped = [], []
    for variant, params in variants(loss):
        case = sample(loss, params, "typical", np.random.default_rng(_seed("audit", loss.name, variant)))
        params = case.params
        base = {s.name: a for s, a in zip(loss.inputs, case.inputs)}
        kinds = stress_kinds(loss, params)
        for axis in stress_axes(loss, params):
            if axes is not None and axis.name not in axes:
                continue
            for index, (label, value) in spread(axis.levels, per_axis):
                key = f"{loss.name}|{variant}|{axis.name}|{label}"
                with np.errstate(all="ignore"):
                    moved = axis.apply(base, kinds, params, value)
                if moved is None:
                    skipped.append((key, "the axis does not reach this level for this case"))
                    continue
                inputs = []
                for spec in loss.inputs:
                    a = np.asarray(moved[spec.name])
                    inputs.append(round_to(a, POINT_DTYPE) if a.dtype.kind == "f" else a.astype(np.int64))
                try:
                    with np.errstate(all="ignore"):
                        loss.value_and_grad(*inputs, **params)
                except (ValueError, TypeError) as e:
                    skipped.append((key, f"outside the loss's domain after rounding: {e}"))
                    continue
                floats = [a for a in inputs if a.dtype.kind == "f"]
                dtypes = tuple(d for d in DTYPES if all(representable(a, d) for a in floats))
                out.append(Point(loss.name, variant, params, axis.name, label, index, inputs, dtypes))
    return out, skipped


# --------------------------------------------------------------------------------------------------
# Exact results.


@dataclasses.dataclass
class Exact:
    """The oracle's results at a point, correctly rounded to float64.

    ``value`` is ``None`` when the point is undefined (``why`` says so); ``grads`` (input name ->
    midpoint of the one-sided derivatives) is ``None`` where the gradient is not certified, and
    ``bounds`` holds ``{input: {flat index: (left, right)}}`` at kinks, ``uncertified`` ``{input: [flat
    index]}`` of entries on the edge of the input's domain, which no comparison includes.
    """

    value: np.ndarray | None
    grads: dict | None
    bounds: dict
    why: str = ""
    seconds: float = 0.0
    uncertified: dict = dataclasses.field(default_factory=dict)


def exact(point: Point) -> Exact:
    """The exact value and gradient at ``point`` (see the module docstring). Never raises: an oracle
    failure makes the point undefined, with the reason."""
    from .. import mp
    from ..golden import _to_float  # correct rounding of an mpmath number to float64

    start = time.perf_counter()
    loss = get(point.loss)

    def done(value, grads, bounds, why="", uncertified=None):
        return Exact(value, grads, bounds, why, time.perf_counter() - start, uncertified or {})

    to64 = np.vectorize(_to_float, otypes=[np.float64])
    try:
        value, dps = mp.evaluate(loss.name, point.inputs, point.params)
        flat = np.asarray(value, dtype=object).ravel()
        if any(mp.mpmath.isnan(v) for v in flat):
            return done(None, None, {}, "undefined: the exact value is NaN (the formula has no value here)")
        value64 = to64(value) if value.size else np.zeros(value.shape)
        if point.infinite_input and not _limit_agrees(loss, point, value64, to64):
            return done(None, None, {}, "undefined: at this infinite input the oracle's value is not the limit (inf - inf)")
        if point.infinite_input or not np.all(np.isfinite(value64)):
            # As in the golden files: the gradient of an infinite value is undefined; a value beyond
            # float64's range counts as infinite (its gradient is measured against entries that
            # overflow too, and the rest cancels out of the oracle's differences).
            return done(value64, None, {}, "gradient not certified: an input or the exact value (in float64) is infinite")
        which = [k for k, s in enumerate(loss.inputs) if s.differentiable]
        sided = mp.gradient(loss.name, point.inputs, point.params, np.ones(value.shape), which,
                            stop_gradient=loss.stop_gradient is not None)
    except Exception as e:  # noqa: BLE001 - an oracle that cannot evaluate here leaves the point undefined
        return done(None, None, {}, f"undefined: the oracle failed ({type(e).__name__}: {str(e)[:160]})")
    grads, bounds, uncertified = {}, {}, {}
    for k, g in zip(which, sided):
        name = loss.inputs[k].name
        mid = np.frompyfunc(lambda a, b: (a + b) / 2, 2, 1)(g.left, g.right)
        grads[name] = to64(mid) if g.left.size else np.zeros(g.left.shape)
        # An entry whose one-sided derivatives are not both finite or the same infinity sits on the
        # edge of the input's domain (a probability exactly 0: the left difference leaves it): the
        # derivative there is one-sided and the oracle's midpoint means nothing.
        left, right = g.left.ravel(), g.right.ravel()
        odd = [i for i in range(left.size)
               if not (mp.mpmath.isfinite(left[i]) and mp.mpmath.isfinite(right[i])) and not (left[i] == right[i])]
        if odd:
            uncertified[name] = odd
        kinks = [int(i) for i in np.flatnonzero(g.kinks) if int(i) not in odd]
        if kinks:
            bounds[name] = {i: (_to_float(left[i]), _to_float(right[i])) for i in kinks}
    return done(value64, grads, bounds, uncertified=uncertified)


#: Two stand-ins for an infinite input, past where exp overflows and underflows float64 (745).
_FAR = (2.0**10, 2.0**11)


def _limit_agrees(loss, point, value64, to64) -> bool:
    """Whether the oracle's value at an infinite input is the limit that input approaches.

    The oracle is evaluated again with each infinity replaced by ``+-2^10``, by ``+-2^11`` and by
    unequal stand-ins (``+-2^10`` and ``+-1.5 2^10`` alternating over the flat index: infinities
    approached at different rates): an element equal in all three (rounded to float64) has that limit;
    one growing in magnitude with a fixed sign has the infinity of that sign; anything else has no
    limit the stand-ins can tell. A textbook formula meets ``inf - inf`` where the limit has no value
    (a hinge of two infinite scores depends on their rates) and its max or comparison then settles it
    arbitrarily: the unequal stand-ins show it.
    """
    from .. import mp

    def rates(a, far):  # 1 everywhere, or 1 and 1.5 alternating over the flat index
        return far if np.ndim(far) == 0 else np.reshape(np.resize(far, a.size), a.shape)

    near = []
    for far in (*_FAR, np.array([1.0, 1.5]) * _FAR[0]):
        inputs = [np.where(np.isinf(a), np.sign(a) * rates(a, far), a) if a.dtype.kind == "f" else a for a in point.inputs]
        try:
            v, _ = mp.evaluate(loss.name, inputs, point.params)
        except Exception:  # noqa: BLE001 - no value near the infinite point: no limit to trust
            return False
        near.append(np.ravel(to64(v)) if v.size else np.zeros(0))
    a, b, c = near
    with np.errstate(invalid="ignore"):
        growing = (np.sign(a) == np.sign(b)) & (np.sign(a) == np.sign(c)) & (np.abs(b) > np.abs(a))
        limit = np.where((a == b) & (a == c), a, np.where(growing, np.sign(b) * np.inf, np.nan))
    return bool(np.array_equal(limit, np.ravel(value64)))


def evaluate_all(pts: list, jobs: int = 1, progress=None):
    """``exact(p)`` for every point, in order, over ``jobs`` worker processes."""
    progress = progress or (lambda it, total, label: it)
    if jobs <= 1 or len(pts) < 2:
        yield from progress((exact(p) for p in pts), len(pts), "oracle")
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs) as pool:
        yield from progress(pool.map(exact, pts, chunksize=1), len(pts), "oracle")


__all__ = ["DTYPES", "POINT_DTYPE", "VARIANT_RULES", "VariantRule", "Point", "Exact", "variants", "points", "exact",
           "evaluate_all", "spread"]
