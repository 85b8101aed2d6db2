"""The one typed config of the pipeline: dataclasses with YAML load/save and ``key.sub=value`` overrides.

The defaults in the dataclasses are our recommended settings: the network of Oktay et al. 2018
(arXiv:1804.03999) as the authors released it, trained with a recipe that differs from theirs where
a measurement or a reference says so (``configs/default.yaml`` lists each difference and why).
``configs/default.yaml`` is a dump of the defaults, ``configs/paper.yaml`` the authors' released
recipe (github.com/ozan-oktay/Attention-Gated-Networks) as exactly as our components allow, and
``configs/demo.yaml`` a CPU-sized overlay. A run
folder gets the resolved config plus the package versions and the git commit
(:func:`save_run_config`).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.core.config_checks import check_config
from pipeline.core.config_values import assign_values
from pipeline.core.errors import ConfigError
from pipeline.core.fileio import atomic_write_text
from pipeline.core.fingerprint import resolve_fingerprint
from pipeline.core.layout import RunLayout

__all__ = [
    "DataConfig",
    "AugmentConfig",
    "FingerprintValues",
    "ModelConfig",
    "TrainConfig",
    "InferConfig",
    "QCConfig",
    "PerfConfig",
    "EvalConfig",
    "Config",
    "CONFIG_DIR",
    "load_config",
    "apply_overrides",
    "config_to_dict",
    "save_config",
    "save_run_config",
    "provenance",
    "update_config",
]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass
class AugmentConfig:
    """Training-time augmentation of each patch; each step is drawn with its own probability.

    The authors' released code applies flips, then rotation ±15°, shift ±10 % and in-plane zoom
    0.7-1.3 (x and y drawn independently) to every sample: ``configs/paper.yaml``.
    """

    flip_prob: float = 0.5  # per in-plane axis
    rotate_deg: float = 15.0  # about the axial (z) axis
    rotate_prob: float = 0.2
    scale_range: list[float] = field(default_factory=lambda: [0.7, 1.3])
    scale_prob: float = 0.2
    # "isotropic": one zoom factor for x, y and z (RandZoomd: >1 magnifies); "in_plane": x and y
    # factors drawn independently, z unchanged (RandAffined: the factor scales the sampling grid, as
    # the authors' torchsample affine, so 1.3 shows 1.3x the field of view)
    scale_mode: str = "isotropic"
    translate_frac: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # max shift, x/y/z, of patch
    translate_prob: float = 0.2
    intensity_shift: float = 0.1  # in normalised units
    intensity_scale: float = 0.1
    intensity_prob: float = 0.15
    noise_std: float = 0.0  # 0 disables Gaussian noise
    noise_prob: float = 0.15


@dataclass
class FingerprintValues:
    """What the chains use from ``data.fingerprint``, copied in when the config is loaded (see
    :mod:`pipeline.core.fingerprint`), so a run's ``config.yaml`` reloads without the file. Not read
    again while ``source`` equals ``data.fingerprint``."""

    source: str = ""  # the fingerprint file the values below were read from
    target_spacing: list[float] = field(default_factory=list)  # its suggested_target_spacing, mm
    clip_hu: list[float] = field(default_factory=list)  # foreground 0.5 and 99.5 percentiles, HU
    mean_hu: float = 0.0  # foreground mean, HU
    std_hu: float = 0.0  # foreground standard deviation, HU


@dataclass
class DataConfig:
    """Loading, geometry, intensity, patch sampling and caching."""

    orientation: str = "RAS"
    target_spacing: list[float] = field(default_factory=lambda: [2.0, 2.0, 2.0])  # paper: 2 mm isotropic
    spacing_from_fingerprint: bool = False  # use the fingerprint's suggested spacing instead
    fingerprint: str = ""  # path to the JSON written by `pancreas-seg fingerprint`
    fingerprint_values: FingerprintValues = field(default_factory=FingerprintValues)  # filled in from it
    intensity: str = "window"  # "window" | "fingerprint" (nnU-Net CT) | "zscore" (paper: per volume)
    window_hu: list[float] = field(default_factory=lambda: [-100.0, 240.0])
    body_crop: bool = True
    body_threshold_hu: float = -500.0
    body_margin_mm: float = 10.0  # kept around the body's bounding box by the body crop
    dicom_series: str = ""  # SeriesInstanceUID to pick when a DICOM folder holds several
    patch_size: list[int] = field(default_factory=lambda: [160, 160, 96])  # released config
    pos_fraction: float = 0.67  # fraction of patches centred on pancreas voxels
    # patches cut from each volume drawn; train.batch_size / samples_per_volume volumes per step.
    # 1 with batch_size 2: two volumes per step, the authors' batch (see pipeline.training.train)
    samples_per_volume: int = 2
    cache: str = "memory"  # "memory" | "disk" | "none"
    cache_dir: str = ""  # for cache="disk"; default <run>/cache
    num_workers: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Foreground classes, class 1 first: label values are mapped to them by the manifest's label_map
    # ("1:pancreas,2:tumour"); model.out_channels must be len + 1 (background), or len(regions).
    class_names: list[str] = field(default_factory=lambda: ["pancreas"])
    # nnU-Net-style regions: region i is a set of classes, trained as one sigmoid output; inference
    # writes label i + 1 where region i is on (later regions win), e.g. [[1, 2], [2]]: whole pancreas,
    # tumour. Empty: softmax over the classes.
    regions: list[list[int]] = field(default_factory=list)


@dataclass
class ModelConfig:
    """Network choice and shape (the authors' feature scale 4)."""

    name: str = "attention_unet"  # "attention_unet" | "unet"
    spatial_dims: int = 3
    in_channels: int = 1
    out_channels: int = 2
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    deep_supervision: bool = True
    gates_per_level: int = 2  # the released model has two independent gates per level
    dropout: float = 0.0
    multiclass_attention: bool = False  # one attention map per foreground class in each gate (paper: one)


@dataclass
class TrainConfig:
    """Optimisation and the training schedule."""

    epochs: int = 1000
    iterations_per_epoch: int = 0  # 0: one pass over the training cases (volumes)
    batch_size: int = 2
    optimizer: str = "adam"  # "adam" (the paper's text) | "sgd" (Nesterov, with train.momentum)
    lr: float = 1e-4
    weight_decay: float = 1e-6
    momentum: float = 0.99  # SGD only (nnU-Net's 0.99; the authors' code: 0.9)
    lr_schedule: str = "step"  # "step" | "poly" | "none", stepped once per epoch, for either optimizer
    lr_step_epochs: int = 250
    lr_gamma: float = 0.5
    loss: str = "dice_ce"  # "dice_ce" | "dice" (the paper's soft Dice)
    # fused output first, then the heads from fine to coarse; a 0 weight skips that head's loss
    # ([1, 0, 0, 0, 0]: the authors' loss on the fused output only)
    ds_weights: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125, 0.0625])
    val_interval: int = 10
    checkpoint_interval: int = 10
    early_stopping_patience: int = 0  # in validations; 0 disables
    num_folds: int = 5
    seed: int = 0
    # true: reproducible training (monai.utils.set_determinism(seed) plus deterministic cuDNN and
    # PyTorch algorithms); false: seeded alike, but cuDNN's autotuner picks the fastest kernels
    # (nnU-Net's choice: faster on GPUs, and two runs may differ slightly). cuDNN is CUDA-only.
    deterministic: bool = True
    mlflow: bool = False  # also log to MLflow (optional package: pip install mlflow) besides TensorBoard
    mlflow_uri: str = ""  # MLflow tracking URI; empty: sqlite:///<run>/mlruns.db, artifacts in <run>/mlruns


