"""Per-class CV summaries with intervals, and compare's per-class paired difference with its interval."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.core.layout import RunLayout
from pipeline.evaluation.evaluate import METRICS, write_table
from pipeline.workflows.compare import compare_runs, format_markdown
from pipeline.workflows.cv import aggregate, format_summary
from tests.conftest import tiny_config


def _fold(run: RunLayout, k: int, dice: dict[str, list[float]], subjects: list[str]) -> None:
    """A finished fold: per case a pancreas and a tumour row with the given Dice values."""
    fold = run.fold(k)
    fold.dir.mkdir(parents=True)
    rows = []
    for i, subject in enumerate(subjects):
        for cls, values in dice.items():
            row = {"case_id": f"f{k}c{i}", "subject_id": subject, "fold": k, "class": cls}
            row.update({m: values[i] for m in METRICS})
            row.update(pred_voxels=9, label_voxels=9 if i % 2 == 0 else 0, flag="")
            if cls == "tumour":
                row.update(ref_lesions=int(i % 2 == 0), pred_lesions=1, lesion_tp=int(i % 2 == 0))
                row.update(lesion_fp=int(i % 2 == 1), lesion_fn=0)
            rows.append(row)
    write_table(pd.DataFrame(rows), fold.metrics)
    fold.done.write_text("best_val_dice=0.5 epochs=1\n")


def test_cv_summary_has_per_class_blocks_with_intervals(tmp_path):
    run = RunLayout(tmp_path / "run")
    rng = np.random.default_rng(0)
    for k in (0, 1):
        pancreas = list(rng.uniform(0.7, 0.9, 4))
        tumour = list(rng.uniform(0.2, 0.6, 4))
        _fold(run, k, {"pancreas": pancreas, "tumour": tumour}, [f"s{k}a", f"s{k}a", f"s{k}b", f"s{k}c"])
    summary = aggregate(run.root)
    saved = json.loads(run.cv_summary.read_text())
    assert saved["per_class"].keys() == {"pancreas", "tumour"}
    table = pd.read_csv(run.cv_metrics)
    for cls, block in saved["per_class"].items():
        dice = block["metrics"]["dice"]
        assert dice["mean"] == pytest.approx(table.loc[table["class"] == cls, "dice"].mean())
        assert dice["ci_low"] < dice["mean"] < dice["ci_high"]
        assert set(block["per_fold"]) == {"0", "1"} and block["n_cases"] == 8
        assert "ci_low" in block["per_fold"]["0"]["nsd"]
    assert "ci_high" in saved["foreground_mean"]["dice"] and "ci_low" in saved["per_fold"]["1"]["hd95_mm"]
    assert saved["bootstrap"] == {"resamples": 2000, "seed": 0, "level": 0.95, "unit": "subject"}
    assert saved["n_cases"] == 8
    case = saved["detection"]["tumour"]["case_level"]
    assert (case["positives"], case["detected"], case["negatives"], case["true_negatives"]) == (4, 4, 4, 0)
    assert saved["detection"]["tumour"]["lesion_level"]["fp"] == 4
    text = format_summary(summary)
    assert "tumour (8 cases" in text and "tumour detection: case sensitivity 1.000 (4/4)" in text
    assert text.startswith("per fold: mean over the rows of all classes (pancreas, tumour)")


def test_compare_gives_each_class_a_paired_difference_with_its_interval(tmp_path):
    a, b = RunLayout(tmp_path / "a"), RunLayout(tmp_path / "b")
    rng = np.random.default_rng(1)
    for k in (0, 1):
        subjects = [f"s{k}{i}" for i in range(4)]
        base_p, base_t = rng.uniform(0.7, 0.8, 4), rng.uniform(0.3, 0.5, 4)
        _fold(a, k, {"pancreas": list(base_p + 0.05), "tumour": list(base_t)}, subjects)
        _fold(b, k, {"pancreas": list(base_p), "tumour": list(base_t + rng.normal(0, 0.05, 4))}, subjects)
    cfg = tiny_config()
    table, test = compare_runs({"attention_unet": a.root, "unet": b.root}, None, cfg)
    assert list(table["class"]) == ["pancreas", "pancreas", "tumour", "tumour"]
    assert list(table["network"]) == ["attention_unet", "unet"] * 2
    row = table.iloc[0]
    assert row["dice_ci_low"] < row["dice_mean"] < row["dice_ci_high"]
    pancreas, tumour = test["per_class"]["pancreas"], test["per_class"]["tumour"]
    assert pancreas["mean_diff"] == pytest.approx(0.05) and pancreas["wins"] == 8
    # a constant difference: every resample has the same mean difference
    assert pancreas["ci_low"] == pytest.approx(0.05) and pancreas["ci_high"] == pytest.approx(0.05)
    assert tumour["ci_low"] < tumour["mean_diff"] < tumour["ci_high"] and tumour["n"] == 8
    assert test["p"] == pancreas["p"]  # the head of the result is the pancreas test, as before classes
    md = format_markdown(table, test, cfg, None)
    assert "| attention_unet | tumour |" in md
    assert "per-case Dice of tumour" in md and "95% CI" in md and "Wilcoxon signed-rank" in md
