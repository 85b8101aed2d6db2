"""The CV runner on tiny phantoms (a few seconds per fold): the run folder's contract and its errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.core.errors import ManifestError
from pipeline.data.manifest import read_manifest
from pipeline.workflows.cv import run_cv
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow


def test_cv_end_to_end_run_folder_contract(tiny_dataset, tmp_path):
    """train -> predict held-out scans -> evaluate, through the CLI, for 2 folds."""
    run = tmp_path / "run"
    overrides = [
        "data.target_spacing=[3,3,3]",
        "data.patch_size=[32,32,32]",
        "data.num_workers=0",
        "model.channels=[4,8,16,32,64]",
        "train.epochs=2",
        "train.val_interval=1",
        "train.checkpoint_interval=1",
    ]
    argv = ["cv", "--manifest", str(tiny_dataset), "--out", str(run), "--config", "demo"]
    assert main(argv + [x for o in overrides for x in ("--set", o)]) == 0
    assert (run / "config.yaml").exists() and (run / "cv_metrics.csv").exists()
    for k in (0, 1):
        fold = run / f"fold_{k}"
        for name in ("checkpoints/best.pt", "checkpoints/final.pt", "log.csv", "metrics.csv", "DONE"):
            assert (fold / name).exists(), f"fold_{k}/{name} missing"
        assert len(list((fold / "predictions").glob("*.nii.gz"))) == 2
        log = pd.read_csv(fold / "log.csv")
        assert list(log["epoch"]) == [1, 2] and log["val_dice"].notna().all()
    table = pd.read_csv(run / "cv_metrics.csv")
    assert len(table) == 4 and table["dice"].between(0, 1).all()
    summary = json.loads((run / "cv_summary.json").read_text())
    assert set(summary["per_fold"]) == {"0", "1"} and summary["n_cases"] == 4
    assert "dice" in summary["foreground_mean"] and "hd95_mm" in summary["foreground_mean"]

    # Re-running skips both folds (DONE) and leaves their results untouched.
    before = {p: p.stat().st_mtime_ns for p in run.glob("fold_*/metrics.csv")}
    assert main(argv + [x for o in overrides for x in ("--set", o)]) == 0
    assert before == {p: p.stat().st_mtime_ns for p in run.glob("fold_*/metrics.csv")}

    # Evaluating the held-out predictions again gives the same numbers.
    out = tmp_path / "again.csv"
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(run / "fold_0" / "predictions"),
                "--manifest",
                str(tiny_dataset),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    again = pd.read_csv(out).set_index("case_id")["dice"]
    fold0 = pd.read_csv(run / "fold_0" / "metrics.csv").set_index("case_id")["dice"]
    pd.testing.assert_series_equal(again.loc[fold0.index], fold0, check_exact=False, rtol=1e-6)


def test_cv_errors(tiny_dataset, tmp_path):
    df = read_manifest(tiny_dataset)
    unlabelled = df.copy()
    unlabelled.loc[0, "label"] = ""
    path = tmp_path / "nolabel.csv"
    unlabelled.drop(columns=["label_map"]).to_csv(path, index=False)
    path.write_text(
        path.read_text()
        .replace("images/", f"{tiny_dataset.parent}/images/")
        .replace("labels/", f"{tiny_dataset.parent}/labels/")
    )
    with pytest.raises(ManifestError, match="label"):
        run_cv(tiny_config(), path, tmp_path / "run1")
    with pytest.raises(ManifestError, match=r"fold\(s\) \[5\] have no cases"):
        run_cv(tiny_config(), tiny_dataset, tmp_path / "run2", folds=[5])
