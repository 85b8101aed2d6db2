from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import (
    CONFIG_DIR,
    Config,
    apply_overrides,
    config_to_dict,
    load_config,
    save_run_config,
    update_config,
)
from pipeline.core.config_checks import MODEL_NAMES, check_config, input_multiple
from pipeline.core.errors import ConfigError


def test_default_yaml_is_the_dataclass_defaults():
    values = yaml.safe_load((CONFIG_DIR / "default.yaml").read_text())
    assert values == config_to_dict(Config())
    check_config(Config())  # the defaults pass their own checks


def test_recommended_defaults_keep_the_authors_network_and_patch():
    cfg = Config()
    assert cfg.model.channels == [16, 32, 64, 128, 256]
    assert cfg.data.patch_size == [160, 160, 96]
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.batch_size == 2


def test_the_paper_preset_is_the_authors_released_recipe():
    cfg = load_config("paper")
    d, a, m, t = cfg.data, cfg.data.augment, cfg.model, cfg.train
    # optimizer: SGD, Nesterov momentum 0.9, lr 1e-4, L2 1e-6
    assert (t.optimizer, t.momentum, t.lr, t.weight_decay) == (
        "sgd",
        0.9,
        pytest.approx(1e-4),
        pytest.approx(1e-6),
    )
    # soft Dice on the fused output only
    assert t.loss == "dice" and t.ds_weights == [1.0, 0.0, 0.0, 0.0, 0.0]
    # step decay x0.5 every 250 epochs, 1000 epochs
    assert (t.lr_schedule, t.lr_step_epochs, t.lr_gamma, t.epochs) == ("step", 250, 0.5, 1000)
    # per-volume z-score, 2 mm grid, no body crop, 160x160x96 patches, a batch of two volumes
    assert d.intensity == "zscore" and d.target_spacing == [2.0, 2.0, 2.0] and d.body_crop is False
    assert d.patch_size == [160, 160, 96]
    assert (d.samples_per_volume, t.batch_size, t.iterations_per_epoch) == (1, 2, 0)
    # flips, rotation 15 degrees, shift 10 % in-plane, zoom 0.7-1.3 with x and y drawn apart, every sample
    assert a.flip_prob == 0.5 and a.rotate_deg == 15.0 and a.rotate_prob == 1.0
    assert a.translate_frac == [0.1, 0.1, 0.0] and a.translate_prob == 1.0
    assert a.scale_mode == "in_plane" and a.scale_range == [0.7, 1.3] and a.scale_prob == 1.0
    assert a.intensity_prob == 0.0 and a.noise_std == 0.0
    # the released network: feature scale 4, two gates per level, deep supervision
    assert m.name == "attention_unet" and m.channels == [16, 32, 64, 128, 256]
    assert m.gates_per_level == 2 and m.deep_supervision is True
    assert load_config("paper", ["train.optimizer=adam"]).train.optimizer == "adam"


def test_the_defaults_and_the_demo_are_not_called_the_papers():
    for name in ("default", "demo"):
        text = (CONFIG_DIR / f"{name}.yaml").read_text()
        assert "paper's settings" not in text
    assert "recommended" in (CONFIG_DIR / "default.yaml").read_text().splitlines()[0].lower()


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


