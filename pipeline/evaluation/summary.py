"""Summaries a paper can print: per-class means with 95 % bootstrap intervals, and tumour detection.

``cv_summary.json`` (and ``metrics.json`` of ``evaluate``) get, besides nnU-Net's ``foreground_mean``
and ``per_fold`` blocks (every mean with its interval):

* ``per_class``: for each class name, ``n_cases``, ``flags``, mean/std/median/ci_low/ci_high per
  metric overall and per fold;
* ``detection``: for each detection class (``eval.detection_classes``), case level sensitivity and
  specificity, lesion level TP/FP/FN with lesion sensitivity and false positives per case, and the
  FROC points (or why there are none);
* ``implementation``: which code computed the numbers (values differ between tools), and
  ``bootstrap``: resamples, seed, level, and whether subjects or cases were resampled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.core.config import EvalConfig
from pipeline.evaluation import bootstrap, lesions
from pipeline.evaluation.metrics import CLASS_METRICS
from pipeline.evaluation.metrics import IMPLEMENTATION as METRICS_IMPLEMENTATION

__all__ = [
    "DEFAULT_CLASS",
    "stats",
    "per_class",
    "detection",
    "implementation",
    "class_rows",
    "fmt_ci",
    "class_lines",
]

DEFAULT_CLASS = "pancreas"  # the class of a metrics table written before tables had a class column


def _subjects(df: pd.DataFrame) -> np.ndarray:
    """The resampling unit of each row: its subject when known, else its case."""
    if "subject_id" in df:
        s = df["subject_id"].astype(str)
        return np.where(s.isin(["", "nan", "None"]), df["case_id"].astype(str), s)
    return df["case_id"].astype(str).to_numpy()


def stats(
    df: pd.DataFrame, settings: EvalConfig | None = None, metrics: Sequence[str] = CLASS_METRICS
) -> dict:
    """Mean, std (ddof=0), median and the bootstrap interval of the mean for each metric in ``df``.

    Rows of one subject are resampled together (all their classes and scans).

    Args:
        df: metrics rows (one per case and class).
        settings: resamples, seed and level (``eval``); None: the defaults.
        metrics: the columns to summarise (those missing from ``df`` are left out).

    Returns:
        ``{metric: {"mean", "std", "median", "ci_low", "ci_high"}}``; empty for an empty table.
    """
    s = settings or EvalConfig()
    cols = [m for m in metrics if m in df]
    if df.empty or not cols:
        return {}
    x = df[cols].to_numpy(dtype=float)
    w = bootstrap.resample_weights(_subjects(df), s.bootstrap_resamples, s.bootstrap_seed)
    means = bootstrap.bootstrap_means(x, w)
    alpha = (1.0 - float(s.ci_level)) / 2.0
    lows, highs = np.nanquantile(means, [alpha, 1.0 - alpha], axis=0)
    out = {}
    for i, m in enumerate(cols):
        out[m] = {
            "mean": float(df[m].mean()),
            "std": float(df[m].std(ddof=0)),
            "median": float(df[m].median()),
            "ci_low": float(lows[i]),
            "ci_high": float(highs[i]),
        }
    return out


def class_rows(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The table's rows per class name, in the order they first appear (one class for old tables)."""
    if "class" not in df:
        return {DEFAULT_CLASS: df}
    names = df["class"].astype(str)
    return {name: df[names == name] for name in dict.fromkeys(names)}


def per_class(df: pd.DataFrame, settings: EvalConfig | None = None) -> dict:
    """``{class name: {"n_cases", "flags", "metrics": stats, "per_fold": {fold: stats}}}``."""
    out = {}
    for name, rows in class_rows(df).items():
        folds = {str(int(k)): stats(g, settings) for k, g in rows.groupby("fold")} if "fold" in rows else {}
        out[name] = {
            "n_cases": int(len(rows)),
            "flags": {k: int(v) for k, v in rows["flag"].value_counts().items() if k}
            if "flag" in rows
            else {},
            "metrics": stats(rows, settings),
            "per_fold": folds,
        }
    return out


