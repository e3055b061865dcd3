"""The affinity model: affinity layer values, shapes and gradients; weight copy only when L_SEG improves."""

from __future__ import annotations

import pytest
import torch

from chestdx.errors import ConfigError
from chestdx.models.affinity import AffinityLayer, AffinityModel

TINY = dict(fpn_channels=16, mask_channels=8, box_hidden=16, fc_hidden=8, affinities=4, roi_batch=3,
            sieve_stages=1, rpn_pre_nms_top_n=(40, 20), rpn_post_nms_top_n=(20, 10),
            rpn_batch_size_per_image=16, box_batch_size_per_image=16)


@pytest.fixture(scope="module")
def tiny_model() -> AffinityModel:
    torch.manual_seed(0)
    return AffinityModel(3, "resnet18", **TINY)


def _target(n_lesions: int = 1, size: int = 64) -> dict[str, torch.Tensor]:
    masks = torch.zeros(n_lesions, size, size, dtype=torch.uint8)
    boxes = torch.zeros(n_lesions, 4)
    for k in range(n_lesions):
        y, x = 8 + 20 * k, 10 + 12 * k
        masks[k, y:y + 10, x:x + 14] = 1
        boxes[k] = torch.tensor([x, y, x + 14, y + 10], dtype=torch.float32)
    return {"boxes": boxes, "labels": torch.ones(n_lesions, dtype=torch.long), "masks": masks}


def test_affinity_matrix_and_vector_by_hand():
    layer = AffinityLayer(channels=2, roi_batch=2, affinities=3, sieve_stages=0)
    with torch.no_grad():
        layer.W1.copy_(torch.tensor([[1.0, 0.0, 2.0], [1.0, -1.0, 0.0]]))  # (B=2, C'=3)
        layer.w2.copy_(torch.tensor([1.0, 2.0, -1.0]))  # (C',)
    # two lesions, two features, constant 1x1 maps: x_1 = (1, 2), x_2 = (3, 4)
    masks = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1, 1)
    x3, x2 = layer(masks)
    # X2 = W1^T X1: rows r = affinities, columns j = features
    expected_x2 = torch.tensor([[4.0, 6.0], [-3.0, -4.0], [2.0, 4.0]])
    assert torch.allclose(x2[0], expected_x2)
    # x3 = X2^T w2 = 1 * row0 + 2 * row1 - 1 * row2
    assert torch.allclose(x3[0], torch.tensor([4 - 6 - 2, 6 - 8 - 4.0]))


def test_vectorisation_is_the_spatial_mean_after_the_sieve():
    layer = AffinityLayer(channels=2, roi_batch=1, affinities=1, sieve_stages=0)
    masks = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    assert torch.allclose(layer.vectorise(masks), torch.tensor([[[1.5, 5.5]]]))


def test_affinity_layer_shapes_and_gradients():
    layer = AffinityLayer(channels=8, roi_batch=4, affinities=32, sieve_stages=3)
    masks = torch.randn(2, 4, 8, 28, 28, requires_grad=True)
    x3, x2 = layer(masks)
    assert x3.shape == (2, 8) and x2.shape == (2, 32, 8)
    assert layer.sieve(masks[0]).shape == (4, 8, 28, 28)  # the sieve keeps H x W
    x3.square().sum().backward()
    for p in [layer.W1, layer.w2, *layer.sieve.parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert masks.grad is not None and masks.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="expects"):
        layer(torch.randn(1, 3, 8, 28, 28))


def test_sieve_keeps_the_scale_so_images_stay_apart():
    """3 sieve stages must not shrink the lesion features to a constant (the old default init did:
    the vectors of different images differed by ~1e-4 of their size and L_CLS never left the prior)."""
    torch.manual_seed(0)
    layer = AffinityLayer(channels=64, roi_batch=8, affinities=64, sieve_stages=3)
    masks = torch.relu(torch.randn(6, 8, 64, 28, 28) + torch.randn(6, 1, 64, 1, 1))  # 6 images, own offsets
    with torch.no_grad():
        x1 = layer.vectorise(masks)
    ratio = float(x1.std(0).mean() / x1.abs().mean())
    assert x1.abs().mean() > 0.05 and ratio > 0.1, (float(x1.abs().mean()), ratio)


