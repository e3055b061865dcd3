"""Lesion segmentation and 3-class metrics of the affinity paper (maskrcnn-lesion-affinity.txt).

Segmentation (Sec. 4.2): COCO mask AP at IoU 0.5, 0.75 and [0.5:0.95] (step 0.05), computed by
pycocotools on masks (``iouType="segm"``), in two ways:

- ``coco``: the standard COCO figure over the whole set (detections on negative images are false
  positives, images without ground truth add no recall);
- ``paper``: the mean over images of each image's AP, where a *negative* image (no lesion) scores
  precision 0 when anything is detected and 1 when nothing is (the paper's rule), and a positive
  image scores pycocotools' AP on that image alone (0 when nothing is detected). Reading chosen:
  "anything detected" on a negative image means a detection with score >= ``negative_score_threshold``
  (0.5 by default); the paper gives no threshold.

Predicted masks are the Mask R-CNN mask probabilities pasted into the image and thresholded at 0.5
(the paper's "logit > 0").

Classification (Sec. 4.3): per-class sensitivity (Eq. 12), specificity (Eq. 13), the usual per-class
F1 (harmonic mean of precision and sensitivity) and the paper's Eq. 14 "F1 score"
``2 * sum_c w_c * Sens(c) * Spec(c) / (Sens(c) + Spec(c))`` with ``w_c`` the share of class ``c``:
a class-weighted harmonic mean of sensitivity and **specificity**, which is *not* the usual F1.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chestdx.errors import ConfigError

if TYPE_CHECKING:
    from chestdx.engine.run import Run

AP_KEYS = ("AP50", "AP75", "AP")


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))  # type: ignore[no-any-return]


def _coco_objects(gt_masks: Sequence[np.ndarray], pred_masks: Sequence[np.ndarray],
                  pred_scores: Sequence[np.ndarray]) -> tuple[Any, Any]:
    """In-memory COCO ground truth and detections (one category ``lesion``, image ids from 1)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []
    for i, (g, p, s) in enumerate(zip(gt_masks, pred_masks, pred_scores, strict=True)):
        h, w = np.asarray(g).shape[-2:]
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        for m in np.asarray(g).reshape(-1, h, w):
            rle = _rle(m)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "segmentation": rle,
                         "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
        for m, sc in zip(np.asarray(p).reshape(-1, h, w), np.asarray(s, dtype=float).reshape(-1), strict=True):
            rle = _rle(m)
            dets.append({"id": len(dets) + 1, "image_id": i + 1, "category_id": 1, "segmentation": rle,
                         "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
                         "score": float(sc), "iscrowd": 0})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "lesion"}]}
        gt.createIndex()
        dt = COCO()
        dt.dataset = {"images": images, "annotations": dets, "categories": [{"id": 1, "name": "lesion"}]}
        dt.createIndex()
    return gt, dt


