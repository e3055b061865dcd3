"""Occlusion maps, and their cheap first-order cousin: where covering the image lowers the model's belief.

Two heatmap kinds (:func:`~chestdx.explain.heatmap.heatmap`) on one 8 x 8 chequer of cells, for any
:class:`~chestdx.models.ChestModel` (they need only the logits): ``occlusion``
(:func:`occlusion_map`: one forward per cell with the cell covered) and ``intgrad``
(:func:`intgrad_map`: integrated gradients from a covered image, summed over each cell; 2 forward +
backward passes, batched). Both cover with the image's own median and keep only evidence *for* the class.

Occlusion: Zeiler & Fergus (2014) slid a grey square over the image and recorded the class
probability. chestdx's choices:

- the image is cut into a ``grid x grid`` chequer of square patches (``grid = 8`` by default),
  ``stride = patch = ceil(side / grid)`` pixels (the last patch flush with the far edge): at 64 px,
  8 px patches; at 224 px, 28 px patches. Measured on the demo's phantom (docs/explain.md), patches
  that do not overlap point best: 8 px patches every 8 px 0.44, every 4 px 0.38, 4 px every 4 px
  0.32, 16 px every 8 px 0.42 (pointing game), at a quarter of the cost of half-overlapping ones;
- the patch is filled with the image's own median (in the model's input units): on a CT slice the
  median pixel is air or aerated lung, so an opacity under the patch disappears, and bone or soft
  tissue become lung-dark;
- the score of a position is the drop of the target class's softmax probability, ``max(p - p_occluded,
  0)`` (a patch that raises the belief gives nothing: the map shows evidence for the class);
- a pixel's value is the mean score of the positions whose patch covers it.

The classification is not touched (the unoccluded forward is the model's own answer). Cost: one
forward per patch, ``grid ** 2`` (64 at grid 8, whatever the input size), batched ``batch`` copies at
a time, under ``torch.no_grad()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from chestdx.models.base import ChestModel

__all__ = ["IG_STEPS", "OCCLUSION_GRID", "intgrad_map", "occlusion_geometry", "occlusion_map"]

#: Patch positions per side of :func:`occlusion_map`'s (and :func:`intgrad_map`'s) default geometry.
OCCLUSION_GRID = 8
#: Steps of the Riemann sum of :func:`intgrad_map` (midpoint rule). 2, not 8, by measurement (issue 19,
#: docs/explain.md "How many Riemann points"): pointing game with 1 / 2 / 4 / 8 points on the demo
#: phantom's 96 lesion slices 0.250 / 0.448 / 0.448 / 0.438, on the Inf-Net test set (48, ImageNet
#: Lite0 at 224 px) 0.271 / 0.333 / 0.354 / 0.312, on 200 COVID-19 CT segmentation slices 0.270 / 0.270 /
#: 0.200 / 0.240: two points point as well as eight (energy inside the lesion 0.103 vs 0.134 on the
#: phantom, 0.131 vs 0.140 on Inf-Net, within the intervals) at a quarter of the passes, which brings an
#: EfficientNet-Lite0 answer with its map at 224 px under 50 ms on 2 CPU cores.
IG_STEPS = 2


def occlusion_geometry(size: int, grid: int = OCCLUSION_GRID) -> tuple[int, int, list[int]]:
    """``(stride, patch, starts)`` along one side of ``size`` pixels: ``stride = patch = ceil(size / grid)``
    and the patch starts ``0, stride, ...``, the last one moved to ``size - patch`` so that it ends at
    the edge (64 px, grid 8: patch 8, starts ``0, 8, ..., 56``; 100 px, grid 8: patch 13, starts
    ``0, 13, ..., 78, 87``)."""
    if size < 1 or grid < 1:
        raise ValueError(f"occlusion_geometry needs size >= 1 and grid >= 1; got {size}, {grid}")
    stride = max(1, math.ceil(size / grid))
    patch = min(stride, size)
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return stride, patch, starts


def _target(target: Tensor | int | Sequence[int] | None, logits: Tensor) -> Tensor:
    """``(B,)`` class indices: the predicted class for None, else an int, labels or soft targets' argmax."""
    b, k = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    t = torch.as_tensor(target, device=logits.device)
    if t.ndim == 0:
        t = t.expand(b)
    elif t.ndim == 2:
        t = t.argmax(dim=1)
    if t.shape != (b,) or bool(((t < 0) | (t >= k)).any()):
        raise ValueError(f"target must be an int, (B,) labels or (B, K) soft targets with classes in [0, {k}); "
                         f"got {t.tolist()} for a batch of {b}")
    return t.long()


