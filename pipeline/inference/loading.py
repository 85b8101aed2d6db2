"""Model loading for inference: one checkpoint, a list of them, or every fold's best checkpoint
of a CV run as an ensemble, with the preprocessing they were trained with.

Checkpoints are read with ``weights_only=True`` (:func:`pipeline.core.checkpoint.load_checkpoint`)
and checked against the network their config describes (:mod:`models.restore`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from models import network_from_checkpoint
from pipeline.core.checkpoint import load_checkpoint, model_config_from_checkpoint
from pipeline.core.config import (
    Config,
    ModelConfig,
    apply_overrides,
    config_to_dict,
    load_config,
    update_config,
)
from pipeline.core.errors import CheckpointError, ConfigError
from pipeline.core.layout import CheckpointLayout, FoldLayout, RunLayout, fold_name
from pipeline.inference.package import is_package, read_package
from pipeline.inference.predictor import Predictor

__all__ = ["load_network", "load_predictor"]

log = logging.getLogger("pancreas_seg")


def load_network(path: str | os.PathLike, expect: ModelConfig | None = None, map_location="cpu"):
    """Build the network a checkpoint file describes and load its weights.

    Args:
        path: checkpoint file.
        expect: if given, the checkpoint must be of this network (name, channels, classes).
        map_location: where tensors go.

    Returns:
        (network in eval mode, its ModelConfig, the checkpoint dict).

    Raises:
        CheckpointError: unreadable, untrusted, or of another network.
    """
    ckpt = load_checkpoint(path, map_location)
    net, mcfg = network_from_checkpoint(ckpt, expect, str(path))
    return net, mcfg, ckpt


def _checkpoint_paths(model: Path) -> list[Path]:
    """A file; every fold's best checkpoint of a run folder; or the best one of a fold or checkpoints folder."""
    if model.is_file():
        return [model]
    if not model.is_dir():
        raise CheckpointError(f"{model}: no such checkpoint file or run folder")
    folds = RunLayout(model).folds()
    if folds:
        paths = [f.best for f in folds if f.best.is_file()]
        missing = [f.dir.name for f in folds if not f.best.is_file()]
        if paths and missing:
            log.warning(
                "warning: %s: no %s in %s; ensembling the other folds",
                model,
                folds[0].best.name,
                ", ".join(missing),
            )
        if paths:
            return paths
    fold, checkpoints = FoldLayout(model), CheckpointLayout(model)
    for candidate in (fold.best, checkpoints.best):
        if candidate.is_file():
            return [candidate]
    every_fold = FoldLayout(fold_name("*")).best  # fold_*/checkpoints/best.pt, for the message
    raise CheckpointError(f"{model}: no {every_fold} (or {checkpoints.best.name}) in this folder")


def _config_for(paths: list[Path], run_dir: Path | None) -> Config:
    """The training config: the run's config.yaml, else the one stored in the checkpoints."""
    saved = RunLayout(run_dir).config if run_dir is not None else None
    if saved is not None and saved.is_file():
        return load_config(saved)
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


def _with_overrides(cfg: Config, overrides: Sequence[str] | None) -> Config:
    """``cfg`` with the inference-time overrides (only ``infer.*``, ``perf.*`` and ``qc.*``) applied and
    checked. ``qc.*`` is review policy, not part of the model: a run trained before the thresholds were
    tuned keeps its own in ``config.yaml``, and ``--set qc.max_entropy=...`` changes them for one infer."""
    for item in overrides or []:
        if not item.split("=", 1)[0].strip().startswith(("infer.", "perf.", "qc.")):
            raise ConfigError(f"--set {item}: only infer.*, perf.* and qc.* can change at inference time")
    return apply_overrides(cfg, list(overrides or []))


def load_predictor(
    model: str | os.PathLike | Sequence[str | os.PathLike], overrides: Sequence[str] | None = None
) -> Predictor:
    """A :class:`Predictor` from a CV run folder (every fold's ``best.pt``, softmax averaged), a model
    package (``model.zip`` from ``pancreas-seg export``: its folds, checked by
    :func:`pipeline.inference.package.read_package`), one checkpoint file, or a list of checkpoint
    files (an ensemble). A package gives the same networks and config as the run it was exported from.

    The preprocessing is the one the checkpoints were trained with (the run's ``config.yaml`` or
    the config stored in the checkpoint); ``overrides`` (``infer.*``, ``perf.*``, ``qc.*``) change
    only how inference runs and which cases it marks for review. Checkpoints are loaded with ``weights_only=True``: a file that needs
    unpickling is refused.

    Raises:
        CheckpointError: no checkpoint found, an untrusted/corrupt file, a package that fails its
            checks, or a checkpoint of another network than the run's (or than the ensemble's first).
        ConfigError: an override outside ``infer.*``/``perf.*``/``qc.*`` or an invalid value.
    """
    items = [model] if isinstance(model, (str, os.PathLike)) else list(model)
    if not items:
        raise CheckpointError("no checkpoint given")
    if len(items) == 1 and is_package(items[0]):
        pkg = read_package(items[0])
        cfg = _with_overrides(pkg.config, overrides)
        nets = [
            network_from_checkpoint(ckpt, cfg.model, f"{pkg.path}: member {name}")[0]
            for name, ckpt in pkg.checkpoints
        ]
        log.info("model: %d network(s) from %s", len(nets), pkg.path)
        return Predictor(nets, cfg)
    paths = [p for item in items for p in _checkpoint_paths(Path(item))]
    run_dir = Path(items[0]) if len(items) == 1 and Path(items[0]).is_dir() else None
    cfg = _with_overrides(_config_for(paths, run_dir), overrides)
    nets = [load_network(p, expect=cfg.model)[0] for p in paths]
    log.info("model: %d network(s) from %s", len(nets), ", ".join(str(i) for i in items))
    return Predictor(nets, cfg)
