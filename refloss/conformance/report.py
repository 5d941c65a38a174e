"""Reports of a conformance run: a terminal summary (rich when installed, plain text otherwise) and
``report.md``, ``report.json`` and a static ``report.html`` (a table per family, filterable by
framework and dtype, defects with their reproducers) written by :func:`write`."""

from __future__ import annotations

import html
import json
import math
import sys
from collections import Counter
from pathlib import Path

from .policy import DTYPES, C
from .runner import VERDICTS, Run

_SHORT = {"pass": "pass", "convention": "conv.", "defect": "defect", "not offered": "n/o"}


def _ulp(x) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if math.isfinite(x) else ("inf" if x > 0 else "nan")


def rows(run: Run, merge: bool = False) -> list[dict]:
    """One row per (target, loss, dtype): verdict counts, the worst defect, the framework call
    (``merge``: one row for a loss the target offers in no dtype)."""
    out: dict = {}
    for o in run.outcomes:
        r = out.setdefault((o.target, o.loss, o.dtype), {
            "target": o.target, "loss": o.loss, "family": o.family, "dtype": o.dtype, "api": "",
            **{v: 0 for v in VERDICTS}, "worst_ulp": None, "worst": "", "not_offered": Counter(), "conventions": Counter(),
        })
        r[o.verdict] += 1
        if o.api and o.api not in r["api"].split(", "):
            r["api"] = ", ".join(a for a in (r["api"], o.api) if a)
        if o.verdict == "not offered":
            r["not_offered"][o.detail] += 1
        if o.verdict == "convention":
            r["conventions"][o.convention] += 1
        if o.verdict == "defect" and (r["worst_ulp"] is None or not (o.worst_ulp or 0) <= r["worst_ulp"]):
            r["worst_ulp"], r["worst"] = o.worst_ulp, o.detail
    order = {d: k for k, d in enumerate(DTYPES)}
    out = sorted(out.values(), key=lambda r: (r["target"], r["family"], r["loss"], order[r["dtype"]]))
    if not merge:
        return out
    # A loss the target offers in no dtype is one row ("all" dtypes).
    merged, offered = [], {(r["target"], r["loss"]) for r in out if r["pass"] + r["convention"] + r["defect"]}
    for r in out:
        if (r["target"], r["loss"]) in offered:
            merged.append(r)
        elif merged and (merged[-1]["target"], merged[-1]["loss"]) == (r["target"], r["loss"]):
            merged[-1]["not offered"] += r["not offered"]
            merged[-1]["not_offered"].update(r["not_offered"])
        else:
            merged.append({**r, "dtype": "all", "not_offered": Counter(r["not_offered"])})
    return merged


def _loss_rows(run: Run) -> list[dict]:
    """One row per (target, loss), dtypes summed."""
    out: dict = {}
    for r in rows(run):
        t = out.setdefault((r["target"], r["loss"]), {**r, **{v: 0 for v in VERDICTS}, "worst_ulp": None, "worst": ""})
        for v in VERDICTS:
            t[v] += r[v]
        for api in r["api"].split(", "):
            if api and api not in t["api"].split(", "):
                t["api"] = ", ".join(a for a in (t["api"], api) if a)
        if r["worst_ulp"] is not None and (t["worst_ulp"] is None or not r["worst_ulp"] <= t["worst_ulp"]):
            t["worst_ulp"], t["worst"] = r["worst_ulp"], f"{r['dtype']}: {r['worst']}"
    return list(out.values())


def _header(run: Run) -> list[str]:
    lines = [f"refloss conformance against {run.golden} ({_minutes(run.seconds)})"]
    for t, v in run.targets.items():
        lines.append(f"  {t}: {v}")
    for t, why in run.unavailable.items():
        lines.append(f"  {t}: not run ({why})")
    if run.per_loss:
        lines.append(f"  {run.per_loss} cases per loss, spread over each golden file")
    return lines


