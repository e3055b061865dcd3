"""``chestdx compare RUN_A RUN_B``: is B better than A on the same test cases, and how sure are we?

Two runs scored on the same test cases are compared **paired**: the difference of each figure,
``B - A``, is computed on the same cases, and its 95% interval comes from a patient-level paired
bootstrap: each resample draws the patients (``site/patient_id``) with replacement, takes every case
of each drawn patient, and scores *both* runs on that one resample, so the case-to-case difficulty
that both runs share cancels out of the difference (an unpaired comparison of two intervals
would not see a small but consistent gain).

- Cases are matched by file (``path`` column of each run's ``predictions.csv``); the two files must
  hold the same cases with the same labels and class names, else :class:`ComparisonError`.
- Interval: percentile of the ``n_boot`` resampled differences (NaN resamples, where an AUC is
  undefined, left out).
- p-value (two-sided, for "no difference"): the percentile interval inverted,
  ``p = min(1, 2 * min((1 + #{d* <= 0}) / (n_boot + 1), (1 + #{d* >= 0}) / (n_boot + 1)))``, so a
  95% interval that excludes 0 goes with ``p`` below about 0.05; identical answers give ``p = 1``.
- Several seeds (``chestdx table``): seed ``s`` of B is paired with seed ``s`` of A; the difference
  is that of the means over seeds (what the table shows), and each resample weights every seed's
  copy of a patient alike.

Figures are named as in :func:`~chestdx.evaluate.metrics.get_metric`: a top-level figure
(``accuracy``, ``macro_f1``, ``weighted_f1``, ...), a plain per-class name (``precision``, ``f1``,
``auc``): the positive class of a binary task, the macro average otherwise; or
``per_class.NAME.FIGURE``.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chestdx.errors import ChestdxError
from chestdx.evaluate.metrics import (
    OVERALL_METRICS,
    PER_CLASS_METRICS,
    group_index,
    resample_weights,
    validate_predictions,
    weighted_statistics,
)
from chestdx.utils import write_json, write_text

__all__ = ["ComparisonError", "Predictions", "align_predictions", "compare_predictions", "compare_runs", "paired_difference",
           "read_predictions", "comparison_markdown"]

#: At most this many ``B x N`` weights are held at once (memory bound).
CHUNK_ELEMENTS = 4_000_000
#: Figures compared by default (binary tasks add the positive class's precision / recall / F1 / AUC).
DEFAULT_FIGURES: tuple[str, ...] = OVERALL_METRICS


class ComparisonError(ChestdxError, ValueError):
    """Two prediction files cannot be compared: other cases, labels or class names."""


@dataclass
class Predictions:
    """One run's answers on its test cases (a ``predictions.csv`` of ``chestdx evaluate``).

    Attributes:
        source: the file read.
        files: ``N`` case files (the join key).
        sites, patients: ``N`` names.
        labels: ``(N,)`` int true classes.
        probs: ``(N, K)`` float64 class probabilities.
        class_names: ``K`` names (from the ``p_<class>`` columns).
    """

    source: str
    files: list[str]
    sites: list[str]
    patients: list[str]
    labels: np.ndarray
    probs: np.ndarray
    class_names: list[str]

    @property
    def groups(self) -> list[str]:
        """``site/patient`` of each case: the bootstrap's resampling unit."""
        return [f"{s}/{p}" for s, p in zip(self.sites, self.patients, strict=True)]


def _predictions_file(source: str | Path, split: str = "test") -> Path:
    p = Path(source)
    if p.is_file():
        return p
    for candidate in (p / "predictions.csv", p / f"eval-{split}" / "predictions.csv"):
        if candidate.is_file():
            return candidate
    raise ComparisonError(f"{p}: no predictions.csv (give a predictions.csv, an evaluation folder, or a run folder "
                          f"evaluated with `chestdx evaluate {p} --split {split}`)")


