"""Classification losses: softmax cross-entropy and its relatives, sigmoid losses, focal losses,
divergences, the hinge-to-cross-entropy chain of the 001 seed, and PyTorch's margin losses.

Layout convention: class scores are ``(N, C, *)`` (class axis 1, as PyTorch); losses that take an
``axis`` parameter accept the class axis anywhere (optax and Keras use ``axis=-1``). Every forward
returns the unreduced loss; every VJP is derived by hand, in closed form, and stated in the
docstring.
"""

from __future__ import annotations

import math

import array_api_compat

from .. import domains as D
from ..loss import SAMPLE, Input, Param, loss
from .distribution import smooth_labels
from ..xp import (
    saturated_softmax,
    is_floating,
    log1m,
    log_softmax,
    logsumexp,
    namespace,
    one_hot,
    safe_log,
    sigmoid,
    softmax,
    softmax_complement,
    softplus,
    take_along_axis,
    two_prod,
    two_sum,
    xmul,
)

# ------------------------------------------------------------------------------------------------
# Shared declarations and helpers (each written once, used by several losses).

_SCORES = Input("logits", shape="N C *", domain=D.logits, doc="unnormalised class scores")
_LABELS = Input(
    "target", dtype="int", shape="N *", differentiable=False, classes="C", ignore="ignore_index",
    domain=D.class_indices, doc="class indices",
)
_LABELS_NO_IGNORE = Input(
    "target", dtype="int", shape="N *", differentiable=False, classes="C", domain=D.class_indices,
    doc="class indices",
)
_CLASS_WEIGHT = Param(
    "weight", None, kind="array", shape="C", nullable=True, low=0.0, grid=(SAMPLE,), domain=D.class_weights,
    doc="per-class weight w_c (PyTorch `weight`)",
)
_IGNORE_INDEX = Param("ignore_index", -100, kind="int", grid=(1,), doc="target value that contributes nothing")
_SMOOTHING = Param("label_smoothing", 0.0, low=0.0, high=1.0, grid=(0.1,), doc="epsilon: targets become (1-eps) y + eps/C")
_AXIS = Param("axis", 1, kind="int", grid=(-1,), doc="class axis (PyTorch 1; optax and Keras -1)")
_BINARY_SMOOTHING = Param(
    "label_smoothing", 0.0, low=0.0, high=1.0, grid=(0.2,),
    doc="Keras style: targets move towards 0.5, (1-eps) y + eps/2",
)
_ELEMENT_WEIGHT = Param(
    "weight", None, kind="array", shape="broadcast", nullable=True, low=0.0, grid=(SAMPLE,),
    domain=D.class_weights, doc="rescaling weight broadcast to the input",
)


def _per_class(xp, weight, like):
    """Class weights shaped to broadcast against ``(N, C, *)`` arrays like ``like`` (ones if None)."""
    c = like.shape[1]
    shape = (1, c) + (1,) * (like.ndim - 2)
    if weight is None:
        return xp.ones(shape, dtype=like.dtype, device=array_api_compat.device(like))
    return xp.reshape(weight, shape)


def _target_weight(xp, weight, target, keep, like):
    """``w[target]`` per sample, 0 where the target is ignored (``keep=None``: nothing ignored)."""
    mask = xp.ones(target.shape, dtype=like.dtype, device=array_api_compat.device(like))
    if keep is not None:
        mask = xp.astype(keep, like.dtype)
    if weight is None:
        return mask
    picked = xp.take(weight, xp.reshape(target, (-1,)))
    return xp.reshape(picked, target.shape) * mask


def _drop_ignored(xp, keep, per_sample):
    """0 for ignored samples whatever their scores (NaN included), as PyTorch skips them."""
    return xp.where(keep, per_sample, xp.zeros_like(per_sample))


def _kept(xp, target, ignore_index):
    keep = target != ignore_index
    return keep, xp.where(keep, target, xp.zeros_like(target))


def _expand(xp, per_sample):
    """Per-sample array ``(N, *)`` -> ``(N, 1, *)`` to broadcast against class scores."""
    return xp.expand_dims(per_sample, axis=1)


def _weighted_binary_terms(xp, x, y, w_pos, w_neg):
    """``w_pos y softplus(-x) + w_neg (1-y) softplus(x)``: -w_pos y log sigma(x) - w_neg (1-y) log sigma(-x).

    The single binary cross-entropy on logits behind BCE-with-logits, its pos_weight, the seed's
    weighted and balanced forms and the multilabel soft margin. ``0 * inf = 0`` at infinite logits.
    """
    return xmul(w_pos * y, softplus(-x, xp=xp), xp=xp) + xmul(w_neg * (1 - y), softplus(x, xp=xp), xp=xp)


def _weighted_binary_grad_x(xp, x, y, w_pos, w_neg):
    """d/dx of :func:`_weighted_binary_terms`: ``-w_pos y sigma(-x) + w_neg (1-y) sigma(x)``."""
    return -w_pos * y * sigmoid(-x, xp=xp) + w_neg * (1 - y) * sigmoid(x, xp=xp)


def _weighted_binary_grad_y(xp, x, y, w_pos, w_neg):
    """d/dy of :func:`_weighted_binary_terms`: ``w_pos softplus(-x) - w_neg softplus(x)``."""
    return w_pos * softplus(-x, xp=xp) - w_neg * softplus(x, xp=xp)


def _optional(value, default):
    return default if value is None else value


def _at_least_two_classes(xp, name, logits, *args, **params):
    if logits.shape[1] < 2:
        raise ValueError(f"{name}: logits must have at least 2 classes (a target and another), got shape {tuple(logits.shape)}")


# ------------------------------------------------------------------------------------------------
# Softmax cross-entropy.


def _route_probability_targets(loss_obj, args, kwargs):
    # PyTorch's cross_entropy takes probability targets when the target is floating.
    target = args[1] if len(args) > 1 else kwargs.get("target")
    if target is None or not hasattr(target, "dtype"):
        return None
    xp = namespace(target)
    if not is_floating(xp, target):
        return None
    kwargs = dict(kwargs)
    ignore = kwargs.pop("ignore_index", -100)
    if ignore != -100:
        raise ValueError(
            f"cross_entropy: ignore_index must be left at -100 with probability targets (PyTorch rule), got {ignore!r}"
        )
    return softmax_cross_entropy, args, kwargs


def _ce_mean_weight(xp, logits, target, *, weight, ignore_index, label_smoothing, axis):
    keep, safe = _kept(xp, target, ignore_index)
    return _target_weight(xp, weight, safe, keep, logits)


@loss(
    family="classification",
    inputs=[_SCORES, _LABELS],
    params=[_CLASS_WEIGHT, _IGNORE_INDEX, _SMOOTHING, _AXIS],
    class_axis=True,
    mean_weight=_ce_mean_weight,
    route=_route_probability_targets,
    counterparts={
        "torch": "torch.nn.functional.cross_entropy",
        "optax": "optax.losses.softmax_cross_entropy_with_integer_labels (no weight, ignore_index or smoothing)",
        "keras": "keras.losses.SparseCategoricalCrossentropy(from_logits=True)",
        "tf": "tf.nn.sparse_softmax_cross_entropy_with_logits",
    },
    references=["PyTorch aten/src/ATen/native/LossNLL.cpp (cross_entropy_loss_label_smoothing)"],
)
def cross_entropy(xp, logits, target, *, weight, ignore_index, label_smoothing, axis):
    """Softmax cross-entropy with class-index targets, exactly as PyTorch defines it.

    With ``lsm = log_softmax(z)`` along the class axis, ``w`` the class weights (ones by default),
    ``eps`` the label smoothing and ``C`` the number of classes, per sample::

        l_n = (1 - eps) * (-w[y_n] lsm[y_n])  +  (eps / C) * (-sum_c w_c lsm_c)

    and ``l_n = 0`` where ``y_n == ignore_index``. ``mean`` divides by ``sum_n w[y_n]`` over
    non-ignored samples (PyTorch's weighted mean). When every target is ignored, ``mean`` is NaN as in
    PyTorch, and so is its gradient (PyTorch returns a zero gradient). A zero class weight contributes 0
    even at a ``-inf`` logit (PyTorch: NaN). A floating ``target`` of the logits' shape is routed to
    :func:`softmax_cross_entropy`.

    Gradient (``p = softmax(z)``, ``W = sum_c w_c``): ``d l_n / d z = (1 - eps) w[y_n] (p - onehot(y_n))
    + (eps / C) (W p - w)``, since ``d lsm_c / d z_k = delta_ck - p_k``.

    Shapes: ``logits (N, C, *)`` with the class axis at ``axis``; ``target (N, *)`` integers in
    ``[0, C)`` or ``ignore_index``; ``weight (C,)``.
    """
    a = _index_target_mass(xp, logits, target, weight, ignore_index, label_smoothing)
    per_sample = _soft_target_cross_entropy(xp, a, log_softmax(logits, axis=1, xp=xp))
    return _drop_ignored(xp, target != ignore_index, per_sample)


