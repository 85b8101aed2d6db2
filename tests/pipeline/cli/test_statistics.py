"""``pancreas-seg statistics``: masks of any tool measured on their scans, and the follow-up table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.core.layout import OutputLayout
from tests.conftest import SHARED_DATA

TS = SHARED_DATA / "totalsegmentator"


def _case(folder: Path, name: str, n_slices: int, hu: float = 40.0) -> None:
    """A 1 x 1.5 x 2.5 mm scan with a 10 x 8 x ``n_slices`` box of ``hu`` and its mask."""
    aff = np.diag([1.0, 1.5, 2.5, 1.0])
    image = np.full((32, 32, 16), -900.0, np.float32)
    mask = np.zeros((32, 32, 16), np.uint8)
    mask[8:18, 8:16, 4 : 4 + n_slices] = 1
    image[mask == 1] = hu
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, aff), str(folder / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(mask, aff), str(folder / "masks" / f"{name}.nii.gz"))


def test_two_date_subject_gives_the_change_table(tmp_path, capsys):
    _case(tmp_path, "s1_a", 4, hu=40)
    _case(tmp_path, "s1_b", 5, hu=30)  # +25 % volume, -10 HU, 45 days later
    _case(tmp_path, "s2_a", 4)  # one scan only: no follow-up row
    (tmp_path / "m.csv").write_text(
        "case_id,subject_id,image,acquired,timepoint\n"
        "s1_b,s1,s1_b.nii.gz,2024-03-16,month 1\n"
        "s1_a,s1,s1_a.nii.gz,2024-01-31,baseline\n"
        "s2_a,s2,s2_a.nii.gz,2024-01-01,baseline\n"
    )
    cv = tmp_path / "cv_summary.json"  # volume errors with SD 10 %: least significant change 27.7 %
    cv.write_text(json.dumps({"metric_per_case": [{"volume_error_pct": v} for v in (-10.0, 0.0, 10.0)]}))
    assert (
        main(
            [
                "statistics",
                "--masks",
                str(tmp_path / "masks"),
                "--manifest",
                str(tmp_path / "m.csv"),
                "--out",
                str(tmp_path / "out"),
                "--cv-summary",
                str(cv),
            ]
        )
        == 0
    )
    out = OutputLayout(tmp_path / "out")
    stats = pd.read_csv(out.statistics, dtype={"case_id": str})
    vox_ml = 1.0 * 1.5 * 2.5 / 1000
    assert stats.set_index("case_id")["volume_ml"].to_dict() == pytest.approx(
        {"s1_b": 400 * vox_ml, "s1_a": 320 * vox_ml, "s2_a": 320 * vox_ml}
    )
    long = pd.read_csv(out.longitudinal)
    assert list(long["case_id"]) == ["s1_a", "s1_b"] and list(long["timepoint"]) == ["baseline", "month 1"]
    second = long.iloc[1]
    assert second["days_since_previous"] == 45 and second["volume_change_pct"] == pytest.approx(25.0)
    assert second["volume_change_ml"] == pytest.approx(80 * vox_ml) and second["hu_change"] == pytest.approx(
        -10
    )
    assert bool(second["within_measurement_error"]) is True  # 25 % < 1.96 * sqrt(2) * 10 %
    cv.write_text(json.dumps({"metric_per_case": [{"volume_error_pct": v} for v in (-1.0, 0.0, 1.0)]}))
    assert (
        main(
            [
                "statistics",
                "--masks",
                str(tmp_path / "masks"),
                "--manifest",
                str(tmp_path / "m.csv"),
                "--out",
                str(tmp_path / "out"),
                "--cv-summary",
                str(cv),
            ]
        )
        == 0
    )
    assert not bool(pd.read_csv(out.longitudinal).iloc[1]["within_measurement_error"])  # beyond 2.8 %


def test_bad_acquired_date_and_missing_masks_are_one_line_errors(tmp_path, capsys):
    _case(tmp_path, "a", 3)
    (tmp_path / "m.csv").write_text("case_id,subject_id,image,acquired\na,s,a.nii.gz,31/01/2024\n")
    assert (
        main(["statistics", "--masks", str(tmp_path / "masks"), "--manifest", str(tmp_path / "m.csv")]) != 0
    )
    assert "row 2 (case_id=a): acquired '31/01/2024' is not an ISO date" in capsys.readouterr().err
    (tmp_path / "m.csv").write_text("case_id,subject_id,image\nb,s,a.nii.gz\n")
    assert (
        main(["statistics", "--masks", str(tmp_path / "masks"), "--manifest", str(tmp_path / "m.csv")]) != 0
    )
    assert "no masks found" in capsys.readouterr().err


@pytest.mark.skipif(not TS.is_dir(), reason="shared real CT data not present")
@pytest.mark.slow
def test_real_dicom_series_through_the_cli(tmp_path):
    (tmp_path / "masks").mkdir()
    shutil.copy(TS / "ct_dicom_pancreas.nii.gz", tmp_path / "masks" / "ct.nii.gz")
    (tmp_path / "m.csv").write_text(f"case_id,subject_id,image\nct,p1,{TS / 'ct_dicom'}\n")
    assert (
        main(["statistics", "--masks", str(tmp_path / "masks"), "--manifest", str(tmp_path / "m.csv")]) == 0
    )
    row = pd.read_csv(OutputLayout(tmp_path / "masks").statistics).iloc[0]
    spacing = nib.load(TS / "ct_dicom_pancreas.nii.gz").header.get_zooms()
    assert row["voxels"] == 1327
    assert row["volume_ml"] == pytest.approx(1327 * float(np.prod(spacing)) / 1000, rel=1e-4)
    assert 55 < row["hu_mean"] < 67  # about 61 (shared/data README)
