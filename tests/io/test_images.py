"""Tests of chestdx.io.images (and io.formats, io.dicom) on tiny files made in tmp_path (and, marked realdata, the real sets)."""

from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from chestdx.errors import ConfigError, DataError
from chestdx.io import IMAGE_SUFFIXES, apply_hu_window, is_image_file, read_image, read_mask
from tests.dicom_utils import write_dicom

LUMA = np.array([0.299, 0.587, 0.114])


def _ramp(h: int = 24, w: int = 32) -> np.ndarray:
    """uint8 (H, W) with distinct values."""
    return ((np.arange(h * w).reshape(h, w) * 7) % 256).astype(np.uint8)


def _check(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.float32
    assert arr.shape == shape
    assert np.isfinite(arr).all()


# ------------------------------------------------------------------------------------- PIL


def test_suffixes():
    for s in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz", ".npy"):
        assert s in IMAGE_SUFFIXES
    assert is_image_file("a/B.PNG") and is_image_file("v.nii.gz") and not is_image_file("x.txt")
    assert not is_image_file(".hidden.png")


def test_grey_8bit_png_and_bmp(tmp_path):
    a = _ramp()
    for name in ("g.png", "g.bmp", "g.tif"):
        Image.fromarray(a, "L").save(tmp_path / name)
        out = read_image(tmp_path / name)
        _check(out, a.shape)
        np.testing.assert_allclose(out, a / 255.0, atol=1e-6)


def test_rgb_to_luma(tmp_path):
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    rgb[0, 0] = (255, 255, 255)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    out = read_image(tmp_path / "c.png")
    _check(out, (8, 10))
    assert out[1, 1] == pytest.approx((0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, abs=1e-5)
    assert out[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_grey_rgb_equals_grey(tmp_path):
    a = _ramp()
    Image.fromarray(np.stack([a] * 3, -1), "RGB").save(tmp_path / "g3.png")
    np.testing.assert_allclose(read_image(tmp_path / "g3.png"), a / 255.0, atol=1e-5)


def test_rgba_composited_on_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # fully transparent -> black
    rgba[0, 1, 3] = 51  # 20 % opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    _check(out, (4, 4))
    assert out[0, 0] == 0.0
    assert out[0, 1] == pytest.approx(200 / 255 * 0.2, abs=1e-5)
    assert out[2, 2] == pytest.approx(200 / 255, abs=1e-5)


def test_la_composited_on_black(tmp_path):
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 0], la[..., 1] = 100, 255
    la[1, 1, 1] = 0
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    assert out[0, 0] == pytest.approx(100 / 255, abs=1e-6)
    assert out[1, 1] == 0.0


def test_palette_with_and_without_transparency(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0] + [0] * (256 * 3 - 9))
    img.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    np.testing.assert_allclose(out, [[0, 1], [0.299, 1]], atol=1e-5)
    img.info["transparency"] = 1  # white becomes transparent -> black
    img.save(tmp_path / "pt.png", transparency=1)
    out = read_image(tmp_path / "pt.png")
    np.testing.assert_allclose(out, [[0, 0], [0.299, 0]], atol=1e-5)


def test_16bit_png_and_tiff(tmp_path):
    a = (np.arange(12 * 16).reshape(12, 16) * 300).astype(np.uint16)
    for name in ("d.png", "d.tif"):
        Image.fromarray(a).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode.startswith("I")
        out = read_image(tmp_path / name)
        _check(out, a.shape)
        np.testing.assert_allclose(out, a / 65535.0, rtol=1e-6)


def test_32bit_int_tiff(tmp_path):
    a = (np.arange(6 * 5).reshape(6, 5) * 1000).astype(np.int32)
    Image.fromarray(a, "I").save(tmp_path / "i.tif")
    np.testing.assert_allclose(read_image(tmp_path / "i.tif"), a / 65535.0, rtol=1e-6)
    b = a - 5000  # negative values: min-max
    Image.fromarray(b, "I").save(tmp_path / "ineg.tif")
    out = read_image(tmp_path / "ineg.tif")
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)


