"""Golden files: refloss's float64 values and gradients, certified against the mpmath oracle.

Layout (``golden/`` by default)::

    golden/MANIFEST.json                 sha256, case count and refloss version of every file
    golden/schema.json                   JSON Schema of one line
    golden/<family>/<loss>.jsonl         one case a line, canonical JSON

A case holds the loss, its parameters, inputs exactly representable in the case's ``dtype``
(float16, bfloat16, float32, or float64 where no narrower one keeps the case), the cotangent under
``reduction='none'``, refloss's float64 value and gradients, the oracle's (``exact``, correctly
rounded to float64), the one-sided derivatives at kinks (``bounds``) and the certified errors in ULP.
Arrays are ``{"dtype", "shape", "values"}`` with floats as ``float.hex`` strings ("nan", "inf",
"-inf"), C order. Reading never executes code: :func:`read_cases` is ``json`` and ``float.fromhex``.

Certification policy (:data:`TOLERANCE_ULP`): the value within 4 ULP of the correctly rounded
exact value; each input's gradient within 4 ULP of its largest finite exact entry (normwise;
infinite entries exactly), where at a kink any value between the one-sided derivatives is exact.
Where the exact value is infinite its gradient is undefined: the case certifies the value only
(``exact.grads`` entries are null). A case outside the policy fails the build.

:func:`build` needs mpmath (``refloss[mpmath]``); :func:`verify` needs only NumPy and refloss.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .loss import SAMPLE, Loss, catalog, get

FORMAT = "refloss-golden/1"
TOLERANCE_ULP = 4.0
#: verify compares with the stored *rounded* exact values, which are off by at most half an ULP.
VERIFY_SLACK_ULP = 0.5
MIN_CASES = 20
#: target dtypes, rotated across cases; a case falls back along :data:`LADDER` when its target fails.
TARGETS = ("float16", "bfloat16", "float32")
LADDER = ("float16", "bfloat16", "float32", "float64")
DEFAULT_DIR = Path("golden")
MANIFEST = "MANIFEST.json"
SCHEMA = "schema.json"


class GoldenError(ValueError):
    """A golden line that does not parse as a case (names what is wrong)."""


# --------------------------------------------------------------------------------------------------
# Rounding to the target dtypes (NumPy has no bfloat16: round-to-nearest-even on the float32 bits).


def _round_bfloat16(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        f = np.asarray(x, dtype=np.float64).astype(np.float32)
    bits = f.view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    out = bits.astype(np.uint32).view(np.float32).astype(np.float64)
    return np.where(np.isnan(f), np.nan, out)


def round_to(x, dtype: str) -> np.ndarray:
    """``x`` (float64) rounded to the nearest value of ``dtype``, returned as float64 (exact)."""
    x = np.asarray(x, dtype=np.float64)
    if dtype == "float64":
        return x.copy()
    if dtype == "bfloat16":
        return _round_bfloat16(x).reshape(x.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(dtype).astype(np.float64)


def representable(x, dtype: str) -> bool:
    """Whether every element of ``x`` is exactly a ``dtype`` value (NaN included)."""
    x = np.asarray(x, dtype=np.float64)
    r = round_to(x, dtype)
    return bool(np.all((r == x) | (np.isnan(r) & np.isnan(x))))


# --------------------------------------------------------------------------------------------------
# The format: arrays, lines, canonical JSON.


def _hex(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v).hex()


def encode_array(a, dtype: str | None = None) -> dict:
    """``{"dtype", "shape", "values"}``: floats as ``float.hex`` strings, integers as JSON ints."""
    a = np.asarray(a)
    if a.dtype.kind in "iub":
        return {"dtype": dtype or "int64", "shape": list(a.shape), "values": [int(v) for v in a.ravel()]}
    a = np.asarray(a, dtype=np.float64)
    return {"dtype": dtype or "float64", "shape": list(a.shape), "values": [_hex(float(v)) for v in a.ravel()]}


def _is_array(obj) -> bool:
    return isinstance(obj, dict) and set(obj) == {"dtype", "shape", "values"}


def decode_array(obj, where: str = "array") -> np.ndarray:
    """The NumPy array of an encoded one: float64 (exact) for floats, int64 for ints."""
    if not _is_array(obj):
        raise GoldenError(f"{where}: expected an object with dtype, shape, values")
    shape, values, dtype = obj["shape"], obj["values"], obj["dtype"]
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise GoldenError(f"{where}: bad shape {shape!r}")
    if not isinstance(values, list) or len(values) != math.prod(shape):
        raise GoldenError(f"{where}: {len(values) if isinstance(values, list) else '?'} values for shape {shape}")
    if dtype in ("int64", "int32"):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise GoldenError(f"{where}: non-integer value in an {dtype} array")
        return np.asarray(values, dtype=np.int64).reshape(shape)
    if dtype not in LADDER:
        raise GoldenError(f"{where}: unknown dtype {dtype!r}")
    try:
        out = np.asarray([float.fromhex(v) for v in values], dtype=np.float64).reshape(shape)
    except (TypeError, ValueError) as e:
        raise GoldenError(f"{where}: a value is not a hex float ({e})") from None
    return out


def canonical(obj) -> str:
    """The one serialisation: sorted keys, no spaces, ASCII, no NaN literals; plus a newline."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False) + "\n"


