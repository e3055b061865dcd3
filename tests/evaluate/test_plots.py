"""Tests of chestdx.evaluate.plots: PNGs written (atomically), bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from chestdx.evaluate.plots import (
    plot_confusion_matrix,
    plot_roc,
    plot_training_curves,
    png_bytes,
    save_png,
)
from chestdx.explain.overlays import overlay_heatmap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    img = Image.open(io.BytesIO(data))
    assert img.size[0] > 50 and img.size[1] > 50
    # atomic write: no temporary file left next to it
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_confusion_matrix_png(tmp_path):
    cm = [[5, 1, 0], [2, 3, 1], [0, 0, 4]]
    out = plot_confusion_matrix(cm, ["normal", "pneumonia", "COVID"], tmp_path / "cm.png")
    assert out == tmp_path / "cm.png"
    assert_png(out)
    assert_png(plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "sub" / "cm_norm.png", normalize=True))
    # a class with no case: normalised row stays 0, no division warning
    assert_png(
        plot_confusion_matrix([[0, 0], [1, 2]], ["a", "b"], tmp_path / "empty_row.png", normalize=True)
    )


def test_confusion_matrix_bad_shape(tmp_path):
    with pytest.raises(ValueError, match="shape \\(3, 3\\)"):
        plot_confusion_matrix([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_roc_png(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet(np.ones(3), size=60)
    assert_png(plot_roc(y, p, ["normal", "pneumonia", "COVID"], tmp_path / "roc.png"))
    # a class without positives has no curve but does not fail
    y2 = np.array([0, 1, 0, 1])
    p3 = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.3, 0.6, 0.1]])
    assert_png(plot_roc(y2, p3, ["a", "b", "c"], tmp_path / "roc_missing.png"))
    with pytest.raises(ValueError, match="NaN"):
        plot_roc(y2, np.full((4, 3), np.nan), ["a", "b", "c"], tmp_path / "bad.png")


def test_training_curves_png(tmp_path):
    # as read from a Lightning metrics.csv: strings, empty cells, train and val rows per epoch
    history = [
        {"epoch": "0", "step": "10", "train_loss": "1.2", "val_loss": "", "val_acc": ""},
        {"epoch": "0", "step": "10", "train_loss": "", "val_loss": "1.1", "val_acc": "0.5"},
        {"epoch": "1", "step": "20", "train_loss": "0.9", "val_loss": "", "val_acc": ""},
        {"epoch": "1", "step": "20", "train_loss": "", "val_loss": "0.95", "val_acc": "0.62"},
        {"epoch": "2", "step": "30", "train_loss": 0.7, "val_loss": 0.9, "val_acc": 0.66},
    ]
    assert_png(plot_training_curves(history, tmp_path / "curves.png"))
    # no epoch column: row index; only losses: one panel
    assert_png(plot_training_curves([{"loss": 1.0}, {"loss": 0.5}], tmp_path / "loss_only.png"))
    with pytest.raises(ValueError, match="no numeric column"):
        plot_training_curves([{"epoch": 0, "note": "x"}], tmp_path / "bad.png")


def test_save_png_roundtrip(tmp_path):
    rgb = overlay_heatmap(np.linspace(0, 1, 32 * 48).reshape(32, 48), np.ones((32, 48)))
    out = save_png(rgb, tmp_path / "overlay.png")
    np.testing.assert_array_equal(np.asarray(Image.open(out)), rgb)
    grey = save_png(np.full((8, 8), 0.5, dtype=np.float32), tmp_path / "grey.png")
    assert np.asarray(Image.open(grey)).max() == 128
    assert png_bytes(np.zeros((3, 3), dtype=bool)).startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="shape"):
        save_png(np.zeros((2, 2, 2)), tmp_path / "bad.png")
