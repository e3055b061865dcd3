"""Losses and regularisers, each a weighted term of a recipe's ``objectives`` list.

Every objective is an ``nn.Module`` called as ``term(model, out, batch) -> scalar``:

- ``model``: the :class:`~chestdx.models.ChestModel` (for terms that need CAM, i.e. the head);
- ``out``: its :class:`~chestdx.models.ModelOutput` on ``batch["image"]``;
- ``batch``: ``image (B, C, H, W)``, ``label (B,)`` long, ``target (B, K)`` soft labels (one-hot
  unless a mixing changed them), ``site (B,)`` long, and whatever a mixing added.

All losses take logits, never softmax outputs. A new term is a module that registers its class (or
factory) in :data:`~chestdx.objectives.registry.OBJECTIVES` (``@OBJECTIVES.register("name")``) and is
imported below; the recipe's ``params`` are checked against its signature when the recipe loads.
"""

from __future__ import annotations

# the objective modules register themselves in OBJECTIVES when imported (none imports this package)
from chestdx.objectives.contrastive import SupCon, supcon_loss
from chestdx.objectives.cross_entropy import (
    CrossEntropy,
    inverse_frequency_weights,
    resolve_class_weights,
    soft_cross_entropy,
)
from chestdx.objectives.joint import (
    MixupCE,
    UncertaintyWeighted,
    mixup_loss,
    objective_problems,
    uncertainty_weighting,
)
from chestdx.objectives.patch_contrastive import ContrastivePatchEmbedding, cpe_loss
from chestdx.objectives.per_class_bce import PerClassBCE, per_class_bce
from chestdx.objectives.registry import OBJECTIVES, build_objective, objective_names
from chestdx.objectives.soft_distance import SoftDistance, soft_distance

__all__ = [
    "OBJECTIVES",
    "ContrastivePatchEmbedding",
    "CrossEntropy",
    "MixupCE",
    "PerClassBCE",
    "SoftDistance",
    "SupCon",
    "UncertaintyWeighted",
    "build_objective",
    "cpe_loss",
    "inverse_frequency_weights",
    "mixup_loss",
    "objective_names",
    "objective_problems",
    "per_class_bce",
    "resolve_class_weights",
    "soft_cross_entropy",
    "soft_distance",
    "supcon_loss",
    "uncertainty_weighting",
]
