"""What ``pancreas-seg infer --input`` names: a scan file, a DICOM series folder, a folder of scans
and series folders, or a manifest CSV, turned into case records ``{"case_id", "image"}``.

A scan's case id is its file name without the extension (a series folder's name), as nnU-Net names
its outputs after its inputs. An id the manifest schema would refuse (``<img src=x>``,
``a:b``) stops the command before anything is written, naming the file: a mask's name must lead
back to its scan, so the id is not silently rewritten; a manifest CSV can give any scan another id.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.constants import IMAGE_EXTENSIONS
from pipeline.core.errors import ImageError
from pipeline.data.manifest import case_records, is_dicom_folder, read_manifest, strip_extension
from pipeline.data.schema import check_case_id

__all__ = ["discover_inputs"]


_HINT = "rename it, or list the scans in a manifest CSV with case ids of your own"


def _scan_record(path: Path) -> dict | None:
    """``{"case_id", "image"}`` for a scan file or series folder; None for anything else.

    Raises:
        ImageError: the name gives a case id :func:`pipeline.data.schema.case_id_problem` refuses.
    """
    if path.is_dir():  # its absolute name: `--input .` in a series folder is named after the folder
        case = Path(os.path.abspath(path)).name if is_dicom_folder(path) else None
    else:
        case = strip_extension(path.name)
        case = None if case == path.name or path.name.startswith(".") else case
    if case is None:
        return None
    return {"case_id": check_case_id(case, path, ImageError, _HINT), "image": str(path.resolve())}


def discover_inputs(path: str | os.PathLike) -> list[dict]:
    """Records ``{"case_id", "image"}`` from a scan file, a DICOM series folder, a folder of scans
    and series folders, or a manifest CSV (its labels, if any, are ignored).

    Raises:
        ImageError: nothing usable at ``path``, a scan whose name gives an unusable case id, or two
            scans that would get the same case id.
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
