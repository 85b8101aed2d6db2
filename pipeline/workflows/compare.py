"""``pancreas-seg compare``: the paper's ablation, Attention U-Net against the plain U-Net.

Both networks are cross-validated with the same manifest, folds, seeds and schedule (the one
config, with only ``model.name`` changed) into ``OUT/attention_unet`` and ``OUT/unet``; each is an
ordinary CV run folder, so a killed comparison resumes (finished folds are skipped) and
``pancreas-seg report OUT/unet`` works on it. Then ``OUT/compare.csv`` and ``OUT/compare.md`` hold
one row per network and class: Dice, precision, recall, average symmetric surface distance and HD95
as mean ± std over the held-out cases with the mean's 95 % bootstrap interval (subjects resampled,
``eval.*``), the parameter count and the inference time per scan, followed for each class by the
paired per-case Dice difference (matched by case_id) with its bootstrap interval and a Wilcoxon
signed-rank test.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from models import build_model, count_parameters
from pipeline.core import distributed as dist
from pipeline.core.config import Config
from pipeline.core.errors import ManifestError
from pipeline.core.fileio import atomic_write_text
from pipeline.core.layout import RunLayout
from pipeline.data.manifest import read_manifest
from pipeline.evaluation.bootstrap import mean_ci
from pipeline.evaluation.evaluate import join_fold_timings, read_fold_metrics
from pipeline.evaluation.summary import DEFAULT_CLASS, class_rows, fmt_ci, stats
from pipeline.workflows.cv import run_cv

__all__ = ["NETWORKS", "COMPARE_METRICS", "run_compare", "compare_runs", "paired_test", "format_markdown"]

NETWORKS = ("attention_unet", "unet")
# The paper's columns, in its order: a selection of pipeline.evaluation.evaluate.METRICS (no IoU).
COMPARE_METRICS = ("dice", "precision", "recall", "assd_mm", "hd95_mm")
MIN_PAIRS = 6  # below this the exact two-sided signed-rank test cannot reach p < 0.05


def run_compare(
    cfg: Config, manifest: str | os.PathLike, out: str | os.PathLike, folds: Sequence[int] | None = None
) -> str:
    """Cross-validate both networks (resuming finished folds) and write the comparison.

    Args:
        cfg: the shared config; ``model.name`` is set to each network in turn.
        manifest: manifest CSV with labels and folds.
        out: output folder (``OUT/attention_unet``, ``OUT/unet``, ``OUT/compare.{csv,md}``).
        folds: folds to run (default: all folds of the manifest); the table uses these folds only.

    Returns:
        The comparison as Markdown text (what ``compare.md`` holds).

    Raises:
        ManifestError, ConfigError, ImageError: as :func:`pipeline.workflows.cv.run_cv`.
    """
    out = Path(out)
    if folds is None:
        df = read_manifest(manifest, require_labels=True)
        folds = sorted({int(f) for f in df["fold"].dropna() if int(f) >= 0})
    for name in NETWORKS:
        net_cfg = copy.deepcopy(cfg)
        net_cfg.model.name = name
        run_cv(net_cfg, manifest, out / name, list(folds) or None)
    table, test = compare_runs({name: out / name for name in NETWORKS}, folds, cfg)
    text = format_markdown(table, test, cfg, folds)
    if dist.is_main():  # under torchrun rank 0 writes
        atomic_write_text(out / "compare.csv", table.to_csv(index=False, float_format="%.6g"))
        atomic_write_text(out / "compare.md", text)
    return text


def _fold_tables(run: Path, folds: Sequence[int] | None, name: str) -> pd.DataFrame:
    """The per-case metrics of ``folds`` (each must be finished) with their inference seconds."""
    layout = RunLayout(run)
    df = read_fold_metrics(layout, folds, strict=True)
    if df.empty:
        raise ManifestError(f"{run}: no finished folds for {name}")
    df = join_fold_timings(df, layout)
    if "infer_s" not in df:
        df["infer_s"] = np.nan
    return df


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two-sided Wilcoxon signed-rank test of ``a - b`` (paired), never raising.

    Returns:
        ``n`` (pairs), ``n_nonzero``, ``mean_diff``, ``median_diff``, ``wins`` (a > b),
        ``losses``, ``statistic`` and ``p`` (NaN when not computable) and ``note`` (why, or a
        caution for few pairs; empty when the test is meaningful).
    """
    from scipy.stats import wilcoxon

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    out = {
        "n": int(d.size),
        "n_nonzero": int(np.count_nonzero(d)),
        "mean_diff": float(d.mean()) if d.size else math.nan,
        "median_diff": float(np.median(d)) if d.size else math.nan,
        "wins": int((d > 0).sum()),
        "losses": int((d < 0).sum()),
        "statistic": math.nan,
        "p": math.nan,
        "note": "",
    }
    if d.size == 0:
        out["note"] = "no paired cases: the two runs share no held-out case"
        return out
    if out["n_nonzero"] == 0:
        out["note"] = f"all {d.size} paired differences are zero: nothing to test (p = 1 by convention)"
        out["p"] = 1.0
        return out
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        out["statistic"], out["p"] = float(res.statistic), float(res.pvalue)
    except ValueError as exc:  # scipy refuses some degenerate inputs
        out["note"] = f"test not computable ({exc})"
        return out
    if out["n_nonzero"] < MIN_PAIRS:
        out["note"] = (
            f"only {out['n_nonzero']} non-zero paired differences (< {MIN_PAIRS}): the exact test cannot reach "
            "p < 0.05; indicative only"
        )
    return out


