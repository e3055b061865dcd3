"""MA-Net: the multiscale attention network of MAG-SD (mag-sd-multiscale-attention-cxr.txt, Sec. 3.2).

Architecture (Fig. 2-4 of the paper)::

    image (B, 1, H, W) -> ResNet stages
        f1 = layer2 (B, 512, 28, 28)   f2 = layer3 (B, 1024, 14, 14)   f3 = layer4 (B, 2048, 7, 7)
    attention generator (Fig. 3): a_i = ReLU(BN(Conv1x1(f_i)))  -> (B, M, h_i, w_i), M = 32
        each a_i downsampled to f3's grid (7 x 7) by average pooling, then combined residually:
        A = a_3 + down(a_2) [+ down(a_1)]                          -> (B, M, 7, 7)
    attention pooling (Fig. 4, Eq. 1): PF_j = A_j * f3, GAP(PF_j) -> (B, C) for j = 1..M,
        concatenated to the feature matrix (B, M * C) = (B, 65536) -> linear classifier -> (B, K)

Sizes are those of ResNet-50 at 224 px; at other sizes the grids scale (64 px: 8/4/2) and for
ResNet-18 the channels are 128 / 256 / 512.

Readings chosen where the paper is silent (each follows the authors' public code, StonHamA/MAG-SD,
``core/model.py``, where it exists):

- ``scales``: 1 = f3 only (the "7*7" row of Table 5), 2 = f3 + f2 (the proposed "7*7 + 14*14"
  row, the default), 3 = all three.
- The 1x1 convolutions have no bias and are followed by batch norm and ReLU (as WS-DAN's and the
  reference's attention layers), so attention maps are non-negative.
- "Downsampled to 7 x 7": adaptive average pooling to f3's grid (the reference's ``AvgPool2d``).
- "Connected residually": element-wise sum of the per-scale maps.
- Attention pooling is Eq. (1) + GAP + concatenation, divided by ``sqrt(M)`` before the
  classifier (``feature_norm="sqrt_m"``, the default). The division only reparameterises the linear
  classifier (same function class), but it gives the ``M * C`` feature matrix the norm of one GAP
  vector, so the recipe's SGD lr 1e-2 trains MA-Net as it trains the ResNet baseline. Without it
  (``feature_norm="none"``, Eq. 1 literally) the classifier's step is ``M = 32`` times larger: on
  the phantom X-rays (ResNet-18, 64 px) the first epoch's loss reached 20 and the network collapsed
  to a uniform answer (val loss ln 3 for 15 epochs). The reference code applies a signed square
  root, an L2 normalisation and a factor 100 instead; that is ``feature_norm="sqrt_l2"`` (diverged
  the same way at lr 1e-2).
- The classifier is one linear layer on the feature matrix (the reference's ``fc``, no hidden
  layer: the recipe's ``head_hidden`` is not used), with the recipe's ``dropout`` before it.
- ``pooling="gap"`` / ``"gmp"`` (Table 6): global average / max pooling of f3 replaces attention
  pooling and the classifier reads ``(B, C)``. The attention generator is still built and its maps
  are still returned (they drive the attention-guided augmentation and localisation), but the
  classification loss no longer trains it.

Interface detail: :meth:`MANet.forward_features` returns f3 **concatenated with the lower-scale
attention** already resized to f3's grid, ``(B, C + M, h, w)`` (just ``(B, C, h, w)`` when
``scales == 1``), so that :meth:`forward_head` is a pure function of the features: CAM / Grad-CAM
(:mod:`chestdx.explain.cam`) differentiate it without hooks like every other chestdx model.
``feature_dim`` counts both parts.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chestdx.errors import ConfigError
from chestdx.models.backbones import Backbone, build_backbone
from chestdx.models.base import ChestModel, ModelOutput
from chestdx.models.registry import MODELS, SECTION_ARGS

Pooling = Literal["attention", "gap", "gmp"]
_EPS = 1e-12


def _stage_channels(net: Any) -> list[int]:
    """Output channels of the backbone's stages, shallow to deep (ResNet: layer1..layer4)."""
    return list(net.stage_channels)


