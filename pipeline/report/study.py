"""The report's study sections: volume agreement (Bland-Altman), QC against Dice, review list, follow-up.

* CV runs: a Bland-Altman plot of predicted vs reference volume (bias and 95 % limits of agreement,
  from the ``volume_error_ml`` the folds' ``metrics.csv`` carry), and how well the QC score predicts
  the real Dice: Spearman's rho between each held-out case's ``qc_score`` (mean voxel entropy of the
  fold model's probabilities inside its mask, from ``fold_k/predictions/statistics.csv``) and its Dice.
* Inference folders: the cases from ``statistics.csv``, the ones to review first (then by QC score,
  least certain first), which also orders the overlays; and with ``longitudinal.csv`` one small
  volume-over-time plot per subject.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from pipeline.core.fileio import atomic_write
from pipeline.core.layout import OutputLayout, RunLayout, report_link
from pipeline.evaluation.volumes import volume_agreement
from pipeline.report.page import figure, fmt, section, table

__all__ = ["bland_altman_png", "followup_png", "qc_spearman", "cv_study_sections", "infer_study_sections"]

_REVIEW_COLUMNS = ["case_id", "label", "volume_ml", "hu_mean", "touches_border", "qc_fold_dice", "qc_volume_cv",
                   "qc_score", "review", "review_reasons"]  # fmt: skip


def bland_altman_png(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Difference (predicted - reference, mL) against the mean of both, with bias and 95 % limits."""
    from matplotlib.figure import Figure

    t = table.dropna(subset=["volume_ml", "ref_volume_ml"])
    a = volume_agreement(t)
    mean = (t["volume_ml"] + t["ref_volume_ml"]) / 2
    diff = t["volume_ml"] - t["ref_volume_ml"]
    fig = Figure(figsize=(5.5, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(mean, diff, s=18)
    for y, style, name in ((a["bias_ml"], "-", "bias"), (a["loa_low_ml"], "--", "-1.96 SD"),
                           (a["loa_high_ml"], "--", "+1.96 SD")):  # fmt: skip
        if not math.isnan(y):
            ax.axhline(y, color="k", ls=style, lw=1)
            ax.annotate(f"{name} {y:.1f}", (1.0, y), xycoords=("axes fraction", "data"), ha="right",
                        va="bottom", fontsize=8)  # fmt: skip
    ax.set_xlabel("mean of predicted and reference volume (mL)")
    ax.set_ylabel("predicted - reference (mL)")
    ax.set_title("volume agreement (Bland-Altman)")
    ax.grid(alpha=0.3)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def followup_png(rows: pd.DataFrame, subject: str, path: str | os.PathLike) -> Path:
    """One subject's volume per date (one line per class), changes within measurement error hollow."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2, 2.4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for label, g in rows.groupby("label"):
        dates = pd.to_datetime(g["acquired"])
        ax.plot(dates, g["volume_ml"], marker="o", label=str(label))
        within = g["within_measurement_error"].astype(str).str.lower() == "true"
        ax.scatter(dates[within], g["volume_ml"][within], s=60, facecolors="white", edgecolors="k", zorder=3)
    ax.set_title(subject, fontsize=9)
    ax.set_ylabel("volume (mL)", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.autofmt_xdate()
    ax.grid(alpha=0.3)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def qc_spearman(
    metrics: pd.DataFrame, statistics: pd.DataFrame, score: str = "qc_score"
) -> tuple[float, int]:
    """Spearman's rho between a QC column of ``statistics`` (one value per case) and ``metrics``' Dice.

    Returns:
        (rho, number of cases); rho is NaN with fewer than 3 cases or a constant column.
    """
    from scipy.stats import spearmanr

    if score not in statistics or "dice" not in metrics:
        return math.nan, 0
    per_case = statistics.groupby(statistics["case_id"].astype(str))[score].first()
    joined = metrics.assign(case_id=metrics["case_id"].astype(str)).join(per_case, on="case_id")
    joined = joined.dropna(subset=[score, "dice"])
    if len(joined) < 3 or joined[score].nunique() < 2 or joined["dice"].nunique() < 2:
        return math.nan, int(len(joined))
    return float(spearmanr(joined[score], joined["dice"]).statistic), int(len(joined))


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"case_id": str}) if path.exists() else pd.DataFrame()


def cv_study_sections(run: str | os.PathLike, metrics: pd.DataFrame, files: Path) -> list[str]:
    """The volume-agreement and QC-vs-Dice sections of a CV report (empty when nothing to show)."""
    out = []
    if {"volume_ml", "ref_volume_ml"} <= set(metrics.columns) and metrics["ref_volume_ml"].notna().any():
        a = volume_agreement(metrics)
        bland_altman_png(metrics, files / "bland_altman.png")
        text = (
            f'<p class="meta">{a["n"]} held-out cases. Predicted - reference volume: bias {fmt(a["bias_ml"], 2)} mL '
            f"({fmt(a['bias_pct'], 1)} %), 95 % limits of agreement {fmt(a['loa_low_ml'], 2)} to "
            f"{fmt(a['loa_high_ml'], 2)} mL ({fmt(a['loa_low_pct'], 1)} to {fmt(a['loa_high_pct'], 1)} %). "
            f"Least significant change between two scans: {fmt(a['least_significant_change_pct'], 1)} %.</p>"
        )
        out.append(section("Volume agreement", "volumes", text, figure(report_link("bland_altman.png"))))
    stats = [_read(OutputLayout(f.predictions).statistics) for f in RunLayout(run).folds()]
    stats = pd.concat([s for s in stats if len(s)], ignore_index=True) if any(len(s) for s in stats) else None
    if stats is not None:
        rho, n = qc_spearman(metrics, stats)
        flagged = stats.groupby("case_id")["review"].first() if "review" in stats else pd.Series(dtype=str)
        worst = metrics.nsmallest(3, "dice")["case_id"].astype(str)
        caught = sum(flagged.get(c, "") == "review" for c in worst)
        text = (
            f'<p class="meta">Spearman ρ between the QC score (mean voxel entropy of the fold model\'s '
            f"probabilities inside its mask; higher = less certain) and Dice over {n} held-out cases: "
            f"<b>{fmt(rho, 3)}</b> (negative: the score rises as Dice falls). Review flag on "
            f"{caught} of the {len(worst)} worst cases by Dice. A CV has one model per case, so the "
            "fold-agreement scores of an ensemble (qc_fold_dice, qc_volume_cv) are not available here.</p>"
        )
        out.append(section("QC score against Dice", "qc", text))
    return out


def infer_study_sections(
    run: str | os.PathLike, files: Path, order: list[str], anchor=lambda c: c
) -> tuple[list[str], list[str]]:
    """The review and follow-up sections of an inference report, and ``order`` worst first.

    Args:
        run: the inference output folder.
        files: the report's figure folder.
        order: the case ids with masks, as the report would show them.
        anchor: a case's anchor in the page (its overlays).

    Returns:
        (the sections, the case ids with those to review first, then by QC score descending, then the rest).
    """
    layout = OutputLayout(run)
    stats = _read(layout.statistics)
    out = []
    if len(stats):
        stats = stats.assign(_r=(stats["review"] != "review").astype(int))
        stats = stats.sort_values(["_r", "qc_score", "case_id"], ascending=[True, False, True], kind="stable")
        ranked = list(dict.fromkeys(stats["case_id"]))
        order = [c for c in ranked if c in order] + [c for c in order if c not in ranked]
        n_review = int(stats.groupby("case_id")["review"].first().eq("review").sum())
        links = {c: "#" + anchor(c) for c in ranked if c in order}
        shown = stats[[c for c in _REVIEW_COLUMNS if c in stats]]
        note = f'<p class="meta">{n_review} of {len(ranked)} cases to review; worst first (overlays below in this order).</p>'
        out.append(
            section("Measurements and review list", "statistics", note, table(shown, True, "stats", links))
        )
    long = _read(layout.longitudinal)
    if len(long):
        figs = []
        for i, (subject, rows) in enumerate(long.groupby("subject_id", sort=True)):
            name = f"followup_{i:03d}.png"
            followup_png(rows, str(subject), files / name)
            figs.append(figure(report_link(name), alt=f"follow-up of {subject}", width=320))
        shown = long.drop(columns=[c for c in ("timepoint",) if c in long and long[c].isna().all()])
        out.append(section("Follow-up per subject", "followup", *figs, table(shown, True, "followup")))
    return out, order
