"""The one LightningModule every recipe trains with.

The recipe chooses the parts (model, objectives, mixing, optimiser); this module only wires them:

    batch -> [mixer] -> model -> ModelOutput -> sum_i w_i * objective_i -> loss

Validation computes plain cross-entropy, accuracy and AUC on the unmixed validation images
(torchmetrics module metrics, correct under DDP: :mod:`chestdx.engine.val_metrics`).

The execution mode (:mod:`chestdx.engine.precision`, recipe ``trainer.speed``) is set on
:attr:`ChestTask.exec_mode` by :func:`chestdx.engine.train.train`: its precision goes to Lightning
(``bf16-mixed`` autocast), its memory format is applied here (the model in ``on_fit_start``, each
batch's images in ``on_after_batch_transfer``; the model goes back to contiguous in ``on_fit_end``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chestdx.config import Recipe
from chestdx.engine.precision import FP32, ExecMode, set_memory_format, to_mode_input
from chestdx.engine.val_metrics import validation_metrics
from chestdx.mixing import build_mixer
from chestdx.models import ChestModel, ModelOutput, build_model
from chestdx.objectives import build_objective

# ChestTask converts batches in on_after_batch_transfer on purpose (channels-last modes); the data
# modules define no such hook, so Lightning's note that the module's hook is used says nothing
warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer` in `LightningModule` but.*")


class ChestTask(L.LightningModule):
    """Train any chestdx classifier from its recipe.

    Args:
        recipe: the resolved recipe.
        class_counts: training images per class ``(K,)`` (for class-weighted losses).
        in_chans: input channels of the images (1 for grey CT / X-ray).
    """

    def __init__(self, recipe: Recipe | dict[str, Any], class_counts: Sequence[int] | None = None,
                 in_chans: int = 1):
        super().__init__()
        if isinstance(recipe, dict):
            from chestdx.config import validate_recipe

            recipe = validate_recipe(recipe)
        self.recipe = recipe
        self.save_hyperparameters({"recipe": recipe.model_dump(mode="json"),
                                   "class_counts": list(class_counts) if class_counts else None,
                                   "in_chans": in_chans})
        k = recipe.data.num_classes
        self.model: ChestModel = build_model(recipe.model, num_classes=k, in_chans=in_chans)
        self.objective_names = [o.name for o in recipe.objectives]
        self.objective_weights = [o.weight for o in recipe.objectives]
        self.objectives = nn.ModuleList(
            build_objective(o.name, o.params, k, class_counts) for o in recipe.objectives
        )
        for term in self.objectives.modules():  # lazy layers (e.g. supcon's projection) get their width now
            materialize = getattr(term, "materialize_for", None)
            if callable(materialize):
                materialize(self.model)
        self.mixer = (build_mixer(recipe.mixing.name, recipe.mixing.prob, recipe.mixing.params, k)
                      if recipe.mixing else None)
        # module metrics (states gathered from every DDP rank in compute()); built last, they draw
        # no random number and hold no parameter or persistent buffer (checkpoints are unchanged)
        self.val_metrics = validation_metrics(k)
        self.exec_mode: ExecMode = FP32
        """The execution mode of training (its memory format is applied here, its precision by Lightning)."""

    def on_fit_start(self) -> None:
        if self.exec_mode.channels_last:  # 4D weights only: a 3D model's 5D ones stay as they are
            set_memory_format(self.model, True)

    def on_fit_end(self) -> None:
        if self.exec_mode.channels_last:  # leave the model as it was built (contiguous weights)
            set_memory_format(self.model, False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Channels-last modes: the batch's 4D ``image (B, C, H, W)`` in NHWC strides (same values; one
        channel too: :func:`~chestdx.engine.precision.to_mode_input`)."""
        if self.exec_mode.channels_last and isinstance(batch, dict):
            img = batch.get("image")
            if isinstance(img, Tensor) and img.ndim == 4:
                batch = {**batch, "image": to_mode_input(img, self.exec_mode)}
        return batch

    def forward(self, x: Tensor) -> ModelOutput:
        return self.model(x)

    def compute_losses(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], ModelOutput]:
        """Weighted objectives on one (possibly mixed) batch.

        Returns:
            total loss, each weighted term by name, and the model output.
        """
        out = self.model(batch["image"])
        terms: dict[str, Tensor] = {}
        for name, w, term in zip(self.objective_names, self.objective_weights, self.objectives, strict=True):
            value = term(self.model, out, batch)
            terms[name] = terms.get(name, 0) + w * value
        total = sum(terms.values())
        return total, terms, out  # type: ignore[return-value]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        k = self.recipe.data.num_classes
        batch = dict(batch)
        batch["target"] = F.one_hot(batch["label"], k).float()
        if self.mixer is not None:
            batch = self.mixer(self.model, batch)
        loss, terms, _ = self.compute_losses(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step {batch_idx} "
                f"(terms: { {n: float(v) for n, v in terms.items()} }); lower optim.lr or check the data"
            )
        bs = batch["image"].shape[0]
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=bs)
        if len(terms) > 1:
            for n, v in terms.items():
                self.log(f"train_{n}", v, on_step=False, on_epoch=True, batch_size=bs)
        for n, term in zip(self.objective_names, self.objectives, strict=True):
            for part, v in getattr(term, "last_parts", {}).items():  # e.g. uncertainty: each loss, each sigma
                self.log(f"train_{n}_{part}", float(v), on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Update ``val_acc`` / ``val_auc`` with ``probs (B, K)`` and ``label (B,)``; log ``val_loss``
        (mean cross-entropy, weighted by batch size and reduced over DDP ranks: ``sync_dist``)."""
        out = self.model(batch["image"])
        self.val_metrics.update(out.probs.detach(), batch["label"])
        loss = F.cross_entropy(out.logits.float(), batch["label"])
        self.log("val_loss", loss, prog_bar=True, on_step=False, on_epoch=True,
                 batch_size=batch["image"].shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.log_validation_scores()

    def log_validation_scores(self) -> None:
        """Log ``val_acc`` and ``val_auc`` of the epoch (nothing when no batch was validated).

        The metric objects themselves are logged: Lightning calls their ``compute()`` (which
        gathers the states of every DDP rank) at the end of the epoch and resets them.
        """
        if not self.val_metrics["val_acc"].update_called:
            return
        self.log("val_acc", self.val_metrics["val_acc"], prog_bar=True)
        self.log("val_auc", self.val_metrics["val_auc"])

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters as optimiser groups: one at ``optim.lr``, or, with
        ``optim.backbone_lr``, the backbone (pretrained layers) at ``backbone_lr`` and everything else
        (heads, attention, objectives' projections) at ``lr``.

        Raises:
            ConfigError: ``backbone_lr`` set for a model without a backbone.
        """
        o = self.recipe.optim
        params = [p for p in self.parameters() if p.requires_grad]
        if o.backbone_lr is None:
            return [{"params": params, "lr": o.lr}]
        backbone_ids = {id(p) for p in self.model.backbone_parameters()}
        if not backbone_ids:
            from chestdx.errors import ConfigError

            raise ConfigError(f"optim.backbone_lr={o.backbone_lr}: model '{self.recipe.model.name}' has no "
                              "backbone parameters to give it; remove it")
        groups = [{"params": [p for p in params if id(p) in backbone_ids], "lr": o.backbone_lr, "name": "backbone"},
                  {"params": [p for p in params if id(p) not in backbone_ids], "lr": o.lr, "name": "new"}]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self) -> Any:
        o = self.recipe.optim
        params: Any = self.param_groups()
        if o.name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum,
                                                         weight_decay=o.weight_decay)
        elif o.name == "adamw":
            opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        if o.scheduler == "cosine":
            sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.recipe.trainer.epochs)
        elif o.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=o.step_size, gamma=o.gamma)
        elif o.scheduler == "multistep":
            epochs = self.recipe.trainer.epochs
            steps = sorted({max(1, round(f * epochs)) for f in o.milestones})
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=o.gamma)
        elif o.scheduler == "onecycle":  # per step: warm up to each group's lr, then cosine down
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                        total_steps=total, pct_start=o.warmup_fraction)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        else:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

