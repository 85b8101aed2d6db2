"""AttentionUNet: shapes, deep supervision, attention maps, the U-Net baseline, gradients, size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import AttentionUNet, GridAttentionGate, MultiGateAttention, count_parameters
from tests.tiny_net import TINY, dice


@pytest.mark.parametrize("size", [(48, 32, 64), (16, 48, 32)])
def test_output_shapes_train_and_eval(size):
    torch.manual_seed(0)
    model = AttentionUNet(channels=TINY, out_channels=3)
    x = torch.randn(2, 1, *size)
    out = model.train()(x)
    assert isinstance(out, list) and len(out) == 5  # fused + one head per decoder level
    assert out[0].shape == (2, 3, *size)
    for k, head in enumerate(out[1:]):  # finest first, at native resolution
        assert head.shape == (2, 3, *[s // 2**k for s in size])
    y = model.eval()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, *size)


def test_no_deep_supervision_gives_one_tensor_in_training():
    model = AttentionUNet(channels=TINY, deep_supervision=False).train()
    y = model(torch.randn(1, 1, 32, 32, 32))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 2, 32, 32, 32)


def test_eval_output_is_the_fused_training_output():
    torch.manual_seed(0)
    model = AttentionUNet(channels=TINY)
    x = torch.randn(1, 1, 32, 32, 32)
    for m in model.modules():  # batch norm with running statistics in both modes
        if isinstance(m, torch.nn.BatchNorm3d):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    with torch.no_grad():
        fused = model.train()(x)[0]
        torch.testing.assert_close(model.eval()(x), fused)


@pytest.mark.parametrize("size", [(40, 32, 32), (32, 32, 24), (8, 16, 16)])
def test_size_not_multiple_of_16_raises(size):
    model = AttentionUNet(channels=TINY)
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.randn(1, 1, *size))


def test_wrong_rank_raises():
    with pytest.raises(ValueError, match="5-D input"):
        AttentionUNet(channels=TINY)(torch.randn(1, 32, 32, 32))


def test_attention_maps_shapes_range_and_no_side_effects():
    torch.manual_seed(0)
    model = AttentionUNet(channels=TINY).eval()
    x = torch.randn(2, 1, 32, 48, 64)
    with torch.no_grad():
        before = model(x)
    maps = model.attention_maps(x)
    assert sorted(maps) == [f"level{lvl}_gate{g}" for lvl in (2, 3, 4) for g in (0, 1)]
    for name, alpha in maps.items():
        level = int(name[5])
        assert alpha.shape == (2, 1, 32 // 2 ** (level - 1), 48 // 2 ** (level - 1), 64 // 2 ** (level - 1))
        assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0
    with torch.no_grad():
        assert torch.equal(model(x), before)
    # in training mode: the mode is restored and batch-norm statistics are not updated
    model.train()
    stats = [b.clone() for b in model.buffers()]
    model.attention_maps(x)
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))


def test_unet_baseline_has_no_gates():
    model = AttentionUNet(channels=TINY, attention=False)
    kinds = (GridAttentionGate, MultiGateAttention)
    assert not any(isinstance(m, kinds) for m in model.modules())
    assert not hasattr(model, "gating") and not hasattr(model, "gates")
    assert model.attention_maps(torch.randn(1, 1, 32, 32, 32)) == {}
    gated = AttentionUNet(channels=TINY)
    assert sum(isinstance(m, MultiGateAttention) for m in gated.modules()) == 3


@pytest.mark.parametrize("attention", [True, False])
def test_gradients_reach_every_parameter(attention):
    torch.manual_seed(0)
    model = AttentionUNet(channels=TINY, attention=attention).train()
    x = torch.randn(2, 1, 32, 32, 32)
    loss = sum((o**2).mean() for o in model(x))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_parameter_counts_match_the_authors_models():
    # the authors' released models (the counts in README "The model") have 4-class CT-150 heads
    # (background, pancreas, spleen, kidney): out_channels=4
    assert count_parameters(AttentionUNet(out_channels=4, attention=False)) == 5_888_004
    assert count_parameters(AttentionUNet(out_channels=4, gates_per_level=2)) == 6_473_322
    assert count_parameters(AttentionUNet(out_channels=4, gates_per_level=1)) == 6_214_151
    # only the heads and their fusion depend on the classes: 4 heads (C -> K, bias) + fusion (4K -> K)
    heads = lambda k: sum(c * k + k for c in (16, 32, 64, 128)) + 4 * k * k + k  # noqa: E731
    for kwargs in ({"attention": False}, {"gates_per_level": 2}, {"gates_per_level": 1}):
        diff = count_parameters(AttentionUNet(out_channels=4, **kwargs)) - count_parameters(
            AttentionUNet(out_channels=2, **kwargs)
        )
        assert diff == heads(4) - heads(2)


def _reference_gate(gate: GridAttentionGate, k: int, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Gate ``k`` computed literally as in the authors' GridAttentionBlock3D (eval-mode BN)."""
    c = gate.in_channels
    theta = F.conv3d(x, gate.theta.weight[k * c : (k + 1) * c], stride=2)
    phi = F.conv3d(g, gate.phi.weight[k * c : (k + 1) * c], gate.phi.bias[k * c : (k + 1) * c])
    f = F.relu(theta + F.interpolate(phi, size=theta.shape[2:], mode="trilinear"))
    psi = F.conv3d(f, gate.psi.weight[k : k + 1], gate.psi.bias[k : k + 1])
    alpha = F.interpolate(torch.sigmoid(psi), size=x.shape[2:], mode="trilinear")
    conv, bn = gate.W
    sl = slice(k * c, (k + 1) * c)
    y = F.conv3d(alpha * x, conv.weight[sl], conv.bias[sl])
    return F.batch_norm(y, bn.running_mean[sl], bn.running_var[sl], bn.weight[sl], bn.bias[sl], eps=bn.eps)


