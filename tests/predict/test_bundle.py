"""Model bundles: contents, loading without the run, refusing incompatible bundles."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from chestdx.engine.run import Run
from chestdx.predict.bundle import BUNDLE_FORMAT, BundleError, export_bundle, load_bundle


def test_bundle_contents(bundle):
    assert {p.name for p in bundle.iterdir()} == {"model.safetensors", "bundle.json", "card.md"}
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["format"] == BUNDLE_FORMAT and info["task"] == "slice"
    assert info["class_names"] == ["normal", "pneumonia", "covid"]
    assert info["preprocessing"]["image_size"] == 32 and "augment" not in info["preprocessing"]
    assert info["training"]["data"]["counts"]["train"]["total"] > 0
    assert all("/" not in s for s in info["training"]["data"]["sources"])  # no local paths
    card = (bundle / "card.md").read_text()
    assert "Not a medical device" in card and "normal, pneumonia, covid" in card


def test_bundle_answers_like_the_run_without_it(tiny_run, tmp_path):
    copy_run = tmp_path / "run"
    shutil.copytree(tiny_run, copy_run)
    out = export_bundle(copy_run, tmp_path / "model")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        want = Run(copy_run).load_model()(x).probs
    shutil.rmtree(copy_run)  # neither the recipe file nor the data are needed any more
    b = load_bundle(out)
    with torch.no_grad():
        got = b.model(x).probs
    torch.testing.assert_close(got, want)
    assert b.recipe.model.weights == "none" and b.card()["warning"].startswith("Not a medical device")


def test_refuses_incompatible_or_broken_bundles(bundle, tmp_path):
    bad = tmp_path / "b"
    shutil.copytree(bundle, bad)
    info = json.loads((bad / "bundle.json").read_text())
    (bad / "bundle.json").write_text(json.dumps({**info, "format": 99}))
    with pytest.raises(BundleError, match=r"format 99 .*reads format 1"):
        load_bundle(bad)
    (bad / "bundle.json").write_text(json.dumps({**info, "chestdx_version": "9.1.0"}))
    with pytest.raises(BundleError, match=r"9\.1\.0, newer than the installed"):
        load_bundle(bad)
    (bad / "bundle.json").write_text(json.dumps(info))
    (bad / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="model.safetensors missing"):
        load_bundle(bad)
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


def test_export_refuses_to_overwrite(tiny_run, bundle):
    with pytest.raises(BundleError, match="already exists"):
        export_bundle(tiny_run, bundle)
    assert np.isfinite(json.loads((bundle / "bundle.json").read_text())["format"])


def test_card_describes_the_trained_model_and_an_evaluation_written_elsewhere(tiny_run, tmp_path):
    """Issue 18: the card names the network actually trained (not only the recipe's words) and carries
    the test metrics of an evaluation written with ``evaluate --out`` somewhere else (as the demo does)."""
    import shutil

    from chestdx.evaluate.run import evaluate_run
    from chestdx.predict.bundle import export_bundle

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "eval-test", ignore_errors=True)
    (run / "evaluations.json").unlink(missing_ok=True)
    res = evaluate_run(run, split="test", out=tmp_path / "elsewhere", n_boot=20)
    card = (export_bundle(run, tmp_path / "b") / "card.md").read_text()
    assert "Not evaluated before export" not in card
    assert f"accuracy {100 * res['overall']['accuracy']['value']:.1f}%" in card
    assert "As trained: resnet_mlp on resnet18, 32 px input" in card
