"""Contrastive Patch Embedding (CPE) loss, Eq. 1 of cam-snapmix-cpe-tta-covid-ct.txt (Sec. 3.2).

At 224 px the layer4 embedding of ResNet-50 is a 7 x 7 grid of 2048-d vectors, one per 32 x 32
patch. The CAM is summed over each patch; ``u1, u2`` are the vectors of the two patches with the
highest sums and ``v1, v2`` those of the two lowest. With raw dot products and no temperature::

    L = -ln( e^{u1.u2} / (e^{u1.u2} + sum_{i,j=1..2} e^{ui.vj}) )
        -ln( e^{v1.v2} / (e^{v1.v2} + sum_{i,j=1..2} e^{ui.vj}) ),

averaged over the batch and summed, unweighted, with the cross-entropy (recipe weight 1).

Readings and choices:

- The vectors are the embedding's own grid cells (the authors' released code samples other
  coordinates; that is not copied). Generally the CAM is sum-pooled onto whatever grid the
  embedding has, so other resolutions work.
- Computed with ``logsumexp``, so it is exact and finite however large the dot products are.
  Raw products of 2048-d ReLU features can reach the thousands, which saturates the loss (a
  pair's term is then either ~0 or ~the gap between dot products). ``normalize=True`` L2-normalises
  the four vectors first (cosine similarities in ``[-1, 1]``, still no temperature); the paper's
  raw form stays the default.
- Ties between equal CAM sums (e.g. an all-zero CAM) are broken by raster order.
- For a mixed batch the CAM is that of the argmax of the soft target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chestdx.models.base import ChestModel
from chestdx.objectives.registry import OBJECTIVES


def sum_pool(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Sum ``(B, H, W)`` maps over the cells of a ``size = (h, w)`` grid.

    Exact block sums when ``H, W`` are multiples of ``h, w``; otherwise the cells of
    ``adaptive_avg_pool2d`` (which may overlap by a pixel) times their pixel counts.

    Returns:
        ``(B, h, w)``.
    """
    b, hh, ww = maps.shape
    h, w = int(size[0]), int(size[1])
    m = maps.float()
    if (hh, ww) == (h, w):
        return m
    if hh % h == 0 and ww % w == 0:
        return m.view(b, h, hh // h, w, ww // w).sum(dim=(2, 4))

    def counts(n_in: int, n_out: int) -> Tensor:
        i = torch.arange(n_out, dtype=torch.float64)
        start = torch.floor(i * n_in / n_out)
        end = torch.ceil((i + 1) * n_in / n_out)
        return (end - start).float()

    area = counts(hh, h)[:, None] * counts(ww, w)[None, :]
    return F.adaptive_avg_pool2d(m[:, None], (h, w))[:, 0] * area.to(m.device)


def cpe_loss(embeddings: Tensor, cam: Tensor, normalize: bool = False) -> Tensor:
    """Contrastive Patch Embedding loss (Eq. 1), mean over the batch.

    Args:
        embeddings: ``(B, C, h, w)`` spatial embedding (layer4 features; 7 x 7 at 224 px). The loss
            is differentiable with respect to it.
        cam: ``(B, H, W)`` CAM (any resolution; sum-pooled onto the ``h x w`` grid, e.g. 32 x 32
            cells of a 224 x 224 map), treated as a constant.
        normalize: L2-normalise the four vectors before the dot products (not in the paper).

    Returns:
        scalar (float32).

    Raises:
        ValueError: fewer than 4 grid cells, or shapes that do not fit.
    """
    if embeddings.ndim != 4 or cam.ndim != 3 or cam.shape[0] != embeddings.shape[0]:
        raise ValueError(f"cpe_loss: embeddings must be (B, C, h, w) and cam (B, H, W); got "
                         f"{tuple(embeddings.shape)} and {tuple(cam.shape)}")
    b, c, h, w = embeddings.shape
    if h * w < 4:
        raise ValueError(f"cpe_loss needs at least 4 grid cells, got a {h}x{w} embedding")
    scores = sum_pool(cam.detach(), (h, w)).flatten(1)  # (B, hw)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    idx = torch.cat([order[:, :2], order[:, -2:]], dim=1)  # u1, u2, v1, v2
    vecs = embeddings.float().flatten(2).transpose(1, 2)  # (B, hw, C)
    picked = vecs.gather(1, idx[:, :, None].expand(b, 4, c))  # (B, 4, C)
    if normalize:
        picked = F.normalize(picked, dim=-1)
    u1, u2, v1, v2 = picked.unbind(dim=1)
    s_uu = (u1 * u2).sum(-1)
    s_vv = (v1 * v2).sum(-1)
    s_uv = torch.stack([(u1 * v1).sum(-1), (u1 * v2).sum(-1), (u2 * v1).sum(-1), (u2 * v2).sum(-1)], 1)
    term_u = torch.logsumexp(torch.cat([s_uu[:, None], s_uv], 1), dim=1) - s_uu
    term_v = torch.logsumexp(torch.cat([s_vv[:, None], s_uv], 1), dim=1) - s_vv
    return (term_u + term_v).mean()


@OBJECTIVES.register("cpe")
class ContrastivePatchEmbedding(nn.Module):
    """The ``cpe`` objective: :func:`cpe_loss` on ``out.features``.

    The CAM is that of each image's label (the argmax of ``batch["target"]``, so for a mixed batch
    the dominant class), computed from the detached features with
    :func:`~chestdx.explain.cam.cam_from_features`, upsampled to the image size and sum-pooled
    back onto the feature grid (the paper's "sum of the CAM activations in the 32 x 32 patch").
    The gradient flows through ``out.features`` only.
    """

    def __init__(self, num_classes: int, normalize: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.normalize = bool(normalize)

    def forward(self, model: ChestModel, out: Any, batch: dict[str, Tensor]) -> Tensor:
        from chestdx.explain.cam import cam_from_features, upsample_map

        if out.features is None or out.features.ndim != 4:
            raise ValueError("the cpe objective needs a model whose output has 2D spatial features "
                             "(B, C, h, w)")
        target = batch["target"].argmax(dim=1) if "target" in batch else batch["label"]
        cam_map = cam_from_features(model, out.features, target)
        cam_map = upsample_map(cam_map, batch["image"].shape[-2:])
        return cpe_loss(out.features, cam_map, normalize=self.normalize)

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"


__all__ = ["ContrastivePatchEmbedding", "cpe_loss", "sum_pool"]
