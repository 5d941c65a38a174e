"""Input validation: each rule once, up front, shared by every loss (DESIGN.md, "Bad input").

Every bad call raises ``ValueError`` or ``TypeError`` whose message names the loss, the argument, what
was expected and what was given. The rules live in ``refloss/loss.py`` (``_bind``, ``_check_*``,
``_match_shape``, ``_validate``); a test per rule, with explicit calls for the cases the design names
and catalogue-wide sweeps so that a newly registered loss is checked with no new code.

Two conventions are checked here too because they are the *absence* of an error: every target
ignored under ``mean`` gives NaN (PyTorch), and NaN in the inputs propagates (never hidden, never an
exception).
"""

from __future__ import annotations

import math
import re
import warnings

import array_api_strict
import numpy as np
import pytest

import refloss
from refloss import cases
from refloss.loss import REDUCTIONS, SAMPLE

CATALOG = refloss.catalog()
NAMES = [l.name for l in CATALOG]
MEAN_LIKE = ("mean", "batchmean", "sum_over_batch_size")


def _sample(loss, tag="typical", seed=0, **params):
    """Valid NumPy inputs for ``loss`` at its defaults overridden by ``params``."""
    return cases.sample(loss, {**loss.defaults(), **params}, tag, np.random.default_rng(seed))


def _call_args(case):
    return list(case.inputs), dict(case.params)


def _names(loss, *parts):
    """A regex requiring every part (escaped) to appear, in any order, after the loss's name."""
    look = "".join(f"(?=.*{re.escape(str(p))})" for p in parts)
    return rf"^{re.escape(loss.name)}: {look}"


def _entry_points(loss):
    """Every public way to evaluate a loss: each must validate the same way."""
    return {
        "call": loss,
        "value_and_grad": loss.value_and_grad,
        "unreduced": loss.unreduced,
    }


def _raises_everywhere(loss, exc, pattern, inputs, params):
    for fn in _entry_points(loss).values():
        with pytest.raises(exc, match=pattern):
            fn(*inputs, **params)


Z = np.array([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4], [-3.0, 1.0, 0.0, 2.0]])  # N=3, C=4
Y = np.array([0, 3, 2])


# ------------------------------------------------------------------------------------------------
# Non-floating inputs.


def test_integer_logits_raise_type_error_naming_dtype():
    with pytest.raises(TypeError, match=r"^cross_entropy: logits must be a real floating array, got dtype int64$"):
        refloss.cross_entropy(Z.astype(np.int64), Y)


def test_boolean_input_raises_type_error():
    with pytest.raises(TypeError, match=_names(refloss.binary_cross_entropy, "input", "floating", "bool")):
        refloss.binary_cross_entropy(np.array([True, False]), np.array([1.0, 0.0]))


@pytest.mark.parametrize("loss", CATALOG, ids=NAMES)
def test_every_float_input_rejects_integer_dtype(loss):
    case = _sample(loss)
    for k, spec in enumerate(loss.inputs):
        if spec.dtype != "float":
            continue
        inputs, params = _call_args(case)
        inputs[k] = np.round(inputs[k]).astype(np.int64)
        _raises_everywhere(loss, TypeError, _names(loss, spec.name, "real floating", "int64"), inputs, params)


# ------------------------------------------------------------------------------------------------
# Float labels where class indices are needed.


def test_nll_loss_rejects_float_labels():
    log_probs = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
    with pytest.raises(TypeError, match=_names(refloss.nll_loss, "target", "integer array", "float64")):
        refloss.nll_loss(log_probs, Y.astype(np.float64))


@pytest.mark.parametrize(
    "loss", [l for l in CATALOG if l.route is None and any(i.dtype == "int" for i in l.inputs)], ids=lambda l: l.name
)
def test_integer_inputs_reject_float_dtype_without_routing(loss):
    case = _sample(loss)
    for k, spec in enumerate(loss.inputs):
        if spec.dtype != "int":
            continue
        inputs, params = _call_args(case)
        inputs[k] = inputs[k].astype(np.float64)
        _raises_everywhere(loss, TypeError, _names(loss, spec.name, "integer array", "float64"), inputs, params)


