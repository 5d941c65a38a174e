"""Classification losses at points whose values were established outside refloss: PyTorch, optax and
Keras outputs recorded in the project's reference notes (frameworks.md), and closed forms by hand."""

import math

import numpy as np
import pytest

import refloss


def test_cross_entropy_weights_and_smoothing_match_pytorch():
    # frameworks.md 1.3: torch.nn.functional.cross_entropy(x, y, weight=w, label_smoothing=0.1)
    x = np.array([[1, 2, 3], [1, -1, 0.5], [0.2, 0.1, -0.3]])
    y = np.array([2, 0, 1])
    w = np.array([1.0, 2.0, 3.0])
    assert refloss.cross_entropy(x, y, weight=w, label_smoothing=0.1) == pytest.approx(0.6979164254891241, rel=1e-15)
    # ... and 1.3958328509782483 with pre-smoothed probability targets and the same weights
    smoothed = 0.9 * np.eye(3)[y] + 0.1 / 3
    assert refloss.cross_entropy(x, smoothed, weight=w) == pytest.approx(1.3958328509782483, rel=1e-15)


def test_cross_entropy_at_minus_infinity_logits():
    x = np.array([[-math.inf, 0.0, 1.0]])
    assert refloss.cross_entropy(x, np.array([1])) == pytest.approx(1.3132616875182228, rel=1e-15)
    assert refloss.cross_entropy(x, np.array([1]), label_smoothing=0.1) == math.inf  # as PyTorch
    # zero probability on the -inf class contributes 0 (PyTorch and optax give NaN)
    assert refloss.softmax_cross_entropy(x, np.array([[0.0, 1.0, 0.0]])) == pytest.approx(1.3132616875182228, rel=1e-15)


def test_optax_integer_label_value():
    # frameworks.md 5 #21: optax CE of [[1, 2, 3]] for class 2
    assert refloss.cross_entropy(np.array([[1.0, 2.0, 3.0]]), np.array([2])) == pytest.approx(0.4076059644443806, rel=1e-15)


def test_probability_target_gradient_flows_into_target():
    # frameworks.md 1.3: d/dtarget = -log_softmax(x), [[1.3132617, 0.3132617]] for x = [[0, 1]]
    _, (_, d_target) = refloss.value_and_grad(
        refloss.softmax_cross_entropy, np.array([[0.0, 1.0]]), np.array([[0.5, 0.5]]), reduction="sum"
    )
    np.testing.assert_allclose(d_target, [[1.3132616875182228, 0.3132616875182228]], rtol=1e-15)


def test_nll_takes_input_as_given():
    got = refloss.nll_loss(np.array([[1.0, 2.0], [0.5, 0.1]]), np.array([0, 1]), reduction="none")
    np.testing.assert_array_equal(got, [-1.0, -0.1])


def test_binary_cross_entropy_clamp_conventions():
    p, y = np.array([0.0]), np.array([1.0])
    assert refloss.binary_cross_entropy(p, y) == 100.0  # PyTorch's log clamp
    assert refloss.binary_cross_entropy(p, y, clamp="keras") == pytest.approx(16.11809565095832, rel=1e-15)
    assert refloss.binary_cross_entropy(p, y, clamp="none") == math.inf


def test_binary_cross_entropy_gradient_does_not_cancel_near_the_target():
    # exact: (p - y) / (p (1 - p)); the two-term form loses ~7 digits here
    p, y = np.array([0.3]), np.array([0.3 + 1e-11])
    _, (d_p, _) = refloss.value_and_grad(refloss.binary_cross_entropy, p, y, reduction="sum")
    assert d_p[0] == pytest.approx((0.3 - (0.3 + 1e-11)) / (0.3 * 0.7), rel=1e-12)
    p32, y32 = np.array([0.3], np.float32), np.array([0.3000001], np.float32)
    _, (d_p32, _) = refloss.value_and_grad(refloss.binary_cross_entropy, p32, y32, reduction="sum")
    exact = (float(p32[0]) - float(y32[0])) / (float(p32[0]) * (1 - float(p32[0])))
    assert float(d_p32[0]) == pytest.approx(exact, rel=1e-6)


def test_bce_with_logits_is_exact_at_infinite_logits():
    x = np.array([math.inf, -math.inf, -math.inf, -120.0])
    y = np.array([1.0, 0.0, 1.0, 1.0])
    got = refloss.binary_cross_entropy_with_logits(x, y, reduction="none")
    assert got[:3].tolist() == [0.0, 0.0, math.inf]
    # frameworks.md appendix: pos_weight at x = -120 is 120 (pytorch #13773, fixed)
    weighted = refloss.binary_cross_entropy_with_logits(x[3:], y[3:], pos_weight=np.array([1.0]), reduction="sum")
    assert weighted == pytest.approx(120.0, rel=1e-15)


