"""CMC-COV19D's mixup loss (Eq. 5-6) and learned uncertainty weighting (Eq. 7).

cmc-cov19d-3d-contrastive-mixup.txt, Sec. 3.3. The batch the objectives see holds the ``2N``
augmented views of ``N`` volumes (made by the ``cmc_views`` mixer, :mod:`chestdx.mixing.views`):

- ``ce`` (Eq. 3-4): cross-entropy on the logits of the ``2N`` views (the existing ``ce`` objective);
- ``supcon`` (Eq. 1-2): :func:`~chestdx.objectives.supcon_loss` on the projected views;
- ``mixup_ce`` (Eq. 5-6): :class:`MixupCE`; the mixup loss is **added to** the classification loss,
  not a replacement for it (the paper departs from the original mixup there);
- ``uncertainty`` (Eq. 7): :class:`UncertaintyWeighted` groups the terms and learns their weights,
  ``L = 1/sigma_1 L_con + 1/sigma_2 (L_clf + L_mix) + log sigma_1 + log sigma_2``.

Readings chosen where the paper is open:

- Eq. 5 mixes the augmented inputs with one ``lambda`` per batch and a random partner for every view
  (``p`` and ``q`` are a random permutation of the ``2N`` views); ``lambda ~ Beta(alpha, alpha)`` with
  ``alpha = 1`` (the paper gives no distribution; mixup's usual choice). Fig. 2 instead shows mixed
  *representations*; ``level="representation"`` mixes the encoder's feature maps (no second pass of
  the encoder, much cheaper on 3D volumes) and runs only the classifier on them.
- Eq. 7 uses ``1/sigma`` (not Kendall et al.'s ``1/(2 sigma^2)``); ``sigma = exp(s)`` with ``s = log
  sigma`` learned, which keeps sigma positive, and ``log sigma = s``. A group with one term (e.g.
  Model2, with no contrastive loss) still gets its own sigma.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from chestdx.errors import ConfigError
from chestdx.objectives.cross_entropy import soft_cross_entropy
from chestdx.objectives.registry import OBJECTIVES, build_objective
from chestdx.registry import did_you_mean

__all__ = ["MixupCE", "UncertaintyWeighted", "mixup_loss", "mixup_targets", "uncertainty_weighting"]


def mixup_targets(target: Tensor, perm: Tensor, lam: float | Tensor) -> Tensor:
    """Eq. 5 on labels: ``lam * y_i + (1 - lam) * y_perm[i]``; ``target (M, K)`` -> ``(M, K)``."""
    return lam * target + (1.0 - lam) * target[perm]


def mixup_loss(mixed_logits: Tensor, target: Tensor, perm: Tensor, lam: float | Tensor) -> Tensor:
    """Eq. 6: mean cross-entropy of the mixed samples against their mixed labels.

    Args:
        mixed_logits: ``(2N, K)`` logits of the mixed views (Eq. 5's ``x^mix``).
        target: ``(2N, K)`` one-hot (or soft) labels of the unmixed views.
        perm: ``(2N,)`` partner index of every view (``p`` / ``q`` of Eq. 5).
        lam: the mixing weight ``lambda``.

    Returns:
        scalar ``1/N sum_i (1/2 CE(x_{2i-1}^mix) + 1/2 CE(x_{2i}^mix))`` = the mean over ``2N``.
    """
    return soft_cross_entropy(mixed_logits, mixup_targets(target.float(), perm, lam))


def uncertainty_weighting(losses: Tensor, log_sigma: Tensor) -> Tensor:
    """Eq. 7: ``sum_g exp(-s_g) * L_g + s_g`` with ``s_g = log sigma_g``.

    Args:
        losses: ``(G,)`` group losses (``L_con`` and ``L_clf + L_mix`` in the paper).
        log_sigma: ``(G,)`` learned ``log sigma``.

    Returns:
        scalar. Its gradient with respect to ``s_g`` is ``1 - L_g / sigma_g``: negative (sigma grows,
        the weight of that loss falls) while the loss exceeds sigma, positive below.
    """
    if losses.shape != log_sigma.shape:
        raise ValueError(f"uncertainty_weighting: {tuple(losses.shape)} losses for {tuple(log_sigma.shape)} sigmas")
    return (torch.exp(-log_sigma) * losses + log_sigma).sum()


@OBJECTIVES.register("mixup_ce")
class MixupCE(nn.Module):
    """The ``mixup_ce`` objective (Eq. 5-6) on the views of a batch.

    ``batch["image"]`` ``(M, C, D, H, W)`` (or 2D) and ``batch["target"]`` ``(M, K)``. ``lambda`` and
    the partners are drawn from torch's generator unless the batch carries ``mix_lambda`` and
    ``mix_perm`` (tests, reproducing a step).

    Args:
        alpha: ``lambda ~ Beta(alpha, alpha)``.
        level: ``input`` (Eq. 5: mix the views, one more forward pass) or ``representation`` (Fig. 2:
            mix the feature maps, classifier only).
    """

    def __init__(self, num_classes: int, alpha: float = 1.0, level: str = "input"):
        super().__init__()
        if alpha <= 0:
            raise ConfigError(f"mixup_ce: alpha must be > 0, got {alpha}")
        if level not in ("input", "representation"):
            raise ConfigError(f"mixup_ce: level must be 'input' or 'representation', got {level!r}")
        self.num_classes = num_classes
        self.alpha = float(alpha)
        self.level = level

    def draw(self, m: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``lambda`` (0-d) and partners ``(m,)``."""
        beta = torch.distributions.Beta(torch.tensor(self.alpha), torch.tensor(self.alpha))
        lam = beta.sample().to(device)
        return lam, torch.randperm(m, device=device)

    def forward(self, model: nn.Module, out: Any, batch: Mapping[str, Tensor]) -> Tensor:
        target = batch["target"].float()
        m = target.shape[0]
        if "mix_lambda" in batch and "mix_perm" in batch:
            lam, perm = batch["mix_lambda"].to(target), batch["mix_perm"].long()
        else:
            lam, perm = self.draw(m, target.device)
        if self.level == "input":
            x = batch["image"]
            mixed = lam.to(x.dtype) * x + (1.0 - lam.to(x.dtype)) * x[perm]
            logits = model(mixed).logits
        else:
            feats = out.features
            if feats is None:
                raise ValueError("mixup_ce level=representation needs a model output with features")
            mixed_f = lam.to(feats.dtype) * feats + (1.0 - lam.to(feats.dtype)) * feats[perm]
            logits, _ = model.forward_head(mixed_f)  # type: ignore[operator]
        return mixup_loss(logits, target, perm, lam)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, level={self.level}"


ENTRY_KEYS = ("name", "weight", "params")
"""The keys of one objective entry in an ``uncertainty`` group (as in a recipe's ``objectives``)."""


def group_problems(groups: Any) -> list[str]:
    """What is wrong with the shape of an ``uncertainty`` objective's ``groups``: a non-empty list of
    non-empty lists of entries ``{name, weight, params}``, none of them ``uncertainty`` (``[]``: nothing;
    entry names and params are checked by :func:`objective_problems`)."""
    if not isinstance(groups, (list, tuple)) or not groups or \
            any(not isinstance(g, (list, tuple)) or not g for g in groups):
        return ["'groups' must be a non-empty list of non-empty lists of objectives"]
    found = []
    for gi, g in enumerate(groups):
        for j, entry in enumerate(g):
            at = f"groups[{gi}][{j}]"
            if not isinstance(entry, Mapping) or "name" not in entry:
                found.append(f"{at}: every group entry needs a 'name'; got {entry!r}")
                continue
            for k in sorted(set(entry) - set(ENTRY_KEYS), key=str):
                found.append(f"{at}: unknown key '{k}'{did_you_mean(str(k), ENTRY_KEYS)} (an entry has "
                             f"{', '.join(ENTRY_KEYS)})")
            if entry["name"] == "uncertainty":
                found.append(f"{at}: groups cannot nest another 'uncertainty'")
            if not isinstance(entry.get("params") or {}, Mapping):
                found.append(f"{at}.params: must be a mapping, got {entry['params']!r}")
    return found


def objective_problems(name: str, params: Mapping[str, Any] | None, where: str) -> list[tuple[str | None, str]]:
    """Every problem of one objective entry before anything is built: its name and ``params`` keys
    against :data:`OBJECTIVES`, and for ``uncertainty`` the shape of its groups and each group entry's
    name and params. ``(params key at fault or None for the name, message)`` pairs, as
    :meth:`chestdx.registry.Registry.problems`."""
    found = OBJECTIVES.problems(name, params, where)
    if found or name != "uncertainty":
        return found
    groups = (params or {})["groups"]
    shape = group_problems(groups)
    if shape:
        return [("groups", f"{where}.params.{p}") for p in shape]
    for gi, g in enumerate(groups):
        for j, entry in enumerate(g):
            found += [("groups", msg) for _, msg in OBJECTIVES.problems(
                entry["name"], entry.get("params") or {}, f"{where}.params.groups[{gi}][{j}]")]
    return found


@OBJECTIVES.register("uncertainty")
class UncertaintyWeighted(nn.Module):
    """The ``uncertainty`` objective (Eq. 7): groups of objectives with learned weights.

    ``groups`` is a list of groups, each a list of objective entries ``{name, weight, params}``; a
    group's loss is the weighted sum of its terms, and the groups are combined by
    :func:`uncertainty_weighting` with one learned ``log sigma`` each (initial value ``init_log_sigma``).
    The paper's Model4: ``[[supcon], [ce, mixup_ce]]``. After each call ``last_parts`` holds the group
    losses and sigmas (detached) for logging.

    Raises:
        ConfigError: empty groups or bad entries.
    """

    def __init__(self, num_classes: int, class_counts: Sequence[int] | None = None,
                 *, groups: Sequence[Sequence[Mapping[str, Any]]], init_log_sigma: float = 0.0):
        super().__init__()
        shape = group_problems(groups)
        if shape:
            raise ConfigError("uncertainty: " + "; ".join(shape))
        self.terms = nn.ModuleList()
        self.names: list[list[str]] = []
        self.weights: list[list[float]] = []
        for gi, g in enumerate(groups):
            mods = nn.ModuleList()
            names, weights = [], []
            for j, entry in enumerate(g):
                mods.append(build_objective(entry["name"], dict(entry.get("params") or {}), num_classes,
                                            class_counts, where=f"uncertainty.groups[{gi}][{j}]"))
                names.append(str(entry["name"]))
                weights.append(float(entry.get("weight", 1.0)))
            self.terms.append(mods)
            self.names.append(names)
            self.weights.append(weights)
        self.log_sigma = nn.Parameter(torch.full((len(groups),), float(init_log_sigma)))
        self.last_parts: dict[str, float] = {}

    def forward(self, model: nn.Module, out: Any, batch: Mapping[str, Tensor]) -> Tensor:
        losses = []
        parts: dict[str, float] = {}
        for mods, names, weights in zip(self.terms, self.names, self.weights, strict=True):
            total: Tensor | float = 0.0
            for mod, name, w in zip(mods, names, weights, strict=True):  # type: ignore[call-overload]
                value = mod(model, out, batch)
                parts[name] = float(value.detach())
                total = total + w * value
            if not isinstance(total, Tensor):
                total = self.log_sigma.new_tensor(total)
            losses.append(total.float().reshape(()))
        for i, s in enumerate(self.log_sigma.detach().exp().tolist()):
            parts[f"sigma{i + 1}"] = s
        self.last_parts = parts
        return uncertainty_weighting(torch.stack(losses).float(), self.log_sigma.float())