def test_cross_entropy_routes_float_targets_and_validates_them_there():
    # PyTorch dispatch: a floating target means probabilities of the logits' shape.
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: target must be of shape \(N=3, C=4\), got shape \(3,\)"):
        refloss.cross_entropy(Z, Y.astype(np.float64))
    probs = np.full((3, 4), 0.25)
    assert refloss.cross_entropy(Z, probs) == refloss.softmax_cross_entropy(Z, probs)


def test_cross_entropy_float_target_with_ignore_index_is_an_error():
    probs = np.full((3, 4), 0.25)
    pattern = r"^cross_entropy: ignore_index must be left at -100 with probability targets .*got 3$"
    with pytest.raises(ValueError, match=pattern):
        refloss.cross_entropy(Z, probs, ignore_index=3)
    with pytest.raises(ValueError, match=pattern):
        refloss.cross_entropy.value_and_grad(Z, probs, ignore_index=3)
    # Left at its default it is fine (and dropped on the way to softmax_cross_entropy).
    assert np.isfinite(refloss.cross_entropy(Z, probs, ignore_index=-100))


# ------------------------------------------------------------------------------------------------
# Shapes.


@pytest.mark.parametrize(
    "target, shown",
    [(np.array([0, 1]), r"\(2,\)"), (np.array([[0, 1, 2]]), r"\(1, 3\)"), (np.array([[0], [1], [2]]), r"\(3, 1\)")],
)
def test_cross_entropy_target_shape_mismatch(target, shown):
    pattern = rf"^cross_entropy: target must be of shape \(N=3\), got shape {shown}$"
    _raises_everywhere(refloss.cross_entropy, ValueError, pattern, [Z, target], {})


def test_elementwise_shape_mismatch_names_both_shapes():
    pattern = r"^binary_cross_entropy_with_logits: target must be of shape \(3\), got shape \(2,\)$"
    with pytest.raises(ValueError, match=pattern):
        refloss.binary_cross_entropy_with_logits(np.zeros(3), np.zeros(2))


def test_class_axis_loss_needs_two_dimensional_input():
    pattern = r"^cross_entropy: logits must be at least 2-D .*got shape \(4,\)$"
    with pytest.raises(ValueError, match=pattern):
        refloss.cross_entropy(np.zeros(4), np.array(1))


@pytest.mark.parametrize("loss", CATALOG, ids=NAMES)
def test_every_loss_rejects_a_shape_mismatch(loss):
    inputs, params = _call_args(_sample(loss, seed=1))
    assert len(inputs) >= 2
    bad = inputs[1][:-1]  # one fewer along the first axis: never matches (N or *) of the first input
    inputs[1] = bad
    pattern = _names(loss, loss.inputs[1].name, "must be of shape", f"got shape {tuple(bad.shape)}")
    _raises_everywhere(loss, ValueError, pattern, inputs, params)


# ------------------------------------------------------------------------------------------------
# Labels out of range (ignore_index excepted).


@pytest.mark.parametrize(
    "target, bad, span", [(np.array([0, 4, 2]), "4", r"\[0\.0, 4\.0\]"), (np.array([0, -1, 2]), "-1", r"\[-1\.0, 2\.0\]")]
)
def test_cross_entropy_labels_out_of_range(target, bad, span):
    pattern = rf"^cross_entropy: target must be class indices in \[0, 4\) or -100, got {bad} \(values in {span}\)$"
    _raises_everywhere(refloss.cross_entropy, ValueError, pattern, [Z, target], {})


@pytest.mark.parametrize("ignore_index", [-100, -7, 7, 4, 1000, 1])
def test_ignore_index_is_accepted_inside_or_outside_the_class_range(ignore_index):
    target = np.array([0, ignore_index, 2])
    full = refloss.cross_entropy(Z, target, ignore_index=ignore_index, reduction="none")
    assert full.shape == (3,)
    assert full[1] == 0.0
    assert np.all(np.isfinite(full))
    reference = refloss.cross_entropy(Z[[0, 2]], np.array([0, 2]), reduction="sum")
    assert refloss.cross_entropy(Z, target, ignore_index=ignore_index, reduction="sum") == pytest.approx(reference, rel=1e-15)
    log_probs = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
    assert refloss.nll_loss(log_probs, target, ignore_index=ignore_index, reduction="none")[1] == 0.0


