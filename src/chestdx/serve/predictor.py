"""Answer new images and scans with a trained model (a bundle or a run folder).

``chestdx.load_model(path)`` returns a :class:`Predictor`; ``predict(x)`` takes a path, a numpy array
or a PIL image and returns a :class:`Prediction` (one 2D image) or a :class:`ScanPrediction` (a 3D
scan: a DICOM series, NIfTI, zip, folder of slices, ``(D, H, W)`` array), both with probabilities,
label, heatmaps and the procedure's details (e.g. CAM voting's flip flag).

A slice model answers a scan slice by slice and aggregates (``mean`` probability by default,
``majority`` vote or ``max``; see :func:`chestdx.evaluate.metrics.aggregate`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chestdx.data.transforms import LoadPreprocess
from chestdx.engine.infer import run_procedure
from chestdx.errors import ChestdxError, ConfigError, DataError
from chestdx.serve.inputs import Study, load_study

__all__ = ["Prediction", "ScanPrediction", "Predictor", "load_model"]


def _unit(x: np.ndarray) -> np.ndarray:
    return ((x - x.min()) / (x.max() - x.min() + 1e-8)).astype(np.float32)


@dataclass
class Prediction:
    """One answered 2D image.

    Attributes:
        source: the file (or a name for an in-memory input).
        probs: class name -> probability.
        label: the predicted class name.
        heatmap: ``(S, S)`` map in ``[0, 1]`` at model resolution, where asked for: CAM, or the
            model's own attention for ATT2 / MAG-SD (``details["heatmap_kind"]``).
        image: ``(S, S)`` the preprocessed image scaled to ``[0, 1]`` (for overlays), with a heatmap.
        details: procedure extras (CAM voting: ``flipped``, ``vote_probs`` of the k masked copies).
    """

    source: str
    probs: dict[str, float]
    label: str
    heatmap: np.ndarray | None = None
    image: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)
    kind: str = "image"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.source, "kind": self.kind, "label": self.label, "probs": self.probs, **self.details}


@dataclass
class ScanPrediction:
    """One answered 3D scan.

    Attributes:
        source: the scan (folder, zip, NIfTI, ...).
        probs: class name -> scan-level probability (after ``aggregation``).
        label: the scan-level class.
        aggregation: ``mean``, ``majority`` or ``max``.
        slice_indices: ``N`` indices into the scan's ``D`` slices that were answered.
        slices: the ``N`` per-slice answers (each with its heatmap and image when asked for).
        meta: how the scan was read (series, spacing, slice files).
        slice_weights: a sequence model's attention weight of each answered slice (sums to 1).
        warning: the out-of-distribution warning when most answered slices look unlike the training
            images (:mod:`chestdx.serve.ood`), else None.
    """

    source: str
    probs: dict[str, float]
    label: str
    aggregation: str
    slice_indices: list[int]
    slices: list[Prediction]
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = "volume"
    slice_weights: list[float] | None = None
    warning: str | None = None

    @property
    def heatmaps(self) -> np.ndarray | None:
        """``(N, S, S)`` per-slice heatmaps, or None."""
        maps = [s.heatmap for s in self.slices]
        return None if not maps or maps[0] is None else np.stack(maps)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        return {"file": self.source, "kind": self.kind, "label": self.label, "probs": self.probs,
                "aggregation": self.aggregation, "n_slices": len(self.slices),
                "slice_indices": self.slice_indices,
                "slice_labels": [s.label for s in self.slices],
                "slice_probs": [[round(v, 6) for v in s.probs.values()] for s in self.slices],
                **({"slice_attention": self.slice_weights} if self.slice_weights is not None else {}),
                **({"warning": self.warning} if self.warning else {}),
                "meta": self.meta}


class Predictor:
    """A trained model ready to answer images and scans.

    Args:
        model_path: a bundle (``chestdx export``) or a run folder (``chestdx train``).
        which: for a run folder, ``best`` or ``last`` checkpoint.
        procedure: inference procedure; default the recipe's (e.g. ``cam_voting`` for the full
            cam-snapmix method).
        device: ``cpu`` or ``cuda``.
        lesion_score_threshold: lesion models: detections scoring at least this are listed and
            drawn (in [0, 1]; default 0.5).
        speed: execution mode setting (``auto``, ``fp32``, ``channels_last+bf16``, ...; see
            :mod:`chestdx.engine.precision`); default the recipe's ``inference.speed``, which a
            bundle carries. ``auto`` is resolved on this machine (cached per machine), once for
            single images and once for batches. Lesion detection always runs in fp32.
    """

    def __init__(self, model_path: str | Path, which: str = "best", procedure: str | None = None,
                 device: str = "cpu", lesion_score_threshold: float = 0.5, speed: str | None = None):
        from chestdx.engine.run import Run
        from chestdx.serve.bundle import load_any

        if isinstance(model_path, Run):
            model_path = model_path.path
        recipe, model, class_names, card = load_any(model_path, which)
        self._setup(recipe, model, class_names, card, procedure, device, speed)
        self.path = Path(model_path)
        if not 0.0 <= lesion_score_threshold <= 1.0:
            raise ConfigError(f"lesion score threshold must be in [0, 1], got {lesion_score_threshold}")
        self.lesion_score_threshold = float(lesion_score_threshold)

    @classmethod
    def from_model(cls, recipe: Any, model: Any, card: dict[str, Any] | None = None,
                   procedure: str | None = None, device: str = "cpu", speed: str | None = None) -> Predictor:
        """A predictor around a model in memory (e.g. freshly built for a benchmark)."""
        self = cls.__new__(cls)
        names = list(recipe.data.class_names)
        self._setup(recipe, model, names, card or {"name": recipe.name, "class_names": names}, procedure, device,
                    speed)
        self.path = Path(".")
        return self

    def _setup(self, recipe: Any, model: Any, class_names: Sequence[str], card: dict[str, Any],
               procedure: str | None, device: str, speed: str | None = None) -> None:
        from chestdx.engine.precision import InferenceSpeed

        if recipe.task not in ("slice", "cxr", "lesion", "volume", "sequence"):
            raise ConfigError(f"the predictor answers slice, X-ray, lesion, volume and sequence models; this model's task is "
                              f"{recipe.task!r}")
        self.recipe = recipe
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.class_names = list(class_names)
        self.card = card
        self.procedure = procedure or recipe.inference.name
        self.params = dict(recipe.inference.params) if self.procedure == recipe.inference.name else {}
        self._pre = LoadPreprocess(recipe.data)
        self.heatmap_kind = "auto"  # see chestdx.explain.heatmap: ATT2 / MAG-SD attention, else CAM
        self.lesion_score_threshold = 0.5  # task lesion: detections shown / listed from this score
        self._lock = threading.Lock()  # one forward at a time on a shared model
        self.speed = InferenceSpeed(self.model, speed or getattr(recipe.inference, "speed", "auto"), self.device)
        """The execution mode control; ``self.speed.modes`` holds what ``auto`` chose per shape."""

    def resolve_speed(self, batch_sizes: Sequence[int] = (1, 16)) -> dict[str, str]:
        """Resolve the execution mode now for inputs of these batch sizes (``auto`` measures here, once
        per machine, instead of on the first answer); returns ``{shape key: mode name}``."""
        cfg, c = self.recipe.data, int(getattr(self.model, "in_chans", 1))
        for b in batch_sizes if self.recipe.task not in ("volume", "sequence") else (1,):
            shape = {"volume": (1, c, cfg.volume_depth, cfg.image_size, cfg.image_size),
                     "sequence": (1, cfg.sequence_length, c, cfg.image_size, cfg.image_size)}.get(
                         self.recipe.task, (b, c, cfg.image_size, cfg.image_size))
            with self._lock:
                self.speed.mode_for(shape)
        return {k: m.name for k, m in self.speed.modes.items()}

    def _input_check(self, x: torch.Tensor) -> dict[str, Any]:
        """``{"input_check": ..., "warning": ...}`` for one model input ``(S, S)`` against the training
        images' profile (:mod:`chestdx.serve.ood`); empty without a profile (run folders, 3D models)."""
        from chestdx.serve.ood import check_input, warning_text

        res = check_input(x.float().cpu().numpy(), (self.card or {}).get("input_profile"))
        if res is None:
            return {}
        out: dict[str, Any] = {"input_check": res}
        text = warning_text(res)
        if text:
            out["warning"] = text
        return out

    def _named(self, probs: np.ndarray) -> tuple[dict[str, float], str]:
        """``(K,)`` probabilities -> ``({class: p}, the argmax class)``."""
        return {c: float(p) for c, p in zip(self.class_names, probs, strict=True)}, self.class_names[int(probs.argmax())]

    @property
    def hu_window(self) -> tuple[float, float] | None:
        w = self.recipe.data.hu_window
        return None if w is None else (float(w[0]), float(w[1]))

    # ------------------------------------------------------------------------------ preprocessing

    def preprocess(self, path: str | Path) -> torch.Tensor:
        """Read and preprocess one image file to ``(1, S, S)``.

        Raises:
            DataError: unreadable file (names it).
        """
        return self._pre({"path": str(path), "box": None, "mask": None})["image"]

    def preprocess_array(self, img: np.ndarray, source: str = "array") -> torch.Tensor:
        """Preprocess a read ``(H, W)`` image (HU window already applied) to ``(1, S, S)``."""
        return torch.from_numpy(self._pre.prepare(img, source))[None]

    def slice_batch(self, study: Study, max_slices: int | None = None) -> tuple[torch.Tensor, list[int]]:
        """The preprocessed slices ``(N, 1, S, S)`` of a scan and their indices (``N <= max_slices``,
        evenly spaced when the scan has more)."""
        d = study.array.shape[0]
        idx = list(range(d))
        if max_slices is not None and d > max_slices:
            idx = sorted({int(round(v)) for v in np.linspace(0, d - 1, max_slices)})
        return torch.stack([self.preprocess_array(study.array[i], f"{study.name}[{i}]") for i in idx]), idx

    # ----------------------------------------------------------------------------------- answers

    def predict_tensor(self, images: torch.Tensor, sources: Sequence[str], heatmap: bool = False) -> list[Prediction]:
        """Answer a preprocessed batch ``(B, 1, S, S)``: one :class:`Prediction` per image."""
        images = images.to(self.device)
        if self.recipe.task == "lesion":
            return self._predict_lesions(images, sources, heatmap)
        with self._lock, self.speed.run(images) as x:  # the execution mode (engine/precision.py)
            res = run_procedure(self.procedure, self.params, self.model, x)
            maps, kind = None, None
            if heatmap:  # the procedure's own forward pass serves the heatmap too
                from chestdx.explain.heatmap import heatmap as explain

                hm, kind = explain(self.model, x, self.heatmap_kind, out=res.output)
                maps = hm.float().cpu().numpy()
        probs = res.probs.float().cpu().numpy()
        out = []
        for i, src in enumerate(sources):
            det: dict[str, Any] = {k: v[i].item() if v[i].numel() == 1 else v[i].tolist()
                                   for k, v in res.details.items()}
            if kind is not None:
                from chestdx.explain.heatmap import heatmap_grid

                det["heatmap_kind"] = kind
                grid = heatmap_grid(self.model, kind, (int(images.shape[-2]), int(images.shape[-1])))
                if grid is not None:
                    det["heatmap_grid"] = list(grid)  # the map's own grid before upsampling
            det.update(self._input_check(images[i, 0]))
            pdict, label = self._named(probs[i])
            out.append(Prediction(
                source=src, probs=pdict, label=label,
                heatmap=None if maps is None else _unit(maps[i]),
                image=_unit(images[i, 0].cpu().numpy()) if heatmap else None, details=det,
            ))
        return out

    def _predict_lesions(self, images: torch.Tensor, sources: Sequence[str], heatmap: bool) -> list[Prediction]:
        """``task: lesion`` (affinity model): the class answer plus the segmented lesions.

        ``details["lesions"]`` lists ``{"box": [x0, y0, x1, y1], "score", "area"}`` (model pixels) of
        the detections scoring at least ``lesion_score_threshold``; with ``heatmap`` the union of
        their masks is the ``heatmap`` (``details["heatmap_kind"] = "lesion_mask"``).
        """
        from chestdx.evaluate.lesion import predict_lesions

        with self._lock, torch.no_grad():
            probs = self.model(images).probs.float().cpu().numpy()
            found = predict_lesions(self.model, images, score_threshold=self.lesion_score_threshold)
        out = []
        for i, src in enumerate(sources):
            f = found[i]
            det: dict[str, Any] = {"lesions": [
                {"box": [round(float(v), 1) for v in b], "score": round(float(sc), 4), "area": int(m.sum())}
                for b, sc, m in zip(f["boxes"], f["scores"], f["masks"], strict=True)]}
            union = f["masks"].any(0) if len(f["masks"]) else np.zeros(images.shape[-2:], bool)
            if heatmap:
                det["heatmap_kind"] = "lesion_mask"
            det.update(self._input_check(images[i, 0]))
            pdict, label = self._named(probs[i])
            out.append(Prediction(
                source=src, probs=pdict, label=label,
                heatmap=np.asarray(union, dtype=np.float32) if heatmap else None,
                image=_unit(images[i, 0].cpu().numpy()) if heatmap else None, details=det,
            ))
        return out

    def predict_study(self, study: Study, heatmap: bool = True, aggregate: str = "mean",
                      max_slices: int | None = None, batch_size: int = 32) -> Prediction | ScanPrediction:
        """Answer a read :class:`~chestdx.serve.inputs.Study` (image or scan)."""
        if self.recipe.task == "volume":
            return self._predict_volume(study, heatmap)
        if self.recipe.task == "sequence":
            return self._predict_sequence(study, heatmap)
        if study.kind == "image":
            x = self.preprocess_array(study.array, study.name)[None]
            answer = self.predict_tensor(x, [study.name], heatmap=heatmap)[0]
            if heatmap:  # overlays are drawn at the image's own size (evaluate/plots.py overlay_answer)
                answer.details["image_size"] = [int(v) for v in study.array.shape[-2:]]
            return answer
        x, idx = self.slice_batch(study, max_slices)
        slices: list[Prediction] = []
        for s in range(0, len(idx), batch_size):
            slices += self.predict_tensor(x[s:s + batch_size], [f"{study.name}[{i}]" for i in idx[s:s + batch_size]],
                                          heatmap=heatmap)
        if heatmap:
            for sl in slices:
                sl.details["image_size"] = [int(v) for v in study.array.shape[-2:]]
        return self.scan_answer(study, slices, idx, aggregate)

    def _predict_volume(self, study: Study, heatmap: bool) -> ScanPrediction:
        """``task: volume`` (a 3D model, CMC-COV19D): one forward on the whole preprocessed volume.

        The scan (already HU-windowed by :func:`~chestdx.serve.inputs.load_study`) is resized to
        ``(data.volume_depth, S, S)`` and scaled to ``[0, 1]`` as in training
        (:func:`~chestdx.data.volume_dataset.preprocess_volume`); the recipe's procedure answers it
        (``plain`` or ``intra_ensemble``). ``slices`` holds one :class:`Prediction` per resized slice,
        each with the scan's probabilities and, with ``heatmap``, that slice of the 3D Grad-CAM
        (:func:`~chestdx.explain.cam.volume_cam`, scaled over the whole volume);
        ``slice_indices`` maps them to the nearest slices of the original scan; ``aggregation`` is
        ``"volume"`` (nothing to aggregate).

        Raises:
            ConfigError: a single 2D image given to a 3D model.
        """
        from chestdx.data.volume_dataset import preprocess_volume
        from chestdx.explain.cam import volume_cam

        if study.kind == "image":
            raise ConfigError(f"{study.name}: a 3D model answers scans (a series folder, zip, NIfTI, slice "
                              "folder or (D, H, W) array), not a single 2D image")
        cfg = self.recipe.data
        vol = preprocess_volume(study.array, (cfg.volume_depth, cfg.image_size, cfg.image_size), study.name)
        x = vol[None, None].to(self.device)
        with self._lock, self.speed.run(x) as xm:
            res = run_procedure(self.procedure, self.params, self.model, xm)
            maps = volume_cam(self.model, xm)[0].float().cpu().numpy() if heatmap else None
        probs = res.probs.float().cpu().numpy()[0]
        pdict, label = self._named(probs)
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

    def _predict_sequence(self, study: Study, heatmap: bool) -> ScanPrediction:
        """``task: sequence`` (ATT2 + Bi-LSTM): ``data.sequence_length`` slices taken uniformly from
        the scan (:func:`~chestdx.data.sequences.uniform_indices`; a shorter scan repeats slices),
        one forward of the sequence model. ``slice_weights`` are its soft-attention weights; with
        ``heatmap`` each slice's map is the encoder's ATT2 attention ``sqrt(a1 * a2)`` (Fig. 6 draws
        them weighted by ``slice_weights``). Every slice carries the scan's probabilities;
        ``aggregation`` is ``"sequence"``.

        Raises:
            ConfigError: a single 2D image given to a sequence model.
        """
        from chestdx.data.sequences import uniform_indices
        from chestdx.explain.attention_masks import combine_attention

        if study.kind == "image":
            raise ConfigError(f"{study.name}: a sequence model answers scans (a series folder, zip, NIfTI, slice "
                              "folder or (D, H, W) array), not a single 2D image")
        idx = uniform_indices(study.array.shape[0], self.recipe.data.sequence_length)
        x = torch.stack([self.preprocess_array(study.array[i], f"{study.name}[{i}]") for i in idx])  # (T, 1, S, S)
        with self._lock, torch.no_grad(), self.speed.run(x[None].to(self.device)) as xs:
            out = self.model(xs)
        probs = out.probs.float().cpu().numpy()[0]
        pdict, label = self._named(probs)
        weights = out.maps["sequence_attention"][0].float().cpu().tolist()
        maps = None
        if heatmap and "att1" in out.maps and "att2" in out.maps:
            m = combine_attention(out.maps["att1"][0], out.maps["att2"][0], x.shape[-2:])
            maps = (m / m.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]).cpu().numpy()
        det = {"heatmap_kind": "att2"} if maps is not None else {}
        slices = [Prediction(source=f"{study.name}[{i}]", probs=pdict, label=label,
                             heatmap=None if maps is None else maps[t],
                             image=_unit(x[t, 0].numpy()) if heatmap else None,
                             details={**det, "attention_weight": weights[t]})
                  for t, i in enumerate(idx)]
        return ScanPrediction(source=study.name, probs=pdict, label=label, aggregation="sequence",
                              slice_indices=list(idx), slices=slices, meta=study.meta, slice_weights=weights)

    def scan_answer(self, study: Study, slices: list[Prediction], idx: list[int], aggregate: str) -> ScanPrediction:
        """Aggregate per-slice answers to the scan (see :func:`chestdx.evaluate.metrics.aggregate`)."""
        from chestdx.evaluate.metrics import aggregate as aggregate_probs

        p = np.array([[s.probs[c] for c in self.class_names] for s in slices])
        _, pg, _ = aggregate_probs(p, [0] * len(slices), how=aggregate)  # type: ignore[arg-type]
        pdict, label = self._named(pg[0])
        flagged = [s for s in slices if s.details.get("warning")]
        warning = None
        if len(flagged) * 2 > len(slices):  # most slices unlike the training images
            from chestdx.serve.ood import warning_text

            worst = max(flagged, key=lambda s: len(s.details["input_check"]["outside"]))
            warning = warning_text(worst.details["input_check"], len(slices), len(flagged))
        return ScanPrediction(source=study.name, probs=pdict, label=label, aggregation=aggregate,
                              slice_indices=idx, slices=slices, meta=study.meta, warning=warning)

    def predict(self, x: Any, heatmap: bool = True, aggregate: str = "mean",
                max_slices: int | None = None, series_uid: str | None = None) -> Prediction | ScanPrediction:
        """Answer one input.

        Args:
            x: a path (image, DICOM file or series folder, NIfTI, zip, ``.npy``, folder of slices),
                a numpy array ``(H, W)`` or ``(D, H, W)``, or a PIL image.
            heatmap: compute the CAM heatmap(s).
            aggregate: how slice answers make the scan's (``mean``, ``majority``, ``max``).
            max_slices: answer at most this many evenly spaced slices of a scan.
            series_uid: for a folder holding several DICOM series, the one to answer.

        Raises:
            DataError: unreadable input (names it).
        """
        return self.predict_study(load_study(x, self.hu_window, series_uid=series_uid), heatmap, aggregate,
                                  max_slices)

    def predict_files(self, paths: Iterable[str | Path], batch_size: int = 16, heatmap: bool = False,
                      errors: list[tuple[str, str]] | None = None, aggregate: str = "mean",
                      max_slices: int | None = None, series_uid: str | None = None
                      ) -> Iterator[Prediction | ScanPrediction]:
        """Answer many inputs: 2D images in batches, scans one at a time. A bad input is recorded
        in ``errors`` as ``(path, problem)`` and skipped (raised when ``errors`` is None): any
        failure reading or answering one input, typed or not, never costs the others their answers.

        Yields:
            one answer per readable input, in order.
        """
        from chestdx.io.volumes import is_volume_input

        buf: list[tuple[str, torch.Tensor]] = []

        def flush() -> Iterator[Prediction]:
            if buf:
                x = torch.stack([t for _, t in buf])
                yield from self.predict_tensor(x, [s for s, _ in buf], heatmap=heatmap)
                buf.clear()

        for p in paths:
            try:
                if is_volume_input(p) or self.recipe.task in ("volume", "sequence"):
                    yield from flush()
                    study = load_study(p, self.hu_window, name=str(p), series_uid=series_uid)
                    yield self.predict_study(study, heatmap, aggregate, max_slices, batch_size)
                    continue
                buf.append((str(p), self.preprocess(p)))
            except ChestdxError as e:
                if errors is None:
                    raise
                errors.append((str(p), str(e)))
            except Exception as e:  # noqa: BLE001 - one bad input must not cost the others their answers
                if errors is None:
                    raise DataError(p, f"cannot answer ({type(e).__name__}: {str(e)[:300]})") from e
                errors.append((str(p), f"{p}: cannot answer ({type(e).__name__}: {str(e)[:300]})"))
            if len(buf) >= batch_size:
                yield from flush()
        yield from flush()


def load_model(path: str | Path, procedure: str | None = None, device: str = "cpu",
               speed: str | None = None) -> Predictor:
    """Load a bundle (``chestdx export``) or a run folder, ready to ``predict``.

    Example::

        model = chestdx.load_model("model/")
        answer = model.predict("scan.nii.gz")      # ScanPrediction
        print(answer.label, answer.probs)

    Raises:
        BundleError / RunError: not a bundle or run, or a bundle from an incompatible chestdx.
    """
    return Predictor(path, procedure=procedure, device=device, speed=speed)
