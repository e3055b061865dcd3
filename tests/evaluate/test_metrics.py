"""Tests of chestdx.evaluate.metrics: figures by hand, bootstrap behaviour, aggregation, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from chestdx.errors import ChestdxError
from chestdx.evaluate.metrics import (
    MetricInputError,
    _bootstrap,
    _stats_from_weights,
    _torchmetrics_point,
    aggregate,
    classification_metrics,
    get_metric,
    summarise_seeds,
)

# 6 cases, 3 classes, supports 3 / 2 / 1; predictions (argmax) 0 0 1 1 2 2
Y3 = np.array([0, 0, 0, 1, 1, 2])
P3 = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.6, 0.3, 0.1],
        [0.3, 0.5, 0.2],
        [0.2, 0.6, 0.2],
        [0.1, 0.4, 0.5],
        [0.1, 0.2, 0.7],
    ]
)
NAMES3 = ["normal", "pneumonia", "COVID"]

# 6 cases, binary; p1 = .1 .85 .7 .8 .9 .6 -> predictions 0 1 1 1 1 1
Y2 = np.array([0, 0, 0, 1, 1, 1])
P1 = np.array([0.1, 0.85, 0.7, 0.8, 0.9, 0.6])
P2 = np.stack([1 - P1, P1], axis=1)


def v(m, *path):
    node = m
    for p in path:
        node = node[p]
    return node["value"]


def random_task(n: int, k: int, seed: int, signal: float = 1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def test_three_class_figures_by_hand():
    m = classification_metrics(Y3, P3, NAMES3, n_boot=50)
    # confusion matrix, rows = true: [[2,1,0],[0,1,1],[0,0,1]]
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["n"] == 6
    assert v(m, "accuracy") == pytest.approx(4 / 6)
    # normal: tp2 fp0 fn1 tn3
    pc = m["per_class"]
    assert v(pc, "normal", "precision") == pytest.approx(1.0)
    assert v(pc, "normal", "recall") == pytest.approx(2 / 3)
    assert v(pc, "normal", "specificity") == pytest.approx(1.0)
    assert v(pc, "normal", "f1") == pytest.approx(0.8)
    # pneumonia: tp1 fp1 fn1 tn3
    assert v(pc, "pneumonia", "precision") == pytest.approx(0.5)
    assert v(pc, "pneumonia", "recall") == pytest.approx(0.5)
    assert v(pc, "pneumonia", "specificity") == pytest.approx(0.75)
    assert v(pc, "pneumonia", "f1") == pytest.approx(0.5)
    # COVID: tp1 fp1 fn0 tn4
    assert v(pc, "COVID", "precision") == pytest.approx(0.5)
    assert v(pc, "COVID", "recall") == pytest.approx(1.0)
    assert v(pc, "COVID", "specificity") == pytest.approx(0.8)
    assert v(pc, "COVID", "f1") == pytest.approx(2 / 3)
    assert [pc[c]["support"] for c in NAMES3] == [3, 2, 1]
    assert v(m, "macro_f1") == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert v(m, "weighted_f1") == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert v(m, "macro_precision") == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert v(m, "macro_recall") == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    # AUC one-vs-rest: normal 9/9; pneumonia pos {.6,.4} vs neg {.2,.3,.5,.2} = 7/8; COVID 5/5
    assert v(pc, "normal", "auc") == pytest.approx(1.0)
    assert v(pc, "pneumonia", "auc") == pytest.approx(7 / 8)
    assert v(pc, "COVID", "auc") == pytest.approx(1.0)
    assert v(m, "macro_auc") == pytest.approx((1 + 7 / 8 + 1) / 3)
    assert "positive" not in m


def test_binary_positive_block_by_hand():
    m = classification_metrics(Y2, P2, ["non-COVID", "COVID"], n_boot=50)
    pos = m["positive"]
    assert pos["class"] == "COVID" and pos["index"] == 1
    # COVID: tp3 fp2 fn0 tn1
    assert v(pos, "accuracy") == pytest.approx(4 / 6)
    assert v(pos, "precision") == pytest.approx(3 / 5)
    assert v(pos, "recall") == pytest.approx(1.0)
    assert v(pos, "specificity") == pytest.approx(1 / 3)
    assert v(pos, "f1") == pytest.approx(0.75)
    # pos {.8,.9,.6} vs neg {.1,.85,.7}: 2 + 3 + 1 wins of 9
    assert v(pos, "auc") == pytest.approx(6 / 9)
    assert pos["recall"] == m["per_class"]["COVID"]["recall"]

    m0 = classification_metrics(Y2, P2, ["non-COVID", "COVID"], n_boot=0, positive=0)
    pos0 = m0["positive"]
    assert pos0["class"] == "non-COVID" and pos0["index"] == 0
    # non-COVID: tp1 fp0 fn2 tn3
    assert v(pos0, "precision") == pytest.approx(1.0)
    assert v(pos0, "recall") == pytest.approx(1 / 3)
    assert v(pos0, "specificity") == pytest.approx(1.0)
    assert v(pos0, "f1") == pytest.approx(0.5)
    assert v(pos0, "auc") == pytest.approx(6 / 9)
    assert np.isnan(pos0["precision"]["low"])  # n_boot=0: no interval


def test_auc_by_hand_with_a_tie():
    # pos {.6,.4} vs neg {.2,.6}: 1 + 0.5 (tie) + 1 + 0 = 2.5 of 4
    y = np.array([0, 1, 0, 1])
    p1 = np.array([0.2, 0.6, 0.6, 0.4])
    m = classification_metrics(y, np.stack([1 - p1, p1], 1), ["neg", "pos"], n_boot=20)
    assert v(m, "positive", "auc") == pytest.approx(0.625)


def test_perfect_predictor_gives_one():
    y = np.array([0, 1, 2, 0, 1, 2, 2])
    p = np.eye(3)[y] * 0.8 + 0.2 / 3
    m = classification_metrics(y, p, NAMES3, n_boot=200)
    for key in ("accuracy", "macro_f1", "weighted_f1", "macro_auc", "macro_precision", "macro_recall"):
        assert m[key] == {"value": 1.0, "low": 1.0, "high": 1.0}
    for name in NAMES3:
        for key in ("precision", "recall", "specificity", "f1", "auc"):
            assert v(m, "per_class", name, key) == 1.0


def test_interval_contains_point_and_narrows_with_more_data():
    small = classification_metrics(*random_task(80, 3, seed=1), NAMES3, n_boot=400)
    large = classification_metrics(*random_task(2000, 3, seed=1), NAMES3, n_boot=400)
    for m in (small, large):
        for key in ("accuracy", "macro_f1", "weighted_f1", "macro_auc"):
            assert m[key]["low"] <= m[key]["value"] <= m[key]["high"], key
        for name in NAMES3:
            for key in ("precision", "recall", "specificity", "f1", "auc"):
                fig = m["per_class"][name][key]
                assert fig["low"] <= fig["value"] <= fig["high"], (name, key)
    for key in ("accuracy", "macro_f1", "macro_auc"):
        width_small = small[key]["high"] - small[key]["low"]
        width_large = large[key]["high"] - large[key]["low"]
        assert width_large < 0.5 * width_small, key


def test_seeded_bootstrap_is_reproducible():
    y, p = random_task(150, 2, seed=3)
    a = classification_metrics(y, p, ["a", "b"], n_boot=300, seed=7)
    b = classification_metrics(y, p, ["a", "b"], n_boot=300, seed=7)
    c = classification_metrics(y, p, ["a", "b"], n_boot=300, seed=8)
    assert a == b
    assert a["accuracy"]["value"] == c["accuracy"]["value"]
    assert (a["accuracy"]["low"], a["macro_auc"]["high"]) != (c["accuracy"]["low"], c["macro_auc"]["high"])
    assert a["interval"] == {"method": "percentile bootstrap", "n_boot": 300, "ci": 0.95, "seed": 7,
                             "unit": "case", "n_units": 150, "note": "cases resampled one by one: no patient ids given"}


def test_wider_ci_gives_wider_interval():
    y, p = random_task(200, 3, seed=4)
    m90 = classification_metrics(y, p, NAMES3, n_boot=300, ci=0.90)
    m99 = classification_metrics(y, p, NAMES3, n_boot=300, ci=0.99)
    assert m99["accuracy"]["low"] <= m90["accuracy"]["low"]
    assert m99["accuracy"]["high"] >= m90["accuracy"]["high"]


@pytest.mark.parametrize("k", [2, 3, 4])
def test_full_sample_statistic_agrees_with_torchmetrics(k):
    y, p = random_task(300, k, seed=k, signal=0.8)
    p = np.round(p, 2)  # create score ties
    p /= p.sum(axis=1, keepdims=True)
    ref = _torchmetrics_point(y, p)
    own = _stats_from_weights(y, p.argmax(1), p, np.ones((1, len(y))))
    for key, val in own.items():
        np.testing.assert_allclose(val[0], np.asarray(ref[key], dtype=float), atol=1e-6, err_msg=key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a disagreement would warn
        classification_metrics(y, p, [str(i) for i in range(k)], n_boot=10)


def test_agreement_with_torchmetrics_when_a_class_is_absent():
    # class 2 never occurs and is never predicted: left out of macro averages, AUC undefined
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.2, 0.7, 0.1],
            [0.3, 0.6, 0.1],
            [0.5, 0.4, 0.1],
            [0.7, 0.2, 0.1],
            [0.1, 0.8, 0.1],
        ]
    )
    ref = _torchmetrics_point(y, p)
    own = _stats_from_weights(y, p.argmax(1), p, np.ones((1, 6)))
    for key in (
        "accuracy",
        "macro_precision",
        "macro_recall",
        "macro_specificity",
        "macro_f1",
        "weighted_f1",
    ):
        assert own[key][0] == pytest.approx(float(ref[key]), abs=1e-6), key
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, p, NAMES3, n_boot=100)
    covid = m["per_class"]["COVID"]
    assert covid["support"] == 0
    assert covid["precision"]["value"] == 0.0 and covid["recall"]["value"] == 0.0  # zero division -> 0
    assert np.isnan(covid["auc"]["value"]) and np.isnan(covid["auc"]["low"])  # undefined -> NaN
    # macro F1 over the two present classes: class 0 tp2 fp1 fn1 -> .667, class 1 tp2 fp1 fn1 -> .667
    assert v(m, "macro_f1") == pytest.approx(2 / 3)
    assert np.isfinite(m["macro_auc"]["value"])


def test_weighted_bootstrap_equals_explicit_resampling():
    from sklearn.metrics import f1_score, roc_auc_score

    y, p = random_task(60, 3, seed=5)
    p = np.round(p, 1)
    p /= p.sum(axis=1, keepdims=True)
    pred = p.argmax(1)
    rng = np.random.default_rng(11)
    idx = rng.integers(0, 60, size=(5, 60))
    counts = np.stack([np.bincount(i, minlength=60) for i in idx]).astype(float)
    weighted = _stats_from_weights(y, pred, p, counts)
    for b in range(5):
        yb, pb = y[idx[b]], p[idx[b]]
        explicit = _stats_from_weights(yb, pb.argmax(1), pb, np.ones((1, 60)))
        for key in weighted:
            np.testing.assert_allclose(weighted[key][b], explicit[key][0], atol=1e-12, err_msg=key)
        for c in range(3):
            if 0 < (yb == c).sum() < 60:
                assert weighted["auc"][b, c] == pytest.approx(roc_auc_score(yb == c, pb[:, c]))
        assert weighted["weighted_f1"][b] == pytest.approx(f1_score(yb, pb.argmax(1), average="weighted"))


def test_bootstrap_chunks_do_not_change_the_draws(monkeypatch):
    import chestdx.evaluate.metrics as mod

    y, p = random_task(50, 2, seed=6)
    whole = _bootstrap(y, p.argmax(1), p, 40, seed=2)
    monkeypatch.setattr(mod, "_CHUNK_ELEMENTS", 50 * 7)  # chunks of 7 resamples
    chunked = _bootstrap(y, p.argmax(1), p, 40, seed=2)
    for key in whole:
        np.testing.assert_array_equal(whole[key], chunked[key])


def test_thousand_by_thousand_runs():
    y, p = random_task(1000, 3, seed=0)
    m = classification_metrics(y, p, NAMES3, n_boot=1000)
    assert m["interval"]["n_boot"] == 1000
    assert m["accuracy"]["low"] < m["accuracy"]["high"]


@pytest.mark.parametrize(
    ("y", "p", "names", "message"),
    [
        (Y3, P3[:, :2] / P3[:, :2].sum(1, keepdims=True), NAMES3, "3 class names"),
        (Y3, P3[0], NAMES3, "shape \\(N, K\\)"),
        (Y3[:5], P3, NAMES3, "y_true must have shape"),
        (np.array([0, 0, 0, 1, 1, 3]), P3, NAMES3, "labels must lie in \\[0, 3\\).*\\[3\\]"),
        (np.array([0, 0, 0, 1, 1, -1]), P3, NAMES3, "labels must lie in"),
        (np.array([0, 0, 0, 1, 1, 1.5]), P3, NAMES3, "integer class indices"),
        (Y3, np.where(np.arange(3) == 0, np.nan, P3), NAMES3, "NaN"),
        (Y3, P3 * 2, NAMES3, "\\[0, 1\\]"),
        (Y3, P3 * 0.5, NAMES3, "sum to 1.*row 0 sums to 0.5"),
        (Y3, np.zeros((0, 3)), NAMES3, "no cases"),
        (Y3, np.ones((6, 1)), ["a"], "at least 2"),
        (Y3, P3, ["a", "a", "b"], "unique"),
    ],
)
def test_bad_input_raises_clear_value_error(y, p, names, message):
    with pytest.raises(ValueError, match=message) as info:
        classification_metrics(y, p, names, n_boot=5)
    assert isinstance(info.value, ChestdxError)


def test_bad_options_raise():
    with pytest.raises(MetricInputError, match="n_boot"):
        classification_metrics(Y3, P3, NAMES3, n_boot=-1)
    with pytest.raises(MetricInputError, match="ci"):
        classification_metrics(Y3, P3, NAMES3, ci=95)
    with pytest.raises(MetricInputError, match="positive"):
        classification_metrics(Y2, P2, ["a", "b"], positive=2)


# ---------------------------------------------------------------------------- aggregation


def test_aggregate_mean_by_hand():
    probs = np.array([[0.8, 0.2], [0.4, 0.6], [0.9, 0.1], [0.3, 0.7]])
    ids, pg, yg = aggregate(probs, ["b", "a", "b", "a"], "mean", y_true=[0, 1, 0, 1])
    assert ids == ["b", "a"]  # order of first appearance
    np.testing.assert_allclose(pg, [[0.85, 0.15], [0.35, 0.65]])
    np.testing.assert_array_equal(yg, [0, 1])


def test_aggregate_max_binary_is_any_slice_positive():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.8, 0.2], [0.6, 0.4], [0.7, 0.3]])
    ids, pg, yg = aggregate(probs, ["s1", "s1", "s1", "s2", "s2"], "max")
    assert ids == ["s1", "s2"] and yg is None
    np.testing.assert_allclose(pg, [[0.3, 0.7], [0.6, 0.4]])


def test_aggregate_max_three_classes_by_hand():
    # non-first classes take their max (.8, .8), class 0 its min (.1); then renormalise by 1.7
    probs = np.array([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]])
    _, pg, _ = aggregate(probs, ["x", "x", "x"], "max")
    np.testing.assert_allclose(pg, [[0.1 / 1.7, 0.8 / 1.7, 0.8 / 1.7]])
    np.testing.assert_allclose(pg.sum(1), 1.0)


def test_aggregate_majority_vote_fractions_by_hand():
    probs = np.array(
        [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]]
    )
    ids, pg, yg = aggregate(probs, [1, 1, 1, 2, 2, 2], "majority", y_true=[1, 1, 1, 2, 2, 2])
    assert ids == [1, 2]
    np.testing.assert_allclose(pg, [[1 / 3, 2 / 3, 0], [1 / 3, 0, 2 / 3]])
    np.testing.assert_array_equal(yg, [1, 2])
    # a tied vote: argmax takes the lowest class index
    _, tie, _ = aggregate(np.array([[0.9, 0.1], [0.2, 0.8]]), ["t", "t"], "majority")
    np.testing.assert_allclose(tie, [[0.5, 0.5]])
    assert tie.argmax(1)[0] == 0


def test_aggregate_inconsistent_labels_names_the_group():
    probs = np.full((4, 2), 0.5)
    with pytest.raises(ValueError, match="group 'patient-7' has cases with different labels \\[0, 1\\]"):
        aggregate(probs, ["p1", "patient-7", "patient-7", "p1"], "mean", y_true=[0, 0, 1, 0])


def test_aggregate_bad_input():
    with pytest.raises(ValueError, match="how must be"):
        aggregate(np.full((2, 2), 0.5), ["a", "b"], "median")
    with pytest.raises(ValueError, match="groups has 1 entries"):
        aggregate(np.full((2, 2), 0.5), ["a"], "mean")
    with pytest.raises(ValueError, match="NaN"):
        aggregate(np.array([[np.nan, 0.5]]), ["a"], "mean")


def test_aggregate_feeds_classification_metrics():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.8, 0.2], [0.6, 0.4]])
    ids, pg, yg = aggregate(probs, ["a", "a", "b", "b"], "max", y_true=[1, 1, 0, 0])
    m = classification_metrics(yg, pg, ["neg", "pos"], n_boot=0)
    assert m["n"] == 2 and v(m, "accuracy") == 1.0


# ---------------------------------------------------------------------------- seeds


def test_summarise_seeds_by_hand():
    runs = [
        {
            "accuracy": {"value": 0.90},
            "positive": {"f1": {"value": 0.80}},
            "macro_auc": {"value": float("nan")},
        },
        {"accuracy": {"value": 0.94}, "positive": {"f1": {"value": 0.84}}, "macro_auc": {"value": 0.7}},
    ]
    s = summarise_seeds(runs, ["accuracy", "f1", "positive.f1", "macro_auc"])
    assert s["accuracy"][0] == pytest.approx(0.92)
    assert s["accuracy"][1] == pytest.approx(np.sqrt(0.0008))  # ddof=1: sqrt((.02^2 * 2) / 1)
    assert s["f1"] == pytest.approx((0.82, np.sqrt(0.0008)))
    assert s["positive.f1"] == s["f1"]
    assert s["macro_auc"] == (0.7, 0.0)  # NaN left out, one value left
    single = summarise_seeds(runs[:1], ["accuracy"])
    assert single["accuracy"] == (0.9, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        summarise_seeds([], ["accuracy"])


def test_get_metric_resolution():
    m3 = classification_metrics(Y3, P3, NAMES3, n_boot=0)
    assert get_metric(m3, "f1") == m3["macro_f1"]["value"]  # multiclass: macro
    assert get_metric(m3, "per_class.COVID.recall") == 1.0
    m2 = classification_metrics(Y2, P2, ["n", "c"], n_boot=0)
    assert get_metric(m2, "precision") == pytest.approx(3 / 5)  # binary: positive class
    assert get_metric({"accuracy": 0.5}, "accuracy") == 0.5
    with pytest.raises(KeyError, match="no metric 'dice'"):
        get_metric(m2, "dice")


# ------------------------------------------------------------------ cluster (patient) bootstrap


def _twenty_patients(slices: int = 10):
    """20 patients, 12 answered right: every patient's ``slices`` slices are identical copies."""
    y = np.array([0, 1] * 10)
    right = np.zeros(20, bool)
    right[:12] = True
    p1 = np.where(right, np.where(y == 1, 0.9, 0.1), np.where(y == 1, 0.1, 0.9))
    p = np.stack([1 - p1, p1], axis=1)
    return y, p, np.repeat(y, slices), np.repeat(p, slices, axis=0), np.repeat(np.arange(20), slices)


