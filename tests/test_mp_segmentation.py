"""The segmentation losses against their mpmath oracles (refloss.mp.segmentation): certified values
and gradients within 4 ULP on every parameter path, for the soft targets the domains draw, their
one-hot versions and the edge cases, and oracle values checked by hand.

The overlap core is carried in double-double (refloss.losses.segmentation): soft targets, where float64
subtracts probabilities from targets they are close to (``(p - y)^2``) and the softmax backward subtracts
nearly equal per-class derivatives, are certified like hard ones.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

mpmath = pytest.importorskip("mpmath")

import refloss  # noqa: E402
import refloss.mp as rmp  # noqa: E402
from refloss.cases import Case, param_paths, sample  # noqa: E402

from certification import check_golden_certified, golden_ids  # noqa: E402

SEG = [loss for loss in refloss.catalog() if loss.family == "segmentation"]
ULP = 4.0


@pytest.fixture(autouse=True)
def _digits():
    with mpmath.workdps(50):  # oracle values come back at the ambient precision
        yield


def _hard(case):
    """The case with its float (N, C, *) targets replaced by the one-hot of their argmax."""
    x, t = case.inputs[0], case.inputs[1]
    if t.dtype.kind == "f" and t.ndim == x.ndim and t.ndim >= 2 and x.shape[1] > 1:
        case.inputs[1] = np.moveaxis(np.eye(t.shape[1])[np.argmax(t, axis=1)], -1, 1)
    return case


def _cases():
    for loss in SEG:
        paths = list(param_paths(loss, reductions=("none",)))
        paths += [{**loss.defaults(), "reduction": r} for r in loss.param("reduction").choices if r != "none"]
        for k, params in enumerate(paths):
            yield pytest.param(loss, params, "typical", 200 + k, id=f"{loss.name}-{k}-typical")
        for tag in ("edge",):
            yield pytest.param(loss, {**loss.defaults(), "reduction": "none"}, tag, 7, id=f"{loss.name}-{tag}")


def _certify(loss, case, rng):
    out = loss(*case.inputs, **case.params)
    cot = None if np.ndim(out) == 0 else rng.standard_normal(np.shape(out))
    return rmp.certify(loss, case.inputs, case.params, cot)


@pytest.mark.parametrize("loss, params, tag, seed", list(_cases()))
def test_certified_within_4_ulp(loss, params, tag, seed):
    rng = np.random.default_rng(seed)
    case = sample(loss, params, tag, rng)
    soft = [copy.deepcopy(case)] if tag == "typical" else []  # the domain's soft targets, then one-hot ones
    for which in soft + [_hard(case) if tag == "typical" else case]:  # edge targets are 0/1 already
        cert = _certify(loss, which, rng)
        assert cert.value_ulp <= ULP, (params, tag, cert.value_ulp)
        for name, err in cert.grad_ulp.items():
            assert err <= ULP, (params, tag, name, err)


@pytest.mark.parametrize("loss", [loss for loss in SEG if not loss.name.startswith("lovasz")], ids=lambda l: l.name)
def test_soft_targets_are_certified_where_float64_cancels(loss):
    # soft targets on every mean path; saturated logits, where the softmax backward cancels between classes
    rng = np.random.default_rng(5)
    for params in param_paths(loss, reductions=("mean",)):
        cert = _certify(loss, sample(loss, params, "typical", rng), rng)
        assert cert.worst() <= ULP, (params, cert.value_ulp, cert.grad_ulp)
    x = np.array([[[30.0, -5.0, 40.0], [29.0, 60.0, -3.0], [28.5, 59.0, 41.0]]])
    y = np.array([[[0.0, 0.2, 1.0], [0.5, 0.8, 0.0], [0.5, 0.0, 0.0]]])
    cert = _certify(loss, Case(loss, [x, y], {**loss.defaults(), "reduction": "sum"}, "typical"), rng)
    assert cert.worst() <= ULP, (cert.value_ulp, cert.grad_ulp)


@pytest.mark.parametrize("name", ["dice_loss", "jaccard_loss"])
def test_squared_denominators_with_targets_at_the_probabilities(name):
    # (p - y)^2 with y within 1e-9 of p: float64 probabilities and differences lost all of it (3e8 ulps)
    rng = np.random.default_rng(3)
    loss = refloss.get(name)
    x = rng.uniform(0.05, 0.95, size=(2, 3, 4))
    case = Case(loss, [x, x * (1 + 1e-9 * rng.standard_normal(x.shape))],
                {**loss.defaults(), "activation": "none", "squared": True, "reduction": "none"}, "typical")
    cert = _certify(loss, case, rng)
    assert cert.worst() <= ULP, (cert.value_ulp, cert.grad_ulp)


# Golden cases (refloss.golden.specs, by id) that the float64 pipeline could not certify: soft targets under
# the softmax backward (4 to 6 ulps), saturated logits (9000 ulps; a focal loss of 1e-263 from a Tversky
# loss below the float64 range), and hard probabilities at Lovasz's |fg - p| kink (the oracle's).
HARD_GOLDEN = {
    "dice_loss": ["typical-mean-convention=keras-s0", "typical-none-convention=kornia_macro-s0"],
    "generalized_dice_loss": ["typical-mean-defaults-s0"],
    "tversky_loss": ["extreme-mean-include_background=false-s0"],
    "focal_tversky_loss": ["extreme-batchmean-convention=monai-s0", "typical-sum-convention=optax-s0"],
    "lovasz_softmax_loss": ["edge-none-activation=none-s0"],
}


@pytest.mark.parametrize("name, case_id", golden_ids(HARD_GOLDEN))
def test_golden_cases_that_float64_missed(name, case_id):
    check_golden_certified(name, case_id)


# ------------------------------------------------------------------------------------------------
# The oracle itself, by hand.


def _value(name, x, y, **params):
    loss = refloss.get(name)
    value, _ = rmp.evaluate(name, [np.asarray(x, dtype=float), np.asarray(y)], {**loss.defaults(), **params})
    return value


def _close(a, b):
    return abs(a - b) <= mpmath.mpf(10) ** -40 * max(1, abs(b))


def test_dice_monai_by_hand():
    p = [[[0.8, 0.3], [0.2, 0.7]]]
    y = [[[1.0, 0.0], [0.0, 1.0]]]
    s = mpmath.mpf(1e-5)
    got = _value("dice_loss", p, y, activation="none", reduction="none")
    P = [[mpmath.mpf(0.8), mpmath.mpf(0.3)], [mpmath.mpf(0.2), mpmath.mpf(0.7)]]
    assert _close(got[0, 0], 1 - (2 * P[0][0] + s) / (P[0][0] + P[0][1] + 1 + s))
    assert _close(got[0, 1], 1 - (2 * P[1][1] + s) / (P[1][0] + P[1][1] + 1 + s))
    sq = _value("dice_loss", p, y, activation="none", squared=True, reduction="none")
    assert _close(sq[0, 0], 1 - (2 * P[0][0] + s) / (P[0][0] ** 2 + P[0][1] ** 2 + 1 + s))


def test_kornia_micro_dice_of_a_two_class_tie():
    # softmax of equal logits: p = 1/2 everywhere, so 2I = S and P + G = 2S over S pixels
    x = np.zeros((1, 2, 3))
    labels = np.array([[0, 1, 1]])
    got = _value("dice_loss", x, labels, convention="kornia", reduction="sum")
    assert _close(got[()], 1 - mpmath.mpf(3) / (6 + mpmath.mpf(1e-8)))


def test_tversky_alpha_placement_and_focal_power():
    p, y = [[[0.8, 0.3]]], [[[1.0, 0.0]]]
    i, fp, fn = mpmath.mpf(0.8), mpmath.mpf(0.3), 1 - mpmath.mpf(0.8)
    a, b = mpmath.mpf(0.3), mpmath.mpf(0.7)
    monai = _value("tversky_loss", p, y, alpha=0.3, beta=0.7, activation="none", reduction="sum")
    assert _close(monai[()], 1 - (i + mpmath.mpf(1e-5)) / (i + a * fp + b * fn + mpmath.mpf(1e-5)))
    keras = _value("tversky_loss", p, y, alpha=0.3, beta=0.7, activation="none", convention="keras", reduction="sum")
    assert _close(keras[()], 1 - i / (i + a * fn + b * fp + mpmath.mpf(1e-7)))
    ft = _value("focal_tversky_loss", p, y, activation="none", reduction="sum")
    t = (i + 1) / (i + mpmath.mpf(0.7) * fn + mpmath.mpf(0.3) * fp + 1)
    assert _close(ft[()], (1 - t) ** mpmath.mpf(0.75))


def test_smp_masks_empty_classes_and_clamps():
    # class 1 absent from the whole batch: it contributes 0 to the class mean
    p = [[[0.6, 0.9], [0.4, 0.1]]]
    y = [[[1.0, 1.0], [0.0, 0.0]]]
    got = _value("dice_loss", p, y, activation="none", convention="smp", reduction="sum")
    dice0 = 2 * (mpmath.mpf(0.6) + mpmath.mpf(0.9)) / (mpmath.mpf(0.6) + mpmath.mpf(0.9) + 2)
    assert _close(got[()], (1 - dice0) / 2)


def test_generalized_dice_weights_by_hand():
    # one sample, two classes, two pixels; w_c = 1 / G_c^2
    p = [[[0.7, 0.2], [0.3, 0.8]]]
    y = [[[1.0, 0.0], [0.0, 1.0]]]
    got = _value("generalized_dice_loss", p, y, activation="none", reduction="sum")
    m = mpmath.mpf
    inter = [m(0.7), m(0.8)]
    card = [m(0.7) + m(0.2) + 1, m(0.3) + m(0.8) + 1]
    assert _close(got[()], 1 - (2 * sum(inter) + m(1e-5)) / (sum(card) + m(1e-5)))


def test_lovasz_hinge_by_hand():
    # errors 1 - x (2y - 1): foreground 0.2, background 0.7; sorted (bg, fg): D = 1/2, then 2/2
    got = _value("lovasz_hinge_loss", [[0.8, -0.3]], [[1.0, 0.0]], reduction="sum")
    assert _close(got[()], (1 - mpmath.mpf(0.3)) / 2 + (1 - mpmath.mpf(0.8)) / 2)


def test_lovasz_softmax_tie_and_absent_class():
    x, labels = np.zeros((1, 2, 1)), np.array([[0]])
    # p = 1/2: the present class's error is 1/2 with D = 1; an absent class has D(S) = 1 for any S
    assert _close(_value("lovasz_softmax_loss", x, labels, reduction="sum")[()], mpmath.mpf(0.5))
    assert _close(_value("lovasz_softmax_loss", x, labels, classes="all", reduction="sum")[()], mpmath.mpf(0.5))


def test_index_targets_equal_their_one_hot():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4))
    labels = rng.integers(0, 3, size=(2, 4))
    hot = np.moveaxis(np.eye(3)[labels], -1, 1)
    for name in ("dice_loss", "jaccard_loss", "generalized_dice_loss", "lovasz_softmax_loss"):
        a, b = _value(name, x, labels, reduction="sum"), _value(name, x, hot, reduction="sum")
        assert a[()] == b[()], name


def test_complement_form_is_the_textbook_score():
    # the oracle writes 1 - score as err / den; at 60 digits it is 1 - (2I + s) / (P + G + s) itself
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2, 3, 5)), rng.dirichlet(np.ones(3), size=(2, 5)).transpose(0, 2, 1)
    got = _value("dice_loss", x, y, reduction="none")
    with mpmath.workdps(60):
        for n in range(2):
            e = [[mpmath.exp(mpmath.mpf(float(v))) for v in x[n, :, i]] for i in range(5)]
            p = [[e[i][c] / sum(e[i]) for i in range(5)] for c in range(3)]
            for c in range(3):
                inter = sum(p[c][i] * mpmath.mpf(float(y[n, c, i])) for i in range(5))
                card = sum(p[c]) + sum(mpmath.mpf(float(v)) for v in y[n, c])
                s = mpmath.mpf(1e-5)
                assert _close(got[n, c], 1 - (2 * inter + s) / (card + s))
