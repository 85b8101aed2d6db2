"""HTML pieces of the report: one page with inline CSS and a few lines of inline JavaScript (table
sorting), no external assets, so ``report.html`` opens offline from its folder.

Every text that comes from a user (case ids, paths, config values) goes through :func:`esc`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline.core.layout import report_link
from pipeline.report.figures import LABEL_RGB, PRED_RGB, class_rgb

__all__ = [
    "esc",
    "fmt",
    "page",
    "table",
    "summary_table",
    "ci_text",
    "figure",
    "section",
    "legend",
    "views_block",
    "attention_block",
]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:16px 24px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:22px 0 8px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:14px 0 4px}.meta{color:#555;font-size:13px}.note{color:#8a4b00;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}
td.t,th.t{text-align:left}table.sortable th{cursor:pointer}table.sortable th[data-dir=asc]::after{content:" ▲"}
table.sortable th[data-dir=desc]::after{content:" ▼"}
figure{display:inline-table;margin:4px 8px 4px 0;vertical-align:top}
figcaption{display:table-caption;caption-side:bottom;font-size:12px;color:#444;text-align:center}
img{image-rendering:pixelated;display:block}
.swatch{display:inline-block;width:12px;height:12px;vertical-align:middle;margin:0 4px 0 10px}
"""

# Click a header to sort (numbers numerically, text alphabetically, empty cells last); on load the
# body records that the script ran and how many images failed to load (checked by the tests).
_JS = """
function sortBy(th){const t=th.closest('table'),b=t.tBodies[0],i=[...th.parentNode.children].indexOf(th);
const asc=th.dataset.dir!=='asc';for(const h of th.parentNode.children)delete h.dataset.dir;
th.dataset.dir=asc?'asc':'desc';const num=th.dataset.type==='num';
const key=r=>{const c=r.cells[i],v=c.dataset.v!==undefined?c.dataset.v:c.textContent;
return num?(v===''||isNaN(parseFloat(v))?null:parseFloat(v)):v;};
const rows=[...b.rows].sort((r,s)=>{const x=key(r),y=key(s);if(x===null)return y===null?0:1;
if(y===null)return -1;const c=num?x-y:String(x).localeCompare(String(y));return asc?c:-c;});
for(const r of rows)b.appendChild(r);}
for(const th of document.querySelectorAll('table.sortable th'))th.addEventListener('click',()=>sortBy(th));
window.addEventListener('load',()=>{const bad=[...document.images].filter(im=>!(im.complete&&im.naturalWidth>0));
document.body.dataset.brokenImages=String(bad.length);document.body.dataset.ready='1';});
"""


def esc(value: object) -> str:
    """HTML-escaped text."""
    return html.escape(str(value), quote=True)


def fmt(value: object, digits: int = 3) -> str:
    """A number with ``digits`` decimals (integers as integers); empty for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return ""
    return str(int(number)) if number.is_integer() and abs(number) >= 1000 else f"{number:.{digits}f}"


def page(title: str, body: Iterable[str]) -> str:
    """A complete HTML document."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{_JS}</script>\n</body></html>\n"
    )


def section(title: str, anchor: str, *parts: str) -> str:
    """An ``<h2>`` section."""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>\n' + "\n".join(parts) + "</section>"


