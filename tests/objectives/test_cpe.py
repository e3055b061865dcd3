"""Contrastive Patch Embedding loss (Eq. 1): hand-computed values on a 2-image batch."""

from __future__ import annotations

import math

import pytest
import torch

from chestdx.objectives import build_objective, cpe_loss
from chestdx.objectives.patch_contrastive import sum_pool


def eq1(u1, u2, v1, v2):
    """Eq. 1 written out with math.exp / math.log."""

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))

    s = sum(math.exp(dot(u, v)) for u in (u1, u2) for v in (v1, v2))
    return (-math.log(math.exp(dot(u1, u2)) / (math.exp(dot(u1, u2)) + s))
            - math.log(math.exp(dot(v1, v2)) / (math.exp(dot(v1, v2)) + s)))


# image 0: 2x2 grid of 2-d vectors (raster order 00, 01, 10, 11)
E0 = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -1.0]]
# 4x4 CAM whose 2x2 block sums are 00: 4, 01: 1, 10: 3, 11: 2 (block 10's pixels are all below
# block 11's maximum, so a max-pool would rank them the other way round)
CAM0 = [[4.0, 0.0, 0.25, 0.25],
        [0.0, 0.0, 0.25, 0.25],
        [1.0, 1.0, 0.0, 2.0],
        [1.0, 0.0, 0.0, 0.0]]
# image 1: block sums 00: 0, 01: 5, 10: 2, 11: 7 -> u = (11, 01), v = (00, 10)
E1 = [[-1.0, 2.0], [0.5, 0.5], [2.0, 0.0], [1.0, -0.5]]
CAM1 = [[0.0, 0.0, 5.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [1.0, 0.0, 3.0, 3.0],
        [0.0, 1.0, 1.0, 0.0]]


def as_embedding(cells):
    # (C=2, 2, 2) from raster-ordered cells
    return torch.tensor(cells).T.reshape(2, 2, 2)


def test_cpe_by_hand():
    emb = torch.stack([as_embedding(E0), as_embedding(E1)])
    cam = torch.tensor([CAM0, CAM1])
    expected0 = eq1(E0[0], E0[2], E0[3], E0[1])
    expected1 = eq1(E1[3], E1[1], E1[0], E1[2])
    got = cpe_loss(emb, cam)
    assert got.item() == pytest.approx((expected0 + expected1) / 2, rel=1e-6)


def test_cpe_normalized_by_hand():
    emb = as_embedding(E0)[None]
    cam = torch.tensor([CAM0])

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    expected = eq1(unit(E0[0]), unit(E0[2]), unit(E0[3]), unit(E0[1]))
    assert cpe_loss(emb, cam, normalize=True).item() == pytest.approx(expected, rel=1e-6)


def test_cpe_stable_for_huge_products_and_grad_to_embeddings():
    emb = (as_embedding(E0)[None] * 100).requires_grad_(True)  # dot products ~ 1e4: exp overflows
    cam = torch.tensor([CAM0], requires_grad=True)
    loss = cpe_loss(emb, cam)
    assert torch.isfinite(loss) and loss.item() >= 0
    loss.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()
    assert cam.grad is None  # the CAM is a constant


def test_sum_pool():
    m = torch.arange(16.0).view(1, 4, 4)
    assert torch.equal(sum_pool(m, (2, 2)), torch.tensor([[[10.0, 18.0], [42.0, 50.0]]]))
    ones = torch.ones(1, 5, 5)
    assert torch.equal(sum_pool(ones, (2, 2)), torch.full((1, 2, 2), 9.0))  # overlapping 3x3 cells


def test_too_few_cells():
    with pytest.raises(ValueError, match="4 grid cells"):
        cpe_loss(torch.randn(1, 2, 1, 3), torch.rand(1, 3, 3))


def test_cpe_objective_on_small_model():
    from chestdx.models import ResNetMLP

    torch.manual_seed(0)
    model = ResNetMLP(2, "resnet18", head_hidden=16)
    term = build_objective("cpe", {}, 2)
    x = torch.randn(3, 1, 64, 64)
    batch = {"image": x, "label": torch.tensor([0, 1, 1]),
             "target": torch.tensor([[0.8, 0.5], [0.0, 1.0], [0.3, 0.6]])}
    out = model(x)
    loss = term(model, out, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.backbone.layer4[-1].conv2.weight.grad is not None
    assert build_objective("cpe", {"normalize": True}, 2).normalize