@cross_entropy.defvjp
def _cross_entropy_vjp(xp, cot, logits, target, *, weight, ignore_index, label_smoothing, axis):
    a = _index_target_mass(xp, logits, target, weight, ignore_index, label_smoothing)
    return _soft_target_cross_entropy_grad(xp, cot, a, logits), None


def _index_target_mass(xp, logits, target, weight, ignore_index, label_smoothing):
    """``a = w * smooth(onehot(y))``, zero for ignored samples: PyTorch's index-target smoothing term
    ``(1 - eps) w[y] nll + (eps / C) sum_c w_c (-lsm_c)`` is exactly ``-sum_c a_c lsm_c``."""
    keep, safe = _kept(xp, target, ignore_index)
    hot = one_hot(safe, logits.shape[1], axis=1, dtype=logits.dtype, xp=xp)
    mass = _per_class(xp, weight, logits) * smooth_labels(hot, label_smoothing, axis=1, xp=xp)
    return xp.where(_expand(xp, keep), mass, xp.zeros_like(mass))


def _soft_target_cross_entropy(xp, a, lsm):
    """``-sum_c a_c lsm_c`` over the class axis, with ``0 * lsm = 0`` for zero mass (even at ``-inf``)."""
    return -xp.sum(xmul(a, lsm, xp=xp), axis=1)


def _soft_target_cross_entropy_grad(xp, cot, a, logits):
    """d/dz of :func:`_soft_target_cross_entropy`: ``(sum_c a_c) p - a``, since ``d lsm_c / d z_k = delta_ck - p_k``.

    Evaluated as ``(A - a) p - a (1 - p)`` with ``1 - p`` from :func:`refloss.xp.softmax_complement`
    and ``A - a`` from :func:`_sum_of_others`: where the target dominates (``1 - p_y < 2^-53``),
    ``A p_y - a_y`` would round to 0 and drop the target's share of the gradient, and ``A - a_y``
    summed then subtracted would lose the other classes' mass to cancellation.
    """
    p = softmax(logits, axis=1, xp=xp)
    rest = _sum_of_others(xp, a)
    return _expand(xp, cot) * (rest * p - a * softmax_complement(logits, axis=1, xp=xp))


def _sum_of_others(xp, a):
    """``A - a_c = sum_{k != c} a_k`` along the class axis for non-negative ``a``, without cancellation.

    ``A - a_c`` is at least ``A / 2`` except for a class holding more than half the mass (at most one
    per row); for that one, where the subtraction would cancel, the other classes are summed directly.
    """
    total = xp.sum(a, axis=1, keepdims=True)
    big = a > total / 2
    others_of_big = xp.sum(xp.where(big, xp.zeros_like(a), a), axis=1, keepdims=True)
    return xp.where(big, others_of_big, total - a)


@loss(
    family="classification",
    inputs=[_SCORES, Input("target", shape="N C *", values=(0.0, math.inf), domain=D.distributions, doc="class probabilities")],
    params=[_CLASS_WEIGHT, _SMOOTHING, _AXIS],
    class_axis=True,
    counterparts={
        "torch": "torch.nn.functional.cross_entropy (probability targets)",
        "optax": "optax.losses.safe_softmax_cross_entropy (softmax_cross_entropy gives NaN at -inf logits)",
        "keras": "keras.losses.CategoricalCrossentropy(from_logits=True)",
        "tf": "tf.nn.softmax_cross_entropy_with_logits",
    },
    references=["PyTorch LossNLL.cpp (cross_entropy_loss_prob_target)"],
)
def softmax_cross_entropy(xp, logits, target, *, weight, label_smoothing, axis):
    """Softmax cross-entropy against probability targets.

    ``y' = (1 - eps) y + eps / C``;  ``l_n = -sum_c w_c y'_c lsm_c``, with ``0 * lsm = 0`` for a
    zero-probability class even at a ``-inf`` logit (the mathematical limit; PyTorch and optax's
    ``softmax_cross_entropy`` give NaN there). ``mean`` divides by the number of samples
    ``N * prod(*)`` (PyTorch: no weight normalisation on this path).

    Gradients: ``d l / d z = (sum_c w_c y'_c) p - w y'`` and ``d l / d y = -(1 - eps) w lsm`` (PyTorch
    and ``tf.nn.softmax_cross_entropy_with_logits`` both back-propagate into the target).

    Shapes: ``logits`` and ``target`` ``(N, C, *)`` with the class axis at ``axis``; ``weight (C,)``.
    """
    w = _per_class(xp, weight, logits)
    return _soft_target_cross_entropy(xp, w * smooth_labels(target, label_smoothing, axis=1, xp=xp), log_softmax(logits, axis=1, xp=xp))


@softmax_cross_entropy.defvjp
def _softmax_cross_entropy_vjp(xp, cot, logits, target, *, weight, label_smoothing, axis):
    w = _per_class(xp, weight, logits)
    grad_logits = _soft_target_cross_entropy_grad(xp, cot, w * smooth_labels(target, label_smoothing, axis=1, xp=xp), logits)
    grad_target = _expand(xp, cot) * (-(1 - label_smoothing)) * w * log_softmax(logits, axis=1, xp=xp)
    return grad_logits, grad_target


def _nll_mean_weight(xp, log_probs, target, *, weight, ignore_index, axis):
    keep, safe = _kept(xp, target, ignore_index)
    return _target_weight(xp, weight, safe, keep, log_probs)


@loss(
    family="classification",
    inputs=[Input("log_probs", shape="N C *", domain=D.log_probabilities, doc="log-probabilities"), _LABELS],
    params=[_CLASS_WEIGHT, _IGNORE_INDEX, _AXIS],
    class_axis=True,
    mean_weight=_nll_mean_weight,
    counterparts={"torch": "torch.nn.functional.nll_loss"},
    references=["PyTorch LossNLL.cpp (nll_loss)"],
)
def nll_loss(xp, log_probs, target, *, weight, ignore_index, axis):
    """Negative log-likelihood of class-index targets: ``l_n = -w[y_n] x[n, y_n]``, 0 where ignored.

    The input is taken as given (PyTorch does not check that it is a log-probability). ``mean``
    divides by ``sum_n w[y_n]`` over non-ignored samples; with every target ignored, value and
    gradient are NaN (PyTorch: NaN value, zero gradient).

    Gradient: ``d l_n / d x = -w[y_n] onehot(y_n)``.

    Shapes: ``log_probs (N, C, *)``, ``target (N, *)``, ``weight (C,)``.
    """
    keep, safe = _kept(xp, target, ignore_index)
    w_y = _target_weight(xp, weight, safe, keep, log_probs)
    return _drop_ignored(xp, keep, xmul(w_y, -take_along_axis(log_probs, safe, axis=1, xp=xp), xp=xp))


@nll_loss.defvjp
def _nll_loss_vjp(xp, cot, log_probs, target, *, weight, ignore_index, axis):
    keep, safe = _kept(xp, target, ignore_index)
    w_y = _target_weight(xp, weight, safe, keep, log_probs)
    hot = one_hot(safe, log_probs.shape[1], axis=1, dtype=log_probs.dtype, xp=xp)
    return -_expand(xp, cot * w_y) * hot, None


# ------------------------------------------------------------------------------------------------
# Binary cross-entropy.

_KERAS_EPSILON = 1e-7  # keras.backend.epsilon()
_TORCH_LOG_FLOOR = -100.0  # PyTorch clamps each log term of binary_cross_entropy at -100


def _bce_logs(xp, p, clamp):
    """``(log p, log(1 - p))`` under the clamp convention, and the masks where each is differentiable."""
    if clamp == "keras":
        inside = (p >= _KERAS_EPSILON) & (p <= 1 - _KERAS_EPSILON)
        q = xp.clip(p, _KERAS_EPSILON, 1 - _KERAS_EPSILON)
        return xp.log(q), xp.log1p(-q), inside, inside
    log_p, log_q = safe_log(p, xp=xp), log1m(p, xp=xp)
    if clamp == "torch":
        return (
            xp.maximum(log_p, _TORCH_LOG_FLOOR),
            xp.maximum(log_q, _TORCH_LOG_FLOOR),
            log_p > _TORCH_LOG_FLOOR,
            log_q > _TORCH_LOG_FLOOR,
        )
    return log_p, log_q, p > 0, p < 1


