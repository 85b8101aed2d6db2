"""Manifest reading, validation, writing, MONAI records and fold assignment."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import ManifestError, UsageError
from pipeline.data.manifest import (
    COLUMNS,
    assign_folds,
    case_records,
    describe_folds,
    parse_label_map,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from pipeline.data.schema import case_id_problem
from tests.conftest import REPO
from tests.pipeline.data.conftest import DICOM_DIR, needs_dicom, nifti


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """images/p01..p03 with labels for p01 and p02."""
    for case in ("p01", "p02", "p03"):
        nifti(tmp_path / "images" / f"{case}.nii.gz")
    for case in ("p01", "p02"):
        nifti(tmp_path / "labels" / f"{case}.nii.gz")
    return tmp_path


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


GOOD = (
    "case_id,subject_id,image,label,fold\n"
    "p01,s1,images/p01.nii.gz,labels/p01.nii.gz,0\n"
    "p02,s1,images/p02.nii.gz,labels/p02.nii.gz,0\n"
    "p03,s2,images/p03.nii.gz,,\n"
)


def test_read_manifest_returns_all_columns_paths_as_written_and_int_folds(data: Path) -> None:
    df = read_manifest(write(data / "m.csv", GOOD))
    assert tuple(df.columns) == COLUMNS
    assert df["image"].tolist() == ["images/p01.nii.gz", "images/p02.nii.gz", "images/p03.nii.gz"]
    assert str(df["fold"].dtype) == "Int64" and df["fold"].tolist()[:2] == [0, 0] and pd.isna(df["fold"][2])
    assert df.attrs["root"] == data and df.attrs["path"] == data / "m.csv"
    assert df["label_map"].tolist() == ["", "", ""]


def test_case_records_give_absolute_paths_and_minus_one_for_no_fold(data: Path) -> None:
    recs = case_records(read_manifest(write(data / "m.csv", GOOD)))
    assert recs[0]["image"] == str(data / "images/p01.nii.gz") and Path(recs[0]["label"]).is_file()
    assert recs[0]["fold"] == 0 and recs[2]["fold"] == -1
    assert "label" not in recs[2]
    assert set(recs[0]) == {"case_id", "subject_id", "image", "label", "fold", "label_map"}


@pytest.mark.parametrize(
    "text",
    [
        "\ufeff" + GOOD,
        GOOD.replace(",", ";"),
        "\ufeff" + GOOD.replace(",", ";"),
        GOOD.replace(",", "\t"),
        GOOD.replace("\n", ",,\n"),
        "\n" + GOOD.replace("\n", "\r\n"),
    ],
    ids=["bom", "semicolon", "bom+semicolon", "tab", "unnamed-empty-columns", "crlf+leading-blank"],
)
def test_bom_semicolons_tabs_and_crlf_read_like_plain_csv(data: Path, text: str) -> None:
    plain = read_manifest(write(data / "plain.csv", GOOD))
    other = read_manifest(write(data / "other.csv", text))
    pd.testing.assert_frame_equal(plain, other)


def test_semicolon_manifest_keeps_comma_label_map(data: Path) -> None:
    text = "case_id;subject_id;image;label_map\np01;s1;images/p01.nii.gz;1:1,2:1\n"
    df = read_manifest(write(data / "m.csv", text))
    assert df["label_map"][0] == "1:1,2:1"
    assert parse_label_map(df["label_map"][0]) == {1: 1, 2: 1}


def test_absolute_and_parent_relative_paths_are_allowed_when_files_exist(data: Path) -> None:
    sub = data / "manifests"
    sub.mkdir()
    text = f"case_id,subject_id,image\na,s,../images/p01.nii.gz\nb,t,{data / 'images/p02.nii.gz'}\n"
    recs = case_records(read_manifest(write(sub / "m.csv", text)))
    assert [Path(r["image"]) for r in recs] == [data / "images/p01.nii.gz", data / "images/p02.nii.gz"]


@needs_dicom
def test_dicom_series_folder_is_an_image(tmp_path: Path) -> None:
    series = tmp_path / "dicom" / "series1"
    series.mkdir(parents=True)
    for f in sorted(DICOM_DIR.iterdir())[:2]:
        shutil.copyfile(f, series / f.name)
    df = read_manifest(write(tmp_path / "m.csv", "case_id,subject_id,image\nd1,s1,dicom/series1\n"))
    assert case_records(df)[0]["image"] == str(series)


H = "case_id,subject_id,image,label,fold\n"
ERRORS = {
    "missing label": (H + "p01,s1,images/p01.nii.gz,labels/p01.nii.gz,\np02,s2,images/p02.nii.gz,labels/p09.nii.gz,\n",
                      "m.csv row 3 (case_id=p02): label file not found: labels/p09.nii.gz"),
    "missing image": (H + "p01,s1,images/nope.nii.gz,,\n", "m.csv row 2 (case_id=p01): image file not found: images/nope.nii.gz"),
    "missing traversal": (H + "p01,s1,../../nowhere/x.nii.gz,,\n", "row 2 (case_id=p01): image file not found: ../../nowhere/x.nii.gz"),
    "duplicate case": (H + "p01,s1,images/p01.nii.gz,,\np02,s2,images/p02.nii.gz,,\np01,s3,images/p03.nii.gz,,\n",
                       "m.csv rows 2 and 4: duplicate case_id=p01"),
    "subject two folds": (H + "p01,s1,images/p01.nii.gz,,0\np02,s2,images/p02.nii.gz,,1\np03,s1,images/p03.nii.gz,,1\n",
                          "m.csv rows 2 and 4: subject_id=s1 is in folds 0 and 1"),
    "header only": (H, "m.csv: manifest has no rows"),
    "empty file": ("", "m.csv: manifest is empty"),
    "blank lines only": ("\n\n  \n", "m.csv: manifest is empty"),
    "unknown columns": ("case_id,subject_id,image,Fold,notes\np01,s1,images/p01.nii.gz,0,x\n",
                        "m.csv: unknown columns: Fold, notes (known columns: case_id, subject_id, image, label, fold, label_map, acquired, timepoint)"),
    "bad acquired date": ("case_id,subject_id,image,acquired\np01,s1,images/p01.nii.gz,2023-13-01\n",
                          "m.csv row 2 (case_id=p01): acquired '2023-13-01' is not an ISO date (YYYY-MM-DD)"),
    "missing column": ("case_id,image\np01,images/p01.nii.gz\n", "m.csv: missing required column(s): subject_id"),
    "duplicate column": ("case_id,subject_id,image,image\np01,s1,a,b\n", "column(s) image appear more than once"),
    "non-integer fold": (H + "p01,s1,images/p01.nii.gz,,one\n", "m.csv row 2 (case_id=p01): fold 'one' is not a whole number"),
    "fractional fold": (H + "p01,s1,images/p01.nii.gz,,1.5\n", "row 2 (case_id=p01): fold '1.5' is not a whole number"),
    "negative fold": (H + "p01,s1,images/p01.nii.gz,,-1\n", "fold '-1' is not a whole number >= 0"),
    "empty subject": (H + "p01,,images/p01.nii.gz,,\n", "row 2 (case_id=p01): subject_id is empty"),
    "empty case": (H + ",s1,images/p01.nii.gz,,\n", "m.csv row 2: case_id is empty"),
    "slash in case": (H + "a/b,s1,images/p01.nii.gz,,\n", "row 2 (case_id=a/b): case_id must be usable as a file name"),
    "unsupported format": (H + "p01,s1,m.csv,,\n", "row 2 (case_id=p01): image file has an unsupported format"),
    "label is image": (H + "p01,s1,images/p01.nii.gz,./images/p01.nii.gz,\n", "label and image are the same file"),
    "label folder": (H + "p01,s1,images/p01.nii.gz,labels,\n", "row 2 (case_id=p01): label is a folder"),
    "empty folder": (H + "p01,s1,empty_dir,,\n", "row 2 (case_id=p01): image folder holds no DICOM files: empty_dir"),
    "bad label_map": ("case_id,subject_id,image,label_map\np01,s1,images/p01.nii.gz,1=1\n",
                      "row 2 (case_id=p01): label_map '1=1'"),
    "too long name": (H + "p01,s1," + "x" * 300 + ".nii.gz,,\n", "row 2 (case_id=p01): image"),
    "unnamed column": ("case_id,subject_id,image,\np01,s1,images/p01.nii.gz,x\n", "m.csv: column 4 has values but no name"),
    "ragged row": (H + "p01,s1,images/p01.nii.gz,,0,extra,more\n", "m.csv row 2: 7 values but the header has 5 columns"),
}  # fmt: skip


GOOD_IDS = ("p01", "PANCREAS_0001", "scan 2 (arterial)", "x=1", "tête", "a.b")
BAD_IDS = ("<img src=x onerror=alert(1)>", "a/b", "a\\b", "c:d", "why?", "..", ".", "tab\there")


def test_one_rule_for_case_ids_is_the_manifests_rule(tmp_path: Path) -> None:
    """The rule importers and ``infer`` apply to ids made from file names refuses what the manifest
    refuses, and accepts what it accepts."""
    assert [case_id_problem(c) for c in GOOD_IDS] == [None] * len(GOOD_IDS)
    for case in BAD_IDS:
        problem = case_id_problem(case)
        assert problem, case
        table = pd.DataFrame([{"case_id": case, "subject_id": "s", "image": "x.nii.gz"}])
        with pytest.raises(ManifestError, match="row 2") as err:
            validate_manifest(table, tmp_path, source="m.csv", check_files=False)
        assert problem in str(err.value), case
    for case in GOOD_IDS:
        table = pd.DataFrame([{"case_id": case, "subject_id": "s", "image": "x.nii.gz"}])
        validate_manifest(table, tmp_path, source="m.csv", check_files=False)
    # manifest cells are stripped ("p01 " is p01); a file name " p01.nii.gz" is not, so it is refused
    assert case_id_problem(" p01") and case_id_problem("p01 ")


@pytest.mark.parametrize("name", list(ERRORS))
def test_validation_errors_name_the_file_and_row(data: Path, name: str) -> None:
    (data / "empty_dir").mkdir()
    text, expected = ERRORS[name]
    with pytest.raises(ManifestError) as err:
        read_manifest(write(data / "m.csv", text))
    assert expected in str(err.value)
    assert str(data / "m.csv") in str(err.value)


def test_row_numbers_count_blank_lines_like_a_spreadsheet(data: Path) -> None:
    text = H + "p01,s1,images/p01.nii.gz,,\n\n,,,,\np02,s2,images/missing.nii.gz,,\n"
    with pytest.raises(ManifestError, match=r"row 5 \(case_id=p02\): image file not found"):
        read_manifest(write(data / "m.csv", text))


def test_require_labels_rejects_rows_and_manifests_without_labels(data: Path) -> None:
    with pytest.raises(ManifestError, match=r"row 4 \(case_id=p03\): label is empty"):
        read_manifest(write(data / "m.csv", GOOD), require_labels=True)
    with pytest.raises(ManifestError, match="has no label column"):
        read_manifest(
            write(data / "n.csv", "case_id,subject_id,image\np01,s,images/p01.nii.gz\n"), require_labels=True
        )


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x1f\x8b\x08\x00\x00\x00binary\x00\x00data", "binary file"),
        ("caf\xe9,s,x\n".encode("latin-1"), "not UTF-8"),
    ],
)
def test_binary_or_non_utf8_files_are_rejected(tmp_path: Path, content: bytes, expected: str) -> None:
    (tmp_path / "m.csv").write_bytes(content)
    with pytest.raises(ManifestError, match=expected):
        read_manifest(tmp_path / "m.csv")


def test_missing_manifest_and_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(ManifestError, match="is a folder"):
        read_manifest(tmp_path)


def test_check_files_false_skips_file_checks(tmp_path: Path) -> None:
    df = read_manifest(write(tmp_path / "m.csv", H + "p01,s1,images/p01.nii.gz,,\n"), check_files=False)
    assert df["image"][0] == "images/p01.nii.gz"


def test_write_manifest_round_trips_with_relative_paths_inside_and_absolute_outside(data: Path) -> None:
    df = read_manifest(write(data / "m.csv", GOOD))
    out = write_manifest(df, data / "copy" / "again.csv")
    text = out.read_text()
    assert "../images" not in text and str(data / "images" / "p01.nii.gz") in text  # outside: absolute
    back = read_manifest(out)
    assert [r["image"] for r in case_records(back)] == [r["image"] for r in case_records(df)]
    assert back["fold"].tolist()[:2] == [0, 0]
    inside = write_manifest(back, data / "inside.csv")
    assert "images/p01.nii.gz,labels/p01.nii.gz,0" in inside.read_text()
    assert not list(data.rglob("*.tmp"))


def test_write_manifest_refuses_invalid_tables_and_leaves_nothing(tmp_path: Path) -> None:
    df = pd.DataFrame({"case_id": ["a", "a"], "subject_id": ["s", "t"], "image": ["x.nii.gz", "y.nii.gz"]})
    with pytest.raises(ManifestError, match="duplicate case_id=a"):
        write_manifest(df, tmp_path / "m.csv")
    assert list(tmp_path.iterdir()) == []


def test_validate_manifest_accepts_in_memory_tables_and_uses_source(tmp_path: Path) -> None:
    df = pd.DataFrame({"case_id": ["a"], "subject_id": ["s"], "image": ["x.nii.gz"], "fold": [pd.NA]})
    validate_manifest(df, tmp_path, check_files=False)
    with pytest.raises(ManifestError, match=r"mine row 2 \(case_id=a\): image file not found"):
        validate_manifest(df, tmp_path, source="mine")


def subjects_table(n_subjects: int = 23, seed: int = 1) -> pd.DataFrame:
    """Subjects with 1 to 3 cases each."""
    counts = np.random.default_rng(seed).integers(1, 4, n_subjects)
    rows = [(f"s{s:02d}_c{c}", f"s{s:02d}") for s in range(n_subjects) for c in range(counts[s])]
    return pd.DataFrame(
        {"case_id": [r[0] for r in rows], "subject_id": [r[1] for r in rows], "image": "x.nii.gz"}
    )


@pytest.mark.parametrize("k", [2, 5, 23])
def test_assign_folds_groups_subjects_and_balances_them(k: int) -> None:
    df = subjects_table()
    out = assign_folds(df, k, seed=3)
    assert out["fold"].notna().all() and set(out["fold"]) == set(range(k))
    assert (out.groupby("subject_id")["fold"].nunique() == 1).all()
    per_fold = out.groupby("fold")["subject_id"].nunique()
    assert per_fold.max() - per_fold.min() <= 1
    validate_manifest(out, ".", check_files=False)  # a valid manifest again


def test_assign_folds_is_deterministic_order_independent_and_seed_dependent() -> None:
    df = subjects_table()
    first = assign_folds(df, 5, seed=0)
    assert first["fold"].tolist() == assign_folds(df, 5, seed=0)["fold"].tolist()
    shuffled = assign_folds(df.sample(frac=1, random_state=0), 5, seed=0)
    assert dict(zip(shuffled["case_id"], shuffled["fold"])) == dict(zip(first["case_id"], first["fold"]))
    others = [assign_folds(df, 5, seed=s)["fold"].tolist() for s in (1, 2, 3)]
    assert any(o != first["fold"].tolist() for o in others)


def test_assign_folds_replaces_existing_folds_and_keeps_attrs(data: Path) -> None:
    df = read_manifest(write(data / "m.csv", GOOD))
    out = assign_folds(df, 2, seed=0)
    assert out["fold"].notna().all() and out.attrs["root"] == data
    assert df["fold"].isna().sum() == 1  # the input is not modified


@pytest.mark.parametrize(
    "k, error, expected",
    [
        (1, UsageError, "k >= 2"),
        (0, UsageError, "k >= 2"),
        (24, ManifestError, "cannot assign 24 folds to 23 subjects"),
    ],
)
def test_assign_folds_rejects_bad_k(k: int, error: type, expected: str) -> None:
    with pytest.raises(error, match=expected):
        assign_folds(subjects_table(), k)


def test_describe_folds_counts_cases_and_subjects() -> None:
    df = pd.DataFrame({"case_id": list("abcde"), "subject_id": list("xxyzz"), "image": "i.nii.gz"}).assign(
        fold=pd.array([0, 0, 1, None, None], dtype="Int64")
    )
    lines = [line.split() for line in describe_folds(df).splitlines()]
    assert lines[0] == ["fold", "cases", "subjects"]
    assert lines[1:] == [["0", "2", "1"], ["1", "1", "1"], ["-", "2", "1"], ["total", "5", "3"]]


def test_documented_example_manifest_is_valid() -> None:
    example = REPO / "data_manifests" / "example.csv"
    df = read_manifest(example, check_files=False)
    assert df["fold"].notna().sum() == 5 and df["label"].eq("").sum() == 1
    assert df.groupby("subject_id")["case_id"].count().max() == 2
    assert parse_label_map(df["label_map"][4]) == {1: 1, 2: 1}
