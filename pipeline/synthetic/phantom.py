"""Synthetic abdominal CT phantoms with a pancreas label, for the demo and the tests.

Each phantom is a real segmentation problem, not a bright blob: body wall, spine, ribs, liver,
spleen, kidneys, stomach, duodenum, colon and small-bowel loops, the aorta, the IVC and the
mesenteric/splenic vessels surround a curved, lobulated pancreas (head, body, tail) whose HU range
(about 40-110) is shared by bowel content and wall, muscle, liver and spleen, so thresholding fails and
a model must use context. Anatomy is drawn in world (RAS, mm) coordinates (:mod:`pipeline.synthetic.anatomy`)
and sampled at each voxel's ``affine @ ijk``, so RAS, LPS and oblique storage of one seed show the same
body. The HU map gets a smooth per-tissue texture, a Gaussian partial-volume blur, then white noise.

With ``tumour=True`` a hypo-attenuating lesion (label 2) and sometimes a dilated duct are added
(:mod:`pipeline.synthetic.tumour`), from a fourth random stream of the seed: the other three streams,
so the anatomy, grid and texture, stay as without it, and the default (no tumour) is bit-identical
to phantoms made before lesions existed.

Everything is drawn from the seed: the same seed gives identical arrays and affine.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from pipeline.core.constants import AIR_HU
from pipeline.core.errors import ImageError, UsageError
from pipeline.core.fileio import atomic_outputs
from pipeline.core.geometry import spacing_from_affine
from pipeline.synthetic.anatomy import Anatomy, Canvas, Tissue, rz
from pipeline.synthetic.tumour import TUMOUR_LABEL, Lesion, draw_lesion, hu_shift, paint_lesion

__all__ = [
    "Phantom",
    "make_phantom",
    "save_phantom",
    "write_phantoms",
    "case_seed",
    "ORIENTATIONS",
    "FORMATS",
]

ORIENTATIONS = ("RAS", "LPS", "oblique")
FORMATS = ("nii.gz", "nii", "nrrd", "mha")

T = Tissue
# Per tissue: HU range a case draws its value from, and the amplitude (HU) of the smooth texture.
_HU = {
    T.AIR: (-1000, -1000, 0), T.SKIN: (20, 50, 3), T.SUBCUT_FAT: (-115, -85, 8), T.FAT: (-115, -85, 10),
    T.MUSCLE: (40, 60, 6), T.BONE_CORTEX: (700, 1000, 60), T.BONE_MARROW: (300, 420, 40), T.DISC: (70, 95, 5),
    T.CSF: (10, 30, 3), T.LUNG: (-880, -820, 20), T.LIVER: (50, 75, 6), T.GALLBLADDER: (0, 20, 3),
    T.SPLEEN: (90, 125, 8), T.KIDNEY_CORTEX: (150, 200, 10), T.KIDNEY_MEDULLA: (90, 130, 10),
    T.ARTERY: (150, 250, 8), T.VEIN: (140, 200, 8), T.BOWEL_WALL: (60, 100, 8), T.BOWEL_FLUID: (0, 25, 6),
    T.BOWEL_SOFT: (35, 80, 15), T.GAS: (-1000, -950, 20), T.PANCREAS: (80, 110, 10), T.TABLE: (100, 300, 10),
}  # fmt: skip


@dataclass
class Phantom:
    """One synthetic CT case.

    Attributes:
        image: int16 HU, shape (X, Y, Z) in voxel order i, j, k.
        label: uint8 {0 background, 1 pancreas, 2 tumour}, same shape; the pancreas is one connected
            component (with its lesion).
        affine: 4x4 float64 voxel-to-world matrix, RAS mm (the nibabel convention).
        spacing: voxel size in mm along i, j, k.
        orientation: "RAS", "LPS" or "oblique" (rotated 10-20 degrees about z).
        lesion: the drawn lesion (:class:`~pipeline.synthetic.tumour.Lesion`), or None.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    orientation: str
    lesion: Lesion | None = None