def _safe_ratio(xp, num, den, live):
    """``num / den`` where ``live``, 0 elsewhere."""
    return xp.where(live, num / xp.where(live, den, xp.ones_like(den)), xp.zeros_like(num) + xp.zeros_like(den))


@loss(
    family="classification",
    inputs=[
        Input("input", values=(0.0, 1.0), domain=D.probabilities, doc="probabilities"),
        Input("target", values=(0.0, 1.0), domain=D.binary_targets, doc="targets in [0, 1]"),
    ],
    params=[
        _ELEMENT_WEIGHT,
        _BINARY_SMOOTHING,
        Param(
            "clamp", "torch", kind="choice", choices=("torch", "keras", "none"), grid=("keras", "none"),
            doc="torch: each log clamped at -100; keras: p clipped to [1e-7, 1 - 1e-7]; none: exact",
        ),
    ],
    counterparts={
        "torch": "torch.nn.functional.binary_cross_entropy (clamp='torch')",
        "keras": "keras.losses.BinaryCrossentropy(from_logits=False) (clamp='keras', mean over the last axis)",
    },
    references=["PyTorch aten/src/ATen/native/Loss.cpp", "Keras 3 keras/src/backend/*/nn.py binary_crossentropy"],
)
def binary_cross_entropy(xp, input, target, *, weight, label_smoothing, clamp):
    """Binary cross-entropy on probabilities: ``l = -w [y log p + (1 - y) log(1 - p)]``.

    ``clamp`` picks the convention at saturated probabilities: ``torch`` clamps each log at -100
    (``BCE(p=0, y=1) = 100``), ``keras`` clips ``p`` to ``[1e-7, 1 - 1e-7]`` (``16.118...``), ``none``
    is exact (``inf``). ``log(1 - p)`` is evaluated as ``log1p(-p)``.

    Gradients are the exact derivatives of the clamped forward: ``d l / d p = w (p - y) / (p (1 - p))``
    where neither log is clamped (this form does not cancel when ``p ~ y``), each log's own term where
    only the other is clamped, 0 where both are (torch: ``log p <= -100``; keras: ``p`` outside the clip
    range, as Keras' clip does). ``d l / d y = -w [log p - log(1 - p)]`` with the clamped logs.
    PyTorch's own backward divides by ``max(p (1 - p), 1e-12)`` and differs wherever ``p (1 - p) < 1e-12``
    (both ends, e.g. ``p=0, y=0``: refloss 1, PyTorch 0); its target gradient uses the unclamped logs
    (``+-inf`` at ``p`` in ``{0, 1}``, where refloss gives ``+-100``).

    ``label_smoothing`` replaces ``y`` by ``(1 - eps) y + eps / 2`` (Keras; the target gradient is
    scaled by ``1 - eps``).

    Shapes: ``input`` and ``target`` alike; ``weight`` broadcastable to them.
    """
    target = smooth_labels(target, label_smoothing, style="binary", xp=xp)
    log_p, log_q, _, _ = _bce_logs(xp, input, clamp)
    out = -(xmul(target, log_p, xp=xp) + xmul(1 - target, log_q, xp=xp))
    return out if weight is None else xmul(weight * xp.ones_like(out), out, xp=xp)


@binary_cross_entropy.defvjp
def _binary_cross_entropy_vjp(xp, cot, input, target, *, weight, label_smoothing, clamp):
    target = smooth_labels(target, label_smoothing, style="binary", xp=xp)
    log_p, log_q, live_p, live_q = _bce_logs(xp, input, clamp)
    g = cot * (1 if weight is None else weight)
    # Both logs live: (p - y) / (p (1 - p)), which does not cancel when p ~ y (the two separate
    # terms -y/p + (1-y)/(1-p) do). One log clamped: the other term alone. Both clamped: 0.
    both = _safe_ratio(xp, input - target, input * (1 - input), live_p & live_q)
    only_p = -_safe_ratio(xp, target, input, live_p & ~live_q)
    only_q = _safe_ratio(xp, 1 - target, 1 - input, live_q & ~live_p)
    d_target = (1 - label_smoothing) * (log_q - log_p)
    return g * (both + only_p + only_q), g * d_target


_POS_WEIGHT = Param(
    "pos_weight", None, kind="array", shape="broadcast", nullable=True, low=0.0, grid=(SAMPLE,),
    domain=D.class_weights, doc="weight of the positive term, broadcast along the last (class) axis",
)


@loss(
    family="classification",
    inputs=[Input("logits", domain=D.logits), Input("target", domain=D.binary_targets, doc="targets in [0, 1]")],
    params=[_ELEMENT_WEIGHT, _POS_WEIGHT, _BINARY_SMOOTHING],
    counterparts={
        "torch": "torch.nn.functional.binary_cross_entropy_with_logits",
        "optax": "optax.losses.sigmoid_binary_cross_entropy (no weights)",
        "keras": "keras.losses.BinaryCrossentropy(from_logits=True) (mean over the last axis)",
        "tf": "tf.nn.sigmoid_cross_entropy_with_logits (tf.nn.weighted_cross_entropy_with_logits for pos_weight)",
    },
    references=["PyTorch Loss.cpp (binary_cross_entropy_with_logits)"],
)
def binary_cross_entropy_with_logits(xp, logits, target, *, weight, pos_weight, label_smoothing):
    """Binary cross-entropy on logits: ``l = w [pw y softplus(-x) + (1 - y) softplus(x)]``.

    That is ``-w [pw y log sigma(x) + (1 - y) log sigma(-x)]``, with ``pw`` = ``pos_weight``. Exact at
    infinite logits: ``x = +inf, y = 1`` and ``x = -inf, y = 0`` give 0, ``x = -inf, y = 1`` gives ``inf``
    (PyTorch, optax and tf.nn give NaN at all three).

    Gradients: ``d l / d x = w [(1 - y) sigma(x) - pw y sigma(-x)]``; ``d l / d y = w [pw softplus(-x) -
    softplus(x)]``.

    ``label_smoothing`` replaces ``y`` by ``(1 - eps) y + eps / 2`` (Keras; the target gradient is
    scaled by ``1 - eps``).

    Shapes: ``logits`` and ``target`` alike; ``weight`` and ``pos_weight`` broadcastable to them.
    """
    target = smooth_labels(target, label_smoothing, style="binary", xp=xp)
    out = _weighted_binary_terms(xp, logits, target, _optional(pos_weight, 1.0), 1.0)
    return out if weight is None else weight * out


@binary_cross_entropy_with_logits.defvjp
def _bce_with_logits_vjp(xp, cot, logits, target, *, weight, pos_weight, label_smoothing):
    target = smooth_labels(target, label_smoothing, style="binary", xp=xp)
    pw = _optional(pos_weight, 1.0)
    g = cot * _optional(weight, 1.0)
    return (
        g * _weighted_binary_grad_x(xp, logits, target, pw, 1.0),
        g * (1 - label_smoothing) * _weighted_binary_grad_y(xp, logits, target, pw, 1.0),
    )


@loss(
    family="classification",
    inputs=[Input("logits", domain=D.logits), Input("target", domain=D.binary_targets, doc="targets in [0, 1]")],
    params=[Param("beta", 1.0, low=0.0, low_open=True, grid=(0.3, 4.0), doc="weight of the positive term")],
    counterparts={
        "torch": "torch.nn.functional.binary_cross_entropy_with_logits(pos_weight=beta)",
        "tf": "tf.nn.weighted_cross_entropy_with_logits(pos_weight=beta)",
    },
    references=["003 seed, Weighted Binary Cross-Entropy"],
)
def weighted_binary_cross_entropy(xp, logits, target, *, beta):
    """Weighted binary cross-entropy (003 seed): ``l = -[beta y log p + (1 - y) log(1 - p)]``, ``p = sigma(x)``.

    ``beta > 1`` up-weights the (rare) positives. Computed from logits as
    ``beta y softplus(-x) + (1 - y) softplus(x)``.

    Gradients: ``d l / d x = (1 - y) sigma(x) - beta y sigma(-x)``; ``d l / d y = beta softplus(-x) - softplus(x)``.
    """
    return _weighted_binary_terms(xp, logits, target, beta, 1.0)


@weighted_binary_cross_entropy.defvjp
def _weighted_bce_vjp(xp, cot, logits, target, *, beta):
    return (
        cot * _weighted_binary_grad_x(xp, logits, target, beta, 1.0),
        cot * _weighted_binary_grad_y(xp, logits, target, beta, 1.0),
    )


