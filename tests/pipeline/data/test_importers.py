"""Importers (glob, MSD, nnU-Net, NIH Pancreas-CT) and nnU-Net splits_final.json interop."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline.core.errors import ManifestError
from pipeline.data.folds import read_splits, write_splits
from pipeline.data.importers import import_glob, import_msd, import_nih, import_nnunet
from pipeline.data.manifest import assign_folds, case_records, read_manifest
from tests.pipeline.data.conftest import DICOM_DIR, needs_dicom, nifti


def rows(df: pd.DataFrame, *cols: str) -> list[tuple]:
    return [tuple(r) for r in df[list(cols)].itertuples(index=False)]


# --------------------------------------------------------------------------- glob
def test_import_glob_pairs_labels_by_name_and_suffix(tmp_path: Path) -> None:
    for case in ("p01", "p02", "p03"):
        nifti(tmp_path / "images" / f"{case}.nii.gz")
    nifti(tmp_path / "labels" / "p01_seg.nii.gz")
    nifti(tmp_path / "labels" / "p03_seg.nii")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    df = import_glob(tmp_path, tmp_path / "m.csv", label_suffix="_seg")
    assert rows(df, "case_id", "subject_id", "image", "label") == [
        ("p01", "p01", "images/p01.nii.gz", "labels/p01_seg.nii.gz"),
        ("p02", "p02", "images/p02.nii.gz", ""),
        ("p03", "p03", "images/p03.nii.gz", "labels/p03_seg.nii"),
    ]
    assert read_manifest(tmp_path / "m.csv").equals(df)


def test_import_glob_subject_regex_shared_folder_and_absolute_paths(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("pat1_a", "pat1_b", "pat2_a"):
        nifti(data / f"{name}.nii.gz")
        nifti(data / f"{name}_seg.nii.gz")
    out = tmp_path / "elsewhere" / "m.csv"
    df = import_glob(
        data, out, image_glob="*.nii.gz", label_dir=".", label_suffix="_seg", subject_regex=r"^(pat\d+)_"
    )
    assert rows(df, "case_id", "subject_id") == [("pat1_a", "pat1"), ("pat1_b", "pat1"), ("pat2_a", "pat2")]
    assert df["image"][0] == str(data / "pat1_a.nii.gz") and df["label"][0] == str(data / "pat1_a_seg.nii.gz")
    assert assign_folds(df, 2).groupby("subject_id")["fold"].nunique().max() == 1


@needs_dicom
def test_import_glob_takes_dicom_series_folders(tmp_path: Path) -> None:
    series = tmp_path / "scans" / "ct7"
    series.mkdir(parents=True)
    shutil.copyfile(sorted(DICOM_DIR.iterdir())[0], series / "slice0")
    nifti(tmp_path / "scans" / "ct8.nrrd.nii.gz")
    df = import_glob(tmp_path, tmp_path / "m.csv", image_glob="scans/*", label_dir=None)
    assert rows(df, "case_id", "image", "label") == [
        ("ct7", "scans/ct7", ""),
        ("ct8.nrrd", "scans/ct8.nrrd.nii.gz", ""),
    ]


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"image_glob": "nothing/*"}, "no images match 'nothing/*'"),
        ({"label_dir": "segs"}, "label folder not found"),
        ({"subject_regex": r"^(q)\d"}, "finds no subject in case name 'p01'"),
        ({"subject_regex": "(unclosed"}, "not a valid regular expression"),
    ],
)
def test_import_glob_errors(tmp_path: Path, kwargs: dict, expected: str) -> None:
    nifti(tmp_path / "images" / "p01.nii.gz")
    (tmp_path / "labels").mkdir()
    with pytest.raises(ManifestError, match=re.escape(expected)):
        import_glob(tmp_path, tmp_path / "m.csv", **kwargs)
    assert not (tmp_path / "m.csv").exists()


def test_import_glob_two_images_for_one_case_is_an_error(tmp_path: Path) -> None:
    nifti(tmp_path / "images" / "p01.nii.gz")
    nifti(tmp_path / "images" / "p01.nii")
    with pytest.raises(ManifestError, match="two images for case p01"):
        import_glob(tmp_path, tmp_path / "m.csv", label_dir=None)


# --------------------------------------------------------------------------- MSD
def msd_task(root: Path, n: int = 3, labels: dict | None = None) -> Path:
    training = []
    for i in range(1, n + 1):
        nifti(root / "imagesTr" / f"pancreas_{i:03d}.nii.gz")
        nifti(root / "labelsTr" / f"pancreas_{i:03d}.nii.gz")
        training.append(
            {"image": f"./imagesTr/pancreas_{i:03d}.nii.gz", "label": f"./labelsTr/pancreas_{i:03d}.nii.gz"}
        )
    nifti(root / "imagesTs" / "pancreas_900.nii.gz")
    info = {"name": "Pancreas", "labels": labels or {"0": "background", "1": "pancreas", "2": "cancer"}}
    info.update(training=training, test=["./imagesTs/pancreas_900.nii.gz"], numTraining=n)
    (root / "dataset.json").write_text(json.dumps(info))
    return root / "dataset.json"


@pytest.mark.parametrize("keep_tumour, label_map", [(False, "1:1,2:1"), (True, "1:pancreas,2:tumour")])
def test_import_msd_rows_paths_and_label_map(tmp_path: Path, keep_tumour: bool, label_map: str) -> None:
    ds = msd_task(tmp_path / "Task07_Pancreas")
    df = import_msd(ds, tmp_path / "Task07_Pancreas" / "manifest.csv", keep_tumour=keep_tumour)
    assert rows(df, "case_id", "subject_id", "image", "label") == [
        (
            f"pancreas_{i:03d}",
            f"pancreas_{i:03d}",
            f"imagesTr/pancreas_{i:03d}.nii.gz",
            f"labelsTr/pancreas_{i:03d}.nii.gz",
        )
        for i in (1, 2, 3)
    ]
    assert set(df["label_map"]) == {label_map}
    assert read_manifest(tmp_path / "Task07_Pancreas" / "manifest.csv", require_labels=True).equals(df)


def test_import_msd_test_images_optional(tmp_path: Path) -> None:
    ds = msd_task(tmp_path / "T")
    df = import_msd(ds, tmp_path / "out" / "m.csv", include_test=True)
    assert df["case_id"].tolist()[-1] == "pancreas_900" and df["label"].tolist()[-1] == ""
    assert df["image"][0] == str(tmp_path / "T" / "imagesTr" / "pancreas_001.nii.gz")  # outside: absolute


def test_import_msd_errors(tmp_path: Path) -> None:
    ds = msd_task(tmp_path / "T")
    (tmp_path / "T" / "labelsTr" / "pancreas_002.nii.gz").unlink()
    with pytest.raises(
        ManifestError, match=r"entry 2 \(pancreas_002\): label file not found: ./labelsTr/pancreas_002"
    ):
        import_msd(ds, tmp_path / "m.csv")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ManifestError, match="bad.json: not a readable JSON file"):
        import_msd(tmp_path / "bad.json", tmp_path / "m.csv")
    (tmp_path / "empty.json").write_text('{"name": "x"}')
    with pytest.raises(ManifestError, match="no 'training' list"):
        import_msd(tmp_path / "empty.json", tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


# --------------------------------------------------------------------------- nnU-Net
def test_import_nnunet_reads_channel_0000_and_maps_multi_labels(tmp_path: Path) -> None:
    raw = tmp_path / "Dataset007_Pancreas"
    for case in ("pan_001", "pan_002"):
        nifti(raw / "imagesTr" / f"{case}_0000.nii.gz")
    nifti(raw / "labelsTr" / "pan_001.nii.gz")
    info = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "pancreas": 1, "cancer": 2}}
    (raw / "dataset.json").write_text(json.dumps(dict(info, numTraining=2, file_ending=".nii.gz")))
    df = import_nnunet(raw, raw / "manifest.csv")
    assert rows(df, "case_id", "image", "label", "label_map") == [
        ("pan_001", "imagesTr/pan_001_0000.nii.gz", "labelsTr/pan_001.nii.gz", "1:1,2:1"),
        ("pan_002", "imagesTr/pan_002_0000.nii.gz", "", "1:1,2:1"),
    ]


def test_import_nnunet_file_ending_binary_labels_and_errors(tmp_path: Path) -> None:
    raw = tmp_path / "Dataset001_X"
    nifti(raw / "imagesTr" / "a_0000.nii.gz")
    (raw / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "pancreas": 1}, "file_ending": ".mha"})
    )
    with pytest.raises(ManifestError, match="no files named <case>_0000.mha"):
        import_nnunet(raw, tmp_path / "m.csv")
    (raw / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "pancreas": 1}}))
    df = import_nnunet(raw, tmp_path / "m.csv")
    assert df["label_map"].tolist() == [""]
    with pytest.raises(ManifestError, match="nnU-Net raw dataset folder not found"):
        import_nnunet(tmp_path / "nope", tmp_path / "m.csv")


@pytest.mark.parametrize("name", ["<img src=x onerror=alert(1)>", "c:d", " lead"])
def test_importers_refuse_a_file_name_that_is_no_case_id(tmp_path: Path, name: str) -> None:
    """The id is checked where it is made, so the message names the file, not the manifest's row."""
    bad = nifti(tmp_path / "glob" / "images" / f"{name}.nii.gz")
    nifti(tmp_path / "glob" / "images" / "ok.nii.gz")
    with pytest.raises(ManifestError, match="case_id must") as err:
        import_glob(tmp_path / "glob", tmp_path / "m.csv", label_dir=None)
    assert str(bad) in str(err.value) and repr(name) in str(err.value) and "rename it" in str(err.value)
    raw = tmp_path / "Dataset001_X"
    bad = nifti(raw / "imagesTr" / f"{name}_0000.nii.gz")
    with pytest.raises(ManifestError, match="case_id must") as err:
        import_nnunet(raw, tmp_path / "m.csv")
    assert str(bad) in str(err.value)
    assert not (tmp_path / "m.csv").exists()


