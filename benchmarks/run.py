"""Time refloss's backends against PyTorch, JAX and TensorFlow on the same inputs, in one run.

    .venv/bin/python benchmarks/run.py            # full run (10 timed repetitions), writes benchmarks/RESULTS.md
    .venv/bin/python benchmarks/run.py --quick    # 3 repetitions, a check that everything runs

Workloads (float32, forward + backward, mean reduction): softmax cross-entropy at 2048 x 32000 and
256 x 128000; ArcFace with features 1024 x 512 and 20000 classes; BCE-with-logits and sigmoid focal
on 8 x 1 x 512 x 512; triplet margin on 4096 x 512. Each framework runs its own idiomatic
forward + backward (PyTorch autograd on the CPU, ``jax.jit(jax.value_and_grad)`` with optax where it
has the loss, ``tf.function`` with ``GradientTape``); refloss runs ``loss.value_and_grad`` under
``use_backend("numpy")`` (the portable code) and ``use_backend("numba")``. Every implementation
runs in a process of its own on the same inputs (each workload's from a fixed seed), so that no
framework's idle thread pool shares the cores with the one being timed; the processes run in turn,
twice (:data:`ROUNDS`), and the calls are pooled, so that a machine whose speed drifts is sampled
alike for every implementation.

The memory floor is measured here, not assumed: the copy bandwidth ``2 S / t`` of the fastest of ten ``np.copyto``
of an array the size of the largest input (``S`` bytes read and written), and a workload's floor is the
bytes it must move (read its inputs once, write the gradients refloss returns once) at that
bandwidth. Medians are reported with their ratio to the fastest framework and to that floor; the
targets of issue 7 are checked at the end. A fresh process measures the first call after import
(Numba's cached compilation).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FRAMEWORKS = ("torch", "jax", "tensorflow")


def timed(fn, reps, warmup=1, slow=2.0):
    """Seconds of each of ``reps`` calls of ``fn()`` after ``warmup`` untimed calls (which take the
    compilation: JIT tracing, Numba's cache); a first timed call slower than ``slow`` seconds (the
    portable code at these sizes) is the only one."""
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < reps and not (times and times[0] > slow):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


# --------------------------------------------------------------------------------------------------
# Framework implementations (each builds a closure over its own copies of the inputs)


def _torch():
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def _jax():
    """JAX, ``jax.numpy`` and optax as one namespace (``jx.jax``, ``jx.jnp``, ``jx.optax``): a JAX loss
    expression needs all three."""
    from types import SimpleNamespace

    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp
    import optax

    return SimpleNamespace(jax=jax, jnp=jnp, optax=optax)


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf


def _torch_runner(loss, inputs, wrt):
    """PyTorch autograd on the CPU: the differentiated inputs require grad, each call clears their
    ``.grad``, evaluates ``loss`` and calls ``backward()``."""
    torch = _torch()
    ts = [torch.from_numpy(v) for v in inputs]
    for i in wrt:
        ts[i].requires_grad_(True)

    def run():
        for i in wrt:
            ts[i].grad = None
        value = loss(torch, *ts)
        value.backward()
        return value, tuple(ts[i].grad for i in wrt)

    return run


def _jax_runner(loss, inputs, wrt):
    """``jax.jit(jax.value_and_grad(loss, argnums=wrt))``, waited on with ``block_until_ready`` so that
    the timing covers the computation and not only its dispatch."""
    jx = _jax()
    step = jx.jax.jit(jx.jax.value_and_grad(lambda *a: loss(jx, *a), argnums=tuple(wrt)))
    arrays = [jx.jnp.asarray(v) for v in inputs]
    return lambda: jx.jax.block_until_ready(step(*arrays))


def _tf_runner(loss, inputs, wrt):
    """A ``tf.function`` that watches the differentiated inputs on a ``GradientTape`` and returns the
    loss and its gradients. AutoGraph is off: the loss expressions have no Python control flow to
    convert (the graph is the same), and AutoGraph cannot read the source of a lambda that shares its
    line with others, which it reports as a warning on every build."""
    tf = _tf()
    tensors = [tf.constant(v) for v in inputs]

    @tf.function(autograph=False)
    def step(*ts):
        watched = [ts[i] for i in wrt]
        with tf.GradientTape() as tape:
            tape.watch(watched)
            value = loss(tf, *ts)
        return value, tape.gradient(value, watched)

    return lambda: step(*tensors)


_RUNNERS = {"torch": _torch_runner, "jax": _jax_runner, "tensorflow": _tf_runner}


def framework_runners(loss_fns, inputs, wrt):
    """``{framework: make}`` for each framework of ``loss_fns``: ``make()`` imports the framework and
    returns ``fn``, and ``fn()`` runs one forward + backward of that framework's loss on its own copies
    of ``inputs`` (NumPy arrays) and returns the loss and the gradients with respect to ``inputs[i]``
    for ``i`` in ``wrt``.

    ``loss_fns[framework](ops, *inputs)`` is the loss expression in that framework's ops, a scalar:
    ``ops`` is the ``torch`` module, the ``tensorflow`` module, or for JAX a namespace of ``jax``,
    ``jnp`` and ``optax``."""
    return {name: (lambda name=name, loss=loss: _RUNNERS[name](loss, inputs, wrt)) for name, loss in loss_fns.items()}


def ce_frameworks(z, y):
    return framework_runners(
        {
            "torch": lambda torch, z, y: torch.nn.functional.cross_entropy(z, y),
            "jax": lambda jx, z, y: jx.optax.losses.softmax_cross_entropy_with_integer_labels(z, y).mean(),
            "tensorflow": lambda tf, z, y: tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z)),
        },
        (z, y),
        wrt=(0,),
    )


def arcface_frameworks(f, y, w, s=64.0, m=0.5):
    """insightface's ArcFace (v1: the fallback ``c - m sin m`` where ``theta + m > pi``), then mean CE."""
    import math

    cos_m, sin_m, th, mm = math.cos(m), math.sin(m), math.cos(math.pi - m), math.sin(math.pi - m) * m

    def torch_loss(torch, f, y, w):
        F = torch.nn.functional
        c = F.linear(F.normalize(f), F.normalize(w))
        cy = c.gather(1, y[:, None])
        sin = torch.sqrt((1.0 - cy * cy).clamp(0, 1))
        phi = torch.where(cy > th, cy * cos_m - sin * sin_m, cy - mm)
        logits = s * c.scatter(1, y[:, None], phi)
        return F.cross_entropy(logits, y)

    def jax_loss(jx, f, y, w):
        jnp = jx.jnp
        fn = f / jnp.linalg.norm(f, axis=1, keepdims=True)
        wn = w / jnp.linalg.norm(w, axis=1, keepdims=True)
        c = fn @ wn.T
        cy = jnp.take_along_axis(c, y[:, None], axis=1)
        sin = jnp.sqrt(jnp.clip(1.0 - cy * cy, 0, 1))
        phi = jnp.where(cy > th, cy * cos_m - sin * sin_m, cy - mm)
        hot = jx.jax.nn.one_hot(y, c.shape[1], dtype=bool)
        logits = s * jnp.where(hot, phi, c)
        return jx.optax.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def tf_loss(tf, f, y, w):
        c = tf.matmul(tf.math.l2_normalize(f, axis=1), tf.math.l2_normalize(w, axis=1), transpose_b=True)
        hot = tf.one_hot(y, c.shape[1], on_value=True, off_value=False, dtype=tf.bool)
        cy = tf.reduce_sum(tf.where(hot, c, 0.0), axis=1, keepdims=True)
        sin = tf.sqrt(tf.clip_by_value(1.0 - cy * cy, 0.0, 1.0))
        phi = tf.where(cy > th, cy * cos_m - sin * sin_m, cy - mm)
        logits = s * tf.where(hot, phi, c)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))

    return framework_runners({"torch": torch_loss, "jax": jax_loss, "tensorflow": tf_loss}, (f, y, w), wrt=(0, 2))