def attention_pooling(features: Tensor, attention: Tensor) -> Tensor:
    """Attention pooling (Eq. 1 + GAP + concatenation): ``GAP(A_j * f)`` for each map, concatenated.

    Args:
        features: ``(B, C, h, w)`` feature map f3.
        attention: ``(B, M, h, w)`` attention maps on the same grid.

    Returns:
        ``(B, M * C)`` feature matrix, map-major: entries ``j*C .. (j+1)*C - 1`` belong to map j.

    Raises:
        ValueError: the two grids or batch sizes differ.
    """
    if features.ndim != 4 or attention.ndim != 4 or features.shape[0] != attention.shape[0] \
            or features.shape[-2:] != attention.shape[-2:]:
        raise ValueError(f"attention_pooling: features {tuple(features.shape)} and attention "
                         f"{tuple(attention.shape)} must be (B, C, h, w) and (B, M, h, w)")
    b, _, h, w = features.shape
    matrix = torch.einsum("bmhw,bchw->bmc", attention, features) / float(h * w)
    return matrix.reshape(b, -1)


class MultiscaleAttention(nn.Module):
    """The multiscale attention generator (Fig. 3): 1x1 conv + BN + ReLU per scale, pooled, summed.

    Args:
        in_channels: channels of the chosen scales, finest first (e.g. ``[1024, 2048]``).
        num_maps: M, attention maps per scale (32 in the paper).
    """

    def __init__(self, in_channels: list[int], num_maps: int = 32):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, num_maps, kernel_size=1, bias=False),
                          nn.BatchNorm2d(num_maps, eps=1e-3), nn.ReLU(inplace=True))
            for c in in_channels
        )

    def lower(self, stages: list[Tensor], size: tuple[int, int]) -> Tensor | None:
        """Sum of the attention of every scale but the last, pooled to ``size``: ``(B, M, *size)``."""
        out = None
        for conv, f in zip(self.convs[:-1], stages[:-1], strict=True):
            a = F.adaptive_avg_pool2d(conv(f), size)
            out = a if out is None else out + a
        return out

    def top(self, f3: Tensor) -> Tensor:
        """Attention of the deepest scale ``(B, M, h, w)``."""
        return self.convs[-1](f3)


