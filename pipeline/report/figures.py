"""Pictures for the report: slice overlays composed pixel by pixel, and matplotlib plots.

Slice overlays (CT + contours, CT + attention coefficients) are composed with numpy and written
as PNG, not drawn with matplotlib: every voxel becomes an exact block of pixels, so a contour's
pixel position in the PNG is known (and tested), and a case takes milliseconds, not a figure's
layout pass.

Display convention (radiological, as in 3D Slicer and ITK-SNAP), for a volume on the canonical
RAS grid (array axes x→Right, y→Anterior, z→Superior):

* axial (slice ``z = k``): anterior at the top, the patient's right on the image's left;
* coronal (slice ``y = j``): superior at the top, the patient's right on the image's left;
* sagittal (slice ``x = i``): superior at the top, anterior on the image's left.

So voxel ``(a, b)`` of the slice (its two remaining array axes, in order) lands in display row
``n_b - 1 - b`` and column ``n_a - 1 - a``, and that display pixel becomes the block of
``scale[0]`` rows by ``scale[1]`` columns at ``(row * scale[0], col * scale[1])`` in the PNG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.core.fileio import atomic_write

__all__ = [
    "VIEWS",
    "VIEW_AXIS",
    "DISPLAY_WINDOW_HU",
    "LABEL_RGB",
    "PRED_RGB",
    "display_plane",
    "display_scale",
    "compose_overlay",
    "compose_attention",
    "save_png",
    "CLASS_RGB",
    "class_rgb",
    "plot_curves",
    "colorbar_png",
]

VIEWS = ("axial", "coronal", "sagittal")
VIEW_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}  # the array axis a view slices through
DISPLAY_WINDOW_HU = (-160.0, 240.0)  # abdominal soft-tissue window (W 400, L 40)
LABEL_RGB = (0, 230, 0)  # label contour: green, drawn on top
PRED_RGB = (255, 0, 255)  # prediction contour: magenta (distinct from green for colour-blind readers)
# (label, prediction) contour colours per class value; class 1 keeps green/magenta, so binary reports
# look as before. Tumour: yellow/cyan, again a pair apart in hue for colour-blind readers.
CLASS_RGB = {
    1: (LABEL_RGB, PRED_RGB),
    2: ((255, 210, 0), (0, 190, 255)),
    3: ((255, 120, 0), (70, 90, 255)),
    4: ((255, 255, 255), (160, 0, 0)),
}


def class_rgb(k: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The (label, prediction) contour colours of class value ``k`` (cycling after 4)."""
    return CLASS_RGB[(int(k) - 1) % len(CLASS_RGB) + 1]


def display_plane(volume: np.ndarray, view: str, index: int) -> np.ndarray:
    """The 2-D slice ``index`` of a canonical-RAS ``volume`` (X, Y, Z) as displayed (rows, cols)."""
    plane = np.take(np.asarray(volume), int(index), axis=VIEW_AXIS[view])
    return plane[::-1, ::-1].T


def display_scale(spacing: Sequence[float], shape: Sequence[int], target_px: int = 320) -> dict:
    """Integer pixel repeats per display axis so each view keeps the physical aspect ratio.

    Args:
        spacing: voxel size in mm of the canonical grid (x, y, z).
        shape: the canonical volume's shape (x, y, z).
        target_px: about how many pixels the longest extent should get.

    Returns:
        ``{view: (row repeats, column repeats)}``.
    """
    sp = np.asarray(spacing, dtype=float)
    unit = float(sp.min())
    extent = max(float(n * s / unit) for n, s in zip(shape, sp))
    base = int(min(8, max(1, round(target_px / max(extent, 1.0)))))
    rep = [max(1, int(round(base * s / unit))) for s in sp]
    out = {}
    for view in VIEWS:
        a, b = (ax for ax in range(3) if ax != VIEW_AXIS[view])  # the slice's axes; rows show b, cols a
        out[view] = (rep[b], rep[a])
    return out


