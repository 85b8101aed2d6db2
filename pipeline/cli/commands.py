"""Handlers of the ``pancreas-seg`` subcommands: thin glue from parsed arguments to the pipeline modules.

Heavy imports (torch, MONAI, ITK) happen inside the handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pipeline.cli.study import cmd_statistics, follow_up
from pipeline.core.config import load_config
from pipeline.core.errors import ManifestError, UsageError
from pipeline.core.layout import OutputLayout, RunLayout, manifest_in

__all__ = [
    "cmd_check",
    "cmd_phantoms",
    "cmd_manifest",
    "cmd_folds",
    "cmd_fingerprint",
    "cmd_model_info",
    "cmd_demo",
    "cmd_train",
    "cmd_cv",
    "cmd_infer",
    "cmd_export",
    "cmd_evaluate",
    "cmd_report",
    "cmd_compare",
    "cmd_statistics",
]

log = logging.getLogger("pancreas_seg")


def _config(args: argparse.Namespace, fingerprint: bool = True):
    """The config of ``--config`` and ``--set``, every value checked before anything is written.

    ``fingerprint=False`` for commands that build no transform chain: they do not need
    ``data.fingerprint`` (``fingerprint`` writes it).
    """
    return load_config(getattr(args, "config", None), getattr(args, "overrides", None), fingerprint)


def cmd_check(args: argparse.Namespace) -> int:
    """Every input validation of a manifest's cases, as a table; exit 2 when any is an error."""
    from pipeline.data.check import check_manifest, format_problems, raise_first_error, write_problems

    cfg = _config(args, fingerprint=False)
    records, problems = check_manifest(args.manifest, cfg.data.dicom_series, args.require_labels)
    print(format_problems(problems, len(records)))
    if args.out:
        log.info("wrote %s", write_problems(problems, args.out))
    raise_first_error(problems, args.manifest)
    return 0


def cmd_phantoms(args: argparse.Namespace) -> int:
    """Generate synthetic phantoms (and optionally a manifest)."""
    import time

    import pandas as pd

    from pipeline.data.manifest import write_manifest
    from pipeline.synthetic.phantom import write_phantoms

    if args.n < 1:
        raise UsageError(f"--n must be at least 1, got {args.n}")
    start = time.perf_counter()
    cases = write_phantoms(
        args.out,
        n=args.n,
        seed=args.seed,
        shape=args.shape,
        formats=tuple(args.formats),
        tumour_fraction=args.tumour_fraction,
    )
    log.info("wrote %d phantoms to %s in %.1f s", len(cases), args.out, time.perf_counter() - start)
    if args.manifest:
        cols = ("case_id", "subject_id", "image", "label", "label_map")
        df = pd.DataFrame([{k: c[k] for k in cols if k in c} for c in cases])
        path = write_manifest(df, manifest_in(args.out), root=args.out)
        log.info("manifest: %s", path)
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    """Build a manifest from a source layout, or check one."""
    from pipeline.data import manifest as mf

    src = Path(args.source)
    if args.source_type == "check":
        df = mf.read_manifest(src)
        log.info(
            "%s: %d cases, %d subjects, no problems found in the table "
            "('pancreas-seg check %s' also opens the scans and labels)",
            src,
            len(df),
            df["subject_id"].nunique(),
            src,
        )
        return 0
    default_dir = src.parent if src.is_file() else src
    out = Path(args.out) if args.out else manifest_in(default_dir)
    if args.source_type == "glob":
        df = mf.import_glob(
            src,
            out,
            image_glob=args.image_glob,
            label_dir=args.label_dir or None,
            label_suffix=args.label_suffix,
            subject_regex=args.subject_regex,
        )
    elif args.source_type == "msd":
        df = mf.import_msd(src, out, keep_tumour=args.keep_tumour)
    elif args.source_type == "nnunet":
        df = mf.import_nnunet(src, out)
    else:
        df = mf.import_nih(src, out)
    labelled = int(df["label"].fillna("").astype(str).str.len().gt(0).sum()) if "label" in df else 0
    log.info("wrote %s: %d cases (%d with labels)", out, len(df), labelled)
    return 0


def cmd_folds(args: argparse.Namespace) -> int:
    """Assign (or import) folds and write the manifest back."""
    from pipeline.data import manifest as mf

    df = mf.read_manifest(args.manifest)
    if args.splits_in:
        df = mf.read_splits(args.splits_in, df)
    else:
        df = mf.assign_folds(df, args.k, seed=args.seed)
    out = Path(args.out or args.manifest)
    mf.write_manifest(df, out)
    if args.splits_out:
        mf.write_splits(df, args.splits_out)
    log.info("%s\nwrote %s", mf.describe_folds(df), out)
    return 0


