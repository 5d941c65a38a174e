"""The runner: every golden case, in every dtype it is exact in, through one adapter; one verdict each.

Verdicts:

- ``pass``: value and gradients within the tolerance policy (:mod:`refloss.conformance.policy`) of
  the certified exact results;
- ``convention``: not, but within the policy of what a documented convention of the framework
  predicts (the adapter's :class:`~refloss.conformance.adapter.Convention`, evaluated by refloss);
- ``defect``: neither: a value or gradient off, NaN/Inf where the reference is finite, or an
  exception. It carries the worst error in ULP and a reproducer;
- ``not offered``: the framework has no counterpart for the loss, the parameters or the dtype.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import time
import traceback
from collections import Counter
from typing import Callable

from . import policy
from .adapter import Adapter, Call, NotOffered, Unsupported
from .case import Case, load, spread

VERDICTS = ("pass", "convention", "defect", "not offered")

#: target name -> module holding its adapter (``ADAPTER``, or ``adapters()`` for several)
TARGETS = {
    "torch": "refloss.conformance.torch",
    "pml": "refloss.conformance.pml",
    "jax": "refloss.conformance.jax",
    "tensorflow": "refloss.conformance.tensorflow",
    "numpy": "refloss.conformance.numpy",
}


def adapters(target: str) -> list[Adapter]:
    """The adapters of a target name (``numpy`` gives one per refloss backend)."""
    if target not in TARGETS:
        raise KeyError(f"unknown target {target!r}; one of {', '.join(TARGETS)}")
    module = importlib.import_module(TARGETS[target])
    return list(module.adapters()) if hasattr(module, "adapters") else [module.ADAPTER]


@dataclasses.dataclass
class Outcome:
    """The verdict of one case in one dtype on one target."""

    target: str
    loss: str
    family: str
    case: str
    tag: str
    dtype: str
    verdict: str
    detail: str = ""
    api: str = ""
    value_ulp: float | None = None
    grad_ulp: float | None = None
    worst_ulp: float | None = None
    bound_ulp: float | None = None
    convention: str = ""
    reproducer: str = ""

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        for k in ("value_ulp", "grad_ulp", "worst_ulp", "bound_ulp"):
            v = out[k]
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = "inf" if v > 0 else "nan"
        return out


@dataclasses.dataclass
class Run:
    """All outcomes of one invocation, with what the report needs to say about it."""

    targets: dict  # target -> framework versions
    golden: str
    outcomes: list
    missing: list  # losses without golden cases
    problems: list  # (golden file:line, message)
    unavailable: dict  # target -> why it could not run
    per_loss: int | None
    seconds: float = 0.0

    def counts(self) -> dict:
        """``{(target, dtype): Counter(verdict)}``."""
        out: dict = {}
        for o in self.outcomes:
            out.setdefault((o.target, o.dtype), Counter())[o.verdict] += 1
        return out

    def defects(self) -> list:
        return [o for o in self.outcomes if o.verdict == "defect"]


def _defect(adapter: Adapter, call: Call, case: Case, dtype: str, base: Outcome, detail: str, j=None) -> Outcome:
    base.verdict = "defect"
    base.detail = detail
    if j is not None:
        base.value_ulp, base.grad_ulp, base.worst_ulp, base.bound_ulp = j.value_ulp, j.grad_ulp, j.worst_ulp, j.worst_bound
    try:
        base.reproducer = adapter.reproducer(call, case, dtype, detail)
    except Exception as e:  # noqa: BLE001 - a reproducer that cannot be rendered is reported, not fatal
        base.reproducer = f"# reproducer unavailable: {type(e).__name__}: {e}\n"
    return base


def evaluate(adapter: Adapter, case: Case, dtype: str, offer=None) -> Outcome:
    """The verdict of ``case`` in ``dtype`` on ``adapter`` (``offer``: its :meth:`Adapter.offer`, if known)."""
    out = Outcome(adapter.name, case.name, case.loss.family, case.id, case.tag, dtype, "not offered")
    offer = adapter.offer(case) if offer is None else offer
    if isinstance(offer, NotOffered):
        out.detail = offer.reason
        return out
    call: Call = offer
    out.api = call.api
    if dtype not in adapter.dtypes:
        out.detail = f"{adapter.name} has no {dtype}"
        return out
    try:
        value, grads = adapter.execute(call, case, dtype)
    except Unsupported as e:
        out.detail = f"no {dtype} kernel: {e}"[:300]
        return out
    except Exception as e:  # noqa: BLE001 - an exception on valid input is a defect
        last = traceback.extract_tb(e.__traceback__)[-1]
        return _defect(adapter, call, case, dtype, out, f"exception: {type(e).__name__}: {str(e)[:240]} ({last.name})")
    compared = [n for n in call.grads if case.exact_grads.get(n) is not None]
    grads = {n: grads[n] for n in compared}
    exact = {n: case.exact_grads[n] for n in compared}
    j = policy.judge(value, grads, case.exact_value, exact, case.bounds, dtype, case.point())
    out.value_ulp, out.grad_ulp, out.worst_ulp, out.bound_ulp = j.value_ulp, j.grad_ulp, j.worst_ulp, j.worst_bound
    if j.ok:
        out.verdict = "pass"
        return out
    missed = []
    for conv in call.conventions:
        try:
            (p_value, p_grads), point = conv.predict(case)
        except (ValueError, TypeError) as e:
            missed.append(f"{conv.name} does not apply ({type(e).__name__})")
            continue
        pj = policy.judge(value, grads, p_value, {n: p_grads[n] for n in compared}, case.bounds, dtype, point)
        if pj.ok:
            out.verdict, out.convention = "convention", conv.name
            out.detail = f"{conv.name}: {conv.doc}"
            out.value_ulp, out.grad_ulp, out.worst_ulp, out.bound_ulp = pj.value_ulp, pj.grad_ulp, pj.worst_ulp, pj.worst_bound
            return out
        missed.append(f"against {conv.name}'s prediction: {pj.describe()}")
    detail = j.describe() + "".join(f"; {m}" for m in missed)
    return _defect(adapter, call, case, dtype, out, detail, j)


def _identity(iterable, total, label):
    return iterable


def run(targets, golden_dir="golden", losses=None, dtypes=None, per_loss: int | None = None,
        progress: Callable = _identity) -> Run:
    """Run ``targets`` (names or adapters) over the golden cases of ``losses`` (default: all) in
    ``dtypes`` (default: all), ``per_loss`` cases a loss spread over its file (default: all)."""
    start = time.perf_counter()
    golden = load(golden_dir, losses)
    wanted = tuple(d for d in policy.DTYPES if dtypes is None or d in dtypes)
    chosen, versions, unavailable = [], {}, {}
    for t in targets:
        for a in adapters(t) if isinstance(t, str) else [t]:
            try:
                a.load()
            except ImportError as e:
                unavailable[a.name] = f"{type(e).__name__}: {e}"
                continue
            chosen.append(a)
            versions[a.name] = a.version()
    tasks = []
    for name, cases in golden.cases.items():
        for case in spread(cases, per_loss):
            tasks.extend((case, d) for d in case.dtypes() if d in wanted)
    outcomes = []
    for adapter in chosen:
        offers: dict = {}
        for case, dtype in progress(tasks, len(tasks), adapter.name):
            key = (case.name, case.id)
            if key not in offers:
                offers[key] = adapter.offer(case)
            outcomes.append(evaluate(adapter, case, dtype, offers[key]))
    return Run(versions, str(golden_dir), outcomes, golden.missing, golden.problems, unavailable, per_loss,
               time.perf_counter() - start)
