"""The out-of-distribution input check: statistics by hand, the stated rule, and a trained bundle
that warns on noise, a photograph and an X-ray sent to a CT model, but not on its own test slices."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chestdx.predict.ood import build_profile, check_input, input_features


def test_features_by_hand():
    flat = input_features(np.full((8, 8), 3.0))
    assert flat == {"roughness": 0.0, "foreground": 0.0, "dark_share": 1.0, "symmetry": 1.0, "skewness": 0.0}
    x = np.zeros((4, 4))
    x[:, :2] = 1.0  # left half bright: mirror is the opposite
    f = input_features(x)
    assert f["symmetry"] == pytest.approx(-1.0) and f["foreground"] == pytest.approx(0.5)
    assert f["dark_share"] == pytest.approx(0.5) and f["skewness"] == pytest.approx(0.0)
    sym = np.array([[0, 1, 1, 0]] * 4, float)
    assert input_features(sym)["symmetry"] == pytest.approx(1.0)
    # Laplacian of z = (x - 0.5) / 0.5 at the 4 inner pixels: |4z - neighbours| = 2 each
    assert input_features(sym)["roughness"] == pytest.approx(2.0)


def test_rule_widens_the_training_range_by_the_tolerance():
    profile = {"version": 1, "n_images": 2,
               "features": {"roughness": {"p01": 1.0, "p99": 2.0, "median": 1.5}}}
    near = np.array([[0, 1, 1, 0]] * 4, float)  # roughness 2.0: inside
    assert check_input(near, profile)["out_of_distribution"] is False
    assert check_input(near, profile, tolerance=0.5)["outside"] == {}
    tight = {"version": 1, "features": {"roughness": {"p01": 0.1, "p99": 0.2, "median": 0.15}}}
    res = check_input(near, tight)  # 2.0 > 0.2 + 0.5 * 0.1
    assert res["out_of_distribution"] and res["outside"]["roughness"]["training_range"] == [0.1, 0.2]
    assert check_input(near, None) is None and check_input(near, {"version": 99, "features": {}}) is None


def test_profile_percentiles():
    imgs = [np.random.default_rng(i).random((16, 16)) for i in range(5)]
    prof = build_profile(imgs)
    v = [input_features(im)["roughness"] for im in imgs]
    assert prof["n_images"] == 5
    assert prof["features"]["roughness"]["p99"] == pytest.approx(np.percentile(v, 99))


def _abs(row_path: str, manifest: Path) -> Path:
    p = Path(row_path)
    return p if p.is_absolute() else manifest.parent / p


def test_bundle_warns_on_inputs_unlike_its_training_images(bundle, phantom_slices, tmp_path):
    from skimage import data

    from chestdx.phantom.cxr import synthesize_cxr
    from chestdx.predict.predictor import Predictor
    from chestdx.predict.report import write_study_report

    info = json.loads((bundle / "bundle.json").read_text())
    assert info["input_profile"]["n_images"] > 10 and set(info["input_profile"]["features"]) >= {"roughness"}
    pred = Predictor(bundle)
    with open(phantom_slices, newline="") as f:
        test = [_abs(r["path"], phantom_slices) for r in csv.DictReader(f) if r["split"] == "test"]
    flagged = [p for p in test if pred.predict(p, heatmap=False).details.get("warning")]
    assert len(flagged) <= 0.1 * len(test), f"{len(flagged)} of {len(test)} own test slices flagged"

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(tmp_path / "noise.png")
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.png")
    cxr = synthesize_cxr(tmp_path / "cxr", n_patients_per_class=1, num_classes=3, sites=1, size=64, seed=0)
    with open(cxr, newline="") as f:
        xray = _abs(next(csv.DictReader(f))["path"], cxr)
    for odd in (tmp_path / "noise.png", tmp_path / "cat.png", xray):
        answer = pred.predict(odd, heatmap=False)
        assert "out of distribution" in answer.details.get("warning", ""), odd
        assert answer.to_json()["warning"] == answer.details["warning"]
    page = write_study_report(pred, tmp_path / "noise.png", tmp_path / "r.html").read_text()
    assert 'id="ood"' in page and "out of distribution" in page
    # a scan of noise: most slices flagged -> the scan answer carries the warning
    scan = pred.predict(rng.random((6, 64, 64)).astype(np.float32), heatmap=False)
    assert "out of distribution" in (scan.warning or "") and "6 of 6 slices" in scan.warning
