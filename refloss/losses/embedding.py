"""Embedding (metric-learning) losses and feature regularisers.

Centre-based regularisers (center loss and its centre update, center-invariant loss, range loss,
ring loss), pair and triplet losses (contrastive, PyTorch and FaceNet triplet), and PyTorch's
embedding losses (cosine embedding, margin ranking, hinge embedding).

Layout: feature vectors are rows, ``(N, D)``; integer class labels are ``(N,)``; centres ``(C, D)``.
Every forward returns the unreduced loss (one value per sample; :func:`range_loss`, a loss of the
whole batch, returns a scalar). Every VJP is derived by hand, in closed form, and stated
in the docstring.

Distances are computed without overflow or underflow of intermediate powers: a row is divided by a
power of two near its largest magnitude (exact), the norm taken, and the power of two multiplied
back (:func:`_lp_norm`). Where a norm is zero its gradient ``v / ||v||`` is undefined; refloss
uses 0 there, as PyTorch's norm backward does.

Subgradients at hinge corners (``max(z, 0)`` at ``z = 0``) follow the implementation each loss is
checked against: PyTorch's ``clamp_min`` (triplet, cosine embedding, margin ranking, hinge
embedding) and TensorFlow's ``maximum`` (FaceNet) pass the full gradient at ``z = 0``; Caffe
(contrastive, range) and ``relu`` (pytorch-metric-learning) pass none.
"""

from __future__ import annotations

import math
from fractions import Fraction

import array_api_compat

from .. import domains as D
from ..loss import Input, Param, loss
from ..xp import two_sum as _two_sum, two_prod as _two_prod, dd_sum as _dd_sum, dd_dot as _dd_dot, dd_mul as _dd_mul, dd_sub as _dd_sub, renormalise as _renormalise  # double-double pieces
from ..xp import namespace, one_hot, sum_to_shape, take_along_axis, xmul
from ..xp import dd_add as _dd_add, dd_div as _dd_div, dd_exp as _exp_dd, dd_log as _log_dd

# ------------------------------------------------------------------------------------------------
# Shared helpers.

# aten/src/ATen/native/Loss.cpp: ``constexpr float EPSILON = 1e-12``, a float32 constant, so the value
# PyTorch adds (in every dtype) is float32(1e-12) = 9.999999960041972e-13, not 1e-12.
_TORCH_COSINE_EPSILON = 9.999999960041972e-13


def _device(x):
    return array_api_compat.device(x)


def _row_scale(xp, a):
    """``(e, s = 2**e)`` per row of ``a >= 0`` (last axis removed): ``e = floor(log2(max a))``, and
    ``e = 0`` for rows whose maximum is 0 or not finite. Dividing by ``s`` is exact."""
    m = xp.max(a, axis=-1)
    live = (m > 0) & (m < math.inf)
    e = xp.where(live, xp.floor(xp.log2(xp.where(live, m, xp.ones_like(m)))), xp.zeros_like(m))
    return e, 2.0**e


def _lp_norm(xp, v, p, eps=0.0):
    """``(sum_k |v_k|^p + eps)^(1/p)`` along the last axis, for ``p >= 1`` and ``eps >= 0``.

    Rows are divided by the power of two ``s`` with ``max |v| / s`` in [1, 2) (exact), so no
    intermediate power overflows or underflows for ``p <= 100``: ``s (sum (|v|/s)^p + eps s^-p)^(1/p)``. Where ``s < 1`` and ``eps > 0``
    the ``eps`` term dominates the rounding and the unscaled sum is used instead (``s^p`` may then
    underflow harmlessly). ``p = 1`` is the plain sum, which cannot overflow unless the result does.
    """
    a = xp.abs(v)
    if p == 1:
        out = xp.sum(a, axis=-1)
        return out + eps if eps else out
    e, s = _row_scale(xp, a)
    u = a / xp.expand_dims(s, axis=-1)
    total = xp.sum(u * u, axis=-1) if p == 2 else xp.sum(u**p, axis=-1)

    def root(z):
        return xp.sqrt(z) if p == 2 else z ** (1.0 / p)

    if _is_zero(eps):
        return s * root(total)
    big = e >= 0
    e_big = xp.where(big, e, xp.zeros_like(e))
    e_small = xp.where(big, xp.zeros_like(e), e)
    scaled = 2.0**e_big * root(total + eps * 2.0 ** (-p * e_big))
    plain = root(2.0 ** (p * e_small) * total + eps)
    return xp.where(big, scaled, plain)


def _lp_norm_grad(xp, v, norm, p):
    """``d norm / d v = sign(v) (|v| / norm)^(p - 1)`` for the norm of :func:`_lp_norm` (``|v_k| <=
    norm``, so nothing overflows); 0 where ``norm = 0`` (PyTorch's norm backward)."""
    zero = norm == 0
    den = xp.expand_dims(xp.where(zero, xp.ones_like(norm), norm), axis=-1)
    if p == 1:
        g = xp.sign(v) * xp.ones_like(den)
    elif p == 2:
        g = v / den
    else:
        g = xp.sign(v) * (xp.abs(v) / den) ** (p - 1)
    return xp.where(xp.expand_dims(zero, axis=-1), xp.zeros_like(g), g)


def _split_cotangent(xp, cot):
    """``(kappa, cot / kappa)`` with ``kappa = max |cot|`` (1 if that is 0, not finite, or ``cot``
    empty). For VJPs that sum cotangent-weighted terms across samples: a uniform cotangent (every
    mean-like reduction) becomes exactly 1, so those reductions give the ``sum`` gradient times
    ``kappa`` to an ulp, even where the sum cancels."""
    if array_api_compat.size(cot) == 0:
        return 1.0, cot
    kappa = xp.max(xp.abs(cot))
    kappa = xp.where((kappa > 0) & (kappa < math.inf), kappa, xp.ones_like(kappa))
    return kappa, cot / kappa


def _col(xp, x):
    """``(N,)`` -> ``(N, 1)``, to scale rows."""
    return xp.expand_dims(x, axis=-1)


def _hinge(xp, z):
    return xp.maximum(z, xp.zeros_like(z))


def _indicator(xp, mask, like):
    return xp.astype(mask, like.dtype)


def _propagate_nan(xp, out, value):
    """``out``, with NaN wherever ``value`` is NaN (for inputs a branch would otherwise ignore)."""
    return xp.where(xp.isnan(value), value, out)


def _need_features(index, arg):
    """Check hook: input ``index`` (called ``arg``) has at least one feature column, D >= 1 (norms and
    maxima along an empty axis are undefined). The other inputs share its D."""

    def check(xp, name, *inputs, **params):
        x = inputs[index]
        if x.ndim == 2 and x.shape[1] == 0:
            raise ValueError(f"{name}: {arg} must have at least one feature column (D >= 1), got shape {tuple(x.shape)}")

    return check


_FEATURES = Input("features", shape="N D", domain=D.embeddings, doc="feature vectors, one per row")
_CLASS_LABELS = Input(
    "labels", dtype="int", shape="N", differentiable=False, classes="C", domain=D.class_indices,
    doc="class index of each feature row",
)
_CENTERS = Input("centers", shape="C D", domain=D.embeddings, doc="class centres, one per row")


# ------------------------------------------------------------------------------------------------
# Center loss and the centre update.


@loss(
    family="embedding",
    inputs=[_FEATURES, _CLASS_LABELS, _CENTERS],
    check=_need_features(0, "features"),
    counterparts={
        "caffe": "CenterLossLayer (ydwen/caffe-face; forward and feature gradient; its centre diff is center_update)",
        "pytorch-center-loss": "CenterLoss (KaiyangZhou; = 2x the mean here, plus (C - 1) 1e-12 from its clamp)",
        "facenet": "facenet.center_loss (davidsandberg; tf.nn.l2_loss, i.e. reduction='sum')",
    },
    references=[
        "Wen, Zhang, Li, Qiao, A Discriminative Feature Learning Approach for Deep Face Recognition, ECCV 2016",
        "ydwen/caffe-face src/caffe/layers/center_loss_layer.cpp",
        "003 seed, Center Loss",
    ],
)
def center_loss(xp, features, labels, centers):
    """Center loss: half the squared distance of each feature to its class centre::

        l_i = 1/2 ||x_i - c_{y_i}||^2

    ``reduction='sum'`` is the paper's ``L_C``; ``'mean'`` the official Caffe layer (divides by the
    batch size M); KaiyangZhou's PyTorch port has no 1/2 (twice ``'mean'``, plus ``(C - 1) 1e-12``
    from a clamp applied after masking).

    Gradient (exact): ``d l_i / d x_i = x_i - c_{y_i}`` and ``d L / d c_j = -sum_{i: y_i = j} (x_i -
    c_j)``, since ``l_i`` depends on ``c`` only through ``c_{y_i}``. The Caffe layer and its PyTorch
    ports do **not** back-propagate this into the centres: they move the centres with the paper's
    Eq. 4 update, ``delta c_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)``, which is
    :func:`center_update` here.

    Shapes: ``features (N, D)``, ``labels (N,)`` integers in ``[0, C)``, ``centers (C, D)``.
    """
    diff = features - xp.take(centers, labels, axis=0)
    return 0.5 * xp.sum(diff * diff, axis=1)


@center_loss.defvjp
def _center_loss_vjp(xp, cot, features, labels, centers):
    diff = features - xp.take(centers, labels, axis=0)
    kappa, unit = _split_cotangent(xp, cot)
    hot = one_hot(labels, centers.shape[0], dtype=diff.dtype, xp=xp)
    return _col(xp, cot) * diff, None, -kappa * xp.matmul(xp.matrix_transpose(hot), _col(xp, unit) * diff)


def center_update(features, labels, centers, alpha=0.5):
    """One centre update of Wen et al. (ECCV 2016), Eq. 4, as the Caffe layer applies it::

        delta c_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j),     c_j <- c_j - alpha delta c_j

    with ``n_j`` the number of samples of class ``j`` in the batch (classes absent from the batch do
    not move). This is not a gradient of :func:`center_loss` (the ``1 / (1 + n_j)`` damping and the
    independence from the loss weight are the point of the rule); in Caffe ``alpha`` is the centre
    blob's learning rate. facenet's ``alfa`` is ``1 - alpha`` of a per-sample version of this rule.

    Returns the new centres, an array of the inputs' namespace; the inputs are not modified.

    Shapes: ``features (N, D)``, ``labels (N,)`` integers in ``[0, C)``, ``centers (C, D)``;
    ``alpha`` a real number in [0, 1] (the paper's range).
    """
    name = "center_update"
    for arg, x in (("features", features), ("labels", labels), ("centers", centers)):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"{name}: {arg} must be an array (NumPy, CuPy, array-api-strict, ...), got {type(x).__name__}")
    try:
        xp = namespace(features, labels, centers)
    except TypeError as exc:
        raise TypeError(f"{name}: {exc}") from None
    for arg, x in (("features", features), ("centers", centers)):
        if not xp.isdtype(x.dtype, "real floating"):
            raise TypeError(f"{name}: {arg} must be a real floating array, got dtype {x.dtype}")
    if not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(f"{name}: labels must be an integer array (class indices), got dtype {labels.dtype}")
    if features.ndim != 2:
        raise ValueError(f"{name}: features must be of shape (N, D), got shape {tuple(features.shape)}")
    n, d = features.shape
    if tuple(labels.shape) != (n,):
        raise ValueError(f"{name}: labels must be of shape (N={n},), got shape {tuple(labels.shape)}")
    if centers.ndim != 2 or centers.shape[1] != d:
        raise ValueError(f"{name}: centers must be of shape (C, D={d}), got shape {tuple(centers.shape)}")
    c = centers.shape[0]
    if n and bool(xp.any((labels < 0) | (labels >= c))):
        raise ValueError(
            f"{name}: labels must be class indices in [0, {c}), got values in [{int(xp.min(labels))}, {int(xp.max(labels))}]"
        )
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{name}: alpha must be a real number in [0.0, 1.0], got {alpha!r}")
    hot = one_hot(labels, c, dtype=centers.dtype, xp=xp)
    counts = xp.sum(hot, axis=0)
    pull = xp.matmul(xp.matrix_transpose(hot), xp.take(centers, labels, axis=0) - features)
    return centers - alpha * (pull / _col(xp, 1 + counts))


