"""Benchmark: training patches per second per data-loader worker, and the workers a GPU needs.

Builds the training chain of a config (``configs/default.yaml``, the recommended augmentation, by
default; ``--config configs/paper.yaml`` for the paper's) and times what one DataLoader worker does
for each volume it hands out: the random part of the chain (patch sampling at ``data.patch_size``,
160x160x96 by default, and augmentation) on a volume that is already cached on the canonical grid,

* memory cache (``data.cache: memory``, ``CacheDataset``): the cached volume is in the worker;
* disk cache (``data.cache: disk``, ``PersistentDataset``): the worker first reads it back from disk
  (``torch.load`` of the resampled volume, as the trainer does every time).

One worker is one process with one torch thread (as DataLoader workers run), so the rate scales with
workers until the cores run out. Volumes: synthetic 512x512x200 scans at 0.8x0.8x2.5 mm
(``pipeline.synthetic.phantom``: a real scan's size, 205x205x250 on the 2 mm grid), written once to the
work folder. Prints patches/s per worker for each config and cache, the time per random step (the
profile), the workers a GPU that takes ``--step-s`` (0.1 s) per batch-2 step needs, and what one
cached volume holds (image, label, the label's foreground indices). Times are wall-clock; the CPU
seconds of the process are printed beside them, since on a shared machine the wall time also counts
the waits for a core (compare runs by the load average they print).

``--device cuda`` augments the patches on the GPU, as the trainer does with ``perf.device`` CUDA and
``data.num_workers: 0`` (one process feeds the GPU; "workers" then means such processes).

Run: ``.venv/bin/python bench/loader_speed.py [--config default configs/paper.yaml] [--items 8]
[--step-s 0.1] [--workdir /tmp/pancreas_seg_loader_bench] [--device cuda]``
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def volumes(work: Path, n: int) -> list[dict]:
    """``n`` labelled full-size phantoms in ``work`` (written once)."""
    from pipeline.synthetic.phantom import make_phantom, save_phantom

    records = []
    for i in range(n):
        image, label = work / f"vol{i}.nii.gz", work / "labels" / f"vol{i}.nii.gz"
        if not image.exists():
            save_phantom(make_phantom(i, shape=(512, 512, 200), spacing=(0.8, 0.8, 2.5)), image, label)
        records.append({"case_id": f"vol{i}", "image": str(image), "label": str(label)})
    return records


def first_random(chain) -> int:
    from monai.transforms.transform import RandomizableTrait

    return next(i for i, t in enumerate(chain.transforms) if isinstance(t, RandomizableTrait))


def _sync(device: str | None) -> None:
    import torch

    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _mb(value) -> float:
    """Megabytes of the tensors in a cached item (a tensor or a list of them)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return sum(t.numel() * t.element_size() for t in items if hasattr(t, "element_size")) / 1e6


def measure(cfg_name: str, records: list[dict], work: Path, items: int, device: str | None = None) -> dict:
    """Seconds per volume handed out by the trainer's datasets (:func:`transforms.make_dataset`) with
    a memory and a disk cache (wall and CPU), seconds per random step, and megabytes per cached volume."""
    from pipeline.core.config import load_config
    from transforms import build_train_transforms, make_dataset

    cfg = load_config(None if cfg_name == "default" else cfg_name)
    # without --device the call main's code accepts too, so the script can measure a checkout of main
    chain = build_train_transforms(cfg) if device is None else build_train_transforms(cfg, device=device)
    k = first_random(chain)
    out = {
        "patches": int(cfg.data.samples_per_volume),
        "patch": "x".join(str(int(v)) for v in cfg.data.patch_size),
    }
    for cache in ("memory", "disk"):
        cfg.data.cache = cache
        ds = make_dataset(records, chain, cfg, cache_dir=work / f"cache_{Path(cfg_name).stem}")
        for i in range(len(records)):  # fill the cache (untimed: done once per training run)
            ds[i]
        t0, c0 = time.perf_counter(), time.process_time()
        for j in range(items):
            ds[j % len(records)]
        _sync(device)
        out[f"{cache}_s"] = (time.perf_counter() - t0) / items
        out[f"{cache}_cpu_s"] = (time.process_time() - c0) / items
    cached = [chain(dict(r), end=k) for r in records]
    out["cached_mb"] = {key: _mb(v) for key, v in cached[0].items() if _mb(v) > 0}
    steps: dict[str, float] = defaultdict(float)
    for j in range(items):  # the random steps one by one, to see which costs
        data = dict(cached[j % len(cached)])
        for t in chain.transforms[k:]:
            s0 = time.perf_counter()
            data = [t(d) for d in data] if isinstance(data, list) else t(data)
            _sync(device)
            steps[type(t).__name__] += time.perf_counter() - s0
    out["steps"] = {name: s / items for name, s in steps.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=["default"], help="config names or YAML files")
    parser.add_argument("--volumes", type=int, default=2)
    parser.add_argument("--items", type=int, default=8, help="volumes handed out per measurement")
    parser.add_argument("--step-s", type=float, default=0.1, help="GPU seconds per batch-2 training step")
    parser.add_argument("--workdir", default="/tmp/pancreas_seg_loader_bench")
    parser.add_argument(
        "--device",
        default=None,
        help="augment on this device (cuda: the trainer's path with data.num_workers 0); default: the CPU",
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # as a DataLoader worker
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    records = volumes(work, args.volumes)
    need = 2.0 / args.step_s
    print(
        f"load average {os.getloadavg()[0]:.2f}; a GPU at {args.step_s} s per batch-2 step takes {need:.0f} patches/s"
    )
    for name in args.config:
        if name != "default" and not Path(name).exists():
            print(f"{name}: not found, skipped")
            continue
        r = measure(name, records, work, args.items, args.device)
        print(
            f"\n{name}: {r['patches']} patches of {r['patch']} per volume (load average {os.getloadavg()[0]:.2f})"
        )
        for cache in ("memory", "disk"):
            rate = r["patches"] / r[f"{cache}_s"]
            print(
                f"  {cache} cache: {r[f'{cache}_s']:.3f} s per volume ({r[f'{cache}_cpu_s']:.3f} s CPU), "
                f"{rate:.1f} patches/s per worker, {math.ceil(need / rate)} workers for {need:.0f} patches/s"
            )
        print("  per random step (s per volume): " + ", ".join(f"{k} {v:.3f}" for k, v in r["steps"].items()))
        print("  one cached volume (MB): " + ", ".join(f"{k} {v:.3f}" for k, v in r["cached_mb"].items()))


if __name__ == "__main__":
    main()
