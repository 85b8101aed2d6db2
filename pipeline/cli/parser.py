"""The argument parser of ``pancreas-seg``: one subcommand per pipeline stage, with its help text."""

from __future__ import annotations

import argparse

from pipeline import __version__
from pipeline.cli import commands

__all__ = ["build_parser"]


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=None,
        help="YAML config file, or a bundled name: 'default' (recommended settings), 'paper' (the "
        "authors' released training recipe) or 'demo' (CPU-sized)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.lr=3e-4 --set data.target_spacing=[1.5,1.5,2]",
    )


def _add_cv_args(p: argparse.ArgumentParser, out_help: str) -> None:
    """The arguments shared by the commands that run cross-validation (cv, compare)."""
    p.add_argument("--manifest", required=True, help="manifest CSV with labels and folds")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--folds", default=None, help="comma-separated folds to run, e.g. 0,2 (default all)")
    _add_config_args(p)


def _add_export_parser(sub) -> None:
    """``pancreas-seg export``: a model package zip, a MONAI bundle or ONNX."""
    p = sub.add_parser(
        "export",
        help="export a trained model: a checked zip, a MONAI bundle, or ONNX",
        description="Export the folds of a run folder (or of a model.zip) for use elsewhere. zip: one file "
        "with the fold weights (no optimizer state), the resolved config, label names, versions, SHA-256 of "
        "every member and MODEL_CARD.md; 'pancreas-seg infer --model model.zip' gives the same masks as "
        "--model RUN. bundle: a MONAI bundle folder that runs with 'python -m monai.bundle run' without this "
        "package (TorchScript ensemble of the folds). onnx: one fold's network as model.onnx (opset 18, "
        "dynamic batch and spatial axes) plus model.onnx.json with the preprocessing.",
    )
    p.add_argument("run", help="run folder (cv or train output) or a model.zip")
    p.add_argument("--out", required=True, help="zip file, bundle folder, or .onnx file to write")
    p.add_argument(
        "--format",
        choices=["zip", "bundle", "onnx"],
        default="zip",
        help="zip (default): model package; bundle: MONAI bundle folder; onnx: one fold as ONNX",
    )
    p.add_argument(
        "--fold",
        type=int,
        action="append",
        default=None,
        metavar="K",
        help="fold to export (repeat for several; default every fold with a best checkpoint; onnx: the "
        "lowest-numbered fold)",
    )
    p.set_defaults(func=commands.cmd_export)


