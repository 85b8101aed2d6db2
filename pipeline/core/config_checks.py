"""Every value check of the config, in one place, run whenever a config is built or changed.

:func:`check_config` runs at the end of :func:`~pipeline.core.config.load_config`,
:func:`~pipeline.core.config.apply_overrides` and :func:`~pipeline.core.config.update_config`, so
a bad value stops a command before it touches any folder (a typo in ``--set`` must not leave a run
folder whose saved settings refuse the corrected command). Each problem is one
:class:`~pipeline.core.errors.ConfigError` naming the key, the value and what is allowed, e.g.
``train.loss='dicece' is not allowed (allowed: dice, dice_ce)``.

What needs more than the config stays where that is known: whether CUDA is present
(:func:`pipeline.core.runtime.select_device`), whether mlflow is installed
(:mod:`pipeline.training.tracking`), and whether a given network's poolings fit the sliding window
(:class:`pipeline.inference.predictor.Predictor`, for networks from checkpoints).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import reduce
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.core.config import Config

__all__ = [
    "AXIS_LABELS",
    "CACHE_MODES",
    "INTENSITY_MODES",
    "LOSSES",
    "LR_SCHEDULES",
    "MODEL_NAMES",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCALE_MODES",
    "WINDOW_MODES",
    "check_config",
    "input_multiple",
]

# The allowed values of each choice key. MODEL_NAMES must equal the keys of models.MODELS (core
# cannot import the networks; a test keeps the two equal).
INTENSITY_MODES = ("window", "fingerprint", "zscore")
CACHE_MODES = ("memory", "disk", "none")
MODEL_NAMES = ("attention_unet", "unet")
LOSSES = ("dice_ce", "dice")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("step", "poly", "none")
WINDOW_MODES = ("gaussian", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
SCALE_MODES = ("isotropic", "in_plane")
AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # the letters of an orientation code, per axis

_CHOICES = {
    "data.intensity": INTENSITY_MODES,
    "data.cache": CACHE_MODES,
    "model.name": MODEL_NAMES,
    "train.loss": LOSSES,
    "train.optimizer": OPTIMIZERS,
    "train.lr_schedule": LR_SCHEDULES,
    "infer.mode": WINDOW_MODES,
    "infer.precision": PRECISIONS,
    "data.augment.scale_mode": SCALE_MODES,
}

_AUG = "data.augment."
# (keys, test, what the test allows) for single numbers; every number must also be finite.
_RULES: tuple[tuple[tuple[str, ...], Callable[[float], bool], str], ...] = (
    (
        (
            "data.samples_per_volume",
            "model.in_channels",
            "model.gates_per_level",
            "train.epochs",
            "train.batch_size",
            "train.lr_step_epochs",
            "train.val_interval",
            "train.checkpoint_interval",
            "infer.sw_batch_size",
            "eval.bootstrap_resamples",
        ),
        lambda v: v >= 1,
        ">= 1",
    ),
    (("model.out_channels",), lambda v: v >= 1, ">= 1"),
    (("train.num_folds",), lambda v: v >= 2, ">= 2"),
    (
        (
            "data.num_workers",
            "data.body_margin_mm",
            _AUG + "rotate_deg",
            _AUG + "intensity_shift",
            _AUG + "intensity_scale",
            _AUG + "noise_std",
            "train.iterations_per_epoch",
            "train.weight_decay",
            "train.early_stopping_patience",
            "train.seed",
            "infer.cpu_stitch_voxels",
            "infer.max_memory_gb",
            "perf.threads",
            "eval.bootstrap_seed",
        ),
        lambda v: v >= 0,
        ">= 0",
    ),
    (("infer.workers",), lambda v: v >= -1, ">= -1 (-1: chosen by core count, 0: serial)"),
    (("train.lr", "train.lr_gamma", "eval.nsd_tolerance_mm"), lambda v: v > 0, "> 0"),
    (("eval.ci_level",), lambda v: 0 < v < 1, "in (0, 1)"),
    (
        (
            "data.pos_fraction",
            *(
                _AUG + p
                for p in (
                    "flip_prob",
                    "rotate_prob",
                    "scale_prob",
                    "translate_prob",
                    "intensity_prob",
                    "noise_prob",
                )
            ),
        ),
        lambda v: 0 <= v <= 1,
        "in [0, 1]",
    ),
    (("model.dropout", "train.momentum", "infer.overlap"), lambda v: 0 <= v < 1, "in [0, 1)"),
    (("qc.min_fold_dice", "qc.max_entropy"), lambda v: 0 <= v <= 1, "in [0, 1]"),
    (("qc.max_volume_cv", "qc.min_volume_ml"), lambda v: v >= 0, ">= 0"),
    (("data.body_threshold_hu",), lambda v: True, "a number"),
)

_DEVICE = re.compile(r"(auto|cpu|cuda(:\d+)?)?")


def _get(cfg: Config, key: str) -> Any:
    return reduce(getattr, key.split("."), cfg)


def _fail(key: str, value: Any, problem: str) -> ConfigError:
    return ConfigError(f"{key}={value!r}: {problem}", key=key)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_list(cfg: Config, key: str, n: int | None, test: Callable[[Any], bool], what: str) -> list:
    """``key`` must hold ``n`` values (``n`` None: at least one) each passing ``test``."""
    values = _get(cfg, key)
    if not isinstance(values, (list, tuple)) or (len(values) != n if n else not values):
        count = f"{n} values" if n else "one or more values"
        raise _fail(key, values, f"expected {count}, {what}")
    if not all(_finite(v) and test(v) for v in values):
        raise _fail(key, values, f"expected {what}")
    return list(values)


def input_multiple(cfg: Config) -> int:
    """Every spatial size the network sees must be a multiple of this: 2 to the number of poolings
    (one fewer than ``model.channels``), as ``AttentionUNet.divisor`` (a test keeps them equal)."""
    return 2 ** (len(cfg.model.channels) - 1)


def _check_spatial(cfg: Config) -> None:
    """Spacing, patch and window sizes: three values each, the sizes multiples of the network's poolings."""
    _check_list(cfg, "data.target_spacing", 3, lambda v: v > 0, "positive spacings in mm")
    channels = _check_list(cfg, "model.channels", None, lambda v: v >= 1 and v == int(v), "positive integers")
    if len(channels) < 3:
        raise _fail("model.channels", channels, "the network needs at least 3 levels")
    if cfg.model.spatial_dims != 3:
        raise _fail(
            "model.spatial_dims", cfg.model.spatial_dims, "must be 3 (the pipeline works on 3-D scans)"
        )
    multiple = input_multiple(cfg)
    keys = ["data.patch_size"] + (["infer.roi_size"] if cfg.infer.roi_size else [])
    for key in keys:
        sizes = _check_list(cfg, key, 3, lambda v: v >= 1 and v == int(v), "positive integer sizes")
        if any(int(v) % multiple for v in sizes):
            raise _fail(
                key,
                sizes,
                f"must be multiples of {multiple} (the network's {len(channels) - 1} poolings)",
            )


