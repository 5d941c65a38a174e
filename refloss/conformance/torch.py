"""The ``torch`` target: ``torch.nn.functional`` losses (and ``torchvision.ops`` where torchvision imports).

Each mapping passes refloss's parameters to PyTorch's own call. Reductions PyTorch has (``none``,
``mean``, ``sum``; ``batchmean`` for ``kl_div``) are PyTorch's; refloss's ``batchmean`` and
``sum_over_batch_size`` elsewhere are the sum of PyTorch's ``reduction='none'`` output divided by the
batch size or the element count (the glue line is part of the reproducer). Class axes other than 1
are moved to 1 with ``movedim`` (PyTorch's layout).

Conventions (frameworks.md sections 5 and 6): ``binary_cross_entropy`` clamps each log at -100
(``torch_log_clamp``, for cases defined with another clamp); ``triplet_margin_loss`` adds eps to the
difference vector (``torch_eps_difference``, for cases with optax's placement).
"""

from __future__ import annotations

import numpy as np

from .adapter import Adapter, Call, Convention, NotOffered, by_name, literal, reduction_glue
from .case import Case

# refloss reductions applied to PyTorch's reduction='none' output where it lacks them ("mean" only where
# refloss's mean is over the element count: no weights)
_GLUE = reduction_glue("out.sum()", "out.mean()", mean_over_elements="out.sum() / out.numel()")


def reduction(case: Case, native=("none", "mean", "sum")) -> tuple[str, str]:
    """``(PyTorch's reduction argument, glue line)`` for the case's reduction."""
    r = case.params["reduction"]
    return (r, "") if r in native else ("none", _GLUE[r])


class _Name(str):
    """A keyword value that is code (an array by name, or an expression reading ``reads``)."""

    def __new__(cls, expr, reads=None):
        obj = super().__new__(cls, expr)
        obj.reads = (expr,) if reads is None else tuple(reads)
        return obj


def _kw(**kw) -> str:
    return ", ".join(f"{k}={v if isinstance(v, _Name) else literal(v)}" for k, v in kw.items())


def _arrays(case: Case, *names) -> dict:
    """``{name: _Name(name)}`` for the array parameters present, to pass by name."""
    return {n: _Name(n) for n in names if case.params.get(n) is not None}


def _moved(case: Case, name: str) -> str:
    """``name`` with the case's class axis moved to 1 (PyTorch's layout)."""
    axis = case.params.get("axis", 1)
    ndim = case.inputs[name].ndim
    return name if axis % ndim == 1 else f"{name}.movedim({axis}, 1)"


def fn(api: str, case: Case, positional: tuple, grads: tuple, kw: dict, native=("none", "mean", "sum"),
       conventions=(), scale: str = "", args: tuple | None = None) -> Call:
    """The common shape of a ``torch.nn.functional`` call: positional inputs, keywords, reduction."""
    red, glue = reduction(case, native)
    arrays = tuple(r for v in kw.values() if isinstance(v, _Name) for r in v.reads)
    line = f"out = {api}({', '.join(args or positional)}, {_kw(**kw, reduction=red)})" + scale
    reads = tuple(positional) + tuple(a for a in arrays if a not in positional)
    return Call(api, line + ("\n" + glue if glue else ""), reads, grads, tuple(conventions))


F = "torch.nn.functional."


def cross_entropy(case: Case):
    p = case.params
    kw = {**_arrays(case, "weight"), "ignore_index": p["ignore_index"], "label_smoothing": p["label_smoothing"]}
    return fn(F + "cross_entropy", case, ("logits", "target"), ("logits",), kw, args=(_moved(case, "logits"), "target"))


def nll_loss(case: Case):
    kw = {**_arrays(case, "weight"), "ignore_index": case.params["ignore_index"]}
    return fn(F + "nll_loss", case, ("log_probs", "target"), ("log_probs",), kw, args=(_moved(case, "log_probs"), "target"))


def softmax_cross_entropy(case: Case):
    kw = {**_arrays(case, "weight"), "label_smoothing": case.params["label_smoothing"]}
    args = (_moved(case, "logits"), _moved(case, "target"))
    return fn(F + "cross_entropy", case, ("logits", "target"), ("logits", "target"), kw, args=args)


def softplus_logsumexp_loss(case: Case):
    return fn(F + "cross_entropy", case, ("logits", "target"), ("logits",), {})


LOG_CLAMP = Convention.fixed("torch_log_clamp", "binary_cross_entropy clamps each log at -100 (BCE(0, 1) = 100; "
                             "frameworks.md 1.4, 5.6)", clamp="torch")


def binary_cross_entropy(case: Case):
    if case.params["label_smoothing"]:
        return NotOffered("PyTorch's binary_cross_entropy has no label smoothing")
    return fn(F + "binary_cross_entropy", case, ("input", "target"), ("input", "target"), _arrays(case, "weight"),
              conventions=LOG_CLAMP.unless_defined(case))


