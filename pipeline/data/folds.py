"""Cross-validation folds: grouped by subject, balanced, reproducible; nnU-Net ``splits_final.json`` interop."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import ManifestError, UsageError
from pipeline.core.fileio import atomic_write_text
from pipeline.data.importers import _load_json
from pipeline.data.manifest import _normalise, _root, _text, validate_manifest

__all__ = ["assign_folds", "describe_folds", "read_splits", "write_splits"]


def assign_folds(df: pd.DataFrame, k: int, seed: int = 0) -> pd.DataFrame:
    """Assign ``k`` cross-validation folds, grouped by subject; existing folds are always replaced.

    Subjects (sorted, then shuffled with ``numpy.random.default_rng(seed)``) go one by one to the
    fold with the fewest subjects, ties broken by fewest cases, then lowest fold index. So a
    subject never spans two folds, fold sizes differ by at most one subject, and the same
    subjects and seed always give the same folds, whatever the row order.

    Args:
        df: the manifest (needs ``case_id`` and ``subject_id``).
        k: number of folds, 2 <= k <= number of subjects.
        seed: shuffling seed.

    Returns:
        A copy of ``df`` (all :data:`COLUMNS`, attrs kept) with ``fold`` set for every row.

    Raises:
        UsageError: ``k`` is below 2.
        ManifestError: more folds than subjects, or the table lacks ``subject_id``.
    """
    source = str(df.attrs.get("path", "manifest"))
    if "subject_id" not in df.columns or len(df) == 0:
        raise ManifestError(f"{source}: cannot assign folds without cases and a subject_id column")
    subject_of = [_text(s) for s in df["subject_id"].tolist()]
    subjects = sorted(set(subject_of))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise UsageError(f"{source}: cannot assign {k!r} folds; cross-validation needs k >= 2")
    if k > len(subjects):
        raise ManifestError(
            f"{source}: cannot assign {k} folds to {len(subjects)} subjects; use k <= {len(subjects)}"
        )
    cases = {s: subject_of.count(s) for s in subjects}
    n_subjects, n_cases, fold_of = [0] * k, [0] * k, {}
    for idx in np.random.default_rng(seed).permutation(len(subjects)):
        subject = subjects[int(idx)]
        best = min(range(k), key=lambda f: (n_subjects[f], n_cases[f], f))
        fold_of[subject] = best
        n_subjects[best] += 1
        n_cases[best] += cases[subject]
    out = df.copy()
    out["fold"] = pd.array([fold_of[s] for s in subject_of], dtype="Int64")
    out = _normalise(out, _root(df, None))
    out.attrs.update({key: val for key, val in df.attrs.items() if key not in out.attrs})
    return out


def describe_folds(df: pd.DataFrame) -> str:
    """A short table for people: cases and subjects per fold (``-`` = unassigned) and the total."""
    folds = [_text(v) or "-" for v in (df["fold"] if "fold" in df.columns else [""] * len(df))]
    table = pd.DataFrame({"fold": folds, "case": [_text(c) for c in df["case_id"]]})
    table["subject"] = [_text(s) for s in df["subject_id"]]
    lines = [f"{'fold':>5} {'cases':>6} {'subjects':>9}"]
    for fold in sorted(set(folds), key=lambda f: (f == "-", float(f) if f != "-" else 0.0)):
        part = table[table["fold"] == fold]
        lines.append(f"{fold:>5} {len(part):>6} {part['subject'].nunique():>9}")
    lines.append(f"{'total':>5} {len(table):>6} {table['subject'].nunique():>9}")
    return "\n".join(lines)


def read_splits(path: str | os.PathLike, df: pd.DataFrame) -> pd.DataFrame:
    """Folds from nnU-Net's ``splits_final.json``: the validation cases of split ``k`` get fold ``k``.

    Cases named in no validation set get an empty fold.

    Args:
        path: ``splits_final.json`` (a list of ``{"train": [...], "val": [...]}``).
        df: the manifest whose ``case_id`` values the splits name.

    Returns:
        A copy of ``df`` with ``fold`` replaced.

    Raises:
        ManifestError: malformed file, a case in two validation sets or not in the manifest, or
            a subject whose cases land in different folds.
    """
    path = Path(os.path.abspath(path))
    splits = _load_json(path)
    if not isinstance(splits, list) or not all(
        isinstance(s, dict) and isinstance(s.get("val"), list) for s in splits
    ):
        raise ManifestError(f"{path}: expected a list of {{'train': [...], 'val': [...]}} splits")
    cases = {str(c).strip() for c in df["case_id"]}
    fold_of: dict[str, int] = {}
    for k, split in enumerate(splits):
        for case in map(str, split["val"]):
            if case not in cases:
                raise ManifestError(f"{path}: split {k} names case {case}, which is not in the manifest")
            if case in fold_of:
                raise ManifestError(
                    f"{path}: case {case} is in the validation sets of splits {fold_of[case]} and {k}"
                )
            fold_of[case] = k
    out = df.copy()
    out["fold"] = pd.array([fold_of.get(str(c).strip()) for c in df["case_id"]], dtype="Int64")
    out.attrs = dict(df.attrs)
    source = f"{path} applied to {df.attrs.get('path', 'the manifest')}"
    validate_manifest(out, df.attrs.get("root", Path.cwd()), source=source, check_files=False)
    return out


def write_splits(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write nnU-Net's ``splits_final.json`` from the ``fold`` column (rows without a fold are left out).

    Args:
        df: a manifest with folds 0..K-1, each non-empty.
        path: the JSON file to write (atomically).

    Returns:
        The written path.

    Raises:
        ManifestError: no folds assigned, or a fold number between 0 and the largest has no cases.
    """
    folds = [
        None if pd.isna(f) else int(f) for f in (df["fold"] if "fold" in df.columns else [None] * len(df))
    ]
    cases = [str(c).strip() for c in df["case_id"]]
    if all(f is None for f in folds):
        raise ManifestError(f"{path}: the manifest has no folds; assign them first (pancreas-seg folds)")
    splits = []
    for k in range(max(f for f in folds if f is not None) + 1):
        val = [c for c, f in zip(cases, folds) if f == k]
        if not val:
            raise ManifestError(f"{path}: fold {k} has no cases; nnU-Net needs folds numbered 0..K-1")
        splits.append({"train": [c for c, f in zip(cases, folds) if f is not None and f != k], "val": val})
    return atomic_write_text(path, json.dumps(splits, indent=4) + "\n")