@dataclass
class InferConfig:
    """Sliding-window inference on whole volumes."""

    roi_size: list[int] = field(default_factory=list)  # empty: data.patch_size
    overlap: float = 0.5
    mode: str = "gaussian"
    sw_batch_size: int = 2
    # "auto": on CPUs channels_last_3d, plus bf16 autocast where native (masks agree with fp32 at
    # Dice >= 0.99, bench/infer_speed.py); perf.* on CUDA. "fp32": no autocast. "bf16": always
    precision: str = "auto"
    tta_flip: bool = False
    keep_largest_component: bool = False
    cpu_stitch_voxels: int = 64_000_000  # stitch on the CPU above this many output voxels
    # also write float32 probabilities: <case>_prob.<ext> (pancreas) with one class, else one
    # <case>_prob_<class name>.<ext> per foreground class
    save_probabilities: bool = False
    dicom_seg: bool = False  # DICOM series inputs: also write <case>_seg.dcm (needs highdicom)
    # a folder or manifest: threads that load the next case and write the previous one while the
    # network runs (results identical to 0, serial); -1: 1 per 4 cores, 1..4 (0 on one core)
    workers: int = -1
    statistics: bool = True  # write statistics.csv/.json (volume, HU, border, QC) beside the masks
    # host memory (GB) one scan may take; a scan whose estimated peak is larger runs in z-slabs with
    # overlap, stitched on the input grid (pipeline/inference/slabs.py). 0: 75% of what is available
    max_memory_gb: float = 0.0


