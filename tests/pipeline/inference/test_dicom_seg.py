"""DICOM SEG with one segment per class, read back by highdicom."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.config import load_config
from pipeline.core.label_map import class_names
from pipeline.inference.dicom_seg import segment_codes, write_dicom_seg
from tests.conftest import SHARED_DATA
from transforms import load_volume

SERIES = SHARED_DATA / "totalsegmentator" / "ct_dicom"
pytest.importorskip("highdicom")
needs_data = pytest.mark.skipif(not SERIES.is_dir(), reason="shared real CT data not present")


@needs_data
def test_seg_has_one_segment_per_class_with_the_masks_of_the_label_map(tmp_path):
    import highdicom as hd
    import pydicom

    vol = load_volume(SERIES)
    shape = tuple(vol.shape[1:])
    mask = np.zeros(shape, np.uint8)
    mask[200:300, 220:320, 2:9] = 1  # "pancreas"
    mask[240:260, 250:270, 4:7] = 2  # "tumour" inside it
    mask[10:20, 10:20, 15:18] = 2  # and a tumour voxel block elsewhere, on other slices
    cfg = load_config(None, ["data.class_names=[pancreas,tumour]", "model.out_channels=3"])
    out = write_dicom_seg(mask, vol.affine.numpy(), SERIES, tmp_path / "a_seg.dcm", "", class_names(cfg))

    seg = hd.seg.segread(str(out))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Pancreas", "Tumour"]
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert types == ["15776009", "108369006"]
    region = seg.SegmentSequence[1].AnatomicRegionSequence[0]
    assert region.CodeValue == "15776009"  # neoplasm, in the pancreas
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(SERIES.iterdir())]
    uids = [str(s.SOPInstanceUID or s.file_meta.MediaStorageSOPInstanceUID) for s in sources]
    z0 = min(float(s.ImagePositionPatient[2]) for s in sources)
    dz = sorted(float(s.ImagePositionPatient[2]) for s in sources)[1] - z0
    slices = [int(round((float(s.ImagePositionPatient[2]) - z0) / dz)) for s in sources]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2], ignore_spatial_locations=True)
    assert pixels.shape[-1] == 2
    for k in (1, 2):
        frames = pixels[..., k - 1]
        assert int(frames.sum()) == int((mask == k).sum()) > 0
        for frame, z in zip(frames, slices):
            np.testing.assert_array_equal(frame, (mask[:, :, z] == k).T)


def test_segment_codes_for_pancreas_tumour_and_other_classes():
    assert segment_codes("pancreas")["type"].value == "15776009"
    tumour = segment_codes("Tumour")
    assert (tumour["category"].value, tumour["type"].value) == ("49755003", "108369006")
    assert segment_codes("cyst")["type"].value == "85756007"
