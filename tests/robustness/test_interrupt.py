"""Killed runs: ``train``, ``cv`` and ``infer`` are SIGKILLed at chosen points, then run again;
what they leave must equal an uninterrupted run's outputs exactly (CPU, one thread, float32:
training is deterministic).

Real processes, killed by themselves at deterministic points (``tests/robustness/killpoint.py``):
right after the k-th mask, checkpoint or table is renamed into place, or inside a write (the
temporary file complete, not yet renamed). No kill point depends on timing, so each test passes or
fails the same way on every machine; each kill point gets its own run folder, killed once, then
run to the end (in the test's process: it is not killed, and torch is imported already).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.core.config import save_config
from tests.conftest import REPO
from tests.robustness.conftest import robust_config
from tests.robustness.harness import run_cli, snapshot
from tests.robustness.killpoint import ENV

pytestmark = pytest.mark.slow


def _run(argv: list, out: Path, log: Path, kill: str | None = None) -> int:
    """``pancreas-seg ARGV`` (``OUT`` in it replaced by ``out``) in a child process, killed at
    ``kill`` (``"WHEN N GLOB"``, see ``killpoint.py``; ``GLOB`` relative to ``out``).

    Returns:
        The exit code (-9 when the kill point was reached).
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop(ENV, None)
    if kill:
        when, n, pattern = kill.split(maxsplit=2)
        env[ENV] = f"{when} {n} {out}/{pattern}"
    cmd = [sys.executable, "-m", "tests.robustness.killpoint", *(out if a == "OUT" else a for a in argv)]
    with open(log, "ab") as err:
        proc = subprocess.run(
            list(map(str, cmd)), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, timeout=600
        )
    return proc.returncode


def _reference(argv: list, folder: Path) -> Path:
    """An uninterrupted run of ``argv`` into ``folder/ref``."""
    ref = folder / "ref"
    code = _run(argv, ref, folder / "ref.log")
    assert code == 0, (folder / "ref.log").read_text()[-3000:]
    return ref


def _killed_then_finished(argv: list, tmp: Path, kill: str, capsys, monkeypatch) -> Path:
    """Run ``argv`` into ``tmp/run`` in a child process killed at ``kill``, then again to the end
    (in this process: torch is imported already, and nothing kills this run).

    Returns:
        The run folder.
    """
    run, log = tmp / "run", tmp / "killed.log"
    code = _run(argv, run, log, kill)
    assert code == -signal.SIGKILL, (
        f"never reached the kill point {kill!r} (exit {code})\n" + log.read_text()[-3000:]
    )
    again = run_cli([run if a == "OUT" else a for a in argv], capsys, monkeypatch)
    assert again.code == 0 and "Traceback" not in again.err, again.err[-3000:]
    return run


def _visible(folder: Path) -> set[str]:
    return {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def _log_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(f)]


def _same_weights(a: Path, b: Path) -> None:
    ca, cb = (torch.load(p, weights_only=True) for p in (a, b))
    assert ca["epoch"] == cb["epoch"], (a, ca["epoch"], cb["epoch"])
    assert ca["network"].keys() == cb["network"].keys()
    for key in ca["network"]:
        assert torch.equal(ca["network"][key], cb["network"][key]), f"{b}: {key} differs from the reference"


def _same_masks(ref: Path, run: Path, names: set[str]) -> None:
    for name in sorted(n for n in names if n.endswith(".nii.gz")):
        a, b = (np.asarray(nib.load(str(d / name)).dataobj) for d in (ref, run))
        assert np.array_equal(a, b), f"{name}: mask differs from the uninterrupted run"


def _case_ids(table: Path) -> list[str]:
    with table.open(newline="") as f:
        return sorted(r["case_id"] for r in csv.DictReader(f))


@pytest.fixture(scope="module")
def kill_config(tmp_path_factory) -> Path:
    """Four epochs, a checkpoint and a validation after each: many states a kill can interrupt."""
    cfg = robust_config(train__epochs=4, train__val_interval=1, train__checkpoint_interval=1)
    return save_config(cfg, tmp_path_factory.mktemp("kill") / "kill.yaml")


@pytest.fixture(scope="module")
def train_argv(world, kill_config) -> list:
    return ["train", "--manifest", world.manifest, "--fold", "0", "--out", "OUT", "--config", kill_config]


@pytest.fixture(scope="module")
def train_ref(train_argv, tmp_path_factory) -> Path:
    return _reference(train_argv, tmp_path_factory.mktemp("train_ref"))


@pytest.mark.parametrize(
    "kill",
    [
        "inside 2 */checkpoints/epoch_*.pt",  # mid-write of epoch 2's checkpoint
        "after 1 */checkpoints/epoch_3.pt",  # epoch 3 saved, epoch 1's not yet pruned
        "inside 1 */checkpoints/final.pt",  # all epochs done, the final checkpoint half-written
    ],
)
def test_killed_train_resumes_to_the_same_model(train_argv, train_ref, tmp_path, kill, capsys, monkeypatch):
    run = _killed_then_finished(train_argv, tmp_path, kill, capsys, monkeypatch)
    ref, run = train_ref / "fold_0", run / "fold_0"
    for name in ("final.pt", "best.pt", "epoch_4.pt"):
        _same_weights(ref / "checkpoints" / name, run / "checkpoints" / name)
    assert torch.load(run / "checkpoints" / "final.pt", weights_only=True)["epoch"] == 4
    assert _log_rows(run / "log.csv") == _log_rows(ref / "log.csv")
    assert _visible(run / "checkpoints") == _visible(ref / "checkpoints")


