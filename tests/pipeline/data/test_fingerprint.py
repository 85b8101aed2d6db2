"""Dataset fingerprint: statistics, the spacing and patch rules, and the chains that use it (through
the config, which reads the file when it is loaded)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.core.config import apply_overrides
from pipeline.core.errors import ConfigError
from pipeline.data.fingerprint import (
    compute_fingerprint,
    read_fingerprint,
    suggest_patch_size,
    suggest_target_spacing,
    write_fingerprint,
)
from tests.transforms.conftest import affine_for, phantom, small_config, write_nifti
from transforms import build_infer_transforms


@pytest.fixture
def cfg():
    return small_config()


@pytest.fixture
def records(tmp_path):
    out = []
    for i, spacing in enumerate([(0.8, 0.8, 2.5), (0.7, 0.7, 1.25), (0.9, 0.9, 5.0)]):
        img, lbl = phantom(seed=i)
        aff = affine_for(spacing=spacing, kind="lps" if i == 1 else "ras")
        out.append(
            {
                "case_id": f"c{i}",
                "image": write_nifti(tmp_path / f"c{i}.nii.gz", img, aff),
                "label": write_nifti(tmp_path / f"c{i}_l.nii.gz", lbl, aff),
            }
        )
    out.append({"case_id": "unlabelled", "image": out[0]["image"]})
    return out


def test_spacing_rule():
    assert suggest_target_spacing([[0.8, 0.8, 2.0], [0.7, 0.7, 1.0], [1.0, 1.0, 3.0]]) == [0.8, 0.8, 2.0]
    # anisotropic: the median z (5.0) is > 3x the in-plane spacing; z takes its 10th percentile
    spacings = [[0.8, 0.8, 5.0]] * 8 + [[0.7, 0.7, 1.0], [0.75, 0.75, 2.5]]
    target = suggest_target_spacing(spacings)
    assert target[:2] == [0.8, 0.8]
    assert target[2] == pytest.approx(np.percentile([5.0] * 8 + [1.0, 2.5], 10))
    # never finer than the in-plane axes
    assert suggest_target_spacing([[1.0, 1.0, 5.0]] * 5 + [[1.0, 1.0, 0.5]])[2] >= 1.0


def test_patch_rule():
    patch = suggest_patch_size([[400.0, 300.0, 500.0]], [2.0, 2.0, 2.0], 160 * 160 * 96)
    assert all(p % 16 == 0 for p in patch) and np.prod(patch) <= 160 * 160 * 96
    assert patch[0] == patch[2] and patch[1] <= patch[0]
    # small volumes cap the patch; the freed budget goes to the other axes
    small = suggest_patch_size([[64.0, 400.0, 400.0]], [2.0, 2.0, 2.0], 96**3)
    assert small[0] == 32 and small[1] == small[2] > 96


def test_compute_write_read(records, cfg, tmp_path):
    fp = compute_fingerprint(records, cfg, samples_per_case=2000)
    assert fp["num_cases"] == 4 and fp["num_labelled_cases"] == 3
    assert fp["spacings"][1] == pytest.approx([0.7, 0.7, 1.25], abs=1e-5)  # LPS case reported in RAS order
    stats = fp["foreground_intensity"]
    assert stats["num_samples"] == 6000
    assert 85 < stats["mean"] < 115 and 0 < stats["std"] < 15  # the blob: 40 + 60 HU, +-15 noise
    assert stats["percentile_00_5"] < stats["median"] < stats["percentile_99_5"]
    # median z 2.5 mm > 3 x 0.8 mm in-plane: anisotropic, z takes the 10th percentile of the cases' z
    z = np.percentile([2.5, 1.25, 5.0, 2.5], 10)
    assert fp["suggested_target_spacing"] == pytest.approx([0.8, 0.8, z], abs=1e-5)
    path = write_fingerprint(fp, tmp_path / "fp" / "fingerprint.json")
    assert read_fingerprint(path) == json.loads(json.dumps(fp))
    assert compute_fingerprint(records, cfg, samples_per_case=2000) == fp  # seeded


def test_chains_use_the_fingerprint(records, cfg, tmp_path):
    fp = compute_fingerprint(records[:3], cfg, samples_per_case=2000)
    fp["suggested_target_spacing"] = [1.5, 1.5, 3.0]
    path = str(write_fingerprint(fp, tmp_path / "fp.json"))
    settings = [
        f"data.fingerprint={path}",
        "data.spacing_from_fingerprint=true",
        "data.intensity=fingerprint",
    ]
    apply_overrides(cfg, settings)
    assert cfg.data.target_spacing == [1.5, 1.5, 3.0]
    out = build_infer_transforms(cfg, with_label=True)(records[0])
    np.testing.assert_allclose(out["image"].pixdim.numpy(), [1.5, 1.5, 3.0], atol=1e-6)
    # the same chain with a window wide enough to read HU back, to check nnU-Net's CT normalisation
    cfg.data.intensity, cfg.data.window_hu = "window", [-2000.0, 4000.0]
    hu = build_infer_transforms(cfg)(records[0])["image"] * 6000.0 - 2000.0
    s = fp["foreground_intensity"]
    expected = (hu.clamp(s["percentile_00_5"], s["percentile_99_5"]) - s["mean"]) / s["std"]
    np.testing.assert_allclose(out["image"].numpy(), expected.numpy(), atol=2e-3)
    inside = out["image"][out["label"] > 0]
    assert abs(float(inside.mean())) < 0.5  # foreground is roughly zero mean after normalisation


def test_bad_fingerprint_files(tmp_path, cfg):
    with pytest.raises(ConfigError, match="cannot read fingerprint"):
        read_fingerprint(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_fingerprint(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ConfigError, match="not a fingerprint"):
        read_fingerprint(tmp_path / "other.json")
    with pytest.raises(ConfigError, match=r"data\.fingerprint: required when data\.intensity"):
        apply_overrides(cfg, ["data.intensity=fingerprint"])
    with pytest.raises(ConfigError, match=r"data\.fingerprint: .*other\.json: not a fingerprint"):
        apply_overrides(
            cfg, [f"data.fingerprint={tmp_path / 'other.json'}", "data.spacing_from_fingerprint=1"]
        )
