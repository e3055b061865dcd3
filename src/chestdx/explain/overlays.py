"""Explanation drawing: heatmap overlays, the heatmap colour map and its colour bar, lesion overlays.

Every function returns a uint8 RGB array ``(H, W, 3)`` (write it with
:func:`chestdx.evaluate.plots.save_png`); nothing here opens a window or touches pyplot.

- :func:`overlay_heatmap` blends a map (a CAM, Grad-CAM or attention map, >= 0) over a grey image in
  the :data:`HEATMAP_COLORMAP` colours, optionally at another size, with a colour bar and a caption;
- :func:`overlay_answer` draws an answer's heatmap as the service, the report and ``chestdx
  predict`` show it (own size, colour bar, caption naming the map kind and grid);
- :func:`mask_overlay` adds a mask outline (attention masks, MAG-SD Fig. 5 / 7);
- :func:`draw_lesions` draws a lesion model's masks, boxes and scores and the ground-truth outline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chestdx.evaluate.metrics import MetricInputError

__all__ = [
    "HEATMAP_COLORMAP",
    "draw_lesions",
    "heatmap_caption",
    "heatmap_colours",
    "mask_overlay",
    "overlay_answer",
    "overlay_heatmap",
    "to_unit_image",
]

HEATMAP_COLORMAP = "jet"
"""The matplotlib colour map of every heatmap overlay and colour bar (0 dark blue, 1 dark red)."""


def heatmap_colours(values: np.ndarray) -> np.ndarray:
    """RGB of :data:`HEATMAP_COLORMAP` for map values in ``[0, 1]``: ``(...)`` -> float ``(..., 3)`` in ``[0, 1]``."""
    import matplotlib

    return matplotlib.colormaps[HEATMAP_COLORMAP](values)[..., :3]


def overlay_heatmap(image: Any, heatmap: Any, alpha: float = 0.4, *, size: Sequence[int] | None = None,
                    colorbar: bool = False, label: str | None = None, min_side: int = 0) -> np.ndarray:
    """Blend a heatmap (:data:`HEATMAP_COLORMAP`, jet) over a grey image.

    The heatmap is scaled by its maximum to [0, 1] (an all-zero map stays 0, i.e. dark blue); the
    image is clipped to [0, 1]. Output = ``(1 - alpha) * grey + alpha * jet(heatmap)``.

    Args:
        image: ``(H, W)`` float in [0, 1].
        heatmap: ``(H, W)`` float >= 0 (a CAM / attention map upsampled to the image size).
        alpha: weight of the heatmap, in [0, 1].
        size: ``(H0, W0)``: draw at this size (the original image's, so its own aspect ratio and
            resolution; image and map resized bilinearly), else at ``(H, W)``.
        colorbar: append a colour bar (map value 0 at the bottom, 1 at the top) on the right.
        label: a caption line under the picture (e.g. the map kind and its grid, ``cam, 2 x 2 grid``).
        min_side: enlarge by a whole factor until the shorter side is at least this (aspect kept),
            so that a small image stays legible; 0: never.

    Returns:
        ``(H', W', 3)`` uint8 RGB: ``(H, W, 3)`` with the defaults; wider with ``colorbar``, taller
        with ``label``.

    Raises:
        MetricInputError: (a ``ValueError``) shapes differ or are not 2D, NaN / inf values, a
            negative heatmap value, or ``alpha`` outside [0, 1].
    """
    img = np.asarray(image, dtype=np.float64)
    heat = np.asarray(heatmap, dtype=np.float64)
    if img.ndim != 2:
        raise MetricInputError(f"image must have shape (H, W); got {img.shape}")
    if heat.shape != img.shape:
        raise MetricInputError(
            f"heatmap shape {heat.shape} differs from image shape {img.shape}; upsample the map to the image first"
        )
    if not np.isfinite(img).all() or not np.isfinite(heat).all():
        raise MetricInputError("image and heatmap must not hold NaN or inf")
    if (heat < 0).any():
        raise MetricInputError(f"heatmap must be >= 0; its minimum is {heat.min():.4g} (apply ReLU first)")
    if not 0.0 <= alpha <= 1.0:
        raise MetricInputError(f"alpha must lie in [0, 1]; got {alpha}")
    peak = heat.max()
    heat = heat / peak if peak > 0 else heat
    target = tuple(int(v) for v in size) if size is not None else img.shape
    if len(target) != 2 or min(target) < 1:
        raise MetricInputError(f"size must be (H, W) with positive sides; got {size}")
    if min_side > 0 and min(target) < min_side:
        factor = -(-int(min_side) // min(target))
        target = (target[0] * factor, target[1] * factor)
    if target != img.shape:
        img, heat = _resize2d(img, target), np.clip(_resize2d(heat, target), 0.0, 1.0)
    colour = heatmap_colours(heat)
    grey = np.clip(img, 0.0, 1.0)[..., None]
    out = (1.0 - alpha) * grey + alpha * colour
    rgb = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
    if colorbar:
        rgb = _with_colorbar(rgb)
    if label:
        rgb = _with_caption(rgb, label)
    return rgb


def _resize2d(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float ``(H, W)`` array to ``size (H0, W0)``."""
    from PIL import Image

    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((size[1], size[0]),
                                                                           Image.Resampling.BILINEAR),
                      dtype=np.float64)


