"""refloss audit: the stress axes build what they say, the verdicts catch broken results, refloss is
clean in float64 on a reduced sweep, the known framework defects are found on their own, and the
report's files and links exist."""

import importlib
import importlib.metadata
import json
import math
import re

import numpy as np
import pytest

pytest.importorskip("mpmath")  # the oracle the audit measures against

from refloss import domains  # noqa: E402
from refloss.audit import main, run  # noqa: E402
from refloss.audit import report as audit_report  # noqa: E402
from refloss.audit.judge import Implementation, judge_point  # noqa: E402
from refloss.audit.sweep import exact, points, spread  # noqa: E402
from refloss.cases import sample  # noqa: E402
from refloss.golden import round_to  # noqa: E402
from refloss.loss import get  # noqa: E402


def _base(name, **params):
    loss = get(name)
    params = {**loss.defaults(), **params}
    case = sample(loss, params, "typical", np.random.default_rng(3))
    inputs = {s.name: a for s, a in zip(loss.inputs, case.inputs)}
    return loss, case.params, inputs, domains.stress_kinds(loss, case.params)


def _axis(loss, params, name):
    return next(a for a in domains.stress_axes(loss, params) if a.name == name)


def _cells(audit, implementation, dtype, part, axis=None, variant="defaults"):
    """``{level: (cell, result)}`` of one implementation, dtype and part along an axis."""
    return {r.point.level: (r.cell(implementation, dtype, part), r) for r in audit.results
            if (axis is None or r.point.axis == axis) and r.point.variant == variant}


# --------------------------------------------------------------------------------------------------
# Stress axes: checked against closed forms, not against themselves.


def _cosines(x, w, y):
    w_y = w[y]
    return np.sum(x * w_y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(w_y, axis=1))


@pytest.mark.parametrize("name", ["cos -> +1", "cos -> -1"])
def test_cosine_axes_set_the_target_cosine_exactly_at_8_bits(name):
    loss, params, inputs, kinds = _base("arcface_loss")
    axis = _axis(loss, params, name)
    sign = 1.0 if name.endswith("+1") else -1.0
    for _, b in axis.levels:
        moved = axis.apply(inputs, kinds, params, b)
        for key in ("features", "weights"):  # powers of two and 8-bit factors: the rounding is the identity
            np.testing.assert_array_equal(round_to(moved[key], "bfloat16"), moved[key])
        c = _cosines(moved["features"], moved["weights"], moved["labels"])
        np.testing.assert_allclose(c, sign / math.sqrt(1 + b * b), rtol=1e-15)


def test_theta_plus_m_axis_approaches_pi_from_below():
    loss, params, inputs, kinds = _base("arcface_loss")
    axis = _axis(loss, params, "theta+m -> pi")
    reached = 0
    for _, gap in axis.levels:
        moved = axis.apply(inputs, kinds, params, gap)
        if moved is None:  # the 8-bit grid cannot come within half the gap
            continue
        reached += 1
        theta = np.arccos(_cosines(moved["features"], moved["weights"], moved["labels"]))
        assert np.all(np.abs(math.pi - (theta + params["margin"]) - gap) <= gap / 2)
    assert reached >= 4


def test_box_axes_give_the_iou_of_their_geometry():
    loss, params, inputs, kinds = _base("giou_loss")

    def iou(p, t):
        iw = np.clip(np.minimum(p[:, 2], t[:, 2]) - np.maximum(p[:, 0], t[:, 0]), 0, None)
        ih = np.clip(np.minimum(p[:, 3], t[:, 3]) - np.maximum(p[:, 1], t[:, 1]), 0, None)
        area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
        return iw * ih / (area(p) + area(t) - iw * ih)

    offset = _axis(loss, params, "box offset")
    for _, d in offset.levels:  # a diagonal shift by d box sizes: overlap (1 - d)^2 of each box
        moved = offset.apply(inputs, kinds, params, d)
        o = max(0.0, 1 - d) ** 2
        np.testing.assert_allclose(iou(moved["pred"], moved["target"]), o / (2 - o), rtol=1e-15)
    size = _axis(loss, params, "box size -> 0")
    for _, a in size.levels:  # concentric, inside the target: IoU = a^2
        moved = size.apply(inputs, kinds, params, a)
        np.testing.assert_allclose(iou(moved["pred"], moved["target"]), a * a, rtol=1e-15)