def _minutes(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def terminal(run: Run, file=None, defects: int = 20) -> None:
    """Print the summary: verdicts per target and dtype, per loss, and the first defects."""
    file = file or sys.stdout
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table
    except ImportError:
        _plain(run, file, defects)
        return
    probe = Console(file=file)
    console = Console(file=file, width=probe.width if probe.is_terminal else 160)
    for line in _header(run):
        console.print(line, highlight=False, markup=False)
    counts = run.counts()
    table = Table(title="verdicts per framework and dtype")
    for col in ("target", "dtype", *VERDICTS):
        table.add_column(col, justify="left" if col in ("target", "dtype") else "right")
    for (t, d), c in sorted(counts.items(), key=lambda kv: (kv[0][0], DTYPES.index(kv[0][1]))):
        table.add_row(escape(t), d, *(str(c.get(v, 0)) for v in VERDICTS))
    console.print(table)
    table = Table(title="per loss (all dtypes)")
    for col in ("target", "loss", "framework call", *(_SHORT[v] for v in VERDICTS), "worst defect ULP"):
        table.add_column(col, justify="right" if col in (*_SHORT.values(), "worst defect ULP") else "left")
    for r in _loss_rows(run):
        if r["pass"] + r["convention"] + r["defect"] == 0:
            continue
        style = "red" if r["defect"] else ("yellow" if r["convention"] else None)
        table.add_row(escape(r["target"]), r["loss"], escape(r["api"]), *(str(r[v]) for v in VERDICTS), _ulp(r["worst_ulp"]), style=style)
    console.print(table)
    _tail(run, lambda s: console.print(s, highlight=False, markup=False), defects)


def _plain(run: Run, file, defects: int) -> None:
    say = lambda s="": print(s, file=file)  # noqa: E731
    for line in _header(run):
        say(line)
    say()
    say(f"{'target':<14} {'dtype':<9} " + " ".join(f"{v:>11}" for v in VERDICTS))
    for (t, d), c in sorted(run.counts().items(), key=lambda kv: (kv[0][0], DTYPES.index(kv[0][1]))):
        say(f"{t:<14} {d:<9} " + " ".join(f"{c.get(v, 0):>11}" for v in VERDICTS))
    say()
    lr = [r for r in _loss_rows(run) if r["pass"] + r["convention"] + r["defect"]]
    if lr:
        w = max(len(r["loss"]) for r in lr)
        say(f"{'target':<14} {'loss':<{w}} " + " ".join(f"{_SHORT[v]:>6}" for v in VERDICTS) + "  worst defect ULP  framework call")
        for r in lr:
            say(f"{r['target']:<14} {r['loss']:<{w}} " + " ".join(f"{r[v]:>6}" for v in VERDICTS)
                + f"  {_ulp(r['worst_ulp']):>16}  {r['api']}")
    _tail(run, say, defects)


def _tail(run: Run, say, defects: int) -> None:
    found = run.defects()
    if found:
        say("")
        say(f"{len(found)} defect(s)" + (f", the first {defects}:" if len(found) > defects else ":"))
        for o in found[:defects]:
            say(f"  {o.target} {o.loss} [{o.case}] {o.dtype}: {o.detail}")
    if run.missing:
        say("")
        say(f"no golden cases yet ({len(run.missing)} losses): {', '.join(run.missing)}")
    if run.problems:
        say("")
        say(f"{len(run.problems)} unreadable golden line(s), e.g. {run.problems[0][0]}: {run.problems[0][1]}")


# --------------------------------------------------------------------------------------------------
# Files.


def to_json(run: Run) -> dict:
    counts = {f"{t}/{d}": dict(c) for (t, d), c in run.counts().items()}
    return {
        "format": "refloss-conformance/1",
        "golden": run.golden,
        "targets": run.targets,
        "unavailable": run.unavailable,
        "per_loss": run.per_loss,
        "seconds": round(run.seconds, 2),
        "policy": {"bound": "C[dtype] * (1 + S), S the case's sensitivity to rounding in the dtype", "C": C},
        "counts": counts,
        "missing": run.missing,
        "problems": [list(p) for p in run.problems],
        "outcomes": [o.to_json() for o in run.outcomes],
    }


def markdown(run: Run) -> str:
    out = ["# refloss conformance report", ""]
    out += [f"- {line.strip()}" for line in _header(run)]
    out += ["", "Tolerance: an error in ULP of the dtype within `C[dtype] * (1 + S)`, `S` the case's sensitivity to "
            f"rounding in that dtype, `C` = {C} (refloss.conformance.policy).", ""]
    out += ["## Verdicts per framework and dtype", "", "| target | dtype | " + " | ".join(VERDICTS) + " |",
            "|---|---|" + "---:|" * len(VERDICTS)]
    for (t, d), c in sorted(run.counts().items(), key=lambda kv: (kv[0][0], DTYPES.index(kv[0][1]))):
        out.append(f"| {t} | {d} | " + " | ".join(str(c.get(v, 0)) for v in VERDICTS) + " |")
    by_family: dict = {}
    for r in rows(run, merge=True):
        by_family.setdefault(r["family"], []).append(r)
    for family, rs in sorted(by_family.items()):
        out += ["", f"## {family}", "", "| target | loss | dtype | framework call | " + " | ".join(VERDICTS) + " | worst defect ULP | notes |",
                "|---|---|---|---|" + "---:|" * len(VERDICTS) + "---:|---|"]
        for r in rs:
            notes = "; ".join(f"{k} ({n})" for k, n in r["conventions"].items())
            if not (r["pass"] + r["convention"] + r["defect"]):
                notes = "; ".join(f"{k} ({n})" for k, n in r["not_offered"].most_common(2))
            out.append(f"| {r['target']} | `{r['loss']}` | {r['dtype']} | `{r['api'] or '-'}` | "
                       + " | ".join(str(r[v]) for v in VERDICTS) + f" | {_ulp(r['worst_ulp'])} | {_md(notes)} |")
    conventions = Counter((o.target, o.convention, o.detail) for o in run.outcomes if o.verdict == "convention")
    if conventions:
        out += ["", "## Conventions seen", ""]
        for (t, _, detail), n in sorted(conventions.items()):
            out.append(f"- {t}: {detail} ({n} cases)")
    found = run.defects()
    out += ["", f"## Defects ({len(found)})", ""]
    for o in found:
        out += [f"### {o.target} `{o.loss}` {o.case}, {o.dtype}", "", _md(o.detail), "", "```python", o.reproducer.rstrip(), "```", ""]
    if run.missing:
        out += ["", f"## Losses without golden cases ({len(run.missing)})", "", ", ".join(f"`{m}`" for m in run.missing)]
    if run.problems:
        out += ["", "## Unreadable golden lines", ""] + [f"- {w}: {_md(m)}" for w, m in run.problems]
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>refloss conformance</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td.l, th.l {{ text-align: left; }}
tr.defect td {{ background: #fde8e8; }} tr.convention td {{ background: #fff6dc; }}
tr.none td {{ color: #999; }} code, pre {{ font-family: ui-monospace, monospace; font-size: 12px; }}
pre {{ background: #f7f7f7; padding: 8px; overflow-x: auto; }} .filters {{ position: sticky; top: 0; background: #fff; padding: 6px 0; }}
</style></head><body>
<h1>refloss conformance</h1>
<p>{header}</p>
<p>Tolerance: error in ULP of the dtype &le; C[dtype] &times; (1 + S), S the case's sensitivity to rounding in that dtype, C = {policy}.</p>
<div class="filters">framework <select id="ft"><option value="">all</option>{targets}</select>
dtype <select id="fd"><option value="">all</option>{dtypes}</select>
<label><input type="checkbox" id="fo"> only rows with a defect or convention</label></div>
<h2>Verdicts per framework and dtype</h2>
{counts}
{families}
<h2>Defects ({ndefects})</h2>
{defects}
{missing}
<script>
function apply() {{
  const t = document.getElementById('ft').value, d = document.getElementById('fd').value, o = document.getElementById('fo').checked;
  document.querySelectorAll('[data-target]').forEach(function (e) {{
    const ok = (!t || e.dataset.target === t) && (!d || e.dataset.dtype === d || e.dataset.dtype === 'all') && (!o || e.dataset.flag === '1');
    e.style.display = ok ? '' : 'none';
  }});
}}
['ft', 'fd', 'fo'].forEach(function (id) {{ document.getElementById(id).addEventListener('change', apply); }});
</script>
</body></html>
"""


def page(run: Run) -> str:
    esc = html.escape
    head = "<br>".join(esc(line) for line in _header(run))
    counts = ["<table><tr><th class=l>framework</th><th class=l>dtype</th>" + "".join(f"<th>{v}</th>" for v in VERDICTS) + "</tr>"]
    for (t, d), c in sorted(run.counts().items(), key=lambda kv: (kv[0][0], DTYPES.index(kv[0][1]))):
        counts.append(f'<tr data-target="{esc(t)}" data-dtype="{d}" data-flag="{int(bool(c.get("defect") or c.get("convention")))}">'
                      f"<td class=l>{esc(t)}</td><td class=l>{d}</td>" + "".join(f"<td>{c.get(v, 0)}</td>" for v in VERDICTS) + "</tr>")
    counts.append("</table>")
    by_family: dict = {}
    for r in rows(run, merge=True):
        by_family.setdefault(r["family"], []).append(r)
    families = []
    for family, rs in sorted(by_family.items()):
        families.append(f"<h2>{esc(family)}</h2><table><tr><th class=l>framework</th><th class=l>loss</th><th class=l>dtype</th>"
                        "<th class=l>framework call</th>" + "".join(f"<th>{v}</th>" for v in VERDICTS)
                        + "<th>worst defect ULP</th><th class=l>notes</th></tr>")
        for r in rs:
            kind = "defect" if r["defect"] else ("convention" if r["convention"] else ("" if r["pass"] else "none"))
            notes = "; ".join(f"{k} ({n})" for k, n in r["conventions"].items()) or (
                "" if r["pass"] + r["defect"] else "; ".join(f"{k} ({n})" for k, n in r["not_offered"].most_common(2)))
            families.append(
                f'<tr class="{kind}" data-target="{esc(r["target"])}" data-dtype="{r["dtype"]}" data-flag="{int(kind in ("defect", "convention"))}">'
                f'<td class=l>{esc(r["target"])}</td><td class=l><code>{esc(r["loss"])}</code></td><td class=l>{r["dtype"]}</td>'
                f'<td class=l><code>{esc(r["api"] or "-")}</code></td>' + "".join(f"<td>{r[v]}</td>" for v in VERDICTS)
                + f'<td>{_ulp(r["worst_ulp"])}</td><td class=l>{esc(notes)}</td></tr>')
        families.append("</table>")
    defects = []
    for o in run.defects():
        defects.append(f'<details data-target="{esc(o.target)}" data-dtype="{o.dtype}" data-flag="1"><summary>{esc(o.target)} '
                       f"<code>{esc(o.loss)}</code> {esc(o.case)}, {o.dtype}: {esc(o.detail)}</summary><pre>{esc(o.reproducer)}</pre></details>")
    missing = ""
    if run.missing:
        missing = f"<h2>Losses without golden cases ({len(run.missing)})</h2><p>" + ", ".join(f"<code>{esc(m)}</code>" for m in run.missing) + "</p>"
    targets = sorted({o.target for o in run.outcomes})
    dtypes = [d for d in DTYPES if any(o.dtype == d for o in run.outcomes)]
    return _PAGE.format(
        header=head, policy=esc(json.dumps(C)),
        targets="".join(f'<option value="{esc(t)}">{esc(t)}</option>' for t in targets),
        dtypes="".join(f'<option value="{d}">{d}</option>' for d in dtypes),
        counts="\n".join(counts), families="\n".join(families), ndefects=len(run.defects()),
        defects="\n".join(defects) or "<p>none</p>", missing=missing,
    )


def write(run: Run, directory) -> list[Path]:
    """Write ``report.md``, ``report.json`` and ``report.html`` into ``directory`` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "report.md", directory / "report.json", directory / "report.html"]
    paths[0].write_text(markdown(run), encoding="utf-8")
    paths[1].write_text(json.dumps(to_json(run), indent=1, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    paths[2].write_text(page(run), encoding="utf-8")
    return paths