@dataclass
class QCConfig:
    """When ``infer`` marks a case for review (``review`` column of ``statistics.csv``)."""

    # Tuned on the trained demo (bench/study_qc.py --cv runs/demo/cv: 3-fold ensemble on 10 fresh
    # phantoms, see README "Measurements for a study"); each value also has a reason on real CT.
    # "folds disagree" below this mean pairwise Dice of the folds' masks: two raters agree on a pancreas
    # at about 0.8-0.85 Dice, and models trained on the same data should agree better; on the demo every
    # case under 0.85 was among the 4 worst by Dice but one.
    min_fold_dice: float = 0.85
    # ... or above this coefficient of variation of the folds' volumes: one fold missing or adding a
    # sixth of the organ (a lobe, the tail). Never reached on the demo (at most 0.13).
    max_volume_cv: float = 0.15
    # "uncertain" above this mean voxel entropy (0..1) inside the union of the masks. The union of
    # several folds' masks holds their disagreeing rim, so an ensemble scores higher than one model on
    # its own mask (demo on the 2 mm grid: ensemble 0.33-0.55, one model 0.18-0.31): 0.5 marks the two
    # worst ensemble cases only; a single model rarely reaches it. Entropy grows with the rim's share
    # of the organ: a coarser canonical grid than 2 mm gives higher values.
    max_entropy: float = 0.5
    # "tiny volume" below this: a healthy adult pancreas is ~60 mL, an atrophic one ~30 mL; under 10 mL
    # is a partial segmentation or a scan that covers only the edge of the organ.
    min_volume_ml: float = 10.0


@dataclass
class PerfConfig:
    """Speed options; each keeps outputs within the stated tolerance of fp32."""

    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1"
    channels_last: bool = False  # channels_last_3d memory format
    bf16: bool = False  # bf16 autocast on CPUs that support it
    amp: bool = True  # fp16/bf16 autocast on CUDA
    compile: bool = False  # torch.compile
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    huge_pages: bool = False  # transparent huge pages for large CPU tensors (THP_MEM_ALLOC_ENABLE)
    retain_memory: bool = True  # glibc keeps freed memory for reuse: no page faults per activation


@dataclass
class EvalConfig:
    """Metrics and their confidence intervals (``evaluate``, ``cv``, ``compare``, ``report``)."""

    nsd_tolerance_mm: float = 2.0  # normalised surface Dice: surface within this distance counts as agreeing
    bootstrap_resamples: int = 2000  # percentile bootstrap over subjects (all scans of a patient together)
    bootstrap_seed: int = 0
    ci_level: float = 0.95  # two-sided coverage of every interval
    detection_classes: list[str] = field(
        default_factory=lambda: ["tumour"]
    )  # lesion-level detection for these
    froc_thresholds: list[float] = field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    )


