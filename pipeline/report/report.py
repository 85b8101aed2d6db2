"""``pancreas-seg report``: a self-contained HTML report of a CV run or of an inference output folder.

Writes ``RUN/report.html`` and its PNG figures in ``RUN/report_files/`` (referenced relatively, so
the folder opens offline and can be moved or zipped as a whole). For a CV run:

* the summary table (mean ± std and median per metric, per fold and overall, ``cv_summary.json``);
* training curves (loss, validation Dice, learning rate) from each fold's ``log.csv``;
* the per-case table, sortable by clicking a header, worst Dice first, with inference times;
* for the worst ``max_cases`` cases, axial/coronal/sagittal slices through the label's centroid
  on the canonical grid with the label (green) and prediction (magenta) contours;
* for the worst few of them, each attention gate's coefficients on the axial slice (the paper's
  Figure 3), computed with the best checkpoint of the fold that held the case out.

Study sections (volume agreement, QC against Dice, review list, follow-up): :mod:`pipeline.report.study`.

For an inference folder (masks + ``timings.csv``): the timings table and the prediction overlays
(the scans come from ``--manifest``, or the folder's ``manifest.csv``/``inputs.csv`` if present;
without them the masks are drawn on black).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pandas as pd
import yaml

from models import build_model, count_parameters
from pipeline.core.config import Config, load_config
from pipeline.core.errors import CheckpointError, ConfigError, ImageError, ManifestError, UsageError, writing
from pipeline.core.fileio import atomic_outputs
from pipeline.core.label_map import class_names
from pipeline.core.layout import FoldLayout, OutputLayout, RunLayout, fold_name, report_link
from pipeline.core.runtime import select_device
from pipeline.data.manifest import case_records, read_manifest
from pipeline.data.schema import check_case_id
from pipeline.evaluation.evaluate import METRICS, join_fold_timings, read_fold_metrics, read_table, summarize
from pipeline.inference.loading import load_network
from pipeline.inference.writers import MASK_EXTENSIONS, PROBABILITY_TAG, output_path
from pipeline.report.cases import load_case, write_attention_views, write_case_views
from pipeline.report.classes import class_table
from pipeline.report.figures import colorbar_png, plot_curves
from pipeline.report.page import (
    attention_block,
    esc,
    figure,
    fmt,
    legend,
    page,
    section,
    summary_table,
    table,
    views_block,
)
from pipeline.report.study import cv_study_sections, infer_study_sections

__all__ = ["write_report", "ATTENTION_CASES"]

log = logging.getLogger("pancreas_seg")
ATTENTION_CASES = 4  # attention maps for this many of the worst cases (one network pass each)


def write_report(
    run: str | os.PathLike, manifest: str | os.PathLike | None = None, max_cases: int = 12
) -> Path:
    """Write ``RUN/report.html`` (+ ``RUN/report_files/``) for a CV run or an inference folder.

    Args:
        run: the CV run folder, or an inference output folder.
        manifest: the cases' scans and labels; default ``RUN/manifest.csv`` (written by ``cv``),
            then ``RUN/inputs.csv``.
        max_cases: overlays for at most this many cases (worst Dice first).

    Returns:
        The path of ``report.html``.

    Raises:
        UsageError: ``run`` is no folder, neither a CV run nor an inference output, or a CV run with
            no finished fold yet; ``max_cases`` < 0.
        ManifestError: an unreadable manifest.
        ImageError: a scan, label or mask cannot be read, or a mask's name gives a case id that
            :func:`pipeline.data.schema.case_id_problem` refuses (checked before anything is written).
        CheckpointError: a fold's best checkpoint is unreadable.
        OutputError: the report cannot be written (names the file); the previous report is kept.
    """
    run = Path(run)
    if not run.is_dir():
        raise UsageError(f"{run}: no such run folder")
    if max_cases < 0:
        raise UsageError(f"--max-cases must be 0 or more, got {max_cases}")
    layout, folds_metrics = RunLayout(run), FoldLayout(fold_name("*")).metrics  # fold_*/metrics.csv
    folds = layout.folds()
    is_cv = layout.cv_summary.exists() or any(f.metrics.exists() for f in folds)
    if not is_cv and folds:
        raise UsageError(f"{run}: no finished fold yet (no {folds_metrics}); report again when one is done")
    masks = {} if is_cv else _masks(run)
    if not is_cv and not masks:
        raise UsageError(
            f"{run}: neither a CV run (no {layout.cv_summary.name} or {folds_metrics}) nor an inference "
            "output (no masks)"
        )
    records, source = _records(run, manifest)
    html = layout.report
    with atomic_outputs() as out:  # the figures' folder, then the page, renamed into place together
        files = out.folder(layout.report_files)
        with writing(html):  # a failure other than a figure's write: one line naming the report
            if is_cv:
                body = _cv_body(run, records, source, max_cases, files)
            else:
                body = _infer_body(run, masks, records, source, max_cases, files)
        text = page(f"pancreas-seg report: {run.resolve().name}", body)
        out.write(html, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return html


def _records(run: Path, manifest: str | os.PathLike | None) -> tuple[dict, str]:

    candidates = [Path(manifest)] if manifest else [RunLayout(run).manifest, OutputLayout(run).inputs]
    for path in candidates:
        if manifest or path.exists():
            return {r["case_id"]: r for r in case_records(read_manifest(path))}, str(path)
    return {}, ""


def _masks(run: Path) -> dict[str, Path]:
    """``{case_id: mask}`` of an inference folder; the ids come from the file names, under the
    manifest's rule for ids (a refused one is an error, as ``infer`` would have refused it)."""
    found = {}
    for p in sorted(run.iterdir()):
        for end in MASK_EXTENSIONS:
            if p.is_file() and p.name.endswith(end) and not p.name.startswith("."):
                case = p.name[: -len(end)]
                # probability maps: <case>_prob, or <case>_prob_<class> with several classes
                if not re.search(rf"{PROBABILITY_TAG}(_[A-Za-z][\w-]*)?$", case):
                    found[check_case_id(case, p, ImageError, "rename it or move it out of the folder")] = p
                break
    return found


