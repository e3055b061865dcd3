"""Read one chest image (PNG/JPEG/TIFF/BMP, DICOM, NIfTI, ``.npy``) or lesion mask as a 2D array.

Every reader returns a float32 ``(H, W)`` array (masks: bool ``(H, W)``) and turns every failure
(missing, empty, corrupt, wrong shape, NaN) into :class:`chestdx.errors.DataError` naming the file.

Choices made where the inputs are ambiguous:

- Colour images become grey by ITU-R 601 luma (``0.299 R + 0.587 G + 0.114 B``), computed in float
  (no rounding to 8 bits). Images with alpha (``RGBA``, ``LA``, palette with transparency) are
  **composited on black**: ``grey * alpha``; fully transparent pixels become 0 (air). Where alpha
  is 255 everywhere (all the real data sets checked) this equals dropping alpha.
- 8-bit images are divided by 255, 16-bit (``I;16*``) by 65535, 32-bit integer (``I``) by 65535
  when its values lie in ``[0, 65535]`` and min-max scaled otherwise; float (``F``) images are kept
  when already inside ``[0, 1]`` and min-max scaled otherwise; bilevel (``1``) gives 0/1.
  The EXIF orientation tag is applied.
- DICOM: ``HU = pixel * RescaleSlope + RescaleIntercept``. Without ``hu_window`` the HU values are
  returned; with ``hu_window=(level, width)`` they are clipped to ``[level - width/2,
  level + width/2]`` and scaled to ``[0, 1]``. ``MONOCHROME1`` (some X-rays) is inverted so that a
  larger value is always brighter: ``1 - windowed`` with a window, and without one the values are
  mirrored inside the range the stored bits allow (``lo + hi - v``). Multi-frame DICOM: frame
  ``slice_index`` (default the middle one).
- NIfTI: the volume is brought to the closest RAS+ orientation; the axial slice ``slice_index``
  (counted from inferior to superior, default the middle one) is returned in **radiological
  display convention**: rows run anterior (top) to posterior (bottom), columns run from the
  patient's right (left of the picture) to the patient's left, as a radiologist sees a DICOM axial
  slice. Intensities are the stored (scaled) values, e.g. HU for CT; ``hu_window`` applies.
- ``.npy``: 2D ``(H, W)`` arrays, or ``(D, H, W)`` stacks with ``slice_index`` (default middle);
  values are returned as stored (no scaling); ``hu_window`` applies.
- ``hu_window`` is ignored for PNG/JPEG/TIFF/BMP (they carry no HU values).

Hostile input: every reader raises only :class:`chestdx.errors.ChestdxError` (normally
:class:`DataError`), whatever the bytes. The size an image declares (PIL header ``width * height``,
DICOM ``Rows * Columns * SamplesPerPixel`` per decoded frame, NIfTI / ``.npy`` header shape of the
slice read) is checked against ``max_pixels`` (default :data:`chestdx.data.limits.MAX_IMAGE_PIXELS`)
**before** anything is decoded. A file is only handed to pydicom when it looks like DICOM: a
``DICM`` marker at byte 128 followed by the file meta group, or (no preamble) a group 0x0002 /
0x0008 tag at byte 0; anything else (e.g. a ``.dcm`` of zeros, which pydicom's ``force=True`` would
parse at about a second per MB) is refused as "not a DICOM file".
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from chestdx.data.limits import MAX_IMAGE_PIXELS, check_size, guard_reader
from chestdx.errors import ConfigError, DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "PIL_SUFFIXES",
    "DICOM_SUFFIXES",
    "NIFTI_SUFFIXES",
    "NUMPY_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "is_image_file",
    "looks_like_dicom",
    "apply_hu_window",
    "read_image",
    "read_mask",
]

PIL_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
NUMPY_SUFFIXES: tuple[str, ...] = (".npy",)
#: Lower-case suffixes of every file kind :func:`read_image` reads (``.nii.gz`` is a double suffix).
IMAGE_SUFFIXES: tuple[str, ...] = PIL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES + NUMPY_SUFFIXES

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def is_image_file(path: str | Path) -> bool:
    """True where the file name ends in one of :data:`IMAGE_SUFFIXES` (and is not hidden)."""
    p = Path(path)
    return not p.name.startswith(".") and _suffix(p) in IMAGE_SUFFIXES


# --------------------------------------------------------------------------------------- sniffing


def sniff_head(head: bytes) -> str | None:
    """The kind of some content from its first bytes (548 suffice): ``dicom``, ``npy``, ``gzip``,
    ``png``, ``jpeg``, ``tiff``, ``bmp``, ``gif``, ``zip``, ``nifti`` or None."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    for magic, kind in ((b"\x93NUMPY", "npy"), (b"\x1f\x8b", "gzip"), (b"\x89PNG\r\n\x1a\n", "png"),
                        (b"\xff\xd8\xff", "jpeg"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"II+\x00", "tiff"),
                        (b"MM\x00+", "tiff"), (b"BM", "bmp"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
                        (b"PK\x03\x04", "zip")):
        if head.startswith(magic):
            return kind
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    if len(head) >= 8 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
        return "nifti"
    return None


