"""The certification check shared by the family oracle tests (tests/test_mp_<family>.py): refloss
against refloss.mp on typical cases of every parameter path, within 4 ULP (value, and each gradient
normwise). One body; each family file passes its losses, case count and known excesses, and the golden
cases (by id) that only the golden pipeline's oracle certifies."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import refloss
import refloss.mp as rmp
from refloss import golden
from refloss.cases import param_paths, sample

BOUND = 4.0


def param_id(params) -> str:
    return ", ".join(f"{k}={'array' if hasattr(v, 'shape') else v}" for k, v in sorted(params.items()))


def paths(losses, reductions=None):
    """``pytest.param(loss, params)`` for every parameter path of every loss (ids name both)."""
    return [
        pytest.param(loss, params, id=f"{loss.name}[{param_id(params)}]")
        for loss in losses
        for params in param_paths(loss, reductions)
    ]


def certify_typical(loss, params, n):
    """``n`` typical cases of ``loss`` at ``params`` (seeded by the loss and the path) and their certificates."""
    rng = np.random.default_rng(zlib.crc32(f"{loss.name}|{param_id(params)}".encode()))
    for _ in range(n):
        case = sample(loss, params, "typical", rng)
        out = loss(*case.inputs, **case.params)
        cot = None if np.ndim(out) == 0 else rng.standard_normal(np.shape(out))
        yield case, rmp.certify(loss, case.inputs, case.params, cot)


def check_certified(loss, params, n, known):
    """Assert every error <= :data:`BOUND`, except those ``known`` allows.

    ``known``: ``{loss name: (predicate on params, quantities allowed to exceed, why)}``. An allowed
    excess is reported by a non-strict xfail that names the cause and the errors; any other excess fails.
    """
    allowed, why = set(), ""
    if loss.name in known and known[loss.name][0](params):
        _, allowed, why = known[loss.name]
    known_excess = []
    for case, cert in certify_typical(loss, params, n):
        errors = {"value": cert.value_ulp, **cert.grad_ulp}
        over = {k: e for k, e in errors.items() if e > BOUND}
        assert not {k: e for k, e in over.items() if k not in allowed}, (case.describe(), errors, cert.kinks)
        known_excess += list(over.items())
    if known_excess:
        pytest.xfail(f"{why}: {known_excess}")


def golden_ids(cases: dict) -> list:
    """``(loss name, case id)`` pairs, to parametrize over, of ``{loss name: [case id, ...]}``."""
    return [(name, case_id) for name, ids in cases.items() for case_id in ids]


def check_golden_certified(name, case_id):
    """Assert the golden case ``case_id`` of loss ``name`` (:func:`refloss.golden.specs`) is certified
    by :func:`refloss.golden.certify`: the cases a family lists here are those float64 refloss missed
    and the golden files' certification must still pass."""
    spec = next(s for s in golden.specs(refloss.get(name)) if s.id == case_id)
    result = golden.certify(spec)
    assert not result.failures, (result.failures, result.value_ulp, result.grad_ulp)
