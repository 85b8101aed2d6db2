"""One fold's inference network as ONNX, with a JSON sidecar of the preprocessing it expects.

``pancreas-seg export RUN --format onnx --out model.onnx`` writes ``model.onnx`` (opset
:data:`OPSET`, batch and the three spatial axes dynamic; sizes must be multiples of the network's
poolings) and ``model.onnx.json`` (:func:`pipeline.core.layout.onnx_sidecar`): orientation, body
crop, target spacing, intensity mapping, sliding window and the meaning of the output channels, so a
serving stack can reproduce the preprocessing of ``pancreas-seg infer``. The network is the
inference copy with batch norms folded into the convolutions (the same function in eval mode); its
output is logits, softmax over axis 1 gives the class probabilities.

Needs the ``export`` extra (``onnx``; ``onnxruntime`` for the check made after export).
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from models import network_from_checkpoint
from models.fusion import fold_batch_norm
from pipeline.core.config import Config, provenance
from pipeline.core.errors import UsageError
from pipeline.core.fileio import atomic_outputs
from pipeline.core.label_map import class_names
from pipeline.core.layout import onnx_sidecar
from pipeline.inference.package import model_folds

__all__ = ["OPSET", "ONNX_FORMAT", "export_onnx", "preprocessing_spec", "export_network", "check_onnx"]

OPSET = 18
ONNX_FORMAT = "pancreas-seg-onnx/1"
INPUT, OUTPUT = "image", "logits"
log = logging.getLogger("pancreas_seg")


def preprocessing_spec(cfg: Config) -> dict:
    """What happens to a scan before the network and to the output after it, as plain values."""
    d = cfg.data
    if d.intensity == "window":
        intensity = {"mode": "window", "clip_hu": list(d.window_hu), "scale_to": [0.0, 1.0]}
    elif d.intensity == "fingerprint":
        fv = d.fingerprint_values
        intensity = {
            "mode": "fingerprint",
            "clip_hu": list(fv.clip_hu),
            "subtract": fv.mean_hu,
            "divide_by": fv.std_hu,
        }
    else:
        intensity = {"mode": "zscore", "per": "scan (all voxels)"}
    return {
        "orientation": str(d.orientation).upper(),
        "body_crop": {"threshold_hu": d.body_threshold_hu, "margin_mm": d.body_margin_mm}
        if d.body_crop
        else None,
        "target_spacing_mm": [float(s) for s in d.target_spacing],
        "resampling": "linear (MONAI Spacingd, bilinear)",
        "intensity": intensity,
        "sliding_window": {
            "roi_size": [int(v) for v in (cfg.infer.roi_size or d.patch_size)],
            "overlap": cfg.infer.overlap,
            "mode": cfg.infer.mode,
        },
        "postprocessing": "softmax over channels, averaged over windows; back to the input grid (linear); "
        "foreground where p > 0.5 (two classes) or the argmax",
    }


def export_network(net: torch.nn.Module, divisor: int) -> bytes:
    """ONNX bytes of ``net`` (eval mode, batch norms folded), batch and spatial axes dynamic."""
    model = fold_batch_norm(net.eval())
    example = torch.zeros(1, int(net.in_channels), *[2 * divisor] * 3)
    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape checks that the graph does not need
        torch.onnx.export(
            model,
            (example,),
            buffer,
            input_names=[INPUT],
            output_names=[OUTPUT],
            opset_version=OPSET,
            dynamic_axes={INPUT: axes, OUTPUT: axes},
            dynamo=False,  # the TorchScript exporter: the dynamo one needs onnxscript
        )
    return buffer.getvalue()


def check_onnx(data: bytes, net: torch.nn.Module, shape: tuple[int, ...]) -> float | None:
    """Max abs logit difference of onnxruntime (CPU) against PyTorch fp32 on a random input, or None
    when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT: x.numpy()})[0]
    with torch.no_grad():
        ref = net.eval()(x).numpy()
    return float(np.abs(got - ref).max())


def export_onnx(source: str | os.PathLike, out: str | os.PathLike, fold: int | None = None) -> Path:
    """Write ``out`` (ONNX) and its sidecar for one fold of a run folder or model package.

    Args:
        source: a run folder or ``model.zip``.
        out: the ``.onnx`` file to write.
        fold: the fold (default: the lowest fold number there is).

    Returns:
        ``out``.

    Raises:
        UsageError: the fold is not there; ``onnx`` is not installed.
        CheckpointError: see :func:`pipeline.inference.package.model_folds`.
        OutputError: ``out`` or the sidecar cannot be written.
    """
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
    except ImportError:
        raise UsageError("ONNX export needs the onnx package: pip install 'pancreas-seg[export]'") from None
    cfg, chosen = model_folds(source, None if fold is None else [fold])
    k, ckpt = chosen[0]
    net, _ = network_from_checkpoint(ckpt, cfg.model, f"{source}: fold {k}")
    divisor = int(getattr(net, "divisor", 16))
    data = export_network(net, divisor)
    diff = check_onnx(data, net, (1, int(cfg.model.in_channels), *[2 * divisor] * 3))
    if diff is not None:
        log.info(
            "onnxruntime vs PyTorch fp32 on a %d^3 input: max abs logit difference %.2e", 2 * divisor, diff
        )
    names = class_names(cfg)
    sidecar = {
        "format": ONNX_FORMAT,
        "model_file": Path(out).name,
        "fold": k,
        "network": cfg.model.name,
        "opset": OPSET,
        "input": {
            "name": INPUT,
            "shape": ["batch", int(cfg.model.in_channels), "x", "y", "z"],
            "dtype": "float32",
            "spatial_multiple_of": divisor,
        },
        "output": {
            "name": OUTPUT,
            "channels": int(cfg.model.out_channels),
            "values": "logits (softmax over axis 1)",
            "label_values": {"0": "background", **{str(v): n for v, n in names.items()}},
        },
        "preprocessing": preprocessing_spec(cfg),
        "check": {"onnxruntime_vs_pytorch_max_abs_logit": diff},
        "exported_with": provenance(),
    }
    with atomic_outputs() as outputs:
        outputs.write(out, lambda tmp: tmp.write_bytes(data))
        outputs.write(onnx_sidecar(out), lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2)))
    return Path(out)
