"""Batch-level augmentations that change labels (mixup, SnapMix, attention-guided mixes).

A mixer is called as ``mixer(model, batch) -> batch`` during training only. It returns a new batch
dict whose ``image`` ``(B, C, H, W)`` is mixed and whose ``target`` ``(B, K)`` holds the soft labels;
``label`` stays the first image's label. Each mixer applies itself with probability ``prob`` per
batch (the rest of the time the batch passes unchanged), as the papers do.
A new mixer is a module that registers its class (or factory) in
:data:`~chestdx.mixing.registry.MIXERS` (``@MIXERS.register("name")``) and is imported below; the
recipe's ``params`` are checked against its signature when the recipe loads.
"""

from __future__ import annotations

# the mixer modules register themselves in MIXERS when imported (none imports this package)
from chestdx.mixing.attention_guided import (
    AttentionGuided,
    attention_dimming,
    attention_mixup,
    attention_patching,
)
from chestdx.mixing.box import SnapMix, snapmix, snapmix_weights
from chestdx.mixing.registry import MIXERS, build_mixer, mixer_names
from chestdx.mixing.views import CMCViews

__all__ = ["MIXERS", "AttentionGuided", "CMCViews", "SnapMix", "attention_dimming", "attention_mixup",
           "attention_patching", "build_mixer", "mixer_names", "snapmix", "snapmix_weights"]
