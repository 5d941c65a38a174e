"""The regression family's oracles (refloss.mp.regression): refloss certified against them on typical
cases of every parameter path (value and gradients within 4 ulps), and oracle values checkable by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

import refloss
import refloss.mp as rmp

from certification import BOUND, check_certified, check_golden_certified, golden_ids, paths

pytest.importorskip("mpmath")

FAMILY = [loss for loss in refloss.catalog() if loss.family == "regression"]
CASES_PER_PATH = 2

# Certificates known to exceed the bound, by loss: (predicate on the parameters, the quantities
# allowed to, why). Each is reported; the test xfails (not strictly) where one of them does exceed.
KNOWN = {}


@pytest.mark.parametrize("loss, params", paths(FAMILY))
def test_refloss_is_certified_by_the_oracle(loss, params):
    check_certified(loss, params, CASES_PER_PATH, KNOWN)


def _value(name, inputs, **params):
    """The oracle's value (a float, or a float array for reduction='none')."""
    loss = refloss.get(name)
    full = {**loss.defaults(), **params}
    out, _ = rmp.evaluate(name, [np.asarray(x, dtype=float) for x in inputs], full)
    return np.vectorize(float)(out) if np.ndim(out) else float(out)


def test_oracle_values_by_hand():
    d = np.array([0.0, 0.5, 2.0, -3.0])
    zero = np.zeros(4)
    w = np.array([1.0, 2.0, 3.0, 4.0])
    assert _value("mse_loss", [d, zero], reduction="sum") == 0.25 + 4 + 9
    assert _value("mse_loss", [d, zero], weight=w) == (2 * 0.25 + 3 * 4 + 4 * 9) / 10  # PyTorch's weighted mean
    assert _value("mse_loss", [d, zero], convention="optax_l2", reduction="sum") == (0.25 + 4 + 9) / 2
    assert _value("l1_loss", [d, zero], weight=w) == (1 + 6 + 12) / 10
    assert _value("huber_loss", [d, zero], delta=0.5, reduction="none").tolist() == [0, 0.125, 0.875, 1.375]
    assert _value("huber_loss", [d, zero], weight=w) == (2 * 0.125 + 3 * 1.5 + 4 * 2.5) / 4  # mean over the count
    assert _value("smooth_l1_loss", [d, zero], beta=0.0, reduction="sum") == 5.5
    assert _value("smooth_l1_loss", [d, zero], beta=1.0, reduction="none").tolist() == [0, 0.125, 1.5, 2.5]
    assert _value("log_cosh_loss", [np.array([1.0]), np.zeros(1)], reduction="sum") == pytest.approx(math.log(math.cosh(1.0)), rel=1e-15)
    # Poisson: exp(0) - 1 * 0 = 1; full adds Stirling's term for y > 1 only (frameworks.md 1.2)
    full = _value("poisson_nll_loss", [np.zeros(3), np.array([1.0, 2.0, 5.0])], full=True, reduction="none")
    stirling = [0.0] + [y * math.log(y) - y + 0.5 * math.log(2 * math.pi * y) for y in (2.0, 5.0)]
    np.testing.assert_allclose(full, 1 + np.array(stirling), rtol=1e-15)
    assert _value("poisson_nll_loss", [np.array([2.0]), np.array([3.0])], log_input=False, eps=0.25, reduction="sum") == pytest.approx(
        2 - 3 * math.log(2.25), rel=1e-15
    )
    # Gaussian: x = y and var = 1 gives 0, and log(2 pi) / 2 with full; var below eps is clamped
    assert _value("gaussian_nll_loss", [np.ones(2), np.ones(2), np.ones(2)], reduction="sum") == 0.0
    assert _value("gaussian_nll_loss", [np.ones(1), np.ones(1), np.ones(1)], full=True, reduction="sum") == pytest.approx(
        0.5 * math.log(2 * math.pi), rel=1e-15
    )
    assert _value("gaussian_nll_loss", [np.array([2.0]), np.zeros(1), np.array([0.25])], eps=1.0, reduction="sum") == 2.0
    # Balanced L1 at t = beta: gamma beta + gamma / b - alpha beta, b = e^(gamma/alpha) - 1; 0 at t = 0
    b = math.expm1(3.0)
    assert _value("balanced_l1_loss", [np.array([1.0]), np.zeros(1)], reduction="sum") == pytest.approx(1.5 + 1.5 / b - 0.5, rel=1e-15)
    assert _value("balanced_l1_loss", [np.zeros(1), np.zeros(1)], reduction="sum") == 0.0


def test_gaussian_clamp_is_a_declared_stop_gradient():
    # frameworks.md 5 #19: eps = 1, var = .25, x = y: d/dvar = (1/v - d^2/v^2) / 2 at v = eps = 0.5, not 0
    inputs = [np.array([1.0]), np.array([1.0]), np.array([0.25])]
    params = {**refloss.gaussian_nll_loss.defaults(), "eps": 1.0, "reduction": "sum"}
    frozen = rmp.gradient("gaussian_nll_loss", inputs, params, np.ones(()), [2], stop_gradient=True)[0]
    plain = rmp.gradient("gaussian_nll_loss", inputs, params, np.ones(()), [2], stop_gradient=False)[0]
    assert float(frozen.left[0]) == pytest.approx(0.5, rel=1e-20) and float(frozen.right[0]) == pytest.approx(0.5, rel=1e-20)
    assert float(plain.left[0]) == 0.0 and float(plain.right[0]) == 0.0
    cert = rmp.certify(refloss.gaussian_nll_loss, inputs, params)
    assert cert.worst() <= BOUND, cert


