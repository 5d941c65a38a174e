"""Golden files: the committed ones verify, damage is reported by name, builds are byte-for-byte
deterministic, inputs are exact in their dtype, and the README's reader runs without refloss."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refloss import golden
from refloss.cli import main

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "golden"
#: cheap losses for builds inside the tests (the first two that have an oracle are used)
CHEAP = ("soft_margin_loss", "mse_loss", "l1_loss", "log_cosh_loss", "hinge_embedding_loss")


def _cheap_losses(k=2):
    mp = pytest.importorskip("refloss.mp")
    pytest.importorskip("mpmath")
    have = [name for name in CHEAP if name in mp.load()]
    assert len(have) >= k, f"no oracle for the cheap losses {CHEAP}: the build cannot be tested"
    return have[:k]


def _quick_build(out, losses):
    """A small build (two reductions, a few cases a loss): the full path through build, fast."""
    report = golden.build(out, losses, min_cases=6, reductions=("none", "mean"))
    assert report.ok, report.problems
    return out


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory):
    """The committed golden/ directory, or, while it is still empty, a quick build of cheap losses."""
    if (GOLDEN / golden.MANIFEST).exists():
        return GOLDEN
    return _quick_build(tmp_path_factory.mktemp("golden"), _cheap_losses())


def _files(directory):
    return sorted(p for p in directory.glob("*/*.jsonl"))


def _verify(directory, *extra):
    return main(["golden", "verify", "--dir", str(directory), *extra])


def test_golden_files_verify(golden_dir, capsys):
    assert _files(golden_dir), f"{golden_dir} holds no golden files"
    rc = _verify(golden_dir)
    out = capsys.readouterr().out
    assert rc == 0, out
    manifest = json.loads((golden_dir / golden.MANIFEST).read_text())
    assert set(manifest["files"]) == {p.relative_to(golden_dir).as_posix() for p in _files(golden_dir)}
    if golden_dir == GOLDEN:
        for entry in manifest["files"].values():
            assert entry["cases"] >= golden.MIN_CASES, entry


def _damaged_copy(golden_dir, tmp_path):
    copy = tmp_path / "golden"
    shutil.copytree(golden_dir, copy)
    return copy, min(_files(copy), key=lambda p: (p.stat().st_size, p.name))  # the smallest: quick to recheck


def test_a_flipped_hex_digit_is_reported_by_file_and_line(golden_dir, tmp_path, capsys):
    copy, path = _damaged_copy(golden_dir, tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    # the leading hex digit of the exact value's first finite entry, in the first line that has one
    pattern = re.compile(r'("exact":\{"grads":.*?"value":\{"dtype":"float64","shape":\[[0-9,]*\],"values":\["-?0x1\.)([0-9a-f])')
    n = next(k for k, text in enumerate(lines) if pattern.search(text))
    lines[n] = pattern.sub(lambda m: m.group(1) + "%x" % (int(m.group(2), 16) ^ 8), lines[n], count=1)
    path.write_text("".join(lines))
    rc = _verify(copy, "--losses", path.stem)
    out = capsys.readouterr().out
    assert rc != 0
    rel = path.relative_to(copy).as_posix()
    assert f"{rel} " in out and "sha256" in out, out
    assert re.search(rf"{re.escape(rel)}\s+{n + 1} \(", out), out  # the recomputation names the line


def test_truncation_is_reported_by_file_not_crashed_on(golden_dir, tmp_path, capsys):
    copy, path = _damaged_copy(golden_dir, tmp_path)
    rel = path.relative_to(copy).as_posix()
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # the last line dropped
    assert _verify(copy, "--losses", path.stem) != 0
    out = capsys.readouterr().out
    assert rel in out and f"{len(lines) - 1} cases, MANIFEST.json says {len(lines)}" in out, out
    path.write_text(text[: len(text) - len(lines[-1]) // 2])  # cut in the middle of the last line
    assert _verify(copy, "--losses", path.stem) != 0
    out = capsys.readouterr().out
    assert re.search(rf"{re.escape(rel)}\s+{len(lines)}\s+format", out), out
    path.rename(path.with_name("not_in_the_manifest.jsonl"))  # a missing file, and an extra one
    assert _verify(copy, "--losses", path.stem, "not_in_the_manifest") != 0
    out = capsys.readouterr().out
    assert f"{rel}  " in out and "missing" in out and "not_in_the_manifest.jsonl" in out, out


def test_building_twice_gives_the_same_bytes(tmp_path):
    losses = _cheap_losses()
    a = _quick_build(tmp_path / "a", losses)
    b = _quick_build(tmp_path / "b", losses)
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert len(names) == len(losses) + 2  # the files, schema.json, MANIFEST.json
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for line in (a / next(n for n in names if n.endswith(".jsonl"))).read_text().splitlines():
        assert line == golden.canonical(json.loads(line)).rstrip("\n")  # canonical JSON


def _round_trip(x, dtype):
    """``x`` through ``dtype`` and back, by NumPy alone (bfloat16: float32 with its low 16 bits zero)."""
    if dtype == "bfloat16":
        f = x.astype(np.float32)
        return np.where((f.view(np.uint32) & 0xFFFF) == 0, f.astype(np.float64), np.nan)
    return x.astype(dtype).astype(np.float64)


def test_inputs_are_exact_in_their_dtype(golden_dir):
    seen = set()
    for path in _files(golden_dir):
        for case in golden.read_cases(path):
            dtype = case["dtype"]
            seen.add(dtype)
            arrays = [v for v in case["inputs"].values() if v["dtype"] != "int64"]
            arrays += [v for v in case["params"].values() if isinstance(v, dict) and v["dtype"] != "int64"]
            arrays += [case["cotangent"]] if case["cotangent"] is not None else []
            for a in arrays:
                assert a["dtype"] == dtype, (path.name, case["id"])
                x = golden.decode_array(a)
                with np.errstate(over="ignore", invalid="ignore"):
                    back = _round_trip(x, dtype)
                assert np.array_equal(back, x, equal_nan=True), (path.name, case["id"], dtype)
    assert seen <= set(golden.LADDER) and seen & {"float16", "bfloat16"}, seen


def test_rounding_to_bfloat16_is_round_to_nearest_even():
    # ties go to the even neighbour; above a tie rounds up; past the largest bfloat16 is infinite
    x = np.array([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-8 + 2.0**-20, -3.0e38, 3.4e38, np.nan, -0.0])
    r = golden.round_to(x, "bfloat16")
    assert r[0] == 1.0 and r[1] == 1.0 + 2.0**-6 and r[2] == 1.0 + 2.0**-7
    assert np.isfinite(r[3]) and golden.representable(r[3:4], "bfloat16") and abs(r[3] - x[3]) <= 2.0**120
    assert np.isinf(r[4]) and np.isnan(r[5]) and r[6] == 0.0 and np.signbit(r[6])


def test_readme_reader_runs_without_refloss(golden_dir, tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Golden files", 1)[1].split("\n## ", 1)[0]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(snippet.strip().splitlines()) <= 14
    target = re.search(r'open\("([^"]+)"\)', snippet).group(1)
    source = next((p for p in _files(golden_dir) if p.relative_to(golden_dir).as_posix() == target.split("/", 1)[1]), _files(golden_dir)[0])
    (tmp_path / target).parent.mkdir(parents=True)
    shutil.copy(source, tmp_path / target)
    isolated = [sys.executable, "-I", "-S"]  # no site-packages: refloss (and NumPy) cannot be imported
    probe = subprocess.run(isolated + ["-c", "import refloss"], cwd=tmp_path, capture_output=True, text=True)
    assert probe.returncode != 0, "refloss is importable in the isolated interpreter"
    run = subprocess.run(isolated + ["-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    case = golden.read_cases(source)[0]
    value = golden.decode_array(case["exact"]["value"])
    assert run.stdout.split()[:2] == [case["id"], case["dtype"]]
    shown = run.stdout.split(None, 2)[2].strip()
    assert shown == repr(value.tolist()), (shown, value)


def test_certificates_match_refloss_mp_certify():
    mp = pytest.importorskip("refloss.mp")
    name = _cheap_losses(1)[0]
    loss = golden.get(name)
    for spec in golden.specs(loss, min_cases=1, reductions=("none", "sum"))[:4]:
        mine = golden.certify(spec)
        theirs = mp.certify(loss, spec.inputs, spec.params, spec.cotangent)
        assert mine.line is not None, mine.failures
        assert mine.value_ulp == theirs.value_ulp
        assert mine.grad_ulp == max(theirs.grad_ulp.values(), default=0.0)
        for k, b in theirs.bounds.items():
            stored = mine.line["bounds"].get(k, {"index": []})
            assert stored["index"] == sorted(b)


def test_schema_describes_the_lines(golden_dir):
    schema = json.loads((golden_dir / golden.SCHEMA).read_text())
    assert schema == golden.schema()
    keys = set(schema["properties"])
    hexfloat = re.compile(schema["$defs"]["hexfloat"]["pattern"])
    slug = re.compile(schema["properties"]["id"]["pattern"])
    for path in _files(golden_dir):
        for text in path.read_text().splitlines()[:5]:
            case = json.loads(text)
            assert set(case) == keys and slug.match(case["id"]), (path.name, sorted(set(case) ^ keys))
            floats = [v for part in ("refloss", "exact") for a in [case[part]["value"], *case[part]["grads"].values()] if a is not None for v in a["values"]]
            assert all(hexfloat.match(v) for v in floats), path.name


def test_gradient_errors_with_infinite_entries():
    # infinite entries must match exactly; the finite rest is normwise against its own largest entry
    exact = np.array([-np.inf, 2.0, 1e-3])
    assert golden.gradient_error([-np.inf, 2.0, 1e-3 + 2 * np.spacing(2.0)], exact) == 2.0
    assert golden.gradient_error([-1e308, 2.0, 1e-3], exact) == np.inf
    assert golden.gradient_error([np.inf, 2.0, 1e-3], exact) == np.inf
    # at a kink whose segment reaches -inf (an infinite one-sided slope), -inf and -35 are both inside
    kink = {0: (-np.inf, -35.0)}
    assert golden.gradient_error([-np.inf, 2.0, 1e-3], np.array([-np.inf, 2.0, 1e-3]), kink) == 0.0
    assert golden.gradient_error([-40.0, 2.0, 1e-3], np.array([-np.inf, 2.0, 1e-3]), kink) == 0.0
    assert golden.gradient_error([-30.0, 2.0, 1e-3], np.array([-np.inf, 2.0, 1e-3]), kink) == np.inf


def test_an_infinite_value_certifies_the_value_only():
    pytest.importorskip("mpmath")
    loss = golden.get("binary_cross_entropy")
    # probability 0 for a positive target: -log(0) = inf exactly; the gradient of inf is undefined
    spec = golden.Spec(loss.name, "edge-sum-clamp=none-s0", "edge", "float16", [np.array([0.0, 0.5]), np.array([1.0, 1.0])],
                       {**loss.defaults(), "clamp": "none", "reduction": "sum"}, None)
    result = golden.certify(spec)
    assert result.failures == [] and result.line["exact"]["value"]["values"] == ["inf"]
    assert set(result.line["exact"]["grads"].values()) == {None}
    assert set(result.line["error_ulp"]["grads"].values()) == {None}
    value_ulp, grad_ulp, problems = golden.check_case(json.loads(golden.canonical(result.line)))
    assert (value_ulp, grad_ulp, problems) == (0.0, 0.0, [])
