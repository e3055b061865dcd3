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
    from chestdx.engine.train import train
    from chestdx.phantom.volumes import synthesize_volumes

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


def _probs_by_path(folder):
    import csv

    rows = list(csv.DictReader(open(folder / "predictions.csv")))
    cols = [c for c in rows[0] if c.startswith("p_")]
    return {r["path"]: np.array([float(r[c]) for c in cols]) for r in rows}, rows


def _other_run(run, folder):
    """A copy of ``run`` whose classifier answers differently (its weights perturbed): a second member."""
    import shutil

    shutil.copytree(run.path, folder)
    for name in ("best.ckpt", "last.ckpt"):
        f = folder / "checkpoints" / name
        if f.is_file():
            ckpt = torch.load(f, map_location="cpu", weights_only=True)
            g = torch.Generator().manual_seed(7)
            for k, v in ckpt["state_dict"].items():
                if v.is_floating_point() and k.startswith("model.") and ("head" in k or "classifier" in k or "fc" in k):
                    ckpt["state_dict"][k] = v + torch.randn(v.shape, generator=g) * (v.std() + 0.5)
            torch.save(ckpt, f)
    from chestdx.engine.run import Run

    return Run(folder)


def test_evaluate_and_ensembles(cmc_run, tmp_path):
    from chestdx.engine.ensemble import ensemble_runs
    from chestdx.errors import ConfigError
    from chestdx.evaluate.run import evaluate_run

    run, _ = cmc_run
    res = evaluate_run(run, split="val", out=tmp_path / "eval", n_boot=50)
    _, rows = _probs_by_path(tmp_path / "eval")
    assert res["overall"]["accuracy"]["value"] == pytest.approx(sum(r["label"] == r["pred"] for r in rows) / len(rows))
    tp = sum(r["label"] == r["pred"] == "covid" for r in rows)
    pos_f1 = 2 * tp / (sum(r["label"] == "covid" for r in rows) + sum(r["pred"] == "covid" for r in rows))
    assert res["overall"]["positive"]["f1"]["value"] == pytest.approx(pos_f1)
    for m in ("accuracy", "macro_f1"):
        v = res["overall"][m]
        assert v["low"] <= v["value"] <= v["high"]
    from chestdx.cli import main

    # Model5-style ensemble of two different runs: the mean of the members' own answers, scan by scan
    other = _other_run(run, tmp_path / "other")
    params = {"views": 3, "depth": 8}
    for r, out in ((run, "m1"), (other, "m2")):
        evaluate_run(r, split="val", out=tmp_path / out, n_boot=0, procedure="intra_ensemble", procedure_params=params)
    p1, _ = _probs_by_path(tmp_path / "m1")
    p2, _ = _probs_by_path(tmp_path / "m2")
    assert any(not np.allclose(p1[k], p2[k], atol=1e-3) for k in p1)  # two members that disagree
    assert main(["ensemble", str(run.path), str(other.path), "--split", "val", "--out", str(tmp_path / "ens"),
                 "--procedure", "intra_ensemble", "--params", json.dumps(params), "--n-boot", "50",
                 "--no-progress"]) == 0
    ens = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    pe, erows = _probs_by_path(tmp_path / "ens")
    assert set(pe) == set(p1)
    for k in pe:
        np.testing.assert_allclose(pe[k], (p1[k] + p2[k]) / 2, atol=2e-6)  # 6-decimal files
    assert list(ens["members"]) == [str(run.path), str(other.path)]  # members are keyed by run folder
    for path, folder in ((run.path, "m1"), (other.path, "m2")):
        member_rows = _probs_by_path(tmp_path / folder)[1]
        acc = sum(r["label"] == r["pred"] for r in member_rows) / len(member_rows)
        assert ens["members"][str(path)]["accuracy"] == pytest.approx(acc)
    assert ens["overall"]["accuracy"]["value"] == pytest.approx(
        sum(r["label"] == r["pred"] for r in erows) / len(erows))
    assert (tmp_path / "ens" / "metrics.md").is_file()
    with pytest.raises(Exception, match="at least one run"):
        ensemble_runs([], split="val")
    with pytest.raises(ConfigError, match="given twice"):  # it used to count twice and show once
        ensemble_runs([run.path, run.path], split="val")


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
    # the value: the mean softmax of the three views drawn from the seed
    from chestdx.data.volume_augment import cmc_augment

    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        views = [model(cmc_augment(x, 8, (0.8, 1.0), 0.1, 0.1, generator=gen)).probs for _ in range(3)]
    torch.testing.assert_close(a.probs, torch.stack(views).mean(0))
    # one view without augmentation is the plain answer
    one = run_procedure("intra_ensemble", {"views": 1, "depth": None, "crop_scale": [1.0, 1.0], "brightness": 0.0,
                                           "contrast": 0.0}, model, x)
    with torch.no_grad():
        torch.testing.assert_close(one.probs, model(x).probs)
    maps = volume_cam(model, x)
    assert maps.shape == (2, 16, 32, 32) and float(maps.min()) >= 0 and float(maps.max()) <= 1


