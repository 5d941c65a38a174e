"""The conformance kit: tolerance policy, verdicts, reports, CLI, pytest plugin, and the documented
framework discrepancies of shared/reference/frameworks.md section 5, each on a case certified here
by the mpmath oracle and expected with the verdict it deserves."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refloss import golden
from refloss.cli import main
from refloss.conformance import policy, report, runner
from refloss.conformance.adapter import Convention, NotOffered, Unsupported, override
from refloss.conformance.case import Case, load, spread
from refloss.conformance.numpy import NumpyAdapter
from refloss.loss import get

REPO = Path(__file__).resolve().parent.parent


def need(module: str):
    """Skip where a framework is not installed, except in CI, whose `make test` installs them all."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed; `make test` installs refloss[test,frameworks]")
        pytest.skip(f"{module} is not installed (pip install refloss[frameworks])")


# --------------------------------------------------------------------------------------------------
# Cases certified here by the oracle (refloss.golden.certify): the section-5 discrepancies.

INF = math.inf
SYNTHETIC = {
    # optax has no ignore_index; label -1 (ignored in torch) wraps to the last class (5.21)
    "ce_label_minus_one": ("cross_entropy", {"logits": [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], "target": [2, -1]},
                           {"ignore_index": -1, "reduction": "sum"}, "float64"),
    # every target ignored: torch's mean is NaN, Keras' 0 (5.1)
    "ce_all_ignored": ("cross_entropy", {"logits": [[1.0, 2.0], [3.0, 4.0]], "target": [1, 1]},
                       {"ignore_index": 1, "reduction": "mean"}, "float64"),
    # BCE with logits at x = +inf, y = 1: exactly 0; torch, optax, tf.nn give NaN (5.8)
    "bce_logits_inf": ("binary_cross_entropy_with_logits", {"logits": [INF, 2.0], "target": [1.0, 0.0]},
                       {"reduction": "sum"}, "float64"),
    # soft_margin_loss at -yx = 100: 100; PyTorch's naive form overflows in float32 (5.27)
    "soft_margin_overflow": ("soft_margin_loss", {"input": [-100.0, 0.5], "target": [1.0, -1.0]},
                             {"reduction": "sum"}, "float32"),
    # triplet with p = 1, optax's eps placement: optax drops |.| for odd norms (5.16); torch puts eps on the difference (5.15)
    "triplet_p1": ("triplet_margin_loss", {"anchor": [[0.5, 0.5], [1.0, -0.5]], "positive": [[0.25, 0.25], [0.75, -0.75]],
                                           "negative": [[1.0, 0.75], [1.5, 0.0]]},
                   {"p": 1.0, "eps_placement": "sum", "reduction": "sum"}, "float64"),
    # triplet with p = 2, torch's eps placement: optax adds eps inside the sum (5.15), PML adds none
    "triplet_p2": ("triplet_margin_loss", {"anchor": [[0.5, 0.5], [1.0, -0.5]], "positive": [[0.25, 0.25], [0.75, -0.75]],
                                           "negative": [[1.0, 0.75], [1.5, 0.0]]},
                   {"p": 2.0, "reduction": "sum"}, "float64"),
    # kl_div with a zero target at a -inf log-probability: 0; torch and optax give NaN (5.13)
    "kl_zero_target": ("kl_div", {"input": [[-INF, -0.5]], "target": [[0.0, 0.625]]}, {"reduction": "sum"}, "float64"),
    # soft-label CE with a -inf logit of a zero-probability class: finite; torch, optax, tf.nn give NaN (5.14)
    "soft_ce_neg_inf": ("softmax_cross_entropy", {"logits": [[-INF, 1.0, 2.0]], "target": [[0.0, 0.5, 0.5]]},
                        {"reduction": "sum"}, "float64"),
    # BCE on a saturated probability with PyTorch's clamp: Keras clips at 1e-7 (5.6, 5.7)
    "bce_saturated": ("binary_cross_entropy", {"input": [0.0, 0.75], "target": [1.0, 0.0]},
                      {"clamp": "torch", "reduction": "sum"}, "float64"),
    # optax's l2_loss halves the squared error (5.11): refloss's convention='optax_l2'
    "mse_optax_l2": ("mse_loss", {"input": [0.5, -1.25, 3.0], "target": [1.0, 0.25, -2.0]},
                     {"convention": "optax_l2", "reduction": "sum"}, "float64"),
    # Poisson on rates: Keras adds 1e-7 inside the log where torch adds eps=1e-8 (5.18)
    "poisson_rate": ("poisson_nll_loss", {"input": [0.5, 2.0], "target": [1.0, 3.0]},
                     {"log_input": False, "reduction": "sum"}, "float64"),
    # ArcFace, PML's margin in degrees and W layout
    "arcface": ("arcface_loss", {"features": [[1.0, 0.5, -0.25], [0.25, -1.0, 0.75]], "labels": [0, 1],
                                 "weights": [[0.5, 1.0, 0.0], [-0.25, 0.5, 1.0], [1.0, -0.5, 0.25]]},
                {"scale": 4.0, "reduction": "mean"}, "float64"),
    # ArcFace beyond theta = pi - m without a fallback: PML falls back to cos(theta) - m sin(m)
    "arcface_no_fallback": ("arcface_loss", {"features": [[1.0, 0.0]], "labels": [0], "weights": [[-1.0, 0.125], [0.0, 1.0]]},
                            {"scale": 4.0, "fallback": "none", "reduction": "sum"}, "float64"),
    # contrastive pairs, PML's convention (not squared, pos_margin)
    "contrastive_pml": ("contrastive_loss", {"input1": [[1.0, 0.5], [0.25, -0.5], [0.0, 1.0]],
                                             "input2": [[0.5, 0.5], [0.5, 0.25], [0.125, 0.25]], "target": [1.0, 0.0, 0.0]},
                        {"convention": "pml", "pos_margin": 0.125, "reduction": "mean"}, "float64"),
}


