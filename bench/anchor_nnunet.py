"""Benchmark: nnU-Net v2's CPU inference beside ours, on the same full-size scan, in one run (timing only).

Needs ``nnunetv2`` (never needed by the tests), in an environment of its own: installed the plain way,
pip follows nnunetv2 -> dynamic-network-architectures -> timm -> torchvision to the newest torchvision,
which pins the newest torch, and replaces a CPU torch with a multi-GB CUDA build. The environment this
script was run in (torch 2.13.0+cpu, nnunetv2 2.8.1; timm and torchvision left out, nnU-Net's default
U-Nets do not import them)::

    python3 -m venv /work/nnunet-venv && V=/work/nnunet-venv/bin
    $V/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu  # or a local wheel
    echo torch==2.13.0 > /tmp/torch-pin.txt                      # no later step may replace it
    $V/pip install -c /tmp/torch-pin.txt --no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4
    $V/pip install -c /tmp/torch-pin.txt "acvl-utils>=0.2.6,<0.3" "batchgenerators>=0.25.1" \\
        "batchgeneratorsv2>=0.3.2" tqdm scipy "numpy>=1.24" scikit-learn "scikit-image>=0.19.3" \\
        "SimpleITK>=2.2.1" pandas graphviz tifffile requests nibabel matplotlib seaborn imagecodecs \\
        yacs einops "blosc2>=3.3.2"                              # nnunetv2's other requirements
    $V/pip install -c /tmp/torch-pin.txt "monai>=1.4" "pytorch-ignite>=0.4.11" "itk>=5.3" pyyaml \\
        psutil tensorboard                                       # ours, except torch
    $V/pip install --no-deps -e .                                # this project

Steps, all in ``--workdir`` (nnUNet_raw, nnUNet_preprocessed and nnUNet_results point into it; nothing
is downloaded):

1. the demo phantoms (``pipeline.synthetic.phantom.write_phantoms``, 12 cases, seed 0) become an
   nnU-Net raw dataset (``imagesTr/<case>_0000.nii.gz``, ``labelsTr``, ``dataset.json``);
2. ``nnUNetv2_plan_and_preprocess -c 3d_fullres`` plans it (patch size, spacing, network);
3. the planned 3d_fullres network is built with its initial weights by nnU-Net's own trainer class and
   saved as ``fold_0/checkpoint_final.pth`` (no training: the weights do not change the time);
4. each repeat, back to back: ``pancreas-seg infer`` (default settings, random-weight paper network) on
   the 512x512x200 scan of ``bench/infer_speed.py``, then ``nnUNetv2_predict -device cpu`` on the same
   scan without (``--disable_tta``) and with mirroring TTA, each a fresh process.

Both tools get the same torch threads: nnUNetv2_predict sets ``cpu_count()`` threads on the CPU, so
ours runs with ``OMP_NUM_THREADS=cpu_count()``. Prints each wall and CPU time and the ratios nnU-Net /
ours of the medians (CPU seconds: the ratio that other jobs on the same cores barely move), the planned
patch and spacing beside ours, and whether the masks have the scan's shape. nnU-Net plans its own patch
and network for the phantoms and runs float32 on the CPU; ours runs channels_last, plus bf16 autocast on
CPUs with native bf16 (printed): the ratio is that of the two tools' defaults on one scan, not of equal
networks. Mirroring TTA is 8 network passes per window; ``--skip-tta`` leaves it out on small machines.

Run: ``/work/nnunet-venv/bin/python bench/anchor_nnunet.py [--workdir DIR] [--repeats 1] [--skip-tta]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATASET_ID, DATASET = 501, "Dataset501_PancreasPhantoms"
TRAINER, PLANS, CONFIG = "nnUNetTrainer", "nnUNetPlans", "3d_fullres"
NNUNET_DIRS = {"nnUNet_raw": "raw", "nnUNet_preprocessed": "preprocessed", "nnUNet_results": "results"}


def raw_dataset(raw: Path, n: int = 12, shape: tuple[int, int, int] | None = None) -> Path:
    """The demo phantoms as an nnU-Net raw dataset (written once); returns its folder."""
    from pipeline.core.fileio import atomic_write_text
    from pipeline.synthetic.phantom import write_phantoms

    folder = raw / DATASET
    if (folder / "dataset.json").exists():
        return folder
    phantoms = raw / "phantoms"
    cases = write_phantoms(phantoms, n=n, seed=0, shape=shape)  # paths relative to phantoms/
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    for c in cases:
        shutil.copyfile(phantoms / c["image"], folder / "imagesTr" / f"{c['case_id']}_0000.nii.gz")
        shutil.copyfile(phantoms / c["label"], folder / "labelsTr" / f"{c['case_id']}.nii.gz")
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "pancreas": 1},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    # written last: its presence marks the dataset complete
    atomic_write_text(folder / "dataset.json", json.dumps(meta, indent=2))
    return folder


def untrained_checkpoint(results: Path, preprocessed: Path) -> Path:
    """nnU-Net's planned 3d_fullres network with initial weights, saved where nnUNetv2_predict looks."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from pipeline.core.fileio import atomic_write

    pre = preprocessed / DATASET
    model = results / DATASET / f"{TRAINER}__{PLANS}__{CONFIG}"
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
    torch.manual_seed(0)
    # nnunetv2 >= 2.8 signature (plans and configuration managers), as its predictor calls it
    net = nnUNetTrainer.build_network_architecture(
        pm,
        cm,
        determine_num_input_channels(pm, cm, dataset_json),
        pm.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    # the keys nnUNetPredictor.initialize_from_trained_model_folder reads
    payload = {
        "network_weights": net.state_dict(),
        "init_args": {"plans": plans, "configuration": CONFIG, "fold": 0, "dataset_json": dataset_json},
        "trainer_name": TRAINER,
        "inference_allowed_mirroring_axes": (0, 1, 2),
        "current_epoch": 0,
    }
    atomic_write(ckpt, lambda tmp: torch.save(payload, tmp))
    return ckpt


def planned(preprocessed: Path) -> dict:
    """3d_fullres patch size and spacing from nnU-Net's plans (its axis order: z, y, x)."""
    plans = json.loads((preprocessed / DATASET / f"{PLANS}.json").read_text())
    c = plans["configurations"][CONFIG]
    return {"patch_size": c["patch_size"], "spacing": c["spacing"], "features": c.get("architecture", {})}


def tool(name: str) -> str:
    """A console script of this interpreter's environment (found without activating it)."""
    here = Path(sys.executable).with_name(name)
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name}: not found beside {sys.executable} or on PATH (is nnunetv2 installed?)")
    return found