# --------------------------------------------------------------------------- NIH Pancreas-CT
@needs_dicom
def test_import_nih_finds_series_by_dicom_signature_and_pairs_labels(tmp_path: Path) -> None:
    root = tmp_path / "nih"
    dicoms = sorted(DICOM_DIR.iterdir())[:2]
    s1 = root / "Pancreas-CT" / "PANCREAS_0001" / "11-24-2015-PANCREAS0001-Pancreas-18957" / "Pancreas-99667"
    s2 = root / "Pancreas-CT" / "PANCREAS_0002" / "study" / "series"
    for series in (s1, s2):
        series.mkdir(parents=True)
    for f in dicoms:
        shutil.copyfile(f, s1 / f.name)  # no extension: found by the DICM signature
    shutil.copyfile(dicoms[0], s2 / "1-001.dcm")
    (s1.parent / "notes.txt").write_text("not DICOM")
    nifti(root / "TCIA_pancreas_labels-02-05-2017" / "label0001.nii.gz")
    nifti(root / "TCIA_pancreas_labels-02-05-2017" / "label0099.nii.gz")  # no series: ignored
    df = import_nih(root, root / "manifest.csv")
    rel1 = s1.relative_to(root).as_posix()
    assert rows(df, "case_id", "subject_id", "image", "label") == [
        ("PANCREAS_0001", "PANCREAS_0001", rel1, "TCIA_pancreas_labels-02-05-2017/label0001.nii.gz"),
        ("PANCREAS_0002", "PANCREAS_0002", s2.relative_to(root).as_posix(), ""),
    ]
    assert case_records(read_manifest(root / "manifest.csv"))[0]["image"] == str(s1)