def test_balanced_l1_is_certified_where_its_inside_branch_cancels():
    # t from 1e-12 to beta: the inside branch is alpha b t^2 / (2 beta) to first order (beta = 1)
    rng = np.random.default_rng(5)
    t = np.concatenate([10.0 ** rng.uniform(-12, 0, 40), rng.uniform(0, 1, 20)])
    for alpha, gamma, beta in [(0.5, 1.5, 1.0), (0.3, 1.5, 1.0), (0.5, 1.5, 0.5)]:
        params = {"alpha": alpha, "gamma": gamma, "beta": beta, "reduction": "none"}
        cert = rmp.certify(refloss.balanced_l1_loss, [t * beta, np.zeros_like(t)], params, rng.standard_normal(t.shape))
        assert cert.worst() <= BOUND, (params, cert.value_ulp, cert.grad_ulp)


def _roots_of_exp_minus(y):
    """The roots of exp(x) = y x (y > e), by bisection in float64: where exp(x) - y x cancels completely."""
    roots = []
    for lo, hi in ((0.0, 1.0), (1.0, 40.0)):
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if (math.exp(mid) - y * mid > 0) == (math.exp(lo) - y * lo > 0):
                lo = mid
            else:
                hi = mid
        roots.append(lo)
    return roots


def test_poisson_is_certified_where_it_cancels():
    # exp(x) - y x near both roots, x - y log(x + eps) near x = y, and the full Stirling term at x = log y
    # (terms of size y log y around a loss of log(2 pi y) / 2)
    rng = np.random.default_rng(11)
    for y in (3.0, 7.0, 1e3, 1e6):
        x = np.concatenate([np.array(_roots_of_exp_minus(y)) * (1 + 1e-9 * rng.standard_normal(2)), [math.log(y)]])
        t = np.full_like(x, y)
        for full in (False, True):
            params = {"log_input": True, "full": full, "eps": 1e-8, "reduction": "none"}
            cert = rmp.certify(refloss.poisson_nll_loss, [x, t], params, rng.standard_normal(x.shape))
            assert cert.worst() <= BOUND, (y, full, cert.value_ulp, cert.grad_ulp)
        rate = y * (1 + np.array([1e-12, -3e-9, 1e-4]))
        params = {"log_input": False, "full": True, "eps": 1e-8, "reduction": "none"}
        cert = rmp.certify(refloss.poisson_nll_loss, [rate, np.full_like(rate, y)], params, rng.standard_normal(3))
        assert cert.worst() <= BOUND, (y, cert.value_ulp, cert.grad_ulp)


def test_gaussian_is_certified_where_it_cancels():
    # log v + d^2 / v = 0 (v < 1), d^2 = v (the variance's gradient), and a shared variance whose
    # gradient sums terms of both signs to nearly nothing
    rng = np.random.default_rng(12)
    v = rng.uniform(0.05, 0.9, 6)
    d = np.sqrt(-np.log(v) * v) * (1 + 1e-10 * rng.standard_normal(6))
    params = {"full": False, "eps": 1e-6, "reduction": "none"}
    cert = rmp.certify(refloss.gaussian_nll_loss, [d, np.zeros(6), v], params, rng.standard_normal(6))
    assert cert.worst() <= BOUND, (cert.value_ulp, cert.grad_ulp)
    d = np.sqrt(v) * (1 + 1e-9 * rng.standard_normal(6))
    cert = rmp.certify(refloss.gaussian_nll_loss, [d, np.zeros(6), v], params, rng.standard_normal(6))
    assert cert.worst() <= BOUND, (cert.value_ulp, cert.grad_ulp)
    x = np.array([[1.0, 0.0, 0.0, -1.0, 0.0]])  # (1 - d^2) sums to 0 over the row exactly: gradient 0
    cert = rmp.certify(refloss.gaussian_nll_loss, [x, np.array([[-1.0, 1.0, 0.0, -1.0, 0.0]]), np.ones((1, 1))],
                       {"full": True, "eps": 1e-6, "reduction": "mean"})
    assert cert.grads["var"].tolist() == [[0.0]] and cert.worst() <= BOUND, (cert.value_ulp, cert.grad_ulp)


# Golden cases (refloss.golden.specs, by id) that the float64 formulations could not certify: x - y log(x + eps)
# near its root, and the variance's gradient (1 - d^2 / v) / 2 summed over a broadcast variance.
HARD_GOLDEN = {
    "poisson_nll_loss": ["typical-none-log_input=false-s0"],
    "gaussian_nll_loss": ["typical-none-full=true-s0"],
}


@pytest.mark.parametrize("name, case_id", golden_ids(HARD_GOLDEN))
def test_golden_cases_that_float64_missed(name, case_id):
    check_golden_certified(name, case_id)
