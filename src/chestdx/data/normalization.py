"""Global mean / std normalisation (``data.normalize: global``).

The maskrcnn-lesion-affinity paper (Sec. 2.1): "Apart from the subtraction of the global mean and
division by the global standard deviation, we applied no other data manipulations". chestdx reads
"global" as one mean and one standard deviation over **every pixel of the training split's
images**, after the deterministic preprocessing (read, HU window, box crop, scaling to [0, 1],
CLAHE, resize) and before any augmentation; the validation and test images never enter them.

:func:`with_global_normalization` computes them once when a run starts (``engine/train.py``) and
returns the recipe with ``data.normalize_stats = (mean, std)``; that recipe is the run's
``recipe.yaml``, so evaluate, predict, a bundle and the web service normalise every image with the
same two numbers. A recipe that already gives ``normalize_stats`` keeps them (nothing is
computed); a resumed run keeps its own.

Choices: the lesion task's statistics are those of its classification training images (the
samples of the run); its segmentation images are normalised with the same two numbers. The
standard deviation is the population one (``ddof = 0``) over all pixels, in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from chestdx.config import DataConfig, Recipe
from chestdx.errors import DatasetError

__all__ = ["global_mean_std", "with_global_normalization"]


def global_mean_std(samples: Sequence[Any], cfg: DataConfig, split: str | None = "train") -> tuple[float, float]:
    """Mean and standard deviation of all pixels of ``samples``' images (those of ``split``; None:
    all), preprocessed as ``cfg`` says up to, not including, the normalisation: each image
    ``(S, S)`` in ``[0, 1]``.

    Raises:
        DatasetError: no image in ``split``, or every pixel has the same value (std 0).
        DataError: an unreadable image (named).
    """
    from chestdx.data.transforms import LoadPreprocess
    from chestdx.io.images import read_image

    chosen = [s for s in samples if split is None or s.split == split]
    if not chosen:
        raise DatasetError(f"data.normalize: global: no '{split}' images to compute the mean and std over")
    pre = LoadPreprocess(cfg.model_copy(update={"normalize": "unit", "normalize_stats": None}))
    total = total_sq = 0.0
    count = 0
    for s in chosen:
        img = read_image(s.path, hu_window=cfg.hu_window)
        x = pre.prepare(img, s.path, s.box if cfg.box_crop else None).astype(np.float64)
        total += float(x.sum())
        total_sq += float(np.square(x).sum())
        count += x.size
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    if not std > 1e-8:
        raise DatasetError(f"data.normalize: global: the {len(chosen)} '{split}' images have one value "
                           f"({mean:.6g}) everywhere; their standard deviation is 0")
    return mean, std


def with_global_normalization(recipe: Recipe, samples: Sequence[Any]) -> Recipe:
    """The recipe with ``data.normalize_stats`` from the training split of ``samples`` when
    ``data.normalize`` is ``global`` and no stats are given; otherwise ``recipe`` itself.

    A copy is returned (the caller's recipe is left alone: k-fold trains one recipe on several
    splits, each with its own statistics).
    """
    data = recipe.data
    if data.normalize != "global" or data.normalize_stats is not None:
        return recipe
    mean, std = global_mean_std(samples, data)
    return recipe.model_copy(update={"data": data.model_copy(update={"normalize_stats": (mean, std)})})