def _rate_ci(hits: pd.Series, subjects: np.ndarray, s: EvalConfig) -> list[float | None]:
    if hits.empty:
        return [None, None]
    low, high = bootstrap.mean_ci(
        hits.astype(float), subjects, s.bootstrap_resamples, s.bootstrap_seed, s.ci_level
    )
    return [low, high]


def detection(df: pd.DataFrame, settings: EvalConfig | None = None) -> dict:
    """Case level and lesion level detection, and FROC points, of each detection class in ``df``.

    Returns:
        ``{class name: {"case_level", "lesion_level", "froc"}}`` for the classes of
        ``eval.detection_classes`` present in the table with lesion columns; case-level rates carry
        a bootstrap interval (``sensitivity_ci``, ``specificity_ci``).
    """
    s = settings or EvalConfig()
    out = {}
    wanted = {n.lower() for n in s.detection_classes}
    for name, rows in class_rows(df).items():
        if name.lower() not in wanted or not set(lesions.LESION_COLUMNS) <= set(rows):
            continue
        case = lesions.case_detection(rows)
        pos = rows["label_voxels"] > 0
        subj = _subjects(rows)
        case["sensitivity_ci"] = _rate_ci((rows["lesion_tp"] > 0)[pos], subj[pos.to_numpy()], s)
        neg = ~pos
        case["specificity_ci"] = _rate_ci((rows["pred_voxels"] == 0)[neg], subj[neg.to_numpy()], s)
        out[name] = {
            "case_level": case,
            "lesion_level": lesions.lesion_detection(rows),
            "froc": lesions.froc_points(rows, s.froc_thresholds),
        }
    return out


def implementation(settings: EvalConfig | None = None, subjects_known: bool = True) -> dict:
    """What computed the numbers: library versions and functions, and the bootstrap's settings."""
    import monai
    import scipy

    s = settings or EvalConfig()
    return {
        "implementation": {
            "metrics": METRICS_IMPLEMENTATION.format(monai=monai.__version__, tol=float(s.nsd_tolerance_mm)),
            "lesions": lesions.IMPLEMENTATION.format(scipy=scipy.__version__),
            "intervals": bootstrap.IMPLEMENTATION,
        },
        "nsd_tolerance_mm": float(s.nsd_tolerance_mm),
        "bootstrap": {
            "resamples": int(s.bootstrap_resamples),
            "seed": int(s.bootstrap_seed),
            "level": float(s.ci_level),
            "unit": "subject" if subjects_known else "case",
        },
    }


def fmt_ci(entry: dict, digits: int = 3) -> str:
    """``0.812 [0.790, 0.833]``: a mean and its interval, as the tables print them."""
    lo, hi = entry.get("ci_low"), entry.get("ci_high")
    text = f"{entry['mean']:.{digits}f}"
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


_SHOWN = (("dice", "Dice"), ("nsd", "NSD"), ("hd95_mm", "HD95 mm"), ("assd_mm", "ASSD mm"))


def class_lines(summary: dict) -> list[str]:
    """One text line per class (means with their intervals) and per detection class, for logs."""
    level = summary.get("bootstrap", {}).get("level", 0.95)
    lines = []
    for name, block in summary.get("per_class", {}).items():
        m = block["metrics"]
        cells = [
            f"{label} {fmt_ci(m[key], 2 if key.endswith('_mm') else 3)}" for key, label in _SHOWN if key in m
        ]
        lines.append(f"{name} ({block['n_cases']} cases, mean [{level:.0%} CI]): " + ", ".join(cells))
    for name, det in summary.get("detection", {}).items():
        c, les = det["case_level"], det["lesion_level"]
        sens = (
            "n/a"
            if c["sensitivity"] is None
            else f"{c['sensitivity']:.3f} ({c['detected']}/{c['positives']})"
        )
        spec = (
            "n/a"
            if c["specificity"] is None
            else f"{c['specificity']:.3f} ({c['true_negatives']}/{c['negatives']})"
        )
        lines.append(
            f"{name} detection: case sensitivity {sens}, specificity {spec}; "
            f"lesions TP {les['tp']} FP {les['fp']} FN {les['fn']}"
        )
    return lines
