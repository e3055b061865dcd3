"""Figures for evaluation: confusion matrix, ROC curves, training curves; PNG writing.

Heatmap overlays and their colour map are :mod:`chestdx.explain.overlays`.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas: pyplot is never
imported, no window opens, the global matplotlib backend is left alone, and nothing leaks between
calls (safe in a long-running service). Every file is written atomically (PNG rendered into memory,
then :func:`chestdx.utils.atomic_open`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from chestdx.evaluate.metrics import MetricInputError, validate_predictions, weighted_auc
from chestdx.utils import as_float, atomic_open

__all__ = [
    "new_figure",
    "plot_confusion_matrix",
    "plot_roc",
    "plot_training_curves",
    "png_bytes",
    "save_figure",
    "save_png",
]


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure on the Agg canvas (no pyplot, no global backend change)."""
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG atomically; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    path = Path(path)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def plot_confusion_matrix(
    cm: Any, class_names: Sequence[str], path: str | Path, normalize: bool = False
) -> Path:
    """Draw a confusion matrix (rows = true class, columns = predicted) with counts in the cells.

    Args:
        cm: ``(K, K)`` counts, e.g. ``metrics["confusion_matrix"]``.
        class_names: ``K`` names.
        path: PNG file to write.
        normalize: divide each row by its total (rows with no case stay 0); cells show fractions.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MetricInputError: (a ``ValueError``) ``cm`` is not ``(K, K)`` with ``K = len(class_names)``,
            or holds negative / non-finite values.
    """
    m = np.asarray(cm, dtype=np.float64)
    k = len(class_names)
    if m.shape != (k, k):
        raise MetricInputError(
            f"confusion matrix must have shape ({k}, {k}) for {k} class names; got {m.shape}"
        )
    if not np.isfinite(m).all() or (m < 0).any():
        raise MetricInputError("confusion matrix must hold finite, non-negative counts")
    if normalize:
        rows = m.sum(axis=1, keepdims=True)
        m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    size = 1.2 + 0.9 * k
    fig = new_figure(size + 1.2, size)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize else max(m.max(), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels=[str(c) for c in class_names], rotation=45, ha="right")
    ax.set_yticks(ticks, labels=[str(c) for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    threshold = (1 if normalize else max(m.max(), 1)) / 2
    for i in range(k):
        for j in range(k):
            text = f"{m[i, j]:.2f}" if normalize else f"{int(round(m[i, j]))}"
            ax.text(j, i, text, ha="center", va="center", color="white" if m[i, j] > threshold else "black")
    return save_figure(fig, path)


def _roc_points(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False / true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    pos = positive[order].astype(np.float64)
    last = np.r_[s[1:] != s[:-1], True]  # last index of each tie group
    tps = np.cumsum(pos)[last]
    fps = np.cumsum(1.0 - pos)[last]
    tpr = np.r_[0.0, tps / max(tps[-1], 1.0)]
    fpr = np.r_[0.0, fps / max(fps[-1], 1.0)]
    return fpr, tpr


def plot_roc(y_true: Any, probs: Any, class_names: Sequence[str], path: str | Path) -> Path:
    """One-vs-rest ROC curve of every class, with its AUC in the legend.

    A class with no positive or no negative case has no curve; its legend entry says ``AUC n/a``.

    Args:
        y_true: true class indices ``(N,)``.
        probs: class probabilities ``(N, K)``.
        class_names: ``K`` names.
        path: PNG file to write.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MetricInputError: (a ``ValueError``) on malformed input (see
            :func:`chestdx.evaluate.metrics.validate_predictions`).
    """
    y, p = validate_predictions(y_true, probs, class_names)
    fig = new_figure(5.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ones = np.ones((1, y.shape[0]))
    for c, name in enumerate(class_names):
        positive = y == c
        auc = float(weighted_auc(p[:, c], positive, ones)[0])
        if math.isnan(auc):
            ax.plot([], [], label=f"{name} (AUC n/a)")
            continue
        fpr, tpr = _roc_points(p[:, c], positive)
        ax.plot(fpr, tpr, linewidth=1.8, label=f"{name} (AUC {auc:.3f})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC, one-vs-rest")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Loss (left panel) and other metrics (right panel) per epoch.

    ``history`` is a list of dicts as read from a metrics CSV (values may be strings; empty cells
    are skipped). The x axis is the ``"epoch"`` column where present, else the row number. Several
    rows of one epoch (Lightning's CSVLogger writes train and validation rows separately) are merged:
    the last non-empty value of each column wins. Columns named ``epoch``, ``step`` or holding no
    number are not drawn; columns whose name contains ``loss`` go to the left panel.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MetricInputError: (a ``ValueError``) ``history`` holds no numeric column to draw.
    """
    merged: dict[float, dict[str, float]] = {}
    for i, row in enumerate(history):
        epoch = as_float(row.get("epoch")) if "epoch" in row else float(i)
        if math.isnan(epoch):
            epoch = float(i)
        slot = merged.setdefault(epoch, {})
        for key, value in row.items():
            if key in ("epoch", "step"):
                continue
            v = as_float(value)
            if not math.isnan(v):
                slot[str(key)] = v
    epochs = sorted(merged)
    columns = sorted({key for slot in merged.values() for key in slot})
    if not columns:
        raise MetricInputError("training history holds no numeric column to plot (besides epoch/step)")
    losses = [c for c in columns if "loss" in c.lower()]
    others = [c for c in columns if c not in losses]
    panels = [(title, cols) for title, cols in (("loss", losses), ("metrics", others)) if cols]
    fig = new_figure(5.0 * len(panels), 4.0)
    for n, (title, cols) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), n)
        for col in cols:
            xs = [e for e in epochs if col in merged[e]]
            ys = [merged[e][col] for e in xs]
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=col)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def png_bytes(array: Any) -> bytes:
    """Encode an image as PNG bytes.

    Args:
        array: ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``; uint8 as is, floats taken as [0, 1]
            (clipped) and scaled to 0-255, bool as 0 / 255.

    Raises:
        MetricInputError: (a ``ValueError``) wrong shape or NaN.
    """
    from PIL import Image

    a = np.asarray(array)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or a.size == 0:
        raise MetricInputError(f"image must have shape (H, W), (H, W, 3) or (H, W, 4); got {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        f = a.astype(np.float64)
        if not np.isfinite(f).all():
            raise MetricInputError("image holds NaN or inf")
        a = np.clip(np.round(f * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG")
    return buf.getvalue()


def save_png(array: Any, path: str | Path) -> Path:
    """Write an image array as PNG, atomically (see :func:`png_bytes` for accepted arrays).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    data = png_bytes(array)
    path = Path(path)
    with atomic_open(path, "wb") as f:
        f.write(data)
    return path