def bce_frameworks(x, y):
    return framework_runners(
        {
            "torch": lambda torch, x, y: torch.nn.functional.binary_cross_entropy_with_logits(x, y),
            "jax": lambda jx, x, y: jx.optax.losses.sigmoid_binary_cross_entropy(x, y).mean(),
            "tensorflow": lambda tf, x, y: tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=x)),
        },
        (x, y),
        wrt=(0,),
    )


def focal_frameworks(x, y, alpha=0.25, gamma=2.0):
    """torchvision.ops.sigmoid_focal_loss's formula, optax.sigmoid_focal_loss, and the same in TF."""

    def torch_loss(torch, x, y):
        p = torch.sigmoid(x)
        ce = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
        p_t = p * y + (1 - p) * (1 - y)
        return ((alpha * y + (1 - alpha) * (1 - y)) * ce * (1 - p_t) ** gamma).mean()

    def tf_loss(tf, x, y):
        p = tf.sigmoid(x)
        ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=x)
        p_t = p * y + (1 - p) * (1 - y)
        return tf.reduce_mean((alpha * y + (1 - alpha) * (1 - y)) * ce * (1 - p_t) ** gamma)

    return framework_runners(
        {
            "torch": torch_loss,
            "jax": lambda jx, x, y: jx.optax.losses.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma).mean(),
            "tensorflow": tf_loss,
        },
        (x, y),
        wrt=(0,),
    )