def test_margin_axes_put_the_target_on_top_or_at_the_bottom():
    loss, params, inputs, kinds = _base("cross_entropy")
    y = inputs["target"]
    for name, pick in (("target margin", np.argmax), ("wrong margin", np.argmin)):
        axis = _axis(loss, params, name)
        moved = axis.apply(inputs, kinds, params, 10.0)
        np.testing.assert_array_equal(pick(moved["logits"], axis=1), y)


def test_mask_axis_empties_the_last_class_and_keeps_rows_summing():
    loss, params, inputs, kinds = _base("dice_loss")
    axis = _axis(loss, params, "mask positives -> empty")
    t = inputs["target"]
    counts = []
    for _, f in axis.levels:
        moved = axis.apply(inputs, kinds, params, f)["target"]
        np.testing.assert_allclose(moved.sum(axis=1), t.sum(axis=1), rtol=1e-15)
        counts.append(int(np.count_nonzero(moved[:, -1] > 0)))
    assert counts[0] == np.count_nonzero(t[:, -1] > 0) and counts[-2] == 1 and counts[-1] == 0
    assert counts == sorted(counts, reverse=True)


def test_spread_keeps_both_ends():
    levels = tuple(range(11))
    assert [i for i, _ in spread(levels, 4)] == [0, 3, 7, 10]
    assert [i for i, _ in spread(levels, None)] == list(range(11))


# --------------------------------------------------------------------------------------------------
# Verdicts: an implementation that is wrong in known ways is caught, each way by its name.


class _Broken:
    """A refloss-backed adapter whose results are spoiled in one named way."""

    name = "broken"
    dtypes = ("float64", "float32", "float16")

    def __init__(self, how):
        from refloss.conformance.numpy import NumpyAdapter

        self.inner = NumpyAdapter()
        self.how = how

    def offer(self, case):
        return self.inner.offer(case)

    def reproducer(self, call, case, dtype, detail=""):
        return self.inner.reproducer(call, case, dtype, detail)

    def execute(self, call, case, dtype):
        value, grads = self.inner.execute(call, case, dtype)
        if self.how == "raise":
            raise RuntimeError("broken kernel")
        if self.how == "relative 1e-9":
            value = value * (1 + 1e-9)
        grads = {n: g.copy() for n, g in grads.items()}
        g = grads["input"]
        if self.how == "nan":
            g.flat[0] = np.nan
        elif self.how == "inf":
            g.flat[0] = np.inf
        elif self.how == "sign":
            g[...] = -g
        return value, grads


@pytest.mark.parametrize("how, dtype, part, verdict", [
    ("relative 1e-9", "float64", "value", "inaccurate"),  # ~4.5e6 ULP of float64
    ("relative 1e-9", "float16", "value", "ok"),  # far below an ULP of float16
    ("nan", "float32", "gradient", "nan"),
    ("inf", "float32", "gradient", "inf"),
    ("sign", "float64", "gradient", "sign"),
    ("raise", "float32", "value", "exception"),
])
def test_judge_names_what_is_wrong(how, dtype, part, verdict):
    pts, _ = points(get("mse_loss"), None, ["value scale"])
    point = next(p for p in pts if p.level == "1")
    impl = Implementation("broken", "test", _Broken(how), "test")
    cells = judge_point(point, exact(point), [impl])
    cell = next(c for c in cells if (c.dtype, c.part) == (dtype, part))
    assert cell.verdict == verdict, cell
    if verdict != "ok":
        assert "mse_loss" in cell.reproducer


# --------------------------------------------------------------------------------------------------
# refloss itself is clean in float64 (and the sweep reached every axis's severe end).

