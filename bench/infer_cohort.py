"""Benchmark: a cohort of full-size scans through ``predict_cases``, serial against overlapped.

N copies of the synthetic 512x512x200 scan of ``bench/infer_speed.py`` (0.8x0.8x2.5 mm; the paper's
network with random weights, 160x160x96 windows, 2 mm grid) are predicted as one batch with
``infer.workers=0`` (serial: load, preprocess, network, invert, write one case after the other) and
with ``infer.workers=W`` (the next case loads and the previous one is inverted and written while the
network runs), the modes taking turns within each repeat so that load from other processes hits both
alike. Prints scans per minute for each, the ratio, and whether the masks are identical.

Run: ``.venv/bin/python bench/infer_cohort.py [--cases 4] [--workers 1 2] [--repeats 1]
[--workdir /tmp/pancreas_seg_cohort_bench]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/pancreas_seg_cohort_bench")
    args = parser.parse_args()

    import nibabel as nib
    import numpy as np
    import torch

    from bench.infer_speed import prepare
    from pipeline.core.runtime import configure_process
    from pipeline.inference.batch import predict_cases
    from pipeline.inference.loading import load_predictor

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    scan, ckpt = prepare(work)
    records = []
    for i in range(args.cases):  # separate files, as a cohort has (each is read and decompressed again)
        copy = work / "cohort" / f"case{i:03d}.nii.gz"
        if not copy.exists():
            copy.parent.mkdir(exist_ok=True)
            shutil.copyfile(scan, copy)
        records.append({"case_id": copy.name.split(".")[0], "image": str(copy)})
    modes = [0, *args.workers]
    predictors = {w: load_predictor(ckpt, [f"infer.workers={w}"]) for w in modes}
    configure_process(predictors[0].cfg.perf)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, {args.cases} cases"
    )
    seconds: dict[int, list[float]] = {w: [] for w in modes}
    for rep in range(args.repeats):
        for w in modes:
            load = os.getloadavg()[0]
            out = work / f"out_workers{w}"
            t0 = time.perf_counter()
            outcome = predict_cases(predictors[w], records, out, overwrite=True)
            seconds[w].append(time.perf_counter() - t0)
            if outcome["failed"]:
                raise SystemExit(f"failed: {outcome['failed']}")
            rate = 60.0 * args.cases / seconds[w][-1]
            print(
                f"repeat {rep + 1}: workers={w}: {seconds[w][-1]:.1f} s, {rate:.2f} scans/min "
                f"(load average {load:.2f} at start)",
                flush=True,
            )
    best = {w: min(s) for w, s in seconds.items()}
    print(f"\nbest of {args.repeats} repeat(s), {args.cases} scans of 512x512x200:")
    for w in modes:
        same = all(
            np.array_equal(
                np.asarray(nib.load(work / "out_workers0" / f"{r['case_id']}.nii.gz").dataobj),
                np.asarray(nib.load(work / f"out_workers{w}" / f"{r['case_id']}.nii.gz").dataobj),
            )
            for r in records
        )
        print(
            f"  workers={w}: {60.0 * args.cases / best[w]:.2f} scans/min, "
            f"{best[0] / best[w]:.2f}x serial, masks identical to serial: {same}"
        )


if __name__ == "__main__":
    main()
