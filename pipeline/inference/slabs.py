"""Long scans in z-slabs: split along the input's third axis with overlap, predict, stitch.

:func:`plan_slabs` estimates a scan's peak memory from its header (:mod:`pipeline.inference.memory`)
before a voxel is read. Within ``infer.max_memory_gb`` the scan goes through the whole-scan path,
unchanged. Above it, the scan is cut into the fewest z-slabs of the input grid whose peak fits, each
reaching :func:`margin_slices` slices beyond its core on either side (at least half the network's
window along that axis, in mm on the canonical grid, so every voxel of a core sees the context a
whole-scan window gives it). :func:`predict_in_slabs` reads each slab (NIfTI: only its slices, through
nibabel's array proxy; other formats and DICOM series are read once, in their stored type, and
sliced), sends it through the usual stages (the transform chain, the sliding window, the inversion
to the slab's own input grid) and copies its core into the whole scan's mask.

Stitching: each output slice comes from the one slab whose core holds it, i.e. the slab where that
slice is farthest from a cut edge. Cores are at least ``margin`` slices from any cut, so the choice
is between two predictions that both had a full window of context; blending them linearly would
need the overlap's probabilities of both slabs on the input grid (4 bytes a voxel and class more)
for no gain in context, and would make a mask no longer the threshold of one network pass.

QC scores are combined from each slab's core on the canonical grid (:func:`pipeline.inference.qc.combine_tallies`);
the CT-intensity check uses the minimum and maximum over all slabs; the largest component
(``infer.keep_largest_component``) is chosen on the stitched mask; ``statistics.csv`` is measured on
the stitched mask and the scan in its stored type.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import torch

from pipeline.core.constants import NIFTI_EXTENSIONS
from pipeline.core.errors import ImageError, MemoryLimitError
from pipeline.core.geometry import spacing_from_affine
from pipeline.data.statistics import voxel_volume_mm3
from pipeline.inference.memory import GIB, MemoryModel, estimate_peak, memory_budget, resident_bytes
from pipeline.inference.qc import combine_tallies, qc_tally
from transforms.io import check_ct_intensities, check_header, load_volume, warn_once
from transforms.readers import c_ordered, read_header

if TYPE_CHECKING:
    from pipeline.inference.predictor import Prediction, Predictor  # for hints only: it imports this module

__all__ = ["SlabPlan", "SlabReader", "margin_slices", "plan_slabs", "predict_in_slabs", "slab_bounds"]

log = logging.getLogger("pancreas_seg")
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


@dataclass
class SlabPlan:
    """How one scan is cut along z.

    Attributes:
        record: the case's record (``image``, ``case_id``).
        shape: the scan's voxels (X, Y, Z).
        slabs: ``(read start, read stop, core start, core stop)`` along z for each slab.
        margin: slices read beyond each core.
        estimate_gb: the estimated peak of the whole scan in one piece; ``slab_estimate_gb`` in slabs.
        budget_gb: what ``infer.max_memory_gb`` allows.
    """

    record: dict
    shape: tuple[int, int, int]
    slabs: list[tuple[int, int, int, int]] = field(default_factory=list)
    margin: int = 0
    estimate_gb: float = 0.0
    slab_estimate_gb: float = 0.0
    budget_gb: float = 0.0


def margin_slices(
    affine: np.ndarray, roi: Sequence[int], target_spacing: Sequence[float], orientation: str
) -> int:
    """Input slices beyond a slab's core: half the window along the canonical axis that the input's
    third axis becomes (``data.orientation``), in mm, over the input's slice spacing, plus 2 slices
    for the resampling's reach."""
    code = nib.orientations.aff2axcodes(np.asarray(affine, dtype=np.float64))[2]
    orientation = orientation.upper()
    axis = orientation.index(code if code in orientation else _OPPOSITE[code])
    half_mm = int(roi[axis]) * float(target_spacing[axis]) / 2
    return math.ceil(half_mm / float(spacing_from_affine(affine)[2]) - 1e-6) + 2


