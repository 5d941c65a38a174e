"""The ``refloss`` command.

- ``refloss check``: proves every registered loss's gradient (central differences, and autograd's
  ``check_grads`` when autograd is installed) over every parameter path, then prints the catalogue.
- ``refloss catalog [--write README.md]``: prints the catalogue as a Markdown table, or rewrites the
  README's table (between its catalogue markers) with it.
- ``refloss golden build [--losses ...] [--out golden] [--jobs N]``: generates the golden files of the
  losses that have an mpmath oracle, certifies every case, writes golden/<family>/<loss>.jsonl and the
  manifest; a case outside the certification policy fails the build (its loss's file is not written).
- ``refloss golden verify [--losses ...] [--dir golden]``: checks the manifest and every line, and
  recomputes every case with the installed refloss against the stored exact results.
- ``refloss conform torch|pml|jax|tensorflow|numpy [--losses ...] [--dtypes ...] [--report DIR]``: checks a
  framework (or refloss's own backends) against the golden files: pass, convention, defect or not offered.
- ``refloss audit [--losses ...] [--frameworks ...] [--points N] [--out audit]``: sweeps each loss over its
  stress axes and dtypes, judges refloss and the frameworks against the oracle, writes heatmaps and an
  index page (docs/audit.md).
"""

from __future__ import annotations

import argparse
import sys
import time

from .loss import Loss, catalog


def _counterparts(loss: Loss, keys) -> str:
    # A counterpart is "dotted.call" or "dotted.call (note)".
    found = [loss.counterparts[k].partition(" (") for k in keys if k in loss.counterparts]
    return "; ".join(f"`{call}`" + (f" ({note}" if sep else "") for call, sep, note in found) or "-"


def _params(loss: Loss) -> str:
    shown = [p for p in loss.params if p.name != "reduction"]
    return ", ".join(f"`{p.name}={p.default!r}`" for p in shown) or "-"


def catalog_markdown() -> str:
    """The loss catalogue as a Markdown table, generated from the registry."""
    head = (
        "| loss | family | differentiable inputs | parameters | PyTorch | optax | Keras / TF | other |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for loss in catalog():
        rows.append(
            "| `{}` | {} | {} | {} | {} | {} | {} | {} |".format(
                loss.name,
                loss.family,
                ", ".join(f"`{n}`" for n in loss.differentiable),
                _params(loss),
                _counterparts(loss, ["torch"]),
                _counterparts(loss, ["optax"]),
                _counterparts(loss, ["keras", "tf"]),
                _counterparts(loss, [k for k in loss.counterparts if k not in ("torch", "optax", "keras", "tf")]),
            )
        )
    return head + "\n".join(rows) + "\n"


def _progress(iterable, total, label):
    """A progress bar on stderr (tqdm when installed, a plain counter otherwise)."""
    try:
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=label, file=sys.stderr, leave=False)
        return
    except ImportError:
        pass
    for k, item in enumerate(iterable, 1):
        print(f"\r{label}: {k}/{total}", end="", file=sys.stderr, flush=True)
        yield item
    print(file=sys.stderr)


def check(argv=None) -> int:
    from .proof import RTOL, has_autograd, prove

    parser = argparse.ArgumentParser(prog="refloss check", description="Prove every loss's analytic gradient.")
    parser.add_argument("--losses", nargs="*", help="only these losses")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    losses = [l for l in catalog() if not args.losses or l.name in args.losses]
    use_autograd = has_autograd()
    start = time.perf_counter()
    results = []
    for loss in _progress(losses, len(losses), "proving gradients"):
        rows = prove(loss, seed=args.seed, use_autograd=use_autograd)
        results.append((loss, rows))
    elapsed = time.perf_counter() - start

    print("refloss gradient proof: analytic VJP vs five-point central differences (float64, relative"
          f" tolerance {RTOL:g})" + (" and autograd.test_util.check_grads" if use_autograd else " (autograd not installed: check_grads skipped)"))
    print()
    name_w = max(len(l.name) for l in losses)
    print(f"{'loss':<{name_w}}  {'family':<14}  paths  checks  worst error  verdict")
    failed = 0
    for loss, rows in results:
        fd = [r.error for r in rows if r.method == "central-difference"]
        paths = len({repr(sorted((k, repr(v)) for k, v in r.params.items())) for r in rows})
        bad = [r for r in rows if not r.ok]
        failed += bool(bad)
        verdict = "proven" if not bad else f"FAILED ({len(bad)})"
        print(f"{loss.name:<{name_w}}  {loss.family:<14}  {paths:5d}  {len(rows):6d}  {max(fd, default=0.0):11.1e}  {verdict}")
        for r in bad[:3]:
            shown = {k: v for k, v in r.params.items() if not hasattr(v, "shape")}
            print(f"    {r.method} on {r.input} at {shown}: {r.detail}")
    print()
    print(f"{len(results) - failed}/{len(results)} losses proven in {elapsed:.1f} s")
    print()
    print(catalog_markdown())
    return 1 if failed else 0


