"""Volume readers: DICOM series order and HU, mixed series, NIfTI, slice folders, zips, .npy."""

from __future__ import annotations

import zipfile

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from chestdx.errors import DataError
from chestdx.io import is_volume_input, natural_key, read_image, read_volume
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


# ------------------------------------------------------------------------------ hostile input


def _series_zip(tmp_path, files, name="study.zip", compression=zipfile.ZIP_DEFLATED, extra=None):
    with zipfile.ZipFile(tmp_path / name, "w", compression=compression) as zf:
        for f in files:
            zf.write(f, f"series/{f.name}")
        for member, data in (extra or {}).items():
            zf.writestr(member, data)
    return tmp_path / name


def test_default_limits():
    from chestdx.io import limits

    assert limits.MAX_VOLUME_VOXELS == 128 * 1024 * 1024
    assert limits.MAX_UNZIPPED_BYTES == 1024**3
    assert limits.MAX_ZIP_MEMBERS == 4096
    assert limits.MAX_ZIP_MEMBER_BYTES == 512 * 1024**2


def test_voxel_cap_checked_from_the_headers(tmp_path):
    files = write_series(tmp_path / "s", _stored(d=4))  # 4 x 6 x 7 = 168 voxels
    with pytest.raises(DataError, match=r"DICOM series \(4 files\) holds 168 voxels, more than the limit of 167"):
        read_volume(tmp_path / "s", max_voxels=167)
    assert read_volume(tmp_path / "s", max_voxels=168)[0].shape == (4, 6, 7)
    with pytest.raises(DataError, match=r"study\.zip: DICOM series .* limit of 100"):
        read_volume(_series_zip(tmp_path, files), max_voxels=100)
    np.save(tmp_path / "v.npy", np.zeros((4, 5, 6), np.float32))
    with pytest.raises(DataError, match=r"v\.npy: array \(4, 5, 6\) holds 120 voxels"):
        read_volume(tmp_path / "v.npy", max_voxels=119)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    with pytest.raises(DataError, match=r"v\.nii\.gz: NIfTI volume .* 120 voxels"):
        read_volume(tmp_path / "v.nii.gz", max_voxels=119)
    write_dicom(tmp_path / "mf.dcm", np.zeros((3, 4, 4), np.uint16), frames=3)
    with pytest.raises(DataError, match="48 voxels, more than the limit of 47"):
        read_volume(tmp_path / "mf.dcm", max_voxels=47)
    (tmp_path / "slices").mkdir()
    for k in range(3):
        Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "slices" / f"{k}.png")
    with pytest.raises(DataError, match=r"slice folder \(3 images\) holds 60 voxels"):
        read_volume(tmp_path / "slices", max_voxels=59)


def test_bad_series_tag_names_the_zip_member_and_tag(tmp_path):
    import pydicom
    from pydicom.dataelem import DataElement

    files = write_series(tmp_path / "s", _stored(d=3), names="ordered")
    ds = pydicom.dcmread(files[1])
    ds[0x00200032] = DataElement(0x00200032, "LO", "x\\y\\z")  # ImagePositionPatient
    ds.save_as(files[1], enforce_file_format=True)
    with pytest.raises(DataError, match=r"study\.zip: zip member '1\.dcm': DICOM tag ImagePositionPatient is not a "
                                        r"number") as info:
        read_volume(_series_zip(tmp_path, files))
    assert "chestdx-zip-" not in str(info.value)


def test_zip_limits_members_sizes_and_methods(tmp_path):
    files = write_series(tmp_path / "s", _stored(d=3))
    z = _series_zip(tmp_path, files)
    with pytest.raises(DataError, match="zip holds 3 files, more than the limit of 2"):
        read_volume(z, max_zip_members=2)
    size = files[0].stat().st_size
    with pytest.raises(DataError, match="per file"):
        read_volume(z, max_member_bytes=size - 1)
    with pytest.raises(DataError, match="more than the limit"):
        read_volume(z, max_unzipped_bytes=3 * size - 1)
    with zipfile.ZipFile(tmp_path / "bz.zip", "w", compression=zipfile.ZIP_BZIP2) as zf:
        zf.write(files[0], files[0].name)
    with pytest.raises(DataError, match="compression method 12; only stored and deflate"):
        read_volume(tmp_path / "bz.zip")