def slab_bounds(nz: int, n: int, margin: int) -> list[tuple[int, int, int, int]]:
    """``n`` cores of (nearly) equal length over ``nz`` slices, each read with ``margin`` slices beyond it."""
    cuts = [round(i * nz / n) for i in range(n + 1)]
    return [(max(0, a - margin), min(nz, b + margin), a, b) for a, b in zip(cuts, cuts[1:])]


def _memory_model(predictor: Predictor) -> MemoryModel:
    cfg = predictor.cfg
    classes = int(cfg.model.out_channels)
    saved = classes if cfg.data.regions else classes - 1  # postprocess keeps the foreground channels
    return MemoryModel(
        process_bytes=resident_bytes(),
        window_voxels=math.prod(predictor.roi),
        sw_batch_size=int(cfg.infer.sw_batch_size),
        first_channels=int(cfg.model.channels[0]),
        on_cpu=predictor.device.type == "cpu",
        channels=classes + (len(predictor.networks) if predictor.fold_qc else 0),
        statistics=bool(cfg.infer.statistics),
        probability_channels=saved if cfg.infer.save_probabilities else 0,
        target_spacing=[float(v) for v in cfg.data.target_spacing],
    )


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GB" if n >= 0.1 * GIB else f"{n / 2**20:.1f} MB"


def _lazy(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_EXTENSIONS)


