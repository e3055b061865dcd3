"""What the predictor answers: :class:`Prediction` (one 2D image) and :class:`ScanPrediction` (one
scan), built by the predictor and by the tasks' answer strategies (:mod:`chestdx.tasks`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Prediction", "ScanPrediction", "unit_scale"]


def unit_scale(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to ``[0, 1]`` (min to 0, max to 1) as float32, for overlays."""
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
            images (:mod:`chestdx.predict.ood`), else None.
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