def test_kl_div_zero_target_at_minus_infinity_is_zero_without_warning():
    x = np.array([[-math.inf, math.log(0.5)]])
    p = np.array([[0.0, 1.0]])
    got = refloss.kl_div(x, p, reduction="none")  # pytest turns a RuntimeWarning into a failure
    assert got[0, 0] == 0.0 and got[0, 1] == pytest.approx(math.log(2), rel=1e-15)
    _, (d_x, d_p) = refloss.value_and_grad(refloss.kl_div, x, p, reduction="sum")
    assert d_x.tolist() == [[-0.0, -1.0]] and d_p[0, 0] == -math.inf


def test_kl_div_reductions():
    x = np.log(np.array([[0.25, 0.75], [0.5, 0.5]]))
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    per_sample = [0.5 * math.log(2) + 0.5 * math.log(2 / 3), 0.9 * math.log(1.8) + 0.1 * math.log(0.2)]
    assert refloss.kl_div(x, p, reduction="batchmean") == pytest.approx(sum(per_sample) / 2, rel=1e-14)
    assert refloss.kl_div(x, p, reduction="mean") == pytest.approx(sum(per_sample) / 4, rel=1e-14)


def test_pytorch_margin_losses():
    x = np.array([[0.1, 0.2, 0.4, 0.8]])
    # frameworks.md 1.2: multilabel_margin_loss([.1,.2,.4,.8], [3,0,-1,1]) = 0.85
    assert refloss.multilabel_margin_loss(x, np.array([[3, 0, -1, 1]])) == pytest.approx(0.85, rel=1e-15)
    # frameworks.md 5 #31: multi_margin_loss 0.325 vs optax multiclass_hinge_loss 0.6, same input, y = 3
    assert refloss.multi_margin_loss(x, np.array([3])) == pytest.approx(0.325, rel=1e-15)
    assert refloss.crammer_singer_hinge_loss(x, np.array([3])) == pytest.approx(0.6, rel=1e-15)
    assert refloss.multiclass_hinge_loss(x, np.array([3])) == pytest.approx(4 * 0.325, rel=1e-15)


def test_soft_margin_does_not_overflow():
    got = refloss.soft_margin_loss(np.array([-1e4, -100.0], np.float32), np.array([1.0, 1.0], np.float32), reduction="none")
    assert got.tolist() == [1e4, 100.0]


def test_hed_beta_counts_negatives():
    x = np.zeros((1, 4))
    y = np.array([[1.0, 0.0, 0.0, 0.0]])  # beta = 3/4; every term is beta or (1-beta) times log 2
    got = refloss.balanced_binary_cross_entropy(x, y, reduction="none")
    np.testing.assert_allclose(got, [[0.75 * math.log(2), 0.25 * math.log(2), 0.25 * math.log(2), 0.25 * math.log(2)]], rtol=1e-15)
    assert refloss.balanced_binary_cross_entropy(x, np.zeros((1, 4)), reduction="sum") == 0.0  # no positive


def test_jensen_shannon_values():
    p = np.array([[1.0, 0.0]])
    q = np.array([[0.0, 1.0]])
    assert refloss.jensen_shannon_divergence(p, q) == pytest.approx(math.log(2), rel=1e-15)  # disjoint supports
    a = np.array([[0.5, 0.5]])
    b = np.array([[0.5 + 1e-9, 0.5 - 1e-9]])
    # near p = q, JS ~ sum (p - q)^2 / (4 (p + q)) ... = 1e-18 (1/4 + 1/4) ... to leading order
    assert refloss.jensen_shannon_divergence(a, b) == pytest.approx(1e-18 / 2, rel=1e-6)


def test_focal_losses_are_finite_at_saturation_for_small_gamma():
    x = np.array([1e4, -1e4, 30.0])
    y = np.array([1.0, 0.0, 1.0])
    for gamma in (0.0, 0.25, 0.5):
        value, (d_x, _) = refloss.value_and_grad(refloss.sigmoid_focal_loss, x, y, gamma=gamma, reduction="sum")
        assert np.isfinite(value) and np.isfinite(d_x).all()
    z = np.array([[-1e4, 1e4, 3.0, -2.0]])
    value, (d_z, _) = refloss.value_and_grad(refloss.softmax_focal_loss, z, np.array([1]), gamma=0.5)
    assert value == 0.0 and np.isfinite(d_z).all()


