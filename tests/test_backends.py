"""The backends: selection (refloss.use_backend, REFLOSS_BACKEND, array type), the Numba kernels'
agreement with the portable code (backends/numpy) and with the golden files, their vectorizable
``exp`` / ``log1p`` over the whole float range, determinism across thread counts, and the CuPy
kernels (which run only where a CUDA device is present; their CUDA sources are compiled by nvcc
wherever it is installed, device or not)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import refloss
import refloss.backends as backends
from refloss import golden
from refloss.backends import use_backend

ROOT = Path(__file__).resolve().parents[1]
numba = pytest.importorskip("numba")
from refloss.backends.numba import ULP_BOUND, _adapters, _math  # noqa: E402


def ulp_error(got, want, scale=None):
    """Largest ``|got - want|`` in ulps of ``want`` (of ``scale`` where given: a row's or an array's
    largest magnitude, for entries that are differences of cancelling terms). Non-finite entries must
    agree exactly (NaN with NaN, infinities by sign)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    finite = np.isfinite(want)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    assert np.all(same[~finite]), f"non-finite entries differ: {got[~finite & ~same]} vs {want[~finite & ~same]}"
    if not finite.any():
        return 0.0
    ref = np.abs(want) if scale is None else np.broadcast_to(np.asarray(scale, dtype=want.dtype), want.shape)
    ulp = np.spacing(ref[finite].astype(want.dtype)).astype(np.float64)
    return float(np.max(np.abs(got[finite].astype(np.float64) - want[finite].astype(np.float64)) / ulp))


def both(loss, *inputs, **params):
    """``(numpy backend, numba backend)`` results of ``loss.value_and_grad``."""
    with use_backend("numpy"):
        want = loss.value_and_grad(*inputs, **params)
    with use_backend("numba"):
        got = loss.value_and_grad(*inputs, **params)
    return want, got


# --------------------------------------------------------------------------------------------------
# Selection


def test_available_backends():
    names = backends.available()
    assert names[0] == "numpy" and "numba" in names
    assert set(names) <= set(backends.NAMES)


def test_use_backend_as_call_and_as_context_manager():
    start = backends.active()
    try:
        use_backend("numba")
        assert backends.active() == "numba"
        with use_backend("numpy") as chosen:
            assert chosen.name == "numpy" and backends.active() == "numpy"
            with use_backend("numba"):
                assert backends.active() == "numba"
            assert backends.active() == "numpy"
        assert backends.active() == "numba"
    finally:
        use_backend(start)
    assert backends.active() == start
    assert refloss.use_backend is use_backend


def test_unknown_backend_names_the_available_ones():
    with pytest.raises(ValueError, match="available: numpy, numba") as err:
        use_backend("fortran")
    assert "known backends" in str(err.value)
    before = backends.active()
    with pytest.raises(ValueError):
        with use_backend("fortran"):
            pass
    assert backends.active() == before


@pytest.mark.parametrize("value, expect", [("numba", "numba"), ("numpy", "numpy"), ("bogus", "ValueError")])
def test_environment_variable_is_read_at_first_use(value, expect):
    code = (
        "import numpy as np, refloss, refloss.backends as b\n"
        "try:\n"
        "    refloss.cross_entropy(np.zeros((2, 3)), np.array([0, 1]))\n"
        "    print(b.active())\n"
        "except ValueError as e:\n"
        "    print('ValueError', e)\n"
    )
    env = dict(os.environ, REFLOSS_BACKEND=value)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split()[0] == expect
    if expect == "ValueError":
        assert "REFLOSS_BACKEND" in out and "available: numpy" in out


def test_dispatch_follows_selection_and_array_type(monkeypatch):
    calls = []
    run = _adapters.CROSS_ENTROPY._run
    monkeypatch.setattr(_adapters.CROSS_ENTROPY, "_run", lambda *a: calls.append(1) or run(*a))
    logits, target = np.zeros((3, 4)), np.array([0, 1, 2])
    with use_backend("numpy"):
        refloss.cross_entropy(logits, target)
    assert calls == []
    with use_backend("numba"):
        refloss.cross_entropy(logits, target)
        refloss.cross_entropy.value_and_grad(logits, target)
        refloss.cross_entropy.unreduced(logits, target)
        strict = pytest.importorskip("array_api_strict")
        refloss.cross_entropy(strict.asarray(logits), strict.asarray(target))  # not a NumPy array: portable
    assert calls == [1, 1, 1]
    assert backends.kernel("cross_entropy", [logits, target]) is None  # selection restored to numpy
    assert backends.kernel("nll_loss", [logits, target]) is None


