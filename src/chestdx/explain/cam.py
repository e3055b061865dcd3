"""Class activation maps for any :class:`~chestdx.models.ChestModel`, without hooks.

How CAM is defined here (cam-snapmix-cpe-tta-covid-ct.txt, Sec. 3, "the heatmaps produced by the
CAM method"). Zhou et al.'s CAM needs a linear classifier on globally pooled features:
``CAM_c(x, y) = sum_k w_ck F_k(x, y)``. The paper's baseline has an MLP head, for which that formula
does not exist, so chestdx uses the gradient form (Grad-CAM, Selvaraju et al.)::

    CAM_c(x, y) = ReLU( sum_k alpha_k F_k(x, y) ),   alpha_k = sum_{x', y'} d logit_c / d F_k(x', y')

``alpha_k`` is Grad-CAM's position-averaged gradient times the number of positions ``h * w`` (a
constant per resolution, chosen so that the two definitions coincide): for a GAP + linear head
``d logit_c / d F_k(x, y) = w_ck / (h w)``, hence ``alpha_k = w_ck`` and the map is exactly
``ReLU(sum_k w_ck F_k)``, the classic CAM clipped at zero. For an MLP head it is Grad-CAM.

The gradient is taken with ``torch.autograd.grad`` with respect to a detached copy of the features
only: no hooks are registered (nothing piles up in a long-running service), the model's parameters
never receive ``.grad``, and callers inside ``torch.no_grad()`` are fine (grad is enabled locally).
The model's train / eval mode is left as the caller set it (inference callers use ``eval()``;
SnapMix computes its CAMs in training mode, as its reference implementation does).

Maps are returned raw (non-negative, unnormalised): SnapMix and the patch losses use ratios of CAM
mass, which any per-image scale leaves unchanged. :func:`normalize_maps` rescales to ``[0, 1]`` for
display.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from chestdx.models.base import ChestModel, ModelOutput


def _as_target(target: Tensor | int | Sequence[int] | None, logits: Tensor) -> Tensor:
    b = logits.shape[0]
    if target is None:
        return logits.detach().argmax(dim=1)
    t = torch.as_tensor(target, device=logits.device)
    if t.ndim == 0:
        t = t.expand(b)
    elif t.ndim == 2:  # soft targets (B, K): their argmax
        t = t.argmax(dim=1)
    if t.shape != (b,):
        raise ValueError(f"target must be an int, (B,) labels or (B, K) soft targets; got shape "
                         f"{tuple(t.shape)} for a batch of {b}")
    t = t.long()
    k = logits.shape[1]
    if bool(((t < 0) | (t >= k)).any()):
        raise ValueError(f"target classes must lie in [0, {k}); got {t.tolist()}")
    return t


def cam_from_features(model: ChestModel, features: Tensor,
                      target: Tensor | int | Sequence[int] | None = None) -> Tensor:
    """CAM at feature resolution from precomputed features.

    Args:
        model: a :class:`~chestdx.models.ChestModel` (needs ``forward_head``).
        features: ``(B, C, h, w)`` (or ``(B, C, d, h, w)``) output of ``model.forward_features``;
            it is detached here, so no gradient flows back into the caller's graph. The head and the
            gradient run in float32 with autocast off (bf16 / fp16 features are upcast).
        target: the class whose map is wanted: ``None`` (the predicted class), an int, ``(B,)``
            labels, or ``(B, K)`` soft targets (their argmax).

    Returns:
        ``(B, h, w)`` (or ``(B, d, h, w)``) non-negative float32 maps,
        ``ReLU(sum_k alpha_k F_k)`` with ``alpha_k = sum over positions of d logit_target / d F_k``
        (exactly Zhou et al.'s CAM for a GAP + linear head, Grad-CAM for an MLP head).

    Raises:
        ValueError: a target outside ``[0, K)`` or of the wrong shape.
    """
    # in float32 with autocast off, whatever the caller's mode: the head is small next to the
    # backbone, and bf16 gradients would coarsen the map (features of a bf16 pass are upcast here)
    with torch.enable_grad(), torch.autocast(features.device.type, enabled=False):
        f = features.detach().float().requires_grad_(True)
        logits, _ = model.forward_head(f)
        t = _as_target(target, logits)
        score = logits.float().gather(1, t[:, None]).sum()
        (grad,) = torch.autograd.grad(score, f)
    spatial = tuple(range(2, f.ndim))
    alpha = grad.float().sum(dim=spatial, keepdim=True)  # (B, C, 1, 1)
    maps = (alpha * f.detach().float()).sum(dim=1)
    return F.relu(maps)


def upsample_map(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear (trilinear for 3D) resize of maps ``(B, h, w)`` to ``(B, *size)``.

    ``align_corners=False``, so the interpolation weights are non-negative and a non-negative map
    stays non-negative.
    """
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[1:]) == size:
        return maps
    mode = {2: "bilinear", 3: "trilinear"}.get(len(size))
    if mode is None or maps.ndim != len(size) + 1:
        raise ValueError(f"upsample_map: maps of shape {tuple(maps.shape)} cannot go to size {size}")
    return F.interpolate(maps[:, None].float(), size=size, mode=mode, align_corners=False)[:, 0]


