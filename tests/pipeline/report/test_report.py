"""The HTML report: contents, overlays on the right slices in the right orientation, inference
folders, U-Net runs, and that it opens in a headless browser."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from pipeline.cli import main
from pipeline.core.errors import UsageError
from pipeline.data.manifest import case_records, read_manifest
from pipeline.report.cases import attention_window, load_case, write_case_views
from pipeline.report.figures import LABEL_RGB, PRED_RGB, VIEW_AXIS
from pipeline.report.report import ATTENTION_CASES, write_report
from tests.conftest import tiny_config

CHROMIUM = Path("/usr/bin/chromium")
GATES = {f"level{level}_gate{g}" for level in (2, 3, 4) for g in (0, 1)}


@pytest.fixture(scope="module")
def cv_run(tiny_dataset, tmp_path_factory) -> Path:
    """A 2-fold, 2-epoch CV run on the tiny phantoms with its report written through the CLI."""
    from pipeline.workflows.cv import run_cv

    run = tmp_path_factory.mktemp("report") / "run"
    run_cv(tiny_config(), tiny_dataset, run)
    assert main(["report", str(run)]) == 0
    return run


def _png(path: Path) -> np.ndarray:
    return (imread(path)[..., :3] * 255 + 0.5).astype(np.uint8)


def _pixels(img: np.ndarray, rgb: tuple) -> set:
    rows, cols = np.nonzero((img == np.asarray(rgb, np.uint8)).all(axis=2))
    return set(zip(rows.tolist(), cols.tolist()))


@pytest.mark.slow
def test_cv_report_has_tables_curves_overlays_and_attention(cv_run):
    html = (cv_run / "report.html").read_text()
    metrics = pd.read_csv(cv_run / "cv_metrics.csv")
    assert '<table id="summary">' in html and "fold 0" in html and "fold 1" in html
    rows = re.search(r'<table id="cases" class="sortable">.*?</table>', html, re.S).group(0)
    listed = re.findall(r'<tr><td class="t"><a href="#case-[^"]+">([^<]+)</a>', rows)
    assert listed == list(metrics.sort_values("dice", kind="stable")["case_id"])  # worst Dice first
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert sources and all(s.startswith("report_files/") for s in sources)  # relative: opens offline
    assert all((cv_run / s).is_file() for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<link" not in html  # no external assets
    names = {Path(s).name for s in sources}
    assert "curves.png" in names and "colorbar.png" in names
    for case in metrics["case_id"]:
        assert {
            v for v in ("axial", "coronal", "sagittal") if any(n.endswith(f"{case}_{v}.png") for n in names)
        } == {
            "axial",
            "coronal",
            "sagittal",
        }
    gates = {n.split("_", 3)[-1][: -len(".png")] for n in names if "_gate" in n}
    assert gates == GATES  # every gate of the attention network
    assert sum(n.endswith("_level2_gate0.png") for n in names) == min(len(metrics), ATTENTION_CASES)
    assert not list(cv_run.glob(".report*"))  # no temporaries left


@pytest.mark.slow
def test_unet_run_reports_no_attention_maps(cv_run, tmp_path):
    """A run of the plain U-Net (no gates) says so instead of showing attention maps."""
    from models import build_model
    from pipeline.core.checkpoint import save_checkpoint
    from pipeline.core.config import load_config, save_run_config

    run = tmp_path / "unet_run"
    shutil.copytree(cv_run, run, ignore=shutil.ignore_patterns("tensorboard", "epoch_*.pt", "report*"))
    cfg = load_config(run / "config.yaml")
    cfg.model.name = "unet"
    save_run_config(cfg, run)
    for best in run.glob("fold_*/checkpoints/best.pt"):
        save_checkpoint(
            {"model": dataclasses.asdict(cfg.model), "network": build_model(cfg.model).state_dict()}, best
        )
    html = write_report(run).read_text()
    assert "no attention gates" in html
    assert not list((run / "report_files").glob("*_gate*.png"))
    assert len(list((run / "report_files").glob("*_axial.png"))) == 4


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium not installed (apt-get install -y chromium)"
)
def test_report_opens_in_headless_chromium(cv_run, tmp_path):
    url = (cv_run / "report.html").resolve().as_uri()
    flags = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*flags, "--enable-logging=stderr", "--v=0", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the inline script ran to the end (no exception) and every image loaded
    assert 'data-ready="1"' in dom.stdout and 'data-broken-images="0"' in dom.stdout
    assert "Uncaught" not in dom.stderr and "Failed to load resource" not in dom.stderr
    assert dom.stdout.count("<tr><td") >= 4 + 3  # the per-case and summary tables are in the DOM
    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1280,2000", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    img = _png(shot)
    assert img.shape[:2] == (2000, 1280)
    green = (img[..., 1] > 200) & (img[..., 0] < 40) & (img[..., 2] < 40)
    assert green.sum() > 50  # an overlay's label contour is on screen
    header = img[:400]
    assert (header < 100).all(axis=2).sum() > 500  # dark text: the title and the summary table


def test_overlays_go_through_the_label_centroid_and_draw_its_edge(tiny_dataset, tmp_path):
    """Slice indices and contour pixels, checked against the label on the canonical grid computed here."""
    from transforms import build_infer_transforms

    cfg = tiny_config()
    chain = build_infer_transforms(cfg, with_label=True)
    for rec in case_records(read_manifest(tiny_dataset)):  # RAS, LPS and oblique files
        label = np.asarray(chain({"image": rec["image"], "label": rec["label"]})["label"][0]) > 0
        # the label file used as the prediction: on the canonical grid it must be the label again
        vols = load_case(cfg, rec["case_id"], rec["image"], rec["label"], rec["label"])
        assert np.array_equal(vols.label > 0, label)
        assert (vols.pred > 0).sum() == pytest.approx(label.sum(), rel=0.01)
        assert (vols.pred.astype(bool) & label).sum() >= 0.99 * label.sum()
        centroid = np.rint(np.argwhere(label).mean(axis=0)).astype(int)
        for info in write_case_views(vols, tmp_path, rec["case_id"]):
            axis = VIEW_AXIS[info["view"]]
            present = np.nonzero(label.any(axis=tuple(a for a in range(3) if a != axis)))[0]
            assert info["index"] == present[np.argmin(np.abs(present - centroid[axis]))]
            img = _png(info["path"])
            sl = np.take(label, info["index"], axis=axis)  # axes (a, b): display col = n_a-1-a, row = n_b-1-b
            a, b = np.nonzero(sl)
            r_scale, c_scale = info["scale"]
            assert img.shape[:2] == (sl.shape[1] * r_scale, sl.shape[0] * c_scale)
            green = _pixels(img, LABEL_RGB)
            assert green == set(zip(*(c.tolist() for c in info["contours"]["label"])))
            rows, cols = zip(*green)
            assert min(rows) == (sl.shape[1] - 1 - b.max()) * r_scale
            assert max(rows) == (sl.shape[1] - b.min()) * r_scale - 1
            assert min(cols) == (sl.shape[0] - 1 - a.max()) * c_scale
            assert max(cols) == (sl.shape[0] - a.min()) * c_scale - 1
            assert _pixels(img, PRED_RGB)  # the prediction's outer edge shows beside the label's


@pytest.mark.parametrize("codes", ["RAS", "LPS"])
def test_views_are_radiological_whatever_the_file_orientation(tmp_path, codes):
    """A marker at the patient's right, anterior, superior shows top-left in all three views."""
    flip = np.array([1.0 if c in "RAS" else -1.0 for c in codes])
    affine = np.diag([*(2.0 * flip), 1.0])
    affine[:3, 3] = -flip * 2.0 * np.array([20, 20, 10])  # world origin in the middle of the grid
    image = np.full((40, 40, 20), 40, np.int16)
    world = np.array([24.0, 24.0, 12.0])  # mm: right, anterior, superior of the centre
    ijk = np.rint(np.linalg.solve(affine, [*world, 1.0])[:3]).astype(int)
    label = np.zeros(image.shape, np.uint8)
    label[tuple(slice(v - 3, v + 3) for v in ijk)] = 1
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "mask.nii.gz")
    cfg = tiny_config(data__body_crop="false")
    vols = load_case(cfg, "marker", tmp_path / "ct.nii.gz", tmp_path / "mask.nii.gz")
    for info in write_case_views(vols, tmp_path, "marker"):
        img = _png(info["path"])
        rows, cols = zip(*_pixels(img, LABEL_RGB))
        h, w = img.shape[:2]
        assert max(rows) < h / 2 and max(cols) < w / 2, f"{codes} {info['view']}: marker not top-left"


