"""Per-class metrics: a hand-made 3-class pair with known Dice and NSD, empty classes, the binary table."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.config import EvalConfig
from pipeline.evaluation import evaluate
from pipeline.evaluation.evaluate import case_metrics, evaluate_cases, summarize
from pipeline.evaluation.metrics import class_metrics

CLASSES = {1: "pancreas", 2: "tumour"}


def _box(arr, lo, hi, value):
    arr[tuple(slice(a, b) for a, b in zip(lo, hi))] = value


def _pair():
    """Background, pancreas and tumour with overlaps known from the construction.

    Pancreas: the prediction equals the reference (Dice 1, NSD 1). Tumour: the reference is a cube
    A, the prediction is A plus a second cube B of the same size far away (> tolerance): Dice =
    2|A| / (|A| + 2|A|) = 2/3, and NSD = (surface of A twice) / (surface of A twice + surface of B) = 2/3.
    """
    shape = (48, 48, 32)
    label = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    _box(label, (4, 4, 4), (20, 20, 16), 1)
    _box(pred, (4, 4, 4), (20, 20, 16), 1)
    _box(label, (8, 8, 6), (14, 14, 12), 2)  # tumour inside the pancreas: 6 x 6 x 6
    _box(pred, (8, 8, 6), (14, 14, 12), 2)
    _box(pred, (34, 34, 20), (40, 40, 26), 2)  # a second 6^3 cube, > 20 mm from the first
    return pred, label


def test_three_class_pair_has_the_constructed_dice_and_nsd():
    pred, label = _pair()
    rows = {r["class"]: r for r in class_metrics(pred, label, (1.0, 1.0, 1.0), CLASSES, tolerance_mm=2.0)}
    assert list(rows) == ["pancreas", "tumour"]
    assert rows["pancreas"]["dice"] == pytest.approx(1.0) and rows["pancreas"]["nsd"] == pytest.approx(1.0)
    a = 6**3
    assert rows["tumour"]["dice"] == pytest.approx(2 * a / (a + 2 * a))
    assert rows["tumour"]["nsd"] == pytest.approx(2 / 3)
    assert rows["tumour"]["precision"] == pytest.approx(0.5) and rows["tumour"]["recall"] == pytest.approx(
        1.0
    )
    assert rows["tumour"]["pred_voxels"] == 2 * a and rows["tumour"]["label_voxels"] == a


def test_nsd_counts_surface_within_the_tolerance():
    label = np.zeros((32, 32, 32), np.uint8)
    _box(label, (8, 8, 8), (20, 20, 20), 1)
    pred = np.roll(label, 3, axis=0)  # the two faces across x move 3 mm, the side faces stay in place
    loose = class_metrics(pred, label, (1, 1, 1), {1: "pancreas"}, tolerance_mm=5.0)[0]
    tight = class_metrics(pred, label, (1, 1, 1), {1: "pancreas"}, tolerance_mm=1.0)[0]
    assert loose["nsd"] == pytest.approx(1.0)
    assert 0 < tight["nsd"] < 1
    assert tight["dice"] == loose["dice"]  # the tolerance changes NSD only


def test_tumour_absent_in_reference_or_in_prediction_has_defined_values_and_flags():
    base = np.zeros((24, 24, 24), np.uint8)
    _box(base, (4, 4, 4), (18, 18, 18), 1)
    with_tumour = base.copy()
    _box(with_tumour, (8, 8, 8), (12, 12, 12), 2)
    false_alarm = {r["class"]: r for r in class_metrics(with_tumour, base, (1, 1, 1), CLASSES)}["tumour"]
    assert false_alarm["flag"] == "empty_label"
    assert false_alarm["dice"] == 0.0 and false_alarm["nsd"] == 0.0 and false_alarm["recall"] == 1.0
    assert false_alarm["hd95_mm"] == pytest.approx(np.sqrt(3 * 24**2))
    missed = {r["class"]: r for r in class_metrics(base, with_tumour, (1, 1, 1), CLASSES)}["tumour"]
    assert missed["flag"] == "empty_pred" and missed["dice"] == 0.0 and missed["precision"] == 1.0
    none = {r["class"]: r for r in class_metrics(base, base, (1, 1, 1), CLASSES)}["tumour"]
    assert none["flag"] == "both_empty" and none["dice"] == 1.0 and none["nsd"] == 1.0


def test_binary_evaluation_is_the_old_any_foreground_one():
    rng = np.random.default_rng(0)
    label = (rng.random((20, 20, 20)) > 0.6).astype(np.uint8)
    pred = (rng.random((20, 20, 20)) > 0.6).astype(np.uint8) * 255  # another tool's 0/255 mask
    row = class_metrics(pred, label, (0.8, 0.8, 2.5), {1: "pancreas"})[0]
    old = case_metrics(pred > 0, label, (0.8, 0.8, 2.5))
    assert row["class"] == "pancreas"
    assert all(row[k] == old[k] for k in ("dice", "iou", "precision", "recall", "hd95_mm", "assd_mm"))


def test_evaluate_cases_writes_per_class_rows_and_summary_blocks(monkeypatch):
    pred, label = _pair()
    arrays = {"p": pred, "p2": label, "l": label}
    # The files' label mapping is the loaders' business (transforms.MapLabelsd); here the arrays.
    monkeypatch.setattr(
        evaluate, "load_mask_pair", lambda p, y, m="": (arrays[p], arrays[y], [1.0, 1.0, 1.0])
    )
    pairs = [
        {"case_id": "a", "subject_id": "s1", "pred": "p", "label": "l", "fold": 0},
        {"case_id": "b", "subject_id": "s1", "pred": "p2", "label": "l", "fold": 1},
    ]
    table = evaluate_cases(pairs, CLASSES, EvalConfig(bootstrap_resamples=200))
    assert list(table["class"]) == ["pancreas", "tumour", "pancreas", "tumour"]
    assert list(table["subject_id"]) == ["s1"] * 4
    tumour = table[table["class"] == "tumour"].set_index("case_id")
    assert tumour.loc["a", "lesion_fp"] == 1 and tumour.loc["b", "lesion_fp"] == 0
    summary = summarize(table, EvalConfig(bootstrap_resamples=200))
    block = summary["per_class"]["tumour"]
    assert block["n_cases"] == 2
    assert block["metrics"]["dice"]["mean"] == pytest.approx((2 / 3 + 1) / 2)
    assert set(block["per_fold"]) == {"0", "1"}
    ci = block["metrics"]["dice"]
    assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"]
    # one subject: every resample draws both cases, so the interval is the mean itself
    assert ci["ci_low"] == pytest.approx(ci["mean"]) and ci["ci_high"] == pytest.approx(ci["mean"])
    assert "compute_surface_dice" in summary["implementation"]["metrics"]
    assert summary["nsd_tolerance_mm"] == 2.0 and summary["n_cases"] == 2
    det = summary["detection"]["tumour"]
    assert det["case_level"]["sensitivity"] == 1.0 and det["lesion_level"]["fp"] == 1
    assert det["froc"]["points"] == [] and "probabilities" in det["froc"]["skipped"]
