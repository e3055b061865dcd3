"""MAG-SD's Table 2 augmentation (data/transforms.py: MagsdAugment): the ranges of the paper."""

from __future__ import annotations

import torch

from chestdx.config import load_recipe
from chestdx.data.transforms import MagsdAugment, adjust_brightness, adjust_contrast, build_pipeline


def _item(img):
    return {"image": img, "lesion": torch.zeros_like(img)}


def _only(op):
    """An augment that always applies ``op`` alone."""
    aug = MagsdAugment()
    aug.OPS = (op,)
    return aug


def test_the_magsd_recipe_uses_table_2():
    steps = build_pipeline(load_recipe("magsd").data, train=True).transforms
    assert isinstance(steps[-1], MagsdAugment)
    t = steps[-1].table
    assert t["brightness"] == (0.5, 1.0) and t["contrast"] == (0.7, 1.0) and t["rotation"] == (0.0, 120.0)
    assert 0 < t["crop_scale"][0] < t["crop_scale"][1] == 1.0  # a crop inside the image, never a zoom-out


def test_brightness_factor_is_a_factor_from_half_to_one():
    torch.manual_seed(0)
    x = torch.linspace(0, 1, 64).reshape(1, 8, 8)  # the [0, 1] image; z-scoring is affine
    z = (x - x.mean()) / x.std()
    factors = []
    aug = _only("brightness")
    for _ in range(300):
        y = aug(_item(z))["image"]
        back = y * x.std() + x.mean()  # undo the z-score: the factor times the [0, 1] intensities
        f = float(back[0, -1, -1] / x[0, -1, -1])
        torch.testing.assert_close(back, x * f, atol=1e-5, rtol=0)
        factors.append(f)
    assert 0.5 <= min(factors) < 0.53 and 0.97 < max(factors) <= 1.0  # never brighter, never below 0.5
    torch.testing.assert_close(adjust_brightness(x, 0.5), x * 0.5)


def test_contrast_factor_from_0_7_to_1():
    torch.manual_seed(1)
    x = torch.randn(1, 16, 16)
    aug = _only("contrast")
    ratios = [float(aug(_item(x))["image"].std() / x.std()) for _ in range(300)]
    assert 0.7 <= min(ratios) < 0.72 and 0.98 < max(ratios) <= 1.0 + 1e-6  # contrast never raised
    torch.testing.assert_close(adjust_contrast(x, 1.0), x)


def test_resized_crop_zooms_in_and_leaves_no_fill():
    torch.manual_seed(2)
    img = torch.ones(1, 32, 32) * 3.0
    img[0, 12:20, 12:20] = 5.0  # a bright square in the middle
    aug = _only("resized_crop")
    for _ in range(50):
        y = aug(_item(img))["image"]
        assert y.min() >= 3.0 - 1e-4  # no pixel from outside the image (RandomAffine(scale=0.8) filled 0)
        assert (y > 4.0).float().sum() >= 64 - 8  # the square is kept or enlarged, never shrunk


def test_rotation_between_0_and_120_degrees():
    torch.manual_seed(3)
    img = torch.zeros(1, 33, 33)
    img[0, 16, 16:] = 1.0  # a ray from the centre to the right (angle 0)
    aug = _only("rotation")
    angles = []
    for _ in range(200):
        y = aug(_item(img))["image"][0]
        ys, xs = torch.nonzero(y > 0.3, as_tuple=True)
        far = torch.argmax((ys - 16.0) ** 2 + (xs - 16.0) ** 2)
        angles.append(float(torch.rad2deg(torch.atan2(-(ys[far] - 16.0), xs[far] - 16.0))) % 360)
    assert min(angles) >= 0.0 and max(angles) <= 122.0  # counter-clockwise, 0-120 (pixel rounding)
    assert max(angles) > 100 and min(angles) < 20


def test_a_random_subset_is_applied():
    torch.manual_seed(4)
    aug = MagsdAugment()
    x = torch.randn(1, 16, 16)
    counts = []
    seen = set()
    for _ in range(400):
        aug(_item(x))
        counts.append(len(aug.last_applied))
        seen.update(aug.last_applied)
        assert aug.last_applied == [o for o in MagsdAugment.OPS if o in aug.last_applied]  # table order
    assert set(counts) == set(range(7))  # 0 to all 6, not always all
    assert seen == set(MagsdAugment.OPS)
