"""What a file is, and the checks every reader shares: suffixes, content sniffing, array checks.

:func:`file_kind` picks the reader of a file by its first bytes (then its suffix): ``pil``,
``dicom``, ``nifti``, ``npy`` or ``unknown``. A file is only called DICOM when it looks like DICOM
(:func:`looks_like_dicom`: a ``DICM`` marker at byte 128 followed by the file meta group, or,
without the preamble, a group 0x0002 / 0x0008 tag at byte 0), so pydicom never force-parses
arbitrary bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from chestdx.errors import ConfigError, DataError

__all__ = [
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "NOT_DICOM",
    "NUMPY_SUFFIXES",
    "PIL_SUFFIXES",
    "apply_hu_window",
    "check_array",
    "file_kind",
    "is_image_file",
    "looks_like_dicom",
    "luma",
    "open_checked",
    "pick_slice",
    "read_head",
    "sniff_head",
    "suffix_of",
]

PIL_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
NUMPY_SUFFIXES: tuple[str, ...] = (".npy",)

#: Lower-case suffixes of every file kind :func:`read_image` reads (``.nii.gz`` is a double suffix).
IMAGE_SUFFIXES: tuple[str, ...] = PIL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES + NUMPY_SUFFIXES


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def suffix_of(path: Path) -> str:
    """The lower-case suffix of ``path``; ``.nii.gz`` counts as one."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def is_image_file(path: str | Path) -> bool:
    """True where the file name ends in one of :data:`IMAGE_SUFFIXES` (and is not hidden)."""
    p = Path(path)
    return not p.name.startswith(".") and suffix_of(p) in IMAGE_SUFFIXES


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


def read_head(path: Path, n: int = 1024) -> bytes:
    """The first ``n`` bytes of ``path`` (fewer for a shorter file); OSError where it cannot be read."""
    with open(path, "rb") as f:
        return f.read(n)


NOT_DICOM = "not a DICOM file (no DICM preamble and no DICOM tag at the start)"


def file_kind(path: Path) -> str:
    """The reader for ``path`` by content (then suffix): pil / dicom / nifti / npy / unknown.

    Raises:
        DataError: a gzip file that is not ``.nii.gz``, or a file that claims to be DICOM (marker or
            suffix) but does not start like one (refused before pydicom force-parses it).
        OSError: the file cannot be read.
    """
    head = read_head(path)
    kind = sniff_head(head)
    sniffed = "pil" if kind in _PIL_KINDS else (None if kind == "zip" else kind)
    suffix = suffix_of(path)
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
        raise DataError(path, NOT_DICOM)
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in NUMPY_SUFFIXES:
        return "npy"
    if suffix in PIL_SUFFIXES:
        return "pil"  # unknown magic but an image suffix: let PIL try (and fail with a message)
    return "unknown"


# --------------------------------------------------------------------------------- shared checks


def open_checked(path: str | Path) -> Path:
    """``path`` as a Path, once it is known to be one non-empty file.

    Raises:
        DataError: no path, a missing or unreadable file, a folder, or an empty file.
    """
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


def check_array(path: Path, arr: np.ndarray, what: str = "image", ndim: int = 2) -> np.ndarray:
    """``arr`` unchanged once it has ``ndim`` dimensions (2: ``(H, W)``, 3: ``(D, H, W)``), is not
    empty and holds only finite values.

    Raises:
        DataError: naming ``path``, the ``what`` read and the problem (shape, NaN / inf counts).
    """
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


def pick_slice(path: Path, n: int, slice_index: int | None, what: str) -> int:
    """The index into ``n`` slices / frames: ``slice_index`` (negative counts from the end), default
    the middle one.

    Raises:
        DataError: no slices, or ``slice_index`` out of range.
    """
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


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of ``(..., >=3)`` channels as float32 ``(...)``, one channel at a time (no
    float32 copy of all channels: the peak is two single-channel float32 arrays)."""
    grey = rgb[..., 0].astype(np.float32)
    grey *= _LUMA[0]
    grey += rgb[..., 1].astype(np.float32) * _LUMA[1]
    grey += rgb[..., 2].astype(np.float32) * _LUMA[2]
    return grey

