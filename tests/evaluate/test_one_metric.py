"""Issue 14 item 4: one implementation of accuracy / F1 / AUC behind evaluate, the lesion metrics,
the voting sweep and validation, so they agree on the same labels.

The rule (torchmetrics', checked against ``torchmetrics.functional`` here): a ratio with a zero
denominator is 0; a class absent from both the labels and the predictions (``tp + fp + fn == 0``)
is left out of macro averages; a class present in one of them but never right has F1 0 and counts.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_f1_score

from chestdx.engine.val_metrics import validation_metrics
from chestdx.evaluate.lesion import class_metrics
from chestdx.evaluate.metrics import classification_metrics, label_metrics
from chestdx.evaluate.voting_sweep import accuracy_f1


def _probs(pred, k):
    """Probabilities whose argmax is ``pred`` ``(N,)`` -> ``(N, K)``."""
    return np.eye(k)[np.asarray(pred)] * 0.8 + 0.2 / k


def _tm_macro_f1(y, pred, k):
    return float(multiclass_f1_score(torch.tensor(pred), torch.tensor(y), num_classes=k, average="macro"))


def _everywhere(y, pred, names):
    """Macro F1 and accuracy of (y, pred) by each caller."""
    k = len(names)
    ev = classification_metrics(y, _probs(pred, k), names, n_boot=0)
    les = class_metrics(y, pred, names)
    lab = label_metrics(y, pred, k)
    return ({"evaluate": ev["macro_f1"]["value"], "lesion": les["macro_f1"], "label_metrics": lab["macro_f1"],
             "torchmetrics": _tm_macro_f1(y, pred, k)},
            {"evaluate": ev["accuracy"]["value"], "lesion": les["accuracy"], "label_metrics": lab["accuracy"]})


def test_issue_example_gives_two_thirds_everywhere():
    """y = [0,0,1,1,0,1], pred = [0,1,1,1,0,0], three class names: classes 0 and 1 each have
    tp 2, fp 1, fn 1 (F1 2/3); class 2 never occurs and is never predicted (left out):
    macro F1 = 2/3 = 0.667 (not (2/3 + 2/3 + 0) / 3 = 0.444)."""
    f1, acc = _everywhere([0, 0, 1, 1, 0, 1], [0, 1, 1, 1, 0, 0], ["normal", "pneumonia", "covid"])
    for who, value in f1.items():
        assert value == pytest.approx(2 / 3, abs=1e-6), who
    for who, value in acc.items():
        assert value == pytest.approx(4 / 6), who


def test_a_class_predicted_but_never_present_counts_zero():
    """y = [0,0,1,1], pred = [0,2,1,1]: F1 class 0 = 2/3 (tp 1, fn 1), class 1 = 1, class 2 = 0
    (predicted once, never true: tp 0, fp 1): macro (2/3 + 1 + 0) / 3 = 5/9."""
    names = ["a", "b", "c"]
    f1, acc = _everywhere([0, 0, 1, 1], [0, 2, 1, 1], names)
    for who, value in f1.items():
        assert value == pytest.approx(5 / 9, abs=1e-6), who
    assert acc["evaluate"] == acc["lesion"] == pytest.approx(3 / 4)
    les = class_metrics([0, 0, 1, 1], [0, 2, 1, 1], names)["per_class"]
    assert [les[n]["f1"] for n in names] == pytest.approx([2 / 3, 1.0, 0.0])


Y_BIN = [1, 1, 1, 0, 0, 0, 0, 1]
P_BIN = [1, 0, 0, 0, 1, 0, 0, 1]
"""Class 1: tp 2, fn 2, fp 1 -> precision 2/3, recall 1/2, F1 4/7; class 0: tp 3, fn 1, fp 2 -> F1 2/3;
accuracy 5/8; macro F1 (4/7 + 2/3) / 2 = 13/21."""


def test_binary_by_hand_and_the_voting_sweep_agrees():
    names = ["non-COVID", "COVID"]
    f1, acc = _everywhere(Y_BIN, P_BIN, names)
    for who, value in f1.items():
        assert value == pytest.approx(13 / 21, abs=1e-6), who
    ev = classification_metrics(Y_BIN, _probs(P_BIN, 2), names, n_boot=0)
    assert ev["positive"]["f1"]["value"] == pytest.approx(4 / 7)
    assert ev["positive"]["precision"]["value"] == pytest.approx(2 / 3)
    assert ev["positive"]["recall"]["value"] == pytest.approx(1 / 2)
    sweep_acc, sweep_f1 = accuracy_f1(np.asarray(Y_BIN), np.asarray(P_BIN))
    assert sweep_acc == pytest.approx(ev["accuracy"]["value"]) == pytest.approx(5 / 8)
    assert sweep_f1 == pytest.approx(ev["positive"]["f1"]["value"])
    assert class_metrics(Y_BIN, P_BIN, names)["per_class"]["COVID"]["f1"] == pytest.approx(4 / 7)


def test_never_predicting_the_positive_class():
    """y = [0,0,1,1], pred all 0: COVID F1 0 (0 / 0 precision is 0), class 0 F1 2/3: macro 1/3."""
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0])
    f1, _ = _everywhere(y, pred, ["neg", "pos"])
    for who, value in f1.items():
        assert value == pytest.approx(1 / 3, abs=1e-6), who
    assert accuracy_f1(y, pred) == pytest.approx((0.5, 0.0))


@pytest.mark.parametrize(("k", "present"), [(2, 2), (3, 3), (4, 3), (4, 2)])
def test_validation_scores_what_evaluate_reports(k, present):
    """val_acc / val_auc equal evaluate's accuracy and AUC (binary: class 1's AUC; K > 2: macro
    one-vs-rest AUC over the classes that occur in the labels, also when one is missing), to
    float32 precision."""
    rng = np.random.default_rng(k)
    y = np.arange(60) % present
    logits = rng.normal(size=(60, k)) + 1.5 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs32 = torch.tensor(probs, dtype=torch.float32)
    m = validation_metrics(k)
    for i in range(0, 60, 16):
        m.update(probs32[i:i + 16], torch.tensor(y[i:i + 16]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics: "no positive samples" for a missing class
        val = m.compute()
    ev = classification_metrics(y, probs32.double().numpy(), [f"c{c}" for c in range(k)], n_boot=0)
    assert float(val["val_acc"]) == pytest.approx(ev["accuracy"]["value"], abs=1e-6)
    auc = ev["positive"]["auc"]["value"] if k == 2 else ev["macro_auc"]["value"]
    assert float(val["val_auc"]) == pytest.approx(auc, abs=1e-6)
