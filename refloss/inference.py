"""Scoring a deployed embedding model with nothing but an array library.

A face-recognition model trained with a margin loss is used without the loss: its embeddings are
compared by cosine similarity (verification) or against the class weights (identification). These
helpers give those numbers with the same normalisation the losses use (``refloss.losses.margin``),
on NumPy, CuPy or any array-API library::

    scores = refloss.verification_scores(emb_a, emb_b)           # cos(a_i, b_i), one per pair
    logits = refloss.cosine_logits(emb, W, scale=64.0)           # s cos(x_i, W_j), (N, C)
    probs = refloss.class_probabilities(logits)                  # softmax over the classes
    train = refloss.margin_logits("arcface", emb, W, labels)     # what the loss saw in training
"""

from __future__ import annotations

from .loss import _fail
from .losses import margin as _margin
from .xp import namespace, softmax

__all__ = ["cosine_logits", "margin_logits", "class_probabilities", "verification_scores", "MARGIN_KINDS"]


def _matrix(xp, name, arg, v, width=None):
    if not hasattr(v, "shape") or len(v.shape) != 2:
        _fail(ValueError, name, arg, "a 2-d array (rows of vectors)", f"shape {getattr(v, 'shape', type(v).__name__)}")
    if not xp.isdtype(v.dtype, "real floating"):
        _fail(TypeError, name, arg, "a real floating array", f"dtype {v.dtype}")
    if width is not None and v.shape[1] != width:
        _fail(ValueError, name, arg, f"rows of length {width} (as the other argument)", f"shape {tuple(v.shape)}")


def _unit_rows(xp, name, arg, v, eps):
    if eps is None and v.shape[0]:
        zero = xp.all(v == 0, axis=1)
        if bool(xp.any(zero)):
            _fail(ValueError, name, arg, "rows of nonzero norm (pass eps= to clamp the norm)", "a zero row")
    return _margin._normalise_rows(xp, v, eps)[0]


def cosine_logits(features, weights, *, scale=1.0, eps=None):
    """``s cos(x_i, W_j) = s x_i . W_j / (|x_i| |W_j|)``: the (N, C) logits of a cosine classifier.

    ``features (N, D)``, ``weights (C, D)`` (raw; normalised with the losses' overflow-free norm);
    ``eps`` clamps the norms like ``F.normalize`` (without it a zero row is an error). This is the
    NormFace / CosFace / ArcFace classifier at test time: the margin is a training device only.
    """
    xp = namespace(features, weights)
    _matrix(xp, "cosine_logits", "features", features)
    _matrix(xp, "cosine_logits", "weights", weights, features.shape[1])
    cos = xp.matmul(_unit_rows(xp, "cosine_logits", "features", features, eps), _unit_rows(xp, "cosine_logits", "weights", weights, eps).T)
    return scale * cos


def _psi_of(kind, params):
    """The target transform and scale of a cosine margin loss, from the loss's own declaration defaults."""
    loss = MARGIN_KINDS[kind]
    p = {**loss.defaults(), **params}
    unknown = set(params) - set(loss.defaults())
    if unknown:
        raise TypeError(f"margin_logits: {kind!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(loss.defaults())}")
    if kind in ("normface", "coco"):
        return _margin._identity, p.get("scale", p.get("alpha")), p
    if kind == "cosface":
        return _margin._shift(p["margin"]), p["scale"], p
    if kind == "arcface":
        return _margin._arcface_psi(p["margin"], p["easy_margin"], p["fallback"], False), p["scale"], p
    return _margin._combined_psi(p["m1"], p["m2"], p["m3"]), p["scale"], p


def margin_logits(kind, features, weights, labels, **params):
    """The logits a margin loss feeds to softmax cross-entropy during training: ``s cos`` everywhere
    and ``s psi(cos)`` at each sample's label (``kind`` in :data:`MARGIN_KINDS`; parameters and
    defaults are the loss's own, e.g. ``margin_logits("arcface", x, W, y, margin=0.5, scale=64)``).

    ``-log softmax(margin_logits(...))[i, y_i]`` is the loss; ``class_probabilities`` of it are the
    training-time probabilities. Inputs are validated by the loss itself.
    """
    if kind not in MARGIN_KINDS:
        raise ValueError(f"margin_logits: kind must be one of {sorted(MARGIN_KINDS)}, got {kind!r}")
    psi, scale, p = _psi_of(kind, params)
    MARGIN_KINDS[kind].unreduced(features, labels, weights, **{k: v for k, v in p.items() if k != "reduction"})  # validation
    xp = namespace(features, weights)
    cos, xr, wr = _margin._cosines(xp, features, weights, p["eps"])
    return _margin._margin_logits(xp, cos, xr, wr, labels, scale, psi)[0]


MARGIN_KINDS = {
    "normface": _margin.normface_loss,
    "coco": _margin.coco_loss,
    "cosface": _margin.cosface_loss,
    "arcface": _margin.arcface_loss,
    "combined": _margin.combined_margin_loss,
}


def class_probabilities(logits, *, axis=-1):
    """``softmax(logits)`` along ``axis``: each row sums to one, each entry to a few ULP, no overflow."""
    return softmax(logits, axis=axis)


def verification_scores(a, b, *, eps=None):
    """``cos(a_i, b_i)``: the cosine similarity of each pair of embeddings (rows of ``a`` and ``b``, (N, D)).

    For unit vectors ``|a_hat - b_hat| = sqrt(2 - 2 cos)``, so thresholding the score is thresholding the
    Euclidean distance of the normalised embeddings. Scores lie in [-1, 1] (to rounding).
    """
    xp = namespace(a, b)
    _matrix(xp, "verification_scores", "a", a)
    _matrix(xp, "verification_scores", "b", b, a.shape[1])
    if a.shape[0] != b.shape[0]:
        _fail(ValueError, "verification_scores", "b", f"{a.shape[0]} rows (one per row of a)", f"shape {tuple(b.shape)}")
    ua = _unit_rows(xp, "verification_scores", "a", a, eps)
    ub = _unit_rows(xp, "verification_scores", "b", b, eps)
    return xp.sum(ua * ub, axis=1)