def _certify(name, inputs, params, dtype):
    loss = get(name)
    arrays = [np.asarray(inputs[s.name], dtype=np.int64 if s.dtype == "int" else np.float64) for s in loss.inputs]
    result = golden.certify(golden.Spec(name, f"synthetic-{name}", "edge", dtype, arrays, {**loss.defaults(), **params}, None))
    assert result.line is not None, f"the oracle does not certify {name}: {result.failures}"
    return result.line


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """``{key: Case}`` and a golden directory holding them (one file per loss)."""
    pytest.importorskip("mpmath")  # the test extra has it
    lines = {key: _certify(*spec) for key, spec in SYNTHETIC.items()}
    directory = tmp_path_factory.mktemp("golden")
    by_loss: dict = {}
    for key, line in lines.items():
        line = {**line, "id": f"edge-{key.replace('_', '-')}"}
        lines[key] = line
        by_loss.setdefault((line["family"], line["loss"]), []).append(golden.canonical(line))
    for (family, loss), texts in by_loss.items():
        (directory / family).mkdir(exist_ok=True)
        (directory / family / f"{loss}.jsonl").write_text("".join(texts))
    return {k: Case.from_line(v) for k, v in lines.items()}, directory


def _verdict(target, case, dtype):
    adapter = runner.adapters(target)[0]
    adapter.load()
    return runner.evaluate(adapter, case, dtype)


DISCREPANCIES = [
    # (target, case, dtype, verdict, what the detail must say)
    ("jax", "ce_label_minus_one", "float64", "convention", "optax_no_ignore_index"),
    ("torch", "ce_label_minus_one", "float64", "pass", ""),
    ("tensorflow", "ce_label_minus_one", "float64", "pass", ""),
    ("torch", "ce_all_ignored", "float64", "pass", ""),
    ("tensorflow", "ce_all_ignored", "float64", "convention", "keras_empty_mean_zero"),
    ("torch", "bce_logits_inf", "float64", "defect", "NaN"),
    ("jax", "bce_logits_inf", "float64", "defect", "NaN"),
    ("tensorflow", "bce_logits_inf", "float64", "defect", "NaN"),
    ("torch", "soft_margin_overflow", "float32", "defect", "value: inf"),
    ("torch", "soft_margin_overflow", "float64", "pass", ""),
    ("jax", "soft_margin_overflow", "float32", "pass", ""),
    ("jax", "triplet_p1", "float64", "defect", ""),
    ("torch", "triplet_p1", "float64", "convention", "torch_eps_difference"),
    ("torch", "triplet_p2", "float64", "pass", ""),
    ("jax", "triplet_p2", "float64", "convention", "optax_eps_sum"),
    ("pml", "triplet_p2", "float64", "convention", "pml_no_eps"),
    ("torch", "kl_zero_target", "float64", "defect", "NaN"),
    ("jax", "kl_zero_target", "float64", "defect", "NaN"),
    ("torch", "soft_ce_neg_inf", "float64", "defect", "NaN"),
    ("jax", "soft_ce_neg_inf", "float64", "defect", "NaN"),
    ("tensorflow", "soft_ce_neg_inf", "float64", "defect", "NaN"),
    ("tensorflow", "bce_saturated", "float64", "convention", "keras_probability_clip"),
    # PyTorch's value is its clamp's, but its backward divides by max(p (1 - p), 1e-12) (-1e12 at p = 0)
    # and its target gradient takes the unclamped logs (inf at p = 0)
    ("torch", "bce_saturated", "float64", "defect", "gradient of"),
    ("jax", "mse_optax_l2", "float64", "pass", ""),
    ("torch", "mse_optax_l2", "float64", "not offered", "half factor"),
    ("tensorflow", "poisson_rate", "float64", "convention", "keras_poisson_eps"),
    ("pml", "arcface", "float64", "pass", ""),
    ("pml", "arcface", "float32", "pass", ""),
    ("pml", "arcface_no_fallback", "float64", "convention", "pml_arcface_fallback"),
    ("pml", "contrastive_pml", "float64", "pass", ""),
]
_MODULE = {"torch": "torch", "pml": "pytorch_metric_learning", "jax": "optax", "tensorflow": "tensorflow"}


