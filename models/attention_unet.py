"""The attention-gated U-Net of Oktay et al. 2018 and, with ``attention=False``, its plain U-Net."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.attention_gate import MultiGateAttention
from models.blocks import ConvBlock, GatingSignal, UpBlock, init_weights, pointwise_conv, pool_type
from models.resample import resize_to

__all__ = ["AttentionUNet"]


class AttentionUNet(nn.Module):
    """Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas",
    MIDL 2018, arXiv:1804.03999), after the authors' ``unet_CT_multi_att_dsv_3D``.

    Encoder: per level a double conv 3^d + BN + ReLU, then max-pooling 2^d. Bottleneck: the same
    block; the gating signal is a 1^d conv + BN + ReLU on it. Decoder: ×2 linear upsampling,
    concatenation ``[gated skip, upsampled]``, double conv. The skips of all levels except the
    finest (levels 2-4 of 5 by default) pass through ``gates_per_level`` grid attention gates
    (:class:`~models.attention_gate.MultiGateAttention`); the coarsest gated skip is gated by the
    gating signal, each finer one by the decoder output one level coarser. Deep supervision: a 1^d
    conv head on every decoder output, each upsampled to full resolution, concatenated and fused by a
    1^d conv into the logits. ``attention=False`` is the paper's U-Net baseline: plain skips, no gate
    or gating-signal modules at all (the authors' ``unet_CT_dsv_3D``). With the default channels and
    ``out_channels=4`` (the authors' CT-150 setting: background, pancreas, spleen, kidney) the
    parameter counts equal the authors' models: 6,473,322 (two gates per level), 6,214,151 (one
    gate), 5,888,004 (``attention=False``); with our default ``out_channels=2`` each is 538 fewer
    (only the heads and their fusion depend on the classes).

    Outputs: in training mode with ``deep_supervision=True`` a list ``[fused, head_1, ..., head_L-1]``
    (fused logits first, then the heads from finest to coarsest) for
    ``monai.losses.DeepSupervisionLoss``; otherwise one logits tensor at full resolution (the fused
    output). The heads are returned at their native resolution (1, 1/2, 1/4, 1/8): MONAI's loss
    resizes the label to each head, which is 8-512× cheaper than a loss on full-resolution copies,
    and the full-resolution copies only ever feed the fusion conv. Loss weights ``(1, 0, ...)``
    reproduce the authors' training, which saw only the fused output.

    Deviations from the paper / the authors' code:
        - Linear resampling uses ``align_corners=False``; the authors' PyTorch 0.3 code behaved as
          ``align_corners=True`` (a sub-voxel shift on factor-2 grids).
        - The decoder upsamples to the skip's exact size rather than by a fixed factor (the same for
          the sizes we accept: multiples of 2^(levels-1)); inputs of other sizes raise ValueError
          instead of being padded by the authors' ``F.pad`` offsets.
        - ``deep_supervision`` only chooses the training-mode output; the heads and their fusion
          always exist (they are the authors' output layer), so the parameter count does not change.
        - Optional extras not in the paper's released code: ``dropout`` (after each batch norm, 0 by
          default), 2-D networks, other depths and widths, and ``attention_channels > 1``:
          multi-class attention, the paper's "multi-dimensional attention coefficients" (the
          authors' code has one map per gate). Each gate then gives one map per output class and
          scales its own group of the skip's channels with it
          (:class:`~models.attention_gate.GridAttentionGate`); ``attention_maps()`` returns the
          maps with one channel per class. ``model.multiclass_attention`` sets it to
          ``out_channels`` (background, pancreas, tumour; or one per region).
        - MONAI's ``AttentionUnet`` (a different design: same-resolution gates on every level, no
          deep supervision, transposed convs) is not used.
        - Kaiming init as the authors (conv weights N(0, 2/fan_in), BN weights N(1, 0.02)); conv
          biases keep PyTorch's default init, as in the authors' code.

    Implementation notes (the same function, computed faster; see ``bench/model_speed.py``):
        - The gates of one level run as one module with stacked convs, and ``W(alpha*x)`` is
          computed as ``alpha*(W_lin x) + b`` (:class:`~models.attention_gate.GridAttentionGate`).
        - 1^d convs to a few channels (heads, fusion) run as matrix products on contiguous
          inputs; linear resampling keeps channels-last gradients channels-last, runs in the
          input's dtype under autocast, and resamples few-channel tensors (heads, attention
          maps) one axis at a time by matrix products (:mod:`models.resample`).
        - Without gradients (inference, validation) the decoder's x2 upsampling is written
          straight into the concatenation (:func:`models.resample.upsample_concat`) and 2^d max
          pooling is taken one axis at a time (:class:`models.blocks.MaxPool3d`).
        - For inference, :func:`models.fusion.prepare_for_inference` folds the batch norms into
          the convolutions and fuses each conv with its ReLU
          (:func:`models.fusion.prepare_for_inference`).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (1 for CT).
        out_channels: classes, background included.
        channels: features per level, finest first; at least 3 levels.
        attention: gate the skips (False: the plain U-Net baseline).
        deep_supervision: return ``[fused, heads...]`` in training mode.
        gates_per_level: independent gates per gated skip (the released model: 2).
        dropout: dropout probability in the conv blocks.
        attention_channels: attention maps per gate (1 in the paper; ``out_channels`` for
            multi-class attention); at most the channels of the finest gated level.
        sub_sample_factor: kernel and stride of the gates' theta conv.

    Raises:
        ValueError: fewer than 3 levels, or a bad ``spatial_dims``/``gates_per_level``/``attention_channels``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        attention: bool = True,
        deep_supervision: bool = True,
        gates_per_level: int = 2,
        dropout: float = 0.0,
        attention_channels: int = 1,
        sub_sample_factor: int = 2,
    ) -> None:
        super().__init__()
        ch = [int(c) for c in channels]
        if len(ch) < 3:
            raise ValueError(f"channels needs at least 3 levels, got {list(channels)}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = tuple(ch)
        self.attention = attention
        self.deep_supervision = deep_supervision
        self.gates_per_level = gates_per_level if attention else 0
        n = len(ch)

        self.encoders = nn.ModuleList(
            ConvBlock(spatial_dims, in_channels if i == 0 else ch[i - 1], ch[i], dropout) for i in range(n)
        )
        self.pool = pool_type(spatial_dims)(kernel_size=2)
        # decoders[i] produces level i (0 = full resolution) from level i+1
        self.decoders = nn.ModuleList(
            UpBlock(spatial_dims, ch[i], ch[i + 1], ch[i], dropout) for i in range(n - 1)
        )
        if attention:
            self.gating = GatingSignal(spatial_dims, ch[-1], ch[-1])
            # gates[j] sits on the skip of level j+1 (the full-resolution skip is not gated)
            self.gates = nn.ModuleList(
                MultiGateAttention(
                    spatial_dims, ch[i], ch[i + 1], gates_per_level, sub_sample_factor, attention_channels
                )
                for i in range(1, n - 1)
            )
        self.heads = nn.ModuleList(pointwise_conv(spatial_dims, ch[i], out_channels) for i in range(n - 1))
        self.fuse = pointwise_conv(spatial_dims, out_channels * (n - 1), out_channels)
        init_weights(self)

    @property
    def divisor(self) -> int:
        """Every spatial size must be a multiple of this (2 to the number of poolings)."""
        return 2 ** (len(self.channels) - 1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"expected a {self.spatial_dims + 2}-D input (batch, channel, {self.spatial_dims} spatial dims), "
                f"got shape {tuple(x.shape)}"
            )
        bad = [s for s in x.shape[2:] if s % self.divisor]
        if bad:
            raise ValueError(
                f"input spatial size {tuple(x.shape[2:])} is not divisible by {self.divisor} "
                f"({len(self.channels) - 1} poolings); pad or crop each dimension to a multiple of {self.divisor}"
            )

    def _forward(
        self, x: torch.Tensor, maps: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Fused logits and the heads at native resolution (finest first); records alphas in ``maps``."""
        self._check_input(x)
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else self.pool(x))
            skips.append(x)
        y = skips.pop()  # the bottleneck
        g = self.gating(y) if self.attention else None
        outs: list[torch.Tensor] = []
        for i in range(len(skips) - 1, -1, -1):
            skip = skips[i]
            if self.attention and i > 0:
                skip, alphas = self.gates[i - 1](skip, g if i == len(skips) - 1 else y)
                if maps is not None:
                    for k, a in enumerate(alphas):
                        maps[f"level{i + 1}_gate{k}"] = a
            y = self.decoders[i](skip, y)
            outs.append(y)
        outs.reverse()  # finest first
        # contiguous: linear resampling of a few channels is 2x faster than in channels-last
        heads = [head(o).contiguous() for head, o in zip(self.heads, outs)]
        full = heads[0].shape[2:]
        fused = self.fuse(torch.cat([resize_to(h, full) for h in heads], dim=1))
        return fused, heads

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, out_channels, *S)``, or ``[fused, heads...]`` when training with deep supervision.

        Raises:
            ValueError: the input is not ``(B, C, *S)`` with every size in S a multiple of
                :attr:`divisor`.
        """
        fused, heads = self._forward(x)
        if self.training and self.deep_supervision:
            return [fused, *heads]
        return fused

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The gates' attention coefficients for ``x``, computed in eval mode.

        The module's train/eval mode is restored afterwards, and batch-norm running statistics
        are not touched.

        Args:
            x: input batch.

        Returns:
            ``{"level2_gate0": alpha, ...}`` (levels numbered from 1 at full resolution); each alpha
            has the gated skip's spatial shape, ``attention_channels`` channels (channel k: class k's
            map with multi-class attention, else the one map) and values in [0, 1].
            Empty for ``attention=False``.
        """
        was_training = self.training
        self.eval()
        try:
            maps: dict[str, torch.Tensor] = {}
            self._forward(x, maps)
        finally:
            self.train(was_training)
        return maps