def normalize_maps(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """Min-max rescale each map of ``(B, ...)`` to ``[0, 1]``; a constant map becomes all zeros."""
    flat = maps.float().flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > eps, (flat - lo) / span.clamp(min=eps), torch.zeros_like(flat))
    return out.view_as(maps)


def cam(model: ChestModel, images: Tensor, target: Tensor | int | Sequence[int] | None = None,
        out: ModelOutput | None = None) -> Tensor:
    """CAM of ``target`` at input resolution.

    With the paper's baseline (ResNet-50 + MLP head) this is Grad-CAM, since Zhou's CAM formula
    needs a linear head; with a linear head (``head_hidden=0``) it is exactly CAM,
    ``ReLU(sum_k w_ck F_k)``, bilinearly upsampled.

    Args:
        model: a :class:`~chestdx.models.ChestModel`.
        images: ``(B, C, H, W)``.
        target: ``None`` (the predicted class), an int, ``(B,)`` labels or ``(B, K)`` soft targets.
        out: the model's output on ``images`` if the caller already has it (its ``features`` are
            reused, detached; no second backbone pass).

    Returns:
        ``(B, H, W)`` non-negative raw maps (see the module docstring for the definition).
    """
    if out is not None and out.features is not None:
        feats = out.features
        if target is None:
            target = out.logits.detach().argmax(dim=1)
    else:
        with torch.no_grad():
            feats = model.forward_features(images)
    maps = cam_from_features(model, feats, target)
    return upsample_map(maps, images.shape[2:])


def volume_cam(model: ChestModel, volumes: Tensor, target: Tensor | int | Sequence[int] | None = None,
               out: ModelOutput | None = None) -> Tensor:
    """Grad-CAM of a 3D model as per-slice heatmaps (cmc-cov19d Fig. 5).

    The map is computed once on the 3D feature map ``(B, C, d, h, w)`` (:func:`cam_from_features`:
    gradient-weighted channel sum, ReLU), trilinearly upsampled to the volume and scaled by its
    maximum over the **whole volume**, so that slices can be compared with each other (a slice far
    from the finding is dark, not stretched to full range).

    Args:
        model: a 3D :class:`~chestdx.models.ChestModel` (e.g. ``inflated3d``).
        volumes: ``(B, C, D, H, W)``.
        target: ``None`` (the predicted class), an int, ``(B,)`` labels or ``(B, K)`` soft targets.
        out: the model's output on ``volumes``, if at hand (its features are reused).

    Returns:
        ``(B, D, H, W)`` in ``[0, 1]``: slice ``k`` of volume ``b`` is ``[b, k]``.

    Raises:
        ValueError: ``volumes`` is not 5D.
    """
    if volumes.ndim != 5:
        raise ValueError(f"volume_cam takes volumes (B, C, D, H, W); got {tuple(volumes.shape)}")
    maps = cam(model, volumes, target, out).detach()
    peak = maps.flatten(1).amax(dim=1).clamp(min=1e-12)
    return (maps / peak.view(-1, 1, 1, 1)).clamp(0, 1)