_START, _END = "<!-- catalog:start -->\n", "<!-- catalog:end -->"


def catalog_command(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="refloss catalog", description="Print the loss catalogue (Markdown).")
    parser.add_argument("--write", metavar="README", help="replace the table between the catalogue markers of this file")
    args = parser.parse_args(argv)
    table = catalog_markdown()
    if not args.write:
        print(table, end="")
        return 0
    from pathlib import Path

    path = Path(args.write)
    text = path.read_text()
    if _START not in text or _END not in text:
        print(f"refloss catalog: {path} has no {_START.strip()} ... {_END} markers", file=sys.stderr)
        return 1
    head, rest = text.split(_START, 1)
    path.write_text(head + _START + table + _END + rest.split(_END, 1)[1])
    print(f"wrote the catalogue ({len(catalog())} losses) into {path}")
    return 0


def _bar(iterable, total, label):
    """A progress bar on stderr: rich when installed, else tqdm, else the plain counter of :func:`_progress`."""
    try:
        from rich.console import Console
        from rich.progress import track
    except ImportError:
        yield from _progress(iterable, total, label)
        return
    yield from track(iterable, total=total, description=label, console=Console(stderr=True), transient=True)


def _ulp(x: float) -> str:
    return f"{x:.3g}" if x == x else "nan"


def _loss_table(rows, title) -> None:
    print(title)
    if not rows:
        print("  (none)")
        return
    name_w = max(len("loss"), *(len(r.loss) for r in rows))
    print(f"{'loss':<{name_w}}  {'family':<14}  cases  {'f16/bf16/f32/f64':<16}  worst value ULP  worst grad ULP  status")
    for r in sorted(rows, key=lambda r: (r.family, r.loss)):
        dt = "/".join(str(r.dtypes.get(d, 0)) for d in ("float16", "bfloat16", "float32", "float64"))
        status = "ok" if not r.problems else f"FAILED ({r.problems})"
        print(f"{r.loss:<{name_w}}  {r.family:<14}  {r.cases:5d}  {dt:<16}  {_ulp(r.value_ulp):>15}  {_ulp(r.grad_ulp):>14}  {status}")


