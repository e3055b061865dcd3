"""Overlays at the image's own size and aspect ratio, with a colour bar and the map's kind and grid."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from chestdx.evaluate.metrics import MetricInputError
from chestdx.evaluate.plots import heatmap_caption, overlay_answer, overlay_heatmap


def _pair(s: int = 64) -> tuple[np.ndarray, np.ndarray]:
    img = np.linspace(0, 1, s * s).reshape(s, s)
    heat = np.zeros((s, s))
    heat[:8, :8] = 1.0  # top-left corner hot
    return img, heat


def test_default_is_unchanged() -> None:
    img, heat = _pair()
    out = overlay_heatmap(img, heat)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8


def test_own_size_and_aspect_ratio() -> None:
    img, heat = _pair()
    out = overlay_heatmap(img, heat, size=(408, 578))   # a 578 x 408 slice drawn as itself, not 64 x 64
    assert out.shape == (408, 578, 3)
    # the hot corner stays in the corner after the resize (red channel high, blue low there)
    assert out[10, 10, 0] > out[10, 10, 2] and out[300, 400, 2] > out[300, 400, 0]
    small = overlay_heatmap(img, heat, size=(60, 90), min_side=256)   # whole factor 5: 300 x 450
    assert small.shape == (300, 450, 3)
    with pytest.raises(MetricInputError):
        overlay_heatmap(img, heat, size=(0, 10))


def test_colorbar_and_caption() -> None:
    img, heat = _pair()
    bar = overlay_heatmap(img, heat, colorbar=True)
    assert bar.shape[0] == 64 and bar.shape[1] > 64
    col = 64 + 4 + 2                                    # inside the bar: red-ish top, blue-ish bottom
    assert bar[0, col, 0] > bar[0, col, 2] and bar[63, col, 2] > bar[63, col, 0]
    cap = overlay_heatmap(img, heat, label="cam map, 2 x 2 grid, upsampled")
    assert cap.shape[0] == 64 + 16 and cap.shape[1] >= 64
    assert (cap[64:] < 128).any()                        # some dark text on the white band


def test_answer_overlay_names_kind_and_grid() -> None:
    img, heat = _pair()
    det = {"heatmap_kind": "gradcam16", "heatmap_grid": [4, 4], "image_size": [100, 150]}
    assert heatmap_caption(det) == "gradcam16 map, 4 x 4 grid, upsampled"
    assert heatmap_caption({}) == "heatmap map"
    out = overlay_answer(SimpleNamespace(image=img, heatmap=heat, details=det, source="x"))
    assert out.shape[0] == 300 + 16 and out.shape[1] > 450   # 100 x 150 enlarged x3, bar, caption