# ------------------------------------------------------------------------------------------------
# Center-invariant loss.


@loss(
    family="embedding",
    inputs=[
        Input("features", shape="N D", differentiable=False, domain=D.moderate_embeddings,
              doc="feature vectors (the value does not depend on them)"),
        _CLASS_LABELS,
        Input("centers", shape="C D", domain=D.moderate_embeddings, doc="class centres"),
    ],
    check=_need_features(0, "features"),
    counterparts={
        "caffe": "CenterLossLayer (wuyuebupt/caffe-face, branch center-invariant-loss; 'cia only' build, "
        "gradient pushed onto the features instead)",
    },
    references=[
        "Wu, Liu, Li, Fu, Deep Face Recognition with Center Invariant Loss, ACM MM Workshops (Thematic Workshops) 2017",
        "wuyuebupt/caffe-face (branch center-invariant-loss) src/caffe/layers/center_loss_layer.cpp",
        "003 seed, Center Invariant Loss",
    ],
)
def center_invariant_loss(xp, features, labels, centers):
    """Center-invariant loss: pulls every centre's squared norm to the mean squared norm::

        s_j = ||c_j||^2,   tau = (1/C) sum_j s_j,   lambda_i = s_{y_i} - tau,   l_i = lambda_i^2 / 4

    ``reduction='mean'`` is the Caffe layer's ``loss_ca = sum_i lambda_i^2 / (4M)``; the paper weights
    it by ``gamma`` next to the softmax and center losses. The value does not depend on the
    features: they are an input so that the call matches :func:`center_loss` and the Caffe layer,
    are declared non-differentiable (their gradient, 0, is reported as ``None``; pass them as a
    constant under autograd), and a NaN feature row still gives a NaN loss for its sample (never
    hidden).

    Gradient (exact, in the centres): with ``w_j = sum_{i: y_i = j} g_i`` (``g`` the cotangent),
    ``A_j = lambda_j w_j`` and ``B = sum_j A_j``, ``d/d c_j = (A_j - B / C) c_j``: ``d(lambda^2/4)/d lambda
    = lambda/2``, ``d lambda_i / d s_j = [j = y_i] - 1/C`` and ``d s_j / d c_j = 2 c_j``. ``lambda`` is
    computed from double-double squared norms and their mean (it cancels where a norm is near the
    mean), ``w`` as double-double sums (the cotangents of a class may cancel), and ``B`` as ``sum_j
    lambda_j (w_j - mean(w))`` (equal, as ``sum_j lambda_j = 0``), so that a uniform ``w`` gives exactly 0. The Caffe layer instead adds ``ca_loss_weight lambda_i (1 - 1/C)
    c_{y_i} / num[y_i]`` to the *feature* gradient (``num`` the training-set class counts read from a
    file) and moves the centres with the center-loss update; that rule is not a gradient of this
    loss and is not reproduced.

    Shapes: ``features (N, D)``, ``labels (N,)`` integers in ``[0, C)``, ``centers (C, D)``.
    """
    lam = _squared_norms_and_lambda(xp, centers)
    lam_i = xp.take(lam, labels, axis=0)
    out = 0.25 * (lam_i * lam_i)
    return xp.where(xp.any(xp.isnan(features), axis=1), xp.full_like(out, math.nan), out)


def _squared_norms_and_lambda(xp, centers):
    """``lambda_j = s_j - mean_k s_k`` with ``s_j = ||c_j||^2`` (0 classes: an empty array, no 0/0).

    ``lambda_j`` cancels where a centre's squared norm is near the mean; the norms are double-doubles
    (:func:`_dd_dot`), so ``lambda_j`` is accurate to an ulp of itself."""
    return _deviation_from_mean(xp, *_dd_dot(xp, centers, centers))


def _deviation_from_mean(xp, hi, lo):
    """``x_j - mean_k x_k`` for a double-double vector ``x`` (length ``C``; 0 gives an empty array),
    rounded once: the mean is a double-double too (:func:`_dd_sum`)."""
    c = hi.shape[0]
    if c == 0:
        return hi
    t_hi, t_lo = _dd_sum(xp, xp.reshape(hi, (1, c)), xp.reshape(lo, (1, c)))
    m_hi = t_hi / c
    p, e = _two_prod(xp, m_hi, xp.full_like(m_hi, float(c)))
    m_lo = (((t_hi - p) - e) + t_lo) / c  # t_hi - p is exact (Sterbenz)
    return _dd_sub(xp, hi, lo, m_hi, m_lo)


@center_invariant_loss.defvjp
def _center_invariant_vjp(xp, cot, features, labels, centers):
    c = max(centers.shape[0], 1)
    lam = _squared_norms_and_lambda(xp, centers)
    # w_j = sum_{i: y_i = j} g_i and w_j - mean(w), both cancelling sums of the cotangent: double-doubles
    spread = xp.matrix_transpose(one_hot(labels, centers.shape[0], dtype=lam.dtype, xp=xp)) * xp.expand_dims(cot, axis=0)
    w_hi, w_lo = _dd_sum(xp, spread, xp.zeros_like(spread))
    # B = sum_j lambda_j w_j = sum_j lambda_j (w_j - mean(w)), since sum_j lambda_j = 0: a class whose
    # w_j is the mean drops out exactly (every w_j alike gives B = 0, not a rounding residue).
    b = xp.sum(lam * _deviation_from_mean(xp, w_hi, w_lo)) / c
    return None, None, _col(xp, lam * w_hi - b) * centers


# ------------------------------------------------------------------------------------------------
# Range loss.


def _range_parts(xp, features, labels, k):
    """Everything both passes of :func:`range_loss` need, for ``N >= 1`` rows (a "leader" is the
    first row of its class and stands for the class):

    ``delta[a, b] = x_a - x_b``, ``d2`` its squared norm, ``member[i, a]`` (row ``a`` is in leader
    ``i``'s class), ``pairs[i, a, b]`` (``a < b`` both in that class), the harmonic-mean pieces per
    leader (``t`` the smallest of the top-``k`` squared distances, ``k_eff = min(k, #pairs)``,
    ``total = sum_top-k t / d``, ``live`` where the class term is positive), and ``pair_weight``:
    1 for pairs above ``t``, the tie share for pairs equal to ``t``.
    """
    n = features.shape[0]
    dtype = features.dtype
    idx = xp.arange(n, device=_device(features))
    same = xp.expand_dims(labels, axis=1) == xp.expand_dims(labels, axis=0)
    earlier = xp.expand_dims(idx, axis=0) < xp.expand_dims(idx, axis=1)  # [a, b]: b < a
    leader = ~xp.any(same & earlier, axis=1)
    member = same & xp.expand_dims(leader, axis=1)  # [i, a]
    upper = xp.expand_dims(idx, axis=1) < xp.expand_dims(idx, axis=0)  # [a, b]: a < b
    pairs = xp.expand_dims(member, axis=2) & xp.expand_dims(member, axis=1) & xp.expand_dims(upper, axis=0)
    delta = xp.expand_dims(features, axis=1) - xp.expand_dims(features, axis=0)
    d2 = xp.sum(delta * delta, axis=2)
    # top-k squared distances of each class: sort the class's pair distances (others -1) descending
    masked = xp.where(pairs, xp.expand_dims(d2, axis=0), -xp.ones_like(xp.expand_dims(d2, axis=0)))
    top = xp.sort(xp.reshape(masked, (n, n * n)), axis=1, descending=True)[:, : min(k, n * n)]
    count = xp.sum(xp.astype(pairs, dtype), axis=(1, 2))
    k_eff = xp.minimum(count, xp.asarray(float(k), dtype=dtype, device=_device(features)))
    col = xp.astype(xp.arange(top.shape[1], device=_device(features)), dtype)
    valid = xp.expand_dims(col, axis=0) < xp.expand_dims(k_eff, axis=1)
    t = xp.min(xp.where(valid, top, xp.full_like(top, math.inf)), axis=1)
    live = (k_eff > 0) & (t > 0) & (t < math.inf)
    t_live = xp.expand_dims(xp.where(live, t, xp.ones_like(t)), axis=1)
    ratio = xp.where(valid & xp.expand_dims(live, axis=1), t_live / xp.where(valid & (top > 0), top, xp.ones_like(top)), xp.zeros_like(top))
    total = xp.sum(ratio, axis=1)
    # which pairs the top-k holds: those above t, and a share of those tied with it
    t3 = xp.reshape(t, (n, 1, 1))
    above = pairs & (xp.expand_dims(d2, axis=0) > t3)
    tied = pairs & (xp.expand_dims(d2, axis=0) == t3)
    n_above = xp.sum(xp.astype(above, dtype), axis=(1, 2))
    n_tied = xp.sum(xp.astype(tied, dtype), axis=(1, 2))
    share = (k_eff - n_above) / xp.where(n_tied > 0, n_tied, xp.ones_like(n_tied))
    pair_weight = xp.astype(above, dtype) + xp.astype(tied, dtype) * xp.reshape(share, (n, 1, 1))
    return {
        "delta": delta, "d2": d2, "member": member, "leader": leader, "upper": upper, "t": t,
        "k_eff": k_eff, "total": total, "live": live, "pair_weight": pair_weight,
    }


def _range_centres(xp, features, parts):
    """Batch class means per leader (zero rows for non-leaders), the counts, the squared distances
    between leaders' means, and the pairs ``(p, q)`` of leaders ``p < q``."""
    member = xp.astype(parts["member"], features.dtype)
    counts = xp.sum(member, axis=1)
    centres = xp.matmul(member, features) / _col(xp, xp.where(counts > 0, counts, xp.ones_like(counts)))
    cdelta = xp.expand_dims(centres, axis=1) - xp.expand_dims(centres, axis=0)
    cd2 = xp.sum(cdelta * cdelta, axis=2)
    leader = parts["leader"]
    cpairs = xp.expand_dims(leader, axis=1) & xp.expand_dims(leader, axis=0) & parts["upper"]
    dmin = xp.min(xp.where(cpairs, cd2, xp.full_like(cd2, math.inf)))
    return member, counts, cdelta, cd2, cpairs, dmin


def _range_value(xp, features, labels, k, margin, intra_weight, inter_weight):
    parts = _range_parts(xp, features, labels, k)
    t, total, live = parts["t"], parts["total"], parts["live"]
    t_live = xp.where(live, t, xp.zeros_like(t))
    harmonic = xp.where(live, parts["k_eff"] * t_live / xp.where(live, total, xp.ones_like(total)), xp.zeros_like(t))
    harmonic = _propagate_nan(xp, harmonic, t)
    dmin = _range_centres(xp, features, parts)[-1]
    inter = xp.maximum(margin - dmin, xp.zeros_like(dmin))
    return intra_weight * xp.sum(harmonic) + inter_weight * inter


