"""The grid attention gate of Oktay et al. 2018 and the multi-gate block of the authors' CT model.

Additive ("concatenation") attention as in the authors' ``GridAttentionBlock3D``::

    q     = ReLU(theta(x) + resize(phi(g)))            on the gating (coarser) grid
    alpha = resize(sigmoid(psi(q)))                    back on x's grid, values in [0, 1]
    out   = W(alpha * x)                               W = 1^d conv + batch norm
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import conv_type, norm_type
from models.resample import resize_to

__all__ = ["GridAttentionGate", "MultiGateAttention"]


class GridAttentionGate(nn.Module):
    """Additive grid attention: ``num_gates`` independent gates on the same ``(x, g)``.

    ``theta`` (W_x) is a conv with kernel = stride = ``sub_sample_factor`` and no bias, as in the
    authors' ``GridAttentionBlock3D`` (github.com/ozan-oktay/Attention-Gated-Networks); the issue's wording "1x1x1 conv with
    stride equal to the sub-sample factor" would see only one voxel of each 2^d block, so we follow
    the authors' code. ``phi`` (W_g) is a 1^d conv with bias whose output is resampled linearly to
    theta's grid (a no-op when the grids already match, as they do in the U-Net). ``psi`` maps to
    ``attention_channels`` maps per gate (1 in the paper); a sigmoid gives alpha, which is resampled
    linearly to x's grid and multiplies x; the output transform ``W`` is a 1^d conv + batch norm.

    Multi-class attention (``attention_channels = A > 1``, ``model.multiclass_attention``): the
    paper proposes "multi-dimensional attention coefficients" for several semantic classes; the
    authors' released gate always has one map (``psi`` to 1 channel, ``expand_as(x)``). Here ``psi``
    gives A maps per gate (one per output class of the network) and x's C channels are split into A
    consecutive groups (sizes differ by at most one when A does not divide C): group ``k`` is scaled by
    map ``k``, so each class can keep the features it needs where another class's map is low (a
    small tumour is not suppressed by a map that learnt the whole pancreas). What changes: ``psi`` has
    A outputs instead of 1 (``inter_channels * (A - 1)`` more weights per gate), the maps are returned
    with A channels, and W sees group-wise scaled features; the rest of the gate is the same, and
    A = 1 is the paper's gate exactly.

    Several gates are computed together (their theta, phi and W convs stacked along the output
    channels, psi as a grouped conv): the same parameters and arithmetic as separate gates, in a
    third of the operator calls. Since W is linear and alpha is one number per voxel (A = 1),
    ``W(alpha * x) = alpha * (W_lin x) + b``; we compute the right-hand side, which needs one dense
    conv on x shared by all gates instead of one conv per gated copy of x.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels C of x (the skip features).
        gating_channels: channels of the gating signal g.
        inter_channels: channels of theta/phi per gate; default C (the authors' CT model).
        sub_sample_factor: kernel and stride of theta.
        attention_channels: attention maps per gate (1, or one per class for multi-class attention).
        num_gates: independent gates.

    Raises:
        ValueError: ``attention_channels`` is not in 1..``in_channels``, or ``num_gates < 1``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        gating_channels: int,
        inter_channels: int | None = None,
        sub_sample_factor: int = 2,
        attention_channels: int = 1,
        num_gates: int = 1,
    ) -> None:
        super().__init__()
        if not 1 <= attention_channels <= in_channels:
            raise ValueError(
                f"attention_channels={attention_channels} must be between 1 and in_channels={in_channels}"
            )
        if num_gates < 1:
            raise ValueError(f"gates_per_level must be >= 1, got {num_gates}")
        conv, norm = conv_type(spatial_dims), norm_type(spatial_dims)
        inter = inter_channels or in_channels
        n, f = num_gates, sub_sample_factor
        self.num_gates, self.attention_channels, self.in_channels = n, attention_channels, in_channels
        self.theta = conv(in_channels, n * inter, kernel_size=f, stride=f, bias=False)
        self.phi = conv(gating_channels, n * inter, kernel_size=1, bias=True)
        self.psi = conv(n * inter, n * attention_channels, kernel_size=1, groups=n, bias=True)
        # W of gate k is rows k*C:(k+1)*C of this conv's weight (the weight shape of a grouped conv)
        self.W = nn.Sequential(conv(in_channels, n * in_channels, kernel_size=1), norm(n * in_channels))
        # channel c of x is scaled by map group[c]: A consecutive groups of (nearly) equal size
        self.register_buffer(
            "group", torch.arange(in_channels) * attention_channels // in_channels, persistent=False
        )

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate ``x`` with the gating signal ``g``.

        Args:
            x: skip features ``(B, C, *S)``, S divisible by the sub-sample factor.
            g: gating signal ``(B, gating_channels, *S')`` on any grid (resampled to theta's).

        Returns:
            ``(W(alpha * x), alpha)``: ``(B, num_gates*C, *S)``, gate k's output in channels
            ``k*C:(k+1)*C``; alpha ``(B, num_gates*attention_channels, *S)`` in [0, 1].
        """
        theta_x = self.theta(x)
        phi_g = resize_to(self.phi(g), theta_x.shape[2:])
        alpha = torch.sigmoid(self.psi(torch.relu(theta_x + phi_g)))
        alpha = resize_to(alpha, x.shape[2:])
        conv, norm = self.W
        n, c, a = self.num_gates, self.in_channels, self.attention_channels
        b, spatial = x.shape[0], x.shape[2:]
        conv_fn = F.conv3d if x.dim() == 5 else F.conv2d
        if a == 1:
            z = conv_fn(x, conv.weight)  # W_lin x for every gate: (B, n*C, *S)
            ones = [1] * len(spatial)
            y = torch.addcmul(
                conv.bias.view(1, n, c, *ones).to(z.dtype),
                z.view(b, n, c, *spatial),
                alpha.unsqueeze(2).to(z.dtype),
            )
        else:
            per_channel = alpha.view(b, n, a, *spatial).index_select(2, self.group)  # (B, n, C, *S)
            gated = x.view(b, 1, c, *spatial) * per_channel.to(x.dtype)
            gated = _as_layout_of(gated.reshape(b, n * c, *spatial), x)
            y = conv_fn(gated, conv.weight, conv.bias, groups=n)
        y = _as_layout_of(y.reshape(b, n * c, *spatial), x)
        return norm(y), alpha


def _as_layout_of(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``y`` in the memory format of ``like`` (channels-last stays channels-last)."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(like.dim())
    if fmt is not None and like.is_contiguous(memory_format=fmt) and not like.is_contiguous():
        return y.contiguous(memory_format=fmt)
    return y.contiguous()


class MultiGateAttention(nn.Module):
    """Independent gates on one skip, mixed by 1^d conv + batch norm + ReLU.

    The authors' ``MultiAttentionBlock``: two gates on the same (x, g), outputs concatenated and
    mixed (k·C → C). With one gate the mixing conv is C → C, as in the authors' single-gate model.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the skip features.
        gating_channels: channels of the gating signal.
        num_gates: gates on this skip (the released model: 2).
        sub_sample_factor: theta's kernel and stride.
        attention_channels: attention maps per gate.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        gating_channels: int,
        num_gates: int = 2,
        sub_sample_factor: int = 2,
        attention_channels: int = 1,
    ) -> None:
        super().__init__()
        conv, norm = conv_type(spatial_dims), norm_type(spatial_dims)
        self.num_gates = num_gates
        self.gate = GridAttentionGate(
            spatial_dims,
            in_channels,
            gating_channels,
            in_channels,
            sub_sample_factor,
            attention_channels,
            num_gates,
        )
        self.combine = nn.Sequential(
            conv(in_channels * num_gates, in_channels, kernel_size=1),
            norm(in_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the mixed gated features ``(B, C, *S)`` and each gate's alpha ``(B, A, *S)``."""
        y, alpha = self.gate(x, g)
        return self.combine(y), list(alpha.chunk(self.num_gates, dim=1))
