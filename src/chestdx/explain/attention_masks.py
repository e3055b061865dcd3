"""Attention maps -> lesion masks, overlays and localisation IoU (resnet50-att2-bilstm-covidx-ct.txt,
Figs. 5-7).

Fig. 7 of the paper: the two attention maps of ResNet50-ATT2 are upsampled to the image, combined
by the square root of their element-wise product and binarised with Otsu's threshold. Readings
chosen where the paper is open: bilinear upsampling (``align_corners=False``); Otsu is computed
per image on the combined map (scikit-image, 256 bins); a constant map (no contrast) gives an
empty mask.

Fig. 6: the slice maps of a sequence are drawn with their intensity weighted by the sequence
attention of the Bi-LSTM (each slice map times ``a_t / max_t a_t``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ATTENTION_KEYS: tuple[str, str] = ("att1", "att2")


def has_attention_maps(maps: dict[str, Tensor]) -> bool:
    """True when a :class:`~chestdx.models.ModelOutput`'s maps hold the two ATT2 attention maps."""
    return all(k in maps for k in ATTENTION_KEYS)


def combine_attention(att1: Tensor, att2: Tensor, size: Sequence[int] | None = None) -> Tensor:
    """Both maps upsampled to ``size`` and combined by ``sqrt(a1 * a2)`` (Fig. 7).

    Args:
        att1: ``(B, h1, w1)``; att2: ``(B, h2, w2)``; non-negative (softmax attention).
        size: ``(H, W)`` of the image; default att1's size.

    Returns:
        ``(B, H, W)`` float, non-negative.
    """
    hw = (int(size[0]), int(size[1])) if size is not None else (int(att1.shape[-2]), int(att1.shape[-1]))
    up = [F.interpolate(a[:, None].float(), size=hw, mode="bilinear", align_corners=False)[:, 0].clamp(min=0)
          for a in (att1, att2)]
    return torch.sqrt(up[0] * up[1])


def otsu_mask(heatmap: Any) -> np.ndarray:
    """Binarise one map ``(H, W)`` with Otsu's threshold: ``map > t``.

    A constant (or empty) map has no threshold and gives an all-False mask.

    Returns:
        ``(H, W)`` bool.
    """
    from skimage.filters import threshold_otsu

    m = np.asarray(heatmap, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"otsu_mask: expected a 2D map, got shape {m.shape}")
    if not np.isfinite(m).all() or float(m.max() - m.min()) <= 1e-12 * max(1.0, float(np.abs(m).max())):
        return np.zeros(m.shape, dtype=bool)
    return m > threshold_otsu(m)


