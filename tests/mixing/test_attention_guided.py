"""Attention-guided mix-up, patching and dimming on hand-made maps; the mixer's batch layout."""

from __future__ import annotations

import pytest
import torch

from chestdx.config import ModelConfig
from chestdx.errors import ConfigError
from chestdx.mixing import build_mixer
from chestdx.mixing.attention_guided import (
    attention_dimming,
    attention_mixup,
    attention_patching,
    choose_maps,
    normalize_attention,
    region_box,
)
from chestdx.models import build_model

IMG = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)


def _peak(y: int, x: int) -> torch.Tensor:
    m = torch.zeros(1, 4, 4)
    m[0, y, x] = 1.0
    return m


def test_region_box_padding_and_clipping():
    region = torch.zeros(10, 10, dtype=torch.bool)
    region[3:5, 6:8] = True
    assert region_box(region, 0.0) == (3, 6, 5, 8)
    assert region_box(region, 0.1) == (2, 5, 6, 9)  # one pixel (0.1 * 10) each side
    assert region_box(region, 0.3) == (0, 3, 8, 10)  # clipped to the image
    assert region_box(torch.zeros(10, 10, dtype=torch.bool), 0.1) == (0, 0, 10, 10)  # empty: whole image


def test_normalize_attention_divides_by_max_and_keeps_zero_maps():
    maps = torch.tensor([[[0.0, 2.0], [1.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]])
    out = normalize_attention(maps)
    assert out[0].tolist() == [[0.0, 1.0], [0.5, 0.25]]
    assert out[1].abs().sum() == 0
    assert normalize_attention(maps, (4, 4)).shape == (2, 4, 4)


def test_mixup_blends_the_enlarged_box():
    out, boxes = attention_mixup(IMG, _peak(1, 1), theta=0.5, gamma=0.6, padding=0.0)
    assert boxes == [(1, 1, 2, 2)]  # region {(1, 1)}: the pixel of value 5, enlarged to 4 x 4
    assert torch.allclose(out, 0.6 * IMG + 0.4 * 5.0)
    _, boxes = attention_mixup(IMG, _peak(1, 1), theta=0.5, padding=0.25)
    assert boxes == [(0, 0, 3, 3)]


def test_mixup_with_empty_region_is_identity():
    out, boxes = attention_mixup(IMG, torch.zeros(1, 4, 4), theta=0.5)
    assert boxes == [(0, 0, 4, 4)]
    assert torch.allclose(out, IMG)


def test_patching_pastes_the_region_elsewhere():
    m = torch.zeros(1, 4, 4)
    m[0, 0:2, 0:2] = torch.tensor([[1.0, 0.8], [0.7, 0.6]])
    out, boxes = attention_patching(IMG, m, theta=0.5, padding=0.0, positions=[(2, 2)])
    assert boxes == [(0, 0, 2, 2)]
    expected = IMG.clone()
    expected[0, 0, 2:4, 2:4] = torch.tensor([[0.0, 1.0], [4.0, 5.0]])
    assert torch.equal(out, expected)
    assert torch.equal(IMG, torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4))  # input untouched
    with pytest.raises(ValueError):
        attention_patching(IMG, m, theta=0.5, padding=0.0, positions=[(3, 3)])


def test_dimming_by_hand():
    img = torch.tensor([[[[10.0, 20.0], [30.0, 40.0]]]])
    m = torch.tensor([[[1.0, 0.4], [0.2, 0.0]]])
    out = attention_dimming(img, m, theta=0.3, dim_value=0.001)
    assert torch.allclose(out, torch.tensor([[[[0.01, 0.02], [30.0, 40.0]]]]))
    # strict threshold (Eq. 4): a value equal to theta is not dimmed
    assert torch.allclose(attention_dimming(img, m, theta=0.4), torch.tensor([[[[0.01, 20.0], [30.0, 40.0]]]]))


def test_choose_maps_never_picks_an_empty_map():
    parts = torch.zeros(3, 4, 2, 2)
    parts[:, 2] = 1.0  # only map 2 has activation (sqrt of an all-zero mass is ~0)
    import numpy as np

    chosen = choose_maps(parts, 5, np.random.default_rng(0))
    assert chosen.shape == (5, 3, 2, 2)
    assert torch.all(chosen == 1.0)


def test_mixer_lays_out_originals_then_views():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="magsd", backbone="resnet18", params={"num_maps": 4}), num_classes=3)
    mixer = build_mixer("attention_guided", 1.0, {"views": ["mixup", "dimming", "patching"], "seed": 0}, 3)
    images = torch.randn(4, 1, 32, 32)
    labels = torch.tensor([0, 1, 2, 1])
    batch = {"image": images, "label": labels, "site": torch.zeros(4, dtype=torch.long), "index": torch.arange(4)}
    out = mixer(model, batch)
    assert out["image"].shape == (16, 1, 32, 32)
    assert int(out["num_views"]) == 4
    assert torch.equal(out["image"][:4], images)
    assert out["label"].tolist() == labels.tolist() * 4
    assert out["target"].shape == (16, 3) and out["index"].tolist() == list(range(4)) * 4
    assert not torch.equal(out["image"][4:8], images)  # mix-up changed the images
    # probability 0: the batch passes unchanged, one view
    same = build_mixer("attention_guided", 0.0, {}, 3)(model, batch)
    assert torch.equal(same["image"], images) and int(same["num_views"]) == 1


def test_mixer_errors():
    with pytest.raises(ConfigError):
        build_mixer("attention_guided", 1.0, {"views": ["rotate"]}, 2)
    with pytest.raises(ConfigError):
        build_mixer("attention_guided", 1.0, {"theta_m": [0.7, 0.2]}, 2)
    plain = build_model(ModelConfig(backbone="resnet18", head_hidden=8), num_classes=2)
    mixer = build_mixer("attention_guided", 1.0, {}, 2)
    with pytest.raises(ConfigError, match="attention maps"):
        mixer(plain, {"image": torch.randn(2, 1, 32, 32), "label": torch.tensor([0, 1])})
