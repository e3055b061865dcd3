"""Soft distance regularisation (MAG-SD Algorithm 1) on hand-made logits, both branches."""

from __future__ import annotations

import math

import pytest
import torch

from chestdx.errors import ConfigError
from chestdx.models.base import ModelOutput
from chestdx.objectives import build_objective, soft_distance

# image 0: primary softmax [0.9, 0.1], label 0 -> confident (0.9 > 0.7): reference P' = [0.9, 0.1]
# image 1: primary softmax [0.5, 0.5], label 1 -> not confident (0.5 < 0.7): reference P' = G = [0, 1]
PRIMARY = torch.tensor([[math.log(9.0), 0.0], [0.0, 0.0]])
LABELS = torch.tensor([0, 1])
# one augmented view: image 0 softmax [0.5, 0.5], image 1 softmax [0.75, 0.25]
VIEW = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
CE = (-math.log(0.9) - math.log(0.5)) / 2


def test_soft_distance_both_branches_by_hand():
    loss, ce, d = soft_distance(PRIMARY, VIEW, LABELS, threshold=0.7, return_parts=True)
    # |P' - p|: image 0 |0.9-0.5|, |0.1-0.5| = 0.4, 0.4; image 1 |0-0.75|, |1-0.25| = 0.75, 0.75
    assert ce.item() == pytest.approx(CE, abs=1e-6)
    assert d.item() == pytest.approx((0.4 + 0.4 + 0.75 + 0.75) / 4, abs=1e-6)
    assert loss.item() == pytest.approx(CE + 0.575, abs=1e-6)


def test_threshold_switches_the_reference():
    # with theta = 0.95 image 0 is no longer confident: its reference becomes G = [1, 0]
    _, _, d = soft_distance(PRIMARY, VIEW, LABELS, threshold=0.95, return_parts=True)
    assert d.item() == pytest.approx((0.5 + 0.5 + 0.75 + 0.75) / 4, abs=1e-6)


def test_views_are_averaged_and_soft_targets_accepted():
    same = PRIMARY.clone()  # a view identical to the primary: image 0 distance 0, image 1 |[0,1]-[.5,.5]|
    aux = torch.stack([VIEW, same])
    onehot = torch.nn.functional.one_hot(LABELS, 2).float()
    loss = soft_distance(PRIMARY, aux, onehot)
    assert loss.item() == pytest.approx(CE + (0.575 + 0.25) / 2, abs=1e-6)


def test_l2_alternative_by_hand():
    _, _, d = soft_distance(PRIMARY, VIEW, LABELS, distance="l2", return_parts=True)
    # (p - G)^2: image 0 (0.5-1)^2, 0.5^2; image 1 0.75^2, 0.75^2
    assert d.item() == pytest.approx((0.25 + 0.25 + 0.5625 + 0.5625) / 4, abs=1e-6)


def test_no_views_is_cross_entropy_and_reference_is_detached():
    p = PRIMARY.clone().requires_grad_(True)
    assert soft_distance(p, torch.zeros(0, 2, 2), LABELS).item() == pytest.approx(CE, abs=1e-6)
    v = VIEW.clone().requires_grad_(True)
    _, _, d = soft_distance(p, v, LABELS, return_parts=True)
    d.backward()
    assert p.grad is None or torch.count_nonzero(p.grad) == 0  # only the views are pulled
    assert torch.count_nonzero(v.grad) > 0


def test_objective_splits_the_mixer_layout():
    term = build_objective("soft_distance", {"threshold": 0.7}, num_classes=2)
    logits = torch.cat([PRIMARY, VIEW])
    batch = {"target": torch.nn.functional.one_hot(LABELS.repeat(2), 2).float(), "num_views": torch.tensor(2)}
    assert term(None, ModelOutput(logits=logits), batch).item() == pytest.approx(CE + 0.575, abs=1e-6)
    with pytest.raises(ValueError, match="views"):
        term(None, ModelOutput(logits=logits[:3]), batch)


def test_bad_parameters():
    with pytest.raises(ConfigError):
        build_objective("soft_distance", {"distance": "l3"}, num_classes=2)
    with pytest.raises(ConfigError):
        build_objective("soft_distance", {"threshold": 2.0}, num_classes=2)
    with pytest.raises(ValueError):
        soft_distance(PRIMARY, torch.zeros(3, 2), LABELS)


def test_class_weights_weight_only_the_cross_entropy():
    # weights (1, 3): CE = (1 * -log 0.9 + 3 * -log 0.5) / (1 + 3); the distance term is unchanged
    ce_w = (-math.log(0.9) + 3 * -math.log(0.5)) / 4
    _, ce, d = soft_distance(PRIMARY, VIEW, LABELS, return_parts=True, class_weight=torch.tensor([1.0, 3.0]))
    assert ce.item() == pytest.approx(ce_w, abs=1e-6) and d.item() == pytest.approx(0.575, abs=1e-6)
    # "balanced" from class counts (30, 10): inverse frequency, the same 1 : 3 ratio
    term = build_objective("soft_distance", {"class_weights": "balanced"}, num_classes=2, class_counts=[30, 10])
    batch = {"target": torch.nn.functional.one_hot(LABELS.repeat(2), 2).float(), "num_views": torch.tensor(2)}
    out = ModelOutput(logits=torch.cat([PRIMARY, VIEW]))
    assert term(None, out, batch).item() == pytest.approx(ce_w + 0.575, abs=1e-6)
    with pytest.raises(ConfigError, match="class counts"):
        build_objective("soft_distance", {"class_weights": "balanced"}, num_classes=2)
    with pytest.raises(ConfigError, match="3 values"):
        build_objective("soft_distance", {"class_weights": [1, 2, 3]}, num_classes=2)


def test_smoothing_leaves_the_cross_entropy_target_alone_for_soft_targets():
    """``smoothing`` changes only the distance term's G: a (B, K) one-hot target gives the same loss
    and the same cross-entropy as the integer labels (it used to smooth the CE target too)."""
    torch.manual_seed(0)
    primary, aux = torch.randn(4, 3), torch.randn(2, 4, 3)
    y = torch.tensor([0, 2, 1, 2])
    onehot = torch.nn.functional.one_hot(y, 3).float()
    for distance in ("soft", "l2"):
        a = soft_distance(primary, aux, y, distance=distance, smoothing=0.01, return_parts=True)
        b = soft_distance(primary, aux, onehot, distance=distance, smoothing=0.01, return_parts=True)
        for x1, x2 in zip(a, b, strict=True):
            torch.testing.assert_close(x1, x2)
        torch.testing.assert_close(b[1], torch.nn.functional.cross_entropy(primary, y))
