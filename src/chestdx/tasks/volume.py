"""``task: volume``: a 3D model answering a whole CT scan at once (CMC-COV19D).

One record per scan (:func:`~chestdx.data.layouts.load_volume_sources`: series folders,
zips, NIfTI, slice folders, ``.npy``), preprocessed to ``(data.volume_depth, S, S)`` and cached on
disk (:class:`~chestdx.data.volume_dataset.VolumeDataset`); augmentation is batch-level (the
``cmc_views`` mixer). A case is a scan; no attention masks, but the 3D Grad-CAM is scored against the
3D lesion masks per axial slice (:meth:`Volumes.score_localisation`); the predictor answers a scan
with one forward of the whole volume (and a 3D Grad-CAM).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from chestdx.config import VolumeDataConfig
from chestdx.engine.datamodule import ChestDataModule
from chestdx.errors import ConfigError
from chestdx.tasks.base import Task

if TYPE_CHECKING:
    from chestdx.config import Recipe
    from chestdx.data.layouts import Sample
    from chestdx.predict.answers import Prediction, ScanPrediction
    from chestdx.predict.inputs import Study
    from chestdx.predict.predictor import Predictor


def _data(recipe: Recipe) -> VolumeDataConfig:
    return cast(VolumeDataConfig, recipe.data)


class VolumeDataModule(ChestDataModule):
    """The data module over scans: batches ``image (B, 1, D, S, S)`` in ``[0, 1]`` (no augmentation
    here: the mixer augments the batch)."""

    def make_dataset(self, split: str, train: bool) -> Any:
        from chestdx.data.volume_dataset import VolumeDataset

        return VolumeDataset(self.split_samples(split), _data(self.recipe), site_names=self.site_names)


class Volumes(Task):
    """3D scans: one model input ``(B, C, D, S, S)``, one case per scan."""

    name = "volume"
    data_config = VolumeDataConfig
    input_kind = "volume"
    case_unit = "scan"
    heatmap_localisation = False

    def read_sources(self, sources: Sequence[str], class_names: Sequence[str]) -> list[Sample]:
        from chestdx.data.layouts import load_volume_sources

        return load_volume_sources(list(sources), tuple(class_names))

    def check_samples(self, samples: Sequence[Sample]) -> None:
        from chestdx.data.volume_dataset import check_volume_samples

        check_volume_samples(samples)

    def datamodule(self, recipe: Recipe, samples: Sequence[Sample], resume_from: Path | None = None) -> ChestDataModule:
        return VolumeDataModule(recipe, samples)

    def eval_dataset(self, recipe: Recipe, cases: Sequence[Any], site_names: Sequence[str] | None) -> Any:
        from chestdx.data.volume_dataset import VolumeDataset

        return VolumeDataset(cases, _data(recipe), site_names=site_names or None)

    def score_localisation(self, model: Any, loader: Any, cases: Sequence[Any], kinds: Sequence[str] = ("auto",),
                           *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
        """The 3D Grad-CAM (``gradcam3d``, the map ``chestdx predict`` shows) scored against the 3D
        lesion masks per axial slice with a lesion, next to the centre prior and the body of each slice
        (:func:`~chestdx.evaluate.localisation.score_volume_heatmaps`, which states the rules).

        Args:
            loader: batches of ``image (B, 1, D, S, S)``, ``lesion (B, 1, D, S, S)``, ``has_mask (B,)``,
                ``label (B,)``, ``index (B,)`` (:class:`~chestdx.data.volume_dataset.VolumeDataset`).
            kinds: the kinds asked for; ``auto`` and ``gradcam3d`` are the 3D Grad-CAM, any other 2D
                kind is listed under ``"unavailable"``.
        """
        from chestdx.evaluate.localisation import VOLUME_KIND, score_volume_heatmaps

        res = score_volume_heatmaps(model, loader, cases, n_boot=n_boot, seed=seed)
        res["unavailable"].update({k: f"a 3D model is scored on its {VOLUME_KIND} map only"
                                   for k in kinds if k not in ("auto", VOLUME_KIND)})
        return res

    # -------------------------------------------------------------------------------- serving

    def predict_images(self, predictor: Predictor, images: Any, sources: Sequence[str],
                       heatmap: bool) -> list[Prediction]:
        """Refused: a 3D model answers scans.

        Raises:
            ConfigError: always.
        """
        raise ConfigError("a 3D model answers scans (a series folder, zip, NIfTI, slice folder or (D, H, W) "
                          "array), not single 2D images")

    def predict_study(self, predictor: Predictor, study: Study, heatmap: bool, aggregate: str,
                      max_slices: int | None, batch_size: int) -> Prediction | ScanPrediction:
        """One forward on the whole preprocessed volume.

        The scan (already HU-windowed by :func:`~chestdx.predict.inputs.load_study`) is resized to
        ``(data.volume_depth, S, S)`` and scaled to ``[0, 1]`` as in training
        (:func:`~chestdx.data.volume_dataset.preprocess_volume`); the recipe's procedure answers it
        (``plain`` or ``intra_ensemble``). ``slices`` holds one :class:`Prediction` per resized slice,
        each with the scan's probabilities and, with ``heatmap``, that slice of the 3D Grad-CAM
        (:func:`~chestdx.explain.cam.volume_cam`, scaled over the whole volume);
        ``slice_indices`` maps them to the nearest slices of the original scan; ``aggregation`` is
        ``"volume"`` (nothing to aggregate; ``aggregate`` and ``max_slices`` do not apply).

        Raises:
            ConfigError: a single 2D image given to a 3D model.
        """
        from chestdx.data.volume_dataset import preprocess_volume
        from chestdx.engine.infer import run_procedure
        from chestdx.explain.cam import volume_cam
        from chestdx.predict.answers import Prediction, ScanPrediction

        if study.kind == "image":
            raise ConfigError(f"{study.name}: a 3D model answers scans (a series folder, zip, NIfTI, slice "
                              "folder or (D, H, W) array), not a single 2D image")
        cfg = _data(predictor.recipe)
        vol = preprocess_volume(study.array, (cfg.volume_depth, cfg.image_size, cfg.image_size), study.name)
        x = vol[None, None].to(predictor.device)
        with predictor.lock, predictor.speed.run(x) as xm:
            res = run_procedure(predictor.procedure, predictor.params, predictor.model, xm)
            maps = volume_cam(predictor.model, xm)[0].float().cpu().numpy() if heatmap else None
        probs = res.probs.float().cpu().numpy()[0]
        pdict, label = predictor.named(probs)
        d0, d = study.array.shape[0], vol.shape[0]
        idx = [min(d0 - 1, max(0, int(round((k + 0.5) * d0 / d - 0.5)))) for k in range(d)]
        det: dict[str, Any] = {k: v[0].item() if v[0].numel() == 1 else v[0].tolist() for k, v in res.details.items()}
        if heatmap:
            det["heatmap_kind"] = "gradcam3d"
        slices = [Prediction(source=f"{study.name}[{i}]", probs=pdict, label=label,
                             heatmap=None if maps is None else maps[k],
                             image=vol[k].numpy() if heatmap else None, details=dict(det))
                  for k, i in enumerate(idx)]
        return ScanPrediction(source=study.name, probs=pdict, label=label, aggregation="volume",
                              slice_indices=idx, slices=slices, meta=study.meta)
