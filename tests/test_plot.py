"""``refloss plot margins``: the curves are the losses' own target transforms, and the PNG is written."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refloss.plot import margin_curves, plot_margins


def test_curves_are_the_documented_target_logits():
    curves = margin_curves(points=181)
    theta = next(iter(curves.values()))[0]
    expected = {
        "softmax": np.cos(theta),
        "CosFace": np.cos(theta) - 0.35,
        "ArcFace (paper)": np.cos(theta + 0.5),
        "combined": np.cos(theta + 0.3) - 0.2,
    }
    for prefix, want in expected.items():
        (label,) = [k for k in curves if k.startswith(prefix)]
        np.testing.assert_allclose(curves[label][1], want, atol=1e-12, err_msg=label)
    (arc,) = [k for k in curves if k.startswith("ArcFace (insightface)")]
    beyond = theta > math.pi - 0.5  # insightface's fallback cos(theta) - m sin(m) past theta + m = pi
    np.testing.assert_allclose(curves[arc][1][beyond], np.cos(theta[beyond]) - 0.5 * math.sin(0.5), atol=1e-12)
    for label, m in (("MagFace, |x| = 10", 0.45), ("MagFace, |x| = 110", 0.8)):  # easy margin: cos where c <= 0
        (mag,) = [k for k in curves if k.startswith(label)]
        want = np.where(np.cos(theta) > 0, np.cos(theta + m), np.cos(theta))
        np.testing.assert_allclose(curves[mag][1], want, atol=1e-12, err_msg=label)
    (sphere,) = [k for k in curves if k.startswith("SphereFace")]
    # psi(theta) = (-1)^k cos(4 theta) - 2k, k = floor(4 theta / pi), at the lambda = 5 floor
    k = np.minimum(np.floor(4 * theta / math.pi), 3)
    psi = (-1.0) ** k * np.cos(4 * theta) - 2 * k
    np.testing.assert_allclose(curves[sphere][1], (5 * np.cos(theta) + psi) / 6, atol=1e-9)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")  # an optional extra; installed with refloss[test]
    out = plot_margins(str(tmp_path / "margins.png"), points=91)
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
