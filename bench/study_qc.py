"""How well the QC scores predict Dice, on a small CPU-sized cross-validation of synthetic phantoms.

Trains a short CV (held-out cases: one fold model each, QC score = entropy), then segments fresh
phantoms with the folds' ensemble (QC: fold Dice, volume CV, entropy) and evaluates them. Prints
Spearman's rho of each QC score against Dice, how many of the worst three cases by Dice the review
flag catches, the added seconds of statistics + QC per scan, and writes both reports.

    PYTHONPATH=. python bench/study_qc.py --out /tmp/study --n 12 --test 8 --epochs 8
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from pipeline.core.config import load_config
from pipeline.core.layout import OutputLayout, RunLayout
from pipeline.data.manifest import assign_folds, case_records, read_manifest, write_manifest
from pipeline.evaluation.volumes import evaluate_with_volumes, volume_agreement
from pipeline.inference.batch import predict_cases
from pipeline.inference.loading import load_predictor
from pipeline.inference.writers import output_path
from pipeline.report.report import write_report
from pipeline.report.study import qc_spearman
from pipeline.synthetic.phantom import write_phantoms
from pipeline.workflows.cv import run_cv


def _phantoms(folder: Path, n: int, seed: int, shape, folds: int = 0) -> Path:
    cases = write_phantoms(folder, n=n, seed=seed, shape=shape)
    df = pd.DataFrame([{k: c[k] for k in ("case_id", "subject_id", "image", "label")} for c in cases])
    df = assign_folds(df, folds, seed=seed) if folds else df
    return write_manifest(df, folder / "manifest.csv", root=folder)


def _caught(metrics: pd.DataFrame, stats: pd.DataFrame) -> str:
    flag = stats.groupby("case_id")["review"].first()
    worst = metrics.nsmallest(3, "dice")
    hits = [c for c in worst["case_id"] if flag.get(c) == "review"]
    return f"{len(hits)} of 3 (worst: {', '.join(f'{c} {d:.3f}' for c, d in zip(worst['case_id'], worst['dice']))})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/study_qc")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--test", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--shape", default="64,64,40")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shape = tuple(int(v) for v in args.shape.split(","))
    cfg = load_config(
        "demo",
        [
            "data.target_spacing=[3.0,3.0,3.0]",
            "data.patch_size=[32,32,32]",
            "model.channels=[4,8,16,32,64]",
            f"train.epochs={args.epochs}",
            "train.val_interval=2",
            "train.checkpoint_interval=2",
            *args.overrides,
        ],
    )
    out = Path(args.out)
    manifest = _phantoms(out / "data", args.n, 0, shape, cfg.train.num_folds)
    run = out / "cv"
    run_cv(cfg, manifest, run)
    layout = RunLayout(run)
    cv_metrics = pd.read_csv(layout.cv_metrics, dtype={"case_id": str})
    cv_stats = pd.concat(
        [pd.read_csv(OutputLayout(f.predictions).statistics, dtype={"case_id": str}) for f in layout.folds()]
    )
    rho, n = qc_spearman(cv_metrics, cv_stats)
    print(f"CV held-out ({n} cases, one fold model each): Spearman rho(qc_score=entropy, Dice) = {rho:.3f}")
    print(f"  review flag catches {_caught(cv_metrics, cv_stats)}")
    print(f"  volume agreement: {volume_agreement(cv_metrics)}")

    test = _phantoms(out / "test", args.test, 100, shape)
    records = case_records(read_manifest(test))
    pred_dir = out / "infer"
    predict_cases(load_predictor(run, []), records, pred_dir, overwrite=True)
    pairs = [{**r, "pred": output_path(pred_dir, r["case_id"], r["image"])} for r in records]
    metrics, _ = evaluate_with_volumes(pairs)
    stats = pd.read_csv(OutputLayout(pred_dir).statistics, dtype={"case_id": str})
    print(f"Ensemble of {cfg.train.num_folds} folds on {len(records)} new phantoms:")
    for score in ("qc_fold_dice", "qc_volume_cv", "qc_score"):
        r, n = qc_spearman(metrics, stats, score)
        print(f"  Spearman rho({score}, Dice) = {r:.3f} over {n} cases")
    print(f"  review flag catches {_caught(metrics, stats)}")
    cols = ["case_id", "volume_ml", "qc_fold_dice", "qc_volume_cv", "qc_score", "review", "review_reasons"]
    print(
        stats[cols].merge(metrics[["case_id", "dice", "ref_volume_ml"]], on="case_id").to_string(index=False)
    )
    t = pd.read_csv(OutputLayout(pred_dir).timings)
    share = (t["statistics_s"] / t["total_s"]).mean()
    print(
        f"  statistics + QC: {t['statistics_s'].mean():.3f} s per scan, {100 * share:.1f} % of total_s (mean)"
    )
    print("reports:", write_report(run), write_report(pred_dir, manifest=test))


if __name__ == "__main__":
    main()