def test_attention_window_stays_inside_or_centres_small_volumes():
    assert attention_window((100, 80, 40), (50, 40, 20), [32, 32, 16], 16) == ([34, 24, 12], [32, 32, 16])
    assert attention_window((100, 80, 40), (2, 79, 20), [32, 30, 16], 16) == ([0, 48, 12], [32, 32, 16])
    start, size = attention_window((20, 80, 40), (10, 40, 20), [32, 32, 16], 16)
    assert start[0] == -6 and size[0] == 32  # a 20-voxel axis sits in the middle of a 32 window


def test_inference_folder_report_shows_timings_and_predictions(tiny_dataset, tmp_path):
    records = case_records(read_manifest(tiny_dataset))
    out = tmp_path / "masks"
    out.mkdir()
    for r in records:  # the labels stand in for predictions
        shutil.copy(r["label"], out / f"{r['case_id']}.nii.gz")
    pd.DataFrame({"case_id": [r["case_id"] for r in records], "total_s": [1.0, 2.0, 3.0, 4.0]}).to_csv(
        out / "timings.csv", index=False
    )
    html = write_report(out, manifest=tiny_dataset, max_cases=2).read_text()
    assert "Inference report" in html and 'id="timings"' in html and "2.500" in html  # the mean row
    assert len(list((out / "report_files").glob("*_axial.png"))) == 2
    assert "Attention" not in html and "drawn on black" not in html
    # without a manifest the masks are still drawn, on black, and the report says why
    html = write_report(out, max_cases=1).read_text()
    assert "drawn on black" in html and len(list((out / "report_files").glob("*.png"))) == 3


def test_report_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(UsageError, match="no such run folder"):
        write_report(tmp_path / "missing")
    with pytest.raises(UsageError, match="neither a CV run"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    (tmp_path / "fold_0").mkdir()
    with pytest.raises(UsageError, match="no finished fold yet"):
        write_report(tmp_path)
    with pytest.raises(UsageError, match="max-cases"):
        write_report(tmp_path, max_cases=-1)