@pytest.mark.parametrize("c_prime", [32, 512])
def test_affinity_sizes_configurable(c_prime):
    layer = AffinityLayer(channels=256, roi_batch=8, affinities=c_prime, sieve_stages=0)
    assert layer.W1.shape == (8, c_prime) and layer.w2.shape == (c_prime,)


def test_model_outputs_and_which_parameters_learn_from_which_loss(tiny_model):
    model = tiny_model
    model.train()
    model.zero_grad()
    x = torch.randn(2, 1, 64, 64)
    out = model(x)
    assert out.logits.shape == (2, 3)
    assert out.maps["affinity"].shape == (2, 4, 8) and out.embedding is not None and out.embedding.shape == (2, 8)
    assert out.maps["roi_boxes"].shape == (2, 3, 4) and out.maps["roi_scores"].shape == (2, 3)
    out.logits.sum().backward()
    # L_CLS reaches the backbone, sieve, affinity and FC layers ...
    assert model.detector.backbone.body.conv1.weight.grad.abs().sum() > 0
    for p in [model.affinity.W1, model.affinity.w2, *model.classifier.parameters(), *model.affinity.sieve.parameters()]:
        assert p.grad is not None
    # ... and never the copied RoI branches (Eq. 8) nor the segmentation heads
    for m in model.roi_copies():
        assert all(not p.requires_grad and p.grad is None for p in m.parameters())
    for p in [*model.detector.rpn.parameters(), *model.detector.roi_heads.parameters()]:
        assert p.grad is None
    model.zero_grad()
    losses = model.segmentation_losses(x, [_target(1), _target(2)])
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    sum(losses.values()).backward()
    # L_SEG never reaches the sieve / affinity / classifier (Eq. 9) nor the copies
    for p in [*model.affinity.parameters(), *model.classifier.parameters()]:
        assert p.grad is None
    assert model.detector.roi_heads.mask_head[0][0].weight.grad is not None


def test_segmentation_loss_on_negative_images_and_in_eval_mode(tiny_model):
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}
    tiny_model.eval()
    with torch.no_grad():
        losses = tiny_model.segmentation_losses(torch.randn(2, 1, 64, 64), [empty, _target(1)])
    assert all(torch.isfinite(v) for v in losses.values())
    assert not tiny_model.training and not tiny_model.detector.rpn.training  # modes restored
    det = tiny_model.detect(torch.randn(1, 1, 64, 64))
    assert set(det[0]) == {"boxes", "labels", "scores", "masks"}


def test_weights_copied_only_when_segmentation_loss_improves():
    torch.manual_seed(1)
    model = AffinityModel(3, "resnet18", **TINY)
    rh = model.detector.roi_heads

    def perturb():
        with torch.no_grad():
            for p in [*rh.box_head.parameters(), *rh.box_predictor.parameters(), *rh.mask_head.parameters(),
                      *rh.mask_predictor.conv5_mask.parameters()]:
                p.add_(torch.randn_like(p))

    def same() -> bool:
        pairs = [(rh.box_head, model.cls_box_head), (rh.box_predictor, model.cls_box_predictor),
                 (rh.mask_head, model.cls_mask_head), (rh.mask_predictor.conv5_mask, model.cls_mask_features[0])]
        return all(torch.equal(a, b) for src, dst in pairs
                   for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))

    perturb()
    assert not same()
    assert model.maybe_copy_branches(2.0)  # L_SEG(0) = inf: the first step copies
    assert same() and int(model.copies) == 1
    perturb()
    assert not model.maybe_copy_branches(2.5)  # worse than L_SEG(t-1) = 2.0: no copy
    assert not same() and int(model.copies) == 1
    assert not model.maybe_copy_branches(2.5)  # equal is not an improvement
    assert model.maybe_copy_branches(torch.tensor(2.4))  # better than the previous step: copy
    assert same() and int(model.copies) == 2
    assert float(model.prev_seg_loss) == pytest.approx(2.4)


def test_bad_backbone_and_anchors_are_config_errors():
    with pytest.raises(ConfigError, match="no FPN"):
        AffinityModel(3, "resnest50d")
    with pytest.raises(ConfigError, match="anchor_fractions"):
        AffinityModel(3, "resnet18", anchor_fractions=(0.1, 0.2))
