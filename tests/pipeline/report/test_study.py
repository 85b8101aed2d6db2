"""The report's study sections: QC score against Dice, the review order, Bland-Altman, follow-up plots."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pipeline.core.layout import OutputLayout
from pipeline.report.study import bland_altman_png, infer_study_sections, qc_spearman


def test_spearman_of_the_qc_score_against_dice():
    metrics = pd.DataFrame({"case_id": ["a", "b", "c", "d"], "dice": [0.9, 0.8, 0.5, 0.1]})
    stats = pd.DataFrame({"case_id": ["a", "b", "c", "d", "d"], "qc_score": [0.1, 0.2, 0.3, 0.9, 0.9]})
    assert qc_spearman(metrics, stats) == (pytest.approx(-1.0), 4)  # one value per case, rows per class
    rho, n = qc_spearman(metrics.head(2), stats)
    assert math.isnan(rho) and n == 2


def test_inference_report_lists_cases_to_review_first(tmp_path):
    out = OutputLayout(tmp_path)
    pd.DataFrame(
        {
            "case_id": ["a", "b", "c"],
            "label": "pancreas",
            "volume_ml": [60.0, 3.0, 55.0],
            "qc_score": [0.1, 0.2, 0.4],
            "review": ["ok", "review", "ok"],
            "review_reasons": ["", "tiny volume", ""],
        }
    ).to_csv(out.statistics, index=False)
    pd.DataFrame(
        {
            "subject_id": ["s", "s"],
            "label": "pancreas",
            "case_id": ["a", "c"],
            "acquired": ["2024-01-01", "2024-02-01"],
            "volume_ml": [60.0, 55.0],
            "within_measurement_error": ["", "True"],
        }
    ).to_csv(out.longitudinal, index=False)
    files = tmp_path / "files"
    files.mkdir()
    sections, order = infer_study_sections(tmp_path, files, ["a", "b", "c", "x"])
    assert order == ["b", "c", "a", "x"]  # review first, then least certain, then cases without rows
    assert "1 of 3 cases to review" in sections[0] and (files / "followup_000.png").stat().st_size > 0


def test_bland_altman_figure(tmp_path):
    t = pd.DataFrame({"volume_ml": [50.0, 62.0, 70.0], "ref_volume_ml": [52.0, 60.0, 71.0]})
    assert bland_altman_png(t, tmp_path / "ba.png").stat().st_size > 1000