def test_ignore_index_exempts_only_its_own_value():
    # ignore_index=7 allows 7, not -100 (the default's value) nor any other out-of-range label.
    pattern = r"^cross_entropy: target must be class indices in \[0, 4\) or 7, got -100 \(values in \[-100\.0, 2\.0\]\)$"
    with pytest.raises(ValueError, match=pattern):
        refloss.cross_entropy(Z, np.array([0, -100, 2]), ignore_index=7)
    with pytest.raises(ValueError, match=r"or 7, got 5 \(values in \[0\.0, 7\.0\]\)"):
        refloss.cross_entropy(Z, np.array([0, 5, 7]), ignore_index=7)


def _declared_size(loss, case, dim):
    """The size of the named dimension ``dim``, read from the first input whose shape pattern declares it
    (``C`` is axis 1 of ``logits (N, C, *)`` but axis 0 of ``weights (C, D)``)."""
    for spec, x in zip(loss.inputs, case.inputs):
        tokens = spec.shape.split()
        if dim in tokens and "*" not in tokens[: tokens.index(dim)]:
            return x.shape[tokens.index(dim)]
    raise AssertionError(f"{loss.name}: no input declares dimension {dim!r}")


@pytest.mark.parametrize("loss", [l for l in CATALOG if any(i.classes for i in l.inputs)], ids=lambda l: l.name)
@pytest.mark.parametrize("offset", ["too_high", "too_low"])
def test_every_label_input_rejects_out_of_range_labels(loss, offset):
    case = _sample(loss)
    k, spec = next((k, s) for k, s in enumerate(loss.inputs) if s.classes)
    inputs, params = _call_args(case)
    num_classes = _declared_size(loss, case, spec.classes)
    bad_value = num_classes if offset == "too_high" else -2  # -1 is multilabel padding; -100 the default ignore
    labels = inputs[k].copy()
    labels.flat[0] = bad_value
    inputs[k] = labels
    pattern = _names(loss, spec.name, f"class indices in [0, {num_classes})", f"{float(bad_value)!r}")
    _raises_everywhere(loss, ValueError, pattern, inputs, params)


def test_multilabel_margin_target_below_minus_one():
    target = np.array([[0, -1, -1, -1], [1, -2, -1, -1], [0, 1, 2, 3]])
    pattern = r"^multilabel_margin_loss: target must be class indices in \[0, 4\) or -1, got -2 \(values in \[-2\.0, 3\.0\]\)$"
    _raises_everywhere(refloss.multilabel_margin_loss, ValueError, pattern, [Z, target], {})
    # -1 padding (and anything after it) is fine.
    ok = refloss.multilabel_margin_loss(Z, np.array([[0, -1, -1, -1], [1, -1, 3, -1], [0, 1, 2, 3]]), reduction="none")
    assert ok.shape == (3,) and np.all(np.isfinite(ok))


@pytest.mark.parametrize(
    "loss", [l for l in CATALOG if l.check is not None and l.inputs[0].shape.startswith("N C")], ids=lambda l: l.name
)
def test_margin_losses_need_two_classes(loss):
    inputs, params = _call_args(_sample(loss))
    inputs[0] = inputs[0][:, :1]
    inputs[1] = np.zeros_like(inputs[1])
    with pytest.raises(ValueError, match=_names(loss, loss.inputs[0].name, "at least 2 classes", f"got shape {tuple(inputs[0].shape)}")):
        loss(*inputs, **params)


# ------------------------------------------------------------------------------------------------
# Values outside the declared domain.


