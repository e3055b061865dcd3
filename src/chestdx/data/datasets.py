"""Datasets of 2D images built from :class:`~chestdx.data.layouts.Sample` records.

Each item is a dict: ``image (1, S, S)`` float32, ``lesion (1, S, S)`` float32, ``has_mask`` bool,
``label`` long, ``site`` long (index into the data set's site names), ``index`` long (position in
the sample list, to join predictions back to files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from monai.data import CacheDataset, Dataset

from chestdx.config import DataConfig
from chestdx.data.transforms import build_pipeline
from chestdx.errors import ChestdxError


def unwrap_error(exc: BaseException) -> BaseException:
    """Return the first :class:`ChestdxError` in an exception's cause chain (MONAI wraps them)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ChestdxError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return exc


def read_item(inner: Any, i: int) -> Any:
    """``inner[i]`` of a MONAI dataset, raising the :class:`ChestdxError` it wraps (bad file, shape,
    NaN ...) rather than MONAI's transform error."""
    try:
        return inner[i]
    except Exception as e:  # noqa: BLE001
        raise unwrap_error(e) from None


class _Finalize:
    """Add label / site / index tensors and drop string fields the collate does not need."""

    def __init__(self, site_index: dict[str, int]):
        self.site_index = site_index

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "image": item["image"],
            "lesion": item["lesion"],
            "has_mask": torch.tensor(item["has_mask"]),
            "label": torch.tensor(item["label"], dtype=torch.long),
            "site": torch.tensor(self.site_index.get(item["site"], 0), dtype=torch.long),
            "index": torch.tensor(item["index"], dtype=torch.long),
        }


class SliceDataset(torch.utils.data.Dataset):
    """2D slices with preprocessing cached in memory (MONAI ``CacheDataset``) when ``cache``.

    Args:
        samples: the records (one per image).
        cfg: the recipe's data section.
        train: apply the random augmentation.
        site_names: ordered site names (index = ``site`` value); defaults to the sorted sites.
        cache: cache preprocessed images (the second epoch reads no file).
        cache_workers: threads used to fill the cache.
    """

    def __init__(self, samples: Sequence[Any], cfg: DataConfig, train: bool = False,
                 site_names: Sequence[str] | None = None, cache: bool | None = None,
                 cache_workers: int = 2):
        self.samples = list(samples)
        self.site_names = list(site_names) if site_names else sorted({s.site for s in self.samples})
        items = [dict(asdict(s), index=i) for i, s in enumerate(self.samples)]
        pipeline = build_pipeline(cfg, train)
        self.pipeline = pipeline
        finalize = _Finalize({n: i for i, n in enumerate(self.site_names)})
        use_cache = cfg.cache if cache is None else cache
        try:
            if use_cache and items:
                self.inner: Any = CacheDataset(items, pipeline, num_workers=cache_workers, progress=False,
                                               copy_cache=False)
            else:
                self.inner = Dataset(items, pipeline)
        except Exception as e:  # noqa: BLE001
            raise unwrap_error(e) from None
        self.finalize = finalize

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.finalize(read_item(self.inner, i))
