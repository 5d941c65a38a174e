"""The ``jax`` target: ``optax.losses`` (and ``jax.nn`` where one call is the loss), float64 enabled.

Calls run under ``jax.jit`` (as JAX code runs in practice). optax never reduces over the batch: a mapping returns optax's per-example output and applies
refloss's reduction to it in JAX (``out.sum()``, ``out.mean()``, ``out.sum() / out.shape[0]``; the
glue line is part of the reproducer), which is offered only where refloss's reduction is the plain
one (no class weights). Conventions (frameworks.md sections 2, 5, 6): optax has no ``ignore_index``
and indexes labels with ``take_along_axis``, so a label equal to refloss's ``ignore_index`` is scored
as the class it indexes, a negative one wrapping around (``optax_no_ignore_index``); optax's triplet
adds eps inside the sum (``optax_eps_sum``); ``l2_loss`` halves the squared error (selected by
``mse_loss(convention='optax_l2')``).
"""

from __future__ import annotations

import numpy as np

from .adapter import Adapter, Call, Convention, NotOffered, by_name, literal, reduction_glue
from .case import Case

_GLUE = reduction_glue("out.sum()", "out.mean()")
O = "optax.losses."


def _call(api: str, case: Case, args: str, reads: tuple, grads: tuple, conventions=(), pre: str = "",
          reductions=tuple(_GLUE)) -> Call:
    r = case.params["reduction"]
    if r not in reductions:
        return NotOffered(f"{api} gives per-example values that refloss's reduction={r!r} does not reduce")
    code = pre + f"out = {api}({args})" + ("\n" + _GLUE[r] if _GLUE[r] else "")
    return Call(api, code, reads, grads, tuple(conventions))


def _unweighted(case: Case, *names) -> str:
    present = [n for n in names if case.params.get(n) is not None]
    return f"optax has no {', '.join(present)}" if present else ""


def binary_cross_entropy_with_logits(case: Case):
    why = _unweighted(case, "weight", "pos_weight")
    if why or case.params["label_smoothing"]:
        return NotOffered(why or "optax.losses.sigmoid_binary_cross_entropy has no label smoothing")
    return _call(O + "sigmoid_binary_cross_entropy", case, "logits, target", ("logits", "target"), ("logits", "target"))


def crammer_singer_hinge_loss(case: Case):
    if case.params["margin"] != 1.0:
        return NotOffered("optax.losses.multiclass_hinge_loss has margin 1")
    return _call(O + "multiclass_hinge_loss", case, "logits, target", ("logits", "target"), ("logits",))


def _wrap_labels(case: Case):
    classes = case.inputs["logits"].shape[case.params["axis"]]
    return case.name, {**case.inputs, "target": np.mod(case.inputs["target"], classes)}, {**case.params, "ignore_index": -100}


NO_IGNORE_INDEX = Convention(
    "optax_no_ignore_index",
    "optax has no ignore_index: a label equal to it is scored as the class it indexes, negative labels "
    "wrapping (take_along_axis: -1 is the last class; frameworks.md 2, 5.21)",
    _wrap_labels,
)


def cross_entropy(case: Case):
    p = case.params
    why = _unweighted(case, "weight")
    if why or p["label_smoothing"]:
        return NotOffered(why or "optax.losses.softmax_cross_entropy_with_integer_labels has no label smoothing")
    ignored = bool(np.any(case.inputs["target"] == p["ignore_index"]))
    return _call(O + "softmax_cross_entropy_with_integer_labels", case, f"logits, target, axis={p['axis']}",
                 ("logits", "target"), ("logits",), (NO_IGNORE_INDEX,) if ignored else ())


def kl_div(case: Case):
    p = case.params
    if p["convention"] != "torch":
        return NotOffered("optax's kl_divergence takes log-probabilities (convention='torch' only)")
    if case.inputs["input"].ndim < 2:
        return NotOffered("optax's kl_divergence sums over the last axis: inputs of at least two dimensions")
    api = O + ("kl_divergence_with_log_targets" if p["log_target"] else "kl_divergence")
    r = p["reduction"]
    if r not in ("sum", "batchmean"):
        return NotOffered(f"optax's kl_divergence gives per-example sums that refloss's reduction={r!r} does not reduce")
    code = f"out = {api}(input, target)\n" + ("out = out.sum()" if r == "sum" else "out = out.sum() / input.shape[0]")
    return Call(api, code, ("input", "target"), ("input", "target"))


def sigmoid_focal_loss(case: Case):
    p = case.params
    t = case.inputs["target"]
    if not np.all((t == 0) | (t == 1)):
        return NotOffered("optax's sigmoid_focal_loss is another function of soft targets (equal for 0/1 targets)")
    return _call(O + "sigmoid_focal_loss", case, f"logits, target, alpha={literal(p['alpha'])}, gamma={literal(p['gamma'])}",
                 ("logits", "target"), ("logits",))