def _problem_table(problems, head) -> None:
    if not problems:
        return
    print()
    print(f"{len(problems)} problem(s):")
    cols = [[str(p[0]) for p in problems], [str(p[1]) for p in problems], [str(p[2]) for p in problems]]
    widths = [max(len(h), *(len(c) for c in col)) for h, col in zip(head, cols)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  error")
    for p in problems:
        detail = p[3] if isinstance(p[3], str) else f"{_ulp(p[3])} ULP (bound {_tolerance():g})"
        print("  ".join(str(c).ljust(w) for c, w in zip(p[:3], widths)) + "  " + detail)


def _tolerance() -> float:
    from .golden import TOLERANCE_ULP

    return TOLERANCE_ULP


def golden_command(argv=None) -> int:
    from . import golden

    parser = argparse.ArgumentParser(prog="refloss golden", description="Build or verify the golden files.")
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="generate and certify golden files (needs mpmath)")
    b.add_argument("--losses", nargs="+", metavar="LOSS", help="only these losses (default: every loss with an oracle)")
    b.add_argument("--out", "--dir", dest="dir", default=str(golden.DEFAULT_DIR), help="output directory (default: golden)")
    b.add_argument("--jobs", type=int, default=None, help="worker processes certifying cases (default: one per CPU; the output does not depend on it)")
    v = sub.add_parser("verify", help="check the manifest and recompute every case with the installed refloss")
    v.add_argument("--losses", nargs="+", metavar="LOSS", help="only the files of these losses")
    v.add_argument("--dir", default=str(golden.DEFAULT_DIR), help="golden directory (default: golden)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.action == "build":
        import os

        try:
            report = golden.build(args.dir, args.losses, jobs=args.jobs or os.cpu_count() or 1, progress=_bar)
        except (ImportError, KeyError) as e:
            print(f"refloss golden build: {e}", file=sys.stderr)
            return 2
        elapsed = time.perf_counter() - start
        _loss_table(report.rows, f"refloss golden build: certified against the mpmath oracle (bound {golden.TOLERANCE_ULP:g} ULP)")
        if report.skipped:
            print(f"\nno oracle yet (skipped): {', '.join(report.skipped)}")
        _problem_table(report.problems, ("loss", "case", "what"))
        written = sum(r.cases for r in report.rows if not r.problems)
        from mpmath.libmp import BACKEND

        if BACKEND == "python":
            print("\nmpmath runs on pure-Python integers here: installing gmpy2 makes the build about ten times faster")
        print(f"\n{written} cases written to {args.dir} in {elapsed:.1f} s" + ("" if report.ok else "; the build FAILED"))
        return 0 if report.ok else 1
    try:
        report = golden.verify(args.dir, args.losses, progress=_bar)
    except KeyError as e:
        print(f"refloss golden verify: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    _loss_table(report.rows, f"refloss golden verify: {args.dir} recomputed with the installed refloss (bound {golden.TOLERANCE_ULP:g} ULP + {golden.VERIFY_SLACK_ULP:g} for the rounded exact values)")
    _problem_table(report.problems, ("file", "line", "what"))
    cases = sum(r.cases for r in report.rows)
    print(f"\n{cases} cases verified in {elapsed:.1f} s: " + ("ok" if report.ok else f"{len(report.problems)} problem(s)"))
    return 0 if report.ok else 1


def plot_command(argv=None) -> int:
    from .plot import main as plot_main

    return plot_main(argv)


def conform_command(argv=None) -> int:
    from . import conformance
    from .conformance import policy, report

    parser = argparse.ArgumentParser(
        prog="refloss conform",
        description="Check frameworks against the golden files: per loss, per dtype, per convention, a verdict "
        "(pass, convention, defect, not offered) for every case.",
    )
    parser.add_argument("targets", nargs="+", choices=list(conformance.TARGETS), metavar="TARGET",
                        help=f"what to check: {', '.join(conformance.TARGETS)} (numpy: refloss's own backends)")
    parser.add_argument("--losses", nargs="+", metavar="LOSS", help="only these losses")
    parser.add_argument("--dtypes", nargs="+", choices=policy.DTYPES, metavar="DTYPE", help="only these dtypes (default: all)")
    parser.add_argument("--golden", default=None, help="golden directory (default: ./golden, else the one beside refloss)")
    parser.add_argument("--per-loss", type=int, default=None, metavar="K", help="only K cases of each loss, spread over its file")
    parser.add_argument("--report", metavar="DIR", help="write report.md, report.json and report.html into DIR")
    parser.add_argument("--fail-on", choices=("defect", "convention", "never"), default="never",
                        help="exit 1 when a defect (or also a convention) is found (default: never)")
    args = parser.parse_args(argv)
    try:
        run = conformance.run(args.targets, args.golden or conformance.default_golden(), args.losses, args.dtypes, args.per_loss, progress=_bar)
    except KeyError as e:
        print(f"refloss conform: {e.args[0]}", file=sys.stderr)
        return 2
    report.terminal(run)
    if args.report:
        paths = report.write(run, args.report)
        print(f"\nwrote {', '.join(str(p) for p in paths)}")
    if run.unavailable and not run.targets:
        print(f"refloss conform: nothing could run ({'; '.join(f'{t}: {w}' for t, w in run.unavailable.items())})", file=sys.stderr)
        return 2
    bad = {"defect": ("defect",), "convention": ("defect", "convention"), "never": ()}[args.fail_on]
    return 1 if any(o.verdict in bad for o in run.outcomes) else 0


def audit_command(argv=None) -> int:
    from .audit import main as audit_main

    return audit_main(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"check": check, "catalog": catalog_command, "golden": golden_command, "plot": plot_command,
                "conform": conform_command, "audit": audit_command}
    if not argv or argv[0] not in commands:
        print("usage: refloss {check,catalog,golden,conform,audit,plot} [options]\n\n" + (__doc__ or ""), file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
