"""Loading CT scans and labels through MONAI's readers, with checks that name the file.

Readers (all from ``monai.data``):

- a folder is a DICOM series, read by ITK (:class:`DicomSeriesReader`, an ``ITKReader`` that picks
  the series). ITK applies RescaleSlope/RescaleIntercept, orders slices by position and takes the
  slice spacing from the positions, not from SliceThickness.
- ``.nii``/``.nii.gz`` are read by :class:`NiftiReader`, MONAI's ``NibabelReader`` without its header
  "correction". It uses nibabel's ``img.affine``: the sform when sform_code > 0, else the qform, as
  the NIfTI standard says, so files with qform_code 0 and sform_code 2 get the right geometry.
  MONAI's correction (and ITK's reader) would take the voxel size from pixdim, i.e. from the stale
  qform, when pixdim disagrees with the sform.
- everything else (NRRD, MHA/MHD, single DICOM files) is read by ``ITKReader``.

Both readers give the affine in RAS world coordinates (ITK's LPS is converted), so images and labels
from different formats can be compared and reoriented with the same code.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ITKReader, MetaTensor, NibabelReader
from monai.transforms import LoadImage, MapTransform, Orientation

from pipeline.errors import ImageError

__all__ = ["DicomSeriesReader", "NiftiReader", "LoadCTd", "list_dicom_series", "describe_grid", "load_volume"]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Tolerance for "same grid" between an image and its label, as a fraction of the smallest voxel
# size: file formats store geometry in float32, so exact equality is too strict, while any real
# misalignment is a sizeable fraction of a voxel.
_GRID_TOL = 1e-2


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def c_ordered(arr: np.ndarray, dtype: torch.dtype | None = None) -> np.ndarray:
    """A C-ordered copy of ``arr`` (readers give Fortran order), cast to ``dtype`` on the way.

    MONAI's ``LoadImage`` would make the array contiguous with ``np.ascontiguousarray``, a 3-D
    transpose that takes ~0.7 s for a 512x512x200 scan; copying slabs of 16 slices through torch is
    cache-friendly and about three times faster, and does the cast in the same pass.
    """
    arr = np.asarray(arr)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    src = torch.from_numpy(arr) if arr.flags.writeable else torch.from_numpy(arr.copy())
    dtype = dtype or src.dtype
    if src.is_contiguous() and src.dtype == dtype:
        return arr
    out = torch.empty(src.shape, dtype=dtype)
    if src.ndim >= 3:
        for z0 in range(0, src.shape[2], 16):
            out[:, :, z0 : z0 + 16].copy_(src[:, :, z0 : z0 + 16])
    else:
        out.copy_(src)
    return out.numpy()


class _COrderMixin:
    """Reader mixin: ``get_data`` returns a C-ordered array, cast to ``out_dtype`` (None: as stored)."""

    out_dtype: torch.dtype | None = None

    def get_data(self, img):
        data, meta = super().get_data(img)
        return c_ordered(data, self.out_dtype), meta


class _ITKReader(_COrderMixin, ITKReader):
    pass


def list_dicom_series(folder: str | os.PathLike) -> list[dict]:
    """List the DICOM series in a folder (not recursive).

    Args:
        folder: a folder of DICOM files.

    Returns:
        One dict per series: ``uid`` (SeriesInstanceUID, may be empty in anonymised data), ``id``
        (ITK's series identifier, the UID plus acquisition details), ``files`` (sorted by slice
        position), ``num_slices``.
    """
    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(True)  # as MONAI's ITKReader: split series that differ in geometry
    names.AddSeriesRestriction("0008|0021")  # series date
    names.SetDirectory(str(folder))
    series = []
    for sid in names.GetSeriesUIDs():
        files = list(names.GetFileNames(sid))
        io = itk.GDCMImageIO.New()
        io.SetFileName(files[0])
        io.ReadImageInformation()
        meta = io.GetMetaDataDictionary()
        uid = str(meta["0020|000e"]).strip().rstrip("\x00") if meta.HasKey("0020|000e") else ""
        series.append({"uid": uid, "id": str(sid), "files": files, "num_slices": len(files)})
    return series


def _series_label(s: dict) -> str:
    name = s["uid"] or f"<no SeriesInstanceUID, id {s['id']}>"
    return f"{name} ({s['num_slices']} slices)"


class DicomSeriesReader(_COrderMixin, ITKReader):
    """MONAI's ``ITKReader`` for a folder holding one or more DICOM series.

    Args:
        series_uid: SeriesInstanceUID (or ITK series id) to read when the folder holds several
            series; ignored when it holds one.
    """

    def __init__(self, series_uid: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.series_uid = series_uid

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        return all(Path(f).is_dir() for f in ([filename] if isinstance(filename, (str, Path)) else filename))

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs):
        """Read the chosen series of the folder ``data`` as one 3-D ITK image.

        Raises:
            ImageError: no DICOM series in the folder, or several and none chosen (or not found).
        """
        folder = str(data[0] if isinstance(data, (list, tuple)) else data)
        series = list_dicom_series(folder)
        if not series:
            raise ImageError(f"{folder}: folder holds no DICOM series")
        if len(series) == 1:
            chosen = series[0]
        else:
            found = [s for s in series if self.series_uid and self.series_uid in (s["uid"], s["id"])]
            listing = "; ".join(_series_label(s) for s in series)
            if not self.series_uid:
                raise ImageError(
                    f"{folder}: folder holds {len(series)} DICOM series, set data.dicom_series to one of: {listing}"
                )
            if not found:
                raise ImageError(f"{folder}: data.dicom_series={self.series_uid} not in folder; it holds: {listing}")
            chosen = found[0]
        files = chosen["files"]
        kwargs_ = {**self.kwargs, **kwargs}
        return itk.imread(files if len(files) > 1 else files[0], **kwargs_)


class NiftiReader(_COrderMixin, NibabelReader):
    """``NibabelReader`` that trusts the NIfTI header as nibabel reads it (sform first, then qform).

    MONAI's reader passes every file through ``correct_nifti_header_if_necessary``, which replaces an
    sform whose scales differ from pixdim by the qform even when qform_code is 0 (qform unused).
    """

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs):
        filenames = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        self.filenames = filenames
        images = [nib.load(str(f), **{**self.kwargs, **kwargs}) for f in filenames]
        return images if len(images) > 1 else images[0]


def _reader_for(path: Path, dicom_series: str, dtype: torch.dtype | None):
    if path.is_dir():
        reader = DicomSeriesReader(series_uid=dicom_series)
    elif path.name.lower().endswith(_NIFTI_SUFFIXES):
        reader = NiftiReader()
    else:
        reader = _ITKReader()
    reader.out_dtype = dtype
    return reader


def describe_grid(img: MetaTensor) -> str:
    """``shape 512x512x20, spacing 0.977x0.977x2 mm, origin (x, y, z) mm RAS`` of a loaded volume."""
    aff = np.asarray(img.affine, dtype=np.float64)
    spacing = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    shape = "x".join(str(int(s)) for s in img.shape[1:])
    sp = "x".join(f"{v:.4g}" for v in spacing)
    org = ", ".join(f"{v:.2f}" for v in aff[:3, 3])
    return f"shape {shape}, spacing {sp} mm, origin ({org}) mm RAS"


def _to_channel_first_3d(img: MetaTensor, name: str) -> MetaTensor:
    """Check dimensionality and return a (1, X, Y, Z) tensor."""
    shape = tuple(int(s) for s in img.shape)
    dims = "x".join(str(s) for s in shape)
    if len(shape) < 3:
        raise ImageError(f"{name}: image is {len(shape)}-D ({dims}); expected a 3-D volume")
    if any(s == 0 for s in shape):
        raise ImageError(f"{name}: image has a zero-size axis ({dims})")
    extra = shape[3:]
    if any(s != 1 for s in extra):
        raise ImageError(
            f"{name}: image is {len(shape)}-D ({dims}) with {int(np.prod(extra))} channels/time points; "
            "expected a single 3-D volume"
        )
    if any(s < 2 for s in shape[:3]):
        raise ImageError(f"{name}: image is a single slice ({dims}); expected a 3-D volume")
    return img.reshape(1, *shape[:3])


def _clean_meta(meta: Mapping) -> dict:
    """Keep the geometry and the file name; drop reader-specific header fields.

    The reader's header values are numpy scalars and arrays (and DICOM tags), which
    ``torch.load(weights_only=True)`` refuses: a disk cache holding them would be recomputed on
    every read. Plain types and tensors load safely.
    """
    out = {
        "affine": torch.as_tensor(np.asarray(meta["affine"], dtype=np.float64)),
        "original_affine": torch.as_tensor(np.asarray(meta.get("original_affine", meta["affine"]), dtype=np.float64)),
        "spatial_shape": [int(v) for v in np.asarray(meta.get("spatial_shape", []))],
        "filename_or_obj": str(meta.get("filename_or_obj", "")),
        "space": str(meta.get("space", "RAS")),
        "original_channel_dim": float("nan"),
    }
    return out


def load_volume(path: str | os.PathLike, name: str | None = None, dicom_series: str = "", dtype=torch.float32):
    """Load one scan or label as a (1, X, Y, Z) MetaTensor with a RAS affine, checked.

    Args:
        path: a file or a DICOM series folder.
        name: how to name the file in errors (default: ``path``).
        dicom_series: SeriesInstanceUID to pick when a folder holds several series.
        dtype: output dtype; None keeps the file's type (used for labels, checked before casting).

    Returns:
        The volume as a channel-first ``MetaTensor``.

    Raises:
        ImageError: missing, unreadable, corrupt or truncated file; not 3-D; a zero-size axis;
            NaN or infinite voxels; a folder without DICOM.
    """
    p = Path(path)
    name = name or str(path)
    if not p.exists():
        raise ImageError(f"{name}: file not found")
    reader = _reader_for(p, dicom_series, dtype)
    loader = LoadImage(reader=reader, image_only=True, dtype=None)
    try:
        img = loader(str(p), reader=reader)  # as the runtime reader, so its ImageError gets through
    except ImageError:
        raise
    except Exception as exc:  # readers raise anything from zlib.error to RuntimeError on bad files
        raise ImageError(f"{name}: cannot read image ({_one_line(exc)})") from None
    img = _to_channel_first_3d(img, name)
    img.meta = _clean_meta(img.meta)
    # a sum is finite unless a voxel is NaN/Inf (CT values cannot overflow it): 20x cheaper than isfinite
    if img.dtype.is_floating_point and not bool(torch.isfinite(img.sum())):
        bad = int((~torch.isfinite(img)).sum())
        if bad:
            raise ImageError(f"{name}: image has {bad} NaN or infinite voxels")
    if dtype is not None and img.dtype != dtype:
        img = img.to(dtype)  # one cast, e.g. int16 -> float32
    return img


def _match_label_grid(image: MetaTensor, label: MetaTensor, image_name: str, label_name: str) -> MetaTensor:
    """Put ``label`` on ``image``'s voxel grid (axis order/flips only) or raise if the grids differ."""
    codes = nib.orientations.aff2axcodes(np.asarray(image.affine))
    label_on_grid = label
    if nib.orientations.aff2axcodes(np.asarray(label.affine)) != codes:
        orient = Orientation(axcodes="".join(codes), labels=(("L", "R"), ("P", "A"), ("I", "S")))
        with orient.trace_transform(False):
            label_on_grid = orient(label)
    a_img = np.asarray(image.affine, dtype=np.float64)
    a_lbl = np.asarray(label_on_grid.affine, dtype=np.float64)
    min_spacing = float(np.sqrt((a_img[:3, :3] ** 2).sum(axis=0)).min())
    same = tuple(label_on_grid.shape[1:]) == tuple(image.shape[1:]) and np.allclose(
        a_img, a_lbl, rtol=0.0, atol=_GRID_TOL * min_spacing
    )
    if not same:
        raise ImageError(
            f"{label_name}: label grid differs from image {image_name}: label {describe_grid(label)}; "
            f"image {describe_grid(image)}"
        )
    label_on_grid.affine = image.affine.clone()  # the same grid to the last bit, so resampling agrees
    return label_on_grid


