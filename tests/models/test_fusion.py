"""models.fusion: the inference copy (batch norms folded, conv + ReLU fused) computes the same function."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models import AttentionUNet, fusion
from pipeline.core import runtime
from pipeline.core.config import PerfConfig
from tests.tiny_net import TINY, dice


def _trained_like(model: nn.Module) -> nn.Module:
    """Give every batch norm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def test_inference_copy_fuses_every_conv_relu_pair_and_keeps_the_state_dict():
    model = _trained_like(AttentionUNet(channels=TINY))
    fast = fusion.prepare_for_inference(model)
    fused = [m for m in fast.modules() if isinstance(m, fusion.ConvReLU3d)]
    # 2 per conv block (5 encoders, 4 decoders), the gating signal, 3 gate-combining convs
    assert len(fused) == 2 * 9 + 1 + 3
    assert not any(isinstance(m, (nn.ReLU, nn.BatchNorm3d)) for m in fast.modules())  # folded, fused
    assert not fast.training
    assert any(isinstance(m, nn.ReLU) for m in model.modules())  # the original is untouched
    assert any(isinstance(m, nn.BatchNorm3d) for m in model.modules())
    keys = {k for k in model.state_dict() if "running" not in k and "num_batches" not in k}
    assert keys >= {k for k in fast.state_dict()}  # the same names for what is left
    assert {k for k in fast.state_dict() if k.startswith("encoders.0.0.")} == {
        "encoders.0.0.weight",
        "encoders.0.0.bias",
    }


@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_copy_equals_the_network_in_float32(channels_last):
    torch.manual_seed(0)
    model = _trained_like(AttentionUNet(channels=TINY))
    x = torch.randn(2, 1, 32, 48, 16)
    perf = PerfConfig(device="cpu", channels_last=channels_last)
    fast = runtime.prepare_model(fusion.prepare_for_inference(model), torch.device("cpu"), perf)
    with torch.no_grad():
        ref = model(x)
        out = fast(runtime.prepare_input(x, perf))
        maps, ref_maps = fast.attention_maps(x), model.attention_maps(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    for name in ref_maps:
        torch.testing.assert_close(maps[name], ref_maps[name], atol=1e-5, rtol=1e-5)


def test_fused_conv_without_the_onednn_operator_or_with_gradients_is_conv_then_relu(monkeypatch):
    conv = nn.Conv3d(3, 4, 3, padding=1)
    seq = fusion.fuse_conv_relu(nn.Sequential(conv, nn.Identity(), nn.ReLU()))
    assert isinstance(seq[0], fusion.ConvReLU3d) and isinstance(seq[2], nn.Identity)
    x = torch.randn(1, 3, 6, 6, 6, requires_grad=True)
    ref = torch.relu(conv(x))
    out = seq(x)  # gradients recorded: PyTorch's conv and ReLU, differentiable
    torch.testing.assert_close(out, ref)
    (g,) = torch.autograd.grad(out.sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g, g_ref)
    monkeypatch.setattr(fusion, "_POINTWISE", None)
    with torch.no_grad():
        torch.testing.assert_close(seq(x), ref.detach())


@pytest.mark.skipif(not runtime.cpu_supports_bf16(), reason="CPU without native bf16")
def test_fastest_inference_copy_agrees_with_float32(overfit, phantom):
    """channels-last + bf16 on the inference copy (what `infer` runs): Dice >= 0.99 against float32."""
    image, label = phantom
    cpu = torch.device("cpu")
    ref_model = copy.deepcopy(overfit["model"]).eval()
    with torch.no_grad():
        ref = ref_model(image).argmax(1, keepdim=True)
    perf = PerfConfig(device="cpu", bf16=True, channels_last=True)
    fast = runtime.prepare_model(fusion.prepare_for_inference(overfit["model"]), cpu, perf)
    with torch.no_grad(), runtime.autocast_context(cpu, perf):
        pred = fast(runtime.prepare_input(image, perf)).float().argmax(1, keepdim=True)
    assert dice(pred, ref) >= 0.99
    assert dice(ref, label) > 0.9
