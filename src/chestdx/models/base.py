"""The one interface every chestdx classifier shares.

Every model maps an input batch to a :class:`ModelOutput`: logits, the last spatial feature map
(for CAM, Grad-CAM and the patch losses), a pooled embedding (for contrastive losses) and any
explanation maps the architecture makes itself (attention). Training, evaluation, prediction and
serving read only this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class ModelOutput:
    """What a forward pass returns.

    Attributes:
        logits: ``(B, K)`` unnormalised class scores (losses take logits, never softmax).
        features: ``(B, C, h, w)`` last spatial feature map (``(B, C, d, h, w)`` for 3D), or None.
        embedding: ``(B, D)`` pooled embedding fed to the head, or None.
        maps: named explanation maps made by the model itself, e.g. attention ``(B, h, w)``.
    """

    logits: Tensor
    features: Tensor | None = None
    embedding: Tensor | None = None
    maps: dict[str, Tensor] = field(default_factory=dict)

    @property
    def probs(self) -> Tensor:
        """``(B, K)`` softmax probabilities."""
        return torch.softmax(self.logits.float(), dim=-1)


class ChestModel(nn.Module):
    """Base class: ``forward_features`` -> ``forward_head`` -> :class:`ModelOutput`.

    Subclasses set ``num_classes``, ``in_chans`` and ``feature_dim`` and implement the two halves.
    Keeping them apart lets CAM / Grad-CAM differentiate the head with respect to the features
    without hooks.
    """

    num_classes: int
    in_chans: int
    feature_dim: int

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, in_chans, H, W)`` -> ``(B, C, h, w)``."""
        raise NotImplementedError

    def forward_head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, h, w)`` -> logits ``(B, K)`` and pooled embedding ``(B, C)``."""
        raise NotImplementedError

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The pretrained part's parameters (``self.backbone`` where the model has one), for
        discriminative learning rates (``optim.backbone_lr``); empty when there is none."""
        bb = getattr(self, "backbone", None)
        return list(bb.parameters()) if isinstance(bb, nn.Module) else []

    def forward(self, x: Tensor) -> ModelOutput:
        feats = self.forward_features(x)
        logits, emb = self.forward_head(feats)
        return ModelOutput(logits=logits, features=feats, embedding=emb)
