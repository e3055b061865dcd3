"""Batch-level augmentations that change labels (mixup, SnapMix, attention-guided mixes).

A mixer is called as ``mixer(model, batch) -> batch`` during training only. It returns a new batch
dict whose ``image`` ``(B, C, H, W)`` is mixed and whose ``target`` ``(B, K)`` holds the soft labels;
``label`` stays the first image's label. Each mixer applies itself with probability ``prob`` per
batch (the rest of the time the batch passes unchanged), as the papers do.
New mixers register with :func:`register_mixer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from chestdx.errors import ConfigError

_MIXERS: dict[str, Callable[..., nn.Module]] = {}


def register_mixer(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: ``factory(prob=..., num_classes=..., **params) -> mixer``."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MIXERS[name] = factory
        return factory

    return deco


def mixer_names() -> list[str]:
    return sorted(_MIXERS)


def build_mixer(name: str, prob: float, params: dict[str, Any], num_classes: int) -> nn.Module:
    """Instantiate a mixer from a recipe's ``mixing`` section.

    Raises:
        ConfigError: unknown name or bad parameters.
    """
    if name not in _MIXERS:
        raise ConfigError(f"unknown mixing '{name}'; choose one of {mixer_names()}")
    try:
        return _MIXERS[name](prob=prob, num_classes=num_classes, **params)
    except TypeError as e:
        raise ConfigError(f"mixing '{name}': bad parameters {params}: {e}") from None



from chestdx.mixing.attention_guided import (  # noqa: E402
    AttentionGuided,
    attention_dimming,
    attention_mixup,
    attention_patching,
)
from chestdx.mixing.box import snapmix, snapmix_weights  # noqa: E402  (after the registry: import cycle)
from chestdx.mixing.views import CMCViews  # noqa: E402

__all__ = ["AttentionGuided", "CMCViews", "attention_dimming", "attention_mixup", "attention_patching", "build_mixer",
           "mixer_names", "register_mixer", "snapmix", "snapmix_weights"]
