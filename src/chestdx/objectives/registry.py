"""The objectives registry: a recipe's ``objectives[i].name`` -> the factory of its loss module.

Its own module, so that every objective module registers into it without importing the package
(``chestdx.objectives`` imports the objective modules; none of them imports it back). A factory
receives ``num_classes`` and, when it names it, ``class_counts`` (the training set's ``(K,)``
counts) from the engine, and the entry's ``params`` as keywords; an objective class is its own
factory::

    @OBJECTIVES.register("focal")
    class Focal(nn.Module):
        def __init__(self, num_classes: int, gamma: float = 2.0): ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from chestdx.registry import Registry

OBJECTIVES: Registry[Callable[..., nn.Module]] = Registry("objective", fixed=("num_classes", "class_counts"))


def objective_names() -> list[str]:
    """Every registered objective name, sorted."""
    return OBJECTIVES.names()


def build_objective(name: str, params: Mapping[str, Any], num_classes: int,
                    class_counts: Sequence[int] | None = None, where: str = "") -> nn.Module:
    """Instantiate one objective from a recipe entry.

    Args:
        where: the recipe key of the entry (``"objectives[1]"``), named in errors.

    Raises:
        ConfigError: unknown name, a ``params`` key the objective does not take (with did-you-mean),
            or a value it refuses.
    """
    module: nn.Module = OBJECTIVES.build(name, params=params, where=where, num_classes=num_classes,
                                         class_counts=class_counts)
    return module