#: Finer map kinds: name -> (method, stride of the stage it is taken at); see :func:`stage_cam`.
FINE_KINDS: dict[str, tuple[str, int]] = {
    "gradcam16": ("gradcam", 16),
    "layercam16": ("layercam", 16),
    "layercam8": ("layercam", 8),
    "fused16": ("fused", 16),
}


def has_stage_maps(model: ChestModel, kind: str) -> bool:
    """Whether :func:`stage_cam` can give ``kind`` (one of :data:`FINE_KINDS`) for ``model``: a backbone +
    pooled-head classifier whose backbone has a stage at the kind's stride."""
    from chestdx.models.backbones import Backbone
    from chestdx.models.classifier import ResNetMLP

    bb = getattr(model, "backbone", None)
    return (kind in FINE_KINDS and isinstance(model, ResNetMLP) and isinstance(bb, Backbone)
            and FINE_KINDS[kind][1] in tuple(bb.stage_strides))


def _staged_backbone(model: ChestModel) -> Any:
    from chestdx.errors import ConfigError
    from chestdx.models.backbones import Backbone
    from chestdx.models.classifier import ResNetMLP

    bb = getattr(model, "backbone", None)
    if not isinstance(model, ResNetMLP) or not isinstance(bb, Backbone):
        raise ConfigError(f"{type(model).__name__} gives no stage maps (finer CAM kinds {sorted(FINE_KINDS)} "
                          "need a backbone + pooled-head classifier); use kind 'cam' or 'auto'")
    return bb


def _stage_maps(method: str, a: Tensor, ga: Tensor, final: Tensor, gf: Tensor) -> Tensor:
    """The map of ``method`` from stage features ``a (B, C, h, w)``, their gradient ``ga`` and the last
    stage's ``final`` / ``gf`` (for ``fused``), in float32 whatever their dtype: ``(B, h, w)``."""
    a, ga = a.detach().float(), ga.float()
    if method == "layercam":
        return F.relu((F.relu(ga) * a).sum(dim=1))
    fine = F.relu((ga.sum(dim=(2, 3), keepdim=True) * a).sum(dim=1))
    if method == "gradcam":
        return fine
    coarse = F.relu((gf.float().sum(dim=(2, 3), keepdim=True) * final.detach().float()).sum(dim=1))
    coarse = upsample_map(coarse, fine.shape[1:])

    def unit(m: Tensor) -> Tensor:
        return m / m.flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1)

    return torch.sqrt(unit(coarse) * unit(fine))


