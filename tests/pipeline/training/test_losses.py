"""The training loss over deep-supervision outputs, and the optimizers of the two recipes."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss

from pipeline.core.config import Config, load_config
from pipeline.data.manifest import case_records, read_manifest
from pipeline.training.losses import WeightedDeepSupervisionLoss, build_loss
from pipeline.training.train import build_engines, build_optimizer, build_scheduler, split_records
from tests.conftest import tiny_config


def _outputs(seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A fused output and four heads at halving resolutions, and a label, for a 2-class net."""
    g = torch.Generator().manual_seed(seed)
    sizes = [16, 16, 8, 4, 2]  # the fused output and the finest head at full resolution
    outputs = [torch.randn(2, 2, s, s, s, generator=g) for s in sizes]
    label = (torch.rand(2, 1, 16, 16, 16, generator=g) > 0.7).float()
    return outputs, label


class _Counting(torch.nn.Module):
    """A loss that records the spatial size of every output it is asked about."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, input, target):
        self.seen.append(tuple(input.shape[2:]))
        return self.inner(input, target)


def test_heads_weighted_zero_cost_no_loss_computation():
    outputs, label = _outputs()
    base = _Counting(DiceCELoss(to_onehot_y=True, softmax=True))
    loss = WeightedDeepSupervisionLoss(base, weights=[1.0, 0.0, 0.5, 0.0, 0.0])
    value = loss(outputs, label)
    assert base.seen == [(16, 16, 16), (8, 8, 8)]  # the fused output and the one weighted head
    expected = base.inner(outputs[0], label) + 0.5 * DeepSupervisionLoss(base.inner).get_loss(
        outputs[2], label
    )
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_fused_output_only_equals_the_plain_loss():
    cfg = load_config("paper")
    outputs, label = _outputs(1)
    plain = build_loss(cfg).loss(outputs[0], label)
    assert build_loss(cfg)(outputs, label).item() == pytest.approx(plain.item(), rel=1e-6)


def test_nonzero_weights_give_monais_sum_bit_for_bit():
    cfg = Config()  # recommended: Dice + CE, weights 1, 0.5, 0.25, 0.125, 0.0625
    outputs, label = _outputs(2)
    ours = build_loss(cfg)(outputs, label)
    base = DiceCELoss(to_onehot_y=True, softmax=True, include_background=True)
    theirs = DeepSupervisionLoss(base, weights=list(cfg.train.ds_weights))(outputs, label)
    assert torch.equal(ours, theirs)


def test_the_paper_optimizer_is_nesterov_sgd_with_momentum_0_9():
    cfg = load_config("paper")
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert group["nesterov"] is True and group["momentum"] == 0.9
    assert group["lr"] == pytest.approx(1e-4) and group["weight_decay"] == pytest.approx(1e-6)
    sched = build_scheduler(cfg, opt)
    assert (
        isinstance(sched, torch.optim.lr_scheduler.StepLR) and sched.step_size == 250 and sched.gamma == 0.5
    )


def test_the_papers_stated_adam_is_one_override():
    cfg = load_config("paper", ["train.optimizer=adam"])
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_momentum_and_schedule_are_independent_of_the_optimizer():
    cfg = load_config(None, ["train.optimizer=sgd", "train.momentum=0.5", "train.lr_schedule=none"])
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(3))])
    assert opt.param_groups[0]["momentum"] == 0.5
    assert isinstance(build_scheduler(cfg, opt), torch.optim.lr_scheduler.LambdaLR)


def test_a_batch_of_two_volumes_is_expressible(tiny_dataset, tmp_path):
    cfg = tiny_config(data__samples_per_volume=1, train__batch_size=2, train__ds_weights="[1,0,0,0,0]")
    train, val = split_records(case_records(read_manifest(tiny_dataset)), 0)
    eng = build_engines(cfg, train, val, tmp_path / "fold_0")
    loader = eng.trainer.data_loader
    assert len(loader) == -(-len(train) // 2)  # an epoch: cases / 2 steps, as the authors'
    batch = next(iter(loader))
    assert batch["image"].shape[0] == 2
    names = batch["image"].meta["filename_or_obj"]
    assert len(set(names)) == 2  # one patch from each of two volumes
