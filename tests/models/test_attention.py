"""ResNet50-ATT2 (models/attention.py): attention values by hand, shapes, gradients, registry."""

from __future__ import annotations

import math

import pytest
import torch

from chestdx.config import load_recipe
from chestdx.errors import ConfigError
from chestdx.models import build_model
from chestdx.models.attention import GridAttention, ResNetATT2


def _identity_attention(compatibility: str) -> GridAttention:
    att = GridAttention(2, 2, compatibility)
    with torch.no_grad():
        att.project.weight.copy_(torch.eye(2).view(2, 2, 1, 1))  # W_p = I
        if att.u is not None:
            att.u.weight.copy_(torch.tensor([1.0, 2.0]).view(1, 2, 1, 1))  # u = (1, 2)
    return att


def _two_positions() -> torch.Tensor:
    # x_1 = (1, 0) at position (0, 0), x_2 = (0, 1) at position (0, 1): shape (1, 2, 1, 2)
    return torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)


def test_dot_product_attention_by_hand():
    # Eq. 12: s_1 = <x_1, g> = ln 3, s_2 = 0 -> a = (3/4, 1/4); g^ = 3/4 x_1 + 1/4 x_2 = (0.75, 0.25)
    att = _identity_attention("dot")
    g = torch.tensor([[math.log(3.0), 0.0]])
    attended, a = att(_two_positions(), g)
    assert a.shape == (1, 1, 2)
    assert torch.allclose(a.flatten(), torch.tensor([0.75, 0.25]), atol=1e-6)
    assert torch.allclose(attended, torch.tensor([[0.75, 0.25]]), atol=1e-6)


def test_parametrised_attention_by_hand_and_g_cancels():
    # Eq. 11: s_i = <u, x_i + g> = <u, x_i> + <u, g>: s = (1, 2) + c -> a = (1, e) / (1 + e) for every g
    att = _identity_attention("parametrised")
    want = torch.tensor([1.0, math.e]) / (1.0 + math.e)
    for g in (torch.zeros(1, 2), torch.tensor([[5.0, -3.0]])):
        _, a = att(_two_positions(), g)
        assert torch.allclose(a.flatten(), want, atol=1e-6)


@pytest.mark.parametrize("compatibility", ["parametrised", "dot"])
def test_attention_sums_to_one_over_positions(compatibility):
    torch.manual_seed(0)
    att = GridAttention(8, 12, compatibility)
    _, a = att(torch.randn(3, 8, 5, 4), torch.randn(3, 12))
    assert a.shape == (3, 5, 4)
    assert (a >= 0).all()
    assert torch.allclose(a.flatten(1).sum(1), torch.ones(3), atol=1e-6)


def test_unknown_compatibility_is_a_config_error():
    with pytest.raises(ConfigError, match="Eq. 11"):
        GridAttention(4, 4, "cosine")


def test_att2_resnet18_shapes_maps_and_gradients():
    torch.manual_seed(0)
    m = ResNetATT2(3, "resnet18", in_chans=1)
    x = torch.randn(2, 1, 64, 64)
    out = m(x)
    assert out.logits.shape == (2, 3)
    assert out.embedding.shape == (2, 256 + 512) and m.embedding_dim == 768 and m.feature_dim == 256
    assert out.features.shape == (2, 256, 4, 4)
    assert out.maps["att1"].shape == (2, 4, 4) and out.maps["att2"].shape == (2, 2, 2)
    for k in ("att1", "att2"):
        assert torch.allclose(out.maps[k].flatten(1).sum(1), torch.ones(2), atol=1e-5)
    # the split used by hook-free Grad-CAM is exact
    assert torch.allclose(m.forward_head(m.forward_features(x))[0], out.logits, atol=1e-5)
    out.logits.sum().backward()
    for p in (m.backbone.conv1.weight, m.tail[0].conv1.weight, m.att1.project.weight, m.att1.u.weight,
              m.att2.u.weight, m.classifier.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_att2_resnet50_is_the_papers_size():
    m = ResNetATT2(3, "resnet50")
    assert m.local_channels == (1024, 2048) and m.embedding_dim == 3072
    assert len(m.tail) == 3 and type(m.tail[0]).__name__ == "Bottleneck"
    with torch.no_grad():
        out = m(torch.randn(1, 1, 224, 224))
    assert out.maps["att1"].shape == (1, 14, 14) and out.maps["att2"].shape == (1, 7, 7)
    assert out.embedding.shape == (1, 3072)


def test_att2_recipe_builds_the_registered_model():
    r = load_recipe("att2", ["model.backbone=resnet18", "model.weights=none", "model.params.compatibility=dot"])
    m = build_model(r.model, num_classes=r.data.num_classes)
    assert isinstance(m, ResNetATT2) and m.att1.compatibility == "dot"
    assert r.optim.lr == 5e-4 and r.trainer.epochs == 25 and r.trainer.early_stopping.patience == 5
    a = r.data.augment
    assert (a.hflip, a.vflip, a.blur_prob, a.blur_kernel, tuple(a.blur_sigma)) == (0.5, 0.5, 1.0, 7, (0.05, 2.0))
    assert (a.rotate, tuple(a.scale), a.translate, a.shear) == (30, (0.9, 1.1), 0.1, 20)
    assert r.objectives[0].params == {"class_weights": "balanced"}
    with pytest.raises(ConfigError, match="resnet_att2"):
        build_model(r.model.model_copy(update={"params": {"bogus": 1}}), 3)
