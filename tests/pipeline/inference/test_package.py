"""Model packages: export -> infer gives the run's masks voxel for voxel; tampered zips are refused in one line."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from pipeline.cli import main
from pipeline.core.errors import CheckpointError, UsageError
from pipeline.core.layout import PackageLayout, RunLayout
from pipeline.inference.loading import load_predictor
from pipeline.inference.package import export_package, model_folds, read_package
from pipeline.synthetic.phantom import make_phantom, save_phantom


@pytest.fixture(scope="module")
def package(random_run, tmp_path_factory) -> Path:
    return export_package(random_run, tmp_path_factory.mktemp("pkg") / "model.zip")


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scan")
    ph = make_phantom(7, shape=(48, 48, 24), spacing=(1.0, 1.0, 2.5), orientation="LPS")
    save_phantom(ph, folder / "p.nii.gz", folder / "labels" / "p.nii.gz")
    return folder / "p.nii.gz"


def test_export_then_infer_gives_the_runs_masks_voxel_for_voxel(random_run, scan, tmp_path):
    out = tmp_path / "model.zip"
    assert main(["export", str(random_run), "--out", str(out)]) == 0
    masks, probs = {}, {}
    for name, model in (("run", random_run), ("zip", out)):
        dest = tmp_path / name
        argv = ["infer", "--model", str(model), "--input", str(scan), "--out", str(dest), "--probabilities"]
        assert main(argv) == 0
        masks[name] = nib.load(dest / "p.nii.gz")
        probs[name] = np.asarray(nib.load(dest / "p_prob.nii.gz").dataobj)
    a, b = (np.asarray(m.dataobj) for m in masks.values())
    assert a.shape == b.shape == (48, 48, 24)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(masks["run"].affine, masks["zip"].affine)
    # a random network's mask may be all foreground: the probabilities are compared too, bit for bit
    assert float(probs["run"].std()) > 0
    np.testing.assert_array_equal(probs["run"], probs["zip"])


def test_the_package_holds_weights_config_labels_versions_card_and_hashes(random_run, package):
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        index = json.loads(zf.read(PackageLayout.hashes))
        fold0 = torch.load(io.BytesIO(zf.read(PackageLayout.fold(0))), weights_only=True)
        card = zf.read(PackageLayout.card).decode()
        config = zf.read(PackageLayout.config)
        versions = json.loads(zf.read(PackageLayout.versions))
    assert names == {PackageLayout.fold(0), PackageLayout.fold(1), *PackageLayout.fixed()} - {
        PackageLayout.fingerprint
    }
    assert set(index["members"]) == names - {PackageLayout.hashes}
    assert "optimizer" not in fold0 and set(fold0) >= {"network", "model", "config"}
    assert config == RunLayout(random_run).config.read_bytes()  # the run's resolved config, as written
    assert versions["training"]["versions"]["torch"] == torch.__version__ and versions["export"]["git_commit"]
    pkg = read_package(package)
    assert pkg.labels["label_values"] == {"0": "background", "1": "pancreas"}
    for text in (
        "pancreas",
        "Not for clinical use",
        "cases: 3",
        "subjects: 2",
        "nih, msd"[:3],
        "0.7 to 0.9",
        "ci95",
    ):
        assert text in card, text
    assert [name for name, _ in pkg.checkpoints] == [PackageLayout.fold(0), PackageLayout.fold(1)]


def test_one_fold_and_wrong_folds(random_run, tmp_path):
    out = export_package(random_run, tmp_path / "f1.zip", folds=[1])
    cfg, folds = model_folds(out)
    assert [k for k, _ in folds] == [1]
    direct = load_predictor(RunLayout(random_run).fold(1).best)
    packaged = load_predictor(out)
    for a, b in zip(direct.networks[0].state_dict().values(), packaged.networks[0].state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(UsageError, match="fold 3"):
        export_package(random_run, tmp_path / "x.zip", folds=[3])
    with pytest.raises(UsageError, match="not a run folder"):
        export_package(tmp_path, tmp_path / "y.zip")


# ---------------------------------------------------------------------------------------- tampering
class _Payload:
    """Unpickling this would call a function (harmless here): what a malicious checkpoint does."""

    def __reduce__(self):
        return (os.getcwd, ())


def _rewrite(
    src: Path, dst: Path, replace: dict | None = None, add: dict | None = None, rehash: bool = False
) -> Path:
    """A copy of the package with members replaced or added, its hash list kept or recomputed."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members.update(replace or {})
    members.update(add or {})
    if rehash:
        index = json.loads(members[PackageLayout.hashes])
        index["members"] = {
            n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)}
            for n, d in members.items()
            if n != PackageLayout.hashes
        }
        members[PackageLayout.hashes] = json.dumps(index).encode()
    with zipfile.ZipFile(dst, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    return dst


def _pickled_checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({"network": {}, "model": {}, "payload": _Payload()}, buffer)
    return buffer.getvalue()


def _edited_config(package: Path) -> bytes:
    with zipfile.ZipFile(package) as zf:
        values = yaml.safe_load(zf.read(PackageLayout.config))
    values["infer"]["overlap"] = 0.25
    return yaml.safe_dump(values).encode()


@pytest.mark.parametrize(
    "case,match",
    [
        ("changed_byte", "corrupt|SHA-256|not a readable zip"),
        ("edited_member", "folds/fold_1.pt'? does not match its SHA-256"),
        ("dotdot", r"'\.\./x' points outside"),
        ("absolute", "'/etc/x' has an absolute path"),
        ("unexpected", "unexpected member 'notes.txt'"),
        ("unlisted", "'notes.txt' is not in SHA256SUMS.json|unexpected member"),
        ("pickle", "member folds/fold_0.pt: refused: the file needs pickling"),
        ("oversized", "over the 100000-byte limit"),
    ],
)
def test_tampered_packages_are_refused_in_one_line(package, scan, tmp_path, capsys, case, match):
    bad = tmp_path / "bad.zip"
    if case == "changed_byte":
        data = bytearray(package.read_bytes())
        with zipfile.ZipFile(package) as zf:
            info = zf.getinfo(PackageLayout.fold(1))
        offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
        data[offset] ^= 0xFF
        bad.write_bytes(bytes(data))
    elif case == "edited_member":
        _rewrite(package, bad, replace={PackageLayout.fold(1): package.read_bytes()[:5000]})
    elif case == "dotdot":
        _rewrite(package, bad, add={"../x": b"x"}, rehash=True)
    elif case == "absolute":
        _rewrite(package, bad, add={"/etc/x": b"x"}, rehash=True)
    elif case == "unexpected":
        _rewrite(package, bad, add={"notes.txt": b"x"}, rehash=True)
    elif case == "unlisted":
        _rewrite(package, bad, add={"notes.txt": b"x"})
    elif case == "pickle":  # hashes recomputed: they detect damage, not an attacker; weights_only does
        _rewrite(package, bad, replace={PackageLayout.fold(0): _pickled_checkpoint()}, rehash=True)
    else:
        bad = package
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError, match=match) as err:
        read_package(bad, **({"max_member_bytes": 100_000} if case == "oversized" else {}))
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was extracted
    if case in ("dotdot", "pickle"):  # the CLI: one line, exit 2, nothing written
        capsys.readouterr()
        code = main(["infer", "--model", str(bad), "--input", str(scan), "--out", str(tmp_path / "out")])
        err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2 and len(err_lines) == 1 and "CheckpointError" in err_lines[0]
        assert not (tmp_path / "out").exists() and not (tmp_path.parent / "x").exists()


def test_an_edited_config_is_refused_but_a_rehashed_one_is_read(package, tmp_path):
    edited = {PackageLayout.config: _edited_config(package)}
    with pytest.raises(CheckpointError, match="config.yaml' does not match its SHA-256"):
        read_package(_rewrite(package, tmp_path / "a.zip", replace=edited))
    assert (
        read_package(_rewrite(package, tmp_path / "b.zip", replace=edited, rehash=True)).config.infer.overlap
        == 0.25
    )
