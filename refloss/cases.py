"""Cases drawn from the declarations: every parameter path of a loss, and valid inputs for it.

Used by the gradient proof, the tests, the golden files and the audit, so that adding a loss to the
registry adds it everywhere with no new code.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from .domains import TAGS
from .loss import SAMPLE, Loss


@dataclasses.dataclass
class Case:
    """One evaluation point: NumPy inputs in declaration order, parameters, and the domain tag."""

    loss: Loss
    inputs: list
    params: dict
    tag: str

    def describe(self) -> str:
        shown = {k: ("array" if hasattr(v, "shape") else v) for k, v in self.params.items()}
        shapes = ", ".join(f"{i.name}{tuple(x.shape)}" for i, x in zip(self.loss.inputs, self.inputs))
        return f"{self.loss.name}[{self.tag}]({shapes}; {shown})"

    def as_namespace(self, xp, dtype=None):
        """Inputs and array parameters converted to namespace ``xp`` (floats cast to ``dtype`` if given)."""

        def convert(a):
            a = np.asarray(a)
            if a.dtype.kind == "f" and dtype is not None:
                return xp.asarray(a, dtype=dtype)
            if a.dtype.kind == "f":
                return xp.asarray(a, dtype=xp.float64)
            return xp.asarray(a, dtype=xp.int64)

        inputs = [convert(a) for a in self.inputs]
        params = {k: convert(v) if isinstance(v, np.ndarray) else v for k, v in self.params.items()}
        return inputs, params


def param_paths(loss: Loss, reductions=None) -> Iterator[dict]:
    """Parameter settings that visit every option: the defaults, then each ``grid`` value of each
    parameter one at a time (others at their defaults), each under every reduction.

    Array parameters hold ``SAMPLE`` where an array is to be drawn (see :func:`sample`).
    """
    base = loss.defaults()
    variants = [dict()]
    for p in loss.params:
        if p.name == "reduction":
            continue
        for value in p.grid:
            if value is SAMPLE or value != p.default:
                variants.append({p.name: value})
    for reduction in reductions or loss.param("reduction").grid:
        for v in variants:
            yield {**base, **v, "reduction": reduction}


def _dims(loss: Loss, rng) -> dict:
    dims: dict = {}
    patterns = [i.shape.split() for i in loss.inputs]
    batched = any("N" in p for p in patterns)
    for tokens in patterns:
        for tok in tokens:
            if tok == "*" and "*" not in dims:
                options = [(), (3,)] if batched else [(5,), (3, 4), (2, 2, 3)]
                dims["*"] = options[int(rng.integers(len(options)))]
            elif tok == "N" and "N" not in dims:
                dims["N"] = int(rng.integers(1, 5))
            elif not tok.isdigit() and tok not in dims and tok != "*":
                dims[tok] = int(rng.integers(2, 6))
    return dims


def _shape(pattern: str, dims: dict) -> tuple:
    out: list = []
    for tok in pattern.split():
        if tok == "*":
            out.extend(dims["*"])
        elif tok.isdigit():
            out.append(int(tok))
        else:
            out.append(dims[tok])
    return tuple(out)


def sample(loss: Loss, params: dict, tag: str = "typical", rng=None) -> Case:
    """Draw valid inputs for ``loss`` under ``params`` from the inputs' domains."""
    if tag not in TAGS:
        raise ValueError(f"tag must be one of {TAGS}, got {tag!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    dims = _dims(loss, rng)
    inputs: list = []
    for spec in loss.inputs:
        if spec.shape == "broadcast":  # the first input's shape, or its last dimension collapsed
            shape = inputs[0].shape
            shape = shape[:-1] + (1,) if shape and rng.random() < 0.5 else shape
        else:
            shape = _shape(spec.shape, dims)
        inputs.append(spec.domain(rng, shape, tag, dims, params))
    params = dict(params)
    for p in loss.params:
        if params.get(p.name) is SAMPLE:
            shape = (inputs[0].shape[-1:] if inputs[0].ndim else ()) if p.shape == "broadcast" else _shape(p.shape, dims)
            params[p.name] = p.domain(rng, shape, "typical", dims, params)
    if loss.class_axis and params.get("axis", 1) != 1:
        axis = params["axis"]
        for k in loss._class_inputs():
            inputs[k] = np.moveaxis(inputs[k], 1, axis)
    return Case(loss, inputs, params, tag)
