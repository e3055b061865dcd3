"""The ``cmc_views`` batch step of CMC-COV19D: two augmented views per volume (Sec. 3.2).

Called as ``mixer(model, batch) -> batch`` in training only, like every chestdx mixer. It turns a
batch of ``N`` volumes ``image (N, C, D, H, W)`` into the ``2N`` views ``(2N, C, d, H, W)`` of the
paper, interleaved (rows ``2k`` and ``2k + 1`` are the two views of volume ``k``), and repeats
``label``, ``target``, ``site``, ``index`` and ``has_mask`` to match; ``num_views`` = 2. The
classification, contrastive and mixup objectives then all read the same ``2N`` rows. Lesion masks
are dropped from the training batch (the crops would have to follow them; no objective uses them).

``prob`` < 1 leaves a batch un-augmented with probability ``1 - prob`` (the two views are then the
same centred depth crop; the contrastive loss still has its positives).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from chestdx.data.volume_augment import cmc_augment, depth_crop
from chestdx.mixing.registry import MIXERS

__all__ = ["CMCViews"]


@MIXERS.register("cmc_views")
class CMCViews(nn.Module):
    """Two (``views``) augmented views of every volume of a batch.

    Args:
        prob: probability of augmenting a batch.
        num_classes: K (unused; the registry passes it).
        views: views per volume (2 in the paper).
        depth: ``d`` of the random depth crop (None keeps the volume's depth; 64 for the paper's
            ResNeSt models, 128 = all slices for ResNet-50).
        crop_scale, brightness, contrast: see :func:`chestdx.data.volume_augment.cmc_augment`.
    """

    def __init__(self, prob: float = 1.0, num_classes: int = 2, views: int = 2, depth: int | None = None,
                 crop_scale: Sequence[float] = (0.8, 1.0), brightness: float = 0.1, contrast: float = 0.1):
        super().__init__()
        self.prob = float(prob)
        self.views = int(views)
        self.depth = int(depth) if depth else None
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.brightness, self.contrast = float(brightness), float(contrast)

    def forward(self, model: Any, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = batch["image"]
        if x.ndim != 5:
            raise ValueError(f"mixing 'cmc_views' needs volumes (B, C, D, H, W); got {tuple(x.shape)} "
                             "(use it with task: volume)")
        if self.prob >= 1 or torch.rand(()) < self.prob:
            vs = [cmc_augment(x, self.depth, self.crop_scale, self.brightness, self.contrast)
                  for _ in range(self.views)]
        else:
            same = x if self.depth is None else depth_crop(x, self.depth, random=False)
            vs = [same] * self.views
        out: dict[str, Tensor] = {}
        out["image"] = torch.stack(vs, dim=1).flatten(0, 1)
        for key, v in batch.items():
            if key in ("image", "lesion"):
                continue
            if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == x.shape[0]:
                out[key] = v.repeat_interleave(self.views, dim=0)
            else:
                out[key] = v
        out["num_views"] = torch.tensor(self.views, device=x.device)
        return out

    def extra_repr(self) -> str:
        return (f"views={self.views}, depth={self.depth}, crop_scale={self.crop_scale}, "
                f"brightness={self.brightness}, contrast={self.contrast}")
