"""A full disk and a read-only output folder: one clear line naming the output, no partial files.

A full disk is simulated with ``RLIMIT_FSIZE``: with SIGXFSZ ignored, any write past the limit
fails with ``EFBIG`` (File too large), exactly where ``ENOSPC`` would, in whatever library writes
(pandas, nibabel, torch, ITK, matplotlib), so no mount and no privileges are needed. A read-only
folder is a real ``chmod 0o555``; as root (who writes anyway) the command runs in a child process
whose capability bounding set lacks ``CAP_DAC_OVERRIDE``, so the folder's mode binds it too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.robustness.harness import run_cli, snapshot

LIMIT = 16  # bytes: every output of these commands is larger


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes past ``nbytes`` fail with EFBIG in this process (as ENOSPC would on a full disk)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def _commands(world, tmp):
    """(name, argv, output folder, the output the message must name) of every command that writes."""
    out = tmp / "out"
    shutil.copytree(world.preds, tmp / "masks")
    config = ["--config", world.config]
    return [
        ("folds", ["folds", world.manifest, "--k", "2", "--out", out / "folds.csv"], out, "folds.csv"),
        ("fingerprint", ["fingerprint", world.manifest, "--out", out / "fp.json", *config], out, "fp.json"),
        ("check", ["check", world.manifest, "--out", out / "problems.csv", *config], out, "problems.csv"),
        (
            "evaluate",
            ["evaluate", "--pred", world.preds, "--manifest", world.manifest, "--out", out / "m.csv"],
            out,
            "m.csv",
        ),
        (
            "infer",
            ["infer", "--model", world.checkpoint, "--input", world.good_image, "--out", out / "masks"],
            out,
            "masks",
        ),
        # a figure in report_files/ or report.html itself: a final name, not a hidden temporary
        (
            "report",
            ["report", tmp / "masks", "--manifest", world.manifest],
            tmp / "masks",
            str(tmp / "masks" / "report"),
        ),
        (
            "train",
            ["train", "--manifest", world.manifest, "--fold", "0", "--out", out / "run", *config],
            out,
            "run",
        ),
    ]


@pytest.mark.parametrize(
    "index", range(6), ids=["folds", "fingerprint", "check", "evaluate", "infer", "report"]
)
def test_disk_full_is_one_line_and_leaves_no_partial_file(index, world, tmp_path, capsys, monkeypatch):
    name, argv, out, named = _commands(world, tmp_path)[index]
    before = snapshot(out)
    with file_size_limit(LIMIT):
        run = run_cli(argv, capsys, monkeypatch)
    context = f"{name}: exit {run.code}\n{run.err}"
    assert run.code == 2 and "Traceback" not in run.err + run.out, context
    assert len(run.error_lines) == 1, context
    line = run.error_lines[0]
    assert named in line and "File too large" in line, context
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k not in before} == {}, f"{name} left {sorted(after)}"
    assert before == {k: after[k] for k in before}, f"{name} changed an existing file"


def test_disk_full_while_training_stops_at_the_checkpoint_and_leaves_none_partial(
    world, tmp_path, capsys, monkeypatch
):
    run_dir = tmp_path / "run"
    argv = ["train", "--manifest", world.manifest, "--fold", "0", "--out", run_dir, "--config", world.config]
    with file_size_limit(20_000):  # config.yaml and the logs fit, a checkpoint does not
        run = run_cli(argv, capsys, monkeypatch)
    assert run.code == 2 and "Traceback" not in run.err + run.out, run.err
    assert len(run.error_lines) == 1, run.err
    line = run.error_lines[0]
    assert "OutputError" in line and ".pt: cannot write (File too large)" in line, line
    files = snapshot(run_dir)
    assert not [f for f in files if f.endswith(".pt") or ".tmp" in f], sorted(files)


def test_disk_full_before_training_names_the_run_config(world, tmp_path, capsys, monkeypatch):
    """config.yaml is the first file ``train`` writes, through the shared atomic writer
    (:mod:`pipeline.core.fileio`), which turns the failed write into an OutputError naming it."""
    argv = ["train", "--manifest", world.manifest, "--fold", "0", "--out", tmp_path / "run"]
    with file_size_limit(LIMIT):
        run = run_cli([*argv, "--config", world.config], capsys, monkeypatch)
    assert run.code == 2 and len(run.error_lines) == 1, run.err
    assert "config.yaml: cannot write (File too large)" in run.error_lines[0], run.err
    assert snapshot(tmp_path / "run") == {}


def _drop_dac_override() -> None:  # in the child, before exec: root then obeys file modes
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _console(argv: list, tmp) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "pipeline.cli", *map(str, argv)]
    preexec = _drop_dac_override if os.geteuid() == 0 else None
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, preexec_fn=preexec
    )


@pytest.mark.parametrize("command", ["folds", "infer"])
def test_read_only_output_folder(command, world, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    (out / "keep.txt").write_text("existing output\n")
    argv = {
        "folds": ["folds", world.manifest, "--k", "2", "--out", out / "m.csv"],
        "infer": ["infer", "--model", world.checkpoint, "--input", world.good_image, "--out", out],
    }[command]
    out.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        before = snapshot(out)
        try:
            proc = _console(argv, tmp_path)
        except (OSError, subprocess.SubprocessError) as exc:  # no capabilities to drop here
            pytest.skip(f"cannot run a child without CAP_DAC_OVERRIDE: {exc}")
        after = snapshot(out)
    finally:
        out.chmod(0o755)
    err = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and not line.startswith(("model:", "warning:"))
    ]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(err) == 1 and str(out) in err[0] and "Permission denied" in err[0], proc.stderr
    assert after == before


def test_a_killed_writers_partial_file_is_removed_when_the_case_is_written_again(world, tmp_path):
    import numpy as np

    from pipeline.inference.writers import save_like

    out = tmp_path / "masks"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".c0.nii.gz.{dead.pid}.k2j4x9_a.tmp.nii.gz"  # what a SIGKILL mid-write leaves
    stale.write_bytes(b"\x1f\x8b partial")
    other = out / f".c1.nii.gz.{dead.pid}.k2j4x9_a.tmp.nii.gz"  # another case's: left for its own rewrite
    other.write_bytes(b"\x1f\x8b partial")
    save_like(np.zeros((4, 4, 4), np.uint8), np.eye(4), out / "c0.nii.gz")
    assert sorted(p.name for p in out.iterdir()) == [other.name, "c0.nii.gz"]
