"""Benchmark: end-to-end inference on a full-size CT scan, per stage, with the speed options side by side.

A synthetic 512x512x200 scan at 0.8x0.8x2.5 mm (``pipeline.synthetic.phantom``, seed 0) and the paper's
network (channels 16..256, 160x160x96 windows, 2 mm grid; random weights, seed 0: the speed does
not depend on the weights) are written to a work folder. Then, in one run:

1. ``pancreas-seg infer`` with the default settings in a fresh process (what a user waits for:
   imports, model loading, all stages), wall time and the child's peak RSS;
2. each variant below through :func:`pipeline.inference.batch.predict_cases` (its ``timings.csv`` stages
   and per-case peak RSS), the variants taking turns within each repeat so that load from other
   processes hits all of them alike. The table gives medians, the speed-up over float32 and the
   Dice of each variant's mask against the float32 mask.

Run: ``.venv/bin/python bench/infer_speed.py [--repeats 3] [--quick] [--workdir /tmp/infer_bench]``
(``--quick`` leaves out the float32 variants, which take minutes each on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPE = (512, 512, 200)
SPACING = (0.8, 0.8, 2.5)
STAGES = ("load_s", "preprocess_s", "network_s", "stitch_s", "invert_s", "save_s")
VARIANTS = [  # (name, overrides); the default is infer.precision=auto
    ("fp32", ["infer.precision=fp32"]),
    ("fp32 + channels_last", ["infer.precision=fp32", "perf.channels_last=true"]),
    ("bf16", ["infer.precision=bf16"]),
    ("default (auto)", []),
    ("default, sw_batch_size=1", ["infer.sw_batch_size=1"]),
    ("default, sw_batch_size=4", ["infer.sw_batch_size=4"]),
    ("default, overlap=0.25", ["infer.overlap=0.25"]),
    ("default, retain_memory=false", ["perf.retain_memory=false"]),
]


def prepare(work: Path, shape: tuple[int, int, int] = SHAPE) -> tuple[Path, Path]:
    """Write the scan (``shape`` voxels) and a random-weight checkpoint of the default network (kept)."""
    import torch

    from models import build_model
    from pipeline.core.checkpoint import save_checkpoint
    from pipeline.core.config import Config, config_to_dict
    from pipeline.synthetic.phantom import make_phantom, save_phantom

    scan, ckpt = work / "scan.nii.gz", work / "model.pt"
    if not scan.exists():
        ph = make_phantom(0, shape=shape, spacing=SPACING)
        save_phantom(ph, scan, work / "label.nii.gz")
    if not ckpt.exists():
        cfg = Config()
        torch.manual_seed(0)
        net = build_model(cfg.model)
        save_checkpoint(
            {"model": asdict(cfg.model), "config": config_to_dict(cfg), "network": net.state_dict()}, ckpt
        )
    return scan, ckpt


def cli_run(scan: Path, ckpt: Path, out: Path) -> tuple[float, float]:
    """``pancreas-seg infer`` in a fresh process: (wall seconds, peak RSS MB of that process)."""
    cmd = [sys.executable, "-m", "pipeline.cli", "infer", "--model", str(ckpt), "--input", str(scan)]
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--out", str(out), "--overwrite"], cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"pancreas-seg infer failed (exit {os.waitstatus_to_exitcode(status)})")
    return wall, usage.ru_maxrss / 1024.0


def dice(a, b) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the float32 variants")
    parser.add_argument("--workdir", default="/tmp/pancreas_seg_infer_bench")
    args = parser.parse_args()

    import nibabel as nib
    import numpy as np
    import pandas as pd
    import torch

    from pipeline.core.runtime import configure_process, cpu_supports_bf16
    from pipeline.inference.batch import predict_cases
    from pipeline.inference.loading import load_predictor

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    scan, ckpt = prepare(work)
    variants = [v for v in VARIANTS if not (args.quick and v[0].startswith("fp32"))]
    predictors = {name: load_predictor(ckpt, ov) for name, ov in variants}
    configure_process(predictors[variants[0][0]].cfg.perf)
    default = predictors["default (auto)"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu_supports_bf16={cpu_supports_bf16()}; "
        f"default resolves to bf16={default.perf.bf16}, channels_last={default.perf.channels_last}, "
        f"sw_batch_size={default.cfg.infer.sw_batch_size}, overlap={default.cfg.infer.overlap}"
    )
    record = [{"case_id": "scan", "image": str(scan)}]
    rows, cli = [], []
    for rep in range(args.repeats):
        print(f"repeat {rep + 1}/{args.repeats}: load average {os.getloadavg()[0]:.2f}", flush=True)
        cli.append(cli_run(scan, ckpt, work / "cli"))
        print(
            f"  pancreas-seg infer (fresh process): {cli[-1][0]:.1f} s, peak {cli[-1][1]:.0f} MB", flush=True
        )
        for name, _ in variants:
            out = work / name.replace(" ", "_").replace(",", "").replace("=", "")
            predict_cases(predictors[name], record, out, overwrite=True)
            t = pd.read_csv(out / "timings.csv").iloc[0].to_dict()
            rows.append(
                {"variant": name, "repeat": rep, **{k: t[k] for k in (*STAGES, "total_s", "peak_rss_mb")}}
            )
            print(f"  {name:28s} total {t['total_s']:6.1f} s (network {t['network_s']:6.1f} s)", flush=True)

    table = pd.DataFrame(rows).groupby("variant", sort=False).median(numeric_only=True).drop(columns="repeat")
    masks = {
        name: np.asarray(
            nib.load(work / name.replace(" ", "_").replace(",", "").replace("=", "") / "scan.nii.gz").dataobj
        )
        for name, _ in variants
    }
    ref = "fp32" if "fp32" in masks else "default (auto)"
    base = table.loc[ref, "total_s"]
    table["speed-up vs " + ref] = base / table["total_s"]
    table["Dice vs " + ref] = [dice(masks[name], masks[ref]) for name in table.index]
    pd.set_option("display.width", 200)
    print(f"\nmedians of {args.repeats} repeats (seconds; peak RSS in MB):")
    print(table.round(3).to_string())
    walls, peaks = [c[0] for c in cli], [c[1] for c in cli]
    print(
        f"\npancreas-seg infer, default settings, fresh process: median {statistics.median(walls):.1f} s "
        f"(runs: {', '.join(f'{w:.1f}' for w in walls)}), peak RSS {max(peaks):.0f} MB; target <= 60 s, <= 6144 MB"
    )
    d = table.loc["default (auto)"]
    share = d["network_s"] / d["total_s"]
    print(f"default: network {d['network_s']:.1f} s of {d['total_s']:.1f} s in the process ({share:.0%})")


if __name__ == "__main__":
    main()