def cmd_fingerprint(args: argparse.Namespace) -> int:
    """Compute a dataset fingerprint JSON."""
    from pipeline.data.fingerprint import compute_fingerprint, write_fingerprint
    from pipeline.data.manifest import case_records, read_manifest

    cfg = _config(args, fingerprint=False)  # this command writes data.fingerprint
    df = read_manifest(args.manifest, require_labels=True)
    fp = compute_fingerprint(case_records(df), cfg)
    path = write_fingerprint(fp, args.out)
    log.info(
        "wrote %s; suggested spacing %s mm, patch %s",
        path,
        fp.get("suggested_target_spacing"),
        fp.get("suggested_patch_size"),
    )
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    """Print the configured network's parameter count and gates."""
    from models import model_info

    info = model_info(_config(args, fingerprint=False).model)
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo on phantoms."""
    from pipeline.workflows.demo import TUMOUR_FRACTION, TUMOUR_OVERRIDES, run_demo

    if args.tumour:  # before the user's --set, so those can still change them (e.g. regions)
        args.overrides = [*TUMOUR_OVERRIDES, *args.overrides]
    cfg = _config(args)
    jobs = args.parallel_folds
    if jobs is None:  # the 3-class demo: every fold at once on a CPU (the cores shared), else serial
        from pipeline.core.runtime import select_device

        jobs = int(cfg.train.num_folds) if args.tumour and select_device(cfg.perf).type == "cpu" else 0
    run_demo(
        args.out,
        n=args.n,
        seed=args.seed,
        cfg=cfg,
        tumour_fraction=TUMOUR_FRACTION if args.tumour else 0.0,
        parallel_folds=jobs,
        config=args.config,
        overrides=args.overrides,
    )
    return 0


def _folds_arg(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--folds {text!r}: expected comma-separated integers such as 0,2") from None


def cmd_train(args: argparse.Namespace) -> int:
    """Train one fold."""
    from pipeline.core import distributed
    from pipeline.data.manifest import case_records, read_manifest
    from pipeline.training.train import split_records, train_fold
    from pipeline.workflows.cv import prepare_run_dir

    cfg = _config(args)
    records = case_records(read_manifest(args.manifest, require_labels=True))
    split_records(records, args.fold, args.manifest)  # a fold with no cases: refused before any write
    _preflight(cfg, records, args.manifest, Path(args.out), [args.fold])
    distributed.join(cfg.perf)
    run = prepare_run_dir(cfg, args.out)
    result = train_fold(cfg, records, args.fold, RunLayout(run).fold(args.fold).dir)
    log.info(
        "fold %d: %d epochs, best validation Dice %.4f; best checkpoint %s",
        args.fold,
        result["epochs"],
        result["best_val_dice"],
        result["best"],
    )
    return 0


def _preflight(cfg, records: list[dict], manifest, run: Path, folds: list[int] | None) -> None:
    """Check every case used and each fold's resume checkpoint before the run folder is touched."""
    from pipeline.data.check import preflight, preflight_resume

    used = [r for r in records if int(r.get("fold", -1)) >= 0]
    preflight(used, cfg.data.dicom_series, manifest)
    for k in folds or sorted({int(r["fold"]) for r in used}):
        fold = RunLayout(run).fold(k)
        if not fold.is_done():
            preflight_resume(fold.dir, cfg.model)


