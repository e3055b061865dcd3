"""Attention-based infection localisation (mag-sd-multiscale-attention-cxr.txt, Sec. 4.4.6).

The paper: "Attention maps A were upsampled from 7 x 7 to 224 x 224. Localization masks ... were
extracted by applying threshold to the attention maps. Bounding boxes ... were produced by simply
enclosing the localization masks with rectangles. IoU was calculated."

Readings chosen where the paper is silent:

- the map is the mean of the M attention maps (``ModelOutput.maps["attention"]``, the authors'
  code: ``Am = mean(Ak)``), upsampled bilinearly to the input and divided by its maximum;
- the threshold is relative to that maximum, 0.5 by default;
- the box of a mask is the one rectangle enclosing all of it;
- IoU of two empty masks is 1 (nothing to find, nothing found); of one empty mask 0.

Works for any model whose output carries ``maps["attention"]`` (MA-Net); other models raise a
:class:`~chestdx.errors.ConfigError` that says so (use CAM for them, :mod:`chestdx.explain.cam`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from chestdx.errors import ConfigError
from chestdx.models.base import ChestModel, ModelOutput

Box = tuple[int, int, int, int]  # (y1, x1, y2, x2), half-open


def attention_heatmap(model: ChestModel, images: Tensor, out: ModelOutput | None = None) -> Tensor:
    """The model's mean attention map at input resolution, scaled to [0, 1] per image.

    Args:
        model: a model returning ``maps["attention"] (B, h, w)`` (eval mode is the caller's choice).
        images: ``(B, C, H, W)``.
        out: the model's output on ``images`` when the caller has it (no second forward pass).

    Returns:
        ``(B, H, W)`` float32 in [0, 1] (an all-zero map stays zero).

    Raises:
        ConfigError: the model makes no attention map.
    """
    if out is None:
        with torch.no_grad():
            out = model(images)
    att = out.maps.get("attention")
    if att is None:
        raise ConfigError(f"{type(model).__name__} makes no attention map; attention localisation needs "
                          "an attention model (model.name: magsd); use CAM (--cam) for other models")
    m = F.interpolate(att[:, None].float(), size=tuple(images.shape[-2:]), mode="bilinear",
                      align_corners=False)[:, 0].clamp(min=0)
    peak = m.flatten(1).amax(dim=1).clamp(min=1e-12)
    return m / peak[:, None, None]


def heatmap_mask(heatmap: Tensor, threshold: float = 0.5) -> Tensor:
    """Threshold ``(..., H, W)`` maps in [0, 1]: ``heatmap > threshold`` (bool)."""
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must lie in [0, 1], got {threshold}")
    return heatmap > threshold


def mask_box(mask: Tensor) -> Box | None:
    """The rectangle ``(y1, x1, y2, x2)`` (half-open) enclosing a boolean mask ``(H, W)``; None if empty."""
    idx = torch.nonzero(mask, as_tuple=False)
    if idx.numel() == 0:
        return None
    return (int(idx[:, 0].min()), int(idx[:, 1].min()), int(idx[:, 0].max()) + 1, int(idx[:, 1].max()) + 1)


def box_mask(box: Box | None, shape: tuple[int, int]) -> Tensor:
    """A boolean ``(H, W)`` mask filled inside ``box`` (empty for None)."""
    m = torch.zeros(shape, dtype=torch.bool)
    if box is not None:
        y1, x1, y2, x2 = box
        m[y1:y2, x1:x2] = True
    return m


def mask_iou(pred: Tensor, true: Tensor) -> Tensor:
    """Intersection over union of boolean masks ``(B, H, W)`` (or ``(H, W)``), per image.

    Returns:
        ``(B,)`` (or 0-d) float32; 1 where both are empty, 0 where only one is.
    """
    p, t = pred.bool(), true.bool()
    inter = (p & t).flatten(-2).sum(-1).float()
    union = (p | t).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def localization_iou(model: ChestModel, images: Tensor, lesions: Tensor, threshold: float = 0.5,
                     boxes: bool = False) -> Tensor:
    """IoU of the thresholded attention map with the lesion masks (Sec. 4.4.6).

    Args:
        model: an attention model.
        images: ``(B, C, H, W)``.
        lesions: ``(B, H, W)`` or ``(B, 1, H, W)`` ground-truth masks (nonzero = lesion).
        threshold: relative threshold of the map.
        boxes: compare enclosing rectangles instead of masks (the paper's box-labelled cases).

    Returns:
        ``(B,)`` IoU per image.
    """
    if lesions.ndim == 4:
        lesions = lesions[:, 0]
    pred = heatmap_mask(attention_heatmap(model, images), threshold).cpu()
    true = lesions.cpu() > 0
    if boxes:
        shape = (int(pred.shape[-2]), int(pred.shape[-1]))
        pred = torch.stack([box_mask(mask_box(m), shape) for m in pred])
        true = torch.stack([box_mask(mask_box(m), shape) for m in true])
    return mask_iou(pred, true)


__all__ = ["attention_heatmap", "box_mask", "heatmap_mask", "localization_iou", "mask_box", "mask_iou"]
