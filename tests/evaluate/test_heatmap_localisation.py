"""`chestdx evaluate` scores heatmaps against the phantom's lesion masks, next to the reference maps."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY


@pytest.fixture(scope="module")
def tiny_run(phantom_slices, tmp_path_factory):
    from chestdx.config import load_recipe
    from chestdx.engine.train import train

    out = tmp_path_factory.mktemp("hloc") / "run"
    train(load_recipe("demo", TINY), [phantom_slices], out, progress=False)
    return out


def test_evaluate_scores_heatmaps(tiny_run, tmp_path):
    from chestdx.errors import ConfigError
    from chestdx.evaluate.run import evaluate_run

    res = evaluate_run(tiny_run, out=tmp_path / "ev", n_boot=50, heatmaps="cam,gradcam16")
    loc = res["heatmap_localisation"]
    assert loc["n_images"] > 0 and loc["n_patients"] > 0
    assert loc["default_kind"] == "intgrad"
    assert set(loc["maps"]) == {"intgrad", "cam", "gradcam16"}
    assert set(loc["references"]) == {"centre_prior", "body"}
    for figs in [*loc["maps"].values(), *loc["references"].values()]:
        for score in ("pointing", "energy", "iou", "dice"):
            f = figs[score]
            assert 0.0 <= f["ci_low"] <= f["value"] <= f["ci_high"] <= 1.0
    saved = json.loads((tmp_path / "ev" / "localisation.json").read_text())
    assert len(saved["heatmaps"]["per_image"]) == loc["n_images"]
    assert "heatmap localisation" in (tmp_path / "ev" / "metrics.md").read_text()
    with pytest.raises(ConfigError, match="unknown heatmap"):
        evaluate_run(tiny_run, out=tmp_path / "ev2", n_boot=10, heatmaps="gradcamm")
