"""What ``pancreas-seg infer --input`` names: a scan file, a DICOM series folder, a folder of scans
and series folders, or a manifest CSV, turned into case records ``{"case_id", "image"}``."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.errors import ImageError
from pipeline.data.manifest import IMAGE_EXTENSIONS, case_records, is_dicom_folder, read_manifest

__all__ = ["discover_inputs"]


def _scan_record(path: Path) -> dict | None:
    if path.is_dir():
        return {"case_id": path.name, "image": str(path.resolve())} if is_dicom_folder(path) else None
    low = path.name.lower()
    for end in IMAGE_EXTENSIONS:
        if low.endswith(end) and not path.name.startswith("."):
            return {"case_id": path.name[: -len(end)], "image": str(path.resolve())}
    return None


def discover_inputs(path: str | os.PathLike) -> list[dict]:
    """Records ``{"case_id", "image"}`` from a scan file, a DICOM series folder, a folder of scans
    and series folders, or a manifest CSV (its labels, if any, are ignored).

    Raises:
        ImageError: nothing usable at ``path``, or two scans that would get the same case id.
        ManifestError: a manifest that does not validate.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return case_records(read_manifest(path))
    if not path.exists():
        raise ImageError(f"{path}: no such file or folder")
    one = _scan_record(path)
    if one is not None:
        return [one]
    if path.is_file():
        kinds = ", ".join(IMAGE_EXTENSIONS)
        raise ImageError(f"{path}: not a scan (expected {kinds}, a DICOM series folder or a manifest .csv)")
    records = [r for p in sorted(path.iterdir()) if (r := _scan_record(p)) is not None]
    if not records:
        raise ImageError(f"{path}: no scans found (NIfTI, NRRD, MHA or DICOM series folders)")
    seen: dict[str, str] = {}
    for r in records:
        if r["case_id"] in seen:
            raise ImageError(
                f"{path}: {Path(seen[r['case_id']]).name} and {Path(r['image']).name} would both be "
                f"case {r['case_id']}; rename one or list the cases in a manifest"
            )
        seen[r["case_id"]] = r["image"]
    return records
