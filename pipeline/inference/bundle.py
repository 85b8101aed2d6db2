"""A trained model as a MONAI bundle that runs without this package: ``pancreas-seg export RUN --format bundle``.

The folder (names in :class:`pipeline.core.layout.BundleLayout`) follows MONAI's bundle layout:
``configs/metadata.json`` (the fields of MONAI's bundle metadata schema), ``configs/inference.json``
(MONAI components only: ``LoadImaged``, ``EnsureChannelFirstd``, ``Orientationd``, ``CropForegroundd``
for the body crop, ``Spacingd``, the CT intensity window, ``SlidingWindowInferer``, ``Invertd``,
``AsDiscreted``, ``SaveImaged``), ``models/model.ts`` (the fold ensemble as TorchScript: class
probabilities, softmax averaged over the folds), ``models/model.pt`` (its weights, which
``inference.json`` loads with MONAI's ``CheckpointLoader``, so fine-tuned weights can replace them),
``docs/README.md`` (the model card and how to run it) and a ``LICENSE`` placeholder::

    python -m monai.bundle run --config_file DIR/configs/inference.json \\
        --meta_file DIR/configs/metadata.json --input_path SCAN --output_dir OUT

Where its masks can differ from ``pancreas-seg infer`` (see :func:`bundle_inference`): the body
crop's margin is in voxels of the scan (ours is in mm), MONAI's NIfTI reader corrects headers whose
pixdim disagrees with the affine (ours trusts the affine), and a volume thinner than the window is
padded to the whole window (ours shrinks the window to the volume).
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from models import network_from_checkpoint
from models.fusion import fold_batch_norm
from pipeline.core.config import Config, provenance
from pipeline.core.config_checks import AXIS_LABELS
from pipeline.core.fileio import atomic_outputs
from pipeline.core.label_map import class_names
from pipeline.core.layout import BundleLayout, RunLayout
from pipeline.inference.model_card import model_card
from pipeline.inference.package import is_package, model_folds, read_package

__all__ = ["Ensemble", "export_bundle", "bundle_inference", "bundle_metadata", "SCHEMA_URL"]

SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
_SCAN_PATTERNS = ("*.nii", "*.nii.gz", "*.nrrd", "*.mha", "*.mhd")
_LICENSE = (
    "No licence has been chosen for these model weights yet. Whoever shares them must put one here; the\n"
    "terms of the training data may restrict it.\n"
)


class Ensemble(nn.Module):
    """Class probabilities of several networks: their softmax outputs averaged, as ``pancreas-seg infer``."""

    def __init__(self, networks: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` probabilities for a ``(B, 1, *S)`` window."""
        total = torch.softmax(self.nets[0](x), dim=1)
        for net in self.nets[1:]:
            total = total + torch.softmax(net(x), dim=1)
        return total / len(self.nets)


def _torchscript(
    cfg: Config, checkpoints: list[tuple[int, dict]], source: str
) -> tuple[torch.jit.ScriptModule, int]:
    """The traced ensemble of the folds (batch norms folded) and the networks' size divisor."""
    nets = [
        fold_batch_norm(network_from_checkpoint(c, cfg.model, f"{source}: fold {k}")[0])
        for k, c in checkpoints
    ]
    divisor = int(getattr(nets[0], "divisor", 16))
    example = torch.rand(1, int(cfg.model.in_channels), *[2 * divisor] * 3)
    other = torch.rand(2, int(cfg.model.in_channels), 2 * divisor, 3 * divisor, 4 * divisor)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on the divisibility check, constant for valid inputs
        # checked on another batch and window size: the trace must not have baked in the shapes
        return torch.jit.trace(Ensemble(nets).eval(), example, check_inputs=[(other,)]), divisor


