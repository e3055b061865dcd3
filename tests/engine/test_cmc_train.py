"""CMC-COV19D end to end on phantom volumes: train (two views, SupCon + CE + mixup, uncertainty
weights), evaluate with intervals, intra- and inter-model ensembles, 3D Grad-CAM, the predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from chestdx.config import load_recipe

TINY_3D = ["model.backbone=resnet18", "model.weights=none", "model.params.time_kernel=1",
           "data.image_size=32", "data.volume_depth=16", "data.batch_size=4", "mixing.params.depth=8",
           "trainer.epochs=2", "trainer.accelerator=cpu", "optim.scheduler=none"]


@pytest.fixture(scope="module")
def cmc_run(tmp_path_factory):
    from chestdx.data.phantom_volumes import synthesize_volumes
    from chestdx.engine.train import train

    root = tmp_path_factory.mktemp("cmc")
    manifest = synthesize_volumes(root / "data", n_patients_per_class=6, num_classes=2, shape=(16, 32, 32), seed=1)
    recipe = load_recipe("cmc_model4", [*TINY_3D, f"data.cache_dir={root / 'cache'}"])
    run = train(recipe, [manifest], root / "run", progress=False)
    return run, manifest


def test_training_moves_and_learns_the_weights(cmc_run):
    run, _ = cmc_run
    hist = json.loads((run.path / "history.json").read_text())
    assert len(hist) == 2 and all(np.isfinite(h["train_loss"]) for h in hist)
    for part in ("supcon", "ce", "mixup_ce", "sigma1", "sigma2"):  # Eq. 7's parts are logged per epoch
        assert np.isfinite(hist[-1][f"train_uncertainty_{part}"])
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]  # seeded: 0.787 -> 0.629 when written
    task = run.load_task("last")
    log_sigma = task.objectives[0].log_sigma.detach()
    assert log_sigma.shape == (2,) and bool((log_sigma.abs() > 1e-4).all())  # Eq. 7 weights were learned
    # the projection head of the contrastive term is trained and saved with the model
    assert any("terms.0.0.head" in k for k in task.state_dict())


def test_evaluate_and_ensembles(cmc_run, tmp_path):
    from chestdx.engine.ensemble import ensemble_runs
    from chestdx.evaluate.run import evaluate_run

    run, _ = cmc_run
    res = evaluate_run(run, split="val", out=tmp_path / "eval", n_boot=50)
    for m in ("accuracy", "macro_f1"):
        v = res["overall"][m]
        assert 0 <= v["value"] <= 1 and "low" in v and "high" in v
    from chestdx.cli import main

    assert main(["ensemble", str(run.path), str(run.path), "--split", "val", "--out", str(tmp_path / "ens"),
                 "--procedure", "intra_ensemble", "--params", '{"views": 3, "depth": 8}', "--n-boot", "50",
                 "--no-progress"]) == 0
    ens = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    with pytest.raises(Exception, match="at least one run"):
        ensemble_runs([], split="val")
    assert list(ens["members"]) == [str(run.path)]  # members are keyed by run folder
    assert (tmp_path / "ens" / "metrics.md").is_file() and (tmp_path / "ens" / "predictions.csv").is_file()
    # an ensemble of a run with itself answers as that run
    member = ens["members"][str(run.path)]
    assert ens["overall"]["accuracy"]["value"] == pytest.approx(member["accuracy"])


def test_intra_ensemble_views_and_3d_gradcam(cmc_run):
    from chestdx.engine.infer import run_procedure
    from chestdx.explain.cam import volume_cam

    run, _ = cmc_run
    model = run.load_model("last")
    x = torch.rand(2, 1, 16, 32, 32)
    a = run_procedure("intra_ensemble", {"views": 3, "depth": 8, "seed": 4}, model, x)
    b = run_procedure("intra_ensemble", {"views": 3, "depth": 8, "seed": 4}, model, x)
    torch.testing.assert_close(a.probs, b.probs)
    torch.testing.assert_close(a.probs.sum(1), torch.ones(2))
    maps = volume_cam(model, x)
    assert maps.shape == (2, 16, 32, 32) and float(maps.min()) >= 0 and float(maps.max()) <= 1


def test_predictor_answers_a_volume_with_slice_heatmaps(cmc_run):
    from chestdx.serve.predictor import Predictor, ScanPrediction

    run, manifest = cmc_run
    nii = next((manifest.parent / "volumes").glob("*.nii.gz"))
    pred = Predictor(run.path).predict(nii)
    assert isinstance(pred, ScanPrediction) and pred.aggregation == "volume"
    assert len(pred.slices) == 16 and pred.heatmaps.shape == (16, 32, 32)
    assert pytest.approx(sum(pred.probs.values())) == 1.0
    assert pred.slices[0].probs == pred.probs and pred.slices[3].details["heatmap_kind"] == "gradcam3d"
    assert json.dumps(pred.to_json())