def softmax_cross_entropy(case: Case):
    p = case.params
    why = _unweighted(case, "weight")
    if why:
        return NotOffered(why)
    pre = f"target = optax.smooth_labels(target, {literal(p['label_smoothing'])}, axis={p['axis']})\n" if p["label_smoothing"] else ""
    return _call(O + "softmax_cross_entropy", case, f"logits, target, axis={p['axis']}", ("logits", "target"),
                 ("logits", "target"), pre=pre)


EPS_SUM = Convention.fixed("optax_eps_sum", "optax's triplet_margin_loss adds eps inside the sum, "
                           "(sum |a - p|^p + eps)^(1/p) (frameworks.md 5.15)", eps_placement="sum")


def triplet_margin_loss(case: Case):
    p = case.params
    if p["swap"]:
        return NotOffered("optax's triplet_margin_loss has no swap")
    args = f"anchor, positive, negative, norm_degree={literal(p['p'])}, margin={literal(p['margin'])}, eps={literal(p['eps'])}"
    return _call(O + "triplet_margin_loss", case, args, ("anchor", "positive", "negative"), ("anchor", "positive", "negative"),
                 EPS_SUM.unless_defined(case))


def huber_loss(case: Case):
    why = _unweighted(case, "weight")
    if why:
        return NotOffered(why)
    return _call(O + "huber_loss", case, f"input, target, delta={literal(case.params['delta'])}", ("input", "target"), ("input", "target"))


def log_cosh_loss(case: Case):
    return _call(O + "log_cosh", case, "input, target", ("input", "target"), ("input", "target"))


def mse_loss(case: Case):
    why = _unweighted(case, "weight")
    if why:
        return NotOffered(why)
    api = O + ("l2_loss" if case.params["convention"] == "optax_l2" else "squared_error")
    return _call(api, case, "input, target", ("input", "target"), ("input", "target"))


def soft_margin_loss(case: Case):
    return _call("jax.nn.softplus", case, "-target * input", ("input", "target"), ("input",))


class JaxAdapter(Adapter):
    name = "jax"
    packages = ("jax", "jaxlib", "optax")
    header = 'import jax\nimport jax.numpy as jnp\nimport optax\njax.config.update("jax_enable_x64", True)'
    mappings = by_name(
        binary_cross_entropy_with_logits, crammer_singer_hinge_loss, cross_entropy, kl_div, sigmoid_focal_loss,
        softmax_cross_entropy, triplet_margin_loss, huber_loss, log_cosh_loss, mse_loss, soft_margin_loss,
    )

    def load(self):
        import jax

        jax.config.update("jax_enable_x64", True)  # float64 arrays stay float64
        import jax.numpy as jnp
        import optax  # noqa: F401

        self.jax, self.jnp = jax, jnp
        self._jitted = {}

    def tensor(self, x):
        return self.jnp.asarray(x)

    def cast(self, x, dtype):
        return x.astype(getattr(self.jnp, dtype))

    def autodiff(self, f, args, wrt, cot):
        # Under jax.jit, as JAX code runs in practice (one compilation per shape and dtype).
        key = (f, tuple(wrt), cot is None)
        run = self._jitted.get(key)
        if run is None:
            jax, jnp = self.jax, self.jnp

            def value_and_grads(args, cot):
                if not wrt:
                    return f(*args), []

                def g(*diff):
                    full = list(args)
                    for k, d in zip(wrt, diff):
                        full[k] = d
                    return f(*full)

                out, vjp = jax.vjp(g, *[args[k] for k in wrt])
                return out, list(vjp(jnp.ones_like(out) if cot is None else cot.astype(out.dtype)))

            run = self._jitted[key] = jax.jit(value_and_grads)
        return run(args, cot)

    def numpy(self, x):
        return np.asarray(self.jnp.asarray(x).astype(self.jnp.float64))

    tensor_code = "jnp.asarray({values}, dtype=jnp.{dtype})"
    cast_code = "{expr}.astype(jnp.{dtype})"

    def render_autodiff(self, reads, wrt, cot):
        seed = "cotangent" if cot else "jnp.ones_like(out)"
        return (f"def value_and_grads({', '.join(reads)}):\n"
                f"    out, vjp = jax.vjp(lambda {', '.join(wrt)}: f({', '.join(reads)}), {', '.join(wrt)})\n"
                f"    return out, vjp({seed})\n"
                f"out, grads = jax.jit(value_and_grads)({', '.join(reads)})\n"
                "print('value:', out.tolist())\n"
                f"for name, g in zip({list(wrt)!r}, grads):\n"
                "    print('gradient of', name, g.tolist())")


ADAPTER = JaxAdapter()
