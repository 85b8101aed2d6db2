"""Build manifests from common data layouts.

Importers: :func:`import_glob` (any folder of images + labels), :func:`import_msd` (Medical
Segmentation Decathlon ``dataset.json``, e.g. Task07_Pancreas), :func:`import_nnunet` (nnU-Net v2
raw dataset folder) and :func:`import_nih` (NIH Pancreas-CT from TCIA: DICOM series + NIfTI
labels). Each writes the manifest atomically with :func:`pipeline.data.manifest.write_manifest` and
returns it as :func:`pipeline.data.manifest.read_manifest` reads it back. Layouts are described in
``data_manifests/README.md``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.constants import IMAGE_EXTENSIONS
from pipeline.core.errors import ManifestError
from pipeline.core.label_map import DEFAULT_CLASS_NAMES
from pipeline.data.manifest import (
    is_dicom_file,
    is_dicom_folder,
    read_manifest,
    resolve_path,
    strip_extension,
    write_manifest,
)
from pipeline.data.schema import check_case_id

__all__ = ["import_glob", "import_msd", "import_nnunet", "import_nih"]

_RENAME = "rename it (case ids are made from file names)"


def _folder(path: str | os.PathLike, what: str) -> Path:
    p = Path(os.path.abspath(path))
    if not p.is_dir():
        raise ManifestError(f"{p}: {what} folder not found")
    return p


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not a readable JSON file ({exc})") from None


def _write(rows: list[dict[str, str]], out_csv: str | os.PathLike) -> pd.DataFrame:
    """Write the rows (absolute paths) as a manifest and return it as read back."""
    df = pd.DataFrame(rows)
    df.attrs["root"] = Path("/")
    path = write_manifest(df, out_csv)
    return read_manifest(path, check_files=False)


def _binary_map(label_values: list[int]) -> str:
    """``"1:1,2:1"`` for labels with values other than {0, 1}; empty when they are already binary."""
    values = sorted(v for v in set(label_values) if v != 0)
    return "" if values in ([], [1]) else ",".join(f"{v}:1" for v in values)


def import_glob(
    folder: str | os.PathLike,
    out_csv: str | os.PathLike,
    image_glob: str = "images/*",
    label_dir: str | None = "labels",
    label_suffix: str = "",
    subject_regex: str | None = None,
) -> pd.DataFrame:
    """Manifest from a folder: images matched by a glob, labels of the same case name in a folder.

    Case names are file names without .nii.gz/.nii/.nrrd/.mha/.mhd (a DICOM series folder's name
    for folders). A label ``<case><label_suffix><ext>`` in ``label_dir`` belongs to image
    ``<case><ext>``; images without one get an empty label, labels without an image are ignored.
    Files in ``label_dir`` are never taken as images, so images and labels may share a folder.

    Args:
        folder: the data folder.
        out_csv: the manifest to write.
        image_glob: glob for images, relative to ``folder``; other file types are skipped.
        label_dir: label folder relative to ``folder`` (or absolute); None for no labels.
        label_suffix: text after the case name in label names, e.g. ``"_seg"``.
        subject_regex: regex searched in the case name; its first group (or the whole match) is
            the subject_id. Default: subject_id = case_id.

    Returns:
        The written manifest.

    Raises:
        ManifestError: no images, two images or labels for one case, an image whose name gives a
            case id :func:`pipeline.data.schema.case_id_problem` refuses, a missing label folder, or a
            regex that is invalid or does not match a case.
    """
    root = _folder(folder, "data")
    labels: dict[str, Path] = {}
    if label_dir is not None:
        ldir = resolve_path(label_dir, root)
        if not ldir.is_dir():
            raise ManifestError(
                f"{ldir}: label folder not found (pass label_dir=None for images without labels)"
            )
        for q in sorted(ldir.iterdir()):
            stem = strip_extension(q.name)
            if not q.is_file() or stem == q.name or not stem.endswith(label_suffix):
                continue
            case = stem[: len(stem) - len(label_suffix)]
            if case in labels:
                raise ManifestError(f"{ldir}: two labels for case {case}: {labels[case].name} and {q.name}")
            labels[case] = q
    label_files = set(labels.values())
    try:
        matches = sorted(root.glob(image_glob))
    except (ValueError, NotImplementedError) as exc:
        raise ManifestError(f"{root}: bad image_glob {image_glob!r} ({exc})") from None
    images: dict[str, Path] = {}
    for p in matches:
        if p in label_files or not (
            p.is_dir() and is_dicom_folder(p) or p.is_file() and strip_extension(p.name) != p.name
        ):
            continue
        case = check_case_id(p.name if p.is_dir() else strip_extension(p.name), p, hint=_RENAME)
        if case in images:
            raise ManifestError(f"{root}: two images for case {case}: {images[case].name} and {p.name}")
        images[case] = p
    if not images:
        raise ManifestError(
            f"{root}: no images match {image_glob!r} (looked for {', '.join(IMAGE_EXTENSIONS)} files and DICOM folders)"
        )
    try:
        rx = re.compile(subject_regex) if subject_regex else None
    except re.error as exc:
        raise ManifestError(
            f"subject_regex {subject_regex!r} is not a valid regular expression ({exc})"
        ) from None
    rows = []
    for case, image in images.items():
        subject = case
        if rx is not None:
            m = rx.search(case)
            subject = (m.group(1) if rx.groups else m.group(0)) if m else ""
            if not subject:
                raise ManifestError(
                    f"{image}: subject_regex {subject_regex!r} finds no subject in case name {case!r}"
                )
        label = labels.get(case)
        rows.append({"case_id": case, "subject_id": subject, "image": str(image), "label": str(label or "")})
    return _write(rows, out_csv)


def _class_name(value: int, names: dict) -> str:
    """Our name of an MSD label value: pancreas and tumour (MSD says "cancer") for 1 and 2, else the
    dataset's own name made into an identifier."""
    if value in DEFAULT_CLASS_NAMES:
        return DEFAULT_CLASS_NAMES[value]
    raw = re.sub(r"[^A-Za-z0-9_-]+", "_", str(names.get(str(value), "")).strip()).strip("_-").lower()
    return raw if raw[:1].isalpha() else f"class_{value}"


