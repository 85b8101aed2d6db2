"""Datasets that cache the deterministic part of a chain (``data.cache``)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import json_hashing
from monai.transforms import Compose
from monai.transforms.transform import RandomizableTrait, Transform
from monai.utils import TraceKeys

from pipeline.core.config import Config
from pipeline.core.errors import ConfigError
from transforms.compose import UnwrapErrorsMixin

__all__ = ["CACHE_VERSION", "cache_key", "make_dataset"]

CACHE_VERSION = 1  # bump when the deterministic steps change their output for the same config


# What a cached volume holds besides tensors and plain types: MONAI's trace keys and the numpy
# affine that Orientationd records. Allowed only while reading our own cache files.
_NP_CORE = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
_CACHE_SAFE_GLOBALS = [
    TraceKeys,
    _NP_CORE.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    *(type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.int16, np.uint8, np.bool_)),
]


class _Dataset(UnwrapErrorsMixin, Dataset):
    pass


class _CacheDataset(UnwrapErrorsMixin, CacheDataset):
    pass


class _CTPersistentDataset(UnwrapErrorsMixin, PersistentDataset):
    """``PersistentDataset`` that can read back its MetaTensors with ``torch.load(weights_only=True)``.

    Without the allow-list every read fails, MONAI takes the file for corrupt and recomputes it:
    a disk cache that never hits.
    """

    def _cachecheck(self, item_transformed):
        with torch.serialization.safe_globals(_CACHE_SAFE_GLOBALS):
            return super()._cachecheck(item_transformed)


def _deterministic_names(transform) -> list[str]:
    chain = transform.transforms if isinstance(transform, Compose) else [transform]
    names = []
    for t in chain:
        if isinstance(t, RandomizableTrait) or not isinstance(t, Transform):
            break
        names.append(type(t).__name__)
    return names


def cache_key(transform, cfg: Config) -> str:
    """Hash of everything that shapes a cached volume: the deterministic steps and the data config.

    A changed spacing, window, fingerprint statistics, crop or patch size gives new cache files
    instead of silently reusing stale ones. The fingerprint counts by the values the config holds
    (``data.fingerprint_values``), not by its file's name or whether the file is still there.
    """
    data = dataclasses.asdict(cfg.data)
    for field in ("augment", "cache", "cache_dir", "num_workers", "pos_fraction", "samples_per_volume"):
        data.pop(field, None)
    data.pop("fingerprint", None)
    data["fingerprint_values"].pop("source", None)
    payload = {"version": CACHE_VERSION, "steps": _deterministic_names(transform), "data": data}
    return json_hashing(json.loads(json.dumps(payload, default=str))).decode("utf-8")[:16]


def make_dataset(
    records: Sequence[dict], transform, cfg: Config, cache_dir: str | Path | None = None
) -> Dataset:
    """A MONAI dataset over ``records`` that caches the chain's steps before its first random one.

    Args:
        records: dicts with ``case_id``, ``image`` and optionally ``label``, ``label_map``.
        transform: a chain from :mod:`transforms.chains`.
        cfg: the config; ``data.cache`` picks ``"memory"`` (``CacheDataset``), ``"disk"``
            (``PersistentDataset`` in ``cache_dir`` or ``data.cache_dir``) or ``"none"`` (``Dataset``).
        cache_dir: folder for ``"disk"``; overrides ``data.cache_dir``.

    Returns:
        The dataset; items are what ``transform`` returns (a list of patches for the training chain).
        Indexing raises the pipeline's errors (e.g. ``ImageError``) as themselves.

    Raises:
        ConfigError: ``"disk"`` without a cache folder (neither ``cache_dir`` nor ``data.cache_dir``).
    """
    mode = cfg.data.cache
    records = list(records)
    if mode == "none":
        return _Dataset(records, transform)
    if mode == "memory":
        workers = max(int(cfg.data.num_workers), 1)
        # copy_cache=False: no deep copy of the whole cached volume per item (a third of the paper
        # recipe's CPU time per patch). Nothing writes into it: the patch sampler hands out copies of
        # the patches (transforms/sampling.py), the rest of the chain works on those.
        return _CacheDataset(records, transform, num_workers=workers, progress=False, copy_cache=False)
    folder = cache_dir or cfg.data.cache_dir  # "disk" (data.cache is checked when the config is loaded)
    if not folder:
        raise ConfigError(
            "config key data.cache_dir: required when data.cache is 'disk'", key="data.cache_dir"
        )
    ds = _CTPersistentDataset(records, transform, cache_dir=Path(folder), track_meta=True)
    ds.transform_hash = cache_key(transform, cfg)  # appended to each item's hash in the file name
    return ds
