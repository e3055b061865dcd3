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


@pytest.fixture(scope="module")
def learnt_run(tmp_path_factory):
    """The demo recipe (ResNet-18, 64 px, from scratch) trained 12 epochs on a small 3-class phantom
    (40 patients per class, 2 slices each, one site): a model that uses the lesions (best val_acc
    about 0.54; chance 0.33), and the positive slices of every split with their masks."""
    from chestdx.config import load_recipe
    from chestdx.engine.train import train
    from chestdx.phantom import synthesize_slices

    root = tmp_path_factory.mktemp("learnt")
    data = synthesize_slices(root / "phantom", n_patients_per_class=40, slices_per_patient=2, num_classes=3,
                             sites=1, size=64, seed=0)
    return train(load_recipe("demo", ["trainer.epochs=12"]), [data], root / "run", progress=False)


def _score(run, maps_of=None):
    import dataclasses

    from torch.utils.data import DataLoader

    from chestdx.evaluate.localisation import score_heatmaps
    from chestdx.tasks import get_task

    samples = [dataclasses.replace(s, split="test") for s in run.samples() if s.label > 0]
    ds = get_task(run.recipe).eval_dataset(run.recipe, samples, None)
    return score_heatmaps(run.load_model("best"), DataLoader(ds, batch_size=32), samples, ["auto"], n_boot=0)


@pytest.mark.slow  # about 60 s on 2 idle cores (3 min shared)
def test_the_demo_map_points_at_the_lesion_more_than_the_centre_prior(learnt_run, monkeypatch):
    """Issue 16: the demo recipe's default map, scored on the 160 lesion slices of a trained phantom
    model, points at the lesion far more often than the centre prior and holds more of its mass there
    than either reference (measured: intgrad pointing 0.34, energy 0.10; centre prior 0.06, 0.05; whole
    body 0.04, 0.07). The same maps moved by half the image (to where the lesions are not) fail the
    same margins, and so would the centre prior drawn as the map."""
    import torch

    import chestdx.explain.heatmap as H

    loc = _score(learnt_run)
    assert loc["default_kind"] == "intgrad" and loc["n_images"] == 160
    got, prior, body = loc["maps"]["intgrad"], loc["references"]["centre_prior"], loc["references"]["body"]

    def beats(m: dict) -> bool:
        return (m["pointing"]["value"] >= prior["pointing"]["value"] + 0.15
                and m["energy"]["value"] > max(prior["energy"]["value"], body["energy"]["value"]) + 0.01)

    assert beats(got), (got, prior, body)
    real = H.heatmap

    def shifted(model, images, kind="auto", out=None, target=None):
        maps, used = real(model, images, kind, out=out, target=target)
        if kind != "auto":  # heatmap's own call for the default kind: moved once, by the outer call
            return maps, used
        return torch.roll(maps, shifts=(images.shape[-2] // 2, images.shape[-1] // 2), dims=(-2, -1)), used

    monkeypatch.setattr(H, "heatmap", shifted)
    moved = _score(learnt_run)["maps"]["intgrad"]
    assert not beats(moved), moved
