"""Every subcommand fed every kind of bad input, as the table in :mod:`tests.robustness.table` says.

Each cell runs ``pancreas-seg`` in-process (see :mod:`tests.robustness.harness`) and checks, for
every outcome, that there is no traceback, that no input changed and that an untrusted
checkpoint's payload never ran; then what the outcome promises (exit code, the one error line
naming the file and the problem, an unchanged output folder). Whatever the outcome, every warning
line says "warning:" and a command that exits 0 prints no error line.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest

from tests.robustness.harness import new_files, run_cli, snapshot
from tests.robustness.inputs import BAD_CASE, CHECKPOINT_KINDS, World
from tests.robustness.table import COMMANDS, TABLE, expected, problem

CELLS = [(k, c) for k in TABLE for c in COMMANDS if expected(k, c) is not None]
_BAD_CASE_ID = f"g{BAD_CASE}"


def _is_label_kind(kind: str) -> bool:
    return kind.startswith("label_")


def _is_file_kind(kind: str, world: World) -> bool:
    """A bad scan file (or folder) rather than a bad manifest, label or checkpoint."""
    return kind in world.bad and not _is_label_kind(kind) and kind not in CHECKPOINT_KINDS


def invocation(command: str, kind: str, world: World, tmp: Path) -> tuple[list, Path, str]:
    """(argv, the output folder to watch, the name the message must contain) for one cell."""
    out = tmp / "out"
    manifest = world.manifests.get(kind, world.manifest)
    bad = world.bad.get(kind)
    named = bad.name if bad is not None else manifest.name
    named = "passwd" if kind == "traversal_path" else named
    config = ["--config", world.config]
    if command == "manifest":
        return ["manifest", "check", manifest], out, named
    if command == "folds":
        return ["folds", manifest, "--k", "2", "--out", out / "folds.csv"], out, named
    if command == "fingerprint":
        return ["fingerprint", manifest, "--out", out / "fp.json", *config], out, named
    if command in ("train", "cv"):
        if kind in CHECKPOINT_KINDS:  # the run folder holds the bad checkpoint to resume from
            shutil.copytree(world.runs[kind], out / "run")
            named = "epoch_1.pt"
        fold = ["--fold", "0"] if command == "train" else ["--folds", "0"]
        return [command, "--manifest", manifest, *fold, "--out", out / "run", *config], out, named
    if command == "infer":
        model, source = world.checkpoint, manifest
        if kind in CHECKPOINT_KINDS:
            model, source, named = world.runs[kind], world.good_image, "best.pt"
        elif _is_file_kind(kind, world):
            source = bad
        return ["infer", "--model", model, "--input", source, "--out", out / "masks"], out, named
    if command == "evaluate":
        preds = world.preds
        if _is_file_kind(kind, world):  # the bad file is the prediction of the bad case
            preds, manifest = tmp / "in" / "preds", world.manifest
            shutil.copytree(world.preds, preds)
            target = preds / f"{_BAD_CASE_ID}.nii.gz"
            target.unlink()
            if bad.exists():
                shutil.copy(bad, target)
            named = target.name if bad.exists() else _BAD_CASE_ID
        argv = ["evaluate", "--pred", preds, "--manifest", manifest, "--out", out / "metrics.csv"]
        return argv, out, named
    if command == "report":
        if kind in CHECKPOINT_KINDS:  # a finished CV run whose best checkpoint is the bad one
            shutil.copytree(world.runs[kind], out / "run")
            return ["report", out / "run", "--max-cases", "2"], out, "best.pt"
        shutil.copytree(world.preds, out / "masks")  # an inference output folder
        return ["report", out / "masks", "--manifest", manifest, "--max-cases", "4"], out, named
    if command == "check":
        return ["check", manifest, *config], out, named
    raise AssertionError(command)


@pytest.mark.parametrize("kind,command", CELLS, ids=[f"{k}-{c}" for k, c in CELLS])
def test_bad_input(kind, command, world, tmp_path, capsys, monkeypatch):
    argv, out, named = invocation(command, kind, world, tmp_path)
    inputs_before, out_before = snapshot(world.root), snapshot(out)
    run = run_cli(argv, capsys, monkeypatch)
    outcome, needle = expected(kind, command), problem(kind, command)
    context = f"{kind} -> {command}: exit {run.code}\nstderr:\n{run.err}\nstdout:\n{run.out[-2000:]}"

    assert "Traceback" not in run.err + run.out, context
    assert not world.marker.exists(), "an untrusted checkpoint's payload ran"
    logged = [r.getMessage() for r in run.records if r.levelno == logging.WARNING]
    assert all(w.startswith("warning:") for w in logged), context  # a warning says it is one
    assert new_files(inputs_before, snapshot(world.root)) == [], context
    if outcome == "error":
        assert run.code == 2, context
        assert len(run.error_lines) == 1, context
        line = run.error_lines[0]
        assert line.startswith("pancreas-seg: ") and named in line, context
        assert re.search(needle, line, re.IGNORECASE), context
        assert new_files(out_before, snapshot(out)) == [], context
    elif outcome == "case-error":
        assert run.code == 3, context
        last = run.error_lines[-1]
        assert named in last and re.search(needle, last, re.IGNORECASE), context
        assert new_files(out_before, snapshot(out)) == [], context
    elif outcome == "warn":
        assert run.code == 0, context
        text = run.warnings + (run.out.splitlines() if command == "check" else [])
        hits = [w for w in text if named in w]
        assert hits and (not needle or any(re.search(needle, w, re.I) for w in hits)), context
    else:
        assert run.code == 0, context
    if run.code == 0:
        assert run.error_lines == [], context  # an error line always comes with a non-zero exit