def _hed_beta(xp, target, per):
    """beta = |Y-| / |Y| = 1 - sum(y) / count: over the whole batch tensor or per sample (an empty
    count gives beta = 1: nothing to balance)."""
    if per == "batch" or target.ndim < 2:
        return 1 - xp.sum(target) / max(array_api_compat.size(target), 1)
    axes = tuple(range(1, target.ndim))
    return 1 - xp.sum(target, axis=axes, keepdims=True) / max(math.prod(target.shape[1:]), 1)


@loss(
    family="classification",
    inputs=[
        Input("logits", shape="N *", domain=D.logits),
        Input("target", shape="N *", differentiable=False, values=(0.0, 1.0), domain=D.hard_binary_targets, doc="0/1 labels"),
    ],
    params=[
        Param("per", "batch", kind="choice", choices=("batch", "sample"), grid=("sample",),
              doc="beta counted over the whole batch (tensorpack) or per sample (HED paper, per image)"),
    ],
    counterparts={"tensorpack": "examples.HED.hed.class_balanced_sigmoid_cross_entropy"},
    references=["Xie & Tu, Holistically-Nested Edge Detection, ICCV 2015", "003 seed, Balanced Cross-Entropy"],
)
def balanced_binary_cross_entropy(xp, logits, target, *, per):
    """Class-balanced (HED) binary cross-entropy, ``beta = |Y-| / |Y| = 1 - sum(y) / count``::

        l = -[beta y log sigma(x) + (1 - beta)(1 - y) log(1 - sigma(x))]

    ``beta`` is a function of the labels and is a constant in the backward pass (as in HED and
    tensorpack). With no positive label, ``beta = 1`` and the loss is 0 (tensorpack's rule).

    Gradient: ``d l / d x = (1 - beta)(1 - y) sigma(x) - beta y sigma(-x)``.
    """
    beta = _hed_beta(xp, target, per)
    return _weighted_binary_terms(xp, logits, target, beta, 1 - beta)


@balanced_binary_cross_entropy.defvjp
def _balanced_bce_vjp(xp, cot, logits, target, *, per):
    beta = _hed_beta(xp, target, per)
    return cot * _weighted_binary_grad_x(xp, logits, target, beta, 1 - beta), None


# ------------------------------------------------------------------------------------------------
# Focal losses.

_GAMMA = Param("gamma", 2.0, low=0.0, grid=(0.0, 0.5, 1.0, 3.0), doc="focusing exponent (0 gives cross-entropy)")


def _focal_weights(alpha):
    return (1.0, 1.0) if alpha is None else (alpha, 1.0 - alpha)


@loss(
    family="classification",
    inputs=[Input("logits", domain=D.logits), Input("target", differentiable=False, values=(0.0, 1.0), domain=D.binary_targets)],
    params=[
        Param("alpha", 0.25, low=0.0, high=1.0, nullable=True, grid=(None, 0.5), doc="positive-class weight; None: no weighting"),
        _GAMMA,
    ],
    counterparts={
        "torchvision": "torchvision.ops.sigmoid_focal_loss (same for hard labels)",
        "optax": "optax.losses.sigmoid_focal_loss (alpha=None by default)",
        "keras": "keras.losses.BinaryFocalCrossentropy (alpha only with apply_class_balancing=True)",
    },
    references=["Lin et al., Focal Loss for Dense Object Detection, ICCV 2017", "003 seed, Focal Loss"],
)
def sigmoid_focal_loss(xp, logits, target, *, alpha, gamma):
    """Sigmoid focal loss, the 003 seed's form (linear in soft targets), with ``p = sigma(x)``, ``q = sigma(-x)``::

        l = alpha y q^gamma softplus(-x) + (1 - alpha)(1 - y) p^gamma softplus(x)

    i.e. ``-[alpha (1-p)^gamma y log p + (1-alpha) p^gamma (1-y) log(1-p)]``; ``alpha=None`` weights
    both terms by 1. Equal to torchvision/optax for 0/1 targets. ``0^0 = 1``.

    Gradient (no negative power of ``q`` or ``p``, so finite for every ``gamma >= 0`` at any logit)::

        d l / d x = -alpha y q^gamma (q + gamma p softplus(-x)) + (1 - alpha)(1 - y) p^gamma (p + gamma q softplus(x))
    """
    a_pos, a_neg = _focal_weights(alpha)
    p, q = sigmoid(logits, xp=xp), sigmoid(-logits, xp=xp)
    return _weighted_binary_terms(xp, logits, target, a_pos * q**gamma, a_neg * p**gamma)


@sigmoid_focal_loss.defvjp
def _sigmoid_focal_vjp(xp, cot, logits, target, *, alpha, gamma):
    a_pos, a_neg = _focal_weights(alpha)
    p, q = sigmoid(logits, xp=xp), sigmoid(-logits, xp=xp)
    pos = a_pos * target * q**gamma * (q + gamma * xmul(p, softplus(-logits, xp=xp), xp=xp))
    neg = a_neg * (1 - target) * p**gamma * (p + gamma * xmul(q, softplus(logits, xp=xp), xp=xp))
    return cot * (neg - pos), None


def _focal_parts(xp, logits, target):
    """``(lsm_t, m = 1 - p_t, r = lsm_t / expm1(lsm_t))`` with ``r = 1`` at ``p_t = 1``."""
    lsm_t = take_along_axis(log_softmax(logits, axis=1, xp=xp), target, axis=1, xp=xp)
    em1 = xp.expm1(lsm_t)
    sure = lsm_t == 0
    r = xp.where(sure, xp.ones_like(lsm_t), lsm_t / xp.where(sure, -xp.ones_like(em1), em1))
    return lsm_t, -em1, r


@loss(
    family="classification",
    inputs=[_SCORES, _LABELS_NO_IGNORE],
    params=[Param("alpha", 1.0, low=0.0, grid=(0.25,), doc="overall weight (kornia's examples use 0.25)"), _GAMMA, _AXIS],
    class_axis=True,
    check=_at_least_two_classes,
    counterparts={"kornia": "kornia.losses.focal_loss", "monai": "monai.losses.FocalLoss(use_softmax=True)"},
    references=["Lin et al., ICCV 2017 (multi-class form)"],
)
def softmax_focal_loss(xp, logits, target, *, alpha, gamma, axis):
    """Softmax focal loss: ``l_n = -alpha (1 - p_t)^gamma log p_t`` with ``p_t = softmax(z)[y_n]``.

    ``1 - p_t`` is ``-expm1(lsm_t)`` (exact for ``p_t`` near 1). ``gamma = 0`` gives ``alpha * CE``.

    Gradient, with ``m = 1 - p_t`` and ``r = -log p_t / (1 - p_t)`` (-> 1 as ``p_t -> 1``)::

        d l / d z = alpha m^gamma (1 + gamma p_t r) (p - onehot(y))

    which has no negative power of ``m``, so it is finite for every ``gamma >= 0``.
    """
    lsm_t, m, _ = _focal_parts(xp, logits, target)
    return alpha * m**gamma * (-lsm_t)


@softmax_focal_loss.defvjp
def _softmax_focal_vjp(xp, cot, logits, target, *, alpha, gamma, axis):
    lsm_t, m, r = _focal_parts(xp, logits, target)
    scale = alpha * m**gamma * (1 + gamma * xmul(xp.exp(lsm_t), r, xp=xp))
    # p - onehot(y), with p_y - 1 = -(1 - p_y) from softmax_complement (p_y - 1 cancels as p_y -> 1)
    hot = one_hot(target, logits.shape[1], axis=1, xp=xp)
    p_minus_hot = xp.where(hot, -softmax_complement(logits, axis=1, xp=xp), softmax(logits, axis=1, xp=xp))
    return _expand(xp, cot * scale) * p_minus_hot, None


# ------------------------------------------------------------------------------------------------
# Divergences.


_LN2_HI = 6.93147180369123816490e-01  # fdlibm's split of log 2: 32 significant bits, so e * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_SMALLEST_NORMAL = 2.0**-1022


def _log_minus(xp, p, x):
    """``log(p) - x`` without the cancellation of a rounded ``log p`` against ``x`` (``p > 0`` normal).

    With ``p = m 2^e`` (``e = round(log2 p)``, ``m`` in ``[0.7, 1.42]``, both exact),
    ``log p - x = (e ln2_hi - x) + (e ln2_lo + log1p(m - 1))``: the first difference is exact wherever
    the result cancels (Sterbenz), and what remains is small, so the error is an ULP of the result
    plus ``2^-55`` absolute, instead of an ULP of ``log p`` (``kl_div`` near ``x = log p``). Zero,
    subnormal and non-finite ``p`` take ``safe_log(p) - x``.
    """
    normal = (p >= _SMALLEST_NORMAL) & (p < math.inf)
    safe = xp.where(normal, p, xp.ones_like(p))
    e = xp.round(xp.log2(safe))
    m = safe * 2.0 ** (-e)
    precise = (e * _LN2_HI - x) + (e * _LN2_LO + xp.log1p(m - 1))
    return xp.where(normal, precise, safe_log(p, xp=xp) - x)