def test_cross_entropy_gradient_keeps_the_target_share_when_it_dominates():
    rmp = pytest.importorskip("refloss.mp")
    pytest.importorskip("mpmath")
    z = np.array([[50.0, 0.0, -3.0]])
    y = np.array([0])
    params = {**refloss.cross_entropy.defaults(), "reduction": "sum"}
    (exact,) = rmp.gradient("cross_entropy", [z, y], params, 1.0, [0])
    exact = np.vectorize(float)(exact.left)  # the oracle's d/dz: p - onehot(y), to 30 digits
    _, (g, _) = refloss.value_and_grad(refloss.cross_entropy, z, y, reduction="sum")
    np.testing.assert_allclose(g, exact, rtol=1e-15)  # p_y - 1 would round to 0 here
    _, (g_soft, _) = refloss.value_and_grad(refloss.softmax_cross_entropy, z, np.array([[1.0, 0.0, 0.0]]), reduction="sum")
    np.testing.assert_allclose(g_soft, exact, rtol=1e-15)


def test_soft_target_gradient_keeps_the_other_classes_mass_when_one_dominates():
    # d/dz_0 = (A - a_0) p_0 - a_0 (1 - p_0): A - a_0 summed then subtracted cancels to ~1e-5 relative here
    rmp = pytest.importorskip("refloss.mp")
    pytest.importorskip("mpmath")
    z = np.array([[804.925768210402, -264.56077256691566, 112.32064176481585]])
    t = np.array([[9.999999999938527e-01, 5.582933206570133e-12, 5.645430617037012e-13]])
    cert = rmp.certify(refloss.softmax_cross_entropy, [z, t], {**refloss.softmax_cross_entropy.defaults(), "axis": -1})
    assert cert.grad_ulp["logits"] <= 4, cert.grad_ulp


# Points where an earlier formulation lost digits, each certified by the oracle (refloss.mp) now:
# (loss, inputs, parameters, what went wrong before).
_CANCELLATION_CASES = [
    ("jensen_shannon_divergence",
     [[[7.6032254855399492e-24, 3.0314294575055966e-08, 9.9999996968318694e-01, 2.6632251025533325e-19, 2.5183883662114916e-12]],
      [[9.5177366598889164e-18, 7.1286056869777645e-14, 6.7703973011120680e-07, 9.9999884113798498e-01, 4.8182221364032365e-07]]],
     {"reduction": "none"}, "(1 - d) log(1 - d) from a rounded d = (p - q) / (p + q) near 1: 5 ulps"),
    ("jensen_shannon_divergence", [[[0.1026424913549976, 0.7557854818482707, 0.14157202679673167]],
                                   [[0.05164135868606256, 0.7641804924145782, 0.18417814889935916]]],
     {"reduction": "none"}, "guard: the two logs of p log(2p/s) + q log(2q/s) cancel ~3x at |d| ~ 0.33"),
    ("kl_div", [[-1.1900168531385145], [0.2744074105270691]], {"reduction": "none"},
     "a rounded log p against x = log q: 8 ulps"),
    ("kl_div", [[0.30000000000000004, 0.7], [0.3, 0.7]], {"reduction": "none", "convention": "keras"},
     "log p - log q where p ~ q: all digits"),
    ("logsumexp_hinge_loss", [[[1e4, 1e4, 1e4, 1e4]], [3]], {"margin": 0.0}, "LSE(1e4, 1e4, 1e4) - 1e4: 779 ulps"),
    ("additive_margin_softplus_loss", [[[1e4, 1e4, 1e4]], [2]], {"scale": 1.0, "margin": 0.35},
     "s (z_y - m) rounded at the scale of z_y: 1211 ulps"),
    ("softplus_logsumexp_loss", [[[1e4, 1e4, 1e4]], [2]], {}, "LSE(1e4, 1e4) - 1e4"),
    ("softmax_focal_loss", [[[2.5050894745549166, -2.495158481741121]], [0]], {}, "p_y - 1 in the gradient: 135 ulps"),
]


@pytest.mark.parametrize("name, inputs, params, before", _CANCELLATION_CASES, ids=[c[0] for c in _CANCELLATION_CASES])
def test_no_cancellation_where_an_earlier_formulation_had_it(name, inputs, params, before):
    rmp = pytest.importorskip("refloss.mp")
    pytest.importorskip("mpmath")
    loss = refloss.get(name)
    arrays = [np.asarray(x) if isinstance(x[0], int) else np.asarray(x, dtype=float) for x in inputs]
    cert = rmp.certify(loss, arrays, {**loss.defaults(), **params})
    assert cert.worst() <= 4, (before, cert.value_ulp, cert.grad_ulp)


def test_jensen_shannon_gradient_where_both_probabilities_vanish():
    # JS_c = [p log(2p/(p+q)) + q log(2q/(p+q))] / 2 grows as p log(2) / 2 along p from p = q = 0
    p = np.array([[0.5, 0.5, 0.0]])
    q = np.array([[0.25, 0.75, 0.0]])
    _, (dp, dq) = refloss.value_and_grad(refloss.jensen_shannon_divergence, p, q, reduction="sum")
    assert dp[0, 2] == dq[0, 2] == math.log(2) / 2
