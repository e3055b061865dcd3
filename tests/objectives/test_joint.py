"""Mixup loss (CMC-COV19D Eq. 5-6) and learned uncertainty weighting (Eq. 7): hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from chestdx.errors import ConfigError
from chestdx.models import ModelOutput
from chestdx.objectives import build_objective, mixup_loss, uncertainty_weighting


def test_mixup_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    perm = torch.tensor([1, 0])
    lam = 0.7
    # mixed labels: row 0 = 0.7 [1, 0] + 0.3 [0, 1]; row 1 = 0.7 [0, 1] + 0.3 [1, 0]
    lp0 = [2 - math.log(math.exp(2) + 1), -math.log(math.exp(2) + 1)]
    lp1 = [-math.log(1 + math.e), 1 - math.log(1 + math.e)]
    ce0 = -(0.7 * lp0[0] + 0.3 * lp0[1])
    ce1 = -(0.3 * lp1[0] + 0.7 * lp1[1])
    assert mixup_loss(logits, target, perm, lam).item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    # lam = 1 is plain cross-entropy
    ce = torch.nn.functional.cross_entropy(logits, target.argmax(1))
    assert mixup_loss(logits, target, perm, 1.0).item() == pytest.approx(ce.item(), rel=1e-6)


def test_uncertainty_weighting_value_and_gradient_signs():
    losses = torch.tensor([2.0, 0.5], requires_grad=True)
    log_sigma = torch.tensor([0.0, math.log(2.0)], requires_grad=True)
    total = uncertainty_weighting(losses, log_sigma)
    # 2 / 1 + 0.5 / 2 + log 1 + log 2
    assert total.item() == pytest.approx(2.0 + 0.25 + 0.0 + math.log(2.0), rel=1e-6)
    g_loss, g_sigma = torch.autograd.grad(total, (losses, log_sigma))
    torch.testing.assert_close(g_loss, torch.tensor([1.0, 0.5]))  # 1 / sigma
    # d/ds = 1 - L / sigma: loss above sigma -> negative (sigma grows), below -> positive
    torch.testing.assert_close(g_sigma, torch.tensor([1 - 2.0, 1 - 0.25]))
    assert g_sigma[0] < 0 < g_sigma[1]
    # at sigma = L the derivative is 0 (the optimum of Eq. 7)
    s = torch.tensor([math.log(3.0)], requires_grad=True)
    (gs,) = torch.autograd.grad(uncertainty_weighting(torch.tensor([3.0]), s), s)
    assert gs.abs().item() < 1e-6


class _Linear(nn.Module):
    """A tiny 'model': GAP over the volume then a linear layer (forward_head like the 3D nets)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.fc.bias.zero_()

    def forward_head(self, f):
        emb = f.mean(dim=(2, 3, 4))
        return self.fc(emb), emb

    def forward(self, x):
        logits, emb = self.forward_head(x)
        return ModelOutput(logits=logits, features=x, embedding=emb)


def test_mixup_objective_input_and_representation_agree_for_a_linear_model():
    model = _Linear()
    x = torch.tensor([0.2, 0.9, 0.5, 0.1]).view(4, 1, 1, 1, 1).expand(4, 1, 2, 2, 2).contiguous()
    target = torch.eye(2)[[0, 1, 0, 1]]
    batch = {"image": x, "target": target, "label": target.argmax(1),
             "mix_lambda": torch.tensor(0.6), "mix_perm": torch.tensor([2, 3, 0, 1])}
    out = model(x)
    a = build_objective("mixup_ce", {"level": "input"}, 2)(model, out, batch)
    b = build_objective("mixup_ce", {"level": "representation"}, 2)(model, out, batch)
    mixed = 0.6 * x + 0.4 * x[[2, 3, 0, 1]]
    expected = mixup_loss(model(mixed).logits, target, torch.tensor([2, 3, 0, 1]), 0.6)
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(b, expected)
    with pytest.raises(ConfigError, match="level"):
        build_objective("mixup_ce", {"level": "pixels"}, 2)


def test_uncertainty_objective_groups_terms_and_learns_sigma():
    model = _Linear()
    x = torch.rand(4, 1, 2, 2, 2)
    target = torch.eye(2)[[0, 1, 0, 1]]
    batch = {"image": x, "target": target, "label": target.argmax(1)}
    term = build_objective("uncertainty", {"groups": [[{"name": "ce"}], [{"name": "ce", "weight": 2.0}]],
                                           "init_log_sigma": 0.5}, 2)
    assert [n for n, _ in term.named_parameters()] == ["log_sigma"]
    out = model(x)
    ce = torch.nn.functional.cross_entropy(out.logits, target.argmax(1))
    got = term(model, out, batch)
    expected = math.exp(-0.5) * ce.item() + 0.5 + math.exp(-0.5) * 2 * ce.item() + 0.5
    assert got.item() == pytest.approx(expected, rel=1e-5)
    got.backward()
    assert term.log_sigma.grad is not None and term.last_parts["sigma1"] == pytest.approx(math.exp(0.5))
    with pytest.raises(ConfigError, match="groups"):
        build_objective("uncertainty", {"groups": []}, 2)
    with pytest.raises(ConfigError, match="unknown objective"):
        build_objective("uncertainty", {"groups": [[{"name": "nope"}]]}, 2)
