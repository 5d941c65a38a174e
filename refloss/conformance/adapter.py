"""What every framework adapter shares: the mapping of a case onto the framework's own code, its
execution under the framework's autodiff, and the reproducer.

A mapping (one per refloss loss an adapter offers) looks at a :class:`~refloss.conformance.case.Case`
and returns either :class:`NotOffered` (the framework has no such loss, parameter or setting) or a
:class:`Call`: a few lines of the framework's own code computing ``out`` from the inputs by name,
the inputs the framework differentiates, and the :class:`Convention` s that may explain a difference.
The same lines are executed (compiled once per distinct text) and printed in the reproducer, so a
reproducer is exactly what was run. Framework imports happen only inside adapters.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable

import numpy as np

from .case import Case, evaluate
from .policy import DTYPES


@dataclasses.dataclass(frozen=True)
class NotOffered:
    """The framework has no counterpart for this case (reported, never a failure)."""

    reason: str


class Unsupported(Exception):
    """The framework has no kernel for the dtype (reported as not offered)."""


@dataclasses.dataclass(frozen=True)
class Convention:
    """A documented behaviour of the framework that differs from the case's definition.

    ``transform(case)`` gives ``(loss name, inputs, params)``: the refloss evaluation that predicts
    what the framework computes under that convention. A result that misses the case's exact values
    but meets this prediction (same tolerance policy) gets the verdict ``convention``.
    """

    name: str
    doc: str
    transform: Callable
    setting: tuple = ()  # ((parameter, value), ...) where the convention is a fixed parameter setting

    @classmethod
    def fixed(cls, name: str, doc: str, **setting) -> "Convention":
        """The framework computes the same loss with ``setting`` fixed (an eps, a clamp, a placement):
        predicted by re-evaluating the case with those parameters (:func:`override`)."""
        return cls(name, doc, override(**setting), tuple(setting.items()))

    def unless_defined(self, case: Case) -> tuple:
        """The conventions to try for ``case``: none where the case is already defined with the
        framework's setting (its exact values are the framework's), else this one."""
        return () if self.setting and all(case.params[k] == v for k, v in self.setting) else (self,)

    def predict(self, case: Case):
        from ..loss import get

        name, inputs, params = self.transform(case)
        loss = get(name)
        with np.errstate(all="ignore"):
            value, grads = evaluate(loss, inputs, params, case.cot)
        return (value, grads), case.point(loss, inputs, params)


def override(**changes) -> Callable:
    """A convention transform that re-evaluates the same loss with some parameters changed."""

    def transform(case: Case):
        return case.name, case.inputs, {**case.params, **changes}

    return transform


def reduction_glue(total: str, mean: str, mean_over_elements: str | None = None) -> dict:
    """refloss's reductions applied in framework code to an unreduced ``out``, ``{reduction: code line}``.

    The rule is written here once (``batchmean`` is the sum divided by the batch size, the leading
    dimension; ``sum_over_batch_size`` the mean over every element); an adapter gives its framework's
    spelling of the sum and the mean of ``out`` (``mean_over_elements``, when it spells the latter
    otherwise). The line is part of the reproducer.
    """
    return {
        "none": "",
        "sum": f"out = {total}",
        "mean": f"out = {mean}",
        "batchmean": f"out = {total} / out.shape[0]",
        "sum_over_batch_size": f"out = {mean_over_elements or mean}",
    }


@dataclasses.dataclass
class Call:
    """The framework code for one case: ``code`` computes ``out`` from ``reads`` (inputs, array
    parameters and ``arrays`` by name); ``grads`` are the inputs differentiated; ``api`` names the
    framework function for the report."""

    api: str
    code: str
    reads: tuple
    grads: tuple
    conventions: tuple = ()
    arrays: dict = dataclasses.field(default_factory=dict)

    def source(self) -> str:
        body = "\n".join("    " + line for line in self.code.strip("\n").splitlines())
        return f"def f({', '.join(self.reads)}):\n{body}\n    return out\n"


def by_name(*mappings: Callable, **named: Callable) -> dict:
    """An adapter's ``mappings``: each function under its own name (a mapping is named after the
    refloss loss it maps), and ``named`` ones (made by a factory) under theirs."""
    return {**{m.__name__: m for m in mappings}, **named}


def literal(x) -> str:
    """A Python literal of ``x`` that reads back exactly (floats by ``repr``; needs ``inf``, ``nan``)."""
    if isinstance(x, np.ndarray):
        return repr(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return repr(x)


def _short(x: np.ndarray, limit: int = 64) -> str:
    flat = np.asarray(x, dtype=np.float64).ravel()
    text = ", ".join(literal(float(v)) for v in flat[:limit])
    more = f", ... ({flat.size} values)" if flat.size > limit else ""
    return f"[{text}{more}] shape {tuple(np.shape(x))}"


class Adapter:
    """Base of the framework adapters. A subclass sets ``name``, ``packages`` (distributions named in
    the report), ``dtypes`` (where the framework lacks one of the target dtypes), ``header``
    (import lines, executed and printed) and ``mappings``, and
    implements the framework hooks: :meth:`load`, :meth:`tensor`, :meth:`cast`, :meth:`autodiff`,
    :meth:`numpy`, :meth:`render_autodiff`, :meth:`unsupported`, and sets the templates
    :attr:`tensor_code` and :attr:`cast_code`."""

    name = "?"
    packages: tuple = ()
    dtypes: tuple = DTYPES
    header = ""
    mappings: dict = {}
    #: Code templates of :meth:`tensor` (``{values}`` a literal, ``{dtype}`` float64 or int64) and of
    #: :meth:`cast` (``{expr}`` to ``{dtype}``), for the reproducer.
    tensor_code = ""
    cast_code = ""

    def __init__(self):
        self._functions: dict = {}
        self._namespace: dict | None = None

    # -- framework hooks ---------------------------------------------------------------------------
    def load(self):
        """Import the framework (raises ImportError when it is not installed)."""
        raise NotImplementedError

    def tensor(self, x: np.ndarray):
        """The framework array holding ``x`` as it is (float64 or int64)."""
        raise NotImplementedError

    def cast(self, x, dtype: str):
        """The framework array ``x`` cast to the framework's ``dtype`` (named as in :attr:`dtypes`)."""
        raise NotImplementedError

    def autodiff(self, f, args: list, wrt: list, cot):
        """``(out, [gradient of sum(cot * out) w.r.t. args[i] for i in wrt])`` (``cot`` None: 1)."""
        raise NotImplementedError

    def numpy(self, x) -> np.ndarray:
        raise NotImplementedError

    def render_autodiff(self, reads: tuple, wrt: tuple, cot: bool) -> str:
        raise NotImplementedError

    def unsupported(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the framework has no kernel for the dtype."""
        return False

    # -- shared ------------------------------------------------------------------------------------
    def array(self, x: np.ndarray, dtype: str | None):
        """The framework array of ``x``: floats cast to ``dtype`` (exact), integers as int64."""
        if x.dtype.kind in "iub":
            return self.tensor(np.asarray(x, dtype=np.int64))
        return self.cast(self.tensor(np.asarray(x, dtype=np.float64)), dtype)

    def render_array(self, name: str, x: np.ndarray, dtype: str | None, grad: bool) -> str:
        """The line making ``name`` as :meth:`array` makes it, by the templates :attr:`tensor_code`
        and :attr:`cast_code` (``grad``: the framework differentiates it)."""
        if dtype is None:
            return f"{name} = " + self.tensor_code.format(values=literal(x), dtype="int64")
        return f"{name} = " + self.cast_code.format(expr=self.tensor_code.format(values=literal(x), dtype="float64"), dtype=dtype)

    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        out = []
        for p in self.packages:
            try:
                out.append(f"{p} {version(p)}")
            except PackageNotFoundError:
                out.append(f"{p} (not installed)")
        return ", ".join(out)

    def offer(self, case: Case):
        mapping = self.mappings.get(case.name)
        if mapping is None:
            return NotOffered(f"no counterpart in {self.name}")
        return mapping(case)

    def _function(self, call: Call):
        if self._namespace is None:
            self.load()
            self._namespace = {"inf": math.inf, "nan": math.nan}
            exec(compile(self.header, f"<{self.name} header>", "exec"), self._namespace)
        src = call.source()
        f = self._functions.get(src)
        if f is None:
            scope = dict(self._namespace)
            exec(compile(src, f"<{self.name} {call.api}>", "exec"), scope)
            f = self._functions[src] = scope["f"]
        return f

    def data(self, call: Call, case: Case) -> dict:
        """The arrays ``call`` reads, by name (float64 or int64 NumPy)."""
        out = {}
        for name in call.reads:
            if name in call.arrays:
                out[name] = call.arrays[name]
            elif name in case.inputs:
                out[name] = case.inputs[name]
            else:
                out[name] = case.params[name]
        return out

    def execute(self, call: Call, case: Case, dtype: str):
        """Run ``call`` on ``case`` cast to ``dtype``: ``(value, {input: gradient})`` as float64 NumPy."""
        f = self._function(call)
        data = self.data(call, case)
        args = [self.array(a, dtype if a.dtype.kind == "f" else None) for a in data.values()]
        wrt = [k for k, n in enumerate(call.reads) if n in call.grads]
        cot = None if case.cot is None else self.array(case.cot, dtype)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            try:
                out, grads = self.autodiff(f, args, wrt, cot)
            except Exception as e:  # noqa: BLE001 - classified: a missing kernel is not a defect
                if self.unsupported(e):
                    raise Unsupported(f"{type(e).__name__}: {e}") from e
                raise
            value = self.numpy(out)
            named = {call.reads[k]: self.numpy(g) for k, g in zip(wrt, grads)}
        return value, named

    def reproducer(self, call: Call, case: Case, dtype: str, detail: str = "") -> str:
        """Runnable framework code for ``case`` in ``dtype``, inputs inlined, with the exact results."""
        data = self.data(call, case)
        lines = [
            f"# refloss conformance: {self.name}, {case.name}, case {case.id}, {dtype}" + (f": {detail}" if detail else ""),
            self.header.strip(),
            'inf, nan = float("inf"), float("nan")',
            "",
            call.source(),
        ]
        for name, a in data.items():
            lines.append(self.render_array(name, a, dtype if a.dtype.kind == "f" else None, name in call.grads))
        if case.cot is not None and "cotangent" not in data:
            lines.append(self.render_array("cotangent", case.cot, dtype, False))
        lines.append(self.render_autodiff(call.reads, tuple(n for n in call.reads if n in call.grads), case.cot is not None))
        lines.append(f"# exact value (refloss golden, float64): {_short(case.exact_value)}")
        for n in call.grads:
            if case.exact_grads.get(n) is not None:
                lines.append(f"# exact gradient of {n}: {_short(case.exact_grads[n])}")
        return "\n".join(lines) + "\n"
