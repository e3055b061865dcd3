"""Localisation of every heatmap kind against the lesion masks of the test images, with patient intervals.

For each test image with a non-empty lesion mask (phantom CT slices always have one when they show a
finding), each asked-for heatmap kind (:func:`~chestdx.explain.heatmap.heatmap`, of the predicted
class) and the two reference maps (a centred Gaussian prior and the whole body,
:mod:`chestdx.explain.scores`) are scored with the pointing game, the energy inside the lesion and the
IoU / Dice of the map above half its maximum. Means carry a patient-level 95% interval (cluster
bootstrap: patients resampled with all their slices). The rules are stated in the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from chestdx.errors import ConfigError
from chestdx.explain.scores import (
    BODY_THRESHOLD,
    PRIOR_SIGMA,
    SCORES,
    THRESHOLD,
    body_map,
    centre_prior,
    localisation_scores,
    pointing_tolerance,
    summarise_scores,
)

#: Names of the reference maps in the output.
REFERENCES = ("centre_prior", "body")

__all__ = ["REFERENCES", "TARGETS", "localisation_markdown", "parse_heatmap_kinds", "score_heatmaps"]


def parse_heatmap_kinds(text: str | Sequence[str] | None) -> list[str]:
    """``"cam,gradcam16"`` (or a list) -> checked kind names; ``None`` / empty -> ``[]``.

    Raises:
        ConfigError: an unknown kind (the message lists the known ones).
    """
    from chestdx.explain.heatmap import HEATMAP_KINDS

    if not text:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    kinds = [k.strip() for k in items if k.strip()]
    bad = [k for k in kinds if k not in HEATMAP_KINDS]
    if bad:
        raise ConfigError(f"unknown heatmap kind(s) {bad}; choose from {list(HEATMAP_KINDS)}")
    return list(dict.fromkeys(kinds))


#: Which class's map :func:`score_heatmaps` scores.
TARGETS = ("predicted", "true")


def score_heatmaps(model: Any, loader: Any, samples: Sequence[Any], kinds: Sequence[str] = ("auto",), *,
                   n_boot: int = 1000, seed: int = 0, target: str = "predicted") -> dict[str, Any]:
    """Score heatmap kinds and the reference maps against lesion masks.

    Args:
        model: a slice model (eval mode is set here).
        loader: batches of ``image (B, 1, H, W)``, ``lesion (B, 1, H, W)``, ``has_mask (B,)``, ``index (B,)``
            (``index`` into ``samples``).
        samples: the records (``site``, ``patient_id``) the indices point at: patients are ``site/patient``.
        kinds: heatmap kinds; ``auto`` is reported under the kind it resolves to (the run's default map).
            A kind the model cannot give is listed under ``"unavailable"`` with the reason.
        target: ``"predicted"`` (default: the map a user is shown, of the model's answer) or ``"true"``
            (the map of the image's labelled class, batch ``label (B,)``: Zhang et al.'s pointing game,
            which scores the ground-truth category; it tells a map that misses the lesion from a model
            whose answer was another class).

    Returns:
        ``{"rules", "n_images", "n_patients", "default_kind", "maps": {kind: {score: {value, ci_low,
        ci_high}}}, "references": {name: ...}, "unavailable": {kind: reason}, "per_image": [...]}``;
        ``n_images`` 0 when no image has a lesion.

    Raises:
        ConfigError: an unknown ``target``.
    """
    if target not in TARGETS:
        raise ConfigError(f"unknown heatmap target {target!r}; choose one of {TARGETS}")
    from chestdx.engine.device import model_device
    from chestdx.explain.heatmap import heatmap

    model.eval()
    rows: dict[str, list[dict[str, float]]] = {}
    per_image: list[dict[str, Any]] = []
    groups: list[str] = []
    unavailable: dict[str, str] = {}
    default_kind = ""
    shape: tuple[int, int] | None = None
    for batch in loader:
        keep = batch["has_mask"].bool() & (batch["lesion"].flatten(1).sum(1) > 0)
        if not keep.any():
            continue
        images = batch["image"][keep].to(model_device(model))  # the model's device (--accelerator)
        truth = batch["lesion"][keep][:, 0].cpu().numpy() > 0.5
        shape = (int(truth.shape[-2]), int(truth.shape[-1]))
        with torch.no_grad():
            out = model(images)
        maps: dict[str, np.ndarray] = {}
        cls = batch["label"][keep].to(images.device).long() if target == "true" else None
        for kind in kinds:
            if kind in unavailable:
                continue
            try:
                hm, used = heatmap(model, images, kind, out=out, target=cls)
            except ConfigError as e:
                unavailable[kind] = str(e)
                continue
            if kind == "auto":
                default_kind = used
            maps[used] = hm.detach().float().cpu().numpy()
        prior = centre_prior(shape)
        imgs = images[:, 0].detach().float().cpu().numpy()
        for j, idx in enumerate(batch["index"][keep].tolist()):
            s = samples[int(idx)]
            groups.append(f"{s.site}/{s.patient_id}")
            rec: dict[str, Any] = {"index": int(idx), "path": str(s.path)}
            cands = {**{k: v[j] for k, v in maps.items()}, "centre_prior": prior, "body": body_map(imgs[j])}
            for name, m in cands.items():
                sc = localisation_scores(m, truth[j])
                rows.setdefault(name, []).append(sc)
                rec[name] = sc
            per_image.append(rec)
    n = len(per_image)
    rules = {
        "pointing": f"peak of the map (the maximum plateau's pixel nearest its centroid) within "
                    f"{pointing_tolerance(shape) if shape else 'round(15 * side / 224)'} px of a lesion pixel "
                    "(15 px at 224 px, scaled to the image)",
        "energy": "sum(map * lesion) / sum(map)",
        "iou_dice": f"map >= {THRESHOLD:g} * its maximum vs the lesion mask",
        "centre_prior": f"centred Gaussian, sigma {PRIOR_SIGMA:g} of each side",
        "body": f"pixels above {BODY_THRESHOLD:g} of the image's range, holes filled (uniform map)",
        "interval": "patient-level cluster bootstrap, 95%",
        "class": target,  # whose map: the predicted or the true (labelled) class
        "image_size": list(shape) if shape else None,
    }
    summary = {name: summarise_scores(r, groups, n_boot=n_boot, seed=seed) for name, r in rows.items()}
    return {
        "rules": rules, "n_images": n, "n_patients": len(set(groups)), "default_kind": default_kind,
        "maps": {k: v for k, v in summary.items() if k not in REFERENCES},
        "references": {k: summary[k] for k in REFERENCES if k in summary},
        "unavailable": unavailable, "per_image": per_image,
    }


def localisation_markdown(loc: dict[str, Any], title: str) -> str:
    """The table of :func:`score_heatmaps`: one row per map kind and reference, value [95% CI] per score."""
    head = (f"### {title}: heatmap localisation\n\n{loc['n_images']} images with a lesion, {loc['n_patients']} "
            f"patients; default map: {loc.get('default_kind') or '-'}; maps of the "
            f"{loc['rules'].get('class', 'predicted')} class. Pointing: {loc['rules']['pointing']}; "
            f"IoU / Dice: {loc['rules']['iou_dice']}; intervals: {loc['rules']['interval']}.\n\n"
            "| map | pointing game | energy inside | IoU | Dice |\n|---|---|---|---|---|\n")
    lines = []
    for group, label in (("maps", ""), ("references", " (reference)")):
        for name, figs in loc.get(group, {}).items():
            cells = [f"{figs[k]['value']:.3f} [{figs[k]['ci_low']:.3f}, {figs[k]['ci_high']:.3f}]" for k in SCORES]
            lines.append(f"| {name}{label} | " + " | ".join(cells) + " |")
    tail = "".join(f"\n\n{k}: not scored ({why})" for k, why in loc.get("unavailable", {}).items())
    return head + "\n".join(lines) + tail
