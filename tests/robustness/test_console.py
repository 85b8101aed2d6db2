"""The installed console script, in real processes: a bad input ends with one line and no traceback,
whatever a library prints on the way (the table runs in-process; this is the end-to-end check)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def _console() -> list[str]:
    script = Path(sys.executable).with_name("pancreas-seg")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli"]


def _run(argv: list) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [*_console(), *map(str, argv)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and not line.startswith(("model:", "warning:"))
    ]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("pancreas-seg: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    "kind,command",
    [("pickle_payload", "infer"), ("oom_header", "check"), ("image_2d", "fingerprint")],
)
def test_console_script_bad_input(kind, command, world, tmp_path):
    out = tmp_path / "out"
    if command == "infer":
        argv = ["infer", "--model", world.bad[kind], "--input", world.good_image, "--out", out]
    elif command == "check":
        argv = ["check", world.manifests[kind], "--config", world.config]
    else:
        argv = ["fingerprint", world.manifests[kind], "--out", out / "fp.json", "--config", world.config]
    proc = _run(argv)
    line = _one_error_line(proc)
    assert proc.returncode == 2 and world.bad[kind].name in line, proc.stderr
    assert not world.marker.exists(), "the untrusted checkpoint's payload ran"
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))
    if command == "check":  # the table is on stdout, the one-line error on stderr
        assert "g3" in proc.stdout and "refusing to read it" in proc.stdout


def test_console_script_nan_scan_in_a_batch(world, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(world.good_image, scans / "good.nii.gz")
    shutil.copy(world.bad["nan_inf"], scans / "bad.nii.gz")
    proc = _run(["infer", "--model", world.checkpoint, "--input", scans, "--out", tmp_path / "out"])
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("pancreas-seg: bad: ImageError: ")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "good.nii.gz",
        "inputs.csv",
        "statistics.csv",  # the good case's measurements (infer writes them by default)
        "statistics.json",
        "timings.csv",
    ]