def _check_lists(cfg: Config) -> None:
    """Windows, ranges and weights."""
    low, high = _check_list(cfg, "data.window_hu", 2, lambda v: True, "[low, high] in HU")
    if not low < high:
        raise _fail("data.window_hu", cfg.data.window_hu, "expected [low, high] with low < high")
    lo, hi = _check_list(cfg, _AUG + "scale_range", 2, lambda v: v > 0, "[min, max] zoom factors > 0")
    if not lo <= hi:
        raise _fail(_AUG + "scale_range", cfg.data.augment.scale_range, "expected [min, max] with min <= max")
    _check_list(cfg, _AUG + "translate_frac", 3, lambda v: 0 <= v < 1, "fractions of the patch in [0, 1)")
    weights = _check_list(cfg, "train.ds_weights", None, lambda v: v >= 0, "weights >= 0")
    if weights[0] <= 0:
        raise _fail("train.ds_weights", weights, "the first weight (the full-resolution output) must be > 0")
    outputs = len(cfg.model.channels)  # the fused output and one head per level but the coarsest
    if cfg.model.deep_supervision and len(weights) < outputs:
        raise _fail(
            "train.ds_weights",
            weights,
            f"expected a weight for each of the network's {outputs} outputs (model.deep_supervision is true)",
        )


def _check_eval(cfg: Config) -> None:
    """Detection class names and FROC probability thresholds."""
    names = cfg.eval.detection_classes
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in names):
        raise _fail("eval.detection_classes", names, "expected a list of class names, e.g. [tumour]")
    _check_list(cfg, "eval.froc_thresholds", None, lambda v: 0 < v < 1, "probabilities in (0, 1)")


