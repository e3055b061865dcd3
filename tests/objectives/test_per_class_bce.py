"""Per-class binary cross-entropy (affinity paper Eq. 7), checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from chestdx.objectives import build_objective, per_class_bce


def test_per_class_bce_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0), -math.log(3.0)]])  # sigmoids 1/2, 3/4, 1/4
    target = torch.tensor([[0.0, 1.0, 0.0]])
    # -[log(1 - 1/2) + log(3/4) + log(1 - 1/4)]
    expected = -(math.log(0.5) + math.log(0.75) + math.log(0.75))
    assert per_class_bce(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_registered_objective_reads_the_target():
    term = build_objective("per_class_bce", {}, 3)

    class Out:
        logits = torch.zeros(2, 3)

    batch = {"target": torch.eye(3)[:2]}
    assert term(None, Out(), batch).item() == pytest.approx(3 * math.log(2.0), rel=1e-6)
