"""models registry: get_model, build_model, count_parameters, model_info."""

from __future__ import annotations

import json

import pytest

from models import MODELS, AttentionUNet, build_model, count_parameters, get_model, model_info
from pipeline.core.config import ModelConfig
from pipeline.core.errors import ConfigError


def test_get_model_unknown_name_lists_known_models():
    with pytest.raises(ConfigError, match="unknown model.*attention_unet, unet"):
        get_model("vnet")


def test_get_model_bad_kwargs_is_a_config_error():
    with pytest.raises(ConfigError, match="at least 3 levels"):
        get_model("unet", channels=(4, 8))


def test_build_model_from_config():
    small = [4, 8, 16, 32, 64]
    att = build_model(ModelConfig(name="attention_unet", channels=small, gates_per_level=1))
    plain = build_model(ModelConfig(name="unet", channels=small))
    assert isinstance(att, AttentionUNet) and att.attention and att.gates_per_level == 1
    assert isinstance(plain, AttentionUNet) and not plain.attention
    assert count_parameters(att) > count_parameters(plain)
    multi = build_model(ModelConfig(channels=small, out_channels=2, multiclass_attention=True))
    assert multi.gates[0].gate.attention_channels == 2
    assert set(MODELS) == {"attention_unet", "unet"}


def test_model_info_describes_the_default_network():
    info = model_info(ModelConfig())
    json.dumps(info)  # printable by the CLI
    assert info["parameters"] == count_parameters(build_model(ModelConfig()))
    assert sum(info["parameters_by_part"].values()) == info["parameters"]
    assert info["gated_levels"] == [2, 3, 4] and info["gates"] == 6 and info["gates_per_level"] == 2
    assert info["channels"] == [16, 32, 64, 128, 256] and info["input_multiple"] == 16
    plain = model_info(ModelConfig(name="unet"))
    assert plain["gates"] == 0 and plain["gated_levels"] == [] and not plain["attention"]
    with pytest.raises(ConfigError, match="unknown model"):
        model_info(ModelConfig(name="segformer"))
