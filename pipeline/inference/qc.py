"""Quality control of a prediction: how much the ensemble's folds agree, and which cases to review.

:func:`ensemble_scores` measures, on the canonical grid the networks ran on:

* ``qc_fold_dice``: the mean Dice between every pair of folds' foreground masks (NaN with one network);
* ``qc_volume_cv``: the coefficient of variation (std / mean) of the folds' foreground volumes (NaN
  with one network);
* ``qc_entropy``: the mean voxel entropy of the averaged class probabilities, normalised to 0..1
  (divided by log C), inside the union of the folds' masks (0 when the union is empty). This is the
  one score a single model also has; ``qc_score`` is this value (higher = less certain).

:func:`review` turns them and the case's statistics into ``review`` (``ok``/``review``) and
``review_reasons`` (``;``-separated): ``empty`` (no foreground voxel), ``tiny volume``
(foreground below ``qc.min_volume_ml``), ``touches border`` (the mask reaches the scan's edge),
``folds disagree`` (fold Dice below ``qc.min_fold_dice`` or volume CV above ``qc.max_volume_cv``),
``uncertain`` (entropy above ``qc.max_entropy``), ``not CT-like`` (no negative value in the scan:
not HU).

A scan predicted in z-slabs (:mod:`pipeline.inference.slabs`) is scored from :func:`qc_tally` of each
slab's core (the canonical slices that slab contributes to the mask): counts and sums, which
:func:`combine_tallies` adds up into the scores of the whole scan, as if it had been one piece (up to
the slabs' resampling grids).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import torch

from pipeline.core.config import QCConfig

__all__ = ["QC_COLUMNS", "REASONS", "combine_tallies", "ensemble_scores", "qc_tally", "review"]

QC_COLUMNS = ("qc_fold_dice", "qc_volume_cv", "qc_entropy", "qc_score", "review", "review_reasons")
REASONS = ("empty", "tiny volume", "touches border", "folds disagree", "uncertain", "not CT-like")


def ensemble_scores(probs: torch.Tensor, fold_fg: torch.Tensor | None, voxel_ml: float = 1.0) -> dict:
    """The QC scores of one case from its canonical-grid outputs.

    Args:
        probs: (C, X, Y, Z) averaged class probabilities (C >= 2, class 0 background).
        fold_fg: (N, X, Y, Z) each network's foreground probability (1 - background), or None.
        voxel_ml: the canonical voxel volume in mL (scales the folds' volumes; the CV is unitless).

    Returns:
        ``{"qc_fold_dice", "qc_volume_cv", "qc_entropy", "qc_score", "fold_volumes_ml"}``.
    """
    probs = torch.as_tensor(probs)
    folds = _fold_masks(fold_fg)
    box = _box(_union(probs, folds))  # the rest works inside the union's bounding box: a pancreas is small
    inside = None if fold_fg is None else torch.as_tensor(fold_fg)[(slice(None), *box)]
    return combine_tallies([qc_tally(probs[(slice(None), *box)], inside)], voxel_ml)


def _fold_masks(fold_fg: torch.Tensor | None) -> torch.Tensor | None:
    """Each fold's foreground mask (N, X, Y, Z), or None with fewer than two folds."""
    return torch.as_tensor(fold_fg) > 0.5 if fold_fg is not None and fold_fg.shape[0] >= 2 else None


def _union(probs: torch.Tensor, folds: torch.Tensor | None) -> torch.Tensor:
    """The voxels QC scores: the union of the folds' masks, else the averaged prediction's foreground."""
    if folds is not None:
        return folds.any(0)
    return probs[0] < 0.5 if probs.shape[0] == 2 else probs.argmax(0) > 0


def qc_tally(probs: torch.Tensor, fold_fg: torch.Tensor | None) -> dict:
    """The sums behind :func:`ensemble_scores` for one piece of a scan (a z-slab's core).

    Args:
        probs: (C, X, Y, Z) averaged class probabilities (C >= 2, class 0 background).
        fold_fg: (N, X, Y, Z) each network's foreground probability, or None.

    Returns:
        ``{"classes", "union", "entropy_sum", "sizes", "overlaps"}``: the union's voxels and their
        summed normalised entropy, each fold's foreground voxels and each pair's common voxels
        (pairs in ``itertools.combinations`` order; empty lists with fewer than two folds).
    """
    probs = torch.as_tensor(probs)
    folds = _fold_masks(fold_fg)
    union = _union(probs, folds)
    out = {"classes": int(probs.shape[0]), "union": int(union.sum()), "entropy_sum": 0.0}
    if out["union"]:
        p = probs[:, union].double().clamp_min(1e-12)
        out["entropy_sum"] = float((-(p * p.log()).sum(0) / math.log(probs.shape[0])).sum())
    flat = None if folds is None else folds.reshape(folds.shape[0], -1)
    out["sizes"] = [] if flat is None else [int(v) for v in flat.sum(1)]
    pairs = [] if flat is None else combinations(range(flat.shape[0]), 2)
    out["overlaps"] = [int((flat[i] & flat[j]).sum()) for i, j in pairs]
    return out


def combine_tallies(tallies: Sequence[dict], voxel_ml: float = 1.0) -> dict:
    """:func:`ensemble_scores` of a scan from the :func:`qc_tally` of its disjoint pieces: entropy
    summed over the union's voxels, fold Dice from summed pair overlaps and sizes, volume CV from
    summed sizes."""
    union = sum(t["union"] for t in tallies)
    out = {"qc_fold_dice": math.nan, "qc_volume_cv": math.nan, "fold_volumes_ml": []}
    out["qc_entropy"] = sum(t["entropy_sum"] for t in tallies) / union if union else 0.0
    if tallies and tallies[0]["sizes"]:
        sizes = np.sum([t["sizes"] for t in tallies], axis=0).astype(np.float64)
        overlaps = np.sum([t["overlaps"] for t in tallies], axis=0)
        dices = []
        for (i, j), common in zip(combinations(range(len(sizes)), 2), overlaps):
            total = float(sizes[i] + sizes[j])
            dices.append(1.0 if total == 0 else 2.0 * float(common) / total)
        out["qc_fold_dice"] = float(np.mean(dices))
        mean = float(sizes.mean())
        out["qc_volume_cv"] = float(sizes.std()) / mean if mean > 0 else 0.0
        out["fold_volumes_ml"] = [float(s) * voxel_ml for s in sizes]
    out["qc_score"] = out["qc_entropy"]
    return out


def _box(mask: torch.Tensor) -> tuple[slice, ...]:
    """The bounding box of ``mask``'s true voxels (empty slices when there are none)."""
    out = []
    for axis in range(mask.ndim):
        hit = torch.nonzero(mask.any(dim=tuple(a for a in range(mask.ndim) if a != axis))).flatten()
        out.append(slice(int(hit[0]), int(hit[-1]) + 1) if len(hit) else slice(0, 0))
    return tuple(out)


def review(rows: Sequence[dict], scores: dict, qc: QCConfig, ct_like: bool = True) -> tuple[str, str]:
    """``("ok" | "review", "reason; reason")`` for one case.

    Args:
        rows: the case's statistics rows (one per class; :data:`pipeline.data.statistics.STAT_COLUMNS`).
        scores: :func:`ensemble_scores` (may be empty: only the statistics' reasons apply).
        qc: the thresholds.
        ct_like: False when the scan did not look like CT in HU.
    """
    reasons = []
    volume = sum(float(r["volume_ml"]) for r in rows)
    if not any(int(r["voxels"]) for r in rows):
        reasons.append("empty")
    elif volume < qc.min_volume_ml:
        reasons.append("tiny volume")
    if any(bool(r["touches_border"]) for r in rows):
        reasons.append("touches border")
    fold_dice = scores.get("qc_fold_dice", math.nan)
    volume_cv = scores.get("qc_volume_cv", math.nan)
    if (not math.isnan(fold_dice) and fold_dice < qc.min_fold_dice) or (
        not math.isnan(volume_cv) and volume_cv > qc.max_volume_cv
    ):
        reasons.append("folds disagree")
    if scores.get("qc_entropy", 0.0) > qc.max_entropy:
        reasons.append("uncertain")
    if not ct_like:
        reasons.append("not CT-like")
    return ("review" if reasons else "ok"), "; ".join(reasons)
