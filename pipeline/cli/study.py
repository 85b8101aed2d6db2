"""``pancreas-seg statistics``, and the follow-up table ``infer`` and ``statistics`` write.

Heavy imports happen inside the handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.core.config import load_config
from pipeline.core.errors import ManifestError, UsageError
from pipeline.core.layout import OutputLayout

__all__ = ["cmd_statistics", "follow_up"]

log = logging.getLogger("pancreas_seg")


def _find_mask(folder: Path, case_id: str, image: str) -> Path | None:
    """``folder/<case_id>.<ext>``: the input's own ending first (as ``infer`` names masks), then any mask ending."""
    from pipeline.inference.writers import MASK_EXTENSIONS, output_path

    first = output_path(folder, case_id, image)
    found = [first] + [folder / f"{case_id}{ext}" for ext in MASK_EXTENSIONS]
    return next((p for p in found if p.is_file()), None)


def follow_up(records: list, out: OutputLayout, error_pct: float | None) -> None:
    """``longitudinal.csv`` from ``out``'s statistics, when a subject has scans at two or more dates."""
    import pandas as pd

    from pipeline.evaluation.longitudinal import longitudinal_table, write_longitudinal

    if not out.statistics.exists():
        return
    stats = pd.read_csv(out.statistics, dtype={"case_id": str, "acquisition_date": str})
    stats["acquisition_date"] = stats["acquisition_date"].fillna("")
    table = longitudinal_table(stats, records, error_pct)
    if len(table):
        log.info(
            "follow-up of %d subject(s): %s",
            table["subject_id"].nunique(),
            write_longitudinal(table, out.longitudinal),
        )


def cmd_statistics(args: argparse.Namespace) -> int:
    """Volume, HU, extent and border flag of existing masks on their scans (masks of any tool)."""
    import pandas as pd

    from pipeline.core.label_map import class_names
    from pipeline.data.manifest import case_records, read_manifest
    from pipeline.data.statistics import measure_files, write_statistics
    from pipeline.evaluation.longitudinal import measurement_error_pct

    cfg = load_config(args.config, args.overrides, fingerprint=False)
    error = measurement_error_pct(args.cv_summary) if args.cv_summary else None  # before any work
    records = case_records(read_manifest(args.manifest))
    masks = Path(args.masks)
    if not masks.is_dir():
        raise UsageError(f"{masks}: --masks must be a folder of masks named <case_id>.<ext>")
    rows, missing = [], []
    for r in records:
        mask = _find_mask(masks, r["case_id"], r["image"])
        if mask is None:
            missing.append(r["case_id"])
            continue
        rows += measure_files(r["image"], mask, class_names(cfg), r["case_id"], cfg.data.dicom_series)
    if not rows:
        raise ManifestError(f"{masks}: no masks found for the cases of {args.manifest} (<case_id>.<ext>)")
    if missing:
        log.warning("warning: no mask for %d case(s): %s", len(missing), ", ".join(missing[:10]))
    out = OutputLayout(args.out or masks)
    table = pd.DataFrame(rows)
    write_statistics(table, out.statistics, out.statistics_json)
    cols = ["case_id", "label", "voxels", "volume_ml", "hu_mean", "touches_border"]
    log.info("%s\nwrote %s", table[cols].to_string(index=False), out.statistics)
    follow_up(records, out, error)
    return 0
