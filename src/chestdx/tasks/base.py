"""The task interface: everything that depends on what kind of data a recipe's ``task:`` names.

A :class:`Task` is one kind of data and model (2D slices, slice sequences, 3D volumes, lesion
segmentation + classification). The engine, the evaluation and the predictor never branch on the
task's name: they ask the recipe's task object (:func:`chestdx.tasks.get_task`) for

========================  ==================================================================
data                      :attr:`~Task.data_config` (the recipe's ``data`` section class, from
                          :data:`chestdx.config.DATA_SECTIONS`), :meth:`~Task.load_samples`
training                  :meth:`~Task.datamodule`, :meth:`~Task.save_run_files`,
                          :meth:`~Task.lightning_module`, :attr:`~Task.measure_training_speed`
evaluation                :meth:`~Task.eval_cases`, :meth:`~Task.eval_dataset`,
                          :meth:`~Task.ensemble_dataset`, :attr:`~Task.case_unit`,
                          :attr:`~Task.heatmap_localisation`, :attr:`~Task.scan_aggregation`,
                          :meth:`~Task.evaluate_extra`
speed probe               :meth:`~Task.example_shape`
serving                   :attr:`~Task.per_slice` (answers 2D images; a bundle carries an input
                          profile), :meth:`~Task.predict_images`, :meth:`~Task.predict_study`
========================  ==================================================================

The defaults here are those of a 2D image classifier (``task: slice``); the other tasks override
what differs. What a recipe needs to validate (the task names, each task's ``data`` section) is in
:mod:`chestdx.config`, which imports no task and no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from chestdx.config import DataConfig
from chestdx.errors import DatasetError

if TYPE_CHECKING:
    from chestdx.config import Recipe
    from chestdx.data.layouts import Sample
    from chestdx.engine.datamodule import ChestDataModule
    from chestdx.engine.task import ChestTask
    from chestdx.predict.answers import Prediction, ScanPrediction
    from chestdx.predict.inputs import Study
    from chestdx.predict.predictor import Predictor


@dataclass
class Evaluation:
    """What ``chestdx evaluate`` has computed when it asks the task for its extra results.

    Attributes:
        run: the :class:`~chestdx.engine.run.Run`.
        model: the trained model (eval mode).
        preds: :func:`~chestdx.engine.infer.predict_loader`'s answers: ``probs (N, K)``, ``label (N,)``,
            ``index (N,)`` into ``cases``.
        cases: what was scored (:meth:`Task.eval_cases`), ``dataset`` the data set over them.
        report: the case builder's report (:meth:`Task.eval_cases`), or None.
        split, out: the split scored and the output folder.
        mode, device: the execution mode inference ran in, and the device.
        segmentation_sources: ``chestdx evaluate --segmentation-sources`` (``task: lesion``).
    """

    run: Any
    model: Any
    preds: dict[str, Any]
    cases: list[Any]
    dataset: Any
    report: Any
    split: str
    out: Path
    class_names: list[str]
    mode: Any
    device: Any
    segmentation_sources: Sequence[str | Path] | None = None


class Task:
    """One kind of data and model; registered in :data:`chestdx.tasks.TASKS` under :attr:`name`.

    Class attributes:
        name: the recipe's ``task:`` value.
        data_config: the class of the recipe's ``data`` section (``DATA_SECTIONS[name]``).
        input_kind: what one model input is: ``image`` ``(B, C, S, S)``, ``volume``
            ``(B, C, D, S, S)`` or ``sequence`` ``(B, T, C, S, S)``.
        case_unit: what one evaluated case is (``image``, ``scan``, ``sequence``), named in reports.
        heatmap_localisation: evaluation scores attention masks / heatmaps against lesion masks.
        scan_aggregation: ``evaluate --scan-aggregate`` makes scan answers from the case answers.
        measure_training_speed: ``trainer.speed: auto`` measures the modes; False resolves it to
            fp32 (or ``$CHESTDX_SPEED``) without measuring (a model trained in its own loop).
    """

    name: ClassVar[str] = ""
    data_config: ClassVar[type[DataConfig]] = DataConfig
    input_kind: ClassVar[str] = "image"
    case_unit: ClassVar[str] = "image"
    heatmap_localisation: ClassVar[bool] = True
    scan_aggregation: ClassVar[bool] = True
    measure_training_speed: ClassVar[bool] = True

    def __repr__(self) -> str:
        return f"<task {self.name!r}>"

    @property
    def per_slice(self) -> bool:
        """The model answers 2D images: a scan is answered slice by slice and aggregated, and a
        bundle carries the training images' input profile (:mod:`chestdx.predict.ood`)."""
        return self.input_kind == "image"

    # ------------------------------------------------------------------------------------ data

    def read_sources(self, sources: Sequence[str], class_names: Sequence[str]) -> list[Sample]:
        """Every record of ``sources`` (one folder / CSV per site), joined; splits may be None."""
        from chestdx.data.layouts import load_sources

        return load_sources(list(sources), tuple(class_names))

    def check_samples(self, samples: Sequence[Sample]) -> None:
        """Open every file; raise :class:`~chestdx.errors.DatasetError` listing all bad ones."""
        from chestdx.data.layouts import check_samples

        check_samples(samples, read=True)

    def load_samples(self, sources: Sequence[str | Path], recipe: Recipe, check: bool = True) -> list[Sample]:
        """Read every source's layout, join the sites and give a split to samples that have none.

        A file listed twice with the same label is used once (a warning names it:
        :func:`~chestdx.data.layouts.drop_duplicate_files`). Samples without a split get a seeded,
        patient-grouped, class-stratified one (``data.split_fractions``). With ``check``, every file is opened first and all bad files
        are reported together.

        Raises:
            DatasetError: no source, an empty source, or unreadable files (all listed).
        """
        from chestdx.data.layouts import drop_duplicate_files
        from chestdx.data.splits import patient_split

        if not sources:
            raise DatasetError("no data given: pass --data FOLDER_OR_CSV (one per site)")
        samples = drop_duplicate_files(self.read_sources([str(s) for s in sources], tuple(recipe.data.class_names)))
        if any(s.split is None for s in samples):
            samples = patient_split(samples, tuple(recipe.data.split_fractions), seed=recipe.seed)
        if check:
            self.check_samples(samples)
        return samples

    # -------------------------------------------------------------------------------- training

    def datamodule(self, recipe: Recipe, samples: Sequence[Sample], resume_from: Path | None = None) -> ChestDataModule:
        """The training data module over ``samples`` (records with splits).

        Args:
            resume_from: the run folder being resumed (a task that writes its own files at the
                start, :meth:`save_run_files`, reads them back from it).
        """
        from chestdx.engine.datamodule import ChestDataModule

        return ChestDataModule(recipe, samples)

    def save_run_files(self, out: Path, dm: ChestDataModule) -> None:
        """Write the task's own files into a new run folder (after ``recipe.yaml`` / ``samples.csv``)."""

    def lightning_module(self, recipe: Recipe, class_counts: Sequence[int] | None) -> ChestTask:
        """The LightningModule that trains the recipe (class counts per training case, ``(K,)``)."""
        from chestdx.engine.task import ChestTask

        return ChestTask(recipe, class_counts)

    # ------------------------------------------------------------------------------ evaluation

    def eval_cases(self, recipe: Recipe, samples: list[Sample], split: str) -> tuple[list[Any], Any]:
        """The cases scored on ``split`` from its records ``samples``, and the builder's report (None:
        every record is a case)."""
        return samples, None

    def eval_dataset(self, recipe: Recipe, cases: Sequence[Any], site_names: Sequence[str] | None) -> Any:
        """The evaluation data set over ``cases``: no augmentation, no cache; items as in training."""
        from chestdx.data.datasets import SliceDataset

        return SliceDataset(cases, recipe.data, train=False, site_names=site_names or None, cache=False)

    def ensemble_dataset(self, recipe: Recipe, cases: Sequence[Any], site_names: Sequence[str] | None) -> Any:
        """The data set ``chestdx ensemble`` answers with one run (cases joined across runs by path)."""
        return self.eval_dataset(recipe, cases, site_names)

    def score_localisation(self, model: Any, loader: Any, cases: Sequence[Any], kinds: Sequence[str] = ("auto",),
                           *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any] | None:
        """The task's own maps scored against the lesion masks of ``cases`` when it does not score 2D
        heatmaps (:attr:`heatmap_localisation` False): the volume task's 3D Grad-CAM per slice, the
        lesion model's masks (:mod:`chestdx.evaluate.localisation`). None: the task has no map to score."""
        return None

    def evaluate_extra(self, ev: Evaluation) -> dict[str, Any]:
        """The task's own results, merged into ``metrics.json`` (and files written under ``ev.out``)."""
        return {}

    # ---------------------------------------------------------------------------- speed probe

    def example_shape(self, recipe: Recipe, in_chans: int = 1, batch: int | None = None) -> tuple[int, ...]:
        """The input batch the recipe's model sees (``B = data.batch_size`` unless given): the data
        section's :meth:`~chestdx.config.DataConfig.input_shape`."""
        return recipe.data.input_shape(in_chans, batch)

    # -------------------------------------------------------------------------------- serving

    def predict_images(self, predictor: Predictor, images: Any, sources: Sequence[str],
                       heatmap: bool) -> list[Prediction]:
        """Answer a preprocessed batch ``images (B, 1, S, S)`` (on the predictor's device): one
        :class:`~chestdx.predict.answers.Prediction` per image (the classifier's answer)."""
        return predictor.classify_images(images, sources, heatmap)

    def predict_study(self, predictor: Predictor, study: Study, heatmap: bool, aggregate: str,
                      max_slices: int | None, batch_size: int) -> Prediction | ScanPrediction:
        """Answer a read study: a 2D image directly, a scan slice by slice and aggregated."""
        return predictor.answer_by_slice(study, heatmap, aggregate, max_slices, batch_size)
