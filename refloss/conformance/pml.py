"""The ``pml`` target: pytorch-metric-learning's margin and metric losses (margin_losses.md section 7).

The margin family has no counterpart in the frameworks themselves; PML is where PyTorch users get it.
Each mapping builds the PML loss object, puts refloss's class weights in as PML's ``W`` (refloss
stores ``(C, D)``, PML ``(D, C)``; Sub-center ArcFace ``(C, K, D)`` against PML's ``(D, C K)`` with
column ``c K + k``) so that the gradient reaches them, and picks PML's reducer for refloss's
reduction. PML's documented conventions are encoded: ``margin`` in degrees for ArcFace (converted
from refloss's radians), ``F.normalize``'s ``eps = 1e-12`` (``pml_normalize_eps``, for cases without
an eps), ArcFace's ``theta <= pi - m`` fallback (``pml_arcface_fallback``, for cases with
``fallback='none'``), and no eps in ``LpDistance`` (``pml_no_eps`` for triplet cases with one).
Contrastive and triplet cases are passed as explicit pairs/triplets of one batch (``indices_tuple``)
with ``LpDistance(normalize_embeddings=False)``: refloss's ``convention='pml'`` terms on the rows as
given.
"""

from __future__ import annotations

import math

from .adapter import Call, Convention, NotOffered, literal, override
from .case import Case
from .torch import TorchAdapter

NORMALIZE_EPS = Convention(
    "pml_normalize_eps",
    "PML normalises with torch.nn.functional.normalize, norms max(|v|, 1e-12) (margin_losses.md 7)",
    override(eps=1e-12),
)
ARCFACE_FALLBACK = Convention(
    "pml_arcface_fallback",
    "PML's ArcFace uses cos(theta) - m sin(m) where theta > pi - m (PR #539; margin_losses.md 7)",
    override(fallback="insightface"),
)
NO_EPS = Convention(
    "pml_no_eps",
    "PML's LpDistance (torch.cdist) adds no eps to the distance (margin_losses.md 7)",
    override(eps=0.0),
)

_REDUCER = {"none": "DoNothingReducer", "sum": "SumReducer", "mean": "MeanReducer", "batchmean": "MeanReducer",
            "sum_over_batch_size": "MeanReducer"}


def _margin_loss(cls: str, kwargs: dict, case: Case, weights: str = "weights.T", conventions=()) -> Call:
    r = case.params["reduction"]
    kw = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    pick = '["loss"]["losses"]' if r == "none" else ""
    code = (
        f"loss_fn = losses.{cls}({kw}, reducer=reducers.{_REDUCER[r]}())\n"
        "del loss_fn.W  # refloss's class weights become PML's W, in its layout, keeping their gradient\n"
        f"loss_fn.W = {weights}\n"
        f"out = loss_fn(features, labels){pick}"
    )
    eps = (NORMALIZE_EPS,) if case.params.get("eps") is None else ()
    return Call(f"pytorch_metric_learning.losses.{cls}", code, ("features", "labels", "weights"), ("features", "weights"),
                tuple(conventions) + eps)


_CD = {"num_classes": "weights.shape[0]", "embedding_size": "weights.shape[1]"}


def arcface_loss(case: Case):
    p = case.params
    if p["easy_margin"] or p["gradient"] != "exact":
        return NotOffered("PML's ArcFaceLoss has no easy margin and no straight-through gradient")
    kw = {**_CD, "margin": literal(math.degrees(p["margin"])), "scale": literal(p["scale"])}
    conv = (ARCFACE_FALLBACK,) if p["fallback"] == "none" else ()
    return _margin_loss("ArcFaceLoss", kw, case, conventions=conv)


def subcenter_arcface_loss(case: Case):
    p = case.params
    if p["easy_margin"]:
        return NotOffered("PML's SubCenterArcFaceLoss has no easy margin")
    kw = {"num_classes": "weights.shape[0]", "embedding_size": "weights.shape[2]", "margin": literal(math.degrees(p["margin"])),
          "scale": literal(p["scale"]), "sub_centers": "weights.shape[1]"}
    conv = (ARCFACE_FALLBACK,) if p["fallback"] == "none" else ()
    return _margin_loss("SubCenterArcFaceLoss", kw, case, "weights.reshape(-1, weights.shape[2]).T", conv)


