"""The mixing registry: a recipe's ``mixing.name`` -> the factory of its mixer module.

Its own module, so that every mixer module registers into it without importing the package
(``chestdx.mixing`` imports the mixer modules; none of them imports it back). A factory receives
``prob`` and ``num_classes`` from the engine and the section's ``params`` as keywords; a mixer
class is its own factory (``@MIXERS.register("snapmix")`` above ``class SnapMix``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from chestdx.registry import Registry

MIXERS: Registry[Callable[..., nn.Module]] = Registry("mixing", fixed=("prob", "num_classes"))


def mixer_names() -> list[str]:
    """Every registered mixing name, sorted."""
    return MIXERS.names()


def build_mixer(name: str, prob: float, params: Mapping[str, Any], num_classes: int, where: str = "") -> nn.Module:
    """Instantiate a mixer from a recipe's ``mixing`` section.

    Args:
        where: the recipe key of the section (``"mixing"``), named in errors.

    Raises:
        ConfigError: unknown name, a ``params`` key the mixer does not take (with did-you-mean), or
            a value it refuses.
    """
    module: nn.Module = MIXERS.build(name, params=params, where=where, prob=prob, num_classes=num_classes)
    return module
