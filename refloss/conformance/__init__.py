"""Conformance: PyTorch, pytorch-metric-learning, JAX/optax, TensorFlow/Keras and refloss's own
backends checked against the golden files, per loss, per dtype, per convention.

``refloss conform torch|pml|jax|tensorflow|numpy`` (or :func:`run`) casts each golden case to every
dtype it is exact in (float64, float32, float16, bfloat16) that the framework has, runs the
framework's own call with its own autodiff, and gives each a verdict: ``pass``, ``convention``
(differs exactly as a documented convention of the framework predicts), ``defect`` (with the worst
error in ULP and a reproducer) or ``not offered``. The tolerance policy is
:mod:`refloss.conformance.policy`; the adapters are ``refloss.conformance.<target>``; the reports
:mod:`refloss.conformance.report`. Importing this package imports no framework.
"""

from __future__ import annotations

from .case import default_golden
from .runner import TARGETS, VERDICTS, Outcome, Run, adapters, evaluate, run

__all__ = ["TARGETS", "VERDICTS", "Outcome", "Run", "adapters", "default_golden", "evaluate", "run"]