@loss(
    family="embedding",
    inputs=[
        Input("features", shape="N D", domain=D.embeddings, doc="feature vectors, one per row"),
        Input("labels", dtype="int", shape="N", differentiable=False, domain=D.batch_labels, doc="class ids (any integers)"),
    ],
    params=[
        Param("k", 2, kind="int", low=1, grid=(1, 3), doc="number of largest intra-class distances averaged"),
        Param("margin", 0.1, low=0.0, grid=(50.0,), doc="margin on the smallest squared distance between class means"),
        Param("intra_weight", 0.5, low=0.0, grid=(1.0,), doc="alpha, weight of the intra-class term"),
        Param("inter_weight", 0.5, low=0.0, grid=(2.0,), doc="beta, weight of the inter-class term"),
    ],
    check=_need_features(0, "features"),
    counterparts={
        "caffe": "RangeLossLayer (params choose_k, intra_weight, inter_weight, margin; its inter-class gradient "
        "coefficient differs, see the docstring)",
    },
    references=[
        "Zhang, Fang, Wen, Li, Qiao, Range Loss for Deep Face Recognition with Long-Tailed Training Data, ICCV 2017",
        "Caffe range_loss_layer.cpp (RangeLossLayer, code index)",
        "003 seed, Range Loss",
    ],
)
def range_loss(xp, features, labels, *, k, margin, intra_weight, inter_weight):
    """Range loss of a batch: intra-class spans plus a margin between the closest class means::

        L_intra = sum_{classes c in the batch} k_c / sum_{j=1}^{k_c} 1 / D_{c,j}
        L_inter = max(margin - min_{p < q} ||m_p - m_q||^2, 0)
        L = intra_weight L_intra + inter_weight L_inter

    ``D_{c,1} >= D_{c,2} >= ...`` are the squared Euclidean distances between the pairs of rows of
    class ``c`` (the harmonic mean of the ``k`` largest), ``m_c`` the batch mean of class ``c``, and
    ``k_c = min(k, number of pairs of c)``. Edge cases, defined here (the Caffe layer reads past the
    end of its pair list, and divides by zero):

    - a class with fewer than ``k`` pairs uses all of them; a single-sample class contributes 0;
    - a zero distance among a class's top ``k`` makes its harmonic mean 0 (the limit), with gradient 0;
    - fewer than two classes in the batch: ``L_inter = 0`` (the min over no pairs is ``+inf``).

    Class ids may be any integers (classes are told apart by equality). The loss is one scalar per
    batch (unreduced shape ``()``), so every reduction returns ``L`` itself.

    Gradient (exact): ``d/dD_{c,j} (k_c / S_c) = k_c / (D_{c,j} S_c)^2`` with ``S_c = sum_j 1/D_{c,j}``,
    evaluated as ``k_c r_j^2 / T^2`` with ``r_j = D_{c,k_c} / D_{c,j} <= 1`` and ``T = sum r_j`` (no
    overflow), and ``dD/dx_a = 2 (x_a - x_b) = -dD/dx_b``; pairs tied with the ``k``-th distance share
    its slot equally. For the inter term, ``d ||m_p - m_q||^2 / d x_a = 2 (m_p - m_q) / n_p`` for ``x_a``
    in class ``p`` (``-2 (m_p - m_q) / n_q`` in ``q``), times ``-inter_weight`` while the hinge is
    active (strictly, as Caffe's ``loss_inter > 0``); tied closest pairs share equally. The Caffe
    layer's intra gradient is this one; its inter gradient uses ``-inter_weight (m_p - m_q) / (2 n_q)``
    for class ``p`` (and ``+... / (2 n_p)`` for ``q``), which is not the derivative of its forward.

    Shapes: ``features (N, D)``, ``labels (N,)``; memory is ``O(N^3)`` (vectorised over pairs and classes).
    """
    if features.shape[0] == 0:
        return xp.zeros((), dtype=features.dtype, device=_device(features))
    return _range_value(xp, features, labels, k, margin, intra_weight, inter_weight)


@range_loss.defvjp
def _range_loss_vjp(xp, cot, features, labels, *, k, margin, intra_weight, inter_weight):
    n = features.shape[0]
    if n == 0:
        return xp.zeros_like(features), None
    g = cot
    parts = _range_parts(xp, features, labels, k)
    t, total, live = parts["t"], parts["total"], parts["live"]
    # intra: coefficient of each pair's squared distance, k r^2 / T^2 (r = t / d), summed over classes
    tt = xp.where(live, t, xp.ones_like(t))
    tot = xp.where(live, total, xp.ones_like(total))
    d2 = parts["d2"]
    weight = parts["pair_weight"]
    t3 = xp.reshape(tt, (n, 1, 1))
    held = (weight > 0) & (xp.expand_dims(d2, axis=0) > 0)  # only top-k pairs: there t <= d, r <= 1
    r = t3 / xp.where(held, xp.expand_dims(d2, axis=0), t3)
    coef = weight * xp.reshape(xp.where(live, parts["k_eff"] / (tot * tot), xp.zeros_like(t)), (n, 1, 1)) * (r * r)
    q = xp.sum(coef, axis=0)
    q = q + xp.matrix_transpose(q)
    grad = (2.0 * intra_weight) * xp.sum(xp.expand_dims(q, axis=2) * parts["delta"], axis=1)
    # inter: the closest pair(s) of class means, while margin - dmin > 0
    member, counts, cdelta, cd2, cpairs, dmin = _range_centres(xp, features, parts)
    active = margin - dmin > 0
    closest = xp.astype(cpairs & (cd2 == dmin), features.dtype)
    n_closest = xp.sum(closest)
    w = closest * xp.where(active & (n_closest > 0), 1.0 / xp.where(n_closest > 0, n_closest, xp.ones_like(n_closest)), xp.zeros_like(n_closest))
    w = w + xp.matrix_transpose(w)
    d_centre = (-2.0 * inter_weight) * xp.sum(xp.expand_dims(w, axis=2) * cdelta, axis=1)
    d_centre = d_centre / _col(xp, xp.where(counts > 0, counts, xp.ones_like(counts)))
    grad = grad + xp.matmul(xp.matrix_transpose(member), d_centre)
    return g * grad, None


# ------------------------------------------------------------------------------------------------
# Ring loss.


def _check_radius(xp, name, features, radius, **params):
    _need_features(0, "features")(xp, name, features, radius)
    n = features.shape[0]
    if radius.ndim > 1 or (radius.ndim == 1 and radius.shape[0] not in (1, n)):
        raise ValueError(
            f"{name}: radius must be of shape () or (1,) (one radius) or (N={n},) (one per sample), got shape {tuple(radius.shape)}"
        )


@loss(
    family="embedding",
    inputs=[
        _FEATURES,
        Input("radius", shape="*", domain=D.radii, doc="the learned ring radius R: shape () or (1,), or (N,) per sample"),
    ],
    params=[Param("loss_weight", 1.0, low=0.0, grid=(0.01,), doc="lambda")],
    check=_check_radius,
    counterparts={
        "ringloss": "RingLoss(type='L2', loss_weight=w) (the widely copied PyTorch port, e.g. in YirongMao/softmax_variants; "
        "= ring_loss(loss_weight=2 w) under mean)",
    },
    references=[
        "Zheng, Pal, Savvides, Ring loss: Convex Feature Normalization for Face Recognition, CVPR 2018",
        "YirongMao/softmax_variants model_utils.py (RingLoss)",
        "003 seed, Ring Loss",
    ],
)
def ring_loss(xp, features, radius, *, loss_weight):
    """Ring loss: pulls every feature norm to a learned radius ``R``::

        l_i = (lambda / 2) (||x_i|| - R)^2

    so ``reduction='mean'`` is the paper's ``(lambda / 2m) sum_i (||x_i|| - R)^2``. The widely copied
    PyTorch port computes ``lambda mean_i (||x_i|| - R)^2`` (no 1/2): ``loss_weight`` here is twice
    its ``loss_weight``. Its ``'auto'``/``'L1'`` variants and its R-from-the-first-batch
    initialisation are not part of the loss.

    Gradient: ``d l_i / d x_i = lambda (||x_i|| - R) x_i / ||x_i||`` and ``d l_i / d R = -lambda
    (||x_i|| - R)`` (summed over the samples that share ``R``). At ``x_i = 0`` the norm is not
    differentiable; refloss uses 0 for ``x_i / ||x_i||`` (PyTorch's norm backward), a Clarke
    subgradient since the cone ``-lambda R ||x||`` is concave there.

    Shapes: ``features (N, D)``; ``radius ()`` or ``(1,)`` (the paper's single R), or ``(N,)``.
    """
    return (0.5 * loss_weight) * _squared(xp, _ring_gap(xp, features, radius)[1])


def _squared(xp, z):
    return z * z


def _ring_gap(xp, features, radius):
    """``(||x_i||, ||x_i|| - R)``. Where ``R`` is within a factor 2 of the norm the difference cancels;
    there it is ``(||x||^2 - R^2) / (||x|| + R)`` with ``||x||^2 - R^2`` from double-double pieces
    (rows and ``R`` scaled by the row's power of two, exact), accurate to a few ulps of itself."""
    norm = _lp_norm(xp, features, 2)
    r = xp.zeros_like(norm) + radius
    near = (r > 0.5 * norm) & (r < 2.0 * norm)
    s, (sq_hi, sq_lo), (n0, n_lo) = _norm_dd(xp, features)
    rs = xp.where(near, r, xp.zeros_like(r)) / s  # at most 4 sqrt(D) where near
    r2_hi, r2_lo = _two_prod(xp, rs, rs)
    # ||x|| + R with ||x|| = n0 + n_lo, rounded once
    den_hi, den_lo = _two_sum(xp, n0, rs)
    den = xp.where(near, den_hi + (den_lo + n_lo), xp.ones_like(rs))
    gap = s * (_dd_sub(xp, sq_hi, sq_lo, r2_hi, r2_lo) / den)
    return norm, xp.where(near, gap, norm - r)


def _norm_dd(xp, features):
    """Row norms as double-doubles, at the rows' power-of-two scales ``s`` (exact): ``(s, |x / s|^2,
    ||x / s||)``, the square as Dot2 and the norm ``n0 + n_lo`` by one Newton step on the square root."""
    _, s = _row_scale(xp, xp.abs(features))
    u = features / _col(xp, s)
    sq_hi, sq_lo = _dd_dot(xp, u, u)
    n0 = xp.sqrt(sq_hi)
    p, e = _two_prod(xp, n0, n0)
    n_lo = (((sq_hi - p) - e) + sq_lo) / xp.where(n0 > 0, 2 * n0, xp.ones_like(n0))
    return s, (sq_hi, sq_lo), (n0, n_lo)


@ring_loss.defvjp
def _ring_loss_vjp(xp, cot, features, radius, *, loss_weight):
    norm, gap = _ring_gap(xp, features, radius)
    t = cot * loss_weight * gap
    g_radius = -sum_to_shape(t, radius.shape, xp=xp)
    if array_api_compat.size(radius) == 1 and features.shape[0] > 1:
        # a shared R: sum_i cot_i (||x_i|| - R) cancels across samples (cotangents of both signs, or
        # a mean of gaps of both signs); as the double-double sum_i cot_i ||x_i|| - R sum_i cot_i,
        # rounded once
        s, _, (n0, n_lo) = _norm_dd(xp, features)
        c = cot * xp.ones_like(n0)
        fin = xp.isfinite(n0 * s) & xp.isfinite(c)
        c = xp.where(fin, c, xp.zeros_like(c))  # where a row is not, g_radius (not finite) stands
        a_hi, a_lo = _two_prod(xp, c, s * n0)
        b_hi, b_lo = _two_prod(xp, c, xp.zeros_like(c) + xp.reshape(radius, (-1,)))
        hi = xp.concat([a_hi, -b_hi])
        lo = xp.concat([a_lo + c * (s * n_lo), -b_lo])
        total, _ = _dd_sum(xp, hi, lo)
        g_radius = xp.where(xp.isfinite(g_radius), xp.reshape(-loss_weight * total, radius.shape), g_radius)
    return _col(xp, t) * _lp_norm_grad(xp, features, norm, 2), g_radius


