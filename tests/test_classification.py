"""Classification losses at points whose values were established outside refloss: PyTorch, optax and
Keras outputs recorded in the project's reference notes (frameworks.md), and closed forms by hand."""

import itertools
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


# ------------------------------------------------------------------------------------------------
# Infinite scores: the limit as each infinite score grows at its own rate, NaN where the limit depends
# on the rates (refloss.losses.classification._saturated_softmax). Worked by hand: both losses turn on
# z_i - z_y; softmax(1, 2) = (sigmoid(-1), sigmoid(1)) for the two finite scores of the fourth row.

_INF, _NAN = math.inf, math.nan
_S1, _S2 = 1 / (1 + math.e), math.e / (1 + math.e)
# (scores, target, value, gradient) for softplus_logsumexp_loss (cross-entropy), then logsumexp_hinge_loss
# (margin 0) where it differs: the hinge is 0 where cross-entropy is, and where its argument
# LSE_{i != y} z_i - z_y has no limit its gradient is NaN throughout the row.
_INFINITE_ROWS = [
    ([-_INF, _INF, -_INF], 1, 0.0, [0, 0, 0], None),  # a sole +inf target: every e^(z_i - z_y) -> 0
    ([1.0, _INF, -2.0], 1, 0.0, [0, 0, 0], None),
    ([_INF, 0.0, 1.0], 1, _INF, [1, -1, 0], None),  # a sole +inf elsewhere takes all the mass
    ([1.0, -_INF, 2.0], 1, _INF, [_S1, -1, _S2], None),  # z_y = -inf: the others share as softmax(1, 2)
    ([1.0, -_INF, _INF], 1, _INF, [0, -1, 1], None),
    ([_INF, 0.0, _INF], 1, _INF, [_NAN, -1, _NAN], None),  # the loss grows either way; the split does not settle
    ([_INF, _INF, 0.0], 1, _NAN, [_NAN, _NAN, 0], (_NAN, [_NAN] * 3)),  # z_0 - z_1 = inf - inf
    ([-_INF, -_INF, -_INF], 1, _NAN, [_NAN] * 3, (_NAN, [_NAN] * 3)),
    ([-_INF, 3.0, -_INF], 1, 0.0, [0, 0, 0], None),  # finite maximum: the ordinary path (hinge: u = -inf)
]


def _paths(scores, far=1e3):
    """The scores with each infinity replaced by +-far times a rate: every rate 1, then every ordering
    of the rates 1, 2, 3 among the infinite entries (rates past where exp under/overflows float64)."""
    scores = np.asarray(scores)
    where = np.flatnonzero(np.isinf(scores))
    rates = [np.ones(len(where))] + [np.array(p, dtype=float) + 1 for p in itertools.permutations(range(len(where)))]
    for r in rates:
        z = scores.copy()
        z[where] = np.sign(scores[where]) * far * r
        yield z


@pytest.mark.parametrize("name", ["softplus_logsumexp_loss", "logsumexp_hinge_loss"])
@pytest.mark.parametrize("row", _INFINITE_ROWS, ids=[str(r[:2]) for r in _INFINITE_ROWS])
def test_infinite_scores_give_the_limit_or_nan(name, row):
    scores, target, value, grad, hinge = row
    if name == "logsumexp_hinge_loss" and hinge is not None:
        value, grad = hinge
    if name == "logsumexp_hinge_loss" and value == 0:
        grad = [0, 0, 0]
    loss = refloss.get(name)
    params = {"margin": 0.0} if name == "logsumexp_hinge_loss" else {}
    x, y = np.array([scores]), np.array([target])
    got, (g, _) = refloss.value_and_grad(loss, x, y, reduction="sum", **params)
    np.testing.assert_array_equal(got, value)  # NaN where NaN, exact 0 and inf
    np.testing.assert_allclose(g[0], grad, rtol=1e-15, atol=0)
    # The hand-worked limits against the certified finite path: along every rate the value and each
    # gradient entry approach them (+inf: grows past the far stand-in); NaN: the rates disagree.
    along = [refloss.value_and_grad(loss, z[None], y, reduction="sum", **params) for z in _paths(scores)]
    values = np.array([float(v) for v, _ in along])
    grads = np.array([gz[0] for _, (gz, _) in along])
    # (The hinge's NaN row is a choice where its value has no limit: [u > 0] q_2 -> 0 at the finite score.)
    entries = [] if math.isnan(value) and hinge is not None else [(grad[k], grads[:, k]) for k in range(3)]
    for limit, seen in [(value, values)] + entries:
        if math.isnan(limit):
            assert np.ptp(seen) > 0.5, seen
        elif math.isinf(limit):
            assert np.all(seen > 500), seen
        else:
            np.testing.assert_allclose(seen, limit, rtol=1e-15, atol=1e-300)


def test_additive_margin_softplus_at_infinite_scores():
    # s (softmax(z') - onehot) with z' = s z - s m onehot(y): the same limits as cross-entropy, times s
    s, m = 30.0, 0.35
    x = np.array([[1.0, _INF, -2.0], [_INF, 0.0, 1.0], [1.0, -_INF, 2.0], [_INF, _INF, 0.0]])
    y = np.array([1, 1, 1, 1])
    value = refloss.additive_margin_softplus_loss(x, y, scale=s, margin=m, reduction="none")
    np.testing.assert_array_equal(value, [0.0, _INF, _INF, _NAN])
    _, (g, _) = refloss.value_and_grad(refloss.additive_margin_softplus_loss, x, y, scale=s, margin=m, reduction="none")
    e = math.exp(-s)  # softmax(s, 2 s) over the two finite non-target scores
    np.testing.assert_allclose(g[:3], [[0, 0, 0], [s, -s, 0], [s * e / (1 + e), -s, s / (1 + e)]], rtol=1e-15, atol=0)
    np.testing.assert_array_equal(g[3], [_NAN, _NAN, 0.0])