def test_import_nih_without_series_is_an_error(tmp_path: Path) -> None:
    nifti(tmp_path / "labels" / "label0001.nii.gz")
    with pytest.raises(ManifestError, match="no DICOM series found"):
        import_nih(tmp_path, tmp_path / "m.csv")


# --------------------------------------------------------------------------- splits_final.json
def table(n_subjects: int = 7) -> pd.DataFrame:
    subjects = [f"s{i}" for i in range(n_subjects) for _ in range(1 + i % 2)]
    cases = [f"c{i:02d}" for i in range(len(subjects))]
    return pd.DataFrame({"case_id": cases, "subject_id": subjects, "image": "x.nii.gz"})


def test_splits_round_trip(tmp_path: Path) -> None:
    df = assign_folds(table(), 3, seed=4)
    path = write_splits(df, tmp_path / "splits_final.json")
    splits = json.loads(path.read_text())
    assert len(splits) == 3 and all(set(s) == {"train", "val"} for s in splits)
    for s in splits:
        assert set(s["train"]).isdisjoint(s["val"]) and set(s["train"]) | set(s["val"]) == set(df["case_id"])
    back = read_splits(path, df.assign(fold=pd.NA))
    assert back["fold"].tolist() == df["fold"].tolist()


def test_read_splits_leaves_unlisted_cases_without_fold(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(
        json.dumps([{"train": ["c01"], "val": ["c00"]}, {"train": ["c00"], "val": ["c01"]}])
    )
    out = read_splits(tmp_path / "s.json", table())
    assert out["fold"].tolist()[:2] == [0, 1] and out["fold"][2:].isna().all()


@pytest.mark.parametrize(
    "splits, expected",
    [
        ([{"train": [], "val": ["zz"]}], "split 0 names case zz, which is not in the manifest"),
        (
            [{"train": [], "val": ["c00"]}, {"train": [], "val": ["c00"]}],
            "case c00 is in the validation sets of splits 0 and 1",
        ),
        ([{"train": [], "val": ["c01"]}, {"train": [], "val": ["c02"]}], "subject_id=s1 is in folds 0 and 1"),
        ({"train": []}, "expected a list"),
    ],
)
def test_read_splits_errors(tmp_path: Path, splits: object, expected: str) -> None:
    (tmp_path / "s.json").write_text(json.dumps(splits))
    with pytest.raises(ManifestError, match=expected):
        read_splits(tmp_path / "s.json", table())


def test_write_splits_needs_folds(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no folds"):
        write_splits(table(), tmp_path / "s.json")
    with pytest.raises(ManifestError, match="fold 1 has no cases"):
        write_splits(table(2).assign(fold=[0, 2, 2]), tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()


def test_importers_are_reexported_from_manifest() -> None:
    import pipeline.data.manifest as manifest

    assert manifest.import_msd is import_msd and manifest.read_splits is read_splits


def test_import_msd_keep_tumour_names_other_values_after_the_dataset(tmp_path: Path) -> None:
    ds = msd_task(
        tmp_path / "T", labels={"0": "background", "1": "pancreas", "2": "cancer", "3": "Cyst wall"}
    )
    df = import_msd(ds, tmp_path / "T" / "manifest.csv", keep_tumour=True)
    assert set(df["label_map"]) == {"1:pancreas,2:tumour,3:cyst_wall"}