def test_zip_corrupt_deflate_and_lying_sizes_are_data_errors(tmp_path):
    files = write_series(tmp_path / "s", _stored(d=3))
    raw = bytearray(_series_zip(tmp_path, files).read_bytes())
    local = raw.find(b"PK\x03\x04")
    name_len = int.from_bytes(raw[local + 26:local + 28], "little")
    start = local + 30 + name_len
    raw[start + 10:start + 20] = b"\xff" * 10  # garbage inside the first member's deflate stream
    (tmp_path / "corrupt.zip").write_bytes(raw)
    with pytest.raises(DataError, match=r"corrupt\.zip: .*zip member 'series/") as info:
        read_volume(tmp_path / "corrupt.zip")
    assert "chestdx-zip-" not in str(info.value)
    lying = bytearray(_series_zip(tmp_path, files, "lying.zip").read_bytes())
    cd = lying.find(b"PK\x01\x02")
    lying[cd + 24:cd + 28] = (10).to_bytes(4, "little")  # the first member "unpacks to 10 bytes"
    (tmp_path / "lying.zip").write_bytes(lying)
    with pytest.raises(DataError, match=r"lying\.zip"):
        read_volume(tmp_path / "lying.zip")


def test_zip_members_that_are_not_dicom_skipped_without_parsing(tmp_path):
    import time

    files = write_series(tmp_path / "s", _stored(d=3), intercept=-1000.0)
    z = _series_zip(tmp_path, files, extra={f"junk{k}.dcm": bytes(8192) for k in range(8)})
    t0 = time.perf_counter()
    vol, meta = read_volume(z)
    assert time.perf_counter() - t0 < 2.0  # pydicom's force=True parses zeros at ~1 s/MB
    assert vol.shape == (3, 6, 7)
    reasons = dict(meta.skipped)
    assert sorted(reasons) == [f"junk{k}.dcm" for k in range(8)]
    assert all("not a DICOM file" in why and "chestdx-zip-" not in why for why in reasons.values())


def test_monochrome1_series_with_a_window_reads_as_read_image(tmp_path):
    """Issue 17: three MONOCHROME1 slices at HU -1000 / -600 / 0, window (-600, 1500): read_image gives
    1 - (HU + 1350) / 1500 = 0.767 / 0.5 / 0.1; read_volume gave 1.0 / 1.0 / 1.0 (the window applied to
    the mirrored stored values)."""
    hu = [-1000, -600, 0]
    (tmp_path / "s").mkdir()
    for k, v in enumerate(hu):
        write_dicom(tmp_path / "s" / f"{k}.dcm", np.full((4, 4), v + 1024, np.uint16), intercept=-1024.0, photometric="MONOCHROME1",
                    series_uid="1.2.5", position=(0.0, 0.0, 10.0 * k))
    window = (-600.0, 1500.0)
    vol, _ = read_volume(tmp_path / "s", hu_window=window)
    alone = [float(read_image(tmp_path / "s" / f"{k}.dcm", hu_window=window)[0, 0]) for k in range(3)]
    assert alone == pytest.approx([1 - 350 / 1500, 0.5, 0.1], abs=1e-6)
    assert vol[:, 0, 0].tolist() == pytest.approx(alone, abs=1e-6)
    # and in a zip, and as a multi-frame file
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as z:
        for k in range(3):
            z.write(tmp_path / "s" / f"{k}.dcm", f"{k}.dcm")
    assert read_volume(tmp_path / "s.zip", hu_window=window)[0][:, 0, 0].tolist() == pytest.approx(alone, abs=1e-6)
    frames = np.stack([np.full((4, 4), v + 1024, np.uint16) for v in hu])
    write_dicom(tmp_path / "mf.dcm", frames, intercept=-1024.0, photometric="MONOCHROME1", frames=3)
    assert read_volume(tmp_path / "mf.dcm", hu_window=window)[0][:, 0, 0].tolist() == pytest.approx(alone, abs=1e-6)


def test_series_with_flipped_orientation_is_still_inferior_to_superior(tmp_path):
    """Columns running posterior -> anterior (ImageOrientationPatient 1\\0\\0\\0\\-1\\0) turn the cross product
    to -z; the slices must still come inferior (low z) first."""
    import pydicom

    (tmp_path / "s").mkdir()
    for k in range(3):
        f = write_dicom(tmp_path / "s" / f"IM{2 - k}", np.full((2, 2), 100 * k, np.uint16), series_uid="1.2.6", position=(0.0, 0.0, 5.0 * k))
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "-1", "0"]
        ds.save_as(f, enforce_file_format=True)
    vol, meta = read_volume(tmp_path / "s")
    assert meta.order == "position"
    assert vol[:, 0, 0].tolist() == [0.0, 100.0, 200.0]  # z = 0, 5, 10: inferior -> superior
