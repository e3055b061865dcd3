"""Localisation scores on hand-made maps and masks (every expected value worked out by hand)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from chestdx.errors import ConfigError
from chestdx.evaluate.metrics import MetricInputError
from chestdx.explain.scores import (
    body_map,
    centre_prior,
    energy_inside,
    localisation_scores,
    map_peak,
    mask_dice_iou,
    pointing_hit,
    pointing_tolerance,
    summarise_scores,
)


def _two_peaks() -> tuple[np.ndarray, np.ndarray]:
    """10 x 10: lesion = the 2 x 2 block rows/cols 2-3; map 1.0 at (2, 2), 0.5 at (7, 7), 0 elsewhere."""
    m = np.zeros((10, 10))
    m[2, 2], m[7, 7] = 1.0, 0.5
    lesion = np.zeros((10, 10), dtype=bool)
    lesion[2:4, 2:4] = True
    return m, lesion


def test_scores_on_two_peaks() -> None:
    m, lesion = _two_peaks()
    s = localisation_scores(m, lesion, tolerance=0)
    assert s["pointing"] == 1.0                       # the peak (2, 2) is a lesion pixel
    assert s["energy"] == pytest.approx(1.0 / 1.5)    # 1 of the mass 1.5 inside
    # map >= 0.5 * max: {(2, 2), (7, 7)}; intersection 1, union 4 + 1 = 5; Dice 2 * 1 / (2 + 4)
    assert s["iou"] == pytest.approx(0.2)
    assert s["dice"] == pytest.approx(1.0 / 3.0)
    # a threshold above 0.5 keeps only the peak: IoU 1 / 4, Dice 2 / 5
    assert mask_dice_iou(m, lesion, threshold=0.6) == pytest.approx((0.25, 0.4))


def test_pointing_tolerance_in_pixels() -> None:
    m = np.zeros((11, 11))
    m[5, 8] = 1.0
    lesion = np.zeros((11, 11), dtype=bool)
    lesion[5, 5] = True                               # 3 px left of the peak
    assert not pointing_hit(m, lesion, tolerance=2)
    assert pointing_hit(m, lesion, tolerance=3)
    m2 = np.zeros((11, 11))
    m2[7, 7] = 1.0                                    # distance sqrt(8) = 2.83 from (5, 5)
    assert not pointing_hit(m2, lesion, tolerance=2.8)
    assert pointing_hit(m2, lesion, tolerance=2.9)
    # default: Zhang et al.'s 15 px at 224 px, scaled
    assert pointing_tolerance((224, 224)) == 15
    assert pointing_tolerance((64, 64)) == 4          # round(4.29)
    assert pointing_tolerance((128, 96)) == 6         # round(15 * 96 / 224) = round(6.43)
    assert pointing_tolerance((8, 8)) == 1            # at least 1 px


def test_peak_of_a_plateau_is_its_centre() -> None:
    # an upsampled coarse map is flat at its maximum: rows 0-2, cols 0-4 -> centroid (1, 2)
    m = np.zeros((8, 8))
    m[0:3, 0:5] = 1.0
    assert map_peak(m) == (1, 2)
    lesion = np.zeros((8, 8), dtype=bool)
    lesion[1, 2] = True
    assert pointing_hit(m, lesion, tolerance=0)
    lesion2 = np.zeros((8, 8), dtype=bool)
    lesion2[0, 0] = True                              # a plateau pixel, but not the peak
    assert not pointing_hit(m, lesion2, tolerance=0)


def test_zero_map_and_empty_lesion() -> None:
    lesion = np.zeros((6, 6), dtype=bool)
    lesion[2, 2] = True
    assert localisation_scores(np.zeros((6, 6)), lesion) == {"pointing": 0.0, "energy": 0.0, "iou": 0.0, "dice": 0.0}
    assert map_peak(np.zeros((6, 6))) is None
    m = np.ones((6, 6))
    assert not pointing_hit(m, np.zeros((6, 6)))
    assert energy_inside(m, lesion) == pytest.approx(1 / 36)
    with pytest.raises(MetricInputError):
        localisation_scores(-m, lesion)
    with pytest.raises(MetricInputError):
        localisation_scores(np.ones((5, 6)), lesion)


def test_centre_prior_values() -> None:
    p = centre_prior((4, 4))
    # pixel centres at offsets +-0.5, +-1.5 from the middle; sigma = 0.25 * 4 = 1
    assert p[1, 1] == pytest.approx(np.exp(-0.5 * (0.25 + 0.25)))
    assert p[0, 0] == pytest.approx(np.exp(-0.5 * (2.25 + 2.25)))
    assert p[0, 1] == pytest.approx(np.exp(-0.5 * (2.25 + 0.25)))
    lesion = np.zeros((4, 4), dtype=bool)
    lesion[1:3, 1:3] = True
    s = localisation_scores(p, lesion, tolerance=0)
    assert s["pointing"] == 1.0
    inner, edge, corner = np.exp(-0.25), np.exp(-1.25), np.exp(-2.25)
    assert s["energy"] == pytest.approx(4 * inner / (4 * inner + 8 * edge + 4 * corner))
    # >= half the peak: exp(-1.25) / exp(-0.25) = 0.37 < 0.5, so only the centre 2 x 2 block
    assert s["iou"] == pytest.approx(1.0)


def test_body_map_fills_the_lungs() -> None:
    img = np.zeros((7, 7))
    img[1, 1:6] = img[5, 1:6] = img[1:6, 1] = img[1:6, 5] = 1.0   # a ring (skin) around dark lungs
    body = body_map(img)
    expected = np.zeros((7, 7))
    expected[1:6, 1:6] = 1.0
    np.testing.assert_array_equal(body, expected)
    lesion = np.zeros((7, 7), dtype=bool)
    lesion[3, 3] = True
    s = localisation_scores(body, lesion, tolerance=0)
    assert s["pointing"] == 1.0                        # the body's centre
    assert s["energy"] == pytest.approx(1 / 25)
    assert s["iou"] == pytest.approx(1 / 25)
    assert s["dice"] == pytest.approx(2 / 26)


def test_summary_resamples_patients() -> None:
    # patient a: 9 slices, all hits; patient b: 1 slice, a miss. Mean over slices 0.9; resampling the
    # 2 patients gives {a, a} -> 1, {a, b} -> 0.9, {b, b} -> 0 (probability 1/4 each end), so the 95%
    # interval is [0, 1], where resampling slices would give a narrow one around 0.9
    rows = [{"pointing": 1.0, "energy": 0.5, "iou": 0.2, "dice": 0.3}] * 9 + \
           [{"pointing": 0.0, "energy": 0.1, "iou": 0.0, "dice": 0.0}]
    out = summarise_scores(rows, ["a"] * 9 + ["b"], n_boot=2000, seed=0)
    assert out["pointing"]["value"] == pytest.approx(0.9)
    assert out["pointing"]["ci_low"] == pytest.approx(0.0)
    assert out["pointing"]["ci_high"] == pytest.approx(1.0)
    assert out["energy"]["value"] == pytest.approx(0.46)
    per_slice = summarise_scores(rows, [str(i) for i in range(10)], n_boot=2000, seed=0)
    assert per_slice["pointing"]["ci_low"] > 0.5


def _fake_loader(n: int = 4, size: int = 32) -> tuple[list[dict], list[SimpleNamespace]]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, size, size, generator=g)
    lesion = torch.zeros(n, 1, size, size)
    lesion[:2, :, 8:16, 8:16] = 1.0                     # images 2, 3 have no lesion: left out
    batch = {"image": images, "lesion": lesion, "has_mask": torch.ones(n, dtype=torch.bool),
             "index": torch.arange(n)}
    samples = [SimpleNamespace(site="s", patient_id=f"p{i // 2}", path=f"img{i}.png") for i in range(n)]
    return [batch], samples


def test_score_heatmaps_structure() -> None:
    from chestdx.evaluate.localisation import localisation_markdown, parse_heatmap_kinds, score_heatmaps
    from chestdx.models.classifier import ResNetMLP

    torch.manual_seed(0)
    model = ResNetMLP(3, "resnet18", 1, "none", 8)
    loader, samples = _fake_loader()
    loc = score_heatmaps(model, loader, samples, ["auto", "gradcam16", "attention"], n_boot=50)
    assert loc["n_images"] == 2 and loc["n_patients"] == 1
    assert loc["default_kind"] in loc["maps"] and "gradcam16" in loc["maps"]
    assert set(loc["references"]) == {"centre_prior", "body"}
    assert "attention" in loc["unavailable"]
    # the prior's peak (16, 16) or (15, 15) is 0 px from the lesion 8..15 at most at tolerance 2 (32 px)
    assert loc["references"]["centre_prior"]["pointing"]["value"] == 1.0
    md = localisation_markdown(loc, "t")
    assert "| centre_prior (reference) |" in md and "gradcam16" in md
    assert parse_heatmap_kinds("cam, gradcam16,cam") == ["cam", "gradcam16"]
    with pytest.raises(ConfigError, match="unknown heatmap"):
        parse_heatmap_kinds("cam,gradcamm")


def test_score_heatmaps_scores_the_predicted_or_the_true_class() -> None:
    """A model whose class-1 evidence is the top-left 8 x 8 block and class-2 evidence the bottom-right
    one (twice as strong): on an image lit in both blocks it answers class 2. The lesion is the top-left
    block, labelled class 1. The predicted class's occlusion map peaks bottom-right (a miss); the true
    class's map peaks on the lesion (a hit)."""
    from torch import nn

    from chestdx.evaluate.localisation import localisation_markdown, score_heatmaps
    from chestdx.models.base import ModelOutput

    class TwoRegions(nn.Module):
        def forward(self, x: torch.Tensor) -> ModelOutput:
            a, b = x[:, 0, :8, :8].mean(dim=(1, 2)), x[:, 0, 24:, 24:].mean(dim=(1, 2))
            return ModelOutput(logits=torch.stack([torch.zeros_like(a), 4.0 * a, 8.0 * b], dim=1))

    image = torch.zeros(1, 1, 32, 32)
    image[..., :8, :8] = image[..., 24:, 24:] = 1.0
    lesion = torch.zeros(1, 1, 32, 32)
    lesion[..., :8, :8] = 1.0
    batch = {"image": image, "lesion": lesion, "has_mask": torch.ones(1, dtype=torch.bool),
             "index": torch.arange(1), "label": torch.tensor([1])}
    samples = [SimpleNamespace(site="s", patient_id="p", path="img.png")]
    pred = score_heatmaps(TwoRegions(), [batch], samples, ["occlusion", "intgrad"], n_boot=0)
    true = score_heatmaps(TwoRegions(), [batch], samples, ["occlusion", "intgrad"], n_boot=0, target="true")
    for kind in ("occlusion", "intgrad"):
        assert pred["maps"][kind]["pointing"]["value"] == 0.0 and pred["maps"][kind]["energy"]["value"] == 0.0
        assert true["maps"][kind]["pointing"]["value"] == 1.0 and true["maps"][kind]["energy"]["value"] == 1.0
    assert pred["rules"]["class"] == "predicted" and true["rules"]["class"] == "true"
    assert "maps of the true class" in localisation_markdown(true, "t")
    with pytest.raises(ConfigError, match="unknown heatmap target"):
        score_heatmaps(TwoRegions(), [batch], samples, ["occlusion"], target="label")