@dataclass
class Config:
    """The whole pipeline config. ``Config()`` is the recommended settings (``configs/default.yaml``);
    ``load_config("paper")`` the authors' released recipe."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    qc: QCConfig = field(default_factory=QCConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _finish(cfg: Config, fingerprint: bool = True) -> Config:
    """Resolve the fingerprint into ``cfg`` and check every value (:mod:`pipeline.core.config_checks`)."""
    if fingerprint:
        resolve_fingerprint(cfg.data)
    return check_config(cfg, fingerprint)


def update_config(cfg: Config, values: dict) -> Config:
    """Update ``cfg`` in place from a nested dict (e.g. a config stored in a checkpoint), then check it.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or a value that is not allowed.
    """
    if isinstance(values, dict):  # anything else is refused by assign_values, with its type
        values = {k: v for k, v in values.items() if k != "provenance"}
    assign_values(cfg, values)
    return _finish(cfg)


def apply_overrides(cfg: Config, overrides: list[str] | None) -> Config:
    """Apply ``key.sub=value`` strings (values parsed as YAML, then coerced to the field's type), then
    check the whole config.

    Raises:
        ConfigError: a malformed override, an unknown key, or a value that is not allowed.
    """
    return _finish(_apply(cfg, overrides))


def _apply(cfg: Config, overrides: list[str] | None) -> Config:
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        nested: dict = {parts[-1]: value}
        for part in reversed(parts[:-1]):
            nested = {part: nested}
        assign_values(cfg, nested)
    return cfg


def _resolve_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists() and not p.suffix and (CONFIG_DIR / f"{p}.yaml").exists():
        return CONFIG_DIR / f"{p}.yaml"  # `--config demo` names a bundled config
    return p


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None, fingerprint: bool = True
) -> Config:
    """Build a config from the defaults, a YAML file (path or bundled name) and overrides.

    Then the fingerprint is resolved into the config and every value checked; a bad value set by
    the file is reported with the file's name.

    Args:
        path: YAML file, or the name of a bundled config (``default``, ``paper``, ``demo``); None:
            the defaults.
        overrides: ``key.sub=value`` strings, applied after the file.
        fingerprint: read ``data.fingerprint`` into the config when a setting uses it. False for
            commands that never build a chain (``pancreas-seg fingerprint`` writes that file).

    Raises:
        ConfigError: the file is missing or not YAML, or a key or value is invalid.
    """
    cfg, p, from_file = Config(), None, set()
    if path:
        p = _resolve_path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read config ({exc.strerror or exc})") from None
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if isinstance(values, dict):
            values.pop("provenance", None)  # written by save_run_config; informational only
        try:
            assign_values(cfg, values)
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}", exc.key) from None
        from_file = _dotted_keys(values)
    _apply(cfg, overrides)
    try:
        return _finish(cfg, fingerprint)
    except ConfigError as exc:
        overridden = {item.split("=", 1)[0].strip() for item in overrides or []}
        if exc.key not in from_file or exc.key in overridden:
            raise
        raise ConfigError(f"{p}: {exc}", exc.key) from None  # the file set the bad value


def _dotted_keys(values: dict, prefix: str = "") -> set[str]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr"}``: the keys a YAML mapping sets."""
    keys = set()
    for key, value in values.items():
        full = f"{prefix}{key}"
        keys |= _dotted_keys(value, f"{full}.") if isinstance(value, dict) else {full}
    return keys


def config_to_dict(cfg: Config) -> dict:
    """The config as plain YAML-able types."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``cfg`` (and optional extra top-level keys) as YAML, atomically."""
    data = config_to_dict(cfg)
    if extra:
        data.update(extra)
    path = Path(path)
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


def provenance() -> dict:
    """Package versions and the git commit of this checkout (``unknown`` outside git)."""
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for pkg in ("pancreas-seg", "torch", "monai", "pytorch-ignite", "numpy", "itk", "nibabel", "pandas"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"versions": versions, "git_commit": commit or "unknown", "platform": platform.platform()}


def save_run_config(cfg: Config, run_dir: str | os.PathLike) -> Path:
    """Write ``<run_dir>/config.yaml``: the resolved config plus versions and git commit."""
    return save_config(cfg, RunLayout(run_dir).config, extra={"provenance": provenance()})