# ------------------------------------------------------------------------------------------------
# Contrastive loss.


def _contrastive_terms(xp, a, b, margin, convention, pos_margin):
    """``(v, d, pos, neg, m_gap)``: ``v = a - b``, ``d = ||v||``, the two terms, and the margin's hinge argument
    (``m - d``, or ``m - d^2`` for caffe_legacy) without cancellation where ``d`` is near the margin
    (:func:`_ring_gap`'s difference of squares; the exact square for ``m - d^2``)."""
    v = a - b
    d, d_minus_m = _ring_gap(xp, v, margin)
    m_gap = -d_minus_m
    if convention == "pml":
        return v, d, _hinge(xp, _ring_gap(xp, v, pos_margin)[1]), _hinge(xp, m_gap), m_gap
    d2 = xp.sum(v * v, axis=1)
    if convention == "caffe_legacy":
        sq_hi, sq_lo = _dd_dot(xp, v, v)
        m_gap = _dd_sub(xp, xp.full_like(sq_hi, margin), xp.zeros_like(sq_hi), sq_hi, sq_lo)
        return v, d, 0.5 * d2, 0.5 * _hinge(xp, m_gap), m_gap
    return v, d, 0.5 * d2, 0.5 * _squared(xp, _hinge(xp, m_gap)), m_gap


@loss(
    family="embedding",
    inputs=[
        Input("input1", shape="N D", domain=D.pair_first, doc="first embedding of each pair"),
        Input("input2", shape="N D", domain=D.pair_second, doc="second embedding of each pair"),
        Input("target", shape="N", differentiable=False, values=(0.0, 1.0), domain=D.hard_binary_targets,
              doc="1 for a similar pair, 0 for a dissimilar one"),
    ],
    params=[
        Param("margin", 1.0, low=0.0, grid=(2.0,), doc="margin m of dissimilar pairs (PML: neg_margin)"),
        Param("convention", "caffe", kind="choice", choices=("caffe", "caffe_legacy", "pml"), grid=("caffe_legacy", "pml"),
              doc="caffe: 1/2 max(m - d, 0)^2; caffe_legacy: 1/2 max(m - d^2, 0); pml: not squared, with pos_margin"),
        Param("pos_margin", 0.0, low=0.0, grid=(0.1,), doc="PML pos_margin (only used by convention='pml')"),
    ],
    check=_need_features(0, "input1"),
    counterparts={
        "caffe": "ContrastiveLossLayer (BVLC/caffe; legacy_version=true is convention='caffe_legacy')",
        "pml": "pytorch_metric_learning.losses.ContrastiveLoss (convention='pml'; PML normalises the D.embeddings, "
        "forms every pair of the batch and averages the non-zero terms)",
        "tfa": "tfa.losses.ContrastiveLoss (on precomputed distances, no 1/2)",
    },
    references=[
        "Hadsell, Chopra, LeCun, Dimensionality Reduction by Learning an Invariant Mapping, CVPR 2006",
        "Sun, Chen, Wang, Tang, Deep Learning Face Representation by Joint Identification-Verification (DeepID2), NIPS 2014",
        "BVLC/caffe src/caffe/layers/contrastive_loss_layer.cpp",
        "KevinMusgrave/pytorch-metric-learning losses/contrastive_loss.py",
    ],
)
def contrastive_loss(xp, input1, input2, target, *, margin, convention, pos_margin):
    """Contrastive loss of pairs, ``d = ||a - b||``, ``y = 1`` for a similar pair::

        caffe (DeepID2, Hadsell):  l = 1/2 y d^2 + 1/2 (1 - y) max(m - d, 0)^2
        caffe_legacy:              l = 1/2 y d^2 + 1/2 (1 - y) max(m - d^2, 0)
        pml:                       l = y max(d - pos_margin, 0) + (1 - y) max(m - d, 0)

    ``reduction='mean'`` is Caffe's ``1/(2N) sum`` (the 1/2 is in ``l``). Caffe truncates ``y`` to an
    integer; refloss interpolates linearly for soft ``y`` in [0, 1] (``0 * inf = 0`` between the
    terms). pytorch-metric-learning L2-normalises the D.embeddings first, forms every pair of a batch
    and averages the non-zero terms of each kind (sum of the two means): normalise and pair the rows
    to compare, and reduce as it does; the per-pair terms are these.

    Gradient (``u = (a - b) / d``, 0 at ``d = 0``; ``d/db = -d/da``): caffe ``y (a - b) - (1 - y)
    max(m - d, 0) u``; caffe_legacy ``y (a - b) - (1 - y) [m - d^2 > 0] (a - b)``; pml ``y [d >
    pos_margin] u - (1 - y) [m > d] u``. At hinge corners the gradient is 0 (Caffe's ``mdist > 0``,
    ``relu``). At ``d = 0`` the dissimilar caffe and pml terms are not differentiable; refloss uses 0
    (Caffe's backward gives 0 there too, dividing ``a - b = 0`` by ``d + 1e-4``; elsewhere Caffe's
    ``1e-4`` makes its gradient differ from the exact one by a relative ``1e-4 / d``).

    Shapes: ``input1``, ``input2 (N, D)``, ``target (N,)`` in [0, 1].
    """
    _, _, pos, neg, _ = _contrastive_terms(xp, input1, input2, margin, convention, pos_margin)
    return xmul(target, pos, xp=xp) + xmul(1 - target, neg, xp=xp)


@contrastive_loss.defvjp
def _contrastive_vjp(xp, cot, input1, input2, target, *, margin, convention, pos_margin):
    v, d, _, _, m_gap = _contrastive_terms(xp, input1, input2, margin, convention, pos_margin)
    u = _lp_norm_grad(xp, v, d, 2)
    y = _col(xp, target)
    if convention == "pml":
        on_pos = _col(xp, _indicator(xp, d > pos_margin, d))
        on_neg = _col(xp, _indicator(xp, m_gap > 0, d))
        g = y * on_pos * u - (1 - y) * on_neg * u
    elif convention == "caffe_legacy":
        g = y * v - (1 - y) * _col(xp, _indicator(xp, m_gap > 0, d)) * v
    else:
        g = y * v - (1 - y) * _col(xp, _hinge(xp, m_gap)) * u
    g = _col(xp, cot) * g
    return g, -g, None


# ------------------------------------------------------------------------------------------------
# Triplet losses.

_TRIPLET_INPUTS = [
    Input("anchor", shape="N D", domain=D.triplet_anchors, doc="anchor embeddings"),
    Input("positive", shape="N D", domain=D.triplet_positives, doc="D.embeddings of the anchor's class"),
    Input("negative", shape="N D", domain=D.triplet_negatives, doc="D.embeddings of another class"),
]


def _triplet_vector(xp, x1, x2, eps, placement):
    """``x1 - x2 (+ eps)`` as a double-double ``(hi, lo)``, exactly up to ``2^-106`` of ``hi`` (PyTorch's
    pairwise_distance adds ``eps`` to the difference; optax puts it inside the sum of powers)."""
    hi, lo = _two_sum(xp, x1, -x2)
    if placement == "difference" and eps:
        hi, lo2 = _two_sum(xp, hi, xp.full_like(hi, eps))
        hi, lo = _renormalise(xp, hi, lo + lo2)
    return hi, lo


def _triplet_distance(xp, v, p, eps, placement):
    return _lp_norm(xp, v, p, eps if placement == "sum" else 0.0)


