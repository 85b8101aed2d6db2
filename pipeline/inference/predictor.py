"""One scan in, one mask on the scan's own grid out: preprocessing, sliding window, inversion.

:class:`Predictor` holds an ensemble of networks and the transform chain they were trained with.
:meth:`Predictor.predict` runs the stages that ``timings.csv`` reports: load, preprocess (the
canonical grid and intensities of training), network and stitch (``monai.inferers.SlidingWindowInferer``,
softmax averaged over networks and flips inside each window), invert (back to the input grid through
the chain's inverse, then threshold). Batch handling and files are in :mod:`pipeline.inference.batch`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from models.fusion import prepare_for_inference
from pipeline.core import runtime
from pipeline.core.config import Config, PerfConfig
from pipeline.core.errors import CheckpointError, ConfigError
from pipeline.core.runtime import (
    autocast_context,
    configure_process,
    prepare_input,
    prepare_model,
    select_device,
)
from pipeline.data.statistics import voxel_volume_mm3
from pipeline.inference.qc import ensemble_scores
from pipeline.inference.slabs import SlabPlan, plan_slabs, predict_in_slabs
from transforms import build_infer_transforms, invert_to_original, regions_to_labels

__all__ = ["Pending", "Prediction", "Predictor", "inference_perf", "keep_largest_component"]

log = logging.getLogger("pancreas_seg")


@dataclass
class Prediction:
    """The result for one scan.

    Attributes:
        mask: uint8 label map on the input grid, in the input file's voxel order.
        probability: float32 probabilities on the input grid, or None when not asked for: with one
            class the foreground probability (X, Y, Z); with K classes (K, X, Y, Z), channel k-1 the
            probability of class k (softmax), or of region k-1 (``data.regions``: sigmoid).
        affine: the input grid's RAS affine.
        timings: seconds per stage (``load_s``, ``preprocess_s``, ``network_s``, ``stitch_s``, ``invert_s``).
        extras: with ``infer.statistics``: ``"image"``, the scan as loaded (HU, input grid, the
            mask's voxel order) and ``"qc"``, :func:`pipeline.inference.qc.ensemble_scores`.
    """

    mask: np.ndarray
    probability: np.ndarray | None
    affine: np.ndarray
    timings: dict
    extras: dict = field(default_factory=dict)


@dataclass
class Pending:
    """A scan between the stages of :meth:`Predictor.predict` (a batch runs the stages of neighbouring
    cases at the same time: :mod:`pipeline.inference.batch`).

    Attributes:
        data: the chain's output dict (:meth:`Predictor.preprocess`).
        timings: seconds per stage so far.
        probs: (C, X, Y, Z) class probabilities on the canonical grid, once the network has run.
        plan: a scan too large for ``infer.max_memory_gb`` in one piece: its z-slabs
            (:mod:`pipeline.inference.slabs`); ``data`` is then empty, and :meth:`Predictor.run_network`
            predicts every slab and stitches them into ``result``.
    """

    data: dict
    timings: dict
    probs: torch.Tensor | None = None
    plan: SlabPlan | None = None
    result: Prediction | None = None


def inference_perf(cfg: Config, device: torch.device) -> PerfConfig:
    """The speed options inference runs with: ``perf.*`` adjusted by ``infer.precision``.

    ``auto`` on a CPU turns on channels_last_3d, and bf16 autocast where the CPU has native bf16
    instructions (faster than float32 for the paper's network, with masks that agree at
    Dice >= 0.99: ``bench/infer_speed.py``, numbers in README.md, "Inference on full scans"); on
    CUDA it keeps ``perf.*`` (AMP). ``fp32`` turns every autocast off; ``bf16`` turns it on
    (``infer.precision`` is checked when the config is loaded).
    """
    mode = cfg.infer.precision
    perf = dataclasses.replace(cfg.perf)
    if mode == "fp32":
        perf.bf16, perf.amp = False, False
    elif mode == "bf16":
        perf.bf16, perf.amp = True, True
    elif device.type == "cpu":
        perf.channels_last = True  # faster on its own in float32 too (bench/infer_speed.py)
        perf.bf16 = perf.bf16 or runtime.cpu_supports_bf16()  # looked up here: tests stand in for the CPU
    return perf


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """``mask`` with only its largest 26-connected foreground component (labels > 0 kept as they are)."""
    from scipy import ndimage

    fg = mask > 0
    box = ndimage.find_objects(fg.astype(np.uint8))
    if not box or box[0] is None:
        return mask
    sub = fg[box[0]]  # label only the bounding box: a pancreas is a small part of a scan
    labels, n = ndimage.label(sub, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    out = np.zeros_like(mask)
    out[box[0]] = np.where(labels == largest, mask[box[0]], 0)
    return out


class Predictor:
    """An ensemble of networks plus the preprocessing they were trained with.

    Args:
        networks: trained networks; their softmax outputs are averaged (and over flips with
            ``infer.tta_flip``). Batch norms are folded into the convolutions for speed.
        cfg: the training config: ``data.*`` decides the canonical grid, ``infer.*`` the sliding
            window, ``perf.*`` and ``infer.precision`` the device and speed options.

    Raises:
        ConfigError: no networks, a sliding window that is not a multiple of the networks' poolings,
            or CUDA asked for where there is none.
    """

    def __init__(self, networks: Sequence[torch.nn.Module], cfg: Config):

        if not networks:
            raise CheckpointError("no networks to predict with (no checkpoint given)")
        self.cfg = cfg
        self.device = select_device(cfg.perf)
        configure_process(cfg.perf)
        self.perf = inference_perf(cfg, self.device)
        self.networks = [
            prepare_model(prepare_for_inference(n.eval()), self.device, self.perf) for n in networks
        ]
        self.transform = build_infer_transforms(cfg, with_label=True)  # the label only when asked for
        # QC needs each network's foreground too; stitched as extra channels of the same windows
        self.fold_qc = bool(cfg.infer.statistics) and len(self.networks) > 1
        self._check_window()
        self._network_s = 0.0

    def _check_window(self) -> None:
        """The window must fit these networks' poolings (the config's own values are checked when
        it is loaded; networks may come from elsewhere, e.g. checkpoints)."""
        roi = list(self.cfg.infer.roi_size or self.cfg.data.patch_size)
        self.roi = [int(v) for v in roi]
        self.divisor = max(int(getattr(n, "divisor", 1)) for n in self.networks)
        if any(v % self.divisor for v in self.roi):
            raise ConfigError(
                f"config key infer.roi_size: {self.roi} must be multiples of {self.divisor} (the network's poolings)"
            )

    def window_size(self, spatial: Sequence[int]) -> list[int]:
        """The sliding window for an image of ``spatial`` size: the roi, but along an axis where the
        image is smaller, only the image's size rounded up to the network's divisor (a thin slab
        then costs what it holds, not a whole patch of padding)."""
        d = self.divisor
        return [min(r, -(-int(s) // d) * d) for r, s in zip(self.roi, spatial)]

    # ----------------------------------------------------------------------------- stages
    def preprocess(self, record: dict, with_label: bool = False) -> tuple[dict, dict]:
        """Load ``record["image"]`` (and ``record["label"]`` when ``with_label``) onto the canonical grid.

        Returns:
            (the chain's output dict, ``{"load_s": .., "preprocess_s": ..}``).

        Raises:
            ImageError: an unreadable or unusable scan.
        """
        item = {"image": record["image"], "case_id": record.get("case_id", "")}
        if with_label and record.get("label"):
            item["label"], item["label_map"] = record["label"], record.get("label_map", "")
        t0 = time.perf_counter()
        data = self.transform(item, end=1)  # the loader is the first step
        original = data["image"].as_tensor() if self.cfg.infer.statistics else None
        t1 = time.perf_counter()
        data = self.transform(data, start=1)
        if original is not None:  # the HU of the input's own grid, for statistics.csv
            data["original_image"] = original
        return data, {"load_s": t1 - t0, "preprocess_s": time.perf_counter() - t1}

    def _stitch_device(self, spatial: Sequence[int]) -> torch.device:
        """The device of the stitched output: the CPU when it would not comfortably fit the GPU."""
        if self.device.type != "cuda":
            return self.device
        n = int(np.prod(spatial)) * (int(self.cfg.model.out_channels) + 1)  # probabilities + weights
        if n > self.cfg.infer.cpu_stitch_voxels:
            return torch.device("cpu")
        free, _ = torch.cuda.mem_get_info(self.device)
        return torch.device("cpu") if 4 * n > free // 2 else self.device

    def probabilities(self, window: torch.Tensor) -> torch.Tensor:
        """Mean softmax (sigmoid with ``data.regions``) over the networks (and in-plane flips with ``infer.tta_flip``) for a batch of
        normalised windows (B, 1, X, Y, Z); the sliding window's callable. Call under ``torch.inference_mode()``."""
        t0 = time.perf_counter()
        x = prepare_input(window, self.perf)
        flips = [()] + ([(2,), (3,), (2, 3)] if self.cfg.infer.tta_flip else [])  # in-plane, as training
        total, folds = None, []
        # regions: independent sigmoids (a voxel is in "whole pancreas" and "tumour" at once)
        activation = torch.sigmoid if self.cfg.data.regions else lambda t: torch.softmax(t, dim=1)
        with autocast_context(self.device, self.perf):
            for net in self.networks:
                before = total[:, 0].clone() if self.fold_qc and total is not None else None
                for dims in flips:
                    p = activation(net(torch.flip(x, dims) if dims else x).float())
                    p = torch.flip(p, dims) if dims else p
                    total = p if total is None else total.add_(p)
                if self.fold_qc:  # this network's foreground: 1 - its background (regions: region 0)
                    first = (total[:, 0] if before is None else total[:, 0] - before) / len(flips)
                    folds.append(first if self.cfg.data.regions else 1.0 - first)
        total = total.div_(len(self.networks) * len(flips))
        if folds:  # stitched with the classes; sliding_window splits them off again
            total = torch.cat([total, torch.stack(folds, 1)], 1)
        total = total.contiguous()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # so the time is the network's, not the stitching's
        self._network_s += time.perf_counter() - t0
        return total

    def sliding_window(self, image: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Class probabilities (C, X, Y, Z) on the CPU for a canonical (1, X, Y, Z) image."""
        from monai.inferers import SlidingWindowInferer

        c = self.cfg.infer
        inferer = SlidingWindowInferer(
            self.window_size(image.shape[1:]),
            sw_batch_size=c.sw_batch_size,
            overlap=c.overlap,
            mode=c.mode,
            sw_device=self.device,
            device=self._stitch_device(image.shape[1:]),
            progress=False,
        )
        self._network_s = 0.0
        t0 = time.perf_counter()
        x = torch.as_tensor(image)[None].to(self.device)  # as_tensor: no metadata through the windows
        with torch.inference_mode():
            probs = inferer(x, self.probabilities)[0].cpu()
        total = time.perf_counter() - t0
        return probs, {"network_s": self._network_s, "stitch_s": max(total - self._network_s, 0.0)}

    def qc_inputs(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(class probabilities, what QC scores, each fold's foreground or None) of the window's output."""
        c = int(self.cfg.model.out_channels)
        folds = probs[c:] if self.fold_qc else None
        probs = probs[:c]
        # regions are independent sigmoids: score the first (whole organ) as background/foreground
        scored = torch.stack([1.0 - probs[0], probs[0]]) if self.cfg.data.regions else probs
        return probs, scored, folds

    def _scores(self, data: dict, probs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Split the folds' channels off ``probs`` and score the case (:mod:`pipeline.inference.qc`)."""
        if not self.cfg.infer.statistics:
            return probs[: int(self.cfg.model.out_channels)], {}
        probs, scored, folds = self.qc_inputs(probs)
        t0 = time.perf_counter()
        voxel_ml = voxel_volume_mm3(data["image"].affine) / 1000
        scores = ensemble_scores(scored, folds, voxel_ml)
        scores["qc_s"] = time.perf_counter() - t0
        return probs, scores

    def postprocess(self, data: dict, probs: torch.Tensor, largest: bool | None = None) -> Prediction:
        """Bring canonical-grid probabilities back to the input grid and turn them into labels.

        With two classes only the foreground channel is inverted (linear interpolation) and the
        mask is ``p > 0.5``, the same as the argmax of both channels at half the cost. With more
        classes the mask is the argmax; with ``data.regions`` each region is ``p > 0.5`` and label
        ``i + 1`` goes where region ``i`` is on, later regions winning (nnU-Net's conversion).

        Args:
            data: the dict :meth:`preprocess` returned (its image carries the applied transforms).
            probs: (C, X, Y, Z) class (or region) probabilities on the canonical grid.
            largest: keep only the largest component; None: ``infer.keep_largest_component`` (a
                z-slab passes False: the component is chosen on the stitched mask).
        """
        from monai.data import MetaTensor

        t0 = time.perf_counter()
        image = data["image"]
        regions = bool(self.cfg.data.regions)
        two = probs.shape[0] == 2 and not regions
        pred = probs[1:2] if two else probs
        item = {"image": image, "pred": MetaTensor(pred, meta=dict(image.meta))}  # the meta holds the affine
        inv = torch.as_tensor(invert_to_original(item, self.transform, keys=("pred",), nearest=False)["pred"])
        keep = self.cfg.infer.save_probabilities
        if two:
            mask = (inv[0] > 0.5).to(torch.uint8).numpy()
            fg = inv[0] if keep else None
        elif regions:
            mask = regions_to_labels(inv > 0.5).numpy()
            fg = (inv[0] if inv.shape[0] == 1 else inv) if keep else None
        else:
            mask = inv.argmax(0).to(torch.uint8).numpy()
            fg = inv[1:] if keep else None
        if self.cfg.infer.keep_largest_component if largest is None else largest:
            mask = keep_largest_component(mask)
        affine = np.asarray(image.meta.get("original_affine", image.affine), dtype=np.float64)
        fg = None if fg is None else fg.clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False)
        return Prediction(mask, fg, affine, {"invert_s": time.perf_counter() - t0})

    def prepare(self, record: dict) -> Pending:
        """Stage 1 of :meth:`predict`: load and preprocess (thread-safe; a batch runs it ahead). A scan
        whose estimated peak exceeds ``infer.max_memory_gb`` is only planned here, in z-slabs
        (:func:`pipeline.inference.slabs.plan_slabs`); :meth:`run_network` then reads and predicts them.

        Raises:
            ImageError: an unreadable or unusable scan.
            MemoryLimitError: even the smallest z-slabs would need more than ``infer.max_memory_gb``.
        """
        plan = plan_slabs(self, record)
        if plan is not None:
            return Pending({}, {}, plan=plan)
        data, t = self.preprocess(record)
        return Pending(data, t)

    def run_network(self, pending: Pending) -> Pending:
        """Stage 2 of :meth:`predict`: the sliding window (one thread at a time: it times itself); for a
        scan planned in z-slabs, every slab's stages and the stitching."""
        if pending.plan is not None:
            pending.result = predict_in_slabs(self, pending.plan)
            return pending
        pending.probs, t = self.sliding_window(pending.data["image"])
        pending.timings.update(t)
        return pending

    def finish(self, pending: Pending) -> Prediction:
        """Stage 3 of :meth:`predict`: QC scores, then back to the input grid (thread-safe; a batch
        runs it behind)."""
        if pending.result is not None:
            return pending.result
        probs, scores = self._scores(pending.data, pending.probs)
        out = self.postprocess(pending.data, probs)
        out.timings = {**pending.timings, **out.timings}
        if "original_image" in pending.data:
            out.extras = {"image": pending.data["original_image"], "qc": scores}
        return out

    def predict(self, record: dict) -> Prediction:
        """Segment one scan (``record["image"]``: a file or a DICOM series folder): the three stages
        :meth:`prepare`, :meth:`run_network`, :meth:`finish` in a row.

        Raises:
            ImageError: an unreadable or unusable scan.
        """
        return self.finish(self.run_network(self.prepare(record)))