# --------------------------------------------------------------------------------------------------
# exp, log1p and the order keys, over the whole float range


def test_exp_float32_over_every_binade():
    # a dense sweep of float32 bit patterns (every 1009th, all signs and exponents) plus specials
    worst = 0.0
    for start in range(3):
        x = np.arange(start * 337, 2**32, 1009 * 3, dtype=np.uint64).astype(np.uint32).view(np.float32)
        got = _math.exp(x)
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            exact = np.exp(x.astype(np.float64))  # float64 exp: exact to 2^-29 float32 ulps
            want = exact.astype(np.float32)
        finite = np.isfinite(want) & np.isfinite(x)
        assert np.array_equal(got[~finite], want[~finite], equal_nan=True)
        ulp = np.spacing(want[finite]).astype(np.float64)
        worst = max(worst, float(np.max(np.abs(got[finite] - exact[finite]) / ulp)))
    assert worst <= _math.EXP_ULP


def test_exp_float64_over_every_binade():
    step = 2**64 // 2_000_003
    x = np.arange(0, 2**64 - step, step, dtype=np.uint64).view(np.float64)
    x = np.concatenate([x[np.isfinite(x)], np.random.default_rng(0).uniform(-745.2, 709.8, 500_000)])
    got = _math.exp(x)
    outside = np.abs(x) > 1000  # 0 or inf: the extended reference would overflow too
    assert np.array_equal(got[outside], np.where(x[outside] > 0, np.inf, 0.0))
    x, got = x[~outside], got[~outside]
    exact = np.exp(x.astype(np.longdouble))  # x87 extended: 11 more bits
    with np.errstate(over="ignore"):
        want = exact.astype(np.float64)
    normal = np.isfinite(want) & (want != 0)
    assert np.array_equal(got[~normal], want[~normal])
    ulp = np.spacing(want[normal]).astype(np.longdouble)
    assert float(np.max(np.abs(got[normal] - exact[normal]) / ulp)) <= _math.EXP_ULP


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_special_values(dtype):
    fi = np.finfo(dtype)
    edges = [np.log(fi.max), np.log(fi.smallest_subnormal), np.log(fi.smallest_normal)]
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, *edges], dtype=dtype)
    x = np.concatenate([x, np.nextafter(x[-3:], np.inf), np.nextafter(x[-3:], -np.inf), [fi.max, -fi.max]]).astype(dtype)
    got = _math.exp(x)
    with np.errstate(over="ignore", under="ignore"):
        want = np.exp(x.astype(np.float64)).astype(dtype)
    assert np.array_equal(got[:5], np.array([np.nan, np.inf, 0.0, 1.0, 1.0], dtype), equal_nan=True)
    assert ulp_error(got, want) <= 1.5  # want is itself rounded: EXP_ULP + 1/2
    assert not np.any(np.isnan(got[1:]))


def test_log1p_on_the_unit_interval():
    bits = np.linspace(0, int(np.float64(1.0).view(np.uint64)), 2_000_001).astype(np.uint64)
    u = np.concatenate([bits.view(np.float64), np.random.default_rng(1).uniform(0, 1, 500_000), [np.sqrt(2) - 1, 2**-1074]])
    got = _math.log1p(u)
    exact = np.log1p(u.astype(np.longdouble))
    want = exact.astype(np.float64)
    nonzero = want != 0
    assert np.array_equal(got[~nonzero], want[~nonzero])
    ulp = np.spacing(want[nonzero]).astype(np.longdouble)
    assert float(np.max(np.abs(got[nonzero] - exact[nonzero]) / ulp)) <= _math.LOG1P_ULP
    assert np.isnan(_math.log1p(np.array([np.nan]))[0])
    # float32: every 7th bit pattern of [0, 1], against float64
    u32 = np.arange(0, int(np.float32(1.0).view(np.uint32)) + 1, 7, dtype=np.uint64).astype(np.uint32).view(np.float32)
    got32, exact32 = _math.log1p(u32), np.log1p(u32.astype(np.float64))
    want32 = exact32.astype(np.float32)
    nonzero = want32 != 0
    assert np.array_equal(got32[~nonzero], want32[~nonzero])
    assert float(np.max(np.abs(got32[nonzero] - exact32[nonzero]) / np.spacing(want32[nonzero]).astype(np.float64))) <= _math.LOG1P_ULP