def _subjects(df: pd.DataFrame) -> pd.Series:
    """Each case's subject (its case when the table predates subject_id), by case_id."""
    subj = df["subject_id"].astype(str) if "subject_id" in df else df["case_id"].astype(str)
    subj = subj.where(~subj.isin(["", "nan", "None"]), df["case_id"].astype(str))
    return pd.Series(subj.to_numpy(), index=df["case_id"].astype(str).to_numpy())


def compare_runs(
    runs: dict[str, Path], folds: Sequence[int] | None, cfg: Config
) -> tuple[pd.DataFrame, dict]:
    """The comparison table (one row per network and class) and the paired tests on per-case Dice.

    Args:
        runs: ``{model name: CV run folder}``; the first two are paired (first minus second).
        folds: the folds to use (default: every finished fold).
        cfg: the shared config, for the parameter counts and the bootstrap settings (``eval``).

    Returns:
        ``(table, test)``: ``test`` is the first class's paired test (``a``, ``b``, ``metric``, the
        keys of :func:`paired_test`, ``ci_low``/``ci_high`` of the mean difference) with every
        class's under ``per_class``.
    """
    tables = {name: _fold_tables(Path(run), folds, name) for name, run in runs.items()}
    common = set.intersection(*(set(t["case_id"]) for t in tables.values()))
    e = cfg.eval
    rows, params = [], {}
    for name in tables:
        net_cfg = copy.deepcopy(cfg)
        net_cfg.model.name = name
        params[name] = count_parameters(build_model(net_cfg.model))
    per_network = {name: class_rows(df[df["case_id"].isin(common)]) for name, df in tables.items()}
    classes = list(dict.fromkeys(c for by_class in per_network.values() for c in by_class))
    for cls in classes:
        for name, by_class in per_network.items():
            df = by_class.get(cls, pd.DataFrame(columns=tables[name].columns))
            row = {"network": name, "class": cls, "cases": len(df)}
            summary = stats(df, e, COMPARE_METRICS)
            for m in COMPARE_METRICS:
                got = summary.get(m, {})
                row[f"{m}_mean"] = got.get("mean", math.nan)
                row[f"{m}_std"] = got.get("std", math.nan)  # ddof=0, as cv_summary.json
                row[f"{m}_ci_low"] = got.get("ci_low", math.nan)
                row[f"{m}_ci_high"] = got.get("ci_high", math.nan)
            row["parameters"] = params[name]
            row["infer_s_per_scan"] = float(df["infer_s"].mean()) if len(df) else math.nan
            rows.append(row)
    first, second = list(tables)[:2]
    tests = {}
    for cls in classes:
        a_df, b_df = (per_network[n].get(cls) for n in (first, second))
        if a_df is None or b_df is None:
            continue
        ids = sorted(set(a_df["case_id"]) & set(b_df["case_id"]))
        a = a_df.set_index("case_id").loc[ids, "dice"].to_numpy(dtype=float)
        b = b_df.set_index("case_id").loc[ids, "dice"].to_numpy(dtype=float)
        low, high = mean_ci(
            a - b, _subjects(a_df).loc[ids].to_numpy(), e.bootstrap_resamples, e.bootstrap_seed, e.ci_level
        )
        tests[cls] = {
            "a": first,
            "b": second,
            "metric": "dice",
            **paired_test(a, b),
            "ci_low": low,
            "ci_high": high,
        }
    head = tests.get(DEFAULT_CLASS) or next(iter(tests.values()))
    return pd.DataFrame(rows), {**head, "level": float(e.ci_level), "per_class": tests}