def test_float_tiff(tmp_path):
    inside = np.linspace(0.1, 0.9, 20, dtype=np.float32).reshape(4, 5)
    Image.fromarray(inside, "F").save(tmp_path / "f01.tif")
    np.testing.assert_allclose(read_image(tmp_path / "f01.tif"), inside)  # kept as is
    hu = np.linspace(-1000, 500, 20, dtype=np.float32).reshape(4, 5)
    Image.fromarray(hu, "F").save(tmp_path / "fhu.tif")
    np.testing.assert_allclose(read_image(tmp_path / "fhu.tif"), (hu + 1000) / 1500, atol=1e-6)


def test_float_tiff_nan(tmp_path):
    a = np.ones((4, 4), np.float32)
    a[1, 2] = np.nan
    Image.fromarray(a, "F").save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match=r"nan\.tif.*1 NaN"):
        read_image(tmp_path / "nan.tif")


def test_bilevel(tmp_path):
    a = np.zeros((5, 6), bool)
    a[1:3, 2:4] = True
    Image.fromarray(a).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), a.astype(np.float32))


def test_jpeg_and_cmyk(tmp_path):
    Image.new("RGB", (20, 10), (128, 128, 128)).save(tmp_path / "x.jpeg", quality=95)
    out = read_image(tmp_path / "x.jpeg")
    _check(out, (10, 20))
    assert abs(float(out.mean()) - 128 / 255) < 0.02
    Image.new("CMYK", (6, 4), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    _check(read_image(tmp_path / "cmyk.jpg"), (4, 6))


def test_exif_orientation_applied(tmp_path):
    a = _ramp(6, 10)
    img = Image.fromarray(a, "L")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.png", exif=exif)
    out = read_image(tmp_path / "rot.png")
    assert out.shape == (10, 6)
    np.testing.assert_allclose(out, np.rot90(a, k=-1) / 255.0, atol=1e-6)


def test_hu_window_ignored_for_png(tmp_path):
    a = _ramp()
    Image.fromarray(a, "L").save(tmp_path / "g.png")
    np.testing.assert_allclose(read_image(tmp_path / "g.png", hu_window=(40, 400)), a / 255.0, atol=1e-6)


def test_content_sniffed_not_suffix(tmp_path):
    a = _ramp()
    Image.fromarray(a, "L").save(tmp_path / "real.png")
    (tmp_path / "misnamed.jpg").write_bytes((tmp_path / "real.png").read_bytes())
    (tmp_path / "noext").write_bytes((tmp_path / "real.png").read_bytes())
    np.testing.assert_allclose(read_image(tmp_path / "misnamed.jpg"), a / 255.0, atol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "noext"), a / 255.0, atol=1e-6)


# ------------------------------------------------------------------------------------- DICOM


_write_dicom = write_dicom


def _ct_pixels() -> np.ndarray:
    return np.array([[0, 100, 500], [1000, 1024, 2000]], dtype=np.uint16)


def test_dicom_hu_by_hand(tmp_path):
    p = _write_dicom(tmp_path / "ct.dcm", _ct_pixels(), slope=2.0, intercept=-1024.0)
    out = read_image(p)
    _check(out, (2, 3))
    # HU = pixel * 2 - 1024
    np.testing.assert_allclose(out, [[-1024, -824, -24], [976, 1024, 2976]])


def test_dicom_window_by_hand(tmp_path):
    p = _write_dicom(tmp_path / "ct.dcm", _ct_pixels(), slope=2.0, intercept=-1024.0)
    out = read_image(p, hu_window=(0, 2000))  # window [-1000, 1000]
    np.testing.assert_allclose(out, [[0.0, 176 / 2000, 976 / 2000], [1976 / 2000, 1.0, 1.0]], atol=1e-6)


def test_dicom_sniffed_without_suffix_and_without_preamble(tmp_path):
    p = _write_dicom(tmp_path / "IM0001", _ct_pixels(), intercept=-1000.0)
    np.testing.assert_allclose(read_image(p), _ct_pixels() - 1000.0)
    q = _write_dicom(tmp_path / "raw.dcm", _ct_pixels(), intercept=-1000.0, preamble=False)
    assert q.read_bytes()[128:132] != b"DICM"
    np.testing.assert_allclose(read_image(q), _ct_pixels() - 1000.0)


