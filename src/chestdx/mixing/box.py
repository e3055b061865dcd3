"""SnapMix (Huang et al., AAAI 2021), as used in cam-snapmix-cpe-tta-covid-ct.txt, Sec. 3.1.

A box of the partner image ``b`` is resized (bilinear) into a box of image ``a``; the label is

    y = (1 - rho_a) * y_a + rho_b * y_b,

where ``rho_a`` is the share of image a's CAM mass inside a's box (the part pasted over) and
``rho_b`` the share of b's CAM mass inside b's box (the part pasted in), each CAM normalised by its
own total. The weights need not sum to 1 (SnapMix's point: the label follows the semantic content,
not the area); :func:`chestdx.objectives.soft_cross_entropy` takes such targets as they are.

Choices (following the SnapMix reference code where the paper is silent):

- Areas: ``lam ~ Beta(alpha, alpha)`` (``alpha = 1``, SnapMix's default, which the paper keeps) is
  the area ratio of a box with the image's aspect ratio, at a uniform random centre, clipped to the
  image; a and b get their own ``lam`` and centre. As in the reference, one box pair serves the
  whole batch and the partner is a random permutation of the batch.
- Probability: the mixer mixes a whole batch with probability ``prob`` per batch (SnapMix's
  reference default 1.0, which chestdx keeps as the default: the paper says the cross-entropy is
  used "on the original samples or on virtual SnapMix samples", read here as ``prob < 1`` leaving
  some batches unmixed; set ``mixing.prob`` in the recipe).
- Same-label pairs (equal target rows, including an image paired with itself) keep their label with
  weight 1: the mixed image holds that class only. (The reference code adds the two weights
  instead, which can give the class a total weight up to 2.)
- An all-zero CAM (ReLU'd map with no positive evidence) has no mass to share: that image's weight
  falls back to its box's area ratio (CutMix's rule).
- A box clipped to zero area leaves the batch unmixed.
- CAMs are ``ReLU``-ed maps of each image's own label (:func:`chestdx.explain.cam.cam`); the
  reference subtracts each map's minimum instead. They are computed on the unmixed batch with the
  model in its current (training) mode, without gradients to the parameters, as the reference
  does; this extra forward pass also updates batch-norm running statistics once more.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chestdx.errors import ConfigError
from chestdx.mixing.registry import MIXERS
from chestdx.models.base import ChestModel

Box = tuple[int, int, int, int]  # (y1, x1, y2, x2), half-open


def _numpy_rng(rng: np.random.Generator | torch.Generator | None) -> np.random.Generator:
    """A numpy Generator: the given one, one seeded from a torch Generator, or from torch's global RNG."""
    if isinstance(rng, np.random.Generator):
        return rng
    seed = int(torch.randint(0, 2**62, (1,), generator=rng).item())
    return np.random.default_rng(seed)


def random_box(height: int, width: int, lam: float, rng: np.random.Generator) -> Box:
    """A box of area ratio ``lam`` (before clipping) at a uniform random centre, clipped to the image.

    Returns:
        ``(y1, x1, y2, x2)``, half-open pixel bounds; may be empty after clipping.
    """
    cut_h, cut_w = int(height * np.sqrt(lam)), int(width * np.sqrt(lam))
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y1, x1 = cy - cut_h // 2, cx - cut_w // 2
    y2, x2 = y1 + cut_h, x1 + cut_w
    return (int(np.clip(y1, 0, height)), int(np.clip(x1, 0, width)),
            int(np.clip(y2, 0, height)), int(np.clip(x2, 0, width)))


def _area(box: Box) -> int:
    return max(box[2] - box[0], 0) * max(box[3] - box[1], 0)


def _box_share(cams: Tensor, box: Box) -> Tensor:
    y1, x1, y2, x2 = box
    h, w = cams.shape[-2:]
    total = cams.float().flatten(1).sum(dim=1)
    inside = cams[:, y1:y2, x1:x2].float().flatten(1).sum(dim=1)
    area_ratio = torch.full_like(total, _area(box) / float(h * w))
    ok = torch.isfinite(total) & (total > 0)
    return torch.where(ok, inside / total.clamp(min=1e-12), area_ratio)


