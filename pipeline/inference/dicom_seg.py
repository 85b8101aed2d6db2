"""DICOM SEG output for DICOM series inputs (``infer.dicom_seg``), through highdicom.

The SEG object references the source series (study, series and each slice's SOP instance) and
carries one binary segment per class on the source slices, so a PACS or viewer shows it on top of
the scan. Segment k is class k of the label map; its codes (:func:`segment_codes`):

- pancreas: category Anatomical Structure (SCT 91723000), type Pancreas (SCT 15776009);
- tumour: category Morphologically Abnormal Structure (SCT 49755003), type Neoplasm (SCT 108369006),
  anatomic region Pancreas (SCT 15776009). Not "Neoplasm of pancreas" (SCT 126859007): that concept
  is a disorder (a diagnosis), while a SEG's property type names what the voxels are, a morphologic
  structure, and DICOM's segmentation categories (CID 7150) file lesions as a morphologically abnormal
  structure whose type is the morphology and whose anatomic region is the organ;
- any other class name: category Tissue, type Tissue (SCT 85756007), labelled with the name. highdicom is optional: :func:`require_highdicom` raises a
one-line error when it is asked for and missing.

Anonymised series sometimes blank the identifiers in the dataset itself; the SOP Class/Instance
UIDs are then taken from each file's meta header (the same values by definition), and a missing
Study or Series Instance UID is replaced by one derived from the instance UIDs, with a warning:
viewers then cannot link the SEG to the series by those two UIDs.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from pipeline import __version__
from pipeline.core.errors import ConfigError, ImageError
from pipeline.core.fileio import atomic_write
from pipeline.core.geometry import spacing_from_affine
from transforms import list_dicom_series

__all__ = ["require_highdicom", "segment_codes", "write_dicom_seg", "SEG_SUFFIX"]

log = logging.getLogger("pancreas_seg")
SEG_SUFFIX = "_seg.dcm"
_TOL_MM = 1e-2  # positions in DICOM are decimal strings; ITK's affine comes from them


def require_highdicom():
    """The ``highdicom`` module.

    Raises:
        ConfigError: highdicom is not installed.
    """
    try:
        import highdicom

        logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every attribute it copies
    except ImportError:
        raise ConfigError(
            "config key infer.dicom_seg: DICOM SEG output needs the highdicom package "
            "(pip install highdicom); run without it to get the NIfTI mask only"
        ) from None
    return highdicom


def _series_files(folder: str, series_uid: str) -> list[str]:

    series = list_dicom_series(folder)
    if len(series) > 1:
        series = [s for s in series if series_uid and series_uid in (s["uid"], s["id"])]
    if len(series) != 1:
        raise ImageError(
            f"{folder}: cannot tell which DICOM series the mask belongs to (set data.dicom_series)"
        )
    return list(series[0]["files"])


def _read_sources(files: list[str], folder: str) -> list:
    """The source datasets (headers only), with blank identifiers filled in (see the module doc)."""
    import pydicom
    from pydicom.uid import generate_uid

    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    filled = set()
    for ds in datasets:
        if "SpecificCharacterSet" in ds and not str(ds.SpecificCharacterSet or "").strip():
            del ds.SpecificCharacterSet  # empty means the default repertoire; highdicom refuses ''
        meta = getattr(ds, "file_meta", None)
        for key, meta_key in (
            ("SOPClassUID", "MediaStorageSOPClassUID"),
            ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        ):
            if not str(ds.get(key, "") or "").strip():
                value = str(meta.get(meta_key, "") or "").strip() if meta is not None else ""
                if not value:
                    raise ImageError(
                        f"{folder}: a slice has no {key} (not even in its file meta); cannot write a DICOM SEG"
                    )
                setattr(ds, key, value)
    entropy = [str(ds.SOPInstanceUID) for ds in datasets]
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(key, "") or "").strip() for ds in datasets}
        if values == {""}:
            uid = generate_uid(entropy_srcs=[key, *entropy])
            for ds in datasets:
                setattr(ds, key, uid)
            filled.add(key)
    if filled:
        log.warning(
            "warning: %s: the series has no %s; the DICOM SEG uses generated ones, so viewers may not link it "
            "to the scan by them",
            folder,
            ", ".join(sorted(filled)),
        )
    return datasets


def _frames(mask: np.ndarray, affine: np.ndarray, datasets: list, folder: str) -> np.ndarray:
    """One (rows, columns) frame per source dataset, matched by each slice's position."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    spacing = spacing_from_affine(lps)
    inv = np.linalg.inv(lps)
    frames = []
    for ds in datasets:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        ijk = inv @ np.append(np.asarray(ds.ImagePositionPatient, dtype=np.float64), 1.0)
        k = int(round(ijk[2]))
        same_axes = np.allclose(iop[:3], lps[:3, 0] / spacing[0], atol=1e-3) and np.allclose(
            iop[3:], lps[:3, 1] / spacing[1], atol=1e-3
        )
        on_grid = np.all(np.abs(ijk[:3] - [0, 0, k]) * spacing < _TOL_MM + 1e-3 * spacing)
        if (
            not (same_axes and on_grid and 0 <= k < mask.shape[2])
            or (ds.Rows, ds.Columns) != mask.shape[1::-1]
        ):
            raise ImageError(
                f"{folder}: slice {ds.get('InstanceNumber', '?')} does not lie on the mask's grid"
            )
        frames.append(mask[:, :, k].T)  # MONAI arrays are (column, row, slice); a frame is (row, column)
    return np.stack(frames)


