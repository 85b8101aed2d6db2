"""The report's per-class block: means with bootstrap intervals per class, tumour detection, FROC."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.report.page import ci_text, esc, fmt

__all__ = ["class_table"]


def _rate(case: dict, key: str, num: str, den: str) -> str:
    """``0.800 [0.500, 1.000] (4/5)``: a case-level rate, its interval and its counts."""
    if case[key] is None:
        return "n/a"
    lo, hi = case.get(f"{key}_ci") or (None, None)
    ci = f" [{fmt(lo)}, {fmt(hi)}]" if lo is not None and hi is not None else ""
    return f"{fmt(case[key])}{ci} ({case[num]}/{case[den]})"


def _optional(value: float | None) -> str:
    return "n/a" if value is None else fmt(value)


def _detection(name: str, det: dict) -> str:
    """One paragraph: case level, lesion level and FROC of a detection class."""
    c, les, froc = det["case_level"], det["lesion_level"], det["froc"]
    points = "; ".join(
        f"t={p['threshold']:g}: {fmt(p['fp_per_case'])} FP/case, sensitivity {_optional(p['sensitivity'])}"
        for p in froc["points"]
    )
    return (
        f'<p class="meta"><b>{esc(name)} detection</b> · case level: sensitivity '
        f"{_rate(c, 'sensitivity', 'detected', 'positives')}, specificity "
        f"{_rate(c, 'specificity', 'true_negatives', 'negatives')} · lesion level: TP {les['tp']}, "
        f"FP {les['fp']}, FN {les['fn']}, sensitivity {_optional(les['sensitivity'])}, "
        f"{_optional(les['fp_per_case'])} FP per case · FROC: {esc(points or froc.get('skipped', ''))}</p>"
    )


def class_table(summary: dict, metrics: Sequence[str]) -> str:
    """Mean ± std [bootstrap interval] per metric, one row per class, then each detection class's
    case and lesion level numbers and how the numbers were computed.

    Args:
        summary: ``cv_summary.json`` (:func:`pipeline.evaluation.evaluate.summarize`).
        metrics: the metric columns to show.

    Returns:
        HTML; empty for summaries without per-class blocks (written before classes existed).
    """
    blocks = summary.get("per_class") or {}
    if not blocks:
        return ""
    head = "".join(f"<th>{esc(m)}</th>" for m in metrics)
    rows = []
    for name, block in blocks.items():
        cells = []
        for m in metrics:
            s = block["metrics"].get(m)
            cells.append(f"<td>{fmt(s['mean'])} ± {fmt(s['std'])}{ci_text(s)}</td>" if s else "<td></td>")
        rows.append(
            f'<tr><td class="t"><b>{esc(name)}</b></td><td>{block["n_cases"]}</td>{"".join(cells)}</tr>'
        )
    out = (
        f'<table id="classes"><thead><tr><th class="t">class</th><th>cases</th>{head}</tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
    )
    out += "".join(_detection(name, det) for name, det in (summary.get("detection") or {}).items())
    how, boot = summary.get("implementation", {}), summary.get("bootstrap", {})
    if how:
        out += (
            f'<p class="meta">Intervals: {boot.get("level", 0.95):.0%} percentile bootstrap of the mean, '
            f"{boot.get('resamples')} resamples of {esc(boot.get('unit', 'subject'))}s, seed {boot.get('seed')}. "
            f"Metrics: {esc(how.get('metrics', ''))}. Lesions: {esc(how.get('lesions', ''))}.</p>"
        )
    return out
