"""Attention masks against real infection masks (COVID-19 CT segmentation slices, Ma et al.)."""

from __future__ import annotations

import csv

import pytest
import torch
from torch.utils.data import DataLoader

from chestdx.config import load_recipe
from chestdx.data.datasets import SliceDataset
from chestdx.data.layouts import Sample
from chestdx.explain.attention_masks import localisation_iou
from chestdx.models import build_model


@pytest.mark.realdata
def test_localisation_iou_on_real_infection_masks(real_data, tmp_path):
    root = real_data / "covid19_ct_seg_slices"
    if not (root / "index.csv").is_file():
        pytest.skip("covid19_ct_seg_slices/index.csv absent")
    rows = list(csv.DictReader(open(root / "index.csv")))[:: 80][:8]
    samples = [Sample(str(root / r["image"]), 2, r["volume_group"], "seg", str(root / r["infection_mask"]))
               for r in rows]
    recipe = load_recipe("att2", ["data.image_size=64", "model.backbone=resnet18", "model.weights=none"])
    torch.manual_seed(0)
    model = build_model(recipe.model, 3)
    ds = SliceDataset(samples, recipe.data, train=False, cache=False)
    res = localisation_iou(model, DataLoader(ds, batch_size=4), overlays_dir=tmp_path)
    assert res["n_images"] == sum(1 for _ in samples)  # every listed slice is lesion-positive
    assert 0.0 <= res["iou_mean"] <= 1.0 and len(list(tmp_path.glob("*.png"))) == res["n_images"]
