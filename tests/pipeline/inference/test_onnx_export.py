"""ONNX export: opset, dynamic axes, the preprocessing sidecar, and onnxruntime against PyTorch fp32."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import network_from_checkpoint
from pipeline.cli import main
from pipeline.core.layout import onnx_sidecar
from pipeline.inference.onnx_export import OPSET
from pipeline.inference.package import model_folds

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def test_onnx_matches_pytorch_fp32_on_other_shapes_and_has_its_sidecar(random_run, tmp_path):
    out = tmp_path / "model.onnx"
    assert main(["export", str(random_run), "--format", "onnx", "--fold", "1", "--out", str(out)]) == 0
    model = onnx.load(str(out))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == OPSET >= 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True, True]  # batch, x, y, z dynamic

    side = json.loads(onnx_sidecar(out).read_text())
    assert side["fold"] == 1 and side["model_file"] == "model.onnx"
    pre = side["preprocessing"]
    assert pre["target_spacing_mm"] == [3.0, 3.0, 3.0] and pre["intensity"]["clip_hu"] == [-100.0, 240.0]
    assert (
        pre["sliding_window"]["roi_size"] == [64, 64, 32]
        and side["output"]["label_values"]["1"] == "pancreas"
    )

    cfg, folds = model_folds(random_run, [1])
    net = network_from_checkpoint(folds[0][1], cfg.model)[0]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in ((1, 1, 32, 32, 32), (2, 1, 48, 32, 16)):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
        got = session.run(None, {side["input"]["name"]: x.numpy()})[0]
        with torch.no_grad():
            ref = net(x).numpy()
        assert got.shape == ref.shape and float(np.abs(got - ref).max()) <= 1e-3


def test_onnx_takes_one_fold(random_run, tmp_path, capsys):
    argv = [
        "export",
        str(random_run),
        "--format",
        "onnx",
        "--fold",
        "0",
        "--fold",
        "1",
        "--out",
        str(tmp_path / "m.onnx"),
    ]
    assert main(argv) == 2
    assert "one fold per ONNX file" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
