"""Heatmap localisation of the volume and lesion tasks (issue 16): the 3D Grad-CAM scored per axial
slice against the 3D lesion masks, and the lesion model's own masks, with hand-computed figures."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from chestdx.models.base import ModelOutput

D, S = 4, 16


class IdentityCam3d(nn.Module):
    """A 3D "model" whose Grad-CAM is its input: features = the volume ``(B, 1, D, S, S)``, head =
    global average pool -> logits ``[mean, -mean]`` (class 0 predicted for a positive volume; the
    gradient of its logit sums to 1 over the voxels, so ``cam = ReLU(volume)``)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_head(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = f.flatten(2).mean(2)  # (B, 1)
        return torch.cat([g, -g], dim=1), g

    def forward(self, x: torch.Tensor) -> ModelOutput:
        f = self.forward_features(x)
        logits, emb = self.forward_head(f)
        return ModelOutput(logits=logits, features=f, embedding=emb)


def _lesion_square() -> np.ndarray:
    m = np.zeros((S, S), bool)
    m[6:9, 6:9] = True  # 9 pixels, (6..8, 6..8)
    return m


def _volume_batch():
    """Three scans: scan 0 has lesion on slices 0, 1, 2 (slice 3 none); scan 1 has a mask but no lesion
    voxel; scan 2 has lesion voxels but ``has_mask`` False. The map (= the volume) on scan 0:
    slice 0 one voxel 1 at (7, 7) (inside); slice 1 1 at (7, 7) and 0.5 at (0, 15); slice 2 1 at
    (1, 1) (6.x px from the lesion, tolerance 1 px at 16 px); slice 3 2.0 at (7, 7) (no lesion: not
    counted, but it is the volume's maximum: the volume-wide scale must not change the scores)."""
    vol = torch.zeros(3, 1, D, S, S)
    les = torch.zeros(3, 1, D, S, S)
    sq = torch.from_numpy(_lesion_square()).float()
    for k in range(3):
        les[0, 0, k] = sq
    vol[0, 0, 0, 7, 7] = 1.0
    vol[0, 0, 1, 7, 7] = 1.0
    vol[0, 0, 1, 0, 15] = 0.5
    vol[0, 0, 2, 1, 1] = 1.0
    vol[0, 0, 3, 7, 7] = 2.0
    vol[1, 0, 1, 7, 7] = 1.0
    vol[2, 0, 1, 7, 7] = 1.0
    les[2, 0, 1] = sq
    batch = {"image": vol, "lesion": les, "has_mask": torch.tensor([True, True, False]),
             "label": torch.tensor([0, 0, 0]), "index": torch.tensor([0, 1, 2])}
    samples = [SimpleNamespace(site="a", patient_id=f"p{i}", path=f"scan{i}.nii.gz") for i in range(3)]
    return [batch], samples


def test_volume_scored_per_lesion_slice_hand_computed():
    from chestdx.evaluate.localisation import localisation_markdown, score_volume_heatmaps

    loader, samples = _volume_batch()
    res = score_volume_heatmaps(IdentityCam3d(), loader, samples, n_boot=20)
    assert res["n_images"] == 3 and res["n_scans"] == 1 and res["n_patients"] == 1  # slices 0-2 of scan 0
    assert [(r["index"], r["slice"]) for r in res["per_image"]] == [(0, 0), (0, 1), (0, 2)]
    assert res["default_kind"] == "gradcam3d" and set(res["maps"]) == {"gradcam3d"}
    assert set(res["references"]) == {"centre_prior", "body"}
    figs = res["maps"]["gradcam3d"]
    assert figs["pointing"]["value"] == pytest.approx(2 / 3)  # slices 0, 1 hit; slice 2 misses
    assert figs["energy"]["value"] == pytest.approx((1 + 1 / 1.5 + 0) / 3)
    assert figs["iou"]["value"] == pytest.approx((1 / 9 + 1 / 10 + 0) / 3)  # 1 of 9; 1 of 9 + 1; none
    assert figs["dice"]["value"] == pytest.approx((2 / 10 + 2 / 11 + 0) / 3)
    assert [r["gradcam3d"]["pointing"] for r in res["per_image"]] == [1.0, 1.0, 0.0]
    assert res["zero_maps"] == {"gradcam3d": 0}
    assert res["rules"]["grid"] == [D, S, S] and "nearest" in res["rules"]["mask_resize"]
    md = localisation_markdown(res, "t")
    assert "3 axial slices with a lesion of 1 scans" in md and "| gradcam3d | 0.667" in md


def test_volume_true_class_target_and_no_lesion():
    from chestdx.errors import ConfigError
    from chestdx.evaluate.localisation import score_volume_heatmaps

    loader, samples = _volume_batch()
    res = score_volume_heatmaps(IdentityCam3d(), loader, samples, n_boot=0, target="true")  # label 0 = predicted
    assert res["maps"]["gradcam3d"]["pointing"]["value"] == pytest.approx(2 / 3)
    loader[0]["lesion"].zero_()
    empty = score_volume_heatmaps(IdentityCam3d(), loader, samples, n_boot=0)
    assert empty["n_images"] == 0 and empty["default_kind"] == "" and empty["maps"] == {}
    with pytest.raises(ConfigError, match="unknown heatmap target"):
        score_volume_heatmaps(IdentityCam3d(), loader, samples, target="label")


def test_volume_mask_resized_with_nearest_neighbours_on_the_model_grid(tmp_path):
    """The stated rule: the mask goes to (D, S, S) with nearest neighbours (voxel i <- floor(i * n_in / n_out))."""
    from chestdx.config import load_recipe
    from chestdx.data.volume_dataset import VolumeDataset

    rng = np.random.default_rng(0)
    vol = rng.uniform(0, 1, (8, 32, 32)).astype(np.float32)
    mask = (rng.uniform(0, 1, (8, 32, 32)) > 0.7).astype(np.uint8)
    np.save(tmp_path / "v.npy", vol)
    np.save(tmp_path / "m.npy", mask)
    cfg = load_recipe("cmc_model4", ["data.image_size=16", "data.volume_depth=4"]).data
    s = SimpleNamespace(path=str(tmp_path / "v.npy"), mask=str(tmp_path / "m.npy"), label=0, site="a",
                        patient_id="p", split="test")
    item = VolumeDataset([s], cfg, cache=False)[0]
    assert item["image"].shape == item["lesion"].shape == (1, 4, 16, 16)
    np.testing.assert_array_equal(item["lesion"][0].numpy(), mask[::2, ::2, ::2])


class FakeDetector(nn.Module):
    """``detect(images)``: per image the masks ``(m, 1, H, W)`` given at construction (probabilities),
    their scores, and boxes; nothing else of the affinity model is needed."""

    def __init__(self, per_image: list[list[tuple[np.ndarray, float]]]):
        super().__init__()
        self.per_image = per_image

    def detect(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for dets in self.per_image[: images.shape[0]]:
            masks = torch.stack([torch.from_numpy(m.astype(np.float32))[None] for m, _ in dets]) if dets \
                else torch.zeros(0, 1, *images.shape[-2:])
            out.append({"masks": masks, "scores": torch.tensor([sc for _, sc in dets], dtype=torch.float32),
                        "boxes": torch.zeros(len(dets), 4)})
        self.per_image = self.per_image[images.shape[0]:]
        return out


def _lesion_batch():
    les = torch.zeros(3, 1, S, S)
    sq = torch.from_numpy(_lesion_square()).float()
    les[0, 0] = sq
    les[1, 0] = sq
    img = torch.rand(3, 1, S, S, generator=torch.Generator().manual_seed(0))
    batch = {"image": img, "lesion": les, "has_mask": torch.tensor([True, True, True]),
             "label": torch.tensor([2, 2, 0]), "index": torch.tensor([0, 1, 2])}
    samples = [SimpleNamespace(site="a", patient_id=f"p{i}", path=f"img{i}.png") for i in range(3)]
    return [batch], samples


def test_lesion_mask_union_equal_to_the_truth_scores_one_and_shifted_scores_zero():
    from chestdx.evaluate.localisation import localisation_markdown, score_lesion_masks

    sq = _lesion_square()
    half_a, half_b = sq.copy(), sq.copy()
    half_a[8] = False  # two detections whose union is the lesion
    half_b[6:8] = False
    far = np.roll(sq, (6, 6), axis=(0, 1))  # (12..14, 12..14): 4+ px away, tolerance 1 px
    loader, samples = _lesion_batch()
    # image 2 has no lesion: not counted, whatever is detected there
    exact = FakeDetector([[(half_a, 0.9), (half_b, 0.6), (far, 0.3)], [(sq, 0.8)], [(sq, 0.9)]])
    res = score_lesion_masks(exact, loader, samples, n_boot=20)
    assert res["n_images"] == 2 and res["default_kind"] == "lesion_mask"
    for score in ("pointing", "energy", "iou", "dice"):  # the 0.3 detection off the lesion is not shown
        assert res["maps"]["lesion_mask"][score]["value"] == pytest.approx(1.0)
    shifted = FakeDetector([[(far, 0.9)], [(far, 0.9)], []])
    res = score_lesion_masks(shifted, loader, samples, n_boot=20)
    for score in ("pointing", "energy", "iou", "dice"):
        assert res["maps"]["lesion_mask"][score]["value"] == 0.0
    none = FakeDetector([[], [(sq, 0.4)], []])  # nothing at >= 0.5: all-zero maps
    res = score_lesion_masks(none, loader, samples, n_boot=0)
    assert res["maps"]["lesion_mask"]["iou"]["value"] == 0.0 and res["n_images"] == 2
    assert res["zero_maps"] == {"lesion_mask": 2}  # counted, and said in the markdown
    assert "lesion_mask: all-zero map on 2 of 2 images" in localisation_markdown(res, "t")
    assert set(res["references"]) == {"centre_prior", "body"}


def test_lesion_task_hook_lists_other_kinds_unavailable():
    from chestdx.tasks import get_task

    loader, samples = _lesion_batch()
    sq = _lesion_square()
    res = get_task("lesion").score_localisation(FakeDetector([[(sq, 0.9)], [(sq, 0.9)], []]), loader, samples,
                                                ["auto", "cam"], n_boot=0)
    assert set(res["maps"]) == {"lesion_mask"} and set(res["unavailable"]) == {"cam"}


TINY_3D = ["model.backbone=resnet18", "model.weights=none", "model.params.time_kernel=1",
           "data.image_size=32", "data.volume_depth=16", "data.batch_size=4", "mixing.params.depth=8",
           "trainer.epochs=1", "trainer.accelerator=cpu", "optim.scheduler=none"]


def test_evaluate_volume_run_writes_gradcam3d_localisation(tmp_path):
    from chestdx.config import load_recipe
    from chestdx.engine.train import train
    from chestdx.evaluate.run import evaluate_run
    from chestdx.phantom.volumes import synthesize_volumes

    manifest = synthesize_volumes(tmp_path / "data", n_patients_per_class=3, num_classes=2, shape=(16, 32, 32),
                                  seed=1)
    recipe = load_recipe("cmc_model4", [*TINY_3D, f"data.cache_dir={tmp_path / 'cache'}"])
    run = train(recipe, [manifest], tmp_path / "run", progress=False)
    res = evaluate_run(run, split="train", out=tmp_path / "ev", n_boot=20)
    loc = res["heatmap_localisation"]
    assert loc["default_kind"] == "gradcam3d" and set(loc["maps"]) == {"gradcam3d"}
    assert loc["n_images"] > 0 and loc["n_scans"] >= 1 and loc["unit"] == "axial slices"
    for figs in [*loc["maps"].values(), *loc["references"].values()]:
        for score in ("pointing", "energy", "iou", "dice"):
            assert 0.0 <= figs[score]["ci_low"] <= figs[score]["value"] <= figs[score]["ci_high"] <= 1.0
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())["heatmap_localisation"]
    assert saved["n_images"] == loc["n_images"]
    per = json.loads((tmp_path / "ev" / "localisation.json").read_text())["heatmaps"]["per_image"]
    assert len(per) == loc["n_images"] and all(0 <= r["slice"] < 16 for r in per)
    assert "axial slices with a lesion" in (tmp_path / "ev" / "metrics.md").read_text()
