"""CMC-COV19D Sec. 3.2 augmentations on volume batches and the two-view mixer."""

from __future__ import annotations

import pytest
import torch

from chestdx.data.volume_augment import cmc_augment, depth_crop, two_views
from chestdx.errors import ConfigError
from chestdx.mixing import build_mixer


def test_shapes_range_and_determinism():
    x = torch.rand(2, 1, 16, 32, 32)
    y = cmc_augment(x, depth=8, crop_scale=(0.5, 0.9), brightness=0.2, contrast=0.2,
                    generator=torch.Generator().manual_seed(1))
    assert y.shape == (2, 1, 8, 32, 32) and y.dtype == x.dtype
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    y2 = cmc_augment(x, depth=8, crop_scale=(0.5, 0.9), brightness=0.2, contrast=0.2,
                     generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(y, y2)
    # no crop, no intensity change, full depth: identity
    torch.testing.assert_close(cmc_augment(x, None, (1.0, 1.0), 0.0, 0.0), x)
    with pytest.raises(ConfigError, match="crop_scale"):
        cmc_augment(x, crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="B, C, D, H, W"):
        cmc_augment(torch.rand(2, 1, 32, 32))


def test_depth_crop_is_a_contiguous_block_or_a_resize():
    x = torch.arange(10.0).view(1, 1, 10, 1, 1).expand(1, 1, 10, 2, 2)
    c = depth_crop(x, 4, random=False)
    assert c[0, 0, :, 0, 0].tolist() == [3.0, 4.0, 5.0, 6.0]
    r = depth_crop(x, 4, generator=torch.Generator().manual_seed(0))[0, 0, :, 0, 0]
    assert (r[1:] - r[:-1]).tolist() == [1.0, 1.0, 1.0]
    assert depth_crop(x, 20).shape[2] == 20


def test_two_views_interleaved_and_mixer_repeats_labels():
    x = torch.stack([torch.full((1, 6, 8, 8), 0.2), torch.full((1, 6, 8, 8), 0.8)])
    v = two_views(x, depth=4, crop_scale=(1.0, 1.0), brightness=0.0, contrast=0.0)
    assert v.shape == (4, 1, 4, 8, 8)
    assert [round(float(t.mean()), 3) for t in v] == [0.2, 0.2, 0.8, 0.8]
    mixer = build_mixer("cmc_views", 1.0, {"depth": 4}, 2)
    batch = {"image": x, "label": torch.tensor([0, 1]), "target": torch.eye(2),
             "site": torch.tensor([0, 1]), "index": torch.tensor([5, 6]), "lesion": torch.zeros_like(x)}
    out = mixer(None, batch)
    assert out["image"].shape == (4, 1, 4, 8, 8) and int(out["num_views"]) == 2
    assert out["label"].tolist() == [0, 0, 1, 1] and out["index"].tolist() == [5, 5, 6, 6]
    assert out["target"].shape == (4, 2) and "lesion" not in out