_PIL_KINDS = ("png", "jpeg", "tiff", "bmp", "gif")

#: The two-letter value representations of DICOM (explicit VR encodings).
_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
                 b"UN UR US UT UV".split())


def _raw_dicom_start(head: bytes) -> bool:
    """Whether ``head`` starts like a DICOM data set written without the 128-byte preamble: a group
    0x0002 or 0x0008 tag (little endian) followed by an explicit VR or a plausible implicit length."""
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    if head[4:6] in _VRS:
        return True
    length = int.from_bytes(head[4:8], "little")
    return length < 0x10000 or length == 0xFFFFFFFF


def looks_like_dicom(head: bytes) -> bool:
    """Cheap test, before pydicom parses anything, that content starting with ``head`` (at least 134
    bytes where the file has them) is DICOM: ``DICM`` at byte 128 followed by the file meta group
    (0x0002), or a preamble-less data set starting with a group 0x0002 / 0x0008 tag."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return head[132:134] == b"\x02\x00"
    return _raw_dicom_start(head)


def _head(path: Path, n: int = 1024) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _sniff(path: Path) -> str | None:
    """Guess the file kind from its first bytes: pil / dicom / nifti / npy / gzip, or None."""
    kind = sniff_head(_head(path, 548))
    return "pil" if kind in _PIL_KINDS else (None if kind == "zip" else kind)


_NOT_DICOM = "not a DICOM file (no DICM preamble and no DICOM tag at the start)"


def _kind(path: Path) -> str:
    """The reader for ``path`` by content (then suffix): pil / dicom / nifti / npy / unknown.

    Raises:
        DataError: a gzip file that is not ``.nii.gz``, or a file that claims to be DICOM (marker or
            suffix) but does not start like one (refused before pydicom force-parses it).
        OSError: the file cannot be read.
    """
    head = _head(path)
    kind = sniff_head(head)
    sniffed = "pil" if kind in _PIL_KINDS else (None if kind == "zip" else kind)
    suffix = _suffix(path)
    if sniffed == "gzip":
        if suffix == ".nii.gz" or path.name.lower().endswith(".gz"):
            return "nifti"
        raise DataError(path, "gzip-compressed file that is not a .nii.gz NIfTI volume")
    if sniffed == "dicom" and not looks_like_dicom(head):
        raise DataError(path, "not a DICOM file (DICM marker without the file meta group after it)")
    if sniffed is not None:
        return sniffed
    if _raw_dicom_start(head):
        return "dicom"  # DICOM without the 128-byte preamble
    if suffix in DICOM_SUFFIXES:
        raise DataError(path, _NOT_DICOM)
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in NUMPY_SUFFIXES:
        return "npy"
    if suffix in PIL_SUFFIXES:
        return "pil"  # unknown magic but an image suffix: let PIL try (and fail with a message)
    return "unknown"


# -------------------------------------------------------------------------------------- helpers


def apply_hu_window(values: np.ndarray, hu_window: tuple[float, float]) -> np.ndarray:
    """Clip ``values`` to ``[level - width/2, level + width/2]`` and scale to ``[0, 1]``.

    Args:
        values: HU values, any shape.
        hu_window: ``(level, width)``, e.g. ``(-600, 1500)`` for lung.

    Returns:
        float32 array of the same shape in ``[0, 1]``.

    Raises:
        ConfigError: the window is not two numbers or its width is not positive.
    """
    try:
        level, width = (float(v) for v in hu_window)
    except (TypeError, ValueError):
        raise ConfigError(f"hu_window must be (level, width), got {hu_window!r}") from None
    if not np.isfinite(level) or not np.isfinite(width) or width <= 0:
        raise ConfigError(f"hu_window width must be a positive number, got {hu_window!r}")
    lo = level - width / 2.0
    out = (np.clip(values.astype(np.float32), lo, lo + width) - np.float32(lo)) / np.float32(width)
    return out.astype(np.float32, copy=False)


def _check_array(path: Path, arr: np.ndarray, what: str = "image", ndim: int = 2) -> np.ndarray:
    if arr.ndim != ndim and ndim == 3:
        raise DataError(path, f"{what} has {arr.ndim} dimensions {tuple(arr.shape)}; expected (D, H, W)")
    if arr.ndim != ndim:
        raise DataError(path, f"{what} has {arr.ndim} dimensions {tuple(arr.shape)}; expected a 2D (H, W) {what}")
    if arr.size == 0:
        raise DataError(path, f"{what} is empty (shape {tuple(arr.shape)})")
    if arr.dtype.kind in "fc":
        finite = np.isfinite(arr)
        if not finite.all():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(arr.size - finite.sum() - n_nan)
            raise DataError(path, f"{what} holds {n_nan} NaN and {n_inf} infinite values")
    return arr


def _pick_slice(path: Path, n: int, slice_index: int | None, what: str) -> int:
    if n == 0:
        raise DataError(path, f"{what} has no slices")
    if slice_index is None:
        return n // 2
    k = int(slice_index)
    if k < 0:
        k += n
    if not 0 <= k < n:
        raise DataError(path, f"slice_index {slice_index} is out of range for {n} {what} slices")
    return k


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi > lo:
        return ((arr - lo) / (hi - lo)).astype(np.float32)
    return np.zeros(arr.shape, np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of ``(..., >=3)`` channels as float32 ``(...)``, one channel at a time (no
    float32 copy of all channels: the peak is two single-channel float32 arrays)."""
    grey = rgb[..., 0].astype(np.float32)
    grey *= _LUMA[0]
    grey += rgb[..., 1].astype(np.float32) * _LUMA[1]
    grey += rgb[..., 2].astype(np.float32) * _LUMA[2]
    return grey


