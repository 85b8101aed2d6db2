"""k-fold cross-validation: train each fold, predict its held-out cases on their original grids, evaluate.

Run folder (the contract in DESIGN.md)::

    <run>/config.yaml                 resolved config + versions + git commit
    <run>/manifest.csv                the cases of the run (absolute paths)
    <run>/fold_<k>/checkpoints/       see pipeline.train
    <run>/fold_<k>/log.csv
    <run>/fold_<k>/predictions/       held-out masks on each scan's own grid and format
    <run>/fold_<k>/metrics.csv        per-case metrics of the fold
    <run>/fold_<k>/DONE               the fold is complete; a re-run skips it
    <run>/cv_metrics.csv              all cases
    <run>/cv_summary.json             mean/std/median per metric, per fold and overall

A killed ``cv`` re-run with the same arguments skips folds with ``DONE`` and resumes the fold in
progress from its newest checkpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from pipeline.config import Config, config_to_dict, save_run_config
from pipeline.errors import ConfigError, ManifestError

__all__ = ["prepare_run_dir", "run_fold", "aggregate", "run_cv"]

log = logging.getLogger("pancreas_seg")
# Sections that change what a fold computes; a run folder must not mix two of them.
_PINNED = ("data", "model", "train")
# ... except settings that only change where logs go, how data is fed, or how long to train.
_UNPINNED = {"mlflow", "mlflow_uri", "epochs", "early_stopping_patience", "num_workers", "cache", "cache_dir"}


def prepare_run_dir(cfg: Config, run_dir: str | os.PathLike) -> Path:
    """Create the run folder with ``config.yaml``, or check that an existing one used the same settings.

    Raises:
        ConfigError: the folder holds a run made with other data/model/train settings.
    """
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if saved.exists():
        try:
            old = yaml.safe_load(saved.read_text()) or {}
        except yaml.YAMLError:
            old = {}
        new = config_to_dict(cfg)
        diff = [
            f"{s}.{k}"
            for s in _PINNED
            for k in new[s]
            if s in old and k in old[s] and old[s][k] != new[s][k] and k not in _UNPINNED
        ]
        if diff:
            raise ConfigError(
                f"{saved}: this run folder was made with other settings ({', '.join(diff[:6])}); "
                "use a new --out or the same config to resume"
            )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_run_config(cfg, run_dir)
    return run_dir


def run_fold(cfg: Config, records: list[dict], fold: int, run_dir: Path) -> pd.DataFrame:
    """Train fold ``fold``, predict its held-out cases with the best checkpoint, evaluate, mark DONE."""
    from pipeline.checkpoint import load_network
    from pipeline.evaluate import evaluate_cases, write_table
    from pipeline.infer import Predictor, predict_cases
    from pipeline.train import split_records, train_fold
    from pipeline.writers import output_path

    fold_dir = run_dir / f"fold_{fold}"
    _, val = split_records(records, fold)
    result = train_fold(cfg, records, fold, fold_dir)
    net, _, _ = load_network(result["best"], expect=cfg.model)
    pred_dir = fold_dir / "predictions"
    outcome = predict_cases(Predictor([net], cfg), val, pred_dir)
    if outcome["failed"]:
        first = next(iter(outcome["failed"].items()))
        raise ManifestError(
            f"fold {fold}: prediction failed for {len(outcome['failed'])} case(s), e.g. {first[0]}: {first[1]}"
        )
    pairs = [
        {
            "case_id": r["case_id"],
            "pred": output_path(pred_dir, r["case_id"], r["image"]),
            "label": r["label"],
            "fold": fold,
            "label_map": r.get("label_map", ""),
        }
        for r in val
    ]
    table = evaluate_cases(pairs)
    write_table(table, fold_dir / "metrics.csv")
    (fold_dir / "DONE").write_text(f"best_val_dice={result['best_val_dice']:.6f} epochs={result['epochs']}\n")
    log.info("fold %d done: mean Dice %.4f over %d cases", fold, table["dice"].mean(), len(table))
    return table


def aggregate(run_dir: str | os.PathLike) -> dict:
    """Collect every finished fold's metrics into ``cv_metrics.csv`` and ``cv_summary.json``."""
    from pipeline.evaluate import summarize, write_summary, write_table

    run_dir = Path(run_dir)
    tables = [
        pd.read_csv(d / "metrics.csv", keep_default_na=False, na_values=[""])
        for d in sorted(run_dir.glob("fold_*"))
        if (d / "DONE").exists() and (d / "metrics.csv").exists()
    ]
    if not tables:
        raise ManifestError(f"{run_dir}: no finished folds to aggregate")
    df = pd.concat(tables, ignore_index=True)
    df["flag"] = df["flag"].fillna("")
    write_table(df, run_dir / "cv_metrics.csv")
    summary = summarize(df)
    write_summary(summary, run_dir / "cv_summary.json")
    return summary


def run_cv(
    cfg: Config, manifest: str | os.PathLike, run_dir: str | os.PathLike, folds: Sequence[int] | None = None
) -> dict:
    """Run (or resume) cross-validation over ``folds`` (default: every fold in the manifest)."""
    from pipeline.manifest import case_records, read_manifest, write_manifest

    df = read_manifest(manifest, require_labels=True)
    records = case_records(df)
    present = sorted({int(r["fold"]) for r in records if int(r["fold"]) >= 0})
    if not present:
        raise ManifestError(f"{manifest}: no folds assigned; run 'pancreas-seg folds {manifest}' first")
    todo = list(folds) if folds else present
    unknown = [k for k in todo if k not in present]
    if unknown:
        raise ManifestError(f"{manifest}: fold(s) {unknown} have no cases (folds present: {present})")
    run_dir = prepare_run_dir(cfg, run_dir)
    write_manifest(df, run_dir / "manifest.csv")  # the cases this run used (absolute paths), for reports
    for k in todo:
        if (run_dir / f"fold_{k}" / "DONE").exists():
            log.info("fold %d: already done, skipping", k)
            continue
        log.info("fold %d of %s: training", k, present)
        run_fold(cfg, records, k, run_dir)
    summary = aggregate(run_dir)
    log.info(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    """A small text table: Dice/HD95/ASSD mean ± std per fold and overall."""
    lines = [f"{'fold':>7} {'Dice':>15} {'HD95 mm':>15} {'ASSD mm':>15}"]

    def row(name: str, s: dict) -> str:
        cells = [f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f}" for m in ("dice", "hd95_mm", "assd_mm")]
        return f"{name:>7} " + " ".join(f"{c:>15}" for c in cells)

    for k, s in summary["per_fold"].items():
        lines.append(row(k, s))
    lines.append(row("all", summary["foreground_mean"]))
    return "\n".join(lines)