def cosface_loss(case: Case):
    p = case.params
    return _margin_loss("CosFaceLoss", {**_CD, "margin": literal(p["margin"]), "scale": literal(p["scale"])}, case)


def normface_loss(case: Case):
    return _margin_loss("NormalizedSoftmaxLoss", {**_CD, "temperature": literal(1.0 / case.params["scale"])}, case)


def _large_margin(cls):
    def mapping(case: Case):
        p = case.params
        if p["lambda_"] != 0:
            return NotOffered(f"PML's {cls} has no lambda (annealing): lambda_=0 only")
        return _margin_loss(cls, {**_CD, "margin": literal(p["m"]), "scale": "1"}, case)

    return mapping


def contrastive_loss(case: Case):
    p = case.params
    if p["convention"] != "pml":
        return NotOffered("PML's ContrastiveLoss is convention='pml'")
    t = case.inputs["target"]
    if not ((t == 0) | (t == 1)).all():
        return NotOffered("PML pairs are positive or negative (targets 0 or 1)")
    r = p["reduction"]
    if r == "none":
        return NotOffered("PML returns the positive and negative pair terms separately (no per-pair output in input order)")
    code = (
        f"loss_fn = losses.ContrastiveLoss(pos_margin={literal(p['pos_margin'])}, neg_margin={literal(p['margin'])}, "
        "distance=distances.LpDistance(normalize_embeddings=False), reducer=reducers.SumReducer())\n"
        "i = torch.arange(input1.shape[0])\n"
        "pos, neg = i[target == 1], i[target == 0]  # the pairs (input1[i], input2[i]) of one batch\n"
        "out = loss_fn(torch.cat([input1, input2]), indices_tuple=(pos, pos + len(i), neg, neg + len(i)))"
        + ("" if r == "sum" else "\nout = out / input1.shape[0]")
    )
    return Call("pytorch_metric_learning.losses.ContrastiveLoss", code, ("input1", "input2", "target"), ("input1", "input2"))


def triplet_margin_loss(case: Case):
    p = case.params
    r = p["reduction"]
    pick = '["loss"]["losses"]' if r == "none" else ""
    code = (
        f"loss_fn = losses.TripletMarginLoss(margin={literal(p['margin'])}, swap={p['swap']!r}, "
        f"distance=distances.LpDistance(normalize_embeddings=False, p={literal(p['p'])}), reducer=reducers.{_REDUCER[r]}())\n"
        "i = torch.arange(anchor.shape[0])\n"
        "n = len(i)  # the triplets (anchor[i], positive[i], negative[i]) of one batch\n"
        f"out = loss_fn(torch.cat([anchor, positive, negative]), indices_tuple=(i, i + n, i + 2 * n)){pick}"
    )
    conv = (NO_EPS,) if p["eps"] != 0 else ()
    return Call("pytorch_metric_learning.losses.TripletMarginLoss", code, ("anchor", "positive", "negative"),
                ("anchor", "positive", "negative"), conv)


class PMLAdapter(TorchAdapter):
    name = "pml"
    packages = ("pytorch-metric-learning", "torch")
    header = "import torch\nfrom pytorch_metric_learning import distances, losses, reducers"
    mappings = {
        "arcface_loss": arcface_loss,
        "subcenter_arcface_loss": subcenter_arcface_loss,
        "cosface_loss": cosface_loss,
        "normface_loss": normface_loss,
        "sphereface_loss": _large_margin("SphereFaceLoss"),
        "lsoftmax_loss": _large_margin("LargeMarginSoftmaxLoss"),
        "contrastive_loss": contrastive_loss,
        "triplet_margin_loss": triplet_margin_loss,
    }

    def load(self):
        super().load()
        import pytorch_metric_learning  # noqa: F401


ADAPTER = PMLAdapter()