def _ap(gt: Any, dt: Any, img_ids: Sequence[int]) -> dict[str, float]:
    """pycocotools' mask AP@[.5:.95], AP@.5, AP@.75 on ``img_ids`` (-1 where no ground truth)."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2])}


def mask_ap(gt_masks: Sequence[np.ndarray], pred_masks: Sequence[np.ndarray], pred_scores: Sequence[np.ndarray],
            negative_score_threshold: float = 0.5) -> dict[str, Any]:
    """COCO mask AP of a set of images, the COCO way and the paper's way (module docstring).

    Args:
        gt_masks: per image ``(n_i, H, W)`` bool instance masks (``n_i = 0``: negative image).
        pred_masks: per image ``(m_i, H, W)`` bool predicted masks.
        pred_scores: per image ``(m_i,)`` scores.
        negative_score_threshold: a negative image counts as "something detected" when a
            detection scores at least this.

    Returns:
        ``{"coco": {AP, AP50, AP75}, "paper": {...}, "per_image": [{AP, AP50, AP75, negative,
        detections}], "n_images", "n_negative"}``; ``coco`` figures are NaN when no image has a
        lesion.

    Raises:
        ConfigError: the three lists differ in length.
    """
    if not (len(gt_masks) == len(pred_masks) == len(pred_scores)):
        raise ConfigError(f"mask_ap: {len(gt_masks)} ground truths, {len(pred_masks)} predictions, "
                          f"{len(pred_scores)} score lists")
    n = len(gt_masks)
    gt, dt = _coco_objects(gt_masks, pred_masks, pred_scores)
    positive = [i + 1 for i in range(n) if len(np.asarray(gt_masks[i]))]
    nan = {k: float("nan") for k in AP_KEYS}
    coco = _ap(gt, dt, list(range(1, n + 1))) if positive else dict(nan)
    if positive and coco["AP"] < 0:  # pycocotools: -1 = nothing to score
        coco = dict(nan)
    per_image = []
    for i in range(n):
        scores = np.asarray(pred_scores[i], dtype=float).reshape(-1)
        if i + 1 in positive:
            ap = _ap(gt, dt, [i + 1])
            ap = {k: max(v, 0.0) for k, v in ap.items()}  # no detection on a positive image: 0
            per_image.append({**ap, "negative": False, "detections": int(len(scores))})
        else:
            hit = bool((scores >= negative_score_threshold).any())
            per_image.append({**{k: 0.0 if hit else 1.0 for k in AP_KEYS}, "negative": True,
                              "detections": int((scores >= negative_score_threshold).sum())})
    paper = {k: float(np.mean([r[k] for r in per_image])) if per_image else float("nan") for k in AP_KEYS}
    return {"coco": coco, "paper": paper, "per_image": per_image, "n_images": n, "n_negative": n - len(positive),
            "negative_score_threshold": negative_score_threshold}


def class_metrics(labels: Sequence[int] | np.ndarray, preds: Sequence[int] | np.ndarray,
                  class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class sensitivity, specificity, usual F1, and the paper's Eq. 14 F1.

    The usual figures come from :func:`chestdx.evaluate.metrics.label_metrics`, the implementation
    ``chestdx evaluate`` uses: a ratio with a zero denominator is 0, and the macro average leaves out
    a class absent from both the labels and the predictions (its F1 is 0 / 0); see
    :func:`~chestdx.evaluate.metrics.confusion_statistics` for why.

    Args:
        labels: ``(N,)`` true classes.
        preds: ``(N,)`` predicted classes.
        class_names: the ``K`` class names (classes that never occur included).

    Returns:
        ``{"per_class": {name: {sensitivity, specificity, precision, f1, share}}, "eq14_f1",
        "macro_f1", "weighted_precision", "weighted_recall", "weighted_f1", "accuracy",
        "confusion_matrix", "note"}``.
    """
    from chestdx.evaluate.metrics import label_metrics

    k = len(class_names)
    m = label_metrics(np.asarray(labels, dtype=int), np.asarray(preds, dtype=int), k)
    n = max(sum(m["support"]), 1.0)
    per, eq14 = {}, 0.0
    for c, name in enumerate(class_names):
        sens, spec = m["recall"][c], m["specificity"][c]
        share = m["support"][c] / n
        eq14 += 2 * share * (sens * spec / (sens + spec) if sens + spec else 0.0)
        per[name] = {"sensitivity": sens, "specificity": spec, "precision": m["precision"][c], "f1": m["f1"][c],
                     "share": float(share)}
    return {"per_class": per, "eq14_f1": float(eq14), "macro_f1": m["macro_f1"],
            "weighted_precision": m["weighted_precision"], "weighted_recall": m["weighted_recall"],
            "weighted_f1": m["weighted_f1"], "accuracy": m["accuracy"], "confusion_matrix": m["confusion_matrix"],
            "note": "eq14_f1 is the paper's Eq. 14 (class-weighted harmonic mean of sensitivity and "
                    "specificity), not the usual F1 (harmonic mean of precision and sensitivity)"}


def predict_lesions(model: Any, images: Any, mask_threshold: float = 0.5,
                    score_threshold: float = 0.0) -> list[dict[str, np.ndarray]]:
    """Run the affinity model's detector on ``(N, 1, S, S)``.

    Returns:
        per image ``masks (m, S, S)`` bool (probability > ``mask_threshold``), ``boxes (m, 4)``,
        ``scores (m,)``, keeping detections scoring at least ``score_threshold``.
    """
    out = []
    for d in model.detect(images):
        keep = (d["scores"] >= score_threshold).cpu().numpy()
        out.append({"masks": (d["masks"][:, 0] > mask_threshold).cpu().numpy()[keep],
                    "boxes": d["boxes"].cpu().numpy()[keep], "scores": d["scores"].cpu().numpy()[keep]})
    return out


