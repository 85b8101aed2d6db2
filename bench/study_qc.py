"""How well the QC scores predict Dice, on a cross-validation of synthetic phantoms.

Either trains a short CPU-sized CV, or reuses a finished one (``--cv DIR``, e.g. the demo's
``runs/demo/cv``; nothing is written into it). Its held-out cases (one fold model each, QC score =
entropy) are one test set; the other is ``--test`` fresh phantoms (seed ``--test-seed``, never a CV
case) segmented with the folds' ensemble (QC: fold Dice, volume CV, entropy) and evaluated. For both
it prints Spearman's rho of each QC score against Dice, how many of the worst three cases by Dice the
review flag catches and how many of N it flags, the references' own border flags (a mask that
touches the border because the organ is cut there is right to), the added seconds of statistics + QC
per scan, and writes the inference report (and, when it trained, the CV report). The review flag is
recomputed from ``statistics.csv`` with the thresholds of ``--set qc.*=`` (and ``--sweep`` prints a
small grid of them), so thresholds can be tuned without running the networks again.

    PYTHONPATH=. python bench/study_qc.py --out /tmp/study --n 12 --test 8 --epochs 8
    PYTHONPATH=. python bench/study_qc.py --out /tmp/study --cv runs/demo/cv --test 10 --test-seed 8
"""

from __future__ import annotations

import argparse
import itertools
import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd

from pipeline.core.config import QCConfig, load_config
from pipeline.core.layout import OutputLayout, RunLayout, manifest_in
from pipeline.data.manifest import assign_folds, case_records, read_manifest, write_manifest
from pipeline.evaluation.evaluate import read_fold_metrics
from pipeline.evaluation.volumes import evaluate_with_volumes, volume_agreement
from pipeline.inference.batch import predict_cases
from pipeline.inference.loading import load_predictor
from pipeline.inference.qc import review
from pipeline.inference.writers import output_path
from pipeline.report.report import write_report
from pipeline.report.study import qc_spearman
from pipeline.synthetic.phantom import write_phantoms
from pipeline.workflows.cv import run_cv

_SCORES = ("qc_fold_dice", "qc_volume_cv", "qc_score")


def _phantoms(folder: Path, n: int, seed: int, shape, folds: int = 0) -> Path:
    cases = write_phantoms(folder, n=n, seed=seed, shape=shape)
    df = pd.DataFrame([{k: c[k] for k in ("case_id", "subject_id", "image", "label")} for c in cases])
    df = assign_folds(df, folds, seed=seed) if folds else df
    return write_manifest(df, folder / "manifest.csv", root=folder)


def _rereview(stats: pd.DataFrame, qc: QCConfig, border: bool = True) -> pd.DataFrame:
    """One row per case: ``review``/``review_reasons`` recomputed with ``qc`` from the statistics rows
    (``not CT-like`` kept from the written reasons: the scan is not reread). ``border=False``
    leaves out ``touches border`` (to see what the other reasons do alone)."""
    out = []
    for case, g in stats.groupby(stats["case_id"].astype(str), sort=False):
        rows = g.to_dict("records")
        rows = rows if border else [{**r, "touches_border": False} for r in rows]
        scores = {c: float(rows[0][c]) for c in ("qc_fold_dice", "qc_volume_cv", "qc_entropy")}
        ct_like = "not CT-like" not in str(rows[0].get("review_reasons", ""))
        flag, reasons = review(rows, scores, qc, ct_like)
        out.append({"case_id": case, "review": flag, "review_reasons": reasons})
    return pd.DataFrame(out)


def _flags(metrics: pd.DataFrame, flags: pd.DataFrame) -> tuple[int, int, int]:
    """(worst three by Dice caught, cases flagged, cases)."""
    flag = flags.set_index("case_id")["review"]
    worst = metrics.nsmallest(3, "dice")["case_id"].astype(str)
    caught = sum(flag.get(c) == "review" for c in worst)
    return int(caught), int((flag == "review").sum()), len(flag)


