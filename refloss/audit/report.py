"""The audit's report: ``index.html``, ``report.md``, ``report.json`` and one heatmap per loss and
implementation under ``figures/``.

A heatmap has two panels, the value and the gradient; its columns are the stress levels grouped by
axis (and parameter variant), its rows the dtypes; the colour is log10 of the error in ULP of the
dtype, failing cells are framed and marked (``N`` NaN, ``I`` an infinity, ``E`` an exception, ``S`` a
sign error, ``x`` inaccurate; ``c`` a documented convention), ``-`` is not offered, ``u`` undefined
(no exact result) and grey not representable. Figures need matplotlib; without it the tables are
written and the figures skipped with a message.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np

from .judge import CERTIFIED_ULP, PARTS, SEVERITY
from .sweep import DTYPES

FORMAT = "refloss-audit/1"
MARKS = {"nan": "N", "inf": "I", "exception": "E", "sign": "S", "inaccurate": "x", "convention": "c",
         "not offered": "-", "undefined": "u", "not representable": ""}
#: Colour scale of the heatmaps: log10 of the error in ULP.
LOG_MIN, LOG_MAX = -1.0, 8.0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", text)


def figure_name(loss: str, implementation: str) -> str:
    return f"figures/{_slug(loss)}__{_slug(implementation)}.png"


def _num(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else ("inf" if x > 0 else "nan")


def _fmt(x) -> str:
    if x is None:
        return ""
    x = float(x)
    return f"{x:.3g}" if math.isfinite(x) else "inf"


# --------------------------------------------------------------------------------------------------
# Columns of a loss: (variant, axis) groups of levels, in sweep order.


def columns(audit, loss: str) -> list:
    """``[(group label, [result, ...])]`` of ``loss``: one group per variant and axis, levels in order."""
    groups: dict = {}
    for r in audit.results:
        p = r.point
        if p.loss != loss:
            continue
        label = p.axis if p.variant == "defaults" else f"{p.variant}: {p.axis}"
        groups.setdefault(label, []).append(r)
    return [(g, sorted(rs, key=lambda r: r.point.index)) for g, rs in groups.items()]


def _worst(cells) -> str:
    return max((c.verdict for c in cells), key=lambda v: SEVERITY[v], default="not offered")


# --------------------------------------------------------------------------------------------------
# Heatmaps.


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def heatmap(audit, loss: str, implementation: str, path: Path) -> bool:
    """Draw the heatmap of ``implementation`` on ``loss`` into ``path``; ``False`` without matplotlib."""
    mpl = _matplotlib()
    if mpl is None:
        return False
    Figure, Canvas = mpl
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    groups = columns(audit, loss)
    results = [r for _, rs in groups for r in rs]
    n = len(results)
    width = max(7.0, 0.3 * n + 3.0)  # inches; the margins below are fixed in inches
    fig = Figure(figsize=(width, 5.8))
    Canvas(fig)
    cmap = colormaps["YlOrRd"].with_extremes(bad="#d9d9d9")
    axes = fig.subplots(2, 1, sharex=True)
    for ax, part in zip(axes, PARTS):
        grid = np.full((len(DTYPES), n), np.nan)
        for j, r in enumerate(results):
            for i, dtype in enumerate(DTYPES):
                c = r.cell(implementation, dtype, part)
                if c is None:
                    continue
                if c.verdict in ("nan", "inf", "exception"):
                    grid[i, j] = LOG_MAX
                elif c.error is not None and c.verdict not in ("not offered", "undefined", "not representable"):
                    grid[i, j] = np.clip(math.log10(max(c.error, 10.0**LOG_MIN)) if math.isfinite(c.error) else LOG_MAX, LOG_MIN, LOG_MAX)
        image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=LOG_MIN, vmax=LOG_MAX, interpolation="nearest")
        for j, r in enumerate(results):
            for i, dtype in enumerate(DTYPES):
                c = r.cell(implementation, dtype, part)
                if c is None:
                    continue
                if c.verdict == "not offered":
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="white", edgecolor="none"))
                mark = MARKS.get(c.verdict, "")
                if mark:
                    dark = np.isfinite(grid[i, j]) and grid[i, j] > 0.55 * LOG_MAX
                    ax.text(j, i, mark, ha="center", va="center", fontsize=7, color="white" if dark else "black",
                            fontweight="bold" if c.failing else "normal")
                if c.failing:
                    ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="black", linewidth=1.2))
        start = 0
        for label, rs in groups:
            if start:
                ax.axvline(start - 0.5, color="black", linewidth=1.5)
            if part == "value":
                ax.text(start - 0.4, -0.75, label, ha="left", va="bottom", fontsize=7, rotation=15)
            start += len(rs)
        ax.set_yticks(range(len(DTYPES)), DTYPES, fontsize=8)
        ax.set_ylabel(part, fontsize=9)
    axes[-1].set_xticks(range(n), [r.point.level for r in results], rotation=90, fontsize=7)
    fig.suptitle(f"{loss}: {implementation}", fontsize=11, y=0.995)
    fig.text(0.5, 0.95, "colour: log10 of the error in ULP of the dtype; framed: failing (N NaN, I inf, E exception, S sign, x inaccurate)",
             ha="center", fontsize=7)
    fig.text(0.5, 0.93, "c: a documented convention; -: not offered; u: undefined (no exact result); grey: not representable in the dtype",
             ha="center", fontsize=7)
    fig.subplots_adjust(left=1.0 / width, right=1 - 1.1 / width, top=0.8, bottom=0.2, hspace=0.08)
    fig.colorbar(image, cax=fig.add_axes([1 - 0.95 / width, 0.2, 0.12 / width, 0.6]), label="log10 ULP")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


# --------------------------------------------------------------------------------------------------
# Tables.


def matrix(audit) -> list:
    """``[(loss, {implementation: (worst verdict, failing (axis, dtype, part) count)})]``."""
    out = []
    for loss in audit.losses:
        cells: dict = {}
        for r in audit.results:
            if r.point.loss == loss:
                for c in r.cells:
                    cells.setdefault(c.implementation, []).append((r.point, c))
        row = {}
        for impl in audit.implementations:
            got = cells.get(impl, [])
            failing = {(p.variant, p.axis, c.dtype, c.part) for p, c in got if c.failing}
            row[impl] = (_worst([c for _, c in got]), len(failing))
        out.append((loss, row))
    return out


def _first_text(entry) -> str:
    if entry is None:
        return ""
    what = ", ".join(f"{part} {verdict}" for part, verdict in sorted(entry["what"].items()))
    return f"{entry['level']}: {what}"


def to_json(audit) -> dict:
    violations = [{"loss": r.point.loss, "variant": r.point.variant, "axis": r.point.axis, "level": r.point.level,
                   "implementation": c.implementation, "part": c.part, "verdict": c.verdict,
                   "error_ulp": _num(c.error), "bound_ulp": _num(c.bound), "detail": c.detail} for r, c in audit.violations()]
    points = []
    for r in audit.results:
        entry = r.point.to_json()
        entry["exact"] = {
            "value": None if r.exact.value is None else [_num(v) for v in np.ravel(r.exact.value)],
            "gradient_certified": r.exact.grads is not None,
            "why": r.exact.why,
            "seconds": round(r.exact.seconds, 4),
        }
        entry["cells"] = [{k: v for k, v in c.to_json().items() if k != "reproducer"} for c in r.cells]  # findings carry them
        points.append(entry)
    findings = [{**f, "error_ulp": _num(f["error_ulp"]), "bound_ulp": _num(f["bound_ulp"]),
                 "figure": figure_name(f["loss"], f["implementation"])} for f in audit.findings()]
    return {
        "format": FORMAT,
        "options": audit.options,
        "implementations": audit.implementations,
        "unavailable": audit.unavailable,
        "dtypes": list(DTYPES),
        "seconds": round(audit.seconds, 2),
        "seconds_per_loss": {k: round(v, 3) for k, v in audit.seconds_per_loss.items()},
        "refloss_float64": {"clean": audit.clean, "violations": violations},
        "findings": findings,
        "first_failures": audit.first_failures(),
        "skipped": [{"point": k, "why": w} for k, w in audit.skipped],
        "points": points,
    }


def _axes_legend(audit) -> list:
    """``[(kind, axis name, doc, levels)]`` of the axes that ran."""
    from ..domains import STRESS_AXES

    ran = {r.point.axis for r in audit.results}
    return [(a.kind, a.name, a.doc, [label for label, _ in a.levels]) for a in STRESS_AXES if a.name in ran]


def markdown(audit, figures: set) -> str:
    lines = ["# refloss audit", ""]
    lines.append(f"{len(audit.results)} points over {len(audit.losses)} losses in {audit.seconds:.1f} s; implementations: "
                 + ", ".join(f"{n} ({v})" for n, v in audit.implementations.items()) + ".")
    for name, why in audit.unavailable.items():
        lines.append(f"- {name}: not available ({why})")
    lines += ["", "## refloss in float64", ""]
    if audit.clean:
        lines.append(f"Clean: every point within the certification bound ({_fmt(CERTIFIED_ULP)} ULP against the rounded exact results), no NaN or Inf where the exact result is finite.")
    else:
        lines.append("**Not clean**:")
        lines.append("")
        lines.append("| loss | variant | axis | level | implementation | part | verdict | error ULP | detail |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r, c in audit.violations():
            p = r.point
            lines.append(f"| {p.loss} | {p.variant} | {p.axis} | {p.level} | {c.implementation} | {c.part} | {c.verdict} | {_fmt(c.error)} | {c.detail} |")
    lines += ["", "## Losses x implementations", "", "| loss | " + " | ".join(audit.implementations) + " |",
              "|---|" + "---|" * len(audit.implementations)]
    for loss, row in matrix(audit):
        cells = []
        for impl, (worst, count) in row.items():
            text = f"{count} failing" if count else ("not offered" if worst == "not offered" else "ok")
            name = figure_name(loss, impl)
            cells.append(f"[{text}]({name})" if name in figures else text)
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    lines += ["", "## Findings", "", "The first (mildest) level at which each failure appears, per implementation, loss, axis, dtype and part.", ""]
    findings = audit.findings()
    if not findings:
        lines.append("None.")
    else:
        lines.append("| implementation | loss | variant | part | verdict | dtype | axis | first level | error ULP | bound ULP | detail |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for f in findings:
            lines.append(f"| {f['implementation']} | {f['loss']} | {f['variant']} | {f['part']} | {f['verdict']} | {f['dtype']} | {f['axis']} | "
                         f"{f['level']} | {_fmt(f['error_ulp'])} | {_fmt(f['bound_ulp'])} | {f['detail'].replace('|', '/')} |")
    lines += ["", "## First failing level on each axis", "", "| loss | implementation | variant | axis | " + " | ".join(DTYPES) + " |",
              "|---|---|---|---|" + "---|" * len(DTYPES)]
    for row in audit.first_failures():
        if any(row["first"].values()):
            lines.append(f"| {row['loss']} | {row['implementation']} | {row['variant']} | {row['axis']} | "
                         + " | ".join(_first_text(row["first"][d]) for d in DTYPES) + " |")
    lines += ["", "## Stress axes", ""]
    for kind, name, doc, levels in _axes_legend(audit):
        lines.append(f"- **{name}** ({kind}): {doc}. Levels: {', '.join(levels)}.")
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: sans-serif; font-size: 14px; margin: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #eee; }
td.fail { background: #f4a6a6; } td.ok { background: #c9eec9; } td.na { background: #eee; color: #777; }
pre { font-size: 11px; max-width: 100em; overflow-x: auto; }
"""