def timed(cmd: list[str], env: dict, log: Path) -> tuple[float, float]:
    """Wall and CPU seconds of ``cmd`` in a fresh process; its output goes to ``log``.

    CPU seconds are user + system time of the process and of the workers it waited for: unlike the
    wall time, they barely change when other jobs share the cores, so their ratio is the fairer one.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    rc = proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if rc != 0:
        raise SystemExit(f"{Path(cmd[0]).name} failed (exit {rc}), see {log}")
    return wall, usage.ru_utime + usage.ru_stime


def mask_shape(folder: Path) -> tuple[int, ...]:
    import nibabel as nib

    return tuple(nib.load(folder / "scan.nii.gz").shape)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/pancreas_seg_nnunet")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of ours, nnU-Net, nnU-Net + TTA")
    parser.add_argument(
        "--scan-shape", type=int, nargs=3, default=[512, 512, 200], help="voxels of the scan (a quick check)"
    )
    parser.add_argument("--skip-tta", action="store_true", help="leave out nnU-Net with mirroring (8 passes)")
    args = parser.parse_args(argv)
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise SystemExit(
            "nnunetv2 is not installed: see bench/anchor_nnunet.py's docstring (an environment of its own)"
        ) from None
    import torch

    from bench.infer_speed import prepare
    from pipeline.core.config import Config
    from pipeline.core.runtime import cpu_supports_bf16

    work = Path(args.workdir).resolve()
    threads = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    env.update({key: str(work / sub) for key, sub in NNUNET_DIRS.items()})
    for sub in NNUNET_DIRS.values():
        (work / sub).mkdir(parents=True, exist_ok=True)
    raw_dataset(work / "raw")
    if not (work / "preprocessed" / DATASET / f"{PLANS}.json").exists():
        plan = ["-d", str(DATASET_ID), "-c", CONFIG, "-np", "2", "--verify_dataset_integrity"]
        t, _ = timed([tool("nnUNetv2_plan_and_preprocess"), *plan], env, work / "logs" / "plan.log")
        print(f"nnUNetv2_plan_and_preprocess: {t:.1f} s", flush=True)
    untrained_checkpoint(work / "results", work / "preprocessed")
    p, cfg = planned(work / "preprocessed"), Config()
    print(
        f"nnU-Net 3d_fullres: patch {p['patch_size']} (z, y, x) at {p['spacing']} mm; "
        f"ours: window {cfg.infer.roi_size or cfg.data.patch_size} (x, y, z) at {cfg.data.target_spacing} mm",
        flush=True,
    )
    scan, ours_ckpt = prepare(work / "scan", tuple(args.scan_shape))
    inputs = work / "predict_in"
    inputs.mkdir(exist_ok=True)
    shutil.copyfile(scan, inputs / "scan_0000.nii.gz")
    base = [tool("nnUNetv2_predict"), "-i", str(inputs), "-d", str(DATASET_ID), "-c", CONFIG, "-f", "0"]
    base += ["-chk", "checkpoint_final.pth", "-device", "cpu", "-npp", "1", "-nps", "1"]
    ours_cmd = [sys.executable, "-m", "pipeline.cli", "infer", "--model", str(ours_ckpt), "--input"]
    ours_cmd += [str(scan), "--out", str(work / "ours"), "--overwrite"]
    runs = [("nnU-Net, no TTA", "no_tta", ["--disable_tta"])]
    runs += [] if args.skip_tta else [("nnU-Net, mirroring TTA", "tta", [])]
    bf16 = "with" if cpu_supports_bf16() else "without"
    print(
        f"torch {torch.__version__}, {threads} threads for both tools; ours {bf16} bf16 autocast", flush=True
    )
    times: dict[str, list[tuple[float, float]]] = {"ours": [], **{name: [] for name, _, _ in runs}}

    def run(name: str, cmd: list[str], log: str) -> None:
        times[name].append(timed(cmd, env, work / "logs" / log))
        wall, cpu = times[name][-1]
        print(f"  {name}: {wall:.1f} s wall, {cpu:.1f} s CPU (load {os.getloadavg()[0]:.2f})", flush=True)

    for rep in range(args.repeats):
        print(f"repeat {rep + 1}/{args.repeats}: load average {os.getloadavg()[0]:.2f}", flush=True)
        run("ours", ours_cmd, "ours.log")
        for name, sub, extra in runs:
            shutil.rmtree(work / sub, ignore_errors=True)  # nnUNetv2_predict skips existing outputs
            run(name, [*base, "-o", str(work / sub), *extra], f"{sub}.log")
    wall, cpu = (statistics.median(t[i] for t in times["ours"]) for i in (0, 1))
    shape = mask_shape(work / "ours")
    print(f"\nmedians of {args.repeats} repeat(s); scan {mask_shape(work / 'scan')}")
    print(f"pancreas-seg infer: {wall:.1f} s wall, {cpu:.1f} s CPU, mask shape {shape}")
    for name, sub, _ in runs:
        w, c = (statistics.median(t[i] for t in times[name]) for i in (0, 1))
        same = "same shape" if mask_shape(work / sub) == shape else f"shape {mask_shape(work / sub)}"
        print(f"{name}: {w:.1f} s wall ({w / wall:.2f}x ours), {c:.1f} s CPU ({c / cpu:.2f}x ours), {same}")


if __name__ == "__main__":
    main()
