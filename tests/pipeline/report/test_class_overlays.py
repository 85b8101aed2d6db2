"""Overlays with several classes: one colour pair per class, and a legend naming them."""

from __future__ import annotations

import numpy as np

from pipeline.report.figures import LABEL_RGB, PRED_RGB, class_rgb, compose_overlay
from pipeline.report.page import legend


def _pixels(rgb: np.ndarray, colour) -> set:
    return set(zip(*np.nonzero(np.all(rgb == np.asarray(colour, np.uint8), axis=-1))))


def test_each_class_gets_its_own_contour_colours():
    ct = np.zeros((40, 40), np.float32)
    label = np.zeros((40, 40), np.uint8)
    label[5:35, 5:35] = 1
    label[15:25, 15:25] = 2  # tumour inside the pancreas
    pred = np.zeros_like(label)
    pred[8:30, 8:30] = 1
    pred[25:29, 25:29] = 2  # a tumour where there is none
    rgb, drawn = compose_overlay(ct, label, pred, (1, 1))
    assert class_rgb(1) == (LABEL_RGB, PRED_RGB)
    for key, colour in (("label_1", LABEL_RGB), ("label_2", class_rgb(2)[0]), ("pred_2", class_rgb(2)[1])):
        assert _pixels(rgb, colour) == set(zip(*(c.tolist() for c in drawn[key]))) != set()
    tumour_edge = _pixels(rgb, class_rgb(2)[0])
    assert all(15 <= r < 25 and 15 <= c < 25 for r, c in tumour_edge)  # drawn inside the tumour's edge
    assert set(zip(*drawn["label"])) == set(zip(*drawn["label_1"])) | tumour_edge


def test_binary_overlay_and_legend_are_as_before_and_classes_are_named():
    label = np.zeros((20, 20), np.uint8)
    label[5:15, 5:15] = 1
    rgb, drawn = compose_overlay(np.zeros((20, 20)), label, label, (1, 1))
    assert set(drawn) == {"label", "pred", "label_1", "pred_1"}
    assert _pixels(rgb, LABEL_RGB) and _pixels(rgb, PRED_RGB)
    assert "tumour" not in legend() and "label (inside its edge)" in legend()
    text = legend({1: "pancreas", 2: "tumour"})
    assert "pancreas:" in text and "tumour:" in text and f"rgb{class_rgb(2)[0]}" in text