def import_msd(
    dataset_json: str | os.PathLike,
    out_csv: str | os.PathLike,
    keep_tumour: bool = False,
    include_test: bool = False,
) -> pd.DataFrame:
    """Manifest from a Medical Segmentation Decathlon ``dataset.json`` (e.g. Task07_Pancreas).

    Task07 labels are 0 background, 1 pancreas, 2 tumour. By default every foreground label
    becomes class 1 (``label_map`` ``"1:1,2:1"``: tumour merged into pancreas, as in the paper);
    ``keep_tumour`` keeps each value as its own class, named (``"1:pancreas,2:tumour"``, a 3-class
    problem: train it with ``data.class_names=[pancreas,tumour]`` and ``model.out_channels=3``). The
    label values come from the file's ``"labels"`` entry (1 and 2 when it is absent); values other
    than 1 and 2 are named after that entry (``"3:cyst"``).

    Args:
        dataset_json: the decathlon ``dataset.json``; its ``"training"`` paths are relative to it.
        out_csv: the manifest to write.
        keep_tumour: keep label values as separate classes instead of merging them.
        include_test: also add the ``"test"`` images (no labels).

    Returns:
        The written manifest (subject_id = case_id: the decathlon has one scan per patient).

    Raises:
        ManifestError: unreadable JSON, no ``"training"`` list, a listed file that is missing, or an
            image whose name gives a case id :func:`pipeline.data.schema.case_id_problem` refuses.
    """
    path = Path(os.path.abspath(dataset_json))
    data = _load_json(path)
    training = data.get("training") if isinstance(data, dict) else None
    if not isinstance(training, list) or not training:
        raise ManifestError(f"{path}: no 'training' list of {{'image': ..., 'label': ...}} entries")
    try:
        values = sorted({int(v) for v in data.get("labels", {"1": "", "2": ""})} - {0})
    except (TypeError, ValueError):
        raise ManifestError(f"{path}: 'labels' keys must be integer label values") from None
    names = data.get("labels", {}) if isinstance(data.get("labels"), dict) else {}
    label_map = ",".join(f"{v}:{_class_name(v, names) if keep_tumour else 1}" for v in values)
    entries = [(i, e) for i, e in enumerate(training, 1)]
    entries += [(i, {"image": e}) for i, e in enumerate(data.get("test", []) if include_test else [], 1)]
    rows = []
    for i, entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise ManifestError(f"{path}: entry {i} has no 'image' path: {entry!r}")
        image = Path(os.path.normpath(resolve_path(entry["image"], path.parent)))
        case = check_case_id(strip_extension(image.name), image, hint=_RENAME)
        row = {"case_id": case, "subject_id": case, "label": "", "label_map": label_map}
        for key in ("image", "label"):
            if entry.get(key):
                p = Path(os.path.normpath(resolve_path(entry[key], path.parent)))
                if not p.is_file():
                    raise ManifestError(f"{path}: entry {i} ({case}): {key} file not found: {entry[key]}")
                row[key] = str(p)
        rows.append(row)
    return _write(rows, out_csv)