def test_predictor_answers_a_volume_with_slice_heatmaps(cmc_run):
    from chestdx.predict.predictor import Predictor, ScanPrediction

    run, manifest = cmc_run
    nii = next((manifest.parent / "volumes").glob("*.nii.gz"))
    pred = Predictor(run.path).predict(nii)
    assert isinstance(pred, ScanPrediction) and pred.aggregation == "volume"
    assert len(pred.slices) == 16 and pred.heatmaps.shape == (16, 32, 32)
    assert pytest.approx(sum(pred.probs.values())) == 1.0
    assert pred.slices[0].probs == pred.probs and pred.slices[3].details["heatmap_kind"] == "gradcam3d"
    assert json.dumps(pred.to_json())


def test_model5_members_draw_their_own_views(cmc_run, tmp_path):
    """Issue 17: with ``--procedure intra_ensemble`` each member of a Model5 ensemble draws its views
    with its own training view parameters (depth crop included) unless ``--params`` says otherwise;
    before, every member got the procedure's defaults (all slices: no depth crop)."""
    from chestdx.engine.ensemble import ensemble_runs
    from chestdx.engine.infer import procedure_params, training_views
    from chestdx.engine.run import Run
    from chestdx.evaluate.run import evaluate_run

    run, _ = cmc_run
    other = _other_run(run, tmp_path / "other")  # a second member, trained (here: said to be) with other views
    changed = load_recipe(other.path / "recipe.yaml", ["mixing.params.depth=4", "mixing.params.brightness=0.0",
                                                      "mixing.params.contrast=0.3"])
    (other.path / "recipe.yaml").write_text(changed.to_yaml())
    other = Run(other.path)
    own = {str(run.path): {"depth": 8, "crop_scale": (0.8, 1.0), "brightness": 0.1, "contrast": 0.1},
           str(other.path): {"depth": 4, "crop_scale": (0.8, 1.0), "brightness": 0.0, "contrast": 0.3}}
    for r in (run, other):
        got = training_views(r.recipe)
        assert {k: tuple(v) if isinstance(v, list) else v for k, v in got.items()} == own[str(r.path)]
    assert training_views(load_recipe("baseline")) == {}  # no cmc_views mixer: the procedure's defaults
    assert procedure_params(run.recipe, "intra_ensemble", {"depth": 6})["depth"] == 6  # an override wins
    assert procedure_params(run.recipe, "intra_ensemble", {"depth": 6})["brightness"] == 0.1

    # the expected answer: each member's mean over 3 views drawn with its own parameters, given in full
    expect = {}
    for r, folder in ((run, "m1"), (other, "m2")):
        evaluate_run(r, split="val", out=tmp_path / folder, n_boot=0, procedure="intra_ensemble",
                     procedure_params={"views": 3, **own[str(r.path)]})
        expect[folder] = _probs_by_path(tmp_path / folder)[0]
    res = ensemble_runs([run.path, other.path], split="val", out=tmp_path / "ens", procedure="intra_ensemble",
                        procedure_params=None, n_boot=0)
    got, _ = _probs_by_path(tmp_path / "ens")
    for k in got:
        np.testing.assert_allclose(got[k], (expect["m1"][k] + expect["m2"][k]) / 2, atol=2e-6)
    assert res["members"][str(other.path)]["params"]["depth"] == 4
    # what ignoring the members' own parameters gives (every member: all slices, +-0.1): another answer
    ensemble_runs([run.path, other.path], split="val", out=tmp_path / "ens0", procedure="intra_ensemble",
                  procedure_params={"depth": None, "crop_scale": (0.8, 1.0), "brightness": 0.1, "contrast": 0.1},
                  n_boot=0)
    ignored, _ = _probs_by_path(tmp_path / "ens0")
    assert max(float(np.abs(ignored[k] - got[k]).max()) for k in got) > 1e-3
    # --params overrides a key for every member; the others stay each member's own
    res = ensemble_runs([run.path, other.path], split="val", out=tmp_path / "ens6", procedure="intra_ensemble",
                        procedure_params={"depth": 6}, n_boot=0)
    assert [m["params"]["depth"] for m in res["members"].values()] == [6, 6]
    assert [m["params"]["brightness"] for m in res["members"].values()] == [0.1, 0.0]