def test_patient_bootstrap_of_identical_slices_is_the_bootstrap_of_the_patients():
    from scipy.stats import binom

    y, p, ys, ps, patients = _twenty_patients()
    per_patient = classification_metrics(y, p, ["a", "b"], n_boot=2000, seed=3)
    clustered = classification_metrics(ys, ps, ["a", "b"], n_boot=2000, seed=3, groups=patients, case_unit="image")
    per_slice = classification_metrics(ys, ps, ["a", "b"], n_boot=2000, seed=3, case_unit="image")
    assert clustered["accuracy"]["value"] == pytest.approx(0.6)
    # the 200 slices resampled by patient give exactly the interval of the 20 patients (same draws)
    assert (clustered["accuracy"]["low"], clustered["accuracy"]["high"]) == \
        (per_patient["accuracy"]["low"], per_patient["accuracy"]["high"])
    assert clustered["macro_auc"]["low"] == per_patient["macro_auc"]["low"]
    # by hand: accuracy of 20 resampled patients is Binomial(20, 0.6) / 20 -> [0.40, 0.80]
    lo, hi = binom.ppf([0.025, 0.975], 20, 0.6) / 20
    assert (lo, hi) == (0.40, 0.80)
    assert clustered["accuracy"]["low"] == pytest.approx(lo, abs=0.051)
    assert clustered["accuracy"]["high"] == pytest.approx(hi, abs=0.051)
    # resampling the 200 slices as if independent: Binomial(200, 0.6) / 200 -> [0.535, 0.665], too narrow
    width_slice = per_slice["accuracy"]["high"] - per_slice["accuracy"]["low"]
    width_patient = clustered["accuracy"]["high"] - clustered["accuracy"]["low"]
    assert width_slice == pytest.approx(0.135, abs=0.03)
    assert width_patient > 2.5 * width_slice
    assert clustered["ci_unit"] == "patient" and clustered["interval"]["n_units"] == 20
    assert per_slice["ci_unit"] == "image" and "no patient ids" in per_slice["interval"]["note"]