@pytest.mark.parametrize("target, key, dtype, verdict, detail", DISCREPANCIES, ids=lambda v: str(v))
def test_documented_discrepancy_gets_its_verdict(synthetic, target, key, dtype, verdict, detail):
    need(_MODULE[target])
    cases, _ = synthetic
    out = _verdict(target, cases[key], dtype)
    assert out.verdict == verdict, f"{out.verdict}: {out.detail}"
    assert detail in out.detail
    if verdict == "defect":
        compile(out.reproducer, "<reproducer>", "exec")
        assert out.worst_ulp is not None and not out.worst_ulp <= (out.bound_ulp or 0)


def test_reproducer_runs_as_is(synthetic, tmp_path):
    """A defect's reproducer is plain framework code: run alone, it shows the overflow."""
    need("torch")
    cases, _ = synthetic
    out = _verdict("torch", cases["soft_margin_overflow"], "float32")
    script = tmp_path / "repro.py"
    script.write_text(out.reproducer)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "value: inf" in done.stdout


# --------------------------------------------------------------------------------------------------
# The tolerance policy.


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_ulp_is_the_dtype_spacing(dtype):
    values = np.array([1.0, 3.5, 1e-3, 0.0, 1e-30, 2.0**-24, 6e4])
    kept = values[np.isfinite(values.astype(dtype))]
    expected = np.spacing(np.abs(kept.astype(dtype))).astype(np.float64)
    assert np.array_equal(policy.ulp(kept.astype(dtype).astype(np.float64), dtype), expected)


def test_ulp_of_bfloat16():
    # 8 significand bits, the exponent range of float32
    assert policy.ulp(1.0, "bfloat16") == 2.0**-7
    assert policy.ulp(3.0, "bfloat16") == 2.0**-6
    assert policy.ulp(0.0, "bfloat16") == 2.0**-133


def test_value_error_handles_overflow_and_special_values():
    # 70000 overflows float16: infinity is its correct rounding there; 65504 is not
    assert policy.value_ulps([INF], [70000.0], "float16")[0] == 0
    assert policy.value_ulps([65504.0], [70000.0], "float16")[0] == INF
    assert policy.value_ulps([math.nan], [math.nan], "float32")[0] == 0
    assert policy.value_ulps([math.nan], [1.0], "float32")[0] == INF
    assert policy.value_ulps([1.0 + 2.0**-23], [1.0], "float32")[0] == 1.0
    assert policy.value_ulps([1.0 + 2.0**-23], [1.0], "float64")[0] == 2.0**29


def test_gradient_error_accepts_the_kink_segment():
    exact, bounds = [0.5, 2.0], {0: (0.0, 1.0)}
    assert policy.gradient_ulps([0.25, 2.0], exact, "float64", bounds) == 0
    assert policy.gradient_ulps([1.5, 2.0], exact, "float64", bounds) == 0.5 / np.spacing(2.0)
    assert policy.gradient_ulps([0.25, 2.0], exact, "float64") > 1e14
    # a derivative the oracle does not define (NaN) is not compared; a NaN where it is finite is
    assert policy.gradient_ulps([0.0, 2.0], [math.nan, 2.0], "float64") == 0
    assert policy.gradient_ulps([math.nan, 2.0], [0.0, 2.0], "float64") == INF


def _point(name, inputs, params):
    case = Case(get(name), "p", "typical", "float64", inputs, {**get(name).defaults(), **params}, None,
                np.zeros(()), {}, {})
    return case.point()


