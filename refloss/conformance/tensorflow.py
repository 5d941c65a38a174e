"""The ``tensorflow`` target: ``tf.nn`` primitives and ``keras.losses`` (Keras 3 on the TensorFlow backend).

``tf.nn`` ops are unreduced; refloss's reduction is applied in TensorFlow (``tf.reduce_sum``,
``tf.reduce_mean``, a division by the batch size; part of the reproducer). Keras losses average over
the last axis per sample, so elementwise losses are called on ``x[..., None]`` (a last axis of one:
the per-sample mean is the element) and Keras reduces: ``None`` for ``none``, ``"sum"``,
``"sum_over_batch_size"`` for an unweighted mean, ``"mean_with_sample_weight"`` for PyTorch's
weighted mean of ``l1_loss``/``mse_loss``; class weights are Keras ``sample_weight``s. The Keras loss
computes in the inputs' dtype (``dtype=`` the input's).

Conventions (frameworks.md 3, 5, 6): Keras clips probabilities to ``[1e-7, 1 - 1e-7]``
(``keras_probability_clip``, cases defined with another clamp); ``Poisson`` adds 1e-7 inside the log
(``keras_poisson_eps``); a mean over an empty set (every target ignored) is 0 (``divide_no_nan``,
``keras_empty_mean_zero``).
"""

from __future__ import annotations

import os

import numpy as np

from .adapter import Adapter, Call, Convention, NotOffered, by_name, literal, override, reduction_glue
from .case import Case

_GLUE = reduction_glue("tf.reduce_sum(out)", "tf.reduce_mean(out)")
# refloss reduction -> Keras reduction (and glue on Keras' unreduced output where Keras lacks it)
_KERAS = {"none": ("None", ""), "sum": ('"sum"', ""), "mean": ('"sum_over_batch_size"', ""),
          "sum_over_batch_size": ('"sum_over_batch_size"', ""), "batchmean": ("None", _GLUE["batchmean"])}


def _tfnn(api: str, case: Case, args: str, reads: tuple, grads: tuple, conventions=(), pre: str = "") -> Call:
    glue = _GLUE[case.params["reduction"]]
    return Call(api, pre + f"out = {api}({args})" + ("\n" + glue if glue else ""), reads, grads, tuple(conventions))


def _keras(cls: str, case: Case, kwargs: str, y_true: str, y_pred: str, reads: tuple, grads: tuple, conventions=(),
           weight: str | None = None, weighted_mean: bool = False, elementwise: bool = True) -> Call:
    """``keras.losses.<cls>(...)(y_true, y_pred, sample_weight=...)``; ``elementwise`` adds the last axis of one."""
    r = case.params["reduction"]
    red, glue = _KERAS[r]
    if weighted_mean and weight is not None and r == "mean":
        red = '"mean_with_sample_weight"'
    last = "[..., None]" if elementwise else ""
    sw = f", sample_weight=tf.broadcast_to({weight}, {y_pred}.shape)" if weight is not None else ""
    kw = (kwargs + ", " if kwargs else "") + f"reduction={red}, dtype={y_pred}.dtype.name"
    code = f"out = keras.losses.{cls}({kw})({y_true}{last}, {y_pred}{last}{sw})" + ("\n" + glue if glue else "")
    return Call(f"keras.losses.{cls}", code, reads, grads, tuple(conventions))


def _weight(case: Case, name="weight"):
    return name if case.params.get(name) is not None else None


def _reads(case: Case, *names) -> tuple:
    return tuple(n for n in names if n in case.inputs or case.params.get(n) is not None)


PROBABILITY_CLIP = Convention.fixed("keras_probability_clip", "Keras clips probabilities to [1e-7, 1 - 1e-7] before "
                                    "the logs (frameworks.md 3.2, 5.6)", clamp="keras")


def binary_cross_entropy(case: Case):
    return _keras("BinaryCrossentropy", case, f"from_logits=False, label_smoothing={literal(case.params['label_smoothing'])}",
                  "target", "input", _reads(case, "input", "target", "weight"), ("input", "target"),
                  PROBABILITY_CLIP.unless_defined(case), _weight(case))