def _h(x) -> str:
    return html.escape(str(x))


def index_html(audit, figures: set) -> str:
    out = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>refloss audit</title>', f"<style>{_CSS}</style></head><body>",
           "<h1>refloss audit</h1>",
           f"<p>{len(audit.results)} points over {len(audit.losses)} losses in {audit.seconds:.1f} s. Implementations: "
           + ", ".join(f"<b>{_h(n)}</b> ({_h(v)})" for n, v in audit.implementations.items()) + ".</p>"]
    if audit.unavailable:
        out.append("<p>Not available: " + "; ".join(f"{_h(n)} ({_h(w)})" for n, w in audit.unavailable.items()) + "</p>")
    out.append("<p>Also: <a href='report.md'>report.md</a>, <a href='report.json'>report.json</a>.</p>")
    out.append("<h2>refloss in float64</h2>")
    if audit.clean:
        out.append(f"<p class='ok'>Clean: every point within the certification bound ({_fmt(CERTIFIED_ULP)} ULP against the rounded exact results), no NaN or Inf where the exact result is finite.</p>")
    else:
        out.append("<p><b>Not clean.</b></p><table><tr><th>loss</th><th>variant</th><th>axis</th><th>level</th><th>implementation</th><th>part</th><th>verdict</th><th>error ULP</th><th>detail</th></tr>")
        for r, c in audit.violations():
            p = r.point
            out.append("<tr>" + "".join(f"<td>{_h(v)}</td>" for v in (p.loss, p.variant, p.axis, p.level, c.implementation, c.part, c.verdict, _fmt(c.error), c.detail)) + "</tr>")
        out.append("</table>")
    out.append("<h2>Losses x implementations</h2><p>Each cell links the heatmap of that loss and implementation; the number counts failing (axis, dtype, part) combinations.</p>")
    out.append("<table><tr><th>loss</th>" + "".join(f"<th>{_h(n)}</th>" for n in audit.implementations) + "</tr>")
    for loss, row in matrix(audit):
        cells = []
        for impl, (worst, count) in row.items():
            cls = "fail" if count else ("na" if worst in ("not offered", "not representable", "undefined") else "ok")
            text = f"{count} failing" if count else ("not offered" if worst == "not offered" else "ok")
            name = figure_name(loss, impl)
            body = f"<a href='{_h(name)}'>{text}</a>" if name in figures else text
            cells.append(f"<td class='{cls}'>{body}</td>")
        out.append(f"<tr><td>{_h(loss)}</td>" + "".join(cells) + "</tr>")
    out.append("</table>")
    out.append("<h2>Findings</h2><p>The first (mildest) level at which each failure appears, per implementation, loss, axis, dtype and part.</p>")
    findings = audit.findings()
    if not findings:
        out.append("<p>None.</p>")
    else:
        out.append("<table><tr><th>implementation</th><th>loss</th><th>variant</th><th>part</th><th>verdict</th><th>dtype</th><th>axis</th><th>first level</th><th>error ULP</th><th>bound ULP</th><th>detail</th><th>figure</th></tr>")
        for f in findings:
            name = figure_name(f["loss"], f["implementation"])
            fig = f"<a href='{_h(name)}'>png</a>" if name in figures else ""
            detail = _h(f["detail"])
            if f["reproducer"]:
                detail += f"<details><summary>reproducer</summary><pre>{_h(f['reproducer'])}</pre></details>"
            out.append("<tr>" + "".join(f"<td>{_h(v)}</td>" for v in (f["implementation"], f["loss"], f["variant"], f["part"], f["verdict"], f["dtype"], f["axis"], f["level"], _fmt(f["error_ulp"]), _fmt(f["bound_ulp"])))
                       + f"<td>{detail}</td><td>{fig}</td></tr>")
        out.append("</table>")
    out.append("<h2>First failing level on each axis</h2><table><tr><th>loss</th><th>implementation</th><th>variant</th><th>axis</th>" + "".join(f"<th>{d}</th>" for d in DTYPES) + "</tr>")
    for row in audit.first_failures():
        if any(row["first"].values()):
            out.append("<tr>" + "".join(f"<td>{_h(v)}</td>" for v in (row["loss"], row["implementation"], row["variant"], row["axis"]))
                       + "".join(f"<td class='{'fail' if row['first'][d] else 'ok'}'>{_h(_first_text(row['first'][d]))}</td>" for d in DTYPES) + "</tr>")
    out.append("</table><h2>Stress axes</h2><ul>")
    for kind, name, doc, levels in _axes_legend(audit):
        out.append(f"<li><b>{_h(name)}</b> ({_h(kind)}): {_h(doc)}. Levels: {_h(', '.join(levels))}.</li>")
    out.append("</ul></body></html>")
    return "\n".join(out) + "\n"


def write(audit, out: Path, figures: bool = True) -> dict:
    """Write the report into ``out``; returns ``{"paths": [...], "figures": [...], "messages": [...]}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    messages, drawn = [], set()
    if figures:
        if _matplotlib() is None:
            messages.append("refloss audit: matplotlib is not installed (pip install 'refloss[plot]'): the heatmaps are skipped, the tables written")
        else:
            offered = {(r.point.loss, c.implementation) for r in audit.results for c in r.cells if c.verdict != "not offered"}
            for loss in audit.losses:
                for impl in audit.implementations:
                    name = figure_name(loss, impl)
                    if (loss, impl) in offered and heatmap(audit, loss, impl, out / name):  # nothing to draw where nothing is offered
                        drawn.add(name)
    paths = []
    for name, text in (("report.json", json.dumps(to_json(audit), indent=1, allow_nan=False) + "\n"),
                       ("report.md", markdown(audit, drawn)), ("index.html", index_html(audit, drawn))):
        (out / name).write_text(text, encoding="utf-8")
        paths.append(out / name)
    return {"paths": paths, "figures": sorted(drawn), "messages": messages}