def occlusion_map(model: ChestModel, images: Tensor, target: Tensor | int | Sequence[int] | None = None, *,
                  grid: int = OCCLUSION_GRID, batch: int = 64) -> Tensor:
    """Occlusion heatmaps of ``images (B, C, H, W)`` for ``target`` -> ``(B, H, W)`` raw maps (>= 0).

    Args:
        model: any :class:`~chestdx.models.ChestModel` (eval mode is the caller's choice).
        images: ``(B, C, H, W)``.
        target: ``None`` (the predicted class), an int, ``(B,)`` labels or ``(B, K)`` soft targets.
        grid: patch positions per side (see the module docstring).
        batch: occluded copies per forward pass.

    Returns:
        ``(B, H, W)`` float32: per pixel, the mean drop of the target's probability over the patches
        covering it (0 where occlusion never lowers it).
    """
    if images.ndim != 4:
        raise ValueError(f"occlusion_map takes images (B, C, H, W); got {tuple(images.shape)}")
    b, _, h, w = images.shape
    _, ph, ys = occlusion_geometry(int(h), grid)
    _, pw, xs = occlusion_geometry(int(w), grid)
    x = images.detach()
    heat = torch.zeros(b, h, w, dtype=torch.float32, device=x.device)
    cover = torch.zeros(h, w, dtype=torch.float32, device=x.device)
    for y0 in ys:
        for x0 in xs:
            cover[y0:y0 + ph, x0:x0 + pw] += 1
    positions = [(y0, x0) for y0 in ys for x0 in xs]
    with torch.no_grad():
        logits = model(x).logits.float()
        t = _target(target, logits)
        base = logits.softmax(1).gather(1, t[:, None])[:, 0]  # (B,)
        fill = x.flatten(2).median(dim=2).values[:, :, None, None]  # (B, C, 1, 1)
        per = max(1, batch // max(b, 1))  # positions per forward
        for k in range(0, len(positions), per):
            chunk = positions[k:k + per]
            xo = x.repeat(len(chunk), 1, 1, 1)  # (len(chunk) * B, C, H, W), position-major
            for j, (y0, x0) in enumerate(chunk):
                xo[j * b:(j + 1) * b, :, y0:y0 + ph, x0:x0 + pw] = fill
            p = model(xo).logits.float().softmax(1)
            p = p.gather(1, t.repeat(len(chunk))[:, None])[:, 0].view(len(chunk), b)
            drop = (base[None] - p).clamp(min=0)  # (len(chunk), B)
            for j, (y0, x0) in enumerate(chunk):
                heat[:, y0:y0 + ph, x0:x0 + pw] += drop[j][:, None, None]
    return heat / cover.clamp(min=1)


def intgrad_map(model: ChestModel, images: Tensor, target: Tensor | int | Sequence[int] | None = None, *,
                steps: int = IG_STEPS, grid: int = OCCLUSION_GRID, batch: int | None = None) -> Tensor:
    """Integrated gradients (Sundararajan et al. 2017) from the covered image, summed per cell.

    The baseline ``b`` is the image filled with its own median (what :func:`occlusion_map` covers
    with); the attribution of pixel ``i`` is ``(x_i - b_i) * mean_k d logit_t / d x_i`` at
    ``b + (k + 1/2) / steps * (x - b)``, ``k = 0 .. steps - 1`` (midpoint rule; summed over channels).
    Their sum over the image is about ``logit_t(x) - logit_t(b)``: the first-order estimate of what
    covering the whole image costs, so a cell's sum estimates what covering that cell costs (the
    logit's drop, where :func:`occlusion_map` measures the probability's). Each cell of the
    :func:`occlusion_geometry` chequer gets ``max(sum over its pixels, 0)``; a pixel covered by two
    cells (the last row / column when the side is not a multiple of ``grid``) their mean.

    Measured on the demo's phantom (docs/explain.md): pointing game about that of ``occlusion`` (0.50
    vs 0.53, 0.45 vs 0.44 on two models, at 8 steps) at an eighth of the forward passes; the same sum
    per pixel instead of per cell points at the lesion half as often (0.25-0.30), one step (gradient x
    (input - baseline)) 0.25-0.40; 2 steps as often as 8 (:data:`IG_STEPS`).

    Args:
        model: any :class:`~chestdx.models.ChestModel` (eval mode is the caller's choice; parameters
            get no ``.grad``: gradients are taken with respect to the input only).
        images: ``(B, C, H, W)``.
        target: ``None`` (the predicted class), an int, ``(B,)`` labels or ``(B, K)`` soft targets.
        steps: points of the Riemann sum (forward + backward passes).
        grid: cells per side.
        batch: images per pass: the ``steps`` points of every image go through the network together,
            ``batch`` at a time (default 64 on a GPU, 8 on a CPU, where batches of 8 were the cheapest
            per image: CAM voting's copies, issue 19); with a given ``target`` no other pass is made.

    Returns:
        ``(B, H, W)`` float32 maps ``>= 0``, constant on each cell.
    """
    if images.ndim != 4:
        raise ValueError(f"intgrad_map takes images (B, C, H, W); got {tuple(images.shape)}")
    if steps < 1:
        raise ValueError(f"intgrad_map needs steps >= 1; got {steps}")
    b, _, h, w = images.shape
    x = images.detach().float()
    base = x.flatten(2).median(dim=2).values[:, :, None, None].expand_as(x)  # (B, C, H, W)
    delta = x - base
    if target is None or not isinstance(getattr(model, "num_classes", None), int):
        with torch.no_grad():
            logits = model(images.detach()).logits.float()
    else:  # the target is given: only the logits' shape is needed to check it
        logits = torch.zeros(b, int(model.num_classes), device=x.device)
    t = _target(target, logits)
    grads = torch.zeros_like(x)
    per = max(1, (batch or (64 if x.is_cuda else 8)) // max(b, 1))  # Riemann points per pass
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        for k0 in range(0, steps, per):
            ks = range(k0, min(k0 + per, steps))
            # (len(ks) * B, C, H, W), point-major; torch.cat keeps the images' memory format
            xi = torch.cat([base + (k + 0.5) / steps * delta for k in ks]).requires_grad_(True)
            score = model(xi).logits.float().gather(1, t.repeat(len(ks))[:, None]).sum()
            (g,) = torch.autograd.grad(score, [xi])
            grads += g.detach().view(len(ks), *x.shape).sum(dim=0)
    attr = (delta * grads / steps).sum(dim=1)  # (B, H, W)
    _, ph, ys = occlusion_geometry(int(h), grid)
    _, pw, xs = occlusion_geometry(int(w), grid)
    heat = torch.zeros(b, h, w, dtype=torch.float32, device=x.device)
    cover = torch.zeros(h, w, dtype=torch.float32, device=x.device)
    for y0 in ys:
        for x0 in xs:
            cell = attr[:, y0:y0 + ph, x0:x0 + pw].sum(dim=(1, 2)).clamp(min=0)  # (B,)
            heat[:, y0:y0 + ph, x0:x0 + pw] += cell[:, None, None]
            cover[y0:y0 + ph, x0:x0 + pw] += 1
    return heat / cover.clamp(min=1)
