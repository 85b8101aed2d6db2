"""The run folder's names (the contract in README.md, "Run folder"), and that no module but the layout spells them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pipeline.core.layout import (
    BundleLayout,
    CheckpointLayout,
    FoldLayout,
    OutputLayout,
    PackageLayout,
    RunLayout,
    fold_name,
    fold_number,
    manifest_in,
    onnx_sidecar,
    report_link,
)
from tests.conftest import REPO

# The names users and scripts rely on (README.md's "Run folder", inference output folders).
NAMES = {
    "DONE",
    "best.pt",
    "final.pt",
    "log.csv",
    "metrics.csv",
    "predictions",
    "timings.csv",
    "config.yaml",
    "cv_metrics.csv",
    "cv_summary.json",
    "report.html",
    "checkpoints",
    "inputs.csv",
    "manifest.csv",
    "cv.log",
    "report_files",
    "tensorboard",
    "SHA256SUMS.json",
    "MODEL_CARD.md",
    "labels.json",
    "versions.json",
    "fingerprint.json",
    "metadata.json",
    "inference.json",
    "model.ts",
    "model.pt",
}
# A path part naming a fold or an epoch checkpoint: fold_3, fold_*, the "fold_" of f"fold_{k}", epoch_2.pt.
_PART = re.compile(r"fold_(\d+|\*)?|epoch_(\d+|\*)?(\.pt)?")
_ANYWHERE = re.compile(r"fold_\d|epoch_\d+\.pt")
LAYOUT = REPO / "pipeline" / "core" / "layout.py"


def test_run_folder_names():
    run = RunLayout("runs/exp1")
    root = Path("runs/exp1")
    assert run.config == root / "config.yaml"
    assert run.manifest == root / "manifest.csv" == manifest_in(root)
    assert run.cv_metrics == root / "cv_metrics.csv"
    assert run.cv_summary == root / "cv_summary.json"
    assert run.report == root / "report.html"
    assert run.report_files == root / "report_files"
    assert report_link("curves.png") == "report_files/curves.png"


def test_fold_folder_names():
    fold = RunLayout("run").fold(3)
    d = Path("run/fold_3")
    assert fold.dir == d and fold.k == 3 and fold_name(3) == "fold_3"
    assert fold.checkpoints == d / "checkpoints"
    assert fold.epoch_checkpoint(7) == d / "checkpoints" / "epoch_7.pt"
    assert (fold.best, fold.final) == (d / "checkpoints" / "best.pt", d / "checkpoints" / "final.pt")
    assert (fold.log, fold.metrics, fold.done) == (d / "log.csv", d / "metrics.csv", d / "DONE")
    assert fold.predictions == d / "predictions"
    assert fold.timings == d / "predictions" / "timings.csv" == OutputLayout(fold.predictions).timings
    assert (fold.cv_log, fold.tensorboard) == (d / "cv.log", d / "tensorboard")


def test_inference_output_names():
    out = OutputLayout("masks")
    assert (out.timings, out.inputs, out.metrics) == (
        Path("masks/timings.csv"),
        Path("masks/inputs.csv"),
        Path("masks/metrics.csv"),
    )


def test_export_names():
    assert PackageLayout.fold(2) == "folds/fold_2.pt" and PackageLayout.fold_of("folds/fold_2.pt") == 2
    assert [
        PackageLayout.fold_of(n) for n in ("folds/fold_x.pt", "fold_2.pt", "folds/fold_2.pth", "x/fold_1.pt")
    ] == [None] * 4
    assert set(PackageLayout.fixed()) == {
        "SHA256SUMS.json",
        "config.yaml",
        "labels.json",
        "versions.json",
        "MODEL_CARD.md",
        "fingerprint.json",
    }
    b = BundleLayout("out")
    assert (b.metadata, b.inference) == (
        Path("out/configs/metadata.json"),
        Path("out/configs/inference.json"),
    )
    assert (b.weights, b.torchscript) == (Path("out/models/model.pt"), Path("out/models/model.ts"))
    assert (b.readme, b.license) == (Path("out/docs/README.md"), Path("out/LICENSE"))
    assert b.relative(b.torchscript, b.dir) == "models/model.ts"
    assert onnx_sidecar("x/model.onnx") == Path("x/model.onnx.json")


def test_fold_numbers_from_names():
    assert [fold_number(n) for n in ("fold_0", "fold_12", "fold_", "fold_x", "fold_1.bak", "xfold_1")] == [
        0,
        12,
        None,
        None,
        None,
        None,
    ]
    assert FoldLayout("somewhere/else").k is None


def test_folds_are_ordered_by_number_and_only_fold_folders(tmp_path):
    run = RunLayout(tmp_path)
    assert run.folds() == [] and RunLayout(tmp_path / "missing").folds() == []
    for k in (10, 2, 0, 1):
        run.fold(k).dir.mkdir()
    (tmp_path / "fold_x").mkdir()
    (tmp_path / "fold_5").write_text("a file, not a fold")
    assert [f.k for f in run.folds()] == [0, 1, 2, 10]
    assert run.folds()[-1] == run.fold(10)


def test_done_marker(tmp_path):
    fold = RunLayout(tmp_path).fold(0)
    assert not fold.is_done()
    fold.dir.mkdir()
    fold.done.write_text("best_val_dice=0.5 epochs=2\n")
    assert fold.is_done()


def test_epoch_checkpoints_sorted_by_epoch(tmp_path):
    fold = FoldLayout(tmp_path)
    assert fold.epoch_checkpoints() == []  # no checkpoints folder yet
    fold.checkpoints.mkdir()
    for n in (10, 9, 100):
        fold.epoch_checkpoint(n).write_bytes(b"")
    for other in ("best.pt", "final.pt", ".epoch_11.pt.tmp", "epoch_x.pt", "epoch_12.pt.bak"):
        (fold.checkpoints / other).write_bytes(b"")
    assert [p.name for p in fold.epoch_checkpoints()] == ["epoch_9.pt", "epoch_10.pt", "epoch_100.pt"]
    assert CheckpointLayout(fold.checkpoints).epochs()[0] == (9, fold.epoch_checkpoint(9))


# --- No module but pipeline/core/layout.py spells a run-folder name -------------------------------


def _docstrings(tree: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _spells_a_name(text: str) -> bool:
    if text in NAMES or _ANYWHERE.search(text):
        return True
    if any(c.isspace() for c in text):  # prose (messages, help): may mention a name in words
        return False
    return any(part in NAMES or _PART.fullmatch(part) for part in text.split("/"))


def spellings(source: str) -> list[str]:
    """``line: 'text'`` of each string constant (f-string parts included, docstrings not) that
    spells a run-folder name."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    return [
        f"{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docs
        and _spells_a_name(node.value)
    ]


