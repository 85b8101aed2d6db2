"""Inference on full scans: geometry round trips, real scans, batch behaviour, errors, ensembles."""

from __future__ import annotations

import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from models import build_model
from pipeline.cli import main
from pipeline.core.checkpoint import save_checkpoint
from pipeline.core.config import apply_overrides, config_to_dict, save_config
from pipeline.core.errors import CheckpointError, ConfigError, ImageError
from pipeline.core.geometry import spacing_from_affine
from pipeline.data.manifest import case_records, read_manifest
from pipeline.inference.batch import TIMING_COLUMNS, predict_cases
from pipeline.inference.inputs import discover_inputs
from pipeline.inference.loading import load_predictor
from pipeline.inference.predictor import Predictor, inference_perf, keep_largest_component
from pipeline.inference.writers import itk_geometry, save_like
from pipeline.synthetic.phantom import make_phantom, save_phantom
from tests.conftest import SHARED_DATA, tiny_config

TS = SHARED_DATA / "totalsegmentator"
DCMQI = SHARED_DATA / "dcmqi"
needs_data = pytest.mark.skipif(not TS.is_dir(), reason="shared real CT data not present")
INFER = {"infer__roi_size": "[64,64,32]", "infer__sw_batch_size": 4}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _checkpoint(path: Path, seed: int = 0, **overrides) -> Path:
    cfg = tiny_config(**{**INFER, **overrides})
    torch.manual_seed(seed)
    net = build_model(cfg.model)
    payload = {"model": asdict(cfg.model), "config": config_to_dict(cfg), "network": net.state_dict()}
    return save_checkpoint(payload, path)


def _phantom(folder: Path, name: str, orientation: str = "RAS", fmt: str = "nii.gz", seed: int = 5):
    ph = make_phantom(seed, shape=(48, 48, 24), spacing=(1.0, 1.0, 2.5), orientation=orientation)
    image, label = folder / f"{name}.{fmt}", folder / "labels" / f"{name}.{fmt}"
    save_phantom(ph, image, label)
    return image, label


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return _checkpoint(root / "a.pt", seed=0), _checkpoint(root / "b.pt", seed=1)


