"""CT intensity normalisation, chosen by ``data.intensity``.

- ``"window"``: clip to ``data.window_hu`` and scale to [0, 1]. The default -100..240 HU is the
  truncation of the coarse-to-fine pancreas segmentation code on NIH Pancreas-CT (Zhou et al.,
  MICCAI 2017, and Yu et al., CVPR 2018; their public code clips to [-100, 240]); it keeps fat,
  parenchyma (40-110 HU) and contrast-enhanced vessels apart and flattens air and bone.
- ``"fingerprint"``: nnU-Net's CT normalisation (``CTNormalization``): clip to the 0.5 and 99.5
  percentiles of foreground HU pooled over the training set, subtract their mean, divide by their
  standard deviation; the numbers come from the fingerprint JSON (``data.fingerprint``), copied into
  ``data.fingerprint_values`` when the config is loaded.
- ``"zscore"``: the paper's per-volume zero mean and unit variance.
"""

from __future__ import annotations

from monai.config import KeysCollection
from monai.transforms import MapTransform, NormalizeIntensityd, ScaleIntensityRanged

from pipeline.core.config import Config
from pipeline.core.errors import ConfigError

__all__ = ["build_intensity"]


def build_intensity(cfg: Config, keys: KeysCollection = "image") -> MapTransform:
    """The intensity step for ``cfg.data.intensity``.

    Args:
        cfg: the pipeline config (``data.intensity``, ``data.window_hu``, ``data.fingerprint_values``),
            checked when it was loaded.
        keys: image keys to normalise.

    Returns:
        A MONAI dictionary transform.

    Raises:
        ConfigError: ``data.intensity`` is ``fingerprint`` but the config was built without
            :func:`~pipeline.core.config.load_config` (or ``apply_overrides``), which read the statistics.
    """
    mode = cfg.data.intensity
    if mode == "fingerprint":
        fv = cfg.data.fingerprint_values
        if len(fv.clip_hu) != 2:
            raise ConfigError(
                "data.fingerprint_values: empty; build the config with load_config or apply_overrides, "
                "which read them from data.fingerprint",
                key="data.fingerprint_values",
            )
        lo, hi = (float(v) for v in fv.clip_hu)
        mean, std = float(fv.mean_hu), max(float(fv.std_hu), 1e-8)  # as nnU-Net: never divide by zero
        # clip to [lo, hi] then (x - mean) / std, as one linear map of the clipped range
        return ScaleIntensityRanged(
            keys, a_min=lo, a_max=hi, b_min=(lo - mean) / std, b_max=(hi - mean) / std, clip=True
        )
    if mode == "zscore":
        return NormalizeIntensityd(keys, nonzero=False, channel_wise=True)
    lo, hi = (float(v) for v in cfg.data.window_hu)  # "window"
    return ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
