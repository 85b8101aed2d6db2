"""The Attention U-Net vs U-Net comparison: identical runs, the paper-style table, the paired test."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import wilcoxon

from pipeline.cli import main
from pipeline.workflows.compare import MIN_PAIRS, paired_test

TINY = [
    "data.target_spacing=[3,3,3]",
    "data.patch_size=[32,32,32]",
    "data.num_workers=0",
    "model.channels=[4,8,16,32,64]",
    "train.epochs=1",
    "train.batch_size=2",
    "train.val_interval=1",
    "train.checkpoint_interval=1",
    "train.lr=0.003",
    "infer.sw_batch_size=4",
]


def test_paired_test_matches_scipy_with_enough_pairs():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.6, 0.9, 12)
    b = a - rng.uniform(-0.02, 0.08, 12)
    out = paired_test(a, b)
    ref = wilcoxon(a - b)
    assert out["p"] == pytest.approx(ref.pvalue) and out["statistic"] == pytest.approx(ref.statistic)
    assert out["n"] == 12 and out["wins"] + out["losses"] == 12 and out["note"] == ""
    assert out["mean_diff"] == pytest.approx(float(np.mean(a - b)))


def test_paired_test_degenerate_inputs_give_notes_not_errors():
    same = paired_test([0.8, 0.7, 0.9], [0.8, 0.7, 0.9])
    assert same["p"] == 1.0 and "all 3 paired differences are zero" in same["note"]
    few = paired_test([0.9, 0.8, 0.7], [0.8, 0.75, 0.6])
    assert 0 < few["p"] <= 1 and f"< {MIN_PAIRS}" in few["note"] and few["wins"] == 3
    one = paired_test([0.9], [0.1])
    assert "indicative only" in one["note"] or "not computable" in one["note"]
    empty = paired_test([], [])
    assert empty["n"] == 0 and math.isnan(empty["p"]) and "no paired cases" in empty["note"]
    nan = paired_test([0.5, float("nan"), 0.7], [0.4, 0.3, 0.7])
    assert nan["n"] == 2 and nan["n_nonzero"] == 1


@pytest.mark.slow
def test_compare_runs_both_networks_with_identical_settings(tiny_dataset, tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--manifest", str(tiny_dataset), "--out", str(out), "--folds", "0", "--config", "demo"]
    argv += [x for o in TINY for x in ("--set", o)]
    assert main(argv) == 0

    configs = {n: yaml.safe_load((out / n / "config.yaml").read_text()) for n in ("attention_unet", "unet")}
    assert (
        configs["attention_unet"]["model"]["name"] == "attention_unet"
        and configs["unet"]["model"]["name"] == "unet"
    )
    for section in ("data", "train", "infer"):  # same folds, seed, schedule, preprocessing
        assert configs["attention_unet"][section] == configs["unet"][section]
    assert {k: v for k, v in configs["unet"]["model"].items() if k != "name"} == {
        k: v for k, v in configs["attention_unet"]["model"].items() if k != "name"
    }

    table = pd.read_csv(out / "compare.csv")
    assert list(table["network"]) == ["attention_unet", "unet"]
    held_out = pd.read_csv(out / "unet" / "fold_0" / "metrics.csv")
    assert (table["cases"] == len(held_out)).all()
    att, unet = table.set_index("network").loc["attention_unet"], table.set_index("network").loc["unet"]
    assert att["parameters"] > unet["parameters"] > 0  # the gates cost parameters
    assert unet["dice_mean"] == pytest.approx(held_out["dice"].mean(), rel=1e-5)
    assert unet["assd_mm_std"] == pytest.approx(held_out["assd_mm"].std(ddof=0), rel=1e-5)
    assert (table["infer_s_per_scan"] > 0).all()
    for m in ("dice", "precision", "recall", "assd_mm", "hd95_mm"):
        assert {f"{m}_mean", f"{m}_std"} <= set(table.columns)

    md = (out / "compare.md").read_text()
    assert "| attention_unet |" in md and "| unet |" in md and "Wilcoxon signed-rank" in md
    assert "Note:" in md  # 2 paired cases: too few for the test, and it says so

    # Re-running resumes: finished folds are skipped, the table is rewritten from them.
    done = {p: p.stat().st_mtime_ns for p in out.glob("*/fold_0/metrics.csv")}
    assert main(argv) == 0
    assert done == {p: p.stat().st_mtime_ns for p in out.glob("*/fold_0/metrics.csv")}
