"""The models registry: a recipe's ``model.name`` -> the builder of its network.

Its own module, so that every model module registers into it without importing the package
(``chestdx.models`` imports the model modules; none of them imports it back). A builder is called
as ``builder(cfg, num_classes=K, in_chans=C) -> ChestModel`` with the recipe's whole ``model``
section ``cfg``; it is registered with ``accepts=`` the class (or function) it passes
``cfg.params`` to, and ``fixed=`` the arguments of that class it fills itself from the section::

    @MODELS.register("magsd", accepts=MANet, fixed=SECTION_ARGS)
    def _magsd(cfg, num_classes, in_chans):
        return MANet(num_classes, cfg.backbone, in_chans, cfg.weights, dropout=cfg.dropout, **cfg.params)

so that a recipe's ``model.params`` are checked against that class when the recipe loads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chestdx.errors import ConfigError
from chestdx.models.backbones import Backbone
from chestdx.models.base import ChestModel
from chestdx.registry import Registry

MODELS: Registry[Callable[..., ChestModel]] = Registry("model", fixed=("cfg", "num_classes", "in_chans"))

SECTION_ARGS = ("backbone", "weights", "dropout")
"""The model section's keys a builder passes to its class itself (never ``params`` keys)."""


def model_names() -> list[str]:
    """Every registered model name, sorted."""
    return MODELS.names()


def build_model(cfg: Any, num_classes: int, in_chans: int = 1) -> ChestModel:
    """Build the network a recipe's ``model`` section describes.

    ``cfg.freeze_stages`` (N > 0, or -1 for all) freezes the backbone's stem and first N stages
    (see :meth:`Backbone.freeze_stages`).

    Raises:
        ConfigError: unknown model name or ``params`` key (with did-you-mean), a value the model
            refuses, or freezing asked of a model without a :class:`Backbone`.
        WeightsNotFoundError: pretrained weights asked for but absent.
    """
    entry = MODELS.check(cfg.name, cfg.params, where="model")
    try:
        model: ChestModel = entry.factory(cfg, num_classes=num_classes, in_chans=in_chans)
    except TypeError as e:
        raise ConfigError(f"model '{cfg.name}': bad params {cfg.params}: {e}") from None
    n = int(getattr(cfg, "freeze_stages", 0) or 0)
    if n:
        bb = getattr(model, "backbone", None)
        if not isinstance(bb, Backbone):
            raise ConfigError(f"model.freeze_stages={n}: model '{cfg.name}' has no stage backbone to freeze; "
                              "models that have one: resnet_mlp, resnet_att2, magsd")
        bb.freeze_stages(n)
    return model