# ------------------------------------------------------------------------------------------ PIL


def _pil_array(img: Any, path: Path, scale: bool) -> np.ndarray:
    """A PIL image in any mode -> float32 ``(H, W)`` grey (``[0, 1]`` when ``scale``)."""

    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    elif mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
        mode = "RGB"
    elif mode == "La":
        img = img.convert("LA")
        mode = "LA"
    elif mode == "RGBa":
        img = img.convert("RGBA")
        mode = "RGBA"

    if mode == "1":
        return np.asarray(img, dtype=np.float32)
    if mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float32)
        return arr / np.float32(65535.0) if scale else arr
    if mode == "I":
        arr = np.asarray(img).astype(np.float64)
        if not scale:
            return arr.astype(np.float32)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return (arr / 65535.0).astype(np.float32)
        return _minmax(arr) if arr.size else arr.astype(np.float32)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not scale or arr.size == 0 or not np.isfinite(arr).all():
            return arr
        if arr.min() >= 0.0 and arr.max() <= 1.0:
            return arr
        return _minmax(arr)
    if mode in ("L", "LA", "RGB", "RGBA"):
        arr = np.asarray(img)
        if mode == "L":
            grey = arr.astype(np.float32)
        elif mode == "LA":
            grey = arr[..., 0].astype(np.float32) * (arr[..., 1].astype(np.float32) / 255.0)
        else:
            grey = _luma(arr)
            if mode == "RGBA":
                grey *= arr[..., 3].astype(np.float32) / np.float32(255.0)
        if scale:
            grey /= np.float32(255.0)
            np.clip(grey, 0.0, 1.0, out=grey)
        return grey.astype(np.float32, copy=False)
    # anything else PIL knows: go through RGB
    try:
        rgb = img.convert("RGB")
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"unsupported image mode {mode!r} ({e})") from None
    return _pil_array(rgb, path, scale)


class _NotAnImage(DataError):
    """PIL does not know the format at all (as opposed to a known but corrupt or too large image)."""


