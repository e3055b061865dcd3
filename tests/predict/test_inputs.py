"""chestdx.predict.inputs on hostile input: uploads name the user's file, limits are passed through,
odd arguments are typed errors."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from chestdx.errors import ConfigError, DataError
from chestdx.predict.inputs import UnsupportedType, expand_inputs, load_study, sniff_bytes, study_from_bytes
from tests.dicom_utils import write_series


def _png(h: int = 10, w: int = 10) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _series_zip(tmp_path) -> bytes:
    files = write_series(tmp_path / "s", np.zeros((3, 4, 5), np.uint16))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f.name)
    return buf.getvalue()


def test_limits_passed_through(tmp_path):
    with pytest.raises(DataError, match=r"^scan\.png: .*100 pixels, more than the limit of 99"):
        study_from_bytes(_png(), "scan.png", max_pixels=99)
    assert study_from_bytes(_png(), "scan.png", max_pixels=100).array.shape == (10, 10)
    data = _series_zip(tmp_path)
    with pytest.raises(DataError, match=r"^study\.zip: DICOM series \(3 files\) holds 60 voxels"):
        study_from_bytes(data, "study.zip", max_voxels=59)
    with pytest.raises(DataError, match=r"^study\.zip: zip holds 3 files, more than the limit of 2"):
        study_from_bytes(data, "study.zip", max_zip_members=2)
    with pytest.raises(DataError, match=r"^study\.zip: zip unpacks to"):
        study_from_bytes(data, "study.zip", None, 1000)  # max_unzipped_bytes, positional as before
    assert study_from_bytes(data, "study.zip").array.shape == (3, 4, 5)
    with pytest.raises(ConfigError):  # the caller's window, not the upload, is wrong
        study_from_bytes(_png(), "scan.png", (1, 2, 3))  # type: ignore[arg-type]
    arr = np.zeros((3, 4, 5), np.float32)
    with pytest.raises(DataError, match="60 voxels, more than the limit of 59"):
        load_study(arr, max_voxels=59)


def test_upload_errors_name_the_upload_not_a_temporary_file(tmp_path):
    data = bytearray(_series_zip(tmp_path))
    start = 30 + int.from_bytes(data[26:28], "little")
    data[start + 5:start + 25] = b"\xff" * 20  # corrupt the first member's deflate stream
    with pytest.raises(DataError) as info:
        study_from_bytes(bytes(data), "my study.zip")
    assert info.value.path == "my study.zip" and "zip member" in info.value.problem
    assert "chestdx-" not in str(info.value) and "/tmp" not in str(info.value)
    nifti = b"\x1f\x8b" + bytes(200)  # gzip magic, corrupt stream
    with pytest.raises(DataError) as info:
        study_from_bytes(nifti, "head.nii.gz")
    assert info.value.path == "head.nii.gz" and "chestdx-" not in str(info.value)


def test_unsupported_and_odd_uploads():
    with pytest.raises(UnsupportedType, match="unsupported file type"):
        study_from_bytes(b"hello" * 200, "notes.png")
    with pytest.raises(DataError, match="empty upload"):
        study_from_bytes(b"", "x.png")
    with pytest.raises(DataError, match=r"^x\.png: "):
        study_from_bytes("text, not bytes", "x.png")  # type: ignore[arg-type]
    assert study_from_bytes(bytearray(_png()), "x.png").kind == "image"
    assert sniff_bytes(bytes(8192)) is None  # zeros are not DICOM without a preamble


def test_load_study_and_expand_inputs_odd_arguments(tmp_path):
    with pytest.raises(DataError, match="no file given"):
        load_study("")
    with pytest.raises(DataError, match="cannot read a dict"):
        load_study({"a": 1})
    for bad in (5, None):
        with pytest.raises(DataError, match="expected paths"):
            expand_inputs(bad)
    with pytest.raises(DataError, match="no path given"):
        expand_inputs([""])
    with pytest.raises(DataError, match="expected a path, got a int"):
        expand_inputs([3])
    (tmp_path / "a.png").write_bytes(_png())
    assert expand_inputs(str(tmp_path / "a.png")) == [str(tmp_path / "a.png")]