CLEAN = [
    "cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "mse_loss", "gaussian_nll_loss",
    "poisson_nll_loss", "triplet_margin_loss", "arcface_loss", "dice_loss",
    "giou_loss", "softplus_logsumexp_loss", "logsumexp_hinge_loss", "lovasz_softmax_loss",
]


@pytest.mark.parametrize("name", CLEAN)
def test_refloss_float64_is_clean_on_a_reduced_sweep(name):
    audit = run([name], (), per_axis=3)
    loss = get(name)
    axes = domains.stress_axes(loss, loss.defaults())
    for axis in axes:  # every axis ran, out to its severe end (theta + m: as near pi as 8 bits reach)
        ran = [r.point.index for r in audit.results if r.point.axis == axis.name]
        assert len(ran) >= 2, axis.name
        assert axis.name == "theta+m -> pi" or max(ran) == len(axis.levels) - 1, axis.name
    bad = [f"{r.point.key}: {c.implementation} {c.part} {c.verdict} {c.error} {c.detail}" for r, c in audit.violations()]
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------------------------------
# Known defects the audit must find on its own.


def _installed(*packages):
    out = []
    for p in packages:
        try:
            importlib.import_module(p)
            out.append(p)
        except ImportError:
            pass
    return out


@pytest.fixture(scope="module")
def mse_audit():
    """mse_loss along the value scale, on refloss and (where installed) PyTorch."""
    return run(["mse_loss"], _installed("torch"), axes=["value scale"])


def _squared_overflow_levels(audit, implementation):
    flagged = []
    for level, (cell, r) in _cells(audit, implementation, "float16", "value").items():
        if cell.verdict == "inf":
            x, y = r.point.inputs
            exact = np.mean((x - y) ** 2)  # float64: exact to a few ULP here, independently of the oracle
            # finite in float16, but a square or the sum of the squares is not
            assert exact < 65504 and np.sum((x - y) ** 2) > 65504
            np.testing.assert_allclose(r.exact.value, exact, rtol=1e-14)
            flagged.append(float(level))
    return flagged


def test_float16_squared_error_overflows_in_refloss_float16(mse_audit):
    flagged = _squared_overflow_levels(mse_audit, "refloss")
    assert flagged and min(flagged) >= 100


def test_torch_float16_squared_error_overflows(mse_audit):
    pytest.importorskip("torch")
    flagged = _squared_overflow_levels(mse_audit, "torch")
    assert flagged and min(flagged) >= 100


def test_torch_soft_margin_overflows_in_float32_at_large_margins():
    pytest.importorskip("torch")
    audit = run(["soft_margin_loss"], ["torch"], axes=["wrong margin", "logit scale"])
    for axis in ("wrong margin", "logit scale"):
        cells = _cells(audit, "torch", "float32", "value", axis)
        inf_at = [float(level) for level, (c, _) in cells.items() if c.verdict == "inf"]
        assert inf_at and min(inf_at) >= 100, (axis, inf_at)
        for level, (c, r) in cells.items():
            if c.verdict == "inf":
                x, y = r.point.inputs
                np.testing.assert_allclose(r.exact.value, np.mean(np.logaddexp(0.0, -y * x)), rtol=1e-14)
    assert _cells(audit, "torch", "float32", "value", "wrong margin")["100"][0].verdict == "inf"


_BCE_FRAMEWORKS = {"torch": "torch", "jax": "optax", "tensorflow": "tensorflow"}


@pytest.fixture(scope="module")
def bce_audit():
    """binary_cross_entropy_with_logits at its mildest and infinite target margins, on every installed framework."""
    found = [f for f, package in _BCE_FRAMEWORKS.items() if _installed(package)]
    return run(["binary_cross_entropy_with_logits"], found, per_axis=2, axes=["target margin"])