def stage_pass(model: ChestModel, images: Tensor, kind: str,
               target: Tensor | int | Sequence[int] | None = None) -> tuple[ModelOutput, Tensor]:
    """One forward pass with gradients that gives both the model's answer and a :data:`FINE_KINDS` map.

    The pass runs in the caller's execution mode (memory format of ``images`` and the weights, any
    autocast the caller entered: :func:`chestdx.engine.precision.running`); the backward goes only
    from the target logit down to the stage the map is taken at (no parameter gradients, nothing
    before that stage). In float32 modes the output is exactly ``model(images)`` under ``no_grad``
    (the same operations: tests/explain/test_cam.py checks it for ResNets and EfficientNet-Lite), so
    a caller that wants an answer and its map pays one forward and a partial backward instead of two
    forwards. Under bf16 / fp16 autocast the map would come from low-precision activations and
    gradients; on a trained EfficientNet-Lite0 that moved LayerCAM-8 maps far from the float32 map
    (median per-image max difference 0.38 of the peak, docs/results.md), so callers that need the
    float32 map (:func:`stage_cam`, :func:`chestdx.explain.heatmap.answer_with_heatmap`) turn autocast
    off for this pass.

    Args:
        model: a backbone + pooled-head classifier (:class:`~chestdx.models.classifier.ResNetMLP`).
        images: ``(B, C, H, W)``.
        kind: one of :data:`FINE_KINDS`.
        target: ``None`` (the class this pass predicts), an int, ``(B,)`` labels or ``(B, K)`` soft targets.

    Returns:
        ``(output, maps)``: the :class:`~chestdx.models.ModelOutput` (float32, detached: logits ``(B, K)``,
        features ``(B, C_last, H/32, W/32)``, embedding ``(B, C_last)``) and ``(B, h, w)`` non-negative
        float32 maps at the stage's grid (``h = H / stride``, rounded up as the network does).

    Raises:
        ConfigError: an unknown kind, a model without stage features, or a backbone with no stage at that stride.
    """
    from chestdx.errors import ConfigError

    if kind not in FINE_KINDS:
        raise ConfigError(f"unknown fine CAM kind {kind!r}; choose one of {sorted(FINE_KINDS)}")
    method, stride = FINE_KINDS[kind]
    bb = _staged_backbone(model)
    strides = list(bb.stage_strides)
    if stride not in strides:
        raise ConfigError(f"backbone '{bb.name}' has no stage at stride {stride} (strides {strides})")
    si = strides.index(stride)
    with torch.enable_grad():
        x = images.detach()
        if not x.is_floating_point():
            x = x.float()
        x.requires_grad_(True)  # builds the graph even with frozen parameters
        final, stages = bb.forward_stages(x)
        a = stages[si]
        logits, emb = model.forward_head(final)
        t = _as_target(target, logits)
        score = logits.float().gather(1, t[:, None]).sum()
        ga, gf = torch.autograd.grad(score, [a, final])
    out = ModelOutput(logits=logits.detach().float(), features=final.detach().float(), embedding=emb.detach().float())
    return out, _stage_maps(method, a, ga, final, gf)


def stage_cam(model: ChestModel, images: Tensor, kind: str,
              target: Tensor | int | Sequence[int] | None = None) -> Tensor:
    """A CAM at a finer output stride than the last stage, at feature (grid) resolution.

    Kinds (:data:`FINE_KINDS`), with ``A`` the stage's features ``(B, C, h, w)`` and ``g = d logit_target / d A``
    (the gradient flows through the later stages and the head; the classification is untouched):

    - ``gradcam16``: Grad-CAM at the stride-16 stage, ``ReLU(sum_k (sum_xy g_k) A_k)`` (ResNet layer3);
    - ``layercam16`` / ``layercam8``: LayerCAM (Jiang et al. 2021) at stride 16 / 8,
      ``ReLU(sum_k ReLU(g_k(x, y)) A_k(x, y))``: position-wise weights, which keep the finer stage's detail;
    - ``fused16``: the last-stage CAM (stride 32, :func:`cam_from_features`) bilinearly upsampled to the
      stride-16 grid, times the ``gradcam16`` map, square root (each scaled to peak 1 first): where both agree.

    The pass runs in float32 with autocast off whatever the caller's mode (:func:`stage_pass` under
    autocast would distort the map); a channels-last model and input stay channels-last.

    Args:
        model: a backbone + pooled-head classifier (:class:`~chestdx.models.classifier.ResNetMLP`, any backbone).
        images: ``(B, C, H, W)``.
        target: ``None`` (the predicted class), an int, ``(B,)`` labels or ``(B, K)`` soft targets.

    Returns:
        ``(B, h, w)`` non-negative float32 maps, ``h = H / stride`` (rounded up as the network does).

    Raises:
        ConfigError: an unknown kind, a model without stage features, or a backbone with no stage at that stride.
    """
    with torch.autocast(images.device.type, enabled=False):
        return stage_pass(model, images.detach().float(), kind, target)[1]


def fine_cam(model: ChestModel, images: Tensor, kind: str,
             target: Tensor | int | Sequence[int] | None = None) -> Tensor:
    """:func:`stage_cam` bilinearly upsampled to the input: ``(B, C, H, W)`` -> ``(B, H, W)`` raw maps."""
    return upsample_map(stage_cam(model, images, kind, target), images.shape[2:])


__all__ = ["FINE_KINDS", "cam", "cam_from_features", "fine_cam", "has_stage_maps", "normalize_maps", "stage_cam",
           "stage_pass", "upsample_map", "volume_cam"]
