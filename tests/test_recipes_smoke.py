"""Every shipped recipe builds, takes one training step and answers one inference call (issue 14).

One case per name in :func:`chestdx.config.recipe_names`, so a new recipe is picked up without
editing this file. Each recipe is shrunk to seconds (1 epoch of 1 batch, small images / depth /
sequence, ResNet-18 for the ResNet-50 / ResNeSt-50 backbones, no ImageNet weights, small heads) but
keeps what makes it that recipe: its task, classes, model name and model parameters (apart from
size-only ones), objectives, mixing and inference procedure (:func:`test_tiny_keeps_what_makes_the_recipe`
checks that). The run is trained through :func:`chestdx.engine.train.train` on phantom data of its
kind (made once per session by ``chestdx synth``) and answered by ``chestdx predict`` on test files
of the run. Checked per recipe: a checkpoint after exactly one optimiser step, a finite training
loss with every objective's logged name in ``history.json``, and an answer with one finite
probability per class of the recipe, summing to 1, whose argmax is the label; plus what the
recipe's inference procedure and task add (CAM-voting details, per-slice answers of a sequence,
lesion detections).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

# the public entry points this file uses (one place to update when they move)
from chestdx.cli import main as chestdx_cli
from chestdx.config import Recipe, load_recipe, recipe_names
from chestdx.engine.train import train
from chestdx.tasks import get_task

SLOW_BACKBONES = {"resnet50": "resnet18", "resnest50d": "resnet18"}
"""Backbones replaced for speed; any other (resnet18, efficientnet_lite0: the recipe's point) is kept."""

SIZE = {"slice": 64, "cxr": 32, "sequence": 32, "volume": 32, "lesion": 64}
"""Image side per data kind (slice: 64 so the CAM-voting grid of 8 px cells has 64 cells for k = 31)."""

BATCH = {"slice": 8, "cxr": 8, "sequence": 4, "volume": 4, "lesion": 2}

VOLUME_DEPTH, SEQUENCE_LENGTH = 16, 8

SIZE_ONLY_PARAMS = {
    # model name -> its params that only scale the network (changed here; the rest are the recipe's)
    "magsd": {"num_maps": 4},
    "affinity": {"roi_batch": 4, "fpn_channels": 32, "mask_channels": 32, "box_hidden": 64,
                 "rpn_pre_nms_top_n": [100, 50], "rpn_post_nms_top_n": [50, 30], "rpn_batch_size_per_image": 32,
                 "box_batch_size_per_image": 32},
}
"""As tests/engine/test_magsd_train.py and test_lesion_train.py shrink them; kept: MAG-SD's scales and
pooling, the affinity rows' C' and sieve stages, the inflated 3D net's time kernel and depth stride,
ATT2's compatibility and tail blocks."""


def data_kind(recipe: Recipe) -> str:
    """Which phantom a recipe trains on: the task (or the shipped task it derives from), or ``cxr`` for
    chest X-ray recipes."""
    if recipe.task == "cxr" or getattr(recipe.data, "modality", None) == "cxr":
        return "cxr"
    for cls in type(get_task(recipe)).__mro__:  # a task made from a shipped one trains on that one's phantom
        if getattr(cls, "name", None) in SIZE:
            return str(cls.name)
    return recipe.task


def tiny_overrides(recipe: Recipe, encoder: Path | None = None, cache: Path | None = None) -> dict[str, Any]:
    """Overrides that make ``recipe`` take one training step in seconds and keep its point."""
    kind = data_kind(recipe)
    m = recipe.model
    model: dict[str, Any] = {"weights": "none", "backbone": SLOW_BACKBONES.get(m.backbone, m.backbone)}
    if m.head_hidden > 0:  # 0 (magsd_resnet50: GAP + one linear layer) is the recipe's point
        model["head_hidden"] = 8 if kind == "sequence" else 16
    params = {k: v for k, v in SIZE_ONLY_PARAMS.get(m.name, {}).items()}
    if m.name == "att2_bilstm":
        params["encoder"] = str(encoder)
    if params:
        model["params"] = params
    over: dict[str, Any] = {
        "data": {"image_size": SIZE[kind], "batch_size": BATCH[kind], "num_workers": 0},
        "model": model,
        "trainer": {"epochs": 1, "limit_train_batches": 1, "accelerator": "cpu", "devices": 1, "speed": "fp32",
                    "early_stopping": None},
        "inference": {"speed": "fp32"},
    }
    if kind == "volume":
        over["data"] |= {"volume_depth": VOLUME_DEPTH, "cache_dir": str(cache)}
    if kind == "sequence":
        over["data"]["sequence_length"] = SEQUENCE_LENGTH
    if recipe.mixing is not None and "depth" in recipe.mixing.params:  # cmc_views: a depth crop inside the volume
        over["mixing"] = {"params": {"depth": min(int(recipe.mixing.params["depth"]), VOLUME_DEPTH // 2)}}
    return over


def tiny_recipe(name: str, encoder: Path | None = None, cache: Path | None = None) -> tuple[Recipe, Recipe]:
    """The shipped recipe and its tiny version."""
    full = load_recipe(name)
    return full, load_recipe(name, tiny_overrides(full, encoder, cache))


# --------------------------------------------------------------------------------------------------
# phantom data, one per kind and class count, made once per session with `chestdx synth`
# --------------------------------------------------------------------------------------------------

_SYNTH = {
    "slice": ["--kind", "slice", "--sites", "2", "--patients", "4", "--slices-per-patient", "2", "--size", "64"],
    "lesion": ["--kind", "slice", "--sites", "2", "--patients", "4", "--slices-per-patient", "2", "--size", "64"],
    "cxr": ["--kind", "cxr", "--patients", "6", "--size", "32"],
    "sequence": ["--kind", "sequence", "--patients", "4", "--slices-per-patient", str(SEQUENCE_LENGTH), "--size", "32"],
    "volume": ["--kind", "volume", "--patients", "5", "--slices-per-patient", str(VOLUME_DEPTH), "--size", "32"],
}


@pytest.fixture(scope="session")
def phantom(tmp_path_factory):
    """``phantom(kind, num_classes) -> manifest.csv``; each made once per session."""
    made: dict[tuple[str, int], Path] = {}

    def get(kind: str, num_classes: int) -> Path:
        source = "slice" if kind == "lesion" else kind  # lesion masks come with every slice phantom
        key = (source, num_classes)
        if key not in made:
            out = tmp_path_factory.mktemp(f"phantom-{source}{num_classes}")
            assert chestdx_cli(["synth", "--out", str(out), *_SYNTH[source], "--classes", str(num_classes),
                                "--seed", "0"]) == 0
            made[key] = out / "manifest.csv"
        return made[key]

    return get


@pytest.fixture(scope="session")
def att2_encoder(phantom, tmp_path_factory) -> Path:
    """A tiny trained ``att2`` run on the sequence phantom: the frozen encoder of ``att2_bilstm``."""
    _, recipe = tiny_recipe("att2")
    out = tmp_path_factory.mktemp("encoder") / "att2"
    train(recipe, [phantom("sequence", recipe.data.num_classes)], out, progress=False)
    return out


# --------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------


def _objective_log_names(recipe: Recipe) -> list[str]:
    """The ``history.json`` keys that must carry each objective's value (engine/task.py logs every
    term of a sum of several, and the parts of an uncertainty-weighted one)."""
    if data_kind(recipe) == "lesion":  # Algorithm 1: the segmentation and the classification problem
        return ["train_seg_loss", "train_cls_loss"]
    names = [o.name for o in recipe.objectives]
    keys = [f"train_{n}" for n in names] if len(set(names)) > 1 else []
    for o in recipe.objectives:
        if o.name == "uncertainty":
            groups = o.params["groups"]
            keys += [f"train_uncertainty_{t['name']}" for g in groups for t in g]
            keys += [f"train_uncertainty_sigma{i + 1}" for i in range(len(groups))]
    return keys


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _test_rows(run: Path) -> list[dict[str, str]]:
    rows = _read_csv(run / "samples.csv")
    test = [r for r in rows if r["split"] == "test"]
    assert test, f"{run}/samples.csv has no test split"
    return test


def _inputs(recipe: Recipe, run: Path, manifest: Path, tmp: Path) -> tuple[list[str], list[str]]:
    """Inputs of `chestdx predict` and its extra flags: two test images, a test volume, or one test
    scan's slices in a folder of their own."""
    test = _test_rows(run)
    if data_kind(recipe) == "sequence":
        rows = _read_csv(manifest)
        first = Path(test[0]["path"]).name
        scan_id = next(r["scan_id"] for r in rows if Path(r["path"]).name == first)
        folder = tmp / "scan" / scan_id
        folder.mkdir(parents=True)
        for r in rows:
            if r["scan_id"] == scan_id:
                shutil.copy2(manifest.parent / r["path"], folder / Path(r["path"]).name)
        return [str(folder)], ["--scan-folders"]
    n = 1 if data_kind(recipe) == "volume" else 2
    return [r["path"] for r in test[:n]], []


def _check_answer(rec: dict[str, Any], recipe: Recipe) -> None:
    classes = list(recipe.data.class_names)
    probs = rec["probs"]
    assert list(probs) == classes, (list(probs), classes)
    values = [probs[c] for c in classes]
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values), probs
    assert sum(values) == pytest.approx(1.0, abs=1e-5)
    assert rec["label"] == classes[max(range(len(values)), key=values.__getitem__)]


@pytest.mark.parametrize("name", recipe_names())
def test_tiny_keeps_what_makes_the_recipe(name, tmp_path):
    """The shrinking changes sizes only: the parts that tell recipes apart are the shipped ones."""
    full, tiny = tiny_recipe(name, encoder=tmp_path / "encoder", cache=tmp_path / "cache")
    assert (tiny.name, tiny.task, tiny.data.class_names) == (full.name, full.task, full.data.class_names)
    assert tiny.model.name == full.model.name
    assert [(o.name, o.weight, o.params) for o in tiny.objectives] == [(o.name, o.weight, o.params) for o in full.objectives]
    assert (tiny.mixing is None) == (full.mixing is None)
    if full.mixing is not None:
        assert (tiny.mixing.name, tiny.mixing.prob) == (full.mixing.name, full.mixing.prob)
        kept = {k: v for k, v in full.mixing.params.items() if k != "depth"}
        assert {k: tiny.mixing.params[k] for k in kept} == kept
    assert (tiny.inference.name, tiny.inference.params) == (full.inference.name, full.inference.params)
    size_only = set(SIZE_ONLY_PARAMS.get(full.model.name, {})) | {"encoder"}
    assert {k: v for k, v in tiny.model.params.items() if k not in size_only} == \
        {k: v for k, v in full.model.params.items() if k not in size_only}
    assert tiny.data.augment == full.data.augment and tiny.data.normalize == full.data.normalize
    assert (tiny.data.clahe, tiny.data.hu_window, tiny.data.box_crop) == (full.data.clahe, full.data.hu_window,
                                                                          full.data.box_crop)
    assert tiny.optim == full.optim
    assert tiny.model.backbone == SLOW_BACKBONES.get(full.model.backbone, full.model.backbone)
    assert (tiny.trainer.epochs, tiny.trainer.limit_train_batches) == (1, 1)


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_trains_one_step_and_answers(name, phantom, att2_encoder, tmp_path):
    full = load_recipe(name)
    encoder = att2_encoder if full.model.name == "att2_bilstm" else None
    _, recipe = tiny_recipe(name, encoder=encoder, cache=tmp_path / "cache")
    manifest = phantom(data_kind(recipe), recipe.data.num_classes)
    run = tmp_path / "run"
    train(recipe, [manifest], run, progress=False)

    # one training step, saved
    ckpt = run / "checkpoints" / "best.ckpt"
    assert ckpt.is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and state["global_step"] >= 1
    assert state["global_step"] == (2 if data_kind(recipe) == "lesion" else 1)  # lesion: one step per problem
    hist = json.loads((run / "history.json").read_text(encoding="utf-8"))
    assert len(hist) == 1 and math.isfinite(hist[0]["train_loss"]) and math.isfinite(hist[0]["val_loss"])
    for key in _objective_log_names(recipe):
        assert key in hist[0] and math.isfinite(hist[0][key]), (key, sorted(hist[0]))
    stored = load_recipe(run / "recipe.yaml")
    if recipe.data.normalize == "global":  # the training split's mean / std, filled in when training starts
        assert stored.data.normalize_stats is not None and recipe.data.normalize_stats is None
        stored = stored.model_copy(update={"data": stored.data.model_copy(update={"normalize_stats": None})})
    assert stored == recipe  # the run folder keeps the recipe it was trained with

    # one inference call through `chestdx predict`, with the recipe's own procedure
    inputs, flags = _inputs(recipe, run, manifest, tmp_path)
    out = tmp_path / "predict.jsonl"
    assert chestdx_cli(["predict", str(run), *inputs, *flags, "--out", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == len(inputs)
    for rec in records:
        _check_answer(rec, recipe)
        if recipe.inference.name == "cam_voting":  # the vote: k masked copies, and whether the label flipped
            assert isinstance(rec["flipped"], bool) and len(rec["vote_probs"]) == recipe.inference.params["k"]
        if data_kind(recipe) == "sequence":  # one answer per scan from the Bi-LSTM, one attention weight per slice
            assert rec["aggregation"] == "sequence" and len(rec["slice_probs"]) == SEQUENCE_LENGTH
        if data_kind(recipe) == "volume":
            assert rec["aggregation"] == "volume"
        if data_kind(recipe) == "lesion":
            assert isinstance(rec["lesions"], list)


def test_every_recipe_kind_has_a_phantom():
    """A recipe of a new task would fail above with a KeyError; this names the gap directly."""
    kinds = {data_kind(load_recipe(n)) for n in recipe_names()}
    assert kinds <= set(_SYNTH) and kinds <= set(SIZE), kinds - set(_SYNTH)

