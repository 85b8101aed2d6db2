from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.errors import ImageError
from pipeline.evaluation.evaluate import case_metrics, evaluate_cases, summarize


def _cube(shape, lo, hi):
    m = np.zeros(shape, np.uint8)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1
    return m


def test_known_dice_and_overlaps():
    label = _cube((20, 20, 20), (5, 5, 5), (15, 15, 15))  # 1000 voxels
    pred = _cube((20, 20, 20), (5, 5, 10), (15, 15, 20))  # 1000 voxels, 500 overlap
    m = case_metrics(pred, label, (1.0, 1.0, 1.0))
    assert m["dice"] == pytest.approx(0.5)
    assert m["iou"] == pytest.approx(500 / 1500)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["flag"] == ""


def test_surface_distance_in_mm_on_anisotropic_grid():
    # The prediction is the label shifted by 2 voxels along z, where voxels are 3 mm thick.
    label = _cube((16, 16, 16), (4, 4, 4), (12, 12, 8))
    pred = _cube((16, 16, 16), (4, 4, 6), (12, 12, 10))
    m = case_metrics(pred, label, (0.5, 0.5, 3.0))
    assert m["hd95_mm"] == pytest.approx(6.0, abs=1e-6)  # 2 slices x 3 mm
    assert 0 < m["assd_mm"] < 6.0
    same = case_metrics(label, label, (0.5, 0.5, 3.0))
    assert same["dice"] == 1.0 and same["hd95_mm"] == 0.0 and same["assd_mm"] == 0.0


def test_empty_masks_have_defined_values_and_flags():
    empty = np.zeros((10, 10, 10), np.uint8)
    full = _cube((10, 10, 10), (2, 2, 2), (5, 5, 5))
    diag = math.sqrt(10**2 + 10**2 + 20**2)
    m = case_metrics(empty, full, (1, 1, 2))
    assert m["flag"] == "empty_pred" and m["dice"] == 0.0 and m["hd95_mm"] == pytest.approx(diag)
    m = case_metrics(full, empty, (1, 1, 2))
    assert m["flag"] == "empty_label" and m["precision"] == 0.0 and m["recall"] == 1.0
    m = case_metrics(empty, empty, (1, 1, 2))
    assert m["flag"] == "both_empty" and m["dice"] == 1.0
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())


def _save(arr, affine, path):
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def test_evaluate_files_on_original_grid_even_when_label_is_stored_flipped(tmp_path):
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    label = _cube((24, 20, 8), (6, 4, 2), (14, 12, 6))
    pred = _save(label, affine, tmp_path / "pred.nii.gz")
    # Same physical grid, stored with the y axis flipped (like the real TotalSegmentator mask).
    flip = affine.copy()
    flip[1, 1] = -0.8
    flip[1, 3] = 0.8 * 19
    lab = _save(label[:, ::-1, :].copy(), flip, tmp_path / "label.nii.gz")
    table = evaluate_cases([{"case_id": "c1", "pred": pred, "label": lab, "fold": 0}])
    assert table.loc[0, "dice"] == pytest.approx(1.0)
    summary = summarize(table)
    assert summary["foreground_mean"]["dice"]["mean"] == pytest.approx(1.0)
    assert summary["per_fold"]["0"]["dice"]["median"] == pytest.approx(1.0)


def test_different_grids_are_refused_naming_both(tmp_path):
    label = _cube((12, 12, 6), (2, 2, 2), (6, 6, 4))
    pred = _save(label, np.diag([1.0, 1.0, 2.0, 1.0]), tmp_path / "p.nii.gz")
    lab = _save(label, np.diag([1.0, 1.0, 3.0, 1.0]), tmp_path / "l.nii.gz")
    with pytest.raises(ImageError, match=r"p\.nii\.gz.*differs from label .*l\.nii\.gz"):
        evaluate_cases([{"case_id": "c", "pred": pred, "label": lab}])
