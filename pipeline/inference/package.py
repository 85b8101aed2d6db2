"""A trained model as one zip a colleague can take away: ``pancreas-seg export RUN --out model.zip``.

The zip (member names in :class:`pipeline.core.layout.PackageLayout`) holds each fold's network
weights (no optimizer state), the run's resolved ``config.yaml``, the fingerprint when the run used
one, the label values and class names, package versions and git commit, ``MODEL_CARD.md``, and
``SHA256SUMS.json`` with the SHA-256 and size of every other member.

:func:`read_package` checks a zip before it uses anything in it: no absolute or ``..`` member
names, no member over a size limit, no member that a package does not have, every member listed in
``SHA256SUMS.json`` with a matching hash and nothing listed missing; weights are read in memory with
``torch.load(weights_only=True)``, so a member that needs unpickling is refused. Nothing is
extracted to disk. The hashes detect damage and edits after export; they are not a signature (who
edits the weights can rewrite the hashes too), which is why the weights are loaded without pickle.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
import yaml

from pipeline.core.checkpoint import FORMAT, load_checkpoint, load_checkpoint_bytes
from pipeline.core.config import Config, load_config, provenance, update_config
from pipeline.core.errors import CheckpointError, UsageError
from pipeline.core.fileio import atomic_write
from pipeline.core.label_map import class_names
from pipeline.core.layout import PackageLayout, RunLayout
from pipeline.inference.model_card import model_card

__all__ = [
    "PACKAGE_FORMAT",
    "MAX_MEMBER_BYTES",
    "ModelPackage",
    "export_package",
    "read_package",
    "is_package",
    "run_checkpoints",
    "network_payload",
    "model_folds",
]

PACKAGE_FORMAT = "pancreas-seg-model/1"
MAX_MEMBER_BYTES = 2 << 30  # 2 GiB: ~100x the paper's network in float32
_KEEP = ("model", "config", "network", "metric", "epoch")  # what inference needs, and provenance
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass
class ModelPackage:
    """A checked model package.

    Attributes:
        path: the zip.
        config: the training config.
        checkpoints: ``(member, checkpoint dict)`` per fold, by fold number.
        labels: the ``labels.json`` content.
        card: the model card text.
    """

    path: Path
    config: Config
    checkpoints: list[tuple[str, dict]]
    labels: dict
    card: str


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a model package (a ``.zip`` file; checkpoints are zips too, named ``.pt``)."""
    p = Path(path)
    return p.suffix.lower() == ".zip" and p.is_file()


def run_checkpoints(run_dir: str | os.PathLike, folds: list[int] | None = None) -> list[tuple[int, Path]]:
    """``(k, best.pt)`` of the run's folds (all that have one, or exactly ``folds``).

    Raises:
        UsageError: not a run folder, a requested fold without a best checkpoint, or none at all.
    """
    run = RunLayout(run_dir)
    if not run.config.is_file():
        raise UsageError(f"{run.root}: not a run folder (no {run.config.name})")
    found = {f.k: f.best for f in run.folds() if f.k is not None and f.best.is_file()}
    if folds is not None:
        missing = [k for k in folds if k not in found]
        if missing:
            raise UsageError(
                f"{run.root}: no {run.fold(missing[0]).best.relative_to(run.root)} (--fold {missing[0]})"
            )
        found = {k: found[k] for k in folds}
    if not found:
        raise UsageError(f"{run.root}: no fold has a best checkpoint yet (train first)")
    return sorted(found.items())


