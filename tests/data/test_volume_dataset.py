"""Volume preprocessing, the on-disk cache (second epoch reads no scan), layouts, phantom volumes,
and a DICOM series -> training run."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

import chestdx.data.volume_dataset as vd
from chestdx.config import VolumeDataConfig, load_recipe
from chestdx.data.layouts import Sample, from_scan_folders, load_volume_source
from chestdx.errors import DatasetError
from chestdx.io import read_volume
from tests.dicom_utils import write_series


def _cfg(tmp_path, **kw):
    return VolumeDataConfig(image_size=16, volume_depth=8, cache_dir=str(tmp_path / "cache"), **kw)


def test_preprocess_resizes_and_scales_to_unit():
    vol = np.linspace(-1000, 400, 5 * 20 * 24, dtype=np.float32).reshape(5, 20, 24)
    t = vd.preprocess_volume(vol, (8, 16, 16))
    assert t.shape == (8, 16, 16) and t.dtype == torch.float32
    assert float(t.min()) == pytest.approx(0.0) and float(t.max()) == pytest.approx(1.0)
    inside = np.full((4, 4, 4), 0.25, np.float32)
    assert float(vd.preprocess_volume(inside, (4, 4, 4)).max()) == pytest.approx(0.25)


def test_second_epoch_reads_no_scan(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        p = tmp_path / f"v{i}.npy"
        np.save(p, rng.uniform(-1000, 200, (6, 20, 20)).astype(np.float32))
        samples.append(Sample(str(p), i % 2, f"p{i}", "s", split="train"))
    calls = []
    real = vd.read_volume

    def counting(path, **kw):
        calls.append(str(path))
        return real(path, **kw)

    monkeypatch.setattr(vd, "read_volume", counting)
    cfg = _cfg(tmp_path, hu_window=(-400.0, 1200.0))
    ds = vd.VolumeDataset(samples, cfg)
    first = [ds[i] for i in range(3)]
    assert len(calls) == 3
    second = [ds[i] for i in range(3)]  # epoch 2: from the cache
    assert len(calls) == 3
    assert first[0]["image"].shape == (1, 8, 16, 16) and first[1]["label"].item() == 1
    torch.testing.assert_close(first[2]["image"], second[2]["image"])
    vd.VolumeDataset(samples, cfg)[0]  # a new run with the same settings: still cached
    assert len(calls) == 3
    vd.VolumeDataset(samples, _cfg(tmp_path, hu_window=(-600.0, 1500.0)))[0]  # other settings: read again
    assert len(calls) == 4
    assert len(list((tmp_path / "cache").iterdir())) == 4


def test_scan_folder_layout_cov19_ct_db(tmp_path):
    for split, cls, scan in [("train", "covid", "ct_scan_0"), ("train", "non-covid", "ct_scan_3"),
                             ("validation", "covid", "ct_scan_7")]:
        d = tmp_path / split / cls / scan
        d.mkdir(parents=True)
        for k in (0, 1, 2, 10):
            Image.fromarray(np.full((8, 8), 20 * k, np.uint8)).save(d / f"{k}.jpg")
    samples = load_volume_source(tmp_path, ["noncovid", "covid"])
    got = sorted((s.split, s.label, s.patient_id) for s in samples)
    assert got == [("train", 0, "ct_scan_3"), ("train", 1, "ct_scan_0"), ("val", 1, "ct_scan_7")]
    vol, meta = read_volume(samples[0].path)
    assert vol.shape == (4, 8, 8) and meta.kind == "slices"
    with pytest.raises(DatasetError, match="class folders"):
        from_scan_folders(tmp_path / "train" / "covid", ["noncovid", "covid"])


def test_phantom_volumes_read_back_with_masks(tmp_path):
    from chestdx.phantom.volumes import synthesize_volumes

    manifest = synthesize_volumes(tmp_path / "v", n_patients_per_class=2, num_classes=2, shape=(12, 24, 24))
    rows = list(csv.DictReader(open(manifest)))
    assert len(rows) == 4 and {r["split"] for r in rows} <= {"train", "val", "test"}
    for r in rows:
        vol, meta = read_volume(tmp_path / "v" / r["path"])
        mask, _ = read_volume(tmp_path / "v" / r["mask"])
        assert vol.shape == mask.shape == (12, 24, 24) and meta.spacing is not None
        if r["class"] == "covid":  # (noncovid = normal, empty mask, or pneumonia, with a lesion)
            assert mask.sum() > 0
        # inferior -> superior: the first slice is upper abdomen (soft tissue), the middle one lung
        assert vol[0].mean() > vol[6].mean()


def test_synth_volume_cli(tmp_path):
    from chestdx.cli import main

    assert main(["synth", "--kind", "volume", "--out", str(tmp_path / "v"), "--classes", "2", "--patients", "1",
                 "--size", "16", "--slices-per-patient", "8"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "v" / "manifest.csv")))
    assert len(rows) == 2 and rows[0]["path"].endswith(".nii.gz") and rows[0]["mask"].startswith("masks/")
    assert read_volume(tmp_path / "v" / rows[0]["path"])[0].shape == (8, 16, 16)


def test_dicom_series_to_training(tmp_path):
    """DICOM series written with pydicom (shuffled files, slope / intercept) train a 3D model."""
    from chestdx.engine.train import train

    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        label = i % 2
        hu = rng.normal(-800, 30, (6, 16, 16))
        if label:
            hu[2:4, 4:10, 4:10] = -100  # a dense focus
        stored = np.round((hu + 1024) / 2).astype(np.int16)  # slope 2, intercept -1024
        write_series(tmp_path / f"scan{i}", stored, slope=2.0, intercept=-1024.0, seed=i)
        rows.append(f"scan{i},{label},p{i},{'train' if i < 4 else 'val'}")
    (tmp_path / "manifest.csv").write_text("path,label,patient_id,split\n" + "\n".join(rows) + "\n")
    recipe = load_recipe("cmc_model4", [
        "model.backbone=resnet18", "model.weights=none", "model.params.time_kernel=1",
        "data.image_size=16", "data.volume_depth=6", f"data.cache_dir={tmp_path / 'cache'}",
        "data.batch_size=2", "mixing.params.depth=4", "trainer.epochs=1", "trainer.accelerator=cpu"])
    run = train(recipe, [tmp_path / "manifest.csv"], tmp_path / "run", progress=False)
    assert run.checkpoint("last").is_file()
    hist = __import__("json").loads((tmp_path / "run" / "history.json").read_text())
    assert np.isfinite(hist[-1]["train_loss"]) and np.isfinite(hist[-1]["val_loss"])
    # read in HU: the lung window (-600, 1500) puts -800 HU at (-800 + 1350) / 1500 = 0.367
    item = vd.VolumeDataset(run.samples()[:1], recipe.data)[0]["image"]
    assert float(item.mean()) == pytest.approx(0.367, abs=0.01)
