"""Bad inputs for the robustness suite, each tiny (16^3-32^3 voxels) and written once per session.

:func:`build_world` writes a small good dataset (four phantoms with labels, a manifest with two
folds, a config, a checkpoint, predictions) and one file or folder per kind of bad input. The
table in :mod:`tests.robustness.table` says how each subcommand must answer each of them.
"""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from pipeline.core.constants import AIR_HU
from pipeline.core.geometry import spacing_from_affine

__all__ = ["BAD_CASE", "CHECKPOINT_KINDS", "MARKER_NAME", "World", "build_world", "write_dicom_series"]

SHAPE = (32, 32, 16)
SPACING = (2.0, 2.0, 4.0)
BAD_CASE = 3  # the case (g3, RAS, fold 1) whose image or label a bad input replaces
MARKER_NAME = "PWNED"
CHECKPOINT_KINDS = (
    "pickle_payload",
    "pickle_plain",
    "other_architecture",
)  # the file an untrusted checkpoint's payload would create when unpickled


@dataclass
class World:
    """Paths of the good dataset and of the bad inputs (``bad[kind]``)."""

    root: Path
    config: Path  # tiny YAML config
    manifest: Path  # four good cases, two folds
    good_image: Path
    good_label: Path
    checkpoint: Path  # a plain, trusted checkpoint of the tiny network
    preds: Path  # predictions (copies of the labels) for the good cases
    marker: Path  # must never exist
    bad: dict[str, Path] = field(default_factory=dict)  # kind -> bad file/folder
    manifests: dict[str, Path] = field(default_factory=dict)  # kind -> manifest naming it
    runs: dict[str, Path] = field(default_factory=dict)  # checkpoint kind -> a run folder using it


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return path


