"""Turn whatever a user hands the predictor into a study: one 2D image or one 3D scan.

Accepted: a path (image file, DICOM file, NIfTI, ``.npy``, DICOM-series folder, folder of slice
images, zip of a series), a numpy array (``(H, W)`` image, ``(D, H, W)`` scan), a PIL image, or raw
bytes (the web service), whose kind is sniffed from the content, never from a name.
"""

from __future__ import annotations

import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chestdx.errors import DataError

__all__ = ["Study", "load_study", "sniff_bytes", "study_from_bytes", "SUPPORTED_UPLOADS"]

#: What the web service accepts, by sniffed content.
SUPPORTED_UPLOADS = ("png", "jpeg", "tiff", "bmp", "dicom", "nifti", "nifti-gz", "zip", "npy")


@dataclass
class Study:
    """One thing to answer.

    Attributes:
        name: the file name (or ``array`` / ``image`` for in-memory inputs).
        array: ``(H, W)`` for an image, ``(D, H, W)`` for a scan (float32; HU window applied where
            the recipe has one and the input carries HU).
        kind: ``image`` or ``volume``.
        meta: reader details (series, spacing, slice files) for volumes.
    """

    name: str
    array: np.ndarray
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)


def sniff_bytes(head: bytes) -> str | None:
    """The kind of uploaded content from its first bytes (at least 548): one of
    :data:`SUPPORTED_UPLOADS`, or None when it is none of them."""
    from chestdx.data.readers import sniff_head

    kind = sniff_head(head)
    if kind == "gzip":
        return "nifti-gz"  # the only gzip content accepted; the reader refuses other gzip files
    if kind in SUPPORTED_UPLOADS:
        return kind
    # DICOM written without the 128-byte preamble: starts with a group 0x0008 (or 0x0002) tag
    if len(head) >= 4 and head[:2] in (b"\x08\x00", b"\x02\x00") and head[2:4] in (
            b"\x05\x00", b"\x16\x00", b"\x18\x00", b"\x00\x00", b"\x01\x00"):
        return "dicom"
    return None


_SUFFIX = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "bmp": ".bmp", "dicom": ".dcm", "nifti": ".nii",
           "nifti-gz": ".nii.gz", "zip": ".zip", "npy": ".npy"}


def load_study(x: Any, hu_window: tuple[float, float] | None = None, name: str | None = None) -> Study:
    """Read ``x`` into a :class:`Study`.

    Args:
        x: a path, a numpy array ``(H, W)`` / ``(D, H, W)`` (``(H, W, 3)`` RGB is turned grey), or a
            PIL image.
        hu_window: the recipe's ``(level, width)``, applied to DICOM / NIfTI / ``.npy`` files.
        name: what to call it in answers (default: the file name).

    Raises:
        DataError: unreadable or unsupported input, naming it.
    """
    from chestdx.data.readers import apply_hu_window, read_image
    from chestdx.data.volumes import is_volume_input, read_volume

    if isinstance(x, (str, Path)):
        p = Path(x)
        if not p.exists():
            raise DataError(p, "not found")
        if is_volume_input(p):
            vol, meta = read_volume(p, hu_window=hu_window)
            return Study(name or p.name, vol, "volume", meta.to_json())
        return Study(name or p.name, read_image(p, hu_window=hu_window), "image")
    try:
        from PIL import Image

        if isinstance(x, Image.Image):
            from chestdx.data.readers import _pil_array

            return Study(name or "image", _pil_array(x, Path(name or "image"), scale=True), "image")
    except ImportError:  # pragma: no cover - PIL is a dependency
        pass
    if isinstance(x, np.ndarray):
        label = name or "array"
        if x.dtype.kind not in "biuf":
            raise DataError(label, f"array has dtype {x.dtype}; expected numbers")
        arr = x.astype(np.float32)
        if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4:
            arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
        if arr.ndim not in (2, 3) or arr.size == 0:
            raise DataError(label, f"array has shape {tuple(x.shape)}; expected (H, W) or (D, H, W)")
        if not np.isfinite(arr).all():
            raise DataError(label, "array holds NaN or infinite values")
        if hu_window is not None and (arr.min() < 0 or arr.max() > 1):
            arr = apply_hu_window(arr, hu_window)
        return Study(label, arr, "image" if arr.ndim == 2 else "volume")
    raise DataError(str(name or type(x).__name__), f"cannot read a {type(x).__name__}; give a path, a numpy "
                    "array or a PIL image")


