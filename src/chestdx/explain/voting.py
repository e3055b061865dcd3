"""CAM-directed test-time voting (cam-snapmix-cpe-tta-covid-ct.txt, Sec. 3.3).

Each image is classified once whole and once for each of ``k`` masked copies: the image is cut into
a grid of non-overlapping ``cell x cell`` patches (8 x 8 px, a 28 x 28 grid at 224 px; generally
``ceil(H / cell) x ceil(W / cell)``), the CAM of the predicted class is summed per cell, and copy
``i`` (``i = 1..k``) masks the ``i`` cells with the highest sums. A copy *supports* the original
decision when

- the original is positive (``p > 0.5``) and the copy's positive probability is ``>= theta``, or
- the original is negative and the copy's positive probability is ``< 1 - theta``.

If more than half of the ``k`` copies do not support it, the label is flipped. Paper defaults:
``k = 31``, ``theta = 0.2``.

Choices where the paper is silent:

- Masked pixels are set to ``fill`` (0 by default: images are z-scored per image, so 0 is the
  image mean, a neutral grey rather than an extreme value).
- The CAM is that of the originally predicted class (masking what supports the decision).
- Ties between equal cell sums (e.g. an all-zero CAM) are broken by raster order (stable sort).
- More than two classes: a copy supports when its probability of the originally predicted class is
  ``>= theta`` (for two classes this is the paper's rule up to equality at the boundary); a flipped
  image gets the class, other than the original, with the highest mean probability over the
  non-supporting copies. ``VotingResult.probs`` then holds the originally predicted class's
  probability instead of the positive class's.

The model's mode is the caller's: call it on a model in ``eval()`` mode. So is the execution mode
(:mod:`chestdx.engine.precision`): inside :func:`~chestdx.engine.precision.running` the whole image
and every copy go through the network under its autocast and memory format; the CAM is computed in
float32 either way. The copies are the work (k = 31 forwards per image against one), so callers
choose the mode for the copies' batch, not for the input batch
(:func:`chestdx.engine.infer.pass_batch`): one image's 31 copies run in the batch mode.

Cost: the whole images' pass, then ``ceil(B * k / chunk)`` passes over all the copies, made at once
per chunk (one gather of the images, masked in place; no Python loop over copies).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from chestdx.errors import ConfigError
from chestdx.explain.cam import cam as compute_cam
from chestdx.models.base import ChestModel, ModelOutput


@dataclass
class VotingResult:
    """What :func:`cam_voting` returns.

    Attributes:
        label: ``(B,)`` long, the final label (after any flip).
        flipped: ``(B,)`` bool, whether the vote flipped the original label.
        probs: ``(B, k)`` positive-class probability of each masked copy (copy ``i`` masks the
            ``i + 1`` highest-CAM cells), for Figure 2-style plots; for more than two classes the
            probability of the originally predicted class.
        original_label: ``(B,)`` long, the label of the whole image.
        original_prob: ``(B,)`` the whole image's positive-class probability (originally predicted
            class's for more than two classes).
        class_probs: ``(B, k, K)`` all class probabilities of the copies.
        support: ``(B, k)`` bool, which copies support the original label.
        output: the model's :class:`~chestdx.models.ModelOutput` on the whole images (lets a caller
            use their probabilities and features without another pass).
    """

    label: Tensor
    flipped: Tensor
    probs: Tensor
    original_label: Tensor
    original_prob: Tensor
    class_probs: Tensor
    support: Tensor
    output: ModelOutput | None = None


def cell_scores(cam_map: Tensor, cell: int) -> Tensor:
    """Sum a map ``(B, H, W)`` over non-overlapping ``cell x cell`` patches.

    Returns:
        ``(B, ceil(H / cell), ceil(W / cell))``; edge cells that stick out of the image sum what
        lies inside it.
    """
    b, h, w = cam_map.shape
    gh, gw = -(-h // cell), -(-w // cell)
    padded = F.pad(cam_map.float(), (0, gw * cell - w, 0, gh * cell - h))
    return padded.view(b, gh, cell, gw, cell).sum(dim=(2, 4))


def _masked_copies(images: Tensor, rank: Tensor, which: Tensor, counts: Tensor, cell: int, fill: float) -> Tensor:
    """Copies ``n`` of ``images[which[i]]`` with its ``counts[i]`` top-ranked cells set to ``fill``.

    One tensor of copies is made (the gather, in the images' memory format) and masked in place with
    the cell mask spread over each ``cell x cell`` patch (one boolean ``(n, 1, H, W)`` tensor).

    Args:
        images: ``(B, C, H, W)``.
        rank: ``(B, gh, gw)`` position of each cell in the descending CAM order (0 = highest).
        which: ``(n,)`` the image of each copy.
        counts: ``(n,)`` how many cells each copy masks.

    Returns:
        ``(n, C, H, W)``.
    """
    h, w = images.shape[-2:]
    n, (gh, gw) = which.shape[0], rank.shape[1:]
    cells = rank[which] < counts[:, None, None]  # (n, gh, gw)
    mask = cells[:, :, None, :, None].expand(n, gh, cell, gw, cell).reshape(n, 1, gh * cell, gw * cell)
    return images[which].masked_fill_(mask[..., :h, :w], fill)


def binary_votes(p_original: Tensor, p_copies: Tensor, theta: float) -> tuple[Tensor, Tensor]:
    """The paper's supporting rule and flip decision for the binary task.

    Args:
        p_original: ``(B,)`` positive-class probability of the whole image.
        p_copies: ``(B, k)`` positive-class probability of the masked copies.
        theta: certainty threshold.

    Returns:
        ``support (B, k)`` bool and ``flipped (B,)`` bool (more than half of the k copies do not
        support). Used by :func:`cam_voting` and by the k / theta sweep of Figure 3, which re-votes
        on the first k copies of one run with k_max copies.
    """
    is_pos = p_original > 0.5
    support = torch.where(is_pos[:, None], p_copies >= theta, p_copies < 1 - theta)
    flipped = (~support).sum(dim=1) * 2 > p_copies.shape[1]
    return support, flipped


def cam_voting(model: ChestModel, images: Tensor, k: int = 31, theta: float = 0.2, cell: int = 8,
               chunk: int | None = None, positive: int = 1, fill: float = 0.0) -> VotingResult:
    """CAM-directed test-time voting over ``k`` masked copies of each image.

    Args:
        model: a :class:`~chestdx.models.ChestModel` in eval mode.
        images: ``(B, C, H, W)``.
        k: number of masked copies (paper: 31); at most the number of grid cells.
        theta: certainty threshold of a supporting vote (paper: 0.2).
        cell: patch side in pixels (paper: 8, a 28 x 28 grid at 224 px).
        chunk: how many copies go through the network at once (bounds memory). Default: 64 on a GPU,
            8 on a CPU, where smaller batches of 224 px copies are cheaper per copy (the activations
            stay in cache): on the 2-core CPU of issue 19 in channels-last + bf16, seconds per image
            at chunks 8 / 16 / 32: ResNet-50 1.61 / 1.68 / 1.83 of CPU time on one core, 1.69 / 1.79 /
            2.57 on two cores at load 4; EfficientNet-Lite0 0.40 / 0.46 / 0.58 (0.61 at 4). A chunk
            of 32 224 px copies needs about 0.3 GB of activations for ResNet-50 in fp32.
        positive: index of the positive class (binary task).
        fill: value of masked pixels (0 = the image mean after z-scoring).

    Returns:
        :class:`VotingResult` with ``label (B,)``, ``flipped (B,)`` and ``probs (B, k)``.

    Raises:
        ConfigError: bad ``k``, ``theta``, ``cell``, ``chunk`` or ``positive``.
    """
    if chunk is None:
        chunk = 64 if images.is_cuda else 8
    if cell < 1 or chunk < 1:
        raise ConfigError(f"cam_voting: cell and chunk must be >= 1, got cell={cell}, chunk={chunk}")
    if not 0.0 <= theta <= 1.0:
        raise ConfigError(f"cam_voting: theta must lie in [0, 1], got {theta}")
    h, w = images.shape[-2:]
    n_cells = (-(-h // cell)) * (-(-w // cell))
    if not 1 <= k <= n_cells:
        raise ConfigError(f"cam_voting: k must lie in [1, {n_cells}] (grid cells of {cell} px in a "
                          f"{h}x{w} image), got {k}")

    with torch.no_grad():
        out = model(images)
        probs0 = out.probs
    num_classes = probs0.shape[1]
    if num_classes == 2 and positive not in (0, 1):
        raise ConfigError(f"cam_voting: positive must be 0 or 1 for two classes, got {positive}")
    binary = num_classes == 2
    if binary:
        p_pos0 = probs0[:, positive]
        is_pos = p_pos0 > 0.5
        orig = torch.where(is_pos, torch.full_like(is_pos, positive, dtype=torch.long),
                           torch.full_like(is_pos, 1 - positive, dtype=torch.long))
    else:
        orig = probs0.argmax(dim=1)

    cam_map = compute_cam(model, images, target=orig, out=out)  # (B, H, W)
    scores = cell_scores(cam_map, cell)  # (B, gh, gw)
    b, gh, gw = scores.shape
    order = torch.argsort(scores.flatten(1), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(gh * gw, device=order.device).expand(b, -1).contiguous())
    rank = rank.view(b, gh, gw)

    # all B * k copies, flattened as (image j, count i), in chunks
    img_idx = torch.arange(b, device=images.device).repeat_interleave(k)
    counts = torch.arange(1, k + 1, device=images.device).repeat(b)
    copy_probs = []
    with torch.no_grad():
        for s in range(0, b * k, chunk):
            copies = _masked_copies(images, rank, img_idx[s:s + chunk], counts[s:s + chunk], cell, fill)
            copy_probs.append(model(copies).probs)
    class_probs = torch.cat(copy_probs).view(b, k, num_classes)

    if binary:
        p = class_probs[..., positive]
        orig_p = p_pos0
        support, flipped = binary_votes(orig_p, p, theta)
    else:
        p = class_probs.gather(2, orig[:, None, None].expand(b, k, 1))[..., 0]
        support = p >= theta
        orig_p = probs0.gather(1, orig[:, None])[:, 0]
        flipped = (~support).sum(dim=1) * 2 > k
    if binary:
        other = 1 - orig
    else:
        against = (~support).float()[..., None]
        mean_against = (class_probs * against).sum(1) / against.sum(1).clamp(min=1)
        mean_against = mean_against.scatter(1, orig[:, None], -1.0)
        other = mean_against.argmax(dim=1)
    label = torch.where(flipped, other, orig)
    return VotingResult(label=label, flipped=flipped, probs=p, original_label=orig,
                        original_prob=orig_p, class_probs=class_probs, support=support, output=out)


__all__ = ["VotingResult", "binary_votes", "cam_voting", "cell_scores"]
