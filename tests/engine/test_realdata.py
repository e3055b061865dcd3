"""Real CT data (skipped where ../shared/data is absent): two sites load, split and train."""

from __future__ import annotations

import json

import pytest

from chestdx.config import load_recipe
from chestdx.engine.train import train
from chestdx.evaluate.run import evaluate_run
from chestdx.tasks import load_samples

pytestmark = pytest.mark.realdata

TWO_SITE = {"data": {"image_size": 32, "batch_size": 32}, "trainer": {"epochs": 1, "limit_train_batches": 3},
            "model": {"backbone": "resnet18", "weights": "none", "head_hidden": 16}}


def test_two_sites_split_and_train(real_data, tmp_path):
    site_a, site_b = real_data / "sars_cov2_ct_subset", real_data / "covid_ct_ucsd"
    recipe = load_recipe("baseline", TWO_SITE)
    with pytest.warns(UserWarning):  # site A publishes no patient ids
        samples = load_samples([site_a, site_b], recipe)
    by_site = {}
    for s in samples:
        by_site.setdefault(s.site, {}).setdefault(s.split, 0)
        by_site[s.site][s.split] += 1
    assert len(by_site) == 2
    b = next(v for k, v in by_site.items() if "covid_ct" in k)
    assert b == {"train": 425, "val": 118, "test": 203}  # the official COVID-CT split
    a = next(v for k, v in by_site.items() if "sars" in k)
    assert sum(a.values()) == 200 and set(a) == {"train", "val", "test"}

    run = train(recipe, [site_a, site_b], tmp_path / "run", samples=samples, progress=False)
    res = evaluate_run(run, split="test", n_boot=20)
    assert res["n_images"] == 203 + a["test"]
    assert set(res["sites"]) == set(by_site)
    assert json.loads((run.path / "data.json").read_text())["counts"]["test"]["total"] == res["n_images"]