def study_from_bytes(data: bytes, filename: str, hu_window: tuple[float, float] | None = None,
                     max_unzipped_bytes: int | None = None) -> Study:
    """Read uploaded content into a :class:`Study`: sniffed, written to a private temporary folder
    that is removed before returning (nothing is left on disk).

    Raises:
        DataError: empty, unsupported (by content) or unreadable, naming ``filename``.
    """
    from chestdx.data.volumes import MAX_UNZIPPED_BYTES, read_volume

    if not data:
        raise DataError(filename, "empty upload")
    kind = sniff_bytes(data[:1024])
    if kind is None:
        raise UnsupportedType(filename, "unsupported file type (by content): send PNG, JPEG, TIFF, BMP, DICOM, "
                              "NIfTI, .npy or a zip of a DICOM series")
    with tempfile.TemporaryDirectory(prefix="chestdx-upload-") as tmp:
        p = Path(tmp) / f"upload{_SUFFIX[kind]}"
        p.write_bytes(data)
        try:
            if kind == "zip":
                if not zipfile.is_zipfile(p):
                    raise DataError(p, "corrupt zip file")
                vol, meta = read_volume(p, hu_window=hu_window,
                                        max_unzipped_bytes=max_unzipped_bytes or MAX_UNZIPPED_BYTES)
                study = Study(filename, vol, "volume", meta.to_json())
            else:
                study = load_study(p, hu_window=hu_window, name=filename)
        except DataError as e:  # name the upload, not the temporary file
            raise DataError(filename, e.problem.replace(str(tmp), "")) from None
        study.meta["source"] = filename
    return study


class UnsupportedType(DataError):
    """The content is not a kind chestdx reads (answered 415 by the web service)."""


def _holds_dicom(folder: Path) -> bool:
    from chestdx.data.readers import _kind

    for f in folder.iterdir():
        if f.is_file() and not f.name.startswith("."):
            try:
                if f.stat().st_size > 0 and _kind(f) == "dicom":
                    return True
            except (DataError, OSError):
                continue
    return False


def expand_inputs(inputs: Any, scan_folders: bool = False) -> list[str]:
    """The things to answer among ``inputs`` (paths).

    - a file (image, DICOM, NIfTI, ``.npy``, zip): itself;
    - a folder holding DICOM files: one scan (the series); its subfolders are searched too, each
      DICOM folder becoming one scan;
    - other folders: each image file inside (recursively) on its own, or, with ``scan_folders``,
      each folder of slice images as one scan (COV19-CT-DB layout).

    Raises:
        DataError: a path that does not exist, or a folder with nothing to answer.
    """
    from chestdx.data.readers import is_image_file

    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise DataError(p, "not found")
        if not p.is_dir():
            out.append(str(p))
            continue
        found: list[str] = []
        for folder in [p, *sorted(d for d in p.rglob("*") if d.is_dir())]:
            files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
            if not files:
                continue
            if _holds_dicom(folder):
                found.append(str(folder))
            elif scan_folders and any(is_image_file(f) for f in files):
                found.append(str(folder))
            else:
                found += [str(f) for f in files if is_image_file(f) or zipfile.is_zipfile(f)]
        if not found:
            raise DataError(p, "folder holds no image files, DICOM series or zips")
        out += found
    return out
