"""The lesion mask the scorer reads lies on the image the model sees: same crop and resize (issue 16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from chestdx.config import load_recipe
from chestdx.data.transforms import LoadPreprocess, scale_box


def _write(tmp: Path, mask_scale: int) -> tuple[str, str]:
    img = np.zeros((100, 200), np.uint8)
    img[40:60, 110:130] = 255  # the lesion, in image pixels: x 110-130, y 40-60
    msk = np.zeros((100 // mask_scale, 200 // mask_scale), np.uint8)
    msk[40 // mask_scale:60 // mask_scale, 110 // mask_scale:130 // mask_scale] = 255
    Image.fromarray(img).save(tmp / "img.png")
    Image.fromarray(msk).save(tmp / f"mask{mask_scale}.png")
    return str(tmp / "img.png"), str(tmp / f"mask{mask_scale}.png")


def test_scale_box_by_hand():
    assert scale_box((50, 20, 150, 80), (100, 200), (50, 100)) == (25, 10, 75, 40)
    assert scale_box((50, 20, 150, 80), (100, 200), (100, 200)) == (50, 20, 150, 80)
    assert scale_box(None, (100, 200), (50, 100)) is None


def test_mask_at_another_resolution_is_cropped_with_the_image(tmp_path):
    """A box crop (x 50-150, y 20-80) of a 200 x 100 image whose mask is stored at half size: the
    lesion tensor covers exactly the bright pixels of the image tensor (it covered the wrong place
    when the image's box was applied to the mask's pixels)."""
    cfg = load_recipe("demo", {"data": {"image_size": 32, "normalize": "unit", "clahe": False}}).data
    for scale in (1, 2):
        path, mask = _write(tmp_path, scale)
        out = LoadPreprocess(cfg)({"path": path, "mask": mask, "box": (50, 20, 150, 80)})
        bright = out["image"][0].numpy() > 0.5
        lesion = out["lesion"][0].numpy() > 0.5
        iou = (bright & lesion).sum() / (bright | lesion).sum()
        assert iou > 0.8, (scale, iou)
