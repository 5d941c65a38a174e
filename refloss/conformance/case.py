"""Golden cases as the conformance runner uses them: decoded arrays, the dtypes a case runs in, and
refloss evaluation points for the sensitivity of :mod:`refloss.conformance.policy`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..golden import GoldenError, decode_array, decode_params, parse_line
from ..loss import Loss, catalog, get
from . import policy


@dataclasses.dataclass
class Case:
    """One golden case, decoded: inputs and array parameters are exact float64 (or int64) arrays."""

    loss: Loss
    id: str
    tag: str
    dtype: str  # the narrowest dtype its float data is exact in
    inputs: dict  # name -> array, in declaration order
    params: dict
    cot: np.ndarray | None
    exact_value: np.ndarray
    exact_grads: dict  # differentiable input -> array, or None where only the value is certified
    bounds: dict  # input -> {flat index: (left, right)}

    @classmethod
    def from_line(cls, obj: dict) -> "Case":
        loss = get(obj["loss"])
        inputs = {}
        for spec in loss.inputs:
            if spec.name not in obj["inputs"]:
                raise GoldenError(f"input {spec.name!r} missing")
            inputs[spec.name] = decode_array(obj["inputs"][spec.name], f"inputs.{spec.name}")
        grads, bounds = {}, {}
        for spec in loss.inputs:
            if not spec.differentiable:
                continue
            g = obj["exact"]["grads"].get(spec.name)
            # null: the exact value is infinite, only the value is certified
            grads[spec.name] = None if g is None else decode_array(g, f"exact.grads.{spec.name}")
            b = obj["bounds"].get(spec.name)
            if b:
                bounds[spec.name] = {
                    int(i): (float.fromhex(l), float.fromhex(r)) for i, l, r in zip(b["index"], b["left"], b["right"], strict=True)
                }
        cot = obj["cotangent"]
        return cls(
            loss=loss,
            id=obj["id"],
            tag=obj["tag"],
            dtype=obj["dtype"],
            inputs=inputs,
            params=decode_params(obj["params"]),
            cot=None if cot is None else decode_array(cot, "cotangent"),
            exact_value=decode_array(obj["exact"]["value"], "exact.value"),
            exact_grads=grads,
            bounds=bounds,
        )

    @property
    def name(self) -> str:
        return self.loss.name

    def dtypes(self) -> tuple:
        """The target dtypes this case is exact in (its own and the wider ones)."""
        return tuple(d for d in policy.DTYPES if policy.wider_or_equal(d, self.dtype))

    def point(self, loss: Loss | None = None, inputs: dict | None = None, params: dict | None = None) -> policy.Point:
        """The refloss evaluation point of this case (or of a convention's transform of it)."""
        loss = loss or self.loss
        return policy.Point(
            evaluate=lambda i, p, c: evaluate(loss, i, p, c),
            inputs=dict(self.inputs if inputs is None else inputs),
            params=dict(self.params if params is None else params),
            cot=self.cot,
            perturb=tuple(s.name for s in loss.inputs if s.differentiable and s.dtype == "float"),
            domain={s.name: s.values for s in loss.inputs if s.values is not None},
            seed=f"{loss.name}|{self.id}",
        )


def evaluate(loss: Loss, inputs: dict, params: dict, cot):
    """refloss's float64 ``(value, {differentiable input: gradient})`` at named inputs."""
    value, grads = loss.value_and_grad(*[inputs[s.name] for s in loss.inputs], cotangent=cot, **params)
    named = {s.name: np.asarray(g, dtype=np.float64) for s, g in zip(loss.inputs, grads) if s.differentiable}
    return np.asarray(value, dtype=np.float64), named


@dataclasses.dataclass
class Golden:
    """What a golden directory holds: cases per loss, losses without cases, unreadable files."""

    cases: dict  # loss name -> [Case]
    missing: list  # losses of the catalogue without a golden file
    problems: list  # (file, message)


def default_golden() -> str:
    """``golden`` in the working directory, else the one beside the package (an editable install)."""
    here = Path("golden")
    if here.is_dir():
        return str(here)
    beside = Path(__file__).resolve().parents[2] / "golden"
    return str(beside if beside.is_dir() else here)


def load(directory, losses=None) -> Golden:
    """Read every ``<family>/<loss>.jsonl`` under ``directory`` (whatever it holds now: files being
    rebuilt are read as they are). ``losses`` restricts to those names."""
    directory = Path(directory)
    wanted = list(losses) if losses else [l.name for l in catalog()]
    names = {l.name for l in catalog()}
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise KeyError(f"no loss named {', '.join(map(repr, unknown))}; see refloss.catalog()")
    files = {p.stem: p for p in sorted(directory.glob("*/*.jsonl"))}
    cases, problems = {}, []
    for name in wanted:
        path = files.get(name)
        if path is None:
            continue
        found = []
        for n, text in enumerate(path.read_text(encoding="ascii").splitlines(), 1):
            try:
                obj = parse_line(text)
                if obj["loss"] != name:
                    raise GoldenError(f"a case of {obj['loss']!r} in the file of {name!r}")
                found.append(Case.from_line(obj))
            except (GoldenError, KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
                problems.append((f"{path.relative_to(directory)}:{n}", f"{type(e).__name__}: {e}"))
        if found:
            cases[name] = found
    missing = [n for n in wanted if n not in cases]
    return Golden(cases, missing, problems)


def spread(cases: list, k: int | None) -> list:
    """``k`` cases spread evenly over the file (every dtype, tag and parameter path rotates through
    it), or all of them."""
    if k is None or k >= len(cases):
        return list(cases)
    return [cases[(i * len(cases)) // k] for i in range(k)]