@pytest.mark.parametrize(
    "arg, p, y, bad, span",
    [
        ("input", [0.5, 1.5], [0.0, 1.0], r"1\.5", r"\[0\.5, 1\.5\]"),
        ("input", [-0.1, 0.5], [0.0, 1.0], r"-0\.1", r"\[-0\.1, 0\.5\]"),
        ("target", [0.5, 0.5], [0.0, -1.0], r"-1\.0", r"\[-1\.0, 0\.0\]"),
        ("target", [0.5, 0.5], [2.0, 1.0], r"2\.0", r"\[1\.0, 2\.0\]"),
    ],
)
def test_binary_cross_entropy_probabilities_outside_unit_interval(arg, p, y, bad, span):
    pattern = rf"^binary_cross_entropy: {arg} must be in \[0\.0, 1\.0\], got {bad} \(values in {span}\)$"
    _raises_everywhere(refloss.binary_cross_entropy, ValueError, pattern, [np.array(p), np.array(y)], {})


@pytest.mark.parametrize("loss", [l for l in CATALOG if any(i.values for i in l.inputs)], ids=lambda l: l.name)
def test_every_bounded_input_rejects_values_below_its_range(loss):
    case = _sample(loss)
    for k, spec in enumerate(loss.inputs):
        if spec.values is None:
            continue
        low, _ = spec.values
        inputs, params = _call_args(case)
        bad = inputs[k].copy()
        bad.flat[0] = low - 0.5
        inputs[k] = bad
        _raises_everywhere(loss, ValueError, _names(loss, spec.name, f"in [{low}", f"{low - 0.5!r}"), inputs, params)


# ------------------------------------------------------------------------------------------------
# Reduction, unknown or missing arguments.


def test_unknown_reduction_raises_value_error():
    pattern = r"^cross_entropy: reduction must be one of 'none', 'mean', 'sum', 'batchmean', 'sum_over_batch_size', got 'avg'$"
    _raises_everywhere(refloss.cross_entropy, ValueError, pattern, [Z, Y], {"reduction": "avg"})


def test_reduction_of_wrong_type_raises_type_error():
    with pytest.raises(TypeError, match=r"^cross_entropy: reduction must be one of .*got None$"):
        refloss.cross_entropy(Z, Y, reduction=None)


def test_unknown_keyword_raises_type_error_listing_valid_ones():
    pattern = r"^cross_entropy: unknown argument 'gamma'; valid arguments are logits, target, weight, ignore_index, label_smoothing, axis, reduction$"
    _raises_everywhere(refloss.cross_entropy, TypeError, pattern, [Z, Y], {"gamma": 2.0})


def test_missing_input_raises_type_error():
    with pytest.raises(TypeError, match=r"^cross_entropy: missing input\(s\) target$"):
        refloss.cross_entropy(Z)
    with pytest.raises(TypeError, match=r"^cross_entropy: missing input\(s\) logits$"):
        refloss.cross_entropy(target=Y)


def test_too_many_positional_or_duplicated_inputs():
    with pytest.raises(TypeError, match=r"^cross_entropy: takes 2 array inputs \(logits, target\), got 3 positional arguments$"):
        refloss.cross_entropy(Z, Y, np.ones(4))
    with pytest.raises(TypeError, match=r"^cross_entropy: got target both positionally and by keyword$"):
        refloss.cross_entropy(Z, Y, target=Y)


def test_inputs_by_keyword_are_accepted():
    assert refloss.cross_entropy(logits=Z, target=Y) == refloss.cross_entropy(Z, Y)


@pytest.mark.parametrize("loss", CATALOG, ids=NAMES)
def test_every_loss_rejects_unknown_keyword_and_reduction(loss):
    inputs, params = _call_args(_sample(loss))
    pattern = rf"^{re.escape(loss.name)}: unknown argument 'not_a_parameter'"
    _raises_everywhere(loss, TypeError, pattern, inputs, {**params, "not_a_parameter": 1})
    pattern = _names(loss, "reduction", "one of", "'average'")
    _raises_everywhere(loss, ValueError, pattern, inputs, {**params, "reduction": "average"})
    # ... while every documented reduction is accepted.
    for reduction in REDUCTIONS:
        out = np.asarray(loss(*inputs, **{**params, "reduction": reduction}))
        if reduction == "none":
            assert out.ndim == 0 or out.shape[0] == inputs[0].shape[0]  # 0-d: one loss per batch (range_loss)
        else:
            assert out.shape == ()


# ------------------------------------------------------------------------------------------------
# Parameters: type and range.


