"""MONAI transform chains for CT: loading, geometry, intensity, patch sampling, augmentation.

The public API is re-exported here; :mod:`transforms.chains` is the one place that builds chains.
"""

from __future__ import annotations

from transforms.chains import (
    augmentation_device,
    build_infer_transforms,
    build_train_transforms,
    build_val_transforms,
    invert_to_original,
)
from transforms.dataset import make_dataset
from transforms.geometry import BodyCropd, CTSpacingd
from transforms.intensity import build_intensity
from transforms.io import LoadCTd, load_volume
from transforms.labels import MapLabelsd, labels_to_regions, parse_label_map, regions_to_labels
from transforms.readers import DicomSeriesReader, NiftiReader, list_dicom_series

__all__ = [
    "augmentation_device",
    "build_train_transforms",
    "build_val_transforms",
    "build_infer_transforms",
    "invert_to_original",
    "make_dataset",
    "build_intensity",
    "BodyCropd",
    "CTSpacingd",
    "DicomSeriesReader",
    "NiftiReader",
    "LoadCTd",
    "MapLabelsd",
    "list_dicom_series",
    "load_volume",
    "parse_label_map",
    "labels_to_regions",
    "regions_to_labels",
]
