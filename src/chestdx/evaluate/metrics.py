"""Classification metrics with percentile-bootstrap confidence intervals, and case aggregation.

Conventions used throughout this module:

- The predicted class of a case is ``argmax(probs)``; on an exact tie the lowest class index wins
  (numpy and torch both return the first maximum). For binary tasks this means class 1 is predicted
  when ``p1 > 0.5``, as ``torchmetrics.binary_*`` with ``threshold=0.5`` does.
- Per-class figures are one-vs-rest. Precision, recall (= sensitivity), specificity and F1 follow
  torchmetrics exactly: **a zero division gives 0** (``zero_division=0``). Macro averages follow the
  torchmetrics rule too: a class that is absent from both the labels and the predictions
  (``tp + fp + fn == 0``) is left out of the average. Weighted precision / recall / F1 weight
  classes by support (the papers' "weighted average" rows). One implementation,
  :func:`confusion_statistics`, computes every label-based figure.
- AUC (ROC area, ties counted one half) is **undefined (NaN)** for a class with no positive or no
  negative case. Macro AUC is the mean over the classes where it is defined.
- Intervals: percentile bootstrap (resampled with replacement, ``n_boot`` times, seeded). With
  ``groups`` (patient ids) it is a **cluster bootstrap**: each resample draws ``G`` patients with
  replacement and takes all the cases (slices, scans) of each draw, because the slices of one
  patient are not independent (20 patients x 10 identical slices carry the information of 20
  cases, not 200). The resampling unit is reported as ``ci_unit`` (``"patient"``, or the case unit
  such as ``"image"`` when no patient id is shared by two cases, where both bootstraps are the same).
  Each resample is scored with exactly the statistic used for the point value (so a class absent
  from a resample has recall 0 there, by the zero-division rule). Resamples where a figure is NaN
  (only AUC can be) are skipped when taking the percentiles (``nanpercentile``); the number of
  resamples kept is not reported per figure. An interval is NaN when every resample is NaN, or when
  ``n_boot == 0`` (no bootstrap).

The bootstrap is vectorised: a resample is a vector of case counts ``w`` (``(B, N)``), every
confusion matrix is ``w @ onehot(true * K + pred)`` and every AUC is a weighted Mann-Whitney sum
over one sort of the scores, so 1000 resamples of 1000 cases take well under a second.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from chestdx.errors import ChestdxError

__all__ = [
    "MetricInputError",
    "aggregate",
    "classification_metrics",
    "confusion_statistics",
    "get_metric",
    "group_index",
    "label_metrics",
    "resample_weights",
    "summarise_seeds",
    "validate_predictions",
    "weighted_statistics",
]

#: Tolerance on ``|sum(probs[i]) - 1|``.
ROW_SUM_ATOL = 1e-3
#: At most this many ``B x N`` elements are held at once by the bootstrap (memory bound).
_CHUNK_ELEMENTS = 4_000_000


class MetricInputError(ChestdxError, ValueError):
    """Predictions or labels handed to a metric are malformed (shape, NaN, range, row sums)."""


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def validate_predictions(
    y_true: Any, probs: Any, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert labels and class probabilities.

    Args:
        y_true: integer class indices, shape ``(N,)``.
        probs: class probabilities, shape ``(N, K)``, rows summing to 1 (within ``ROW_SUM_ATOL``).
        class_names: optional; its length must be ``K``.

    Returns:
        ``(y_true int64 (N,), probs float64 (N, K))``.

    Raises:
        MetricInputError: (a ``ValueError``) on a wrong shape, no cases, NaN/inf or values outside
            [0, 1] in ``probs``, labels that are not integers in ``[0, K)``, or rows that do not sum to 1.
    """
    p = np.asarray(probs)
    if p.ndim != 2:
        raise MetricInputError(f"probs must have shape (N, K); got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.number) or np.issubdtype(p.dtype, np.complexfloating):
        raise MetricInputError(f"probs must be real numbers; got dtype {p.dtype}")
    p = p.astype(np.float64)
    n, k = p.shape
    if n == 0:
        raise MetricInputError("no cases: probs has 0 rows")
    if k < 2:
        raise MetricInputError(f"probs must have at least 2 class columns; got K={k}")
    if class_names is not None and len(class_names) != k:
        raise MetricInputError(
            f"probs has {k} class columns but {len(class_names)} class names were given: {list(class_names)}"
        )
    bad = ~np.isfinite(p)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise MetricInputError(
            f"probs holds NaN or inf in {rows.size} row(s), first at row {int(rows[0])}: {p[rows[0]].tolist()}"
        )
    if (p < -1e-9).any() or (p > 1 + 1e-9).any():
        row = int(np.flatnonzero(((p < -1e-9) | (p > 1 + 1e-9)).any(axis=1))[0])
        raise MetricInputError(
            f"probs must lie in [0, 1] (apply softmax to logits first); row {row} is {p[row].tolist()}"
        )
    sums = p.sum(axis=1)
    off = np.abs(sums - 1.0) > ROW_SUM_ATOL
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise MetricInputError(
            f"probs rows must sum to 1 (apply softmax to logits first); {int(off.sum())} row(s) do not, "
            f"first row {row} sums to {sums[row]:.6g}"
        )

    y = np.asarray(y_true)
    if y.ndim != 1 or y.shape[0] != n:
        raise MetricInputError(f"y_true must have shape (N,) = ({n},) to match probs; got shape {y.shape}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.number):
        raise MetricInputError(f"y_true must hold integer class indices; got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise MetricInputError("y_true must hold integer class indices; found non-integer or NaN values")
    yi = y.astype(np.int64)
    out = (yi < 0) | (yi >= k)
    if out.any():
        vals = sorted(set(yi[out].tolist()))[:10]
        raise MetricInputError(f"labels must lie in [0, {k}) for K={k} classes; found {vals}")
    return yi, p


# --------------------------------------------------------------------------------------------
# vectorised statistics over weighted resamples
# --------------------------------------------------------------------------------------------


def _div0(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den == 0`` (the torchmetrics ``zero_division=0`` rule)."""
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _macro(score: np.ndarray, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Mean over classes, leaving out classes with ``tp + fp + fn == 0`` (torchmetrics rule). (B, K) -> (B,)."""
    w = ((tp + fp + fn) > 0).astype(np.float64)
    return _div0((score * w).sum(-1), w.sum(-1))


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of one class for every row of case weights.

    Args:
        scores: ``(N,)`` score of the class.
        positive: ``(N,)`` bool, case belongs to the class.
        weights: ``(B, N)`` non-negative case weights (bootstrap counts; ones for the point value).

    Returns:
        ``(B,)`` AUC = P(score_pos > score_neg) + 0.5 P(equal), NaN where a row has no positive or
        no negative weight.
    """
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    pos = positive[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each tie group
    w = weights[:, order]
    pos_w = np.where(pos, w, 0.0)
    neg_w = w - pos_w
    pos_g = np.add.reduceat(pos_w, starts, axis=1)  # (B, U)
    neg_g = np.add.reduceat(neg_w, starts, axis=1)
    neg_below = np.cumsum(neg_g, axis=1) - neg_g
    num = (pos_g * (neg_below + 0.5 * neg_g)).sum(axis=1)
    den = pos_g.sum(axis=1) * neg_g.sum(axis=1)
    out = np.full(den.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def confusion_statistics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Every label-based figure from confusion matrices: the one implementation chestdx scores with.

    ``classification_metrics`` (evaluate, ensemble, table, compare), the lesion task's
    ``class_metrics`` and the voting sweep (``accuracy_f1``) all come through here, so they cannot
    disagree; validation during training scores accuracy with torchmetrics, the reference these
    figures are checked against (:mod:`chestdx.engine.val_metrics`).

    Rules (module docstring): a zero division gives 0; the macro average leaves out a class with
    ``tp + fp + fn == 0`` (absent from both the labels and the predictions). For y = [0, 0, 1, 1, 0, 1],
    pred = [0, 1, 1, 1, 0, 0] and three class names, macro F1 is therefore (2/3 + 2/3) / 2 = 0.667,
    not (2/3 + 2/3 + 0) / 3 = 0.444: a class that never occurs and is never predicted has no F1 (it
    is 0 / 0), and averaging a 0 for it would make a model's macro F1 depend on how many unused class
    names its recipe lists. A class that is predicted but never occurs (or occurs but is never
    predicted) has F1 0 and counts. Weighted figures weight classes by support (true count).

    Args:
        cm: ``(B, K, K)`` (weighted) counts, rows = true class, columns = predicted.

    Returns:
        ``accuracy``, ``macro_precision``, ``macro_recall``, ``macro_specificity``, ``macro_f1``,
        ``weighted_precision``, ``weighted_recall``, ``weighted_f1`` ``(B,)``; ``precision``,
        ``recall``, ``specificity``, ``f1``, ``support`` ``(B, K)``.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    row = cm.sum(axis=2)  # true counts (support)
    col = cm.sum(axis=1)  # predicted counts
    n = row.sum(axis=1, keepdims=True)
    fp = col - tp
    fn = row - tp
    tn = n - tp - fp - fn
    precision = _div0(tp, tp + fp)
    recall = _div0(tp, tp + fn)
    specificity = _div0(tn, tn + fp)
    f1 = _div0(2 * tp, 2 * tp + fp + fn)
    support = row.sum(axis=1)
    return {
        "accuracy": _div0(tp.sum(axis=1), n[:, 0]),
        "macro_precision": _macro(precision, tp, fp, fn),
        "macro_recall": _macro(recall, tp, fp, fn),
        "macro_specificity": _macro(specificity, tp, fp, fn),
        "macro_f1": _macro(f1, tp, fp, fn),
        "weighted_precision": _div0((precision * row).sum(axis=1), support),
        "weighted_recall": _div0((recall * row).sum(axis=1), support),
        "weighted_f1": _div0((f1 * row).sum(axis=1), support),
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "f1": f1,
        "support": row,
    }


def label_metrics(y_true: Any, pred: Any, num_classes: int) -> dict[str, Any]:
    """Label-based figures of one set of predicted labels (no probabilities, no intervals).

    Args:
        y_true: ``(N,)`` true class indices; pred: ``(N,)`` predicted class indices, both in ``[0, K)``.
        num_classes: ``K`` (the recipe's class names, including classes that never occur).

    Returns:
        :func:`confusion_statistics` of the one confusion matrix as floats (per class: ``(K,)`` lists),
        plus ``confusion_matrix`` (K x K list of int).

    Raises:
        MetricInputError: shapes differ or a label lies outside ``[0, K)``.
    """
    y, p = np.asarray(y_true), np.asarray(pred)
    if y.ndim != 1 or y.shape != p.shape:
        raise MetricInputError(f"labels and predictions must both have shape (N,); got {y.shape} and {p.shape}")
    k = int(num_classes)
    y, p = y.astype(np.int64), p.astype(np.int64)
    if ((y < 0) | (y >= k) | (p < 0) | (p >= k)).any():
        raise MetricInputError(f"labels and predictions must lie in [0, {k})")
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y, p), 1)
    stats = confusion_statistics(cm[None])
    out: dict[str, Any] = {key: (float(v[0]) if v.ndim == 1 else v[0].tolist()) for key, v in stats.items()}
    out["confusion_matrix"] = cm.tolist()
    return out


def _stats_from_weights(
    y: np.ndarray, pred: np.ndarray, probs: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """All figures for each row of case weights ``(B, N)``: overall ``(B,)`` and per class ``(B, K)``."""
    k = probs.shape[1]
    onehot = np.zeros((y.shape[0], k * k), dtype=np.float64)
    onehot[np.arange(y.shape[0]), y * k + pred] = 1.0
    cm = (weights @ onehot).reshape(-1, k, k)  # (B, K, K), rows = true
    out = confusion_statistics(cm)
    del out["support"]
    auc = np.stack([weighted_auc(probs[:, c], y == c, weights) for c in range(k)], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows -> NaN
        out["macro_auc"] = np.nanmean(auc, axis=1)
    out["auc"] = auc
    return out


def group_index(groups: Sequence[Any] | np.ndarray, n: int) -> np.ndarray:
    """Group number of each case, ``(N,)`` int64 in ``[0, G)``, in order of first appearance.

    Raises:
        MetricInputError: ``groups`` does not have ``n`` entries.
    """
    groups = list(groups)
    if len(groups) != n:
        raise MetricInputError(f"groups has {len(groups)} entries but there are {n} cases")
    index: dict[Any, int] = {}
    return np.asarray([index.setdefault(g, len(index)) for g in groups], dtype=np.int64)


def resample_weights(n_boot: int, inverse: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Case weights of ``n_boot`` cluster resamples, ``(n_boot, N)`` float64.

    Each resample draws ``G = inverse.max() + 1`` groups with replacement (``rng.integers(0, G,
    (n_boot, G))``); a case's weight is the number of times its group was drawn. With one case per
    group (``inverse = arange(N)``) this is the ordinary case bootstrap, draw for draw.

    Args:
        inverse: ``(N,)`` group number of each case (see :func:`group_index`).
    """
    g = int(inverse.max()) + 1
    idx = rng.integers(0, g, size=(n_boot, g))
    flat = (np.arange(n_boot)[:, None] * g + idx).ravel()
    counts = np.bincount(flat, minlength=n_boot * g).reshape(n_boot, g).astype(np.float64)
    return counts[:, inverse]


def weighted_statistics(
    y: np.ndarray, pred: np.ndarray, probs: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Every figure of :func:`classification_metrics` for each row of case weights.

    Args:
        y: ``(N,)`` int true classes; pred: ``(N,)`` int predicted classes (argmax of ``probs``).
        probs: ``(N, K)`` probabilities (AUC scores).
        weights: ``(B, N)`` case weights (bootstrap counts; ``ones((1, N))`` for the point value).

    Returns:
        ``{name: (B,)}`` for :data:`OVERALL_METRICS` and ``{name: (B, K)}`` for
        :data:`PER_CLASS_METRICS`, by the rules of the module docstring.
    """
    return _stats_from_weights(y, pred, probs, weights)


def _bootstrap(
    y: np.ndarray, pred: np.ndarray, probs: np.ndarray, n_boot: int, seed: int,
    inverse: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Statistics of ``n_boot`` resamples, ``(n_boot,)`` or ``(n_boot, K)`` each.

    ``inverse`` ``(N,)``: group (patient) number of each case: a cluster bootstrap over groups;
    None: every case is its own group.
    """
    n = y.shape[0]
    inv = np.arange(n) if inverse is None else inverse
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // n))
    parts: list[dict[str, np.ndarray]] = []
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        parts.append(_stats_from_weights(y, pred, probs, resample_weights(b, inv, rng)))
        done += b
    return {key: np.concatenate([p[key] for p in parts], axis=0) for key in parts[0]}


# --------------------------------------------------------------------------------------------
# point values with torchmetrics
# --------------------------------------------------------------------------------------------


def _torchmetrics_point(y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Point values from ``torchmetrics.functional`` (the reference implementation)."""
    import torch
    from torchmetrics.functional.classification import (
        binary_auroc,
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
        multiclass_specificity,
    )

    k = probs.shape[1]
    # the predicted class (first maximum on ties) handed over as one-hot scores, so that torch and
    # numpy agree on the argmax even for near-ties in float64
    pred = probs.argmax(axis=1)
    p = torch.nn.functional.one_hot(torch.from_numpy(pred), k).to(torch.float64)
    t = torch.from_numpy(y)
    kw: dict[str, Any] = {"num_classes": k, "validate_args": False}

    def per_class(fn: Any) -> np.ndarray:
        return fn(p, t, average=None, **kw).double().numpy()

    auc = np.full(k, np.nan)
    for c in range(k):
        target = t == c
        if 0 < int(target.sum()) < len(y):
            auc[c] = float(binary_auroc(torch.from_numpy(probs[:, c]), target.long(), validate_args=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        macro_auc = float(np.nanmean(auc))
    return {
        "accuracy": float(multiclass_accuracy(p, t, average="micro", **kw)),
        "macro_precision": float(multiclass_precision(p, t, average="macro", **kw)),
        "macro_recall": float(multiclass_recall(p, t, average="macro", **kw)),
        "macro_specificity": float(multiclass_specificity(p, t, average="macro", **kw)),
        "macro_f1": float(multiclass_f1_score(p, t, average="macro", **kw)),
        "weighted_precision": float(multiclass_precision(p, t, average="weighted", **kw)),
        "weighted_recall": float(multiclass_recall(p, t, average="weighted", **kw)),
        "weighted_f1": float(multiclass_f1_score(p, t, average="weighted", **kw)),
        "macro_auc": macro_auc,
        "precision": per_class(multiclass_precision),
        "recall": per_class(multiclass_recall),
        "specificity": per_class(multiclass_specificity),
        "f1": per_class(multiclass_f1_score),
        "auc": auc,
        "confusion_matrix": multiclass_confusion_matrix(p, t, **kw).long().numpy(),
    }


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

OVERALL_METRICS = (
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_specificity",
    "macro_f1",
    "weighted_precision",
    "weighted_recall",
    "weighted_f1",
    "macro_auc",
)
PER_CLASS_METRICS = ("precision", "recall", "specificity", "f1", "auc")


def _figure(value: float, boot: np.ndarray | None, ci: float) -> dict[str, float]:
    lo = hi = float("nan")
    if boot is not None and np.isfinite(boot).any():
        q = 100.0 * (1.0 - ci) / 2.0
        lo, hi = (float(v) for v in np.nanpercentile(boot, [q, 100.0 - q]))
    return {"value": float(value), "low": lo, "high": hi}


def classification_metrics(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    positive: int | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
    case_unit: str = "case",
    group_unit: str = "patient",
) -> dict[str, Any]:
    """Accuracy, F1, AUC, per-class precision / recall / specificity / F1 / AUC with bootstrap CIs.

    See the module docstring for the prediction rule (argmax), the zero-division rule (0), the
    macro-average rule, undefined AUC (NaN) and the bootstrap (percentile, NaN resamples skipped;
    per patient with ``groups``).

    Args:
        y_true: true class indices ``(N,)``.
        probs: class probabilities ``(N, K)`` (softmax outputs; rows sum to 1).
        class_names: ``K`` names, in class-index order.
        n_boot: bootstrap resamples; 0 skips the bootstrap (intervals are NaN).
        ci: interval coverage, in (0, 1).
        seed: seed of the resampling (same seed, same intervals).
        positive: positive class index for binary tasks (default 1); ignored when ``K > 2``.
        groups: ``N`` patient (cluster) ids, e.g. ``"site/patient"``: the bootstrap resamples
            patients, each with all its cases. None: cases are resampled one by one.
        case_unit: what a case is (``"image"``, ``"scan"``, ``"sequence"``, ``"patient"``), named in
            the report when cases are the resampling unit.
        group_unit: what a group is (``"patient"``).

    Returns:
        A JSON-ready dict (NaN where undefined)::

            {"n": N, "class_names": [...], "prediction": "argmax",
             "ci_unit": "patient" | case_unit,
             "interval": {"method": "percentile bootstrap", "n_boot": ..., "ci": ..., "seed": ...,
                          "unit": ci_unit, "n_units": G, "note": "..."},
             "accuracy" | "macro_precision" | "macro_recall" | "macro_specificity" | "macro_f1"
             | "weighted_precision" | "weighted_recall" | "weighted_f1" | "macro_auc":
                 {"value": v, "low": lo, "high": hi},
             "per_class": {name: {"precision" | "recall" | "specificity" | "f1" | "auc": {...},
                                  "support": int}},
             "confusion_matrix": K x K list of int (rows = true, columns = predicted),
             # K == 2 only: the figures of the positive class, as the papers report them
             "positive": {"class": name, "index": i, "accuracy" | "precision" | "recall"
                          | "specificity" | "f1" | "auc": {...}}}

        Point values come from ``torchmetrics.functional``; the bootstrap statistic evaluated on the
        full sample is checked against them (within 1e-5) and, where it agrees, reported in its
        place at float64 precision (torchmetrics computes in float32). A ``RuntimeWarning`` names any
        figure that disagrees, and the torchmetrics value is kept.

    Raises:
        MetricInputError: (a ``ValueError``) on malformed input, see :func:`validate_predictions`,
            or on a bad ``n_boot``, ``ci`` or ``positive``.
    """
    y, p = validate_predictions(y_true, probs, class_names)
    k = p.shape[1]
    names = [str(c) for c in class_names]
    if len(set(names)) != len(names):
        raise MetricInputError(f"class names must be unique; got {names}")
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 0:
        raise MetricInputError(f"n_boot must be an integer >= 0; got {n_boot!r}")
    if not 0.0 < float(ci) < 1.0:
        raise MetricInputError(f"ci must lie strictly between 0 and 1 (e.g. 0.95); got {ci!r}")
    if k == 2:
        pos = 1 if positive is None else positive
        if pos not in (0, 1):
            raise MetricInputError(f"positive must be 0 or 1 for a binary task; got {positive!r}")

    pred = p.argmax(axis=1)
    point = _torchmetrics_point(y, p)
    own = _stats_from_weights(y, pred, p, np.ones((1, y.shape[0])))
    for key, val in own.items():
        ref = np.asarray(point[key], dtype=np.float64)
        if np.allclose(val[0], ref, rtol=0.0, atol=1e-5, equal_nan=True):
            point[key] = val[0] if ref.ndim else float(val[0])  # same figure, at float64 precision
        else:
            warnings.warn(
                f"chestdx bootstrap statistic {key!r} disagrees with torchmetrics on the full sample "
                f"({val[0].tolist()} vs {ref.tolist()}); intervals may not bracket the point value",
                RuntimeWarning,
                stacklevel=2,
            )
    n = int(y.shape[0])
    inverse = None if groups is None else group_index(groups, n)
    n_groups = n if inverse is None else int(inverse.max()) + 1
    if inverse is not None and n_groups < n:
        unit = group_unit
        note = f"cluster bootstrap: {n_groups} {group_unit}s resampled, each with all its {case_unit}s ({n} in all)"
    elif inverse is not None:
        inverse, unit = None, case_unit  # one case per group: the same bootstrap
        note = f"{case_unit}s resampled one by one: no {group_unit} id is shared by two {case_unit}s"
    else:
        unit = case_unit
        note = f"{case_unit}s resampled one by one: no {group_unit} ids given"
    boot = _bootstrap(y, pred, p, int(n_boot), seed, inverse) if n_boot > 0 else None

    out: dict[str, Any] = {
        "n": n,
        "class_names": names,
        "prediction": "argmax",
        "ci_unit": unit,
        "interval": {
            "method": "percentile bootstrap",
            "n_boot": int(n_boot),
            "ci": float(ci),
            "seed": int(seed),
            "unit": unit,
            "n_units": n_groups,
            "note": note,
        },
    }
    for key in OVERALL_METRICS:
        out[key] = _figure(point[key], None if boot is None else boot[key], ci)
    support = np.bincount(y, minlength=k)
    out["per_class"] = {
        name: {
            **{
                key: _figure(point[key][c], None if boot is None else boot[key][:, c], ci)
                for key in PER_CLASS_METRICS
            },
            "support": int(support[c]),
        }
        for c, name in enumerate(names)
    }
    out["confusion_matrix"] = point["confusion_matrix"].tolist()
    if k == 2:
        pos = 1 if positive is None else int(positive)
        block: dict[str, Any] = {"class": names[pos], "index": pos, "accuracy": dict(out["accuracy"])}
        for key in PER_CLASS_METRICS:
            block[key] = dict(out["per_class"][names[pos]][key])
        out["positive"] = block
    return out


def aggregate(
    probs: Any,
    groups: Sequence[Any],
    how: Literal["mean", "max", "majority"] = "mean",
    y_true: Any = None,
) -> tuple[list[Any], np.ndarray, np.ndarray | None]:
    """Aggregate case-level (slice-level) probabilities to groups (scans or patients).

    Rules (``G`` groups, in order of first appearance in ``groups``):

    - ``"mean"``: the mean probability vector of the group's cases.
    - ``"max"``: "the scan is abnormal if any slice is". Each non-first class (index >= 1; class 0
      is the normal / negative class) takes its maximum over the group's cases, class 0 takes its
      minimum, and the vector is renormalised to sum to 1. For ``K == 2`` this is exactly
      ``p1 = max(p1)``, ``p0 = 1 - p1``, so the group is predicted positive iff some case is.
    - ``"majority"``: each case votes for its argmax class; the returned probabilities are the vote
      fractions. Their argmax (lowest class index on a tied vote) is the majority label.

    Args:
        probs: case probabilities ``(N, K)``.
        groups: ``N`` group ids (hashable, e.g. scan or patient ids).
        how: ``"mean"``, ``"max"`` or ``"majority"``.
        y_true: optional case labels ``(N,)``; all cases of a group must share one label.

    Returns:
        ``(group_ids list of G, probs_g float64 (G, K), y_g int64 (G,) or None)``.

    Raises:
        MetricInputError: (a ``ValueError``) on a bad shape, NaN, an unknown ``how``, or labels that
            differ within a group (the message names the group and its labels).
    """
    if how not in ("mean", "max", "majority"):
        raise MetricInputError(f"how must be 'mean', 'max' or 'majority'; got {how!r}")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise MetricInputError(f"probs must have shape (N, K) with N >= 1; got shape {p.shape}")
    if not np.isfinite(p).all():
        raise MetricInputError("probs holds NaN or inf")
    groups = list(groups)
    if len(groups) != p.shape[0]:
        raise MetricInputError(f"groups has {len(groups)} entries but probs has {p.shape[0]} rows")
    n, k = p.shape

    index: dict[Any, int] = {}
    inverse = np.empty(n, dtype=np.int64)
    first_case: list[int] = []
    for i, g in enumerate(groups):
        j = index.setdefault(g, len(index))
        if j == len(first_case):
            first_case.append(i)
        inverse[i] = j
    ids = list(index)
    n_g = len(ids)
    count = np.bincount(inverse, minlength=n_g).astype(np.float64)

    y_g: np.ndarray | None = None
    if y_true is not None:
        y = np.asarray(y_true)
        if y.shape != (n,):
            raise MetricInputError(f"y_true must have shape ({n},) to match probs; got shape {y.shape}")
        y = y.astype(np.int64)
        first = y[np.asarray(first_case)]  # label of the first case of each group
        bad = np.flatnonzero(y != first[inverse])
        if bad.size:
            g = inverse[bad[0]]
            labels = sorted(set(y[inverse == g].tolist()))
            raise MetricInputError(
                f"group {ids[g]!r} has cases with different labels {labels}; a scan or patient must have "
                "one label (check the group ids)"
            )
        y_g = first

    if how == "mean":
        out = np.zeros((n_g, k))
        np.add.at(out, inverse, p)
        out /= count[:, None]
    elif how == "max":
        out = np.full((n_g, k), -np.inf)
        np.maximum.at(out, inverse, p)
        low0 = np.full(n_g, np.inf)
        np.minimum.at(low0, inverse, p[:, 0])
        out[:, 0] = low0
        total = out.sum(axis=1, keepdims=True)
        out = np.divide(out, total, out=np.full_like(out, 1.0 / k), where=total > 0)
    else:
        votes = np.zeros((n_g, k))
        np.add.at(votes, (inverse, p.argmax(axis=1)), 1.0)
        out = votes / count[:, None]
    return ids, out, y_g


def get_metric(metrics: Mapping[str, Any], key: str) -> float:
    """The value of one figure of a :func:`classification_metrics` dict.

    ``key`` is a dotted path (``"per_class.COVID.recall"``, ``"positive.f1"``, ``"macro_auc"``) or a
    plain name resolved in this order: a top-level figure (``"accuracy"``), the figure of the
    positive class of a binary task (``"precision"`` -> ``positive.precision``), then the macro
    average (``"precision"`` -> ``macro_precision`` for multiclass tasks). A leaf may be a
    ``{"value": ...}`` dict or a plain number; ``None`` (NaN written as JSON ``null``) gives NaN.

    Raises:
        KeyError: no figure of that name (the message lists the top-level keys).
    """
    candidates = [key.split(".")] if "." in key else [[key], ["positive", key], [f"macro_{key}"]]
    missing = object()
    for path in candidates:
        node: Any = metrics
        for part in path:
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            else:
                node = missing
                break
        if isinstance(node, Mapping) and "value" in node:
            node = node["value"]
        if node is None:  # NaN read back from strict JSON
            return math.nan
        if isinstance(node, (int, float, np.number)) and not isinstance(node, bool):
            return float(node)
    raise KeyError(f"no metric {key!r}; top-level keys are {sorted(metrics)}")


def summarise_seeds(
    results: Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of figures over seeds or folds, for tables.

    Args:
        results: one :func:`classification_metrics` dict (or any dict of figures) per seed / fold.
        keys: figure names, resolved by :func:`get_metric` (e.g. ``"accuracy"``, ``"f1"``,
            ``"per_class.COVID.recall"``).

    Returns:
        ``{key: (mean, std)}``; std uses ``ddof=1`` when there are two or more results and is 0 for
        one. NaN values (an undefined AUC) are left out; a key with no defined value gives (NaN, NaN).

    Raises:
        ValueError: ``results`` is empty.
        KeyError: a key is missing from a result.
    """
    if len(results) == 0:
        raise MetricInputError("summarise_seeds needs at least one metrics dict; got none")
    out: dict[str, tuple[float, float]] = {}
    for key in keys:
        vals = np.array([get_metric(r, key) for r in results], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            out[key] = (math.nan, math.nan)
        else:
            out[key] = (float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else 0.0)
    return out