def format_markdown(table: pd.DataFrame, test: dict, cfg: Config, folds: Sequence[int] | None) -> str:
    """The table as Markdown, the paired test in words, and what was run."""
    head = [
        "network",
        "cases",
        "Dice",
        "precision",
        "recall",
        "ASSD (mm)",
        "HD95 (mm)",
        "parameters",
        "inference s/scan",
    ]
    many = table["class"].nunique() > 1 if "class" in table else False
    head = head[:1] + ["class"] + head[1:] if many else head
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.to_dict("records"):
        cells = [r["network"], *([r["class"]] if many else []), str(r["cases"])]
        for m in COMPARE_METRICS:
            digits = 3 if not m.endswith("_mm") else 2
            entry = {"mean": r[m + "_mean"], "ci_low": r.get(m + "_ci_low"), "ci_high": r.get(m + "_ci_high")}
            cells.append(f"{fmt_ci(entry, digits)} ± {r[m + '_std']:.{digits}f}")
        cells += [
            f"{int(r['parameters']):,}",
            f"{r['infer_s_per_scan']:.3f}" if np.isfinite(r["infer_s_per_scan"]) else "n/a",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    level = test.get("level", 0.95)
    for cls, t in (test.get("per_class") or {"": test}).items():
        p = t["p"]
        p_text = "not computed" if not np.isfinite(p) else f"p = {p:.4g}"
        lo, hi = t.get("ci_low", math.nan), t.get("ci_high", math.nan)
        ci_text = f" [{level:.0%} CI {lo:+.4f}, {hi:+.4f}]" if np.isfinite(lo) and np.isfinite(hi) else ""
        lines.append(
            f"Paired difference, per-case Dice{' of ' + cls if cls else ''}, {t['a']} − {t['b']} over {t['n']} cases: "
            f"mean {t['mean_diff']:+.4f}{ci_text}, median {t['median_diff']:+.4f}, "
            f"{t['a']} better in {t['wins']}, worse in {t['losses']}; Wilcoxon signed-rank {p_text} (two-sided)."
        )
        if t["note"]:
            lines.append(f"Note: {t['note']}.")
    t = cfg.train
    lines += [
        "",
        f"Folds {', '.join(str(k) for k in folds) if folds else 'all'}; the same manifest, folds, seed ({t.seed}) and "
        f"schedule for both ({t.epochs} epochs, {t.optimizer} lr {t.lr:g}, {t.lr_schedule} schedule, batch {t.batch_size}); "
        f"patch {cfg.data.patch_size}, spacing {cfg.data.target_spacing} mm, channels {cfg.model.channels}. "
        f"Mean [{level:.0%} bootstrap interval of the mean: {cfg.eval.bootstrap_resamples} resamples of subjects, "
        f"seed {cfg.eval.bootstrap_seed}] ± std over held-out cases (std with ddof=0, as cv_summary.json); "
        "inference time is the mean of "
        "total_s in the folds' predictions/timings.csv (load, preprocess, sliding window, invert, save).",
        "",
        "Paper (Oktay et al. 2018, CT-150, 120 train / 30 test): U-Net Dice 0.814 ± 0.116, surface distance "
        "2.358 ± 1.464 mm, 5.88M parameters; Attention U-Net 0.840 ± 0.087, 1.920 ± 1.284 mm, 6.40M.",
        "",
    ]
    return "\n".join(lines)