def segment_codes(name: str) -> dict:
    """The SEG codes of a class: ``{"category", "type", "regions"}`` (pydicom ``Code``s; see the module doc)."""
    from pydicom.sr.codedict import codes

    key = name.lower()
    if key == "pancreas":
        return {"category": codes.cid7150.AnatomicalStructure, "type": codes.SCT.Pancreas, "regions": None}
    if key in ("tumour", "tumor", "lesion", "neoplasm", "cancer"):
        return {
            "category": codes.cid7150.MorphologicallyAbnormalStructure,
            "type": codes.SCT.Neoplasm,
            "regions": [codes.SCT.Pancreas],
        }
    return {"category": codes.cid7150.Tissue, "type": codes.SCT.Tissue, "regions": None}


def write_dicom_seg(
    mask: np.ndarray,
    affine: np.ndarray,
    series_folder: str | os.PathLike,
    out_path: str | os.PathLike,
    series_uid: str = "",
    class_names: dict[int, str] | None = None,
) -> Path:
    """Write ``mask`` (on the series' grid, as :class:`~pipeline.inference.predictor.Predictor` returns it) as a
    DICOM SEG that references the series in ``series_folder``; atomically.

    Args:
        mask: label map (X, Y, Z) in the ITK reader's voxel order, values 0..K.
        affine: the series' RAS affine (as loaded).
        series_folder: the DICOM series folder the mask was predicted from.
        out_path: the ``.dcm`` file to write.
        series_uid: which series, when the folder holds several (``data.dicom_series``).
        class_names: ``{label value: name}`` (:func:`pipeline.core.label_map.class_names`), one
            segment each, numbered as the labels; None: ``{1: "pancreas"}``.

    Returns:
        ``out_path``.

    Raises:
        ConfigError: highdicom is not installed. ImageError: the slices do not match the mask's grid
            or lack the identifiers a SEG must reference. OutputError: the file cannot be written.
    """
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    folder = str(series_folder)
    datasets = _read_sources(_series_files(folder, series_uid), folder)
    names = dict(class_names or {1: "pancreas"})
    frames = _frames(np.asarray(mask), affine, datasets, folder)
    # (frames, rows, columns, segments): segment k holds the voxels of label k
    pixels = np.stack([frames == k for k in names], axis=-1).astype(np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="pancreas-seg attention U-Net",
        version=str(__version__),
        family=codes.cid7162.ArtificialIntelligence,
    )
    segments = []
    for number, name in enumerate(names.values(), 1):
        code = segment_codes(name)
        segments.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name.capitalize(),
                segmented_property_category=code["category"],
                segmented_property_type=code["type"],
                anatomic_regions=code["regions"],
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's remarks on the source's values (person names ...)
        try:
            seg = hd.seg.Segmentation(
                source_images=datasets,
                pixel_array=pixels,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=segments,
                series_instance_uid=hd.UID(),
                series_number=int(datasets[0].get("SeriesNumber") or 0) + 1000,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="pancreas-seg",
                manufacturer_model_name="Attention U-Net (Oktay et al. 2018)",
                software_versions=str(__version__),
                device_serial_number="0",
                series_description="pancreas-seg: " + ", ".join(names.values()),
                omit_empty_frames=bool(pixels.any()),  # an empty mask still gets its frames
            )
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ImageError(
                f"{folder}: cannot build a DICOM SEG for this series ({' '.join(str(exc).split())[:200]})"
            ) from None
    out_path = Path(out_path)
    atomic_write(out_path, lambda tmp: seg.save_as(str(tmp)))
    return out_path
