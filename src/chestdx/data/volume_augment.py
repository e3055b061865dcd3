"""The random augmentations of CMC-COV19D (cmc-cov19d-3d-contrastive-mixup.txt, Sec. 3.2), on batches.

Applied in sequence to volumes ``(B, C, D, H, W)`` in ``[0, 1]`` (on the device, after transfer):

1. a random crop on the transverse plane (each side a random fraction ``crop_scale`` of ``H`` /
   ``W``, at a random place), resized back to ``H x W`` (trilinear, depth unchanged);
2. a random crop along the slice axis to a fixed depth ``d`` (volumes shallower than ``d`` are
   resized up to ``d``: the paper's volumes are all resized to 128 slices first, so this only
   happens when a recipe asks for more than it resized to);
3. random brightness and contrast: ``x' = (x - mean) * c + mean + b``, ``c ~ U(1 - contrast, 1 +
   contrast)``, ``b ~ U(-brightness, brightness)``, clipped to ``[0, 1]``.

Every volume of the batch gets its own draws. ``generator`` makes a call repeatable (intra-model
ensembles use a fixed one); without it torch's global generator is used (seeded by Lightning).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from chestdx.errors import ConfigError

__all__ = ["cmc_augment", "depth_crop", "two_views"]


def _u(lo: float, hi: float, gen: torch.Generator | None) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=gen).item())


def _check(x: Tensor) -> None:
    if x.ndim != 5:
        raise ValueError(f"volume augmentations take (B, C, D, H, W); got {tuple(x.shape)}")


def depth_crop(x: Tensor, depth: int, *, random: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Crop ``(B, C, D, H, W)`` to ``(B, C, depth, H, W)``: random start per volume, or centred.

    Shallower volumes are resized (trilinear) up to ``depth``.
    """
    _check(x)
    b, _, d, h, w = x.shape
    if d == depth:
        return x
    if d < depth:
        return F.interpolate(x.float(), size=(depth, h, w), mode="trilinear", align_corners=False).to(x.dtype)
    if not random:
        s = (d - depth) // 2
        return x[:, :, s:s + depth]
    starts = [int(torch.randint(0, d - depth + 1, (), generator=generator)) for _ in range(b)]
    return torch.stack([x[i, :, s:s + depth] for i, s in enumerate(starts)])


def cmc_augment(x: Tensor, depth: int | None = None, crop_scale: Sequence[float] = (0.8, 1.0),
                brightness: float = 0.1, contrast: float = 0.1,
                generator: torch.Generator | None = None) -> Tensor:
    """One augmented view of every volume (Sec. 3.2, the three steps in order).

    Args:
        x: ``(B, C, D, H, W)`` in ``[0, 1]``.
        depth: ``d`` (None: keep ``D``).
        crop_scale: ``(lo, hi)`` fraction of ``H`` and of ``W`` kept by the transverse crop (each side
            drawn on its own); ``(1, 1)`` disables it.
        brightness, contrast: ranges of the intensity change (0 disables).
        generator: torch generator for the draws.

    Returns:
        ``(B, C, d, H, W)`` float, same dtype and device as ``x``.

    Raises:
        ConfigError: a crop scale outside ``(0, 1]`` or negative ranges.
    """
    _check(x)
    lo, hi = float(crop_scale[0]), float(crop_scale[1])
    if not (0 < lo <= hi <= 1):
        raise ConfigError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {tuple(crop_scale)}")
    if brightness < 0 or contrast < 0:
        raise ConfigError(f"brightness and contrast must be >= 0, got {brightness}, {contrast}")
    b, _, d, h, w = x.shape
    out = []
    for i in range(b):
        v = x[i:i + 1]
        if hi < 1 or lo < 1:
            ch = max(1, round(h * _u(lo, hi, generator)))
            cw = max(1, round(w * _u(lo, hi, generator)))
            y0 = int(torch.randint(0, h - ch + 1, (), generator=generator))
            x0 = int(torch.randint(0, w - cw + 1, (), generator=generator))
            v = v[:, :, :, y0:y0 + ch, x0:x0 + cw]
            if (ch, cw) != (h, w):
                v = F.interpolate(v.float(), size=(d, h, w), mode="trilinear", align_corners=False).to(x.dtype)
        out.append(v)
    y = torch.cat(out)
    if depth is not None:
        y = depth_crop(y, int(depth), random=True, generator=generator)
    if brightness or contrast:
        bb = torch.tensor([_u(-brightness, brightness, generator) for _ in range(b)], device=x.device)
        cc = torch.tensor([_u(1 - contrast, 1 + contrast, generator) for _ in range(b)], device=x.device)
        mean = y.float().mean(dim=(1, 2, 3, 4), keepdim=True)
        y = ((y.float() - mean) * cc.view(-1, 1, 1, 1, 1) + mean + bb.view(-1, 1, 1, 1, 1)).clamp(0, 1).to(x.dtype)
    return y


def two_views(x: Tensor, views: int = 2, **kwargs: object) -> Tensor:
    """``views`` augmented views of every volume, interleaved: rows ``v*k .. v*k+v-1`` come from
    volume ``k`` (the paper's ``x~_{2k-1}, x~_{2k}``). ``(B, C, D, H, W)`` -> ``(views * B, C, d, H, W)``.
    """
    vs = [cmc_augment(x, **kwargs) for _ in range(views)]  # type: ignore[arg-type]
    return torch.stack(vs, dim=1).flatten(0, 1)