# --------------------------------------------------------------------------------------------------
# Cross-entropy


def _ce_inputs(rng, dtype, n=12, c=300, shape=()):
    logits = (rng.standard_normal((n, c) + shape) * 4).astype(dtype)
    target = rng.integers(0, c, (n,) + shape)
    return logits, target


CE_PARAMS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"label_smoothing": 0.1},
    {"weight": "random", "ignore_index": 1},
    {"weight": "random", "label_smoothing": 0.25, "reduction": "sum"},
    {"weight": "heavy", "label_smoothing": 0.05},
]


def _ce_params(params, rng, dtype, c):
    params = dict(params)
    if params.get("weight") == "random":
        params["weight"] = rng.uniform(0.0, 2.0, c).astype(dtype)
    elif params.get("weight") == "heavy":
        params["weight"] = np.full(c, 1e-3, dtype)
        params["weight"][7] = 10.0  # one class holds more than half the weight
    return params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("params", CE_PARAMS, ids=lambda p: ",".join(p) or "default")
def test_cross_entropy_matches_the_portable_code(dtype, params):
    rng = np.random.default_rng(3)
    logits, target = _ce_inputs(rng, dtype)
    target[2] = 1  # an ignored sample where ignore_index=1
    target[5] = 7
    logits[4, :] = logits[4, target[4]] - 60  # a confident row: rest ~ e^-60
    logits[4, target[4]] += 60
    logits[6, :5] = logits[6].max()  # tied maxima
    params = _ce_params(params, rng, dtype, logits.shape[1])
    cot = rng.standard_normal(target.shape).astype(dtype) if params.get("reduction") == "none" else None
    (v0, (g0, _)), (v1, (g1, t1)) = both(refloss.cross_entropy, logits, target, cotangent=cot, **params)
    assert t1 is None
    bound = ULP_BOUND
    assert ulp_error(v1, v0) <= bound
    if "label_smoothing" in params:  # an entry cancels ((A - a) p - a (1 - p)): normwise, per row
        assert ulp_error(g1, g0, np.max(np.abs(g0), axis=1, keepdims=True)) <= bound
    else:
        assert ulp_error(g1, g0) <= bound


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_special_rows(dtype):
    rng = np.random.default_rng(4)
    logits, target = _ce_inputs(rng, dtype, n=8, c=70)
    logits[0, 3] = -np.inf  # a -inf entry
    logits[1, :] = -np.inf  # a row of -inf: NaN
    logits[2, 5] = np.inf  # +inf: NaN
    logits[3, 6] = np.nan
    logits[4, target[4]] = -np.inf  # the target at -inf: inf loss
    logits[5, :] = np.finfo(dtype).max / 2  # huge equal logits
    logits[6, :] = 0
    logits[6, 9] = -np.finfo(dtype).max
    target[7] = -100
    logits[7, 0] = np.nan  # ignored: loss 0, gradient NaN (0 times NaN probabilities)
    weight = rng.uniform(0.5, 1.5, 70).astype(dtype)
    weight[target[0]] = 0  # a zero weight
    for params in ({"reduction": "none"}, {"reduction": "none", "weight": weight, "label_smoothing": 0.2}):
        (v0, (g0, _)), (v1, (g1, _)) = both(refloss.cross_entropy, logits, target, **params)
        assert ulp_error(v1, v0) <= ULP_BOUND
        assert np.array_equal(np.isnan(g1), np.isnan(g0)) and np.array_equal(np.isinf(g1), np.isinf(g0))
        ok = np.isfinite(g0).all(axis=1)
        scale = np.max(np.abs(g0[ok]), axis=1, keepdims=True)
        assert ulp_error(g1[ok], g0[ok], scale) <= ULP_BOUND


@pytest.mark.parametrize("axis", [1, -1])
def test_cross_entropy_any_class_axis_and_trailing_dimensions(axis):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((3, 6, 4, 5))
    target = rng.integers(0, 6, (3, 4, 5))
    if axis == -1:
        logits = np.moveaxis(logits, 1, -1).copy()
    (v0, (g0, _)), (v1, (g1, _)) = both(refloss.cross_entropy, logits, target, axis=axis, label_smoothing=0.1)
    assert g1.shape == logits.shape
    assert ulp_error(v1, v0) <= ULP_BOUND
    assert ulp_error(g1, g0, np.max(np.abs(g0))) <= ULP_BOUND