def network_payload(ckpt: dict) -> dict:
    """A checkpoint reduced to what inference needs: format, model, config, weights, metric, epoch."""
    slim = {k: ckpt[k] for k in _KEEP if k in ckpt}
    if "trainer" in ckpt and isinstance(ckpt["trainer"], dict) and "epoch" not in slim:
        slim["epoch"] = ckpt["trainer"].get("epoch")
    return {"format": FORMAT, **slim}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _members(run_dir: Path, folds: list[int] | None) -> dict[str, bytes]:
    """The package's members (except the hashes) as bytes."""
    run = RunLayout(run_dir)
    chosen = run_checkpoints(run_dir, folds)  # first: it says so when run_dir is not a run folder
    cfg = load_config(run.config)
    members: dict[str, bytes] = {}
    for k, path in chosen:
        buffer = io.BytesIO()
        torch.save(network_payload(load_checkpoint(path)), buffer)
        members[PackageLayout.fold(k)] = buffer.getvalue()
    members[PackageLayout.config] = run.config.read_bytes()
    fingerprint = Path(cfg.data.fingerprint) if cfg.data.fingerprint else None
    if fingerprint is not None and fingerprint.is_file():
        members[PackageLayout.fingerprint] = fingerprint.read_bytes()
    names = class_names(cfg)
    labels = {
        "label_values": {"0": "background", **{str(v): n for v, n in names.items()}},
        "out_channels": int(cfg.model.out_channels),
        "folds": [k for k, _ in chosen],
    }
    members[PackageLayout.labels] = json.dumps(labels, indent=2).encode()
    trained = (yaml.safe_load(run.config.read_text()) or {}).get("provenance") or {}
    versions = {"training": trained, "export": provenance()}
    members[PackageLayout.versions] = json.dumps(versions, indent=2).encode()
    members[PackageLayout.card] = model_card(
        cfg, run_dir, [k for k, _ in chosen], trained or provenance()
    ).encode()
    return members


def export_package(
    run_dir: str | os.PathLike, out: str | os.PathLike, folds: list[int] | None = None
) -> Path:
    """Write the model package of a run's folds to ``out`` (a zip, written atomically).

    Args:
        run_dir: a CV or training run folder.
        out: the zip to write.
        folds: the folds to include (default: every fold with a best checkpoint).

    Returns:
        ``out``.

    Raises:
        UsageError: not a run folder, or no (requested) fold has a best checkpoint.
        CheckpointError: a checkpoint is unreadable or untrusted.
        OutputError: ``out`` cannot be written.
    """
    members = _members(Path(run_dir), folds)
    hashes = {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in members.items()}
    index = {"format": PACKAGE_FORMAT, "members": hashes}
    members = {PackageLayout.hashes: json.dumps(index, indent=2).encode(), **members}

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)

    return atomic_write(out, write)


# ----------------------------------------------------------------------------------------- reading
def _check_names(path: Path, infos: list[zipfile.ZipInfo], limit: int) -> None:
    """Refuse unsafe, oversized, duplicated or unexpected members before anything is read."""
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or _DRIVE.match(name):
            raise CheckpointError(f"{path}: refused: member {name!r} has an absolute path")
        if ".." in parts:
            raise CheckpointError(f"{path}: refused: member {name!r} points outside the package (..)")
        if stat.S_ISLNK(info.external_attr >> 16) or info.is_dir():
            raise CheckpointError(f"{path}: refused: member {name!r} is not a plain file")
        if info.file_size > limit:
            raise CheckpointError(
                f"{path}: refused: member {name!r} is {info.file_size} bytes, over the {limit}-byte limit"
            )
        if name in seen:
            raise CheckpointError(f"{path}: refused: member {name!r} appears twice")
        seen.add(name)
        if name not in PackageLayout.fixed() and PackageLayout.fold_of(name) is None:
            raise CheckpointError(
                f"{path}: refused: unexpected member {name!r} (not part of a model package)"
            )


def _read(zf: zipfile.ZipFile, path: Path, name: str, limit: int) -> bytes:
    """A member's bytes, read at most ``limit`` (+1) bytes far whatever its header claims."""
    try:
        with zf.open(name, mode="r") as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: member {name!r} is corrupt ({exc})") from None
    if len(data) > limit:
        raise CheckpointError(f"{path}: refused: member {name!r} is over the {limit}-byte limit")
    return data


