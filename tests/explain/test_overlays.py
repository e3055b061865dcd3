"""Explanation drawing (chestdx.explain.overlays): heatmap colours by hand, overlays at the image's own
size and aspect ratio with a colour bar and the map's kind and grid, mask outlines, lesion overlays."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from chestdx.evaluate.metrics import MetricInputError
from chestdx.explain.overlays import (
    HEATMAP_COLORMAP,
    draw_lesions,
    heatmap_caption,
    heatmap_colours,
    mask_overlay,
    overlay_answer,
    overlay_heatmap,
)


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


def test_overlay_colours_by_hand():
    image = np.array([[0.0, 0.5], [1.0, 0.25]])
    heat = np.array([[0.0, 2.0], [1.0, 0.0]])
    plain = overlay_heatmap(image, heat, alpha=0.0)
    assert plain.shape == (2, 2, 3) and plain.dtype == np.uint8
    np.testing.assert_array_equal(plain[..., 0], [[0, 128], [255, 64]])
    np.testing.assert_array_equal(plain[..., 0], plain[..., 2])
    full = overlay_heatmap(image, heat, alpha=1.0)
    # jet: 0 -> dark blue (0, 0, .5), 1 -> dark red (.5, 0, 0); heatmap scaled by its max (2)
    np.testing.assert_array_equal(full[0, 0], [0, 0, 128])
    np.testing.assert_array_equal(full[0, 1], [128, 0, 0])
    half = overlay_heatmap(image, heat, alpha=0.4)
    expected = np.round(0.6 * 127.5 + 0.4 * 127.5)  # grey .5 blended with dark red on channel 0
    assert half[0, 1, 0] == expected



def test_overlay_bad_input():
    img = np.zeros((4, 4))
    with pytest.raises(ValueError, match="upsample"):
        overlay_heatmap(img, np.zeros((2, 2)))
    with pytest.raises(ValueError, match=">= 0"):
        overlay_heatmap(img, -np.ones((4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        overlay_heatmap(img, np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(img, np.zeros((4, 4)), alpha=1.5)


def test_the_colour_map_and_its_bar() -> None:
    assert HEATMAP_COLORMAP == "jet"
    np.testing.assert_allclose(heatmap_colours(np.array([0.0, 1.0])), [[0, 0, 0.5], [0.5, 0, 0]])
    img, heat = _pair()
    bar = overlay_heatmap(img, heat, colorbar=True)
    col = 64 + 4 + 2
    np.testing.assert_array_equal(bar[0, col], np.round(heatmap_colours(np.array([1.0]))[0] * 255).astype(np.uint8))
    np.testing.assert_array_equal(bar[63, col], np.round(heatmap_colours(np.array([0.0]))[0] * 255).astype(np.uint8))


def test_mask_overlay_outlines_the_mask_in_white() -> None:
    img = np.linspace(-2.0, 3.0, 16 * 16).reshape(16, 16)  # z-scored: min-maxed for drawing
    heat = np.zeros((16, 16))
    mask = _box(16, 16, 4, 10, 4, 10)
    rgb = mask_overlay(img, heat, mask, alpha=0.0)
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[4, 4]) == (255, 255, 255) and tuple(rgb[9, 6]) == (255, 255, 255)  # the inner outline
    assert rgb[6, 6, 0] == rgb[6, 6, 2] < 255 and tuple(rgb[0, 0]) == (0, 0, 0)  # grey inside, black minimum


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_draw_lesions_is_rgb():
    img = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    pic = draw_lesions(img, _box(16, 16, 2, 6, 2, 6)[None], np.array([[2, 2, 6, 6]]), np.array([0.8]),
                       gt=_box(16, 16, 8, 12, 8, 12))
    assert pic.shape == (16, 16, 3) and pic.dtype == np.uint8
    assert tuple(pic[8, 8]) == (0, 255, 0)