def make_phantom(
    seed: int,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    orientation: str | None = None,
    tumour: bool = False,
) -> Phantom:
    """Generate one phantom.

    Args:
        seed: non-negative integer; everything below that is left as None is drawn from it.
        shape: voxels (X, Y, Z); default 160-224 in-plane, 48-80 slices.
        spacing: mm per voxel; default in-plane 0.6-1.0 mm and slices 1-5 mm, chosen so that the field
            of view spans about 150-200 mm in-plane and 90-250 mm along z (cut to those ranges).
        orientation: "RAS", "LPS" or "oblique". The anatomy does not depend on it: one seed in RAS and
            in LPS is the same body on the same voxel centres, stored in a different order.
        tumour: add a lesion (label 2) on the visible part of the pancreas: 20-40 HU below the
            parenchyma, 5-30 mm, with a dilated duct upstream in about half the cases.

    Returns:
        The :class:`Phantom`; the field of view is centred on a point of the pancreas.

    Raises:
        UsageError: a bad argument, or a grid too small or coarse to contain any pancreas voxel.
    """
    return _generate(seed, shape, spacing, orientation, tumour)[0]


def _generate(seed, shape, spacing, orientation, tumour: bool = False) -> tuple[Phantom, np.ndarray]:
    """:func:`make_phantom`, also returning the tissue-id map (:class:`Tissue`) for tests."""
    shape, spacing, orientation = _check(seed, shape, spacing, orientation)
    geo, anat, intensity = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    shape, spacing, orientation, direction, t_centre = _draw_grid(geo, shape, spacing, orientation)
    body = Anatomy(anat)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing)
    affine[:3, 3] = body.point(t_centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    canvas = Canvas(shape, affine)
    body.render(canvas)
    _keep_one_pancreas(canvas, body)
    lesion, shift = None, None
    if tumour:  # a fourth stream: the three above draw exactly what they draw without a tumour
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(4)[3])
        lesion = draw_lesion(rng, body, canvas)
        if lesion is not None:
            in_lesion, duct = paint_lesion(lesion, body, canvas)
            lesion = lesion if in_lesion.any() else None
            shift = lambda parenchyma, les=lesion: hu_shift(les, in_lesion, duct, parenchyma)  # noqa: E731
    label = (canvas.tissue == T.PANCREAS).astype(np.uint8)
    if not label.any():
        raise UsageError(
            f"phantom grid {shape} at {spacing} mm holds no pancreas voxel; use a finer or larger grid"
        )
    if lesion is not None:
        label[in_lesion] = TUMOUR_LABEL
    # Texture and noise are drawn in RAS voxel order, so RAS and LPS copies of a seed hold the same image.
    flips = tuple(a for a in range(3) if affine[np.argmax(np.abs(affine[:3, a])), a] < 0)
    image = _render_hu(canvas.tissue, spacing, intensity, flips, shift)
    grid = tuple(float(v) for v in spacing)
    return Phantom(image, label, affine, grid, orientation, lesion), canvas.tissue


def _draw_grid(geo: np.random.Generator, shape, spacing, orientation) -> tuple:
    """Shape, spacing, orientation, direction matrix and the centre's place on the pancreas (0..1)."""
    # Every value is drawn even when given, so overriding one never changes the others.
    n_xy, n_z = int(geo.integers(10, 15)) * 16, int(geo.integers(6, 11)) * 8
    fov_xy, fov_z = geo.uniform([150, 90], [200, 250])
    drawn, angle = ORIENTATIONS[int(geo.integers(3))], geo.uniform(10, 20) * geo.choice([-1.0, 1.0])
    lps_base, t_centre = bool(geo.random() < 0.5), geo.uniform(0.3, 0.7)
    shape = shape or (n_xy, n_xy, n_z)
    if spacing is None:
        sxy = round(float(np.clip(fov_xy / shape[0], 0.6, 1.0)), 3)
        spacing = (sxy, sxy, round(float(np.clip(fov_z / shape[2], 1.0, 5.0)), 3))
    orientation = orientation or drawn
    lps = orientation == "LPS" or (orientation == "oblique" and lps_base)
    direction = np.diag([-1.0, -1.0, 1.0]) if lps else np.eye(3)
    if orientation == "oblique":
        direction = rz(angle) @ direction
    return shape, spacing, orientation, direction, t_centre


