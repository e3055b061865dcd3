"""ResNet50-ATT2: a ResNet with learned attention at two depths (resnet50-att2-bilstm-covidx-ct.txt,
Sections III-B and IV-A; the attention of Jetley et al., "Learn to pay attention").

Architecture (ResNet-50 figures; channel counts follow the chosen backbone)::

    x (B, 1, 224, 224) -> stem, layer1, layer2, layer3 -> l3 (B, 1024, 14, 14)   "conv layer 40"
                       -> layer4                       -> l4 (B, 2048, 7, 7)     "conv layer 49"
                       -> tail: 3 more blocks, stride 1 -> t  (B, 2048, 7, 7)
    g  = GAP(t)                                   (B, 2048)  the global feature
    a1, g1 = attention(l3, g)                     (B, 14, 14), (B, 1024)
    a2, g2 = attention(l4, g)                     (B, 7, 7),   (B, 2048)
    embedding = [g1, g2]                          (B, 3072)
    logits = W embedding + b                      (B, K)     the linear classifier

One attention module (Eqs. 7-12): project the local features into g's space, ``x^_i = W_p x_i``
(Eq. 7, a 1x1 convolution without bias); score every position, either with the parametrised
compatibility ``s_i = <u, x^_i + g>`` (Eq. 11, the paper's choice) or the dot product
``s_i = <x^_i, g>`` (Eq. 12); softmax over the ``h * w`` positions (Eq. 9); the attended feature is
``g^ = sum_i a_i x_i`` over the *unprojected* local features (Eq. 10), which is what gives the
paper's 1024 + 2048 = 3072 embedding.

Readings chosen where the paper is open:

- The tail repeats the backbone's own last block type (bottleneck for ResNet-50, basic block for
  ResNet-18/34) with the layer4 width, stride 1, no downsampling; it is randomly initialised even
  when the backbone is ImageNet-initialised (the paper initialises "the default layers").
- ``W_p`` is learned for both modules, also where the channel counts already match (layer4), as
  Eq. 7 is written for every module.
- With Eq. 11 the term ``<u, g>`` is the same for every position, so it cancels in the softmax:
  the attention map depends on g only through training (as in Jetley et al.'s formulation). The dot
  product of Eq. 12 makes the map depend on g at inference too.
- The classifier is one linear layer (the recipe's ``head_hidden`` is ignored; ``dropout`` is
  applied before it, 0 in the paper's recipe).

For hook-free Grad-CAM (:mod:`chestdx.explain.cam`) the model splits at layer3:
``forward_features`` returns ``l3`` and ``forward_head`` runs layer4, the tail, both attention
modules and the classifier, so ``logits = forward_head(forward_features(x))`` holds exactly.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from chestdx.errors import ConfigError
from chestdx.models.backbones import build_resnet, require_resnet
from chestdx.models.base import ChestModel, ModelOutput
from chestdx.models.registry import MODELS, SECTION_ARGS

Compatibility = Literal["parametrised", "dot"]
COMPATIBILITIES: tuple[str, ...] = ("parametrised", "dot")


class GridAttention(nn.Module):
    """One attention module (Eqs. 7-12): local features ``(B, C, h, w)`` attended against ``g (B, G)``.

    Args:
        local_channels: ``C``, channels of the local feature map.
        global_channels: ``G``, size of the global feature g.
        compatibility: ``"parametrised"`` (Eq. 11, ``<u, W_p x_i + g>``) or ``"dot"``
            (Eq. 12, ``<W_p x_i, g>``).

    Raises:
        ConfigError: unknown compatibility.
    """

    def __init__(self, local_channels: int, global_channels: int, compatibility: str = "parametrised"):
        super().__init__()
        if compatibility not in COMPATIBILITIES:
            raise ConfigError(f"unknown attention compatibility '{compatibility}'; choose one of "
                              f"{list(COMPATIBILITIES)} (Eq. 11 or Eq. 12)")
        self.compatibility = compatibility
        self.project = nn.Conv2d(local_channels, global_channels, kernel_size=1, bias=False)  # W_p
        self.u: nn.Conv2d | None = (nn.Conv2d(global_channels, 1, kernel_size=1, bias=False)
                                    if compatibility == "parametrised" else None)

    def scores(self, x: Tensor, g: Tensor) -> Tensor:
        """Compatibility scores ``s_i`` (Eq. 8): ``x (B, C, h, w)``, ``g (B, G)`` -> ``(B, h, w)``."""
        xp = self.project(x)  # Eq. 7: (B, G, h, w)
        gg = g[:, :, None, None].to(xp.dtype)
        if self.u is not None:
            return self.u(xp + gg)[:, 0]  # Eq. 11
        return (xp * gg).sum(dim=1)  # Eq. 12

    def forward(self, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """Attend.

        Args:
            x: local features ``(B, C, h, w)``.
            g: global feature ``(B, G)``.

        Returns:
            ``(attended (B, C), attention (B, h, w))``; the attention sums to 1 over the ``h * w``
            positions of each image (Eq. 9).
        """
        s = self.scores(x, g)
        a = torch.softmax(s.flatten(1).float(), dim=1).view_as(s)  # Eq. 9
        attended = torch.einsum("bhw,bchw->bc", a.to(x.dtype), x)  # Eq. 10
        return attended, a


class ResNetATT2(ChestModel):
    """ResNet + 3-block tail + two attention modules (layer3, layer4) + linear classifier.

    Shapes (ResNet-50 at 224 px; ResNet-18 has 256 / 512 channels and a 768 embedding):
    input ``(B, in_chans, H, W)``; ``features`` = layer3 output ``(B, 1024, H/16, W/16)``
    (``feature_dim`` 1024); ``embedding`` ``(B, 3072)`` (``embedding_dim``); ``logits`` ``(B, K)``; ``maps["att1"]`` ``(B, H/16, W/16)`` and
    ``maps["att2"]`` ``(B, H/32, W/32)``, each a softmax over positions (sums to 1 per image).

    Args:
        num_classes: K.
        backbone: a torchvision ResNet name (``resnet50`` in the paper; ``resnet18`` for tests).
        in_chans: input channels.
        weights: ``none`` / ``imagenet`` / a path (see :mod:`chestdx.models.backbones`).
        compatibility: ``parametrised`` (Eq. 11, the paper) or ``dot`` (Eq. 12).
        tail_blocks: extra stride-1 blocks after layer4 (3 in the paper).
        dropout: before the classifier.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet50", in_chans: int = 1,
                 weights: str = "none", compatibility: str = "parametrised", tail_blocks: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        if tail_blocks < 0:
            raise ConfigError(f"tail_blocks must be >= 0, got {tail_blocks}")
        require_resnet("resnet_att2", backbone)  # splits at layer3 / layer4, tail of the ResNet's block type
        self.num_classes = num_classes
        self.in_chans = in_chans
        net: Any
        net, c4 = build_resnet(backbone, in_chans, weights)
        self.backbone: Any = net
        block_type = type(net.layer4[-1])
        expansion = int(getattr(block_type, "expansion", 1))
        c3 = int(net.layer4[0].conv1.in_channels)  # layer3's output channels
        self.local_channels = (c3, c4)
        self.tail = nn.Sequential(*[block_type(c4, c4 // expansion) for _ in range(tail_blocks)])
        self.att1 = GridAttention(c3, c4, compatibility)
        self.att2 = GridAttention(c4, c4, compatibility)
        self.feature_dim = c3  # channels of ``features`` (layer3)
        self.embedding_dim = c3 + c4  # the concatenated attended features
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.embedding_dim, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, in_chans, H, W)`` -> layer3 output ``(B, C3, H/16, W/16)``."""
        n: Any = self.backbone
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer3(n.layer2(n.layer1(x)))

    def _head(self, l3: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        l4 = self.backbone.layer4(l3)
        g = self.tail(l4).mean(dim=(-2, -1))  # (B, C4)
        g1, a1 = self.att1(l3, g)
        g2, a2 = self.att2(l4, g)
        emb = torch.cat([g1, g2], dim=1)  # (B, C3 + C4)
        logits = self.classifier(self.dropout(emb))
        return logits, emb, {"att1": a1, "att2": a2}

    def forward_head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """layer3 output ``(B, C3, h, w)`` -> logits ``(B, K)`` and embedding ``(B, C3 + C4)``."""
        logits, emb, _ = self._head(features)
        return logits, emb

    def forward(self, x: Tensor) -> ModelOutput:
        l3 = self.forward_features(x)
        logits, emb, maps = self._head(l3)
        return ModelOutput(logits=logits, features=l3, embedding=emb, maps=maps)


@MODELS.register("resnet_att2", accepts=ResNetATT2, fixed=SECTION_ARGS)
def _resnet_att2(cfg: Any, num_classes: int, in_chans: int) -> ChestModel:
    """ResNet50-ATT2; ``params``: compatibility (parametrised | dot), tail_blocks."""
    return ResNetATT2(num_classes, cfg.backbone, in_chans, cfg.weights, dropout=cfg.dropout, **cfg.params)
