"""Class-weighted cross-entropy as the ATT2 paper uses it: weights inversely proportional to class frequency."""

from __future__ import annotations

import math

import torch

from chestdx.models import ModelOutput
from chestdx.objectives import build_objective, inverse_frequency_weights


def test_inverse_frequency_weights_for_a_known_count():
    # counts (10, 30, 60), N = 100, K = 3: w_c = N / (K n_c) = 100/30, 100/90, 100/180
    w = inverse_frequency_weights([10, 30, 60])
    assert torch.allclose(w, torch.tensor([10 / 3, 10 / 9, 5 / 9]), atol=1e-6)
    # inversely proportional: w_c * n_c is the same for every class
    assert torch.allclose(w * torch.tensor([10.0, 30.0, 60.0]), torch.full((3,), 100 / 3), atol=1e-5)


def test_balanced_ce_value_by_hand():
    # two samples, labels 0 and 2, uniform logits over 3 classes: each -log p = ln 3, so the weighted
    # mean (w0 * ln3 + w2 * ln3) / (w0 + w2) is ln 3 whatever the weights
    ce = build_objective("ce", {"class_weights": "balanced"}, 3, class_counts=[10, 30, 60])
    batch = {"target": torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])}
    out = ModelOutput(logits=torch.zeros(2, 3))
    assert math.isclose(float(ce(None, out, batch)), math.log(3), rel_tol=1e-6)
    # logits (ln 2, 0, 0) for sample 1 (label 0): -log p0 = ln 2; sample 2 (label 2): -log(1/4) = ln 4
    # weighted: (10/3 * ln2 + 5/9 * ln4) / (10/3 + 5/9) = (30 ln2 + 10 ln2) / 35 = 8/7 ln 2
    out = ModelOutput(logits=torch.tensor([[math.log(2), 0.0, 0.0], [math.log(2), 0.0, 0.0]]))
    assert math.isclose(float(ce(None, out, batch)), 8 / 7 * math.log(2), rel_tol=1e-5)
