"""Benchmark: what statistics.csv and QC add to ``infer`` on a 512x512x200 scan, side by side.

On the synthetic 512x512x200 scan of ``bench/infer_speed.py`` (0.8x0.8x2.5 mm, its pancreas label as
the mask) it times, in one run, medians of ``--repeats``:

1. :func:`pipeline.data.statistics.measure` on the input grid (volume, HU percentiles, extent,
   centroid, border) plus the CT check of the review column;
2. :func:`pipeline.inference.qc.ensemble_scores` on the 2 mm canonical grid for a 5-fold ensemble;
3. stitching of the sliding window with the 5 folds' extra channels against without them (a
   network-free predictor, so only the stitching differs: what ``fold_qc`` adds to ``stitch_s``).

Printed as seconds and as a share of a reference ``infer`` time (``--infer-s``, default 30.3 s:
README "Inference on full scans", one model, default settings on 2 cores; float32 on a CPU without
bf16 is about 73 s, which makes the shares smaller). Fold QC exists only with an ensemble, whose
infer time is taken as ``--infer-s`` plus ``folds - 1`` times the network stage (``--network-s``).
The reference times come from a quieter machine than a loaded one running this: the shares are then
overstated.

Run: ``PYTHONPATH=. python bench/statistics_speed.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics as st
import time

import numpy as np
import torch

from pipeline.core.config import Config
from pipeline.data.statistics import measure
from pipeline.inference.qc import ensemble_scores
from pipeline.synthetic.phantom import make_phantom
from transforms.validate import check_ct_intensities

SHAPE, SPACING = (512, 512, 200), (0.8, 0.8, 2.5)


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return st.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--infer-s", type=float, default=30.3)
    ap.add_argument("--network-s", type=float, default=26.6, help="network_s of one model in --infer-s")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    from monai.inferers import SlidingWindowInferer

    ph = make_phantom(0, shape=SHAPE, spacing=SPACING)
    image = np.asarray(ph.image, dtype=np.float32)
    mask = (np.asarray(ph.label) > 0).astype(np.uint8)
    affine = np.asarray(ph.affine, dtype=np.float64)
    print(f"scan {image.shape}, mask {int(mask.sum())} voxels")
    t_stats = _time(
        lambda: (measure(mask, image, affine, {1: "pancreas"}), check_ct_intensities(image, "x")),
        args.repeats,
    )

    # canonical 2 mm grid of that scan; the folds' foreground: the mask shifted by 0-2 voxels, blurred
    canon = tuple(int(round(s * sp / 2.0)) for s, sp in zip(SHAPE, SPACING))
    m = torch.nn.functional.interpolate(torch.as_tensor(mask)[None, None].float(), size=canon)
    m = torch.nn.functional.avg_pool3d(m, 3, stride=1, padding=1)[0, 0]
    folds = torch.stack([torch.roll(m, shifts=(k % 3, k // 3), dims=(0, 1)) for k in range(args.folds)])
    fg = folds.mean(0)
    probs = torch.stack([1 - fg, fg])
    t_qc = _time(lambda: ensemble_scores(probs, folds, 0.008), args.repeats)

    cfg = Config()
    x = torch.zeros(1, 1, *canon)

    def stitch(channels: int) -> None:
        inferer = SlidingWindowInferer(cfg.data.patch_size, sw_batch_size=2, overlap=0.5, mode="gaussian")
        with torch.inference_mode():
            inferer(x, lambda w: w.expand(-1, channels, -1, -1, -1).contiguous())

    times = {2: [], 2 + args.folds: []}
    for _ in range(args.repeats):  # interleaved: load from other processes hits both alike
        for c in times:
            t0 = time.perf_counter()
            stitch(c)
            times[c].append(time.perf_counter() - t0)
    base, more = st.median(times[2]), st.median(times[2 + args.folds])
    total = t_stats + t_qc + (more - base)
    print(f"statistics (input grid): {t_stats:.3f} s")
    print(f"QC scores (canonical grid {canon}, {args.folds} folds): {t_qc:.3f} s")
    print(
        f"stitching: {base:.3f} s with 2 channels, {more:.3f} s with {2 + args.folds}: +{more - base:.3f} s"
    )
    ensemble_s = args.infer_s + (args.folds - 1) * args.network_s  # fold QC exists only for an ensemble
    print(
        f"single model (statistics, no fold QC): {t_stats:.3f} s = {100 * t_stats / args.infer_s:.1f} % of {args.infer_s} s infer"
    )
    print(
        f"{args.folds}-fold ensemble (statistics + fold QC): {total:.3f} s = {100 * total / ensemble_s:.1f} % of "
        f"{ensemble_s:.1f} s infer ({args.infer_s} s + {args.folds - 1} x {args.network_s} s network)"
    )


if __name__ == "__main__":
    main()