def _encode_param(value, dtype):
    if isinstance(value, np.ndarray):
        return encode_array(value, dtype if value.dtype.kind == "f" else None)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise TypeError(f"cannot store parameter value {value!r}")


def decode_params(params: dict, where: str = "params") -> dict:
    out = {}
    for k, v in params.items():
        out[k] = decode_array(v, f"{where}.{k}") if isinstance(v, dict) else v
    return out


_LINE_KEYS = {
    "id": str, "loss": str, "family": str, "tag": str, "dtype": str, "params": dict, "inputs": dict,
    "refloss": dict, "exact": dict, "bounds": dict, "error_ulp": dict, "tolerance_ulp": (int, float),
}


def parse_line(text: str) -> dict:
    """One line as a case dict, its structure checked (:class:`GoldenError` names what is wrong)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise GoldenError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise GoldenError("not a JSON object")
    for key, kind in _LINE_KEYS.items():
        if key not in obj:
            raise GoldenError(f"missing key {key!r}")
        if not isinstance(obj[key], kind):
            raise GoldenError(f"{key!r} has the wrong type")
    if "cotangent" not in obj:
        raise GoldenError("missing key 'cotangent'")
    for part in ("refloss", "exact"):
        if set(obj[part]) != {"value", "grads"} or not isinstance(obj[part]["grads"], dict):
            raise GoldenError(f"{part!r} must hold 'value' and 'grads'")
    return obj


# --------------------------------------------------------------------------------------------------
# Exact arithmetic helpers.


def _to_float(x) -> float:
    """An mpmath number (or anything exact) correctly rounded to float64, subnormals included."""
    import mpmath

    if mpmath.isnan(x):
        return math.nan
    if mpmath.isinf(x):
        return math.inf if x > 0 else -math.inf
    sign, man, exp, _ = mpmath.mpf(x)._mpf_
    man = -man if sign else man
    q = Fraction(man * 2**exp) if exp >= 0 else Fraction(man, 2 ** (-exp))
    try:
        return float(q)
    except OverflowError:
        return math.inf if q > 0 else -math.inf


def value_error(approx, exact) -> float:
    """Largest ``|approx - exact| / ulp(exact)`` over two float64 arrays; ``inf`` where one is
    NaN/infinite and the other is not (0 where both are the same special value)."""
    a = np.asarray(approx, dtype=np.float64).ravel()
    e = np.asarray(exact, dtype=np.float64).ravel()
    if a.shape != e.shape:
        return math.inf
    with np.errstate(all="ignore"):
        special = ~np.isfinite(a) | ~np.isfinite(e)
        same = (np.isnan(a) & np.isnan(e)) | (a == e)
        if np.any(special & ~same):
            return math.inf
        ok = ~special
        if not np.any(ok):
            return 0.0
        return float(np.max(np.abs(a[ok] - e[ok]) / np.spacing(np.abs(e[ok]))))


def gradient_error(approx, exact, bounds: dict | None = None) -> float:
    """``max |approx - exact| / ulp(max |exact|)`` on float64 arrays, where at the flat indices of
    ``bounds`` (``{index: (left, right)}``) the distance to the segment between them counts. Entries
    where either side is NaN or infinite must be the same special value (or, at a kink, inside the
    segment); the finite rest is measured normwise against its largest exact entry."""
    a = np.asarray(approx, dtype=np.float64).ravel()
    e = np.asarray(exact, dtype=np.float64).ravel()
    if a.shape != e.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    with np.errstate(all="ignore"):
        off = a - e
        for i, (left, right) in (bounds or {}).items():
            lo, hi = min(left, right), max(left, right)
            off[i] = a[i] - lo if a[i] < lo else (a[i] - hi if a[i] > hi else 0.0)
        special = ~np.isfinite(a) | ~np.isfinite(e)
        same = (np.isnan(a) & np.isnan(e)) | (a == e) | (off == 0)
        if np.any(special & ~same):
            return math.inf
        finite = ~special
        if not np.any(finite):
            return 0.0
        return float(np.max(np.abs(off[finite])) / np.spacing(np.max(np.abs(e[finite]))))


# --------------------------------------------------------------------------------------------------
# Cases: what to certify.


def _slug_value(v) -> str:
    if v is SAMPLE:
        return "sample"
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    text = repr(v) if isinstance(v, float) else str(v)
    return "".join(c if (c.isalnum() and c.isascii()) or c in "._+-" else "_" for c in text.lower())


def _variant(loss: Loss, params: dict) -> str:
    changed = []
    for p in loss.params:
        if p.name == "reduction":
            continue
        v = params[p.name]
        if v is SAMPLE or isinstance(v, np.ndarray) or v != p.default:
            changed.append(f"{p.name}={_slug_value(v)}")
    return "-".join(changed) or "defaults"


@dataclasses.dataclass
class Spec:
    """One case before certification: rounded inputs, parameters, cotangent and target dtype."""

    loss: str
    id: str
    tag: str
    dtype: str
    inputs: list
    params: dict
    cotangent: np.ndarray | None


def _seed(*parts) -> int:
    return zlib.crc32("|".join(str(p) for p in parts).encode("ascii"))


def _float_params(params: dict) -> list:
    return [k for k, v in params.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"]


def _finite_outputs(loss, inputs, params, cot):
    value, grads = loss.value_and_grad(*inputs, cotangent=cot, **params)
    arrays = [np.asarray(value, dtype=np.float64)] + [np.asarray(g, dtype=np.float64) for g in grads if g is not None]
    return [np.isfinite(a) for a in arrays]


def _fit_dtype(loss: Loss, inputs, params, cot, target):
    """Round the float inputs, float array parameters and cotangent to ``target``, or to the next
    wider dtype of :data:`LADDER` where rounding overflows, makes the loss reject the input, or turns
    a finite value or gradient entry non-finite. Returns ``(dtype, inputs, params, cot)``."""
    finite = _finite_outputs(loss, inputs, params, cot)
    floats = [k for k, spec in enumerate(loss.inputs) if spec.dtype == "float"]
    for dtype in LADDER[LADDER.index(target):]:
        r_inputs = [round_to(a, dtype) if k in floats else a for k, a in enumerate(inputs)]
        r_params = {k: (round_to(v, dtype) if k in _float_params(params) else v) for k, v in params.items()}
        r_cot = None if cot is None else round_to(cot, dtype)
        originals = [inputs[k] for k in floats] + [params[k] for k in _float_params(params)] + ([cot] if cot is not None else [])
        rounded = [r_inputs[k] for k in floats] + [r_params[k] for k in _float_params(params)] + ([r_cot] if cot is not None else [])
        if any(np.any(np.isfinite(o) & ~np.isfinite(r)) for o, r in zip(originals, rounded)):
            continue  # overflow
        if dtype != "float64":
            try:
                now = _finite_outputs(loss, r_inputs, r_params, r_cot)
            except (ValueError, TypeError):
                continue  # the rounded input is no longer valid
            if any(np.any(f & ~n) for f, n in zip(finite, now)):
                continue
        return dtype, r_inputs, r_params, r_cot
    raise AssertionError("float64 always fits")  # pragma: no cover


def specs(loss: Loss, min_cases: int = MIN_CASES, reductions=None) -> list[Spec]:
    """Every parameter path x every tag (x seeds, until there are ``min_cases``), sampled from the
    domains with a per-case RNG seeded by a stable hash, rounded to a rotating target dtype.
    ``reductions`` restricts the paths (a quick build; the published files use every reduction)."""
    from .cases import param_paths, sample
    from .domains import TAGS

    paths = list(param_paths(loss, reductions))
    seeds = max(1, -(-min_cases // (len(paths) * len(TAGS))))
    out, seen = [], set()
    for seed in range(seeds):
        for i, params in enumerate(paths):
            path = f"{params['reduction']}-{_variant(loss, params)}"
            for j, tag in enumerate(TAGS):
                case_id = f"{tag}-{path}-s{seed}"
                k = 2
                while case_id in seen:
                    case_id, k = f"{tag}-{path}-s{seed}-{k}", k + 1
                seen.add(case_id)
                rng = np.random.default_rng(_seed(loss.name, path, tag, seed))
                case = sample(loss, params, tag, rng)
                cot = None
                if params["reduction"] == "none":
                    shape = np.shape(loss(*case.inputs, **case.params))
                    cot = rng.uniform(-2.0, 2.0, size=shape)
                target = TARGETS[(i + j + seed) % len(TARGETS)]
                dtype, inputs, cparams, cot = _fit_dtype(loss, case.inputs, case.params, cot, target)
                out.append(Spec(loss.name, case_id, tag, dtype, inputs, cparams, cot))
    return out


# --------------------------------------------------------------------------------------------------
# Certification.


@dataclasses.dataclass
class Result:
    """A certified case (``line``: the JSON object) or why it failed (``failures``)."""

    loss: str
    id: str
    line: dict | None
    failures: list  # (what, error text)
    value_ulp: float = 0.0
    grad_ulp: float = 0.0


def certify(spec: Spec) -> Result:
    """refloss's float64 value and gradients at ``spec``, the oracle's, and their errors.

    The errors are :func:`refloss.mp.certify`'s: the value's in ULP of the exact value, each
    gradient's normwise against the midpoint of the one-sided derivatives, with any value between
    them exact at kinks. This evaluates the oracle once (value, then one-sided differences) and
    keeps the exact gradients, which :class:`refloss.mp.Certificate` does not hold.
    """
    from . import mp

    loss = get(spec.loss)
    try:
        value, grads = loss.value_and_grad(*spec.inputs, cotangent=spec.cotangent, **spec.params)
        value = np.asarray(value, dtype=np.float64)
        cot = np.ones(value.shape) if spec.cotangent is None else spec.cotangent
        exact, dps = mp.evaluate(loss.name, spec.inputs, spec.params)
        which = [k for k, s in enumerate(loss.inputs) if s.differentiable]
        # The gradient of an infinite (or undefined) value is undefined: such a case certifies its value only.
        defined = all(mp.mpmath.isfinite(e) for e in np.asarray(exact, dtype=object).ravel())
        sided = mp.gradient(loss.name, spec.inputs, spec.params, cot, which, stop_gradient=loss.stop_gradient is not None) if defined else [None] * len(which)
    except Exception as e:  # noqa: BLE001 - a failing loss or oracle is a build failure, reported
        return Result(spec.loss, spec.id, None, [("error", f"{type(e).__name__}: {e}")], math.inf, math.inf)
    failures = []
    value_ulp = mp.ulp_error(value, exact)
    if not value_ulp <= TOLERANCE_ULP:
        failures.append(("value", value_ulp))
    grads_out, exact_grads, grad_ulp, bounds = {}, {}, {}, {}
    for k, g in zip(which, sided):
        name = loss.inputs[k].name
        approx = np.asarray(grads[k], dtype=np.float64)
        grads_out[name] = encode_array(approx)
        if g is None:
            exact_grads[name], grad_ulp[name] = None, None
            continue
        mid = np.asarray(np.frompyfunc(lambda a, b: (a + b) / 2, 2, 1)(g.left, g.right), dtype=object)
        off = np.empty(g.left.shape, dtype=object)
        for idx in np.ndindex(g.left.shape):
            lo, hi = sorted((g.left[idx], g.right[idx]))
            a = mp.mpmath.mpf(float(approx[idx]))
            off[idx] = a - lo if a < lo else (a - hi if a > hi else mp.mpmath.mpf(0))
        err = mp.normwise_ulp_error(approx, mid, off=off)
        grad_ulp[name] = err
        if not err <= TOLERANCE_ULP:
            failures.append((f"grad {name}", err))
        exact_grads[name] = encode_array(np.vectorize(_to_float, otypes=[np.float64])(mid) if mid.size else mid.astype(np.float64))
        kinks = [int(i) for i in np.flatnonzero(g.kinks)]
        if kinks:
            bounds[name] = {
                "index": kinks,
                "left": [_hex(_to_float(g.left.ravel()[i])) for i in kinks],
                "right": [_hex(_to_float(g.right.ravel()[i])) for i in kinks],
            }
    exact_value = np.vectorize(_to_float, otypes=[np.float64])(exact) if exact.size else exact.astype(np.float64)
    floats = {s.name for s in loss.inputs if s.dtype == "float"}
    line = {
        "id": spec.id,
        "loss": loss.name,
        "family": loss.family,
        "tag": spec.tag,
        "dtype": spec.dtype,
        "params": {k: _encode_param(v, spec.dtype) for k, v in spec.params.items()},
        "inputs": {s.name: encode_array(a, spec.dtype if s.name in floats else None) for s, a in zip(loss.inputs, spec.inputs)},
        "cotangent": None if spec.cotangent is None else encode_array(spec.cotangent, spec.dtype),
        "refloss": {"value": encode_array(value), "grads": grads_out},
        "exact": {"value": encode_array(exact_value), "grads": exact_grads},
        "bounds": bounds,
        "error_ulp": {"value": _short(value_ulp), "grads": {k: None if v is None else _short(v) for k, v in grad_ulp.items()}},
        "tolerance_ulp": TOLERANCE_ULP,
        "oracle_dps": dps,
    }
    worst_grad = max((v for v in grad_ulp.values() if v is not None), default=0.0)
    return Result(spec.loss, spec.id, None if failures else line, failures, value_ulp, worst_grad)


def _short(x: float) -> float:
    """An error in ULP to 3 significant digits (a diagnostic; the bound is what the build enforces)."""
    return float(f"{x:.3g}") if math.isfinite(x) else x


# --------------------------------------------------------------------------------------------------
# Build.


@dataclasses.dataclass
class LossRow:
    """Per-loss summary of a build or a verify."""

    loss: str
    family: str
    cases: int = 0
    value_ulp: float = 0.0
    grad_ulp: float = 0.0
    dtypes: dict = dataclasses.field(default_factory=dict)
    problems: int = 0


@dataclasses.dataclass
class Report:
    rows: list  # LossRow
    problems: list  # (where, case or line, what, detail)
    skipped: list = dataclasses.field(default_factory=list)  # losses without an oracle (build)

    @property
    def ok(self) -> bool:
        return not self.problems


def oracle_description() -> str:
    from . import mp

    return (
        f"refloss.mp (mpmath {mp.mpmath.__version__}): interval arithmetic from {mp.START_DPS} digits, doubled until "
        f"every output is narrower than 2^-80 relative (point arithmetic at {mp.TIE_DPS} digits at ties); "
        "gradients by one-sided differences with a 2^-100 relative step"
    )


def _version() -> str:
    from . import __version__

    return __version__


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _relpath(loss: Loss) -> str:
    return f"{loss.family}/{loss.name}.jsonl"


def _identity_progress(iterable, total, label):
    return iterable


def _run_specs(all_specs, jobs, progress):
    if jobs <= 1:
        yield from progress((certify(s) for s in all_specs), len(all_specs), "certifying")
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs) as pool:
        yield from progress(pool.map(certify, all_specs, chunksize=1), len(all_specs), "certifying")


def build(out=DEFAULT_DIR, losses: Iterable[str] | None = None, jobs: int = 1, progress: Callable = _identity_progress,
          min_cases: int = MIN_CASES, reductions=None) -> Report:
    """Generate, certify and write the golden files of ``losses`` (default: every loss with an oracle).

    Files of losses with a failing case are not written (an older file stays as it was); the
    manifest is updated for the files written and keeps its other entries.
    """
    from . import mp

    oracles = mp.load()
    out = Path(out)
    wanted = [get(n) for n in losses] if losses else list(catalog())
    chosen = [l for l in wanted if l.name in oracles]
    skipped = [l.name for l in wanted if l.name not in oracles]
    problems, rows, by_loss, all_specs = [], {}, {}, []
    if losses:  # asked for by name: a missing oracle is a failure, not a skip
        problems.extend((name, "-", "oracle", "no oracle in refloss.mp") for name in skipped)
        skipped = []
    for loss in progress(chosen, len(chosen), "sampling"):
        rows[loss.name] = LossRow(loss.name, loss.family)
        try:
            by_loss[loss.name] = specs(loss, min_cases, reductions)
            all_specs.extend(by_loss[loss.name])
        except Exception as e:  # noqa: BLE001 - a domain that cannot be sampled fails this loss only
            problems.append((loss.name, "-", "sampling", f"{type(e).__name__}: {e}"))
            rows[loss.name].problems += 1
    # Each loss's file (and the manifest) is written as soon as its last case is certified, so an
    # interrupted build keeps the losses it finished.
    results: dict = {n: [] for n in by_loss}
    for r in _run_specs(all_specs, jobs, progress):
        results[r.loss].append(r)
        if len(results[r.loss]) == len(by_loss[r.loss]):
            _finish(out, get(r.loss), results.pop(r.loss), rows[r.loss], problems)
    return Report(list(rows.values()), problems, skipped)


def _finish(out: Path, loss: Loss, results: list, row: LossRow, problems: list):
    lines = []
    for r in results:
        row.cases += 1
        row.value_ulp = max(row.value_ulp, r.value_ulp)
        row.grad_ulp = max(row.grad_ulp, r.grad_ulp)
        for what, err in r.failures:
            problems.append((loss.name, r.id, what, err))
            row.problems += 1
        if r.line is not None:
            lines.append(canonical(r.line))
            row.dtypes[r.line["dtype"]] = row.dtypes.get(r.line["dtype"], 0) + 1
    if row.problems:
        return
    path = out / _relpath(loss)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(lines).encode("ascii"))
    entry = {"cases": len(lines), "loss": loss.name, "refloss": _version(), "sha256": _sha256(path)}
    _write_manifest(out, {_relpath(loss): entry})


def schema() -> dict:
    """The JSON Schema (draft 2020-12) of one golden line."""
    hexfloat = {"type": "string", "pattern": "^(nan|-?inf|-?0x[0-9a-f]\\.[0-9a-f]+p[+-][0-9]+)$"}
    array = {
        "type": "object",
        "required": ["dtype", "shape", "values"],
        "additionalProperties": False,
        "properties": {
            "dtype": {"enum": ["float16", "bfloat16", "float32", "float64", "int64"]},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "values": {"type": "array", "items": {"anyOf": [hexfloat, {"type": "integer"}]}},
        },
        "description": "C-order values: floats as float.hex strings (exact), integers as JSON integers",
    }
    arrays = {"type": "object", "additionalProperties": {"$ref": "#/$defs/array"}}
    outputs = {
        "type": "object", "required": ["value", "grads"], "additionalProperties": False,
        "properties": {"value": {"$ref": "#/$defs/array"}, "grads": arrays},
    }
    exact_grads = {
        "type": "object",
        "additionalProperties": {"anyOf": [{"$ref": "#/$defs/array"}, {"type": "null"}]},
        "description": "null where the exact value is not finite: its gradient is undefined and not certified",
    }
    exact_outputs = {**outputs, "properties": {"value": {"$ref": "#/$defs/array"}, "grads": exact_grads}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "refloss-golden/1/case",
        "title": "One refloss golden case (one line of golden/<family>/<loss>.jsonl)",
        "type": "object",
        "required": list(_LINE_KEYS) + ["cotangent", "oracle_dps"],
        "additionalProperties": False,
        "$defs": {"array": array, "hexfloat": hexfloat},
        "properties": {
            "id": {"type": "string", "pattern": "^[a-z0-9_.=+-]+$", "description": "stable slug: tag-reduction-variant-seed"},
            "loss": {"type": "string", "description": "refloss loss name"},
            "family": {"type": "string"},
            "tag": {"enum": ["typical", "extreme", "edge"]},
            "dtype": {"enum": list(LADDER), "description": "float inputs, float array parameters and cotangent are exact in this dtype"},
            "params": {
                "type": "object",
                "description": "keyword arguments; array parameters as arrays, reals as JSON numbers (shortest round-trip)",
                "additionalProperties": {"anyOf": [{"$ref": "#/$defs/array"}, {"type": ["number", "string", "boolean", "null"]}]},
            },
            "inputs": {**arrays, "description": "positional inputs by name, in declaration order"},
            "cotangent": {"anyOf": [{"$ref": "#/$defs/array"}, {"type": "null"}], "description": "weights of the output in the gradient; null: 1 (reduced loss)"},
            "refloss": {**outputs, "description": "refloss's float64 value and gradients of sum(cotangent * value)"},
            "exact": {**exact_outputs, "description": "the oracle's, correctly rounded to float64 (midpoint of the one-sided derivatives)"},
            "bounds": {
                "type": "object",
                "description": "per input, the flat indices of kinks and the one-sided derivatives there (float64)",
                "additionalProperties": {
                    "type": "object", "required": ["index", "left", "right"], "additionalProperties": False,
                    "properties": {
                        "index": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                        "left": {"type": "array", "items": {"$ref": "#/$defs/hexfloat"}},
                        "right": {"type": "array", "items": {"$ref": "#/$defs/hexfloat"}},
                    },
                },
            },
            "error_ulp": {
                "type": "object", "required": ["value", "grads"], "additionalProperties": False,
                "properties": {"value": {"type": "number"}, "grads": {"type": "object", "additionalProperties": {"type": ["number", "null"]}}},
                "description": "certified error of refloss's results (value: ULP; gradients: ULP of the largest entry)",
            },
            "tolerance_ulp": {"type": "number"},
            "oracle_dps": {"type": ["integer", "null"], "description": "interval digits that certified the value; null: a tie, 200-digit point arithmetic"},
        },
    }


def _write_manifest(out: Path, written: dict):
    path = out / MANIFEST
    files = {}
    if path.exists():
        try:
            files = json.loads(path.read_text()).get("files", {})
        except (json.JSONDecodeError, AttributeError):
            files = {}
    files.update(written)
    (out / SCHEMA).write_text(json.dumps(schema(), sort_keys=True, indent=1, ensure_ascii=True) + "\n")
    manifest = {
        "format": FORMAT,
        "refloss": _version(),
        "oracle": oracle_description(),
        "policy": {
            "value": f"within {TOLERANCE_ULP:g} ULP of the correctly rounded exact value",
            "gradients": f"within {TOLERANCE_ULP:g} ULP of the largest exact entry, per input, infinite entries exactly; at kinks any value between the one-sided derivatives; not certified where the exact value is infinite (null)",
            "tolerance_ulp": TOLERANCE_ULP,
        },
        "schema": {"path": SCHEMA, "sha256": _sha256(out / SCHEMA)},
        "files": dict(sorted(files.items())),
    }
    path.write_text(json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=True) + "\n")


# --------------------------------------------------------------------------------------------------
# Reading and verifying.


def read_cases(path) -> list[dict]:
    """Every case of a golden file, parsed and structurally checked (no refloss computation)."""
    out = []
    for n, text in enumerate(Path(path).read_text(encoding="ascii").splitlines(), 1):
        try:
            out.append(parse_line(text))
        except GoldenError as e:
            raise GoldenError(f"{path}:{n}: {e}") from None
    return out


def check_case(case: dict):
    """Recompute ``case`` with the installed refloss (float64); returns ``(value_ulp, grad_ulp,
    problems)`` against the stored exact results, within :data:`TOLERANCE_ULP` plus
    :data:`VERIFY_SLACK_ULP` (the stored exact values are rounded)."""
    loss = get(case["loss"])
    dtype = case["dtype"]
    inputs, problems = [], []
    for spec in loss.inputs:
        if spec.name not in case["inputs"]:
            raise GoldenError(f"input {spec.name!r} missing")
        a = decode_array(case["inputs"][spec.name], f"inputs.{spec.name}")
        if spec.dtype == "float" and not representable(a, dtype):
            problems.append(("inputs", f"{spec.name} is not exact in {dtype}"))
        inputs.append(a)
    params = decode_params(case["params"])
    cot = None if case["cotangent"] is None else decode_array(case["cotangent"], "cotangent")
    value, grads = loss.value_and_grad(*inputs, cotangent=cot, **params)
    limit = TOLERANCE_ULP + VERIFY_SLACK_ULP
    value_ulp = value_error(value, decode_array(case["exact"]["value"], "exact.value"))
    if not value_ulp <= limit:
        problems.append(("value", value_ulp))
    worst = 0.0
    for k, spec in enumerate(loss.inputs):
        if not spec.differentiable:
            continue
        if spec.name not in case["exact"]["grads"]:
            raise GoldenError(f"exact gradient of {spec.name!r} missing")
        if case["exact"]["grads"][spec.name] is None:
            continue  # the exact value is not finite: no gradient to compare with
        exact = decode_array(case["exact"]["grads"][spec.name], f"exact.grads.{spec.name}")
        b = case["bounds"].get(spec.name)
        bounds = {}
        if b:
            try:
                bounds = {int(i): (float.fromhex(l), float.fromhex(r)) for i, l, r in zip(b["index"], b["left"], b["right"], strict=True)}
            except (KeyError, TypeError, ValueError) as e:
                raise GoldenError(f"bounds.{spec.name}: {e}") from None
            if not all(0 <= i < exact.size for i in bounds):
                raise GoldenError(f"bounds.{spec.name}: an index outside the gradient")
        err = gradient_error(grads[k], exact, bounds)
        worst = max(worst, err)
        if not err <= limit:
            problems.append((f"grad {spec.name}", err))
    return value_ulp, worst, problems


def verify(directory=DEFAULT_DIR, losses: Iterable[str] | None = None, progress: Callable = _identity_progress) -> Report:
    """Check the manifest (sha256, case counts, missing and extra files), parse every line and
    recompute every case with the installed refloss. Problems are collected, never raised."""
    directory = Path(directory)
    problems, rows = [], {}
    wanted = set(losses) if losses else None
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not an object")
    except FileNotFoundError:
        return Report([], [(str(manifest_path), "-", "manifest", "missing")])
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        return Report([], [(str(manifest_path), "-", "manifest", f"unreadable: {e}")])

    def selected(rel):
        return wanted is None or Path(rel).stem in wanted

    on_disk = {p.relative_to(directory).as_posix() for p in directory.glob("*/*.jsonl")}
    for rel in sorted(on_disk - set(files)):
        if selected(rel):
            problems.append((rel, "-", "manifest", "file not listed in MANIFEST.json"))
    schema_entry = manifest.get("schema")
    if wanted is None and isinstance(schema_entry, dict):
        sp = directory / schema_entry.get("path", SCHEMA)
        if not sp.exists():
            problems.append((SCHEMA, "-", "manifest", "missing"))
        elif _sha256(sp) != schema_entry.get("sha256"):
            problems.append((SCHEMA, "-", "manifest", "sha256 differs from MANIFEST.json"))
    todo = []
    for rel, entry in sorted(files.items()):
        if not selected(rel):
            continue
        path = directory / rel
        if not path.exists():
            problems.append((rel, "-", "manifest", "listed in MANIFEST.json but missing"))
            continue
        if _sha256(path) != entry.get("sha256"):
            problems.append((rel, "-", "manifest", "sha256 differs from MANIFEST.json (modified or truncated)"))
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif raw:
            problems.append((rel, len(lines), "format", "last line has no newline (truncated?)"))
        if len(lines) != entry.get("cases"):
            problems.append((rel, "-", "manifest", f"{len(lines)} cases, MANIFEST.json says {entry.get('cases')}"))
        for n, text in enumerate(lines, 1):
            todo.append((rel, n, text))
    for rel, n, text in progress(todo, len(todo), "verifying"):
        try:
            case = parse_line(text.decode("ascii"))
            name = Path(rel).stem
            if case["loss"] != name:
                raise GoldenError(f"case of {case['loss']!r} in the file of {name!r}")
            row = rows.setdefault(rel, LossRow(name, case["family"]))
            value_ulp, grad_ulp, found = check_case(case)
        except (GoldenError, UnicodeDecodeError) as e:
            problems.append((rel, n, "format", str(e)))
            continue
        except KeyError as e:
            problems.append((rel, n, "format", f"unknown loss or missing key: {e}"))
            continue
        except (ValueError, TypeError) as e:
            problems.append((rel, n, "refloss", f"{type(e).__name__}: {e}"))
            continue
        row.cases += 1
        row.value_ulp = max(row.value_ulp, value_ulp)
        row.grad_ulp = max(row.grad_ulp, grad_ulp)
        row.dtypes[case["dtype"]] = row.dtypes.get(case["dtype"], 0) + 1
        for what, err in found:
            row.problems += 1
            problems.append((rel, f"{n} ({case['id']})", what, err))
    return Report(list(rows.values()), problems)
