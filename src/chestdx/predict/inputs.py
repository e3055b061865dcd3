"""Turn whatever a user hands the predictor into a study: one 2D image or one 3D scan.

Accepted: a path (image file, DICOM file, NIfTI, ``.npy``, DICOM-series folder, folder of slice
images, zip of a series), a numpy array (``(H, W)`` image, ``(D, H, W)`` scan), a PIL image, or raw
bytes (the web service), whose kind is sniffed from the content, never from a name.

Hostile input: :func:`load_study`, :func:`study_from_bytes` and :func:`expand_inputs` raise only
:class:`chestdx.errors.ChestdxError` (a :class:`DataError`; :class:`UnsupportedType` for content
of an unknown kind) whatever they are given. Sizes are checked before decoding against
``max_pixels`` (one image) and ``max_voxels`` (one scan), defaults
:data:`chestdx.io.limits.MAX_IMAGE_PIXELS` and :data:`~chestdx.io.limits.MAX_VOLUME_VOXELS`.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chestdx.errors import ChestdxError, DataError
from chestdx.io.limits import (
    MAX_IMAGE_PIXELS,
    MAX_UNZIPPED_BYTES,
    MAX_VOLUME_VOXELS,
    MAX_ZIP_MEMBERS,
    check_size,
    guard_reader,
)

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
    from chestdx.io.formats import looks_like_dicom, sniff_head

    head = bytes(head[:1024])
    kind = sniff_head(head)
    if kind == "gzip":
        return "nifti-gz"  # the only gzip content accepted; the reader refuses other gzip files
    if kind in SUPPORTED_UPLOADS:
        return kind
    # DICOM written without the 128-byte preamble: starts with a group 0x0008 (or 0x0002) tag
    if looks_like_dicom(head):
        return "dicom"
    return None


_SUFFIX = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "bmp": ".bmp", "dicom": ".dcm", "nifti": ".nii",
           "nifti-gz": ".nii.gz", "zip": ".zip", "npy": ".npy"}


def _study_label(x: Any, hu_window: Any = None, name: Any = None, **kwargs: Any) -> str:
    """What :func:`load_study` names in an error: ``name``, else the path, else the type."""
    if name:
        return str(name)
    return str(x) if isinstance(x, (str, Path)) else type(x).__name__


@guard_reader(_study_label)
def load_study(x: Any, hu_window: tuple[float, float] | None = None, name: str | None = None, *,
               max_pixels: int | None = MAX_IMAGE_PIXELS, max_voxels: int | None = MAX_VOLUME_VOXELS,
               series_uid: str | None = None) -> Study:
    """Read ``x`` into a :class:`Study`.

    Args:
        x: a path, a numpy array ``(H, W)`` / ``(D, H, W)`` (``(H, W, 3)`` RGB is turned grey), or a
            PIL image.
        hu_window: the recipe's ``(level, width)``, applied to DICOM / NIfTI / ``.npy`` files.
        name: what to call it in answers (default: the file name).
        max_pixels: refuse an image holding more pixels (checked before decoding).
        max_voxels: refuse a scan holding more voxels (checked before decoding).

    Raises:
        DataError: unreadable, unsupported or too large input, naming it (nothing else escapes).
    """
    from chestdx.io.formats import apply_hu_window
    from chestdx.io.images import read_image
    from chestdx.io.volumes import is_volume_input, read_volume

    if isinstance(x, (str, Path)):
        if str(x) == "":  # Path("") is the working folder
            raise DataError("''", "no file given (empty path)")
        p = Path(x)
        if not p.exists():
            raise DataError(p, "not found")
        if is_volume_input(p):
            vol, meta = read_volume(p, hu_window=hu_window, max_voxels=max_voxels, series_uid=series_uid)
            return Study(name or p.name, vol, "volume", meta.to_json())
        return Study(name or p.name, read_image(p, hu_window=hu_window, max_pixels=max_pixels), "image")
    try:
        from PIL import Image

        if isinstance(x, Image.Image):
            from chestdx.io.images import pil_array

            label = name or "image"
            w, h = (int(v) for v in x.size)
            check_size(label, w * h, max_pixels, f"image ({w} x {h})")
            try:
                arr = pil_array(x, Path(label), scale=True)
            except DataError:
                raise
            except Exception as e:  # noqa: BLE001 - a lazily loaded PIL image may be corrupt
                raise DataError(label, f"corrupt or truncated image ({type(e).__name__}: {e})") from None
            return Study(label, arr, "image")
    except ImportError:  # pragma: no cover - PIL is a dependency
        pass
    if isinstance(x, np.ndarray):
        label = name or "array"
        if x.dtype.kind not in "biuf":
            raise DataError(label, f"array has dtype {x.dtype}; expected numbers")
        if x.ndim == 3 and not (x.shape[-1] in (3, 4) and x.shape[0] > 4):
            check_size(label, x.size, max_voxels, f"array {tuple(x.shape)}", "voxels")
        else:
            check_size(label, x.size // (x.shape[-1] if x.ndim == 3 else 1), max_pixels, f"array {tuple(x.shape)}")
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


def _upload_label(data: Any = None, filename: Any = None, *args: Any, **kwargs: Any) -> str:
    return str(filename) if filename else "upload"


@guard_reader(_upload_label)
def study_from_bytes(data: bytes, filename: str, hu_window: tuple[float, float] | None = None,
                     max_unzipped_bytes: int | None = None, *, max_pixels: int | None = None,
                     max_voxels: int | None = None, max_zip_members: int | None = None) -> Study:
    """Read uploaded content into a :class:`Study`: sniffed, written to a private temporary folder
    that is removed before returning (nothing is left on disk).

    Args:
        data: the uploaded bytes.
        filename: the user's name for them (only used in answers and errors).
        hu_window: as in :func:`load_study`.
        max_unzipped_bytes: refuse zips that unpack to more (declared or actual); None: the
            default :data:`~chestdx.io.limits.MAX_UNZIPPED_BYTES` (1 GiB).
        max_pixels: refuse an image holding more pixels; None:
            :data:`~chestdx.io.limits.MAX_IMAGE_PIXELS` (64 Mi).
        max_voxels: refuse a scan holding more voxels; None:
            :data:`~chestdx.io.limits.MAX_VOLUME_VOXELS` (128 Mi).
        max_zip_members: refuse zips holding more files; None:
            :data:`~chestdx.io.limits.MAX_ZIP_MEMBERS` (4096).

    All limits are checked before anything is decoded or unpacked past them.

    Raises:
        UnsupportedType: the content is none of :data:`SUPPORTED_UPLOADS`.
        DataError: empty, unreadable or too large, naming ``filename`` (and, for a zip, the member),
            never a temporary file. Nothing else escapes.
    """
    from chestdx.io.volumes import read_volume

    filename = str(filename) if filename else "upload"
    if not data:
        raise DataError(filename, "empty upload")
    kind = sniff_bytes(bytes(data[:1024]))
    if kind is None:
        raise UnsupportedType(filename, "unsupported file type (by content): send PNG, JPEG, TIFF, BMP, DICOM, "
                              "NIfTI, .npy or a zip of a DICOM series")
    px = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    vx = MAX_VOLUME_VOXELS if max_voxels is None else max_voxels
    with tempfile.TemporaryDirectory(prefix=f"{UPLOAD_PREFIX}{os.getpid()}-") as tmp:
        p = Path(tmp) / f"upload{_SUFFIX[kind]}"

        def clean(text: str) -> str:
            for t in (str(p.resolve()), str(p)):
                text = text.replace(t, filename)
            return text.replace(str(Path(tmp).resolve()), "").replace(str(tmp), "")

        try:
            p.write_bytes(data)
            if kind == "zip":
                if not zipfile.is_zipfile(p):
                    raise DataError(p, "corrupt zip file")
                vol, meta = read_volume(p, hu_window=hu_window, max_voxels=vx,
                                        max_unzipped_bytes=max_unzipped_bytes or MAX_UNZIPPED_BYTES,
                                        max_zip_members=max_zip_members or MAX_ZIP_MEMBERS)
                study = Study(filename, vol, "volume", meta.to_json())
            else:
                study = load_study(p, hu_window=hu_window, name=filename, max_pixels=px, max_voxels=vx)
        except DataError as e:  # name the upload, not the temporary file
            raise DataError(filename, clean(e.problem)) from None
        except ChestdxError:  # e.g. ConfigError: a bad hu_window is the caller's, not the upload's
            raise
        except Exception as e:  # noqa: BLE001 - e.g. the disk is full; never show the temporary path
            raise DataError(filename, f"cannot read the upload ({type(e).__name__}: {clean(str(e))})") from None
        study.meta["source"] = filename
    return study


#: Prefix of the private temporary folders uploads are read in; the server's process id follows, so
#: the folders of a killed server can be told from those of a running one.
UPLOAD_PREFIX = "chestdx-upload-"


def remove_orphan_uploads(tmpdir: str | Path | None = None) -> list[Path]:
    """Delete upload folders left in the temporary folder by a server that was killed mid-request
    (their process no longer runs); folders of running servers are kept. Returns what was removed.
    Called when the web service starts."""
    import shutil

    root = Path(tmpdir or tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for d in entries:
        if not d.name.startswith(UPLOAD_PREFIX) or not d.is_dir() or d.is_symlink():
            continue
        pid_text = d.name[len(UPLOAD_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit():
            continue  # not named by this chestdx: leave it
        pid = int(pid_text)
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # that server still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # someone else's live process
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


class UnsupportedType(DataError):
    """The content is not a kind chestdx reads (answered 415 by the web service)."""


def _is_zip(f: Path) -> bool:
    try:
        return zipfile.is_zipfile(f)
    except Exception:  # noqa: BLE001
        return False


def _holds_dicom(folder: Path) -> bool:
    from chestdx.io.formats import file_kind

    for f in folder.iterdir():
        try:
            if f.is_file() and not f.name.startswith(".") and f.stat().st_size > 0 and file_kind(f) == "dicom":
                return True
        except (DataError, OSError):
            continue
    return False


def _inputs_label(inputs: Any = None, *args: Any, **kwargs: Any) -> str:
    return str(inputs) if isinstance(inputs, (str, Path)) else "inputs"


@guard_reader(_inputs_label)
def expand_inputs(inputs: Any, scan_folders: bool = False) -> list[str]:
    """The things to answer among ``inputs`` (paths).

    - a file (image, DICOM, NIfTI, ``.npy``, zip): itself;
    - a folder holding DICOM files: one scan (the series); its subfolders are searched too, each
      DICOM folder becoming one scan;
    - other folders: each image file inside (recursively) on its own, or, with ``scan_folders``,
      each folder of slice images as one scan (COV19-CT-DB layout).

    ``inputs`` may also be one path (not a list of them).

    Raises:
        DataError: a path that does not exist or cannot be listed, or a folder with nothing to
            answer (nothing else escapes).
    """
    from chestdx.io.formats import is_image_file

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) and not hasattr(inputs, "__iter__"):
        raise DataError(str(inputs), f"expected paths, got a {type(inputs).__name__}")
    out: list[str] = []
    for item in inputs:
        if not isinstance(item, (str, Path)):
            raise DataError(str(item), f"expected a path, got a {type(item).__name__}")
        if str(item) == "":  # Path("") is the working folder
            raise DataError("''", "no path given (empty string)")
        p = Path(item)
        if not p.exists():
            raise DataError(p, "not found")
        if not p.is_dir():
            out.append(str(p))
            continue
        found: list[str] = []
        try:
            folders = [p, *sorted(d for d in p.rglob("*") if d.is_dir())]
        except OSError as e:
            raise DataError(p, f"cannot list the folder ({e.strerror or e})") from None
        for folder in folders:
            try:
                files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
            except OSError as e:
                raise DataError(folder, f"cannot list the folder ({e.strerror or e})") from None
            if not files:
                continue
            if _holds_dicom(folder):
                found.append(str(folder))
            elif scan_folders and any(is_image_file(f) for f in files):
                found.append(str(folder))
            else:
                found += [str(f) for f in files if is_image_file(f) or _is_zip(f)]
        if not found:
            raise DataError(p, "folder holds no image files, DICOM series or zips")
        out += found
    return out