def attention_masks(maps: dict[str, Tensor], size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Combined attention heatmaps and their Otsu masks for a batch.

    Args:
        maps: a model output's maps with ``att1 (B, h1, w1)`` and ``att2 (B, h2, w2)``.
        size: image ``(H, W)``.

    Returns:
        ``(heatmaps float32 (B, H, W), masks bool (B, H, W))``.
    """
    heat = combine_attention(maps["att1"].detach(), maps["att2"].detach(), size).cpu().numpy()
    masks = np.stack([otsu_mask(h) for h in heat]) if len(heat) else np.zeros((0, *size), bool)
    return heat.astype(np.float32), masks


def mask_iou(pred: Any, truth: Any) -> float:
    """Intersection over union of two binary masks ``(H, W)``; NaN when both are empty."""
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"mask_iou: shapes differ {p.shape} vs {t.shape}")
    union = int((p | t).sum())
    return float("nan") if union == 0 else float((p & t).sum()) / union


def localisation_iou(model: Any, loader: Any, *, overlays_dir: str | Path | None = None,
                     max_overlays: int = 16) -> dict[str, Any]:
    """Localisation IoU of the attention masks against the ground-truth lesion masks.

    For every image whose dataset item has a non-empty ``lesion`` mask (``has_mask`` and at least one
    lesion pixel), the model's attention mask is compared with it, as a mask (IoU, Dice) and as the
    rectangles enclosing both (box IoU, the MAG-SD paper's box-labelled cases). Images without a
    ground-truth lesion (normals, unannotated images) are left out, since IoU is undefined there.
    The attention mask is the Otsu mask of ``sqrt(att1 * att2)`` for ResNet50-ATT2 (maps ``att1`` /
    ``att2``) and the mean attention map above half its maximum for MAG-SD (map ``attention``,
    :mod:`chestdx.explain.localize`).

    Args:
        model: a model whose output maps hold ``att1`` / ``att2`` or ``attention``.
        loader: batches of ``image (B, 1, H, W)``, ``lesion (B, 1, H, W)``, ``has_mask (B,)``, ``index (B,)``.
        overlays_dir: where to write overlay PNGs of the first ``max_overlays`` scored images.

    Returns:
        ``{"iou_mean", "iou_median", "dice_mean", "box_iou_mean", "method", "n_images",
        "per_image": [{"index", "iou", "dice", "box_iou"}]}``; ``n_images`` 0 (and NaN figures) when
        no image has a lesion mask or the model gives no attention.
    """
    from chestdx.engine.device import model_device
    from chestdx.evaluate.plots import save_png
    from chestdx.explain.localize import attention_heatmap, box_mask, mask_box
    from chestdx.explain.overlays import mask_overlay

    model.eval()
    rows: list[dict[str, float]] = []
    written = 0
    method = ""
    for batch in loader:
        keep = batch["has_mask"].bool() & (batch["lesion"].flatten(1).sum(1) > 0)
        if not keep.any():
            continue
        images = batch["image"][keep].to(model_device(model))  # the model's device (--accelerator)
        with torch.no_grad():
            out = model(images)
        if has_attention_maps(out.maps):
            heat, masks = attention_masks(out.maps, images.shape[-2:])
            method = "Otsu mask of sqrt(att1 * att2)"
        elif "attention" in out.maps:
            heat = attention_heatmap(model, images, out).cpu().numpy()
            masks = heat > 0.5
            method = "mean attention map above half its maximum"
        else:
            break
        truth = batch["lesion"][keep][:, 0].numpy() > 0.5
        shape = (int(truth.shape[-2]), int(truth.shape[-1]))
        for j, idx in enumerate(batch["index"][keep].tolist()):
            iou = mask_iou(masks[j], truth[j])
            inter = float((masks[j] & truth[j]).sum())
            dice = 2 * inter / max(float(masks[j].sum() + truth[j].sum()), 1.0)
            boxes = [box_mask(mask_box(torch.from_numpy(np.ascontiguousarray(m))), shape).numpy()
                     for m in (masks[j], truth[j])]
            rows.append({"index": int(idx), "iou": iou, "dice": dice, "box_iou": mask_iou(*boxes)})
            if overlays_dir is not None and written < max_overlays:
                img = images[j, 0].cpu().numpy()
                panel = np.concatenate([mask_overlay(img, heat[j], masks[j]),
                                        mask_overlay(img, heat[j], truth[j], alpha=0.0)], axis=1)
                save_png(panel, Path(overlays_dir) / f"attention_{int(idx):05d}.png")
                written += 1
    ious = np.array([r["iou"] for r in rows], dtype=np.float64)
    dices = np.array([r["dice"] for r in rows], dtype=np.float64)
    return {
        "iou_mean": float(np.nanmean(ious)) if len(ious) else float("nan"),
        "iou_median": float(np.nanmedian(ious)) if len(ious) else float("nan"),
        "dice_mean": float(dices.mean()) if len(dices) else float("nan"),
        "box_iou_mean": float(np.nanmean([r["box_iou"] for r in rows])) if rows else float("nan"),
        "method": method if rows else "",
        "n_images": len(rows),
        "per_image": rows,
    }


def sequence_attention_figure(images: Any, slice_maps: Any, weights: Any, path: str | Path,
                              columns: int = 8, title: str | None = None) -> Path:
    """Fig. 6: the slices of one sequence with their attention maps weighted by the sequence attention.

    Each panel is slice ``t`` with ``slice_map_t * (a_t / max a)`` (jet) over it and ``a_t`` in its
    title, so the slices the Bi-LSTM relied on are bright.

    Args:
        images: ``(T, H, W)`` slices (any range; each is min-maxed for drawing).
        slice_maps: ``(T, H, W)`` non-negative maps at image size (e.g. :func:`combine_attention`).
        weights: ``(T,)`` sequence attention (sums to 1).
        path: PNG to write (atomically).

    Returns:
        ``path``.
    """
    from chestdx.evaluate.plots import new_figure, save_figure
    from chestdx.explain.overlays import overlay_heatmap, to_unit_image

    imgs = np.asarray(images, dtype=np.float64)
    hm = np.clip(np.asarray(slice_maps, dtype=np.float64), 0, None)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    t = imgs.shape[0]
    if hm.shape != imgs.shape or w.shape != (t,):
        raise ValueError(f"sequence_attention_figure: images {imgs.shape}, maps {hm.shape}, weights {w.shape} "
                         "must be (T, H, W), (T, H, W), (T,)")
    scale = w / w.max() if w.max() > 0 else w
    peak = hm.max() if hm.max() > 0 else 1.0
    cols = min(columns, t)
    rows = -(-t // cols)
    fig = new_figure(1.6 * cols, 1.75 * rows + (0.3 if title else 0))
    for i in range(t):
        ax = fig.add_subplot(rows, cols, i + 1)
        rgb = overlay_heatmap(to_unit_image(imgs[i]), hm[i] / peak * scale[i], alpha=0.5)
        ax.imshow(rgb)
        ax.set_title(f"{i}: a={w[i]:.2f}", fontsize=7)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
