"""Run ``pancreas-seg`` in-process and take snapshots of folders.

Importing torch and MONAI costs seconds per process, so the table runs through
``pipeline.cli.main``. Log records are collected beside stderr so that a test can tell the error
line from the progress lines (INFO) and warnings (WARNING) the command logged before it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pipeline.cli.app as cli

__all__ = ["CliRun", "run_cli", "snapshot", "new_files"]


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class CliRun:
    """What one ``pancreas-seg`` run printed and returned."""

    code: int
    out: str
    err: str
    records: list[logging.LogRecord] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def _logged(self, below: int) -> set[str]:
        return {
            line
            for r in self.records
            if r.levelno < below
            for line in r.getMessage().splitlines()
            if line.strip()
        }

    @property
    def error_lines(self) -> list[str]:
        """stderr lines that are neither progress (INFO) nor warnings: the error message, if any."""
        logged = self._logged(logging.ERROR)
        return [line for line in self.lines if line not in logged]

    @property
    def warnings(self) -> list[str]:
        return [
            line for r in self.records if r.levelno == logging.WARNING for line in r.getMessage().splitlines()
        ]


def run_cli(argv: list, capsys, monkeypatch) -> CliRun:
    """``pancreas-seg ARGV`` in this process; SystemExit becomes the exit code."""
    collector = _Collector()
    setup = cli._setup_logging

    def setup_and_collect(debug: bool) -> None:
        setup(debug)
        logging.getLogger().addHandler(collector)

    monkeypatch.setattr(cli, "_setup_logging", setup_and_collect)
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        logging.getLogger().removeHandler(collector)
        monkeypatch.setattr(cli, "_setup_logging", setup)
    captured = capsys.readouterr()
    return CliRun(code, captured.out, captured.err, collector.records)


def snapshot(folder: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (relative path -> size, mtime in ns); empty folders are not files."""
    root = Path(folder)
    if not root.exists():
        return {}
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def new_files(before: dict, after: dict) -> list[str]:
    """Files added or changed between two snapshots."""
    return sorted(k for k, v in after.items() if before.get(k) != v)
