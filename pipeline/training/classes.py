"""What training does with the classes: the loss (softmax over classes, or sigmoid per region), the
validation post-processing to label maps, and the per-class validation Dice.

Softmax (``data.regions`` empty): the network's ``out_channels`` are background plus the classes of
``data.class_names``; Dice (+ cross-entropy) over all of them, the label one-hot encoded. Regions
(nnU-Net's region-based training, e.g. ``[[1, 2], [2]]``: whole pancreas, tumour): one sigmoid output
per region, Dice (+ binary cross-entropy) per region against the region masks made from the label.
Validation scores label maps in both cases (regions are turned back into labels first,
:func:`transforms.labels.regions_to_labels`), so the two are compared on the same footing.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.core.config import Config
from pipeline.core.label_map import class_names
from transforms.labels import labels_to_regions, regions_to_labels

__all__ = ["RegionLoss", "class_metrics", "val_postprocessing"]


class RegionLoss(nn.Module):
    """A sigmoid loss on region masks made from a class-label target.

    Args:
        loss: the loss on ``(prediction logits, region masks)``, e.g. ``DiceCELoss(sigmoid=True)``.
        regions: the classes of each region, e.g. ``[[1, 2], [2]]``.
    """

    def __init__(self, loss: nn.Module, regions: list[list[int]]) -> None:
        super().__init__()
        self.loss = loss
        self.regions = [list(map(int, r)) for r in regions]

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 (MONAI's name)
        """Loss of logits ``(B, R, *S)`` against a class map ``(B, 1, *S)``."""
        return self.loss(input, labels_to_regions(target, self.regions))


def _regions_to_onehot(k: int):
    def convert(pred: torch.Tensor) -> torch.Tensor:
        labels = regions_to_labels(torch.sigmoid(pred.float()) > 0.5)
        return nn.functional.one_hot(labels.long(), k + 1).movedim(-1, 0).to(pred.dtype)

    return convert


def val_postprocessing(cfg: Config):
    """Per validation case: prediction and label as one-hot label maps over background + classes."""
    from monai.transforms import AsDiscreted, Compose, Lambdad

    k = len(cfg.data.class_names)
    pred = (
        Lambdad(keys="pred", func=_regions_to_onehot(k))
        if cfg.data.regions
        else AsDiscreted(keys="pred", argmax=True, to_onehot=k + 1)
    )
    return Compose([pred, AsDiscreted(keys="label", to_onehot=k + 1)])


def _channels(k: int):
    """Output transform: each case's background and class ``k`` channels (a two-class Dice of k)."""

    def select(output):
        preds, labels = output
        return [p[[0, k]] for p in preds], [y[[0, k]] for y in labels]

    return select


def class_metrics(cfg: Config) -> tuple[dict, dict]:
    """``({"val_dice": mean foreground Dice over classes and cases}, {"val_dice_<name>": ...})``.

    The per-class entries exist only with two or more classes (with one they equal val_dice).
    A case without a class in its label gives no Dice for that class (MONAI's ``ignore_empty``,
    whatever the prediction): a tumour-free case counts neither as a hit nor as a miss here;
    false-positive tumours are the evaluation's business (lesion detection).
    """
    from monai.handlers import MeanDice, from_engine

    pick = from_engine(["pred", "label"])
    key = {"val_dice": MeanDice(include_background=False, output_transform=pick)}
    names = class_names(cfg)
    extra = {}
    if len(names) > 1:
        for k, name in names.items():
            extra[f"val_dice_{name}"] = MeanDice(
                include_background=False, output_transform=lambda out, s=_channels(k): s(pick(out))
            )
    return key, extra
