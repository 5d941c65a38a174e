"""``refloss audit``: where each implementation of each loss loses accuracy or blows up, with pictures.

For every loss the audit sweeps the *stress axes* its input domains declare
(:data:`refloss.domains.STRESS_AXES`: logit scale 1e-8..1e8 and inf, target and wrong margins,
probabilities toward 0 and 1, sharpened distributions, regression values up to 1e8, variances and
rates toward 0, log-rates past exp's overflow, embedding scales and pair distances toward 0, the
target cosine toward +1 and -1 and theta + m toward pi for the margin family, distances to RBF/L-GM
centres, box offsets from identical to far and box sizes toward 0, masks toward empty), at the
loss's defaults and at the parameter values a declared rule asks for
(:data:`refloss.audit.sweep.VARIANT_RULES`: focal ``gamma < 1``).

Each point is evaluated once by the mpmath oracle (value and one-sided gradients), its inputs
rounded to 8 significant bits so that they are exact in every dtype whose range holds them
(:mod:`refloss.audit.sweep`). Then refloss on every backend (float64, float32, float16) and each
installed framework (through the conformance adapters, in float64, float32, float16 and bfloat16)
compute the value and the gradient, and each gets a verdict per dtype: ``ok``, ``convention``,
``inaccurate``, ``sign``, ``inf``, ``nan``, ``exception``, or not judged (``not representable``,
``not offered``, ``undefined``) (:mod:`refloss.audit.judge`). refloss in float64 must be clean: within its
4-ULP certification bound (4.5 against the rounded exact results) and never NaN/Inf where the exact
result is finite, on every axis.

The report (:mod:`refloss.audit.report`): ``index.html`` (losses x implementations, linking one
heatmap PNG per pair: stress levels x dtype, colour = log10 error in ULP, marks for NaN, Inf,
exceptions and sign errors; the first failing level on each axis; the findings), ``report.md`` and
``report.json``. Figures need matplotlib (``pip install 'refloss[plot]'``); without it the tables
are written and the figures skipped.

Usage::

    refloss audit --losses soft_margin_loss mse_loss --frameworks torch --out audit
    python -m refloss.audit --frameworks torch jax tensorflow --points 6
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from .judge import CERTIFIED_ULP, FAILING, NOT_JUDGED, PARTS, SEVERITY, VERDICTS, Cell, judge_point
from .sweep import DTYPES, VARIANT_RULES, Exact, Point, evaluate_all, points

__all__ = ["Audit", "Result", "run", "main", "DTYPES", "VERDICTS", "FAILING", "NOT_JUDGED", "PARTS", "VARIANT_RULES",
           "CERTIFIED_ULP"]


@dataclasses.dataclass
class Result:
    """One point, its exact results and every implementation's cells there."""

    point: Point
    exact: Exact
    cells: list

    def cell(self, implementation: str, dtype: str, part: str) -> Cell | None:
        return next((c for c in self.cells if (c.implementation, c.dtype, c.part) == (implementation, dtype, part)), None)


