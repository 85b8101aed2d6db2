"""``pancreas-seg infer``: sliding-window inference on whole scans, mapped back onto each scan's grid.

One code path serves ``pancreas-seg infer`` and cross-validation's held-out predictions:
:func:`load_predictor` (one checkpoint, or every fold's best checkpoint of a CV run as an ensemble),
:class:`~pipeline.predictor.Predictor` (one scan) and :func:`~pipeline.batch.predict_cases` (a
batch: skip finished cases, isolate failures, write ``timings.csv`` and ``inputs.csv``; re-exported
here). Per case it writes ``<case_id><ext>`` in the
input's format (NIfTI for a DICOM series), optionally ``<case_id>_prob<ext>`` and, for DICOM
series, ``<case_id>_seg.dcm``; each file goes to a temporary name first and the mask is renamed
into place last, so an existing mask means a finished case.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from pipeline.batch import TIMING_COLUMNS, predict_cases
from pipeline.config import Config
from pipeline.errors import CheckpointError, ConfigError, ImageError
from pipeline.predictor import Prediction, Predictor

__all__ = [
    "Prediction",
    "Predictor",
    "TIMING_COLUMNS",
    "discover_inputs",
    "load_predictor",
    "predict_cases",
]

log = logging.getLogger("pancreas_seg")


# ------------------------------------------------------------------------------ inputs
def _scan_record(path: Path) -> dict | None:
    from pipeline.manifest import IMAGE_EXTENSIONS, is_dicom_folder

    if path.is_dir():
        return {"case_id": path.name, "image": str(path.resolve())} if is_dicom_folder(path) else None
    low = path.name.lower()
    for end in IMAGE_EXTENSIONS:
        if low.endswith(end) and not path.name.startswith("."):
            return {"case_id": path.name[: -len(end)], "image": str(path.resolve())}
    return None


def discover_inputs(path: str | os.PathLike) -> list[dict]:
    """Records ``{"case_id", "image"}`` from a scan file, a DICOM series folder, a folder of scans
    and series folders, or a manifest CSV (its labels, if any, are ignored).

    Raises:
        ImageError: nothing usable at ``path``, or two scans that would get the same case id.
        ManifestError: a manifest that does not validate.
    """
    from pipeline.manifest import IMAGE_EXTENSIONS, case_records, read_manifest

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


# ------------------------------------------------------------------------------ model
def _checkpoint_paths(model: Path) -> list[Path]:
    if model.is_file():
        return [model]
    if not model.is_dir():
        raise CheckpointError(f"{model}: no such checkpoint file or run folder")
    folds = sorted(d for d in model.glob("fold_*") if d.is_dir())
    if folds:
        paths = [d / "checkpoints" / "best.pt" for d in folds if (d / "checkpoints" / "best.pt").is_file()]
        missing = [d.name for d in folds if not (d / "checkpoints" / "best.pt").is_file()]
        if paths and missing:
            log.warning(
                "warning: %s: no best.pt in %s; ensembling the other folds", model, ", ".join(missing)
            )
        if paths:
            return paths
    for candidate in (model / "checkpoints" / "best.pt", model / "best.pt"):
        if candidate.is_file():
            return [candidate]
    raise CheckpointError(f"{model}: no fold_*/checkpoints/best.pt (or best.pt) in this folder")


def _config_for(paths: list[Path], run_dir: Path | None) -> Config:
    """The training config: the run's config.yaml, else the one stored in the checkpoints."""
    from pipeline.checkpoint import load_checkpoint, model_config_from_checkpoint
    from pipeline.config import config_to_dict, load_config, update_config

    if run_dir is not None and (run_dir / "config.yaml").is_file():
        return load_config(run_dir / "config.yaml")
    configs = []
    for p in paths:
        ckpt = load_checkpoint(p)
        if ckpt.get("config"):
            configs.append((p, update_config(Config(), ckpt["config"])))
        else:
            cfg = Config()
            cfg.model = model_config_from_checkpoint(ckpt, str(p))
            log.warning("warning: %s stores no config; assuming the default preprocessing (data.*)", p)
            configs.append((p, cfg))
    first_path, first = configs[0]
    for p, cfg in configs[1:]:
        a, b = config_to_dict(first)["data"], config_to_dict(cfg)["data"]
        diff = [k for k in a if a[k] != b.get(k)]
        if diff:
            raise CheckpointError(
                f"{p}: trained with other preprocessing than {first_path} ({', '.join('data.' + k for k in diff[:4])}); "
                "an ensemble needs one"
            )
    return first


def load_predictor(
    model: str | os.PathLike | Sequence[str | os.PathLike], overrides: Sequence[str] | None = None
) -> Predictor:
    """A :class:`Predictor` from a CV run folder (every fold's ``best.pt``, softmax averaged), one
    checkpoint file, or a list of checkpoint files (an ensemble).

    The preprocessing is the one the checkpoints were trained with (the run's ``config.yaml`` or
    the config stored in the checkpoint); ``overrides`` (``infer.*``, ``perf.*``) change only how
    inference runs. Checkpoints are loaded with ``weights_only=True``: a file that needs
    unpickling is refused.

    Raises:
        CheckpointError: no checkpoint found, an untrusted/corrupt file, or a checkpoint of another
            network than the run's (or than the ensemble's first).
        ConfigError: an override outside ``infer.*``/``perf.*`` or an invalid value.
    """
    from pipeline.checkpoint import load_network
    from pipeline.config import apply_overrides

    items = [model] if isinstance(model, (str, os.PathLike)) else list(model)
    if not items:
        raise CheckpointError("no checkpoint given")
    paths = [p for item in items for p in _checkpoint_paths(Path(item))]
    run_dir = Path(items[0]) if len(items) == 1 and Path(items[0]).is_dir() else None
    cfg = _config_for(paths, run_dir)
    for item in overrides or []:
        if not item.split("=", 1)[0].strip().startswith(("infer.", "perf.")):
            raise ConfigError(f"--set {item}: only infer.* and perf.* can change at inference time")
    apply_overrides(cfg, list(overrides or []))
    nets = [load_network(p, expect=cfg.model)[0] for p in paths]
    log.info("model: %d network(s) from %s", len(nets), ", ".join(str(i) for i in items))
    return Predictor(nets, cfg)
