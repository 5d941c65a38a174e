"""Packaging promises: light imports, a README that lists the registry, autograd through every loss."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import refloss
from refloss.cases import sample
from refloss.cli import catalog_markdown, main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "jax", "tensorflow", "numba", "cupy", "matplotlib", "autograd", "mpmath")


def test_import_refloss_is_light():
    code = "import sys, refloss; refloss.catalog(); print(' '.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import refloss pulled in: {out}"


def test_backends_are_installed_under_refloss():
    import refloss.backends
    import refloss.backends.numpy

    assert refloss.backends.available()[0] == "numpy"
    assert refloss.backends.numpy.NAME == "numpy"


def test_readme_catalogue_is_current():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- catalog:start -->\n(.*?)<!-- catalog:end -->", readme, re.S)
    assert block, "README.md lacks the catalogue markers"
    assert block.group(1) == catalog_markdown(), "README catalogue is stale: run `refloss catalog --write README.md`"


def test_readme_keeps_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_public_loss_is_registered_and_documented():
    for loss in refloss.catalog():
        assert getattr(refloss, loss.name) is loss
        doc = loss.__doc__ or ""
        assert "Gradient" in doc or "gradient" in doc, f"{loss.name}: docstring lacks its gradient"
        assert loss.counterparts is not None and loss.references, f"{loss.name}: no references"


@pytest.mark.parametrize("loss", refloss.catalog(), ids=lambda l: l.name)
def test_autograd_grad_goes_through_the_analytic_vjp(loss):
    autograd = pytest.importorskip("autograd")
    case = sample(loss, loss.defaults(), "typical", np.random.default_rng(5))
    _, want = loss.value_and_grad(*case.inputs, **case.params)
    for k, spec in enumerate(loss.inputs):
        if not spec.differentiable:
            continue

        def f(x, k=k):
            args = list(case.inputs)
            args[k] = x
            return loss(*args, **case.params)

        got = autograd.grad(f)(case.inputs[k])
        np.testing.assert_array_equal(got, want[k])


def test_public_signature_is_the_call_users_make():
    import inspect

    sig = str(inspect.signature(refloss.cross_entropy))
    assert sig == "(logits, target, *, weight=None, ignore_index=-100, label_smoothing=0.0, axis=1, reduction='mean')"


def test_autograd_with_keyword_inputs():
    autograd = pytest.importorskip("autograd")
    z, t = np.array([[1.0, 2.0, 0.5]]), np.array([1])
    got = autograd.grad(lambda z: refloss.cross_entropy(logits=z, target=t, label_smoothing=0.1))(z)
    _, (want, _) = refloss.value_and_grad(refloss.cross_entropy, z, t, label_smoothing=0.1)
    np.testing.assert_array_equal(got, want)


def test_cli_check_proves_and_prints_catalogue(capsys):
    assert main(["check", "--losses", "cross_entropy", "kl_div"]) == 0
    out = capsys.readouterr().out
    assert "2/2 losses proven" in out and "| `cross_entropy` |" in out


def test_cli_catalog_write_replaces_only_the_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- catalog:start -->\nold table\n<!-- catalog:end -->\noutro\n")
    assert main(["catalog", "--write", str(readme)]) == 0
    assert readme.read_text() == "intro\n<!-- catalog:start -->\n" + catalog_markdown() + "<!-- catalog:end -->\noutro\n"
    (tmp_path / "bare.md").write_text("no markers")
    assert main(["catalog", "--write", str(tmp_path / "bare.md")]) == 1


def test_cli_usage_on_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
