"""Attention localisation: thresholded maps, enclosing boxes and IoU, by hand."""

from __future__ import annotations

import pytest
import torch

from chestdx.config import ModelConfig
from chestdx.errors import ConfigError
from chestdx.explain.localize import (
    attention_heatmap,
    box_mask,
    heatmap_mask,
    localization_iou,
    mask_box,
    mask_iou,
)
from chestdx.models import build_model


def test_mask_box_and_box_mask():
    m = torch.zeros(6, 6, dtype=torch.bool)
    m[1, 2] = m[3, 4] = True
    assert mask_box(m) == (1, 2, 4, 5)
    assert box_mask((1, 2, 4, 5), (6, 6)).sum() == 9
    assert mask_box(torch.zeros(3, 3, dtype=torch.bool)) is None


def test_mask_iou_by_hand():
    a = torch.zeros(1, 4, 4, dtype=torch.bool)
    b = torch.zeros(1, 4, 4, dtype=torch.bool)
    a[0, :2, :2] = True  # 4 pixels
    b[0, 1:3, 1:3] = True  # 4 pixels, 1 shared
    assert mask_iou(a, b).item() == pytest.approx(1 / 7)
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert mask_iou(empty, empty).item() == 1.0 and mask_iou(a, empty).item() == 0.0


def test_heatmap_threshold():
    hm = torch.tensor([[0.2, 0.5], [0.51, 1.0]])
    assert heatmap_mask(hm, 0.5).tolist() == [[False, False], [True, True]]
    with pytest.raises(ConfigError):
        heatmap_mask(hm, 1.5)


def test_attention_heatmap_and_iou_on_a_model():
    model = build_model(ModelConfig(name="magsd", backbone="resnet18", params={"num_maps": 4}), 2).eval()
    x = torch.randn(2, 1, 64, 64)
    hm = attention_heatmap(model, x)
    assert hm.shape == (2, 64, 64) and hm.min() >= 0 and hm.max() <= 1 + 1e-6
    iou = localization_iou(model, x, torch.ones(2, 1, 64, 64), threshold=0.0, boxes=True)
    assert iou.shape == (2,) and (iou > 0).all()
    plain = build_model(ModelConfig(backbone="resnet18", head_hidden=8), 2)
    with pytest.raises(ConfigError, match="attention"):
        attention_heatmap(plain, x)


def test_evaluation_localisation_scores_mean_attention_masks_and_boxes():
    """`chestdx evaluate`'s localisation (explain.attention_masks.localisation_iou) on a MAG-SD-style
    output: mask = mean attention above half its maximum; box IoU from the enclosing rectangles."""
    from chestdx.explain.attention_masks import localisation_iou
    from chestdx.models.base import ModelOutput

    att = torch.zeros(1, 4, 4)
    att[0, 0, 0:2] = 1.0  # predicted: 2 pixels in the top row
    att[0, 2, 1] = 0.4  # below half the peak: not in the mask

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return ModelOutput(logits=torch.zeros(len(x), 2), maps={"attention": att.expand(len(x), 4, 4)})

    lesion = torch.zeros(2, 1, 4, 4)
    lesion[0, 0, 0, 1:3] = 1  # overlaps 1 of 3 union pixels; boxes (0,1)-(1,3) vs (0,0)-(1,2): 1 of 3
    lesion[1, 0, 1:3, 0:2] = 1  # no overlap
    batch = {"image": torch.zeros(2, 1, 4, 4), "lesion": lesion, "has_mask": torch.ones(2),
             "index": torch.tensor([0, 1])}
    res = localisation_iou(Fixed(), [batch], overlays_dir=None)
    assert res["n_images"] == 2 and "half its maximum" in res["method"]
    assert [r["iou"] for r in res["per_image"]] == pytest.approx([1 / 3, 0.0])
    assert [r["box_iou"] for r in res["per_image"]] == pytest.approx([1 / 3, 0.0])
    assert res["iou_mean"] == pytest.approx(1 / 6) and res["dice_mean"] == pytest.approx(0.25)
