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
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from chestdx.errors import ConfigError, DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "PIL_SUFFIXES",
    "DICOM_SUFFIXES",
    "NIFTI_SUFFIXES",
    "NUMPY_SUFFIXES",
    "is_image_file",
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


def _sniff(path: Path) -> str | None:
    """Guess the file kind from its first bytes: pil / dicom / nifti / npy / gzip, or None."""
    with open(path, "rb") as f:
        kind = sniff_head(f.read(548))
    return "pil" if kind in _PIL_KINDS else (None if kind == "zip" else kind)


def _kind(path: Path) -> str:
    sniffed = _sniff(path)
    suffix = _suffix(path)
    if sniffed == "gzip":
        if suffix == ".nii.gz" or path.name.lower().endswith(".gz"):
            return "nifti"
        raise DataError(path, "gzip-compressed file that is not a .nii.gz NIfTI volume")
    if sniffed is not None:
        return sniffed
    if suffix in DICOM_SUFFIXES:
        return "dicom"  # DICOM without the 128-byte preamble: read with force=True
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
            grey = arr[..., :3].astype(np.float32) @ _LUMA
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


def _read_pil(path: Path, scale: bool, slice_index: int | None) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Palette images with Transparency", EXIF
            with Image.open(path) as img:
                n_frames = int(getattr(img, "n_frames", 1) or 1)
                if n_frames > 1 and slice_index is not None:
                    img.seek(_pick_slice(path, n_frames, slice_index, "frame"))
                img.load()
                shown: Any = img
                try:
                    shown = ImageOps.exif_transpose(img)
                except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the picture
                    pass
                return _pil_array(shown, path, scale)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(path, "not a readable image (PIL cannot identify the format; corrupt file?)") from None
    except Image.DecompressionBombError as e:
        raise DataError(path, f"image too large to read safely ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, IndexError, TypeError) as e:
        raise DataError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------- DICOM


def _dcmread(path: Path, stop_before_pixels: bool = False) -> Any:
    """``pydicom.dcmread`` with every failure turned into a :class:`DataError` naming ``path``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # corrupt files fail below with a DataError instead
            return pydicom.dcmread(str(path), force=True, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as e:
        raise DataError(path, f"not a valid DICOM file ({e})") from None
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds on corrupt input
        raise DataError(path, f"corrupt DICOM file ({type(e).__name__}: {e})") from None


def _read_dicom(path: Path, hu_window: tuple[float, float] | None, slice_index: int | None,
                raw: bool) -> np.ndarray:
    return _dicom_to_array(_dcmread(path), path, hu_window, slice_index, raw)


def _dicom_to_array(ds: Any, path: Path, hu_window: tuple[float, float] | None, slice_index: int | None,
                    raw: bool) -> np.ndarray:
    """One frame of a read DICOM dataset as float32 ``(H, W)`` (HU, or windowed, or raw for masks)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(path, "DICOM file holds no pixel data (not an image object?)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = np.asarray(ds.pixel_array)
    except Exception as e:  # noqa: BLE001
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = ""
        if ts is not None and getattr(ts, "is_compressed", False):
            hint = f"; transfer syntax {ts.name} is compressed: install pylibjpeg or gdcm to decode it"
        raise DataError(path, f"cannot decode DICOM pixel data ({type(e).__name__}: {e}){hint}") from None

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().strip()
    samples_per_pixel = int(ds.get("SamplesPerPixel", 1) or 1)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:
        pixels = pixels[_pick_slice(path, pixels.shape[0], slice_index, "frame")]
    if samples_per_pixel > 1 or (pixels.ndim == 3 and pixels.shape[-1] in (3, 4)):
        if photometric.startswith("YBR"):
            try:
                from pydicom.pixels import convert_color_space
            except ImportError:  # pydicom < 3
                from pydicom.pixel_data_handlers.util import convert_color_space  # type: ignore
            pixels = convert_color_space(pixels, photometric, "RGB")
        pixels = pixels[..., :3].astype(np.float32) @ _LUMA
    if pixels.ndim != 2:
        raise DataError(path, f"DICOM pixel data has shape {tuple(pixels.shape)}; expected one 2D image")
    if raw:
        return _check_array(path, pixels.astype(np.float32), "mask")

    try:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError) as e:
        raise DataError(path, f"bad RescaleSlope / RescaleIntercept ({e})") from None
    hu = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    _check_array(path, hu)
    if photometric == "MONOCHROME1":
        if hu_window is not None:
            return (1.0 - apply_hu_window(hu, hu_window)).astype(np.float32)
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
        if int(ds.get("PixelRepresentation", 0) or 0) == 1:
            raw_lo, raw_hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        else:
            raw_lo, raw_hi = 0, 2**bits - 1
        lo, hi = sorted((raw_lo * slope + intercept, raw_hi * slope + intercept))
        return (np.float32(lo + hi) - hu).astype(np.float32)
    if hu_window is not None:
        return apply_hu_window(hu, hu_window)
    return hu


# ---------------------------------------------------------------------------------------- NIfTI


def _read_nifti(path: Path, slice_index: int | None) -> np.ndarray:
    import nibabel as nib
    from nibabel.orientations import apply_orientation, io_orientation

    try:
        img: Any = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from None
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (2, 3):
        raise DataError(path, f"NIfTI image has shape {shape}; expected a 2D image or a 3D volume")
    if 0 in shape:
        raise DataError(path, f"NIfTI image is empty (shape {shape})")
    try:
        ornt = io_orientation(img.affine)[:3]
        if len(shape) == 2:
            data = np.asanyarray(img.dataobj).reshape(shape + (1,))
        else:
            # read only the axial slice: find the data axis that runs inferior <-> superior
            z_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0]) if np.isfinite(ornt[:, 0]).all() else 2
            n = shape[z_axis]
            k = _pick_slice(path, n, slice_index, "axial")
            if np.isfinite(ornt[z_axis, 1]) and ornt[z_axis, 1] < 0:
                k = n - 1 - k  # data axis runs superior -> inferior
            slicer: list[Any] = [slice(None)] * len(img.shape)
            slicer[z_axis] = slice(k, k + 1)
            for extra in range(3, len(img.shape)):
                slicer[extra] = 0
            data = np.asanyarray(img.dataobj[tuple(slicer)])
            data = data.reshape(tuple(1 if i == z_axis else shape[i] for i in range(3)))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"corrupt NIfTI data ({type(e).__name__}: {e})") from None
    if np.isfinite(ornt[:, 0]).all() and len(set(ornt[:, 0].tolist())) == 3:
        data = apply_orientation(data, ornt)  # -> RAS+ axis order and directions
    ras = np.asarray(data)[:, :, 0]  # (X, Y): x grows to the patient's right, y to anterior
    # radiological display: rows anterior->posterior (y decreasing), columns patient right->left
    display = ras.T[::-1, ::-1]
    return np.ascontiguousarray(display, dtype=np.float32)


