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
slice read) is checked against ``max_pixels`` (default :data:`chestdx.io.limits.MAX_IMAGE_PIXELS`)
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

from chestdx.errors import DataError
from chestdx.io.dicom import read_dicom
from chestdx.io.formats import (
    IMAGE_SUFFIXES,
    apply_hu_window,
    check_array,
    file_kind,
    luma,
    open_checked,
    pick_slice,
    suffix_of,
)
from chestdx.io.limits import MAX_IMAGE_PIXELS, check_size, guard_reader

__all__ = ["nifti_open", "npy_header", "pil_array", "pil_pixels", "read_image", "read_mask", "read_nifti"]


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi > lo:
        return ((arr - lo) / (hi - lo)).astype(np.float32)
    return np.zeros(arr.shape, np.float32)


# ------------------------------------------------------------------------------------------ PIL


def pil_array(img: Any, path: Path, scale: bool) -> np.ndarray:
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
            grey = luma(arr)
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
    return pil_array(rgb, path, scale)


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


def pil_pixels(path: Path) -> int:
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
                    img.seek(pick_slice(path, n_frames, slice_index, "frame"))
                    w, h = (int(v) for v in img.size)  # frames may differ in size
                    check_size(path, w * h, max_pixels, f"image frame ({w} x {h})")
            img.load()
            shown: Any = img
            try:
                shown = ImageOps.exif_transpose(img)
            except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the picture
                pass
            return pil_array(shown, path, scale)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - OSError, SyntaxError, ValueError, EOFError, MemoryError, ...
        raise DataError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from None
    finally:
        img.close()


# ---------------------------------------------------------------------------------------- NIfTI


def nifti_open(path: Path) -> tuple[Any, tuple[int, ...]]:
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


def read_nifti(path: Path, slice_index: int | None, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A 2D NIfTI image, or axial slice ``slice_index`` of a 3D one (inferior -> superior after RAS
    reorientation; default the middle), as float32 ``(H, W)`` in the radiological display convention.
    Only that slice is read; its size is checked against ``max_pixels`` first.

    Raises:
        DataError: not 2D / 3D, empty, too large or corrupt.
    """
    from nibabel.orientations import apply_orientation, io_orientation

    img, shape = nifti_open(path)
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
                k = pick_slice(path, n, slice_index, "axial")
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


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
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
    shape, _ = npy_header(path)
    if len(shape) not in (2, 3):
        raise DataError(path, f"array has {len(shape)} dimensions {shape}; expected (H, W) or (D, H, W)")
    if len(shape) == 3 and 0 in shape:
        raise DataError(path, f"array is empty (shape {shape})")
    check_size(path, shape[-1] * shape[-2], max_pixels, f"array slice {shape[-2:]}" if len(shape) == 3
               else f"array {shape}")
    try:
        if len(shape) == 3:  # read one slice through a memory map, not the whole stack
            k = pick_slice(path, shape[0], slice_index, "array")
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


def _read_any(path: str | Path, hu_window: tuple[float, float] | None, slice_index: int | None,
              mask: bool, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    p = open_checked(path)
    what = "mask" if mask else "image"
    try:
        kind = file_kind(p)
    except DataError:
        raise
    except OSError as e:
        raise DataError(p, f"cannot read file ({e.strerror or e})") from None
    if kind == "dicom":
        arr = read_dicom(p, None if mask else hu_window, slice_index, raw=mask, max_pixels=max_pixels)
    elif kind == "nifti":
        arr = read_nifti(p, slice_index, max_pixels)
        if hu_window is not None and not mask:
            check_array(p, arr, what)
            arr = apply_hu_window(arr, hu_window)
    elif kind == "npy":
        arr = _read_npy(p, slice_index, max_pixels)
        if hu_window is not None and not mask:
            check_array(p, arr, what)
            arr = apply_hu_window(arr, hu_window)
    elif kind == "pil":
        arr = _read_pil(p, scale=not mask, slice_index=slice_index, max_pixels=max_pixels)
    else:
        try:  # unknown suffix and magic: PIL knows many more formats (WebP, GIF, ...)
            arr = _read_pil(p, scale=not mask, slice_index=slice_index, max_pixels=max_pixels)
        except _NotAnImage:
            raise DataError(
                p, f"unsupported file type {suffix_of(p) or '(no suffix)'!r}; "
                f"readable: {', '.join(IMAGE_SUFFIXES)} or any DICOM file") from None
    return check_array(p, arr, what)


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
            :data:`~chestdx.io.limits.MAX_IMAGE_PIXELS` (64 Mi); None: no limit of ours (PIL's
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