def triplet_frameworks(a, p, n):
    def tf_loss(tf, a, p, n):
        d_ap = tf.norm(a - p + 1e-6, axis=1)
        d_an = tf.norm(a - n + 1e-6, axis=1)
        return tf.reduce_mean(tf.maximum(d_ap - d_an + 1.0, 0.0))

    return framework_runners(
        {
            "torch": lambda torch, a, p, n: torch.nn.functional.triplet_margin_loss(a, p, n),
            "jax": lambda jx, a, p, n: jx.optax.losses.triplet_margin_loss(a, p, n).mean(),
            "tensorflow": tf_loss,
        },
        (a, p, n),
        wrt=(0, 1, 2),
    )


# --------------------------------------------------------------------------------------------------
# refloss


def refloss_impls(name, inputs, params=None):
    import refloss

    loss = refloss.get(name)
    params = params or {}
    out = {}
    for backend in ("numpy", "numba"):
        if backend not in refloss.backends.available():
            continue

        def run(backend=backend):
            with refloss.use_backend(backend):
                return loss.value_and_grad(*inputs, **params)

        out[f"refloss[{backend}]"] = run
    return out


def memory_bandwidth(nbytes, reps):
    """Bytes per second of ``np.copyto`` (each byte read once and written once), from the fastest of
    ``reps`` copies: a floor is what the machine can do, and the median copy wanders with the
    neighbours' memory traffic (18.7 to 24.8 GB/s between two quiet runs here)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return 2 * src.nbytes / min(timed(lambda: np.copyto(dst, src), max(reps, 10)))


def matmuls_alone(f, w, reps, dtype):
    """The three products of a margin loss in ``dtype``: ``x W^T``, ``G W`` and ``G^T x``."""
    f, w = f.astype(dtype), w.astype(dtype)
    g = np.random.default_rng(1).standard_normal((f.shape[0], w.shape[0])).astype(dtype)

    def run():
        np.matmul(f, w.T)
        np.matmul(g, w)
        np.matmul(g.T, f)

    return timed(run, reps)


def first_call_seconds():
    """A fresh interpreter: import refloss, select Numba, one cross-entropy value_and_grad (cached kernels)."""
    code = (
        "import time; t = time.perf_counter()\n"
        "import numpy as np, refloss\n"
        "refloss.use_backend('numba')\n"
        "refloss.cross_entropy.value_and_grad(np.zeros((8, 10), np.float32), np.zeros(8, np.int64))\n"
        "print(time.perf_counter() - t)\n"
    )
    run = lambda: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    run()  # fills Numba's cache if this installation has not run the kernel yet
    return float(run().stdout.strip())


# --------------------------------------------------------------------------------------------------


def workloads(rng):
    """``(title, inputs builder, refloss loss name, params, framework builder, floor bytes, kind)``."""

    def ce(n, c):
        def build():
            z = rng.standard_normal((n, c), dtype=np.float32)
            y = rng.integers(0, c, n)
            return (z, y), 2 * z.nbytes

        return build

    def arcface():
        f = rng.standard_normal((1024, 512), dtype=np.float32)
        w = rng.standard_normal((20000, 512), dtype=np.float32)
        y = rng.integers(0, 20000, 1024)
        return (f, y, w), 0

    def binary(grads):
        def build():
            x = rng.standard_normal((8, 1, 512, 512), dtype=np.float32) * 3
            y = (rng.uniform(size=x.shape) < 0.3).astype(np.float32)
            return (x, y), (2 + grads) * x.nbytes

        return build

    def triplet():
        a, p, n = (rng.standard_normal((4096, 512), dtype=np.float32) for _ in range(3))
        return (a, p, n), 6 * a.nbytes

    return [
        ("cross-entropy 2048 x 32000", ce(2048, 32000), "cross_entropy", {}, lambda i: ce_frameworks(*i)),
        ("cross-entropy 256 x 128000", ce(256, 128000), "cross_entropy", {}, lambda i: ce_frameworks(*i)),
        ("ArcFace 1024 x 512, 20000 classes", arcface, "arcface_loss", {}, lambda i: arcface_frameworks(*i)),
        ("BCE-with-logits 8 x 1 x 512 x 512", binary(2), "binary_cross_entropy_with_logits", {}, lambda i: bce_frameworks(*i)),
        ("sigmoid focal 8 x 1 x 512 x 512", binary(1), "sigmoid_focal_loss", {}, lambda i: focal_frameworks(*i)),
        ("triplet margin 4096 x 512", triplet, "triplet_margin_loss", {}, lambda i: triplet_frameworks(*i)),
    ]


def installed(module):
    """Whether ``module`` can be imported here (without importing it: the parent process stays bare)."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def implementations(name):
    """The implementations timed for refloss loss ``name``: the installed frameworks, refloss's
    backends, and for ArcFace its three products alone."""
    import refloss

    impls = [f for f in FRAMEWORKS if installed(f)]
    impls += [f"refloss[{b}]" for b in ("numpy", "numba") if b in refloss.backends.available()]
    return impls + (list(MATMULS) if name == "arcface_loss" else [])


