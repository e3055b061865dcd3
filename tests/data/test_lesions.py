"""Lesion instances from masks, segmentation layouts and the segmentation data set."""

from __future__ import annotations

import numpy as np
import pytest

from chestdx.data.lesions import instance_target, load_segmentation_source, mask_instances


def test_connected_components_become_instances():
    m = np.zeros((10, 12), bool)
    m[1:3, 1:4] = True  # 6 px
    m[5:9, 6:11] = True  # 20 px
    m[9, 11] = True  # touches diagonally: same component (8-connectivity)
    m[0, 11] = True  # 1 px: dropped with min_area 2
    masks, boxes = mask_instances(m, min_area=2)
    assert masks.shape == (2, 10, 12) and masks.dtype == np.uint8
    assert boxes.tolist() == [[1, 1, 4, 3], [6, 5, 12, 10]]
    assert masks[1].sum() == 21
    assert mask_instances(np.zeros((4, 4)), 0)[0].shape == (0, 4, 4)  # negative image


def test_instance_target_for_torchvision():
    t = instance_target(np.pad(np.ones((2, 2)), 1)[None].astype(np.float32))
    assert t["boxes"].tolist() == [[1.0, 1.0, 3.0, 3.0]]
    assert t["labels"].tolist() == [1] and t["masks"].shape == (1, 4, 4)


def test_phantom_masks_as_segmentation_data(phantom_slices):
    from chestdx.config import DataConfig
    from chestdx.data.lesions import SegmentationDataset, collate_segmentation

    samples = load_segmentation_source(phantom_slices.parent, ("normal", "pneumonia", "covid"))
    assert samples and all(s.mask for s in samples)
    cfg = DataConfig(image_size=64, class_names=("normal", "pneumonia", "covid"), cache=False)
    pos = [s for s in samples if s.label == 2][:2] + [s for s in samples if s.label == 0][:1]
    ds = SegmentationDataset(pos, cfg, min_area=4)
    batch = collate_segmentation([ds[i] for i in range(len(ds))])
    assert batch["images"].shape == (3, 1, 64, 64)
    assert len(batch["targets"][0]["boxes"]) >= 1  # COVID-19 phantom slices carry lesions
    assert len(batch["targets"][2]["boxes"]) == 0  # a normal slice is a negative image


def test_missing_source_is_a_dataset_error(tmp_path):
    from chestdx.errors import DatasetError

    with pytest.raises(DatasetError):
        load_segmentation_source(tmp_path / "nope", ("normal", "pneumonia", "covid"))


@pytest.mark.realdata
def test_real_segmentation_slices(real_data):
    from chestdx.config import DataConfig
    from chestdx.data.lesions import SegmentationDataset, load_segmentation_sources

    seg, inf = real_data / "covid19_ct_seg_slices", real_data / "infnet_covid_semiseg_test"
    if not seg.is_dir() or not inf.is_dir():
        pytest.skip("covid19_ct_seg_slices / infnet_covid_semiseg_test absent")
    names = ("normal", "pneumonia", "covid")
    samples = load_segmentation_sources([seg, inf], names, (0.7, 0.15, 0.15), seed=0)
    by_group: dict[str, set[str]] = {}
    for s in samples:
        by_group.setdefault(s.patient_id, set()).add(str(s.split))
    assert all(len(v) == 1 for v in by_group.values())  # one volume group, one split
    assert {s.split for s in samples if s.site == "infnet_covid_semiseg_test"} == {"test"}
    cfg = DataConfig(image_size=128, class_names=names, cache=False, box_crop=False)
    few = [s for s in samples if s.site == "covid19_ct_seg_slices"][200:202] + \
          [s for s in samples if s.site == "infnet_covid_semiseg_test"][:1]
    items = [SegmentationDataset(few, cfg, min_area=4)[i] for i in range(3)]
    for it in items:
        assert it["image"].shape == (1, 128, 128)
        assert len(it["target"]["boxes"]) >= 1
        b = it["target"]["boxes"]
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