def _stem(i: int, case_id: str) -> str:
    return f"{i:02d}_{re.sub(r'[^A-Za-z0-9._-]', '_', case_id)[:60]}"


def _anchor(case_id: str) -> str:
    return "case-" + re.sub(r"[^A-Za-z0-9_-]", "_", case_id)


def _run_config(run: Path) -> tuple[Config, dict]:
    path = RunLayout(run).config
    if not path.exists():
        log.warning("warning: %s missing; using the default config for the canonical grid", path)
        return Config(), {}
    provenance = (yaml.safe_load(path.read_text()) or {}).get("provenance") or {}
    return load_config(path), provenance


def _cv_metrics(run: Path) -> pd.DataFrame:
    """``cv_metrics.csv``, else (a run in progress) every fold's ``metrics.csv``; worst Dice first."""
    layout = RunLayout(run)
    if layout.cv_metrics.exists():
        df = read_table(layout.cv_metrics)
    else:
        df = read_fold_metrics(layout, require_done=False)
    if df.empty:
        raise ManifestError(f"{run}: no per-case metrics yet; report again when a fold is done")
    df = join_fold_timings(df, layout)
    return df.sort_values("dice", kind="stable").reset_index(drop=True)


def _cv_tables(
    run: Path, cfg: Config, prov: dict, metrics: pd.DataFrame, links: dict, has_scans: bool, tmp: Path
) -> list[str]:
    """Title, run line, summary table, training curves and the per-case table."""
    summary_path = RunLayout(run).cv_summary
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else summarize(metrics)
    params = count_parameters(build_model(cfg.model))
    info = (
        f"model <b>{esc(cfg.model.name)}</b> ({params:,} parameters, channels {esc(cfg.model.channels)}) · "
        f"{cfg.train.epochs} epochs · spacing {esc(cfg.data.target_spacing)} mm · "
        f"patch {esc(cfg.data.patch_size)} · {summary.get('n_cases', len(metrics))} cases · "
        f"git {esc(str(prov.get('git_commit', 'unknown'))[:10])}"
    )
    body = [f"<h1>Cross-validation report: {esc(run.resolve().name)}</h1>", f'<p class="meta">{info}</p>']
    body.append(section("Summary", "summary", summary_table(summary, METRICS)))
    if "class" in metrics and summary.get("per_class"):
        body.append(section("Per class", "classes", class_table(summary, METRICS)))
    logs = {f"fold {f.k}": pd.read_csv(f.log) for f in RunLayout(run).folds() if f.log.exists()}
    if logs:
        plot_curves(logs, tmp / "curves.png")
        body.append(section("Training curves", "curves", figure(report_link("curves.png"), alt="curves")))
    extra = ("label_voxels", "pred_voxels", "infer_s", "flag")
    cols = [c for c in ("case_id", "fold", "class", *METRICS, *extra) if c in metrics]
    note = (
        ""
        if has_scans
        else '<p class="note">No manifest found (pass --manifest): overlays need the scans.</p>'
    )
    body.append(
        section("Cases (click a header to sort)", "cases", table(metrics[cols], True, "cases", links), note)
    )
    return body


def _fold_network(run: Path, fold: int, cfg: Config, nets: dict, notes: list[str]):
    """The best network of ``fold`` (cached in ``nets``), or None with a note when unreadable."""
    if fold not in nets:
        try:
            nets[fold] = load_network(RunLayout(run).fold(fold).best, expect=cfg.model)[0]
        except CheckpointError as exc:
            log.warning("warning: %s; no attention maps for fold %d", exc, fold)
            notes.append(f'<p class="note">{esc(exc)}</p>')
            nets[fold] = None
    return nets[fold]


