"""Models: one interface (:class:`ChestModel` -> :class:`ModelOutput`) for every architecture.

:func:`build_model` turns a recipe's ``model`` section into a network. A new architecture is a
module that registers its builder in :data:`~chestdx.models.registry.MODELS` (with ``accepts=`` the
class its ``params`` go to) and is imported below.
"""

from __future__ import annotations

# the model modules register their builders in MODELS when imported (none imports this package)
from chestdx.models.affinity import AffinityModel
from chestdx.models.attention import ResNetATT2
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
from chestdx.models.magsd import MANet
from chestdx.models.registry import MODELS, build_model, model_names
from chestdx.models.sequence import SequenceClassifier

__all__ = [
    "MODELS",
    "AffinityModel",
    "Backbone",
    "ChestModel",
    "Inflated3DNet",
    "MANet",
    "ModelOutput",
    "ResNetATT2",
    "ResNetMLP",
    "SequenceClassifier",
    "backbone_names",
    "build_backbone",
    "build_model",
    "build_resnet",
    "imagenet_weight_file",
    "inflate_2d_to_3d",
    "known_backbones",
    "model_names",
]