def test_sensitivity_sees_cancellation():
    # |x - y| with x and y a few ulps apart: rounding x in float32 moves it by 2^19 of its own ulps
    close = _point("l1_loss", {"input": np.array([1.0 + 2.0**-20]), "target": np.array([1.0])}, {"reduction": "sum"})
    s_value, s_grads = policy.sensitivity(close, "float32")
    assert s_value >= 2.0**18
    apart = _point("l1_loss", {"input": np.array([3.0]), "target": np.array([1.0])}, {"reduction": "sum"})
    s_value, _ = policy.sensitivity(apart, "float32")
    assert s_value <= 2.0


def test_judge_holds_a_well_conditioned_result_to_a_few_ulps():
    point = _point("mse_loss", {"input": np.array([3.0, 1.5]), "target": np.array([1.0, 0.5])}, {"reduction": "sum"})
    exact = 5.0
    grads = {"input": np.array([4.0, 2.0]), "target": np.array([-4.0, -2.0])}
    # 5 (1 + 2^-23) is 5 + 1.25 ulp(5) in float32; 5 (1 + 2^-14) is 640 of them
    near = policy.judge(exact * (1 + 2.0**-23), grads, exact, grads, {}, "float32", point)
    assert near.ok and near.value_ulp == 1.25
    far = policy.judge(exact * (1 + 2.0**-14), grads, exact, grads, {}, "float32", point)
    assert not far.ok and far.worst == "value" and far.worst_ulp == 640.0


# --------------------------------------------------------------------------------------------------
# The runner's verdicts, with adapters whose results are known.


class _Shifted(NumpyAdapter):
    """refloss itself, with the value moved by a relative 2^-30: a defect in float64."""

    def __init__(self):
        super().__init__("numpy")
        self.name = "shifted"

    def execute(self, call, case, dtype):
        value, grads = super().execute(call, case, dtype)
        return value * (1 + 2.0**-30), grads


class _Raising(NumpyAdapter):
    def __init__(self, exc):
        super().__init__("numpy")
        self.name, self.exc = "raising", exc

    def execute(self, call, case, dtype):
        raise self.exc


class _OtherClamp(NumpyAdapter):
    """Computes binary_cross_entropy with Keras' clip, declaring (or not) that convention."""

    def __init__(self, declared):
        super().__init__("numpy")
        self.name, self.declared = "clip", declared

    def offer(self, case):
        call = super().offer(case)
        call.code = call.code.replace("clamp='torch'", "clamp='keras'")
        if self.declared:
            call.conventions = (Convention("keras_clip", "clips at 1e-7", override(clamp="keras")),)
        return call


def test_verdicts(synthetic):
    cases, _ = synthetic
    case = cases["bce_saturated"]
    assert runner.evaluate(NumpyAdapter(), case, "float64").verdict == "pass"
    shifted = runner.evaluate(_Shifted(), cases["arcface"], "float64")
    assert shifted.verdict == "defect" and shifted.detail.startswith("value off by")
    assert 2.0**21 < shifted.value_ulp < 2.0**24
    compile(shifted.reproducer, "<reproducer>", "exec")
    raised = runner.evaluate(_Raising(RuntimeError("boom")), case, "float64")
    assert raised.verdict == "defect" and "exception: RuntimeError: boom" in raised.detail
    missing = runner.evaluate(_Raising(Unsupported("no kernel")), case, "float64")
    assert missing.verdict == "not offered" and "no float64 kernel" in missing.detail
    assert runner.evaluate(NumpyAdapter(), case, "bfloat16").verdict == "not offered"
    assert runner.evaluate(_OtherClamp(declared=True), case, "float64").verdict == "convention"
    assert runner.evaluate(_OtherClamp(declared=False), case, "float64").verdict == "defect"


def test_an_adapter_without_the_loss_does_not_offer_it(synthetic):
    cases, _ = synthetic
    adapter = NumpyAdapter()
    adapter.offer = lambda case: NotOffered("nothing here")
    out = runner.evaluate(adapter, cases["arcface"], "float64")
    assert (out.verdict, out.detail) == ("not offered", "nothing here")


def test_cases_run_in_every_dtype_they_are_exact_in(synthetic):
    cases, _ = synthetic
    assert cases["soft_margin_overflow"].dtypes() == ("float64", "float32")
    assert cases["arcface"].dtypes() == ("float64",)
    line = _certify("l1_loss", {"input": [0.5, 1.5], "target": [1.0, 0.25]}, {"reduction": "sum"}, "float16")
    assert Case.from_line(line).dtypes() == ("float64", "float32", "float16")
    assert [c for c in spread(list(range(10)), 3)] == [0, 3, 6]


