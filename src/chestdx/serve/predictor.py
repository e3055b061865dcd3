"""Answer new files with a trained run: probabilities, label and an optional CAM heatmap."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chestdx.data.transforms import LoadPreprocess
from chestdx.engine.infer import run_procedure
from chestdx.engine.run import Run
from chestdx.errors import ChestdxError


@dataclass
class Prediction:
    """One answered image.

    Attributes:
        source: the file (or a name for an in-memory array).
        probs: class name -> probability.
        label: the predicted class name.
        heatmap: ``(S, S)`` non-negative CAM at model resolution, where asked for.
        image: ``(S, S)`` the preprocessed image in [0, 1] (for overlays), where a heatmap was asked for.
        details: procedure extras (e.g. ``flipped`` for CAM voting).
    """

    source: str
    probs: dict[str, float]
    label: str
    heatmap: np.ndarray | None = None
    image: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.source, "label": self.label, "probs": self.probs, **self.details}


class Predictor:
    """A trained run ready to answer files.

    Args:
        run: the run folder (or :class:`~chestdx.engine.run.Run`).
        which: ``best`` or ``last`` checkpoint.
        procedure: inference procedure; default the recipe's.
    """

    def __init__(self, run: Run | str | Path, which: str = "best", procedure: str | None = None):
        self.run = run if isinstance(run, Run) else Run(run)
        self.recipe = self.run.recipe
        self.model = self.run.load_model(which)
        self.class_names = self.run.class_names
        self.procedure = procedure or self.recipe.inference.name
        self.params = self.recipe.inference.params if self.procedure == self.recipe.inference.name else {}
        self._pre = LoadPreprocess(self.recipe.data)

    def preprocess(self, path: str | Path) -> torch.Tensor:
        """Read and preprocess one file to ``(1, S, S)``.

        Raises:
            DataError: unreadable file (names it).
        """
        return self._pre({"path": str(path), "box": None, "mask": None})["image"]

    def predict_tensor(self, images: torch.Tensor, sources: Sequence[str], heatmap: bool = False) -> list[Prediction]:
        """Answer a preprocessed batch ``(B, 1, S, S)``."""
        res = run_procedure(self.procedure, self.params, self.model, images)
        probs = res.probs.float().cpu().numpy()
        maps = None
        if heatmap:
            from chestdx.explain.cam import cam

            maps = cam(self.model, images).cpu().numpy()
        out = []
        for i, src in enumerate(sources):
            det = {k: v[i].item() if v[i].numel() == 1 else v[i].tolist() for k, v in res.details.items()}
            img = None
            if heatmap:
                x = images[i, 0].cpu().numpy()
                img = (x - x.min()) / (x.max() - x.min() + 1e-8)
            out.append(Prediction(
                source=src, probs={c: float(p) for c, p in zip(self.class_names, probs[i], strict=True)},
                label=self.class_names[int(probs[i].argmax())], heatmap=None if maps is None else maps[i],
                image=img, details=det,
            ))
        return out

    def predict_files(self, paths: Iterable[str | Path], batch_size: int = 16, heatmap: bool = False,
                      errors: list[tuple[str, str]] | None = None) -> Iterable[Prediction]:
        """Answer files in batches. A bad file is recorded in ``errors`` (path, problem) and skipped.

        Yields:
            one :class:`Prediction` per readable file, in order.
        """
        buf: list[tuple[str, torch.Tensor]] = []
        for p in list(paths) + [None]:
            if p is not None:
                try:
                    buf.append((str(p), self.preprocess(p)))
                except ChestdxError as e:
                    if errors is None:
                        raise
                    errors.append((str(p), str(e)))
            if buf and (p is None or len(buf) >= batch_size):
                x = torch.stack([t for _, t in buf])
                yield from self.predict_tensor(x, [s for s, _ in buf], heatmap=heatmap)
                buf = []