@dataclasses.dataclass
class Audit:
    """Everything a run found, and what the report needs to say about it."""

    results: list
    implementations: dict  # name -> versions
    unavailable: dict  # target or adapter -> why it could not run
    skipped: list  # (point key, why) of levels not evaluated
    seconds: float
    seconds_per_loss: dict
    options: dict

    @property
    def losses(self) -> list:
        return list(dict.fromkeys(r.point.loss for r in self.results))

    def refloss_names(self) -> list:
        return [n for n in self.implementations if n.startswith("refloss")]

    def violations(self) -> list:
        """``(result, cell)`` of refloss in float64 outside its certification bound, or NaN/Inf where
        the exact result is finite: refloss must have none. At an infinite input the certification
        does not apply (IEEE propagation of ``inf - inf`` is not hidden, DESIGN.md "Bad input"), so
        there only a NaN or an infinity where the exact value is finite counts."""
        names = set(self.refloss_names())
        out = []
        for r in self.results:
            finite_exact = r.exact.value is not None and bool(np.all(np.isfinite(r.exact.value)))
            for c in r.cells:
                if c.implementation not in names or c.dtype != "float64" or not c.failing:
                    continue
                if r.point.infinite_input and not (finite_exact and c.verdict in ("nan", "inf")):
                    continue
                out.append((r, c))
        return out

    @property
    def clean(self) -> bool:
        return not self.violations()

    def first_failures(self) -> list:
        """Per loss, implementation, variant and axis: the first (mildest) failing level in each
        dtype, with the verdicts there (``None`` where no level fails)."""
        rows: dict = {}
        for r in self.results:
            p = r.point
            for c in r.cells:
                key = (p.loss, c.implementation, p.variant, p.axis)
                row = rows.setdefault(key, {d: None for d in DTYPES})
                if not c.failing:
                    continue
                here = row[c.dtype]
                if here is None or p.index < here["index"]:
                    row[c.dtype] = {"index": p.index, "level": p.level, "what": {c.part: c.verdict}}
                elif p.index == here["index"]:
                    here["what"][c.part] = c.verdict
        return [{"loss": k[0], "implementation": k[1], "variant": k[2], "axis": k[3], "first": v} for k, v in rows.items()]

    def findings(self) -> list:
        """One per implementation, loss, variant, axis, dtype, part and failing verdict: the first
        level where it happens, with the error, the detail and (frameworks) a reproducer."""
        found: dict = {}
        for r in self.results:
            p = r.point
            for c in r.cells:
                if not c.failing:
                    continue
                key = (c.implementation, p.loss, p.variant, p.axis, c.dtype, c.part, c.verdict)
                if key not in found or p.index < found[key][0].index:
                    found[key] = (p, c)
        out = []
        for (impl, loss, variant, axis, dtype, part, verdict), (p, c) in found.items():
            out.append({
                "implementation": impl, "loss": loss, "variant": variant, "axis": axis, "dtype": dtype, "part": part,
                "verdict": verdict, "level": p.level, "index": p.index, "error_ulp": c.error, "bound_ulp": c.bound,
                "detail": c.detail, "reproducer": c.reproducer,
            })
        order = {n: k for k, n in enumerate(self.implementations)}
        out.sort(key=lambda f: (order.get(f["implementation"], 99), f["loss"], f["variant"], -SEVERITY[f["verdict"]], f["part"], f["axis"], DTYPES.index(f["dtype"])))
        return out


def _identity(iterable, total, label):
    return iterable


def run(losses=None, frameworks=(), per_axis: int | None = None, jobs: int = 1, progress=_identity, axes=None) -> Audit:
    """Audit ``losses`` (names; default every loss with an oracle) on refloss's backends and the
    framework targets ``frameworks`` (``torch``, ``pml``, ``jax``, ``tensorflow``), ``per_axis``
    levels per axis at most (default all), on the stress axes named in ``axes`` (default all), the
    oracle in ``jobs`` processes."""
    from .. import mp
    from ..conformance.runner import TARGETS
    from ..loss import catalog, get
    from .judge import implementations

    start = time.perf_counter()
    unknown = [f for f in frameworks if f not in TARGETS or f == "numpy"]
    if unknown:  # checked before the oracle runs: the frameworks themselves load after it
        raise KeyError(f"unknown framework {', '.join(map(repr, unknown))}; choose from {', '.join(t for t in TARGETS if t != 'numpy')}")
    from ..domains import STRESS_AXES

    if axes is not None and set(axes) - {a.name for a in STRESS_AXES}:
        known = ", ".join(dict.fromkeys(a.name for a in STRESS_AXES))
        raise KeyError(f"unknown stress axis {', '.join(map(repr, sorted(set(axes) - {a.name for a in STRESS_AXES})))}; one of {known}")
    oracles = mp.load()
    chosen = [get(n) for n in losses] if losses else [l for l in catalog() if l.name in oracles]
    missing = [l.name for l in chosen if l.name not in oracles]
    if missing:
        raise KeyError(f"no oracle for {', '.join(missing)}")
    pts, skipped = [], []
    for loss in progress(chosen, len(chosen), "points"):
        found, left = points(loss, per_axis, axes)
        pts += found
        skipped += left
    seconds = {l.name: 0.0 for l in chosen}
    exacts = []
    for p, e in zip(pts, evaluate_all(pts, jobs, progress)):
        exacts.append(e)
        seconds[p.loss] += e.seconds
    # Frameworks are imported only now: the oracle's worker processes are forked without them.
    impls, unavailable = implementations(frameworks)
    results = []
    for p, e in progress(list(zip(pts, exacts)), len(pts), "implementations"):
        t = time.perf_counter()
        results.append(Result(p, e, judge_point(p, e, impls)))
        seconds[p.loss] += time.perf_counter() - t
    options = {"losses": [l.name for l in chosen], "frameworks": list(frameworks), "points": per_axis, "jobs": jobs,
               "axes": None if axes is None else list(axes)}
    return Audit(results, {i.name: i.version for i in impls}, unavailable, skipped, time.perf_counter() - start, seconds, options)


