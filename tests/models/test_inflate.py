"""Inflated 3D backbones (CMC-COV19D Sec. 3.4.1): the repeated-slice property, weights, groups, radix."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from chestdx.errors import ConfigError
from chestdx.models import Inflated3DNet, build_model, inflate_2d_to_3d
from chestdx.models.inflate import DepthSame, SplitAttn3d


def _tv_features(net, x):
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


@pytest.mark.parametrize("name,time_kernel,depth_stride", [
    ("resnet18", 3, True), ("resnet18", 1, False), pytest.param("resnet50", 3, True, marks=pytest.mark.slow)])
def test_repeated_slice_volume_gives_2d_features_resnet(name, time_kernel, depth_stride):
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)()
    net.eval()
    net3d = inflate_2d_to_3d(net, time_kernel, depth_stride).eval()
    x = torch.randn(1, 3, 32, 32)
    vol = x[:, :, None].repeat(1, 1, 3, 1, 1)  # (B, C, D, H, W), one slice repeated
    with torch.no_grad():
        f2 = _tv_features(net, x)
        f3 = _tv_features(net3d, vol)
    assert f3.shape[:2] == f2.shape[:2] and f3.shape[3:] == f2.shape[2:]
    assert f3.shape[2] == (1 if depth_stride else 3)
    torch.testing.assert_close(f3, f2[:, :, None].expand_as(f3), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["resnest14d", pytest.param("resnest50d", marks=pytest.mark.slow)])
def test_repeated_slice_volume_gives_2d_features_resnest_radix_and_groups_kept(name):
    """resnest14d has ResNeSt-50's blocks (split attention, radix 2, avg-pool downsampling), fewer of them."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    net.eval()
    net3d = inflate_2d_to_3d(net, 3).eval()
    split = net3d.layer1[0].conv2
    assert isinstance(split, SplitAttn3d) and split.radix == 2
    conv = split.conv.op if isinstance(split.conv, DepthSame) else split.conv
    assert isinstance(conv, nn.Conv3d) and conv.groups == net.layer1[0].conv2.conv.groups == 2
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        f2 = net.forward_features(x)
        f3 = net3d.forward_features(x[:, :, None].repeat(1, 1, 3, 1, 1))
    torch.testing.assert_close(f3, f2[:, :, None].expand_as(f3), atol=1e-4, rtol=1e-4)


def test_inflated_weights_repeat_and_divide():
    conv = nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2, bias=True)
    wrapped = inflate_2d_to_3d(nn.Sequential(conv), time_kernel=5)[0]
    assert isinstance(wrapped, DepthSame) and (wrapped.depth_kernel, wrapped.depth_stride) == (5, 2)
    c3 = wrapped.op
    assert c3.weight.shape == (4, 1, 5, 3, 3) and c3.groups == 2
    torch.testing.assert_close(c3.weight[:, :, 2] * 5, conv.weight)
    torch.testing.assert_close(c3.weight.sum(dim=2), conv.weight)
    torch.testing.assert_close(c3.bias, conv.bias)
    one = inflate_2d_to_3d(nn.Sequential(nn.Conv2d(2, 4, 1)), time_kernel=5)[0]
    assert isinstance(one, nn.Conv3d) and one.kernel_size == (1, 1, 1)
    # depth "same": ceil(D / stride) slices out
    assert wrapped(torch.randn(1, 2, 7, 8, 8)).shape == (1, 4, 4, 4, 4)


def test_no_rule_and_bad_kernel_are_config_errors():
    with pytest.raises(ConfigError, match="time_kernel"):
        inflate_2d_to_3d(nn.Conv2d(1, 1, 3), time_kernel=0)
    with pytest.raises(ConfigError, match="padding"):
        inflate_2d_to_3d(nn.Sequential(nn.Conv2d(1, 1, 3, padding="same")))
    with pytest.raises(ConfigError, match="no rule"):
        inflate_2d_to_3d(nn.Sequential(nn.LPPool2d(2, 2)))


def test_inflated3d_model_shapes_checkpointing_and_registry():
    from chestdx.config import ModelConfig

    torch.manual_seed(0)
    m = build_model(ModelConfig(name="inflated3d", backbone="resnet18", params={"time_kernel": 3}), num_classes=2)
    assert isinstance(m, Inflated3DNet) and m.feature_dim == 512
    x = torch.rand(2, 1, 8, 32, 32)
    out = m(x)
    assert out.logits.shape == (2, 2) and out.embedding.shape == (2, 512)
    assert out.features.shape == (2, 512, 1, 1, 1)
    with pytest.raises(ValueError, match="volumes"):
        m(torch.rand(2, 1, 32, 32))
    # activation checkpointing: same loss and gradients, in training mode
    m.eval()  # fixed BN statistics so both passes see the same function
    m.checkpointing = True
    m.training = True  # checkpoint only runs while training; BN stays in eval via its own flag
    loss_a = m(x).logits.sum()
    ga = torch.autograd.grad(loss_a, m.stages[0][0].conv1.op.weight if isinstance(m.stages[0][0].conv1, DepthSame)
                             else m.stages[0][0].conv1.weight)[0]
    m.checkpointing = False
    loss_b = m(x).logits.sum()
    gb = torch.autograd.grad(loss_b, m.stages[0][0].conv1.op.weight if isinstance(m.stages[0][0].conv1, DepthSame)
                             else m.stages[0][0].conv1.weight)[0]
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(ga, gb)


def test_bf16_autocast_forward_backward():
    m = Inflated3DNet(2, "resnet18", time_kernel=3, checkpointing=True)
    x = torch.rand(2, 1, 8, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
        loss = torch.nn.functional.cross_entropy(out.logits.float(), torch.tensor([0, 1]))
    loss.backward()
    assert out.features.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert m.head[1].weight.grad is not None
