"""Registry-driven gradient proof: every loss, every parameter path, both checks.

Adding a loss to the registry adds it here with no new test code.
"""

import numpy as np
import pytest

import refloss
from refloss.loss import SAMPLE, Input, Loss
from refloss.cases import param_paths
from refloss.proof import central_difference, prove

LOSSES = refloss.catalog()


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l.name)
def test_analytic_gradient_is_proven(loss):
    rows = prove(loss, seed=0, use_autograd=True)
    assert rows, f"{loss.name}: no gradient check ran"
    methods = {r.method for r in rows}
    assert methods == {"central-difference", "autograd.check_grads"}
    failures = [f"{r.method} {r.input} {r.params}: error {r.error:.3g} {r.detail}" for r in rows if not r.ok]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l.name)
def test_every_reduction_and_option_is_visited(loss):
    paths = list(param_paths(loss))
    assert {p["reduction"] for p in paths} == set(refloss.REDUCTIONS)
    for p in loss.params:
        for value in p.grid:
            visited = any(path[p.name] is value or (value is not SAMPLE and path[p.name] == value) for path in paths)
            assert visited, f"{loss.name}: {p.name}={value!r} never proven"


def _square_forward(xp, x):
    """Toy loss x**2 with a deliberately wrong gradient, to show the proof can fail."""
    return x * x


def test_the_proof_catches_a_wrong_gradient():
    wrong = Loss(_square_forward, family="test", inputs=[Input("x")], params=())
    wrong.defvjp(lambda xp, cot, x: (cot * 2.001 * x,))
    rows = central_difference(wrong, [np.linspace(-1, 1, 5)], {"reduction": "sum"}, np.random.default_rng(0))
    assert rows and not rows[0].ok and rows[0].error > 1e-4

    right = Loss(_square_forward, family="test", inputs=[Input("x")], params=())
    right.defvjp(lambda xp, cot, x: (cot * 2 * x,))
    rows = central_difference(right, [np.linspace(-1, 1, 5)], {"reduction": "sum"}, np.random.default_rng(0))
    assert rows[0].ok


def test_autograd_check_catches_a_wrong_gradient():
    from refloss.proof import autograd_check

    wrong = Loss(_square_forward, family="test", inputs=[Input("x")], params=())
    wrong.defvjp(lambda xp, cot, x: (cot * 3 * x,))
    rows = autograd_check(wrong, [np.linspace(-1, 1, 5)], {"reduction": "sum"}, np.random.default_rng(0))
    assert rows and not rows[0].ok


def test_the_proof_checks_a_stop_gradient_against_the_frozen_forward():
    """A VJP that holds an intermediate constant (CIoU's alpha under torch.no_grad) is proven against
    the forward with that intermediate frozen, and a wrong one still fails."""
    from refloss.proof import autograd_check

    def forward(xp, x):
        return (x * x) * x  # the first factor stands for a detached intermediate

    def frozen(xp, base, x):
        return (base[0] * base[0]) * x

    ok = Loss(forward, family="test", inputs=[Input("x")], params=(), stop_gradient=frozen)
    ok.defvjp(lambda xp, cot, x: (cot * x * x,))  # d/dx with x*x held constant
    x = [np.linspace(0.5, 1.5, 5)]
    assert all(r.ok for r in central_difference(ok, x, {"reduction": "sum"}, np.random.default_rng(0)))
    assert all(r.ok for r in autograd_check(ok, x, {"reduction": "sum"}, np.random.default_rng(0)))

    wrong = Loss(forward, family="test", inputs=[Input("x")], params=(), stop_gradient=frozen)
    wrong.defvjp(lambda xp, cot, x: (cot * 3 * x * x,))  # the full derivative is not the detached one
    assert not central_difference(wrong, x, {"reduction": "sum"}, np.random.default_rng(0))[0].ok
    assert not autograd_check(wrong, x, {"reduction": "sum"}, np.random.default_rng(0))[0].ok