def test_dicom_monochrome1_inverted(tmp_path):
    px = np.array([[0, 1000], [3000, 4095]], dtype=np.uint16)  # 12 bits stored
    p = _write_dicom(tmp_path / "cxr.dcm", px, photometric="MONOCHROME1")
    windowed = read_image(p, hu_window=(2048, 4096))  # window [0, 4096]
    np.testing.assert_allclose(windowed, 1.0 - px / 4096.0, atol=1e-6)
    raw = read_image(p)  # mirrored in the 12-bit range [0, 4095]
    np.testing.assert_allclose(raw, 4095.0 - px)


def test_dicom_multiframe(tmp_path):
    px = np.stack([np.full((3, 4), v, np.int16) for v in (10, 20, 30)])
    p = _write_dicom(tmp_path / "mf.dcm", px, frames=3)
    assert read_image(p)[0, 0] == 20  # middle frame
    assert read_image(p, slice_index=0)[0, 0] == 10
    with pytest.raises(DataError, match="out of range"):
        read_image(p, slice_index=5)


def test_dicom_without_pixels(tmp_path):
    p = _write_dicom(tmp_path / "nopix.dcm", _ct_pixels(), pixel_data=False)
    with pytest.raises(DataError, match=r"nopix\.dcm.*no pixel data"):
        read_image(p)


def test_dicom_corrupt(tmp_path):
    p = _write_dicom(tmp_path / "cut.dcm", np.zeros((64, 64), np.uint16))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 5000])
    with pytest.raises(DataError, match=r"cut\.dcm"):
        read_image(p)


# ------------------------------------------------------------------------------------- NIfTI


def test_nifti_2d_radiological(tmp_path):
    x, y = 5, 4
    data = np.zeros((x, y), np.float32)
    data[x - 1, y - 1] = 7.0  # patient right (RAS x max), anterior (y max)
    data[0, 0] = 3.0  # patient left, posterior
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "s.nii")
    out = read_image(tmp_path / "s.nii")
    _check(out, (y, x))
    assert out[0, 0] == 7.0  # right-anterior: top-left in radiological display
    assert out[-1, -1] == 3.0
    np.testing.assert_array_equal(out, data.T[::-1, ::-1])


def _volume() -> np.ndarray:
    x, y, z = 6, 5, 4
    vol = np.zeros((x, y, z), np.float32)
    for k in range(z):
        vol[..., k] = 100 * k
        vol[x - 1, y - 1, k] = 100 * k + 1  # right-anterior marker
    return vol


def test_nifti_3d_middle_and_index(tmp_path):
    vol = _volume()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    mid = read_image(tmp_path / "v.nii.gz")
    _check(mid, (5, 6))
    assert mid[1, 1] == 200 and mid[0, 0] == 201  # slice 2 of 4, marker top-left
    assert read_image(tmp_path / "v.nii.gz", slice_index=0)[1, 1] == 0
    assert read_image(tmp_path / "v.nii.gz", slice_index=-1)[1, 1] == 300
    win = read_image(tmp_path / "v.nii.gz", slice_index=1, hu_window=(100, 200))
    assert win[1, 1] == pytest.approx(0.5)


def test_nifti_orientation_independent_of_storage(tmp_path):
    """An LPS-stored, superior->inferior volume reads like the same anatomy stored RAS."""
    vol = _volume()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "ras.nii")
    flipped = vol[::-1, ::-1, ::-1].copy()
    affine = np.diag([-1.0, -1.0, -1.0, 1.0])
    affine[:3, 3] = [5, 4, 3]
    nib.save(nib.Nifti1Image(flipped, affine), tmp_path / "lpi.nii")
    # transposed storage (y, x, z) with a permuted affine
    transposed = vol.transpose(1, 0, 2).copy()
    perm = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    nib.save(nib.Nifti1Image(transposed, perm), tmp_path / "yxz.nii")
    for k in range(4):
        ref = read_image(tmp_path / "ras.nii", slice_index=k)
        np.testing.assert_array_equal(read_image(tmp_path / "lpi.nii", slice_index=k), ref)
        np.testing.assert_array_equal(read_image(tmp_path / "yxz.nii", slice_index=k), ref)