def _triplet_parts(xp, anchor, positive, negative, p, eps, swap, placement):
    """Distances, and ``gap = d(a, p) - d_n`` without cancellation.

    The gap cancels wherever the two distances are close (and catastrophically for rows of very
    different magnitudes). With ``v = a - p (+ eps)``, ``w`` the other vector, ``f = v - w`` and ``g = v +
    w`` taken from the inputs as double-doubles (``n - p`` and ``2a - p - n (+ 2 eps)``, exact however
    small), rows scaled by a power of two: ``|v_k| - |w_k|`` is ``sign(v_k) f_k`` or ``sign(v_k) g_k``
    (same or opposite signs), so ``d_v - d_w`` is its sum for ``p = 1``; ``sum_k f_k g_k / (d_v + d_w)``
    for ``p = 2`` (the distances double-doubles too); both are kept as double-doubles and rounded once
    with the margin (:func:`_triplet_argument`), so the hinge's corner does not cancel. For other ``p``, ``d_w expm1(log1p((D_v - D_w) / D_w) / p)`` with ``D = d^p`` and
    ``|v_k|^p - |w_k|^p = |w_k|^p expm1(p log1p((|v_k| - |w_k|) / |w_k|))`` (both where the two are within
    a factor 2; the plain differences elsewhere, where they do not cancel).

    The swap's ``min(d(a, n), d(p, n))`` is decided by ``d(a, n) - d(p, n)``, computed the same way from
    ``v_an - v_pn = a - p`` and ``v_an + v_pn`` (the two gaps alone agree to ~2^-106 of themselves, which
    cannot order distances that differ by ``|a - p| << 2^-106 d``); an exact tie is ``tie``.
    """
    pairs = {"ap": (anchor, positive), "an": (anchor, negative)}
    if swap:
        pairs["pn"] = (positive, negative)
    dd = {key: _triplet_vector(xp, x1, x2, eps, placement) for key, (x1, x2) in pairs.items()}
    vectors = {key: hi for key, (hi, _) in dd.items()}
    dist = {key: _triplet_distance(xp, v, p, eps, placement) for key, v in vectors.items()}
    big = xp.max(xp.stack([xp.max(xp.abs(v), axis=1) for v in vectors.values()], axis=0), axis=0)
    e, scale = _row_scale(xp, xp.expand_dims(big, axis=1))
    if placement == "sum" and eps:
        scale = xp.where(e > 0, scale, xp.ones_like(scale))  # keep eps / s^p <= eps
    col = _col(xp, scale)
    dd = {key: (hi / col, lo / col) for key, (hi, lo) in dd.items()}
    a, pos, neg = anchor / col, positive / col, negative / col
    shift = (xp.full_like(a, 2.0 * eps) / col,) if placement == "difference" and eps else ()
    fg = {"an": (_dd_total(xp, neg, -pos), _dd_total(xp, a, a, -pos, -neg, *shift))}
    if swap:
        fg["pn"] = (_dd_total(xp, a, -pos, -pos, neg), _dd_total(xp, a, -neg, *shift))
        fg["an|pn"] = (_dd_total(xp, a, -pos), _dd_total(xp, a, pos, -neg, -neg, *shift))  # v_an -+ v_pn

    in_sum = placement == "sum" and eps != 0  # otherwise a Python 0: no eps term anywhere (not an array of zeros)
    e_scaled = (eps / scale) / scale if in_sum else 0.0

    def norm2(key):
        # the scaled Euclidean distance as a double-double: sqrt of a double-double, one Newton step
        hi, lo = dd[key]
        p_hi, p_lo = _two_prod(xp, hi, hi)
        s_hi, s_lo = _dd_sum(xp, p_hi, p_lo + 2 * hi * lo)
        s_hi, e2 = _two_sum(xp, s_hi, e_scaled)
        r = xp.sqrt(s_hi)
        q, f = _two_prod(xp, r, r)
        return r, (((s_hi - q) - f) + (s_lo + e2)) / xp.where(r == 0, xp.ones_like(r), 2 * r)

    def gap(key, ref="ap"):
        # d(ref) - d(key) as a double-double (hi, lo): d(a, p) - d(a, n) (or d(p, n)), or d(a, n) - d(p, n)
        (f_hi, f_lo), (g_hi, g_lo) = fg[key] if ref == "ap" else fg[ref + "|" + key]
        d_v, d_w = dist[ref], dist[key]
        if p == 2:
            p_hi, p_lo = _two_prod(xp, f_hi, g_hi)
            d_hi, d_lo = _dd_sum(xp, p_hi, p_lo + (f_hi * g_lo + f_lo * g_hi))
            (v0, v1), (w0, w1) = norm2(ref), norm2(key)
            den, den_lo = _two_sum(xp, v0, w0)
            den_lo = den_lo + (v1 + w1)
            zero = den == 0  # (not den > 0: a NaN must propagate)
            den = xp.where(zero, xp.ones_like(den), den)
            q = d_hi / den
            m, m_lo = _two_prod(xp, q, den)
            q_lo = (((d_hi - m) - m_lo) + (d_lo - q * den_lo)) / den
            return xp.where(zero, xp.zeros_like(q), scale * q), xp.where(zero, xp.zeros_like(q), scale * q_lo)
        v, w = dd[ref][0], dd[key][0]
        sv, sw = xp.sign(v), xp.sign(w)
        h_hi = xp.where(sv * sw > 0, sv * f_hi, xp.where(sv * sw < 0, sv * g_hi, xp.abs(v) - xp.abs(w)))
        h_lo = xp.where(sv * sw > 0, sv * f_lo, xp.where(sv * sw < 0, sv * g_lo, xp.zeros_like(g_lo)))
        if p == 1:
            d_hi, d_lo = _dd_sum(xp, h_hi, h_lo)
            return scale * d_hi, scale * d_lo
        # |v|^p - |w|^p, through log1p/expm1 where |v| and |w| are within a factor 2 (there it cancels)
        av, aw = xp.abs(v), xp.abs(w)
        near = (av <= 2 * aw) & (aw <= 2 * av) & (aw > 0)
        ratio = xp.where(near, (h_hi + h_lo) / xp.where(near, aw, xp.ones_like(aw)), xp.zeros_like(aw))
        power = aw**p
        terms = xp.where(near, power * xp.expm1(p * xp.log1p(ratio)), av**p - power)
        d_hi, d_lo = _dd_sum(xp, terms, xp.zeros_like(terms))
        big_w = xp.sum(power, axis=1) + (eps * (1 / scale) ** p if placement == "sum" else 0.0)
        # d_v - d_w = d_w expm1(log1p((D_v - D_w) / D_w) / p) where the distances are within a factor 2
        close = (d_v <= 2 * d_w) & (d_w <= 2 * d_v) & (big_w > 0)
        rel = xp.where(close, (d_hi + d_lo) / xp.where(close, big_w, xp.ones_like(big_w)), xp.zeros_like(big_w))
        out = xp.where(close, d_w * xp.expm1(xp.log1p(rel) / p), d_v - d_w)
        return out, xp.zeros_like(out)

    gaps = {key: gap(key) for key in ("an", "pn") if key in fg}
    e_p = (eps * (1 / scale) ** p if in_sum else 0.0) if p != 2 else e_scaled
    out = {"vectors": vectors, "dist": dist, "dd": dd, "fg": fg, "scaled": (a, pos, neg, shift), "e_scaled": e_p}
    hi, lo = gaps["an"]
    if swap:  # d_n = min(d(a, n), d(p, n)), decided by d(a, n) - d(p, n) itself (from a - p, however small)
        s_hi, s_lo = gap("pn", ref="an")
        out["pn_wins"] = (s_hi > 0) | ((s_hi == 0) & (s_lo > 0))
        out["tie"] = (s_hi == 0) & (s_lo == 0)
        p_hi, p_lo = gaps["pn"]
        hi, lo = xp.where(out["pn_wins"], p_hi, hi), xp.where(out["pn_wins"], p_lo, lo)
    out["gap"] = (hi, lo)
    return out


def _triplet_argument(xp, parts, margin):
    """``d(a, p) - d_n + margin``, rounded once from the double-double gap."""
    hi, lo = parts["gap"]
    s, e = _two_sum(xp, hi, xp.full_like(hi, margin))
    return s + (e + lo)


def _dd_total(xp, *terms):
    """``sum(terms)`` (arrays alike) as a double-double, by a chain of :func:`_two_sum`."""
    hi, lo = terms[0], xp.zeros_like(terms[0])
    for t in terms[1:]:
        hi, e = _two_sum(xp, hi, t)
        lo = lo + e
    return _renormalise(xp, hi, lo)


def _unit_difference(xp, v, w, delta, e):
    """``v / n_v - w / n_w`` with ``n = sqrt(|x|^2 + e)`` (0 for ``x / n`` where ``n = 0``), for
    double-double row vectors ``v, w`` and ``delta = w - v`` (a double-double computed from the inputs,
    so that it is accurate however small): the two unit vectors nearly cancel where ``v`` and ``w``
    are nearly parallel. With the rejection ``r = w - t v``, ``t = v.w / |v|^2``, ``v / n_v - w / n_w =
    v (n_w - t n_v) / (n_v n_w) - r / n_w``: two orthogonal terms, with ``n_w - t n_v = (|r|^2 + e (1 - t)
    (1 + t)) / (n_w + t n_v)`` for ``t > 0``. ``r`` is accurate to ulps of itself: the quotient is a
    double-double, and ``r`` is taken as ``w - t v`` or as ``delta - (t - 1) v`` (with ``t - 1 = v.delta /
    |v|^2``), whichever of ``w`` and ``delta`` is the shorter (the error is ``2^-104`` of it)."""
    (v_hi, v_lo), (w_hi, w_lo), (d_hi, d_lo) = v, w, delta

    def dot(a_hi, a_lo, b_hi, b_lo):
        p, q = _two_prod(xp, a_hi, b_hi)
        return _dd_sum(xp, p, q + (a_hi * b_lo + a_lo * b_hi))

    vv_hi, vv_lo = dot(v_hi, v_lo, v_hi, v_lo)
    ww_hi, _ = dot(w_hi, w_lo, w_hi, w_lo)
    zero_v = vv_hi == 0
    den = xp.where(zero_v, xp.ones_like(vv_hi), vv_hi)

    def quotient_and_rest(x_hi, x_lo):
        # q = v.x / |v|^2 as a double-double, and x - q v rounded
        n_hi, n_lo = dot(v_hi, v_lo, x_hi, x_lo)
        q = xp.where(zero_v, xp.zeros_like(n_hi), n_hi / den)
        p, e2 = _two_prod(xp, q, vv_hi)
        q_lo = xp.where(zero_v, xp.zeros_like(n_hi), (((n_hi - p) - e2) + (n_lo - q * vv_lo)) / den)
        a, b = _two_prod(xp, _col(xp, q), v_hi)
        return q, q_lo, (x_hi - a) - (b + _col(xp, q) * v_lo + _col(xp, q_lo) * v_hi - x_lo)

    t_w, t_w_lo, r_w = quotient_and_rest(w_hi, w_lo)
    t1_d, t1_d_lo, r_d = quotient_and_rest(d_hi, d_lo)
    by_w = ww_hi <= xp.sum(d_hi * d_hi, axis=1)
    r = xp.where(_col(xp, by_w), r_w, r_d)
    t = xp.where(by_w, t_w + t_w_lo, (1 + t1_d) + t1_d_lo)  # 1 + t1 is exact where t is small
    one_minus_t = xp.where(by_w, (1 - t_w) - t_w_lo, -(t1_d + t1_d_lo))
    n_v, n_w = xp.sqrt(vv_hi + e), xp.sqrt(ww_hi + e)
    # each unit vector alone from its own row scale (a row far below the common scale underflows
    # there); degenerate rows tested with == 0, so that NaNs take the general branch and propagate
    own_v, own_w = _lp_norm(xp, v_hi, 2, e), _lp_norm(xp, w_hi, 2, e)
    v_zero, w_zero = own_v == 0, own_w == 0
    # the rejection form where both squares are resolved at the common scale and (1 - t)(1 + t) is finite
    # (1 - t)(1 + t) finite and both squares normal: 2^400 and 2^-900 in float64 (2^50, 2^-109 in float32)
    fi = xp.finfo(t.dtype)
    big, tiny = 2.0 ** math.floor(math.log2(fi.max) * 25 / 64), 2.0 ** math.ceil(math.log2(fi.smallest_normal) * 7 / 8)
    ahead = ~v_zero & ~w_zero & (t > 0) & (t < big) & (vv_hi > tiny) & (ww_hi > tiny)
    nv1 = xp.where(ahead, n_v, xp.where(v_zero, xp.ones_like(n_v), own_v))
    nw1 = xp.where(ahead, n_w, xp.where(w_zero, xp.ones_like(n_w), own_w))
    rr = xp.sum(r * r, axis=1)
    t_a, omt_a = xp.where(ahead, t, xp.zeros_like(t)), xp.where(ahead, one_minus_t, xp.zeros_like(t))
    near = (rr + e * (omt_a * (1 + t_a))) / xp.where(ahead, n_w + t * n_v, xp.ones_like(n_w))
    coef = xp.where(ahead, near, xp.zeros_like(near))  # used only where close (ahead)
    rejected = _col(xp, coef / (nv1 * nw1)) * v_hi - r / _col(xp, nw1)
    only_v = v_hi / _col(xp, nv1)
    only_w = -w_hi / _col(xp, nw1)
    # the rejection form where the directions are within 30 degrees (it cancels componentwise,
    # within its norm, elsewhere); the plain difference where they are not
    close = ahead & (4 * rr <= ww_hi)
    both = xp.where(_col(xp, close), rejected, only_v + only_w)
    return xp.where(_col(xp, w_zero), only_v, xp.where(_col(xp, v_zero), only_w, both))  # both zero: 0