def _with_colorbar(rgb: np.ndarray) -> np.ndarray:
    """``rgb (H, W, 3)`` with a jet colour bar (1 at the top, 0 at the bottom, ticks 0 / 0.5 / 1) on the right."""
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    bar_w, text_w = max(8, w // 24), 26
    ramp = np.linspace(1.0, 0.0, h)[:, None].repeat(bar_w, axis=1)
    bar = np.round(heatmap_colours(ramp) * 255).astype(np.uint8)
    pad = np.full((h, 4, 3), 255, np.uint8)
    panel = Image.fromarray(np.full((h, text_w, 3), 255, np.uint8))
    draw = ImageDraw.Draw(panel)
    for value, y in ((1.0, 0), (0.5, h // 2 - 5), (0.0, h - 11)):
        draw.text((2, max(0, y)), f"{value:g}", fill=(0, 0, 0))
    return np.concatenate([rgb, pad, bar, np.asarray(panel)], axis=1)


def _with_caption(rgb: np.ndarray, text: str) -> np.ndarray:
    """``rgb (H, W, 3)`` with one line of ``text`` on a white band below (widened to fit the text)."""
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    need = 6 * len(text) + 8
    if need > w:
        rgb = np.concatenate([rgb, np.full((h, need - w, 3), 255, np.uint8)], axis=1)
        w = need
    band = Image.fromarray(np.full((16, w, 3), 255, np.uint8))
    ImageDraw.Draw(band).text((4, 2), text, fill=(0, 0, 0))
    return np.concatenate([rgb, np.asarray(band)], axis=0)


def heatmap_caption(details: dict[str, Any]) -> str:
    """The caption of an answer's overlay from its details: the map kind and, where known, its grid
    (``"cam map, 2 x 2 grid, upsampled"``)."""
    kind = str(details.get("heatmap_kind") or "heatmap")
    grid = details.get("heatmap_grid")
    return f"{kind} map, {grid[0]} x {grid[1]} grid, upsampled" if grid else f"{kind} map"


def overlay_answer(answer: Any, alpha: float = 0.4) -> np.ndarray:
    """The overlay of an answer (a :class:`~chestdx.predict.predictor.Prediction` with ``image`` and
    ``heatmap``) as the service, the report and ``chestdx predict`` draw it: at the original image's
    size (``details["image_size"]``, else the file's own size when ``source`` is a readable 2D image
    file), shorter side at least 256 px, with a colour bar and a caption naming the map kind and grid."""
    details = dict(getattr(answer, "details", {}) or {})
    size = details.get("image_size")
    if size is None:
        size = _file_size(getattr(answer, "source", None))
    return overlay_heatmap(answer.image, answer.heatmap, alpha, size=size, colorbar=True,
                           label=heatmap_caption(details), min_side=256)


def _file_size(source: Any) -> tuple[int, int] | None:
    """``(H, W)`` of a 2D image file (PNG / JPEG / TIFF ...), read from its header; None otherwise."""
    if not source:
        return None
    try:
        from PIL import Image

        p = Path(str(source))
        if not p.is_file() or p.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
            return None
        with Image.open(p) as im:
            return (int(im.size[1]), int(im.size[0]))
    except (OSError, ValueError):
        return None


def to_unit_image(image: Any) -> np.ndarray:
    """Min-max a (z-scored) image ``(H, W)`` to ``[0, 1]`` for drawing."""
    a = np.asarray(image, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def mask_overlay(image: Any, heatmap: Any, mask: Any, alpha: float = 0.4) -> np.ndarray:
    """Fig. 5 / 7 panel: the image with the attention heatmap (jet) and the mask outline (white).

    Returns:
        ``(H, W, 3)`` uint8.
    """
    from skimage.segmentation import find_boundaries

    rgb = overlay_heatmap(to_unit_image(image), np.clip(np.asarray(heatmap, np.float64), 0, None), alpha)
    edge = find_boundaries(np.asarray(mask, dtype=bool), mode="inner")
    rgb[edge] = 255
    return rgb


def draw_lesions(image: np.ndarray, masks: np.ndarray | None = None, boxes: np.ndarray | None = None,
                 scores: np.ndarray | None = None, gt: np.ndarray | None = None) -> np.ndarray:
    """An RGB overlay: image in grey, predicted lesion masks in red, boxes with their scores in
    yellow, ground-truth outline in green.

    Args:
        image: ``(H, W)`` float (any range).
        masks: ``(m, H, W)`` bool predicted masks.
        boxes: ``(m, 4)`` ``(x0, y0, x1, y1)``.
        scores: ``(m,)``.
        gt: ``(H, W)`` bool ground-truth lesion mask.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    from PIL import Image, ImageDraw

    img = np.asarray(image, dtype=np.float32)
    lo, hi = float(img.min()), float(img.max())
    grey = ((img - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(img)).astype(np.uint8)
    rgb = np.stack([grey] * 3, -1).astype(np.float32)
    if masks is not None and len(masks):
        union = np.asarray(masks, bool).any(0)
        rgb[union] = 0.5 * rgb[union] + 0.5 * np.array([255, 0, 0], np.float32)
    if gt is not None:
        from scipy.ndimage import binary_erosion

        g = np.asarray(gt, bool)
        edge = g & ~binary_erosion(g)
        rgb[edge] = (0, 255, 0)
    out = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    if boxes is not None and len(boxes):
        draw = ImageDraw.Draw(out)
        for j, b in enumerate(np.asarray(boxes, dtype=float)):
            draw.rectangle([b[0], b[1], max(b[0], b[2] - 1), max(b[1], b[3] - 1)], outline=(255, 220, 0))
            if scores is not None:
                draw.text((b[0] + 1, max(0.0, b[1] - 10)), f"{float(scores[j]):.2f}", fill=(255, 220, 0))
    return np.asarray(out)