class MANet(ChestModel):
    """MA-Net (MAG-SD's classifier): ResNet -> multiscale attention -> attention pooling -> linear.

    Shapes: input ``(B, in_chans, H, W)``; ``forward`` returns :class:`ModelOutput` with logits
    ``(B, K)``, features ``(B, C [+ M], h, w)`` (see the module docstring), embedding ``(B, M * C)``
    (attention pooling) or ``(B, C)`` (GAP / GMP), and maps ``attention_parts (B, M, h, w)`` (the M
    attention maps A) and ``attention (B, h, w)`` (their mean, the paper's localisation map).

    Args:
        num_classes: K.
        backbone: any :func:`~chestdx.models.backbones.build_backbone` name with 3 or more stages
            (``resnet50`` in the paper; ``resnet18`` for CPU tests; ``efficientnet_lite0``: the scales
            are its last three stages, strides 8 / 16 / 32, and f3 its 1280-channel head conv).
        in_chans: input channels.
        weights: ``none`` / ``imagenet`` / path (see :mod:`chestdx.models.backbones`).
        num_maps: M (32).
        scales: 1, 2 or 3 feature maps for attention (deepest first: layer4, layer3, layer2).
        pooling: ``attention`` (the paper), ``gap`` or ``gmp`` (Table 6 ablations).
        feature_norm: ``sqrt_m`` (default: attention-pooled features divided by ``sqrt(M)``, see
            the module docstring), ``none`` (Eq. 1 literally) or ``sqrt_l2`` (the reference code:
            signed square root, L2 normalisation, times 100). GAP / GMP features are never scaled
            by ``sqrt_m``.
        dropout: dropout before the classifier.

    Raises:
        ConfigError: bad ``scales``, ``num_maps``, ``pooling`` or ``feature_norm``.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet50", in_chans: int = 1,
                 weights: str = "none", num_maps: int = 32, scales: int = 2,
                 pooling: str = "attention", feature_norm: str = "sqrt_m", dropout: float = 0.0):
        super().__init__()
        if scales not in (1, 2, 3):
            raise ConfigError(f"magsd: scales must be 1, 2 or 3 (layer4 [+ layer3 [+ layer2]]), got {scales!r}")
        if int(num_maps) < 1:
            raise ConfigError(f"magsd: num_maps must be >= 1, got {num_maps!r}")
        if pooling not in ("attention", "gap", "gmp"):
            raise ConfigError(f"magsd: pooling must be attention, gap or gmp, got {pooling!r}")
        if feature_norm not in ("none", "sqrt_m", "sqrt_l2"):
            raise ConfigError(f"magsd: feature_norm must be sqrt_m, none or sqrt_l2, got {feature_norm!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_maps = int(num_maps)
        self.scales = int(scales)
        self.pooling = pooling
        self.feature_norm = feature_norm
        self.backbone: Backbone = build_backbone(backbone, in_chans, weights)
        channels = self.backbone.feature_dim
        stage_ch = _stage_channels(self.backbone)
        if len(stage_ch) < self.scales:
            raise ConfigError(f"magsd: backbone '{backbone}' has {len(stage_ch)} stages, fewer than scales={scales}")
        self.channels = channels
        # the deepest scale is the last feature map (layer4 for a ResNet, the head conv for EfficientNet)
        self.attention = MultiscaleAttention([*stage_ch[len(stage_ch) - self.scales:-1], channels], self.num_maps)
        self.feature_dim = channels + (self.num_maps if self.scales > 1 else 0)
        in_head = channels * self.num_maps if pooling == "attention" else channels
        self.embedding_dim = in_head  # width of ``embedding`` (feature_dim counts f3 + lower attention)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(in_head, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, in_chans, H, W)`` -> ``(B, C + M, h, w)`` (f3 and the lower-scale attention) or ``(B, C, h, w)``."""
        if self.scales == 1:
            return self.backbone(x)
        f3, stages = self.backbone.forward_stages(x)
        lower = self.attention.lower(stages[len(stages) - self.scales:], (int(f3.shape[-2]), int(f3.shape[-1])))
        return torch.cat([f3, lower], dim=1)  # type: ignore[list-item]

    def split_features(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Features ``(B, C [+ M], h, w)`` -> f3 ``(B, C, h, w)`` and attention A ``(B, M, h, w)``."""
        f3 = features[:, :self.channels]
        a = self.attention.top(f3)
        if self.scales > 1:
            a = a + features[:, self.channels:]
        return f3, a

    def _pool(self, f3: Tensor, a: Tensor) -> Tensor:
        if self.pooling == "gap":
            emb = f3.mean(dim=(-2, -1))
        elif self.pooling == "gmp":
            emb = f3.amax(dim=(-2, -1))
        else:
            emb = attention_pooling(f3, a)
            if self.feature_norm == "sqrt_m":
                emb = emb / float(self.num_maps) ** 0.5
        if self.feature_norm == "sqrt_l2":
            emb = torch.sign(emb) * torch.sqrt(emb.abs() + _EPS)
            emb = F.normalize(emb, dim=-1) * 100.0
        return emb

    def forward_head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C [+ M], h, w)`` -> logits ``(B, K)`` and pooled embedding ``(B, M*C)`` or ``(B, C)``."""
        f3, a = self.split_features(features)
        emb = self._pool(f3, a)
        return self.head(self.dropout(emb)), emb

    def forward(self, x: Tensor) -> ModelOutput:
        feats = self.forward_features(x)
        f3, a = self.split_features(feats)
        emb = self._pool(f3, a)
        logits = self.head(self.dropout(emb))
        return ModelOutput(logits=logits, features=feats, embedding=emb,
                           maps={"attention_parts": a, "attention": a.mean(dim=1)})


@MODELS.register("magsd", accepts=MANet, fixed=SECTION_ARGS)
def _magsd(cfg: Any, num_classes: int, in_chans: int) -> ChestModel:
    """MA-Net of MAG-SD; ``params``: num_maps, scales, pooling, feature_norm."""
    return MANet(num_classes, cfg.backbone, in_chans, cfg.weights, dropout=cfg.dropout, **cfg.params)


__all__ = ["MANet", "MultiscaleAttention", "attention_pooling"]
