"""DICOM: tags read without surprises, one frame decoded to float32 ``(H, W)``.

Every tag read goes through :func:`tag_number` / :func:`tag_numbers` / :func:`tag_str`, which turn
a missing, empty, non-numeric or out-of-range value into a :class:`~chestdx.errors.DataError`
naming the file and the tag. :func:`dicom_to_array` decodes one frame (only that frame where pydicom
>= 3 can), checks its declared size before decoding, and returns HU (``pixel * RescaleSlope +
RescaleIntercept``), a windowed image, or raw values for masks; ``MONOCHROME1`` is inverted so
that a larger value is always brighter (see :mod:`chestdx.io.images`).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from chestdx.errors import DataError
from chestdx.io.formats import (
    NOT_DICOM,
    apply_hu_window,
    check_array,
    looks_like_dicom,
    luma,
    pick_slice,
    read_head,
)
from chestdx.io.limits import MAX_IMAGE_PIXELS, check_size

__all__ = ["dcmread", "dicom_geometry", "dicom_to_array", "read_dicom", "tag_number", "tag_numbers", "tag_str"]


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def _tag_value(ds: Any, path: Path, keyword: str) -> Any:
    """The value of DICOM tag ``keyword`` (None when absent or empty); reading it may not raise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Invalid value for VR IS": refused below with the tag's name
            value = ds.get(keyword, None)
    except Exception as e:  # noqa: BLE001 - pydicom converts raw values on access
        raise DataError(path, f"DICOM tag {keyword} cannot be read ({type(e).__name__}: {e})") from None
    if value is None:
        return None
    if isinstance(value, bytes) and not value.strip(b" \x00"):
        return None
    if isinstance(value, str) and not value.strip(" \x00"):
        return None
    return value


def _to_number(path: Path, keyword: str, value: Any, integer: bool) -> float | int:
    if isinstance(value, (bool, np.bool_)):
        raise DataError(path, f"DICOM tag {keyword} is not a number ({_short(value)})")
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DataError(path, f"DICOM tag {keyword} is not a number ({_short(value)})") from None
    if not math.isfinite(x):
        raise DataError(path, f"DICOM tag {keyword} is not a finite number ({_short(value)})")
    if integer:
        if x != math.floor(x):
            raise DataError(path, f"DICOM tag {keyword} is not a whole number ({_short(value)})")
        return int(value) if isinstance(value, (int, np.integer)) else int(x)
    return x


def tag_number(ds: Any, path: Path, keyword: str, default: Any, *, integer: bool = False,
                minimum: float | None = None) -> Any:
    """Tag ``keyword`` as one number (``int`` when ``integer``), ``default`` where absent or empty.

    Raises:
        DataError: the value is not one finite number (a string such as ``"abc"``, several values),
            is not whole where ``integer``, or is below ``minimum``. The message names the tag.
    """
    value = _tag_value(ds, path, keyword)
    if value is None:
        return default
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        if len(value) != 1:
            raise DataError(path, f"DICOM tag {keyword} has {len(value)} values; expected one number")
        value = value[0]
    x = _to_number(path, keyword, value, integer)
    if minimum is not None and x < minimum:
        raise DataError(path, f"DICOM tag {keyword} is {x}; expected at least {minimum}")
    return x


def tag_numbers(ds: Any, path: Path, keyword: str, n: int) -> list[float] | None:
    """Tag ``keyword`` as ``n`` finite numbers, or None where absent or empty.

    Raises:
        DataError: present but not ``n`` numbers. The message names the tag.
    """
    value = _tag_value(ds, path, keyword)
    if value is None:
        return None
    values = [value] if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") else list(value)
    if len(values) != n:
        raise DataError(path, f"DICOM tag {keyword} has {len(values)} values ({_short(value)}); expected {n}")
    return [float(_to_number(path, keyword, v, integer=False)) for v in values]


def tag_str(ds: Any, path: Path, keyword: str, default: str) -> str:
    """Tag ``keyword`` as ``str(value)``, ``default`` where absent or empty.

    Raises:
        DataError: the tag cannot be read; the message names it.
    """
    value = _tag_value(ds, path, keyword)
    if value is None:
        return default
    try:
        return str(value)
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"DICOM tag {keyword} cannot be read ({type(e).__name__}: {e})") from None


def dicom_geometry(ds: Any, path: Path) -> tuple[int, int, int, int]:
    """``(rows, columns, frames, samples_per_pixel)`` from a DICOM header (frames and samples are at
    least 1; a missing or zero ``NumberOfFrames`` / ``SamplesPerPixel`` counts as 1).

    Raises:
        DataError: a missing ``Rows`` / ``Columns`` or any of the four that is not a whole number.
    """
    rows = tag_number(ds, path, "Rows", None, integer=True, minimum=0)
    cols = tag_number(ds, path, "Columns", None, integer=True, minimum=0)
    if rows is None or cols is None:
        raise DataError(path, "DICOM image has no Rows / Columns")
    frames = tag_number(ds, path, "NumberOfFrames", 1, integer=True, minimum=0) or 1
    spp = tag_number(ds, path, "SamplesPerPixel", 1, integer=True, minimum=0) or 1
    return int(rows), int(cols), int(frames), int(spp)