MODULES = sorted(p for p in (REPO / "pipeline").rglob("*.py") if p != LAYOUT)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_spells_a_run_folder_name(path):
    """Every run-folder name comes from pipeline.core.layout (one place to change or look up)."""
    assert spellings(path.read_text()) == []


@pytest.mark.parametrize(
    "line",
    [
        'x = run / "metrics.csv"',
        'x = run / f"fold_{k}" / "DONE"',
        'x = sorted(run.glob("fold_*/metrics.csv"))',
        'x = folder / f"epoch_{n}.pt"',
        'x = "checkpoints/best.pt"',
        'x = f"report_files/{name}"',
        'x = "see fold_3"',
    ],
)
def test_the_check_catches_a_spelled_name(line):
    cv = REPO / "pipeline" / "workflows" / "cv.py"
    assert spellings(cv.read_text() + "\n" + line + "\n")


def test_the_check_passes_docstrings_prose_and_other_words():
    source = (
        '"""Writes fold_<k>/metrics.csv and epoch_3.pt."""\n'
        'def f():\n    """``DONE`` marks a fold."""\n'
        'cols = ("epoch", "epoch_seconds", "fold", "best_val_dice")\n'
        'msg = "no finished fold yet (no fold_*/metrics.csv)"\n'
    )
    assert spellings(source) == []
    assert len(spellings(LAYOUT.read_text())) > 10  # the layout itself is where the names are