def _check(seed, shape, spacing, orientation):
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"phantom seed must be a non-negative integer, got {seed!r}")
    if shape is not None:
        if len(shape) != 3 or any(not isinstance(n, numbers.Integral) or n < 4 for n in shape):
            raise UsageError(f"phantom shape must be three integers >= 4, got {shape!r}")
        shape = tuple(int(n) for n in shape)
    if spacing is not None:
        if len(spacing) != 3 or not all(np.isfinite(float(s)) and float(s) > 0 for s in spacing):
            raise UsageError(f"phantom spacing must be three positive numbers (mm), got {spacing!r}")
        spacing = tuple(float(s) for s in spacing)
    if orientation is not None:
        named = {o.lower(): o for o in ORIENTATIONS}
        if str(orientation).lower() not in named:
            raise UsageError(
                f"phantom orientation {orientation!r} unknown; expected one of {', '.join(ORIENTATIONS)}"
            )
        orientation = named[str(orientation).lower()]
    return shape, spacing, orientation


def _keep_one_pancreas(canvas: Canvas, body: Anatomy) -> None:
    """Turn pancreas fragments (a lobule that voxelises apart, a piece cut by the grid) into fat."""
    sl = canvas.box(body.centre.min(0) - 20, body.centre.max(0) + 20)
    if sl is None:
        return
    block = canvas.tissue[sl]
    lab, n = ndimage.label(block == T.PANCREAS)
    if n > 1:
        biggest = 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
        block[(lab > 0) & (lab != biggest)] = T.FAT


def _render_hu(
    tissue: np.ndarray, spacing, rng: np.random.Generator, flips: tuple[int, ...], shift=None
) -> np.ndarray:
    """HU image: per-tissue value + smooth texture, partial-volume blur, then white noise.

    ``shift``: None, or a function of the case's parenchyma HU giving a float32 map added before the
    blur (a lesion and its duct: darker than the pancreas they are drawn as).
    """
    lut, amp = np.zeros(256, np.float32), np.zeros(256, np.float32)
    for t, (lo, hi, a) in _HU.items():
        lut[t], amp[t] = rng.uniform(lo, hi), a
    psf_mm, noise_sd = rng.uniform(0.5, 0.9), rng.uniform(10, 20)
    coarse = np.maximum(np.ceil(np.asarray(tissue.shape) * spacing / 12.0).astype(int) + 1, 2)  # ~12 mm grain
    field = np.flip(_upsample(rng.standard_normal(tuple(coarse), dtype=np.float32), tissue.shape), flips)
    hu = lut[tissue]
    texture = amp[tissue]
    texture *= field
    hu += texture
    del texture, field
    if shift is not None:
        hu += shift(float(lut[T.PANCREAS]))
    # Partial volume: a voxel integrates its own extent (~0.42 voxel sigma) and the scanner's PSF.
    sigma = np.sqrt(0.42**2 + (psf_mm / np.asarray(spacing)) ** 2)
    hu = ndimage.gaussian_filter(hu, sigma, mode="nearest", truncate=3.0)
    noise = np.flip(rng.standard_normal(hu.shape, dtype=np.float32), flips)
    noise *= noise_sd
    hu += noise
    del noise
    np.rint(hu, out=hu)
    np.clip(hu, AIR_HU, 3071, out=hu)  # a scanner's range: 12 bits from air
    return hu.astype(np.int16)


