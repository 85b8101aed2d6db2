"""torchrun with 2 CPU processes (gloo): DDP training, rank-sharded inference, a rank that dies,
and several processes sharing one CV run folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.core.checkpoint import load_checkpoint
from pipeline.core.errors import BusyError
from pipeline.inference.loading import load_network
from tests.conftest import REPO

TINY = """\
data:
  target_spacing: [3.0, 3.0, 3.0]
  patch_size: [32, 32, 32]
  samples_per_volume: 2
  num_workers: 0
model:
  channels: [4, 8, 16, 32, 64]
train:
  epochs: 2
  batch_size: 2
  lr: 0.003
  val_interval: 1
  checkpoint_interval: 1
infer:
  sw_batch_size: 4
"""


def torchrun(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "pipeline.cli", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=_env())


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def ddp_run(tiny_dataset, tmp_path_factory) -> dict:
    """One 2-process DDP training run of fold 0 (2 epochs)."""
    root = tmp_path_factory.mktemp("ddp")
    config = root / "tiny.yaml"
    config.write_text(TINY)
    run = root / "run"
    res = torchrun(
        "train", "--manifest", str(tiny_dataset), "--fold", "0", "--out", str(run), "--config", str(config)
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return {"root": root, "config": config, "run": run, "stderr": res.stderr}


def test_ddp_checkpoint_loads_in_one_process(ddp_run):
    ckpts = ddp_run["run"] / "fold_0" / "checkpoints"
    assert {p.name for p in ckpts.iterdir()} == {"epoch_1.pt", "epoch_2.pt", "best.pt", "final.pt"}
    assert "torchrun: 2 processes, backend gloo" in ddp_run["stderr"]
    final = load_checkpoint(ckpts / "final.pt")
    assert final["epoch"] == 2
    assert not any(k.startswith("module.") for k in final["network"])  # the plain network, not DDP's
    net, model_cfg, _ = load_network(ckpts / "best.pt")
    assert model_cfg.channels == [4, 8, 16, 32, 64]
    log = pd.read_csv(ddp_run["run"] / "fold_0" / "log.csv")
    assert list(log["epoch"]) == [1, 2]  # one writer: rank 0
    assert log["val_dice"].between(0, 1).all() and log["loss"].notna().all()


def test_sharded_inference_equals_single_process(ddp_run, tiny_dataset, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for p in sorted((tiny_dataset.parent / "images").iterdir()):
        shutil.copy(p, scans / p.name)
    model = ddp_run["run"] / "fold_0" / "checkpoints" / "best.pt"
    res = torchrun("infer", "--model", str(model), "--input", str(scans), "--out", str(tmp_path / "two"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert main(["infer", "--model", str(model), "--input", str(scans), "--out", str(tmp_path / "one")]) == 0
    one = sorted(p.name for p in (tmp_path / "one").glob("*.nii.gz"))
    two = sorted(p.name for p in (tmp_path / "two").glob("*.nii.gz"))
    assert one == two and len(one) == 4
    for name in one:
        a, b = nib.load(tmp_path / "one" / name), nib.load(tmp_path / "two" / name)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj), err_msg=name)
        np.testing.assert_allclose(a.affine, b.affine)
    timings = pd.read_csv(tmp_path / "two" / "timings.csv", dtype={"case_id": str})
    assert sorted(timings["case_id"]) == [n[: -len(".nii.gz")] for n in one]  # every case once, all ranks
    assert not list((tmp_path / "two").glob(".*"))  # no temporary files left


def test_crashed_rank_ends_job_cleanly_and_resumes(ddp_run, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ddp_run["run"], run)
    args = ["train", "--manifest", str(tiny_dataset), "--fold", "0", "--out", str(run)]
    args += ["--config", str(ddp_run["config"]), "--set", "train.epochs=200"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.Popen(
        [*cmd, "-m", "pipeline.cli", *args],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpts = run / "fold_0" / "checkpoints"
    try:
        deadline = time.monotonic() + 120
        while not (ckpts / "epoch_4.pt").exists():  # resumed at epoch 2, two more epochs done
            assert proc.poll() is None and time.monotonic() < deadline, (
                "training did not progress",
                proc.stderr.read()[-3000:] if proc.poll() is not None else "",
            )
            time.sleep(0.2)
        victim = _rank_pid(proc.pid, rank=1)
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "stopped by torchrun" in stderr or "SIGKILL" in stderr, stderr[-2000:]
    assert (
        "Traceback" not in stderr.split("torch/distributed")[0]
    )  # ours: no traceback before torchrun's report
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written
    epochs = sorted(int(p.stem.split("_")[1]) for p in ckpts.glob("epoch_*.pt"))
    for e in epochs:
        assert load_checkpoint(ckpts / f"epoch_{e}.pt")["epoch"] == e
    last = epochs[-1]

    # A plain re-run resumes from the newest checkpoint and continues the epoch count.
    res = torchrun(*args[:-1], f"train.epochs={last + 1}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"(epoch {last})" in res.stderr
    log = pd.read_csv(run / "fold_0" / "log.csv")
    assert list(log["epoch"]) == list(range(1, last + 2))
    assert load_checkpoint(ckpts / "final.pt")["epoch"] == last + 1


def _rank_pid(agent_pid: int, rank: int) -> int:
    """The pid of the worker with ``RANK=rank`` among torchrun's children."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == agent_pid and f"RANK={rank}".encode() in env:
            return int(entry.name)
    raise AssertionError(f"no worker with RANK={rank} under pid {agent_pid}")


def test_fold_lock_refuses_a_second_process(tmp_path):
    from pipeline.workflows.cv import claim_fold

    with claim_fold(tmp_path / "fold_0"):
        with pytest.raises(BusyError, match="another process is running this fold"):
            with claim_fold(tmp_path / "fold_0"):
                pass
    with claim_fold(tmp_path / "fold_0"):  # released afterwards
        pass


def test_parallel_folds_share_one_run_folder(tiny_dataset, tmp_path, capsys):
    """Two fold processes at once write one run folder: both folds, one aggregated table."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("epochs: 2", "epochs: 1"))
    run = tmp_path / "run"
    argv = ["cv", "--manifest", str(tiny_dataset), "--out", str(run), "--config", str(config)]
    assert main([*argv, "--parallel-folds", "2"]) == 0
    assert "all " in capsys.readouterr().err  # the summary table of both folds
    for k in (0, 1):
        assert (run / f"fold_{k}" / "DONE").exists() and (run / f"fold_{k}" / "cv.log").exists()
    table = pd.read_csv(run / "cv_metrics.csv")
    assert sorted(table["fold"].unique()) == [0, 1] and len(table) == 4
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def test_torchrun_refuses_single_process_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["phantoms", "--n", "1", "--out", str(tmp_path / "ph")]) == 2
    assert "runs as one process" in capsys.readouterr().err
    assert not (tmp_path / "ph").exists()
