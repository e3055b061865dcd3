"""Inference procedures: how a trained model answers (plain forward, CAM-directed voting, ...).

Every procedure takes the model and a batch of images ``(B, C, H, W)`` and returns an
:class:`InferenceResult` with probabilities ``(B, K)`` (after any voting) and extra per-image details.

:func:`predict_loader` (evaluate, table, ensemble) runs the procedure in an execution mode
(:mod:`chestdx.engine.precision`, recipe ``inference.speed``): channels-last weights and inputs,
bf16 / fp16 autocast, float32 outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from chestdx.errors import ConfigError
from chestdx.explain.voting import cam_voting
from chestdx.models.base import ChestModel
from chestdx.registry import Registry


@dataclass
class InferenceResult:
    """``probs (B, K)`` the procedure's answer; ``details`` per-image extras (e.g. voting flips);
    ``output`` the model's plain output on the images where the procedure computed it (lets a caller
    draw heatmaps without another backbone pass)."""

    probs: Tensor
    details: dict[str, Tensor] = field(default_factory=dict)
    output: Any = None


PROCEDURES: Registry[Callable[..., InferenceResult]] = Registry("inference procedure", fixed=("model", "images"))
"""A recipe's ``inference.name`` -> ``procedure(model, images, **params) -> InferenceResult``; the
recipe's ``inference.params`` are checked against the procedure's keywords when the recipe loads."""


def procedure_names() -> list[str]:
    """Every registered inference procedure, sorted."""
    return PROCEDURES.names()


@PROCEDURES.register("plain")
def plain(model: ChestModel, images: Tensor) -> InferenceResult:
    """One forward pass, softmax; no params (a table's ``inference.params`` override goes only to the
    rows whose procedure takes it: :func:`chestdx.experiments.table.row_overrides`)."""
    with torch.no_grad():
        out = model(images)
    return InferenceResult(out.probs, output=out)


@PROCEDURES.register("cam_voting", accepts=cam_voting)
def cam_voting_procedure(model: ChestModel, images: Tensor, **voting: Any) -> InferenceResult:
    """CAM-directed test-time voting (cam-snapmix paper, Sec. 3.3): the label may flip.

    ``voting``: the keywords of :func:`~chestdx.explain.voting.cam_voting` (k, theta, cell, chunk,
    positive, fill; checked against its signature when the recipe loads). The flipped image's
    probabilities are mirrored (p -> 1 - p for the binary task) so that the argmax is the voted label
    while AUC still sees a graded score.
    """
    res = cam_voting(model, images, **voting)
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


@PROCEDURES.register("intra_ensemble")
def intra_ensemble(model: ChestModel, images: Tensor, views: int = 3, depth: int | None = None,
                   crop_scale: Sequence[float] = (0.8, 1.0), brightness: float = 0.1, contrast: float = 0.1,
                   seed: int = 0) -> InferenceResult:
    """Intra-model ensemble of CMC-COV19D (Sec. 3.4.2): mean softmax over ``views`` augmented views
    of every volume (the paper's ``t = 3``), the training augmentations of Sec. 3.2 drawn from a fixed
    seed so that an evaluation is repeatable. evaluate / ensemble / predict call it through
    :func:`procedure_params`, which fills ``depth``, ``crop_scale``, ``brightness`` and ``contrast``
    with the run's own training views (:func:`training_views`) where the caller leaves them unset;
    the defaults below apply to a run trained without the ``cmc_views`` mixer.

    Args:
        model: a 3D model; images: ``(B, C, D, H, W)`` in ``[0, 1]``.
        views: t.
        depth: ``d`` of the random depth crop (None: all slices).
        crop_scale, brightness, contrast: as in training (:func:`~chestdx.data.volume_augment.cmc_augment`).
        seed: seed of the views (the same seed gives the same views).

    Returns:
        ``probs (B, K)`` the mean; details ``view_std (B,)``, the spread of the predicted class's
        probability over the views.

    Raises:
        ConfigError: inputs that are not volumes, or ``views < 1``.
    """
    from chestdx.data.volume_augment import cmc_augment

    if images.ndim != 5:
        raise ConfigError(f"inference 'intra_ensemble' needs volumes (B, C, D, H, W); got {tuple(images.shape)}")
    if int(views) < 1:
        raise ConfigError(f"intra_ensemble: views must be >= 1, got {views}")
    gen = torch.Generator().manual_seed(int(seed))
    all_probs = []
    with torch.no_grad():
        for _ in range(int(views)):
            v = cmc_augment(images, depth, crop_scale, brightness, contrast, generator=gen)
            all_probs.append(model(v).probs)
    stack = torch.stack(all_probs)  # (t, B, K)
    mean = stack.mean(dim=0)
    pred = mean.argmax(dim=1)
    spread = stack.gather(2, pred[None, :, None].expand(stack.shape[0], -1, 1))[..., 0].std(dim=0, unbiased=False)
    return InferenceResult(mean, {"view_std": spread})


#: The view parameters ``intra_ensemble`` shares with the ``cmc_views`` mixer (not ``views``: the
#: mixer's 2 training views are not the ensemble's t = 3).
VIEW_KEYS = ("depth", "crop_scale", "brightness", "contrast")


def training_views(recipe: Any) -> dict[str, Any]:
    """The view parameters a run was trained with: its ``cmc_views`` mixer's ``depth``, ``crop_scale``,
    ``brightness`` and ``contrast`` (the mixer's defaults where its ``params`` do not say); empty for
    a run trained without that mixer."""
    import inspect

    from chestdx.mixing.views import CMCViews

    mixing = getattr(recipe, "mixing", None)
    if mixing is None or mixing.name != "cmc_views":
        return {}
    sig = inspect.signature(CMCViews)
    own = {k: sig.parameters[k].default for k in VIEW_KEYS if k in sig.parameters}
    own.update({k: v for k, v in mixing.params.items() if k in VIEW_KEYS})
    if not own.get("depth"):
        own["depth"] = None
    return own


#: Procedures whose unset params default to something of the run's own recipe (not the procedure's
#: signature): ``intra_ensemble`` draws its views as the run was trained (Sec. 3.4.2).
RECIPE_DEFAULTS: dict[str, Callable[[Any], dict[str, Any]]] = {"intra_ensemble": training_views}


def procedure_params(recipe: Any, name: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The params a run answers ``name`` with.

    ``given`` (``--params``, a caller's dict) when not None, else the recipe's ``inference.params``
    when ``name`` is its procedure, else none; then, for a procedure of :data:`RECIPE_DEFAULTS`, each
    key still unset comes from the run's own recipe. So ``chestdx ensemble RUN... --procedure
    intra_ensemble`` answers every member with the views (depth crop included) that member was
    trained with, and ``--params '{"depth": 16}'`` overrides the depth of all of them while each
    keeps its own crop / brightness / contrast.
    """
    params = dict(given) if given is not None else (
        dict(recipe.inference.params) if name == recipe.inference.name else {})
    defaults = RECIPE_DEFAULTS.get(name)
    if defaults is not None:
        for k, v in defaults(recipe).items():
            params.setdefault(k, v)
    return params


def _voting_pass(batch: int, params: Mapping[str, Any]) -> int:
    return batch * int(params.get("k", 31))


#: Procedures whose network passes are larger than their input batch: ``(batch, params) -> images per
#: pass`` (CAM voting: the ``k`` masked copies of every image, in chunks).
PASS_BATCH: dict[str, Callable[[int, Mapping[str, Any]], int]] = {"cam_voting": _voting_pass}


def pass_batch(name: str, params: Mapping[str, Any], batch: int) -> int:
    """How many images the procedure ``name`` sends through the network at once for an input batch of
    ``batch``: the batch its execution mode is chosen for (``auto`` measures batch 1 apart from larger
    batches, :mod:`chestdx.engine.precision`). ``cam_voting`` of one image runs its ``k`` copies
    together, so its mode is the one for a batch, not for a single image; any other procedure: ``batch``."""
    extra = PASS_BATCH.get(name)
    return max(int(batch), extra(int(batch), params)) if extra is not None else int(batch)


def run_procedure(name: str, params: Mapping[str, Any], model: ChestModel, images: Tensor,
                  where: str = "inference") -> InferenceResult:
    """Apply the named procedure to ``images`` (``(B, C, H, W)``, volumes ``(B, C, D, H, W)``).

    Raises:
        ConfigError: unknown procedure, or a ``params`` key it does not take (with did-you-mean),
            named as set at ``where``.
    """
    procedure = PROCEDURES.check(name, params, where).factory
    result: InferenceResult = procedure(model, images, **params)
    return result


def predict_loader(model: ChestModel, loader: DataLoader, procedure: str = "plain",
                   params: dict[str, Any] | None = None, progress: bool = False,
                   speed: Any = None, device: Any = None) -> dict[str, np.ndarray]:
    """Run a procedure over a loader of dataset items.

    Args:
        device: where to run: a :class:`torch.device` or an accelerator (``cpu``, ``cuda``,
            ``auto``, ...; :func:`chestdx.engine.device.resolve_device`); the model is moved there
            (and stays). None: where the model already is. Each batch's ``image`` goes to the
            model's device; the results come back to the CPU.
        speed: execution mode setting (``auto``, ``fp32``, ``channels_last+bf16``, ...; see
            :mod:`chestdx.engine.precision`), an :class:`~chestdx.engine.precision.ExecMode` or an
            :class:`~chestdx.engine.precision.InferenceSpeed` (its ``modes`` then say what was
            chosen); None: ``fp32``. ``auto`` is resolved once, for the first batch's shape; a
            channels-last mode leaves the model channels-last. Outside ``fp32`` the batches run on
            a copy with the batch norms folded into the convolutions
            (:func:`~chestdx.engine.precision.inference_model`).

    Returns:
        ``probs (N, K)``, ``label (N,)``, ``site (N,)``, ``index (N,)`` and any per-image details,
        as numpy arrays in loader order.

    Raises:
        ConfigError: a device this machine does not have.
    """
    from chestdx.engine.device import model_device, resolve_device
    from chestdx.engine.precision import InferenceSpeed, inference_model, running, to_mode_input

    if device is not None:
        model.to(resolve_device(device, flag="device"))
    model.eval()
    on = model_device(model)
    cols: dict[str, list[np.ndarray]] = {}
    it: Any = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc=f"predict ({procedure})", unit="batch")
    control = speed if isinstance(speed, InferenceSpeed) else InferenceSpeed(model, speed, on)
    mode, fast = None, model
    for batch in it:
        x = batch["image"].to(on)
        if mode is None:
            shape = x.shape
            mode = control.mode_for((pass_batch(procedure, params or {}, shape[0]), *shape[1:]))
            with running(model, mode, control.device):  # outside fp32: batch norms folded (issue 19)
                fast = inference_model(model, mode, to_mode_input(x, mode))
        with running(fast, mode, control.device):
            res = run_procedure(procedure, params or {}, fast, to_mode_input(x, mode))
        cols.setdefault("probs", []).append(res.probs.float().cpu().numpy())
        for key in ("label", "site", "index"):
            cols.setdefault(key, []).append(batch[key].cpu().numpy())
        for key, v in res.details.items():
            cols.setdefault(key, []).append(v.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in cols.items()}