@pytest.mark.parametrize(
    "loss, params, pattern",
    [
        (refloss.cross_entropy, {"label_smoothing": "x"}, r"label_smoothing must be a real number in \[0\.0, 1\.0\], got 'x' \(str\)"),
        (refloss.cross_entropy, {"ignore_index": 1.5}, r"ignore_index must be an integer .*got 1\.5 \(float\)"),
        (refloss.cross_entropy, {"ignore_index": True}, r"ignore_index must be an integer .*got True \(bool\)"),
        (refloss.cross_entropy, {"axis": 1.0}, r"axis must be an integer .*got 1\.0 \(float\)"),
        (refloss.sigmoid_focal_loss, {"gamma": None}, r"gamma must be a real number in \[0\.0, inf\), got None"),
        (refloss.sigmoid_focal_loss, {"gamma": np.array([2.0])}, r"gamma must be a real number .*got array"),
    ],
)
def test_parameter_of_wrong_type_raises_type_error(loss, params, pattern):
    inputs = [Z, Y] if loss is refloss.cross_entropy else [Z, np.ones_like(Z)]
    _raises_everywhere(loss, TypeError, rf"^{loss.name}: {pattern}", inputs, params)


def test_bool_parameter_rejects_integers():
    p = np.full((2, 3), 1 / 3)
    with pytest.raises(TypeError, match=r"^kl_div: log_target must be True or False, got 1$"):
        refloss.kl_div(np.log(p), p, log_target=1)
    # accepted as a bool: a case whose exact value is 0 in any libm (log 1 = 0; KL of p with the
    # rounded np.log(p) is p (log p - fl(log p)), which depends on how this CPU's np.log rounds)
    ones = np.ones((2, 3))
    assert refloss.kl_div(np.log(ones), ones, log_target=False) == 0.0


def test_nullable_parameter_accepts_none():
    value = refloss.sigmoid_focal_loss(Z, np.ones_like(Z), alpha=None)
    assert np.isfinite(value)


@pytest.mark.parametrize(
    "loss, params, pattern",
    [
        (refloss.cross_entropy, {"label_smoothing": 1.5}, r"label_smoothing must be a real number in \[0\.0, 1\.0\], got 1\.5"),
        (refloss.cross_entropy, {"label_smoothing": -0.1}, r"label_smoothing must be a real number in \[0\.0, 1\.0\], got -0\.1"),
        (refloss.cross_entropy, {"label_smoothing": math.nan}, r"label_smoothing must be .*got nan"),
        (refloss.sigmoid_focal_loss, {"gamma": -1}, r"gamma must be a real number in \[0\.0, inf\), got -1"),
        (refloss.sigmoid_focal_loss, {"gamma": math.inf}, r"gamma must be a real number in \[0\.0, inf\), got inf"),
        (refloss.sigmoid_focal_loss, {"alpha": 1.5}, r"alpha must be a real number in \[0\.0, 1\.0\] or None, got 1\.5"),
        (refloss.weighted_binary_cross_entropy, {"beta": 0}, r"beta must be a real number in \(0\.0, inf\), got 0"),
        (refloss.multiclass_hinge_loss, {"margin": -1.0}, r"margin must be a real number in \[0\.0, inf\), got -1\.0"),
        (refloss.additive_margin_softplus_loss, {"scale": 0.0}, r"scale must be a real number in \(0\.0, inf\), got 0\.0"),
        (refloss.multi_margin_loss, {"p": 3}, r"p must be one of 1, 2, got 3"),
        (refloss.binary_cross_entropy, {"clamp": "tf"}, r"clamp must be one of 'torch', 'keras', 'none', got 'tf'"),
    ],
)
def test_parameter_out_of_range_raises_value_error(loss, params, pattern):
    inputs, _ = _call_args(_sample(loss))
    _raises_everywhere(loss, ValueError, rf"^{loss.name}: {pattern}$", inputs, params)


