"""Attention maps -> masks (explain/attention_masks.py): Otsu on hand-made maps, sqrt product, IoU."""

from __future__ import annotations

import math

import numpy as np
import torch

from chestdx.explain.attention_masks import (
    attention_masks,
    combine_attention,
    mask_iou,
    otsu_mask,
    sequence_attention_figure,
)


def test_otsu_mask_on_a_two_level_map():
    m = np.full((6, 6), 0.1)
    m[1:3, 2:5] = 0.9  # a 2 x 3 hot block
    mask = otsu_mask(m)
    want = np.zeros((6, 6), bool)
    want[1:3, 2:5] = True
    assert (mask == want).all()


def test_otsu_mask_of_a_constant_map_is_empty():
    assert not otsu_mask(np.full((4, 4), 0.25)).any()


def test_combine_is_sqrt_of_product_at_image_size():
    a1 = torch.full((1, 2, 2), 0.25)  # uniform softmax over 4 positions
    a2 = torch.tensor([[[1.0]]])  # a single position
    out = combine_attention(a1, a2, (4, 4))
    assert out.shape == (1, 4, 4)
    assert torch.allclose(out, torch.full((1, 4, 4), math.sqrt(0.25)))
    # a hot corner in both maps survives the product; elsewhere one small factor damps it
    a1 = torch.tensor([[[0.7, 0.1], [0.1, 0.1]]])
    a2 = torch.tensor([[[0.4, 0.2], [0.2, 0.2]]])
    out = combine_attention(a1, a2)
    assert math.isclose(float(out[0, 0, 0]), math.sqrt(0.7 * 0.4), rel_tol=1e-5)
    assert math.isclose(float(out[0, 1, 1]), math.sqrt(0.1 * 0.2), rel_tol=1e-5)
    heat, masks = attention_masks({"att1": a1, "att2": a2}, (2, 2))
    assert masks.tolist() == [[[True, False], [False, False]]]


def test_mask_iou_by_hand():
    p = np.zeros((4, 4), bool)
    t = np.zeros((4, 4), bool)
    p[0, :3] = True  # 3 pixels
    t[0, 1:] = True  # 3 pixels, 2 shared -> IoU 2 / 4
    assert mask_iou(p, t) == 0.5
    assert math.isnan(mask_iou(np.zeros((2, 2)), np.zeros((2, 2))))


def test_sequence_attention_figure(tmp_path):
    rng = np.random.default_rng(0)
    path = sequence_attention_figure(rng.random((4, 8, 8)), rng.random((4, 8, 8)), [0.1, 0.2, 0.3, 0.4],
                                     tmp_path / "fig6.png", title="scan")
    assert path.is_file() and path.stat().st_size > 0
