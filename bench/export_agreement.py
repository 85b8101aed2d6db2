"""Measurement: export sizes, and masks of the MONAI bundle against ``pancreas-seg infer`` on the real scans.

Two run folders are made in a work folder, each with two folds:

- ``default``: the default network (channels 16..256, the default config's preprocessing: 2 mm grid,
  160x160x96 windows), random weights (seeds 0, 1): for the export sizes, which do not depend on
  the weights;
- ``trained``: the tiny network trained on a phantom (``tests.tiny_net``, channels 4..64) with the
  default preprocessing: random weights give near-constant masks, on which agreement means little;
  this one marks bright tubular structures, a partial mask whose borders can disagree.

Each run is exported as a zip, a MONAI bundle and ONNX (sizes printed). Then for each real scan of
``../shared/data`` (NIfTI and DICOM series) ``pancreas-seg infer`` (the run folder) and the bundle
(``monai.bundle.run`` in a subprocess that cannot import this project) segment it, and the Dice and
the differing voxels of the two masks are printed (both read with nibabel, in RAS).

Run: ``.venv/bin/python bench/export_agreement.py [--workdir /tmp/export_bench] [--runs default,trained]
[--compare default,trained]`` (``--compare trained`` skips the default network's slow inference).
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
DATA = REPO.parent / "shared" / "data"
SCANS = {
    "ct_small": DATA / "totalsegmentator" / "ct_small.nii.gz",
    "ct_torso": DATA / "totalsegmentator" / "ct_torso.nii.gz",
    "ct_dicom": DATA / "totalsegmentator" / "ct_dicom",
    "dcmqi_3slice": DATA / "dcmqi" / "ct_dicom_3slice",
}
_RUN = (
    "import sys\n"
    "for name in ('pipeline', 'models', 'transforms'): sys.modules[name] = None\n"
    "from monai.bundle import run\n"
    "b, i, o = sys.argv[1:4]\n"
    "run(config_file=b + '/configs/inference.json', meta_file=b + '/configs/metadata.json', input_path=i, output_dir=o)\n"
)


def make_run(root: Path, kind: str) -> Path:
    """A run folder of two folds of the default network (random) or the phantom-trained tiny one."""
    from dataclasses import asdict

    import torch

    from models import build_model
    from pipeline.core.checkpoint import save_checkpoint
    from pipeline.core.config import config_to_dict, load_config, save_run_config
    from pipeline.core.layout import RunLayout

    run = RunLayout(root)
    if run.fold(1).best.is_file():
        return root
    overrides = [] if kind == "default" else ["model.channels=[4,8,16,32,64]"]
    cfg = load_config(None, overrides)
    save_run_config(cfg, root)
    states = []
    if kind == "trained":
        from tests.tiny_net import make_phantom, overfit_model

        model = overfit_model(make_phantom())["model"]
        state = model.state_dict()
        states = [state, {k: v * 1.5 if k.startswith("fuse") else v for k, v in state.items()}]
    for k in (0, 1):
        torch.manual_seed(k)
        weights = states[k] if states else build_model(cfg.model).state_dict()
        payload = {"model": asdict(cfg.model), "config": config_to_dict(cfg), "network": weights}
        save_checkpoint(payload, run.fold(k).best)
    return root


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 1e6


def ras(path: Path):
    import nibabel as nib
    import numpy as np

    img = nib.as_closest_canonical(nib.load(path))
    return np.asarray(img.dataobj) > 0, img.affine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/export_bench")
    parser.add_argument("--runs", default="default,trained")
    parser.add_argument("--compare", default="default,trained", help="runs whose masks are compared")
    args = parser.parse_args()
    import numpy as np

    from pipeline.cli import main as cli

    work = Path(args.workdir)
    env = {**os.environ, "PYTHONPATH": ""}
    for kind in args.runs.split(","):
        run = make_run(work / kind / "run", kind)
        out = work / kind
        for fmt, target in (
            ("zip", out / "model.zip"),
            ("bundle", out / "bundle"),
            ("onnx", out / "model.onnx"),
        ):
            t = time.perf_counter()
            assert cli(["export", str(run), "--format", fmt, "--out", str(target)]) == 0
            print(f"[{kind}] {fmt:6s} {size_mb(target):7.1f} MB  ({time.perf_counter() - t:.1f} s)")
        for name, scan in SCANS.items():
            if not scan.exists() or kind not in args.compare.split(","):
                continue
            ours_dir, theirs_dir = out / "cli" / name, out / "bundle_out" / name
            t = time.perf_counter()
            assert (
                cli(
                    [
                        "infer",
                        "--model",
                        str(run),
                        "--input",
                        str(scan),
                        "--out",
                        str(ours_dir),
                        "--overwrite",
                    ]
                )
                == 0
            )
            t_ours = time.perf_counter() - t
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", _RUN, str(out / "bundle"), str(scan), str(theirs_dir)],
                                  env=env, capture_output=True, text=True)  # fmt: skip
            t_theirs = time.perf_counter() - t
            if done.returncode:
                print(f"[{kind}] {name}: bundle failed: {done.stderr.strip().splitlines()[-1]}")
                continue
            a, aff_a = ras(next(ours_dir.glob("*.nii.gz")))
            b, aff_b = ras(next(theirs_dir.glob("*_seg.nii.gz")))
            same_grid = a.shape == b.shape and np.allclose(aff_a, aff_b, atol=1e-3)
            both = float(a.sum() + b.sum())
            dice = 2 * float((a & b).sum()) / both if both else 1.0  # both empty: they agree
            dice = dice if same_grid else float("nan")
            print(
                f"[{kind}] {name:13s} grid {a.shape} same={same_grid} fg ours={int(a.sum())} bundle={int(b.sum())} "
                f"({100 * a.mean():.1f}% of voxels) differ={int((a != b).sum()) if same_grid else -1} "
                f"dice={dice:.4f}  infer {t_ours:.1f} s, bundle {t_theirs:.1f} s"
            )


if __name__ == "__main__":
    main()