def _bad_values(p):
    """``(exception, value)`` pairs that every parameter declared like ``p`` must reject."""
    out = []
    if p.kind == "real":
        out.append((TypeError, "x"))
        out.append((ValueError, math.nan))
        if p.low is not None:
            out.append((ValueError, p.low if p.low_open else p.low - 0.5))
        if p.high is not None:
            out.append((ValueError, p.high if p.high_open else p.high + 0.5))
    elif p.kind == "int":
        out.append((TypeError, 1.5))
        out.append((TypeError, True))
    elif p.kind == "bool":
        out.append((TypeError, 1))
    elif p.kind == "choice":
        out.append((ValueError, "no_such_choice"))
    return out


PARAM_CASES = [
    (l, p, exc, v)
    for l in CATALOG
    for p in l.params
    if p.kind != "array"
    for exc, v in _bad_values(p)
]


@pytest.mark.parametrize(
    "loss, param, exc, value", PARAM_CASES, ids=[f"{l.name}-{p.name}-{v!r}" for l, p, _, v in PARAM_CASES]
)
def test_every_declared_parameter_is_checked(loss, param, exc, value):
    inputs, params = _call_args(_sample(loss))
    shown = f"{value!r} ({type(value).__name__})" if exc is TypeError and param.kind in ("real", "int") else repr(value)
    pattern = _names(loss, f"{param.name} must be", param.describe_range(), f"got {shown}")
    _raises_everywhere(loss, exc, pattern, inputs, {**params, param.name: value})


# ------------------------------------------------------------------------------------------------
# Array parameters (class weights).


def test_class_weight_of_wrong_shape():
    pattern = r"^cross_entropy: weight must be of shape \(C=4\), got shape \(3,\)$"
    _raises_everywhere(refloss.cross_entropy, ValueError, pattern, [Z, Y], {"weight": np.ones(3)})
    with pytest.raises(ValueError, match=r"^cross_entropy: weight must be of shape \(C=4\), got shape \(1, 4\)$"):
        refloss.cross_entropy(Z, Y, weight=np.ones((1, 4)))


def test_class_weight_non_floating():
    pattern = r"^cross_entropy: weight must be a real floating array, got dtype int64$"
    _raises_everywhere(refloss.cross_entropy, TypeError, pattern, [Z, Y], {"weight": np.ones(4, dtype=np.int64)})


def test_class_weight_negative():
    pattern = r"^cross_entropy: weight must be in \[0\.0, inf\], got -1\.0 \(values in \[-1\.0, 1\.0\]\)$"
    _raises_everywhere(refloss.cross_entropy, ValueError, pattern, [Z, Y], {"weight": np.array([1.0, -1.0, 1.0, 1.0])})


def test_broadcast_weight_must_broadcast():
    pattern = r"^binary_cross_entropy: weight must be broadcastable to \(3,\), got shape \(4,\)$"
    with pytest.raises(ValueError, match=pattern):
        refloss.binary_cross_entropy(np.full(3, 0.5), np.ones(3), weight=np.ones(4))


ARRAY_PARAM_CASES = [(l, p) for l in CATALOG for p in l.params if p.kind == "array"]


@pytest.mark.parametrize("loss, param", ARRAY_PARAM_CASES, ids=[f"{l.name}-{p.name}" for l, p in ARRAY_PARAM_CASES])
def test_every_array_parameter_is_checked(loss, param):
    case = cases.sample(loss, {**loss.defaults(), param.name: SAMPLE}, "typical", np.random.default_rng(2))
    inputs, params = _call_args(case)
    good = params[param.name]
    assert np.all(np.isfinite(np.asarray(loss(*inputs, **params))))
    # non-floating
    _raises_everywhere(
        loss, TypeError, _names(loss, param.name, "real floating", "int64"), inputs, {**params, param.name: np.ones(good.shape, dtype=np.int64)}
    )
    # wrong shape
    bad = np.ones(good.shape[:-1] + (good.shape[-1] + 1,))
    _raises_everywhere(loss, ValueError, _names(loss, param.name, f"got shape {tuple(bad.shape)}"), inputs, {**params, param.name: bad})
    # below its bound
    if param.low is not None:
        neg = good.copy()
        neg.flat[0] = param.low - 1.0
        _raises_everywhere(loss, ValueError, _names(loss, param.name, f"in [{param.low}", f"{param.low - 1.0!r}"), inputs, {**params, param.name: neg})


