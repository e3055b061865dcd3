"""One-shot training of the affinity model (task: lesion) on tiny phantom slices."""

from __future__ import annotations

import json

import pytest
import torch

from chestdx.config import load_recipe

TINY_AFFINITY = [
    "data.image_size=64", "data.batch_size=4", "data.min_lesion_area=4", "trainer.epochs=2",
    "trainer.limit_train_batches=2", "model.backbone=resnet18", "model.head_hidden=32",
    "model.params={affinities: 16, roi_batch: 4, sieve_stages: 1, fpn_channels: 32, mask_channels: 32, "
    "box_hidden: 64, rpn_pre_nms_top_n: [100, 50], rpn_post_nms_top_n: [50, 30], "
    "rpn_batch_size_per_image: 32, box_batch_size_per_image: 32}",
    "optim.lr=1e-3", "optim.weight_decay=0",
]
"""Overrides that shrink the affinity recipes (ResNet-50 FPN, 512 px, 100 epochs) to seconds."""


def test_one_shot_training_on_phantom(phantom_slices, tmp_path):
    from chestdx.engine.run import Run
    from chestdx.engine.train import train

    recipe = load_recipe("affinity_64", TINY_AFFINITY)
    run = train(recipe, [phantom_slices], tmp_path / "run", progress=False,
                trainer_overrides={"limit_val_batches": 1})
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(hist) == 2
    for row in hist:
        for key in ("train_loss", "train_seg_loss", "train_cls_loss", "val_loss", "val_seg_loss", "val_cls_loss"):
            assert torch.isfinite(torch.tensor(row[key])), (key, row)
        assert row["val_loss"] == pytest.approx(row["val_seg_loss"] + row["val_cls_loss"], rel=1e-5)
    # the segmentation loss moves down from its random start within a few steps
    assert hist[1]["train_seg_loss"] < hist[0]["train_seg_loss"]
    assert hist[0]["train_copies"] >= 1  # L_SEG(1) < L_SEG(0) = inf always copies
    assert (tmp_path / "run" / "segmentation_samples.csv").is_file()
    model = Run(run.path).load_model()  # a lesion run loads back as a plain ChestTask
    assert int(model.copies) >= 1
    x = torch.randn(2, 1, 64, 64)
    out = model(x)
    assert out.logits.shape == (2, 3) and out.maps["affinity"].shape == (2, 16, 32)
    det = model.detect(x)
    assert len(det) == 2 and det[0]["masks"].shape[1:] == (1, 64, 64)

    from chestdx.evaluate.run import evaluate_run

    res = evaluate_run(run, n_boot=5)
    seg = res["segmentation"]
    assert seg["n_images"] > 0 and set(seg["paper"]) == set(seg["coco"]) == {"AP", "AP50", "AP75"}
    per_image = json.loads((tmp_path / "run" / "eval-test" / "segmentation.json").read_text())["per_image"]
    assert seg["n_images"] == len(per_image)
    for key in ("AP", "AP50", "AP75"):  # the paper's figure: the mean over images of each image's AP
        assert seg["paper"][key] == pytest.approx(sum(r[key] for r in per_image) / len(per_image))
    assert all(r[key] in (0.0, 1.0) for r in per_image if r["negative"] for key in ("AP", "AP50"))
    assert seg["paper"]["AP50"] >= seg["paper"]["AP75"] >= 0.0  # a looser IoU threshold never scores less
    # the 3-class figures recounted from predictions.csv (issue 17: values, not a key's presence)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "run" / "eval-test" / "predictions.csv")))
    lc, n = res["lesion_classification"], len(rows)
    assert lc["accuracy"] == pytest.approx(sum(r["label"] == r["pred"] for r in rows) / n)
    eq14 = 0.0
    for c in ("normal", "pneumonia", "covid"):
        pos = sum(r["label"] == c for r in rows)
        sens = sum(r["label"] == r["pred"] == c for r in rows) / pos if pos else 0.0
        spec = (sum(r["label"] != c and r["pred"] != c for r in rows) / (n - pos)) if n - pos else 0.0
        eq14 += 2 * pos / n * (sens * spec / (sens + spec) if sens + spec else 0.0)
        assert lc["per_class"][c]["sensitivity"] == pytest.approx(sens)
    assert lc["eq14_f1"] == pytest.approx(eq14)
    md = (tmp_path / "run" / "eval-test" / "metrics.md").read_text()
    assert "not** the usual F1" in md and "AP@0.75" in md
    assert list((tmp_path / "run" / "eval-test" / "lesions").glob("*.png"))

    # chestdx predict: class answer + lesions in the JSON line, mask PNG and boxes overlay
    from chestdx.cli import main

    image = next(s.path for s in run.samples() if s.split == "test")
    stem = image.rsplit("/", 1)[-1].split(".")[0]
    rc = main(["predict", str(run.path), image, "--overlays", str(tmp_path / "ov"), "--out", str(tmp_path / "p.jsonl")])
    assert rc == 0
    rec = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert set(rec["probs"]) == {"normal", "pneumonia", "covid"} and isinstance(rec["lesions"], list)
    assert (tmp_path / "ov" / f"{stem}_lesions.png").is_file() and (tmp_path / "ov" / f"{stem}_boxes.png").is_file()

    # the model bundle answers the same, and --lesion-threshold decides which detections are listed
    assert main(["export", str(run.path), "--out", str(tmp_path / "bundle")]) == 0
    counts = {}
    for thr in ("0", "1"):
        out = tmp_path / f"b{thr}.jsonl"
        assert main(["predict", str(tmp_path / "bundle"), image, "--lesion-threshold", thr, "--out", str(out)]) == 0
        got = json.loads(out.read_text().splitlines()[0])
        assert got["probs"] == pytest.approx(rec["probs"], abs=1e-5)
        counts[thr] = len(got["lesions"])
        assert all(les["score"] >= float(thr) for les in got["lesions"])
    assert counts["0"] >= len(rec["lesions"]) >= counts["1"]
    assert main(["predict", str(tmp_path / "bundle"), image, "--lesion-threshold", "2"]) == 2
