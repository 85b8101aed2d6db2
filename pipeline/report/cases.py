"""One case's pictures for the report: its volumes on the canonical grid, the slices through the
pancreas (prediction and label contours), and the attention gates' coefficients around it.

Everything is shown on the canonical grid the network saw (``data.orientation``, body crop,
``data.target_spacing``: :func:`transforms.build_infer_transforms`), so every case is oriented the
same way whatever its file's orientation. The prediction, stored on the scan's own grid, is
resampled onto that grid (nearest neighbour) through the two grids' world coordinates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.core.config import Config
from pipeline.core.constants import AIR_HU
from pipeline.core.geometry import spacing_from_affine
from pipeline.report.figures import (
    VIEW_AXIS,
    VIEWS,
    compose_attention,
    compose_overlay,
    display_plane,
    display_scale,
    save_png,
)
from transforms import build_infer_transforms, load_volume

__all__ = [
    "CaseVolumes",
    "load_case",
    "centre_voxel",
    "write_case_views",
    "attention_window",
    "write_attention_views",
]


@dataclass
class CaseVolumes:
    """A case on the canonical grid; arrays are (X, Y, Z) in ``data.orientation`` (RAS by default)."""

    case_id: str
    image_hu: np.ndarray  # float32 HU; all AIR_HU when the scan is unknown (mask-only view)
    label: np.ndarray | None  # uint8 class values {0, 1} ({0, 1, 2} with tumour)
    pred: np.ndarray | None  # uint8 class values, as the label
    spacing: tuple[float, float, float]
    network_input: torch.Tensor | None  # (1, X, Y, Z), intensity-normalised as in training


def load_case(
    cfg: Config,
    case_id: str,
    image: str | os.PathLike | None = None,
    label: str | os.PathLike | None = None,
    pred: str | os.PathLike | None = None,
    label_map: str = "",
) -> CaseVolumes:
    """Load a case's scan, label and prediction onto the canonical grid of ``cfg.data``.

    Args:
        cfg: the run's config (``data.*`` decides the grid and the network's intensity scaling).
        case_id: for messages.
        image: the scan; None for a mask-only view (the prediction then lends its grid).
        label: the reference mask on the scan's grid, or None.
        pred: the predicted mask on the scan's grid, or None.
        label_map: the manifest's label_map for ``label``.

    Raises:
        ImageError: a file cannot be read or a label is not on the scan's grid.
    """
    from monai.transforms import ResampleToMatch

    if image is None and pred is None:
        raise ValueError(f"case {case_id}: neither a scan nor a prediction to show")
    chain = build_infer_transforms(cfg, with_label=True)
    if image is None:  # a mask drawn on its own grid is not a CT scan: no HU checks on it
        chain.transforms[0].check_ct = False
    last = len(chain.transforms) - 1  # the intensity step: keep HU for display, apply it for the network
    record = {"case_id": case_id, "image": str(image if image is not None else pred), "label_map": label_map}
    if label is not None and image is not None:
        record["label"] = str(label)
    data = chain(record, end=last)
    img = data["image"]
    spacing = tuple(float(v) for v in spacing_from_affine(img.affine))
    # class values (0 background, 1 pancreas, 2 tumour ...): each class is drawn in its own colours
    lab = np.asarray(data["label"][0], dtype=np.uint8) if "label" in data else None
    mask = None
    if pred is not None:
        moving = load_volume(pred, dtype=torch.float32)
        on_grid = ResampleToMatch(mode="nearest", padding_mode="zeros")(moving, img_dst=img)
        mask = np.rint(np.asarray(on_grid[0])).clip(0, 255).astype(np.uint8)
    if image is None:
        return CaseVolumes(case_id, np.full(img.shape[1:], AIR_HU, np.float32), None, mask, spacing, None)
    hu = np.asarray(img[0], dtype=np.float32)
    normalised = chain({"image": img.clone()}, start=last)["image"].as_tensor().float()
    return CaseVolumes(case_id, hu, lab, mask, spacing, normalised)


def centre_voxel(vols: CaseVolumes) -> tuple[int, int, int]:
    """The voxel the views go through: the label's centroid (else the prediction's, else the middle)."""
    for mask in (vols.label, vols.pred):
        if mask is not None and mask.any():
            return tuple(int(v) for v in np.rint(np.argwhere(mask).mean(axis=0)))
    return tuple(int(s) // 2 for s in vols.image_hu.shape)


def _slice_index(mask: np.ndarray | None, axis: int, index: int) -> int:
    """``index``, or the nearest slice along ``axis`` that holds mask voxels if that one holds none
    (a curved pancreas's centroid can lie outside the organ)."""
    if mask is None or not mask.any():
        return index
    present = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
    return int(present[np.argmin(np.abs(present - index))])


def write_case_views(vols: CaseVolumes, out_dir: str | os.PathLike, stem: str) -> list[dict]:
    """Axial, coronal and sagittal overlays through the pancreas as ``out_dir/<stem>_<view>.png``.

    Returns:
        One dict per view: ``view``, ``index`` (the slice along the view's array axis), ``path``,
        ``scale`` (pixel repeats (rows, cols) per voxel), ``contours`` (``{"label"|"pred": (rows,
        cols)}`` pixel coordinates in the PNG, see :func:`pipeline.report.figures.compose_overlay`).
    """
    centre = centre_voxel(vols)
    reference = vols.label if vols.label is not None and vols.label.any() else vols.pred
    scales = display_scale(vols.spacing, vols.image_hu.shape)
    views = []
    for view in VIEWS:
        axis = VIEW_AXIS[view]
        index = _slice_index(reference, axis, centre[axis])

        def plane(volume, view=view, index=index):
            return None if volume is None else display_plane(volume, view, index)

        rgb, drawn = compose_overlay(plane(vols.image_hu), plane(vols.label), plane(vols.pred), scales[view])
        path = save_png(rgb, Path(out_dir) / f"{stem}_{view}.png")
        views.append({"view": view, "index": index, "path": path, "scale": scales[view], "contours": drawn})
    return views


def attention_window(
    shape: tuple[int, ...], centre: tuple[int, ...], roi: list[int], divisor: int
) -> tuple[list[int], list[int]]:
    """Start and size of a network window centred on ``centre`` and kept inside the volume.

    The size is ``roi`` rounded up to a multiple of ``divisor``. Along an axis where the volume is
    smaller than the window, the start is negative: the volume sits in the middle and the rest is
    padding, as the sliding-window inferer pads.
    """
    size = [int(-(-int(r) // divisor) * divisor) for r in roi]
    start = [
        int(min(max(c - s // 2, 0), n - s)) if n >= s else -((s - n) // 2)
        for c, s, n in zip(centre, size, shape)
    ]
    return start, size


def _crop_pad(volume: np.ndarray | torch.Tensor, start: list[int], size: list[int], fill: float):
    """``volume[..., start:start+size]`` per spatial axis, padded with ``fill`` outside the volume."""
    shape = volume.shape[-3:]
    box = tuple(slice(max(a, 0), min(a + s, n)) for a, s, n in zip(start, size, shape))
    crop = volume[(..., *box)]
    pad = [(max(-a, 0), s - max(-a, 0) - c) for a, s, c in zip(start, size, crop.shape[-3:])]
    if isinstance(crop, torch.Tensor):
        return torch.nn.functional.pad(crop, [v for p in reversed(pad) for v in p], value=fill)
    return np.pad(crop, [(0, 0)] * (crop.ndim - 3) + pad, constant_values=fill)


def write_attention_views(
    net: torch.nn.Module,
    vols: CaseVolumes,
    cfg: Config,
    out_dir: str | os.PathLike,
    stem: str,
    device: torch.device | str = "cpu",
) -> dict | None:
    """Each gate's attention coefficients on the axial slice through the pancreas (the paper's Figure 3).

    The network sees a window of ``infer.roi_size`` (or ``data.patch_size``) voxels of the
    normalised canonical volume centred on the pancreas, padded with 0 like the sliding-window
    inferer pads. Each gate's alpha (on its skip's coarser grid) is upsampled trilinearly to the
    window and shown on the window's axial slice through the centre, with the label contour (white).

    Returns:
        None for a network without gates (``model.name: unet``) or a case without its scan; else
        ``{"index": axial slice in the volume, "start", "size", "ct": path, "gates": [{"name",
        "path", "mean_in", "mean_out"}]}`` (``mean_in``/``mean_out``: mean alpha inside/outside
        the label on the shown slice, None without a label there).
    """
    if vols.network_input is None or not hasattr(net, "attention_maps"):
        return None
    centre = centre_voxel(vols)
    divisor = int(getattr(net, "divisor", 1))
    start, size = attention_window(
        vols.image_hu.shape, centre, list(cfg.infer.roi_size or cfg.data.patch_size), divisor
    )
    x = _crop_pad(vols.network_input, start, size, 0.0)[None].to(device)
    maps = net.to(device).attention_maps(x)
    if not maps:
        return None
    z = min(max(centre[2] - start[2], 0), size[2] - 1)
    ct = display_plane(_crop_pad(vols.image_hu, start, size, AIR_HU), "axial", z)
    lab = None if vols.label is None else display_plane(_crop_pad(vols.label, start, size, 0), "axial", z)
    scale = display_scale(vols.spacing, size, target_px=160)["axial"]
    out = Path(out_dir)
    rgb, _ = compose_overlay(ct, lab, None, scale)
    result = {
        "index": start[2] + z,
        "start": start,
        "size": size,
        "ct": save_png(rgb, out / f"{stem}_window.png"),
    }
    gates = []
    for name, alpha in sorted(maps.items()):  # finest gated level first
        up = torch.nn.functional.interpolate(alpha.float(), size=size, mode="trilinear", align_corners=False)[
            0
        ]
        channel = up[min(1, up.shape[0] - 1)].cpu().numpy()  # multi-class attention: the pancreas map
        a = display_plane(channel, "axial", z)
        inside = lab is not None and bool(lab.any())
        gates.append(
            {
                "name": name,
                "path": save_png(compose_attention(ct, a, lab, scale), out / f"{stem}_{name}.png"),
                "mean_in": float(a[lab > 0].mean()) if inside else None,
                "mean_out": float(a[lab == 0].mean()) if inside and (lab == 0).any() else None,
            }
        )
    result["gates"] = gates
    return result