def read_predictions(source: str | Path, split: str = "test") -> Predictions:
    """Read a ``predictions.csv`` (or the one in an evaluation folder, or in ``RUN/eval-<split>/``).

    Raises:
        ComparisonError: no such file, missing columns, a label that is not a class name, a file
            listed twice, or probabilities that are not numbers.
    """
    path = _predictions_file(source, split)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
        header = rows[0].keys() if rows else []
    classes = [c[2:] for c in header if c.startswith("p_")]
    missing = [c for c in ("path", "label") if c not in header]
    if not rows or missing or len(classes) < 2:
        raise ComparisonError(f"{path}: not a chestdx predictions.csv (needs rows and the columns path, label, "
                              f"p_<class> for two or more classes; missing {missing or 'rows or p_ columns'})")
    index = {c: i for i, c in enumerate(classes)}
    files, seen = [], set()
    labels = np.empty(len(rows), np.int64)
    probs = np.empty((len(rows), len(classes)))
    for i, r in enumerate(rows):
        if r["path"] in seen:
            raise ComparisonError(f"{path}: case {r['path']!r} is listed twice")
        seen.add(r["path"])
        files.append(r["path"])
        if r["label"] not in index:
            raise ComparisonError(f"{path}: row {i + 2} has label {r['label']!r}, not one of the classes {classes}")
        labels[i] = index[r["label"]]
        try:
            probs[i] = [float(r[f"p_{c}"]) for c in classes]
        except (TypeError, ValueError):
            raise ComparisonError(f"{path}: row {i + 2} has a probability that is not a number") from None
    return Predictions(str(path), files, [r.get("site") or "" for r in rows], [r.get("patient_id") or r["path"]
                       for r in rows], labels, probs, classes)


def align_predictions(a: Predictions, b: Predictions) -> np.ndarray:
    """Row of ``b`` for each row of ``a`` (``(N,)``), after checking they hold the same cases.

    Raises:
        ComparisonError: other class names, other cases (a few named), or a case labelled differently.
    """
    if a.class_names != b.class_names:
        raise ComparisonError(f"{a.source} and {b.source} have other classes: {a.class_names} vs {b.class_names}")
    where = {f: i for i, f in enumerate(b.files)}
    only_a = [f for f in a.files if f not in where]
    only_b = sorted(set(b.files) - set(a.files))
    if only_a or only_b:
        raise ComparisonError(
            f"{a.source} and {b.source} are not on the same test cases: {len(only_a)} only in the first "
            f"(e.g. {only_a[:3]}), {len(only_b)} only in the second (e.g. {only_b[:3]}); compare runs scored on "
            "the same split of the same data")
    order = np.asarray([where[f] for f in a.files], dtype=np.int64)
    bad = np.flatnonzero(a.labels != b.labels[order])
    if bad.size:
        f = a.files[int(bad[0])]
        raise ComparisonError(f"{a.source} and {b.source} label {bad.size} case(s) differently, e.g. {f!r}: "
                              f"{a.class_names[a.labels[bad[0]]]} vs {b.class_names[b.labels[order[bad[0]]]]}")
    pa, pb = [a.patients[i] for i in range(len(a.files))], [b.patients[i] for i in order]
    sa, sb = a.sites, [b.sites[i] for i in order]
    if pa != pb or sa != sb:
        raise ComparisonError(f"{a.source} and {b.source} give the same files other patients or sites; "
                              "the patient-level bootstrap needs one patient per case")
    return order


def _select(stats: Mapping[str, np.ndarray], key: str, class_names: Sequence[str], positive: int) -> np.ndarray:
    """The ``(B,)`` values of figure ``key`` (see the module docstring for names).

    Raises:
        ComparisonError: unknown figure.
    """
    if "." in key:
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "per_class" and parts[1] in class_names and parts[2] in PER_CLASS_METRICS:
            return stats[parts[2]][:, list(class_names).index(parts[1])]
        if len(parts) == 2 and parts[0] == "positive" and parts[1] in PER_CLASS_METRICS and len(class_names) == 2:
            return stats[parts[1]][:, positive]
    elif key in OVERALL_METRICS:
        return stats[key]
    elif key in PER_CLASS_METRICS:
        return stats[key][:, positive] if len(class_names) == 2 else stats[f"macro_{key}"]
    raise ComparisonError(f"no figure {key!r} to compare; known: {', '.join(OVERALL_METRICS + PER_CLASS_METRICS)}, "
                          "per_class.CLASS.FIGURE")


@dataclass
class _Pair:
    y: np.ndarray
    pa: np.ndarray
    pb: np.ndarray
    inverse: np.ndarray  # (N,) index into the shared patient list