def _intensity(cfg: Config) -> dict:
    d = cfg.data
    if d.intensity == "zscore":
        return {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": False, "channel_wise": True}
    if d.intensity == "fingerprint":
        fv = d.fingerprint_values
        lo, hi = (float(v) for v in fv.clip_hu)
        mean, std = float(fv.mean_hu), max(float(fv.std_hu), 1e-8)
        b_min, b_max = (lo - mean) / std, (hi - mean) / std
    else:
        (lo, hi), (b_min, b_max) = (float(v) for v in d.window_hu), (0.0, 1.0)
    return {
        "_target_": "ScaleIntensityRanged",
        "keys": "image",
        "a_min": lo,
        "a_max": hi,
        "b_min": b_min,
        "b_max": b_max,
        "clip": True,
    }


def bundle_inference(cfg: Config, bundle_root: str) -> dict:
    """``configs/inference.json`` for ``cfg``'s preprocessing and sliding window.

    ``input_path`` (a scan file, a folder of scan files, or a DICOM series folder; default
    ``dataset_dir``, ``BUNDLE/data``) and ``output_dir`` (default ``BUNDLE/eval``) can be set on the command line;
    so can ``bundle_root`` after the folder has moved. Masks are ``<scan>_seg.nii.gz``, uint8.
    The body crop's margin is ``data.body_margin_mm`` in voxels of the target spacing (MONAI's
    ``CropForegroundd`` counts voxels of the scan): the same crop when the scan has that spacing.
    """
    d = cfg.data
    layout = BundleLayout(Path(bundle_root))

    def rel(path: Path) -> str:
        return layout.relative(path, layout.dir)

    spacing = [float(s) for s in d.target_spacing]
    pre: list[dict] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {
            "_target_": "Orientationd",
            "keys": "image",
            "axcodes": str(d.orientation).upper(),
            "labels": [list(pair) for pair in AXIS_LABELS],
        },
    ]
    if d.body_crop:
        pre.append(
            {
                "_target_": "CropForegroundd",
                "keys": "image",
                "source_key": "image",
                "select_fn": f"$lambda x: x > {float(d.body_threshold_hu)!r}",
                "margin": [int(math.ceil(d.body_margin_mm / s)) for s in spacing],
                "allow_smaller": True,
            }
        )
    pre += [
        {
            "_target_": "Spacingd",
            "keys": "image",
            "pixdim": spacing,
            "mode": "bilinear",
            "dtype": "$torch.float32",
        },
        _intensity(cfg),
        {"_target_": "EnsureTyped", "keys": "image"},
    ]
    patterns = repr(_SCAN_PATTERNS)
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": bundle_root,
        "dataset_dir": "$@bundle_root + '/data'",  # a property MONAI's inference workflows require
        "input_path": "@dataset_dir",
        "output_dir": "$@bundle_root + '/eval'",
        "save_execute_config": False,
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "scans": f"$sorted(f for p in {patterns} for f in glob.glob(os.path.join(@input_path, p))) "
        "if os.path.isdir(@input_path) else [@input_path]",
        "datalist": "$[{'image': f} for f in (@scans or [@input_path])]",  # no scan files: a DICOM series folder
        "network_def": f"$torch.jit.load(@bundle_root + '/{rel(layout.torchscript)}', map_location=@device)",
        "network": "$@network_def.to(@device).eval()",
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": [int(v) for v in (cfg.infer.roi_size or d.patch_size)],
            "sw_batch_size": int(cfg.infer.sw_batch_size),
            "overlap": float(cfg.infer.overlap),
            "mode": cfg.infer.mode,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "output_ext": ".nii.gz",
                    "output_dtype": "$numpy.uint8",
                    "resample": False,
                    "separate_folder": False,
                    "print_log": False,
                },
            ],
        },
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "amp": False,
        },
        "checkpointloader": {
            "_target_": "CheckpointLoader",
            "load_path": f"$@bundle_root + '/{rel(layout.weights)}'",
            "load_dict": {"model": "@network"},
            "map_location": "@device",
        },
        "initialize": ["$@checkpointloader(@evaluator)"],
        "run": ["$@evaluator.run()"],
    }