def test_unique_patient_ids_resample_cases_and_say_so():
    y, p = random_task(60, 2, seed=5)
    plain = classification_metrics(y, p, ["a", "b"], n_boot=200, seed=1, case_unit="image")
    grouped = classification_metrics(y, p, ["a", "b"], n_boot=200, seed=1, case_unit="image",
                                     groups=[f"p{i}" for i in range(60)])
    assert grouped["accuracy"] == plain["accuracy"]
    assert grouped["ci_unit"] == "image"
    assert "no patient id is shared" in grouped["interval"]["note"]


def test_cluster_weights_count_each_drawn_patient():
    from chestdx.evaluate.metrics import group_index, resample_weights

    inv = group_index(["b", "a", "b", "c"], 4)
    assert inv.tolist() == [0, 1, 0, 2]
    w = resample_weights(50, inv, np.random.default_rng(0))
    assert w.shape == (50, 4)
    assert (w[:, 0] == w[:, 2]).all()  # one patient: both its cases drawn together
    assert (w[:, [0, 1, 3]].sum(axis=1) == 3).all()  # 3 patients drawn per resample
    with pytest.raises(MetricInputError, match="groups has 3 entries"):
        group_index(["a", "b", "c"], 4)


def test_weighted_precision_and_recall_by_hand():
    # Y3 / P3: supports 3 / 2 / 1; precision 1, 1/2, 1/2; recall 2/3, 1/2, 1
    m = classification_metrics(Y3, P3, NAMES3, n_boot=20)
    assert v(m, "weighted_precision") == pytest.approx((3 * 1 + 2 * 0.5 + 1 * 0.5) / 6)
    assert v(m, "weighted_recall") == pytest.approx((3 * 2 / 3 + 2 * 0.5 + 1 * 1) / 6)  # = accuracy
    assert v(m, "weighted_recall") == pytest.approx(v(m, "accuracy"))
    assert m["weighted_precision"]["low"] <= v(m, "weighted_precision") <= m["weighted_precision"]["high"]


def test_macro_average_leaves_out_a_class_that_never_occurs():
    from chestdx.evaluate.metrics import label_metrics

    m = label_metrics([0, 0, 1, 1, 0, 1], [0, 1, 1, 1, 0, 0], 3)
    assert m["f1"] == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert m["macro_f1"] == pytest.approx(2 / 3)  # not 4/9: class 2 is 0/0
    # a class predicted but never true counts (F1 0)
    assert label_metrics([0, 0, 1, 1], [0, 2, 1, 1], 3)["macro_f1"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
