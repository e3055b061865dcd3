"""Answer new images and scans with a trained model (a bundle or a run folder).

``chestdx.load_model(path)`` returns a :class:`Predictor`; ``predict(x)`` takes a path, a numpy array
or a PIL image and returns a :class:`Prediction` (one 2D image) or a :class:`ScanPrediction` (a 3D
scan: a DICOM series, NIfTI, zip, folder of slices, ``(D, H, W)`` array), both with probabilities,
label, heatmaps and the procedure's details (e.g. CAM voting's flip flag).

How a model answers depends on its task (:mod:`chestdx.tasks`: ``Task.predict_images`` /
``Task.predict_study``): a 2D model (``slice``, ``lesion``) answers an image directly and a scan slice
by slice, aggregated (``mean`` probability by default, ``majority`` vote or ``max``; see
:func:`chestdx.evaluate.metrics.aggregate`); a lesion model also lists the segmented lesions; a
volume model answers a scan in one forward of the whole volume, a sequence model one forward of a
sequence of its slices.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from chestdx.data.transforms import LoadPreprocess
from chestdx.engine.infer import procedure_params, run_procedure
from chestdx.errors import ChestdxError, ConfigError, DataError
from chestdx.predict.answers import Prediction, ScanPrediction, unit_scale
from chestdx.predict.inputs import Study, load_study

if TYPE_CHECKING:
    from chestdx.config import Recipe

__all__ = ["Prediction", "ScanPrediction", "Predictor", "load_model"]


class Predictor:
    """A trained model ready to answer images and scans.

    Args:
        model_path: a bundle (``chestdx export``) or a run folder (``chestdx train``).
        which: for a run folder, ``best`` or ``last`` checkpoint.
        procedure: inference procedure; default the recipe's (e.g. ``cam_voting`` for the full
            cam-snapmix method).
        device: where the model runs: a :class:`torch.device` or an accelerator (``cpu``,
            ``cuda``, ``cuda:1``, ``gpu``, ``mps``, ``auto`` = CUDA where available;
            :func:`chestdx.engine.device.resolve_device`). Inputs go there, answers come back as
            CPU numpy arrays.
        lesion_score_threshold: lesion models: detections scoring at least this are listed and
            drawn (in [0, 1]; default 0.5).
        speed: execution mode setting (``auto``, ``fp32``, ``channels_last+bf16``, ...; see
            :mod:`chestdx.engine.precision`); default the recipe's ``inference.speed``, which a
            bundle carries. ``auto`` is resolved on this machine (cached per machine), once for
            single images and once for batches. Lesion detection always runs in fp32.
        heatmap_kind: the map drawn with an answer (:data:`chestdx.explain.heatmap.HEATMAP_KINDS`):
            ``auto`` (default: the measured best, ``intgrad`` for 2D CNNs, 2 Riemann points) or a
            cheaper one, e.g. ``layercam8`` (one forward + backward: about 2.3x faster for
            EfficientNet-Lite0 at 224 px, docs/results.md). A kind the model cannot give is refused
            on the first map (ConfigError).

    Raises:
        ConfigError: an unknown ``heatmap_kind`` or a bad ``lesion_score_threshold``.
    """

    def __init__(self, model_path: str | Path, which: str = "best", procedure: str | None = None,
                 device: Any = "cpu", lesion_score_threshold: float = 0.5, speed: str | None = None,
                 heatmap_kind: str = "auto"):
        from chestdx.engine.run import Run
        from chestdx.explain.heatmap import check_heatmap_kinds
        from chestdx.predict.bundle import load_any

        check_heatmap_kinds(heatmap_kind)  # before the model loads
        if isinstance(model_path, Run):
            model_path = model_path.path
        recipe, model, class_names, card = load_any(model_path, which)
        self._setup(recipe, model, class_names, card, procedure, device, speed, heatmap_kind)
        self.path = Path(model_path)
        if not 0.0 <= lesion_score_threshold <= 1.0:
            raise ConfigError(f"lesion score threshold must be in [0, 1], got {lesion_score_threshold}")
        self.lesion_score_threshold = float(lesion_score_threshold)

    @classmethod
    def from_model(cls, recipe: Recipe, model: Any, card: dict[str, Any] | None = None,
                   procedure: str | None = None, device: Any = "cpu", speed: str | None = None) -> Predictor:
        """A predictor around a model in memory (e.g. freshly built for a benchmark)."""
        self = cls.__new__(cls)
        names = list(recipe.data.class_names)
        self._setup(recipe, model, names, card or {"name": recipe.name, "class_names": names}, procedure, device,
                    speed)
        self.path = Path(".")
        return self

    def _setup(self, recipe: Recipe, model: Any, class_names: Sequence[str], card: dict[str, Any],
               procedure: str | None, device: Any, speed: str | None = None, heatmap_kind: str = "auto") -> None:
        from chestdx.engine.device import resolve_device
        from chestdx.engine.precision import InferenceSpeed
        from chestdx.tasks import get_task

        self.task = get_task(recipe)
        """The recipe's task object: how this model answers (:meth:`~chestdx.tasks.base.Task.predict_study`)."""
        self.recipe = recipe
        self.device = resolve_device(device, flag="device")
        self.model = model.to(self.device).eval()
        self.class_names = list(class_names)
        self.card = card
        self.procedure = procedure or recipe.inference.name
        self.params = procedure_params(recipe, self.procedure)  # intra_ensemble: the run's own training views
        self._pre = LoadPreprocess(recipe.data)
        self.heatmap_kind = heatmap_kind  # auto: chestdx.explain.heatmap.auto_kind, the measured best map per model
        self.lesion_score_threshold = 0.5  # task lesion: detections shown / listed from this score
        self.lock = threading.Lock()
        """Held around every forward: one at a time on a shared model."""
        self.speed = InferenceSpeed(self.model, speed or getattr(recipe.inference, "speed", "auto"), self.device)
        """The execution mode control; ``self.speed.modes`` holds what ``auto`` chose per shape."""

    def resolve_speed(self, batch_sizes: Sequence[int] = (1, 16)) -> dict[str, str]:
        """Resolve the execution mode now for inputs of these batch sizes (``auto`` measures here, once
        per machine, instead of on the first answer); returns ``{shape key: mode name}`` (the key of an
        answer with a stage heatmap ends in `` fp32``: :meth:`classify_images`)."""
        from chestdx.engine.infer import pass_batch
        from chestdx.explain.heatmap import float32_map

        c = int(getattr(self.model, "in_chans", 1))
        for b in batch_sizes if self.task.per_slice else (1,):  # a scan model answers one scan at a time
            shape = self.task.example_shape(self.recipe, c, b)
            with self.lock:
                self.speed.mode_for((pass_batch(self.procedure, self.params, shape[0]), *shape[1:]))
                own = float32_map(self.model, self.heatmap_kind, len(shape))
                if self.procedure == "plain" and own is not None:  # answers with their heatmap
                    self.speed.mode_for((shape[0] * own[1], *shape[1:]), exact=True)
        return {k: m.name for k, m in self.speed.modes.items()}

    def input_check(self, x: torch.Tensor) -> dict[str, Any]:
        """``{"input_check": ..., "warning": ...}`` for one model input ``(S, S)`` against the training
        images' profile (:mod:`chestdx.predict.ood`); empty without a profile (run folders, 3D models)."""
        from chestdx.predict.ood import check_input, warning_text

        res = check_input(x.float().cpu().numpy(), (self.card or {}).get("input_profile"))
        if res is None:
            return {}
        out: dict[str, Any] = {"input_check": res}
        text = warning_text(res)
        if text:
            out["warning"] = text
        return out

    def named(self, probs: np.ndarray) -> tuple[dict[str, float], str]:
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
        """Answer a preprocessed batch ``(B, 1, S, S)``: one :class:`Prediction` per image (as the
        task answers images: :meth:`~chestdx.tasks.base.Task.predict_images`)."""
        return self.task.predict_images(self, images.to(self.device), sources, heatmap)

    def classify_images(self, images: torch.Tensor, sources: Sequence[str], heatmap: bool = False) -> list[Prediction]:
        """The classifier's answer to a preprocessed batch ``(B, 1, S, S)``: the recipe's procedure in
        the execution mode, with the heatmap of the procedure's own forward pass where asked for.

        The mode is the one for the batch the procedure runs (CAM voting: its ``B * k`` copies). Maps
        that take passes of their own (:func:`chestdx.explain.heatmap.float32_map`: stage maps such as
        ``layercam8``, ``occlusion``) are computed in float32; for a ``plain`` answer with one, ``auto``
        picks among the float32 modes (for occlusion, at the batch of its copies), and a stage map
        comes from the answer's own pass with gradients
        (:func:`~chestdx.explain.heatmap.answer_with_heatmap`: the same probabilities as the plain
        procedure in that mode)."""
        import contextlib

        from chestdx.engine.infer import InferenceResult, pass_batch
        from chestdx.explain.heatmap import float32_map

        images = images.to(self.device)
        plain = self.procedure == "plain"
        own = float32_map(self.model, self.heatmap_kind, images.ndim) if heatmap else None  # a map of its own passes
        batch = pass_batch(self.procedure, self.params, len(images))
        if own is not None and plain:  # the map's passes are the work (occlusion: 64 copies per image)
            batch = max(batch, len(images) * own[1])
        # engine/precision.py; outside fp32 ``model`` is a copy with the batch norms folded (issue 19)
        with self.lock, self.speed.session(images, batch=batch, exact=own is not None and plain) as (model, x):
            maps, kind = None, None
            if heatmap and plain:  # a stage map shares the answer's float32 pass
                from chestdx.explain.heatmap import answer_with_heatmap

                output, hm, kind = answer_with_heatmap(model, x, self.heatmap_kind)
                res = InferenceResult(output.probs, output=output)  # the plain procedure's answer
                maps = hm.float().cpu().numpy()
            else:
                res = run_procedure(self.procedure, self.params, model, x)
            if heatmap and maps is None:  # the procedure's own forward pass serves the heatmap too
                from chestdx.explain.heatmap import heatmap as explain

                # maps of their own passes in float32 (bf16 distorts them), in the mode's memory format
                with torch.autocast(x.device.type, enabled=False) if own else contextlib.nullcontext():
                    hm, kind = explain(model, x, self.heatmap_kind, out=res.output)
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
            det.update(self.input_check(images[i, 0]))
            pdict, label = self.named(probs[i])
            out.append(Prediction(
                source=src, probs=pdict, label=label,
                heatmap=None if maps is None else unit_scale(maps[i]),
                image=unit_scale(images[i, 0].cpu().numpy()) if heatmap else None, details=det,
            ))
        return out

    def predict_study(self, study: Study, heatmap: bool = True, aggregate: str = "mean",
                      max_slices: int | None = None, batch_size: int = 32) -> Prediction | ScanPrediction:
        """Answer a read :class:`~chestdx.predict.inputs.Study` (image or scan), as the task answers
        one (:meth:`~chestdx.tasks.base.Task.predict_study`)."""
        return self.task.predict_study(self, study, heatmap, aggregate, max_slices, batch_size)

    def answer_by_slice(self, study: Study, heatmap: bool = True, aggregate: str = "mean",
                        max_slices: int | None = None, batch_size: int = 32) -> Prediction | ScanPrediction:
        """A 2D model's answer to a study: an image directly; a scan slice by slice (at most
        ``max_slices``, in batches of ``batch_size``), aggregated with ``aggregate``."""
        if study.kind == "image":
            x = self.preprocess_array(study.array, study.name)[None]
            answer = self.predict_tensor(x, [study.name], heatmap=heatmap)[0]
            if heatmap:  # overlays are drawn at the image's own size (explain/overlays.py overlay_answer)
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

    def scan_answer(self, study: Study, slices: list[Prediction], idx: list[int], aggregate: str) -> ScanPrediction:
        """Aggregate per-slice answers to the scan (see :func:`chestdx.evaluate.metrics.aggregate`)."""
        from chestdx.evaluate.metrics import aggregate as aggregate_probs

        p = np.array([[s.probs[c] for c in self.class_names] for s in slices])
        _, pg, _ = aggregate_probs(p, [0] * len(slices), how=aggregate)  # type: ignore[arg-type]
        pdict, label = self.named(pg[0])
        flagged = [s for s in slices if s.details.get("warning")]
        warning = None
        if len(flagged) * 2 > len(slices):  # most slices unlike the training images
            from chestdx.predict.ood import warning_text

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
                if is_volume_input(p) or not self.task.per_slice:
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


def load_model(path: str | Path, procedure: str | None = None, device: Any = "cpu",
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
