"""Atomic writes leave the old file or the whole new one, and no temporary file."""

from __future__ import annotations

import pytest

from pipeline.core.fileio import atomic_write, atomic_write_text


def test_atomic_write_text_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    atomic_write_text(target, "a\n")
    atomic_write_text(target, "b\n")
    assert target.read_text() == "b\n"
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]


def test_failed_write_keeps_old_file_and_removes_temporary(tmp_path):
    target = tmp_path / "mask.nii.gz"
    target.write_text("old")
    seen = []

    def fail(tmp):
        seen.append(tmp)
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert seen[0].name.endswith(".nii.gz") and seen[0].parent == tmp_path  # writers see the suffix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]
