"""MAG-SD through the one training loop: a tiny run on phantom X-rays learns; predict writes attention
overlays; the real CXR subset trains for a step."""

from __future__ import annotations

import json

import pytest

from chestdx.cli import main
from chestdx.engine.run import Run

MAGSD_TINY = ["--backbone", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "8",
              "--set", "model.params.num_maps=4", "--set", "optim.name=adam", "--set", "optim.lr=1e-3",
              "--set", "data.augment.rotate=0", "--set", "data.augment.vflip=0"]


@pytest.fixture(scope="module")
def phantom_cxr(tmp_path_factory):
    from chestdx.phantom.cxr import synthesize_cxr

    return synthesize_cxr(tmp_path_factory.mktemp("cxr"), n_patients_per_class=6, size=32, seed=0)


def test_magsd_trains_and_localises(phantom_cxr, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "magsd", "--data", str(phantom_cxr), "--out", str(run), "--no-progress",
               "--epochs", "4", *MAGSD_TINY])
    assert rc == 0
    hist = json.loads((run / "history.json").read_text())
    assert len(hist) == 4
    # the loss moved: soft-distance training loss falls over 4 epochs
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    test_imgs = [s.path for s in Run(run).samples() if s.split == "test"][:2]
    capsys.readouterr()
    rc = main(["predict", str(run), *test_imgs, "--attention", str(tmp_path / "att")])
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert rc == 0 and len(lines) == 2
    for rec in lines:
        assert rec["attention_overlay"].endswith("_attention.png")
    assert len(list((tmp_path / "att").glob("*_attention.png"))) == 2


@pytest.mark.realdata
def test_magsd_on_the_real_cxr_subset(real_data, tmp_path):
    root = real_data / "cxr_covid_chestxray_subset"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    run = tmp_path / "real"
    rc = main(["train", "magsd", "--data", str(root), "--out", str(run), "--no-progress", "--epochs", "1",
               "--set", "trainer.limit_train_batches=2", *MAGSD_TINY])
    assert rc == 0
    data = json.loads((run / "data.json").read_text())
    assert data["class_names"] == ["normal", "pneumonia", "covid"]
    assert (run / "checkpoints" / "best.ckpt").is_file()