def _log_ratio(xp, p, q):
    """``log(p / q)`` for positive ``p, q``: ``log1p((p - q) / q)`` where ``p / q`` is in ``[1/2, 2]``
    (``p - q`` exact, no cancellation near ``p = q``), the log of the ratio elsewhere."""
    near = (p <= 2 * q) & (q <= 2 * p)
    return xp.where(near, xp.log1p((p - q) / q), xp.log(p / q))


def _kl_parts(xp, input, target, log_target):
    """``(prob, gap, live)``: the target as a probability, ``log p - x`` (0 where ``p = 0``; from
    :func:`_log_minus`, as it cancels where ``q ~ p``), and where ``p`` is nonzero (NaN stays live,
    so it propagates)."""
    zero = xp.zeros_like(input) + xp.zeros_like(target)
    if log_target:
        prob = xp.exp(target)
        live = prob != 0
        return prob, xp.where(live, target - xp.where(live, input, zero), zero), live
    live = target != 0
    return target, xp.where(live, _log_minus(xp, target, xp.where(live, input, zero)), zero), live


_KERAS_KL_CLIP = (_KERAS_EPSILON, 1.0)


def _keras_kl_parts(xp, input, target):
    """Keras ``KLDivergence``: both probabilities clipped to [1e-7, 1]; masks where the clip is inactive."""
    q = xp.clip(input, *_KERAS_KL_CLIP)
    p = xp.clip(target, *_KERAS_KL_CLIP)
    live_q = (input >= _KERAS_KL_CLIP[0]) & (input <= _KERAS_KL_CLIP[1])
    live_p = (target >= _KERAS_KL_CLIP[0]) & (target <= _KERAS_KL_CLIP[1])
    return q, p, live_q, live_p


def _kl_check(xp, name, input, target, *, log_target, convention, **_):
    if convention == "keras" and log_target:
        raise ValueError(f"{name}: log_target must be False with convention='keras' (Keras takes probabilities), got True")


@loss(
    family="classification",
    inputs=[
        Input("input", domain=D.kl_input, doc="log-probabilities log q (probabilities q with convention='keras')"),
        Input("target", domain=D.distributions, doc="probabilities p (log p with log_target)"),
    ],
    params=[
        Param("log_target", False, kind="bool", grid=(True,), doc="target given as log-probabilities"),
        Param(
            "convention", "torch", kind="choice", choices=("torch", "keras"), grid=("keras",),
            doc="torch: input is log q; keras: input is q, both clipped to [1e-7, 1]",
        ),
    ],
    check=_kl_check,
    counterparts={
        "torch": "torch.nn.functional.kl_div",
        "optax": "optax.losses.kl_divergence (kl_divergence_with_log_targets for log_target; per-example sums: reduction='batchmean')",
        "keras": "keras.losses.KLDivergence (convention='keras'; sums over the last axis)",
    },
    references=["PyTorch Loss.cpp (kl_div)", "Keras 3 keras/src/losses/losses.py (kl_divergence)"],
)
def kl_div(xp, input, target, *, log_target, convention):
    """Pointwise Kullback-Leibler divergence ``l = p (log p - x)``, ``x = log q`` (PyTorch ``kl_div``).

    ``p = 0`` contributes 0 even where ``x = -inf`` (the limit; PyTorch and optax give NaN). With
    ``log_target``, ``l = exp(t) (t - x)``. ``reduction='batchmean'`` gives the KL per sample; PyTorch's
    ``mean`` divides by every element. ``convention='keras'`` takes probabilities ``q`` as the input and
    clips both to ``[1e-7, 1]``: ``l = p' log(p' / q')`` (a zero target then contributes
    ``1e-7 log(1e-7 / q)``, not 0).

    Gradients: ``d l / d x = -p``; ``d l / d p = log p + 1 - x`` (``d l / d t = exp(t) (t + 1 - x)``
    with ``log_target``); at ``p = 0`` the target derivative is ``-inf`` (``log_target``: 0), where
    PyTorch gives NaN. Keras: ``d l / d q = -p' / q'`` and ``d l / d p = log(p' / q') + 1`` where the
    clip is inactive, 0 where it clips (as Keras' clip does).
    """
    if convention == "keras":
        q, p, _, _ = _keras_kl_parts(xp, input, target)
        return p * _log_ratio(xp, p, q)
    prob, gap, live = _kl_parts(xp, input, target, log_target)
    return xp.where(live, prob * gap, xp.zeros_like(gap))


@kl_div.defvjp
def _kl_div_vjp(xp, cot, input, target, *, log_target, convention):
    if convention == "keras":
        q, p, live_q, live_p = _keras_kl_parts(xp, input, target)
        zero = xp.zeros_like(q * p)
        d_input = xp.where(live_q, -p / q, zero)
        d_target = xp.where(live_p, _log_ratio(xp, p, q) + 1, zero)
        return cot * d_input, cot * d_target
    prob, gap, live = _kl_parts(xp, input, target, log_target)
    zero = xp.zeros_like(gap)
    inner = xp.where(live, gap + 1, zero)
    d_target = prob * inner if log_target else xp.where(live, inner, -math.inf + zero)
    return cot * (-prob), cot * d_target


def _half_log_ratio_terms(xp, p, q):
    """``(s, delta)`` with ``s = p + q`` and ``delta = (p - q) / s`` (0 where ``s = 0``)."""
    s = p + q
    live = s > 0
    return s, xp.where(live, (p - q) / xp.where(live, s, xp.ones_like(s)), xp.zeros_like(s))


_JS_SERIES_BOUND = 0.7
_JS_SERIES = tuple(1.0 / (2 * k * (2 * k - 1)) for k in range(1, 46))  # 0.7^90 / 8100 < 2^-60


def _js_terms(xp, p, q):
    """Per class, ``s h(d) = p log(2 p / s) + q log(2 q / s)`` with ``s = p + q``, ``d = (p - q) / s`` and
    ``h(d) = [(1 + d) log(1 + d) + (1 - d) log(1 - d)] / 2 = sum_k d^(2k) / (2k (2k - 1))``.

    For ``|d| < 0.7``, ``(p - q) d sum_k d^(2k-2) / (2k (2k - 1))``: positive terms only, where the two
    logs cancel (by up to 30 ULP at ``|d| ~ 0.3``; ``p - q`` is exact for ``|d| <= 1/3``). Elsewhere the
    logs of the ratios ``2 p / s`` and ``2 q / s`` themselves, each accurate to an ULP even where one
    probability is negligible (``1 - d`` from a rounded ``d`` would lose it), with ``0 log 0 = 0``.
    """
    s, d = _half_log_ratio_terms(xp, p, q)
    small = xp.abs(d) < _JS_SERIES_BOUND
    ds = xp.where(small, d, xp.zeros_like(d))
    d2 = ds * ds
    series = xp.zeros_like(d)
    for c in reversed(_JS_SERIES):
        series = series * d2 + c
    closed = xmul(p, _log_twice_ratio(xp, p, s), xp=xp) + xmul(q, _log_twice_ratio(xp, q, s), xp=xp)
    return xp.where(small, (p - q) * ds * series, closed)


def _log_twice_ratio(xp, a, s):
    """``log(2 a / s)`` as the log of the ratio ``2 (a / s)`` (no overflow, no cancellation of two large
    logs); ``-inf`` at ``a = 0``; the value at ``s = 0`` is unused (1 there)."""
    live = s > 0
    return safe_log(2 * (a / xp.where(live, s, xp.ones_like(s))), xp=xp)


@loss(
    family="classification",
    inputs=[
        Input("p", shape="N C *", values=(0.0, math.inf), domain=D.distributions, doc="probabilities"),
        Input("q", shape="N C *", values=(0.0, math.inf), domain=D.distributions, doc="probabilities"),
    ],
    params=[_AXIS],
    class_axis=True,
    counterparts={},
    references=["Lin, Divergence measures based on the Shannon entropy, IEEE Trans. Inf. Theory 1991"],
)
def jensen_shannon_divergence(xp, p, q, *, axis):
    """Jensen-Shannon divergence (nats): ``JS = KL(p || m) / 2 + KL(q || m) / 2``, ``m = (p + q) / 2``.

    Per class, with ``s = p + q`` and ``d = (p - q) / s``, the two terms sum to ``s h(d)`` where
    ``h(d) = [(1 + d) log(1 + d) + (1 - d) log(1 - d)] / 2``; ``h`` is summed as its series for
    ``|d| < 0.7``, so ``JS`` keeps full relative precision when ``p`` and ``q`` are close, and as
    ``p log(2 p / s) + q log(2 q / s)`` elsewhere. ``JS = sum_c s_c h(d_c) / 2`` over the class axis,
    in ``[0, log 2]``.

    Gradients: ``d JS / d p_c = log(2 p_c / (p_c + q_c)) / 2 = log(1 + d_c) / 2``, and
    ``d JS / d q_c = log(1 - d_c) / 2`` (``-inf`` where that probability is 0 and the other is not).
    Where ``p_c = q_c = 0`` both are ``log(2) / 2``: the one-sided partial derivatives, since the
    class's term grows as ``p_c log(2) / 2`` when ``p_c`` alone moves off 0.
    """
    return xp.sum(_js_terms(xp, p, q), axis=1) / 2


