"""Preprocessing (deterministic, cached) and augmentation (random, per epoch) of 2D images.

Pipelines are MONAI ``Compose`` chains of dictionary transforms, so MONAI's ``CacheDataset`` caches
everything up to the first random transform: files are read, cropped, enhanced, resized and
normalised once; only the augmentation runs every epoch.

Dictionary keys: ``path`` (str), ``box`` (xmin, ymin, xmax, ymax) or None, ``mask`` (str) or None in;
``image`` ``(1, S, S)`` float32 tensor and ``lesion`` ``(1, S, S)`` float32 {0, 1} tensor out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, RandomizableTrait, Transform
from PIL import Image
from torchvision.transforms import v2

from chestdx.config import AugmentConfig, DataConfig
from chestdx.errors import ChestdxError, DataError

IMAGENET_GREY_MEAN, IMAGENET_GREY_STD = 0.449, 0.226
# timm's IMAGENET_INCEPTION_MEAN / STD (0.5 on each RGB channel): the EfficientNet-Lite weights' scale
INCEPTION_MEAN, INCEPTION_STD = 0.5, 0.5


def crop_box(image: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """Crop ``(H, W)`` to ``box = (xmin, ymin, xmax, ymax)`` (clipped to the image; empty box ignored)."""
    if box is None:
        return image
    h, w = image.shape[-2:]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return image
    return image[..., y0:y1, x0:x1]


def scale_box(box: tuple[int, int, int, int] | None, from_hw: tuple[int, ...],
              to_hw: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """A crop box ``(xmin, ymin, xmax, ymax)`` given in the pixels of an image ``from_hw (H, W)``, in the
    pixels of another rendering of it ``to_hw (h, w)`` (a lesion mask stored at another resolution):
    x scaled by ``w / W``, y by ``h / H``, rounded. Unchanged when the shapes agree or ``box`` is None."""
    if box is None or tuple(from_hw) == tuple(to_hw):
        return box
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    x0, y0, x1, y1 = (int(round(v)) for v in (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
    return (x0, y0, x1, y1)


def resize(image: np.ndarray, size: int, resample: int = Image.Resampling.BICUBIC) -> np.ndarray:
    """Resize ``(H, W)`` float32 to ``(size, size)`` (bicubic by default, as the papers)."""
    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)
    out = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F").resize(
        (size, size), resample=resample
    )
    return np.asarray(out, dtype=np.float32)


def clahe(image: np.ndarray, clip: float = 0.01, tile: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a [0, 1] image (scikit-image).

    ``tile``: number of tiles per side (kernel size = side / tile); ``clip`` as in skimage.
    """
    from skimage.exposure import equalize_adapthist

    h, w = image.shape
    kernel = (max(h // tile, 2), max(w // tile, 2))
    return equalize_adapthist(np.clip(image, 0, 1), kernel_size=kernel, clip_limit=clip).astype(np.float32)


def normalize(image: np.ndarray, how: str, stats: tuple[float, float] | None = None) -> np.ndarray:
    """``zscore`` (per image: zero mean, unit variance), ``global`` (``(x - mean) / std`` with the
    training split's ``stats = (mean, std)``, :mod:`chestdx.data.normalization`), ``unit`` (as is),
    ``imagenet`` (grey ImageNet mean / std) or ``inception`` (``(x - 0.5) / 0.5``: [0, 1] -> [-1, 1]).
    ``(H, W)`` -> ``(H, W)`` float32.

    Raises:
        ConfigError: ``global`` without ``stats`` (``data.normalize_stats``).
    """
    if how == "zscore":
        x = image.astype(np.float64)  # float32 statistics overflow for values near its limits
        std = float(x.std())
        return ((x - x.mean()) / (std if std > 1e-6 else 1.0)).astype(np.float32)
    if how == "global":
        if stats is None:
            from chestdx.errors import ConfigError

            raise ConfigError("data.normalize: global needs data.normalize_stats (mean, std of the training "
                              "split's pixels); training fills it in, so a run's recipe.yaml carries it")
        return ((image.astype(np.float64) - stats[0]) / stats[1]).astype(np.float32)
    if how == "imagenet":
        return ((image - IMAGENET_GREY_MEAN) / IMAGENET_GREY_STD).astype(np.float32)
    if how == "inception":
        return ((image - INCEPTION_MEAN) / INCEPTION_STD).astype(np.float32)
    return image.astype(np.float32, copy=False)


def to_unit(image: np.ndarray) -> np.ndarray:
    """Min-max an image to [0, 1] (used when HU values come without a window)."""
    lo, hi = float(image.min()), float(image.max())
    if not hi > lo:
        return np.zeros_like(image, dtype=np.float32)
    # float64: near float32's limits (a hostile file may hold +-3e38) the float32 difference overflows
    return ((image.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)


class LoadPreprocess(Transform):
    """Read, crop to the box, (HU window), CLAHE, resize and normalise one image, and its mask.

    In: ``{"path", "box", "mask", ...}``. Out: adds ``image (1, S, S)`` and ``lesion (1, S, S)``.
    Errors name the file and the step.
    """

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        from chestdx.io.images import read_image, read_mask

        path = item["path"]
        cfg = self.cfg
        img = read_image(path, hu_window=cfg.hu_window)
        box = item.get("box") if cfg.box_crop else None
        image_hw = img.shape[-2:]
        img = self.prepare(img, path, box)
        out = dict(item)
        out["image"] = torch.from_numpy(img)[None]
        lesion = np.zeros((cfg.image_size, cfg.image_size), np.float32)
        if item.get("mask"):
            m = read_mask(item["mask"]).astype(np.float32)
            m = crop_box(m, scale_box(box, image_hw, m.shape))  # the image's box, in the mask's pixels
            lesion = (resize(m, cfg.image_size, Image.Resampling.NEAREST) > 0.5).astype(np.float32)
        out["lesion"] = torch.from_numpy(lesion)[None]
        out["has_mask"] = bool(item.get("mask"))
        return out


    def prepare(self, img: np.ndarray, source: str | Path, box: Any = None) -> np.ndarray:
        """Preprocess an image already read (HU window applied where wanted): crop, scale to
        ``[0, 1]`` when outside it, CLAHE, resize, normalise. ``(H, W)`` -> ``(S, S)`` float32.

        Raises:
            DataError: naming ``source``, when a step fails or the result is not finite.
        """
        cfg = self.cfg
        try:
            img = crop_box(np.asarray(img, dtype=np.float32), box)
            if not np.isfinite(img).all():
                raise DataError(source, "image holds NaN or infinite values")
            if img.min() < 0 or img.max() > 1:
                img = to_unit(img)
            if cfg.clahe:
                img = clahe(img, cfg.clahe_clip, cfg.clahe_tile)
            img = normalize(resize(img, cfg.image_size), cfg.normalize, cfg.normalize_stats)
        except ChestdxError:
            raise
        except Exception as e:  # noqa: BLE001
            raise DataError(source, f"preprocessing failed ({type(e).__name__}: {e})") from e
        if not np.isfinite(img).all():
            raise DataError(source, "image holds NaN or infinite values after preprocessing")
        return img


class Augment(Transform, RandomizableTrait):
    """Random flips, affine, blur, brightness/contrast on ``image`` (and the same geometry on ``lesion``).

    Uses torchvision's v2 transforms on tensors, which draw from torch's generator; the DataModule
    seeds each worker, so a run is repeatable for a seed.
    """

    def __init__(self, cfg: AugmentConfig):
        ops: list[Any] = []
        if cfg.hflip > 0:
            ops.append(v2.RandomHorizontalFlip(cfg.hflip))
        if cfg.vflip > 0:
            ops.append(v2.RandomVerticalFlip(cfg.vflip))
        if cfg.rotate or cfg.translate or cfg.shear or tuple(cfg.scale) != (1.0, 1.0):
            ops.append(v2.RandomAffine(degrees=cfg.rotate, translate=(cfg.translate, cfg.translate),
                                       scale=tuple(cfg.scale), shear=cfg.shear or None,
                                       interpolation=v2.InterpolationMode.BILINEAR))
        self.geometry = v2.Compose(ops) if ops else None
        self.blur = (v2.RandomApply([v2.GaussianBlur(cfg.blur_kernel, tuple(cfg.blur_sigma))], p=cfg.blur_prob)
                     if cfg.blur_prob > 0 else None)
        self.brightness, self.contrast = cfg.brightness, cfg.contrast

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        from torchvision import tv_tensors

        out = dict(item)
        img, les = item["image"], item["lesion"]
        if self.geometry is not None:
            img, les = self.geometry(img, tv_tensors.Mask(les))
            les = les.as_subclass(torch.Tensor)
        if self.blur is not None:
            img = self.blur(img)
        if self.brightness or self.contrast:
            b = (torch.rand(()) * 2 - 1) * self.brightness
            c = 1 + (torch.rand(()) * 2 - 1) * self.contrast
            img = (img - img.mean()) * c + img.mean() + b
        out["image"], out["lesion"] = img.as_subclass(torch.Tensor), les
        return out


#: mag-sd-multiscale-attention-cxr.txt, Table 2 ("Augmentations used and factor setting"), with the
#: one factor the paper does not give: the area kept by the resized crop (chestdx's choice, 64-100%
#: of the image = 80-100% of each side, a zoom of up to 1.25x).
MAGSD_TABLE2: dict[str, Any] = {
    "brightness": (0.5, 1.0),  # "Random chosen brightness factor from [0.5, 1.0]"
    "contrast": (0.7, 1.0),  # "Random chosen contrast factor from [0.7, 1.0]"
    "crop_scale": (0.64, 1.0),  # "Random cropping then resize to 224 * 224" (area fraction: chestdx's choice)
    "crop_ratio": (3 / 4, 4 / 3),  # torchvision's default aspect-ratio range
    "rotation": (0.0, 120.0),  # "Random rotation from [0, 120]"
}


def adjust_brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Brightness factor ``f`` of a normalised image: ``x' = m + (x - m) f`` with ``m = x.min()``.

    Equals multiplying the [0, 1] intensities by ``f`` before the z-score (torchvision's
    ``adjust_brightness``) when the darkest pixel is black (0), as after chestdx's min-max scaling:
    z-scoring is affine, so the darkest value stays and every other value moves towards it.
    ``(C, H, W)`` -> ``(C, H, W)``.
    """
    m = image.amin()
    return m + (image - m) * factor


def adjust_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Contrast factor ``c``: ``x' = mean + (x - mean) c`` (torchvision's ``adjust_contrast`` blends
    with the grey mean the same way; affine, so the same before or after the z-score). ``(C, H, W)``."""
    mean = image.mean()
    return mean + (image - mean) * factor


class MagsdAugment(Transform, RandomizableTrait):
    """MAG-SD's training augmentation (Table 2 and Sec. 4.2): "Random number of transformations were
    chosen from a sequence of linear transformation for each training sequence".

    The sequence, in the table's order: brightness (factor from [0.5, 1.0]), contrast (factor from
    [0.7, 1.0]), resized crop (a crop of 64-100% of the area, resized back: a zoom-in, no fill),
    rotation (an angle from [0, 120] degrees), horizontal flip, vertical flip. For each image a number
    ``n`` is drawn uniformly from ``0..6`` and ``n`` of the six (drawn without replacement) are applied,
    in that order, each at its full probability. Chosen where the paper is silent (``docs/magsd.md``):
    the crop's area range, ``n`` from 0 (an image may go through unchanged), the order. Geometry acts on
    ``lesion`` alike. Randomness from torch's generator (seeded per worker).

    Attributes:
        last_applied: names of the operations applied to the last item (for tests and logs).
    """

    OPS = ("brightness", "contrast", "resized_crop", "rotation", "hflip", "vflip")

    def __init__(self, table: dict[str, Any] | None = None):
        t = dict(MAGSD_TABLE2, **(table or {}))
        self.table = t
        self.last_applied: list[str] = []

    def _uniform(self, lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * torch.rand(()))

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        out = dict(item)
        img, les = item["image"], tv_tensors.Mask(item["lesion"])
        n = int(torch.randint(0, len(self.OPS) + 1, ()))
        chosen = sorted(torch.randperm(len(self.OPS))[:n].tolist())
        t = self.table
        self.last_applied = [self.OPS[i] for i in chosen]
        for name in self.last_applied:
            if name == "brightness":
                img = adjust_brightness(img, self._uniform(*t["brightness"]))
            elif name == "contrast":
                img = adjust_contrast(img, self._uniform(*t["contrast"]))
            elif name == "resized_crop":
                size = list(img.shape[-2:])
                top, left, h, w = v2.RandomResizedCrop.get_params(img, list(t["crop_scale"]), list(t["crop_ratio"]))
                img = F.resized_crop(img, top, left, h, w, size, interpolation=v2.InterpolationMode.BILINEAR,
                                     antialias=True)
                les = F.resized_crop(les, top, left, h, w, size, interpolation=v2.InterpolationMode.NEAREST)
            elif name == "rotation":
                angle = self._uniform(*t["rotation"])
                fill = float(img.amin())  # the background (black) of the image, not 0 of the z-score
                img = F.rotate(img, angle, interpolation=v2.InterpolationMode.BILINEAR, fill=[fill])
                les = F.rotate(les, angle, interpolation=v2.InterpolationMode.NEAREST)
            elif name == "hflip":
                img, les = F.horizontal_flip(img), F.horizontal_flip(les)
            else:
                img, les = F.vertical_flip(img), F.vertical_flip(les)
        out["image"], out["lesion"] = torch.as_tensor(img).as_subclass(torch.Tensor), les.as_subclass(torch.Tensor)
        return out


def make_augment(cfg: AugmentConfig) -> Transform:
    """The training augmentation of ``data.augment``: ``policy: chestdx`` -> :class:`Augment` (its
    fields), ``policy: magsd_table2`` -> :class:`MagsdAugment` (MAG-SD's Table 2; the other fields unused)."""
    if getattr(cfg, "policy", "chestdx") == "magsd_table2":
        return MagsdAugment()
    return Augment(cfg)


def build_pipeline(cfg: DataConfig, train: bool) -> Compose:
    """The MONAI chain for one split: preprocessing, then augmentation when ``train``."""
    steps: list[Any] = [LoadPreprocess(cfg)]
    if train:
        steps.append(make_augment(cfg.augment))
    return Compose(steps, map_items=False)
