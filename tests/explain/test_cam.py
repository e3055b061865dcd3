"""CAM: hand-computed values on stub heads, shape / non-negativity, and Zhou's CAM for a linear head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chestdx.explain import cam, cam_from_features, normalize_maps, upsample_map
from chestdx.models import ChestModel, ResNetMLP


class HeadStub(ChestModel):
    """Features are the input itself; the head is GAP followed by the given module."""

    def __init__(self, head: nn.Module, num_classes: int = 2):
        super().__init__()
        self.num_classes, self.in_chans, self.feature_dim = num_classes, 2, 2
        self.head = head

    def forward_features(self, x: Tensor) -> Tensor:
        return x

    def forward_head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        emb = features.mean(dim=(-2, -1))
        return self.head(emb), emb


# features (1, C=2, h=1, w=2): channel 0 = [1, 2], channel 1 = [3, -4]
FEATS = torch.tensor([[[[1.0, 2.0]], [[3.0, -4.0]]]])


def test_linear_head_by_hand():
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.5]]))
        lin.bias.zero_()
    m = HeadStub(lin)
    got = cam_from_features(m, FEATS, target=1)
    # relu(1 * [1, 2] + 0.5 * [3, -4]) = relu([2.5, 0])
    assert torch.allclose(got, torch.tensor([[[2.5, 0.0]]]))


def test_mlp_head_is_gradcam_by_hand():
    w1 = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    w2 = torch.tensor([[2.0, 3.0], [0.0, 0.0]])
    head = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        head[0].weight.copy_(w1)
        head[2].weight.copy_(w2)
    m = HeadStub(head)
    # emb = [1.5, -0.5]; hidden = relu([1.5, 0.5]) (both active); d logit_0 / d emb = w2[0] @ w1 = [2, -3]
    # alpha = sum over positions of the gradient = [2, -3]; cam = relu(2 * [1, 2] - 3 * [3, -4]) = [0, 16]
    got = cam_from_features(m, FEATS, target=0)
    assert torch.allclose(got, torch.tensor([[[0.0, 16.0]]]))


@pytest.fixture(scope="module")
def small_mlp():
    torch.manual_seed(0)
    return ResNetMLP(2, "resnet18", head_hidden=16).eval()


def test_shape_nonnegative_and_no_param_grads(small_mlp):
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        maps = cam(small_mlp, x)
    assert maps.shape == (3, 64, 64)
    assert maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    assert all(p.grad is None for p in small_mlp.parameters())
    assert not maps.requires_grad


def test_target_none_is_predicted_class_and_out_reuse(small_mlp):
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out = small_mlp(x)
    pred = out.logits.argmax(1)
    a = cam(small_mlp, x)
    b = cam(small_mlp, x, target=pred)
    c = cam(small_mlp, x, out=out)
    assert torch.allclose(a, b) and torch.allclose(a, c)
    soft = F.one_hot(pred, 2).float() * 0.7 + 0.15
    assert torch.allclose(cam(small_mlp, x, target=soft), a)


def test_linear_head_equals_classic_cam():
    torch.manual_seed(1)
    m = ResNetMLP(2, "resnet18", head_hidden=0).eval()
    x = torch.randn(2, 1, 64, 64)
    target = torch.tensor([0, 1])
    with torch.no_grad():
        feats = m.forward_features(x)  # (2, 512, 2, 2)
        w = m.head[1].weight  # (K, C)
        classic = torch.einsum("kc,bchw->bkhw", w, feats)[torch.arange(2), target]  # sum_k w_ck F_k
        expected = F.interpolate(F.relu(classic)[:, None], size=(64, 64), mode="bilinear",
                                 align_corners=False)[:, 0]
    got = cam(m, x, target=target)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_bad_target():
    m = HeadStub(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="target"):
        cam_from_features(m, FEATS, target=5)


def test_upsample_and_normalize():
    m = torch.tensor([[[0.0, 2.0], [4.0, 1.0]], [[3.0, 3.0], [3.0, 3.0]]])
    up = upsample_map(m, (8, 8))
    assert up.shape == (2, 8, 8) and (up >= 0).all()
    n = normalize_maps(m)
    assert torch.allclose(n[0], torch.tensor([[0.0, 0.5], [1.0, 0.25]]))
    assert torch.equal(n[1], torch.zeros(2, 2))


def _manual_stage_map(m, x, stride, method):
    """LayerCAM / Grad-CAM at a stage, written out with autograd (independent of chestdx.explain.cam)."""
    with torch.enable_grad():
        final, stages = m.backbone.forward_stages(x.detach().requires_grad_(True))
        a = stages[list(m.backbone.stage_strides).index(stride)]
        logits = m.head(final.mean(dim=(-2, -1)))
        (g,) = torch.autograd.grad(logits.gather(1, logits.argmax(1)[:, None]).sum(), a)
    w = F.relu(g) if method == "layercam" else g.sum(dim=(2, 3), keepdim=True)
    return F.relu((w * a).sum(1)).detach()


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
@pytest.mark.parametrize("speed", ["fp32", "channels_last"])
def test_stage_pass_answer_is_the_plain_forward(backbone, speed):
    """One pass with gradients gives exactly the no-grad answer in the same mode (the same operations)
    and the stage map stage_cam gives; no parameter receives a gradient, frozen parameters are fine."""
    from chestdx.engine.precision import parse_speed, running, to_mode_input
    from chestdx.explain.cam import stage_cam, stage_pass

    torch.manual_seed(0)
    m = ResNetMLP(2, backbone, head_hidden=16).eval()
    x = torch.randn(3, 1, 64, 64)
    mode = parse_speed(speed)
    with running(m, mode):
        xm = to_mode_input(x, mode)
        with torch.no_grad():
            ref = m(xm)
        out, maps = stage_pass(m, xm, "layercam8")
        assert torch.equal(out.logits, ref.logits) and torch.equal(out.features, ref.features)
        assert torch.equal(out.embedding, ref.embedding) and not out.logits.requires_grad
        assert torch.equal(maps, stage_cam(m, xm, "layercam8")) and maps.shape == (3, 8, 8)
        torch.testing.assert_close(maps, _manual_stage_map(m, xm, 8, "layercam"), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(stage_pass(m, xm, "gradcam16")[1], _manual_stage_map(m, xm, 16, "gradcam"),
                                   rtol=1e-4, atol=1e-6)
        assert all(p.grad is None for p in m.parameters())
        m.requires_grad_(False)
        assert torch.equal(stage_pass(m, xm, "layercam8")[1], maps)
