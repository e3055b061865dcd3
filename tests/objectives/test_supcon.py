"""Supervised contrastive loss: hand computation on 2-d vectors, Eq. 1-2 of the CMC-COV19D paper."""

from __future__ import annotations

import math

import pytest
import torch

from chestdx.objectives import build_objective, supcon_loss


def unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_supcon_by_hand_four_vectors():
    z = [unit(0), unit(60), unit(150), unit(270)]
    labels = [0, 0, 1, 0]
    t = 0.5

    def s(i, j):
        return (z[i][0] * z[j][0] + z[i][1] * z[j][1]) / t

    # anchor 2 (label 1) has no positive: skipped. Anchors 0, 1, 3 each have two positives.
    per_anchor = []
    for i in (0, 1, 3):
        den = sum(math.exp(s(i, k)) for k in range(4) if k != i)
        pos = [j for j in range(4) if j != i and labels[j] == labels[i]]
        per_anchor.append(-sum(math.log(math.exp(s(i, j)) / den) for j in pos) / len(pos))
    expected = sum(per_anchor) / 3
    got = supcon_loss(torch.tensor(z), torch.tensor(labels), temperature=t)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_matches_cmc_eq_1_2_with_two_views():
    torch.manual_seed(0)
    n = 3
    y = torch.tensor([0, 1, 0])
    z = torch.nn.functional.normalize(torch.randn(2 * n, 4), dim=1)
    yy = torch.cat([y, y])  # two augmented views of each sample
    tau = 0.2
    total = 0.0
    for i in range(2 * n):
        n_y = int((y == yy[i]).sum())  # samples of the minibatch with label y_i
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i)
        acc = sum(math.log(math.exp(float(z[i] @ z[j]) / tau) / den)
                  for j in range(2 * n) if j != i and yy[j] == yy[i])
        total += -acc / (2 * n_y - 1)
    expected = total / (2 * n)
    assert supcon_loss(z, yy, temperature=tau).item() == pytest.approx(expected, rel=1e-5)


def test_no_positives_is_zero_and_differentiable():
    z = torch.nn.functional.normalize(torch.randn(3, 2), dim=1).requires_grad_(True)
    loss = supcon_loss(z, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    loss.backward()
    assert z.grad is not None


def test_bad_input():
    with pytest.raises(ValueError):
        supcon_loss(torch.randn(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        supcon_loss(torch.randn(2, 2), torch.tensor([0, 1]), temperature=0)


@pytest.mark.parametrize("params", [{}, {"in_dim": 512}, {"projection": False}])
def test_supcon_objective(params):
    from chestdx.models import ModelOutput

    torch.manual_seed(0)
    term = build_objective("supcon", params, 2)
    emb = torch.relu(torch.randn(4, 512)).requires_grad_(True)  # a pooled ResNet-18 embedding
    # the optimiser may be built before the first batch, while a lazy projection is uninitialised
    opt = torch.optim.Adam([emb, *term.parameters()], lr=1e-3)
    out = ModelOutput(logits=torch.zeros(4, 2), embedding=emb)
    loss = term(None, out, {"label": torch.tensor([0, 1, 1, 0])})
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    opt.step()
    assert emb.grad is not None
    if params.get("projection", True):
        assert term.head[2].weight.grad is not None
        assert term.head[2].weight.shape == (128, 512)
    else:
        assert term.head is None


@pytest.mark.parametrize("name, params", [("resnet_att2", {}), ("magsd", {"num_maps": 4}), ("resnet_mlp", {})])
def test_supcon_projection_is_sized_from_the_embedding(name, params):
    """ResNet50-ATT2's embedding (layer3 + layer4) and MA-Net's (M x C) are wider than their feature maps:
    the projection used to be sized from feature_dim and the first step crashed."""
    from chestdx.config import ModelConfig
    from chestdx.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, backbone="resnet18", weights="none", params=params), 2, 1)
    term = build_objective("supcon", {}, 2)
    term.materialize_for(model)
    out = model(torch.randn(4, 1, 64, 64))
    assert term.head[0].in_features == out.embedding.shape[1]
    loss = term(model, out, {"label": torch.tensor([0, 1, 1, 0])})
    loss.backward()
    assert torch.isfinite(loss)