def binary_cross_entropy_with_logits(case: Case):
    if case.params["label_smoothing"]:
        return NotOffered("PyTorch's binary_cross_entropy_with_logits has no label smoothing")
    return fn(F + "binary_cross_entropy_with_logits", case, ("logits", "target"), ("logits", "target"),
              _arrays(case, "weight", "pos_weight"))


def weighted_binary_cross_entropy(case: Case):
    kw = {"pos_weight": _Name(f"logits.new_tensor({literal(case.params['beta'])})", reads=())}
    return fn(F + "binary_cross_entropy_with_logits", case, ("logits", "target"), ("logits", "target"), kw)


def kl_div(case: Case):
    if case.params["convention"] != "torch":
        return NotOffered("PyTorch's kl_div takes log-probabilities (convention='torch' only)")
    return fn(F + "kl_div", case, ("input", "target"), ("input", "target"), {"log_target": case.params["log_target"]},
              native=("none", "mean", "sum", "batchmean"))


def multi_margin_loss(case: Case):
    p = case.params
    kw = {"p": p["p"], "margin": p["margin"], **_arrays(case, "weight")}
    return fn(F + "multi_margin_loss", case, ("input", "target"), ("input",), kw)


def multiclass_hinge_loss(case: Case):
    # PyTorch's multi_margin_loss (p=1) is this loss divided by the class count.
    return fn(F + "multi_margin_loss", case, ("logits", "target"), ("logits",), {"margin": case.params["margin"]},
              native=("none",), scale=" * logits.shape[1]")


def multilabel_margin_loss(case: Case):
    return fn(F + "multilabel_margin_loss", case, ("input", "target"), ("input",), {})


def multilabel_soft_margin_loss(case: Case):
    return fn(F + "multilabel_soft_margin_loss", case, ("input", "target"), ("input",), _arrays(case, "weight"))


def soft_margin_loss(case: Case):
    return fn(F + "soft_margin_loss", case, ("input", "target"), ("input",), {})


def cosine_embedding_loss(case: Case):
    return fn(F + "cosine_embedding_loss", case, ("input1", "input2", "target"), ("input1", "input2"),
              {"margin": case.params["margin"]})


def hinge_embedding_loss(case: Case):
    return fn(F + "hinge_embedding_loss", case, ("input", "target"), ("input",), {"margin": case.params["margin"]})


def margin_ranking_loss(case: Case):
    return fn(F + "margin_ranking_loss", case, ("input1", "input2", "target"), ("input1", "input2"),
              {"margin": case.params["margin"]})


EPS_DIFFERENCE = Convention.fixed("torch_eps_difference", "triplet_margin_loss adds eps to every coordinate of the "
                                  "difference, ||a - p + eps||_p (frameworks.md 5.15)", eps_placement="difference")


def triplet_margin_loss(case: Case):
    p = case.params
    kw = {"margin": p["margin"], "p": p["p"], "eps": p["eps"], "swap": p["swap"]}
    return fn(F + "triplet_margin_loss", case, ("anchor", "positive", "negative"), ("anchor", "positive", "negative"), kw,
              conventions=EPS_DIFFERENCE.unless_defined(case))


def gaussian_nll_loss(case: Case):
    x, var = case.inputs["input"].shape, case.inputs["var"].shape
    # PyTorch reads a var one dimension short as (..., 1), aligning leading dimensions where NumPy
    # broadcasting (refloss) aligns trailing ones; it takes a var of the input's rank differing in
    # one dimension of size 1. Those shapes, and the input's, are offered.
    differ = [(a, b) for a, b in zip(x, var) if a != b]
    if len(var) != len(x) or not (not differ or (len(differ) == 1 and differ[0][1] == 1)):
        return NotOffered(f"PyTorch's gaussian_nll_loss reads var of shape {var} for input {x} differently")
    p = case.params
    return fn(F + "gaussian_nll_loss", case, ("input", "target", "var"), ("input", "target", "var"),
              {"full": p["full"], "eps": p["eps"]})


def huber_loss(case: Case):
    kw = {"delta": case.params["delta"]}
    if case.params.get("weight") is not None:  # PyTorch wants the weight in the input's shape
        kw["weight"] = _Name("weight.expand_as(input)", reads=("weight",))
    return fn(F + "huber_loss", case, ("input", "target"), ("input", "target"), kw)


def _weighted(api):
    def mapping(case: Case):
        if case.params.get("convention", "torch") != "torch":
            return NotOffered(f"PyTorch's {api.rsplit('.', 1)[1]} has no half factor (convention='torch' only)")
        kw = {}
        if case.params.get("weight") is not None:
            kw["weight"] = _Name("weight.expand_as(input)", reads=("weight",))
        return fn(api, case, ("input", "target"), ("input", "target"), kw)

    return mapping


