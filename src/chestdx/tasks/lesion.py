"""``task: lesion``: one-shot lesion segmentation + classification (the affinity paper's Algorithm 1).

Training pairs each classification batch with a segmentation batch (:class:`LesionDataModule`;
segmentation data from ``data.segmentation_sources``, or the classification images with lesion
masks) and does both steps per iteration (:class:`LesionTask`, Lightning manual optimisation); the
segmentation samples are written to ``RUN/segmentation_samples.csv`` and read back on ``--resume``.
``trainer.speed: auto`` resolves to fp32 without measuring (the speed probe times a classifier).
Evaluation adds the Eq. 14 F1 and the COCO mask AP (:func:`chestdx.evaluate.lesion.lesion_run_results`);
the predictor lists the segmented lesions of each image next to the class answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chestdx.config import LesionDataConfig
from chestdx.tasks.base import Evaluation, Task

if TYPE_CHECKING:
    from chestdx.config import Recipe
    from chestdx.data.layouts import Sample
    from chestdx.engine.datamodule import ChestDataModule
    from chestdx.engine.task import ChestTask
    from chestdx.serve.answers import Prediction
    from chestdx.serve.predictor import Predictor

SEGMENTATION_SAMPLES = "segmentation_samples.csv"
"""Run-folder file: the segmentation samples of a lesion run, with their splits."""


class Lesions(Task):
    """2D images with lesion instances: model inputs ``(B, C, S, S)``, one case per image."""

    name = "lesion"
    data_config = LesionDataConfig
    heatmap_localisation = False
    measure_training_speed = False

    def datamodule(self, recipe: Recipe, samples: Sequence[Sample], resume_from: Path | None = None) -> ChestDataModule:
        """A :class:`LesionDataModule`; resuming, with the run's own segmentation samples."""
        from chestdx.engine.lesion import LesionDataModule
        from chestdx.engine.run import read_samples

        seg = read_samples(resume_from / SEGMENTATION_SAMPLES) if resume_from is not None else None
        return LesionDataModule(recipe, samples, seg)

    def save_run_files(self, out: Path, dm: ChestDataModule) -> None:
        """``OUT/segmentation_samples.csv``."""
        from chestdx.engine.run import write_samples

        write_samples(out / SEGMENTATION_SAMPLES, dm.seg_samples)  # type: ignore[attr-defined]

    def lightning_module(self, recipe: Recipe, class_counts: Sequence[int] | None) -> ChestTask:
        from chestdx.engine.lesion import LesionTask

        return LesionTask(recipe, class_counts)

    def evaluate_extra(self, ev: Evaluation) -> dict[str, Any]:
        """Eq. 14 F1 and COCO mask AP on the segmentation images of the split (see
        :func:`~chestdx.evaluate.lesion.lesion_run_results`)."""
        from chestdx.evaluate.lesion import lesion_run_results

        return lesion_run_results(ev.run, ev.model, ev.preds["label"].astype(int), ev.preds["probs"], ev.split,
                                  ev.out, ev.segmentation_sources)

    def predict_images(self, predictor: Predictor, images: Any, sources: Sequence[str],
                       heatmap: bool) -> list[Prediction]:
        """The class answer plus the segmented lesions of each image ``(B, 1, S, S)``.

        ``details["lesions"]`` lists ``{"box": [x0, y0, x1, y1], "score", "area"}`` (model pixels) of
        the detections scoring at least ``predictor.lesion_score_threshold``; with ``heatmap`` the union
        of their masks is the ``heatmap`` (``details["heatmap_kind"] = "lesion_mask"``). Detection
        always runs in fp32.
        """
        import numpy as np
        import torch

        from chestdx.evaluate.lesion import predict_lesions
        from chestdx.serve.answers import Prediction, unit_scale

        with predictor.lock, torch.no_grad():
            probs = predictor.model(images).probs.float().cpu().numpy()
            found = predict_lesions(predictor.model, images, score_threshold=predictor.lesion_score_threshold)
        out = []
        for i, src in enumerate(sources):
            f = found[i]
            det: dict[str, Any] = {"lesions": [
                {"box": [round(float(v), 1) for v in b], "score": round(float(sc), 4), "area": int(m.sum())}
                for b, sc, m in zip(f["boxes"], f["scores"], f["masks"], strict=True)]}
            union = f["masks"].any(0) if len(f["masks"]) else np.zeros(images.shape[-2:], bool)
            if heatmap:
                det["heatmap_kind"] = "lesion_mask"
            det.update(predictor.input_check(images[i, 0]))
            pdict, label = predictor.named(probs[i])
            out.append(Prediction(
                source=src, probs=pdict, label=label,
                heatmap=np.asarray(union, dtype=np.float32) if heatmap else None,
                image=unit_scale(images[i, 0].cpu().numpy()) if heatmap else None, details=det,
            ))
        return out
