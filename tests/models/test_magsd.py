"""MA-Net (MAG-SD): attention pooling by hand, shapes at the paper's sizes, scales and poolings."""

from __future__ import annotations

import pytest
import torch

from chestdx.config import ModelConfig
from chestdx.errors import ConfigError
from chestdx.models import build_model
from chestdx.models.magsd import MANet, attention_pooling


def test_attention_pooling_by_hand():
    # f: 2 channels on a 2 x 2 grid; A: 2 maps
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    a = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]]])
    out = attention_pooling(f, a)
    # map 0 keeps the top-left pixel: GAP = (1/4, 0/4); map 1 halves everything: (10/8, 2/8)
    assert out.shape == (1, 4)
    assert torch.allclose(out, torch.tensor([[0.25, 0.0, 1.25, 0.25]]))
    with pytest.raises(ValueError):
        attention_pooling(f, a[:, :, :1])


def test_resnet50_sizes_and_pooled_shape():
    model = MANet(3, backbone="resnet50", num_maps=32, scales=2).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 224, 224))
    assert out.embedding.shape == (2, 32 * 2048)  # (B, M * 2048) = 65536 per image
    assert out.maps["attention_parts"].shape == (2, 32, 7, 7)
    assert out.maps["attention"].shape == (2, 7, 7)
    assert out.features.shape == (2, 2048 + 32, 7, 7)  # f3 and the layer3 attention pooled to 7 x 7
    assert out.logits.shape == (2, 3)


@pytest.mark.parametrize("scales", [1, 2, 3])
@pytest.mark.parametrize("pooling", ["attention", "gap", "gmp"])
def test_scales_and_poolings(scales, pooling):
    model = build_model(ModelConfig(name="magsd", backbone="resnet18",
                                    params={"num_maps": 4, "scales": scales, "pooling": pooling}), num_classes=2)
    out = model(torch.randn(2, 1, 64, 64))
    assert len(model.attention.convs) == scales
    assert out.embedding.shape == (2, 4 * 512 if pooling == "attention" else 512)
    assert out.maps["attention_parts"].shape == (2, 4, 2, 2)
    assert (out.maps["attention_parts"] >= 0).all()
    logits, _ = model.forward_head(model.forward_features(torch.zeros(1, 1, 64, 64)))
    assert logits.shape == (1, 2)


def test_multiscale_attention_is_the_residual_sum():
    model = MANet(2, backbone="resnet18", num_maps=3, scales=3).eval()
    x = torch.randn(1, 1, 64, 64)
    from chestdx.models.backbones import resnet_features

    with torch.no_grad():
        f3, stages = resnet_features(model.backbone, x, return_stages=True)
        expected = model.attention.convs[2](f3)
        for conv, f in zip(model.attention.convs[:2], stages[1:3], strict=True):
            expected = expected + torch.nn.functional.adaptive_avg_pool2d(conv(f), f3.shape[-2:])
        out = model(x)
    assert torch.allclose(out.maps["attention_parts"], expected, atol=1e-5)
    assert torch.allclose(out.maps["attention"], expected.mean(1), atol=1e-5)


def test_feature_norms_scale_the_pooled_matrix():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 64, 64)
    models = {}
    for norm in ("none", "sqrt_m", "sqrt_l2"):
        torch.manual_seed(1)
        models[norm] = MANet(2, backbone="resnet18", num_maps=16, feature_norm=norm).eval()
    with torch.no_grad():
        emb = {k: m(x).embedding for k, m in models.items()}
    assert torch.allclose(emb["sqrt_m"], emb["none"] / 4.0)  # / sqrt(16)
    assert torch.allclose(emb["sqrt_l2"].norm(dim=1), torch.full((2,), 100.0))
    gap = MANet(2, backbone="resnet18", num_maps=16, pooling="gap").eval()
    with torch.no_grad():
        f3 = gap.split_features(gap.forward_features(x))[0]
        assert torch.allclose(gap(x).embedding, f3.mean(dim=(-2, -1)))  # GAP is never scaled


def test_bad_parameters():
    with pytest.raises(ConfigError):
        MANet(2, backbone="resnet18", scales=4)
    with pytest.raises(ConfigError):
        MANet(2, backbone="resnet18", pooling="max")
    with pytest.raises(ConfigError):
        build_model(ModelConfig(name="magsd", backbone="resnet18", params={"maps": 3}), num_classes=2)


@pytest.mark.parametrize("pooling, trained", [("attention", True), ("gap", False), ("gmp", False)])
def test_which_poolings_train_the_attention_maps(pooling, trained):
    """Table 6's GAP / GMP rows: the classification loss does not reach the attention convs, so the
    attention-guided augmentation of those rows runs on maps that stay at their initialisation
    (fixed random 1x1 projections of the features; docs/magsd.md). Attention pooling trains them."""
    torch.manual_seed(0)
    model = MANet(3, backbone="resnet18", num_maps=4, scales=2, pooling=pooling)
    out = model(torch.randn(2, 1, 64, 64))
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2])).backward()
    grads = [p.grad for p in model.attention.parameters()]
    reached = any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    assert reached is trained
    assert float(model.head.weight.grad.abs().sum()) > 0  # the classifier trains in every row
