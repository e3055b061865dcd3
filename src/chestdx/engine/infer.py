"""Inference procedures: how a trained model answers (plain forward, CAM-directed voting, ...).

Every procedure takes the model and a batch of images ``(B, C, H, W)`` and returns an
:class:`InferenceResult` with probabilities ``(B, K)`` (after any voting) and extra per-image details.

:func:`predict_loader` (evaluate, table, ensemble) runs the procedure in an execution mode
(:mod:`chestdx.engine.precision`, recipe ``inference.speed``): channels-last weights and inputs,
bf16 / fp16 autocast, float32 outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from chestdx.errors import ConfigError
from chestdx.models import ChestModel


@dataclass
class InferenceResult:
    """``probs (B, K)`` the procedure's answer; ``details`` per-image extras (e.g. voting flips);
    ``output`` the model's plain output on the images where the procedure computed it (lets a caller
    draw heatmaps without another backbone pass)."""

    probs: Tensor
    details: dict[str, Tensor] = field(default_factory=dict)
    output: Any = None


_PROCEDURES: dict[str, Callable[..., InferenceResult]] = {}


def register_procedure(name: str) -> Callable[[Callable[..., InferenceResult]], Callable[..., InferenceResult]]:
    def deco(fn: Callable[..., InferenceResult]) -> Callable[..., InferenceResult]:
        _PROCEDURES[name] = fn
        return fn

    return deco


def procedure_names() -> list[str]:
    return sorted(_PROCEDURES)


@register_procedure("plain")
def plain(model: ChestModel, images: Tensor, **_ignored: Any) -> InferenceResult:
    """One forward pass, softmax. Parameters of other procedures are ignored (a table may set
    ``inference.params`` for all its rows, voting and plain alike)."""
    with torch.no_grad():
        out = model(images)
    return InferenceResult(out.probs, output=out)


@register_procedure("cam_voting")
def cam_voting_procedure(model: ChestModel, images: Tensor, **params: Any) -> InferenceResult:
    """CAM-directed test-time voting (cam-snapmix paper, Sec. 3.3): the label may flip.

    The flipped image's probabilities are mirrored (p -> 1 - p for the binary task) so that the
    argmax is the voted label while AUC still sees a graded score.
    """
    from chestdx.explain.voting import cam_voting

    res = cam_voting(model, images, **params)
    out = res.output  # the whole images' forward pass of the vote (no second one)
    if out is None:
        with torch.no_grad():
            out = model(images)
    probs = out.probs
    flipped = res.flipped.bool()
    if probs.shape[1] == 2:
        probs = torch.where(flipped[:, None], probs.flip(1), probs)
    else:
        onehot = torch.nn.functional.one_hot(res.label.long(), probs.shape[1]).to(probs)
        probs = torch.where(flipped[:, None], onehot, probs)
    return InferenceResult(probs, {"flipped": res.flipped, "vote_probs": res.probs, "vote_original": res.original_prob},
                           output=out)


def run_procedure(name: str, params: dict[str, Any], model: ChestModel, images: Tensor) -> InferenceResult:
    """Apply the named procedure.

    Raises:
        ConfigError: unknown procedure.
    """
    if name not in _PROCEDURES:
        raise ConfigError(f"unknown inference procedure '{name}'; choose one of {procedure_names()}")
    return _PROCEDURES[name](model, images, **params)


def predict_loader(model: ChestModel, loader: DataLoader, procedure: str = "plain",
                   params: dict[str, Any] | None = None, progress: bool = False,
                   speed: Any = None) -> dict[str, np.ndarray]:
    """Run a procedure over a loader of dataset items.

    Args:
        speed: execution mode setting (``auto``, ``fp32``, ``channels_last+bf16``, ...; see
            :mod:`chestdx.engine.precision`), an :class:`~chestdx.engine.precision.ExecMode` or an
            :class:`~chestdx.engine.precision.InferenceSpeed` (its ``modes`` then say what was
            chosen); None: ``fp32``. ``auto`` is resolved once, for the first batch's shape; a
            channels-last mode leaves the model channels-last.

    Returns:
        ``probs (N, K)``, ``label (N,)``, ``site (N,)``, ``index (N,)`` and any per-image details,
        as numpy arrays in loader order.
    """
    from chestdx.engine.precision import InferenceSpeed, running, to_mode_input

    model.eval()
    cols: dict[str, list[np.ndarray]] = {}
    it: Any = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc=f"predict ({procedure})", unit="batch")
    param = next(model.parameters(), None)
    control = speed if isinstance(speed, InferenceSpeed) else InferenceSpeed(
        model, speed, param.device if param is not None else "cpu")
    mode = None
    for batch in it:
        if mode is None:
            mode = control.mode_for(batch["image"].shape)
        with running(model, mode, control.device):
            res = run_procedure(procedure, params or {}, model, to_mode_input(batch["image"], mode))
        cols.setdefault("probs", []).append(res.probs.float().cpu().numpy())
        for key in ("label", "site", "index"):
            cols.setdefault(key, []).append(batch[key].cpu().numpy())
        for key, v in res.details.items():
            cols.setdefault(key, []).append(v.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in cols.items()}


from chestdx.engine import ensemble as _ensemble  # noqa: E402, F401  (registers intra_ensemble)
