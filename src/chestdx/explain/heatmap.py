"""One heatmap per image, whatever the model: the explanation ``predict``, ``report`` and ``serve``
show.

``kind="auto"`` picks, per model family, the kind that scored best against phantom lesion masks for
its cost (docs/explain.md; the classification is untouched: every map is drawn after the answer):

- a backbone + pooled-head CNN (:class:`~chestdx.models.classifier.ResNetMLP`, 2D): :data:`DEFAULT_CNN_KIND`
  of the predicted class;
- ResNet50-ATT2 (:class:`~chestdx.models.attention.ResNetATT2`) and MAG-SD
  (:class:`~chestdx.models.magsd.MANet`) on 2D inputs: :data:`ATTENTION_MODEL_KIND` of the predicted
  class, not their own attention maps, which pointed at the lesion on 0% (ATT2) and 2% (MAG-SD) of the
  phantom test images against 47% and 41% for ``intgrad`` (issue 16; :func:`auto_kind`);
- any other model whose output has the two ATT2 attention maps (``att1``, ``att2``: the per-slice
  maps of a sequence model): ``sqrt(a1 * a2)`` of both maps upsampled (resnet50-att2 paper, Fig. 7;
  :func:`~chestdx.explain.attention_masks.combine_attention`); one with a mean attention map
  (``maps["attention"]``): that map upsampled (:func:`~chestdx.explain.localize.attention_heatmap`);
  any other model (3D, ...): CAM / Grad-CAM at the last stage (:func:`~chestdx.explain.cam.cam`).

Kinds that can be asked for: ``cam`` (last stage, stride 32: 2 x 2 at 64 px, 7 x 7 at 224 px), the finer
CAMs of :data:`~chestdx.explain.cam.FINE_KINDS` (``gradcam16``, ``layercam16``, ``layercam8``,
``fused16``, :func:`~chestdx.explain.cam.stage_cam`), ``occlusion`` (the drop of the class probability
when each cell of an 8 x 8 chequer is covered, any model: :func:`~chestdx.explain.occlusion.occlusion_map`),
``intgrad`` (integrated gradients from the covered image summed per cell of the same chequer:
:func:`~chestdx.explain.occlusion.intgrad_map`), ``attention`` (MAG-SD) and ``att2`` (ResNet50-ATT2:
the models' own maps, drawn when asked for).
A heatmap never changes the answer: the classifier and CAM voting's own CAM are untouched.

Every map is scaled to ``[0, 1]`` per image (an all-zero map stays zero).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor

from chestdx.errors import ConfigError
from chestdx.models import ChestModel, ModelOutput

__all__ = ["ATTENTION_MODEL_KIND", "DEFAULT_CNN_KIND", "HEATMAP_KINDS", "answer_with_heatmap", "auto_kind",
           "check_heatmap_kinds", "float32_map", "heatmap", "heatmap_grid", "stage_kind"]

HEATMAP_KINDS = ("auto", "cam", "gradcam16", "layercam16", "layercam8", "fused16", "occlusion", "intgrad", "attention",
                 "att2")
#: What ``auto`` draws for a CNN classifier: integrated gradients per cell of an 8 x 8 chequer. On the
#: demo's phantom test slices with lesions (issue 16, after the phantom's label leak was fixed) it
#: points at the lesion 0.50 of the time (``occlusion`` 0.53 at 8x the passes of 8-point ``intgrad``,
#: ``layercam8`` 0.14, the centre prior 0.05); on the real segmentation slices no kind beats the centre
#: prior (docs/explain.md).
DEFAULT_CNN_KIND = "intgrad"
#: What ``auto`` draws for ResNet50-ATT2 and MAG-SD on single images, instead of their own attention
#: maps (issue 16; docs/explain.md, "Measured: ATT2 and MAG-SD attention against the other kinds"; the
#: recipes' CPU scale: ResNet-18 from scratch, 64 px, 10 epochs, predicted class's map, pointing game /
#: energy inside the lesion [patient-level 95% CI]):
#: ATT2 on the CT phantom's 96 test lesion slices: ``att2`` 0.000 [0.000, 0.000] / 0.021 [0.016, 0.027],
#: ``intgrad`` 0.469 [0.354, 0.583] / 0.103 [0.072, 0.139] (``occlusion`` 0.438 / 0.110);
#: MAG-SD on the X-ray phantom's 96 test lesion images: ``attention`` 0.021 [0.000, 0.062] / 0.068
#: [0.060, 0.076], ``intgrad`` 0.406 [0.281, 0.531] / 0.167 [0.126, 0.208] (``occlusion`` 0.604 / 0.165
#: at 8x the passes of 8-point ``intgrad``). At 64 px the attention maps are 2 x 2 (``att1`` 4 x 4); 224 px
#: is not measured.
ATTENTION_MODEL_KIND = "intgrad"


def check_heatmap_kinds(kinds: str | Sequence[str]) -> list[str]:
    """``kinds`` (one name or several) checked against :data:`HEATMAP_KINDS`, in order, without repeats.

    Raises:
        ConfigError: unknown kinds, each named with a "did you mean" where one is close, and the known ones.
    """
    import difflib

    names = [kinds] if isinstance(kinds, str) else list(kinds)
    bad = [k for k in names if k not in HEATMAP_KINDS]
    if bad:
        def named(k: str) -> str:
            near = difflib.get_close_matches(k, HEATMAP_KINDS, n=1)
            return f"{k!r} (did you mean {near[0]!r}?)" if near else repr(k)

        raise ConfigError(f"unknown heatmap kind{'s' if len(bad) > 1 else ''} {', '.join(map(named, bad))}; "
                          f"choose one of {', '.join(HEATMAP_KINDS)}")
    return list(dict.fromkeys(names))


def _unit(maps: Tensor) -> Tensor:
    peak = maps.flatten(1).amax(dim=1).clamp(min=1e-12)
    return (maps / peak.view(-1, *[1] * (maps.ndim - 1))).clamp(0, 1)  # (B, H, W) or (B, D, H, W)


def auto_kind(model: ChestModel, ndim: int = 4) -> str | None:
    """The kind ``auto`` draws on ``model`` for inputs of ``ndim`` dimensions where the model's class
    tells it: :data:`DEFAULT_CNN_KIND` for a backbone + pooled-head CNN and :data:`ATTENTION_MODEL_KIND`
    for ResNet50-ATT2 / MAG-SD, on 2D inputs; None for any other model or input (:func:`heatmap` then
    reads the output: ``att2`` / ``attention`` where the model makes them, else ``cam``)."""
    from chestdx.models.attention import ResNetATT2
    from chestdx.models.classifier import ResNetMLP
    from chestdx.models.magsd import MANet

    if ndim != 4:
        return None
    if isinstance(model, ResNetMLP):
        return DEFAULT_CNN_KIND
    if isinstance(model, (ResNetATT2, MANet)):
        return ATTENTION_MODEL_KIND
    return None


def heatmap(model: ChestModel, images: Tensor, kind: str = "auto", out: ModelOutput | None = None,
            target: Tensor | None = None) -> tuple[Tensor, str]:
    """Heatmaps of ``images (B, C, H, W)`` -> ``((B, H, W)`` in ``[0, 1]``, the kind used).

    ``out``: the model's output on ``images`` when the caller has it (no second backbone pass).
    ``target``: ``(B,)`` the class each map is drawn for; None: the predicted class. The attention
    kinds (``att2``, ``attention``) are the model's own class-agnostic maps and ignore it.

    Raises:
        ConfigError: an unknown ``kind``, or a kind the model cannot give.
    """
    from chestdx.explain.attention_masks import combine_attention
    from chestdx.explain.cam import FINE_KINDS, cam, fine_cam

    if kind not in HEATMAP_KINDS:
        check_heatmap_kinds(kind)  # raises, naming it
    if target is None and out is not None:
        target = out.logits.detach().argmax(dim=1)
    drawn = auto_kind(model, images.ndim) if kind == "auto" else None
    if drawn is not None and drawn not in ("auto", "cam"):
        try:  # CNN, ATT2, MAG-SD on 2D inputs (the kinds float32_map plans for)
            return heatmap(model, images, drawn, out=out, target=target)
        except ConfigError:  # no stage features (a stage kind on an odd backbone): what the output gives
            pass
    if kind in FINE_KINDS:
        return _unit(fine_cam(model, images, kind, target).detach()), kind
    if kind in ("occlusion", "intgrad"):  # any model: they need only the logits
        from chestdx.explain.occlusion import intgrad_map, occlusion_map

        make = occlusion_map if kind == "occlusion" else intgrad_map
        return _unit(make(model, images, target)), kind
    if kind != "cam" and out is None:
        with torch.no_grad():
            out = model(images)
    if kind != "cam" and out is not None:
        if kind in ("auto", "att2") and "att1" in out.maps and "att2" in out.maps:
            return _unit(combine_attention(out.maps["att1"], out.maps["att2"], images.shape[-2:])), "att2"
        if kind in ("auto", "attention") and "attention" in out.maps:
            from chestdx.explain.localize import attention_heatmap

            return attention_heatmap(model, images, out), "attention"
        if kind != "auto":
            raise ConfigError(f"{type(model).__name__} makes no {kind} maps; use kind 'cam' or 'auto'")
    return _unit(cam(model, images, target, out=out).detach()), "cam"


def stage_kind(model: ChestModel, kind: str = "auto", ndim: int = 4) -> str | None:
    """The stage map (one of :data:`~chestdx.explain.cam.FINE_KINDS`) :func:`heatmap` draws for ``kind``
    on ``model`` with inputs of ``ndim`` dimensions, or None where it draws none (``cam``, attention
    kinds, 3D inputs, ``auto`` on a model without stage features): the maps that need a pass of their
    own with gradients, which :func:`answer_with_heatmap` shares with the answer."""
    from chestdx.explain.cam import FINE_KINDS, has_stage_maps

    if kind in FINE_KINDS:
        return kind
    if kind == "auto" and ndim == 4 and DEFAULT_CNN_KIND in FINE_KINDS and has_stage_maps(model, DEFAULT_CNN_KIND):
        return DEFAULT_CNN_KIND
    return None


def float32_map(model: ChestModel, kind: str = "auto", ndim: int = 4) -> tuple[str, int] | None:
    """``(kind drawn, images each input image sends through the network for it)`` where :func:`heatmap`
    draws a map from passes of its own, else None (``cam`` and the attention kinds read the answer's
    pass). Such maps are computed in float32 even inside a bf16 / fp16 mode: from bf16 passes they
    were far from the float32 maps on a trained EfficientNet-Lite0 (docs/results.md, issue 19; stage
    maps: median per-image max difference 0.38 of the peak, occlusion 0.17), so a caller in a mode
    turns autocast off around them and ``auto`` picks a float32 mode for an answer with such a map.

    - a stage map (:func:`stage_kind`): one pass with gradients, ``1``;
    - ``occlusion`` (asked for, or what ``auto`` draws on the model, :func:`auto_kind`):
      one forward per covered patch, ``grid ** 2`` (64) copies per image;
    - ``intgrad`` (asked for, or ``auto`` on a CNN classifier, ResNet50-ATT2 or MAG-SD): forward +
      backward passes of its ``steps`` (:data:`~chestdx.explain.occlusion.IG_STEPS`, 2) points per image,
      batched together.
    """
    fine = stage_kind(model, kind, ndim)
    if fine is not None:
        return fine, 1
    drawn = (auto_kind(model, ndim) or kind) if kind == "auto" else kind
    if ndim != 4 or drawn not in ("occlusion", "intgrad"):
        return None
    from chestdx.explain.occlusion import IG_STEPS, OCCLUSION_GRID

    return drawn, int(OCCLUSION_GRID) ** 2 if drawn == "occlusion" else int(IG_STEPS)


def answer_with_heatmap(model: ChestModel, images: Tensor, kind: str = "auto") -> tuple[ModelOutput, Tensor, str]:
    """The model's output on ``images (B, C, H, W)`` and its heatmap, in as few passes as the map allows.

    A stage map (:func:`stage_kind`: ``layercam8``, the ``auto`` map of a CNN classifier, and the other
    fine kinds) needs a float32 pass with gradients. Outside autocast (the ``fp32`` and
    ``channels_last`` modes) that one pass also gives the answer
    (:func:`~chestdx.explain.cam.stage_pass`: the output is exactly ``model(images)`` under
    ``no_grad``, the backward stops at the map's stage). Under bf16 / fp16 autocast the answer comes
    from a ``no_grad`` pass in the caller's mode and the map from a float32 pass of its own: a map from
    bf16 activations is too far from the float32 map (docs/results.md, issue 19), so an answer with a
    stage map is cheapest in a float32 mode, which is what ``auto`` picks for it
    (:meth:`chestdx.engine.precision.InferenceSpeed.mode_for`, ``exact``). Any other kind: the answer's
    ``no_grad`` pass and the map from its output (:func:`heatmap` with ``out``), with autocast off for
    the maps that take passes of their own (:func:`float32_map`: ``occlusion``).

    Returns:
        ``(output, maps, kind used)``: the float32 :class:`~chestdx.models.ModelOutput`, ``(B, H, W)``
        maps in ``[0, 1]``.

    Raises:
        ConfigError: an unknown ``kind``, or a kind the model cannot give.
    """
    from chestdx.explain.cam import stage_pass, upsample_map

    fine = stage_kind(model, kind, images.ndim)
    if fine is not None and not torch.is_autocast_enabled(images.device.type):
        try:
            out, maps = stage_pass(model, images, fine)
            return out, _unit(upsample_map(maps, images.shape[2:]).detach()), fine
        except ConfigError:  # auto on a backbone that cannot give its stages: heatmap() falls back to CAM
            if kind != "auto":
                raise
    with torch.no_grad():
        out = model(images)
    own = fine is not None or float32_map(model, kind, images.ndim) is not None
    with torch.autocast(images.device.type, enabled=False) if own else contextlib.nullcontext():
        maps, used = heatmap(model, images, kind, out=out)
    return out, maps, used


def heatmap_grid(model: ChestModel, kind: str, size: tuple[int, int]) -> tuple[int, int] | None:
    """The grid ``(h, w)`` a map of ``kind`` (the kind :func:`heatmap` reported) is computed on, for an
    input of ``size (H, W)``: e.g. ``(2, 2)`` for ``cam`` of a ResNet at 64 px, ``(4, 4)`` for
    ``gradcam16``, ``(8, 8)`` for ``occlusion`` and ``intgrad`` (any model, any size from 8 px). None where
    it cannot be told (attention kinds, a model without a backbone)."""
    from chestdx.explain.cam import FINE_KINDS
    from chestdx.models.classifier import ResNetMLP

    if kind in ("occlusion", "intgrad"):  # any model: the cells it covers
        from chestdx.explain.occlusion import occlusion_geometry

        return (len(occlusion_geometry(int(size[0]))[2]), len(occlusion_geometry(int(size[1]))[2]))
    if not isinstance(model, ResNetMLP):  # other architectures split features elsewhere (ATT2: layer3)
        return None
    bb = getattr(model, "backbone", None)
    if kind == "cam":
        stride = getattr(bb, "feature_stride", None)
    elif kind in FINE_KINDS:
        stride = FINE_KINDS[kind][1]
    else:
        return None
    if not stride:
        return None
    return (-(-int(size[0]) // int(stride)), -(-int(size[1]) // int(stride)))
