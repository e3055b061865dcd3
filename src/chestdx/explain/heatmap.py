"""One heatmap per image, whatever the model: the explanation ``predict``, ``report`` and ``serve``
show.

``kind="auto"`` picks what the model's paper draws:

- a model whose output has the two ATT2 attention maps (``att1``, ``att2``): ``sqrt(a1 * a2)`` of
  both maps upsampled (resnet50-att2 paper, Fig. 7; :func:`~chestdx.explain.attention_masks.combine_attention`);
- a model with a mean attention map (``maps["attention"]``, MAG-SD): that map upsampled
  (:func:`~chestdx.explain.localize.attention_heatmap`);
- any other model: CAM / Grad-CAM of the predicted class (:func:`~chestdx.explain.cam.cam`).

Every map is scaled to ``[0, 1]`` per image (an all-zero map stays zero).
"""

from __future__ import annotations

import torch
from torch import Tensor

from chestdx.errors import ConfigError
from chestdx.models import ChestModel, ModelOutput

__all__ = ["HEATMAP_KINDS", "heatmap"]

HEATMAP_KINDS = ("auto", "cam", "attention", "att2")


def _unit(maps: Tensor) -> Tensor:
    peak = maps.flatten(1).amax(dim=1).clamp(min=1e-12)
    return (maps / peak.view(-1, *[1] * (maps.ndim - 1))).clamp(0, 1)  # (B, H, W) or (B, D, H, W)


def heatmap(model: ChestModel, images: Tensor, kind: str = "auto", out: ModelOutput | None = None) -> tuple[Tensor, str]:
    """Heatmaps of ``images (B, C, H, W)`` -> ``((B, H, W)`` in ``[0, 1]``, the kind used).

    ``out``: the model's output on ``images`` when the caller has it (no second backbone pass).

    Raises:
        ConfigError: an unknown ``kind``, or a kind the model cannot give.
    """
    from chestdx.explain.attention_masks import combine_attention
    from chestdx.explain.cam import cam

    if kind not in HEATMAP_KINDS:
        raise ConfigError(f"unknown heatmap kind {kind!r}; choose one of {HEATMAP_KINDS}")
    if kind != "cam" and out is None:
        with torch.no_grad():
            out = model(images)
    if kind != "cam" and out is not None:
        if kind in ("auto", "att2") and "att1" in out.maps and "att2" in out.maps:
            return _unit(combine_attention(out.maps["att1"], out.maps["att2"], images.shape[-2:])), "att2"
        if kind in ("auto", "attention") and "attention" in out.maps:
            from chestdx.explain.localize import attention_heatmap

            return attention_heatmap(model, images, out), "attention"
        if kind != "auto":
            raise ConfigError(f"{type(model).__name__} makes no {kind} maps; use kind 'cam' or 'auto'")
    return _unit(cam(model, images, out=out).detach()), "cam"
