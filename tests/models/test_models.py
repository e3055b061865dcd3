"""Every registered model honours the one interface; weights load offline or fail clearly."""

from __future__ import annotations

import pytest
import torch
import torchvision

from chestdx.config import ModelConfig
from chestdx.errors import ConfigError, WeightsNotFoundError
from chestdx.models import ModelOutput, build_model, model_names
from chestdx.models.backbones import adapt_first_conv, build_resnet


@pytest.mark.parametrize("name", model_names())
def test_interface(name):
    if name == "att2_bilstm":
        pytest.skip("takes slice sequences (B, T, 1, H, W); its interface test is in tests/models/test_sequence.py")
    cfg = ModelConfig(name=name, backbone="resnet18", head_hidden=16)
    model = build_model(cfg, num_classes=3, in_chans=1)
    x = torch.randn(*{"inflated3d": (2, 1, 8, 32, 32)}.get(name, (2, 1, 64, 64)))  # 3D models take volumes
    out = model(x)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 3)
    if name == "affinity":  # answers from RoI mask features: no dense feature map, no CAM head
        assert out.features is None and out.embedding.shape[0] == 2
        assert torch.allclose(out.probs.sum(1), torch.ones(2))
        return
    assert out.features is not None and out.features.shape[:2] == (2, model.feature_dim)
    assert out.embedding is not None and out.embedding.shape[0] == 2
    assert torch.allclose(out.probs.sum(1), torch.ones(2))
    logits, _ = model.forward_head(model.forward_features(x))
    assert torch.allclose(logits, out.logits)


def test_resnet50_at_224_gives_7x7x2048():
    model = build_model(ModelConfig(backbone="resnet50"), num_classes=2)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 224, 224))
    assert out.features.shape == (1, 2048, 7, 7)


def test_adapt_first_conv_sums_rgb():
    w = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)
    assert adapt_first_conv(w, 1).flatten().tolist() == [0 + 1 + 2, 3 + 4 + 5]
    w6 = adapt_first_conv(w, 6)
    assert w6.shape == (2, 6, 1, 1)
    assert torch.allclose(w6.sum(1), w.sum(1))  # same response to a constant image


def test_imagenet_weights_absent_says_where(monkeypatch, tmp_path):
    monkeypatch.setenv("CHESTDX_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError) as e:
        build_resnet("resnet18", 1, "imagenet")
    msg = str(e.value)
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path) in msg and "--weights none" in msg


def test_imagenet_weights_from_local_file(monkeypatch, tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    monkeypatch.setenv("CHESTDX_WEIGHTS_DIR", str(tmp_path))
    net, ch = build_resnet("resnet18", 1, "imagenet")
    assert ch == 512
    assert torch.allclose(net.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(net.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)


def test_weights_path_missing_and_unknown_backbone(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        build_resnet("resnet18", 1, str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_resnet("resnet9000", 1, "none")
    with pytest.raises(ConfigError, match="unknown model"):
        build_model(ModelConfig(name="nope"), 2)
