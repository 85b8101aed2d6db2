"""The tables of a prediction folder are rebuilt from per-case records, so a killed run loses no row."""

from __future__ import annotations

import pandas as pd

from pipeline.core.layout import OutputLayout
from pipeline.inference.records import case_record, merge_records, write_record


def _record(out, case, total):
    return case_record(
        {"case_id": case, "image": f"scans/{case}.nii.gz"}, out / f"{case}.nii.gz", {"total_s": total}
    )


def test_a_killed_runs_records_are_merged_by_the_next_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    pd.DataFrame({"case_id": ["old"], "total_s": [9.0]}).to_csv(out / "timings.csv", index=False)
    for case, total in (("c0", 1.0), ("c1", 2.0)):  # what a killed run left: both records, c0's mask
        write_record(out, _record(out, case, total))
    (out / "c0.nii.gz").write_bytes(b"mask")  # c1 was killed between its record and its mask
    (out / "c2.nii.gz").write_bytes(b"mask")
    merge_records(out, [_record(out, "c2", 3.0)], ["c0", "c1", "c2"])

    timings = pd.read_csv(out / "timings.csv", dtype={"case_id": str})
    assert list(timings["case_id"]) == ["old", "c0", "c2"] and list(timings["total_s"]) == [9.0, 1.0, 3.0]
    inputs = pd.read_csv(out / "inputs.csv", dtype=str)
    assert list(inputs["case_id"]) == ["c0", "c2"]
    assert list(inputs["image"]) == [str(tmp_path / "scans" / f"{c}.nii.gz") for c in ("c0", "c2")]
    assert not OutputLayout(out).records.exists()  # merged records are removed with their folder


def test_nothing_to_merge_leaves_the_tables_alone(tmp_path):
    (tmp_path / "timings.csv").write_text("case_id,total_s\na,1.0\n")
    merge_records(tmp_path, [], ["a"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timings.csv"]
    assert (tmp_path / "timings.csv").read_text() == "case_id,total_s\na,1.0\n"