def test_cross_entropy_every_target_ignored_is_nan_as_the_portable_code():
    logits, target = np.zeros((2, 3)), np.array([-100, -100])
    (v0, (g0, _)), (v1, (g1, _)) = both(refloss.cross_entropy, logits, target)
    assert np.isnan(v0) and np.isnan(v1) and np.isnan(g0).all() and np.isnan(g1).all()


# --------------------------------------------------------------------------------------------------
# Elementwise sigmoid losses


def _binary_inputs(rng, dtype, shape=(4, 3, 17)):
    x = (rng.standard_normal(shape) * 6).astype(dtype)
    x.flat[:6] = [np.inf, -np.inf, 0.0, -0.0, 80.0, -80.0]
    y = (rng.uniform(size=shape) < 0.5).astype(dtype)
    return x, y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("params", [{}, {"label_smoothing": 0.2, "reduction": "none"}, {"weight": True, "pos_weight": True, "reduction": "sum"}], ids=lambda p: ",".join(p) or "default")
def test_bce_with_logits_matches_the_portable_code(dtype, params):
    rng = np.random.default_rng(6)
    x, y = _binary_inputs(rng, dtype)
    params = dict(params)
    if params.get("weight"):
        params["weight"] = rng.uniform(0, 2, x.shape[-1]).astype(dtype)
        params["pos_weight"] = rng.uniform(0, 3, (1, x.shape[1], 1)).astype(dtype)
    cot = rng.standard_normal(x.shape).astype(dtype) if params.get("reduction") == "none" else None
    (v0, g0), (v1, g1) = both(refloss.binary_cross_entropy_with_logits, x, y, cotangent=cot, **params)
    bound = ULP_BOUND
    assert ulp_error(v1, v0) <= bound
    # both gradients are differences of two terms, (1 - y) sigmoid(x) - pw y sigmoid(-x) and
    # pw softplus(-x) - softplus(x), which cancel (smoothed targets, x near 0): in ulps of the terms
    terms = np.abs(g0[0]) + np.max(np.abs(g0[0]))
    assert ulp_error(g1[0], g0[0], terms if params.get("label_smoothing") else None) <= bound
    assert ulp_error(g1[1], g0[1], np.abs(g0[1]) + np.abs(x).astype(dtype) + 1) <= bound


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (None, 0.0), (0.5, 0.5), (0.25, 3.0)])
def test_sigmoid_focal_matches_the_portable_code(dtype, alpha, gamma):
    rng = np.random.default_rng(7)
    x, y = _binary_inputs(rng, dtype)
    y.flat[-5:] = rng.uniform(size=5)  # soft targets
    (v0, g0), (v1, g1) = both(refloss.sigmoid_focal_loss, x, y, alpha=alpha, gamma=gamma, reduction="none")
    bound = ULP_BOUND
    assert ulp_error(v1, v0) <= bound
    # the gradient is a difference of the positive and negative terms: in ulps of their sum
    p = 1 / (1 + np.exp(-np.clip(x.astype(np.float64), -700, 700)))
    assert ulp_error(g1[0], g0[0], np.abs(g0[0]) + (p * (1 - p)).astype(dtype)) <= bound
    assert g1[1] is None


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_a_reduction_cotangent_reaches_the_kernel_as_one_value(reduction, monkeypatch):
    # sum and mean give every element the same cotangent: reduce_vjp returns it as a broadcast view
    # (no array as large as the input) and the kernel reads the one value; values as materialised
    from refloss.backends import _plan
    from refloss.loss import reduce_vjp

    rng = np.random.default_rng(11)
    x, y = _binary_inputs(rng, np.float32)
    cot = np.float32(0.75)
    g = reduce_vjp(np, cot, x, reduction)
    if reduction == "none":
        assert g is cot
    else:
        assert g.shape == x.shape and all(s == 0 for s in g.strides)
        materialised = np.ones_like(x) * cot / (x.size if reduction == "mean" else 1)
        assert g.dtype == materialised.dtype and np.array_equal(g, materialised)
    seen = []
    original = _plan.cotangent
    monkeypatch.setattr(_plan, "cotangent", lambda *a: seen.append(original(*a)) or seen[-1])
    cotangent = rng.standard_normal(x.shape).astype(np.float32) if reduction == "none" else None
    (v0, g0), (v1, g1) = both(refloss.binary_cross_entropy_with_logits, x, y, reduction=reduction, cotangent=cotangent)
    (values, uniform), = seen
    assert uniform == (reduction != "none") and values.size == (1 if uniform else x.size)
    assert ulp_error(g1[0], g0[0]) <= ULP_BOUND


