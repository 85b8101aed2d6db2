"""The report's per-class section and the intervals under the summary's means."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.core.config import EvalConfig
from pipeline.evaluation.evaluate import METRICS, summarize
from pipeline.report.classes import class_table
from pipeline.report.page import summary_table


def _summary() -> dict:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        for cls in ("pancreas", "tumour"):
            row = {"case_id": f"c{i}", "subject_id": f"s{i // 2}", "fold": i % 2, "class": cls}
            row.update({m: float(rng.uniform(0.2, 0.9)) for m in METRICS})
            row.update(pred_voxels=5, label_voxels=5 if i < 4 else 0, flag="")
            if cls == "tumour":
                row.update(
                    ref_lesions=int(i < 4), pred_lesions=1, lesion_tp=int(i < 3), lesion_fp=int(i >= 4)
                )
                row.update(lesion_fn=int(i == 3))
            rows.append(row)
    return summarize(pd.DataFrame(rows), EvalConfig(bootstrap_resamples=300))


def test_class_section_shows_each_class_with_intervals_and_detection():
    summary = _summary()
    html = class_table(summary, METRICS)
    assert "<b>pancreas</b>" in html and "<b>tumour</b>" in html
    lo = summary["per_class"]["tumour"]["metrics"]["dice"]["ci_low"]
    assert f"[{lo:.3f}" in html
    assert "tumour detection" in html and "sensitivity 0.750" in html and "(3/4)" in html
    assert "FP 2" in html and "predict with --probabilities" in html  # FROC skipped, and why
    assert "compute_surface_dice" in html and "resamples of subjects" in html
    assert class_table({"foreground_mean": {}}, METRICS) == ""  # summaries from before classes


def test_summary_table_puts_the_interval_under_each_mean():
    summary = _summary()
    html = summary_table(summary, METRICS)
    s = summary["foreground_mean"]["nsd"]
    assert f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]" in html
    old = {"foreground_mean": {"dice": {"mean": 0.8, "std": 0.1, "median": 0.8}}, "per_fold": {}}
    assert "[" not in summary_table(old, ["dice"])  # no interval in old summaries: none shown


def test_summary_table_counts_cases_not_class_rows():
    html = summary_table(_summary(), METRICS)
    assert "<td>fold 0</td><td>3</td>" in html.replace('<td class="t">', "<td>")
