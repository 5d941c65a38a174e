"""``refloss plot margins``: the target logit of every margin variant over theta (the ArcFace paper's figure).

Each curve is the loss's own target transform ``psi`` (the function the loss evaluates, not a
re-derivation), at its default settings, divided by the scale: ``psi(cos theta)`` for theta in
[0, pi]. Matplotlib is an optional extra (``pip install 'refloss[plot]'``).
"""

from __future__ import annotations

import argparse
import math
import sys

import array_api_compat.numpy as anp
import numpy as np

from .losses import margin as _margin
from .losses import margin_adaptive as _adaptive


def margin_curves(points: int = 721) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{label: (theta, target logit / scale)}`` for every margin variant at its default settings."""
    theta = np.linspace(0.0, math.pi, points)
    # unit features at angle theta to the one class weight (1, 0): the losses' own target geometry
    rows = _margin._normalise_rows(anp, np.stack([np.cos(theta), np.sin(theta)], axis=1), None)
    weight = _margin._normalise_rows(anp, np.array([[1.0, 0.0]]), None)
    t = _margin._target_geometry(anp, rows, weight, np.zeros(points, dtype=np.int64))
    c = t.c[0]
    d = {loss.name: loss.defaults() for loss in (_margin.cosface_loss, _margin.arcface_loss, _margin.combined_margin_loss, _margin.sphereface_loss)}
    cos_, arc, comb, sph = d["cosface_loss"], d["arcface_loss"], d["combined_margin_loss"], d["sphereface_loss"]

    def target(psi):
        return psi(anp, t, grad=False)[0][0]

    curves = {
        "softmax / NormFace: cos θ": target(_margin._identity),
        # SphereFace trains at the annealing floor lambda = 5 (the ArcFace paper's curve), not at psi alone
        f"SphereFace: (5 cos θ + ψ(θ)) / 6, m = {sph['m']}, λ = 5": (5 * c + _margin._multiplicative_psi(anp, t.c, sph["m"])[0][0]) / 6,
        f"CosFace: cos θ − {cos_['margin']}": target(_margin._shift(cos_["margin"])),
        f"ArcFace (insightface): cos(θ + {arc['margin']})": target(_margin._arcface_psi(arc["margin"], False, "insightface", False)),
        f"ArcFace (paper): cos(θ + {arc['margin']})": target(_margin._arcface_psi(arc["margin"], False, "none", False)),
        "combined: cos({m1}θ + {m2}) − {m3}".format(**comb): target(_margin._combined_psi(comb["m1"], comb["m2"], comb["m3"])),
    }
    mag = _adaptive.magface_loss.defaults()
    for end in ("l", "u"):  # MagFace's margin at the ends of its feature-norm range (easy margin)
        m = mag[f"{end}_margin"]
        curves[f"MagFace, |x| = {mag[f'{end}_a']:g}: cos(θ + {m})"] = _margin._arc_psi(anp, t, m, mag["easy_margin"], "none", grad=False)[0][0]
    return {label: (theta, np.asarray(v, dtype=float)) for label, v in curves.items()}


def plot_margins(path: str, points: int = 721) -> str:
    """Write the figure to ``path`` (PNG) and return the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise SystemExit("refloss plot needs matplotlib: pip install 'refloss[plot]'") from e
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for label, (theta, y) in margin_curves(points).items():
        ax.plot(np.degrees(theta), y, label=label, linewidth=1.6)
    ax.set_xlabel("θ, angle between the feature and its class weight (degrees)")
    ax.set_ylabel("target logit / scale")
    ax.set_title("Target logit of each margin loss at its default settings")
    ax.set_xlim(0, 180)
    ax.set_ylim(-2.1, 1.1)
    ax.set_xticks(range(0, 181, 30))
    ax.axhline(0.0, color="0.8", linewidth=0.8, zorder=0)
    ax.grid(True, color="0.92")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="refloss plot", description="Figures of the loss family.")
    parser.add_argument("figure", choices=["margins"], help="margins: target logit psi(theta) of every margin variant")
    parser.add_argument("--out", default="margins.png", help="PNG path (default: margins.png)")
    args = parser.parse_args(argv)
    print(f"wrote {plot_margins(args.out)}", file=sys.stdout)
    return 0
