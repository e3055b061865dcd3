"""Occlusion maps (explain/occlusion.py): geometry and values by hand, on a model whose evidence is known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from chestdx.explain.occlusion import occlusion_geometry, occlusion_map
from chestdx.models.base import ModelOutput


class RegionModel(nn.Module):
    """Class 1's logit is ``10 * mean(x over rows 4-7, cols 8-11)``; class 0's is 0."""

    def forward(self, x: torch.Tensor) -> ModelOutput:
        s = 10.0 * x[:, 0, 4:8, 8:12].mean(dim=(1, 2))
        return ModelOutput(logits=torch.stack([torch.zeros_like(s), s], dim=1))


def _image() -> torch.Tensor:
    x = torch.zeros(1, 1, 16, 16)
    x[:, :, 4:8, 8:12] = 1.0  # the evidence; the median of the image is 0, the fill
    return x


def test_geometry_by_hand():
    assert occlusion_geometry(64) == (8, 8, [0, 8, 16, 24, 32, 40, 48, 56])
    assert occlusion_geometry(224) == (28, 28, [0, 28, 56, 84, 112, 140, 168, 196])
    # 100 / 8 -> 13 px patches; the last one moved back to end at the edge (overlaps the one before)
    assert occlusion_geometry(100) == (13, 13, [0, 13, 26, 39, 52, 65, 78, 87])
    assert occlusion_geometry(5) == (1, 1, [0, 1, 2, 3, 4])
    with pytest.raises(ValueError):
        occlusion_geometry(0)


def test_map_is_the_probability_drop_on_the_evidence():
    """16 px, grid 8: 2 px patches. Each of the four patches inside the 4 x 4 region hides 4 of its 16
    pixels: logit 10 -> 7.5, so the map there is sigmoid(10) - sigmoid(7.5); elsewhere nothing changes."""
    x = _image()
    got = occlusion_map(RegionModel(), x, target=1)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    want = torch.zeros(1, 16, 16)
    want[:, 4:8, 8:12] = sig(10.0) - sig(7.5)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(occlusion_map(RegionModel(), x), want)  # None: the predicted class (1)
    # batched in several chunks: the same map
    torch.testing.assert_close(occlusion_map(RegionModel(), x, target=1, batch=3), want)


def test_evidence_against_the_class_gives_nothing():
    """Covering the region raises class 0's probability: drops are clipped at 0, the map is empty."""
    assert float(occlusion_map(RegionModel(), _image(), target=0).abs().max()) == 0.0


def test_overlapping_last_patch_is_averaged():
    """10 px, grid 4: 3 px patches at 0, 3, 6 and 7; columns 7-8 are covered by two patches and get their mean."""
    class Col8(nn.Module):  # class 1's logit: 10 * x[..., 0, 8] (one pixel)
        def forward(self, x: torch.Tensor) -> ModelOutput:
            s = 10.0 * x[:, 0, 0, 8]
            return ModelOutput(logits=torch.stack([torch.zeros_like(s), s], dim=1))

    x = torch.zeros(1, 1, 10, 10)
    x[..., 0, 8] = 1.0
    got = occlusion_map(Col8(), x, target=1, grid=4)
    drop = 1 / (1 + math.exp(-10.0)) - 0.5  # the pixel hidden: logit 0
    # rows 0-2 (the row patch at 0); columns: the patches at 6 (cols 6-8) and 7 (cols 7-9) both hide it
    want = torch.zeros(1, 10, 10)
    want[:, 0:3, 6] = drop  # covered once (patch 6), hidden
    want[:, 0:3, 7:9] = drop  # covered twice, hidden both times: mean = drop
    want[:, 0:3, 9] = drop  # covered once (patch 7), hidden
    torch.testing.assert_close(got, want)


def test_heatmap_kind_keeps_the_answer_and_states_its_grid():
    from chestdx.config import load_recipe
    from chestdx.explain.heatmap import heatmap, heatmap_grid
    from chestdx.models import build_model

    torch.manual_seed(0)
    for name, size in (("demo", 64), ("att2", 32)):
        r = load_recipe(name, {"data": {"image_size": size}, "model": {"backbone": "resnet18", "weights": "none"}})
        model = build_model(r.model, num_classes=r.data.num_classes).eval()
        x = torch.randn(2, 1, size, size)
        with torch.no_grad():
            before = model(x).logits
        for want in ("occlusion", "intgrad"):
            maps, kind = heatmap(model, x, want)
            with torch.no_grad():
                after = model(x).logits
            assert kind == want and maps.shape == (2, size, size) and torch.equal(before, after)
            assert maps.min() >= 0 and maps.max() <= 1
            assert heatmap_grid(model, want, (size, size)) == (8, 8)
        assert all(p.grad is None for p in model.parameters())


def test_intgrad_of_a_linear_logit_is_exact_per_cell():
    """Class 1's logit is linear, 10 / 16 per pixel of the region: integrated gradients from the
    median-filled image (0) give (x - 0) * 10 / 16 per region pixel, 4 pixels per 2 x 2 cell: 2.5."""
    from chestdx.explain.occlusion import intgrad_map

    x = _image()
    want = torch.zeros(1, 16, 16)
    want[:, 4:8, 8:12] = 2.5
    for steps in (1, 8):
        torch.testing.assert_close(intgrad_map(RegionModel(), x, target=1, steps=steps), want)
    assert float(intgrad_map(RegionModel(), x, target=0).abs().max()) == 0.0  # class 0's logit is constant
    # evidence against the class is clipped: a region that lowers class 1 gives nothing
    torch.testing.assert_close(intgrad_map(RegionModel(), -x + 1.0, target=1), torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="steps"):
        intgrad_map(RegionModel(), x, steps=0)


def test_intgrad_points_batched_like_one_at_a_time():
    """intgrad's Riemann points go through the network together (8 images per pass on a CPU): the
    same map as one point per pass, and with a given target no extra pass for the answer."""
    from chestdx.explain.occlusion import intgrad_map
    from chestdx.models import ResNetMLP

    torch.manual_seed(0)
    model = ResNetMLP(2, "resnet18", head_hidden=8).eval()
    x = torch.randn(2, 1, 32, 32)
    one_at_a_time = intgrad_map(model, x, steps=6, batch=2)  # 2 images: one point per pass
    batches = []
    hook = model.register_forward_hook(lambda _m, inp, _o: batches.append(inp[0].shape[0]))
    got = intgrad_map(model, x, target=torch.tensor([0, 1]), steps=6)
    hook.remove()
    assert batches == [8, 4]  # 6 points x 2 images in passes of at most 8 images; no answer pass
    want = intgrad_map(model, x, target=torch.tensor([0, 1]), steps=6, batch=2)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert one_at_a_time.shape == (2, 32, 32) and (one_at_a_time >= 0).all()