def _roundtrip(record: dict, spacing: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The label through the inference chain onto the canonical grid and back: (mask, affine)."""
    cfg = tiny_config(data__target_spacing=str(spacing))
    predictor = Predictor([build_model(cfg.model)], cfg)
    data, _ = predictor.preprocess(record, with_label=True)
    label = torch.as_tensor(data["label"])[0].long()
    probs = torch.nn.functional.one_hot(label, 2).permute(3, 0, 1, 2).float()
    out = predictor.postprocess(data, probs)
    return out.mask, out.affine


@pytest.mark.parametrize(
    "orientation,fmt",
    [("RAS", "nii.gz"), ("LPS", "nii.gz"), ("oblique", "nii.gz"), ("LPS", "nrrd"), ("oblique", "mha")],
)
def test_label_round_trip_lands_on_the_input_grid(tmp_path, orientation, fmt):
    image, label = _phantom(tmp_path, "p", orientation, fmt)
    mask, affine = _roundtrip({"image": str(image), "label": str(label)}, [0.8, 0.8, 2.5])
    out = save_like(mask, affine, tmp_path / f"mask.{fmt}", reference=image)
    from monai.transforms import LoadImage

    saved, truth = LoadImage(image_only=True)(str(out)), LoadImage(image_only=True)(str(label))
    assert saved.shape == truth.shape
    np.testing.assert_allclose(np.asarray(saved.affine), np.asarray(truth.affine), atol=1e-4)
    assert _dice(saved, truth) >= 0.98


@needs_data
def test_label_round_trip_on_the_real_dicom_series():
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    from transforms import load_volume

    record = {"image": str(TS / "ct_dicom"), "label": str(TS / "ct_dicom_pancreas.nii.gz")}
    mask, affine = _roundtrip(record, [0.977, 0.977, 2.0])
    ras = Orientation(axcodes="RAS")
    pred = ras(MetaTensor(torch.as_tensor(mask)[None], affine=torch.as_tensor(affine)))
    truth = ras(load_volume(record["label"], dtype=None))  # stored with y flipped: compare in one orientation
    assert pred.shape == truth.shape == (1, 512, 512, 20)
    assert int(truth.sum()) == 1327 and _dice(pred, truth) >= 0.98


@pytest.mark.slow
@needs_data
def test_real_scans_get_masks_with_the_input_header(tmp_path, ckpts):
    """One batch over real NIfTI and DICOM scans and NRRD/MHA phantoms, through the CLI."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "ct_small.nii.gz").symlink_to(TS / "ct_small.nii.gz")
    (inputs / "ct_dicom").symlink_to(TS / "ct_dicom")
    (inputs / "dcmqi").symlink_to(DICOM3 := DCMQI / "ct_dicom_3slice")
    _phantom(inputs, "obl", "oblique", "nrrd")
    _phantom(inputs, "lps", "LPS", "mha")
    shutil.rmtree(inputs / "labels")
    out = tmp_path / "out"
    argv = ["infer", "--model", str(ckpts[0]), "--input", str(inputs), "--out", str(out)]
    has_hd = _has_highdicom()
    assert main(argv + (["--set", "infer.dicom_seg=true"] if has_hd else [])) == 0

    ref, got = nib.load(TS / "ct_small.nii.gz"), nib.load(out / "ct_small.nii.gz")
    assert got.shape == ref.shape and got.get_data_dtype() == np.uint8
    for code in ("sform_code", "qform_code"):
        assert int(got.header[code]) == int(ref.header[code])
    np.testing.assert_array_equal(got.header.get_sform(), ref.header.get_sform())
    np.testing.assert_array_equal(got.header.get_qform(), ref.header.get_qform())
    assert set(np.unique(np.asarray(got.dataobj))) <= {0, 1}

    for name, series in (("ct_dicom", TS / "ct_dicom"), ("dcmqi", DICOM3)):
        geo, mask = _series_geometry(series), nib.load(out / f"{name}.nii.gz")
        assert list(mask.shape) == geo["size"]
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ mask.affine
        np.testing.assert_allclose(spacing_from_affine(lps), geo["spacing"], atol=1e-4)
        np.testing.assert_allclose(lps[:3, 3], geo["origin"], atol=1e-3)
        np.testing.assert_allclose(lps[:3, :3] / geo["spacing"], geo["direction"], atol=1e-5)
    for name, ext in (("obl", "nrrd"), ("lps", "mha")):
        a, b = itk_geometry(inputs / f"{name}.{ext}"), itk_geometry(out / f"{name}.{ext}")
        assert a["size"] == b["size"] and a["spacing"] == b["spacing"] and a["origin"] == b["origin"]
        np.testing.assert_array_equal(a["direction"], b["direction"])

    table = pd.read_csv(out / "timings.csv")
    assert list(table.columns) == list(TIMING_COLUMNS) and len(table) == 5
    stages = table[["load_s", "preprocess_s", "network_s", "stitch_s", "invert_s", "save_s"]]
    assert (stages >= 0).all().all() and (table["total_s"] >= stages.sum(axis=1) - 0.05).all()
    assert (table["network_s"] > 0).all() and (table["peak_rss_mb"] > 0).all()
    if has_hd:
        _check_dicom_seg(out / "dcmqi_seg.dcm", DICOM3, np.asarray(nib.load(out / "dcmqi.nii.gz").dataobj))
        _check_dicom_seg(
            out / "ct_dicom_seg.dcm", TS / "ct_dicom", np.asarray(nib.load(out / "ct_dicom.nii.gz").dataobj)
        )


def _has_highdicom() -> bool:
    try:
        import highdicom  # noqa: F401
    except ImportError:
        return False
    return True


def _series_geometry(folder: Path) -> dict:
    from transforms import list_dicom_series

    img = itk.imread(list_dicom_series(folder)[0]["files"])
    direction = itk.array_from_matrix(img.GetDirection())
    return {
        "size": list(itk.size(img)),
        "spacing": list(img.GetSpacing()),
        "origin": list(img.GetOrigin()),
        "direction": direction,
    }


def _check_dicom_seg(path: Path, series: Path, mask: np.ndarray) -> None:
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(str(path))
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(series.iterdir())]
    uids = [str(s.SOPInstanceUID or s.file_meta.MediaStorageSOPInstanceUID) for s in sources]
    ref = seg.ReferencedSeriesSequence[0]
    assert {str(i.ReferencedSOPInstanceUID) for i in ref.ReferencedInstanceSequence} == set(uids)
    if str(sources[0].get("SeriesInstanceUID", "")):
        assert ref.SeriesInstanceUID == sources[0].SeriesInstanceUID
        assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.SegmentSequence[0].SegmentLabel == "Pancreas"
    frames = seg.get_pixels_by_source_instance(uids, segment_numbers=[1], ignore_spatial_locations=True)[
        ..., 0
    ]
    # frame of each source slice = the NIfTI mask's slice at that position, transposed to (row, column)
    k = [
        int(
            round(
                (float(s.ImagePositionPatient[2]) - min(float(t.ImagePositionPatient[2]) for t in sources))
                / _dz(sources)
            )
        )
        for s in sources
    ]
    assert int(frames.sum()) == int(mask.sum())
    for f, kk in zip(frames, k):
        np.testing.assert_array_equal(f, mask[:, :, kk].T)


def _dz(sources) -> float:
    z = sorted(float(s.ImagePositionPatient[2]) for s in sources)
    return z[1] - z[0]