# ------------------------------------------------------------------------------------------------
# Non-arrays and mixed array libraries.


def test_python_scalar_input_raises_type_error_naming_it():
    pattern = r"^soft_margin_loss: target must be an array \(NumPy, CuPy, array-api-strict, \.\.\.\), got float$"
    with pytest.raises(TypeError, match=pattern):
        refloss.soft_margin_loss(np.array([1.0]), 1.0)


def test_no_array_at_all_raises_type_error():
    with pytest.raises(TypeError, match=r"^soft_margin_loss: input must be an array .*, got float$"):
        refloss.soft_margin_loss(1.0, 1.0)


@pytest.mark.parametrize(
    "args, kwargs, arg",
    [
        (([[2.0, 0.5], [0.0, 1.0]], np.array([0, 1])), {}, "logits"),
        ((np.zeros((3, 4)), [0, 3, 2]), {}, "target"),
        ((np.zeros((3, 4)), np.array([0, 3, 2])), {"weight": [1.0, 1.0, 1.0, 1.0]}, "weight"),
    ],
    ids=["list-logits", "list-target", "list-weight"],
)
def test_list_instead_of_array_names_the_loss_and_argument(args, kwargs, arg):
    # loss.py has dedicated messages ("<loss>: <arg> must be an array, got list" and the weight's
    # "must be a floating array ... got list"); the contract is that the message names the loss,
    # the argument and what was given.
    with pytest.raises(TypeError, match=_names(refloss.cross_entropy, arg, "list")):
        refloss.cross_entropy(*args, **kwargs)


def test_mixed_array_libraries_raise_type_error():
    strict_target = array_api_strict.asarray(Y)
    with pytest.raises(TypeError, match=r"one array library.*array_api_strict.*numpy"):
        refloss.cross_entropy(Z, strict_target)
    with pytest.raises(TypeError, match=r"one array library.*array_api_strict.*numpy"):
        refloss.cross_entropy(Z, Y, weight=array_api_strict.asarray(np.ones(4)))
    # One library throughout is fine.
    out = refloss.cross_entropy(array_api_strict.asarray(Z), strict_target)
    assert float(out) == pytest.approx(float(refloss.cross_entropy(Z, Y)), rel=1e-15)


def test_mixed_array_libraries_message_names_the_loss():
    with pytest.raises(TypeError, match=r"^cross_entropy: .*array_api_strict.*numpy"):
        refloss.cross_entropy(Z, array_api_strict.asarray(Y))


# ------------------------------------------------------------------------------------------------
# Empty batches.


@pytest.mark.parametrize("loss", CATALOG, ids=NAMES)
def test_empty_batch_under_a_mean_is_an_error(loss):
    inputs, params = _call_args(_sample(loss))
    empty = [x[:0] for x in inputs]
    for reduction in MEAN_LIKE:
        pattern = _names(loss, loss.inputs[0].name, "non-empty", repr(reduction), f"got shape {tuple(empty[0].shape)}")
        _raises_everywhere(loss, ValueError, pattern, empty, {**params, "reduction": reduction})


@pytest.mark.parametrize("loss", CATALOG, ids=NAMES)
def test_empty_batch_under_none_and_sum_is_fine(loss):
    inputs, params = _call_args(_sample(loss))
    empty = [x[:0] for x in inputs]
    none = loss(*empty, **{**params, "reduction": "none"})
    assert (none.shape[0] == 0 and none.size == 0) if none.ndim else none == 0.0
    assert loss(*empty, **{**params, "reduction": "sum"}) == 0.0
    value, grads = loss.value_and_grad(*empty, **{**params, "reduction": "sum"})
    assert value == 0.0
    for spec, x, g in zip(loss.inputs, empty, grads):
        if spec.differentiable:
            assert g.shape == x.shape
        else:
            assert g is None


# ------------------------------------------------------------------------------------------------
# The class axis.


@pytest.mark.parametrize("loss", [l for l in CATALOG if l.class_axis], ids=lambda l: l.name)
def test_class_axis_must_not_be_the_batch_axis_or_out_of_range(loss):
    inputs, params = _call_args(_sample(loss))
    ndim = inputs[0].ndim
    for axis in (0, -ndim, ndim, ndim + 3):
        pattern = _names(loss, "axis must be a class axis", f"got {axis}")
        _raises_everywhere(loss, ValueError, pattern, inputs, {**params, "axis": axis})


