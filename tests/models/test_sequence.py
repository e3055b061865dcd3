"""Bi-LSTM with soft attention (models/sequence.py): Eqs. 1-4 by hand, shapes, frozen encoder."""

from __future__ import annotations

import math

import pytest
import torch

from chestdx.config import load_recipe
from chestdx.errors import ConfigError, WeightsNotFoundError
from chestdx.models import build_model
from chestdx.models.attention import ResNetATT2
from chestdx.models.sequence import SequenceClassifier, SequenceSoftAttention


def test_sequence_soft_attention_by_hand():
    # dim 1: W_g = 0, b_g = atanh(ln 2) -> g = ln 2 (Eq. 1); W_s = 1 -> s_i = ln2 * h_i (Eq. 2)
    # h = (0, 1, 2): exp(s) = (1, 2, 4) -> a = (1, 2, 4) / 7 (Eq. 3); context = (0 + 2 + 8) / 7 (Eq. 4)
    att = SequenceSoftAttention(1)
    with torch.no_grad():
        att.global_proj.weight.zero_()
        att.global_proj.bias.fill_(math.atanh(math.log(2.0)))
        att.score.weight.fill_(1.0)
    h = torch.tensor([0.0, 1.0, 2.0]).view(1, 3, 1)
    context, a = att(h, torch.tensor([[123.0]]))
    assert torch.allclose(a, torch.tensor([[1.0, 2.0, 4.0]]) / 7.0, atol=1e-6)
    assert torch.allclose(context, torch.tensor([[10.0 / 7.0]]), atol=1e-6)


def test_sequence_attention_sums_to_one():
    torch.manual_seed(0)
    att = SequenceSoftAttention(6)
    _, a = att(torch.randn(4, 16, 6), torch.randn(4, 6))
    assert a.shape == (4, 16) and torch.allclose(a.sum(1), torch.ones(4), atol=1e-6)


def test_sequence_classifier_shapes_frozen_encoder_and_gradients():
    torch.manual_seed(0)
    enc = ResNetATT2(3, "resnet18")
    m = SequenceClassifier(enc, 3, hidden=8, chunk=5)
    m.train()
    assert not m.encoder.training  # the frozen encoder stays in eval mode
    x = torch.randn(2, 6, 1, 32, 32)
    out = m(x)
    assert out.logits.shape == (2, 3) and out.embedding.shape == (2, 16) and out.features.shape == (2, 6, 768)
    assert out.maps["sequence_attention"].shape == (2, 6)
    assert torch.allclose(out.maps["sequence_attention"].sum(1), torch.ones(2), atol=1e-5)
    assert out.maps["att1"].shape == (2, 6, 2, 2)
    out.logits.sum().backward()
    assert all(p.grad is None for p in m.encoder.parameters())
    assert m.head.lstm.weight_ih_l0.grad.abs().sum() > 0
    assert m.head.attention.score.weight.grad.abs().sum() > 0
    # ready embeddings (B, T, D) skip the encoder and give the same answer
    with torch.no_grad():
        m.eval()
        a, b = m(x), m(out.features.detach())
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(m.forward_head(m.forward_features(x))[0], a.logits, atol=1e-5)


def test_att2_bilstm_recipe_needs_an_encoder(tmp_path):
    r = load_recipe("att2_bilstm", ["model.backbone=resnet18", "model.head_hidden=8"])
    assert r.task == "sequence" and r.data.sequence_length == 16 and r.data.short_scans == "skip"
    assert (r.optim.lr, r.optim.weight_decay, r.trainer.epochs, r.trainer.early_stopping.patience) == \
        (1e-4, 5e-3, 50, 10)
    with pytest.raises(ConfigError, match="model.params.encoder"):
        build_model(r.model, 3)
    with pytest.raises(WeightsNotFoundError, match="not found"):
        build_model(r.model.model_copy(update={"params": {"encoder": str(tmp_path / "nope")}}), 3)
    m = build_model(r.model.model_copy(update={"params": {"encoder": "none"}}), 3)
    assert isinstance(m, SequenceClassifier) and m.embed_dim == 768
