"""The manifest's label_map with class numbers or names, and the config's classes."""

from __future__ import annotations

import re

import pytest

from pipeline.core.config import load_config
from pipeline.core.errors import ConfigError, ManifestError
from pipeline.core.label_map import check_label_map, class_names, foreground_count, parse_label_map

TUMOUR = ["pancreas", "tumour"]


def test_names_and_numbers_give_the_same_classes():
    assert parse_label_map("1:pancreas,2:tumour", names=TUMOUR, classes=3) == {1: 1, 2: 2}
    assert parse_label_map("1:1, 2:2", names=TUMOUR, classes=3) == {1: 1, 2: 2}
    assert parse_label_map("1:Pancreas,2:pancreas", names=["pancreas"]) == {1: 1, 2: 1}  # merged
    assert parse_label_map("1:pancreas,2:tumour,3:background", classes=3) == {1: 1, 2: 2, 3: 0}
    assert parse_label_map("") == {1: 1}


@pytest.mark.parametrize(
    "text, kwargs, needle",
    [
        (
            "1:liver",
            {"names": TUMOUR},
            "names class 'liver', which is not a class (known: background, pancreas",
        ),
        ("1:pancreas,2:tumour", {"names": ["pancreas"]}, "names class 'tumour'"),
        ("1:pancreas,2:tumour", {}, "maps 2 to class 2; classes are 0 and 1"),
        ("1:1,2:3", {"classes": 3}, "maps 2 to class 3; classes are 0 to 2"),
        ("1=pancreas", {}, "is not '<label value>:<class>', e.g. '1:1,2:1' or '1:pancreas,2:tumour'"),
        ("1:pancreas,1:tumour", {"classes": 3}, "label value 1 is mapped twice"),
        ("-1:pancreas", {}, "negative label value -1"),
        ("1:-2", {}, "classes must be >= 0"),
    ],
)
def test_bad_label_maps_are_one_line_errors_naming_the_row(text, kwargs, needle):
    with pytest.raises(ManifestError) as err:
        parse_label_map(text, where="manifest.csv row 3 (case_id=p1)", **kwargs)
    message = str(err.value)
    assert message.startswith("manifest.csv row 3 (case_id=p1): label_map") and needle in message
    assert "\n" not in message


def test_syntax_check_accepts_any_name_but_not_bad_pairs():
    check_label_map("1:liver,2:spleen")  # the manifest alone does not know the config's classes
    with pytest.raises(ManifestError, match="mapped twice"):
        check_label_map("1:a,1:b")


def test_class_names_follow_the_config_for_labels_and_regions():
    binary = load_config()
    assert class_names(binary) == {1: "pancreas"} and foreground_count(binary) == 1
    tumour = load_config(None, ["data.class_names=[pancreas,tumour]", "model.out_channels=3"])
    assert class_names(tumour) == {1: "pancreas", 2: "tumour"}
    regions = load_config(
        None, ["data.class_names=[pancreas,tumour]", "data.regions=[[1,2],[2]]", "model.out_channels=2"]
    )
    assert class_names(regions) == {1: "pancreas", 2: "tumour"} and foreground_count(regions) == 2


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (
            ["data.class_names=[pancreas,tumour]"],
            "model.out_channels=2: must be 3: background plus the 2 classes",
        ),
        (
            ["data.class_names=[pancreas,tumour]", "data.regions=[[1,2],[2]]", "model.out_channels=3"],
            "model.out_channels=3: must be 2: one sigmoid output per region",
        ),
        (
            ["data.class_names=[pancreas,tumour]", "data.regions=[[2],[1,2]]", "model.out_channels=2"],
            "region i holding",
        ),
        (
            ["data.class_names=[pancreas,tumour]", "data.regions=[[1,3],[2]]", "model.out_channels=2"],
            "classes 1..2",
        ),
        (["data.class_names=[pancreas,background]", "model.out_channels=3"], "not 'background'"),
    ],
)
def test_out_channels_must_follow_the_classes_or_regions(overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(None, overrides)