# ------------------------------------------------------------------------------------------ npy


def _read_npy(path: Path, slice_index: int | None) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"not a readable .npy array ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(path, "not a single numpy array")
    if arr.dtype.kind not in "biuf":
        raise DataError(path, f"array has dtype {arr.dtype}; expected numbers")
    if arr.ndim == 3:
        if arr.size == 0:
            raise DataError(path, f"array is empty (shape {tuple(arr.shape)})")
        arr = arr[_pick_slice(path, arr.shape[0], slice_index, "array")]
    elif arr.ndim != 2:
        raise DataError(path, f"array has {arr.ndim} dimensions {tuple(arr.shape)}; expected (H, W) or (D, H, W)")
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
    except OSError as e:
        raise DataError(p, f"cannot access file ({e.strerror or e})") from None
    if p.is_dir():
        raise DataError(p, "is a folder; expected one image file")
    if st.st_size == 0:
        raise DataError(p, "file is empty (0 bytes)")
    return p


def _read_any(path: str | Path, hu_window: tuple[float, float] | None, slice_index: int | None,
              mask: bool) -> np.ndarray:
    p = _open_checked(path)
    what = "mask" if mask else "image"
    try:
        kind = _kind(p)
    except DataError:
        raise
    except OSError as e:
        raise DataError(p, f"cannot read file ({e.strerror or e})") from None
    if kind == "dicom":
        arr = _read_dicom(p, None if mask else hu_window, slice_index, raw=mask)
    elif kind == "nifti":
        arr = _read_nifti(p, slice_index)
        if hu_window is not None and not mask:
            _check_array(p, arr, what)
            arr = apply_hu_window(arr, hu_window)
    elif kind == "npy":
        arr = _read_npy(p, slice_index)
        if hu_window is not None and not mask:
            _check_array(p, arr, what)
            arr = apply_hu_window(arr, hu_window)
    elif kind == "pil":
        arr = _read_pil(p, scale=not mask, slice_index=slice_index)
    else:
        try:  # unknown suffix and magic: PIL knows many more formats (WebP, GIF, ...)
            arr = _read_pil(p, scale=not mask, slice_index=slice_index)
        except DataError:
            raise DataError(
                p, f"unsupported file type {_suffix(p) or '(no suffix)'!r}; "
                f"readable: {', '.join(IMAGE_SUFFIXES)} or any DICOM file") from None
    return _check_array(p, arr, what)


