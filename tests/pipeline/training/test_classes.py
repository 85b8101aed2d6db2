"""Pancreas and tumour: train -> infer with three classes, regions, and the per-class validation log."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.config import apply_overrides
from pipeline.data.manifest import assign_folds, case_records, read_manifest, write_manifest
from pipeline.inference.loading import load_predictor
from pipeline.synthetic.phantom import write_phantoms
from pipeline.training.classes import val_postprocessing
from pipeline.training.losses import build_loss
from pipeline.training.train import train_fold
from tests.conftest import tiny_config
from transforms import labels_to_regions, regions_to_labels

CLASSES = {"data__class_names": "[pancreas,tumour]", "model__out_channels": 3}
# patches on foreground (each class alike), no augmentation: a short run can overfit one case
OVERFIT = {
    "data__pos_fraction": 1.0,
    "data__target_spacing": "[2.0,2.0,2.0]",
    "data__augment__flip_prob": 0.0,
    "data__augment__rotate_prob": 0.0,
    "data__augment__scale_prob": 0.0,
    "data__augment__intensity_prob": 0.0,
    "train__lr": 0.01,
    "train__iterations_per_epoch": 5,
    "train__val_interval": 4,
    "train__checkpoint_interval": 100,
}


@pytest.fixture(scope="module")
def tumour_dataset(tmp_path_factory):
    """Two 64x64x32 phantoms, both with a lesion (label 2), in two folds; the manifest's records."""
    root = tmp_path_factory.mktemp("tumour_phantoms")
    cases = write_phantoms(root, n=2, seed=11, shape=(64, 64, 32), tumour_fraction=1.0)
    df = pd.DataFrame(
        [{k: c[k] for k in ("case_id", "subject_id", "image", "label", "label_map")} for c in cases]
    )
    path = write_manifest(assign_folds(df, 2, seed=0), root / "manifest.csv", root=root)
    return case_records(read_manifest(path))


@pytest.mark.slow
def test_three_classes_train_and_infer_give_labels_0_1_2(tumour_dataset, tmp_path):
    cfg = tiny_config(**CLASSES, **OVERFIT, train__epochs=16)
    fold = tmp_path / "fold_0"
    result = train_fold(cfg, tumour_dataset, 0, fold)
    log = pd.read_csv(fold / "log.csv")
    assert {"val_dice_pancreas", "val_dice_tumour"} <= set(log.columns)
    assert log["val_dice"].notna().any()
    # the training case (fold 1), predicted by the final network: all three classes come out
    train_case = next(r for r in tumour_dataset if int(r["fold"]) == 1)
    predictor = load_predictor(result["final"], ["infer.save_probabilities=true", "infer.precision=fp32"])
    pred = predictor.predict(train_case)
    assert set(np.unique(pred.mask)) == {0, 1, 2}
    ref = np.asarray(nib.load(train_case["label"]).dataobj)
    assert pred.mask.shape == ref.shape
    tumour = (pred.mask == 2) & (ref == 2)
    assert tumour.sum() > 0  # tumour predicted where the tumour is
    assert pred.probability.shape == (2, *ref.shape)  # pancreas and tumour probabilities
    assert 0 <= pred.probability.min() and pred.probability.max() <= 1
    assert pred.probability[1][pred.mask == 2].mean() > 1 / 3  # the argmax class has the largest share


def test_regions_and_labels_convert_both_ways():
    label = torch.tensor([0, 1, 2, 1, 0])[None, None, :, None, None]
    regions = labels_to_regions(label, [[1, 2], [2]])
    assert regions.shape == (1, 2, 5, 1, 1)
    assert regions[0, :, :, 0, 0].tolist() == [[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]
    assert regions_to_labels(regions[0] > 0.5)[:, 0, 0].tolist() == [0, 1, 2, 1, 0]
    # later regions win, and a tumour outside the whole-pancreas region is still tumour (nnU-Net)
    on = torch.tensor([[True, True, False, False], [False, True, True, False]])
    assert regions_to_labels(on).tolist() == [1, 2, 2, 0]


def test_region_loss_and_validation_score_label_maps():
    cfg = tiny_config(**CLASSES)
    regions = apply_overrides(tiny_config(**CLASSES), ["data.regions=[[1,2],[2]]", "model.out_channels=2"])
    label = torch.zeros(1, 1, 16, 16, 16)
    label[:, :, 4:12, 4:12, 4:12] = 1
    label[:, :, 6:9, 6:9, 6:9] = 2
    perfect = (labels_to_regions(label, [[1, 2], [2]]) * 2 - 1) * 20  # logits agreeing with the label
    loss = build_loss(regions)
    assert float(loss([perfect], label)) < 0.05 < float(loss([-perfect], label))
    post = val_postprocessing(regions)({"pred": perfect[0], "label": label[0]})
    assert post["pred"].shape == post["label"].shape == (3, 16, 16, 16)
    assert torch.equal(post["pred"], post["label"])
    softmax = val_postprocessing(cfg)({"pred": torch.randn(3, 16, 16, 16), "label": label[0]})
    assert softmax["pred"].shape == (3, 16, 16, 16) and softmax["pred"].sum(0).eq(1).all()


def test_inference_turns_region_probabilities_back_into_the_label_map(tumour_dataset):
    from models import build_model
    from pipeline.inference.predictor import Predictor

    cfg = tiny_config(**CLASSES)
    apply_overrides(
        cfg, ["data.regions=[[1,2],[2]]", "model.out_channels=2", "infer.save_probabilities=true"]
    )
    predictor = Predictor([build_model(cfg.model)], cfg)
    case = tumour_dataset[0]
    data, _ = predictor.preprocess(case, with_label=True)
    label = torch.as_tensor(data["label"])[None]
    out = predictor.postprocess(data, labels_to_regions(label, cfg.data.regions)[0])
    ref = np.asarray(nib.load(case["label"]).dataobj)
    assert set(np.unique(out.mask)) == {0, 1, 2}
    for k in (1, 2):  # the label map back on the input grid (resampling blurs only the edges)
        a, b = out.mask == k, ref == k
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.8
    assert out.probability.shape == (2, *ref.shape)  # whole pancreas, tumour