def _cv_body(run: Path, records: dict, source: str, max_cases: int, tmp: Path) -> list[str]:

    cfg, prov = _run_config(run)
    metrics = _cv_metrics(run)
    shown = metrics.drop_duplicates("case_id").head(max_cases)  # a case's worst class decides
    links = {c: "#" + _anchor(c) for c in shown["case_id"] if c in records}
    body = _cv_tables(run, cfg, prov, metrics, links, bool(records), tmp)
    body += cv_study_sections(run, metrics, tmp)  # volume agreement, QC score against Dice
    gated = cfg.model.name != "unet"
    overlays, attention, nets = [legend(class_names(cfg))], [], {}
    try:
        device = select_device(cfg.perf)
    except ConfigError:  # a run trained on a GPU, reported on a machine without one
        device = "cpu"
    for i, row in enumerate(shown.itertuples(index=False)):
        rec, fold = records.get(row.case_id), int(row.fold)
        if rec is None:
            overlays.append(f'<p class="note">{esc(row.case_id)}: not in {esc(source or "any manifest")}</p>')
            continue
        pred = output_path(RunLayout(run).fold(fold).predictions, row.case_id, rec["image"])
        pred = pred if pred.exists() else None
        vols = load_case(cfg, row.case_id, rec["image"], rec.get("label"), pred, rec.get("label_map", ""))
        title = (
            f"{esc(row.case_id)} · fold {fold} · Dice {fmt(row.dice)} · HD95 {fmt(row.hd95_mm, 1)} mm · "
            f"ASSD {fmt(row.assd_mm, 1)} mm"
        )
        views = write_case_views(vols, tmp, _stem(i, row.case_id))
        overlays.append(views_block(views, vols.image_hu.shape, title, _anchor(row.case_id)))
        net = _fold_network(run, fold, cfg, nets, attention) if gated and i < ATTENTION_CASES else None
        result = (
            None if net is None else write_attention_views(net, vols, cfg, tmp, _stem(i, row.case_id), device)
        )
        if result is not None:
            attention.append(attention_block(result, title, _anchor(row.case_id)))
    body.append(section(f"Worst {len(shown)} cases: prediction and label", "overlays", *overlays))
    if not gated:
        attention.append(
            '<p class="note">This run used model.name: unet (the plain U-Net baseline): it has no attention '
            "gates, so there are no attention maps.</p>"
        )
    elif attention:
        colorbar_png(tmp / "colorbar.png")
        intro = (
            '<p class="meta">Each gate\'s attention coefficients α, upsampled to the network window centred on '
            "the pancreas, on the axial slice through it, with the label contour in white; best checkpoint of "
            f"the fold that held the case out. Worst {min(len(shown), ATTENTION_CASES)} cases.</p>"
        )
        attention.insert(0, intro + figure(report_link("colorbar.png"), alt="colour bar"))
    body.append(section("Attention maps", "attention", *attention))
    return body


def _infer_body(run: Path, masks: dict, records: dict, source: str, max_cases: int, tmp: Path) -> list[str]:

    body = [f"<h1>Inference report: {esc(run.resolve().name)}</h1>"]
    body.append(
        f'<p class="meta">{len(masks)} masks · scans from {esc(source or "nowhere: no manifest given")}</p>'
    )
    timings_path = OutputLayout(run).timings
    if timings_path.exists():
        t = pd.read_csv(timings_path)
        mean = t.drop(columns=["case_id"]).mean(numeric_only=True)
        t = pd.concat([t, pd.DataFrame([{"case_id": "mean", **mean.to_dict()}])], ignore_index=True)
        body.append(
            section("Timings (seconds; peak RSS in MB)", "timings", table(t, True, "timings", digits=3))
        )
    order = list(pd.read_csv(timings_path)["case_id"].astype(str)) if timings_path.exists() else []
    order = [c for c in order if c in masks] + [c for c in masks if c not in order]
    study, order = infer_study_sections(run, tmp, order, _anchor)  # cases to review first
    body += study
    overlays = [legend()]
    if not records:
        overlays.append(
            '<p class="note">No manifest: the masks are drawn on black. Pass --manifest to see the scans.</p>'
        )
    cfg = Config()  # an inference folder does not keep the model's config: the default grid for display
    for i, case in enumerate(order[:max_cases]):
        rec = records.get(case, {})
        vols = load_case(cfg, case, rec.get("image"), rec.get("label"), masks[case], rec.get("label_map", ""))
        overlays.append(
            views_block(
                write_case_views(vols, tmp, _stem(i, case)), vols.image_hu.shape, esc(case), _anchor(case)
            )
        )
    body.append(section("Predictions", "overlays", *overlays))
    return body
