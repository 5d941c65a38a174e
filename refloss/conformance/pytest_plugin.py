"""pytest plugin: ``pytest --refloss-framework=torch`` runs the conformance suite as tests.

Registered as a ``pytest11`` entry point, so a framework's own CI needs only refloss installed and
the golden directory: one test per (target, loss, dtype), failing on any ``defect`` (its message
lists each with the worst error and the reproducer). ``pass``, ``convention`` and ``not offered``
pass; a loss the framework does not offer at all in that dtype is skipped with the reason. Without
``--refloss-framework`` the plugin adds nothing.

Options: ``--refloss-framework`` (repeatable: torch, pml, jax, tensorflow, numpy),
``--refloss-golden DIR``, ``--refloss-losses a,b``, ``--refloss-dtypes float32,float16``,
``--refloss-per-loss K``.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("refloss", "refloss conformance")
    group.addoption("--refloss-framework", action="append", default=[], metavar="TARGET",
                    help="run refloss's conformance suite for TARGET (torch, pml, jax, tensorflow, numpy); repeatable")
    group.addoption("--refloss-golden", default=None, metavar="DIR", help="golden directory (default: ./golden or refloss's)")
    group.addoption("--refloss-losses", default=None, metavar="A,B", help="only these losses")
    group.addoption("--refloss-dtypes", default=None, metavar="D,E", help="only these dtypes")
    group.addoption("--refloss-per-loss", type=int, default=None, metavar="K", help="K cases per loss, spread over its file")


class ConformanceFailure(Exception):
    pass


class ConformanceItem(pytest.Item):
    def __init__(self, *, adapter, cases, dtype, **kwargs):
        super().__init__(**kwargs)
        self.adapter, self.cases, self.dtype = adapter, cases, dtype

    def runtest(self):
        from .runner import evaluate

        outcomes = [evaluate(self.adapter, case, self.dtype) for case in self.cases]
        if all(o.verdict == "not offered" for o in outcomes):
            pytest.skip(f"not offered: {outcomes[0].detail}" if outcomes else "no cases")
        defects = [o for o in outcomes if o.verdict == "defect"]
        if defects:
            raise ConformanceFailure(defects)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ConformanceFailure):
            defects = excinfo.value.args[0]
            parts = [f"{len(defects)} defect(s) of {self.adapter.name} on {self.name}:"]
            for o in defects:
                parts += ["", f"[{o.case}] {o.detail}", o.reproducer]
            return "\n".join(parts)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, self.name


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    targets = config.getoption("refloss_framework")
    if not targets:
        return
    from . import policy
    from .case import default_golden, load, spread
    from .runner import adapters

    split = lambda v: [s.strip() for s in v.split(",") if s.strip()] if v else None  # noqa: E731
    golden = load(config.getoption("refloss_golden") or default_golden(), split(config.getoption("refloss_losses")))
    dtypes = split(config.getoption("refloss_dtypes")) or list(policy.DTYPES)
    per_loss = config.getoption("refloss_per_loss")
    for target in targets:
        for adapter in adapters(target):
            try:
                adapter.load()
            except ImportError as e:
                raise pytest.UsageError(f"--refloss-framework={target}: {adapter.name} is not usable here ({e})") from None
            for name, cases in golden.cases.items():
                chosen = spread(cases, per_loss)
                for dtype in dtypes:
                    here = [c for c in chosen if dtype in c.dtypes()]
                    if here:
                        items.append(ConformanceItem.from_parent(
                            session, name=f"refloss[{adapter.name}-{name}-{dtype}]", adapter=adapter, cases=here, dtype=dtype))
