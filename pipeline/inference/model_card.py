"""The model card of an exported model (``MODEL_CARD.md`` in a package, ``docs/README.md`` in a bundle).

It states what the model segments, the training data as the run's manifest described it, the
cross-validation summary as the run's ``cv_summary.json`` holds it, the preprocessing a user must
reproduce, versions, and the limits of use. It is written from the run folder's files; nothing is
recomputed.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import pandas as pd

from pipeline.core.config import Config
from pipeline.core.label_map import class_names
from pipeline.core.layout import RunLayout

__all__ = ["model_card", "training_data", "cv_lines"]

log = logging.getLogger("pancreas_seg")

_LIMITS = (
    "**Not for clinical use.** This model is a research tool. It has not been cleared or approved by "
    "any regulator, and its output must not be used for diagnosis, treatment or any decision about "
    "a patient.\n\n"
    "- Intended use: research on pancreas segmentation in 3D abdominal CT (portal-venous or similar "
    "contrast phases), and as a starting point for further training.\n"
    "- It was validated only by the cross-validation above, on the training data described above; "
    "scanners, protocols, populations and diseases that data did not hold are untested.\n"
    "- Expect failures on non-CT input, scans that do not contain the pancreas, heavy artefacts, "
    "post-surgical anatomy, and fields of view very unlike the training scans.\n"
    "- The masks are on the input scan's grid; volumes and surface distances inherit its voxel size."
)


def training_data(run_dir: str | os.PathLike) -> dict:
    """What the run's manifest says about its cases: counts of cases, subjects, labels and folds, and
    the folders the images came from (the manifest's paths are not opened).

    Returns:
        ``{"cases", "subjects", "labelled", "folds", "sources"}``; empty when the run has no manifest.
    """
    path = RunLayout(run_dir).manifest
    if not path.is_file():
        return {}
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        log.warning(
            "warning: %s: manifest unreadable (%s); the model card omits the training data", path, exc
        )
        return {}
    images = [Path(p) for p in df.get("image", pd.Series(dtype=str)) if p]
    # a dataset is usually a folder of scans (or of DICOM series): name the folder above the scans
    sources = sorted(
        {
            (p.parent.parent if p.parent.name in ("images", "imagesTr") else p.parent).name or "."
            for p in images
        }
    )
    return {
        "cases": int(len(df)),
        "subjects": int(df["subject_id"].nunique()) if "subject_id" in df else int(len(df)),
        "labelled": int((df["label"] != "").sum()) if "label" in df else 0,
        "folds": sorted({int(f) for f in df["fold"] if str(f).lstrip("-").isdigit()}) if "fold" in df else [],
        "sources": sources,
    }


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.4g}"


def cv_lines(summary: dict) -> list[str]:
    """The overall per-metric statistics of a ``cv_summary.json`` as Markdown table rows.

    Whatever statistics each metric has (mean, std, median, and intervals as ``[low, high]`` pairs
    or ``*_low``/``*_high`` numbers) are printed as they are.
    """
    overall = summary.get("foreground_mean") or {}
    if not isinstance(overall, dict) or not overall:
        return []
    keys: list[str] = []
    for stats in overall.values():
        for k in stats if isinstance(stats, dict) else {}:
            if k not in keys:
                keys.append(k)
    lines = ["| metric | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for metric, stats in overall.items():
        if not isinstance(stats, dict):
            continue
        cells = []
        for k in keys:
            v = stats.get(k, "")
            cells.append(" to ".join(_number(x) for x in v) if isinstance(v, (list, tuple)) else _number(v))
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines


def model_card(cfg: Config, run_dir: str | os.PathLike, folds: list[int], provenance: dict) -> str:
    """The Markdown model card of the folds ``folds`` of the run ``run_dir``.

    Args:
        cfg: the run's config (``config.yaml``).
        run_dir: the run folder (its manifest and ``cv_summary.json`` are read when present).
        folds: the fold numbers in the export.
        provenance: ``{"versions": .., "git_commit": ..}`` of training (the run's config) or of the export.
    """
    run = RunLayout(run_dir)
    names = class_names(cfg)
    d = cfg.data
    data = training_data(run_dir)
    out = [
        f"# Model card: {cfg.model.name} for {' and '.join(names.values())} segmentation in CT",
        "",
        "## What it segments",
        "",
        "3D abdominal CT scans (Hounsfield units) in; a label map on the input's grid out: "
        + ", ".join(f"{v} = {n}" for v, n in {0: "background", **names}.items())
        + ".",
        f"Network: {cfg.model.name} (Oktay et al. 2018, arXiv:1804.03999), channels {list(cfg.model.channels)}; "
        f"an ensemble of {len(folds)} fold model(s) (folds {', '.join(map(str, folds))}), softmax averaged.",
        "",
        "## Training data (as the run's manifest described it)",
        "",
    ]
    if data:
        out += [
            f"- cases: {data['cases']} ({data['labelled']} labelled), subjects: {data['subjects']}",
            f"- cross-validation folds: {', '.join(map(str, data['folds'])) or 'none recorded'}",
            f"- sources (image folders): {', '.join(data['sources'][:10]) or 'unknown'}"
            + (" ..." if len(data["sources"]) > 10 else ""),
        ]
    else:
        out.append("- not recorded (the run folder has no manifest)")
    out += ["", "## Cross-validation (the run's cv_summary.json, over all folds)", ""]
    summary = _read_json(run.cv_summary)
    lines = cv_lines(summary)
    if lines:
        out += [f"Cases evaluated: {summary.get('n_cases', '?')}.", "", *lines]
    else:
        out.append("No cross-validation summary in the run folder.")
    intensity = {
        "window": f"clip to {list(d.window_hu)} HU, scale to [0, 1]",
        "fingerprint": f"clip to {list(d.fingerprint_values.clip_hu)} HU, subtract {d.fingerprint_values.mean_hu:.4g}, "
        f"divide by {d.fingerprint_values.std_hu:.4g}",
        "zscore": "zero mean, unit variance per scan",
    }[d.intensity]
    out += [
        "",
        "## Preprocessing (what a reimplementation must do)",
        "",
        f"- orientation {d.orientation}; body crop {'on' if d.body_crop else 'off'} "
        f"(voxels above {d.body_threshold_hu:g} HU, {d.body_margin_mm:g} mm margin)",
        f"- resampled to {list(d.target_spacing)} mm (linear); intensity: {intensity}",
        f"- sliding window {list(cfg.infer.roi_size or d.patch_size)}, overlap {cfg.infer.overlap:g}, "
        f"{cfg.infer.mode} weighting; inverted to the input grid, foreground where p > 0.5",
        "",
        "## Intended use and limits",
        "",
        _LIMITS,
        "",
        "## Versions",
        "",
        f"- git commit: {provenance.get('git_commit', 'unknown')}",
        *[f"- {k}: {v}" for k, v in (provenance.get("versions") or {}).items()],
        "",
    ]
    return "\n".join(out)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("warning: %s: unreadable (%s); the model card omits the CV summary", path, exc)
        return {}
    return value if isinstance(value, dict) else {}