def test_model_names_and_input_multiple_are_the_registrys():
    """core keeps the allowed model names and the pooling rule; they must be what models/ builds."""
    import torch

    from models import MODELS, build_model

    assert sorted(MODEL_NAMES) == sorted(MODELS)
    for name in MODELS:
        for channels in ([4, 8, 16], [4, 8, 16, 32, 64]):
            cfg = load_config(None, [f"model.name={name}", f"model.channels={channels}"])
            with torch.device("meta"):
                assert build_model(cfg.model).divisor == input_multiple(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.loss=dicece", "train.loss='dicece' is not allowed (allowed: dice, dice_ce)"),
        ("train.optimizer=adamw", "train.optimizer='adamw' is not allowed (allowed: adam, sgd)"),
        ("train.lr_schedule=cosine", "train.lr_schedule='cosine' is not allowed (allowed: none, poly, step)"),
        (
            "data.intensity=minmax",
            "data.intensity='minmax' is not allowed (allowed: fingerprint, window, zscore)",
        ),
        ("data.cache=ram", "data.cache='ram' is not allowed (allowed: disk, memory, none)"),
        ("infer.precision=fp16", "infer.precision='fp16' is not allowed (allowed: auto, bf16, fp32)"),
        ("infer.mode=linear", "infer.mode='linear' is not allowed (allowed: constant, gaussian)"),
        ("model.name=resnet", "model.name='resnet' is not allowed (allowed: attention_unet, unet)"),
        ("perf.device=tpu", "perf.device='tpu': not a device (use auto, cpu, cuda or cuda:N)"),
        ("perf.device=cuda:x", "perf.device='cuda:x': not a device"),
        ("data.patch_size=[32,32,0]", "data.patch_size=[32, 32, 0]: expected positive integer sizes"),
        ("data.patch_size=[32,32]", "data.patch_size=[32, 32]: expected 3 values"),
        ("data.patch_size=[32,32,24]", "data.patch_size=[32, 32, 24]: must be multiples of 16"),
        ("infer.roi_size=[64,60,32]", "infer.roi_size=[64, 60, 32]: must be multiples of 16"),
        ("data.target_spacing=[1,1,-2]", "data.target_spacing=[1.0, 1.0, -2.0]: expected positive spacings"),
        ("data.target_spacing=[1,1]", "data.target_spacing=[1.0, 1.0]: expected 3 values"),
        ("model.channels=[8,16]", "model.channels=[8, 16]: the network needs at least 3 levels"),
        ("model.out_channels=1", "model.out_channels=1: must be 2: background plus the 1 classes"),
        ("model.out_channels=3", "model.out_channels=3: must be 2"),
        ("data.class_names=[]", "data.class_names=[]: expected one or more distinct names"),
        ("data.class_names=[pancreas,Pancreas]", "data.class_names=['pancreas', 'Pancreas']: expected"),
        ("data.regions=[[1,2],[2]]", "data.regions=[[1, 2], [2]]: expected lists of classes 1..1"),
        ("model.spatial_dims=2", "model.spatial_dims=2: must be 3"),
        ("train.batch_size=0", "train.batch_size=0: must be >= 1"),
        ("train.epochs=0", "train.epochs=0: must be >= 1"),
        ("train.val_interval=0", "train.val_interval=0: must be >= 1"),
        ("data.samples_per_volume=0", "data.samples_per_volume=0: must be >= 1"),
        ("data.augment.scale_mode=anisotropic", "data.augment.scale_mode='anisotropic' is not allowed"),
        ("data.augment.translate_frac=[0.1,0.1,1.5]", "data.augment.translate_frac="),
        ("data.augment.translate_prob=2", "data.augment.translate_prob=2.0: must be in [0, 1]"),
        ("infer.sw_batch_size=0", "infer.sw_batch_size=0: must be >= 1"),
        ("train.lr=0", "train.lr=0.0: must be > 0"),
        ("train.lr=.nan", "train.lr=nan: must be > 0"),
        ("perf.threads=-1", "perf.threads=-1: must be >= 0"),
        ("infer.overlap=1.0", "infer.overlap=1.0: must be in [0, 1)"),
        ("infer.overlap=-0.1", "infer.overlap=-0.1: must be in [0, 1)"),
        ("data.pos_fraction=1.5", "data.pos_fraction=1.5: must be in [0, 1]"),
        ("data.augment.flip_prob=-1", "data.augment.flip_prob=-1.0: must be in [0, 1]"),
        ("data.window_hu=[240,-100]", "data.window_hu=[240.0, -100.0]: expected [low, high] with low < high"),
        ("data.augment.scale_range=[1.3,0.7]", "data.augment.scale_range=[1.3, 0.7]: expected [min, max]"),
        ("train.ds_weights=[0,1,1,1,1]", "train.ds_weights=[0.0, 1.0, 1.0, 1.0, 1.0]: the first weight"),
        (
            "train.ds_weights=[1,0.5]",
            "train.ds_weights=[1.0, 0.5]: expected a weight for each of the network's 5",
        ),
        ("train.num_folds=1", "train.num_folds=1: must be >= 2"),
        ("data.orientation=RAX", "data.orientation='RAX': not an axis code"),
        ("train.mlflow_uri=mlruns", "train.mlflow_uri='mlruns': is a folder"),
    ],
)
def test_bad_values_are_refused_when_loaded(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert err.value.key == override.split("=")[0]
    with pytest.raises(ConfigError, match=re.escape(message)):  # a change after loading is checked too
        apply_overrides(load_config(), [override])


@pytest.mark.parametrize(
    "override",
    [
        "perf.device=cuda:1",
        "perf.device=CPU",
        "infer.overlap=0",
        "infer.roi_size=[]",
        "data.orientation=lps",
        "train.ds_weights=[1,1,1,1,1,1]",
        "model.deep_supervision=false",
        "data.pos_fraction=1",
    ],
)
def test_good_values_pass(override):
    load_config("demo", [override])


def test_a_bad_value_names_the_file_that_set_it(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  loss: dicece\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: train.loss='dicece' is not allowed")):
        load_config(path)
    with pytest.raises(ConfigError) as err:  # the override's own value is not the file's fault
        load_config(path, ["train.loss=dice2"])
    assert str(err.value).startswith("train.loss='dice2'")
    assert load_config(path, ["train.loss=dice"]).train.loss == "dice"  # --set corrects the file


def test_a_checkpoints_config_is_checked(tmp_path):
    stored = config_to_dict(Config())
    stored["infer"]["overlap"] = 2.0
    with pytest.raises(ConfigError, match=r"infer\.overlap=2\.0"):
        update_config(Config(), stored)


def _fingerprint(path, spacing=(1.5, 1.5, 3.0), stats=True):
    fp = {"version": 1, "spacings": [list(spacing)], "suggested_target_spacing": list(spacing)}
    if stats:
        fp["foreground_intensity"] = {
            "percentile_00_5": -40.0,
            "percentile_99_5": 210.0,
            "mean": 95.0,
            "std": 30.0,
        }
    path.write_text(json.dumps(fp))
    return str(path)


def test_the_fingerprint_is_read_into_the_config(tmp_path):
    fp = _fingerprint(tmp_path / "fp.json")
    cfg = load_config(
        "demo", [f"data.fingerprint={fp}", "data.spacing_from_fingerprint=true", "data.intensity=fingerprint"]
    )
    assert cfg.data.target_spacing == [1.5, 1.5, 3.0]
    values = cfg.data.fingerprint_values
    assert (
        values.source == fp
        and values.clip_hu == [-40.0, 210.0]
        and (values.mean_hu, values.std_hu) == (95.0, 30.0)
    )
    # the run folder's config.yaml reloads (infer --model RUN) after the fingerprint is gone
    saved = save_run_config(cfg, tmp_path / "run")
    Path(fp).unlink()
    again = load_config(saved)
    assert config_to_dict(again) == config_to_dict(cfg)
    # ... but pointing data.fingerprint at another file reads that one
    other = _fingerprint(tmp_path / "other.json", spacing=(2.0, 2.0, 2.5))
    assert load_config(saved, [f"data.fingerprint={other}"]).data.target_spacing == [2.0, 2.0, 2.5]
    with pytest.raises(ConfigError, match=r"data\.fingerprint: .*gone\.json: cannot read fingerprint"):
        load_config(saved, [f"data.fingerprint={tmp_path / 'gone.json'}"])


def test_fingerprint_settings_need_a_usable_file(tmp_path):
    with pytest.raises(
        ConfigError, match=r"^data\.fingerprint: required when data\.spacing_from_fingerprint"
    ):
        load_config(None, ["data.spacing_from_fingerprint=true"])
    with pytest.raises(ConfigError, match=r"^data\.fingerprint: .*none\.json: cannot read fingerprint"):
        load_config(None, [f"data.fingerprint={tmp_path / 'none.json'}", "data.intensity=fingerprint"])
    unlabelled = _fingerprint(tmp_path / "unlabelled.json", stats=False)
    cfg = load_config(None, [f"data.fingerprint={unlabelled}", "data.spacing_from_fingerprint=true"])
    assert cfg.data.target_spacing == [1.5, 1.5, 3.0]  # the spacing needs no HU statistics ...
    with pytest.raises(
        ConfigError, match="no foreground intensity statistics"
    ):  # ... the intensity mode does
        load_config(None, [f"data.fingerprint={unlabelled}", "data.intensity=fingerprint"])
    # the command that writes the fingerprint does not need it to exist yet
    settings = [f"data.fingerprint={tmp_path / 'new.json'}", "data.intensity=fingerprint"]
    assert load_config(None, settings, fingerprint=False).data.intensity == "fingerprint"


def test_eval_settings_are_checked_at_load():
    assert load_config(None, ["eval.nsd_tolerance_mm=1.5"]).eval.nsd_tolerance_mm == 1.5
    for bad, key in (
        ("eval.nsd_tolerance_mm=0", "eval.nsd_tolerance_mm"),
        ("eval.bootstrap_resamples=0", "eval.bootstrap_resamples"),
        ("eval.ci_level=1.0", "eval.ci_level"),
        ("eval.froc_thresholds=[0.5,1.5]", "eval.froc_thresholds"),
        ("eval.detection_classes=['']", "eval.detection_classes"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [bad])
