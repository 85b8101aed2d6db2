"""CT intensity normalisation, chosen by ``data.intensity``.

- ``"window"``: clip to ``data.window_hu`` and scale to [0, 1]. The default -100..240 HU is the
  truncation of the coarse-to-fine pancreas segmentation code on NIH Pancreas-CT (Zhou et al.,
  MICCAI 2017, and Yu et al., CVPR 2018; their public code clips to [-100, 240]); it keeps fat,
  parenchyma (40-110 HU) and contrast-enhanced vessels apart and flattens air and bone.
- ``"fingerprint"``: nnU-Net's CT normalisation (``CTNormalization``): clip to the 0.5 and 99.5
  percentiles of foreground HU pooled over the training set, subtract their mean, divide by their
  standard deviation; the numbers come from the fingerprint JSON (``data.fingerprint``).
- ``"zscore"``: the paper's per-volume zero mean and unit variance.
"""

from __future__ import annotations

from monai.config import KeysCollection
from monai.transforms import MapTransform, NormalizeIntensityd, ScaleIntensityRanged

from pipeline.core.config import Config
from pipeline.core.errors import ConfigError

__all__ = ["INTENSITY_MODES", "build_intensity", "fingerprint_window"]

INTENSITY_MODES = ("window", "fingerprint", "zscore")


def fingerprint_window(fp: dict, where: str = "fingerprint") -> tuple[float, float, float, float]:
    """``(lower, upper, mean, std)`` HU for nnU-Net CT normalisation from a fingerprint dict.

    Raises:
        ConfigError: the fingerprint has no foreground intensity statistics (no labelled cases).
    """
    stats = fp.get("foreground_intensity") or {}
    try:
        lower, upper = float(stats["percentile_00_5"]), float(stats["percentile_99_5"])
        mean, std = float(stats["mean"]), float(stats["std"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{where}: no foreground intensity statistics (were any cases labelled?)") from None
    return lower, upper, mean, max(std, 1e-8)  # as nnU-Net: never divide by zero


def build_intensity(cfg: Config, keys: KeysCollection = "image") -> MapTransform:
    """The intensity step for ``cfg.data.intensity``.

    Args:
        cfg: the pipeline config (``data.intensity``, ``data.window_hu``, ``data.fingerprint``).
        keys: image keys to normalise.

    Returns:
        A MONAI dictionary transform.

    Raises:
        ConfigError: unknown mode, an empty or reversed window, a missing or unusable fingerprint.
    """
    mode = cfg.data.intensity
    if mode == "window":
        if len(cfg.data.window_hu) != 2 or not cfg.data.window_hu[0] < cfg.data.window_hu[1]:
            raise ConfigError(
                f"config key data.window_hu: expected [low, high] with low < high, got {cfg.data.window_hu}"
            )
        lo, hi = (float(v) for v in cfg.data.window_hu)
        return ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    if mode == "fingerprint":
        from pipeline.data.fingerprint import (
            read_fingerprint,  # late: pipeline.data.fingerprint loads through us
        )

        if not cfg.data.fingerprint:
            raise ConfigError("config key data.fingerprint: required when data.intensity is 'fingerprint'")
        lo, hi, mean, std = fingerprint_window(read_fingerprint(cfg.data.fingerprint), cfg.data.fingerprint)
        # clip to [lo, hi] then (x - mean) / std, as one linear map of the clipped range
        return ScaleIntensityRanged(
            keys, a_min=lo, a_max=hi, b_min=(lo - mean) / std, b_max=(hi - mean) / std, clip=True
        )
    if mode == "zscore":
        return NormalizeIntensityd(keys, nonzero=False, channel_wise=True)
    raise ConfigError(
        f"config key data.intensity: unknown mode {mode!r} (known: {', '.join(INTENSITY_MODES)})"
    )
