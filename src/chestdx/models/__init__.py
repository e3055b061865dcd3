"""Models: one interface (:class:`ChestModel` -> :class:`ModelOutput`) for every architecture.

:func:`build_model` turns a recipe's ``model`` section into a network. New architectures register
a builder with :func:`register_model`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chestdx.errors import ConfigError
from chestdx.models.backbones import (
    Backbone,
    backbone_names,
    build_backbone,
    build_resnet,
    imagenet_weight_file,
    known_backbones,
)
from chestdx.models.base import ChestModel, ModelOutput
from chestdx.models.classifier import ResNetMLP
from chestdx.models.inflate import Inflated3DNet, inflate_2d_to_3d

_BUILDERS: dict[str, Callable[..., ChestModel]] = {}


def register_model(name: str) -> Callable[[Callable[..., ChestModel]], Callable[..., ChestModel]]:
    """Decorator: make a builder ``f(cfg: ModelConfig, num_classes, in_chans) -> ChestModel`` known."""

    def deco(fn: Callable[..., ChestModel]) -> Callable[..., ChestModel]:
        _BUILDERS[name] = fn
        return fn

    return deco


def model_names() -> list[str]:
    return sorted(_BUILDERS)


def build_model(cfg: Any, num_classes: int, in_chans: int = 1) -> ChestModel:
    """Build the network a recipe's ``model`` section describes.

    ``cfg.freeze_stages`` (N > 0, or -1 for all) freezes the backbone's stem and first N stages
    (see :meth:`Backbone.freeze_stages`).

    Raises:
        ConfigError: unknown model name (lists the known ones), or freezing asked of a model without
            a :class:`Backbone`.
        WeightsNotFoundError: pretrained weights asked for but absent.
    """
    if cfg.name not in _BUILDERS:
        raise ConfigError(f"unknown model '{cfg.name}'; choose one of {model_names()}")
    model = _BUILDERS[cfg.name](cfg, num_classes=num_classes, in_chans=in_chans)
    n = int(getattr(cfg, "freeze_stages", 0) or 0)
    if n:
        bb = getattr(model, "backbone", None)
        if not isinstance(bb, Backbone):
            raise ConfigError(f"model.freeze_stages={n}: model '{cfg.name}' has no stage backbone to freeze; "
                              "models that have one: resnet_mlp, resnet_att2, magsd")
        bb.freeze_stages(n)
    return model


def _backbone_model(name: str, cls: Callable[..., ChestModel], cfg: Any, num_classes: int, in_chans: int) -> ChestModel:
    """``cls(num_classes, backbone, in_chans, weights, dropout=..., **params)``; bad params -> ConfigError."""
    try:
        return cls(num_classes, cfg.backbone, in_chans, cfg.weights, dropout=cfg.dropout, **cfg.params)
    except TypeError as e:
        raise ConfigError(f"model '{name}': bad params {cfg.params}: {e}") from None


@register_model("resnet_mlp")
def _resnet_mlp(cfg: Any, num_classes: int, in_chans: int) -> ChestModel:
    return ResNetMLP(num_classes, cfg.backbone, in_chans, cfg.weights, cfg.head_hidden, cfg.dropout,
                     **cfg.params)


@register_model("resnet_att2")
def _resnet_att2(cfg: Any, num_classes: int, in_chans: int) -> ChestModel:
    """ResNet50-ATT2; ``params``: compatibility (parametrised | dot), tail_blocks (models/attention.py)."""
    from chestdx.models.attention import ResNetATT2

    return _backbone_model("resnet_att2", ResNetATT2, cfg, num_classes, in_chans)


@register_model("inflated3d")
def _inflated3d(cfg: Any, num_classes: int, in_chans: int) -> ChestModel:
    """Inflated 3D ResNet / ResNeSt of CMC-COV19D; ``params``: time_kernel, depth_stride, checkpointing
    (models/inflate.py)."""
    return _backbone_model("inflated3d", Inflated3DNet, cfg, num_classes, in_chans)


@register_model("att2_bilstm")
def _att2_bilstm(cfg: Any, num_classes: int, in_chans: int) -> ChestModel:
    """Frozen slice encoder + Bi-LSTM with soft attention; ``params``: encoder, chunk (models/sequence.py)."""
    from chestdx.models.sequence import build_sequence_classifier

    return build_sequence_classifier(cfg, num_classes, in_chans)


@register_model("magsd")
def _magsd(cfg: Any, num_classes: int, in_chans: int) -> ChestModel:
    """MA-Net of MAG-SD; ``params``: num_maps, scales, pooling, feature_norm (see models/magsd.py)."""
    from chestdx.models.magsd import MANet

    return _backbone_model("magsd", MANet, cfg, num_classes, in_chans)


@register_model("affinity")
def _affinity(cfg: Any, num_classes: int, in_chans: int) -> ChestModel:
    """Mask R-CNN + lesion-mask affinity classifier; ``params``: affinities, roi_batch, sieve_stages,
    fpn_channels, mask_channels, ... (see models/affinity.py)."""
    from chestdx.models.affinity import build_affinity_model

    return build_affinity_model(cfg, num_classes, in_chans)


__all__ = [
    "Backbone",
    "ChestModel",
    "Inflated3DNet",
    "ModelOutput",
    "ResNetMLP",
    "backbone_names",
    "build_backbone",
    "build_model",
    "build_resnet",
    "imagenet_weight_file",
    "inflate_2d_to_3d",
    "known_backbones",
    "model_names",
    "register_model",
]
