"""One rule for case ids, at the step that makes them: a scan or mask whose file name gives an id the
manifest would refuse stops ``infer`` and ``report`` before they write anything, with one error
line naming the file and exit code 2; the same scan under an id of the user's choosing (a manifest)
goes through every step. Every warning line says "warning:", and an error line always comes with
a non-zero exit.
"""

from __future__ import annotations

import logging
import shutil

import pandas as pd

from tests.robustness.harness import run_cli, snapshot

HOSTILE = "<img src=x onerror=alert(1)>"
RULE = "case_id must be usable as a file name"


def _one_error(run, named: str) -> None:
    context = f"exit {run.code}\nstderr:\n{run.err}"
    assert run.code == 2 and "Traceback" not in run.err, context
    assert len(run.error_lines) == 1, context
    line = run.error_lines[0]
    assert line.startswith("pancreas-seg: ") and named in line and RULE in line, context


def _quiet_success(run) -> None:
    context = f"exit {run.code}\nstderr:\n{run.err}"
    assert run.code == 0 and run.error_lines == [], context
    warnings = [r.getMessage() for r in run.records if r.levelno == logging.WARNING]
    assert all(w.startswith("warning:") for w in warnings), context


def test_infer_refuses_a_scan_named_like_markup_before_writing(world, tmp_path, capsys, monkeypatch):
    scans, out = tmp_path / "scans", tmp_path / "masks"
    scans.mkdir()
    shutil.copy(world.good_image, scans / f"{HOSTILE}.nii.gz")
    shutil.copy(world.good_image, scans / "ok.nii.gz")
    run = run_cli(["infer", "--model", world.checkpoint, "--input", scans, "--out", out], capsys, monkeypatch)
    _one_error(run, f"{HOSTILE}.nii.gz")
    assert "manifest" in run.error_lines[0]  # what to do instead of renaming
    assert snapshot(out) == {}  # not even the good scan's mask: the error comes before any work


def test_a_manifest_gives_the_same_scan_a_usable_id_through_infer_and_report(
    world, tmp_path, capsys, monkeypatch
):
    scans, out = tmp_path / "scans", tmp_path / "masks"
    scans.mkdir()
    shutil.copy(world.good_image, scans / f"{HOSTILE}.nii.gz")
    manifest = tmp_path / "cases.csv"
    pd.DataFrame([{"case_id": "c1", "subject_id": "s1", "image": str(scans / f"{HOSTILE}.nii.gz")}]).to_csv(
        manifest, index=False
    )
    argv = ["infer", "--model", world.checkpoint, "--input", manifest, "--out", out]
    _quiet_success(run_cli(argv, capsys, monkeypatch))
    assert (out / "c1.nii.gz").exists()
    assert pd.read_csv(out / "inputs.csv")["case_id"].tolist() == ["c1"]
    _quiet_success(run_cli(["report", out, "--max-cases", "1"], capsys, monkeypatch))
    assert "c1" in (out / "report.html").read_text()


def test_report_refuses_a_mask_named_like_markup_before_writing(world, tmp_path, capsys, monkeypatch):
    out = tmp_path / "masks"
    shutil.copytree(world.preds, out)
    shutil.copy(world.preds / "g0.nii.gz", out / f"{HOSTILE}.nii.gz")
    before = snapshot(out)
    run = run_cli(["report", out], capsys, monkeypatch)
    _one_error(run, f"{HOSTILE}.nii.gz")
    assert snapshot(out) == before  # no report.html, no report_files/


def test_report_refuses_an_inputs_table_with_such_an_id(world, tmp_path, capsys, monkeypatch):
    """The issue's case: an ``inputs.csv`` listing the id (as an older ``infer`` could leave) is an
    error with exit 2, not a message above a report written anyway."""
    out = tmp_path / "masks"
    shutil.copytree(world.preds, out)
    rows = [{"case_id": HOSTILE, "subject_id": "s", "image": str(world.good_image)}]
    pd.DataFrame(rows).to_csv(out / "inputs.csv", index=False)
    before = snapshot(out)
    run = run_cli(["report", out], capsys, monkeypatch)
    _one_error(run, "inputs.csv")
    assert snapshot(out) == before