def table(
    df: pd.DataFrame,
    sortable: bool = False,
    table_id: str = "",
    links: dict[str, str] | None = None,
    digits: int = 3,
) -> str:
    """A table of ``df``; numeric columns are right-aligned and sort numerically.

    Args:
        df: the rows.
        sortable: click a header to sort.
        table_id: the ``id`` attribute.
        links: ``{case_id: "#anchor"}``: the first column's cells link there.
        digits: decimals of floats.
    """
    links = links or {}
    numeric = {c: pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df}
    head = "".join(
        f'<th data-type="{"num" if numeric[c] else "text"}" class="{"" if numeric[c] else "t"}">{esc(c)}</th>'
        for c in df.columns
    )
    rows = []
    for _, row in df.iterrows():
        cells = []
        for j, col in enumerate(df.columns):
            value = row[col]
            text = fmt(value, digits) if numeric[col] else ("" if pd.isna(value) else esc(value))
            if j == 0 and str(value) in links:
                text = f'<a href="{esc(links[str(value)])}">{text}</a>'
            attr = f' data-v="{esc(fmt(value, 9))}"' if numeric[col] else ' class="t"'
            cells.append(f"<td{attr}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
    cls = ' class="sortable"' if sortable else ""
    return (
        f"<table{ident}{cls}><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    )


def ci_text(stats: dict) -> str:
    """`` [low, high]`` of a mean's bootstrap interval, as small text; empty for summaries without one."""
    lo, hi = stats.get("ci_low"), stats.get("ci_high")
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return f"<br><small>[{fmt(lo)}, {fmt(hi)}]</small>"


def summary_table(summary: dict, metrics: Sequence[str]) -> str:
    """Mean ± std [bootstrap interval] (median) per metric, one row per fold and one for all cases,
    from ``cv_summary.json``."""
    head = "".join(f"<th>{esc(m)}</th>" for m in metrics)
    rows = []
    groups = [
        (f"fold {k}", v) for k, v in sorted(summary.get("per_fold", {}).items(), key=lambda kv: int(kv[0]))
    ]
    groups.append(("all", summary.get("foreground_mean", {})))
    # cases per fold: a case has one row per class
    per_case = {c.get("case_id", i): c.get("fold") for i, c in enumerate(summary.get("metric_per_case", []))}
    counts = pd.Series(list(per_case.values())).value_counts()
    for name, stats in groups:
        n = (
            int(counts.get(int(name.split()[1]), 0))
            if name.startswith("fold")
            else summary.get("n_cases", "")
        )
        cells = []
        for m in metrics:
            s = stats.get(m)
            cells.append(
                f"<td>{fmt(s['mean'])} ± {fmt(s['std'])}{ci_text(s)}<br><small>median {fmt(s['median'])}</small></td>"
                if s
                else "<td></td>"
            )
        strong = "<b>all</b>" if name == "all" else esc(name)
        rows.append(f'<tr><td class="t">{strong}</td><td>{esc(n)}</td>' + "".join(cells) + "</tr>")
    return (
        f'<table id="summary"><thead><tr><th class="t">fold</th><th>cases</th>{head}</tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
    )


def figure(src: str, caption: str = "", alt: str = "", width: int | None = None) -> str:
    """An image (relative ``src``) with a caption."""
    w = f' width="{int(width)}"' if width else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{esc(src)}" alt="{esc(alt or caption)}"{w}>{cap}</figure>'


def legend(class_names: dict[int, str] | None = None) -> str:
    """The colour key and display convention of the slice overlays.

    Args:
        class_names: ``{class value: name}``; with more than one class each gets its colour pair.
    """

    def swatch(rgb: tuple) -> str:
        return f'<span class="swatch" style="background:rgb{tuple(rgb)}"></span>'

    names = dict(class_names or {1: "pancreas"})
    if len(names) == 1:
        key = f"{swatch(LABEL_RGB)}label (inside its edge){swatch(PRED_RGB)}prediction (outside its edge)"
    else:
        key = "; ".join(
            f"{esc(name)}: {swatch(class_rgb(k)[0])}label {swatch(class_rgb(k)[1])}prediction"
            for k, name in names.items()
        )
        key += " (labels inside their edge, predictions outside)"
    return (
        f'<p class="meta">{key}. '
        "Canonical grid, radiological display: axial and coronal show the patient's right on the left, "
        "axial anterior up, coronal/sagittal superior up, sagittal anterior left. CT window W400/L40.</p>"
    )


def views_block(views: list[dict], shape: Sequence[int], title: str, anchor: str) -> str:
    """One case's three views (from :func:`pipeline.report.cases.write_case_views`) under a heading.

    Args:
        views: the view dicts; their PNGs are in ``report_files/``.
        shape: the canonical volume's shape (for "slice i of n").
        title: heading, already HTML.
        anchor: the heading's id.
    """
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}
    figs = [
        figure(report_link(v["path"].name), f"{v['view']} slice {v['index']} of {shape[axis[v['view']]]}")
        for v in views
    ]
    return f'<div class="case"><h3 id="{esc(anchor)}">{title}</h3>' + "".join(figs) + "</div>"


def attention_block(result: dict, title: str, anchor: str) -> str:
    """One case's CT window and gate maps (from :func:`pipeline.report.cases.write_attention_views`)."""
    size = "×".join(str(s) for s in result["size"])
    figs = [figure(report_link(result["ct"].name), f"CT window {size}, axial slice {result['index']}")]
    for g in result["gates"]:
        ratio = ""
        if g["mean_in"] is not None and g["mean_out"] is not None:
            ratio = f" · α in {g['mean_in']:.2f} / out {g['mean_out']:.2f}"
        figs.append(figure(report_link(g["path"].name), f"{g['name']}{ratio}"))
    return f'<div class="case"><h3 id="{esc(anchor)}-att">{title}</h3>' + "".join(figs) + "</div>"