def _version(package: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return "not installed"


def bundle_metadata(cfg: Config, divisor: int, cv_dice: float | None) -> dict:
    """``configs/metadata.json``: the fields of MONAI's bundle metadata schema (``SCHEMA_URL``)."""
    names = {0: "background", **class_names(cfg)}
    value_range = [0, 1] if cfg.data.intensity == "window" else []  # unbounded after z-scoring
    shape = [f"{divisor}*n"] * 3  # any multiple of the network's poolings
    channels = {str(k): v for k, v in names.items()}
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": "exported by pancreas-seg export --format bundle"},
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": _version("numpy"),
        "required_packages_version": {
            "nibabel": _version("nibabel"),
            "pytorch-ignite": _version("pytorch-ignite"),
            "itk": _version("itk"),
        },
        "name": f"Pancreas CT segmentation ({cfg.model.name})",
        "task": "Pancreas segmentation in 3D abdominal CT",
        "description": f"{cfg.model.name} (Oktay et al. 2018) trained with pancreas-seg; an ensemble of fold models "
        "whose softmax outputs are averaged. Research use only, not for clinical use.",
        "authors": "pancreas-seg users (fill in who trained the model)",
        "copyright": "Copyright (c) the model's owners (fill in)",
        "data_source": "the training manifest of the exported run (see docs/README.md)",
        "data_type": "nibabel",
        "image_classes": "single channel CT in HU, resampled and intensity-scaled by the bundle's preprocessing",
        "label_classes": ", ".join(f"{k} is {v}" for k, v in names.items()),
        "pred_classes": f"{len(names)} channels of class probabilities: "
        + ", ".join(f"channel {k} is {v}" for k, v in names.items()),
        "eval_metrics": {"mean_dice": cv_dice} if cv_dice is not None else {},
        "intended_use": "Research only, not for clinical use or diagnosis",
        "references": [
            "Oktay O. et al. Attention U-Net: Learning Where to Look for the Pancreas. MIDL 2018, "
            "arXiv:1804.03999"
        ],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": shape,
                    "dtype": "float32",
                    "value_range": value_range,
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": len(names),
                    "spatial_shape": shape,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": channels,
                }
            },
        },
    }


def _readme(card: str, root: Path) -> str:
    layout = BundleLayout(root)
    return (
        f"{card}\n## Running this bundle (MONAI only, no pancreas-seg needed)\n\n```\n"
        f"python -m monai.bundle run --config_file {layout.relative(layout.inference, root)} "
        f"--meta_file {layout.relative(layout.metadata, root)} --bundle_root . --input_path SCAN_OR_FOLDER "
        "--output_dir OUT\n```\n\n"
        "`input_path` is a scan (NIfTI, NRRD, MHA), a folder of scans, or a DICOM series folder; masks are "
        "written as `OUT/<scan>_seg.nii.gz` (uint8) on the input's grid. `models/model.ts` is the network "
        "(TorchScript), `models/model.pt` its weights (loaded by `inference.json`). `python -m monai.bundle` "
        "needs the `fire` package; without it call `monai.bundle.run(...)` with the same arguments.\n\n"
        "Differences from `pancreas-seg infer`: a scan thinner than the window along an axis is padded to "
        "the whole window here (`pancreas-seg infer` shrinks the window to the scan, rounded up to a multiple "
        "of 16; pass e.g. `--inferer#roi_size [160,160,48]` to do the same), and the body crop's margin is "
        "counted in voxels of the scan (the same as `pancreas-seg infer` when the scan has the target spacing).\n"
    )


def _cv_dice(source: str | os.PathLike) -> float | None:
    if is_package(source):
        return None
    path = RunLayout(source).cv_summary
    try:
        return float(json.loads(path.read_text())["foreground_mean"]["dice"]["mean"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def export_bundle(source: str | os.PathLike, out: str | os.PathLike, folds: list[int] | None = None) -> Path:
    """Write a MONAI bundle folder of a run's (or package's) folds to ``out`` (replaced as a whole).

    Args:
        source: a run folder or ``model.zip``.
        out: the bundle folder.
        folds: the folds of the ensemble (default: all there are).

    Returns:
        ``out`` (absolute).

    Raises:
        UsageError: a requested fold is not there, or there is none.
        CheckpointError: see :func:`pipeline.inference.package.model_folds`.
        OutputError: ``out`` cannot be written.
    """
    root = Path(os.path.abspath(out))
    cfg, checkpoints = model_folds(source, folds)
    module, divisor = _torchscript(cfg, checkpoints, str(source))
    script = io.BytesIO()
    weights = io.BytesIO()
    torch.jit.save(module, script)
    torch.save(
        module.state_dict(), weights
    )  # plain tensors: MONAI's CheckpointLoader reads them weights_only
    folds_in = [k for k, _ in checkpoints]
    card = (
        read_package(source).card if is_package(source) else model_card(cfg, source, folds_in, provenance())
    )
    layout = BundleLayout(root)
    files = {
        layout.metadata: json.dumps(bundle_metadata(cfg, divisor, _cv_dice(source)), indent=2).encode(),
        layout.inference: json.dumps(bundle_inference(cfg, str(root)), indent=2).encode(),
        layout.readme: _readme(card, root).encode(),
        layout.license: _LICENSE.encode(),
        layout.torchscript: script.getvalue(),
        layout.weights: weights.getvalue(),
    }
    with atomic_outputs() as outputs:
        folder = outputs.folder(root)
        for path, data in files.items():
            tmp = folder / path.relative_to(root)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
    return root
