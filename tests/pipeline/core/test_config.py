from __future__ import annotations

import pytest
import yaml

from pipeline.core.config import (
    CONFIG_DIR,
    Config,
    apply_overrides,
    config_to_dict,
    load_config,
    save_run_config,
)
from pipeline.core.errors import ConfigError


def test_default_yaml_is_the_dataclass_defaults():
    values = yaml.safe_load((CONFIG_DIR / "default.yaml").read_text())
    assert values == config_to_dict(Config())


def test_paper_settings_are_the_defaults():
    cfg = Config()
    assert cfg.model.channels == [16, 32, 64, 128, 256]
    assert cfg.data.patch_size == [160, 160, 96]
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.batch_size == 2


def test_demo_overlay_and_overrides():
    cfg = load_config("demo", ["train.lr=3e-4", "data.target_spacing=[1.5,1.5,2]", "perf.bf16=true"])
    assert cfg.model.channels == [8, 16, 32, 64, 128]  # from demo.yaml
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.data.target_spacing == [1.5, 1.5, 2.0]
    assert cfg.perf.bf16 is True
    assert cfg.model.name == "attention_unet"  # untouched keys keep the paper's value


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.nope=1", "unknown config key train.nope"),
        ("train.epochs=abc", "train.epochs"),
        ("train.epochs=1.5", "train.epochs"),
        ("perf.bf16=maybe", "perf.bf16"),
        ("noequals", "key.sub=value"),
    ],
)
def test_bad_overrides_are_named(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        apply_overrides(Config(), [override])


def test_bad_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model: {widht: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown\.yaml.*model\.widht"):
        load_config(unknown)


def test_run_config_round_trips_with_provenance(tmp_path):
    cfg = load_config("demo", ["train.epochs=7"])
    path = save_run_config(cfg, tmp_path / "run")
    saved = yaml.safe_load(path.read_text())
    assert saved["provenance"]["versions"]["torch"]
    assert "git_commit" in saved["provenance"]
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(cfg)