def snapmix_weights(cam_a: Tensor, cam_b: Tensor, box_a: Box, box_b: Box) -> tuple[Tensor, Tensor]:
    """SnapMix's semantic label weights.

    Args:
        cam_a: ``(B, H, W)`` non-negative CAMs of the images pasted into.
        cam_b: ``(B, H, W)`` CAMs of their partners (already permuted: row i is i's partner).
        box_a: ``(y1, x1, y2, x2)`` the box of a that is covered.
        box_b: the box of b that is pasted.

    Returns:
        ``rho_a (B,)``: a's CAM mass inside ``box_a`` over a's whole CAM mass;
        ``rho_b (B,)``: the same for b and ``box_b``. An all-zero CAM gives the box's area ratio.
        The label is then ``(1 - rho_a) y_a + rho_b y_b``.
    """
    if cam_a.shape != cam_b.shape or cam_a.ndim != 3:
        raise ValueError(f"snapmix_weights: cams must both be (B, H, W); got {tuple(cam_a.shape)} "
                         f"and {tuple(cam_b.shape)}")
    return _box_share(cam_a, box_a), _box_share(cam_b, box_b)


def snapmix(images: Tensor, target: Tensor, cams: Tensor,
            rng: np.random.Generator | torch.Generator | None = None, alpha: float = 1.0, *,
            num_classes: int | None = None, perm: Tensor | None = None,
            boxes: tuple[Box, Box] | None = None) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Mix a batch with SnapMix (always; the per-batch probability is the mixer's business).

    Args:
        images: ``(B, C, H, W)``.
        target: ``(B, K)`` soft targets, or ``(B,)`` integer labels (then ``num_classes`` is needed).
        cams: ``(B, H, W)`` non-negative CAMs of each image's own label, at image resolution.
        rng: numpy or torch generator for the permutation and the boxes (None: torch's global RNG).
        alpha: Beta parameter of the box area ratios.
        num_classes: K, when ``target`` holds labels.
        perm: ``(B,)`` partner of each image (default: a random permutation).
        boxes: ``(box_a, box_b)`` as ``(y1, x1, y2, x2)`` (default: drawn as described above).

    Returns:
        mixed images ``(B, C, H, W)`` (a new tensor), new targets ``(B, K)``, and an info dict:
        ``perm (B,)``, ``box_a``, ``box_b``, ``lam_a``, ``lam_b`` (drawn area ratios or None),
        ``rho_a (B,)``, ``rho_b (B,)``, ``same (B,)`` bool, ``mixed`` bool.

    Raises:
        ConfigError: ``alpha <= 0``.
        ValueError: shapes that do not fit together.
    """
    if alpha <= 0:
        raise ConfigError(f"snapmix: alpha must be > 0, got {alpha}")
    if images.ndim != 4:
        raise ValueError(f"snapmix: images must be (B, C, H, W), got {tuple(images.shape)}")
    b, _, h, w = images.shape
    if target.ndim == 1:
        if num_classes is None:
            raise ValueError("snapmix: integer labels need num_classes")
        target = F.one_hot(target.long(), num_classes).to(images.dtype if images.is_floating_point()
                                                            else torch.float32)
    if target.shape[0] != b or cams.shape != (b, h, w):
        raise ValueError(f"snapmix: target {tuple(target.shape)} and cams {tuple(cams.shape)} do not fit "
                         f"images {tuple(images.shape)}")
    gen = _numpy_rng(rng)
    if perm is None:
        perm = torch.as_tensor(gen.permutation(b), device=images.device, dtype=torch.long)
    perm = perm.to(images.device).long()
    lam_a = lam_b = None
    if boxes is None:
        lam_a, lam_b = float(gen.beta(alpha, alpha)), float(gen.beta(alpha, alpha))
        box_a, box_b = random_box(h, w, lam_a, gen), random_box(h, w, lam_b, gen)
    else:
        box_a, box_b = boxes
    info: dict[str, Any] = {"perm": perm, "box_a": box_a, "box_b": box_b, "lam_a": lam_a,
                            "lam_b": lam_b}
    target = target.float()
    y_b = target[perm]
    same = (target == y_b).all(dim=1)
    info["same"] = same
    if _area(box_a) == 0 or _area(box_b) == 0:
        zeros = torch.zeros(b, device=images.device)
        info.update(rho_a=zeros, rho_b=zeros.clone(), mixed=False)
        return images.clone(), target.clone(), info

    ay1, ax1, ay2, ax2 = box_a
    by1, bx1, by2, bx2 = box_b
    patch = images[perm][:, :, by1:by2, bx1:bx2]
    if patch.shape[-2:] != (ay2 - ay1, ax2 - ax1):
        patch = F.interpolate(patch.float(), size=(ay2 - ay1, ax2 - ax1), mode="bilinear",
                              align_corners=True).to(images.dtype)
    mixed = images.clone()
    mixed[:, :, ay1:ay2, ax1:ax2] = patch

    rho_a, rho_b = snapmix_weights(cams, cams[perm], box_a, box_b)
    new_target = (1 - rho_a)[:, None] * target + rho_b[:, None] * y_b
    new_target = torch.where(same[:, None], target, new_target)
    info.update(rho_a=rho_a, rho_b=rho_b, mixed=True)
    return mixed, new_target, info


@MIXERS.register("snapmix")
class SnapMix(nn.Module):
    """The ``snapmix`` mixer: ``mixer(model, batch) -> batch``.

    With probability ``prob`` per batch it computes each image's CAM of its own label on the unmixed
    batch (:func:`chestdx.explain.cam.cam`) and applies :func:`snapmix`; otherwise the batch passes
    unchanged. The returned batch has the mixed ``image``, the soft ``target (B, K)``, ``label``
    unchanged (the first image's), and ``mix_perm (B,)``, ``mix_rho_a (B,)``, ``mix_rho_b (B,)``.

    Args:
        prob: probability of mixing a batch (SnapMix reference default 1.0).
        num_classes: K.
        alpha: Beta parameter of the box areas (SnapMix default 1.0).
        seed: seeds the mixer's own generator; None draws from torch's global RNG at each call (so
            ``seed_everything`` makes runs repeatable).
    """

    def __init__(self, prob: float = 1.0, num_classes: int = 2, alpha: float = 1.0,
                 seed: int | None = None):
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ConfigError(f"snapmix: prob must lie in [0, 1], got {prob}")
        if alpha <= 0:
            raise ConfigError(f"snapmix: alpha must be > 0, got {alpha}")
        self.prob = float(prob)
        self.num_classes = int(num_classes)
        self.alpha = float(alpha)
        self._rng = np.random.default_rng(seed) if seed is not None else None

    def forward(self, model: ChestModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        from chestdx.explain.cam import cam

        batch = dict(batch)
        images, labels = batch["image"], batch["label"]
        if "target" not in batch:
            batch["target"] = F.one_hot(labels.long(), self.num_classes).float()
        gen = self._rng if self._rng is not None else _numpy_rng(None)
        if self.prob <= 0.0 or gen.random() >= self.prob:
            return batch
        cams = cam(model, images, target=labels)
        mixed, target, info = snapmix(images, batch["target"], cams, gen, self.alpha)
        batch.update(image=mixed, target=target, mix_perm=info["perm"], mix_rho_a=info["rho_a"],
                     mix_rho_b=info["rho_b"])
        return batch

    def extra_repr(self) -> str:
        return f"prob={self.prob}, alpha={self.alpha}"


__all__ = ["SnapMix", "random_box", "snapmix", "snapmix_weights"]