def _lp_unit_difference(xp, v, w, delta, p, e):
    """``G(v) - G(w)`` for ``G(x) = d N / dx = sign(x) (|x| / N(x))^q``, ``q = p - 1``, ``N(x) = (sum_k
    |x_k|^p + e)^(1/p)``, double-double rows ``v, w`` and ``delta = w - v`` (computed from the inputs,
    accurate however small); :func:`_unit_difference` is the ``p = 2`` case.

    ``G(v)`` and ``G(w)`` nearly cancel where ``v`` and ``w`` are nearly parallel, and their plain
    difference is accurate to ulps of ``G``, not of itself. Relative to the ratio ``rho = w_m / v_m`` at
    the largest ``|v_m|``, write ``w_k = rho v_k (1 + a_k)``: ``a_k = (delta_k v_m - delta_m v_k) / (v_k
    w_m)``, a cross product whose ``v_k v_m`` parts cancel exactly (so ``a_k`` is accurate to ulps of
    itself, and ``a_m = 0``). With ``B_k = (1 + a_k)^p - 1`` and ``S = (N(w) / rho)^p - N(v)^p = sum_k
    |v_k|^p B_k + e (rho^-p - 1)``, ``G_k(w) / G_k(v) = ((1 + B_k) N(v)^p / (N(v)^p + S))^(q/p)``, so

        G_k(v) - G_k(w) = -G_k(v) ((1 + X_k)^(q/p) - 1),   X_k = (B_k N(v)^p - S) / (N(v)^p + S)

    (both ``(1 + x)^r - 1`` by :func:`_pow1pm1`). At the dominant component ``X`` is ``-S`` alone;
    elsewhere ``B_k N(v)^p - S`` may cancel, by at most what ``G_k <= G_m`` allows, so each row is
    accurate to a few ulps of its largest entry. Components of opposite signs, or not within a factor
    3/2 of ``rho v_k``, and rows that are not nearly parallel (``w_m / v_m`` not positive or beyond
    ``2^+-102`` in float64, some ``|w_k| > 4 rho |v_m|``) take the plain difference (nothing cancels there).
    """
    top_exponent = math.log2(float(xp.finfo(v[0].dtype).max))  # 1024 in float64, 128 in float32
    k, scale = _row_scale(xp, xp.abs(v[0]))
    k = xp.maximum(k, xp.full_like(k, -0.4 * top_exponent))  # a row that far below the common scale is not parallel to w
    col = _col(xp, 2.0**k)  # max |v| in [1, 2): no power of v overflows or vanishes
    (v_hi, v_lo), w_hi, (d_hi, d_lo) = (v[0] / col, v[1] / col), w[0] / col, (delta[0] / col, delta[1] / col)
    e = _scaled_eps(xp, e, k, p)
    q = p - 1.0
    av, aw = xp.abs(v_hi), xp.abs(w_hi)
    g_v = _lp_grad(xp, v_hi, p, e)
    plain = g_v - _lp_grad(xp, w_hi, p, e)
    m = xp.argmax(av, axis=1)

    def at_m(x):
        return take_along_axis(x, m, axis=1, xp=xp)

    vm, vm_lo, dm, dm_lo, wm = at_m(v_hi), at_m(v_lo), at_m(d_hi), at_m(d_lo), at_m(w_hi)
    # rows that are nearly parallel (> and <= tests, so that NaNs take the plain branch and propagate)
    ratio = 2.0 ** math.floor(top_exponent / 10)  # 2^102 in float64 (2^12 in float32)
    row = (wm * vm > 0) & (xp.abs(wm) <= ratio * xp.abs(vm)) & (xp.abs(vm) <= ratio * xp.abs(wm))
    rho = xp.where(row, wm, xp.ones_like(wm)) / xp.where(row, vm, xp.ones_like(vm))
    row = row & (xp.max(aw, axis=1) <= 4 * rho * xp.abs(vm))
    rho = xp.where(row, rho, xp.ones_like(rho))
    vm1 = xp.where(row, vm, xp.ones_like(vm))
    # c_k = delta_k v_m - delta_m v_k = w_k v_m - w_m v_k as a double-double, and a = c / (v_k w_m)
    rows = _col(xp, row)
    v_r, d_r = xp.where(rows, v_hi, xp.zeros_like(v_hi)), xp.where(rows, d_hi, xp.zeros_like(d_hi))
    vm_r, dm_r, wm_r = (_col(xp, xp.where(row, x, xp.zeros_like(x))) for x in (vm, dm, wm))
    p1, e1 = _two_prod(xp, d_r, vm_r)
    p2, e2 = _two_prod(xp, dm_r, v_r)
    c, e3 = _two_sum(xp, p1, -p2)
    c, c_lo = _renormalise(xp, c, e3 + (e1 - e2) + ((d_r * _col(xp, vm_lo) + d_lo * vm_r) - (dm_r * v_lo + _col(xp, dm_lo) * v_r)))
    den, den_lo = _two_prod(xp, v_r, wm_r)
    same = rows & (v_hi * w_hi > 0) & (2 * xp.abs(c) <= xp.abs(den))
    den1 = xp.where(same, den, xp.ones_like(den))
    a = xp.where(same, c / den1, xp.zeros_like(den))
    pa, pa_lo = _two_prod(xp, a, den1)
    a = a + xp.where(same, (((c - pa) - pa_lo) + c_lo - a * den_lo) / den1, xp.zeros_like(den))  # c / den to ~1/2 ulp
    b = _pow1pm1(xp, a, p)
    pow_v = av**p
    aw_r = xp.where(rows, aw, xp.zeros_like(aw)) / _col(xp, rho)  # <= 4 |v_m| < 8 where used
    rise = xp.where(same, pow_v * b, aw_r**p - pow_v)  # |v_k|^p ((|w_k| / (rho |v_k|))^p - 1)
    s = xp.sum(xp.where(rows, rise, xp.zeros_like(rise)), axis=1)
    if not _is_zero(e):
        # e (rho^-p - 1) with rho^-p = exp(-p log rho) in double-double: exp multiplies the rounding of its
        # argument by the argument (p log rho is 5 for p = 7, rho = 2), and nothing else in S may dominate
        one = xp.ones_like(vm)
        w_m = _renormalise(xp, *_dd_add(xp, vm1, xp.where(row, vm_lo, 0 * one), xp.where(row, dm, 0 * one), xp.where(row, dm_lo, 0 * one)))
        log_rho = _log_dd(xp, *_dd_div(xp, *w_m, vm1, xp.where(row, vm_lo, 0 * one)))
        t_hi, t_lo = _two_prod(xp, xp.full_like(vm, -p), log_rho[0])
        t_hi, t_lo = _renormalise(xp, t_hi, t_lo - p * log_rho[1])
        e_hi, e_lo = _exp_dd(xp, t_hi)
        s = s + e * _dd_sub(xp, *_renormalise(xp, e_hi, e_lo + e_hi * t_lo), one, 0 * one)
    bv, sv = _col(xp, xp.sum(pow_v, axis=1) + e), _col(xp, s)
    num, num_lo = _two_prod(xp, b, bv)
    num, num_lo2 = _two_sum(xp, num, -sv * xp.ones_like(num))
    den = bv + sv
    x = xp.where(same, (num + (num_lo + num_lo2)) / xp.where(same, den, xp.ones_like(den)), xp.zeros_like(num))
    return xp.where(same, -g_v * _pow1pm1(xp, x, (q, p)), plain)


def _pow1pm1(xp, a, r):
    """``(1 + a)^r - 1`` for ``a > -1``. Where ``|a| max(r, 1) <= 1/8``, its binomial series ``r a (1 + h)``,
    ``h = sum_{n >= 2} C(r, n) / r a^(n - 1)``, with ``r a`` exact (``r`` as a double-double when it is a
    quotient ``q / p``: pass ``(q, p)``) so that the result is within about an ulp of the exact one
    for an exact ``a`` (``expm1(r log1p(a))`` rounds ``log1p(a)``, then ``r`` times it, then ``expm1``);
    ``expm1(r log1p(a))`` elsewhere."""
    if isinstance(r, tuple):  # r = num / den as a double-double
        num, den = r
        r, r_lo = num / den, float(Fraction(num) / Fraction(den) - Fraction(num / den))
    else:
        r_lo = 0.0
    small = xp.abs(a) * max(abs(r), 1.0) <= 0.125
    a0 = xp.where(small, a, xp.zeros_like(a))
    coeffs = [1.0]  # C(r, n) / r for n = 1, 2, ...: successive terms shrink by |a| |r - n| / (n + 1) <= 1/8
    for n in range(2, 24):
        coeffs.append(coeffs[-1] * (r - n + 1) / n)
    h = xp.full_like(a0, coeffs[-1])
    for c in reversed(coeffs[1:-1]):
        h = h * a0 + c
    h = h * a0
    ra, ra_lo = _two_prod(xp, xp.full_like(a0, r), a0)
    series = ra + (ra_lo + r_lo * a0 + ra * h)
    live = ~small & (a > -1)
    big = xp.where(live, a, xp.zeros_like(a))  # no log1p(-1) formed: the limit at a = -1 is taken below
    at_minus_one = xp.full_like(a, -1.0 if r > 0 else (0.0 if r == 0 else math.inf))
    edge = xp.where(a == -1, at_minus_one, xp.full_like(a, math.nan))
    return xp.where(small, series, xp.where(live, xp.expm1(r * xp.log1p(big)), edge))


def _lp_grad(xp, v, p, e=0.0):
    """``G(v) = d N / dv = sign(v) (|v_k| / N)^q``, ``q = p - 1``, for ``N(v) = (sum_k |v_k|^p + e)^(1/p)``
    (``e = 0``: the plain p-norm), along the last axis; 0 in rows where ``N = 0``.

    Relative to the largest ``|v_m|``: ``G_k = sign(v_k) b_k^q (1 + T)^(-q/p)`` with ``b_k = |v_k| / |v_m|``
    (its division's rounding carried to first order) and ``T = sum_{k != m} b_k^p + e / |v_m|^p``. The
    powers see exact exponents or bases near 1: ``(|v_k| / N)^q`` multiplies the rounding of ``N`` by
    ``q`` (about 5 ulps for ``p = 3``), and ``(|v_k|^p / N^p)^(q/p)`` the rounding of ``q/p`` by
    ``|log(|v_k| / N)|``. Nothing overflows (``b <= 1``).
    """
    q = p - 1.0
    av = xp.abs(v)
    m = xp.argmax(av, axis=-1)
    top = take_along_axis(av, m, axis=-1, xp=xp)
    live = top > 0
    vm = _col(xp, xp.where(live, top, xp.ones_like(top)))
    b = av / vm
    pr, pr_lo = _two_prod(xp, b, vm)
    nonzero = b > 0
    rel = xp.where(nonzero, (((av - pr) - pr_lo) / vm) / xp.where(nonzero, b, xp.ones_like(b)), xp.zeros_like(b))
    at_m = xp.arange(v.shape[-1], device=_device(v)) == _col(xp, m)
    power = xp.where(at_m, xp.zeros_like(b), b**p * (1 + p * rel))
    t = xp.sum(power, axis=-1)
    if not _is_zero(e):
        top1 = xp.where(live, top, xp.ones_like(top))  # zero rows: masked below, and no 1 / 0 formed
        k, scale = _row_scale(xp, _col(xp, top1))  # e / top^p = (e / 2^(p k)) / (top / 2^k)^p
        t = t + _scaled_eps(xp, e, k, p) / (top1 / scale) ** p
    g = xp.sign(v) * (b**q * (1 + q * rel)) * _col(xp, (1 + t) ** (-q / p))
    return xp.where(_col(xp, live), g, xp.zeros_like(g))


def _scaled_eps(xp, e, k, p):
    """``e / 2^(p k)`` for rows scaled by ``2^k`` (``k`` integers): exact where ``p k`` is an integer, one
    ``2^f``, ``0 <= f < 1``, rounded otherwise; capped at ``2^1003`` in float64 (``N`` is ``e``'s alone
    long before), and 0 where ``e`` is."""
    if _is_zero(e):
        return 0.0
    e = e * xp.ones_like(k)
    live = e > 0
    shift = -p * k
    whole = xp.floor(shift)
    cap = math.floor(0.98 * math.log2(float(xp.finfo(k.dtype).max)))  # 2^1003 in float64
    big = xp.log2(xp.where(live, e, xp.ones_like(e))) + shift > cap
    # 2^whole in two halves (each within range), then the fraction
    half = xp.floor(whole / 2)
    ok = live & ~big
    h1 = 2.0 ** xp.where(ok, half, xp.zeros_like(half))
    h2 = 2.0 ** xp.where(ok, whole - half, xp.zeros_like(half))
    scaled = ((e * h1) * h2) * 2.0 ** (shift - whole)
    return xp.where(ok, scaled, xp.where(big, xp.full_like(e, 2.0**cap), xp.zeros_like(e)))