#: ArcFace's reference times: its three products alone in float32 (the target's yardstick) and in
#: float64 (what refloss's kernel computes them in: see backends/_plan.py on the margin losses).
MATMULS = {"3 matmuls f32": np.float32, "3 matmuls f64": np.float64}


def measure(index, impl, reps):
    """Time one implementation of workload ``index`` (run in a process of its own: see :func:`main`);
    ``{"times": seconds of each call, "floor_bytes"}``."""
    title, build, name, params, frameworks = workloads(np.random.default_rng(0))[index]
    inputs, floor_bytes = build()
    if impl in MATMULS:
        times = matmuls_alone(inputs[0], inputs[2], reps, MATMULS[impl])
    else:
        fn = frameworks(inputs)[impl]() if impl in FRAMEWORKS else refloss_impls(name, inputs, params)[impl]
        times = timed(fn, reps)
    return {"times": times, "floor_bytes": floor_bytes}


#: Each implementation's process runs in turn, this many times per workload, the calls pooled: on a
#: shared machine whose speed drifts (one kernel took 36 ms in one run and 52 ms in the next) the
#: implementations are then sampled over the same stretch of time.
ROUNDS = 2


def measure_apart(index, impl, reps):
    """:func:`measure` in a fresh interpreter. Each implementation gets a process to itself: the
    frameworks' thread pools keep spinning after a call (PyTorch's OpenMP, XLA's and TensorFlow's
    Eigen pools), and on two cores whatever ran next in the same process lost a fifth of its speed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(index), impl, "--reps", str(reps)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repetitions instead of 10 (a check that everything runs)")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"), help="Markdown table to write (default benchmarks/RESULTS.md)")
    ap.add_argument("--only", default="", help="comma-separated substrings of workload titles to run")
    ap.add_argument("--reps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=2, metavar=("WORKLOAD", "IMPL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    reps = args.reps or (3 if args.quick else 10)
    rounds = 1 if args.quick or args.child else ROUNDS
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.child[1], reps)))
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    bandwidth = memory_bandwidth(2048 * 32000 * 4, reps)
    print(f"copy bandwidth {bandwidth / 1e9:.2f} GB/s (np.copyto of 262 MB); load average {load:.2f}", flush=True)
    rows, checks = [], {}
    for index, (title, _, name, _, _) in enumerate(workloads(None)):
        if args.only and not any(s.strip() in title for s in args.only.split(",")):
            continue
        results, reference, floor = {}, {}, float("nan")
        impls = implementations(name)
        samples, failed = {impl: [] for impl in impls}, set()
        for _ in range(rounds):
            for impl in impls:
                if impl in failed:
                    continue
                try:
                    got = measure_apart(index, impl, -(-reps // rounds))
                except Exception as exc:  # noqa: BLE001 - one framework's failure is reported, not fatal
                    print(f"  {title:36s} {impl:16s} failed: {exc}", flush=True)
                    failed.add(impl)
                    continue
                samples[impl] += got["times"]
                floor = got["floor_bytes"] / bandwidth if got["floor_bytes"] else float("nan")
        for impl, times in samples.items():
            if not times:
                continue
            med, best = statistics.median(times), min(times)
            print(f"  {title:36s} {impl:16s} {med * 1e3:10.1f} ms (min {best * 1e3:.1f}, {len(times)} calls)", flush=True)
            if impl in MATMULS:
                reference[impl] = med
            else:
                results[impl] = (med, best)
        fastest = min((results[k][0] for k in results if k in FRAMEWORKS), default=float("nan"))
        for impl, (med, best) in results.items():
            mm = [med / reference[k] if k in reference else None for k in MATMULS]
            rows.append((title, impl, med, best, med / fastest, med / floor if floor == floor else None, *mm))
        checks[title] = (results, fastest, floor, reference)
    first = first_call_seconds()
    print(f"first call after import (fresh process, cached kernels): {first:.2f} s")
    write_results(Path(args.out), rows, checks, bandwidth, first, load, reps, rounds)
    print(f"wrote {args.out}")


def _targets(checks, first):
    lines = []

    def get(title, impl):
        r = checks.get(title)
        return None if r is None or impl not in r[0] else r[0][impl][0]

    for title in ("cross-entropy 2048 x 32000", "cross-entropy 256 x 128000"):
        t, jax_t = get(title, "refloss[numba]"), get(title, "jax")
        if t is not None:
            floor = checks[title][2]
            if jax_t is not None:
                lines.append(f"{title}: refloss[numba] / JAX = {t / jax_t:.2f} (target <= 0.5): {'met' if t <= 0.5 * jax_t else 'not met'}")
            lines.append(f"{title}: refloss[numba] / memory floor = {t / floor:.2f} (target <= 2.5): {'met' if t <= 2.5 * floor else 'not met'}")
    title = "ArcFace 1024 x 512, 20000 classes"
    t = get(title, "refloss[numba]")
    reference = checks[title][3] if title in checks else {}
    if t is not None and "3 matmuls f32" in reference:
        ratio = t / reference["3 matmuls f32"]
        line = f"{title}: refloss[numba] / three float32 matmuls = {ratio:.2f} (target <= 1.15): {'met' if ratio <= 1.15 else 'not met'}"
        if "3 matmuls f64" in reference:
            line += f" (/ the three float64 matmuls it computes: {t / reference['3 matmuls f64']:.2f})"
        lines.append(line)
    for title in ("BCE-with-logits 8 x 1 x 512 x 512", "sigmoid focal 8 x 1 x 512 x 512"):
        t = get(title, "refloss[numba]")
        if t is not None:
            ratio = t / checks[title][2]
            lines.append(f"{title}: refloss[numba] / memory floor = {ratio:.2f} (target <= 2): {'met' if ratio <= 2 else 'not met'}")
    lines.append(f"first call after import (cached compilation): {first:.2f} s (target <= 2 s): {'met' if first <= 2 else 'not met'}")
    return lines


def write_results(path, rows, checks, bandwidth, first, load, reps, rounds):
    import refloss

    versions = []
    for mod in ("numpy", "numba", "torch", "jax", "tensorflow"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = [
        "# Benchmark results",
        "",
        f"`benchmarks/run.py` ({'quick: ' if rounds == 1 else ''}{reps} timed calls per implementation, "
        f"{'in one process' if rounds == 1 else f'in {rounds} processes run in turn with the others'}, medians), "
        f"{datetime.date.today().isoformat()}, refloss {refloss.__version__}; {cpu}, {os.cpu_count()} cores, "
        f"load average {load:.2f} at the start; {', '.join(versions)}.",
        "",
        f"Memory floor: copy bandwidth {bandwidth / 1e9:.2f} GB/s measured by this run (the fastest of 10 np.copyto of 262 MB); a "
        "workload's floor is the bytes it must move (inputs read once, refloss's gradients written once) at that bandwidth.",
        "",
        "| workload | implementation | median ms | min ms | / fastest framework | / memory floor | / 3 matmuls (f32) | / 3 matmuls (f64) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for title, impl, med, best, *ratios in rows:
        fmt = lambda v: "" if v is None or v != v else f"{v:.2f}"
        out.append(f"| {title} | {impl} | {med * 1e3:.1f} | {best * 1e3:.1f} | " + " | ".join(fmt(v) for v in ratios) + " |")
    out += ["", "## Targets (issue 7)", ""] + [f"- {line}" for line in _targets(checks, first)] + [""]
    path.write_text("\n".join(out))


if __name__ == "__main__":
    main()
