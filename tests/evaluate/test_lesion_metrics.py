"""Mask AP (pycocotools) with the paper's negative-image rule; per-class and Eq. 14 figures."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from chestdx.evaluate.lesion import _coco_objects, class_metrics, mask_ap


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_hand_computed_ap():
    gt = [_box(20, 20, 0, 10, 0, 10)[None]]  # 100 px
    # a perfect mask: AP 1 at every threshold
    r = mask_ap(gt, [gt[0].copy()], [np.array([0.9])])
    assert r["coco"] == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})
    # IoU 100 / 160 = 0.625: a match at 0.5, 0.55, 0.6 only -> AP@[.5:.95] = 3 / 10
    pred = _box(20, 20, 0, 10, 0, 16)[None]
    r = mask_ap(gt, [pred], [np.array([0.9])])
    assert r["coco"]["AP50"] == pytest.approx(1.0)
    assert r["coco"]["AP75"] == pytest.approx(0.0)
    assert r["coco"]["AP"] == pytest.approx(0.3)
    # a false positive ranked above the true positive: precision 1/2 at recall 1 -> AP50 = 0.5
    fp = _box(20, 20, 12, 20, 12, 20)
    r = mask_ap(gt, [np.stack([fp, gt[0][0]])], [np.array([0.95, 0.9])])
    assert r["coco"]["AP50"] == pytest.approx(0.5)


def test_ap_equals_pycocotools_own_figure():
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    gts, preds, scores = [], [], []
    for i in range(4):
        g = np.stack([_box(32, 32, 2 + i, 12 + i, 3, 14), _box(32, 32, 18, 28, 16 + i, 30)])
        p = np.stack([_box(32, 32, 3 + i, 12 + i, 2, 14 + i % 2), _box(32, 32, 20, 27, 14, 26),
                      _box(32, 32, 0, 5, 25, 31)])
        gts.append(g)
        preds.append(p)
        scores.append(rng.uniform(0.1, 1.0, 3))
    r = mask_ap(gts, preds, scores)
    gt, dt = _coco_objects(gts, preds, scores)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert (r["coco"]["AP"], r["coco"]["AP50"], r["coco"]["AP75"]) == pytest.approx(tuple(ev.stats[:3]))
    assert 0 < r["coco"]["AP"] < 1


def test_negative_image_rule():
    pos_gt = _box(16, 16, 0, 8, 0, 8)[None]
    neg_gt = np.zeros((0, 16, 16), bool)
    det = _box(16, 16, 0, 8, 0, 8)[None]
    empty = np.zeros((0, 16, 16), bool)
    # nothing detected on the negative image: precision 1 there; perfect on the positive: mean 1
    r = mask_ap([pos_gt, neg_gt], [det, empty], [np.array([0.9]), np.zeros(0)])
    assert [p["AP"] for p in r["per_image"]] == pytest.approx([1.0, 1.0])
    assert r["paper"]["AP"] == pytest.approx(1.0)
    assert r["n_negative"] == 1
    # anything detected on the negative image: precision 0 there -> mean 0.5
    r = mask_ap([pos_gt, neg_gt], [det, det], [np.array([0.9]), np.array([0.6])])
    assert r["per_image"][1]["AP"] == 0.0 and r["paper"]["AP50"] == pytest.approx(0.5)
    # a detection below the threshold does not count as detected
    r = mask_ap([neg_gt], [det], [np.array([0.2])], negative_score_threshold=0.5)
    assert r["paper"]["AP"] == 1.0 and np.isnan(r["coco"]["AP"])
    # a positive image with no detection scores 0
    r = mask_ap([pos_gt], [empty], [np.zeros(0)])
    assert r["paper"]["AP"] == 0.0


def test_class_metrics_and_eq14_by_hand():
    labels = [0, 0, 1, 1, 2, 2, 2, 2]
    preds = [0, 1, 1, 1, 2, 2, 0, 2]
    m = class_metrics(labels, preds, ["normal", "pneumonia", "covid"])
    c = m["per_class"]
    assert c["normal"]["sensitivity"] == pytest.approx(0.5) and c["normal"]["specificity"] == pytest.approx(5 / 6)
    assert c["pneumonia"]["sensitivity"] == 1.0 and c["pneumonia"]["specificity"] == pytest.approx(5 / 6)
    assert c["covid"]["sensitivity"] == pytest.approx(0.75) and c["covid"]["specificity"] == 1.0
    hm = [2 * 0.5 * (5 / 6) / (0.5 + 5 / 6), 2 * (5 / 6) / (1 + 5 / 6), 2 * 0.75 / 1.75]
    assert m["eq14_f1"] == pytest.approx(0.25 * hm[0] + 0.25 * hm[1] + 0.5 * hm[2])
    # the usual F1: precision and sensitivity
    assert c["pneumonia"]["f1"] == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert m["eq14_f1"] != pytest.approx(m["weighted_f1"])
    assert "not the usual F1" in m["note"]


def test_class_metrics_agrees_with_classification_metrics_on_an_absent_class():
    """Issue 14 item 4: y = [0,0,1,1,0,1], pred = [0,1,1,1,0,0], three class names. Class 2 never occurs
    and is never predicted: its F1 is 0/0 and it is left out of the macro average (2/3, not 4/9)."""
    from chestdx.evaluate.metrics import classification_metrics

    y, pred = [0, 0, 1, 1, 0, 1], [0, 1, 1, 1, 0, 0]
    names = ["normal", "pneumonia", "covid"]
    m = class_metrics(y, pred, names)
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    ref = classification_metrics(y, probs, names, n_boot=0)
    assert m["macro_f1"] == pytest.approx(2 / 3) and ref["macro_f1"]["value"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(ref["accuracy"]["value"]) == pytest.approx(4 / 6)
    assert m["weighted_f1"] == pytest.approx(ref["weighted_f1"]["value"]) == pytest.approx(2 / 3)
    assert m["weighted_precision"] == pytest.approx(ref["weighted_precision"]["value"])
    for name in names:
        assert m["per_class"][name]["f1"] == pytest.approx(ref["per_class"][name]["f1"]["value"])


def test_lesion_report_has_the_weighted_average_rows():
    from chestdx.evaluate.lesion import lesion_markdown

    m = class_metrics([0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, 2, 2, 0, 2], ["normal", "pneumonia", "covid"])
    # supports 2 / 2 / 4; precision 1/2, 2/3, 1; recall 1/2, 1, 3/4
    assert m["weighted_precision"] == pytest.approx((2 * 0.5 + 2 * 2 / 3 + 4 * 1.0) / 8)
    assert m["weighted_recall"] == pytest.approx((2 * 0.5 + 2 * 1.0 + 4 * 0.75) / 8)
    md = lesion_markdown({"lesion_classification": m}, "t")
    assert f"precision {m['weighted_precision']:.4f}, recall {m['weighted_recall']:.4f}, F1 {m['weighted_f1']:.4f}" in md