@jensen_shannon_divergence.defvjp
def _js_vjp(xp, cot, p, q, *, axis):
    s, d = _half_log_ratio_terms(xp, p, q)
    g = _expand(xp, cot) / 2
    return g * _log_twice_share(xp, p, s, d), g * _log_twice_share(xp, q, s, -d)


def _log_twice_share(xp, a, s, d):
    """``log(2 a / s) = log(1 + d)``: ``log1p`` while ``d`` is small (no cancellation), the log of the
    ratio once ``a`` is far from ``s / 2`` (where ``d`` may round to -1 although ``a > 0``), and
    ``log 2`` where ``s = 0`` (the one-sided limit as ``a`` alone grows from 0)."""
    near = xp.abs(d) < 0.5
    share = xp.where(near, log1m(-xp.where(near, d, xp.zeros_like(d)), xp=xp), _log_twice_ratio(xp, a, s))
    return xp.where(s == 0, xp.full_like(share, math.log(2)), share)


# ------------------------------------------------------------------------------------------------
# From hinge to cross-entropy (001 seed): each step a registered loss.

_HINGE_SCORES = Input("logits", shape="N C", domain=D.logits, doc="class scores z")
_HINGE_LABELS = Input("target", dtype="int", shape="N", differentiable=False, classes="C", domain=D.class_indices)


def _margin(default, grid):
    return Param("margin", default, low=0.0, grid=grid, doc="margin m")


def _target_score(xp, logits, target):
    return take_along_axis(logits, target, axis=1, xp=xp)


def _hinge_sum(xp, scores, target, p, margin):
    """``sum_{i != y} max(0, margin - z_y + z_i)^p`` per sample: the Weston-Watkins hinge behind
    :func:`multiclass_hinge_loss` and PyTorch's :func:`multi_margin_loss`."""
    hot = one_hot(target, scores.shape[1], axis=1, xp=xp)
    u = margin - _expand(xp, _target_score(xp, scores, target)) + scores
    return xp.sum(xp.where(hot, xp.zeros_like(u), xp.maximum(u, 0.0)) ** p, axis=1)


def _hinge_sum_grad(xp, scores, target, p, margin):
    """d/dz of :func:`_hinge_sum`: ``p u_i^(p-1) [u_i > 0]`` on ``z_i`` (``i != y``), minus their sum on ``z_y``."""
    hot = one_hot(target, scores.shape[1], axis=1, xp=xp)
    u = margin - _expand(xp, _target_score(xp, scores, target)) + scores
    active = (u > 0) & ~hot
    d = xp.where(active, p * xp.where(active, u, xp.ones_like(u)) ** (p - 1), xp.zeros_like(u))
    return d - xp.astype(hot, scores.dtype) * xp.sum(d, axis=1, keepdims=True)


def _others(xp, logits, target):
    """``(onehot, scores with the target masked to -inf)``."""
    hot = one_hot(target, logits.shape[1], axis=1, xp=xp)
    return hot, xp.where(hot, -math.inf, logits)


@loss(
    family="classification",
    inputs=[_HINGE_SCORES, _HINGE_LABELS],
    params=[_margin(1.0, (0.0, 2.5))],
    check=_at_least_two_classes,
    counterparts={"torch": "torch.nn.functional.multi_margin_loss (p=1, times C: PyTorch divides by C)"},
    references=["Weston & Watkins, Support vector machines for multi-class pattern recognition, 1999", "001 seed"],
)
def multiclass_hinge_loss(xp, logits, target, *, margin):
    """Multi-class hinge: ``l = sum_{i != y} max(z_i - z_y + m, 0)``.

    Gradient (subgradient 0 at the kink, as PyTorch): with ``a_i = [z_i - z_y + m > 0]`` for
    ``i != y``, ``d l / d z_i = a_i`` and ``d l / d z_y = -sum_i a_i``.
    """
    return _hinge_sum(xp, logits, target, 1, margin)


@multiclass_hinge_loss.defvjp
def _multiclass_hinge_vjp(xp, cot, logits, target, *, margin):
    return _expand(xp, cot) * _hinge_sum_grad(xp, logits, target, 1, margin), None


@loss(
    family="classification",
    inputs=[_HINGE_SCORES, _HINGE_LABELS],
    params=[_margin(1.0, (0.0, 0.3))],
    check=_at_least_two_classes,
    counterparts={"optax": "optax.losses.multiclass_hinge_loss (margin 1)"},
    references=["Crammer & Singer, On the algorithmic implementation of multiclass kernel-based vector machines, JMLR 2001", "001 seed"],
)
def crammer_singer_hinge_loss(xp, logits, target, *, margin):
    """Max-violation hinge: ``l = max(max_{i != y} z_i - z_y + m, 0)``.

    Gradient: where the hinge is active, ``+1`` shared equally among the tied largest non-target
    scores (the convention of ``jnp.max`` and ``torch.amax``) and ``-1`` on ``z_y``; 0 otherwise.
    """
    _, others = _others(xp, logits, target)
    return xp.maximum(xp.max(others, axis=1) - _target_score(xp, logits, target) + margin, 0.0)


@crammer_singer_hinge_loss.defvjp
def _crammer_singer_vjp(xp, cot, logits, target, *, margin):
    hot, others = _others(xp, logits, target)
    top = xp.max(others, axis=1, keepdims=True)
    active = _expand(xp, xp.astype(xp.squeeze(top, axis=1) - _target_score(xp, logits, target) + margin > 0, logits.dtype))
    ties = xp.astype(others == top, logits.dtype)
    count = xp.sum(ties, axis=1, keepdims=True)
    share = ties / xp.where(count == 0, xp.ones_like(count), count)  # count 0 only in NaN rows
    return _expand(xp, cot) * active * (share - xp.astype(hot, logits.dtype)), None


def _lse_hinge_parts(xp, logits, target, margin):
    """``(u, q, hot)``: ``u = LSE_{i != y}(z_i - z_y + m)``, ``q`` the softmax of those over ``i != y``.

    Taken over the differences ``z_i - z_y`` (exact where they are small), not as ``LSE(z_i) - z_y``,
    which cancels where the hinge is near its corner (``LSE(1e4, 1e4) - 1e4`` keeps 4 digits of ``log 2``).
    In the rows of :func:`_infinite_margin_rows` ``u`` is ``+-inf`` or undefined, and taken as
    ``LSE_{i != y}(z_i) - z_y + m`` on the scores themselves (NaN where both terms are infinities of
    one sign), ``q`` as the softmax of the non-target scores by :func:`refloss.xp.saturated_softmax`'s rule.
    """
    limit = _infinite_margin_rows(xp, logits, target)
    v, lo, hot = _relative_scores(xp, xp.where(limit, xp.zeros_like(logits), logits), target, 1.0, margin)
    v = xp.where(hot, -math.inf, v)
    u, q = logsumexp(v, axis=1, lo=lo, xp=xp), softmax(v, axis=1, lo=lo, xp=xp)
    _, others = _others(xp, logits, target)
    lse, z_y = logsumexp(others, axis=1, xp=xp), _target_score(xp, logits, target)
    tied = (lse == z_y) & xp.isinf(z_y)  # inf - inf: u takes every value as the scores grow
    zero = xp.zeros_like(z_y)
    u_limit = xp.where(tied, xp.full_like(z_y, math.nan), (xp.where(tied, zero, lse) - xp.where(tied, zero, z_y)) + margin)
    rows, q_top = saturated_softmax(xp, others, 1)
    q_limit = xp.where(rows, q_top, softmax(others, axis=1, xp=xp))
    u = xp.where(xp.squeeze(limit, axis=1), u_limit, u)
    return u, xp.where(limit, q_limit, q), xp.astype(hot, logits.dtype)


