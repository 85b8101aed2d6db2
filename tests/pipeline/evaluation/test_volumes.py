"""Volume agreement: the columns evaluate and cv add, and the Bland-Altman summary."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.volumes import VOLUME_COLUMNS, evaluate_with_volumes, volume_agreement


def test_volume_errors_against_the_reference_on_the_scan(tmp_path):
    aff = np.diag([0.8, 0.8, 2.0, 1.0])
    image = np.full((24, 24, 12), -800.0, np.float32)
    ref = np.zeros((24, 24, 12), np.uint8)
    ref[4:14, 4:14, 2:6] = 2  # label value 2, mapped to class 1 by the manifest's label_map
    pred = np.zeros_like(ref)
    pred[4:14, 4:14, 2:7] = 1  # one slice too many: +25 %
    image[4:14, 4:14, 2:6] = 50.0
    image[4:14, 4:14, 6] = -50.0
    for name, arr in (("ct", image), ("ref", ref), ("pred", pred)):
        nib.save(nib.Nifti1Image(arr, aff), str(tmp_path / f"{name}.nii.gz"))
    item = {
        "case_id": "c",
        "pred": tmp_path / "pred.nii.gz",
        "label": tmp_path / "ref.nii.gz",
        "image": tmp_path / "ct.nii.gz",
        "label_map": "2:1",
    }
    table, refs = evaluate_with_volumes([item])
    row = table.iloc[0]
    assert set(VOLUME_COLUMNS) <= set(table.columns) and row["dice"] == pytest.approx(2 * 400 / 900)
    vox = 0.8 * 0.8 * 2.0 / 1000
    assert row["ref_volume_ml"] == pytest.approx(400 * vox) and row["volume_ml"] == pytest.approx(500 * vox)
    assert row["volume_error_ml"] == pytest.approx(100 * vox) and row["volume_error_pct"] == pytest.approx(
        25.0
    )
    assert row["ref_hu_mean"] == pytest.approx(50.0) and row["hu_mean"] == pytest.approx(30.0)
    assert list(refs["label"]) == ["pancreas"] and refs["voxels"][0] == 400


def test_bland_altman_summary():
    t = pd.DataFrame({"volume_error_ml": [1.0, 3.0, 5.0], "volume_error_pct": [2.0, 4.0, np.nan]})
    a = volume_agreement(t)
    assert a["bias_ml"] == pytest.approx(3.0) and a["sd_ml"] == pytest.approx(2.0)
    assert (a["loa_low_ml"], a["loa_high_ml"]) == pytest.approx((3 - 3.92, 3 + 3.92))
    assert a["bias_pct"] == pytest.approx(3.0) and a["n"] == 3
    assert a["least_significant_change_pct"] == pytest.approx(1.96 * math.sqrt(2) * math.sqrt(2))
    assert math.isnan(volume_agreement(pd.DataFrame({"case_id": []}))["bias_ml"])
