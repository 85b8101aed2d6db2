"""Lesion matching by overlap (TP/FP/FN), case-level detection and FROC points."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.lesions import (
    case_detection,
    froc_columns,
    froc_counts,
    froc_points,
    lesion_detection,
    match_lesions,
)


def _box(arr, lo, hi, value=1):
    arr[tuple(slice(a, b) for a, b in zip(lo, hi))] = value


def test_components_are_matched_by_overlap():
    ref = np.zeros((40, 40, 40), np.uint8)
    pred = np.zeros_like(ref)
    _box(ref, (2, 2, 2), (6, 6, 6))  # lesion 1: found
    _box(ref, (20, 2, 2), (24, 6, 6))  # lesion 2: missed
    _box(ref, (2, 20, 2), (6, 24, 6))  # lesions 3 and 4: one predicted component covers both
    _box(ref, (8, 20, 2), (12, 24, 6))
    _box(pred, (3, 3, 3), (5, 5, 5))
    _box(pred, (2, 20, 2), (12, 24, 6))
    _box(pred, (30, 30, 30), (34, 34, 34))  # false positive
    _box(pred, (20, 30, 30), (22, 32, 32))  # false positive
    m = match_lesions(pred, ref)
    assert m == {"ref_lesions": 4, "pred_lesions": 4, "lesion_tp": 3, "lesion_fp": 2, "lesion_fn": 1}


def test_diagonal_neighbours_are_one_lesion():
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2, 2, 2] = ref[3, 3, 3] = 1  # touching at a corner only
    assert match_lesions(np.zeros_like(ref), ref)["ref_lesions"] == 1


def test_case_and_lesion_level_detection():
    rows = pd.DataFrame(
        {
            "label_voxels": [10, 10, 0, 0],  # two cases with a tumour, two without
            "pred_voxels": [5, 0, 3, 0],
            "recall": [0.5, 0.0, 1.0, 1.0],
            "ref_lesions": [1, 2, 0, 0],
            "pred_lesions": [1, 0, 1, 0],
            "lesion_tp": [1, 0, 0, 0],
            "lesion_fp": [0, 0, 1, 0],
            "lesion_fn": [0, 2, 0, 0],
        }
    )
    case = case_detection(rows)
    assert case["sensitivity"] == pytest.approx(0.5) and case["specificity"] == pytest.approx(0.5)
    assert (case["positives"], case["detected"], case["negatives"], case["true_negatives"]) == (2, 1, 2, 1)
    les = lesion_detection(rows)
    assert (les["tp"], les["fp"], les["fn"]) == (1, 1, 2)
    assert les["sensitivity"] == pytest.approx(1 / 3) and les["fp_per_case"] == pytest.approx(0.25)


def test_froc_points_from_probability_thresholds():
    ref = np.zeros((30, 30, 30), np.uint8)
    _box(ref, (2, 2, 2), (6, 6, 6))
    prob = np.zeros((30, 30, 30), np.float32)
    _box(prob, (2, 2, 2), (6, 6, 6), 0.8)  # the lesion, confidently
    _box(prob, (20, 20, 20), (24, 24, 24), 0.4)  # a false positive, less so
    counts = froc_counts(prob, ref, [0.3, 0.5, 0.9])
    assert set(counts) == set(froc_columns([0.3, 0.5, 0.9]))
    rows = pd.DataFrame(
        [{"ref_lesions": 1, **counts}, {"ref_lesions": 0, **froc_counts(prob * 0, ref * 0, [0.3, 0.5, 0.9])}]
    )
    points = froc_points(rows, [0.3, 0.5, 0.9])["points"]
    assert [p["fp_per_case"] for p in points] == [0.5, 0.0, 0.0]
    assert [p["sensitivity"] for p in points] == [1.0, 1.0, 0.0]
    skipped = froc_points(rows.drop(columns=froc_columns([0.3])), [0.3])
    assert skipped["points"] == [] and "probabilities" in skipped["skipped"]
