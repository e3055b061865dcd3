"""The Python API: chestdx.load_model(path).predict(x) on images, arrays, PIL, series, NIfTI, zips."""

from __future__ import annotations

import zipfile

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import chestdx
from chestdx.errors import DataError
from chestdx.io import read_image
from chestdx.predict.predictor import Prediction, ScanPrediction


@pytest.fixture(scope="module")
def model(bundle):
    return chestdx.load_model(bundle)


def test_image_path_array_and_pil_agree(model, phantom_png):
    a = model.predict(phantom_png)
    assert isinstance(a, Prediction) and a.kind == "image"
    assert set(a.probs) == {"normal", "pneumonia", "covid"} and abs(sum(a.probs.values()) - 1) < 1e-5
    assert a.label == max(a.probs, key=a.probs.get)
    assert a.heatmap.shape == (32, 32) and 0 <= a.heatmap.min() and a.heatmap.max() <= 1 + 1e-6
    b = model.predict(read_image(phantom_png))
    c = model.predict(Image.open(phantom_png))
    for other in (b, c):
        np.testing.assert_allclose(list(other.probs.values()), list(a.probs.values()), atol=1e-5)
    assert model.predict(phantom_png, heatmap=False).heatmap is None


def test_series_scan_aggregates_slices(model, series_dir):
    ans = model.predict(series_dir)
    assert isinstance(ans, ScanPrediction) and ans.kind == "volume"
    assert ans.slice_indices == list(range(6)) and len(ans.slices) == 6
    slice_p = np.array([list(s.probs.values()) for s in ans.slices])
    np.testing.assert_allclose(list(ans.probs.values()), slice_p.mean(0), atol=1e-6)  # mean by hand
    assert ans.heatmaps.shape == (6, 32, 32) and ans.meta["kind"] == "dicom_series"
    maj = model.predict(series_dir, aggregate="majority", heatmap=False)
    votes = np.bincount(slice_p.argmax(1), minlength=3) / 6
    np.testing.assert_allclose(list(maj.probs.values()), votes)
    few = model.predict(series_dir, max_slices=3, heatmap=False)
    assert few.slice_indices == [0, 2, 5] or few.slice_indices == [0, 3, 5]


def test_zip_nifti_and_array_volumes(model, series_dir, tmp_path):
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as zf:
        for f in series_dir.iterdir():
            zf.write(f, f"study/{f.name}")
    a = model.predict(series_dir, heatmap=False)
    b = model.predict(tmp_path / "s.zip", heatmap=False)
    np.testing.assert_allclose(list(a.probs.values()), list(b.probs.values()), atol=1e-6)
    vol = np.random.default_rng(1).normal(size=(20, 20, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    assert len(model.predict(tmp_path / "v.nii.gz", heatmap=False).slices) == 4
    assert len(model.predict(np.zeros((3, 16, 16), np.float32) + np.arange(16), heatmap=False).slices) == 3


def test_bad_inputs(model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataError, match="bad.png"):
        model.predict(bad)
    with pytest.raises(DataError, match="NaN"):
        model.predict(np.full((8, 8), np.nan))
    with pytest.raises(DataError, match="not found"):
        model.predict(tmp_path / "missing.png")


def test_voting_details_in_the_answer():
    """The full cam-snapmix method answers with its k vote probabilities and the flip flag."""
    from chestdx.config import load_recipe
    from chestdx.models import build_model
    from chestdx.predict.predictor import Predictor

    r = load_recipe("full", {"data": {"image_size": 32}, "model": {"backbone": "resnet18", "weights": "none"},
                             "inference": {"params": {"k": 5, "cell": 4}}})
    p = Predictor.from_model(r, build_model(r.model, num_classes=2).eval())
    ans = p.predict(np.random.default_rng(0).random((40, 40)).astype(np.float32))
    assert isinstance(ans.details["flipped"], bool) and len(ans.details["vote_probs"]) == 5
    assert ans.to_json()["vote_probs"] == ans.details["vote_probs"]