def _check_strings(cfg: Config) -> None:
    """Orientation, device and tracking URI."""
    code = str(cfg.data.orientation).upper()
    axes = sorted(i for ch in code for i, pair in enumerate(AXIS_LABELS) if ch in pair)
    if len(code) != 3 or axes != [0, 1, 2]:
        raise _fail("data.orientation", cfg.data.orientation, "not an axis code such as 'RAS' or 'LPS'")
    if not _DEVICE.fullmatch(str(cfg.perf.device).strip().lower()):
        raise _fail("perf.device", cfg.perf.device, "not a device (use auto, cpu, cuda or cuda:N)")
    uri = str(cfg.train.mlflow_uri).strip()
    if uri and (uri.startswith("file:") or "://" not in uri):
        raise _fail(
            "train.mlflow_uri",
            uri,
            "is a folder; MLflow no longer supports folder (file store) tracking: use "
            "sqlite:///path/to/mlruns.db, an http(s):// server, or leave it empty",
        )


_NAME = re.compile(r"[A-Za-z][\w-]*")


def _check_classes(cfg: Config) -> None:
    """Class names, regions, and ``model.out_channels`` following them."""
    names = cfg.data.class_names
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and _NAME.fullmatch(n) for n in names)
        or len({n.lower() for n in names}) != len(names)
        or any(n.lower() == "background" for n in names)
    ):
        raise _fail(
            "data.class_names",
            names,
            "expected one or more distinct names (letters, digits, _ or -; not 'background'), "
            "class 1 first, e.g. [pancreas, tumour]",
        )
    k = len(names)
    regions = cfg.data.regions
    if regions:
        ok = isinstance(regions, list) and all(
            isinstance(r, list) and r and all(isinstance(c, int) and not isinstance(c, bool) for c in r)
            for r in regions
        )
        if not ok or any(not 1 <= c <= k for r in regions for c in r):
            raise _fail(
                "data.regions", regions, f"expected lists of classes 1..{k} (data.class_names {names})"
            )
        if len(regions) != k or any(i + 1 not in r for i, r in enumerate(regions)):
            raise _fail(
                "data.regions",
                regions,
                f"expected one region per class ({k}), region i holding class i+1 "
                "(it writes that label), e.g. [[1, 2], [2]] for [pancreas, tumour]",
            )
        if cfg.model.out_channels != k:
            raise _fail(
                "model.out_channels",
                cfg.model.out_channels,
                f"must be {k}: one sigmoid output per region of data.regions",
            )
    elif cfg.model.out_channels != k + 1:
        raise _fail(
            "model.out_channels",
            cfg.model.out_channels,
            f"must be {k + 1}: background plus the {k} classes of data.class_names {names} "
            "(set data.class_names, e.g. [pancreas, tumour] with model.out_channels=3)",
        )


def _check_fingerprint_values(cfg: Config) -> None:
    """The HU statistics ``data.intensity: fingerprint`` normalises with (read by load_config)."""
    if cfg.data.intensity != "fingerprint":
        return
    fv = cfg.data.fingerprint_values
    source = fv.source or cfg.data.fingerprint
    if not fv.clip_hu:
        raise ConfigError(
            f"data.fingerprint: {source}: no foreground intensity statistics (were any cases labelled?)",
            key="data.fingerprint",
        )
    low, high = _check_list(cfg, "data.fingerprint_values.clip_hu", 2, lambda v: True, "[low, high] in HU")
    if not low < high or not _finite(fv.std_hu) or fv.std_hu < 0 or not _finite(fv.mean_hu):
        raise ConfigError(
            f"data.fingerprint: {source}: unusable foreground intensity statistics "
            f"(clip_hu={fv.clip_hu}, mean_hu={fv.mean_hu}, std_hu={fv.std_hu})",
            key="data.fingerprint",
        )


def check_config(cfg: Config, fingerprint: bool = True) -> Config:
    """Check every value of ``cfg`` (after :func:`pipeline.core.fingerprint.resolve_fingerprint`).

    Args:
        cfg: the config.
        fingerprint: also check the fingerprint's values that the settings use (False when the
            fingerprint was deliberately not read).

    Returns:
        ``cfg``, unchanged.

    Raises:
        ConfigError: the first bad value, with ``key`` set to its config key.
    """
    for key, allowed in _CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(
                f"{key}={value!r} is not allowed (allowed: {', '.join(sorted(allowed))})", key=key
            )
    for keys, test, what in _RULES:
        for key in keys:
            value = _get(cfg, key)
            if not (_finite(value) and test(value)):
                raise _fail(key, value, f"must be {what}")
    _check_spatial(cfg)
    _check_lists(cfg)
    _check_strings(cfg)
    _check_eval(cfg)
    _check_classes(cfg)
    if fingerprint:
        _check_fingerprint_values(cfg)
    return cfg
