"""How well a heatmap points at the lesion: pointing game, energy inside, IoU / Dice, and reference maps.

Every score compares one map ``(H, W)`` (any non-negative scale: it is used relative to its own
maximum or its own mass) with one lesion mask ``(H, W)`` (nonzero = lesion) of the same image, at
the image's resolution (upsample the map first, :func:`~chestdx.explain.cam.upsample_map`).

Rules, fixed so that every map kind is scored the same way:

- **pointing game** (Zhang et al. 2016): a hit when the map's peak lies inside the lesion grown by
  ``tolerance`` pixels (Euclidean distance to the nearest lesion pixel ``<= tolerance``). The default
  tolerance is Zhang et al.'s 15 px at 224 px scaled to the image: ``round(15 * min(H, W) / 224)``,
  at least 1 px (4 px at 64 px, 9 px at 128 px). The peak is one pixel: among the pixels within
  ``1e-6`` (relative) of the maximum (a bilinearly upsampled coarse map has a flat plateau at its
  maximum, often reaching the border), the one nearest their centroid.
- **energy inside**: ``sum(map * lesion) / sum(map)``, the share of the map's mass on the lesion.
- **IoU / Dice**: of the map thresholded at half its maximum (``map >= 0.5 * max``) with the lesion.
- an all-zero map points nowhere: every score 0.

Reference maps on the same images (what a map must beat to say anything):

- :func:`centre_prior`: a centred Gaussian, sigma a quarter of each side;
- :func:`body_map`: the whole body, pixels above 10% of the image's range with the holes filled (the
  dark lungs lie inside the body's outline); a uniform map over the body.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from chestdx.evaluate.metrics import MetricInputError

#: Scores of :func:`localisation_scores`, in the order they are reported.
SCORES: tuple[str, ...] = ("pointing", "energy", "iou", "dice")
#: Relative threshold of the map for IoU / Dice.
THRESHOLD = 0.5
#: Sigma of :func:`centre_prior` as a fraction of each side.
PRIOR_SIGMA = 0.25
#: Body threshold of :func:`body_map` as a fraction of the image's range.
BODY_THRESHOLD = 0.1

__all__ = ["BODY_THRESHOLD", "PRIOR_SIGMA", "SCORES", "THRESHOLD", "body_map", "centre_prior",
           "energy_inside", "localisation_scores", "map_peak", "mask_dice_iou", "pointing_hit",
           "pointing_tolerance", "summarise_scores"]


def _check(heat: Any, lesion: Any) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(heat, dtype=np.float64)
    t = np.asarray(lesion) > 0
    if m.ndim != 2 or m.shape != t.shape:
        raise MetricInputError(f"map and lesion mask must both be (H, W) of one shape; got {m.shape} and {t.shape}")
    if not np.isfinite(m).all():
        raise MetricInputError("the map must not hold NaN or inf")
    if m.min() < 0:
        raise MetricInputError(f"the map must be >= 0; its minimum is {m.min():.4g} (apply ReLU first)")
    return m, t


def pointing_tolerance(shape: Sequence[int]) -> int:
    """Default pointing-game tolerance in pixels for an image of ``shape (H, W)``:
    ``max(1, round(15 * min(H, W) / 224))`` (Zhang et al.'s 15 px at 224 px, scaled)."""
    return max(1, int(round(15 * min(int(shape[0]), int(shape[1])) / 224)))


def map_peak(heat: Any) -> tuple[int, int] | None:
    """The map's peak ``(y, x)``: of the pixels within 1e-6 (relative) of the maximum, the one nearest
    their centroid; None for an all-zero map."""
    m = np.asarray(heat, dtype=np.float64)
    top = float(m.max()) if m.size else 0.0
    if top <= 0:
        return None
    ys, xs = np.nonzero(m >= top * (1 - 1e-6))
    cy, cx = ys.mean(), xs.mean()
    k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return int(ys[k]), int(xs[k])


def pointing_hit(heat: Any, lesion: Any, tolerance: float | None = None) -> bool:
    """Pointing game for one map ``(H, W)`` and lesion mask ``(H, W)``: is the peak within
    ``tolerance`` px (default :func:`pointing_tolerance`) of a lesion pixel? False for an empty lesion
    or an all-zero map."""
    m, t = _check(heat, lesion)
    peak = map_peak(m)
    if peak is None or not t.any():
        return False
    tol = pointing_tolerance(m.shape) if tolerance is None else float(tolerance)
    ys, xs = np.nonzero(t)
    return bool(((ys - peak[0]) ** 2 + (xs - peak[1]) ** 2).min() <= tol * tol + 1e-9)


def energy_inside(heat: Any, lesion: Any) -> float:
    """Share of the map's mass inside the lesion, ``sum(map * lesion) / sum(map)``; 0 for an all-zero map."""
    m, t = _check(heat, lesion)
    total = float(m.sum())
    return float(m[t].sum() / total) if total > 0 else 0.0


def mask_dice_iou(heat: Any, lesion: Any, threshold: float = THRESHOLD) -> tuple[float, float]:
    """``(IoU, Dice)`` of ``map >= threshold * max(map)`` with the lesion (0, 0 for an all-zero map;
    1, 1 when both are empty)."""
    m, t = _check(heat, lesion)
    top = float(m.max())
    pred = m >= threshold * top if top > 0 else np.zeros_like(t)
    inter = float((pred & t).sum())
    union = float((pred | t).sum())
    both = float(pred.sum() + t.sum())
    if union == 0:
        return 1.0, 1.0
    return inter / union, 2 * inter / both


def localisation_scores(heat: Any, lesion: Any, tolerance: float | None = None,
                        threshold: float = THRESHOLD) -> dict[str, float]:
    """All four scores of one map ``(H, W)`` against one lesion mask ``(H, W)``.

    Returns:
        ``{"pointing": 0. or 1., "energy", "iou", "dice"}`` (floats in [0, 1]).
    """
    iou, dice = mask_dice_iou(heat, lesion, threshold)
    return {"pointing": float(pointing_hit(heat, lesion, tolerance)), "energy": energy_inside(heat, lesion),
            "iou": iou, "dice": dice}


def centre_prior(shape: Sequence[int], sigma: float = PRIOR_SIGMA) -> np.ndarray:
    """A centred Gaussian ``(H, W)`` with peak 1 and sigma ``sigma * H`` (rows), ``sigma * W`` (columns)."""
    h, w = int(shape[0]), int(shape[1])
    y = (np.arange(h) + 0.5 - h / 2) / (sigma * h)
    x = (np.arange(w) + 0.5 - w / 2) / (sigma * w)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


def body_map(image: Any, threshold: float = BODY_THRESHOLD) -> np.ndarray:
    """The whole body of an image ``(H, W)`` as a map: 1 on pixels above ``min + threshold * (max -
    min)`` and inside their outline (holes filled: the lungs), 0 elsewhere. A constant image is all body."""
    from scipy.ndimage import binary_fill_holes

    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise MetricInputError(f"body_map takes one image (H, W); got shape {img.shape}")
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.ones_like(img)
    return binary_fill_holes(img > lo + threshold * (hi - lo)).astype(np.float64)


def summarise_scores(rows: Sequence[dict[str, float]], groups: Sequence[Any], *, n_boot: int = 1000,
                     seed: int = 0, ci: float = 0.95) -> dict[str, dict[str, float]]:
    """Mean of each score over images with a patient-level (cluster) bootstrap interval.

    Args:
        rows: one :func:`localisation_scores` dict per image.
        groups: ``N`` patient ids (``site/patient``): each resample draws patients with replacement,
            every image of a drawn patient counted (:func:`chestdx.evaluate.metrics.resample_weights`).

    Returns:
        ``{score: {"value", "ci_low", "ci_high"}}`` (NaN without rows).
    """
    from chestdx.evaluate.metrics import group_index, resample_weights

    if len(rows) != len(groups):
        raise MetricInputError(f"{len(rows)} score rows but {len(groups)} patient ids")
    out: dict[str, dict[str, float]] = {}
    if not rows:
        return {k: {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")} for k in SCORES}
    inverse = group_index(groups, len(rows))
    weights = resample_weights(n_boot, inverse, np.random.default_rng(seed)) if n_boot > 0 else None
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    for k in SCORES:
        v = np.asarray([float(r[k]) for r in rows], dtype=np.float64)
        fig = {"value": float(v.mean())}
        if weights is not None:
            boot = (weights @ v) / weights.sum(axis=1)
            fig["ci_low"], fig["ci_high"] = float(np.percentile(boot, lo_q)), float(np.percentile(boot, hi_q))
        else:
            fig["ci_low"] = fig["ci_high"] = float("nan")
        out[k] = fig
    return out
