"""The one reader of a run's fold metrics, as cv's aggregation, compare and the report use it."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.core.errors import ManifestError
from pipeline.core.layout import RunLayout
from pipeline.evaluation.evaluate import METRICS, join_fold_timings, read_fold_metrics, write_table
from pipeline.workflows.compare import compare_runs
from pipeline.workflows.cv import aggregate
from tests.conftest import tiny_config


def _fold(run: RunLayout, k: int, cases: list[str], done: bool = True, dice: float = 0.5) -> None:
    """A fold folder with a metrics table (and DONE when ``done``)."""
    fold = run.fold(k)
    fold.dir.mkdir(parents=True)
    rows = [
        {
            "case_id": c,
            "fold": k,
            **{m: dice for m in METRICS},
            "pred_voxels": 9,
            "label_voxels": 9,
            "flag": "",
        }
        for c in cases
    ]
    rows[0]["flag"] = "both_empty" if len(rows) > 1 else ""
    write_table(pd.DataFrame(rows), fold.metrics)
    if done:
        fold.done.write_text("best_val_dice=0.5 epochs=1\n")


@pytest.fixture
def run(tmp_path) -> RunLayout:
    """Folds 0 and 10 finished, fold 1 with metrics but no DONE, fold 2 empty."""
    run = RunLayout(tmp_path / "run")
    _fold(run, 10, ["c10a", "c10b"])
    _fold(run, 0, ["007", "c0b"])
    _fold(run, 1, ["c1a"], done=False)
    run.fold(2).dir.mkdir()
    return run


def test_finished_folds_in_fold_order_with_text_case_ids_and_empty_flags(run):
    df = read_fold_metrics(run)
    assert list(df["case_id"]) == ["007", "c0b", "c10a", "c10b"]  # fold 10 after fold 0; "007" stays text
    assert list(df["flag"]) == ["both_empty", "", "both_empty", ""]  # empty cells are "", not NaN
    assert list(read_fold_metrics(run, [10])["case_id"]) == ["c10a", "c10b"]
    # the report of a run in progress also shows a fold that has metrics but no DONE yet
    assert "c1a" in set(read_fold_metrics(run, require_done=False)["case_id"])


def test_strict_names_the_unfinished_fold_and_no_fold_gives_an_empty_table(run, tmp_path):
    with pytest.raises(ManifestError, match=r"fold_1: fold not finished \(no DONE or metrics\.csv\)"):
        read_fold_metrics(run, [0, 1], strict=True)
    with pytest.raises(ManifestError, match="fold_2: fold not finished"):
        read_fold_metrics(run, [0, 2], strict=True)
    empty = read_fold_metrics(RunLayout(tmp_path / "nothing"))
    assert empty.empty and {"case_id", "dice", "flag"} <= set(empty.columns)


def test_inference_seconds_join_by_case(run):
    df = read_fold_metrics(run)
    assert join_fold_timings(df, run) is df  # no timings anywhere: unchanged
    preds = run.fold(0).predictions
    preds.mkdir()
    pd.DataFrame({"case_id": ["007", "c0b"], "load_s": [0.1, 0.1], "total_s": [1.5, 2.5]}).to_csv(
        run.fold(0).timings, index=False
    )
    joined = join_fold_timings(df, run).set_index("case_id")["infer_s"]
    assert joined["007"] == 1.5 and joined["c0b"] == 2.5 and joined[["c10a", "c10b"]].isna().all()


def test_cv_aggregation_counts_the_folds_with_done(run):
    summary = aggregate(run.root)
    table = pd.read_csv(run.cv_metrics, dtype={"case_id": str})
    assert list(table["case_id"]) == ["007", "c0b", "c10a", "c10b"]
    assert set(summary["per_fold"]) == {"0", "10"}
    assert json.loads(run.cv_summary.read_text())["n_cases"] == 4


def test_compare_reads_the_same_tables_and_refuses_an_unfinished_fold(tmp_path):
    a, b = RunLayout(tmp_path / "a"), RunLayout(tmp_path / "b")
    for k, cases in ((0, ["x1", "x2"]), (1, ["x3", "x4"])):
        _fold(a, k, cases, dice=0.8)
        _fold(b, k, cases, dice=0.6)
    cfg = tiny_config()
    table, test = compare_runs({"attention_unet": a.root, "unet": b.root}, None, cfg)
    assert list(table["cases"]) == [4, 4] and list(table["dice_mean"]) == pytest.approx([0.8, 0.6])
    assert test["n"] == 4 and test["wins"] == 4
    b.fold(1).done.unlink()
    with pytest.raises(ManifestError, match="fold_1: fold not finished"):
        compare_runs({"attention_unet": a.root, "unet": b.root}, None, cfg)
