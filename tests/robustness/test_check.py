"""``pancreas-seg check MANIFEST``: the problem table, its CSV, exit codes; and the loaders' checks it
shares (headers refused before any voxel is read, in every format)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from pipeline.core.errors import ImageError
from tests.robustness.harness import run_cli
from tests.robustness.inputs import write_dicom_series


def _manifest(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _rows(world):
    return pd.read_csv(world.manifest, dtype=str).fillna("").to_dict("records")


def test_clean_manifest(world, tmp_path, capsys, monkeypatch):
    out = tmp_path / "problems.csv"
    run = run_cli(["check", world.manifest, "--config", world.config, "--out", out], capsys, monkeypatch)
    assert run.code == 0 and run.error_lines == [], run.err
    assert "4 case(s) checked: 0 error(s)" in run.out and "no problems found" in run.out
    assert list(pd.read_csv(out).columns) == ["case_id", "severity", "file", "problem"]
    assert len(pd.read_csv(out)) == 0


def test_every_problem_of_every_case_in_one_table(world, tmp_path, capsys, monkeypatch):
    rows = _rows(world)
    rows[0]["image"] = str(world.bad["nan_inf"])
    rows[1]["image"] = str(world.bad["mr_like"])  # a warning, and its label is still checked
    rows[1]["label"] = str(world.bad["label_values"])
    rows[2]["image"] = str(world.bad["missing"])
    rows[3]["label"] = str(world.bad["label_grid"])
    manifest = _manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "problems.csv"
    run = run_cli(["check", manifest, "--config", world.config, "--out", out], capsys, monkeypatch)
    table = pd.read_csv(out)
    got = {(r.case_id, r.severity, r.file.rsplit("/", 1)[-1]) for r in table.itertuples()}
    assert got == {
        ("g0", "error", "nan.nii.gz"),
        ("g1", "warning", "mr.nii.gz"),
        ("g1", "error", "label_values.nii.gz"),
        ("g2", "error", "missing.nii.gz"),
        ("g3", "error", "label_grid.nii.gz"),
    }
    assert table.set_index("case_id").loc["g0", "problem"] == "image has 2 NaN or infinite voxels"
    for r in table.itertuples():  # the printed table has the same rows
        assert r.problem[:40] in run.out
    assert "4 case(s) checked: 4 error(s) in 4 case(s), 1 warning(s)" in run.out
    assert run.code == 2 and len(run.error_lines) == 1, run.err
    assert "nan.nii.gz: image has 2 NaN" in run.error_lines[0]
    assert (
        "3 more problem(s)" in run.error_lines[0] and f"pancreas-seg check {manifest}" in run.error_lines[0]
    )


def test_warnings_alone_pass(world, tmp_path, capsys, monkeypatch):
    rows = _rows(world)
    rows[3]["image"] = str(world.bad["mr_like"])
    run = run_cli(["check", _manifest(tmp_path / "m.csv", rows)], capsys, monkeypatch)
    assert run.code == 0, run.err
    assert "warning" in run.out and "does not look like CT" in run.out


def test_dicom_series_is_picked_with_the_config(world, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "series"
    shutil.copytree(world.bad["dicom_two_series"], folder)
    manifest = _manifest(tmp_path / "m.csv", [{"case_id": "d", "subject_id": "d", "image": str(folder)}])
    run = run_cli(["check", manifest], capsys, monkeypatch)
    assert run.code == 2 and "2 DICOM series" in run.error_lines[0]
    uid = "1.2.826.0.1.3680043.8.498.12"
    run = run_cli(["check", manifest, "--set", f"data.dicom_series={uid}"], capsys, monkeypatch)
    assert run.code == 0 and "no problems found" in run.out, run.out + run.err


def test_train_preflight_names_the_first_problem_and_counts_the_rest(world, tmp_path, capsys, monkeypatch):
    rows = _rows(world)
    rows[1]["image"], rows[2]["image"] = str(world.bad["all_air"]), str(world.bad["image_2d"])
    manifest = _manifest(tmp_path / "m.csv", rows)
    argv = [
        "train",
        "--manifest",
        manifest,
        "--fold",
        "0",
        "--out",
        tmp_path / "run",
        "--config",
        world.config,
    ]
    run = run_cli(argv, capsys, monkeypatch)
    assert run.code == 2 and len(run.error_lines) == 1, run.err
    assert (
        "air.nii.gz: every voxel is air" in run.error_lines[0] and "1 more problem(s)" in run.error_lines[0]
    )
    assert not (tmp_path / "run").exists()


def test_manifest_check_points_to_check(world, capsys, monkeypatch):
    run = run_cli(["manifest", "check", world.manifest], capsys, monkeypatch)
    assert run.code == 0 and f"pancreas-seg check {world.manifest}" in run.err


_MHA = "ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\nElementSpacing = 1 1 1\n"
_MHA += "ElementType = MET_SHORT\nElementDataFile = LOCAL\n"
_NRRD = "NRRD0004\ntype: short\ndimension: 3\nsizes: 100000 100000 100000\nspacings: 1 1 1\n"
_NRRD += "encoding: raw\nendian: little\n\n"


@pytest.mark.parametrize("name,header", [("huge.mha", _MHA), ("huge.nrrd", _NRRD), ("huge.nii.gz", None)])
def test_oversized_headers_are_refused_before_any_voxel_is_read(name, header, world, tmp_path, monkeypatch):
    import transforms.io as tio

    path = world.bad["oom_header"] if header is None else tmp_path / name
    if header is not None:
        path.write_bytes(header.encode() + b"\0" * 64)

    def no_reading(*args, **kwargs):
        raise AssertionError("the voxels were about to be read")

    monkeypatch.setattr(tio, "LoadImage", no_reading)
    with pytest.raises(ImageError, match=r"voxels .* over the limit .* refusing to read it") as exc:
        tio.load_volume(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_dicom_header_reading_lists_the_folder_once(world, tmp_path, monkeypatch):
    import transforms.readers as readers
    from transforms.io import load_volume

    folder = tmp_path / "one"
    write_dicom_series(folder, "1.2.826.0.1.3680043.8.498.21", 5)
    calls = []
    real = readers.list_dicom_series
    monkeypatch.setattr(readers, "list_dicom_series", lambda f: calls.append(f) or real(f))
    img = load_volume(folder)
    assert tuple(img.shape) == (1, 16, 16, 5) and len(calls) == 1


def test_truncation_is_found_from_sizes_without_decompressing_a_good_file(world, tmp_path, monkeypatch):
    import gzip

    import transforms.validate as validate
    from transforms.io import load_volume

    def no_gzip(*args, **kwargs):
        raise AssertionError("a good .nii.gz was decompressed to check its length")

    monkeypatch.setattr(validate.gzip, "open", no_gzip)
    assert tuple(load_volume(world.good_image).shape) == (1, 32, 32, 16)
    raw = tmp_path / "cut.nii"  # uncompressed: the file's size tells
    raw.write_bytes(gzip.decompress(world.good_image.read_bytes())[:-100])
    with pytest.raises(ImageError, match=r"cut\.nii: cannot read image: file is truncated"):
        load_volume(raw)
