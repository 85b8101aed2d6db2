"""Training throughput of the engine-driven loop against the bare model step (issue 5).

Three loops, same network, loss, optimizer, patch size and patches per step, in one process:

1. ``bare``: a hand-written ``forward -> loss -> backward -> step`` on tensors already in memory.
2. ``engine``: MONAI's ``SupervisedTrainer`` (what ``pancreas-seg train`` uses) over the same
   in-memory patches, so the difference is the engine and its handlers alone.
3. ``engine+data``: ``pipeline.training.train.build_engines`` exactly as training builds it, on cached
   phantom volumes: patch sampling, augmentation, collation, reseeding, logging, checkpoint hooks.

Each loop runs ``--repeats`` times, interleaved; the table shows medians.

Run: ``.venv/bin/python bench/engine_overhead.py [--steps 30] [--repeats 3] [--patch 64 64 32]``.
Not a test.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Events


def _cfg(patch, channels, spv, batch):
    from pipeline.core.config import load_config

    return load_config(
        "demo",
        [
            f"data.patch_size={list(patch)}",
            f"model.channels={list(channels)}",
            f"data.samples_per_volume={spv}",
            f"train.batch_size={batch}",
            "data.num_workers=0",
            "data.cache=memory",
            "train.val_interval=100000",
            "train.checkpoint_interval=100000",
        ],
    )


def bare(cfg, steps: int, warmup: int) -> float:
    from models import build_model
    from pipeline.core.runtime import autocast_context, prepare_model, select_device
    from pipeline.training.train import build_loss, build_optimizer

    device = select_device(cfg.perf)
    net = prepare_model(build_model(cfg.model), device, cfg.perf).train()
    loss_fn, opt = build_loss(cfg), build_optimizer(cfg, net.parameters())
    x = torch.randn(cfg.train.batch_size, 1, *cfg.data.patch_size)
    y = (torch.rand(cfg.train.batch_size, 1, *cfg.data.patch_size) > 0.9).float()
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, cfg.perf):
            out = net(x)
        loss = loss_fn([o.float() for o in out] if isinstance(out, list) else out.float(), y)
        loss.backward()
        opt.step()
    return steps * cfg.train.batch_size / (time.perf_counter() - t0)


def engine_in_memory(cfg, steps: int, warmup: int) -> float:
    from monai.engines import SupervisedTrainer
    from monai.inferers import SimpleInferer

    from models import build_model
    from pipeline.core.runtime import autocast_context, prepare_model, select_device
    from pipeline.training.handlers import AutocastInferer
    from pipeline.training.train import _prepare_batch_fn, build_loss, build_optimizer

    device = select_device(cfg.perf)
    net = prepare_model(build_model(cfg.model), device, cfg.perf)
    b = cfg.train.batch_size
    batch = {
        "image": torch.randn(b, 1, *cfg.data.patch_size),
        "label": (torch.rand(b, 1, *cfg.data.patch_size) > 0.9).float(),
    }
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=[batch] * (warmup + steps),
        network=net,
        optimizer=build_optimizer(cfg, net.parameters()),
        loss_function=build_loss(cfg),
        inferer=AutocastInferer(SimpleInferer(), lambda: autocast_context(device, cfg.perf)),
        prepare_batch=_prepare_batch_fn(cfg.perf.channels_last),
        decollate=False,
    )
    marks = {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: marks.setdefault(e.state.iteration, time.perf_counter())
    )
    trainer.run()
    return steps * b / (marks[warmup + steps] - marks[warmup])


def engine_full(cfg, records, steps: int, warmup: int, folder: Path) -> float:
    from pipeline.training.train import build_engines

    cfg.train.iterations_per_epoch = warmup + steps
    cfg.train.epochs = 1
    eng = build_engines(cfg, records, records[:1], folder)
    marks = {}
    eng.trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: marks.setdefault(e.state.iteration, time.perf_counter())
    )
    eng.trainer.run()
    spv = cfg.data.samples_per_volume
    patches = max(1, cfg.train.batch_size // spv) * spv  # as build_engines' loader draws them
    return steps * patches / (marks[warmup + steps] - marks[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--channels", type=int, nargs=5, default=[8, 16, 32, 64, 128])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from pipeline.data.manifest import case_records, read_manifest, write_manifest
    from pipeline.synthetic.phantom import write_phantoms

    cfg = _cfg(args.patch, args.channels, spv=2, batch=2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import pandas as pd

        cases = write_phantoms(tmp / "data", n=4, seed=0, shape=(128, 128, 48))
        df = pd.DataFrame([{k: c[k] for k in ("case_id", "subject_id", "image", "label")} for c in cases])
        records = case_records(read_manifest(write_manifest(df, tmp / "data" / "m.csv", root=tmp / "data")))
        runs: dict[str, list[float]] = {"bare": [], "engine": [], "engine+data": []}
        for r in range(args.repeats):  # interleaved, so drift in machine load hits every loop alike
            runs["bare"].append(bare(cfg, args.steps, args.warmup))
            runs["engine"].append(engine_in_memory(cfg, args.steps, args.warmup))
            runs["engine+data"].append(engine_full(cfg, records, args.steps, args.warmup, tmp / f"fold{r}"))
        rates = {name: statistics.median(v) for name, v in runs.items()}
    print(
        f"patch {args.patch}, channels {args.channels}, {cfg.train.batch_size} patches/step, "
        f"{torch.get_num_threads()} threads, {args.steps} timed steps after {args.warmup} warm-up, "
        f"median of {args.repeats} interleaved repeats"
    )
    print(f"{'loop':<12} {'patches/s':>10} {'time vs bare':>13} {'overhead':>9}")
    for name, rate in rates.items():
        ratio = rates["bare"] / rate
        print(f"{name:<12} {rate:>10.2f} {ratio:>12.3f}x {100 * (ratio - 1):>8.1f}%")


if __name__ == "__main__":
    main()