def _gray(plane_hu: np.ndarray, window: Sequence[float]) -> np.ndarray:
    lo, hi = float(window[0]), float(window[1])
    g = np.clip((np.asarray(plane_hu, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return np.repeat((g * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=2)


def _upscale(a: np.ndarray, scale: Sequence[int]) -> np.ndarray:
    return np.repeat(np.repeat(a, int(scale[0]), axis=0), int(scale[1]), axis=1)


def _boundary(mask: np.ndarray, outer: bool, width: int) -> np.ndarray:
    """Pixels just inside (``outer=False``) or just outside (``outer=True``) a 2-D mask's edge."""
    from scipy import ndimage

    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    cross = ndimage.generate_binary_structure(2, 1)
    if outer:
        return ndimage.binary_dilation(mask, cross, iterations=width) & ~mask
    # border_value=1: a mask touching the image edge has no contour along the edge itself
    return mask & ~ndimage.binary_erosion(mask, cross, iterations=width, border_value=1)


def compose_overlay(
    ct_plane: np.ndarray,
    label_plane: np.ndarray | None,
    pred_plane: np.ndarray | None,
    scale: Sequence[int],
    window: Sequence[float] = DISPLAY_WINDOW_HU,
) -> tuple[np.ndarray, dict]:
    """CT slice in a HU window with the label's contour (inside its edge, green) and the
    prediction's (outside its edge, magenta), so a perfect prediction shows both lines.

    With several classes each class value gets its own pair of colours (:func:`class_rgb`;
    class 1 green/magenta, class 2 yellow/cyan), drawn around ``plane == k``.

    Args:
        ct_plane: displayed HU slice (rows, cols); all ``AIR_HU`` for a mask-only view (black).
        label_plane: displayed label slice (class values), or None.
        pred_plane: displayed prediction slice (class values), or None.
        scale: (row, column) pixel repeats per voxel.
        window: HU window mapped to black..white.

    Returns:
        (RGB uint8 image, ``{"label": (rows, cols), "pred": (rows, cols)}`` pixel coordinates of
        each contour in the image, as drawn, all classes together, plus ``"label_<k>"`` and
        ``"pred_<k>"`` per class value k; the label is drawn last, so all its pixels show).
    """
    rgb = _upscale(_gray(ct_plane, window), scale)
    width = 2 if min(scale) >= 4 else 1
    planes = {"pred": pred_plane, "label": label_plane}
    values = sorted({int(v) for p in planes.values() if p is not None for v in np.unique(p) if v > 0})
    edges: dict = {}
    for key, plane in planes.items():
        if plane is None:
            continue
        up = _upscale(np.asarray(plane), scale)
        for k in values:
            edges[f"{key}_{k}"] = _boundary(up == k, key == "pred", width)
        edges[key] = np.zeros(up.shape, bool)
        for k in values:
            edges[key] |= edges[f"{key}_{k}"]
    if "label" in edges and "pred" in edges:  # the label is drawn on top
        for k in values:
            edges[f"pred_{k}"] &= ~edges["label"]
        edges["pred"] &= ~edges["label"]
    drawn: dict = {}
    for key in ("pred", "label"):
        if key not in edges:
            continue
        for k in values:
            rgb[edges[f"{key}_{k}"]] = class_rgb(k)[key == "pred"]
            drawn[f"{key}_{k}"] = np.nonzero(edges[f"{key}_{k}"])
        drawn[key] = np.nonzero(edges[key])
    return rgb, drawn


def compose_attention(
    ct_plane: np.ndarray,
    alpha_plane: np.ndarray,
    label_plane: np.ndarray | None,
    scale: Sequence[int],
    window: Sequence[float] = DISPLAY_WINDOW_HU,
    opacity: float = 0.5,
) -> np.ndarray:
    """CT slice with attention coefficients in [0, 1] blended as a jet heat map, and the label contour."""
    from matplotlib import colormaps

    grey = _gray(ct_plane, window).astype(np.float32)
    heat = colormaps["jet"](np.clip(np.asarray(alpha_plane, dtype=np.float32), 0.0, 1.0))[..., :3] * 255.0
    rgb = _upscale(((1.0 - opacity) * grey + opacity * heat + 0.5).astype(np.uint8), scale)
    if label_plane is not None:
        edge = _boundary(_upscale(np.asarray(label_plane) > 0, scale), False, 1)
        rgb[edge] = (255, 255, 255)
    return rgb


def save_png(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB uint8 array as PNG (lossless: the colours read back exactly)."""
    from matplotlib.image import imsave

    rgb = np.ascontiguousarray(rgb)
    return atomic_write(path, lambda tmp: imsave(tmp, rgb, format="png"))


def plot_curves(logs: Mapping[str, object], path: str | os.PathLike) -> Path:
    """Training loss, validation Dice and learning rate per epoch, one line per fold.

    Args:
        logs: ``{"fold 0": DataFrame with log.csv's columns, ...}``.
        path: PNG to write.
    """
    import pandas as pd
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 3.2), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (("loss", "training loss"), ("val_dice", "validation Dice"), ("lr", "learning rate"))
    for ax, (col, title) in zip(axes, panels):
        for name, df in logs.items():
            df = pd.DataFrame(df)
            if col not in df or "epoch" not in df:
                continue
            y = pd.to_numeric(df[col], errors="coerce")
            ok = y.notna()
            if ok.any():
                ax.plot(df["epoch"][ok], y[ok], marker="o" if ok.sum() < 30 else None, ms=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if logs:
        axes[1].legend(fontsize=8)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def colorbar_png(path: str | os.PathLike) -> Path:
    """A small horizontal jet colour bar for attention coefficients 0..1."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2, 0.7), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    mappable = ScalarMappable(Normalize(0, 1), colormaps["jet"])
    fig.colorbar(mappable, cax=ax, orientation="horizontal", label="attention coefficient α")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