def _expand(names) -> list:
    """Loss names, a family name standing for its losses."""
    from ..loss import catalog

    by_family: dict = {}
    for l in catalog():
        by_family.setdefault(l.family, []).append(l.name)
    out = []
    for n in names:
        out += by_family.get(n, [n])
    return list(dict.fromkeys(out))


def main(argv=None) -> int:
    """``refloss audit``: run the audit and write the report; exit status 1 when refloss itself is
    not clean in float64, 2 on a usage error."""
    from ..conformance.runner import TARGETS
    from .report import write

    frameworks = [t for t in TARGETS if t != "numpy"]
    parser = argparse.ArgumentParser(prog="refloss audit", description="Numerical-stability audit: sweep each loss over its stress axes and judge every implementation against the mpmath oracle.")
    parser.add_argument("--losses", nargs="+", metavar="LOSS", help="losses or families to audit (default: every loss with an oracle)")
    parser.add_argument("--frameworks", nargs="*", metavar="TARGET", default=None,
                        help=f"framework targets besides refloss ({', '.join(frameworks)}; default: all of them that import here; none: refloss only)")
    parser.add_argument("--points", type=int, default=None, metavar="N", help="at most N levels per stress axis, spread evenly, both ends kept (default: every level)")
    parser.add_argument("--axes", nargs="+", metavar="AXIS", help="only these stress axes, by name (default: all; see docs/audit.md)")
    parser.add_argument("--out", default="audit", help="report directory (default: audit)")
    parser.add_argument("--jobs", type=int, default=1, help="processes evaluating the oracle (default: 1)")
    parser.add_argument("--no-figures", action="store_true", help="write the tables only")
    args = parser.parse_args(argv)
    if args.points is not None and args.points < 1:
        parser.error("--points must be at least 1")
    chosen = frameworks if args.frameworks is None else [f for f in args.frameworks if f != "none"]
    from ..cli import _progress as progress  # tqdm when installed, else a counter on stderr

    try:
        audit = run(_expand(args.losses) if args.losses else None, chosen, args.points, args.jobs, progress, args.axes)
    except (KeyError, ImportError) as e:
        print(f"refloss audit: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    written = write(audit, Path(args.out), figures=not args.no_figures)
    for line in written["messages"]:
        print(line)
    print(f"refloss audit: {len(audit.results)} points, {len(audit.losses)} losses, implementations: {', '.join(audit.implementations)}"
          f" in {audit.seconds:.1f} s ({audit.seconds / max(1, len(audit.losses)):.1f} s per loss)")
    for name, why in audit.unavailable.items():
        print(f"  {name}: not available ({why})")
    found = audit.findings()
    print(f"  {len(found)} findings; refloss float64: " + ("clean" if audit.clean else f"{len(audit.violations())} violation(s), see the report"))
    print(f"  report: {Path(args.out) / 'index.html'}")
    return 0 if audit.clean else 1
