"""Lesion segmentation data: image + lesion mask pairs, lesion instances, and their layouts.

A segmentation sample is a :class:`~chestdx.data.layouts.Sample` with ``mask`` set (``mask=None``
or an empty mask = a negative image, allowed). The lesion mask is binary: ground-glass opacity and
consolidation are one ``lesion`` class, as in maskrcnn-lesion-affinity.txt; the instances Mask
R-CNN learns are its connected components (8-connectivity), components smaller than
``min_area`` pixels merged into the background (the paper does so below 10 x 10 px on 512 px
slices).

Layouts read here (:func:`load_segmentation_source`):

- ``covid19_ct_seg_slices``: ``index.csv`` with ``image``, ``infection_mask`` and ``volume_group``
  columns (patients = volume groups, so splits never separate one volume's slices);
- ``infnet_covid_semiseg_test``: ``index.csv`` with ``image`` and ``gt`` columns (a test set: every
  image gets ``split=test``, one patient per image as no volume is published);
- any other chestdx source with a ``mask`` column (the phantom's ``manifest.csv``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from chestdx.config import DataConfig
from chestdx.data.datasets import SliceDataset
from chestdx.data.layouts import Sample
from chestdx.errors import DataError, DatasetError


def mask_instances(mask: np.ndarray, min_area: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split a binary lesion mask into instances (8-connected components).

    Args:
        mask: ``(H, W)`` bool / {0, 1}; nonzero = lesion.
        min_area: components with fewer pixels are dropped (merged into the background).

    Returns:
        masks ``(n, H, W)`` uint8 and boxes ``(n, 4)`` float32 ``(x0, y0, x1, y1)`` with exclusive
        ends (``x1 = last column + 1``), ordered by first pixel in raster order; ``n = 0`` for a
        negative image.
    """
    from skimage.measure import label as cc_label

    m = np.asarray(mask) != 0
    h, w = m.shape
    lab = cc_label(m, connectivity=2)
    masks, boxes = [], []
    for k in range(1, int(lab.max()) + 1):
        comp = lab == k
        if int(comp.sum()) < max(min_area, 1):
            continue
        ys, xs = np.nonzero(comp)
        masks.append(comp.astype(np.uint8))
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    if not masks:
        return np.zeros((0, h, w), np.uint8), np.zeros((0, 4), np.float32)
    return np.stack(masks), np.asarray(boxes, np.float32)


def instance_target(lesion: Tensor | np.ndarray, min_area: int = 0) -> dict[str, Tensor]:
    """A torchvision Mask R-CNN target from a lesion mask ``(H, W)`` or ``(1, H, W)``.

    Returns:
        ``boxes (n, 4)`` float32, ``labels (n,)`` long (all 1 = lesion), ``masks (n, H, W)`` uint8.
    """
    arr = lesion.numpy() if isinstance(lesion, Tensor) else np.asarray(lesion)
    arr = arr.reshape(arr.shape[-2:]) > 0.5
    masks, boxes = mask_instances(arr, min_area)
    return {"boxes": torch.from_numpy(boxes), "labels": torch.ones(len(boxes), dtype=torch.long),
            "masks": torch.from_numpy(masks)}


def _class_index(class_names: Sequence[str], wanted: str = "covid") -> int:
    names = [c.lower() for c in class_names]
    return names.index(wanted) if wanted in names else len(names) - 1


def _read_index(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def load_segmentation_source(path: str | Path, class_names: Sequence[str]) -> list[Sample]:
    """Segmentation samples of one source (see the module docstring for the layouts).

    Labels are the ``covid`` class (the last class when there is none): both real sets are
    COVID-19 slices, and the segmentation stage does not use the label.

    Raises:
        DatasetError: the folder is missing, has no known layout or lists missing files (all named).
    """
    root = Path(path)
    index = root / "index.csv" if root.is_dir() else root
    if root.is_dir() and index.is_file():
        rows = _read_index(index)
        head = set(rows[0]) if rows else set()
        covid = _class_index(class_names)
        site = index.parent.name
        out: list[Sample] = []
        if {"image", "infection_mask", "volume_group"} <= head:
            for r in rows:
                out.append(Sample(str((index.parent / r["image"]).resolve()), covid, r["volume_group"], site,
                                  mask=str((index.parent / r["infection_mask"]).resolve())))
        elif {"image", "gt"} <= head:
            for r in rows:
                out.append(Sample(str((index.parent / r["image"]).resolve()), covid,
                                  f"{site}-{r.get('id') or Path(r['image']).stem}", site,
                                  mask=str((index.parent / r["gt"]).resolve()), split="test"))
        if out:
            missing = [DataError(p, "listed in index.csv but missing") for s in out for p in (s.path, s.mask)
                       if p and not Path(p).is_file()]
            if missing:
                raise DatasetError(f"{index}: {len(missing)} listed files are missing", missing)
            return out
    if not root.exists():
        raise DatasetError(f"segmentation source not found: {root}")
    from chestdx.data.layouts import load_source

    samples = load_source(root, class_names)
    if not any(s.mask for s in samples):
        raise DatasetError(f"{root}: no lesion masks found; a segmentation source needs a 'mask' column "
                           "(manifest.csv) or an index.csv with infection_mask / gt columns")
    return samples


def load_segmentation_sources(paths: Sequence[str | Path], class_names: Sequence[str],
                              fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> list[Sample]:
    """Join several segmentation sources; samples without a split get a patient-grouped one.

    Raises:
        DatasetError: as :func:`load_segmentation_source`.
    """
    from chestdx.data.splits import patient_split

    samples: list[Sample] = []
    for p in paths:
        samples += load_segmentation_source(p, class_names)
    if any(s.split is None for s in samples):
        samples = patient_split(samples, tuple(fractions), seed=seed)
    return samples


class SegmentationDataset(SliceDataset):
    """Images and their lesion instances (the segmentation data of Algorithm 1).

    Preprocessing (and, when ``train``, augmentation: the same geometry on image and mask) is the
    slice pipeline's; instances are cut from the preprocessed mask.

    Items: ``image (1, S, S)`` float32, ``target`` (``boxes (n, 4)``, ``labels (n,)``,
    ``masks (n, S, S)``), ``index`` long.

    Args:
        min_area: smallest lesion instance in pixels at size ``S``.
    """

    def __init__(self, samples: Sequence[Any], cfg: DataConfig, train: bool = False, min_area: int = 0,
                 cache: bool | None = None):
        super().__init__(samples, cfg, train=train, cache=cache)
        self.min_area = min_area

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        item = super().__getitem__(i)
        return {"image": item["image"], "target": instance_target(item["lesion"], self.min_area),
                "index": item["index"]}


def collate_segmentation(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``images (N, 1, S, S)``, ``targets`` list of N dicts, ``index (N,)``."""
    return {"images": torch.stack([it["image"] for it in items]),
            "targets": [it["target"] for it in items],
            "index": torch.stack([torch.as_tensor(it["index"]) for it in items])}