def test_nifti_scaling_applied(tmp_path):
    data = np.array([[[0], [10]], [[20], [30]]], np.int16)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(2.0, -1000.0)
    nib.save(img, tmp_path / "sc.nii")
    out = read_image(tmp_path / "sc.nii")
    assert sorted(out.ravel().tolist()) == [-1000.0, -980.0, -960.0, -940.0]


def test_nifti_4d_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), np.eye(4)), tmp_path / "t.nii")
    with pytest.raises(DataError, match=r"t\.nii.*expected a 2D image or a 3D volume"):
        read_image(tmp_path / "t.nii")


def test_nifti_nan(tmp_path):
    v = np.zeros((3, 3, 3), np.float32)
    v[1, 1, 1] = np.inf
    nib.save(nib.Nifti1Image(v, np.eye(4)), tmp_path / "inf.nii")
    with pytest.raises(DataError, match="1 infinite"):
        read_image(tmp_path / "inf.nii")
    assert np.isfinite(read_image(tmp_path / "inf.nii", slice_index=0)).all()


# --------------------------------------------------------------------------------------- npy


def test_npy(tmp_path):
    a = np.arange(12, dtype=np.int16).reshape(3, 4) - 5
    np.save(tmp_path / "a.npy", a)
    out = read_image(tmp_path / "a.npy")
    _check(out, (3, 4))
    np.testing.assert_array_equal(out, a)  # stored values, no scaling
    np.save(tmp_path / "v.npy", np.stack([a, a + 100, a + 200]))
    np.testing.assert_array_equal(read_image(tmp_path / "v.npy"), a + 100)
    np.testing.assert_array_equal(read_image(tmp_path / "v.npy", slice_index=2), a + 200)


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros(5, np.float32), "1 dimensions"),
    (np.zeros((2, 2, 2, 2), np.float32), "4 dimensions"),
    (np.zeros((0, 4), np.float32), "empty"),
    (np.array([[1.0, np.nan], [np.inf, -np.inf]]), "1 NaN and 2 infinite"),
    (np.array([["a", "b"]]), "dtype"),
])
def test_npy_bad(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=message) as info:
        read_image(tmp_path / "bad.npy")
    assert info.value.path == str(tmp_path / "bad.npy")


def test_npy_object_array_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"obj\.npy"):
        read_image(tmp_path / "obj.npy")


# ------------------------------------------------------------------------------------ errors


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.png: file not found"):
        read_image(tmp_path / "nope.png")


def test_empty_file(tmp_path):
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"e\.png: file is empty \(0 bytes\)"):
        read_image(tmp_path / "e.png")


