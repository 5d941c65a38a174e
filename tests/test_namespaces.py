"""Every loss runs on every namespace (array-api-strict proves no NumPy-only call slipped in) and
gives the NumPy values and gradients there."""

import numpy as np
import pytest

import refloss
from refloss.cases import param_paths, sample

from refloss.xp import to_numpy

LOSSES = refloss.catalog()


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l.name)
def test_loss_runs_on_namespace_and_matches_numpy(loss, xp):
    rng = np.random.default_rng(7)
    for params in param_paths(loss, reductions=("none", "mean")):
        case = sample(loss, params, "typical", rng)
        ref_value, ref_grads = loss.value_and_grad(*case.inputs, **case.params)
        inputs, kw = case.as_namespace(xp)
        value, grads = loss.value_and_grad(*inputs, **kw)
        assert type(value).__module__.split(".")[0] == type(inputs[0]).__module__.split(".")[0], (
            f"{loss.name}: result left the input namespace"
        )
        np.testing.assert_allclose(to_numpy(value), ref_value, rtol=1e-13, atol=1e-300, err_msg=case.describe())
        for spec, g, ref in zip(loss.inputs, grads, ref_grads):
            if ref is None:
                assert g is None
                continue
            np.testing.assert_allclose(to_numpy(g), ref, rtol=1e-12, atol=1e-300, err_msg=f"{case.describe()} d/d{spec.name}")


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l.name)
def test_float32_inputs_stay_float32(loss, xp):
    case = sample(loss, loss.defaults(), "typical", np.random.default_rng(3))
    inputs, kw = case.as_namespace(xp, dtype=xp.float32)
    value, grads = loss.value_and_grad(*inputs, **kw)
    assert value.dtype == xp.float32
    for spec, g in zip(loss.inputs, grads):
        if g is not None:
            assert g.dtype == xp.float32, f"{loss.name}: d/d{spec.name} is {g.dtype}"
    ref = loss(*case.inputs, **case.params)
    np.testing.assert_allclose(to_numpy(value), ref, rtol=2e-5, atol=1e-6)
