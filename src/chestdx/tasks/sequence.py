"""``task: sequence``: one answer per scan from a fixed-length sequence of its slices (ResNet50-ATT2 +
Bi-LSTM, the att2 paper's COVIDx-SeqCT model).

The slices of each scan are grouped and cut to ``data.sequence_length`` slices
(:func:`~chestdx.data.sequences.build_sequences`; ``data.short_scans`` skips or pads shorter
scans): in training (:class:`SequenceDataModule`, class counts per sequence), in evaluation (one
case per sequence, the builder's report under ``"sequences"`` and Fig. 6 drawings of a few
sequences in ``OUT/sequence_attention/``) and in the predictor (the sequence taken uniformly from the
scan, one forward). ``chestdx ensemble`` does not take sequence runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from chestdx.config import SequenceDataConfig
from chestdx.engine.datamodule import ChestDataModule
from chestdx.errors import ConfigError, DatasetError
from chestdx.tasks.base import Evaluation, Task

if TYPE_CHECKING:
    from chestdx.config import Recipe
    from chestdx.data.layouts import Sample
    from chestdx.predict.answers import Prediction, ScanPrediction
    from chestdx.predict.inputs import Study
    from chestdx.predict.predictor import Predictor

log = logging.getLogger(__name__)


def _data(recipe: Recipe) -> SequenceDataConfig:
    return cast(SequenceDataConfig, recipe.data)


class SequenceDataModule(ChestDataModule):
    """The data module over sequences: batches ``image (B, T, 1, S, S)`` (or ``(B, T, D)``
    embeddings with ``model.params.precompute_embeddings``); class counts per sequence.

    Attributes:
        sequences: the sequences of every split; ``sequence_report`` the builder's report.
    """

    def build_cases(self) -> list[Any]:
        from chestdx.data.sequences import build_sequences

        cfg = _data(self.recipe)
        self.sequences, self.sequence_report = build_sequences(self.samples, cfg.sequence_length,
                                                               cfg.short_scans)
        if self.sequence_report.skipped_short:
            log.warning("sequences: skipped %d of %d scans with fewer than %d slices "
                        "(data.short_scans=repeat keeps them)", self.sequence_report.skipped_short,
                        self.sequence_report.scans, cfg.sequence_length)
        return list(self.sequences)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        seq: dict[str, Any] = {"report": self.sequence_report.to_dict()}
        for q in self.sequences:
            d = seq.setdefault(q.split or "none", {"total": 0, "per_class": {}})
            d["total"] += 1
            name = self.cfg.class_names[q.label]
            d["per_class"][name] = d["per_class"].get(name, 0) + 1
        out["sequences"] = seq
        return out

    def make_dataset(self, split: str, train: bool) -> Any:
        from chestdx.data.sequences import SequenceDataset

        return SequenceDataset(self.split_samples(split), self.cfg, train=train,
                               site_names=self.site_names, encoder=self.frozen_encoder())

    def frozen_encoder(self) -> Any:
        """The encoder whose embeddings are precomputed (``model.params.precompute_embeddings``),
        or None."""
        params = self.recipe.model.params
        if not params.get("precompute_embeddings"):
            return None
        if not hasattr(self, "_encoder"):
            from chestdx.models.sequence import load_encoder

            log.warning("sequences: slice embeddings precomputed once by the frozen encoder; the "
                        "training augmentation is not applied")
            self._encoder = load_encoder(str(params.get("encoder", "none")), self.recipe.model)[0]
        return self._encoder


class Sequences(Task):
    """Slice sequences: one model input ``(B, T, C, S, S)``, one case per scan."""

    name = "sequence"
    data_config = SequenceDataConfig
    input_kind = "sequence"
    case_unit = "sequence"
    heatmap_localisation = False
    scan_aggregation = False

    def datamodule(self, recipe: Recipe, samples: Sequence[Sample], resume_from: Path | None = None) -> ChestDataModule:
        return SequenceDataModule(recipe, samples)

    # ------------------------------------------------------------------------------ evaluation

    def eval_cases(self, recipe: Recipe, samples: list[Sample], split: str) -> tuple[list[Any], Any]:
        """The sequences of the split's scans, and the builder's :class:`~chestdx.data.sequences.SequenceReport`.

        Raises:
            DatasetError: no scan of the split makes a sequence.
        """
        from chestdx.data.sequences import build_sequences

        cfg = _data(recipe)
        cases, report = build_sequences(samples, cfg.sequence_length, cfg.short_scans)
        if not cases:
            raise DatasetError(f"no '{split}' scan has {cfg.sequence_length} slices "
                               f"({report.skipped_short} skipped); set data.short_scans=repeat to pad them")
        return cases, report

    def eval_dataset(self, recipe: Recipe, cases: Sequence[Any], site_names: Sequence[str] | None) -> Any:
        from chestdx.data.sequences import SequenceDataset

        return SequenceDataset(cases, recipe.data, train=False, site_names=site_names or None, cache=False)

    def ensemble_dataset(self, recipe: Recipe, cases: Sequence[Any], site_names: Sequence[str] | None) -> Any:
        """Refused: an ensemble joins runs' answers per scan path, a sequence run answers sequences.

        Raises:
            ConfigError: always.
        """
        raise ConfigError("chestdx ensemble: sequence runs are not supported (score them with evaluate)")

    def evaluate_extra(self, ev: Evaluation) -> dict[str, Any]:
        """``{"sequences": the builder's report}``; Fig. 6 drawings of the first sequences in
        ``OUT/sequence_attention/``."""
        from chestdx.engine.precision import running

        with running(ev.model, ev.mode, ev.device):
            sequence_figures(ev.model, ev.dataset, ev.out / "sequence_attention", ev.class_names)
        return {"sequences": ev.report.to_dict()}

    # -------------------------------------------------------------------------------- serving

    def predict_images(self, predictor: Predictor, images: Any, sources: Sequence[str],
                       heatmap: bool) -> list[Prediction]:
        """Refused: a sequence model answers scans.

        Raises:
            ConfigError: always.
        """
        raise ConfigError("a sequence model answers scans (a series folder, zip, NIfTI, slice folder or "
                          "(D, H, W) array), not single 2D images")

    def predict_study(self, predictor: Predictor, study: Study, heatmap: bool, aggregate: str,
                      max_slices: int | None, batch_size: int) -> Prediction | ScanPrediction:
        """``data.sequence_length`` slices taken uniformly from the scan
        (:func:`~chestdx.data.sequences.uniform_indices`; a shorter scan repeats slices), one forward
        of the sequence model. ``slice_weights`` are its soft-attention weights; with ``heatmap``
        each slice's map is the encoder's ATT2 attention ``sqrt(a1 * a2)`` (Fig. 6 draws them weighted
        by ``slice_weights``). Every slice carries the scan's probabilities; ``aggregation`` is
        ``"sequence"`` (``aggregate`` and ``max_slices`` do not apply).

        Raises:
            ConfigError: a single 2D image given to a sequence model.
        """
        import torch

        from chestdx.data.sequences import uniform_indices
        from chestdx.explain.attention_masks import combine_attention
        from chestdx.predict.answers import Prediction, ScanPrediction, unit_scale

        if study.kind == "image":
            raise ConfigError(f"{study.name}: a sequence model answers scans (a series folder, zip, NIfTI, slice "
                              "folder or (D, H, W) array), not a single 2D image")
        idx = uniform_indices(study.array.shape[0], _data(predictor.recipe).sequence_length)
        x = torch.stack([predictor.preprocess_array(study.array[i], f"{study.name}[{i}]") for i in idx])  # (T, 1, S, S)
        with predictor.lock, torch.no_grad(), predictor.speed.run(x[None].to(predictor.device)) as xs:
            out = predictor.model(xs)
        probs = out.probs.float().cpu().numpy()[0]
        pdict, label = predictor.named(probs)
        weights = out.maps["sequence_attention"][0].float().cpu().tolist()
        maps = None
        if heatmap and "att1" in out.maps and "att2" in out.maps:
            m = combine_attention(out.maps["att1"][0], out.maps["att2"][0], x.shape[-2:])
            maps = (m / m.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]).cpu().numpy()
        det = {"heatmap_kind": "att2"} if maps is not None else {}
        slices = [Prediction(source=f"{study.name}[{i}]", probs=pdict, label=label,
                             heatmap=None if maps is None else maps[t],
                             image=unit_scale(x[t, 0].numpy()) if heatmap else None,
                             details={**det, "attention_weight": weights[t]})
                  for t, i in enumerate(idx)]
        return ScanPrediction(source=study.name, probs=pdict, label=label, aggregation="sequence",
                              slice_indices=list(idx), slices=slices, meta=study.meta, slice_weights=weights)


def sequence_figures(model: Any, ds: Any, folder: Path, class_names: Sequence[str], n: int = 3) -> None:
    """Fig. 6 for the first ``n`` sequences of ``ds`` (a :class:`~chestdx.data.sequences.SequenceDataset`,
    items ``image (T, 1, S, S)``): slice attention maps weighted by the sequence attention, one PNG each."""
    import torch

    from chestdx.engine.device import model_device, to_device
    from chestdx.explain.attention_masks import (
        combine_attention,
        has_attention_maps,
        sequence_attention_figure,
    )

    for i in range(min(n, len(ds))):
        item = ds[i]
        with torch.no_grad():
            out = to_device(model(item["image"][None].to(model_device(model))), "cpu")
        images = item["image"][:, 0]  # (T, S, S)
        if has_attention_maps({k: v for k, v in out.maps.items()}):
            slice_maps = combine_attention(out.maps["att1"][0], out.maps["att2"][0], images.shape[-2:])
        else:
            slice_maps = torch.ones_like(images)
        seq = ds.sequences[i]
        pred = class_names[int(out.probs[0].argmax())]
        sequence_attention_figure(images.numpy(), slice_maps.numpy(), out.maps["sequence_attention"][0].numpy(),
                                  folder / f"sequence_{i:03d}.png",
                                  title=f"{seq.scan_id}: label {class_names[seq.label]}, predicted {pred}")
