"""Supervised contrastive loss (SupCon, Khosla et al. 2020).

Two uses:

- the "SnapMix + Contrastive" ablation of cam-snapmix-cpe-tta-covid-ct.txt, which adds "the
  contrastive loss of [37]" (Wang, Liu, Dou, "Contrastive cross-site learning with redesigned net
  for COVID-19 CT classification", IEEE JBHI 2020), a loss on the latent space that pulls same-class
  samples together across the two sites. chestdx reads it as SupCon on the (projected, L2-normalised)
  pooled embedding with positives = same label from any site (same-site pairs included; the sites
  of one batch are mixed by the joint sampler), negatives = the other class;
- Eq. 1-2 of cmc-cov19d-3d-contrastive-mixup.txt, which :func:`supcon_loss` implements exactly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chestdx.errors import ConfigError
from chestdx.objectives.registry import OBJECTIVES


def supcon_loss(z: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss (cmc-cov19d Eq. 1-2, SupCon's ``L_out``).

    For each anchor ``i`` with positives ``P(i) = {j != i : y_j = y_i}``::

        L_i = -1/|P(i)| * sum_{j in P(i)} log( exp(z_i.z_j / t) / sum_{k != i} exp(z_i.z_k / t) )

    and the loss is the mean of ``L_i`` over the anchors. With two views of N samples (``2N`` rows)
    ``|P(i)| = 2 N_{y_i} - 1`` and every anchor has a positive, so this is exactly Eq. 1-2
    (``1/2N * sum_i L_i``). Anchors without any positive (a class seen once in the batch) are
    skipped; a batch with none at all gives 0 (still attached to the graph).

    Args:
        z: ``(N, d)`` embeddings, expected L2-normalised (the inner product is the similarity; they
            are used as given).
        labels: ``(N,)`` integer labels.
        temperature: ``t > 0``.

    Returns:
        scalar (float32).

    Raises:
        ValueError: bad shapes or temperature.
    """
    if z.ndim != 2 or labels.ndim != 1 or labels.shape[0] != z.shape[0]:
        raise ValueError(f"supcon_loss: z must be (N, d) and labels (N,); got {tuple(z.shape)} and "
                         f"{tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"supcon_loss: temperature must be > 0, got {temperature}")
    n = z.shape[0]
    zf = z.float()
    sim = zf @ zf.T / temperature
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    log_den = torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    log_prob = sim - log_den
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(dim=1)
    has = n_pos > 0
    if not bool(has.any()):
        return zf.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(dim=1)[has] / n_pos[has]
    return per_anchor.mean()


@OBJECTIVES.register("supcon")
class SupCon(nn.Module):
    """The ``supcon`` objective: :func:`supcon_loss` on ``out.embedding`` with ``batch["label"]``.

    An optional projection MLP (``Linear(in_dim, hidden_dim) - ReLU - Linear(hidden_dim, proj_dim)``,
    SupCon / SimCLR style, 512 -> 128 by default; its parameters are trained with the rest) maps the pooled embedding before L2
    normalisation; ``projection=False`` normalises the embedding itself. ``in_dim=None`` infers the
    input width at the first batch (lazy layers; give it explicitly to build the optimiser's state
    or a DDP wrapper before the first step).

    For a mixed batch the label is ``batch["label"]``, the first image's label (SnapMix keeps it);
    the contrastive pull then treats a mixed image as its first image's class.

    ``normalize_input=True`` L2-normalises the embedding before the projection too (cmc-cov19d Sec.
    3.2: "the representations are normalized to the unit hypersphere", then projected and normalised
    again).
    """

    def __init__(self, num_classes: int, temperature: float = 0.1, projection: bool = True,
                 in_dim: int | None = None, hidden_dim: int = 512, proj_dim: int = 128,
                 normalize_input: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"supcon: temperature must be > 0, got {temperature}")
        self.num_classes = num_classes
        self.temperature = float(temperature)
        self.normalize_input = bool(normalize_input)
        self.head: nn.Module | None = None
        if projection:
            first = nn.Linear(in_dim, hidden_dim) if in_dim else nn.LazyLinear(hidden_dim)
            self.head = nn.Sequential(first, nn.ReLU(inplace=True), nn.Linear(hidden_dim, proj_dim))

    def materialize_for(self, model: nn.Module) -> None:
        """Give a lazy projection head its input width, so that the optimiser and a DDP wrapper see
        real parameters from the start: ``model.embedding_dim`` where the model's pooled embedding
        is not its feature map's channels (ResNet50-ATT2: layer3 + layer4 = 1536 / 3072; MA-Net:
        ``M * C``), else ``model.feature_dim`` (a pooled feature map)."""
        from torch.nn.parameter import is_lazy

        dim = getattr(model, "embedding_dim", None) or getattr(model, "feature_dim", None)
        if self.head is None or not dim or not any(is_lazy(p) for p in self.head.parameters()):
            return
        with torch.no_grad():
            self.head(torch.zeros(2, int(dim)))

    def forward(self, model: nn.Module, out: Any, batch: dict[str, Tensor]) -> Tensor:
        emb = out.embedding
        if emb is None:
            raise ValueError("the supcon objective needs a model whose output has a pooled embedding")
        emb = emb.flatten(1).float()
        if self.normalize_input:
            emb = F.normalize(emb, dim=1)
        if self.head is not None:
            emb = self.head(emb)
        return supcon_loss(F.normalize(emb, dim=1), batch["label"], self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


__all__ = ["SupCon", "supcon_loss"]