# --------------------------------------------------------------------------------------------------
# refloss's own backends, the CLI, the reports and the pytest plugin.


def test_refloss_backends_pass_in_float64(synthetic):
    """Every refloss backend passes every case it is given in float64 (its certified dtype)."""
    cases, directory = synthetic
    run = runner.run(["numpy"], REPO / "golden", dtypes=["float64"], per_loss=2)
    run.outcomes += [runner.evaluate(a, c, "float64") for a in runner.adapters("numpy") for c in cases.values()]
    bad = [f"{o.target} {o.loss} {o.case}: {o.detail}" for o in run.outcomes if o.verdict != "pass"]
    assert not bad, "\n".join(bad[:20])
    assert len(run.outcomes) > len(cases)


def test_cli_writes_the_reports(synthetic, tmp_path, capsys):
    _, directory = synthetic
    out = tmp_path / "reports"
    assert main(["conform", "numpy", "--golden", str(directory), "--dtypes", "float64", "float32", "--report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "verdicts per framework and dtype" in printed and "no golden cases yet" in printed
    data = json.loads((out / "report.json").read_text())
    assert data["format"] == "refloss-conformance/1"
    counted = sum(sum(c.values()) for c in data["counts"].values())
    assert counted == len(data["outcomes"]) > 0
    assert {o["dtype"] for o in data["outcomes"]} == {"float64", "float32"}
    page = (out / "report.html").read_text()
    assert '<select id="ft">' in page and '<select id="fd">' in page and "<h2>embedding</h2>" in page
    md = (out / "report.md").read_text()
    assert "## Verdicts per framework and dtype" in md and "## Losses without golden cases" in md


def test_cli_fails_on_defect(synthetic, tmp_path):
    need("torch")
    _, directory = synthetic
    args = ["conform", "torch", "--golden", str(directory), "--losses", "soft_margin_loss", "--dtypes", "float32"]
    assert main(args) == 0
    assert main(args + ["--fail-on", "defect"]) == 1
    assert main(["conform", "torch", "--golden", str(directory), "--losses", "no_such_loss"]) == 2


def test_pytest_plugin(synthetic, tmp_path):
    need("torch")
    _, directory = synthetic
    # Load the plugin by module (the installed entry point, when present, is blocked to avoid loading it twice).
    base = [sys.executable, "-m", "pytest", "-p", "no:refloss-conformance", "-p", "refloss.conformance.pytest_plugin",
            "-p", "no:cacheprovider", "-q", f"--refloss-golden={directory}", "--refloss-losses=soft_margin_loss"]
    failed = subprocess.run(base + ["--refloss-framework=torch"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert failed.returncode == 1, failed.stdout[-2000:]
    assert "refloss[torch-soft_margin_loss-float32]" in failed.stdout and "value: inf" in failed.stdout
    assert "torch.nn.functional.soft_margin_loss" in failed.stdout  # the reproducer
    passed = subprocess.run(base + ["--refloss-framework=numpy", "--refloss-dtypes=float64"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert passed.returncode == 0, passed.stdout[-2000:]
    assert " passed" in passed.stdout and "failed" not in passed.stdout


def test_golden_without_cases_is_reported(synthetic):
    _, directory = synthetic
    g = load(directory)
    assert "l1_loss" in g.missing and "arcface_loss" in g.cases
    with pytest.raises(KeyError):
        load(directory, ["no_such_loss"])


# --------------------------------------------------------------------------------------------------
# Every framework on a slice of the published golden files.

SLICE = {"torch": 3, "pml": 3, "tensorflow": 3, "jax": 1}


@pytest.mark.parametrize("target", list(SLICE))
def test_framework_on_a_golden_slice(target, tmp_path):
    need(_MODULE[target])
    run = runner.run([target], REPO / "golden", per_loss=SLICE[target])
    assert target in run.targets, run.unavailable
    offered = [o for o in run.outcomes if o.verdict != "not offered"]
    if target != "pml" or offered:  # the margin family's golden files may not be published yet
        assert any(o.verdict == "pass" for o in offered)
    for o in run.defects():
        compile(o.reproducer, "<reproducer>", "exec")
        assert o.worst_ulp is not None or o.detail.startswith("exception")
    paths = report.write(run, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["torch", "pml", "tensorflow", "jax", "numpy"])
def test_framework_on_every_golden_case(target, tmp_path):
    if target != "numpy":
        need(_MODULE[target])
    run = runner.run([target], REPO / "golden")
    report.write(run, tmp_path)
    assert run.outcomes
    if target == "numpy":
        assert not [o for o in run.outcomes if o.dtype == "float64" and o.verdict != "pass"]
