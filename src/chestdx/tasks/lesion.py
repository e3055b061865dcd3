"""``task: lesion``: one-shot lesion segmentation + classification, the affinity paper's Algorithm 1
trained inside the one Lightning loop.

The task object :class:`Lesions` (registered as ``lesion``) builds the data module and the
LightningModule below; the segmentation samples are written to ``RUN/segmentation_samples.csv`` and
read back on ``--resume``; ``trainer.speed: auto`` resolves to fp32 without measuring (the speed
probe times a classifier). Evaluation adds the Eq. 14 F1 and the COCO mask AP
(:func:`chestdx.evaluate.lesion.lesion_run_results`) and scores the union of the predicted masks as a
heatmap (:meth:`Lesions.score_localisation`); the predictor lists the segmented lesions of
each image next to the class answer.

Algorithm 1 (maskrcnn-lesion-affinity.txt) takes two data sets and two steps per iteration:

1. **segmentation step** on a segmentation batch (images + lesion instances): ``L_SEG`` (Mask
   R-CNN's loss), backward; when ``L_SEG(t) < L_SEG(t-1)`` the RoI detection and mask branches are
   copied into the classification branches; optimiser step (backbone, RPN, RoI heads);
2. **classification step** on a classification batch (images + class labels): ``L_CLS`` (the
   recipe's objectives, per-class BCE Eq. 7 for the affinity recipes), backward; optimiser step
   (backbone, mask sieve, affinity matrix / vector, FC layers: nothing else gets a gradient).

How this fits the engine (the choice made): :class:`LesionDataModule` serves *paired* batches
``{"seg": ..., "cls": ...}`` (one classification batch and one segmentation batch drawn at random
from the segmentation training data), and :class:`LesionTask` is a :class:`ChestTask` with
Lightning *manual optimisation* whose ``training_step`` does both steps with one Adam optimiser
(a parameter with no gradient in a step is not touched by it). Checkpoints, early stopping,
progress, loggers, devices and ``--resume`` stay Lightning's; ``L_SEG(t-1)`` lives in a model
buffer, so a resumed run continues the comparison. The task holds no parameter of its own, so a
run loads back as a plain :class:`ChestTask`.

Validation scores ``val_cls_loss`` (Eq. 7) and accuracy / AUC on the classification validation
images and ``val_seg_loss`` on the segmentation validation images; ``val_loss = val_seg_loss +
val_cls_loss`` is ``L_Total`` (Eq. 6), so the kept checkpoint is the one that minimises the total
loss ("Final model minimizing L_Total").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from chestdx.config import LesionDataConfig, Recipe
from chestdx.data.lesions import SegmentationDataset, collate_segmentation, load_segmentation_sources
from chestdx.engine.datamodule import ChestDataModule, seed_worker
from chestdx.engine.task import ChestTask
from chestdx.engine.val_metrics import WeightedMean
from chestdx.errors import ConfigError, DatasetError
from chestdx.tasks.base import Evaluation, Task

if TYPE_CHECKING:
    from chestdx.data.layouts import Sample
    from chestdx.predict.answers import Prediction
    from chestdx.predict.predictor import Predictor

log = logging.getLogger(__name__)

SEGMENTATION_SAMPLES = "segmentation_samples.csv"
"""Run-folder file: the segmentation samples of a lesion run, with their splits."""


class PairedDataset(Dataset):
    """Item ``i``: classification item ``i`` and a random segmentation item (one per step).

    Args:
        cls_ds: classification data set (its length is the epoch).
        seg_ds: segmentation data set.
    """

    def __init__(self, cls_ds: Any, seg_ds: Any):
        self.cls_ds, self.seg_ds = cls_ds, seg_ds

    def __len__(self) -> int:
        return len(self.cls_ds)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        j = int(torch.randint(len(self.seg_ds), ()).item())
        return self.cls_ds[i], self.seg_ds[j]


def collate_paired(items: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """``{"cls": classification batch, "seg": segmentation batch}`` (see :func:`collate_segmentation`)."""
    return {"cls": default_collate([c for c, _ in items]), "seg": collate_segmentation([s for _, s in items])}


class LesionDataModule(ChestDataModule):
    """Classification data (the recipe's sources) plus segmentation data.

    The segmentation samples come from ``data.segmentation_sources`` (:mod:`chestdx.data.lesions`
    layouts, split by patient / volume group where no split is given), or, when that is empty, from
    the classification samples that carry a lesion mask (the phantom: every image, normals as
    negative images).

    Args:
        recipe: the recipe.
        samples: classification samples with splits.
        seg_samples: ready segmentation samples (skips reading the sources).

    Raises:
        DatasetError: no segmentation training images.
    """

    def __init__(self, recipe: Recipe, samples: Sequence[Any], seg_samples: Sequence[Any] | None = None):
        super().__init__(recipe, samples)
        cfg = cast(LesionDataConfig, recipe.data)
        if seg_samples is None:
            if cfg.segmentation_sources:
                seg_samples = load_segmentation_sources(cfg.segmentation_sources, cfg.class_names,
                                                        cfg.split_fractions, seed=recipe.seed)
            else:
                seg_samples = [s for s in self.samples if s.mask]
        self.seg_samples = list(seg_samples)
        if not [s for s in self.seg_samples if s.split == "train"]:
            raise DatasetError("task 'lesion' needs segmentation training images: set "
                               "data.segmentation_sources or give classification data with lesion masks")

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        seg: dict[str, int] = {}
        for s in getattr(self, "seg_samples", []):
            seg[s.split or "none"] = seg.get(s.split or "none", 0) + 1
        out["segmentation"] = seg
        return out

    def seg_dataset(self, split: str, train: bool | None = None) -> SegmentationDataset:
        key = f"seg:{split}:{train}"
        if key not in self._datasets:
            self._datasets[key] = SegmentationDataset(
                [s for s in self.seg_samples if s.split == split], self.cfg,
                train=(split == "train") if train is None else train,
                min_area=cast(LesionDataConfig, self.cfg).min_lesion_area)
        return self._datasets[key]  # type: ignore[no-any-return]

    def _gen(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.recipe.seed)
        return g

    def train_dataloader(self) -> DataLoader:
        ds = PairedDataset(self.dataset("train"), self.seg_dataset("train"))
        bs = self.cfg.batch_size
        return DataLoader(ds, batch_size=bs, shuffle=True, num_workers=self.cfg.num_workers,
                          worker_init_fn=seed_worker, generator=self._gen(), collate_fn=collate_paired,
                          drop_last=len(ds) > bs, persistent_workers=self.cfg.num_workers > 0)

    def seg_loader(self, split: str) -> DataLoader:
        """Segmentation images of ``split`` in order (for validation and evaluation)."""
        return DataLoader(self.seg_dataset(split), batch_size=self.cfg.batch_size, shuffle=False,
                          num_workers=self.cfg.num_workers, collate_fn=collate_segmentation)

    def val_dataloader(self) -> Any:
        loaders = [self._loader("val", shuffle=False)]
        if any(s.split == "val" for s in self.seg_samples):
            loaders.append(self.seg_loader("val"))
        return loaders


class LesionTask(ChestTask):
    """Algorithm 1 with Lightning manual optimisation (see the module docstring).

    Raises:
        ConfigError: the model is not the affinity model, or ``trainer.gradient_clip`` is set
            (Lightning does not clip under manual optimisation).
    """

    def __init__(self, recipe: Recipe | dict[str, Any], class_counts: Sequence[int] | None = None,
                 in_chans: int = 1):
        super().__init__(recipe, class_counts, in_chans)
        from chestdx.models.affinity import AffinityModel

        if not isinstance(self.model, AffinityModel):
            raise ConfigError(f"task 'lesion' needs model.name 'affinity', got '{self.recipe.model.name}'")
        if self.recipe.trainer.gradient_clip is not None:
            raise ConfigError("task 'lesion' trains with manual optimisation: set trainer.gradient_clip to null")
        if self.mixer is not None:
            raise ConfigError("task 'lesion' takes no mixing")
        self.automatic_optimization = False
        # Eq. 7 on the classification and L_SEG on the segmentation validation images, weighted by
        # batch size, gathered from every DDP rank in compute()
        self.val_cls_loss = WeightedMean()
        self.val_seg_loss = WeightedMean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:  # type: ignore[override]
        opt: Any = self.optimizers()
        model: Any = self.model
        seg, cls = batch["seg"], dict(batch["cls"])
        # segmentation stage
        seg_terms = model.segmentation_losses(seg["images"], seg["targets"])
        l_seg = sum(seg_terms.values())
        opt.zero_grad()
        self.manual_backward(l_seg)
        copied = model.maybe_copy_branches(l_seg.detach())
        opt.step()
        # classification stage
        cls["target"] = F.one_hot(cls["label"], self.recipe.data.num_classes).float()
        opt.zero_grad()
        l_cls, terms, _ = self.compute_losses(cls)
        self.manual_backward(l_cls)
        opt.step()
        total = l_seg.detach() + l_cls.detach()
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"training loss is {total.item()} at epoch {self.current_epoch}, step {batch_idx} "
                f"(L_SEG {float(l_seg)}, L_CLS {float(l_cls)}); lower optim.lr or check the data")
        bs = cls["image"].shape[0]
        self.log("train_loss", total, prog_bar=True, on_step=False, on_epoch=True, batch_size=bs)
        self.log("train_seg_loss", l_seg.detach(), on_step=False, on_epoch=True, batch_size=bs)
        self.log("train_cls_loss", l_cls.detach(), on_step=False, on_epoch=True, batch_size=bs)
        self.log("train_copies", float(copied), on_step=False, on_epoch=True, reduce_fx="sum", batch_size=1)
        return total

    def on_train_epoch_end(self) -> None:
        sched: Any = self.lr_schedulers()
        if sched is not None:
            sched.step()

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:  # type: ignore[override]
        """Loader 0 (classification ``image (B, C, H, W)``, ``label (B,)``): Eq. 7 loss, accuracy and
        AUC; loader 1 (segmentation ``images``, ``targets``): ``L_SEG``."""
        model: Any = self.model
        if dataloader_idx == 0:
            out = model(batch["image"])
            self.val_metrics.update(out.probs.detach(), batch["label"])
            target = F.one_hot(batch["label"], self.recipe.data.num_classes).float()
            loss = F.binary_cross_entropy_with_logits(out.logits.float(), target, reduction="none").sum(1).mean()
            self.val_cls_loss.update(loss, batch["image"].shape[0])
        else:
            terms = model.segmentation_losses(batch["images"], batch["targets"])
            self.val_seg_loss.update(sum(terms.values()), batch["images"].shape[0])

    def on_validation_epoch_end(self) -> None:
        """Log ``val_cls_loss``, ``val_seg_loss`` (0 without segmentation validation images),
        ``val_loss = val_cls_loss + val_seg_loss`` (L_Total), ``val_acc`` and ``val_auc``.

        The losses are computed here (gathered from every DDP rank, so equal on every rank) and
        reset; they are logged with ``sync_dist=True``, the mean of equal numbers.
        """
        parts = []
        for metric in (self.val_cls_loss, self.val_seg_loss):
            parts.append(metric.compute() if metric.update_called else torch.tensor(0.0, device=self.device))
            metric.reset()
        cls_loss, seg_loss = parts
        self.log("val_cls_loss", cls_loss, sync_dist=True)
        self.log("val_seg_loss", seg_loss, sync_dist=True)
        self.log("val_loss", cls_loss + seg_loss, prog_bar=True, sync_dist=True)
        self.log_validation_scores()


class Lesions(Task):
    """2D images with lesion instances: model inputs ``(B, C, S, S)``, one case per image."""

    name = "lesion"
    data_config = LesionDataConfig
    heatmap_localisation = False
    measure_training_speed = False

    def datamodule(self, recipe: Recipe, samples: Sequence[Sample], resume_from: Path | None = None) -> ChestDataModule:
        """A :class:`LesionDataModule`; resuming, with the run's own segmentation samples."""
        from chestdx.engine.run import read_samples

        seg = read_samples(resume_from / SEGMENTATION_SAMPLES) if resume_from is not None else None
        return LesionDataModule(recipe, samples, seg)

    def save_run_files(self, out: Path, dm: ChestDataModule) -> None:
        """``OUT/segmentation_samples.csv``."""
        from chestdx.engine.run import write_samples

        write_samples(out / SEGMENTATION_SAMPLES, dm.seg_samples)  # type: ignore[attr-defined]

    def lightning_module(self, recipe: Recipe, class_counts: Sequence[int] | None) -> ChestTask:
        return LesionTask(recipe, class_counts)

    def evaluate_extra(self, ev: Evaluation) -> dict[str, Any]:
        """Eq. 14 F1 and COCO mask AP on the segmentation images of the split (see
        :func:`~chestdx.evaluate.lesion.lesion_run_results`)."""
        from chestdx.evaluate.lesion import lesion_run_results

        return lesion_run_results(ev.run, ev.model, ev.preds["label"].astype(int), ev.preds["probs"], ev.split,
                                  ev.out, ev.segmentation_sources)

    def score_localisation(self, model: Any, loader: Any, cases: Sequence[Any], kinds: Sequence[str] = ("auto",),
                           *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
        """The model's own lesion masks as its heatmap (``lesion_mask``: the binary union of the masks of
        the detections scoring at least 0.5, what :meth:`predict_images` shows) scored against the
        evaluated images' lesion masks, next to the centre prior and the body
        (:func:`~chestdx.evaluate.localisation.score_lesion_masks`, which states the rules).

        Args:
            loader: batches of ``image (B, 1, S, S)``, ``lesion (B, 1, S, S)``, ``has_mask (B,)``, ``index (B,)``.
            kinds: the kinds asked for; ``auto`` and ``lesion_mask`` are the mask union, any other kind
                is listed under ``"unavailable"``.
        """
        from chestdx.evaluate.localisation import LESION_KIND, score_lesion_masks

        res = score_lesion_masks(model, loader, cases, n_boot=n_boot, seed=seed)
        res["unavailable"].update({k: f"the lesion model is scored on its {LESION_KIND} map only"
                                   for k in kinds if k not in ("auto", LESION_KIND)})
        return res

    def predict_images(self, predictor: Predictor, images: Any, sources: Sequence[str],
                       heatmap: bool) -> list[Prediction]:
        """The class answer plus the segmented lesions of each image ``(B, 1, S, S)``.

        ``details["lesions"]`` lists ``{"box": [x0, y0, x1, y1], "score", "area"}`` (model pixels) of
        the detections scoring at least ``predictor.lesion_score_threshold``; with ``heatmap`` the union
        of their masks is the ``heatmap`` (``details["heatmap_kind"] = "lesion_mask"``). Detection
        always runs in fp32.
        """
        from chestdx.evaluate.lesion import predict_lesions
        from chestdx.evaluate.localisation import lesion_mask_map
        from chestdx.predict.answers import Prediction, unit_scale

        with predictor.lock, torch.no_grad():
            probs = predictor.model(images).probs.float().cpu().numpy()
            found = predict_lesions(predictor.model, images, score_threshold=predictor.lesion_score_threshold)
        out = []
        for i, src in enumerate(sources):
            f = found[i]
            det: dict[str, Any] = {"lesions": [
                {"box": [round(float(v), 1) for v in b], "score": round(float(sc), 4), "area": int(m.sum())}
                for b, sc, m in zip(f["boxes"], f["scores"], f["masks"], strict=True)]}
            union = lesion_mask_map(f["masks"], images.shape[-2:])
            if heatmap:
                det["heatmap_kind"] = "lesion_mask"
            det.update(predictor.input_check(images[i, 0]))
            pdict, label = predictor.named(probs[i])
            out.append(Prediction(
                source=src, probs=pdict, label=label,
                heatmap=union if heatmap else None,
                image=unit_scale(images[i, 0].cpu().numpy()) if heatmap else None, details=det,
            ))
        return out
