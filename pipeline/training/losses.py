"""The training loss: Dice (+ cross-entropy) over the network's deep-supervision outputs.

The network returns, in training mode, the fused full-resolution output first and then one head per
decoder level; ``train.ds_weights`` weights them in that order. A head whose weight is 0 costs no loss
computation (MONAI's ``DeepSupervisionLoss`` would still resize the label to it and evaluate the loss,
then multiply by 0), so ``[1, 0, 0, 0, 0]`` - the authors' loss on the fused output only - is as cheap
as a network without heads.
"""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceLoss

from pipeline.core.config import Config
from pipeline.training.classes import RegionLoss

__all__ = ["WeightedDeepSupervisionLoss", "build_loss"]


class WeightedDeepSupervisionLoss(DeepSupervisionLoss):
    """MONAI's ``DeepSupervisionLoss`` that skips the outputs whose weight is 0.

    For nonzero weights the sum is the same, term by term in the same order, as MONAI's.
    """

    def forward(self, input: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the loss of each output against ``target`` (resized to it as MONAI does).

        Args:
            input: one tensor (eval mode) or the list of deep-supervision outputs (training mode).
            target: the label, ``(B, 1, *spatial)``.

        Returns:
            The scalar loss.
        """
        if not isinstance(input, (list, tuple)):
            return super().forward(input, target)
        weights = self.get_weights(levels=len(input))
        loss = torch.tensor(0, dtype=torch.float, device=target.device)
        for weight, output in zip(weights, input):
            if weight != 0:  # a head weighted 0 would add 0 x its loss: do not compute it
                loss += weight * self.get_loss(output.float(), target)
        return loss


def build_loss(cfg: Config) -> torch.nn.Module:
    """Dice (+ cross-entropy) on softmax outputs, weighted over deep-supervision outputs.

    ``train.loss: dice`` is the paper's soft Dice over all classes including background (MONAI's
    ``DiceLoss``: per sample and class, then averaged; smoothing 1e-5 where the authors add 0.01),
    or over all regions with sigmoid outputs when ``data.regions`` is set; ``dice_ce`` adds
    cross-entropy (binary cross-entropy per region).

    Args:
        cfg: the config (``train.loss``, ``train.ds_weights``, ``data.regions``), checked when it
            was loaded.

    Returns:
        The loss module: ``loss(outputs, label)``.
    """
    loss = {"dice_ce": DiceCELoss, "dice": DiceLoss}[cfg.train.loss]
    if cfg.data.regions:
        base = RegionLoss(loss(sigmoid=True, include_background=True), cfg.data.regions)
    else:
        base = loss(to_onehot_y=True, softmax=True, include_background=True)
    return WeightedDeepSupervisionLoss(base, weights=list(cfg.train.ds_weights))
