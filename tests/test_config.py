"""Recipes load, validate, merge overrides and fail with clear messages."""

from __future__ import annotations

import pytest

from chestdx.config import load_recipe, parse_overrides, recipe_names
from chestdx.errors import ConfigError


def test_every_shipped_recipe_validates():
    names = recipe_names()
    assert "baseline" in names and "demo" in names
    for name in names:
        r = load_recipe(name)
        assert r.name == name
        assert r.objectives, name


def test_base_chain_and_overrides():
    r = load_recipe("demo", ["optim.lr=0.5", "data.image_size=32", "trainer.epochs=3"])
    assert r.model.backbone == "resnet18"  # from demo
    assert r.model.head_hidden == 128
    assert r.objectives[0].name == "ce"  # inherited from baseline
    assert (r.optim.lr, r.data.image_size, r.trainer.epochs) == (0.5, 32, 3)


def test_parse_overrides_nested_and_typed():
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=none"]) == {"a": {"b": 1, "c": [1, 2]}, "d": "none"}
    with pytest.raises(ConfigError, match="key.subkey=value"):
        parse_overrides(["oops"])


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_recipe("baseline", ["optim.lrr=1"])


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"data\.image_size"):
        load_recipe("baseline", ["data.image_size=3"])


def test_unknown_recipe_suggests():
    with pytest.raises(ConfigError, match="Did you mean baseline"):
        load_recipe("baselin")


def test_recipe_file_and_round_trip(tmp_path):
    r = load_recipe("demo")
    p = tmp_path / "r.yaml"
    p.write_text(r.to_yaml())
    assert load_recipe(p) == r
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")


def test_baseline_recipe_names_its_own_choices():
    """Issue 17: baseline.yaml called its optimiser "SnapMix's own fine-tuning setting"; it is chestdx's
    choice (SnapMix: 1e-3 / 1e-2, MultiStepLR at 80/150/180), and so is its geometric augmentation."""
    from importlib import resources

    text = (resources.files("chestdx") / "recipes" / "baseline.yaml").read_text(encoding="utf-8")
    comment = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    assert "SnapMix's own fine-tuning setting." not in comment
    assert "NOT SnapMix's own fine-tuning setting" in comment and "80, 150 and 180" in comment
    assert "augmentation" in comment and "chestdx's choice" in comment
    r = load_recipe("baseline")
    assert (r.optim.name, r.optim.lr, r.optim.scheduler) == ("sgd", 1e-3, "cosine")  # what the comment says
    assert (r.data.augment.rotate, tuple(r.data.augment.scale), r.data.augment.translate) == (10, (0.9, 1.1), 0.05)
    assert "chestdx's choice" in r.description  # the one-line description says it too


def test_snapmix_finetune_is_snapmix_own_setting():
    """Issue 17: SnapMix's fine-tuning setting as a recipe: SGD, lr 1e-3 for the pretrained backbone and
    1e-2 for the new layers, x0.1 at epochs 80, 150 and 180 of 200; otherwise the snapmix row."""
    import torch

    from chestdx.engine.task import ChestTask

    r = load_recipe("snapmix_finetune")
    snap = load_recipe("snapmix")
    assert r.mixing == snap.mixing and r.objectives == snap.objectives and r.data == snap.data
    assert (r.model.backbone, r.model.weights, r.trainer.epochs) == ("resnet50", "imagenet", 200)
    small = load_recipe("snapmix_finetune", {"model": {"backbone": "resnet18", "weights": "none", "head_hidden": 16}})
    task = ChestTask(small)
    conf = task.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.SGD) and isinstance(sched, torch.optim.lr_scheduler.MultiStepLR)
    n_backbone = sum(p.numel() for g in opt.param_groups if g["name"] == "backbone" for p in g["params"])
    assert n_backbone == sum(p.numel() for p in task.model.backbone.parameters())
    n_new = sum(p.numel() for g in opt.param_groups if g["name"] == "new" for p in g["params"])
    assert n_new == sum(p.numel() for p in task.model.head.parameters()) > 0
    lrs = []  # the learning rate of each epoch, (backbone, new)
    for _ in range(200):
        lrs.append(tuple(g["lr"] for g in opt.param_groups))
        opt.step()
        sched.step()
    expect = {0: (1e-3, 1e-2), 79: (1e-3, 1e-2), 80: (1e-4, 1e-3), 149: (1e-4, 1e-3), 150: (1e-5, 1e-4),
              179: (1e-5, 1e-4), 180: (1e-6, 1e-5), 199: (1e-6, 1e-5)}
    for epoch, want in expect.items():
        assert lrs[epoch] == pytest.approx(want, rel=1e-9), epoch