def test_stacked_gates_equal_independent_gates():
    torch.manual_seed(0)
    gate = GridAttentionGate(3, in_channels=8, gating_channels=16, num_gates=2).eval()
    for bn in gate.modules():
        if isinstance(bn, torch.nn.BatchNorm3d):
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    x, g = torch.randn(2, 8, 16, 16, 16), torch.randn(2, 16, 4, 4, 4)  # g coarser than theta(x)
    with torch.no_grad():
        y, alpha = gate(x, g)
        ref = torch.cat([_reference_gate(gate, k, x, g) for k in range(2)], dim=1)
    assert y.shape == (2, 16, 16, 16, 16) and alpha.shape == (2, 2, 16, 16, 16)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_multiclass_attention_gives_one_map_per_class():
    torch.manual_seed(0)
    # 3 classes on levels of 6 and 9 channels: groups of unequal size
    model = AttentionUNet(channels=(4, 6, 9, 12, 16), out_channels=3, attention_channels=3).train()
    x = torch.randn(1, 1, 32, 32, 32)
    maps = model.attention_maps(x)
    assert sorted(maps) == [f"level{lv}_gate{k}" for lv in (2, 3, 4) for k in (0, 1)]
    assert maps["level2_gate0"].shape == (1, 3, 16, 16, 16) and maps["level3_gate1"].shape[1] == 3
    assert all(float(m.min()) >= 0 and float(m.max()) <= 1 for m in maps.values())
    assert not torch.equal(maps["level2_gate0"][:, 0], maps["level2_gate0"][:, 1])  # maps of their own
    sum(o.mean() for o in model(x)).backward()
    with pytest.raises(ValueError, match="between 1 and in_channels"):
        AttentionUNet(channels=(4, 6, 9, 12, 16), attention_channels=7)


def test_multiclass_gate_scales_each_channel_group_by_its_class_map():
    torch.manual_seed(0)
    gate = GridAttentionGate(3, in_channels=8, gating_channels=16, attention_channels=3, num_gates=2).eval()
    x, g = torch.randn(2, 8, 16, 16, 16), torch.randn(2, 16, 8, 8, 8)
    with torch.no_grad():
        y, alpha = gate(x, g)
        conv, bn = gate.W
        groups = [0, 0, 0, 1, 1, 1, 2, 2]  # 8 channels in 3 groups: 3, 3, 2
        for k in range(2):
            a = alpha[:, 3 * k : 3 * k + 3][:, groups]  # each channel's map
            sl = slice(8 * k, 8 * k + 8)
            ref = F.conv3d(a * x, conv.weight[sl], conv.bias[sl])
            ref = F.batch_norm(
                ref, bn.running_mean[sl], bn.running_var[sl], bn.weight[sl], bn.bias[sl], eps=bn.eps
            )
            torch.testing.assert_close(y[:, sl], ref, atol=1e-5, rtol=1e-5)
    assert alpha.shape == (2, 6, 16, 16, 16)


def test_two_d_variant():
    torch.manual_seed(0)
    model = AttentionUNet(spatial_dims=2, channels=TINY, out_channels=3)
    out = model.train()(torch.randn(2, 1, 64, 48))
    assert [tuple(o.shape) for o in out] == [
        (2, 3, 64, 48),
        (2, 3, 64, 48),
        (2, 3, 32, 24),
        (2, 3, 16, 12),
        (2, 3, 8, 6),
    ]
    model.eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    assert model.attention_maps(torch.randn(1, 1, 32, 32))["level2_gate1"].shape == (1, 1, 16, 16)


def test_dropout_and_other_depths():
    model = AttentionUNet(channels=(4, 8, 16), dropout=0.2, gates_per_level=1)
    assert model.divisor == 4
    assert model.eval()(torch.randn(1, 1, 12, 8, 4)).shape == (1, 2, 12, 8, 4)
    with pytest.raises(ValueError, match="at least 3 levels"):
        AttentionUNet(channels=(4, 8))


def test_overfits_a_phantom(overfit, phantom):
    """A tiny network learns a curved tube next to an equally bright blob (context matters)."""
    image, label = phantom
    with torch.no_grad():
        pred = overfit["model"](image).argmax(1, keepdim=True)
    assert dice(pred, label) > 0.9, overfit
    assert overfit["steps"] <= 300


@pytest.mark.parametrize(
    "shape,size",
    [
        ((2, 3, 6, 5, 4), (48, 20, 8)),  # x8, x4, x2 as the deep-supervision heads
        ((1, 2, 12, 12, 12), (24, 24, 24)),  # an attention map back to its skip's grid
        ((1, 1, 9, 7, 8), (4, 5, 6)),  # shrinking, and sizes that are no multiples
        ((2, 2, 5, 7), (20, 14)),  # 2-D
    ],
)
def test_separable_resize_equals_interpolate(shape, size):
    """Few-channel tensors take the matrix-product path of resize_to: same values and gradients."""
    from models.resample import SEPARABLE_MAX_CHANNELS, resize_to

    assert shape[1] <= SEPARABLE_MAX_CHANNELS
    mode = "trilinear" if len(shape) == 5 else "bilinear"
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y = resize_to(x, size)
    ref = F.interpolate(x, size=size, mode=mode, align_corners=False)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    w = torch.randn_like(ref)
    (g,) = torch.autograd.grad((y * w).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    cl = (
        x.detach()
        .float()
        .contiguous(memory_format=torch.channels_last_3d if len(shape) == 5 else torch.channels_last)
    )
    torch.testing.assert_close(resize_to(cl, size), ref.detach().float(), rtol=1e-5, atol=1e-5)
