"""Sliding-window inference on whole scans, mapped back onto each scan's exact grid.

One code path serves ``pancreas-seg infer`` and cross-validation's held-out predictions:
:class:`Predictor` (an ensemble of one or more networks with the preprocessing they were trained
with) and :func:`predict_cases` (batch over records: skip finished cases, isolate failures, write
``timings.csv``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.writers import output_path, save_like

__all__ = ["Predictor", "predict_cases", "TIMING_COLUMNS"]

log = logging.getLogger("pancreas_seg")
TIMING_COLUMNS = (
    "case_id",
    "load_s",
    "preprocess_s",
    "network_s",
    "stitch_s",
    "invert_s",
    "save_s",
    "total_s",
    "peak_rss_mb",
)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Predictor:
    """An ensemble of networks plus the preprocessing they were trained with.

    Args:
        networks: trained networks (eval mode); their softmax outputs are averaged.
        cfg: the training config (data.* decides the canonical grid; infer.* the sliding window).
    """

    def __init__(self, networks: Sequence[torch.nn.Module], cfg: Config):
        from pipeline.runtime import prepare_model, select_device
        from transforms import build_infer_transforms

        self.cfg = cfg
        self.device = select_device(cfg.perf)
        self.networks = [prepare_model(n.eval(), self.device, cfg.perf) for n in networks]
        self.transform = build_infer_transforms(cfg)
        self._network_seconds = 0.0

    def _run_network(self, window: torch.Tensor) -> torch.Tensor:
        from pipeline.runtime import autocast_context, prepare_input

        t0 = time.perf_counter()
        x = prepare_input(window, self.cfg.perf)
        probs = None
        with torch.inference_mode(), autocast_context(self.device, self.cfg.perf):
            flips = [()]
            if self.cfg.infer.tta_flip:
                flips += [(2,), (3,), (2, 3)]  # the in-plane axes, as in the training augmentation
            for net in self.networks:
                for dims in flips:
                    xi = torch.flip(x, dims) if dims else x
                    p = torch.softmax(net(xi).float(), dim=1)
                    p = torch.flip(p, dims) if dims else p
                    probs = p if probs is None else probs + p
        self._network_seconds += time.perf_counter() - t0
        return probs / (len(self.networks) * len(flips))

    def predict(self, record: dict) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, dict]:
        """Predict one case.

        Returns:
            (mask uint8 on the input grid, foreground probability on the input grid or None,
            the input's affine, timings in seconds).
        """
        from monai.data import MetaTensor
        from monai.inferers import SlidingWindowInferer

        from transforms import invert_to_original

        t = {}
        t0 = time.perf_counter()
        data = self.transform({"image": record["image"], "case_id": record.get("case_id", "")}, end=1)
        t["load_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        data = self.transform(data, start=1)
        t["preprocess_s"] = time.perf_counter() - t1
        image: MetaTensor = data["image"]
        cfg = self.cfg.infer
        roi = list(cfg.roi_size or self.cfg.data.patch_size)
        big = int(np.prod(image.shape[1:])) * self.cfg.model.out_channels > cfg.cpu_stitch_voxels
        inferer = SlidingWindowInferer(
            roi,
            cfg.sw_batch_size,
            cfg.overlap,
            mode=cfg.mode,
            sw_device=self.device,
            device=torch.device("cpu") if big else self.device,
            progress=False,
        )
        self._network_seconds = 0.0
        t2 = time.perf_counter()
        with torch.inference_mode():
            probs = inferer(image.as_tensor()[None].to(self.device), self._run_network)[0].cpu()
        total_sw = time.perf_counter() - t2
        t["network_s"] = self._network_seconds
        t["stitch_s"] = max(total_sw - self._network_seconds, 0.0)
        t3 = time.perf_counter()
        data["pred"] = MetaTensor(
            probs, affine=image.affine, meta=image.meta, applied_operations=image.applied_operations
        )
        data = invert_to_original(data, self.transform, keys=("pred",), nearest=False)
        prob = torch.as_tensor(data["pred"]).float()
        mask = prob.argmax(0).to(torch.uint8).numpy()
        if self.cfg.infer.keep_largest_component and mask.any():
            from monai.transforms import KeepLargestConnectedComponent

            mask = np.asarray(KeepLargestConnectedComponent(applied_labels=[1])(torch.as_tensor(mask[None])))[
                0
            ]
            mask = mask.astype(np.uint8)
        fg = prob[1:].sum(0).numpy() if self.cfg.infer.save_probabilities else None
        affine = np.asarray(data["image"].meta.get("original_affine", data["pred"].affine))
        t["invert_s"] = time.perf_counter() - t3
        return mask, fg, affine, t


def predict_cases(
    predictor: Predictor,
    records: Sequence[dict],
    out_dir: str | os.PathLike,
    overwrite: bool = False,
    timings_name: str = "timings.csv",
) -> dict:
    """Predict every record into ``out_dir``; returns ``{"written": [...], "skipped": [...], "failed": {case: msg}}``.

    A case whose output exists is skipped unless ``overwrite``; a case that fails is reported and
    the others still run. Per-case timings go to ``out_dir/timings.csv``.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped, failed, rows = [], [], {}, []
    for rec in tqdm(records, desc="infer", unit="case", disable=not _tty()):
        case = rec["case_id"]
        target = output_path(out_dir, case, rec["image"])
        if target.exists() and not overwrite:
            skipped.append(target)
            continue
        try:
            start = time.perf_counter()
            mask, fg, affine, t = predictor.predict(rec)
            t4 = time.perf_counter()
            save_like(mask, affine, target, reference=rec["image"])
            if fg is not None:
                save_like(
                    fg.astype(np.float32),
                    affine,
                    output_path(out_dir, case, rec["image"], "_prob"),
                    rec["image"],
                )
            t["save_s"] = time.perf_counter() - t4
            t["total_s"] = time.perf_counter() - start
            rows.append({"case_id": case, **t, "peak_rss_mb": _peak_rss_mb()})
            written.append(target)
            log.info("%s: %s (%.1f s)", case, target, t["total_s"])
        except PipelineError as exc:
            failed[case] = f"{type(exc).__name__}: {exc}"
            log.error("%s: failed: %s", case, failed[case])
    if rows:
        _append_timings(out_dir / timings_name, rows)
    return {"written": written, "skipped": skipped, "failed": failed}


def _append_timings(path: Path, rows: list[dict]) -> None:
    new = pd.DataFrame(rows, columns=list(TIMING_COLUMNS))
    if path.exists():
        old = pd.read_csv(path)
        new = pd.concat([old[~old["case_id"].isin(new["case_id"])], new], ignore_index=True)
    tmp = path.with_name(f".{path.name}.tmp")
    new.to_csv(tmp, index=False, float_format="%.4f")
    os.replace(tmp, path)


def _tty() -> bool:
    import sys

    return sys.stderr.isatty()


_SCAN_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _is_dicom_dir(folder: Path) -> bool:
    for p in sorted(folder.iterdir())[:20]:
        if p.is_file():
            if p.suffix.lower() == ".dcm":
                return True
            with p.open("rb") as f:
                if f.read(132)[128:] == b"DICM":
                    return True
    return False


def discover_inputs(path: str | os.PathLike) -> list[dict]:
    """Records to predict from a scan file, a DICOM series folder, a folder of scans, or a manifest CSV.

    Raises:
        PipelineError: nothing usable at ``path``.
    """
    from pipeline.errors import ImageError

    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        from pipeline.manifest import case_records, read_manifest

        return case_records(read_manifest(path))
    if path.is_file():
        name = path.name
        for end in _SCAN_ENDINGS:
            if name.lower().endswith(end):
                return [{"case_id": name[: -len(end)], "image": str(path.resolve())}]
        raise ImageError(
            f"{path}: not a scan (expected {', '.join(_SCAN_ENDINGS)}, a DICOM folder or a manifest .csv)"
        )
    if not path.is_dir():
        raise ImageError(f"{path}: no such file or folder")
    if _is_dicom_dir(path):
        return [{"case_id": path.name, "image": str(path.resolve())}]
    records = []
    for p in sorted(path.iterdir()):
        if p.is_dir() and _is_dicom_dir(p):
            records.append({"case_id": p.name, "image": str(p.resolve())})
        elif p.is_file() and not p.name.startswith("."):
            for end in _SCAN_ENDINGS:
                if p.name.lower().endswith(end) and end != ".raw":
                    records.append({"case_id": p.name[: -len(end)], "image": str(p.resolve())})
                    break
    if not records:
        raise ImageError(f"{path}: no scans found (NIfTI, NRRD, MHA or DICOM series folders)")
    return records


def load_predictor(model: str | os.PathLike, overrides: Sequence[str] | None = None) -> Predictor:
    """A :class:`Predictor` from a CV run folder (every fold's best.pt, averaged) or one checkpoint file.

    The preprocessing is the one the checkpoints were trained with; ``overrides`` (``infer.*``,
    ``perf.*``) change only how inference runs.
    """
    from pipeline.checkpoint import load_checkpoint, load_network
    from pipeline.config import Config, apply_overrides, load_config, update_config
    from pipeline.errors import CheckpointError

    model = Path(model)
    if model.is_dir():
        paths = sorted(model.glob("fold_*/checkpoints/best.pt"))
        if not paths:
            raise CheckpointError(f"{model}: no fold_*/checkpoints/best.pt in this run folder")
        cfg = load_config(model / "config.yaml") if (model / "config.yaml").exists() else None
    else:
        paths, cfg = [model], None
    if cfg is None:
        cfg = update_config(Config(), load_checkpoint(paths[0]).get("config") or {})
    for item in overrides or []:
        if not item.split("=", 1)[0].strip().startswith(("infer.", "perf.")):
            raise CheckpointError(f"--set {item}: only infer.* and perf.* can change at inference time")
    apply_overrides(cfg, list(overrides or []))
    nets = [load_network(p, expect=cfg.model)[0] for p in paths]
    log.info("model: %d network(s) from %s", len(nets), model)
    return Predictor(nets, cfg)