class LoadCTd(MapTransform):
    """Load a record's image (and label) with MONAI's readers, check them and align the label.

    The image becomes float32 HU, the label keeps its file type (checked by
    :class:`transforms.labels.MapLabelsd`). Entries that are already tensors are kept as they are.

    Args:
        keys: the record keys to load (``image_key`` first, then labels).
        image_key: the scan's key; the other keys are labels checked against its grid.
        dicom_series: SeriesInstanceUID to pick when a folder holds several series.
        allow_missing_keys: skip label keys that are absent (or empty strings) instead of raising;
            the image is always required.

    Raises:
        ImageError: see :func:`load_volume`; also a label whose grid differs from the image's
            (the message states both grids) and a required path that is missing from the record.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        image_key: str = "image",
        dicom_series: str = "",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.dicom_series = dicom_series

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        case = d.get("case_id", "?")
        names: dict[Hashable, str] = {}
        for key in self.keys:
            value = d.get(key)
            if value is None or (isinstance(value, str) and not value.strip()):
                d.pop(key, None)
                if key == self.image_key or not self.allow_missing_keys:
                    raise ImageError(f"case {case}: no {key} path given")
                continue
            if isinstance(value, torch.Tensor):
                names[key] = str(getattr(value, "meta", {}).get("filename_or_obj", key))
                continue
            names[key] = str(value)
            is_image = key == self.image_key
            d[key] = load_volume(value, dicom_series=self.dicom_series, dtype=torch.float32 if is_image else None)
        if self.image_key in names:
            for key in names:
                if key != self.image_key:
                    d[key] = _match_label_grid(d[self.image_key], d[key], names[self.image_key], names[key])
        return d