def dcmread(path: Path, stop_before_pixels: bool = False) -> Any:
    """``pydicom.dcmread`` with every failure turned into a :class:`DataError` naming ``path``.

    Content that does not start like DICOM (:func:`looks_like_dicom`) is refused before pydicom
    force-parses it.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        head = read_head(path)
    except OSError as e:
        raise DataError(path, f"cannot read file ({e.strerror or e})") from None
    if not looks_like_dicom(head):
        raise DataError(path, NOT_DICOM)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # corrupt files fail below with a DataError instead
            return pydicom.dcmread(str(path), force=True, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as e:
        raise DataError(path, f"not a valid DICOM file ({e})") from None
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds on corrupt input
        raise DataError(path, f"corrupt DICOM file ({type(e).__name__}: {e})") from None


def read_dicom(path: Path, hu_window: tuple[float, float] | None, slice_index: int | None,
               raw: bool, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """One frame of the DICOM file ``path`` as float32 ``(H, W)`` (:func:`dcmread`, then
    :func:`dicom_to_array`)."""
    return dicom_to_array(dcmread(path), path, hu_window, slice_index, raw, max_pixels)


def _decode_frame(ds: Any, path: Path, frames: int, k: int | None) -> np.ndarray:
    """Decode frame ``k`` of ``ds`` (all of it where ``k`` is None): ``(rows, cols[, samples])``.
    Only that frame is decoded where pydicom can (>= 3); older pydicom decodes all and picks."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if k is not None and hasattr(ds, "pixel_array_options"):
                ds.pixel_array_options(index=k)
                try:
                    return np.asarray(ds.pixel_array)
                finally:
                    ds.pixel_array_options(index=None)
            pixels = np.asarray(ds.pixel_array)
    except Exception as e:  # noqa: BLE001 - pydicom's handlers raise ValueError, RuntimeError, ...
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = ""
        try:
            if ts is not None and getattr(ts, "is_compressed", False):
                hint = f"; transfer syntax {ts.name} is compressed: install pylibjpeg or gdcm to decode it"
        except Exception:  # noqa: BLE001
            pass
        raise DataError(path, f"cannot decode DICOM pixel data ({type(e).__name__}: {e}){hint}") from None
    if k is not None and frames > 1:
        if pixels.ndim < 3 or pixels.shape[0] != frames:
            raise DataError(path, f"DICOM pixel data has shape {tuple(pixels.shape)}; expected {frames} frames")
        pixels = pixels[k]
    return pixels


def dicom_to_array(ds: Any, path: Path, hu_window: tuple[float, float] | None, slice_index: int | None,
                    raw: bool, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """One frame of a read DICOM dataset as float32 ``(H, W)`` (HU, or windowed, or raw for masks).

    The frame's ``Rows * Columns * SamplesPerPixel`` is checked against ``max_pixels`` before
    anything is decoded (pydicom < 3: times ``NumberOfFrames``, as it decodes every frame).
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(path, "DICOM file holds no pixel data (not an image object?)")
    rows, cols, n_frames, samples_per_pixel = dicom_geometry(ds, path)
    k = pick_slice(path, n_frames, slice_index, "frame") if n_frames > 1 else None
    decoded_frames = 1 if hasattr(ds, "pixel_array_options") else n_frames  # pydicom < 3 decodes all
    check_size(path, rows * cols * samples_per_pixel * decoded_frames, max_pixels,
               f"DICOM image ({decoded_frames} x {rows} x {cols} x {samples_per_pixel} samples)")
    for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):  # pydicom reads them
        tag_number(ds, path, keyword, None, integer=True, minimum=0)
    pixels = _decode_frame(ds, path, n_frames, k)

    photometric = tag_str(ds, path, "PhotometricInterpretation", "MONOCHROME2").upper().strip()
    if samples_per_pixel > 1 or (pixels.ndim == 3 and pixels.shape[-1] in (3, 4)):
        if pixels.ndim != 3 or pixels.shape[-1] < 3:
            raise DataError(path, f"DICOM colour pixel data has shape {tuple(pixels.shape)}; expected (H, W, 3)")
        if photometric.startswith("YBR"):
            try:
                try:
                    from pydicom.pixels import convert_color_space
                except ImportError:  # pydicom < 3
                    from pydicom.pixel_data_handlers.util import convert_color_space  # type: ignore
                pixels = convert_color_space(pixels, photometric, "RGB")
            except Exception as e:  # noqa: BLE001
                raise DataError(path, f"cannot convert DICOM colour space {photometric!r} "
                                f"({type(e).__name__}: {e})") from None
        pixels = luma(pixels[..., :3])
    if pixels.ndim != 2:
        raise DataError(path, f"DICOM pixel data has shape {tuple(pixels.shape)}; expected one 2D image")
    if raw:
        return check_array(path, pixels.astype(np.float32), "mask")

    slope = tag_number(ds, path, "RescaleSlope", 1.0) or 1.0
    intercept = tag_number(ds, path, "RescaleIntercept", 0.0) or 0.0
    hu = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    check_array(path, hu)
    if photometric == "MONOCHROME1":
        if hu_window is not None:
            return (1.0 - apply_hu_window(hu, hu_window)).astype(np.float32)
        bits = (tag_number(ds, path, "BitsStored", None, integer=True)
                or tag_number(ds, path, "BitsAllocated", None, integer=True) or 16)
        if not 1 <= bits <= 64:
            raise DataError(path, f"DICOM tag BitsStored is {bits}; expected 1 to 64")
        if (tag_number(ds, path, "PixelRepresentation", 0, integer=True) or 0) == 1:
            raw_lo, raw_hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        else:
            raw_lo, raw_hi = 0, 2**bits - 1
        lo, hi = sorted((raw_lo * slope + intercept, raw_hi * slope + intercept))
        return check_array(path, (np.float32(lo + hi) - hu).astype(np.float32))
    if hu_window is not None:
        return apply_hu_window(hu, hu_window)
    return hu

