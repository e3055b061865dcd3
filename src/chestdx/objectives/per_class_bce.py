"""Per-class binary cross-entropy (maskrcnn-lesion-affinity.txt, Eq. 7)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from chestdx.objectives.registry import OBJECTIVES


def per_class_bce(logits: Tensor, target: Tensor) -> Tensor:
    """Eq. 7: ``-sum_k [t_k log s(h_k) + (1 - t_k) log(1 - s(h_k))]``, averaged over the batch.

    One binary loss per class neuron (K loss values per image, summed), not a softmax
    cross-entropy.

    Args:
        logits: ``(B, K)``.
        target: ``(B, K)`` in [0, 1] (one-hot ``t^Cl``).

    Returns:
        scalar.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").sum(1).mean()


@OBJECTIVES.register("per_class_bce")
class PerClassBCE(nn.Module):
    """``term(model, out, batch)`` wrapper of :func:`per_class_bce` on ``batch["target"]``; no params."""

    def __init__(self) -> None:
        super().__init__()

    def forward(self, model: Any, out: Any, batch: dict[str, Tensor]) -> Tensor:
        return per_class_bce(out.logits, batch["target"])