def _infinite_margin_rows(xp, logits, target):
    """Rows (``(N, 1)``) where a target-relative score ``z_i - z_y`` meets an infinity: ``z_y`` not
    finite, or another score ``+inf``. Elsewhere every ``z_i - z_y`` is finite or ``-inf``; there the
    margin losses below take their value from the scores themselves, as the limit of
    :func:`refloss.xp.saturated_softmax`'s rule (no ``inf - inf`` is formed)."""
    z_y = _target_score(xp, logits, target)
    return _expand(xp, ~xp.isfinite(z_y)) | xp.any(logits == math.inf, axis=1, keepdims=True)


def _relative_scores(xp, logits, target, scale, margin):
    """``s (z_i - z_y + m)`` as a double-double ``(hi, lo)`` (TwoSum, TwoProd), and the one-hot mask.

    Rounding the difference to float64 alone errs by ``|s (z_i - z_y + m)| 2^-53``, which the
    softmax turns into that many relative ULPs of the loss (``s = 30``: ~70 ULPs).
    """
    hot = one_hot(target, logits.shape[1], axis=1, xp=xp)
    d, d_lo = two_sum(xp, logits, -_expand(xp, _target_score(xp, logits, target)))
    t, t_lo = two_sum(xp, d, xp.full_like(d, margin))
    hi, p_lo = two_prod(xp, xp.full_like(t, scale), t)
    return hi, p_lo + scale * (t_lo + d_lo), hot


def _margin_logits(xp, logits, target, scale, margin):
    """``(z', lo, hot)``: logits (a double-double ``z' + lo``) whose softmax at the target gives AM-Softmax's
    ``softplus(LSE_{i != y}(s z_i) - s (z_y - m)) = -log softmax(z')_y``.

    ``z' = z`` at ``s = 1, m = 0`` (plain cross-entropy); otherwise the target-relative
    ``z'_i = s (z_i - z_y + m)`` (:func:`_relative_scores`) and ``z'_y = 0``, exact where scores tie
    (``s (z_y - m)`` would round at the scale of ``z_y``: at ``z = 1e4`` that leaves 4 digits of the loss).
    In the rows of :func:`_infinite_margin_rows`, where the loss is 0, ``+inf`` or undefined, the
    absolute ``z' = s z - s m onehot(y)`` (same softmax, and ``s > 0`` forms no ``inf - inf``).
    """
    if scale == 1 and margin == 0:
        return logits, None, one_hot(target, logits.shape[1], axis=1, xp=xp)
    limit = _infinite_margin_rows(xp, logits, target)
    relative, lo, hot = _relative_scores(xp, xp.where(limit, xp.zeros_like(logits), logits), target, scale, margin)
    absolute, absolute_lo = two_prod(xp, xp.full_like(logits, scale), logits)
    absolute = absolute - (scale * margin) * xp.astype(hot, logits.dtype)
    zero = xp.zeros_like(relative)
    return (xp.where(limit, absolute, xp.where(hot, zero, relative)),
            xp.where(limit, absolute_lo, xp.where(hot, zero, lo)), hot)


def _margin_softmax_loss(xp, logits, target, scale, margin):
    """``-log softmax(z')_y`` (see :func:`_margin_logits`): no cancellation of ``LSE`` against ``s (z_y - m)``;
    rows of maximum ``+inf`` by :func:`refloss.xp.saturated_softmax`'s rule (0 at a sole ``+inf`` target)."""
    shifted, lo, _ = _margin_logits(xp, logits, target, scale, margin)
    rows, p = saturated_softmax(xp, shifted, 1)
    lsm = xp.where(rows, safe_log(p, xp=xp), log_softmax(shifted, axis=1, lo=lo, xp=xp))
    return -take_along_axis(lsm, target, axis=1, xp=xp)


def _margin_softmax_grad(xp, cot, logits, target, scale, margin):
    """``s (softmax(z') - onehot(y))``, with ``p'_y - 1 = -(1 - p'_y)`` from :func:`refloss.xp.softmax_complement`;
    rows of maximum ``+inf`` by :func:`refloss.xp.saturated_softmax`'s rule."""
    shifted, lo, hot = _margin_logits(xp, logits, target, scale, margin)
    rows, p_top = saturated_softmax(xp, shifted, 1)
    p = xp.where(rows, p_top, softmax(shifted, axis=1, lo=lo, xp=xp))
    complement = xp.where(rows, 1 - p_top, softmax_complement(shifted, axis=1, lo=lo, xp=xp))
    return _expand(xp, cot * scale) * xp.where(hot, -complement, p)


@loss(
    family="classification",
    inputs=[_HINGE_SCORES, _HINGE_LABELS],
    params=[_margin(0.0, (0.5,))],
    check=_at_least_two_classes,
    counterparts={},
    references=["001 seed (LogSumExp as the smooth max)"],
)
def logsumexp_hinge_loss(xp, logits, target, *, margin):
    """Hinge on the smooth maximum: ``l = max(log sum_{i != y} exp(z_i) - z_y + m, 0)``.

    Gradient where active: ``softmax over the non-target scores`` on ``z_i`` (summing to 1) and
    ``-1`` on ``z_y``; 0 elsewhere (and at the kink).

    Infinite scores give the limit, NaN where it depends on how they grow (the rule of
    :func:`refloss.xp.saturated_softmax`). With ``A = LSE_{i != y} z_i`` (``+inf`` if another score is, ``-inf`` if
    all are) the hinge's argument is ``A - z_y + m``: 0, gradient 0, at a sole ``+inf`` target;
    ``+inf`` where ``A = +inf`` or ``z_y = -inf``, gradient as above with the limit softmax (NaN only
    at tied ``+inf`` scores); NaN, and a NaN gradient row, where ``A`` and ``z_y`` are infinities of
    one sign (``inf - inf``: the argument takes every value).
    """
    u, _, _ = _lse_hinge_parts(xp, logits, target, margin)
    return xp.maximum(u, 0.0)


@logsumexp_hinge_loss.defvjp
def _lse_hinge_vjp(xp, cot, logits, target, *, margin):
    u, q, hot = _lse_hinge_parts(xp, logits, target, margin)
    # where, not a product with [u > 0]: q is NaN where every other score is -inf (u = -inf, gradient 0)
    inactive = xp.where(u <= 0, xp.zeros_like(u), xp.full_like(u, math.nan))  # NaN where u is
    return _expand(xp, cot) * xp.where(_expand(xp, u > 0), q - hot, _expand(xp, inactive)), None


@loss(
    family="classification",
    inputs=[_HINGE_SCORES, _HINGE_LABELS],
    params=[],
    check=_at_least_two_classes,
    counterparts={"torch": "torch.nn.functional.cross_entropy (identical)"},
    references=["001 seed: softplus smoothing of the LogSumExp hinge gives softmax cross-entropy"],
)
def softplus_logsumexp_loss(xp, logits, target):
    """The LogSumExp hinge smoothed by softplus: ``l = softplus(log sum_{i != y} exp(z_i) - z_y)``.

    Algebraically ``log(1 + sum_{i != y} e^{z_i} / e^{z_y}) = -log softmax(z)_y``: softmax
    cross-entropy, reached by smoothing max twice (the 001 seed's derivation; a test checks it).

    Computed as that ``-log softmax(z)_y`` (a rounded ``LSE - z_y`` would cancel where the target
    ties the others).

    Gradient: ``sigma(u) (q - onehot(y))`` with ``u`` the argument of softplus and ``q`` the softmax
    over the non-target scores; ``sigma(u) q_i = p_i`` and ``sigma(u) = 1 - p_y``, i.e. ``p - onehot``
    (``p_y - 1`` evaluated as ``-(1 - p_y)``).

    Infinite scores give the limit, NaN where it depends on how they grow (the rule of
    :func:`refloss.xp.saturated_softmax`): 0, gradient 0, at a sole ``+inf`` target; ``+inf`` where another score
    is ``+inf`` or ``z_y = -inf``, with gradient ``p - onehot(y)`` for the limit ``p`` (NaN only at tied
    ``+inf`` scores); NaN where the target ties another ``+inf`` or every score is ``-inf``.
    """
    return _margin_softmax_loss(xp, logits, target, 1.0, 0.0)


@softplus_logsumexp_loss.defvjp
def _softplus_lse_vjp(xp, cot, logits, target):
    return _margin_softmax_grad(xp, cot, logits, target, 1.0, 0.0), None


