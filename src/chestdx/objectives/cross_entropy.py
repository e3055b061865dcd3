"""Cross-entropy on soft targets, class weights, and the ``ce`` objective.

The helpers (:func:`soft_cross_entropy`, :func:`resolve_class_weights`) serve the other objectives
too (``soft_distance``, ``mixup_ce``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chestdx.errors import ConfigError
from chestdx.objectives.registry import OBJECTIVES


def inverse_frequency_weights(class_counts: Sequence[int]) -> Tensor:
    """Class weights inversely proportional to class frequency, ``w_c = N / (K * n_c)``.

    ``(K,)``; a class with no samples gets weight 0. Balanced counts give all ones.
    """
    counts = torch.as_tensor(list(class_counts), dtype=torch.float32)
    n, k = counts.sum(), len(counts)
    w = torch.where(counts > 0, n / (k * counts.clamp(min=1)), torch.zeros_like(counts))
    return w


def soft_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy with soft targets, on logits.

    Args:
        logits: ``(B, K)``.
        target: ``(B, K)`` rows summing to 1 (one-hot or mixed labels).
        weight: optional ``(K,)`` class weights; the batch mean is normalised by the summed weight
            of the targets, as ``F.cross_entropy(weight=...)`` does for hard labels.

    Returns:
        scalar.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    if weight is None:
        return -(target * logp).sum(dim=-1).mean()
    w = weight.to(logp)
    per = -(target * w * logp).sum(dim=-1)
    return per.sum() / (target * w).sum().clamp(min=1e-12)


def resolve_class_weights(num_classes: int, class_counts: Sequence[int] | None,
                          class_weights: str | Sequence[float] | None) -> Tensor | None:
    """A recipe's ``class_weights`` as a ``(K,)`` tensor: ``None`` -> None (unweighted),
    ``"balanced"`` -> inverse class frequency of the training set, a list -> those K weights.

    Raises:
        ConfigError: ``balanced`` without class counts, or a list of the wrong length.
    """
    if class_weights is None:
        return None
    if class_weights == "balanced":
        if class_counts is None:
            raise ConfigError("class_weights: balanced needs the training set's class counts")
        return inverse_frequency_weights(class_counts)
    if isinstance(class_weights, str):
        raise ConfigError(f"class_weights must be balanced or a list of {num_classes} numbers, got {class_weights!r}")
    w = torch.as_tensor(list(class_weights), dtype=torch.float32)
    if len(w) != num_classes:
        raise ConfigError(f"class_weights has {len(w)} values for {num_classes} classes")
    return w


@OBJECTIVES.register("ce")
class CrossEntropy(nn.Module):
    """Cross-entropy on logits against ``batch["target"]`` (soft labels from mixing are honoured).

    ``class_weights``: ``None`` (unweighted, the cam-snapmix paper), ``"balanced"`` (inverse class
    frequency of the training set, the ATT2 paper) or an explicit list of K weights.
    """

    def __init__(self, num_classes: int, class_counts: Sequence[int] | None = None,
                 class_weights: str | Sequence[float] | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        w = resolve_class_weights(num_classes, class_counts, class_weights)
        self.register_buffer("weight", w if w is not None else torch.ones(0), persistent=False)
        self._weighted = w is not None

    def forward(self, model: nn.Module, out: Any, batch: dict[str, Tensor]) -> Tensor:
        target = batch["target"]
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        weight: Tensor | None = self.weight if self._weighted else None  # type: ignore[assignment]
        return soft_cross_entropy(out.logits, target, weight)


__all__ = ["CrossEntropy", "inverse_frequency_weights", "resolve_class_weights", "soft_cross_entropy"]
