"""Volume readers: DICOM series order and HU, mixed series, NIfTI, slice folders, zips, .npy."""

from __future__ import annotations

import zipfile

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from chestdx.data import read_volume
from chestdx.data.readers import read_image
from chestdx.data.volumes import is_volume_input, natural_key
from chestdx.errors import DataError
from tests.dicom_utils import write_dicom, write_series


def _stored(d: int = 5, h: int = 6, w: int = 7) -> np.ndarray:
    """(D, H, W) uint16 where slice k holds 100*k + its pixel index (so the order is visible)."""
    base = np.arange(h * w, dtype=np.uint16).reshape(h, w)
    return np.stack([base + 100 * k for k in range(d)]).astype(np.uint16)


def test_dicom_series_sorted_by_position_with_hu(tmp_path):
    stored = _stored()
    write_series(tmp_path / "s", stored, slope=2.0, intercept=-1024.0, dz=2.5)
    (tmp_path / "s" / "notes.txt").write_text("not dicom")
    vol, meta = read_volume(tmp_path / "s")
    assert vol.shape == (5, 6, 7) and vol.dtype == np.float32
    # HU = 2 * stored - 1024, slices back in position order despite shuffled names and instances
    np.testing.assert_allclose(vol, stored.astype(np.float32) * 2 - 1024)
    assert meta.kind == "dicom_series" and meta.order == "position"
    assert meta.spacing == pytest.approx((2.5, 0.7, 0.7))
    assert len(meta.skipped) == 1 and "notes.txt" in meta.skipped[0][0]


def test_dicom_series_instance_fallback_and_window(tmp_path):
    stored = _stored(d=4)
    write_series(tmp_path / "s", stored, positions=False)
    vol, meta = read_volume(tmp_path / "s", hu_window=(100.0, 200.0))  # [0, 200] -> [0, 1]
    assert meta.order == "instance"
    np.testing.assert_allclose(vol, np.clip(stored.astype(np.float32) / 200.0, 0, 1), atol=1e-6)


def test_mixed_series_reported(tmp_path):
    write_series(tmp_path / "s", _stored(d=3), series_uid="1.2.3.1")
    write_series(tmp_path / "s", _stored(d=2), series_uid="1.2.3.2", seed=1, names="ordered")
    with pytest.raises(DataError, match=r"2 DICOM series.*1\.2\.3\.1: 3 files.*1\.2\.3\.2: 2 files"):
        read_volume(tmp_path / "s")
    vol, meta = read_volume(tmp_path / "s", series_uid="1.2.3.2")
    assert vol.shape[0] == 2 and meta.series_uid == "1.2.3.2"


def test_series_with_a_different_slice_size(tmp_path):
    write_series(tmp_path / "s", _stored(d=3), series_uid="1.2.9")
    write_dicom(tmp_path / "s" / "odd", np.zeros((4, 4), np.uint16), series_uid="1.2.9", position=(0, 0, 50.0))
    with pytest.raises(DataError, match="odd.*shape"):
        read_volume(tmp_path / "s")


def test_zip_of_a_series_equals_the_folder(tmp_path):
    stored = _stored()
    files = write_series(tmp_path / "s", stored, intercept=-1000.0)
    with zipfile.ZipFile(tmp_path / "study.zip", "w") as zf:
        for f in files:
            zf.write(f, f"patient/series/{f.name}")
    a, _ = read_volume(tmp_path / "s")
    b, meta = read_volume(tmp_path / "study.zip")
    np.testing.assert_array_equal(a, b)
    assert meta.kind == "dicom_series" and is_volume_input(tmp_path / "study.zip")


def test_zip_slip_and_bomb_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("../escape.dcm", b"x" * 10)
    with pytest.raises(DataError, match="outside the archive"):
        read_volume(tmp_path / "evil.zip")
    with zipfile.ZipFile(tmp_path / "big.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * 100_000)
    with pytest.raises(DataError, match="more than the limit"):
        read_volume(tmp_path / "big.zip", max_unzipped_bytes=1000)


def test_nifti_volume_matches_read_image_slices(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 5, 4)).astype(np.float32)  # (X, Y, Z)
    affine = np.diag([-0.8, 0.8, 3.0, 1.0])  # x flipped (LAS-like) to exercise reorientation
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "v.nii.gz")
    vol, meta = read_volume(tmp_path / "v.nii.gz")
    assert vol.shape == (4, 5, 6) and meta.spacing == pytest.approx((3.0, 0.8, 0.8))
    for k in range(4):
        np.testing.assert_allclose(vol[k], read_image(tmp_path / "v.nii.gz", slice_index=k))


def test_slice_folder_in_natural_order(tmp_path):
    for k in (1, 2, 10):
        Image.fromarray(np.full((4, 4), k * 20, np.uint8)).save(tmp_path / f"{k}.png")
    vol, meta = read_volume(tmp_path)
    np.testing.assert_allclose(vol[:, 0, 0], np.array([20, 40, 200]) / 255.0, atol=1e-6)
    assert meta.kind == "slices" and [p.split("/")[-1] for p in meta.files] == ["1.png", "2.png", "10.png"]
    assert natural_key("s2.png") < natural_key("s10.png")


def test_npy_and_multiframe(tmp_path):
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.save(tmp_path / "v.npy", arr)
    vol, _ = read_volume(tmp_path / "v.npy")
    np.testing.assert_array_equal(vol, arr)
    frames = np.stack([np.full((3, 3), 10 * k, np.uint16) for k in range(3)])
    write_dicom(tmp_path / "mf.dcm", frames, frames=3)
    vol, meta = read_volume(tmp_path / "mf.dcm")
    assert vol.shape == (3, 3, 3) and meta.kind == "dicom_multiframe"
    np.testing.assert_allclose(vol[:, 0, 0], [0, 10, 20])
    assert is_volume_input(tmp_path / "mf.dcm") and is_volume_input(tmp_path / "v.npy")


def test_bad_inputs_named(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_volume(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        read_volume(tmp_path / "empty")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "one.png")
    with pytest.raises(DataError, match="single 2D image"):
        read_volume(tmp_path / "one.png")
    assert not is_volume_input(tmp_path / "one.png")
    np.save(tmp_path / "nan.npy", np.full((2, 2, 2), np.nan, np.float32))
    with pytest.raises(DataError, match="NaN"):
        read_volume(tmp_path / "nan.npy")