def evaluate_segmentation(model: Any, samples: Sequence[Any], cfg: Any, out: str | Path | None = None, *,
                          batch_size: int = 4, overlays: int = 6, negative_score_threshold: float = 0.5
                          ) -> dict[str, Any]:
    """Mask AP of the affinity model on segmentation samples (images with lesion masks).

    Args:
        model: an :class:`~chestdx.models.affinity.AffinityModel`.
        samples: segmentation samples (``mask`` set; an empty mask is a negative image).
        cfg: the recipe's data section (preprocessing, ``min_lesion_area``).
        out: folder for ``segmentation.json`` and the first ``overlays`` overlays (``lesions/``).

    Returns:
        :func:`mask_ap`'s dict plus ``wall_seconds``.
    """
    import time

    import torch

    from chestdx.data.lesions import SegmentationDataset
    from chestdx.evaluate.plots import save_png
    from chestdx.explain.overlays import draw_lesions
    from chestdx.utils import write_json

    t0 = time.time()
    ds = SegmentationDataset(list(samples), cfg, train=False, min_area=cfg.min_lesion_area, cache=False)
    gts, pms, pss, drawn = [], [], [], 0
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(ds), batch_size):
        items = [ds[i] for i in range(start, min(len(ds), start + batch_size))]
        images = torch.stack([it["image"] for it in items]).to(device)
        for it, pred in zip(items, predict_lesions(model, images), strict=True):
            gts.append(it["target"]["masks"].numpy().astype(bool))
            pms.append(pred["masks"])
            pss.append(pred["scores"])
            if out is not None and drawn < overlays:
                shown = pred["scores"] >= negative_score_threshold
                pic = draw_lesions(it["image"][0].cpu().numpy(), pred["masks"][shown], pred["boxes"][shown],
                                   pred["scores"][shown], gt=gts[-1].any(0) if len(gts[-1]) else None)
                save_png(pic, Path(out) / "lesions" / f"{drawn:03d}_{Path(samples[int(it['index'])].path).stem}.png")
                drawn += 1
    result = mask_ap(gts, pms, pss, negative_score_threshold)
    result["wall_seconds"] = round(time.time() - t0, 2)
    if out is not None:
        write_json(Path(out) / "segmentation.json", result)
    return result


def lesion_run_results(run: Run, model: Any, labels: np.ndarray, probs: np.ndarray, split: str,
                       out: str | Path, segmentation_sources: Sequence[str | Path] | None = None) -> dict[str, Any]:
    """The affinity paper's figures for a ``task: lesion`` run (called by ``evaluate_run``).

    Args:
        run: the :class:`~chestdx.engine.run.Run`.
        model: its :class:`~chestdx.models.affinity.AffinityModel`.
        labels: ``(N,)`` true classes of the classification images.
        probs: ``(N, K)`` their predicted probabilities.
        split: the split scored (``test``); segmentation images of this split are scored.
        out: output folder.
        segmentation_sources: other segmentation data (e.g. the Inf-Net test set); default the
            run's ``segmentation_samples.csv``.

    Returns:
        ``{"lesion_classification": class_metrics(...), "segmentation": evaluate_segmentation(...)}``
        (``segmentation`` absent when there are no segmentation images of ``split``).
    """
    from chestdx.engine.run import read_samples

    recipe = run.recipe
    res: dict[str, Any] = {"lesion_classification": class_metrics(labels, np.asarray(probs).argmax(1),
                                                                  recipe.data.class_names)}
    if segmentation_sources:
        from chestdx.data.lesions import load_segmentation_sources

        seg = load_segmentation_sources(segmentation_sources, recipe.data.class_names,
                                        recipe.data.split_fractions, seed=recipe.seed)
    else:
        path = Path(run.path) / "segmentation_samples.csv"
        seg = read_samples(path) if path.is_file() else []
    chosen = [s for s in seg if s.split == split]
    if chosen:
        r = evaluate_segmentation(model, chosen, recipe.data, out)
        res["segmentation"] = {k: v for k, v in r.items() if k != "per_image"}
    return res


def lesion_markdown(result: dict[str, Any], title: str) -> str:
    """Markdown for :func:`lesion_run_results`' blocks."""
    parts = []
    seg = result.get("segmentation")
    if seg:
        lines = [f"### {title}: lesion segmentation (COCO mask AP, pycocotools)", "",
                 f"{seg['n_images']} images, {seg['n_negative']} without lesions.", "",
                 "| | AP@0.5 | AP@0.75 | AP@[0.5:0.95] |", "|---|---|---|---|"]
        for key, label in (("paper", "paper (per-image mean, negative-image rule)"), ("coco", "COCO (whole set)")):
            a = seg[key]
            lines.append(f"| {label} | {a['AP50']:.3f} | {a['AP75']:.3f} | {a['AP']:.3f} |")
        parts.append("\n".join(lines))
    cm = result.get("lesion_classification")
    if cm:
        lines = [f"### {title}: per-class figures of the affinity paper", "",
                 "| class | sensitivity | specificity | F1 (usual) |", "|---|---|---|---|"]
        for name, c in cm["per_class"].items():
            lines.append(f"| {name} | {c['sensitivity']:.4f} | {c['specificity']:.4f} | {c['f1']:.4f} |")
        lines += ["", f"Eq. 14 \"F1\" {cm['eq14_f1']:.4f}; usual weighted average (Tables III/IV): precision "
                      f"{cm.get('weighted_precision', float('nan')):.4f}, recall {cm.get('weighted_recall', float('nan')):.4f}, "
                      f"F1 {cm['weighted_f1']:.4f}; macro F1 "
                      f"{cm['macro_f1']:.4f}. Eq. 14 is **not** the usual F1: it is the class-weighted harmonic "
                      "mean of sensitivity and specificity."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