def _is_zero(e):
    return isinstance(e, (int, float)) and e == 0


@loss(
    family="embedding",
    inputs=_TRIPLET_INPUTS,
    params=[
        Param("margin", 1.0, low=0.0, grid=(2.5,), doc="margin"),
        Param("p", 2.0, low=1.0, high=100.0, grid=(1.0, 3.0), doc="norm degree"),
        Param("eps", 1e-6, low=0.0, grid=(0.0,), doc="added to the difference (difference) or to the sum of powers (sum)"),
        Param("swap", False, kind="bool", grid=(True,), doc="distance swap: d_n = min(d(a, n), d(p, n))"),
        Param("eps_placement", "difference", kind="choice", choices=("difference", "sum"), grid=("sum",),
              doc="difference: ||x1 - x2 + eps||_p (PyTorch); sum: (sum |x1 - x2|^p + eps)^(1/p) (optax)"),
    ],
    check=_need_features(0, "anchor"),
    counterparts={
        "torch": "torch.nn.functional.triplet_margin_loss (eps_placement='difference')",
        "optax": "optax.losses.triplet_margin_loss (eps_placement='sum', no swap; optax drops the abs for odd norm_degree)",
        "pml": "pytorch_metric_learning.losses.TripletMarginLoss (normalised rows, margin 0.05, eps=0, mean over non-zero triplets)",
    },
    references=[
        "Balntas, Riba, Ponsa, Mikolajczyk, Learning local feature descriptors with triplets and shallow "
        "convolutional neural networks, BMVC 2016 (distance swap)",
        "PyTorch aten/src/ATen/native/Loss.cpp (triplet_margin_loss), Distance.cpp (pairwise_distance)",
        "optax optax/losses/_self_supervised.py (triplet_margin_loss)",
    ],
)
def triplet_margin_loss(xp, anchor, positive, negative, *, margin, p, eps, swap, eps_placement):
    """Triplet margin loss with ``p``-norm distances, as PyTorch (and optax) define it::

        l_i = max(d(a_i, p_i) - d_n + margin, 0),   d_n = d(a_i, n_i)  (swap: min(d(a_i, n_i), d(p_i, n_i)))

    ``eps_placement='difference'`` (PyTorch): ``d(x1, x2) = ||x1 - x2 + eps||_p``, eps added to every
    coordinate of the difference, so ``d(x, x) = eps D^(1/p)``. ``'sum'`` (optax): ``d(x1, x2) =
    (sum_k |x1_k - x2_k|^p + eps)^(1/p)``. optax computes ``(x1 - x2)^p`` without ``|.|``, which is
    wrong for odd ``norm_degree`` (``p = 1`` gives a signed "distance", e.g. loss 1.8 where it is
    0.2); refloss uses ``|.|``. optax has no swap.

    Gradient: with ``G(v) = d ||v||_p / dv = sign(v) (|v| / ||v||_p)^(p-1)`` (0 at ``v = 0``, as
    PyTorch's norm backward; at ``v_k = 0`` with ``p = 1`` it is ``sign(0) = 0``) and ``g = [l_i's
    argument >= 0]``: ``d/da = g (G(v_ap) - w_an G(v_an))``, ``d/dp = -g (G(v_ap) + w_pn G(v_pn))``,
    ``d/dn = g (w_an G(v_an) + w_pn G(v_pn))``, where ``w_an = 1, w_pn = 0`` without swap, and with
    swap the min's subgradient: 1 to the smaller distance, 1/2 each at a tie (PyTorch's ``min``).
    At the hinge corner the gradient passes (PyTorch's ``clamp_min``).

    Precision: ``d(a, p) - d_n`` cancels where the distances are close; it is computed from
    double-double differences of the inputs (:func:`_triplet_parts`). The gradient's ``G(v) - G(w)``
    (nearly parallel differences) is taken through the rejection of one from the other for ``p = 2``
    (:func:`_unit_difference`) and through componentwise ratios to the dominant component for other
    ``p`` (:func:`_lp_unit_difference`), each accurate to ulps of itself rather than of ``G``; for
    ``p = 1`` it is a difference of signs, exact.

    Shapes: ``anchor``, ``positive``, ``negative (N, D)``; ``p`` in [1, 100].
    """
    parts = _triplet_parts(xp, anchor, positive, negative, p, eps, swap, eps_placement)
    return _hinge(xp, _triplet_argument(xp, parts, margin))


@triplet_margin_loss.defvjp
def _triplet_margin_vjp(xp, cot, anchor, positive, negative, *, margin, p, eps, swap, eps_placement):
    parts = _triplet_parts(xp, anchor, positive, negative, p, eps, swap, eps_placement)
    vectors, dist = parts["vectors"], parts["dist"]
    g = _col(xp, cot * _indicator(xp, _triplet_argument(xp, parts, margin) >= 0, dist["ap"]))
    if p in (1, 2):
        unit = {key: _lp_norm_grad(xp, v, dist[key], p) for key, v in vectors.items()}
    else:
        unit = {key: _lp_grad(xp, v, p, eps if eps_placement == "sum" else 0.0) for key, v in vectors.items()}
    if swap:  # the forward's choice of the larger gap; 1/2 each at an exact tie (PyTorch's min)
        half = xp.full_like(dist["ap"], 0.5)
        w_an = xp.where(parts["tie"], half, xp.where(parts["pn_wins"], xp.zeros_like(half), xp.ones_like(half)))
        w_an, w_pn = _col(xp, w_an), _col(xp, 1 - w_an)
    else:
        w_an, w_pn = 1.0, 0.0
    if p == 1:  # sign(v) - sign(w): exact
        to_anchor = unit["ap"] - w_an * unit["an"]
        to_positive = unit["ap"] + w_pn * unit["pn"] if swap else unit["ap"]
        to_negative = w_an * unit["an"] + w_pn * unit["pn"] if swap else unit["an"]
        return g * to_anchor, -g * to_positive, g * to_negative
    # the sums and differences of norm gradients that cancel, without cancellation; the differences
    # of the vectors (w - v) come from the inputs (_triplet_parts), not from the vectors
    dd, e, fg = parts["dd"], parts["e_scaled"], parts["fg"]

    def difference(v, w, delta):  # G(v) - G(w)
        return _unit_difference(xp, v, w, delta, e) if p == 2 else _lp_unit_difference(xp, v, w, delta, p, e)

    def minus(v):
        return -v[0], -v[1]

    to_anchor = difference(dd["ap"], dd["an"], minus(fg["an"][0]))  # G_ap - G_an
    if not swap:
        return g * to_anchor, -g * unit["ap"], g * unit["an"]
    to_anchor = w_an * to_anchor + w_pn * unit["ap"]  # G_ap - w_an G_an
    plus = difference(dd["ap"], minus(dd["pn"]), minus(fg["pn"][1]))  # G_ap + G_pn
    to_positive = w_pn * plus + w_an * unit["ap"]  # G_ap + w_pn G_pn
    a, pos, neg, shift = parts["scaled"]
    delta = _dd_total(xp, neg, neg, -pos, -a, *(-t for t in shift))  # -(v_an + v_pn)
    tie = _col(xp, parts["tie"])
    to_negative = xp.where(tie, 0.5 * difference(dd["an"], minus(dd["pn"]), delta), w_an * unit["an"] + w_pn * unit["pn"])
    return g * to_anchor, -g * to_positive, g * to_negative


@loss(
    family="embedding",
    inputs=_TRIPLET_INPUTS,
    params=[Param("alpha", 0.2, low=0.0, grid=(1.0,), doc="margin alpha between squared distances")],
    check=_need_features(0, "anchor"),
    counterparts={
        "facenet": "facenet.triplet_loss (davidsandberg; reduction='mean', alpha 0.2 from train_tripletloss.py)",
    },
    references=[
        "Schroff, Kalenichenko, Philbin, FaceNet: A Unified Embedding for Face Recognition and Clustering, CVPR 2015",
        "davidsandberg/facenet src/facenet.py (triplet_loss), src/train_tripletloss.py (--alpha)",
        "003 seed, Triplet Loss",
    ],
)
def facenet_triplet_loss(xp, anchor, positive, negative, *, alpha):
    """FaceNet triplet loss on squared Euclidean distances::

        l_i = max(||a_i - p_i||^2 - ||a_i - n_i||^2 + alpha, 0)

    ``reduction='mean'`` is facenet's mean over all triplets (zeros included). FaceNet L2-normalises
    the D.embeddings in the network, before the loss; do so to compare. No ``eps`` is needed: squared
    distances are smooth at ``a = p``. The argument of the hinge cancels where the two distances are
    close; it is computed exactly enough to be rounded once (:func:`_facenet_argument`).

    Gradient where the hinge is active (``>= 0``: TensorFlow's ``maximum`` passes the gradient at a
    tie): ``d/da = 2 (n - p)``, ``d/dp = 2 (p - a)``, ``d/dn = 2 (a - n)`` (from ``d||v||^2/dv = 2v``).

    Shapes: ``anchor``, ``positive``, ``negative (N, D)``.
    """
    return _hinge(xp, _facenet_argument(xp, anchor, positive, negative, alpha))


def _facenet_argument(xp, anchor, positive, negative, alpha):
    """``||a - p||^2 - ||a - n||^2 + alpha``, which cancels wherever the two distances are close,
    as ``sum_k (n_k - p_k)(2 a_k - p_k - n_k) + alpha``: each factor exact as a double-double
    (:func:`_two_sum`), their products and the sum double-doubles (:func:`_two_prod`,
    :func:`_dd_sum`), rounded once at the end. The factored form keeps the terms at the size of
    the difference, not of the squared distances (rows of very different magnitudes)."""
    f_hi, f_lo = _two_sum(xp, negative, -positive)
    u_hi, u_lo = _two_sum(xp, anchor, -positive)
    v_hi, v_lo = _two_sum(xp, anchor, -negative)
    g_hi, g_lo = _two_sum(xp, u_hi, v_hi)
    g_lo = g_lo + (u_lo + v_lo)
    p_hi, p_lo = _two_prod(xp, f_hi, g_hi)
    d_hi, d_lo = _dd_sum(xp, p_hi, p_lo + (f_hi * g_lo + f_lo * g_hi))
    t, e = _two_sum(xp, d_hi, xp.full_like(d_hi, alpha))
    return t + (e + d_lo)


@facenet_triplet_loss.defvjp
def _facenet_triplet_vjp(xp, cot, anchor, positive, negative, *, alpha):
    arg = _facenet_argument(xp, anchor, positive, negative, alpha)
    g = _col(xp, (2.0 * cot) * _indicator(xp, arg >= 0, arg))
    return g * (negative - positive), g * (positive - anchor), g * (anchor - negative)


# ------------------------------------------------------------------------------------------------
# PyTorch's embedding losses.