def test_kernels_decline_what_they_do_not_cover():
    rng = np.random.default_rng(8)
    x, y = _binary_inputs(rng, np.float64)
    (v0, g0), (v1, g1) = both(refloss.sigmoid_focal_loss, x, y, gamma=1.7)  # no kernel power: portable
    assert np.array_equal(v0, v1) and np.array_equal(g0[0], g1[0])
    f = rng.standard_normal((5, 4))
    w = rng.standard_normal((6, 4))
    labels = rng.integers(0, 6, 5)
    (v0, g0), (v1, g1) = both(refloss.arcface_loss, f, labels, w)  # float64 margins: portable
    assert np.array_equal(v0, v1) and np.array_equal(g0[0], g1[0]) and np.array_equal(g0[2], g1[2])


# --------------------------------------------------------------------------------------------------
# Margin losses (float32 kernels computing in float64)

MARGINS = [
    ("cosface_loss", {}),
    ("arcface_loss", {}),
    ("arcface_loss", {"easy_margin": True, "scale": 30.0}),
    ("arcface_loss", {"fallback": "none", "gradient": "straight_through", "margin": 1.2}),
    ("combined_margin_loss", {}),
    ("combined_margin_loss", {"m1": 1.35, "m2": 0.0}),
]


@pytest.mark.parametrize("name, params", MARGINS, ids=[f"{n}-{','.join(p)}" for n, p in MARGINS])
def test_margin_kernels_are_float32_accurate(name, params):
    loss = refloss.get(name)
    rng = np.random.default_rng(9)
    f = rng.standard_normal((24, 16)).astype(np.float32)
    w = rng.standard_normal((40, 16)).astype(np.float32)
    labels = rng.integers(0, 40, 24)
    f[3] = w[labels[3]] * 2  # cos = 1 exactly at a target
    f[4] = -w[labels[4]]  # cos = -1
    cot = rng.standard_normal(24).astype(np.float32)
    with use_backend("numba"):
        v1, g1 = loss.value_and_grad(f, labels, w, cotangent=cot, reduction="none", **params)
    v64, g64 = loss.value_and_grad(f.astype(np.float64), labels, w.astype(np.float64), cotangent=cot.astype(np.float64), reduction="none", **params)
    # the portable code's float64 answer, rounded once to float32, is the reference: the kernel is
    # within an ulp of it (the portable float32 code itself is within a few more)
    assert ulp_error(v1, v64.astype(np.float32)) <= 1
    for got, want in ((g1[0], g64[0]), (g1[2], g64[2])):
        assert ulp_error(got, want.astype(np.float32), np.max(np.abs(want))) <= 1


# --------------------------------------------------------------------------------------------------
# Golden files and determinism

GOLDEN = ["cross_entropy", "binary_cross_entropy_with_logits", "sigmoid_focal_loss"]


@pytest.mark.parametrize("name", GOLDEN)
def test_numba_backend_reproduces_the_golden_files(name, monkeypatch):
    loss = refloss.get(name)
    cases = golden.read_cases(ROOT / "golden" / loss.family / f"{name}.jsonl")
    taken = []
    kernel = backends.numba.kernel(name)
    run = kernel._run
    monkeypatch.setattr(kernel, "_run", lambda *a: taken.append(1) or run(*a))
    with use_backend("numba"):
        results = [golden.check_case(case) for case in cases]
    assert [p for _, _, p in results if p] == []
    assert len(taken) >= len(cases) * 0.8  # the kernel took (nearly) every case; the rest declined


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads to compare")
def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(10)
    logits, target = _ce_inputs(rng, np.float32, n=64, c=1000)
    x, y = _binary_inputs(rng, np.float32, shape=(64, 1000))
    runs = []
    before = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            with use_backend("numba"):
                runs.append(
                    (refloss.cross_entropy.value_and_grad(logits, target, label_smoothing=0.1, reduction="none"),
                     refloss.binary_cross_entropy_with_logits.value_and_grad(x, y, reduction="none"))
                )
    finally:
        numba.set_num_threads(before)
    (ce1, bce1), (ce2, bce2) = runs
    for a, b in ((ce1[0], ce2[0]), (ce1[1][0], ce2[1][0]), (bce1[0], bce2[0]), (bce1[1][0], bce2[1][0])):
        assert a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------------------------------