def test_folder_given(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        read_image(tmp_path)


def test_garbage_png(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(DataError, match=r"junk\.png: not a readable image"):
        read_image(tmp_path / "junk.png")


def test_truncated_png(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.png: corrupt or truncated"):
        read_image(tmp_path / "t.png")


def test_truncated_jpeg(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.jpg"):
        read_image(tmp_path / "t.jpg")


def test_unsupported_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        read_image(tmp_path / "notes.txt")


def test_bad_window():
    with pytest.raises(ConfigError, match="width"):
        apply_hu_window(np.zeros(3), (0, 0))
    with pytest.raises(ConfigError):
        read_image("whatever.dcm", hu_window=(1, 2, 3))  # type: ignore[arg-type]


def test_errors_are_data_errors_only(tmp_path):
    """Every bad input raises DataError (a ValueError), never a deep library exception."""
    bad = {"a.nii": b"\x00" * 400, "b.nii.gz": b"\x1f\x8b" + b"\x00" * 50, "c.npy": b"\x93NUMPY garbage",
           "d.dcm": b"\x00" * 128 + b"DICM" + b"\xff" * 64, "e.tif": b"II*\x00" + b"\x01" * 40,
           "f.bmp": b"BM" + b"\x00" * 20}
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError) as info:
            read_image(tmp_path / name)
        assert name in str(info.value)


# -------------------------------------------------------------------------------------- masks


def test_read_mask_formats(tmp_path):
    m = np.zeros((6, 7), np.uint8)
    m[2:4, 1:5] = 1
    Image.fromarray(m, "L").save(tmp_path / "m01.png")
    Image.fromarray(m * 255, "L").save(tmp_path / "m255.png")
    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[2:4, 1:5, 0] = 255  # red overlay
    Image.fromarray(rgb, "RGB").save(tmp_path / "mrgb.png")
    np.save(tmp_path / "m.npy", m.astype(bool))
    for name in ("m01.png", "m255.png", "mrgb.png", "m.npy"):
        out = read_mask(tmp_path / name)
        assert out.dtype == bool and out.shape == (6, 7)
        np.testing.assert_array_equal(out, m > 0)


def test_read_mask_nifti_same_orientation_as_image(tmp_path):
    vol = _volume()
    nib.save(nib.Nifti1Image(vol, np.diag([-1.0, 1.0, 1.0, 1.0])), tmp_path / "img.nii")
    nib.save(nib.Nifti1Image((vol % 100 == 1).astype(np.uint8), np.diag([-1.0, 1.0, 1.0, 1.0])),
             tmp_path / "msk.nii")
    img, msk = read_image(tmp_path / "img.nii"), read_mask(tmp_path / "msk.nii")
    assert msk.sum() == 1 and img[msk][0] % 100 == 1


def test_read_mask_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_mask(tmp_path / "none.png")
    (tmp_path / "z.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_mask(tmp_path / "z.png")
    np.save(tmp_path / "n.npy", np.array([[0.0, np.nan]]))
    with pytest.raises(DataError, match="NaN"):
        read_mask(tmp_path / "n.npy")


def test_dicom_mask_raw_values(tmp_path):
    p = _write_dicom(tmp_path / "seg.dcm", np.array([[0, 1], [0, 2]], np.uint16), intercept=-1024.0)
    np.testing.assert_array_equal(read_mask(p), [[False, True], [False, True]])


# ---------------------------------------------------------------------------------- real data


def _read_all(paths: list[Path]) -> list[np.ndarray]:
    def one(p: Path) -> tuple[tuple[int, ...], np.dtype, float, float]:
        a = read_image(p)
        return a.shape, a.dtype, float(a.min()), float(a.max())

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, paths))


@pytest.mark.realdata
def test_real_ct_images_read(real_data):
    paths = []
    for name in ("covid_ct_ucsd", "sars_cov2_ct_subset"):
        with open(real_data / name / "labels.csv", newline="") as f:
            paths += [real_data / name / row["path"] for row in csv.DictReader(f)]
    assert len(paths) == 946
    for shape, dtype, lo, hi in _read_all(paths):
        assert len(shape) == 2 and min(shape) > 0
        assert dtype == np.float32
        assert 0.0 <= lo <= hi <= 1.0


@pytest.mark.realdata
def test_real_xray_images_and_masks_read(real_data):
    root = real_data / "cxr_covid_chestxray_subset"
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    results = _read_all([root / r["path"] for r in rows])
    assert len(results) == 198
    assert all(len(s) == 2 and d == np.float32 and 0.0 <= lo <= hi <= 1.0 for s, d, lo, hi in results)
    masks = [root / r["lungVAE_mask"] for r in rows if r["lungVAE_mask"]]
    assert masks
    for m in masks[:20]:
        out = read_mask(m)
        assert out.dtype == bool and out.ndim == 2 and out.any()


# ------------------------------------------------------------------------------ hostile input


def _png_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares ``width x height`` RGBA pixels (the data is never reached)."""
    import struct
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_pixel_cap_checked_before_decoding(tmp_path):
    import time

    from chestdx.io.limits import MAX_IMAGE_PIXELS

    assert MAX_IMAGE_PIXELS == 64 * 1024 * 1024
    (tmp_path / "bomb.png").write_bytes(_png_with_size(50000, 3500))
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"bomb\.png: image \(50000 x 3500\) holds 175,000,000 pixels, more than "
                                        r"the limit of 67,108,864"):
        read_image(tmp_path / "bomb.png")
    assert time.perf_counter() - t0 < 0.5
    Image.fromarray(_ramp(10, 10)).save(tmp_path / "small.png")
    with pytest.raises(DataError, match="100 pixels, more than the limit of 99"):
        read_image(tmp_path / "small.png", max_pixels=99)
    with pytest.raises(DataError, match="limit of 99"):
        read_mask(tmp_path / "small.png", max_pixels=99)
    assert read_image(tmp_path / "small.png", max_pixels=100).shape == (10, 10)


def test_pixel_cap_dicom_nifti_npy(tmp_path):
    p = _write_dicom(tmp_path / "ct.dcm", np.zeros((8, 8), np.uint16))
    with pytest.raises(DataError, match=r"ct\.dcm: DICOM image .* 64 pixels, more than the limit of 63"):
        read_image(p, max_pixels=63)
    frames = np.zeros((5, 4, 4), np.uint16)
    mf = _write_dicom(tmp_path / "mf.dcm", frames, frames=5)
    assert read_image(mf, max_pixels=16).shape == (4, 4)  # one frame decoded, not all five
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 40), np.float32), np.eye(4)), tmp_path / "v.nii")
    assert read_image(tmp_path / "v.nii", max_pixels=30).shape == (5, 6)  # one slice read
    with pytest.raises(DataError, match="limit of 29"):
        read_image(tmp_path / "v.nii", max_pixels=29)
    np.save(tmp_path / "s.npy", np.zeros((50, 3, 4), np.float32))
    assert read_image(tmp_path / "s.npy", max_pixels=12).shape == (3, 4)
    with pytest.raises(DataError, match="limit of 11"):
        read_image(tmp_path / "s.npy", max_pixels=11)


def test_npy_header_read_before_the_data(tmp_path):
    data = np.zeros((2, 2), np.float32)
    np.save(tmp_path / "a.npy", data)
    raw = (tmp_path / "a.npy").read_bytes().replace(b"(2, 2)", b"(9, 99)")  # same header length
    (tmp_path / "lie.npy").write_bytes(raw)
    with pytest.raises(DataError, match=r"lie\.npy: truncated \.npy array"):
        read_image(tmp_path / "lie.npy")


def _with_text_tag(path: Path, keyword: str, value: str) -> Path:
    """Rewrite ``path`` with ``keyword`` stored as text (VR LO), whatever its VR should be."""
    import pydicom
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement

    ds = pydicom.dcmread(path)
    tag = tag_for_keyword(keyword)
    ds[tag] = DataElement(tag, "LO", value)
    out = path.with_name(f"{keyword}.dcm")
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize("keyword", ["NumberOfFrames", "SamplesPerPixel", "BitsStored", "PixelRepresentation",
                                     "Rows", "RescaleSlope"])
@pytest.mark.parametrize("value", ["abc", "1e400", "2.5", "1\\2"])
def test_non_numeric_dicom_tags_name_the_tag(tmp_path, keyword, value):
    base = _write_dicom(tmp_path / "base.dcm", np.zeros((3, 3, 3), np.uint16), frames=3,
                        photometric="MONOCHROME1")
    p = _with_text_tag(base, keyword, value)
    if keyword == "RescaleSlope" and value == "2.5":  # a number where any number will do
        assert read_image(p).shape == (3, 3)
        return
    with pytest.raises(DataError, match=rf"{keyword}\.dcm: DICOM tag {keyword} (is not|has 2 values)"):
        read_image(p)


def test_dcm_that_is_not_dicom_refused_before_pydicom(tmp_path):
    import time

    (tmp_path / "zeros.dcm").write_bytes(bytes(2_000_000))
    (tmp_path / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10_000)
    for name in ("zeros.dcm", "fake.dcm"):
        t0 = time.perf_counter()
        with pytest.raises(DataError, match=rf"{name}: not a DICOM file"):
            read_image(tmp_path / name)
        assert time.perf_counter() - t0 < 0.2  # pydicom's force=True would take seconds


def test_unexpected_errors_become_data_errors(tmp_path, monkeypatch):
    import chestdx.io.images as readers

    Image.fromarray(_ramp()).save(tmp_path / "g.png")
    for exc in (ZeroDivisionError("boom"), MemoryError(), RecursionError("deep")):
        def broken(*args, exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(readers, "_read_any", broken)
        with pytest.raises(DataError, match=rf"g\.png: .*{type(exc).__name__}") as info:
            read_image(tmp_path / "g.png")
        assert info.value.path == str(tmp_path / "g.png") and info.value.__cause__ is exc
