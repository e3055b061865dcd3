"""Phantom chest X-rays: the AP projection by hand, a tiny data set with projected lesion masks."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from chestdx.errors import ConfigError
from chestdx.phantom.cxr import MU_WATER_PER_MM, project_volume, synthesize_cxr


def test_projection_by_hand():
    vol = np.full((2, 3, 2), -1000.0, np.float32)  # air: no attenuation
    vol[0, :, 0] = 0.0  # a column of water, 3 voxels deep
    vol[1, 1, 1] = 1000.0  # one voxel at twice water
    mask = np.zeros(vol.shape, np.uint8)
    mask[1, 2, 1] = 1
    proj, les = project_volume(vol, mask, dy_mm=2.0)
    assert proj.shape == (2, 2)
    assert proj[0, 0] == pytest.approx(3 * 2.0 * MU_WATER_PER_MM)
    assert proj[1, 1] == pytest.approx(2.0 * 2 * MU_WATER_PER_MM)
    assert proj[0, 1] == 0.0 and les.tolist() == [[0, 0], [0, 1]]


def test_lesion_gain_counts_only_the_lesions_excess_over_lung():
    vol = np.full((1, 4, 2), -800.0, np.float32)  # lung, mu = 0.2 water
    vol[0, 1:3, 1] = -500.0  # a lesion 2 voxels deep at 0.5 water
    vol[0, 0, 0] = -500.0  # the same density outside the mask: a confounder, not amplified
    mask = np.zeros(vol.shape, np.uint8)
    mask[0, 1:3, 1] = 1
    plain, _ = project_volume(vol, mask, dy_mm=1.0)
    gained, les = project_volume(vol, mask, dy_mm=1.0, lesion_gain=3.0, background_hu=-800.0)
    mu = MU_WATER_PER_MM
    assert plain[0, 1] == pytest.approx(mu * (0.2 * 2 + 0.5 * 2))
    assert gained[0, 1] == pytest.approx(mu * (0.2 * 2 + 0.5 * 2 + 2 * 2 * 0.3))  # +(3 - 1) x excess 0.3, 2 voxels
    assert gained[0, 0] == pytest.approx(plain[0, 0]) == pytest.approx(mu * (0.5 + 0.2 * 3))
    with pytest.raises(ConfigError, match="lesion_gain"):
        project_volume(vol, mask, dy_mm=1.0, lesion_gain=0.5)


def test_tiny_cxr_set(tmp_path):
    manifest = synthesize_cxr(tmp_path, n_patients_per_class=2, size=32, seed=0)
    rows = list(csv.DictReader(open(manifest)))
    assert len(rows) == 6 and {r["class"] for r in rows} == {"normal", "pneumonia", "covid"}
    from PIL import Image

    for r in rows:
        img = np.asarray(Image.open(tmp_path / r["path"]))
        m = np.asarray(Image.open(tmp_path / r["mask"]))
        assert img.shape == (32, 32) and img.std() > 5
        assert (m.max() > 0) == (r["class"] != "normal")  # lesions projected for the sick only
    again = synthesize_cxr(tmp_path / "again", n_patients_per_class=2, size=32, seed=0)
    assert (tmp_path / rows[0]["path"]).read_bytes() == (again.parent / rows[0]["path"]).read_bytes()
    with pytest.raises(ConfigError):
        synthesize_cxr(tmp_path, num_classes=4)


def test_synth_cli_writes_the_asked_number_of_xrays_per_patient(tmp_path):
    """``chestdx synth --kind cxr --slices-per-patient 2``: two X-rays per patient (the flag was ignored)."""
    import csv

    from chestdx.cli import main

    for n in (1, 2):
        assert main(["synth", "--kind", "cxr", "--out", str(tmp_path / f"c{n}"), "--patients", "2", "--classes", "2",
                     "--size", "32", "--slices-per-patient", str(n)]) == 0
        rows = list(csv.DictReader(open(tmp_path / f"c{n}" / "manifest.csv")))
        assert len(rows) == 4 * n and len({r["patient_id"] for r in rows}) == 4