def _nifti_sform_only(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """A NIfTI whose only geometry is ``affine`` as the sform (works for singular matrices)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(array.shape)
    hdr.set_data_dtype(array.dtype)
    hdr.set_sform(affine, code=1)
    hdr["qform_code"] = 0
    hdr["pixdim"][1:4] = spacing_from_affine(affine)
    nib.save(nib.Nifti1Image(array, None, header=hdr), str(path))
    return path


def _phantoms(folder: Path) -> list[dict]:
    from pipeline.synthetic.phantom import make_phantom, save_phantom

    rows = []
    for i, orientation in enumerate(("RAS", "LPS", "oblique", "RAS")):
        ph = make_phantom(100 + i, shape=SHAPE, spacing=SPACING, orientation=orientation)
        image, label = folder / "images" / f"g{i}.nii.gz", folder / "labels" / f"g{i}.nii.gz"
        save_phantom(ph, image, label)
        rows.append({"case_id": f"g{i}", "subject_id": f"s{i}", "image": str(image), "label": str(label)})
    return rows


def write_dicom_series(folder: Path, uid: str, n: int, rows: int = 16, number: int = 1) -> None:
    """``n`` axial CT slices of ``rows`` x ``rows`` with SeriesInstanceUID ``uid`` into ``folder``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study = "1.2.826.0.1.3680043.8.498.1"
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"s{number}_{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "robust", "Robust^Test"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, uid
        ds.SeriesNumber, ds.InstanceNumber = number, k + 1
        ds.FrameOfReferenceUID = study + ".9"
        ds.ImagePositionPatient = [0.0, 0.0, float(2 * k)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [2.0, 2.0], 2.0
        ds.Rows = ds.Columns = rows
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        yy, xx = np.mgrid[:rows, :rows] - (rows - 1) / 2
        body = np.where(xx**2 + yy**2 < (rows / 3) ** 2, 1024 + 40, 24)  # 40 HU inside, -1000 HU air
        ds.PixelData = body.astype(np.int16).tobytes()
        ds.save_as(str(folder / f"s{number}_{k:03d}.dcm"), enforce_file_format=True)


class _Payload:
    """Unpickling this creates ``path``: the stand-in for code a hostile checkpoint would run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _bad_files(
    bad: Path, img: np.ndarray, label: np.ndarray, aff: np.ndarray, good_nii: Path, marker: Path
) -> dict:
    """The bad files, on the grid of ``good_nii`` (so that only the intended problem differs)."""
    out: dict[str, Path] = {"missing": bad / "missing.nii.gz"}
    (bad / "empty.nii.gz").write_bytes(b"")
    out["empty"] = bad / "empty.nii.gz"
    data = good_nii.read_bytes()
    (bad / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    out["truncated_gzip"] = bad / "truncated.nii.gz"
    raw = bytearray(gzip.decompress(data))
    raw[344:348] = b"XYZ\0"  # the NIfTI magic ("n+1\0") replaced
    (bad / "magic.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    out["wrong_magic"] = bad / "magic.nii.gz"
    out["image_2d"] = _nifti(bad / "flat.nii.gz", img[:, :, 0].copy(), aff)
    out["image_4d"] = _nifti(bad / "series4d.nii.gz", np.stack([img[:16, :16, :8]] * 3, axis=-1), aff)
    out["zero_axis"] = _nifti(bad / "zero.nii.gz", np.zeros((0, 16, 16), np.int16), aff)
    nan = img.astype(np.float32)
    nan[3, 4, 5], nan[6, 7, 8] = np.nan, np.inf
    out["nan_inf"] = _nifti(bad / "nan.nii.gz", nan, aff)
    out["all_air"] = _nifti(bad / "air.nii.gz", np.full(img.shape, AIR_HU, np.int16), aff)
    zero = aff.copy()
    zero[:3, 1] = 0.0  # voxel size 0 along the second axis
    out["spacing_zero"] = _nifti_sform_only(bad / "spacing0.nii.gz", img, zero)
    huge = aff.copy()
    huge[:3, :3] *= 5e5  # 1e6 mm voxels
    out["spacing_huge"] = _nifti(bad / "spacing1e6.nii.gz", img, huge)
    singular = aff.copy()
    singular[:3, 1] = singular[:3, 0]  # two axes along the same direction: no inverse
    out["singular_affine"] = _nifti_sform_only(bad / "singular.nii.gz", img, singular)
    mr = ((img.astype(np.float32) + 1024.0) * (4000.0 / 1400.0)).clip(0, 4000).astype(np.int16)
    out["mr_like"] = _nifti(bad / "mr.nii.gz", mr, aff)
    odd = label.copy()
    odd[odd > 0] = 7
    odd[0, 0, 0] = 3
    out["label_values"] = _nifti(bad / "label_values.nii.gz", odd, aff)
    out["label_grid"] = _nifti(bad / "label_grid.nii.gz", label[:, :, :12].copy(), aff)
    dicom = bad / "two_series"
    write_dicom_series(dicom, "1.2.826.0.1.3680043.8.498.11", 4, number=1)
    write_dicom_series(dicom, "1.2.826.0.1.3680043.8.498.12", 3, number=2)
    out["dicom_two_series"] = dicom
    hdr = nib.Nifti1Header()  # 30000^3 int16 = 54 TB claimed by a 100-byte file
    hdr.set_data_shape((30000, 30000, 30000))
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(aff, code=1)
    with gzip.open(bad / "huge.nii.gz", "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4)
    out["oom_header"] = bad / "huge.nii.gz"
    # checkpoints
    import torch

    torch.save({"network": _Payload(marker), "model": {"name": "attention_unet"}}, bad / "evil.pt")
    out["pickle_payload"] = bad / "evil.pt"
    (bad / "evil_plain.pt").write_bytes(pickle.dumps({"network": _Payload(marker)}))
    out["pickle_plain"] = bad / "evil_plain.pt"
    return out


def _checkpoint(path: Path, cfg, **model_overrides) -> Path:
    import torch

    from models import build_model
    from pipeline.core.checkpoint import save_checkpoint
    from pipeline.core.config import config_to_dict

    mcfg = dataclasses.replace(cfg.model, **model_overrides)
    torch.manual_seed(0)
    net = build_model(mcfg)
    full = config_to_dict(cfg)
    full["model"] = dataclasses.asdict(mcfg)
    payload = {"model": dataclasses.asdict(mcfg), "config": full, "network": net.state_dict()}
    return save_checkpoint(payload, path)


def _manifest(path: Path, rows: list[dict], folds: list[int] | None = None) -> Path:
    df = pd.DataFrame(rows)
    if folds is not None:
        df["fold"] = folds
    cols = [c for c in ("case_id", "subject_id", "image", "label", "fold") if c in df]
    path.write_text(df[cols].to_csv(index=False, lineterminator="\n"))
    return path


def build_world(root: Path, cfg) -> World:
    """Write the good dataset and every bad input under ``root``."""
    from pipeline.core.config import save_config

    root.mkdir(parents=True, exist_ok=True)
    good = _phantoms(root / "good")
    folds = [0, 1, 0, 1]
    config = save_config(cfg, root / "tiny.yaml")
    manifest = _manifest(root / "good" / "manifest.csv", good, folds)
    ref = nib.load(good[BAD_CASE]["image"])
    img = np.asarray(ref.dataobj).astype(np.int16)
    label = np.asarray(nib.load(good[BAD_CASE]["label"]).dataobj).astype(np.uint8)
    bad_dir = root / "bad"
    bad_dir.mkdir()
    marker = root / MARKER_NAME
    world = World(
        root=root,
        config=Path(config),
        manifest=manifest,
        good_image=Path(good[BAD_CASE]["image"]),
        good_label=Path(good[BAD_CASE]["label"]),
        checkpoint=_checkpoint(root / "model.pt", cfg),
        preds=root / "preds",
        marker=marker,
    )
    world.preds.mkdir()
    for r in good:
        shutil.copy(r["label"], world.preds / f"{r['case_id']}.nii.gz")
    world.bad = _bad_files(bad_dir, img, label, ref.affine, world.good_image, marker)
    world.bad["other_architecture"] = _checkpoint(bad_dir / "unet.pt", cfg, name="unet")
    _bad_manifests(world, good, folds)
    for kind in CHECKPOINT_KINDS:
        world.runs[kind] = _run_folder(world, cfg, kind)
    return world


def _run_folder(world: World, cfg, kind: str) -> Path:
    """A run folder whose checkpoints are the bad one: ``fold_0`` would resume from it
    (``epoch_1.pt``), finished ``fold_1`` predicts and draws attention maps with it (``best.pt``)."""
    from pipeline.core.config import save_run_config
    from pipeline.data.manifest import case_records, read_manifest, write_manifest
    from pipeline.evaluation.evaluate import evaluate_cases, write_table

    run = world.root / "runs" / kind
    (run / "fold_0" / "checkpoints").mkdir(parents=True)
    (run / "fold_1" / "checkpoints").mkdir(parents=True)
    save_run_config(cfg, run)
    df = read_manifest(world.manifest)
    write_manifest(df, run / "manifest.csv")
    shutil.copy(world.bad[kind], run / "fold_0" / "checkpoints" / "epoch_1.pt")
    shutil.copy(world.bad[kind], run / "fold_1" / "checkpoints" / "best.pt")
    pairs = []
    for rec in case_records(df):
        if rec["fold"] == 1:
            pred = run / "fold_1" / "predictions" / f"{rec['case_id']}.nii.gz"
            pred.parent.mkdir(exist_ok=True)
            shutil.copy(world.preds / pred.name, pred)
            pairs.append({**rec, "pred": pred})
    write_table(evaluate_cases(pairs), run / "fold_1" / "metrics.csv")
    (run / "fold_1" / "DONE").write_text("done\n")
    return run


def _bad_manifests(world: World, good: list[dict], folds: list[int]) -> None:
    """A manifest per bad input: the bad file replaces the image (or label) of case g3."""
    mdir = world.root / "manifests"
    mdir.mkdir()
    for kind, path in world.bad.items():
        if kind in CHECKPOINT_KINDS:
            continue
        rows = [dict(r) for r in good]
        rows[BAD_CASE]["label" if kind.startswith("label_") else "image"] = str(path)
        world.manifests[kind] = _manifest(mdir / f"{kind}.csv", rows, folds)
    rows = [dict(r) for r in good] + [dict(good[1])]
    world.manifests["duplicate_rows"] = _manifest(mdir / "duplicate_rows.csv", rows, folds + [1])
    rows = [dict(r) for r in good]
    rows[BAD_CASE]["case_id"] = "../../etc/passwd"
    world.manifests["traversal_case_id"] = _manifest(mdir / "traversal_case_id.csv", rows, folds)
    rows = [dict(r) for r in good]
    rows[BAD_CASE]["image"] = "../" * 30 + "etc/passwd"  # resolves to /etc/passwd from any depth
    world.manifests["traversal_path"] = _manifest(mdir / "traversal_path.csv", rows, folds)
    text = world.manifest.read_text()
    (mdir / "bom.csv").write_text("\ufeff" + text, encoding="utf-8")
    world.manifests["bom"] = mdir / "bom.csv"
    (mdir / "semicolons.csv").write_text(text.replace(",", ";"))
    world.manifests["semicolons"] = mdir / "semicolons.csv"
