"""The oracle core (refloss.mp): every registered loss has an oracle; the certification machinery
detects cancellation, kinks and special values, and its reductions follow their definitions."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

import refloss
import refloss.mp as rmp


def test_every_registered_loss_has_an_oracle():
    oracles = rmp.load()
    missing = sorted(l.name for l in refloss.catalog() if l.name not in oracles)
    assert not missing, f"losses without an mpmath oracle in refloss.mp: {missing}"
    unknown = sorted(set(oracles) - {l.name for l in refloss.catalog()})
    assert not unknown, f"oracles for no registered loss: {unknown}"


def test_oracles_take_exactly_the_losses_parameters():
    import inspect

    for loss in refloss.catalog():
        f = rmp.load().get(loss.name)
        if f is None:
            continue  # reported by the test above
        sig = inspect.signature(f)
        kw = {n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY} - {"base"}
        assert kw == set(loss.defaults()), f"{loss.name}: oracle keywords {sorted(kw)} != parameters {sorted(loss.defaults())}"
        positional = [n for n, p in sig.parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD][1:]
        assert positional == [i.name for i in loss.inputs], f"{loss.name}: oracle inputs {positional}"


@pytest.fixture
def toy():
    """Temporarily registered toy oracles (removed afterwards)."""
    added = []

    def register(name, f):
        rmp.ORACLES[name] = f
        added.append(name)

    yield register
    for name in added:
        rmp.ORACLES.pop(name, None)


def test_intervals_outrun_cancellation(toy):
    # log(1 + exp(-x)) at 50 digits is 0 for x = 700; the interval is [0, 1e-50] and is refined.
    toy("_toy_softplus_neg", lambda M, x, *, reduction: rmp.reduce(M, rmp.ops(M).log(1 + rmp.ops(M).exp(-x)), reduction))
    value, dps = rmp.evaluate("_toy_softplus_neg", [np.array([700.0, 1.0])], {"reduction": "none"})
    assert dps is not None and dps > rmp.START_DPS
    with mpmath.workdps(60):
        assert float(value[0]) == float(mpmath.log1p(mpmath.exp(-700)))
        assert float(value[1]) == float(mpmath.log1p(mpmath.exp(-1)))


def test_ties_fall_back_to_points_and_kinks_are_reported(toy):
    # relu(x / 3 * 3 - 1) at x = 1: the interval of x / 3 * 3 - 1 straddles 0, so the branch is
    # undecidable (a tie); the one-sided derivatives there are 0 and 1.
    def hinge(M, x, *, reduction):
        return rmp.reduce(M, rmp.ops(M).maximum(x / 3 * 3 - 1, 0 * x), reduction)

    toy("_toy_hinge", hinge)
    value, dps = rmp.evaluate("_toy_hinge", [np.array([1.0, 2.0])], {"reduction": "sum"})
    assert dps is None and float(value) == 1.0
    (g,) = rmp.gradient("_toy_hinge", [np.array([1.0, 2.0])], {"reduction": "sum"}, 1.0, [0])
    assert [float(v) for v in g.left] == [0.0, 1.0] and [float(v) for v in g.right] == [1.0, 1.0]
    assert g.kinks.tolist() == [True, False]


def test_reductions_follow_their_definitions():
    M = mpmath.mp
    v = np.array([[mpmath.mpf(1), mpmath.mpf(2)], [mpmath.mpf(3), mpmath.mpf(6)]], dtype=object)
    assert rmp.reduce(M, v, "sum") == 12
    assert rmp.reduce(M, v, "mean") == 3
    assert rmp.reduce(M, v, "batchmean") == 6
    assert rmp.reduce(M, v, "sum_over_batch_size") == 3
    assert rmp.reduce(M, v, "mean", mean_weight=np.array([1, 1, 1, 3], dtype=object)) == 2
    assert mpmath.isnan(rmp.reduce(M, v, "mean", mean_weight=np.zeros(4, dtype=object)))
    assert rmp.reduce(M, v, "none") is not None and rmp.reduce(M, v, "none").shape == (2, 2)
    with pytest.raises(ValueError, match="unknown reduction"):
        rmp.reduce(M, v, "median")


def test_ulp_errors():
    one = mpmath.mpf(1)
    assert rmp.ulp_error(1.0, one) == 0.0
    assert rmp.ulp_error(np.nextafter(1.0, 2.0), one) == 1.0
    assert rmp.ulp_error(math.nan, mpmath.mpf("nan")) == 0.0
    assert rmp.ulp_error(math.inf, mpmath.mpf("inf")) == 0.0
    assert rmp.ulp_error(1.0, mpmath.mpf("nan")) == math.inf
    assert rmp.ulp_error(0.0, mpmath.mpf("1e-310")) > 1e9  # a flushed subnormal is a real error
    # normwise: in ULP of the largest entry, so a tiny entry's relative error does not dominate
    exact = np.array([mpmath.mpf(1), mpmath.mpf("1e-20")], dtype=object)
    assert rmp.normwise_ulp_error([1.0, 2e-20], exact) < 1e-3
    # infinite entries must match exactly; the finite rest stays normwise (not per entry)
    exact = np.array([mpmath.mpf("-inf"), mpmath.mpf(1), mpmath.mpf("1e-20")], dtype=object)
    assert rmp.normwise_ulp_error([-math.inf, 1.0, 2e-20], exact) < 1e-3
    assert rmp.normwise_ulp_error([-1e308, 1.0, 1e-20], exact) == math.inf
