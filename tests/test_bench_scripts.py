"""``bench/gpu_check.sh`` in its quick CPU mode, so that the GPU check does not rot between GPU runs."""

from __future__ import annotations

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
