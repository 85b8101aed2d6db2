"""k-fold cross-validation: train each fold, predict its held-out cases on their original grids, evaluate.

Run folder (the contract between the stages, README.md "Run folder"; the names come from
:mod:`pipeline.core.layout`)::

    <run>/config.yaml                 resolved config + versions + git commit
    <run>/manifest.csv                the cases of the run (absolute paths)
    <run>/fold_<k>/checkpoints/       see pipeline.training.train
    <run>/fold_<k>/log.csv
    <run>/fold_<k>/predictions/       held-out masks on each scan's own grid and format
    <run>/fold_<k>/metrics.csv        per-case metrics of the fold
    <run>/fold_<k>/DONE               the fold is complete; a re-run skips it
    <run>/cv_metrics.csv              all cases
    <run>/cv_summary.json             mean/std/median and 95 % bootstrap interval per metric, per fold,
                                      overall and per class; tumour detection; the metric implementation

A killed ``cv`` re-run with the same arguments skips folds with ``DONE`` and resumes the fold in
progress from its newest checkpoint.

Several processes may share one run folder when each runs other folds (``--folds``, or
``--parallel-folds``; see :mod:`pipeline.workflows.parallel_folds`): a fold is claimed with a lock file
(``fold_<k>/.lock``), so two processes never train the same fold, and the aggregation into
``cv_metrics.csv`` / ``cv_summary.json`` is serialised, so the last fold to finish writes a table
with every finished fold. Under ``torchrun`` all ranks run each fold together and rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
import yaml

from pipeline.core import distributed as dist
from pipeline.core.config import Config, EvalConfig, config_to_dict, save_run_config
from pipeline.core.errors import BusyError, ConfigError, ManifestError
from pipeline.core.fileio import atomic_write_text
from pipeline.core.label_map import class_names
from pipeline.core.layout import FoldLayout, OutputLayout, RunLayout
from pipeline.data.manifest import case_records, read_manifest, write_manifest
from pipeline.data.statistics import write_statistics
from pipeline.evaluation.evaluate import (
    read_fold_metrics,
    summarize,
    write_summary,
    write_table,
)
from pipeline.evaluation.summary import class_lines
from pipeline.evaluation.volumes import evaluate_with_volumes, volume_agreement
from pipeline.inference.batch import predict_cases
from pipeline.inference.loading import load_network
from pipeline.inference.predictor import Predictor
from pipeline.inference.writers import output_path, probability_paths
from pipeline.training.train import split_records, train_fold

__all__ = [
    "prepare_run_dir",
    "claim_fold",
    "run_fold",
    "aggregate",
    "run_cv",
    "format_summary",
    "probability_files",
]

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
    saved = RunLayout(run_dir).config
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
    elif dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_run_config(cfg, run_dir)
    dist.barrier()
    return run_dir


@contextlib.contextmanager
def _file_lock(path: Path, blocking: bool) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (released when the process ends, even by SIGKILL).

    Yields False when ``blocking`` is off and another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking, as before
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def claim_fold(fold_dir: Path) -> Iterator[None]:
    """Hold ``fold_dir/.lock`` while the fold runs (rank 0 holds it for a torchrun job).

    Raises:
        BusyError: another process is running this fold into the same run folder.
    """
    with (
        _file_lock(FoldLayout(fold_dir).lock, blocking=False)
        if dist.is_main()
        else contextlib.nullcontext(True) as got
    ):
        if dist.any_across_ranks(not got):
            raise BusyError(
                f"{fold_dir}: another process is running this fold; give each process its own "
                "--folds, or wait for it to finish"
            )
        yield


def probability_files(pred_dir: str | os.PathLike, record: dict, classes: dict[int, str]) -> dict[int, Path]:
    """The class probability files that inference writes beside a case's mask (``--probabilities``).

    Args:
        pred_dir: the predictions folder.
        record: the case (``case_id``, ``image``).
        classes: ``{class value: name}``.

    Returns:
        ``{class value: path}`` of those that exist: ``<case>_prob.<ext>`` with one class, else
        ``<case>_prob_<class name>.<ext>`` per class.
    """
    names = list(classes.values())
    paths = dict(zip(classes, probability_paths(pred_dir, record["case_id"], record["image"], names)))
    return {k: p for k, p in paths.items() if p.exists()}


def run_fold(cfg: Config, records: list[dict], fold: int, run_dir: Path) -> pd.DataFrame:
    """Train fold ``fold``, predict its held-out cases with the best checkpoint, evaluate, mark DONE."""
    layout = RunLayout(run_dir).fold(fold)
    _, val = split_records(records, fold)
    result = train_fold(cfg, records, fold, layout.dir)
    net, _, _ = load_network(result["best"], expect=cfg.model)
    pred_dir = layout.predictions
    outcome = predict_cases(Predictor([net], cfg), val, pred_dir)  # sharded by rank under torchrun
    if outcome["failed"]:
        first = next(iter(outcome["failed"].items()))
        raise ManifestError(
            f"fold {fold}: prediction failed for {len(outcome['failed'])} case(s), e.g. {first[0]}: {first[1]}"
        )
    classes = class_names(cfg)
    pairs = [
        {
            "case_id": r["case_id"],
            "subject_id": r.get("subject_id", ""),
            "pred": output_path(pred_dir, r["case_id"], r["image"]),
            "label": r["label"],
            "image": r["image"],  # the reference's HU and volume on the scan
            "fold": fold,
            "label_map": r.get("label_map", ""),
            "probabilities": probability_files(pred_dir, r, classes),
        }
        for r in val
    ]
    # each rank evaluates its share
    parts = dist.all_gather_objects(evaluate_with_volumes(dist.shard(pairs), classes, cfg.eval))
    table = pd.concat([t for t, _ in parts], ignore_index=True)
    references = pd.concat([r for _, r in parts], ignore_index=True)
    if dist.is_main():
        order = {r["case_id"]: i for i, r in enumerate(pairs)}
        table = table.sort_values("case_id", key=lambda c: c.map(order), ignore_index=True)
        write_table(table, layout.metrics)
        write_statistics(references, OutputLayout(pred_dir).reference_statistics)
        done = f"best_val_dice={result['best_val_dice']:.6f} epochs={result['epochs']}\n"
        atomic_write_text(layout.done, done)
    dist.barrier()
    for name, rows in table.groupby("class", sort=False):
        log.info("fold %d done: %s mean Dice %.4f over %d cases", fold, name, rows["dice"].mean(), len(rows))
    return table


def aggregate(run_dir: str | os.PathLike, settings: EvalConfig | None = None) -> dict:
    """Collect every finished fold's metrics into ``cv_metrics.csv`` and ``cv_summary.json``.

    Args:
        run_dir: the run folder.
        settings: the ``eval`` settings (bootstrap resamples, seed, level; detection classes).
    """
    layout = RunLayout(run_dir)
    # Serialised: with several processes sharing the run folder the last one includes every fold.
    with _file_lock(layout.aggregate_lock, blocking=True):
        return _aggregate(layout, settings)


def _aggregate(layout: RunLayout, settings: EvalConfig | None = None) -> dict:
    df = read_fold_metrics(layout)  # the folds with DONE
    if df.empty:
        raise ManifestError(f"{layout.root}: no finished folds to aggregate")
    write_table(df, layout.cv_metrics)
    summary = {**summarize(df, settings), "volume_agreement": volume_agreement(df)}
    write_summary(summary, layout.cv_summary)
    return summary


def run_cv(
    cfg: Config, manifest: str | os.PathLike, run_dir: str | os.PathLike, folds: Sequence[int] | None = None
) -> dict:
    """Run (or resume) cross-validation over ``folds`` (default: every fold in the manifest)."""
    df = read_manifest(manifest, require_labels=True)
    records = case_records(df)
    present = sorted({int(r["fold"]) for r in records if int(r["fold"]) >= 0})
    if not present:
        raise ManifestError(f"{manifest}: no folds assigned; run 'pancreas-seg folds {manifest}' first")
    todo = list(folds) if folds else present
    unknown = [k for k in todo if k not in present]
    if unknown:
        raise ManifestError(f"{manifest}: fold(s) {unknown} have no cases (folds present: {present})")
    dist.join(cfg.perf)  # under torchrun: join the process group before any rank-0-only write
    run_dir = prepare_run_dir(cfg, run_dir)
    layout = RunLayout(run_dir)
    if dist.is_main():  # the cases this run used (absolute paths), for reports
        write_manifest(df, layout.manifest)
    for k in todo:
        fold = layout.fold(k)
        if fold.is_done():
            log.info("fold %d: already done, skipping", k)
            continue
        with claim_fold(fold.dir):
            if fold.is_done():  # finished by another process while we waited
                continue
            log.info("fold %d of %s: training", k, present)
            run_fold(cfg, records, k, run_dir)
    summary = aggregate(run_dir, cfg.eval) if dist.is_main() else {}
    summary = dist.all_gather_objects(summary)[0]
    log.info(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    """A small text table: Dice/HD95/ASSD mean ± std per fold and overall, then each class's means
    with their bootstrap intervals."""
    lines = [f"{'fold':>7} {'Dice':>15} {'HD95 mm':>15} {'ASSD mm':>15}"]
    classes = list(summary.get("per_class") or {})
    if len(classes) > 1:  # the fold rows pool every class's rows: say so before the per-class lines
        lines.insert(
            0, f"per fold: mean over the rows of all classes ({', '.join(classes)}); each class below"
        )

    def row(name: str, s: dict) -> str:
        cells = [f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f}" for m in ("dice", "hd95_mm", "assd_mm")]
        return f"{name:>7} " + " ".join(f"{c:>15}" for c in cells)

    for k, s in summary["per_fold"].items():
        lines.append(row(k, s))
    lines.append(row("all", summary["foreground_mean"]))
    lines += class_lines(summary)
    return "\n".join(lines)