def _read_checked(path: Path, limit: int) -> dict[str, bytes]:
    """Every member's bytes, after the name checks and with every hash verified."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable zip ({exc})") from None
    with zf:
        infos = zf.infolist()
        _check_names(path, infos, limit)
        names = [i.filename for i in infos]
        if PackageLayout.hashes not in names:
            raise CheckpointError(f"{path}: not a model package (no {PackageLayout.hashes})")
        try:
            index = json.loads(_read(zf, path, PackageLayout.hashes, limit))
            listed = dict(index["members"])
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(f"{path}: {PackageLayout.hashes} is not a hash list") from None
        if index.get("format") != PACKAGE_FORMAT:
            raise CheckpointError(
                f"{path}: package format {index.get('format')!r}; this version reads {PACKAGE_FORMAT}"
            )
        unlisted = [n for n in names if n != PackageLayout.hashes and n not in listed]
        absent = [n for n in listed if n not in names]
        if unlisted or absent:
            which = f"member {unlisted[0]!r} is not in" if unlisted else f"{absent[0]!r} is listed in"
            raise CheckpointError(
                f"{path}: refused: {which} {PackageLayout.hashes}" + ("" if unlisted else " but missing")
            )
        data = {}
        for name in names:
            if name == PackageLayout.hashes:
                continue
            content = _read(zf, path, name, limit)
            expected = listed[name].get("sha256") if isinstance(listed[name], dict) else None
            if _sha256(content) != expected:
                raise CheckpointError(
                    f"{path}: refused: member {name!r} does not match its SHA-256 (changed after export)"
                )
            data[name] = content
    return data


def read_package(path: str | os.PathLike, max_member_bytes: int = MAX_MEMBER_BYTES) -> ModelPackage:
    """Check a model package and read it in memory (nothing is extracted).

    Args:
        path: the zip.
        max_member_bytes: refuse a member larger than this (declared or actual size).

    Returns:
        The checked :class:`ModelPackage`.

    Raises:
        CheckpointError: not a readable zip or not a package; an absolute, ``..``, oversized,
            unexpected, unlisted or missing member; a hash mismatch; weights that need unpickling
            or are not a network of the packaged config. Each names the zip and the member.
        ConfigError: the packaged config is not valid for this version.
    """
    path = Path(path)
    data = _read_checked(path, int(max_member_bytes))
    folds = sorted((k, n) for n in data if (k := PackageLayout.fold_of(n)) is not None)
    if not folds or PackageLayout.config not in data:
        raise CheckpointError(f"{path}: not a model package (no fold weights or no {PackageLayout.config})")
    try:
        values = yaml.safe_load(data[PackageLayout.config].decode()) or {}
    except (UnicodeDecodeError, yaml.YAMLError):
        raise CheckpointError(f"{path}: member {PackageLayout.config!r} is not YAML") from None
    cfg = update_config(Config(), values)  # the run's resolved config: the fingerprint is already in it
    checkpoints = [(name, load_checkpoint_bytes(data[name], f"{path}: member {name}")) for _, name in folds]
    try:
        labels = json.loads(data.get(PackageLayout.labels, b"{}"))
    except ValueError:
        raise CheckpointError(f"{path}: member {PackageLayout.labels!r} is not JSON") from None
    card = data.get(PackageLayout.card, b"").decode(errors="replace")
    return ModelPackage(path, cfg, checkpoints, labels, card)


def model_folds(
    source: str | os.PathLike, folds: list[int] | None = None
) -> tuple[Config, list[tuple[int, dict]]]:
    """The config and ``(k, checkpoint)`` of each chosen fold of a run folder or a model package.

    Args:
        source: a run folder or a ``model.zip``.
        folds: the folds to take (default: all there are).

    Raises:
        UsageError: a requested fold is not there, or there is none.
        CheckpointError: see :func:`read_package` and :func:`pipeline.core.checkpoint.load_checkpoint`.
    """
    if is_package(source):
        pkg = read_package(source)
        found = {PackageLayout.fold_of(name): ckpt for name, ckpt in pkg.checkpoints}
        missing = [k for k in folds or [] if k not in found]
        if missing:
            raise UsageError(f"{source}: no fold {missing[0]} in this package (it has {sorted(found)})")
        return pkg.config, [(k, found[k]) for k in (folds if folds is not None else sorted(found))]
    chosen = run_checkpoints(source, folds)
    return load_config(RunLayout(source).config), [(k, load_checkpoint(p)) for k, p in chosen]
