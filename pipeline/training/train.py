"""Training of one fold on MONAI's engines (``SupervisedTrainer`` + ``SupervisedEvaluator``).

Layout of a fold folder (:class:`pipeline.core.layout.FoldLayout`)::

    fold_<k>/checkpoints/epoch_N.pt   resumable (network, optimizer, scheduler, trainer state)
    fold_<k>/checkpoints/best.pt      best validation Dice (network only)
    fold_<k>/checkpoints/final.pt     after the last epoch (network only)
    fold_<k>/log.csv                  epoch, loss, val_dice, best_val_dice, lr, epoch_seconds
                                      (+ val_dice_<class> per class with two or more classes)
    fold_<k>/tensorboard/             TensorBoard event files

``train.batch_size`` counts patches per optimizer step: each volume drawn gives
``data.samples_per_volume`` patches, so the loader draws ``batch_size / samples_per_volume``
volumes per step (at least one). An epoch is one pass over the training cases (unless
``train.iterations_per_epoch`` is set), so it has ``ceil(cases / volumes per step)`` steps, and the
step schedule decays every ``train.lr_step_epochs`` of these epochs. The authors' batch of two
volumes is ``samples_per_volume: 1, batch_size: 2`` (``configs/paper.yaml``): cases / 2 steps per
epoch, as theirs; the recommended ``samples_per_volume: 2, batch_size: 2`` takes two patches of one
volume per step, so an epoch has twice the steps and "250 epochs" twice the iterations.

Under ``torchrun`` (see :mod:`pipeline.core.distributed`) ``batch_size`` is per process: a step of N
processes uses N x ``batch_size`` patches, and an epoch is one pass over the training cases split
among the ranks. The learning rate is not scaled with N; set ``train.lr`` for the global batch.
Only rank 0 writes the files above; all ranks resume from the same checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from models import build_model, check_network
from pipeline.core import distributed as dist
from pipeline.core.checkpoint import latest_checkpoint
from pipeline.core.config import Config, config_to_dict
from pipeline.core.errors import ManifestError
from pipeline.core.layout import FoldLayout, RunLayout
from pipeline.core.runtime import autocast_context, configure_process, prepare_model, select_device
from pipeline.training.classes import class_metrics, val_postprocessing
from pipeline.training.handlers import (
    AtomicCheckpointer,
    AutocastInferer,
    EpochCSVLogger,
    EpochReseeder,
    quiet_stats_handler,
    seed_everything,
)
from pipeline.training.losses import build_loss
from pipeline.training.tracking import attach_mlflow
from transforms import augmentation_device, build_train_transforms, build_val_transforms, make_dataset

__all__ = [
    "FoldEngines",
    "split_records",
    "build_loss",
    "build_optimizer",
    "build_scheduler",
    "build_engines",
    "train_fold",
]

log = logging.getLogger("pancreas_seg")


@dataclasses.dataclass
class FoldEngines:
    """What :func:`build_engines` makes for one fold."""

    trainer: Any
    evaluator: Any
    objects: dict  # name -> object with state_dict(): network, optimizer, lr_scheduler, trainer
    checkpoint_dir: Path


def split_records(records: list[dict], fold: int, source: str = "manifest") -> tuple[list[dict], list[dict]]:
    """Training and validation cases of ``fold`` (validation = the cases whose fold is ``fold``).

    Raises:
        ManifestError: folds are not assigned, the fold has no cases, or nothing is left to train on.
    """
    folds = sorted({int(r["fold"]) for r in records if int(r.get("fold", -1)) >= 0})
    if not folds:
        raise ManifestError(f"{source}: no folds assigned; run 'pancreas-seg folds {source}' first")
    missing = [r["case_id"] for r in records if not r.get("label")]
    if missing:
        raise ManifestError(
            f"{source}: training needs labels; cases without a label: {', '.join(missing[:5])}"
        )
    val = [r for r in records if int(r["fold"]) == fold]
    train = [r for r in records if int(r["fold"]) >= 0 and int(r["fold"]) != fold]
    if not val:
        raise ManifestError(f"{source}: fold {fold} has no cases (folds present: {folds})")
    if not train:
        raise ManifestError(f"{source}: fold {fold} leaves no cases to train on")
    return train, val


# train.loss, train.optimizer and train.lr_schedule are checked when the config is loaded
# (pipeline.core.config_checks); these builders only map the checked names.


def build_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    """Adam (the paper's text) or SGD with Nesterov momentum ``train.momentum`` (the authors' code:
    0.9), both with ``train.lr`` and L2 ``train.weight_decay``. The schedule is separate
    (:func:`build_scheduler`)."""
    t = cfg.train
    optimizers = {
        "adam": lambda: torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay),
        "sgd": lambda: torch.optim.SGD(
            params, lr=t.lr, momentum=t.momentum, nesterov=True, weight_decay=t.weight_decay
        ),
    }
    return optimizers[t.optimizer]()


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer):
    """The learning-rate schedule ``train.lr_schedule``, stepped once per epoch."""
    t = cfg.train
    schedules = {
        "step": lambda: torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=t.lr_step_epochs, gamma=t.lr_gamma
        ),
        "poly": lambda: torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=t.epochs, power=0.9),
        "none": lambda: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
    }
    return schedules[t.lr_schedule]()


def _prepare_batch_fn(channels_last: bool):
    from monai.data import MetaTensor
    from monai.engines.utils import default_prepare_batch

    def prepare(batchdata, device=None, non_blocking=False, **kwargs):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        # Plain tensors: MetaTensor's __torch_function__ would wrap every op inside the network.
        image = image.as_tensor() if isinstance(image, MetaTensor) else image
        label = label.as_tensor() if isinstance(label, MetaTensor) else label
        if channels_last and image.dim() == 5:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        return image, label

    return prepare


def build_engines(
    cfg: Config, train_recs: list[dict], val_recs: list[dict], fold_dir: str | Path
) -> FoldEngines:
    """The trainer and evaluator of one fold with all handlers attached (nothing is run yet)."""
    from monai.data import DataLoader
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import (
        EarlyStopHandler,
        LrScheduleHandler,
        TensorBoardStatsHandler,
        ValidationHandler,
        from_engine,
        stopping_fn_from_metric,
    )
    from monai.inferers import SimpleInferer, SlidingWindowInferer

    fold = FoldLayout(fold_dir)
    configure_process(cfg.perf)
    seed_everything(cfg.train.seed, cfg.train.deterministic)  # before any weight is drawn
    device = select_device(cfg.perf)
    dist.setup(device)  # no-op unless started by torchrun
    main = dist.is_main()
    # Under torchrun each rank trains on its part of the cases and validates its share of them.
    train_recs = dist.partition_for_training(train_recs, seed=cfg.train.seed)
    val_recs = dist.shard_for_validation(val_recs)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else RunLayout(fold.dir.parent).cache

    # CUDA with data.num_workers 0: the patches are augmented on the GPU (transforms.chains)
    train_tf = build_train_transforms(cfg, device=augmentation_device(cfg, device))
    train_ds = make_dataset(train_recs, train_tf, cfg, cache_dir=cache_dir / "train")
    val_ds = make_dataset(val_recs, build_val_transforms(cfg), cfg, cache_dir=cache_dir / "val")
    volumes = max(1, cfg.train.batch_size // max(1, cfg.data.samples_per_volume))
    workers = cfg.data.num_workers
    train_loader = DataLoader(
        train_ds, batch_size=volumes, shuffle=True, num_workers=workers, drop_last=False
    )
    val_loader = DataLoader(val_ds, batch_size=1, num_workers=min(workers, 1))

    net = prepare_model(build_model(cfg.model), device, cfg.perf)
    train_net = dist.wrap_ddp(net, device)  # DDP under torchrun; the evaluator uses the plain network
    optimizer = build_optimizer(cfg, net.parameters())
    scheduler = build_scheduler(cfg, optimizer)
    cuda_amp = device.type == "cuda" and cfg.perf.amp

    def wrap(inferer):
        return inferer if cuda_amp else AutocastInferer(inferer, lambda: autocast_context(device, cfg.perf))

    roi = list(cfg.infer.roi_size or cfg.data.patch_size)
    key_metric, per_class = class_metrics(cfg)  # mean foreground Dice; and per class with several
    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=val_loader,
        network=net,
        inferer=wrap(
            SlidingWindowInferer(roi, cfg.infer.sw_batch_size, cfg.infer.overlap, mode=cfg.infer.mode)
        ),
        prepare_batch=_prepare_batch_fn(cfg.perf.channels_last),
        postprocessing=val_postprocessing(cfg),
        key_val_metric=key_metric,
        additional_metrics=per_class or None,
        amp=cuda_amp,
    )
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=cfg.train.epochs,
        train_data_loader=train_loader,
        network=train_net,
        optimizer=optimizer,
        loss_function=build_loss(cfg),
        epoch_length=cfg.train.iterations_per_epoch or None,
        inferer=wrap(SimpleInferer()),
        prepare_batch=_prepare_batch_fn(cfg.perf.channels_last),
        amp=cuda_amp,
    )
    objects = {"network": net, "optimizer": optimizer, "lr_scheduler": scheduler, "trainer": trainer}
    model_cfg = dataclasses.asdict(cfg.model)

    # Order matters: reseed, then the epoch's scheduler step, validation, log row, checkpoint.
    # Each rank draws its own patches and augmentation (seed offset by rank; rank 0 = one process).
    EpochReseeder(cfg.train.seed + 7919 * dist.rank(), train_tf, cfg.train.deterministic).attach(trainer)
    LrScheduleHandler(scheduler, print_lr=False).attach(trainer)
    ValidationHandler(validator=evaluator, interval=cfg.train.val_interval, epoch_level=True).attach(trainer)
    # Every rank takes part in the epoch's loss average; only rank 0 writes files.
    EpochCSVLogger(fold.log, optimizer, evaluator, write=main, extra_columns=list(per_class)).attach(trainer)
    if main:
        AtomicCheckpointer(
            fold.checkpoints,
            objects,
            model_cfg,
            cfg.train.checkpoint_interval,
            evaluator=evaluator,
            run_config=config_to_dict(cfg),
        ).attach(trainer)
        TensorBoardStatsHandler(
            log_dir=str(fold.tensorboard), output_transform=from_engine(["loss"], first=True)
        ).attach(trainer)
        TensorBoardStatsHandler(log_dir=str(fold.tensorboard), output_transform=lambda x: None).attach(
            evaluator
        )
        quiet_stats_handler(name="pancreas_seg.stats", iteration_log=False, epoch_log=False).attach(trainer)
        attach_mlflow(trainer, evaluator, cfg, fold.dir.parent, fold.dir.name)  # no-op unless train.mlflow
        _attach_progress(trainer, evaluator)
    if cfg.train.early_stopping_patience > 0:
        EarlyStopHandler(
            patience=cfg.train.early_stopping_patience,
            score_function=stopping_fn_from_metric("val_dice"),
            trainer=trainer,
            epoch_level=True,
        ).attach(evaluator)

    return FoldEngines(trainer, evaluator, objects, fold.checkpoints)


def train_fold(
    cfg: Config, records: list[dict], fold: int, fold_dir: str | Path, resume: bool = True
) -> dict:
    """Train one fold; resumes from ``fold_dir/checkpoints`` when possible.

    Returns:
        ``{"best": path, "final": path, "epochs": int, "best_val_dice": float}``.
    """
    train_recs, val_recs = split_records(records, fold)
    eng = build_engines(cfg, train_recs, val_recs, fold_dir)
    trainer, evaluator, layout = eng.trainer, eng.evaluator, FoldLayout(fold_dir)
    if resume and (
        found := latest_checkpoint(
            layout.checkpoints, check=lambda ckpt, source: check_network(ckpt, cfg.model, source)
        )
    ):
        path, ckpt = found
        from ignite.handlers import Checkpoint

        Checkpoint.load_objects(to_load=eng.objects, checkpoint=ckpt)
        trainer.state.max_epochs = cfg.train.epochs  # as MONAI's CheckpointLoader: the config decides
        evaluator.state.best_metric = ckpt.get("best_metric", -1)
        evaluator.state.best_metric_epoch = ckpt.get("best_metric_epoch", -1)
        log.info("resuming fold %d from %s (epoch %d)", fold, path, trainer.state.epoch)
    if trainer.state.epoch < cfg.train.epochs:
        trainer.run()
    else:  # already trained (a re-run, or killed after its last checkpoint): ignite's run() would
        # start the finished engine over from epoch 0, keeping the trained weights
        log.info("fold %d: already trained for %d epochs", fold, trainer.state.epoch)
        if not layout.final.exists():
            from ignite.engine import Events

            trainer.fire_event(Events.COMPLETED)  # AtomicCheckpointer writes final.pt
    dist.barrier()  # rank 0 has written its checkpoints
    if not layout.best.exists():  # no validation ran (e.g. epochs < val_interval)
        evaluator.run()
        dist.barrier()
    return {
        "best": layout.best,
        "final": layout.final,
        "epochs": trainer.state.epoch,
        "best_val_dice": float(evaluator.state.best_metric),
    }


def _attach_progress(trainer, evaluator) -> None:
    """tqdm bars with ETA for training epochs and validation (stderr; quiet when not a terminal)."""
    import sys

    if not sys.stderr.isatty():
        return
    from ignite.handlers import ProgressBar

    ProgressBar(persist=False, desc="train").attach(
        trainer, output_transform=lambda out: {"loss": _loss_of(out)}
    )
    ProgressBar(persist=False, desc="validate").attach(evaluator)


def _loss_of(out) -> float:
    item = out[0] if isinstance(out, list) else out
    return float(item["loss"]) if isinstance(item, dict) and "loss" in item else float("nan")
