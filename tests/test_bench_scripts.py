"""``bench/gpu_check.sh`` in its quick CPU mode, so that the GPU check does not rot between GPU runs."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_quick_mode_runs_every_step_and_writes_a_summary(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "check"), "GPU_CHECK_QUICK": "1", "PYTHON": sys.executable}
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    summary = (tmp_path / "check" / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stderr[-2000:]
    lines = {line.split()[0]: line for line in summary.splitlines() if line and not line.startswith(" ")}
    for step in ("environment", "model_bench", "training", "infer"):
        assert " ok " in lines[step], summary
    cuda = "gpu " in summary
    assert ("skipped" in lines["cuda_tests"]) != cuda or " ok " in lines["cuda_tests"]
    assert "train step, batch 2, 32x32x32" in summary and "peak RSS" in summary
    assert "failed steps: 0" in summary


def _anchor_nnunet():
    """``bench/anchor_nnunet.py`` as a module; it imports without nnunetv2 (that is checked in main)."""
    spec = importlib.util.spec_from_file_location("anchor_nnunet", REPO / "bench" / "anchor_nnunet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_anchor_nnunet_writes_the_raw_dataset_layout_nnunet_reads(tmp_path):
    import nibabel as nib

    folder = _anchor_nnunet().raw_dataset(tmp_path, n=2, shape=(48, 48, 32))
    meta = json.loads((folder / "dataset.json").read_text())
    assert folder.name.startswith("Dataset") and meta["numTraining"] == 2
    assert meta["labels"]["background"] == 0 and meta["file_ending"] == ".nii.gz"
    labels = sorted(p.name for p in (folder / "labelsTr").iterdir())
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert len(labels) == 2 and images == [n.replace(".nii.gz", "_0000.nii.gz") for n in labels]
    image = nib.load(folder / "imagesTr" / images[0])
    label = nib.load(folder / "labelsTr" / labels[0])
    assert image.shape == label.shape == (48, 48, 32)


@pytest.mark.skipif(importlib.util.find_spec("nnunetv2") is not None, reason="nnunetv2 is installed here")
def test_anchor_nnunet_without_nnunetv2_says_where_to_install_it(tmp_path):
    with pytest.raises(SystemExit, match="nnunetv2 is not installed"):
        _anchor_nnunet().main(["--workdir", str(tmp_path / "work")])
    assert not (tmp_path / "work").exists()


def test_anchor_nnunet_timing_counts_cpu_seconds_and_names_the_log_of_a_failed_run(tmp_path):
    timed = _anchor_nnunet().timed
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2: pass"
    wall, cpu = timed([sys.executable, "-c", busy], dict(os.environ), tmp_path / "ok.log")
    assert cpu >= 0.2 and wall >= 0.2
    with pytest.raises(SystemExit, match=r"failed \(exit 3\), see .*bad\.log"):
        timed([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), tmp_path / "bad.log")