def _cosine_parts(xp, x1, x2, margin=0.0):
    """PyTorch's ``cos = x1.x2 / sqrt((|x1|^2 + e)(|x2|^2 + e))``, ``1 - cos`` and the gradients of
    ``cos``, without cancellation for nearly parallel rows.

    Rows whose largest entry is at least 1 are divided by a power of two ``s`` near it (exact; ``e``
    scaled to ``e1 = e / s1^2``), so nothing overflows; ``S11, S22, S12`` are the scaled dot products
    (double-doubles, :func:`_dd_dot`) and ``n = sqrt(S + e)``. Both the gradient ``d cos / d x1 = (x2 (S11
    + e1) - x1 S12) / (s1 n1^3 n2)`` and ``1 - cos`` cancel for nearly parallel rows; both are written
    with the rejection ``r1 = x2 - (S12 / S11) x1`` (the quotient a double-double, ``r1`` accurate to
    ulps of itself): ``d cos / d x1 = (S11 r1 + e1 x2) / (s1 n1^3 n2)`` and, where ``cos > 0``, ``1 - cos
    = (G + e1 S22 + e2 S11 + e1 e2) / (n1 n2 (n1 n2 + S12))`` with the Gram determinant ``G = S11 |r1|^2``.
    ``cos - margin`` (``minus_margin``) cancels near the hinge: it is ``(S12 - margin n1 n2) / (n1 n2)`` with
    ``n1 n2`` a double-double (one Newton step on ``sqrt``).
    Accurate to a few ulps, except for rows parallel to within the double-double's resolution
    (``|r1| < 2^-100 |x2|``: ``D = 1``, say) with norms over ~100, where the ``e`` terms fall below
    that resolution too (relative errors up to ``2^-106 |x|^2 / e``).
    """

    def scaled(x):
        e, s = _row_scale(xp, xp.abs(x))
        s = xp.where(e > 0, s, xp.ones_like(s))
        return s, x / _col(xp, s), (_TORCH_COSINE_EPSILON / s) / s

    def rejection(u, v, own_hi, own_lo, c_hi, c_lo):
        # v - (c / own) u, with the quotient as a double-double (0 where own = 0)
        zero = own_hi == 0
        den = xp.where(zero, xp.ones_like(own_hi), own_hi)
        t_hi = xp.where(zero, xp.zeros_like(c_hi), c_hi / den)
        p, e = _two_prod(xp, t_hi, own_hi)
        t_lo = (((c_hi - p) - e) + (c_lo - t_hi * own_lo)) / den
        q, f = _two_prod(xp, _col(xp, t_hi), u)
        return (v - q) - (f + _col(xp, t_lo) * u)

    s1, u1, e1 = scaled(x1)
    s2, u2, e2 = scaled(x2)
    a_hi, a_lo = _dd_dot(xp, u1, u1)
    b_hi, b_lo = _dd_dot(xp, u2, u2)
    c_hi, c_lo = _dd_dot(xp, u1, u2)
    r1 = rejection(u1, u2, a_hi, a_lo, c_hi, c_lo)
    r2 = rejection(u2, u1, b_hi, b_lo, c_hi, c_lo)
    big_a, big_b = a_hi + e1, b_hi + e2  # n1^2, n2^2
    m = xp.sqrt(big_a * big_b)  # n1 n2
    cos = c_hi / m
    positive = cos > 0
    gram = a_hi * xp.sum(r1 * r1, axis=1)
    gap = (gram + (e1 * b_hi + e2 * a_hi + e1 * e2)) / (m * (m + xp.where(positive, c_hi, xp.zeros_like(c_hi))))
    if margin:
        big_a, lo_a = _two_sum(xp, a_hi, e1)
        big_b, lo_b = _two_sum(xp, b_hi, e2)
        ab_hi, ab_lo = _dd_mul(xp, big_a, a_lo + lo_a, big_b, b_lo + lo_b)
        p, e = _two_prod(xp, m, m)
        m_lo = (((ab_hi - p) - e) + ab_lo) / (2 * m)  # n1 n2 = m + m_lo
        q, f = _two_prod(xp, xp.full_like(m, margin), m)
        minus_margin = _dd_sub(xp, c_hi, c_lo, q, f + margin * m_lo) / m
    else:
        minus_margin = cos
    return {
        "cos": cos,
        "minus_margin": minus_margin,
        "one_minus": xp.where(positive, gap, 1 - cos),
        "d1": (_col(xp, a_hi) * r1 + _col(xp, e1) * u2) / _col(xp, big_a * m * s1),
        "d2": (_col(xp, b_hi) * r2 + _col(xp, e2) * u1) / _col(xp, big_b * m * s2),
    }


@loss(
    family="embedding",
    inputs=[
        Input("input1", shape="N D", domain=D.embeddings, doc="first embedding of each pair"),
        Input("input2", shape="N D", domain=D.embeddings, doc="second embedding of each pair"),
        Input("target", shape="N", differentiable=False, domain=D.sign_targets, doc="1 (similar) or -1 (dissimilar)"),
    ],
    params=[Param("margin", 0.0, low=-1.0, high=1.0, grid=(0.5,), doc="margin on the cosine of dissimilar pairs")],
    check=_need_features(0, "input1"),
    counterparts={"torch": "torch.nn.functional.cosine_embedding_loss"},
    references=["PyTorch aten/src/ATen/native/Loss.cpp (cosine_embedding_loss; constexpr float EPSILON = 1e-12)"],
)
def cosine_embedding_loss(xp, input1, input2, target, *, margin):
    """Cosine embedding loss, exactly as PyTorch defines it::

        cos = x1.x2 / sqrt((|x1|^2 + e)(|x2|^2 + e)),   e = float32(1e-12) = 9.999999960041972e-13
        l = 1 - cos if y = 1;   max(0, cos - margin) if y = -1;   0 for any other target

    ``e`` is PyTorch's ``EPSILON`` on the squared norms, declared ``constexpr float`` (so 1e-12
    rounded to float32, in every dtype). It makes a zero vector give ``cos = 0``, so ``l = 1`` for
    ``y = 1`` (optax's ``cosine_distance`` gives NaN, Keras ``-0.0``). Computed with
    rows scaled by a power of two, so huge vectors do not overflow (PyTorch's product of squared
    norms does beyond 1e77), and ``1 - cos`` (nearly parallel rows) and ``cos - margin`` (near the
    hinge) without cancellation (:func:`_cosine_parts`). A NaN target gives NaN (PyTorch: 0).

    Gradient: ``d cos / d x1 = (x2^ - cos x1^) / n1`` with ``n = sqrt(|x|^2 + e)`` and ``x^ = x / n``
    (quotient rule on ``x1.x2 / (n1 n2)``, ``dn1/dx1 = x1 / n1``), symmetrically for ``x2``; times
    ``-1`` for ``y = 1`` and ``[cos - margin >= 0]`` for ``y = -1`` (PyTorch's ``clamp_min`` passes the
    gradient at the corner); 0 for other targets. For (nearly) parallel inputs the two terms cancel
    (PyTorch's autograd of the same expression is then accurate to ulps of ``1 / n1`` only); refloss
    writes the numerator of ``(x2 (|x1|^2 + e) - x1 (x1.x2)) / n1^3 n2`` with the rejection of ``x2``
    from ``x1`` (:func:`_cosine_parts`), accurate to ulps of itself.

    Shapes: ``input1``, ``input2 (N, D)``, ``target (N,)``.
    """
    parts = _cosine_parts(xp, input1, input2, margin)
    zero = xp.zeros_like(parts["cos"])
    out = xp.where(target == 1, parts["one_minus"], zero) + xp.where(target == -1, _hinge(xp, parts["minus_margin"]), zero)
    return _propagate_nan(xp, out, target)


@cosine_embedding_loss.defvjp
def _cosine_embedding_vjp(xp, cot, input1, input2, target, *, margin):
    parts = _cosine_parts(xp, input1, input2, margin)
    cos = parts["cos"]
    zero = xp.zeros_like(cos)
    slope = xp.where(target == 1, -xp.ones_like(cos), zero) + xp.where((target == -1) & (parts["minus_margin"] >= 0), xp.ones_like(cos), zero)
    g = _col(xp, cot * slope)
    return g * parts["d1"], g * parts["d2"], None


@loss(
    family="embedding",
    inputs=[
        Input("input1", domain=D.ranking_first, doc="scores of the first items"),
        Input("input2", domain=D.ranking_second, doc="scores of the second items"),
        Input("target", differentiable=False, domain=D.sign_targets, doc="1: input1 should rank higher; -1: lower"),
    ],
    params=[Param("margin", 0.0, grid=(0.5,), doc="margin (any real, as in PyTorch)")],
    counterparts={"torch": "torch.nn.functional.margin_ranking_loss"},
    references=["PyTorch aten/src/ATen/native/Loss.cpp (margin_ranking_loss)"],
)
def margin_ranking_loss(xp, input1, input2, target, *, margin):
    """Margin ranking loss: ``l = max(0, -y (x1 - x2) + margin)``, elementwise, as PyTorch.

    Any real target is accepted and used as a factor (PyTorch does the same; ``y`` is meant to be
    +-1). All three inputs have the same shape (PyTorch does not broadcast here either).

    Gradient: ``d l / d x1 = -y [-y (x1 - x2) + margin >= 0] = -d l / d x2`` (PyTorch's ``clamp_min``
    passes the gradient at the corner).

    Shapes: ``input1``, ``input2``, ``target`` alike.
    """
    return _hinge(xp, -target * (input1 - input2) + margin)


@margin_ranking_loss.defvjp
def _margin_ranking_vjp(xp, cot, input1, input2, target, *, margin):
    arg = -target * (input1 - input2) + margin
    g = cot * target * _indicator(xp, arg >= 0, arg)
    return -g, g, None


@loss(
    family="embedding",
    inputs=[
        Input("input", domain=D.hinge_inputs, doc="distances (or any scores)"),
        Input("target", differentiable=False, domain=D.sign_targets, doc="1 (similar) or -1 (dissimilar)"),
    ],
    params=[Param("margin", 1.0, grid=(2.0,), doc="margin (any real, as in PyTorch)")],
    counterparts={"torch": "torch.nn.functional.hinge_embedding_loss"},
    references=["PyTorch aten/src/ATen/native/Loss.cpp (hinge_embedding_loss)"],
)
def hinge_embedding_loss(xp, input, target, *, margin):
    """Hinge embedding loss, elementwise, exactly as PyTorch defines it::

        l = [y != -1] x + [y != 1] max(0, margin - x)

    i.e. ``x`` for ``y = 1`` and ``max(0, margin - x)`` for ``y = -1``; for any other target **both**
    terms are added (PyTorch's ``where(y != 1, ...) + where(y != -1, ...)``; target 0, x = 0.3 gives
    1.0). A NaN target gives NaN.

    Gradient: ``d l / d x = [y != -1] - [y != 1] [margin - x >= 0]`` (PyTorch's ``clamp_min`` passes
    the gradient at the corner ``x = margin``).

    Shapes: ``input`` and ``target`` alike.
    """
    zero = xp.zeros_like(input)
    out = xp.where(target != 1, _hinge(xp, margin - input), zero) + xp.where(target != -1, input, zero)
    return _propagate_nan(xp, out, target)


@hinge_embedding_loss.defvjp
def _hinge_embedding_vjp(xp, cot, input, target, *, margin):
    one, zero = xp.ones_like(input), xp.zeros_like(input)
    slope = xp.where(target != -1, one, zero) - xp.where((target != 1) & (margin - input >= 0), one, zero)
    return cot * slope, None


__all__ = [
    "center_invariant_loss",
    "center_loss",
    "center_update",
    "contrastive_loss",
    "cosine_embedding_loss",
    "facenet_triplet_loss",
    "hinge_embedding_loss",
    "margin_ranking_loss",
    "range_loss",
    "ring_loss",
    "triplet_margin_loss",
]
