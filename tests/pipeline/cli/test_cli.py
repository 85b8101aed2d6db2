from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.cli import build_parser, main
from pipeline.core.config import save_config
from tests.conftest import tiny_config

COMMANDS = [
    "phantoms",
    "manifest",
    "folds",
    "fingerprint",
    "model-info",
    "train",
    "cv",
    "infer",
    "export",
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
        (["phantoms", "--n", "0", "--out", "{tmp}/ph"], "UsageError: --n"),
        (["cv", "--manifest", "{tmp}/m.csv", "--out", "{tmp}/run", "--folds", "0,x"], "UsageError: --folds"),
        (["model-info", "--set", "train.loss=dicece"], "ConfigError: train.loss='dicece' is not allowed"),
        (["export", "{tmp}", "--out", "{tmp}/model.zip"], "not a run folder (no config.yaml)"),
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


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _run_argv(command: str, manifest, tmp_path) -> tuple[list[str], object]:
    """(argv of ``command`` on the tiny dataset with the tiny config, 1 epoch; its run folder)."""
    config = save_config(tiny_config(train__epochs=1), tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    fold = ["--fold", "0"] if command == "train" else ["--folds", "0"]
    return [command, "--manifest", str(manifest), *fold, "--out", str(out), "--config", str(config)], out


@pytest.mark.parametrize("command", ["train", "cv", "compare"])
def test_a_bad_value_writes_nothing(command, tiny_dataset, tmp_path, capsys):
    """The config is checked before the run folder is made: a typo leaves no folder to block the fix."""
    argv, out = _run_argv(command, tiny_dataset, tmp_path)
    assert main([*argv, "--set", "train.loss=dicece"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pancreas-seg: ConfigError: train.loss='dicece' is not allowed (allowed: dice, dice_ce)"]
    assert not out.exists()


def test_a_bad_value_in_the_config_file_names_the_file(tiny_dataset, tmp_path, capsys):
    argv, out = _run_argv("train", tiny_dataset, tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(config.read_text().replace("overlap: 0.5", "overlap: 1.5"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pancreas-seg: ConfigError: {config}: infer.overlap=1.5: must be in [0, 1)"]
    assert not out.exists()


@pytest.mark.slow
def test_the_corrected_command_trains_in_the_same_folder(tiny_dataset, tmp_path, capsys):
    """Issue 14: a typo in --set used to write config.yaml first, and the fixed command was then refused
    with 'this run folder was made with other settings'."""
    argv, out = _run_argv("train", tiny_dataset, tmp_path)
    assert main([*argv, "--set", "train.loss=dicece"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "train.loss" in err[0] and _files(out) == []
    assert main([*argv, "--set", "train.loss=dice_ce"]) == 0, capsys.readouterr().err
    assert (out / "config.yaml").is_file() and (out / "fold_0" / "checkpoints" / "best.pt").is_file()


@pytest.mark.parametrize("command", ["cv", "compare", "train"])
def test_cv_and_compare_accept_the_paper_preset(command):
    from pipeline.cli.commands import _config

    argv = [command, "--manifest", "m.csv", "--out", "runs/x", "--config", "paper"]
    argv += ["--fold", "0"] if command == "train" else []
    args = build_parser().parse_args(argv)
    cfg = _config(args)
    assert (cfg.train.optimizer, cfg.train.momentum, cfg.train.loss) == ("sgd", 0.9, "dice")
    assert cfg.data.augment.scale_mode == "in_plane"


def test_phantoms_with_tumours_write_a_3_class_manifest(tmp_path):
    import numpy as np
    import pandas as pd
    from nibabel import load

    out = tmp_path / "ph"
    argv = ["phantoms", "--out", str(out), "--n", "2", "--shape", "64", "64", "32", "--tumour-fraction", "1"]
    assert main([*argv, "--manifest"]) == 0
    df = pd.read_csv(out / "manifest.csv")
    assert set(df["label_map"]) == {"1:pancreas,2:tumour"}
    assert all(2 in np.unique(np.asarray(load(out / p).dataobj)) for p in df["label"])
    assert main(["phantoms", "--out", str(tmp_path / "bad"), "--n", "1", "--tumour-fraction", "2"]) == 2


@pytest.mark.parametrize(
    "argv, jobs, lr",
    [
        ([], 0, 0.003),  # the binary demo: folds one after another, as before
        (["--tumour"], 3, 0.01),  # 3-class: every fold at once on the CPU, its own recipe
        (["--tumour", "--parallel-folds", "0"], 0, 0.01),
        (["--parallel-folds", "2", "--set", "train.lr=0.005"], 2, 0.005),
    ],
)
def test_demo_runs_its_folds_in_parallel_for_the_tumour_demo_on_cpu(argv, jobs, lr, tmp_path, monkeypatch):
    import pipeline.workflows.demo as demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: seen.update(kw, out=out))
    assert main(["demo", "--out", str(tmp_path / "d"), "--set", "perf.device=cpu", *argv]) == 0
    assert seen["parallel_folds"] == jobs and seen["cfg"].train.lr == pytest.approx(lr)
    assert seen["config"] == "demo" and ("train.lr=0.01" in seen["overrides"]) == ("--tumour" in argv)
    assert ("data.class_names=[pancreas,tumour]" in seen["overrides"]) == ("--tumour" in argv)
