"""Benchmark: loading + preprocessing of one CT scan to the canonical grid, and inverting a prediction.

A synthetic 512x512x200 int16 scan at 0.8x0.8x2.5 mm (an elliptic body of soft tissue in air, so the
body crop has work to do) is written as .nii.gz to a temporary folder; the inference chain of the
default config (2 mm isotropic, -100..240 HU window, body crop) is timed step by step, then a
prediction on the canonical grid is inverted back to 512x512x200 (a label with nearest
interpolation, and two-class probabilities with linear interpolation). Side by side, the same
inversion with MONAI's own ``Spacingd`` inverse, which our ``CTSpacingd`` replaces.

Run: ``.venv/bin/python bench/preprocess_speed.py [--threads 2] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.core.runtime import peak_rss_mb, reset_peak_rss

SHAPE = (512, 512, 200)
SPACING = (0.8, 0.8, 2.5)


def write_scan(path: str) -> None:
    """Write the synthetic scan (in a child process, so its memory does not count below)."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-1, 1, SHAPE[0]), np.linspace(-1, 1, SHAPE[1]), indexing="ij")
    body = (x / 0.8) ** 2 + (y / 0.6) ** 2 < 1
    organ = ((x - 0.2) / 0.15) ** 2 + ((y + 0.1) / 0.1) ** 2 < 1
    vol = np.full(SHAPE, -1000, np.int16)
    vol[body] = 40
    vol[organ] = 100
    vol += rng.integers(-20, 20, SHAPE, dtype=np.int16)
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = [-200.0, -200.0, -250.0]
    nib.save(nib.Nifti1Image(vol, affine), path)


def _current_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run_once(path: str, chain, stage_names) -> tuple[dict, dict]:
    from transforms import invert_to_original

    times = {}
    data = {"case_id": "bench", "image": path}
    t_all = time.perf_counter()
    for name, step in zip(stage_names, chain.transforms):
        t0 = time.perf_counter()
        data = step(data)
        times[name] = time.perf_counter() - t0
    times["preprocess total"] = time.perf_counter() - t_all
    image = data["image"]
    label = (image > 0.5).float()  # stands in for the network's mask
    probs = torch.cat([1.0 - image, image]).float()  # and for two-class probabilities
    t0 = time.perf_counter()
    back = invert_to_original({**data, "pred": label}, chain, nearest=True)["pred"]
    times["invert label (nearest)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    back_p = invert_to_original({**data, "pred": probs}, chain, nearest=False)["pred"]
    times["invert 2-class probs (linear)"] = time.perf_counter() - t0
    assert tuple(back.shape[1:]) == SHAPE and tuple(back_p.shape[1:]) == SHAPE
    info = {"canonical shape": tuple(image.shape[1:]), "pixdim": [round(float(v), 3) for v in image.pixdim]}
    return times, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from monai.transforms import Spacingd

    from pipeline.core.config import Config
    from transforms import build_infer_transforms, invert_to_original
    from transforms.compose import CTCompose
    from transforms.geometry import CTSpacingd

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "scan.nii.gz")
        t0 = time.perf_counter()
        proc = mp.get_context("spawn").Process(target=write_scan, args=(path,))
        proc.start()
        proc.join()
        print(
            f"wrote {path}: {SHAPE} int16 at {SPACING} mm, {Path(path).stat().st_size / 1e6:.0f} MB "
            f"in {time.perf_counter() - t0:.1f} s"
        )

        cfg = Config()  # default: RAS, 2 mm isotropic, window -100..240 HU, body crop
        chain = build_infer_transforms(cfg)
        names = ["load", "orientation", "crop", "spacing", "intensity"]
        assert [type(t).__name__ for t in chain.transforms] == [
            "LoadCTd",
            "Orientationd",
            "BodyCropd",
            "CTSpacingd",
            "ScaleIntensityRanged",
        ]
        base = _current_mb()
        run_once(path, chain, names)  # warm-up: first-use imports, allocator
        runs = []
        measured_peak = reset_peak_rss()
        for _ in range(args.repeats):
            runs.append(run_once(path, chain, names)[0])
        peak = peak_rss_mb()
        _, info = run_once(path, chain, names)

        print(
            f"torch threads: {torch.get_num_threads()}; canonical grid {info['canonical shape']} "
            f"at {info['pixdim']} mm; {args.repeats} runs after a warm-up"
        )
        print(f"{'stage':32s} {'min s':>7s} {'median s':>9s}")
        for key in runs[0]:
            vals = [r[key] for r in runs]
            print(f"{key:32s} {min(vals):7.3f} {statistics.median(vals):9.3f}")
        total = [r["preprocess total"] + r["invert label (nearest)"] for r in runs]
        print(f"{'preprocess + invert label':32s} {min(total):7.3f} {statistics.median(total):9.3f}")
        kind = "peak RSS (VmHWM, reset before the runs)" if measured_peak else "peak RSS (whole process)"
        print(f"{kind}: {peak:.0f} MB (RSS after imports, before any scan: {base:.0f} MB)")

        # side by side: the same inversion with MONAI's Spacingd.inverse (affine_grid + grid_sample)
        steps = list(chain.transforms)
        sp = steps[3]
        steps[3] = Spacingd("image", pixdim=sp.spacing_transform.pixdim, mode="bilinear", dtype=np.float32)
        monai_chain = CTCompose(steps)
        data = monai_chain({"case_id": "bench", "image": path})
        label = (data["image"] > 0.5).float()
        ours_chain_data = chain({"case_id": "bench", "image": path})
        t_ours, t_monai = [], []
        for _ in range(2):
            t0 = time.perf_counter()
            invert_to_original({**ours_chain_data, "pred": label}, chain, nearest=True)
            t_ours.append(time.perf_counter() - t0)
            reset_peak_rss()
            t0 = time.perf_counter()
            invert_to_original({**data, "pred": label}, monai_chain, nearest=True)
            t_monai.append(time.perf_counter() - t0)
        monai_peak = peak_rss_mb()
        assert isinstance(sp, CTSpacingd)
        print(
            f"invert label: CTSpacingd {min(t_ours):.3f} s vs MONAI Spacingd {min(t_monai):.3f} s "
            f"-> {min(t_monai) / min(t_ours):.1f}x faster; peak RSS during MONAI's inverse {monai_peak:.0f} MB"
        )


if __name__ == "__main__":
    main()
