"""Figures for evaluation: confusion matrix, ROC curves, training curves, heatmap overlays.

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

from chestdx.evaluate.metrics import MetricInputError, _auc_weighted, validate_predictions
from chestdx.utils import as_float, atomic_open

__all__ = [
    "heatmap_caption",
    "overlay_answer",
    "overlay_heatmap",
    "plot_confusion_matrix",
    "plot_roc",
    "plot_training_curves",
    "png_bytes",
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
        auc = float(_auc_weighted(p[:, c], positive, ones)[0])
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


def overlay_heatmap(image: Any, heatmap: Any, alpha: float = 0.4, *, size: Sequence[int] | None = None,
                    colorbar: bool = False, label: str | None = None, min_side: int = 0) -> np.ndarray:
    """Blend a heatmap (jet colormap) over a grey image.

    The heatmap is scaled by its maximum to [0, 1] (an all-zero map stays 0, i.e. dark blue); the
    image is clipped to [0, 1]. Output = ``(1 - alpha) * grey + alpha * jet(heatmap)``.

    Args:
        image: ``(H, W)`` float in [0, 1].
        heatmap: ``(H, W)`` float >= 0 (a CAM / attention map upsampled to the image size).
        alpha: weight of the heatmap, in [0, 1].
        size: ``(H0, W0)``: draw at this size (the original image's, so its own aspect ratio and
            resolution; image and map resized bilinearly), else at ``(H, W)``.
        colorbar: append a colour bar (map value 0 at the bottom, 1 at the top) on the right.
        label: a caption line under the picture (e.g. the map kind and its grid, ``cam, 2 x 2 grid``).
        min_side: enlarge by a whole factor until the shorter side is at least this (aspect kept),
            so that a small image stays legible; 0: never.

    Returns:
        ``(H', W', 3)`` uint8 RGB: ``(H, W, 3)`` with the defaults; wider with ``colorbar``, taller
        with ``label``.

    Raises:
        MetricInputError: (a ``ValueError``) shapes differ or are not 2D, NaN / inf values, a
            negative heatmap value, or ``alpha`` outside [0, 1].
    """
    import matplotlib

    img = np.asarray(image, dtype=np.float64)
    heat = np.asarray(heatmap, dtype=np.float64)
    if img.ndim != 2:
        raise MetricInputError(f"image must have shape (H, W); got {img.shape}")
    if heat.shape != img.shape:
        raise MetricInputError(
            f"heatmap shape {heat.shape} differs from image shape {img.shape}; upsample the map to the image first"
        )
    if not np.isfinite(img).all() or not np.isfinite(heat).all():
        raise MetricInputError("image and heatmap must not hold NaN or inf")
    if (heat < 0).any():
        raise MetricInputError(f"heatmap must be >= 0; its minimum is {heat.min():.4g} (apply ReLU first)")
    if not 0.0 <= alpha <= 1.0:
        raise MetricInputError(f"alpha must lie in [0, 1]; got {alpha}")
    peak = heat.max()
    heat = heat / peak if peak > 0 else heat
    target = tuple(int(v) for v in size) if size is not None else img.shape
    if len(target) != 2 or min(target) < 1:
        raise MetricInputError(f"size must be (H, W) with positive sides; got {size}")
    if min_side > 0 and min(target) < min_side:
        factor = -(-int(min_side) // min(target))
        target = (target[0] * factor, target[1] * factor)
    if target != img.shape:
        img, heat = _resize2d(img, target), np.clip(_resize2d(heat, target), 0.0, 1.0)
    colour = matplotlib.colormaps["jet"](heat)[..., :3]
    grey = np.clip(img, 0.0, 1.0)[..., None]
    out = (1.0 - alpha) * grey + alpha * colour
    rgb = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
    if colorbar:
        rgb = _with_colorbar(rgb)
    if label:
        rgb = _with_caption(rgb, label)
    return rgb


def _resize2d(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float ``(H, W)`` array to ``size (H0, W0)``."""
    from PIL import Image

    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((size[1], size[0]),
                                                                           Image.Resampling.BILINEAR),
                      dtype=np.float64)


def _with_colorbar(rgb: np.ndarray) -> np.ndarray:
    """``rgb (H, W, 3)`` with a jet colour bar (1 at the top, 0 at the bottom, ticks 0 / 0.5 / 1) on the right."""
    import matplotlib
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    bar_w, text_w = max(8, w // 24), 26
    ramp = np.linspace(1.0, 0.0, h)[:, None].repeat(bar_w, axis=1)
    bar = np.round(matplotlib.colormaps["jet"](ramp)[..., :3] * 255).astype(np.uint8)
    pad = np.full((h, 4, 3), 255, np.uint8)
    panel = Image.fromarray(np.full((h, text_w, 3), 255, np.uint8))
    draw = ImageDraw.Draw(panel)
    for value, y in ((1.0, 0), (0.5, h // 2 - 5), (0.0, h - 11)):
        draw.text((2, max(0, y)), f"{value:g}", fill=(0, 0, 0))
    return np.concatenate([rgb, pad, bar, np.asarray(panel)], axis=1)


def _with_caption(rgb: np.ndarray, text: str) -> np.ndarray:
    """``rgb (H, W, 3)`` with one line of ``text`` on a white band below (widened to fit the text)."""
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    need = 6 * len(text) + 8
    if need > w:
        rgb = np.concatenate([rgb, np.full((h, need - w, 3), 255, np.uint8)], axis=1)
        w = need
    band = Image.fromarray(np.full((16, w, 3), 255, np.uint8))
    ImageDraw.Draw(band).text((4, 2), text, fill=(0, 0, 0))
    return np.concatenate([rgb, np.asarray(band)], axis=0)


def heatmap_caption(details: dict[str, Any]) -> str:
    """The caption of an answer's overlay from its details: the map kind and, where known, its grid
    (``"cam map, 2 x 2 grid, upsampled"``)."""
    kind = str(details.get("heatmap_kind") or "heatmap")
    grid = details.get("heatmap_grid")
    return f"{kind} map, {grid[0]} x {grid[1]} grid, upsampled" if grid else f"{kind} map"


def overlay_answer(answer: Any, alpha: float = 0.4) -> np.ndarray:
    """The overlay of an answer (a :class:`~chestdx.serve.predictor.Prediction` with ``image`` and
    ``heatmap``) as the service, the report and ``chestdx predict`` draw it: at the original image's
    size (``details["image_size"]``, else the file's own size when ``source`` is a readable 2D image
    file), shorter side at least 256 px, with a colour bar and a caption naming the map kind and grid."""
    details = dict(getattr(answer, "details", {}) or {})
    size = details.get("image_size")
    if size is None:
        size = _file_size(getattr(answer, "source", None))
    return overlay_heatmap(answer.image, answer.heatmap, alpha, size=size, colorbar=True,
                           label=heatmap_caption(details), min_side=256)


def _file_size(source: Any) -> tuple[int, int] | None:
    """``(H, W)`` of a 2D image file (PNG / JPEG / TIFF ...), read from its header; None otherwise."""
    if not source:
        return None
    try:
        from PIL import Image

        p = Path(str(source))
        if not p.is_file() or p.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
            return None
        with Image.open(p) as im:
            return (int(im.size[1]), int(im.size[0]))
    except (OSError, ValueError):
        return None


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