@loss(
    family="classification",
    inputs=[Input("logits", shape="N C", domain=D.logits, doc="class scores, typically cosines in [-1, 1]"), _HINGE_LABELS],
    params=[
        Param("scale", 30.0, low=0.0, low_open=True, grid=(1.0,), doc="s"),
        Param("margin", 0.35, grid=(0.0, 1.0), doc="additive margin m (may be negative)"),
    ],
    check=_at_least_two_classes,
    counterparts={},
    references=["001 seed: softplus(LSE(s z_i; i != y) - s (z_y - m))", "Wang et al., Additive Margin Softmax, 2018"],
)
def additive_margin_softplus_loss(xp, logits, target, *, scale, margin):
    """Additive-margin smooth hinge: ``l = softplus(LSE_{i != y}(s z_i) - s (z_y - m))``.

    Equal to ``-log(e^{s(z_y - m)} / (e^{s(z_y - m)} + sum_{i != y} e^{s z_i}))``: AM-Softmax/CosFace
    when ``z`` are cosines; plain cross-entropy at ``s = 1, m = 0``. Computed in that form, as
    ``-log softmax(z')_y`` with ``z'_i = s (z_i - z_y + m)`` and ``z'_y = 0``.

    Gradient: ``s sigma(u) (q - onehot(y))``, ``q`` the softmax over the non-target ``s z_i``; that is
    ``s (softmax(z') - onehot(y))``.

    Infinite scores: as :func:`softplus_logsumexp_loss` (the gradient times ``s``).
    """
    return _margin_softmax_loss(xp, logits, target, scale, margin)


@additive_margin_softplus_loss.defvjp
def _am_softplus_vjp(xp, cot, logits, target, *, scale, margin):
    return _margin_softmax_grad(xp, cot, logits, target, scale, margin), None


# ------------------------------------------------------------------------------------------------
# PyTorch's margin losses.


@loss(
    family="classification",
    inputs=[Input("input", domain=D.logits), Input("target", differentiable=False, domain=D.signs, doc="labels in {-1, 1}")],
    counterparts={"torch": "torch.nn.functional.soft_margin_loss (computed naively: inf, and a NaN gradient, for -yx > 88 in float32, > 709 in float64)"},
    references=["PyTorch Loss.cpp (soft_margin_loss)"],
)
def soft_margin_loss(xp, input, target):
    """Two-class logistic loss: ``l = log(1 + exp(-y x)) = softplus(-y x)``, without overflow.

    Gradient: ``d l / d x = -y sigma(-y x)``.
    """
    return softplus(-target * input, xp=xp)


@soft_margin_loss.defvjp
def _soft_margin_vjp(xp, cot, input, target):
    return cot * (-target) * sigmoid(-target * input, xp=xp), None


@loss(
    family="classification",
    inputs=[
        Input("input", shape="N C", domain=D.logits),
        Input("target", shape="N C", differentiable=False, values=(0.0, 1.0), domain=D.hard_binary_targets, doc="0/1 labels"),
    ],
    params=[_CLASS_WEIGHT],
    counterparts={"torch": "torch.nn.functional.multilabel_soft_margin_loss"},
    references=["PyTorch torch/nn/functional.py (multilabel_soft_margin_loss)"],
)
def multilabel_soft_margin_loss(xp, input, target, *, weight):
    """One-vs-all logistic loss averaged over classes::

        l_n = (1 / C) sum_c w_c [y_c softplus(-x_c) + (1 - y_c) softplus(x_c)]

    Gradient: ``d l_n / d x_c = (w_c / C) [(1 - y_c) sigma(x_c) - y_c sigma(-x_c)]``.
    """
    w = _per_class(xp, weight, input)
    return xp.sum(w * _weighted_binary_terms(xp, input, target, 1.0, 1.0), axis=1) / input.shape[1]


@multilabel_soft_margin_loss.defvjp
def _multilabel_soft_margin_vjp(xp, cot, input, target, *, weight):
    w = _per_class(xp, weight, input)
    grad = w * _weighted_binary_grad_x(xp, input, target, 1.0, 1.0) / input.shape[1]
    return _expand(xp, cot) * grad, None


@loss(
    family="classification",
    inputs=[Input("input", shape="N C", domain=D.logits), _HINGE_LABELS],
    params=[
        Param("p", 1, kind="choice", choices=(1, 2), grid=(2,), doc="exponent of the hinge"),
        Param("margin", 1.0, grid=(0.5,), doc="margin (any real, as PyTorch)"),
        _CLASS_WEIGHT,
    ],
    counterparts={"torch": "torch.nn.functional.multi_margin_loss"},
    references=["PyTorch aten/src/ATen/native/LossMultiMargin.cpp"],
)
def multi_margin_loss(xp, input, target, *, p, margin, weight):
    """PyTorch's multi-class margin loss: ``l_n = (1 / C) sum_{i != y} w[y] max(0, margin - x_y + x_i)^p``.

    ``mean`` divides by ``N`` even with class weights (PyTorch).

    Gradient: with ``u_i = margin - x_y + x_i``, ``d l / d x_i = w[y] p u_i^(p-1) [u_i > 0] / C`` for
    ``i != y``, and ``d l / d x_y`` is minus their sum.
    """
    w_y = _target_weight(xp, weight, target, None, input)
    return w_y * _hinge_sum(xp, input, target, p, margin) / input.shape[1]


@multi_margin_loss.defvjp
def _multi_margin_vjp(xp, cot, input, target, *, p, margin, weight):
    w_y = _target_weight(xp, weight, target, None, input)
    return _expand(xp, cot * w_y / input.shape[1]) * _hinge_sum_grad(xp, input, target, p, margin), None


def _multilabel_parts(xp, input, target):
    """``(h, valid, is_target, hot)`` over ``(N, J, I)``: the hinge ``1 - x[y_j] + x_i`` per listed target ``j``."""
    c = input.shape[1]
    valid = xp.cumulative_sum(xp.astype(target < 0, xp.int64), axis=1) == 0
    safe = xp.where(valid, target, xp.zeros_like(target))
    hot = one_hot(safe, c, axis=-1, xp=xp) & xp.expand_dims(valid, axis=2)  # (N, J, C)
    is_target = xp.any(hot, axis=1)  # (N, C)
    x_t = xp.sum(xp.where(hot, xp.expand_dims(input, axis=1), 0.0), axis=2)
    h = 1 - xp.expand_dims(x_t, axis=2) + xp.expand_dims(input, axis=1)
    pair = xp.expand_dims(valid, axis=2) & xp.expand_dims(~is_target, axis=1)
    return h, pair, hot


@loss(
    family="classification",
    inputs=[
        Input("input", shape="N C", domain=D.logits),
        Input("target", dtype="int", shape="N C", differentiable=False, classes="C", extra_labels=(-1,),
              domain=D.multilabel_indices, doc="class indices, then -1 padding"),
    ],
    counterparts={"torch": "torch.nn.functional.multilabel_margin_loss"},
    references=["PyTorch aten/src/ATen/native/LossMultiLabelMargin.cpp"],
)
def multilabel_margin_loss(xp, input, target):
    """PyTorch's multi-label hinge: ``l_n = sum_{j in Y} sum_{i not in Y} max(0, 1 - (x[j] - x[i])) / C``.

    ``Y`` is the list of class indices in ``target[n]`` before its first ``-1`` (entries after it are
    ignored; a listed duplicate counts twice, as in PyTorch's loop).

    Gradient: each active pair ``(j, i)`` adds ``1 / C`` to ``d l / d x[i]`` and ``-1 / C`` to ``d l / d x[j]``.
    """
    h, pair, _ = _multilabel_parts(xp, input, target)
    return xp.sum(xp.where(pair, xp.maximum(h, 0.0), xp.zeros_like(h)), axis=(1, 2)) / input.shape[1]


@multilabel_margin_loss.defvjp
def _multilabel_margin_vjp(xp, cot, input, target):
    h, pair, hot = _multilabel_parts(xp, input, target)
    active = xp.astype(pair & (h > 0), input.dtype)  # (N, J, I)
    per_j = xp.sum(active, axis=2)  # (N, J)
    to_targets = xp.sum(xp.astype(hot, input.dtype) * xp.expand_dims(per_j, axis=2), axis=1)  # (N, C)
    grad = (xp.sum(active, axis=1) - to_targets) / input.shape[1]
    return _expand(xp, cot) * grad, None


__all__ = [
    "additive_margin_softplus_loss",
    "balanced_binary_cross_entropy",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "crammer_singer_hinge_loss",
    "cross_entropy",
    "jensen_shannon_divergence",
    "kl_div",
    "logsumexp_hinge_loss",
    "multi_margin_loss",
    "multiclass_hinge_loss",
    "multilabel_margin_loss",
    "multilabel_soft_margin_loss",
    "nll_loss",
    "sigmoid_focal_loss",
    "soft_margin_loss",
    "softmax_cross_entropy",
    "softmax_focal_loss",
    "softplus_logsumexp_loss",
    "weighted_binary_cross_entropy",
]
