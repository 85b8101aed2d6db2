"""Pancreatic lesions for the phantoms: a hypo-attenuating mass (label 2) and a dilated duct.

A lesion is what a radiologist sees of pancreatic ductal adenocarcinoma on portal-venous CT: a mass
20-40 HU darker than the enhancing parenchyma, 5-30 mm across, lobulated, that may bulge out of the
gland's contour into the surrounding fat; in some cases the main duct upstream of it (towards the
tail) is dilated and filled with fluid (0-20 HU). The duct stays part of the pancreas (label 1), as
in MSD Task07's annotation. Everything is drawn from its own random stream, in world coordinates
(the lesion sits on the pancreas centreline), so the rest of the phantom is unchanged and RAS, LPS and
oblique copies of one seed hold the same lesion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.synthetic.anatomy import Anatomy, Canvas, Tissue

__all__ = ["Lesion", "TUMOUR_LABEL", "draw_lesion", "hu_shift", "paint_lesion"]

T = Tissue
TUMOUR_LABEL = 2
OFFSET_HU = (20.0, 40.0)  # below the case's parenchyma
DIAMETER_MM = (5.0, 30.0)
DUCT_PROB = 0.5  # of lesions with a dilated duct upstream
_INTO = (T.PANCREAS, T.FAT)  # what a lesion may take over (it bulges into fat, not into vessels or bowel)


@dataclass
class Lesion:
    """One drawn lesion.

    Attributes:
        centre: world position (RAS mm) on the pancreas centreline.
        diameter_mm: the drawn diameter (the labelled lesion is smaller where organs clip it).
        offset_hu: how much darker than the parenchyma (before blur and noise).
        duct_radius_mm: radius of the dilated duct upstream; 0: none.
        duct_hu: the duct's fluid HU.
        t: arc-length fraction of the centre along the pancreas (0 uncinate, 1 tail).
    """

    centre: np.ndarray
    diameter_mm: float
    offset_hu: float
    duct_radius_mm: float
    duct_hu: float
    t: float


def draw_lesion(rng: np.random.Generator, body: Anatomy, canvas: Canvas) -> Lesion | None:
    """A lesion on the visible part of the pancreas centreline, or None when none of it is visible."""
    inv = np.linalg.inv(canvas.affine)
    ijk = body.centre @ inv[:3, :3].T + inv[:3, 3]
    inside = np.all((ijk >= 0) & (ijk <= np.asarray(canvas.tissue.shape) - 1), axis=1)
    idx = np.flatnonzero(inside)
    diameter, offset = rng.uniform(*DIAMETER_MM), rng.uniform(*OFFSET_HU)
    duct = rng.random() < DUCT_PROB
    duct_r, duct_hu = rng.uniform(1.5, 3.0), rng.uniform(0.0, 20.0)
    pick, jitter = rng.random(), rng.normal(size=3)
    if idx.size == 0:
        return None
    i = int(idx[min(int(pick * idx.size), idx.size - 1)])
    r = float(body.radius[i])
    centre = body.centre[i] + jitter / max(np.linalg.norm(jitter), 1e-9) * 0.3 * r
    return Lesion(
        centre,
        float(diameter),
        float(offset),
        float(duct_r) if duct else 0.0,
        float(duct_hu),
        float(body.frac[i]),
    )


def paint_lesion(lesion: Lesion, body: Anatomy, canvas: Canvas) -> tuple[np.ndarray, np.ndarray]:
    """Turn the lesion's voxels into pancreas tissue (so the HU image is drawn as before) and return
    ``(lesion mask, HU shift)``: the mask is label 2, the shift (HU, float32) darkens the lesion and
    turns the duct into fluid once the case's parenchyma HU is known (:func:`hu_shift`)."""
    shape = canvas.tissue.shape
    mask = np.zeros(shape, bool)
    duct = np.zeros(shape, bool)
    r = lesion.diameter_mm / 2
    sl = canvas.box(lesion.centre - r, lesion.centre + r)
    if sl is not None:
        x, y, z = canvas.coords(sl)
        d2 = (x - lesion.centre[0]) ** 2 + (y - lesion.centre[1]) ** 2 + (z - lesion.centre[2]) ** 2
        block = canvas.tissue[sl]
        mask[sl] = (d2 <= r * r) & np.isin(block, _INTO)
    if lesion.duct_radius_mm > 0:
        up = body.frac > lesion.t  # upstream: towards the tail
        for c in body.centre[up][:: max(1, int(lesion.duct_radius_mm))]:
            rr = lesion.duct_radius_mm
            box = canvas.box(c - rr, c + rr)
            if box is None:
                continue
            x, y, z = canvas.coords(box)
            ball = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= rr * rr
            duct[box] |= ball & (canvas.tissue[box] == T.PANCREAS)
        duct &= ~mask
    canvas.tissue[mask] = T.PANCREAS
    return mask, duct


def hu_shift(lesion: Lesion, mask: np.ndarray, duct: np.ndarray, parenchyma_hu: float) -> np.ndarray:
    """HU to add to the parenchyma's value: ``-offset`` in the lesion, fluid minus parenchyma in the duct."""
    shift = np.zeros(mask.shape, np.float32)
    shift[mask] = -lesion.offset_hu
    shift[duct] = lesion.duct_hu - parenchyma_hu
    return shift