# CuPy (only where CuPy sees a CUDA device; skipped cleanly elsewhere)


@pytest.fixture
def cupy():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as exc:  # noqa: BLE001 - no driver
        pytest.skip(f"no CUDA device ({exc})")
    assert "cupy" in backends.available()
    return cp


CUPY_CASES = [
    ("cross_entropy", lambda rng: _ce_inputs(rng, np.float32, n=40, c=3000), {"label_smoothing": 0.1}),
    ("cross_entropy", lambda rng: _ce_inputs(rng, np.float64, n=40, c=300), {"weight": "random", "ignore_index": 1}),
    ("binary_cross_entropy_with_logits", lambda rng: _binary_inputs(rng, np.float32), {}),
    ("sigmoid_focal_loss", lambda rng: _binary_inputs(rng, np.float64), {"gamma": 2.0}),
]


@pytest.mark.parametrize("name, make, params", CUPY_CASES, ids=[c[0] for c in CUPY_CASES])
def test_cupy_kernels_match_the_portable_code(cupy, name, make, params):
    loss = refloss.get(name)
    rng = np.random.default_rng(11)
    inputs = make(rng)
    params = _ce_params(params, rng, inputs[0].dtype, inputs[0].shape[1]) if name == "cross_entropy" else params
    want = loss.value_and_grad(*inputs, **params)
    dev = [cupy.asarray(a) for a in inputs]
    dev_params = {k: cupy.asarray(v) if isinstance(v, np.ndarray) else v for k, v in params.items()}
    assert backends.kernel(name, dev) is not None
    got = loss.value_and_grad(*dev, **dev_params)
    with use_backend("cupy"):  # NumPy inputs travel to the device and back
        host = loss.value_and_grad(*inputs, **params)
    assert isinstance(host[0], np.ndarray) and isinstance(got[0], cupy.ndarray)
    for result in (host, (cupy.asnumpy(got[0]), tuple(None if g is None else cupy.asnumpy(g) for g in got[1]))):
        assert ulp_error(result[0], want[0]) <= ULP_BOUND
        for g_got, g_want in zip(result[1], want[1]):
            if g_want is not None:
                assert ulp_error(g_got, g_want, np.max(np.abs(g_want[np.isfinite(g_want)]))) <= ULP_BOUND


def test_cupy_margin_kernel_is_float32_accurate(cupy):
    rng = np.random.default_rng(12)
    f = rng.standard_normal((24, 16)).astype(np.float32)
    w = rng.standard_normal((40, 16)).astype(np.float32)
    labels = rng.integers(0, 40, 24)
    v64, g64 = refloss.arcface_loss.value_and_grad(f.astype(np.float64), labels, w.astype(np.float64))
    v, g = refloss.arcface_loss.value_and_grad(cupy.asarray(f), cupy.asarray(labels), cupy.asarray(w))
    assert ulp_error(cupy.asnumpy(v), v64.astype(np.float32)) <= 1
    for got, want in ((g[0], g64[0]), (g[2], g64[2])):
        assert ulp_error(cupy.asnumpy(got), want.astype(np.float32), np.max(np.abs(want))) <= 1


# --------------------------------------------------------------------------------------------------
# Triplet margin (float32 rows in float64; the rows that could cancel go to the portable code)


@pytest.mark.parametrize("params", [{}, {"swap": True, "margin": 12.0}, {"eps_placement": "sum", "margin": 0.2}, {"eps": 0.0}],
                         ids=["default", "swap", "sum", "no-eps"])