def _upsample(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear upsampling with corners aligned, as three small matrix products (far faster than zoom)."""
    w = []
    for n, m in zip(shape, coarse.shape):
        pos = np.linspace(0, m - 1, n)
        lo = np.minimum(pos.astype(int), m - 2)
        w.append(np.zeros((n, m), np.float32))
        w[-1][np.arange(n), lo], w[-1][np.arange(n), lo + 1] = 1 - (pos - lo), pos - lo
    out = np.tensordot(w[1], np.tensordot(w[0], coarse, axes=(1, 0)), axes=(1, 1)).transpose(1, 0, 2)
    # the big product last, as one GEMM written straight into (X, Y, Z) order
    return (np.ascontiguousarray(out).reshape(-1, coarse.shape[2]) @ w[2].T).reshape(shape)


def _format(path: Path) -> str:
    name = path.name.lower()
    for fmt in FORMATS:
        if name.endswith("." + fmt):
            return fmt
    raise ImageError(f"{path}: unsupported phantom file type; use .nii.gz, .nii, .nrrd or .mha")


def _write(array: np.ndarray, affine: np.ndarray, tmp: Path, fmt: str) -> None:
    if fmt in ("nii.gz", "nii"):
        img = nib.Nifti1Image(array, affine)
        img.set_sform(affine, code=1)  # scanner-based; both set, so qform-only readers agree
        img.set_qform(affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, str(tmp))
        return
    import itk  # slow to import: only when NRRD/MHA is asked for

    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]  # ITK's world is LPS
    spacing = spacing_from_affine(affine)
    img = itk.image_from_array(np.ascontiguousarray(array.transpose(2, 1, 0)))  # ITK arrays are (k, j, i)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(v) for v in lps[:, 3]])
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(lps[:, :3] / spacing)))
    itk.imwrite(img, str(tmp), compression=True)


def save_phantom(ph: Phantom, image_path: str | os.PathLike, label_path: str | os.PathLike) -> None:
    """Write image and label; the format follows each suffix (.nii.gz, .nii, .nrrd, .mha).

    NIfTI gets the affine as both sform and qform (code 1); NRRD/MHA are written by ITK with the
    matching LPS origin, spacing and direction. Both files go to temporary names first and are renamed
    into place only when both writes succeeded (:func:`pipeline.core.fileio.atomic_outputs`).

    Raises:
        ImageError: an unsupported suffix. OutputError: a file cannot be written (names it).
    """
    pairs = [(ph.image, Path(image_path)), (ph.label, Path(label_path))]
    fmts = [_format(path) for _, path in pairs]
    with atomic_outputs() as out:
        for (array, path), fmt in zip(pairs, fmts):
            out.write(path, lambda tmp, array=array, fmt=fmt: _write(array, ph.affine, tmp, fmt))


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` in :func:`write_phantoms` (independent streams, no overlap between seeds)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def write_phantoms(
    out_dir: str | os.PathLike,
    n: int = 12,
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    formats: Sequence[str] = ("nii.gz",),
    tumour_fraction: float = 0.0,
) -> list[dict]:
    """Write ``n`` phantoms to ``out_dir/images`` and ``out_dir/labels`` (``phantom_000`` ...).

    Case i uses orientation ``ORIENTATIONS[i % 3]`` (RAS, LPS, oblique), format ``formats[i % len]``
    and seed :func:`case_seed`; shape (unless given) and spacing vary from case to case. With
    ``tumour_fraction`` F, ``floor(F * n)`` cases spread evenly over the indices get a lesion
    (case i when ``floor((i + 1) F) > floor(i F)``), the others none.

    Args:
        out_dir: destination folder (created).
        n: number of cases (>= 1).
        seed: base seed.
        shape: fixed shape for all cases; None draws one per case.
        formats: file types to cycle through, from ``FORMATS``.
        tumour_fraction: fraction of cases with a lesion (label 2), in [0, 1].

    Returns:
        One dict per case: case_id, subject_id, image and label (paths relative to ``out_dir``),
        orientation and spacing; with tumour_fraction > 0 also ``label_map``
        (``"1:pancreas,2:tumour"``) and ``tumour_mm`` (the drawn lesion diameter, 0 for none).

    Raises:
        UsageError: bad n, seed, shape, formats or tumour_fraction. OutputError: a file cannot be written.
    """
    fmts = [str(f).lower().lstrip(".") for f in formats]
    if not fmts or any(f not in FORMATS for f in fmts):
        raise UsageError(f"phantom formats {list(formats)!r}: expected one or more of {', '.join(FORMATS)}")
    if not isinstance(n, numbers.Integral) or n < 1:
        raise UsageError(f"number of phantoms must be a positive integer, got {n!r}")
    _check(seed, shape, None, None)
    f = tumour_fraction
    if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0 <= f <= 1:
        raise UsageError(f"tumour fraction must be a number in [0, 1], got {f!r}")
    rows = []
    for i in range(n):
        case, fmt = f"phantom_{i:03d}", fmts[i % len(fmts)]
        tumour = math.floor((i + 1) * f) > math.floor(i * f)
        orientation = ORIENTATIONS[i % len(ORIENTATIONS)]
        ph = make_phantom(case_seed(seed, i), shape=shape, orientation=orientation, tumour=tumour)
        image, label = f"images/{case}.{fmt}", f"labels/{case}.{fmt}"
        save_phantom(ph, Path(out_dir) / image, Path(out_dir) / label)
        row = {"case_id": case, "subject_id": f"subject_{i:03d}", "image": image, "label": label}
        if f > 0:
            row |= {
                "label_map": "1:pancreas,2:tumour",
                "tumour_mm": ph.lesion.diameter_mm if ph.lesion else 0.0,
            }
        rows.append(row | {"orientation": ph.orientation, "spacing": ph.spacing})
    return rows
