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

__all__ = ["LESION_KIND", "LESION_SCORE_THRESHOLD", "REFERENCES", "TARGETS", "VOLUME_KIND", "ScoreTable",
           "lesion_mask_map", "localisation_markdown", "localisation_rules", "parse_heatmap_kinds",
           "score_heatmaps", "score_lesion_masks", "score_volume_heatmaps"]


def parse_heatmap_kinds(text: str | Sequence[str] | None) -> list[str]:
    """``"cam,gradcam16"`` (or a list) -> checked kind names; ``None`` / empty -> ``[]``.

    Raises:
        ConfigError: an unknown kind (the message lists the known ones).
    """
    from chestdx.explain.heatmap import check_heatmap_kinds

    if not text:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    return check_heatmap_kinds([k.strip() for k in items if k.strip()])


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
    table = ScoreTable()
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
        imgs = images[:, 0].detach().float().cpu().numpy()
        for j, idx in enumerate(batch["index"][keep].tolist()):
            s = samples[int(idx)]
            table.add(f"{s.site}/{s.patient_id}", {"index": int(idx), "path": str(s.path)},
                      {k: v[j] for k, v in maps.items()}, truth[j], imgs[j])
    return table.result(localisation_rules(shape, target), default_kind=default_kind, unavailable=unavailable,
                        n_boot=n_boot, seed=seed)