def paired_difference(pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, Sequence[Any]]],
                      class_names: Sequence[str], figures: Sequence[str] = DEFAULT_FIGURES, *,
                      n_boot: int = 2000, seed: int = 0, ci: float = 0.95,
                      positive: int = 1) -> dict[str, dict[str, float]]:
    """Paired patient-bootstrap difference ``B - A`` of each figure, averaged over pairs (seeds).

    Args:
        pairs: one ``(y (N,), probs_a (N, K), probs_b (N, K), groups (N,))`` per seed / fold: the
            same cases answered by A and B; ``groups`` are patient ids (shared across pairs: a
            patient drawn once counts in every pair that holds it).
        class_names: ``K`` names.
        figures: figure names (module docstring).
        n_boot: resamples (>= 1).
        positive: positive class of a binary task.

    Returns:
        ``{figure: {"a", "b", "difference", "low", "high", "p_value"}}``; ``a`` / ``b`` are the means
        over pairs of each run's figure on the full cases.

    Raises:
        ComparisonError: no pairs, a bad ``n_boot`` / ``ci``, malformed probabilities or an unknown figure.
    """
    if not pairs:
        raise ComparisonError("nothing to compare: no pair of prediction sets")
    if int(n_boot) < 1:
        raise ComparisonError(f"n_boot must be >= 1 for a paired bootstrap; got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise ComparisonError(f"ci must lie strictly between 0 and 1; got {ci}")
    keys: dict[Any, int] = {}
    prepared: list[_Pair] = []
    for y, pa, pb, groups in pairs:
        y_, pa_ = validate_predictions(y, pa, class_names)
        _, pb_ = validate_predictions(y, pb, class_names)
        g = list(groups)
        if len(g) != len(y_):
            raise ComparisonError(f"groups has {len(g)} entries for {len(y_)} cases")
        prepared.append(_Pair(y_, pa_, pb_, np.asarray([keys.setdefault(x, len(keys)) for x in g], np.int64)))
    n_groups = len(keys)
    everyone = np.arange(n_groups)

    def figures_of(weights_of: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        sum_a: dict[str, np.ndarray] = {}
        sum_b: dict[str, np.ndarray] = {}
        for pr in prepared:
            w = weights_of(pr)
            sa = weighted_statistics(pr.y, pr.pa.argmax(1), pr.pa, w)
            sb = weighted_statistics(pr.y, pr.pb.argmax(1), pr.pb, w)
            for f in figures:
                sum_a[f] = sum_a.get(f, 0.0) + _select(sa, f, class_names, positive)
                sum_b[f] = sum_b.get(f, 0.0) + _select(sb, f, class_names, positive)
        return ({f: v / len(prepared) for f, v in sum_a.items()}, {f: v / len(prepared) for f, v in sum_b.items()})

    point_a, point_b = figures_of(lambda pr: np.ones((1, pr.y.shape[0])))
    rng = np.random.default_rng(seed)
    n_cases = sum(pr.y.shape[0] for pr in prepared)
    chunk = max(1, min(int(n_boot), CHUNK_ELEMENTS // max(n_cases, n_groups)))
    diffs: dict[str, list[np.ndarray]] = {f: [] for f in figures}
    done = 0
    while done < n_boot:
        b = min(chunk, int(n_boot) - done)
        w_groups = resample_weights(b, everyone, rng)  # (b, G) draws of each patient
        da, db = figures_of(lambda pr, w=w_groups: w[:, pr.inverse])
        for f in figures:
            diffs[f].append(db[f] - da[f])
        done += b
    q = 100.0 * (1.0 - ci) / 2.0
    out: dict[str, dict[str, float]] = {}
    for f in figures:
        d = np.concatenate(diffs[f])
        d = d[np.isfinite(d)]
        a, b_ = float(point_a[f][0]), float(point_b[f][0])
        if d.size == 0 or not (math.isfinite(a) and math.isfinite(b_)):
            out[f] = {"a": a, "b": b_, "difference": b_ - a, "low": math.nan, "high": math.nan, "p_value": math.nan}
            continue
        lo, hi = (float(v) for v in np.percentile(d, [q, 100.0 - q]))
        m = d.size
        p = min(1.0, 2.0 * min((1 + int((d <= 0).sum())) / (m + 1), (1 + int((d >= 0).sum())) / (m + 1)))
        out[f] = {"a": a, "b": b_, "difference": b_ - a, "low": lo, "high": hi, "p_value": p}
    return out


def differs(figure: Mapping[str, float]) -> bool:
    """True when the interval of a difference excludes 0 (``low > 0`` or ``high < 0``)."""
    lo, hi = figure.get("low", math.nan), figure.get("high", math.nan)
    return bool(math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0))


def _figures_for(class_names: Sequence[str], figures: Sequence[str] | None) -> tuple[str, ...]:
    if figures:
        return tuple(figures)
    extra = tuple(f"positive.{k}" for k in ("precision", "recall", "specificity", "f1", "auc")) \
        if len(class_names) == 2 else ()
    return (*DEFAULT_FIGURES, *extra)


def compare_predictions(a: Predictions, b: Predictions, figures: Sequence[str] | None = None, *,
                        n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """Paired comparison of two runs' answers on the same cases (``B - A``), overall and per site.

    Returns:
        ``{"a", "b" (sources), "n": cases, "n_patients", "ci_unit": "patient" | "case", "n_boot",
        "ci", "seed", "p_value": "...", "figures": {figure: {...}}, "sites": {site: {"n", "figures"}}}``
        (``sites`` only with several sites).

    Raises:
        ComparisonError: the files differ in cases, labels or classes (see :func:`align_predictions`).
    """
    order = align_predictions(a, b)
    names = a.class_names
    figs = _figures_for(names, figures)
    groups = a.groups
    pb = b.probs[order]
    n_patients = int(group_index(groups, len(groups)).max()) + 1
    res: dict[str, Any] = {
        "a": a.source, "b": b.source, "n": len(a.files), "n_patients": n_patients,
        "ci_unit": "patient" if n_patients < len(a.files) else "case",
        "n_boot": int(n_boot), "ci": ci, "seed": seed, "class_names": names,
        "method": "paired patient-level percentile bootstrap of B - A; p-value: the interval inverted "
                  "(two-sided, H0: no difference)",
        "figures": paired_difference([(a.labels, a.probs, pb, groups)], names, figs, n_boot=n_boot, seed=seed, ci=ci),
    }
    sites = sorted(set(a.sites))
    if len(sites) > 1:
        res["sites"] = {}
        for s in sites:
            m = np.asarray(a.sites) == s
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res["sites"][s] = {"n": int(m.sum()), "figures": paired_difference(
                    [(a.labels[m], a.probs[m], pb[m], [g for g, keep in zip(groups, m, strict=True) if keep])],
                    names, figs, n_boot=n_boot, seed=seed, ci=ci)}
    return res


def comparison_markdown(res: Mapping[str, Any]) -> str:
    """Markdown of :func:`compare_predictions`: one table per block, differences in percentage points."""
    def table(figs: Mapping[str, Mapping[str, float]]) -> list[str]:
        lines = [f"| figure | A | B | B - A | {100 * res['ci']:g}% interval | p | differs |", "|---|---|---|---|---|---|---|"]
        for k, f in figs.items():
            def pct(v: float) -> str:
                return "n/a" if not math.isfinite(v) else f"{100 * v:.2f}"
            p = "n/a" if not math.isfinite(f["p_value"]) else f"{f['p_value']:.3g}"
            lines.append(f"| {k} | {pct(f['a'])} | {pct(f['b'])} | {pct(f['difference'])} | "
                         f"{pct(f['low'])} to {pct(f['high'])} | {p} | {'yes' if differs(f) else 'no'} |")
        return lines

    out = [f"## B - A: {res['b']} minus {res['a']}", "",
           f"{res['n']} cases of {res['n_patients']} patients, matched by file; {res['method']}; "
           f"resampling unit: {res['ci_unit']}, {res['n_boot']} resamples, seed {res['seed']}. Figures in percent; "
           "'differs' = the interval excludes 0.", "", *table(res["figures"])]
    for site, block in (res.get("sites") or {}).items():
        out += ["", f"### site {site} ({block['n']} cases)", "", *table(block["figures"])]
    return "\n".join(out) + "\n"


def compare_runs(run_a: str | Path, run_b: str | Path, *, split: str = "test", out: str | Path | None = None,
                 figures: Sequence[str] | None = None, n_boot: int = 2000, seed: int = 0,
                 ci: float = 0.95) -> dict[str, Any]:
    """``chestdx compare``: read both runs' ``predictions.csv`` (run folder: ``RUN/eval-<split>/``),
    compare them paired, write ``OUT/compare.json`` and ``OUT/compare.md`` when ``out`` is given.

    Raises:
        ComparisonError: a file is missing, or the two runs were not scored on the same cases.
    """
    res = compare_predictions(read_predictions(run_a, split), read_predictions(run_b, split), figures,
                              n_boot=n_boot, seed=seed, ci=ci)
    if out is not None:
        o = Path(out)
        write_json(o / "compare.json", res)  # NaN written as null
        write_text(o / "compare.md", comparison_markdown(res))
    return res