def read_image(path: str | Path, *, hu_window: tuple[float, float] | None = None,
               slice_index: int | None = None) -> np.ndarray:
    """Read one image file as a single-channel float32 ``(H, W)`` array.

    Args:
        path: a PNG/JPEG/TIFF/BMP file (any PIL mode), a DICOM file (found by its ``DICM``
            preamble or a ``.dcm`` suffix), a NIfTI ``.nii`` / ``.nii.gz`` image or volume, or a
            ``.npy`` array.
        hu_window: ``(level, width)`` for DICOM / NIfTI / ``.npy``: clip HU to the window and scale
            to ``[0, 1]``. Ignored for 8/16-bit picture formats.
        slice_index: which axial slice of a 3D NIfTI volume (inferior -> superior after RAS
            reorientation), frame of a multi-frame DICOM / TIFF, or first-axis index of a
            ``(D, H, W)`` ``.npy``. Default: the middle one (TIFF: the first frame).

    Returns:
        float32 ``(H, W)``: in ``[0, 1]`` for picture formats and windowed inputs; HU (or the
        stored values) for DICOM / NIfTI / ``.npy`` without a window. See the module docstring
        for the grey conversion, alpha and orientation conventions.

    Raises:
        DataError: the file is missing, empty, corrupt, not 2D (or a 3D volume), zero-sized, or
            holds NaN / infinite values. The message names the file.
        ConfigError: ``hu_window`` is malformed.
    """
    if hu_window is not None:
        apply_hu_window(np.zeros(1, np.float32), hu_window)  # validate before reading
    return _read_any(path, hu_window, slice_index, mask=False)


def read_mask(path: str | Path, *, slice_index: int | None = None) -> np.ndarray:
    """Read a lesion mask as bool ``(H, W)``: every nonzero pixel is lesion.

    The same formats, orientation conventions (NIfTI) and error rules as :func:`read_image`; the
    values are not rescaled, so a mask stored as 0/1 or 0/255 reads the same. Colour masks count
    a pixel as lesion where its luma (alpha-composited on black) is nonzero.

    Args:
        path: the mask file.
        slice_index: axial slice / frame for 3D masks, as in :func:`read_image`.

    Returns:
        bool ``(H, W)``.

    Raises:
        DataError: as :func:`read_image`.
    """
    arr = _read_any(path, None, slice_index, mask=True)
    return arr != 0