@pytest.fixture(scope="module")
def cv_argv(world, kill_config) -> list:
    return ["cv", "--manifest", world.manifest, "--out", "OUT", "--config", kill_config]


@pytest.fixture(scope="module")
def cv_ref(cv_argv, tmp_path_factory) -> Path:
    return _reference(cv_argv, tmp_path_factory.mktemp("cv_ref"))


@pytest.mark.parametrize(
    "kill",
    [
        "after 1 fold_0/predictions/*.nii.gz",  # fold 0's first held-out mask written
        "inside 3 fold_1/checkpoints/epoch_*.pt",  # fold 0 done, fold 1 mid-training
        "inside 2 fold_1/predictions/*.nii.gz",  # fold 1's second held-out mask half-written
    ],
)
def test_killed_cv_resumes_to_the_same_metrics(cv_argv, cv_ref, tmp_path, kill, capsys, monkeypatch):
    run = _killed_then_finished(cv_argv, tmp_path, kill, capsys, monkeypatch)
    ref = cv_ref
    with (ref / "cv_metrics.csv").open() as a, (run / "cv_metrics.csv").open() as b:
        assert list(csv.DictReader(b)) == list(csv.DictReader(a))
    for k in (0, 1):
        assert (run / f"fold_{k}" / "DONE").read_text() == (ref / f"fold_{k}" / "DONE").read_text()
        preds = _visible(ref / f"fold_{k}" / "predictions")
        assert _visible(run / f"fold_{k}" / "predictions") == preds
        _same_masks(ref / f"fold_{k}" / "predictions", run / f"fold_{k}" / "predictions", preds)
        held_out = _case_ids(ref / f"fold_{k}" / "predictions" / "timings.csv")
        assert len(held_out) == 2 and _case_ids(run / f"fold_{k}" / "predictions" / "timings.csv") == held_out
        _same_weights(
            ref / f"fold_{k}" / "checkpoints" / "best.pt", run / f"fold_{k}" / "checkpoints" / "best.pt"
        )


@pytest.fixture(scope="module")
def infer_argv(world, tmp_path_factory) -> list:
    scans = tmp_path_factory.mktemp("scans")
    for i, image in enumerate(sorted((world.manifest.parent / "images").glob("*.nii.gz")) * 2):
        (scans / f"c{i}.nii.gz").symlink_to(image)  # eight scans
    return [
        "infer",
        "--model",
        world.checkpoint,
        "--input",
        scans,
        "--out",
        "OUT",
        "--tta",
        "--probabilities",
    ]


@pytest.fixture(scope="module")
def infer_ref(infer_argv, tmp_path_factory) -> Path:
    return _reference(infer_argv, tmp_path_factory.mktemp("infer_ref"))


@pytest.mark.parametrize(
    "kill",
    [
        "after 1 c?.nii.gz",  # right after the k-th of eight masks appeared
        "after 3 c?.nii.gz",
        "after 7 c?.nii.gz",
        "inside 4 c?.nii.gz",  # the 4th mask complete under its temporary name, its record written
    ],
)
def test_killed_infer_resumes_to_the_same_masks(infer_argv, infer_ref, tmp_path, kill, capsys, monkeypatch):
    run = _killed_then_finished(infer_argv, tmp_path, kill, capsys, monkeypatch)
    names = _visible(infer_ref)
    assert _visible(run) == names
    _same_masks(infer_ref, run, names - {"timings.csv"})
    every = [f"c{i}" for i in range(8)]
    assert _case_ids(run / "timings.csv") == every  # each case exactly once, none lost to the kill
    assert _case_ids(run / "inputs.csv") == every


def test_rerunning_a_finished_train_changes_nothing(world, tmp_path, capsys, monkeypatch):
    """What a kill after the last checkpoint leaves, and what 're-run the same command' meets."""

    run = tmp_path / "run"
    argv = ["train", "--manifest", world.manifest, "--fold", "0", "--out", run, "--config", world.config]
    argv += ["--set", "train.epochs=2"]
    assert run_cli(argv, capsys, monkeypatch).code == 0
    before = snapshot(run / "fold_0" / "checkpoints"), (run / "fold_0" / "log.csv").read_text()
    (run / "fold_0" / "checkpoints" / "final.pt").unlink()  # killed just before final.pt
    again = run_cli(argv, capsys, monkeypatch)
    assert again.code == 0, again.err
    assert (run / "fold_0" / "log.csv").read_text() == before[1], "the finished fold was trained again"
    after = snapshot(run / "fold_0" / "checkpoints")
    assert {k: v for k, v in after.items() if k != "final.pt"} == {
        k: v for k, v in before[0].items() if k != "final.pt"
    }
    _same_weights(run / "fold_0" / "checkpoints" / "epoch_2.pt", run / "fold_0" / "checkpoints" / "final.pt")
