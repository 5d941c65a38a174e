"""Property tests (hypothesis) over the whole catalogue and the identities between losses.

- the reductions agree with each other, for every loss and every parameter path;
- softmax losses are invariant to a per-row shift of the logits, values and gradients;
- class-permutation equivariance of the multi-class losses;
- cross-entropy gradients sum to zero over the classes;
- values and gradients are finite on every valid input, except where the mathematics says infinite;
- the identities the declarations promise (the 001 seed's hinge-to-cross-entropy chain, focal at
  gamma = 0, weighted BCE as pos_weight, label smoothing as a smoothed target).

Inputs come from the declarations (``refloss.cases``) with the seed drawn by hypothesis, or from
hypothesis strategies directly. Tolerances are relative 1e-12, plus an absolute floor of a few ulps
of the largest logit where a quantity is a difference of logit-sized numbers.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refloss
from refloss import cases
from refloss.domains import TAGS
from refloss.loss import REDUCTIONS

CATALOG = refloss.catalog()
NAMES = [l.name for l in CATALOG]
EPS = np.finfo(np.float64).eps
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = st.integers(0, 2**32 - 1)


def _paths(loss):
    """Every parameter path of ``loss`` (defaults, then each grid value), under reduction 'none'."""
    return list(cases.param_paths(loss, reductions=("none",)))


def _case(data, loss, tags=TAGS, paths=None):
    params = data.draw(st.sampled_from(paths if paths is not None else _paths(loss)), label="params")
    tag = data.draw(st.sampled_from(tags), label="tag")
    seed = data.draw(SEEDS, label="seed")
    return cases.sample(loss, params, tag, np.random.default_rng(seed))


def _class_axis(case):
    return case.params.get("axis", 1) % case.inputs[0].ndim


def _scale(*arrays):
    """Largest finite magnitude among ``arrays`` (at least 1): the size of an ulp-level absolute error."""
    m = 1.0
    for a in arrays:
        if a is None:
            continue
        a = np.asarray(a, dtype=float)
        finite = a[np.isfinite(a)]
        if finite.size:
            m = max(m, float(np.max(np.abs(finite))))
    return m


def _close(actual, expected, scale=1.0, terms=1, rtol=1e-12, what=""):
    """``actual == expected`` to ``rtol`` relative, with an absolute floor of ``16 * terms`` ulps of ``scale``
    (``terms`` logit-sized numbers summed, each off by an ulp or so)."""
    np.testing.assert_allclose(
        np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), rtol=rtol,
        atol=max(16 * terms * EPS * scale, 1e-300),  # 1e-300: subnormal results carry no relative precision
        err_msg=what,
    )


def _vg(loss, inputs, params, **override):
    return refloss.value_and_grad(loss, *inputs, **{**params, **override})


# ------------------------------------------------------------------------------------------------
# Reductions agree.

CLASS_WEIGHTED_MEAN = ("cross_entropy", "nll_loss")  # sum(l) / sum(w[target]) over kept targets
ELEMENT_WEIGHTED_MEAN = ("l1_loss", "mse_loss")  # sum(w e) / sum(w), PyTorch 2.x
WEIGHTED_MEAN = CLASS_WEIGHTED_MEAN + ELEMENT_WEIGHTED_MEAN


def test_weighted_mean_losses_are_the_known_ones():
    # The reduction property below computes the weighted-mean normaliser of these by hand; a new
    # loss declaring a mean weight needs its normaliser added there.
    assert sorted(l.name for l in CATALOG if l.mean_weight is not None) == sorted(WEIGHTED_MEAN)


def _mean_normaliser(loss, case, none):
    if loss.name in ELEMENT_WEIGHTED_MEAN:
        weight = case.params["weight"]
        return none.size if weight is None else float(np.sum(np.broadcast_to(weight, none.shape)))
    if loss.name not in WEIGHTED_MEAN:
        return none.size
    target = case.inputs[1]
    c = case.inputs[0].shape[_class_axis(case)]
    weight = case.params["weight"]
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=float)
    kept = target[target != case.params["ignore_index"]]
    return float(np.sum(w[kept]))


def _summed_terms(loss, inputs, params, spec):
    """For an input declared ``broadcast``: the sum of the magnitudes of the per-element terms its
    gradient adds up (0 for other inputs)."""
    if spec.shape != "broadcast":
        return 0.0
    k = [i.name for i in loss.inputs].index(spec.name)
    full = list(inputs)
    full[k] = np.broadcast_to(inputs[k], inputs[0].shape).copy()
    _, grads = _vg(loss, full, params, reduction="sum")
    return float(np.sum(np.abs(grads[k])))


@pytest.mark.parametrize("loss", CATALOG, ids=NAMES)
@SETTINGS
@given(data=st.data())
def test_reductions_agree(loss, data):
    case = _case(data, loss)
    inputs, params = case.inputs, case.params
    none = np.asarray(loss(*inputs, **{**params, "reduction": "none"}))
    total = float(np.sum(none))
    mean_den = _mean_normaliser(loss, case, none)
    denominators = {
        "sum": 1,
        "mean": mean_den,
        "batchmean": none.shape[0] if none.ndim else 1,
        "sum_over_batch_size": none.size,
    }
    assert set(denominators) | {"none"} == set(REDUCTIONS)
    _, sum_grads = _vg(loss, inputs, params, reduction="sum")
    _, none_grads = _vg(loss, inputs, params, reduction="none")
    for g_none, g_sum in zip(none_grads, sum_grads):
        # 'none' back-propagates a cotangent of ones: the gradient of the sum.
        assert (g_none is None) == (g_sum is None)
        if g_sum is not None:
            np.testing.assert_array_equal(g_none, g_sum)
    for reduction, den in denominators.items():
        value = float(loss(*inputs, **{**params, "reduction": reduction}))
        expected = total / den if den else math.nan  # every target ignored: NaN, as PyTorch
        _close(value, expected, rtol=1e-13, terms=0, what=f"{case.describe()} reduction={reduction}")
        v, grads = _vg(loss, inputs, params, reduction=reduction)
        _close(v, value, rtol=0, terms=0, what="value_and_grad's value differs from the call's")
        for spec, g, g_sum in zip(loss.inputs, grads, sum_grads):
            if not spec.differentiable:
                assert g is None
                continue
            assert g.shape == g_sum.shape
            if den:
                # A broadcast input's gradient is a sum over the broadcast elements, which may cancel:
                # its rounding is relative to the sum of their magnitudes, not to the result.
                # And a gradient is accurate normwise (the certification policy), not entry by entry: an
                # exact zero beside entries of size g may come out as 2^-100 g from a double-double core (the
                # largest finite entry: infinite ones must match exactly).
                scale = max(_summed_terms(loss, inputs, params, spec) / den, float(np.max(np.abs(g_sum[np.isfinite(g_sum)]), initial=0.0)) / den)
                _close(g, g_sum / den, scale, terms=1 if scale else 0, rtol=1e-13, what=f"{case.describe()} d/d{spec.name} under {reduction}")
            else:
                assert np.all(np.isnan(g))


# ------------------------------------------------------------------------------------------------
# Softmax shift invariance.

SHIFT_LOSSES = ["cross_entropy", "softmax_cross_entropy", "softmax_focal_loss", "softplus_logsumexp_loss"]


def _dyadic(x, bits=20):
    """``x`` rounded to a multiple of 2^-bits: adding an integer to it is then exact."""
    return np.round(x * 2.0**bits) / 2.0**bits


@pytest.mark.parametrize("name", SHIFT_LOSSES)
@SETTINGS
@given(data=st.data())
def test_softmax_losses_are_shift_invariant(name, data):
    loss = refloss.get(name)
    case = _case(data, loss)
    axis = _class_axis(case)
    logits = _dyadic(case.inputs[0])
    shape = list(logits.shape)
    shape[axis] = 1
    shift = data.draw(hnp.arrays(np.int64, tuple(shape), elements=st.integers(-1000, 1000)), label="shift").astype(float)
    shifted = logits + shift  # exact: the inputs differ by exactly a per-row constant
    assert np.array_equal(shifted - shift, logits)
    rest = case.inputs[1:]
    v0, g0 = _vg(loss, [logits, *rest], case.params)
    v1, g1 = _vg(loss, [shifted, *rest], case.params)
    scale = _scale(logits, shifted)
    c = logits.shape[axis]
    _close(v1, v0, scale, terms=c, what=f"value, {case.describe()}")
    for spec, a, b in zip(loss.inputs, g1, g0):
        if b is None:
            assert a is None
        else:
            _close(a, b, scale, terms=c, what=f"d/d{spec.name}, {case.describe()}")


# ------------------------------------------------------------------------------------------------
# Class-permutation equivariance.

PERMUTATION_LOSSES = ["cross_entropy", "multi_margin_loss", "multiclass_hinge_loss"]


@pytest.mark.parametrize("name", PERMUTATION_LOSSES)
@SETTINGS
@given(data=st.data())
def test_class_permutation_equivariance(name, data):
    loss = refloss.get(name)
    case = _case(data, loss)
    axis = _class_axis(case)
    logits, target = case.inputs
    params = dict(case.params)
    c = logits.shape[axis]
    perm = np.array(data.draw(st.permutations(range(c)), label="perm"))
    ignore = params.get("ignore_index")
    if ignore is not None and 0 <= ignore < c:
        # An ignored class index must stay the ignored one: make the permutation fix it.
        j = int(np.flatnonzero(perm == ignore)[0])
        perm[[j, ignore]] = perm[[ignore, j]]
    inverse = np.argsort(perm)  # new label of old class k
    p_logits = np.take(logits, perm, axis=axis)  # new class k is old class perm[k]
    ignored = target == ignore if ignore is not None else np.zeros(target.shape, bool)
    p_target = np.where(ignored, target, inverse[np.where(ignored, 0, target)])
    p_params = dict(params)
    if params.get("weight") is not None:
        p_params["weight"] = params["weight"][perm]
    # The relabelled problem is the same problem:
    picked_new = np.take_along_axis(p_logits, np.expand_dims(np.where(ignored, 0, p_target), axis), axis)
    picked_old = np.take_along_axis(logits, np.expand_dims(np.where(ignored, 0, target), axis), axis)
    keep = np.expand_dims(~ignored, axis)
    np.testing.assert_array_equal(picked_new[keep], picked_old[keep])
    v0, (g0, _) = _vg(loss, [logits, target], params)
    v1, (g1, t1) = _vg(loss, [p_logits, p_target], p_params)
    assert t1 is None
    scale = _scale(logits) * _scale(params.get("weight"))
    _close(v1, v0, scale, terms=c, what=f"value, {case.describe()} perm={perm}")
    _close(g1, np.take(g0, perm, axis=axis), scale, terms=c, what=f"gradient, {case.describe()} perm={perm}")
    for reduction in ("sum", "mean"):
        a = float(loss(p_logits, p_target, **{**p_params, "reduction": reduction}))
        b = float(loss(logits, target, **{**params, "reduction": reduction}))
        _close(a, b, scale, terms=c * v0.size, what=f"{reduction}, {case.describe()}")


# ------------------------------------------------------------------------------------------------
# Cross-entropy gradients sum to zero over the classes.

SMOOTHING = st.one_of(st.just(0.0), st.sampled_from([0.1, 1.0]), st.floats(0.0, 1.0))


@SETTINGS
@given(data=st.data(), label_smoothing=SMOOTHING)
def test_cross_entropy_gradient_rows_sum_to_zero(data, label_smoothing):
    loss = refloss.cross_entropy
    paths = [p for p in _paths(loss) if p["weight"] is None]
    case = _case(data, loss, paths=paths)
    params = {**case.params, "label_smoothing": label_smoothing, "reduction": "sum"}
    _, (g, _) = _vg(loss, case.inputs, params)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(np.sum(g, axis=_class_axis(case)), 0.0, rtol=0, atol=1e-12)


@SETTINGS
@given(data=st.data(), label_smoothing=SMOOTHING)
def test_softmax_cross_entropy_gradient_rows_sum_to_zero(data, label_smoothing):
    loss = refloss.softmax_cross_entropy
    paths = [p for p in _paths(loss) if p["weight"] is None]
    case = _case(data, loss, paths=paths)
    axis = _class_axis(case)
    np.testing.assert_allclose(np.sum(case.inputs[1], axis=axis), 1.0, rtol=0, atol=1e-14)  # target rows sum to 1
    params = {**case.params, "label_smoothing": label_smoothing, "reduction": "sum"}
    _, (g, _) = _vg(loss, case.inputs, params)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(np.sum(g, axis=axis), 0.0, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Finite on the domain, except where the mathematics is infinite.


def _math_infinite(loss, params, inputs):
    """Per differentiable input, where its derivative is mathematically infinite (``None``: nowhere).

    - ``kl_div``: ``d/dp [p log p] = log p + 1`` is ``-inf`` at ``p = 0`` (without ``log_target``, and not
      under ``convention='keras'``, whose clip makes it 0);
    - ``jensen_shannon_divergence``: ``d JS / d p_c = log(2 p_c / (p_c + q_c)) / 2`` is ``-inf`` at
      ``p_c = 0 < q_c`` (and likewise for ``q``; at ``p_c = q_c = 0`` both partials are finite);
    - ``binary_cross_entropy(clamp='none')``: ``d/dy = log(1 - p) - log p`` is infinite at ``p`` in {0, 1}.
    """
    out = {}
    if loss.name == "kl_div" and not params["log_target"] and params["convention"] == "torch":
        out["target"] = inputs[1] == 0
    if loss.name == "jensen_shannon_divergence":
        p, q = inputs
        out["p"] = (p == 0) & (q > 0)
        out["q"] = (q == 0) & (p > 0)
    if loss.name == "binary_cross_entropy" and params["clamp"] == "none":
        out["target"] = (inputs[0] == 0) | (inputs[0] == 1)
    return out


def _value_infinite(loss, params, inputs):
    """Where the unreduced value is mathematically infinite: exact BCE at ``p = 0, y > 0`` or ``p = 1, y < 1``."""
    if loss.name == "binary_cross_entropy" and params["clamp"] == "none":
        p, y = inputs
        return ((p == 0) & (y > 0)) | ((p == 1) & (y < 1))
    return None


def _check_finite(loss, case):
    params = {**case.params, "reduction": "none"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = np.asarray(loss(*case.inputs, **params))
        _, grads = _vg(loss, case.inputs, params)
    infinite = _value_infinite(loss, case.params, case.inputs)
    finite_value = np.isfinite(value) if infinite is None else np.isfinite(value) | infinite
    assert np.all(finite_value), f"{case.describe()}: non-finite value {value[~finite_value]}"
    if infinite is not None:
        assert np.all(np.isposinf(value[infinite]))
    exempt = _math_infinite(loss, case.params, case.inputs)
    for spec, x, g in zip(loss.inputs, case.inputs, grads):
        if g is None:
            continue
        assert g.shape == x.shape
        mask = exempt.get(spec.name)
        if mask is None:
            bad = ~np.isfinite(g)
        else:
            bad = ~np.isfinite(g) & ~mask
            assert np.all(np.isinf(g[mask])), f"{case.describe()}: d/d{spec.name} should be infinite at {np.argwhere(mask)}"
        assert not np.any(bad), (
            f"{case.describe()}: d/d{spec.name} non-finite where the derivative is finite, at "
            f"{spec.name}={x[bad][:4]}, others={[np.broadcast_to(o, x.shape)[bad][:4] for o in case.inputs if o.shape == x.shape and o is not x]}, "
            f"gradient={g[bad][:4]}"
        )
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], (
        f"{case.describe()}: RuntimeWarning on valid input: {[str(w.message) for w in caught]}"
    )


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("loss", CATALOG, ids=NAMES)
@SETTINGS
@given(seed=SEEDS)
@example(seed=0)
def test_finite_on_domain_at_defaults(loss, tag, seed):
    _check_finite(loss, cases.sample(loss, loss.defaults(), tag, np.random.default_rng(seed)))


@pytest.mark.parametrize("loss", CATALOG, ids=NAMES)
@SETTINGS
@given(data=st.data())
def test_finite_on_domain_on_every_parameter_path(loss, data):
    _check_finite(loss, _case(data, loss))


# ------------------------------------------------------------------------------------------------
# Identities between losses.


def _same(loss_a, inputs_a, params_a, loss_b, inputs_b, params_b, scale, terms, grads=True, what=""):
    va, ga = _vg(loss_a, inputs_a, {**params_a, "reduction": "none"})
    vb, gb = _vg(loss_b, inputs_b, {**params_b, "reduction": "none"})
    _close(va, vb, scale, terms, what=f"value {what}")
    if grads:
        for k, (a, b) in enumerate(zip(ga, gb)):
            if a is not None and b is not None:
                _close(a, b, scale, terms, what=f"gradient of input {k} {what}")
    return va, ga, vb, gb


@SETTINGS
@given(data=st.data())
def test_softplus_logsumexp_is_cross_entropy(data):
    # The 001 seed: softplus(LSE_{i != y} z_i - z_y) = -log softmax(z)_y.
    case = _case(data, refloss.softplus_logsumexp_loss)
    logits, target = case.inputs
    _, ga, _, gb = _same(
        refloss.softplus_logsumexp_loss, case.inputs, {}, refloss.cross_entropy, case.inputs, {},
        _scale(logits), logits.shape[1], what=case.describe(),
    )
    assert ga[1] is None and gb[1] is None


@given(
    data=st.data(),
    logits=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=2, max_side=6), elements=st.floats(-60, 60)),
)
@SETTINGS
def test_softplus_logsumexp_is_cross_entropy_on_drawn_logits(data, logits):
    n, c = logits.shape
    target = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    _same(refloss.softplus_logsumexp_loss, [logits, target], {}, refloss.cross_entropy, [logits, target], {}, _scale(logits), c)


@SETTINGS
@given(data=st.data())
def test_additive_margin_softplus_at_unit_scale_and_no_margin_is_cross_entropy(data):
    loss = refloss.additive_margin_softplus_loss
    paths = [{**loss.defaults(), "scale": 1.0, "margin": 0.0, "reduction": "none"}]
    case = _case(data, loss, paths=paths)
    _same(loss, case.inputs, case.params, refloss.cross_entropy, case.inputs, {},
          _scale(case.inputs[0]), case.inputs[0].shape[1], what=case.describe())


BETAS = st.one_of(st.sampled_from([0.3, 1.0, 4.0]), st.floats(1e-3, 1e3))


@SETTINGS
@given(data=st.data(), beta=BETAS)
def test_weighted_binary_cross_entropy_is_pos_weight(data, beta):
    loss = refloss.weighted_binary_cross_entropy
    case = _case(data, loss, paths=[{**loss.defaults(), "beta": beta, "reduction": "none"}])
    _same(loss, case.inputs, case.params, refloss.binary_cross_entropy_with_logits, case.inputs,
          {"pos_weight": np.asarray(beta)}, _scale(case.inputs[0]) * max(1.0, beta), 2, what=case.describe())


@SETTINGS
@given(data=st.data())
def test_sigmoid_focal_at_gamma_zero_without_alpha_is_bce_with_logits(data):
    loss = refloss.sigmoid_focal_loss
    case = _case(data, loss, paths=[{**loss.defaults(), "gamma": 0.0, "alpha": None, "reduction": "none"}])
    _, ga, _, gb = _same(loss, case.inputs, case.params, refloss.binary_cross_entropy_with_logits, case.inputs, {},
                         _scale(case.inputs[0]), 2, what=case.describe())
    assert ga[1] is None and gb[1] is not None  # the focal target is declared constant


@SETTINGS
@given(data=st.data())
def test_softmax_focal_at_gamma_zero_and_unit_alpha_is_cross_entropy(data):
    loss = refloss.softmax_focal_loss
    paths = [{**loss.defaults(), "gamma": 0.0, "alpha": 1.0, "axis": axis, "reduction": "none"} for axis in (1, -1)]
    case = _case(data, loss, paths=paths)
    _same(loss, case.inputs, case.params, refloss.cross_entropy, case.inputs, {"axis": case.params["axis"]},
          _scale(case.inputs[0]), case.inputs[0].shape[_class_axis(case)], what=case.describe())


@SETTINGS
@given(data=st.data(), eps=SMOOTHING, weighted=st.booleans())
def test_label_smoothing_is_a_smoothed_one_hot_target(data, eps, weighted):
    ce = refloss.cross_entropy
    sce = refloss.softmax_cross_entropy
    case = _case(data, ce, paths=[p for p in _paths(ce) if p["weight"] is None and p["ignore_index"] == -100])
    logits, target = case.inputs
    axis = _class_axis(case)
    c = logits.shape[axis]
    kept = target != case.params["ignore_index"]
    hot = np.moveaxis(np.eye(c)[np.where(kept, target, 0)], -1, axis)
    smoothed = (1 - eps) * hot + eps / c
    weight = np.random.default_rng(data.draw(SEEDS)).uniform(0.2, 3.0, size=c) if weighted else None
    common = {"axis": case.params["axis"], "weight": weight}
    scale = _scale(logits) * _scale(weight)

    v_ce, (g_ce, _) = _vg(ce, [logits, target], {**common, "label_smoothing": eps, "reduction": "none"})
    v_s, (g_s, _) = _vg(sce, [logits, smoothed], {**common, "label_smoothing": 0.0, "reduction": "none"})
    v_h, (g_h, _) = _vg(sce, [logits, hot], {**common, "label_smoothing": eps, "reduction": "none"})
    assert np.all(v_ce[~kept] == 0.0)
    rows = np.expand_dims(kept, axis)
    for v, g, label in ((v_s, g_s, "smoothed target"), (v_h, g_h, "one-hot target, smoothing")):
        _close(v_ce[kept], v[kept], scale, terms=c, what=f"value vs {label}, {case.describe()}")
        _close(np.where(rows, g_ce, 0.0), np.where(rows, g, 0.0), scale, terms=c, what=f"gradient vs {label}, {case.describe()}")
    assert np.all(np.where(rows, 0.0, g_ce) == 0.0)  # ignored samples have no gradient
    if not weighted and kept.all():
        # Unweighted and nothing ignored, the means agree too (PyTorch's two paths).
        _close(ce(logits, target, label_smoothing=eps, axis=case.params["axis"]),
               sce(logits, smoothed, axis=case.params["axis"]), scale, terms=c)
