"""Killed runs: ``train``, ``cv`` and ``infer`` are SIGKILLed at seeded random points, several times,
then run to the end; what they leave must equal an uninterrupted run's outputs exactly (CPU, one
thread, float32: training is deterministic).

Real processes: a kill must land anywhere, including inside a write. Kill times are drawn
uniformly over the first 70% of the reference run's working time (from the end of its imports to
its exit), measured in this session, so they fall in training, validation, checkpointing, prediction and
writing alike; an attempt that finishes first makes the next ones re-runs of a finished command,
which must change nothing.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.core.config import save_config
from tests.conftest import REPO
from tests.robustness.conftest import robust_config

pytestmark = pytest.mark.slow
KILLS = 3  # interruptions per command before the run that finishes


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# The command line's own entry point, after the heavy imports, with a mark when they are done: kill
# times are then measured from the start of the command's work, whatever the imports cost.
_WRAPPER = (
    "import sys, pathlib, torch, monai, ignite, pipeline.training.train, pipeline.workflows.cv, pipeline.inference.loading, pipeline.cli; "
    "pathlib.Path(sys.argv[1]).touch(); sys.argv = ['pancreas-seg', *sys.argv[2:]]; "
    "sys.exit(pipeline.cli.main())"
)


def _run(argv: list, log: Path, kill_after: float | None = None) -> tuple[int, float]:
    """Run ``pancreas-seg ARGV`` to the end, or SIGKILL it ``kill_after`` seconds into its work.

    Returns:
        (exit code, -9 when killed; seconds of work, from the end of the imports).
    """
    ready = log.with_suffix(".ready")
    ready.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", _WRAPPER, ready, *argv]
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            list(map(str, cmd)), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=err
        )
        deadline = time.perf_counter() + 300
        while not ready.exists() and proc.poll() is None and time.perf_counter() < deadline:
            time.sleep(0.01)
        start = time.perf_counter()
        try:
            proc.wait(timeout=kill_after if kill_after is not None else 300)
        except subprocess.TimeoutExpired:
            if kill_after is None:
                proc.kill()
                raise
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    return proc.returncode, time.perf_counter() - start


def _interrupted(argv: list, tmp: Path, seed: int) -> tuple[list[str], str]:
    """Run ``argv`` uninterrupted into ``tmp/ref`` (``OUT`` in argv), then into ``tmp/run``: killed
    :data:`KILLS` times at seeded points of the reference's working time, then run to the end.

    Returns:
        (what happened at each attempt, the stderr of all attempts).
    """
    log = tmp / "attempts.log"
    code, work = _run([a if a != "OUT" else tmp / "ref" for a in argv], tmp / "ref.log")
    assert code == 0, (tmp / "ref.log").read_text()[-3000:]
    rng = random.Random(seed)
    events = []
    target = [a if a != "OUT" else tmp / "run" for a in argv]
    for _ in range(KILLS):
        # within 70% of the reference's work: later attempts start warm and run faster than it did
        at = rng.uniform(0.0, 0.7) * work
        code, ran = _run(target, log, kill_after=at)
        events.append(
            f"killed {ran:.2f} s into the work" if code == -signal.SIGKILL else f"finished (exit {code})"
        )
        assert code in (0, -signal.SIGKILL), log.read_text()[-3000:]
    assert any(e.startswith("killed") for e in events), events
    code, _ = _run(target, log)
    assert code == 0, log.read_text()[-3000:]
    return events, log.read_text()


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


@pytest.fixture(scope="module")
def kill_config(tmp_path_factory) -> Path:
    """Four epochs, a checkpoint and a validation after each: many states a kill can interrupt."""
    cfg = robust_config(train__epochs=4, train__val_interval=1, train__checkpoint_interval=1)
    return save_config(cfg, tmp_path_factory.mktemp("kill") / "kill.yaml")


def test_killed_train_resumes_to_the_same_model(world, kill_config, tmp_path):
    argv = ["train", "--manifest", world.manifest, "--fold", "0", "--out", "OUT", "--config", kill_config]
    events, log = _interrupted(argv, tmp_path, seed=11)
    ref, run = tmp_path / "ref" / "fold_0", tmp_path / "run" / "fold_0"
    assert "Traceback" not in log, log[-3000:]
    for name in ("final.pt", "best.pt", "epoch_4.pt"):
        _same_weights(ref / "checkpoints" / name, run / "checkpoints" / name)
    assert torch.load(run / "checkpoints" / "final.pt", weights_only=True)["epoch"] == 4
    assert _log_rows(run / "log.csv") == _log_rows(ref / "log.csv"), events
    assert _visible(run / "checkpoints") == _visible(ref / "checkpoints"), events


def test_killed_cv_resumes_to_the_same_metrics(world, kill_config, tmp_path):
    argv = ["cv", "--manifest", world.manifest, "--out", "OUT", "--config", kill_config]
    events, log = _interrupted(argv, tmp_path, seed=12)
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert "Traceback" not in log, log[-3000:]
    with (ref / "cv_metrics.csv").open() as a, (run / "cv_metrics.csv").open() as b:
        assert list(csv.DictReader(b)) == list(csv.DictReader(a)), events
    for k in (0, 1):
        assert (run / f"fold_{k}" / "DONE").read_text() == (ref / f"fold_{k}" / "DONE").read_text()
        preds = _visible(ref / f"fold_{k}" / "predictions")
        assert _visible(run / f"fold_{k}" / "predictions") == preds, events
        _same_masks(ref / f"fold_{k}" / "predictions", run / f"fold_{k}" / "predictions", preds)
        _same_weights(
            ref / f"fold_{k}" / "checkpoints" / "best.pt", run / f"fold_{k}" / "checkpoints" / "best.pt"
        )


def test_killed_infer_resumes_to_the_same_masks(world, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for i, image in enumerate(sorted((world.manifest.parent / "images").glob("*.nii.gz")) * 2):
        (scans / f"c{i}.nii.gz").symlink_to(image)  # eight scans
    argv = [
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
    events, log = _interrupted(argv, tmp_path, seed=13)
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert "Traceback" not in log, log[-3000:]
    names = _visible(ref)
    assert _visible(run) == names, events
    _same_masks(ref, run, names - {"timings.csv"})
    with (run / "timings.csv").open() as f:
        assert sorted(r["case_id"] for r in csv.DictReader(f)) == sorted(f"c{i}" for i in range(8))


def test_rerunning_a_finished_train_changes_nothing(world, tmp_path, capsys, monkeypatch):
    """What a kill after the last checkpoint leaves, and what 're-run the same command' meets."""
    from tests.robustness.harness import run_cli, snapshot

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
