"""SnapMix: label weights on hand-made CAMs, pasting with fixed boxes, the mixer on a small model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chestdx.errors import ConfigError
from chestdx.mixing import build_mixer, snapmix, snapmix_weights
from chestdx.mixing.box import random_box
from chestdx.models import ResNetMLP

CAM_A = torch.tensor([[1.0, 2.0, 0.0, 0.0],
                      [3.0, 4.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 10.0]])  # total 20, top-left 2x2 holds 10


def test_weights_by_hand():
    cam_b = torch.ones(4, 4)  # total 16
    rho_a, rho_b = snapmix_weights(CAM_A[None], cam_b[None], (0, 0, 2, 2), (1, 1, 3, 4))
    assert rho_a.tolist() == [pytest.approx(10 / 20)]
    assert rho_b.tolist() == [pytest.approx(6 / 16)]  # 2 x 3 box of ones


def test_empty_cam_falls_back_to_area():
    rho_a, rho_b = snapmix_weights(torch.zeros(1, 4, 4), CAM_A[None], (0, 0, 2, 2), (3, 3, 4, 4))
    assert rho_a.tolist() == [pytest.approx(4 / 16)]
    assert rho_b.tolist() == [pytest.approx(10 / 20)]


def test_paste_and_labels_with_fixed_boxes():
    imgs = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4)
    cams = torch.stack([CAM_A, torch.ones(4, 4)])
    labels = torch.tensor([0, 1])
    perm = torch.tensor([1, 0])
    mixed, target, info = snapmix(imgs, labels, cams, num_classes=2, perm=perm,
                                  boxes=((0, 0, 2, 2), (2, 2, 4, 4)))
    # image 0 gets image 1's bottom-right 2x2 in its top-left 2x2; the rest is untouched
    assert torch.equal(mixed[0, :, :2, :2], imgs[1, :, 2:, 2:])
    keep = torch.ones(4, 4, dtype=torch.bool)
    keep[:2, :2] = False
    assert torch.equal(mixed[0, 0][keep], imgs[0, 0][keep])
    assert torch.equal(mixed[1, :, :2, :2], imgs[0, :, 2:, 2:])
    # image 0: rho_a = 10/20 (its CAM in the covered box), rho_b = 4/16 (partner's ones-CAM in box b)
    assert torch.allclose(target[0], torch.tensor([1 - 0.5, 0.25]))
    # image 1: rho_a = 4/16 of its ones-CAM; rho_b = image 0's CAM in the bottom-right box = 10/20
    assert torch.allclose(target[1], torch.tensor([0.5, 1 - 0.25]))
    assert abs(float(target[1].sum()) - 1.25) < 1e-6  # weights need not sum to 1 (SnapMix)
    assert info["mixed"] and info["same"].tolist() == [False, False]
    assert torch.allclose(info["rho_a"], torch.tensor([0.5, 0.25]))
    assert not torch.equal(mixed, imgs)  # the input is not modified in place
    assert imgs[0, 0, 0, 0] == 0


def test_same_label_keeps_label_and_resize():
    imgs = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4)
    cams = torch.stack([CAM_A, torch.ones(4, 4)])
    target = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    mixed, new, info = snapmix(imgs, target, cams, perm=torch.tensor([1, 0]),
                               boxes=((0, 0, 2, 2), (3, 3, 4, 4)))
    assert torch.equal(new, target)
    assert info["same"].tolist() == [True, True]
    # a 1x1 box resized into a 2x2 box is constant
    assert torch.equal(mixed[0, 0, :2, :2], torch.full((2, 2), float(imgs[1, 0, 3, 3])))


def test_empty_box_leaves_batch_unmixed():
    imgs = torch.randn(2, 1, 4, 4)
    t = torch.eye(2)
    mixed, new, info = snapmix(imgs, t, torch.ones(2, 4, 4), boxes=((0, 0, 0, 2), (0, 0, 2, 2)))
    assert torch.equal(mixed, imgs) and torch.equal(new, t) and not info["mixed"]


def test_random_boxes_reproducible_and_in_bounds():
    imgs = torch.randn(4, 1, 16, 16)
    t = torch.eye(2)[torch.tensor([0, 1, 0, 1])]
    cams = torch.rand(4, 16, 16)
    a = snapmix(imgs, t, cams, np.random.default_rng(3))
    b = snapmix(imgs, t, cams, np.random.default_rng(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert sorted(a[2]["perm"].tolist()) == [0, 1, 2, 3]
    for _ in range(50):
        y1, x1, y2, x2 = random_box(16, 12, float(np.random.default_rng().beta(1, 1)), np.random.default_rng())
        assert 0 <= y1 <= y2 <= 16 and 0 <= x1 <= x2 <= 12
    g = torch.Generator().manual_seed(5)
    c = snapmix(imgs, t, cams, g)
    assert c[0].shape == imgs.shape and (c[1] >= 0).all()


def test_bad_alpha():
    with pytest.raises(ConfigError):
        snapmix(torch.zeros(1, 1, 4, 4), torch.eye(2)[:1], torch.zeros(1, 4, 4), alpha=0)
    with pytest.raises(ConfigError):
        build_mixer("snapmix", 1.0, {"alpha": -1.0}, 2)


def test_mixer_on_small_model():
    torch.manual_seed(0)
    model = ResNetMLP(2, "resnet18", head_hidden=16)
    batch = {"image": torch.randn(4, 1, 64, 64), "label": torch.tensor([0, 1, 1, 0]),
             "site": torch.tensor([0, 0, 1, 1])}
    mixer = build_mixer("snapmix", 1.0, {"seed": 0}, 2)
    out = mixer(model, batch)
    assert out["image"].shape == (4, 1, 64, 64)
    assert out["target"].shape == (4, 2) and (out["target"] >= 0).all()
    assert torch.equal(out["label"], batch["label"]) and torch.equal(out["site"], batch["site"])
    assert out["mix_perm"].shape == (4,)
    assert all(p.grad is None for p in model.parameters())

    never = build_mixer("snapmix", 0.0, {}, 2)
    same = never(model, batch)
    assert same["image"] is batch["image"]
    assert torch.equal(same["target"], torch.eye(2)[batch["label"]])
