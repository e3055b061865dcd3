"""Soft distance regularisation of MAG-SD (mag-sd-multiscale-attention-cxr.txt, Sec. 3.4, Algorithm 1).

For a primary prediction ``P(I)`` on the original image and auxiliary predictions ``p(x)`` on its
attention-guided views ``x`` (:mod:`chestdx.mixing.attention_guided`)::

    L_CE  = CE(P(I), G)                                 cross-entropy on the primary logits
    P'(I) = softmax(P(I))   where softmax(P(I))[y] > theta (confidence for the true class y)
          = G               otherwise (one-hot ground truth)
    d'(x) = |P'(I) - softmax(p(x))|
    L_reg = L_CE + mean over the views x of d'(x)

Readings chosen where the paper is open (following the authors' code, StonHamA/MAG-SD,
``core/base.py: gen_refine_loss``, where it exists):

- ``|.|`` is the mean absolute difference over classes and images (``torch.nn.L1Loss`` in the
  reference), for each view; the views are then averaged (the paper: "mean predicting variance";
  the reference sums the three views' terms, i.e. 3 times this).
- ``P'`` is a constant (detached, as in the reference): the regulariser pulls the auxiliary
  predictions towards the reference, not the primary towards the views.
- "Confidence" is the primary probability of the ground-truth class, ``theta = 0.7``; with
  ``theta >= 0.5`` this implies that the primary prediction is correct (the reference's extra
  ``argmax == y`` test). The reference replaces G by a smoothed vector (0.01 off target); chestdx
  uses the paper's one-hot G (a ``smoothing`` parameter gives the reference's behaviour).
- Mixed (soft) targets: ``y`` is the target's argmax and ``G`` the target row itself.

The **L2 alternative** (Table 8: "L2 compared all predictions directly with ground truth") is
``distance="l2"``: ``L = L_CE + mean over views of mean_k (softmax(p(x))_k - G_k)^2``, with no
threshold (``torch.nn.MSELoss``, which the reference also sets up).

All inputs are logits; the softmaxes are taken here.

``class_weights`` (not in the paper) weights the cross-entropy term by class, as the ``ce``
objective does (``balanced`` = inverse class frequency of the training set), for imbalanced sets
such as the ieee8023 subset (132 / 47 / 19 images); the distance term is left unweighted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chestdx.errors import ConfigError
from chestdx.objectives.cross_entropy import resolve_class_weights, soft_cross_entropy
from chestdx.objectives.registry import OBJECTIVES


def _ground_truth(target: Tensor, b: int, k: int, smoothing: float) -> tuple[Tensor, Tensor]:
    if target.ndim == 1:
        y = target.long()
        g = F.one_hot(y, k).float()
    else:
        g = target.float()
        y = g.argmax(dim=1)
    if g.shape != (b, k):
        raise ValueError(f"soft_distance: target {tuple(target.shape)} does not fit {b} images and {k} classes")
    if smoothing:
        g = g * (1.0 - smoothing * k) + smoothing
    return y, g


def soft_distance(primary_logits: Tensor, aux_logits: Tensor, target: Tensor, threshold: float = 0.7,
                  distance: str = "soft", smoothing: float = 0.0, return_parts: bool = False,
                  class_weight: Tensor | None = None) -> Any:
    """MAG-SD's loss (Algorithm 1): CE on the primary logits plus the mean soft distance of the views.

    Args:
        primary_logits: ``(B, K)`` logits on the original images.
        aux_logits: ``(V, B, K)`` logits on V augmented views (``(B, K)`` = one view; ``(0, B, K)``
            = none, leaving plain cross-entropy).
        target: ``(B,)`` integer labels or ``(B, K)`` one-hot / soft targets.
        threshold: theta, the confidence above which the primary prediction is the reference.
        distance: ``soft`` (Algorithm 1) or ``l2`` (Table 8's alternative).
        smoothing: off-target value of the ground-truth reference G of the distance term (0 =
            one-hot, the paper; 0.01 = the reference code). The cross-entropy target is never
            smoothed (integer or ``(B, K)`` targets alike).
        return_parts: also return ``(ce, distance)``.
        class_weight: ``(K,)`` weights of the cross-entropy term (weighted mean over the images);
            None = unweighted, the paper.

    Returns:
        scalar loss (and the two parts when ``return_parts``).

    Raises:
        ValueError: shapes that do not fit; ConfigError: unknown ``distance``.
    """
    if distance not in ("soft", "l2"):
        raise ConfigError(f"soft_distance: distance must be soft or l2, got {distance!r}")
    if primary_logits.ndim != 2:
        raise ValueError(f"soft_distance: primary_logits must be (B, K), got {tuple(primary_logits.shape)}")
    b, k = primary_logits.shape
    if aux_logits.ndim == 2:
        aux_logits = aux_logits[None]
    if aux_logits.ndim != 3 or tuple(aux_logits.shape[1:]) != (b, k):
        raise ValueError(f"soft_distance: aux_logits must be (V, B, K) = (V, {b}, {k}), got {tuple(aux_logits.shape)}")
    target = target.to(primary_logits.device)
    y, g = _ground_truth(target, b, k, smoothing)
    # the cross-entropy reads the target as given (integer -> one-hot, (B, K) -> itself): ``smoothing``
    # only changes the distance term's reference G, whatever form the target has
    ce = soft_cross_entropy(primary_logits, target.float() if target.ndim == 2 else F.one_hot(y, k).float(),
                            class_weight)
    if aux_logits.shape[0] == 0:
        d = primary_logits.new_zeros(())
    else:
        p_aux = F.softmax(aux_logits.float(), dim=-1)  # (V, B, K)
        if distance == "soft":
            p_primary = F.softmax(primary_logits.detach().float(), dim=-1)
            confident = p_primary.gather(1, y[:, None])[:, 0] > threshold
            reference = torch.where(confident[:, None], p_primary, g)
            d = (reference[None] - p_aux).abs().mean(dim=(1, 2)).mean()
        else:
            d = ((p_aux - g[None]) ** 2).mean(dim=(1, 2)).mean()
    loss = ce + d
    return (loss, ce, d) if return_parts else loss


@OBJECTIVES.register("soft_distance")
class SoftDistance(nn.Module):
    """The ``soft_distance`` objective on a batch laid out by the ``attention_guided`` mixer.

    The batch holds ``num_views`` blocks of B images (originals first, see
    :mod:`chestdx.mixing.attention_guided`); the first block's logits are the primary prediction,
    the others the auxiliary ones. Without the mixer (``num_views`` absent or 1) it is plain
    cross-entropy. This term already contains the cross-entropy of Algorithm 1: a MAG-SD recipe
    lists it alone.

    Args:
        num_classes: K.
        threshold: theta (0.7).
        distance: ``soft`` or ``l2``.
        smoothing: see :func:`soft_distance`.
        class_weights: ``None`` (the paper), ``balanced`` or K numbers, for the cross-entropy term.
    """

    def __init__(self, num_classes: int, class_counts: Sequence[int] | None = None, threshold: float = 0.7,
                 distance: str = "soft", smoothing: float = 0.0,
                 class_weights: str | Sequence[float] | None = None):
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"soft_distance: threshold must lie in [0, 1], got {threshold}")
        if distance not in ("soft", "l2"):
            raise ConfigError(f"soft_distance: distance must be soft or l2, got {distance!r}")
        if not 0.0 <= smoothing * num_classes < 1.0:
            raise ConfigError(f"soft_distance: smoothing must lie in [0, 1/K), got {smoothing}")
        self.num_classes = num_classes
        self.threshold, self.distance, self.smoothing = float(threshold), distance, float(smoothing)
        w = resolve_class_weights(num_classes, class_counts, class_weights)
        self.register_buffer("weight", w if w is not None else torch.ones(0), persistent=False)
        self._weighted = w is not None

    def forward(self, model: nn.Module, out: Any, batch: dict[str, Tensor]) -> Tensor:
        logits = out.logits
        n = int(batch["num_views"]) if "num_views" in batch else 1
        total = logits.shape[0]
        if n < 1 or total % n:
            raise ValueError(f"soft_distance: {total} logits do not split into {n} views")
        b = total // n
        aux = logits[b:].reshape(n - 1, b, logits.shape[1])
        weight: Tensor | None = self.weight if self._weighted else None  # type: ignore[assignment]
        return soft_distance(logits[:b], aux, batch["target"][:b], self.threshold, self.distance,  # type: ignore[no-any-return]
                             self.smoothing, class_weight=weight)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, distance={self.distance}"


__all__ = ["SoftDistance", "soft_distance"]
