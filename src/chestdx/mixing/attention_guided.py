"""Attention-guided augmentation of MAG-SD (mag-sd-multiscale-attention-cxr.txt, Sec. 3.3, Fig. 5).

From one normalised attention map ``A*`` per image (``A* = A_k / max A_k``, values in [0, 1], at
image resolution) three views of the image are made:

- **attention mix-up** (Eq. 2-3): region ``D = A* > theta_m``; the bounding box of D (enlarged by
  ``padding`` of the image side on every side, clipped) is cropped, resized (bilinear) to the image
  size ``B`` and blended: ``I1 = gamma * I0 + (1 - gamma) * B``;
- **attention patching**: the same kind of box (threshold ``theta_p``) is cut out of the image and
  pasted back onto a copy of it at a random position, duplicating the attended region: ``I2``;
- **attention dimming** (Eq. 4): ``DM = dim_value`` where ``A* > theta_d`` and 1 elsewhere;
  ``I3 = I0 * DM``.

The mixer (:class:`AttentionGuided`, registered as ``attention_guided``) plugs into the one
training loop as every mixer does (``mixer(model, batch) -> batch``; see
:mod:`chestdx.engine.task`): it runs the model once without gradients on the batch to read its
attention maps ``ModelOutput.maps["attention_parts"] (B, M, h, w)``, draws one map per image and per
view, builds the views, and returns a batch of ``(1 + V) * B`` images: the originals first, then
view 1 of every image, view 2, ... Labels, targets and every other per-image tensor are repeated
to match, and ``num_views = 1 + V`` tells the objectives how the batch is laid out. The model's one
forward pass on that batch gives the primary prediction ``P`` (first B rows) and the auxiliary
predictions ``p1..pV``; :func:`chestdx.objectives.soft_distance` then computes MAG-SD's loss. (A plain
``ce`` objective on such a batch is cross-entropy averaged over all views, the alternative kept
commented out in the authors' training code.)

Defaults (the paper gives none of these numbers; they are the authors' public code, StonHamA/MAG-SD,
``core/utils.py: batch_augment`` and ``train_new.py``):

- ``theta_m = theta_p = (0.4, 0.6)`` and ``theta_d = (0.2, 0.5)``: a pair is a range, and each image
  draws its own threshold uniformly from it (a single number is a fixed threshold);
- ``gamma = 0.6`` (original image weight in the mix-up blend), ``padding = 0.1``;
- ``dim_value = 0.001``: the paper's Eq. (4) value is garbled in the text ("00.1"); the reference
  multiplies the dimmed region by 0.001. With z-scored images this sets the region to about the
  image mean;
- the map for each view is drawn with probability proportional to the square root of its total
  activation (the reference, after WS-DAN); the paper only says "randomly chosen";
- thresholds compare with ``>`` as Eq. (2) and (4) (the reference uses ``>=`` / ``<``);
- an image whose map has no activation (all zero) has an empty region: its mix-up box and patch are
  the whole image (the view equals the original) and nothing is dimmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chestdx.errors import ConfigError
from chestdx.mixing.registry import MIXERS
from chestdx.models.base import ChestModel

Box = tuple[int, int, int, int]  # (y1, x1, y2, x2), half-open
VIEWS = ("mixup", "dimming", "patching")
_EPS = 1e-12


def normalize_attention(maps: Tensor, size: Sequence[int] | None = None) -> Tensor:
    """Resize (bilinear) maps ``(B, h, w)`` to ``size`` and divide each by its maximum.

    Returns:
        ``(B, H, W)`` float maps in [0, 1]; an all-zero (or negative) map stays all zero.
    """
    m = maps.float()
    if size is not None and tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    m = m.clamp(min=0)
    peak = m.flatten(1).amax(dim=1).clamp(min=_EPS)
    return m / peak[:, None, None]


def region_box(region: Tensor, padding: float = 0.1) -> Box:
    """The bounding box of a boolean region ``(H, W)``, enlarged by ``padding`` of the side, clipped.

    The enlargement is ``int(padding * H)`` rows and ``int(padding * W)`` columns on each side. An
    empty region gives the whole image.

    Returns:
        ``(y1, x1, y2, x2)``, half-open.
    """
    h, w = region.shape
    idx = torch.nonzero(region, as_tuple=False)
    if idx.numel() == 0:
        return (0, 0, h, w)
    py, px = int(padding * h), int(padding * w)
    y1, x1 = int(idx[:, 0].min()) - py, int(idx[:, 1].min()) - px
    y2, x2 = int(idx[:, 0].max()) + 1 + py, int(idx[:, 1].max()) + 1 + px
    return (max(y1, 0), max(x1, 0), min(y2, h), min(x2, w))


def _thresholds(theta: float | Tensor | Sequence[float], b: int, gen: np.random.Generator | None) -> Tensor:
    if isinstance(theta, Tensor):
        t = theta.float().flatten()
        return t.expand(b) if t.numel() == 1 else t
    if isinstance(theta, (int, float)):
        return torch.full((b,), float(theta))
    lo, hi = (float(v) for v in theta)
    g = gen if gen is not None else np.random.default_rng()
    return torch.as_tensor(g.uniform(lo, hi, size=b), dtype=torch.float32)


def attention_mixup(images: Tensor, maps: Tensor, theta: Tensor | float, gamma: float = 0.6,
                    padding: float = 0.1) -> tuple[Tensor, list[Box]]:
    """Attention mix-up (Eq. 2-3): blend each image with its attended box enlarged to the image size.

    Args:
        images: ``(B, C, H, W)``.
        maps: ``(B, H, W)`` normalised attention (see :func:`normalize_attention`).
        theta: threshold ``theta_m``, a number or ``(B,)``.
        gamma: weight of the original image.
        padding: box enlargement as a fraction of the side.

    Returns:
        ``I1 = gamma * I0 + (1 - gamma) * resize(crop(I0, box))`` ``(B, C, H, W)`` and the boxes.
    """
    b, _, h, w = images.shape
    t = _thresholds(theta, b, None).to(maps.device)
    out, boxes = [], []
    for i in range(b):
        y1, x1, y2, x2 = region_box(maps[i] > t[i], padding)
        crop = images[i:i + 1, :, y1:y2, x1:x2]
        big = F.interpolate(crop.float(), size=(h, w), mode="bilinear", align_corners=False).to(images.dtype)
        out.append(gamma * images[i:i + 1] + (1.0 - gamma) * big)
        boxes.append((y1, x1, y2, x2))
    return torch.cat(out), boxes


def attention_patching(images: Tensor, maps: Tensor, theta: Tensor | float, padding: float = 0.1,
                       positions: Sequence[tuple[int, int]] | None = None,
                       gen: np.random.Generator | None = None) -> tuple[Tensor, list[Box]]:
    """Attention patching: paste each image's attended box onto a copy of it at another position.

    Args:
        images: ``(B, C, H, W)``.
        maps: ``(B, H, W)`` normalised attention.
        theta: threshold, a number or ``(B,)``.
        padding: box enlargement as a fraction of the side.
        positions: top-left ``(y, x)`` of each pasted patch (default: uniform random positions where
            the patch fits).
        gen: generator for the positions.

    Returns:
        patched images ``(B, C, H, W)`` and the source boxes.

    Raises:
        ValueError: a given position would put the patch outside the image.
    """
    b, _, h, w = images.shape
    t = _thresholds(theta, b, None).to(maps.device)
    g = gen if gen is not None else np.random.default_rng()
    out = images.clone()
    boxes = []
    for i in range(b):
        y1, x1, y2, x2 = region_box(maps[i] > t[i], padding)
        ph, pw = y2 - y1, x2 - x1
        if positions is not None:
            py, px = positions[i]
        else:
            py, px = int(g.integers(0, h - ph + 1)), int(g.integers(0, w - pw + 1))
        if not (0 <= py <= h - ph and 0 <= px <= w - pw):
            raise ValueError(f"attention_patching: patch {ph}x{pw} at ({py}, {px}) leaves the {h}x{w} image")
        out[i, :, py:py + ph, px:px + pw] = images[i, :, y1:y2, x1:x2]
        boxes.append((y1, x1, y2, x2))
    return out, boxes


def attention_dimming(images: Tensor, maps: Tensor, theta: Tensor | float, dim_value: float = 0.001) -> Tensor:
    """Attention dimming (Eq. 4): multiply the attended region (``A* > theta``) by ``dim_value``.

    Args:
        images: ``(B, C, H, W)``.
        maps: ``(B, H, W)`` normalised attention.
        theta: threshold ``theta_d``, a number or ``(B,)``.
        dim_value: the dimming mask's value inside the region.

    Returns:
        ``I0 * DM`` ``(B, C, H, W)``.
    """
    b = images.shape[0]
    t = _thresholds(theta, b, None).to(maps.device)
    dm = torch.where(maps > t[:, None, None], torch.full_like(maps, dim_value), torch.ones_like(maps))
    return images * dm[:, None].to(images.dtype)


def choose_maps(parts: Tensor, n: int, gen: np.random.Generator | None = None) -> Tensor:
    """Draw ``n`` attention maps per image, each with probability proportional to sqrt(total activation).

    Args:
        parts: ``(B, M, h, w)`` non-negative attention maps.
        n: maps per image (one per view).

    Returns:
        ``(n, B, h, w)``; the draws of one image are with replacement.
    """
    b, m = parts.shape[:2]
    g = gen if gen is not None else np.random.default_rng()
    mass = torch.sqrt(parts.detach().float().clamp(min=0).flatten(2).sum(dim=2) + _EPS).cpu().numpy()
    out = torch.empty((n, b, *parts.shape[2:]), dtype=parts.dtype, device=parts.device)
    for i in range(b):
        p = mass[i] / mass[i].sum()
        idx = g.choice(m, size=n, p=p)
        for v in range(n):
            out[v, i] = parts[i, int(idx[v])]
    return out


def _as_range(name: str, value: Any) -> float | tuple[float, float]:
    if isinstance(value, (int, float)):
        v = float(value)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"attention_guided: {name} must lie in [0, 1], got {value}")
        return v
    try:
        lo, hi = (float(x) for x in value)
    except (TypeError, ValueError):
        raise ConfigError(f"attention_guided: {name} must be a number or [low, high], got {value!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise ConfigError(f"attention_guided: {name} range must satisfy 0 <= low <= high <= 1, got {value!r}")
    return (lo, hi)


@MIXERS.register("attention_guided")
class AttentionGuided(nn.Module):
    """The ``attention_guided`` mixer: original images plus attention mix-up / dimming / patching views.

    With probability ``prob`` per batch (else the batch passes unchanged, ``num_views = 1``) it
    returns ``image ((1 + V) B, C, H, W)`` = originals, then each view in the order of ``views``;
    ``label``, ``target`` and every other tensor with a leading batch dimension repeated ``1 + V``
    times; ``num_views`` = 1 + V (a 0-d long tensor).

    Args:
        prob: probability of augmenting a batch.
        num_classes: K.
        views: which views and in which order: any of ``mixup``, ``dimming``, ``patching``
            (Table 7: ``[mixup]``, ``[mixup, dimming]``, ``[mixup, dimming, patching]``).
        theta_m, theta_p, theta_d: thresholds (number or ``[low, high]``) of mix-up, patching, dimming.
        gamma: original-image weight of the mix-up blend.
        padding: box enlargement (fraction of the side).
        dim_value: multiplier inside the dimmed region.
        seed: seeds the mixer's own generator (None: drawn from torch's global RNG at each call).

    Raises:
        ConfigError: bad parameters; at run time, a model that returns no attention maps.
    """

    def __init__(self, prob: float = 1.0, num_classes: int = 2,
                 views: Sequence[str] = VIEWS, theta_m: Any = (0.4, 0.6), theta_p: Any = (0.4, 0.6),
                 theta_d: Any = (0.2, 0.5), gamma: float = 0.6, padding: float = 0.1,
                 dim_value: float = 0.001, seed: int | None = None):
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ConfigError(f"attention_guided: prob must lie in [0, 1], got {prob}")
        bad = [v for v in views if v not in VIEWS]
        if bad or not views:
            raise ConfigError(f"attention_guided: views must be a non-empty list of {list(VIEWS)}, got {list(views)}")
        if not 0.0 <= gamma <= 1.0:
            raise ConfigError(f"attention_guided: gamma must lie in [0, 1], got {gamma}")
        if not 0.0 <= padding < 0.5:
            raise ConfigError(f"attention_guided: padding must lie in [0, 0.5), got {padding}")
        self.prob = float(prob)
        self.num_classes = int(num_classes)
        self.views = tuple(views)
        self.theta_m = _as_range("theta_m", theta_m)
        self.theta_p = _as_range("theta_p", theta_p)
        self.theta_d = _as_range("theta_d", theta_d)
        self.gamma, self.padding, self.dim_value = float(gamma), float(padding), float(dim_value)
        self._rng = np.random.default_rng(seed) if seed is not None else None

    def _gen(self) -> np.random.Generator:
        if self._rng is not None:
            return self._rng
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    def make_views(self, images: Tensor, parts: Tensor, gen: np.random.Generator) -> list[Tensor]:
        """The augmented views ``[(B, C, H, W)] * V`` of ``images`` from attention maps ``(B, M, h, w)``."""
        b = images.shape[0]
        chosen = choose_maps(parts, len(self.views), gen)
        out = []
        for v, name in enumerate(self.views):
            maps = normalize_attention(chosen[v], images.shape[-2:])
            if name == "mixup":
                img, _ = attention_mixup(images, maps, _thresholds(self.theta_m, b, gen), self.gamma, self.padding)
            elif name == "patching":
                img, _ = attention_patching(images, maps, _thresholds(self.theta_p, b, gen), self.padding, gen=gen)
            else:
                img = attention_dimming(images, maps, _thresholds(self.theta_d, b, gen), self.dim_value)
            out.append(img)
        return out

    @torch.no_grad()
    def _attention(self, model: ChestModel, images: Tensor) -> Tensor:
        out = model(images)
        parts = out.maps.get("attention_parts")
        if parts is None:
            raise ConfigError("mixing 'attention_guided' needs a model that returns attention maps "
                              "(ModelOutput.maps['attention_parts']); use model.name: magsd")
        return parts.detach()

    def forward(self, model: ChestModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        batch = dict(batch)
        images, labels = batch["image"], batch["label"]
        if "target" not in batch:
            batch["target"] = F.one_hot(labels.long(), self.num_classes).float()
        gen = self._gen()
        if self.prob <= 0.0 or gen.random() >= self.prob:
            batch["num_views"] = torch.tensor(1, device=images.device)
            return batch
        b = images.shape[0]
        parts = self._attention(model, images)
        views = self.make_views(images, parts, gen)
        n = 1 + len(views)
        out: dict[str, Tensor] = {}
        for key, value in batch.items():
            if key == "image":
                out[key] = torch.cat([images, *views])
            elif isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == b:
                out[key] = value.repeat(n, *([1] * (value.ndim - 1)))
            else:
                out[key] = value
        out["num_views"] = torch.tensor(n, device=images.device)
        return out

    def extra_repr(self) -> str:
        return (f"prob={self.prob}, views={list(self.views)}, theta_m={self.theta_m}, theta_p={self.theta_p}, "
                f"theta_d={self.theta_d}, gamma={self.gamma}, padding={self.padding}")


__all__ = [
    "AttentionGuided",
    "attention_dimming",
    "attention_mixup",
    "attention_patching",
    "choose_maps",
    "normalize_attention",
    "region_box",
]