def binary_cross_entropy_with_logits(case: Case):
    p = case.params
    if p.get("pos_weight") is not None:
        if p.get("weight") is not None or p["label_smoothing"]:
            return NotOffered("tf.nn.weighted_cross_entropy_with_logits has no weight or label smoothing")
        return _tfnn("tf.nn.weighted_cross_entropy_with_logits", case, "labels=target, logits=logits, pos_weight=pos_weight",
                     ("logits", "target", "pos_weight"), ("logits", "target"))
    if p.get("weight") is None and not p["label_smoothing"]:
        return _tfnn("tf.nn.sigmoid_cross_entropy_with_logits", case, "labels=target, logits=logits",
                     ("logits", "target"), ("logits", "target"))
    return _keras("BinaryCrossentropy", case, f"from_logits=True, label_smoothing={literal(p['label_smoothing'])}",
                  "target", "logits", _reads(case, "logits", "target", "weight"), ("logits", "target"), (), _weight(case))


def weighted_binary_cross_entropy(case: Case):
    return _tfnn("tf.nn.weighted_cross_entropy_with_logits", case,
                 f"labels=target, logits=logits, pos_weight={literal(case.params['beta'])}", ("logits", "target"), ("logits", "target"))


def _last(case: Case, name: str) -> str:
    """``name`` with the case's class axis moved last (tf.nn's layout), as code."""
    axis = case.params["axis"]
    ndim = case.inputs[name].ndim
    return name if axis % ndim == ndim - 1 else f"tf.experimental.numpy.moveaxis({name}, {axis}, -1)"


EMPTY_MEAN = Convention(
    "keras_empty_mean_zero",
    "Keras divides with divide_no_nan: the mean over no (every target ignored) is 0, not NaN (frameworks.md 3.1, 5.1)",
    override(reduction="sum"),
)


def cross_entropy(case: Case):
    p = case.params
    if p.get("weight") is not None or p["label_smoothing"]:
        return NotOffered("TensorFlow's sparse softmax cross-entropy has no class weight or label smoothing")
    target = case.inputs["target"]
    ignored = target == p["ignore_index"]
    if not np.any(ignored):
        return _tfnn("tf.nn.sparse_softmax_cross_entropy_with_logits", case, f"labels=target, logits={_last(case, 'logits')}",
                     ("logits", "target"), ("logits",))
    r = p["reduction"]
    conv = (EMPTY_MEAN,) if r == "mean" and np.all(ignored) else ()
    red, glue = _KERAS[r]
    if r == "sum_over_batch_size":  # over every target, the ignored included: Keras' masked mean is not it
        red, glue = "None", _GLUE["mean"]
    code = (f"out = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class={p['ignore_index']}, "
            f"reduction={red}, dtype=logits.dtype.name)(target, {_last(case, 'logits')})" + ("\n" + glue if glue else ""))
    return Call("keras.losses.SparseCategoricalCrossentropy", code, ("logits", "target"), ("logits",), conv)


def _distributions(case: Case) -> bool:
    """Whether every target row sums to 1 (exactly: TensorFlow's gradient assumes it)."""
    return bool(np.all(np.sum(case.inputs["target"], axis=case.params["axis"]) == 1.0))


def softmax_cross_entropy(case: Case):
    p = case.params
    if p.get("weight") is not None:
        return NotOffered("TensorFlow's softmax cross-entropy has no class weight")
    if not _distributions(case):
        # tf.nn.softmax_cross_entropy_with_logits documents that its gradient is wrong otherwise.
        return NotOffered("TensorFlow's softmax cross-entropy needs targets that are distributions (rows summing to 1)")
    if not p["label_smoothing"]:
        return _tfnn("tf.nn.softmax_cross_entropy_with_logits", case, f"labels=target, logits=logits, axis={p['axis']}",
                     ("logits", "target"), ("logits", "target"))
    return _keras("CategoricalCrossentropy", case, f"from_logits=True, label_smoothing={literal(p['label_smoothing'])}, axis={p['axis']}",
                  "target", "logits", ("logits", "target"), ("logits", "target"), elementwise=False)