def test_triplet_kernel_is_float32_accurate(params, monkeypatch):
    rng = np.random.default_rng(13)
    a = rng.standard_normal((64, 32)).astype(np.float32)
    p = (a + 0.3 * rng.standard_normal(a.shape)).astype(np.float32)
    n = rng.standard_normal(a.shape).astype(np.float32)
    n[5] = a[5] + (p[5] - a[5]) * np.float32(1.0001)  # u_ap and u_an nearly parallel: refined
    n[6] = p[6]  # d(p, n) = 0
    p[7, 0] = np.nan
    refined = []
    forward = refloss.triplet_margin_loss.forward
    monkeypatch.setattr(refloss.triplet_margin_loss, "forward", lambda xp, *x, **k: refined.append(x[0].shape[0]) or forward(xp, *x, **k))
    cot = rng.standard_normal(64).astype(np.float32)
    with use_backend("numba"):
        v1, g1 = refloss.triplet_margin_loss.value_and_grad(a, p, n, reduction="none", cotangent=cot, **params)
    assert refined and refined[0] < 64 // 4  # a few rows, not the batch
    v64, g64 = refloss.triplet_margin_loss.value_and_grad(*(x.astype(np.float64) for x in (a, p, n)), reduction="none", cotangent=cot.astype(np.float64), **params)
    assert ulp_error(v1, v64.astype(np.float32)) <= 1
    for got, want in zip(g1, g64):
        finite = np.isfinite(want).all(axis=1)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert ulp_error(got[finite], want[finite].astype(np.float32), np.max(np.abs(want[finite]), axis=1, keepdims=True) + 1e-30) <= 1


# --------------------------------------------------------------------------------------------------
# The CUDA sources of the CuPy backend, compiled without CuPy or a GPU where nvcc is installed: a
# syntax or type error would otherwise surface only on a machine with a device.


def _cuda_sources():
    """``(softmax source, [(name, in params, out params, body, preamble)])`` read from
    backends/cupy/_kernels.py without importing it (importing needs CuPy)."""
    import ast

    tree = ast.parse((ROOT / "backends" / "cupy" / "_kernels.py").read_text())
    strings = {}

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return strings[node.id]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return value(node.left) + value(node.right)
        raise ValueError(ast.dump(node))

    kernels = []
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)):
            continue
        target, v = node.targets[0].id, node.value
        if isinstance(v, ast.Call) and getattr(v.func, "attr", "") == "ElementwiseKernel":
            ins, outs, body, name = (value(a) for a in v.args[:4])
            preamble = next((value(k.value) for k in v.keywords if k.arg == "preamble"), "")
            kernels.append((name, ins, outs, body, preamble))
        else:
            try:
                strings[target] = value(v)
            except (ValueError, KeyError):
                pass
    return strings["_SOFTMAX_SOURCE"], kernels


_CUPY_TYPES = "typedef float float32;\ntypedef double float64;\ntypedef int int32;\ntypedef long long int64;\n"


def _elementwise_harness(name, ins, outs, body):
    """The body of a CuPy ElementwiseKernel as a device function template (inputs by value, outputs
    by reference, ``T`` the type parameter, CuPy's dtype names as typedefs), instantiated for float
    and double."""
    params = [p.strip() for p in ins.split(",")] + [p.strip().replace(" ", "& ", 1) for p in outs.split(",")]
    sig = ", ".join(params)
    concrete = lambda t: ", ".join(p.replace("T ", t + " ", 1) if p.startswith("T ") else p.replace("T& ", t + "& ", 1) for p in params)
    return f"template <typename T> __device__ void {name}({sig}) {{\n{body}\n}}\n" + "".join(
        f"template __device__ void {name}<{t}>({concrete(t)});\n" for t in ("float", "double")
    )


@pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="nvcc (the CUDA compiler) is not installed")
@pytest.mark.parametrize("ctype", ["float", "double"])
def test_cuda_sources_compile(ctype, tmp_path):
    softmax, kernels = _cuda_sources()
    assert [k[0] for k in kernels] == ["refloss_bce_with_logits", "refloss_sigmoid_focal"]
    source = softmax.replace("\n#define BLOCK 256\n", f"\n#define BLOCK 256\ntypedef {ctype} T;\n", 1)
    assert f"typedef {ctype} T;" in source  # the launcher's substitution still matches
    source = source.replace("typedef", _CUPY_TYPES + "typedef", 1)
    for preamble in dict.fromkeys(k[4] for k in kernels):
        source += preamble
    source += "".join(_elementwise_harness(*k[:4]) for k in kernels)
    path = tmp_path / "kernels.cu"
    path.write_text(source)
    done = subprocess.run(["nvcc", "--std=c++11", "-ptx", "-arch=sm_80", str(path), "-o", str(tmp_path / "kernels.ptx")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ptx = (tmp_path / "kernels.ptx").read_text()
    assert ".entry softmax_ce" in ptx