def test_dicom_seg_without_highdicom_is_a_clear_error(tmp_path, ckpts, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom now raises ImportError
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"\0" * 128 + b"DICM")
    argv = [
        "infer",
        "--model",
        str(ckpts[0]),
        "--input",
        str(series),
        "--out",
        str(tmp_path / "o"),
        "--set",
        "infer.dicom_seg=true",
    ]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pancreas-seg:")]
    assert len(err) == 1 and "ConfigError" in err[0] and "highdicom" in err[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_batch_isolates_a_bad_scan_and_rerun_skips_finished_cases(tmp_path, ckpts, capsys):
    inputs = tmp_path / "in"
    _phantom(inputs, "a", "RAS", "nii.gz")
    (inputs / "b.nii.gz").write_bytes(b"this is not a scan")
    _phantom(inputs, "c", "LPS", "nrrd")
    shutil.rmtree(inputs / "labels")
    out = tmp_path / "out"
    argv = ["infer", "--model", str(ckpts[0]), "--input", str(inputs), "--out", str(out)]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "b:" in err and "ImageError" in err
    done = {p.name: p.stat().st_mtime_ns for p in (out / "a.nii.gz", out / "c.nrrd")}
    assert not (out / "b.nii.gz").exists() and not list(out.glob(".*tmp*"))
    assert sorted(pd.read_csv(out / "timings.csv")["case_id"]) == ["a", "c"]
    # inputs.csv says which scan each mask came from, so the report draws masks on their scans
    scans = {r["case_id"]: Path(r["image"]) for r in case_records(read_manifest(out / "inputs.csv"))}
    assert scans == {"a": inputs / "a.nii.gz", "c": inputs / "c.nrrd"}
    assert main(["report", str(out), "--max-cases", "1"]) == 0
    html = (out / "report.html").read_text()
    assert "drawn on black" not in html and "No manifest" not in html

    assert main(argv) == 3  # b still fails; a and c are skipped, not recomputed
    assert {p: (out / p).stat().st_mtime_ns for p in done} == done
    assert main(argv + ["--overwrite"]) == 3
    assert all((out / p).stat().st_mtime_ns != t for p, t in done.items())


def test_unwritable_output_folder_is_one_line_and_leaves_nothing(tmp_path, ckpts, capsys):
    image, _ = _phantom(tmp_path, "a")
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert (
        main(["infer", "--model", str(ckpts[0]), "--input", str(image), "--out", str(blocker / "sub")]) == 2
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pancreas-seg:")]
    assert len(err) == 1 and "file.txt/sub" in err[0] and "cannot be written" in err[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


class Untrusted:
    """Anything that needs unpickling could run code when loaded."""


def test_checkpoint_errors(tmp_path, ckpts, capsys):
    # a run folder whose config is one network and whose fold checkpoint is another
    run = tmp_path / "run"
    save_config(tiny_config(**INFER), run / "config.yaml")
    _checkpoint(run / "fold_0" / "checkpoints" / "best.pt", model__name="unet")
    with pytest.raises(CheckpointError, match="another network"):
        load_predictor(run)
    other = _checkpoint(tmp_path / "wide.pt", model__channels="[8,16,32,64,128]")
    with pytest.raises(CheckpointError, match="another network"):
        load_predictor([ckpts[0], other])

    evil = tmp_path / "evil.pt"
    torch.save({"network": {}, "model": {}, "extra": Untrusted()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_predictor(evil)
    image, _ = _phantom(tmp_path, "a")
    assert main(["infer", "--model", str(evil), "--input", str(image), "--out", str(tmp_path / "o")]) == 2
    assert "refused" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="only infer"):
        load_predictor(ckpts[0], ["data.target_spacing=[1,1,1]"])
    # review thresholds are policy, not model: an old run's config.yaml keeps its own, --set changes them
    assert load_predictor(ckpts[0], ["qc.max_entropy=0.9"]).cfg.qc.max_entropy == 0.9
    with pytest.raises(ConfigError, match="max_entropy"):
        load_predictor(ckpts[0], ["qc.max_entropy=2"])


def test_ensemble_averages_the_models_probabilities(tmp_path, ckpts):
    image, _ = _phantom(tmp_path, "a", "oblique")
    records = [{"case_id": "a", "image": str(image)}]
    opts = ["infer.save_probabilities=true", "infer.precision=fp32"]
    probs = []
    for name, model in (("one", ckpts[0]), ("two", ckpts[1]), ("both", list(ckpts))):
        assert not predict_cases(load_predictor(model, opts), records, tmp_path / name)["failed"]
        probs.append(np.asarray(nib.load(tmp_path / name / "a_prob.nii.gz").dataobj))
    assert np.abs(probs[0] - probs[1]).max() > 1e-3  # the two models differ
    np.testing.assert_allclose(probs[2], (probs[0] + probs[1]) / 2, atol=1e-5)
    mask = np.asarray(nib.load(tmp_path / "both" / "a.nii.gz").dataobj)
    np.testing.assert_array_equal(mask, (probs[2] > 0.5).astype(np.uint8))

    run = tmp_path / "run"  # a CV run folder: every fold's best checkpoint
    save_config(tiny_config(**INFER), run / "config.yaml")
    for k, src in enumerate(ckpts):
        (run / f"fold_{k}" / "checkpoints").mkdir(parents=True)
        shutil.copy(src, run / f"fold_{k}" / "checkpoints" / "best.pt")
    predictor = load_predictor(run, opts)
    assert len(predictor.networks) == 2
    np.testing.assert_allclose(predictor.predict(records[0]).probability, probs[2], atol=1e-5)


def test_flip_tta_and_largest_component(tmp_path, ckpts):
    two_blobs = np.zeros((20, 20, 10), np.uint8)
    two_blobs[2:5, 2:5, 2:5] = 1
    two_blobs[10:16, 10:16, 3:8] = 1
    kept = keep_largest_component(two_blobs)
    assert kept.sum() == 6 * 6 * 5 and kept[3, 3, 3] == 0
    assert keep_largest_component(np.zeros_like(two_blobs)).sum() == 0

    # flip TTA averages over the in-plane flips, so flipping the input flips the output exactly
    x = torch.randn(1, 1, 16, 16, 16)
    for tta in (True, False):
        predictor = load_predictor(ckpts[0], [f"infer.tta_flip={tta}", "infer.precision=fp32"])
        with torch.inference_mode():
            p, p_flip = predictor.probabilities(x), predictor.probabilities(torch.flip(x, (3,)))
        gap = (torch.flip(p_flip, (3,)) - p).abs().max().item()
        assert (gap < 1e-5) if tta else (gap > 1e-4)

    image, _ = _phantom(tmp_path, "a")
    predictor = load_predictor(ckpts[0], ["infer.keep_largest_component=true", "infer.precision=fp32"])
    out = predictor.predict({"image": str(image)})
    from scipy import ndimage

    assert out.mask.shape == (48, 48, 24)
    assert ndimage.label(out.mask, np.ones((3, 3, 3)))[1] <= 1


def test_window_follows_thin_volumes_and_must_fit_the_network(ckpts):
    predictor = load_predictor(ckpts[0])
    assert predictor.window_size([138, 138, 1]) == [64, 64, 16]  # a 3-slice series: no 32-slice padding
    assert predictor.window_size([200, 50, 40]) == [64, 64, 32]
    with pytest.raises(ConfigError, match="multiples of 16"):
        load_predictor(ckpts[0], ["infer.roi_size=[60,64,32]"])
    with pytest.raises(ConfigError, match="infer.overlap"):
        load_predictor(ckpts[0], ["infer.overlap=1.0"])


def test_precision_auto_uses_bf16_only_where_the_cpu_has_it(monkeypatch):
    import pipeline.core.runtime as runtime

    cfg, cpu = tiny_config(perf__bf16="false", perf__channels_last="false"), torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    perf = inference_perf(cfg, cpu)
    assert perf.bf16 and perf.channels_last
    cfg.infer.precision = "fp32"
    assert not inference_perf(cfg, cpu).bf16
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    cfg.infer.precision = "auto"
    perf = inference_perf(cfg, cpu)
    assert not perf.bf16 and perf.channels_last
    with pytest.raises(ConfigError, match=r"infer\.precision='fp16' is not allowed"):
        apply_overrides(cfg, ["infer.precision=fp16"])


def test_discover_inputs(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "a.nrrd").write_bytes(b"")
    with pytest.raises(ImageError, match="would both be case a"):
        discover_inputs(tmp_path)
    (tmp_path / "a.nrrd").unlink()
    (tmp_path / "notes.txt").write_text("x")
    series = tmp_path / "s1"
    series.mkdir()
    (series / "x").write_bytes(b"\0" * 128 + b"DICM")
    assert [r["case_id"] for r in discover_inputs(tmp_path)] == ["a", "s1"]
    with pytest.raises(ImageError, match="not a scan"):
        discover_inputs(tmp_path / "notes.txt")
    with pytest.raises(ImageError, match="no such"):
        discover_inputs(tmp_path / "missing")
    # a name the manifest would refuse as a case id stops the whole folder, naming the file
    bad = tmp_path / "<img src=x onerror=alert(1)>.nii.gz"
    bad.write_bytes(b"")
    for target in (tmp_path, bad):
        with pytest.raises(ImageError, match="case_id must be usable as a file name") as err:
            discover_inputs(target)
        assert str(bad) in str(err.value) and "manifest" in str(err.value)