def cmd_cv(args: argparse.Namespace) -> int:
    """Cross-validation."""
    from pipeline.data.manifest import case_records, read_manifest
    from pipeline.workflows.cv import run_cv

    cfg, folds = _config(args), _folds_arg(args.folds)
    records = case_records(read_manifest(args.manifest, require_labels=True))
    _preflight(cfg, records, args.manifest, Path(args.out), folds)
    if args.parallel_folds:
        from pipeline.workflows.cv import format_summary
        from pipeline.workflows.parallel_folds import run_parallel_folds

        if folds is None:
            folds = sorted({int(r["fold"]) for r in records if int(r["fold"]) >= 0})
        summary = run_parallel_folds(
            cfg, args.manifest, args.out, folds, args.parallel_folds, args.config, args.overrides
        )
        log.info(format_summary(summary))
    else:
        run_cv(cfg, args.manifest, args.out, folds)
    layout = RunLayout(args.out)
    log.info("wrote %s and %s", layout.cv_metrics, layout.cv_summary)
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    """Inference on full scans."""
    from pipeline.core import distributed
    from pipeline.data.check import preflight_inputs
    from pipeline.inference.batch import predict_cases
    from pipeline.inference.inputs import discover_inputs
    from pipeline.inference.loading import load_predictor

    overrides = list(args.overrides)
    overrides += ["infer.tta_flip=true"] if args.tta else []
    overrides += ["infer.keep_largest_component=true"] if args.keep_largest else []
    overrides += ["infer.save_probabilities=true"] if args.probabilities else []
    overrides += ["infer.dicom_seg=true"] if args.dicom_seg else []
    overrides += [f"infer.precision={args.precision}"] if args.precision else []
    overrides += [f"infer.workers={args.workers}"] if args.workers is not None else []
    overrides += ["infer.statistics=false"] if args.no_statistics else []
    records = discover_inputs(args.input)
    predictor = load_predictor(args.model, overrides)
    if predictor.cfg.infer.dicom_seg and any(Path(r["image"]).is_dir() for r in records):
        from pipeline.inference.dicom_seg import require_highdicom

        require_highdicom()  # a missing package before any scan's problem: it concerns them all
    records, refused = preflight_inputs(records, predictor.cfg.data.dicom_series)  # headers only
    distributed.join(predictor.cfg.perf)
    out = predict_cases(predictor, records, args.out, overwrite=args.overwrite)
    out["failed"] = {**refused, **out["failed"]}
    if predictor.cfg.infer.statistics and distributed.is_main():
        follow_up(records, OutputLayout(args.out), None)
    log.info(
        "%d written, %d skipped (exist), %d failed -> %s",
        len(out["written"]),
        len(out["skipped"]),
        len(out["failed"]),
        args.out,
    )
    if out["failed"]:
        for case, msg in out["failed"].items():
            print(f"pancreas-seg: {case}: {msg}", file=__import__("sys").stderr)
        return 3
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a run's folds as a model package, a MONAI bundle or ONNX."""
    import os

    folds = sorted(set(args.fold)) if args.fold else None
    if args.format == "onnx":
        if folds and len(folds) > 1:
            raise UsageError("export --format onnx: one fold per ONNX file (give --fold once)")
        from pipeline.inference.onnx_export import export_onnx

        out = export_onnx(args.run, args.out, folds[0] if folds else None)
    elif args.format == "bundle":
        from pipeline.inference.bundle import export_bundle

        out = export_bundle(args.run, args.out, folds)
    else:
        from pipeline.inference.package import export_package, is_package

        if is_package(args.run):
            raise UsageError(f"{args.run}: already a model package; export a run folder")
        out = export_package(args.run, args.out, folds)
    size = (
        sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
        if Path(out).is_dir()
        else os.path.getsize(out)
    )
    log.info("wrote %s (%s, %.1f MB)", out, args.format, size / 1e6)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a folder of predictions."""
    from pipeline.core.label_map import class_names
    from pipeline.data.manifest import case_records, read_manifest
    from pipeline.data.statistics import write_statistics
    from pipeline.evaluation.evaluate import summarize, write_summary, write_table
    from pipeline.evaluation.volumes import evaluate_with_volumes, volume_agreement
    from pipeline.inference.writers import output_path
    from pipeline.workflows.cv import probability_files

    cfg = _config(args, fingerprint=False)
    classes = class_names(cfg)
    df = read_manifest(args.manifest, require_labels=True)
    pairs, missing = [], []
    for r in case_records(df):
        pred = output_path(args.pred, r["case_id"], r["image"])
        if pred.exists():
            pairs.append({**r, "pred": pred, "probabilities": probability_files(args.pred, r, classes)})
        else:
            missing.append(r["case_id"])
    if not pairs:
        raise ManifestError(f"{args.pred}: no predictions found for the cases of {args.manifest}")
    if missing:
        log.warning("warning: no prediction for %d case(s): %s", len(missing), ", ".join(missing[:10]))
    table, references = evaluate_with_volumes(pairs, classes, cfg.eval)
    out = Path(args.out) if args.out else OutputLayout(args.pred).metrics
    write_table(table, out)
    summary = {**summarize(table, cfg.eval), "volume_agreement": volume_agreement(table)}
    write_summary(summary, out.with_suffix(".json"))
    write_statistics(references, OutputLayout(out.parent).reference_statistics)
    cols = ["case_id", "class", "dice", "nsd", "hd95_mm", "assd_mm", "volume_error_ml", "flag"]
    log.info("%s\nwrote %s", table[cols].to_string(index=False), out)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """HTML report of a run."""
    from pipeline.report.report import write_report

    path = write_report(args.run, manifest=args.manifest, max_cases=args.max_cases)
    log.info("report: %s", path)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Attention U-Net vs U-Net with identical folds."""
    from pipeline.workflows.compare import run_compare

    table = run_compare(_config(args), args.manifest, args.out, _folds_arg(args.folds))
    log.info("%s", table)
    return 0
