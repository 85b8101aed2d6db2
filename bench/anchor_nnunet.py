"""Benchmark: nnU-Net v2's CPU inference beside ours, on the same full-size scan, in one run (timing only).

Needs the optional ``nnunetv2`` (``pip install .[bench]``; never needed by the tests). Steps:

1. the demo phantoms (``pipeline.synthetic.phantom.write_phantoms``, 12 cases, seed 0) become an
   nnU-Net raw dataset (``imagesTr/<case>_0000.nii.gz``, ``labelsTr``, ``dataset.json``);
2. ``nnUNetv2_plan_and_preprocess -c 3d_fullres`` plans it (patch size, spacing, network);
3. the planned 3d_fullres network is built with its initial weights by nnU-Net's own trainer class and
   saved as ``fold_0/checkpoint_final.pth`` (no training: the weights do not change the time);
4. ``nnUNetv2_predict -device cpu`` on the 512x512x200 scan of ``bench/infer_speed.py``, with and
   without mirroring TTA (``--disable_tta``), each a fresh process, and ``pancreas-seg infer`` on the
   same scan (our default settings, random-weight paper network), also a fresh process.

Prints the wall time of each and the ratios to ours. All work goes to ``--workdir``; nothing is
downloaded. nnU-Net's planning picks its own patch and network for the phantoms, so the ratio is that
of the two tools' defaults on one scan, not of equal networks.

Run: ``.venv/bin/python bench/anchor_nnunet.py [--workdir /tmp/pancreas_seg_nnunet] [--skip-tta]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATASET_ID, DATASET = 501, "Dataset501_PancreasPhantoms"
TRAINER, PLANS, CONFIG = "nnUNetTrainer", "nnUNetPlans", "3d_fullres"


def raw_dataset(raw: Path) -> None:
    """The demo phantoms as an nnU-Net raw dataset (written once)."""
    from pipeline.core.fileio import atomic_write_text
    from pipeline.synthetic.phantom import write_phantoms

    folder = raw / DATASET
    if (folder / "dataset.json").exists():
        return
    cases = write_phantoms(raw / "phantoms", n=12, seed=0)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    for c in cases:
        shutil.copyfile(c["image"], folder / "imagesTr" / f"{c['case_id']}_0000.nii.gz")
        shutil.copyfile(c["label"], folder / "labelsTr" / f"{c['case_id']}.nii.gz")
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "pancreas": 1},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    atomic_write_text(folder / "dataset.json", json.dumps(meta, indent=2))


def untrained_checkpoint(env: dict) -> Path:
    """nnU-Net's planned 3d_fullres network with initial weights, saved where nnUNetv2_predict looks."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from pipeline.core.fileio import atomic_write

    pre = Path(env["nnUNet_preprocessed"]) / DATASET
    model = Path(env["nnUNet_results"]) / DATASET / f"{TRAINER}__{PLANS}__{CONFIG}"
    ckpt = model / "fold_0" / "checkpoint_final.pth"
    if ckpt.exists():
        return ckpt
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    dataset_json = json.loads((pre / "dataset.json").read_text())
    plans = json.loads((pre / f"{PLANS}.json").read_text())
    shutil.copyfile(pre / "dataset.json", model / "dataset.json")
    shutil.copyfile(pre / f"{PLANS}.json", model / "plans.json")
    pm = PlansManager(plans)
    cm = pm.get_configuration(CONFIG)
    label_manager = pm.get_label_manager(dataset_json)
    torch.manual_seed(0)
    net = nnUNetTrainer.build_network_architecture(
        cm.network_arch_class_name,
        cm.network_arch_init_kwargs,
        cm.network_arch_init_kwargs_req_import,
        determine_num_input_channels(pm, cm, dataset_json),
        label_manager.num_segmentation_heads,
        enable_deep_supervision=False,
    )
    payload = {
        "network_weights": net.state_dict(),
        "init_args": {"plans": plans, "configuration": CONFIG, "fold": 0, "dataset_json": dataset_json},
        "trainer_name": TRAINER,
        "inference_allowed_mirroring_axes": (0, 1, 2),
        "current_epoch": 0,
    }
    atomic_write(ckpt, lambda tmp: torch.save(payload, tmp))
    return ckpt


def timed(cmd: list[str], env: dict) -> float:
    """Wall seconds of ``cmd`` in a fresh process (its output goes to the terminal's stderr)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/pancreas_seg_nnunet")
    parser.add_argument(
        "--skip-tta", action="store_true", help="leave out nnU-Net with mirroring (8x slower)"
    )
    args = parser.parse_args()
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise SystemExit(
            "nnunetv2 is not installed: pip install .[bench] (in an environment of its own)"
        ) from None

    from bench.infer_speed import prepare

    work = Path(args.workdir)
    env = {**os.environ}
    for key, sub in (
        ("nnUNet_raw", "raw"),
        ("nnUNet_preprocessed", "preprocessed"),
        ("nnUNet_results", "results"),
    ):
        env[key] = str(work / sub)
        (work / sub).mkdir(parents=True, exist_ok=True)
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    raw_dataset(work / "raw")
    if not (work / "preprocessed" / DATASET / f"{PLANS}.json").exists():
        t = timed(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIG, "-np", "2"], env)
        print(f"nnUNetv2_plan_and_preprocess: {t:.1f} s")
    untrained_checkpoint(env)
    scan, ours_ckpt = prepare(work / "scan")
    inputs = work / "predict_in"
    inputs.mkdir(exist_ok=True)
    shutil.copyfile(scan, inputs / "scan_0000.nii.gz")
    base = ["nnUNetv2_predict", "-i", str(inputs), "-d", str(DATASET_ID), "-c", CONFIG, "-f", "0"]
    base += ["-chk", "checkpoint_final.pth", "-device", "cpu", "-npp", "1", "-nps", "1"]
    print(f"load average {os.getloadavg()[0]:.2f}")
    ours = timed(
        [sys.executable, "-m", "pipeline.cli", "infer", "--model", str(ours_ckpt), "--input", str(scan)]
        + ["--out", str(work / "ours"), "--overwrite"],
        {**env, "PYTHONPATH": str(REPO)},
    )
    print(f"pancreas-seg infer: {ours:.1f} s")
    runs = [("nnU-Net, no TTA", ["--disable_tta"])] + (
        [] if args.skip_tta else [("nnU-Net, mirroring TTA", [])]
    )
    for name, extra in runs:
        out = work / name.split(",")[1].strip().replace(" ", "_")
        t = timed([*base, "-o", str(out), *extra], env)
        print(f"{name}: {t:.1f} s, {t / ours:.2f}x our time (ours is {ours / t:.2f}x as fast)")


if __name__ == "__main__":
    main()
