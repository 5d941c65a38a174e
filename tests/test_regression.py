"""Regression losses at points established outside refloss (PyTorch and TF values recorded in the
reference notes, frameworks.md section 5) and the identities between them."""

import math

import numpy as np
import pytest

import refloss

E = np.array([0.0, 0.5, 2.0, -3.0])  # residuals used by frameworks.md #9 and #10
ZERO = np.zeros(4)


def test_weighted_means_follow_pytorch():
    w = np.array([1.0, 2.0, 3.0, 4.0])
    assert refloss.mse_loss(E, ZERO, weight=w) == pytest.approx(4.85, rel=1e-15)  # sum(w e^2) / sum(w)
    assert refloss.l1_loss(E, ZERO, weight=w) == pytest.approx((0 + 1 + 6 + 12) / 10, rel=1e-15)
    assert refloss.huber_loss(E, ZERO, weight=w) == pytest.approx(3.6875, rel=1e-15)  # mean(w h): count


def test_huber_and_smooth_l1_values_and_relation():
    np.testing.assert_allclose(refloss.huber_loss(E, ZERO, delta=0.5, reduction="none"), [0, 0.125, 0.875, 1.375], rtol=1e-15)
    np.testing.assert_allclose(refloss.huber_loss(E, ZERO, delta=2.0, reduction="none"), [0, 0.125, 2, 4], rtol=1e-15)
    assert refloss.smooth_l1_loss(E, ZERO, beta=0.0) == pytest.approx(1.375, rel=1e-15)
    for delta in (0.3, 1.0, 2.5):
        huber, (gh, _) = refloss.value_and_grad(refloss.huber_loss, E, ZERO, delta=delta, reduction="sum")
        smooth, (gs, _) = refloss.value_and_grad(refloss.smooth_l1_loss, E, ZERO, beta=delta, reduction="sum")
        assert huber == pytest.approx(delta * smooth, rel=1e-15)
        np.testing.assert_allclose(gh, delta * gs, rtol=1e-15)


def test_smooth_l1_with_zero_beta_is_l1_exactly():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=20), rng.normal(size=20)
    x[3] = y[3]  # sign(0) = 0 in both
    a, (ga, gta) = refloss.value_and_grad(refloss.smooth_l1_loss, x, y, beta=0.0, reduction="none", cotangent=np.ones(20))
    b, (gb, gtb) = refloss.value_and_grad(refloss.l1_loss, x, y, reduction="none", cotangent=np.ones(20))
    assert np.array_equal(a, b) and np.array_equal(ga, gb) and np.array_equal(gta, gtb) and ga[3] == 0


def test_optax_l2_is_half_the_squared_error():
    assert refloss.mse_loss(E, ZERO, convention="optax_l2", reduction="sum") == pytest.approx(0.5 * (0.25 + 4 + 9), rel=1e-15)


def test_log_cosh_is_precise_near_zero_and_finite_far_away():
    d = np.array([1e-8, 0.5, 1000.0, -1e300])
    got = refloss.log_cosh_loss(d, np.zeros(4), reduction="none")
    assert got[0] == pytest.approx(5e-17, rel=1e-15)  # log cosh d = d^2/2 - d^4/12 + ...
    assert got[1] == pytest.approx(math.log(math.cosh(0.5)), rel=1e-15)
    assert got[2] == pytest.approx(1000 - math.log(2), rel=1e-15)
    assert got[3] == pytest.approx(1e300, rel=1e-15)


def test_poisson_full_matches_pytorch_and_tf():
    # frameworks.md 1.2: full, log x = 0, y = [1, 2, 5] -> [1.0, 1.651806, 5.770847]
    got = refloss.poisson_nll_loss(np.zeros(3), np.array([1.0, 2.0, 5.0]), full=True, reduction="none")
    np.testing.assert_allclose(got, [1.0, 1.651806, 5.770847], rtol=5e-7)
    # Keras Poisson = rate input: x - y log(x + eps)
    rate = refloss.poisson_nll_loss(np.array([2.0]), np.array([3.0]), log_input=False, eps=1e-7, reduction="sum")
    assert rate == pytest.approx(2.0 - 3.0 * math.log(2.0 + 1e-7), rel=1e-15)
    with pytest.raises(ValueError, match="poisson_nll_loss: input must be a rate >= 0"):
        refloss.poisson_nll_loss(np.array([-1.0]), np.array([1.0]), log_input=False)


def test_gaussian_nll_clamp_is_straight_through():
    # frameworks.md 5 #19: eps = 1, var = .25, x = y -> loss 0, d/dvar = 0.5
    value, (_, _, d_var) = refloss.value_and_grad(
        refloss.gaussian_nll_loss, np.array([1.0]), np.array([1.0]), np.array([0.25]), eps=1.0, reduction="sum"
    )
    assert value == 0.0 and d_var[0] == pytest.approx(0.5, rel=1e-15)
    with pytest.raises(ValueError, match=r"gaussian_nll_loss: var must be in \[0.0, inf\], got -1.0"):
        refloss.gaussian_nll_loss(np.ones(2), np.ones(2), np.array([-1.0, 1.0]))


def test_gaussian_nll_homoscedastic_variance_gradient_is_summed():
    x, y = np.array([[1.0, 2.0, 3.0]]), np.array([[0.0, 0.0, 0.0]])
    v = np.array([[2.0]])
    value, (_, _, d_var) = refloss.value_and_grad(refloss.gaussian_nll_loss, x, y, v, reduction="sum")
    assert value == pytest.approx(0.5 * (3 * math.log(2) + 14 / 2), rel=1e-15)
    assert d_var.shape == (1, 1) and d_var[0, 0] == pytest.approx(0.5 * (3 / 2 - 14 / 4), rel=1e-15)


def test_balanced_l1_is_continuous_at_beta():
    alpha, gamma, beta = 0.5, 1.5, 1.0
    below = refloss.balanced_l1_loss(np.array([beta * (1 - 1e-12)]), np.zeros(1), reduction="sum")
    at = refloss.balanced_l1_loss(np.array([beta]), np.zeros(1), reduction="sum")
    assert below == pytest.approx(at, abs=1e-10)
    b = math.exp(gamma / alpha) - 1
    assert at == pytest.approx(gamma * beta + gamma / b - alpha * beta, rel=1e-15)


@pytest.mark.parametrize(
    "name, params, knee",
    [
        ("smooth_l1_loss", {"beta": 1.0}, 1.0),
        ("smooth_l1_loss", {"beta": 0.3}, 0.3),
        ("huber_loss", {"delta": 2.0}, 2.0),
        ("balanced_l1_loss", {"beta": 0.5}, 0.5),
        ("balanced_l1_loss", {}, 1.0),
        ("l1_loss", {}, 0.0),
    ],
)
def test_gradient_is_proven_on_both_sides_of_each_kink(name, params, knee):
    from refloss.proof import central_difference

    loss = refloss.get(name)
    rng = np.random.default_rng(11)
    offsets = np.array([-0.02, -0.01, 0.01, 0.02])  # far enough that the stencil (|h v| < 1e-3) stays on one side
    for sign in (1.0, -1.0):
        residual = sign * (knee + offsets)
        target = rng.normal(size=4)
        rows = central_difference(loss, [target + residual, target], {**params, "reduction": "sum"}, rng)
        assert rows and all(r.ok for r in rows), [(r.input, r.error, r.detail) for r in rows if not r.ok]
