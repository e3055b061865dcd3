"""3D CT volumes for training (``task: volume``): preprocessing and an on-disk cache.

Volume data set layouts (manifests, scan folders) are :mod:`chestdx.data.layouts.volumes`.

Preprocessing (cmc-cov19d-3d-contrastive-mixup.txt, Sec. 5.1: "each 2D chest CT scan series is
composed into a 3D volume of shape (D, H, W) ... resized ... to (128, 256, 256) ... transform[ed] to
the interval [0, 1]"):

1. :func:`~chestdx.io.read_volume` (DICOM series in position order, zips, NIfTI, slice folders,
   ``.npy``), with the recipe's ``data.hu_window`` ``(level, width)`` clipping HU and scaling to
   ``[0, 1]``;
2. trilinear resize to ``(data.volume_depth, data.image_size, data.image_size)``;
3. to ``[0, 1]``: volumes already windowed (or read from slice pictures) are kept; others (no window
   given, raw ``.npy``) are min-max scaled per volume.

The lesion mask (where a sample has one) is resized with nearest neighbours.

Preprocessed volumes are cached on disk by MONAI's ``PersistentDataset`` (key: the file's path, size
and modification time and the preprocessing settings), so the second epoch, and the next run with the
same settings, reads no DICOM. The cache folder is ``data.cache_dir``, else ``$CHESTDX_CACHE_DIR``,
else ``~/.cache/chestdx/volumes``.

Items: ``image (1, D, H, W)`` float32, ``lesion (1, D, H, W)`` float32, ``has_mask``, ``label``,
``site``, ``index`` (position in the sample list).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import Dataset, PersistentDataset
from monai.transforms import Compose, Transform

from chestdx.config import VolumeDataConfig
from chestdx.data.layouts.base import Sample
from chestdx.errors import ChestdxError, DataError, DatasetError
from chestdx.io.volumes import is_volume_input, read_volume

__all__ = ["LoadVolume", "VolumeDataset", "check_volume_samples", "default_cache_dir", "preprocess_volume",
           "resize_volume"]


def default_cache_dir() -> Path:
    """``$CHESTDX_CACHE_DIR`` or ``~/.cache/chestdx/volumes``."""
    env = os.environ.get("CHESTDX_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "chestdx" / "volumes"


def resize_volume(vol: np.ndarray | torch.Tensor, shape: Sequence[int], mode: str = "trilinear") -> torch.Tensor:
    """Resize ``(D, H, W)`` to ``shape`` (``trilinear`` for images, ``nearest`` for masks) -> float32 tensor."""
    t = torch.as_tensor(np.ascontiguousarray(vol) if isinstance(vol, np.ndarray) else vol).float()
    shape = tuple(int(s) for s in shape)
    if tuple(t.shape) == shape:
        return t
    kw: dict[str, Any] = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(t[None, None], size=shape, mode=mode, **kw)[0, 0]


def preprocess_volume(vol: np.ndarray, shape: Sequence[int], source: str | Path = "volume") -> torch.Tensor:
    """Resize a read volume ``(D, H, W)`` to ``shape`` and bring it to ``[0, 1]`` -> float32 ``(D', H', W')``.

    Values already inside ``[0, 1]`` (windowed HU, slice pictures) are kept; otherwise the volume is
    min-max scaled.

    Raises:
        DataError: naming ``source``, for non-finite values.
    """
    if not np.isfinite(vol).all():
        raise DataError(source, "volume holds NaN or infinite values")
    t = resize_volume(vol, shape)
    lo, hi = float(t.min()), float(t.max())
    if lo < 0 or hi > 1:
        t = (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)
    return t.clamp_(0, 1)


class LoadVolume(Transform):
    """MONAI transform: ``{"path", "mask"}`` -> adds ``image (1, D, H, W)`` and ``lesion (1, D, H, W)`` uint8.

    Deterministic, so ``PersistentDataset`` caches its output. Errors name the file.
    """

    def __init__(self, cfg: VolumeDataConfig):
        self.cfg = cfg
        self.shape = (cfg.volume_depth, cfg.image_size, cfg.image_size)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        path = item["path"]
        try:
            vol, _meta = read_volume(path, hu_window=self.cfg.hu_window)
            image = preprocess_volume(vol, self.shape, path)
            lesion = torch.zeros(self.shape, dtype=torch.uint8)
            if item.get("mask"):
                m, _ = read_volume(item["mask"])
                lesion = (resize_volume(m > 0, self.shape, "nearest") > 0.5).to(torch.uint8)
        except ChestdxError:
            raise
        except Exception as e:  # noqa: BLE001
            raise DataError(path, f"volume preprocessing failed ({type(e).__name__}: {e})") from e
        out = dict(item)
        out["image"] = image[None].contiguous()
        out["lesion"] = lesion[None].contiguous()
        return out


def _stat_key(path: str | None) -> list[Any]:
    if not path:
        return [None]
    p = Path(path)
    try:
        if p.is_dir():
            files = sorted(p.iterdir())
            return [str(p), len(files), sum(f.stat().st_size for f in files if f.is_file()),
                    max((f.stat().st_mtime_ns for f in files), default=0)]
        st = p.stat()
        return [str(p), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(p)]


class VolumeDataset(torch.utils.data.Dataset):
    """CT volumes preprocessed once and cached on disk (MONAI ``PersistentDataset``) when ``cache``.

    Random augmentation is not done here but on the batch (the ``cmc_views`` mixer), so every epoch
    reads the cached volumes only.

    Args:
        samples: one record per scan (``path`` a series folder, zip, NIfTI, slice folder or ``.npy``).
        cfg: the recipe's ``task: volume`` data section (``image_size``, ``volume_depth``, ``hu_window``, ``cache``,
            ``cache_dir``).
        train: unused (kept for the DataModule's interface; augmentation is batch-level).
        site_names: ordered site names (index = ``site`` value).
        cache: override ``cfg.cache``.
        cache_dir: override ``cfg.cache_dir``.
    """

    def __init__(self, samples: Sequence[Any], cfg: VolumeDataConfig, train: bool = False,
                 site_names: Sequence[str] | None = None, cache: bool | None = None,
                 cache_dir: str | Path | None = None):
        self.samples = list(samples)
        self.cfg = cfg
        self.site_names = list(site_names) if site_names else sorted({s.site for s in self.samples})
        self.site_index = {n: i for i, n in enumerate(self.site_names)}
        prep = json.dumps({"shape": [cfg.volume_depth, cfg.image_size, cfg.image_size],
                           "hu_window": list(cfg.hu_window) if cfg.hu_window else None, "v": 1})
        items = [{"path": s.path, "mask": s.mask,
                  "key": json.dumps([_stat_key(s.path), _stat_key(s.mask), prep], default=str)}
                 for s in self.samples]
        transform = Compose([LoadVolume(cfg)], map_items=False)
        use_cache = cfg.cache if cache is None else cache
        self.cache_dir: Path | None = None
        if use_cache:
            self.cache_dir = Path(cache_dir or cfg.cache_dir or default_cache_dir())
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self.inner: Any = PersistentDataset(items, transform, cache_dir=self.cache_dir,
                                                hash_func=_hash_item)
        else:
            self.inner = Dataset(items, transform)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from chestdx.data.datasets import read_item

        item = read_item(self.inner, i)
        s = self.samples[i]
        return {
            "image": torch.as_tensor(item["image"]).float(),
            "lesion": torch.as_tensor(item["lesion"]).float(),
            "has_mask": torch.tensor(bool(s.mask)),
            "label": torch.tensor(s.label, dtype=torch.long),
            "site": torch.tensor(self.site_index.get(s.site, 0), dtype=torch.long),
            "index": torch.tensor(i, dtype=torch.long),
        }


def _hash_item(item: dict[str, Any]) -> bytes:
    return hashlib.sha1(item["key"].encode("utf-8")).hexdigest().encode("ascii")


# ------------------------------------------------------------------------------------- checks


def check_volume_samples(samples: Sequence[Sample], *, read: bool = False, workers: int = 2) -> None:
    """Check that every scan exists and looks like a volume (all problems reported at once).

    Args:
        read: also read every volume (slow on real data; finds corrupt series).

    Raises:
        DatasetError: listing every :class:`DataError`.
    """
    samples = list(samples)
    if not samples:
        raise DatasetError("no scans to check (empty data set)")

    def one(s: Sample) -> list[DataError]:
        probs = []
        for path in (s.path, s.mask):
            if not path:
                continue
            try:
                p = Path(path)
                if not p.exists():
                    raise DataError(p, "not found")
                if not is_volume_input(p):
                    raise DataError(p, "not a volume (give a DICOM series folder, a zip, a slice folder, "
                                       "a 3D NIfTI or a (D, H, W) .npy)")
                if read:
                    read_volume(p)
            except DataError as e:
                probs.append(e)
        return probs

    problems: list[DataError] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for found in pool.map(one, samples):
            problems.extend(found)
    if problems:
        raise DatasetError(f"{len(problems)} problem(s) in {len(samples)} scans; fix or remove them", problems)

