"""Atomic writes leave the old file or the whole new one, and no temporary file; every writer of
``pipeline/`` goes through them."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys

import pytest

from pipeline.core.errors import OutputError
from pipeline.core.fileio import atomic_outputs, atomic_write, atomic_write_bytes, atomic_write_text
from tests.conftest import REPO


def test_atomic_write_text_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    atomic_write_text(target, "a\n")
    atomic_write_text(target, "b\n")
    assert target.read_text() == "b\n"
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]


def test_written_files_and_folders_get_the_mode_a_plain_open_gives(tmp_path):
    # mkstemp makes 0600 files: a mask or model.zip written through it could not be shared
    mask = os.umask(0o027)
    os.umask(mask)
    file = atomic_write_text(tmp_path / "table.csv", "a\n")
    with atomic_outputs() as out:
        folder = out.folder(tmp_path / "bundle")
        (folder / "x.txt").write_text("x")
    assert file.stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "bundle").stat().st_mode & 0o777 == 0o777 & ~mask


def test_failed_write_keeps_old_file_and_removes_temporary(tmp_path):
    target = tmp_path / "mask.nii.gz"
    target.write_text("old")
    seen = []

    def fail(tmp):
        seen.append(tmp)
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match=r"mask\.nii\.gz: cannot write \(No space left on device\)"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert seen[0].name.endswith(".nii.gz") and seen[0].parent == tmp_path  # writers see the suffix
    assert seen[0].name.startswith(".mask.nii.gz.")  # hidden, named after its target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit, ValueError])
def test_an_interrupted_write_removes_its_temporary(tmp_path, error):
    def interrupted(tmp):
        tmp.write_bytes(b"half")
        raise error()

    with pytest.raises(error):
        atomic_write(tmp_path / "a.pt", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_a_writer_library_runtime_error_is_an_output_error_naming_the_file(tmp_path):
    def itk_like(tmp):  # ITK and torch report a failed write as RuntimeError, without errno
        raise RuntimeError("itk::ERROR: NrrdImageIO(0x1): Write: could not\n write the file")

    with pytest.raises(
        OutputError, match=r"x\.nrrd: cannot write \(itk::ERROR: .* could not write the file\)"
    ):
        atomic_write(tmp_path / "x.nrrd", itk_like)
    assert list(tmp_path.iterdir()) == []


def _too_large(tmp):
    raise OSError(27, "File too large")


def test_outputs_appear_together_or_not_at_all(tmp_path):
    image, label = tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz"
    label.write_text("old label")
    with pytest.raises(OutputError, match=r"lab\.nii\.gz: cannot write \(File too large\)"):
        with atomic_outputs() as out:
            out.write(image, lambda tmp: tmp.write_text("image"))
            assert not image.exists()  # nothing is renamed before the block ends
            out.write(label, _too_large)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.nii.gz"] and label.read_text() == "old label"
    with atomic_outputs() as out:
        out.write(image, lambda tmp: tmp.write_text("image"))
        out.write(label, lambda tmp: tmp.write_text("label"))
    assert (image.read_text(), label.read_text()) == ("image", "label")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nii.gz", "lab.nii.gz"]


def test_a_folder_is_replaced_as_a_whole_and_errors_name_the_final_folder(tmp_path):
    final = tmp_path / "report_files"
    final.mkdir()
    (final / "old.png").write_text("old")
    with atomic_outputs() as out:
        staged = out.folder(final)
        atomic_write_text(staged / "new.png", "new")
        out.write(tmp_path / "report.html", lambda tmp: tmp.write_text("page"))
    assert sorted(p.name for p in final.iterdir()) == ["new.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report_files"]

    with pytest.raises(OutputError) as err:
        with atomic_outputs() as out:
            atomic_write(out.folder(final) / "curves.png", _too_large)
    assert str(err.value) == f"{final / 'curves.png'}: cannot write (File too large)"
    assert sorted(p.name for p in final.iterdir()) == ["new.png"]  # the previous folder is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report_files"]


_KILLED_WRITER = (
    "import os, signal, sys; from pipeline.core.fileio import atomic_write; "
    "atomic_write(sys.argv[1], lambda tmp: (tmp.write_bytes(b'partial'), os.kill(os.getpid(), signal.SIGKILL)))"
)


def test_a_killed_writers_temporary_is_removed_by_the_next_write_of_that_file(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for name in ("c0.nii.gz", "c1.nii.gz"):  # SIGKILLed mid-write: no handler can clean up
        proc = subprocess.run(
            [sys.executable, "-c", _KILLED_WRITER, str(tmp_path / name)], env=env, timeout=60
        )
        assert proc.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    assert [n[:11] for n in left] == [".c0.nii.gz.", ".c1.nii.gz."] and all(
        n.endswith(".tmp.nii.gz") for n in left
    )
    with atomic_outputs() as out:  # a live writer's temporary of c0 (this process) is not stale
        live = out.write(tmp_path / "c0.nii.gz", lambda tmp: tmp.write_bytes(b"live"))
        atomic_write_bytes(tmp_path / "c0.nii.gz", b"whole")
        assert live.exists()
    assert (tmp_path / "c0.nii.gz").read_bytes() == b"live"
    assert sorted(p.name for p in tmp_path.iterdir()) == [left[1], "c0.nii.gz"]  # c1's waits for c1


# Calls that write a file. A writer hands them the temporary that fileio gives it (named `tmp`)
# or an in-memory buffer, never a final path.
_RENAMES = {("os", "replace"), ("os", "rename"), ("os", "renames"), ("shutil", "move")}
_DESTINATION = {  # call -> index of its destination argument
    ("torch", "save"): 1,
    ("nib", "save"): 1,
    ("itk", "imwrite"): 1,
    ("np", "save"): 0,
    ("np", "savez"): 0,
    ("np", "savetxt"): 0,
    ("", "imsave"): 0,
    ("", "open"): 0,
    (None, "save_as"): 0,
    (None, "savefig"): 0,
    (None, "to_csv"): 0,
    (None, "to_json"): 0,
    (None, "to_parquet"): 0,
}
_ON_RECEIVER = {"write_text", "write_bytes", "open"}  # Path methods: the path is the receiver
# Streams that are not outputs written once: each says why it may write in place.
ALLOWED = {
    ("pipeline/workflows/cv.py", "_file_lock"): "a lock file, held open while a fold runs",
    ("pipeline/workflows/parallel_folds.py", "run_parallel_folds"): "a fold's log, streamed by its process",
    ("pipeline/core/runtime.py", "reset_peak_rss"): "/proc/self/clear_refs, a kernel setting",
}


def _is_temporary(node: ast.expr | None, buffers: set[str]) -> bool:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str" and node.args:
        node = node.args[0]
    return isinstance(node, ast.Name) and (node.id == "tmp" or node.id in buffers)


def _writes_for_reading(call: ast.Call, mode_index: int) -> bool:
    mode = call.args[mode_index] if len(call.args) > mode_index else None
    mode = next((k.value for k in call.keywords if k.arg == "mode"), mode)
    return mode is None or (isinstance(mode, ast.Constant) and not set(str(mode.value)) & set("wax+"))


def direct_writes(source: str) -> list[tuple[str, int, str]]:
    """(enclosing function, line, call) of every write in ``source`` that bypasses fileio."""
    tree = ast.parse(source)
    buffers = {  # names bound to io.BytesIO()/io.StringIO(): in memory, not a file
        t.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign)
        and isinstance(n.value, ast.Call)
        and isinstance(n.value.func, ast.Attribute)
        and n.value.func.attr in ("BytesIO", "StringIO")
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    found = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call):
                bad = _bad_call(child, buffers)
                if bad:
                    found.append((function, child.lineno, bad))
            visit(child, name)

    visit(tree, "<module>")
    return found


def _bad_call(call: ast.Call, buffers: set[str]) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        owner, attr = "", func.id
    elif isinstance(func, ast.Attribute):
        owner, attr = (func.value.id if isinstance(func.value, ast.Name) else "?"), func.attr
    else:
        return ""
    text = f"{owner}.{attr}" if owner else attr
    if (owner, attr) in _RENAMES:
        return text
    index = _DESTINATION.get((owner, attr), _DESTINATION.get((None, attr)) if owner else None)
    if attr in _ON_RECEIVER and isinstance(func, ast.Attribute):
        if attr == "open" and _writes_for_reading(call, 0):
            return ""
        return "" if _is_temporary(func.value, buffers) else text
    if index is None or (attr == "open" and _writes_for_reading(call, 1)):
        return ""
    dest = call.args[index] if len(call.args) > index else None
    dest = next((k.value for k in call.keywords if k.arg in ("path_or_buf", "path", "fname", "file")), dest)
    if dest is None and attr.startswith("to_"):
        return ""  # df.to_csv() without a path returns the text
    return "" if _is_temporary(dest, buffers) else text


def test_the_checker_finds_direct_writes():
    source = (
        "def f(df, img, path, tmp):\n"
        "    os.replace(tmp, path)\n"
        "    nib.save(img, str(path))\n"
        "    df.to_csv(path, index=False)\n"
        "    path.write_text('x')\n"
        "    open(path, 'a')\n"
        "    fig.savefig(path)\n"
        "    torch.save(obj, path)\n"
        "def g(df, img, tmp, path):\n"
        "    nib.save(img, str(tmp)); df.to_csv(tmp); tmp.write_text('x'); open(path); df.to_csv(index=False)\n"
        "    buffer = io.BytesIO(); torch.save(obj, buffer); path.open(newline='')\n"
    )
    assert [(f, line) for f, line, _ in direct_writes(source)] == [("f", n) for n in range(2, 9)]


def test_every_writer_in_pipeline_goes_through_fileio():
    bad = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "pipeline/core/fileio.py":
            continue
        for function, line, call in direct_writes(path.read_text()):
            if (rel, function) not in ALLOWED:
                bad.append(f"{rel}:{line} {function}: {call}")
    assert bad == [], "write through pipeline.core.fileio (a temporary, then a rename):\n" + "\n".join(bad)