@pytest.mark.parametrize("framework", list(_BCE_FRAMEWORKS))
def test_bce_with_logits_is_nan_at_infinite_logits(bce_audit, framework):
    pytest.importorskip(_BCE_FRAMEWORKS[framework])
    (cell, r) = _cells(bce_audit, framework, "float32", "value")["inf"]
    logits, target = r.point.inputs
    assert np.all(np.isinf(logits)) and np.all((logits > 0) == (target == 1))  # every logit infinitely right
    assert float(r.exact.value) == 0.0
    assert cell.verdict == "nan", cell
    assert r.cell("refloss", "float32", "value").verdict == "ok"


def test_optax_sigmoid_focal_gradient_at_saturated_logits_for_gamma_below_one():
    pytest.importorskip("optax")
    version = tuple(int(v) for v in re.findall(r"\d+", importlib.metadata.version("optax"))[:3])
    audit = run(["sigmoid_focal_loss"], ["jax"], per_axis=3, axes=["target margin"])
    cells = _cells(audit, "jax", "float32", "gradient", variant="gamma=0.5")
    finite = {level: c for level, (c, r) in cells.items() if level != "inf"}
    assert "1e3" in finite  # sigmoid(1000) is 1 in float32 and float64: saturated
    nan = [level for level, c in finite.items() if c.verdict == "nan"]
    if version >= (0, 2, 5):
        # optax 0.2.5 computes the focal weight (1 - p_t)^gamma in log space: the NaN gradient
        # (0^(gamma - 1) * 0 at p_t = 1) is gone, and the audit must report these points NaN-free.
        assert not nan, finite
    else:
        assert nan, finite


def test_pml_arcface_gradient_is_nan_at_unit_cosine():
    pytest.importorskip("pytorch_metric_learning")
    audit = run(["arcface_loss"], ["pml"], per_axis=2, axes=["cos -> +1"])
    cell, r = _cells(audit, "pml", "float32", "gradient")["|c|=1"]
    x, y, w = r.point.inputs
    np.testing.assert_array_equal(_cosines(x, w, y), 1.0)  # the feature is parallel to its class weight
    assert cell.verdict == "nan", cell
    assert r.cell("refloss", "float64", "gradient").verdict == "ok"


# --------------------------------------------------------------------------------------------------
# The report.


def _links(html_text):
    return re.findall(r"href='([^']+)'", html_text)


def test_report_files_and_links(tmp_path):
    audit = run(["mse_loss", "soft_margin_loss"], (), per_axis=3)
    written = audit_report.write(audit, tmp_path)
    for name in ("index.html", "report.md", "report.json"):
        assert (tmp_path / name).stat().st_size > 0
    links = _links((tmp_path / "index.html").read_text())
    assert "report.json" in links and "report.md" in links
    for link in links:
        assert (tmp_path / link).is_file(), link
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["format"] == "refloss-audit/1" and len(data["points"]) == len(audit.results)
    assert data["refloss_float64"]["clean"] is True
    if audit_report._matplotlib() is not None:
        pngs = [l for l in links if l.endswith(".png")]
        assert len(pngs) == len(written["figures"]) == 2 * len(audit.implementations)
        for png in pngs:
            assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_matplotlib_writes_the_tables(tmp_path, monkeypatch):
    audit = run(["mse_loss"], (), per_axis=2)
    monkeypatch.setattr(audit_report, "_matplotlib", lambda: None)
    written = audit_report.write(audit, tmp_path)
    assert written["figures"] == [] and any("matplotlib" in m for m in written["messages"])
    assert not [l for l in _links((tmp_path / "index.html").read_text()) if l.endswith(".png")]
    assert "mse_loss" in (tmp_path / "report.md").read_text()


def test_main_writes_the_report_and_rejects_unknown_names(tmp_path, capsys):
    assert main(["--losses", "mse_loss", "--frameworks", "none", "--points", "2", "--out", str(tmp_path), "--no-figures"]) == 0
    assert (tmp_path / "index.html").is_file()
    assert "refloss float64: clean" in capsys.readouterr().out
    assert main(["--losses", "mse_loss", "--frameworks", "bogus", "--out", str(tmp_path)]) == 2
    assert main(["--losses", "mse_loss", "--axes", "bogus axis", "--out", str(tmp_path)]) == 2
