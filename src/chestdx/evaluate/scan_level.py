"""Scan-level answers from a slice model (resnet50-att2-bilstm-covidx-ct.txt, Section VI: "it is
difficult to understand how to get a single classification for the patient from the n
classifications of his CT images").

A slice model answers every slice; :func:`scan_level_answers` turns those answers into one per
scan with one of three rules (see :func:`chestdx.evaluate.metrics.aggregate` for the exact
definitions): ``mean`` probability, ``majority`` vote, or ``max`` ("abnormal if any slice is").
Scans are found from the file names (:func:`chestdx.data.sequences.scan_id_of`), so the same scans
can be scored by the slice model and by the sequence model and the two compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chestdx.errors import ConfigError

AGGREGATIONS: tuple[str, ...] = ("mean", "majority", "max")


@dataclass
class ScanAnswers:
    """One answer per scan.

    Attributes:
        scan_ids: ``S`` scan ids, in order of first appearance.
        probs: ``(S, K)`` aggregated probabilities (vote fractions for ``majority``).
        labels: ``(S,)`` scan labels, or None where the slices carried none.
        n_slices: ``(S,)`` slices per scan.
        how: the rule used.
    """

    scan_ids: list[str]
    probs: np.ndarray
    labels: np.ndarray | None
    n_slices: np.ndarray
    how: str

    @property
    def pred(self) -> np.ndarray:
        """``(S,)`` predicted class per scan (argmax; lowest index on a tie)."""
        return self.probs.argmax(axis=1)


def scan_id_from_path(path: str | Path) -> str:
    """The scan of a slice file from its name alone (COVIDx ``NCP_96_1328_0032.png`` -> ``NCP_96_1328``;
    ``<scan>_<k>.png`` -> ``<scan>``; a name without ``_`` -> its folder)."""
    from chestdx.data.layouts import Sample
    from chestdx.data.sequences import scan_id_of

    p = Path(path)
    return scan_id_of(Sample(str(p), 0, p.parent.name or p.stem, ""))


def scan_level_answers(probs: Any, scan_ids: Sequence[str], how: str = "mean",
                       labels: Any = None) -> ScanAnswers:
    """Aggregate slice probabilities ``(N, K)`` to one answer per scan.

    Args:
        probs: ``(N, K)`` slice probabilities.
        scan_ids: ``N`` scan ids (e.g. from :func:`chestdx.data.sequences.scan_id_of`).
        how: ``mean``, ``majority`` or ``max``.
        labels: optional ``(N,)`` slice labels (one per scan is checked).

    Raises:
        ConfigError: unknown rule.
        MetricInputError: bad shapes, or a scan whose slices carry different labels.
    """
    from chestdx.evaluate.metrics import aggregate

    if how not in AGGREGATIONS:
        raise ConfigError(f"unknown scan aggregation '{how}'; choose one of {list(AGGREGATIONS)}")
    ids, p, y = aggregate(probs, list(scan_ids), how, y_true=labels)  # type: ignore[arg-type]
    counts: dict[str, int] = {}
    for s in scan_ids:
        counts[s] = counts.get(s, 0) + 1
    return ScanAnswers([str(i) for i in ids], p, y, np.array([counts[i] for i in ids]), how)


def write_scan_answers(path: str | Path, answers: ScanAnswers, class_names: Sequence[str]) -> Path:
    """Write ``scan_id,n_slices,label,pred,p_<class>...`` as CSV, atomically."""
    import csv
    import io

    from chestdx.utils import atomic_open

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["scan_id", "n_slices", "label", "pred", *[f"p_{c}" for c in class_names], "aggregate"])
    for i, sid in enumerate(answers.scan_ids):
        label = class_names[int(answers.labels[i])] if answers.labels is not None else ""
        w.writerow([sid, int(answers.n_slices[i]), label, class_names[int(answers.pred[i])],
                    *[f"{v:.6f}" for v in answers.probs[i]], answers.how])
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
    return path