def plan_slabs(predictor: Predictor, record: dict) -> SlabPlan | None:
    """The z-slabs for ``record["image"]``, or None when the whole scan fits ``infer.max_memory_gb``
    (or its header cannot be read: the whole-scan path then reports the problem as always).

    Raises:
        MemoryLimitError: ``infer.max_memory_gb`` is set and even the smallest slabs (cores of
            ``margin`` slices) would not fit. With 0 (auto) a warning is logged instead and the
            smallest slabs are used (or the whole scan, when it is too short to be cut).
    """
    cfg, image = predictor.cfg, record.get("image")
    if not isinstance(image, (str, Path)) or not str(image):
        return None
    budget, source = memory_budget(float(cfg.infer.max_memory_gb))
    try:
        header = read_header(Path(image), cfg.data.dicom_series)
        check_header(header, str(image), Path(image))
    except ImageError:
        return None
    if budget is None:
        return None
    shape = tuple(int(s) for s in header.shape[:3])
    # a DICOM series has its geometry only once read: planned at 1 mm slices, re-planned then
    affine = header.affine if header.affine is not None else np.eye(4)
    spacing = None if header.affine is None else spacing_from_affine(affine)
    model = _memory_model(predictor)
    whole = estimate_peak(model, shape, header.itemsize, spacing)
    if whole <= budget:
        return None
    margin = margin_slices(affine, predictor.roi, cfg.data.target_spacing, cfg.data.orientation)
    n_vox = math.prod(shape)
    kept = header.itemsize if cfg.infer.statistics or not _lazy(Path(image)) else 0  # the scan, stored type
    held = n_vox * (1 + kept + 4 * model.probability_channels)  # stitched mask, scan, probabilities
    nz, plan, estimate = shape[2], None, whole
    for n in range(2, max(nz // max(margin, 1), 1) + 1):
        slabs = slab_bounds(nz, n, margin)
        longest = max(s1 - s0 for s0, s1, _, _ in slabs)
        if longest >= nz:
            continue
        plan = SlabPlan(record, shape, slabs, margin)
        estimate = estimate_peak(model, (*shape[:2], longest), header.itemsize, spacing, held)
        if estimate <= budget:
            break
    dims = "x".join(str(s) for s in shape)
    if plan is None or estimate > budget:
        least = f", {_size(estimate)} in the smallest z-slabs" if plan is not None else ""
        message = (
            f"{image}: a {dims} scan needs about {_size(whole)} in one piece{least}; "
            f"{source} allows {_size(budget)}"
        )
        if cfg.infer.max_memory_gb > 0:
            raise MemoryLimitError(message + " (raise infer.max_memory_gb or lower infer.sw_batch_size)")
        warn_once(message + "; continuing with the least memory possible")
        if plan is None:
            return None
    plan.estimate_gb, plan.slab_estimate_gb, plan.budget_gb = whole / GIB, estimate / GIB, budget / GIB
    if cfg.data.intensity == "zscore":  # per-volume statistics: each slab would get its own
        warn_once(f"{image}: data.intensity=zscore normalises each z-slab on its own statistics")
    log.info(
        "%s: %s scan in %d z-slabs (overlap %d slices): about %s instead of %s (%s)",
        record.get("case_id", image),
        dims,
        len(plan.slabs),
        plan.margin,
        _size(estimate),
        _size(whole),
        source,
    )
    return plan


class SlabReader:
    """Reads z-slabs of one scan as the loader would read the whole: float32 HU, (1, X, Y, n), RAS affine.

    NIfTI files are read slab by slab through nibabel's array proxy (a ``.nii`` seeks to the slices;
    a ``.nii.gz`` decompresses up to them); other formats and DICOM series are read once, in their
    stored type, and sliced.

    Raises:
        ImageError: as :func:`transforms.io.load_volume`.
    """

    def __init__(self, path: str | Path, dicom_series: str = "") -> None:
        self.path, self.name = Path(path), str(path)
        self.whole = None
        if _lazy(self.path):
            header = read_header(self.path)
            check_header(header, self.name, self.path)
            self.proxy = nib.load(str(self.path)).dataobj
            self.affine = np.asarray(header.affine, dtype=np.float64)
            self.shape = tuple(int(s) for s in header.shape[:3])
        else:
            self.whole = load_volume(self.path, dicom_series=dicom_series, dtype=None)
            self.affine = np.asarray(self.whole.affine, dtype=np.float64)
            self.shape = tuple(int(s) for s in self.whole.shape[1:])

    def read(self, z0: int, z1: int):
        """Slices ``z0:z1``: (the slab as a float32 ``MetaTensor``, its voxels in the stored type)."""
        from monai.data import MetaTensor

        if self.whole is None:
            try:
                raw = np.asarray(self.proxy[:, :, z0:z1]).reshape(*self.shape[:2], z1 - z0)
                raw = c_ordered(raw)
                raw = raw if raw.flags.writeable else raw.copy()  # a memory map of the file: read-only
            except Exception as exc:  # nibabel and zlib raise anything on a bad file
                raise ImageError(f"{self.name}: cannot read image ({type(exc).__name__}: {exc})") from None
            if raw.dtype.kind == "f" and not np.isfinite(raw).all():
                bad = int((~np.isfinite(raw)).sum())
                raise ImageError(
                    f"{self.name}: image has {bad} NaN or infinite voxels (slices {z0}-{z1 - 1})"
                )
        else:
            raw = self.whole.as_tensor()[0, :, :, z0:z1].numpy()
        shift = np.eye(4)
        shift[2, 3] = z0
        affine = torch.as_tensor(self.affine @ shift)
        meta = {
            "affine": affine,
            "original_affine": affine.clone(),
            "spatial_shape": [*self.shape[:2], z1 - z0],
            "filename_or_obj": self.name,
            "space": "RAS",
            "original_channel_dim": float("nan"),
        }
        image = torch.from_numpy(c_ordered(raw, torch.float32).reshape(1, *raw.shape))
        return MetaTensor(image, meta=meta), raw


def _core_box(canonical: torch.Tensor, slab_affine: np.ndarray, lo: int, hi: int) -> tuple[slice, ...]:
    """Index of the canonical voxels (channel first) whose centres fall in slab slices ``lo:hi``."""
    m = np.linalg.inv(slab_affine) @ np.asarray(canonical.affine, dtype=np.float64)
    axis = int(np.argmax(np.abs(m[2, :3])))
    size = int(canonical.shape[1 + axis])
    z = m[2, axis] * np.arange(size) + m[2, 3]
    hit = np.nonzero((z >= lo - 0.5) & (z < hi - 0.5))[0]
    box = [slice(None)] * 4
    box[1 + axis] = slice(int(hit[0]), int(hit[-1]) + 1) if len(hit) else slice(0, 0)
    return tuple(box)


def predict_in_slabs(predictor: Predictor, plan: SlabPlan) -> Prediction:
    """Predict ``plan.record``'s scan slab by slab and stitch the slabs' cores on the input grid.

    Returns:
        A :class:`~pipeline.inference.predictor.Prediction` as :meth:`Predictor.predict` gives for the
        whole scan: the mask (and probabilities) on the input's grid, timings summed over slabs, and
        with ``infer.statistics`` the scan and the combined QC scores.

    Raises:
        ImageError: an unreadable or unusable scan.
    """
    from pipeline.inference.predictor import Prediction, keep_largest_component  # it imports this module

    cfg, record = predictor.cfg, plan.record
    stats = bool(cfg.infer.statistics)
    t = dict.fromkeys(("load_s", "preprocess_s", "network_s", "stitch_s", "invert_s"), 0.0)
    start = time.perf_counter()
    reader = SlabReader(record["image"], cfg.data.dicom_series)
    slabs = plan.slabs
    if reader.whole is not None:  # read once: the real geometry is known now (DICOM series)
        margin = margin_slices(reader.affine, predictor.roi, cfg.data.target_spacing, cfg.data.orientation)
        slabs = slab_bounds(reader.shape[2], len(slabs), margin)
    mask = np.zeros(reader.shape, np.uint8)
    prob, scan, tallies, voxel_ml = None, None, [], 1.0
    lo, hi = math.inf, -math.inf
    t["load_s"] += time.perf_counter() - start
    for s0, s1, c0, c1 in slabs:
        t0 = time.perf_counter()
        slab, raw = reader.read(s0, s1)
        lo, hi = min(lo, float(raw.min())), max(hi, float(raw.max()))
        if stats and reader.whole is None:
            scan = np.empty(reader.shape, raw.dtype) if scan is None else scan
            scan[:, :, c0:c1] = raw[:, :, c0 - s0 : c1 - s0]
        t["load_s"] += time.perf_counter() - t0
        data, tp = predictor.preprocess({"image": slab, "case_id": record.get("case_id", "")})
        slab_affine = slab.affine.numpy()
        data.pop("original_image", None)  # the statistics' scan is stitched from ``raw`` above
        del slab, raw  # the slab on the input grid: its memory back before the windows run
        t["preprocess_s"] += tp["load_s"] + tp["preprocess_s"]
        probs, tn = predictor.sliding_window(data["image"])
        t["network_s"] += tn["network_s"]
        t["stitch_s"] += tn["stitch_s"]
        probs, scored, folds = predictor.qc_inputs(probs)
        if stats:
            box = _core_box(data["image"], slab_affine, c0 - s0, c1 - s0)
            tallies.append(qc_tally(scored[box], None if folds is None else folds[box]))
            voxel_ml = voxel_volume_mm3(data["image"].affine) / 1000
        out = predictor.postprocess(data, probs, largest=False)
        del data, probs, scored, folds
        t["invert_s"] += out.timings["invert_s"]
        mask[:, :, c0:c1] = out.mask[:, :, c0 - s0 : c1 - s0]
        if out.probability is not None:
            shape = (*out.probability.shape[:-1], reader.shape[2])
            prob = np.zeros(shape, np.float32) if prob is None else prob
            prob[..., c0:c1] = out.probability[..., c0 - s0 : c1 - s0]
        del out
    for message in check_ct_intensities(torch.tensor([lo, hi]), reader.name):
        warn_once(message)
    if cfg.infer.keep_largest_component:
        mask = keep_largest_component(mask)
    extras = {}
    if stats:
        t0 = time.perf_counter()
        scores = combine_tallies(tallies, voxel_ml)
        scores["qc_s"] = time.perf_counter() - t0
        whole = reader.whole.as_tensor() if reader.whole is not None else torch.from_numpy(scan)[None]
        extras = {"image": whole, "qc": scores}
    return Prediction(mask, prob, reader.affine, t, extras)
