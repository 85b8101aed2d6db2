from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.cli import build_parser, main

COMMANDS = [
    "phantoms",
    "manifest",
    "folds",
    "fingerprint",
    "model-info",
    "train",
    "cv",
    "infer",
    "evaluate",
    "demo",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"pancreas-seg {command}" in out and len(out) > 200


def test_parser_lists_commands():
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["folds", "{tmp}/missing.csv"], "missing.csv"),
        (["cv", "--manifest", "{tmp}/missing.csv", "--out", "{tmp}/run"], "missing.csv"),
        (["model-info", "--set", "model.name=resnet"], "resnet"),
        (["model-info", "--config", "{tmp}/nope.yaml"], "nope.yaml"),
        (["phantoms", "--n", "0", "--out", "{tmp}/ph"], "--n"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(argv, needle, tmp_path, capsys):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and needle in err
    assert "Traceback" not in err


def test_no_traceback_from_the_console_script(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("case_id,image\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "folds", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "m.csv" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