def _summary(name: str, metrics: pd.DataFrame, stats: pd.DataFrame, refs: pd.DataFrame, qc: QCConfig) -> None:
    metrics = metrics.assign(case_id=metrics["case_id"].astype(str))
    print(f"{name}:")
    for score in _SCORES:
        if stats[score].notna().any():
            r, n = qc_spearman(metrics, stats, score)
            print(f"  Spearman rho({score}, Dice) = {r:.3f} over {n} cases")
    flags = _rereview(stats, qc)
    caught, flagged, n = _flags(metrics, flags)
    worst = metrics.nsmallest(3, "dice")
    print(
        f"  review flag ({qc}): catches {caught} of 3 worst "
        f"({', '.join(f'{c} {d:.3f}' for c, d in zip(worst['case_id'], worst['dice']))}); flags {flagged} of {n}"
    )
    caught, flagged, n = _flags(metrics, _rereview(stats, qc, border=False))
    print(f"  without 'touches border': catches {caught} of 3, flags {flagged} of {n}")
    ref_border = refs.groupby(refs["case_id"].astype(str))["touches_border"].any().rename("ref_border")
    print(f"  references touching the border: {int(ref_border.sum())} of {len(ref_border)}")
    print(f"  volume agreement: {volume_agreement(metrics)}")
    cols = ["case_id", "volume_ml", "touches_border", "qc_fold_dice", "qc_volume_cv", "qc_score"]
    table = stats.groupby(stats["case_id"].astype(str))[cols[1:]].first().reset_index()
    table = table.merge(flags, on="case_id").join(ref_border, on="case_id")
    table = table.merge(metrics[["case_id", "dice", "ref_volume_ml"]], on="case_id").sort_values("dice")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _sweep(sets: dict, qc: QCConfig) -> None:
    """Worst-three caught and cases flagged, per test set, over a small grid of thresholds."""
    print("sweep (border reason included; caught of 3 / flagged of N per set):")
    grid = itertools.product((0.6, 0.7, 0.8, 0.9), (0.1, 0.15, 0.25, 0.4), (0.3, 0.4, 0.5, 0.6, 0.7, 1.0))
    for fold_dice, cv, entropy in grid:
        q = replace(qc, min_fold_dice=fold_dice, max_volume_cv=cv, max_entropy=entropy)
        cells = []
        for name, (metrics, stats) in sets.items():
            caught, flagged, n = _flags(
                metrics.assign(case_id=metrics["case_id"].astype(str)), _rereview(stats, q)
            )
            cells.append(f"{name} {caught}/3 {flagged}/{n}")
        print(f"  min_fold_dice {fold_dice} max_volume_cv {cv} max_entropy {entropy}: {'  '.join(cells)}")


def _train(args, cfg, out: Path, shape) -> Path:
    manifest = _phantoms(out / "data", args.n, 0, shape, cfg.train.num_folds)
    run = out / "cv"
    run_cv(cfg, manifest, run)
    print("CV report:", write_report(run))
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/study_qc")
    ap.add_argument(
        "--cv", default="", help="a CV run to reuse instead of training: its finished folds (read only)"
    )
    ap.add_argument("--manifest", default="", help="the --cv run's manifest (default DIR/manifest.csv)")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--test", type=int, default=8)
    ap.add_argument("--test-seed", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument(
        "--shape", default="", help="X,Y,Z of every phantom; default 64,64,40, with --cv drawn per case"
    )
    ap.add_argument("--sweep", action="store_true", help="print caught/flagged over a grid of thresholds")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    if args.cv:
        run = Path(args.cv)
        if not any(f.is_done for f in RunLayout(run).folds()):
            raise SystemExit(f"{run}: no finished fold yet")
        cfg = load_config(RunLayout(run).config, [o for o in args.overrides if o.startswith("qc.")])
        manifest = Path(args.manifest) if args.manifest else RunLayout(run).manifest
        print(f"reusing {run} ({len(read_manifest(manifest))} cases in {manifest})")
        shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else None
    else:
        shape = tuple(int(v) for v in (args.shape or "64,64,40").split(","))
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
        run = _train(args, cfg, out, shape)
    layout = RunLayout(run)
    folds = [f for f in layout.folds() if f.is_done]  # a run still training: its finished folds
    cv_metrics = read_fold_metrics(layout)
    cv_stats = pd.concat(
        [pd.read_csv(OutputLayout(f.predictions).statistics, dtype={"case_id": str}) for f in folds]
    )
    cv_refs = pd.concat(
        [pd.read_csv(OutputLayout(f.predictions).reference_statistics, dtype={"case_id": str}) for f in folds]
    )
    names = ", ".join(f.dir.name for f in folds)
    _summary(
        f"CV held-out ({len(cv_metrics)} cases of {names}, one fold model each)",
        cv_metrics,
        cv_stats,
        cv_refs,
        cfg.qc,
    )

    # the phantoms depend only on n, seed and shape: a rerun with the same ones reuses them
    folder = out / f"test_n{args.test}_seed{args.test_seed}_{'x'.join(map(str, shape)) if shape else 'drawn'}"
    test = (
        manifest_in(folder)
        if manifest_in(folder).exists()
        else _phantoms(folder, args.test, args.test_seed, shape)
    )
    records = case_records(read_manifest(test))
    pred_dir = out / "infer"
    qc_sets = [o for o in args.overrides if o.startswith("qc.")]  # infer writes the review with these
    predict_cases(load_predictor([f.best for f in folds], qc_sets), records, pred_dir, overwrite=True)
    pairs = [{**r, "pred": output_path(pred_dir, r["case_id"], r["image"])} for r in records]
    metrics, refs = evaluate_with_volumes(pairs)
    stats = pd.read_csv(OutputLayout(pred_dir).statistics, dtype={"case_id": str})
    _summary(
        f"Ensemble of {len(folds)} folds on {len(records)} new phantoms (seed {args.test_seed})",
        metrics,
        stats,
        refs,
        cfg.qc,
    )
    if args.sweep:
        _sweep({"cv": (cv_metrics, cv_stats), "ensemble": (metrics, stats)}, cfg.qc)
    t = pd.read_csv(OutputLayout(pred_dir).timings)
    share = (t["statistics_s"] / t["total_s"]).mean()
    print(
        f"statistics + QC: {t['statistics_s'].mean():.3f} s per scan, {100 * share:.1f} % of total_s (mean)"
    )
    print(f"infer total_s per scan: {t['total_s'].mean():.1f} s (mean)")
    print("inference report:", write_report(pred_dir, manifest=test))


if __name__ == "__main__":
    main()
