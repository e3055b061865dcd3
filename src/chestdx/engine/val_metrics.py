"""Validation metrics as torchmetrics *module* metrics: their states are synced across DDP ranks.

Every rank of a ``--strategy ddp`` run scores only its shard of the validation set; a module
metric accumulates states on each rank (sums for accuracy, the concatenated scores and labels for
AUROC, the concatenated weighted losses for :class:`WeightedMean`) and its ``compute()`` gathers
them from every rank before scoring, so each rank logs the figure of the *whole* validation set.
``dist_sync_on_step`` stays False (nothing is synced per batch, only once in ``compute()``).

The values are those the engine logged before these metrics existed, to the last bit on one
process (they pick the best checkpoint, ``trainer.monitor: val_auc``):

- ``val_acc``: ``mean(argmax(probs) == labels)`` (``MulticlassAccuracy(average="micro")``:
  correct / total, first maximum on ties);
- ``val_auc``: ``binary_auroc(probs[:, 1], labels)`` for two classes, else
  ``multiclass_auroc(probs, labels, average="macro")``, and **NaN when fewer than two classes
  occur among the validation labels** (an AUC is undefined then; torchmetrics would warn and
  return 0 or 0.5, which would look like a real score to the checkpoint monitor). With ``K > 2``
  the macro mean is over the classes that occur among the labels, as ``chestdx evaluate``'s
  ``macro_auc`` (:mod:`chestdx.evaluate.metrics`): a class missing from the validation labels is
  left out, not scored 0 (torchmetrics' own macro mean would count it as 0; before issue 14 the
  validation figure did, so a 3-class run whose validation split lacked a class logged a lower AUC).

The figures ``chestdx evaluate`` reports (bootstrap intervals, per class, macro F1) come from
:mod:`chestdx.evaluate.metrics`, whose point values are checked against ``torchmetrics.functional``
(the same code as these module metrics): accuracy is the same figure, and so is the AUC whenever
every class occurs in the labels (tests/evaluate/test_one_metric.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy, MulticlassAUROC
from torchmetrics.utilities import dim_zero_cat

__all__ = ["WeightedMean", "validation_auroc", "validation_metrics"]


def _nan_if_one_class(target: Any) -> Tensor | None:
    """NaN (on the labels' device) when fewer than two classes occur in ``target``, else None."""
    if isinstance(target, list) and not target:
        return torch.tensor(float("nan"))
    labels = dim_zero_cat(target) if isinstance(target, list) else target
    if len(torch.unique(labels)) < 2:
        return torch.tensor(float("nan"), device=labels.device)
    return None


class _BinaryValAUROC(BinaryAUROC):
    """ROC AUC of class 1 from ``probs (B, 2)``; NaN when one class is missing from the labels."""

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(preds[:, 1], target)

    def compute(self) -> Tensor:  # type: ignore[override]
        nan = _nan_if_one_class(self.target)
        return super().compute() if nan is None else nan


class _MulticlassValAUROC(MulticlassAUROC):
    """Macro one-vs-rest ROC AUC from ``probs (B, K)`` over the classes that occur in the labels
    (``chestdx evaluate``'s rule); NaN when fewer than two classes occur."""

    def compute(self) -> Tensor:  # type: ignore[override]
        nan = _nan_if_one_class(self.target)
        if nan is not None:
            return nan
        per_class = super().compute()  # (K,): average=None
        labels = dim_zero_cat(self.target) if isinstance(self.target, list) else self.target
        present = torch.bincount(labels.long(), minlength=per_class.numel())[: per_class.numel()] > 0
        return per_class[present].mean()


def validation_auroc(num_classes: int) -> Metric:
    """The validation AUROC metric: ``update(probs (B, K), labels (B,))``, ``compute() -> ()``.

    Binary (``K == 2``): ROC AUC of class 1; ``K > 2``: macro one-vs-rest AUROC. NaN when fewer
    than two classes occur among the labels of every rank (see the module docstring).
    """
    if num_classes == 2:
        return _BinaryValAUROC()
    return _MulticlassValAUROC(num_classes=num_classes, average=None)


def validation_metrics(num_classes: int) -> MetricCollection:
    """``{"val_acc", "val_auc"}``, each updated with ``(probs (B, K), labels (B,) int64)``.

    Builds no parameter and draws no random number (safe to build after the model).
    """
    return MetricCollection(
        {"val_acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
         "val_auc": validation_auroc(num_classes)},
        compute_groups=False,
    )


class WeightedMean(Metric):
    """Mean of per-batch mean values weighted by batch size: ``sum(v_i * n_i) / sum(n_i)``.

    ``update(value, n)``: ``value`` a scalar tensor (the batch's mean loss), ``n`` the batch's
    number of items. ``compute()``: the weighted mean over every update of every rank (the
    products and counts are concatenated across ranks, then summed, so one process gives the
    same bits as summing the stacked per-batch products); 0 when nothing was updated.
    """

    full_state_update = False
    weighted: list[Tensor]  # batch mean * batch size, one per update (one tensor after a sync)
    counts: list[Tensor]  # batch sizes

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("weighted", default=[], dist_reduce_fx="cat")
        self.add_state("counts", default=[], dist_reduce_fx="cat")

    def update(self, value: Tensor, n: int) -> None:  # type: ignore[override]
        self.weighted.append(value.detach().reshape(()) * n)
        self.counts.append(torch.tensor(float(n), device=value.device))

    def compute(self) -> Tensor:
        if isinstance(self.weighted, list) and not self.weighted:  # after a sync: one tensor
            return torch.tensor(0.0)
        return dim_zero_cat(self.weighted).sum() / dim_zero_cat(self.counts).sum()