def test_cross_entropy_axis_zero_message():
    pattern = r"^cross_entropy: axis must be a class axis in \[1, 2\) or \[-1, -1\] \(0 is the batch\), got 0$"
    _raises_everywhere(refloss.cross_entropy, ValueError, pattern, [Z, Y], {"axis": 0})


def test_class_axis_last_is_validated_after_the_move():
    # (N, *, C) with axis=-1: the label range is C (last dim), not the size of dim 1.
    logits = np.zeros((2, 5, 3))
    target = np.array([[0, 1, 2, 0, 1], [2, 2, 1, 0, 0]])
    assert refloss.cross_entropy(logits, target, axis=-1) == pytest.approx(math.log(3), rel=1e-15)
    with pytest.raises(ValueError, match=r"^cross_entropy: target must be class indices in \[0, 3\) or -100, got 3 \(values in \[0\.0, 3\.0\]\)$"):
        refloss.cross_entropy(logits, np.where(target == 2, 3, target), axis=-1)


# ------------------------------------------------------------------------------------------------
# Not errors: every target ignored, and NaN in the inputs.


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
def test_all_targets_ignored_under_mean_is_nan_not_an_error(name):
    loss = refloss.get(name)
    ignored = np.full(3, -100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN by definition, without a floating-point warning
        assert math.isnan(float(loss(Z, ignored)))
        assert math.isnan(float(loss(Z, np.array([1, 1, 1]), ignore_index=1)))
        # Zero weight on every present target: the weighted mean is 0/0 too.
        assert math.isnan(float(loss(Z, Y, weight=np.array([0.0, 1.0, 0.0, 0.0]))))
        assert loss(Z, ignored, reduction="sum") == 0.0
        assert np.all(loss(Z, ignored, reduction="none") == 0.0)
        assert loss(Z, ignored, reduction="sum_over_batch_size") == 0.0
        assert loss(Z, ignored, reduction="batchmean") == 0.0


def test_nan_in_logits_propagates_to_its_own_sample_only():
    logits = Z.copy()
    logits[1, 2] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy may warn on NaN; the value is what counts here
        out = refloss.cross_entropy(logits, Y, reduction="none")
        assert math.isnan(out[1])
        assert np.all(np.isfinite(out[[0, 2]]))
        assert math.isnan(float(refloss.cross_entropy(logits, Y)))
        value, (g, _) = refloss.value_and_grad(refloss.cross_entropy, logits, Y, reduction="none")
        assert np.all(np.isnan(g[1])) and np.all(np.isfinite(g[[0, 2]]))


def test_nan_probability_passes_validation_and_propagates():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = refloss.binary_cross_entropy(np.array([0.5, np.nan]), np.array([1.0, 1.0]), reduction="none")
    assert math.isnan(out[1]) and out[0] == pytest.approx(math.log(2), rel=1e-15)


FLOAT_INPUTS = [(l, k) for l in CATALOG for k, s in enumerate(l.inputs) if s.dtype == "float"]


@pytest.mark.parametrize("loss, k", FLOAT_INPUTS, ids=[f"{l.name}-{l.inputs[k].name}" for l, k in FLOAT_INPUTS])
def test_nan_input_propagates_for_every_loss(loss, k):
    """An all-NaN float input gives a NaN loss, with no exception (DESIGN: never hidden)."""
    inputs, params = _call_args(_sample(loss, seed=3))
    inputs[k] = np.full_like(inputs[k], np.nan)
    with warnings.catch_warnings():
        # Whether numpy warns on NaN operands is not the point here: the value must be NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.asarray(loss(*inputs, **{**params, "reduction": "none"}))
        total = float(loss(*inputs, **{**params, "reduction": "sum"}))
        loss.value_and_grad(*inputs, **{**params, "reduction": "sum"})
    assert np.any(np.isnan(out)), f"{loss.name}: NaN in {loss.inputs[k].name} was hidden: {out!r}"
    assert math.isnan(total)
