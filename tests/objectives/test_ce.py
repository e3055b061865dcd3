"""Cross-entropy with soft targets and class weights, against torch and by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from chestdx.errors import ConfigError
from chestdx.objectives import build_objective, inverse_frequency_weights, soft_cross_entropy


def test_one_hot_equals_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(5, 3)
    labels = torch.tensor([0, 2, 1, 2, 2])
    target = F.one_hot(labels, 3).float()
    assert torch.allclose(soft_cross_entropy(logits, target), F.cross_entropy(logits, labels))
    w = torch.tensor([0.5, 2.0, 1.5])
    assert torch.allclose(soft_cross_entropy(logits, target, w), F.cross_entropy(logits, labels, weight=w))


def test_soft_target_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = [0.25, 0.75]
    target = torch.tensor([[0.5, 0.5]])
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert soft_cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_inverse_frequency_weights_by_hand():
    # N = 40, K = 2: w = 40 / (2 * 10) = 2 and 40 / (2 * 30) = 2/3
    w = inverse_frequency_weights([10, 30])
    assert w.tolist() == [pytest.approx(2.0), pytest.approx(2 / 3)]
    assert inverse_frequency_weights([0, 5]).tolist() == [0.0, pytest.approx(0.5)]


def test_ce_objective_balanced():
    term = build_objective("ce", {"class_weights": "balanced"}, 2, class_counts=[10, 30])
    logits = torch.tensor([[0.2, -0.3], [1.0, 0.5], [-1.0, 2.0]])
    labels = torch.tensor([0, 1, 1])
    batch = {"target": F.one_hot(labels, 2).float()}

    class Out:
        pass

    out = Out()
    out.logits = logits
    expected = F.cross_entropy(logits, labels, weight=torch.tensor([2.0, 2 / 3]))
    assert torch.allclose(term(None, out, batch), expected)
    with pytest.raises(ConfigError):
        build_objective("ce", {"class_weights": "balanced"}, 2)
