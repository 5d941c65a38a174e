"""The Loss contract: a declaration plus two pure functions of an array namespace.

A loss is written as ``forward(xp, *inputs, **params)`` returning the **unreduced** loss, and a
hand-derived ``vjp(xp, cotangent, *inputs, **params)`` returning the gradient of
``sum(cotangent * forward)`` for every input (``None`` for inputs that are not differentiable).
The :func:`loss` decorator turns the pair into a :class:`Loss`: a plain public function that
validates its arguments once, up front, applies the one shared reduction (:func:`reduce`), and
knows its own gradient (:meth:`Loss.value_and_grad`).

Everything a loss declares (inputs with their dtype, shape and value domain, parameters with their
defaults and ranges, framework counterparts) is data: the validation, the gradient proof, the
golden-file generator and the README's catalogue all read it from here.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from typing import Any, Callable, Mapping, Sequence

import array_api_compat

from . import backends as _backends
from . import xp as _xp

__all__ = [
    "Input",
    "Param",
    "Loss",
    "loss",
    "catalog",
    "get",
    "reduce",
    "reduce_vjp",
    "REDUCTIONS",
    "SAMPLE",
]

#: Reductions every loss accepts.
#:
#: - ``none``: the unreduced loss.
#: - ``sum``: its sum.
#: - ``mean``: its sum divided by the loss's *mean normaliser*: the element count, or, for losses that
#:   declare one, the sum of per-element weights (PyTorch's weighted mean: ``sum(l) / sum(w[y])``
#:   over non-ignored targets). A zero normaliser (every target ignored) gives NaN, as in PyTorch.
#: - ``batchmean``: the sum divided by the batch size (first dimension); PyTorch ``kl_div``'s KL per sample.
#: - ``sum_over_batch_size``: the sum divided by the element count, whatever the weights (Keras).
REDUCTIONS = ("none", "mean", "sum", "batchmean", "sum_over_batch_size")
_MEAN_LIKE = ("mean", "batchmean", "sum_over_batch_size")


class _Sample:
    """Grid marker: 'draw this array parameter from its domain'."""

    def __repr__(self):
        return "SAMPLE"


SAMPLE = _Sample()


@dataclasses.dataclass(frozen=True)
class Input:
    """An array input of a loss.

    ``shape`` is a space-separated pattern over named dimensions (``"N C *"``): a name binds to a
    size shared by every input, ``*`` to the same run of trailing dimensions everywhere, and the
    first input fixes the bindings; ``"broadcast"`` accepts any shape that broadcasts to the first
    input's (a homoscedastic variance, say). ``dtype`` is ``"float"`` or ``"int"``. ``values`` is an inclusive
    ``(low, high)`` range checked on the data (NaN passes: it propagates). For class labels,
    ``classes`` names the dimension whose size bounds them, ``ignore`` the parameter holding an
    ignored label, and ``extra_labels`` further allowed values (``-1`` padding). ``domain`` generates
    valid inputs: ``domain(rng, shape, tag, dims, params) -> numpy array`` for ``tag`` in
    ``typical``, ``extreme``, ``edge``.
    """

    name: str
    dtype: str = "float"
    shape: str = "*"
    differentiable: bool = True
    values: tuple[float, float] | None = None
    classes: str | None = None
    ignore: str | None = None
    extra_labels: tuple[int, ...] = ()
    domain: Callable | None = None
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class Param:
    """A parameter of a loss.

    ``kind`` is ``real``, ``int``, ``bool``, ``choice`` or ``array`` (an optional array such as class
    weights, with a ``shape`` pattern as for :class:`Input`, or ``"broadcast"``: broadcastable to the
    first input). ``low``/``high`` bound reals and ints (``open`` makes a bound exclusive), ``choices``
    lists a choice's values, ``nullable`` admits ``None``. ``grid`` lists the values the gradient proof
    and the golden files visit besides the default (``SAMPLE`` draws an array from ``domain``).
    """

    name: str
    default: Any
    kind: str = "real"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    nullable: bool = False
    shape: str | None = None
    grid: tuple = ()
    domain: Callable | None = None
    doc: str = ""

    def describe_range(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "bool":
            return "True or False"
        if self.kind == "array":
            where = "broadcastable to the input" if self.shape == "broadcast" else f"of shape ({_render(self.shape)})"
            return f"a floating array {where}" + (" or None" if self.nullable else "")
        lo = "-inf" if self.low is None else repr(self.low)
        hi = "inf" if self.high is None else repr(self.high)
        left = "(" if self.low is None or self.low_open else "["
        right = ")" if self.high is None or self.high_open else "]"
        what = "an integer" if self.kind == "int" else "a real number"
        return f"{what} in {left}{lo}, {hi}{right}" + (" or None" if self.nullable else "")


_REDUCTION = Param(
    "reduction",
    "mean",
    kind="choice",
    choices=REDUCTIONS,
    grid=REDUCTIONS,
    doc="how the per-element losses are combined (refloss.loss.REDUCTIONS)",
)

# --------------------------------------------------------------------------------------------------
# Validation: each rule once, shared by every loss. Messages name the loss, the argument, what was
# expected and what was given.


def _fail(kind, loss_name, arg, expected, got):
    raise kind(f"{loss_name}: {arg} must be {expected}, got {got}")


def _render(pattern, dims=None):
    dims = dims or {}
    parts = []
    for tok in pattern.split():
        if tok == "*":
            star = dims.get("*")
            parts.append("*" if star is None else ", ".join(str(s) for s in star) or None)
        elif tok.isdigit():
            parts.append(tok)
        else:
            parts.append(f"{tok}={dims[tok]}" if tok in dims else tok)
    return ", ".join(p for p in parts if p)


def _match_shape(loss_name, arg, pattern, shape, dims):
    """Bind ``pattern`` against ``shape`` into ``dims`` (mutated), or raise ``ValueError``."""
    tokens = pattern.split()
    fixed = [t for t in tokens if t != "*"]
    has_star = "*" in tokens
    ndim = len(shape)
    if (not has_star and ndim != len(fixed)) or (has_star and ndim < len(fixed)):
        _fail(ValueError, loss_name, arg, f"of shape ({_render(pattern, dims)})", f"shape {tuple(shape)}")
    star_len = ndim - len(fixed)
    pos = 0
    for tok in tokens:
        if tok == "*":
            got = tuple(shape[pos : pos + star_len])
            pos += star_len
            if "*" in dims and dims["*"] != got:
                _fail(ValueError, loss_name, arg, f"of shape ({_render(pattern, dims)})", f"shape {tuple(shape)}")
            dims["*"] = got
            continue
        size = shape[pos]
        pos += 1
        if tok.isdigit():
            ok = size == int(tok)
        elif tok in dims:
            ok = dims[tok] == size
        else:
            dims[tok] = size
            ok = True
        if not ok:
            _fail(ValueError, loss_name, arg, f"of shape ({_render(pattern, dims)})", f"shape {tuple(shape)}")


def _check_broadcastable(loss_name, arg, shape, target_shape):
    if len(shape) > len(target_shape) or any(
        s not in (1, t) for s, t in zip(reversed(shape), reversed(target_shape))
    ):
        _fail(ValueError, loss_name, arg, f"broadcastable to {tuple(target_shape)}", f"shape {tuple(shape)}")


def _check_dtype(xp, loss_name, arg, x, kind):
    if kind == "float" and not _xp.is_floating(xp, x):
        _fail(TypeError, loss_name, arg, "a real floating array", f"dtype {x.dtype}")
    if kind == "int" and not _xp.is_integer(xp, x):
        _fail(TypeError, loss_name, arg, "an integer array (class indices)", f"dtype {x.dtype}")


def _value_span(xp, x, bad=None):
    """What was given: the offending values (a few, sorted) when known, else the range."""
    if bad is not None:
        import numpy as np

        found = np.unique(np.asarray(_xp.to_numpy(x))[np.asarray(_xp.to_numpy(bad))])
        shown = ", ".join(repr(v.item()) for v in found[:5]) + (", ..." if found.size > 5 else "")
        return f"{shown} (values in [{float(xp.min(x))!r}, {float(xp.max(x))!r}])"
    return f"values in [{float(xp.min(x))!r}, {float(xp.max(x))!r}]"


def _check_values(xp, loss_name, arg, x, low, high):
    outside = (x < low) | (x > high)
    if array_api_compat.size(x) and bool(xp.any(outside)):
        _fail(ValueError, loss_name, arg, f"in [{low}, {high}]", _value_span(xp, x, outside))


def _check_labels(xp, loss_name, arg, labels, num_classes, allowed):
    bad = (labels < 0) | (labels >= num_classes)
    for value in allowed:
        bad = bad & (labels != value)
    if array_api_compat.size(labels) and bool(xp.any(bad)):
        extra = "".join(f" or {v}" for v in allowed)
        _fail(ValueError, loss_name, arg, f"class indices in [0, {num_classes}){extra}", _value_span(xp, labels, bad))


def _check_param(loss_name, p, value):
    if value is None:
        if p.nullable or p.default is None:
            return
        _fail(TypeError, loss_name, p.name, p.describe_range(), "None")
    if p.kind == "choice":
        if value not in p.choices:
            _fail(ValueError, loss_name, p.name, p.describe_range(), repr(value))
        return
    if p.kind == "bool":
        if not isinstance(value, bool):
            _fail(TypeError, loss_name, p.name, p.describe_range(), repr(value))
        return
    if p.kind == "array":
        return  # checked with the inputs, where the namespace and dimensions are known
    want = numbers.Integral if p.kind == "int" else numbers.Real
    if isinstance(value, bool) or not isinstance(value, want):
        _fail(TypeError, loss_name, p.name, p.describe_range(), f"{value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        _fail(ValueError, loss_name, p.name, p.describe_range(), repr(value))
    too_low = p.low is not None and (value <= p.low if p.low_open else value < p.low)
    too_high = p.high is not None and (value >= p.high if p.high_open else value > p.high)
    if too_low or too_high:
        _fail(ValueError, loss_name, p.name, p.describe_range(), repr(value))


# --------------------------------------------------------------------------------------------------
# Reduction: the one helper every loss goes through, and its VJP.


def _normaliser(xp, unreduced, reduction, mean_weight):
    if reduction == "mean" and mean_weight is not None:
        return xp.sum(mean_weight)
    if reduction == "batchmean":
        return unreduced.shape[0] if unreduced.ndim else 1
    return array_api_compat.size(unreduced)


def _divide(xp, total, den, total_low=None):
    # 0/0 (every target ignored) is NaN by definition, without a floating-point warning. A total with
    # a low part is divided as a double-double and rounded once.
    if isinstance(den, int):
        if not den:
            return total * math.nan
        if total_low is None:
            return total / den
        den = xp.asarray(float(den), dtype=total.dtype, device=array_api_compat.device(total))
    zero = den == 0
    safe = xp.where(zero, xp.ones_like(den), den)
    quotient = total / safe
    if total_low is not None:  # refined where the quotient is finite (an infinite one stays as IEEE makes it)
        fin = xp.isfinite(quotient)
        nil = xp.zeros_like(safe)
        refined, _ = _xp.dd_div(xp, xp.where(fin, total, nil), xp.where(fin, total_low, nil), xp.where(fin, safe, nil + 1), nil)
        quotient = xp.where(fin, refined, quotient)
    return xp.where(zero, total * math.nan, quotient)


def reduce(xp, unreduced, reduction, mean_weight=None, low=None):
    """Combine per-element losses as ``reduction`` says (see :data:`REDUCTIONS`).

    ``mean_weight`` (same shape as ``unreduced``) replaces the element count under ``mean`` by
    ``sum(mean_weight)``: PyTorch's weighted mean for class-weighted or ignored targets.

    ``low`` (same shape) are the low parts of elements carried as double-doubles (a loss's
    :meth:`Loss.defpair`): the total is then the double-double sum of the pairs (:func:`refloss.xp.dd_sum`)
    and the mean its double-double quotient, rounded once, so that elements of both signs whose sum
    cancels leave a total correct to an ulp of itself, not of the largest element.
    """
    if reduction == "none":
        return unreduced
    if low is None:
        total, total_low = xp.sum(unreduced), None
    else:
        total, total_low = _xp.dd_sum(xp, xp.reshape(unreduced, (-1,)), xp.reshape(low, (-1,)))
    if reduction == "sum":
        return total
    return _divide(xp, total, _normaliser(xp, unreduced, reduction, mean_weight), total_low)


def reduce_vjp(xp, cotangent, unreduced, reduction, mean_weight=None):
    """The cotangent of the unreduced loss, given the cotangent of :func:`reduce`'s output.

    Under ``sum`` and the means it is one value for every element: computed once, at the shape of
    ``cotangent`` (with ``unreduced``'s dtype promotion), and returned as a read-only broadcast view
    of ``unreduced``'s shape, which costs no memory (a fused kernel reads the single value).
    """
    if reduction == "none":
        return cotangent
    g = xp.ones((), dtype=unreduced.dtype, device=array_api_compat.device(unreduced)) * cotangent
    if reduction != "sum":
        g = _divide(xp, g, _normaliser(xp, unreduced, reduction, mean_weight))
    return xp.broadcast_to(g, unreduced.shape)


# --------------------------------------------------------------------------------------------------
# The Loss object.

_REGISTRY: dict[str, "Loss"] = {}


@dataclasses.dataclass
class _Call:
    xp: Any
    inputs: list
    params: dict
    reduction: str
    axis_moved: int | None  # original class axis, when it was moved to 1


class Loss:
    """A registered loss: call it like a function; ``value_and_grad`` gives its analytic gradient.

    Attributes are the declaration: ``name``, ``family``, ``inputs`` (:class:`Input`), ``params``
    (:class:`Param`, ``reduction`` last), ``counterparts`` (framework -> call), ``references``.
    """

    def __init__(
        self,
        forward,
        *,
        family,
        inputs,
        params=(),
        counterparts=None,
        references=(),
        mean_weight=None,
        check=None,
        class_axis=False,
        route=None,
        stop_gradient=None,
        default_reduction="mean",
    ):
        self.forward = forward
        self.name = forward.__name__
        self.family = family
        self.inputs = tuple(inputs)
        reduction = dataclasses.replace(_REDUCTION, default=default_reduction)
        self.params = tuple(params) + (reduction,)
        self.counterparts = dict(counterparts or {})
        self.references = tuple(references)
        self.mean_weight = mean_weight
        self.check = check
        self.class_axis = class_axis
        self.route = route
        self.stop_gradient = stop_gradient
        self._vjp = None
        self._pair = None
        self.__doc__ = forward.__doc__
        self.__name__ = self.name
        self.__qualname__ = self.name
        self.__module__ = forward.__module__
        self.__signature__ = inspect.Signature(
            [inspect.Parameter(i.name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for i in self.inputs]
            + [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default) for p in self.params]
        )
        names = [i.name for i in self.inputs] + [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate input or parameter name in {names}")
        if class_axis and "axis" not in {p.name for p in self.params}:
            raise ValueError(f"{self.name}: class_axis losses declare an 'axis' parameter")

    # -- declaration helpers ------------------------------------------------------------------------
    def defvjp(self, vjp):
        """Attach the hand-derived VJP (used as a decorator)."""
        self._vjp = vjp
        return vjp

    def defpair(self, pair):
        """Attach ``pair(xp, *inputs, **params) -> (hi, lo)``, the unreduced loss as a double-double
        (``hi`` is what the forward returns), used as a decorator. For a loss whose elements take both
        signs: the reductions then sum the pairs (:func:`reduce`'s ``low``)."""
        self._pair = pair
        return pair

    @property
    def summary(self) -> str:
        return (self.__doc__ or "").strip().splitlines()[0] if self.__doc__ else ""

    @property
    def differentiable(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs if i.differentiable)

    def param(self, name) -> Param:
        return next(p for p in self.params if p.name == name)

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def __repr__(self):
        return f"<refloss loss {self.name} ({self.family})>"

    # -- binding and validation ---------------------------------------------------------------------
    def _bind(self, args, kwargs) -> _Call:
        names = [i.name for i in self.inputs]
        if len(args) > len(names):
            raise TypeError(
                f"{self.name}: takes {len(names)} array inputs ({', '.join(names)}), got {len(args)} positional arguments"
            )
        given = dict(zip(names, args))
        params = self.defaults()
        for key, value in kwargs.items():
            if key in names:
                if key in given:
                    raise TypeError(f"{self.name}: got {key} both positionally and by keyword")
                given[key] = value
            elif key in params:
                params[key] = value
            else:
                valid = ", ".join(names + list(params))
                raise TypeError(f"{self.name}: unknown argument {key!r}; valid arguments are {valid}")
        missing = [n for n in names if n not in given]
        if missing:
            raise TypeError(f"{self.name}: missing input(s) {', '.join(missing)}")
        inputs = [given[n] for n in names]
        for p in self.params:
            _check_param(self.name, p, params[p.name])
        named = list(zip(names, inputs)) + [
            (p.name, params[p.name]) for p in self.params if p.kind == "array" and params[p.name] is not None
        ]
        for arg, x in named:
            if not hasattr(x, "shape") or not hasattr(x, "dtype"):
                _fail(TypeError, self.name, arg, "an array (NumPy, CuPy, array-api-strict, ...)", type(x).__name__)
        try:
            xp = _xp.namespace(*(x for _, x in named))
        except TypeError as exc:
            raise TypeError(f"{self.name}: {exc}") from None
        for spec, x in zip(self.inputs, inputs):
            _check_dtype(xp, self.name, spec.name, x, spec.dtype)
        axis_moved = None
        if self.class_axis:
            inputs, axis_moved = self._move_class_axis(xp, inputs, params["axis"])
        self._validate(xp, inputs, params)
        return _Call(xp, inputs, params, params["reduction"], axis_moved)

    def _class_inputs(self):
        return [k for k, spec in enumerate(self.inputs) if spec.shape.split()[:2] == ["N", "C"]]

    def _move_class_axis(self, xp, inputs, axis):
        first = inputs[0]
        ndim = first.ndim
        if ndim < 2:
            _fail(ValueError, self.name, self.inputs[0].name, "at least 2-D (batch, classes, ...)", f"shape {tuple(first.shape)}")
        if not -ndim <= axis < ndim or axis % ndim == 0:
            _fail(ValueError, self.name, "axis", f"a class axis in [1, {ndim}) or [-{ndim - 1}, -1] (0 is the batch)", repr(axis))
        axis = axis % ndim
        if axis == 1:
            return inputs, None
        moved = list(inputs)
        for k in self._class_inputs():
            if moved[k].ndim == ndim:
                moved[k] = xp.moveaxis(moved[k], axis, 1)
        return moved, axis

    def _validate(self, xp, inputs, params):
        dims: dict = {}
        first_shape = tuple(inputs[0].shape)
        for spec, x in zip(self.inputs, inputs):
            if spec.shape == "broadcast":
                _check_broadcastable(self.name, spec.name, tuple(x.shape), first_shape)
            else:
                _match_shape(self.name, spec.name, spec.shape, tuple(x.shape), dims)
        if params["reduction"] in _MEAN_LIKE and array_api_compat.size(inputs[0]) == 0:
            _fail(ValueError, self.name, self.inputs[0].name, f"non-empty under reduction={params['reduction']!r} (a mean of nothing)", f"shape {first_shape}")
        for spec, x in zip(self.inputs, inputs):
            if spec.values is not None:
                _check_values(xp, self.name, spec.name, x, *spec.values)
            if spec.classes is not None:
                allowed = spec.extra_labels + ((params[spec.ignore],) if spec.ignore else ())
                _check_labels(xp, self.name, spec.name, x, dims[spec.classes], allowed)
        dtype = next((x.dtype for spec, x in zip(self.inputs, inputs) if spec.dtype == "float"), None)
        for p in self.params:
            value = params[p.name]
            if p.kind != "array" or value is None:
                continue
            _check_dtype(xp, self.name, p.name, value, "float")
            if p.shape == "broadcast":
                _check_broadcastable(self.name, p.name, tuple(value.shape), first_shape)
            else:
                _match_shape(self.name, p.name, p.shape, tuple(value.shape), dict(dims))
            if p.low is not None:
                _check_values(xp, self.name, p.name, value, p.low, math.inf)
            if dtype is not None and value.dtype != dtype:
                params[p.name] = xp.astype(value, dtype)
        if self.check is not None:
            self.check(xp, self.name, *inputs, **params)

    # -- evaluation ---------------------------------------------------------------------------------
    def _kw(self, call):
        return {k: v for k, v in call.params.items() if k != "reduction"}

    def _kernel(self, call):
        """The backend hook: the fused kernel the active backend has for this loss on these arrays,
        or ``None`` (refloss.backends: by array type, and by ``use_backend`` / ``REFLOSS_BACKEND`` for
        NumPy inputs). A kernel may still decline a call by returning ``None``; the loss's own
        ``forward`` and VJP run then."""
        return _backends.kernel(self.name, call.inputs)

    def _forward(self, call):
        """``(unreduced, low)``: the backend's kernel where it takes the call (no low parts), else the
        loss's own code (:meth:`_portable_unreduced`)."""
        kernel = self._kernel(call)
        out = None if kernel is None else kernel.forward(call.xp, call.inputs, self._kw(call))
        return self._portable_unreduced(call) if out is None else (out, None)

    def _portable_unreduced(self, call):
        """``(unreduced, low)`` from the loss's own code: the double-double pair where the loss has
        one (:meth:`defpair`) and the call reduces, else the forward and ``None``."""
        kw = self._kw(call)
        if self._pair is not None and call.reduction != "none":
            return self._pair(call.xp, *call.inputs, **kw)
        return self.forward(call.xp, *call.inputs, **kw), None

    def _mean_weight(self, call):
        if self.mean_weight is None or call.reduction != "mean":
            return None
        return self.mean_weight(call.xp, *call.inputs, **self._kw(call))

    def _routed(self, args, kwargs):
        """``(loss, args, kwargs)`` of the loss this call belongs to, or ``None`` (PyTorch-style dispatch,
        such as ``cross_entropy`` with probability targets)."""
        if self.route is None:
            return None
        return self.route(self, args, kwargs)

    def __call__(self, *args, **kwargs):
        routed = self._routed(args, kwargs)
        if routed is not None:
            other, args, kwargs = routed
            return other(*args, **kwargs)
        box = _xp._autograd_box_type()
        if box is not None and any(isinstance(a, box) for a in list(args) + list(kwargs.values())):
            from .autodiff import call_primitive

            return call_primitive(self, args, kwargs)
        call = self._bind(args, kwargs)
        unreduced, low = self._forward(call)
        return reduce(call.xp, unreduced, call.reduction, self._mean_weight(call), low)

    def unreduced(self, *args, **kwargs):
        """The per-element loss (``reduction`` is ignored), after the same validation."""
        routed = self._routed(args, kwargs)
        if routed is not None:
            other, args, kwargs = routed
            return other.unreduced(*args, **kwargs)
        call = dataclasses.replace(self._bind(args, kwargs), reduction="none")
        return self._forward(call)[0]

    def value_and_grad(self, *args, cotangent=None, **kwargs):
        """``(value, grads)``: the reduced loss and its analytic gradient.

        ``grads`` has one entry per array input, in declaration order: the gradient of
        ``sum(cotangent * value)`` (``cotangent`` defaults to ones) for a differentiable input, ``None``
        for the others (integer labels, inputs declared constant).
        """
        routed = self._routed(args, kwargs)
        if routed is not None:
            other, args, kwargs = routed
            return other.value_and_grad(*args, cotangent=cotangent, **kwargs)
        call = self._bind(args, kwargs)
        xp, kw = call.xp, self._kw(call)
        mean_weight = self._mean_weight(call)

        def cot_for(unreduced):
            # the cotangent of the unreduced loss; only the shape and dtype of ``unreduced`` are read
            # (a kernel passes an empty array of that shape before it has computed the loss)
            c = cotangent
            if c is None and call.reduction == "none":
                c = xp.ones_like(unreduced)
            elif c is None:
                c = xp.ones((), dtype=unreduced.dtype, device=array_api_compat.device(unreduced))
            return reduce_vjp(xp, c, unreduced, call.reduction, mean_weight)

        kernel = self._kernel(call)
        fused = None if kernel is None else kernel.value_and_grad(xp, call.inputs, kw, cot_for)
        if fused is not None:
            (unreduced, grads), low = fused, None
            grads = list(grads)
        else:
            unreduced, low = self._portable_unreduced(call)
            if self._vjp is None:
                raise NotImplementedError(f"{self.name}: no VJP declared")
            grads = list(self._vjp(xp, cot_for(unreduced), *call.inputs, **kw))
        value = reduce(xp, unreduced, call.reduction, mean_weight, low)
        if len(grads) != len(self.inputs):
            raise RuntimeError(f"{self.name}: VJP returned {len(grads)} gradients for {len(self.inputs)} inputs")
        for k, spec in enumerate(self.inputs):
            if not spec.differentiable:
                grads[k] = None
        if call.axis_moved is not None:
            for k in self._class_inputs():
                if grads[k] is not None and grads[k].ndim == call.inputs[0].ndim:
                    grads[k] = xp.moveaxis(grads[k], 1, call.axis_moved)
        return value, tuple(grads)

    def objective(self, base_inputs, **params):
        """The function whose exact derivative at ``base_inputs`` the VJP is.

        For most losses that is the loss itself. A loss whose reference implementations hold some
        intermediate constant in the backward pass (``torch.no_grad``, ``.detach()``: CIoU's alpha)
        declares ``stop_gradient=f`` with ``f(xp, base_inputs, *inputs, **params)`` the unreduced
        forward with those intermediates frozen at ``base_inputs``; its derivative is the VJP, and
        that is what the gradient proof checks.
        """
        if self.stop_gradient is None:
            return lambda *args: self(*args, **params)

        def frozen(*args):
            call = self._bind(args, params)
            base = self._bind(base_inputs, params).inputs
            unreduced = self.stop_gradient(call.xp, base, *call.inputs, **self._kw(call))
            return reduce(call.xp, unreduced, call.reduction, self._mean_weight(call))

        return frozen

    def vjp(self, cotangent, *args, **kwargs):
        """The gradients of ``sum(cotangent * self(*args, **kwargs))`` (see :meth:`value_and_grad`)."""
        return self.value_and_grad(*args, cotangent=cotangent, **kwargs)[1]


def loss(**declaration):
    """Decorator: ``@loss(family=..., inputs=[...], params=[...], counterparts={...})`` over the forward.

    The decorated name becomes a registered :class:`Loss`; attach its VJP with ``@name.defvjp``.
    """

    def wrap(forward):
        obj = Loss(forward, **declaration)
        if obj.name in _REGISTRY:
            raise ValueError(f"loss {obj.name!r} registered twice")
        _REGISTRY[obj.name] = obj
        return obj

    return wrap


def catalog() -> tuple[Loss, ...]:
    """Every registered loss, ordered by family then name."""
    from . import losses  # noqa: F401 - importing the families registers them

    return tuple(sorted(_REGISTRY.values(), key=lambda l: (l.family, l.name)))


def get(name: str) -> Loss:
    """The registered loss called ``name``."""
    catalog()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no loss named {name!r}; see refloss.catalog()") from None


def bind_defaults(loss_obj: Loss, params: Mapping[str, Any] | None) -> dict:
    """Defaults overridden by ``params`` (unknown names rejected as the public call would)."""
    out = loss_obj.defaults()
    for k, v in (params or {}).items():
        if k not in out:
            raise TypeError(f"{loss_obj.name}: unknown argument {k!r}")
        out[k] = v
    return out


def positional(loss_obj: Loss, inputs: Mapping[str, Any] | Sequence) -> list:
    """Inputs in declaration order, from a mapping or a sequence."""
    if isinstance(inputs, Mapping):
        return [inputs[i.name] for i in loss_obj.inputs]
    return list(inputs)