def localisation_rules(shape: tuple[int, int] | None, target: str = "predicted") -> dict[str, Any]:
    """The scoring rules written next to the figures, for 2D maps of ``shape (H, W)`` (None: none scored)."""
    return {
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


class ScoreTable:
    """Scores of 2D maps against their lesion masks, gathered image by image, with the references.

    Each :meth:`add` scores the given maps and the two reference maps (:data:`REFERENCES`) of one 2D
    image (a slice, an X-ray, one axial slice of a volume); :meth:`result` summarises them with
    patient-level intervals. Shared by :func:`score_heatmaps`, :func:`score_volume_heatmaps` and
    :func:`score_lesion_masks`.
    """

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, float]]] = {}
        self.groups: list[str] = []
        self.per_image: list[dict[str, Any]] = []
        self.zero_maps: dict[str, int] = {}  # kind -> images where the map is all zero (every score 0)

    def add(self, group: str, record: dict[str, Any], maps: dict[str, np.ndarray], lesion: np.ndarray,
            image: np.ndarray) -> None:
        """Score one image.

        Args:
            group: its patient (``site/patient``): the bootstrap's cluster.
            record: what identifies it in ``per_image`` (``index``, ``path``, ``slice``...); the scores
                are added to it.
            maps: ``{kind: (H, W)}`` non-negative maps.
            lesion: ``(H, W)`` bool lesion mask.
            image: ``(H, W)`` the model's input image (for :func:`~chestdx.explain.scores.body_map`).
        """
        shape = (int(lesion.shape[-2]), int(lesion.shape[-1]))
        cands = {**maps, "centre_prior": centre_prior(shape), "body": body_map(image)}
        rec = dict(record)
        for name, m in cands.items():
            if name in maps:
                self.zero_maps[name] = self.zero_maps.get(name, 0) + int(not np.asarray(m).max() > 0)
            sc = localisation_scores(m, lesion)
            self.rows.setdefault(name, []).append(sc)
            rec[name] = sc
        self.groups.append(group)
        self.per_image.append(rec)

    def result(self, rules: dict[str, Any], *, default_kind: str = "", unavailable: dict[str, str] | None = None,
               n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
        """``{"rules", "n_images", "n_patients", "default_kind", "maps", "references", "unavailable",
        "zero_maps", "per_image"}`` (see :func:`score_heatmaps`): means over images, patient-level 95%
        intervals; ``zero_maps``: per kind, the images whose map is all zero (they score 0)."""
        summary = {name: summarise_scores(r, self.groups, n_boot=n_boot, seed=seed) for name, r in self.rows.items()}
        return {
            "rules": rules, "n_images": len(self.per_image), "n_patients": len(set(self.groups)),
            "default_kind": default_kind,
            "maps": {k: v for k, v in summary.items() if k not in REFERENCES},
            "references": {k: summary[k] for k in REFERENCES if k in summary},
            "unavailable": dict(unavailable or {}), "zero_maps": dict(self.zero_maps),
            "per_image": self.per_image,
        }


#: Map kind of a 3D model's per-slice scores (:func:`score_volume_heatmaps`).
VOLUME_KIND = "gradcam3d"
#: Map kind of the lesion model's own masks (:func:`score_lesion_masks`).
LESION_KIND = "lesion_mask"
#: Detections whose masks make the lesion model's map: those scoring at least this (the predictor's
#: default ``lesion_score_threshold``, the masks ``chestdx predict`` shows).
LESION_SCORE_THRESHOLD = 0.5


def score_volume_heatmaps(model: Any, loader: Any, samples: Sequence[Any], *, n_boot: int = 1000, seed: int = 0,
                          target: str = "predicted") -> dict[str, Any]:
    """Score a 3D model's Grad-CAM against the 3D lesion masks, axial slice by axial slice.

    Rules (also in the output's ``rules``):

    - the map is :func:`~chestdx.explain.cam.volume_cam` (``gradcam3d``, the map ``chestdx predict``
      shows): Grad-CAM on the 3D feature map, trilinearly upsampled to the model's input grid
      ``(D, S, S)``, of the predicted class (or the labelled one, ``target="true"``);
    - the lesion mask is on the same grid: :class:`~chestdx.data.volume_dataset.VolumeDataset` resizes
      the scan trilinearly and its mask with nearest neighbours (``torch`` ``nearest``: output voxel
      ``i`` takes source voxel ``floor(i * n_in / n_out)`` on each axis), a voxel is lesion when that
      source voxel is;
    - a scored image is one axial slice ``k`` of the grid holding at least one lesion voxel; slices
      without lesion, and scans without a mask, are not counted;
    - each such slice is scored as a 2D map with the scores of :mod:`chestdx.explain.scores`; they are
      relative to the slice's own maximum / mass, so the volume-wide scale of ``volume_cam`` does not
      change them (a slice where the map is all zero scores 0 on everything);
    - references per slice: the centred Gaussian prior of the slice and the body of that slice;
    - intervals: patient-level cluster bootstrap (``site/patient``; one scan per patient in the
      phantom, so patient = scan): every lesion slice of a drawn patient counts.

    Args:
        model: a 3D model (``forward_features`` / ``forward_head``; eval mode is set here).
        loader: batches of ``image (B, 1, D, S, S)``, ``lesion (B, 1, D, S, S)``, ``has_mask (B,)``,
            ``label (B,)``, ``index (B,)`` into ``samples``.
        samples: the scan records (``site``, ``patient_id``, ``path``).
        target: ``"predicted"`` or ``"true"``, as in :func:`score_heatmaps`.

    Returns:
        :func:`score_heatmaps`' dict with map kind ``gradcam3d``; ``n_images`` is the number of lesion
        slices, ``n_scans`` the scans they come from, ``unit`` ``"axial slices"``; ``per_image`` rows
        carry ``index`` (the scan), ``path`` and ``slice`` (``k`` on the model's grid).

    Raises:
        ConfigError: an unknown ``target``.
    """
    if target not in TARGETS:
        raise ConfigError(f"unknown heatmap target {target!r}; choose one of {TARGETS}")
    from chestdx.engine.device import model_device
    from chestdx.explain.cam import volume_cam

    model.eval()
    table = ScoreTable()
    scans: set[int] = set()
    grid: tuple[int, ...] | None = None
    for batch in loader:
        lesion = batch["lesion"][:, 0] > 0.5  # (B, D, S, S)
        keep = batch["has_mask"].bool() & lesion.flatten(1).any(1)
        if not keep.any():
            continue
        volumes = batch["image"][keep].to(model_device(model))  # (b, 1, D, S, S)
        truth = lesion[keep].cpu().numpy()
        grid = tuple(int(v) for v in truth.shape[1:])
        with torch.no_grad():
            out = model(volumes)
        cls = batch["label"][keep].to(volumes.device).long() if target == "true" else None
        maps = volume_cam(model, volumes, cls, out=out).detach().float().cpu().numpy()  # (b, D, S, S)
        vols = volumes[:, 0].detach().float().cpu().numpy()
        for j, idx in enumerate(batch["index"][keep].tolist()):
            s = samples[int(idx)]
            scans.add(int(idx))
            for k in np.nonzero(truth[j].reshape(truth.shape[1], -1).any(1))[0].tolist():
                table.add(f"{s.site}/{s.patient_id}", {"index": int(idx), "path": str(s.path), "slice": int(k)},
                          {VOLUME_KIND: maps[j, k]}, truth[j, k], vols[j, k])
    rules = localisation_rules((grid[1], grid[2]) if grid else None, target)
    rules.update({
        "unit": "axial slice of the model's (D, S, S) grid with at least one lesion voxel; slices without "
                "lesion and scans without a mask are not counted",
        "map": "3D Grad-CAM (volume_cam) upsampled trilinearly to (D, S, S); each slice scored as a 2D map "
               "(scores relative to the slice's own maximum / mass; an all-zero slice scores 0)",
        "mask_resize": "lesion mask resized to (D, S, S) with nearest neighbours (voxel i <- source voxel "
                       "floor(i * n_in / n_out) per axis), the scan itself trilinearly",
        "centre_prior": f"centred Gaussian of each slice, sigma {PRIOR_SIGMA:g} of each side",
        "body": f"per slice: pixels above {BODY_THRESHOLD:g} of the slice's range, holes filled (uniform map)",
        "interval": "patient-level cluster bootstrap, 95% (site/patient; all lesion slices of a drawn "
                    "patient's scans)",
        "grid": list(grid) if grid else None,
    })
    res = table.result(rules, default_kind=VOLUME_KIND if table.per_image else "", n_boot=n_boot, seed=seed)
    res["n_scans"] = len(scans)
    res["unit"] = "axial slices"
    return res


def lesion_mask_map(masks: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The lesion model's map of one image, the one ``chestdx predict`` shows and evaluation scores:
    the union of the binary masks ``(m, H, W)`` of the detections kept (by
    :func:`~chestdx.evaluate.lesion.predict_lesions`' score threshold) -> ``(H, W)`` float32 0 / 1,
    all zero without a detection. Binary, not weighted by score."""
    m = np.asarray(masks, dtype=bool)
    if m.ndim != 3 or not len(m):
        return np.zeros(tuple(int(v) for v in shape), dtype=np.float32)
    return np.asarray(m.any(0), dtype=np.float32)


def score_lesion_masks(model: Any, loader: Any, samples: Sequence[Any], *, n_boot: int = 1000, seed: int = 0,
                       score_threshold: float = LESION_SCORE_THRESHOLD) -> dict[str, Any]:
    """Score the lesion model's own masks (map kind ``lesion_mask``) against the images' lesion masks.

    The map of an image is :func:`lesion_mask_map`: the binary union of the masks (mask probability
    > 0.5, :func:`~chestdx.evaluate.lesion.predict_lesions`) of the detections scoring at least
    ``score_threshold`` (0.5, the predictor's default: the map ``chestdx predict`` shows). It is
    scored like every other map (:class:`ScoreTable`): pointing (the peak of a binary map is the
    union's pixel nearest its centroid), energy inside (the share of the union's area on the lesion),
    IoU / Dice (half the maximum of a 0 / 1 map is the union itself); an image with no such detection
    has an all-zero map and scores 0. Images without a lesion are not counted. Detection runs in fp32.

    Args:
        model: an :class:`~chestdx.models.affinity.AffinityModel` (or anything with ``detect(images)``
            returning per image ``masks (m, 1, H, W)`` probabilities, ``boxes (m, 4)``, ``scores (m,)``).
        loader: batches of ``image (B, 1, H, W)``, ``lesion (B, 1, H, W)``, ``has_mask (B,)``, ``index (B,)``.
        samples: the records the indices point at.

    Returns:
        :func:`score_heatmaps`' dict with map kind ``lesion_mask``.
    """
    from chestdx.engine.device import model_device
    from chestdx.evaluate.lesion import predict_lesions

    model.eval()
    table = ScoreTable()
    shape: tuple[int, int] | None = None
    for batch in loader:
        keep = batch["has_mask"].bool() & (batch["lesion"].flatten(1).sum(1) > 0)
        if not keep.any():
            continue
        images = batch["image"][keep].to(model_device(model))
        truth = batch["lesion"][keep][:, 0].cpu().numpy() > 0.5
        shape = (int(truth.shape[-2]), int(truth.shape[-1]))
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            found = predict_lesions(model, images.float(), score_threshold=score_threshold)
        imgs = images[:, 0].detach().float().cpu().numpy()
        for j, idx in enumerate(batch["index"][keep].tolist()):
            s = samples[int(idx)]
            union = lesion_mask_map(found[j]["masks"], shape)
            table.add(f"{s.site}/{s.patient_id}", {"index": int(idx), "path": str(s.path)},
                      {LESION_KIND: union}, truth[j], imgs[j])
    rules = localisation_rules(shape)
    rules.update({
        "map": f"union of the predicted lesion masks (mask probability > 0.5) of the detections scoring "
               f">= {score_threshold:g}, binary (as chestdx predict shows it); no detection: all-zero map, "
               "every score 0",
        "class": "class-agnostic",
    })
    return table.result(rules, default_kind=LESION_KIND if table.per_image else "", n_boot=n_boot, seed=seed)


def localisation_markdown(loc: dict[str, Any], title: str) -> str:
    """The table of :func:`score_heatmaps`: one row per map kind and reference, value [95% CI] per score."""
    rules = loc["rules"]
    unit = loc.get("unit", "images")
    scans = f" of {loc['n_scans']} scans" if "n_scans" in loc else ""
    cls = rules.get("class", "predicted")
    whose = f"maps of the {cls} class" if cls in TARGETS else "class-agnostic maps"
    made = f" Map: {rules['map']}." if "map" in rules else ""
    how = f" Unit: {rules['unit']}; mask: {rules['mask_resize']}." if "mask_resize" in rules else ""
    head = (f"### {title}: heatmap localisation\n\n{loc['n_images']} {unit} with a lesion{scans}, "
            f"{loc['n_patients']} patients; default map: {loc.get('default_kind') or '-'}; {whose}.{made}{how} "
            f"Pointing: {rules['pointing']}; IoU / Dice: {rules['iou_dice']}; intervals: {rules['interval']}.\n\n"
            "| map | pointing game | energy inside | IoU | Dice |\n|---|---|---|---|---|\n")
    lines = []
    for group, label in (("maps", ""), ("references", " (reference)")):
        for name, figs in loc.get(group, {}).items():
            cells = [f"{figs[k]['value']:.3f} [{figs[k]['ci_low']:.3f}, {figs[k]['ci_high']:.3f}]" for k in SCORES]
            lines.append(f"| {name}{label} | " + " | ".join(cells) + " |")
    tail = "".join(f"\n\n{k}: not scored ({why})" for k, why in loc.get("unavailable", {}).items())
    tail += "".join(f"\n\n{k}: all-zero map on {n} of {loc['n_images']} {unit} (scored 0)"
                    for k, n in loc.get("zero_maps", {}).items() if n)
    return head + "\n".join(lines) + tail