def poisson_nll_loss(case: Case):
    p = case.params
    return fn(F + "poisson_nll_loss", case, ("input", "target"), ("input",),
              {"log_input": p["log_input"], "full": p["full"], "eps": p["eps"]})


def smooth_l1_loss(case: Case):
    return fn(F + "smooth_l1_loss", case, ("input", "target"), ("input", "target"), {"beta": case.params["beta"]})


# --------------------------------------------------------------------------------------------------
# torchvision.ops, where it imports beside this torch.

_TORCHVISION: list = []


def _torchvision() -> str:
    """Why torchvision is unusable, or ``""``."""
    if not _TORCHVISION:
        try:
            import torchvision.ops  # noqa: F401
            _TORCHVISION.append("")
        except Exception as e:  # noqa: BLE001 - a torchvision built for another torch fails in many ways
            _TORCHVISION.append(f"torchvision does not import here ({type(e).__name__}: {str(e)[:120]})")
    return _TORCHVISION[0]


def _box(api):
    def mapping(case: Case):
        why = _torchvision()
        if why:
            return NotOffered(why)
        p = case.params
        if p["convention"] != "torchvision" or p["box_format"] != "xyxy" or p.get("alpha_gradient", "detached") != "detached":
            return NotOffered("torchvision's box losses are convention='torchvision', box_format='xyxy'")
        return fn("torchvision.ops." + api, case, ("pred", "target"), ("pred", "target"), {"eps": 1e-7})

    return mapping


def sigmoid_focal_loss(case: Case):
    why = _torchvision()
    if why:
        return NotOffered(why)
    t = case.inputs["target"]
    if not np.all((t == 0) | (t == 1)):
        return NotOffered("torchvision's sigmoid_focal_loss is another function of soft targets (equal for 0/1 targets)")
    alpha = case.params["alpha"]
    kw = {"alpha": -1.0 if alpha is None else alpha, "gamma": case.params["gamma"]}  # alpha < 0: no weighting
    return fn("torchvision.ops.sigmoid_focal_loss", case, ("logits", "target"), ("logits",), kw)


class TorchAdapter(Adapter):
    name = "torch"
    packages = ("torch",)
    header = "import torch"
    mappings = by_name(
        cross_entropy, nll_loss, softmax_cross_entropy, softplus_logsumexp_loss, binary_cross_entropy,
        binary_cross_entropy_with_logits, weighted_binary_cross_entropy, kl_div, multi_margin_loss,
        multiclass_hinge_loss, multilabel_margin_loss, multilabel_soft_margin_loss, soft_margin_loss,
        cosine_embedding_loss, hinge_embedding_loss, margin_ranking_loss, triplet_margin_loss, gaussian_nll_loss,
        huber_loss, poisson_nll_loss, smooth_l1_loss, sigmoid_focal_loss, l1_loss=_weighted(F + "l1_loss"),
        mse_loss=_weighted(F + "mse_loss"), giou_loss=_box("generalized_box_iou_loss"),
        diou_loss=_box("distance_box_iou_loss"), ciou_loss=_box("complete_box_iou_loss"),
    )

    def load(self):
        import torch

        self.torch = torch

    def tensor(self, x):
        return self.torch.tensor(x)

    def cast(self, x, dtype):
        return x.to(getattr(self.torch, dtype))

    def autodiff(self, f, args, wrt, cot):
        torch = self.torch
        args = [a.requires_grad_() if k in wrt else a for k, a in enumerate(args)]
        out = f(*args)
        if not wrt:
            return out, []
        seed = torch.ones_like(out) if cot is None else cot.to(out.dtype)
        grads = torch.autograd.grad(out, [args[k] for k in wrt], grad_outputs=seed, allow_unused=True)
        return out, [torch.zeros_like(args[k]) if g is None else g for k, g in zip(wrt, grads)]

    def numpy(self, x):
        return x.detach().to(self.torch.float64).numpy()

    def unsupported(self, exc):
        return isinstance(exc, (RuntimeError, NotImplementedError)) and "not implemented for" in str(exc)

    tensor_code = "torch.tensor({values}, dtype=torch.{dtype})"
    cast_code = "{expr}.to(torch.{dtype})"

    def render_array(self, name, x, dtype, grad):
        # torch.autograd.grad needs the leaves marked (the other frameworks trace from the call)
        line = super().render_array(name, x, dtype, grad)
        return line + ".requires_grad_()" if grad and dtype is not None else line

    def render_autodiff(self, reads, wrt, cot):
        seed = "cotangent" if cot else "torch.ones_like(out)"
        return (f"out = f({', '.join(reads)})\n"
                f"grads = torch.autograd.grad(out, [{', '.join(wrt)}], grad_outputs={seed}, allow_unused=True)\n"
                "print('value:', out.tolist())\n"
                f"for name, g in zip({list(wrt)!r}, grads):\n"
                "    print('gradient of', name, None if g is None else g.tolist())")


ADAPTER = TorchAdapter()