def _pil_open(path: Path, max_pixels: int | None) -> Any:
    """``PIL.Image.open`` (header only, nothing decoded) with the size checked against
    ``max_pixels``. The caller closes the image.

    PIL's own ``DecompressionBombWarning`` (above ``Image.MAX_IMAGE_PIXELS``) is recorded and
    dropped: our own check of ``width * height`` right after opening decides (so a caller may raise
    ``max_pixels`` above PIL's threshold). PIL's hard ``DecompressionBombError`` (twice its
    threshold) still applies and becomes a :class:`DataError`.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings(record=True):  # e.g. "Palette images with Transparency", EXIF, bomb
            warnings.simplefilter("always")
            img = Image.open(path)
    except UnidentifiedImageError:
        raise _NotAnImage(path, "not a readable image (PIL cannot identify the format; corrupt file?)") from None
    except Image.DecompressionBombError as e:
        ours = f"; the limit is {max_pixels:,} pixels" if max_pixels is not None else ""
        raise DataError(path, f"image too large to read safely ({e}){ours}") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds on corrupt headers
        raise DataError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from None
    try:
        w, h = (int(v) for v in img.size)
        check_size(path, w * h, max_pixels, f"image ({w} x {h})")
    except BaseException:
        img.close()
        raise
    return img


def _pil_pixels(path: Path) -> int:
    """``width * height`` from the header of a PIL-readable image (nothing decoded)."""
    img = _pil_open(path, None)
    try:
        return int(img.size[0]) * int(img.size[1])
    finally:
        img.close()


def _read_pil(path: Path, scale: bool, slice_index: int | None,
              max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    from PIL import ImageOps

    img = _pil_open(path, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Palette images with Transparency", EXIF
            if slice_index is not None:
                n_frames = int(getattr(img, "n_frames", 1) or 1)
                if n_frames > 1:
                    img.seek(_pick_slice(path, n_frames, slice_index, "frame"))
                    w, h = (int(v) for v in img.size)  # frames may differ in size
                    check_size(path, w * h, max_pixels, f"image frame ({w} x {h})")
            img.load()
            shown: Any = img
            try:
                shown = ImageOps.exif_transpose(img)
            except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the picture
                pass
            return _pil_array(shown, path, scale)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - OSError, SyntaxError, ValueError, EOFError, MemoryError, ...
        raise DataError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from None
    finally:
        img.close()


# ---------------------------------------------------------------------------------------- DICOM


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


def _tag_number(ds: Any, path: Path, keyword: str, default: Any, *, integer: bool = False,
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


def _tag_numbers(ds: Any, path: Path, keyword: str, n: int) -> list[float] | None:
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


def _tag_str(ds: Any, path: Path, keyword: str, default: str) -> str:
    value = _tag_value(ds, path, keyword)
    if value is None:
        return default
    try:
        return str(value)
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"DICOM tag {keyword} cannot be read ({type(e).__name__}: {e})") from None


def _dicom_geometry(ds: Any, path: Path) -> tuple[int, int, int, int]:
    """``(rows, columns, frames, samples_per_pixel)`` from a DICOM header (frames and samples are at
    least 1; a missing or zero ``NumberOfFrames`` / ``SamplesPerPixel`` counts as 1).

    Raises:
        DataError: a missing ``Rows`` / ``Columns`` or any of the four that is not a whole number.
    """
    rows = _tag_number(ds, path, "Rows", None, integer=True, minimum=0)
    cols = _tag_number(ds, path, "Columns", None, integer=True, minimum=0)
    if rows is None or cols is None:
        raise DataError(path, "DICOM image has no Rows / Columns")
    frames = _tag_number(ds, path, "NumberOfFrames", 1, integer=True, minimum=0) or 1
    spp = _tag_number(ds, path, "SamplesPerPixel", 1, integer=True, minimum=0) or 1
    return int(rows), int(cols), int(frames), int(spp)


def _dcmread(path: Path, stop_before_pixels: bool = False) -> Any:
    """``pydicom.dcmread`` with every failure turned into a :class:`DataError` naming ``path``.

    Content that does not start like DICOM (:func:`looks_like_dicom`) is refused before pydicom
    force-parses it.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        head = _head(path)
    except OSError as e:
        raise DataError(path, f"cannot read file ({e.strerror or e})") from None
    if not looks_like_dicom(head):
        raise DataError(path, _NOT_DICOM)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # corrupt files fail below with a DataError instead
            return pydicom.dcmread(str(path), force=True, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as e:
        raise DataError(path, f"not a valid DICOM file ({e})") from None
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds on corrupt input
        raise DataError(path, f"corrupt DICOM file ({type(e).__name__}: {e})") from None


def _read_dicom(path: Path, hu_window: tuple[float, float] | None, slice_index: int | None,
                raw: bool, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    return _dicom_to_array(_dcmread(path), path, hu_window, slice_index, raw, max_pixels)


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


def _dicom_to_array(ds: Any, path: Path, hu_window: tuple[float, float] | None, slice_index: int | None,
                    raw: bool, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """One frame of a read DICOM dataset as float32 ``(H, W)`` (HU, or windowed, or raw for masks).

    The frame's ``Rows * Columns * SamplesPerPixel`` is checked against ``max_pixels`` before
    anything is decoded (pydicom < 3: times ``NumberOfFrames``, as it decodes every frame).
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(path, "DICOM file holds no pixel data (not an image object?)")
    rows, cols, n_frames, samples_per_pixel = _dicom_geometry(ds, path)
    k = _pick_slice(path, n_frames, slice_index, "frame") if n_frames > 1 else None
    decoded_frames = 1 if hasattr(ds, "pixel_array_options") else n_frames  # pydicom < 3 decodes all
    check_size(path, rows * cols * samples_per_pixel * decoded_frames, max_pixels,
               f"DICOM image ({decoded_frames} x {rows} x {cols} x {samples_per_pixel} samples)")
    for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):  # pydicom reads them
        _tag_number(ds, path, keyword, None, integer=True, minimum=0)
    pixels = _decode_frame(ds, path, n_frames, k)

    photometric = _tag_str(ds, path, "PhotometricInterpretation", "MONOCHROME2").upper().strip()
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
        pixels = _luma(pixels[..., :3])
    if pixels.ndim != 2:
        raise DataError(path, f"DICOM pixel data has shape {tuple(pixels.shape)}; expected one 2D image")
    if raw:
        return _check_array(path, pixels.astype(np.float32), "mask")

    slope = _tag_number(ds, path, "RescaleSlope", 1.0) or 1.0
    intercept = _tag_number(ds, path, "RescaleIntercept", 0.0) or 0.0
    hu = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    _check_array(path, hu)
    if photometric == "MONOCHROME1":
        if hu_window is not None:
            return (1.0 - apply_hu_window(hu, hu_window)).astype(np.float32)
        bits = (_tag_number(ds, path, "BitsStored", None, integer=True)
                or _tag_number(ds, path, "BitsAllocated", None, integer=True) or 16)
        if not 1 <= bits <= 64:
            raise DataError(path, f"DICOM tag BitsStored is {bits}; expected 1 to 64")
        if (_tag_number(ds, path, "PixelRepresentation", 0, integer=True) or 0) == 1:
            raw_lo, raw_hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        else:
            raw_lo, raw_hi = 0, 2**bits - 1
        lo, hi = sorted((raw_lo * slope + intercept, raw_hi * slope + intercept))
        return _check_array(path, (np.float32(lo + hi) - hu).astype(np.float32))
    if hu_window is not None:
        return apply_hu_window(hu, hu_window)
    return hu


# ---------------------------------------------------------------------------------------- NIfTI


def _nifti_open(path: Path) -> tuple[Any, tuple[int, ...]]:
    """``nibabel.load`` (header only) and the shape with trailing 1s dropped; numeric data only.

    Raises:
        DataError: unreadable header, or a data type that is not a number (RGB, complex).
    """
    import nibabel as nib

    try:
        img: Any = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        dtype = np.dtype(img.get_data_dtype())
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if dtype.kind not in "biuf":
        raise DataError(path, f"NIfTI data type {dtype} is not a number type")
    if any(s < 0 for s in shape):
        raise DataError(path, f"NIfTI header has a negative dimension {shape}")
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return img, shape


def _read_nifti(path: Path, slice_index: int | None, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    from nibabel.orientations import apply_orientation, io_orientation

    img, shape = _nifti_open(path)
    if len(shape) not in (2, 3):
        raise DataError(path, f"NIfTI image has shape {shape}; expected a 2D image or a 3D volume")
    if 0 in shape:
        raise DataError(path, f"NIfTI image is empty (shape {shape})")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # huge values -> inf, refused later
            ornt = io_orientation(img.affine)[:3]
            if len(shape) == 2:
                check_size(path, math.prod(shape), max_pixels, f"NIfTI image {shape}")
                data = np.asanyarray(img.dataobj).reshape(shape + (1,))
            else:
                # read only the axial slice: find the data axis that runs inferior <-> superior
                z_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0]) if np.isfinite(ornt[:, 0]).all() else 2
                n = shape[z_axis]
                check_size(path, math.prod(shape) // n, max_pixels, f"NIfTI slice of the volume {shape}")
                k = _pick_slice(path, n, slice_index, "axial")
                if np.isfinite(ornt[z_axis, 1]) and ornt[z_axis, 1] < 0:
                    k = n - 1 - k  # data axis runs superior -> inferior
                slicer: list[Any] = [slice(None)] * len(img.shape)
                slicer[z_axis] = slice(k, k + 1)
                for extra in range(3, len(img.shape)):
                    slicer[extra] = 0
                data = np.asanyarray(img.dataobj[tuple(slicer)])
                data = data.reshape(tuple(1 if i == z_axis else shape[i] for i in range(3)))
            if np.isfinite(ornt[:, 0]).all() and len(set(ornt[:, 0].tolist())) == 3:
                data = apply_orientation(data, ornt)  # -> RAS+ axis order and directions
            ras = np.asarray(data)[:, :, 0]  # (X, Y): x grows to the patient's right, y to anterior
            # radiological display: rows anterior->posterior (y decreasing), columns patient right->left
            display = ras.T[::-1, ::-1]
            return np.ascontiguousarray(display, dtype=np.float32)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"corrupt NIfTI data ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------------ npy


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header (nothing else read), checked against the file size.

    Raises:
        DataError: not a ``.npy`` file, a header numpy refuses, a non-numeric dtype, a negative
            dimension, or fewer data bytes in the file than the header declares.
    """
    from numpy.lib import format as npf

    try:
        with open(path, "rb") as f:
            version = npf.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = npf.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = npf.read_array_header_2_0(f)
            elif hasattr(npf, "_read_array_header"):  # version 3.0 (utf-8 header)
                shape, _, dtype = npf._read_array_header(f, version)
            else:  # pragma: no cover - numpy without the private reader
                raise ValueError(f"unsupported .npy format version {version}")
            offset = f.tell()
        size = os.path.getsize(path)
    except OSError as e:
        raise DataError(path, f"cannot read file ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - ValueError, SyntaxError, ... on a corrupt header
        raise DataError(path, f"not a readable .npy array ({type(e).__name__}: {e})") from None
    shape = tuple(int(s) for s in shape)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise DataError(path, f"array has dtype {dtype}; expected numbers")
    if any(s < 0 for s in shape):
        raise DataError(path, f"array header has a negative dimension {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > size - offset:
        raise DataError(path, f"truncated .npy array: the header {shape} {dtype} needs {nbytes:,} bytes of "
                        f"data, the file holds {max(size - offset, 0):,}")
    return shape, dtype


def _read_npy(path: Path, slice_index: int | None, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    shape, _ = _npy_header(path)
    if len(shape) not in (2, 3):
        raise DataError(path, f"array has {len(shape)} dimensions {shape}; expected (H, W) or (D, H, W)")
    if len(shape) == 3 and 0 in shape:
        raise DataError(path, f"array is empty (shape {shape})")
    check_size(path, shape[-1] * shape[-2], max_pixels, f"array slice {shape[-2:]}" if len(shape) == 3
               else f"array {shape}")
    try:
        if len(shape) == 3:  # read one slice through a memory map, not the whole stack
            k = _pick_slice(path, shape[0], slice_index, "array")
            stack = np.load(path, mmap_mode="r", allow_pickle=False)
            arr = np.array(stack[k], dtype=np.float32)
            del stack
            return arr
        arr = np.load(path, allow_pickle=False)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"not a readable .npy array ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(path, "not a single numpy array")
    return arr.astype(np.float32)


# ----------------------------------------------------------------------------------------- API


def _open_checked(path: str | Path) -> Path:
    if path is None or str(path) == "":
        raise DataError(str(path), "no file given")
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise DataError(p, "file not found") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise DataError(p, f"cannot access file ({getattr(e, 'strerror', None) or e})") from None
    if p.is_dir():
        raise DataError(p, "is a folder; expected one image file")
    if st.st_size == 0:
        raise DataError(p, "file is empty (0 bytes)")
    return p


def _read_any(path: str | Path, hu_window: tuple[float, float] | None, slice_index: int | None,
              mask: bool, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    p = _open_checked(path)
    what = "mask" if mask else "image"
    try:
        kind = _kind(p)
    except DataError:
        raise
    except OSError as e:
        raise DataError(p, f"cannot read file ({e.strerror or e})") from None
    if kind == "dicom":
        arr = _read_dicom(p, None if mask else hu_window, slice_index, raw=mask, max_pixels=max_pixels)
    elif kind == "nifti":
        arr = _read_nifti(p, slice_index, max_pixels)
        if hu_window is not None and not mask:
            _check_array(p, arr, what)
            arr = apply_hu_window(arr, hu_window)
    elif kind == "npy":
        arr = _read_npy(p, slice_index, max_pixels)
        if hu_window is not None and not mask:
            _check_array(p, arr, what)
            arr = apply_hu_window(arr, hu_window)
    elif kind == "pil":
        arr = _read_pil(p, scale=not mask, slice_index=slice_index, max_pixels=max_pixels)
    else:
        try:  # unknown suffix and magic: PIL knows many more formats (WebP, GIF, ...)
            arr = _read_pil(p, scale=not mask, slice_index=slice_index, max_pixels=max_pixels)
        except _NotAnImage:
            raise DataError(
                p, f"unsupported file type {_suffix(p) or '(no suffix)'!r}; "
                f"readable: {', '.join(IMAGE_SUFFIXES)} or any DICOM file") from None
    return _check_array(p, arr, what)


@guard_reader()
def read_image(path: str | Path, *, hu_window: tuple[float, float] | None = None,
               slice_index: int | None = None, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read one image file as a single-channel float32 ``(H, W)`` array.

    Args:
        path: a PNG/JPEG/TIFF/BMP file (any PIL mode), a DICOM file (found by its ``DICM``
            preamble or, without one, a group 0x0002 / 0x0008 tag at the start), a NIfTI ``.nii`` /
            ``.nii.gz`` image or volume, or a ``.npy`` array.
        hu_window: ``(level, width)`` for DICOM / NIfTI / ``.npy``: clip HU to the window and scale
            to ``[0, 1]``. Ignored for 8/16-bit picture formats.
        slice_index: which axial slice of a 3D NIfTI volume (inferior -> superior after RAS
            reorientation), frame of a multi-frame DICOM / TIFF, or first-axis index of a
            ``(D, H, W)`` ``.npy``. Default: the middle one (TIFF: the first frame).
        max_pixels: refuse, before decoding, an image (the one slice / frame read) that declares
            more pixels (DICOM: times ``SamplesPerPixel``); default
            :data:`~chestdx.data.limits.MAX_IMAGE_PIXELS` (64 Mi); None: no limit of ours (PIL's
            own ``Image.MAX_IMAGE_PIXELS`` bomb check still applies to picture formats).

    Returns:
        float32 ``(H, W)``: in ``[0, 1]`` for picture formats and windowed inputs; HU (or the
        stored values) for DICOM / NIfTI / ``.npy`` without a window. See the module docstring
        for the grey conversion, alpha and orientation conventions.

    Raises:
        DataError: the file is missing, empty, corrupt, too large, not 2D (or a 3D volume),
            zero-sized, or holds NaN / infinite values. The message names the file. Nothing else
            escapes: an unexpected library exception becomes a DataError naming its type.
        ConfigError: ``hu_window`` is malformed.
    """
    if hu_window is not None:
        apply_hu_window(np.zeros(1, np.float32), hu_window)  # validate before reading
    return _read_any(path, hu_window, slice_index, mask=False, max_pixels=max_pixels)


@guard_reader()
def read_mask(path: str | Path, *, slice_index: int | None = None,
              max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read a lesion mask as bool ``(H, W)``: every nonzero pixel is lesion.

    The same formats, orientation conventions (NIfTI), size limit and error rules as
    :func:`read_image`; the values are not rescaled, so a mask stored as 0/1 or 0/255 reads the
    same. Colour masks count a pixel as lesion where its luma (alpha-composited on black) is nonzero.

    Args:
        path: the mask file.
        slice_index: axial slice / frame for 3D masks, as in :func:`read_image`.
        max_pixels: as in :func:`read_image`.

    Returns:
        bool ``(H, W)``.

    Raises:
        DataError: as :func:`read_image`.
    """
    arr = _read_any(path, None, slice_index, mask=True, max_pixels=max_pixels)
    return arr != 0