def import_nnunet(raw_dir: str | os.PathLike, out_csv: str | os.PathLike) -> pd.DataFrame:
    """Manifest from an nnU-Net v2 raw dataset folder (``DatasetXXX_Name/``).

    Reads ``imagesTr/<case>_0000<ending>`` and ``labelsTr/<case><ending>``, where ``<ending>`` is
    ``dataset.json``'s ``"file_ending"`` (default ``.nii.gz``). Only channel 0000 is used (the
    model takes one CT channel). When ``dataset.json``'s ``"labels"`` has values other than
    0 and 1, every foreground value is mapped to class 1 via ``label_map``.

    Args:
        raw_dir: the dataset folder.
        out_csv: the manifest to write.

    Returns:
        The written manifest (subject_id = case_id; images without a label get an empty label).

    Raises:
        ManifestError: no ``imagesTr`` folder, no ``*_0000<ending>`` files in it, or one whose name
            gives a case id :func:`pipeline.data.schema.case_id_problem` refuses.
    """
    root = _folder(raw_dir, "nnU-Net raw dataset")
    info = _load_json(root / "dataset.json") if (root / "dataset.json").is_file() else {}
    ending = str(info.get("file_ending", ".nii.gz"))
    values = [v for v in (info.get("labels") or {}).values() if isinstance(v, int)]
    label_map = _binary_map(values)
    images = _folder(root / "imagesTr", "nnU-Net imagesTr")
    suffix = "_0000" + ending
    rows = []
    for p in sorted(images.iterdir()):
        if p.is_file() and p.name.endswith(suffix):
            case = check_case_id(p.name[: -len(suffix)], p, hint=_RENAME)
            label = root / "labelsTr" / f"{case}{ending}"
            row = {
                "case_id": case,
                "subject_id": case,
                "image": str(p),
                "label": str(label) if label.is_file() else "",
            }
            rows.append(dict(row, label_map=label_map))
    if not rows:
        raise ManifestError(f"{images}: no files named <case>{suffix}")
    return _write(rows, out_csv)


def import_nih(root: str | os.PathLike, out_csv: str | os.PathLike) -> pd.DataFrame:
    """Manifest from NIH Pancreas-CT as downloaded from TCIA.

    Series: folders that directly hold DICOM files (``.dcm`` or the ``DICM`` signature) with a
    ``PANCREAS_<nnnn>`` folder above them, e.g. ``Pancreas-CT/PANCREAS_0001/<study>/<series>/``.
    Labels: ``label<nnnn>.nii.gz`` (or ``.nii``) anywhere under ``root``, e.g.
    ``TCIA_pancreas_labels-02-05-2017/label0001.nii.gz``. Paired by the 4-digit number; a series
    without a label gets an empty label, labels without a series are ignored.

    Args:
        root: the download folder holding both.
        out_csv: the manifest to write.

    Returns:
        The written manifest: case_id = subject_id = ``PANCREAS_<nnnn>``, labels already {0, 1}.

    Raises:
        ManifestError: no series found, or two series or two labels with the same number.
    """
    base = _folder(root, "NIH Pancreas-CT")
    series: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        here = Path(dirpath)
        for name in filenames:
            m = re.fullmatch(r"label(\d{4})\.nii(\.gz)?", name, flags=re.IGNORECASE)
            if m:
                if m.group(1) in labels:
                    raise ManifestError(
                        f"{base}: two labels for case {m.group(1)}: {labels[m.group(1)]} and {here / name}"
                    )
                labels[m.group(1)] = here / name
        m = re.search(r"PANCREAS_(\d{4})", here.relative_to(base).as_posix(), flags=re.IGNORECASE)
        if m and any(is_dicom_file(here / f) for f in sorted(filenames)[:8]):
            if m.group(1) in series:
                raise ManifestError(
                    f"{base}: two DICOM series for PANCREAS_{m.group(1)}: {series[m.group(1)]} and {here}"
                )
            series[m.group(1)] = here
    if not series:
        raise ManifestError(f"{base}: no DICOM series found in a PANCREAS_<nnnn> folder")
    rows = []
    for num in sorted(series):
        case = f"PANCREAS_{num}"
        rows.append(
            {
                "case_id": case,
                "subject_id": case,
                "image": str(series[num]),
                "label": str(labels.get(num, "")),
            }
        )
    return _write(rows, out_csv)
