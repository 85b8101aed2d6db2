"""The MONAI bundle: MONAI's own checks pass, and ``monai.bundle run`` (without this package) gives the
masks of ``pancreas-seg infer`` on a real scan, on the scan's grid."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from models import network_from_checkpoint
from pipeline.cli import main
from pipeline.core.layout import BundleLayout
from pipeline.inference.bundle import Ensemble, export_bundle
from pipeline.inference.package import export_package, model_folds
from tests.conftest import REPO, SHARED_DATA

CT_SMALL = SHARED_DATA / "totalsegmentator" / "ct_small.nii.gz"
needs_data = pytest.mark.skipif(not CT_SMALL.is_file(), reason="shared real CT data not present")
# The fields MONAI's bundle metadata schema (meta_schema_20240725.json) requires, and those of a tensor.
SCHEMA_REQUIRED = (
    "schema", "version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
    "task", "description", "authors", "copyright", "network_data_format",
)  # fmt: skip
# MONAI's schema itself, so verify_metadata checks the bundle without downloading it (tests/fixtures/README.md)
SCHEMA_FILE = REPO / "tests" / "fixtures" / "meta_schema_20240725.json"
TENSOR_REQUIRED = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")
# Run the bundle with MONAI alone: importing this project's packages fails in the subprocess.
_RUN = (
    "import sys\n"
    "for name in ('pipeline', 'models', 'transforms'): sys.modules[name] = None\n"
    "from monai.bundle import run\n"
    "bundle, scans, out = sys.argv[1:4]\n"
    "run(config_file=bundle + '/configs/inference.json', meta_file=bundle + '/configs/metadata.json', "
    "input_path=scans, output_dir=out)\n"
)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_bundle_passes_monais_checks_and_its_torchscript_is_the_ensemble(random_run, tmp_path):
    from monai.bundle import ConfigWorkflow, verify_net_in_out

    package = export_package(random_run, tmp_path / "model.zip")
    root = export_bundle(package, tmp_path / "bundle")  # from a package: a run folder works alike
    layout = BundleLayout(root)
    for path in (
        layout.metadata,
        layout.inference,
        layout.weights,
        layout.torchscript,
        layout.readme,
        layout.license,
    ):
        assert path.is_file(), path
    meta = json.loads(layout.metadata.read_text())
    assert [k for k in SCHEMA_REQUIRED if k not in meta] == []
    for io_ in ("inputs", "outputs"):
        tensor = next(iter(meta["network_data_format"][io_].values()))
        assert [k for k in TENSOR_REQUIRED if k not in tensor] == []
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background",
        "1": "pancreas",
    }
    args = {"meta_file": str(layout.metadata), "config_file": str(layout.inference)}
    # the command a bundle user types; it exits 0 only when the metadata validates against the schema
    verified = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", args["meta_file"],
         "--filepath", str(SCHEMA_FILE)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr[-2000:]
    assert "metadata is verified with no error" in verified.stdout + verified.stderr
    verify_net_in_out(net_id="network_def", device="cpu", n=2, **args)
    workflow = ConfigWorkflow(workflow_type="inference", **args)
    workflow.initialize()
    assert workflow.check_properties() == []  # MONAI's required inference properties are all there
    assert "Not for clinical use" in layout.readme.read_text()

    cfg, folds = model_folds(random_run)
    nets = [network_from_checkpoint(c, cfg.model)[0] for _, c in folds]
    script = torch.jit.load(str(layout.torchscript))
    x = torch.rand(3, 1, 32, 48, 16)  # another batch and window than the trace's
    with torch.no_grad():
        np.testing.assert_allclose(script(x).numpy(), Ensemble(nets)(x).numpy(), atol=1e-5)
    weights = torch.load(layout.weights, weights_only=True)
    assert set(weights) == set(script.state_dict())


@pytest.mark.slow
@needs_data
def test_monai_bundle_run_matches_pancreas_seg_infer_on_a_real_scan(trained_run, tmp_path):
    root = export_bundle(trained_run, tmp_path / "bundle")
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / CT_SMALL.name).symlink_to(CT_SMALL)  # a dataset folder: the bundle's default kind of input
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = tmp_path / "bundle_out"
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(root), str(scans), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = nib.load(out / "ct_small_seg.nii.gz")
    ref = nib.load(CT_SMALL)
    assert got.shape == ref.shape and got.get_data_dtype() == np.uint8
    np.testing.assert_allclose(got.affine, ref.affine, atol=1e-4)

    assert (
        main(["infer", "--model", str(trained_run), "--input", str(CT_SMALL), "--out", str(tmp_path / "cli")])
        == 0
    )
    ours = np.asarray(nib.load(tmp_path / "cli" / "ct_small.nii.gz").dataobj)
    theirs = np.asarray(got.dataobj)
    assert set(np.unique(theirs)) <= {0, 1} and 0 < int(ours.sum()) < ours.size // 2  # a real, partial mask
    assert _dice(ours, theirs) >= 0.99