def _add_statistics(sub) -> None:
    """``pancreas-seg statistics``: measurements of existing masks (any tool's) on their scans."""
    p = sub.add_parser(
        "statistics",
        help="volume (mL), HU, extent and border flag of existing masks on their scans",
        description="Measure each case's mask (MASKS/<case_id>.<ext>, from any tool) on its scan from the "
        "manifest: voxels, volume_ml, HU mean/median/std/p05/p95 on the scan's own values, extent and "
        "centroid in mm, touches_border, slice thickness, DICOM UIDs and date. Writes OUT/statistics.csv and "
        "OUT/statistics.json, and OUT/longitudinal.csv when a subject has scans at two or more dates "
        "(manifest column 'acquired', else the DICOM date).",
    )
    p.add_argument("--masks", required=True, help="folder of masks named <case_id>.<ext>")
    p.add_argument("--manifest", required=True, help="manifest CSV naming each case's scan")
    p.add_argument("--out", default=None, help="output folder (default: MASKS)")
    p.add_argument(
        "--cv-summary",
        default=None,
        help="a CV's cv_summary.json: volume changes below its least significant change are flagged "
        "'within measurement error' in longitudinal.csv",
    )
    _add_config_args(p)
    p.set_defaults(func=commands.cmd_statistics)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``pancreas-seg`` with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="pancreas-seg",
        description="Pancreas segmentation in 3D CT with the attention-gated U-Net of Oktay et al. 2018.",
        epilog="Run 'pancreas-seg COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "phantoms",
        help="generate synthetic abdominal CT scans with pancreas labels",
        description="Write synthetic abdominal CT phantoms (int16 HU images, uint8 pancreas labels) to "
        "OUT/images and OUT/labels. Spacing, size and orientation (RAS, LPS, oblique) vary per case; "
        "the same seed gives the same scans.",
    )
    p.add_argument("--n", type=int, default=12, help="number of cases (default 12)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"), help="voxels per axis"
    )
    p.add_argument(
        "--formats",
        nargs="+",
        default=["nii.gz"],
        choices=["nii.gz", "nii", "nrrd", "mha"],
        help="file formats, cycled over the cases (default nii.gz)",
    )
    p.add_argument(
        "--tumour-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of cases (0-1, spread evenly) with a pancreatic lesion, label 2: 20-40 HU below "
        "the parenchyma, 5-30 mm, a dilated duct upstream in about half of them (default 0: pancreas only, "
        "the same scans as without this option)",
    )
    p.add_argument(
        "--manifest",
        action="store_true",
        help="also write OUT/manifest.csv (label_map 1:pancreas,2:tumour with --tumour-fraction)",
    )
    p.set_defaults(func=commands.cmd_phantoms)

    p = sub.add_parser(
        "manifest",
        help="build a manifest CSV from a folder of scans and labels",
        description="Build a manifest (one row per case: case_id, subject_id, image, label, fold) from a "
        "source layout. Paths in the CSV are relative to the CSV's folder.",
    )
    p.add_argument(
        "source_type",
        choices=["glob", "msd", "nnunet", "nih", "check"],
        help="glob: a folder of images (+ labels folder); msd: a Decathlon Task07 dataset.json; "
        "nnunet: an nnU-Net raw dataset folder; nih: NIH Pancreas-CT (DICOM series + label00XX.nii.gz); "
        "check: validate an existing manifest",
    )
    p.add_argument("source", help="the folder, dataset.json, or (for check) manifest to read")
    p.add_argument("--out", help="manifest CSV to write (default SOURCE_FOLDER/manifest.csv)")
    p.add_argument("--image-glob", default="images/*", help="glob: images relative to the folder")
    p.add_argument("--label-dir", default="labels", help="glob: folder of labels relative to the folder")
    p.add_argument("--label-suffix", default="", help="glob: label name = image name + suffix, e.g. _seg")
    p.add_argument("--subject-regex", default=None, help="glob: regex whose first group is the subject id")
    p.add_argument(
        "--keep-tumour",
        action="store_true",
        help="msd: keep tumour (2) as its own class (label_map 1:pancreas,2:tumour; train with --config tumour)",
    )
    p.set_defaults(func=commands.cmd_manifest)

    p = sub.add_parser(
        "folds",
        help="assign cross-validation folds grouped by subject",
        description="Assign k folds to a manifest so that no subject spans two folds and folds are balanced "
        "to within one subject. The same seed gives the same folds. Can read or write nnU-Net's "
        "splits_final.json instead.",
    )
    p.add_argument("manifest", help="manifest CSV")
    p.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", help="write the manifest with folds here (default: overwrite MANIFEST)")
    p.add_argument("--splits-in", help="take folds from an nnU-Net splits_final.json instead")
    p.add_argument("--splits-out", help="also write the folds as nnU-Net splits_final.json")
    p.set_defaults(func=commands.cmd_folds)

    p = sub.add_parser(
        "fingerprint",
        help="measure a dataset: spacings, shapes, HU inside labels, suggested spacing and patch",
        description="Read every case of a manifest and write a JSON fingerprint: spacings, shapes, HU "
        "percentiles inside the labels, and a suggested target spacing and patch size (nnU-Net's rules). "
        "Point data.fingerprint at it to use fingerprint normalisation or spacing.",
    )
    p.add_argument("manifest", help="manifest CSV (cases with labels)")
    p.add_argument("--out", required=True, help="JSON file to write")
    _add_config_args(p)
    p.set_defaults(func=commands.cmd_fingerprint)

    p = sub.add_parser(
        "check",
        help="check every case of a manifest (scans and labels) without training",
        description="Run every input validation the loaders run, for every case of MANIFEST, without "
        "training: the scan's header (readable, one 3-D volume, size limit, not truncated, voxel size "
        "and affine, DICOM series ambiguity), its voxels (finite, not all air, CT-like values), the "
        "label's values and grid. Prints one row per problem; exit code 0 when there is no error "
        "(warnings allowed), 2 when there is one.",
    )
    p.add_argument("manifest", help="manifest CSV")
    p.add_argument(
        "--out", default=None, help="also write the problems as CSV (case_id,severity,file,problem)"
    )
    p.add_argument("--require-labels", action="store_true", help="every case must have a label (training)")
    _add_config_args(p)
    p.set_defaults(func=commands.cmd_check)

    p = sub.add_parser(
        "model-info",
        help="print the network's structure summary and parameter count",
        description="Build the configured network (model.name: attention_unet or unet) and print its "
        "parameter count and attention gates.",
    )
    _add_config_args(p)
    p.set_defaults(func=commands.cmd_model_info)

    p = sub.add_parser(
        "train",
        help="train one cross-validation fold",
        description="Train fold K of a manifest (validation = the cases of fold K, training = the rest) "
        "into RUN/fold_K. A killed run re-run with the same arguments resumes from its newest checkpoint.",
    )
    p.add_argument("--manifest", required=True, help="manifest CSV with labels and folds")
    p.add_argument("--fold", type=int, required=True, help="the fold held out for validation")
    p.add_argument("--out", required=True, help="run folder")
    _add_config_args(p)
    p.set_defaults(func=commands.cmd_train)

    p = sub.add_parser(
        "cv",
        help="k-fold cross-validation with per-case metrics",
        description="For each fold: train on the other folds, predict the held-out scans with sliding "
        "windows on their own grids, and evaluate. Writes RUN/cv_metrics.csv and RUN/cv_summary.json. "
        "Re-running skips finished folds (DONE) and resumes the one in progress. Under torchrun all "
        "processes train each fold together (DDP). Several processes or torchrun jobs may share one run "
        "folder when each runs other --folds.",
    )
    _add_cv_args(p, "run folder")
    p.add_argument(
        "--parallel-folds",
        type=int,
        default=0,
        metavar="N",
        help="run the folds as N processes at once (one GPU each when there are GPUs, else the CPU "
        "cores shared); each fold logs to RUN/fold_K/cv.log",
    )
    p.set_defaults(func=commands.cmd_cv)

    p = sub.add_parser(
        "infer",
        help="segment full scans with a trained model",
        description="Sliding-window inference on whole scans. MODEL is a CV run folder (the folds' best "
        "checkpoints are averaged), a model package from 'pancreas-seg export' (checked before use; the same masks as "
        "its run folder) or one checkpoint. Masks are written on each input's exact grid, in its "
        "format (NIfTI for DICOM series). Existing outputs are skipped unless --overwrite.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="CV run folder, model package .zip (pancreas-seg export), or checkpoint .pt",
    )
    p.add_argument(
        "--input", required=True, help="scan file, DICOM series folder, folder of scans, or manifest CSV"
    )
    p.add_argument("--out", required=True, help="output folder for masks and timings.csv")
    p.add_argument("--overwrite", action="store_true", help="recompute cases whose output exists")
    p.add_argument("--tta", action="store_true", help="average over in-plane flips (slower, smoother)")
    p.add_argument("--keep-largest", action="store_true", help="keep only the largest connected component")
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also write float32 probability maps beside each mask: CASE_prob.EXT (pancreas), or with several "
        "classes one CASE_prob_CLASS.EXT per class (one 3-D volume each, as 3D Slicer and ITK-SNAP open them)",
    )
    p.add_argument(
        "--no-statistics",
        action="store_true",
        help="skip OUT/statistics.csv and .json (volume in mL, HU, border flag, QC review column per case)",
    )
    p.add_argument(
        "--dicom-seg",
        action="store_true",
        help="for DICOM series inputs, also write a DICOM SEG referencing the series (needs highdicom)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=None,
        help="auto (default): channels-last + bf16 on CPUs with native bf16, else float32",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="folder or manifest: N background threads load the next scan and write the previous one "
        "while the network runs (same masks; 0 = one scan after the other; default: infer.workers, "
        "chosen by core count)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change infer.*, perf.* or qc.* (review thresholds) settings, e.g. --set infer.overlap=0.25",
    )
    p.set_defaults(func=commands.cmd_infer)

    _add_export_parser(sub)

    p = sub.add_parser(
        "evaluate",
        help="per-case metrics of predicted masks against manifest labels",
        description="Dice, IoU, precision, recall, HD95, average symmetric surface distance (mm) and "
        "normalised surface Dice (eval.nsd_tolerance_mm, default 2 mm) per case and class, on each label's "
        "own grid; one row per case and class. The classes are the config's (data.class_names, "
        "model.out_channels; default pancreas only, where any non-zero voxel counts). Tumour classes "
        "(eval.detection_classes) also get lesion counts, and FROC counts when probability files lie "
        "beside the masks. The summary (OUT with .json) gives every mean with its 95 % bootstrap "
        "interval over subjects. Predictions are matched by case_id (PRED/<case_id>.<ext>).",
    )
    p.add_argument("--pred", required=True, help="folder of predicted masks")
    p.add_argument("--manifest", required=True, help="manifest CSV with labels")
    p.add_argument("--out", default=None, help="metrics CSV to write (default PRED/metrics.csv)")
    _add_config_args(p)
    p.set_defaults(func=commands.cmd_evaluate)

    p = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a CV or inference run",
        description="Write RUN/report.html (with PNG figures in RUN/report_files/): summary and per-case "
        "tables, training curves, prediction/label overlays (worst cases first) and attention maps.",
    )
    p.add_argument("run", help="CV run folder (or an inference output folder)")
    p.add_argument("--manifest", default=None, help="manifest with labels (default: the one the run used)")
    p.add_argument(
        "--max-cases", type=int, default=12, help="overlays for at most this many cases (default 12)"
    )
    p.set_defaults(func=commands.cmd_report)

    p = sub.add_parser(
        "compare",
        help="the paper's ablation: Attention U-Net vs U-Net with identical folds and schedule",
        description="Run cross-validation for attention_unet and unet (attention=False) with the same folds, "
        "seeds and schedule into OUT/attention_unet and OUT/unet, then write OUT/compare.csv and "
        "OUT/compare.md: Dice, precision, recall, surface distance, parameters and inference time per "
        "network, with a Wilcoxon signed-rank test on per-case Dice. --config paper trains both with the "
        "authors' released recipe, the default config with the recommended one.",
    )
    _add_cv_args(p, "output folder")
    p.set_defaults(func=commands.cmd_compare)

    _add_statistics(sub)

    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on synthetic phantoms",
        description="Generate phantoms, write a manifest with folds, and run the pipeline on them with the "
        "CPU-sized demo config. Prints what it made. --tumour runs the 3-class demo (pancreas and tumour).",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--n", type=int, default=12, help="number of phantoms (default 12)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--config", default="demo", help="config file or bundled name (default demo)")
    p.add_argument(
        "--tumour",
        action="store_true",
        help="pancreas and tumour: a lesion in 2 of 3 phantoms (label 2), and data.class_names=[pancreas,tumour], "
        "model.out_channels=3, train.lr=0.01, train.epochs=40, train.val_interval=10 (for nnU-Net-style "
        "regions add --set 'data.regions=[[1,2],[2]]' --set model.out_channels=2)",
    )
    p.add_argument(
        "--parallel-folds",
        type=int,
        default=None,
        metavar="N",
        help="run the folds as N processes at once, the CPU cores shared (as cv --parallel-folds); "
        "0: one after another. Default: 0, and every fold at once for --tumour on a machine without CUDA",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=commands.cmd_demo)
    return parser
