"""The ``refloss`` command.

- ``refloss check``: proves every registered loss's gradient (central differences, and autograd's
  ``check_grads`` when autograd is installed) over every parameter path, then prints the catalogue.
- ``refloss catalog [--write README.md]``: prints the catalogue as a Markdown table, or rewrites the
  README's table (between its catalogue markers) with it.
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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"check": check, "catalog": catalog_command}
    if not argv or argv[0] not in commands:
        print("usage: refloss {check,catalog} [options]\n\n" + (__doc__ or ""), file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
