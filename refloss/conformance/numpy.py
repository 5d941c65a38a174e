"""The ``numpy`` target: refloss's own backends, checked against the golden files like a framework.

One adapter per backend of :func:`refloss.backends.available`; each runs every loss through
``loss.value_and_grad`` (the analytic VJP) on NumPy arrays of the target dtype, with the backend
selected by ``refloss.use_backend`` where refloss has it. Every backend must pass. NumPy has no
bfloat16, so that dtype is not offered.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .adapter import Adapter, Call
from .case import Case

_NP = {"float64": "np.float64", "float32": "np.float32", "float16": "np.float16"}


@contextlib.contextmanager
def _backend(name: str):
    import refloss

    use = getattr(refloss, "use_backend", None)
    if use is None:  # a refloss without backend selection has the default one only
        yield
        return
    ctx = use(name)
    if hasattr(ctx, "__enter__"):
        with ctx:
            yield
        return
    try:
        yield
    finally:
        use("numpy")


class NumpyAdapter(Adapter):
    packages = ("numpy",)
    dtypes = ("float64", "float32", "float16")
    header = "import numpy as np\nimport refloss"

    def __init__(self, backend: str = "numpy"):
        super().__init__()
        self.backend = backend
        self.name = "numpy" if backend == "numpy" else f"numpy/{backend}"

    def version(self) -> str:
        import refloss

        return f"refloss {refloss.__version__} ({self.backend} backend), " + super().version()

    def load(self):
        import refloss  # noqa: F401 - always importable; the backend may not be

        if self.backend != "numpy" and not hasattr(refloss, "use_backend"):
            raise ImportError(f"this refloss cannot select the {self.backend} backend")

    def offer(self, case: Case):
        names = tuple(s.name for s in case.loss.inputs)
        arrays = tuple(k for k, v in case.params.items() if isinstance(v, np.ndarray))
        kw = [f"{k}={k if k in arrays else repr(v)}" for k, v in case.params.items()]
        reads = names + arrays + (() if case.cot is None else ("cotangent",))
        cot = "None" if case.cot is None else "cotangent"
        grads = tuple(s.name for s in case.loss.inputs if s.differentiable)
        code = f"out = refloss.{case.name}.value_and_grad({', '.join(names)}, cotangent={cot}, {', '.join(kw)})"
        return Call(f"refloss.{case.name}", code, reads, grads, arrays={} if case.cot is None else {"cotangent": case.cot})

    def array(self, x, dtype):
        if x.dtype.kind in "iub":
            return np.asarray(x, dtype=np.int64)
        return np.asarray(x, dtype=np.float64).astype(dtype)

    def execute(self, call: Call, case: Case, dtype: str):
        f = self._function(call)
        args = [self.array(a, dtype if a.dtype.kind == "f" else None) for a in self.data(call, case).values()]
        with np.errstate(all="ignore"), _backend(self.backend):
            value, grads = f(*args)
        names = [s.name for s in case.loss.inputs]
        named = {n: np.asarray(g, dtype=np.float64) for n, g in zip(names, grads) if n in call.grads}
        return np.asarray(value, dtype=np.float64), named

    def render_array(self, name, x, dtype, grad):
        if x.dtype.kind in "iub":
            return f"{name} = np.array({x.tolist()!r}, dtype=np.int64)"
        return f"{name} = np.array({x.tolist()!r}, dtype=np.float64).astype({_NP[dtype]})"

    def reproducer(self, call, case, dtype, detail=""):
        text = super().reproducer(call, case, dtype, detail)
        if self.backend != "numpy":
            text = text.replace("import refloss\n", f"import refloss\nrefloss.use_backend({self.backend!r})\n", 1)
        return text

    def render_autodiff(self, reads, wrt, cot):
        return (f"value, grads = f({', '.join(reads)})\n"
                "print('value:', value)\n"
                f"print('gradients of {', '.join(wrt)}:', [g for g in grads if g is not None])")


def adapters():
    """One adapter per available backend that takes NumPy inputs (CuPy's takes CuPy arrays)."""
    from refloss import backends

    return [NumpyAdapter(b) for b in backends.available() if b != "cupy"]