def kl_div(case: Case):
    if case.params["convention"] != "keras":
        return NotOffered("Keras' KLDivergence takes probabilities (convention='keras' only)")
    return _keras("KLDivergence", case, "", "target", "input", ("input", "target"), ("input", "target"))


POISSON_EPS = Convention.fixed("keras_poisson_eps", "Keras' Poisson computes p - y log(p + 1e-7) (frameworks.md 3.2, 5.18)",
                               eps=1e-7)


def poisson_nll_loss(case: Case):
    p = case.params
    if p["log_input"]:
        return _tfnn("tf.nn.log_poisson_loss", case, f"targets=target, log_input=input, compute_full_loss={p['full']!r}",
                     ("input", "target"), ("input",))
    if p["full"]:
        return NotOffered("Keras' Poisson (a rate input) has no Stirling term")
    return _keras("Poisson", case, "", "target", "input", ("input", "target"), ("input",), POISSON_EPS.unless_defined(case))


def huber_loss(case: Case):
    return _keras("Huber", case, f"delta={literal(case.params['delta'])}", "target", "input",
                  _reads(case, "input", "target", "weight"), ("input", "target"), (), _weight(case))


def _plain(cls: str):
    def mapping(case: Case):
        if case.params.get("convention", "torch") != "torch":
            return NotOffered(f"Keras' {cls} has no half factor (convention='torch' only)")
        return _keras(cls, case, "", "target", "input", _reads(case, "input", "target", "weight"), ("input", "target"), (),
                      _weight(case), weighted_mean=True)

    return mapping


class TensorflowAdapter(Adapter):
    name = "tensorflow"
    packages = ("tensorflow-cpu", "tensorflow", "keras")
    header = "import tensorflow as tf\nimport keras"
    mappings = by_name(
        binary_cross_entropy, binary_cross_entropy_with_logits, weighted_binary_cross_entropy, cross_entropy,
        softmax_cross_entropy, kl_div, poisson_nll_loss, huber_loss, l1_loss=_plain("MeanAbsoluteError"),
        mse_loss=_plain("MeanSquaredError"), log_cosh_loss=_plain("LogCosh"),
    )

    def version(self) -> str:
        return ", ".join(v for v in super().version().split(", ") if "not installed" not in v)

    def load(self):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras  # noqa: F401
        import tensorflow as tf

        self.tf = tf

    def tensor(self, x):
        return self.tf.constant(x)

    def cast(self, x, dtype):
        return self.tf.cast(x, getattr(self.tf, dtype))

    def autodiff(self, f, args, wrt, cot):
        tf = self.tf
        with tf.GradientTape() as tape:
            for k in wrt:
                tape.watch(args[k])
            out = f(*args)
        if not wrt:
            return out, []
        seed = None if cot is None else tf.cast(cot, out.dtype)
        grads = tape.gradient(out, [args[k] for k in wrt], output_gradients=seed,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return out, grads

    def numpy(self, x):
        return self.tf.cast(x, self.tf.float64).numpy()

    def unsupported(self, exc):
        text = str(exc)
        return ("Could not find device for node" in text or "not in list of allowed values" in text
                or "No registered" in text and "OpKernel" in text)

    tensor_code = "tf.constant({values}, dtype=tf.{dtype})"
    cast_code = "tf.cast({expr}, tf.{dtype})"

    def render_autodiff(self, reads, wrt, cot):
        seed = "cotangent" if cot else "None"
        return ("with tf.GradientTape() as tape:\n"
                + "".join(f"    tape.watch({n})\n" for n in wrt)
                + f"    out = f({', '.join(reads)})\n"
                f"grads = tape.gradient(out, [{', '.join(wrt)}], output_gradients={seed})\n"
                "print('value:', out.numpy().tolist())\n"
                f"for name, g in zip({list(wrt)!r}, grads):\n"
                "    print('gradient of', name, None if g is None else g.numpy().tolist())")


ADAPTER = TensorflowAdapter()
