"""Benchmark: ``pancreas-seg infer`` on a long (chest-abdomen-pelvis length) scan, time and peak memory.

Two synthetic int16 scans at 0.8x0.8x1.0 mm, uncompressed NIfTI (the 1000-slice one is 0.5 GB on
disk): 512x512x200 (one phantom, ``pipeline.synthetic.phantom``, seed 0) and 512x512x1000 (that
phantom five times along z), with the paper's network (random weights, seed 0; the speed does not
depend on the weights, and the body crop keeps the whole length). Each goes through
``pancreas-seg infer`` in a fresh process; the script prints wall time, time per voxel and the
process's peak RSS, the ratio of the time per voxel of the long scan to the short one's (1.0 =
linear in slices), and the per-stage seconds of ``timings.csv``.

``--profile`` instead runs the stages of the longest scan in this process and prints the peak RSS of
each (reset between stages) and the resident memory after it: where the memory goes.

Run: ``.venv/bin/python bench/long_scan.py [--slices 200 1000] [--profile] [--workdir /tmp/pancreas_seg_long_scan]``
(the workdir holds 0.6 GB of scans; nothing goes into the repository). ``/usr/bin/time -v`` on the
printed command gives the same peak ("Maximum resident set size").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPACING = (0.8, 0.8, 1.0)
BLOCK = 200  # slices of one phantom; longer scans repeat it along z


def make_scan(path: Path, slices: int) -> None:
    """Write a 512x512x``slices`` int16 scan (the phantom repeated along z) unless it exists."""
    import nibabel as nib
    import numpy as np

    from pipeline.core.fileio import atomic_write
    from pipeline.synthetic.phantom import make_phantom

    if path.exists():
        return
    ph = make_phantom(0, shape=(512, 512, BLOCK), spacing=SPACING)
    block = np.clip(np.rint(ph.image), -1024, 3071).astype(np.int16)
    reps = -(-slices // BLOCK)
    image = np.concatenate([block] * reps, axis=2)[:, :, :slices] if reps > 1 else block[:, :, :slices]
    img = nib.Nifti1Image(image, ph.affine)
    img.header.set_data_dtype(np.int16)
    atomic_write(path, lambda tmp: nib.save(img, tmp))


def cli_run(scan: Path, ckpt: Path, out: Path, overrides: list[str]) -> tuple[float, float, list[str]]:
    """``pancreas-seg infer`` in a fresh process: (wall seconds, peak RSS MB, the command)."""
    cmd = [sys.executable, "-m", "pipeline.cli", "infer", "--model", str(ckpt), "--input", str(scan)]
    cmd += ["--out", str(out), "--overwrite", *(x for o in overrides for x in ("--set", o))]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(
            f"pancreas-seg infer failed (exit {os.waitstatus_to_exitcode(status)}): {' '.join(cmd)}"
        )
    return wall, usage.ru_maxrss / 1024.0, cmd


def profile(scan: Path, ckpt: Path, out: Path, overrides: list[str]) -> None:
    """Peak and resident memory of each stage of one scan, in this process."""
    import time

    from pipeline.core.runtime import peak_rss_mb, reset_peak_rss
    from pipeline.inference.batch import predict_cases
    from pipeline.inference.loading import load_predictor

    predictor = load_predictor(ckpt, overrides)

    def rss() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    print(f"profile of {scan.name}: stage, seconds, peak RSS during it, RSS after it (MB)", flush=True)
    item = {"image": str(scan), "case_id": "scan"}
    steps = [
        ("load", lambda d: predictor.transform(d, end=1)),
        ("preprocess", lambda d: predictor.transform(d, start=1)),
        ("network+stitch", lambda d: (d, predictor.sliding_window(d["image"])[0])),
        ("invert", lambda d: predictor.postprocess(*d)),
    ]
    data: object = item
    print(f"  {'start':16s} {0:7.1f} s {peak_rss_mb():8.0f} {rss():8.0f}", flush=True)
    for name, fn in steps:
        reset_peak_rss()
        t0 = time.perf_counter()
        data = fn(data)
        print(f"  {name:16s} {time.perf_counter() - t0:7.1f} s {peak_rss_mb():8.0f} {rss():8.0f}", flush=True)
    del data
    reset_peak_rss()
    t0 = time.perf_counter()
    predict_cases(predictor, [{"case_id": "scan", "image": str(scan)}], out, overwrite=True)
    print(f"  {'whole case':16s} {time.perf_counter() - t0:7.1f} s {peak_rss_mb():8.0f} {rss():8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--workdir", default="/tmp/pancreas_seg_long_scan")
    parser.add_argument("--profile", action="store_true", help="memory per stage of the longest scan")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args()

    import pandas as pd

    from bench.infer_speed import prepare

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    _, ckpt = prepare(work)
    if args.profile:
        n = max(args.slices)
        make_scan(work / f"scan_{n}.nii", n)
        profile(work / f"scan_{n}.nii", ckpt, work / "out_profile", args.set)
        return
    results = []
    for n in args.slices:
        scan = work / f"scan_{n}.nii"
        make_scan(scan, n)
        print(f"{n} slices: load average {os.getloadavg()[0]:.2f} at start", flush=True)
        wall, peak, cmd = cli_run(scan, ckpt, work / f"out_{n}", args.set)
        stages = pd.read_csv(work / f"out_{n}" / "timings.csv").iloc[0].to_dict()
        voxels = 512 * 512 * n
        results.append((n, wall, peak, wall / voxels))
        print(f"  {' '.join(cmd)}", flush=True)
        print(
            f"  {wall:.1f} s, {1e9 * wall / voxels:.1f} s per 10^9 voxels, peak RSS {peak:.0f} MB", flush=True
        )
        print(
            "  stages: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if k.endswith("_s")),
            flush=True,
        )
    base = results[0]
    for n, _wall, peak, per_voxel in results[1:]:
        print(
            f"{n} vs {base[0]} slices: time per voxel {per_voxel / base[3]:.2f}x (1.0 = linear), "
            f"peak RSS {peak:.0f} MB vs {base[2]:.0f} MB (target < 4096 MB)"
        )


if __name__ == "__main__":
    main()
